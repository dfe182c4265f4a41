#!/usr/bin/env bash
# Prepare (once) the Debian bookworm rootfs that the e2e-systemd tier boots with systemd-nspawn.
#
# Idempotent: installs debootstrap and systemd-container when missing, builds a minbase rootfs with
# the packages below, and caches it as a tarball OUTSIDE the git checkout. When the cache already
# exists and was built from the same package list (kept beside it in CACHE.packages) it does nothing
# but print its path; a changed list rebuilds it once.
#
#   KREACH_ROOTFS_CACHE  cache tarball (default /var/cache/kreach-ci/rootfs-bookworm.tar.zst)
#   KREACH_DEBIAN_MIRROR mirror URL (default: the first http(s) deb.debian.org-style URI apt uses here)
#
# Exit status: 0 = cache ready; 2 = cannot prepare on this machine (not root, no mirror reachable);
# anything else = a real failure.
set -euo pipefail

cache="${KREACH_ROOTFS_CACHE:-/var/cache/kreach-ci/rootfs-bookworm.tar.zst}"
suite=bookworm
# python3: the e2e-net tier's kafka launcher runs inside the hosts as their kafka.service
# (e2e_systemd_packages). Changing this list rebuilds the cache (see CACHE.packages below).
packages=systemd,systemd-sysv,dbus,iproute2,python3

log() { printf 'prepare-rootfs: %s\n' "$*" >&2; }

if [[ -s "$cache" && "$(cat "$cache.packages" 2>/dev/null)" == "$packages" ]]; then
    log "cache present: $cache"
    echo "$cache"
    exit 0
fi
[[ -s "$cache" ]] && log "cache $cache was built from other packages than $packages: rebuilding it"

if [[ "$(id -u)" != 0 ]]; then
    log "must run as root (debootstrap, mknod); cannot prepare $cache"
    exit 2
fi

need_install=()
command -v debootstrap >/dev/null || need_install+=(debootstrap)
command -v systemd-nspawn >/dev/null || need_install+=(systemd-container)
command -v zstd >/dev/null || need_install+=(zstd)
if ((${#need_install[@]})); then
    log "installing ${need_install[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${need_install[@]}" >&2; then
        apt-get update >&2 || { log "apt-get update failed: no package mirror reachable"; exit 2; }
        apt-get install -y --no-install-recommends "${need_install[@]}" >&2 \
            || { log "cannot install ${need_install[*]}"; exit 2; }
    fi
fi

# Use the same mirror apt uses on this machine: only package registries are reachable.
mirror="${KREACH_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
    mirror="$(
        {
            grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true
            grep -hE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' || true
        } | grep -E '/debian/?$' | head -n1 || true
    )"
fi
if [[ -z "$mirror" ]]; then
    log "no Debian mirror found in /etc/apt/sources.list*; set KREACH_DEBIAN_MIRROR"
    exit 2
fi

mkdir -p "$(dirname "$cache")"
work="$(mktemp -d "$(dirname "$cache")/.build.XXXXXX")"
cleanup() {
    # debootstrap may leave proc/sys mounted inside the target on failure.
    for m in $(awk -v r="$work/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

log "debootstrap $suite from $mirror into $work/rootfs (about 1.5 minutes)"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" >&2; then
    log "debootstrap failed (see above); is $mirror reachable?"
    exit 2
fi

# Small touches so containers boot quietly and fast: no getty on the read-only console, a machine-id
# left empty so each boot generates its own.
: >"$work/rootfs/etc/machine-id"
rm -f "$work/rootfs/var/lib/dbus/machine-id"
apt_cache="$work/rootfs/var/cache/apt/archives"
find "$apt_cache" -name '*.deb' -delete 2>/dev/null || true

tmp="$cache.partial"
case "$cache" in
    *.zst) tar --numeric-owner --xattrs -C "$work/rootfs" -cf - . | zstd -q -T0 -o "$tmp" -f ;;
    *) tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$tmp" . ;;
esac
mv -f "$tmp" "$cache"
echo "$packages" >"$cache.packages"
log "cached $(du -h "$cache" | cut -f1) at $cache"
echo "$cache"
