"""Any PostgreSQL application: its own NOTIFY channels (realtime.listen), its clients' dialect
(`{"action":"subscribe","filters":[...]}`, typed room messages) and live SQL rooms
(realtime.live_room), against a real PostgreSQL with the migrations applied by `roomcast
migrate`, and clients written for other servers, unchanged.

Run: ROOMCAST_BIN=... /usr/bin/python3 -m pytest -q tests/integration/test_apps.py
"""

import asyncio
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgcluster import sql  # noqa: E402
from rc import (RedisServer, connect, make_token, metric_samples, recv_json,  # noqa: E402
                run, wait_until)


# A parking application as it exists: its table and its trigger, notifying on its own channel.
PARKING = """
CREATE TABLE espacios (id int PRIMARY KEY, numero text NOT NULL, estado text NOT NULL);
INSERT INTO espacios VALUES (15, 'A-15', 'libre'), (16, 'A-16', 'libre');

CREATE OR REPLACE FUNCTION notify_parking_change()
RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('parking_update',
        json_build_object(
            'espacio_id', NEW.id,
            'estado_anterior', OLD.estado,
            'estado_actual', NEW.estado,
            'timestamp', NOW()
        )::text
    );
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER parking_state_change
    AFTER UPDATE ON espacios
    FOR EACH ROW
    EXECUTE FUNCTION notify_parking_change();
"""

# An appointments application: one row per appointment, statistics per business.
CITAS = """
CREATE TABLE citas (
    id serial PRIMARY KEY,
    negocio_id text NOT NULL,
    fecha date NOT NULL DEFAULT current_date,
    estado text NOT NULL DEFAULT 'pendiente'
);
INSERT INTO citas (negocio_id, estado) VALUES
    ('negocio_123', 'completada'), ('negocio_123', 'pendiente'), ('negocio_456', 'cancelada');
"""
STATS_QUERY = """
SELECT COUNT(*) AS "totalCitas",
       COUNT(*) FILTER (WHERE fecha = CURRENT_DATE) AS "citasHoy",
       COUNT(*) FILTER (WHERE estado = 'completada') AS "citasCompletadas",
       COUNT(*) FILTER (WHERE estado = 'cancelada') AS "citasCanceladas"
  FROM citas WHERE negocio_id = $1
"""


PG_TEMPLATE_FILES = ()
PG_TEMPLATE_SQL = PARKING + CITAS


def metric(server, name, **labels):
    return metric_samples(server.metrics()).get((name, tuple(sorted(labels.items()))), 0)


class SeedClient:
    """A client written for another server: it speaks `action` messages and dispatches every
    message it receives on its `type`, the way that server's dashboards do."""

    def __init__(self, ws):
        self.ws = ws
        self.by_type = {}

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    async def expect(self, typ, timeout=5):
        """The next message of type typ (others are filed by type and skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {typ} within {timeout}s; got {self.by_type}")
            try:
                m = await recv_json(self.ws, left)
            except asyncio.TimeoutError:
                raise AssertionError(f"no {typ} within {timeout}s; got {self.by_type}")
            self.by_type.setdefault(m.get("type"), []).append(m)
            if m.get("type") == typ:
                return m

    async def quiet(self, typ, seconds):
        """Asserts no message of type typ arrives for a while."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                m = await recv_json(self.ws, left)
            except asyncio.TimeoutError:
                return
            assert m.get("type") != typ, f"unexpected {m}"


def parking_token():
    return make_token("op-1", "user", rooms=["parking", "parking-*"])


# ---- application channels ----

def test_parking_trigger_reaches_a_seed_client_unchanged(pgserver, cluster, db):
    """The application's own trigger, untouched, on its own channel; roomcast told once with
    realtime.listen; the client subscribes with filters and dispatches on type."""
    server = pgserver()
    sql(cluster, db, "SELECT realtime.listen('parking_update', 'parking')")
    sql(cluster, db, "SELECT realtime.listen('parking_update_by_space', 'parking-{espacio_id}')")
    wait_until(lambda: metric(server, "roomcast_listen_channels") == 2, 10,
               what="both channels listened")

    async def go():
        c = SeedClient(await connect(server, parking_token()))
        await c.send({"action": "subscribe", "filters": ["parking", "parking-15"]})
        await c.expect("joined")
        await c.expect("joined")
        sql(cluster, db, "UPDATE espacios SET estado = 'ocupado' WHERE id = 15")
        m = await c.expect("parking_update")
        assert m["room"] == "parking"
        assert m["data"]["espacio_id"] == 15
        assert m["data"]["estado_anterior"] == "libre"
        assert m["data"]["estado_actual"] == "ocupado"
        assert isinstance(m["id"], str) and m["ts"]
        assert set(m) == {"type", "data", "room", "id", "ts"}
        # The same trigger payload re-sent on a channel whose template uses a field.
        sql(cluster, db, "SELECT pg_notify('parking_update_by_space', "
                         "json_build_object('espacio_id', 15, 'type', 'space_changed')::text)")
        m = await c.expect("space_changed")
        assert m["room"] == "parking-15"
        # Another space's room is not ours; a payload that is no object arrives as text.
        sql(cluster, db, "SELECT pg_notify('parking_update_by_space', "
                         "json_build_object('espacio_id', 16)::text)")
        sql(cluster, db, "SELECT pg_notify('parking_update', 'lleno al 95%')")
        m = await c.expect("parking_update")
        assert m["data"] == "lleno al 95%" and m["room"] == "parking"
        assert "parking_update_by_space" not in c.by_type
        # unlisten is taken live too.
        sql(cluster, db, "SELECT realtime.unlisten('parking_update')")
        wait_until(lambda: metric(server, "roomcast_listen_channels") == 1, 10,
                   what="unlisten taken")
        sql(cluster, db, "UPDATE espacios SET estado = 'libre' WHERE id = 15")
        await c.quiet("parking_update", 0.5)
        await c.ws.close()

    run(go())
    # Four notifications heard and routed (parking-16's had no member here).
    assert metric(server, "roomcast_listen_notifications_total") == 4
    assert metric(server, "roomcast_messages_routed_total", source="listen") == 4


def test_listen_event_argument_and_plain_clients(pgserver, cluster, db):
    """The event argument wins over the payload; a client of our own protocol in the same room
    gets the usual envelope, a ?format=typed one the typed form, from the same notification."""
    server = pgserver()
    sql(cluster, db, "SELECT realtime.listen('parking_update', 'parking', 'espacio')")
    wait_until(lambda: metric(server, "roomcast_listen_channels") == 1, 10, what="listened")

    async def go():
        plain = await connect(server, parking_token())
        typed = await connect(server, parking_token(), path="?format=typed")
        for ws in (plain, typed):
            await ws.send(json.dumps({"type": "join", "payload": {"room": "parking"}}))
            assert (await recv_json(ws))["type"] == "joined"
        sql(cluster, db, "UPDATE espacios SET estado = 'ocupado' WHERE id = 16")
        p = await recv_json(plain)
        t = await recv_json(typed)
        assert p["event"] == "espacio" and p["data"]["espacio_id"] == 16 and p["room"] == "parking"
        assert t["type"] == "espacio" and t["data"] == p["data"] and t["id"] == p["id"]
        await plain.close()
        await typed.close()

    run(go())


def test_first_message_decides_the_form_unless_the_url_does(pgserver, cluster, db):
    """A data.channel subscribe as first message switches to the typed form; a join does not;
    ?format=envelope keeps the usual form for a client that subscribes with data.channel but
    reads event/to/data."""
    server = pgserver()
    sql(cluster, db, "SELECT realtime.listen('parking_update', 'parking')")
    wait_until(lambda: metric(server, "roomcast_listen_channels") == 1, 10, what="listened")

    async def go():
        dialect = await connect(server, parking_token())
        ours = await connect(server, parking_token())
        kept = await connect(server, parking_token(), path="?format=envelope")
        await dialect.send(json.dumps(subscribe_channel("parking")))
        await ours.send(json.dumps({"type": "join", "payload": {"room": "parking"}}))
        await kept.send(json.dumps(subscribe_channel("parking")))
        for ws in (dialect, ours, kept):
            assert (await recv_json(ws))["type"] == "joined"
        # A later action message does not change a form already decided.
        await ours.send(json.dumps({"action": "subscribe", "filters": ["parking-15"]}))
        assert (await recv_json(ours))["type"] == "joined"
        sql(cluster, db, "UPDATE espacios SET estado = 'ocupado' WHERE id = 15")
        assert (await recv_json(dialect))["type"] == "parking_update"
        for ws in (ours, kept):
            m = await recv_json(ws)
            assert "type" not in m and m["event"] == "parking_update" and m["to"] == "parking"
        for ws in (dialect, ours, kept):
            await ws.close()

    run(go())


def test_rooms_not_granted_are_refused_to_dialect_clients(pgserver, cluster, db):
    """Authorization is unchanged: a filter the token does not grant (and the policy refuses)
    gets the usual error, the granted one is joined."""
    server = pgserver()

    async def go():
        c = SeedClient(await connect(server, make_token("op-2", "user", rooms=["parking"])))
        await c.send({"action": "subscribe", "filters": ["parking", "payments"]})
        await c.expect("joined")
        err = await c.expect("error")
        assert err["payload"]["code"] == "forbidden" and err["payload"]["room"] == "payments"
        await c.send({"action": "unsubscribe", "filters": ["parking"]})
        assert (await c.expect("left"))["payload"]["room"] == "parking"
        await c.ws.close()

    run(go())


def test_action_auth_first_message(pgserver, cluster, db):
    """A client that connects without a token and sends {"action":"auth"} first, as the
    parking dashboard does."""
    server = pgserver()

    async def go():
        c = SeedClient(await connect(server))
        await c.send({"action": "auth", "token": parking_token()})
        await c.expect("authenticated")
        await c.send({"action": "subscribe", "filters": ["parking"]})
        await c.expect("joined")
        await c.ws.close()

    run(go())


def test_application_channels_listened_again_after_listener_reconnects(pgserver, cluster, db):
    """The listener's backend is terminated: once it is back, the application's channels are
    listened on again (a notification sent while it was away is lost, as with any LISTEN)."""
    server = pgserver()
    sql(cluster, db, "SELECT realtime.listen('parking_update', 'parking')")
    wait_until(lambda: metric(server, "roomcast_listen_channels") == 1, 10, what="listened")

    def listening():
        rows = sql(cluster, db, "SELECT count(*) FROM pg_stat_activity WHERE application_name "
                                "= 'roomcast-listener' AND datname = %s", (db,))
        return rows[0][0] == 1

    async def go():
        c = SeedClient(await connect(server, parking_token()))
        await c.send({"action": "subscribe", "filters": ["parking"]})
        await c.expect("joined")
        pid = sql(cluster, db, "SELECT pid FROM pg_stat_activity WHERE application_name = "
                               "'roomcast-listener' AND datname = %s", (db,))[0][0]
        sql(cluster, db, "SELECT pg_terminate_backend(%s)", (pid,))
        # Back when a new listener backend has run its LISTENs (the notify gets through).
        deadline = time.monotonic() + 15
        n = 0
        while True:
            assert time.monotonic() < deadline, "no parking_update after the reconnect"
            if listening():
                n += 1
                sql(cluster, db, "UPDATE espacios SET estado = %s WHERE id = 15", (f"e{n}",))
                try:
                    m = await c.expect("parking_update", timeout=0.3)
                    break
                except AssertionError:
                    continue
            await asyncio.sleep(0.05)
        assert m["data"]["espacio_id"] == 15 and m["data"]["estado_actual"] == f"e{n}"
        await c.ws.close()

    run(go())


# ---- live SQL rooms ----

def subscribe_channel(room):
    return {"type": "subscribe", "data": {"channel": room}}


def test_stats_query_pushed_per_business_while_rooms_have_members(pgserver, cluster, db):
    """The appointments dashboard: each business's room gets its statistics row as `stats`,
    at once for a newcomer, again only when it changes, one query per room however many
    members, and none once the room is empty."""
    server = pgserver()
    sql(cluster, db, "SELECT realtime.live_room('estadisticas:{negocio_id}', %s, '1 second')",
        (STATS_QUERY,))
    wait_until(lambda: metric(server, "roomcast_live_definitions") == 1, 10, what="defined")
    token = make_token("admin-local", "user", rooms=["estadisticas:*"])

    async def go():
        a1 = SeedClient(await connect(server, token))
        b1 = SeedClient(await connect(server, token))
        await a1.send(subscribe_channel("estadisticas:negocio_123"))
        await b1.send(subscribe_channel("estadisticas:negocio_456"))
        s = (await a1.expect("stats"))["data"]
        assert s == {"totalCitas": 2, "citasHoy": 2, "citasCompletadas": 1,
                     "citasCanceladas": 0}
        s = (await b1.expect("stats"))["data"]
        assert s == {"totalCitas": 1, "citasHoy": 1, "citasCompletadas": 0,
                     "citasCanceladas": 1}
        # A second member of a busy room gets the last row at once, from the same query.
        a2 = SeedClient(await connect(server, token))
        t0 = time.monotonic()
        await a2.send(subscribe_channel("estadisticas:negocio_123"))
        assert (await a2.expect("stats", timeout=2))["data"]["totalCitas"] == 2
        assert time.monotonic() - t0 < 0.5
        assert metric(server, "roomcast_live_rooms") == 2
        # Nothing changed: silence, though the queries keep running.
        q0 = metric(server, "roomcast_live_queries_total")
        for c in (a1, a2, b1):
            await c.quiet("stats", 1.3 if c is a1 else 0.01)
        q1 = metric(server, "roomcast_live_queries_total")
        assert 2 <= q1 - q0 <= 6, (q0, q1)
        # A row changes business 123's numbers only.
        sql(cluster, db, "INSERT INTO citas (negocio_id, estado) VALUES ('negocio_123', "
                         "'completada')")
        for c in (a1, a2):
            s = (await c.expect("stats", timeout=3))["data"]
            assert s["totalCitas"] == 3 and s["citasCompletadas"] == 2
        await b1.quiet("stats", 0.2)
        assert metric(server, "roomcast_live_pushes_total") == 3
        # Everyone leaves: the queries stop.
        await a1.send({"type": "unsubscribe", "data": {"channel": "estadisticas:negocio_123"}})
        await a1.expect("left")
        for c in (a2, b1):
            await c.ws.close()
        wait_until(lambda: metric(server, "roomcast_live_rooms") == 0, 5, what="rooms idle")
        q2 = metric(server, "roomcast_live_queries_total")
        await asyncio.sleep(1.3)
        assert metric(server, "roomcast_live_queries_total") == q2
        await a1.ws.close()

    run(go())
    assert metric(server, "roomcast_live_query_errors_total") == 0
    assert metric(server, "roomcast_messages_routed_total", source="live") == 3


def test_failing_live_query_is_logged_and_retried(pgserver, cluster, db):
    server = pgserver()
    sql(cluster, db, "SELECT realtime.live_room('roto:{x}', "
                     "'SELECT 1 / (length($1) - length($1)) AS n', '1 second', 'n')")
    wait_until(lambda: metric(server, "roomcast_live_definitions") == 1, 10, what="defined")

    async def go():
        c = SeedClient(await connect(server, make_token("u", "user", rooms=["roto:*"])))
        await c.send({"action": "subscribe", "filters": ["roto:1"]})
        await c.expect("joined")
        wait_until(lambda: metric(server, "roomcast_live_query_errors_total") >= 2, 5,
                   what="two failed ticks")
        await c.quiet("n", 0.1)
        # Fixed live: the next tick delivers.
        sql(cluster, db, "SELECT realtime.live_room('roto:{x}', "
                         "'SELECT length($1) AS n', '1 second', 'n')")
        assert (await c.expect("n", timeout=5))["data"] == {"n": 1}
        await c.ws.close()

    run(go())
    assert "live room query failed" in server.logs()


def test_two_replicas_deliver_each_change_once_to_each_member(pgserver, cluster, db):
    """Two replicas linked by Redis: each hears the application's notification and delivers it
    to its own members only; one replica runs the live room's query and pushes through Redis.
    A member on either replica gets each message exactly once; when the runner's members leave
    the other replica takes the query over."""
    redis = RedisServer().start()
    try:
        n1 = pgserver(REDIS_ADDR=redis.addr, NODE_ID="n1")
        n2 = pgserver(REDIS_ADDR=redis.addr, NODE_ID="n2")
        for n in (n1, n2):
            wait_until(lambda: n.json("/health")[1]["redis"] == "up", 10, what="redis up")
        sql(cluster, db, "SELECT realtime.listen('parking_update', 'parking')")
        sql(cluster, db, "SELECT realtime.live_room('estadisticas:{negocio_id}', %s, "
                         "'1 second')", (STATS_QUERY,))
        for n in (n1, n2):
            wait_until(lambda: metric(n, "roomcast_listen_channels") == 1 and
                       metric(n, "roomcast_live_definitions") == 1, 10, what="registered")
        token = make_token("op", "user", rooms=["parking", "estadisticas:*"])

        async def go():
            cs = [SeedClient(await connect(n, token)) for n in (n1, n2)]
            for c in cs:
                await c.send({"action": "subscribe",
                              "filters": ["parking", "estadisticas:negocio_123"]})
                await c.expect("stats")
            sql(cluster, db, "UPDATE espacios SET estado = 'ocupado' WHERE id = 15")
            sql(cluster, db, "INSERT INTO citas (negocio_id) VALUES ('negocio_123')")
            for c in cs:
                await c.expect("parking_update")
                assert (await c.expect("stats", timeout=3))["data"]["totalCitas"] == 3
            for c in cs:
                await c.quiet("parking_update", 1.2)
                assert len(c.by_type["parking_update"]) == 1
                assert len(c.by_type["stats"]) == 2
            # One runner: the other replica ran at most its newcomer's one-off query.
            qs = [metric(n, "roomcast_live_queries_total") for n in (n1, n2)]
            assert min(qs) <= 1 and max(qs) >= 2, qs
            runner = 0 if qs[0] > qs[1] else 1
            await cs[runner].ws.close()
            other = cs[1 - runner]
            sql(cluster, db, "INSERT INTO citas (negocio_id) VALUES ('negocio_123')")
            assert (await other.expect("stats", timeout=5))["data"]["totalCitas"] == 4
            await other.quiet("stats", 1.2)
            assert len(other.by_type["stats"]) == 3
            await other.ws.close()

        run(go())
    finally:
        redis.stop()
