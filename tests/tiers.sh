#!/usr/bin/env bash
# `make test`: run the tiers (`make test-<tier>`) in lanes, time each, and print a table of the times at the end.
#
#     tests/tiers.sh STARTED LANE...
#
# A LANE is a comma-separated list of tiers run in that order ("lint,stage-package"); the lanes run side
# by side. A lane of tiers that mostly wait (a DAG run's one process, an image build's I/O) beside one that
# keeps both cores busy uses the machine that would otherwise idle. With more than one lane, every output
# line carries its tier's name, so interleaved logs still say whose they are.
# STARTED is the epoch second `make test` began, so the table shows what the
# prerequisites (venvs, PostgreSQL, checkov, ...) took before the first tier.
# A failing tier stops the rest of its lane, as make would; the other lanes finish; the table is printed anyway.
set -uo pipefail

started=$1
shift
make=${MAKE:-make}
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
clock() { printf "%d:%02d" $(($1 / 60)) $(($1 % 60)); }
rows_dir=$(mktemp -d)
trap 'rm -rf "$rows_dir"' EXIT

first=$(now)
lanes=$#

# One lane: its tiers in order; a row per tier (name|start offset|seconds|outcome) in its own file.
run_lane() {
    local lane=$1 tiers=$2 status=0 tier begin code outcome
    IFS=',' read -r -a names <<<"$tiers"
    for tier in "${names[@]}"; do
        if [ "$status" -ne 0 ]; then
            echo "$tier|||not run" >>"$rows_dir/$lane"
            continue
        fi
        echo "=== tier: $tier ==="
        begin=$(now)
        if [ "$lanes" -gt 1 ]; then
            "$make" --no-print-directory "test-$tier" 2>&1 | sed -u "s/^/[$tier] /"
            code=${PIPESTATUS[0]}
        else
            "$make" --no-print-directory "test-$tier"
            code=$?
        fi
        outcome=passed
        if [ "$code" -ne 0 ]; then
            outcome="FAILED (exit $code)"
            status=$code
        fi
        echo "$tier|$(seconds "$first" "$begin")|$(seconds "$begin" "$(now)")|$outcome" >>"$rows_dir/$lane"
    done
    return "$status"
}

declare -a pids=()
lane=0
for tiers in "$@"; do
    lane=$((lane + 1))
    run_lane "$lane" "$tiers" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done

echo
echo "make test: time per tier ($lanes lane(s) side by side; 'from' is when the tier started after the prerequisites)"
printf "  %-16s %6s %8s %8s  %s\n" tier lane from "m:ss" outcome
printf "  %-16s %6s %8s %8s  %s\n" prerequisites "" "" "$(clock "$(seconds "$started" "$first")")" done
for lane in $(seq 1 "$lanes"); do
    while IFS='|' read -r name from took outcome; do
        printf "  %-16s %6s %8s %8s  %s\n" "$name" "$lane" "${from:+$(clock "$from")}" "${took:+$(clock "$took")}" "$outcome"
    done <"$rows_dir/$lane"
done
printf "  %-16s %6s %8s %8s\n" total "" "" "$(clock "$(seconds "$started" "$(now)")")"
exit "$status"
