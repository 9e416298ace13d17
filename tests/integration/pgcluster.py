"""Throwaway PostgreSQL clusters for the integration tests.

PgCluster runs initdb/pg_ctl from Debian's server binaries in a temporary directory, with trust
authentication on 127.0.0.1 and a unix socket inside that directory, on a free port, and creates
the database `roomcast`. PostgreSQL refuses to run as root, so when the tests run as root the
server commands run as the `postgres` user (runuser) and the directory is chowned to it.

    cluster = PgCluster(settings={"max_connections": "50"})
    cluster.start()
    cluster.psql("SELECT 1")          # -> [(1,)]
    cluster.dsn                        # postgresql://postgres@127.0.0.1:PORT/roomcast
    cluster.stop(); cluster.start_again()
    cluster.cleanup()
"""

import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2

SUPERUSER = "postgres"
DEFAULT_DB = "roomcast"

# Speed over durability: these clusters never outlive an OS crash.
DEFAULT_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "100",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
    "log_checkpoints": "off",
}


def pg_bindir():
    """Directory of initdb/pg_ctl: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return env
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(d + "/initdb")]
    if found:
        return max(found, key=lambda d: int(d.split("/")[-2].split(".")[0]))
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise RuntimeError("PostgreSQL server binaries not found; set PG_BINDIR")


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A TCP port free on 127.0.0.1 right now, taken below the kernel's ephemeral range: a port
    the kernel handed out (bind to 0) may be given to one of the many outgoing connections the
    tests open before the server binds it, and the server then fails with EADDRINUSE."""
    low = _ephemeral_low()
    first = max(1024, low - 12000)
    for _ in range(200):
        port = random.randrange(first, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quote_setting(value):
    value = str(value)
    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        return value
    return "'" + value.replace("'", "''") + "'"


class PgCluster:
    def __init__(self, settings=None, port=None, base_dir=None, dbname=DEFAULT_DB):
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update(settings or {})
        self.port = port
        self.dbname = dbname
        self.bindir = pg_bindir()
        self.dir = tempfile.mkdtemp(prefix="roomcast-pg-", dir=base_dir)
        self.datadir = os.path.join(self.dir, "data")
        self.sockdir = os.path.join(self.dir, "sock")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.running = False
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam(SUPERUSER)
            self._uid, self._gid = pw.pw_uid, pw.pw_gid

    # -- process helpers -------------------------------------------------------------------

    def _run(self, args, check=True, timeout=120):
        """Runs a server binary, as the postgres user when we are root."""
        cmd = [os.path.join(self.bindir, args[0])] + list(args[1:])
        if self._as_root:
            cmd = ["runuser", "-u", SUPERUSER, "--"] + cmd
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, cwd=self.dir)
        if check and proc.returncode != 0:
            raise RuntimeError("%s failed (exit %d):\n%s\n--- server log ---\n%s"
                               % (" ".join(cmd), proc.returncode, proc.stdout, self.logs()))
        return proc

    def _chown(self, path):
        if self._as_root:
            os.chown(path, self._uid, self._gid)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout=60):
        """initdb, configure, start, wait until it accepts connections, create `roomcast`."""
        self._chown(self.dir)
        os.makedirs(self.sockdir, exist_ok=True)
        self._chown(self.sockdir)
        self._run(["initdb", "-D", self.datadir, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                   "--locale=C", "--no-sync"])
        fixed_port = self.port is not None
        last_error = None
        for _ in range(1 if fixed_port else 5):
            if not fixed_port:
                self.port = free_port()
            self._write_conf()
            try:
                self._pg_ctl_start(timeout)
                break
            except RuntimeError as e:
                # Most likely another process took the port between free_port() and bind().
                last_error = e
        else:
            raise last_error
        self._wait_ready(timeout, "postgres")
        conn = self.connect("postgres")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,))
                if cur.fetchone() is None:
                    cur.execute('CREATE DATABASE "%s"' % self.dbname.replace('"', '""'))
        finally:
            conn.close()
        return self

    def _write_conf(self):
        conf = dict(self.settings)
        conf["port"] = str(self.port)
        conf["listen_addresses"] = "127.0.0.1"
        conf["unix_socket_directories"] = self.sockdir
        lines = ["# written by tests/integration/pgcluster.py"]
        for key, value in conf.items():
            lines.append("%s = %s" % (key, _quote_setting(value)))
        # A file of our own, included once from postgresql.conf, so ALTER SYSTEM stays usable.
        path = os.path.join(self.datadir, "roomcast.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._chown(path)
        main = os.path.join(self.datadir, "postgresql.conf")
        with open(main) as f:
            included = "include_if_exists = 'roomcast.conf'" in f.read()
        if not included:
            with open(main, "a") as f:
                f.write("\ninclude_if_exists = 'roomcast.conf'\n")

    def _pg_ctl_start(self, timeout):
        if os.path.exists(self.logfile):
            self._chown(self.logfile)
        self._run(["pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", str(timeout),
                   "start"], timeout=timeout + 30)
        self.running = True

    def _wait_ready(self, timeout, dbname):
        """pg_ctl -w already waits; this bounded loop also covers a slow TCP listener."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn_for(dbname), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL not ready after %ss\n%s" % (timeout, self.logs()))
                time.sleep(0.05)

    def stop(self, mode="fast"):
        """Stops the server (mode: smart, fast or immediate) and waits for it to be gone."""
        if not self.running:
            return
        self._run(["pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop"],
                  timeout=90)
        self.running = False

    def start_again(self, timeout=60):
        """Starts the stopped cluster on the same data directory and port."""
        self._pg_ctl_start(timeout)
        self._wait_ready(timeout, self.dbname)
        return self

    def cleanup(self):
        if self.running:
            try:
                self.stop("immediate")
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -- access ----------------------------------------------------------------------------

    def dsn_for(self, dbname):
        return "postgresql://%s@127.0.0.1:%d/%s" % (SUPERUSER, self.port, dbname)

    @property
    def dsn(self):
        """libpq URI of the `roomcast` database."""
        return self.dsn_for(self.dbname)

    def connect(self, dbname=None, autocommit=True):
        conn = psycopg2.connect(self.dsn_for(dbname or self.dbname), connect_timeout=5)
        conn.autocommit = autocommit
        return conn

    def psql(self, sql, params=None, dbname=None):
        """Runs sql in autocommit mode; returns the rows of the last statement (or None)."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def psql_file(self, path, dbname=None, check=True):
        """The DBA path: `psql -v ON_ERROR_STOP=1 -f path`. Returns the CompletedProcess."""
        psql = os.path.join(self.bindir, "psql")
        if not os.path.exists(psql):
            psql = shutil.which("psql")
        proc = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                               self.dsn_for(dbname or self.dbname), "-f", path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError("psql -f %s failed (exit %d): %s" % (path, proc.returncode, proc.stderr))
        return proc

    def create_database(self, name, template=None):
        """Creates database name (from template if given); returns its DSN."""
        quoted = '"%s"' % name.replace('"', '""')
        sql = "CREATE DATABASE " + quoted
        if template:
            sql += ' TEMPLATE "%s"' % template.replace('"', '""')
        self.psql(sql, dbname="postgres")
        return self.dsn_for(name)

    def drop_database(self, name):
        self.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name.replace('"', '""'),
                  dbname="postgres")

    def logs(self):
        """The server log so far ('' before the first start)."""
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def sql(cluster, db, statement, params=None):
    """Runs one statement in database db of cluster, autocommit; returns its rows or None."""
    import psycopg2
    conn = psycopg2.connect(cluster.dsn_for(db))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()
