"""Reconnect storms: 200 clients in 5 rooms drop, miss events, and rejoin at once with `since`.
Every client must get exactly the events it missed, in id order, recovered:true, no duplicate,
then the live stream; and the outbox is asked at most once per room (joins of the same page
share one query), or not at all when the recent-events memory covers `since`. With the memory
off the answers are the same; a `since` older than the memory falls back to a query."""

import asyncio
import json
import threading

from pgcluster import sql
from rc import connect, make_token, metric_samples, read_events, recv_json, run, wait_until

ADMIN = make_token("1", "admin")
ROOMS = ["storm-%d" % i for i in range(5)]
PER_ROOM = 40


def publish(cluster, db, room, n, tag):
    """n events in room, each its own transaction, as realtime.publish callers do."""
    return [sql(cluster, db, "SELECT realtime.publish(%s, ARRAY[%s], jsonb_build_object('i', %s))",
                (tag, room, i))[0][0] for i in range(n)]


def counters(server):
    m = metric_samples(server.metrics())
    src = {s: m.get(("roomcast_replays_total", (("source", s),)), 0)
           for s in ("query", "coalesced", "memory")}
    return m[("roomcast_replay_queries_total", ())], src, m


def routed(server):
    return metric_samples(server.metrics())[
        ("roomcast_messages_routed_total", (("source", "db"),))]


async def quiet(ws, seconds=0.3):
    try:
        m = await recv_json(ws, seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message {m}")


def storm(server, cluster, db, since_of, missed):
    """Reconnects PER_ROOM clients per room, all joins sent at once with since_of[room]; checks
    each gets exactly missed[room] (ids, in order), recovered:true, then one live event."""
    async def go():
        socks = await asyncio.gather(*(connect(server, ADMIN)
                                       for _ in range(PER_ROOM * len(ROOMS))))
        pairs = [(ws, ROOMS[i % len(ROOMS)]) for i, ws in enumerate(socks)]
        await asyncio.gather(*(ws.send(json.dumps({"type": "join", "payload": {
            "room": room, "since": since_of[room]}})) for ws, room in pairs))
        results = await asyncio.gather(*(read_events(ws, len(missed[room]))
                                         for ws, room in pairs))
        for (ws, room), (joined, got) in zip(pairs, results):
            assert {k: v for k, v in joined["payload"].items() if k != "position"} == {
                "room": room, "recovered": True, "replayed": len(missed[room])}, joined
            assert [m["id"] for m in got] == missed[room]
            assert all(m["room"] == room for m in got)
        # Then the live stream: once, nothing else.
        live = {room: publish(cluster, db, room, 1, "live")[0] for room in ROOMS}
        for ws, room in pairs:
            m = await recv_json(ws)
            assert m["id"] == live[room] and m["event"] == "live", m
        await asyncio.gather(*(quiet(ws) for ws, _ in pairs))
        await asyncio.gather(*(ws.close() for ws in socks))
        return live
    return run(go())


def away(server, cluster, db, before=3, during=5):
    """Clients see `before` events per room and leave; `during` more are delivered while they
    are away. Returns (the last id each saw per room, the ids they missed per room)."""
    async def go():
        socks = []
        for room in ROOMS:
            ws = await connect(server, ADMIN)
            await ws.send(json.dumps({"type": "join", "payload": {"room": room}}))
            assert (await recv_json(ws))["type"] == "joined"
            socks.append(ws)
        seen = {room: publish(cluster, db, room, before, "before") for room in ROOMS}
        for ws, room in zip(socks, ROOMS):
            for want in seen[room]:
                assert (await recv_json(ws))["id"] == want
            await ws.close()
        return {room: ids[-1] for room, ids in seen.items()}
    last = run(go())
    n0 = routed(server)
    missed = {room: publish(cluster, db, room, during, "missed") for room in ROOMS}
    # Delivered (to nobody) before the rejoin, so that the memory holds them.
    wait_until(lambda: routed(server) >= n0 + during * len(ROOMS), 10, what="events delivered")
    return last, missed


def test_storm_is_answered_from_memory(pgserver, cluster, db):
    server = pgserver()
    last, missed = away(server, cluster, db)
    q0, s0, _ = counters(server)
    storm(server, cluster, db, last, missed)
    q1, s1, m = counters(server)
    assert q1 == q0, "memory covered every since: no outbox query"
    assert s1["memory"] - s0["memory"] == PER_ROOM * len(ROOMS)
    assert m[("roomcast_recent_rooms", ())] >= len(ROOMS)
    assert m[("roomcast_recent_bytes", ())] > 0


def test_storm_is_coalesced_without_memory(pgserver, cluster, db):
    server = pgserver(RECENT_MAX_BYTES="0")
    last, missed = away(server, cluster, db)
    q0, s0, _ = counters(server)
    storm(server, cluster, db, last, missed)
    q1, s1, m = counters(server)
    assert s1["memory"] == s0["memory"] == 0
    assert 1 <= q1 - q0 <= len(ROOMS), (q0, q1, s1)
    assert s1["query"] - s0["query"] == q1 - q0
    assert (s1["query"] + s1["coalesced"]) - (s0["query"] + s0["coalesced"]) == \
        PER_ROOM * len(ROOMS)
    assert m[("roomcast_recent_bytes", ())] == 0


def test_since_older_than_memory_falls_back_to_a_query(pgserver, cluster, db):
    # Two events per room in memory: a since three events back is not covered.
    server = pgserver(RECENT_PER_ROOM="2")
    last, missed = away(server, cluster, db, before=3, during=4)
    q0, s0, _ = counters(server)
    live = storm(server, cluster, db, last, missed)
    q1, s1, _ = counters(server)
    assert s1["memory"] == s0["memory"]
    assert 1 <= q1 - q0 <= len(ROOMS), (q0, q1)
    # A since the memory still covers (the last missed event; the live one followed it) is
    # answered without one.
    since = {room: ids[-1] for room, ids in missed.items()}
    storm(server, cluster, db, since, {room: [live[room]] for room in ROOMS})
    q2, s2, _ = counters(server)
    assert q2 == q1 and s2["memory"] - s1["memory"] == PER_ROOM * len(ROOMS)


def test_events_during_the_storm_arrive_once_in_order(pgserver, cluster, db):
    # Events keep coming while the 200 joins are answered from memory: each client gets what it
    # missed and then every later event, each once, in id order (live frames held during the
    # answer are dropped when the answer carried them).
    server = pgserver()
    last, missed = away(server, cluster, db)
    _, s0, _ = counters(server)
    stop = threading.Event()
    during = {room: [] for room in ROOMS}

    def writer():
        i = 0
        while not stop.is_set() and i < 200:
            room = ROOMS[i % len(ROOMS)]
            during[room].append(publish(cluster, db, room, 1, "during")[0])
            i += 1

    async def go():
        socks = await asyncio.gather(*(connect(server, ADMIN)
                                       for _ in range(PER_ROOM * len(ROOMS))))
        pairs = [(ws, ROOMS[i % len(ROOMS)]) for i, ws in enumerate(socks)]
        t = threading.Thread(target=writer)
        t.start()
        try:
            await asyncio.gather(*(ws.send(json.dumps({"type": "join", "payload": {
                "room": room, "since": last[room]}})) for ws, room in pairs))
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.get_running_loop().run_in_executor(None, t.join)
        end = {room: publish(cluster, db, room, 1, "end")[0] for room in ROOMS}

        async def until_end(ws, room):
            got = []
            while True:
                m = await recv_json(ws, 10)
                if "type" in m:
                    continue
                got.append(m["id"])
                if m["id"] == end[room]:
                    return got
        results = await asyncio.gather(*(until_end(ws, room) for ws, room in pairs))
        assert sum(map(len, during.values())) > 0
        for (ws, room), got in zip(pairs, results):
            assert got == missed[room] + during[room] + [end[room]], (room, got)
        await asyncio.gather(*(ws.close() for ws in socks))
    run(go())
    _, s1, _ = counters(server)
    assert s1["memory"] - s0["memory"] == PER_ROOM * len(ROOMS)
