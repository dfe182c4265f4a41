//! What agents tell the coordinator about their nodes, as the coordinator keeps it (in memory and
//! in its store): the report on the node's latest release, the host's facts, the agent's health
//! and the audit trail of changes. The agent–coordinator contract in the domain's words; the
//! wire messages are converted to and from these in `kreach-proto`'s one conversion module.

use serde::{Deserialize, Serialize};

use crate::gates::GateCheck;
use crate::release::ReleaseId;

/// Where a node is with its latest release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nothing reported on a release yet (a node that has only reported its reachability).
    #[default]
    Unknown,
    /// Waiting for its first release.
    Idle,
    Applying,
    Converged,
    RolledBack,
    Failed,
}

impl Phase {
    /// Whether the node reported that it does not hold the release (it is back on what it had).
    pub fn refused(self) -> bool {
        matches!(self, Phase::RolledBack | Phase::Failed)
    }
}

/// A node's last report on its release, and the reachability it last reported (clients).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub release: Option<ReleaseId>,
    pub phase: Phase,
    /// Why it rolled back or failed, or what to know about a convergence.
    pub reason: String,
    /// The gate checks that ran for the release.
    pub checks: Vec<GateCheck>,
    /// The Kafka restart's wall-clock span, Unix ms (0: no restart).
    pub restart_started_ms: u64,
    pub restart_finished_ms: u64,
    /// What this client host last reached of its view's brokers.
    pub reachability: Vec<Reached>,
}

/// One broker endpoint as a client host reached it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reached {
    pub broker_id: i32,
    /// `host:port` as advertised.
    pub endpoint: String,
    pub ok: bool,
    /// Why not, as [`crate::reachability::Failure::reason`] words it (or "stale", "unknown" in
    /// the coordinator's matrix); empty when reached.
    pub reason: String,
    pub checked_at_ms: u64,
    pub detail: String,
}

/// What an agent found on its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub fqdn: String,
    /// Its non-loopback addresses.
    pub addresses: Vec<String>,
    pub kafka_running: bool,
    pub agent_version: String,
    /// Whether this broker is the active controller.
    pub kafka_controller: bool,
    /// Brokers: the public key (PEM) of Kafka's TLS key, for the coordinator to certify.
    pub kafka_tls_public_key: String,
    /// The host's labels from its agent.toml.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What an agent knows of its host between releases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// Unmanaged hosts lines that shadow kreach's entries, one sentence each.
    pub conflicts: Vec<String>,
    /// Drift repairs since the agent started, and the Unix milliseconds of the last one (0: none).
    pub repairs: u64,
    pub last_repair_ms: u64,
    /// Why the last check of the managed files could not enforce the applied state (empty: it did).
    pub enforce_error: String,
    /// The EXTERNAL port filter: what is in force, "not managed", or "error: ...".
    pub firewall: String,
    /// Dynamic broker configs that hide kreach's edits of server.properties, one sentence each.
    pub dynamic_overrides: Vec<String>,
}

/// One change an agent made to a managed file, as its audit trail recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The agent's sequence number (1, 2, 3, ... for the life of its state directory).
    pub seq: u64,
    pub at_ms: u64,
    /// Which managed file ("hosts file", ...) and its path.
    pub file: String,
    pub path: String,
    /// "apply", "repair", "rollback", "undo".
    pub action: String,
    pub old_hash: String,
    pub new_hash: String,
    pub reason: String,
    pub generation: u64,
    pub released_by: String,
    pub node: String,
}
