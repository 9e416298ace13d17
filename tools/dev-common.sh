# shellcheck shell=bash disable=SC2154 # $bin and $dir are set by the sourcing script
# Sourced by tools/run-dev.sh and tools/run-cluster.sh: the development setup both share (the
# dev PostgreSQL with migrations, secrets kept beside it, demo tokens, a sourceable env file).
# Expects $bin (the roomcast binary), $dir (the devdb directory) and a say/die pair.

# Starts (or reuses) the dev PostgreSQL and applies roomcast's migrations; exports DATABASE_URL.
dev_database() {
	DATABASE_URL=$(tools/devdb.sh start)
	export DATABASE_URL
	say "applying migrations"
	"$bin" migrate up
	if [ "${APPS_DEMO:-0}" = 1 ]; then
		tools/devdb.sh apps-demo
	fi
}

# Prints the secret kept in $dir/$1, generating it with the rest of the arguments the first
# time, so that tokens printed by one run stay valid in the next.
dev_secret_file() {
	local file=$dir/$1
	shift
	if ! [ -s "$file" ]; then
		(
			umask 077
			"$@" >"$file"
		)
	fi
	cat "$file"
}

# Exports JWT_SECRET and NOTIFY_TOKEN (from the environment when set, else the kept ones) and
# the demo tokens of sql/demo.sql: ADMIN_TOKEN, SELLER_TOKEN (seller 1, whose seller.user_id is
# the sub 00000000-0000-4000-a000-000000000101), USER_TOKEN.
dev_secrets() {
	JWT_SECRET=${JWT_SECRET:-$(dev_secret_file jwt_secret sh -c 'head -c 32 /dev/urandom | base64')}
	NOTIFY_TOKEN=${NOTIFY_TOKEN:-$(dev_secret_file notify_token sh -c 'head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"')}
	export JWT_SECRET NOTIFY_TOKEN
	ADMIN_TOKEN=$("$bin" token --sub admin --role admin --ttl 24h)
	SELLER_TOKEN=$("$bin" token --sub 00000000-0000-4000-a000-000000000101 --role seller --seller-id 1 --ttl 24h)
	USER_TOKEN=$("$bin" token --sub 7 --ttl 24h)
	export ADMIN_TOKEN SELLER_TOKEN USER_TOKEN
}

# Writes the named variables as `export NAME=value` lines to file $1 (mode 600).
dev_env_file() {
	local file=$1 name
	shift
	(
		umask 077
		for name in "$@"; do
			printf 'export %s=%q\n' "$name" "${!name}"
		done >"$file"
	)
}
