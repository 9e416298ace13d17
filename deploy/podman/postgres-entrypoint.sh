#!/bin/sh
# Entrypoint of the postgres:15 stand-in: on an empty data directory, initdb with the superuser
# password, create POSTGRES_DB and run /docker-entrypoint-initdb.d/*.sql in name order on a
# socket-only server (so TCP health checks stay red meanwhile), as the official image does.
set -eu
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /run/postgresql
	chown -R postgres:postgres "$PGDATA" /run/postgresql
	chmod 700 "$PGDATA"
	exec runuser -u postgres -- /bin/sh "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	pwfile=$(mktemp)
	printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" >"$pwfile"
	initdb -U postgres --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
		-E UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
	pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
	db=${POSTGRES_DB:-postgres}
	[ "$db" = postgres ] || createdb -U postgres "$db"
	for f in /docker-entrypoint-initdb.d/*.sql; do
		[ -e "$f" ] || continue
		echo "postgres-entrypoint: running $f"
		psql -v ON_ERROR_STOP=1 -q -U postgres -d "$db" -f "$f"
	done
	pg_ctl -w -m fast stop >/dev/null
	echo "postgres-entrypoint: initialised, starting"
fi
[ "$1" = postgres ] && set -- "$@" -c listen_addresses='*'
exec "$@"
