"""A reconnect storm with `serve --workers 4`: 40 clients in 4 rooms, spread over the workers,
rejoin at once with `since` while the feed's query pool is busy. The members of one room sit on
several workers, each of which asks the feed for the same replay page; the feed runs identical
shared queries still queued once (at most one outbox query per room), and a replay that waited
in the queue is not failed for the wait: every client gets exactly what it missed,
recovered:true. The same holds in one process when its query connection is lost."""

import asyncio
import json
import signal

import psycopg2

from pgcluster import sql
from rc import connect, make_token, read_events, recv_json, run, wait_until
from test_workers_pg import children, is_feed, redis_addr, server_pid_of, start  # noqa: F401

ADMIN = make_token("1", "admin")
ROOMS = ["sw-%d" % i for i in range(4)]
PER_ROOM = 10
BLOCKERS = ["sw-block-0", "sw-block-1"]  # one per query connection of the feed (PG_POOL_SIZE 2)


def publish(cluster, db, room, n, tag):
    return [sql(cluster, db, "SELECT realtime.publish(%s, ARRAY[%s], jsonb_build_object('i', %s))",
                (tag, room, i))[0][0] for i in range(n)]


def feed_counters(logs):
    """The feed's last "feed shared queries" line: (run, coalesced)."""
    run_, co = 0, 0
    for line in logs.splitlines():
        if "feed shared queries" not in line:
            continue
        rec = json.loads(line[line.index("{"):])
        run_, co = int(rec["run"]), int(rec["coalesced"])
    return run_, co


async def all_recovered(pairs, missed):
    """Each (client, room) of pairs gets joined recovered:true, then exactly missed[room]."""
    results = await asyncio.gather(*(read_events(ws, len(missed[room]), 20)
                                     for ws, room in pairs))
    for (ws, room), (joined, got) in zip(pairs, results):
        assert {k: v for k, v in joined["payload"].items() if k != "position"} == {
            "room": room, "recovered": True, "replayed": len(missed[room])}, joined
        assert [m["id"] for m in got] == missed[room]


def waiting_on_lock(cluster, db):
    return sql(cluster, db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND application_name = 'roomcast-query' "
                            "AND wait_event_type = 'Lock'")[0][0]


def query_backends(cluster, db):
    return [r[0] for r in sql(cluster, db, "SELECT pid FROM pg_stat_activity WHERE datname = "
                                           "current_database() AND application_name = "
                                           "'roomcast-query' ORDER BY pid")]


def test_storm_over_workers_is_one_query_per_room_and_all_recovered(pgserver, redis_addr,
                                                                     cluster, db):
    storm(pgserver, redis_addr, cluster, db, kill_one=False)


def test_queued_replays_survive_a_lost_query_connection(pgserver, redis_addr, cluster, db):
    """One of the feed's query connections is lost while the rejoins' replays wait behind the
    blocked ones: the replays queued on it, never sent, run on its next session instead of
    answering recovered:false (the workers are not told to fail them: the feed answers)."""
    storm(pgserver, redis_addr, cluster, db, kill_one=True)


def storm(pgserver, redis_addr, cluster, db, kill_one):
    # Without the memory every since is answered by an outbox query.
    server = start(pgserver, redis_addr, RECENT_MAX_BYTES="0")
    workers = [p for p in children(server.proc.pid) if not is_feed(p)]
    since = {room: publish(cluster, db, room, 1, "seen")[0] for room in ROOMS + BLOCKERS}
    missed = {room: publish(cluster, db, room, 3, "missed") for room in ROOMS}

    # The replay query reads realtime.outbox_state: while a transaction holds it locked, the
    # blockers' replays occupy both query connections and every rejoin's query stays queued.
    lock = psycopg2.connect(cluster.dsn_for(db))
    cur = lock.cursor()
    cur.execute("LOCK TABLE realtime.outbox_state IN ACCESS EXCLUSIVE MODE")

    async def go():
        # Connected (and placed) before the blockers' replays start: everything from their
        # send to the lock's release must fit in the blockers' 5 s query deadline, or the
        # connections are dropped and the queued reads run on the next ones without waiting.
        socks = await asyncio.gather(*(connect(server, ADMIN)
                                       for _ in range(PER_ROOM * len(ROOMS))))
        pairs = [(ws, ROOMS[i % len(ROOMS)]) for i, ws in enumerate(socks)]
        # A room's members on several workers: the case the feed's coalescing is for.
        by_room = {}
        for ws, room in pairs:
            by_room.setdefault(room, set()).add(server_pid_of(server, ws, workers))
        asks = sum(len(pids) for pids in by_room.values())
        blockers = []
        for room in BLOCKERS:
            ws = await connect(server, ADMIN)
            await ws.send(json.dumps({"type": "join", "payload": {"room": room,
                                                                  "since": since[room]}}))
            blockers.append(ws)
        wait_until(lambda: waiting_on_lock(cluster, db) == 2, 3,
                   what="both query connections waiting on the lock")
        await asyncio.gather(*(ws.send(json.dumps({"type": "join", "payload": {
            "room": room, "since": since[room]}})) for ws, room in pairs))
        # Every worker's ask (one per room it has members in) has reached the feed.
        wait_until(lambda: sum(feed_counters(server.logs())) >= len(BLOCKERS) + asks, 10,
                   what="the rejoins' replay queries at the feed")
        if kill_one:
            victim = query_backends(cluster, db)[0]
            sql(cluster, db, "SELECT pg_terminate_backend(%s)", (victim,))
        lock.commit()
        await all_recovered(pairs, missed)
        # The blockers only held the connections (one past its deadline on a slow machine
        # would be answered recovered:false, and is not what is tested here).
        for ws in blockers:
            assert (await recv_json(ws))["type"] == "joined"
        await asyncio.gather(*(ws.close() for ws in socks + blockers))
        return by_room

    try:
        by_room = run(go())
    finally:
        lock.close()
    assert any(len(pids) > 1 for pids in by_room.values()), by_room
    assert server.stop(signal.SIGTERM, timeout=10) == 0
    ran, coalesced = feed_counters(server.logs())
    if kill_one:
        assert "postgres connection failed" in server.logs()
    # One query per room, plus the two blockers; each other worker's ask of a room joined it.
    assert ran - len(BLOCKERS) <= len(ROOMS), (ran, coalesced, by_room)
    asks = sum(len(pids) for pids in by_room.values())
    assert coalesced >= asks - len(ROOMS), (ran, coalesced, by_room)


def test_queued_replays_survive_a_lost_query_connection_without_workers(pgserver, cluster, db):
    """The same in one process: pgl's one query connection is terminated while one replay runs
    (blocked) and the others wait behind it; every join is answered recovered:true, the running
    one too (a read is run again when the connection failed under it)."""
    from rc import metric_samples
    server = pgserver(RECENT_MAX_BYTES="0")
    rooms = ROOMS + BLOCKERS[:1]
    since = {room: publish(cluster, db, room, 1, "seen")[0] for room in rooms}
    missed = {room: publish(cluster, db, room, 2, "missed") for room in rooms}

    def queries():
        return metric_samples(server.metrics())[("roomcast_replay_queries_total", ())]

    lock = psycopg2.connect(cluster.dsn_for(db))
    lock.cursor().execute("LOCK TABLE realtime.outbox_state IN ACCESS EXCLUSIVE MODE")

    async def go():
        q0 = queries()
        first = await connect(server, ADMIN)
        await first.send(json.dumps({"type": "join", "payload": {"room": rooms[-1],
                                                                 "since": since[rooms[-1]]}}))
        wait_until(lambda: waiting_on_lock(cluster, db) == 1, 3,
                   what="the query connection waiting on the lock")
        socks = await asyncio.gather(*(connect(server, ADMIN) for _ in range(5 * len(ROOMS))))
        pairs = [(ws, ROOMS[i % len(ROOMS)]) for i, ws in enumerate(socks)]
        await asyncio.gather(*(ws.send(json.dumps({"type": "join", "payload": {
            "room": room, "since": since[room]}})) for ws, room in pairs))
        wait_until(lambda: queries() >= q0 + len(rooms), 5, what="every replay query queued")
        victim = query_backends(cluster, db)[0]
        sql(cluster, db, "SELECT pg_terminate_backend(%s)", (victim,))
        lock.commit()
        pairs.append((first, rooms[-1]))
        await all_recovered(pairs, missed)
        await asyncio.gather(*(ws.close() for ws, _ in pairs))

    try:
        run(go())
    finally:
        lock.close()
    assert "postgres connection failed" in server.logs()
