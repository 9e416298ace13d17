"""Presence (docs/protocol.md): who is in a room, with exact distinct-user counts, per-user
presence_join / presence_leave for connections that joined with presence:true (a user flapping
within a second sends nothing), GET /api/presence, and all of it across two replicas on one real
redis-server, also after a replica is SIGKILLed and after Redis restarts."""

import asyncio
import json
import time

import pytest

from rc import (RedisServer, closed_code, connect, make_token, metric_samples, recv_json,
                recv_type, run, send, wait_until)

TOKEN = "presence-notify-token-0123456789abcdef01"
ROOM = "product-5"


@pytest.fixture
def redis_server():
    r = RedisServer().start()
    yield r
    r.stop()


def node(server_factory, name, redis_addr=None, **extra):
    env = {"NODE_ID": name, "NOTIFY_TOKEN": TOKEN, **extra}
    if redis_addr:
        env["REDIS_ADDR"] = redis_addr
    s = server_factory(env)
    if redis_addr:
        wait_until(lambda: s.json("/health")[1]["redis"] == "up", 10, what="redis up")
    return s


def api_presence(server, room=ROOM):
    status, body = server.get("/api/presence?room=" + room, {"Authorization": "Bearer " + TOKEN})
    assert status == 200, body
    return json.loads(body)


def members(server, room=ROOM):
    p = api_presence(server, room)
    return p["count"], {m["user"]: m["conns"] for m in p["members"]}


async def user(server, sub, presence=False):
    ws = await connect(server, make_token(sub))
    await send(ws, "join", room=ROOM, presence=presence)
    assert (await recv_type(ws, "joined"))["payload"]["room"] == ROOM
    return ws


async def events(ws, seconds):
    """presence_join / presence_leave replies that arrive within `seconds`."""
    out, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        except asyncio.TimeoutError:
            break
        if isinstance(msg, dict) and msg.get("type", "").startswith("presence_"):
            out.append((msg["type"], msg["payload"]["user"]))
    return out


def test_presence_single_node(server_factory):
    s = node(server_factory, "solo", PRESENCE_MAX_MEMBERS="3")

    async def go():
        watcher = await user(s, "w", presence=True)
        a1 = await user(s, "a")
        a2 = await user(s, "a")
        b = await user(s, "b")
        assert await events(watcher, 0.3) == [("presence_join", "a"), ("presence_join", "b")]
        await send(watcher, "presence", room=ROOM)
        p = (await recv_type(watcher, "presence"))["payload"]
        assert p["room"] == ROOM and p["count"] == 3 and "truncated" not in p
        assert {m["user"]: m["conns"] for m in p["members"]} == {"w": 1, "a": 2, "b": 1}
        # Non-members get not_member.
        other = await connect(s, make_token("x"))
        await send(other, "presence", room=ROOM)
        assert (await recv_type(other, "error"))["payload"]["code"] == "not_member"
        # One of a's two connections leaving changes nothing; its last one does, after 1 s.
        await a1.close()
        await a2.close()
        assert await events(watcher, 0.6) == []
        assert members(s)[0] == 2
        assert await events(watcher, 1.5) == [("presence_leave", "a")]
        # b flapping (leave and come back within a second) sends nothing.
        await send(b, "leave", room=ROOM)
        await recv_type(b, "left")
        await send(b, "join", room=ROOM)
        await recv_type(b, "joined")
        assert await events(watcher, 1.5) == []
        # Above PRESENCE_MAX_MEMBERS (3): the list is cut, the count stays exact, and no
        # per-user changes are sent.
        more = [await user(s, u) for u in ("c", "d", "e")]
        got = await events(watcher, 0.5)
        assert got == [("presence_join", "c")], got  # the 4th user is above the limit
        count, listed = members(s)
        assert count == 5 and len(listed) == 3 and api_presence(s)["truncated"] is True
        for ws in more + [b, other, watcher]:
            await ws.close()
    run(go())
    wait_until(lambda: members(s)[0] == 0, 5, what="empty room")
    assert api_presence(s, "order-1") == {"room": "order-1", "count": 0, "members": []}
    m = metric_samples(s.metrics())
    assert m[("roomcast_presence_events_total", ())] == 4  # a, b, c joined; a left
    assert m[("roomcast_presence_published_total", ())] == 0  # no Redis
    assert s.get("/api/presence?room=" + ROOM)[0] == 401
    assert s.get("/api/presence", {"Authorization": "Bearer " + TOKEN})[0] == 400


def test_presence_across_replicas(redis_server, server_factory):
    n1 = node(server_factory, "n1", redis_server.addr)
    n2 = node(server_factory, "n2", redis_server.addr)

    async def go():
        w1 = await user(n1, "w1", presence=True)
        w2 = await user(n2, "w2", presence=True)
        u1 = await user(n1, "u")
        u2 = await user(n2, "u")
        v = await user(n2, "v")
        for s in (n1, n2):
            wait_until(lambda: members(s) == (4, {"w1": 1, "w2": 1, "u": 2, "v": 1}), 5,
                       what="both replicas see 4 users")
        got1 = await events(w1, 0.3)
        assert ("presence_join", "w2") in got1 and got1.count(("presence_join", "u")) == 1
        assert ("presence_join", "v") in got1
        got2 = await events(w2, 0.1)
        assert ("presence_join", "u") in got2 and ("presence_join", "v") in got2
        # u leaves n1 but is still on n2: no leave anywhere. Then its last connection goes.
        await u1.close()
        wait_until(lambda: members(n2)[1].get("u") == 1, 5, what="u down to 1 connection")
        assert await events(w2, 0.3) == []
        await u2.close()
        assert await events(w1, 1.8) == [("presence_leave", "u")]
        # A user on n2 disconnected by the server API leaves on n1's view too.
        status, _ = n1.get("/api/disconnect", {"Authorization": "Bearer " + TOKEN,
                                               "Content-Type": "application/json"},
                           method="POST", body=b'{"user_id":"v"}')
        assert status == 200
        assert await closed_code(v) == 4003
        assert await events(w1, 1.8) == [("presence_leave", "v")]
        # n2 is SIGKILLed: its members disappear from n1 within the liveness window.
        n2.stop(sig=9)
        t0 = time.monotonic()
        msg = await recv_type(w1, "presence_leave", timeout=12)
        assert msg["payload"] == {"room": ROOM, "user": "w2"}
        # Silent for 6 s (announcements every 2 s), then the 1 s flap window (and slack for
        # slow runs under valgrind).
        assert 4 < time.monotonic() - t0 < 10
        assert members(n1) == (1, {"w1": 1})
        await w1.close()
    run(go())


def test_presence_after_redis_restart(redis_server, server_factory):
    n1 = node(server_factory, "n1", redis_server.addr)
    n2 = node(server_factory, "n2", redis_server.addr)

    async def go():
        a = await user(n1, "a")
        b = await user(n2, "b")
        wait_until(lambda: members(n1)[0] == 2 and members(n2)[0] == 2, 5, what="2 users")
        redis_server.kill()
        for s in (n1, n2):
            wait_until(lambda: s.json("/health")[1]["redis"] == "down", 10, what="redis down")
        # A change while Redis is away reaches the other replica through the snapshot.
        c = await user(n2, "c")
        redis_server.start()
        for s in (n1, n2):
            wait_until(lambda: s.json("/health")[1]["redis"] == "up", 15, what="redis up")
        for s in (n1, n2):
            wait_until(lambda: members(s) == (3, {"a": 1, "b": 1, "c": 1}), 5,
                       what="3 users after the restart")
        for ws in (a, b, c):
            await ws.close()
    run(go())
    m = metric_samples(n2.metrics())
    assert m[("roomcast_presence_published_total", ())] >= 3
