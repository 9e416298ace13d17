#!/usr/bin/python3
"""A/B in one run: writers TPS without triggers, with logical capture storing with 010's
per-change capture_store (011's down file applied) and with 011's set-based one; interleaved
rounds per fsync setting; after each logical run the drain time and the CPU time of the store's
backend per event (/proc). `ROOMCAST_BIN=<binary> python3 bench/capture_ab.py`; SECS (10),
ROUNDS (2), FSYNC (off,on: fsync, synchronous_commit and full_page_writes together)."""
import os, sys, time, statistics
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE); sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import run as B
secs = int(os.environ.get("SECS", "10")); rounds = int(os.environ.get("ROUNDS", "2"))
M = os.path.join(HERE, "..", "migrations") + "/"
pg = B.start_pg()
tck = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split(); return (int(f[11]) + int(f[12])) / tck
    except OSError:
        return 0.0
try:
    B.set_wal_level(pg, "logical")
    B.set_triggers(pg, False)
    for fs in os.environ.get("FSYNC", "off,on").split(","):
        for st in ("fsync", "synchronous_commit", "full_page_writes"):
            pg.psql("ALTER SYSTEM SET %s = %s" % (st, fs))
        pg.psql("SELECT pg_reload_conf()")
        res = {}
        def run(key, s=None):
            pg.psql("TRUNCATE realtime.events"); pg.psql("CHECKPOINT")
            store = None
            if s:
                rows = pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'roomcast-capture' AND backend_type = 'client backend'")
                store = int(rows[0][0]); c0 = cpu(store)
            r = B.pgbench(pg, secs, 8)
            if s:
                t0 = time.monotonic()
                while B.capture_health(s).get("lag_s", 1) > 0 and time.monotonic() - t0 < 120:
                    time.sleep(0.05)
                r["drain_s"] = round(time.monotonic() - t0, 2)
                r["events"] = pg.psql("SELECT count(*) FROM realtime.events")[0][0]
                r["store_cpu_s"] = round(cpu(store) - c0, 2)
                r["store_us_per_event"] = round(r["store_cpu_s"] / max(1, r["events"]) * 1e6, 1)
            res.setdefault(key, []).append(r); print(fs, key, r, os.getloadavg()[0], flush=True)
        for rd in range(rounds):
            run("no_triggers")
            for variant, f in (("logical_010_store", "011_capture_batch.down.sql"), ("logical_011_store", "011_capture_batch.sql")):
                pg.psql_file(M + f)
                s = B.logical_server(pg, "ab")
                try:
                    run(variant, s)
                finally:
                    s.stop(); B.capture_off(pg, "ab")
        base = res["no_triggers"]
        for k, rs in res.items():
            print("fsync=%s %-20s tps %.0f share %.0f%% %s" % (fs, k, statistics.median(x["tps"] for x in rs),
                  100 * statistics.median(x["tps"] / b["tps"] for x, b in zip(rs, base)),
                  [(x.get("drain_s"), x.get("store_us_per_event")) for x in rs]), flush=True)
finally:
    pg.cleanup()
