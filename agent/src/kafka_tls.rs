//! The broker's side of Kafka TLS: the private key the agent generates and keeps (it never leaves
//! this host: only its public key is reported, and the coordinator issues certificates for it),
//! and the PEM files Kafka's TLS listeners read — one key store per TLS listener (the key, then
//! the certificate chain) and the CA bundle — under `[manage] kafka_tls_dir`.
//!
//! Owns: the key file, and turning a release's certificates into file contents and the listener
//! settings' paths into this host's. Does not own: writing the key stores (the engine does, with
//! its backups, audit and rollback) or issuing certificates (the coordinator).

use std::path::PathBuf;

use kreach_domain::desired::{NodeRole, NodeSpec, KAFKA_TLS_DIR};
use kreach_domain::properties::ListenerSettings;

use crate::config::AgentConfig;
use crate::fsio;

/// The private key's file name in the agent's `state_dir` (the agent's own, 0600; Kafka reads the
/// key stores made from it, never this file).
pub const KEY_FILE: &str = "kafka-tls.key";
/// The CA bundle's file name in `kafka_tls_dir`.
pub const CA_FILE: &str = "ca.pem";

#[derive(Debug, thiserror::Error)]
pub enum KafkaTlsFileError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] fsio::FsError),
    #[error("{path} is not a private key kreach can use: {reason}; move it away and the agent makes a new one")]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot generate Kafka's TLS key: {0}")]
    Generate(String),
}

/// `state_dir/kafka-tls.key`.
pub fn key_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(KEY_FILE)
}

/// The Kafka service user's uid and gid, when that user exists here.
pub fn kafka_owner(config: &AgentConfig) -> Option<(u32, u32)> {
    let user = nix::unistd::User::from_name(&config.manage.kafka_user)
        .ok()
        .flatten()?;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// The private key for Kafka's TLS listeners: read, or made (0600, the agent's) when this broker
/// has none yet. Returns its public key (PEM), which is all that is reported.
pub fn ensure_key(config: &AgentConfig) -> Result<String, KafkaTlsFileError> {
    let path = key_path(config);
    if let Some(bytes) = fsio::read_file(&path)? {
        let text = String::from_utf8_lossy(&bytes);
        return kreach_runtime::kafka_tls::public_key_pem(&text).map_err(|error| {
            KafkaTlsFileError::BadKey {
                path: path.clone(),
                reason: error.to_string(),
            }
        });
    }
    fsio::create_dir(&config.state_dir, 0o700, None).map_err(|source| {
        KafkaTlsFileError::CreateDir {
            path: config.state_dir.clone(),
            source,
        }
    })?;
    let key = kreach_runtime::kafka_tls::new_private_key_pem()
        .map_err(|error| KafkaTlsFileError::Generate(error.to_string()))?;
    fsio::atomic_write_private(&path, key.as_bytes(), fsio::Private { owner: None })?;
    tracing::info!(file = %path.display(), "made the private key for Kafka's TLS listeners");
    kreach_runtime::kafka_tls::public_key_pem(&key)
        .map_err(|error| KafkaTlsFileError::Generate(error.to_string()))
}

/// The listener settings with the TLS files under this host's `kafka_tls_dir` (the spec names
/// them under [`KAFKA_TLS_DIR`]).
pub fn localize(settings: &ListenerSettings, config: &AgentConfig) -> ListenerSettings {
    let mut settings = settings.clone();
    let dir = config.manage.kafka_tls_dir.display().to_string();
    for listener in &mut settings.listeners {
        if let Some(tls) = &mut listener.tls {
            for path in [&mut tls.keystore, &mut tls.truststore] {
                if let Some(rest) = path.strip_prefix(KAFKA_TLS_DIR) {
                    *path = format!("{dir}{rest}");
                }
            }
        }
    }
    settings
}

/// Where a client host keeps the Kafka CA of `cluster`: `kafka_ca_dir/CLUSTER.pem`.
pub fn client_ca_path(config: &AgentConfig, cluster: &str) -> PathBuf {
    config.manage.kafka_ca_dir.join(format!("{cluster}.pem"))
}

/// A PEM file the release wants on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub path: PathBuf,
    pub content: String,
    /// A key store: holds the private key (0600, never shown or logged).
    pub private: bool,
    /// For the plan: what the file holds, without the key.
    pub summary: String,
}

/// The key store of every certificate in `spec` (private key + chain) and the CA bundle, at the
/// paths the localized listener settings name. Empty when the release has no certificates.
pub fn desired_files(
    spec: &NodeSpec,
    config: &AgentConfig,
) -> Result<Vec<TlsFile>, KafkaTlsFileError> {
    if let NodeRole::Client { .. } = spec.role {
        // A client of a TLS listener: the CA its Kafka clients trust, one file per cluster.
        if spec.kafka_ca_pem.is_empty() || spec.node != config.node {
            return Ok(Vec::new());
        }
        return Ok(vec![TlsFile {
            path: client_ca_path(config, &spec.cluster),
            content: spec.kafka_ca_pem.clone(),
            private: false,
            summary: format!(
                "the Kafka CA of cluster {} (point ssl.ca.location here)",
                spec.cluster
            ),
        }]);
    }
    // A broker: its listeners' key stores, once it has listener settings and certificates.
    let Some(settings) = &spec.listeners else {
        return Ok(Vec::new());
    };
    if spec.certificates.is_empty() {
        return Ok(Vec::new());
    }
    let settings = localize(settings, config);
    let key_path = key_path(config);
    let key = fsio::read_file(&key_path)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .ok_or_else(|| KafkaTlsFileError::BadKey {
            path: key_path.clone(),
            reason: "it does not exist (the agent makes it at start; restart the agent)".into(),
        })?;
    let mut files = Vec::new();
    let mut ca_path = None;
    for certificate in &spec.certificates {
        let Some(tls) = settings
            .listeners
            .iter()
            .find(|listener| listener.name.eq_ignore_ascii_case(&certificate.listener))
            .and_then(|listener| listener.tls.as_ref())
        else {
            continue;
        };
        let mut content = key.clone();
        if !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str(&certificate.chain_pem);
        files.push(TlsFile {
            path: PathBuf::from(&tls.keystore),
            content,
            private: true,
            summary: format!(
                "key store for {}: certificate serial {} for {}, valid until {} (private key not shown)",
                certificate.listener,
                certificate.serial,
                certificate.sans.join(", "),
                crate::audit::format_time(certificate.not_after_ms)
            ),
        });
        ca_path.get_or_insert_with(|| PathBuf::from(&tls.truststore));
    }
    if let Some(path) = ca_path {
        files.push(TlsFile {
            path,
            content: spec.kafka_ca_pem.clone(),
            private: false,
            summary: "the Kafka CA bundle".to_string(),
        });
    }
    Ok(files)
}
