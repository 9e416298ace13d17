"""Joins with since 0 (a client that saw nothing of the room): answered from the recent-events
memory, with no outbox query, when the outbox was empty as roomcast first read it (then every
event of every room since went through its memory); by a query when the outbox already held
events then (they may belong to the room), so those are still replayed."""

import asyncio
import json

from pgcluster import sql
from rc import connect, make_token, metric_samples, recv_json, run, wait_until

ADMIN = make_token("1", "admin")


def publish(cluster, db, room, n, tag):
    """n events in room, each its own transaction, as realtime.publish callers do."""
    return [sql(cluster, db, "SELECT realtime.publish(%s, ARRAY[%s], jsonb_build_object('i', %s))",
                (tag, room, i))[0][0] for i in range(n)]


def counters(server):
    m = metric_samples(server.metrics())
    return (m[("roomcast_replay_queries_total", ())],
            m.get(("roomcast_replays_total", (("source", "memory"),)), 0))


def routed(server):
    return metric_samples(server.metrics())[
        ("roomcast_messages_routed_total", (("source", "db"),))]


def rejoin_since_zero(server, want):
    """One client joins every room of want with since 0: recovered:true and exactly want[room]
    (ids, in order), then nothing else."""
    async def go():
        ws = await connect(server, ADMIN)
        for room, ids in want.items():
            await ws.send(json.dumps({"type": "join", "payload": {"room": room, "since": 0}}))
            joined = await recv_json(ws)
            joined["payload"].pop("position", None)
            assert joined == {"type": "joined", "payload": {
                "room": room, "recovered": True, "replayed": len(ids)}}, joined
            got = [(await recv_json(ws))["id"] for _ in ids]
            assert got == ids, (room, got)
        try:
            m = await recv_json(ws, 0.3)
            raise AssertionError(f"unexpected message {m}")
        except asyncio.TimeoutError:
            pass
        await ws.close()
    run(go())


def empty_outbox(cluster, db):
    sql(cluster, db, "DELETE FROM realtime.events")
    assert sql(cluster, db, "SELECT pruned_through FROM realtime.outbox_state")[0][0] == 0


def test_since_zero_from_memory_when_the_outbox_started_empty(pgserver, cluster, db):
    empty_outbox(cluster, db)
    server = pgserver()
    n0 = routed(server)
    ids = publish(cluster, db, "zero-a", 3, "e")
    wait_until(lambda: routed(server) >= n0 + 3, 10, what="events delivered")
    q0, mem0 = counters(server)
    rejoin_since_zero(server, {"zero-a": ids, "zero-empty": []})
    q1, mem1 = counters(server)
    assert q1 == q0, "the memory held both rooms' whole history: no outbox query"
    assert mem1 - mem0 == 2


def test_since_zero_queries_when_the_outbox_held_events(pgserver, cluster, db):
    empty_outbox(cluster, db)
    before = publish(cluster, db, "zero-a", 2, "old")  # committed before roomcast started
    server = pgserver()
    n0 = routed(server)
    ids = publish(cluster, db, "zero-a", 2, "e")
    wait_until(lambda: routed(server) >= n0 + 2, 10, what="events delivered")
    q0, mem0 = counters(server)
    rejoin_since_zero(server, {"zero-a": before + ids, "zero-empty": []})
    q1, mem1 = counters(server)
    assert q1 - q0 == 2 and mem1 == mem0
