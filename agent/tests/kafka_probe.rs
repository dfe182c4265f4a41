//! The Kafka probes and gates against a real Kafka-protocol broker: tansu on loopback.
//!
//! tansu comes from `tests/e2e-net/install.sh` (CI runs it); `KREACH_TANSU` overrides the path.
//! Without it every test here fails with that command, unless the e2e-net tier is opted out
//! (`KREACH_SKIP=e2e-net`), which they say where it is seen.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use kreach_agent::kafka::{KafkaConnection, ProbeError};
use kreach_agent::verify::{KafkaProbe, ListenerProbe};
use kreach_domain::gates::RunningListener;
use kreach_domain::properties::ListenerSpec;

/// The tansu binary; `None` only when the e2e-net tier is opted out (KREACH_SKIP), a missing
/// broker otherwise fails the test with the command that installs it.
fn tansu_binary(test: &str) -> Option<PathBuf> {
    kreach_test_parts::tansu(kreach_test_parts::Tier::E2eNet, test)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker on loopback, killed (by its PID) when dropped.
struct Tansu {
    child: Child,
    addr: SocketAddr,
}

impl Tansu {
    /// Listen on a free loopback port and advertise `advertised` (default: the same address).
    fn start(binary: &PathBuf, advertised: Option<&str>) -> Tansu {
        let port = free_port();
        let advertised = advertised
            .map(str::to_string)
            .unwrap_or_else(|| format!("127.0.0.1:{port}"));
        Tansu::start_on(binary, port, &advertised)
    }

    fn start_on(binary: &PathBuf, port: u16, advertised: &str) -> Tansu {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let tansu = Tansu { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {addr} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }

    fn create_topic(&self, binary: &PathBuf, name: &str, partitions: u32) {
        Tansu::create_topic_at(binary, self.addr, name, partitions);
    }

    fn create_topic_at(binary: &PathBuf, addr: SocketAddr, name: &str, partitions: u32) {
        let status = Command::new(binary)
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://{addr}"),
                "--partitions",
                &partitions.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run tansu topic create");
        assert!(status.success(), "tansu topic create {name} failed");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metadata_lists_the_advertised_endpoint_and_topic_partitions() {
    let Some(binary) = tansu_binary("metadata_lists_the_advertised_endpoint_and_topic_partitions")
    else {
        return;
    };
    let tansu = Tansu::start(&binary, None);
    tansu.create_topic(&binary, "orders", 3);
    let mut connection = KafkaConnection::connect(tansu.addr, Duration::from_secs(5)).unwrap();
    assert!(connection.supports(ApiKey::Metadata));
    let metadata = connection.metadata().unwrap();
    let endpoints: Vec<String> = metadata.brokers.iter().map(|b| b.endpoint()).collect();
    assert_eq!(endpoints, vec![tansu.addr.to_string()], "{metadata:?}");
    let orders: Vec<_> = metadata
        .partitions
        .iter()
        .filter(|p| p.topic == "orders")
        .collect();
    assert_eq!(orders.len(), 3, "{metadata:?}");
    let min_isr = connection
        .min_insync_replicas(&["orders".to_string()])
        .unwrap();
    // tansu answers DescribeConfigs without the key: Kafka's default applies, and a note says so.
    assert_eq!(min_isr.get("orders"), 1, "{min_isr:?}");
    assert!(
        min_isr
            .notes
            .iter()
            .any(|note| note.contains("orders") && note.contains("default")),
        "{min_isr:?}"
    );
}

#[test]
fn describe_quorum_is_reported_unsupported_on_tansu() {
    let Some(binary) = tansu_binary("describe_quorum_is_reported_unsupported_on_tansu") else {
        return;
    };
    let tansu = Tansu::start(&binary, None);
    let mut connection = KafkaConnection::connect(tansu.addr, Duration::from_secs(5)).unwrap();
    assert!(!connection.supports(ApiKey::DescribeQuorum));
    let error = connection.quorum_leader().unwrap_err();
    assert!(
        matches!(error, ProbeError::Unsupported { .. })
            && error.to_string().contains(&tansu.addr.to_string()),
        "{error}"
    );
}

fn listener(port: u16, advertised_host: &str) -> ListenerSpec {
    ListenerSpec {
        name: "INTERNAL".into(),
        bind_host: "127.0.0.1".into(),
        port,
        advertised_host: advertised_host.into(),
        security_protocol: "PLAINTEXT".into(),
        tls: None,
        sasl_mechanism: None,
    }
}

fn quick_probe() -> KafkaProbe {
    KafkaProbe {
        request_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
    }
}

#[test]
fn the_post_restart_gate_passes_on_the_desired_endpoint_and_notes_node_111() {
    let Some(binary) =
        tansu_binary("the_post_restart_gate_passes_on_the_desired_endpoint_and_notes_node_111")
    else {
        return;
    };
    let tansu = Tansu::start(&binary, None);
    let checks = quick_probe()
        .verify(
            1,
            &[listener(tansu.addr.port(), "127.0.0.1")],
            Duration::from_secs(10),
        )
        .unwrap();
    let text: Vec<String> = checks.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    assert!(
        text.contains(&format!("kafka serving: listener INTERNAL on {} answers", tansu.addr))
            && text.contains(&format!("advertised endpoint: listener INTERNAL on {} advertises {} for node 111 (answers as node 111; the spec calls it broker 1)", tansu.addr, tansu.addr))
            && text.contains("under-replicated partitions: none"),
        "{text}"
    );
}

#[test]
fn a_wrong_advertised_address_fails_the_post_restart_gate_naming_listener_and_endpoints() {
    let Some(binary) = tansu_binary(
        "a_wrong_advertised_address_fails_the_post_restart_gate_naming_listener_and_endpoints",
    ) else {
        return;
    };
    // Listens on 127.0.0.1 but advertises 127.0.0.9 (never connected to).
    let port = free_port();
    let tansu = Tansu::start_on(&binary, port, &format!("127.0.0.9:{port}"));
    let error = quick_probe()
        .verify(1, &[listener(port, "127.0.0.1")], Duration::from_secs(2))
        .unwrap_err();
    assert!(
        error.contains(&format!(
            "advertised endpoint: listener INTERNAL on {} advertises 127.0.0.9:{port} for broker 111 (the spec calls it broker 1), desired 127.0.0.1:{port}",
            tansu.addr
        )),
        "{error}"
    );
}

#[test]
fn without_describe_quorum_the_controller_comes_from_metadata_and_says_so() {
    let Some(binary) =
        tansu_binary("without_describe_quorum_the_controller_comes_from_metadata_and_says_so")
    else {
        return;
    };
    let tansu = Tansu::start(&binary, None);
    let (is_controller, detail) = quick_probe()
        .controller(1, &[listener(tansu.addr.port(), "127.0.0.1")])
        .expect("tansu answers Metadata");
    assert!(is_controller, "{detail}");
    assert!(
        detail.contains("Metadata's controller id")
            && detail.contains(&format!("{} does not support DescribeQuorum", tansu.addr)),
        "{detail}"
    );
}

#[test]
fn the_pre_restart_gate_checks_partitions_on_a_serving_broker_and_passes_a_silent_one() {
    let Some(binary) = tansu_binary(
        "the_pre_restart_gate_checks_partitions_on_a_serving_broker_and_passes_a_silent_one",
    ) else {
        return;
    };
    let tansu = Tansu::start(&binary, None);
    tansu.create_topic(&binary, "orders", 2);
    let running = vec![RunningListener {
        name: "INTERNAL".into(),
        bind_host: "127.0.0.1".into(),
        port: tansu.addr.port(),
        advertised: Some(("127.0.0.1".into(), tansu.addr.port())),
        security_protocol: "PLAINTEXT".into(),
        controller: false,
    }];
    let checks = quick_probe()
        .before_restart(1, &running, Duration::from_secs(10))
        .unwrap();
    let text: Vec<String> = checks.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    assert!(
        text.contains("min.insync.replicas: 2 partition(s) have a replica on node 111 (the spec calls it broker 1)")
            && text.contains("cluster health: every partition has a leader"),
        "{text}"
    );
    drop(tansu);
    let checks = quick_probe()
        .before_restart(1, &running, Duration::from_secs(2))
        .unwrap();
    assert!(
        checks[0].detail.contains("nothing to protect"),
        "{checks:?}"
    );
}

/// A TCP server that is not Kafka: it answers every connection with `reply` and closes.
fn not_kafka(reply: &'static [u8]) -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        // Bounded: enough connections for the tests, then the thread ends.
        for stream in server.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 64];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = std::io::Write::write_all(&mut stream, reply);
        }
    });
    addr
}

#[test]
fn a_tcp_server_that_speaks_no_kafka_fails_with_a_clear_reason() {
    let http = not_kafka(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    let error = KafkaConnection::connect(http, Duration::from_secs(2))
        .err()
        .unwrap();
    assert!(
        matches!(error, ProbeError::Protocol { .. })
            && error.to_string().contains(&http.to_string())
            && error.to_string().contains("not a Kafka response"),
        "{error}"
    );
    let silent = not_kafka(b"");
    let error = KafkaConnection::connect(silent, Duration::from_secs(2))
        .err()
        .unwrap();
    assert!(
        matches!(error, ProbeError::Closed { .. })
            && error.to_string().contains(&silent.to_string()),
        "{error}"
    );
    // Garbage of a plausible size: a frame whose header is not ours.
    let garbage = not_kafka(b"\x00\x00\x00\x08\xde\xad\xbe\xef\x00\x01\x02\x03");
    let error = KafkaConnection::connect(garbage, Duration::from_secs(2))
        .err()
        .unwrap();
    assert!(matches!(error, ProbeError::Protocol { .. }), "{error}");

    let reason = quick_probe()
        .verify(
            1,
            &[listener(http.port(), "127.0.0.1")],
            Duration::from_secs(1),
        )
        .unwrap_err();
    assert!(
        reason.contains(&format!("kafka serving: listener INTERNAL on {http} does not serve Kafka: {http} answered ApiVersions")),
        "{reason}"
    );
}

/// The test host's "kafka service": (re)starts tansu from the INTERNAL entries of the
/// server.properties the agent wrote. A one-shot `advertise-once` file in the state dir makes the
/// next start advertise its content instead, to emulate a broker that comes back wrong.
const RESTART_SCRIPT: &str = r#"#!/bin/bash
set -eu
props=$1 state=$2 tansu=$3
value() { sed -n "s/^$1=//p" "$props" | tail -n 1; }
internal() { tr ',' '\n' <<<"$1" | sed -n 's#^INTERNAL://##p' | head -n 1; }
listen=$(internal "$(value listeners)")
advertised=$(internal "$(value advertised.listeners)")
if [ -f "$state/advertise-once" ]; then
  advertised=$(cat "$state/advertise-once")
  rm -f "$state/advertise-once"
fi
if [ -f "$state/tansu.pid" ]; then
  pid=$(cat "$state/tansu.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
setsid "$tansu" broker --listener-url "tcp://$listen" --advertised-listener-url "tcp://$advertised" \
  --storage-engine memory://tansu/ >>"$state/tansu.log" 2>&1 </dev/null &
echo $! >"$state/tansu.pid"
echo "$listen $advertised" >>"$state/restarts.log"
"#;

/// A broker host in a temp dir: hosts file, server.properties, agent.toml (probe = kafka, the
/// default) and the restart script above. The tansu it started is killed by PID on drop.
struct BrokerHost {
    dir: tempfile::TempDir,
    port: u16,
}

impl BrokerHost {
    fn new(binary: &Path, health_timeout: &str) -> BrokerHost {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = BrokerHost { dir, port };
        std::fs::create_dir_all(host.path("etc/kafka")).unwrap();
        std::fs::create_dir_all(host.path("state")).unwrap();
        std::fs::write(host.path("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        std::fs::write(
            host.path("etc/kafka/server.properties"),
            format!(
                "listeners=INTERNAL://127.0.0.1:{port}\n\
                 advertised.listeners=INTERNAL://old-name.cluster-48742:{port}\n\
                 listener.security.protocol.map=INTERNAL:PLAINTEXT\n\
                 inter.broker.listener.name=INTERNAL\n"
            ),
        )
        .unwrap();
        std::fs::write(host.path("restart-kafka"), RESTART_SCRIPT).unwrap();
        let restart = vec![
            "bash".to_string(),
            host.path("restart-kafka"),
            host.path("etc/kafka/server.properties"),
            host.path("state"),
            binary.display().to_string(),
        ];
        std::fs::write(
            host.path("agent.toml"),
            format!(
                "node = \"emr-worker-1\"\nstate_dir = {:?}\n[manage]\nhosts_file = {:?}\nkafka_properties = {:?}\n\
                 [service_manager]\nkind = \"command\"\nrestart = {restart:?}\n",
                host.path("state"),
                host.path("etc/hosts"),
                host.path("etc/kafka/server.properties"),
            ),
        )
        .unwrap();
        std::fs::write(
            host.path("spec.toml"),
            format!(
                "[cluster]\nname = \"emr-48742\"\n\n[listeners.internal]\nport = {port}\nbind = \"127.0.0.1\"\nadvertise = \"hostname\"\n\n\
                 [[broker]]\nid = 1\nnode = \"emr-worker-1\"\nhostname = \"emr-worker-1.cluster-48742\"\nprivate_ip = \"198.18.0.11\"\n\n\
                 [rollout]\nhealth_timeout = {health_timeout:?}\n"
            ),
        )
        .unwrap();
        // Kafka runs on the initial config before kreach arrives.
        let status = Command::new("bash").args(&restart[1..]).status().unwrap();
        assert!(status.success(), "the restart script starts tansu");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        host
    }

    fn path(&self, relative: &str) -> String {
        self.dir.path().join(relative).display().to_string()
    }

    fn apply(&self) -> (i32, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_kreach-agent"))
            .args([
                "--config",
                &self.path("agent.toml"),
                "apply-local",
                "--spec",
                &self.path("spec.toml"),
            ])
            .output()
            .unwrap();
        let text = format!(
            "{}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    }

    fn properties(&self) -> String {
        std::fs::read_to_string(self.path("etc/kafka/server.properties")).unwrap()
    }
}

impl Drop for BrokerHost {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("state/tansu.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[test]
fn an_apply_through_the_engine_restarts_tansu_and_lists_the_kafka_checks() {
    let Some(binary) =
        tansu_binary("an_apply_through_the_engine_restarts_tansu_and_lists_the_kafka_checks")
    else {
        return;
    };
    let host = BrokerHost::new(&binary, "20s");
    let port = host.port;
    let tansu: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Tansu::create_topic_at(&binary, tansu, "orders", 3);
    let (code, output) = host.apply();
    eprintln!("{output}");
    assert_eq!(code, 0, "{output}");
    for expected in [
        format!("check passed: kafka serving: listener INTERNAL on {tansu} answers Metadata"),
        "check passed: min.insync.replicas: 3 partition(s) have a replica on node 111 (the spec calls it broker 1)".to_string(),
        format!("check passed: advertised endpoint: listener INTERNAL on {tansu} advertises emr-worker-1.cluster-48742:{port} for node 111 (answers as node 111; the spec calls it broker 1)"),
        "check passed: under-replicated partitions: none".to_string(),
        "converged".to_string(),
    ] {
        assert!(output.contains(&expected), "missing {expected:?} in:\n{output}");
    }
    assert!(host.properties().contains(&format!(
        "advertised.listeners=INTERNAL://emr-worker-1.cluster-48742:{port}"
    )));
    // tansu really runs on what the agent wrote.
    let mut connection = KafkaConnection::connect(tansu, Duration::from_secs(5)).unwrap();
    let advertised: Vec<String> = connection
        .metadata()
        .unwrap()
        .brokers
        .iter()
        .map(|b| b.endpoint())
        .collect();
    assert_eq!(
        advertised,
        vec![format!("emr-worker-1.cluster-48742:{port}")]
    );
}

#[test]
fn a_broker_that_comes_back_advertising_the_wrong_address_is_rolled_back() {
    let Some(binary) =
        tansu_binary("a_broker_that_comes_back_advertising_the_wrong_address_is_rolled_back")
    else {
        return;
    };
    let host = BrokerHost::new(&binary, "4s");
    let port = host.port;
    let before = host.properties();
    std::fs::write(
        host.path("state/advertise-once"),
        format!("127.0.0.9:{port}"),
    )
    .unwrap();
    let (code, output) = host.apply();
    assert_eq!(code, 3, "exit code 3 means rolled back:\n{output}");
    assert!(
        output.contains(&format!(
            "advertised endpoint: listener INTERNAL on 127.0.0.1:{port} advertises 127.0.0.9:{port} for broker 111 (the spec calls it broker 1), desired emr-worker-1.cluster-48742:{port}"
        )),
        "{output}"
    );
    assert_eq!(
        host.properties(),
        before,
        "the previous server.properties is back"
    );
    let restarts = std::fs::read_to_string(host.path("state/restarts.log")).unwrap();
    assert_eq!(
        restarts.lines().last(),
        Some(format!("127.0.0.1:{port} old-name.cluster-48742:{port}").as_str()),
        "tansu was restarted on the old config:\n{restarts}"
    );
}
