//! The cluster spec: the operator-authored TOML of DESIGN.md, compiled into a validated value.
//!
//! Owns parsing and validation only. Compilation walks the raw TOML tree by hand instead of
//! deserializing with serde so that it can report **every** problem at once (a type error in one
//! broker does not hide an unknown key in another), each naming the field and the broker or client
//! it is about. What each node should look like is derived in [`crate::desired`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::{Table, Value};

/// A node name as the spec allows it, and certificates name nodes: letters, digits, '-', '_', '.'.
pub fn is_valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `bind = "private_ip"`: each broker binds the listener to its own private address instead of all
/// addresses (keeps INTERNAL off other interfaces; lets several brokers share one host in tests).
pub const BIND_PRIVATE_IP: &str = "private_ip";

/// Upper bound on a spec's size. A real spec is a few KiB; a bigger one is a mistake (or hostile).
pub const MAX_SPEC_BYTES: usize = 4 * 1024 * 1024;

/// Why a spec file gave no spec text.
#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("reading {}: {error}", path.display())]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{} is over {} MiB, the limit for a cluster spec (a real one is a few KiB); is this the right file?",
        path.display(),
        MAX_SPEC_BYTES / (1024 * 1024)
    )]
    TooBig { path: PathBuf },
    #[error("{} is not UTF-8 text (invalid byte at offset {offset}); a cluster spec is TOML", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
}

impl SpecFileError {
    /// The file was read but cannot be a spec: the commands exit as for any invalid spec (2). An
    /// unreadable file (missing, no permission) is not a verdict on the spec.
    pub fn is_invalid_spec(&self) -> bool {
        !matches!(self, SpecFileError::Unreadable { .. })
    }
}

/// Read a spec file, refusing (without reading it all) anything over [`MAX_SPEC_BYTES`] — a
/// mistyped path to a log, an image or `/dev/zero` gets a clear error, not an out-of-memory.
pub fn read_spec_file(path: &Path) -> Result<String, SpecFileError> {
    use std::io::Read;
    let unreadable = |error| SpecFileError::Unreadable {
        path: path.to_path_buf(),
        error,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(SpecFileError::TooBig {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|error| SpecFileError::NotUtf8 {
        path: path.to_path_buf(),
        offset: error.utf8_error().valid_up_to(),
    })
}

/// One problem found in a spec. `field` is a path such as `broker[2].private_ip`; `subject` names the
/// broker or client (`broker 3 (node "emr-worker-3")`) when the problem belongs to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub subject: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Some(subject) => write!(f, "{}: {}: {}", self.field, subject, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Every error found in a spec, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataMode {
    Kraft,
    Zookeeper,
}

/// What a listener puts into `advertised.listeners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Advertise {
    PrivateIp,
    PublicIp,
    Hostname,
}

/// Which broker addresses a client host resolves names to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    Private,
    Public,
}

impl View {
    /// `"private"` or `"public"`, as the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Private => "private",
            View::Public => "public",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpecConfig {
    pub enabled: bool,
    pub name: String,
    pub port: u16,
    pub bind: String,
    pub advertise: Advertise,
    pub security_protocol: String,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`; present exactly when the protocol is `SASL_*`.
    pub sasl_mechanism: Option<String>,
    pub allow: Vec<IpNet>,
}

impl ListenerSpecConfig {
    /// Whether clients reach this listener over TLS (`SSL` or `SASL_SSL`): the broker then needs a
    /// certificate for it.
    pub fn uses_tls(&self) -> bool {
        matches!(self.security_protocol.as_str(), "SSL" | "SASL_SSL")
    }
}

impl ClusterSpec {
    /// Whether a client of `view` reaches the brokers over TLS (and so needs the Kafka CA): the
    /// internal listener's protocol, or the external one's while public access is enabled.
    pub fn view_uses_tls(&self, view: View) -> bool {
        match view {
            View::Private => self.internal.uses_tls(),
            View::Public => self.external.enabled && self.external.uses_tls(),
        }
    }
}

/// `[tls]`: who signs the brokers' certificates for TLS listeners, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub issuer: TlsIssuer,
    /// How long an issued certificate is valid.
    pub lifetime: Duration,
    /// A certificate is renewed once less than this is left (default: a third of `lifetime`).
    pub renew_before: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsIssuer {
    /// A Kafka CA the coordinator creates and keeps, separate from kreach's control-plane CA.
    Kreach,
    /// The operator's CA: certificate and key files on the coordinator's host.
    Files {
        ca_cert: std::path::PathBuf,
        ca_key: std::path::PathBuf,
    },
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            issuer: TlsIssuer::Kreach,
            lifetime: DEFAULT_TLS_LIFETIME,
            renew_before: DEFAULT_TLS_LIFETIME / 3,
        }
    }
}

/// 365 days, as Strimzi's default cluster CA validity.
const DEFAULT_TLS_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The SASL mechanisms kreach configures (credentials by AlterUserScramCredentials).
pub const SASL_MECHANISMS: [&str; 2] = ["SCRAM-SHA-256", "SCRAM-SHA-512"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSpec {
    pub id: i32,
    pub node: String,
    pub hostname: Option<String>,
    pub private_ip: IpAddr,
    pub public_ip: Option<IpAddr>,
}

impl BrokerSpec {
    /// The short alias of the long hostname (`emr-worker-1` for `emr-worker-1.cluster-48742`).
    pub fn short_name(&self) -> Option<&str> {
        short_name_of(self.hostname.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub node: String,
    pub view: View,
}

/// `[[client_group]]`: every agent the selectors pick (all of those given must match) is a client
/// of `view`, without being listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientGroup {
    pub name: String,
    pub view: View,
    /// Every one of these must be among the agent's labels (agent.toml `labels`).
    pub labels: BTreeMap<String, String>,
    /// One of the host's addresses must be inside one of these.
    pub cidrs: Vec<IpNet>,
    /// A glob (`*`, `?`, `[a-z]`) the node name must match.
    pub nodes: Option<String>,
}

impl ClientGroup {
    /// Whether this group selects the agent of `node` with these labels and addresses.
    pub fn selects(
        &self,
        node: &str,
        labels: &BTreeMap<String, String>,
        addresses: &[std::net::IpAddr],
    ) -> bool {
        let labels_match = self
            .labels
            .iter()
            .all(|(name, value)| labels.get(name) == Some(value));
        let cidrs_match = self.cidrs.is_empty()
            || addresses
                .iter()
                .any(|ip| self.cidrs.iter().any(|net| net.contains(ip)));
        let nodes_match = self
            .nodes
            .as_deref()
            .is_none_or(|glob| glob::Pattern::new(glob).is_ok_and(|pattern| pattern.matches(node)));
        labels_match && cidrs_match && nodes_match
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    pub max_unavailable: u32,
    pub health_timeout: Duration,
    pub settle: Duration,
    /// How long a released step waits for an offline agent before the rollout pauses
    /// (`agent NODE offline for 60s`).
    pub agent_timeout: Duration,
}

/// Every key the spec knows, table by table (`""` is the top level; `broker` and `client` are the
/// `[[broker]]` and `[[client]]` entries). These are the very lists the compiler's "unknown key"
/// errors use, so a key missing here cannot be written in a spec; docs/spec.md's reference is
/// checked against them (coordinator/tests/spec_reference.rs).
pub const KNOWN_KEYS: &[(&str, &[&str])] = &[
    ("", ROOT_KEYS),
    ("cluster", CLUSTER_KEYS),
    ("listeners", LISTENERS_KEYS),
    ("listeners.internal", INTERNAL_LISTENER_KEYS),
    ("listeners.external", EXTERNAL_LISTENER_KEYS),
    ("broker", BROKER_KEYS),
    ("client", CLIENT_KEYS),
    ("client_group", CLIENT_GROUP_KEYS),
    ("rollout", ROLLOUT_KEYS),
    ("tls", TLS_KEYS),
];

const ROOT_KEYS: &[&str] = &[
    "cluster",
    "listeners",
    "broker",
    "client",
    "client_group",
    "rollout",
    "tls",
];
const CLUSTER_KEYS: &[&str] = &["name", "metadata"];
const LISTENERS_KEYS: &[&str] = &["internal", "external"];
const INTERNAL_LISTENER_KEYS: &[&str] = &[
    "name",
    "port",
    "bind",
    "advertise",
    "security_protocol",
    "sasl_mechanism",
];
const EXTERNAL_LISTENER_KEYS: &[&str] = &[
    "enabled",
    "name",
    "port",
    "bind",
    "advertise",
    "security_protocol",
    "sasl_mechanism",
    "allow",
];
const BROKER_KEYS: &[&str] = &["id", "node", "hostname", "private_ip", "public_ip"];
const CLIENT_KEYS: &[&str] = &["node", "view"];
const CLIENT_GROUP_KEYS: &[&str] = &["name", "view", "labels", "cidrs", "nodes"];
const TLS_KEYS: &[&str] = &["issuer", "ca_cert", "ca_key", "lifetime", "renew_before"];
const ROLLOUT_KEYS: &[&str] = &[
    "max_unavailable",
    "health_timeout",
    "settle",
    "agent_timeout",
];

/// A spec that passed validation. Only [`ClusterSpec::parse`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub metadata: MetadataMode,
    pub internal: ListenerSpecConfig,
    /// Present even when disabled: kreach still owns its name so it can remove the listener.
    pub external: ListenerSpecConfig,
    pub brokers: Vec<BrokerSpec>,
    pub clients: Vec<ClientSpec>,
    /// Clients that enrol themselves: any agent a group selects is a client of its view.
    pub client_groups: Vec<ClientGroup>,
    pub rollout: RolloutSpec,
    /// `[tls]`, defaults when absent; used when a listener's protocol is `SSL` or `SASL_SSL`.
    pub tls: TlsSpec,
}

impl ClusterSpec {
    /// Parse and validate a spec, returning every error found.
    pub fn parse(text: &str) -> Result<ClusterSpec, SpecErrors> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecErrors(vec![SpecError {
                field: "(spec)".into(),
                subject: None,
                message: format!(
                    "the spec is {} bytes, over the limit of {} bytes; a cluster spec is a few KiB",
                    text.len(),
                    MAX_SPEC_BYTES
                ),
            }]));
        }
        let table: Table = text.parse().map_err(|error: toml::de::Error| {
            SpecErrors(vec![SpecError {
                field: "(syntax)".into(),
                subject: None,
                // toml's own layout: the position, the line quoted with a caret under the
                // column, what was expected. Line breaks stay; other control characters the quoted
                // line may hold are escaped so they cannot rewrite the terminal.
                message: error.to_string().trim_end().chars().fold(
                    String::new(),
                    |mut message, c| {
                        if c == '\n' {
                            message.push(c);
                        } else {
                            push_escaping_control(&mut message, c);
                        }
                        message
                    },
                ),
            }])
        })?;
        let mut compiler = Compiler::default();
        let spec = compiler.compile(&table);
        if compiler.errors.is_empty() {
            Ok(spec.expect("a spec without errors compiles"))
        } else {
            Err(SpecErrors(compiler.errors))
        }
    }

    pub fn broker_by_node(&self, node: &str) -> Option<&BrokerSpec> {
        self.brokers.iter().find(|broker| broker.node == node)
    }

    pub fn client_by_node(&self, node: &str) -> Option<&ClientSpec> {
        self.clients.iter().find(|client| client.node == node)
    }

    /// Every node named in the spec, brokers first.
    pub fn nodes(&self) -> Vec<&str> {
        let brokers = self.brokers.iter().map(|broker| broker.node.as_str());
        brokers
            .chain(self.clients.iter().map(|client| client.node.as_str()))
            .collect()
    }
}

/// A config key written as a duration (`"30s"`, `"500ms"`, as [`parse_duration`] reads it), for
/// `#[serde(deserialize_with = ...)]` in the agent's and the coordinator's configs.
pub fn deserialize_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parse durations as operators write them: `500ms`, `10s`, `3m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration (write e.g. \"500ms\", \"10s\", \"3m\")")
    })?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        "d" => value.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "{text:?} has no known unit (use ms, s, m, h or d, e.g. \"180s\")"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A hostname as resolvers accept it and the hosts-file editor will write it: dot-separated labels
/// of letters, digits and inner hyphens, not ending in an all-numeric label. One rule with
/// [`crate::hosts::check_hostname`], so a spec that validates always renders.
pub fn is_valid_hostname(name: &str) -> bool {
    crate::hosts::check_hostname(name).is_ok() && name.parse::<IpAddr>().is_err()
}

/// Kafka listener names: upper-case letters, digits and underscores (Kafka upper-cases them anyway;
/// we require the canonical spelling so that what we write is what Kafka reports).
fn is_valid_listener_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

#[derive(Default)]
struct Compiler {
    errors: Vec<SpecError>,
}

/// Where a value sits, for messages: the field path and the broker/client it belongs to.
#[derive(Clone)]
struct Place {
    path: String,
    subject: Option<String>,
}

impl Place {
    fn root(path: &str) -> Place {
        Place {
            path: path.to_string(),
            subject: None,
        }
    }
    fn field(&self, key: &str) -> Place {
        let key = path_key(key);
        Place {
            path: if self.path.is_empty() {
                key.into_owned()
            } else {
                format!("{}.{}", self.path, key)
            },
            subject: self.subject.clone(),
        }
    }
}

/// A key as a field path shows it: bare when TOML allows it bare, else quoted and escaped as a
/// TOML basic string (`cluster."a\nb"`), so that an unknown key with a newline or another control
/// character in it names itself readably and cannot split its error over several lines.
fn path_key(key: &str) -> std::borrow::Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        return key.into();
    }
    let mut quoted = String::with_capacity(key.len() + 2);
    quoted.push('"');
    for c in key.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c => push_escaping_control(&mut quoted, c),
        }
    }
    quoted.push('"');
    quoted.into()
}

/// Push `c`, written as a TOML escape when it is a control character or a Unicode line or
/// paragraph separator (anything a terminal or a line-based reader might break a line at).
fn push_escaping_control(out: &mut String, c: char) {
    match c {
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
            out.push_str(&format!("\\u{:04X}", u32::from(c)))
        }
        c => out.push(c),
    }
}

impl Compiler {
    fn error(&mut self, place: &Place, message: impl Into<String>) {
        self.errors.push(SpecError {
            field: place.path.clone(),
            subject: place.subject.clone(),
            message: message.into(),
        });
    }

    fn unknown_keys(&mut self, table: &Table, place: &Place, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                let message = format!("unknown key (known keys here: {})", known.join(", "));
                self.error(&place.field(key), message);
            }
        }
    }

    fn table<'t>(&mut self, parent: &'t Table, key: &str, place: &Place) -> Option<&'t Table> {
        match parent.get(key) {
            None => None,
            Some(Value::Table(table)) => Some(table),
            Some(other) => {
                let message = format!("expected a table, found {}", other.type_str());
                self.error(&place.field(key), message);
                None
            }
        }
    }

    fn string(&mut self, table: &Table, key: &str, place: &Place) -> Option<String> {
        match table.get(key)? {
            Value::String(text) => Some(text.clone()),
            other => {
                let message = format!("expected a string, found {}", other.type_str());
                self.error(&place.field(key), message);
                None
            }
        }
    }

    fn required_string(&mut self, table: &Table, key: &str, place: &Place) -> Option<String> {
        if !table.contains_key(key) {
            self.error(&place.field(key), "missing (required)");
            return None;
        }
        self.string(table, key, place)
    }

    fn integer(&mut self, table: &Table, key: &str, place: &Place) -> Option<i64> {
        match table.get(key)? {
            Value::Integer(value) => Some(*value),
            other => {
                let message = format!("expected an integer, found {}", other.type_str());
                self.error(&place.field(key), message);
                None
            }
        }
    }

    fn boolean(&mut self, table: &Table, key: &str, place: &Place) -> Option<bool> {
        match table.get(key)? {
            Value::Boolean(value) => Some(*value),
            other => {
                let message = format!("expected true or false, found {}", other.type_str());
                self.error(&place.field(key), message);
                None
            }
        }
    }

    fn port(&mut self, table: &Table, key: &str, place: &Place, default: u16) -> Option<u16> {
        match self.integer(table, key, place) {
            None if table.contains_key(key) => None,
            None => Some(default),
            Some(value) => match u16::try_from(value) {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    self.error(
                        &place.field(key),
                        format!("{value} is not a port (1-65535)"),
                    );
                    None
                }
            },
        }
    }

    fn ip(&mut self, table: &Table, key: &str, place: &Place, required: bool) -> Option<IpAddr> {
        let text = if required {
            self.required_string(table, key, place)?
        } else {
            self.string(table, key, place)?
        };
        match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                let message = format!("{text:?} is not a valid IPv4 or IPv6 address");
                self.error(&place.field(key), message);
                None
            }
        }
    }

    fn duration(
        &mut self,
        table: &Table,
        key: &str,
        place: &Place,
        default: Duration,
    ) -> Option<Duration> {
        if !table.contains_key(key) {
            return Some(default);
        }
        let text = self.string(table, key, place)?;
        match parse_duration(&text) {
            Ok(duration) if !duration.is_zero() || key == "settle" => Some(duration),
            Ok(_) => {
                self.error(&place.field(key), "must be longer than zero");
                None
            }
            Err(message) => {
                self.error(&place.field(key), message);
                None
            }
        }
    }

    fn compile(&mut self, root: &Table) -> Option<ClusterSpec> {
        let top = Place::root("");
        self.unknown_keys(root, &top, ROOT_KEYS);

        let (name, metadata) = self.compile_cluster(root);
        let (internal, external) = self.compile_listeners(root);
        let brokers = self.compile_brokers(root);
        let clients = self.compile_clients(root);
        let client_groups = self.compile_client_groups(root, &external);
        let rollout = self.compile_rollout(root);
        let tls = self.compile_tls(root);

        self.check_listeners_together(&internal, &external);
        self.check_brokers_against_listeners(&brokers, &internal, &external);
        self.check_clients_against_listeners(&clients, &external);
        self.check_node_names(&brokers, &clients);

        Some(ClusterSpec {
            name: name?,
            metadata: metadata?,
            internal: internal.finish()?,
            external: external.finish()?,
            brokers: brokers
                .into_iter()
                .map(|broker| broker.finish())
                .collect::<Option<Vec<_>>>()?,
            clients: clients.into_iter().collect::<Option<Vec<_>>>()?,
            client_groups: client_groups?,
            rollout: rollout?,
            tls: tls?,
        })
    }

    fn compile_cluster(&mut self, root: &Table) -> (Option<String>, Option<MetadataMode>) {
        let place = Place::root("cluster");
        let Some(cluster) = self.table(root, "cluster", &Place::root("")) else {
            if !root.contains_key("cluster") {
                self.error(&place, "missing [cluster] table (it needs at least `name`)");
            }
            return (None, None);
        };
        self.unknown_keys(cluster, &place, CLUSTER_KEYS);
        let name = self
            .required_string(cluster, "name", &place)
            .and_then(|name| {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if valid {
                    Some(name)
                } else {
                    let message = format!(
                        "{name:?} is not a valid cluster name (letters, digits, '-', '_', '.')"
                    );
                    self.error(&place.field("name"), message);
                    None
                }
            });
        let metadata = match self.string(cluster, "metadata", &place).as_deref() {
            None if cluster.contains_key("metadata") => None,
            None | Some("kraft") => Some(MetadataMode::Kraft),
            Some("zookeeper") => Some(MetadataMode::Zookeeper),
            Some(other) => {
                let message =
                    format!("{other:?} is not a metadata mode (\"kraft\" or \"zookeeper\")");
                self.error(&place.field("metadata"), message);
                None
            }
        };
        (name, metadata)
    }

    fn compile_listeners(&mut self, root: &Table) -> (PartialListener, PartialListener) {
        let place = Place::root("listeners");
        let empty = Table::new();
        let listeners = self
            .table(root, "listeners", &Place::root(""))
            .unwrap_or(&empty);
        self.unknown_keys(listeners, &place, LISTENERS_KEYS);
        let internal_table = self.table(listeners, "internal", &place).unwrap_or(&empty);
        let internal = self.compile_listener(
            internal_table,
            &place.field("internal"),
            ListenerKind::Internal,
        );
        let external = match listeners.get("external") {
            Some(Value::Table(table)) => {
                self.compile_listener(table, &place.field("external"), ListenerKind::External)
            }
            Some(_) => {
                self.table(listeners, "external", &place);
                PartialListener::default()
            }
            // Absent: public access is off, but kreach still owns the default name so that an
            // EXTERNAL listener left from an earlier spec is removed.
            None => PartialListener {
                enabled: Some(false),
                name: Some("EXTERNAL".into()),
                port: Some(9093),
                bind: Some("0.0.0.0".into()),
                advertise: Some(Advertise::PublicIp),
                security_protocol: Some("PLAINTEXT".into()),
                sasl_mechanism: Some(None),
                allow: Some(Vec::new()),
            },
        };
        (internal, external)
    }

    fn compile_listener(
        &mut self,
        table: &Table,
        place: &Place,
        kind: ListenerKind,
    ) -> PartialListener {
        let (known, default_name, default_port, default_advertise): (&[&str], _, _, _) = match kind
        {
            ListenerKind::Internal => (
                INTERNAL_LISTENER_KEYS,
                "INTERNAL",
                9092,
                Advertise::PrivateIp,
            ),
            ListenerKind::External => (
                EXTERNAL_LISTENER_KEYS,
                "EXTERNAL",
                9093,
                Advertise::PublicIp,
            ),
        };
        self.unknown_keys(table, place, known);
        let enabled = match kind {
            ListenerKind::Internal => Some(true),
            ListenerKind::External => match self.boolean(table, "enabled", place) {
                None if table.contains_key("enabled") => None,
                other => Some(other.unwrap_or(true)),
            },
        };
        let name = match self.string(table, "name", place) {
            None if table.contains_key("name") => None,
            None => Some(default_name.to_string()),
            Some(name) if is_valid_listener_name(&name) => Some(name),
            Some(name) => {
                let message = format!(
                    "{name:?} is not a Kafka listener name (upper-case letters, digits and '_', e.g. \"{default_name}\")"
                );
                self.error(&place.field("name"), message);
                None
            }
        };
        let port = self.port(table, "port", place, default_port);
        let bind = match self.string(table, "bind", place) {
            None if table.contains_key("bind") => None,
            None => Some("0.0.0.0".to_string()),
            Some(bind)
                if bind == BIND_PRIVATE_IP
                    || bind.parse::<IpAddr>().is_ok()
                    || is_valid_hostname(&bind) =>
            {
                Some(bind)
            }
            Some(bind) => {
                let message = format!(
                    "{bind:?} is not an address or hostname to bind to, nor \"{BIND_PRIVATE_IP}\" (the default is \"0.0.0.0\")"
                );
                self.error(&place.field("bind"), message);
                None
            }
        };
        let advertise = match self.string(table, "advertise", place).as_deref() {
            None if table.contains_key("advertise") => None,
            None => Some(default_advertise),
            Some("hostname") => Some(Advertise::Hostname),
            Some("private_ip") if kind == ListenerKind::Internal => Some(Advertise::PrivateIp),
            Some("public_ip") if kind == ListenerKind::External => Some(Advertise::PublicIp),
            Some(other) => {
                let allowed = match kind {
                    ListenerKind::Internal => "\"private_ip\" or \"hostname\"",
                    ListenerKind::External => "\"public_ip\" or \"hostname\"",
                };
                self.error(
                    &place.field("advertise"),
                    format!("{other:?} is not allowed here (use {allowed})"),
                );
                None
            }
        };
        let security_protocol = match self.string(table, "security_protocol", place) {
            None if table.contains_key("security_protocol") => None,
            None => Some("PLAINTEXT".to_string()),
            Some(protocol) if SECURITY_PROTOCOLS.contains(&protocol.as_str()) => Some(protocol),
            Some(protocol) => {
                let message = format!(
                    "{protocol:?} is not a Kafka security protocol ({})",
                    SECURITY_PROTOCOLS.join(", ")
                );
                self.error(&place.field("security_protocol"), message);
                None
            }
        };
        let sasl_mechanism =
            self.compile_sasl_mechanism(table, place, kind, security_protocol.as_deref());
        let allow = self.compile_cidrs(
            table,
            "allow",
            place,
            enabled == Some(true) && kind == ListenerKind::External,
        );
        PartialListener {
            enabled,
            name,
            port,
            bind,
            advertise,
            security_protocol,
            sasl_mechanism,
            allow,
        }
    }

    /// `sasl_mechanism`: required with a `SASL_*` protocol, refused without one (Kafka would
    /// otherwise fall back to GSSAPI, which kreach does not configure).
    fn compile_sasl_mechanism(
        &mut self,
        table: &Table,
        place: &Place,
        kind: ListenerKind,
        protocol: Option<&str>,
    ) -> Option<Option<String>> {
        let field = place.field("sasl_mechanism");
        let mechanism = match self.string(table, "sasl_mechanism", place) {
            None if table.contains_key("sasl_mechanism") => return None,
            None => None,
            Some(mechanism) if SASL_MECHANISMS.contains(&mechanism.as_str()) => Some(mechanism),
            Some(mechanism) => {
                let message = format!(
                    "{mechanism:?} is not a SASL mechanism kreach configures (\"SCRAM-SHA-512\" or \"SCRAM-SHA-256\")"
                );
                self.error(&field, message);
                return None;
            }
        };
        let sasl = protocol.is_some_and(|protocol| protocol.starts_with("SASL_"));
        match (protocol, &mechanism) {
            (None, _) => None,
            (Some(protocol), None) if sasl => {
                let message = format!(
                    "missing: security_protocol {protocol:?} needs sasl_mechanism = \"SCRAM-SHA-512\" or \"SCRAM-SHA-256\""
                );
                self.error(&field, message);
                None
            }
            (Some(protocol), Some(_)) if !sasl => {
                let message = format!(
                    "set, but security_protocol {protocol:?} does not use SASL (use \"SASL_SSL\", or remove sasl_mechanism)"
                );
                self.error(&field, message);
                None
            }
            (Some(_), Some(_)) if kind == ListenerKind::Internal => {
                // Brokers talk to each other on the internal listener: SASL there needs
                // inter-broker credentials, which kreach does not manage.
                self.error(
                    &place.field("security_protocol"),
                    "SASL on the internal listener would make brokers log in to each other, and kreach does not manage inter-broker credentials; use \"SSL\" or \"PLAINTEXT\" here and SASL on the external listener",
                );
                None
            }
            _ => Some(mechanism),
        }
    }

    /// A list of CIDRs under `key` (empty when absent). `required`: the external listener's
    /// `allow`, which must name at least one.
    fn compile_cidrs(
        &mut self,
        table: &Table,
        key: &str,
        place: &Place,
        required: bool,
    ) -> Option<Vec<IpNet>> {
        let field = place.field(key);
        let items = match table.get(key) {
            None if required => {
                self.error(
                    &field,
                    "missing: list the source CIDRs allowed to reach the external listener (write [\"0.0.0.0/0\", \"::/0\"] to allow everyone on purpose)",
                );
                return None;
            }
            None => return Some(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.error(
                    &field,
                    format!("expected a list of CIDRs, found {}", other.type_str()),
                );
                return None;
            }
        };
        if items.is_empty() && required {
            self.error(
                &field,
                "empty: nobody could reach the external listener; list the allowed source CIDRs",
            );
            return None;
        }
        self.cidr_items(items, &field)
    }

    /// A list of CIDR strings, each bad one named by its index.
    fn cidr_items(&mut self, items: &[Value], field: &Place) -> Option<Vec<IpNet>> {
        let mut nets = Vec::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let item_place = Place {
                path: format!("{}[{}]", field.path, index),
                subject: field.subject.clone(),
            };
            match item {
                Value::String(text) => match parse_cidr(text) {
                    Ok(net) => nets.push(net),
                    Err(message) => {
                        self.error(&item_place, message);
                        ok = false;
                    }
                },
                other => {
                    self.error(
                        &item_place,
                        format!("expected a CIDR string, found {}", other.type_str()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(nets)
    }

    fn check_listeners_together(&mut self, internal: &PartialListener, external: &PartialListener) {
        if external.enabled != Some(true) {
            return;
        }
        if let (Some(port), true) = (external.port, internal.port == external.port) {
            let message = format!("port {port} is also the internal listener's port; two listeners cannot share a port");
            self.error(&Place::root("listeners.external.port"), message);
        }
        if let (Some(name), true) = (&external.name, internal.name == external.name) {
            let message = format!("{name:?} is also the internal listener's name");
            self.error(&Place::root("listeners.external.name"), message);
        }
    }

    fn compile_brokers(&mut self, root: &Table) -> Vec<PartialBroker> {
        let items = match root.get("broker") {
            None => {
                self.error(
                    &Place::root("broker"),
                    "no [[broker]] entries; a cluster needs at least one broker",
                );
                return Vec::new();
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                let message = format!("expected [[broker]] tables, found {}", other.type_str());
                self.error(&Place::root("broker"), message);
                return Vec::new();
            }
        };
        let mut brokers = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let Value::Table(table) = item else {
                let message = format!("expected a table, found {}", item.type_str());
                self.error(&Place::root(&format!("broker[{index}]")), message);
                brokers.push(PartialBroker::default());
                continue;
            };
            let id_value = table.get("id").and_then(Value::as_integer);
            let node_value = table.get("node").and_then(Value::as_str);
            let place = Place {
                path: format!("broker[{index}]"),
                subject: Some(describe_broker(id_value, node_value)),
            };
            self.unknown_keys(table, &place, BROKER_KEYS);
            let id = if table.contains_key("id") {
                self.integer(table, "id", &place)
                    .and_then(|id| match i32::try_from(id) {
                        Ok(id) if id >= 0 => Some(id),
                        _ => {
                            self.error(
                                &place.field("id"),
                                format!("{id} is not a Kafka broker id (0 to 2147483647)"),
                            );
                            None
                        }
                    })
            } else {
                self.error(&place.field("id"), "missing (required)");
                None
            };
            let node = self.node_name(table, &place);
            let hostname = self.string(table, "hostname", &place).and_then(|hostname| {
                let problem = match crate::hosts::check_hostname(&hostname) {
                    Err(reason) => Some(reason),
                    // The short alias (the first label) is written to hosts files too.
                    Ok(()) => short_name_of(Some(&hostname))
                        .filter(|short| short.bytes().all(|b| b.is_ascii_digit()))
                        .map(|short| {
                            format!("has the all-numeric first label {short:?}, and that short alias would read as an address")
                        }),
                };
                match problem {
                    None => Some(hostname),
                    Some(reason) => {
                        let message = format!("{hostname:?} is not a valid hostname: it {reason}");
                        self.error(&place.field("hostname"), message);
                        None
                    }
                }
            });
            let hostname_ok = !table.contains_key("hostname") || hostname.is_some();
            let private_ip = self.ip(table, "private_ip", &place, true);
            let public_ip = self.ip(table, "public_ip", &place, false);
            let public_ok = !table.contains_key("public_ip") || public_ip.is_some();
            brokers.push(PartialBroker {
                place: Some(place),
                has_hostname: table.contains_key("hostname"),
                has_public_ip: table.contains_key("public_ip"),
                complete: hostname_ok && public_ok,
                id,
                node,
                hostname,
                private_ip,
                public_ip,
            });
        }
        self.check_broker_duplicates(&brokers);
        brokers
    }

    fn node_name(&mut self, table: &Table, place: &Place) -> Option<String> {
        let node = self.required_string(table, "node", place)?;
        // The same rule certificates use: a node's name is its identity in both.
        if is_valid_node_name(&node) {
            Some(node)
        } else {
            self.error(
                &place.field("node"),
                format!("{node:?} is not a valid node name (letters, digits, '-', '_', '.')"),
            );
            None
        }
    }

    fn check_broker_duplicates(&mut self, brokers: &[PartialBroker]) {
        let valid: Vec<(usize, &PartialBroker)> = brokers.iter().enumerate().collect();
        let keys: [(&str, BrokerKey); 5] = [
            ("id", |b| b.id.map(|id| id.to_string())),
            ("hostname", |b| {
                b.hostname.as_ref().map(|h| h.to_ascii_lowercase())
            }),
            ("private_ip", |b| b.private_ip.map(|ip| ip.to_string())),
            ("public_ip", |b| b.public_ip.map(|ip| ip.to_string())),
            ("short hostname", |b| {
                short_name_of(b.hostname.as_deref()).map(|s| s.to_ascii_lowercase())
            }),
        ];
        for (field, key_of) in keys {
            let mut first_seen: HashMap<String, usize> = HashMap::new();
            for (index, broker) in &valid {
                let Some(key) = key_of(broker) else { continue };
                if let Some(first) = first_seen.get(&key) {
                    let field_path = if field == "short hostname" {
                        "hostname"
                    } else {
                        field
                    };
                    let message = if field == "short hostname" {
                        format!("short name {key:?} is also broker[{first}]'s; the hosts alias would be ambiguous")
                    } else {
                        format!(
                            "{key:?} is also broker[{first}]'s {field}; each broker needs its own"
                        )
                    };
                    self.error(&broker.at().field(field_path), message);
                } else {
                    first_seen.insert(key, *index);
                }
            }
        }
        // A public address equal to another broker's private one would send clients to the wrong host.
        let privates: BTreeMap<IpAddr, usize> = valid
            .iter()
            .filter_map(|(index, b)| Some((b.private_ip?, *index)))
            .collect();
        for (index, broker) in &valid {
            let Some(public_ip) = broker.public_ip else {
                continue;
            };
            if let Some(other) = privates.get(&public_ip).filter(|other| *other != index) {
                let message = format!("{public_ip} is broker[{other}]'s private_ip");
                self.error(&broker.at().field("public_ip"), message);
            }
        }
    }

    fn check_brokers_against_listeners(
        &mut self,
        brokers: &[PartialBroker],
        internal: &PartialListener,
        external: &PartialListener,
    ) {
        let external_enabled = external.enabled == Some(true);
        for broker in brokers {
            let Some(place) = &broker.place else { continue };
            let needs_hostname = if internal.advertise == Some(Advertise::Hostname) {
                Some("listeners.internal.advertise")
            } else if external_enabled && external.advertise == Some(Advertise::Hostname) {
                Some("listeners.external.advertise")
            } else {
                None
            };
            if let Some(why) = needs_hostname {
                if !broker.has_hostname {
                    let message =
                        format!("missing: {why} = \"hostname\" needs a hostname on every broker");
                    self.error(&place.field("hostname"), message);
                }
            }
            if external_enabled && !broker.has_public_ip {
                let message =
                    "missing: the external listener is enabled, so every broker needs a public_ip";
                self.error(&place.field("public_ip"), message);
            }
        }
    }

    /// The `[[key]]` entries (none when absent), each None (with an error) when it is not a
    /// table; None (with an error) when `key` is not an array of tables at all.
    fn array_of_tables<'t>(
        &mut self,
        root: &'t Table,
        key: &str,
    ) -> Option<Vec<Option<&'t Table>>> {
        let items = match root.get(key) {
            None => return Some(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                let message = format!("expected [[{key}]] tables, found {}", other.type_str());
                self.error(&Place::root(key), message);
                return None;
            }
        };
        let mut tables = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match item {
                Value::Table(table) => tables.push(Some(table)),
                other => {
                    let message = format!("expected a table, found {}", other.type_str());
                    self.error(&Place::root(&format!("{key}[{index}]")), message);
                    tables.push(None);
                }
            }
        }
        Some(tables)
    }

    fn compile_clients(&mut self, root: &Table) -> Vec<Option<ClientSpec>> {
        let Some(items) = self.array_of_tables(root, "client") else {
            return Vec::new();
        };
        let mut clients = Vec::new();
        for (index, table) in items.into_iter().enumerate() {
            let Some(table) = table else {
                clients.push(None);
                continue;
            };
            let node_value = table.get("node").and_then(Value::as_str);
            let place = Place {
                path: format!("client[{index}]"),
                subject: node_value.map(|node| format!("client {node:?}")),
            };
            self.unknown_keys(table, &place, CLIENT_KEYS);
            let node = self.node_name(table, &place);
            let view = self.view(table, &place);
            clients.push(match (node, view) {
                (Some(node), Some(view)) => Some(ClientSpec { node, view }),
                _ => None,
            });
        }
        clients
    }

    /// `view`: "private" (the default) or "public".
    fn view(&mut self, table: &Table, place: &Place) -> Option<View> {
        match self.string(table, "view", place).as_deref() {
            None if table.contains_key("view") => None,
            None | Some("private") => Some(View::Private),
            Some("public") => Some(View::Public),
            Some(other) => {
                self.error(
                    &place.field("view"),
                    format!("{other:?} is not a view (\"private\" or \"public\")"),
                );
                None
            }
        }
    }

    fn compile_client_groups(
        &mut self,
        root: &Table,
        external: &PartialListener,
    ) -> Option<Vec<ClientGroup>> {
        let items = self.array_of_tables(root, "client_group")?;
        let mut groups = Vec::new();
        let mut ok = true;
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, table) in items.into_iter().enumerate() {
            let Some(table) = table else {
                ok = false;
                continue;
            };
            let name_value = table.get("name").and_then(Value::as_str);
            let place = Place {
                path: format!("client_group[{index}]"),
                subject: name_value.map(|name| format!("client group {name:?}")),
            };
            self.unknown_keys(table, &place, CLIENT_GROUP_KEYS);
            let name = self.required_string(table, "name", &place).and_then(|name| {
                if !is_valid_node_name(&name) {
                    self.error(
                        &place.field("name"),
                        format!("{name:?} is not a valid group name (letters, digits, '-', '_', '.')"),
                    );
                    return None;
                }
                if let Some(first) = names.insert(name.clone(), index) {
                    self.error(
                        &place.field("name"),
                        format!("also the name of client_group[{first}]; every group name must be unique"),
                    );
                    return None;
                }
                Some(name)
            });
            let view = self.view(table, &place);
            if view == Some(View::Public) && external.enabled == Some(false) {
                self.error(
                    &place.field("view"),
                    "\"public\" needs the external listener enabled ([listeners.external] enabled = true)",
                );
                ok = false;
            }
            let labels = self.string_table(table, "labels", &place);
            let cidrs = self.compile_cidrs(table, "cidrs", &place, false);
            let nodes = match self.string(table, "nodes", &place) {
                Some(glob) => match glob::Pattern::new(&glob) {
                    Ok(_) => Some(Some(glob)),
                    Err(error) => {
                        self.error(
                            &place.field("nodes"),
                            format!("{glob:?} is not a glob: {error}"),
                        );
                        None
                    }
                },
                None if table.contains_key("nodes") => None,
                None => Some(None),
            };
            let (Some(name), Some(view), Some(labels), Some(cidrs), Some(nodes)) =
                (name, view, labels, cidrs, nodes)
            else {
                ok = false;
                continue;
            };
            if labels.is_empty() && cidrs.is_empty() && nodes.is_none() {
                self.error(
                    &place,
                    "selects nothing: give labels, cidrs or nodes (every one given must match)",
                );
                ok = false;
                continue;
            }
            groups.push(ClientGroup {
                name,
                view,
                labels,
                cidrs,
                nodes,
            });
        }
        ok.then_some(groups)
    }

    /// A table of string values (`labels = { role = "task" }`); empty when absent.
    fn string_table(
        &mut self,
        table: &Table,
        key: &str,
        place: &Place,
    ) -> Option<BTreeMap<String, String>> {
        if !table.contains_key(key) {
            return Some(BTreeMap::new());
        }
        let entries = self.table(table, key, place)?;
        let field = place.field(key);
        let mut map = BTreeMap::new();
        let mut ok = true;
        for name in entries.keys() {
            match self.string(entries, name, &field) {
                Some(text) => {
                    map.insert(name.clone(), text);
                }
                None => ok = false,
            }
        }
        ok.then_some(map)
    }

    fn check_clients_against_listeners(
        &mut self,
        clients: &[Option<ClientSpec>],
        external: &PartialListener,
    ) {
        for (index, client) in clients.iter().enumerate() {
            let Some(client) = client else { continue };
            if client.view == View::Public && external.enabled == Some(false) {
                self.error(
                    &Place {
                        path: format!("client[{index}].view"),
                        subject: Some(format!("client {:?}", client.node)),
                    },
                    "\"public\" needs the external listener enabled ([listeners.external] enabled = true)",
                );
            }
        }
    }

    fn check_node_names(&mut self, brokers: &[PartialBroker], clients: &[Option<ClientSpec>]) {
        let mut seen: HashMap<&str, String> = HashMap::new();
        let broker_nodes = brokers.iter().enumerate().filter_map(|(index, broker)| {
            Some((format!("broker[{index}]"), broker.node.as_deref()?))
        });
        let client_nodes = clients.iter().enumerate().filter_map(|(index, client)| {
            client
                .as_ref()
                .map(|c| (format!("client[{index}]"), c.node.as_str()))
        });
        for (path, node) in broker_nodes.chain(client_nodes) {
            if let Some(first) = seen.get(node) {
                self.error(
                    &Place {
                        path: format!("{path}.node"),
                        subject: Some(format!("node {node:?}")),
                    },
                    format!("also used by {first}; every node name must be unique"),
                );
            } else {
                seen.insert(node, path);
            }
        }
    }

    fn compile_rollout(&mut self, root: &Table) -> Option<RolloutSpec> {
        let place = Place::root("rollout");
        let empty = Table::new();
        let rollout = self
            .table(root, "rollout", &Place::root(""))
            .unwrap_or(&empty);
        self.unknown_keys(rollout, &place, ROLLOUT_KEYS);
        let max_unavailable = match self.integer(rollout, "max_unavailable", &place) {
            None if rollout.contains_key("max_unavailable") => None,
            None => Some(1),
            Some(value) if (1..=1000).contains(&value) => Some(value as u32),
            Some(value) => {
                self.error(
                    &place.field("max_unavailable"),
                    format!("{value} is out of range (at least 1)"),
                );
                None
            }
        };
        let health_timeout =
            self.duration(rollout, "health_timeout", &place, Duration::from_secs(180));
        // Default 0 s: the after-restart gate already waits for under-replicated partitions to
        // reach zero and the next broker's pre-restart gate checks min.insync.replicas, so a
        // settle only adds margin; an operator who wants it sets it (README, examples/cluster.toml).
        let settle = self.duration(rollout, "settle", &place, Duration::ZERO);
        let agent_timeout = self
            .duration(rollout, "agent_timeout", &place, Duration::from_secs(60))
            .and_then(|timeout| {
                if timeout >= Duration::from_secs(1) {
                    Some(timeout)
                } else {
                    self.error(
                        &place.field("agent_timeout"),
                        "must be at least \"1s\" (an agent reconnecting takes about that long)",
                    );
                    None
                }
            });
        Some(RolloutSpec {
            max_unavailable: max_unavailable?,
            health_timeout: health_timeout?,
            settle: settle?,
            agent_timeout: agent_timeout?,
        })
    }

    fn compile_tls(&mut self, root: &Table) -> Option<TlsSpec> {
        let place = Place::root("tls");
        let empty = Table::new();
        let tls = self.table(root, "tls", &Place::root("")).unwrap_or(&empty);
        self.unknown_keys(tls, &place, TLS_KEYS);
        let path = |compiler: &mut Self, key: &str| {
            compiler
                .string(tls, key, &place)
                .map(std::path::PathBuf::from)
        };
        let ca_cert = path(self, "ca_cert");
        let ca_key = path(self, "ca_key");
        let issuer = match self.string(tls, "issuer", &place).as_deref() {
            None if tls.contains_key("issuer") => None,
            None | Some("kreach") => {
                for key in ["ca_cert", "ca_key"] {
                    if tls.contains_key(key) {
                        self.error(
                            &place.field(key),
                            "only with issuer = \"files\" (the default issuer, \"kreach\", makes its own Kafka CA)",
                        );
                    }
                }
                Some(TlsIssuer::Kreach)
            }
            Some("files") => {
                for (key, value) in [("ca_cert", &ca_cert), ("ca_key", &ca_key)] {
                    if value.is_none() && !tls.contains_key(key) {
                        self.error(
                            &place.field(key),
                            "missing: issuer = \"files\" signs with your CA; name its PEM file on the coordinator's host",
                        );
                    }
                }
                ca_cert
                    .zip(ca_key)
                    .map(|(ca_cert, ca_key)| TlsIssuer::Files { ca_cert, ca_key })
            }
            Some(other) => {
                self.error(
                    &place.field("issuer"),
                    format!("{other:?} is not an issuer (use \"kreach\" or \"files\")"),
                );
                None
            }
        };
        let lifetime = self
            .duration(tls, "lifetime", &place, DEFAULT_TLS_LIFETIME)
            .and_then(|lifetime| {
                if lifetime >= Duration::from_secs(3600) {
                    Some(lifetime)
                } else {
                    self.error(&place.field("lifetime"), "must be at least \"1h\"");
                    None
                }
            });
        let renew_before = match lifetime {
            Some(lifetime) => self
                .duration(tls, "renew_before", &place, lifetime / 3)
                .and_then(|renew| {
                    if renew < lifetime {
                        Some(renew)
                    } else {
                        self.error(
                            &place.field("renew_before"),
                            "must be shorter than lifetime (the default is a third of it)",
                        );
                        None
                    }
                }),
            None => None,
        };
        Some(TlsSpec {
            issuer: issuer?,
            lifetime: lifetime?,
            renew_before: renew_before?,
        })
    }
}

/// A listener as far as it compiled: every field that was valid, so that cross-checks still run
/// when a sibling field is wrong.
#[derive(Default)]
struct PartialListener {
    enabled: Option<bool>,
    name: Option<String>,
    port: Option<u16>,
    bind: Option<String>,
    advertise: Option<Advertise>,
    security_protocol: Option<String>,
    sasl_mechanism: Option<Option<String>>,
    allow: Option<Vec<IpNet>>,
}

impl PartialListener {
    fn finish(self) -> Option<ListenerSpecConfig> {
        Some(ListenerSpecConfig {
            enabled: self.enabled?,
            name: self.name?,
            port: self.port?,
            bind: self.bind?,
            advertise: self.advertise?,
            security_protocol: self.security_protocol?,
            sasl_mechanism: self.sasl_mechanism?,
            allow: self.allow?,
        })
    }
}

/// Extracts the value of one field that must be unique across brokers.
type BrokerKey = fn(&PartialBroker) -> Option<String>;

/// A broker as far as it compiled (see [`PartialListener`]).
#[derive(Default)]
struct PartialBroker {
    place: Option<Place>,
    has_hostname: bool,
    has_public_ip: bool,
    /// False when an optional field was present but invalid.
    complete: bool,
    id: Option<i32>,
    node: Option<String>,
    hostname: Option<String>,
    private_ip: Option<IpAddr>,
    public_ip: Option<IpAddr>,
}

impl PartialBroker {
    fn at(&self) -> Place {
        self.place.clone().unwrap_or_else(|| Place::root("broker"))
    }

    fn finish(self) -> Option<BrokerSpec> {
        if !self.complete {
            return None;
        }
        Some(BrokerSpec {
            id: self.id?,
            node: self.node?,
            hostname: self.hostname,
            private_ip: self.private_ip?,
            public_ip: self.public_ip,
        })
    }
}

fn short_name_of(hostname: Option<&str>) -> Option<&str> {
    let (short, rest) = hostname?.split_once('.')?;
    (!rest.is_empty()).then_some(short)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListenerKind {
    Internal,
    External,
}

fn describe_broker(id: Option<i64>, node: Option<&str>) -> String {
    match (id, node) {
        (Some(id), Some(node)) => format!("broker {id} (node {node:?})"),
        (Some(id), None) => format!("broker {id}"),
        (None, Some(node)) => format!("broker (node {node:?})"),
        (None, None) => "broker".to_string(),
    }
}

/// A CIDR; a bare address means that single host.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("{text:?} is not a CIDR (e.g. \"203.0.113.0/24\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
[cluster]
name = "emr-48742"
metadata = "kraft"

[listeners.internal]
name = "INTERNAL"
port = 9092
bind = "0.0.0.0"
advertise = "private_ip"

[listeners.external]
enabled = true
name = "EXTERNAL"
port = 9093
advertise = "public_ip"
allow = ["203.0.113.0/24"]

[[broker]]
id = 1
node = "emr-worker-1"
hostname = "emr-worker-1.cluster-48742"
private_ip = "10.0.1.24"
public_ip = "47.96.1.24"

[[broker]]
id = 2
node = "emr-worker-2"
hostname = "emr-worker-2.cluster-48742"
private_ip = "10.0.1.25"
public_ip = "47.96.1.25"

[[client]]
node = "etl-1"
view = "private"

[rollout]
max_unavailable = 1
health_timeout = "180s"
settle = "10s"
"#;

    fn errors_of(text: &str) -> Vec<String> {
        match ClusterSpec::parse(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    const SECURE_BASE: &str = "[cluster]\nname = \"c\"\n[[broker]]\nid = 1\nnode = \"b1\"\nprivate_ip = \"10.0.0.1\"\npublic_ip = \"198.19.0.1\"\n";

    #[test]
    fn secure_listeners_need_what_kafka_needs_and_every_error_is_reported_at_once() {
        let text = format!(
            "{SECURE_BASE}[listeners.internal]\nsecurity_protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             [listeners.external]\nallow = [\"0.0.0.0/0\"]\nsecurity_protocol = \"SASL_SSL\"\n\
             [tls]\nissuer = \"files\"\nlifetime = \"30d\"\nrenew_before = \"30d\"\n"
        );
        let errors = errors_of(&text).join("\n");
        for expected in [
            "listeners.internal.security_protocol: SASL on the internal listener",
            "listeners.external.sasl_mechanism: missing: security_protocol \"SASL_SSL\" needs sasl_mechanism",
            "tls.ca_cert: missing",
            "tls.ca_key: missing",
            "tls.renew_before: must be shorter than lifetime",
        ] {
            assert!(errors.contains(expected), "no {expected:?} in\n{errors}");
        }
        let text = format!(
            "{SECURE_BASE}[listeners.external]\nallow = [\"0.0.0.0/0\"]\nsecurity_protocol = \"SSL\"\nsasl_mechanism = \"PLAIN\"\n"
        );
        let errors = errors_of(&text).join("\n");
        assert!(
            errors.contains("\"PLAIN\" is not a SASL mechanism"),
            "{errors}"
        );
        let text = format!(
            "{SECURE_BASE}[listeners.external]\nallow = [\"0.0.0.0/0\"]\nsecurity_protocol = \"SSL\"\nsasl_mechanism = \"SCRAM-SHA-256\"\n"
        );
        let errors = errors_of(&text).join("\n");
        assert!(
            errors.contains("set, but security_protocol \"SSL\" does not use SASL"),
            "{errors}"
        );
        let text = format!("{SECURE_BASE}[tls]\nca_key = \"/k\"\n");
        let errors = errors_of(&text).join("\n");
        assert!(
            errors.contains("tls.ca_key: only with issuer = \"files\""),
            "{errors}"
        );
    }

    #[test]
    fn a_sasl_ssl_external_listener_compiles_with_tls_defaults() {
        let text = format!(
            "{SECURE_BASE}[listeners.internal]\nsecurity_protocol = \"SSL\"\n\
             [listeners.external]\nallow = [\"0.0.0.0/0\"]\nsecurity_protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n"
        );
        let spec = ClusterSpec::parse(&text).unwrap();
        assert!(spec.internal.uses_tls() && spec.external.uses_tls());
        assert_eq!(spec.internal.sasl_mechanism, None);
        assert_eq!(
            spec.external.sasl_mechanism.as_deref(),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(spec.tls.issuer, TlsIssuer::Kreach);
        assert_eq!(spec.tls.lifetime, Duration::from_secs(365 * 86_400));
        assert_eq!(spec.tls.renew_before, spec.tls.lifetime / 3);
        let text = format!(
            "{SECURE_BASE}[tls]\nissuer = \"files\"\nca_cert = \"/etc/pki/kafka-ca.pem\"\nca_key = \"/etc/pki/kafka-ca.key\"\nlifetime = \"90d\"\n"
        );
        let spec = ClusterSpec::parse(&text).unwrap();
        assert_eq!(
            spec.tls.issuer,
            TlsIssuer::Files {
                ca_cert: "/etc/pki/kafka-ca.pem".into(),
                ca_key: "/etc/pki/kafka-ca.key".into()
            }
        );
        assert_eq!(spec.tls.renew_before, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn the_design_example_is_valid() {
        let spec = ClusterSpec::parse(EXAMPLE).expect("valid");
        assert_eq!(spec.name, "emr-48742");
        assert_eq!(spec.brokers.len(), 2);
        assert_eq!(spec.brokers[0].short_name(), Some("emr-worker-1"));
        assert!(spec.external.enabled);
        assert_eq!(spec.rollout.agent_timeout, Duration::from_secs(60));
        assert_eq!(spec.rollout.health_timeout, Duration::from_secs(180));
        assert_eq!(spec.nodes(), vec!["emr-worker-1", "emr-worker-2", "etl-1"]);
    }

    #[test]
    fn every_error_is_reported_at_once_naming_field_and_broker() {
        let text = r#"
[cluster]
name = "c"
colour = "blue"

[listeners.internal]
advertise = "hostname"
port = 9093

[listeners.external]
allow = ["203.0.113.7/24", "nonsense"]

[[broker]]
id = 1
node = "a"
private_ip = "10.0.0.1"
public_ip = "10.0.0.300"

[[broker]]
id = 1
node = "a"
hostname = "bad_host!"
private_ip = "10.0.0.1"

[[client]]
node = "c1"
view = "sideways"

[rollout]
health_timeout = "3 parsecs"
"#;
        let errors = errors_of(text);
        let expect = [
            "cluster.colour: unknown key",
            "listeners.external.allow[0]: \"203.0.113.7/24\" has host bits set",
            "listeners.external.allow[1]: \"nonsense\" is not a CIDR",
            "broker[0].public_ip: broker 1 (node \"a\"): \"10.0.0.300\" is not a valid IPv4 or IPv6 address",
            "broker[1].hostname: broker 1 (node \"a\"): \"bad_host!\" is not a valid hostname",
            "broker[1].id: broker 1 (node \"a\"): \"1\" is also broker[0]'s id",
            "broker[1].private_ip: broker 1 (node \"a\"): \"10.0.0.1\" is also broker[0]'s private_ip",
            "client[0].view: client \"c1\": \"sideways\" is not a view",
            "listeners.external.port: port 9093 is also the internal listener's port",
            "broker[0].hostname: broker 1 (node \"a\"): missing: listeners.internal.advertise = \"hostname\" needs a hostname",
            "broker[1].public_ip: broker 1 (node \"a\"): missing: the external listener is enabled",
            "broker[1].node: node \"a\": also used by broker[0]",
            "rollout.health_timeout: \"3 parsecs\"",
        ];
        for expected in expect {
            assert!(
                errors.iter().any(|error| error.starts_with(expected)),
                "missing error starting with {expected:?} in:\n{}",
                errors.join("\n")
            );
        }
    }

    #[test]
    fn duplicate_hostnames_public_ips_and_short_names_are_errors() {
        let text = r#"
[cluster]
name = "c"
[listeners.external]
allow = ["0.0.0.0/0"]
[[broker]]
id = 1
node = "a"
hostname = "w1.one"
private_ip = "10.0.0.1"
public_ip = "198.51.100.1"
[[broker]]
id = 2
node = "b"
hostname = "W1.ONE"
private_ip = "10.0.0.2"
public_ip = "198.51.100.1"
[[broker]]
id = 3
node = "c"
hostname = "w1.two"
private_ip = "10.0.0.3"
public_ip = "10.0.0.1"
"#;
        let errors = errors_of(text).join("\n");
        assert!(errors.contains("broker[1].hostname: broker 2 (node \"b\"): \"w1.one\" is also broker[0]'s hostname"), "{errors}");
        assert!(errors.contains("broker[1].public_ip: broker 2 (node \"b\"): \"198.51.100.1\" is also broker[0]'s public_ip"), "{errors}");
        assert!(
            errors.contains("broker[2].hostname: broker 3 (node \"c\"): short name \"w1\""),
            "{errors}"
        );
        assert!(
            errors.contains(
                "broker[2].public_ip: broker 3 (node \"c\"): 10.0.0.1 is broker[0]'s private_ip"
            ),
            "{errors}"
        );
    }

    #[test]
    fn public_clients_need_public_access_and_external_needs_allow() {
        let text = r#"
[cluster]
name = "c"
[[broker]]
id = 1
node = "a"
private_ip = "10.0.0.1"
[[client]]
node = "laptop"
view = "public"
"#;
        let errors = errors_of(text).join("\n");
        assert!(
            errors.contains(
                "client[0].view: client \"laptop\": \"public\" needs the external listener enabled"
            ),
            "{errors}"
        );

        let text = "[cluster]\nname = \"c\"\n[listeners.external]\n[[broker]]\nid = 1\nnode = \"a\"\nprivate_ip = \"10.0.0.1\"\npublic_ip = \"198.51.100.1\"\n";
        assert!(errors_of(text)
            .join("\n")
            .contains("listeners.external.allow: missing"));
    }

    #[test]
    fn syntax_errors_and_type_errors_are_clear() {
        let errors = errors_of("[cluster\nname = 1");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("(syntax):"), "{errors:?}");
        let errors = errors_of("[cluster]\nname = 1\n[[broker]]\nid = \"one\"\nnode = \"a\"\nprivate_ip = \"10.0.0.1\"\n");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("cluster.name: expected a string, found integer")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e
                .contains("broker[0].id: broker (node \"a\"): expected an integer, found string")),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_everything_is_reported() {
        let errors = errors_of("");
        assert!(
            errors.iter().any(|e| e.starts_with("cluster: missing")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("broker: no [[broker]]")),
            "{errors:?}"
        );
    }

    #[test]
    fn oversized_spec_is_refused() {
        let text = format!("# {}\n", "x".repeat(MAX_SPEC_BYTES));
        let errors = errors_of(&text);
        assert!(errors[0].contains("over the limit"), "{errors:?}");
    }

    /// One error per line: a quoted unknown key with a newline, a bell, a quote or a backslash in
    /// it is named in TOML's escaped form, never printed raw.
    #[test]
    fn unknown_keys_with_control_characters_are_escaped_in_their_error() {
        let text = EXAMPLE.replacen(
            "[cluster]\n",
            "[cluster]\n\"colour\\nred\\u0007\\\"x\\\\y\" = 1\n\"ключ\\r\" = 2\n",
            1,
        );
        assert_ne!(text, EXAMPLE);
        let errors = ClusterSpec::parse(&text).unwrap_err();
        let lines: Vec<String> = errors.to_string().lines().map(str::to_string).collect();
        assert_eq!(
            lines.len(),
            errors.0.len(),
            "one line per error: {lines:#?}"
        );
        assert_eq!(errors.0.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with(r#"cluster."colour\nred\u0007\"x\\y": unknown key"#),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with(r#"cluster."ключ\r": unknown key"#),
            "{lines:#?}"
        );
        for line in &lines {
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        // Keys TOML allows bare stay bare.
        assert_eq!(path_key("public_ip"), "public_ip");
        assert_eq!(path_key("a-b_9"), "a-b_9");
        assert_eq!(path_key(""), "\"\"");
        assert_eq!(path_key("a.b"), "\"a.b\"");
        assert_eq!(path_key("line\u{2028}sep"), r#""line\u2028sep""#);
    }

    #[test]
    fn a_syntax_error_keeps_its_caret_layout_and_escapes_other_control_characters() {
        let errors = ClusterSpec::parse("[cluster]\nname = \"a\rb\"\n").unwrap_err();
        assert_eq!(errors.0.len(), 1);
        let message = errors.to_string();
        assert!(message.starts_with("(syntax): "), "{message:?}");
        assert!(
            !message.chars().any(|c| c.is_control() && c != '\n'),
            "{message:?}"
        );
        let errors = ClusterSpec::parse("[cluster]\nname = \"x\"\nmetadata = kraft\n").unwrap_err();
        let lines: Vec<&str> = errors.0[0].message.lines().collect();
        let quoted = lines
            .iter()
            .position(|line| line.contains("metadata = kraft"))
            .unwrap_or_else(|| panic!("the bad line is quoted on a line of its own: {lines:?}"));
        let caret = lines[quoted + 1];
        let line = lines[quoted];
        assert_eq!(
            caret.find('^'),
            line.find("kraft"),
            "the caret stands under the bad value:\n{}",
            errors.0[0].message
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn agent_timeout_defaults_to_60s_and_is_at_least_1s() {
        let spec = ClusterSpec::parse(EXAMPLE).expect("valid");
        assert_eq!(spec.rollout.agent_timeout, Duration::from_secs(60));
        let spec = ClusterSpec::parse(&format!("{EXAMPLE}agent_timeout = \"5m\"\n")).unwrap();
        assert_eq!(spec.rollout.agent_timeout, Duration::from_secs(300));
        let errors = errors_of(&format!("{EXAMPLE}agent_timeout = \"500ms\"\n"));
        assert_eq!(
            errors,
            ["rollout.agent_timeout: must be at least \"1s\" (an agent reconnecting takes about that long)"]
        );
        let errors = errors_of(&format!("{EXAMPLE}agent_timeout = 60\n"));
        assert_eq!(
            errors,
            ["rollout.agent_timeout: expected a string, found integer"]
        );
    }

    #[test]
    fn hostnames() {
        assert!(is_valid_hostname("emr-worker-1.cluster-48742"));
        assert!(!is_valid_hostname("-bad"));
        assert!(!is_valid_hostname("a..b"));
        assert!(!is_valid_hostname("10.0.0.1"));
        assert!(!is_valid_hostname("under_score"));
        assert!(!is_valid_hostname("emr-worker-3.ce-r4tls.8742"));
    }

    /// Found by the spec_parser fuzzer: a hostname the spec accepted but the hosts editor refused,
    /// so a validated spec failed to render. Both now share one rule, and the error says why.
    #[test]
    fn hostnames_the_hosts_editor_would_refuse_are_spec_errors() {
        let text = EXAMPLE.replacen(
            "hostname = \"emr-worker-1.cluster-48742\"",
            "hostname = \"emr-worker-1.cluster.48742\"",
            1,
        );
        assert_ne!(text, EXAMPLE);
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("broker[0].hostname"), "{errors:?}");
        assert!(errors[0].contains("all-numeric label"), "{errors:?}");

        let text = EXAMPLE.replacen(
            "hostname = \"emr-worker-1.cluster-48742\"",
            "hostname = \"1024.cluster-48742\"",
            1,
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("short alias would read as an address"),
            "{errors:?}"
        );
    }

    #[test]
    fn client_groups_select_agents_by_labels_addresses_and_node_name() {
        let spec = ClusterSpec::parse(&format!(
            "{SECURE_BASE}[[client_group]]\nname = \"spark-task\"\nlabels = {{ cluster = \"spark-prod\", role = \"task\" }}\n\
             [[client_group]]\nname = \"lab\"\ncidrs = [\"198.18.7.0/24\"]\nnodes = \"lab-*\"\n"
        ))
        .unwrap();
        let [task, lab] = spec.client_groups.as_slice() else {
            panic!("{:?}", spec.client_groups)
        };
        assert_eq!(task.view, View::Private);
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let prod_task = labels(&[("cluster", "spark-prod"), ("role", "task"), ("zone", "a")]);
        assert!(task.selects("any-node", &prod_task, &[]));
        assert!(!task.selects("any-node", &labels(&[("cluster", "spark-prod")]), &[]));
        let inside: IpAddr = "198.18.7.9".parse().unwrap();
        let outside: IpAddr = "198.18.8.9".parse().unwrap();
        assert!(lab.selects("lab-3", &BTreeMap::new(), &[outside, inside]));
        assert!(
            !lab.selects("lab-3", &BTreeMap::new(), &[outside]),
            "cidrs must match"
        );
        assert!(
            !lab.selects("prod-3", &BTreeMap::new(), &[inside]),
            "and the glob"
        );
    }

    #[test]
    fn a_client_group_that_selects_nothing_or_repeats_a_name_is_refused_with_each_problem() {
        let errors = errors_of(&format!(
            "{SECURE_BASE}[[client_group]]\nname = \"g\"\n\
             [[client_group]]\nname = \"g\"\nnodes = \"[\"\n\
             [[client_group]]\nname = \"h\"\nview = \"public\"\ncidrs = [\"10.0.0.0/33\"]\nlabels = {{ role = 3 }}\n"
        ));
        let expected = [
            "client_group[0]: client group \"g\": selects nothing: give labels, cidrs or nodes",
            "client_group[1].name: client group \"g\": also the name of client_group[0]",
            "client_group[1].nodes: client group \"g\": \"[\" is not a glob",
            "client_group[2].cidrs[0]: client group \"h\":",
            "client_group[2].labels.role: client group \"h\": expected a string, found integer",
        ];
        for want in expected {
            assert!(
                errors.iter().any(|error| error.starts_with(want)),
                "{want}\nnot in {errors:#?}"
            );
        }
    }
}
