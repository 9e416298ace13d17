#!/usr/bin/python3
"""fsync=on diagnosis: writers TPS without triggers (REPLICA IDENTITY DEFAULT), with REPLICA
IDENTITY FULL only (no slot), and with logical capture; interleaved rounds; WAL bytes per
writer transaction; CPU of the store backend and the walsender.
`ROOMCAST_BIN=<binary> python3 bench/capture_wal.py`; SECS (10), ROUNDS (2), FSYNC (on)."""
import os, sys, time, json, statistics
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE); sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import run as B
secs = int(os.environ.get("SECS", "10")); rounds = int(os.environ.get("ROUNDS", "2"))
pg = B.start_pg()
tck = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split(); return (int(f[11]) + int(f[12])) / tck
    except OSError:
        return 0.0
def wal():
    return int(pg.psql("SELECT pg_current_wal_lsn() - '0/0'")[0][0])
try:
    B.set_wal_level(pg, "logical")
    fs = os.environ.get("FSYNC", "on")
    for st in ("fsync", "synchronous_commit", "full_page_writes"):
        pg.psql("ALTER SYSTEM SET %s = %s" % (st, fs))
    pg.psql("SELECT pg_reload_conf()")
    B.set_triggers(pg, False)
    res = {}
    def run(key, extra=None):
        pg.psql("TRUNCATE realtime.events"); pg.psql("CHECKPOINT")
        w0 = wal(); r = B.pgbench(pg, secs, 8); w1 = wal()
        r["wal_per_tx"] = round((w1 - w0) / (r["tps"] * secs))
        if extra: r.update(extra())
        res.setdefault(key, []).append(r); print(key, r, flush=True)
    for rd in range(rounds):
        run("no_triggers")
        for t in B.CAPTURE_TABLES: pg.psql("ALTER TABLE %s REPLICA IDENTITY FULL" % t)
        run("replica_identity_full_only")
        for t in B.CAPTURE_TABLES: pg.psql("ALTER TABLE %s REPLICA IDENTITY DEFAULT" % t)
        s = B.logical_server(pg, "diag")
        try:
            rows = pg.psql("SELECT pid, backend_type FROM pg_stat_activity WHERE application_name = 'roomcast-capture'")
            pids = {bt: int(p) for p, bt in rows}
            c0 = {k: cpu(p) for k, p in pids.items()}
            def extra():
                t0 = time.monotonic()
                while B.capture_health(s).get("lag_s", 1) > 0 and time.monotonic() - t0 < 120:
                    time.sleep(0.05)
                out = {"drain_s": round(time.monotonic() - t0, 2)}
                out.update({"cpu_" + k.replace(" ", "_"): round(cpu(p) - c0[k], 2) for k, p in pids.items()})
                out["batches"] = B.capture_health(s)
                return out
            run("logical", extra)
        finally:
            s.stop(); B.capture_off(pg, "diag")
    base = res["no_triggers"]
    for k, rs in res.items():
        print("%-28s tps %.0f share %.0f%% wal/tx %d" % (k, statistics.median(x["tps"] for x in rs),
              100 * statistics.median(x["tps"] / b["tps"] for x, b in zip(rs, base)),
              statistics.median(x["wal_per_tx"] for x in rs)))
finally:
    pg.cleanup()
