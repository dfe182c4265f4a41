//! The rollout engine: how one generation of per-node specs reaches the cluster, step by step.
//!
//! Owns two pure things: [`plan`], which turns "what each node has" and "what each node must have"
//! into ordered steps that keep DESIGN.md's rules (expand, then roll brokers at most
//! `max_unavailable` at a time with the controller last, then contract), and [`Rollout`], the state
//! machine that releases those steps one at a time and advances, settles, pauses or aborts on agent
//! reports, clock ticks and operator commands.
//!
//! It does no I/O and reads no clock: time comes in as `now_ms`, and every transition returns the
//! [`Event`]s a human would want in the audit log. The coordinator persists the [`Rollout`] (serde)
//! after every transition, so a coordinator killed mid-rollout resumes exactly where it was and never
//! has more brokers restarting than the rules allow. It does not talk to agents, store generations,
//! or detect the controller; those are the coordinator's shell around it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kreach_domain::desired::{all_node_specs, NodeRole, NodeSpec};
use kreach_domain::hosts::HostsEntry;
use kreach_domain::spec::ClusterSpec;
use serde::{Deserialize, Serialize};

/// Added to the spec's `health_timeout` before a silent node pauses the rollout: the agent's own
/// health gate runs for up to `health_timeout`, and its report still has to reach us.
pub const HEALTH_TIMEOUT_GRACE_MS: u64 = 30_000;

/// What a step does to the nodes it targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Adds names and moves addresses in hosts blocks; removes nothing and restarts nothing.
    Expand,
    /// Changes the listeners of up to `max_unavailable` brokers, which restart.
    RestartBrokers,
    /// Gives up to `max_unavailable` brokers new TLS certificates under the same listener
    /// settings: each reloads them live, and restarts (gated) only when it cannot.
    ReloadCertificates,
    /// Brings every remaining node to its exact desired spec, removing entries nothing uses any more.
    Contract,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepKind::Expand => "expand",
            StepKind::RestartBrokers => "restart brokers",
            StepKind::ReloadCertificates => "reload certificates",
            StepKind::Contract => "contract",
        })
    }
}

/// One step: every target gets its spec at once, and the step is done when all have converged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStep {
    pub kind: StepKind,
    /// Whether releasing this step restarts Kafka on its targets.
    pub restarts: bool,
    /// True for the step that restarts the active controller (alone, last of the broker steps).
    pub controller: bool,
    /// Node → the spec released to it in this step.
    pub targets: BTreeMap<String, NodeSpec>,
}

impl RolloutStep {
    pub fn nodes(&self) -> Vec<String> {
        self.targets.keys().cloned().collect()
    }
}

/// The ordered steps that take the cluster from one generation to the next. Empty ⇒ nothing to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    pub generation: u64,
    pub steps: Vec<RolloutStep>,
    /// Nodes that have a current spec but none in the new generation, and nothing left to remove
    /// (their kreach hosts block is already gone): no step touches them.
    pub untouched: Vec<String>,
    /// Nodes dropped from the spec whose kreach hosts block the contract step removes (see
    /// [`dropped_spec`]). Unlike other targets, one whose agent is offline is skipped, not waited
    /// for: it gets the release when it reconnects.
    #[serde(default)]
    pub dropped: Vec<String>,
    pub max_unavailable: u32,
    /// The active controller when the plan was made, if known.
    pub controller: Option<String>,
    /// The longest `health_timeout` of the new specs; a node silent for this plus
    /// [`HEALTH_TIMEOUT_GRACE_MS`] after a release pauses the rollout.
    pub health_timeout_ms: u64,
    /// Pause after a broker step before the next step, so the cluster settles (ISR catch-up
    /// margin beyond the after-restart gate); never after the last step.
    pub settle_ms: u64,
    /// A target of the current step whose agent has been offline this long pauses the rollout
    /// (`[rollout] agent_timeout`). Plans stored before it existed get the default.
    #[serde(default = "default_agent_timeout_ms")]
    pub agent_timeout_ms: u64,
}

/// `[rollout] agent_timeout`'s default, 60 s.
pub const DEFAULT_AGENT_TIMEOUT_MS: u64 = 60_000;

fn default_agent_timeout_ms() -> u64 {
    DEFAULT_AGENT_TIMEOUT_MS
}

impl RolloutPlan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn with_settle_ms(mut self, settle_ms: u64) -> RolloutPlan {
        self.settle_ms = settle_ms;
        self
    }

    pub fn with_agent_timeout_ms(mut self, agent_timeout_ms: u64) -> RolloutPlan {
        self.agent_timeout_ms = agent_timeout_ms;
        self
    }
}

/// Plan the rollout of `desired` (generation `generation`) over what the nodes have now.
///
/// `current` may be empty (first apply) or lack nodes that are new. `controller` is the node name of
/// the active controller, if known. The plan has `settle_ms = 0`; see [`RolloutPlan::with_settle_ms`]
/// or [`plan_for_spec`].
pub fn plan(
    generation: u64,
    current: &BTreeMap<String, NodeSpec>,
    desired: &BTreeMap<String, NodeSpec>,
    controller: Option<&str>,
    max_unavailable: u32,
) -> RolloutPlan {
    // Zero would never make progress; the spec rejects it, but a plan must still be finite.
    let max_unavailable = max_unavailable.max(1);
    let mut expand = BTreeMap::new();
    // Brokers changed one chunk at a time: (id, node, target, whether its listeners change).
    let mut restart: Vec<(i32, String, NodeSpec, bool)> = Vec::new();
    let mut contract = BTreeMap::new();

    for (node, want) in desired {
        let have = current.get(node);
        // What the node will have after the steps planned so far.
        let mut effective: Option<NodeSpec> = have.cloned();

        let have_entries = have
            .map(|spec| spec.hosts_entries.as_slice())
            .unwrap_or(&[]);
        if adds_or_moves_names(have_entries, &want.hosts_entries) {
            let intermediate = match have {
                Some(have) => NodeSpec {
                    hosts_entries: expanded_entries(&have.hosts_entries, &want.hosts_entries),
                    ..have.clone()
                },
                // A node kreach never managed: give it its names, but leave its listener keys
                // alone (`None`), or a first apply would restart every broker at once here.
                None => NodeSpec {
                    listeners: None,
                    ..want.clone()
                },
            };
            expand.insert(node.clone(), intermediate.clone());
            effective = Some(intermediate);
        }

        if let (NodeRole::Broker { id }, Some(_)) = (&want.role, &want.listeners) {
            let listeners_change = have.map(|spec| &spec.listeners) != Some(&want.listeners);
            // New certificates alone: no restart, but sequenced like one, since a broker that
            // cannot reload them live falls back to a restart.
            let certificates_change = have.is_some_and(|spec| {
                spec.certificates != want.certificates || spec.kafka_ca_pem != want.kafka_ca_pem
            });
            if listeners_change || certificates_change {
                // New listeners, but still every name of the expand phase: some client may still
                // use a name that only the contract step may remove.
                let hosts_entries = effective
                    .as_ref()
                    .map(|spec| spec.hosts_entries.clone())
                    .unwrap_or_else(|| want.hosts_entries.clone());
                let target = NodeSpec {
                    hosts_entries,
                    ..want.clone()
                };
                restart.push((*id, node.clone(), target.clone(), listeners_change));
                effective = Some(target);
            }
        }

        if effective.as_ref() != Some(want) {
            contract.insert(node.clone(), want.clone());
        }
    }

    // Dropped from the spec: the contract step removes what kreach added to their hosts file.
    let mut dropped = Vec::new();
    let mut untouched = Vec::new();
    for (node, have) in current {
        if desired.contains_key(node) {
            continue;
        }
        let target = dropped_spec(have);
        if &target == have {
            untouched.push(node.clone());
        } else {
            contract.insert(node.clone(), target);
            dropped.push(node.clone());
        }
    }

    let mut steps = Vec::new();
    if !expand.is_empty() {
        steps.push(RolloutStep {
            kind: StepKind::Expand,
            restarts: false,
            controller: false,
            targets: expand,
        });
    }
    let (controller_restart, mut others): (Vec<_>, Vec<_>) = restart
        .into_iter()
        .partition(|(_, node, _, _)| Some(node.as_str()) == controller);
    // Restarts first, then certificate reloads, each in id order.
    others.sort_by(|a, b| (!a.3, a.0, &a.1).cmp(&(!b.3, b.0, &b.1)));
    let broker_step = |chunk: &[(i32, String, NodeSpec, bool)], controller: bool| {
        let restarts = chunk.iter().any(|(_, _, _, restarts)| *restarts);
        RolloutStep {
            kind: if restarts {
                StepKind::RestartBrokers
            } else {
                StepKind::ReloadCertificates
            },
            restarts,
            controller,
            targets: chunk
                .iter()
                .map(|(_, node, spec, _)| (node.clone(), spec.clone()))
                .collect(),
        }
    };
    let chunk_size = usize::try_from(max_unavailable).unwrap_or(usize::MAX);
    for chunk in others.chunks(chunk_size) {
        steps.push(broker_step(chunk, false));
    }
    for target in controller_restart {
        steps.push(broker_step(std::slice::from_ref(&target), true));
    }
    if !contract.is_empty() {
        steps.push(RolloutStep {
            kind: StepKind::Contract,
            restarts: false,
            controller: false,
            targets: contract,
        });
    }

    RolloutPlan {
        generation,
        steps,
        untouched,
        dropped,
        max_unavailable,
        controller: controller.map(str::to_string),
        health_timeout_ms: desired
            .values()
            .map(|spec| spec.health_timeout_ms)
            .max()
            .unwrap_or(0),
        settle_ms: 0,
        agent_timeout_ms: DEFAULT_AGENT_TIMEOUT_MS,
    }
}

/// [`plan`] for a whole validated spec: its node specs, `max_unavailable`, `settle` and
/// `agent_timeout`.
pub fn plan_for_spec(
    generation: u64,
    current: &BTreeMap<String, NodeSpec>,
    spec: &ClusterSpec,
    controller: Option<&str>,
) -> RolloutPlan {
    let desired = all_node_specs(spec)
        .into_iter()
        .map(|node| (node.node.clone(), node))
        .collect();
    plan_for_desired(generation, current, spec, &desired, controller)
}

/// [`plan_for_spec`] with the node specs already made (the coordinator adds what the spec alone
/// does not say, such as issued certificates).
pub fn plan_for_desired(
    generation: u64,
    current: &BTreeMap<String, NodeSpec>,
    spec: &ClusterSpec,
    desired: &BTreeMap<String, NodeSpec>,
    controller: Option<&str>,
) -> RolloutPlan {
    plan(
        generation,
        current,
        desired,
        controller,
        spec.rollout.max_unavailable,
    )
    .with_settle_ms(u64::try_from(spec.rollout.settle.as_millis()).unwrap_or(u64::MAX))
    .with_agent_timeout_ms(
        u64::try_from(spec.rollout.agent_timeout.as_millis()).unwrap_or(u64::MAX),
    )
}

/// What a node dropped from the spec is released in the contract step: no hosts entries (its
/// agent removes kreach's block) and nothing else changed. Conservatively, a broker's listener
/// keys are no longer managed (`listeners: None`: server.properties is left as it is and Kafka
/// is not restarted) and its EXTERNAL filter stays as it was: taking either away could cut off or
/// expose a broker that still runs. A client stops checking reachability (no bootstrap).
pub fn dropped_spec(have: &NodeSpec) -> NodeSpec {
    NodeSpec {
        hosts_entries: Vec::new(),
        listeners: None,
        bootstrap: Vec::new(),
        ..have.clone()
    }
}

/// Whether `desired` maps some name to an address `current` does not (resolvers compare names
/// case-insensitively).
fn adds_or_moves_names(current: &[HostsEntry], desired: &[HostsEntry]) -> bool {
    let now: BTreeMap<String, _> = current
        .iter()
        .flat_map(|entry| {
            entry
                .names
                .iter()
                .map(move |name| (name.to_ascii_lowercase(), entry.ip))
        })
        .collect();
    desired.iter().any(|entry| {
        entry
            .names
            .iter()
            .any(|name| now.get(&name.to_ascii_lowercase()) != Some(&entry.ip))
    })
}

/// The new entries, then the old names the new entries do not mention, on their old addresses:
/// every name that resolved before still resolves, and no name maps to two addresses.
fn expanded_entries(current: &[HostsEntry], desired: &[HostsEntry]) -> Vec<HostsEntry> {
    let mut taken: BTreeSet<String> = desired
        .iter()
        .flat_map(|entry| entry.names.iter().map(|name| name.to_ascii_lowercase()))
        .collect();
    let mut entries = desired.to_vec();
    for entry in current {
        let names: Vec<String> = entry
            .names
            .iter()
            .filter(|name| taken.insert(name.to_ascii_lowercase()))
            .cloned()
            .collect();
        if !names.is_empty() {
            entries.push(HostsEntry {
                ip: entry.ip,
                names,
            });
        }
    }
    entries
}

/// Which release a report is about (the domain's one type; agents echo it back).
pub use kreach_domain::release::ReleaseId;

/// The spec a node is to apply now, and which release it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub generation: u64,
    pub step: u32,
    pub attempt: u32,
    pub spec: NodeSpec,
    pub released_by: String,
}

impl Release {
    pub fn id(&self) -> ReleaseId {
        ReleaseId {
            generation: self.generation,
            step: self.step,
            attempt: self.attempt,
        }
    }
}

/// What an agent says about a release it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReportOutcome {
    /// Applied (or already matching) and every gate passed.
    Converged,
    /// A gate failed; the agent restored the previous bytes.
    RolledBack { reason: String },
    /// The agent could not apply or could not restore.
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutState {
    /// The current step is released; waiting for its targets to converge.
    Running,
    /// The current step converged; the next is released at `until_ms`.
    Settling {
        until_ms: u64,
    },
    /// Nothing more is released until resume or abort. `node` is empty for an operator pause.
    Paused {
        node: String,
        reason: String,
    },
    /// Stopped for good; what was released stays released.
    Aborted,
    Completed,
}

impl RolloutState {
    pub fn name(&self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Settling { .. } => "settling",
            RolloutState::Paused { .. } => "paused",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        }
    }
}

/// Where one target of the current step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "progress", rename_all = "snake_case")]
pub enum NodeProgress {
    Waiting,
    Converged,
    Failed {
        reason: String,
    },
    /// Dropped from the spec and its agent offline: not waited for (see [`Rollout::skip_offline_dropped`]).
    Skipped {
        reason: String,
    },
}

impl NodeProgress {
    /// Whether the step no longer waits for this target.
    pub fn is_done(&self) -> bool {
        matches!(self, NodeProgress::Converged | NodeProgress::Skipped { .. })
    }
}

/// What happened, for the audit log. Every transition returns the events it caused, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    StepReleased {
        step: u32,
        attempt: u32,
        kind: StepKind,
        nodes: Vec<String>,
    },
    NodeConverged {
        node: String,
        step: u32,
        attempt: u32,
    },
    NodeFailed {
        node: String,
        step: u32,
        attempt: u32,
        reason: String,
    },
    /// A node dropped from the spec, offline: the step goes on without it.
    NodeSkipped {
        node: String,
        step: u32,
        reason: String,
    },
    /// A report for another generation, step or attempt, or from a node the step does not target.
    ReportIgnored {
        node: String,
        release: ReleaseId,
        why: String,
    },
    StepCompleted {
        step: u32,
    },
    Settling {
        step: u32,
        until_ms: u64,
    },
    Paused {
        node: String,
        reason: String,
    },
    Resumed {
        step: u32,
        attempt: u32,
    },
    Aborted {
        step: u32,
    },
    Completed,
}

impl Event {
    /// The node the event is about, when it is about one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Event::NodeConverged { node, .. }
            | Event::NodeFailed { node, .. }
            | Event::NodeSkipped { node, .. }
            | Event::ReportIgnored { node, .. }
            | Event::Paused { node, .. } => Some(node),
            _ => None,
        }
    }

    /// For a pause, what stopped the rollout, as a bounded label: `rolled_back` or `failed` (a
    /// node's gates), `health_timeout` (silent nodes), `agent_offline`, `operator`
    /// (`kreachctl rollout pause`), `other`. None for other events.
    pub fn pause_cause(&self) -> Option<&'static str> {
        let Event::Paused { node, reason } = self else {
            return None;
        };
        Some(if node.is_empty() {
            "operator"
        } else if reason.starts_with("rolled back:") {
            "rolled_back"
        } else if reason.starts_with("failed:") {
            "failed"
        } else if reason.starts_with("health_timeout:") {
            "health_timeout"
        } else if reason.starts_with("agent ") && reason.contains(" offline") {
            "agent_offline"
        } else {
            "other"
        })
    }
}

/// One rollout in progress. Serialize it after every transition; a deserialized copy behaves
/// exactly like the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    plan: RolloutPlan,
    /// Who asked for this generation (e.g. `kreachctl apply by alice`), stamped on every release.
    released_by: String,
    state: RolloutState,
    /// Index of the current step; `plan.steps.len()` once completed.
    step: usize,
    /// Per step, how many times it was released (0 ⇒ not yet).
    attempts: Vec<u32>,
    /// When the current attempt of the current step was released; health timeouts count from here.
    released_at_ms: u64,
    /// The targets of the current step and where they stand in its current attempt.
    progress: BTreeMap<String, NodeProgress>,
    /// Dropped nodes that were skipped, and why; kept after the rollout completes.
    #[serde(default)]
    skipped: BTreeMap<String, String>,
}

impl Rollout {
    /// Start `plan`: release its first step (or complete at once when there is nothing to do).
    pub fn start(
        plan: RolloutPlan,
        released_by: impl Into<String>,
        now_ms: u64,
    ) -> (Rollout, Vec<Event>) {
        let mut rollout = Rollout {
            attempts: vec![0; plan.steps.len()],
            plan,
            released_by: released_by.into(),
            state: RolloutState::Running,
            step: 0,
            released_at_ms: now_ms,
            progress: BTreeMap::new(),
            skipped: BTreeMap::new(),
        };
        let mut events = Vec::new();
        if rollout.plan.steps.is_empty() {
            rollout.state = RolloutState::Completed;
            events.push(Event::Completed);
        } else {
            rollout.release_current_step(now_ms, &mut events);
        }
        (rollout, events)
    }

    pub fn plan(&self) -> &RolloutPlan {
        &self.plan
    }

    pub fn generation(&self) -> u64 {
        self.plan.generation
    }

    pub fn state(&self) -> &RolloutState {
        &self.state
    }

    /// The current step, or `None` once completed.
    pub fn current_step(&self) -> Option<u32> {
        (self.step < self.plan.steps.len()).then(|| step_number(self.step))
    }

    /// How many times `step` was released so far.
    pub fn attempt(&self, step: u32) -> u32 {
        usize::try_from(step)
            .ok()
            .and_then(|step| self.attempts.get(step))
            .copied()
            .unwrap_or(0)
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, RolloutState::Completed | RolloutState::Aborted)
    }

    /// For every node, the latest spec released to it by this rollout: the targets of completed
    /// steps and of the current one. A later step is never visible here before its time.
    pub fn releases(&self) -> BTreeMap<String, Release> {
        let released_steps = (self.step + 1).min(self.plan.steps.len());
        let mut releases = BTreeMap::new();
        for (index, step) in self.plan.steps.iter().enumerate().take(released_steps) {
            for (node, spec) in &step.targets {
                releases.insert(
                    node.clone(),
                    Release {
                        generation: self.plan.generation,
                        step: step_number(index),
                        attempt: self.attempts[index],
                        spec: spec.clone(),
                        released_by: self.released_by.clone(),
                    },
                );
            }
        }
        releases
    }

    /// [`Rollout::releases`] for one node, without building the others.
    pub fn release_of(&self, node: &str) -> Option<Release> {
        let released_steps = (self.step + 1).min(self.plan.steps.len());
        let (index, spec) = self.plan.steps[..released_steps]
            .iter()
            .enumerate()
            .rev()
            .find_map(|(index, step)| step.targets.get(node).map(|spec| (index, spec)))?;
        Some(Release {
            generation: self.plan.generation,
            step: step_number(index),
            attempt: self.attempts[index],
            spec: spec.clone(),
            released_by: self.released_by.clone(),
        })
    }

    /// An agent's report about `release`.
    pub fn on_report(
        &mut self,
        node: &str,
        release: ReleaseId,
        outcome: ReportOutcome,
        now_ms: u64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(why) = self.why_stale(node, release) {
            events.push(Event::ReportIgnored {
                node: node.to_string(),
                release,
                why,
            });
            return events;
        }
        let (step, attempt) = (release.step, release.attempt);
        match outcome {
            ReportOutcome::Converged => {
                let progress = self
                    .progress
                    .get_mut(node)
                    .expect("why_stale checked the node is a target");
                if *progress == NodeProgress::Converged {
                    return events;
                }
                *progress = NodeProgress::Converged;
                self.skipped.remove(node);
                events.push(Event::NodeConverged {
                    node: node.to_string(),
                    step,
                    attempt,
                });
                // Only a running step advances: a paused one waits for the operator even when its
                // last node converges late.
                if self.state == RolloutState::Running
                    && self.progress.values().all(NodeProgress::is_done)
                {
                    self.complete_current_step(now_ms, &mut events);
                }
            }
            ReportOutcome::RolledBack { .. } | ReportOutcome::Failed { .. } => {
                // Say which: "rolled back" means the node is healthy on its old config again,
                // "failed" means it may not be.
                let reason = match outcome {
                    ReportOutcome::RolledBack { reason } => format!("rolled back: {reason}"),
                    ReportOutcome::Failed { reason } => format!("failed: {reason}"),
                    ReportOutcome::Converged => unreachable!("matched above"),
                };
                self.progress.insert(
                    node.to_string(),
                    NodeProgress::Failed {
                        reason: reason.clone(),
                    },
                );
                events.push(Event::NodeFailed {
                    node: node.to_string(),
                    step,
                    attempt,
                    reason: reason.clone(),
                });
                // Failure halts: no other node is touched until an operator decides.
                if matches!(
                    self.state,
                    RolloutState::Running | RolloutState::Settling { .. }
                ) {
                    self.pause_with(node, reason, &mut events);
                }
            }
        }
        events
    }

    /// The clock moved: end a settle period, or pause on nodes that stay silent too long.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        match self.state {
            RolloutState::Settling { until_ms } if now_ms >= until_ms => {
                self.advance(now_ms, &mut events);
            }
            RolloutState::Running => {
                let limit_ms = self
                    .plan
                    .health_timeout_ms
                    .saturating_add(HEALTH_TIMEOUT_GRACE_MS);
                if now_ms >= self.released_at_ms.saturating_add(limit_ms) {
                    let silent: Vec<&str> = self.waiting_nodes().collect();
                    if let Some(first) = silent.first() {
                        let who = match silent.as_slice() {
                            [one] => format!("node {one}"),
                            many => format!("nodes {}", many.join(", ")),
                        };
                        let reason = format!(
                            "health_timeout: {who} did not report within {}s",
                            limit_ms.div_ceil(1000)
                        );
                        let first = first.to_string();
                        self.pause_with(&first, reason, &mut events);
                    }
                }
            }
            _ => {}
        }
        events
    }

    /// `node`'s agent has not been connected for `offline_ms` (counted from the later of its
    /// disconnect and the current release): a waiting target of the running step pauses the
    /// rollout once that reaches `agent_timeout`, instead of waiting on it without end.
    pub fn on_agent_offline(&mut self, node: &str, offline_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let waiting = self.progress.get(node) == Some(&NodeProgress::Waiting);
        if self.state == RolloutState::Running
            && waiting
            && offline_ms >= self.plan.agent_timeout_ms
        {
            let reason = format!(
                "agent {node} offline for {}s",
                self.plan.agent_timeout_ms.div_ceil(1000)
            );
            self.pause_with(node, reason, &mut events);
        }
        events
    }

    /// Nodes dropped from the spec that the running step waits for and whose agent is offline
    /// (`is_offline`) are skipped, not waited for: a node that is gone for good must not hold the
    /// rollout. Their release stays out, so an agent that comes back still removes its block.
    pub fn skip_offline_dropped(
        &mut self,
        is_offline: impl Fn(&str) -> bool,
        now_ms: u64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if self.state != RolloutState::Running || self.plan.dropped.is_empty() {
            return events;
        }
        let skip: Vec<String> = self
            .progress
            .iter()
            .filter(|(node, progress)| {
                **progress == NodeProgress::Waiting
                    && self.plan.dropped.contains(node)
                    && is_offline(node)
            })
            .map(|(node, _)| node.clone())
            .collect();
        if skip.is_empty() {
            return events;
        }
        let reason = "dropped from the spec and its agent is offline: not waited for; its kreach hosts block is removed when the agent reconnects".to_string();
        for node in skip {
            self.progress.insert(
                node.clone(),
                NodeProgress::Skipped {
                    reason: reason.clone(),
                },
            );
            self.skipped.insert(node.clone(), reason.clone());
            events.push(Event::NodeSkipped {
                node,
                step: step_number(self.step),
                reason: reason.clone(),
            });
        }
        if self.progress.values().all(NodeProgress::is_done) {
            self.complete_current_step(now_ms, &mut events);
        }
        events
    }

    /// When the current attempt of the current step was released.
    pub fn released_at_ms(&self) -> u64 {
        self.released_at_ms
    }

    /// The current step's targets that have not reported on its current attempt yet.
    pub fn waiting_nodes(&self) -> impl Iterator<Item = &str> {
        self.progress
            .iter()
            .filter(|(_, progress)| **progress == NodeProgress::Waiting)
            .map(|(node, _)| node.as_str())
    }

    /// Operator pause: release nothing more until resume or abort.
    pub fn pause(&mut self, reason: impl Into<String>) -> Vec<Event> {
        let mut events = Vec::new();
        if matches!(
            self.state,
            RolloutState::Running | RolloutState::Settling { .. }
        ) {
            self.pause_with("", reason.into(), &mut events);
        }
        events
    }

    /// Retry the current step with the next attempt. All its targets get it again: those whose files
    /// already match have nothing to do and report back quickly.
    pub fn resume(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        if let RolloutState::Paused { .. } = self.state {
            events.push(Event::Resumed {
                step: step_number(self.step),
                attempt: self.attempts[self.step] + 1,
            });
            self.release_current_step(now_ms, &mut events);
        }
        events
    }

    /// Stop for good. What was released stays released; nothing new is.
    pub fn abort(&mut self) -> Vec<Event> {
        if self.is_finished() {
            return Vec::new();
        }
        self.state = RolloutState::Aborted;
        vec![Event::Aborted {
            step: step_number(self.step),
        }]
    }

    /// A value for display (`kreachctl status`).
    pub fn status(&self) -> RolloutStatus {
        let (paused_node, paused_reason) = match &self.state {
            RolloutState::Paused { node, reason } => (Some(node.clone()), Some(reason.clone())),
            _ => (None, None),
        };
        RolloutStatus {
            generation: self.plan.generation,
            state: self.state.name().to_string(),
            settling_until_ms: match self.state {
                RolloutState::Settling { until_ms } => Some(until_ms),
                _ => None,
            },
            current_step: self.current_step(),
            total_steps: step_number(self.plan.steps.len()),
            attempt: self.attempts.get(self.step).copied().unwrap_or(0),
            paused_node,
            paused_reason,
            steps: self
                .plan
                .steps
                .iter()
                .enumerate()
                .map(|(index, step)| StepStatus {
                    step: step_number(index),
                    kind: step.kind,
                    restarts: step.restarts,
                    controller: step.controller,
                    nodes: step.nodes(),
                    attempts: self.attempts[index],
                })
                .collect(),
            nodes: if self.step < self.plan.steps.len() {
                self.progress.clone()
            } else {
                BTreeMap::new()
            },
            skipped: self.skipped.clone(),
        }
    }

    fn why_stale(&self, node: &str, release: ReleaseId) -> Option<String> {
        if release.generation != self.plan.generation {
            return Some(format!(
                "the rollout is at generation {}",
                self.plan.generation
            ));
        }
        if self.is_finished() {
            return Some(format!("the rollout is {}", self.state.name()));
        }
        let (step, attempt) = (step_number(self.step), self.attempts[self.step]);
        if release.step != step || release.attempt != attempt {
            return Some(format!("the rollout is at step {step} attempt {attempt}"));
        }
        if !self.progress.contains_key(node) {
            return Some(format!("step {step} does not target {node}"));
        }
        None
    }

    fn release_current_step(&mut self, now_ms: u64, events: &mut Vec<Event>) {
        let step = &self.plan.steps[self.step];
        self.attempts[self.step] += 1;
        self.released_at_ms = now_ms;
        self.state = RolloutState::Running;
        self.progress = step
            .targets
            .keys()
            .map(|node| (node.clone(), NodeProgress::Waiting))
            .collect();
        events.push(Event::StepReleased {
            step: step_number(self.step),
            attempt: self.attempts[self.step],
            kind: step.kind,
            nodes: step.nodes(),
        });
    }

    fn complete_current_step(&mut self, now_ms: u64, events: &mut Vec<Event>) {
        events.push(Event::StepCompleted {
            step: step_number(self.step),
        });
        // Settling gives the restarted brokers' followers time to rejoin before the next step;
        // after the last step nothing follows, so the rollout completes at once.
        let last = self.step + 1 == self.plan.steps.len();
        if self.plan.steps[self.step].restarts && self.plan.settle_ms > 0 && !last {
            let until_ms = now_ms.saturating_add(self.plan.settle_ms);
            self.state = RolloutState::Settling { until_ms };
            events.push(Event::Settling {
                step: step_number(self.step),
                until_ms,
            });
        } else {
            self.advance(now_ms, events);
        }
    }

    fn advance(&mut self, now_ms: u64, events: &mut Vec<Event>) {
        self.step += 1;
        if self.step == self.plan.steps.len() {
            self.state = RolloutState::Completed;
            self.progress.clear();
            events.push(Event::Completed);
        } else {
            self.release_current_step(now_ms, events);
        }
    }

    fn pause_with(&mut self, node: &str, reason: String, events: &mut Vec<Event>) {
        self.state = RolloutState::Paused {
            node: node.to_string(),
            reason: reason.clone(),
        };
        events.push(Event::Paused {
            node: node.to_string(),
            reason,
        });
    }
}

fn step_number(index: usize) -> u32 {
    u32::try_from(index).expect("a plan has far fewer than 2^32 steps")
}

/// The rollout as `kreachctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub generation: u64,
    /// `running`, `settling`, `paused`, `aborted` or `completed`.
    pub state: String,
    pub settling_until_ms: Option<u64>,
    /// `None` once completed.
    pub current_step: Option<u32>,
    pub total_steps: u32,
    /// Attempt of the current step.
    pub attempt: u32,
    /// Empty string for an operator pause.
    pub paused_node: Option<String>,
    pub paused_reason: Option<String>,
    pub steps: Vec<StepStatus>,
    /// The targets of the current step and where each stands.
    pub nodes: BTreeMap<String, NodeProgress>,
    /// Nodes dropped from the spec that were skipped (offline), and why.
    pub skipped: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStatus {
    pub step: u32,
    pub kind: StepKind,
    pub restarts: bool,
    pub controller: bool,
    pub nodes: Vec<String>,
    /// How many times the step was released (0 ⇒ not yet).
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kreach_domain::desired::ListenerCertificate;
    use kreach_domain::properties::ListenerSettings;
    use proptest::prelude::*;

    /// External listener of a test cluster.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum External {
        Off,
        PublicIp,
        Hostname,
    }

    /// A small cluster: brokers `w1..wN` (id = N), clients `c1..` with a view each.
    #[derive(Debug, Clone)]
    struct Cluster {
        brokers: u8,
        hostname_mode: bool,
        external: External,
        /// Third octet of every broker address: changing it moves every address.
        net: u8,
        /// Hostnames are `emr-worker-{id}.cluster-{domain}`.
        domain: u16,
        /// `true` ⇒ public view (only honoured when the external listener is on).
        clients: Vec<bool>,
        max_unavailable: u32,
    }

    impl Cluster {
        fn private_ip(brokers: u8) -> Cluster {
            Cluster {
                brokers,
                hostname_mode: false,
                external: External::Off,
                net: 1,
                domain: 48742,
                clients: vec![false, false],
                max_unavailable: 1,
            }
        }

        fn toml(&self) -> String {
            let mut text = format!(
                "[cluster]\nname = \"emr-48742\"\n[listeners.internal]\nadvertise = \"{}\"\n",
                if self.hostname_mode {
                    "hostname"
                } else {
                    "private_ip"
                }
            );
            let external = match self.external {
                External::Off => None,
                External::PublicIp => Some("public_ip"),
                External::Hostname => Some("hostname"),
            };
            if let Some(advertise) = external {
                text += &format!(
                    "[listeners.external]\nadvertise = \"{advertise}\"\nallow = [\"203.0.113.0/24\"]\n"
                );
            }
            for id in 1..=self.brokers {
                text += &format!(
                    "[[broker]]\nid = {id}\nnode = \"w{id}\"\nhostname = \"emr-worker-{id}.cluster-{}\"\nprivate_ip = \"10.0.{}.{id}\"\npublic_ip = \"47.96.{}.{id}\"\n",
                    self.domain, self.net, self.net
                );
            }
            for (index, public) in self.clients.iter().enumerate() {
                let view = if *public && external.is_some() {
                    "public"
                } else {
                    "private"
                };
                text += &format!("[[client]]\nnode = \"c{}\"\nview = \"{view}\"\n", index + 1);
            }
            text += &format!(
                "[rollout]\nmax_unavailable = {}\nhealth_timeout = \"180s\"\nsettle = \"10s\"\n",
                self.max_unavailable
            );
            text
        }

        fn spec(&self) -> ClusterSpec {
            ClusterSpec::parse(&self.toml()).unwrap_or_else(|errors| panic!("{errors}"))
        }

        fn node_specs(&self) -> BTreeMap<String, NodeSpec> {
            all_node_specs(&self.spec())
                .into_iter()
                .map(|spec| (spec.node.clone(), spec))
                .collect()
        }
    }

    fn plan_change(from: &Cluster, to: &Cluster, controller: Option<&str>) -> RolloutPlan {
        plan_for_spec(7, &from.node_specs(), &to.spec(), controller)
    }

    fn step_nodes(plan: &RolloutPlan) -> Vec<(StepKind, Vec<String>)> {
        plan.steps
            .iter()
            .map(|step| (step.kind, step.nodes()))
            .collect()
    }

    fn names(nodes: &[&str]) -> Vec<String> {
        nodes.iter().map(|node| node.to_string()).collect()
    }

    /// Every target of the current step reports Converged for its current release.
    fn converge_step(rollout: &mut Rollout, now_ms: u64) -> Vec<Event> {
        let releases = rollout.releases();
        let waiting: Vec<String> = rollout.status().nodes.keys().cloned().collect();
        let mut events = Vec::new();
        for node in waiting {
            let id = releases[&node].id();
            events.extend(rollout.on_report(&node, id, ReportOutcome::Converged, now_ms));
        }
        events
    }

    /// Converge and settle until completed; returns the clock.
    fn run_to_completion(rollout: &mut Rollout, mut now_ms: u64) -> u64 {
        for _ in 0..100 {
            match rollout.state().clone() {
                RolloutState::Running => {
                    converge_step(rollout, now_ms);
                }
                RolloutState::Settling { until_ms } => {
                    now_ms = until_ms;
                    rollout.on_tick(now_ms);
                }
                RolloutState::Completed => return now_ms,
                other => panic!("unexpected state {other:?}"),
            }
        }
        panic!("no completion in 100 transitions");
    }

    fn released_steps(rollout: &Rollout) -> BTreeSet<u32> {
        rollout
            .releases()
            .values()
            .map(|release| release.step)
            .collect()
    }

    #[test]
    fn renewed_certificates_are_reloaded_one_broker_at_a_time_with_the_controller_last() {
        let cluster = Cluster::private_ip(3);
        let current = cluster.node_specs();
        let mut desired = current.clone();
        for (node, spec) in desired.iter_mut() {
            if node.starts_with('w') {
                spec.certificates = vec![ListenerCertificate {
                    listener: "INTERNAL".into(),
                    chain_pem: format!("chain of {node}"),
                    sans: vec![node.clone()],
                    serial: format!("{node}-2"),
                    not_after_ms: 1,
                }];
            }
        }
        let plan = plan_for_desired(7, &current, &cluster.spec(), &desired, Some("w1"));
        assert_eq!(
            step_nodes(&plan),
            [
                (StepKind::ReloadCertificates, names(&["w2"])),
                (StepKind::ReloadCertificates, names(&["w3"])),
                (StepKind::ReloadCertificates, names(&["w1"])),
            ]
        );
        // Not restarts (no settle), but never two brokers at once: each may fall back to one.
        assert!(plan.steps.iter().all(|step| !step.restarts));
        assert!(plan.steps[2].controller);
        assert_eq!(plan.steps[0].kind.to_string(), "reload certificates");
    }

    #[test]
    fn enable_public_access_restarts_brokers_one_at_a_time_with_the_controller_last() {
        let before = Cluster::private_ip(3);
        let after = Cluster {
            external: External::PublicIp,
            ..before.clone()
        };
        let plan = plan_change(&before, &after, Some("w2"));
        // Clients of a private-IP cluster need no hosts entries: nothing to expand or contract.
        assert_eq!(
            step_nodes(&plan),
            [
                (StepKind::RestartBrokers, names(&["w1"])),
                (StepKind::RestartBrokers, names(&["w3"])),
                (StepKind::RestartBrokers, names(&["w2"])),
            ]
        );
        assert!(plan.steps.iter().all(|step| step.restarts));
        assert!(plan.steps[2].controller && !plan.steps[0].controller);
        assert_eq!(plan.settle_ms, 10_000);

        let desired = after.node_specs();
        let (mut rollout, events) = Rollout::start(plan, "kreachctl apply by alice", 1_000);
        assert_eq!(
            events,
            [Event::StepReleased {
                step: 0,
                attempt: 1,
                kind: StepKind::RestartBrokers,
                nodes: names(&["w1"]),
            }]
        );
        let releases = rollout.releases();
        assert_eq!(releases.keys().collect::<Vec<_>>(), ["w1"]);
        assert_eq!(releases["w1"].spec, desired["w1"]);
        assert_eq!(releases["w1"].released_by, "kreachctl apply by alice");

        let events = converge_step(&mut rollout, 5_000);
        assert_eq!(
            events[1..],
            [
                Event::StepCompleted { step: 0 },
                Event::Settling {
                    step: 0,
                    until_ms: 15_000
                },
            ]
        );
        assert!(
            rollout.on_tick(14_999).is_empty(),
            "w3 waits for the settle time"
        );
        assert_eq!(released_steps(&rollout), BTreeSet::from([0]));
        let events = rollout.on_tick(15_000);
        assert!(
            matches!(&events[..], [Event::StepReleased { step: 1, nodes, .. }] if *nodes == names(&["w3"]))
        );

        run_to_completion(&mut rollout, 20_000);
        let releases = rollout.releases();
        for broker in ["w1", "w2", "w3"] {
            assert_eq!(releases[broker].spec, desired[broker]);
        }
        assert!(
            !releases.contains_key("c1"),
            "unchanged clients get nothing"
        );
    }

    #[test]
    fn the_rollout_completes_when_its_last_broker_converges_without_settling() {
        let before = Cluster::private_ip(2);
        let after = Cluster {
            external: External::PublicIp,
            ..before.clone()
        };
        let plan = plan_change(&before, &after, None);
        assert_eq!(plan.settle_ms, 10_000);
        assert!(plan.steps.iter().all(|step| step.restarts));
        let (mut rollout, _) = Rollout::start(plan, "test", 0);
        let events = converge_step(&mut rollout, 1_000);
        assert!(events.contains(&Event::Settling {
            step: 0,
            until_ms: 11_000
        }));
        rollout.on_tick(11_000);
        let events = converge_step(&mut rollout, 12_000);
        assert_eq!(
            events[1..],
            [Event::StepCompleted { step: 1 }, Event::Completed],
            "nothing follows the last broker: no settle"
        );
        assert_eq!(rollout.state(), &RolloutState::Completed);
    }

    #[test]
    fn switching_to_hostname_mode_adds_every_name_before_any_broker_restarts() {
        let before = Cluster {
            external: External::PublicIp,
            clients: vec![false, true],
            ..Cluster::private_ip(2)
        };
        let after = Cluster {
            hostname_mode: true,
            external: External::Hostname,
            ..before.clone()
        };
        let plan = plan_change(&before, &after, None);
        assert_eq!(
            step_nodes(&plan),
            [
                (StepKind::Expand, names(&["c1", "c2", "w1", "w2"])),
                (StepKind::RestartBrokers, names(&["w1"])),
                (StepKind::RestartBrokers, names(&["w2"])),
                (StepKind::Contract, names(&["c1", "c2"])),
            ],
            "no old names to remove; the contract only gives the clients the endpoints the brokers now advertise"
        );
        let current = before.node_specs();
        let desired = after.node_specs();
        let expand = &plan.steps[0];
        assert!(!expand.restarts);
        // Expand changes hosts entries only; the listeners stay as they are.
        assert_eq!(expand.targets["w1"].listeners, current["w1"].listeners);
        assert_eq!(
            expand.targets["c2"].hosts_entries,
            desired["c2"].hosts_entries
        );
        assert_eq!(
            expand.targets["c2"].hosts_entries[0].ip.to_string(),
            "47.96.1.1",
            "the public client maps names to public addresses"
        );

        let (mut rollout, _) = Rollout::start(plan, "test", 0);
        // Three of four expanded: no broker step yet.
        for node in ["c1", "c2", "w1"] {
            let id = rollout.releases()[node].id();
            rollout.on_report(node, id, ReportOutcome::Converged, 10);
        }
        assert_eq!(released_steps(&rollout), BTreeSet::from([0]));
        let id = rollout.releases()["w2"].id();
        let events = rollout.on_report("w2", id, ReportOutcome::Converged, 20);
        assert!(events.contains(&Event::StepCompleted { step: 0 }));
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, Event::Settling { .. })),
            "expand restarted nothing, so there is nothing to settle"
        );
        assert_eq!(rollout.releases()["w1"].spec, desired["w1"]);
        assert_eq!(rollout.releases()["w1"].step, 1);
    }

    #[test]
    fn leaving_hostname_mode_removes_names_only_after_the_last_broker() {
        let before = Cluster {
            hostname_mode: true,
            ..Cluster::private_ip(2)
        };
        let after = Cluster::private_ip(2);
        let plan = plan_change(&before, &after, Some("w1"));
        assert_eq!(
            step_nodes(&plan),
            [
                (StepKind::RestartBrokers, names(&["w2"])),
                (StepKind::RestartBrokers, names(&["w1"])),
                (StepKind::Contract, names(&["c1", "c2", "w1", "w2"])),
            ]
        );
        let current = before.node_specs();
        let desired = after.node_specs();
        // Brokers advertise IPs now but keep the names some client may still resolve.
        assert_eq!(
            plan.steps[0].targets["w2"].hosts_entries,
            current["w2"].hosts_entries
        );
        assert_eq!(
            plan.steps[0].targets["w2"].listeners,
            desired["w2"].listeners
        );
        assert!(!plan.steps[2].restarts);

        let (mut rollout, _) = Rollout::start(plan, "test", 0);
        converge_step(&mut rollout, 0);
        rollout.on_tick(10_000);
        assert_eq!(released_steps(&rollout), BTreeSet::from([0, 1]));
        converge_step(&mut rollout, 11_000);
        assert_eq!(
            released_steps(&rollout),
            BTreeSet::from([0, 1]),
            "the contract waits for the controller to settle"
        );
        rollout.on_tick(21_000);
        assert_eq!(rollout.releases()["c1"].spec, desired["c1"]);
        assert!(rollout.releases()["c1"].spec.hosts_entries.is_empty());
    }

    #[test]
    fn renaming_the_domain_keeps_old_names_resolvable_until_the_contract() {
        let before = Cluster {
            hostname_mode: true,
            ..Cluster::private_ip(2)
        };
        let after = Cluster {
            domain: 50000,
            ..before.clone()
        };
        let plan = plan_change(&before, &after, None);
        assert_eq!(
            plan.steps.iter().map(|step| step.kind).collect::<Vec<_>>(),
            [
                StepKind::Expand,
                StepKind::RestartBrokers,
                StepKind::RestartBrokers,
                StepKind::Contract
            ]
        );
        let expanded = &plan.steps[0].targets["c1"].hosts_entries;
        let lines: Vec<String> = expanded
            .iter()
            .map(|entry| format!("{} {}", entry.ip, entry.names.join(" ")))
            .collect();
        // New entries first; of the old ones only the names the new ones do not take (the short
        // aliases `emr-worker-N` stay on the same address and are not repeated).
        assert_eq!(
            lines,
            [
                "10.0.1.1 emr-worker-1.cluster-50000 emr-worker-1",
                "10.0.1.2 emr-worker-2.cluster-50000 emr-worker-2",
                "10.0.1.1 emr-worker-1.cluster-48742",
                "10.0.1.2 emr-worker-2.cluster-48742",
            ]
        );
        assert_eq!(
            &plan.steps[1].targets["w1"].hosts_entries, expanded,
            "restarted brokers keep the old names"
        );
        assert_eq!(plan.steps[3].targets, after.node_specs());
    }

    #[test]
    fn moving_addresses_is_hosts_only_and_goes_to_every_node_at_once() {
        let before = Cluster {
            hostname_mode: true,
            external: External::Hostname,
            clients: vec![false, true],
            ..Cluster::private_ip(3)
        };
        let after = Cluster {
            net: 2,
            ..before.clone()
        };
        let plan = plan_change(&before, &after, Some("w1"));
        assert_eq!(
            step_nodes(&plan),
            [(StepKind::Expand, names(&["c1", "c2", "w1", "w2", "w3"]))],
            "names advertise the same; only their addresses move"
        );
        assert_eq!(plan.steps[0].targets, after.node_specs());

        // Dropping broker 3 as well: its names go away in a contract, where w3 itself loses its
        // kreach hosts block and nothing else: its listener keys are no longer managed (left as
        // they are, no restart) and its EXTERNAL filter stays as it was.
        let after = Cluster {
            brokers: 2,
            ..after
        };
        let plan = plan_change(&before, &after, None);
        assert_eq!(
            step_nodes(&plan),
            [
                (StepKind::Expand, names(&["c1", "c2", "w1", "w2"])),
                (StepKind::Contract, names(&["c1", "c2", "w1", "w2", "w3"])),
            ]
        );
        assert!(plan.untouched.is_empty());
        assert_eq!(plan.dropped, ["w3"]);
        assert!(plan.steps.iter().all(|step| !step.restarts));
        let had = &before.node_specs()["w3"];
        let (mut rollout, _) = Rollout::start(plan, "test", 0);
        run_to_completion(&mut rollout, 0);
        let w3 = &rollout.releases()["w3"].spec;
        assert_eq!(
            (w3.hosts_entries.len(), &w3.listeners, &w3.role),
            (0, &None, &had.role)
        );
        assert_eq!(w3.external_filter, had.external_filter);

        // Once its block is gone, a later plan has nothing left to do for it.
        let mut current = after.node_specs();
        current.insert("w3".into(), w3.clone());
        let again = plan_for_spec(8, &current, &after.spec(), None);
        assert!(again.is_empty() && again.dropped.is_empty());
        assert_eq!(again.untouched, ["w3"]);
    }

    #[test]
    fn a_dropped_node_whose_agent_is_offline_is_skipped_not_waited_for() {
        let before = Cluster {
            clients: vec![false, true],
            ..Cluster::private_ip(3)
        };
        let after = Cluster {
            clients: vec![false],
            ..before.clone()
        };
        let plan = plan_change(&before, &after, None);
        assert_eq!(plan.dropped, ["c2"]);
        assert_eq!(
            step_nodes(&plan),
            [(StepKind::Contract, names(&["c2"]))],
            "nothing else changes"
        );
        let (mut rollout, _) = Rollout::start(plan.clone(), "test", 0);
        // Online: waited for like any target.
        assert!(rollout.skip_offline_dropped(|_| false, 10).is_empty());
        assert_eq!(waiting_nodes(&rollout), ["c2"]);
        // Offline: skipped, the rollout completes, the note stays, the release stays out.
        let events = rollout.skip_offline_dropped(|node| node == "c2", 20);
        assert!(
            matches!(&events[..], [Event::NodeSkipped { node, .. }, Event::StepCompleted { .. }, Event::Completed] if node == "c2"),
            "{events:?}"
        );
        assert_eq!(rollout.state(), &RolloutState::Completed);
        assert!(rollout.status().skipped["c2"].contains("its agent is offline"));
        assert!(rollout.releases()["c2"].spec.hosts_entries.is_empty());

        // A node still in the spec is never skipped, however long it is offline.
        let grow = plan_change(&after, &before, None);
        let (mut rollout, _) = Rollout::start(grow, "test", 0);
        assert!(rollout.skip_offline_dropped(|_| true, 10).is_empty());
        assert!(!waiting_nodes(&rollout).is_empty());
    }

    #[test]
    fn an_unchanged_spec_plans_nothing_and_completes_at_once() {
        let cluster = Cluster {
            hostname_mode: true,
            ..Cluster::private_ip(3)
        };
        let plan = plan_change(&cluster, &cluster, Some("w1"));
        assert!(plan.is_empty());
        let (rollout, events) = Rollout::start(plan, "test", 0);
        assert_eq!(events, [Event::Completed]);
        assert_eq!(rollout.state(), &RolloutState::Completed);
        assert!(rollout.releases().is_empty());
        assert_eq!(rollout.status().current_step, None);
    }

    #[test]
    fn five_brokers_two_at_a_time_go_by_id_with_the_controller_alone_last() {
        let before = Cluster {
            max_unavailable: 2,
            ..Cluster::private_ip(5)
        };
        let after = Cluster {
            external: External::PublicIp,
            ..before.clone()
        };
        let restarts = |controller| {
            step_nodes(&plan_change(&before, &after, controller))
                .into_iter()
                .map(|(_, nodes)| nodes)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            restarts(None),
            [names(&["w1", "w2"]), names(&["w3", "w4"]), names(&["w5"])]
        );
        assert_eq!(
            restarts(Some("w3")),
            [names(&["w1", "w2"]), names(&["w4", "w5"]), names(&["w3"])]
        );
        assert_eq!(
            restarts(Some("c1")),
            restarts(None),
            "a controller that is not restarting changes nothing"
        );
    }

    #[test]
    fn a_first_apply_names_new_nodes_without_touching_their_listeners() {
        let cluster = Cluster {
            hostname_mode: true,
            ..Cluster::private_ip(2)
        };
        let plan = plan_for_spec(1, &BTreeMap::new(), &cluster.spec(), None);
        assert_eq!(plan.steps[0].kind, StepKind::Expand);
        // No listeners in the expand step: the agent leaves server.properties alone, so nothing
        // restarts outside the broker steps.
        assert!(plan.steps[0].targets["w1"].listeners.is_none());
        assert_eq!(
            step_nodes(&plan)[1..],
            [
                (StepKind::RestartBrokers, names(&["w1"])),
                (StepKind::RestartBrokers, names(&["w2"])),
            ]
        );

        // In private-IP mode clients have no entries, but a node kreach never managed still gets
        // its (empty) spec, in the contract step.
        let cluster = Cluster::private_ip(1);
        let plan = plan_for_spec(1, &BTreeMap::new(), &cluster.spec(), None);
        assert_eq!(
            step_nodes(&plan),
            [
                (StepKind::RestartBrokers, names(&["w1"])),
                (StepKind::Contract, names(&["c1", "c2"])),
            ]
        );
    }

    fn public_access_rollout() -> (Rollout, BTreeMap<String, NodeSpec>) {
        let before = Cluster::private_ip(3);
        let after = Cluster {
            external: External::PublicIp,
            ..before.clone()
        };
        let (rollout, _) = Rollout::start(plan_change(&before, &after, None), "test", 0);
        (rollout, after.node_specs())
    }

    #[test]
    fn a_rolled_back_broker_pauses_everything_and_resume_retries_its_step() {
        let (mut rollout, desired) = public_access_rollout();
        let first = rollout.releases()["w1"].id();
        let events = rollout.on_report(
            "w1",
            first,
            ReportOutcome::RolledBack {
                reason: "EXTERNAL not advertised after 180s".into(),
            },
            1_000,
        );
        let reason = "rolled back: EXTERNAL not advertised after 180s".to_string();
        assert_eq!(
            events[1],
            Event::Paused {
                node: "w1".into(),
                reason: reason.clone()
            }
        );
        let frozen = rollout.releases();
        assert!(rollout.on_tick(10_000_000).is_empty());
        assert!(rollout.pause("again").is_empty());
        assert_eq!(
            rollout.releases(),
            frozen,
            "a paused rollout releases nothing"
        );
        let status = rollout.status();
        assert_eq!(
            (status.paused_node.as_deref(), status.paused_reason),
            (Some("w1"), Some(reason))
        );

        let events = rollout.resume(20_000);
        assert_eq!(
            events,
            [
                Event::Resumed {
                    step: 0,
                    attempt: 2
                },
                Event::StepReleased {
                    step: 0,
                    attempt: 2,
                    kind: StepKind::RestartBrokers,
                    nodes: names(&["w1"]),
                },
            ]
        );
        assert_eq!(rollout.releases()["w1"].attempt, 2);
        assert_eq!(rollout.releases()["w1"].spec, desired["w1"]);
        // The late Converged of attempt 1 must not count for attempt 2.
        let events = rollout.on_report("w1", first, ReportOutcome::Converged, 21_000);
        assert!(matches!(&events[..], [Event::ReportIgnored { .. }]));
        assert_eq!(rollout.state(), &RolloutState::Running);
        converge_step(&mut rollout, 22_000);
        assert!(matches!(rollout.state(), RolloutState::Settling { .. }));
    }

    #[test]
    fn abort_keeps_what_was_released_and_releases_nothing_more() {
        let (mut rollout, _) = public_access_rollout();
        converge_step(&mut rollout, 0);
        rollout.on_tick(10_000);
        let released = rollout.releases();
        assert_eq!(released.len(), 2);
        assert_eq!(rollout.abort(), [Event::Aborted { step: 1 }]);
        let id = released["w2"].id();
        let events = rollout.on_report("w2", id, ReportOutcome::Converged, 11_000);
        assert!(matches!(&events[..], [Event::ReportIgnored { .. }]));
        assert!(rollout.on_tick(99_000_000).is_empty());
        assert!(rollout.resume(99_000_000).is_empty());
        assert!(rollout.abort().is_empty());
        assert_eq!(rollout.releases(), released);
        assert_eq!(rollout.state(), &RolloutState::Aborted);
    }

    #[test]
    fn reports_for_other_generations_steps_attempts_or_nodes_are_ignored() {
        let (mut rollout, _) = public_access_rollout();
        let id = rollout.releases()["w1"].id();
        let stale = [
            (
                "w1",
                ReleaseId {
                    generation: 6,
                    ..id
                },
            ),
            ("w1", ReleaseId { step: 1, ..id }),
            ("w1", ReleaseId { attempt: 0, ..id }),
            ("w2", id),
        ];
        for (node, release) in stale {
            let failed = ReportOutcome::Failed {
                reason: "boom".into(),
            };
            let events = rollout.on_report(node, release, failed, 5);
            assert!(
                matches!(&events[..], [Event::ReportIgnored { .. }]),
                "{node} {release}: {events:?}"
            );
        }
        assert_eq!(rollout.state(), &RolloutState::Running);
        assert_eq!(rollout.status().nodes["w1"], NodeProgress::Waiting);
    }

    #[test]
    fn a_silent_node_pauses_the_rollout_by_name_after_health_timeout_plus_grace() {
        let (mut rollout, _) = public_access_rollout();
        assert_eq!(rollout.plan().health_timeout_ms, 180_000);
        assert!(rollout.on_tick(209_999).is_empty());
        assert_eq!(
            rollout.on_tick(210_000),
            [Event::Paused {
                node: "w1".into(),
                reason: "health_timeout: node w1 did not report within 210s".into(),
            }]
        );
        // Resume restarts the clock from the new release.
        rollout.resume(300_000);
        assert!(rollout.on_tick(509_999).is_empty());
        assert_eq!(rollout.on_tick(510_000).len(), 1);
    }

    #[test]
    fn a_waiting_node_whose_agent_stays_offline_pauses_after_agent_timeout() {
        let (mut rollout, _) = public_access_rollout();
        assert_eq!(rollout.plan().agent_timeout_ms, DEFAULT_AGENT_TIMEOUT_MS);
        assert_eq!(rollout.waiting_nodes().collect::<Vec<_>>(), ["w1"]);
        // Not a target of this step: nothing happens however long it is offline.
        assert!(rollout
            .on_agent_offline("w2", 10 * DEFAULT_AGENT_TIMEOUT_MS)
            .is_empty());
        assert!(rollout.on_agent_offline("w1", 59_999).is_empty());
        assert_eq!(
            rollout.on_agent_offline("w1", 60_000),
            [Event::Paused {
                node: "w1".into(),
                reason: "agent w1 offline for 60s".into(),
            }]
        );
        // Paused: said once, not at every tick.
        assert!(rollout.on_agent_offline("w1", 120_000).is_empty());
        // Resume re-releases the step; once w1 reported, its agent going away pauses nothing.
        rollout.resume(130_000);
        assert_eq!(rollout.state(), &RolloutState::Running);
        converge_step(&mut rollout, 0);
        assert!(rollout.on_agent_offline("w1", 600_000).is_empty());
    }

    #[test]
    fn a_plan_stored_before_agent_timeout_existed_gets_the_default() {
        let mut plan = public_access_rollout().0.plan().clone();
        plan.agent_timeout_ms = 5_000;
        let mut json = serde_json::to_value(&plan).unwrap();
        json.as_object_mut().unwrap().remove("agent_timeout_ms");
        let old: RolloutPlan = serde_json::from_value(json).unwrap();
        assert_eq!(old.agent_timeout_ms, DEFAULT_AGENT_TIMEOUT_MS);
    }

    #[test]
    fn an_operator_pause_while_settling_holds_the_next_step_and_resume_rereleases() {
        let (mut rollout, _) = public_access_rollout();
        converge_step(&mut rollout, 0);
        assert_eq!(
            rollout.pause("checking dashboards"),
            [Event::Paused {
                node: String::new(),
                reason: "checking dashboards".into()
            }]
        );
        assert!(rollout.on_tick(60_000).is_empty());
        assert_eq!(released_steps(&rollout), BTreeSet::from([0]));
        rollout.resume(70_000);
        assert_eq!(rollout.releases()["w1"].attempt, 2);
        assert_eq!(rollout.status().nodes["w1"], NodeProgress::Waiting);
    }

    #[test]
    fn a_coordinator_killed_mid_rollout_resumes_identically_from_its_saved_state() {
        let before = Cluster {
            hostname_mode: true,
            clients: vec![false, true, false],
            external: External::Hostname,
            ..Cluster::private_ip(4)
        };
        let after = Cluster {
            domain: 1,
            max_unavailable: 2,
            ..before.clone()
        };
        let (mut original, _) = Rollout::start(plan_change(&before, &after, Some("w2")), "t", 0);
        converge_step(&mut original, 100); // expand done, first broker pair released
        let id = original.releases()["w1"].id();
        original.on_report("w1", id, ReportOutcome::Converged, 200);

        let saved = serde_json::to_string(&original).unwrap();
        let mut restored: Rollout = serde_json::from_str(&saved).unwrap();
        assert_eq!(restored, original);
        assert_eq!(restored.releases(), original.releases());
        assert_eq!(restored.status(), original.status());

        let mut now = 300;
        while !original.is_finished() {
            let events = match original.state().clone() {
                RolloutState::Settling { until_ms } => {
                    now = until_ms;
                    (original.on_tick(now), restored.on_tick(now))
                }
                _ => {
                    now += 10;
                    // The first node still waiting reports Converged, to both copies.
                    let report = |rollout: &mut Rollout| {
                        let node = waiting_nodes(rollout).remove(0);
                        let id = rollout.releases()[&node].id();
                        rollout.on_report(&node, id, ReportOutcome::Converged, now)
                    };
                    (report(&mut original), report(&mut restored))
                }
            };
            assert_eq!(events.0, events.1);
            assert_eq!(restored.releases(), original.releases());
        }
        assert_eq!(restored, original);
    }

    #[test]
    fn status_lists_steps_and_who_the_current_step_waits_for() {
        let (mut rollout, _) = public_access_rollout();
        let status = rollout.status();
        assert_eq!(status.state, "running");
        assert_eq!((status.current_step, status.total_steps), (Some(0), 3));
        assert_eq!(status.steps[0].attempts, 1);
        assert_eq!(status.steps[1].attempts, 0);
        assert_eq!(status.steps[2].nodes, ["w3"]);
        converge_step(&mut rollout, 0);
        let status = rollout.status();
        assert_eq!(status.state, "settling");
        assert_eq!(status.settling_until_ms, Some(10_000));
        assert_eq!(status.nodes["w1"], NodeProgress::Converged);
    }

    // ---- property test: random rollouts checked by an independent observer ----

    /// Re-derives the rules from the inputs and the releases it sees, without trusting the plan.
    struct Observer {
        max_unavailable: usize,
        controller: Option<String>,
        current: BTreeMap<String, NodeSpec>,
        desired: BTreeMap<String, NodeSpec>,
        /// The last release seen per node.
        seen: BTreeMap<String, Release>,
        /// The last release each node confirmed (reported Converged for).
        confirmed: BTreeMap<String, Release>,
        /// Brokers with a listener change released but not confirmed.
        restarting: BTreeMap<String, ReleaseId>,
    }

    fn name_map(entries: &[HostsEntry]) -> BTreeMap<String, std::net::IpAddr> {
        entries
            .iter()
            .flat_map(|entry| {
                entry
                    .names
                    .iter()
                    .map(move |name| (name.to_ascii_lowercase(), entry.ip))
            })
            .collect()
    }

    impl Observer {
        fn listeners_before(&self, node: &str) -> Option<ListenerSettings> {
            match self.seen.get(node) {
                Some(release) => release.spec.listeners.clone(),
                None => self
                    .current
                    .get(node)
                    .and_then(|spec| spec.listeners.clone()),
            }
        }

        fn hosts_before(&self, node: &str) -> Vec<HostsEntry> {
            match (self.seen.get(node), self.current.get(node)) {
                (Some(release), _) => release.spec.hosts_entries.clone(),
                (None, Some(spec)) => spec.hosts_entries.clone(),
                (None, None) => Vec::new(),
            }
        }

        fn needs_restart(&self, node: &str) -> bool {
            let want = &self.desired[node];
            want.listeners.is_some()
                && self.current.get(node).map(|spec| &spec.listeners) != Some(&want.listeners)
        }

        fn needs_names(&self, node: &str) -> bool {
            let have = self
                .current
                .get(node)
                .map(|spec| name_map(&spec.hosts_entries))
                .unwrap_or_default();
            name_map(&self.desired[node].hosts_entries)
                .iter()
                .any(|(name, ip)| have.get(name) != Some(ip))
        }

        fn confirmed_names(&self, node: &str) -> bool {
            let Some(confirmed) = self.confirmed.get(node) else {
                return false;
            };
            let have = name_map(&confirmed.spec.hosts_entries);
            name_map(&self.desired[node].hosts_entries)
                .iter()
                .all(|(name, ip)| have.get(name) == Some(ip))
        }

        fn confirmed_listeners(&self, node: &str) -> bool {
            self.confirmed
                .get(node)
                .is_some_and(|release| release.spec.listeners == self.desired[node].listeners)
        }

        fn all_restarts_confirmed(&self) -> bool {
            self.restarting.is_empty()
                && self
                    .desired
                    .keys()
                    .filter(|node| self.needs_restart(node))
                    .all(|node| self.confirmed_listeners(node))
        }

        fn converged(&mut self, node: &str, id: ReleaseId) {
            let Some(release) = self.seen.get(node) else {
                return;
            };
            if release.id() == id {
                self.confirmed.insert(node.to_string(), release.clone());
                if self.restarting.get(node) == Some(&id) {
                    self.restarting.remove(node);
                }
            }
        }

        fn observe(&mut self, rollout: &Rollout) {
            let current_step = rollout.current_step().unwrap_or(u32::MAX);
            for (node, release) in rollout.releases() {
                if self.seen.get(&node) == Some(&release) {
                    continue;
                }
                assert!(release.step <= current_step, "{node}: released early");
                if !self.desired.contains_key(&node) {
                    // (g) a node dropped from the spec loses its hosts block and nothing else.
                    assert_eq!(
                        release.spec,
                        dropped_spec(&self.current[&node]),
                        "{node} is not in the new generation"
                    );
                }
                let restarts = release.spec.listeners.is_some()
                    && release.spec.listeners != self.listeners_before(&node);
                if restarts || self.restarting.contains_key(&node) {
                    self.restarting.insert(node.clone(), release.id());
                }
                if restarts {
                    // (c) every name clients and brokers need is in place before any restart.
                    for other in self.desired.keys() {
                        if self.needs_names(other) {
                            assert!(
                                self.confirmed_names(other),
                                "{node} restarts before {other} has its new names"
                            );
                        }
                    }
                    // (b) the controller goes last.
                    if self.controller.as_deref() == Some(node.as_str()) {
                        for other in self.desired.keys() {
                            if *other != node && self.needs_restart(other) {
                                assert!(
                                    self.confirmed_listeners(other),
                                    "controller {node} restarts before {other}"
                                );
                            }
                        }
                    }
                }
                // (d) names go away only after every broker restarted and confirmed.
                let now = name_map(&release.spec.hosts_entries);
                let removes = name_map(&self.hosts_before(&node))
                    .keys()
                    .any(|name| !now.contains_key(name));
                if removes {
                    assert!(
                        self.all_restarts_confirmed(),
                        "{node} loses names while brokers are still to restart: {:?}",
                        self.restarting
                    );
                }
                self.seen.insert(node, release);
            }
            // (a) one restart step at a time, at most max_unavailable brokers.
            let steps: BTreeSet<u32> = self.restarting.values().map(|id| id.step).collect();
            assert!(steps.len() <= 1, "restarts of steps {steps:?} overlap");
            assert!(
                self.restarting.len() <= self.max_unavailable,
                "{:?} restarting at once",
                self.restarting
            );
            if let Some(controller) = &self.controller {
                if self.restarting.contains_key(controller) {
                    assert_eq!(self.restarting.len(), 1, "controller restarts alone");
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Action {
        Converge(usize),
        Fail(usize),
        Stale(usize),
        Tick(u64),
        Pause,
        Resume,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            12 => any::<usize>().prop_map(Action::Converge),
            1 => any::<usize>().prop_map(Action::Fail),
            2 => any::<usize>().prop_map(Action::Stale),
            4 => (0u64..15_000).prop_map(Action::Tick),
            1 => Just(Action::Tick(250_000)),
            1 => Just(Action::Pause),
            3 => Just(Action::Resume),
        ]
    }

    fn cluster() -> impl Strategy<Value = Cluster> {
        (
            1u8..=7,
            any::<bool>(),
            prop_oneof![
                Just(External::Off),
                Just(External::PublicIp),
                Just(External::Hostname)
            ],
            1u8..=2,
            1u16..=2,
            prop::collection::vec(any::<bool>(), 0..=3),
            1u32..=3,
        )
            .prop_map(
                |(brokers, hostname_mode, external, net, domain, clients, max_unavailable)| {
                    Cluster {
                        brokers,
                        hostname_mode,
                        external,
                        net,
                        domain,
                        clients,
                        max_unavailable,
                    }
                },
            )
    }

    fn waiting_nodes(rollout: &Rollout) -> Vec<String> {
        rollout
            .status()
            .nodes
            .into_iter()
            .filter(|(_, progress)| *progress == NodeProgress::Waiting)
            .map(|(node, _)| node)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_rollouts_keep_the_rules(
            before in cluster(),
            after in cluster(),
            first_apply in prop::bool::weighted(0.15),
            controller in prop::option::of(0u8..7),
            actions in prop::collection::vec(action(), 0..150),
            abort_after in prop::option::weighted(0.15, 0usize..150),
        ) {
            let current = if first_apply { BTreeMap::new() } else { before.node_specs() };
            let desired = after.node_specs();
            let controller = controller.map(|index| format!("w{}", index % after.brokers + 1));
            let plan = plan(
                3, &current, &desired, controller.as_deref(), after.max_unavailable,
            ).with_settle_ms(10_000);
            let mut observer = Observer {
                max_unavailable: after.max_unavailable as usize,
                controller: controller.clone(),
                current: current.clone(),
                desired: desired.clone(),
                seen: BTreeMap::new(),
                confirmed: BTreeMap::new(),
                restarting: BTreeMap::new(),
            };
            let (mut rollout, _) = Rollout::start(plan, "proptest", 0);
            observer.observe(&rollout);
            let mut now = 0u64;

            for (index, action) in actions.into_iter().enumerate() {
                if abort_after == Some(index) {
                    rollout.abort();
                }
                let frozen = matches!(
                    rollout.state(),
                    RolloutState::Paused { .. } | RolloutState::Aborted | RolloutState::Completed
                ) && !matches!(action, Action::Resume);
                let before_action = rollout.releases();
                now += 1;
                match action {
                    Action::Converge(pick) | Action::Fail(pick) => {
                        let waiting = waiting_nodes(&rollout);
                        if waiting.is_empty() {
                            continue;
                        }
                        let node = &waiting[pick % waiting.len()];
                        let id = rollout.releases()[node].id();
                        let outcome = if matches!(action, Action::Fail(_)) {
                            ReportOutcome::RolledBack { reason: "gate failed".into() }
                        } else {
                            observer.converged(node, id);
                            ReportOutcome::Converged
                        };
                        rollout.on_report(node, id, outcome, now);
                    }
                    Action::Stale(pick) => {
                        let releases = rollout.releases();
                        let Some((node, release)) = releases.iter().nth(pick % releases.len().max(1)) else {
                            continue;
                        };
                        let id = release.id();
                        let stale = match pick % 3 {
                            0 => ReleaseId { attempt: id.attempt.saturating_sub(1), ..id },
                            1 => ReleaseId { generation: 2, ..id },
                            _ => ReleaseId { step: id.step + 1, ..id },
                        };
                        if stale != id {
                            let status = rollout.status();
                            rollout.on_report(node, stale, ReportOutcome::Converged, now);
                            prop_assert_eq!(rollout.status(), status, "(f) stale report changed state");
                        }
                    }
                    Action::Tick(ms) => {
                        now += ms;
                        rollout.on_tick(now);
                    }
                    Action::Pause => {
                        rollout.pause("operator");
                    }
                    Action::Resume => {
                        rollout.resume(now);
                    }
                }
                if frozen {
                    prop_assert_eq!(rollout.releases(), before_action, "(e) released while stopped");
                }
                // One node's release is the same whether asked for alone or with all.
                let all = rollout.releases();
                for step in &rollout.plan.steps {
                    for node in step.targets.keys() {
                        prop_assert_eq!(rollout.release_of(node), all.get(node).cloned());
                    }
                }
                if matches!(rollout.state(), RolloutState::Settling { .. }) {
                    prop_assert!(rollout.plan.steps[rollout.step].restarts, "(g) settling after a step that restarted nothing");
                    prop_assert!(rollout.step + 1 < rollout.plan.steps.len(), "(g) settling after the last step");
                }
                observer.observe(&rollout);
            }

            if rollout.state() == &RolloutState::Aborted {
                return Ok(());
            }
            // Let the rollout finish with healthy agents and check where it lands.
            for _ in 0..200 {
                match rollout.state().clone() {
                    RolloutState::Paused { .. } => {
                        rollout.resume(now);
                    }
                    RolloutState::Settling { until_ms } => {
                        now = until_ms;
                        rollout.on_tick(now);
                    }
                    RolloutState::Running => {
                        let node = waiting_nodes(&rollout).remove(0);
                        let id = rollout.releases()[&node].id();
                        observer.converged(&node, id);
                        rollout.on_report(&node, id, ReportOutcome::Converged, now);
                    }
                    RolloutState::Completed | RolloutState::Aborted => break,
                }
                observer.observe(&rollout);
            }
            prop_assert_eq!(rollout.state(), &RolloutState::Completed);
            let releases = rollout.releases();
            for (node, want) in &desired {
                let got = releases.get(node).map(|release| &release.spec).or(current.get(node));
                prop_assert_eq!(got, Some(want), "{} did not end at its desired spec", node);
            }
            for (node, had) in current.iter().filter(|(node, _)| !desired.contains_key(*node)) {
                let got = releases.get(node).map(|release| &release.spec).unwrap_or(had);
                prop_assert!(got.hosts_entries.is_empty(), "{} keeps its block", node);
            }
            prop_assert!(observer.restarting.is_empty());
        }
    }
}
