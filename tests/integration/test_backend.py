"""Room authorization over HTTP (docs/protocol.md, BACKEND_URL): roomcast asks a real local HTTP
server `GET /can_join?room=…&user_id=…` and needs {"allowed":true}; a refusal, an error or no
answer within 3 s denies; verdicts are cached per connection."""

import http.server
import json
import threading
import time
import urllib.parse

import pytest

from rc import connect, join, make_token, run


class Policy(http.server.BaseHTTPRequestHandler):
    calls = []

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        room, user = q.get("room", [""])[0], q.get("user_id", [""])[0]
        Policy.calls.append((url.path, room, user))
        if room.startswith("slow-"):
            time.sleep(5)
        if room.startswith("broken-"):
            self.send_response(500)
            self.end_headers()
            return
        body = json.dumps({"allowed": room == f"order-{user}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def backend():
    Policy.calls = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Policy)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


@pytest.mark.parametrize("room,allowed", [("order-77", True), ("order-78", False),
                                          ("broken-1", False)])
def test_backend_policy(server_factory, backend, room, allowed):
    server = server_factory({"BACKEND_URL": backend})

    async def go():
        ws = await connect(server, make_token("77"))
        msg = await join(ws, room)
        assert (msg["type"] == "joined") is allowed, msg
        assert ("/can_join", room, "77") in Policy.calls
        await ws.close()
    run(go())


def test_backend_timeout_denies_within_deadline(server_factory, backend):
    server = server_factory({"BACKEND_URL": backend})

    async def go():
        ws = await connect(server, make_token("77"))
        t0 = time.monotonic()
        msg = await join(ws, "slow-1")
        took = time.monotonic() - t0
        # Refused, as a failure the client may retry (docs/decisions.md, 21), not as a verdict.
        assert msg["type"] == "error" and msg["payload"]["code"] == "server_error"
        assert 2.5 < took < 4.5, took
        await ws.close()
    run(go())


def test_backend_verdict_cached_per_connection(server_factory, backend):
    server = server_factory({"BACKEND_URL": backend})

    async def go():
        ws = await connect(server, make_token("77"))
        assert (await join(ws, "order-77"))["type"] == "joined"
        await ws.send('{"type":"leave","payload":{"room":"order-77"}}')
        await ws.recv()
        assert (await join(ws, "order-77"))["type"] == "joined"
        assert Policy.calls.count(("/can_join", "order-77", "77")) == 1
        # Rooms the claims decide never reach the backend.
        assert (await join(ws, "user-77"))["type"] == "joined"
        assert (await join(ws, "user-78"))["type"] == "error"
        assert not [c for c in Policy.calls if c[1].startswith("user-")]
        await ws.close()
    run(go())
