//! The agents a coordinator knows: for each node, how many streams it has open, what it last
//! reported (status, facts, health) and when, and which of those records still have to reach
//! the store.
//!
//! Owns the agent records and the `max_agents` admission. Does not own releases (the rollout
//! driver in [`crate::core`] decides and publishes them), nor how records are shown
//! ([`crate::views`]) or stored ([`crate::store`]). Takes the time from its caller.

use std::collections::{BTreeMap, BTreeSet};

use kreach_domain::report::{AgentHealth, HostFacts, NodeReport, Reached};

use crate::core::CoreError;
use crate::store::AgentRecord;

/// What the coordinator knows of one agent.
#[derive(Debug, Default, Clone)]
pub struct AgentEntry {
    /// Release streams open now (0: offline).
    pub connections: u32,
    pub status: Option<NodeReport>,
    pub facts: Option<HostFacts>,
    /// The agent's last health report (kept in memory: every session starts with one).
    pub health: Option<AgentHealth>,
    pub last_seen_ms: u64,
    /// When this coordinator last received the agent's reachability report (0: not since start).
    pub reachability_at_ms: u64,
}

impl AgentEntry {
    pub fn online(&self) -> bool {
        self.connections > 0
    }
}

pub struct Registry {
    agents: BTreeMap<String, AgentEntry>,
    max_agents: usize,
    /// Nodes whose records changed since the last [`Registry::take_changed`].
    changed: BTreeSet<String>,
}

impl Registry {
    /// The agents as the store kept them (all offline until they connect again).
    pub fn load(saved: Vec<(String, AgentRecord)>, max_agents: usize) -> Registry {
        let agents = saved
            .into_iter()
            .map(|(node, saved)| {
                let entry = AgentEntry {
                    connections: 0,
                    status: saved.status,
                    facts: saved.facts,
                    health: None,
                    last_seen_ms: saved.last_seen_ms,
                    reachability_at_ms: 0,
                };
                (node, entry)
            })
            .collect();
        Registry {
            agents,
            max_agents,
            changed: BTreeSet::new(),
        }
    }

    /// How many distinct agents (nodes) are kept track of; a new one beyond it is refused with
    /// [`CoreError::TooManyAgents`].
    pub fn set_max_agents(&mut self, max_agents: usize) {
        self.max_agents = max_agents;
    }

    /// Refuse a node not known yet when `max_agents` are tracked already.
    pub fn admit(&self, node: &str) -> Result<(), CoreError> {
        if self.agents.contains_key(node) || self.agents.len() < self.max_agents {
            return Ok(());
        }
        tracing::warn!(
            node,
            limit = self.max_agents,
            "agent refused: max_agents reached"
        );
        Err(CoreError::TooManyAgents {
            node: node.to_string(),
            limit: self.max_agents,
        })
    }

    /// `node`'s agent opened a release stream at `now_ms` (admit it first).
    pub fn connected(&mut self, node: &str, now_ms: u64) {
        let entry = self.agents.entry(node.to_string()).or_default();
        entry.connections += 1;
        entry.last_seen_ms = now_ms;
        tracing::info!(node, connections = entry.connections, "agent subscribed");
    }

    /// One of `node`'s release streams ended.
    pub fn disconnected(&mut self, node: &str) {
        if let Some(entry) = self.agents.get_mut(node) {
            entry.connections = entry.connections.saturating_sub(1);
            tracing::info!(node, connections = entry.connections, "agent stream ended");
        }
    }

    /// A reachability report: replaces the node's reachability, keeps the rest of its status.
    pub fn record_reachability(&mut self, node: &str, reachability: Vec<Reached>, now_ms: u64) {
        let failing = reachability.iter().filter(|r| !r.ok).count();
        tracing::info!(
            node,
            endpoints = reachability.len(),
            failing,
            "reachability reported"
        );
        let entry = self.agents.entry(node.to_string()).or_default();
        entry
            .status
            .get_or_insert_with(NodeReport::default)
            .reachability = reachability;
        entry.last_seen_ms = now_ms;
        entry.reachability_at_ms = now_ms;
        self.changed.insert(node.to_string());
    }

    /// A report on a release. Release reports carry no reachability: the last reachability
    /// report stands.
    pub fn record_status(&mut self, node: &str, mut report: NodeReport, now_ms: u64) {
        let entry = self.agents.entry(node.to_string()).or_default();
        if let Some(previous) = entry.status.take() {
            report.reachability = previous.reachability;
        }
        entry.status = Some(report);
        entry.last_seen_ms = now_ms;
        self.changed.insert(node.to_string());
    }

    pub fn record_facts(&mut self, node: &str, facts: HostFacts, now_ms: u64) {
        let entry = self.agents.entry(node.to_string()).or_default();
        entry.facts = Some(facts);
        entry.last_seen_ms = now_ms;
        self.changed.insert(node.to_string());
    }

    /// Health is kept in memory only: every session starts with a report of it.
    pub fn record_health(&mut self, node: &str, health: AgentHealth, now_ms: u64) {
        if !health.conflicts.is_empty() || !health.enforce_error.is_empty() {
            tracing::warn!(
                node,
                conflicts = health.conflicts.len(),
                enforce_error = %health.enforce_error,
                "agent reports a problem on its host"
            );
        }
        let entry = self.agents.entry(node.to_string()).or_default();
        entry.health = Some(health);
        entry.last_seen_ms = now_ms;
    }

    pub fn get(&self, node: &str) -> Option<&AgentEntry> {
        self.agents.get(node)
    }

    pub fn contains(&self, node: &str) -> bool {
        self.agents.contains_key(node)
    }

    /// The nodes whose agents have a release stream open, sorted.
    pub fn online_nodes(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|(_, entry)| entry.online())
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// A follower's copy: `nodes` are connected to the leader (one stream each), the rest not.
    pub fn set_online(&mut self, nodes: &[String]) {
        for entry in self.agents.values_mut() {
            entry.connections = 0;
        }
        for node in nodes {
            self.agents.entry(node.clone()).or_default().connections = 1;
        }
    }

    /// Whether `node`'s agent has a release stream open.
    pub fn online(&self, node: &str) -> bool {
        self.agents.get(node).is_some_and(AgentEntry::online)
    }

    /// Every known agent, by node name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &AgentEntry)> {
        self.agents.iter()
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Take `node`'s record out (it moves to another cluster's registry); its stored record is
    /// removed at the next [`Registry::take_changed`].
    pub fn take(&mut self, node: &str) -> Option<AgentEntry> {
        let entry = self.agents.remove(node)?;
        self.changed.insert(node.to_string());
        Some(entry)
    }

    /// Put in a record taken out of another registry, as it was (its streams included).
    pub fn insert(&mut self, node: &str, entry: AgentEntry) {
        self.agents.insert(node.to_string(), entry);
        self.changed.insert(node.to_string());
    }

    /// The records changed since the last call, as the store keeps them; None for a record
    /// taken out.
    pub fn take_changed(&mut self) -> Vec<(String, Option<AgentRecord>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|node| {
                let record = self.agents.get(&node).map(|entry| AgentRecord {
                    status: entry.status.clone(),
                    facts: entry.facts.clone(),
                    last_seen_ms: entry.last_seen_ms,
                });
                (node, record)
            })
            .collect()
    }
}
