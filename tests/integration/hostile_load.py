"""A hostile client for test_hostile.py: from one source address, holds up to --sockets TCP
connections to roomcast at once (epoll, one process), each one of five kinds, and reopens the
ones the server closes at a bounded rate until --seconds have passed:

  slow-head   a request head, one byte every --every seconds (never finished)
  slow-body   a POST /api/notify head announcing 64 KiB (no credential), then one body byte
              every --every seconds
  idle-ws     a WebSocket upgrade without a token, then silence (never authenticates)
  half-open   connects and sends nothing; every other one half-closes (FIN) after a partial
              head and never reads again
  reset       a WebSocket upgrade with a valid-looking token, reset (SO_LINGER 0) right after

Prints one JSON line: opened, answered (by HTTP status), closed by the server, resets sent,
peak open and connect failures. Bounded in count and time; it stops by itself."""

import argparse
import base64
import errno
import json
import os
import resource
import selectors
import socket
import struct
import time

KINDS = ("slow-head", "slow-body", "idle-ws", "half-open", "reset")


def upgrade(token=None):
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n").encode()


SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
SLOW_BODY = (b"POST /api/notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 65536\r\n\r\n")


class Conn:
    __slots__ = ("sock", "kind", "connected", "next_at", "pos", "got")

    def __init__(self, sock, kind):
        self.sock, self.kind = sock, kind
        self.connected = False
        self.next_at = 0.0
        self.pos = 0
        self.got = b""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--source", default="127.0.0.2")
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rate", type=int, default=2000, help="new connections per second")
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--token", default="")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.sockets + 256), hard))
    sel = selectors.DefaultSelector()
    conns = {}
    stats = {"opened": 0, "answered": {}, "closed_by_server": 0, "resets_sent": 0,
             "peak_open": 0, "connect_failed": 0, "by_kind": {k: 0 for k in KINDS}}
    t_end = time.monotonic() + args.seconds
    budget = 0.0
    last = time.monotonic()
    n = 0

    def drop(c, by_server):
        sel.unregister(c.sock)
        del conns[c.sock.fileno()]
        if by_server:
            stats["closed_by_server"] += 1
            if c.got.startswith(b"HTTP/1.1 "):
                st = c.got[9:12].decode(errors="replace")
                stats["answered"][st] = stats["answered"].get(st, 0) + 1
        c.sock.close()

    def step(c, now):
        """Sends what is due on a connected socket."""
        s = c.sock
        try:
            if c.kind == "slow-head":
                if c.pos < len(SLOW_HEAD):
                    s.send(SLOW_HEAD[c.pos:c.pos + 1])
                    c.pos += 1
                c.next_at = now + args.every
            elif c.kind == "slow-body":
                if c.pos == 0:
                    s.send(SLOW_BODY)
                    c.pos = 1
                else:
                    s.send(b"{")
                c.next_at = now + args.every
            elif c.kind == "idle-ws":
                if c.pos == 0:
                    s.send(upgrade())
                    c.pos = 1
                c.next_at = float("inf")
            elif c.kind == "half-open":
                if c.pos == 0 and (s.fileno() % 2):
                    s.send(b"GET /health HTTP/1.1\r\nHo")
                    s.shutdown(socket.SHUT_WR)
                c.pos = 1
                c.next_at = float("inf")
            elif c.kind == "reset":
                if c.pos == 0:
                    s.send(upgrade(args.token or None))
                    c.pos = 1
                    c.next_at = now + 0.005
                else:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    stats["resets_sent"] += 1
                    drop(c, False)
        except OSError:
            drop(c, True)

    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        budget = min(budget + (now - last) * args.rate, args.rate / 10)
        last = now
        while budget >= 1 and len(conns) < args.sockets:
            budget -= 1
            kind = KINDS[n % len(KINDS)]
            n += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setblocking(False)
                s.bind((args.source, 0))
                rc = s.connect_ex((args.host, args.port))
            except OSError:
                s.close()
                stats["connect_failed"] += 1
                continue
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                stats["connect_failed"] += 1
                continue
            c = Conn(s, kind)
            conns[s.fileno()] = c
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            stats["opened"] += 1
            stats["by_kind"][kind] += 1
        stats["peak_open"] = max(stats["peak_open"], len(conns))
        for key, ev in sel.select(timeout=0.02):
            c = key.data
            if c.sock.fileno() < 0 or c.sock.fileno() not in conns:
                continue
            if ev & selectors.EVENT_WRITE and not c.connected:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    stats["connect_failed"] += 1
                    drop(c, False)
                    continue
                c.connected = True
                sel.modify(c.sock, selectors.EVENT_READ, c)
                step(c, now)
                continue
            if ev & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    drop(c, True)
                    continue
                if len(c.got) < 64:
                    c.got += data[:64]
        now = time.monotonic()
        for c in [c for c in conns.values() if c.connected and c.next_at <= now]:
            if c.sock.fileno() in conns:
                step(c, now)
    stats["open_at_end"] = len(conns)
    for c in list(conns.values()):
        c.sock.close()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
