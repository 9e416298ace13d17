#!/usr/bin/python3
"""Presence cost (`make bench-presence`, or `python3 bench/presence.py`): roomcast's CPU per
join+leave of a room with and without presence watchers, alone and with Redis (one PUBLISH per
change), and the latency and CPU of a presence query on a room of 10 000 distinct users.

Server CPU is read from /proc/<pid>/stat around each run. Environment: ROOMCAST_BIN (default
build/roomcast), PRESENCE_USERS (10000), CYCLES (5000), WATCHERS (100)."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from rc import RedisServer, make_token, wait_until  # noqa: E402

import websockets  # noqa: E402

BIN = os.environ.get("ROOMCAST_BIN", os.path.join(ROOT, "build", "roomcast"))
USERS = int(os.environ.get("PRESENCE_USERS", "10000"))
CYCLES = int(os.environ.get("CYCLES", "5000"))
WATCHERS = int(os.environ.get("WATCHERS", "100"))
SECRET = "integration-test-secret-0123456789abcdef"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Server:
    def __init__(self, redis_addr=None):
        self.port = free_port()
        env = dict(os.environ, JWT_SECRET=SECRET, PORT=str(self.port), HOST="127.0.0.1",
                   LOG_LEVEL="warn", MAX_CONNECTIONS="30000", MAX_CONNECTIONS_PER_IP="30000",
                   MAX_HTTP_CONNECTIONS_PER_IP="30000", RATE_LIMIT="100000/s,burst=100000",
                   NODE_ID="bench")
        for k in ("DATABASE_URL", "REDIS_ADDR"):
            env.pop(k, None)
        if redis_addr:
            env["REDIS_ADDR"] = redis_addr
        self.proc = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import urllib.request

        def up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    return json.load(r)["redis"] in ("up", "disabled")
            except OSError:
                return False
        wait_until(up, 15, what="roomcast up")
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


async def client(url, user):
    return await websockets.connect(url, extra_headers={"Authorization": "Bearer " +
                                                        make_token(user)},
                                    max_size=None, close_timeout=0.2)


async def request(ws, msg, want):
    await ws.send(json.dumps(msg))
    while True:
        m = json.loads(await ws.recv())
        if isinstance(m, dict) and m.get("type") in (want, "error"):
            assert m["type"] == want, m
            return m


async def join_leave_cost(server, watchers):
    """CPU per join+leave: CYCLES users (one connection each, connected beforehand) join room
    product-1 one after the other, then leave it, with `watchers` members watching: each join
    and each leave is a presence change (a leave is announced a second later, so the run waits
    for those too; the idle waits cost next to nothing)."""
    ws_watch = [await client(server.url, f"w{i}") for i in range(watchers)]
    for w in ws_watch:
        await request(w, {"type": "join", "payload": {"room": "product-1", "presence": True}},
                      "joined")
    sem = asyncio.Semaphore(200)

    async def one(i):
        async with sem:
            return await client(server.url, f"u{i}")
    users = await asyncio.gather(*(one(i) for i in range(CYCLES)))
    drain = [asyncio.create_task(drain_forever(w)) for w in ws_watch]
    t0, c0 = time.monotonic(), cpu_s(server.proc.pid)
    for u in users:
        await request(u, {"type": "join", "payload": {"room": "product-1"}}, "joined")
    for u in users:
        await request(u, {"type": "leave", "payload": {"room": "product-1"}}, "left")
    t1 = time.monotonic()
    await asyncio.sleep(1.5)  # the leaves' announcements
    c1 = cpu_s(server.proc.pid)
    for t in drain:
        t.cancel()
    for ws in ws_watch + list(users):
        await ws.close()
    return (c1 - c0) / CYCLES * 1e6, (t1 - t0) / CYCLES * 1e6


async def drain_forever(ws):
    try:
        while True:
            await ws.recv()
    except (asyncio.CancelledError, websockets.ConnectionClosed):
        pass


async def query_cost(server):
    """A presence query on a room of USERS distinct users: round trip, answer size and CPU."""
    sem = asyncio.Semaphore(200)
    conns = []

    async def one(i):
        async with sem:
            ws = await client(server.url, f"p{i}")
            await request(ws, {"type": "join", "payload": {"room": "product-2"}}, "joined")
            conns.append(ws)
    await asyncio.gather(*(one(i) for i in range(USERS)))
    asker = conns[0]
    m = await request(asker, {"type": "presence", "payload": {"room": "product-2"}}, "presence")
    assert m["payload"].get("count") == USERS, m
    size = len(json.dumps(m))
    n = 2000
    t0, c0 = time.monotonic(), cpu_s(server.proc.pid)
    for _ in range(n):
        await request(asker, {"type": "presence", "payload": {"room": "product-2"}}, "presence")
    c1, t1 = cpu_s(server.proc.pid), time.monotonic()
    for ws in conns:
        await ws.close()
    return (c1 - c0) / n * 1e6, (t1 - t0) / n * 1e3, size, m["payload"].get("truncated")


def main():
    results = {}
    for label, with_redis in (("alone", False), ("redis", True)):
        redis = RedisServer().start() if with_redis else None
        try:
            for watchers in (0, WATCHERS):
                server = Server(redis.addr if redis else None)
                try:
                    cpu, wall = asyncio.run(join_leave_cost(server, watchers))
                finally:
                    server.stop()
                key = f"join+leave {label}, {watchers} watchers"
                results[key] = {"cpu_us": round(cpu, 1), "round_trip_us": round(wall, 1)}
                print(f"{key}: {cpu:.1f} us server CPU, {wall:.0f} us round trips", flush=True)
        finally:
            if redis:
                redis.stop()
    server = Server()
    try:
        cpu, ms, size, truncated = asyncio.run(query_cost(server))
    finally:
        server.stop()
    results[f"presence query, {USERS} users"] = {"cpu_us": round(cpu, 1), "round_trip_ms":
                                                 round(ms, 2), "bytes": size,
                                                 "truncated": truncated}
    print(f"presence query on {USERS} users: {cpu:.0f} us server CPU, {ms:.2f} ms round trip, "
          f"{size} bytes (truncated={truncated})", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
