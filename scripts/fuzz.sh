#!/usr/bin/env bash
# Runs the libFuzzer targets (fuzz/README.md): scripts/fuzz.sh FUZZDIR SECONDS TARGET...
#
# Each target runs SECONDS on a scratch corpus under FUZZDIR/scratch/<target>/ seeded from
# fuzz/corpus/<target>/ (the repository's corpus is never written), one target at a time. A crash
# (or leak, timeout, out-of-memory) stops that target; its input is kept in
# FUZZDIR/crashes/<target>/. With FUZZ_REPLAY=1 every file of fuzz/regressions/<target>/ is run
# once first. The last line is the summary `fuzz: targets=N execs=E crashes=C`; the exit status
# is 1 when C > 0.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=$1 secs=$2
shift 2
targets=0 execs=0 crashes=0
for t in "$@"; do
  bin=$dir/bin/fuzz_$t
  work=$dir/scratch/$t
  art=$dir/crashes/$t
  mkdir -p "$work/corpus" "$art"
  log=$work/last.log
  targets=$((targets + 1))
  if [ "${FUZZ_REPLAY:-0}" = 1 ] && [ -d "fuzz/regressions/$t" ] &&
     [ -n "$(ls -A "fuzz/regressions/$t" 2>/dev/null)" ]; then
    if ! "$bin" -runs=1 "fuzz/regressions/$t"/* >"$work/replay.log" 2>&1; then
      echo "fuzz: $t: a regression input fails again (see $work/replay.log)" >&2
      crashes=$((crashes + 1))
    fi
  fi
  cp -n "fuzz/corpus/$t"/* "$work/corpus/" 2>/dev/null || true
  before=$(ls -A "$art" | wc -l)
  # -detect_leaks: a leak on untrusted input is a finding like any other
  "$bin" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$art/" -detect_leaks=1 "$work/corpus" >"$log" 2>&1
  rc=$?
  n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
  execs=$((execs + ${n:-0}))
  after=$(ls -A "$art" | wc -l)
  if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
    crashes=$((crashes + 1))
    echo "fuzz: $t: FAILED (exit $rc), input in $art/, log $log" >&2
  else
    echo "fuzz: $t: ${n:-0} execs in ${secs}s, $cov" >&2
  fi
done
echo "fuzz: targets=$targets execs=$execs crashes=$crashes"
[ "$crashes" -eq 0 ]
