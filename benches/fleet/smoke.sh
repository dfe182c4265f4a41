#!/usr/bin/env bash
# A quick run of the fleet benchmark for CI: 5 client agents, one changed run, no Ansible, a 5 s idle
# sample, on the debug binaries a CI run has already built (no release build). It checks that the
# benchmark still works (every process starts, the change arrives, cleanup leaves nothing behind);
# its figures mean little. About 30 s. Root only: skips loudly otherwise, like the e2e tiers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED benches/fleet/smoke.sh: needs root (ip netns, one uid per agent)" >&2
  exit 0
fi
(cd "$root" && cargo build --quiet -p kreach-agent -p kreach-coordinator --bins)
exec "$here/run.sh" --agents 5 --runs 1 --no-ansible --idle-seconds 5 \
  --bin-dir "${CARGO_TARGET_DIR:-$root/target}/debug" "$@"
