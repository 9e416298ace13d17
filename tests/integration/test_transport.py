"""The delivery path against a real roomcast with raw-socket clients: frames written straight to
the socket, queued behind a peer that stopped reading and then sent several per system call, a
frame cut by a short write finished before anything else (a pong lws owes included), and every
recipient of a fan-out getting the same bytes. Frames are parsed here by hand (RFC 6455), not
by a library that would forgive a malformed header."""

import json
import socket
import struct
import threading
import time

import pytest

from rc import Notifier, RawClient, make_token, wait_until

ROOM = "product-1"


def _push(server, pads, start=0):
    """POSTs one notify per pad length to ROOM over one keep-alive connection; the message with
    index start+k carries data {"i": start+k, "pad": "x" * pads[k]}."""
    notifier = Notifier(server)
    try:
        for k, pad in enumerate(pads):
            status, body, _ = notifier.post(
                {"event": "e", "room": ROOM, "data": {"i": start + k, "pad": "x" * pad}})
            assert status == 200, body
    finally:
        notifier.close()


def _member(server, path="/ws", rcvbuf=None):
    c = RawClient(server, make_token("t-%d" % id(object())), rcvbuf=rcvbuf, path=path)
    assert c.status == 101
    c.send_json({"type": "join", "payload": {"room": ROOM}})
    op, payload = c.read_frame()
    assert op == 1 and json.loads(payload)["type"] == "joined", payload
    return c


def _next_frame(client, timeout):
    """One frame from a RawClient as (fin, opcode, payload, raw bytes), checking the header the
    way a strict client does: unmasked, no reserved bits, shortest length form."""
    client.sock.settimeout(timeout)

    def need(n):
        while len(client.rest) < n:
            chunk = client.sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed mid-stream")
            client.rest += chunk
        out, client.rest = client.rest[:n], client.rest[n:]
        return out

    h = need(2)
    assert h[0] & 0x70 == 0, "reserved bits set: %r" % h
    assert h[1] & 0x80 == 0, "server frame masked"
    n = h[1] & 0x7F
    ext = b""
    if n == 126:
        ext = need(2)
        n = struct.unpack("!H", ext)[0]
        assert n >= 126, "16-bit length for a short frame"
    elif n == 127:
        ext = need(8)
        n = struct.unpack("!Q", ext)[0]
        assert n >= 65536, "64-bit length for a frame under 64 KB"
    data = need(n)
    return bool(h[0] & 0x80), h[0] & 0x0F, data, h + ext + data


def _messages(payload):
    """The room messages in a text frame: one object, or an array of them (?batch=1)."""
    m = json.loads(payload)
    return m if isinstance(m, list) else [m]


@pytest.mark.parametrize("path", ["/ws", "/ws?batch=1"])
def test_slow_reader_resumes_with_every_frame_intact_and_pong_in_between(server_factory, path):
    """A member with a 4 KB receive buffer stops reading while ~1.2 MB of odd-sized messages
    pile up (short writes cut frames; the rest queues and later goes out several frames per
    call). Halfway it sends a ping. Then it reads: every message arrives once, whole and in
    order, and the pong arrives as a frame of its own, never inside another."""
    server = server_factory({"SEND_QUEUE_MAX_BYTES": str(8 << 20),
                             "NOTIFY_TOKEN": "notify-secret"})
    slow = _member(server, path, rcvbuf=4096)
    # Sizes that cut frames at varied places, across the 126-byte header boundary too.
    pads = [(i * 977) % 3000 + (i % 7) for i in range(400)]
    try:
        _push(server, pads[:200])
        # Let the server hit the full socket and queue before the ping arrives.
        time.sleep(0.2)
        slow.send_frame(b"mid", opcode=9)
        _push(server, pads[200:], start=200)
        got, pongs = [], 0
        deadline = time.monotonic() + 30
        while len(got) < len(pads):
            assert time.monotonic() < deadline, "only %d of %d arrived" % (len(got), len(pads))
            fin, op, data, _ = _next_frame(slow, 10)
            assert fin
            if op == 10:
                assert data == b"mid"
                pongs += 1
                continue
            if op == 9:  # a keep-alive ping of the server's: not expected this soon
                continue
            assert op == 1, op
            for m in _messages(data):
                assert m["room"] == ROOM and m["event"] == "e"
                got.append(m["data"]["i"])
                assert m["data"]["pad"] == "x" * pads[m["data"]["i"]]
        assert got == list(range(len(pads)))
        # The pong may come before the last message or right after it.
        if not pongs:
            fin, op, data, _ = _next_frame(slow, 5)
            assert (op, data) == (10, b"mid")
        # Still open and in order afterwards.
        _push(server, [5], start=len(pads))
        while True:
            fin, op, data, _ = _next_frame(slow, 5)
            if op == 1:
                assert [m["data"]["i"] for m in _messages(data)] == [len(pads)]
                break
    finally:
        slow.close()


def test_fanout_every_member_gets_the_same_bytes(server_factory):
    """20 members, 40 messages whose frames need each header form (7-bit, 16-bit and 64-bit
    lengths, and the boundaries between them): every member receives every frame byte for byte
    the same, and each is the message sent."""
    server = server_factory({"SEND_QUEUE_MAX_BYTES": str(8 << 20), "NOTIFY_MAX_BYTES": str(1 << 20),
                             "NOTIFY_TOKEN": "notify-secret"})
    members = [_member(server) for _ in range(20)]
    # The envelope adds about 100 bytes to the pad: these straddle 125/126 and 65535/65536.
    pads = [0, 1, 10, 20, 30, 40, 60, 200, 1000, 65300, 65400, 65450, 65500, 70000, 3, 2000]
    pads = (pads * 3)[:40]
    frames = {id(c): [] for c in members}
    errors = []

    def reader(c):
        try:
            while len(frames[id(c)]) < len(pads):
                fin, op, data, raw = _next_frame(c, 20)
                if op == 1:
                    frames[id(c)].append(raw)
        except Exception as e:  # reported below, in the test's thread
            errors.append(repr(e))

    readers = [threading.Thread(target=reader, args=(c,)) for c in members]
    for t in readers:
        t.start()
    try:
        _push(server, pads)
    finally:
        for t in readers:
            t.join(30)
        for c in members:
            c.close()
    assert not errors, errors
    first = frames[id(members[0])]
    for c in members[1:]:
        assert frames[id(c)] == first
    for i, raw in enumerate(first):
        body = raw[2:]
        if raw[1] & 0x7F == 126:
            body = raw[4:]
        elif raw[1] & 0x7F == 127:
            body = raw[10:]
        m = json.loads(body)
        assert m["data"] == {"i": i, "pad": "x" * pads[i]}


def test_reset_member_is_dropped_and_the_others_served(server_factory):
    """Members that reset their connection (RST, no close frame) while messages flow: the
    server drops them, whether a read or a direct send meets the reset first, and the member
    that stays gets every message."""
    server = server_factory({"NOTIFY_TOKEN": "notify-secret"})
    good = _member(server)
    gone = [_member(server) for _ in range(5)]
    try:
        _push(server, [10, 20])
        for c in gone:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        _push(server, [30] * 50, start=2)
        got = []
        while len(got) < 52:
            fin, op, data, _ = _next_frame(good, 10)
            if op == 1:
                got += [m["data"]["i"] for m in _messages(data)]
        assert got == list(range(52))
        wait_until(lambda: server.admin()["clients"] == 1, timeout=10, what="reset members gone")
    finally:
        good.close()
