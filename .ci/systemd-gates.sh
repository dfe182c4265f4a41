#!/usr/bin/env bash
# Gates for the systemd units in systemd/:
#   1. `systemd-analyze verify` on each unit, in a temp root holding the binaries cargo builds
#      (verify checks that ExecStart= exists). It exits 0 on some parse errors, so any stderr fails.
#   2. `systemd-analyze security --offline=yes` under the exposure ceiling of issue 5:
#      4.0 for the agent, 3.0 for the coordinator. The exposure numbers are printed.
# Usage: bash .ci/systemd-gates.sh   (from anywhere; builds into $CARGO_TARGET_DIR or target/)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi
echo "systemd-gates: $(systemd-analyze --version | head -n 1)"

cargo build --quiet -p kreach-agent -p kreach-coordinator --bin kreach-agent --bin kreach-coordinator
target_dir="${CARGO_TARGET_DIR:-target}"

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/etc/kreach"
# The units' dependencies (sysinit.target, network-online.target, ...) come from this machine.
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
install -m 0755 "$target_dir/debug/kreach-agent" "$target_dir/debug/kreach-coordinator" "$root/usr/bin/"
install -m 0644 systemd/kreach-agent.service systemd/kreach-coordinator.service "$root/etc/systemd/system/"

failed=0
for unit in kreach-agent kreach-coordinator; do
    err="$root/verify-$unit.err"
    # --man=no: the man pages named in Documentation= ship in the packages, whose gates check them.
    if ! systemd-analyze verify --man=no --root="$root" "$root/etc/systemd/system/$unit.service" 2>"$err"; then
        echo "systemd-gates: verify $unit.service failed" >&2
        failed=1
    fi
    if [ -s "$err" ]; then
        echo "systemd-gates: verify $unit.service printed on stderr:" >&2
        cat "$err" >&2
        failed=1
    else
        echo "systemd-gates: verify $unit.service: clean"
    fi
done

check_exposure() {
    local unit=$1 threshold=$2 report exposure status=0
    # --threshold takes tenths in systemd 252 (40 means an exposure of 4.0).
    report="$(systemd-analyze security --offline=yes --threshold="$(awk -v t="$threshold" 'BEGIN { printf "%d", t * 10 }')" \
        "systemd/$unit.service" 2>&1)" || status=$?
    exposure="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$report")"
    if [ -z "$exposure" ]; then
        echo "systemd-gates: no exposure level in the security report of $unit.service:" >&2
        echo "$report" >&2
        return 1
    fi
    # --threshold sets the exit status; compare as well, in case a version ignores it offline.
    if [ "$status" -ne 0 ] || awk -v e="$exposure" -v t="$threshold" 'BEGIN { exit !(e > t) }'; then
        echo "systemd-gates: $unit.service exposure $exposure is over $threshold:" >&2
        grep '✗' <<<"$report" >&2 || true
        return 1
    fi
    echo "systemd-gates: $unit.service exposure $exposure (at most $threshold)"
}
check_exposure kreach-agent 4.0 || failed=1
check_exposure kreach-coordinator 3.0 || failed=1

if [ "$failed" -ne 0 ]; then
    echo "systemd-gates: FAILED" >&2
    exit 1
fi
echo "systemd-gates: passed"
