//! The agent's reconciler: one actor that owns the engine, the applied state and the EXTERNAL
//! filter, and is the only thing in the running agent that changes the host.
//!
//! Owns:
//! - the [`Engine`] (files, Kafka restarts), called from this actor's thread only, so an apply and
//!   a drift repair never interleave without any lock;
//! - the applied state: read from `applied.json` once, when the actor starts, then held in memory
//!   and published on a `watch` channel ([`Reconciler::applied`]); the file is written after each
//!   converged release only so that the next start of the agent finds it;
//! - the failed release a restarted agent must not apply again (`failed-release.json`, read at start);
//! - the EXTERNAL filter: set by an apply, put back by a rollback, repaired on its own timer.
//!
//! Does not own: the connection to the coordinator ([`crate::client`] translates its messages into
//! [`Command::Release`] and the [`ReleaseEvent`]s back), watching files ([`crate::drift`] reports
//! events as [`Command::Files`]), reachability checks (readers of [`Reconciler::applied`]).
//!
//! Everything reaches the actor on one channel; it wakes for a command, for the drift safety check
//! about every [`drift::SAFETY_CHECK_PERIOD`] and, on brokers, for the filter check every
//! `reachability.period`, both jittered.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use kreach_domain::desired::{NodeRole, NodeSpec};
use kreach_domain::gates::GateCheck;
use kreach_domain::report::Phase;
use tokio::sync::watch;

use crate::drift;
use crate::engine::{Engine, Held, Outcome, RestartWindow};
use crate::health::HealthBoard;
use crate::jitter::{first_delay, jittered, random_unit};
use crate::state::{self, AppliedState, FailedRelease, ReleaseId};

/// Events arriving within this window are handled as one change (editors write in several steps).
const COALESCE: Duration = Duration::from_millis(50);

/// What the actor is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Apply a coordinator's release and answer on its `events`.
    Release(Box<ReleaseRequest>),
    /// The file watcher saw these paths change.
    Files(Vec<PathBuf>),
    /// Finish and return.
    Stop,
}

/// A release from the coordinator, translated from the wire.
#[derive(Debug)]
pub struct ReleaseRequest {
    pub id: ReleaseId,
    /// The node's desired state, or why the message could not be turned into one (refused and
    /// remembered as failed, like a release that failed here).
    pub spec: Result<NodeSpec, String>,
    pub released_by: String,
    /// Every cluster the coordinator serves this node (`Release.clusters`): the clusters held
    /// here that it does not name are dropped, their hosts blocks with them. Empty (a coordinator
    /// of one cluster, `apply-local`): the release's own cluster only.
    pub clusters: Vec<String>,
    /// [`ReleaseEvent::Applying`] when the files are about to change, then one
    /// [`ReleaseEvent::Done`].
    pub events: tokio::sync::mpsc::UnboundedSender<ReleaseEvent>,
}

#[derive(Debug)]
pub enum ReleaseEvent {
    Applying,
    Done(ReleaseResult),
}

/// How a release ended here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseResult {
    /// This release already failed or rolled back here: the same answer again, nothing applied
    /// (Rule 4: the coordinator retries with the next attempt number).
    FailedBefore(FailedRelease),
    /// Applied before and nothing drifted: nothing changed (the filter was enforced again).
    AlreadyApplied,
    Converged {
        checks: Vec<GateCheck>,
        restart_window: Option<RestartWindow>,
        /// Unmanaged hosts lines that shadow kreach's entries, one sentence each.
        conflicts: Vec<String>,
    },
    RolledBack {
        reason: String,
        restart_window: Option<RestartWindow>,
    },
    Failed {
        reason: String,
    },
}

/// The actor's side of the channels; [`Reconciler::start`] hands out the other side.
pub struct Reconciler {
    engine: Engine,
    commands: Receiver<Command>,
    /// The primary cluster's applied state: a broker's cluster, else the first cluster whose
    /// release this host applied (`state_dir/applied.json`).
    applied: watch::Sender<Option<AppliedState>>,
    /// The primary's failed release (or one whose spec could not be read).
    failed: Option<FailedRelease>,
    /// The other clusters this host is a client of, each with its own state
    /// (`state_dir/clusters/NAME/`).
    secondary: BTreeMap<String, Slot>,
    /// The clusters held, for readers (dry runs keep their blocks as an apply does).
    held: watch::Sender<Held>,
    /// The secondary clusters' applied states, for readers (the reachability check).
    secondary_applied: watch::Sender<Vec<AppliedState>>,
    health: std::sync::Arc<HealthBoard>,
    /// The release last logged as enforced, and who released it.
    enforcing: Option<(ReleaseId, String)>,
    waiting_logged: bool,
    /// The conflicts last logged: a new or a resolved one is said once, not at every check.
    reported_conflicts: Vec<String>,
}

/// A release of a cluster other than the primary one, as this host holds it.
#[derive(Debug, Default)]
struct Slot {
    applied: Option<AppliedState>,
    failed: Option<FailedRelease>,
}

/// Where a release goes among the clusters held.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Primary,
    Secondary(String),
}

/// What a release does to the clusters held, decided before anything is applied.
#[derive(Debug)]
struct Layout {
    target: Target,
    /// The clusters held once it converged.
    held: Held,
    /// The primary's cluster, held on as a secondary one (a broker's release of another
    /// cluster made that one primary).
    demoted: Option<String>,
    /// The clusters held now that the release does not name: no longer served.
    dropped: Vec<String>,
}

/// The applied state as the reconciler holds it (None: nothing applied yet), for readers.
pub type AppliedWatch = watch::Receiver<Option<AppliedState>>;

/// How the rest of the agent talks to the actor.
#[derive(Clone)]
pub struct Handle {
    commands: Sender<Command>,
    applied: AppliedWatch,
    held: watch::Receiver<Held>,
    secondary: watch::Receiver<Vec<AppliedState>>,
}

impl Handle {
    /// Ask the actor; false when it has stopped.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// The applied state as the actor holds it now (None: nothing applied yet).
    pub fn applied(&self) -> AppliedWatch {
        self.applied.clone()
    }

    /// A sender for the file watcher's events.
    pub fn commands(&self) -> Sender<Command> {
        self.commands.clone()
    }

    /// The clusters this host holds releases of now.
    pub fn held(&self) -> Held {
        self.held.borrow().clone()
    }

    /// The applied states of the clusters held besides the primary one (a client of several
    /// clusters), by cluster name.
    pub fn secondary(&self) -> watch::Receiver<Vec<AppliedState>> {
        self.secondary.clone()
    }
}

impl Reconciler {
    /// Read the persisted applied state and failed release (the only reads of them in a running
    /// agent) and make the actor. Errors reading either are logged and the actor starts without
    /// them, as the agent always did: it waits for a release.
    pub fn new(mut engine: Engine, health: std::sync::Arc<HealthBoard>) -> (Reconciler, Handle) {
        let config = engine.config().clone();
        let applied = match state::load(&config.state_dir) {
            Ok(applied) => applied,
            Err(error) => {
                tracing::error!(node = %config.node, "cannot enforce the applied state: {error}");
                None
            }
        };
        let failed = match state::load_failed(&config.state_dir) {
            Ok(failed) => failed,
            Err(error) => {
                tracing::warn!(node = %config.node, "{error}");
                None
            }
        };
        if let Some(failed) = &failed {
            tracing::info!(node = %config.node, release = %failed.release(), "remembering a failed release from the previous run: it is not applied again until the coordinator retries it");
        }
        let mut secondary = BTreeMap::new();
        for cluster in state::cluster_dirs(&config.state_dir) {
            let dir = state::cluster_dir(&config.state_dir, &cluster);
            let slot = Slot {
                applied: state::load(&dir).unwrap_or_else(|error| {
                    tracing::error!(node = %config.node, cluster = %cluster, "cannot enforce the applied state: {error}");
                    None
                }),
                failed: state::load_failed(&dir).unwrap_or_else(|error| {
                    tracing::warn!(node = %config.node, cluster = %cluster, "{error}");
                    None
                }),
            };
            secondary.insert(cluster, slot);
        }
        let primary = applied
            .as_ref()
            .map(|applied| applied.node_spec.cluster.clone());
        let held = Held {
            clusters: primary.iter().chain(secondary.keys()).cloned().collect(),
            primary,
        };
        engine.set_held(held.clone());
        let (commands_tx, commands) = std::sync::mpsc::channel();
        let (applied_tx, applied_rx) = watch::channel(applied);
        let (held_tx, held_rx) = watch::channel(held);
        let (secondary_tx, secondary_rx) = watch::channel(secondary_states(&secondary));
        let handle = Handle {
            commands: commands_tx,
            applied: applied_rx,
            held: held_rx,
            secondary: secondary_rx,
        };
        let reconciler = Reconciler {
            engine,
            commands,
            applied: applied_tx,
            failed,
            secondary,
            held: held_tx,
            secondary_applied: secondary_tx,
            health,
            enforcing: None,
            waiting_logged: false,
            reported_conflicts: Vec::new(),
        };
        (reconciler, handle)
    }

    /// The paths the file watcher must watch.
    pub fn managed_paths(&self) -> Vec<PathBuf> {
        self.engine.managed_paths()
    }

    /// Run until [`Command::Stop`] (or every [`Handle`] is gone): check the managed files at once,
    /// then on every event about them, on every release, and on the timers. Blocking: run it on a
    /// thread of its own.
    pub fn run(mut self, watcher: &mut notify::RecommendedWatcher) {
        let managed = self.engine.managed_paths();
        let firewall_period = self.engine.config().reachability.period;
        self.check(watcher);
        // The timers start at a random phase and come every jittered period, measured from the
        // last check of their kind: agents of one fleet do not read their files in lockstep, and
        // an event that is not about a managed file does not postpone the next safety check.
        let mut next_check =
            Instant::now() + first_delay(drift::SAFETY_CHECK_PERIOD, random_unit());
        let mut next_firewall = Instant::now();
        let mut pending: VecDeque<Command> = VecDeque::new();
        loop {
            let now = Instant::now();
            if now >= next_firewall {
                self.repair_firewall();
                next_firewall = Instant::now() + jittered(firewall_period, random_unit());
            }
            let command = match pending.pop_front() {
                Some(command) => Ok(command),
                None => {
                    let deadline = next_check.min(next_firewall);
                    self.commands
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
            };
            match command {
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Command::Release(request)) => {
                    self.release(*request);
                    continue;
                }
                Ok(Command::Files(paths)) => {
                    if !paths.iter().any(|path| managed.iter().any(|m| m == path)) {
                        continue;
                    }
                    // Let a multi-step edit finish, then look once; a release that arrives
                    // meanwhile waits its turn.
                    std::thread::sleep(COALESCE);
                    while let Ok(next) = self.commands.try_recv() {
                        match next {
                            Command::Stop => return,
                            Command::Files(_) => {}
                            release @ Command::Release(_) => pending.push_back(release),
                        }
                    }
                    self.check(watcher);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() < next_check {
                        continue;
                    }
                    self.check(watcher);
                }
            }
            next_check = Instant::now() + jittered(drift::SAFETY_CHECK_PERIOD, random_unit());
        }
    }

    fn node(&self) -> &str {
        &self.engine.config().node
    }

    /// Every applied state held, with the directory that keeps it: the primary's first.
    fn held_states(&self) -> Vec<(PathBuf, AppliedState)> {
        let root = &self.engine.config().state_dir;
        let primary = self.applied.borrow().clone();
        primary
            .map(|applied| (root.clone(), applied))
            .into_iter()
            .chain(self.secondary.iter().filter_map(|(cluster, slot)| {
                let applied = slot.applied.clone()?;
                Some((state::cluster_dir(root, cluster), applied))
            }))
            .collect()
    }

    /// Enforce the applied states once: write back drifted files, report conflicts.
    fn check(&mut self, watcher: &mut notify::RecommendedWatcher) {
        let states = self.held_states();
        if states.is_empty() {
            if !self.waiting_logged {
                tracing::info!(node = %self.node(), "no applied state yet; waiting for a spec (apply-local or a coordinator)");
                self.waiting_logged = true;
            }
            return;
        }
        for (dir, applied) in &states {
            self.keep_state_file(dir, applied);
        }
        let applied = &states[0].1;
        let current = (applied.release(), applied.released_by.clone());
        if self.enforcing.as_ref() != Some(&current) {
            tracing::info!(
                node = %applied.node_spec.node,
                generation = applied.generation,
                step = applied.step,
                attempt = applied.attempt,
                "enforcing the last applied state (released by {})",
                applied.released_by
            );
            self.enforcing = Some(current);
        }
        let firewall = crate::firewall::describe(self.engine.config(), &applied.node_spec);
        // Each cluster's own files (its hosts block; a broker's properties), the others' blocks
        // kept: one check per cluster held.
        let mut conflicts = Vec::new();
        let mut repaired = Vec::new();
        let mut failure = None;
        for (_, applied) in &states {
            match drift::check_and_repair(&self.engine, applied) {
                Ok(checked) => {
                    conflicts.extend(checked.conflicts);
                    repaired.extend(checked.repaired);
                }
                Err(error) => {
                    tracing::error!(node = %applied.node_spec.node, cluster = %applied.node_spec.cluster, "cannot enforce the applied state: {error}");
                    failure.get_or_insert_with(|| error.to_string());
                }
            }
        }
        conflicts.dedup();
        crate::health::update(&self.health, |health| {
            health.conflicts.clone_from(&conflicts);
            health.enforce_error = failure.clone().unwrap_or_default();
            if !repaired.is_empty() {
                health.repairs += 1;
                health.last_repair_ms = state::now_unix_ms();
            }
            // A filter error stays until the filter check itself clears it.
            if !health.firewall.starts_with("error") {
                health.firewall = firewall;
            }
        });
        for path in &repaired {
            drift::rewatch_file(watcher, path);
        }
        if conflicts != self.reported_conflicts {
            for conflict in &conflicts {
                if !self.reported_conflicts.contains(conflict) {
                    tracing::warn!(node = %applied.node_spec.node, "conflict: {conflict}");
                }
            }
            if conflicts.is_empty() {
                tracing::info!(node = %applied.node_spec.node, "no unmanaged hosts line shadows kreach's entries any more");
            }
            self.reported_conflicts = conflicts;
        }
    }

    /// The applied state's file is for the next start: if it went (the state directory removed
    /// under us), write it back from memory.
    fn keep_state_file(&self, state_dir: &std::path::Path, applied: &AppliedState) {
        let config = self.engine.config();
        if state::exists(state_dir) {
            return;
        }
        match state::save(state_dir, applied) {
            Ok(()) => tracing::error!(
                node = %config.node,
                dir = %state_dir.display(),
                generation = applied.generation,
                "the applied state in {} disappeared (state directory removed?); wrote it back from memory and keep enforcing generation {}",
                state_dir.display(),
                applied.generation
            ),
            Err(error) => tracing::error!(
                node = %config.node,
                generation = applied.generation,
                "the applied state disappeared and cannot be written back ({error}); enforcing generation {} from memory",
                applied.generation
            ),
        }
    }

    /// Brokers: keep the EXTERNAL filter of the applied state in the kernel (a reboot or a flushed
    /// ruleset removes it).
    fn repair_firewall(&self) {
        let Some(spec) = self
            .applied
            .borrow()
            .as_ref()
            .map(|applied| applied.node_spec.clone())
        else {
            return;
        };
        if matches!(spec.role, NodeRole::Client { .. }) {
            return;
        }
        let config = self.engine.config();
        let firewall = match self.engine.repair_filter(&spec) {
            Ok(_) => crate::firewall::describe(config, &spec),
            Err(error) => {
                tracing::error!(node = %config.node, "cannot repair the EXTERNAL filter: {error}");
                format!("error: {error}")
            }
        };
        crate::health::update(&self.health, |health| health.firewall = firewall);
    }

    /// Apply one release and answer on its channel.
    fn release(&mut self, request: ReleaseRequest) {
        let ReleaseRequest {
            id,
            spec,
            released_by,
            clusters,
            events,
        } = request;
        let result = self.decide(id, spec, &clusters, &released_by, &events);
        let _ = events.send(ReleaseEvent::Done(result));
    }

    /// Where a release of `spec` goes among the clusters held, and what it does to them.
    /// `served` is every cluster the coordinator serves this node (empty: `spec`'s only).
    fn layout(&self, spec: &NodeSpec, served: &[String]) -> Layout {
        let cluster = spec.cluster.as_str();
        let served_here =
            |name: &str| name == cluster || served.iter().any(|served| served == name);
        let primary = self
            .applied
            .borrow()
            .as_ref()
            .map(|applied| applied.node_spec.cluster.clone());
        let is_broker = matches!(spec.role, NodeRole::Broker { .. });
        // A broker's cluster is its primary; a client's release replaces the primary's when it is
        // the same cluster, when there is none, or when the primary is no longer served (the
        // cluster renamed, or the node left it).
        let target = match &primary {
            Some(primary) if primary != cluster && !is_broker && served_here(primary) => {
                Target::Secondary(cluster.to_string())
            }
            _ => Target::Primary,
        };
        let demoted = primary.clone().filter(|primary| {
            target == Target::Primary && primary != cluster && served_here(primary)
        });
        let dropped: Vec<String> = self
            .secondary
            .keys()
            .filter(|name| !served_here(name))
            .cloned()
            .collect();
        let new_primary = match &target {
            Target::Primary => Some(cluster.to_string()),
            Target::Secondary(_) => primary.clone(),
        };
        let mut clusters: Vec<String> = new_primary.iter().cloned().collect();
        for name in std::iter::once(cluster.to_string())
            .chain(demoted.clone())
            .chain(
                self.secondary
                    .keys()
                    .filter(|name| served_here(name))
                    .cloned(),
            )
        {
            if !clusters.contains(&name) {
                clusters.push(name);
            }
        }
        Layout {
            target,
            held: Held {
                primary: new_primary,
                clusters,
            },
            demoted,
            dropped,
        }
    }

    /// The failed release remembered for `target`.
    fn failed_of(&self, target: &Target) -> Option<&FailedRelease> {
        match target {
            Target::Primary => self.failed.as_ref(),
            Target::Secondary(cluster) => self.secondary.get(cluster)?.failed.as_ref(),
        }
    }

    /// The state last applied for `target`: a promoted secondary's own, else the primary's.
    fn previous_of(&self, target: &Target, cluster: &str) -> Option<AppliedState> {
        match target {
            Target::Primary => self
                .secondary
                .get(cluster)
                .and_then(|slot| slot.applied.clone())
                .or_else(|| self.applied.borrow().clone()),
            Target::Secondary(cluster) => self.secondary.get(cluster)?.applied.clone(),
        }
    }

    fn decide(
        &mut self,
        id: ReleaseId,
        spec: Result<NodeSpec, String>,
        served: &[String],
        released_by: &str,
        events: &tokio::sync::mpsc::UnboundedSender<ReleaseEvent>,
    ) -> ReleaseResult {
        let node = self.node().to_string();
        let layout = spec.as_ref().ok().map(|spec| self.layout(spec, served));
        let target = layout
            .as_ref()
            .map_or(Target::Primary, |layout| layout.target.clone());
        if let Some(failed) = self
            .failed_of(&target)
            .filter(|failed| failed.release() == id)
        {
            tracing::info!(node = %node, release = %id, "release already failed here; reporting that again instead of re-applying");
            return ReleaseResult::FailedBefore(failed.clone());
        }
        let (spec, layout) = match (spec, layout) {
            (Ok(spec), Some(layout)) => (spec, layout),
            (Err(reason), _) => {
                let reason = format!("{reason}; nothing was applied");
                tracing::warn!(node = %node, release = %id, "refusing release: {reason}");
                return self.failed(&target, id, Phase::Failed, reason);
            }
            (Ok(_), None) => unreachable!("a readable spec has a layout"),
        };
        let previous = self.previous_of(&target, &spec.cluster);
        // Planned as the clusters will be held once it converged: the blocks of the clusters the
        // release no longer names go in the same write.
        let before = self.engine.held().clone();
        self.engine.set_held(layout.held.clone());
        let result = self.apply(id, spec, previous, &layout, released_by, events);
        if matches!(result, ReleaseResult::Converged { .. }) {
            self.settle(&layout);
        } else if !matches!(result, ReleaseResult::AlreadyApplied) {
            self.engine.set_held(before);
        }
        result
    }

    /// The clusters held after a release converged: the primary's state kept as a secondary's
    /// when it was demoted, a promoted secondary's directory gone, the clusters no longer served
    /// forgotten.
    fn settle(&mut self, layout: &Layout) {
        let root = self.engine.config().state_dir.clone();
        let node = self.node().to_string();
        if let (Some(demoted), Target::Primary) = (&layout.demoted, &layout.target) {
            // `applied` holds the new primary already; the old one was saved in `previous`.
            if let Some(slot) = self.secondary.get(demoted) {
                if let Some(applied) = &slot.applied {
                    if let Err(error) = state::save(&state::cluster_dir(&root, demoted), applied) {
                        tracing::warn!(node = %node, cluster = %demoted, "{error}");
                    }
                }
            }
        }
        if let Some(primary) = &layout.held.primary {
            if self.secondary.remove(primary).is_some() {
                if let Err(error) = state::remove_cluster_dir(&root, primary) {
                    tracing::warn!(node = %node, cluster = %primary, "{error}");
                }
            }
        }
        for cluster in &layout.dropped {
            self.secondary.remove(cluster);
            tracing::info!(node = %node, cluster = %cluster, "no longer a client of cluster {cluster}: its hosts block was removed");
            if let Err(error) = state::remove_cluster_dir(&root, cluster) {
                tracing::warn!(node = %node, cluster = %cluster, "{error}");
            }
        }
        self.held.send_replace(layout.held.clone());
        self.secondary_applied
            .send_replace(secondary_states(&self.secondary));
    }

    /// Plan and apply `spec` over `previous` (the state last applied for its cluster).
    fn apply(
        &mut self,
        id: ReleaseId,
        spec: NodeSpec,
        previous: Option<AppliedState>,
        layout: &Layout,
        released_by: &str,
        events: &tokio::sync::mpsc::UnboundedSender<ReleaseEvent>,
    ) -> ReleaseResult {
        let node = self.node().to_string();
        let target = &layout.target;
        let plan = self.engine.plan(&spec);
        // Already applied and nothing drifted: say so without touching anything.
        let same = previous
            .as_ref()
            .is_some_and(|applied| applied.release() == id && applied.node_spec == spec);
        if same {
            let already = match &plan {
                // The files match, but a reboot empties the kernel's ruleset: the filter again.
                Ok(plan) if plan.is_empty() => self
                    .engine
                    .enforce_filter(&spec)
                    .map(|_| true)
                    .map_err(|error| error.to_string()),
                Ok(_) => Ok(false),
                Err(error) => Err(error.to_string()),
            };
            match already {
                Ok(true) => {
                    tracing::info!(node = %node, release = %id, "release already applied; nothing to change");
                    return ReleaseResult::AlreadyApplied;
                }
                Ok(false) => {}
                Err(reason) => {
                    tracing::warn!(node = %node, release = %id, "cannot apply release: {reason}");
                    return self.failed(target, id, Phase::Failed, reason);
                }
            }
        }

        let cluster = spec.cluster.clone();
        tracing::info!(node = %node, cluster = %cluster, generation = id.generation, step = id.step, attempt = id.attempt, "applying release {id} ({released_by})");
        let _ = events.send(ReleaseEvent::Applying);
        let started = Instant::now();
        let result = plan.and_then(|plan| {
            let conflicts: Vec<String> = plan.conflicts.iter().map(ToString::to_string).collect();
            if !plan.is_empty() {
                tracing::info!(node = %spec.node, "plan:\n{}", plan.render().trim_end());
            }
            self.engine
                .apply(&plan, previous.as_ref(), id, released_by)
                .map(|outcome| (outcome, conflicts))
        });
        match result {
            Ok((
                Outcome::Converged {
                    applied,
                    checks,
                    restart_window,
                    ..
                },
                conflicts,
            )) => {
                tracing::info!(node = %node, cluster = %cluster, generation = id.generation, step = id.step, attempt = id.attempt, "converged on release {id}");
                crate::metrics::record_apply(
                    "converged",
                    restart_window.is_some(),
                    started.elapsed(),
                );
                self.hold(target, layout, *applied);
                ReleaseResult::Converged {
                    checks,
                    restart_window,
                    conflicts,
                }
            }
            Ok((
                Outcome::RolledBack {
                    reason,
                    restart_window,
                    ..
                },
                _,
            )) => {
                tracing::warn!(node = %node, cluster = %cluster, generation = id.generation, "release {id} rolled back: {reason}");
                crate::metrics::record_apply(
                    "rolled_back",
                    restart_window.is_some(),
                    started.elapsed(),
                );
                self.failed(target, id, Phase::RolledBack, reason.clone());
                ReleaseResult::RolledBack {
                    reason,
                    restart_window,
                }
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(node = %node, cluster = %cluster, generation = id.generation, "release {id} failed: {reason}");
                crate::metrics::record_apply("failed", false, started.elapsed());
                self.failed(target, id, Phase::Failed, reason)
            }
        }
    }

    /// Hold a converged release in its slot and forget the slot's failed release.
    fn hold(&mut self, target: &Target, layout: &Layout, applied: AppliedState) {
        let root = self.engine.config().state_dir.clone();
        let dir = match target {
            Target::Primary => {
                // The primary replaced: a demoted one is held on as a secondary.
                let old = self.applied.send_replace(Some(applied));
                if let (Some(demoted), Some(old)) = (&layout.demoted, old) {
                    let failed = self.failed.take();
                    self.secondary.insert(
                        demoted.clone(),
                        Slot {
                            applied: Some(old),
                            failed,
                        },
                    );
                }
                self.failed = None;
                root
            }
            Target::Secondary(cluster) => {
                self.secondary.insert(
                    cluster.clone(),
                    Slot {
                        applied: Some(applied),
                        failed: None,
                    },
                );
                state::cluster_dir(&root, cluster)
            }
        };
        if let Err(error) = state::clear_failed(&dir) {
            tracing::warn!(node = %self.node(), "{error}");
        }
    }

    /// Remember a release that failed or rolled back here (`phase`), also across a restart of the
    /// agent, so the same release is answered the same way and not applied again.
    fn failed(
        &mut self,
        target: &Target,
        id: ReleaseId,
        phase: Phase,
        reason: String,
    ) -> ReleaseResult {
        let failed = FailedRelease {
            generation: id.generation,
            step: id.step,
            attempt: id.attempt,
            phase,
            reason: reason.clone(),
            at_unix_ms: state::now_unix_ms(),
        };
        let root = &self.engine.config().state_dir;
        let dir = match target {
            Target::Primary => root.clone(),
            Target::Secondary(cluster) => state::cluster_dir(root, cluster),
        };
        if let Err(error) = state::save_failed(&dir, &failed) {
            // Still kept in memory: only a restart of this agent would apply the release again.
            tracing::warn!(node = %self.node(), "cannot persist the failed release: {error}");
        }
        match target {
            Target::Primary => self.failed = Some(failed),
            Target::Secondary(cluster) => {
                self.secondary.entry(cluster.clone()).or_default().failed = Some(failed)
            }
        }
        ReleaseResult::Failed { reason }
    }
}

/// The secondary slots' applied states, in cluster order.
fn secondary_states(secondary: &BTreeMap<String, Slot>) -> Vec<AppliedState> {
    secondary
        .values()
        .filter_map(|slot| slot.applied.clone())
        .collect()
}

/// Start the actor on a thread of the blocking pool with its file watcher: `watching` fires once
/// the watches are in place (READY waits for it: before them, drift would go unnoticed).
pub fn spawn(
    reconciler: Reconciler,
    handle: &Handle,
    watching: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<notify::Result<()>> {
    let events = handle.commands();
    tokio::task::spawn_blocking(move || {
        let paths = reconciler.managed_paths();
        let mut watcher = drift::watch(&paths, move |paths| {
            let _ = events.send(Command::Files(paths));
        })?;
        let _ = watching.send(());
        reconciler.run(&mut watcher);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::service::CommandManager;
    use crate::verify::TcpProbe;
    use tokio::sync::mpsc::unbounded_channel;

    const SPEC: &str = "[cluster]\nname = \"c\"\n[listeners.internal]\nadvertise = \"hostname\"\n\
        [[broker]]\nid = 1\nnode = \"b1\"\nhostname = \"b1.c\"\nprivate_ip = \"198.18.0.11\"\n\
        [[client]]\nnode = \"etl-1\"\n";

    /// A client host's agent in `dir`: its reconciler runs on a thread of its own.
    fn start(dir: &std::path::Path) -> (Handle, tokio::task::JoinHandle<notify::Result<()>>) {
        let root = dir.display();
        let config = AgentConfig::parse(&format!(
            "node = \"etl-1\"\nstate_dir = \"{root}/state\"\n[manage]\nhosts_file = \"{root}/hosts\"\n"
        ))
        .unwrap();
        // A client host: nothing restarts and nothing is probed.
        let services = CommandManager {
            restart: vec!["false".into()],
            status: None,
        };
        let engine = Engine::new(config, Box::new(services), Box::new(TcpProbe));
        let (reconciler, handle) =
            Reconciler::new(engine, std::sync::Arc::new(crate::health::board()));
        let (watching, _) = tokio::sync::oneshot::channel();
        let task = spawn(reconciler, &handle, watching);
        (handle, task)
    }

    /// Wait up to 10 s for `done`: the drift check repaired the hosts file.
    async fn repaired(hosts: &dyn Fn() -> String, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "not repaired:\n{}",
                hosts()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Send a release and collect what the reconciler answers.
    async fn release(
        handle: &Handle,
        id: ReleaseId,
        spec: Result<NodeSpec, String>,
    ) -> (bool, ReleaseResult) {
        release_of(handle, id, spec, &[]).await
    }

    /// The same, from a coordinator that serves this node `clusters`.
    async fn release_of(
        handle: &Handle,
        id: ReleaseId,
        spec: Result<NodeSpec, String>,
        clusters: &[&str],
    ) -> (bool, ReleaseResult) {
        let (events, mut answers) = unbounded_channel();
        let request = ReleaseRequest {
            id,
            spec,
            released_by: "test".into(),
            clusters: clusters.iter().map(ToString::to_string).collect(),
            events,
        };
        assert!(handle.send(Command::Release(Box::new(request))));
        let mut applying = false;
        loop {
            match answers.recv().await.expect("an answer") {
                ReleaseEvent::Applying => applying = true,
                ReleaseEvent::Done(result) => return (applying, result),
            }
        }
    }

    fn id(attempt: u32) -> ReleaseId {
        ReleaseId {
            generation: 3,
            step: 1,
            attempt,
        }
    }

    #[tokio::test]
    async fn the_actor_refuses_applies_remembers_and_holds_the_applied_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let spec = kreach_domain::desired::node_spec(
            &kreach_domain::spec::ClusterSpec::parse(SPEC).unwrap(),
            "etl-1",
        )
        .unwrap();
        let hosts = || std::fs::read_to_string(dir.path().join("hosts")).unwrap();
        let (handle, task) = start(dir.path());

        // A release that cannot be read fails, and the same release is not applied later.
        let (applying, result) = release(&handle, id(1), Err("invalid Release.spec".into())).await;
        assert!(!applying);
        assert_eq!(
            result,
            ReleaseResult::Failed {
                reason: "invalid Release.spec; nothing was applied".into()
            }
        );
        let (applying, result) = release(&handle, id(1), Ok(spec.clone())).await;
        assert!(!applying && matches!(result, ReleaseResult::FailedBefore(_)));
        assert!(!hosts().contains("b1.c"), "nothing applied");

        // The next attempt applies, and the actor holds what it applied.
        let (applying, result) = release(&handle, id(2), Ok(spec.clone())).await;
        assert!(applying, "{result:?}");
        assert!(
            matches!(result, ReleaseResult::Converged { .. }),
            "{result:?}"
        );
        assert!(hosts().contains("198.18.0.11\tb1.c"), "{}", hosts());
        let held = handle.applied().borrow().clone().unwrap();
        assert_eq!(
            (held.release(), held.node_spec.clone()),
            (id(2), spec.clone())
        );
        let (_, again) = release(&handle, id(2), Ok(spec.clone())).await;
        assert_eq!(again, ReleaseResult::AlreadyApplied);

        // Drift inside the block is repaired from the state in memory, whose file is gone.
        std::fs::remove_file(dir.path().join("state/applied.json")).unwrap();
        std::fs::write(
            dir.path().join("hosts"),
            hosts().replace("198.18.0.11", "198.18.0.99"),
        )
        .unwrap();
        repaired(&hosts, || {
            hosts().contains("198.18.0.11\tb1.c") && crate::state::exists(&dir.path().join("state"))
        })
        .await;
        assert!(handle.send(Command::Stop));
        task.await.unwrap().unwrap();

        // A new agent reads the state once at start: it holds release 2, and release 1's failure
        // was forgotten when release 2 converged.
        let (handle, task) = start(dir.path());
        assert_eq!(
            handle
                .applied()
                .borrow()
                .as_ref()
                .map(AppliedState::release),
            Some(id(2))
        );
        assert!(crate::state::load_failed(&dir.path().join("state"))
            .unwrap()
            .is_none());
        handle.send(Command::Stop);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_release_already_held_handed_again_by_another_coordinator_changes_nothing() {
        // A broker: its first release rewrites server.properties and restarts Kafka once.
        let fixture = crate::engine::tests::Fixture::new();
        let engine = fixture.engine(None, Ok(vec![]));
        let (reconciler, handle) =
            Reconciler::new(engine, std::sync::Arc::new(crate::health::board()));
        let (watching, _) = tokio::sync::oneshot::channel();
        let task = spawn(reconciler, &handle, watching);
        let spec = fixture.node_spec();
        let (applying, result) = release(&handle, id(1), Ok(spec.clone())).await;
        assert!(
            applying && matches!(result, ReleaseResult::Converged { .. }),
            "{result:?}"
        );
        assert_eq!(*fixture.restarts.lock().unwrap(), 1);
        let (properties, hosts) = (fixture.read("server.properties"), fixture.read("hosts"));
        assert!(properties.contains("emr-worker-2.c"), "{properties}");

        // After a failover the new leader (sharing the store) hands the same release: the same
        // id and content, released by another coordinator. Releases are compared by id and
        // node spec, never by who sent them: nothing is applied, Kafka is not restarted.
        let (events, mut answers) = unbounded_channel();
        assert!(handle.send(Command::Release(Box::new(ReleaseRequest {
            id: id(1),
            spec: Ok(spec.clone()),
            released_by: "coordinator-2 (after a failover)".into(),
            clusters: Vec::new(),
            events,
        }))));
        let mut applying = false;
        let again = loop {
            match answers.recv().await.expect("an answer") {
                ReleaseEvent::Applying => applying = true,
                ReleaseEvent::Done(result) => break result,
            }
        };
        assert_eq!((applying, again), (false, ReleaseResult::AlreadyApplied));
        assert_eq!(
            *fixture.restarts.lock().unwrap(),
            1,
            "Kafka restarted again"
        );
        assert_eq!(fixture.read("server.properties"), properties);
        assert_eq!(fixture.read("hosts"), hosts);
        assert_eq!(
            handle
                .applied()
                .borrow()
                .as_ref()
                .map(AppliedState::release),
            Some(id(1))
        );
        assert!(handle.send(Command::Stop));
        task.await.unwrap().unwrap();
    }

    /// etl-1's node spec in a cluster `name` whose one broker `b1.NAME` is at `ip`.
    fn client_of(name: &str, ip: &str) -> NodeSpec {
        let spec = SPEC
            .replace("name = \"c\"", &format!("name = \"{name}\""))
            .replace("b1.c", &format!("b1.{name}"))
            .replace("198.18.0.11", ip);
        kreach_domain::desired::node_spec(
            &kreach_domain::spec::ClusterSpec::parse(&spec).unwrap(),
            "etl-1",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_client_of_two_clusters_holds_a_block_and_a_state_for_each() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let hosts = || std::fs::read_to_string(dir.path().join("hosts")).unwrap();
        let (handle, task) = start(dir.path());
        let (orders, payments) = (
            client_of("orders", "198.18.0.11"),
            client_of("payments", "198.18.0.21"),
        );

        let (_, result) = release_of(&handle, id(1), Ok(orders.clone()), &["orders"]).await;
        assert!(
            matches!(result, ReleaseResult::Converged { .. }),
            "{result:?}"
        );
        // payments now serves the node too: its block is added beside orders', whose release
        // (generation 3 too: generations are per cluster) is still held.
        let (_, result) = release_of(
            &handle,
            id(1),
            Ok(payments.clone()),
            &["orders", "payments"],
        )
        .await;
        assert!(
            matches!(result, ReleaseResult::Converged { .. }),
            "{result:?}"
        );
        let both = hosts();
        assert!(both.contains("# BEGIN kreach orders"), "{both}");
        assert!(both.contains("198.18.0.11\tb1.orders"), "{both}");
        assert!(both.contains("# BEGIN kreach payments"), "{both}");
        assert!(both.contains("198.18.0.21\tb1.payments"), "{both}");
        assert_eq!(
            handle.held().clusters,
            ["orders".to_string(), "payments".to_string()]
        );
        assert!(dir
            .path()
            .join("state/clusters/payments/applied.json")
            .is_file());
        // orders' release again (a reconnect): nothing to change, payments' block stays.
        let (applying, again) =
            release_of(&handle, id(1), Ok(orders.clone()), &["orders", "payments"]).await;
        assert_eq!((applying, again), (false, ReleaseResult::AlreadyApplied));
        assert_eq!(hosts(), both);

        // Drift in the second cluster's block is repaired too.
        std::fs::write(
            dir.path().join("hosts"),
            hosts().replace("198.18.0.21", "198.18.0.99"),
        )
        .unwrap();
        repaired(&hosts, || hosts() == both).await;
        assert!(handle.send(Command::Stop));
        task.await.unwrap().unwrap();

        // A restarted agent holds both again; a release that no longer names payments drops
        // its block and its state.
        let (handle, task) = start(dir.path());
        assert_eq!(handle.held().clusters.len(), 2);
        let (applying, result) = release_of(&handle, id(2), Ok(orders.clone()), &["orders"]).await;
        assert!(
            applying && matches!(result, ReleaseResult::Converged { .. }),
            "{result:?}"
        );
        let after = hosts();
        assert!(after.contains("198.18.0.11\tb1.orders"), "{after}");
        assert!(!after.contains("payments"), "{after}");
        assert!(!dir.path().join("state/clusters/payments").exists());
        assert_eq!(handle.held().clusters, ["orders".to_string()]);
        handle.send(Command::Stop);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_secondary_cluster_becomes_primary_when_the_primary_no_longer_serves_the_host() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let hosts = || std::fs::read_to_string(dir.path().join("hosts")).unwrap();
        let (handle, task) = start(dir.path());
        let (orders, payments) = (
            client_of("orders", "198.18.0.11"),
            client_of("payments", "198.18.0.21"),
        );
        release_of(&handle, id(1), Ok(orders), &["orders"]).await;
        release_of(
            &handle,
            id(1),
            Ok(payments.clone()),
            &["orders", "payments"],
        )
        .await;
        assert_eq!(handle.held().primary.as_deref(), Some("orders"));

        // orders drops the host: payments' release (sent again with the new list) takes the
        // primary's place, and orders' block goes in the same write.
        let (applying, result) = release_of(&handle, id(1), Ok(payments), &["payments"]).await;
        assert!(
            applying && matches!(result, ReleaseResult::Converged { .. }),
            "{result:?}"
        );
        let after = hosts();
        assert!(!after.contains("orders"), "{after}");
        assert!(after.contains("198.18.0.21\tb1.payments"), "{after}");
        assert_eq!(handle.held().primary.as_deref(), Some("payments"));
        assert_eq!(handle.held().clusters, ["payments".to_string()]);
        let primary = handle.applied().borrow().clone().unwrap();
        assert_eq!(primary.node_spec.cluster, "payments");
        assert!(handle.secondary().borrow().is_empty());
        assert!(!dir.path().join("state/clusters/payments").exists());
        handle.send(Command::Stop);
        task.await.unwrap().unwrap();

        // A restarted agent holds payments as its primary, from applied.json.
        let (handle, task) = start(dir.path());
        assert_eq!(handle.held().clusters, ["payments".to_string()]);
        handle.send(Command::Stop);
        task.await.unwrap().unwrap();
    }
}
