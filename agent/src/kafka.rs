//! A small blocking Kafka client for the agent's probes: ApiVersions, Metadata, DescribeConfigs
//! and DescribeQuorum against one broker address, and the one write the agent makes over the
//! Kafka protocol: IncrementalAlterConfigs of a broker's listener key store, which makes Kafka
//! reload it without a restart.
//!
//! Owns the wire exchange: size-prefixed frames, request headers, version negotiation from
//! ApiVersions, timeouts, and turning the answers into `kreach_domain::gates` values. The message
//! encodings come from the `kafka-protocol` crate (generated from Kafka's own message specs); no
//! Kafka message is hand-encoded here. Does not decide anything: the gates do.
//!
//! Blocking on purpose: the engine that restarts Kafka is synchronous, and a probe is a handful of
//! round trips with a deadline. Every read and write is bounded by the connection's timeout, and a
//! response frame larger than [`MAX_RESPONSE_BYTES`] is refused as "not Kafka" before anything is
//! allocated for it. The peer is never trusted: every response header and body is walked by
//! [`kreach_runtime::kafka_frame`] before `kafka-protocol` decodes it, so a frame whose counts
//! claim more elements than it has bytes is refused as "not Kafka" instead of reserving memory
//! for them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_quorum_request::{
    DescribeQuorumRequest, PartitionData, TopicData,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, ApiKey, ApiVersionsRequest, IncrementalAlterConfigsRequest,
    MetadataRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
    TopicName,
};
use kafka_protocol::protocol::{Encodable, Request, StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use kreach_domain::gates::{AdvertisedBroker, ClusterMetadata, PartitionState, TopicMinIsr};
use kreach_runtime::kafka_frame::{self, CheckedResponse};

/// The client id every request carries, so broker logs show who probed.
pub const CLIENT_ID: &str = "kreach-agent";
/// The largest response frame accepted. Kafka's own metadata answers for large clusters are a
/// few MiB; a size prefix beyond this is garbage (e.g. an HTTP or SSH banner read as a length).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// The ApiVersions version sent first: v3 is what Kafka 2.4+ and tansu answer; an older broker
/// answers UNSUPPORTED_VERSION with its range, and the request is repeated in a version it knows.
const FIRST_API_VERSIONS_VERSION: i16 = 3;
/// Kafka's resource type for topics in DescribeConfigs.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// KRaft's metadata log, whose leader is the active controller.
const CLUSTER_METADATA_TOPIC: &str = "__cluster_metadata";
/// Kafka's error code for a request version the broker does not support.
const UNSUPPORTED_VERSION: i16 = 35;
/// Kafka's resource type for one broker's configs (the resource name is its id).
const RESOURCE_TYPE_BROKER: i8 = 4;
/// IncrementalAlterConfigs' SET and DELETE operations.
const CONFIG_OPERATION_SET: i8 = 0;
const CONFIG_OPERATION_DELETE: i8 = 1;

/// Why a probe failed. Every variant names the address it talked to.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer {api:?} within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        api: ApiKey,
        timeout: Duration,
    },
    #[error("{addr} closed the connection during {api:?}: it does not serve Kafka there, or refused the request")]
    Closed { addr: SocketAddr, api: ApiKey },
    #[error("{addr} does not support {api:?} ({detail})")]
    Unsupported {
        addr: SocketAddr,
        api: ApiKey,
        detail: String,
    },
    #[error("{addr} answered {api:?} with something that is not Kafka: {message}")]
    Protocol {
        addr: SocketAddr,
        api: ApiKey,
        message: String,
    },
    #[error("{addr} answered {api:?} with Kafka error {code} ({name})")]
    Kafka {
        addr: SocketAddr,
        api: ApiKey,
        code: i16,
        name: String,
    },
    #[error("TLS with {addr} as {host}: {}", tls_text(*.failure, .host, .message))]
    Tls {
        addr: SocketAddr,
        host: String,
        failure: TlsFailure,
        message: String,
    },
    #[error("SASL login to {addr} as {user:?} failed: {message}")]
    Auth {
        addr: SocketAddr,
        user: String,
        message: String,
    },
    #[error("i/o error with {addr} during {api:?}: {source}")]
    Io {
        addr: SocketAddr,
        api: ApiKey,
        source: std::io::Error,
    },
}

fn tls_text(failure: TlsFailure, host: &str, message: &str) -> String {
    match failure {
        TlsFailure::NotForName => format!("the certificate does not cover {host} ({message})"),
        TlsFailure::UnknownCa => {
            format!("the certificate is not signed by the Kafka CA this host trusts ({message})")
        }
        TlsFailure::Expired => format!("the certificate has expired ({message})"),
        TlsFailure::Other => format!("handshake failed: {message}"),
    }
}

impl ProbeError {
    /// True when nothing answers at the address (refused, unreachable, timed out connecting):
    /// the broker is not serving there at all.
    pub fn is_not_listening(&self) -> bool {
        matches!(self, ProbeError::Connect { .. })
    }
}

/// A SCRAM credential as AlterUserScramCredentials carries it: (user, mechanism number,
/// iterations, salt, salted password).
pub type ScramCredential = (String, i8, i32, Vec<u8>, Vec<u8>);

/// One broker's API range as its ApiVersions answer lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BrokerApi {
    key: i16,
    min: i16,
    max: i16,
}

/// What a client trusts on a TLS listener: the Kafka CA kreach installed, nothing else.
#[derive(Clone)]
pub struct TlsClient {
    config: std::sync::Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// A client trusting only the certificates in `ca_pem`.
    pub fn from_ca_pem(ca_pem: &str) -> Result<TlsClient, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|error| format!("the Kafka CA is not PEM: {error}"))?;
            roots
                .add(cert)
                .map_err(|error| format!("the Kafka CA cannot be trusted: {error}"))?;
        }
        if roots.is_empty() {
            return Err("the Kafka CA bundle holds no certificate".to_string());
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            config: std::sync::Arc::new(config),
        })
    }
}

/// Why a TLS handshake failed, in the terms a client's error would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate is valid but not for the name (or address) the client connected to.
    NotForName,
    /// Not signed by the CA the client trusts.
    UnknownCa,
    Expired,
    /// Anything else (no TLS there, protocol mismatch, ...).
    Other,
}

/// The byte stream under the Kafka protocol: plain TCP or TLS over it.
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(stream) => &stream.sock,
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_write_timeout(timeout)
    }
}

impl Read for Transport {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buffer),
            Transport::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(data),
            Transport::Tls(stream) => stream.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
            Transport::Tls(stream) => stream.flush(),
        }
    }
}

/// Complete a TLS handshake as a client of `host` (a DNS name or an IP address, verified against
/// the certificate's SANs) over `tcp`.
fn tls_handshake(
    addr: SocketAddr,
    mut tcp: TcpStream,
    tls: &TlsClient,
    host: &str,
    timeout: Duration,
) -> Result<Transport, ProbeError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let failed = |failure: TlsFailure, message: String| ProbeError::Tls {
        addr,
        host: bare.to_string(),
        failure,
        message,
    };
    let name = rustls::pki_types::ServerName::try_from(bare.to_string()).map_err(|error| {
        failed(
            TlsFailure::Other,
            format!("{bare:?} is not a name TLS can verify: {error}"),
        )
    })?;
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::clone(&tls.config), name)
        .map_err(|error| failed(TlsFailure::Other, error.to_string()))?;
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    while connection.is_handshaking() {
        if let Err(error) = connection.complete_io(&mut tcp) {
            let tls_error = error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            return Err(match tls_error {
                Some(rustls::Error::InvalidCertificate(cert)) => {
                    use rustls::CertificateError as C;
                    let failure = match cert {
                        C::NotValidForName | C::NotValidForNameContext { .. } => {
                            TlsFailure::NotForName
                        }
                        C::UnknownIssuer => TlsFailure::UnknownCa,
                        C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
                        _ => TlsFailure::Other,
                    };
                    failed(failure, format!("{cert:?}"))
                }
                Some(other) => failed(TlsFailure::Other, other.to_string()),
                None if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
                {
                    failed(
                        TlsFailure::Other,
                        format!("no TLS handshake within {timeout:?}"),
                    )
                }
                None => failed(TlsFailure::Other, error.to_string()),
            });
        }
    }
    Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
        connection, tcp,
    ))))
}

/// A connection to one broker address that has completed the ApiVersions handshake.
pub struct KafkaConnection {
    addr: SocketAddr,
    stream: Transport,
    timeout: Duration,
    next_correlation_id: i32,
    apis: Vec<BrokerApi>,
}

impl KafkaConnection {
    /// Connect and exchange ApiVersions. `timeout` bounds the connect and each request after it.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ProbeError> {
        Self::connect_with(addr, timeout, None)
    }

    /// [`KafkaConnection::connect`] over TLS: the broker's certificate must chain to `tls`'s CA
    /// and cover `host`, the name (or address) the client was told to connect to.
    pub fn connect_tls(
        addr: SocketAddr,
        timeout: Duration,
        tls: &TlsClient,
        host: &str,
    ) -> Result<Self, ProbeError> {
        Self::connect_with(addr, timeout, Some((tls, host)))
    }

    fn connect_with(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<(&TlsClient, &str)>,
    ) -> Result<Self, ProbeError> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Transport::Plain(tcp),
            Some((tls, host)) => tls_handshake(addr, tcp, tls, host, timeout)?,
        };
        let mut connection = KafkaConnection {
            addr,
            stream,
            timeout,
            next_correlation_id: 1,
            apis: Vec::new(),
        };
        connection.api_versions()?;
        Ok(connection)
    }

    /// The address this connection talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the broker's ApiVersions answer lists `api` (in any version).
    pub fn supports(&self, api: ApiKey) -> bool {
        self.apis.iter().any(|entry| entry.key == api as i16)
    }

    /// The certificate the broker presented (DER), on a TLS connection.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Transport::Plain(_) => None,
            Transport::Tls(stream) => stream
                .conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| leaf.as_ref().to_vec()),
        }
    }

    /// Change broker `broker_id`'s dynamic configs (IncrementalAlterConfigs): SET each `(key,
    /// Some(value))`, DELETE each `(key, None)`. Setting a listener's `ssl.keystore.location` to
    /// the path it already has is how Kafka is told to reload that key store from disk, without a
    /// restart. The broker's own error message, if it refuses, is part of the error.
    pub fn alter_broker_configs(
        &mut self,
        broker_id: i32,
        settings: &[(String, Option<String>)],
    ) -> Result<(), ProbeError> {
        let api = ApiKey::IncrementalAlterConfigs;
        let version = self.negotiated_version(api)?;
        let mut resource = AlterConfigsResource::default();
        resource.resource_type = RESOURCE_TYPE_BROKER;
        resource.resource_name = StrBytes::from_string(broker_id.to_string());
        resource.configs = settings
            .iter()
            .map(|(key, value)| {
                let mut config = AlterableConfig::default();
                config.name = StrBytes::from_string(key.clone());
                config.config_operation = match value {
                    Some(_) => CONFIG_OPERATION_SET,
                    None => CONFIG_OPERATION_DELETE,
                };
                config.value = value.clone().map(StrBytes::from_string);
                config
            })
            .collect();
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![resource];
        let response = self.send(api, version, &request)?;
        let Some(answer) = response.responses.first() else {
            return Err(ProbeError::Protocol {
                addr: self.addr,
                api,
                message: "the answer lists no resource".to_string(),
            });
        };
        if answer.error_code != 0 {
            let mut error = self.kafka_error(api, answer.error_code);
            if let (ProbeError::Kafka { name, .. }, Some(message)) = (
                &mut error,
                answer.error_message.as_ref().filter(|m| !m.is_empty()),
            ) {
                name.push_str(&format!(": {}", message.as_str()));
            }
            return Err(error);
        }
        Ok(())
    }

    /// Create or change SCRAM credentials and delete others (AlterUserScramCredentials, KIP-554):
    /// `upsert` are [`ScramCredential`]s with the mechanism as Kafka numbers it (1: SCRAM-SHA-256,
    /// 2: SCRAM-SHA-512); `delete` are `(user, mechanism)`. Every user the broker refuses is
    /// named with its error.
    pub fn alter_scram_credentials(
        &mut self,
        upsert: &[ScramCredential],
        delete: &[(String, i8)],
    ) -> Result<(), ProbeError> {
        let api = ApiKey::AlterUserScramCredentials;
        let version = self.negotiated_version(api)?;
        let mut request = AlterUserScramCredentialsRequest::default();
        request.upsertions = upsert
            .iter()
            .map(|(name, mechanism, iterations, salt, salted)| {
                let mut upsertion = ScramCredentialUpsertion::default();
                upsertion.name = StrBytes::from_string(name.clone());
                upsertion.mechanism = *mechanism;
                upsertion.iterations = *iterations;
                upsertion.salt = Bytes::from(salt.clone());
                upsertion.salted_password = Bytes::from(salted.clone());
                upsertion
            })
            .collect();
        request.deletions = delete
            .iter()
            .map(|(name, mechanism)| {
                let mut deletion = ScramCredentialDeletion::default();
                deletion.name = StrBytes::from_string(name.clone());
                deletion.mechanism = *mechanism;
                deletion
            })
            .collect();
        let response = self.send(api, version, &request)?;
        let refused: Vec<String> = response
            .results
            .iter()
            .filter(|result| result.error_code != 0)
            .map(|result| {
                format!(
                    "{}: {}{}",
                    result.user.as_str(),
                    error_name(result.error_code),
                    result
                        .error_message
                        .as_ref()
                        .map(|m| format!(" ({})", m.as_str()))
                        .unwrap_or_default()
                )
            })
            .collect();
        match response
            .results
            .iter()
            .find(|result| result.error_code != 0)
        {
            None => Ok(()),
            Some(first) => Err(ProbeError::Kafka {
                addr: self.addr,
                api,
                code: first.error_code,
                name: refused.join("; "),
            }),
        }
    }

    /// Log in with SCRAM (SaslHandshake, then SaslAuthenticate carrying RFC 5802's messages), as
    /// a Kafka client on a SASL listener must before any request but ApiVersions. The broker must
    /// also prove it holds the credential (the server signature).
    pub fn sasl_scram_login(
        &mut self,
        mechanism: crate::scram::Mechanism,
        user: &str,
        password: &str,
    ) -> Result<(), ProbeError> {
        let addr = self.addr;
        let failed = move |message: String| ProbeError::Auth {
            addr,
            user: user.to_string(),
            message,
        };
        let api = ApiKey::SaslHandshake;
        let version = self.negotiated_version(api)?;
        if version < 1 {
            return Err(failed(
                "the broker offers only SaslHandshake v0 (raw SASL tokens), which kreach does not speak"
                    .to_string(),
            ));
        }
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str(mechanism.name());
        let answer = self.send(api, version, &handshake)?;
        if answer.error_code != 0 {
            return Err(failed(format!(
                "the listener does not offer {} (it offers {})",
                mechanism.name(),
                answer
                    .mechanisms
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let nonce = crate::scram::ScramClient::random_nonce().map_err(failed)?;
        let client = crate::scram::ScramClient::new(mechanism, user, password, &nonce);
        let server_first = self.sasl_step(client.client_first().into_bytes(), &failed)?;
        let (client_final, awaiting) = client
            .client_final(&String::from_utf8_lossy(&server_first))
            .map_err(failed)?;
        let server_final = self.sasl_step(client_final.into_bytes(), &failed)?;
        awaiting
            .verify(&String::from_utf8_lossy(&server_final))
            .map_err(failed)
    }

    /// One SaslAuthenticate round trip: our bytes out, the server's back.
    fn sasl_step(
        &mut self,
        bytes: Vec<u8>,
        failed: &dyn Fn(String) -> ProbeError,
    ) -> Result<Vec<u8>, ProbeError> {
        let api = ApiKey::SaslAuthenticate;
        let version = self.negotiated_version(api)?;
        let mut request = SaslAuthenticateRequest::default();
        request.auth_bytes = Bytes::from(bytes);
        let answer = self.send(api, version, &request)?;
        if answer.error_code != 0 {
            return Err(failed(format!(
                "{}{}",
                error_name(answer.error_code),
                answer
                    .error_message
                    .as_ref()
                    .map(|m| format!(": {}", m.as_str()))
                    .unwrap_or_default()
            )));
        }
        Ok(answer.auth_bytes.to_vec())
    }

    /// Every config of broker `broker_id` as DescribeConfigs lists it: `(key, value, config
    /// source)` (the value is None for a sensitive one). Sources 2 and 3 are dynamic
    /// (`DYNAMIC_BROKER_CONFIG`, `DYNAMIC_DEFAULT_BROKER_CONFIG`) and beat server.properties.
    pub fn broker_configs(
        &mut self,
        broker_id: i32,
    ) -> Result<Vec<(String, Option<String>, i8)>, ProbeError> {
        let api = ApiKey::DescribeConfigs;
        let version = self.negotiated_version(api)?;
        let mut resource = DescribeConfigsResource::default();
        resource.resource_type = RESOURCE_TYPE_BROKER;
        resource.resource_name = StrBytes::from_string(broker_id.to_string());
        resource.configuration_keys = None;
        let mut request = DescribeConfigsRequest::default();
        request.resources = vec![resource];
        let response = self.send(api, version, &request)?;
        let Some(answer) = response.results.into_iter().next() else {
            return Err(ProbeError::Protocol {
                addr: self.addr,
                api,
                message: "the answer lists no resource".to_string(),
            });
        };
        if answer.error_code != 0 {
            return Err(self.kafka_error(api, answer.error_code));
        }
        Ok(answer
            .configs
            .into_iter()
            .map(|config| {
                (
                    config.name.to_string(),
                    config.value.map(|value| value.to_string()),
                    config.config_source,
                )
            })
            .collect())
    }

    /// How many APIs the broker listed.
    pub fn api_count(&self) -> usize {
        self.apis.len()
    }

    /// The highest version both the broker and kreach speak, or why there is none.
    pub fn negotiated_version(&self, api: ApiKey) -> Result<i16, ProbeError> {
        let ours = api.valid_versions();
        let Some(theirs) = self.apis.iter().find(|entry| entry.key == api as i16) else {
            return Err(ProbeError::Unsupported {
                addr: self.addr,
                api,
                detail: "its ApiVersions answer does not list it".to_string(),
            });
        };
        pick_version(ours, theirs.min, theirs.max).ok_or_else(|| ProbeError::Unsupported {
            addr: self.addr,
            api,
            detail: format!(
                "the broker speaks versions {}..{}, kreach {}",
                theirs.min, theirs.max, ours
            ),
        })
    }

    /// Metadata for all topics, as this listener advertises it.
    pub fn metadata(&mut self) -> Result<ClusterMetadata, ProbeError> {
        let api = ApiKey::Metadata;
        let version = self.negotiated_version(api)?;
        let mut request = MetadataRequest::default();
        // v0 asks for all topics with an empty list; v1+ with null.
        request.topics = if version >= 1 { None } else { Some(Vec::new()) };
        // Asking for all topics creates none, but say so where the field exists.
        request.allow_auto_topic_creation = version < 4;
        let response = self.send(api, version, &request)?;
        if response.error_code != 0 {
            return Err(self.kafka_error(api, response.error_code));
        }
        let mut metadata = ClusterMetadata {
            cluster_id: response.cluster_id.map(|id| id.to_string()),
            controller_id: (response.controller_id.0 >= 0).then_some(response.controller_id.0),
            ..ClusterMetadata::default()
        };
        for broker in response.brokers {
            let port = u16::try_from(broker.port).map_err(|_| ProbeError::Protocol {
                addr: self.addr,
                api,
                message: format!(
                    "broker {} has port {} outside 0..65535",
                    broker.node_id.0, broker.port
                ),
            })?;
            metadata.brokers.push(AdvertisedBroker {
                id: broker.node_id.0,
                host: broker.host.to_string(),
                port,
                rack: broker.rack.map(|rack| rack.to_string()),
            });
        }
        for topic in response.topics {
            let name = topic
                .name
                .map(|name| name.0.to_string())
                .unwrap_or_default();
            if topic.error_code != 0 {
                metadata
                    .topic_errors
                    .push(format!("topic {name:?}: {}", error_name(topic.error_code)));
                continue;
            }
            for partition in topic.partitions {
                metadata.partitions.push(PartitionState {
                    topic: name.clone(),
                    partition: partition.partition_index,
                    leader: partition.leader_id.0,
                    replicas: partition.replica_nodes.iter().map(|id| id.0).collect(),
                    isr: partition.isr_nodes.iter().map(|id| id.0).collect(),
                    offline_replicas: partition.offline_replicas.iter().map(|id| id.0).collect(),
                });
            }
        }
        Ok(metadata)
    }

    /// Each topic's `min.insync.replicas`. When the broker does not support DescribeConfigs, or
    /// answers a topic with an error, those topics get Kafka's default (1) and a note says why.
    pub fn min_insync_replicas(&mut self, topics: &[String]) -> Result<TopicMinIsr, ProbeError> {
        let api = ApiKey::DescribeConfigs;
        let mut result = TopicMinIsr::default();
        if topics.is_empty() {
            return Ok(result);
        }
        let version = match self.negotiated_version(api) {
            Ok(version) => version,
            Err(unsupported @ ProbeError::Unsupported { .. }) => {
                result.notes.push(format!(
                    "{unsupported}; using Kafka's default min.insync.replicas={} for every topic",
                    kreach_domain::gates::DEFAULT_MIN_INSYNC_REPLICAS
                ));
                return Ok(result);
            }
            Err(other) => return Err(other),
        };
        let mut request = DescribeConfigsRequest::default();
        request.resources = topics
            .iter()
            .map(|topic| {
                let mut resource = DescribeConfigsResource::default();
                resource.resource_type = RESOURCE_TYPE_TOPIC;
                resource.resource_name = StrBytes::from_string(topic.clone());
                // All keys (null), filtered here: tansu cannot parse a key list, and a topic's
                // config set is small.
                resource.configuration_keys = None;
                resource
            })
            .collect();
        let response = self.send(api, version, &request)?;
        for answer in response.results {
            let topic = answer.resource_name.to_string();
            if answer.error_code != 0 {
                result.notes.push(format!(
                    "DescribeConfigs for topic {topic:?} on {}: {}; using Kafka's default min.insync.replicas={}",
                    self.addr,
                    error_name(answer.error_code),
                    kreach_domain::gates::DEFAULT_MIN_INSYNC_REPLICAS
                ));
                continue;
            }
            let value = answer
                .configs
                .iter()
                .find(|config| config.name.as_str() == "min.insync.replicas")
                .and_then(|config| config.value.as_ref());
            match value.map(|value| value.trim().parse::<i32>()) {
                Some(Ok(parsed)) => {
                    result.by_topic.insert(topic, parsed);
                }
                Some(Err(_)) | None => result.notes.push(format!(
                    "{} did not report a numeric min.insync.replicas for topic {topic:?}; using Kafka's default {}",
                    self.addr,
                    kreach_domain::gates::DEFAULT_MIN_INSYNC_REPLICAS
                )),
            }
        }
        Ok(result)
    }

    /// The KRaft quorum leader (the active controller) from DescribeQuorum; `Ok(None)` when the
    /// quorum has no leader right now. `Err(Unsupported)` when ApiVersions does not list it
    /// (ZooKeeper-mode Kafka, other implementations): callers fall back to Metadata's controller.
    pub fn quorum_leader(&mut self) -> Result<Option<i32>, ProbeError> {
        let api = ApiKey::DescribeQuorum;
        let version = self.negotiated_version(api)?;
        let mut partition = PartitionData::default();
        partition.partition_index = 0;
        let mut topic = TopicData::default();
        topic.topic_name = TopicName(StrBytes::from_static_str(CLUSTER_METADATA_TOPIC));
        topic.partitions = vec![partition];
        let mut request = DescribeQuorumRequest::default();
        request.topics = vec![topic];
        let response = self.send(api, version, &request)?;
        if response.error_code != 0 {
            return Err(self.kafka_error(api, response.error_code));
        }
        let leader = response
            .topics
            .iter()
            .flat_map(|topic| topic.partitions.iter())
            .find(|partition| partition.partition_index == 0)
            .ok_or_else(|| ProbeError::Protocol {
                addr: self.addr,
                api,
                message: format!("no partition 0 of {CLUSTER_METADATA_TOPIC} in the answer"),
            })?;
        if leader.error_code != 0 {
            return Err(self.kafka_error(api, leader.error_code));
        }
        Ok((leader.leader_id.0 >= 0).then_some(leader.leader_id.0))
    }

    fn api_versions(&mut self) -> Result<(), ProbeError> {
        let api = ApiKey::ApiVersions;
        let mut version = FIRST_API_VERSIONS_VERSION;
        // At most two rounds: our first choice, then the broker's highest if it refused ours.
        for _ in 0..2 {
            let mut request = ApiVersionsRequest::default();
            if version >= 3 {
                request.client_software_name = StrBytes::from_static_str(CLIENT_ID);
                request.client_software_version =
                    StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
            }
            let frame = self.exchange(api, version, &request)?;
            // A broker that does not know our version answers in v0 with UNSUPPORTED_VERSION.
            let response = decode_body::<ApiVersionsResponse>(frame.clone(), version)
                .ok()
                .filter(|response| response.error_code != UNSUPPORTED_VERSION)
                .map(Ok)
                .unwrap_or_else(|| decode_body::<ApiVersionsResponse>(frame, 0))
                .map_err(|message| ProbeError::Protocol {
                    addr: self.addr,
                    api,
                    message,
                })?;
            let apis: Vec<BrokerApi> = response
                .api_keys
                .iter()
                .map(|entry| BrokerApi {
                    key: entry.api_key,
                    min: entry.min_version,
                    max: entry.max_version,
                })
                .collect();
            if response.error_code == UNSUPPORTED_VERSION {
                let retry = apis
                    .iter()
                    .find(|entry| entry.key == api as i16)
                    .and_then(|entry| pick_version(api.valid_versions(), entry.min, entry.max))
                    .filter(|&retry| retry != version);
                match retry {
                    Some(retry) => {
                        version = retry;
                        continue;
                    }
                    None => return Err(self.kafka_error(api, response.error_code)),
                }
            }
            if response.error_code != 0 {
                return Err(self.kafka_error(api, response.error_code));
            }
            if apis.is_empty() {
                return Err(ProbeError::Protocol {
                    addr: self.addr,
                    api,
                    message: "the answer lists no APIs".to_string(),
                });
            }
            self.apis = apis;
            return Ok(());
        }
        Err(ProbeError::Unsupported {
            addr: self.addr,
            api,
            detail: "no ApiVersions version both sides speak".to_string(),
        })
    }

    /// Send one request and decode its response.
    fn send<R: Request>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<R::Response, ProbeError>
    where
        R::Response: CheckedResponse,
    {
        let frame = self.exchange(api, version, request)?;
        decode_body::<R::Response>(frame, version).map_err(|message| ProbeError::Protocol {
            addr: self.addr,
            api,
            message,
        })
    }

    /// Write one request frame and read its response frame; returns the body after the header.
    fn exchange<R: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<Bytes, ProbeError> {
        let deadline = Instant::now() + self.timeout;
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
        let protocol = |message: String| ProbeError::Protocol {
            addr: self.addr,
            api,
            message,
        };
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .map_err(|error| protocol(format!("cannot encode the request header: {error}")))?;
        request
            .encode(&mut body, version)
            .map_err(|error| protocol(format!("cannot encode v{version}: {error}")))?;
        let length = i32::try_from(body.len())
            .map_err(|_| protocol("the request is too large".to_string()))?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(&body);
        self.write_all(api, &frame, deadline)?;

        let mut size = [0u8; 4];
        self.read_exact(api, &mut size, deadline)?;
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| ProbeError::Protocol {
                addr: self.addr,
                api,
                message: format!(
                    "the response claims {size} bytes (the limit is {MAX_RESPONSE_BYTES}); this is not a Kafka response"
                ),
            })?;
        let mut payload = vec![0u8; size];
        self.read_exact(api, &mut payload, deadline)?;
        let mut payload = Bytes::from(payload);
        let response_header = kafka_frame::decode::<ResponseHeader>(
            &mut payload,
            api.response_header_version(version),
        )
        .map_err(|message| ProbeError::Protocol {
            addr: self.addr,
            api,
            message: format!("bad response header: {message}"),
        })?;
        if response_header.correlation_id != correlation_id {
            return Err(ProbeError::Protocol {
                addr: self.addr,
                api,
                message: format!(
                    "the answer is for request {} but request {correlation_id} was sent",
                    response_header.correlation_id
                ),
            });
        }
        Ok(payload)
    }

    fn write_all(
        &mut self,
        api: ApiKey,
        mut data: &[u8],
        deadline: Instant,
    ) -> Result<(), ProbeError> {
        while !data.is_empty() {
            let remaining = self.remaining(api, deadline)?;
            self.stream
                .set_write_timeout(Some(remaining))
                .map_err(|source| self.io_error(api, source))?;
            match self.stream.write(data) {
                Ok(0) => {
                    return Err(ProbeError::Closed {
                        addr: self.addr,
                        api,
                    })
                }
                Ok(written) => data = &data[written..],
                Err(error) => return Err(self.classify(api, error)),
            }
        }
        Ok(())
    }

    fn read_exact(
        &mut self,
        api: ApiKey,
        mut buffer: &mut [u8],
        deadline: Instant,
    ) -> Result<(), ProbeError> {
        while !buffer.is_empty() {
            let remaining = self.remaining(api, deadline)?;
            self.stream
                .set_read_timeout(Some(remaining))
                .map_err(|source| self.io_error(api, source))?;
            match self.stream.read(buffer) {
                Ok(0) => {
                    return Err(ProbeError::Closed {
                        addr: self.addr,
                        api,
                    })
                }
                Ok(read) => buffer = &mut buffer[read..],
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(self.classify(api, error)),
            }
        }
        Ok(())
    }

    fn remaining(&self, api: ApiKey, deadline: Instant) -> Result<Duration, ProbeError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ProbeError::Timeout {
                addr: self.addr,
                api,
                timeout: self.timeout,
            });
        }
        Ok(remaining)
    }

    fn classify(&self, api: ApiKey, error: std::io::Error) -> ProbeError {
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ProbeError::Timeout {
                addr: self.addr,
                api,
                timeout: self.timeout,
            },
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => ProbeError::Closed {
                addr: self.addr,
                api,
            },
            _ => self.io_error(api, error),
        }
    }

    fn io_error(&self, api: ApiKey, source: std::io::Error) -> ProbeError {
        ProbeError::Io {
            addr: self.addr,
            api,
            source,
        }
    }

    fn kafka_error(&self, api: ApiKey, code: i16) -> ProbeError {
        ProbeError::Kafka {
            addr: self.addr,
            api,
            code,
            name: error_name(code),
        }
    }
}

/// The highest version in both kreach's range and the broker's `min..=max`.
fn pick_version(ours: VersionRange, min: i16, max: i16) -> Option<i16> {
    let both = ours.intersect(&VersionRange { min, max });
    (!both.is_empty()).then_some(both.max)
}

/// Kafka's name for an error code, e.g. `LEADER_NOT_AVAILABLE`-style text from the crate.
fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(error) => format!("{error:?}: {error}"),
        None => "no error".to_string(),
    }
}

/// Check the body's counts against its bytes (see [`kafka_frame`]), then decode it.
fn decode_body<T: CheckedResponse>(mut payload: Bytes, version: i16) -> Result<T, String> {
    kafka_frame::decode::<T>(&mut payload, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::metadata_response::{MetadataResponse, MetadataResponseBroker};
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::protocol::decode_request_header_from_buffer;
    use std::net::TcpListener;

    /// A broker that speaks just enough Kafka for the handshake: ApiVersions up to
    /// `api_versions_max` (above it: UNSUPPORTED_VERSION in a v0 body, as Kafka does), listing
    /// `apis`, and Metadata with one broker (7 at broker-7.example:9092). Anything else: it hangs up.
    fn fake_broker(api_versions_max: i16, apis: Vec<(ApiKey, i16, i16)>) -> SocketAddr {
        fake_broker_answering(api_versions_max, apis, None)
    }

    /// [`fake_broker`], answering Metadata with `metadata_body` as is when given.
    fn fake_broker_answering(
        api_versions_max: i16,
        apis: Vec<(ApiKey, i16, i16)>,
        metadata_body: Option<Vec<u8>>,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                for _ in 0..16 {
                    let mut size = [0u8; 4];
                    if stream.read_exact(&mut size).is_err() {
                        break;
                    }
                    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
                    if stream.read_exact(&mut frame).is_err() {
                        break;
                    }
                    let header =
                        decode_request_header_from_buffer(&mut Bytes::from(frame)).unwrap();
                    let api = ApiKey::try_from(header.request_api_key).unwrap();
                    let version = header.request_api_version;
                    let mut body = BytesMut::new();
                    match api {
                        ApiKey::ApiVersions => {
                            let mut response = ApiVersionsResponse::default();
                            response.api_keys = apis
                                .iter()
                                .map(|(key, min, max)| {
                                    ApiVersion::default()
                                        .with_api_key(*key as i16)
                                        .with_min_version(*min)
                                        .with_max_version(*max)
                                })
                                .collect();
                            let answer_version = if version > api_versions_max {
                                response.error_code = UNSUPPORTED_VERSION;
                                0
                            } else {
                                version
                            };
                            response.encode(&mut body, answer_version).unwrap();
                        }
                        ApiKey::Metadata if metadata_body.is_some() => {
                            body.extend_from_slice(metadata_body.as_deref().unwrap_or_default());
                        }
                        ApiKey::Metadata => {
                            let mut broker = MetadataResponseBroker::default();
                            broker.node_id = BrokerId(7);
                            broker.host = StrBytes::from_static_str("broker-7.example");
                            broker.port = 9092;
                            let mut response = MetadataResponse::default();
                            response.brokers = vec![broker];
                            response.controller_id = BrokerId(7);
                            response.encode(&mut body, version).unwrap();
                        }
                        _ => break,
                    }
                    let mut response_header = ResponseHeader::default();
                    response_header.correlation_id = header.correlation_id;
                    let mut out = BytesMut::new();
                    response_header
                        .encode(&mut out, api.response_header_version(version))
                        .unwrap();
                    out.extend_from_slice(&body);
                    let mut framed = (out.len() as i32).to_be_bytes().to_vec();
                    framed.extend_from_slice(&out);
                    if stream.write_all(&framed).is_err() {
                        break;
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn an_older_broker_refusing_our_api_versions_version_is_asked_in_its_own() {
        let addr = fake_broker(
            2,
            vec![(ApiKey::ApiVersions, 0, 2), (ApiKey::Metadata, 0, 8)],
        );
        let mut connection = KafkaConnection::connect(addr, Duration::from_secs(5)).unwrap();
        assert!(connection.supports(ApiKey::Metadata));
        assert_eq!(connection.negotiated_version(ApiKey::Metadata).unwrap(), 8);
        let metadata = connection.metadata().unwrap();
        assert_eq!(metadata.brokers[0].endpoint(), "broker-7.example:9092");
        assert_eq!(metadata.controller_id, Some(7));
    }

    #[test]
    fn requests_the_broker_does_not_list_fall_back_or_say_unsupported() {
        let addr = fake_broker(
            3,
            vec![(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 0, 20)],
        );
        let mut connection = KafkaConnection::connect(addr, Duration::from_secs(5)).unwrap();
        // The broker knows newer Metadata than kreach: the highest both speak.
        assert_eq!(
            connection.negotiated_version(ApiKey::Metadata).unwrap(),
            ApiKey::Metadata.valid_versions().max
        );
        assert_eq!(connection.metadata().unwrap().brokers.len(), 1);
        let min_isr = connection
            .min_insync_replicas(&["orders".to_string()])
            .unwrap();
        assert_eq!(min_isr.get("orders"), 1);
        assert!(
            min_isr.notes[0].contains(&addr.to_string())
                && min_isr.notes[0].contains("does not support DescribeConfigs")
                && min_isr.notes[0].contains("default min.insync.replicas=1"),
            "{:?}",
            min_isr.notes
        );
        let error = connection.quorum_leader().unwrap_err();
        assert!(
            matches!(
                error,
                ProbeError::Unsupported {
                    api: ApiKey::DescribeQuorum,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_metadata_answer_claiming_billions_of_brokers_is_refused_not_allocated() {
        // Metadata v12 (flexible): throttle time, then a varint count of 2^32 - 2 brokers in a
        // frame of a few dozen bytes. Decoded unchecked, the crate would reserve that many.
        let mut body = 0i32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        body.extend_from_slice(&[0; 32]);
        let addr = fake_broker_answering(
            3,
            vec![(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 12, 12)],
            Some(body),
        );
        let mut connection = KafkaConnection::connect(addr, Duration::from_secs(5)).unwrap();
        let error = connection.metadata().unwrap_err();
        assert!(
            matches!(
                error,
                ProbeError::Protocol {
                    api: ApiKey::Metadata,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains(
                "the Metadata v12 response claims 4294967294 brokers in 32 bytes (each takes at least 11)"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_truncated_metadata_answer_is_refused() {
        // Metadata v8: throttle time, one broker, then the frame ends inside its 20-byte host.
        let mut body = 0i32.to_be_bytes().to_vec();
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&20i16.to_be_bytes());
        body.extend_from_slice(b"broker-7");
        let addr = fake_broker_answering(
            3,
            vec![(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 0, 8)],
            Some(body),
        );
        let mut connection = KafkaConnection::connect(addr, Duration::from_secs(5)).unwrap();
        let error = connection.metadata().unwrap_err();
        assert!(matches!(error, ProbeError::Protocol { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("the Metadata v8 response claims a 20-byte broker host in 8 bytes"),
            "{error}"
        );
    }

    #[test]
    fn versions_are_the_highest_both_sides_speak() {
        let ours = VersionRange { min: 0, max: 13 };
        assert_eq!(pick_version(ours, 0, 12), Some(12));
        assert_eq!(pick_version(ours, 3, 20), Some(13));
        assert_eq!(pick_version(ours, 14, 20), None);
        let describe_configs = ApiKey::DescribeConfigs.valid_versions();
        assert_eq!(
            pick_version(describe_configs, 0, 0),
            None,
            "v0 is gone from kreach's side"
        );
    }
}
