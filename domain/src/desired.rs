//! Per-node desired state, derived from a validated [`ClusterSpec`].
//!
//! Owns the split-horizon decision: which names each host must resolve, to which address, and what
//! each broker advertises. It does not render files (that is [`crate::hosts`] and
//! [`crate::properties`]) and knows nothing about which files a host has: that lives in the agent's
//! own config, never in what the coordinator sends.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::hosts::HostsEntry;
use crate::properties::{ListenerSettings, ListenerSpec};
use crate::spec::{Advertise, BrokerSpec, ClusterSpec, View};

/// What one node runs as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NodeRole {
    Broker { id: i32 },
    Client { view: View },
}

/// Everything one node must look like: its hosts block and, for a broker, its listener settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeSpec {
    pub cluster: String,
    pub node: String,
    pub role: NodeRole,
    /// The entries of kreach's hosts block, sorted by broker id. Empty ⇒ no block.
    pub hosts_entries: Vec<HostsEntry>,
    /// Present for brokers only.
    pub listeners: Option<ListenerSettings>,
    /// How long a restarted broker may take to pass its health checks.
    pub health_timeout_ms: u64,
    /// Clients only: every broker's endpoint on the listener of this client's view, by broker id.
    /// Empty for a public client while public access is disabled.
    #[serde(default)]
    pub bootstrap: Vec<BootstrapEndpoint>,
    /// Brokers only: the source filter on the EXTERNAL port; `None` while public access is
    /// disabled (an agent that manages the firewall then removes its table).
    #[serde(default)]
    pub external_filter: Option<ExternalFilter>,
    /// Brokers with TLS listeners: each one's certificate, issued by the coordinator for the key
    /// this broker's agent reported. Empty otherwise (and in a spec rendered without a
    /// coordinator).
    #[serde(default)]
    pub certificates: Vec<ListenerCertificate>,
    /// With TLS listeners: the Kafka CA (PEM) the certificates chain to; brokers trust it among
    /// themselves and clients install it. Empty otherwise.
    #[serde(default)]
    pub kafka_ca_pem: String,
    /// Brokers: the SCRAM users the cluster should have (salted, never a password), kept with
    /// AlterUserScramCredentials. Empty otherwise.
    #[serde(default)]
    pub scram_users: Vec<ScramUser>,
    /// Clients of a SASL listener: its SCRAM mechanism (the reachability check logs in with it
    /// when the agent has credentials). Empty otherwise.
    #[serde(default)]
    pub sasl_mechanism: String,
}

/// A SCRAM credential as Kafka stores it (RFC 5802): the salted password, never the password.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ScramUser {
    pub name: String,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub iterations: u32,
    /// Hex.
    pub salt: String,
    /// Hex: PBKDF2-HMAC of the password with `salt` and `iterations`.
    pub salted_password: String,
}

/// Lower-case hex of `bytes` (how a [`ScramUser`] carries its salt and salted password).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The bytes of a hex string; None if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// A TLS listener's certificate as the coordinator issued it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerCertificate {
    /// The listener name (`EXTERNAL`).
    pub listener: String,
    /// The certificate then the CA, PEM (no private key: that never leaves the broker).
    pub chain_pem: String,
    /// What it covers: every name and address the listener advertises or is reached by.
    pub sans: Vec<String>,
    /// Hex serial number.
    pub serial: String,
    pub not_after_ms: u64,
}

/// One broker as a client reaches it: the host:port it advertises on the client's view's listener.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct BootstrapEndpoint {
    pub broker_id: i32,
    /// An IP address or a hostname, as the listener's `advertise` says.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BootstrapEndpoint {
    /// `host:port`, with an IPv6 address in brackets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", host_port(&self.host, self.port))
    }
}

/// `host:port`, with an IPv6 address in brackets (`[2001:db8::1]:9093`).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Which sources may reach the EXTERNAL port (`listeners.external.allow`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExternalFilter {
    pub port: u16,
    pub allow: Vec<IpNet>,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeRole::Broker { id } => write!(f, "broker {id}"),
            NodeRole::Client {
                view: View::Private,
            } => write!(f, "client, private view"),
            NodeRole::Client { view: View::Public } => write!(f, "client, public view"),
        }
    }
}

impl NodeSpec {
    /// `emr-worker-1 (broker 1) in cluster emr-48742`, for headers of plans and renders.
    pub fn describe(&self) -> String {
        format!("{} ({}) in cluster {}", self.node, self.role, self.cluster)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DesiredError {
    #[error("node {node:?} is not in the spec of cluster {cluster:?} (its nodes: {known})")]
    UnknownNode {
        node: String,
        cluster: String,
        known: String,
    },
}

/// Derive `node`'s desired state from the spec.
pub fn node_spec(spec: &ClusterSpec, node: &str) -> Result<NodeSpec, DesiredError> {
    let role = if let Some(broker) = spec.broker_by_node(node) {
        NodeRole::Broker { id: broker.id }
    } else if let Some(client) = spec.client_by_node(node) {
        NodeRole::Client { view: client.view }
    } else {
        return Err(DesiredError::UnknownNode {
            node: node.to_string(),
            cluster: spec.name.clone(),
            known: spec.nodes().join(", "),
        });
    };
    Ok(node_spec_as(spec, node, role))
}

/// The desired state of `node` as a client of `view`: what a member of a client group gets, the
/// same as a listed client of that view.
pub fn client_node_spec(spec: &ClusterSpec, node: &str, view: View) -> NodeSpec {
    node_spec_as(spec, node, NodeRole::Client { view })
}

fn node_spec_as(spec: &ClusterSpec, node: &str, role: NodeRole) -> NodeSpec {
    let sasl_mechanism = match &role {
        NodeRole::Client {
            view: View::Private,
        } => spec.internal.sasl_mechanism.clone(),
        NodeRole::Client { view: View::Public } if spec.external.enabled => {
            spec.external.sasl_mechanism.clone()
        }
        _ => None,
    }
    .unwrap_or_default();
    let (hosts_entries, listeners, bootstrap, external_filter) = match &role {
        NodeRole::Broker { .. } => {
            let broker = spec
                .broker_by_node(node)
                .expect("role came from this broker");
            (
                broker_hosts_entries(spec),
                Some(listener_settings(spec, broker)),
                Vec::new(),
                external_filter(spec),
            )
        }
        NodeRole::Client { view } => (
            client_hosts_entries(spec, *view),
            None,
            bootstrap_endpoints(spec, *view),
            None,
        ),
    };
    NodeSpec {
        cluster: spec.name.clone(),
        node: node.to_string(),
        role,
        hosts_entries,
        listeners,
        health_timeout_ms: u64::try_from(spec.rollout.health_timeout.as_millis())
            .unwrap_or(u64::MAX),
        bootstrap,
        external_filter,
        certificates: Vec::new(),
        kafka_ca_pem: String::new(),
        scram_users: Vec::new(),
        sasl_mechanism,
    }
}

/// Every broker's endpoint on the listener a client of `view` uses: INTERNAL for the private view,
/// EXTERNAL for the public one (none while public access is disabled), advertised as the listener
/// says. Sorted by broker id. Brokers without the address the listener advertises are left out
/// (the spec's validation refuses such specs).
pub fn bootstrap_endpoints(spec: &ClusterSpec, view: View) -> Vec<BootstrapEndpoint> {
    let listener = match view {
        View::Private => &spec.internal,
        View::Public if spec.external.enabled => &spec.external,
        View::Public => return Vec::new(),
    };
    let mut brokers: Vec<&BrokerSpec> = spec.brokers.iter().collect();
    brokers.sort_by_key(|broker| broker.id);
    brokers
        .into_iter()
        .filter_map(|broker| {
            let host = match listener.advertise {
                Advertise::PrivateIp => Some(broker.private_ip.to_string()),
                Advertise::PublicIp => broker.public_ip.map(|ip| ip.to_string()),
                Advertise::Hostname => broker.hostname.clone(),
            }?;
            Some(BootstrapEndpoint {
                broker_id: broker.id,
                host,
                port: listener.port,
            })
        })
        .collect()
}

/// The EXTERNAL port's filter on every broker host; `None` while public access is disabled.
pub fn external_filter(spec: &ClusterSpec) -> Option<ExternalFilter> {
    spec.external.enabled.then(|| ExternalFilter {
        port: spec.external.port,
        allow: spec.external.allow.clone(),
    })
}

/// What a node's desired state writes: its hosts block (`None` when it needs no entries, so any
/// kreach block is removed) and, for a broker, the values of the listener keys kreach owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedNode {
    pub hosts_block: Option<String>,
    pub listener_settings: Option<Vec<(String, String)>>,
    /// One line per TLS listener certificate: listener, serial, SANs, expiry (no key).
    pub certificates: Vec<String>,
}

/// Render `node` once, for [`render_node`]'s text and `kreachctl render --output json`.
pub fn render_parts(node: &NodeSpec) -> Result<RenderedNode, String> {
    let hosts_block = if node.hosts_entries.is_empty() {
        None
    } else {
        let block = crate::hosts::apply_block("", &node.cluster, &node.hosts_entries)
            .map_err(|e| e.to_string())?;
        Some(block.content)
    };
    let listener_settings = node
        .listeners
        .as_ref()
        .map(|listeners| crate::properties::owned_values(listeners).map_err(|e| e.to_string()))
        .transpose()?;
    let certificates = node
        .certificates
        .iter()
        .map(|cert| {
            format!(
                "{}: serial {}, covers {}, valid until {}",
                cert.listener,
                cert.serial,
                cert.sans.join(", "),
                utc_date(cert.not_after_ms)
            )
        })
        .collect();
    Ok(RenderedNode {
        hosts_block,
        listener_settings,
        certificates,
    })
}

/// A node's desired state as an operator reads it: its hosts block and, for a broker, the values of
/// the listener keys kreach owns. Used by `kreachctl render` and for the per-node diffs of `plan`.
pub fn render_node(node: &NodeSpec) -> Result<String, String> {
    Ok(render_text(&render_parts(node)?))
}

/// [`render_node`]'s text of parts already rendered.
pub fn render_text(rendered: &RenderedNode) -> String {
    let mut out = String::from("# hosts block\n");
    match &rendered.hosts_block {
        None => {
            out.push_str("(none: this node needs no hosts entries; any kreach block is removed)\n")
        }
        Some(block) => out.push_str(block),
    }
    if let Some(settings) = &rendered.listener_settings {
        out.push_str("# listener settings (server.properties; other listeners' entries, such as CONTROLLER's, are kept)\n");
        for (key, value) in settings {
            out.push_str(&format!("{key}={value}\n"));
        }
    }
    if !rendered.certificates.is_empty() {
        out.push_str("# TLS certificates (issued by the coordinator for this broker's own key)\n");
        for line in &rendered.certificates {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC` of Unix milliseconds.
fn utc_date(unix_ms: u64) -> String {
    let seconds = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        ),
        Err(_) => format!("{unix_ms} (Unix ms)"),
    }
}

/// Desired state of every node in the spec, brokers first.
pub fn all_node_specs(spec: &ClusterSpec) -> Vec<NodeSpec> {
    spec.nodes()
        .into_iter()
        .map(|node| node_spec(spec, node).expect("nodes() lists only known nodes"))
        .collect()
}

/// Where a broker's agent keeps the PEM files of its TLS listeners (key store per listener, the
/// Kafka CA bundle), and where the listener settings point Kafka at them.
pub const KAFKA_TLS_DIR: &str = "/etc/kafka/kreach-tls";

/// The files of TLS listener `name`: `KAFKA_TLS_DIR/NAME.keystore.pem` (key and chain, 0600) and
/// `KAFKA_TLS_DIR/ca.pem`.
pub fn tls_files(name: &str) -> crate::properties::ListenerTls {
    crate::properties::ListenerTls {
        keystore: format!("{KAFKA_TLS_DIR}/{}.keystore.pem", name.to_lowercase()),
        truststore: format!("{KAFKA_TLS_DIR}/ca.pem"),
    }
}

/// What a broker's certificate for `listener` must cover: the address the listener advertises
/// (or, advertising a hostname, the long and short names) and the IP clients of that listener
/// reach it by (`private_ip` on the internal listener, `public_ip` on the external one), so that
/// a client verifying the hostname succeeds however it connects.
pub fn certificate_sans(broker: &BrokerSpec, external: bool) -> Vec<String> {
    let mut sans = Vec::new();
    if let Some(hostname) = &broker.hostname {
        sans.push(hostname.clone());
        if let Some(short) = broker.short_name() {
            sans.push(short.to_string());
        }
    }
    let ip = if external {
        broker.public_ip
    } else {
        Some(broker.private_ip)
    };
    if let Some(ip) = ip {
        sans.push(ip.to_string());
    }
    sans
}

/// What `broker` writes into its listener keys.
pub fn listener_settings(spec: &ClusterSpec, broker: &BrokerSpec) -> ListenerSettings {
    let bind_host = |bind: &str| -> String {
        if bind == crate::spec::BIND_PRIVATE_IP {
            broker.private_ip.to_string()
        } else {
            bind.to_string()
        }
    };
    let advertised = |advertise: Advertise| -> String {
        match advertise {
            Advertise::PrivateIp => broker.private_ip.to_string(),
            Advertise::PublicIp => broker
                .public_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            Advertise::Hostname => broker.hostname.clone().unwrap_or_default(),
        }
    };
    let listener = |config: &crate::spec::ListenerSpecConfig| ListenerSpec {
        name: config.name.clone(),
        bind_host: bind_host(&config.bind),
        port: config.port,
        advertised_host: advertised(config.advertise),
        security_protocol: config.security_protocol.clone(),
        tls: config.uses_tls().then(|| tls_files(&config.name)),
        sasl_mechanism: config.sasl_mechanism.clone(),
    };
    let mut listeners = vec![listener(&spec.internal)];
    if spec.external.enabled {
        listeners.push(listener(&spec.external));
    }
    ListenerSettings {
        owned_names: vec![spec.internal.name.clone(), spec.external.name.clone()],
        listeners,
        inter_broker_listener: spec.internal.name.clone(),
    }
}

/// Brokers resolve their peers' advertised hostnames to private addresses (inter-broker traffic
/// runs on the internal listener).
fn broker_hosts_entries(spec: &ClusterSpec) -> Vec<HostsEntry> {
    if spec.internal.advertise != Advertise::Hostname {
        return Vec::new();
    }
    entries_for(spec, |broker| Some(broker.private_ip))
}

/// Clients need entries only where the listener their view uses advertises hostnames: the split
/// horizon maps the same long name to the private address inside and the public one outside.
fn client_hosts_entries(spec: &ClusterSpec, view: View) -> Vec<HostsEntry> {
    match view {
        View::Private if spec.internal.advertise == Advertise::Hostname => {
            entries_for(spec, |broker| Some(broker.private_ip))
        }
        View::Public if spec.external.enabled && spec.external.advertise == Advertise::Hostname => {
            entries_for(spec, |broker| broker.public_ip)
        }
        _ => Vec::new(),
    }
}

fn entries_for(
    spec: &ClusterSpec,
    address: impl Fn(&BrokerSpec) -> Option<IpAddr>,
) -> Vec<HostsEntry> {
    let mut brokers: Vec<&BrokerSpec> = spec.brokers.iter().collect();
    brokers.sort_by_key(|broker| broker.id);
    brokers
        .into_iter()
        .filter_map(|broker| {
            let hostname = broker.hostname.clone()?;
            let mut names = vec![hostname];
            names.extend(broker.short_name().map(str::to_string));
            Some(HostsEntry {
                ip: address(broker)?,
                names,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTNAME_MODE: &str = r#"
[cluster]
name = "emr-48742"
metadata = "zookeeper"
[listeners.internal]
advertise = "hostname"
[listeners.external]
advertise = "hostname"
allow = ["203.0.113.0/24"]
[[broker]]
id = 2
node = "w2"
hostname = "emr-worker-2.cluster-48742"
private_ip = "10.0.1.25"
public_ip = "47.96.1.25"
[[broker]]
id = 1
node = "w1"
hostname = "emr-worker-1.cluster-48742"
private_ip = "10.0.1.24"
public_ip = "47.96.1.24"
[[client]]
node = "inside"
view = "private"
[[client]]
node = "outside"
view = "public"
"#;

    fn spec(text: &str) -> ClusterSpec {
        ClusterSpec::parse(text).unwrap_or_else(|errors| panic!("{errors}"))
    }

    #[test]
    fn split_horizon_maps_long_and_short_names_per_view() {
        let spec = spec(HOSTNAME_MODE);
        let inside = node_spec(&spec, "inside").unwrap();
        let outside = node_spec(&spec, "outside").unwrap();
        let ips = |node: &NodeSpec| {
            node.hosts_entries
                .iter()
                .map(|e| e.ip.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ips(&inside), ["10.0.1.24", "10.0.1.25"]);
        assert_eq!(ips(&outside), ["47.96.1.24", "47.96.1.25"]);
        assert_eq!(
            inside.hosts_entries[0].names,
            ["emr-worker-1.cluster-48742", "emr-worker-1"]
        );
        assert!(inside.listeners.is_none());
    }

    #[test]
    fn brokers_advertise_hostnames_and_map_peers_privately() {
        let spec = spec(HOSTNAME_MODE);
        let w1 = node_spec(&spec, "w1").unwrap();
        assert_eq!(w1.role, NodeRole::Broker { id: 1 });
        assert_eq!(w1.hosts_entries.len(), 2);
        assert!(w1
            .hosts_entries
            .iter()
            .all(|e| e.ip.to_string().starts_with("10.0.1.")));
        let listeners = w1.listeners.unwrap();
        assert_eq!(listeners.owned_names, ["INTERNAL", "EXTERNAL"]);
        assert_eq!(listeners.listeners.len(), 2);
        assert_eq!(
            listeners.listeners[0].advertised_host,
            "emr-worker-1.cluster-48742"
        );
        assert_eq!(listeners.listeners[1].port, 9093);
        assert_eq!(listeners.inter_broker_listener, "INTERNAL");
    }

    #[test]
    fn private_ip_mode_needs_no_hosts_entries_and_external_off_drops_the_listener() {
        let spec = spec(
            "[cluster]\nname = \"c\"\n[[broker]]\nid = 1\nnode = \"b\"\nhostname = \"b.c\"\nprivate_ip = \"10.0.0.1\"\n[[client]]\nnode = \"k\"\n",
        );
        let broker = node_spec(&spec, "b").unwrap();
        assert!(broker.hosts_entries.is_empty());
        let listeners = broker.listeners.unwrap();
        assert_eq!(listeners.listeners.len(), 1);
        assert_eq!(listeners.listeners[0].advertised_host, "10.0.0.1");
        assert_eq!(
            listeners.owned_names,
            ["INTERNAL", "EXTERNAL"],
            "EXTERNAL stays owned so it can be removed"
        );
        assert!(node_spec(&spec, "k").unwrap().hosts_entries.is_empty());
        assert_eq!(broker.external_filter, None, "no public access, no filter");
        let client = node_spec(&spec, "k").unwrap();
        assert_eq!(
            client.bootstrap,
            [BootstrapEndpoint {
                broker_id: 1,
                host: "10.0.0.1".into(),
                port: 9092
            }]
        );
    }

    #[test]
    fn each_view_bootstraps_through_its_listener_as_advertised() {
        let endpoints = |text: &str, node: &str| -> Vec<String> {
            node_spec(&spec(text), node)
                .unwrap()
                .bootstrap
                .iter()
                .map(|endpoint| format!("{}={endpoint}", endpoint.broker_id))
                .collect()
        };
        // Hostname mode: both views see the long names, on their own listener's port.
        assert_eq!(
            endpoints(HOSTNAME_MODE, "inside"),
            [
                "1=emr-worker-1.cluster-48742:9092",
                "2=emr-worker-2.cluster-48742:9092"
            ]
        );
        assert_eq!(
            endpoints(HOSTNAME_MODE, "outside"),
            [
                "1=emr-worker-1.cluster-48742:9093",
                "2=emr-worker-2.cluster-48742:9093"
            ]
        );
        // IP mode: private addresses inside, public ones outside.
        let ip_mode = HOSTNAME_MODE
            .replace(
                "[listeners.internal]\nadvertise = \"hostname\"",
                "[listeners.internal]\nadvertise = \"private_ip\"",
            )
            .replace(
                "[listeners.external]\nadvertise = \"hostname\"",
                "[listeners.external]\nadvertise = \"public_ip\"\nport = 19093",
            );
        assert_eq!(
            endpoints(&ip_mode, "inside"),
            ["1=10.0.1.24:9092", "2=10.0.1.25:9092"]
        );
        assert_eq!(
            endpoints(&ip_mode, "outside"),
            ["1=47.96.1.24:19093", "2=47.96.1.25:19093"]
        );
        // Brokers bootstrap nothing; clients filter nothing.
        assert!(endpoints(&ip_mode, "w1").is_empty());
        assert_eq!(
            node_spec(&spec(&ip_mode), "inside")
                .unwrap()
                .external_filter,
            None
        );
    }

    #[test]
    fn brokers_filter_the_external_port_with_the_allow_list() {
        let filter = node_spec(&spec(HOSTNAME_MODE), "w2")
            .unwrap()
            .external_filter
            .expect("public access is enabled");
        assert_eq!(filter.port, 9093);
        assert_eq!(filter.allow, ["203.0.113.0/24".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(host_port("2001:db8::1", 9093), "[2001:db8::1]:9093");
        assert_eq!(host_port("b.c", 9092), "b.c:9092");
    }

    #[test]
    fn bind_private_ip_binds_each_broker_to_its_own_address() {
        let spec = spec(
            "[cluster]\nname = \"c\"\n[listeners.internal]\nbind = \"private_ip\"\n[[broker]]\nid = 1\nnode = \"b\"\nprivate_ip = \"10.0.0.1\"\n[[broker]]\nid = 2\nnode = \"d\"\nprivate_ip = \"10.0.0.2\"\n",
        );
        let binds: Vec<String> = ["b", "d"]
            .iter()
            .map(|node| {
                node_spec(&spec, node).unwrap().listeners.unwrap().listeners[0]
                    .bind_host
                    .clone()
            })
            .collect();
        assert_eq!(binds, ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn public_ip_mode_advertises_public_addresses() {
        let spec = spec(
            "[cluster]\nname = \"c\"\n[listeners.external]\nallow = [\"0.0.0.0/0\"]\n[[broker]]\nid = 1\nnode = \"b\"\nprivate_ip = \"10.0.0.1\"\npublic_ip = \"198.51.100.1\"\n",
        );
        let listeners = node_spec(&spec, "b").unwrap().listeners.unwrap();
        assert_eq!(listeners.listeners[1].advertised_host, "198.51.100.1");
    }

    #[test]
    fn unknown_node_lists_the_known_ones() {
        let spec = spec(HOSTNAME_MODE);
        let error = node_spec(&spec, "nope").unwrap_err().to_string();
        assert!(
            error.contains("\"nope\"") && error.contains("w2, w1, inside, outside"),
            "{error}"
        );
    }
}
