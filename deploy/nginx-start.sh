#!/bin/sh
# nginx's entrypoint in docker-compose.yml: writes the container's DNS server (the first
# IPv4 nameserver of /etc/resolv.conf: Docker's 127.0.0.11, podman's aardvark-dns on the network
# gateway) into a resolver file that deploy/nginx.conf includes, then runs nginx in the foreground.
# nginx.conf resolves the replicas' names through it at request time, so a replica that restarts
# with a new address is found again within seconds instead of 502s until nginx restarts.
set -eu
resolv=${NGINX_RESOLV_CONF:-/etc/resolv.conf}
out_dir=${NGINX_RESOLVER_DIR:-/run/roomcast-nginx}
server=$(awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ { print $2; exit }' "$resolv")
if [ -z "$server" ]; then
	echo "nginx-start: no IPv4 nameserver in $resolv" >&2
	exit 1
fi
mkdir -p "$out_dir"
# valid=1s: a restarted replica's new address is picked up at most 1 s later (each nginx
# worker keeps its own cache).
printf 'resolver %s valid=1s ipv6=off;\nresolver_timeout 3s;\n' "$server" >"$out_dir/resolver.conf"
echo "nginx-start: resolver $server"
if [ "$#" -eq 0 ]; then
	set -- nginx -g "daemon off;"
fi
exec "$@"
