"""`serve --workers N` with PostgreSQL: one feed process holds the host's PostgreSQL connections
(one listener, PG_POOL_SIZE query connections, one live-room connection) whatever N is, and
relays queries and notifications to the workers over a local socket. Clients on every worker get
each database event once; a worker killed with SIGKILL is restarted and its clients resume with
`since`."""

import asyncio
import os
import signal

import pytest

import market
from pgcluster import sql
from rc import RedisServer, collect, connect, join, make_token, recv_json, run, wait_until

ADMIN = make_token("1", "admin")
WORKERS = 4


@pytest.fixture
def redis_addr():
    r = RedisServer().start()
    yield r.addr
    r.stop()


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())


def is_feed(pid):
    """The feed process names itself roomcast-feed (ps, /proc/<pid>/comm)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "roomcast-feed"
    except OSError:
        return False


def roomcast_sessions(cluster, db):
    return dict(sql(cluster, db, "SELECT application_name, count(*) FROM pg_stat_activity "
                                 "WHERE datname = current_database() "
                                 "AND application_name LIKE 'roomcast%%' "
                                 "AND pid <> pg_backend_pid() GROUP BY 1"))


def server_pid_of(server, ws, pids):
    """Which of pids holds the server side of WebSocket ws (found through /proc/net/tcp)."""
    port = ws.transport.get_extra_info("sockname")[1]
    want = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                lport = int(cols[1].split(":")[-1], 16)
                rport = int(cols[2].split(":")[-1], 16)
                if lport == server.port and rport == port:
                    want = "socket:[%s]" % cols[9]
    assert want, "server socket not found"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        return pid
                except OSError:
                    pass
        except OSError:
            pass
    return None


def start(pgserver, redis_addr, **env):
    server = pgserver(WORKERS=str(WORKERS), REDIS_ADDR=redis_addr, NODE_ID="wpg", **env)
    sup = server.proc.pid
    wait_until(lambda: len(children(sup)) == WORKERS + 1, 10, what="workers and the feed")
    seen = set()

    def all_up():
        status, h = server.json("/health")
        if h.get("postgres") == "up":
            seen.add(h["node"])
        return len(seen) == WORKERS
    wait_until(all_up, 15, interval=0.01, what="postgres up on every worker")
    return server


async def spread(server, room, workers):
    """WebSocket clients joined to room until every worker in workers holds at least one;
    returns {pid: ws} with one client per worker (the others are closed)."""
    held = {}
    extra = []
    for _ in range(200):
        ws = await connect(server, ADMIN)
        pid = server_pid_of(server, ws, workers)
        if pid in held or pid is None:
            extra.append(ws)
        else:
            assert (await join(ws, room))["type"] == "joined"
            held[pid] = ws
        if len(held) == len(workers):
            break
    for ws in extra:
        await ws.close()
    assert len(held) == len(workers), f"clients reached only {len(held)} workers"
    return held


async def quiet(ws, seconds=0.5):
    try:
        m = await recv_json(ws, seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message {m}")


def test_connections_do_not_grow_with_workers(pgserver, redis_addr, cluster, db):
    server = start(pgserver, redis_addr)
    want = {"roomcast-listener": 1, "roomcast-query": 2, "roomcast-live": 1}
    wait_until(lambda: roomcast_sessions(cluster, db) == want, 10,
               what=f"the feed's sessions {want}")
    # Exactly one session LISTENs for the whole host.
    listeners = sql(cluster, db, "SELECT count(*) FROM pg_stat_activity "
                                 "WHERE datname = current_database() "
                                 "AND application_name = 'roomcast-listener'")[0][0]
    assert listeners == 1
    assert "feed started" in server.logs()


def test_every_worker_gets_a_db_event_once_and_a_killed_worker_resumes(pgserver, redis_addr,
                                                                       cluster, db):
    server = start(pgserver, redis_addr)
    sup = server.proc.pid
    workers = [p for p in children(sup) if not is_feed(p)]
    assert len(workers) == WORKERS
    product = sql(cluster, db, "SELECT min(id_product) FROM product")[0][0]
    room = f"product-{product}"

    async def go():
        held = await spread(server, room, workers)
        # The REST service's product change: one UPDATE in its own transaction.
        market.update_product(cluster.dsn_for(db), product, stock=7)
        ids = set()
        for pid, ws in held.items():
            m = (await collect(ws, 1))[0]
            assert m["event"] == "product_updated" and m["data"]["stock"] == 7, m
            ids.add(m["id"])
        assert len(ids) == 1
        for ws in held.values():
            await quiet(ws, 0.3)
        last = ids.pop()

        # One worker dies hard; the supervisor restarts it and the feed keeps PostgreSQL.
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(sup)) == WORKERS + 1 and victim not in children(sup),
                   10, what="the killed worker restarted")
        for i in range(3):
            market.update_product(cluster.dsn_for(db), product, stock=10 + i)
        # The survivors get the three live, once each. (Waited for before the resume below: a
        # replay that completes before a worker has routed an event it contains, a few ms after
        # the commit, races that event's live delivery, with or without workers.)
        for pid, other in held.items():
            if pid == victim:
                continue
            got = await collect(other, 3)
            assert [m["data"]["stock"] for m in got] == [10, 11, 12]
            await quiet(other, 0.2)
        # The killed worker's client reconnects (to whichever worker) and resumes.
        ws = await connect(server, ADMIN)
        await ws.send('{"type":"join","payload":{"room":"%s","since":%d}}' % (room, last))
        joined = await recv_json(ws)
        assert joined.get("type") == "joined" and joined["payload"]["recovered"] is True, joined
        assert joined["payload"]["replayed"] == 3, joined
        got = await collect(ws, 3)
        assert [m["data"]["stock"] for m in got] == [10, 11, 12]
        await quiet(ws, 0.3)
        # The PostgreSQL sessions were kept through the restart.
        assert roomcast_sessions(cluster, db) == {"roomcast-listener": 1, "roomcast-query": 2,
                                                  "roomcast-live": 1}
    run(go())
    assert server.stop(signal.SIGTERM, timeout=10) == 0


def test_a_killed_feed_is_restarted_and_workers_catch_up(pgserver, redis_addr, cluster, db):
    server = start(pgserver, redis_addr)
    sup = server.proc.pid
    workers = [p for p in children(sup) if not is_feed(p)]
    feed = [p for p in children(sup) if is_feed(p)]
    assert len(feed) == 1

    async def go():
        held = await spread(server, "wf-1", workers)
        os.kill(feed[0], signal.SIGKILL)
        # Committed while no worker can hear PostgreSQL: the watermark catch-up delivers it.
        sql(cluster, db, "SELECT realtime.publish('during', ARRAY['wf-1'], '{}')")
        wait_until(lambda: any(is_feed(p) and p != feed[0] for p in children(sup)), 10,
                   what="the feed restarted")
        for ws in held.values():
            assert [m["event"] for m in await collect(ws, 1, timeout=15)] == ["during"]
        sql(cluster, db, "SELECT realtime.publish('after', ARRAY['wf-1'], '{}')")
        for ws in held.values():
            assert [m["event"] for m in await collect(ws, 1)] == ["after"]
            await quiet(ws, 0.2)
    run(go())
    assert "worker died; restarting" in server.logs()
    wait_until(lambda: roomcast_sessions(cluster, db) == {"roomcast-listener": 1,
                                                          "roomcast-query": 2,
                                                          "roomcast-live": 1}, 10,
               what="the old feed's sessions gone")
    assert server.stop(signal.SIGTERM, timeout=10) == 0


def test_app_channels_and_live_rooms_once_per_member_across_workers(pgserver, redis_addr,
                                                                     cluster, db):
    """An application's NOTIFY channel (realtime.listen) and a live SQL room with members on
    every worker: the feed's one listener serves every worker's LISTEN, and the live room's
    advisory lock, which the feed's one live session would grant to every worker, is held by
    one worker only, so each member gets each message once."""
    from test_apps import CITAS, PARKING, STATS_QUERY, SeedClient
    sql(cluster, db, PARKING + CITAS)
    server = start(pgserver, redis_addr)
    workers = [p for p in children(server.proc.pid) if not is_feed(p)]
    sql(cluster, db, "SELECT realtime.listen('parking_update', 'parking')")
    sql(cluster, db, "SELECT realtime.live_room('estadisticas:{negocio_id}', %s, '1 second')",
        (STATS_QUERY,))
    token = make_token("op", "user", rooms=["parking", "estadisticas:*"])

    async def go():
        held, extra = {}, []
        for _ in range(200):
            ws = await connect(server, token)
            pid = server_pid_of(server, ws, workers)
            if pid is None or pid in held:
                extra.append(ws)
            else:
                held[pid] = SeedClient(ws)
            if len(held) == len(workers):
                break
        for ws in extra:
            await ws.close()
        assert len(held) == len(workers)
        for c in held.values():
            await c.send({"action": "subscribe",
                          "filters": ["parking", "estadisticas:negocio_123"]})
            await c.expect("stats", timeout=10)
        # Every worker LISTENs on the channel once realtime.listen's notice reached it.
        await asyncio.sleep(1.0)
        sql(cluster, db, "UPDATE espacios SET estado = 'ocupado' WHERE id = 15")
        sql(cluster, db, "INSERT INTO citas (negocio_id) VALUES ('negocio_123')")
        for c in held.values():
            await c.expect("parking_update")
            assert (await c.expect("stats", timeout=4))["data"]["totalCitas"] == 3
        # A second runner would push its own stats within the next interval (1 s).
        await asyncio.gather(*(c.quiet("parking_update", 1.2) for c in held.values()))
        for c in held.values():
            assert len(c.by_type["parking_update"]) == 1
            assert len(c.by_type["stats"]) == 2, c.by_type["stats"]
            await c.ws.close()
    run(go())
    assert server.stop(signal.SIGTERM, timeout=10) == 0


def test_feed_listener_killed_while_events_commit_loses_nothing(pgserver, redis_addr, cluster,
                                                                db):
    """The feed's one listener session is terminated in the middle of a burst: every worker
    sees its listener go down and up, LISTENs again and catches up, so members on every worker
    get all 20 events once."""
    import threading
    import time
    server = start(pgserver, redis_addr)
    workers = [p for p in children(server.proc.pid) if not is_feed(p)]

    def listener_pid():
        rows = sql(cluster, db, "SELECT pid FROM pg_stat_activity WHERE datname = "
                                "current_database() AND application_name = 'roomcast-listener'")
        return rows[0][0] if rows else None

    async def go():
        held = await spread(server, "wl-1", workers)

        def writer():
            for i in range(20):
                sql(cluster, db, "SELECT realtime.publish('e', ARRAY['wl-1'], "
                                 "jsonb_build_object('i', %s))", (i,))
                if i == 5:
                    sql(cluster, db, "SELECT pg_terminate_backend(%s)", (listener_pid(),))
                time.sleep(0.02)
        t = threading.Thread(target=writer)
        t.start()
        results = await asyncio.gather(*(collect(ws, 20, timeout=20) for ws in held.values()))
        t.join()
        for got in results:
            assert sorted(m["data"]["i"] for m in got) == list(range(20))
        await asyncio.gather(*(quiet(ws, 1.0) for ws in held.values()))
    run(go())
    wait_until(lambda: listener_pid(), 10, what="the feed's listener back")
    assert server.stop(signal.SIGTERM, timeout=10) == 0
