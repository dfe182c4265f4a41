//! The coordinator's own TLS accept loop, in front of tonic.
//!
//! tonic's built-in server TLS drops a refused handshake silently: the operator of the coordinator
//! sees nothing, and the agent only "connection closed". Here every handshake runs on its own task
//! (a slow client never holds up the accept loop), is bounded by [`HANDSHAKE_TIMEOUT`], and a
//! refusal is logged once with the peer's address and the reason in an operator's words (no
//! certificate, a certificate from another CA, an expired one, ...). rustls still sends the TLS
//! alert, so the client learns the cause too. The peer certificates stay on the stream, where
//! tonic's `Request::peer_certs` finds them for [`crate::grpc`]'s identity checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};

/// A handshake that has not finished by then is dropped (and logged).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for tonic to take them.
const READY_BACKLOG: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what}: no PEM {kind} in it")]
    Missing {
        what: &'static str,
        kind: &'static str,
    },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// The server side of mutual TLS: the coordinator's certificate and key, and client certificates
/// required and checked against `ca_pem` (the CA of `kreachctl certs init`). ALPN h2, as gRPC
/// needs.
pub fn server_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<ServerConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certificates("tls.ca", ca_pem)? {
        roots.add(cert).map_err(|e| invalid("tls.ca", e))?;
    }
    let chain = pem_certificates("tls.cert", cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("tls.key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid("tls.ca", e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("tls.cert/tls.key", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Every certificate in `pem`; at least one.
fn pem_certificates(
    what: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, e))?;
    if certificates.is_empty() {
        return Err(TlsSetupError::Missing {
            what,
            kind: "certificate",
        });
    }
    Ok(certificates)
}

fn invalid(what: &'static str, error: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError::Invalid {
        what,
        message: error.to_string(),
    }
}

/// Why a handshake was refused: a bounded kind for metrics (one of
/// [`crate::metrics::TLS_REFUSALS`]) and a sentence for the log.
pub fn refusal(error: &std::io::Error) -> (&'static str, String) {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return ("other", error.to_string());
    };
    match tls {
        rustls::Error::NoCertificatesPresented => (
            "no_certificate",
            "the client presented no certificate (agents need the node certificate from `kreachctl certs init`, kreachctl the admin one)".to_string(),
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => (
            "unknown_ca",
            "the client's certificate is not signed by this coordinator's CA (tls.ca)".to_string(),
        ),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => (
            "bad_signature",
            "the client's certificate has a bad signature (not issued by this coordinator's CA?)".to_string(),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => (
            "expired",
            "the client's certificate has expired (issue a new one: kreachctl certs issue)".to_string(),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => (
            "not_yet_valid",
            "the client's certificate is not valid yet (check the clocks)".to_string(),
        ),
        rustls::Error::InvalidCertificate(other) => (
            "other_certificate",
            format!("the client's certificate was refused: {other:?}"),
        ),
        rustls::Error::AlertReceived(alert) => (
            "peer_refused",
            format!("the client refused this coordinator's certificate (TLS alert {alert:?}): does it trust this coordinator's CA, and does tls.cert name the address it dials?"),
        ),
        other => ("other", format!("TLS: {other}")),
    }
}

/// Accept TCP connections on `listener` and hand each one to tonic once its TLS handshake
/// succeeded. Ends when the receiver is dropped.
pub fn accept_loop(
    listener: TcpListener,
    config: ServerConfig,
) -> mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (ready, receiver) = mpsc::channel(READY_BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = ready.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and the like: say so, back off a moment, keep serving.
                        tracing::warn!("accepting a connection failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Some(stream) = handshake(&acceptor, tcp, peer).await {
                    let _ = ready.send(Ok(stream)).await;
                }
            });
        }
    });
    receiver
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            let (kind, why) = refusal(&error);
            crate::metrics::record_tls_refusal(kind);
            tracing::warn!(peer = %peer, reason = kind, "TLS handshake refused: {why}");
            None
        }
        Err(_) => {
            crate::metrics::record_tls_refusal("timeout");
            tracing::warn!(peer = %peer, "TLS handshake from {peer} did not finish within {HANDSHAKE_TIMEOUT:?}; closed");
            None
        }
    }
}
