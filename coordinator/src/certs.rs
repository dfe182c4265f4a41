//! The coordinator as the issuer of Kafka's TLS certificates (issue 13): the Kafka CA it keeps (or
//! the operator's CA files the spec names), and each broker's certificate per TLS listener, issued
//! for the public key the broker's agent reported and covering what that listener advertises.
//!
//! A certificate is reused from what the broker holds while it is for the same key, covers the same
//! names and is not yet due for renewal (`[tls] renew_before`), so planning the same spec twice
//! changes nothing. One issued for a plan is kept in memory for the apply that follows, so the plan
//! shows the certificate the apply releases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use kreach_domain::desired::{certificate_sans, ListenerCertificate, NodeRole, NodeSpec};
use kreach_domain::spec::{ClusterSpec, TlsIssuer, View};
use kreach_runtime::kafka_tls::{inspect, same_public_key, unix_ms, KafkaCa};

/// Where the Kafka CA kreach creates lives, under the coordinator's state directory.
pub const KAFKA_CA_DIR: &str = "kafka-ca";

/// Issued for a plan, not yet applied: (node, listener, SANs, public key) → certificate.
type PendingKey = (String, String, Vec<String>, String);

pub struct Issuer {
    state_dir: PathBuf,
    /// A shared (etcd) store keeps kreach's Kafka CA, so every coordinator that leads issues from
    /// the same CA; None: it is kept in `state_dir/kafka-ca`.
    shared: Option<std::sync::Arc<crate::store::Store>>,
    pending: Mutex<BTreeMap<PendingKey, ListenerCertificate>>,
}

/// What attaching certificates found that keeps a plan from being applied as is.
#[derive(Debug, Default)]
pub struct Attached {
    /// Brokers that cannot get a certificate (no key reported): warnings, which refuse an apply
    /// without `--force`.
    pub warnings: Vec<String>,
}

impl Issuer {
    pub fn new(state_dir: &Path) -> Issuer {
        Issuer::with_store(state_dir, None)
    }

    /// An issuer that keeps kreach's Kafka CA in `shared` (a store of several coordinators).
    pub fn with_store(
        state_dir: &Path,
        shared: Option<std::sync::Arc<crate::store::Store>>,
    ) -> Issuer {
        Issuer {
            shared,
            state_dir: state_dir.to_path_buf(),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// The Kafka CA for `spec`: the operator's files, or kreach's own (made on first use, its key
    /// 0600 in the state directory).
    fn ca(&self, spec: &ClusterSpec, now: SystemTime) -> Result<KafkaCa, String> {
        match &spec.tls.issuer {
            TlsIssuer::Files { ca_cert, ca_key } => {
                let read = |path: &Path| {
                    std::fs::read_to_string(path).map_err(|error| {
                        format!(
                            "tls.ca_cert/ca_key: cannot read {}: {error}",
                            path.display()
                        )
                    })
                };
                KafkaCa::from_pem(&read(ca_cert)?, &read(ca_key)?).map_err(|error| {
                    format!(
                        "tls: the CA in {} and {}: {error}",
                        ca_cert.display(),
                        ca_key.display()
                    )
                })
            }
            TlsIssuer::Kreach if self.shared.is_some() => {
                let store = self.shared.as_ref().expect("shared");
                if let Some(stored) = store.kafka_ca().map_err(|e| format!("the Kafka CA: {e}"))? {
                    return KafkaCa::from_pem(&stored.cert_pem, &stored.key_pem).map_err(|error| {
                        format!("the Kafka CA in {}: {error}", store.path().display())
                    });
                }
                let ca = KafkaCa::create(&spec.name, now)
                    .map_err(|error| format!("the Kafka CA: {error}"))?;
                store
                    .save_kafka_ca(&crate::store::StoredCa {
                        cert_pem: ca.cert_pem.clone(),
                        key_pem: ca.key_pem.clone(),
                    })
                    .map_err(|e| format!("the Kafka CA: {e}"))?;
                tracing::info!(store = %store.path().display(), cluster = %spec.name, "created the Kafka CA");
                Ok(ca)
            }
            TlsIssuer::Kreach => {
                let dir = self.state_dir.join(KAFKA_CA_DIR);
                let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
                if cert_path.exists() || key_path.exists() {
                    let read = |path: &Path| {
                        std::fs::read_to_string(path).map_err(|error| {
                            format!("the Kafka CA: cannot read {}: {error}", path.display())
                        })
                    };
                    return KafkaCa::from_pem(&read(&cert_path)?, &read(&key_path)?)
                        .map_err(|error| format!("the Kafka CA in {}: {error}", dir.display()));
                }
                let ca = KafkaCa::create(&spec.name, now)
                    .map_err(|error| format!("the Kafka CA: {error}"))?;
                kreach_runtime::tls::write_new_ca(
                    &dir,
                    "ca.pem",
                    &ca.cert_pem,
                    "ca.key",
                    &ca.key_pem,
                )
                .map_err(|error| format!("the Kafka CA: {error}"))?;
                tracing::info!(dir = %dir.display(), cluster = %spec.name, "created the Kafka CA");
                Ok(ca)
            }
        }
    }

    /// Give every broker's TLS listener its certificate and every node of a TLS cluster the CA.
    /// `current` is what the nodes hold (certificates to reuse); `public_keys` the brokers' keys
    /// as their agents reported them; `now` the coordinator's clock (validity starts there, and
    /// certificates within `renew_before` of their end are renewed).
    pub fn attach(
        &self,
        spec: &ClusterSpec,
        current: &BTreeMap<String, NodeSpec>,
        public_keys: &BTreeMap<String, String>,
        desired: &mut [NodeSpec],
        now: SystemTime,
    ) -> Result<Attached, String> {
        let mut attached = Attached::default();
        let internal_tls = spec.view_uses_tls(View::Private);
        let external_tls = spec.view_uses_tls(View::Public);
        if !internal_tls && !external_tls {
            return Ok(attached);
        }
        let ca = self.ca(spec, now)?;
        for node in desired.iter_mut() {
            match node.role {
                NodeRole::Client { view } => {
                    let tls = match view {
                        View::Private => internal_tls,
                        View::Public => external_tls,
                    };
                    if tls {
                        node.kafka_ca_pem = ca.cert_pem.clone();
                    }
                    continue;
                }
                NodeRole::Broker { id } => {
                    node.kafka_ca_pem = ca.cert_pem.clone();
                    let Some(broker) = spec.brokers.iter().find(|b| b.id == id) else {
                        continue;
                    };
                    let Some(public_key) = public_keys.get(&node.node).filter(|k| !k.is_empty())
                    else {
                        attached.warnings.push(format!(
                            "broker {id} (node {:?}): no TLS key reported, so it cannot get a certificate for its TLS listener (its agent never connected, or is older than this coordinator); its release would be refused",
                            node.node
                        ));
                        continue;
                    };
                    let mut listeners = Vec::new();
                    if internal_tls {
                        listeners.push((spec.internal.name.clone(), false));
                    }
                    if external_tls {
                        listeners.push((spec.external.name.clone(), true));
                    }
                    for (listener, external) in listeners {
                        let sans = certificate_sans(broker, external);
                        let held = current.get(&node.node).and_then(|have| {
                            have.certificates.iter().find(|c| c.listener == listener)
                        });
                        let certificate = match held.filter(|held| {
                            reusable(held, &sans, public_key, now, spec.tls.renew_before)
                        }) {
                            Some(held) => held.clone(),
                            None => self.issue(
                                &ca,
                                (&node.node, id, &listener),
                                &sans,
                                public_key,
                                now,
                                (spec.tls.lifetime, spec.tls.renew_before),
                            )?,
                        };
                        node.certificates.push(certificate);
                    }
                }
            }
        }
        Ok(attached)
    }

    /// A new certificate for (node, broker id, listener), or the one issued for the same names
    /// and key by a plan moments ago while it is not yet due itself.
    fn issue(
        &self,
        ca: &KafkaCa,
        (node, broker_id, listener): (&str, i32, &str),
        sans: &[String],
        public_key: &str,
        now: SystemTime,
        (lifetime, renew_before): (Duration, Duration),
    ) -> Result<ListenerCertificate, String> {
        let key = (
            node.to_string(),
            listener.to_string(),
            sans.to_vec(),
            public_key.to_string(),
        );
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(issued) = pending.get(&key) {
            if issued.not_after_ms > unix_ms(now + renew_before)
                && issued.chain_pem.ends_with(&ca.cert_pem)
            {
                return Ok(issued.clone());
            }
        }
        let issued = ca
            .issue(
                &format!("kafka broker {broker_id} {listener}"),
                public_key,
                sans,
                now,
                lifetime,
            )
            .map_err(|error| format!("broker {broker_id} (node {node:?}) {listener}: {error}"))?;
        let certificate = ListenerCertificate {
            listener: listener.to_string(),
            chain_pem: issued.chain_pem,
            sans: issued.sans,
            serial: issued.serial,
            not_after_ms: issued.not_after_ms,
        };
        tracing::info!(node, listener, serial = %certificate.serial, sans = ?certificate.sans, "issued a Kafka certificate");
        pending.insert(key, certificate.clone());
        Ok(certificate)
    }
}

/// Whether the certificate a broker holds still serves: its key, the same names, not due.
fn reusable(
    held: &ListenerCertificate,
    sans: &[String],
    public_key: &str,
    now: SystemTime,
    renew_before: Duration,
) -> bool {
    let due = unix_ms(now + renew_before) >= held.not_after_ms;
    let same_key = inspect(&held.chain_pem)
        .map(|info| same_public_key(public_key, &info.public_key_der))
        .unwrap_or(false);
    held.sans == sans && same_key && !due
}

/// Every TLS listener's advertised host must be among its certificate's SANs; a message per gap.
pub fn uncovered(desired: &[NodeSpec]) -> Vec<String> {
    let mut problems = Vec::new();
    for node in desired {
        let Some(settings) = &node.listeners else {
            continue;
        };
        for listener in &settings.listeners {
            if listener.tls.is_none() {
                continue;
            }
            let Some(cert) = node
                .certificates
                .iter()
                .find(|c| c.listener.eq_ignore_ascii_case(&listener.name))
            else {
                continue;
            };
            let host = listener
                .advertised_host
                .trim_start_matches('[')
                .trim_end_matches(']');
            if !cert.sans.iter().any(|san| san.eq_ignore_ascii_case(host)) {
                problems.push(format!(
                    "{} {}: the certificate (serial {}) does not cover {host}, which the listener advertises (it covers {})",
                    node.node,
                    listener.name,
                    cert.serial,
                    cert.sans.join(", ")
                ));
            }
        }
    }
    problems
}
