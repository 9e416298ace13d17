#!/usr/bin/python3
"""PostgreSQL with `serve --workers N` (`python3 bench/workers_pg.py`): the PostgreSQL sessions
and listeners roomcast holds for each worker count in WORKERS_LIST (a throwaway cluster with the
default max_connections=100), and the commit-to-client time of events through the feed process
compared with one process (EVENTS `realtime.publish` calls one after the other, each waited for
on a joined WebSocket client).

Environment: ROOMCAST_BIN (default build/roomcast), WORKERS_LIST (8,52), EVENTS (200)."""

import asyncio
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("ROOMCAST_BIN", os.path.join(ROOT, "build", "roomcast"))
from pgcluster import PgCluster, sql  # noqa: E402
from rc import (BIN, RedisServer, Server, connect, join, make_token, recv_json,  # noqa: E402
                wait_until)

import psycopg2  # noqa: E402

WORKERS_LIST = [int(n) for n in os.environ.get("WORKERS_LIST", "8,52").split(",")]
EVENTS = int(os.environ.get("EVENTS", "200"))


def sessions(c):
    rows = sql(c, "m", "SELECT application_name, count(*) FROM pg_stat_activity "
                       "WHERE application_name LIKE 'roomcast%%' GROUP BY 1")
    return dict(rows)


def count_sessions(c, redis, n):
    s = Server({"WORKERS": str(n), "REDIS_ADDR": redis.addr, "DATABASE_URL": c.dsn_for("m")})
    try:
        s.start(wait=False)
        # Up, or stuck below max_connections: read once it stops changing.
        last, stable = None, 0
        deadline = time.monotonic() + 30
        while stable < 10 and time.monotonic() < deadline:
            try:
                now = sessions(c)
            except psycopg2.OperationalError as e:  # the workers took every slot
                now = {"error": str(e).strip().splitlines()[0]}
            stable = stable + 1 if now == last else 0
            last = now
            time.sleep(0.3)
        print(f"workers={n}: sessions={sum(v for v in last.values() if isinstance(v, int))} "
              f"listeners={last.get('roomcast-listener', 0)} {last}", flush=True)
    finally:
        s.stop()
        s.cleanup()


def latency(c, redis, n):
    s = Server({"WORKERS": str(n), "REDIS_ADDR": redis.addr, "DATABASE_URL": c.dsn_for("m")})
    try:
        s.start()
        wait_until(lambda: s.json("/health")[1]["postgres"] == "up", 30, what="postgres up")
        time.sleep(2)  # every worker up

        async def go():
            ws = await connect(s, make_token("1", "admin"))
            await join(ws, "lat-1")
            conn = psycopg2.connect(c.dsn_for("m"))
            conn.autocommit = True
            cur = conn.cursor()
            ms = []
            for _ in range(EVENTS):
                t0 = time.monotonic()
                cur.execute("SELECT realtime.publish('x', ARRAY['lat-1'], '{}')")
                while "event" not in await recv_json(ws, 5):
                    pass
                ms.append((time.monotonic() - t0) * 1000)
            ms.sort()
            print(f"workers={n}: commit->client ms median {statistics.median(ms):.2f} "
                  f"p90 {ms[int(len(ms) * 0.9)]:.2f} p99 {ms[int(len(ms) * 0.99)]:.2f}",
                  flush=True)
        asyncio.run(go())
    finally:
        s.stop()
        s.cleanup()


def main():
    c = PgCluster()
    c.start()
    redis = RedisServer().start()
    try:
        c.create_database("m")
        out = subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=c.dsn_for("m")),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        for n in WORKERS_LIST:
            count_sessions(c, redis, n)
        for n in (1, 4):
            latency(c, redis, n)
    finally:
        redis.stop()
        c.cleanup()


if __name__ == "__main__":
    main()
