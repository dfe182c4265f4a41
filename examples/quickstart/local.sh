#!/usr/bin/env bash
# kreach quickstart: apply the example spec to sandbox copies of /etc on this machine — never the
# real /etc. A broker host (with a stand-in Kafka service on loopback) and two client hosts, one
# inside the VPC and one outside, each with its own hosts file and agent.toml.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "building kreach-agent and kreachctl"
(cd "$root" && cargo build --quiet -p kreach-agent -p kreach-coordinator --bins)
agent=$target/debug/kreach-agent
export KREACH_LOG=${KREACH_LOG:-warn}   # the agent's audit log goes to stderr; KREACH_LOG=info shows it
ctl=$target/debug/kreachctl

sandbox=$(mktemp -d "${TMPDIR:-/tmp}/kreach-quickstart.XXXXXX")
cleanup() { python3 "$here/fake-kafka.py" stop "$sandbox/emr-worker-1/var/lib/kreach" 2>/dev/null || true; }
trap cleanup EXIT

make_host() { # NODE [broker]
  local node=$1 dir=$sandbox/$1
  mkdir -p "$dir/etc/kreach" "$dir/var/lib/kreach"
  cp "$here/hosts.sample" "$dir/etc/hosts"
  if [ "${2:-}" = broker ]; then printf '\n# The cloud image'"'"'s own entry for this host.\n198.18.0.11\t%s.cluster-48742 %s\n' "$node" "$node" >> "$dir/etc/hosts"; fi
  {
    echo "node = \"$node\""
    echo "state_dir = \"$dir/var/lib/kreach\""
    echo "[manage]"
    echo "hosts_file = \"$dir/etc/hosts\""
    if [ "${2:-}" = broker ]; then
      mkdir -p "$dir/etc/kafka"
      cp "$here/server.properties.sample" "$dir/etc/kafka/server.properties"
      echo "kafka_properties = \"$dir/etc/kafka/server.properties\""
      echo "kafka_unit = \"kafka.service\""
      echo "probe = \"tcp\""
      echo "[service_manager]"
      echo "kind = \"command\""
      echo "restart = [\"python3\", \"$here/fake-kafka.py\", \"restart\", \"$dir/etc/kafka/server.properties\", \"$dir/var/lib/kreach\"]"
    fi
  } > "$dir/etc/kreach/agent.toml"
}
make_host emr-worker-1 broker
make_host etl-1
make_host laptop-1
# The broker is running on its old config before kreach arrives.
python3 "$here/fake-kafka.py" restart "$sandbox/emr-worker-1/etc/kafka/server.properties" "$sandbox/emr-worker-1/var/lib/kreach"

step "the spec is valid"
show "$ctl" validate "$here/cluster.toml"

step "what the broker emr-worker-1 should look like"
show "$ctl" render "$here/cluster.toml" --node emr-worker-1

step "plan on the broker (dry run: nothing changes)"
show "$agent" --config "$sandbox/emr-worker-1/etc/kreach/agent.toml" apply-local --spec "$here/cluster.toml" --dry-run

step "apply on the broker: write, restart the Kafka service, verify every listener"
show "$agent" --config "$sandbox/emr-worker-1/etc/kreach/agent.toml" apply-local --spec "$here/cluster.toml"

step "apply again: nothing to change, nothing written"
show "$agent" --config "$sandbox/emr-worker-1/etc/kreach/agent.toml" apply-local --spec "$here/cluster.toml"

step "the clients: private view inside the VPC, public view outside (split horizon)"
show "$agent" --config "$sandbox/etl-1/etc/kreach/agent.toml" apply-local --spec "$here/cluster.toml"
show "$agent" --config "$sandbox/laptop-1/etc/kreach/agent.toml" apply-local --spec "$here/cluster.toml"

step "result"
show cat "$sandbox/emr-worker-1/etc/kafka/server.properties"
show cat "$sandbox/laptop-1/etc/hosts"
echo
echo "The sandbox stays in $sandbox (remove it with: rm -rf $sandbox)."
