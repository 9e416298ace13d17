"""POST /api/notify answered by the gate itself on kept-alive connections (the notify fast path,
src/gate.c serve_notify): the same bytes lws writes for the same request, pipelined requests in
order, other requests on the connection going to lws as before (an upgrade still refused), the
idle deadline, a changed or expired credential checked again, and a persisted notify answered
after PostgreSQL confirms it with reading paused meanwhile."""

import base64
import json
import re
import socket
import time

from pgcluster import sql
from rc import make_token, parse_response, read_until_eof, wait_until

TOKEN = "notify-secret"
ID = re.compile(rb'"id":"[^"]*-n\d+"')


def notify_request(body, token=TOKEN, extra=""):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    head = ("POST /api/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (token, len(body), extra))
    return head.encode(), body


class Conn:
    """A kept-alive client connection that reads responses one at a time."""

    def __init__(self, server):
        self.sock = socket.create_connection((server.host, server.port), timeout=5)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def response(self):
        while True:
            if b"\r\n\r\n" in self.buf:
                head, _, rest = self.buf.partition(b"\r\n\r\n")
                status, headers, body = parse_response(self.buf)
                n = int(headers.get("content-length", "0"))
                if len(rest) >= n:
                    raw = head + b"\r\n\r\n" + rest[:n]
                    self.buf = rest[n:]
                    return raw, status, headers, body
            chunk = self.sock.recv(65536)
            assert chunk, f"server closed the connection after {self.buf[:200]!r}"
            self.buf += chunk

    def close(self):
        self.sock.close()


def fast(server, body, token=TOKEN):
    """Head and body in one write: the gate has the whole request and answers it."""
    c = Conn(server)
    try:
        head, b = notify_request(body, token)
        c.send(head + b)
        return c.response()[0]
    finally:
        c.close()


def through_lws(server, body, token=TOKEN):
    """The body after a pause: not in the gate's peek, so lws reads and answers it."""
    c = Conn(server)
    try:
        head, b = notify_request(body, token)
        c.send(head)
        time.sleep(0.15)
        c.send(b)
        return c.response()[0]
    finally:
        c.close()


def test_fast_answers_are_the_bytes_lws_writes(server):
    cases = [
        {"event": "e", "room": "product-1", "data": {"a": [1, 2]}},
        b'{"event":"e","room":',
        {"room": "product-1"},
        {"event": "e", "room": "has space"},
        b'{"event":"e","room":"product-1"} x',
        b'{"event":"\xff","room":"product-1"}',
    ]
    for body in cases:
        a, b = fast(server, body), through_lws(server, body)
        assert ID.sub(b'"id":"X"', a) == ID.sub(b'"id":"X"', b), (body, a, b)
        assert a.startswith(b"HTTP/1.1 200 OK\r\n") or a.startswith(b"HTTP/1.1 400 Bad Request")


def test_pipelined_notifies_in_order_then_other_requests_go_to_lws(server):
    c = Conn(server)
    try:
        reqs = b""
        for i in range(3):
            head, body = notify_request({"event": "e", "room": "product-1", "data": i})
            reqs += head + body
        reqs += b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        c.send(reqs)
        ids = []
        for i in range(3):
            _, status, _, b = c.response()
            assert status == 200, b
            ids.append(int(json.loads(b)["id"].rsplit("-n", 1)[1]))
        assert ids == sorted(ids) and len(set(ids)) == 3
        _, status, _, b = c.response()
        assert status == 200 and json.loads(b)["status"] == "healthy"
        # lws has the connection now (a POST pipelined behind a request lws answered gets a
        # mangled body from lws 4.1.6, so this one waits for the answer above).
        head, body = notify_request({"event": "e", "room": "product-1"})
        c.send(head + body)
        _, status, _, b = c.response()
        assert status == 200 and json.loads(b)["status"] == "success"
    finally:
        c.close()


def test_upgrade_after_fast_notify_is_refused(server):
    c = Conn(server)
    try:
        head, body = notify_request({"event": "e", "room": "product-1"})
        c.send(head + body)
        assert c.response()[1] == 200
        c.send(("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                "Authorization: Bearer %s\r\n\r\n" % make_token("5")).encode())
        rest, _ = read_until_eof(c.sock, timeout=2)
        assert not rest.startswith(b"HTTP/1.1 101"), rest[:100]
    finally:
        c.close()
    assert server.json("/health")[1]["connections"] == 0


def test_credential_checked_again_when_it_changes_or_expires(server):
    c = Conn(server)
    try:
        head, body = notify_request({"event": "e", "room": "product-1"})
        c.send(head + body)
        assert c.response()[1] == 200
        head, body = notify_request({"event": "e", "room": "product-1"}, token=TOKEN + "x")
        c.send(head + body)
        raw, status, _, _ = c.response()
        assert status == 401, raw
    finally:
        c.close()


def test_expired_jwt_on_kept_connection_is_refused(server_factory):
    """A service JWT the connection passed with is checked again once its exp is past."""
    server = server_factory({"JWT_LEEWAY_S": "0"})
    token = make_token("svc", "service", ttl=2)
    c = Conn(server)
    try:
        head, body = notify_request({"event": "e", "room": "product-1"}, token=token)
        c.send(head + body)
        assert c.response()[1] == 200
        exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["exp"]
        time.sleep(max(0.0, exp - time.time()) + 1.1)
        c.send(head + body)
        raw, status, _, _ = c.response()
        assert status == 401, raw
    finally:
        c.close()


def test_idle_deadline_after_fast_notify(server_factory):
    server = server_factory({"NOTIFY_TOKEN": TOKEN, "HTTP_IDLE_TIMEOUT_S": "1"})
    c = Conn(server)
    try:
        head, body = notify_request({"event": "e", "room": "product-1"})
        c.send(head + body)
        assert c.response()[1] == 200
        t0 = time.monotonic()
        c.send(b"GET /health HTTP/1.1\r\n")  # a next head that never ends
        _, closed = read_until_eof(c.sock, timeout=5)
        took = time.monotonic() - t0
    finally:
        c.close()
    assert closed and took < 3.5, took
    assert 'roomcast_deadline_closes_total{phase="idle"} 1' in server.metrics()


def test_persisted_notify_answered_after_the_commit_in_order(pgserver, cluster, db):
    server = pgserver(NOTIFY_TOKEN=TOKEN)
    c = Conn(server)
    try:
        h1, b1 = notify_request({"event": "kept", "room": "persist-2", "data": {"a": 1},
                                 "persist": True})
        h2, b2 = notify_request({"event": "after", "room": "persist-2"})
        c.send(h1 + b1 + h2 + b2)
        _, status, _, body = c.response()
        assert status == 200, body
        first = json.loads(body)
        assert isinstance(first["id"], int)
        _, status, _, body = c.response()
        assert status == 200 and isinstance(json.loads(body)["id"], str), body
    finally:
        c.close()
    row = sql(cluster, db, "SELECT event, rooms FROM realtime.events WHERE id = %s",
              (first["id"],))
    assert row == [("kept", ["persist-2"])]
    wait_until(lambda: server.json("/health")[1]["connections"] == 0, 5, what="closed")
