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
    pub manage: ManageConfig,
    #[serde(default)]
    pub service_manager: ServiceManagerConfig,
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
            toml::from_str(text).map_err(|error| error.to_string().trim().replace('\n', " "))?;
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
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../packaging/agent.toml.example");
        let config = AgentConfig::parse(text).expect("example config parses");
        assert_eq!(config.node, "emr-worker-1");
        assert_eq!(config.manage.hosts_file, PathBuf::from("/etc/hosts"));
        assert_eq!(config.service_manager.kind, ServiceManagerKind::Systemd);
    }

    #[test]
    fn client_hosts_need_no_properties_and_defaults_apply() {
        let config = AgentConfig::parse("node = \"etl-1\"\n[manage]\n").unwrap();
        assert_eq!(config.manage.kafka_properties, None);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/kreach"));
        assert_eq!(config.manage.kafka_unit, "kafka.service");
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
