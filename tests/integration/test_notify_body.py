"""POST /api/notify bodies as src/jscan.c reads them (docs/decisions.md, decision 29): `data`
reaches members compacted and otherwise byte for byte, json-c's rules for duplicate keys and
integer user ids kept, RFC 8259 only (what json-c's strict mode also took is refused), the
nesting limit at its boundary, and the error message of each refusal."""

import asyncio

import pytest

from rc import connect, join, make_token, recv_json, run, send

HEADERS = {"Authorization": "Bearer notify-secret", "Content-Type": "application/json"}


def post(server, body):
    status, text = server.get("/api/notify", HEADERS, method="POST", body=body)
    return status, text


def test_data_compacted_otherwise_verbatim(server):
    body = (b'{ "event" : "e" ,\r\n "room" : "product-1" ,\t"data" : { "a" : [ 1 , 2.50 , 1E5 ,'
            b' -0 , "x y" ] , "s" : "a/b \\/ \\u00e9 \\ud83d\\ude00 \\"q\\"" , "lone" : '
            b'"\\ud800" , "k" : 1 , "k" : 2 } }\n')
    want = ('"data":{"a":[1,2.50,1E5,-0,"x y"],"s":"a/b \\/ \\u00e9 \\ud83d\\ude00 \\"q\\"",'
            '"lone":"\\ufffd","k":1,"k":2},"meta":{"source":"notify"}}')

    async def go():
        ws = await connect(server, make_token("5"))
        assert (await join(ws, "product-1"))["type"] == "joined"
        status, text = post(server, body)
        assert status == 200, text
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert raw.endswith(want), raw
        await ws.close()
    run(go())


def test_last_duplicate_key_and_integer_user_id_as_json_c(server):
    async def go():
        ws = await connect(server, make_token("5"))
        zero = await connect(server, make_token("0"))
        for w in (ws, zero):
            await send(w, "ping")
            assert await recv_json(w) == {"type": "pong"}
        assert (await join(ws, "product-1"))["type"] == "joined"
        status, text = post(server, b'{"event":"a","room":"has space","event":"b",'
                                    b'"room":"product-1","persist":true,"persist":false}')
        assert status == 200, text
        msg = await recv_json(ws)
        assert msg["event"] == "b" and msg["room"] == "product-1" and msg["data"] is None
        # -0 is the integer 0 (json-c printed it "0"); an escaped NUL ends a key for json-c.
        status, text = post(server, b'{"event\\u0000x":"z","user_id":-0}')
        assert status == 200, text
        msg = await recv_json(zero)
        assert msg["event"] == "z" and msg["room"] == "user-0"
        for w in (ws, zero):
            await w.close()
    run(go())


def nested(n, inner=""):
    return "[" * n + inner + "]" * n


@pytest.mark.parametrize("body,status,error", [
    # json-c's strict mode took these; RFC 8259 does not.
    (b"{'event':\"e\",'room':\"r\"}", 400, "malformed JSON"),
    (b'{"event":"a\tb","room":"r"}', 400, "malformed JSON"),
    (b'{"event":"e","user_id":-01}', 400, "malformed JSON"),
    (b'{"event":"e","user_id":00}', 400, "malformed JSON"),
    (b'{"event":"e","room":"r","data":NaN}', 400, "malformed JSON"),
    (b'{"event":"e","room":"r","data":1.}', 400, "malformed JSON"),
    (b'{"event":"e","room":"r","data":"\\x"}', 400, "malformed JSON"),
    (b'{"event":"e","room":"r"} x', 400, "trailing bytes after JSON"),
    (b'{"event":"e","room":"r"}\0', 400, "trailing bytes after JSON"),
    (b'{"event":"e","room":"r"}{}', 400, "trailing bytes after JSON"),
    (b"1", 400, "event is required"),
    (b"[]", 400, "event is required"),
    (b'{"event":"","room":"r"}', 400, "event is required"),
    (b'{"event":"a\\u0000b","room":"r"}', 400, "invalid event name"),
    (b'{"event":"e","user_id":1.5}', 400, "room or user_id is required"),
    (b'{"event":"e","room":"a\\u0000b"}', 400, "invalid room name"),
    # The body is depth 1: data's innermost value may be at 16.
    (('{"event":"e","room":"r","data":%s}' % nested(15)).encode(), 200, None),
    (('{"event":"e","room":"r","data":%s}' % nested(16)).encode(), 400, "malformed JSON"),
    (('{"event":"e","room":"r","data":%s}' % nested(14, "1")).encode(), 200, None),
    (('{"event":"e","room":"r","data":%s}' % nested(15, "1")).encode(), 400, "malformed JSON"),
])
def test_answers(server, body, status, error):
    got, text = post(server, body)
    assert got == status, text
    if error:
        assert text == '{"error":"%s"}' % error
