//! e2e-systemd tier: the whole `kreach-agent apply-local` on a broker host booting real systemd.
//!
//! Run as its own tier: `cargo test -p kreach-tests --test e2e_systemd_agent` (as root). Each test
//! boots one systemd-nspawn host with the real `kreach-agent` binary and a stand-in broker
//! (`tests/examples/fake_broker.rs`, which opens exactly the listeners of server.properties) as
//! `kafka.service`, then runs the agent in the container with `kind = "systemd"`: the plan, the
//! writes, `RestartUnit` over D-Bus, the TCP listener checks, and the rollback when the restarted
//! broker cannot start. Both binaries are built by the test into the target dir it lives in.
//! Not root or a rootfs that cannot be prepared fails it, unless the tier is opted out
//! (`KREACH_SKIP=e2e-systemd`).

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kreach_tests::artifacts::build_artifact;
use kreach_tests::nspawn::{boot_or_skip, Host};

const AGENT: &str = "/usr/local/bin/kreach-agent";
const FAKE_BROKER: &str = "/usr/local/bin/fake_broker";
const AGENT_CONFIG: &str = "/etc/kreach/agent.toml";
const PROPERTIES: &str = "/etc/kafka/server.properties";
const HOSTS: &str = "/etc/hosts";
const SPEC: &str = "/root/spec.toml";
const UNIT: &str = "kafka.service";

const INTERNAL_PORT: u16 = 9092;
const CONTROLLER_PORT: u16 = 9094;

/// The host's hosts file before kreach arrives.
const INITIAL_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// A KRaft broker's server.properties before kreach: INTERNAL and CONTROLLER only.
const INITIAL_PROPERTIES: &str = "# Kafka broker configuration (KRaft mode).\n\
process.roles=broker,controller\n\
node.id=1\n\
controller.listener.names=CONTROLLER\n\
\n\
listeners=INTERNAL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9094\n\
advertised.listeners=INTERNAL://emr-worker-1.cluster-48742:9092\n\
listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
inter.broker.listener.name=INTERNAL\n\
num.partitions=3\n";

const AGENT_TOML: &str = "node = \"emr-worker-1\"\n\
\n\
[manage]\n\
hosts_file = \"/etc/hosts\"\n\
kafka_properties = \"/etc/kafka/server.properties\"\n\
kafka_unit = \"kafka.service\"\n\
probe = \"tcp\"\n\
\n\
[service_manager]\n\
kind = \"systemd\"\n";

const KAFKA_UNIT: &str = "[Unit]\n\
Description=Kafka stand-in (fake_broker) for the kreach e2e-systemd tier\n\
\n\
[Service]\n\
Type=simple\n\
ExecStart=/usr/local/bin/fake_broker /etc/kafka/server.properties\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n";

/// Three brokers (this host is broker 1) advertising hostnames internally and public IPs on
/// EXTERNAL, both bound to loopback; a private and a public client. Addresses from 198.18.0.0/15.
fn spec(external_port: u16) -> String {
    let mut text = format!(
        "[cluster]\nname = \"emr-48742\"\n\n\
         [listeners.internal]\nport = {INTERNAL_PORT}\nbind = \"127.0.0.1\"\nadvertise = \"hostname\"\n\n\
         [listeners.external]\nenabled = true\nport = {external_port}\nbind = \"127.0.0.1\"\n\
         advertise = \"public_ip\"\nallow = [\"198.19.0.0/24\"]\n"
    );
    for id in 1..=3 {
        text += &format!(
            "\n[[broker]]\nid = {id}\nnode = \"emr-worker-{id}\"\nhostname = \"emr-worker-{id}.cluster-48742\"\n\
             private_ip = \"198.18.0.1{id}\"\npublic_ip = \"198.19.0.1{id}\"\n"
        );
    }
    text += "\n[[client]]\nnode = \"etl-1\"\nview = \"private\"\n\n\
             [[client]]\nnode = \"laptop-1\"\nview = \"public\"\n\n\
             [rollout]\nhealth_timeout = \"20s\"\n";
    text
}

/// `kreach-agent` and `fake_broker`, built once per test process.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let agent = build_artifact(
            &["-p", "kreach-agent", "--bin", "kreach-agent"],
            "kreach-agent",
        )
        .expect("building kreach-agent");
        let broker = build_artifact(
            &["-p", "kreach-tests", "--example", "fake_broker"],
            "examples/fake_broker",
        )
        .expect("building the fake_broker example");
        (agent, broker)
    })
}

/// One `kreach-agent` run inside the host.
struct AgentRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl fmt::Display for AgentRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A booted broker host: agent config, server.properties, hosts file and a running kafka.service.
struct Broker {
    host: Host,
}

impl Broker {
    fn boot_or_skip(test: &str) -> Option<Broker> {
        // Boot (or opt out) first: without root, building the binaries would fail with a worse message.
        let host = boot_or_skip(test)?;
        let (agent, broker) = binaries();
        host.copy_in(agent, AGENT).expect("copying kreach-agent in");
        host.copy_in(broker, FAKE_BROKER)
            .expect("copying fake_broker in");
        host.write_file(AGENT_CONFIG, AGENT_TOML.as_bytes(), 0o644)
            .unwrap();
        host.write_file(PROPERTIES, INITIAL_PROPERTIES.as_bytes(), 0o644)
            .unwrap();
        host.write_file(HOSTS, INITIAL_HOSTS.as_bytes(), 0o644)
            .unwrap();
        host.write_file(
            &format!("/etc/systemd/system/{UNIT}"),
            KAFKA_UNIT.as_bytes(),
            0o644,
        )
        .unwrap();
        host.exec_ok(&["systemctl", "daemon-reload"]).unwrap();
        host.exec_ok(&["systemctl", "enable", "--now", UNIT])
            .unwrap();
        let broker = Broker { host };
        broker.wait_until_accepts(INTERNAL_PORT);
        broker.wait_until_accepts(CONTROLLER_PORT);
        Some(broker)
    }

    /// Write `spec` to /root/spec.toml and run `kreach-agent apply-local` on it, with a clean
    /// environment (nothing of the test process's leaks in through nsenter).
    fn apply(&self, spec: &str) -> AgentRun {
        self.host.write_file(SPEC, spec.as_bytes(), 0o644).unwrap();
        let output = self
            .host
            .exec(&[
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "KREACH_LOG=info",
                AGENT,
                "--config",
                AGENT_CONFIG,
                "apply-local",
                "--spec",
                SPEC,
            ])
            .expect("running kreach-agent in the host");
        AgentRun {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn unit(&self, property: &str) -> String {
        self.host.unit_property(UNIT, property).unwrap()
    }

    fn read(&self, path: &str) -> String {
        String::from_utf8(self.host.read_file(path).unwrap()).unwrap()
    }

    /// Whether 127.0.0.1:`port` accepts a TCP connection inside the host (bash's /dev/tcp: the
    /// rootfs has no other client).
    fn accepts(&self, port: u16) -> bool {
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
        self.host
            .exec(&["bash", "-c", &script])
            .is_ok_and(|o| o.status.success())
    }

    fn wait_until_accepts(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.accepts(port) {
            assert!(
                Instant::now() < deadline,
                "nothing accepts on 127.0.0.1:{port} in {} within 20s; {UNIT} is {}; journal:\n{}",
                self.host.name(),
                self.unit("ActiveState"),
                self.journal(UNIT)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_journal(&self, unit: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let journal = self.journal(unit);
            if journal.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the journal of {unit} within 10s:\n{journal}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn journal(&self, unit: &str) -> String {
        self.host
            .exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(journalctl failed: {e:#})"))
    }
}

/// The value of the last `key=` line of a properties text.
fn property<'a>(properties: &'a str, key: &str) -> &'a str {
    properties
        .lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in:\n{properties}"))
}

#[test]
fn apply_local_restarts_kafka_through_systemd_then_has_nothing_to_change() {
    let Some(broker) = Broker::boot_or_skip("agent-apply") else {
        return;
    };
    let invocation_before = broker.unit("InvocationID");
    assert!(!invocation_before.is_empty());

    let run = broker.apply(&spec(9093));
    assert_eq!(run.code, Some(0), "{run}");
    for line in [
        "node emr-worker-1 (broker 1) in cluster emr-48742",
        "wrote /etc/hosts",
        "wrote /etc/kafka/server.properties",
        "restarted kafka.service",
        "check passed: INTERNAL accepts connections on 127.0.0.1:9092",
        "check passed: EXTERNAL accepts connections on 127.0.0.1:9093",
        "converged: emr-worker-1 matches the spec",
    ] {
        assert!(run.stdout.contains(line), "missing {line:?}:\n{run}");
    }

    // systemd really ran a new invocation of the unit, and it is the one serving now.
    let invocation_after = broker.unit("InvocationID");
    assert_ne!(
        invocation_after, invocation_before,
        "systemd restarted {UNIT}:\n{run}"
    );
    assert_eq!(broker.unit("ActiveState"), "active");
    for port in [9092, 9093, 9094] {
        assert!(
            broker.accepts(port),
            "127.0.0.1:{port} accepts after the apply"
        );
    }

    let properties = broker.read(PROPERTIES);
    assert_eq!(
        property(&properties, "listeners"),
        "INTERNAL://127.0.0.1:9092,EXTERNAL://127.0.0.1:9093,CONTROLLER://127.0.0.1:9094",
        "EXTERNAL added, CONTROLLER kept:\n{properties}"
    );
    assert!(
        property(&properties, "advertised.listeners").contains("EXTERNAL://198.19.0.11:9093"),
        "{properties}"
    );
    assert!(
        property(&properties, "listener.security.protocol.map").contains("CONTROLLER:PLAINTEXT"),
        "{properties}"
    );
    for untouched in [
        "process.roles=broker,controller\n",
        "controller.listener.names=CONTROLLER\n",
        "num.partitions=3\n",
    ] {
        assert!(
            properties.contains(untouched),
            "{untouched:?} kept:\n{properties}"
        );
    }

    // The real /etc/hosts of the host (a plain file of the overlay inside nspawn).
    let hosts = broker.read(HOSTS);
    assert!(
        hosts.starts_with(INITIAL_HOSTS),
        "unmanaged lines kept first:\n{hosts}"
    );
    let begin = hosts
        .find("# BEGIN kreach emr-48742 ")
        .unwrap_or_else(|| panic!("no kreach block:\n{hosts}"));
    let block = &hosts[begin..];
    assert!(
        block.trim_end().ends_with("# END kreach emr-48742"),
        "{hosts}"
    );
    for id in 1..=3 {
        let name = format!("emr-worker-{id}.cluster-48742");
        let line = block
            .lines()
            .find(|line| line.split_whitespace().skip(1).any(|n| n == name))
            .unwrap_or_else(|| panic!("no entry for {name}:\n{hosts}"));
        assert_eq!(
            line.split_whitespace().next(),
            Some(format!("198.18.0.1{id}").as_str()),
            "a broker resolves its peers privately:\n{hosts}"
        );
    }

    // Again: converged, so nothing is written and Kafka keeps running undisturbed.
    let run = broker.apply(&spec(9093));
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("nothing to change"), "{run}");
    assert!(!run.stdout.contains("restarted"), "{run}");
    assert_eq!(
        broker.unit("InvocationID"),
        invocation_after,
        "no restart:\n{run}"
    );
    assert_eq!(broker.read(PROPERTIES), properties);
    assert_eq!(broker.read(HOSTS), hosts);
}

#[test]
fn apply_local_refuses_a_port_clash_before_writing_anything() {
    let Some(broker) = Broker::boot_or_skip("agent-clash") else {
        return;
    };
    let invocation_before = broker.unit("InvocationID");

    // EXTERNAL on the CONTROLLER's port: Kafka would refuse to start.
    let run = broker.apply(&spec(CONTROLLER_PORT));
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("EXTERNAL and CONTROLLER both use port 9094"),
        "the error names the clash:\n{run}"
    );
    assert!(!run.stdout.contains("restarted"), "{run}");
    assert_eq!(broker.read(PROPERTIES), INITIAL_PROPERTIES);
    assert_eq!(broker.read(HOSTS), INITIAL_HOSTS);
    assert_eq!(
        broker.unit("InvocationID"),
        invocation_before,
        "no restart:\n{run}"
    );
    assert_eq!(broker.unit("ActiveState"), "active");
}

#[test]
fn apply_local_rolls_back_when_kafka_cannot_start_on_the_new_listeners() {
    let Some(broker) = Broker::boot_or_skip("agent-rollback") else {
        return;
    };
    // Another process holds 127.0.0.1:9095, so a broker listening there dies at startup.
    broker
        .host
        .write_file(
            "/root/squat.properties",
            b"listeners=SQUAT://127.0.0.1:9095\n",
            0o644,
        )
        .unwrap();
    broker
        .host
        .exec_ok(&[
            "systemd-run",
            "--unit=squatter",
            FAKE_BROKER,
            "/root/squat.properties",
        ])
        .unwrap();
    broker.wait_until_accepts(9095);
    let invocation_before = broker.unit("InvocationID");
    let properties_before = broker.host.read_file(PROPERTIES).unwrap();
    let hosts_before = broker.host.read_file(HOSTS).unwrap();

    let run = broker.apply(&spec(9095));
    assert_eq!(run.code, Some(3), "{run}");
    assert!(run.stdout.contains("rolled back"), "{run}");
    assert!(
        run.stdout
            .contains("restart of kafka.service failed: kafka.service did not come back"),
        "the reason names the unit:\n{run}"
    );
    assert!(
        run.stdout.contains("restored /etc/kafka/server.properties"),
        "{run}"
    );
    // The broker died for the intended reason (journald ingests asynchronously: wait for it).
    broker.wait_for_journal(UNIT, "cannot bind listener EXTERNAL on 127.0.0.1:9095");

    assert_eq!(
        broker.host.read_file(PROPERTIES).unwrap(),
        properties_before,
        "server.properties is byte-identical to before"
    );
    assert_eq!(
        broker.host.read_file(HOSTS).unwrap(),
        hosts_before,
        "the hosts file is byte-identical to before"
    );
    assert_eq!(broker.unit("ActiveState"), "active", "{run}");
    assert_ne!(
        broker.unit("InvocationID"),
        invocation_before,
        "kafka.service was restarted on the restored config"
    );
    assert!(
        broker.accepts(INTERNAL_PORT),
        "127.0.0.1:9092 accepts again:\n{run}"
    );
    assert!(broker.accepts(CONTROLLER_PORT));
    assert_eq!(
        broker
            .host
            .unit_property("squatter.service", "ActiveState")
            .unwrap(),
        "active",
        "the squatter was left alone"
    );
}
