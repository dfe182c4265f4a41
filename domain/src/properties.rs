//! The listener keys of Kafka's `server.properties`, edited as text.
//!
//! Owns: reading Java-properties values ([`get_property`]), rewriting the four listener keys kreach
//! manages ([`apply_listeners`]) — `listeners`, `advertised.listeners`,
//! `listener.security.protocol.map` and `inter.broker.listener.name`, and within them only the
//! entries whose listener names kreach owns — and checking the result against the rules Kafka
//! enforces at startup ([`check_kafka_rules`]).
//!
//! Does not own: reading or writing files, backups, restarts, or deciding what the listeners should
//! be (that is derived from the cluster spec elsewhere). Everything here is a pure function over
//! strings.
//!
//! Every byte the edit does not have to change stays as it was: comments, blank lines, order,
//! separators, escapes, continuation lines, line endings, a missing final newline, other keys, and
//! the entries of listeners kreach does not own (such as KRaft's `CONTROLLER`). Only the line(s) of
//! a managed key's effective definition are rewritten, onto one line.
//!
//! Parsing follows `java.util.Properties.load`, because that is what Kafka uses: a value we read
//! must be the value Kafka reads.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// `listeners`: where the broker binds.
pub const LISTENERS: &str = "listeners";
/// `advertised.listeners`: what the broker tells clients to connect to.
pub const ADVERTISED_LISTENERS: &str = "advertised.listeners";
/// `listener.security.protocol.map`: `NAME:PROTOCOL` for every listener name.
pub const PROTOCOL_MAP: &str = "listener.security.protocol.map";
/// `inter.broker.listener.name`: the listener brokers use among themselves.
pub const INTER_BROKER_LISTENER: &str = "inter.broker.listener.name";
/// The keys [`apply_listeners`] may change, in the order new keys are appended.
pub const MANAGED_KEYS: [&str; 4] = [
    LISTENERS,
    ADVERTISED_LISTENERS,
    PROTOCOL_MAP,
    INTER_BROKER_LISTENER,
];

const SECURITY_INTER_BROKER_PROTOCOL: &str = "security.inter.broker.protocol";
const CONTROLLER_LISTENER_NAMES: &str = "controller.listener.names";
const PROCESS_ROLES: &str = "process.roles";

/// The security protocols Kafka knows; also the listener names its default protocol map covers.
const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
/// Kafka's value for `listeners` when the key is absent.
const DEFAULT_LISTENERS: &str = "PLAINTEXT://:9092";
/// Kafka's value for `listener.security.protocol.map` when the key is absent.
const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

/// One listener kreach wants on a broker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerSpec {
    /// Kafka listener name, e.g. `INTERNAL`. Compared case-insensitively, as Kafka upper-cases it.
    pub name: String,
    /// Address to bind: `"0.0.0.0"`, `""` (Kafka's default interface) or an address. IPv6 may be
    /// given with or without brackets.
    pub bind_host: String,
    /// Port, used both for binding and advertising.
    pub port: u16,
    /// Host clients are told to connect to. Empty lets Kafka use the machine's canonical hostname.
    pub advertised_host: String,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub security_protocol: String,
    /// `SSL` / `SASL_SSL`: the PEM files the listener serves and trusts. `None` otherwise.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// `SASL_*`: the SCRAM mechanism (`SCRAM-SHA-256` or `SCRAM-SHA-512`).
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
}

/// A TLS listener's files, as `listener.name.NAME.ssl.*` settings point Kafka at them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerTls {
    /// PEM key store: the private key and the certificate chain, in one file.
    pub keystore: String,
    /// PEM trust store: the CA bundle (what brokers trust when they connect to this listener,
    /// which matters for the inter-broker listener).
    pub truststore: String,
}

/// The listener-scoped keys kreach owns for every listener name it owns (`NAME` lower-cased, as
/// Kafka reads `listener.name.NAME.` prefixes); set when the listener needs them, removed
/// otherwise.
pub const LISTENER_SCOPED_KEYS: [&str; 7] = [
    "ssl.keystore.type",
    "ssl.keystore.location",
    "ssl.truststore.type",
    "ssl.truststore.location",
    "sasl.enabled.mechanisms",
    "scram-sha-256.sasl.jaas.config",
    "scram-sha-512.sasl.jaas.config",
];

/// The JAAS line a SCRAM listener needs on the broker side (no credentials: users live in the
/// cluster's metadata, created with AlterUserScramCredentials).
const SCRAM_JAAS: &str = "org.apache.kafka.common.security.scram.ScramLoginModule required;";

/// `listener.name.NAME.KEY` for an owned listener name.
fn scoped_key(name: &str, key: &str) -> String {
    format!("listener.name.{}.{key}", name.to_lowercase())
}

/// The value each listener-scoped key should have for `spec` (`None`: absent).
fn scoped_values(spec: Option<&ListenerSpec>) -> [Option<String>; 7] {
    let tls = spec.and_then(|spec| spec.tls.as_ref());
    let mechanism = spec.and_then(|spec| spec.sasl_mechanism.as_deref());
    let jaas = |wanted: &str| {
        mechanism
            .filter(|m| m.eq_ignore_ascii_case(wanted))
            .map(|_| SCRAM_JAAS.to_string())
    };
    [
        tls.map(|_| "PEM".to_string()),
        tls.map(|tls| tls.keystore.clone()),
        tls.map(|_| "PEM".to_string()),
        tls.map(|tls| tls.truststore.clone()),
        mechanism.map(str::to_string),
        jaas("SCRAM-SHA-256"),
        jaas("SCRAM-SHA-512"),
    ]
}

/// The listener state kreach wants in one broker's `server.properties`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerSettings {
    /// Every listener name kreach owns (present or to be removed). Entries with these names are
    /// kreach's; others are left as they are. The names in `listeners` are owned too, even if
    /// missing here: kreach cannot set an entry without owning it.
    pub owned_names: Vec<String>,
    /// The owned listeners that should exist, in order.
    pub listeners: Vec<ListenerSpec>,
    /// The listener brokers use among themselves (must be one of `listeners`). Empty leaves
    /// `inter.broker.listener.name` as it is.
    pub inter_broker_listener: String,
}

/// The result of [`apply_listeners`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertiesEdit {
    /// The new file content; byte-identical to the original when `changed_keys` is empty.
    pub content: String,
    /// The managed keys whose value changed, in [`MANAGED_KEYS`] order.
    pub changed_keys: Vec<String>,
}

/// Why a `server.properties` could not be read or edited. Lines are 1-based.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PropertiesError {
    /// A `\uXXXX` escape without four hex digits; Java refuses to load such a file.
    #[error("server.properties line {line}: key `{key}` has a malformed \\uXXXX escape; Java cannot load the file until it is fixed")]
    MalformedEscape { key: String, line: usize },
    /// A listener entry Kafka cannot parse.
    #[error("server.properties line {line}: {key} entry `{entry}` is malformed ({reason}); expected NAME://host:port")]
    MalformedListener {
        key: String,
        line: usize,
        entry: String,
        reason: String,
    },
    /// A protocol-map entry without `:`.
    #[error(
        "server.properties line {line}: {key} entry `{entry}` is malformed; expected NAME:PROTOCOL"
    )]
    MalformedProtocolMapEntry {
        key: String,
        line: usize,
        entry: String,
    },
    /// The file is not text kreach will edit (a NUL byte, an absurdly long line).
    #[error("server.properties {0}")]
    NotText(#[from] crate::limits::TextError),
    /// The desired settings themselves are inconsistent; a bug in whoever derived them.
    #[error("invalid listener settings: {0}")]
    InvalidSettings(String),
    /// The edited file would not start Kafka; nothing should be written.
    #[error("the edited server.properties would break Kafka's rules, so nothing should be written: {}", .violations.join("; "))]
    KafkaRules { violations: Vec<String> },
    /// The rendered file does not read back as intended; a bug in this module.
    #[error("internal error: {key} would read back as {found:?} instead of {expected:?}")]
    RoundTrip {
        key: String,
        expected: Option<String>,
        found: Option<String>,
    },
}

/// Render `original` with the managed listener entries set to `desired`. When anything changes,
/// validates the RESULT against Kafka's rules (see [`check_kafka_rules`]) before returning; on
/// violation returns Err and the caller writes nothing. When nothing changes the original is
/// returned as it is, unchecked: kreach writes nothing then, and the file is the operator's (the
/// fuzzer found this distinction; callers wanting a lint of an untouched file call
/// [`check_kafka_rules`] themselves).
///
/// Where a key is defined more than once, only the last definition is edited: it is the one
/// `java.util.Properties` (and so Kafka) uses. Earlier ones are dead text the operator wrote;
/// changing them would not change Kafka's behaviour, and removing them would touch bytes that are
/// not ours.
///
/// When a key is absent, Kafka uses its default, and a created key starts from that default minus
/// owned entries, so listeners kreach does not own keep meaning what they meant:
/// - `listeners` starts from `PLAINTEXT://:9092` (kept unless `PLAINTEXT` is owned);
/// - `advertised.listeners` starts from the non-owned entries of `listeners` (what Kafka advertised
///   implicitly), minus KRaft controller listeners, which Kafka does not advertise;
/// - `listener.security.protocol.map` starts from Kafka's whole default map. That adds a few
///   entries no listener may use, but it is the one choice that changes nothing for any listener
///   kreach does not own, including ones an operator adds later. A non-owned listener whose name is
///   not a protocol (e.g. `CONTROLLER`) had no mapping before either; Kafka rejects that, and so
///   does [`check_kafka_rules`] — its protocol cannot be guessed.
///
/// A key is created only if its value would differ from that default.
pub fn apply_listeners(
    original: &str,
    desired: &ListenerSettings,
) -> Result<PropertiesEdit, PropertiesError> {
    let plan = DesiredEntries::new(desired)?;
    crate::limits::check_text(original)?;
    let doc = Document::parse(original)?;
    let controller_names = csv_names(doc.value(CONTROLLER_LISTENER_NAMES).unwrap_or(""));

    let mut changes: Vec<Change> = Vec::new();
    let mut plan_change = |key: &'static str, base: &str, new: String| {
        if new != base {
            changes.push(Change {
                key: key.to_string(),
                definitions: doc.last_index(key).into_iter().collect(),
                value: Some(new),
            });
        }
    };

    // listeners
    let (listeners_base, line) = doc.value_or_default(LISTENERS, DEFAULT_LISTENERS);
    let listeners_new = edit_entries(listeners_base, &plan.owned, &plan.bind, &|entry| {
        listener_name(LISTENERS, line, entry)
    })?;

    // advertised.listeners
    let implicit_advertised;
    let (advertised_base, line) = match doc.last(ADVERTISED_LISTENERS) {
        Some(def) => (def.value.as_str(), def.line()),
        None => {
            let mut kept = Vec::new();
            for entry in csv_entries(listeners_base) {
                let name = listener_name(LISTENERS, line, entry)?;
                if !plan.owned.contains(&name) && !controller_names.contains(&name) {
                    kept.push(entry);
                }
            }
            implicit_advertised = kept.join(",");
            (implicit_advertised.as_str(), 0)
        }
    };
    let advertised_new = edit_entries(advertised_base, &plan.owned, &plan.advertised, &|entry| {
        listener_name(ADVERTISED_LISTENERS, line, entry)
    })?;

    // listener.security.protocol.map
    let (map_base, line) = doc.value_or_default(PROTOCOL_MAP, DEFAULT_PROTOCOL_MAP);
    let map_new = edit_entries(map_base, &plan.owned, &plan.protocols, &|entry| {
        protocol_map_entry(PROTOCOL_MAP, line, entry).map(|(name, _)| name)
    })?;

    plan_change(LISTENERS, listeners_base, listeners_new);
    plan_change(ADVERTISED_LISTENERS, advertised_base, advertised_new);
    plan_change(PROTOCOL_MAP, map_base, map_new);

    // inter.broker.listener.name
    if !desired.inter_broker_listener.is_empty() {
        let wanted = desired.inter_broker_listener.clone();
        match doc.value(INTER_BROKER_LISTENER) {
            Some(current) => plan_change(INTER_BROKER_LISTENER, current, wanted),
            None => {
                // Absent, Kafka derives the name from security.inter.broker.protocol. Writing the
                // key when that already gives the wanted name would change nothing, and setting
                // both keys is an error in Kafka.
                let implicit = doc
                    .value(SECURITY_INTER_BROKER_PROTOCOL)
                    .map(str::trim)
                    .unwrap_or("PLAINTEXT")
                    .to_uppercase();
                if implicit != wanted.to_uppercase() {
                    plan_change(INTER_BROKER_LISTENER, "", wanted);
                }
            }
        }
    }

    // listener.name.NAME.ssl.* / sasl.* of every owned listener name
    let mut owned: Vec<&String> = plan.owned.iter().collect();
    owned.sort();
    for name in owned {
        let spec = desired
            .listeners
            .iter()
            .find(|spec| spec.name.eq_ignore_ascii_case(name));
        for (key, wanted) in LISTENER_SCOPED_KEYS.iter().zip(scoped_values(spec)) {
            let key = scoped_key(name, key);
            if doc.value(&key) != wanted.as_deref() {
                let definitions = match &wanted {
                    Some(_) => doc.last_index(&key).into_iter().collect(),
                    None => doc.all_indexes(&key),
                };
                changes.push(Change {
                    key,
                    definitions,
                    value: wanted,
                });
            }
        }
    }

    if changes.is_empty() {
        return Ok(PropertiesEdit {
            content: original.to_string(),
            changed_keys: Vec::new(),
        });
    }

    let content = doc.render(&changes);
    for change in &changes {
        let found = get_property(&content, &change.key)?;
        if found != change.value {
            return Err(PropertiesError::RoundTrip {
                key: change.key.clone(),
                expected: change.value.clone(),
                found,
            });
        }
    }
    let violations = check_kafka_rules(&content);
    if !violations.is_empty() {
        return Err(PropertiesError::KafkaRules { violations });
    }
    Ok(PropertiesEdit {
        content,
        changed_keys: changes.iter().map(|c| c.key.clone()).collect(),
    })
}

/// The Java-properties value of `key` in `content` (last definition wins, as java.util.Properties
/// does), unescaped and with continuations joined. None if absent.
///
/// Errs if any `\uXXXX` escape in the file is malformed, because Java then refuses the whole file.
pub fn get_property(content: &str, key: &str) -> Result<Option<String>, PropertiesError> {
    Ok(Document::parse(content)?.value(key).map(str::to_string))
}

/// Kafka's rules over a full set of values; returns every violation.
///
/// Checked, with Kafka's defaults for absent keys: listener names are unique in `listeners` and in
/// `advertised.listeners`; no two listeners share a non-zero port; every advertised name is in
/// `listeners`; nothing advertises `0.0.0.0`; every listener name has a known protocol; the
/// inter-broker listener is advertised and is not a KRaft controller listener; and
/// `inter.broker.listener.name` and `security.inter.broker.protocol` are not both set. Broker-only
/// rules are skipped when `process.roles` lacks `broker`. A file that cannot be parsed yields the
/// parse error as its one violation.
pub fn check_kafka_rules(content: &str) -> Vec<String> {
    match Document::parse(content).and_then(|doc| kafka_violations(&doc)) {
        Ok(violations) => violations,
        Err(error) => vec![error.to_string()],
    }
}

// ---------------------------------------------------------------------------------------------
// Desired entries

/// The values kreach owns, key by key, as they appear in `server.properties`: only the owned
/// entries of each list (other entries such as `CONTROLLER://:9094` are kept where they are when
/// applied to a real file). For showing a node's desired settings, e.g. `kreachctl render`.
pub fn owned_values(desired: &ListenerSettings) -> Result<Vec<(String, String)>, PropertiesError> {
    let plan = DesiredEntries::new(desired)?;
    let join = |entries: &[Entry]| {
        entries
            .iter()
            .map(|e| e.text.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut values = vec![
        (LISTENERS.to_string(), join(&plan.bind)),
        (ADVERTISED_LISTENERS.to_string(), join(&plan.advertised)),
        (PROTOCOL_MAP.to_string(), join(&plan.protocols)),
    ];
    if !desired.inter_broker_listener.is_empty() {
        values.push((
            INTER_BROKER_LISTENER.to_string(),
            desired.inter_broker_listener.clone(),
        ));
    }
    for spec in &desired.listeners {
        for (key, value) in LISTENER_SCOPED_KEYS.iter().zip(scoped_values(Some(spec))) {
            if let Some(value) = value {
                values.push((scoped_key(&spec.name, key), value));
            }
        }
    }
    Ok(values)
}

/// Every key kreach owns for `desired`: the listener lists, the protocol map, the inter-broker
/// listener, and each listener-scoped key of every owned listener name (set or to be absent).
pub fn owned_keys(desired: &ListenerSettings) -> Vec<String> {
    let mut keys: Vec<String> = MANAGED_KEYS.iter().map(|key| key.to_string()).collect();
    let mut names: Vec<&str> = desired.owned_names.iter().map(String::as_str).collect();
    names.extend(desired.listeners.iter().map(|l| l.name.as_str()));
    let mut seen = HashSet::new();
    for name in names {
        if seen.insert(name.to_uppercase()) {
            keys.extend(LISTENER_SCOPED_KEYS.iter().map(|key| scoped_key(name, key)));
        }
    }
    keys
}

/// Kafka's name for where a broker config's value comes from (DescribeConfigs' config source).
pub fn config_source_name(source: i8) -> &'static str {
    match source {
        1 => "TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        _ => "UNKNOWN",
    }
}

/// A dynamic broker config (set over the Kafka protocol, kept in the cluster's metadata) that
/// Kafka uses instead of what server.properties says for a key kreach owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicOverride {
    pub key: String,
    /// None when the broker hides it (a sensitive config, e.g. a JAAS line).
    pub value: Option<String>,
    /// `DYNAMIC_BROKER_CONFIG` (this broker) or `DYNAMIC_DEFAULT_BROKER_CONFIG` (every broker).
    pub source: &'static str,
    /// What server.properties has for the key (None: absent).
    pub file_value: Option<String>,
}

impl std::fmt::Display for DynamicOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is set dynamically ({}: {}), which Kafka uses instead of server.properties' {}",
            self.key,
            self.source,
            self.value
                .as_deref()
                .map_or("value hidden, sensitive".to_string(), |v| format!("{v:?}")),
            self.file_value
                .as_deref()
                .map_or("absence of it".to_string(), |v| format!("{v:?}"))
        )
    }
}

/// Which of a broker's configs (`(key, value, config source)` as DescribeConfigs lists them) are
/// dynamic overrides of keys kreach owns whose value is not the one in `file` (server.properties
/// as written): those hide kreach's edits. An override equal to the file hides nothing (kreach's
/// own key store reload sets one) and is left out.
pub fn hidden_by_dynamic(
    desired: &ListenerSettings,
    file: &str,
    configs: &[(String, Option<String>, i8)],
) -> Vec<DynamicOverride> {
    let owned = owned_keys(desired);
    let document = Document::parse(file).ok();
    configs
        .iter()
        .filter(|(_, _, source)| matches!(source, 2 | 3))
        .filter(|(key, _, _)| owned.iter().any(|owned| owned == key))
        .filter_map(|(key, value, source)| {
            let file_value = document
                .as_ref()
                .and_then(|doc| doc.value(key))
                .map(str::to_string);
            if value.is_some() && *value == file_value {
                return None;
            }
            Some(DynamicOverride {
                key: key.clone(),
                value: value.clone(),
                source: config_source_name(*source),
                file_value,
            })
        })
        .collect()
}

/// `desired`, validated and rendered into the text of each list's entries.
struct DesiredEntries {
    /// Upper-cased owned names.
    owned: HashSet<String>,
    bind: Vec<Entry>,
    advertised: Vec<Entry>,
    protocols: Vec<Entry>,
}

/// A rendered list entry and its upper-cased listener name.
struct Entry {
    name: String,
    text: String,
}

impl DesiredEntries {
    fn new(desired: &ListenerSettings) -> Result<Self, PropertiesError> {
        let invalid = |message: String| Err(PropertiesError::InvalidSettings(message));
        let mut owned = HashSet::new();
        for name in &desired.owned_names {
            if !is_listener_name(name) {
                return invalid(format!(
                    "owned listener name `{name}` must be letters, digits, `_` and `-` only"
                ));
            }
            owned.insert(name.to_uppercase());
        }
        let mut plan = DesiredEntries {
            owned,
            bind: Vec::new(),
            advertised: Vec::new(),
            protocols: Vec::new(),
        };
        for spec in &desired.listeners {
            let name = &spec.name;
            if !is_listener_name(name) {
                return invalid(format!(
                    "listener name `{name}` must be letters, digits, `_` and `-` only"
                ));
            }
            let upper = name.to_uppercase();
            if plan.bind.iter().any(|e| e.name == upper) {
                return invalid(format!("listener {upper} is listed twice"));
            }
            for (field, host) in [
                ("bind_host", &spec.bind_host),
                ("advertised_host", &spec.advertised_host),
            ] {
                if !is_host(host) {
                    return invalid(format!(
                        "listener {upper}: {field} `{host}` is not a hostname or IP address"
                    ));
                }
            }
            if !SECURITY_PROTOCOLS.contains(&spec.security_protocol.to_uppercase().as_str()) {
                return invalid(format!(
                    "listener {upper}: security protocol `{}` is not one of {}",
                    spec.security_protocol,
                    SECURITY_PROTOCOLS.join(", ")
                ));
            }
            let entry = |text: String| Entry {
                name: upper.clone(),
                text,
            };
            plan.bind.push(entry(format!(
                "{name}://{}:{}",
                url_host(&spec.bind_host),
                spec.port
            )));
            plan.advertised.push(entry(format!(
                "{name}://{}:{}",
                url_host(&spec.advertised_host),
                spec.port
            )));
            plan.protocols
                .push(entry(format!("{name}:{}", spec.security_protocol)));
            plan.owned.insert(upper);
        }
        let inter = &desired.inter_broker_listener;
        if !inter.is_empty() && !plan.bind.iter().any(|e| e.name == inter.to_uppercase()) {
            return invalid(format!(
                "inter-broker listener `{inter}` is not one of the desired listeners"
            ));
        }
        Ok(plan)
    }
}

fn is_listener_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Kafka's listener pattern accepts these host characters, optionally inside brackets.
fn is_host(host: &str) -> bool {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '%' | '.' | '_' | ':'))
}

/// IPv6 addresses need brackets so the port stays unambiguous.
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Rewrites a comma-separated list: owned entries are updated in place or removed, new ones go
/// after the last owned entry (or at the end), and everything else keeps its text and position.
fn edit_entries(
    base: &str,
    owned: &HashSet<String>,
    desired: &[Entry],
    name_of: &dyn Fn(&str) -> Result<String, PropertiesError>,
) -> Result<String, PropertiesError> {
    let segments = csv_segments(base);
    let mut names = Vec::with_capacity(segments.len());
    for segment in &segments {
        let entry = segment.trim();
        names.push(if entry.is_empty() {
            None
        } else {
            Some(name_of(entry)?)
        });
    }
    let is_owned = |name: &Option<String>| name.as_ref().is_some_and(|n| owned.contains(n));
    let last_owned = names.iter().rposition(is_owned);
    // Follow the operator's style: "A, B" gets ", C" appended, "A,B" gets ",C".
    let spaced = segments
        .iter()
        .skip(1)
        .any(|s| s.starts_with(char::is_whitespace));
    let mut placed = vec![false; desired.len()];
    let mut out: Vec<String> = Vec::new();
    let place_rest = |out: &mut Vec<String>, placed: &mut [bool]| {
        for (entry, done) in desired.iter().zip(placed.iter_mut()) {
            if !*done {
                *done = true;
                let space = if spaced && !out.is_empty() { " " } else { "" };
                out.push(format!("{space}{}", entry.text));
            }
        }
    };
    for (index, (segment, name)) in segments.iter().zip(&names).enumerate() {
        match name {
            Some(name) if owned.contains(name) => {
                // A second entry for the same owned name is dropped: Kafka would reject it.
                if let Some(d) = desired.iter().position(|e| &e.name == name) {
                    if !placed[d] {
                        placed[d] = true;
                        let trimmed = segment.trim_start();
                        let lead = &segment[..segment.len() - trimmed.len()];
                        let trail = &trimmed[trimmed.trim_end().len()..];
                        out.push(format!("{lead}{}{trail}", desired[d].text));
                    }
                }
            }
            _ => out.push(segment.to_string()),
        }
        if Some(index) == last_owned {
            place_rest(&mut out, &mut placed);
        }
    }
    place_rest(&mut out, &mut placed);
    // A removed first entry may leave the next one's leading space at the start of the value.
    Ok(out.join(",").trim_start().to_string())
}

// ---------------------------------------------------------------------------------------------
// Kafka's rules

/// A parsed `NAME://host:port`.
struct Endpoint {
    /// Upper-cased, as Kafka normalises it.
    name: String,
    host: String,
    port: u16,
}

fn kafka_violations(doc: &Document<'_>) -> Result<Vec<String>, PropertiesError> {
    let mut violations = Vec::new();
    let label = |key: &str| match doc.last(key) {
        Some(def) => format!("{key} (line {})", def.line()),
        None => format!("{key} (not set)"),
    };
    let controller_names = csv_names(doc.value(CONTROLLER_LISTENER_NAMES).unwrap_or(""));
    let is_broker = doc
        .value(PROCESS_ROLES)
        .is_none_or(|roles| csv_entries(roles).any(|r| r.eq_ignore_ascii_case("broker")));

    let (value, line) = doc.value_or_default(LISTENERS, DEFAULT_LISTENERS);
    let listeners = endpoints(LISTENERS, line, value)?;
    let listeners_label = label(LISTENERS);
    duplicate_names(&listeners_label, &listeners, &mut violations);
    for (i, a) in listeners.iter().enumerate() {
        for b in &listeners[i + 1..] {
            if a.port != 0 && a.port == b.port {
                violations.push(format!(
                    "{listeners_label}: {} and {} both use port {}",
                    a.name, b.name, a.port
                ));
            }
        }
    }

    let advertised_label;
    let advertised: Vec<&Endpoint>;
    let explicit_advertised;
    match doc.last(ADVERTISED_LISTENERS) {
        Some(def) => {
            explicit_advertised = endpoints(ADVERTISED_LISTENERS, def.line(), &def.value)?;
            advertised_label = label(ADVERTISED_LISTENERS);
            advertised = explicit_advertised.iter().collect();
            duplicate_names(&advertised_label, &explicit_advertised, &mut violations);
            for endpoint in &explicit_advertised {
                if !listeners.iter().any(|l| l.name == endpoint.name) {
                    violations.push(format!(
                        "{advertised_label}: {} is not in listeners",
                        endpoint.name
                    ));
                }
            }
        }
        None => {
            advertised_label = format!("{ADVERTISED_LISTENERS} (not set, so listeners)");
            advertised = listeners
                .iter()
                .filter(|l| !controller_names.contains(&l.name))
                .collect();
        }
    }
    if is_broker {
        for endpoint in &advertised {
            if endpoint.host == "0.0.0.0" {
                violations.push(format!(
                    "{advertised_label}: {} advertises 0.0.0.0, which clients cannot connect to; advertise a routable host",
                    endpoint.name
                ));
            }
        }
    }

    let mut seen = HashSet::new();
    let used_names = listeners
        .iter()
        .chain(advertised.iter().copied())
        .map(|e| e.name.as_str())
        .filter(|name| seen.insert(*name));
    match doc.last(PROTOCOL_MAP) {
        Some(def) => {
            let map_label = label(PROTOCOL_MAP);
            let mut mapped = HashSet::new();
            for entry in csv_entries(&def.value) {
                let (name, protocol) = protocol_map_entry(PROTOCOL_MAP, def.line(), entry)?;
                if !SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
                    violations.push(format!(
                        "{map_label}: {name} maps to unknown security protocol {protocol} (known: {})",
                        SECURITY_PROTOCOLS.join(", ")
                    ));
                }
                mapped.insert(name);
            }
            for name in used_names {
                if !mapped.contains(name) {
                    violations.push(format!("{map_label}: listener {name} has no entry"));
                }
            }
        }
        None => {
            for name in used_names {
                if !SECURITY_PROTOCOLS.contains(&name) {
                    violations.push(format!(
                        "{PROTOCOL_MAP} (not set): listener {name} is not a security protocol name, so it needs an entry {name}:PROTOCOL"
                    ));
                }
            }
        }
    }

    let inter_broker = doc
        .value(INTER_BROKER_LISTENER)
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let inter_protocol = doc
        .value(SECURITY_INTER_BROKER_PROTOCOL)
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if inter_broker.is_some() && inter_protocol.is_some() {
        violations.push(format!(
            "{} and {}: only one may be set; remove {SECURITY_INTER_BROKER_PROTOCOL}",
            label(INTER_BROKER_LISTENER),
            label(SECURITY_INTER_BROKER_PROTOCOL)
        ));
    }
    if is_broker {
        let (name, inter_label) = match (inter_broker, inter_protocol) {
            (Some(name), _) => (name.to_uppercase(), label(INTER_BROKER_LISTENER)),
            (None, Some(protocol)) => (
                protocol.to_uppercase(),
                format!("{} (line {})", SECURITY_INTER_BROKER_PROTOCOL, {
                    doc.last(SECURITY_INTER_BROKER_PROTOCOL)
                        .map_or(0, Definition::line)
                }),
            ),
            (None, None) => (
                "PLAINTEXT".to_string(),
                format!("{INTER_BROKER_LISTENER} (not set, so PLAINTEXT)"),
            ),
        };
        if controller_names.contains(&name) {
            violations.push(format!(
                "{inter_label}: {name} is a controller listener ({CONTROLLER_LISTENER_NAMES}); brokers cannot use it among themselves"
            ));
        } else if !advertised.iter().any(|e| e.name == name) {
            violations.push(format!(
                "{inter_label}: inter-broker listener {name} is not in {advertised_label}"
            ));
        }
    }
    Ok(violations)
}

fn duplicate_names(label: &str, endpoints: &[Endpoint], violations: &mut Vec<String>) {
    let mut seen = HashSet::new();
    let mut reported = HashSet::new();
    for endpoint in endpoints {
        if !seen.insert(&endpoint.name) && reported.insert(&endpoint.name) {
            violations.push(format!(
                "{label}: listener {} is defined twice",
                endpoint.name
            ));
        }
    }
}

fn endpoints(key: &str, line: usize, value: &str) -> Result<Vec<Endpoint>, PropertiesError> {
    csv_entries(value)
        .map(|entry| {
            parse_endpoint(entry).map_err(|reason| PropertiesError::MalformedListener {
                key: key.to_string(),
                line,
                entry: entry.to_string(),
                reason,
            })
        })
        .collect()
}

fn listener_name(key: &str, line: usize, entry: &str) -> Result<String, PropertiesError> {
    let mut endpoint = endpoints(key, line, entry)?;
    Ok(endpoint.pop().map(|e| e.name).unwrap_or_default())
}

/// Parses like Kafka's `(.*)://\[?(host)\]?:(port)`, but rejects ports outside 0–65535.
fn parse_endpoint(entry: &str) -> Result<Endpoint, String> {
    let (name, address) = entry
        .rsplit_once("://")
        .ok_or_else(|| "no `://`".to_string())?;
    if name.trim().is_empty() {
        return Err("no listener name".to_string());
    }
    let (host, port) = match address.strip_prefix('[') {
        Some(bracketed) => {
            let (host, rest) = bracketed
                .split_once(']')
                .ok_or_else(|| "`[` without `]`".to_string())?;
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| "no `:port`".to_string())?;
            (host, port)
        }
        None => address
            .rsplit_once(':')
            .ok_or_else(|| "no `:port`".to_string())?,
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port `{port}`"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port} is not in 0-65535"))?;
    Ok(Endpoint {
        name: name.trim().to_uppercase(),
        host: host.to_string(),
        port,
    })
}

/// `NAME:PROTOCOL`, both upper-cased as Kafka does.
fn protocol_map_entry(
    key: &str,
    line: usize,
    entry: &str,
) -> Result<(String, String), PropertiesError> {
    match entry.rsplit_once(':') {
        Some((name, protocol)) if !name.trim().is_empty() => {
            Ok((name.trim().to_uppercase(), protocol.trim().to_uppercase()))
        }
        _ => Err(PropertiesError::MalformedProtocolMapEntry {
            key: key.to_string(),
            line,
            entry: entry.to_string(),
        }),
    }
}

/// The raw comma-separated segments of a list value, whitespace included; none for a blank value.
fn csv_segments(value: &str) -> Vec<&str> {
    if value.trim().is_empty() {
        Vec::new()
    } else {
        value.split(',').collect()
    }
}

/// The non-empty trimmed entries, as Kafka's CSV parsing sees them.
fn csv_entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

fn csv_names(value: &str) -> Vec<String> {
    csv_entries(value).map(str::to_uppercase).collect()
}

// ---------------------------------------------------------------------------------------------
// Java properties text

/// A natural line: its text and its terminator (`\n`, `\r\n`, `\r`, or empty at end of file).
struct Line<'a> {
    text: &'a str,
    eol: &'a str,
}

/// One key/value definition, which may span several natural lines.
struct Definition {
    key: String,
    value: String,
    /// 0-based index of the first natural line.
    first_line: usize,
    /// 0-based index of the last natural line (a continuation or the blank line ending one).
    last_line: usize,
    /// Everything before the value as written: indentation, key, separator. Reused verbatim so
    /// that a rewrite changes only the value.
    prefix: String,
}

impl Definition {
    fn line(&self) -> usize {
        self.first_line + 1
    }
}

struct Document<'a> {
    lines: Vec<Line<'a>>,
    definitions: Vec<Definition>,
}

struct Change {
    key: String,
    /// Indexes into `Document::definitions` to rewrite (the last one) or, when `value` is None,
    /// to remove (all of them); empty appends the key.
    definitions: Vec<usize>,
    /// None removes the key.
    value: Option<String>,
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

fn ends_with_odd_backslashes(text: &str) -> bool {
    text.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

impl<'a> Document<'a> {
    /// Groups natural lines into definitions the way `Properties.load` reads logical lines.
    fn parse(content: &'a str) -> Result<Self, PropertiesError> {
        let lines = split_lines(content);
        let mut definitions = Vec::new();
        let mut index = 0;
        while index < lines.len() {
            let text = lines[index].text;
            let body = text.trim_start_matches(is_blank);
            // Comment lines never continue, even when they end in a backslash.
            if body.is_empty() || body.starts_with('#') || body.starts_with('!') {
                index += 1;
                continue;
            }
            let indent = &text[..text.len() - body.len()];
            let first_line = index;
            let mut logical = body.to_string();
            while ends_with_odd_backslashes(&logical) {
                logical.pop();
                // A trailing backslash at end of file is dropped, as Java does.
                if index + 1 == lines.len() {
                    break;
                }
                index += 1;
                let next = lines[index].text.trim_start_matches(is_blank);
                logical.push_str(next);
                // Java ends the logical line at a blank continuation line (which it consumes).
                if next.is_empty() {
                    break;
                }
            }
            let (key_end, value_start) = split_key_value(&logical);
            let line = first_line + 1;
            let raw_key = &logical[..key_end];
            let malformed = || PropertiesError::MalformedEscape {
                key: raw_key.to_string(),
                line,
            };
            let key = unescape(raw_key).ok_or_else(malformed)?;
            let value = unescape(&logical[value_start..]).ok_or_else(malformed)?;
            let mut prefix = format!("{indent}{}", &logical[..value_start]);
            if key_end == logical.len() {
                // A bare key has no separator to reuse.
                prefix.push('=');
            }
            definitions.push(Definition {
                key,
                value,
                first_line,
                last_line: index,
                prefix,
            });
            index += 1;
        }
        Ok(Document { lines, definitions })
    }

    fn last_index(&self, key: &str) -> Option<usize> {
        self.definitions.iter().rposition(|d| d.key == key)
    }

    fn all_indexes(&self, key: &str) -> Vec<usize> {
        (0..self.definitions.len())
            .filter(|&i| self.definitions[i].key == key)
            .collect()
    }

    fn last(&self, key: &str) -> Option<&Definition> {
        self.last_index(key).map(|i| &self.definitions[i])
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.last(key).map(|d| d.value.as_str())
    }

    /// The effective value and its 1-based line; Kafka's default (line 0) when absent.
    fn value_or_default<'s>(&'s self, key: &str, default: &'s str) -> (&'s str, usize) {
        self.last(key)
            .map_or((default, 0), |d| (d.value.as_str(), d.line()))
    }

    fn render(&self, changes: &[Change]) -> String {
        // Rewritten (Some) or removed (None) definitions, by their first line.
        let rewrites: BTreeMap<usize, (&Definition, Option<&str>)> = changes
            .iter()
            .flat_map(|c| {
                c.definitions.iter().map(|&i| {
                    let def = &self.definitions[i];
                    (def.first_line, (def, c.value.as_deref()))
                })
            })
            .collect();
        let mut out = String::new();
        let mut index = 0;
        while index < self.lines.len() {
            if let Some((def, value)) = rewrites.get(&index) {
                if let Some(value) = value {
                    out.push_str(&def.prefix);
                    out.push_str(&escape_value(value));
                    out.push_str(self.lines[def.last_line].eol);
                }
                index = def.last_line + 1;
            } else {
                out.push_str(self.lines[index].text);
                out.push_str(self.lines[index].eol);
                index += 1;
            }
        }
        let appends: Vec<(&str, &str)> = changes
            .iter()
            .filter(|c| c.definitions.is_empty())
            .filter_map(|c| Some((c.key.as_str(), c.value.as_deref()?)))
            .collect();
        if appends.is_empty() {
            return out;
        }
        let eol = self
            .lines
            .iter()
            .map(|l| l.eol)
            .find(|e| !e.is_empty())
            .unwrap_or("\n");
        if let Some(last) = self.lines.last() {
            if last.eol.is_empty() {
                out.push_str(eol);
            }
            // A definition left dangling on a continuation backslash at end of file would swallow
            // our first appended line; a blank line ends it without changing its value.
            let last_index = self.lines.len() - 1;
            let dangling = self.definitions.last().is_some_and(|d| {
                d.last_line == last_index
                    && !rewrites.contains_key(&d.first_line)
                    && ends_with_odd_backslashes(last.text)
            });
            if dangling {
                out.push_str(eol);
            }
        }
        for (key, value) in appends {
            let _ = write!(out, "{key}={}{eol}", escape_value(value));
        }
        out
    }
}

fn split_lines(content: &str) -> Vec<Line<'_>> {
    let bytes = content.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        let end = match bytes[index] {
            b'\n' => index + 1,
            b'\r' if bytes.get(index + 1) == Some(&b'\n') => index + 2,
            b'\r' => index + 1,
            _ => {
                index += 1;
                continue;
            }
        };
        lines.push(Line {
            text: &content[start..index],
            eol: &content[index..end],
        });
        start = end;
        index = end;
    }
    if start < bytes.len() {
        lines.push(Line {
            text: &content[start..],
            eol: "",
        });
    }
    lines
}

/// Where the key ends and the value starts in a logical line, as `Properties.load` decides: the
/// key ends at the first unescaped `=`, `:` or blank; blanks and at most one `=`/`:` follow.
fn split_key_value(logical: &str) -> (usize, usize) {
    let bytes = logical.as_bytes();
    let is_blank_byte = |b: u8| matches!(b, b' ' | b'\t' | 0x0c);
    let mut key_end = bytes.len();
    let mut value_start = bytes.len();
    let mut has_separator = false;
    let mut escaped = false;
    for (index, &b) in bytes.iter().enumerate() {
        if !escaped && (b == b'=' || b == b':') {
            key_end = index;
            value_start = index + 1;
            has_separator = true;
            break;
        }
        if !escaped && is_blank_byte(b) {
            key_end = index;
            value_start = index + 1;
            break;
        }
        escaped = b == b'\\' && !escaped;
    }
    while value_start < bytes.len() {
        let b = bytes[value_start];
        if !is_blank_byte(b) {
            if !has_separator && (b == b'=' || b == b':') {
                has_separator = true;
            } else {
                break;
            }
        }
        value_start += 1;
    }
    (key_end, value_start)
}

/// Java's `loadConvert`; None for a malformed `\uXXXX`.
fn unescape(raw: &str) -> Option<String> {
    // `\u` escapes are UTF-16 code units, so surrogate pairs must be joined.
    let mut units: Vec<u16> = Vec::with_capacity(raw.len());
    let mut chars = raw.chars();
    let mut buffer = [0u16; 2];
    while let Some(c) = chars.next() {
        let c = if c == '\\' {
            match chars.next() {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    if hex.len() != 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return None;
                    }
                    units.push(u16::from_str_radix(&hex, 16).ok()?);
                    continue;
                }
                Some('t') => '\t',
                Some('n') => '\n',
                Some('r') => '\r',
                Some('f') => '\x0c',
                Some(other) => other,
                None => break,
            }
        } else {
            c
        };
        units.extend_from_slice(c.encode_utf16(&mut buffer));
    }
    Some(String::from_utf16_lossy(&units))
}

/// The inverse of [`unescape`] for values: what must be escaped for `Properties.load` to read the
/// value back. `:` and `=` need no escape in a value, and leaving them keeps listeners readable.
/// Non-ASCII is escaped because Kafka loads the file as ISO-8859-1.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            ' ' if index == 0 => out.push_str("\\ "),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buffer = [0u16; 2];
                for unit in c.encode_utf16(&mut buffer) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(content: &str, key: &str) -> Option<String> {
        get_property(content, key).unwrap()
    }

    fn secure_settings(external_protocol: &str, mechanism: Option<&str>) -> ListenerSettings {
        let tls = matches!(external_protocol, "SSL" | "SASL_SSL").then(|| ListenerTls {
            keystore: "/etc/kafka/kreach-tls/external.keystore.pem".into(),
            truststore: "/etc/kafka/kreach-tls/ca.pem".into(),
        });
        ListenerSettings {
            owned_names: vec!["INTERNAL".into(), "EXTERNAL".into()],
            listeners: vec![
                ListenerSpec {
                    name: "INTERNAL".into(),
                    bind_host: "0.0.0.0".into(),
                    port: 9092,
                    advertised_host: "10.0.0.1".into(),
                    security_protocol: "PLAINTEXT".into(),
                    tls: None,
                    sasl_mechanism: None,
                },
                ListenerSpec {
                    name: "EXTERNAL".into(),
                    bind_host: "0.0.0.0".into(),
                    port: 9093,
                    advertised_host: "198.19.0.1".into(),
                    security_protocol: external_protocol.into(),
                    tls,
                    sasl_mechanism: mechanism.map(str::to_string),
                },
            ],
            inter_broker_listener: "INTERNAL".into(),
        }
    }

    #[test]
    fn dynamic_overrides_of_owned_keys_that_differ_from_the_file_are_found() {
        let settings = secure_settings("SSL", None);
        let original = "node.id=1\nlisteners=INTERNAL://0.0.0.0:9092\n\
                        listener.security.protocol.map=INTERNAL:PLAINTEXT\n";
        let file = apply_listeners(original, &settings).unwrap().content;
        let keystore = "/etc/kafka/kreach-tls/external.keystore.pem";
        let configs = vec![
            // Hides kreach's advertised address.
            (
                "advertised.listeners".to_string(),
                Some("INTERNAL://old-name:9092".to_string()),
                2,
            ),
            // kreach's own key store reload: the same value as the file, hides nothing.
            (
                "listener.name.external.ssl.keystore.location".to_string(),
                Some(keystore.to_string()),
                2,
            ),
            // A cluster-wide default for a key kreach owns, hidden as sensitive.
            (
                "listener.name.internal.scram-sha-512.sasl.jaas.config".to_string(),
                None,
                3,
            ),
            // Not kreach's key, and a static one of kreach's: neither is an override of ours.
            ("log.retention.ms".to_string(), Some("1".to_string()), 2),
            ("listeners".to_string(), Some("X://:1".to_string()), 4),
        ];
        let found = hidden_by_dynamic(&settings, &file, &configs);
        let keys: Vec<&str> = found.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "advertised.listeners",
                "listener.name.internal.scram-sha-512.sasl.jaas.config"
            ]
        );
        let text = found[0].to_string();
        assert!(
            text.contains("DYNAMIC_BROKER_CONFIG: \"INTERNAL://old-name:9092\"")
                && text.contains("INTERNAL://10.0.0.1:9092"),
            "{text}"
        );
        assert!(found[1]
            .to_string()
            .contains("DYNAMIC_DEFAULT_BROKER_CONFIG: value hidden"));
    }

    #[test]
    fn a_sasl_ssl_listener_gets_its_pem_files_and_scram_settings_and_loses_them_again() {
        let original = "# broker\nnode.id=1\nlisteners=INTERNAL://0.0.0.0:9092\n\
                        advertised.listeners=INTERNAL://10.0.0.1:9092\n\
                        listener.security.protocol.map=INTERNAL:PLAINTEXT\n\
                        inter.broker.listener.name=INTERNAL\nlog.dirs=/data\n";
        let secure = secure_settings("SASL_SSL", Some("SCRAM-SHA-512"));
        let edit = apply_listeners(original, &secure).unwrap();
        let content = &edit.content;
        for (key, wanted) in [
            ("listener.name.external.ssl.keystore.type", "PEM"),
            (
                "listener.name.external.ssl.keystore.location",
                "/etc/kafka/kreach-tls/external.keystore.pem",
            ),
            (
                "listener.name.external.ssl.truststore.location",
                "/etc/kafka/kreach-tls/ca.pem",
            ),
            (
                "listener.name.external.sasl.enabled.mechanisms",
                "SCRAM-SHA-512",
            ),
            (
                "listener.name.external.scram-sha-512.sasl.jaas.config",
                SCRAM_JAAS,
            ),
        ] {
            assert_eq!(
                value(content, key).as_deref(),
                Some(wanted),
                "{key}\n{content}"
            );
        }
        assert_eq!(
            value(
                content,
                "listener.name.external.scram-sha-256.sasl.jaas.config"
            ),
            None
        );
        assert_eq!(
            value(content, "listener.security.protocol.map").as_deref(),
            Some("INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL")
        );
        assert!(edit
            .changed_keys
            .contains(&"listener.name.external.sasl.enabled.mechanisms".to_string()));
        assert!(
            content.starts_with("# broker\nnode.id=1\n") && content.contains("log.dirs=/data\n")
        );
        // Applying again changes nothing.
        assert!(apply_listeners(content, &secure)
            .unwrap()
            .changed_keys
            .is_empty());

        // An operator's duplicate of an owned key is dead text while ours is last; going back to
        // PLAINTEXT removes every definition, so no earlier one comes back to life.
        let duplicated = content.replace(
            "log.dirs=/data\n",
            "log.dirs=/data\nlistener.name.external.ssl.keystore.type=JKS\n",
        );
        let duplicated =
            format!("listener.name.external.sasl.enabled.mechanisms=PLAIN\n{duplicated}");
        let plain = apply_listeners(&duplicated, &secure_settings("PLAINTEXT", None)).unwrap();
        assert!(
            !plain.content.contains("listener.name.external."),
            "{}",
            plain.content
        );
        assert!(plain.content.contains("log.dirs=/data\n"));
        assert_eq!(
            value(&plain.content, "listener.security.protocol.map").as_deref(),
            Some("INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT")
        );
    }

    #[test]
    fn separators_follow_java() {
        assert_eq!(value("a=1", "a").as_deref(), Some("1"));
        assert_eq!(value("a : 1", "a").as_deref(), Some("1"));
        assert_eq!(value("  a   1 ", "a").as_deref(), Some("1 "));
        assert_eq!(value("a = = 1", "a").as_deref(), Some("= 1"));
        assert_eq!(value("a", "a").as_deref(), Some(""));
        assert_eq!(value("a\\=b=c", "a=b").as_deref(), Some("c"));
        assert_eq!(value("a\\ b c", "a b").as_deref(), Some("c"));
    }

    #[test]
    fn last_definition_wins() {
        assert_eq!(value("a=1\na=2\n", "a").as_deref(), Some("2"));
    }

    #[test]
    fn continuations_join_and_skip_indentation() {
        assert_eq!(value("a=1,\\\n   2\n", "a").as_deref(), Some("1,2"));
        assert_eq!(value("a=1,\\\r\n\t2", "a").as_deref(), Some("1,2"));
        // An even number of backslashes is an escaped backslash, not a continuation.
        assert_eq!(value("a=1\\\\\nb=2", "a").as_deref(), Some("1\\"));
        // A blank line ends a continuation; the next line is its own definition.
        assert_eq!(value("a=1\\\n\nb=2", "a").as_deref(), Some("1"));
        assert_eq!(value("a=1\\\n\nb=2", "b").as_deref(), Some("2"));
        // A continuation line starting with # is not a comment.
        assert_eq!(value("a=1\\\n#2", "a").as_deref(), Some("1#2"));
        // Comment lines never continue.
        assert_eq!(value("#x\\\na=1", "a").as_deref(), Some("1"));
        // A backslash at end of file is dropped.
        assert_eq!(value("a=1\\", "a").as_deref(), Some("1"));
    }

    #[test]
    fn escapes_follow_java() {
        assert_eq!(value("a=\\u0041\\t\\x", "a").as_deref(), Some("A\tx"));
        assert_eq!(value("a=\\uD83D\\uDE00", "a").as_deref(), Some("😀"));
        assert_eq!(
            get_property("# c\nb=\\u12", "a"),
            Err(PropertiesError::MalformedEscape {
                key: "b".into(),
                line: 2
            })
        );
    }

    #[test]
    fn escape_value_round_trips() {
        for original in [" lead", "a\\b", "tab\there", "é😀", "x:y=z", ""] {
            let content = format!("k={}", escape_value(original));
            assert_eq!(value(&content, "k").as_deref(), Some(original), "{content}");
        }
    }

    #[test]
    fn appending_after_a_dangling_continuation_keeps_both_values() {
        let desired = ListenerSettings {
            owned_names: vec![],
            listeners: vec![ListenerSpec {
                name: "PLAINTEXT".into(),
                bind_host: String::new(),
                port: 9092,
                advertised_host: "h".into(),
                security_protocol: "PLAINTEXT".into(),
                tls: None,
                sasl_mechanism: None,
            }],
            inter_broker_listener: String::new(),
        };
        let edit = apply_listeners("log.dirs=/data\\", &desired).unwrap();
        assert_eq!(
            edit.content,
            "log.dirs=/data\\\n\nadvertised.listeners=PLAINTEXT://h:9092\n"
        );
        assert_eq!(value(&edit.content, "log.dirs").as_deref(), Some("/data"));
    }

    #[test]
    fn endpoints_parse_like_kafka() {
        let e = parse_endpoint("external://[::1]:9093").unwrap();
        assert_eq!(
            (e.name.as_str(), e.host.as_str(), e.port),
            ("EXTERNAL", "::1", 9093)
        );
        let e = parse_endpoint("A://:0").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("", 0));
        assert!(parse_endpoint("A:9092").is_err());
        assert!(parse_endpoint("A://host:99999").is_err());
        assert!(parse_endpoint("A://host:").is_err());
        assert!(parse_endpoint("A://host").is_err());
    }

    #[test]
    fn duplicate_names_are_reported_once_per_extra_definition() {
        let violations = check_kafka_rules("listeners=PLAINTEXT://:1,PLAINTEXT://:2\n");
        assert_eq!(
            violations,
            vec!["listeners (line 1): listener PLAINTEXT is defined twice".to_string()]
        );
    }
}
