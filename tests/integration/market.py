"""Writes marketplace rows (sql/marketplace.sql, the REST service's schema) the way the REST
service does: an order is ONE transaction (INSERT "order", then per item INSERT product_order
and UPDATE product SET stock = stock - qty); a status change, a delivery assignment, a product
change are single-row statements in their own transaction. Every function takes a psycopg2
connection or a DSN; with commit=False it runs inside the connection's open transaction.
"""

import contextlib
import itertools
import uuid

import psycopg2

_seq = itertools.count(1)


@contextlib.contextmanager
def _tx(target, commit=True):
    """A cursor in one transaction of target (a connection or a DSN), committed at the end
    unless commit is False (then target must be a connection; its transaction stays open)."""
    own = isinstance(target, str)
    conn = psycopg2.connect(target, connect_timeout=5) if own else target
    autocommit = conn.autocommit
    try:
        if commit and autocommit:
            conn.autocommit = False
        with conn.cursor() as cur:
            yield cur
        if commit:
            conn.commit()
    except BaseException:
        if commit:
            conn.rollback()
        raise
    finally:
        if own:
            conn.close()
        elif commit and autocommit:
            conn.autocommit = True


def _one(cur):
    return cur.fetchone()[0]


def create_seller(target, name=None, user_id=None):
    """A seller row (user_id: the auth service's uuid, or None); returns id_seller."""
    n = next(_seq)
    name = name or "Seller %d" % n
    with _tx(target) as cur:
        cur.execute("""INSERT INTO seller (user_id, seller_name, seller_email, seller_password,
                                           phone, bussines_name, location)
                       VALUES (%s, %s, %s, 'x', 5550000, %s, 'Town') RETURNING id_seller""",
                    (user_id, name, "seller%d-%s@example.com" % (n, uuid.uuid4().hex[:12]),
                     name + " Ltd"))
        return _one(cur)


def create_client(target, name=None, user_id=None):
    """A client row; returns id_client."""
    n = next(_seq)
    name = name or "Client %d" % n
    with _tx(target) as cur:
        cur.execute("""INSERT INTO client (user_id, client_name, client_email, client_password,
                                           address, phone)
                       VALUES (%s, %s, %s, 'x', '1 Main St', '555') RETURNING id_client""",
                    (user_id, name, "client%d-%s@example.com" % (n, uuid.uuid4().hex[:12])))
        return _one(cur)


def create_product(target, seller, price=10, stock=100, name=None, status="active", commit=True):
    """One product row of seller; returns id_product."""
    with _tx(target, commit) as cur:
        cur.execute("""INSERT INTO product (id_seller, product_name, description, price, stock,
                                            status)
                       VALUES (%s, %s, '', %s, %s, %s) RETURNING id_product""",
                    (seller, name or "Product %d" % next(_seq), price, stock, status))
        return _one(cur)


def create_order(target, client, items, payment_method=1, delivery_type="standard",
                 status="pending", commit=True):
    """The REST service's checkout: INSERT "order" (total from the products' prices), then per
    (id_product, qty) item INSERT product_order and UPDATE product's stock; one transaction.
    Returns id_order."""
    with _tx(target, commit) as cur:
        prices = {}
        for pid, _ in items:
            cur.execute("SELECT price FROM product WHERE id_product = %s", (pid,))
            prices[pid] = _one(cur)
        total = sum(prices[pid] * qty for pid, qty in items)
        cur.execute("""INSERT INTO "order" (status, total_amount, delivery_type, id_client,
                                            id_payment_method)
                       VALUES (%s, %s, %s, %s, %s) RETURNING id_order""",
                    (status, total, delivery_type, client, payment_method))
        order = _one(cur)
        for pid, qty in items:
            cur.execute("""INSERT INTO product_order (id_order, id_product, price_unit, subtotal)
                           VALUES (%s, %s, %s, %s)""", (order, pid, prices[pid], prices[pid] * qty))
            cur.execute("UPDATE product SET stock = stock - %s WHERE id_product = %s", (qty, pid))
        return order


def set_order_status(target, order, status, commit=True, **cols):
    """A single-row status change of an order (other columns may change with it)."""
    assigns = ", ".join(["status = %s"] + ["%s = %%s" % c for c in cols])
    with _tx(target, commit) as cur:
        cur.execute('UPDATE "order" SET ' + assigns + " WHERE id_order = %s",
                    [status] + list(cols.values()) + [order])


def pay_order(target, order, transaction_id="txn-1"):
    """The card flow: status, payment_status and transaction_id in one UPDATE."""
    set_order_status(target, order, "confirmed", payment_status="paid",
                     transaction_id=transaction_id)


def create_delivery(target, address="1 New St", city="London", status="pending", commit=True):
    """A delivery row; returns id_delivery."""
    with _tx(target, commit) as cur:
        cur.execute("""INSERT INTO delivery (delivery_address, city, status, delivery_cost)
                       VALUES (%s, %s, %s, 5) RETURNING id_delivery""", (address, city, status))
        return _one(cur)


def assign_delivery(target, order, delivery, commit=True):
    """Sets an order's id_delivery."""
    with _tx(target, commit) as cur:
        cur.execute('UPDATE "order" SET id_delivery = %s WHERE id_order = %s', (delivery, order))


def set_delivery_status(target, delivery, status, commit=True):
    with _tx(target, commit) as cur:
        cur.execute("UPDATE delivery SET status = %s WHERE id_delivery = %s", (status, delivery))


def update_product(target, product, commit=True, **cols):
    """A single-row product UPDATE of the given columns."""
    assigns = ", ".join("%s = %%s" % c for c in cols)
    with _tx(target, commit) as cur:
        cur.execute("UPDATE product SET " + assigns + " WHERE id_product = %s",
                    list(cols.values()) + [product])


def delete_product(target, product, commit=True):
    with _tx(target, commit) as cur:
        cur.execute("DELETE FROM product WHERE id_product = %s", (product,))
