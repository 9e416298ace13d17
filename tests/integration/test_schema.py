"""Fresh installs beside the REST service (migration 007): its tables (sql/marketplace.sql, the
schema its TypeORM `synchronize` creates) appear before or after roomcast's migrations, get
dropped and created again, and the triggers attach themselves either way (event trigger as
superuser, realtime.attach_triggers() otherwise); realtime.trigger_status(), realtime.identity(),
the n8n rooms in realtime.can_join, and triggers that never abort a REST transaction.

Run: /usr/bin/python3 -m pytest tests/integration/test_schema.py
"""

import asyncio
import glob
import itertools
import os
import subprocess
import time

import psycopg2
import pytest

import market
from pgcluster import PgCluster
from rc import BIN, connect, join, make_token, recv_json, run, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UP_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "migrations", "[0-9]*.sql"))
                  if not f.endswith(".down.sql"))
MARKETPLACE = os.path.join(ROOT, "sql", "marketplace.sql")
DEMO = os.path.join(ROOT, "sql", "demo.sql")
ALL_OK = [('public."order"', "ok"), ("public.product", "ok"), ("public.delivery", "ok")]
ALL_MISSING = [('public."order"', "table_missing"), ("public.product", "table_missing"),
               ("public.delivery", "table_missing")]
SELLER_UUID = "00000000-0000-4000-a000-000000000101"
CLIENT_UUID = "00000000-0000-4000-a000-000000000203"

_names = itertools.count(1)


@pytest.fixture(scope="module")
def cluster():
    c = PgCluster()
    c.start()
    c.create_database("tmpl_migrated")
    for f in UP_FILES:
        c.psql_file(f, dbname="tmpl_migrated")
    yield c
    c.cleanup()


class Db:
    def __init__(self, cluster, name):
        self.cluster, self.name, self.dsn = cluster, name, cluster.dsn_for(name)

    def sql(self, statement, params=None):
        return self.cluster.psql(statement, params, dbname=self.name)

    def one(self, statement, params=None):
        return self.sql(statement, params)[0][0]

    def run_file(self, path, user=None):
        """psql -f as the DBA would (as `user` when given); returns the CompletedProcess."""
        dsn = self.dsn if user is None else self.dsn.replace("postgres@", user + "@", 1)
        proc = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", path],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "ERROR" not in proc.stderr, (path, proc.stderr)
        return proc

    def status(self):
        return self.sql("SELECT table_name, state FROM realtime.trigger_status()")

    def events(self, after=0):
        return self.sql("SELECT event, rooms, data FROM realtime.events WHERE id > %s ORDER BY id",
                        (after,))

    def top(self):
        return self.one("SELECT coalesce(max(id), 0) FROM realtime.events")


@pytest.fixture
def db(cluster):
    """An empty database (no migrations, no marketplace tables)."""
    d = Db(cluster, "s%d" % next(_names))
    cluster.create_database(d.name)
    yield d
    cluster.drop_database(d.name)


@pytest.fixture
def migrated(cluster):
    """A database with every migration applied (as superuser) and no marketplace tables."""
    d = Db(cluster, "m%d" % next(_names))
    cluster.create_database(d.name, template="tmpl_migrated")
    yield d
    cluster.drop_database(d.name)


def order_across_two_sellers(d):
    """Two sellers, a client, an order REST-style with an item of each; returns the ids."""
    s1, s2 = market.create_seller(d.dsn), market.create_seller(d.dsn)
    client = market.create_client(d.dsn)
    p1 = market.create_product(d.dsn, s1, price=5)
    p2 = market.create_product(d.dsn, s2, price=7)
    top = d.top()
    order = market.create_order(d.dsn, client, [(p1, 2), (p2, 1)])
    return s1, s2, client, order, top


def assert_order_created(d, s1, s2, client, order, top):
    got = [(e, r) for e, r, _ in d.events(top)]
    assert ("order_created", ["order-%d" % order, "client-%d" % client,
                              "seller-%d" % min(s1, s2), "seller-%d" % max(s1, s2)]) in got, got
    # The items' stock updates published too, as product_updated to each seller and admins.
    assert sum(1 for e, _ in got if e == "product_updated") == 2, got


# -- (i)/(ii) either start order ------------------------------------------------------------

def test_migrations_first_then_rest_tables(migrated):
    assert migrated.status() == ALL_MISSING
    assert migrated.one("SELECT realtime.attach_triggers()") == 0
    migrated.run_file(MARKETPLACE)  # the REST service boots after roomcast
    assert migrated.status() == ALL_OK
    assert_order_created(migrated, *order_across_two_sellers(migrated))


def test_rest_tables_first_then_migrations(db):
    db.run_file(MARKETPLACE)
    db.run_file(DEMO)
    for f in UP_FILES:
        db.run_file(f)
    assert db.status() == ALL_OK
    for f in UP_FILES:  # re-runnable, nothing attached twice
        db.run_file(f)
    assert db.status() == ALL_OK
    assert db.one("""SELECT count(*) FROM pg_trigger
                      WHERE NOT tgisinternal AND tgname LIKE 'realtime%'""") == 5
    assert_order_created(db, *order_across_two_sellers(db))


def test_rest_service_role_creates_its_tables(migrated):
    # The REST service connects as its own role, with no privilege in schema realtime; its DDL
    # still gets the triggers (the event trigger runs attach_triggers as the migrating role).
    role = "rc_rest_" + migrated.name
    migrated.sql("CREATE ROLE %s LOGIN" % role)
    try:
        migrated.sql("GRANT CREATE, USAGE ON SCHEMA public TO " + role)
        proc = migrated.run_file(MARKETPLACE, user=role)
        assert "WARNING" not in proc.stderr, proc.stderr
        assert migrated.status() == ALL_OK
        assert migrated.one("SELECT tableowner FROM pg_tables WHERE tablename = 'product'") == role
        d = Db(migrated.cluster, migrated.name)
        d.dsn = migrated.dsn.replace("postgres@", role + "@", 1)
        assert_order_created(migrated, *order_across_two_sellers(d))
    finally:
        migrated.sql("DROP OWNED BY %s CASCADE" % role)
        migrated.sql("DROP ROLE " + role)


def test_order_table_waits_for_its_items_table(migrated):
    # TypeORM creates tables one by one: "order" before product_order. Its commit-time trigger
    # reads product_order, so it is attached only once that table exists.
    migrated.sql('CREATE TABLE "order" (id_order serial PRIMARY KEY, id_client int NOT NULL, '
                 "id_delivery int, status varchar(50) NOT NULL DEFAULT 'pending')")
    migrated.sql("CREATE TABLE product (id_product serial PRIMARY KEY, id_seller int NOT NULL)")
    assert migrated.status()[:2] == [('public."order"', "table_missing"),
                                     ("public.product", "ok")]
    migrated.sql('INSERT INTO "order" (id_client) VALUES (1)')  # no trigger, no error
    migrated.sql("CREATE TABLE product_order (id_product_order serial PRIMARY KEY, "
                 'id_order int REFERENCES "order", id_product int REFERENCES product)')
    assert migrated.status()[0] == ('public."order"', "ok")
    top = migrated.top()
    migrated.sql('UPDATE "order" SET status = \'processing\'')
    assert [(e, r) for e, r, _ in migrated.events(top)] == [
        ("order_updated", ["order-1", "client-1"])]


# -- (iii) TypeORM re-synchronizing ---------------------------------------------------------

def test_drop_and_create_again_gets_the_trigger_back(migrated):
    migrated.run_file(MARKETPLACE)
    conn = psycopg2.connect(migrated.dsn)
    with conn, conn.cursor() as cur:  # one transaction, as TypeORM's synchronize runs
        cur.execute("DROP TABLE product CASCADE")
        cur.execute("""CREATE TABLE product (
                           id_product serial NOT NULL, id_seller integer NOT NULL,
                           id_inventory integer, id_category integer, id_sub_category integer,
                           product_name varchar(150) NOT NULL, description text,
                           price numeric(10,2) NOT NULL, stock integer NOT NULL, image_url text,
                           status product_status_enum NOT NULL DEFAULT 'pending',
                           created_at timestamp NOT NULL DEFAULT now(),
                           CONSTRAINT "PK_product" PRIMARY KEY (id_product))""")
        cur.execute("""ALTER TABLE product ADD CONSTRAINT "FK_product_inventory"
                       FOREIGN KEY (id_inventory) REFERENCES inventory (id_inventory)""")
        cur.execute("""ALTER TABLE product_order ADD CONSTRAINT "FK_product_order_product"
                       FOREIGN KEY (id_product) REFERENCES product (id_product)""")
    conn.close()
    assert migrated.status() == ALL_OK
    top = migrated.top()
    pid = market.create_product(migrated.dsn, 2, price=3)
    market.update_product(migrated.dsn, pid, status="inactive")
    assert [(e, r) for e, r, _ in migrated.events(top)] == [
        ("product_created", ["product-%d" % pid, "seller-2", "admins"]),
        ("product_updated", ["product-%d" % pid, "seller-2", "admins"])]
    # Renamed away and back (another way a schema tool rebuilds a table).
    migrated.sql("ALTER TABLE delivery RENAME TO delivery_old")
    migrated.sql("CREATE TABLE delivery (LIKE delivery_old INCLUDING ALL)")
    assert migrated.status() == ALL_OK


# -- (iv) realtime.watch before the table exists ---------------------------------------------

def test_watch_a_table_that_does_not_exist_yet(migrated):
    migrated.sql("SELECT realtime.watch('public.coupons', 'coupon', ARRAY['order-{order_id}'])")
    assert migrated.status()[3:] == [("public.coupons", "table_missing")]
    migrated.run_file(MARKETPLACE)  # creates coupons among the others
    assert migrated.status() == ALL_OK + [("public.coupons", "ok")]
    top = migrated.top()
    migrated.sql("INSERT INTO coupons (code, order_id) VALUES ('SPRING', 7)")
    migrated.sql("INSERT INTO coupons (code) VALUES ('NOORDER')")
    assert [(e, r) for e, r, _ in migrated.events(top)] == [
        ("coupon_created", ["coupon-1", "order-7"]), ("coupon_created", ["coupon-2"])]
    # Dropped and created again: attached again from the registration.
    migrated.sql("DROP TABLE coupons")
    assert migrated.status()[3:] == [("public.coupons", "table_missing")]
    migrated.sql("CREATE TABLE coupons (id_coupon serial PRIMARY KEY, code text, order_id int)")
    assert migrated.status()[3:] == [("public.coupons", "ok")]
    migrated.sql("SELECT realtime.unwatch('public.coupons')")
    assert migrated.status() == ALL_OK
    assert migrated.one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'coupons'::regclass") == 0


def test_watch_registration_that_does_not_fit_never_fails_the_ddl(migrated):
    migrated.sql("SELECT realtime.watch('gadget', 'gadget', ARRAY['client-{id_client}'])")
    migrated.sql("CREATE TABLE gadget (id serial PRIMARY KEY)")  # no id_client: a WARNING only
    assert migrated.status()[3:] == [("public.gadget", "trigger_missing")]
    migrated.sql("ALTER TABLE gadget ADD COLUMN id_client int")
    assert migrated.status()[3:] == [("public.gadget", "ok")]
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        migrated.sql("SELECT realtime.watch('later', 'bad name!')")
    with pytest.raises(psycopg2.errors.InvalidParameterValue):
        migrated.sql("SELECT realtime.watch('realtime.events', 'loop')")


# -- (v) identity ---------------------------------------------------------------------------

def test_identity_maps_the_token_sub_to_seller_and_client_ids(migrated):
    def identity(claims):
        return migrated.one("SELECT realtime.identity(%s::jsonb)", (claims,))

    nulls = {"seller_id": None, "client_id": None}
    assert identity('{"sub": "%s"}' % SELLER_UUID) == nulls  # no tables yet: nulls, no error
    migrated.run_file(MARKETPLACE)
    migrated.run_file(DEMO)
    assert identity('{"sub": "%s", "role": "seller"}' % SELLER_UUID) == {"seller_id": 1,
                                                                        "client_id": None}
    assert identity('{"sub": "%s"}' % SELLER_UUID.upper()) == {"seller_id": 1, "client_id": None}
    assert identity('{"sub": "%s"}' % CLIENT_UUID) == {"seller_id": None, "client_id": 3}
    for claims in ['{"sub": "101"}', '{"sub": "not-a-uuid"}', '{"sub": 101}', '{}', '[]', "null",
                   '{"sub": "00000000-0000-4000-a000-000000000999"}']:
        assert identity(claims) == nulls, claims
    # The ids it resolves are what can_join needs for the seller's own rooms.
    claims = '{"sub": "%s", "role": "seller", "seller_id": 1}' % SELLER_UUID
    assert migrated.one("SELECT realtime.can_join(%s::jsonb, 'seller-1')", (claims,))
    assert migrated.one("SELECT realtime.can_join(%s::jsonb, 'order-3')", (claims,))
    assert not migrated.one("SELECT realtime.can_join(%s::jsonb, 'order-2')", (claims,))


def test_n8n_rooms_by_role(migrated):
    migrated.run_file(MARKETPLACE)
    for role, room, allowed in [("seller", "sellers", True), ("client", "sellers", False),
                                ("client", "clients", True), ("seller", "clients", False),
                                ("admin", "admin", True), ("seller", "admin", False),
                                ("client", "admin", False), ("", "sellers", False),
                                ("admin", "sellers", True), ("client", "admins", False)]:
        got = migrated.one("SELECT realtime.can_join(%s::jsonb, %s)",
                           ('{"sub": "u", "role": "%s"}' % role, room))
        assert got is allowed, (role, room)


# -- (vi) without superuser: no event trigger, the periodic call does the work ---------------

def test_non_superuser_migrator_relies_on_attach_triggers(db):
    role = "rc_mig_" + db.name  # roles are per cluster, databases per test
    db.sql("CREATE ROLE %s LOGIN" % role)
    db.sql('GRANT CREATE ON DATABASE "%s" TO %s' % (db.name, role))
    db.sql("GRANT CREATE, USAGE ON SCHEMA public TO " + role)
    notices = "".join(db.run_file(f, user=role).stderr for f in UP_FILES)
    assert "not a superuser" in notices
    assert db.one("SELECT count(*) FROM pg_event_trigger") == 0
    # The REST service (here the same role) creates its tables after the migrations.
    db.run_file(MARKETPLACE, user=role)
    assert db.status() == [(t, "trigger_missing") for t, _ in ALL_OK]
    conn = psycopg2.connect(db.dsn.replace("postgres@", role + "@", 1))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT realtime.attach_triggers()")  # what roomcast runs every ~10 s
        assert cur.fetchone()[0] == 3
        cur.execute("SELECT realtime.attach_triggers()")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT table_name, state FROM realtime.trigger_status()")
        assert cur.fetchall() == ALL_OK
    conn.close()
    assert_order_created(db, *order_across_two_sellers(db))
    # A table the migrator may not put triggers on: a WARNING, no error, still missing.
    db.sql("CREATE TABLE someone_elses (id serial PRIMARY KEY)")
    db.sql("INSERT INTO realtime.watched (schema_name, table_name, name) "
           "VALUES ('public', 'someone_elses', 'x')")
    conn = psycopg2.connect(db.dsn.replace("postgres@", role + "@", 1))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT realtime.attach_triggers()")
        assert cur.fetchone()[0] == 0
        assert any("not attached" in n for n in conn.notices), conn.notices
    conn.close()
    assert db.status()[3:] == [("public.someone_elses", "trigger_missing")]
    db.sql("DROP TABLE someone_elses")
    db.sql("DELETE FROM realtime.watched")
    db.sql("DROP OWNED BY %s CASCADE" % role)
    db.sql("DROP ROLE " + role)


# -- (vii) a trigger never aborts a REST transaction -----------------------------------------

def test_rest_writes_always_commit(migrated):
    migrated.run_file(MARKETPLACE)
    migrated.run_file(DEMO)
    d = migrated.dsn
    top = migrated.top()
    empty = market.create_order(d, 2, [])  # an order with no items
    for status in ("payment_pending_verification", "payment_confirmed", "processing", "shipped",
                   "delivered", "cancelled", "expired", "payment_rejected", "payment_failed"):
        market.set_order_status(d, empty, status)
    market.pay_order(d, empty, "txn-42")
    for status in ("pending", "active", "rejected", "inactive"):
        market.update_product(d, 6, status=status)
    delivery = market.create_delivery(d)
    market.assign_delivery(d, empty, delivery)
    for status in ("in_transit", "en camino", "entregado", "delivered"):
        market.set_delivery_status(d, delivery, status)
    migrated.sql('DELETE FROM "order" WHERE id_order = %s', (empty,))
    migrated.sql("DELETE FROM delivery WHERE id_delivery = %s", (delivery,))
    market.delete_product(d, market.create_product(d, 3))
    events = [e for e, _, _ in migrated.events(top)]
    assert events.count("order_updated") == 11, events  # 9 statuses, payment, delivery
    assert events.count("product_updated") == 3 and events.count("delivery_updated") == 4, events
    assert events[0] == "order_created" and "order_deleted" in events, events
    assert "delivery_deleted" in events and "product_deleted" in events, events
    created = migrated.events(top)[0]
    assert created[1] == ["order-%d" % empty, "client-2"]
    assert created[2]["total_amount"] == 0 and created[2]["payment_status"] == "pending"


# -- end to end: roomcast up before the REST service's tables exist ---------------------------

def test_roomcast_first_then_rest_tables_end_to_end(server_factory, db):
    # `roomcast migrate` (the embedded files) on an empty database, roomcast serving, and only
    # then the REST service creates its tables and takes an order spanning two sellers.
    out = subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=db.dsn),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    server = server_factory({"DATABASE_URL": db.dsn})
    wait_until(lambda: server.json("/health")[1]["postgres"] == "up", 15, what="postgres up")
    db.run_file(MARKETPLACE)
    db.run_file(DEMO)

    async def order_created(ws):
        """The order_created messages: waits up to 10 s for the first, then 0.5 s for more
        (the checkout's product_updated events are skipped)."""
        got, deadline = [], time.monotonic() + 10
        while True:
            try:
                m = await recv_json(ws, max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return got
            if isinstance(m, dict) and m.get("event") == "order_created":
                got.append(m)
                deadline = min(deadline, time.monotonic() + 0.5)

    async def go():
        # A seller's token as the auth service issues it: a uuid sub and no seller id.
        seller3 = await connect(server, make_token(U(103), "seller"))
        # Its messages wait for the identity lookup: once this join is answered, the seller's
        # id is known and the connection is in seller-3.
        assert (await join(seller3, "product-5"))["type"] == "joined"
        client = await connect(server, make_token(U(202), "client"))
        assert (await join(client, "client-2"))["type"] == "joined"
        order = market.create_order(db.dsn, 2, [(1, 1), (5, 2)])  # sellers 1 and 3
        for ws, room in ((seller3, "seller-3"), (client, "client-2")):
            got = await order_created(ws)
            assert [(m["room"], m["data"]["id_order"]) for m in got] == [(room, order)], got
    run(go())


def U(n):
    return "00000000-0000-4000-a000-%012d" % n
