#!/usr/bin/env bash
# kreach quickstart: a coordinator and five agents on sandbox directories of this machine — never
# the real /etc. It creates mutual-TLS certificates, starts the coordinator and the agents (three
# brokers, each with a stand-in Kafka service on its own loopback address, and two clients), shows
# the plan, applies the spec and follows the rollout to the end: client names first, then one
# broker at a time, the controller last. Public access is over TLS with certificates kreach issues;
# the final check is every client reaching every broker the way a Kafka client would.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "building kreach-agent, kreach-coordinator and kreachctl"
(cd "$root" && cargo build --quiet -p kreach-agent -p kreach-coordinator --bins)
agent=$target/debug/kreach-agent
coordinator=$target/debug/kreach-coordinator
ctl=$target/debug/kreachctl

sandbox=$(mktemp -d "${TMPDIR:-/tmp}/kreach-quickstart.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for node in emr-worker-1 emr-worker-2 emr-worker-3; do
    python3 "$here/fake-kafka.py" stop "$sandbox/$node/state" 2>/dev/null || true
  done
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

step "certificates: a CA, the coordinator, the admin (kreachctl) and one per node"
show "$ctl" certs init --dir "$sandbox/certs" --node emr-worker-1 --node emr-worker-2 --node emr-worker-3 --node etl-1 --node laptop-1 | tail -3

step "the coordinator (mutual TLS on 127.0.0.1:$port)"
cat > "$sandbox/coordinator.toml" <<TOML
listen = "127.0.0.1:$port"
state_dir = "$sandbox/coordinator"
[tls]
ca = "$sandbox/certs/ca.pem"
cert = "$sandbox/certs/coordinator.pem"
key = "$sandbox/certs/coordinator.key"
TOML
"$coordinator" --config "$sandbox/coordinator.toml" 2> "$sandbox/coordinator.log" &
pids+=($!)
export KREACH_COORDINATOR="https://127.0.0.1:$port" KREACH_CERTS="$sandbox/certs"
for _ in $(seq 50); do grep -q "listening on" "$sandbox/coordinator.log" && break; sleep 0.1; done

# The SCRAM password of the quickstart's user "app" (laptop-1's agent logs in with it).
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')

step "five agents: three brokers (stand-in Kafka on 127.0.100.x) and two clients"
for id in 1 2 3; do
  node=emr-worker-$id dir=$sandbox/emr-worker-$id
  mkdir -p "$dir/etc/kafka" "$dir/state"
  cp "$here/hosts.sample" "$dir/etc/hosts"
  cat > "$dir/etc/kafka/server.properties" <<PROPS
# Kafka broker $id (KRaft), before kreach: INTERNAL only.
node.id=$id
process.roles=broker,controller
controller.listener.names=CONTROLLER
listeners=INTERNAL://127.0.100.$id:29092,CONTROLLER://127.0.100.$id:29094
advertised.listeners=INTERNAL://127.0.100.$id:29092
listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
PROPS
  FAKE_KAFKA_EIP=127.0.200.$id python3 "$here/fake-kafka.py" restart "$dir/etc/kafka/server.properties" "$dir/state"
  # Broker 2 plays the active controller.
  [ "$id" = 2 ] && touch "$dir/is-controller"
  cat > "$dir/agent.toml" <<TOML
node = "$node"
state_dir = "$dir/state"
[manage]
hosts_file = "$dir/etc/hosts"
kafka_properties = "$dir/etc/kafka/server.properties"
kafka_tls_dir = "$dir/etc/kafka/kreach-tls"
probe = "kafka"
controller_check = ["test", "-e", "$dir/is-controller"]
[service_manager]
kind = "command"
restart = ["python3", "$here/fake-kafka.py", "restart", "$dir/etc/kafka/server.properties", "$dir/state"]
[coordinator]
url = "https://127.0.0.1:$port"
ca = "$sandbox/certs/ca.pem"
cert = "$sandbox/certs/nodes/$node.pem"
key = "$sandbox/certs/nodes/$node.key"
TOML
done
for node in etl-1 laptop-1; do
  dir=$sandbox/$node
  mkdir -p "$dir/etc" "$dir/state"
  cp "$here/hosts.sample" "$dir/etc/hosts"
  (umask 077; printf '%s\n' "$password" > "$dir/scram-password")
  cat > "$dir/agent.toml" <<TOML
node = "$node"
state_dir = "$dir/state"
[manage]
hosts_file = "$dir/etc/hosts"
kafka_ca_dir = "$dir/etc/kreach/kafka-ca"
[reachability]
# Programs on this machine resolve through the real /etc/hosts, not this sandbox file: check the
# names the way a client host whose /etc/hosts this were would.
resolve = "hosts_file"
# On the SASL_SSL public listener the check logs in as a Kafka client would.
sasl_username = "app"
sasl_password_file = "$dir/scram-password"
[coordinator]
url = "https://127.0.0.1:$port"
ca = "$sandbox/certs/ca.pem"
cert = "$sandbox/certs/nodes/$node.pem"
key = "$sandbox/certs/nodes/$node.key"
TOML
done
for node in emr-worker-1 emr-worker-2 emr-worker-3 etl-1 laptop-1; do
  # A broker's restarts inherit FAKE_KAFKA_EIP: its stand-in also answers on its "elastic IP".
  eip=(); [[ $node == emr-worker-* ]] && eip=("FAKE_KAFKA_EIP=127.0.200.${node#emr-worker-}")
  env "${eip[@]}" KREACH_LOG="${KREACH_LOG:-warn}" \
    "$agent" --config "$sandbox/$node/agent.toml" run 2> "$sandbox/$node/agent.log" &
  pids+=($!)
done
for _ in $(seq 100); do
  [ "$("$ctl" status --output json | python3 -c 'import json,sys; print(sum(n["online"] for n in json.load(sys.stdin)["nodes"]))')" = 5 ] && break
  sleep 0.1
done
show "$ctl" nodes

step "a SCRAM user for the public listener: kreachctl salts the password, the coordinator keeps only that"
printf '%s\n' "$password" | show "$ctl" users add app --mechanism SCRAM-SHA-512
show "$ctl" users list

step "the plan: per-node diffs and the step order (nothing changes yet)"
show "$ctl" plan "$here/fleet.toml" || echo "(plan exited $?)"

step "apply and follow the rollout to the end"
echo "(The warnings above are real: these five \"hosts\" are one machine, so the agents' host facts do"
echo " not match the spec and kreach refuses to plan or apply without --force. Here that is expected.)"
show "$ctl" apply --yes --force --wait "$here/fleet.toml"

step "result"
show "$ctl" status
# check: exit 0 only when every node converged, no host problem, and every client reaches every
# broker of its view (here through the names kreach just wrote into its hosts file).
show "$ctl" check
show "$ctl" history
show cat "$sandbox/emr-worker-2/etc/kafka/server.properties"
show cat "$sandbox/laptop-1/etc/hosts"
printf '\nTLS on the public listener: each broker key store is 0600 and holds its own key; laptop-1 trusts the Kafka CA kreach installed:\n'
show ls -l "$sandbox/emr-worker-2/etc/kafka/kreach-tls" "$sandbox/laptop-1/etc/kreach/kafka-ca"
printf '\nWhat a Kafka client on laptop-1 needs (USER is app, PASSWORD is in laptop-1/scram-password):\n'
show "$ctl" client-config laptop-1
printf '\nKafka restarts, as the stand-in services logged them (one at a time, the controller last):\n'
for id in 1 2 3; do printf 'emr-worker-%s %s\n' "$id" "$(tail -1 "$sandbox/emr-worker-$id/state/restarts.log")"; done |
  sort -k2 -n | awk 'NR == 1 { t0 = $2 } { printf "  +%6.0f ms  %s down for %.0f ms\n", ($2 - t0) / 1e6, $1, ($3 - $2) / 1e6 }'
echo
echo "Logs and files stay in $sandbox (remove it with: rm -rf $sandbox)."
