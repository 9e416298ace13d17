"""The server API (docs/http-api.md): POST /api/disconnect, /api/subscribe, /api/unsubscribe and
GET /api/rooms act on every replica: two roomcast processes on one real redis-server, a user's
connections spread over both, each call made on one replica and counted across both."""

import asyncio
import json
import time

import pytest

from rc import (RedisServer, closed_code, connect, make_token, metric_samples, recv_json,
                recv_type, run, wait_until)

TOKEN = "server-api-notify-token-0123456789abcdef"


@pytest.fixture
def redis_server():
    r = RedisServer().start()
    yield r
    r.stop()


def node(server_factory, name, redis_addr=None):
    env = {"NODE_ID": name, "NOTIFY_TOKEN": TOKEN}
    if redis_addr:
        env["REDIS_ADDR"] = redis_addr
    s = server_factory(env)
    if redis_addr:
        wait_until(lambda: s.json("/health")[1]["redis"] == "up", 10, what="redis up")
    return s


@pytest.fixture
def nodes(redis_server, server_factory):
    return node(server_factory, "n1", redis_server.addr), node(server_factory, "n2",
                                                               redis_server.addr)


def api(server, path, body=None, token=TOKEN):
    hdrs = {"Authorization": "Bearer " + token} if token else {}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        status, text = server.get(path, hdrs, method="POST", body=json.dumps(body).encode())
    else:
        status, text = server.get(path, hdrs)
    return status, json.loads(text)


def wait_nodes_known(a, b):
    # Replicas announce themselves every 2 s; until then a replica does not wait for the other.
    wait_until(lambda: set(api(a, "/api/rooms")[1]["nodes"]) == {"n1", "n2"} and
               set(api(b, "/api/rooms")[1]["nodes"]) == {"n1", "n2"}, 10,
               what="both replicas in /api/rooms")


def test_server_api_across_two_replicas(nodes):
    n1, n2 = nodes
    wait_nodes_known(n1, n2)

    async def go():
        u1 = [await connect(n1, make_token("u1")), await connect(n2, make_token("u1")),
              await connect(n2, make_token("u1"))]
        u2 = await connect(n1, make_token("u2"))
        wait_until(lambda: api(n1, "/api/rooms")[1]["rooms"].get("user-u1") == 3, 5,
                   what="user-u1 has 3 members cluster-wide")
        # Subscribe on n1: every connection of u1, on both replicas, joins and is told.
        t0 = time.monotonic()
        status, body = api(n1, "/api/subscribe", {"user_id": "u1", "room": "chat-5"})
        assert status == 200 and body == {"status": "success", "affected": 3}, body
        assert time.monotonic() - t0 < 0.5, "waited for the deadline though both answered"
        for ws in u1:
            assert (await recv_type(ws, "joined"))["payload"]["room"] == "chat-5"
        status, body = api(n2, "/api/rooms")
        assert status == 200 and body["rooms"]["chat-5"] == 3, body
        assert body["rooms"]["user-u2"] == 1
        assert set(body["nodes"]) == {"n1", "n2"}
        assert body["nodes"]["n1"]["connections"] == 2 and body["nodes"]["n2"]["connections"] == 2
        assert body["nodes"]["n1"]["redis"] == "up"
        # A room message to chat-5 reaches the three.
        status, _ = n2.get("/api/notify", {"Authorization": "Bearer " + TOKEN,
                                           "Content-Type": "application/json"}, method="POST",
                           body=b'{"event":"hello","room":"chat-5"}')
        assert status == 200
        for ws in u1:
            assert (await recv_json(ws))["event"] == "hello"
        # Unsubscribe on n2 (an integer-looking id given as a string works the same).
        status, body = api(n2, "/api/unsubscribe", {"user_id": "u1", "room": "chat-5"})
        assert body == {"status": "success", "affected": 3}, body
        for ws in u1:
            assert (await recv_type(ws, "left"))["payload"]["room"] == "chat-5"
        status, body = api(n2, "/api/unsubscribe", {"user_id": "u1", "room": "chat-5"})
        assert body == {"status": "success", "affected": 0}, body
        # Disconnect u1 from n2: all three closed 4003, u2 untouched.
        status, body = api(n2, "/api/disconnect", {"user_id": "u1"})
        assert body == {"status": "success", "affected": 3}, body
        for ws in u1:
            assert await closed_code(ws) == 4003
        await u2.send('{"type":"ping"}')
        assert (await recv_json(u2))["type"] == "pong"
        wait_until(lambda: "user-u1" not in api(n1, "/api/rooms")[1]["rooms"], 5,
                   what="user-u1 gone")
        await u2.close()
    run(go())
    assert '"msg":"server API request","node":"n1","op":"subscribe"' in n1.logs()
    assert '"by":"notify token"' in n1.logs()
    assert '"msg":"server API applied"' in n2.logs()
    m1, m2 = metric_samples(n1.metrics()), metric_samples(n2.metrics())
    assert m1[("roomcast_server_api_requests_total", (("op", "subscribe"),))] == 1
    assert m2[("roomcast_server_api_requests_total", (("op", "disconnect"),))] == 1
    # subscribe, unsubscribe twice, disconnect: applied on both replicas.
    assert m1[("roomcast_server_api_applied_total", ())] == 4
    assert m2[("roomcast_server_api_applied_total", ())] == 4


def test_server_api_credentials_and_bad_bodies(server_factory):
    s = node(server_factory, "solo")
    assert api(s, "/api/rooms", token=None)[0] == 401
    assert api(s, "/api/disconnect", {"user_id": "x"}, token=None)[0] == 401
    assert api(s, "/api/disconnect", {"user_id": "x"}, token=make_token("s", "seller"))[0] == 403
    status, body = api(s, "/api/disconnect", {"user_id": "x"}, token=make_token("a", "admin"))
    assert status == 200 and body == {"status": "success", "affected": 0}, body
    assert api(s, "/api/disconnect", {})[0] == 400
    assert api(s, "/api/subscribe", {"user_id": "x"})[0] == 400
    assert api(s, "/api/subscribe", {"user_id": "x", "room": "bad room"})[0] == 400
    assert s.get("/api/subscribe", {"Authorization": "Bearer " + TOKEN})[0] == 405
    status, body = api(s, "/api/rooms")
    assert status == 200 and set(body["nodes"]) == {"solo"} and "partial" not in body


def test_server_api_single_node(server_factory):
    s = node(server_factory, "solo")

    async def go():
        a = await connect(s, make_token("42"))
        status, body = api(s, "/api/subscribe", {"user_id": 42, "room": "order-9"})
        assert body == {"status": "success", "affected": 1}, body
        assert (await recv_type(a, "joined"))["payload"]["room"] == "order-9"
        assert api(s, "/api/rooms")[1]["rooms"]["order-9"] == 1
        assert api(s, "/api/disconnect", {"user_id": "42"})[1]["affected"] == 1
        assert await closed_code(a) == 4003
    run(go())


def test_killed_replica_is_not_waited_for(nodes):
    n1, n2 = nodes
    wait_nodes_known(n1, n2)
    n2.stop(sig=9)
    t0 = time.monotonic()
    status, body = api(n1, "/api/rooms")
    # Within the liveness window the dead replica is still expected: the deadline ends the
    # wait and the answer says it is partial.
    assert status == 200 and set(body["nodes"]) == {"n1"} and body.get("partial") is True
    assert time.monotonic() - t0 < 2
    wait_until(lambda: "partial" not in api(n1, "/api/rooms")[1], 10,
               what="the dead replica forgotten")
