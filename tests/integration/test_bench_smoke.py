"""Keeps bench/ from rotting (issue 6): the load generator, built from bench/loadgen.c, counts
every delivery of a small fan-out against a real roomcast exactly (no loss, no duplicates, a
latency sample per delivery, also with ?batch=1), and holds idle clients over several processes
and source addresses. Also `roomcast serve --workers N`: N processes on one port, a crashed
worker restarted, SIGTERM forwarded and answered with exit 0, a worker that cannot start
stopping the supervisor."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from pgcluster import free_port
from rc import BIN, Server, make_token, wait_until

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LOADGEN = os.path.join(ROOT, "build", "bench", "loadgen")
NOTIFY = "notify-secret"


@pytest.fixture(scope="module")
def loadgen():
    subprocess.run(["make", "-s", "-C", ROOT, "build/bench/loadgen"], check=True, timeout=120)
    return LOADGEN


def run_loadgen(loadgen, mode, server, *args):
    pid = server.proc.pid
    cmd = [loadgen, mode, "--port", str(server.port), "--pid", str(pid), "--quiet",
           "--token", make_token("bench", "admin")] + [str(a) for a in args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("batch", [False, True], ids=["plain", "batch"])
def test_loadgen_counts_every_delivery(server_factory, loadgen, batch):
    server = server_factory({"NOTIFY_TOKEN": NOTIFY, "LOG_LEVEL": "info"})
    r = run_loadgen(loadgen, "fanout", server, "--conns", 50, "--room-size", 10, "--events", 100,
                    "--rate", 100, "--notify-token", NOTIFY, "--settle", 0.2, "--drain", 3,
                    *(["--batch"] if batch else []))
    assert r["connected"] == 50 and r["joined"] == 50 and r["failed"] == 0
    assert r["sent"] == 100 and r["send_errors"] == 0
    # 100 events over 5 rooms of 10 members: each member expects 20.
    assert r["expected"] == 1000
    assert (r["deliveries"], r["unique"], r["lost"], r["dups"], r["misrouted"]) == (
        1000, 1000, 0, 0, 0)
    assert r["latency"]["count"] == 1000 and r["latency"]["p50_us"] > 0
    assert r["server"]["cpu_us_per_delivery"] >= 0


def test_loadgen_holds_idle_clients_over_processes_and_addresses(server_factory, loadgen):
    server = server_factory({"MAX_CONNECTIONS_PER_IP": "1000"})
    r = run_loadgen(loadgen, "idle", server, "--conns", 300, "--procs", 3, "--nsrc", 3,
                    "--settle", 0.5, "--hold", 0.5)
    assert r["connected"] == 300 and r["failed"] == 0 and r["open_at_end"] == 300
    assert r["server"]["rss_ready_kb"] > 0 and "rss_per_conn_bytes" in r["server"]


def test_loadgen_reports_refused_handshakes(server_factory, loadgen):
    server = server_factory({"MAX_CONNECTIONS": "10"})
    r = run_loadgen(loadgen, "idle", server, "--conns", 20, "--settle", 0)
    assert r["connected"] == 10 and r["failed"] == 10 and r["refused_5xx"] == 10


# ---- roomcast serve --workers N ----

@pytest.fixture
def redis_addr():
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False
    wait_until(up, timeout=10, what="redis-server")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())


def nodes_seen(server, want, timeout=10):
    """Asks /health until every name in want has answered (SO_REUSEPORT spreads the
    connections over the workers)."""
    seen = set()

    def poll():
        seen.add(server.json("/health")[1]["node"])
        return want <= seen
    wait_until(poll, timeout=timeout, interval=0.01, what=f"nodes {sorted(want)}")
    return seen


def children_safe(pid):
    try:
        return children(pid)
    except OSError:
        return []


def zombie(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except OSError:
        return True


def test_workers_share_the_port_restart_a_crash_and_stop_cleanly(server_factory, redis_addr):
    server = server_factory({"WORKERS": "2", "REDIS_ADDR": redis_addr, "NODE_ID": "bench"})
    sup = server.proc.pid
    wait_until(lambda: len(children(sup)) == 2, what="two workers")
    assert nodes_seen(server, {"bench-w0", "bench-w1"}) == {"bench-w0", "bench-w1"}

    first = children(sup)
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: len(children(sup)) == 2 and children(sup) != first, timeout=10,
               what="the killed worker restarted")
    nodes_seen(server, {"bench-w0", "bench-w1"})
    assert "worker died; restarting" in server.logs()

    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 5.5
    for pid in first[1:] + children_safe(sup):
        assert not os.path.exists(f"/proc/{pid}/status") or zombie(pid)


def test_workers_stop_when_a_worker_cannot_start(redis_addr):
    # The port is taken by a listener without SO_REUSEPORT: every worker's bind fails, which
    # no restart can fix, so the supervisor gives up with the worker's exit code.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = Server({"WORKERS": "2", "REDIS_ADDR": redis_addr})
        s.port = port
        s.env["PORT"] = str(port)
        s.start(wait=False)
        try:
            code = s.proc.wait(10)
            logs = s.logs()
        finally:
            s.cleanup()
    assert code != 0, logs
    assert "worker failed to start" in logs


def test_workers_need_redis():
    env = dict(os.environ, JWT_SECRET="x" * 40, WORKERS="2")
    env.pop("REDIS_ADDR", None)
    proc = subprocess.run([BIN, "serve"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=10)
    assert proc.returncode == 2 and "WORKERS" in proc.stderr


def test_loadgen_storm_rejoins_with_since_and_counts_every_event(pgserver, loadgen, cluster, db):
    """bench's storm: every client drops its socket while events are committed, reconnects and
    rejoins with since; the load generator counts recovered answers and every event of each
    client's room exactly once over the whole run."""
    server = pgserver()
    r = run_loadgen(loadgen, "latency", server, "--conns", 100, "--room-size", 10,
                    "--room-prefix", "storm", "--events", 200, "--rate", 100, "--pg",
                    cluster.dsn_for(db), "--senders", 2, "--settle", 0.2, "--drain", 3,
                    "--rejoin-at", 0.7)
    assert r["joined"] == 100 and r["sent"] == 200 and r["send_errors"] == 0
    st = r["storm"]
    assert (st["dropped"], st["rejoined"], st["recovered"], st["unrecovered"],
            st["rejoin_failed"]) == (100, 100, 100, 0, 0)
    assert st["rejoin_s"] > 0
    # 200 events over 10 rooms of 10: 20 per member, whether live or replayed.
    assert r["expected"] == 2000
    assert (r["unique"], r["lost"], r["dups"], r["misrouted"]) == (2000, 0, 0, 0)
