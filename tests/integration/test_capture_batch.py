"""CAPTURE=logical stores a batch of transactions set-based (migration 011): a burst of product
and order changes with a delivery change between them, written faster than one store per
commit, gives the trigger path's events in the trigger path's order (the set-based run, the
transaction it cannot take stored in its place, then the next run)."""

import psycopg2

import market
from pgcluster import sql
from rc import wait_until
from test_capture import cluster, logical_server, norm, outbox, wait_count  # noqa: F401


def setup_rows(dsn):
    order = market.create_order(dsn, 1, [(1, 2), (2, 1)])
    d = market.create_delivery(dsn)
    market.assign_delivery(dsn, order, d)
    return order, d


def burst(dsn, order, d):
    """Each write its own commit, as the REST service does; nothing here changes which rows
    another table's rooms are read from (the store reads them when it runs, the triggers at
    commit)."""
    for i in range(6):
        market.update_product(dsn, 1, stock=50 + i)
        market.set_order_status(dsn, order, "processing" if i % 2 else "shipped")
    market.update_product(dsn, 1, stock=55)  # changes nothing: no event
    market.update_product(dsn, 2, id_seller=1)  # the old seller's room too
    c = psycopg2.connect(dsn)
    with c, c.cursor() as cur:  # both tables in one transaction: product's event first
        cur.execute('UPDATE "order" SET id_client = 2 WHERE id_order = %s', (order,))
        cur.execute("UPDATE product SET price = 11 WHERE id_product = 1")
    c.close()
    market.set_delivery_status(dsn, d, "in_transit")  # not set-based: stored in its place
    for i in range(6):
        market.update_product(dsn, 2, stock=70 + i)
    market.create_order(dsn, 2, [(2, 1)])


def test_a_burst_stored_in_batches_equals_the_trigger_path(cluster, db, pgserver):  # noqa: F811
    ref = db + "_ref"
    cluster.create_database(ref, template="tmpl")
    rdsn = cluster.dsn_for(ref)
    order, d = setup_rows(rdsn)
    n0 = sql(cluster, ref, "SELECT count(*) FROM realtime.events")[0][0]
    burst(rdsn, order, d)
    expected = outbox(cluster, ref)[n0:]
    assert len(expected) >= 20

    s = logical_server(pgserver, db)
    dsn = cluster.dsn_for(db)
    setup_rows(dsn)
    wait_count(cluster, db, n0)
    burst(dsn, order, d)
    wait_count(cluster, db, n0 + len(expected))
    got = outbox(cluster, db)[n0:]
    assert [(e[1], e[2]) for e in got] == [(e[1], e[2]) for e in expected]
    assert [norm(e[3]) for e in got] == [norm(e[3]) for e in expected]
    assert [norm(e[4]) for e in got] == [norm(e[4]) for e in expected]
    # The burst was stored in fewer stores than transactions (else no batch was set-based).
    _, metrics = s.get("/metrics")
    vals = dict(line.rsplit(" ", 1) for line in metrics.splitlines()
                if line.startswith("roomcast_capture_") and not line.startswith("#"))
    assert int(vals["roomcast_capture_batches_total"]) < int(
        vals["roomcast_capture_transactions_total"])
    # The set-based statement ran (a backend reports its function counts within a second).
    wait_until(lambda: sql(cluster, db, "SELECT coalesce(sum(calls), 0) FROM "
                                        "pg_stat_user_functions WHERE funcname = "
                                        "'capture_store_set'")[0][0] > 0,
               5, what="capture_store_set called")
