#!/usr/bin/python3
"""Reconnect storm (`python3 bench/replay_storm.py [SETTING=value ...]`): N clients in R rooms
rejoin at once with `since` after missing 5 events each; prints the time from the first join sent
to the last missed event received and the outbox replay queries roomcast sent for them
(roomcast_replay_queries_total; "None" for a build without it). Settings given as arguments go
to roomcast (e.g. RECENT_MAX_BYTES=0 for coalescing alone). Environment: ROOMCAST_BIN (default
build/rel/roomcast), N (1000), R (10). Starts its own throwaway PostgreSQL."""

import asyncio
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
os.environ.setdefault("ROOMCAST_BIN", os.path.join(ROOT, "build", "rel", "roomcast"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from pgcluster import PgCluster, sql  # noqa: E402
from rc import BIN, Server, connect, make_token, metric_samples, recv_json, wait_until  # noqa: E402

N, R, MISSED = int(os.environ.get("N", "1000")), int(os.environ.get("R", "10")), 5
ADMIN = make_token("1", "admin")


def main():
    env = dict(a.split("=", 1) for a in sys.argv[1:])
    c = PgCluster()
    c.start()
    c.create_database("b")
    subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=c.dsn_for("b")),
                   check=True, capture_output=True)
    env.update(DATABASE_URL=c.dsn_for("b"), LOG_LEVEL="warn", RATE_LIMIT="1000/s,burst=1000")
    s = Server(env).start()
    rooms = ["r%d" % i for i in range(R)]

    def pub(room, tag):
        return sql(c, "b", "SELECT realtime.publish(%s, ARRAY[%s], '{}')", (tag, room))[0][0]

    def queries():
        return metric_samples(s.metrics()).get(("roomcast_replay_queries_total", ()))

    async def storm():
        ws = [await connect(s, ADMIN) for _ in rooms]
        for w, r in zip(ws, rooms):
            await w.send(json.dumps({"type": "join", "payload": {"room": r}}))
            await recv_json(w)
        last = {r: pub(r, "before") for r in rooms}
        for w in ws:
            await recv_json(w)
            await w.close()
        for r in rooms:
            for _ in range(MISSED):
                pub(r, "missed")
        await asyncio.sleep(0.5)  # delivered (to nobody) before the rejoin
        socks = []
        for i in range(0, N, 100):
            socks += await asyncio.gather(*(connect(s, ADMIN) for _ in range(min(100, N - i))))
        q0, t0 = queries(), time.monotonic()

        async def one(w, r):
            await w.send(json.dumps({"type": "join", "payload": {"room": r, "since": last[r]}}))
            got = 0
            while got < MISSED:
                if "type" not in await recv_json(w, 30):
                    got += 1

        await asyncio.gather(*(one(w, rooms[i % R]) for i, w in enumerate(socks)))
        dt = time.monotonic() - t0
        print(f"N={N} R={R} {' '.join(sys.argv[1:]) or 'defaults'}: storm {dt * 1000:.0f} ms, "
              f"replay queries {None if q0 is None else int(queries() - q0)}")

    try:
        wait_until(lambda: s.json("/health")[1]["postgres"] == "up", 15, what="postgres up")
        asyncio.run(storm())
    finally:
        s.stop()
        s.cleanup()
        c.cleanup()


if __name__ == "__main__":
    main()
