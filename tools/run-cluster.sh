#!/usr/bin/env bash
# What `make run-cluster` executes after building: a throwaway redis-server, the dev PostgreSQL
# (tools/devdb.sh, migrations applied), and two roomcast replicas on 8081 and 8082 sharing
# JWT_SECRET, NOTIFY_TOKEN, REDIS_ADDR and DATABASE_URL, then a banner showing how to watch a
# broadcast cross replicas. Logs of both replicas are printed here, prefixed [node1]/[node2].
#
# Ctrl-C stops both replicas, Redis, then the dev PostgreSQL (KEEP_DB=1 leaves it running).
# PORT1/PORT2 pick the replica ports, REDIS_PORT the first port tried for Redis (default 6390).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

bin=./roomcast
dir=${ROOMCAST_DEVDB_DIR:-/tmp/roomcast-dev-pg}
export ROOMCAST_DEVDB_DIR=$dir
port1=${PORT1:-8081}
port2=${PORT2:-8082}
python=/usr/bin/python3

say() { echo "run-cluster: $*" >&2; }
die() {
	say "$*"
	exit 1
}

[ -x "$bin" ] || die "$bin not found; build it first with make"
command -v redis-server >/dev/null 2>&1 || die "redis-server not found (Debian package redis-server; make deps)"

port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
for p in "$port1" "$port2"; do
	port_in_use "$p" && die "port $p is in use; pick others with PORT1=... PORT2=..."
done

redis_dir=$(mktemp -d /tmp/roomcast-cluster-redis.XXXXXX)
redis_pid=""
pids=()
db_started=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "$redis_pid" ]; then
		kill -TERM "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	rm -rf "$redis_dir"
	if [ "$db_started" = 1 ]; then
		if [ "${KEEP_DB:-0}" = 1 ]; then
			say "dev PostgreSQL left running (KEEP_DB=1); stop it with: tools/devdb.sh stop"
		else
			tools/devdb.sh stop || true
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
# Until the replicas run, a signal just ends the script (through the EXIT trap).
trap 'exit 130' INT TERM

# --- Redis: throwaway, no persistence, on the first free port from REDIS_PORT ---
redis_port=${REDIS_PORT:-6390}
tries=0
while port_in_use "$redis_port"; do
	tries=$((tries + 1))
	[ "$tries" -lt 50 ] || die "no free port for Redis"
	redis_port=$((redis_port + 1))
done
say "starting redis-server on 127.0.0.1:$redis_port (log $redis_dir/redis.log)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
	--dir "$redis_dir" --logfile "$redis_dir/redis.log" &
redis_pid=$!
for _ in $(seq 1 100); do
	redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
	kill -0 "$redis_pid" 2>/dev/null || die "redis-server exited; see $redis_dir/redis.log"
	sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null 2>&1 || die "redis-server did not answer PING"
export REDIS_ADDR=127.0.0.1:$redis_port

# --- the same dev database, migrations, secrets and tokens as make run ---
db_started=1
# shellcheck source=tools/dev-common.sh
. tools/dev-common.sh
dev_database
dev_secrets
envfile=$dir/cluster.env
dev_env_file "$envfile" DATABASE_URL REDIS_ADDR NOTIFY_TOKEN ADMIN_TOKEN SELLER_TOKEN USER_TOKEN

# --- the replicas ---
export ENVIRONMENT=development LOG_FORMAT=text
start_node() {
	local name=$1 port=$2
	# Each replica's output goes through sed for a prefix; $! is still the replica itself.
	PORT=$port NODE_ID=$name "$bin" serve > >(sed -u "s/^/[$name] /" >&2) 2>&1 &
	pids+=("$!")
}
start_node node1 "$port1"
start_node node2 "$port2"
# From here on Ctrl-C stops the replicas gracefully; the EXIT trap then stops the rest.
trap 'for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done' INT TERM

for port in "$port1" "$port2"; do
	ok=0
	for _ in $(seq 1 150); do
		for pid in "${pids[@]}"; do
			kill -0 "$pid" 2>/dev/null || die "a replica exited during start-up (see above)"
		done
		if curl -fsS "http://localhost:$port/health" 2>/dev/null | grep -q '"redis":"up"'; then
			ok=1
			break
		fi
		sleep 0.1
	done
	[ "$ok" = 1 ] || die "replica on :$port did not report redis up within 15 s"
done

cat <<EOF

==============================================================================
 roomcast cluster: two replicas on one Redis and one PostgreSQL
------------------------------------------------------------------------------
 node1:     http://localhost:$port1   ws://localhost:$port1/ws
 node2:     http://localhost:$port2   ws://localhost:$port2/ws
 Redis:     $REDIS_ADDR   (throwaway, removed on exit)
 database:  $DATABASE_URL

 Tokens (24h) and settings as shell variables:   source $envfile
   ADMIN_TOKEN, SELLER_TOKEN (seller 1 of sql/demo.sql, auto-joined to seller-1),
   USER_TOKEN (user 7), NOTIFY_TOKEN, DATABASE_URL, REDIS_ADDR

 Watch a broadcast cross replicas (three more terminals, each after sourcing the file):
   # 1. a listener on node2, in room product-1
   $python -m websockets "ws://localhost:$port2/ws?token=\$USER_TOKEN"
   > {"type":"join","payload":{"room":"product-1"}}

   # 2. a sender on node1, same room: its broadcast reaches both, once each (product rooms
   #    are receive-only for users: the admin may speak there)
   $python -m websockets "ws://localhost:$port1/ws?token=\$ADMIN_TOKEN"
   > {"type":"join","payload":{"room":"product-1"}}
   > {"type":"broadcast","payload":{"room":"product-1","body":"hello from node1"}}

   # 3. what travels through Redis
   redis-cli -p $redis_port psubscribe 'ws:room:*'

 More: a notify on node1 for a user connected to node2 (user 7 above):
   curl -sS -X POST http://localhost:$port1/api/notify -H "Authorization: Bearer \$NOTIFY_TOKEN" \\
        -H 'Content-Type: application/json' -d '{"event":"hello","user_id":"7","data":{}}'
 a database change, delivered by both replicas' own listeners (seller 1's product):
   psql "\$DATABASE_URL" -c "UPDATE product SET stock = stock - 1 WHERE id_product = 1"
 and freeze Redis to see degraded mode (each replica serves only its own clients, /health
 says "redis":"down" within 5 s), then thaw it and watch both reconnect:
   kill -STOP $redis_pid; sleep 6; curl -s http://localhost:$port1/health; kill -CONT $redis_pid

 Ctrl-C stops both replicas, Redis and the dev PostgreSQL (KEEP_DB=1 keeps the database).
==============================================================================

EOF

# Wait for the replicas; a trapped signal interrupts `wait`, so wait until both have exited.
rc=0
for pid in "${pids[@]}"; do
	while :; do
		r=0
		wait "$pid" || r=$?
		kill -0 "$pid" 2>/dev/null || break
	done
	[ "$r" = 0 ] || rc=$r
done
pids=()
exit "$rc"
