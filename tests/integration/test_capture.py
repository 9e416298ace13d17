"""CAPTURE=logical (issue 16): roomcast reads the marketplace tables' changes from a logical
replication slot instead of triggers. Real PostgreSQL (wal_level=logical), marketplace writes as
the REST service does them, real WebSocket clients: the events equal the trigger path's, no
trigger runs, a SIGKILL loses and duplicates nothing, a wrong wal_level is refused at start, a
dropped slot is reported and two replicas elect one holder."""

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

import market
from pgcluster import PgCluster, sql
from rc import BIN, collect, connect, join, make_token, run, wait_until

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
LOGICAL = {"wal_level": "logical", "max_replication_slots": "20", "max_wal_senders": "20",
           "track_functions": "all"}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def migrate(dsn, **env):
    out = subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=dsn, **env),
                         capture_output=True, text=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def cluster():
    c = PgCluster(settings=LOGICAL)
    c.start()
    c.create_database("tmpl")
    for f in ("sql/marketplace.sql", "sql/demo.sql"):
        c.psql_file(os.path.join(ROOT, f), dbname="tmpl")
    out = migrate(c.dsn_for("tmpl"))
    assert out.returncode == 0, out.stderr
    yield c
    c.cleanup()


def logical_server(pgserver, db, **env):
    s = pgserver(CAPTURE="logical", CAPTURE_SLOT=db, CAPTURE_STATUS_INTERVAL_S="1", **env)
    wait_until(lambda: s.json("/health")[1].get("capture", {}).get("stream") == "streaming"
               or s.json("/health")[1].get("capture", {}).get("role") == "standby",
               15, what="capture streaming")
    return s


def outbox(cluster, db):
    return sql(cluster, db, "SELECT id, event, rooms, data, meta FROM realtime.events ORDER BY id")


def norm(v):
    """Timestamps (now() at write time) differ between two runs; everything else must not."""
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, str) and TS.match(v):
        return "<ts>"
    return v


def marketplace_writes(dsn, settle=lambda step: None):
    """The same writes for both paths: checkout with items of two sellers, payment, delivery,
    product changes, an order deleted with its items. settle(step) runs after each write: rooms
    read from other tables (a delivery's orders) are read when the event is stored, so the
    logical run lets each write be stored before the next, as the triggers read them at commit."""
    steps = []
    p2 = market.create_product(dsn, 2, price=7, stock=30, name="Bench P2")
    settle(len(steps)); steps.append(1)
    order = market.create_order(dsn, 1, [(1, 2), (p2, 1)])
    settle(len(steps)); steps.append(1)
    market.set_order_status(dsn, order, "paid")
    settle(len(steps)); steps.append(1)
    market.pay_order(dsn, order)
    settle(len(steps)); steps.append(1)
    d = market.create_delivery(dsn)
    settle(len(steps)); steps.append(1)
    market.assign_delivery(dsn, order, d)
    settle(len(steps)); steps.append(1)
    market.set_delivery_status(dsn, d, "in_transit")
    settle(len(steps)); steps.append(1)
    market.update_product(dsn, 1, price=99)
    market.update_product(dsn, 1, price=99)  # changes nothing: no event
    settle(len(steps)); steps.append(1)
    doomed = market.create_order(dsn, 1, [(p2, 1)])
    settle(len(steps)); steps.append(1)
    c = psycopg2.connect(dsn)
    with c, c.cursor() as cur:
        cur.execute('DELETE FROM "order" WHERE id_order = %s', (doomed,))
    c.close()
    return order, d


def wait_count(cluster, db, n, timeout=15):
    wait_until(lambda: sql(cluster, db, "SELECT count(*) FROM realtime.events")[0][0] >= n,
               timeout, what=f"{n} events stored")


def test_logical_events_equal_the_trigger_paths_and_reach_the_rooms(cluster, db, pgserver):
    # The trigger path on a copy of the same database (same ids), as the reference.
    ref = db + "_ref"
    cluster.create_database(ref, template="tmpl")
    counts = []
    marketplace_writes(cluster.dsn_for(ref), lambda step: counts.append(
        sql(cluster, ref, "SELECT count(*) FROM realtime.events")[0][0]))
    expected = outbox(cluster, ref)
    assert len(expected) >= 10

    # A host name, not an address: the replication connection looks it up off the loop first
    # (libpq would resolve it synchronously on the loop), and must still come up.
    s = logical_server(pgserver, db,
                       DATABASE_URL=cluster.dsn_for(db).replace("127.0.0.1", "localhost"))
    dsn = cluster.dsn_for(db)
    order_room = "order-%d" % expected[[e[1] for e in expected].index("order_created")][3]["id_order"]

    async def go():
        seller = await connect(s, make_token("s1", "seller", seller_id="1"))
        await join(seller, "product-1")
        admin = await connect(s, make_token("adm", "admin"))
        await join(admin, order_room)  # the same id in both databases
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, marketplace_writes, dsn,
                                   lambda step: wait_count(cluster, db, counts[step]))
        n_seller = sum(1 for e in expected if "seller-1" in e[2] or "product-1" in e[2])
        n_order = sum(1 for e in expected if order_room in e[2])
        got_seller = await collect(seller, n_seller, 15)
        got_order = await collect(admin, n_order, 15)
        return got_seller, got_order

    got_seller, got_order = run(go())
    got = outbox(cluster, db)
    assert [(e[1], e[2]) for e in got] == [(e[1], e[2]) for e in expected]
    assert [norm(e[3]) for e in got] == [norm(e[3]) for e in expected]
    assert [norm(e[4]) for e in got] == [norm(e[4]) for e in expected]
    # Delivered live, in id order, with the stored rows' content.
    ids = [m["id"] for m in got_seller]
    assert ids == sorted(ids)
    by_id = {e[0]: e for e in got}
    for m in got_seller + got_order:
        row = by_id[m["id"]]
        assert m["event"] == row[1] and m["data"] == row[3] and m["meta"] == row[4]
    assert {m["event"] for m in got_order} >= {"order_created", "order_updated"}
    order_deleted = [e for e in got if e[1] == "order_deleted"]
    assert order_deleted and "seller-2" in order_deleted[0][2]  # sellers of the deleted items


def test_no_trigger_runs_in_the_writers_transactions(cluster, db, pgserver):
    logical_server(pgserver, db)
    states = sql(cluster, db, """SELECT tgname, tgenabled FROM pg_trigger
                                 WHERE tgname LIKE 'realtime%' AND NOT tgisinternal""")
    assert states and all(st == "D" for _, st in states), states
    marketplace_writes(cluster.dsn_for(db))
    wait_count(cluster, db, 10)
    calls = sql(cluster, db, """SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
                                WHERE schemaname = 'realtime' AND funcname IN
                                ('order_trigger', 'product_trigger', 'delivery_trigger',
                                 'order_stash_trigger', 'delivery_stash_trigger',
                                 'watch_trigger')""")
    # ...while capture's own storing did publish through them (so the counter works).
    wait_until(lambda: sql(cluster, db, """SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions
                                           WHERE schemaname = 'realtime'
                                             AND funcname = 'capture_apply'""")[0][0] > 0,
               15, what="capture_apply counted")
    assert calls[0][0] == 0


def test_sigkill_mid_stream_loses_and_duplicates_nothing(cluster, db, pgserver, server_factory):
    s = logical_server(pgserver, db)
    dsn = cluster.dsn_for(db)
    start_stock = sql(cluster, db, "SELECT stock FROM product WHERE id_product = 1")[0][0]
    n = 300
    done = threading.Event()

    def writer():
        with psycopg2.connect(dsn) as c:
            c.autocommit = True
            with c.cursor() as cur:
                for _ in range(n):
                    cur.execute("UPDATE product SET stock = stock - 1 WHERE id_product = 1")
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    wait_until(lambda: sql(cluster, db, "SELECT count(*) FROM realtime.events")[0][0] >= 30,
               15, what="some events stored")
    s.stop(sig=signal.SIGKILL)
    t.join(60)
    assert done.is_set()
    s2 = server_factory({"DATABASE_URL": dsn, "CAPTURE": "logical", "CAPTURE_SLOT": db,
                         "CAPTURE_STATUS_INTERVAL_S": "1"})
    wait_count(cluster, db, n, 30)
    time.sleep(1.5)  # a duplicate would come now, if at all
    rows = sql(cluster, db, """SELECT id, (data->>'stock')::int FROM realtime.events
                               WHERE event = 'product_updated' ORDER BY id""")
    stocks = [r[1] for r in rows]
    # Every commit once, ids in commit order.
    assert stocks == list(range(start_stock - 1, start_stock - n - 1, -1))
    h = s2.json("/health")[1]["capture"]
    assert h["gaps"] == 0 and h["role"] == "holder"


def test_wal_level_replica_is_refused_at_start_with_a_clear_message(server_factory):
    c = PgCluster()  # wal_level=replica, the default
    try:
        c.start()
        c.create_database("w")
        for f in ("sql/marketplace.sql", "sql/demo.sql"):
            c.psql_file(os.path.join(ROOT, f), dbname="w")
        assert migrate(c.dsn_for("w")).returncode == 0
        s = server_factory({"DATABASE_URL": c.dsn_for("w"), "CAPTURE": "logical"}, wait=False)
        s.proc.wait(20)
        assert s.proc.returncode != 0
        assert "needs wal_level=logical (the server has replica)" in s.logs()
        # roomcast migrate says the same when asked to prepare capture.
        out = migrate(c.dsn_for("w"), CAPTURE="logical")
        assert out.returncode != 0 and "wal_level=logical" in out.stdout
    finally:
        c.cleanup()


def test_a_dropped_slot_is_reported_and_clients_get_recovered_false(cluster, db, pgserver):
    s = logical_server(pgserver, db)
    dsn = cluster.dsn_for(db)
    market.update_product(dsn, 1, stock=500)
    wait_count(cluster, db, 1)
    last = sql(cluster, db, "SELECT max(id) FROM realtime.events")[0][0]

    def drop():
        try:
            sql(cluster, db, """SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                                WHERE slot_name = %s AND active_pid IS NOT NULL""", (db,))
            sql(cluster, db, "SELECT pg_drop_replication_slot(%s)", (db,))
            return True
        except psycopg2.Error:
            return False

    wait_until(drop, 15, interval=0.01, what="slot dropped")
    wait_until(lambda: s.json("/health")[1]["capture"]["gaps"] == 1, 15, what="gap reported")
    h = s.json("/health")[1]["capture"]
    assert "missing" in h["last_gap"], h
    assert "roomcast_capture_gaps_total 1" in s.metrics()
    wait_until(lambda: s.json("/health")[1]["capture"]["stream"] == "streaming", 15,
               what="streaming again")
    market.update_product(dsn, 1, stock=400)
    wait_count(cluster, db, 2)

    assert sql(cluster, db, "SELECT pruned_through FROM realtime.outbox_state")[0][0] > last

    async def go():
        ws = await connect(s, make_token("s1", "seller", seller_id="1"))
        j = await join(ws, "product-1", since=last)
        await ws.close()
        return j

    # The replica reads the horizon at its next outbox sweep (every 2 s).
    wait_until(lambda: run(go())["payload"]["recovered"] is False, 10, interval=0.5,
               what="recovered:false for a since before the gap")


def test_two_replicas_elect_one_holder_and_fail_over(cluster, db, pgserver):
    a = logical_server(pgserver, db)
    b = logical_server(pgserver, db)
    roles = sorted([a.json("/health")[1]["capture"]["role"],
                    b.json("/health")[1]["capture"]["role"]])
    assert roles == ["holder", "standby"]
    holder, standby = (a, b) if a.json("/health")[1]["capture"]["role"] == "holder" else (b, a)
    dsn = cluster.dsn_for(db)

    async def go():
        ws = await connect(standby, make_token("s1", "seller", seller_id="1"))
        await join(ws, "product-1")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: market.update_product(dsn, 1, stock=77))
        first = await collect(ws, 1, 10)
        holder.stop(sig=signal.SIGKILL)
        await loop.run_in_executor(None, lambda: wait_until(
            lambda: standby.json("/health")[1]["capture"]["stream"] == "streaming", 20,
            what="standby took over"))
        await loop.run_in_executor(None, lambda: market.update_product(dsn, 1, stock=66))
        second = await collect(ws, 1, 10)
        return first + second

    got = run(go())
    assert [m["data"]["stock"] for m in got] == [77, 66]
    assert sql(cluster, db, "SELECT count(*) FROM realtime.events")[0][0] == 2


def coupon_writes(dsn):
    c = psycopg2.connect(dsn)
    with c, c.cursor() as cur:
        cur.execute("INSERT INTO coupons (code, order_id) VALUES ('C1', 5), ('C2', NULL)")
    with c, c.cursor() as cur:
        cur.execute("UPDATE coupons SET order_id = 6, is_active = false WHERE code = 'C1'")
    with c, c.cursor() as cur:
        cur.execute("DELETE FROM coupons WHERE code = 'C2'")
    c.close()


def test_a_watched_table_is_captured_like_its_trigger_publishes_it(cluster, db, pgserver):
    watch = "SELECT realtime.watch('public.coupons', 'coupon', ARRAY['order-{order_id}'])"
    ref = db + "_ref"
    cluster.create_database(ref, template="tmpl")
    sql(cluster, ref, watch)
    coupon_writes(cluster.dsn_for(ref))
    expected = outbox(cluster, ref)
    assert [e[1] for e in expected] == ["coupon_created", "coupon_created", "coupon_updated",
                                        "coupon_deleted"]
    logical_server(pgserver, db)
    sql(cluster, db, watch)  # added to the publication, its trigger disabled, while capturing
    assert sql(cluster, db, """SELECT count(*) FROM pg_publication_tables
                               WHERE pubname = 'realtime_capture' AND tablename = 'coupons'""")[0][0] == 1
    coupon_writes(cluster.dsn_for(db))
    wait_count(cluster, db, len(expected))
    got = outbox(cluster, db)
    assert [(e[1], e[2], norm(e[3]), norm(e[4])) for e in got] == \
        [(e[1], e[2], norm(e[3]), norm(e[4])) for e in expected]


def test_a_slot_lost_past_max_slot_wal_keep_size_is_reported(cluster, db, pgserver):
    s = logical_server(pgserver, db)
    dsn = cluster.dsn_for(db)
    market.update_product(dsn, 1, stock=500)
    wait_count(cluster, db, 1)
    sql(cluster, db, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    sql(cluster, db, "SELECT pg_reload_conf()")
    try:
        s.proc.send_signal(signal.SIGSTOP)  # the slot stops advancing
        try:
            for i in range(3):
                sql(cluster, db, "CREATE TABLE junk%d AS SELECT g, repeat('x', 100) AS pad "
                                 "FROM generate_series(1, 100000) g" % i)
                sql(cluster, db, "SELECT pg_switch_wal()")
            sql(cluster, db, "CHECKPOINT")
            wait_until(lambda: sql(cluster, db, "SELECT wal_status FROM pg_replication_slots "
                                                "WHERE slot_name = %s", (db,))[0][0] == "lost",
                       15, what="slot lost")
        finally:
            s.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: s.json("/health")[1]["capture"]["gaps"] == 1, 20, what="gap reported")
        assert "lost" in s.json("/health")[1]["capture"]["last_gap"]
        wait_until(lambda: s.json("/health")[1]["capture"]["stream"] == "streaming", 15,
                   what="streaming again")
        market.update_product(dsn, 1, stock=400)
        wait_count(cluster, db, 2)
    finally:
        sql(cluster, db, "ALTER SYSTEM RESET max_slot_wal_keep_size")
        sql(cluster, db, "SELECT pg_reload_conf()")


def test_a_triggers_replica_on_a_database_in_logical_mode_reports_it(cluster, db, pgserver):
    """Logical mode keeps the triggers attached but disabled, so a CAPTURE=triggers replica on
    such a database would otherwise report its triggers ok while nothing publishes."""
    sql(cluster, db, "SELECT realtime.capture_sync('logical', 'realtime_capture')")
    s = pgserver(TRIGGER_CHECK_S="1")
    wait_until(lambda: s.json("/health")[1].get("triggers", {}).get("state") == "disabled", 10,
               what="triggers reported disabled")
    health = s.json("/health")[1]
    assert health["status"] == "degraded"
    assert "logical capture mode" in health["triggers"]["reason"]
    out = migrate(cluster.dsn_for(db), CAPTURE="triggers")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: s.json("/health")[1]["triggers"]["state"] == "ok", 10,
               what="triggers ok after switching back")
