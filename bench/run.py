#!/usr/bin/python3
"""`make bench`: every scenario against roomcast and the Node.js baseline (bench/baseline) in one
run, on a throwaway PostgreSQL; prints one table and writes bench/results/bench-<time>.json (and
latest.json). `make bench-smoke` (`run.py --smoke`) is a 5-second check that the load generator
still counts deliveries against a real roomcast.

Scenarios (each server fresh, one at a time, so CPU and RSS belong to that run):
  idle      N idle WebSocket clients held; server RSS delta / N
  workers   roomcast --workers W holding M clients over one port (needs redis-server)
  fanout1   one room of N members; events via POST /api/notify; deliveries/s, loss, duplicates,
            server CPU (utime+stime from /proc) per delivery; roomcast plain and ?batch=1
  floor     bench/sendfloor: the writer's CPU per send() of one message over loopback TCP, the
            kernel's share of any delivery that takes one write (260 B; 2.6 KB for a batch)
  fanoutS   the same into many rooms of K members
  latency   commit-to-client at a fixed open-loop rate into rooms of 10, events from
            realtime.publish, next to bench/pglisten (raw libpq LISTEN: PostgreSQL's floor)
  writers   pgbench TPS of an order/product update workload, triggers off / on
  notify    POST /api/notify requests/s, closed loop
  live1     one live SQL room (realtime.live_room, every 1 s) with N members: queries/s,
            roomcast and PostgreSQL CPU, pushes to every member after a row change
  live1000  many live rooms of 10 members: queries/s, CPU of both, time per query
  fanout1k  one room of 1 000 at 50/s: CPU per delivery against Node and the send() floor
  step      one room of 10 000 at rising rates until either server stops keeping up; deliveries
            per CPU-second at the highest rate both sustained (alias fanout10k)
  storm     100 000 clients over workers in rooms of 10; all drop and rejoin with since while
            events flow: recovered, loss, duplicates, time to the last joined, SQL statements
  replicas  4 replicas on one Redis, each room on one replica: bus messages per replica
  million   (only when BENCH_ONLY names it) 1 000 000 clients over 64 workers: connect time,
            memory, CPU holding them, one message to all
The table's verdict column is computed from the run's figures against issues 13 and 14.

Scale with environment variables (defaults sized for 2 cores, ~10 minutes); see PARAMS below.
BENCH_ONLY=idle,fanout1 runs a subset. BENCH_PERF=1 records `perf record -g` of roomcast during
its fan-out runs into bench/results/.
"""

import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

ROOMCAST = os.environ.get("ROOMCAST_BIN") or os.path.join(ROOT, "roomcast")
LOADGEN = os.environ.get("LOADGEN_BIN") or os.path.join(ROOT, "build", "bench", "loadgen")
PGLISTEN = os.environ.get("PGLISTEN_BIN") or os.path.join(ROOT, "build", "bench", "pglisten")
SENDFLOOR = os.path.join(ROOT, "build", "bench", "sendfloor")
BASELINE = os.path.join(HERE, "baseline", "server.js")
RESULTS = os.path.join(HERE, "results")
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
NOTIFY_TOKEN = "bench-notify-token"


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_float(name, default):
    return float(os.environ.get(name, default))


PARAMS = {
    # idle: one run per count (comma list)
    "idle_conns": [int(x) for x in os.environ.get("BENCH_IDLE_CONNS", "10000,19000").split(",")],
    "idle_hold": env_float("BENCH_IDLE_HOLD", 30),
    "connect_timeout": env_int("BENCH_CONNECT_TIMEOUT", 240),
    "workers": env_int("BENCH_WORKERS", 0),  # 0: enough workers for BENCH_WORKERS_CONNS
    "workers_conns": env_int("BENCH_WORKERS_CONNS", 100000),
    "fan_conns": env_int("BENCH_FAN_CONNS", 10000),
    "fan_events": env_int("BENCH_FAN_EVENTS", 60),
    "fan_rate": env_float("BENCH_FAN_RATE", 50),
    "small_conns": env_int("BENCH_SMALL_CONNS", 10000),
    "small_room": env_int("BENCH_SMALL_ROOM", 10),
    "small_events": env_int("BENCH_SMALL_EVENTS", 6000),
    "small_rate": env_float("BENCH_SMALL_RATE", 1000),
    "notify_senders": env_int("BENCH_NOTIFY_SENDERS", 16),
    "lat_conns": env_int("BENCH_LAT_CONNS", 1000),
    "lat_rate": env_float("BENCH_LAT_RATE", 200),
    "lat_seconds": env_float("BENCH_LAT_SECONDS", 20),
    "lat_senders": env_int("BENCH_LAT_SENDERS", 4),
    "pgbench_clients": env_int("BENCH_PGBENCH_CLIENTS", 8),
    "pgbench_seconds": env_int("BENCH_PGBENCH_SECONDS", 15),
    "pgbench_rounds": env_int("BENCH_PGBENCH_ROUNDS", 3),
    "notify_seconds": env_float("BENCH_NOTIFY_SECONDS", 5),
    "notify_conns": env_int("BENCH_NOTIFY_CONNS", 8),
    "live_conns": env_int("BENCH_LIVE_CONNS", 10000),
    "live_rooms": env_int("BENCH_LIVE_ROOMS", 1000),
    "live_rows": env_int("BENCH_LIVE_ROWS", 100000),
    "live_hold": env_float("BENCH_LIVE_HOLD", 20),
    "live_changes": env_int("BENCH_LIVE_CHANGES", 4),
    # issue 13: one room of 1 000 at 50/s; one room of 10 000 at rising rates (the "ladder")
    "fan1k_conns": env_int("BENCH_FAN1K_CONNS", 1000),
    "fan1k_rate": env_float("BENCH_FAN1K_RATE", 50),
    # fanout1k and fanoutS run this many rounds of (paced send() floor, roomcast, Node) back to
    # back; each side's figure is its median round (this guest's CPU cost per send() drifts by
    # up to a third within minutes, so one floor measured a minute apart can mislead).
    "rounds": env_int("BENCH_ROUNDS", 3),
    "fan1k_seconds": env_float("BENCH_FAN1K_SECONDS", 20),
    "step_conns": env_int("BENCH_STEP_CONNS", 10000),
    "step_rates": [float(x) for x in
                   os.environ.get("BENCH_STEP_RATES", "2,4,6,8,12,16,24,32,48,64").split(",")],
    "step_seconds": env_float("BENCH_STEP_SECONDS", 6),
    "step_lag_ms": env_float("BENCH_STEP_LAG_MS", 500),
    # issue 14
    "storm_conns": env_int("BENCH_STORM_CONNS", 100000),
    "storm_room": env_int("BENCH_STORM_ROOM", 10),
    "storm_rate": env_float("BENCH_STORM_RATE", 200),
    "storm_seconds": env_float("BENCH_STORM_SECONDS", 30),
    "storm_at": env_float("BENCH_STORM_AT", 8),
    "storm_workers": env_int("BENCH_STORM_WORKERS", 0),  # 0: one per 15 000 clients
    "million_conns": env_int("BENCH_MILLION_CONNS", 1000000),
    "million_workers": env_int("BENCH_MILLION_WORKERS", 64),
    "million_procs": env_int("BENCH_MILLION_PROCS", 64),
    "million_hold": env_float("BENCH_MILLION_HOLD", 30),
    "million_min_free_gb": env_float("BENCH_MILLION_MIN_FREE_GB", 3),
    "replicas": env_int("BENCH_REPLICAS", 4),
    "repl_rooms": env_int("BENCH_REPL_ROOMS", 1000),
    "repl_room": env_int("BENCH_REPL_ROOM", 10),
    "repl_rate": env_float("BENCH_REPL_RATE", 1000),
    "repl_events": env_int("BENCH_REPL_EVENTS", 5000),
}
SCENARIOS = ["idle", "workers", "floor", "fanout1", "fanout1k", "fanoutS", "step", "latency",
             "writers", "notify", "live1", "live1000", "storm", "replicas", "million"]
# Run only when BENCH_ONLY names them: a million connections take most of the machine's memory.
OPT_IN = ["million"]
ALIASES = {"small": "fanoutS", "fanout10k": "step"}

log_lines = []


def say(msg):
    line = time.strftime("%H:%M:%S ") + msg
    log_lines.append(line)
    print("bench: " + line, file=sys.stderr, flush=True)


def free_port():
    """A port below the ephemeral range (32768-60999 here), so the tens of thousands of client
    sockets a scenario leaves in TIME_WAIT never hold the next server's port."""
    import random
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def wait_http(url, timeout=20, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("no answer from " + url)


def make_token():
    out = subprocess.run([ROOMCAST, "token", "--sub", "1", "--role", "admin", "--ttl", "6h"],
                         env=dict(os.environ, JWT_SECRET=SECRET), check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Server:
    """roomcast (kind 'roomcast') or the baseline (kind 'baseline') on a free port."""

    def __init__(self, kind, env=None):
        self.kind = kind
        self.port = free_port()
        self.env = dict(os.environ)
        for k in ("DATABASE_URL", "REDIS_ADDR", "WORKERS", "NODE_ID", "WS_ORIGINS"):
            self.env.pop(k, None)
        self.env.update({
            "JWT_SECRET": SECRET, "PORT": str(self.port), "HOST": "127.0.0.1",
            "NOTIFY_TOKEN": NOTIFY_TOKEN, "LOG_LEVEL": "warn", "AUTHZ": "claims",
            "MAX_CONNECTIONS": "19900", "MAX_CONNECTIONS_PER_IP": "10000000",
            "RATE_LIMIT": "1000/s,burst=1000",
        })
        if kind == "baseline":
            self.env.pop("AUTHZ")
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        self.log = tempfile.NamedTemporaryFile(prefix="bench-%s-" % kind, suffix=".log",
                                               delete=False)
        cmd = [ROOMCAST, "serve"] if kind == "roomcast" else ["node", BASELINE]
        for attempt in range(3):
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                wait_http("http://127.0.0.1:%d/health" % self.port, proc=self.proc)
                break
            except RuntimeError as e:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                with open(self.log.name, errors="replace") as f:
                    tail = f.read()[-1500:]
                if attempt == 2:
                    raise RuntimeError("%s: %s\n%s" % (kind, e, tail))
                say("%s did not start (%s); retrying on another port" % (kind, e))
                self.port = free_port()
                self.env["PORT"] = str(self.port)
        time.sleep(0.3)

    def pids(self):
        kids = children(self.proc.pid)
        return kids if kids else [self.proc.pid]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            with open(self.log.name, errors="replace") as f:
                say("%s exited %s; log tail:\n%s" % (self.kind, self.proc.returncode,
                                                      f.read()[-2000:]))
        if os.environ.get("BENCH_KEEP_LOGS"):
            say("%s log kept: %s" % (self.kind, self.log.name))
        else:
            os.unlink(self.log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def mem_available():
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s*(\d+)", f.read()).group(1)) * 1024


def loadgen(mode, server, args, timeout=900, on_stderr=None, mem_guard_gb=None):
    """Runs the load generator against server (its processes' CPU and RSS sampled); on_stderr
    sees each stderr line as it comes (markers); with mem_guard_gb the run is killed when the
    machine's available memory falls below that (r["mem_guard"] says so)."""
    import threading
    cmd = [LOADGEN, mode, "--port", str(server.port), "--quiet"] + [str(a) for a in args]
    for pid in server.pids():
        cmd += ["--pid", str(pid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines, guard = [], {"min_available": mem_available()}

    def read_err():
        for line in proc.stderr:
            err_lines.append(line)
            if on_stderr:
                on_stderr(line)

    def watch_mem():
        while proc.poll() is None:
            avail = mem_available()
            guard["min_available"] = min(guard["min_available"], avail)
            if avail < mem_guard_gb * 2**30:
                guard["aborted_at_available"] = avail
                say("loadgen: only %.1f GB available: killing the run" % (avail / 2**30))
                proc.kill()
                return
            time.sleep(0.5)

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    if mem_guard_gb:
        threading.Thread(target=watch_mem, daemon=True).start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    err = "".join(err_lines)
    if not out.strip():
        raise RuntimeError("loadgen %s failed (%s): %s" % (mode, proc.returncode, err[-2000:]))
    if err.strip():
        say("loadgen: " + err.strip().replace("\n", " | ")[:400])
    r = json.loads(out)
    # A connect phase that timed out still reports what it reached (rc 1).
    r["loadgen_rc"] = proc.returncode
    if mem_guard_gb:
        r["mem_guard"] = guard
    return r


def perf_wrap(server, name):
    """Starts `perf record` on roomcast when BENCH_PERF=1; returns the process to stop."""
    if os.environ.get("BENCH_PERF") != "1" or server.kind != "roomcast":
        return None
    out = os.path.join(RESULTS, "perf-%s.data" % name)
    # BENCH_PERF_DWARF=1: call graphs through libc and json-c too (built without frame
    # pointers), at a larger file and a higher cost per sample.
    graph = (["--call-graph", "dwarf,16384"] if os.environ.get("BENCH_PERF_DWARF") == "1"
             else ["-g"])
    return subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999"] + graph +
                            ["-o", out, "-p", ",".join(str(p) for p in server.pids())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_stop(p):
    if p:
        p.send_signal(signal.SIGINT)
        p.wait(30)


# ---- scenarios ----

def sc_idle(ctx):
    """RSS per client after connecting, then the CPU of holding them for a while: by default
    30 s, so one round of keep-alive pings (PING_INTERVAL_S=25) falls into the hold. One run
    per count in BENCH_IDLE_CONNS (results keyed by the count)."""
    out = {}
    for n in PARAMS["idle_conns"]:
        out[str(n)] = {}
        for kind in ("roomcast", "baseline"):
            say("idle: %d connections to %s, held %gs" % (n, kind, PARAMS["idle_hold"]))
            with Server(kind, {"MAX_CONNECTIONS": n + 500}) as s:
                out[str(n)][kind] = loadgen(
                    "idle", s, ["--conns", n, "--token", ctx["token"], "--settle", 3, "--hold",
                                PARAMS["idle_hold"], "--connect-timeout",
                                PARAMS["connect_timeout"]])
    return out


def sc_workers(ctx):
    m = PARAMS["workers_conns"]
    if m <= 0:
        return None
    if not ctx.get("redis"):
        say("workers: redis-server not found; skipped")
        return None
    # One process holds ~19 500 sockets: leave each worker headroom for SO_REUSEPORT's uneven
    # hashing.
    w = PARAMS["workers"] or max(2, -(-m // 15000))
    say("workers: %d connections over %d workers" % (m, w))
    env = {"WORKERS": w, "REDIS_ADDR": ctx["redis"], "MAX_CONNECTIONS": 19500}
    with Server("roomcast", env) as s:
        time.sleep(1)
        r = loadgen("idle", s, ["--conns", m, "--token", ctx["token"], "--settle", 3,
                                "--connect-timeout", PARAMS["connect_timeout"],
                                "--inflight", 32])
        r["workers"] = w
        r["worker_pids"] = len(s.pids())
    return {"roomcast": r}


def sc_floor(ctx):
    out = {}
    for size in (260, 2600):
        say("floor: send() of %d bytes round robin over 1000 loopback connections" % size)
        proc = subprocess.run([SENDFLOOR, "--conns", "1000", "--msgs", "200000", "--size",
                               str(size)], stdout=subprocess.PIPE, text=True, check=True)
        out[str(size)] = json.loads(proc.stdout)
    # The same sends in each scenario's own pattern: how many connections the sender cycles
    # over (cache misses and socket lookups grow with it) and the pace (between bursts the
    # reader sleeps, so every burst pays its wakeups). 9 900, not 10 000: both ends live in one
    # process here, and a process may open 20 000 files.
    for key in PACED:
        out[key] = paced_floor(key)
    return out


# The paced floors: (connections, burst, bursts per second, sends in all) per key.
PACED = {
    "paced_1k": lambda: (PARAMS["fan1k_conns"], PARAMS["fan1k_conns"], PARAMS["fan1k_rate"],
                         PARAMS["fan1k_conns"] * 100),
    "paced_small": lambda: (min(PARAMS["small_conns"], 9900), PARAMS["small_room"],
                            PARAMS["small_rate"], 30000),
    "paced_10k": lambda: (min(PARAMS["step_conns"], 9900), min(PARAMS["step_conns"], 9900), 4,
                          min(PARAMS["step_conns"], 9900) * 8),
}


def paced_floor(key):
    """One send() floor in a scenario's own pattern (see PACED and sc_floor)."""
    conns, burst, rate, msgs = PACED[key]()
    say("floor: %s, %d connections, bursts of %d at %g/s" % (key, conns, burst, rate))
    proc = subprocess.run([SENDFLOOR, "--conns", str(conns), "--msgs", str(msgs), "--size",
                           "260", "--burst", str(burst), "--rate", str(rate)],
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout)


def median_rounds(name, floor_key, run_round):
    """PARAMS["rounds"] rounds of (the paced floor of floor_key, run_round()), back to back.
    Returns run_round's labels, each with its median round's result (by CPU per delivery),
    "floor_us", the median floor, and "rounds", every round's figures."""
    rounds = []
    for i in range(max(1, PARAMS["rounds"])):
        say("%s: round %d of %d" % (name, i + 1, PARAMS["rounds"]))
        fl = paced_floor(floor_key)
        rounds.append({"floor_us": fl["cpu_us_per_send"], "runs": run_round()})
    out = {"rounds": [dict({k: cpu_per(v) for k, v in r["runs"].items()},
                           floor_us=r["floor_us"]) for r in rounds]}
    floors = sorted(r["floor_us"] for r in rounds)
    out["floor_us"] = floors[len(floors) // 2]
    for label in rounds[0]["runs"]:
        runs = sorted((r["runs"][label] for r in rounds), key=lambda x: cpu_per(x) or 1e18)
        out[label] = runs[len(runs) // 2]
    return out


def fanout_runs(ctx, name, conns, room_size, events, rate, batch=True):
    out = {}
    common = ["--conns", conns, "--room-size", room_size, "--events", events, "--rate", rate,
              "--token", ctx["token"], "--notify-token", NOTIFY_TOKEN, "--senders",
              PARAMS["notify_senders"], "--settle", 1, "--drain", 5, "--connect-timeout", 300]
    for label, kind, extra in (("roomcast", "roomcast", []),
                               ("roomcast_batch", "roomcast", ["--batch"]),
                               ("baseline", "baseline", [])):
        if extra and not batch:
            continue
        say("%s: %d clients, rooms of %s, %d events at %g/s to %s" %
            (name, conns, room_size or conns, events, rate, label))
        with Server(kind, {"MAX_CONNECTIONS": conns + 500}) as s:
            p = perf_wrap(s, name + "-" + label)
            try:
                out[label] = loadgen("fanout", s, common + extra)
            finally:
                perf_stop(p)
    return out


def sc_fanout1(ctx):
    return fanout_runs(ctx, "fanout1", PARAMS["fan_conns"], 0, PARAMS["fan_events"],
                       PARAMS["fan_rate"])


def sc_fanout1k(ctx):
    """Issue 13: one room of 1 000 at 50 messages/s; CPU per delivery against Node and the
    kernel's send() floor, measured in the same rounds (median_rounds)."""
    rate = PARAMS["fan1k_rate"]
    return median_rounds("fanout1k", "paced_1k", lambda: fanout_runs(
        ctx, "fanout1k", PARAMS["fan1k_conns"], 0, int(rate * PARAMS["fan1k_seconds"]), rate,
        batch=False))


def sustained(r):
    """A fan-out run kept up: everything accepted delivered once, p99 within the lag bound."""
    return (r.get("lost") == 0 and r.get("dups") == 0 and r.get("sent", 0) > 0 and
            r.get("send_errors") == 0 and r.get("deliveries") == r.get("expected") and
            r["latency"].get("p99_us", 1e18) <= PARAMS["step_lag_ms"] * 1e3)


def sc_step(ctx):
    """Issue 13: one room of 10 000 at rising rates (BENCH_STEP_RATES), roomcast and Node at
    each; stops at the first rate either does not sustain (loss, or p99 beyond
    BENCH_STEP_LAG_MS). The figure is deliveries per CPU-second at the highest rate both
    sustained."""
    conns, secs = PARAMS["step_conns"], PARAMS["step_seconds"]
    ladder = []
    for rate in PARAMS["step_rates"]:
        step = {"rate": rate}
        for kind in ("roomcast", "baseline"):
            say("step: 1 room x %d, %g/s for %gs, %s" % (conns, rate, secs, kind))
            with Server(kind, {"MAX_CONNECTIONS": conns + 500}) as s:
                r = loadgen("fanout", s, [
                    "--conns", conns, "--room-size", 0, "--events", max(1, int(rate * secs)),
                    "--rate", rate, "--token", ctx["token"], "--notify-token", NOTIFY_TOKEN,
                    "--senders", PARAMS["notify_senders"], "--settle", 1, "--drain", 5,
                    "--connect-timeout", 300])
            r["sustained"] = sustained(r)
            step[kind] = r
        ladder.append(step)
        say("step: %g/s sustained: roomcast %s, baseline %s" %
            (rate, step["roomcast"]["sustained"], step["baseline"]["sustained"]))
        if not (step["roomcast"]["sustained"] and step["baseline"]["sustained"]):
            break
    common = [x for x in ladder if x["roomcast"]["sustained"] and x["baseline"]["sustained"]]
    return {"ladder": ladder, "best": common[-1] if common else None}


def sc_fanoutS(ctx):
    return median_rounds("fanoutS", "paced_small", lambda: fanout_runs(
        ctx, "fanoutS", PARAMS["small_conns"], PARAMS["small_room"], PARAMS["small_events"],
        PARAMS["small_rate"]))


def sc_latency(ctx):
    pg = ctx["pg"]
    rate, secs = PARAMS["lat_rate"], PARAMS["lat_seconds"]
    events = int(rate * secs)
    out = {}
    for kind in ("roomcast", "baseline"):
        say("latency: %d events at %g/s into rooms of 10 (%d clients) via %s, with pglisten" %
            (events, rate, PARAMS["lat_conns"], kind))
        with Server(kind, {"DATABASE_URL": pg.dsn}) as s:
            wait_pg_up(s)
            listen = subprocess.Popen([PGLISTEN, pg.dsn, "--events", str(events)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            listen.stderr.readline()  # "pglisten: listening"
            try:
                r = loadgen("latency", s, [
                    "--conns", PARAMS["lat_conns"], "--room-size", 10, "--events", events,
                    "--rate", rate, "--pg", pg.dsn, "--senders", PARAMS["lat_senders"],
                    "--token", ctx["token"], "--settle", 1, "--drain", 5])
            finally:
                try:
                    listen.wait(10)
                except subprocess.TimeoutExpired:
                    listen.send_signal(signal.SIGTERM)
                    listen.wait(10)
            r["floor"] = json.loads(listen.stdout.read())
            out[kind] = r
    return out


def wait_pg_up(server, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % server.port) as r:
            if json.load(r).get("postgres") == "up":
                return
        time.sleep(0.1)
    raise RuntimeError("%s never reported postgres up" % server.kind)


def pgbench(pg, seconds, clients):
    nproducts, norders = pg.bench_sizes
    cmd = ["pgbench", "-n", "-c", str(clients), "-j", str(min(clients, 4)), "-T", str(seconds),
           "-f", os.path.join(HERE, "pgbench_orders.sql"), "-D", "nproducts=%d" % nproducts,
           "-D", "norders=%d" % norders, pg.dsn]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError("pgbench failed:\n" + proc.stdout[-2000:])
    lat = re.search(r"latency average = ([0-9.]+) ms", proc.stdout)
    return {"tps": float(m.group(1)), "latency_ms": float(lat.group(1)) if lat else None}


def set_triggers(pg, on):
    verb = "ENABLE" if on else "DISABLE"
    pg.psql('ALTER TABLE public.product %s TRIGGER USER; ALTER TABLE public."order" %s TRIGGER '
            'USER;' % (verb, verb))


# Where the NOTIFY is sent, per migration: realtime.append (005 and later) or realtime.publish
# (001-004). The diagnosis row replaces the call with something as cheap that sends nothing.
NOTIFY_CALLS = [
    ("realtime.append(text,text[],jsonb,jsonb)",
     "IF pg_notify('realtime_events', payload) IS NULL THEN", "IF payload IS NULL THEN"),
    ("realtime.publish(text,text[],jsonb,jsonb)",
     "PERFORM pg_notify('realtime_events', payload);", "NULL;"),
]


def without_notify(pg):
    """(original source, source without the NOTIFY) of the function that sends it, or None."""
    for sig, call, instead in NOTIFY_CALLS:
        if pg.psql("SELECT to_regprocedure(%s) IS NOT NULL", (sig,))[0][0]:
            src = pg.psql("SELECT pg_get_functiondef(%s::regprocedure)", (sig,))[0][0]
            if call in src:
                return src, src.replace(call, instead)
    return None


CAPTURE_TABLES = ('public.product', 'public."order"', 'public.delivery', 'public.product_order')


def set_wal_level(pg, level):
    """wal_level needs a restart; the writers scenario runs with logical for all its variants
    (logical capture needs it) and puts the cluster's setting back afterwards."""
    if pg.psql("SHOW wal_level")[0][0] == level:
        return
    pg.psql("ALTER SYSTEM SET wal_level = %s" % level)
    pg.stop()
    pg.start_again()


def capture_health(server):
    with urllib.request.urlopen("http://127.0.0.1:%d/health" % server.port) as r:
        return json.load(r).get("capture", {})


def capture_off(pg, slot):
    """Back to the trigger path after a logical run: triggers enabled, the default replica
    identity (FULL makes every other variant write more WAL), the slot dropped."""
    pg.psql("SELECT realtime.capture_sync('triggers')")
    for t in CAPTURE_TABLES:
        pg.psql("ALTER TABLE %s REPLICA IDENTITY DEFAULT" % t)
    pg.psql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s", (slot,))


def logical_server(pg, slot):
    s = Server("roomcast", {"DATABASE_URL": pg.dsn, "CAPTURE": "logical", "CAPTURE_SLOT": slot,
                            "CAPTURE_STATUS_INTERVAL_S": "1"})
    deadline = time.monotonic() + 30
    while capture_health(s).get("stream") != "streaming":
        if time.monotonic() > deadline:
            s.stop()
            raise RuntimeError("logical capture never streamed")
        time.sleep(0.1)
    return s


def commit_latency(pg, server, n=300, rate=50.0):
    """Commit -> client latency: a client in room product-1 of server; single-row UPDATEs of
    product 1 at rate/s, each in its own transaction (synchronous_commit on); latency = the
    event's arrival minus the moment COMMIT returned to the writer. Returns percentiles in ms."""
    import asyncio
    import psycopg2
    import websockets

    async def go():
        ws = await websockets.connect("ws://127.0.0.1:%d/ws" % server.port, max_size=None,
                                      extra_headers={"Authorization": "Bearer " + make_token()})
        await ws.send(json.dumps({"type": "join", "payload": {"room": "product-1"}}))
        got = {}

        async def reader():
            while len(got) < n:
                m = json.loads(await ws.recv())
                if m.get("event") == "product_updated":
                    got[m["data"]["stock"]] = time.monotonic()

        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0.3)
        conn = psycopg2.connect(pg.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        # A durable commit, as a real writer's: the test cluster's default (off) would leave
        # the WAL to the WAL writer (up to 200 ms), which the walsender waits for.
        cur.execute("SET synchronous_commit = on")
        cur.execute("SELECT stock FROM public.product WHERE id_product = 1")
        stock = cur.fetchone()[0]
        committed = {}
        loop = asyncio.get_running_loop()
        for i in range(n):
            stock += 1
            await loop.run_in_executor(None, cur.execute,
                                       "UPDATE public.product SET stock = %s WHERE id_product = 1",
                                       (stock,))
            committed[stock] = time.monotonic()
            await asyncio.sleep(1.0 / rate)
        try:
            await asyncio.wait_for(task, 30)
        finally:
            conn.close()
            await ws.close()
        lat = sorted((got[k] - t) * 1e3 for k, t in committed.items() if k in got)
        return {"n": len(lat), "lost": n - len(lat),
                "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2),
                "max_ms": round(lat[-1], 2)}

    return asyncio.run(go())


def writers_rounds(pg, rounds, secs, clients, diag, tag):
    """One fsync setting: the variants interleaved, rounds times, on an emptied outbox each
    time; each figure the median of its rounds, each percentage the median of the round-by-round
    ratios to the run without triggers (the machine is shared, so a round's variants see the
    same background load)."""
    runs = {}

    def run(key, r, what):
        pg.psql("TRUNCATE realtime.events")
        pg.psql("CHECKPOINT")
        say("writers %s: round %d/%d, %s" % (tag, r + 1, rounds, what))
        runs.setdefault(key, []).append(pgbench(pg, secs, clients))

    for r in range(rounds):
        set_triggers(pg, False)
        run("no_triggers", r, "pgbench %d clients %ds without triggers" % (clients, secs))
        set_triggers(pg, True)
        run("triggers", r, "with triggers, nobody listening")
        if diag:
            pg.psql(diag[1])
            try:
                run("triggers_no_notify", r, "with triggers but without NOTIFY (diagnosis)")
            finally:
                pg.psql(diag[0])
        with Server("roomcast", {"DATABASE_URL": pg.dsn}) as s:
            wait_pg_up(s)
            cpu0 = proc_cpu(s.pids())
            run("triggers_roomcast", r, "with triggers and roomcast listening")
            runs["triggers_roomcast"][-1]["roomcast_cpu_s"] = round(proc_cpu(s.pids()) - cpu0, 2)
        slot = "bench_writers"
        s = logical_server(pg, slot)
        try:
            cpu0 = proc_cpu(s.pids())
            run("logical", r, "logical capture, roomcast consuming (no triggers)")
            x = runs["logical"][-1]
            t0 = time.monotonic()
            while capture_health(s).get("lag_s", 1) > 0 and time.monotonic() - t0 < 120:
                time.sleep(0.05)
            x["drain_s"] = round(time.monotonic() - t0, 2)
            x["roomcast_cpu_s"] = round(proc_cpu(s.pids()) - cpu0, 2)
            x["events"] = pg.psql("SELECT count(*) FROM realtime.events")[0][0]
        finally:
            s.stop()
            capture_off(pg, slot)
    out = {}
    base = runs["no_triggers"]
    for key, rs in runs.items():
        out[key] = {"tps": statistics.median(x["tps"] for x in rs),
                    "ratio": statistics.median(x["tps"] / b["tps"] for x, b in zip(rs, base)),
                    "rounds": rs}
    return out


def sc_writers(ctx):
    """pgbench TPS of bench/pgbench_orders.sql without the triggers, with them, with them but
    without the NOTIFY (diagnosis, fsync=off only), with them while roomcast listens, and with
    logical capture (CAPTURE=logical: no trigger, roomcast consuming the slot and storing the
    events), each with fsync=off (the test cluster: synchronous_commit and full_page_writes off
    too) and fsync=on (all three on); all on wal_level=logical (restored afterwards).
    Then commit -> client latency of the trigger path and of the logical path. The top-level
    keys are the fsync=off figures (the table's rows)."""
    pg = ctx["pg"]
    secs, clients = PARAMS["pgbench_seconds"], PARAMS["pgbench_clients"]
    rounds = max(1, PARAMS["pgbench_rounds"])
    diag = without_notify(pg)
    wal0 = pg.psql("SHOW wal_level")[0][0]
    out = {}
    set_wal_level(pg, "logical")
    try:
        for fsync in ("off", "on"):
            # fsync=on is a durable server: synchronous_commit and full_page_writes on as well
            # (the test clusters run all three off).
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                pg.psql("ALTER SYSTEM SET %s = %s" % (setting, fsync))
            pg.psql("SELECT pg_reload_conf()")
            out["fsync_" + fsync] = writers_rounds(pg, rounds, secs, clients,
                                                   diag if fsync == "off" else None,
                                                   "fsync=" + fsync)
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            pg.psql("ALTER SYSTEM RESET %s" % setting)
        pg.psql("SELECT pg_reload_conf()")
        lat = {}
        set_triggers(pg, True)
        with Server("roomcast", {"DATABASE_URL": pg.dsn}) as s:
            wait_pg_up(s)
            say("writers: commit -> client latency, trigger path")
            lat["triggers"] = commit_latency(pg, s)
        s = logical_server(pg, "bench_latency")
        try:
            say("writers: commit -> client latency, logical capture")
            lat["logical"] = commit_latency(pg, s)
        finally:
            s.stop()
            capture_off(pg, "bench_latency")
        out["latency"] = lat
    finally:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            pg.psql("ALTER SYSTEM RESET %s" % setting)
        pg.psql("SELECT pg_reload_conf()")
        set_wal_level(pg, wal0)
    pg.psql("TRUNCATE realtime.events")
    out.update(out["fsync_off"])
    return out


def proc_cpu(pids):
    total = 0.0
    tck = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tck
        except OSError:
            pass
    return total


def sc_notify(ctx):
    out = {}
    for kind in ("roomcast", "baseline"):
        say("notify: POST /api/notify closed loop, %d connections, %gs, %s" %
            (PARAMS["notify_conns"], PARAMS["notify_seconds"], kind))
        with Server(kind) as s:
            p = perf_wrap(s, "notify-" + kind)
            try:
                out[kind] = loadgen("notify", s, ["--duration", PARAMS["notify_seconds"],
                                                  "--rate", 0, "--senders",
                                                  PARAMS["notify_conns"], "--notify-token",
                                                  NOTIFY_TOKEN, "--settle", 0])
            finally:
                perf_stop(p)
    return out


# ---- live SQL rooms ----

# An appointments table as a dashboard would count it: live_rows rows over 1000 businesses
# (negocio_id = id % 1000, indexed), a third of them completed. Room stats-<n> counts business
# n's appointments; a change flips the state of one appointment of each of the first `rooms`
# businesses (ids 0 .. rooms-1), so every live room's row differs after each change.
LIVE_PATTERN = "stats-{negocio_id}"
LIVE_QUERY = ("SELECT count(*) AS total, count(*) FILTER (WHERE estado = 'completada') AS "
              "completadas FROM bench_citas WHERE negocio_id = $1")


def live_fill(pg):
    if getattr(pg, "live_filled", False):
        return
    pg.psql("""
        DROP TABLE IF EXISTS bench_citas;
        CREATE TABLE bench_citas (id int PRIMARY KEY, negocio_id int NOT NULL, estado text NOT NULL);
        INSERT INTO bench_citas SELECT g, g %% 1000,
            CASE WHEN g %% 3 = 0 THEN 'completada' ELSE 'pendiente' END
          FROM generate_series(0, %d - 1) g;
        CREATE INDEX ON bench_citas (negocio_id);
    """.replace("%d", str(PARAMS["live_rows"])).replace("%%", "%"))
    pg.psql("VACUUM ANALYZE bench_citas")
    pg.live_filled = True


def pg_pids(pg):
    """The postmaster's children (backends and background processes)."""
    with open(os.path.join(pg.datadir, "postmaster.pid")) as f:
        return children(int(f.readline()))


def metrics(server):
    """The live rooms' counters: roomcast's /metrics, the baseline's /health."""
    out = {}
    if server.kind == "baseline":
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % server.port, timeout=5) as r:
            h = json.load(r)
        return {"roomcast_live_queries_total": h["live_queries"],
                "roomcast_live_query_seconds_total": h["live_query_seconds"],
                "roomcast_live_rooms": h["live_rooms"]}
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % server.port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("roomcast_live_"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
    return out


def live_run(ctx, kind, conns, room_size, rooms):
    """One server with `conns` clients in live rooms of `room_size`; the window is the load
    generator's hold, during which it commits live_changes changes."""
    pg = ctx["pg"]
    live_fill(pg)
    pg.psql("SELECT realtime.live_room(%s, %s, '1 second')", (LIVE_PATTERN, LIVE_QUERY))
    hold = PARAMS["live_hold"]
    change = ("UPDATE bench_citas SET estado = CASE estado WHEN 'completada' THEN 'pendiente' "
              "ELSE 'completada' END WHERE id < %d" % rooms)
    env = {"DATABASE_URL": pg.dsn, "MAX_CONNECTIONS": conns + 500}
    if kind == "baseline":
        env.update({"LIVE_ROOM_PREFIX": "stats-", "LIVE_QUERY": LIVE_QUERY, "LIVE_EVERY_MS": 1000})
    with Server(kind, env) as s:
        wait_pg_up(s)
        cmd = [LOADGEN, "live", "--port", str(s.port), "--quiet", "--conns", str(conns),
               "--room-size", str(room_size or conns), "--room-prefix", "stats", "--token",
               ctx["token"], "--pg", pg.dsn, "--change-sql", change, "--events",
               str(PARAMS["live_changes"]), "--hold", str(hold), "--settle", "2",
               "--connect-timeout", "240"]
        for pid in s.pids():
            cmd += ["--pid", str(pid)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marks, other = {}, []
        try:
            for line in proc.stderr:
                if "live window" not in line:
                    other.append(line.strip())
                    continue
                which = "start" if "start" in line else "end"
                marks[which] = (time.monotonic(), proc_cpu(s.pids()), proc_cpu(pg_pids(pg)),
                                metrics(s))
                if which == "end":
                    break
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        other += err.strip().splitlines()
        if other:
            say("loadgen: " + " | ".join(other)[:400])
        if not out.strip() or "start" not in marks or "end" not in marks:
            raise RuntimeError("loadgen live failed (%s)" % proc.returncode)
        r = json.loads(out)
    pg.psql("SELECT realtime.drop_live_room(%s)", (LIVE_PATTERN,))
    (t0, rc0, pg0, m0), (t1, rc1, pg1, m1) = marks["start"], marks["end"]
    win = t1 - t0
    r["window_s"] = round(win, 2)
    r["server_cpu_pct"] = round(100 * (rc1 - rc0) / win, 2)
    r["pg_cpu_pct"] = round(100 * (pg1 - pg0) / win, 2)
    q = "roomcast_live_queries_total"
    if q in m1:
        dq = m1[q] - m0.get(q, 0)
        r["queries_per_s"] = round(dq / win, 2)
        ds = m1["roomcast_live_query_seconds_total"] - m0.get("roomcast_live_query_seconds_total", 0)
        r["query_ms"] = round(1e3 * ds / dq, 3) if dq else None
        r["live_rooms"] = m1.get("roomcast_live_rooms")
        r["pushes_metric"] = m1.get("roomcast_live_pushes_total", 0) - m0.get(
            "roomcast_live_pushes_total", 0)
    return r


def live_scenario(ctx, name, conns, room_size, rooms):
    out = {}
    for kind in ("roomcast", "baseline"):
        say("%s: %d clients in %d live rooms of %d, every 1 s, %d changes in %gs, %s" %
            (name, conns, rooms, room_size or conns, PARAMS["live_changes"],
             PARAMS["live_hold"], kind))
        out[kind] = live_run(ctx, kind, conns, room_size, rooms)
    return out


def sc_live1(ctx):
    return live_scenario(ctx, "live1", PARAMS["live_conns"], 0, 1)


def sc_live1000(ctx):
    rooms = PARAMS["live_rooms"]
    return live_scenario(ctx, "live1000", rooms * 10, 10, rooms)


# ---- issue 14: storm, replicas, a million ----

def metric_sums(port, prefixes):
    """Sums of roomcast's /metrics series whose names start with one of prefixes (label sets
    added up per name)."""
    out = {}
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(tuple(prefixes)):
                k, v = line.rsplit(" ", 1)
                name = k.split("{", 1)[0]
                out[name] = out.get(name, 0) + float(v)
    return out


def worker_metric_sums(port, prefixes, workers):
    """metric_sums over every worker sharing the port: each new connection lands on some
    worker (SO_REUSEPORT), /health names it and /metrics on the same keep-alive connection is
    its own; tried until every worker was read (bounded). Returns (sums, workers read)."""
    import http.client
    seen = {}
    for _ in range(60 * workers):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("GET", "/health")
            node = json.loads(c.getresponse().read()).get("node")
            if node in seen:
                continue
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
        except (OSError, ValueError):
            continue
        finally:
            c.close()
        seen[node] = {}
        for line in text.splitlines():
            if line.startswith(tuple(prefixes)):
                k, v = line.rsplit(" ", 1)
                name = k.split("{", 1)[0]
                seen[node][name] = seen[node].get(name, 0) + float(v)
        if len(seen) >= workers:
            break
    sums = {}
    for m in seen.values():
        for k, v in m.items():
            sums[k] = sums.get(k, 0) + v
    return sums, len(seen)


def pg_queries(pg):
    """roomcast's statements so far, from pg_stat_statements: (all, those reading the outbox).
    The load generator's publish calls and this bookkeeping are left out."""
    rows = pg.psql("SELECT query, calls, total_exec_time FROM pg_stat_statements")
    total = replay = ms = 0
    for q, calls, t in rows:
        if re.search(r"realtime\.publish|pg_stat_statements|application_name|pg_stat_", q):
            continue
        total += calls
        ms += t
        if "realtime.events" in q:
            replay += calls
    return total, replay, ms


def workers_for(conns):
    # One process holds ~19 500 sockets: headroom for SO_REUSEPORT's uneven hashing.
    return max(2, -(-conns // 15000))


def sc_storm(ctx):
    """Issue 14: storm_conns clients over workers in rooms of storm_room; events committed
    with realtime.publish at storm_rate throughout; storm_at seconds in, every client drops
    its socket and rejoins with since = the highest id it saw (none: the room position its
    joined carried). Counted: recovered:true
    answers, loss and duplicates over the whole run, time from the drop to the last joined,
    and the statements roomcast sent PostgreSQL from the drop to the end (pg_stat_statements;
    roomcast_replay_queries_total where roomcast has it, summed only without workers)."""
    pg = ctx["pg"]
    if not ctx.get("redis"):
        say("storm: redis-server not found; skipped")
        return None
    m, room = PARAMS["storm_conns"], PARAMS["storm_room"]
    w = PARAMS["storm_workers"] or workers_for(m)
    rate, secs = PARAMS["storm_rate"], PARAMS["storm_seconds"]
    rooms = -(-m // room)
    say("storm: %d clients over %d workers in %d rooms of %d, %g ev/s for %gs, all rejoin "
        "with since at %gs" % (m, w, rooms, room, rate, secs, PARAMS["storm_at"]))
    pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    env = {"WORKERS": w, "REDIS_ADDR": ctx["redis"], "DATABASE_URL": pg.dsn,
           "MAX_CONNECTIONS": 19500}
    marks = {}

    def on_line(line):
        if "storm start" in line:
            marks["start"] = pg_queries(pg)

    with Server("roomcast", env) as s:
        wait_pg_up(s)
        pg.psql("SELECT pg_stat_statements_reset()")
        m0, _ = worker_metric_sums(s.port, ["roomcast_replay"], w)
        cpu0 = proc_cpu(s.pids())
        r = loadgen("latency", s, [
            "--conns", m, "--room-size", room, "--room-prefix", "storm", "--events",
            int(rate * secs), "--rate", rate, "--pg", pg.dsn, "--senders", 4, "--token",
            ctx["token"], "--settle", 2, "--drain", 10, "--rejoin-at", PARAMS["storm_at"],
            "--connect-timeout", PARAMS["connect_timeout"], "--inflight", 32],
            timeout=1800, on_stderr=on_line)
        r["server_cpu_total_s"] = round(proc_cpu(s.pids()) - cpu0, 2)
        m1, read = worker_metric_sums(s.port, ["roomcast_replay"], w)
        r["replay_metric_workers_read"] = read
    end = pg_queries(pg)
    # What they were (whole run): the five most called.
    r["pg_top"] = [[q[:160], c] for q, c in pg.psql(
        "SELECT query, calls FROM pg_stat_statements WHERE query !~ "
        "'realtime\\.publish|pg_stat_|application_name' ORDER BY calls DESC LIMIT 5")]
    if "start" in marks:
        t0, p0, ms0 = marks["start"]
        r["pg_queries"] = end[0] - t0
        r["pg_replay_queries"] = end[1] - p0
        r["pg_exec_ms"] = round(end[2] - ms0, 1)
    r["rooms"] = rooms
    r["workers"] = w
    r["replay_metric"] = {k: v - m0.get(k, 0) for k, v in m1.items()}
    return {"roomcast": r}


def sc_replicas(ctx):
    """Issue 14: `replicas` roomcast processes on one Redis, repl_rooms rooms of repl_room;
    room r's members all on replica r % replicas; repl_events notifies at repl_rate posted
    to the first replica. Counted per replica from its /metrics: bus messages received
    (roomcast_bus_messages_received_total) against its share of the events."""
    if not ctx.get("redis"):
        say("replicas: redis-server not found; skipped")
        return None
    n, rooms, size = PARAMS["replicas"], PARAMS["repl_rooms"], PARAMS["repl_room"]
    events, rate = PARAMS["repl_events"], PARAMS["repl_rate"]
    conns = rooms * size
    say("replicas: %d replicas, %d rooms of %d, each room on one replica, %d events at %g/s" %
        (n, rooms, size, events, rate))
    servers = []
    try:
        for i in range(n):
            servers.append(Server("roomcast", {"REDIS_ADDR": ctx["redis"],
                                               "NODE_ID": "bench-r%d" % i,
                                               "MAX_CONNECTIONS": conns + 500}))
        prefixes = ["roomcast_bus_", "roomcast_redis_", "roomcast_messages_"]
        before = [metric_sums(s.port, prefixes) for s in servers]
        cpu0 = [proc_cpu(s.pids()) for s in servers]
        args = ["--ports", ",".join(str(s.port) for s in servers), "--conns", conns,
                "--room-size", size, "--events", events, "--rate", rate, "--token",
                ctx["token"], "--notify-token", NOTIFY_TOKEN, "--senders",
                PARAMS["notify_senders"], "--settle", 1, "--drain", 5, "--connect-timeout", 300]
        for s in servers[1:]:
            for pid in s.pids():
                args += ["--pid", pid]
        r = loadgen("fanout", servers[0], args)
        after = [metric_sums(s.port, prefixes) for s in servers]
        per = []
        for i, s in enumerate(servers):
            d = {k: after[i][k] - before[i].get(k, 0) for k in after[i]}
            share = sum(1 for e in range(events) if (e % rooms) % n == i)
            # Until roomcast counts bus messages, the messages it routed (from the bus or
            # posted to it) stand in: the same figure when every message is received.
            metric = next((k for k in ("roomcast_bus_messages_received_total",
                                       "roomcast_messages_routed_total") if k in d), None)
            per.append({"port": s.port, "share": share, "metrics": d,
                        "cpu_s": round(proc_cpu(s.pids()) - cpu0[i], 2),
                        "metric": metric, "received": d.get(metric)})
        r["replicas"] = per
    finally:
        for s in servers:
            s.stop()
    return {"roomcast": r}


def loop_stalls(server):
    """The server's "event loop stalled" warnings (a worker that did not run for more than 2 s,
    e.g. starved of CPU; the stall is not counted as its peers' silence): count and longest."""
    n, longest = 0, 0
    with open(server.log.name, errors="replace") as f:
        for line in f:
            if "event loop stalled" in line:
                n += 1
                m = re.search(r'"ms":"(\d+)"', line)
                longest = max(longest, int(m.group(1)) if m else 0)
    return {"count": n, "longest_ms": longest}


TCP_EXT = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDrop", "TCPSynRetrans",
           "TCPTimeouts", "TCPMemoryPressures", "TCPAbortOnMemory", "PruneCalled", "TCPRcvQDrop",
           "TCPBacklogDrop")


def tcp_ext():
    """The kernel's TcpExt counters that say why connects or pings were slow: listen queue
    overflows, SYN retransmissions, retransmission timeouts, TCP memory pressure and drops."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            d = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:])))
            return {k: d.get(k, 0) for k in TCP_EXT}
    return {}


def sc_million(ctx):
    """Issue 14: million_conns WebSocket clients on this machine, over million_workers roomcast
    workers and million_procs load-generator processes (a process may hold 20 000 files),
    from 100 source addresses; all in one room; held million_hold seconds (CPU while
    holding), then one message to the room, counted at every client. Aborted when less than
    million_min_free_gb GB of memory is left."""
    if not ctx.get("redis"):
        say("million: redis-server not found; skipped")
        return None
    n, w, procs = PARAMS["million_conns"], PARAMS["million_workers"], PARAMS["million_procs"]
    avail0, tcp0 = mem_available(), tcp_ext()
    say("million: %d clients over %d workers and %d load-generator processes; %.1f GB "
        "available" % (n, w, procs, avail0 / 2**30))
    env = {"WORKERS": w, "REDIS_ADDR": ctx["redis"], "MAX_CONNECTIONS": 19500}
    with Server("roomcast", env) as s:
        time.sleep(1)
        r = loadgen("fanout", s, [
            "--conns", n, "--procs", procs, "--nsrc", 100, "--rcvbuf", 4096, "--room-size", 0,
            "--room-prefix", "million", "--events", 1, "--rate", 1, "--senders", 1, "--token",
            ctx["token"], "--notify-token", NOTIFY_TOKEN, "--settle", 3, "--hold",
            PARAMS["million_hold"], "--drain", 60, "--connect-timeout", 1200, "--inflight", 32],
            timeout=2400, mem_guard_gb=PARAMS["million_min_free_gb"])
        r["workers"] = w
        r["worker_pids"] = len(s.pids())
        r["loop_stalls"] = loop_stalls(s)
    tcp1 = tcp_ext()
    r["tcp_ext"] = {k: tcp1[k] - tcp0.get(k, 0) for k in tcp1 if tcp1[k] != tcp0.get(k, 0)}
    r["mem_available_before"] = avail0
    r["machine_bytes_per_conn"] = round(
        (avail0 - r["mem_guard"]["min_available"]) / max(1, r["connected"]))
    return {"roomcast": r}


# ---- setup ----

def start_pg(stat_statements=False):
    from pgcluster import PgCluster
    settings = {"max_connections": "100", "shared_buffers": "128MB"}
    if stat_statements:  # storm counts roomcast's statements
        settings["shared_preload_libraries"] = "pg_stat_statements"
    pg = PgCluster(settings=settings)
    try:
        pg.start()
        fill_pg(pg)
    except BaseException:
        pg.cleanup()
        raise
    return pg


def fill_pg(pg):
    for f in ("marketplace.sql", "demo.sql"):
        pg.psql_file(os.path.join(ROOT, "sql", f))
    nproducts, norders = 10000, 10000
    # Bulk set-up of the REST service's tables (sql/marketplace.sql): 100 sellers, 1000
    # clients, 10000 products, 10000 orders of two items each. The REST schema has no index on
    # product_order.id_order; the order trigger's seller lookup needs one, as docs/database.md's DBA
    # section recommends, so it is added here.
    pg.psql("""
        INSERT INTO public.seller (id_seller, seller_name, seller_email, seller_password, phone,
                                   bussines_name, location)
          SELECT g, 'seller ' || g, 's' || g || '@x', 'x', g, 'shop ' || g, 'town'
          FROM generate_series(4, 100) g ON CONFLICT DO NOTHING;
        INSERT INTO public.client (id_client, client_name, client_email, client_password,
                                   address, phone)
          SELECT g, 'client ' || g, g || '@x', 'x', 'street', '555'
          FROM generate_series(4, 1000) g ON CONFLICT DO NOTHING;
        INSERT INTO public.product (id_product, id_seller, product_name, price, stock, status)
          SELECT g, 1 + g % 100, 'product ' || g, 10, 100, 'active'
          FROM generate_series(7, %(np)d) g ON CONFLICT DO NOTHING;
        INSERT INTO public."order" (id_order, id_client, status, total_amount, delivery_type,
                                    id_payment_method)
          SELECT g, 1 + g %% 1000, 'payment_confirmed', 20, 'standard', 1
          FROM generate_series(5, %(no)d) g ON CONFLICT DO NOTHING;
        INSERT INTO public.product_order (id_order, id_product, price_unit, subtotal)
          SELECT g, 1 + (g * 7) %% %(np)d, 10, 10 FROM generate_series(5, %(no)d) g;
        INSERT INTO public.product_order (id_order, id_product, price_unit, subtotal)
          SELECT g, 1 + (g * 13) %% %(np)d, 10, 10 FROM generate_series(5, %(no)d) g;
        CREATE INDEX IF NOT EXISTS product_order_id_order_idx ON public.product_order (id_order);
    """.replace("%(np)d", str(nproducts)).replace("%(no)d", str(norders))
           .replace("%%", "%"))
    pg.psql("VACUUM ANALYZE")
    subprocess.run([ROOMCAST, "migrate"], env=dict(os.environ, DATABASE_URL=pg.dsn), check=True,
                   stdout=subprocess.DEVNULL)
    pg.bench_sizes = (nproducts, norders)


def start_redis():
    import shutil
    if not shutil.which("redis-server"):
        return None, None
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, "127.0.0.1:%d" % port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, None


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            model = m.group(1) if m else ""
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        mem = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1)) // 1024

    def version(cmd):
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True).stdout.strip().splitlines()[0]
        except OSError:
            return None
    return {"cpus": os.cpu_count(), "cpu": model, "mem_mb": mem, "kernel": platform.release(),
            "roomcast": version([ROOMCAST, "version"]), "node": version(["node", "--version"]),
            "postgres": version(["pgbench", "--version"])}


# ---- the table ----

def fmt(v, spec="%.0f"):
    if v is None:
        return "-"
    return spec % v if isinstance(v, (int, float)) else str(v)


def ratio(a, b):
    """How many times better roomcast (a) is than the baseline (b) for a lower-is-better value."""
    if not a or not b:
        return "-"
    return "%.1fx" % (b / a)


def live_rows(res, row):
    for key, title in (("live1", "live room x %d members" % PARAMS["live_conns"]),
                       ("live1000", "%d live rooms of 10" % PARAMS["live_rooms"])):
        lv = res.get(key)
        if not lv:
            continue
        r, b = lv["roomcast"], lv.get("baseline", {})
        rooms = 1 if key == "live1" else PARAMS["live_rooms"]
        # CPU is compared only when both ran about as many queries (within 10 %).
        qr, qb = r.get("queries_per_s") or 0, b.get("queries_per_s") or 0
        same = qr and qb and abs(qr - qb) <= 0.1 * max(qr, qb)

        def vs(a, c):
            return ratio(a, c) if same else "-"
        row(title, "queries/s (every 1 s)", fmt(r.get("queries_per_s"), "%.2f"), "",
            fmt(b.get("queries_per_s"), "%.2f"), "", "%d (one per room)" % rooms)
        row("", "query time (ms / query)", fmt(r.get("query_ms"), "%.3f"), "",
            fmt(b.get("query_ms"), "%.3f"), "", "")
        row("", "server CPU (%)", fmt(r.get("server_cpu_pct"), "%.2f"), "",
            fmt(b.get("server_cpu_pct"), "%.2f"),
            vs(r.get("server_cpu_pct"), b.get("server_cpu_pct")), "")
        row("", "PostgreSQL CPU (%)", fmt(r.get("pg_cpu_pct"), "%.2f"), "",
            fmt(b.get("pg_cpu_pct"), "%.2f"), vs(r.get("pg_cpu_pct"), b.get("pg_cpu_pct")),
            "")

        def pushed(x):
            if not x:
                return "-"
            return "%s / %s (%s missing, %s dup)" % (x.get("pushes"), x.get("expected"),
                                                  x.get("lost"), x.get("dups"))
        row("", "pushes after %d changes / expected" % PARAMS["live_changes"], pushed(r), "",
            pushed(b), "", "one per member per change")

        def lat(x):
            if not x or not x.get("latency", {}).get("count"):
                return "-"
            return "%.0f / %.0f" % (x["latency"]["p50_us"] / 1e3, x["latency"]["p99_us"] / 1e3)
        row("", "change->member p50 / p99 (ms)", lat(r), "", lat(b), "", "<= 1 s interval")


def verdict(ok):
    """pass / miss from a computed condition; '-' when a figure is missing."""
    if ok is None:
        return "-"
    return "pass" if ok else "MISS"


def no_loss(*runs):
    if any(x is None or x.get("lost") is None for x in runs):
        return None
    return all(x.get("lost") == 0 and x.get("dups") == 0 and x.get("misrouted", 0) == 0
               for x in runs)


def cpu_per(x):
    return (x or {}).get("server", {}).get("cpu_us_per_delivery")


def at_most(a, factor, b):
    """a <= factor * b, or None when either is missing."""
    if a is None or b is None:
        return None
    return a <= factor * b


def rounds_note(x):
    n = len(x.get("rounds") or [])
    return ", median of %d" % n if n > 1 else ""


def spread_row(row, x, labels):
    """The lowest and highest round of each side, and of the floor, when there were rounds."""
    rs = x.get("rounds") or []
    if len(rs) < 2:
        return

    def span(label):
        v = [r[label] for r in rs if label and r.get(label)]
        return "%.2f-%.2f" % (min(v), max(v)) if v else ""
    fl = [r["floor_us"] for r in rs]
    row("", "  rounds' range; floor %.2f-%.2f" % (min(fl), max(fl)), span(labels[0]),
        span(labels[1]), span(labels[2]), "", "")


def vs_node(rc, factor, bc, floor):
    """The verdict on "at most factor x Node" for a lower-is-better CPU cost per delivery.

    'floor' instead of MISS when the target itself lies below the kernel's send() floor measured
    in the same pattern (factor x Node < floor: only a server writing less than one send() per
    delivery could meet it) and roomcast is within 1.2x that floor; MISS otherwise."""
    ok = at_most(rc, factor, bc)
    if ok is None or ok:
        return verdict(ok)
    if floor and factor * bc < floor and rc <= 1.2 * floor:
        return "floor"
    return "MISS"


def issue14_rows(res, row):
    sm = res.get("storm")
    if sm:
        r = sm["roomcast"]
        st = r.get("storm", {})
        row("storm %d clients, %d rooms, %d workers" % (r["conns"], r["rooms"], r["workers"]),
            "clients joined / dropped / rejoined", "%s / %s / %s" % (
                r.get("joined"), st.get("dropped"), st.get("rejoined")), "", "", "",
            "all rejoin", verdict(st.get("rejoined") == r.get("joined") == r["conns"]))
        row("", "recovered:true / false, reconnects failed", "%s / %s, %s" % (
            st.get("recovered"), st.get("unrecovered"), st.get("rejoin_failed")), "", "", "",
            "every client recovered:true",
            verdict(st.get("recovered") == r["conns"] and not st.get("unrecovered")))
        row("", "drop -> last joined (s)", fmt(st.get("rejoin_s"), "%.2f"), "", "", "", "")
        row("", "events / deliveries", "%s / %s" % (r.get("sent"), r.get("deliveries")), "",
            "", "", "")
        row("", "lost / duplicates", "%s / %s" % (r.get("lost"), r.get("dups")), "", "", "",
            "0 / 0", verdict(no_loss(r)))
        q = r.get("pg_queries")
        row("", "PostgreSQL statements from the drop (outbox reads)", "%s (%s)" % (
            q, r.get("pg_replay_queries")), "", "", "", "<= %d (rooms)" % r["rooms"],
            verdict(q <= r["rooms"] if q is not None else None))
        row("", "their execution time in PostgreSQL (ms)", fmt(r.get("pg_exec_ms"), "%.0f"),
            "", "", "", "")
        rq = r.get("replay_metric", {}).get("roomcast_replay_queries_total")
        if rq is not None:
            row("", "roomcast_replay_queries_total, %d/%d workers (whole run)" % (
                r.get("replay_metric_workers_read", 0), r["workers"]), fmt(rq), "", "", "",
                "<= %d (rooms)" % r["rooms"], verdict(
                    rq <= r["rooms"] if r.get("replay_metric_workers_read") == r["workers"]
                    else None))
        row("", "server CPU, whole run (s)", fmt(r.get("server_cpu_total_s"), "%.2f"), "", "",
            "", "")
    rp = res.get("replicas")
    if rp:
        r = rp["roomcast"]
        title = "replicas %d x rooms of %d (%d clients)" % (
            len(r["replicas"]), PARAMS["repl_room"], r["conns"])
        row(title, "lost / duplicates", "%s / %s" % (r.get("lost"), r.get("dups")), "", "",
            "", "0 / 0", verdict(no_loss(r)))
        for i, x in enumerate(r["replicas"]):
            got = x.get("received")
            row("", "replica %d: %s / share / sent" % (
                i + 1, (x.get("metric") or "bus messages received")[9:]), "%s / %s / %s"
                % (fmt(got), x["share"], r.get("sent")), "", "", "", "~ share, not total",
                verdict(got <= 1.25 * x["share"] + 10 if got is not None else None))
    mi = res.get("million")
    if mi:
        r = mi["roomcast"]
        g = r.get("mem_guard", {})
        row("million: %d clients, %d workers" % (PARAMS["million_conns"], r["workers"]),
            "clients held", fmt(r.get("connected")) + (
                " (aborted: memory)" if g.get("aborted_at_available") else ""), "", "", "",
            ">= %d" % PARAMS["million_conns"],
            verdict(r.get("connected", 0) >= PARAMS["million_conns"]))
        row("", "connect time (s)", fmt(r.get("connect_s"), "%.1f"), "", "", "", "")
        rk = r["server"].get("rss_per_conn_bytes")
        row("", "server RSS / client, all workers (bytes)", fmt(rk), "", "", "", "")
        row("", "machine memory / client (bytes, kernel + loadgen incl.)",
            fmt(r.get("machine_bytes_per_conn")), "", "", "", "")
        row("", "server CPU holding them (%% of a core, %gs)" % PARAMS["million_hold"],
            fmt(r["server"].get("hold_cpu_pct"), "%.1f"), "", "", "", "")
        row("", "one message: deliveries / expected", "%s / %s" % (
            r.get("deliveries"), r.get("expected")), "", "", "", "all",
            verdict(r.get("expected") == PARAMS["million_conns"] and
                    r.get("deliveries") == r.get("expected")))
        row("", "lost / duplicates", "%s / %s" % (r.get("lost"), r.get("dups")), "", "", "",
            "0 / 0", verdict(no_loss(r)))
        row("", "first / last delivery after send (ms)", "%s / %s" % (
            fmt(r["latency"].get("min_us", 0) / 1e3), fmt(r["latency"].get("max_us", 0) / 1e3)),
            "", "", "", "")
        st = r.get("loop_stalls") or {}
        row("", "closed by the server / worker loop stalls > 2 s (longest ms)", "%s / %s (%s)" % (
            r.get("closed"), st.get("count"), st.get("longest_ms")), "", "", "", "0 / -",
            verdict(r.get("closed") == 0 if r.get("closed") is not None else None))
        row("", "kernel TcpExt counters during the run",
            " ".join("%s=%d" % kv for kv in sorted((r.get("tcp_ext") or {}).items())) or "-",
            "", "", "", "")


def table(res):
    rows = []

    def row(scenario, metric, rc, rcb, bl, vs, target="", ok=""):
        rows.append((scenario, metric, rc, rcb, bl, vs, target, ok))

    idle = res.get("idle")
    for n, runs in sorted((idle or {}).items(), key=lambda kv: int(kv[0])):
        r, b = runs["roomcast"], runs["baseline"]
        rk = r["server"].get("rss_per_conn_bytes")
        bk = b["server"].get("rss_per_conn_bytes")
        row("idle %s" % n, "clients held", fmt(r["connected"]), "",
            fmt(b["connected"]), "", ">= %s in one process" % n,
            verdict(r["connected"] >= int(n)))
        row("", "server RSS / client (bytes)", fmt(rk), "", fmt(bk), ratio(rk, bk),
            "<= 1800 B", verdict(rk <= 1800 if rk else None))
        row("", "connect time (s)", fmt(r.get("connect_s"), "%.1f"), "",
            fmt(b.get("connect_s"), "%.1f"), ratio(r.get("connect_s"), b.get("connect_s")), "")
        row("", "server CPU holding them (%)", fmt(r["server"].get("hold_cpu_pct"), "%.1f"), "",
            fmt(b["server"].get("hold_cpu_pct"), "%.1f"), "", "pings every 25 s")
    fk = res.get("fanout1k")
    if fk:
        r, b = fk["roomcast"], fk["baseline"]
        floors = res.get("floor") or {}
        # The floor in this scenario's own pattern: measured in its rounds, else by the floor
        # scenario of the run.
        fl = fk.get("floor_us") or (floors.get("paced_1k") or floors.get("260") or
                                    {}).get("cpu_us_per_send")
        rc, bc = cpu_per(r), cpu_per(b)
        row("fan-out 1 room x %d, %g/s" % (PARAMS["fan1k_conns"], PARAMS["fan1k_rate"]),
            "deliveries/s", fmt(r.get("deliveries_per_s")), "", fmt(b.get("deliveries_per_s")),
            "", "")
        row("", "lost / duplicates", "%s / %s" % (r.get("lost"), r.get("dups")), "",
            "%s / %s" % (b.get("lost"), b.get("dups")), "", "0 / 0", verdict(no_loss(r, b)))
        row("", "server CPU us / delivery" + rounds_note(fk), fmt(rc, "%.2f"), "",
            fmt(bc, "%.2f"), ratio(rc, bc), "<= 0.6x Node", vs_node(rc, 0.6, bc, fl))
        spread_row(row, fk, ("roomcast", "", "baseline"))
        row("", "  vs send() floor (%s us)" % fmt(fl, "%.2f"),
            "%.2fx" % (rc / fl) if rc and fl else "-", "", "%.2fx" % (bc / fl) if bc and fl
            else "-", "", "<= 1.2x floor", verdict(at_most(rc, 1.2, fl)))
    st = res.get("step")
    if st:
        title = "fan-out 1 room x %d, rising rate" % PARAMS["step_conns"]
        for x in st["ladder"]:
            r, b = x["roomcast"], x["baseline"]

            def how(y):
                return "%s p99 %s ms %s/%s" % ("ok" if y["sustained"] else "NOT", fmt(
                    y["latency"].get("p99_us", 0) / 1e3), y.get("lost"), y.get("dups"))
            row(title, "%g msg/s (%.0f deliveries/s)" % (x["rate"], x["rate"] *
                                                          PARAMS["step_conns"]),
                how(r), "", how(b), "", "sustained: 0 lost, p99 <= %g ms" %
                PARAMS["step_lag_ms"])
            title = ""
        best = st.get("best")
        if best:
            r, b = best["roomcast"], best["baseline"]
            dr = r["deliveries"] / r["server"]["cpu_s"] if r["server"].get("cpu_s") else None
            db = b["deliveries"] / b["server"]["cpu_s"] if b["server"].get("cpu_s") else None
            tf = ((res.get("floor") or {}).get("paced_10k") or {}).get("cpu_us_per_send")
            # The same rule as vs_node, in CPU per delivery (the inverse of this figure).
            row("", "at %g msg/s: deliveries per CPU-second" % best["rate"], fmt(dr), "",
                fmt(db), "%.1fx" % (dr / db) if dr and db else "-", ">= 2x Node",
                vs_node(1e6 / dr, 0.5, 1e6 / db, tf) if dr and db else verdict(None))
            if tf:
                # No target: no server delivering one message per send() does better.
                row("", "  send() floor, same pattern: sends per CPU-second", fmt(1e6 / tf), "",
                    "", "", "")
        else:
            row("", "highest rate both sustain", "none in %s" % PARAMS["step_rates"], "", "",
                "", ">= 2x Node", verdict(None))
    w = res.get("workers")
    if w:
        r = w["roomcast"]
        row("workers %d" % PARAMS["workers_conns"], "clients held (%d workers)" % r["workers"],
            fmt(r["connected"]) + ("" if r.get("loadgen_rc", 0) == 0 else " (gave up)"), "", "",
            "", ">= 100000")
        row("", "connect time (s)", fmt(r.get("connect_s"), "%.1f"), "", "", "", "")
        rk = r["server"].get("rss_per_conn_bytes")
        row("", "server RSS / client (KB)", fmt(rk and rk / 1024, "%.2f"), "", "", "", "")
    fl = res.get("floor")
    if fl:
        row("kernel floor (sendfloor)", "CPU us / send() 260 B | 2.6 KB",
            fmt(fl["260"]["cpu_us_per_send"], "%.2f"), fmt(fl["2600"]["cpu_us_per_send"], "%.2f"),
            "", "", "one write per delivery")
        for key, what in (("paced_1k", "1 000 conns, bursts of 1 000"),
                          ("paced_small", "9 900 conns, bursts of 10"),
                          ("paced_10k", "9 900 conns, bursts of 9 900")):
            if fl.get(key):
                row("", "  %s at %g/s (us)" % (what, fl[key]["rate"]),
                    fmt(fl[key]["cpu_us_per_send"], "%.2f"), "", "", "", "")
    for key, title in (("fanout1", "fan-out 1 room x %d, %g/s" % (PARAMS["fan_conns"],
                                                                  PARAMS["fan_rate"])),
                       ("fanoutS", "fan-out rooms of %d (%d clients), %g/s" %
                        (PARAMS["small_room"], PARAMS["small_conns"], PARAMS["small_rate"]))):
        f = res.get(key)
        if not f:
            continue
        r, rb, b = f["roomcast"], f["roomcast_batch"], f["baseline"]
        row(title, "deliveries/s", fmt(r.get("deliveries_per_s")),
            fmt(rb.get("deliveries_per_s")), fmt(b.get("deliveries_per_s")),
            ratio(b.get("deliveries_per_s"), r.get("deliveries_per_s")), "")
        row("", "lost / duplicates", "%s / %s" % (r.get("lost"), r.get("dups")),
            "%s / %s" % (rb.get("lost"), rb.get("dups")), "%s / %s" % (b.get("lost"), b.get("dups")),
            "", "0 / 0", verdict(no_loss(r, rb, b)))
        row("", "messages per frame", fmt(r.get("per_frame"), "%.1f"),
            fmt(rb.get("per_frame"), "%.1f"), fmt(b.get("per_frame"), "%.1f"), "", "")
        rc, rcb, bc = (x["server"].get("cpu_us_per_delivery") for x in (r, rb, b))
        if key == "fanoutS":
            sf = f.get("floor_us") or ((res.get("floor") or {}).get("paced_small") or
                                       {}).get("cpu_us_per_send")
            row("", "server CPU us / delivery" + rounds_note(f), fmt(rc, "%.2f"),
                fmt(rcb, "%.2f"), fmt(bc, "%.2f"), ratio(rc, bc), "<= 0.4x Node",
                vs_node(rc, 0.4, bc, sf))
            spread_row(row, f, ("roomcast", "roomcast_batch", "baseline"))
            if sf:
                # No target: shows how much of a delivery is the kernel's send in this pattern.
                row("", "  vs send() floor, same pattern (%s us)" % fmt(sf, "%.2f"),
                    "%.2fx" % (rc / sf) if rc else "-", "%.2fx" % (rcb / sf) if rcb else "-",
                    "%.2fx" % (bc / sf) if bc else "-", "", "")
        else:
            row("", "server CPU us / delivery", fmt(rc, "%.2f"), fmt(rcb, "%.2f"),
                fmt(bc, "%.2f"), ratio(rc, bc), "")
        row("", "delivery p50 / p99 (ms)",
            "%s / %s" % (fmt(r["latency"]["p50_us"] / 1e3, "%.0f"),
                         fmt(r["latency"]["p99_us"] / 1e3, "%.0f")),
            "%s / %s" % (fmt(rb["latency"]["p50_us"] / 1e3, "%.0f"),
                         fmt(rb["latency"]["p99_us"] / 1e3, "%.0f")),
            "%s / %s" % (fmt(b["latency"]["p50_us"] / 1e3, "%.0f"),
                         fmt(b["latency"]["p99_us"] / 1e3, "%.0f")), "", "")
    lat = res.get("latency")
    if lat:
        r, b = lat["roomcast"], lat["baseline"]
        for q, name in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
            row("latency %g ev/s, rooms of 10" % PARAMS["lat_rate"] if q == "p50_us" else "",
                "commit->client %s (ms)" % name, fmt(r["latency"][q] / 1e3, "%.2f"), "",
                fmt(b["latency"][q] / 1e3, "%.2f"), ratio(r["latency"][q], b["latency"][q]),
                "")
            row("", "  raw insert+NOTIFY floor %s (ms)" % name,
                fmt(r["floor"]["latency"][q] / 1e3, "%.2f"),
                "", fmt(b["floor"]["latency"][q] / 1e3, "%.2f"), "", "")
            vf = r["latency"][q] / max(r["floor"]["latency"][q], 1)
            row("", "  vs floor", "%.2fx" % vf,
                "", "%.2fx" % (b["latency"][q] / max(b["floor"]["latency"][q], 1)), "",
                "<= 1.2x floor" if q != "p999_us" else "",
                verdict(vf <= 1.2) if q != "p999_us" else "")
        row("", "lost / duplicates", "%s / %s" % (r.get("lost"), r.get("dups")), "",
            "%s / %s" % (b.get("lost"), b.get("dups")), "", "0 / 0", verdict(no_loss(r, b)))
    wr = res.get("writers")
    if wr:
        base = wr["no_triggers"]["tps"]
        title = "writers pgbench %d clients" % PARAMS["pgbench_clients"]
        for k, name in (("no_triggers", "TPS without triggers"), ("triggers", "TPS with triggers"),
                        ("triggers_no_notify", "  triggers minus NOTIFY (diag.)"),
                        ("triggers_roomcast", "TPS triggers + roomcast listening"),
                        ("logical", "TPS logical capture, roomcast consuming")):
            if k in wr:
                share = wr[k].get("ratio", wr[k]["tps"] / base)
                row(title if k == "no_triggers" else "", name,
                    "%.0f (%.0f%%)" % (wr[k]["tps"], 100 * share), "", "", "",
                    ">= 90%" if k == "logical" else ">= 70%" if k == "triggers_roomcast" else "")
        on = wr.get("fsync_on")
        if on:
            for k, name in (("no_triggers", "fsync=on (+sync commit): no triggers"),
                            ("triggers", "fsync=on: TPS with triggers"),
                            ("triggers_roomcast", "fsync=on: TPS triggers + roomcast"),
                            ("logical", "fsync=on: TPS logical capture")):
                if k in on:
                    row("", name, "%.0f (%.0f%%)" % (on[k]["tps"], 100 * on[k]["ratio"]), "", "",
                        "", ">= 90%" if k == "logical" else "")
        for k, name in (("triggers", "commit->client p50/p99 ms, triggers"),
                        ("logical", "commit->client p50/p99 ms, logical")):
            lt = wr.get("latency", {}).get(k)
            if lt:
                row("", name, "%.1f / %.1f" % (lt["p50_ms"], lt["p99_ms"]), "", "", "", "")
    nt = res.get("notify")
    if nt:
        r, b = nt["roomcast"], nt["baseline"]
        row("POST /api/notify", "requests/s", fmt(r.get("requests_per_s")), "",
            fmt(b.get("requests_per_s")), ratio(b.get("requests_per_s"), r.get("requests_per_s")),
            "")
        row("", "server CPU us / request", fmt(r["server"].get("cpu_us_per_request"), "%.1f"), "",
            fmt(b["server"].get("cpu_us_per_request"), "%.1f"),
            ratio(r["server"].get("cpu_us_per_request"), b["server"].get("cpu_us_per_request")),
            "<= 8 us", verdict(at_most(r["server"].get("cpu_us_per_request"), 1, 8.0)))
    live_rows(res, row)
    issue14_rows(res, row)
    head = ("scenario", "metric", "roomcast", "rc batch=1", "baseline", "rc vs base", "target",
            "verdict")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(head)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


# ---- main ----

def smoke():
    """make bench-smoke: a few seconds against a real roomcast; fails unless deliveries were
    counted exactly."""
    token = make_token()
    with Server("roomcast") as s:
        r = loadgen("fanout", s, ["--conns", 50, "--room-size", 10, "--events", 100, "--rate", 50,
                                  "--token", token, "--notify-token", NOTIFY_TOKEN, "--settle",
                                  0.2, "--drain", 3, "--connect-timeout", 20])
    ok = (r["connected"] == 50 and r["joined"] == 50 and r["expected"] == 1000 and
          r["deliveries"] == 1000 and r["unique"] == 1000 and r["lost"] == 0 and r["dups"] == 0
          and r["latency"]["count"] == 1000)
    print("bench-smoke: %s: %d/%d deliveries, %d lost, %d dups, p50 %.0f us, %.2f us CPU each" %
          ("ok" if ok else "FAILED", r["deliveries"], r["expected"], r["lost"], r["dups"],
           r["latency"]["p50_us"], r["server"].get("cpu_us_per_delivery", 0)))
    return 0 if ok else 1


def main():
    if "--smoke" in sys.argv:
        return smoke()
    only = [ALIASES.get(s, s) for s in os.environ.get("BENCH_ONLY", "").split(",") if s]
    todo = [s for s in SCENARIOS if (not only and s not in OPT_IN) or s in only]
    os.makedirs(RESULTS, exist_ok=True)
    started = time.time()
    load0 = os.getloadavg()
    ctx = {"token": make_token()}
    res = {}
    pg = redis = None
    try:
        if {"latency", "writers", "live1", "live1000", "storm"} & set(todo):
            say("starting PostgreSQL")
            pg = ctx["pg"] = start_pg("storm" in todo)
        if {"storm", "replicas", "million"} & set(todo) or (
                "workers" in todo and PARAMS["workers_conns"] > 0):
            redis, ctx["redis"] = start_redis()
        for name in todo:
            t = time.time()
            try:
                r = globals()["sc_" + name](ctx)
            except Exception as e:  # one failed scenario must not lose the others' results
                say("%s failed: %s" % (name, e))
                r = {"error": str(e)}
            if r is not None:
                res[name] = r
                say("%s done in %.0fs" % (name, time.time() - t))
    finally:
        if redis:
            redis.terminate()
            redis.wait()
        if pg:
            pg.cleanup()
    ok_res = {k: v for k, v in res.items() if "error" not in v}
    text = table(ok_res)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    load1 = os.getloadavg()
    doc = {"when": stamp, "seconds": round(time.time() - started), "machine": machine(),
           "loadavg": {"start": load0, "end": load1},
           "params": PARAMS, "results": res, "table": text.splitlines()}
    for path in (os.path.join(RESULTS, "bench-%s.json" % stamp), os.path.join(RESULTS,
                                                                              "latest.json")):
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
    print()
    m = doc["machine"]
    print("roomcast bench, %s: %d CPUs (%s), %d MB, kernel %s, node %s; %ds; load average "
          "%.1f at the start, %.1f at the end (1 min)" %
          (stamp, m["cpus"], m["cpu"], m["mem_mb"], m["kernel"], m["node"], doc["seconds"],
           load0[0], load1[0]))
    print(text)
    for k, v in res.items():
        if "error" in v:
            print("%s: FAILED: %s" % (k, v["error"]))
    print("\nresults: %s" % os.path.join(RESULTS, "bench-%s.json" % stamp))
    return 1 if any("error" in v for v in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
