//! The agent's own config (`/etc/kreach/agent.toml`).
//!
//! Owns the host facts that are a security boundary: which files and which unit this agent may
//! touch. They come only from this local file, never from the coordinator. Unknown keys are errors
//! so that a typo (`kafka_propertes`) is not silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's node name in the cluster spec.
    pub node: String,
    /// Where the agent keeps its applied state, backups and lock.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// What this host is, as `key = "value"` pairs (`cluster = "spark-prod"`, `role = "task"`):
    /// reported with its facts, for the coordinator's `kreachctl nodes` and client groups.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub manage: ManageConfig,
    #[serde(default)]
    pub service_manager: ServiceManagerConfig,
    /// Absent: the agent runs stand-alone and enforces what `apply-local` last applied.
    pub coordinator: Option<CoordinatorConfig>,
    /// Client hosts: how often reachability is checked (see [`crate::reach`]).
    #[serde(default)]
    pub reachability: ReachabilityConfig,
    /// Prometheus metrics (see [`crate::metrics`]); off unless `listen` is set.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[metrics]`: `GET /metrics` over plain HTTP on `listen`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<std::net::SocketAddr>,
}

/// `[reachability]`: a client agent checks every broker endpoint after each apply and every
/// `period` (e.g. "30s"), and reports only what changed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachabilityConfig {
    #[serde(
        default = "default_reachability_period",
        deserialize_with = "deserialize_duration"
    )]
    pub period: std::time::Duration,
    /// How broker names are resolved for the checks.
    #[serde(default)]
    pub resolve: Resolve,
    /// On a SASL listener: the SCRAM user the check logs in as (with `sasl_password_file`), so
    /// the check proves the login works from this host as well as the connection.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// A file holding that user's password (the first line; keep it 0600). Read at every check.
    #[serde(default)]
    pub sasl_password_file: Option<std::path::PathBuf>,
}

/// `[reachability] resolve`: where a check looks broker names up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolve {
    /// The host's resolver (getaddrinfo: nsswitch, `/etc/hosts`, DNS), as a Kafka client on the
    /// host resolves.
    #[default]
    System,
    /// Only `[manage] hosts_file`, read as a resolver reads it: for hosts whose resolver does not
    /// read that file (a sandbox such as the quickstart, or a client whose programs are given a
    /// hosts file of their own).
    HostsFile,
}

impl Default for ReachabilityConfig {
    fn default() -> Self {
        ReachabilityConfig {
            period: default_reachability_period(),
            resolve: Resolve::default(),
            sasl_username: None,
            sasl_password_file: None,
        }
    }
}

fn default_reachability_period() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

use kreach_domain::spec::deserialize_duration;

/// Where the coordinator is and how this node proves who it is (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// `https://host:port`, or a list of them (the coordinators of a highly available setup,
    /// tried in turn); `http://` only with `insecure = true` on a loopback host.
    pub url: CoordinatorUrls,
    /// PEM: the CA that signed the coordinator's certificate.
    pub ca: Option<PathBuf>,
    /// PEM: this node's certificate (from `kreachctl certs init`), naming the node.
    pub cert: Option<PathBuf>,
    /// PEM: the private key of `cert`.
    pub key: Option<PathBuf>,
    /// Plaintext HTTP/2, for a coordinator on the same host (tests, a local sandbox).
    #[serde(default)]
    pub insecure: bool,
    /// How often the host facts are read again; a change is reported at once (e.g. "30s").
    #[serde(
        default = "default_facts_period",
        deserialize_with = "deserialize_duration"
    )]
    pub facts_period: std::time::Duration,
}

/// `[coordinator] url`: one URL (`url = "https://c:7443"`) or several (`url = ["https://c1:7443",
/// "https://c2:7443"]`), in the order the agent tries them. Kept as written: whether each is a
/// usable URL is [`CoordinatorConfig`]'s check, which names the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorUrls {
    urls: Vec<String>,
    /// Written as a list: its problems name the entry (`coordinator.url[2]`).
    listed: bool,
}

impl CoordinatorUrls {
    /// The URLs in the order written; never empty in a checked config.
    pub fn all(&self) -> &[String] {
        &self.urls
    }

    /// The first URL (the only one, unless several are listed).
    pub fn first(&self) -> &str {
        self.urls.first().map(String::as_str).unwrap_or("")
    }
}

impl std::fmt::Display for CoordinatorUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.urls.join(", "))
    }
}

impl From<&str> for CoordinatorUrls {
    fn from(url: &str) -> Self {
        CoordinatorUrls {
            urls: vec![url.to_string()],
            listed: false,
        }
    }
}

impl<'de> Deserialize<'de> for CoordinatorUrls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a URL string or a list of URL strings")]
        enum Written {
            One(String),
            Several(Vec<String>),
        }
        Ok(match Written::deserialize(deserializer)? {
            Written::One(url) => CoordinatorUrls {
                urls: vec![url],
                listed: false,
            },
            Written::Several(urls) => CoordinatorUrls { urls, listed: true },
        })
    }
}

fn default_facts_period() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

/// The URL's host without brackets, for TLS server-name checks: the host of the URL being
/// connected to, which differs per coordinator when several are listed.
pub fn url_host(url: &str) -> Option<String> {
    let uri: tonic::transport::Uri = url.parse().ok()?;
    uri.host().map(|host| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    })
}

impl CoordinatorConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.facts_period < std::time::Duration::from_secs(1) {
            problems.push(
                "coordinator.facts_period: must be at least \"1s\" (each read walks the process table)"
                    .to_string(),
            );
        }
        let urls = self.url.all();
        if urls.is_empty() {
            problems.push(
                "coordinator.url: an empty list; name at least one coordinator, e.g. url = [\"https://kreach-coordinator:7443\"]"
                    .to_string(),
            );
            return problems;
        }
        let mut tls_problems = std::collections::BTreeSet::new();
        for (index, url) in urls.iter().enumerate() {
            let key = if self.url.listed {
                format!("coordinator.url[{index}]")
            } else {
                "coordinator.url".to_string()
            };
            if let Some(first) = urls[..index].iter().position(|earlier| earlier == url) {
                problems.push(format!(
                    "{key}: {url:?} is also coordinator.url[{first}]; list each coordinator once"
                ));
                continue;
            }
            let (url_problems, tls) = self.url_problems(&key, url);
            problems.extend(url_problems);
            // The TLS files serve every URL: each of their problems is said once.
            tls_problems.extend(tls);
        }
        problems.extend(tls_problems);
        problems
    }

    /// What is wrong with one URL (`key` names it), and separately what is wrong with the TLS
    /// settings for it.
    fn url_problems(&self, key: &str, url: &str) -> (Vec<String>, Vec<String>) {
        let mut problems = Vec::new();
        let mut tls_problems = Vec::new();
        let uri: tonic::transport::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => {
                return (
                    vec![format!(
                        "{key}: {url:?} is not a URL ({error}); write e.g. \"https://kreach-coordinator:7443\""
                    )],
                    tls_problems,
                )
            }
        };
        let Some(host) = url_host(url).filter(|host| !host.is_empty()) else {
            return (
                vec![format!(
                    "{key}: {url:?} names no host; write e.g. \"https://kreach-coordinator:7443\""
                )],
                tls_problems,
            );
        };
        let tls_files = [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)];
        match (uri.scheme_str(), self.insecure) {
            (Some("https"), false) => {
                for (key, value) in tls_files {
                    if value.is_none() {
                        tls_problems.push(format!(
                            "coordinator.{key}: missing; mutual TLS needs ca, cert and key (PEM files from `kreachctl certs init`)"
                        ));
                    }
                }
            }
            (Some("http"), true) => {
                if !is_loopback_host(&host) {
                    problems.push(format!(
                        "coordinator.insecure: plaintext is allowed only to a loopback address, and {host:?} is not one; use https:// with ca, cert and key"
                    ));
                }
                for (key, value) in tls_files {
                    if value.is_some() {
                        tls_problems.push(format!(
                            "coordinator.{key}: not used with insecure = true; remove it or use https://"
                        ));
                    }
                }
            }
            (Some("http"), false) => problems.push(format!(
                "{key}: {url:?} is plaintext; use https:// (or, for a coordinator on this host only, set insecure = true)"
            )),
            (Some("https"), true) => tls_problems.push(
                "coordinator.insecure: insecure = true needs an http:// URL; remove insecure to use TLS".to_string(),
            ),
            _ => problems.push(format!("{key}: {url:?} must start with https://")),
        }
        (problems, tls_problems)
    }
}

/// `localhost` or a loopback IP literal. Other names are refused even when they resolve to
/// loopback today: the check must not depend on what DNS says later.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManageConfig {
    #[serde(default = "default_hosts_file")]
    pub hosts_file: PathBuf,
    /// Absent on client hosts.
    pub kafka_properties: Option<PathBuf>,
    #[serde(default = "default_kafka_unit")]
    pub kafka_unit: String,
    /// Brokers only, optional: argv that exits 0 when this broker is the cluster's active
    /// controller, so the coordinator restarts it last. Overrides the Kafka probe's answer
    /// (DescribeQuorum's leader, else Metadata's controller id).
    pub controller_check: Option<Vec<String>>,
    /// Brokers only: how health is judged around a restart. `"kafka"` (the default) asks the
    /// broker over its plaintext listeners (ApiVersions, Metadata, DescribeConfigs) and gates the
    /// restart on partitions and advertised endpoints; `"tcp"` only checks that each listener
    /// accepts connections, for services that do not speak Kafka.
    #[serde(default)]
    pub probe: ProbeKind,
    /// Brokers only: who enforces `listeners.external.allow` on the EXTERNAL port. Default
    /// "none" (the host's own firewall does); "nftables" makes the agent keep a table of its own.
    #[serde(default)]
    pub firewall: FirewallKind,
    /// Brokers: where the PEM files of Kafka's TLS listeners live: each TLS listener's key store
    /// (the private key the agent keeps in `state_dir`, then the certificate chain) and the Kafka
    /// CA bundle. server.properties is pointed at them. Made when the first certificate arrives.
    #[serde(default = "default_kafka_tls_dir")]
    pub kafka_tls_dir: PathBuf,
    /// Brokers: the user Kafka runs as; it owns those files (0600) so that Kafka can read them.
    /// When no such user exists here they stay the agent's.
    #[serde(default = "default_kafka_user")]
    pub kafka_user: String,
    /// Client hosts: where the agent installs the Kafka CA of each cluster whose listener this
    /// client reaches over TLS (`CLUSTER.pem`), for the host's Kafka clients' `ssl.ca.location`.
    #[serde(default = "default_kafka_ca_dir")]
    pub kafka_ca_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    #[default]
    Kafka,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FirewallKind {
    #[default]
    None,
    /// `table inet kreach`, replaced atomically with `nft -f` (see [`crate::firewall`]).
    Nftables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManagerKind {
    #[default]
    Systemd,
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServiceManagerConfig {
    #[serde(default)]
    pub kind: ServiceManagerKind,
    /// `kind = "command"`: argv run to restart Kafka.
    #[serde(default)]
    pub restart: Vec<String>,
    /// `kind = "command"`: argv polled until it exits 0 after a restart (optional).
    pub status: Option<Vec<String>>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/kreach")
}
fn default_hosts_file() -> PathBuf {
    PathBuf::from("/etc/hosts")
}
fn default_kafka_unit() -> String {
    "kafka.service".to_string()
}
fn default_kafka_tls_dir() -> PathBuf {
    PathBuf::from(kreach_domain::desired::KAFKA_TLS_DIR)
}
fn default_kafka_user() -> String {
    "kafka".to_string()
}
fn default_kafka_ca_dir() -> PathBuf {
    PathBuf::from("/etc/kreach/kafka-ca")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent config {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AgentConfig::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse and check the config; relative paths are kept as written.
    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        let config: AgentConfig =
            toml::from_str(text).map_err(|error| error.to_string().trim_end().to_owned())?;
        let mut problems = Vec::new();
        if config.node.trim().is_empty() {
            problems.push("node: must name this host's node in the cluster spec".to_string());
        }
        if config.manage.kafka_unit.trim().is_empty() {
            problems.push("manage.kafka_unit: must not be empty".to_string());
        }
        let command = &config.service_manager;
        match command.kind {
            ServiceManagerKind::Command if command.restart.is_empty() && config.manage.kafka_properties.is_some() => {
                problems.push(
                    "service_manager.restart: kind = \"command\" needs the restart command, e.g. restart = [\"/usr/local/bin/restart-kafka\"]"
                        .to_string(),
                )
            }
            ServiceManagerKind::Systemd if !command.restart.is_empty() || command.status.is_some() => problems.push(
                "service_manager.restart/status: only used with kind = \"command\"; remove them or set kind = \"command\"".to_string(),
            ),
            _ => {}
        }
        match (
            &config.reachability.sasl_username,
            &config.reachability.sasl_password_file,
        ) {
            (Some(user), Some(_)) if user.trim().is_empty() => problems.push(
                "reachability.sasl_username: must not be empty".to_string(),
            ),
            (Some(_), None) | (None, Some(_)) => problems.push(
                "reachability.sasl_username and sasl_password_file: give both (the SCRAM user the check logs in as, and the file with its password) or neither".to_string(),
            ),
            _ => {}
        }
        problems.extend(label_problems(&config.labels));
        if config.reachability.period < std::time::Duration::from_secs(1) {
            problems.push(
                "reachability.period: must be at least \"1s\" (each check connects to every broker)"
                    .to_string(),
            );
        }
        if let Some(coordinator) = &config.coordinator {
            problems.extend(coordinator.problems());
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("; "))
        }
    }
}

/// At most this many labels per host.
pub const MAX_LABELS: usize = 32;

/// What is wrong with `labels`: a key is 1–63 letters, digits, `_`, `.` or `-`, starting with a
/// letter or digit; a value is at most 255 characters with no control characters.
fn label_problems(labels: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    if labels.len() > MAX_LABELS {
        problems.push(format!(
            "labels: {} labels; at most {MAX_LABELS}",
            labels.len()
        ));
    }
    for (key, value) in labels {
        let key_ok = key.len() <= 63
            && key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !key_ok {
            problems.push(format!(
                "labels.{key:?}: a label name is 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
            ));
        }
        if value.chars().count() > 255 || value.chars().any(char::is_control) {
            problems.push(format!(
                "labels.{key}: the value must be at most 255 characters, none of them control characters"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_name_value_pairs_with_names_a_selector_can_use() {
        let parse = |labels: &str| {
            AgentConfig::parse(&format!("node = \"w1\"\nlabels = {labels}\n[manage]\n"))
        };
        let config = parse(r#"{ cluster = "spark-prod", role = "task" }"#).unwrap();
        assert_eq!(config.labels["cluster"], "spark-prod");
        assert_eq!(config.labels.len(), 2);
        let error = parse(r#"{ "bad key" = "x", role = "a\u0007b" }"#).unwrap_err();
        assert!(
            error.contains("labels.\"bad key\": a label name is 1-63 letters")
                && error.contains("labels.role: the value must be at most 255 characters"),
            "{error}"
        );
        assert!(parse("{ cluster = 3 }").is_err(), "values are strings");
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../packaging/agent.toml.example");
        let config = AgentConfig::parse(text).expect("example config parses");
        assert_eq!(config.node, "emr-worker-1");
        assert_eq!(config.manage.hosts_file, PathBuf::from("/etc/hosts"));
        assert_eq!(config.service_manager.kind, ServiceManagerKind::Systemd);
        let coordinator = config.coordinator.expect("the example has a coordinator");
        assert_eq!(coordinator.url.all(), ["https://kreach-coordinator:7443"]);
        assert_eq!(
            url_host(coordinator.url.first()).as_deref(),
            Some("kreach-coordinator")
        );
        assert!(!coordinator.insecure);
    }

    fn with_coordinator(section: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(&format!(
            "node = \"etl-1\"\n[manage]\n[coordinator]\n{section}"
        ))
    }

    #[test]
    fn without_a_coordinator_section_the_agent_is_stand_alone() {
        let config = AgentConfig::parse("node = \"etl-1\"\n[manage]\n").unwrap();
        assert_eq!(config.coordinator, None);
    }

    const TLS_FILES: &str = "ca = \"/ca.pem\"\ncert = \"/node.pem\"\nkey = \"/node.key\"\n";

    #[test]
    fn the_url_is_one_string_or_a_list_tried_in_the_order_written() {
        let one = with_coordinator(&format!("url = \"https://coord-1:7443\"\n{TLS_FILES}"))
            .unwrap()
            .coordinator
            .unwrap();
        assert_eq!(one.url.all(), ["https://coord-1:7443"]);
        let several = with_coordinator(&format!(
            "url = [\"https://coord-1:7443\", \"https://coord-2:7443\", \"https://[::1]:7443\"]\n{TLS_FILES}"
        ))
        .unwrap()
        .coordinator
        .unwrap();
        assert_eq!(
            several.url.all(),
            [
                "https://coord-1:7443",
                "https://coord-2:7443",
                "https://[::1]:7443"
            ]
        );
        // Each URL's own host is the TLS server name when connecting to it.
        let hosts: Vec<_> = several.url.all().iter().map(|url| url_host(url)).collect();
        assert_eq!(
            hosts,
            [
                Some("coord-1".to_string()),
                Some("coord-2".to_string()),
                Some("::1".to_string())
            ]
        );
    }

    #[test]
    fn a_bad_entry_of_the_list_is_named_by_its_index() {
        let error = with_coordinator(&format!(
            "url = [\"https://coord-1:7443\", \"http://coord-2:7443\", \"ftp://coord-3\"]\n{TLS_FILES}"
        ))
        .unwrap_err();
        assert!(
            error.contains("coordinator.url[1]: \"http://coord-2:7443\" is plaintext")
                && error.contains("coordinator.url[2]: \"ftp://coord-3\" must start with https://")
                && !error.contains("coordinator.url[0]"),
            "{error}"
        );
        let error = with_coordinator(&format!("url = [\"https://c:7443\", \"\"]\n{TLS_FILES}"))
            .unwrap_err();
        assert!(error.starts_with("coordinator.url[1]: \"\""), "{error}");
        // The TLS files serve every URL: a missing one is said once, not once per URL.
        let error =
            with_coordinator("url = [\"https://a:7443\", \"https://b:7443\"]\n").unwrap_err();
        assert_eq!(
            error.matches("coordinator.ca: missing").count(),
            1,
            "{error}"
        );
    }

    #[test]
    fn an_empty_list_a_duplicate_or_a_list_of_non_strings_is_an_error() {
        let error = with_coordinator(&format!("url = []\n{TLS_FILES}")).unwrap_err();
        assert!(
            error.contains("coordinator.url: an empty list; name at least one coordinator"),
            "{error}"
        );
        let error = with_coordinator(&format!(
            "url = [\"https://a:7443\", \"https://b:7443\", \"https://a:7443\"]\n{TLS_FILES}"
        ))
        .unwrap_err();
        assert!(
            error.contains(
                "coordinator.url[2]: \"https://a:7443\" is also coordinator.url[0]; list each coordinator once"
            ),
            "{error}"
        );
        let error = with_coordinator(&format!("url = [7443]\n{TLS_FILES}")).unwrap_err();
        assert!(
            error.contains("a URL string or a list of URL strings"),
            "{error}"
        );
        // A single URL keeps its messages without an index.
        let error = with_coordinator("url = \"http://c:7443\"\n").unwrap_err();
        assert!(
            error.starts_with("coordinator.url: \"http://c:7443\" is plaintext"),
            "{error}"
        );
    }

    #[test]
    fn plaintext_is_allowed_only_to_loopback() {
        for url in [
            "http://127.0.0.1:7443",
            "http://[::1]:7443",
            "http://localhost:7443",
        ] {
            let config = with_coordinator(&format!("url = {url:?}\ninsecure = true\n"))
                .unwrap_or_else(|error| panic!("{url}: {error}"));
            assert!(config.coordinator.unwrap().insecure);
        }
        for url in [
            "http://kreach-coordinator:7443",
            "http://10.0.0.5:7443",
            "http://127.0.0.1.example.com:7443",
        ] {
            let error = with_coordinator(&format!("url = {url:?}\ninsecure = true\n")).unwrap_err();
            assert!(
                error.contains("coordinator.insecure") && error.contains("loopback"),
                "{url}: {error}"
            );
        }
        let error = with_coordinator("url = \"http://127.0.0.1:7443\"\n").unwrap_err();
        assert!(error.contains("plaintext"), "{error}");
        let error =
            with_coordinator("url = \"https://127.0.0.1:7443\"\ninsecure = true\n").unwrap_err();
        assert!(error.contains("http://"), "{error}");
    }

    #[test]
    fn tls_needs_all_three_files_and_unknown_keys_are_errors() {
        let error = with_coordinator("url = \"https://c:7443\"\nca = \"/ca.pem\"\n").unwrap_err();
        assert!(
            error.contains("coordinator.cert") && error.contains("coordinator.key"),
            "{error}"
        );
        let error = with_coordinator(
            "url = \"https://c:7443\"\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\ntimeout = 3\n",
        )
        .unwrap_err();
        assert!(error.contains("timeout"), "{error}");
        let error = with_coordinator("url = \"ftp://c\"\n").unwrap_err();
        assert!(error.contains("https://"), "{error}");
    }

    #[test]
    fn firewall_and_reachability_period_are_opt_in_settings() {
        let config = AgentConfig::parse("node = \"b\"\n[manage]\n").unwrap();
        assert_eq!(config.manage.firewall, FirewallKind::None);
        assert_eq!(
            config.reachability.period,
            std::time::Duration::from_secs(30)
        );
        let config = AgentConfig::parse(
            "node = \"b\"\n[manage]\nfirewall = \"nftables\"\n[reachability]\nperiod = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(config.manage.firewall, FirewallKind::Nftables);
        assert_eq!(
            config.reachability.period,
            std::time::Duration::from_secs(2)
        );
        let error =
            AgentConfig::parse("node = \"b\"\n[manage]\nfirewall = \"iptables\"\n").unwrap_err();
        assert!(error.contains("iptables"), "{error}");
        let error =
            AgentConfig::parse("node = \"b\"\n[manage]\n[reachability]\nperiod = \"soon\"\n")
                .unwrap_err();
        assert!(error.contains("soon"), "{error}");
        assert_eq!(config.reachability.resolve, Resolve::System);
        let config = AgentConfig::parse(
            "node = \"c\"\n[manage]\n[reachability]\nresolve = \"hosts_file\"\n",
        )
        .unwrap();
        assert_eq!(config.reachability.resolve, Resolve::HostsFile);
        let error =
            AgentConfig::parse("node = \"c\"\n[manage]\n[reachability]\nresolve = \"dns\"\n")
                .unwrap_err();
        assert!(
            error.contains("dns") && error.contains("hosts_file"),
            "{error}"
        );
    }

    #[test]
    fn client_hosts_need_no_properties_and_defaults_apply() {
        let config = AgentConfig::parse("node = \"etl-1\"\n[manage]\n").unwrap();
        assert_eq!(config.manage.kafka_properties, None);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/kreach"));
        assert_eq!(config.manage.kafka_unit, "kafka.service");
        assert_eq!(config.manage.probe, ProbeKind::Kafka);
        let tcp = AgentConfig::parse("node = \"b\"\n[manage]\nprobe = \"tcp\"\n").unwrap();
        assert_eq!(tcp.manage.probe, ProbeKind::Tcp);
        let error = AgentConfig::parse("node = \"b\"\n[manage]\nprobe = \"http\"\n").unwrap_err();
        assert!(
            error.contains("probe") && error.contains("kafka"),
            "{error}"
        );
    }

    #[test]
    fn typos_and_missing_commands_are_errors() {
        let error =
            AgentConfig::parse("node = \"a\"\n[manage]\nkafka_propertes = \"/x\"\n").unwrap_err();
        assert!(error.contains("kafka_propertes"), "{error}");
        let error = AgentConfig::parse(
            "node = \"a\"\n[manage]\nkafka_properties = \"/x\"\n[service_manager]\nkind = \"command\"\n",
        )
        .unwrap_err();
        assert!(error.contains("service_manager.restart"), "{error}");
    }
}
