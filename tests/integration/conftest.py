"""Fixtures for the integration tests: real roomcast processes (and, where a test asks for it,
real PostgreSQL and Redis), with their logs printed when a test fails."""

import itertools
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rc import BIN, Server, wait_until  # noqa: E402
from pgcluster import PgCluster, sql  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_db_names = itertools.count(1)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture
def server_factory(request):
    """Starts roomcast processes with extra environment; stops them after the test and prints
    their logs if it failed."""
    servers = []

    def start(env=None, wait=True, host="127.0.0.1"):
        s = Server(env, host=host)
        servers.append(s)
        return s.start(wait=wait)

    yield start
    for s in servers:
        s.stop()
        if _failed(request):
            print(f"\n----- roomcast log (port {s.port}) -----\n{s.logs()}", file=sys.stderr)
        s.cleanup()


@pytest.fixture
def server(server_factory):
    return server_factory({"NOTIFY_TOKEN": "notify-secret"})


# ---- PostgreSQL: a cluster per test module, a fresh database per test ----
# A module that needs another starting point sets PG_TEMPLATE_FILES (repository files loaded
# before the migrations; the marketplace schema and demo rows by default) and PG_TEMPLATE_SQL
# (run after them), or defines its own `cluster` fixture.

@pytest.fixture(scope="module")
def cluster(request):
    """A throwaway cluster with a template database: the module's files, `roomcast migrate`,
    then the module's SQL. Every test's `db` is a copy of it."""
    files = getattr(request.module, "PG_TEMPLATE_FILES", ("sql/marketplace.sql", "sql/demo.sql"))
    extra = getattr(request.module, "PG_TEMPLATE_SQL", None)
    c = PgCluster()
    c.start()
    c.create_database("tmpl")
    for f in files:
        c.psql_file(os.path.join(ROOT, f), dbname="tmpl")
    out = subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=c.dsn_for("tmpl")),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if extra:
        sql(c, "tmpl", extra)
    yield c
    c.cleanup()


@pytest.fixture
def db(request, cluster):
    """A new database copied from the module's template; PostgreSQL's log of the test is
    printed when it failed."""
    name = "t%d" % next(_db_names)
    cluster.create_database(name, template="tmpl")
    start = len(cluster.logs())
    yield name
    if _failed(request):
        print("---- PostgreSQL log ----\n" + cluster.logs()[start:], file=sys.stderr)


@pytest.fixture
def pgserver(server_factory, cluster, db):
    """Starts roomcast on the test's database (more environment as keywords) and waits until
    its PostgreSQL connections are up."""
    def start(**env):
        env.setdefault("DATABASE_URL", cluster.dsn_for(db))
        s = server_factory(env)
        wait_until(lambda: s.json("/health")[1]["postgres"] == "up", 15, what="postgres up")
        return s
    return start
