#!/usr/bin/env bash
# The tests, every tier, in one command: install what they need (tests/install.sh), then run the
# whole workspace's tests without stopping at the first failing binary, and end with the counts and
# every test that did not run.
#
#   sudo tests/run.sh                              # everything (as CI does)
#   KREACH_SKIP=e2e-systemd tests/run.sh           # opt out of tiers: root, e2e-net, e2e-systemd,
#                                                  # faults, or all; they are listed at the end
#   tests/run.sh -p kreach-agent                   # extra arguments go to cargo test
#
# Exit status: cargo test's (0 only when every test that ran passed).
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
started=$(date +%s)

bash tests/install.sh || exit 1

mkdir -p target
log=target/kreach-test.log
export KREACH_SKIP_LOG="$PWD/target/kreach-skipped.log"
: > "$KREACH_SKIP_LOG"

echo "== cargo test --workspace --no-fail-fast $*"
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The counts of every test binary, added up; the tests that were opted out, by tier.
passed=$(grep -E '^test result: ' "$log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result: ' "$log" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
ignored=$(grep -E '^test result: ' "$log" | grep -Eo '[0-9]+ ignored' | awk '{s += $1} END {print s + 0}')
binaries=$(grep -cE '^test result: ' "$log")
opted_out=$(wc -l < "$KREACH_SKIP_LOG")
echo
echo "== summary ($(( $(date +%s) - started )) s)"
echo "tests: $((passed - opted_out)) ran and passed, $failed failed, $ignored ignored, in $binaries test binaries"
if [ "$opted_out" -gt 0 ]; then
  echo "opted out (KREACH_SKIP=${KREACH_SKIP:-}): $opted_out test(s) did not run (libtest counts them as passed):"
  cut -f1 "$KREACH_SKIP_LOG" | sort | uniq -c | awk '{printf "  tier %s: %d test(s)\n", $2, $1}'
  awk -F'\t' '{printf "    %s: %s (%s)\n", $1, $2, $3}' "$KREACH_SKIP_LOG"
else
  echo "opted out: none; every tier ran"
fi
if [ "$status" -ne 0 ]; then
  echo "FAILED: cargo test exited $status; the failures:"
  grep -E '^test .* FAILED$|^    [a-z_:]+$|^error: test failed' "$log" | head -40
fi
exit "$status"
