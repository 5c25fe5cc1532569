#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the other, each as one
# libFuzzer process on one core (its default; `-jobs=1` would do the same in a child
# process and move the figures to fuzz-0.log), then minimises each corpus in
# fuzz/corpus/<target>.
# Figures (executions, coverage, crashes) are printed per target and kept in
# fuzz/artifacts/<target>/summary.txt; a crash leaves its input in fuzz/artifacts/<target>.
#   fuzz/run.sh 600            # ten minutes each
#   TARGETS="path jwt" fuzz/run.sh 30
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
TARGETS=${TARGETS:-"h1_request upstream_response path jwt snapshot"}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
status=0
for target in $TARGETS; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log="artifacts/$target/run.log"
  echo "== $target: ${SECONDS_EACH}s"
  if ! cargo fuzz run -O "$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
      >"$log" 2>&1; then
    echo "   CRASH or failure: see $log and artifacts/$target/"
    status=1
  fi
  # The last status line says how far it got: executions, coverage, corpus size.
  summary=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  echo "   $summary"
  echo "   executions: ${execs:-?}"
  { echo "target=$target seconds=$SECONDS_EACH executions=${execs:-?}"; echo "$summary"; } >"artifacts/$target/summary.txt"
  # Keep the corpus small in git: only inputs that add coverage.
  cargo fuzz cmin -O "$target" "corpus/$target" >/dev/null 2>&1 || true
done
exit $status
