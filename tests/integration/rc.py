"""Helpers for integration tests: start real roomcast processes, mint tokens independently of
the code under test (HS256 by hand with hmac), and a raw WebSocket client for the cases a
well-behaved library cannot produce (a peer that never reads, never answers pings)."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import websockets

from pgcluster import free_port

BIN = os.environ.get("ROOMCAST_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "roomcast")
SECRET = "integration-test-secret-0123456789abcdef"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(sub="u1", role=None, ttl=3600, secret=SECRET, alg="HS256", **claims):
    """An HS* JWT built with hmac, not with roomcast's own minting."""
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + ttl}
    if role:
        payload["role"] = role
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    header = {"alg": alg, "typ": "JWT"}
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(secret.encode(), signing.encode(), digest).digest()
    return signing + "." + b64url(sig)


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls pred until it returns a truthy value; bounded by timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Server:
    """One roomcast process on a free port with a log file."""

    def __init__(self, env=None, host="127.0.0.1"):
        self.port = free_port()
        self.host = host
        self.env = dict(os.environ)
        for k in list(self.env):
            if k in ("DATABASE_URL", "REDIS_ADDR", "WS_ORIGINS", "NOTIFY_TOKEN", "BACKEND_URL"):
                del self.env[k]
        self.env.update({"JWT_SECRET": SECRET, "PORT": str(self.port), "HOST": host,
                         "LOG_FORMAT": "json", "LOG_LEVEL": "debug"})
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        self.logfile = tempfile.NamedTemporaryFile(prefix="roomcast-", suffix=".log", delete=False)
        self.proc = None

    @property
    def http(self):
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self):
        return f"ws://{self.host}:{self.port}/ws"

    def start(self, wait=True):
        self.proc = subprocess.Popen([BIN, "serve"], env=self.env, stdout=self.logfile,
                                     stderr=subprocess.STDOUT)
        if wait:
            wait_until(self._healthy, timeout=15, what="roomcast /health")
        return self

    def _healthy(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"roomcast exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def get(self, path, headers=None, method="GET", body=None):
        req = urllib.request.Request(self.http + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def json(self, path, headers=None):
        status, body = self.get(path, headers)
        return status, json.loads(body)

    def admin(self):
        status, body = self.json("/admin/clients",
                                 {"Authorization": "Bearer " + make_token("admin", "admin")})
        assert status == 200, body
        return body

    def metrics(self):
        return self.get("/metrics")[1]

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def logs(self):
        with open(self.logfile.name, "r", errors="replace") as f:
            return f.read()

    def cleanup(self):
        self.stop()
        os.unlink(self.logfile.name)


# ---- WebSocket helpers (websockets library) ----

def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def connect(server, token=None, how="header", path="", **kw):
    """Connects with the token presented the given way: header, query, subprotocol or none."""
    url = server.ws + path
    headers = kw.pop("extra_headers", {})
    subprotocols = kw.pop("subprotocols", None)
    if token and how == "header":
        headers["Authorization"] = "Bearer " + token
    elif token and how == "query":
        url += ("&" if "?" in url else "?") + "token=" + token
    elif token and how == "subprotocol":
        subprotocols = ["roomcast", token]
    # A short close timeout: tests leave clients open and the library would wait 10 s each.
    kw.setdefault("close_timeout", 1)
    return await websockets.connect(url, extra_headers=headers, subprotocols=subprotocols,
                                    max_size=None, **kw)


async def recv_json(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def read_events(ws, n, timeout=10):
    """A join's answer, then n room messages (others, like a pong, are skipped): returns
    (joined, messages). Stops at a recovered:false answer, which nothing follows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    joined, got = None, []
    while joined is None or len(got) < n:
        m = await recv_json(ws, max(0.05, deadline - loop.time()))
        if m.get("type") == "joined":
            assert joined is None, m
            joined = m
            if m["payload"].get("recovered") is False:
                break
        elif "type" not in m:
            got.append(m)
    return joined, got


async def collect(ws, n, timeout=10):
    """Reads n room messages (replies are skipped); fails after timeout seconds."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        m = await recv_json(ws, max(0.05, deadline - time.monotonic()))
        if isinstance(m, dict) and "type" in m:
            continue
        got.append(m)
    return got


async def recv_type(ws, typ, timeout=5):
    """Reads until a reply of the given type arrives (room messages are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {typ} reply within {timeout}s")
        msg = await recv_json(ws, left)
        if isinstance(msg, dict) and msg.get("type") == typ:
            return msg


async def send(ws, typ, **payload):
    await ws.send(json.dumps({"type": typ, "payload": payload}))


async def join(ws, room, **extra):
    await send(ws, "join", room=room, **extra)
    msg = await recv_json(ws)
    return msg


async def closed_code(ws, timeout=10):
    """Waits for the server to close; returns the close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as e:
        return e.code


# ---- raw client ----

class RawClient:
    """A WebSocket client on a plain socket: does the handshake, then only what a test says."""

    def __init__(self, server, token=None, rcvbuf=None, source="127.0.0.1", path="/ws"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((source, 0))
        self.sock.settimeout(5)
        self.sock.connect((server.host, server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n{auth}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        self.status = int(head.split(b" ")[1]) if head else 0
        self.rest = b""

    def send_frame(self, payload, opcode=1, fin=True, mask=True):
        if isinstance(payload, str):
            payload = payload.encode()
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            hdr += key
        self.sock.sendall(hdr + payload)

    def send_json(self, obj):
        self.send_frame(json.dumps(obj))

    def read_frame(self, timeout=5):
        """Returns (opcode, payload) or None at EOF."""
        self.sock.settimeout(timeout)

        def need(n):
            while len(self.rest) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self.rest += chunk
            out, self.rest = self.rest[:n], self.rest[n:]
            return out
        h = need(2)
        if h is None:
            return None
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", need(8))[0]
        data = need(n)
        return (h[0] & 0x0F, data)

    def close(self):
        self.sock.close()


# ---- helpers for limits and HTTP tests ----

def _raw_read_frame_or_eof(client, timeout):
    """read_frame that turns a reset or a torn frame into EOF (None)."""
    try:
        return client.read_frame(timeout)
    except (ConnectionError, TypeError, struct.error):
        return None


def wait_server_close(client, timeout=10):
    """Reads a RawClient without ever answering anything (pings included) until the server
    closes. Returns (close_code or None when the socket just ended, opcodes seen before)."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"server did not close within {timeout}s (saw {seen})")
        try:
            frame = _raw_read_frame_or_eof(client, left)
        except socket.timeout:
            continue
        if frame is None:
            return None, seen
        opcode, payload = frame
        if opcode == 8:
            return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None), seen
        seen.append(opcode)


def raw_exchange(server, data, timeout=5, source=None):
    """Sends bytes on a fresh TCP connection and reads until the server closes or goes quiet
    for `timeout`. Returns (bytes read, True when the server closed)."""
    sock = socket.create_connection((server.host, server.port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    try:
        sock.sendall(data)
        return read_until_eof(sock, timeout)
    finally:
        sock.close()


def read_until_eof(sock, timeout):
    """Reads until EOF/reset (closed=True) or `timeout` seconds of silence (closed=False)."""
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return out, False
        except ConnectionError:
            return out, True
        if not chunk:
            return out, True
        out += chunk


def parse_response(data):
    """Splits one raw HTTP/1.1 response into (status, {lower-case header: value}, body bytes),
    honouring Content-Length so that bytes after it are not taken as body."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        rest = rest[:int(headers["content-length"])]
    return status, headers, rest


def metric_samples(text):
    """Parses Prometheus text with the reference parser; returns {(sample name, ((label,
    value), ...)): value} so both a gauge and a counter of one family name stay apart."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Notifier:
    """POST /api/notify over one keep-alive connection (http.client reopens it if the server
    closed it after a refusal)."""

    def __init__(self, server, token="notify-secret"):
        import http.client
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        self.token = token

    def post(self, body, token=..., content_type="application/json", method="POST",
             headers=None):
        """body: a dict/list (sent as JSON) or bytes. Returns (status, body text, headers)."""
        if not isinstance(body, (bytes, bytearray)) and body is not None:
            body = json.dumps(body).encode()
        hdrs = {}
        token = self.token if token is ... else token
        if token:
            hdrs["Authorization"] = "Bearer " + token
        if content_type:
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        self.conn.request(method, "/api/notify", body=body, headers=hdrs)
        resp = self.conn.getresponse()
        text = resp.read().decode()
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
        return resp.status, text, resp

    def close(self):
        self.conn.close()


async def settle(fut, timeout=30):
    """Lets a run_in_executor future finish (bounded) and marks its exception as seen, for
    the cleanup path of a test that failed while the future was still working."""
    if not fut.done():
        await asyncio.wait([fut], timeout=timeout)
    if fut.done() and not fut.cancelled():
        fut.exception()


# ---- Redis ----

class RedisServer:
    """A throwaway redis-server (Debian's) on a free port of 127.0.0.1, without persistence, in
    a temporary directory. kill()/start() keep the port, so roomcast can reconnect to "the
    same" Redis; freeze()/thaw() SIGSTOP/SIGCONT it.

        r = RedisServer(password="pw").start()
        r.addr          # "127.0.0.1:PORT" for REDIS_ADDR
        r.client()      # a redis-py client
        r.stop()        # in teardown
    """

    def __init__(self, password=None, port=None):
        self.port = port or free_port()
        self.fixed_port = port is not None
        self.started = False
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="roomcast-redis-")
        self.proc = None
        self.frozen = False

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def client(self, **kw):
        import redis
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kw)

    def start(self, timeout=10):
        # free_port() can race with another process taking the port before redis-server
        # binds it; a first start on a port we picked moves on to another one.
        for attempt in range(3):
            try:
                return self._start(timeout)
            except AssertionError:
                if self.fixed_port or self.started or attempt == 2 or self.proc.poll() is None:
                    raise
                self.port = free_port()

    def _start(self, timeout):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.frozen = False

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n"
                                     + self.logs())
            try:
                return self.client(socket_timeout=0.5).ping()
            except Exception:
                return False
        try:
            wait_until(ready, timeout=timeout, what="redis-server to answer PING")
        except BaseException:
            self.kill()
            raise
        self.started = True
        return self

    def kill(self):
        """SIGKILL: connections drop at once, as in a crash."""
        if self.proc and self.proc.poll() is None:
            if self.frozen:
                self.thaw()
            self.proc.kill()
            self.proc.wait()

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def logs(self):
        try:
            with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        self.kill()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- frame-level and process-level helpers (conformance, faults, soak) ----

def build_frame(payload=b"", opcode=1, fin=True, mask=True, rsv=0, length=None, key=None):
    """One WebSocket frame as bytes, for frames RawClient.send_frame cannot express: reserved
    bits (rsv: 0x40 RSV1, 0x20 RSV2, 0x10 RSV3), or a header whose declared length differs from
    the payload actually attached (length=2**63 ...). The payload is masked with key (random
    unless given) when mask is true."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv & 0x70) | (opcode & 0x0F)
    m = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, m | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, m | 127, n)
    if mask:
        key = key if key is not None else os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        hdr += key
    return hdr + payload


class CloseResult:
    """What a peer saw at the end of a connection: close (the server's close frame payload, or
    None when none came), code (its status code, or None when the frame had none), reason,
    eof (the socket ended), frames (opcode, payload) seen before the close."""

    def __init__(self):
        self.close = None
        self.eof = False
        self.frames = []
        self.elapsed = None

    @property
    def code(self):
        if self.close is None or len(self.close) < 2:
            return None
        return struct.unpack("!H", self.close[:2])[0]

    @property
    def reason(self):
        return None if self.close is None else self.close[2:]

    def __repr__(self):
        return (f"CloseResult(code={self.code}, close={self.close!r}, eof={self.eof}, "
                f"frames={[(op, p[:40]) for op, p in self.frames]}, elapsed={self.elapsed})")


def read_close(client, timeout=5, answer=True, until_eof=True):
    """Reads a RawClient until the server's close frame and the end of the socket (or the
    timeout). With answer, a close frame is answered with one echoing its code, as a client
    does; the server then ends the socket at once instead of waiting for the echo. Without
    until_eof it returns right after the close frame. Never raises on a reset: the result
    says what arrived."""
    res = CloseResult()
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            frame = _raw_read_frame_or_eof(client, left)
        except socket.timeout:
            break
        if frame is None:
            res.eof = True
            break
        opcode, payload = frame
        if opcode == 8 and res.close is None:
            res.close = payload
            res.elapsed = time.monotonic() - t0
            if answer:
                # A fixed masking key: after an RSV-bit error lws 4.1.6 misses an echo whose
                # masked first byte has its top bit set (it then holds the socket until its
                # 5 s close timeout), which made the timing depend on a random key.
                try:
                    client.sock.sendall(build_frame(payload[:2], opcode=8,
                                                    key=b"\x01\x02\x03\x04"))
                except OSError:
                    pass
            if not until_eof:
                break
            continue
        res.frames.append((opcode, payload))
    if res.elapsed is None:
        res.elapsed = time.monotonic() - t0
    return res


def proc_rss_kb(pid):
    """VmRSS of a process in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def proc_fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid, seconds):
    """Fraction of one core a process used over the next `seconds`."""
    c0, t0 = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (proc_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def raise_nofile(want):
    """Raises this process's RLIMIT_NOFILE soft limit towards `want` (children inherit it);
    returns the soft limit now in force."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
