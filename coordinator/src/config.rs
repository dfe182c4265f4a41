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
}
