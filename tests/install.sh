#!/usr/bin/env bash
# Install every real part the test tiers need, on a fresh machine of this kind (Debian 12, root):
#   - Debian packages: iproute2, mount, debootstrap, systemd-container, zstd, faketime, e2fsprogs,
#     prometheus (for promtool, which checks the metrics endpoints);
#   - the e2e-net tier: nftables, kcat, tansu and confluent-kafka (tests/e2e-net/install.sh);
#   - the e2e-systemd tier: the bookworm rootfs (tests/e2e-systemd/prepare-rootfs.sh) and the
#     .deb/.rpm packages with their gates (.ci/packages.sh), which that tier installs;
#   - the ha tier: Debian etcd-server (/usr/bin/etcd), its packaged service kept from starting.
# Caches live outside the checkout (/var/cache/kreach-ci, ~/.cargo/bin): a second run only checks.
# Tiers opted out with KREACH_SKIP (see test-parts/src/lib.rs) are not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

skipped() { [[ ",${KREACH_SKIP:-}," == *",$1,"* || ",${KREACH_SKIP:-}," == *",all,"* ]]; }

if [ "$(id -u)" != 0 ]; then
  echo "tests/install.sh: installing the tiers' parts needs root (apt-get, debootstrap)." >&2
  echo "  run it as root, or opt out of the tiers that need them: KREACH_SKIP=root,e2e-net,e2e-systemd,faults,ha" >&2
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

if skipped ha; then
  echo "== ha: opted out (KREACH_SKIP), not installed"
elif [ -x /usr/bin/etcd ] && command -v nft >/dev/null 2>&1; then  # the path test-parts/src/etcd.rs runs
  echo "== ha: /usr/bin/etcd and nft are here"
else
  echo "== ha: Debian etcd-server (the tests start their own members on free loopback ports) and nftables (the partition test)"
  # The package's postinst starts etcd on 2379/2380 through invoke-rc.d; a policy-rc.d that
  # exits 101 forbids that start. Docker images ship one; elsewhere write it (only if absent).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends etcd-server nftables
fi
