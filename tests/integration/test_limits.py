"""Limits and operations against a real roomcast process, with real clients and with
raw sockets for misbehaving peers: Origin checks, message size, rate limit, slow consumers,
connection caps (total and per address), ping/pong liveness, SIGTERM shutdown, tokens kept out of
logs, request-head deadline and size (slowloris), and h2c / upgrade-after-keep-alive refusals."""

import asyncio
import json
import signal
import socket
import time

import pytest
import websockets

from rc import (Notifier, RawClient, closed_code, connect, join, make_token, parse_response,
                raw_exchange, read_until_eof, recv_json, recv_type, run, send, settle,
                wait_server_close, wait_until)

UPGRADE = ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def metric(server, line_prefix):
    """The value of the first /metrics line starting with line_prefix (exact series), or None."""
    for line in server.metrics().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def status_of_handshake(server, **kw):
    """101 when the upgrade worked (the socket is closed again), else the refusal status."""
    try:
        ws = await connect(server, make_token("1"), **kw)
    except websockets.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


# ---- Origin ----

def test_origin_allow_list(server_factory):
    # A comma list with a space: both entries count.
    server = server_factory({"WS_ORIGINS": "https://other.example, https://good.example"})

    async def go():
        assert await status_of_handshake(server, origin="https://evil.example") == 403
        # Exact match: an origin that merely starts with an allowed one, or the same host
        # under another scheme, is refused.
        assert await status_of_handshake(server, origin="https://good.example.evil") == 403
        assert await status_of_handshake(server, origin="http://good.example") == 403
        for origin in ("https://good.example", "https://other.example"):
            ws = await connect(server, make_token("1"), origin=origin)
            await send(ws, "ping")
            assert await recv_json(ws) == {"type": "pong"}
            await ws.close()
        # No Origin header at all: not a browser, allowed.
        ws = await connect(server, make_token("1"))
        assert ws.request_headers.get("Origin") is None
        await send(ws, "ping")
        assert await recv_json(ws) == {"type": "pong"}
        await ws.close()
    run(go())


def test_origin_refusal_is_a_complete_http_answer(server_factory):
    server = server_factory({"WS_ORIGINS": "https://good.example"})
    data, closed = raw_exchange(server, UPGRADE.replace(
        "\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n").encode())
    status, headers, body = parse_response(data)
    assert status == 403 and closed
    assert int(headers["content-length"]) == len(body) and b"101" not in data.split(b"\r\n")[0]


# ---- message size ----

def _auth_raw(server, **kw):
    c = RawClient(server, make_token("5"), **kw)
    assert c.status == 101
    return c


def _first_text_frame(c, timeout=5):
    """Reads frames until a text frame arrives; returns it decoded (or None at close/EOF)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = c.read_frame(deadline - time.monotonic())
        if f is None or f[0] == 8:
            return None
        if f[0] == 1:
            return json.loads(f[1])
    raise AssertionError("no text frame")


def test_message_too_big_closes_1009(server_factory):
    server = server_factory({"MAX_MESSAGE_SIZE": "1024"})

    async def go():
        ws = await connect(server, make_token("5"))
        await ws.send('{"type":"ping"}' + " " * (2000 - 15))
        assert await closed_code(ws) == 1009
        # One byte over the limit is already too big.
        ws = await connect(server, make_token("5"))
        await ws.send('{"type":"ping"}' + " " * (1025 - 15))
        assert await closed_code(ws) == 1009
    run(go())
    assert metric(server, 'roomcast_closes_total{reason="too_big"}') == 2


def test_message_exactly_at_limit_is_processed(server_factory):
    server = server_factory({"MAX_MESSAGE_SIZE": "1024"})

    async def go():
        ws = await connect(server, make_token("5"))
        msg = '{"type":"ping"}' + " " * (1024 - 15)
        assert len(msg.encode()) == 1024
        await ws.send(msg)
        assert await recv_json(ws) == {"type": "pong"}
        await ws.close()
    run(go())


def test_fragmented_message_over_limit_closes_1009(server_factory):
    server = server_factory({"MAX_MESSAGE_SIZE": "1024"})
    # Under the limit, three fragments are reassembled into one message: proves the close
    # below is about the total size, not about fragmentation.
    c = _auth_raw(server)
    msg = ('{"type":"ping"}' + " " * (1024 - 15)).encode()
    c.send_frame(msg[:400], opcode=1, fin=False)
    c.send_frame(msg[400:800], opcode=0, fin=False)
    c.send_frame(msg[800:], opcode=0, fin=True)
    assert _first_text_frame(c) == {"type": "pong"}
    c.close()

    # Each fragment is small; only their sum (1200) is over 1024.
    c = _auth_raw(server)
    c.send_frame('{"type":"ping"}' + " " * 385, opcode=1, fin=False)
    c.send_frame(" " * 400, opcode=0, fin=False)
    c.send_frame(" " * 400, opcode=0, fin=True)
    code, seen = wait_server_close(c, timeout=5)
    assert code == 1009, (code, seen)
    assert 1 not in seen  # the oversized message was not answered
    c.close()


# ---- rate limit ----

def test_rate_limited_messages_get_errors_and_connection_stays(server_factory):
    server = server_factory({"RATE_LIMIT": "5/s,burst=5"})

    async def go():
        ws = await connect(server, make_token("5"))
        for _ in range(10):
            await send(ws, "ping")
        pongs = errors = 0
        try:
            while True:
                m = await recv_json(ws, timeout=0.5)
                if m == {"type": "pong"}:
                    pongs += 1
                else:
                    assert m["type"] == "error" and m["payload"]["code"] == "rate_limited", m
                    assert m["payload"]["error"]
                    errors += 1
        except asyncio.TimeoutError:
            pass
        # The burst of 5 is served (plus whatever refilled meanwhile, which is little).
        assert 5 <= pongs <= 7 and errors >= 1, (pongs, errors)
        # Still open: once tokens refill a ping is answered again.
        await asyncio.sleep(0.5)  # refill time at 5/s is the point here
        await send(ws, "ping")
        assert await recv_type(ws, "pong") == {"type": "pong"}
        await ws.close()
    run(go())
    assert metric(server, 'roomcast_closes_total{reason="rate_limit"}') == 0


def _flood_raw(server):
    """Floods from a raw socket and reads everything the server sent: the close code."""
    c = _auth_raw(server)
    try:
        for _ in range(200):
            c.send_frame('{"type":"ping"}')
    except OSError:
        pass  # the server hung up mid-flood; what it sent before is still readable
    code, seen = wait_server_close(c, timeout=5)
    c.close()
    return code, seen


def test_flood_closes_4029(server_factory):
    server = server_factory({"RATE_LIMIT": "5/s,burst=5"})
    code, seen = _flood_raw(server)
    assert code == 4029, (code, seen)
    assert metric(server, 'roomcast_closes_total{reason="rate_limit"}') == 1
    wait_until(lambda: server.admin()["clients"] == 0, timeout=3, what="connection gone")


def test_flooding_library_client_sees_4029(server_factory):
    """A real client library that keeps sending must still learn why it was closed. Repeated
    because the failure mode (the server resets the TCP connection right after its close
    frame, so the client's in-flight frames draw an RST that can discard the close code) is a
    race that a single attempt only usually loses."""
    server = server_factory({"RATE_LIMIT": "5/s,burst=5"})

    async def once():
        ws = await connect(server, make_token("5"))
        try:
            for _ in range(200):
                await send(ws, "ping")
        except websockets.ConnectionClosed:
            pass
        return await closed_code(ws)

    async def go():
        return [await once() for _ in range(5)]
    assert run(go()) == [4029] * 5


# ---- slow consumer ----

def _slow_member(server):
    """A raw client with a tiny receive buffer in product-1 that will never read again."""
    slow = RawClient(server, make_token("slow"), rcvbuf=4096)
    assert slow.status == 101
    slow.send_json({"type": "join", "payload": {"room": "product-1"}})
    op, payload = slow.read_frame()
    assert op == 1 and json.loads(payload)["type"] == "joined"
    return slow


def _push(server, count, stop=None):
    """POSTs `count` ~2 KB notifies to product-1 over one keep-alive connection; returns how
    many were sent (fewer when stop() became true, checked every 50)."""
    notifier = Notifier(server)
    try:
        for i in range(count):
            if stop and i % 50 == 0 and stop():
                return i
            status, body, _ = notifier.post(
                {"event": "e", "room": "product-1", "data": {"i": i, "pad": "x" * 2000}})
            assert status == 200, body
        return count
    finally:
        notifier.close()


async def _read_all(ws, count, timeout=15):
    """Reads room messages until `count` arrived; returns their data.i values."""
    got = []
    while len(got) < count:
        m = await recv_json(ws, timeout=timeout)
        assert m["room"] == "product-1" and m["data"]["pad"] == "x" * 2000
        got.append(m["data"]["i"])
    return got


def test_slow_consumer_closed_without_hurting_others(server_factory):
    """SEND_QUEUE_MAX_BYTES=256 KiB; ~3 MB is pushed at a member that never reads. The budget
    leaves a reading client (Python, on a loaded 2-core box, maybe under ASan) room to fall
    behind for a moment; the member that never reads overflows it many times over."""
    server = server_factory({"SEND_QUEUE_MAX_BYTES": "262144", "NOTIFY_TOKEN": "notify-secret"})
    n = 1500
    slow = _slow_member(server)

    async def go():
        good = await connect(server, make_token("good"))
        assert (await join(good, "product-1"))["type"] == "joined"
        pusher = asyncio.get_running_loop().run_in_executor(None, _push, server, n)
        try:
            got = await _read_all(good, n)
        finally:
            await settle(pusher)
        await pusher
        assert got == list(range(n))
        # Nothing extra (no duplicate) after the last one.
        with pytest.raises(asyncio.TimeoutError):
            await recv_json(good, timeout=0.3)
        wait_until(lambda: server.admin()["clients"] == 1, timeout=10,
                   what="slow client closed")
        assert metric(server, 'roomcast_closes_total{reason="slow_consumer"}') == 1
        # The good client is still served.
        await send(good, "ping")
        assert await recv_type(good, "pong") == {"type": "pong"}
        await good.close()
    try:
        run(go())
    finally:
        slow.close()


def test_slow_consumer_eventually_closed(server_factory):
    """The 4008 mechanism itself, whatever the kernel buffers in front of the queue: pushing
    continues (up to ~10 MB) until the server has closed the member that never reads."""
    server = server_factory({"SEND_QUEUE_MAX_BYTES": "65536", "NOTIFY_TOKEN": "notify-secret"})
    slow = _slow_member(server)

    def closed():
        return metric(server, 'roomcast_closes_total{reason="slow_consumer"}') == 1

    async def go():
        good = await connect(server, make_token("good"))
        assert (await join(good, "product-1"))["type"] == "joined"
        pusher = asyncio.get_running_loop().run_in_executor(None, _push, server, 5000, closed)
        # Read while pushing: the good client must never fall behind its own budget.
        got = []
        try:
            while not pusher.done():
                try:
                    got += await _read_all(good, 1, timeout=0.2)
                except asyncio.TimeoutError:
                    pass
        finally:
            await settle(pusher)
        sent = await pusher
        assert closed(), "never closed after ~10 MB"
        got += await _read_all(good, sent - len(got))
        assert got == list(range(sent))
        wait_until(lambda: server.admin()["clients"] == 1, timeout=10,
                   what="slow client gone")
        await good.close()
    try:
        run(go())
    finally:
        slow.close()


# ---- connection caps ----

def test_max_connections_503(server_factory):
    server = server_factory({"MAX_CONNECTIONS": "3"})

    async def go():
        clients = [await connect(server, make_token(str(i))) for i in range(3)]
        assert await status_of_handshake(server) == 503
        # A freed slot is usable again once the server has seen the close.
        await clients.pop().close()
        wait_until(lambda: server.json("/health")[1]["connections"] == 2, what="close seen")
        clients.append(await connect(server, make_token("9")))
        assert await status_of_handshake(server) == 503
        # The refusal itself is a complete HTTP response.
        data, closed = raw_exchange(server, UPGRADE.encode())
        status, headers, body = parse_response(data)
        assert status == 503 and closed and int(headers["content-length"]) == len(body)
        for ws in clients:
            await ws.close()
    run(go())


def test_max_connections_per_ip_429(server_factory):
    server = server_factory({"MAX_CONNECTIONS_PER_IP": "2", "MAX_CONNECTIONS": "1000"})
    a = RawClient(server, make_token("a"))
    b = RawClient(server, make_token("b"))
    assert (a.status, b.status) == (101, 101)
    third = RawClient(server, make_token("c"))
    assert third.status == 429
    third.close()
    # Another source address has its own budget (all of 127/8 is local on Linux).
    other = RawClient(server, make_token("d"), source="127.0.0.2")
    assert other.status == 101
    a.close()

    def slot_free():
        c = RawClient(server, make_token("e"))
        if c.status == 101:
            return c
        assert c.status == 429
        c.close()
        return None
    again = wait_until(slot_free, timeout=5, interval=0.05, what="per-IP slot freed")
    # And the budget is full again.
    refused = RawClient(server, make_token("f"))
    assert refused.status == 429
    for c in (again, b, other, refused):
        c.close()


# ---- liveness ----

def test_peer_that_never_pongs_is_closed(server_factory):
    server = server_factory({"PING_INTERVAL_S": "1", "PONG_TIMEOUT_S": "3"})
    c = RawClient(server, make_token("5"))
    assert c.status == 101
    t0 = time.monotonic()
    _, seen = wait_server_close(c, timeout=8)
    elapsed = time.monotonic() - t0
    c.close()
    assert 9 in seen, f"server never pinged (frames seen: {seen})"
    assert 2 <= elapsed <= 5.5, elapsed
    wait_until(lambda: server.admin()["clients"] == 0, timeout=3, what="connection gone")
    assert metric(server, 'roomcast_closes_total{reason="timeout"}') == 1


def test_peer_that_talks_but_never_pongs_stays(server_factory):
    # Any frame proves the peer alive, not only a pong: a client that sends messages but
    # ignores pings is kept, and pinged only once it falls silent.
    server = server_factory({"PING_INTERVAL_S": "1", "PONG_TIMEOUT_S": "3"})
    c = RawClient(server, make_token("5"))
    assert c.status == 101
    replies = pings = 0
    end = time.monotonic() + 6
    while time.monotonic() < end:
        c.send_frame('{"type":"ping"}')
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                f = c.read_frame(timeout=max(0.01, deadline - time.monotonic()))
            except socket.timeout:
                break
            assert f is not None and f[0] != 8, f"closed while talking: {f}"
            replies += f[0] == 1
            pings += f[0] == 9
    assert replies >= 10 and pings == 0, (replies, pings)
    # Then silent and deaf: pinged, and dropped within PONG_TIMEOUT_S plus a tick.
    t0 = time.monotonic()
    _, seen = wait_server_close(c, timeout=8)
    assert 9 in seen and time.monotonic() - t0 <= 5.5, seen
    c.close()


def test_silent_peers_are_dropped_in_bulk(server_factory):
    # Hundreds of dead peers at once: each costs the timer O(1), and the ones that still
    # answer stay.
    server = server_factory({"PING_INTERVAL_S": "1", "PONG_TIMEOUT_S": "3"})
    deaf = [RawClient(server, make_token(str(i))) for i in range(300)]
    assert all(c.status == 101 for c in deaf)

    async def go():
        ws = await connect(server, make_token("alive"), ping_interval=None)
        # Waited for on the event loop, so that the live client keeps answering pings.
        for _ in range(100):
            if server.admin()["clients"] == 1:
                break
            await asyncio.sleep(0.1)
        assert server.admin()["clients"] == 1
        await send(ws, "ping")
        assert await recv_json(ws) == {"type": "pong"}
        await ws.close()
    run(go())
    assert metric(server, 'roomcast_closes_total{reason="timeout"}') == 300
    for c in deaf:
        c.close()


def test_peer_that_pongs_stays(server_factory):
    server = server_factory({"PING_INTERVAL_S": "1", "PONG_TIMEOUT_S": "3"})

    async def go():
        # No client-side pings: only the automatic answers to the server's pings keep it alive.
        ws = await connect(server, make_token("5"), ping_interval=None)
        await asyncio.sleep(5)  # outliving PONG_TIMEOUT_S is the point
        await send(ws, "ping")
        assert await recv_json(ws) == {"type": "pong"}
        assert server.admin()["clients"] == 1
        await ws.close()
    run(go())


# ---- SIGTERM ----

def test_sigterm_closes_clients_1001_and_exits_0(server_factory):
    server = server_factory()

    async def go():
        clients = [await connect(server, make_token(str(i))) for i in range(3)]
        for ws in clients:
            await send(ws, "ping")
            assert await recv_json(ws) == {"type": "pong"}

        def stop():
            t0 = time.monotonic()
            rc = server.stop(signal.SIGTERM, timeout=10)
            return rc, time.monotonic() - t0
        stopping = asyncio.get_running_loop().run_in_executor(None, stop)
        codes = await asyncio.gather(*(closed_code(ws, timeout=6) for ws in clients))
        rc, elapsed = await stopping
        assert codes == [1001, 1001, 1001]
        assert rc == 0 and elapsed < 5, (rc, elapsed)
    run(go())


# ---- secrets in logs ----

def test_tokens_never_logged(server_factory):
    server = server_factory({"LOG_LEVEL": "debug", "NOTIFY_TOKEN": "notify-secret-7f3a9c"})
    good_q = make_token("q1", name="query-way")
    good_p = make_token("p1", name="protocol-way")
    bad_q = make_token("b1", secret="another-secret-another-secret-00")
    bad_h = make_token("b2", secret="another-secret-another-secret-00")

    async def go():
        for token, how in ((good_q, "query"), (good_p, "subprotocol")):
            ws = await connect(server, token, how)
            await send(ws, "ping")
            assert await recv_json(ws) == {"type": "pong"}
            await ws.close()
        for token, how in ((bad_q, "query"), (bad_h, "header")):
            with pytest.raises(websockets.InvalidStatusCode):
                await connect(server, token, how)
        # First-frame auth with a bad token: the token travels in a message body.
        ws = await connect(server)
        await send(ws, "auth", token=bad_q + "x")
        await closed_code(ws)
        # And the notify secret, used once well and once badly (one request per connection:
        # keep-alive is tested in test_http.py).
        for secret, status in (("notify-secret-7f3a9c", 200), ("notify-secret-7f3a9c-no", 401)):
            assert server.get("/api/notify", {"Authorization": "Bearer " + secret,
                                              "Content-Type": "application/json"},
                              method="POST", body=b'{"event":"e","room":"product-1"}'
                              )[0] == status
    run(go())
    logs = server.logs()
    for token in (good_q, good_p, bad_q, bad_h):
        assert token not in logs
        assert token.rsplit(".", 1)[1] not in logs  # the signature alone
        assert token.split(".")[1] not in logs  # nor the claims part
    assert "notify-secret-7f3a9c" not in logs
    assert "integration-test-secret" not in logs  # JWT_SECRET


# ---- request head: deadline, size, syntax ----

def test_slowloris_head_is_cut_off(server_factory):
    server = server_factory({"HEADER_TIMEOUT_S": "1"})
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    data, closed = read_until_eof(sock, timeout=4)
    elapsed = time.monotonic() - t0
    sock.close()
    assert closed, "server kept an incomplete head open"
    assert 0.8 <= elapsed <= 3, elapsed
    assert not data.startswith(b"HTTP/1.1 200")
    # Trickling bytes does not extend the deadline.
    sock = socket.create_connection((server.host, server.port))
    t0 = time.monotonic()
    sock.settimeout(0.3)
    closed = False
    for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: yes":
        try:
            sock.send(bytes([ch]))
            if sock.recv(100) == b"":
                closed = True
                break
        except socket.timeout:
            pass
        except OSError:
            closed = True
            break
        if time.monotonic() - t0 > 4:
            break
    sock.close()
    assert closed and time.monotonic() - t0 <= 3


def _head_of(total):
    base = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: "
    head = base + b"a" * (total - len(base) - 4) + b"\r\n\r\n"
    assert len(head) == total
    return head


def test_head_too_large_431(server_factory):
    server = server_factory({"MAX_HEADER_BYTES": "2048"})
    data, closed = raw_exchange(server, _head_of(3000))
    status, headers, body = parse_response(data)
    assert status == 431 and closed and int(headers["content-length"]) == len(body)
    # A modest head is served normally.
    assert parse_response(raw_exchange(server, _head_of(1024), timeout=1)[0])[0] == 200


@pytest.mark.parametrize("total", [2000, 2040])
def test_head_just_under_limit_is_answered(server_factory, total):
    """A head smaller than MAX_HEADER_BYTES passes the gate, so it must be served."""
    server = server_factory({"MAX_HEADER_BYTES": "2048"})
    data, _ = raw_exchange(server, _head_of(total), timeout=1)
    assert data, "connection closed without any HTTP response"
    assert parse_response(data)[0] == 200


@pytest.mark.parametrize("line", [b"HELLO\r\n\r\n", b"GET /health\r\nHost: x\r\n\r\n",
                                  b"GET health HTTP/1.1\r\nHost: x\r\n\r\n",
                                  b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n"])
def test_garbage_request_400(server, line):
    data, closed = raw_exchange(server, line)
    status, headers, body = parse_response(data)
    assert status == 400 and closed and int(headers["content-length"]) == len(body)


# ---- h2c and upgrades that bypass the gate ----

H2C = (b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
       b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")


def test_h2c_upgrade_is_ignored(server):
    data, _ = raw_exchange(server, H2C, timeout=1)
    assert data.startswith(b"HTTP/1.1 200 "), data[:100]
    assert b"101" not in data.split(b"\r\n")[0]
    status, headers, body = parse_response(data)
    assert "upgrade" not in headers
    assert json.loads(body)["status"] == "healthy"


def test_upgrade_after_keep_alive_request_is_refused(server):
    sock = socket.create_connection((server.host, server.port), timeout=5)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or len(parse_response(data)[2]) < int(
                parse_response(data)[1]["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "server closed a keep-alive connection"
            data += chunk
        assert parse_response(data)[0] == 200
        # The same connection now asks for a WebSocket, with a valid token: it never went
        # through the gate's checks, so it must not be upgraded.
        sock.sendall(UPGRADE.replace("\r\n\r\n", "\r\nAuthorization: Bearer " +
                                     make_token("5") + "\r\n\r\n").encode())
        rest, _ = read_until_eof(sock, timeout=2)
        assert not rest.startswith(b"HTTP/1.1 101"), rest[:100]
    finally:
        sock.close()
    assert server.json("/health")[1]["connections"] == 0


def test_pipelined_upgrade_after_request_is_refused(server):
    data, _ = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" +
                           UPGRADE.encode(), timeout=2)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 101" not in data
