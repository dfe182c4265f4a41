//! Mutual-TLS material for kreach, and the identity a certificate carries.
//!
//! Owns: creating the kreach certificate authority and the certificates issued from it (the
//! coordinator's server certificate, the operator's admin certificate, one client certificate per
//! node), writing them to disk with safe modes, loading PEM files for tonic, checking that a
//! certificate was issued by a CA, and reading the [`PeerIdentity`] out of a peer certificate.
//!
//! Does not own: the TLS handshake itself (tonic/rustls do that, with the CA from
//! [`load_tls_files`]), nor deciding what an identity may do (that is the coordinator's
//! authorization, which matches on [`PeerIdentity`]). Unlike the rest of this crate, the
//! `init_certs`/`issue_node_cert`/`load_tls_files` shell does file I/O; everything else is pure.
//!
//! Identities are carried as a SAN URI (`kreach://node/<name>`, `kreach://admin`,
//! `kreach://coordinator`), never inferred from the CN, so a node called `admin` or
//! `coordinator` cannot pass for either. The CN repeats it for humans reading `openssl x509`.
//! Extended key usages split the roles too: only the coordinator's certificate is valid for
//! server authentication, only node and admin certificates for client authentication, so rustls
//! refuses a node certificate used as a server certificate (and the reverse) at the handshake.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// The CN of the operator's certificate (`kreachctl`), for humans; the identity itself is the SAN
/// URI [`ADMIN_URI`].
pub const ADMIN_IDENTITY: &str = "kreach-admin";
/// The CN of the coordinator's certificate, for humans; the identity is [`COORDINATOR_URI`].
pub const COORDINATOR_IDENTITY: &str = "kreach-coordinator";
/// SAN URI of the admin certificate.
pub const ADMIN_URI: &str = "kreach://admin";
/// SAN URI of the coordinator certificate.
pub const COORDINATOR_URI: &str = "kreach://coordinator";
/// Prefix of a node certificate's SAN URI; the node name follows.
pub const NODE_URI_PREFIX: &str = "kreach://node/";
const KREACH_URI_SCHEME: &str = "kreach://";

/// File names inside the certificate directory, relative to it.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const COORDINATOR_CERT_FILE: &str = "coordinator.pem";
pub const COORDINATOR_KEY_FILE: &str = "coordinator.key";
pub const ADMIN_CERT_FILE: &str = "admin.pem";
pub const ADMIN_KEY_FILE: &str = "admin.key";
pub const NODES_DIR: &str = "nodes";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
/// Directories we create hold private keys, so only their owner may list them.
const DIR_MODE: u32 = 0o700;
/// Certificates start an hour in the past so that a peer whose clock is a little behind accepts
/// a certificate issued a moment ago.
const BACKDATE: Duration = Duration::hours(1);

/// Who a peer certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    Node(String),
    Admin,
    Coordinator,
}

impl PeerIdentity {
    /// The SAN URI that encodes this identity in a certificate.
    pub fn uri(&self) -> String {
        match self {
            PeerIdentity::Node(node) => format!("{NODE_URI_PREFIX}{node}"),
            PeerIdentity::Admin => ADMIN_URI.to_string(),
            PeerIdentity::Coordinator => COORDINATOR_URI.to_string(),
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Node(node) => write!(f, "node {node}"),
            PeerIdentity::Admin => f.write_str("admin"),
            PeerIdentity::Coordinator => f.write_str("coordinator"),
        }
    }
}

/// What went wrong with TLS material; every message says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{node:?} is not a valid node name (letters, digits, '-', '_', '.'); use the node's name \
         from the cluster spec"
    )]
    InvalidNodeName { node: String },
    #[error("node {node:?} is listed twice; list each node once")]
    DuplicateNode { node: String },
    #[error(
        "no coordinator name given: list the DNS names and/or IP addresses agents and kreachctl \
         use to reach the coordinator (e.g. \"localhost\", \"127.0.0.1\")"
    )]
    NoCoordinatorNames,
    #[error("{name:?} is not a DNS name or IP address for the coordinator certificate: {reason}")]
    InvalidCoordinatorName { name: String, reason: String },
    #[error("a certificate must be valid for at least 1 day (got {days})")]
    InvalidValidity { days: u32 },
    #[error(
        "refusing to overwrite {}; choose an empty directory, or pass --force to replace them \
         (replacing the CA invalidates every certificate already handed out)",
        display_paths(paths)
    )]
    AlreadyExists { paths: Vec<PathBuf> },
    #[error(
        "the CA in {ca} expires at {ca_not_after} (in {max_days} days), so a certificate valid for \
         {requested_days} days cannot be issued from it; ask for at most {max_days} days, or \
         create a new CA with `kreachctl certs init`"
    )]
    ValidityBeyondCa {
        ca: PathBuf,
        ca_not_after: String,
        requested_days: u32,
        max_days: i64,
    },
    // The io error is part of each message, so it is not also chained as a source (that printed
    // it twice in `anyhow` chains).
    #[error("cannot read {path}: {cause}; check that the file exists and this user may read it")]
    Read { path: PathBuf, cause: io::Error },
    #[error("cannot write {path}: {cause}; check that the directory is writable and has space")]
    Write { path: PathBuf, cause: io::Error },
    #[error("cannot create directory {path}: {cause}")]
    CreateDir { path: PathBuf, cause: io::Error },
    #[error("{path} holds no PEM {expected} block; point at the right file (kreachctl certs init writes them)")]
    NoPem {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} is not a valid X.509 certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{path} is not a usable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "the private key {key} does not belong to the certificate {cert}; they come from \
         different runs of `kreachctl certs`: use the .key written next to that .pem"
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("cannot create the {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error(
        "the certificate of {subject} carries no kreach identity (a SAN URI kreach://node/<name>, \
         kreach://admin or kreach://coordinator); use a certificate issued by `kreachctl certs`"
    )]
    NoIdentity { subject: String },
    #[error(
        "the certificate of {subject} carries several kreach identities ({}); a certificate must \
         name exactly one: reissue it with `kreachctl certs`",
        uris.join(", ")
    )]
    AmbiguousIdentity { subject: String, uris: Vec<String> },
    #[error(
        "the certificate of {subject} carries an unknown kreach identity {uri:?} (expected \
         kreach://node/<name>, kreach://admin or kreach://coordinator); reissue it with \
         `kreachctl certs`"
    )]
    UnknownIdentity { subject: String, uri: String },
    #[error(
        "the certificate of {subject} was not issued by the CA {ca_subject}: {reason}; use \
         certificates from the same `kreachctl certs init` as the CA"
    )]
    NotSignedBy {
        subject: String,
        ca_subject: String,
        reason: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// PEM bytes for tonic: `Identity::from_pem(cert_pem, key_pem)` and `Certificate::from_pem(ca_pem)`.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_pem", &String::from_utf8_lossy(&self.ca_pem))
            .field("cert_pem", &String::from_utf8_lossy(&self.cert_pem))
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// A node name as the cluster spec allows it: letters, digits, '-', '_', '.'.
pub fn validate_node_name(node: &str) -> Result<(), TlsError> {
    if kreach_domain::spec::is_valid_node_name(node) {
        Ok(())
    } else {
        Err(TlsError::InvalidNodeName {
            node: node.to_string(),
        })
    }
}

/// Where `issue_node_cert` and `init_certs` put a node's certificate and key.
pub fn node_cert_paths(dir: &Path, node: &str) -> (PathBuf, PathBuf) {
    let nodes = dir.join(NODES_DIR);
    (
        nodes.join(format!("{node}.pem")),
        nodes.join(format!("{node}.key")),
    )
}

/// One file to write: rendered completely before anything touches the disk.
struct PlannedFile {
    path: PathBuf,
    contents: Vec<u8>,
    mode: u32,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert_pem: String,
    key_pem: String,
}

fn generation_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |source| TlsError::Generate { what, source }
}

/// The validity `kreachctl certs init` and `certs issue` give by default.
pub const DEFAULT_VALID_DAYS: u32 = 825;

fn validity_days(days: u32) -> Result<Duration, TlsError> {
    if days == 0 {
        return Err(TlsError::InvalidValidity { days });
    }
    Ok(Duration::days(i64::from(days)))
}

fn distinguished_name(common_name: &str, unit: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "kreach");
    name.push(DnType::OrganizationalUnitName, unit);
    name.push(DnType::CommonName, common_name);
    name
}

fn uri_san(uri: String) -> Result<SanType, TlsError> {
    let ia5 = uri
        .clone()
        .try_into()
        .map_err(generation_error(format!("SAN URI {uri}")))?;
    Ok(SanType::URI(ia5))
}

fn coordinator_sans(names: &[String]) -> Result<Vec<SanType>, TlsError> {
    if names.is_empty() {
        return Err(TlsError::NoCoordinatorNames);
    }
    let mut sans = Vec::with_capacity(names.len() + 1);
    for name in names {
        let invalid = |reason: &str| TlsError::InvalidCoordinatorName {
            name: name.clone(),
            reason: reason.to_string(),
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            sans.push(SanType::IpAddress(ip));
            continue;
        }
        let dns_ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !dns_ok {
            return Err(invalid(
                "a DNS name is dot-separated labels of letters, digits and '-'",
            ));
        }
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|_| invalid("not an ASCII name"))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.push(uri_san(COORDINATOR_URI.to_string())?);
    Ok(sans)
}

/// The CA: self-signed, may sign leaves only (path length 0).
fn ca_params(now: OffsetDateTime, days: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("kreach CA", "ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + days;
    params
}

fn leaf_params(
    identity: &PeerIdentity,
    coordinator_names: &[String],
    now: OffsetDateTime,
    days: Duration,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let (common_name, unit, eku) = match identity {
        PeerIdentity::Node(node) => (node.as_str(), "node", ExtendedKeyUsagePurpose::ClientAuth),
        PeerIdentity::Admin => (ADMIN_IDENTITY, "admin", ExtendedKeyUsagePurpose::ClientAuth),
        PeerIdentity::Coordinator => (
            COORDINATOR_IDENTITY,
            "coordinator",
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
    };
    params.distinguished_name = distinguished_name(common_name, unit);
    params.subject_alt_names = match identity {
        PeerIdentity::Coordinator => coordinator_sans(coordinator_names)?,
        _ => vec![uri_san(identity.uri())?],
    };
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + days;
    Ok(params)
}

fn issue(
    identity: &PeerIdentity,
    coordinator_names: &[String],
    now: OffsetDateTime,
    days: Duration,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Issued, TlsError> {
    let what = format!("{identity} certificate");
    let key = KeyPair::generate().map_err(generation_error(format!("{identity} key")))?;
    let cert = leaf_params(identity, coordinator_names, now, days)?
        .signed_by(&key, issuer)
        .map_err(generation_error(what))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn plan_pair(files: &mut Vec<PlannedFile>, cert: PathBuf, key: PathBuf, issued: Issued) {
    files.push(PlannedFile {
        path: key,
        contents: issued.key_pem.into_bytes(),
        mode: KEY_MODE,
    });
    files.push(PlannedFile {
        path: cert,
        contents: issued.cert_pem.into_bytes(),
        mode: CERT_MODE,
    });
}

fn check_nodes(nodes: &[String]) -> Result<(), TlsError> {
    let mut seen = std::collections::BTreeSet::new();
    for node in nodes {
        validate_node_name(node)?;
        if !seen.insert(node.as_str()) {
            return Err(TlsError::DuplicateNode { node: node.clone() });
        }
    }
    Ok(())
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), TlsError> {
    if force {
        return Ok(());
    }
    let existing: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.to_path_buf())
        .collect();
    if existing.is_empty() {
        Ok(())
    } else {
        Err(TlsError::AlreadyExists { paths: existing })
    }
}

/// `kreachctl certs init`: create in `dir`: `ca.pem` + `ca.key` (the CA), `coordinator.pem`/`.key`
/// (server certificate, SANs = `coordinator_names`: DNS names and/or IPs), `admin.pem`/`.key`, and
/// for each node `nodes/<node>.pem` + `nodes/<node>.key`. Returns the files written.
///
/// Keys are written 0600 and certificates 0644; a directory this creates is 0700. Without `force`,
/// nothing is written if any of these files already exists. All keys are generated here and only
/// ever written to `dir`: hand each host its own `.pem`/`.key` and keep `ca.key` on this machine.
pub fn init_certs(
    dir: &Path,
    coordinator_names: &[String],
    nodes: &[String],
    valid_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    let days = validity_days(valid_days)?;
    check_nodes(nodes)?;
    coordinator_sans(coordinator_names)?;

    let mut targets: Vec<PathBuf> = [
        CA_CERT_FILE,
        CA_KEY_FILE,
        COORDINATOR_CERT_FILE,
        COORDINATOR_KEY_FILE,
        ADMIN_CERT_FILE,
        ADMIN_KEY_FILE,
    ]
    .iter()
    .map(|name| dir.join(name))
    .collect();
    for node in nodes {
        let (cert, key) = node_cert_paths(dir, node);
        targets.extend([cert, key]);
    }
    refuse_existing(
        &targets.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        force,
    )?;

    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(generation_error("CA key"))?;
    let ca_params = ca_params(now, days);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generation_error("CA certificate"))?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut files = Vec::new();
    plan_pair(
        &mut files,
        dir.join(CA_CERT_FILE),
        dir.join(CA_KEY_FILE),
        Issued {
            cert_pem: ca_cert_pem,
            key_pem: ca_key_pem,
        },
    );
    let leaves = [
        (
            PeerIdentity::Coordinator,
            COORDINATOR_CERT_FILE,
            COORDINATOR_KEY_FILE,
        ),
        (PeerIdentity::Admin, ADMIN_CERT_FILE, ADMIN_KEY_FILE),
    ];
    for (identity, cert, key) in leaves {
        let issued = issue(&identity, coordinator_names, now, days, &issuer)?;
        plan_pair(&mut files, dir.join(cert), dir.join(key), issued);
    }
    for node in nodes {
        let issued = issue(&PeerIdentity::Node(node.clone()), &[], now, days, &issuer)?;
        let (cert, key) = node_cert_paths(dir, node);
        plan_pair(&mut files, cert, key, issued);
    }
    write_all(dir, files, force)
}

/// Issue one more node certificate (`nodes/<node>.pem` + `.key`) from the CA already in `dir`
/// (`ca.pem` + `ca.key`), for a node added after `init_certs`. Refuses to overwrite unless `force`,
/// and refuses a validity that outlives the CA. `valid_days` `None`: [`DEFAULT_VALID_DAYS`], or
/// until the CA expires when that is sooner (a CA made with the same default always is).
pub fn issue_node_cert(
    dir: &Path,
    node: &str,
    valid_days: Option<u32>,
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    let requested_days = valid_days.unwrap_or(DEFAULT_VALID_DAYS);
    let mut days = validity_days(requested_days)?;
    validate_node_name(node)?;
    let (cert_path, key_path) = node_cert_paths(dir, node);
    refuse_existing(&[&cert_path, &key_path], force)?;

    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_pem = read(&ca_cert_path)?;
    let ca_key_pem = read(&ca_key_path)?;
    let ca_der = first_pem(&ca_cert_path, &ca_pem, "CERTIFICATE", |label| {
        label == "CERTIFICATE"
    })?;
    let ca = parse_cert(&ca_der, &ca_cert_path.display().to_string())?;
    let ca_key = parse_key(&ca_key_path, &ca_key_pem)?;
    if ca_key.public_key_raw() != &ca.public_key().subject_public_key.data[..] {
        return Err(TlsError::KeyMismatch {
            key: ca_key_path,
            cert: ca_cert_path,
        });
    }

    let now = OffsetDateTime::now_utc();
    let ca_not_after = ca.validity().not_after.timestamp();
    let ca_left_seconds = ca_not_after - now.unix_timestamp();
    if valid_days.is_none() && ca_left_seconds > 0 {
        days = days.min(Duration::seconds(ca_left_seconds));
    }
    if (now + days).unix_timestamp() > ca_not_after {
        return Err(TlsError::ValidityBeyondCa {
            ca: ca_cert_path,
            ca_not_after: ca.validity().not_after.to_string(),
            requested_days,
            max_days: (ca_left_seconds / 86_400).max(0),
        });
    }

    let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key).map_err(|e| {
        TlsError::BadCertificate {
            what: ca_cert_path.display().to_string(),
            reason: format!("cannot issue from it: {e}"),
        }
    })?;
    let issued = issue(
        &PeerIdentity::Node(node.to_string()),
        &[],
        now,
        days,
        &issuer,
    )?;
    let mut files = Vec::new();
    plan_pair(&mut files, cert_path, key_path, issued);
    write_all(dir, files, force)
}

/// The identity a certificate (DER) carries: exactly one `kreach://` SAN URI.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let cert = parse_cert(cert_der, "the peer certificate")?;
    let subject = cert.subject().to_string();
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate {
            what: format!("the certificate of {subject}"),
            reason: format!("unreadable subject alternative names: {e}"),
        })?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(KREACH_URI_SCHEME) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(TlsError::NoIdentity { subject }),
        [uri] => *uri,
        _ => {
            return Err(TlsError::AmbiguousIdentity {
                subject,
                uris: uris.iter().map(|u| u.to_string()).collect(),
            })
        }
    };
    let unknown = || TlsError::UnknownIdentity {
        subject: subject.clone(),
        uri: uri.to_string(),
    };
    if uri == ADMIN_URI {
        Ok(PeerIdentity::Admin)
    } else if uri == COORDINATOR_URI {
        Ok(PeerIdentity::Coordinator)
    } else if let Some(node) = uri.strip_prefix(NODE_URI_PREFIX) {
        validate_node_name(node).map_err(|_| unknown())?;
        Ok(PeerIdentity::Node(node.to_string()))
    } else {
        Err(unknown())
    }
}

/// Check that `cert_der` was issued by the CA in `ca_pem` (issuer name and signature). This is not
/// a full path validation (no validity period or usage checks): rustls does that at the handshake.
pub fn verify_signed_by(cert_der: &[u8], ca_pem: &[u8]) -> Result<(), TlsError> {
    let ca_der = first_pem(Path::new("the CA PEM"), ca_pem, "CERTIFICATE", |label| {
        label == "CERTIFICATE"
    })?;
    let ca = parse_cert(&ca_der, "the CA certificate")?;
    let cert = parse_cert(cert_der, "the certificate")?;
    let not_signed = |reason: &str| TlsError::NotSignedBy {
        subject: cert.subject().to_string(),
        ca_subject: ca.subject().to_string(),
        reason: reason.to_string(),
    };
    if !ca.is_ca() {
        return Err(not_signed("that certificate is not a CA"));
    }
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(not_signed(&format!("its issuer is {}", cert.issuer())));
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| not_signed(&format!("the signature does not verify ({e})")))
}

/// An error and its sources on one line ("transport error: connection error: received fatal
/// alert: CertificateRequired"): tonic hides the TLS cause in the sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `message` followed by the causes in `source` that it does not already say: a gRPC status's
/// message is only "transport error", its TLS cause sits in the sources.
pub fn with_causes(message: &str, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    match source.map(error_chain) {
        Some(chain) if !message.contains(&chain) => format!("{message}: {chain}"),
        _ => message.to_string(),
    }
}

/// `text` with what its TLS alert means appended, if it carries one [`handshake_hint`] knows.
pub fn explain_transport(text: String) -> String {
    match handshake_hint(&text) {
        Some(hint) => format!("{text}; {hint}"),
        None => text,
    }
}

/// What a TLS alert from the coordinator means for the client that got it, in an operator's
/// words; `None` when `error_text` carries no alert this knows. The coordinator logs the same
/// refusal from its side ("TLS handshake refused: ...").
pub fn handshake_hint(error_text: &str) -> Option<&'static str> {
    let alert = error_text.split("received fatal alert: ").nth(1)?;
    let alert = alert.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    Some(match alert {
        "CertificateRequired" => "the coordinator requires a client certificate and got none: give this client the certificate and key from `kreachctl certs init`",
        "UnknownCA" | "DecryptError" | "BadCertificate" => "the coordinator refused this client's certificate: it was not issued by the coordinator's CA (use the files `kreachctl certs init` made for this coordinator)",
        "UnsupportedCertificate" => "the coordinator refused this certificate as a client certificate: use a node's certificate (agents) or the admin one (kreachctl)",
        "CertificateExpired" => "the coordinator refused this client's certificate: it has expired (`kreachctl certs issue` makes a new one)",
        "CertificateRevoked" | "AccessDenied" => "the coordinator refused this client's certificate",
        _ => return None,
    })
}

/// Load the PEM files tonic needs: the CA (`ca`), and one identity's certificate and key. Checks
/// that each holds what it should, that the key belongs to the certificate, and that the
/// certificate was issued by the CA, so a mix-up is reported here, naming the file, rather than as
/// an anonymous handshake failure later.
pub fn load_tls_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsFiles, TlsError> {
    let ca_pem = read(ca)?;
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;

    let ca_der = first_pem(ca, &ca_pem, "CERTIFICATE", |label| label == "CERTIFICATE")?;
    parse_cert(&ca_der, &ca.display().to_string())?;
    let cert_der = first_pem(cert, &cert_pem, "CERTIFICATE", |label| {
        label == "CERTIFICATE"
    })?;
    let parsed = parse_cert(&cert_der, &cert.display().to_string())?;
    first_pem(key, &key_pem, "PRIVATE KEY", |label| {
        label.ends_with("PRIVATE KEY")
    })?;
    // rcgen reads the key types kreach generates; a key it cannot read (say, PKCS#1 RSA from
    // another tool) is left for rustls to judge rather than rejected here.
    if let Ok(key_pair) = std::str::from_utf8(&key_pem)
        .map_err(|_| ())
        .and_then(|pem| KeyPair::from_pem(pem).map_err(|_| ()))
    {
        if key_pair.public_key_raw() != &parsed.public_key().subject_public_key.data[..] {
            return Err(TlsError::KeyMismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            });
        }
    }
    verify_signed_by(&cert_der, &ca_pem).map_err(|e| match e {
        TlsError::NotSignedBy {
            subject,
            ca_subject,
            reason,
        } => TlsError::NotSignedBy {
            subject: format!("{subject} ({})", cert.display()),
            ca_subject: format!("{ca_subject} ({})", ca.display()),
            reason,
        },
        other => other,
    })?;
    Ok(TlsFiles {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|cause| TlsError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

/// The DER contents of the first PEM block whose label `wanted` accepts.
fn first_pem(
    path: &Path,
    pem: &[u8],
    expected: &'static str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<u8>, TlsError> {
    Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .find(|block| wanted(&block.label))
        .map(|block| block.contents)
        .ok_or_else(|| TlsError::NoPem {
            path: path.to_path_buf(),
            expected,
        })
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(TlsError::BadCertificate {
            what: what.to_string(),
            reason: "trailing bytes after the certificate".to_string(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            what: what.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<KeyPair, TlsError> {
    let bad = |reason: String| TlsError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(pem).map_err(|_| bad("not PEM text".to_string()))?;
    KeyPair::from_pem(text).map_err(|e| bad(e.to_string()))
}

fn create_dir(path: &Path) -> Result<(), TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|cause| TlsError::CreateDir {
            path: path.to_path_buf(),
            cause,
        })
}

/// Write every planned file. Each goes to a fresh temporary file beside its target, created with
/// its final mode (a key is never readable by others, not even briefly), synced, then moved into
/// place: with `force` by rename (replacing), without by hard link, which fails rather than
/// replaces if the target appeared since we checked.
/// Write a new CA's certificate (0644) and key (0600) into `dir` (made 0700 if missing), the way
/// `certs init` writes its files: atomically, synced, and refusing to replace an existing file.
pub fn write_new_ca(
    dir: &Path,
    cert_name: &str,
    cert_pem: &str,
    key_name: &str,
    key_pem: &str,
) -> Result<Vec<PathBuf>, TlsError> {
    let files = vec![
        PlannedFile {
            path: dir.join(key_name),
            contents: key_pem.as_bytes().to_vec(),
            mode: KEY_MODE,
        },
        PlannedFile {
            path: dir.join(cert_name),
            contents: cert_pem.as_bytes().to_vec(),
            mode: CERT_MODE,
        },
    ];
    write_all(dir, files, false)
}

fn write_all(dir: &Path, files: Vec<PlannedFile>, force: bool) -> Result<Vec<PathBuf>, TlsError> {
    create_dir(dir)?;
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        if let Some(parent) = file.path.parent() {
            create_dir(parent)?;
        }
        write_file(&file, force)?;
        written.push(file.path);
    }
    Ok(written)
}

fn write_file(file: &PlannedFile, force: bool) -> Result<(), TlsError> {
    let write_error = |cause| TlsError::Write {
        path: file.path.clone(),
        cause,
    };
    let name = file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = file
        .path
        .with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&temporary)?;
        // The umask may have narrowed the mode; certificates must still be world-readable.
        out.set_permissions(fs::Permissions::from_mode(file.mode))?;
        out.write_all(&file.contents)?;
        out.sync_all()?;
        if force {
            fs::rename(&temporary, &file.path)
        } else {
            fs::hard_link(&temporary, &file.path)?;
            fs::remove_file(&temporary)
        }
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&temporary);
        if source.kind() == io::ErrorKind::AlreadyExists && !force {
            return Err(TlsError::AlreadyExists {
                paths: vec![file.path.clone()],
            });
        }
        return Err(write_error(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn alerts_from_the_coordinator_read_as_their_cause() {
        let hint = |text| super::handshake_hint(text).unwrap_or("");
        assert!(hint(
            "transport error: connection error: received fatal alert: CertificateRequired"
        )
        .contains("requires a client certificate"));
        assert!(hint("connection error: received fatal alert: DecryptError")
            .contains("not issued by the coordinator's CA"));
        assert!(hint("received fatal alert: UnsupportedCertificate")
            .contains("as a client certificate"));
        assert_eq!(super::handshake_hint("connection refused"), None);
    }

    use super::*;

    fn test_issuer() -> (Issuer<'static, KeyPair>, String) {
        let now = OffsetDateTime::now_utc();
        let params = ca_params(now, Duration::days(10));
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (Issuer::new(params, key), pem)
    }

    fn der_of(pem: &str) -> Vec<u8> {
        first_pem(Path::new("test"), pem.as_bytes(), "CERTIFICATE", |l| {
            l == "CERTIFICATE"
        })
        .unwrap()
    }

    #[test]
    fn node_names_follow_the_spec_rules() {
        for good in ["a", "broker-1", "kafka_2.example.com", "N0DE"] {
            validate_node_name(good).unwrap();
        }
        for bad in ["", "a b", "a/b", "../etc", "ünï", "a:b", "node\n"] {
            let err = validate_node_name(bad).unwrap_err();
            assert!(matches!(err, TlsError::InvalidNodeName { .. }), "{bad:?}");
            assert!(err.to_string().contains("letters, digits"), "{err}");
        }
    }

    #[test]
    fn each_identity_round_trips_through_a_certificate() {
        let (issuer, ca_pem) = test_issuer();
        let now = OffsetDateTime::now_utc();
        for identity in [
            PeerIdentity::Node("a".to_string()),
            PeerIdentity::Admin,
            PeerIdentity::Coordinator,
        ] {
            let names = ["localhost".to_string(), "127.0.0.1".to_string()];
            let issued = issue(&identity, &names, now, Duration::days(1), &issuer).unwrap();
            let der = der_of(&issued.cert_pem);
            assert_eq!(peer_identity(&der).unwrap(), identity);
            verify_signed_by(&der, ca_pem.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_node_named_admin_is_still_a_node() {
        let (issuer, _) = test_issuer();
        let now = OffsetDateTime::now_utc();
        for name in ["admin", "coordinator", ADMIN_IDENTITY] {
            let identity = PeerIdentity::Node(name.to_string());
            let issued = issue(&identity, &[], now, Duration::days(1), &issuer).unwrap();
            assert_eq!(peer_identity(&der_of(&issued.cert_pem)).unwrap(), identity);
        }
    }

    fn cert_with_sans(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(ADMIN_IDENTITY, "admin");
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.to_string().try_into().unwrap())
    }

    #[test]
    fn a_cn_alone_is_no_identity() {
        let der = cert_with_sans(vec![SanType::DnsName("localhost".try_into().unwrap())]);
        let err = peer_identity(&der).unwrap_err();
        assert!(matches!(err, TlsError::NoIdentity { .. }), "{err}");
        assert!(err.to_string().contains("kreach-admin"), "{err}");
    }

    #[test]
    fn two_identities_or_unknown_ones_are_refused() {
        let der = cert_with_sans(vec![uri("kreach://node/a"), uri("kreach://admin")]);
        assert!(matches!(
            peer_identity(&der).unwrap_err(),
            TlsError::AmbiguousIdentity { .. }
        ));
        for text in ["kreach://root", "kreach://node/", "kreach://node/a/b"] {
            let der = cert_with_sans(vec![uri(text)]);
            let err = peer_identity(&der).unwrap_err();
            assert!(
                matches!(err, TlsError::UnknownIdentity { .. }),
                "{text}: {err}"
            );
        }
        // Other URIs (e.g. SPIFFE) are not ours and do not count.
        let der = cert_with_sans(vec![uri("spiffe://x/admin"), uri("kreach://admin")]);
        assert_eq!(peer_identity(&der).unwrap(), PeerIdentity::Admin);
    }

    #[test]
    fn garbage_is_a_bad_certificate() {
        let err = peer_identity(b"not a certificate").unwrap_err();
        assert!(matches!(err, TlsError::BadCertificate { .. }), "{err}");
    }

    #[test]
    fn coordinator_names_are_checked() {
        assert!(matches!(
            coordinator_sans(&[]).unwrap_err(),
            TlsError::NoCoordinatorNames
        ));
        for bad in ["", "has space", "-lead.example", "a..b"] {
            let err = coordinator_sans(&[bad.to_string()]).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidCoordinatorName { .. }),
                "{bad:?}: {err}"
            );
        }
        let sans = coordinator_sans(&["coord.example".to_string(), "::1".to_string()]).unwrap();
        assert_eq!(sans.len(), 3);
    }

    #[test]
    fn the_key_is_never_debug_printed() {
        let files = TlsFiles {
            ca_pem: b"ca".to_vec(),
            cert_pem: b"cert".to_vec(),
            key_pem: b"SECRET".to_vec(),
        };
        assert!(!format!("{files:?}").contains("SECRET"));
    }
}
