#!/usr/bin/env bash
# `make test`: run each tier (`make test-<tier>`) in order, time it, and print a table of the times at the end.
#
#     tests/tiers.sh STARTED TIER...
#
# STARTED is the epoch second `make test` began, so the table shows what the
# prerequisites (venvs, PostgreSQL, checkov, ...) took before the first tier.
# The first failing tier stops the run, as make would; the table is printed anyway.
set -uo pipefail

started=$1
shift
make=${MAKE:-make}
declare -a rows=()
status=0
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
clock() { printf "%d:%02d" $(($1 / 60)) $(($1 % 60)); }

first=$(now)
rows+=("prerequisites|$(seconds "$started" "$first")|done")
for tier in "$@"; do
    if [ "$status" -ne 0 ]; then
        rows+=("$tier||not run")
        continue
    fi
    echo "=== tier: $tier ==="
    begin=$(now)
    "$make" --no-print-directory "test-$tier"
    code=$?
    outcome=passed
    if [ "$code" -ne 0 ]; then
        outcome="FAILED (exit $code)"
        status=$code
    fi
    rows+=("$tier|$(seconds "$begin" "$(now)")|$outcome")
done

echo
echo "make test: time per tier"
printf "  %-16s %8s  %s\n" tier "m:ss" outcome
for row in "${rows[@]}"; do
    IFS='|' read -r name took outcome <<<"$row"
    printf "  %-16s %8s  %s\n" "$name" "${took:+$(clock "$took")}" "$outcome"
done
printf "  %-16s %8s\n" total "$(clock "$(seconds "$started" "$(now)")")"
exit "$status"
