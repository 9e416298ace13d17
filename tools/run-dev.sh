#!/usr/bin/env bash
# What `make run` executes after building: a throwaway PostgreSQL (tools/devdb.sh) with the
# marketplace schema and demo rows, roomcast's migrations, stable development secrets, a banner
# with URLs, tokens and example commands, then `roomcast serve` in the foreground.
#
# Ctrl-C stops the server, then the dev PostgreSQL (KEEP_DB=1 leaves it running). PORT picks the
# port (default 8080); REDIS_ADDR, when set, is passed through. Secrets live in the devdb
# directory ($ROOMCAST_DEVDB_DIR, default /tmp/roomcast-dev-pg) so tokens stay valid across runs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"

bin=./roomcast
dir=${ROOMCAST_DEVDB_DIR:-/tmp/roomcast-dev-pg}
export ROOMCAST_DEVDB_DIR=$dir
port=${PORT:-8080}
python=/usr/bin/python3

say() { echo "run-dev: $*" >&2; }
die() {
	say "$*"
	exit 1
}

[ -x "$bin" ] || die "$bin not found; build it first with make"

server_pid=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	if [ "${KEEP_DB:-0}" = 1 ]; then
		say "dev PostgreSQL left running (KEEP_DB=1); stop it with: tools/devdb.sh stop"
	else
		tools/devdb.sh stop || true
	fi
	exit "$rc"
}
trap cleanup EXIT

# --- PostgreSQL, migrations, development secrets (kept with the dev database), tokens ---
# shellcheck source=tools/dev-common.sh
. tools/dev-common.sh
dev_database
dev_secrets
envfile=$dir/dev.env
dev_env_file "$envfile" DATABASE_URL NOTIFY_TOKEN ADMIN_TOKEN SELLER_TOKEN

# --- the server ---
export ENVIRONMENT=development PORT="$port" LOG_FORMAT=text
if [ -n "${REDIS_ADDR:-}" ]; then
	export REDIS_ADDR
	bus="Redis at $REDIS_ADDR"
else
	bus="single node, in-process bus (set REDIS_ADDR=host:port to use Redis)"
fi

# In the background so that Ctrl-C or SIGTERM reaches this script at once; the server gets
# SIGTERM (a graceful shutdown, like SIGINT) and the EXIT trap stops the database after it.
"$bin" serve &
server_pid=$!
trap 'kill -TERM "$server_pid" 2>/dev/null || true' INT TERM

base=http://localhost:$port
for _ in $(seq 1 150); do
	kill -0 "$server_pid" 2>/dev/null || break
	curl -fsS -o /dev/null "$base/health" 2>/dev/null && break
	sleep 0.1
done
kill -0 "$server_pid" 2>/dev/null || {
	rc=0
	wait "$server_pid" || rc=$?
	server_pid=""
	die "roomcast serve exited with status $rc (see above)"
}

admin_label="admin dashboard:"
if [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/admin" || true)" = 404 ]; then
	admin_label="admin dashboard (when built):"
fi

cat <<EOF

==============================================================================
 roomcast development server
------------------------------------------------------------------------------
 HTTP:              $base        (/health /ready /metrics /admin/clients)
 WebSocket:         ws://localhost:$port/ws
 $(printf '%-18s' "$admin_label") $base/admin
 bus:               $bus
 database:          $DATABASE_URL
                    (marketplace schema + demo rows, migrations applied)

 admin token (24h):
   $ADMIN_TOKEN
 seller token (24h, seller 1 of sql/demo.sql, auto-joined to room seller-1):
   $SELLER_TOKEN
 NOTIFY_TOKEN:      $NOTIFY_TOKEN

 All of the above as shell variables:   source $envfile

 Try it (in another terminal, after sourcing $envfile):
   # listen as seller 1 (type {"type":"join","payload":{"room":"product-1"}} to join a room)
   $python -m websockets "ws://localhost:$port/ws?token=\$SELLER_TOKEN"
   #   or: websocat -H "Authorization: Bearer \$SELLER_TOKEN" ws://localhost:$port/ws

   # push a notification to seller 1's room
   curl -sS -X POST $base/api/notify -H "Authorization: Bearer \$NOTIFY_TOKEN" \\
        -H 'Content-Type: application/json' \\
        -d '{"event":"hello","room":"seller-1","data":{"msg":"hi"}}'

   # a database change: product 1 belongs to seller 1 -> product_updated
   psql "\$DATABASE_URL" -c "UPDATE product SET stock = stock - 1 WHERE id_product = 1"

   # who is connected
   curl -sS $base/admin/clients -H "Authorization: Bearer \$ADMIN_TOKEN"

 Ctrl-C stops the server and the dev PostgreSQL (KEEP_DB=1 keeps the database).
==============================================================================

EOF

# Wait for the server; a trapped signal interrupts `wait`, so wait again until it has exited.
rc=0
while :; do
	rc=0
	wait "$server_pid" || rc=$?
	kill -0 "$server_pid" 2>/dev/null || break
done
server_pid=""
# A server stopped by Ctrl-C exits 0; report that as success.
exit "$rc"
