#!/usr/bin/env bash
# Runs libFuzzer harnesses for a set time each (`tests/fuzz/run.sh SECONDS TARGET...`, called by
# `make fuzz` and `make fuzz-smoke`) on a fresh copy of each seed corpus; prints one summary line
# per target and exits non-zero, after the report, when any crashed, leaked or timed out.
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=$1
shift
out=build/fuzz
failed=()
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

for t in "$@"; do
	work=$out/work/$t
	arts=$out/artifacts/$t
	log=$out/logs/$t.log
	# Artifacts of earlier runs go too, so what is listed below is this run's finding.
	rm -rf "$work" "$arts"
	mkdir -p "$work" "$arts" "$(dirname "$log")"
	cp tests/fuzz/corpus/"$t"/* "$work"/
	dict=()
	[ -f tests/fuzz/dict/"$t".dict ] && dict=(-dict=tests/fuzz/dict/"$t".dict)
	echo "== fuzz_$t for ${secs}s (log $log)"
	rc=0
	"$out/fuzz_$t" -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$arts/" "${dict[@]}" "$work" >"$log" 2>&1 || rc=$?
	# The last status line carries the final coverage; the final stats the totals.
	last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
	cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
	ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
	corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
	printf '   fuzz_%s: %s runs, %s exec/s, cov %s, ft %s, corpus %s, exit %d\n' \
		"$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$rc"
	if [ "$rc" -ne 0 ]; then
		echo "   fuzz_$t FAILED; end of its log:" >&2
		tail -n 60 "$log" >&2
		ls -l "$arts" >&2
		failed+=("$t")
	fi
done

if [ ${#failed[@]} -ne 0 ]; then
	echo "fuzzing found problems in: ${failed[*]} (inputs in $out/artifacts/<target>/;" \
		"reproduce with $out/fuzz_<target> <file>)" >&2
	exit 1
fi
echo "fuzzing: no crashes"
