//! The client side of Kafka TLS as the reachability check does it: a real TLS handshake (rustls)
//! against the stand-in Kafka (examples/quickstart/fake-kafka.py, Python's ssl module) serving a
//! certificate the Kafka CA issued for the broker's own key, then Kafka's ApiVersions and Metadata
//! over it. Hostname verification is the point: the certificate must cover the name (or address)
//! the client was told to connect to.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime};

use kreach_agent::kafka::{KafkaConnection, ProbeError, TlsClient, TlsFailure};
use kreach_agent::verify::{KafkaProbe, KeystoreReload, ListenerProbe};
use kreach_domain::properties::ListenerSpec;
use kreach_runtime::kafka_tls::{new_private_key_pem, public_key_pem, KafkaCa};

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
        Broker::start_with(
            &format!(
                "node.id=7\nlisteners=EXTERNAL://127.0.0.1:{port}\n\
                 advertised.listeners=EXTERNAL://broker-7.c:{port}\n\
                 listener.security.protocol.map=EXTERNAL:SSL\n\
                 listener.name.external.ssl.keystore.type=PEM\n\
                 listener.name.external.ssl.keystore.location={}\n",
                keystore.display()
            ),
            &[],
        )
    }

    fn start_with(properties_text: &str, env: &[(&str, &str)]) -> Broker {
        let state = tempfile::tempdir().unwrap();
        let properties = state.path().join("server.properties");
        std::fs::write(&properties, properties_text).unwrap();
        let status = Command::new("python3")
            .args([FAKE_KAFKA, "restart"])
            .arg(&properties)
            .arg(state.path())
            .envs(env.iter().copied())
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

/// A Kafka CA and broker 7's EXTERNAL key store under `dir` (its key, then a certificate for
/// broker-7.c), as the agent writes it.
fn key_store_for_broker_7(
    dir: &std::path::Path,
) -> (
    KafkaCa,
    kreach_runtime::kafka_tls::IssuedCertificate,
    std::path::PathBuf,
) {
    let now = SystemTime::now();
    let ca = KafkaCa::create("c", now).unwrap();
    let key = new_private_key_pem().unwrap();
    let issued = ca
        .issue(
            "kafka broker 7 EXTERNAL",
            &public_key_pem(&key).unwrap(),
            &["broker-7.c".into()],
            now,
            Duration::from_secs(86_400),
        )
        .unwrap();
    let keystore = dir.join("external.keystore.pem");
    std::fs::write(&keystore, format!("{key}{}", issued.chain_pem)).unwrap();
    (ca, issued, keystore)
}

/// The served certificate's serial on `addr`, verified for `host`.
fn served_serial(addr: SocketAddr, trusted: &TlsClient, host: &str) -> String {
    let connection = KafkaConnection::connect_tls(addr, Duration::from_secs(5), trusted, host)
        .unwrap_or_else(|error| panic!("{host}: {error}"));
    kreach_runtime::kafka_tls::inspect_der(&connection.peer_certificate().unwrap())
        .unwrap()
        .serial
}

fn listener(name: &str, port: u16, protocol: &str) -> ListenerSpec {
    ListenerSpec {
        name: name.into(),
        bind_host: "127.0.0.1".into(),
        port,
        advertised_host: "broker-7.c".into(),
        security_protocol: protocol.into(),
        tls: None,
        sasl_mechanism: None,
    }
}

#[test]
fn a_rewritten_key_store_is_reloaded_over_the_kafka_protocol_and_the_new_serial_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = KafkaCa::create("c", now).unwrap();
    let key = new_private_key_pem().unwrap();
    let public = public_key_pem(&key).unwrap();
    let issue = || {
        ca.issue(
            "kafka broker 7 EXTERNAL",
            &public,
            &["broker-7.c".into()],
            SystemTime::now(),
            Duration::from_secs(86_400),
        )
        .unwrap()
    };
    let first = issue();
    let keystore = dir.path().join("external.keystore.pem");
    std::fs::write(&keystore, format!("{key}{}", first.chain_pem)).unwrap();
    let (internal, external) = (free_port(), free_port());
    let properties = format!(
        "node.id=7\nlisteners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{external}\n\
         advertised.listeners=INTERNAL://broker-7.c:{internal},EXTERNAL://broker-7.c:{external}\n\
         listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:SSL\n\
         listener.name.external.ssl.keystore.type=PEM\n\
         listener.name.external.ssl.keystore.location={}\n",
        keystore.display()
    );
    let _broker = Broker::start_with(&properties, &[]);
    let listeners = [
        listener("INTERNAL", internal, "PLAINTEXT"),
        listener("EXTERNAL", external, "SSL"),
    ];
    let addr: SocketAddr = format!("127.0.0.1:{external}").parse().unwrap();
    let trusted = TlsClient::from_ca_pem(&ca.cert_pem).unwrap();
    assert_eq!(served_serial(addr, &trusted, "broker-7.c"), first.serial);

    // The renewed certificate written in place (as the engine does), then the reload.
    let second = issue();
    assert_ne!(second.serial, first.serial);
    std::fs::write(&keystore, format!("{key}{}", second.chain_pem)).unwrap();
    let reload = KeystoreReload {
        listener: "EXTERNAL".into(),
        keystore: keystore.display().to_string(),
        serial: second.serial.clone(),
    };
    let probe = KafkaProbe::default();
    let checks = probe
        .reload_certificates(
            7,
            &listeners,
            std::slice::from_ref(&reload),
            &ca.cert_pem,
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        checks
            .iter()
            .any(|check| check.to_string().contains(&format!(
                "EXTERNAL serves the new certificate (serial {})",
                second.serial
            ))),
        "{checks:?}"
    );
    assert_eq!(served_serial(addr, &trusted, "broker-7.c"), second.serial);

    // A key store Kafka cannot load is refused, and the listener keeps serving the last one.
    std::fs::write(&keystore, "not a key store").unwrap();
    let third = KeystoreReload {
        serial: "00".into(),
        ..reload.clone()
    };
    let error = probe
        .reload_certificates(
            7,
            &listeners,
            &[third],
            &ca.cert_pem,
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        error.contains("did not take the key store reload") && error.contains("cannot load"),
        "{error}"
    );
    assert_eq!(served_serial(addr, &trusted, "broker-7.c"), second.serial);

    // Asked as another broker id: refused by the broker, named.
    let error = probe
        .reload_certificates(
            8,
            &listeners,
            &[reload],
            &ca.cert_pem,
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(error.contains("this is broker 7"), "{error}");
}

#[test]
fn a_broker_without_incremental_alter_configs_cannot_reload_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, issued, keystore) = key_store_for_broker_7(dir.path());
    let (internal, external) = (free_port(), free_port());
    let properties = format!(
        "node.id=7\nlisteners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{external}\n\
         listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:SSL\n\
         listener.name.external.ssl.keystore.location={}\n",
        keystore.display()
    );
    let _broker = Broker::start_with(&properties, &[("FAKE_KAFKA_NO_RELOAD", "1")]);
    let error = KafkaProbe::default()
        .reload_certificates(
            7,
            &[
                listener("INTERNAL", internal, "PLAINTEXT"),
                listener("EXTERNAL", external, "SSL"),
            ],
            &[KeystoreReload {
                listener: "EXTERNAL".into(),
                keystore: keystore.display().to_string(),
                serial: issued.serial,
            }],
            &ca.cert_pem,
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        error.contains("does not support IncrementalAlterConfigs"),
        "{error}"
    );
}

/// PBKDF2 of `password` as Kafka stores a SCRAM-SHA-512 credential (what `kreachctl users add`
/// hands the brokers).
fn scram_sha512(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut salted = vec![0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        std::num::NonZeroU32::new(iterations).unwrap(),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    salted
}

#[test]
fn the_reachability_check_logs_in_with_scram_over_tls_and_names_a_failed_login() {
    use kreach_agent::reach::{classify_connect, Failure, Network, SaslLogin, SystemNetwork};
    use kreach_agent::scram::Mechanism;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _issued, keystore) = key_store_for_broker_7(dir.path());
    let (internal, external) = (free_port(), free_port());
    let properties = format!(
        "node.id=7\nlisteners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{external}\n\
         advertised.listeners=INTERNAL://broker-7.c:{internal},EXTERNAL://broker-7.c:{external}\n\
         listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL\n\
         listener.name.external.ssl.keystore.location={}\n\
         listener.name.external.sasl.enabled.mechanisms=SCRAM-SHA-512\n",
        keystore.display()
    );
    let _broker = Broker::start_with(&properties, &[]);
    // The user, as every broker's agent keeps it: over INTERNAL, salted.
    let salt = b"0123456789abcdef0123456789abcdef".to_vec();
    let internal_addr: SocketAddr = format!("127.0.0.1:{internal}").parse().unwrap();
    KafkaConnection::connect(internal_addr, Duration::from_secs(5))
        .unwrap()
        .alter_scram_credentials(
            &[(
                "app".to_string(),
                2,
                4096,
                salt.clone(),
                scram_sha512("s3cret", &salt, 4096),
            )],
            &[],
        )
        .unwrap();

    let addr: SocketAddr = format!("127.0.0.1:{external}").parse().unwrap();
    let network = |password: Option<&str>| SystemNetwork {
        timeout: Duration::from_secs(5),
        tls: Some(TlsClient::from_ca_pem(&ca.cert_pem).unwrap()),
        sasl: password.map(|password| SaslLogin {
            mechanism: Mechanism::Sha512,
            user: "app".into(),
            password: password.into(),
        }),
    };
    // The right password: TLS, SCRAM login (the broker proves it holds the credential too),
    // then Metadata.
    let brokers = network(Some("s3cret"))
        .advertised("broker-7.c", addr)
        .unwrap_or_else(|error| panic!("{error:?}"));
    assert_eq!(brokers[0].host, "broker-7.c");
    assert_eq!(brokers[0].port, external);

    // A wrong password is "authentication failed", with the broker's reason.
    let error = network(Some("wrong"))
        .advertised("broker-7.c", addr)
        .unwrap_err();
    assert_eq!(
        classify_connect(&error),
        Failure::AuthenticationFailed,
        "{error:?}"
    );
    assert_eq!(
        Failure::AuthenticationFailed.reason(),
        "authentication failed"
    );
    assert!(
        format!("{error:?}").contains("invalid credentials"),
        "{error:?}"
    );

    // Without a login the broker answers nothing but ApiVersions, as Kafka does.
    assert!(network(None).advertised("broker-7.c", addr).is_err());
}
