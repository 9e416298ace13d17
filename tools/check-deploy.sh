#!/usr/bin/env bash
# `make check-deploy`: builds the Dockerfile and runs docker-compose.yml for real with Debian's
# podman, podman-compose and buildah (no Docker engine, no image registry), then checks the stack
# through nginx and tears it down. Owns the stand-in images (deploy/podman/), the throwaway
# containers.conf, and the cleanup of everything the run created (containers, network, volume,
# podman's firewall chains, net.ipv4.ip_forward).
#
# Checks: image built in docker format keeps its HEALTHCHECK; binary stripped; a fresh install
# started in the worst order (nginx, replicas and migrate first, PostgreSQL and Redis 3 s later)
# comes up: `migrate` retries, then exits 0; secrets reach the containers verbatim;
# `podman healthcheck run` passes on every service;
# through nginx: /health answered by both replicas, WebSocket clients on each replica get a
# POST /api/notify served by the other replica exactly once and a database UPDATE exactly once;
# after one replica is stopped (nginx keeps answering) and started again (usually with a new
# address), all of that once more; `podman-compose down` leaves nothing behind.
#
# Needs root. About 1 min on 2 cores with the images cached, 2-2.5 min from scratch (debootstrap
# ~30 s, stand-in images ~25 s, roomcast image ~25 s), plus the @deploy packages if missing.
# CHECK_DEPLOY_KEEP=1 leaves the stack running on failure for inspection (clean up by rerunning);
# CHECK_DEPLOY_CONTEXT=<dir> builds the image from another tree (say, `git archive HEAD`).
set -euo pipefail
exec </dev/null

cd "$(dirname "$0")/.."
root=$PWD
PYTHON=/usr/bin/python3
PROJECT=${CHECK_DEPLOY_PROJECT:-roomcast-check}
COMPOSE_FILE=$root/docker-compose.yml
started=$SECONDS

say() { printf '[check-deploy %3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
	say "FAIL: $*" >&2
	exit 1
}

if [ "$(id -u)" -ne 0 ]; then
	echo "check-deploy: needs root (rootful podman, firewall rules, ip_forward); run with sudo" >&2
	exit 1
fi

say "packages (tools/deps.sh)"
tools/deps.sh

work=$(mktemp -d /tmp/roomcast-deploy.XXXXXX)

# podman's settings for this run only: the host's /etc/containers stays untouched. runc and
# cgroupfs because there is no systemd; the ulimits because the replicas raise their fd limit.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF=$work/containers.conf
# OCI, podman's default image format, has no HEALTHCHECK: build the docker format.
export BUILDAH_FORMAT=docker

# ---- what the run changes on the host, to put back at exit ----

fw_tools=()
for t in iptables ip6tables; do
	command -v "$t-save" >/dev/null && fw_tools+=("$t")
done
for t in "${fw_tools[@]}"; do
	"$t-save" >"$work/$t.before" 2>/dev/null || true
done
if command -v nft >/dev/null; then
	nft list tables >"$work/nft.before" 2>/dev/null || true
fi
ip_forward_before=$(cat /proc/sys/net/ipv4/ip_forward)
ip6_forward_before=$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || echo "")
aardvark_before=$(pgrep -x aardvark-dns || true)

# Chains that podman's network backends create (netavark, CNI) and that did not exist before the
# run: jumps to them removed, then flushed and deleted. Rules netavark put in chains that existed
# already are removed by netavark itself when the network goes.
restore_firewall() {
	local t table chains c rule
	for t in "${fw_tools[@]}"; do
		for table in filter nat mangle raw; do
			chains=$("$t" -w 5 -t "$table" -S 2>/dev/null | awk '$1 == "-N" { print $2 }' |
				grep -E '^(NETAVARK|CNI)' || true)
			[ -n "$chains" ] || continue
			chains=$(for c in $chains; do
				grep -q "^:$c " "$work/$t.before" 2>/dev/null || echo "$c"
			done)
			[ -n "$chains" ] || continue
			for c in $chains; do
				"$t" -w 5 -t "$table" -S | grep -E -- "-j $c( |\$)" | sed 's/^-A /-D /' |
					while read -r rule; do
						eval "\"\$t\" -w 5 -t \"\$table\" $rule" || true
					done
			done
			for c in $chains; do "$t" -w 5 -t "$table" -F "$c" || true; done
			for c in $chains; do "$t" -w 5 -t "$table" -X "$c" || true; done
		done
	done
	# iptables-nft leaves the tables it created (empty chains, accept policies): drop those
	# that did not exist before and hold no rule.
	if command -v nft >/dev/null; then
		local fam name rules
		nft list tables 2>/dev/null | while read -r _ fam name; do
			grep -qx "table $fam $name" "$work/nft.before" 2>/dev/null && continue
			rules=$(nft list table "$fam" "$name" |
				grep -cvE '^\s*(table|chain|type|policy|\}|$)' || true)
			[ "$rules" = 0 ] && nft delete table "$fam" "$name"
		done
	fi
}

project_containers() {
	podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' 2>/dev/null || true
}

print_logs() {
	local c
	for c in $(project_containers); do
		printf '\n----- podman logs %s (last 80 lines) -----\n' "$c" >&2
		timeout 20 podman logs --tail 80 "$c" >&2 2>&1 || true
	done
	[ -s "$work/compose-up.log" ] &&
		printf '\n----- podman-compose up -----\n%s\n' "$(grep -v '^time=' "$work/compose-up.log" | tail -40)" >&2
	return 0
}

# Everything this project left: containers, pods, volumes, network. Idempotent; also run
# before starting, in case an earlier run was killed.
remove_project() {
	local c v p n
	for c in $(project_containers) "${PROJECT}_probe"; do
		timeout 60 podman rm -f -t 2 "$c" >/dev/null 2>&1 || true
	done
	for p in $(podman pod ls --format '{{.Name}}' 2>/dev/null | grep -x "pod_$PROJECT" || true); do
		timeout 60 podman pod rm -f "$p" >/dev/null 2>&1 || true
	done
	for v in $(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null || true); do
		timeout 60 podman volume rm -f "$v" >/dev/null 2>&1 || true
	done
	for n in $(podman network ls -q --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null || true); do
		timeout 60 podman network rm -f "$n" >/dev/null 2>&1 || true
	done
}

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	set +e
	if [ "$rc" -ne 0 ]; then
		print_logs
		if [ "${CHECK_DEPLOY_KEEP:-}" = 1 ]; then
			say "CHECK_DEPLOY_KEEP=1: stack left running (project $PROJECT, CONTAINERS_CONF=$CONTAINERS_CONF)" >&2
			exit "$rc"
		fi
	fi
	remove_project
	# aardvark-dns exits by itself once no network needs it; only one this run started is ended.
	for pid in $(pgrep -x aardvark-dns); do
		case " $aardvark_before " in *" $pid "*) continue ;; esac
		kill "$pid" 2>/dev/null
	done
	restore_firewall
	echo "$ip_forward_before" >/proc/sys/net/ipv4/ip_forward
	[ -z "$ip6_forward_before" ] || echo "$ip6_forward_before" >/proc/sys/net/ipv6/conf/all/forwarding
	rm -rf "$work"
	if [ "$rc" -eq 0 ]; then
		say "cleaned up; check-deploy passed in $((SECONDS - started))s"
	else
		say "check-deploy FAILED (exit $rc) after $((SECONDS - started))s" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

remove_project

# ---- images ----

# Image names as docker-compose.yml spells them.
compose_image() {
	"$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["services"][sys.argv[2]]["image"])' \
		"$COMPOSE_FILE" "$1"
}

# debian:bookworm(-slim) from Debian's mirror with debootstrap, cached in podman's store.
if podman image exists debian:bookworm-slim && podman image exists debian:bookworm; then
	say "base image debian:bookworm-slim cached"
else
	mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
	say "base image: debootstrap --variant=minbase bookworm from $mirror"
	timeout 900 debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
		{
			tail -20 "$work/debootstrap.log" >&2
			fail "debootstrap failed"
		}
	# The host's apt sources (updates and security too), as debian:bookworm-slim has them.
	if [ -f /etc/apt/sources.list.d/debian.sources ]; then
		rm -f "$work/rootfs/etc/apt/sources.list"
		cp /etc/apt/sources.list.d/debian.sources "$work/rootfs/etc/apt/sources.list.d/"
	fi
	rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
	tar -C "$work/rootfs" -c . | timeout 300 podman import -q - debian:bookworm >/dev/null
	podman tag debian:bookworm debian:bookworm-slim
	rm -rf "$work/rootfs"
fi

# build_image TAG LOG PODMAN-BUILD-ARGS...: builds in docker format (layers cached between
# runs) and removes the image the tag named before, with its now unused build layers, so that
# repeated runs do not pile up images.
build_image() {
	local tag=$1 log=$2 old
	shift 2
	old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
	timeout 1200 podman build -q --format docker -t "$tag" "$@" >"$log" 2>&1 ||
		{
			tail -40 "$log" >&2
			fail "building $tag failed"
		}
	if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
		podman rmi "$old" >/dev/null 2>&1 || true
	fi
}

# Stand-ins for the registry images compose names, built from Debian's packages.
for svc in postgres redis nginx; do
	img=$(compose_image "$svc")
	say "stand-in $img (deploy/podman/$svc.Containerfile)"
	build_image "$img" "$work/build-$svc.log" -f "deploy/podman/$svc.Containerfile" deploy/podman
done

rc_image=$(compose_image roomcast1)
say "roomcast image $rc_image (Dockerfile, --format docker)"
t0=$SECONDS
build_image "$rc_image" "$work/build-roomcast.log" "${CHECK_DEPLOY_CONTEXT:-.}"
say "built in $((SECONDS - t0))s"

healthcheck=$(podman image inspect "$rc_image" | "$PYTHON" -c '
import json, sys
hc = json.load(sys.stdin)[0].get("Healthcheck") or {}
print(" ".join(hc.get("Test") or []))')
case "$healthcheck" in
*/ready*) say "image healthcheck: $healthcheck" ;;
*) fail "image $rc_image has no HEALTHCHECK on /ready (built in OCI format?): '$healthcheck'" ;;
esac

cid=$(timeout 60 podman create "$rc_image")
timeout 60 podman cp "$cid:/usr/local/bin/roomcast" "$work/roomcast.bin"
timeout 60 podman rm "$cid" >/dev/null
if readelf -S "$work/roomcast.bin" | grep -qE '\.(debug_[a-z]+|symtab)\b'; then
	fail "the image's /usr/local/bin/roomcast has debug sections or a symbol table (not stripped)"
fi
say "binary stripped: $(file -b "$work/roomcast.bin" | grep -o 'stripped' || echo '?'), $(stat -c %s "$work/roomcast.bin") bytes"

# ---- the stack ----

JWT_SECRET=$(head -c 32 /dev/urandom | base64)
NOTIFY_TOKEN=$(head -c 32 /dev/urandom | base64)
ROOMCAST_HTTP_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export JWT_SECRET NOTIFY_TOKEN ROOMCAST_HTTP_PORT
base="http://127.0.0.1:$ROOMCAST_HTTP_PORT"

cname() { echo "${PROJECT}_$1_1"; }

# podman-compose 1.0.3 ignores `ipam`: create the networks with pinned subnets beforehand, with
# its labels (it uses a network that exists).
"$PYTHON" -c '
import sys, yaml
for name, net in (yaml.safe_load(open(sys.argv[1])).get("networks") or {}).items():
    for cfg in ((net or {}).get("ipam") or {}).get("config") or []:
        print(name, cfg["subnet"])' "$COMPOSE_FILE" | while read -r net subnet; do
	podman network create --subnet "$subnet" --label "io.podman.compose.project=$PROJECT" \
		--label "com.docker.compose.project=$PROJECT" "${PROJECT}_$net" >/dev/null
	say "network ${PROJECT}_$net with subnet $subnet"
done

# A fresh install in the worst start order: compose creates the containers, then they start
# dependents first (nginx, the replicas, migrate) and PostgreSQL and Redis last, a few seconds
# later. migrate must wait for PostgreSQL (and its first-start init), the replicas reconnect,
# nginx starts with no replica up. (With `up -d` podman-compose starts them in dependency order
# but without waiting for any condition.)
say "podman-compose up --no-start (nginx on host port $ROOMCAST_HTTP_PORT)"
timeout 300 podman-compose -p "$PROJECT" -f "$COMPOSE_FILE" up --no-build --no-start \
	>"$work/compose-up.log" 2>&1 || fail "podman-compose up --no-start failed"
for svc in nginx roomcast1 roomcast2 migrate; do
	timeout 60 podman start "$(cname "$svc")" >/dev/null || fail "podman start $svc failed"
done
say "started nginx, roomcast1, roomcast2, migrate; PostgreSQL and Redis in 3 s"
sleep 3
for svc in redis postgres; do
	timeout 60 podman start "$(cname "$svc")" >/dev/null || fail "podman start $svc failed"
done

# podman runs health checks from systemd timers; without systemd, run them here.
wait_healthy() {
	local c=$1 limit=$2 deadline=$((SECONDS + $2))
	until timeout 20 podman healthcheck run "$c" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || fail "$c not healthy within ${limit}s"
		sleep 1
	done
}

m=$(cname migrate)
deadline=$((SECONDS + 120))
while :; do
	state=$(podman inspect "$m" --format '{{.State.Status}} {{.State.ExitCode}}')
	case "$state" in exited*) break ;; esac
	[ "$SECONDS" -lt "$deadline" ] || fail "migrate still running after 120s"
	sleep 1
done
[ "$state" = "exited 0" ] || fail "migrate ended with '$state'"
retries=$(podman logs "$m" 2>&1 | grep -c 'PQconnectdb failed, retrying' || true)
[ "$retries" -ge 1 ] || fail "migrate started before PostgreSQL but logged no retry"
say "migrate exited 0 after $retries connection retries: $(podman logs "$m" 2>&1 | grep -cE '^(applied|up to date)') lines applied/up to date"

for svc in postgres redis roomcast1 roomcast2 nginx; do
	wait_healthy "$(cname "$svc")" 120
done
say "podman healthcheck run passes on postgres, redis, roomcast1, roomcast2, nginx"

for svc in roomcast1 roomcast2; do
	[ "$(timeout 30 podman exec "$(cname "$svc")" printenv NOTIFY_TOKEN)" = "$NOTIFY_TOKEN" ] ||
		fail "$svc: NOTIFY_TOKEN inside the container differs from the one given to compose"
	[ "$(timeout 30 podman exec "$(cname "$svc")" printenv JWT_SECRET)" = "$JWT_SECRET" ] ||
		fail "$svc: JWT_SECRET inside the container differs from the one given to compose"
done
say "NOTIFY_TOKEN and JWT_SECRET arrive verbatim in both replicas"

# Through nginx: /health from both replicas; a WebSocket client on each replica; POST
# /api/notify served by each replica reaches the client on the other one exactly once; an UPDATE
# of "order" 1 in its own transaction (as the REST service does) reaches both exactly once.
traffic() {
	BASE=$base PG_CONTAINER=$(cname postgres) LABEL=$1 \
		REPLICAS="$(cname roomcast1) $(cname roomcast2)" NODES="roomcast1 roomcast2" \
		timeout 180 "$PYTHON" - <<'PY'
import asyncio, base64, hashlib, hmac, json, os, subprocess, time, urllib.error, urllib.request

import websockets

BASE = os.environ["BASE"]
WS = "ws" + BASE[len("http"):] + "/ws"
LABEL = os.environ["LABEL"]
REPLICAS = dict(zip(os.environ["NODES"].split(), os.environ["REPLICAS"].split()))
ORIGIN = "http://localhost:8080"  # in compose's WS_ORIGINS


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def admin_token():
    now = int(time.time())
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": "301", "role": "admin", "iat": now,
                              "exp": now + 900}).encode())
    sig = hmac.new(os.environ["JWT_SECRET"].encode(), f"{head}.{body}".encode(),
                   hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


TOKEN = admin_token()


def say(msg):
    print(f"  [{LABEL}] {msg}", flush=True)


def http(method, path, body=None, headers=None):
    req = urllib.request.Request(BASE + path, method=method, headers=headers or {},
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def health_from_both():
    """GET /health through nginx until both replicas have answered "healthy" (a replica that
    started before migrate finished reports its trigger check as unknown until it re-checks)."""
    seen, last, deadline = {}, {}, time.monotonic() + 60
    while time.monotonic() < deadline and len(seen) < len(REPLICAS):
        status, body = http("GET", "/health")
        assert status == 200, f"/health through nginx: {status} {body}"
        last[body["node"]] = body
        if body["status"] == "healthy":
            seen[body["node"]] = seen.get(body["node"], 0) + 1
        time.sleep(0.1)
    assert set(seen) == set(REPLICAS), \
        f"/health through nginx: healthy answers only from {seen}; last answers {last}"
    say(f"/health through nginx answered healthy by both replicas: {seen}")


def rooms_on(node):
    p = subprocess.run(["podman", "exec", REPLICAS[node], "curl", "-fsS", "-m", "5", "-H",
                        "Authorization: Bearer " + TOKEN, "http://127.0.0.1:8080/admin/clients"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["rooms"]


async def recv_json(ws, timeout):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def join(ws, room):
    await ws.send(json.dumps({"type": "join", "payload": {"room": room}}))
    deadline = time.monotonic() + 10
    while True:
        msg = await recv_json(ws, max(0.1, deadline - time.monotonic()))
        if isinstance(msg, dict) and msg.get("type") in ("joined", "error"):
            assert msg["type"] == "joined", f"join {room}: {msg}"
            return


async def collect(ws, seconds):
    """Every room message that arrives within the given time."""
    out, deadline = [], time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        try:
            msg = await recv_json(ws, left)
        except asyncio.TimeoutError:
            return out
        out.extend(msg if isinstance(msg, list) else [msg])


async def one_client_per_replica():
    """Connects through nginx until one client sits on each replica (nginx picks)."""
    on, spare = {}, []
    for i in range(20):
        ws = await websockets.connect(WS, extra_headers={"Authorization": "Bearer " + TOKEN},
                                      origin=ORIGIN, open_timeout=10, close_timeout=1)
        probe = f"probe-{LABEL}-{i}"
        await join(ws, probe)
        node = next((n for n in REPLICAS if probe in rooms_on(n)), None)
        assert node, f"{probe} is on no replica"
        if node in on:
            spare.append(ws)
        else:
            on[node] = ws
        if len(on) == len(REPLICAS):
            break
    for ws in spare:
        await ws.close()
    assert len(on) == len(REPLICAS), f"20 connections through nginx all went to {list(on)}"
    say(f"WebSocket clients through nginx on {sorted(on)} (after {i + 1} connections)")
    return on


async def main():
    health_from_both()
    clients = await one_client_per_replica()
    room = f"deploy-{LABEL}"
    for ws in clients.values():
        await join(ws, room)
        await join(ws, "order-1")

    # POSTs through nginx until each replica has served some; the id names the serving node.
    served, sent = {}, []
    for n in range(30):
        status, body = http("POST", "/api/notify",
                            {"event": "deploy_check", "room": room, "data": {"n": n}},
                            {"Authorization": "Bearer " + os.environ["NOTIFY_TOKEN"],
                             "Content-Type": "application/json"})
        assert status == 200, f"POST /api/notify: {status} {body}"
        served.setdefault(body["id"].rsplit("-n", 1)[0], []).append(n)
        sent.append(n)
        if len(served) == len(REPLICAS) and n >= 3:
            break
    assert set(served) == set(REPLICAS), f"nginx sent every POST to {list(served)}"
    for node, ws in clients.items():
        got = [m["data"]["n"] for m in await collect(ws, 2)
               if isinstance(m, dict) and m.get("event") == "deploy_check"]
        other = [n for srv, ns in served.items() if srv != node for n in ns]
        assert sorted(got) == sorted(sent), \
            f"client on {node}: got {sorted(got)}, want each of {sent} once"
        say(f"client on {node} got each of {len(sent)} notifies once "
            f"({len(other)} served by the other replica)")

    # A status change as the REST service makes it: one UPDATE, its own transaction.
    sql = ("UPDATE \"order\" SET status = CASE WHEN status = 'shipped' THEN 'processing' "
           "ELSE 'shipped' END WHERE id_order = 1")
    p = subprocess.run(["podman", "exec", os.environ["PG_CONTAINER"], "psql", "-U", "postgres",
                        "-d", "roomcast", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "UPDATE 1" in p.stdout, p.stdout + p.stderr
    for node, ws in clients.items():
        events = [m for m in await collect(ws, 3) if isinstance(m, dict)
                  and (m.get("meta") or {}).get("table") == "order"]
        ids = [m["id"] for m in events]
        assert len(ids) == 1 and events[0]["meta"]["op"] == "UPDATE", \
            f"client on {node}: order events {events}"
        say(f"client on {node} got the order UPDATE once (event {ids[0]}, room {events[0]['room']})")
    for ws in clients.values():
        await ws.close()


asyncio.run(asyncio.wait_for(main(), 150))
PY
}

say "traffic through nginx"
traffic first

# POST /api/notify without a valid credential: refused through nginx. With NOTIFY_ALLOW_FROM
# (the backend network), a credential-less POST from the backend network is accepted, one from
# nginx's network is not.
notify_code() { # URL [curl args...]: the status code of a notify POST
	local url=$1
	shift
	curl -s -o /dev/null -m 15 -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
		--data '{"event":"deploy_check","room":"deploy-probe","data":{}}' "$@" "$url" || true
}
code=$(notify_code "$base/api/notify")
[ "$code" = 401 ] || fail "POST /api/notify through nginx without a credential answered $code, want 401"
code=$(notify_code "$base/api/notify" -H "Authorization: Bearer not-the-token")
[ "$code" = 401 ] || fail "POST /api/notify through nginx with a wrong token answered $code, want 401"
say "POST /api/notify through nginx without a valid credential: 401"
allow=$(timeout 30 podman exec "$(cname roomcast1)" printenv NOTIFY_ALLOW_FROM || true)
if [ -n "$allow" ]; then
	code=$(timeout 60 podman run --rm --name "${PROJECT}_probe" --net "${PROJECT}_backend" \
		--entrypoint curl "$rc_image" -s -o /dev/null -m 15 -w '%{http_code}' -X POST \
		-H 'Content-Type: application/json' \
		--data '{"event":"deploy_check","room":"deploy-probe","data":{}}' \
		http://roomcast1:8080/api/notify 2>/dev/null || true)
	[ "$code" = 200 ] || fail "credential-less POST /api/notify from the backend network answered $code, want 200 (NOTIFY_ALLOW_FROM=$allow)"
	code=$(timeout 30 podman exec "$(cname nginx)" curl -s -o /dev/null -m 15 -w '%{http_code}' -X POST \
		-H 'Content-Type: application/json' \
		--data '{"event":"deploy_check","room":"deploy-probe","data":{}}' \
		http://roomcast1:8080/api/notify || true)
	[ "$code" = 401 ] || fail "credential-less POST /api/notify from nginx's network answered $code, want 401"
	say "NOTIFY_ALLOW_FROM=$allow: credential-less notify accepted from the backend network, refused from nginx's"
fi

# A replica restart: podman gives it a new address unless the old one is free again; nginx
# resolves names per request, so it must find it again without a restart of its own.
r1=$(cname roomcast1)
addr() { podman inspect "$1" --format '{{range $n, $s := .NetworkSettings.Networks}}{{$n}}={{$s.IPAddress}} {{end}}'; }
old_addr=$(addr "$r1")
say "stopping roomcast1 ($old_addr)"
timeout 60 podman stop -t 10 "$r1" >/dev/null
for i in 1 2 3 4 5 6; do
	code=$(curl -s -o /dev/null -m 15 -w '%{http_code}' "$base/health" || true)
	[ "$code" = 200 ] || fail "GET /health through nginx answered $code while roomcast1 was stopped (request $i)"
done
say "nginx kept answering /health (roomcast2) while roomcast1 was down"
timeout 60 podman start "$r1" >/dev/null
wait_healthy "$r1" 60
say "roomcast1 started again: $old_addr -> $(addr "$r1")"
# Each nginx worker may hold roomcast1's old address for the resolver's validity (1 s, see
# deploy/nginx-start.sh); a notify sent to it then is answered 504, by design, not retried.
sleep 2
traffic "after-restart"

say "podman-compose down -v"
timeout 180 podman-compose -p "$PROJECT" -f "$COMPOSE_FILE" down -v >"$work/compose-down.log" 2>&1 ||
	fail "podman-compose down failed"
# podman-compose 1.0.3 leaves the networks; remove_project (at exit) takes them too.
left=$(project_containers)
[ -z "$left" ] || fail "containers left after down: $left"
[ -z "$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")" ] ||
	fail "volumes left after down -v"
say "stack down"
