//! Who may talk to the coordinator, checked against the real `kreach-coordinator` binary over
//! mutual TLS on loopback: node certificates act only for their own node, only the admin
//! certificate reaches the admin service, and callers without a certificate from the kreach CA
//! are turned away. Each test asserts the error an operator or agent would see.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kreach_proto as pb;
use kreach_runtime::tls;
use pb::admin_service_client::AdminServiceClient;
use pb::agent_service_client::AgentServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const COORDINATOR: &str = env!("CARGO_BIN_EXE_kreach-coordinator");
const KREACHCTL: &str = env!("CARGO_BIN_EXE_kreachctl");
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Certificates from `init_certs` (nodes w1 and w2), and an unrelated CA with the same layout.
struct Certs {
    kreach: tempfile::TempDir,
    foreign: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let nodes = ["w1".to_string(), "w2".to_string()];
        let kreach = tempfile::tempdir().unwrap();
        tls::init_certs(kreach.path(), &names, &nodes, 1, false).unwrap();
        let foreign = tempfile::tempdir().unwrap();
        tls::init_certs(foreign.path(), &names, &nodes, 1, false).unwrap();
        Certs { kreach, foreign }
    }

    fn dir(&self) -> &Path {
        self.kreach.path()
    }

    fn node(&self, node: &str) -> (PathBuf, PathBuf) {
        tls::node_cert_paths(self.dir(), node)
    }

    fn admin(&self) -> (PathBuf, PathBuf) {
        (
            self.dir().join(tls::ADMIN_CERT_FILE),
            self.dir().join(tls::ADMIN_KEY_FILE),
        )
    }

    /// The kreach CA, which the client trusts to verify the coordinator.
    fn ca(&self) -> PathBuf {
        self.dir().join(tls::CA_CERT_FILE)
    }
}

/// A running `kreach-coordinator`; killed (by pid) and reaped on drop.
struct Coordinator {
    child: Child,
    address: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    _state: tempfile::TempDir,
}

impl Coordinator {
    /// Start it with mutual TLS on 127.0.0.1:0 and wait for its "listening on" line.
    fn start(certs: &Certs) -> Coordinator {
        let state = tempfile::tempdir().unwrap();
        let config = state.path().join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                state.path().join("state"),
                certs.ca(),
                certs.dir().join(tls::COORDINATOR_CERT_FILE),
                certs.dir().join(tls::COORDINATOR_KEY_FILE),
            ),
        )
        .unwrap();
        let mut child = Command::new(COORDINATOR)
            .arg("--config")
            .arg(&config)
            .env("KREACH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

        // Keep draining stderr for the coordinator's whole life so it never blocks on a full
        // pipe; the lines are kept for failure messages.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (lines_tx, lines_rx) = mpsc::channel();
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    stderr.lock().unwrap().push(line.clone());
                    let _ = lines_tx.send(line);
                }
            });
        }

        let deadline = Instant::now() + STARTUP_DEADLINE;
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = listening_address(&line) {
                        break address;
                    }
                }
                Err(error) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!(
                        "kreach-coordinator did not report its address ({error}, exit {status:?}); stderr:\n{}",
                        stderr.lock().unwrap().join("\n")
                    );
                }
            }
        };
        Coordinator {
            child,
            address,
            stderr,
            _state: state,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.address.port())
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in "... kreach-coordinator listening on 127.0.0.1:PORT address=... tls=true".
fn listening_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("kreach-coordinator listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// How a client presents itself: which CA it trusts for the coordinator and which certificate
/// (if any) it shows.
struct ClientTls {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    fn with(certs: &Certs, identity: (PathBuf, PathBuf)) -> ClientTls {
        ClientTls {
            ca: certs.ca(),
            identity: Some(identity),
        }
    }

    fn anonymous(certs: &Certs) -> ClientTls {
        ClientTls {
            ca: certs.ca(),
            identity: None,
        }
    }

    /// Read the PEM files directly (not through `load_tls_files`, which would refuse the
    /// mismatched pairs some tests need on purpose).
    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
            .domain_name("127.0.0.1");
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        config
    }
}

/// Connect to the coordinator. A refused handshake may surface here or, with TLS 1.3 (where
/// the server checks the client certificate after the client considers the handshake done), on
/// the first RPC; callers that expect a refusal use [`first_rpc_error`].
async fn connect(coordinator: &Coordinator, client: &ClientTls) -> Result<Channel, String> {
    Endpoint::from_shared(coordinator.url())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(client.config())
        .unwrap()
        .connect()
        .await
        .map_err(|error| error_chain(&error))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(&format!(": {}", error_chain(source)));
    }
    text
}

/// Where a refused client is stopped: at connect, or on its first RPC (ReportFacts for w1).
/// Returns the error text the client sees; panics if the RPC succeeds.
async fn first_rpc_error(coordinator: &Coordinator, client: &ClientTls) -> String {
    let channel = match connect(coordinator, client).await {
        Ok(channel) => channel,
        Err(error) => return format!("connect: {error}"),
    };
    match AgentServiceClient::new(channel)
        .report_facts(facts("w1"))
        .await
    {
        Ok(_) => panic!(
            "the coordinator accepted ReportFacts from a client it should refuse; stderr:\n{}",
            coordinator.stderr()
        ),
        Err(status) => {
            // A refused handshake is a transport failure, never an answer from a handler. With
            // TLS 1.3 the client sees the server close the connection after its certificate
            // was rejected: tonic reports `Cancelled` ("transport error ... connection closed").
            assert!(
                matches!(
                    status.code(),
                    Code::Cancelled | Code::Unavailable | Code::Unknown
                ),
                "expected a transport failure, got {}",
                status_text(&status)
            );
            format!("rpc: {}", status_text(&status))
        }
    }
}

fn facts(node: &str) -> pb::HostFacts {
    pb::HostFacts {
        node: node.to_string(),
        hostname: node.to_string(),
        fqdn: format!("{node}.example"),
        addresses: vec!["198.18.0.1".to_string()],
        kafka_running: true,
        agent_version: "test".to_string(),
        kafka_controller: false,
        kafka_tls_public_key: String::new(),
        labels: Default::default(),
    }
}

fn node_status(node: &str) -> pb::NodeStatus {
    pb::NodeStatus {
        node: node.to_string(),
        phase: pb::Phase::Idle as i32,
        ..Default::default()
    }
}

fn subscribe_request(node: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        node: node.to_string(),
        applied: None,
        agent_version: "test".to_string(),
    }
}

fn assert_denied(result: Result<impl std::fmt::Debug, tonic::Status>, needles: &[&str]) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status_text(&status)
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "the message should mention {needle:?}: {}",
            status.message()
        );
    }
}

/// A refused handshake reads as its cause. The client sees a transport failure: the TLS alert
/// the coordinator sent (`alert`) or, when the connection's close overtakes the alert in tonic's
/// channel, "connection closed" / "broken pipe". The coordinator logs the refusal with the peer's address and the
/// reason in an operator's words (`logged`), every time.
fn assert_refused_at_handshake(coordinator: &Coordinator, error: &str, alert: &str, logged: &str) {
    assert!(
        error.contains(&format!("received fatal alert: {alert}"))
            || error.contains("connection closed")
            || error.contains("broken pipe"),
        "the client should see the TLS alert {alert}, or the connection closed under it: {error}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = coordinator.stderr();
        if log.lines().any(|line| {
            line.contains("TLS handshake refused: ")
                && line.contains(logged)
                && line.contains("peer=127.0.0.1:")
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator should log the refusal ({logged:?}); its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_node_certificate_subscribes_and_reports_for_its_own_node() {
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);
    let channel = connect(&coordinator, &ClientTls::with(&certs, certs.node("w1")))
        .await
        .unwrap();
    let mut agent = AgentServiceClient::new(channel);

    let stream = agent.subscribe(subscribe_request("w1")).await;
    assert!(
        stream.is_ok(),
        "Subscribe for w1: {}",
        status_text(&stream.unwrap_err())
    );
    let reported = agent.report_status(node_status("w1")).await;
    assert!(
        reported.is_ok(),
        "{:?}",
        reported.map_err(|s| status_text(&s))
    );
    let reported = agent.report_facts(facts("w1")).await;
    assert!(
        reported.is_ok(),
        "{:?}",
        reported.map_err(|s| status_text(&s))
    );

    // The admin sees the node as online, with the facts it reported: the calls took effect.
    let admin = connect(&coordinator, &ClientTls::with(&certs, certs.admin()))
        .await
        .unwrap();
    let status = AdminServiceClient::new(admin)
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .map(|n| (&n.node[..], n.online))
        .collect();
    assert!(nodes.contains(&("w1", true)), "nodes: {nodes:?}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);
    let error = first_rpc_error(&coordinator, &ClientTls::anonymous(&certs)).await;
    eprintln!("no client certificate: {error}");
    assert_refused_at_handshake(
        &coordinator,
        &error,
        "CertificateRequired",
        "the client presented no certificate",
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);
    // The same node name and layout, but issued by an unrelated CA.
    let (cert, key) = tls::node_cert_paths(certs.foreign.path(), "w1");
    let error = first_rpc_error(&coordinator, &ClientTls::with(&certs, (cert, key))).await;
    eprintln!("certificate from another CA: {error}");
    // The other CA has the same name as kreach's, so its signature is what fails.
    assert_refused_at_handshake(
        &coordinator,
        &error,
        "DecryptError",
        "not issued by this coordinator's CA",
    );

    // The foreign admin certificate fares no better against the admin service.
    let foreign_admin = (
        certs.foreign.path().join(tls::ADMIN_CERT_FILE),
        certs.foreign.path().join(tls::ADMIN_KEY_FILE),
    );
    let client = ClientTls::with(&certs, foreign_admin);
    if let Ok(channel) = connect(&coordinator, &client).await {
        let result = AdminServiceClient::new(channel)
            .status(pb::StatusRequest::default())
            .await;
        let status = result.expect_err("a foreign admin certificate must not read the status");
        assert_ne!(
            status.code(),
            Code::PermissionDenied,
            "{}",
            status_text(&status)
        );
        assert_refused_at_handshake(
            &coordinator,
            &status_text(&status),
            "DecryptError",
            "not issued by this coordinator's CA",
        );
    }

    // kreachctl with a foreign admin certificate says what is wrong before it connects.
    let mixed = tempfile::tempdir().unwrap();
    std::fs::copy(certs.ca(), mixed.path().join(tls::CA_CERT_FILE)).unwrap();
    for file in [tls::ADMIN_CERT_FILE, tls::ADMIN_KEY_FILE] {
        std::fs::copy(certs.foreign.path().join(file), mixed.path().join(file)).unwrap();
    }
    let run = kreachctl_status(&coordinator, mixed.path());
    eprintln!(
        "kreachctl with a foreign admin certificate: {}",
        run.stderr.trim()
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("admin.pem) was not issued by the CA")
            && run
                .stderr
                .contains("use certificates from the same `kreachctl certs init` as the CA"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn the_coordinator_certificate_is_no_client_certificate() {
    // It carries only the server-authentication usage, so the handshake refuses it.
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);
    let identity = (
        certs.dir().join(tls::COORDINATOR_CERT_FILE),
        certs.dir().join(tls::COORDINATOR_KEY_FILE),
    );
    let error = first_rpc_error(&coordinator, &ClientTls::with(&certs, identity)).await;
    eprintln!("coordinator certificate as a client: {error}");
    assert_refused_at_handshake(
        &coordinator,
        &error,
        "UnsupportedCertificate",
        "the client's certificate was refused",
    );
}

#[tokio::test]
async fn a_node_cannot_act_for_another_node() {
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);
    let channel = connect(&coordinator, &ClientTls::with(&certs, certs.node("w1")))
        .await
        .unwrap();
    let mut agent = AgentServiceClient::new(channel);

    assert_denied(
        agent.subscribe(subscribe_request("w2")).await,
        &["w1", "w2"],
    );
    assert_denied(agent.report_status(node_status("w2")).await, &["w1", "w2"]);
    assert_denied(agent.report_facts(facts("w2")).await, &["w1", "w2"]);
    // Nor can it take w2's dry runs, or answer them: a plan would show its diff as w2's.
    assert_denied(
        agent
            .dry_runs(pb::DryRunSubscription { node: "w2".into() })
            .await,
        &["w1", "w2"],
    );
    assert_denied(
        agent
            .report_dry_run(pb::DryRunReport {
                node: "w2".into(),
                id: 1,
                ..Default::default()
            })
            .await,
        &["w1", "w2"],
    );

    // Nothing of what w1 claimed about w2 reached the coordinator.
    let admin = connect(&coordinator, &ClientTls::with(&certs, certs.admin()))
        .await
        .unwrap();
    let status = AdminServiceClient::new(admin)
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.nodes.iter().all(|n| n.node != "w2"),
        "w2 appears in the status: {:?}",
        status.nodes
    );
}

#[tokio::test]
async fn a_node_certificate_cannot_use_the_admin_service() {
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);
    let channel = connect(&coordinator, &ClientTls::with(&certs, certs.node("w1")))
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    assert_denied(
        admin.status(pb::StatusRequest::default()).await,
        &["admin certificate", "w1"],
    );
    assert_denied(
        admin.pause(pb::RolloutControl::default()).await,
        &["admin certificate"],
    );
}

#[tokio::test]
async fn the_admin_certificate_reaches_the_admin_service_only() {
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);
    let channel = connect(&coordinator, &ClientTls::with(&certs, certs.admin()))
        .await
        .unwrap();

    let status = AdminServiceClient::new(channel.clone())
        .status(pb::StatusRequest::default())
        .await;
    assert!(status.is_ok(), "{:?}", status.map_err(|s| status_text(&s)));

    let mut agent = AgentServiceClient::new(channel);
    assert_denied(
        agent.subscribe(subscribe_request("w1")).await,
        &["node certificate"],
    );
    assert_denied(
        agent.report_status(node_status("w1")).await,
        &["node certificate"],
    );
}

#[test]
fn plaintext_is_refused_on_a_non_loopback_address() {
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:0\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n",
            state.path().join("state")
        ),
    )
    .unwrap();
    let mut child = Command::new(COORDINATOR)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; if it started serving plaintext instead, stop it and fail.
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kreach-coordinator kept running with plaintext on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("plaintext is allowed only on a loopback address"),
        "{stderr}"
    );
    assert!(stderr.contains("0.0.0.0"), "{stderr}");
    assert!(!state.path().join("state").exists(), "it opened the store");
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn kreachctl_status(coordinator: &Coordinator, certs_dir: &Path) -> Run {
    let output = Command::new(KREACHCTL)
        .arg("--coordinator")
        .arg(coordinator.url())
        .arg("--certs")
        .arg(certs_dir)
        .arg("status")
        .env_remove("KREACH_COORDINATOR")
        .env_remove("KREACH_CERTS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn kreachctl_needs_the_admin_certificate() {
    let certs = Certs::new();
    let coordinator = Coordinator::start(&certs);

    let run = kreachctl_status(&coordinator, certs.dir());
    assert_eq!(
        run.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );

    // A node's certificate and key under the admin's file names: the handshake passes (it is a
    // valid client certificate from the right CA) and the coordinator refuses the caller.
    let impostor = tempfile::tempdir().unwrap();
    let (node_cert, node_key) = certs.node("w1");
    std::fs::copy(certs.ca(), impostor.path().join(tls::CA_CERT_FILE)).unwrap();
    std::fs::copy(node_cert, impostor.path().join(tls::ADMIN_CERT_FILE)).unwrap();
    std::fs::copy(node_key, impostor.path().join(tls::ADMIN_KEY_FILE)).unwrap();
    let run = kreachctl_status(&coordinator, impostor.path());
    eprintln!("kreachctl with a node certificate: {}", run.stderr.trim());
    assert_eq!(
        run.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("the admin service needs the admin certificate"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("w1"), "{}", run.stderr);

    // An empty directory: the missing file is named before any connection is tried.
    let empty = tempfile::tempdir().unwrap();
    let run = kreachctl_status(&coordinator, empty.path());
    eprintln!("kreachctl with an empty --certs: {}", run.stderr.trim());
    assert_eq!(
        run.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    let missing = empty.path().join(tls::CA_CERT_FILE);
    assert!(
        run.stderr.contains(&missing.display().to_string()),
        "should name {}: {}",
        missing.display(),
        run.stderr
    );
}
