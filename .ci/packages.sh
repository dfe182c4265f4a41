#!/usr/bin/env bash
# Build the kreach-agent and kreach-coordinator packages as .deb (cargo-deb) and .rpm (rpmbuild from
# packaging/rpm/kreach.spec) into target/packages/, then run the gates: lintian, rpmlint, and the
# contents of every package against packaging/expected-contents/<pkg>.txt. See packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TERM_COLOR=never
target=${CARGO_TARGET_DIR:-$root/target}
out=$root/target/packages
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)

echo "== packaging tools"
export DEBIAN_FRONTEND=noninteractive
need=()
for tool in rpmbuild:rpm rpmlint:rpmlint lintian:lintian; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# ~/.cargo/bin survives between runs on the same machine: build cargo-deb once.
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb

echo "== release build"
cargo build --release --locked -p kreach-agent -p kreach-coordinator -p kreach-gen-docs

echo "== staging the package trees"
stage=$target/release/pkgroot
docs=$target/release/gen-docs
rm -rf "$stage" "$docs" "$out"
mkdir -p "$out"
"$target/release/kreach-gen-docs" "$docs"
unit_dir=lib/systemd/system   # Debian's; the spec moves units to /usr/lib/systemd/system
stage_pkg() { # PKG CONFIG MAN... -- BIN...
  local pkg=$1 config=$2; shift 2
  local d=$stage/$pkg
  install -d "$d/usr/bin" "$d/$unit_dir" "$d/etc/kreach" "$d/usr/share/bash-completion/completions" \
    "$d/usr/share/zsh/vendor-completions" "$d/usr/share/fish/vendor_completions.d"
  install -m 644 "packaging/$config.toml.example" "$d/etc/kreach/$config.toml"
  install -m 644 "systemd/$pkg.service" "$d/$unit_dir/"
  for bin in "$@"; do
    install -m 755 "$target/release/$bin" "$d/usr/bin/$bin"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$d/usr/bin/$bin"
    # The binary's page and one per subcommand (kreachctl-apply.1, kreach-agent-run.8, …).
    local page
    for page in $(cd "$docs/man" && ls "$bin".[18] && { ls "$bin"-*.[18] 2>/dev/null || true; }); do
      install -d "$d/usr/share/man/man${page##*.}"
      gzip -9n < "$docs/man/$page" > "$d/usr/share/man/man${page##*.}/$page.gz"
    done
    install -m 644 "$docs/bash/$bin.bash" "$d/usr/share/bash-completion/completions/$bin"
    install -m 644 "$docs/zsh/_$bin" "$d/usr/share/zsh/vendor-completions/_$bin"
    install -m 644 "$docs/fish/$bin.fish" "$d/usr/share/fish/vendor_completions.d/$bin.fish"
  done
}
stage_pkg kreach-agent agent kreach-agent
if [ ! -f systemd/kreach-coordinator.service ]; then
  echo "FAILED: systemd/kreach-coordinator.service does not exist (yet): the coordinator package needs it" >&2
  exit 1
fi
stage_pkg kreach-coordinator coordinator kreach-coordinator kreachctl
install -D -m 644 systemd/kreach.sysusers "$stage/kreach-coordinator/usr/lib/sysusers.d/kreach.conf"
# The Prometheus alert rules (tested with promtool in CI), for an operator's rule_files.
install -D -m 644 packaging/prometheus/kreach-rules.yml \
  "$stage/kreach-coordinator/usr/share/kreach/prometheus/kreach-rules.yml"

echo "== .deb (cargo-deb)"
for variant in agent coordinator; do
  cargo deb --no-build --no-strip --no-dbgsym -p kreach-gen-docs --variant "$variant" \
    --deb-revision 1 --output "$out/"
done

echo "== .rpm (rpmbuild)"
top=$target/rpmbuild
rm -rf "$top"
rpmbuild -bb --quiet \
  --define "_topdir $top" \
  --define "_rpmdir $out" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  --define "_unitdir /usr/lib/systemd/system" \
  --define "_sysusersdir /usr/lib/sysusers.d" \
  --define "kreach_version $version" \
  --define "pkgroot $stage" \
  packaging/rpm/kreach.spec
ls -l "$out"

failed=0
echo "== gate: lintian"
for deb in "$out"/*.deb; do
  lintian --fail-on error,warning --suppress-tags-from-file packaging/lintian-suppressed.txt \
    --tag-display-limit 0 "$deb" || { echo "FAILED: lintian $deb"; failed=1; }
done

echo "== gate: rpmlint"
for rpm in "$out"/*.rpm; do
  # rpmlint exits 0 on warnings: clean means no E: and no W: lines either.
  if ! rpmlint --config packaging/rpmlint.toml "$rpm" > "$out/rpmlint.log" 2>&1 \
    || grep -q ': [EW]: ' "$out/rpmlint.log"; then
    cat "$out/rpmlint.log"; echo "FAILED: rpmlint $rpm"; failed=1
  fi
  rm -f "$out/rpmlint.log"
done

echo "== gate: a man page for every binary (rpmlint 2.4.0's own check is broken; see rpmlint.toml)"
for pkg in "$out"/*.deb "$out"/*.rpm; do
  case "$pkg" in
    *.deb) files=$(dpkg-deb -c "$pkg" | awk '{print $NF}' | sed 's|^\./|/|') ;;
    *) files=$(rpm -qlp "$pkg" 2>/dev/null) ;;
  esac
  for bin in $(printf '%s\n' "$files" | sed -n 's|^/usr/bin/||p'); do
    # A here-string, not `printf | grep -q`: under pipefail grep -q closing the pipe early makes
    # printf die of SIGPIPE and the gate fail on a page that is there.
    grep -Eq "^/usr/share/man/man[18]/$bin\.[18]\.gz$" <<< "$files" \
      || { echo "FAILED: $pkg has /usr/bin/$bin but no man page for it"; failed=1; }
  done
done

echo "== gate: package contents"
for pkg in kreach-agent kreach-coordinator; do
  expected=packaging/expected-contents/$pkg.txt
  deb_list=$(dpkg-deb -c "$out/${pkg}_${version}-1_"*.deb | awk '{ $1=$2=$3=$4=$5=""; sub(/^ +/, ""); print }' \
    | sed -e 's|^\./|/|' -e 's|/$||' | grep -v '^/$' | sed 's/^/deb /')
  rpm_list=$(rpm -qlp "$out/$pkg-$version-1."*.rpm 2>/dev/null | sed 's/^/rpm /')
  if ! diff -u "$expected" <(printf '%s\n%s\n' "$deb_list" "$rpm_list" | LC_ALL=C sort); then
    echo "FAILED: the contents of $pkg differ from $expected (- expected, + built)"
    failed=1
  fi
  echo "-- conffiles in ${pkg}.deb:"
  dpkg-deb -I "$out/${pkg}_${version}-1_"*.deb conffiles
done

[ "$failed" = 0 ] || { echo "== packages: FAILED"; exit 1; }
echo "== packages: all gates passed"
