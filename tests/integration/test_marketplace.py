"""roomcast beside the real marketplace, unchanged: the frontend's expired tokens with
TOKEN_EXPIRY_ACTION=keep, auth-service tokens (uuid sub, no seller/client claim) resolved through
realtime.identity, a listener behind a pooler that never delivers notifications, and marketplace
tables created after the migrations (realtime.attach_triggers). Real PostgreSQL, Redis and
WebSocket clients; the pooler is a small TCP proxy that drops NotificationResponse messages."""

import asyncio
import base64
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest
import websockets

from pgcluster import PgCluster
from rc import (BIN, Notifier, RedisServer, connect, join, make_token, metric_samples,
                recv_json, run, send, wait_until)

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
NOTIFY = "notify-secret-for-marketplace-tests-0123456789"
ISS, AUD = "auth-service", "marketplace-espigon"
SELLER1_UUID = "00000000-0000-4000-a000-000000000101"  # sql/demo.sql: seller 1
CLIENT1_UUID = "00000000-0000-4000-a000-000000000201"  # sql/demo.sql: client 1
_dbs = iter(range(1, 1000))
REPLIES = ("joined", "left", "error", "pong", "token_expiring", "authenticated")


def claims_of(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def auth_service_token(sub, role, ttl=900):
    """A token shaped like the auth service's: no seller or client id claim."""
    return make_token(sub, role, ttl=ttl, jti=str(uuid.uuid4()), email=f"{role}@example.com",
                      name="Someone", iss=ISS, aud=AUD)


def migrate(dsn):
    out = subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=dsn),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def cluster():
    c = PgCluster()
    c.start()
    c.create_database("tmpl_mk")
    for f in ("sql/marketplace.sql", "sql/demo.sql"):
        c.psql_file(os.path.join(ROOT, f), dbname="tmpl_mk")
    migrate(c.dsn_for("tmpl_mk"))
    yield c
    c.cleanup()


@pytest.fixture
def db(cluster):
    name = "mk%d" % next(_dbs)
    cluster.create_database(name, template="tmpl_mk")
    return name


@pytest.fixture
def redis_server():
    r = RedisServer().start()
    yield r
    r.stop()


async def room_messages(ws, n, timeout=10):
    """The next n room messages as raw text (replies, which have a type, are skipped)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        raw = await asyncio.wait_for(ws.recv(), max(0.05, deadline - time.monotonic()))
        m = json.loads(raw)
        if isinstance(m, dict) and m.get("type") in REPLIES:
            continue
        got.append(raw)
    return got


def rooms_of(server, **claims):
    status, body = server.json("/admin/clients", {
        "Authorization": "Bearer " + make_token("admin", "admin", **claims)})
    assert status == 200, body
    return body["rooms"]


# ---- TOKEN_EXPIRY_ACTION ----

def expiry_server(server_factory, action):
    return server_factory({"NOTIFY_TOKEN": NOTIFY, "JWT_LEEWAY_S": "0",
                           "TOKEN_EXPIRY_ACTION": action})


def test_keep_leaves_a_connection_open_past_exp_and_it_still_gets_room_messages(server_factory):
    server = expiry_server(server_factory, "keep")
    token = make_token("u-keep", "seller", ttl=2)

    async def go():
        ws = await connect(server, token, how="query")  # the frontend's way
        first = await recv_json(ws)
        assert first["type"] == "token_expiring", first
        exp = claims_of(token)["exp"]
        await asyncio.sleep(max(0, exp + 1.5 - time.time()))
        assert time.time() > exp + 1
        notifier = Notifier(server, NOTIFY)
        assert notifier.post({"event": "after_exp", "user_id": "u-keep", "data": {"n": 1}})[0] \
            == 200
        notifier.close()
        m = json.loads((await room_messages(ws, 1))[0])
        assert m["event"] == "after_exp" and m["room"] == "user-u-keep"
        # A refresh still works on the expired connection.
        await send(ws, "auth", token=make_token("u-keep", "seller", ttl=600))
        assert (await recv_json(ws))["type"] == "authenticated"
        await ws.close()
        # The handshake still checks exp, as the Go service did: a reconnect with the
        # same (now expired) token is refused with 401.
        with pytest.raises(websockets.InvalidStatusCode) as e:
            await connect(server, token, how="query")
        assert e.value.status_code == 401
    run(go())
    assert "token expired" not in server.logs()


def test_close_is_the_default_and_closes_4001_at_exp(server_factory):
    server = server_factory({"NOTIFY_TOKEN": NOTIFY, "JWT_LEEWAY_S": "0"})
    token = make_token("u-close", "seller", ttl=2)

    async def go():
        ws = await connect(server, token, how="query")
        assert (await recv_json(ws))["type"] == "token_expiring"
        code = None
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 8)
        except websockets.ConnectionClosed as e:
            code = e.code
        assert code == 4001
    run(go())


def test_token_expiry_action_is_validated():
    out = subprocess.run([BIN, "serve", "--token-expiry-action", "sometimes"],
                         env=dict(os.environ, JWT_SECRET="x" * 40), capture_output=True,
                         text=True, timeout=10)
    assert out.returncode != 0 and "TOKEN_EXPIRY_ACTION" in out.stderr
    out = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, timeout=10)
    assert "TOKEN_EXPIRY_ACTION" in out.stdout and "LISTEN_PROBE_S" in out.stdout


# ---- identity from the database ----

def test_auth_service_seller_gets_its_stats_and_product_events_without_sending_anything(
        server_factory, cluster, db, redis_server):
    # A slow lookup, so that a join sent at once has to wait for it rather than be refused.
    cluster.psql("ALTER FUNCTION realtime.identity(jsonb) RENAME TO identity_fast;"
                 "CREATE FUNCTION realtime.identity(claims jsonb) RETURNS jsonb LANGUAGE sql"
                 " AS $$ SELECT realtime.identity_fast(claims) FROM pg_sleep(0.7) $$", dbname=db)
    server = server_factory({"DATABASE_URL": cluster.dsn_for(db), "REDIS_ADDR": redis_server.addr,
                             "NOTIFY_TOKEN": NOTIFY, "JWT_ISSUER": ISS, "JWT_AUDIENCE": AUD,
                             "AUTHZ": "claims"})
    wait_until(lambda: server.json("/health")[1]["postgres"] == "up", 15, what="postgres up")
    stats = ('{"type":"SELLER_STATS_UPDATED","seller_id":"1","timestamp":"2026-12-05T10:00:00Z",'
             '"metadata":{"orders":3}}')

    async def go():
        seller = await connect(server, auth_service_token(SELLER1_UUID, "seller"), how="query")
        eager = await connect(server, auth_service_token(SELLER1_UUID, "seller"))
        await send(eager, "join", room="seller-1")  # before the lookup has answered
        client = await connect(server, auth_service_token(CLIENT1_UUID, "client"))
        await send(client, "join", room="client-1")
        await send(client, "join", room="client-2")
        assert (await recv_json(eager, 5))["type"] == "joined"
        # Matched by room: a `joined` waits for the replica's Redis subscription to the room,
        # so the refusal can come first (docs/protocol.md).
        replies = [await recv_json(client, 5), await recv_json(client, 5)]
        by_room = {r["payload"]["room"]: r for r in replies}
        r1, r2 = by_room["client-1"], by_room["client-2"]
        assert r1["type"] == "joined", r1
        assert r2["type"] == "error" and r2["payload"]["code"] == "forbidden", r2
        wait_until(lambda: rooms_of(server, iss=ISS, aud=AUD).get("seller-1") == 2, 5,
                   what="seller-1 joined")
        assert redis_server.client().publish("events", stats.encode()) >= 1
        for ws in (seller, eager):
            assert await room_messages(ws, 1) == [stats]
        # A product change by seller 1 reaches it through seller-<id> (REST-style UPDATE).
        cluster.psql("UPDATE product SET stock = stock - 1 WHERE id_product = 1", dbname=db)
        m = json.loads((await room_messages(seller, 1))[0])
        assert m["event"] == "product_updated" and m["data"]["id_product"] == 1, m
        for ws in (seller, eager, client):
            await ws.close()
    run(go())
    assert "identity resolved from the database" in server.logs()


def test_failed_identity_lookup_is_retried_at_the_next_refresh(server_factory, cluster, db):
    cluster.psql("ALTER FUNCTION realtime.identity(jsonb) RENAME TO identity_real", dbname=db)
    server = server_factory({"DATABASE_URL": cluster.dsn_for(db), "NOTIFY_TOKEN": NOTIFY,
                             "AUTHZ": "claims"})
    wait_until(lambda: server.json("/health")[1]["postgres"] == "up", 15, what="postgres up")

    async def go():
        ws = await connect(server, auth_service_token(SELLER1_UUID, "seller"), how="query")
        wait_until(lambda: "identity lookup failed" in server.logs(), 5, what="failure log")
        assert "seller-1" not in rooms_of(server)
        cluster.psql("ALTER FUNCTION realtime.identity_real(jsonb) RENAME TO identity", dbname=db)
        await send(ws, "auth", token=auth_service_token(SELLER1_UUID, "seller"))
        assert (await recv_json(ws))["type"] == "authenticated"
        wait_until(lambda: rooms_of(server).get("seller-1") == 1, 5, what="seller-1 joined")
        await ws.close()
    run(go())


# ---- the listen probe, behind a pooler that never delivers notifications ----

class DeafPooler:
    """Forwards PostgreSQL connections to upstream; while `deaf` is set, NotificationResponse
    ('A') messages from the server are dropped, as a transaction-mode pooler effectively does."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.deaf = False
        self.dropped = 0
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
        buf = b""
        try:
            while not self.stopping:
                r, _, _ = select.select([c, u], [], [], 0.5)
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
                    out = b""
                    # Whole messages only: type byte + int32 length (which counts itself).
                    while len(buf) >= 5:
                        n = struct.unpack("!I", buf[1:5])[0] + 1
                        if len(buf) < n:
                            break
                        msg, buf = buf[:n], buf[n:]
                        if msg[:1] == b"A" and self.deaf:
                            self.dropped += 1
                            continue
                        out += msg
                    if out:
                        c.sendall(out)
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


def test_a_listener_that_hears_nothing_degrades_health_and_recovers(server_factory, cluster, db):
    pooler = DeafPooler(cluster.port)
    try:
        server = server_factory({"DATABASE_URL": pooler.dsn(db), "LISTEN_PROBE_S": "1",
                                 "TRIGGER_CHECK_S": "1"})

        def health():
            return server.json("/health")[1]
        wait_until(lambda: health()["status"] == "healthy", 15, what="healthy")
        pooler.deaf = True
        t0 = time.monotonic()
        h = wait_until(lambda: (lambda h: h if h["status"] == "degraded" else None)(health()),
                       8, what="degraded")
        assert "transaction pooler" in h["postgres_reason"], h
        assert time.monotonic() - t0 < 8
        assert pooler.dropped >= 1
        logs = server.logs()
        assert "listener hears no notifications" in logs
        assert "session-mode" in logs and "not a transaction pooler" in logs
        # /ready says why too (its status follows the reconnecting listener, up or down).
        wait_until(lambda: "postgres_reason" in server.get("/ready")[1], 5, what="ready body")
        samples = metric_samples(server.metrics())
        assert samples[("roomcast_postgres_listen_probe_failures_total", ())] >= 1
        pooler.deaf = False
        wait_until(lambda: health()["status"] == "healthy", 10, what="recovered")
        assert "postgres_reason" not in health()
        assert "listener hears notifications again" in server.logs()
    finally:
        pooler.stop()


# ---- triggers on tables created after the migrations ----

def test_tables_created_after_the_migrations_get_their_triggers(server_factory, cluster):
    name = "fresh%d" % next(_dbs)
    dsn = cluster.create_database(name)
    server = server_factory({"DATABASE_URL": dsn, "TRIGGER_CHECK_S": "1"})

    def health():
        return server.json("/health")[1]
    # Migrations not applied: said so, no crash.
    h = wait_until(lambda: (lambda h: h if h.get("triggers", {}).get("reason")
                           == "migrations not applied" else None)(health()), 10,
                   what="migrations not applied")
    assert h["status"] == "degraded" and h["triggers"]["state"] == "unknown", h
    migrate(dsn)
    h = wait_until(lambda: (lambda h: h if h["triggers"].get("missing") else None)(health()),
                   10, what="missing tables listed")
    assert h["status"] == "degraded" and any("order" in t for t in h["triggers"]["missing"]), h
    ready = server.json("/ready")
    assert ready[0] == 200 and ready[1]["triggers"]["missing"], ready
    samples = metric_samples(server.metrics())
    assert samples[("roomcast_watched_tables", (("state", "ok"),))] == 0
    assert samples[("roomcast_watched_tables", (("state", "table_missing"),))] >= 1
    for f in ("sql/marketplace.sql", "sql/demo.sql"):
        cluster.psql_file(os.path.join(ROOT, f), dbname=name)
    h = wait_until(lambda: (lambda h: h if h["status"] == "healthy" else None)(health()), 12,
                   what="triggers attached")
    assert h["triggers"]["state"] == "ok" and h["triggers"]["missing"] == [], h
    assert "watched tables all have their triggers" in server.logs()
    samples = metric_samples(server.metrics())
    assert samples[("roomcast_watched_tables", (("state", "ok"),))] == len(h["triggers"]["tables"])

    async def go():
        ws = await connect(server, make_token("a1", "admin"))
        assert (await join(ws, "client-2"))["type"] == "joined"
        # As the REST service writes an order: one transaction, the order, then per item
        # the product_order row and the stock update.
        conn = cluster.connect(name, autocommit=False)
        with conn.cursor() as cur:
            cur.execute('INSERT INTO "order" (id_client, id_cart, id_payment_method, status,'
                        " total_amount, delivery_type) VALUES (2, 2, 1, 'pending', 16.00,"
                        " 'standard') RETURNING id_order")
            oid = cur.fetchone()[0]
            cur.execute("INSERT INTO product_order (id_order, id_product, price_unit, subtotal)"
                        " VALUES (%s, 5, 16.00, 16.00)", (oid,))
            cur.execute("UPDATE product SET stock = stock - 1 WHERE id_product = 5")
        conn.commit()
        conn.close()
        # The admin is also in `admins`, which gets the stock update.
        got = [json.loads(m) for m in await room_messages(ws, 2)]
        orders = [m for m in got if m["event"] == "order_created"]
        assert len(orders) == 1 and orders[0]["data"]["id_order"] == oid, got
        assert orders[0]["room"] == "client-2"
        await ws.close()
    run(go())
