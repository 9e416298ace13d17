"""`roomcast migrate` waits for PostgreSQL: it retries the connection with backoff for
MIGRATE_WAIT_S (a compose stack starts it together with the database), logging each attempt,
and gives up after that bound.

Run: /usr/bin/python3 -m pytest tests/integration/test_migrate_retry.py
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgcluster import PgCluster, free_port  # noqa: E402
from rc import BIN  # noqa: E402


def start_migrate(port, wait_s):
    env = dict(os.environ, MIGRATE_WAIT_S=str(wait_s),
               DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/roomcast")
    return subprocess.Popen([BIN, "migrate"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_migrate_waits_for_postgres_to_come_up():
    port = free_port()
    proc = start_migrate(port, 60)
    cluster = PgCluster(port=port)
    try:
        # initdb and the start take a few seconds, during which migrate is refused.
        time.sleep(1)
        assert proc.poll() is None, "migrate gave up before PostgreSQL came up"
        cluster.start()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "applied 001_realtime" in out, out
        retries = [ln for ln in err.splitlines() if "PQconnectdb failed, retrying" in ln]
        assert len(retries) >= 2, err
        assert "attempt=1 " in retries[0] and "retry_in_ms=" in retries[0], retries[0]
        assert cluster.psql("SELECT count(*) FROM realtime.schema_migrations")[0][0] >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        cluster.cleanup()


def test_migrate_gives_up_after_the_wait():
    port = free_port()  # nothing listens there
    started = time.monotonic()
    proc = start_migrate(port, 2)
    out, err = proc.communicate(timeout=20)
    took = time.monotonic() - started
    assert proc.returncode == 1, (out, err)
    assert "gave up after MIGRATE_WAIT_S" in err, err
    assert 1.5 <= took < 6, took


def test_migrate_wait_zero_tries_once():
    proc = start_migrate(free_port(), 0)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "retrying" not in err and "no retry" in err, err
