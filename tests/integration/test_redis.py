"""Replicas on Redis (docs/operations.md, issue 4): two roomcast processes on one real redis-server.

Broadcasts and notifies cross replicas exactly once each, payloads other producers PUBLISH are
forwarded byte for byte, `events` stats go to admins and the matching seller, and the link
survives Redis being killed, restarted and frozen: degraded local delivery meanwhile, "down" in
/health and /ready, recovery without restarting roomcast. Every wait is a bounded poll."""

import asyncio
import json
import socket
import subprocess
import threading
import time

import pytest

from rc import (Notifier, RedisServer, connect, join, make_token, metric_samples, recv_json,
                run, send, settle, wait_until)

PASSWORD = "redis-test-password-7f3a"
NOTIFY = "notify-secret"
# Heartbeat every 2 s with a 3 s deadline: a frozen Redis is noticed within 5 s.
DETECT_S = 5 + 2.5


@pytest.fixture
def redis_server():
    r = RedisServer(password=PASSWORD).start()
    yield r
    r.stop()


def start_node(server_factory, redis_addr, node, password=PASSWORD, **extra):
    env = {"REDIS_ADDR": redis_addr, "NODE_ID": node, "NOTIFY_TOKEN": NOTIFY}
    if password:
        env["REDIS_PASSWORD"] = password
    env.update(extra)
    return server_factory(env)


def redis_state(server):
    return server.json("/health")[1]["redis"]


def wait_redis(server, state, timeout=10):
    wait_until(lambda: redis_state(server) == state, timeout=timeout,
               what=f"redis {state} on {server.env['NODE_ID']}")


@pytest.fixture
def nodes(redis_server, server_factory):
    n1 = start_node(server_factory, redis_server.addr, "n1")
    n2 = start_node(server_factory, redis_server.addr, "n2")
    for n in (n1, n2):
        wait_redis(n, "up")
    return n1, n2


async def drain(ws, quiet=0.5):
    """Everything that arrives until `quiet` seconds pass without a message."""
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(ws.recv(), quiet))
        except asyncio.TimeoutError:
            return out


async def member(server, sub, room=None, **claims):
    # product- rooms are receive-only for users: the token grants the room so members may
    # broadcast there (docs/decisions.md, 20).
    if room:
        claims.setdefault("rooms", [room])
    ws = await connect(server, make_token(sub, **claims))
    if room:
        assert (await join(ws, room))["type"] == "joined"
    return ws


def notify(server, body):
    n = Notifier(server, NOTIFY)
    try:
        status, text, _ = n.post(body)
    finally:
        n.close()
    assert status == 200, text
    return json.loads(text)


def routed(server, source):
    return metric_samples(server.metrics()).get(
        ("roomcast_messages_routed_total", (("source", source),)), 0)


def assert_no_password_logged(*servers):
    for s in servers:
        assert PASSWORD not in s.logs()


# ---- delivery across replicas ----

def test_broadcast_on_node1_reaches_both_nodes_once_each(nodes):
    n1, n2 = nodes

    async def go():
        sender = await member(n1, "1", "product-77")
        local = await member(n1, "2", "product-77")
        remote = await member(n2, "3", "product-77")
        outsider = await member(n2, "4")
        await send(sender, "broadcast", room="product-77", body={"hello": "world"})
        for ws in (sender, local, remote):
            got = await drain(ws)
            assert len(got) == 1, got
            msg = json.loads(got[0])
            assert msg["room"] == "product-77" and msg["body"] == {"hello": "world"}
            assert msg["id"].startswith("n1-") and msg["user"] == "1"
        assert await drain(outsider, 0.2) == []
        for ws in (sender, local, remote, outsider):
            await ws.close()
    run(go())
    # The publisher recognised its own message when it came back from Redis; the other
    # replica received a foreign one.
    assert routed(n1, "broadcast") == 1 and routed(n1, "redis") == 0
    assert routed(n2, "redis") == 1 and routed(n2, "broadcast") == 0
    assert_no_password_logged(n1, n2)


def test_notify_on_node2_with_user_id_reaches_the_user_on_node1(nodes):
    n1, n2 = nodes

    async def go():
        user = await member(n1, "42")
        other = await member(n1, "43")
        body = notify(n2, {"event": "order_shipped", "user_id": "42", "data": {"order": 7}})
        got = await drain(user)
        assert len(got) == 1, got
        msg = json.loads(got[0])
        assert msg["event"] == "order_shipped" and msg["room"] == "user-42"
        assert msg["data"] == {"order": 7} and msg["id"] == body["id"]
        assert body["id"].startswith("n2-n")
        assert await drain(other, 0.2) == []
        await user.close()
        await other.close()
    run(go())


def test_payload_published_by_another_producer_arrives_byte_equal(nodes, redis_server):
    n1, n2 = nodes
    # Odd spacing, key order and escapes that any re-serialisation would change.
    raw = '{ "z":1,"a" : [1, 2.50, "é\\u00e9 😀"],  "type":"custom" }'

    async def go():
        a = await member(n1, "1", "product-5")
        b = await member(n2, "2", "product-5")
        r = redis_server.client()
        # Not UTF-8: a browser would fail the connection on such a text frame, so it is dropped.
        assert r.publish("ws:room:product-5", b'{"bad":"\xff\xfe"}') >= 2
        assert r.publish("ws:room:product-5", raw.encode()) >= 2
        for ws in (a, b):
            got = await drain(ws)
            assert got == [raw]
        await a.close()
        await b.close()
    run(go())


def test_stats_events_reach_admins_and_the_matching_seller_only(nodes, redis_server):
    n1, n2 = nodes
    r = redis_server.client()
    admin_stats = '{"type":"ADMIN_STATS_UPDATED","data":{"orders":12,"revenue":"99.50"}}'
    seller3 = '{"type": "SELLER_STATS_UPDATED", "seller_id": 3, "data": {"orders": 2}}'
    seller4 = '{"type":"SELLER_STATS_UPDATED","data":{"seller_id":"4","orders":5}}'
    seller5 = '{"type":"SELLER_STATS_UPDATED","payload":{"seller_id":5}}'

    async def go():
        admin1 = await member(n1, "a1", role="admin")
        admin2 = await member(n2, "a2", role="admin")
        s3 = await member(n2, "103", role="seller", seller_id=3)
        s4 = await member(n1, "104", role="seller", seller_id=4)
        s5 = await member(n1, "105", role="seller", seller_id=5)
        user = await member(n1, "7")
        for payload in (admin_stats, seller3, seller4, seller5):
            r.publish("events", payload.encode())
        r.publish("events", b'{"type":"SOMETHING_ELSE","seller_id":3}')
        r.publish("events", b"not json")
        assert await drain(admin1) == [admin_stats]
        assert await drain(admin2) == [admin_stats]
        assert await drain(s3) == [seller3]
        assert await drain(s4) == [seller4]
        assert await drain(s5) == [seller5]
        assert await drain(user, 0.2) == []
        for ws in (admin1, admin2, s3, s4, s5, user):
            await ws.close()
    run(go())


def test_burst_of_10000_notifies_on_node1_reaches_node2_in_order(nodes):
    n1, n2 = nodes
    n = 10000

    def push():
        notifier = Notifier(n1, NOTIFY)
        try:
            for i in range(n):
                status, body, _ = notifier.post({"event": "burst", "room": "product-9",
                                                 "data": {"i": i}})
                assert status == 200, (i, body)
        finally:
            notifier.close()

    async def go():
        ws = await member(n2, "5", "product-9")
        pusher = asyncio.get_running_loop().run_in_executor(None, push)
        got = []
        deadline = time.monotonic() + 120
        try:
            while len(got) < n and time.monotonic() < deadline:
                if pusher.done() and pusher.exception():
                    raise pusher.exception()
                try:
                    got.append((await recv_json(ws, timeout=0.5))["data"]["i"])
                except asyncio.TimeoutError:
                    pass
        finally:
            await settle(pusher)
        await pusher
        assert got == list(range(n))
        assert await drain(ws, 0.3) == []
        await ws.close()
    run(go())


# ---- failures ----

async def check_local_only(sender_node, sender, local, remote, room, tag):
    """A broadcast while Redis is away reaches the sender's node (once) and not the other."""
    await send(sender, "broadcast", room=room, body={"tag": tag})
    for ws in (sender, local):
        got = await drain(ws)
        assert [json.loads(m)["body"] for m in got] == [{"tag": tag}]
    assert await drain(remote, 0.3) == []


async def cross_node_works(sender, receivers, room, tag, timeout=20):
    """Broadcasts until one arrives everywhere: after a reconnect the first messages may still
    take the degraded path on one side. Returns once a broadcast reached every receiver."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n += 1
        body = {"tag": tag, "n": n}
        await send(sender, "broadcast", room=room, body=body)
        ok = True
        for ws in receivers:
            got = [json.loads(m)["body"] for m in await drain(ws, 0.4)]
            ok = ok and body in got
        if ok:
            return
    raise AssertionError(f"cross-node delivery did not resume within {timeout}s")


def test_redis_killed_both_nodes_serve_locally_then_resume_after_restart(nodes, redis_server):
    n1, n2 = nodes

    async def go():
        a = await member(n1, "1", "product-3")
        b = await member(n1, "2", "product-3")
        c = await member(n2, "3", "product-3")
        d = await member(n2, "4", "product-3")
        redis_server.kill()
        for n in (n1, n2):
            wait_redis(n, "down", timeout=5)
            status, health = n.json("/health")
            assert status == 200 and health["status"] == "degraded"
            status, ready = n.json("/ready")
            assert status == 503 and ready["redis"] == "down"
        await check_local_only(n1, a, b, c, "product-3", "n1-alone")
        await check_local_only(n2, c, d, a, "product-3", "n2-alone")
        # notify is degraded the same way, and still answered 200
        notify(n2, {"event": "e", "room": "product-3", "data": 1})
        assert len(await drain(c)) == 1 and len(await drain(d)) == 1
        assert await drain(a, 0.3) == []

        redis_server.start()
        for n in (n1, n2):
            wait_redis(n, "up", timeout=15)
            assert n.json("/ready")[0] == 200
        await cross_node_works(a, (b, c, d), "product-3", "back")
        for ws in (a, b, c, d):
            await ws.close()
    run(go())
    metrics = n1.metrics()
    if "roomcast_redis_publish_failures_total" in metrics:
        samples = metric_samples(metrics)
        assert samples[("roomcast_redis_publish_failures_total", ())] >= 1
        assert samples[("roomcast_redis_reconnects_total", ())] >= 1
        assert samples[("roomcast_redis_up", ())] == 1
    assert_no_password_logged(n1, n2)


def test_publisher_members_lose_nothing_across_a_redis_kill_and_restart(nodes, redis_server):
    """Notifies in flight when Redis dies are delivered by the publisher itself (they never
    came back on its subscription), later ones locally, and after the restart through Redis
    again: the publisher's own members get every one exactly once, in order. Members of the
    other replica miss the degraded window (at-most-once) but never get one twice."""
    n1, n2 = nodes
    n = 3000

    def push(progress, gate):
        notifier = Notifier(n1, NOTIFY)
        try:
            for i in range(n):
                if i == 2 * n // 3:
                    assert gate.wait(30), "Redis did not come back"
                status, body, _ = notifier.post({"event": "e", "room": "product-6",
                                                 "data": {"i": i}})
                assert status == 200, (i, body)
                progress[0] = i
        finally:
            notifier.close()

    async def collect(ws, got, until):
        while not until():
            try:
                got.append((await recv_json(ws, timeout=0.2))["data"]["i"])
            except asyncio.TimeoutError:
                pass

    async def go():
        local = await member(n1, "1", "product-6")
        remote = await member(n2, "2", "product-6")
        progress, gate = [0], threading.Event()
        pusher = asyncio.get_running_loop().run_in_executor(None, push, progress, gate)
        got_local, got_remote = [], []
        done = lambda: pusher.done() and len(got_local) >= n  # noqa: E731
        deadline = time.monotonic() + 50
        collectors = asyncio.gather(
            collect(local, got_local, lambda: done() or time.monotonic() > deadline),
            collect(remote, got_remote, lambda: done() or time.monotonic() > deadline))
        try:
            while progress[0] < n // 3 and not pusher.done():
                await asyncio.sleep(0.01)
            redis_server.kill()
            while progress[0] < 2 * n // 3 - 1 and not pusher.done():
                await asyncio.sleep(0.01)
            redis_server.start()
            for node in (n1, n2):
                await asyncio.get_running_loop().run_in_executor(None, wait_redis, node, "up", 15)
            gate.set()
            await collectors
        finally:
            gate.set()
            collectors.cancel()
            await settle(pusher)
        await pusher
        got_remote += [json.loads(m)["data"]["i"] for m in await drain(remote)]
        assert got_local == list(range(n))
        assert got_remote == sorted(set(got_remote))
        # Once both replicas were back on Redis, the other replica got everything again.
        assert set(range(2 * n // 3, n)) <= set(got_remote)
        await local.close()
        await remote.close()
    run(go())


def test_redis_frozen_is_detected_by_the_heartbeat_and_recovers(nodes, redis_server):
    n1, n2 = nodes

    async def go():
        a = await member(n1, "1", "product-4")
        b = await member(n1, "2", "product-4")
        c = await member(n2, "3", "product-4")
        redis_server.freeze()
        t0 = time.monotonic()
        try:
            for n in (n1, n2):
                wait_redis(n, "down", timeout=max(0.2, DETECT_S - (time.monotonic() - t0)))
            detected = time.monotonic() - t0
            assert detected <= DETECT_S, detected
            assert n1.json("/ready")[0] == 503
            await check_local_only(n1, a, b, c, "product-4", "frozen")
        finally:
            redis_server.thaw()
        for n in (n1, n2):
            wait_redis(n, "up", timeout=20)
        await cross_node_works(a, (b, c), "product-4", "thawed")
        for ws in (a, b, c):
            await ws.close()
    run(go())


def test_start_while_redis_is_down_then_connect_when_it_appears(server_factory):
    # The port stays bound (not listening: connects are refused) until Redis starts, so that
    # the replicas' own free ports cannot be this one.
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", 0))
    redis = RedisServer(password=PASSWORD, port=hold.getsockname()[1])
    try:
        n1 = start_node(server_factory, redis.addr, "n1")
        n2 = start_node(server_factory, redis.addr, "n2")
        for n in (n1, n2):
            assert redis_state(n) == "down"
            assert n.json("/ready")[0] == 503

        async def go():
            a = await member(n1, "1", "product-8")
            b = await member(n1, "2", "product-8")
            c = await member(n2, "3", "product-8")
            await check_local_only(n1, a, b, c, "product-8", "before")
            hold.close()
            redis.start()
            for n in (n1, n2):
                wait_redis(n, "up", timeout=15)
            await cross_node_works(a, (b, c), "product-8", "after")
            for ws in (a, b, c):
                await ws.close()
        run(go())
    finally:
        hold.close()
        redis.stop()


def test_wrong_password_keeps_the_link_down_and_is_never_logged(server_factory, redis_server):
    n1 = start_node(server_factory, redis_server.addr, "n1", password="wrong-" + PASSWORD)
    wait_until(lambda: "AUTH failed" in n1.logs(), timeout=10, what="AUTH failure logged")
    assert redis_state(n1) == "down"
    assert n1.json("/ready")[0] == 503
    assert "wrong-" + PASSWORD not in n1.logs() and PASSWORD not in n1.logs()


@pytest.mark.parametrize("addr", ["redis://127.0.0.1:6379", "127.0.0.1:0", "127.0.0.1:x",
                                  ":6379", "127.0.0.1:70000"])
def test_invalid_redis_addr_stops_start_up_naming_the_variable(server_factory, addr):
    s = server_factory({"REDIS_ADDR": addr}, wait=False)
    try:
        rc = s.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("roomcast kept running with an invalid REDIS_ADDR")
    assert rc != 0
    assert "REDIS_ADDR" in s.logs()
