"""Liveness checks against a server that itself stopped running for a while (SIGSTOP here; in
production a worker starved of CPU, a long loop turn or a paused VM): the time the server was
not reading does not count as its peers' silence, while a truly silent peer is still dropped;
and a Redis heartbeat whose answers arrived meanwhile does not take the link down."""

import asyncio
import os
import signal
import time

from rc import RawClient, connect, make_token, recv_json, run, send, settle, wait_server_close


def metric(server, line_prefix):
    for line in server.metrics().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


LIVE = 100


def test_live_peers_outlive_a_server_stall_longer_than_the_pong_timeout(server_factory):
    server = server_factory({"PING_INTERVAL_S": "1", "PONG_TIMEOUT_S": "3"})

    async def go():
        # No client-side pings: only the automatic answers to the server's pings keep them.
        live = [await connect(server, make_token(f"live{i}"), ping_interval=None)
                for i in range(LIVE)]
        silent = RawClient(server, make_token("silent"))  # never answers anything
        assert silent.status == 101
        for ws in live:
            await send(ws, "ping")
            assert await recv_json(ws) == {"type": "pong"}
        await asyncio.sleep(1.5)  # a ping round or two: the live ones answer
        # Stopped for more than PONG_TIMEOUT_S plus a tick: pings that fell due meanwhile
        # were not sent, so the live peers had nothing to answer. (Before the fix the server
        # woke up, ran its timers first and dropped every one of them.)
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(5)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        # The silent peer is still dropped, without a close frame, within the timeout of
        # time the server was running (read in a thread: the live ones keep answering).
        waiting = loop.run_in_executor(None, wait_server_close, silent, 10)
        try:
            code, _ = await waiting
        finally:
            await settle(waiting)
            silent.close()
        assert code is None, code
        assert time.monotonic() - t0 <= 8
        # Past another PONG_TIMEOUT_S of running time every live peer is still there.
        await asyncio.sleep(3)
        closed = [ws for ws in live if ws.closed]
        assert not closed, f"{len(closed)} of {LIVE} live peers dropped after the stall"
        for ws in live:
            await send(ws, "ping")
            assert await recv_json(ws) == {"type": "pong"}
        assert metric(server, 'roomcast_closes_total{reason="timeout"}') == 1
        for ws in live:
            await ws.close()
    run(go())


def test_a_stall_past_the_redis_heartbeat_deadline_does_not_drop_a_healthy_link(server_factory):
    """The heartbeat's answers arrive while roomcast is stopped and sit unread in its sockets;
    when it runs again, its timers come before its reads, so the passed deadline must wait for
    one more read before it calls the link dead."""
    from rc import RedisServer, wait_until

    redis = RedisServer().start()
    try:
        server = server_factory({"REDIS_ADDR": redis.addr})
        wait_until(lambda: server.json("/health")[1]["redis"] == "up", 15, what="redis up")
        before = metric(server, "roomcast_redis_reconnects_total")
        # Redis stopped: the next heartbeat (every 2 s) goes out and waits for its answer.
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(2.2)
            os.kill(server.proc.pid, signal.SIGSTOP)  # before that heartbeat's 3 s deadline
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)  # the answers go out to roomcast's sockets
        try:
            time.sleep(4)  # the deadline passes while roomcast is stopped
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(1.5)
        assert server.json("/health")[1]["redis"] == "up"
        assert metric(server, "roomcast_redis_reconnects_total") == before
    finally:
        redis.stop()


def test_a_stall_past_a_query_deadline_keeps_the_answer(pgserver, cluster, db):
    """A replay query's answer arrives while roomcast is stopped, and its 5 s deadline passes
    meanwhile: the deadline waits for one more read of the sockets, finds the answer, and the
    join is recovered with every event (before: 'query timed out', the connection dropped and
    the join answered recovered:false)."""
    import json

    import psycopg2

    from pgcluster import sql
    from rc import recv_json

    sql(cluster, db, "DELETE FROM realtime.events")
    ids = [sql(cluster, db, "SELECT realtime.publish('stall', ARRAY['stall-room'], "
                            "jsonb_build_object('i', %s))", (i,))[0][0] for i in range(3)]
    server = pgserver()
    lock = psycopg2.connect(cluster.dsn_for(db))

    async def go():
        ws = await connect(server, make_token("1", "admin"))
        cur = lock.cursor()
        cur.execute("LOCK TABLE realtime.events IN ACCESS EXCLUSIVE MODE")  # the replay waits
        await ws.send(json.dumps({"type": "join", "payload": {"room": "stall-room", "since": 0}}))
        deadline = time.monotonic() + 10
        while not sql(cluster, db, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                                   "= 'Lock' AND query LIKE '%%realtime.events%%'")[0][0]:
            assert time.monotonic() < deadline, "the replay query never waited on the lock"
            await asyncio.sleep(0.05)
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            lock.commit()  # the answer goes out to roomcast's socket
            await asyncio.sleep(6)  # past the query's 5 s deadline, counted from its send
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        joined = await recv_json(ws, 10)
        assert joined["type"] == "joined", joined
        assert {k: v for k, v in joined["payload"].items() if k != "position"} == {
            "room": "stall-room", "recovered": True, "replayed": 3}, joined
        assert [(await recv_json(ws))["id"] for _ in ids] == ids
        await ws.close()
    try:
        run(go())
    finally:
        lock.close()
    assert "query timed out" not in server.logs()
