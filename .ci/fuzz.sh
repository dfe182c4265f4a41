#!/usr/bin/env bash
# Fuzz the pure parsers/editors of kreach-domain (issue 6 item 1) and the check every Kafka response
# passes before the agent's probes decode it (issue 13 item 9) for a bounded time per target.
#
#   .ci/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=300 .ci/fuzz.sh     # longer
#   .ci/fuzz.sh hosts_editor         # only the named target(s)
#
# Installs cargo-fuzz if missing. The one toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo fuzz
# pass its nightly-only flags (-Zsanitizer=address etc.). Builds go to fuzz/target. Each target
# starts from the committed seeds in fuzz/corpus/<target> plus fuzz/regressions/<target>, works in
# a scratch copy (fuzz/corpus-run/, gitignored) so the committed corpus stays small, and fails the
# script on any crash, timeout or out-of-memory; the reproducer lands in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export RUSTC_BOOTSTRAP=1

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(hosts_editor properties_editor spec_parser probe_response)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "== building fuzz targets"
for target in "${targets[@]}"; do
  (cd fuzz && cargo fuzz build "$target")
done

# The regressions are seeds too, so every run replays them first: a fixed bug must stay fixed.
failed=()
summary=()
for target in "${targets[@]}"; do
  echo "== fuzzing $target for ${seconds}s"
  run_corpus="fuzz/corpus-run/$target"
  mkdir -p "$run_corpus" "fuzz/artifacts/$target"
  seeds=("corpus/$target")
  [ -d "fuzz/regressions/$target" ] && seeds+=("regressions/$target")
  log="fuzz/fuzz-$target.log"
  start=$(date +%s)
  status=0
  (cd fuzz && cargo fuzz run "$target" "../$run_corpus" "${seeds[@]}" -- \
      -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="artifacts/$target/") >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  tail -n 25 "$log"
  execs=$(grep -Eo '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
  per_sec=$(grep -Eo '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
  corpus=$(grep -Eo '(DONE|pulse|NEW|REDUCE) .*corp: [0-9]+' "$log" | tail -n 1 | grep -Eo '[0-9]+$' || true)
  line="$target: ran ${elapsed}s, ${execs:-?} execs, ${per_sec:-?} execs/s, corpus ${corpus:-?} inputs"
  if [ "$status" -ne 0 ]; then
    line="$line, FAILED (exit $status; see $log and fuzz/artifacts/$target/)"
    failed+=("$target")
  fi
  summary+=("$line")
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found a crash in: ${failed[*]}" >&2
  exit 1
fi
