"""A join with `since` whose replay query sees events this process has not delivered live yet
(their notifications still on the way) must not send them twice: the replay carries them, and
their live copies, arriving after the replay is out, are dropped. Events with smaller ids that
the replay did not carry still arrive live. The window is forced: roomcast's PostgreSQL
connections go through a small TCP proxy that holds NotificationResponse messages back for a
while, so every replay is answered (fast, by the query connection) before the live copy of the
event it carried reaches roomcast."""

import asyncio
import collections
import json
import select
import socket
import struct
import threading
import time

import psycopg2
import pytest

from rc import RedisServer, connect, make_token, recv_json, run, wait_until

ADMIN = make_token("1", "admin")
DELAY_S = 0.6  # how long notifications are held back; the replays take a few ms
JOINS = 40


class SlowNotifier:
    """Forwards PostgreSQL connections to upstream; NotificationResponse ('A') messages from the
    server are sent on DELAY_S after they arrived, and the messages behind them wait with them
    (order on each connection is kept)."""

    def __init__(self, upstream_port, delay):
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = 0
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(c,), daemon=True).start()

    def _pipe(self, c):
        u = socket.create_connection(self.upstream)
        for s in (c, u):  # no Nagle delay on top of the one this proxy adds
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf, out = b"", collections.deque()  # out: (send at, message)
        try:
            while not self.stopping:
                now = time.monotonic()
                while out and out[0][0] <= now:
                    c.sendall(out.popleft()[1])
                wait = 0.5 if not out else max(0.0, out[0][0] - now)
                r, _, _ = select.select([c, u], [], [], wait)
                if c in r:
                    d = c.recv(65536)
                    if not d:
                        return
                    u.sendall(d)
                if u in r:
                    d = u.recv(65536)
                    if not d:
                        return
                    buf += d
                    now = time.monotonic()
                    # Whole messages only: type byte + int32 length (which counts itself).
                    while len(buf) >= 5:
                        n = struct.unpack("!I", buf[1:5])[0] + 1
                        if len(buf) < n:
                            break
                        msg, buf = buf[:n], buf[n:]
                        at = now
                        if msg[:1] == b"A":
                            self.held += 1
                            at = now + self.delay
                        if out:
                            at = max(at, out[-1][0])
                        out.append((at, msg))
        except OSError:
            pass
        finally:
            c.close()
            u.close()

    def dsn(self, dbname):
        # No SSL/GSS negotiation: the proxy parses only regular messages.
        return (f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"
                "?sslmode=disable&gssencmode=disable")

    def stop(self):
        self.stopping = True
        self.sock.close()


@pytest.fixture
def slow(cluster):
    p = SlowNotifier(cluster.port, DELAY_S)
    yield p
    p.stop()


def race(server, cluster, db, slow):
    """JOINS clients, each in its own room: an event is committed in every room, each client at
    once joins its room with since = the id before its event (the replay carries the event,
    its notification is still held back), then a marker event per room is committed. A client
    reads until its marker: commit order puts any live copy of its event before it. Returns
    per client the ids it got (replay and live)."""
    rooms = ["race-%d" % i for i in range(JOINS)]

    async def go():
        socks = [await connect(server, ADMIN) for _ in rooms]
        conn = psycopg2.connect(cluster.dsn_for(db))
        conn.autocommit = True
        cur = conn.cursor()
        # An older event committed in every room after the replays below: its id is smaller
        # than the replayed one, so it must still arrive live (out-of-order commits).
        slow_tx = psycopg2.connect(cluster.dsn_for(db))
        scur = slow_tx.cursor()
        late = {}
        for r in rooms:
            scur.execute("SELECT realtime.publish('late', ARRAY[%s], '{}')", (r,))
            late[r] = scur.fetchone()[0]
        events = {}
        for r in rooms:
            cur.execute("SELECT realtime.publish('race', ARRAY[%s], '{}')", (r,))
            events[r] = cur.fetchone()[0]
        for ws, r in zip(socks, rooms):
            await ws.send(json.dumps({"type": "join",
                                      "payload": {"room": r, "since": events[r] - 1}}))
        got = {r: [] for r in rooms}
        joined = {}

        async def until_replayed(ws, r):
            while r not in joined or len(got[r]) < joined[r]:
                m = await recv_json(ws, 5)
                if m.get("type") == "joined":
                    joined[r] = m["payload"]["replayed"]
                elif "type" not in m:
                    got[r].append(m["id"])
        await asyncio.gather(*(until_replayed(ws, r) for ws, r in zip(socks, rooms)))
        # (Every replay is normally out well before DELAY_S: the window the test forces.)
        slow_tx.commit()
        markers = {}
        for r in rooms:
            cur.execute("SELECT realtime.publish('marker', ARRAY[%s], '{}')", (r,))
            markers[r] = cur.fetchone()[0]

        async def until_marker(ws, r):
            while markers[r] not in got[r]:
                m = await recv_json(ws, 5)
                if "type" not in m:
                    got[r].append(m["id"])
        await asyncio.gather(*(until_marker(ws, r) for ws, r in zip(socks, rooms)))
        for ws in socks:
            await ws.close()
        conn.close()
        slow_tx.close()
        return events, late, markers, got

    events, late, markers, got = run(go())
    wrong = {r: got[r] for r in rooms if got[r] != [events[r], late[r], markers[r]]}
    twice = sum(got[r].count(events[r]) > 1 for r in rooms)
    assert not wrong, (f"{len(wrong)} of {JOINS} clients got a wrong stream ({twice} got their "
                       f"replayed event twice); expected [replayed, older live, marker]: "
                       f"{list(wrong.items())[:5]}")


@pytest.mark.parametrize("workers", ["1", "4"])
def test_replayed_events_are_not_sent_again_live(server_factory, cluster, db, slow, workers):
    env = {"DATABASE_URL": slow.dsn(db), "RECENT_PER_ROOM": "0"}
    redis = None
    if workers != "1":
        redis = RedisServer().start()
        env.update(WORKERS=workers, REDIS_ADDR=redis.addr)
    try:
        server = server_factory(env)
        wait_until(lambda: server.json("/health")[1]["postgres"] == "up", 15, what="postgres up")
        race(server, cluster, db, slow)
    finally:
        if redis:
            redis.stop()


def test_a_replay_owing_more_than_the_bound_is_still_exact(pgserver, cluster, db, slow):
    """1 100 events committed in one transaction, their notifications held back: the replay
    carries all of them before any is delivered live, more than the 1 024 owed ids a join
    keeps, so the join drains by its whole replayed set. Each id still arrives once, and an
    event committed after the replay arrives live."""
    server = pgserver(DATABASE_URL=slow.dsn(db), RECENT_PER_ROOM="0")
    n = 1100

    async def go():
        ws = await connect(server, ADMIN)
        conn = psycopg2.connect(cluster.dsn_for(db))
        conn.autocommit = True
        cur = conn.cursor()
        # The event the client saw: delivered here before it joins (else its own live copy,
        # held back too, would reach it as well: the client drops ids up to since it has seen).
        watcher = await connect(server, ADMIN)
        await watcher.send(json.dumps({"type": "join", "payload": {"room": "big"}}))
        assert (await recv_json(watcher, 5))["type"] == "joined"
        cur.execute("SELECT realtime.publish('before', ARRAY['big'], '{}')")
        since = cur.fetchone()[0]
        assert (await recv_json(watcher, 5))["id"] == since
        await watcher.close()
        cur.execute("SELECT realtime.publish('burst', ARRAY['big'], jsonb_build_object('i', i)) "
                    "FROM generate_series(1, %s) i", (n,))
        burst = sorted(r[0] for r in cur.fetchall())
        await ws.send(json.dumps({"type": "join", "payload": {"room": "big", "since": since}}))
        got, joined = [], None
        while joined is None or len(got) < joined:
            m = await recv_json(ws, 10)
            if m.get("type") == "joined":
                joined = m["payload"]["replayed"]
            elif "type" not in m:
                got.append(m["id"])
        assert got == burst, "the replay is the burst, in id order"
        cur.execute("SELECT realtime.publish('after', ARRAY['big'], '{}')")
        after = cur.fetchone()[0]
        while after not in got:
            m = await recv_json(ws, 10)
            if "type" not in m:
                got.append(m["id"])
        await ws.close()
        conn.close()
        return burst, after, got

    burst, after, got = run(go())
    assert got == burst + [after], f"{len(got)} ids, {len(got) - len(set(got))} repeated"
    assert '"owed_overflow":"true"' in server.logs(), "the bound was not passed"
