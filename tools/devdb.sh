#!/usr/bin/env bash
# Throwaway PostgreSQL for `make run`: `start` creates (once) and starts a cluster in
# $ROOMCAST_DEVDB_DIR (default /tmp/roomcast-dev-pg) with database roomcast, the marketplace
# schema and demo rows, and prints its DATABASE_URL on stdout; `url` prints it; `stop` stops it;
# `apps-demo` loads sql/apps-demo.sql (after the migrations: `APPS_DEMO=1 make run` does).
# Migrations are not applied here: `roomcast migrate` does that.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dir=${ROOMCAST_DEVDB_DIR:-/tmp/roomcast-dev-pg}
data=$dir/data
sock=$dir/sock
log=$dir/postgres.log
default_port=${ROOMCAST_DEVDB_PORT:-54329}

say() { echo "devdb: $*" >&2; }
die() {
	say "$*"
	exit 1
}

bindir() {
	if [ -n "${PG_BINDIR:-}" ]; then
		echo "$PG_BINDIR"
		return
	fi
	local d
	d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5 -n | tail -n1)
	if [ -n "$d" ] && [ -x "$d/initdb" ]; then
		echo "$d"
		return
	fi
	command -v initdb >/dev/null 2>&1 || die "PostgreSQL server binaries not found; set PG_BINDIR"
	dirname "$(command -v initdb)"
}
BIN=$(bindir)

# PostgreSQL refuses to run as root: run its binaries as postgres then.
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

url() {
	echo "postgresql://postgres@127.0.0.1:$(cat "$dir/port")/roomcast"
}

running() {
	[ -f "$data/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start() {
	mkdir -p "$dir" "$sock"
	[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir" "$sock"
	if ! [ -f "$data/PG_VERSION" ]; then
		say "initdb in $data"
		as_pg "$BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
	fi
	if running; then
		say "already running"
		url
		return
	fi
	local port=$default_port tries=0
	while port_in_use "$port"; do
		tries=$((tries + 1))
		[ "$tries" -lt 50 ] || die "no free port in $default_port..$port"
		port=$((port + 1))
	done
	echo "$port" >"$dir/port"
	say "starting on 127.0.0.1:$port (log $log)"
	as_pg "$BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 \
		-o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
		die "pg_ctl start failed; see $log"
	local psql=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres)
	if ! "${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'roomcast'" | grep -q 1; then
		"${psql[@]}" -d postgres -c "CREATE DATABASE roomcast" >/dev/null
	fi
	# A dev database made before sql/ held the REST service's real schema (seller.user_id was
	# an integer then) is recreated: the files below only create what is missing.
	if "${psql[@]}" -d roomcast -tAc "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('public.seller')
	    AND attname = 'user_id' AND atttypid <> 'uuid'::regtype" | grep -q 1; then
		say "the dev database has the old demo schema: recreating it"
		"${psql[@]}" -d postgres -c "DROP DATABASE roomcast WITH (FORCE)" -c "CREATE DATABASE roomcast" >/dev/null
	fi
	"${psql[@]}" -d roomcast -f "$root/sql/marketplace.sql" >/dev/null
	"${psql[@]}" -d roomcast -f "$root/sql/demo.sql" >/dev/null
	say "ready"
	url
}

# The demo applications of sql/apps-demo.sql (they use realtime.listen and realtime.live_room,
# so this runs after the migrations).
apps_demo() {
	running || die "not running (tools/devdb.sh start)"
	"$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(cat "$dir/port")" -U postgres \
		-d roomcast -f "$root/sql/apps-demo.sql" >/dev/null
	say "demo applications loaded (parking, appointments)"
}

stop() {
	if running; then
		as_pg "$BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
		say "stopped"
	else
		say "not running"
	fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
apps-demo) apps_demo ;;
url)
	running || die "not running (tools/devdb.sh start)"
	url
	;;
*)
	echo "usage: $0 start|stop|url|apps-demo" >&2
	exit 2
	;;
esac
