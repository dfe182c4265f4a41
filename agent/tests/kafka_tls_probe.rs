//! The client side of Kafka TLS as the reachability check does it: a real TLS handshake (rustls)
//! against the stand-in Kafka (examples/quickstart/fake-kafka.py, Python's ssl module) serving a
//! certificate the Kafka CA issued for the broker's own key, then Kafka's ApiVersions and Metadata
//! over it. Hostname verification is the point: the certificate must cover the name (or address)
//! the client was told to connect to.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime};

use kreach_agent::kafka::{KafkaConnection, ProbeError, TlsClient, TlsFailure};
use kreach_common::kafka_tls::{new_private_key_pem, public_key_pem, KafkaCa};

const FAKE_KAFKA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/quickstart/fake-kafka.py"
);

/// A stand-in broker on 127.0.0.1:`port` whose SSL listener serves `keystore`; stopped on drop.
struct Broker {
    state: tempfile::TempDir,
}

impl Broker {
    fn start(port: u16, keystore: &std::path::Path) -> Broker {
        let state = tempfile::tempdir().unwrap();
        let properties = state.path().join("server.properties");
        std::fs::write(
            &properties,
            format!(
                "node.id=7\nlisteners=EXTERNAL://127.0.0.1:{port}\n\
                 advertised.listeners=EXTERNAL://broker-7.c:{port}\n\
                 listener.security.protocol.map=EXTERNAL:SSL\n\
                 listener.name.external.ssl.keystore.type=PEM\n\
                 listener.name.external.ssl.keystore.location={}\n",
                keystore.display()
            ),
        )
        .unwrap();
        let status = Command::new("python3")
            .args([FAKE_KAFKA, "restart"])
            .arg(&properties)
            .arg(state.path())
            .status()
            .expect("python3 runs the stand-in Kafka");
        assert!(status.success(), "the stand-in Kafka did not start");
        Broker { state }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("python3")
            .args([FAKE_KAFKA, "stop"])
            .arg(self.state.path())
            .status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tls_failure(result: Result<KafkaConnection, ProbeError>) -> (TlsFailure, String) {
    match result {
        Err(error @ ProbeError::Tls { failure, .. }) => (failure, error.to_string()),
        Err(other) => panic!("not a TLS failure: {other}"),
        Ok(_) => panic!("the handshake should have failed"),
    }
}

#[test]
fn the_probe_verifies_the_brokers_certificate_for_the_advertised_name_and_speaks_kafka_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = KafkaCa::create("c", now).unwrap();
    let key = new_private_key_pem().unwrap();
    let issued = ca
        .issue(
            "kafka broker 7 EXTERNAL",
            &public_key_pem(&key).unwrap(),
            &["broker-7.c".into(), "broker-7".into(), "127.0.0.1".into()],
            now,
            Duration::from_secs(86_400),
        )
        .unwrap();
    let keystore = dir.path().join("external.keystore.pem");
    std::fs::write(&keystore, format!("{key}{}", issued.chain_pem)).unwrap();
    let port = free_port();
    let _broker = Broker::start(port, &keystore);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let timeout = Duration::from_secs(5);
    let trusted = TlsClient::from_ca_pem(&ca.cert_pem).unwrap();

    // By the advertised name and by the address: both covered, and Kafka answers over TLS.
    for host in ["broker-7.c", "127.0.0.1"] {
        let mut connection = KafkaConnection::connect_tls(addr, timeout, &trusted, host)
            .unwrap_or_else(|error| panic!("{host}: {error}"));
        let metadata = connection.metadata().unwrap();
        assert_eq!(metadata.brokers.len(), 1);
        assert_eq!(metadata.brokers[0].host, "broker-7.c");
        assert_eq!(metadata.brokers[0].port, port);
    }

    // A name the certificate does not cover.
    let (failure, text) = tls_failure(KafkaConnection::connect_tls(
        addr,
        timeout,
        &trusted,
        "198.19.10.11",
    ));
    assert_eq!(failure, TlsFailure::NotForName, "{text}");
    assert!(text.contains("does not cover 198.19.10.11"), "{text}");

    // A client trusting another CA.
    let other = KafkaCa::create("other", now).unwrap();
    let stranger = TlsClient::from_ca_pem(&other.cert_pem).unwrap();
    let (failure, text) = tls_failure(KafkaConnection::connect_tls(
        addr,
        timeout,
        &stranger,
        "broker-7.c",
    ));
    assert_eq!(failure, TlsFailure::UnknownCa, "{text}");

    // Plain Kafka against a TLS listener is not Kafka to the client.
    assert!(KafkaConnection::connect(addr, timeout).is_err());
}
