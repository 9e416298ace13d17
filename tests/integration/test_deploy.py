"""The deployment files, checked without a Docker engine: docker-compose.yml parses and refers
only to files and services that exist; deploy/nginx.conf passes `nginx -t` with Debian's nginx
and resolves the replicas per request; the Dockerfile's build stage installs exactly the "@build"
section of tools/packages.txt and its runtime stage the libraries the binary links; the scripts
pass `bash -n` and shellcheck (when installed). `make check-deploy` runs the stack for real.

Run: /usr/bin/python3 -m pytest tests/integration/test_deploy.py
"""

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rc import BIN  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
NGINX_CONF = os.path.join(ROOT, "deploy", "nginx.conf")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
PACKAGES = os.path.join(ROOT, "tools", "packages.txt")
SCRIPTS = [".ci/run", "tools/run-dev.sh", "tools/run-cluster.sh", "tools/check-deploy.sh"]
SOURCED = ["tools/dev-common.sh"]  # read by the scripts above, not run
# POSIX sh scripts that run inside containers (no bash there necessarily).
CONTAINER_SCRIPTS = ["deploy/nginx-start.sh", "deploy/podman/postgres-entrypoint.sh"]
NGINX_START = os.path.join(ROOT, "deploy", "nginx-start.sh")
REPLICAS = ["roomcast1", "roomcast2"]


# ---- helpers ----

def compose():
    with open(COMPOSE) as f:
        return yaml.safe_load(f)


def depends_on(svc):
    """depends_on as {name: condition} for both the list and the mapping form."""
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: "service_started" for name in dep}
    return {name: (v or {}).get("condition", "service_started") for name, v in dep.items()}


def environment(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def bind_mounts(svc):
    """(source, target) of every bind mount, short or long syntax."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/")):
                out.append((parts[0], parts[1]))
        elif v.get("type") == "bind":
            out.append((v["source"], v["target"]))
    return out


def named_volumes(svc):
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            src = v.split(":")[0]
            if ":" in v and not src.startswith((".", "/")):
                out.append(src)
        elif v.get("type") == "volume" and v.get("source"):
            out.append(v["source"])
    return out


def package_sections():
    """tools/packages.txt as {section: [package, ...]}; a "# @name" comment starts a section."""
    sections, current = {}, None
    with open(PACKAGES) as f:
        for line in f:
            line = line.strip()
            m = re.match(r"#\s*@(\w+)\s*$", line)
            if m:
                current = m.group(1)
                sections.setdefault(current, [])
            elif line and not line.startswith("#"):
                assert current, f"package {line!r} before the first '# @section' line"
                sections[current].append(line)
    return sections


def dockerfile_stages():
    """The Dockerfile as a list of (FROM line, [instruction, ...]) with continuations joined
    and comments dropped."""
    with open(DOCKERFILE) as f:
        text = f.read()
    lines, buf = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    stages = []
    for ins in lines:
        if ins.split()[0].upper() == "FROM":
            stages.append((ins, []))
        else:
            assert stages, "instruction before FROM"
            stages[-1][1].append(ins)
    return stages


def apt_packages(instructions):
    """Packages named by `apt-get install` in a stage's RUN instructions."""
    pkgs = []
    for ins in instructions:
        if not ins.upper().startswith("RUN "):
            continue
        for cmd in re.split(r"&&|;|\|\|", ins[4:]):
            words = shlex.split(cmd)
            if len(words) >= 2 and words[0] == "apt-get" and "install" in words:
                after = words[words.index("install") + 1:]
                pkgs += [w for w in after if not w.startswith("-")]
    return pkgs


def instruction(instructions, name):
    return [i[len(name):].strip() for i in instructions if i.upper().startswith(name + " ")]


# ---- (a) docker-compose.yml ----

def test_compose_parses_and_has_the_services():
    c = compose()
    services = c["services"]
    for name in ["postgres", "redis", "migrate", "nginx"] + REPLICAS:
        assert name in services, f"service {name} missing"
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["nginx"]["image"].startswith("nginx:1.25")


def test_compose_dependencies_exist():
    services = compose()["services"]
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dep, cond in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond in valid, f"{name}: bad condition {cond}"
            if cond == "service_healthy":
                hc = services[dep].get("healthcheck") or {}
                assert hc.get("test") and not hc.get("disable"), \
                    f"{name} waits for {dep} healthy, but it has no healthcheck"


def test_compose_referenced_files_exist():
    c = compose()
    declared = set((c.get("volumes") or {}).keys())
    for name, svc in c["services"].items():
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            ctx = os.path.normpath(os.path.join(ROOT, ctx))
            assert os.path.isdir(ctx), f"{name}: build context {ctx} missing"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                                "Dockerfile")
            assert os.path.isfile(os.path.join(ctx, dockerfile)), f"{name}: no {dockerfile}"
        for src, _ in bind_mounts(svc):
            path = os.path.normpath(os.path.join(ROOT, src))
            assert os.path.exists(path), f"{name}: mounted {src} does not exist"
        for vol in named_volumes(svc):
            assert vol in declared, f"{name}: volume {vol} not declared at top level"


def test_compose_postgres_init_scripts_in_order():
    pg = compose()["services"]["postgres"]
    init = sorted((os.path.basename(dst), os.path.normpath(src)) for src, dst in bind_mounts(pg)
                  if dst.startswith("/docker-entrypoint-initdb.d/"))
    assert [src for _, src in init] == ["sql/marketplace.sql", "sql/demo.sql"], init
    assert "pg_isready" in str(pg["healthcheck"]["test"])


def test_compose_redis_and_nginx():
    services = compose()["services"]
    assert "redis-cli" in str(services["redis"]["healthcheck"]["test"])
    ng = services["nginx"]
    mounts = dict(bind_mounts(ng))
    assert os.path.normpath(mounts.get("./deploy/nginx.conf", "")) == "/etc/nginx/nginx.conf"
    # nginx starts through nginx-start.sh, which writes the resolver nginx.conf includes.
    start = mounts.get("./deploy/nginx-start.sh")
    assert start and start in " ".join(ng.get("entrypoint") or []), (start, ng.get("entrypoint"))
    assert any(str(p).split(":")[-1] == "8080" for p in ng.get("ports", [])), ng.get("ports")
    assert ng.get("healthcheck")


def test_compose_migrate_is_one_shot():
    services = compose()["services"]
    m = services["migrate"]
    assert m.get("build") is not None or m.get("image", "").startswith("roomcast")
    cmd = m["command"]
    assert (cmd if isinstance(cmd, str) else cmd[0]) == "migrate"
    assert depends_on(m).get("postgres") == "service_healthy"
    assert "DATABASE_URL" in environment(m)


def test_compose_replicas():
    services = compose()["services"]
    node_ids = set()
    for name in REPLICAS:
        svc = services[name]
        assert svc.get("image") == services["migrate"].get("image"), \
            f"{name} must run the image that migrate builds"
        env = environment(svc)
        for key in ["DATABASE_URL", "REDIS_ADDR", "JWT_SECRET", "NOTIFY_TOKEN", "WS_ORIGINS",
                    "NODE_ID"]:
            assert key in env, f"{name}: {key} not set"
        assert env["REDIS_ADDR"] == "redis:6379"
        assert re.fullmatch(r"\$\{JWT_SECRET:\?[^}]*\}", env["JWT_SECRET"]), \
            "JWT_SECRET must be required from the caller's environment"
        node_ids.add(env["NODE_ID"])
        deps = depends_on(svc)
        assert deps.get("migrate") == "service_completed_successfully"
        assert deps.get("redis") == "service_healthy"
        assert "/ready" in str(svc["healthcheck"]["test"])
    assert len(node_ids) == len(REPLICAS), "NODE_IDs must differ"


def test_compose_no_empty_defaults():
    """podman-compose 1.0.3 does not expand ${VAR:-} or ${VAR-} (an empty default): the text
    itself would become the value, a secret anyone can read in the compose file."""
    def strings(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    bad = [v for v in strings(compose()) if re.search(r"\$\{\w+:?-\}", v)]
    assert not bad, bad
    for name in REPLICAS:
        # Passed through from the caller's environment (null value), as both tools do.
        assert environment(compose()["services"][name])["NOTIFY_TOKEN"] is None


def test_compose_networks_keep_nginx_off_the_trusted_side():
    """Replicas sit on both networks, nginx only on `edge`, the rest only on `backend`, whose
    subnet is pinned so NOTIFY_ALLOW_FROM can name it without trusting what nginx forwards."""
    c = compose()
    services = c["services"]

    def nets(name):
        n = services[name].get("networks") or ["default"]
        return sorted(n if isinstance(n, list) else n.keys())

    assert nets("nginx") == ["edge"]
    for name in REPLICAS:
        assert nets(name) == ["backend", "edge"], name
    for name in ["postgres", "redis", "migrate"]:
        assert nets(name) == ["backend"], name
    subnets = [cfg["subnet"] for cfg in c["networks"]["backend"]["ipam"]["config"]]
    assert len(subnets) == 1
    for name in REPLICAS:
        allow = environment(services[name]).get("NOTIFY_ALLOW_FROM")
        assert allow in (None, subnets[0]), allow


def test_compose_environment_names_are_roomcast_settings():
    """Every variable given to a roomcast container is one `roomcast serve --help` lists."""
    p = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, f"roomcast serve --help exited {p.returncode}: {p.stderr}"
    help_text = p.stdout
    known = set(re.findall(r"^\s+--[\w-]+\s+([A-Z][A-Z0-9_]+)\s", help_text, re.M))
    assert "JWT_SECRET" in known and "DATABASE_URL" in known, help_text
    services = compose()["services"]
    for name in REPLICAS + ["migrate"]:
        unknown = set(environment(services[name])) - known
        assert not unknown, f"{name}: unknown roomcast settings {sorted(unknown)}"


# ---- (b) deploy/nginx.conf ----

def nginx_binary():
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)
    if not path:
        pytest.fail("nginx is not installed (tools/deps.sh installs it)")
    return path


def test_nginx_config_is_valid():
    with open(NGINX_CONF) as f:
        conf = f.read()
    with tempfile.TemporaryDirectory(prefix="roomcast-nginx-") as tmp:
        path = os.path.join(tmp, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        p = subprocess.run([nginx_binary(), "-t", "-q", "-e", "stderr", "-p", tmp + "/",
                            "-c", path, "-g", f"pid {tmp}/nginx.pid;"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr


def test_nginx_resolves_replicas_per_request():
    """No `upstream` block (resolved once at start: a restarted replica's new address is never
    seen); the names go through variables and the resolver file nginx-start.sh writes, both
    replicas are picked evenly and each is the other's fallback."""
    with open(NGINX_CONF) as f:
        conf = f.read()
    assert not re.search(r"^\s*upstream\s", conf, re.M)
    assert re.search(r"^\s*include\s+/run/roomcast-nginx/resolver\*\.conf;", conf, re.M)
    m = re.search(r"split_clients\s+\"[^\"]*\"\s+\$roomcast_first\s*\{(.*?)\}", conf, re.S)
    assert m, "no split_clients for $roomcast_first"
    picks = re.findall(r"^\s*(\d+(?:\.\d+)?%|\*)\s+([\w.-]+);", m.group(1), re.M)
    assert sorted(h for _, h in picks) == REPLICAS, picks
    assert [p for p, _ in picks] == ["50%", "*"], picks
    passes = re.findall(r"proxy_pass\s+(\S+);", conf)
    assert passes and set(passes) == {"http://$roomcast_first:8080",
                                      "http://$roomcast_second:8080"}, passes
    # Every location that proxies to the first pick falls back to the second on 502.
    for name in ["/ws", "/"]:
        assert re.search(r"error_page\s+502(\s+504)?\s+=\s*@\w+;", location(conf, name)), name


def test_nginx_start_writes_the_resolver(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search dns.podman\nnameserver fd00::1\nnameserver 10.89.0.1\n"
                      "nameserver 10.89.0.2\n")
    out = tmp_path / "out"
    env = dict(os.environ, NGINX_RESOLV_CONF=str(resolv), NGINX_RESOLVER_DIR=str(out))
    p = subprocess.run(["sh", NGINX_START, "true"], env=env, capture_output=True, text=True,
                       timeout=10)
    assert p.returncode == 0, p.stderr
    text = (out / "resolver.conf").read_text()
    assert re.search(r"^resolver 10\.89\.0\.1 valid=\d+s ipv6=off;$", text, re.M), text
    # A resolver file nginx accepts, included as nginx.conf includes it.
    with open(NGINX_CONF) as f:
        conf = f.read().replace("/run/roomcast-nginx/resolver*.conf", str(out / "resolver.conf"))
    conf_path = tmp_path / "nginx.conf"
    conf_path.write_text(conf)
    p = subprocess.run([nginx_binary(), "-t", "-q", "-e", "stderr", "-p", str(tmp_path) + "/",
                        "-c", str(conf_path), "-g", f"pid {tmp_path}/nginx.pid;"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    resolv.write_text("nameserver fd00::1\n")
    p = subprocess.run(["sh", NGINX_START, "true"], env=env, capture_output=True, text=True,
                       timeout=10)
    assert p.returncode != 0 and "no IPv4 nameserver" in p.stderr


def location(conf, name):
    m = re.search(r"location\s+=?\s*%s\s*\{(.*?)\n\s*\}" % re.escape(name), conf, re.S)
    assert m, f"no location {name}"
    return m.group(1)


def test_nginx_websocket_location():
    with open(NGINX_CONF) as f:
        conf = f.read()
    ws = location(conf, "/ws")
    assert re.search(r"proxy_http_version\s+1\.1;", ws)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", ws)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", ws)
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", conf)
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;", ws)
    timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", ws)
    # Longer than PONG_TIMEOUT_S (60), which is longer than PING_INTERVAL_S.
    assert timeout and int(timeout.group(1)) > 60
    # Upgrades need fresh upstream connections (roomcast refuses one on a kept-alive one).
    assert not re.search(r"^\s*keepalive\s", conf, re.M)
    # No query strings (?token=) in the access log.
    assert "$request " not in conf and "$request_uri" not in conf and "$args" not in conf
    # The fallback location upgrades too.
    ws2 = location(conf, "@ws_second")
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", ws2)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", ws2)
    # The other locations set no header of their own and take the server's.
    assert not re.search(r"proxy_set_header", location(conf, "/"))
    server = conf[conf.index("server {"):]
    assert re.search(r"^ {8}proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;",
                     server, re.M)


# ---- (c) Dockerfile ----

def test_dockerfile_build_stage_matches_packages_txt():
    sections = package_sections()
    assert "build" in sections, "tools/packages.txt has no '# @build' section"
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a multi-stage Dockerfile"
    build_from, build = stages[0]
    assert re.match(r"FROM\s+debian:bookworm-slim\s+AS\s+build$", build_from, re.I), build_from
    pkgs = apt_packages(build)
    assert len(pkgs) == len(set(pkgs)), f"duplicates in {pkgs}"
    assert sorted(pkgs) == sorted(sections["build"]), (
        "Dockerfile build stage and the @build section of tools/packages.txt differ: "
        f"only in Dockerfile {sorted(set(pkgs) - set(sections['build']))}, "
        f"only in packages.txt {sorted(set(sections['build']) - set(pkgs))}")
    assert any(re.search(r"\bmake\s+roomcast\b", i) for i in build)
    # The shipped binary is stripped in the build stage.
    assert any(re.search(r"\binstall\s+(-\S+\s+)*-s\b|\bstrip\b", i) for i in build), build


def runtime_stage():
    return dockerfile_stages()[-1]


def test_dockerfile_runtime_stage():
    rt_from, rt = runtime_stage()
    assert re.match(r"FROM\s+debian:bookworm-slim\s*$", rt_from, re.I), rt_from
    pkgs = apt_packages(rt)
    assert not [p for p in pkgs if p.endswith("-dev") or p == "build-essential"], pkgs
    # lws loads its libuv event-loop plugin at run time, so no NEEDED entry names it.
    assert "libwebsockets-evlib-uv" in pkgs
    assert any(re.search(r"COPY\s+--from=build\s+\S*roomcast\s+/usr/local/bin/roomcast$", i)
               for i in rt)
    users = instruction(rt, "USER")
    assert users and users[-1] not in ("root", "0"), users
    assert instruction(rt, "EXPOSE") == ["8080"]
    assert any("/ready" in h for h in instruction(rt, "HEALTHCHECK"))
    assert instruction(rt, "ENTRYPOINT") == ['["roomcast"]']
    assert instruction(rt, "CMD") == ['["serve"]']


def package_of_library(soname):
    """The Debian package shipping a shared library, via ldconfig's cache and dpkg -S."""
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    m = re.search(r"^\s*%s \(.*?\) => (\S+)$" % re.escape(soname), out, re.M)
    if not m:
        return None
    path = os.path.realpath(m.group(1))
    candidates = {path, m.group(1)}
    for p in list(candidates):  # merged /usr: dpkg may know the file under /lib
        if p.startswith("/usr/lib/"):
            candidates.add(p[len("/usr"):])
        elif p.startswith("/lib/"):
            candidates.add("/usr" + p)
    for p in candidates:
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].strip()
    return None


def test_dockerfile_runtime_packages_cover_the_binary():
    """Each library the binary links directly comes from a package the runtime stage installs
    (this machine runs the image's Debian release, so its packages are the image's)."""
    if not shutil.which("readelf") or not shutil.which("dpkg"):
        pytest.skip("needs readelf and dpkg")
    # The image ships the release build (a sanitized ROOMCAST_BIN links more).
    release = os.path.join(ROOT, "build", "rel", "roomcast")
    if not os.path.exists(release):
        pytest.skip("no release build (make roomcast)")
    out = subprocess.run(["readelf", "-d", release], capture_output=True, text=True,
                         check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    assert needed
    pkgs = set(apt_packages(runtime_stage()[1]))
    base = {"libc6"}  # in debian:bookworm-slim
    missing = {}
    for lib in needed:
        pkg = package_of_library(lib)
        assert pkg, f"no package found for {lib}"
        if pkg not in pkgs and pkg not in base:
            missing[lib] = pkg
    assert not missing, f"runtime stage lacks {missing}"


def test_dockerignore_keeps_the_build_inputs():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        patterns = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    inputs = ["Makefile", "src/main.c", "include/config.h", "migrations/001_realtime.sql",
              "tools/embed-sql.sh"]
    for path in inputs:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        hits = [p for p in patterns if not p.startswith("!")
                for pre in prefixes if fnmatch.fnmatch(pre, p.lstrip("/"))]
        assert not hits, f".dockerignore excludes {path} (by {hits})"


# ---- (d) scripts ----

@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script):
    path = os.path.join(ROOT, script)
    assert os.access(path, os.X_OK), f"{script} is not executable"
    with open(path) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    p = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("script", CONTAINER_SCRIPTS)
def test_container_script_syntax(script):
    path = os.path.join(ROOT, script)
    with open(path) as f:
        assert f.read().startswith("#!/bin/sh\n")
    p = subprocess.run(["sh", "-n", path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("script", SCRIPTS + SOURCED + CONTAINER_SCRIPTS)
def test_script_shellcheck(script):
    sc = shutil.which("shellcheck")
    if not sc:
        pytest.skip("shellcheck not installed")
    # -x follows `. tools/dev-common.sh` (paths relative to the repository root).
    p = subprocess.run([sc, "-x", os.path.join(ROOT, script)], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_packages_txt_sections():
    sections = package_sections()
    assert set(sections) <= {"build", "test", "deploy", "dev"}, sections.keys()
    everything = [p for pkgs in sections.values() for p in pkgs]
    assert len(everything) == len(set(everything)), "a package is listed twice"
    for pkg in ["python3-yaml", "nginx"]:
        assert pkg in everything
    # make check-deploy: containers without Docker.
    for pkg in ["podman", "podman-compose", "buildah", "runc", "debootstrap"]:
        assert pkg in sections.get("deploy", []), pkg
