"""`joined` carries the room's position: an event id such that a rejoin with `since` = the
greater of it and the last id the client saw misses nothing and repeats nothing, also for a
client that saw no event of the room (which otherwise has nothing better than since 0, a read of
the room's whole history). Rows are written as the REST service writes them (market.py)."""

import asyncio
import json

import market
import psycopg2
from pgcluster import sql
from rc import connect, make_token, metric_samples, recv_json, run, wait_until

ADMIN = make_token("1", "admin")


def routed(server):
    return metric_samples(server.metrics())[
        ("roomcast_messages_routed_total", (("source", "db"),))]


def counters(server):
    m = metric_samples(server.metrics())
    return (m[("roomcast_replay_queries_total", ())],
            m.get(("roomcast_replays_total", (("source", "memory"),)), 0))


def outbox_ids(cluster, db, room, after=0):
    return [r[0] for r in sql(cluster, db, "SELECT id FROM realtime.events WHERE rooms @> "
                                           "ARRAY[%s] AND id > %s ORDER BY id", (room, after))]


def count(cluster, db):
    return sql(cluster, db, "SELECT count(*) FROM realtime.events")[0][0]


def settle(server, cluster, db, before=0):
    """Waits until roomcast has delivered every event in the outbox (but the before first)."""
    n = count(cluster, db) - before
    wait_until(lambda: routed(server) >= n, 10, what="outbox delivered")


async def quiet(ws, s=0.3):
    try:
        m = await recv_json(ws, s)
        raise AssertionError(f"unexpected message {m}")
    except asyncio.TimeoutError:
        pass


async def join(ws, room, since=None):
    payload = {"room": room}
    if since is not None:
        payload["since"] = since
    await ws.send(json.dumps({"type": "join", "payload": payload}))
    joined = await recv_json(ws)
    assert joined["type"] == "joined" and joined["payload"]["room"] == room, joined
    return joined["payload"]


async def first_join(ws, room):
    """Joins room once roomcast knows a position (it has read the outbox once)."""
    for _ in range(100):
        p = await join(ws, room)
        if "position" in p:
            return p
        await ws.send(json.dumps({"type": "leave", "payload": {"room": room}}))
        assert (await recv_json(ws))["type"] == "left"
        await asyncio.sleep(0.05)
    raise AssertionError("joined never carried a position")


def new_order(dsn):
    seller = market.create_seller(dsn)
    product = market.create_product(dsn, seller)
    client = market.create_client(dsn)
    return market.create_order(dsn, client, [(product, 1)])


def test_rejoin_from_the_position_misses_nothing(pgserver, cluster, db):
    server = pgserver()
    dsn = cluster.dsn_for(db)
    seen_order, quiet_order = new_order(dsn), new_order(dsn)
    settle(server, cluster, db)
    rooms = {"seen": "order-%d" % seen_order, "quiet": "order-%d" % quiet_order}
    old = {k: outbox_ids(cluster, db, r) for k, r in rooms.items()}
    assert old["seen"] and old["quiet"]

    async def go():
        ws = await connect(server, ADMIN)
        pos = {}
        for k, r in rooms.items():
            p = await first_join(ws, r)
            assert set(p) == {"room", "position"}, p
            pos[k] = p["position"]
            # Everything delivered before the join is at or below it.
            assert pos[k] >= max(old["seen"] + old["quiet"]), (p, old)
        # Live while joined: one event in the seen room.
        market.set_order_status(dsn, seen_order, "paid")
        live = [m["id"] for m in [await recv_json(ws)]]
        assert live == outbox_ids(cluster, db, rooms["seen"], max(old["seen"])), live
        await quiet(ws)
        await ws.close()
        # Missed while away.
        for status in ("shipped", "delivered"):
            market.set_order_status(dsn, seen_order, status)
            market.set_order_status(dsn, quiet_order, status)
        missed = {"seen": outbox_ids(cluster, db, rooms["seen"], live[-1]),
                  "quiet": outbox_ids(cluster, db, rooms["quiet"], max(old["quiet"]))}
        assert len(missed["seen"]) == 2 and len(missed["quiet"]) == 2
        settle(server, cluster, db)
        ws = await connect(server, ADMIN)
        for k, since in (("seen", max(pos["seen"], live[-1])), ("quiet", pos["quiet"])):
            p = await join(ws, rooms[k], since)
            assert p["recovered"] is True and p["replayed"] == len(missed[k]), (k, p)
            got = [(await recv_json(ws))["id"] for _ in missed[k]]
            assert got == missed[k], (k, got)
        await quiet(ws)
        await ws.close()
    run(go())


def test_rejoin_from_the_position_answered_from_memory(pgserver, cluster, db):
    """The outbox held events when roomcast started, so a rejoin with since 0 must read it; one
    from the position `joined` carried is answered from the recent memory, no outbox query."""
    dsn = cluster.dsn_for(db)
    order = new_order(dsn)  # committed before roomcast started
    room, empty = "order-%d" % order, "quiet-none-%d" % order
    before = outbox_ids(cluster, db, room)
    assert before
    n0 = count(cluster, db)
    server = pgserver()

    async def go():
        ws = await connect(server, ADMIN)
        p, p_empty = await first_join(ws, room), await join(ws, empty)
        assert p["position"] >= max(before), p
        await quiet(ws)
        await ws.close()
        market.set_order_status(dsn, order, "paid")
        missed = outbox_ids(cluster, db, room, max(before))
        assert len(missed) == 1
        settle(server, cluster, db, n0)
        q0, mem0 = counters(server)
        ws = await connect(server, ADMIN)
        r = await join(ws, room, p["position"])
        assert r["recovered"] is True and r["replayed"] == 1, r
        assert [(await recv_json(ws))["id"]] == missed
        r = await join(ws, empty, p_empty["position"])
        assert r["recovered"] is True and r["replayed"] == 0, r
        await quiet(ws)
        q1, mem1 = counters(server)
        assert q1 == q0, "the memory covered both positions: no outbox query"
        assert mem1 - mem0 == 2
        # Since 0 still reads the outbox (it held events before roomcast started).
        r = await join(ws, room, 0)
        assert r["replayed"] == len(before) + 1, r
        await ws.close()
    run(go())


def test_position_past_an_open_transaction(pgserver, cluster, db):
    """Ids commit out of order: an event with a smaller id still open when a later one was
    delivered (and became the position) is replayed on a rejoin from the position."""
    server = pgserver()
    dsn = cluster.dsn_for(db)
    slow = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with slow.cursor() as cur:  # open: its id is below the next one's
            cur.execute("SELECT realtime.publish('late', ARRAY['oo-a'], '{}'::jsonb)")
            late = cur.fetchone()[0]
        fast = sql(cluster, db,
                   "SELECT realtime.publish('fast', ARRAY['oo-b'], '{}'::jsonb)")[0][0]
        assert late < fast
        wait_until(lambda: routed(server) >= 1, 10, what="fast delivered")

        async def go():
            ws = await connect(server, ADMIN)
            p = await first_join(ws, "oo-a")
            assert p["position"] >= fast, p
            await ws.close()
            slow.commit()
            wait_until(lambda: routed(server) >= 2, 10, what="late delivered")
            ws = await connect(server, ADMIN)
            r = await join(ws, "oo-a", p["position"])
            assert r["recovered"] is True and r["replayed"] == 1, r
            assert (await recv_json(ws))["id"] == late
            await quiet(ws)
            await ws.close()
        run(go())
    finally:
        slow.close()
