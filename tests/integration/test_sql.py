"""docs/database.md against a real PostgreSQL: the migrations applied the DBA
way (`psql -f`, in order, and again), the outbox and realtime.publish, the marketplace and
realtime.watch triggers as seen by a LISTEN on realtime_events, realtime.can_join, down/up and
prune. With ROOMCAST_BIN set, also `roomcast migrate`.

Run: /usr/bin/python3 -m pytest tests/integration/test_sql.py
"""

import collections
import datetime
import glob
import hashlib
import itertools
import json
import os
import re
import select
import subprocess
import sys
import threading
import time

import psycopg2
import psycopg2.errors
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import market  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIGRATIONS = os.path.join(ROOT, "migrations")
UP_FILES = sorted(f for f in glob.glob(os.path.join(MIGRATIONS, "[0-9]*.sql"))
                  if not f.endswith(".down.sql"))
DOWN_FILES = [f[:-len(".sql")] + ".down.sql" for f in reversed(UP_FILES)]
MARKETPLACE = os.path.join(ROOT, "sql", "marketplace.sql")
DEMO = os.path.join(ROOT, "sql", "demo.sql")

CHANNEL = "realtime_events"
MARKER = "test_marker"
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REALTIME_TRIGGERS = """
    SELECT tgrelid::regclass::text, tgname FROM pg_trigger
     WHERE NOT tgisinternal AND tgname LIKE 'realtime%' ORDER BY 1, 2"""
MARKET_TRIGGERS = [('"order"', "realtime_order"), ('"order"', "realtime_order_stash"),
                   ("delivery", "realtime_delivery"), ("delivery", "realtime_delivery_stash"),
                   ("product", "realtime_product")]

_names = itertools.count(1)


def apply_files(cluster, dbname, files):
    for path in files:
        proc = cluster.psql_file(path, dbname=dbname, check=False)
        assert proc.returncode == 0, "psql -f %s: %s" % (os.path.basename(path), proc.stderr)
        assert "ERROR" not in proc.stderr, proc.stderr


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    c = PgCluster()
    c.start()
    # Templates, so each test gets a fresh database in milliseconds.
    c.create_database("tmpl_market")
    apply_files(c, "tmpl_market", [MARKETPLACE, DEMO] + UP_FILES)
    c.create_database("tmpl_market_only")
    apply_files(c, "tmpl_market_only", [MARKETPLACE, DEMO])
    yield c
    c.cleanup()


@pytest.fixture(autouse=True)
def pg_log_on_failure(request, cluster):
    """Prints what the server logged during a test when that test failed."""
    failed_before = request.session.testsfailed
    start = len(cluster.logs())
    yield
    if request.session.testsfailed > failed_before:
        print("---- PostgreSQL log during the test ----")
        for line in (cluster.logs()[start:] or "(nothing)").splitlines():
            print(line if len(line) <= 2000 else line[:2000] + "... (%d bytes)" % len(line))


class Db:
    """One database of the cluster with helpers for running SQL and collecting events."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.dsn = cluster.dsn_for(name)

    def connect(self, autocommit=True):
        return self.cluster.connect(self.name, autocommit=autocommit)

    def sql(self, sql, params=None):
        return self.cluster.psql(sql, params, dbname=self.name)

    def one(self, sql, params=None):
        rows = self.sql(sql, params)
        assert rows and len(rows) == 1, rows
        return rows[0][0]

    def listen(self):
        return Listener(self)

    def apply(self, files):
        apply_files(self.cluster, self.name, files)


class Listener:
    """LISTENs on realtime_events. drain() publishes a marker event and returns every
    notification that arrived before it: NOTIFYs are delivered in commit order, so that is
    everything committed before drain() was called, with no sleeping."""

    def __init__(self, db):
        self.db = db
        self.conn = db.connect()
        with self.conn.cursor() as cur:
            cur.execute("LISTEN " + CHANNEL)

    def drain(self, timeout=10):
        marker_id = self.db.one("SELECT realtime.publish(%s, ARRAY['marker'], '{}')", (MARKER,))
        got = []
        deadline = time.monotonic() + timeout
        while True:
            self.conn.poll()
            while self.conn.notifies:
                n = self.conn.notifies.pop(0)
                assert n.channel == CHANNEL
                assert len(n.payload.encode()) < 8000
                payload = json.loads(n.payload, object_pairs_hook=collections.OrderedDict)
                if payload.get("id") == marker_id:
                    return got
                payload["_raw"] = n.payload
                got.append(payload)
            left = deadline - time.monotonic()
            assert left > 0, "marker event %s not received; got %r" % (marker_id, got)
            select.select([self.conn], [], [], left)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _new_db(cluster, template):
    name = "t%d_%s" % (next(_names), template)
    cluster.create_database(name, template=template)
    return Db(cluster, name)


@pytest.fixture
def db(cluster):
    """A fresh database with the marketplace, demo rows and all migrations (applied by psql)."""
    d = _new_db(cluster, "tmpl_market")
    yield d
    cluster.drop_database(d.name)


@pytest.fixture
def bare_db(cluster):
    """A fresh, empty database: no marketplace tables, no migrations."""
    d = _new_db(cluster, "template1")
    yield d
    cluster.drop_database(d.name)


def strip(event):
    return {k: v for k, v in event.items() if k != "_raw"}


# -- migrations, the DBA way ----------------------------------------------------------------

def test_migrations_apply_with_psql_and_rerun(cluster):
    d = _new_db(cluster, "tmpl_market_only")
    try:
        d.apply(UP_FILES)
        assert d.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS
        d.apply(UP_FILES)  # re-runnable: no error, no duplicate trigger
        assert d.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS

        cols = d.sql("""SELECT attname, format_type(atttypid, atttypmod), attnotnull,
                               pg_get_expr(adbin, adrelid), attidentity
                          FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
                         WHERE attrelid = 'realtime.events'::regclass AND attnum > 0
                         ORDER BY attnum""")
        assert [c[:3] for c in cols] == [
            ("id", "bigint", True), ("xid", "xid8", True), ("snap_xmin", "xid8", True),
            ("created_at", "timestamp with time zone", True), ("event", "text", True),
            ("rooms", "text[]", True), ("data", "jsonb", True), ("meta", "jsonb", True)]
        defaults = {c[0]: c[3] for c in cols}
        assert cols[0][4] == "a"  # generated always as identity
        assert defaults["xid"] == "pg_current_xact_id()"
        assert defaults["snap_xmin"] == "pg_snapshot_xmin(pg_current_snapshot())"
        assert defaults["created_at"] == "clock_timestamp()"

        indexes = dict(d.sql("""SELECT indexname, indexdef FROM pg_indexes
                                 WHERE schemaname = 'realtime' AND tablename = 'events'"""))
        assert any("USING gin (rooms)" in v for v in indexes.values()), indexes
        assert any("USING btree (xid)" in v for v in indexes.values()), indexes
        assert any("USING btree (created_at)" in v for v in indexes.values()), indexes

        for sig in ["realtime.publish(text,text[],jsonb,jsonb)", "realtime.publish(text,text,jsonb,jsonb)",
                    "realtime.can_join(jsonb,text)", "realtime.prune(interval)",
                    "realtime.watch(regclass,text,text[])", "realtime.unwatch(regclass)",
                    "realtime.attach_marketplace()", "realtime.event_json(realtime.events)",
                    "realtime.attach_triggers()", "realtime.trigger_status()",
                    "realtime.identity(jsonb)", "realtime.watch(text,text,text[])",
                    "realtime.unwatch(text)"]:
            assert d.one("SELECT to_regprocedure(%s) IS NOT NULL", (sig,)), sig
        assert d.sql("""SELECT column_name FROM information_schema.columns
                         WHERE table_schema = 'realtime' AND table_name = 'schema_migrations'
                         ORDER BY ordinal_position""") == [("version",), ("checksum",), ("applied_at",)]
        assert d.sql("""SELECT provolatile, prosecdef FROM pg_proc
                         WHERE oid = 'realtime.can_join(jsonb,text)'::regprocedure""") == [("s", True)]

        # After the re-run one change still publishes exactly one event.
        with d.listen() as l:
            d.sql("UPDATE product SET stock = stock + 1 WHERE id_product = 2")
            got = l.drain()
        assert [e["event"] for e in got] == ["product_updated"]
    finally:
        cluster.drop_database(d.name)


def test_every_file_is_one_transaction():
    for path in UP_FILES + DOWN_FILES + [MARKETPLACE, DEMO]:
        with open(path) as f:
            statements = [line.strip() for line in f
                          if line.strip() and not line.strip().startswith("--")]
        assert statements[0] == "BEGIN;", path
        assert statements[-1] == "COMMIT;", path


# -- marketplace triggers -------------------------------------------------------------------

def test_order_with_two_sellers_publishes_one_event_at_commit(db):
    with db.listen() as l:
        conn = db.connect(autocommit=False)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_xact_id()::text")
            xid = cur.fetchone()[0]
        # The REST service's checkout: the order, then per item its row and a stock update.
        order_id = market.create_order(conn, 2, [(1, 1), (2, 1), (3, 1)], commit=False)
        conn.commit()
        conn.close()
        got = l.drain()

    assert [e["event"] for e in got] == ["product_updated"] * 3 + ["order_created"], got
    assert [e["meta"]["changed"] for e in got[:3]] == [["stock"]] * 3
    e = got[3]
    assert list(e.keys())[:7] == ["id", "xid", "ts", "event", "rooms", "data", "meta"]
    assert e["event"] == "order_created"
    assert e["rooms"] == ["order-%d" % order_id, "client-2", "seller-1", "seller-2"]
    assert e["xid"] == xid
    assert TS_RE.match(e["ts"]), e["ts"]
    assert e["data"]["id_order"] == order_id and e["data"]["id_client"] == 2
    assert e["data"]["total_amount"] == 142.4 and e["data"]["status"] == "pending"
    assert e["meta"] == {"source": "db", "table": "order", "op": "INSERT"}
    row = db.sql("SELECT xid::text, event, rooms, data, meta FROM realtime.events WHERE id = %s",
                 (e["id"],))
    assert row == [(xid, "order_created", e["rooms"], e["data"], e["meta"])]


def test_order_update_and_delete(db):
    with db.listen() as l:
        db.sql("""UPDATE "order" SET status = 'delivered' WHERE id_order = 1""")
        db.sql("""DELETE FROM "order" WHERE id_order = 4""")
        got = l.drain()
    assert [e["event"] for e in got] == ["order_updated", "order_deleted"]
    upd, dele = got
    assert upd["rooms"] == ["order-1", "client-1", "seller-1", "seller-2"]
    assert upd["meta"] == {"source": "db", "table": "order", "op": "UPDATE",
                           "changed": ["status"], "old": {"status": "shipped"}}
    assert upd["data"]["status"] == "delivered"
    # The items were cascaded away before commit; the seller room is still there.
    assert dele["rooms"] == ["order-4", "client-1", "seller-1"]
    assert dele["data"]["id_order"] == 4
    assert dele["meta"] == {"source": "db", "table": "order", "op": "DELETE"}


def test_product_change_carries_changed_columns_and_old_values(db):
    with db.listen() as l:
        db.sql("UPDATE product SET price = 20.00 WHERE id_product = 3")
        db.sql("UPDATE product SET stock = 7, price = 21.50 WHERE id_product = 3")
        got = l.drain()
    assert [e["event"] for e in got] == ["product_updated", "product_updated"]
    first, second = got
    assert first["rooms"] == ["product-3", "seller-2", "admins"]
    assert first["meta"]["changed"] == ["price"]
    assert first["meta"]["old"] == {"price": 18.9}
    assert first["data"]["price"] == 20.0
    assert first["meta"]["op"] == "UPDATE" and first["meta"]["table"] == "product"
    assert second["meta"]["changed"] == ["price", "stock"]  # table column order
    assert second["meta"]["old"] == {"price": 20.0, "stock": 100}


def test_product_insert_and_delete(db):
    with db.listen() as l:
        pid = market.create_product(db.dsn, 3, price=30, stock=5, name="Teapot")
        market.delete_product(db.dsn, pid)
        got = l.drain()
    assert [(e["event"], e["rooms"]) for e in got] == [
        ("product_created", ["product-%d" % pid, "seller-3", "admins"]),
        ("product_deleted", ["product-%d" % pid, "seller-3", "admins"])]
    assert got[1]["data"]["product_name"] == "Teapot"


def test_noop_update_and_rollback_publish_nothing(db):
    before = db.one("SELECT count(*) FROM realtime.events")
    with db.listen() as l:
        db.sql("UPDATE product SET price = price WHERE id_product = 1")
        db.sql("""UPDATE "order" SET status = status""")
        db.sql("UPDATE delivery SET status = status")
        conn = db.connect(autocommit=False)
        with conn.cursor() as cur:
            cur.execute("UPDATE product SET price = 1 WHERE id_product = 1")
            market.create_order(conn, 1, [(5, 1)], commit=False)
            cur.execute("SELECT realtime.publish('rolled_back', ARRAY['order-1'], '{}')")
        conn.rollback()
        conn.close()
        got = l.drain()
    assert got == []
    # Only the marker row was added.
    assert db.one("SELECT count(*) FROM realtime.events") == before + 1


def test_delivery_update_reaches_referencing_orders(db):
    with db.listen() as l:
        db.sql("UPDATE delivery SET status = 'delivered' WHERE id_delivery = 1")
        db.sql("UPDATE delivery SET delivery_person = 'UPS' WHERE id_delivery = 2")
        got = l.drain()
    assert [e["event"] for e in got] == ["delivery_updated", "delivery_updated"]
    assert got[0]["rooms"] == ["delivery-1", "order-1", "client-1", "order-2", "client-2"]
    assert got[0]["meta"]["changed"] == ["status"]
    assert got[0]["meta"]["old"] == {"status": "in_transit"}
    assert got[1]["rooms"] == ["delivery-2", "order-3", "client-3"]


def test_delivery_created_and_assigned_in_one_transaction(db):
    with db.listen() as l:
        conn = db.connect(autocommit=False)
        with conn.cursor() as cur:
            did = market.create_delivery(conn, commit=False)
            market.assign_delivery(conn, 4, did, commit=False)
        conn.commit()
        conn.close()
        got = l.drain()
    by_event = {e["event"]: e for e in got}
    assert sorted(by_event) == ["delivery_created", "order_updated"]
    assert by_event["delivery_created"]["rooms"] == ["delivery-%d" % did, "order-4", "client-1"]
    assert by_event["order_updated"]["meta"]["changed"] == ["id_delivery"]


def test_large_row_sends_large_payload_and_row_is_readable(db):
    big = "x" * 20000
    mid = "y" * 7000
    with db.listen() as l:
        db.sql("UPDATE product SET description = %s WHERE id_product = 1", (big,))
        db.sql("UPDATE product SET description = %s WHERE id_product = 2", (mid,))
        got = l.drain()
    assert len(got) == 2
    large, normal = got
    assert strip(large) == {"id": large["id"], "xid": large["xid"], "large": True}
    assert list(strip(large).keys()) == ["id", "xid", "large"]
    event, data, xid = db.sql("SELECT event, data, xid::text FROM realtime.events WHERE id = %s",
                              (large["id"],))[0]
    assert event == "product_updated" and data["description"] == big and xid == large["xid"]
    full = json.loads(db.one("SELECT realtime.event_json(e) FROM realtime.events e WHERE id = %s",
                             (large["id"],)))
    assert full["id"] == large["id"] and full["data"]["description"] == big
    assert full["rooms"] == ["product-1", "seller-1", "admins"]
    # Below the limit the whole event travels in the NOTIFY.
    assert normal["data"]["description"] == mid and "large" not in normal
    assert len(normal["_raw"].encode()) <= 7900


def test_publish_from_sql(db):
    with db.listen() as l:
        conn = db.connect(autocommit=False)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_xact_id()::text")
            xid = cur.fetchone()[0]
            cur.execute("""SELECT realtime.publish('chat_message', ARRAY['chat-9', 'user-7'],
                                                   %s, '{"by": "test"}')""",
                        (json.dumps({"text": "h\u00e9llo \"q\"", "n": [1, 2]}),))
            first = cur.fetchone()[0]
            cur.execute("""SELECT realtime.publish('ping', 'room_a.b:c-1', '{"k": 1}')""")
            second = cur.fetchone()[0]
        conn.commit()
        conn.close()
        got = l.drain()
    assert [e["id"] for e in got] == [first, second]
    a, b = got
    assert list(strip(a).keys()) == ["id", "xid", "ts", "event", "rooms", "data", "meta"]
    assert a["xid"] == xid and b["xid"] == xid
    assert a["event"] == "chat_message" and a["rooms"] == ["chat-9", "user-7"]
    assert a["data"] == {"text": "h\u00e9llo \"q\"", "n": [1, 2]}
    assert a["meta"] == {"by": "test"}
    ts = datetime.datetime.strptime(a["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds()) < 60
    assert b["rooms"] == ["room_a.b:c-1"] and b["meta"] == {} and b["data"] == {"k": 1}
    assert '"id":%d,"xid":"%s","ts":"' % (first, xid) in a["_raw"]  # compact envelope
    # The server replays with realtime.event_json: byte-identical to the live payload.
    for e in got:
        assert db.one("SELECT realtime.event_json(e) FROM realtime.events e WHERE id = %s",
                      (e["id"],)) == e["_raw"]


@pytest.mark.parametrize("event,rooms", [
    ("", ["a"]), (None, ["a"]), ("e", []), ("e", None), ("e", ["ok", "not ok"]),
    ("e", ["x" * 129]), ("e", ["a/b"]), ("e", [""]), ("e", [None]),
])
def test_publish_rejects_bad_arguments(db, event, rooms):
    with db.listen() as l:
        with pytest.raises(psycopg2.errors.InvalidParameterValue):
            db.sql("SELECT realtime.publish(%s, %s::text[], '{}')", (event, rooms))
        assert l.drain() == []
    assert db.one("SELECT realtime.publish('e', %s::text[], '{}')", (["x" * 128],)) > 0


def _show_sync(cur):
    cur.execute("SHOW synchronous_commit")
    return cur.fetchone()[0]


def test_publishing_transaction_commits_synchronously(db):
    # 004: with synchronous_commit = off (as in this cluster, and a documented production
    # setting), a crash may lose commits whose NOTIFY was already delivered and hand their ids
    # out again. Every publishing transaction is therefore raised to `on`, for that
    # transaction only, through every door: both publish overloads, row and commit-time
    # (deferred) triggers, realtime.watch.
    db.sql("CREATE TABLE public.vouchers (id_voucher serial PRIMARY KEY, code text)")
    db.sql("SELECT realtime.watch('public.vouchers', 'coupon')")
    conn = db.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            conn.commit()
            for publish in ["SELECT realtime.publish('e', ARRAY['r-1'], '{}')",
                            "SELECT realtime.publish('e', 'r-1', '{}')",
                            "UPDATE product SET stock = stock + 1 WHERE id_product = 1",
                            "INSERT INTO vouchers (code) VALUES ('A')"]:
                cur.execute("SELECT 1")
                assert _show_sync(cur) == "off"
                cur.execute(publish)
                assert _show_sync(cur) == "on", publish
                conn.commit()
                assert _show_sync(cur) == "off", publish  # the session's setting is back

            # The commit record is flushed when COMMIT returns: the WAL flush position has
            # passed everything inserted before it. (Deterministic with the override; without
            # it this usually fails, the WAL writer flushing only every 200 ms.) The order
            # trigger is deferred: it publishes inside COMMIT itself.
            for publish in ["SELECT realtime.publish('e', ARRAY['r-1'], '{}')",
                            "UPDATE \"order\" SET total_amount = total_amount + 1 WHERE id_order = 1"]:
                cur.execute(publish)
                cur.execute("SELECT pg_current_wal_insert_lsn()::text")
                before_commit = cur.fetchone()[0]
                conn.commit()
                cur.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (before_commit,))
                assert cur.fetchone()[0] is True, publish
                conn.commit()

            # A rolled-back savepoint takes the event and the override with it.
            cur.execute("SAVEPOINT s")
            cur.execute("SELECT realtime.publish('e', ARRAY['r-1'], '{}')")
            assert _show_sync(cur) == "on"
            cur.execute("ROLLBACK TO SAVEPOINT s")
            assert _show_sync(cur) == "off"
            conn.rollback()

            # Stronger settings are kept as they are (never lowered to `on`).
            for level in ("local", "remote_write", "remote_apply", "on"):
                cur.execute("SET LOCAL synchronous_commit = %s" % level)
                cur.execute("SELECT realtime.publish('e', ARRAY['r-1'], '{}')")
                assert _show_sync(cur) == level
                conn.rollback()
    finally:
        conn.close()


def test_snap_xmin_bounds_transactions_open_at_insert(db):
    a = db.connect(autocommit=False)
    try:
        with a.cursor() as cur:
            cur.execute("SELECT pg_current_xact_id()::text::bigint")
            open_xid = cur.fetchone()[0]
            eid = db.one("SELECT realtime.publish('e', ARRAY['r-1'], '{}')")
            xid, snap_xmin = db.sql("SELECT xid::text::bigint, snap_xmin::text::bigint "
                                    "FROM realtime.events WHERE id = %s", (eid,))[0]
            # The open transaction committing later must not fall below the replay floor.
            assert snap_xmin <= open_xid < xid
    finally:
        a.rollback()
        a.close()
    eid = db.one("SELECT realtime.publish('e', ARRAY['r-1'], '{}')")
    xid, snap_xmin = db.sql("SELECT xid::text::bigint, snap_xmin::text::bigint "
                            "FROM realtime.events WHERE id = %s", (eid,))[0]
    assert open_xid < snap_xmin <= xid


def test_privileges_app_role_publishes_through_triggers_only(db):
    # An application role with rights on the marketplace tables and none on schema realtime:
    # its writes still publish (the trigger functions are SECURITY DEFINER), but it cannot
    # publish directly. A role granted USAGE + EXECUTE can publish, ask can_join and prune.
    for role in ("rc_app", "rc_server"):
        db.sql("DO $$ BEGIN IF to_regrole('%s') IS NULL THEN CREATE ROLE %s LOGIN; END IF; END $$"
               % (role, role))
    db.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO rc_app")
    db.sql("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO rc_app")
    db.sql("GRANT USAGE ON SCHEMA realtime TO rc_server")
    db.sql("GRANT SELECT ON realtime.events, realtime.outbox_state TO rc_server")
    db.sql("""GRANT EXECUTE ON FUNCTION realtime.publish(text, text[], jsonb, jsonb),
                  realtime.can_join(jsonb, text), realtime.prune(interval) TO rc_server""")

    def as_role(role, sql):
        conn = psycopg2.connect(db.dsn.replace("postgres@", role + "@"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    with db.listen() as l:
        as_role("rc_app", "UPDATE product SET stock = 3 WHERE id_product = 5")
        as_role("rc_app", "UPDATE delivery SET status = 'lost' WHERE id_delivery = 2")
        as_role("rc_server", "SELECT realtime.publish('note', ARRAY['user-1'], '{}')")
        got = l.drain()
    assert [e["event"] for e in got] == ["product_updated", "delivery_updated", "note"]
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        as_role("rc_app", "SELECT realtime.publish('x', ARRAY['admins'], '{}')")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        as_role("rc_app", "SELECT realtime.can_join('{}', 'order-1')")
    assert as_role("rc_server", "SELECT realtime.can_join('{\"sub\":\"%s\"}', 'order-1')" % U(201)) == [(True,)]
    assert as_role("rc_server", "SELECT realtime.prune('1 day')") == [(0,)]
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        as_role("rc_server", "DELETE FROM realtime.events")


# -- realtime.watch -------------------------------------------------------------------------

def test_watch_and_unwatch_a_new_table(db):
    db.sql("CREATE TABLE public.vouchers (id_voucher serial PRIMARY KEY, id_client int, code text)")
    db.sql("SELECT realtime.watch('public.vouchers', 'coupon', ARRAY['client-{id_client}'])")
    db.sql("SELECT realtime.watch('public.vouchers', 'coupon', ARRAY['client-{id_client}'])")
    assert db.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.vouchers'::regclass") == 1
    with db.listen() as l:
        db.sql("INSERT INTO vouchers (id_client, code) VALUES (3, 'A')")
        db.sql("INSERT INTO vouchers (id_client, code) VALUES (NULL, 'B')")
        db.sql("UPDATE vouchers SET code = 'A2' WHERE id_voucher = 1")
        db.sql("UPDATE vouchers SET code = code")
        db.sql("DELETE FROM vouchers WHERE id_voucher = 2")
        got = l.drain()
    assert [(e["event"], e["rooms"]) for e in got] == [
        ("coupon_created", ["coupon-1", "client-3"]),
        ("coupon_created", ["coupon-2"]),
        ("coupon_updated", ["coupon-1", "client-3"]),
        ("coupon_deleted", ["coupon-2"])]
    assert got[0]["data"] == {"id_voucher": 1, "id_client": 3, "code": "A"}
    assert got[2]["meta"] == {"source": "db", "table": "vouchers", "op": "UPDATE",
                              "changed": ["code"], "old": {"code": "A"}}
    assert got[3]["data"]["code"] == "B"

    db.sql("SELECT realtime.unwatch('public.vouchers')")
    with db.listen() as l:
        db.sql("INSERT INTO vouchers (id_client, code) VALUES (1, 'C')")
        assert l.drain() == []


# -- 005: the lean trigger path publishes exactly what 002 did ------------------------------

# Row changes of every kind through every trigger, run against a database migrated up to 004
# (the 002 trigger bodies) and one with every migration (005's): the events must be the same.
SAME_EVENTS_SCRIPT = [
    "UPDATE product SET stock = 7, price = 21.50 WHERE id_product = 3",
    "UPDATE product SET id_seller = 3 WHERE id_product = 2",
    "UPDATE product SET price = price WHERE id_product = 1",
    "UPDATE product SET description = NULL WHERE id_product = 4",
    "INSERT INTO product (id_seller, product_name, price, stock) VALUES (2, 'Teapot', 30, 5)",
    "DELETE FROM product WHERE product_name = 'Teapot'",
    """UPDATE "order" SET status = 'delivered', total_amount = 99.99 WHERE id_order = 1""",
    """UPDATE "order" SET id_client = 3 WHERE id_order = 2""",
    """UPDATE "order" SET status = status""",
    # The REST service's checkout: the order, then per item its row and a stock update.
    """BEGIN; INSERT INTO "order" (id_client, status, total_amount, delivery_type,
                                   id_payment_method) VALUES (2, 'pending', 4, 'standard', 1);
       INSERT INTO product_order (id_order, id_product, price_unit, subtotal)
       VALUES (currval('order_id_order_seq'), 6, 1, 1);
       UPDATE product SET stock = stock - 1 WHERE id_product = 6;
       INSERT INTO product_order (id_order, id_product, price_unit, subtotal)
       VALUES (currval('order_id_order_seq'), 1, 1, 1);
       UPDATE product SET stock = stock - 1 WHERE id_product = 1;
       INSERT INTO product_order (id_order, id_product, price_unit, subtotal)
       VALUES (currval('order_id_order_seq'), 5, 1, 1);
       UPDATE product SET stock = stock - 1 WHERE id_product = 5;
       INSERT INTO product_order (id_order, id_product, price_unit, subtotal)
       VALUES (currval('order_id_order_seq'), 2, 1, 1);
       UPDATE product SET stock = stock - 1 WHERE id_product = 2; COMMIT""",
    """DELETE FROM "order" WHERE id_order = 3""",
    "UPDATE delivery SET status = 'delivered' WHERE id_delivery = 1",
    """BEGIN; INSERT INTO delivery (delivery_address, city) VALUES ('1 New St', 'London');
       UPDATE "order" SET id_delivery = currval('delivery_id_delivery_seq') WHERE id_order = 4;
       COMMIT""",
    "DELETE FROM delivery WHERE id_delivery = 2",
    "UPDATE delivery SET status = status",
    # realtime.watch: composite key, templates, a NULL template column, an invalid room
    "CREATE TABLE public.seat (hall int, num int, label text, id_client int, meta json, "
    "PRIMARY KEY (hall, num))",
    "SELECT realtime.watch('public.seat', 'seat', ARRAY['client-{id_client}', 'label-{label}'])",
    """INSERT INTO seat VALUES (2, 14, 'aisle', 3, '{"a": [1, 2]}')""",
    "INSERT INTO seat VALUES (2, 15, 'not a room', NULL, NULL)",
    """UPDATE seat SET id_client = 1, meta = '{"a": [1, 2, 3]}' WHERE num = 14""",
    "UPDATE seat SET label = label",
    "DELETE FROM seat WHERE num = 14",
    # The DELETE path (006 moved its stash from a session setting to realtime.stash): one order
    # deleted, inserted again with another seller's item and deleted again in one transaction;
    # a DELETE undone by a savepoint; a DELETE consumed early by SET CONSTRAINTS, then the id
    # reused; a delivery whose orders the DELETE itself detaches (ON DELETE SET NULL).
    """BEGIN; INSERT INTO "order" (id_order, id_client, status, total_amount, delivery_type,
                                   id_payment_method) VALUES (900, 2, 'pending', 1, 'standard', 1);
       INSERT INTO product_order (id_order, id_product, price_unit, subtotal) VALUES (900, 1, 1, 1);
       UPDATE product SET stock = stock - 1 WHERE id_product = 1;
       DELETE FROM "order" WHERE id_order = 900;
       INSERT INTO "order" (id_order, id_client, status, total_amount, delivery_type,
                            id_payment_method) VALUES (900, 3, 'pending', 2, 'standard', 1);
       INSERT INTO product_order (id_order, id_product, price_unit, subtotal) VALUES (900, 5, 1, 1);
       UPDATE product SET stock = stock - 1 WHERE id_product = 5;
       DELETE FROM "order" WHERE id_order = 900; COMMIT""",
    """BEGIN; SAVEPOINT s; DELETE FROM "order" WHERE id_order = 4; ROLLBACK TO SAVEPOINT s;
       UPDATE "order" SET total_amount = 7 WHERE id_order = 4; COMMIT""",
    """BEGIN; DELETE FROM "order" WHERE id_order = 4; SET CONSTRAINTS ALL IMMEDIATE;
       INSERT INTO "order" (id_order, id_client, total_amount, delivery_type, id_payment_method)
       VALUES (4, 2, 1, 'standard', 1);
       INSERT INTO product_order (id_order, id_product, price_unit, subtotal) VALUES (4, 3, 1, 1);
       UPDATE product SET stock = stock - 1 WHERE id_product = 3;
       COMMIT""",
    """ALTER TABLE "order" DROP CONSTRAINT order_id_delivery_fkey,
       ADD CONSTRAINT order_id_delivery_fkey FOREIGN KEY (id_delivery)
           REFERENCES delivery (id_delivery) ON DELETE SET NULL""",
    "DELETE FROM delivery WHERE id_delivery = 1",
]


def _stable(event):
    """The parts of an event both paths must produce identically: times and ids aside."""
    drop = {"created_at", "updated_at", "order_date"}
    data = {k: v for k, v in event["data"].items() if k not in drop}
    meta = dict(event["meta"])
    if "old" in meta:
        meta["old"] = {k: v for k, v in meta["old"].items() if k not in drop}
    return (event["event"], event["rooms"], data, meta)


def test_lean_triggers_publish_what_002_published(cluster):
    # 004: the 002 trigger bodies; 005: the lean ones with the stash in a session setting;
    # all: the stash in realtime.stash (006) and what came after.
    runs = {}
    for label, files in (("004", [f for f in UP_FILES if os.path.basename(f) < "005"]),
                         ("005", [f for f in UP_FILES if os.path.basename(f) < "006"]),
                         ("all", UP_FILES)):
        d = _new_db(cluster, "tmpl_market_only")
        try:
            d.apply(files)
            with d.listen() as l:
                for sql in SAME_EVENTS_SCRIPT:
                    d.sql(sql)
                runs[label] = [_stable(e) for e in l.drain()]
            if label == "all":
                assert d.one("SELECT count(*) FROM realtime.stash") == 0  # nothing left behind
        finally:
            cluster.drop_database(d.name)
    names = [os.path.basename(f)[:-4] for f in UP_FILES]
    assert "005_lean_triggers" in names and "006_sealed_stash" in names
    assert len(runs["all"]) == 34, runs["all"]
    assert runs["all"] == runs["004"]
    assert runs["all"] == runs["005"]
    # The stash carried the rooms the cascades had removed by commit time.
    deleted = [(e[0], e[1]) for e in runs["all"] if e[0] in ("order_deleted", "delivery_deleted")]
    assert deleted == [
        ("order_deleted", ["order-3", "client-3", "seller-2", "seller-3"]),
        ("delivery_deleted", ["delivery-2"]),
        # Both DELETEs of order 900 carry the rooms stashed by the later one, as 002 did.
        ("order_deleted", ["order-900", "client-2", "seller-3"]),
        ("order_deleted", ["order-900", "client-3", "seller-3"]),
        ("order_deleted", ["order-4", "client-1", "seller-3"]),
        ("delivery_deleted", ["delivery-1", "order-1", "client-1", "order-2", "client-3"]),
    ], deleted


def test_changed_columns_follow_alter_table_in_one_session(db):
    # The column list is cached per session (realtime.columns_<oid>); a column added, renamed
    # or dropped later must still be reported right by the same session.
    with db.listen() as l:
        conn = db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("UPDATE product SET stock = 1 WHERE id_product = 1")
                cur.execute("SELECT current_setting('realtime.columns_' || 'product'::regclass::oid)")
                assert cur.fetchone()[0].startswith("{id_product,id_seller,id_inventory")
                db.sql("ALTER TABLE product ADD COLUMN color text")
                cur.execute("UPDATE product SET color = 'red', stock = 2 WHERE id_product = 1")
                db.sql("ALTER TABLE product RENAME COLUMN color TO colour")
                cur.execute("UPDATE product SET colour = 'blue' WHERE id_product = 1")
                db.sql("ALTER TABLE product DROP COLUMN colour")
                cur.execute("UPDATE product SET stock = 3 WHERE id_product = 1")
                # A cache first filled in a transaction that rolled back reads '' afterwards.
                cur.execute("BEGIN")
                cur.execute("""UPDATE "order" SET total_amount = 5 WHERE id_order = 4""")
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cur.execute("ROLLBACK")
                cur.execute("""UPDATE "order" SET total_amount = 6 WHERE id_order = 4""")
        finally:
            conn.close()
        got = l.drain()
    assert [(e["event"], e["meta"]["changed"], e["meta"]["old"]) for e in got] == [
        ("product_updated", ["stock"], {"stock": 12}),
        ("product_updated", ["stock", "color"], {"stock": 1, "color": None}),
        ("product_updated", ["colour"], {"colour": "red"}),
        ("product_updated", ["stock"], {"stock": 2}),
        ("order_updated", ["total_amount"], {"total_amount": 34.5}),
    ]
    assert got[3]["data"].keys() == got[0]["data"].keys()


# -- 006: a DELETE's rooms are not the deleting session's to choose --------------------------

BEFORE_006 = [f for f in UP_FILES if os.path.basename(f) < "006"]


def _app_role_dsn(db):
    """The application's role, as in test_privileges_app_role_publishes_through_triggers_only:
    reads and writes the marketplace tables, has nothing in schema realtime."""
    db.sql("DO $$ BEGIN IF to_regrole('rc_app') IS NULL THEN CREATE ROLE rc_app LOGIN; END IF; END $$")
    db.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO rc_app")
    db.sql("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO rc_app")
    return db.dsn.replace("postgres@", "rc_app@")


@pytest.mark.parametrize("with_006", [False, True], ids=["before_006", "with_006"])
def test_app_role_cannot_choose_the_rooms_of_a_delete(cluster, with_006):
    # The commit-time trigger adds the rooms the BEFORE DELETE trigger stashed (the order's
    # items are cascaded away by then). Up to 005 the stash was the setting
    # realtime.stash_<kind>_<id>, which the deleting session could overwrite before COMMIT: the
    # real order_deleted, with the order's data, went to rooms of its choice, also rooms no
    # order event may reach and names publish would refuse. 006 keeps it out of the session's
    # reach, and the forged setting is ignored.
    d = _new_db(cluster, "tmpl_market_only")
    try:
        d.apply(UP_FILES if with_006 else BEFORE_006)
        did = market.create_delivery(d.dsn)
        app = psycopg2.connect(_app_role_dsn(d))
        try:
            with d.listen() as l, app.cursor() as cur:
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute("SELECT realtime.publish('x', ARRAY['user-7'], '{}')")
                app.rollback()
                cur.execute('DELETE FROM "order" WHERE id_order = 4')
                cur.execute("SELECT set_config('realtime.stash_order_4', %s, true)",
                            ("seller-2,user-7,not a room",))
                app.commit()
                cur.execute("DELETE FROM delivery WHERE id_delivery = %s", (did,))
                cur.execute("SELECT set_config(%s, 'client-2', false)",
                            ("realtime.stash_delivery_%d" % did,))
                app.commit()
                got = l.drain()
        finally:
            app.close()
        stash_left = d.one("SELECT count(*) FROM realtime.stash") if with_006 else 0
    finally:
        cluster.drop_database(d.name)
    assert [e["data"].get("id_order", e["data"].get("id_delivery")) for e in got] == [4, did]
    rooms = [(e["event"], e["rooms"]) for e in got]
    if not with_006:  # the attack worked
        assert rooms == [("order_deleted",
                          ["order-4", "client-1", "seller-2", "user-7", "not a room"]),
                         ("delivery_deleted", ["delivery-%d" % did, "client-2"])]
    else:
        assert rooms == [("order_deleted", ["order-4", "client-1", "seller-1"]),
                         ("delivery_deleted", ["delivery-%d" % did])]
    assert stash_left == 0


@pytest.mark.parametrize("with_006", [False, True], ids=["before_006", "with_006"])
def test_forged_column_cache_can_only_reorder_meta_changed(cluster, with_006):
    # The one setting the triggers still read is 005's column cache realtime.columns_<oid>.
    # Forged by the application's role it adds no room, hides or invents no change and names
    # no other table's column: a list that misses a column of the row is read again from the
    # catalog, and names the row does not have are never listed. It decides the order of
    # meta.changed in that session's own events; before 006 it could also repeat a column.
    d = _new_db(cluster, "tmpl_market_only")
    try:
        d.apply(UP_FILES if with_006 else BEFORE_006)
        app = psycopg2.connect(_app_role_dsn(d))
        app.autocommit = True
        try:
            with d.listen() as l, app.cursor() as cur:
                cur.execute("SELECT 'realtime.columns_' || 'product'::regclass::oid")
                setting = cur.fetchone()[0]
                cur.execute("SELECT set_config(%s, %s, false)", (setting,
                            "{created_at,status,image_url,stock,stock,price,description,"
                            "product_name,id_sub_category,id_category,id_inventory,id_seller,"
                            "id_product,total,id_order,admins}"))
                cur.execute("UPDATE product SET price = 1, stock = 2 WHERE id_product = 3")
                cur.execute("SELECT set_config(%s, '{price,admins}', false)", (setting,))
                cur.execute("UPDATE product SET price = 3, stock = 4 WHERE id_product = 3")
                got = l.drain()
        finally:
            app.close()
    finally:
        cluster.drop_database(d.name)
    assert [e["rooms"] for e in got] == [["product-3", "seller-2", "admins"]] * 2
    assert [e["meta"]["old"] for e in got] == [{"price": 18.9, "stock": 100},
                                               {"price": 1, "stock": 2}]
    assert got[0]["meta"]["changed"] == (["stock", "price"] if with_006
                                         else ["stock", "stock", "price"])
    assert got[1]["meta"]["changed"] == ["price", "stock"]  # table order, from the catalog


def test_serializable_deleters_do_not_fail_each_other(db):
    # Every transaction that deletes an order writes realtime.stash. Read back with an index
    # scan (DELETE ... WHERE xid = ...), it gave SERIALIZABLE transactions predicate locks on
    # its shared index page, and concurrent deleters failed each other with serialization
    # errors (measured with this workload: a few of its 200 transactions in every run). 006
    # reads it with an upsert and by ctid, which take none: no failures, as before 006.
    # The REST schema has no index on product_order.id_order: without one the cascade and the
    # order trigger's seller lookup scan the whole table, and SERIALIZABLE deleters conflict
    # over that scan (whatever the stash does). A DBA adds it (docs/database.md); so does this
    # test, and its deleters plan as on a table large enough for the index (here it has 400 rows).
    db.sql("CREATE INDEX ON product_order (id_order)")
    # Set-up in bulk (the rows are what the REST service writes, not how it writes them).
    db.sql("""INSERT INTO "order" (id_client, total_amount, delivery_type, id_payment_method)
              SELECT 1, 1, 'standard', 1 FROM generate_series(1, 400)""")
    db.sql("""INSERT INTO product_order (id_order, id_product, price_unit, subtotal)
              SELECT id_order, 1 + id_order % 6, 1, 1 FROM "order" WHERE id_order > 4""")
    ids = [r[0] for r in db.sql('SELECT id_order FROM "order" WHERE id_order > 4 ORDER BY 1')]
    failures = []
    errors = []

    def deleter(mine):
        try:
            conn = db.connect(autocommit=False)
            conn.set_session(isolation_level="SERIALIZABLE")
            try:
                with conn.cursor() as cur:
                    cur.execute("SET enable_seqscan = off")
                    conn.commit()
                    for i in range(0, len(mine), 2):
                        try:
                            for order_id in mine[i:i + 2]:
                                cur.execute('DELETE FROM "order" WHERE id_order = %s', (order_id,))
                            conn.commit()
                        except psycopg2.errors.SerializationFailure as e:
                            conn.rollback()
                            failures.append(str(e).splitlines()[:2])
            finally:
                conn.close()
        except Exception as e:  # noqa: BLE001 - reported by the test thread
            errors.append(repr(e))

    threads = [threading.Thread(target=deleter, args=(ids[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and failures == []
    assert db.one('SELECT count(*) FROM "order" WHERE id_order > 4') == 0
    assert db.one("SELECT count(*) FROM realtime.stash") == 0
    seller = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}
    rooms = dict(db.sql("""SELECT (data ->> 'id_order')::int, rooms FROM realtime.events
                            WHERE event = 'order_deleted'"""))
    assert rooms == {i: ["order-%d" % i, "client-1", "seller-%d" % seller[1 + i % 6]] for i in ids}


def test_stash_rows_last_one_transaction_and_prune_removes_leftovers(db):
    def stash():
        return db.sql("SELECT kind, id, rooms FROM realtime.stash ORDER BY kind, id")

    with db.listen() as l:
        conn = db.connect(autocommit=False)
        try:
            with conn.cursor() as cur:
                # INSERT and UPDATE never touch the table, not even at commit time.
                cur.execute('UPDATE "order" SET total_amount = total_amount + 1')
                market.create_order(conn, 2, [], commit=False)
                cur.execute("UPDATE delivery SET status = 'x'")
                cur.execute("UPDATE product SET stock = stock + 1")
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cur.execute("""SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_xact_user_tables
                                WHERE relid = 'realtime.stash'::regclass""")
                assert cur.fetchone() == (0, 0, 0)
                conn.commit()
                # A DELETE: a row from its BEFORE trigger, gone once the commit-time one ran.
                cur.execute('DELETE FROM "order" WHERE id_order = 4')
                cur.execute("SELECT kind, id, rooms FROM realtime.stash")
                assert cur.fetchall() == [("order", 4, ["seller-1"])]
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cur.execute("SELECT count(*) FROM realtime.stash")
                assert cur.fetchone()[0] == 0
                conn.commit()
                # No setting is left in the session (005 left one per deleted id, for good).
                cur.execute("SELECT current_setting('realtime.stash_order_4', true)")
                assert cur.fetchone()[0] is None
                conn.commit()

                # A DELETE whose commit-time trigger never runs (disabled here) leaves its row...
                cur.execute('ALTER TABLE "order" DISABLE TRIGGER realtime_order')
                cur.execute('DELETE FROM "order" WHERE id_order = 3')
                cur.execute('ALTER TABLE "order" ENABLE TRIGGER realtime_order')
                conn.commit()
                assert stash() == [("order", 3, ["seller-1", "seller-2", "seller-3"])]
                # ...until prune, which keeps the rows of the transaction that calls it.
                cur.execute('DELETE FROM "order" WHERE id_order = 2')
                cur.execute("SELECT realtime.prune('1 day')")
                cur.execute("SELECT kind, id FROM realtime.stash")
                assert cur.fetchall() == [("order", 2)]
                conn.commit()
        finally:
            conn.close()
        got = l.drain()
    assert stash() == []
    deleted = [(e["event"], e["rooms"]) for e in got if e["event"].endswith("_deleted")]
    assert deleted == [("order_deleted", ["order-4", "client-1", "seller-1"]),
                       ("order_deleted", ["order-2", "client-2", "seller-3"])]


def test_006_down_restores_005(cluster):
    functions = """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.provolatile,
               (SELECT array_agg(a::text ORDER BY a::text)
                  FROM unnest(coalesce(p.proacl, acldefault('f', p.proowner))) a)
          FROM pg_proc p WHERE p.pronamespace = 'realtime'::regnamespace ORDER BY 1"""
    before = _new_db(cluster, "tmpl_market_only")
    after = _new_db(cluster, "tmpl_market_only")
    try:
        before.apply(BEFORE_006)
        after.apply([f for f in UP_FILES if os.path.basename(f) < "007"])
        assert after.one("SELECT to_regclass('realtime.stash') IS NOT NULL") is True
        after.apply([down_file("006_sealed_stash")] * 2)  # re-runnable
        assert after.one("SELECT to_regclass('realtime.stash') IS NULL") is True
        assert after.sql(functions) == before.sql(functions)
        after.apply([f for f in UP_FILES if os.path.basename(f).startswith("006")])
        with after.listen() as l:
            after.sql('DELETE FROM "order" WHERE id_order = 4')
            assert [e["rooms"] for e in l.drain()] == [["order-4", "client-1", "seller-1"]]
    finally:
        cluster.drop_database(before.name)
        cluster.drop_database(after.name)


ROOM_NAMES = ["a", "A-z_0.9:x", "x" * 128, "x" * 129, "", "a b", "a\n", "\na", "é", "a/b",
              "a,b", "room\x7f", "order-1", "-", "_.:", "ʟ", "a\tb", "{a}"]


def test_room_rule_is_the_documented_pattern(db):
    # 005 checks rooms without the regex's bounded repetition; the rule stays
    # ^[A-Za-z0-9_.:-]{1,128}$ exactly.
    conn = db.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            for name in ROOM_NAMES:
                want = re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", name) is not None
                cur.execute("SAVEPOINT s")
                try:
                    cur.execute("SELECT realtime.publish('e', ARRAY[%s], '{}')", (name,))
                    ok = True
                except psycopg2.errors.InvalidParameterValue:
                    ok = False
                cur.execute("ROLLBACK TO SAVEPOINT s")
                assert ok == want, repr(name)
    finally:
        conn.rollback()
        conn.close()


def test_watch_default_rooms_composite_key_and_bad_templates(db):
    db.sql("CREATE TABLE public.seat (hall int, num int, label text, PRIMARY KEY (hall, num))")
    db.sql("SELECT realtime.watch('public.seat', 'seat')")
    with db.listen() as l:
        db.sql("INSERT INTO seat VALUES (2, 14, 'aisle')")
        got = l.drain()
    assert [(e["event"], e["rooms"]) for e in got] == [("seat_created", ["seat-2:14"])]
    with pytest.raises(psycopg2.errors.UndefinedColumn):
        db.sql("SELECT realtime.watch('public.seat', 'seat', ARRAY['client-{nope}'])")
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        db.sql("SELECT realtime.watch('public.seat', 'bad name')")
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        db.sql("SELECT realtime.watch('realtime.events', 'loop')")
    db.sql("CREATE TABLE public.nokey (a int)")
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        db.sql("SELECT realtime.watch('public.nokey', 'nokey')")


# -- realtime.can_join ----------------------------------------------------------------------

def U(n):
    """The auth service's user id (uuid) of sql/demo.sql's seller/client/admin n (101..301)."""
    return "00000000-0000-4000-a000-%012d" % n


CAN_JOIN_CASES = [
    # order 1: client 1 (user U(201)), items of sellers 1 (U(101)) and 2 (U(102))
    ({"sub": U(201), "role": "client"}, "order-1", True),
    ({"sub": 201}, "order-1", False),  # the auth service's sub is a uuid
    ({"user_id": U(201)}, "order-1", True),
    ({"sub": "999", "client_id": 1}, "order-1", True),
    ({"sub": "999", "id_client": "1"}, "order-1", True),
    ({"sub": U(101), "role": "seller"}, "order-1", True),
    ({"sub": U(102), "role": "seller"}, "order-1", True),
    ({"sub": "999", "role": "seller", "seller_id": 2}, "order-1", True),
    ({"sub": "999", "role": "seller", "id_seller": "1"}, "order-1", True),
    ({"sub": "999", "role": "seller", "reference_id": 2}, "order-1", True),
    ({"sub": "999", "role": "client", "reference_id": 2}, "order-1", False),
    ({"sub": U(103), "role": "seller"}, "order-1", False),
    ({"sub": "999", "role": "seller", "seller_id": 3}, "order-1", False),
    ({"sub": U(202), "role": "client"}, "order-1", False),
    ({"sub": U(202), "client_id": 2}, "order-1", False),
    ({}, "order-1", False),
    ({"sub": U(201)}, "order-999", False),
    ({"role": "admin", "sub": "1"}, "order-1", True),
    ({"role": "ADMIN"}, "order-999", True),
    # delivery 1: orders 1 (client 1) and 2 (client 2, seller 3)
    ({"sub": U(201)}, "delivery-1", True),
    ({"sub": U(202)}, "delivery-1", True),
    ({"sub": U(103), "role": "seller"}, "delivery-1", True),
    ({"sub": U(203)}, "delivery-1", False),
    ({"sub": U(203)}, "delivery-2", True),
    ({"sub": U(201)}, "client-1", True),
    ({"sub": U(202)}, "client-1", False),
    ({"sub": "999", "client_id": 1}, "client-1", True),
    ({"sub": U(102), "role": "seller"}, "seller-2", True),
    ({"sub": U(101), "role": "seller"}, "seller-2", False),
    ({"sub": "9", "role": "seller", "seller_id": "2"}, "seller-2", True),
    ({"sub": "7"}, "user-7", True),
    ({"sub": "8"}, "user-7", False),
    ({"sub": "8"}, "product-3", True),
    ({"sub": "8", "role": "seller"}, "admins", False),
    ({"role": "admin"}, "admins", True),
    ({"sub": "8", "rooms": ["chat-*"]}, "chat-9", True),
    ({"sub": "8", "rooms": ["chat-*"]}, "chatx9", False),
    ({"sub": "8", "rooms": ["team_*"]}, "teamx1", False),
    ({"sub": "8", "rooms": ["team_*"]}, "team_1", True),
    ({"sub": U(201)}, "order-abc", False),
    ({"sub": U(201)}, "", False),
    ({"sub": U(201)}, "chat-9", False),
    # the n8n workflows' rooms (007): sellers for sellers, clients for clients, admin for admins
    ({"sub": U(101), "role": "seller"}, "sellers", True),
    ({"sub": U(201), "role": "client"}, "sellers", False),
    ({"sub": U(201), "role": "client"}, "clients", True),
    ({"sub": U(101), "role": "seller"}, "clients", False),
    ({"sub": U(101), "role": "seller"}, "admin", False),
    ({"role": "admin"}, "admin", True),
]


def test_can_join(db):
    results = [(claims, room, db.one("SELECT realtime.can_join(%s::jsonb, %s)", (json.dumps(claims), room)))
               for claims, room, _ in CAN_JOIN_CASES]
    wrong = [(c, r, got) for (c, r, got), (_, _, want) in zip(results, CAN_JOIN_CASES) if got != want]
    assert wrong == []
    assert db.one("SELECT realtime.can_join(NULL, 'order-1')") is False


def test_without_marketplace_tables(bare_db):
    d = bare_db
    d.apply(UP_FILES)
    assert d.sql(REALTIME_TRIGGERS) == []
    assert d.one("SELECT realtime.can_join('{\"sub\":\"201\"}', 'order-1')") is False
    assert d.one("SELECT realtime.can_join('{\"sub\":\"201\"}', 'delivery-1')") is False
    assert d.one("SELECT realtime.can_join('{\"sub\":\"201\"}', 'client-1')") is False
    assert d.one("SELECT realtime.can_join('{\"sub\":\"201\", \"client_id\": 1}', 'client-1')") is True
    assert d.one("SELECT realtime.can_join('{\"role\":\"admin\"}', 'order-1')") is True
    assert d.one("SELECT realtime.can_join('{\"sub\":\"7\"}', 'user-7')") is True
    with d.listen() as l:
        d.sql("SELECT realtime.publish('hello', ARRAY['user-7'], '{}')")
        assert [e["event"] for e in l.drain()] == ["hello"]

    # The REST service creates its tables later: the triggers attach themselves (007's event
    # trigger); attach_marketplace() still re-attaches them by hand.
    d.apply([MARKETPLACE, DEMO])
    assert d.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS
    assert d.one("SELECT realtime.attach_marketplace()") == ["order", "product", "delivery"]
    assert d.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS
    assert d.one("SELECT realtime.can_join(%s, 'order-1')", (json.dumps({"sub": U(201)}),)) is True
    with d.listen() as l:
        d.sql("UPDATE product SET price = 1 WHERE id_product = 1")
        assert [e["event"] for e in l.drain()] == ["product_updated"]


# -- down and up again ----------------------------------------------------------------------

def test_down_then_up_with_marketplace(db):
    db.sql("CREATE TABLE public.vouchers (id_voucher serial PRIMARY KEY, id_client int)")
    db.sql("SELECT realtime.watch('public.vouchers', 'coupon')")
    orders = db.one('SELECT count(*) FROM "order"')

    db.apply(DOWN_FILES)
    assert db.one("SELECT to_regnamespace('realtime') IS NULL") is True
    assert db.sql(REALTIME_TRIGGERS) == []
    assert db.one('SELECT count(*) FROM "order"') == orders  # marketplace untouched
    # Writes still work: no trigger points at a dropped function.
    db.sql("UPDATE product SET price = price + 1")
    db.sql("""UPDATE "order" SET status = 'x' WHERE id_order = 1""")
    db.sql("INSERT INTO vouchers (id_client) VALUES (1)")
    db.apply(DOWN_FILES)  # re-runnable

    db.apply(UP_FILES)
    assert db.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS
    with db.listen() as l:
        db.sql("UPDATE product SET price = 2 WHERE id_product = 1")
        got = l.drain()
    assert [(e["event"], e["rooms"]) for e in got] == [("product_updated", ["product-1", "seller-1", "admins"])]


def down_file(version):
    return os.path.join(MIGRATIONS, version + ".down.sql")


def test_down_one_step_at_a_time(db):
    # 004 down: publish no longer raises synchronous_commit.
    db.apply([f for f in DOWN_FILES if os.path.basename(f) >= "004"])
    conn = db.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute("SELECT realtime.publish('e', ARRAY['r-1'], '{}')")
            assert _show_sync(cur) == "off"
    finally:
        conn.close()
    db.apply([down_file("003_policy")])
    assert db.one("SELECT to_regprocedure('realtime.can_join(jsonb,text)') IS NULL") is True
    assert db.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS
    db.apply([down_file("002_triggers")])
    assert db.sql(REALTIME_TRIGGERS) == []
    assert db.one("SELECT to_regprocedure('realtime.publish(text,text[],jsonb,jsonb)') IS NOT NULL")
    db.apply(UP_FILES[1:])
    assert db.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS
    assert db.one("SELECT realtime.can_join(%s, 'order-1')", (json.dumps({"sub": U(201)}),)) is True


def test_down_then_up_without_marketplace(bare_db):
    bare_db.apply(UP_FILES)
    bare_db.apply(DOWN_FILES)
    assert bare_db.one("SELECT to_regnamespace('realtime') IS NULL") is True
    bare_db.apply(UP_FILES)
    assert bare_db.one("SELECT realtime.publish('e', ARRAY['r'], '{}')") == 1
    assert bare_db.sql(REALTIME_TRIGGERS) == []


# -- retention ------------------------------------------------------------------------------

def test_prune(db):
    ids = [db.one("SELECT realtime.publish('e', ARRAY['r-1'], '{}')") for _ in range(4)]
    db.sql("UPDATE realtime.events SET created_at = now() - interval '2 days' WHERE id = ANY(%s)",
           (ids[:2],))
    db.sql("UPDATE realtime.events SET created_at = now() - interval '30 minutes' WHERE id = %s",
           (ids[2],))
    assert db.one("SELECT count(*) FROM realtime.events") == 4
    assert db.one("SELECT pruned_through FROM realtime.outbox_state") == 0
    assert db.one("SELECT realtime.prune('1 day')") == 2
    assert db.sql("SELECT id FROM realtime.events ORDER BY id") == [(i,) for i in ids[2:]]
    assert db.one("SELECT pruned_through FROM realtime.outbox_state") == ids[1]
    assert db.one("SELECT realtime.prune('1 day')") == 0
    assert db.one("SELECT realtime.prune('10 minutes')") == 1
    assert db.sql("SELECT id FROM realtime.events ORDER BY id") == [(ids[3],)]
    assert db.one("SELECT pruned_through FROM realtime.outbox_state") == ids[2]
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        db.sql("SELECT realtime.prune('-1 day')")


# -- roomcast migrate (the C path) ----------------------------------------------------------

ROOMCAST_BIN = os.environ.get("ROOMCAST_BIN")


def run_migrate(dsn, *args):
    env = dict(os.environ, DATABASE_URL=dsn)
    return subprocess.run([ROOMCAST_BIN, "migrate"] + list(args), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)


@pytest.mark.skipif(not ROOMCAST_BIN, reason="set ROOMCAST_BIN to test `roomcast migrate`")
def test_roomcast_migrate(cluster):
    d = _new_db(cluster, "tmpl_market_only")
    names = [os.path.basename(f)[:-len(".sql")] for f in UP_FILES]
    try:
        p = run_migrate(d.dsn)
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines() == ["applied %s" % n for n in names]
        recorded = dict(d.sql("SELECT version, checksum FROM realtime.schema_migrations"))
        for path, name in zip(UP_FILES, names):
            with open(path, "rb") as f:
                assert recorded[name] == hashlib.sha256(f.read()).hexdigest()
        assert d.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS

        p = run_migrate(d.dsn)
        assert p.returncode == 0 and p.stdout.strip() == "up to date", (p.stdout, p.stderr)

        p = run_migrate(d.dsn, "status")
        assert p.returncode == 0
        assert [line.split()[:2] for line in p.stdout.splitlines()] == [["applied", n] for n in names]

        d.sql("UPDATE realtime.schema_migrations SET checksum = 'x' WHERE version = %s", (names[1],))
        p = run_migrate(d.dsn)
        assert p.returncode != 0
        assert names[1] in p.stderr
        d.sql("UPDATE realtime.schema_migrations SET checksum = %s WHERE version = %s",
              (recorded[names[1]], names[1]))

        p = run_migrate(d.dsn, "down", "1")
        assert p.returncode == 0, p.stderr
        assert d.sql("SELECT version FROM realtime.schema_migrations ORDER BY 1") == [(n,) for n in names[:-1]]
        p = run_migrate(d.dsn, "down", str(len(names) - 3))  # down to 001-002
        assert p.returncode == 0, p.stderr
        assert d.one("SELECT to_regprocedure('realtime.can_join(jsonb,text)') IS NULL") is True
        assert d.sql("SELECT version FROM realtime.schema_migrations ORDER BY 1") == [(n,) for n in names[:2]]
        p = run_migrate(d.dsn, "down", "2")
        assert p.returncode == 0, p.stderr
        assert d.one("SELECT to_regnamespace('realtime') IS NULL") is True
        p = run_migrate(d.dsn)
        assert p.returncode == 0 and p.stdout.splitlines() == ["applied %s" % n for n in names]
    finally:
        cluster.drop_database(d.name)


@pytest.mark.skipif(not ROOMCAST_BIN, reason="set ROOMCAST_BIN to test `roomcast migrate`")
def test_roomcast_migrate_after_psql_and_failures(cluster, bare_db):
    # Applied by a DBA with psql first (nothing recorded): migrate re-runs the files harmlessly.
    d = _new_db(cluster, "tmpl_market")
    try:
        p = run_migrate(d.dsn)
        assert p.returncode == 0, p.stderr
        assert len(p.stdout.splitlines()) == len(UP_FILES)
        assert d.sql(REALTIME_TRIGGERS) == MARKET_TRIGGERS
    finally:
        cluster.drop_database(d.name)

    # A file that fails leaves nothing half-applied and nothing recorded.
    bare_db.sql("CREATE SCHEMA realtime; CREATE VIEW realtime.events AS SELECT 1 AS id")
    p = run_migrate(bare_db.dsn)
    assert p.returncode != 0
    assert "001_realtime" in p.stderr
    assert bare_db.sql("SELECT count(*) FROM realtime.schema_migrations") == [(0,)]
    assert bare_db.one("SELECT to_regprocedure('realtime.publish(text,text[],jsonb,jsonb)') IS NULL")

    # Unreachable database: non-zero exit, no hang.
    p = run_migrate("postgresql://postgres@127.0.0.1:1/none?connect_timeout=3")
    assert p.returncode != 0
