//! The coordinator's state and decisions, behind one lock: the durable store, the rollout in
//! progress, what has been released to each node, and what each agent last reported.
//!
//! gRPC handlers only call these methods (they are short and never await), so every transition is
//! serialized; the rollout decisions themselves are the pure state machine in [`crate::rollout`].
//! Ordering rule: a release is persisted before it is published to any agent, so a crash can never
//! have released something the store does not know about.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kreach_domain::clock::Clock;
use kreach_domain::desired::{bootstrap_endpoints, render_node, NodeRole, NodeSpec};
use kreach_domain::diff::unified_diff;
use kreach_domain::report::{AgentHealth, HostFacts, NodeReport, Phase};
use kreach_domain::spec::{ClientSpec, ClusterSpec, View};
use kreach_proto as pb;
use kreach_runtime::clock::SteadyWallClock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::groups::{self, Membership};
use crate::registry::{AgentEntry, Registry};
use crate::rollout::{self, Event, ReportOutcome, Rollout, RolloutState};
use crate::store::{GenerationRecord, Store, StoreError};
use crate::views::{self, plan_steps};
use crate::writer::ReportWriter;

/// Errors an operator or agent sees; converted to `tonic::Status` in exactly one place (grpc.rs).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("the spec is invalid:\n{0}")]
    InvalidSpec(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A new node beyond `max_agents`: refused before anything about it is kept.
    #[error("node {node:?} refused: the coordinator already serves {limit} agents, its limit (max_agents in coordinator.toml)")]
    TooManyAgents { node: String, limit: usize },
}

/// The store's file in a cluster's state directory.
pub use crate::store::STORE_FILE;

/// The default of coordinator.toml's `max_agents`.
pub const DEFAULT_MAX_AGENTS: usize = 10_000;

/// What is persisted about rollouts: the one in progress (or last finished) and what every node
/// had been released before it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RolloutRecord {
    rollout: Option<Rollout>,
    base: BTreeMap<String, rollout::Release>,
}

/// The generation whose rollout `store` holds as still moving (running or settling between
/// steps), if any: `kreach-coordinator migrate` refuses to move such a store.
pub fn rollout_moving(store: &Store) -> Result<Option<u64>, CoreError> {
    let record: RolloutRecord = store.load_rollout()?.unwrap_or_default();
    Ok(record.rollout.and_then(|rollout| {
        matches!(
            rollout.state(),
            rollout::RolloutState::Running | rollout::RolloutState::Settling { .. }
        )
        .then(|| rollout.generation())
    }))
}

pub struct Core {
    store: Arc<Store>,
    /// Agents' reports (audit entries, status and facts records) reach the store through this
    /// writer, off the lock; rollout state is written here, under it.
    reports: ReportWriter,
    record: RolloutRecord,
    /// The agents and what they last reported.
    registry: Registry,
    channels: BTreeMap<String, watch::Sender<Option<pb::Release>>>,
    status: watch::Sender<pb::StatusResponse>,
    /// The spec of the newest generation, for roles.
    spec: Option<ClusterSpec>,
    /// The published status is stale; rebuilt at the next tick (a rebuild walks every node, so it
    /// is not done once per report of a 1,000-node fleet).
    status_dirty: bool,
    /// Issues Kafka's TLS certificates (see [`crate::certs`]).
    issuer: crate::certs::Issuer,
    /// When the newest rollout completed, as this process saw it (0: not since start); a client's
    /// reachability reported before it may describe what the brokers advertised before.
    completed_at_ms: u64,
    /// When certificates were last looked at for renewal, and when a renewal was last refused.
    renewal_checked_ms: u64,
    renewal_refused_ms: Option<u64>,
    /// The connected agents last stored for followers (etcd); None: not stored since start.
    live_stored: Option<Vec<String>>,
    /// Every timer and timestamp of the core (see [`kreach_domain::clock`]).
    clock: Arc<dyn Clock>,
}

/// How often the coordinator looks for Kafka certificates due for renewal (`[tls] renew_before`).
pub const RENEWAL_CHECK_MS: u64 = 5_000;
/// After a renewal that could not be applied, how long before it is tried again.
pub const RENEWAL_RETRY_MS: u64 = 10 * 60 * 1000;

/// A plan as [`Core::make_plan`] makes it: the spec, the rollout, what `plan` shows, and every
/// node's final spec (certificates included).
struct MadePlan {
    spec: ClusterSpec,
    plan: rollout::RolloutPlan,
    response: pb::PlanResponse,
    desired: Vec<NodeSpec>,
}

impl Core {
    pub fn open(state_dir: &Path) -> Result<Core, CoreError> {
        Core::open_with_clock(state_dir, Arc::new(SteadyWallClock::new()))
    }

    /// [`Core::open`] with the clock every timer and timestamp of the core reads.
    pub fn open_with_clock(state_dir: &Path, clock: Arc<dyn Clock>) -> Result<Core, CoreError> {
        Core::open_in(state_dir, &crate::store::StoreRoot::Redb, None, clock)
    }

    /// Open the core whose store `root` keeps for `cluster` (None: the home core), with its
    /// local files (the Kafka CA) under `state_dir`.
    pub fn open_in(
        state_dir: &Path,
        root: &crate::store::StoreRoot,
        cluster: Option<&str>,
        clock: Arc<dyn Clock>,
    ) -> Result<Core, CoreError> {
        let store = Arc::new(root.open(state_dir, cluster)?);
        let record: RolloutRecord = store.load_rollout()?.unwrap_or_default();
        let registry = Registry::load(store.agents()?, DEFAULT_MAX_AGENTS);
        let spec = store
            .generations()?
            .last()
            .and_then(|newest| ClusterSpec::parse(&newest.spec_toml).ok());
        let (status, _) = watch::channel(pb::StatusResponse::default());
        let reports = ReportWriter::start(Arc::clone(&store));
        let issuer = crate::certs::Issuer::with_store(
            state_dir,
            store.is_shared().then(|| Arc::clone(&store)),
        );
        let mut core = Core {
            store,
            reports,
            record,
            registry,
            channels: BTreeMap::new(),
            status,
            spec,
            status_dirty: false,
            issuer,
            completed_at_ms: 0,
            renewal_checked_ms: 0,
            renewal_refused_ms: None,
            live_stored: None,
            clock,
        };
        if let Some(rollout) = &core.record.rollout {
            tracing::info!(
                generation = rollout.generation(),
                state = rollout.state().name(),
                step = ?rollout.current_step(),
                "resuming the rollout from the store"
            );
        }
        core.publish();
        Ok(core)
    }

    /// Every node's latest release: the base overlaid with the rollout's releases.
    fn effective_releases(&self) -> BTreeMap<String, rollout::Release> {
        let mut releases = self.record.base.clone();
        if let Some(rollout) = &self.record.rollout {
            releases.extend(rollout.releases());
        }
        releases
    }

    /// What every node holds now, the base of a new plan: its latest release, except where the
    /// node reported that release rolled back or failed. There the node is on what it had before
    /// (the agent restored those bytes), so a later spec, even the same one applied again after an
    /// abort, is planned against that and released to the node again.
    fn held_releases(&self) -> BTreeMap<String, rollout::Release> {
        let mut releases = self.effective_releases();
        let refused: Vec<String> = releases
            .iter()
            .filter(|(node, release)| self.reported_not_held(node, release))
            .map(|(node, _)| node.clone())
            .collect();
        for node in refused {
            match self.record.base.get(&node) {
                Some(before) if !self.reported_not_held(&node, before) => {
                    releases.insert(node, before.clone());
                }
                _ => {
                    releases.remove(&node);
                }
            }
        }
        releases
    }

    /// The node's last report is a rollback or failure of exactly this release.
    fn reported_not_held(&self, node: &str, release: &rollout::Release) -> bool {
        let Some(status) = self
            .registry
            .get(node)
            .and_then(|entry| entry.status.as_ref())
        else {
            return false;
        };
        status.release == Some(release.id()) && status.phase.refused()
    }

    /// Push every node's latest release to its channel (only where it changed) and refresh status.
    /// Walks every node: called when releases change, not per report.
    fn publish(&mut self) {
        let releases = self.effective_releases();
        let members = self.member_releases(&releases, &self.membership());
        for (node, release) in releases.into_iter().chain(members) {
            self.send_release(node, &release);
        }
        let status = self.status_response();
        self.status.send_replace(status);
    }

    /// `node`'s release channel, made empty the first time.
    fn channel(&mut self, node: &str) -> &watch::Sender<Option<pb::Release>> {
        self.channels
            .entry(node.to_string())
            .or_insert_with(|| watch::channel(None).0)
    }

    /// Put `release` on `node`'s channel unless it is there already.
    fn send_release(&mut self, node: String, release: &rollout::Release) {
        let wire = to_wire_release(release);
        self.channel(&node).send_if_modified(|current| {
            if current.as_ref() == Some(&wire) {
                false
            } else {
                *current = Some(wire);
                true
            }
        });
    }

    /// The core's clock as a `SystemTime` (for certificate validity).
    fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(self.clock.now_ms())
    }

    /// The agents the newest spec's client groups select now.
    fn membership(&self) -> Membership {
        self.spec
            .as_ref()
            .map(|spec| groups::membership(spec, &self.registry))
            .unwrap_or_default()
    }

    /// What each client group member is released: a copy of what a listed client of its view
    /// holds now (so a member that joins mid-rollout gets the entries of the step it joins), or,
    /// with no listed client of its view, the newest spec's state for a client of that view, once
    /// no rollout is running. Members are in no rollout: they are not waited on, and a later plan
    /// does not see them.
    fn member_releases(
        &self,
        releases: &BTreeMap<String, rollout::Release>,
        membership: &Membership,
    ) -> BTreeMap<String, rollout::Release> {
        let release_of = |node: &str| releases.get(node).cloned();
        membership
            .members
            .iter()
            .filter_map(|(node, member)| {
                let release = self.member_release(node, member, &release_of)?;
                Some((node.clone(), release))
            })
            .collect()
    }

    /// `node`'s release as a member of a client group; `release_of` gives a listed node's latest
    /// release. None while it has to wait (no listed client of its view and a rollout running).
    fn member_release(
        &self,
        node: &str,
        member: &groups::Member,
        release_of: &dyn Fn(&str) -> Option<rollout::Release>,
    ) -> Option<rollout::Release> {
        let spec = self.spec.as_ref()?;
        let template = spec
            .clients
            .iter()
            .filter(|client| client.view == member.view)
            .find_map(|client| release_of(&client.node));
        if let Some(mut release) = template {
            release.spec.node = node.to_string();
            return Some(release);
        }
        let rollout = self.record.rollout.as_ref()?;
        if !rollout.is_finished() {
            return None;
        }
        let mut node_spec = kreach_domain::desired::client_node_spec(spec, node, member.view);
        if spec.view_uses_tls(member.view) {
            // Every broker of a TLS cluster holds the CA its clients trust.
            node_spec.kafka_ca_pem = spec
                .brokers
                .iter()
                .find_map(|broker| release_of(&broker.node))
                .map(|release| release.spec.kafka_ca_pem)
                .unwrap_or_default();
        }
        Some(rollout::Release {
            generation: rollout.generation(),
            step: 0,
            attempt: 0,
            spec: node_spec,
            released_by: format!("client group {}", member.group),
        })
    }

    /// `node`'s latest release: [`Core::effective_releases`] for one node.
    fn effective_release_of(&self, node: &str) -> Option<rollout::Release> {
        self.record
            .rollout
            .as_ref()
            .and_then(|rollout| rollout.release_of(node))
            .or_else(|| self.record.base.get(node).cloned())
    }

    /// `node` connected or reported new facts: if a client group selects it now, hand it its
    /// release. Looks at this one node (a fleet reconnecting does not walk the fleet per agent).
    fn refresh_member(&mut self, node: &str) {
        let (Some(spec), Some(entry)) = (&self.spec, self.registry.get(node)) else {
            return;
        };
        if spec.client_groups.is_empty() {
            return;
        }
        let Some(Ok(member)) = groups::member_of(spec, node, entry) else {
            return;
        };
        let release_of = |node: &str| self.effective_release_of(node);
        if let Some(release) = self.member_release(node, &member, &release_of) {
            self.send_release(node.to_string(), &release);
        }
    }

    fn persist_rollout(&self) -> Result<(), CoreError> {
        Ok(self.store.save_rollout(&self.record)?)
    }

    fn handle_events(&mut self, events: Vec<Event>) -> Result<(), CoreError> {
        let mut durable = false;
        // Structured fields for journald (CLUSTER, GENERATION, NODE) and JSON logs.
        let cluster = self.cluster_name();
        let generation = self.record.rollout.as_ref().map(Rollout::generation);
        for event in &events {
            let node = event.node();
            match event {
                Event::NodeConverged { .. } | Event::ReportIgnored { .. } => {
                    tracing::debug!(cluster, generation, node, event = ?event, "rollout event")
                }
                _ => {
                    durable = true;
                    if let Some(cause) = event.pause_cause() {
                        crate::metrics::record_pause(cluster.unwrap_or_default(), cause);
                    }
                    tracing::info!(cluster, generation, node, event = ?event, "rollout event")
                }
            }
        }
        if durable {
            self.persist_rollout()?;
        }
        if let Some(Event::Completed | Event::Aborted { .. }) = events.last() {
            self.mark_outcome()?;
        }
        if let Some(Event::Completed) = events.last() {
            // Before the status is published: clients' reports from before now are not current.
            self.completed_at_ms = self.clock.now_ms();
        }
        if durable {
            self.publish();
        } else {
            self.refresh_status();
        }
        if let Some(Event::Completed) = events.last() {
            self.nudge_clients();
        }
        Ok(())
    }

    /// A completed rollout changed what the brokers advertise after the clients took their last
    /// release (step 1): hand every client its release again so that its agent, finding it already
    /// applied, checks reachability now instead of at its next period (client group members
    /// too). The status then settles within a check's time of the rollout's end (`apply --wait`
    /// waits for it).
    fn nudge_clients(&self) {
        let releases = self.effective_releases();
        let members = self.member_releases(&releases, &self.membership());
        for (node, release) in releases.iter().chain(&members) {
            if !matches!(release.spec.role, NodeRole::Client { .. }) {
                continue;
            }
            if let Some(sender) = self.channels.get(node) {
                sender.send_modify(|_| {});
            }
        }
    }

    fn mark_outcome(&self) -> Result<(), CoreError> {
        let Some(rollout) = &self.record.rollout else {
            return Ok(());
        };
        if let Some(mut record) = self.store.generation(rollout.generation())? {
            record.outcome = Some(rollout.state().name().to_string());
            self.store.record_generation(&record, &self.record)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Agents

    /// How many distinct agents (nodes) the coordinator keeps track of; a new one beyond it is
    /// refused with [`CoreError::TooManyAgents`].
    pub fn set_max_agents(&mut self, max_agents: usize) {
        self.registry.set_max_agents(max_agents);
    }

    pub fn subscribe(
        &mut self,
        node: &str,
    ) -> Result<watch::Receiver<Option<pb::Release>>, CoreError> {
        self.registry.admit(node)?;
        self.registry.connected(node, self.clock.now_ms());
        self.refresh_member(node);
        let receiver = self.channel(node).subscribe();
        self.refresh_status();
        Ok(receiver)
    }

    /// The newest spec (None before the first apply).
    pub fn spec(&self) -> Option<&ClusterSpec> {
        self.spec.as_ref()
    }

    /// Whether the newest spec lists `node` as a broker.
    pub fn lists_broker(&self, node: &str) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|spec| spec.broker_by_node(node).is_some())
    }

    /// Whether the newest spec lists `node`, as a broker or a client.
    pub fn lists(&self, node: &str) -> bool {
        self.spec.as_ref().is_some_and(|spec| {
            spec.broker_by_node(node).is_some() || spec.client_by_node(node).is_some()
        })
    }

    /// Whether one of the newest spec's client groups selects `node`, as `entry` describes it.
    pub fn selects(&self, node: &str, entry: &AgentEntry) -> bool {
        self.spec.as_ref().is_some_and(|spec| {
            !spec.client_groups.is_empty()
                && matches!(groups::member_of(spec, node, entry), Some(Ok(_)))
        })
    }

    /// Whether this cluster released something to `node` (a node dropped from the spec keeps
    /// its last release, the removal of its hosts block).
    pub fn has_release(&self, node: &str) -> bool {
        self.effective_release_of(node).is_some()
    }

    /// What this cluster knows of `node`'s agent.
    pub fn agent(&self, node: &str) -> Option<&AgentEntry> {
        self.registry.get(node)
    }

    /// Every agent this cluster keeps a record of, by node name.
    pub fn agent_nodes(&self) -> impl Iterator<Item = &String> {
        self.registry.iter().map(|(node, _)| node)
    }

    /// Take `node`'s agent out of this cluster (it belongs to another one now): its record and
    /// its release channel go; its stored record is removed at the next tick.
    pub fn take_agent(&mut self, node: &str) -> Option<AgentEntry> {
        self.channels.remove(node);
        let entry = self.registry.take(node);
        self.refresh_status();
        entry
    }

    /// Take in `node`'s agent as another cluster had it (its streams, reports and facts), and
    /// its release channel from this cluster.
    pub fn adopt_agent(
        &mut self,
        node: &str,
        entry: AgentEntry,
    ) -> watch::Receiver<Option<pb::Release>> {
        self.registry.insert(node, entry);
        self.refresh_member(node);
        self.refresh_status();
        self.channel(node).subscribe()
    }

    pub fn disconnect(&mut self, node: &str) {
        self.registry.disconnected(node);
        self.refresh_status();
    }

    fn refresh_status(&mut self) {
        self.status_dirty = true;
    }

    /// `node`'s report on its release; one whose phase is [`Phase::Unknown`] carries only the
    /// client's reachability.
    pub fn report_status(&mut self, node: &str, report: NodeReport) -> Result<(), CoreError> {
        self.registry.admit(node)?;
        let phase = report.phase;
        if phase == Phase::Unknown {
            self.registry
                .record_reachability(node, report.reachability, self.clock.now_ms());
            self.refresh_status();
            return Ok(());
        }
        let release = report.release;
        let reason = report.reason.clone();
        self.registry
            .record_status(node, report, self.clock.now_ms());
        let node = node.to_string();
        let outcome = match phase {
            Phase::Converged => Some(ReportOutcome::Converged),
            Phase::RolledBack => Some(ReportOutcome::RolledBack { reason }),
            Phase::Failed => Some(ReportOutcome::Failed { reason }),
            Phase::Unknown | Phase::Idle | Phase::Applying => None,
        };
        match (outcome, release, self.record.rollout.as_mut()) {
            (Some(outcome), Some(id), Some(rollout)) => {
                let events = rollout.on_report(&node, id, outcome, self.clock.now_ms());
                self.handle_events(events)
            }
            _ => {
                self.refresh_status();
                Ok(())
            }
        }
    }

    pub fn report_facts(&mut self, node: &str, facts: HostFacts) -> Result<(), CoreError> {
        self.registry.admit(node)?;
        self.registry.record_facts(node, facts, self.clock.now_ms());
        self.refresh_member(node);
        self.refresh_status();
        Ok(())
    }

    pub fn report_health(&mut self, node: &str, health: AgentHealth) -> Result<(), CoreError> {
        self.registry.admit(node)?;
        self.registry
            .record_health(node, health, self.clock.now_ms());
        self.refresh_status();
        Ok(())
    }

    /// Periodic work: settle timers and health timeouts, and flushing agent records.
    pub fn tick(&mut self) -> Result<(), CoreError> {
        if let Some(rollout) = self.record.rollout.as_mut() {
            let now = self.clock.now_ms();
            let registry = &self.registry;
            let mut events = rollout.skip_offline_dropped(|node| !registry.online(node), now);
            events.extend(rollout.on_tick(now));
            // A target whose agent is not connected: offline since it was last seen, but never
            // counted from before the release it waits on (a node may have been off for days).
            let offline: Vec<(String, u64)> = rollout
                .waiting_nodes()
                .filter_map(|node| {
                    let entry = self.registry.get(node);
                    if entry.is_some_and(AgentEntry::online) {
                        return None;
                    }
                    let since = entry
                        .map_or(0, |entry| entry.last_seen_ms)
                        .max(rollout.released_at_ms());
                    Some((node.to_string(), now.saturating_sub(since)))
                })
                .collect();
            for (node, offline_ms) in offline {
                events.extend(rollout.on_agent_offline(&node, offline_ms));
            }
            if !events.is_empty() {
                self.handle_events(events)?;
            }
        }
        let records = self.registry.take_changed();
        if !records.is_empty() {
            // Queued for the report writer's next commit, shared with the audit reports queued
            // then: not one fsync per agent, and none under this lock.
            self.reports.save_agents(records);
        }
        self.store_live();
        self.renew_certificates(self.clock.now_ms());
        if self.status_dirty {
            self.status_dirty = false;
            let status = self.status_response();
            self.status.send_replace(status);
        }
        Ok(())
    }

    /// With a shared store (etcd), keep which agents are connected here whenever that changed,
    /// so that followers show it (see [`Core::adopt_live`]). One small write per tick at most.
    fn store_live(&mut self) {
        if !self.store.is_shared() {
            return;
        }
        let nodes = self.registry.online_nodes();
        if self.live_stored.as_ref() == Some(&nodes) {
            return;
        }
        let record = crate::store::LiveRecord {
            nodes,
            at_ms: self.clock.now_ms(),
        };
        match self.store.save_live(&record) {
            Ok(()) => self.live_stored = Some(record.nodes),
            Err(error) => tracing::warn!("storing which agents are connected failed: {error}"),
        }
    }

    /// A follower's copy of the store: take the agents' connections from the leader's record of
    /// them. False when there is none (no coordinator leads), or when `trust` is false (the
    /// follower knows the record cannot be current): every agent is shown offline for want of
    /// knowing, which the follower says.
    pub fn adopt_live(&mut self, trust: bool) -> Result<bool, CoreError> {
        let live = if trust { self.store.live()? } else { None };
        self.registry
            .set_online(live.as_ref().map_or(&[][..], |live| &live.nodes));
        let status = self.status_response();
        self.status.send_replace(status);
        Ok(live.is_some())
    }

    /// Certificate renewal, by itself: once a certificate some broker holds is within `[tls]
    /// renew_before` of its expiry, the newest generation's spec is applied again as a new
    /// generation (issuing new certificates for what is due, reusing the rest), whose steps have
    /// each broker reload them live. Only after a completed rollout: a paused, aborted or running
    /// one is the operator's to finish, and `status`/`check` show the certificate as due meanwhile.
    fn renew_certificates(&mut self, now: u64) {
        if now < self.renewal_checked_ms.saturating_add(RENEWAL_CHECK_MS) {
            return;
        }
        self.renewal_checked_ms = now;
        let Some(spec) = &self.spec else { return };
        let renew_before_ms = u64::try_from(spec.tls.renew_before.as_millis()).unwrap_or(u64::MAX);
        if !self
            .record
            .rollout
            .as_ref()
            .is_some_and(|rollout| matches!(rollout.state(), RolloutState::Completed))
        {
            return;
        }
        if self
            .renewal_refused_ms
            .is_some_and(|at| now < at.saturating_add(RENEWAL_RETRY_MS))
        {
            return;
        }
        let due: Vec<String> = self
            .held_releases()
            .into_iter()
            .filter(|(_, release)| {
                release
                    .spec
                    .certificates
                    .iter()
                    .any(|c| c.not_after_ms <= now.saturating_add(renew_before_ms))
            })
            .map(|(node, _)| node)
            .collect();
        if due.is_empty() {
            return;
        }
        let newest = match self.store.generations() {
            Ok(generations) => generations.last().map(|g| g.spec_toml.clone()),
            Err(error) => {
                tracing::warn!("certificate renewal: cannot read the newest generation: {error}");
                return;
            }
        };
        let Some(spec_toml) = newest else { return };
        let who = format!("certificate renewal ({})", due.join(", "));
        match self.apply(&spec_toml, true, &who, None) {
            Ok(response) => {
                self.renewal_refused_ms = None;
                tracing::info!(generation = response.generation, nodes = ?due, "renewing Kafka certificates due for renewal");
            }
            Err(error) => {
                self.renewal_refused_ms = Some(now);
                tracing::warn!(nodes = ?due, "certificate renewal could not be applied (tried again in {} min): {error}", RENEWAL_RETRY_MS / 60_000);
            }
        }
    }

    pub fn watch_status(&self) -> watch::Receiver<pb::StatusResponse> {
        self.status.subscribe()
    }

    // ---------------------------------------------------------------------------------------
    // Operators

    fn controller(&self) -> Option<String> {
        self.registry
            .iter()
            .find(|(_, entry)| {
                entry
                    .facts
                    .as_ref()
                    .is_some_and(|facts| facts.kafka_controller)
            })
            .map(|(node, _)| node.clone())
    }

    fn next_generation(&self) -> Result<u64, CoreError> {
        Ok(self
            .store
            .generations()?
            .last()
            .map(|g| g.generation)
            .unwrap_or(0)
            + 1)
    }

    fn make_plan(&self, spec_toml: &str) -> Result<MadePlan, CoreError> {
        let spec = ClusterSpec::parse(spec_toml)
            .map_err(|errors| CoreError::InvalidSpec(errors.to_string()))?;
        let current: BTreeMap<String, NodeSpec> = self
            .held_releases()
            .into_iter()
            .map(|(node, release)| (node, release.spec))
            .collect();
        let generation = self.next_generation()?;
        let controller = self.controller();
        let mut desired = kreach_domain::desired::all_node_specs(&spec);
        let public_keys: BTreeMap<String, String> = self
            .registry
            .iter()
            .filter_map(|(node, entry)| {
                let facts = entry.facts.as_ref()?;
                Some((node.clone(), facts.kafka_tls_public_key.clone()))
            })
            .collect();
        let attached = self
            .issuer
            .attach(
                &spec,
                &current,
                &public_keys,
                &mut desired,
                self.system_time(),
            )
            .map_err(CoreError::Refused)?;
        // The SCRAM users go to every broker: any one of them can keep them in Kafka.
        let users: Vec<kreach_domain::desired::ScramUser> = self
            .store
            .scram_users::<crate::users::StoredUser>()?
            .into_iter()
            .map(|stored| stored.user)
            .collect();
        for node in desired.iter_mut() {
            if matches!(node.role, NodeRole::Broker { .. }) {
                node.scram_users.clone_from(&users);
            }
        }
        let uncovered = crate::certs::uncovered(&desired);
        if !uncovered.is_empty() {
            return Err(CoreError::Refused(format!(
                "a TLS certificate would not cover what its listener advertises, so clients verifying the hostname would fail:\n{}",
                uncovered.join("\n")
            )));
        }
        let desired_map: BTreeMap<String, NodeSpec> = desired
            .iter()
            .map(|node| (node.node.clone(), node.clone()))
            .collect();
        let plan = rollout::plan_for_desired(
            generation,
            &current,
            &spec,
            &desired_map,
            controller.as_deref(),
        );
        let (mut warnings, mut notes) = self.fact_warnings(&spec);
        warnings.extend(attached.warnings);
        // A dynamic override of a key kreach owns beats server.properties: this plan's edits of
        // that key would not take effect on that broker.
        for broker in &spec.brokers {
            let Some(health) = self
                .registry
                .get(&broker.node)
                .and_then(|e| e.health.as_ref())
            else {
                continue;
            };
            for dynamic in &health.dynamic_overrides {
                warnings.push(format!(
                    "broker {} (node {:?}): {dynamic}; kreach's edits of that key would not take effect",
                    broker.id, broker.node
                ));
            }
        }
        if controller.is_none() && plan.steps.iter().any(|step| step.restarts) {
            notes.push(
                "the active controller is not known (no agent reports it): brokers restart in id order, \
                 so the controller may not go last (brokers report it with probe = \"kafka\" or [manage] controller_check)"
                    .to_string(),
            );
        }
        let mut nodes = Vec::new();
        for desired in &desired {
            let old = current
                .get(&desired.node)
                .map(|old| render_node(old).unwrap_or_default())
                .unwrap_or_default();
            let new = render_node(desired).map_err(CoreError::Refused)?;
            let restart = current
                .get(&desired.node)
                .map(|old| old.listeners != desired.listeners)
                .unwrap_or(desired.listeners.is_some());
            nodes.push(pb::NodeDiff {
                node: desired.node.clone(),
                role: desired.role.to_string(),
                diff: unified_diff(&format!("/{}", desired.node), &old, &new),
                restart,
                source: "generation".to_string(),
                ..pb::NodeDiff::default()
            });
        }
        self.plan_dropped(&plan, &current, &mut nodes, &mut notes);
        let response = pb::PlanResponse {
            from_generation: generation - 1,
            nodes,
            steps: plan_steps(&plan),
            warnings,
            notes,
        };
        Ok(MadePlan {
            spec,
            plan,
            response,
            desired,
        })
    }

    /// The nodes dropped from the spec, in the plan: what the contract step does to each (removes
    /// its kreach hosts block, nothing else) and, for an offline one, that it is not waited for.
    fn plan_dropped(
        &self,
        plan: &rollout::RolloutPlan,
        current: &BTreeMap<String, NodeSpec>,
        nodes: &mut Vec<pb::NodeDiff>,
        notes: &mut Vec<String>,
    ) {
        for node in &plan.dropped {
            let (Some(have), Some(target)) = (current.get(node), dropped_target(plan, node)) else {
                continue;
            };
            nodes.push(pb::NodeDiff {
                node: node.clone(),
                role: have.role.to_string(),
                diff: unified_diff(
                    &format!("/{node}"),
                    &render_node(have).unwrap_or_default(),
                    &render_node(target).unwrap_or_default(),
                ),
                restart: false,
                source: "generation".to_string(),
                dropped: true,
                ..pb::NodeDiff::default()
            });
            if matches!(have.role, NodeRole::Broker { .. }) {
                notes.push(format!(
                    "{node} ({}) is no longer in the spec: the contract step removes its kreach hosts block only; its server.properties (listener keys included), EXTERNAL filter and Kafka are left as they are, no restart",
                    have.role
                ));
            }
            if !self.registry.online(node) {
                notes.push(format!(
                    "{node} is no longer in the spec and its agent is offline: the contract step does not wait for it; its block is removed when its agent reconnects"
                ));
            }
        }
    }

    /// The plan, with what each node's agent can be asked to dry-run on its host: the node's final
    /// spec of this plan, or why its agent cannot be asked (never connected, offline). The gRPC
    /// edge asks them ([`crate::dry_run`]) without holding the core.
    pub fn plan_draft(&self, spec_toml: &str) -> Result<PlanDraft, CoreError> {
        let MadePlan {
            plan,
            response,
            desired,
            ..
        } = self.make_plan(spec_toml)?;
        let mut finals: BTreeMap<String, NodeSpec> = desired
            .into_iter()
            .map(|node| (node.node.clone(), node))
            .collect();
        for node in &plan.dropped {
            if let Some(target) = dropped_target(&plan, node) {
                finals.insert(node.clone(), target.clone());
            }
        }
        let mut draft = PlanDraft {
            response,
            host_checks: Vec::new(),
            unreachable: BTreeMap::new(),
        };
        for (node, spec) in finals {
            match self.registry.get(&node) {
                None => {
                    draft
                        .unreachable
                        .insert(node, "its agent never connected".to_string());
                }
                Some(entry) if entry.connections == 0 => {
                    let ago = self.clock.now_ms().saturating_sub(entry.last_seen_ms) / 1000;
                    let why = if entry.last_seen_ms == 0 {
                        "its agent is offline".to_string()
                    } else {
                        format!("its agent is offline, last seen {ago} s ago")
                    };
                    draft.unreachable.insert(node, why);
                }
                Some(_) => draft.host_checks.push((node, pb::NodeSpec::from(&spec))),
            }
        }
        Ok(draft)
    }

    /// Brokers whose host facts disagree with the spec (the warnings, which refuse an apply
    /// without `--force`): the manual procedure's "sync host information" step, checked instead
    /// of trusted. And the brokers that could not be checked (the notes).
    fn fact_warnings(&self, spec: &ClusterSpec) -> (Vec<String>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        // Client groups: who they select now, and hosts two groups of different views select.
        let membership = groups::membership(spec, &self.registry);
        for group in &spec.client_groups {
            let selected: Vec<&str> = membership
                .members
                .iter()
                .filter(|(_, member)| member.group == group.name)
                .map(|(node, _)| node.as_str())
                .collect();
            notes.push(format!(
                "client group {:?} ({} view) selects {} connected agent(s){}{}",
                group.name,
                group.view.as_str(),
                selected.len(),
                if selected.is_empty() { "" } else { ": " },
                selected.join(", ")
            ));
        }
        for (node, why) in &membership.conflicts {
            warnings.push(format!("node {node:?}: {why}"));
        }
        // A node whose agent never connected would be waited on until `agent_timeout`.
        for desired in kreach_domain::desired::all_node_specs(spec) {
            if !self.registry.contains(&desired.node) {
                warnings.push(format!(
                    "{} {:?}: its agent has never connected to this coordinator (not installed, \
                     another node name in agent.toml, or no route to the coordinator); its steps \
                     would pause after agent_timeout",
                    role_word(&desired.role),
                    desired.node
                ));
            }
        }
        for broker in &spec.brokers {
            if !self.registry.contains(&broker.node) {
                continue;
            }
            let Some(facts) = self
                .registry
                .get(&broker.node)
                .and_then(|entry| entry.facts.as_ref())
            else {
                notes.push(format!(
                    "broker {} (node {:?}): its agent has not reported host facts, so private_ip and hostname are unchecked",
                    broker.id, broker.node
                ));
                continue;
            };
            let private_ip = broker.private_ip.to_string();
            if !facts.addresses.iter().any(|address| address == &private_ip) {
                warnings.push(format!(
                    "broker {} (node {:?}): private_ip {} is not an address of that host (it has {})",
                    broker.id,
                    broker.node,
                    private_ip,
                    if facts.addresses.is_empty() { "none".to_string() } else { facts.addresses.join(", ") }
                ));
            }
            if let Some(hostname) = &broker.hostname {
                let own = [&facts.hostname, &facts.fqdn];
                if !own.iter().any(|name| name.eq_ignore_ascii_case(hostname)) {
                    warnings.push(format!(
                        "broker {} (node {:?}): hostname {hostname} is not the host's own name ({} / {})",
                        broker.id, broker.node, facts.hostname, facts.fqdn
                    ));
                }
            }
        }
        (warnings, notes)
    }

    pub fn plan(&self, spec_toml: &str) -> Result<pb::PlanResponse, CoreError> {
        Ok(self.make_plan(spec_toml)?.response)
    }

    pub fn apply(
        &mut self,
        spec_toml: &str,
        force: bool,
        who: &str,
        rollback_of: Option<u64>,
    ) -> Result<pb::ApplyResponse, CoreError> {
        if let Some(rollout) = &self.record.rollout {
            if !rollout.is_finished() {
                return Err(CoreError::Refused(format!(
                    "generation {} is still rolling out ({}); wait for it, or `kreachctl rollout abort` first",
                    rollout.generation(),
                    rollout.state().name()
                )));
            }
        }
        let MadePlan {
            spec,
            plan,
            response,
            ..
        } = self.make_plan(spec_toml)?;
        if !response.warnings.is_empty() && !force {
            return Err(CoreError::Refused(format!(
                "host facts disagree with the spec, or its agents never connected (use --force to apply anyway):\n{}",
                response.warnings.join("\n")
            )));
        }
        let generation = plan.generation;
        let summary = format!(
            "cluster {}: {} step(s), {} node(s) change{}",
            spec.name,
            plan.steps.len(),
            response.nodes.iter().filter(|n| !n.diff.is_empty()).count(),
            rollback_of
                .map(|n| format!(", rollback to generation {n}"))
                .unwrap_or_default()
        );
        let base = self.held_releases();
        let (rollout, events) = Rollout::start(
            plan,
            format!("{who}: generation {generation}"),
            self.clock.now_ms(),
        );
        self.record = RolloutRecord {
            rollout: Some(rollout),
            base,
        };
        self.store.record_generation(
            &GenerationRecord {
                generation,
                spec_toml: spec_toml.to_string(),
                applied_at_ms: self.clock.now_ms(),
                summary,
                rollback_of,
                outcome: None,
            },
            &self.record,
        )?;
        self.spec = Some(spec);
        tracing::info!(
            cluster = self.cluster_name(),
            generation,
            who,
            "applied a new generation"
        );
        self.handle_events(events)?;
        Ok(pb::ApplyResponse {
            generation,
            plan: Some(response),
        })
    }

    fn with_rollout(
        &mut self,
        action: &str,
        change: impl FnOnce(&mut Rollout) -> Vec<Event>,
    ) -> Result<pb::StatusResponse, CoreError> {
        let rollout = self
            .record
            .rollout
            .as_mut()
            .ok_or_else(|| CoreError::NotFound(format!("no rollout to {action}")))?;
        if rollout.is_finished() {
            return Err(CoreError::Refused(format!(
                "generation {}'s rollout is {}; nothing to {action}",
                rollout.generation(),
                rollout.state().name()
            )));
        }
        let events = change(rollout);
        self.handle_events(events)?;
        Ok(self.status_response())
    }

    pub fn pause(&mut self) -> Result<pb::StatusResponse, CoreError> {
        self.with_rollout("pause", |rollout| rollout.pause("paused by the operator"))
    }

    pub fn resume(&mut self) -> Result<pb::StatusResponse, CoreError> {
        if let Some(rollout) = &self.record.rollout {
            if !matches!(rollout.state(), RolloutState::Paused { .. }) {
                return Err(CoreError::Refused(format!(
                    "the rollout is {}, not paused",
                    rollout.state().name()
                )));
            }
        }
        let now = self.clock.now_ms();
        self.with_rollout("resume", |rollout| rollout.resume(now))
    }

    pub fn abort(&mut self) -> Result<pb::StatusResponse, CoreError> {
        self.with_rollout("abort", |rollout| rollout.abort())
    }

    pub fn rollback(
        &mut self,
        to: u64,
        force: bool,
        dry_run: bool,
        who: &str,
    ) -> Result<pb::ApplyResponse, CoreError> {
        let record = self.store.generation(to)?.ok_or_else(|| {
            CoreError::NotFound(format!(
                "there is no generation {to} (see `kreachctl history`)"
            ))
        })?;
        if dry_run {
            return Ok(pb::ApplyResponse {
                generation: 0,
                plan: Some(self.plan(&record.spec_toml)?),
            });
        }
        self.apply(&record.spec_toml, force, who, Some(to))
    }

    /// [`Core::plan_draft`] of generation `to`'s spec (`rollback --to` before it asks).
    pub fn rollback_draft(&self, to: u64) -> Result<PlanDraft, CoreError> {
        let record = self.store.generation(to)?.ok_or_else(|| {
            CoreError::NotFound(format!(
                "there is no generation {to} (see `kreachctl history`)"
            ))
        })?;
        self.plan_draft(&record.spec_toml)
    }

    /// Where agents' audit reports go: the gRPC edge stores them through this without holding
    /// the core's lock (see [`crate::writer`]).
    pub fn report_writer(&self) -> ReportWriter {
        self.reports.clone()
    }

    /// Flush what agents reported (records queued by [`Core::tick`]) and wait until it is stored.
    /// Blocking: at shutdown.
    pub fn flush_reports(&mut self) -> Result<(), CoreError> {
        let result = self.tick();
        self.reports.flush();
        result
    }

    /// The generations, or with `request.node` that node's changes as its agent reported them.
    pub fn history(&self, request: &pb::HistoryRequest) -> Result<pb::HistoryResponse, CoreError> {
        if request.node.is_empty() {
            return self.generations();
        }
        let last = (request.last > 0).then_some(request.last as usize);
        let changes = self
            .store
            .audit(&request.node, last)?
            .iter()
            .map(pb::AuditRecord::from)
            .collect();
        Ok(pb::HistoryResponse {
            changes,
            ..Default::default()
        })
    }

    fn generations(&self) -> Result<pb::HistoryResponse, CoreError> {
        let current = self
            .record
            .rollout
            .as_ref()
            .map(|r| (r.generation(), r.state().name()));
        let generations = self
            .store
            .generations()?
            .into_iter()
            .map(|record| {
                let outcome = match (current, &record.outcome) {
                    (Some((generation, state)), _) if generation == record.generation => {
                        state.to_string()
                    }
                    (_, Some(outcome)) => outcome.clone(),
                    _ => "superseded".to_string(),
                };
                pb::GenerationRecord {
                    generation: record.generation,
                    applied_at_ms: record.applied_at_ms,
                    summary: record.summary,
                    outcome,
                    rollback_of: record.rollback_of,
                }
            })
            .collect();
        Ok(pb::HistoryResponse {
            generations,
            ..Default::default()
        })
    }

    /// `kreachctl users`: list the cluster's SCRAM users, or add (change) or remove one and roll
    /// the change out as a new generation of the newest spec (every broker keeps the users).
    pub fn users(
        &mut self,
        request: &pb::UsersRequest,
        who: &str,
    ) -> Result<pb::UsersResponse, CoreError> {
        let mut stored: Vec<crate::users::StoredUser> = self.store.scram_users()?;
        // What to put back when the rollout of the change cannot start.
        let previous = stored.clone();
        let view = |stored: &[crate::users::StoredUser]| {
            stored
                .iter()
                .map(|s| pb::UserView {
                    name: s.user.name.clone(),
                    mechanism: s.user.mechanism.clone(),
                    iterations: s.user.iterations,
                    added_ms: s.added_ms,
                })
                .collect()
        };
        let what = match request.action.as_str() {
            "list" => {
                return Ok(pb::UsersResponse {
                    users: view(&stored),
                    generation: 0,
                })
            }
            "add" => {
                let user = request
                    .user
                    .as_ref()
                    .map(kreach_domain::desired::ScramUser::from)
                    .ok_or_else(|| CoreError::Refused("users add: no credential".to_string()))?;
                crate::users::check(&user)
                    .map_err(|error| CoreError::Refused(format!("users add: {error}")))?;
                stored
                    .retain(|s| !(s.user.name == user.name && s.user.mechanism == user.mechanism));
                let what = format!("users add {} ({})", user.name, user.mechanism);
                stored.push(crate::users::StoredUser {
                    user,
                    added_ms: self.clock.now_ms(),
                });
                stored.sort_by(|a, b| a.user.cmp(&b.user));
                what
            }
            "remove" => {
                let before = stored.len();
                stored.retain(|s| s.user.name != request.name);
                if stored.len() == before {
                    return Err(CoreError::NotFound(format!(
                        "no SCRAM user {:?} (kreachctl users list)",
                        request.name
                    )));
                }
                format!("users remove {}", request.name)
            }
            other => {
                return Err(CoreError::Refused(format!(
                    "users: unknown action {other:?} (list, add, remove)"
                )))
            }
        };
        let newest = self
            .store
            .generations()?
            .last()
            .map(|g| g.spec_toml.clone());
        let Some(spec_toml) = newest else {
            // Nothing to roll out yet: the first apply gives the brokers their users.
            self.store.save_scram_users(&stored)?;
            tracing::info!(who, "{what} (kept for the first apply)");
            return Ok(pb::UsersResponse {
                users: view(&stored),
                generation: 0,
            });
        };
        if let Some(rollout) = &self.record.rollout {
            if !rollout.is_finished() {
                return Err(CoreError::Refused(format!(
                    "generation {} is still rolling out ({}); change users once it is done",
                    rollout.generation(),
                    rollout.state().name()
                )));
            }
        }
        self.store.save_scram_users(&stored)?;
        match self.apply(&spec_toml, true, &format!("{who}: {what}"), None) {
            Ok(applied) => Ok(pb::UsersResponse {
                users: view(&stored),
                generation: applied.generation,
            }),
            Err(error) => {
                self.store.save_scram_users(&previous)?;
                Err(error)
            }
        }
    }

    /// What a Kafka client on `client`'s host needs: its view's bootstrap endpoints and listener
    /// security, and where its agent installs the Kafka CA.
    pub fn client_config(&self, client: &str) -> Result<pb::ClientConfigResponse, CoreError> {
        let (spec, found) = self.client_of_newest_spec(client)?;
        let listener = match found.view {
            View::Private => &spec.internal,
            View::Public => &spec.external,
        };
        let tls = listener.uses_tls();
        Ok(pb::ClientConfigResponse {
            cluster: spec.name.clone(),
            view: found.view.as_str().to_string(),
            bootstrap: bootstrap_endpoints(spec, found.view)
                .iter()
                .map(ToString::to_string)
                .collect(),
            security_protocol: listener.security_protocol.clone(),
            sasl_mechanism: listener.sasl_mechanism.clone().unwrap_or_default(),
            ca_path: if tls {
                format!("/etc/kreach/kafka-ca/{}.pem", spec.name)
            } else {
                String::new()
            },
        })
    }

    /// The newest spec's cluster name (None before the first apply).
    pub fn cluster_name(&self) -> Option<&str> {
        self.spec.as_ref().map(|spec| spec.name.as_str())
    }

    /// The newest spec and `client`'s entry in it; NotFound naming the spec's clients otherwise.
    pub fn client_of_newest_spec(
        &self,
        client: &str,
    ) -> Result<(&ClusterSpec, &ClientSpec), CoreError> {
        let spec = self.spec.as_ref().ok_or_else(|| {
            CoreError::NotFound("no spec applied yet (kreachctl apply SPEC first)".to_string())
        })?;
        let Some(found) = spec.clients.iter().find(|c| c.node == client) else {
            let known: Vec<&str> = spec.clients.iter().map(|c| c.node.as_str()).collect();
            return Err(CoreError::NotFound(format!(
                "{client:?} is not a client of the newest spec (its clients: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        Ok((spec, found))
    }

    pub fn nodes(&self) -> pb::NodesResponse {
        views::nodes(&self.registry)
    }

    pub fn status_response(&self) -> pb::StatusResponse {
        let releases = self.effective_releases();
        let membership = self.membership();
        let member_releases = self.member_releases(&releases, &membership);
        views::status(&views::StatusInputs {
            releases: &releases,
            spec: self.spec.as_ref(),
            registry: &self.registry,
            membership: &membership,
            member_releases: &member_releases,
            rollout: self.record.rollout.as_ref(),
            now_ms: self.clock.now_ms(),
            completed_at_ms: self.completed_at_ms,
            cluster: self.cluster_name().unwrap_or_default(),
        })
    }
}

/// A plan before its nodes are checked on their hosts (see [`Core::plan_draft`]).
pub struct PlanDraft {
    /// The plan with generation-to-generation diffs (`source` "generation").
    pub response: pb::PlanResponse,
    /// Node → its final spec of the plan, for the nodes whose agent is connected.
    pub host_checks: Vec<(String, pb::NodeSpec)>,
    /// Node → why its agent cannot be asked.
    pub unreachable: BTreeMap<String, String>,
}

/// What the contract step releases to a node dropped from the spec.
fn dropped_target<'a>(plan: &'a rollout::RolloutPlan, node: &str) -> Option<&'a NodeSpec> {
    plan.steps
        .iter()
        .rev()
        .find_map(|step| step.targets.get(node))
}

fn wire_id(release: &rollout::Release) -> pb::ReleaseId {
    pb::ReleaseId::from(release.id())
}

fn to_wire_release(release: &rollout::Release) -> pb::Release {
    pb::Release {
        id: Some(wire_id(release)),
        spec: Some(pb::NodeSpec::from(&release.spec)),
        released_by: release.released_by.clone(),
        // The hub stamps the clusters the node is attached to on the way out.
        clusters: Vec::new(),
    }
}

/// The role of a node as a short word, for tables.
pub fn role_word(role: &NodeRole) -> &'static str {
    match role {
        NodeRole::Broker { .. } => "broker",
        NodeRole::Client { .. } => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_beyond_max_agents_are_refused_and_known_ones_still_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = Core::open(dir.path()).unwrap();
        core.set_max_agents(2);
        core.subscribe("w1").unwrap();
        core.report_facts("w2", HostFacts::default()).unwrap();
        let error = core.subscribe("w3").unwrap_err().to_string();
        assert_eq!(
            error,
            "node \"w3\" refused: the coordinator already serves 2 agents, its limit (max_agents in coordinator.toml)"
        );
        assert!(
            core.report_status("w4", NodeReport::default()).is_err(),
            "nothing is kept about w4"
        );
        assert_eq!(core.registry.len(), 2);
        // Nodes already known keep working.
        core.subscribe("w2").unwrap();
        core.subscribe("w1").unwrap();
    }

    #[test]
    fn brokers_get_certificates_for_their_own_keys_covering_what_they_advertise() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = Core::open(dir.path()).unwrap();
        let key = kreach_runtime::kafka_tls::new_private_key_pem().unwrap();
        let public = kreach_runtime::kafka_tls::public_key_pem(&key).unwrap();
        let facts = HostFacts {
            kafka_tls_public_key: public.clone(),
            ..Default::default()
        };
        core.report_facts("b1", facts).unwrap();
        let spec = "[cluster]\nname = \"c\"\n\
                    [listeners.external]\nallow = [\"0.0.0.0/0\"]\nadvertise = \"hostname\"\nsecurity_protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
                    [[broker]]\nid = 1\nnode = \"b1\"\nhostname = \"b1.c\"\nprivate_ip = \"10.0.0.1\"\npublic_ip = \"198.19.0.1\"\n\
                    [[broker]]\nid = 2\nnode = \"b2\"\nhostname = \"b2.c\"\nprivate_ip = \"10.0.0.2\"\npublic_ip = \"198.19.0.2\"\n\
                    [[client]]\nnode = \"laptop\"\nview = \"public\"\n";
        let made = core.make_plan(spec).unwrap();
        let b1 = made.desired.iter().find(|n| n.node == "b1").unwrap();
        assert_eq!(b1.certificates.len(), 1);
        let cert = &b1.certificates[0];
        assert_eq!(cert.listener, "EXTERNAL");
        assert_eq!(cert.sans, ["b1.c", "b1", "198.19.0.1"]);
        let info = kreach_runtime::kafka_tls::inspect(&cert.chain_pem).unwrap();
        assert!(kreach_runtime::kafka_tls::same_public_key(
            &public,
            &info.public_key_der
        ));
        assert!(!cert.chain_pem.contains("PRIVATE KEY"));
        // The CA was made once, its key private to the coordinator.
        let ca_key = dir.path().join("kafka-ca/ca.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&ca_key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(cert.chain_pem.ends_with(&b1.kafka_ca_pem));
        // A public client gets the CA to trust; the plan shows the certificate, never a key.
        let laptop = made.desired.iter().find(|n| n.node == "laptop").unwrap();
        assert_eq!(laptop.kafka_ca_pem, b1.kafka_ca_pem);
        let shown = made.response.nodes.iter().find(|n| n.node == "b1").unwrap();
        assert!(
            shown.diff.contains("covers b1.c, b1, 198.19.0.1"),
            "{}",
            shown.diff
        );
        // b2 never reported a key: a warning names it, which refuses the apply without --force.
        assert!(
            made.response
                .warnings
                .iter()
                .any(|w| w.contains("broker 2 (node \"b2\"): no TLS key reported")),
            "{:?}",
            made.response.warnings
        );
        // Planning again shows the same certificate (what the apply will release).
        let again = core.make_plan(spec).unwrap();
        let b1_again = again.desired.iter().find(|n| n.node == "b1").unwrap();
        assert_eq!(b1_again.certificates, b1.certificates);
        // Once held, it is reused; a moved public IP gets a new one covering the new address.
        let current: BTreeMap<String, NodeSpec> = [("b1".to_string(), b1.clone())].into();
        let moved = spec.replace("198.19.0.1", "198.19.0.9");
        let spec = ClusterSpec::parse(&moved).unwrap();
        let mut desired = kreach_domain::desired::all_node_specs(&spec);
        let keys: BTreeMap<String, String> = [("b1".to_string(), public.clone())].into();
        core.issuer
            .attach(&spec, &current, &keys, &mut desired, core.system_time())
            .unwrap();
        let moved_cert = &desired
            .iter()
            .find(|n| n.node == "b1")
            .unwrap()
            .certificates[0];
        assert_eq!(moved_cert.sans, ["b1.c", "b1", "198.19.0.9"]);
        assert_ne!(moved_cert.serial, cert.serial);
        let same = ClusterSpec::parse(&moved.replace("198.19.0.9", "198.19.0.1")).unwrap();
        let mut desired = kreach_domain::desired::all_node_specs(&same);
        core.issuer
            .attach(&same, &current, &keys, &mut desired, core.system_time())
            .unwrap();
        assert_eq!(
            desired
                .iter()
                .find(|n| n.node == "b1")
                .unwrap()
                .certificates[0],
            *cert
        );
    }

    #[test]
    fn client_config_gives_the_views_bootstrap_security_and_ca_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = Core::open(dir.path()).unwrap();
        assert!(core
            .client_config("laptop")
            .unwrap_err()
            .to_string()
            .contains("no spec applied yet"));
        core.spec = Some(
            ClusterSpec::parse(
                "[cluster]\nname = \"c\"\n\
                 [listeners.external]\nallow = [\"0.0.0.0/0\"]\nadvertise = \"hostname\"\nsecurity_protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
                 [[broker]]\nid = 1\nnode = \"b1\"\nhostname = \"b1.c\"\nprivate_ip = \"10.0.0.1\"\npublic_ip = \"198.19.0.1\"\n\
                 [[client]]\nnode = \"laptop\"\nview = \"public\"\n[[client]]\nnode = \"etl\"\n",
            )
            .unwrap(),
        );
        let public = core.client_config("laptop").unwrap();
        assert_eq!(public.bootstrap, ["b1.c:9093"]);
        let librdkafka = crate::ctl::client_properties(&public, false);
        let get = |props: &[(String, String)], key: &str| {
            props.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        assert_eq!(
            get(&librdkafka, "security.protocol").as_deref(),
            Some("sasl_ssl")
        );
        assert_eq!(
            get(&librdkafka, "ssl.ca.location").as_deref(),
            Some("/etc/kreach/kafka-ca/c.pem")
        );
        assert_eq!(
            get(&librdkafka, "ssl.endpoint.identification.algorithm").as_deref(),
            Some("https")
        );
        assert_eq!(
            get(&librdkafka, "sasl.mechanism").as_deref(),
            Some("SCRAM-SHA-512")
        );
        let java = crate::ctl::client_properties(&public, true);
        assert_eq!(get(&java, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(get(&java, "ssl.truststore.type").as_deref(), Some("PEM"));
        assert!(get(&java, "sasl.jaas.config")
            .unwrap()
            .contains("ScramLoginModule"));
        let private = core.client_config("etl").unwrap();
        assert_eq!(private.bootstrap, ["10.0.0.1:9092"]);
        assert_eq!(crate::ctl::client_properties(&private, false).len(), 2);
        assert!(core
            .client_config("b1")
            .unwrap_err()
            .to_string()
            .contains("not a client of the newest spec (its clients: laptop, etl)"));
    }

    /// A clock the test moves.
    struct ManualClock(std::sync::atomic::AtomicU64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl ManualClock {
        fn advance_to(&self, ms: u64) {
            self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_next_step_waits_for_settle_and_a_silent_node_pauses_the_rollout_on_the_cores_clock() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_800_000_000_000;
        let clock = Arc::new(ManualClock(start.into()));
        let mut core = Core::open_with_clock(dir.path(), clock.clone()).unwrap();
        let mut channels: BTreeMap<&str, _> = ["b1", "b2"]
            .into_iter()
            .map(|node| (node, core.subscribe(node).unwrap()))
            .collect();
        let spec =
            "[cluster]\nname = \"c\"\n[rollout]\nsettle = \"30s\"\nhealth_timeout = \"60s\"\n\
                    [[broker]]\nid = 1\nnode = \"b1\"\nprivate_ip = \"10.0.0.1\"\n\
                    [[broker]]\nid = 2\nnode = \"b2\"\nprivate_ip = \"10.0.0.2\"\n";
        core.apply(spec, true, "test", None).unwrap();
        let released = |channels: &mut BTreeMap<&str, watch::Receiver<Option<pb::Release>>>| {
            // The nodes handed a new release since the last look.
            channels
                .iter_mut()
                .filter_map(|(node, rx)| {
                    let new = rx.has_changed().unwrap() && rx.borrow_and_update().is_some();
                    new.then(|| node.to_string())
                })
                .collect::<Vec<_>>()
        };
        let first = released(&mut channels);
        assert_eq!(first.len(), 1, "one broker at a time: {first:?}");
        let first = first[0].clone();
        let id = channels[first.as_str()].borrow().as_ref().unwrap().id;
        let converged = NodeReport {
            release: id.as_ref().map(Into::into),
            phase: Phase::Converged,
            ..Default::default()
        };
        core.report_status(&first, converged).unwrap();
        // Settling: a second short of 30 s nothing more is released; at 30 s the other broker is.
        clock.advance_to(start + 29_000);
        core.tick().unwrap();
        assert_eq!(released(&mut channels), Vec::<String>::new());
        clock.advance_to(start + 30_000);
        core.tick().unwrap();
        let second = released(&mut channels);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0], first);
        // The second broker never reports: once health_timeout (and its grace) has passed on the
        // core's clock, the rollout pauses on it and says why.
        let limit = 60_000 + crate::rollout::HEALTH_TIMEOUT_GRACE_MS;
        clock.advance_to(start + 30_000 + limit - 1);
        core.tick().unwrap();
        assert_eq!(core.status_response().rollout.unwrap().state, "running");
        clock.advance_to(start + 30_000 + limit);
        core.tick().unwrap();
        let rollout = core.status_response().rollout.unwrap();
        assert_eq!(rollout.state, "paused");
        assert_eq!(
            rollout.paused_reason,
            format!(
                "health_timeout: node {} did not report within 90s",
                second[0]
            )
        );
    }

    #[test]
    fn certificates_are_issued_on_the_cores_clock() {
        let dir = tempfile::tempdir().unwrap();
        // A fixed moment well in the past: a certificate from the system clock would end later.
        let start: u64 = 1_700_000_000_000;
        let clock = Arc::new(ManualClock(start.into()));
        let mut core = Core::open_with_clock(dir.path(), clock).unwrap();
        let key = kreach_runtime::kafka_tls::new_private_key_pem().unwrap();
        let facts = HostFacts {
            kafka_tls_public_key: kreach_runtime::kafka_tls::public_key_pem(&key).unwrap(),
            ..Default::default()
        };
        core.report_facts("b1", facts).unwrap();
        let spec = "[cluster]\nname = \"c\"\n[listeners.external]\nallow = [\"0.0.0.0/0\"]\nsecurity_protocol = \"SSL\"\n\
                    [[broker]]\nid = 1\nnode = \"b1\"\nprivate_ip = \"10.0.0.1\"\npublic_ip = \"198.19.0.1\"\n\
                    [tls]\nlifetime = \"10d\"\n";
        let made = core.make_plan(spec).unwrap();
        let b1 = made.desired.iter().find(|n| n.node == "b1").unwrap();
        let ends = b1.certificates[0].not_after_ms;
        let lifetime = 10 * 86_400_000;
        assert!(
            ends <= start + lifetime && ends + 60_000 >= start + lifetime,
            "{ends} is not {start} + 10 days"
        );
    }
}
