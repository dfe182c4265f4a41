#!/usr/bin/env bash
# Install every real part the test tiers need, on a fresh machine of this kind (Debian 12, root):
#   - Debian packages: iproute2, mount, debootstrap, systemd-container, zstd, faketime, e2fsprogs,
#     prometheus (for promtool, which checks the metrics endpoints);
#   - the e2e-net tier: nftables, kcat, tansu and confluent-kafka (tests/e2e-net/install.sh);
#   - the e2e-systemd tier: the bookworm rootfs (tests/e2e-systemd/prepare-rootfs.sh) and the
#     .deb/.rpm packages with their gates (.ci/packages.sh), which that tier installs.
# Caches live outside the checkout (/var/cache/kreach-ci, ~/.cargo/bin): a second run only checks.
# Tiers opted out with KREACH_SKIP (see test-parts/src/lib.rs) are not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

skipped() { [[ ",${KREACH_SKIP:-}," == *",$1,"* || ",${KREACH_SKIP:-}," == *",all,"* ]]; }

if [ "$(id -u)" != 0 ]; then
  echo "tests/install.sh: installing the tiers' parts needs root (apt-get, debootstrap)." >&2
  echo "  run it as root, or opt out of the tiers that need them: KREACH_SKIP=root,e2e-net,e2e-systemd,faults" >&2
  exit 1
fi

echo "== Debian packages the tiers use"
export DEBIAN_FRONTEND=noninteractive
need=()
for tool in ip:iproute2 mount:mount python3:python3 debootstrap:debootstrap systemd-nspawn:systemd-container \
            zstd:zstd faketime:faketime chattr:e2fsprogs setpriv:util-linux promtool:prometheus; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if skipped e2e-net; then
  echo "== e2e-net: opted out (KREACH_SKIP), not installed"
else
  echo "== e2e-net: nftables, kcat, tansu and confluent-kafka (pinned, cached)"
  bash tests/e2e-net/install.sh
fi

if skipped e2e-systemd; then
  echo "== e2e-systemd: opted out (KREACH_SKIP), not installed"
else
  echo "== e2e-systemd: the container image (cached outside the checkout)"
  bash tests/e2e-systemd/prepare-rootfs.sh
  echo "== e2e-systemd: the packages it installs (.deb, .rpm) and their gates"
  bash .ci/packages.sh
fi
