//! A small etcd v3 client: KV reads and writes, transactions, compaction and leases, over gRPC.
//!
//! Owns: the trimmed etcd protos (`proto/`, etcd's own package, message names and field numbers)
//! and their generated client code, checked in under `src/generated/`; a [`Client`] that fails
//! over between the members of a cluster; the conversion to and from etcd's messages
//! ([`convert`]). Does not own: leader election or fencing policy (the coordinator builds those
//! from [`Txn`]s on the leader key's create revision), watches, auth, cluster maintenance.
//!
//! Why not the `etcd-client` crate: it compiles etcd's protos in its build script, so every build
//! needs `protoc`, and kreach builds without it (generated code is checked in, and a test,
//! `tests/generated_is_fresh.rs`, regenerates it with a vendored `protoc` and fails when stale).
//! It also leaves failover to the caller: its balanced channel returns `Unavailable` for a dead
//! member instead of trying the next.
//!
//! # Failover and retries
//! Every call tries the member that last answered first, then the others in configured order, and
//! moves on when the transport fails, the member answers `Unavailable` ("etcdserver: no leader",
//! "etcdserver: leader changed") or does not answer within [`Config::timeout`]. Any other status
//! is etcd's verdict and is returned as [`Error::Rejected`] at once.
//!
//! A write that timed out or lost its connection may still have been applied, and is then sent
//! again to the next member: **write transactions must be idempotent and fenced** (compare the
//! leader key's create revision, or a key's mod revision), so that applying one twice changes
//! nothing the second time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub mod convert;

/// etcd's generated messages and gRPC clients (package `etcdserverpb` and `mvccpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod generated {
    pub mod mvccpb {
        include!("generated/mvccpb.rs");
    }
    pub mod etcdserverpb {
        include!("generated/etcdserverpb.rs");
    }
}

pub use convert::prefix_end;

use generated::etcdserverpb as pb;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;

/// How many keys one page of [`Client::get_prefix`] asks for first. Halved (down to 1) when a
/// page is over the gRPC message limit, so big values are read in smaller pages.
pub const PAGE_KEYS: i64 = 512;

/// The gRPC metadata that makes a member without a leader refuse a request at once
/// (`Unavailable`, "etcdserver: no leader") rather than hold it until it times out.
const REQUIRE_LEADER_KEY: &str = "hasleader";

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// The members' client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Required for `https://` endpoints, refused with `http://` ones.
    pub tls: Option<Tls>,
    /// The connect timeout, and the time each attempt of a call may take on one member.
    pub timeout: Duration,
    /// Ask members to refuse requests while they have no leader (see [`REQUIRE_LEADER_KEY`]).
    /// Leave it off on a client that must still read (serializably) from a member that lost quorum.
    pub require_leader: bool,
}

/// TLS to the members: the CA that signed their certificates, and optionally a client identity.
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    /// The name to verify in the members' certificates; default: the endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Tls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &self.cert_pem.as_ref().map(Vec::len))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("domain", &self.domain)
            .finish()
    }
}

/// One key as etcd stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of the key's last creation; a delete and re-create changes it, which is what
    /// makes it a fencing token for a leader key.
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// A condition of a [`Txn`]; all must hold for its `then` branch. A missing key has create and
/// mod revision 0, so `CreateRevision { equals: 0 }` means "the key does not exist".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    CreateRevision { key: Vec<u8>, equals: i64 },
    ModRevision { key: Vec<u8>, equals: i64 },
    Value { key: Vec<u8>, equals: Vec<u8> },
}

/// One operation of a [`Txn`] branch. etcd refuses a txn that writes one key twice, and (by
/// default) one of more than 128 operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `lease` 0: no lease.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
    DeletePrefix {
        prefix: Vec<u8>,
    },
    /// Every key in `[from, to)`.
    DeleteRange {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Read one key; its result is in [`TxnResult::gets`].
    Get {
        key: Vec<u8>,
    },
}

/// An etcd transaction: if every `when` holds, `then`, otherwise `otherwise`, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<Compare>,
    pub then: Vec<Op>,
    pub otherwise: Vec<Op>,
}

/// What a [`Txn`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (so `then` ran, not `otherwise`).
    pub succeeded: bool,
    /// The store's revision after the txn (the write's own revision if the branch wrote).
    pub revision: i64,
    /// One entry per `Get` of the branch taken, in order: the key, or nothing if it is absent.
    pub gets: Vec<Vec<KeyValue>>,
}

/// Why a call failed.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// No member answered: each was unreachable, had no leader, or timed out.
    #[error("no etcd member answered: {last_error}; check that the members run and have quorum, and (with https) that each side trusts the other's certificate")]
    Unavailable {
        endpoints: Vec<String>,
        /// Each member's own failure, `URL: why`, joined with `; `.
        last_error: String,
    },
    /// etcd answered and refused the request, e.g. "etcdserver: too many operations in txn
    /// request", "etcdserver: request is too large", "mvcc: required revision has been compacted".
    #[error("etcd refused the request ({code:?}): {message}")]
    Rejected { code: tonic::Code, message: String },
    /// Every member tried took longer than the timeout; the request may still have been applied.
    #[error("no etcd member answered within {timeout:?} (tried {})", endpoints.join(", "))]
    Timeout {
        endpoints: Vec<String>,
        timeout: Duration,
    },
    /// The configuration cannot work (what is wrong and where is in the text).
    #[error("etcd client configuration: {0}")]
    Config(String),
    /// etcd answered with something this client does not understand.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
}

/// A client of one etcd cluster. Cheap to clone; clones share connections and the memory of
/// which member answered last.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    members: Vec<Member>,
    timeout: Duration,
    require_leader: bool,
    /// The member that answered last: tried first.
    preferred: AtomicUsize,
}

struct Member {
    endpoint: Endpoint,
    /// Made on first use: tonic's lazy channel spawns its worker on the current runtime, and
    /// [`Client::new`] must work outside one.
    channel: OnceLock<Channel>,
}

impl Member {
    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

/// How one attempt on one member ended, when it did not succeed.
enum Attempt {
    /// Try the next member.
    Failover(String),
    TimedOut,
    /// etcd's verdict: stop.
    Rejected(tonic::Status),
}

fn classify(status: tonic::Status) -> Attempt {
    use std::error::Error as _;
    // A status built here from an I/O or HTTP/2 error carries that error as its source; one that
    // came from etcd over the wire never does.
    if status.code() == tonic::Code::Unavailable || status.source().is_some() {
        Attempt::Failover(format!("{:?}: {}", status.code(), status.message()))
    } else {
        Attempt::Rejected(status)
    }
}

impl Client {
    /// A client for `config.endpoints`. Does no I/O: members are connected on first use. Every
    /// endpoint URL and the TLS material are checked here, and a problem is an [`Error::Config`]
    /// naming it.
    pub fn new(config: Config) -> Result<Client, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no endpoints".into()));
        }
        if config.timeout.is_zero() {
            return Err(Error::Config("the timeout is zero".into()));
        }
        let tls = config.tls.as_ref().map(tls_config).transpose()?;
        let members = config
            .endpoints
            .iter()
            .map(|url| member(url, tls.as_ref(), config.timeout))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: config.endpoints,
                members,
                timeout: config.timeout,
                require_leader: config.require_leader,
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// The configured endpoints, in configured order.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// One key (linearizable read), or `None` when it does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        self.get_one(key, false).await
    }

    /// [`Client::get`] answered by any member from its local store (see
    /// [`Client::get_prefix_serializable`]): it may be stale.
    pub async fn get_serializable(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        self.get_one(key, true).await
    }

    async fn get_one(&self, key: &[u8], serializable: bool) -> Result<Option<KeyValue>, Error> {
        let request = convert::range_request(key, Vec::new(), serializable);
        let response = self
            .call(|channel| {
                let request = self.request(request.clone());
                async move { KvClient::new(channel).range(request).await }
            })
            .await?;
        Ok(response.kvs.into_iter().next().map(KeyValue::from))
    }

    /// Every key under `prefix`, sorted by key, and the revision they were read at. Linearizable.
    /// Read in pages (see [`PAGE_KEYS`]), all at the first page's revision, so the result is one
    /// consistent snapshot however many keys there are.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), Error> {
        self.range_pages(prefix, false).await
    }

    /// [`Client::get_prefix`] answered by any member from its local store, even one without
    /// quorum or leader: it may be stale. Use a client with `require_leader: false` for it, or a
    /// member without a leader refuses it.
    pub async fn get_prefix_serializable(
        &self,
        prefix: &[u8],
    ) -> Result<(Vec<KeyValue>, i64), Error> {
        self.range_pages(prefix, true).await
    }

    /// Write one key (with `lease`, or 0 for none); returns the write's revision.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, Error> {
        let request = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        };
        let response = self
            .call(|channel| {
                let request = self.request(request.clone());
                async move { KvClient::new(channel).put(request).await }
            })
            .await?;
        Ok(convert::header_revision(response.header))
    }

    /// Run a transaction. See the crate docs: a txn retried after a timeout or a lost connection
    /// may apply twice, so write transactions must be fenced and idempotent.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, Error> {
        let request = convert::txn_request(txn);
        let response = self
            .call(|channel| {
                let request = self.request(request.clone());
                async move { KvClient::new(channel).txn(request).await }
            })
            .await?;
        convert::txn_result(response)
    }

    /// Drop every superseded key version below `revision`; returns once the compaction is
    /// applied (`physical`). Reading below `revision` afterwards is [`Error::Rejected`]
    /// ("mvcc: required revision has been compacted").
    pub async fn compact(&self, revision: i64) -> Result<(), Error> {
        let request = pb::CompactionRequest {
            revision,
            physical: true,
        };
        self.call(|channel| {
            let request = self.request(request);
            async move { KvClient::new(channel).compact(request).await }
        })
        .await?;
        Ok(())
    }

    /// A new lease of about `ttl_secs`; returns its id and the TTL etcd granted.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<(i64, i64), Error> {
        let request = pb::LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        };
        let response = self
            .call(|channel| {
                let request = self.request(request);
                async move { LeaseClient::new(channel).lease_grant(request).await }
            })
            .await?;
        if !response.error.is_empty() {
            return Err(Error::Rejected {
                code: tonic::Code::Unknown,
                message: response.error,
            });
        }
        Ok((response.id, response.ttl))
    }

    /// Renew lease `id` once (one request and its answer on a `LeaseKeepAlive` stream); returns
    /// the remaining TTL in seconds, `<= 0` when the lease has expired or was revoked.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, Error> {
        let response = self
            .call(|channel| {
                let request = self.request(tokio_stream::once(pb::LeaseKeepAliveRequest { id }));
                async move {
                    let mut answers = LeaseClient::new(channel)
                        .lease_keep_alive(request)
                        .await?
                        .into_inner();
                    let answer = answers.message().await?.ok_or_else(|| {
                        tonic::Status::unavailable(
                            "the LeaseKeepAlive stream ended without an answer",
                        )
                    })?;
                    Ok(tonic::Response::new(answer))
                }
            })
            .await?;
        Ok(response.ttl)
    }

    /// End lease `id` now, deleting every key attached to it.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let request = pb::LeaseRevokeRequest { id };
        self.call(|channel| {
            let request = self.request(request);
            async move { LeaseClient::new(channel).lease_revoke(request).await }
        })
        .await?;
        Ok(())
    }

    async fn range_pages(
        &self,
        prefix: &[u8],
        serializable: bool,
    ) -> Result<(Vec<KeyValue>, i64), Error> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut limit = PAGE_KEYS;
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut request = convert::range_request(&from, end.clone(), serializable);
            request.limit = limit;
            request.revision = revision;
            let response = match self
                .call(|channel| {
                    let request = self.request(request.clone());
                    async move { KvClient::new(channel).range(request).await }
                })
                .await
            {
                Err(Error::Rejected { message, .. })
                    if limit > 1 && message.contains("message length too large") =>
                {
                    limit /= 2;
                    tracing::debug!(limit, "etcd range page over the message limit; halving it");
                    continue;
                }
                other => other?,
            };
            if revision == 0 {
                revision = convert::header_revision(response.header);
            }
            let more = response.more;
            kvs.extend(response.kvs.into_iter().map(KeyValue::from));
            match kvs.last() {
                Some(last) if more => from = convert::key_after(&last.key),
                _ => return Ok((kvs, revision)),
            }
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if self.inner.require_leader {
            request.metadata_mut().insert(
                REQUIRE_LEADER_KEY,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        request
    }

    /// Run one RPC on the members in turn (see the crate docs on failover).
    async fn call<T, F, Fut>(&self, mut rpc: F) -> Result<T, Error>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &self.inner;
        let count = inner.members.len();
        let first = inner.preferred.load(Ordering::Relaxed) % count;
        let mut tried = Vec::with_capacity(count);
        let mut last_error = None;
        let mut reasons = Vec::with_capacity(count);
        for index in (0..count).map(|offset| (first + offset) % count) {
            let endpoint = &inner.endpoints[index];
            tried.push(endpoint.clone());
            let attempt = match tokio::time::timeout(
                inner.timeout,
                rpc(inner.members[index].channel()),
            )
            .await
            {
                Ok(Ok(response)) => {
                    if index != first {
                        tracing::info!(endpoint, "etcd: now using this member");
                    }
                    inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => classify(status),
                Err(_elapsed) => Attempt::TimedOut,
            };
            match attempt {
                Attempt::Rejected(status) => {
                    return Err(Error::Rejected {
                        code: status.code(),
                        message: status.message().to_string(),
                    })
                }
                Attempt::Failover(error) => {
                    // Debug only: a caller that retries (a campaign, a lease renewal) would
                    // repeat it several times a second; the error it gets names every member.
                    tracing::debug!(endpoint, %error, "etcd member failed; trying the next");
                    reasons.push(format!("{endpoint}: {error}"));
                    last_error = Some(error);
                }
                Attempt::TimedOut => {
                    tracing::debug!(endpoint, timeout = ?inner.timeout, "etcd member did not answer in time; trying the next");
                    reasons.push(format!("{endpoint}: no answer within {:?}", inner.timeout));
                }
            }
        }
        Err(match last_error {
            Some(_) => Error::Unavailable {
                endpoints: tried,
                last_error: reasons.join("; "),
            },
            None => Error::Timeout {
                endpoints: tried,
                timeout: inner.timeout,
            },
        })
    }
}

fn member(url: &str, tls: Option<&ClientTlsConfig>, timeout: Duration) -> Result<Member, Error> {
    let bad = |why: String| Error::Config(format!("endpoint {url:?}: {why}"));
    let https = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(bad("must start with http:// or https://".into()));
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|error| bad(format!("not a URL: {error}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    match (https, tls) {
        (true, Some(tls)) => {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| bad(format!("TLS: {error}")))?
        }
        (true, None) => return Err(bad("https needs the tls settings".into())),
        (false, Some(_)) => {
            return Err(bad(
                "http with tls settings; use https:// for a TLS endpoint".into(),
            ))
        }
        (false, None) => {}
    }
    Ok(Member {
        endpoint,
        channel: OnceLock::new(),
    })
}

fn tls_config(tls: &Tls) -> Result<ClientTlsConfig, Error> {
    // tonic skips PEM it cannot read rather than failing, so check for the blocks here: a wrong
    // file must fail now, not as an unexplained handshake error later.
    let has_block = |pem: &[u8], label: &str| {
        String::from_utf8_lossy(pem).contains(&format!("-----BEGIN {label}"))
    };
    if !has_block(&tls.ca_pem, "CERTIFICATE-----") {
        return Err(Error::Config(
            "tls.ca_pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
    match (&tls.cert_pem, &tls.key_pem) {
        (Some(cert), Some(key)) => {
            if !has_block(cert, "CERTIFICATE-----") {
                return Err(Error::Config(
                    "tls.cert_pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
            let key_text = String::from_utf8_lossy(key);
            if !(key_text.contains("-----BEGIN ") && key_text.contains("PRIVATE KEY-----")) {
                return Err(Error::Config(
                    "tls.key_pem holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)".into(),
                ));
            }
            config = config.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(Error::Config(
                "tls.cert_pem and tls.key_pem go together: set both for a client certificate, or neither".into(),
            ))
        }
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoints: &[&str], tls: Option<Tls>) -> Config {
        Config {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            tls,
            timeout: Duration::from_secs(1),
            require_leader: true,
        }
    }

    fn config_error(config: Config) -> String {
        match Client::new(config) {
            Err(Error::Config(message)) => message,
            Err(other) => panic!("expected a Config error, got {other}"),
            Ok(_) => panic!("expected a Config error, got a client"),
        }
    }

    const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_client_is_made_without_io_or_a_runtime() {
        let client = Client::new(config(&["http://127.0.0.1:1", "http://127.0.0.1:2"], None))
            .expect("valid config");
        assert_eq!(
            client.endpoints(),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
    }

    #[test]
    fn bad_endpoints_are_named() {
        let message = config_error(config(&["http://127.0.0.1:1", "127.0.0.1:2379"], None));
        assert!(message.contains("\"127.0.0.1:2379\""), "{message}");
        assert!(message.contains("http://"), "{message}");
        let message = config_error(config(&["https://127.0.0.1:1"], None));
        assert!(message.contains("https needs the tls"), "{message}");
        assert!(config_error(config(&[], None)).contains("no endpoints"));
    }

    #[test]
    fn http_with_tls_settings_is_refused() {
        let tls = Tls {
            ca_pem: CA.to_vec(),
            cert_pem: None,
            key_pem: None,
            domain: None,
        };
        let message = config_error(config(&["http://127.0.0.1:1"], Some(tls)));
        assert!(message.contains("http with tls"), "{message}");
    }

    #[test]
    fn tls_files_with_the_wrong_content_are_named() {
        let tls = |ca: &[u8], cert: Option<&[u8]>, key: Option<&[u8]>| Tls {
            ca_pem: ca.to_vec(),
            cert_pem: cert.map(<[u8]>::to_vec),
            key_pem: key.map(<[u8]>::to_vec),
            domain: None,
        };
        let endpoints = &["https://127.0.0.1:1"];
        let message = config_error(config(endpoints, Some(tls(b"not a pem", None, None))));
        assert!(message.contains("tls.ca_pem"), "{message}");
        let message = config_error(config(endpoints, Some(tls(CA, Some(CA), None))));
        assert!(message.contains("go together"), "{message}");
        let message = config_error(config(endpoints, Some(tls(CA, Some(CA), Some(CA)))));
        assert!(message.contains("tls.key_pem"), "{message}");
    }

    #[test]
    fn only_unavailable_or_local_transport_errors_move_to_the_next_member() {
        assert!(matches!(
            classify(tonic::Status::unavailable("etcdserver: no leader")),
            Attempt::Failover(_)
        ));
        let io = std::io::Error::other("connection closed");
        assert!(matches!(
            classify(tonic::Status::from_error(Box::new(io))),
            Attempt::Failover(_)
        ));
        assert!(matches!(
            classify(tonic::Status::invalid_argument(
                "etcdserver: too many operations in txn request"
            )),
            Attempt::Rejected(_)
        ));
    }
}
