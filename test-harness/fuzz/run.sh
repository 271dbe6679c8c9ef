#!/usr/bin/env bash
# Runs the fuzz targets one after the other, each for SECONDS (default 600) in
# one libFuzzer process (one core), and fails if any target found a crash, a
# panic, a leak or an input slower than the per-input timeout. Installs
# cargo-fuzz when it is missing.
#
#   test-harness/fuzz/run.sh [SECONDS] [TARGET...]
#
# New inputs go to corpus/TARGET (not committed), on top of the committed
# seeds/TARGET; findings to artifacts/TARGET; logs and a summary to logs/.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-600}"
shift || true
targets=(signature_verify signature_base alipay_params config_validate xds_resource jwt path_normalize authority)
if [ $# -gt 0 ]; then
  targets=("$@")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes -Z flags (sanitizer, coverage instrumentation) to rustc;
# RUSTC_BOOTSTRAP lets a stable toolchain accept them, so no nightly is needed.
export RUSTC_BOOTSTRAP=1

cargo fuzz build
mkdir -p logs
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
summary=logs/summary.txt
echo "commit $commit, $seconds s per target, started $(date -u +%FT%TZ)" >"$summary"

failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log="logs/$target.log"
  echo "fuzz: $target for ${seconds}s (log: test-harness/fuzz/$log)"
  status=0
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=25 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  took="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)"
  findings="$(find "artifacts/$target" -type f 2>/dev/null | wc -l)"
  line="$target: exit $status, ${took:-?} s, ${execs:-?} executions, corpus $(find "corpus/$target" -type f | wc -l) inputs, artifacts $findings"
  echo "fuzz: $line"
  echo "$line" >>"$summary"
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    tail -40 "$log" >&2
  fi
done
echo "finished $(date -u +%FT%TZ)" >>"$summary"

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}; see test-harness/fuzz/artifacts/ and logs/" >&2
  exit 1
fi
echo "fuzz: no findings"
