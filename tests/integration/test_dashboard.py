"""GET /admin and the JavaScript client (issue 5): the embedded assets and their headers, the
client module's unit tests under Node, the client against a real roomcast that is restarted
while PostgreSQL commits events, and the dashboard in Debian's headless Chromium. The Node
tests live in tests/js/; this file runs them and plays roomcast's and PostgreSQL's side."""

import json
import os
import shutil
import subprocess
import time

import psycopg2
import pytest

from pgcluster import PgCluster
from rc import BIN, make_token, parse_response, raw_exchange, wait_until

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
JS = os.path.join(ROOT, "tests", "js")
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
ADMIN = make_token("1", "admin", ttl=3600)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# ---- fixtures ----

@pytest.fixture(scope="module")
def node_deps():
    """node and tests/js/node_modules (npm ci from the committed package-lock.json)."""
    node = shutil.which("node")
    assert node, "node (>= 20) is needed for tests/js"
    if not os.path.isdir(os.path.join(JS, "node_modules", "ws")) or \
            not os.path.isdir(os.path.join(JS, "node_modules", "playwright-core")):
        out = subprocess.run(["npm", "ci", "--prefix", JS, "--no-audit", "--no-fund"],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"npm ci failed:\n{out.stdout}\n{out.stderr}"
    return node


@pytest.fixture(scope="module")
def cluster():
    c = PgCluster()
    c.start()
    c.create_database("tmpl_dash")
    for f in ("sql/marketplace.sql", "sql/demo.sql"):
        c.psql_file(os.path.join(ROOT, f), dbname="tmpl_dash")
    out = subprocess.run([BIN, "migrate"],
                         env=dict(os.environ, DATABASE_URL=c.dsn_for("tmpl_dash")),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    yield c
    c.cleanup()


_dbs = iter(range(1, 1000))


@pytest.fixture
def pgserver(server_factory, cluster):
    """A roomcast with its own database (from the migrated template); returns (server, dsn)."""
    dsn = cluster.create_database("dash%d" % next(_dbs), template="tmpl_dash")
    s = server_factory({"DATABASE_URL": dsn})
    wait_pg_up(s)
    return s, dsn


def wait_pg_up(server):
    wait_until(lambda: server.json("/health")[1]["postgres"] == "up", 15, what="postgres up")


def publish(dsn, event, room, data):
    """realtime.publish in its own committed transaction; returns the event id."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT realtime.publish(%s, ARRAY[%s]::text[], %s::jsonb)",
                        (event, room, json.dumps(data)))
            return cur.fetchone()[0]
    finally:
        conn.close()


class NodeTest:
    """`node --test FILE` in the background, with a directory for the file handshake of
    tests/js/sync.mjs."""

    def __init__(self, path, env, tmp_path):
        self.sync = tmp_path / "sync"
        self.sync.mkdir()
        self.log = open(tmp_path / "node.log", "w+")
        full = dict(os.environ, SYNC_DIR=str(self.sync), **env)
        self.proc = subprocess.Popen(["node", "--test", path], cwd=ROOT, env=full,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait(self, name, timeout=30):
        path = self.sync / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"node test exited ({self.proc.returncode}) before "
                                     f"'{name}':\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no '{name}' from the node test in {timeout}s:\n"
                                     f"{self.output()}")
            time.sleep(0.02)
        return json.loads(path.read_text())

    def signal(self, name, data):
        tmp = self.sync / (name + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.rename(self.sync / name)

    def finish(self, timeout=120):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out = self.output()
        assert self.proc.returncode == 0, f"node test failed:\n{out}"
        assert "# fail 0" in out and "# pass 1" in out, out
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def node_test(node_deps, tmp_path):
    started = []

    def start(path, **env):
        t = NodeTest(path, env, tmp_path)
        started.append(t)
        return t
    yield start
    for t in started:
        t.close()


# ---- tests ----

def test_admin_assets_served_with_strict_headers(server):
    for path, ctype in (("/admin", "text/html"), ("/admin/app.js", "text/javascript"),
                        ("/admin/roomcast.js", "text/javascript"),
                        ("/admin/style.css", "text/css")):
        data, _ = raw_exchange(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                                       "Connection: close\r\n\r\n".encode())
        status, headers, body = parse_response(data)
        assert status == 200, path
        assert headers["content-type"].startswith(ctype), path
        assert headers["content-security-policy"] == CSP
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        assert int(headers["content-length"]) == len(body) > 100
    # The page loads only its own files: no inline script or style, no other origin.
    status, page = server.get("/admin")
    assert '<script type="module" src="/admin/app.js"></script>' in page
    assert "<style" not in page and " style=" not in page and "http" not in page.replace(
        "http-equiv", "")
    with open(os.path.join(ROOT, "clients", "js", "roomcast.js")) as f:
        assert server.get("/admin/roomcast.js")[1] == f.read()
    # HEAD has the headers and no body; other methods are refused.
    data, _ = raw_exchange(server, b"HEAD /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_response(data)
    assert status == 200 and int(headers["content-length"]) > 0 and body == b""
    data, _ = raw_exchange(server, b"DELETE /admin/app.js HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n")
    status, headers, body = parse_response(data)
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert json.loads(body) == {"error": "method not allowed"}
    # The JSON endpoint beside the page is untouched.
    assert server.get("/admin/clients")[0] == 401
    status, body = server.json("/admin/clients", {"Authorization": "Bearer " + ADMIN})
    assert status == 200 and "clients" in body
    assert server.get("/admin/nothing")[0] == 404


def test_js_client_unit(node_deps):
    out = subprocess.run(["node", "--test", "tests/js/client.unit.test.mjs"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# fail 0" in out.stdout


def test_js_client_resumes_after_restart(pgserver, node_test):
    server, dsn = pgserver
    room = "order-555"
    t = node_test("tests/js/client.test.mjs", ROOMCAST_URL=server.ws, TOKEN=ADMIN, ROOM=room)
    t.wait("joined")
    first = [publish(dsn, "before_restart", room, {"n": 0})]
    t.signal("published-first", {"ids": first})
    t.wait("got-first")

    assert server.stop() == 0  # SIGTERM: clients get 1001
    down = [publish(dsn, "while_down", room, {"n": i}) for i in range(1, 6)]
    publish(dsn, "while_down", "order-556", {"n": 99})  # another room: not replayed here
    server.start()  # the same port
    wait_pg_up(server)
    t.signal("published-down", {"ids": down})

    t.wait("resumed", timeout=60)
    live = [publish(dsn, "after_restart", room, {"n": i}) for i in range(1, 3)]
    t.signal("published-live", {"ids": live})
    t.finish()


def test_js_client_presence_and_history(pgserver, node_test):
    server, dsn = pgserver
    room = "order-556"
    ids = [publish(dsn, "stored", room, {"n": i}) for i in range(5)]
    t = node_test("tests/js/presence.test.mjs", ROOMCAST_URL=server.ws, TOKEN=ADMIN,
                  USER_TOKEN=make_token("js-user", rooms=[room]), ROOM=room, IDS=json.dumps(ids))
    t.finish(timeout=60)


def test_dashboard_in_chromium(pgserver, node_test):
    server, dsn = pgserver
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert os.path.exists(chromium), "Debian's chromium is needed (tools/packages.txt)"
    room = "order-4242"
    shot = os.path.join(ARTIFACTS, "dashboard.png")
    if os.path.exists(shot):
        os.unlink(shot)
    t = node_test("tests/js/dashboard.test.mjs", ROOMCAST_HTTP=server.http, ADMIN_TOKEN=ADMIN,
                  USER_TOKEN=make_token("dash-user"), ROOM=room, SCREENSHOT=shot,
                  CHROMIUM=chromium)
    t.wait("watching", timeout=90)
    event_id = publish(dsn, "order_shipped", room, {"id_order": 4242, "status": "shipped"})
    t.signal("published", {"id": event_id})
    t.finish(timeout=150)
    assert os.path.getsize(shot) > 10000
