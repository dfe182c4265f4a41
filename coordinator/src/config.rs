//! The coordinator's own config (`/etc/kreach/coordinator.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address the gRPC services listen on. Port 0 picks a free port (logged at start).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the durable store lives.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How many distinct agents (nodes) this coordinator serves; a new node beyond it is refused
    /// with a clear error (gRPC RESOURCE_EXHAUSTED) and nothing about it is kept.
    #[serde(default = "default_max_agents")]
    pub max_agents: usize,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub store: StoreConfig,
}

/// `[store]`: where generations, rollouts and agent records are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `redb` (the default: one file under `state_dir`) or `etcd` (shared by several
    /// coordinators, one of which leads).
    #[serde(default)]
    pub kind: StoreKind,
    /// etcd only: the members' client URLs, `http://host:2379` or `https://host:2379`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// etcd only: every key this coordinator writes starts with it (several kreach installations
    /// may share one etcd).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// etcd only, for `https://` endpoints: the CA that signed the members' certificates, and
    /// this coordinator's client certificate and key when etcd asks for one.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd only: the leader's lease; a coordinator that cannot renew it stops releasing steps
    /// within this time, and another one takes over after it.
    #[serde(
        default = "default_lease_ttl",
        deserialize_with = "deserialize_duration"
    )]
    pub lease_ttl: std::time::Duration,
    /// etcd only: the URL agents and kreachctl reach this coordinator at, which followers name
    /// as the leader's (default: from `listen`).
    pub advertise: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Redb,
    Etcd,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            kind: StoreKind::Redb,
            endpoints: Vec::new(),
            prefix: default_prefix(),
            ca: None,
            cert: None,
            key: None,
            lease_ttl: default_lease_ttl(),
            advertise: None,
        }
    }
}

fn default_prefix() -> String {
    "/kreach".to_string()
}

fn default_lease_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

use kreach_domain::spec::deserialize_duration;

impl StoreConfig {
    fn problems(&self, config: &CoordinatorConfig) -> Option<String> {
        let etcd_only = [
            ("endpoints", !self.endpoints.is_empty()),
            ("ca", self.ca.is_some()),
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
            ("advertise", self.advertise.is_some()),
            ("prefix", self.prefix != default_prefix()),
            ("lease_ttl", self.lease_ttl != default_lease_ttl()),
        ];
        if self.kind == StoreKind::Redb {
            return etcd_only.iter().find(|(_, set)| *set).map(|(key, _)| {
                format!("store.{key}: only for kind = \"etcd\" (the store is redb, a file under state_dir)")
            });
        }
        if self.endpoints.is_empty() {
            return Some(
                "store.endpoints: kind = \"etcd\" needs the members' client URLs, e.g. [\"https://etcd-1:2379\", \"https://etcd-2:2379\", \"https://etcd-3:2379\"]"
                    .to_string(),
            );
        }
        for (index, url) in self.endpoints.iter().enumerate() {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.parse::<tonic::transport::Uri>().is_err() {
                return Some(format!(
                    "store.endpoints[{index}]: {url:?} is not an http:// or https:// URL"
                ));
            }
            if url.starts_with("https://") && self.ca.is_none() {
                return Some(format!(
                    "store.endpoints[{index}]: {url:?} is https: set store.ca (the CA that signed the etcd members' certificates)"
                ));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Some("store.cert and store.key: set both or neither".to_string());
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.len() < 2 {
            return Some(format!(
                "store.prefix: {:?} must start with '/' and not end with it, e.g. \"/kreach/prod\"",
                self.prefix
            ));
        }
        let ttl = self.lease_ttl.as_secs_f64();
        if !(2.0..=120.0).contains(&ttl) {
            return Some(format!(
                "store.lease_ttl: {ttl}s is outside 2s..120s (the default is 10s)"
            ));
        }
        match &self.advertise {
            Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                Some(format!("store.advertise: {url:?} must be an https:// URL"))
            }
            None if config.listen.ip().is_unspecified() => Some(format!(
                "store.advertise: listen is {}, so set the URL agents and kreachctl reach this coordinator at, e.g. \"https://coord-1.example:{}\"",
                config.listen,
                config.listen.port()
            )),
            _ => None,
        }
    }
}

/// `[metrics]`: Prometheus metrics over plain HTTP, off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served, e.g. "127.0.0.1:9464".
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Plaintext without identities: allowed only on a loopback listen address.
    #[serde(default)]
    pub insecure: bool,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:7443".parse().expect("valid default")
}

fn default_max_agents() -> usize {
    crate::core::DEFAULT_MAX_AGENTS
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/kreach-coordinator")
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        CoordinatorConfig::parse(&text)
            .map_err(|error| format!("{} is invalid: {error}", path.display()))
    }

    pub fn parse(text: &str) -> Result<CoordinatorConfig, String> {
        let config: CoordinatorConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        if config.max_agents == 0 {
            return Err("max_agents: must be at least 1 (the default is 10000)".to_string());
        }
        let tls = &config.tls;
        if tls.insecure {
            if !config.listen.ip().is_loopback() {
                return Err(format!(
                    "tls.insecure: plaintext is allowed only on a loopback address, but listen is {}; configure tls.ca/cert/key (see `kreachctl certs init`)",
                    config.listen
                ));
            }
        } else if tls.ca.is_none() || tls.cert.is_none() || tls.key.is_none() {
            return Err(
                "tls: set ca, cert and key (files from `kreachctl certs init`), or insecure = true on a loopback listen address"
                    .to_string(),
            );
        }
        if let Some(problem) = config.store.problems(&config) {
            return Err(problem);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses() {
        let config =
            CoordinatorConfig::parse(include_str!("../../packaging/coordinator.toml.example"))
                .unwrap();
        assert_eq!(config.listen.port(), 7443);
        assert!(config.tls.cert.is_some());
    }

    #[test]
    fn plaintext_only_on_loopback_and_tls_needs_all_three_files() {
        assert!(
            CoordinatorConfig::parse("listen = \"127.0.0.1:0\"\n[tls]\ninsecure = true\n").is_ok()
        );
        let error = CoordinatorConfig::parse("listen = \"0.0.0.0:7443\"\n[tls]\ninsecure = true\n")
            .unwrap_err();
        assert!(error.contains("only on a loopback address"), "{error}");
        let error = CoordinatorConfig::parse("[tls]\nca = \"/x\"\n").unwrap_err();
        assert!(error.contains("set ca, cert and key"), "{error}");
        assert!(CoordinatorConfig::parse("lisen = 1")
            .unwrap_err()
            .contains("lisen"));
    }

    #[test]
    fn an_etcd_store_needs_endpoints_and_a_url_to_advertise_and_redb_takes_no_etcd_keys() {
        let base = "listen = \"127.0.0.1:7443\"\n[tls]\ninsecure = true\n[store]\n";
        let config = CoordinatorConfig::parse(&format!(
            "{base}kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"5s\"\n"
        ))
        .unwrap();
        assert_eq!(config.store.kind, StoreKind::Etcd);
        assert_eq!(config.store.prefix, "/kreach");
        assert_eq!(config.store.lease_ttl.as_secs(), 5);
        assert_eq!(
            CoordinatorConfig::parse(&format!("{base}kind = \"redb\"\n"))
                .unwrap()
                .store,
            StoreConfig::default()
        );
        for (store, expected) in [
            (
                "kind = \"etcd\"\n",
                "store.endpoints: kind = \"etcd\" needs",
            ),
            (
                "kind = \"etcd\"\nendpoints = [\"http://a:2379\", \"etcd-2:2379\"]\n",
                "store.endpoints[1]: \"etcd-2:2379\" is not an http:// or https:// URL",
            ),
            (
                "kind = \"etcd\"\nendpoints = [\"https://a:2379\"]\n",
                "is https: set store.ca",
            ),
            (
                "kind = \"etcd\"\nendpoints = [\"http://a:2379\"]\nprefix = \"kreach/\"\n",
                "store.prefix: \"kreach/\" must start with '/'",
            ),
            (
                "kind = \"etcd\"\nendpoints = [\"http://a:2379\"]\nlease_ttl = \"1s\"\n",
                "store.lease_ttl: 1s is outside 2s..120s",
            ),
            (
                "endpoints = [\"http://a:2379\"]\n",
                "store.endpoints: only for kind = \"etcd\"",
            ),
            ("kind = \"zookeeper\"\n", "unknown variant `zookeeper`"),
        ] {
            let error = CoordinatorConfig::parse(&format!("{base}{store}")).unwrap_err();
            assert!(error.contains(expected), "{store}: {error}");
        }
        let error = CoordinatorConfig::parse(
            "listen = \"0.0.0.0:7443\"\n[tls]\nca = \"/c\"\ncert = \"/c\"\nkey = \"/k\"\n[store]\nkind = \"etcd\"\nendpoints = [\"http://a:2379\"]\n",
        )
        .unwrap_err();
        assert!(
            error.contains("store.advertise: listen is 0.0.0.0:7443"),
            "{error}"
        );
    }
}
