"""Per-room Redis subscriptions (docs/operations.md#replicas-and-redis, docs/decisions.md 23):
two roomcast processes on one real redis-server. A replica SUBSCRIBEs to `ws:room:<room>` while
the room has local members and UNSUBSCRIBEs after the last one leaves or disconnects, in
batches; Redis itself (PUBSUB CHANNELS, INFO commandstats) is asked what happened. Every wait
is a bounded poll."""

import asyncio
import json
import time

import pytest

from rc import (Notifier, RedisServer, connect, join, make_token, metric_samples, recv_json,
                run, send, wait_until)

PASSWORD = "redis-rooms-password-41c2"
NOTIFY = "notify-secret"


@pytest.fixture
def redis_server():
    r = RedisServer(password=PASSWORD).start()
    yield r
    r.stop()


def start_node(server_factory, redis_server, node):
    # Clients here send joins and leaves as fast as they can (the default allows 40 at once).
    return server_factory({"REDIS_ADDR": redis_server.addr, "REDIS_PASSWORD": PASSWORD,
                           "NODE_ID": node, "NOTIFY_TOKEN": NOTIFY,
                           "RATE_LIMIT": "100000/s,burst=1000"})


def wait_redis_up(server, timeout=15):
    wait_until(lambda: server.json("/health")[1]["redis"] == "up", timeout=timeout,
               what=f"redis up on {server.env['NODE_ID']}")


@pytest.fixture
def nodes(redis_server, server_factory):
    n1 = start_node(server_factory, redis_server, "n1")
    n2 = start_node(server_factory, redis_server, "n2")
    for n in (n1, n2):
        wait_redis_up(n)
    return n1, n2


def room_channels(redis_server):
    """The ws:room: channels with at least one subscriber, as Redis sees them."""
    r = redis_server.client()
    return {c.decode() for c in r.pubsub_channels("ws:room:*")}


def numsub(redis_server, room):
    return dict(redis_server.client().pubsub_numsub(f"ws:room:{room}"))[
        f"ws:room:{room}".encode()]


def metric(server, name):
    return metric_samples(server.metrics()).get((name, ()), 0)


def subscribe_calls(redis_server):
    stats = redis_server.client().info("commandstats")
    return stats.get("cmdstat_subscribe", {}).get("calls", 0)


async def member(server, sub, *rooms):
    # The rooms claim grants them (product- rooms are receive-only otherwise; decisions 20).
    ws = await connect(server, make_token(sub, rooms=list(rooms) or ["none"]))
    for room in rooms:
        assert (await join(ws, room))["type"] == "joined"
    return ws


async def drain(ws, quiet=0.4):
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(ws.recv(), quiet))
        except asyncio.TimeoutError:
            return out


def test_join_subscribes_only_that_replica_and_leave_or_disconnect_unsubscribes(nodes,
                                                                               redis_server):
    n1, n2 = nodes
    assert not {c for c in room_channels(redis_server) if "product-91" in c}
    before2 = metric(n2, "roomcast_bus_messages_received_total")

    async def go():
        a = await member(n1, "1", "product-91")
        # `joined` came after Redis confirmed the subscription: no waiting needed here.
        assert "ws:room:product-91" in room_channels(redis_server)
        assert numsub(redis_server, "product-91") == 1  # n1 only: n2 has no member there
        assert metric(n1, "roomcast_bus_channels_subscribed") >= 1
        r = redis_server.client()
        payloads = [json.dumps({"event": "e", "data": i}) for i in range(20)]
        for p in payloads:
            assert r.publish("ws:room:product-91", p) == 1
        assert await drain(a) == payloads
        assert metric(n1, "roomcast_bus_messages_received_total") >= 20
        # n2 never saw those 20 (it may have seen other rooms' traffic: none here).
        assert metric(n2, "roomcast_bus_messages_received_total") == before2

        await send(a, "leave", room="product-91")
        assert (await recv_json(a))["type"] == "left"
        wait_until(lambda: "ws:room:product-91" not in room_channels(redis_server),
                   timeout=5, what="ws:room:product-91 unsubscribed after the leave")
        assert r.publish("ws:room:product-91", "after leave") == 0

        # Two members; the room's subscription stays until the last one disconnects.
        b = await member(n1, "2", "product-92")
        c = await member(n1, "3", "product-92")
        conns = metric(n1, "roomcast_connections")
        await b.close()
        wait_until(lambda: metric(n1, "roomcast_connections") == conns - 1, timeout=5,
                   what="the server saw the first member disconnect")
        assert numsub(redis_server, "product-92") == 1
        await c.close()
        wait_until(lambda: numsub(redis_server, "product-92") == 0, timeout=5,
                   what="ws:room:product-92 unsubscribed after its last member disconnected")
        await a.close()
    run(go())
    # n2 has no members left: every ws:room: channel in Redis is n1's.
    wait_until(lambda: metric(n1, "roomcast_bus_channels_subscribed") ==
               len(room_channels(redis_server)), timeout=5,
               what="n1's gauge to match Redis")


def test_broadcast_and_notify_cross_replicas_once_each_with_per_room_subscriptions(nodes):
    n1, n2 = nodes

    async def go():
        sender = await member(n1, "1", "product-93")
        remote = await member(n2, "2", "product-93")
        # A room with no member on n1: n1's notify is published without waiting for an echo.
        only2 = await member(n2, "3", "product-94")
        await send(sender, "broadcast", room="product-93", body={"k": 1})
        for ws in (sender, remote):
            got = await drain(ws)
            assert len(got) == 1 and json.loads(got[0])["body"] == {"k": 1}, got
        n = Notifier(n1, NOTIFY)
        try:
            status, text, _ = n.post({"event": "x", "room": "product-94", "data": 5})
        finally:
            n.close()
        assert status == 200, text
        got = await drain(only2)
        assert len(got) == 1 and json.loads(got[0])["data"] == 5, got
        for ws in (sender, remote, only2):
            await ws.close()
    run(go())
    # Nothing was given up waiting for an echo that could not come.
    assert "redis message lost" not in n1.logs()
    assert metric(n1, "roomcast_redis_publish_failures_total") == 0


def test_a_burst_of_1000_room_joins_costs_a_few_subscribe_commands(redis_server,
                                                                   server_factory):
    n1 = start_node(server_factory, redis_server, "n1")
    wait_redis_up(n1)
    rooms = [f"burst-{i}" for i in range(1000)]

    async def go():
        # 256 rooms per connection at most: four clients, every join sent before any reply
        # is read.
        clients = []
        for k in range(4):
            part = rooms[k * 250:(k + 1) * 250]
            ws = await connect(n1, make_token(f"b{k}", rooms=["burst-*"]))
            clients.append((ws, part))
        # Their automatic rooms (user-b<k>) are subscribed before the count starts.
        wait_until(lambda: all(numsub(redis_server, f"user-b{k}") == 1 for k in range(4)),
                   timeout=5, what="the clients' own rooms subscribed")
        before = subscribe_calls(redis_server)
        started = time.monotonic()
        for ws, part in clients:
            for r in part:
                await send(ws, "join", room=r)
        for ws, part in clients:
            seen = 0
            deadline = time.monotonic() + 20
            while seen < len(part):
                msg = await recv_json(ws, max(0.1, deadline - time.monotonic()))
                assert msg["type"] == "joined", msg
                seen += 1
        subscribed = room_channels(redis_server)
        assert all(f"ws:room:{r}" in subscribed for r in rooms)
        elapsed = time.monotonic() - started
        calls = subscribe_calls(redis_server) - before
        print(f"1000 rooms joined in {elapsed:.2f} s with {calls} SUBSCRIBE commands")
        # While joins keep coming, one command per 20 ms at most (SUB_INTERVAL_MS), each with
        # up to 512 rooms: 3 here on a plain build (one per join would be 1 000, one per loop
        # pass was 280); a slower build (valgrind) takes longer to read the joins.
        assert calls <= min(100, 3 + elapsed / 0.020), (calls, elapsed)
        assert metric(n1, "roomcast_bus_channels_subscribed") >= 1000
        # Every other room left: exactly the rest stays subscribed (rooms looked up and
        # removed by the hundred in between).
        for ws, part in clients:
            for r in part[1::2]:
                await send(ws, "leave", room=r)
        for ws, part in clients:
            for _ in part[1::2]:
                assert (await recv_json(ws, 20))["type"] == "left"
        kept = {f"ws:room:{r}" for ws, part in clients for r in part[0::2]}
        wait_until(lambda: {c for c in room_channels(redis_server)
                            if c.startswith("ws:room:burst-")} == kept,
                   timeout=10, what="only the rooms still joined subscribed")
        for ws, _ in clients:
            await ws.close()
    run(go())
    wait_until(lambda: not any(c.startswith("ws:room:burst-") for c in room_channels(redis_server)),
               timeout=10, what="the 1000 rooms unsubscribed")


def test_redis_restart_resubscribes_every_local_room_and_messages_flow_again(nodes,
                                                                            redis_server):
    n1, n2 = nodes
    rooms = [f"product-{700 + i}" for i in range(30)]

    async def go():
        a = await member(n1, "1", *rooms)
        b = await member(n2, "2", rooms[0])
        redis_server.kill()
        for n in (n1, n2):
            wait_until(lambda n=n: n.json("/health")[1]["redis"] == "down", timeout=8,
                       what="redis down")
        redis_server.start()
        for n in (n1, n2):
            wait_redis_up(n)
        # "up" comes after every room's subscription was confirmed again.
        subscribed = room_channels(redis_server)
        assert all(f"ws:room:{r}" in subscribed for r in rooms), subscribed
        assert numsub(redis_server, rooms[0]) == 2
        r = redis_server.client()
        for room in rooms:
            assert r.publish(f"ws:room:{room}", f"back {room}") >= 1
        got = await drain(a)
        assert got == [f"back {room}" for room in rooms]
        assert await drain(b) == [f"back {rooms[0]}"]
        await send(b, "broadcast", room=rooms[0], body="hi")
        ga, gb = await drain(a), await drain(b)
        assert len(ga) == 1 and len(gb) == 1 and json.loads(ga[0])["body"] == "hi"
        await a.close()
        await b.close()
    run(go())


def test_rest_service_raw_publish_is_delivered_byte_for_byte(nodes, redis_server):
    n1, n2 = nodes
    # The REST service's notification format, spacing and escapes as it writes them.
    raw = ('{"event":"order_status_changed","data":{"order_id":7,"status":"SHIPPED",'
           '"note":"caf\\u00e9 \u00e9"},"to":"order-7","timestamp":"2026-12-05T23:00:00.000Z"}')

    async def go():
        a = await member(n1, "1", "order-7")
        b = await member(n2, "2", "order-7")
        assert redis_server.client().publish("ws:room:order-7", raw.encode()) == 2
        for ws in (a, b):
            got = await drain(ws)
            assert got == [raw]
        await a.close()
        await b.close()
    run(go())


def test_broadcast_sent_before_the_join_is_confirmed_reaches_everyone_once(nodes,
                                                                          redis_server):
    """join and broadcast in one burst: the broadcast is held until Redis confirms the new
    room's subscription, then published; the sender's replica gets it back exactly once."""
    n1, n2 = nodes

    async def go():
        remote = await member(n2, "2", "product-95")
        ws = await connect(n1, make_token("1", rooms=["product-95"]))
        await ws.send(json.dumps({"type": "join", "payload": {"room": "product-95"}}))
        for i in range(5):
            await send(ws, "broadcast", room="product-95", body=i)
        got = await drain(ws)
        assert json.loads(got[0])["type"] == "joined", got
        assert [json.loads(g)["body"] for g in got[1:]] == [0, 1, 2, 3, 4], got
        assert [json.loads(g)["body"] for g in await drain(remote)] == [0, 1, 2, 3, 4]
        await ws.close()
        await remote.close()
    run(go())
    assert "redis message lost" not in n1.logs()
    assert metric(n1, "roomcast_redis_publish_failures_total") == 0


def test_join_and_leave_churn_ends_in_the_right_subscription_state(nodes, redis_server):
    """Joins and leaves of one room faster than Redis confirms them (one command per room in
    flight, the rest decided when each confirmation arrives): the end state is what the
    last membership says, and messages then flow."""
    n1, _ = nodes

    async def go():
        ws = await connect(n1, make_token("1", rooms=["churn-*"]))
        for _ in range(30):
            await send(ws, "join", room="churn-1")
            await send(ws, "leave", room="churn-1")
        await drain(ws)
        wait_until(lambda: numsub(redis_server, "churn-1") == 0, timeout=5,
                   what="churn-1 unsubscribed after the last leave")
        for _ in range(30):
            await send(ws, "leave", room="churn-2")
            await send(ws, "join", room="churn-2")
        got = [json.loads(m) for m in await drain(ws)]
        assert got[-1] == {"type": "joined", "payload": {"room": "churn-2"}}, got[-1]
        assert numsub(redis_server, "churn-2") == 1
        assert redis_server.client().publish("ws:room:churn-2", "still here") == 1
        assert await drain(ws) == ["still here"]
        await ws.close()
    run(go())
    wait_until(lambda: metric(n1, "roomcast_bus_channels_subscribed") ==
               sum(1 for c in room_channels(redis_server)), timeout=5,
               what="the gauge to follow Redis")
