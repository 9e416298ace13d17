"""TLS (TLS_CERT_FILE/TLS_KEY_FILE): wss:// and https:// served directly with a self-signed
certificate made in the test; TLS 1.2+ only, HTTP/1.1 only over ALPN, and the same admission
checks as plain connections (401 before the upgrade, origin)."""

import asyncio
import json
import os
import ssl
import subprocess
import tempfile
import urllib.request

import pytest
import websockets

from rc import make_token, recv_json, run, wait_until


@pytest.fixture(scope="module")
def cert():
    d = tempfile.mkdtemp(prefix="roomcast-tls-")
    crt, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    return crt, key


@pytest.fixture
def tls_server(server_factory, cert):
    crt, key = cert
    s = server_factory({"TLS_CERT_FILE": crt, "TLS_KEY_FILE": key,
                        "WS_ORIGINS": "https://good.example"}, wait=False)
    ctx = client_ctx(crt)

    def healthy():
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{s.port}/health", context=ctx,
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    wait_until(healthy, 15, what="https /health")
    return s, ctx


def client_ctx(crt, **kw):
    ctx = ssl.create_default_context(cafile=crt)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def test_https_health_and_wss_round_trip(tls_server):
    s, ctx = tls_server
    with urllib.request.urlopen(f"https://127.0.0.1:{s.port}/health", context=ctx) as r:
        assert json.loads(r.read())["service"] == "roomcast"

    async def go():
        ws = await websockets.connect(f"wss://127.0.0.1:{s.port}/ws", ssl=ctx,
                                      extra_headers={"Authorization":
                                                     "Bearer " + make_token(
                                                         "5", rooms=["product-1"])})
        await ws.send('{"type":"join","payload":{"room":"product-1"}}')
        assert (await recv_json(ws))["type"] == "joined"
        await ws.send('{"type":"broadcast","payload":{"room":"product-1","body":"x"}}')
        assert (await recv_json(ws))["body"] == "x"
        await ws.close()
    run(go())


def test_wss_first_frame_auth(tls_server):
    s, ctx = tls_server

    async def go():
        ws = await websockets.connect(f"wss://127.0.0.1:{s.port}/ws", ssl=ctx)
        await ws.send(json.dumps({"type": "auth", "payload": {"token": make_token("5")}}))
        assert (await recv_json(ws))["type"] == "authenticated"
        await ws.close()
    run(go())


@pytest.mark.parametrize("headers,status", [
    ({"Authorization": "Bearer nope"}, 401),
    ({"Origin": "https://evil.example"}, 403),
])
def test_wss_refusals_before_upgrade(tls_server, headers, status):
    s, ctx = tls_server

    async def go():
        with pytest.raises(websockets.InvalidStatusCode) as e:
            await websockets.connect(f"wss://127.0.0.1:{s.port}/ws", ssl=ctx,
                                     extra_headers=headers)
        assert e.value.status_code == status
    run(go())


def test_old_tls_versions_refused(tls_server, cert):
    s, _ = tls_server
    ctx = client_ctx(cert[0])
    ctx.minimum_version = ssl.TLSVersion.TLSv1  # noqa: the point is an old version
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        urllib.request.urlopen(f"https://127.0.0.1:{s.port}/health", context=ctx, timeout=3)


def test_alpn_offers_http1_only(tls_server, cert):
    s, _ = tls_server
    ctx = client_ctx(cert[0])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    import socket
    with socket.create_connection(("127.0.0.1", s.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
