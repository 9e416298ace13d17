#!/bin/sh
# `make valgrind`: the integration suite with every roomcast process it starts running under
# valgrind memcheck (through the roomcast-vg wrapper), then a check of every valgrind log. Fails
# when a test fails or when any log reports a memory error or a definite or indirect leak.
#
#   tests/valgrind/run.sh BINARY LOGDIR [pytest arguments...]
#
# No test is left out: the whole suite passed under valgrind here (about 10 min on 2 cores),
# its deadlines included. The `slow` rows stay deselected as in `make test` (pytest.ini).
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=$1
logs=$2
shift 2
rm -rf "$logs"
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)

ROOMCAST_VG_BIN=$bin ROOMCAST_VG_LOGS=$logs ROOMCAST_BIN=$here/roomcast-vg \
	/usr/bin/python3 -m pytest -q "$@"
rc=$?

# A process that exited reports "ERROR SUMMARY: N errors" (leaks of the kinds we count are
# errors too). One killed with SIGKILL has no summary: its log still holds every error seen up
# to then, so those are looked for line by line as well.
bad=0
checked=0
unsummarised=0
for f in "$logs"/*.log; do
	[ -e "$f" ] || continue
	checked=$((checked + 1))
	if grep -Eq '== (Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination overlap|Argument .* of function|[0-9,]+ bytes in [0-9,]+ blocks are (definitely|indirectly) lost)' "$f" ||
		grep -Eq 'ERROR SUMMARY: [1-9]' "$f"; then
		bad=$((bad + 1))
		printf '\n----- valgrind report %s -----\n' "$f" >&2
		cat "$f" >&2
	elif ! grep -q 'ERROR SUMMARY: 0 errors' "$f"; then
		unsummarised=$((unsummarised + 1))
	fi
done
echo "valgrind: $checked process logs, $bad with errors or leaks, $unsummarised killed before the leak check (in $logs)"
if [ "$checked" -eq 0 ]; then
	echo "valgrind: no logs were written: the wrapper did not run" >&2
	exit 1
fi
[ "$bad" -eq 0 ] || exit 1
exit "$rc"
