"""History (docs/protocol.md, docs/http-api.md): a member's `history` message and
`GET /api/history` page through a room's stored events in id order, with `recovered` as for a
resume, and refuse non-members and callers without the notify credential."""

import asyncio
import json
import os
import subprocess
import urllib.parse

import psycopg2
import pytest

from pgcluster import PgCluster
from rc import BIN, connect, join, make_token, recv_json, recv_type, run, send, wait_until

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
NOTIFY = "notify-secret-for-history-tests-0123456789"


@pytest.fixture(scope="module")
def cluster():
    c = PgCluster()
    c.start()
    c.create_database("hist")
    c.psql_file(os.path.join(ROOT, "sql/marketplace.sql"), dbname="hist")
    out = subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=c.dsn_for("hist")),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    yield c
    c.cleanup()


def sql(cluster, statement, params=None):
    conn = psycopg2.connect(cluster.dsn_for("hist"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def publish(cluster, room, n):
    rows = sql(cluster, "SELECT realtime.publish('ev', ARRAY[%s], jsonb_build_object('i', i)) "
               "FROM generate_series(1, %s) i", (room, n))
    return sorted(r[0] for r in rows)


@pytest.fixture
def server(server_factory, cluster):
    s = server_factory({"DATABASE_URL": cluster.dsn_for("hist"), "NOTIFY_TOKEN": NOTIFY})
    wait_until(lambda: s.json("/health")[1]["postgres"] == "up", 15, what="postgres up")
    return s


def api_history(server, token=NOTIFY, **q):
    hdrs = {"Authorization": "Bearer " + token} if token else {}
    status, body = server.get("/api/history?" + urllib.parse.urlencode(q), hdrs)
    return status, json.loads(body)


def test_client_history_pages_in_id_order(server, cluster):
    ids = publish(cluster, "product-71", 250)
    publish(cluster, "product-72", 5)  # another room's events never show up

    async def go():
        ws = await connect(server, make_token("h1"))
        await send(ws, "history", room="product-71")
        err = await recv_type(ws, "error")
        assert err["payload"]["code"] == "not_member"
        assert (await join(ws, "product-71"))["type"] == "joined"
        got, since, pages = [], ids[0] - 1, 0
        while True:
            await send(ws, "history", room="product-71", since=since, limit=100)
            page = (await recv_type(ws, "history"))["payload"]
            pages += 1
            assert page["room"] == "product-71" and page["recovered"] is True
            got += page["events"]
            if not page["more"]:
                break
            since = page["events"][-1]["id"]
        assert pages == 3
        assert [e["id"] for e in got] == ids
        assert all(e["room"] == "product-71" and e["event"] == "ev" for e in got)
        assert [e["data"]["i"] for e in got] == list(range(1, 251))
        # Default limit 100; more than 1000 is cut to 1000.
        await send(ws, "history", room="product-71", since=0)
        assert len((await recv_type(ws, "history"))["payload"]["events"]) == 100
        await send(ws, "history", room="product-71", since=0, limit=5000)
        assert len((await recv_type(ws, "history"))["payload"]["events"]) == 250
        await send(ws, "history", room="product-71", limit=0)
        assert (await recv_type(ws, "error"))["payload"]["code"] == "bad_json"
        await ws.close()
    run(go())


def test_http_history_pages_and_credentials(server, cluster):
    ids = publish(cluster, "order-900", 30)
    status, body = api_history(server, token=None, room="order-900")
    assert status == 401, body
    status, body = api_history(server, token=make_token("u", "seller"), room="order-900")
    assert status == 403, body
    status, body = api_history(server, token=make_token("svc", "service"), room="order-900",
                               limit=10)
    assert status == 200 and len(body["events"]) == 10, body
    got, since = [], 0
    while True:
        status, page = api_history(server, room="order-900", since=since, limit=12)
        assert status == 200 and page["recovered"] is True, page
        got += page["events"]
        if not page["more"]:
            break
        since = page["events"][-1]["id"]
    assert [e["id"] for e in got] == ids
    assert api_history(server, room="bad room")[0] == 400
    assert api_history(server, room="order-900", since="x")[0] == 400
    assert api_history(server, room="order-900", limit="-1")[0] == 400
    status, body = api_history(server, room="order-900", since=ids[-1])
    assert status == 200 and body["events"] == [] and body["more"] is False


def test_history_after_pruned_events_is_not_recovered(server, cluster):
    first = publish(cluster, "order-901", 2)
    assert sql(cluster, "SELECT realtime.prune('0 seconds')")[0][0] >= 2
    kept = publish(cluster, "order-901", 1)
    status, body = api_history(server, room="order-901", since=first[0])
    assert status == 200 and body["recovered"] is False, body
    assert [e["id"] for e in body["events"]] == kept
    status, body = api_history(server, room="order-901", since=kept[0])
    assert status == 200 and body["recovered"] is True, body

    async def go():
        ws = await connect(server, make_token("adm", "admin"))
        assert (await join(ws, "order-901"))["type"] == "joined"
        await send(ws, "history", room="order-901", since=first[0])
        page = (await recv_type(ws, "history"))["payload"]
        assert page["recovered"] is False and [e["id"] for e in page["events"]] == kept
        await ws.close()
    run(go())


def test_history_without_database_is_an_empty_unrecovered_page(server_factory):
    s = server_factory({"NOTIFY_TOKEN": NOTIFY})
    status, body = api_history(s, room="order-1")
    assert status == 200 and body == {"room": "order-1", "events": [], "recovered": False,
                                      "more": False}

    async def go():
        ws = await connect(s, make_token("adm", "admin"))
        assert (await join(ws, "order-1"))["type"] == "joined"
        await send(ws, "history", room="order-1")
        page = (await recv_type(ws, "history"))["payload"]
        assert page == {"room": "order-1", "events": [], "recovered": False, "more": False}
        await ws.close()
    run(go())
