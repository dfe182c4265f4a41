#!/usr/bin/env bash
# The fleet benchmark (issue 11): a real kreach-coordinator, N client agents and 3 broker agents as
# real processes on sandbox directories, inside a network namespace of their own (loopback only),
# each agent under a uid of its own. It times a hosts-only change to every client's hosts file
# three ways — `kreachctl apply --wait`, an independent poller that sees the last file change, a
# no-change re-apply — then Ansible's blockinfile of the same block into N other files, and the
# idle footprint of an agent and the coordinator. It prints one markdown table; no thresholds.
#
#   benches/fleet/run.sh [--agents 200] [--runs 3] [--idle-seconds 60] [--no-ansible]
#                        [--ansible-forks 10] [--poll-interval-ms 2] [--uid-base 3100000] [--keep]
#                        [--bin-dir DIR]   (binaries built elsewhere, e.g. to compare two builds; no cargo build)
#
# Needs root (ip netns, setpriv), python3 >= 3.9 with venv, cargo; Ansible (ansible-core, pinned
# below) is installed by pip into a venv in $KREACH_BENCH_CACHE (default /var/cache/kreach-bench),
# outside the checkout, and reused. See benches/fleet/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
ansible_version=2.19.14
cache=${KREACH_BENCH_CACHE:-/var/cache/kreach-bench}

agents=200 runs=3 idle_seconds=60 with_ansible=1 forks=10 poll_interval_ms=2 uid_base=3100000 keep=0
bin_dir=
usage() { sed -n '9,11p' "$0" | sed 's/^# *//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --agents) agents=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --idle-seconds) idle_seconds=$2; shift 2 ;;
    --no-ansible) with_ansible=0; shift ;;
    --ansible-forks) forks=$2; shift 2 ;;
    --poll-interval-ms) poll_interval_ms=$2; shift 2 ;;
    --uid-base) uid_base=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --bin-dir) bin_dir=$(cd "$2" && pwd); shift 2 ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown argument $1" >&2; usage ;;
  esac
done
for value in "$agents" "$runs" "$idle_seconds" "$forks" "$uid_base"; do
  [[ $value =~ ^[0-9]+$ ]] || { echo "run.sh: $value is not a whole number" >&2; exit 2; }
done
if [ "$agents" -lt 1 ] || [ "$agents" -gt 1000 ]; then echo "run.sh: --agents must be 1..1000" >&2; exit 2; fi
if [ "$runs" -lt 1 ] || [ "$runs" -gt 20 ]; then echo "run.sh: --runs must be 1..20" >&2; exit 2; fi
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (ip netns add, setpriv to one uid per agent)" >&2; exit 1; }
for tool in ip setpriv python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done

started=$EPOCHREALTIME
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
say() { printf '[%6.1fs] %s\n' "$(elapsed)" "$*" >&2; }
elapsed() { python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$EPOCHREALTIME" "$started"; }
seconds_since() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$EPOCHREALTIME" "$1"; }
measure() { python3 "$here/measure.py" "$@"; }

# ---- 1. binaries and Ansible (before anything runs, so neither disturbs a measurement) ----------
if [ -z "$bin_dir" ]; then
  say "building release binaries (cargo build --release -p kreach-agent -p kreach-coordinator)"
  command -v cargo >/dev/null || { echo "run.sh: cargo not found (or pass --bin-dir)" >&2; exit 1; }
  (cd "$root" && cargo build --release --quiet -p kreach-agent -p kreach-coordinator --bins)
  bin_dir=$target/release
fi
for binary in kreach-agent kreach-coordinator kreachctl; do
  [ -x "$bin_dir/$binary" ] || { echo "run.sh: $bin_dir/$binary is missing" >&2; exit 1; }
done
venv=$cache/ansible-venv
if [ "$with_ansible" = 1 ]; then
  installed=$("$venv/bin/ansible-playbook" --version 2>/dev/null || true)
  if [[ $installed != *"[core $ansible_version]"* ]]; then
    say "installing ansible-core==$ansible_version into $venv"
    mkdir -p "$cache"
    python3 -m venv --clear "$venv"
    timeout 900 "$venv/bin/pip" install --quiet --disable-pip-version-check "ansible-core==$ansible_version"
  fi
fi

# ---- 2. sandbox, namespace, uids ------------------------------------------------------------------
ns=kreach-bench-$$
sandbox=$(mktemp -d "${TMPDIR:-/tmp}/kreach-bench.XXXXXX")
chmod 0755 "$sandbox"
brokers=3
nodes_total=$((agents + brokers + 1)) # + the stand-alone agent
pids=()         # every daemon this script started, stopped by PID on exit
poller_pid=
netns_made=0
alive() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
# Stop every daemon we started, by PID: SIGTERM, at most 10 s for an orderly stop, then SIGKILL;
# then the stand-in Kafkas (started by us or by an agent's restart command), by their PID files.
stop_fleet() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local left=0
    for pid in "${pids[@]}"; do alive "$pid" && left=1 && break; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  pids=()
  for id in $(seq "$brokers"); do
    local file=$sandbox/brokers/emr-worker-$id/state/fake-kafka.pid
    if [ -s "$file" ]; then
      kill -TERM "$(cat "$file")" 2>/dev/null || true
      rm -f "$file"
    fi
  done
  return 0
}
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$poller_pid" ] && kill "$poller_pid" 2>/dev/null
  stop_fleet
  if [ "$netns_made" = 1 ]; then
    # Anything still running in our namespace was started by this script (or its children).
    for _ in $(seq 50); do # at most 5 s until the namespace is empty
      local inside
      inside=$(ip netns pids "$ns" 2>/dev/null)
      [ -z "$inside" ] && break
      for pid in $inside; do kill -KILL "$pid" 2>/dev/null; done
      sleep 0.1
    done
    ip netns del "$ns" 2>/dev/null
  fi
  # Nothing may outlive us under the benchmark's uids (zombies waiting for PID 1 are dead already).
  local stray=
  for _ in $(seq 50); do
    stray=$(ps -e -o pid=,uid=,stat= | awk -v lo="$uid_base" -v hi=$((uid_base + nodes_total)) \
      '$2 >= lo && $2 <= hi && $3 !~ /^Z/ { print $1 }')
    [ -z "$stray" ] && break
    sleep 0.1
  done
  [ -n "$stray" ] && echo "run.sh: warning: still running under the benchmark's uids: $stray" >&2
  if [ "$keep" = 1 ]; then
    echo "sandbox kept in $sandbox (files owned by uids $uid_base..$((uid_base + nodes_total)))" >&2
  else
    rm -rf "$sandbox"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One uid per agent (the per-user inotify limit is 128 instances), none of them in use.
uid_last=$((uid_base + nodes_total))
if getent passwd | awk -F: -v lo="$uid_base" -v hi="$uid_last" '$3 >= lo && $3 <= hi { found = 1 } END { exit !found }' ||
   ps -e -o uid= | awk -v lo="$uid_base" -v hi="$uid_last" '$1 >= lo && $1 <= hi { found = 1 } END { exit !found }'; then
  echo "run.sh: a uid in $uid_base..$uid_last belongs to a user or a running process; pick another --uid-base" >&2
  exit 1
fi

ip netns add "$ns"
netns_made=1
ip -n "$ns" link set lo up

# Binaries and the stand-in Kafka copied into the sandbox: every agent uid can read them there,
# wherever the checkout lives.
mkdir -p "$sandbox/bin"
for binary in kreach-agent kreach-coordinator kreachctl; do cp "$bin_dir/$binary" "$sandbox/bin/"; done
cp "$root/examples/quickstart/fake-kafka.py" "$sandbox/bin/"
chmod 0755 "$sandbox/bin" "$sandbox/bin"/*
agent=$sandbox/bin/kreach-agent
fake_kafka=$sandbox/bin/fake-kafka.py

# A python3 the agents' uids may run (a pyenv one under /root is not): the stand-in Kafka's.
uid_python=
for candidate in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3)"; do
  if [ -x "$candidate" ] && setpriv --reuid="$uid_base" --regid="$uid_base" --clear-groups "$candidate" -c pass 2>/dev/null; then
    uid_python=$candidate
    break
  fi
done
[ -n "$uid_python" ] || { echo "run.sh: no python3 that an unprivileged uid can run" >&2; exit 1; }

clients=()
for i in $(seq "$agents"); do clients+=("$(printf 'client-%03d' "$i")"); done
broker_nodes=()
for id in $(seq "$brokers"); do broker_nodes+=("emr-worker-$id"); done

# ---- 3. the two specs: they differ only in broker 1's public address ------------------------------
# Every client has the public view and the EXTERNAL listener advertises hostnames, so a client's
# hosts block maps each broker's hostname to its public address; brokers bind and advertise by
# private address and name, so moving a public address changes the clients' hosts files only.
write_spec() { # FILE PUBLIC_IP_OF_BROKER_1
  {
    printf '[cluster]\nname = "bench"\nmetadata = "kraft"\n\n'
    printf '[listeners.internal]\nport = 29092\nbind = "private_ip"\nadvertise = "hostname"\n\n'
    printf '[listeners.external]\nenabled = true\nport = 29093\nbind = "private_ip"\nadvertise = "hostname"\nallow = ["198.19.0.0/16"]\n'
    for id in $(seq "$brokers"); do
      local public=198.19.0.$id
      [ "$id" = 1 ] && public=$2
      printf '\n[[broker]]\nid = %s\nnode = "emr-worker-%s"\nhostname = "emr-worker-%s.bench"\nprivate_ip = "127.0.100.%s"\npublic_ip = "%s"\n' \
        "$id" "$id" "$id" "$id" "$public"
    done
    for node in "${clients[@]}"; do printf '\n[[client]]\nnode = "%s"\nview = "public"\n' "$node"; done
    # settle only follows steps that restart a broker: it matters for the initial apply, not for
    # the hosts-only changes measured here.
    printf '\n[rollout]\nmax_unavailable = 1\nhealth_timeout = "30s"\nsettle = "0s"\n'
  } > "$1"
}
spec_a=$sandbox/spec-a.toml spec_b=$sandbox/spec-b.toml
write_spec "$spec_a" 198.19.0.1
write_spec "$spec_b" 198.19.1.1
# The line each spec puts into every client's hosts file (tab-separated, as kreach renders it).
needle_a='^198\.19\.0\.1\temr-worker-1\.bench emr-worker-1$'
needle_b='^198\.19\.1\.1\temr-worker-1\.bench emr-worker-1$'

# ---- 4. certificates, coordinator ----------------------------------------------------------------
say "certificates for ${#clients[@]} clients and $brokers brokers (kreachctl certs init)"
node_args=()
for node in "${broker_nodes[@]}" "${clients[@]}"; do node_args+=(--node "$node"); done
"$sandbox/bin/kreachctl" certs init --dir "$sandbox/certs" "${node_args[@]}" >/dev/null
port=7443
mkdir -p "$sandbox/coordinator"
cat > "$sandbox/coordinator.toml" <<TOML
listen = "127.0.0.1:$port"
state_dir = "$sandbox/coordinator/state"
[tls]
ca = "$sandbox/certs/ca.pem"
cert = "$sandbox/certs/coordinator.pem"
key = "$sandbox/certs/coordinator.key"
TOML
# Daemons are started as simple commands (never a shell function) in the background, so that $!
# is the daemon itself: `ip netns exec` and `setpriv` exec into it.
KREACH_LOG=warn ip netns exec "$ns" "$sandbox/bin/kreach-coordinator" --config "$sandbox/coordinator.toml" \
  2> "$sandbox/coordinator/log" &
coordinator_pid=$!
pids+=("$coordinator_pid")
# Every kreachctl call is bounded (apply --wait follows a rollout that could hang).
ctl() { timeout 300 ip netns exec "$ns" "$sandbox/bin/kreachctl" --coordinator "https://127.0.0.1:$port" --certs "$sandbox/certs" "$@"; }
for _ in $(seq 100); do ctl nodes >/dev/null 2>&1 && break; sleep 0.1; done
ctl nodes >/dev/null || { echo "run.sh: the coordinator did not start; its log:" >&2; cat "$sandbox/coordinator/log" >&2; exit 1; }

# ---- 5. agents: 3 brokers with a stand-in Kafka, N clients, one stand-alone -----------------------
next_uid=$uid_base
make_host() { # DIR NODE [with-coordinator]
  local dir=$1 node=$2
  mkdir -p "$dir/etc" "$dir/state" "$dir/tls"
  printf '127.0.0.1\tlocalhost\n' > "$dir/etc/hosts"
  {
    printf 'node = "%s"\nstate_dir = "%s/state"\n[manage]\nhosts_file = "%s/etc/hosts"\n' "$node" "$dir" "$dir"
    if [ "${3:-}" = with-coordinator ]; then
      cp "$sandbox/certs/ca.pem" "$dir/tls/ca.pem"
      cp "$sandbox/certs/nodes/$node.pem" "$dir/tls/node.pem"
      cp "$sandbox/certs/nodes/$node.key" "$dir/tls/node.key"
      printf '[coordinator]\nurl = "https://127.0.0.1:%s"\nca = "%s/tls/ca.pem"\ncert = "%s/tls/node.pem"\nkey = "%s/tls/node.key"\n' \
        "$port" "$dir" "$dir" "$dir" > "$dir/coordinator.part"
    fi
  } > "$dir/agent.toml"
}
say "starting $brokers broker agents (stand-in Kafka on 127.0.100.x) and ${#clients[@]} client agents, one uid each"
agent_pids_file=$sandbox/agent-pids
: > "$agent_pids_file"
start_agent() { # DIR UID
  KREACH_LOG=warn ip netns exec "$ns" setpriv --reuid="$2" --regid="$2" --clear-groups \
    "$agent" --config "$1/agent.toml" run 2> "$1/agent.log" &
  pids+=($!)
  echo $! >> "$agent_pids_file"
}
for id in $(seq "$brokers"); do
  node=emr-worker-$id dir=$sandbox/brokers/emr-worker-$id uid=$next_uid
  next_uid=$((next_uid + 1))
  make_host "$dir" "$node" with-coordinator
  mkdir -p "$dir/etc/kafka"
  cat > "$dir/etc/kafka/server.properties" <<PROPS
# KRaft broker $id, before kreach: INTERNAL only.
node.id=$id
process.roles=broker,controller
controller.listener.names=CONTROLLER
listeners=INTERNAL://127.0.100.$id:29092,CONTROLLER://127.0.100.$id:29094
advertised.listeners=INTERNAL://127.0.100.$id:29092
listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
PROPS
  [ "$id" = 2 ] && touch "$dir/is-controller" # broker 2 plays the active controller: it goes last
  cat >> "$dir/agent.toml" <<TOML
kafka_properties = "$dir/etc/kafka/server.properties"
probe = "tcp"
controller_check = ["test", "-e", "$dir/is-controller"]
[service_manager]
kind = "command"
restart = ["$uid_python", "$fake_kafka", "restart", "$dir/etc/kafka/server.properties", "$dir/state"]
TOML
  cat "$dir/coordinator.part" >> "$dir/agent.toml"
  chown -R "$uid:$uid" "$dir"
  timeout 60 ip netns exec "$ns" setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    "$uid_python" "$fake_kafka" restart "$dir/etc/kafka/server.properties" "$dir/state"
  start_agent "$dir" "$uid"
done
client_dirs=()
for node in "${clients[@]}"; do
  dir=$sandbox/clients/$node uid=$next_uid
  next_uid=$((next_uid + 1))
  make_host "$dir" "$node" with-coordinator
  cat "$dir/coordinator.part" >> "$dir/agent.toml"
  chown -R "$uid:$uid" "$dir"
  client_dirs+=("$dir")
  start_agent "$dir" "$uid"
done
printf '%s/etc/hosts\n' "${client_dirs[@]}" > "$sandbox/client-hosts-files"
connected_pid=$(sed -n "$((brokers + 1))p" "$agent_pids_file") # client-001's agent

# The stand-alone agent: client-001's role, no coordinator; apply-local once, then `run`.
standalone=$sandbox/standalone uid=$next_uid
make_host "$standalone" "${clients[0]}"
chown -R "$uid:$uid" "$standalone"
KREACH_LOG=warn timeout 120 ip netns exec "$ns" setpriv --reuid="$uid" --regid="$uid" --clear-groups \
  "$agent" --config "$standalone/agent.toml" apply-local --spec "$spec_a" > "$standalone/apply-local.log" 2>&1
KREACH_LOG=warn ip netns exec "$ns" setpriv --reuid="$uid" --regid="$uid" --clear-groups \
  "$agent" --config "$standalone/agent.toml" run 2> "$standalone/agent.log" &
standalone_pid=$!
pids+=("$standalone_pid")

expected=$((agents + brokers))
online=0
for _ in $(seq 600); do # at most about 120 s
  online=$(ctl status --output json 2>/dev/null | python3 -c 'import json,sys; print(sum(bool(n.get("online")) for n in json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
  [ "$online" = "$expected" ] && break
  sleep 0.2
done
[ "$online" = "$expected" ] || { echo "run.sh: only $online of $expected agents came online" >&2; exit 1; }
say "all $expected agents online"
# The PIDs sampled below must be the daemons themselves.
for pid in "$coordinator_pid" "$connected_pid" "$standalone_pid"; do
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || echo gone)
  case $comm in kreach-agent|kreach-coordin*) ;; *) echo "run.sh: PID $pid is $comm, not a kreach daemon" >&2; exit 1 ;; esac
done

# ---- 6. the initial spec, then the timed changes ---------------------------------------------------
wait_files() { # NEEDLE DEADLINE_S OUT: wait until every client's hosts file holds NEEDLE
  measure poll "$sandbox/client-hosts-files" "$1" "$3" --deadline "$2" --interval-ms 20
}
say "initial apply (spec A: adds the EXTERNAL listener, so each broker restarts once)"
ctl apply --yes --force --wait "$spec_a" > "$sandbox/apply-initial.log" 2>&1 ||
  { echo "run.sh: the initial apply failed:" >&2; tail -20 "$sandbox/apply-initial.log" >&2; exit 1; }
wait_files "$needle_a" 60 "$sandbox/initial-poll.json" ||
  { echo "run.sh: not every client's hosts file converged to spec A: $(cat "$sandbox/initial-poll.json")" >&2; exit 1; }
cp "${client_dirs[0]}/etc/hosts" "$sandbox/hosts.A"

declare -a apply_s=() last_s=() first_s=() noop_s=() rewritten=() labels=() poller_cpu=()
for run in $(seq "$runs"); do
  if [ $((run % 2)) = 1 ]; then
    spec=$spec_b needle=$needle_b
    labels+=("A→B")
  else
    spec=$spec_a needle=$needle_a
    labels+=("B→A")
  fi
  rm -f "$sandbox/poll-ready"
  measure poll "$sandbox/client-hosts-files" "$needle" "$sandbox/poll-$run.json" \
    --deadline 120 --interval-ms "$poll_interval_ms" --ready "$sandbox/poll-ready" &
  poller_pid=$!
  for _ in $(seq 200); do [ -e "$sandbox/poll-ready" ] && break; sleep 0.05; done
  [ -e "$sandbox/poll-ready" ] || { echo "run.sh: the poller did not start" >&2; exit 1; }
  [ "$(cat "$sandbox/poll-ready")" = 0 ] || { echo "run.sh: run $run: some files held the new line before the apply" >&2; exit 1; }
  t0=$EPOCHREALTIME
  ctl apply --yes --force --wait "$spec" > "$sandbox/apply-$run.log" 2>&1 ||
    { echo "run.sh: run $run: apply failed:" >&2; tail -20 "$sandbox/apply-$run.log" >&2; exit 1; }
  apply_s+=("$(seconds_since "$t0")")
  wait "$poller_pid" || { echo "run.sh: run $run: not every file changed: $(cat "$sandbox/poll-$run.json")" >&2; exit 1; }
  poller_pid=
  read -r first last poll_cpu poll_sweeps < <(measure since "$sandbox/poll-$run.json" "$t0")
  first_s+=("$first") last_s+=("$last") poller_cpu+=("$poll_cpu/$poll_sweeps")
  [ "$run" = 1 ] && cp "${client_dirs[0]}/etc/hosts" "$sandbox/hosts.B"
  # (c) the same spec again: nothing to change. Files whose mtime moves were rewritten.
  touch "$sandbox/before-noop"
  sleep 0.01
  t0=$EPOCHREALTIME
  ctl apply --yes --force --wait "$spec" > "$sandbox/apply-$run-again.log" 2>&1 ||
    { echo "run.sh: run $run: the no-change apply failed:" >&2; tail -20 "$sandbox/apply-$run-again.log" >&2; exit 1; }
  noop_s+=("$(seconds_since "$t0")")
  rewritten+=("$(find "$sandbox/clients" -path '*/etc/hosts' -newer "$sandbox/before-noop" | wc -l)")
  say "run $run (${labels[-1]}): apply --wait ${apply_s[-1]} s, first file $first s, last file $last s, no-change apply ${noop_s[-1]} s"
done

# ---- 7. idle footprint -----------------------------------------------------------------------------
coordinator_rss_connected=$(measure rss "$coordinator_pid")
say "idle: sampling the agents and the coordinator for $idle_seconds s"
idle_json=$(measure sample "$idle_seconds" standalone="$standalone_pid" connected="$connected_pid" \
  coordinator="$coordinator_pid" --group all_agents="$agent_pids_file")

# ---- 8. Ansible: the same block into N other files --------------------------------------------------
# The kreach fleet is stopped first: each tool is timed with only its own processes running (on a
# real fleet the agents run on the client hosts, not beside the Ansible controller).
say "stopping the coordinator and the agents"
stop_fleet
ansible_s=n/a ansible_same=n/a ansible_changed=n/a
if [ "$with_ansible" = 1 ]; then
  say "Ansible: blockinfile into ${#clients[@]} files (forks $forks)"
  mkdir -p "$sandbox/ansible/files" "$sandbox/ansible/home"
  : > "$sandbox/ansible/inventory"
  for node in "${clients[@]}"; do
    mkdir -p "$sandbox/ansible/files/$node"
    cp "$sandbox/hosts.A" "$sandbox/ansible/files/$node/hosts"
    printf '%s ansible_connection=local ansible_python_interpreter=%s\n' "$node" "$venv/bin/python" >> "$sandbox/ansible/inventory"
  done
  python3 - "$sandbox/hosts.B" "$sandbox/ansible/files" > "$sandbox/ansible/vars.json" <<'PY'
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
begin = next(i for i, line in enumerate(lines) if line.startswith("# BEGIN kreach"))
end = next(i for i, line in enumerate(lines) if line.startswith("# END kreach"))
print(json.dumps({
    "bench_files": sys.argv[2],
    "kreach_marker_begin": lines[begin][2:],
    "kreach_marker_end": lines[end][2:],
    "kreach_block": "\n".join(lines[begin + 1:end]),
}))
PY
  t0=$EPOCHREALTIME
  timeout 1800 ip netns exec "$ns" env ANSIBLE_HOME="$sandbox/ansible/home" ANSIBLE_LOCAL_TEMP="$sandbox/ansible/home/tmp" \
    ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 \
    "$venv/bin/ansible-playbook" -i "$sandbox/ansible/inventory" -f "$forks" \
    -e "@$sandbox/ansible/vars.json" "$here/blockinfile.yml" > "$sandbox/ansible/log" 2>&1 ||
    { echo "run.sh: ansible-playbook failed:" >&2; tail -20 "$sandbox/ansible/log" >&2; exit 1; }
  ansible_s=$(seconds_since "$t0")
  ansible_changed=$(grep -cE 'changed=1 ' "$sandbox/ansible/log" || true)
  ansible_same=0
  for node in "${clients[@]}"; do
    cmp -s "$sandbox/hosts.B" "$sandbox/ansible/files/$node/hosts" && ansible_same=$((ansible_same + 1))
  done
fi
loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 9. the table -----------------------------------------------------------------------------------
total_s=$(seconds_since "$started")
python3 - "$idle_json" "$coordinator_rss_connected" <<PY
import json, statistics, sys, platform, os
idle = json.loads(sys.argv[1])
coordinator_rss_connected = int(sys.argv[2])
labels = "${labels[*]}".split()
apply_s = [float(x) for x in "${apply_s[*]}".split()]
first_s = [float(x) for x in "${first_s[*]}".split()]
last_s = [float(x) for x in "${last_s[*]}".split()]
noop_s = [float(x) for x in "${noop_s[*]}".split()]
rewritten = "${rewritten[*]}".split()
ansible = "$ansible_s"
mib = lambda kib: f"{kib / 1024:.1f} MiB"
med = statistics.median
rows = []
add = lambda what, value: rows.append((what, value))
add("machine", f"{os.cpu_count()} cores, Linux {platform.release()}, load average at start $loadavg_start")
add("fleet", f"kreach-coordinator + $agents client agents + $brokers broker agents (stand-in Kafka), mutual TLS, "
    f"one network namespace (loopback only), one uid per agent; binaries from $bin_dir")
add("change", "broker 1's public address moves (198.19.0.1 ↔ 198.19.1.1): every client's hosts block changes, no broker restarts")
for i, label in enumerate(labels):
    add(f"run {i + 1} ({label}): (a) apply --wait / (b) first, last of $agents files / (c) no-change apply",
        f"{apply_s[i]:.3f} s / {first_s[i]:.3f} s, {last_s[i]:.3f} s / {noop_s[i]:.3f} s ({rewritten[i]} files rewritten)")
add(f"median of {len(labels)} changed runs: (a) apply --wait", f"{med(apply_s):.3f} s")
add(f"median: (b) last hosts file holds the new line (poller, {float('$poll_interval_ms'):g} ms between sweeps)", f"{med(last_s):.3f} s")
add("the poller's own CPU seconds / sweeps, per run", ", ".join("${poller_cpu[*]}".split()))
add("median: (c) no-change re-apply --wait", f"{med(noop_s):.3f} s")
if ansible != "n/a":
    a = float(ansible)
    add(f"Ansible: ansible-core $ansible_version blockinfile, $agents hosts, connection local, forks $forks, no fact gathering, kreach fleet stopped",
        f"{a:.2f} s ($ansible_changed hosts changed; {'$ansible_same'} of $agents files byte-identical to kreach's)")
    add("ratio Ansible / kreach (a) apply --wait", f"{a / med(apply_s):.0f}×")
    add("ratio Ansible / kreach (b) last file", f"{a / med(last_s):.0f}×")
else:
    add("Ansible", "not run (--no-ansible)")
window = f"over {idle['seconds']:.0f} s"
for key, what in (("standalone", "idle agent, stand-alone (no coordinator)"),
                  ("connected", "idle agent, connected over mTLS (client-001)"),
                  ("coordinator", f"coordinator, $((agents + brokers)) agents connected")):
    s = idle[key]
    add(f"{what}: RSS / CPU {window}", f"{mib(s['rss_kib'])} (peak {mib(s['rss_peak_kib'])}) / {s['cpu_percent']:.3f} % of a core")
add("coordinator RSS right after the runs", mib(coordinator_rss_connected))
s = idle["all_agents"]
add(f"all $((agents + brokers)) connected agents together: CPU {window}", f"{s['cpu_percent']:.2f} % of a core ({s['alive']} alive, RSS sum {mib(s['rss_kib'])})")
add("load average at start / end", "$loadavg_start / $loadavg_end")
add("benchmark wall time", f"{float('$total_s'):.0f} s")
print()
print("| what | measured |")
print("|---|---|")
for what, value in rows:
    print(f"| {what} | {value} |")
PY
