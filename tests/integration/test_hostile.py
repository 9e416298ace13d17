"""A hostile network: no single source address can deny service to the others. Every accepted
TCP connection is counted from accept to close, every phase has an absolute deadline, a notify
is refused on its head when it carries no credential, and admission tickets belong to the lws
connection (never to a descriptor number). Sources are real loopback addresses (127.0.0.x).

The fast rows run in `make test`; the 10 000-socket row is marked slow (`make check-faults`)."""

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

from rc import (BIN, SECRET, RawClient, make_token, parse_response, raise_nofile,
                read_until_eof, wait_until)
from test_tls import cert  # noqa: F401 (a fixture: a self-signed certificate)

# Under valgrind every answer is ~20x slower: the deadlines that measure the server scale.
SLOW = 20 if os.environ.get("ROOMCAST_VG_BIN") else 1
NOTIFY_TOKEN = "hostile-notify-token-0123456789abcdef"


def open_counters(server):
    """{budget: open connections} from roomcast_open_connections."""
    out = {}
    for line in server.metrics().splitlines():
        m = re.match(r'roomcast_open_connections\{phase="(\w+)"\} (\d+)', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def all_released(server, own=1):
    """Every limit counter back to zero (the /metrics request itself is one HTTP
    connection, from one address)."""
    text = server.metrics()
    c = open_counters(server)
    addrs = re.search(r"^roomcast_open_addresses (\d+)$", text, re.M)
    return (c and c.get("websocket", 0) == 0 and c.get("http", 0) <= own and addrs
            and int(addrs.group(1)) <= own and c)


def sock_from(source, server, timeout=5):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect((server.host, server.port))
    return s


def reset(s):
    """Closes with an RST (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def upgrade_head(token):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


def notify_head(length, auth=None):
    a = f"Authorization: Bearer {auth}\r\n" if auth else ""
    return (f"POST /api/notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{a}Content-Length: {length}\r\n\r\n").encode()


def post_notify(server, body, source, auth=None):
    """One notify on a fresh connection from `source`; returns (status, body)."""
    data = body.encode()
    s = sock_from(source, server)
    try:
        s.sendall(notify_head(len(data), auth) + data)
        out, _ = read_until_eof(s, 5)
    finally:
        s.close()
    status, _, rbody = parse_response(out)
    return status, rbody


def timed_health(server, source="127.0.0.3"):
    """GET /health from `source`: (status, seconds)."""
    t0 = time.monotonic()
    s = sock_from(source, server)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out, _ = read_until_eof(s, 5)
    finally:
        s.close()
    return parse_response(out)[0], time.monotonic() - t0


# ---- tickets belong to the connection ----

def test_upgrade_resets_under_header_slot_pressure_leak_nothing(server_factory):
    """Upgrades that die while lws has no free header slot never reach the upgrade filter
    (reset by the client, or past their handshake deadline). Their admission must go with the
    connection, and later upgrades must carry their own identity."""
    raise_nofile(8000)
    server = server_factory({"MAX_CONNECTIONS_PER_IP": "40", "HEADER_TIMEOUT_S": "2",
                             "MAX_HTTP_CONNECTIONS": "2000", "HTTP_IDLE_TIMEOUT_S": "30",
                             "MAX_HTTP_CONNECTIONS_PER_IP": "64"})
    # Hold lws's 1024 header slots: keep-alive connections that finished one request and send
    # only the first line of the next, from many addresses so no per-address cap stops them.
    holders = []
    for i in range(1150):
        try:
            s = sock_from(f"127.0.1.{10 + i // 50}", server)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            holders.append(s)
        except OSError:
            break
    for s in holders:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.sendall(b"GET /health HTTP/1.1\r\n")
        except OSError:
            pass
    # Admitted upgrades that wait for a header slot: half are reset by the client, the rest
    # pass their handshake deadline (HEADER_TIMEOUT_S) while still waiting.
    ups = []
    for i in range(60):
        try:
            s = sock_from("127.0.0.2", server)
            s.sendall(upgrade_head(make_token(str(9000 + i))))
            ups.append(s)
        except OSError:
            pass
    time.sleep(0.3)
    for s in ups[::2]:
        reset(s)
    time.sleep(3.5)
    for s in holders + ups[1::2]:
        s.close()

    def fresh():
        c = RawClient(server, make_token("77"), source="127.0.0.2")
        if c.status == 101:
            return c
        c.close()
        return None
    c = wait_until(fresh, timeout=15 * SLOW, interval=0.2, what="127.0.0.2 admitted again")
    # Its own identity: its user room is allowed, a dead upgrade's is not.
    c.send_json({"type": "join", "payload": {"room": "user-77"}})
    assert json.loads(c.read_frame()[1])["type"] == "joined"
    c.send_json({"type": "join", "payload": {"room": "user-9000"}})
    assert json.loads(c.read_frame()[1])["type"] == "error"
    c.close()
    wait_until(lambda: all_released(server), timeout=15 * SLOW, what="counters back to zero")


# ---- slow notify bodies ----

def test_slow_notify_bodies_refused_on_the_head(server_factory):
    """200 sockets from one address send a notify head announcing 64 KiB, then one byte: each
    is answered 401 (no credential) or 429 (over the per-address HTTP cap) at once and closed,
    and /health from another address stays fast."""
    raise_nofile(4000)
    server = server_factory({"NOTIFY_TOKEN": NOTIFY_TOKEN})
    socks = []
    for _ in range(200):
        s = sock_from("127.0.0.2", server)
        s.sendall(notify_head(65536) + b"{")
        socks.append(s)
    status, took = timed_health(server)
    assert status == 200 and took < 0.2 * SLOW, took
    answers = {}
    t0 = time.monotonic()
    for s in socks:
        out, closed = read_until_eof(s, max(0.1, 3 * SLOW - (time.monotonic() - t0)))
        st = parse_response(out)[0] if out else None
        answers[st] = answers.get(st, 0) + 1
        assert closed and st in (401, 429), (st, out[:80])
        s.close()
    assert answers.get(401, 0) >= 1, answers
    wait_until(lambda: all_released(server), timeout=5 * SLOW, what="counters back to zero")


# ---- NOTIFY_ALLOW_FROM and the notify credential ----

def test_notify_allow_from_by_tcp_peer_address(server_factory):
    """Peers in NOTIFY_ALLOW_FROM POST without a credential (as the REST service's fallback
    and n8n do); any other address gets 401, a forwarded header changes nothing, and a request
    on a kept-alive connection is checked on its head too."""
    server = server_factory({"NOTIFY_TOKEN": NOTIFY_TOKEN,
                             "NOTIFY_ALLOW_FROM": "127.0.0.2/32, 10.0.0.0/8,::1/128"})
    member = RawClient(server, make_token("5"))
    assert member.status == 101
    member.send_json({"type": "join", "payload": {"room": "product-12"}})
    assert json.loads(member.read_frame()[1])["type"] == "joined"

    body = json.dumps({"event": "allowed", "room": "product-12", "data": {"n": 1}})
    status, rbody = post_notify(server, body, "127.0.0.2")
    assert status == 200, rbody
    got = json.loads(member.read_frame()[1])
    assert got["event"] == "allowed" and got["data"] == {"n": 1}, got

    status, rbody = post_notify(server, body, "127.0.0.3")
    assert status == 401 and json.loads(rbody)["error"], rbody
    # The peer address is the TCP one: a forwarded header from elsewhere is not believed.
    s = sock_from("127.0.0.3", server)
    s.sendall(notify_head(len(body)).replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 127.0.0.2"
                                             b"\r\nX-Real-IP: 127.0.0.2\r\n\r\n")
              + body.encode())
    out, closed = read_until_eof(s, 5)
    s.close()
    assert parse_response(out)[0] == 401 and closed
    # With the shared token from anywhere; then, on the same kept-alive connection, a request
    # without one is refused on its head (401, before its body) and the connection closed.
    s = sock_from("127.0.0.3", server)
    s.sendall(notify_head(len(body), NOTIFY_TOKEN) + body.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    assert data.startswith(b"HTTP/1.1 200 "), data[:80]
    s.sendall(notify_head(65536) + b"{")
    t0 = time.monotonic()
    out, closed = read_until_eof(s, 5)
    s.close()
    assert b"HTTP/1.1 401 " in out and closed and time.monotonic() - t0 < 2 * SLOW, out[:200]
    member.close()


def test_notify_allow_from_ipv6_peer(server_factory):
    server = server_factory({"NOTIFY_ALLOW_FROM": "::1/128"}, host="::1")
    s = socket.create_connection(("::1", server.port), timeout=5)
    body = json.dumps({"event": "v6", "room": "product-1"}).encode()
    s.sendall(notify_head(len(body)) + body)
    out, _ = read_until_eof(s, 5)
    s.close()
    assert parse_response(out)[0] == 200, out[:200]


@pytest.mark.parametrize("env,name", [
    ({"NOTIFY_ALLOW_FROM": "10.0.0.0/33"}, "NOTIFY_ALLOW_FROM"),
    ({"NOTIFY_ALLOW_FROM": "127.0.0.1/32,example.com"}, "NOTIFY_ALLOW_FROM"),
    ({"NOTIFY_ALLOW_FROM": "::1/129"}, "NOTIFY_ALLOW_FROM"),
    ({"NOTIFY_ALLOW_FROM": "10.0.0.0/8,"}, "NOTIFY_ALLOW_FROM"),
    ({"ENVIRONMENT": "production", "WS_ORIGINS": "https://a.example",
      "NOTIFY_TOKEN": "x" * 31}, "NOTIFY_TOKEN"),
])
def test_bad_notify_settings_refuse_start(env, name):
    e = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_TOKEN", "DATABASE_URL")}
    e.update({"JWT_SECRET": SECRET, "PORT": "1", "HOST": "127.0.0.1"})
    e.update(env)
    p = subprocess.run([BIN, "serve"], env=e, capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and name in p.stderr, (p.returncode, p.stderr)


def test_production_accepts_a_32_byte_notify_token(server_factory):
    server = server_factory({"ENVIRONMENT": "production", "WS_ORIGINS": "https://a.example",
                             "NOTIFY_TOKEN": "y" * 32})
    body = json.dumps({"event": "e", "room": "product-1"})
    assert post_notify(server, body, "127.0.0.1", auth="y" * 32)[0] == 200
    assert post_notify(server, body, "127.0.0.1", auth="y" * 31)[0] == 401
    assert post_notify(server, body, "127.0.0.1", auth="y" * 33)[0] == 401


# ---- absolute deadlines ----

def trickle_until_closed(s, data, every, limit):
    """Sends data one byte every `every` seconds until the server closes (returns the seconds
    it took and what was read) or `limit` seconds pass (returns None)."""
    t0 = time.monotonic()
    s.settimeout(every)
    out = b""
    for b in data:
        if time.monotonic() - t0 > limit:
            return None, out
        try:
            s.send(bytes([b]))
        except OSError:
            return time.monotonic() - t0, out
        try:
            chunk = s.recv(4096)
            if not chunk:
                return time.monotonic() - t0, out
            out += chunk
        except socket.timeout:
            pass
        except OSError:
            return time.monotonic() - t0, out
    return None, out


def test_authenticated_slow_body_closed_at_its_deadline(server_factory):
    """A byte every 0.3 s would keep lws's own body timeout alive for ever; the body deadline
    (HTTP_BODY_TIMEOUT_S from the end of the head) does not move."""
    server = server_factory({"NOTIFY_TOKEN": NOTIFY_TOKEN, "HTTP_BODY_TIMEOUT_S": "2"})
    s = sock_from("127.0.0.2", server)
    s.sendall(notify_head(200, NOTIFY_TOKEN))
    took, _ = trickle_until_closed(s, b"x" * 200, 0.3, 10 * SLOW)
    s.close()
    assert took is not None and 1.5 < took < 3.5 * SLOW, took
    wait_until(lambda: all_released(server), timeout=5 * SLOW, what="counters back to zero")
    assert 'roomcast_deadline_closes_total{phase="http"} 1' in server.metrics()


def test_slow_next_head_on_kept_alive_connection_closed_at_idle_deadline(server_factory):
    server = server_factory({"HTTP_IDLE_TIMEOUT_S": "2"})
    s = sock_from("127.0.0.2", server)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    assert data.startswith(b"HTTP/1.1 200 ")
    took, _ = trickle_until_closed(s, b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100,
                                   0.3, 10 * SLOW)
    s.close()
    assert took is not None and took < 3.5 * SLOW, took
    wait_until(lambda: all_released(server), timeout=5 * SLOW, what="counters back to zero")
    assert 'roomcast_deadline_closes_total{phase="idle"} 1' in server.metrics()


def test_per_address_http_cap_leaves_other_addresses_alone(server_factory):
    server = server_factory({"MAX_HTTP_CONNECTIONS_PER_IP": "5"})
    held = [sock_from("127.0.0.2", server) for _ in range(5)]
    for s in held:
        s.sendall(b"GET /health HTTP/1.1\r\n")  # a head that never ends
    wait_until(lambda: open_counters(server).get("http", 0) >= 6, timeout=5 * SLOW,
               what="five held connections counted")
    extra = sock_from("127.0.0.2", server)
    out, closed = read_until_eof(extra, 5)
    extra.close()
    assert parse_response(out)[0] == 429 and closed
    status, took = timed_health(server, "127.0.0.3")
    assert status == 200
    for s in held:
        s.close()
    wait_until(lambda: all_released(server), timeout=5 * SLOW, what="counters back to zero")


# ---- the hostile-load row (make check-faults) ----

def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


async def _http_from(server, source, data):
    """One request on a fresh connection from `source`; returns (status, seconds)."""
    import asyncio
    t0 = time.monotonic()
    r, w = await asyncio.open_connection(server.host, server.port, local_addr=(source, 0))
    w.write(data)
    await w.drain()
    out = await asyncio.wait_for(r.read(), 5)
    w.close()
    return parse_response(out)[0], time.monotonic() - t0


@pytest.mark.slow
def test_hostile_load_from_one_address_denies_no_one_else(server_factory):
    """From 127.0.0.2, up to 10 000 sockets at once (slow heads, slow notify bodies, idle
    unauthenticated WebSockets, half-open connections, handshake resets; reopened as the
    server closes them) while ordinary clients from 127.0.0.3 connect, join and receive
    notifies, and GET /health. Prints the figures; afterwards every limit counter is zero."""
    import asyncio
    import websockets
    if raise_nofile(20000) < 12000:
        pytest.skip("RLIMIT_NOFILE hard limit too low for this row")
    seconds = float(os.environ.get("HOSTILE_SECONDS", "40"))
    server = server_factory({"NOTIFY_TOKEN": NOTIFY_TOKEN, "LOG_LEVEL": "warn"})
    attacker = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "hostile_load.py"),
         server.host, str(server.port), "--source", "127.0.0.2", "--sockets", "10000",
         "--seconds", str(seconds), "--rate", os.environ.get("HOSTILE_RATE", "2000"), "--token", make_token("evil")],
        stdout=subprocess.PIPE, text=True)
    room = "product-77"
    join_s, deliver_s, health_s, notify_s = [], [], [], []
    peak = {"http": 0, "websocket": 0}

    async def client(i):
        t0 = time.monotonic()
        ws = await websockets.connect(
            server.ws, extra_headers={"Authorization": "Bearer " + make_token(f"ok{i}")},
            local_addr=("127.0.0.3", 0), open_timeout=5, close_timeout=1)
        await ws.send(json.dumps({"type": "join", "payload": {"room": room}}))
        while json.loads(await asyncio.wait_for(ws.recv(), 5)).get("type") != "joined":
            pass
        join_s.append(time.monotonic() - t0)
        return ws

    async def go():
        await asyncio.sleep(5)  # let the attack build up to its peak
        members = [await client(i) for i in range(20)]
        t_stop = time.monotonic() + seconds - 10
        k = 0
        while time.monotonic() < t_stop:
            k += 1
            body = json.dumps({"event": "tick", "room": room, "data": {"k": k}}).encode()
            t0 = time.monotonic()
            st, took = await _http_from(
                server, "127.0.0.3",
                b"POST /api/notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + NOTIFY_TOKEN.encode() + b"\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert st == 200, st
            notify_s.append(took)

            async def recv_tick(ws):
                while True:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if m.get("event") == "tick" and m["data"]["k"] == k:
                        return time.monotonic() - t0
            deliver_s.extend(await asyncio.gather(*(recv_tick(ws) for ws in members)))
            st, took = await _http_from(
                server, "127.0.0.3",
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert st == 200, st
            health_s.append(took)
            ws = await client(100 + k)  # a newcomer: connect and join
            await ws.close()
            if k % 10 == 0:
                c = open_counters(server)
                for b in peak:
                    peak[b] = max(peak[b], c.get(b, 0))
            await asyncio.sleep(0.1)
        for ws in members:
            await ws.close()

    try:
        asyncio.run(asyncio.wait_for(go(), seconds + 60))
    finally:
        out, _ = attacker.communicate(timeout=seconds + 60)
    attack = json.loads(out.strip().splitlines()[-1])
    t0 = time.monotonic()
    wait_until(lambda: all_released(server), timeout=30, interval=0.5,
               what="every limit counter back to zero")
    drained = time.monotonic() - t0
    ms = lambda v: f"{v * 1000:.1f}"  # noqa: E731
    print(f"\nhostile load from 127.0.0.2 for {seconds:.0f} s: {json.dumps(attack)}")
    print(f"roomcast peak open connections seen: {peak}")
    print(f"127.0.0.3 connect+join ms: n={len(join_s)} p50={ms(pct(join_s, 50))} "
          f"p99={ms(pct(join_s, 99))} max={ms(max(join_s))}")
    print(f"127.0.0.3 notify->receive ms: n={len(deliver_s)} p50={ms(pct(deliver_s, 50))} "
          f"p99={ms(pct(deliver_s, 99))} max={ms(max(deliver_s))}")
    print(f"127.0.0.3 POST /api/notify ms: p50={ms(pct(notify_s, 50))} "
          f"p99={ms(pct(notify_s, 99))} max={ms(max(notify_s))}")
    print(f"127.0.0.3 GET /health ms: n={len(health_s)} p50={ms(pct(health_s, 50))} "
          f"p99={ms(pct(health_s, 99))} max={ms(max(health_s))}")
    print(f"counters back to zero {drained:.1f} s after the attack ended")
    assert attack["opened"] >= 10000, attack
    assert pct(join_s, 99) < 0.1 and pct(deliver_s, 99) < 0.1, (join_s, deliver_s)
    assert pct(health_s, 99) < 0.05, health_s


# ---- TLS: lws accepts, the same budgets and deadlines apply ----

def test_tls_connections_counted_and_handshake_deadline(server_factory, cert):
    """With TLS_CERT_FILE lws accepts the sockets itself: they are counted from accept (a
    sixth from one address over MAX_HTTP_CONNECTIONS_PER_IP=5 is closed at once) and one that
    never finishes its TLS handshake is closed at HEADER_TIMEOUT_S."""
    import ssl
    import urllib.request
    crt, key = cert
    server = server_factory({"TLS_CERT_FILE": crt, "TLS_KEY_FILE": key,
                             "HEADER_TIMEOUT_S": "2", "MAX_HTTP_CONNECTIONS_PER_IP": "5"},
                            wait=False)
    ctx = ssl.create_default_context(cafile=crt)

    def metrics():
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/metrics",
                                        context=ctx, timeout=2) as r:
                return r.read().decode()
        except OSError:
            return ""

    def counters():
        out = {}
        for m in re.finditer(r'roomcast_open_connections\{phase="(\w+)"\} (\d+)', metrics()):
            out[m.group(1)] = int(m.group(2))
        return out
    wait_until(lambda: counters(), timeout=15, what="https /metrics")
    held = [sock_from("127.0.0.2", server) for _ in range(5)]  # no ClientHello, ever
    wait_until(lambda: counters().get("http", 0) >= 6, timeout=5 * SLOW, what="5 counted")
    extra = sock_from("127.0.0.2", server)
    out, closed = read_until_eof(extra, 2 * SLOW)
    extra.close()
    assert closed and out == b"", out
    t0 = time.monotonic()
    for s in held:
        out, closed = read_until_eof(s, 5 * SLOW)
        assert closed, "a TLS socket without a handshake outlived its deadline"
        s.close()
    assert time.monotonic() - t0 < 3.5 * SLOW
    wait_until(lambda: counters() == {"http": 1, "websocket": 0}, timeout=5 * SLOW,
               what="counters back to zero")
    assert re.search(r'roomcast_deadline_closes_total\{phase="head"\} [1-9]', metrics())
