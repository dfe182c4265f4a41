//! The certificates from `init_certs` in a real mutual-TLS handshake: a tonic server on
//! 127.0.0.1 with `ServerTlsConfig` requiring a client certificate from the kreach CA, and tonic
//! clients presenting (or not) certificates. This is the wiring the coordinator and agents use.

use std::path::Path;
use std::time::Duration;

use kreach_proto::agent_service_client::AgentServiceClient;
use kreach_proto::agent_service_server::{AgentService, AgentServiceServer};
use kreach_proto::{
    Ack, AgentHealth, AuditAck, AuditReport, HostFacts, NodeStatus, Release, SubscribeRequest,
};
use kreach_runtime::tls::{init_certs, load_tls_files, peer_identity, PeerIdentity, TlsFiles};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(10);
const IDENTITY_HEADER: &str = "x-test-peer-identity";

/// Answers `ReportFacts` with the identity its client certificate carries, as the coordinator's
/// authorization would see it.
struct EchoIdentity;

#[tonic::async_trait]
impl AgentService for EchoIdentity {
    type SubscribeStream = tokio_stream::Empty<Result<Release, Status>>;

    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }

    async fn report_status(&self, _: Request<NodeStatus>) -> Result<Response<Ack>, Status> {
        Ok(Response::new(Ack {}))
    }

    async fn report_facts(&self, request: Request<HostFacts>) -> Result<Response<Ack>, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        let identity = peer_identity(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mut response = Response::new(Ack {});
        response
            .metadata_mut()
            .insert(IDENTITY_HEADER, format!("{identity:?}").parse().unwrap());
        Ok(response)
    }

    async fn report_audit(
        &self,
        _request: Request<AuditReport>,
    ) -> Result<Response<AuditAck>, Status> {
        Err(Status::unimplemented("not used by the handshake tests"))
    }

    async fn report_health(&self, _request: Request<AgentHealth>) -> Result<Response<Ack>, Status> {
        Err(Status::unimplemented("not used by the handshake tests"))
    }

    type DryRunsStream = tokio_stream::Empty<Result<kreach_proto::DryRunRequest, Status>>;

    async fn dry_runs(
        &self,
        _request: Request<kreach_proto::DryRunSubscription>,
    ) -> Result<Response<Self::DryRunsStream>, Status> {
        Err(Status::unimplemented("not used by the handshake tests"))
    }

    async fn report_dry_run(
        &self,
        _request: Request<kreach_proto::DryRunReport>,
    ) -> Result<Response<Ack>, Status> {
        Err(Status::unimplemented("not used by the handshake tests"))
    }

    async fn report_diagnose(
        &self,
        _request: Request<kreach_proto::DiagnoseStep>,
    ) -> Result<Response<Ack>, Status> {
        Err(Status::unimplemented("not used by the handshake tests"))
    }
}

fn load(dir: &Path, cert: &str, key: &str) -> TlsFiles {
    load_tls_files(&dir.join("ca.pem"), &dir.join(cert), &dir.join(key)).unwrap()
}

/// Start the server with the coordinator's certificate; returns its port.
async fn start_server(dir: &Path) -> u16 {
    let files = load(dir, "coordinator.pem", "coordinator.key");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&files.cert_pem, &files.key_pem))
        .client_ca_root(Certificate::from_pem(&files.ca_pem));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(AgentServiceServer::new(EchoIdentity))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    port
}

/// Connect trusting `ca_pem` for the server, presenting `client` (cert, key) if given, and call
/// `ReportFacts`; returns the identity the server saw, or the error.
async fn call(port: u16, ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Result<String, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    // The server certificate carries the IP SAN 127.0.0.1, so no domain_name override is needed.
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("tls_config: {e}"))?
        .connect_timeout(DEADLINE);
    let attempt = async {
        let channel: Channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let response = AgentServiceClient::new(channel)
            .report_facts(HostFacts::default())
            .await
            .map_err(|e| format!("report_facts: {e:?}"))?;
        Ok(response
            .metadata()
            .get(IDENTITY_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default())
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test]
async fn mutual_tls_admits_kreach_certificates_and_refuses_others() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    let coordinator = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    init_certs(&ours, &coordinator, &["a".to_string()], 1, false).unwrap();
    init_certs(&theirs, &coordinator, &["a".to_string()], 1, false).unwrap();
    let port = start_server(&ours).await;
    let ca = std::fs::read(ours.join("ca.pem")).unwrap();

    // (1) A node certificate from our CA: admitted, and the server sees Node("a").
    let node = load(&ours, "nodes/a.pem", "nodes/a.key");
    let seen = call(port, &ca, Some((&node.cert_pem, &node.key_pem))).await;
    assert_eq!(
        seen,
        Ok(format!("{:?}", PeerIdentity::Node("a".to_string())))
    );

    // The operator's certificate: Admin.
    let admin = load(&ours, "admin.pem", "admin.key");
    let seen = call(port, &ca, Some((&admin.cert_pem, &admin.key_pem))).await;
    assert_eq!(seen, Ok(format!("{:?}", PeerIdentity::Admin)));

    // (2) The same node name from another CA: refused during the handshake, so no RPC is served.
    let cert = std::fs::read(theirs.join("nodes/a.pem")).unwrap();
    let key = std::fs::read(theirs.join("nodes/a.key")).unwrap();
    let refused = call(port, &ca, Some((&cert, &key))).await;
    // With TLS 1.3 the client finishes its side of the handshake before the server judges its
    // certificate, so `connect()` succeeds and the first RPC fails with the server's TLS alert
    // (not a gRPC status from a handler): rustls answers a bad signature with DecryptError.
    let error = refused.expect_err("a certificate from another CA must be refused");
    assert!(error.contains("fatal alert"), "{error}");

    // (3) No client certificate at all: refused.
    let refused = call(port, &ca, None).await;
    let error = refused.expect_err("a client without a certificate must be refused");
    assert!(error.contains("CertificateRequired"), "{error}");

    // A client that trusts another CA refuses our coordinator.
    let their_ca = std::fs::read(theirs.join("ca.pem")).unwrap();
    let their_node = load(&theirs, "nodes/a.pem", "nodes/a.key");
    let refused = call(
        port,
        &their_ca,
        Some((&their_node.cert_pem, &their_node.key_pem)),
    )
    .await;
    let error = refused.expect_err("the client must not trust a coordinator from another CA");
    assert!(
        error.starts_with("connect:") && error.contains("BadSignature"),
        "{error}"
    );

    // The CA still admits a good client after the refusals (the server survived them).
    let seen = call(port, &ca, Some((&node.cert_pem, &node.key_pem))).await;
    assert!(seen.is_ok(), "{seen:?}");
}

#[tokio::test]
async fn a_node_certificate_cannot_serve_as_the_coordinator() {
    // Extended key usage: node certificates are for client authentication only.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_certs(
        dir,
        &["127.0.0.1".to_string()],
        &["a".to_string()],
        1,
        false,
    )
    .unwrap();
    let impostor = load(dir, "nodes/a.pem", "nodes/a.key");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&impostor.cert_pem, &impostor.key_pem))
        .client_ca_root(Certificate::from_pem(&impostor.ca_pem));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(AgentServiceServer::new(EchoIdentity))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let admin = load(dir, "admin.pem", "admin.key");
    let refused = call(port, &admin.ca_pem, Some((&admin.cert_pem, &admin.key_pem))).await;
    let error = refused.expect_err("a node certificate must not pass as a server certificate");
    assert!(error.contains("ServerAuth"), "{error}");
}
