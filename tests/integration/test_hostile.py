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
import time

from rc import (RawClient, make_token, parse_response, raise_nofile, read_until_eof,
                wait_until)

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
