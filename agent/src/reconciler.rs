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

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use kreach_domain::desired::{NodeRole, NodeSpec};
use kreach_domain::gates::GateCheck;
use kreach_domain::report::Phase;
use tokio::sync::watch;

use crate::drift;
use crate::engine::{Engine, Outcome, RestartWindow};
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
    applied: watch::Sender<Option<AppliedState>>,
    failed: Option<FailedRelease>,
    health: std::sync::Arc<HealthBoard>,
    /// The release last logged as enforced, and who released it.
    enforcing: Option<(ReleaseId, String)>,
    waiting_logged: bool,
    /// The conflicts last logged: a new or a resolved one is said once, not at every check.
    reported_conflicts: Vec<String>,
}

/// The applied state as the reconciler holds it (None: nothing applied yet), for readers.
pub type AppliedWatch = watch::Receiver<Option<AppliedState>>;

/// How the rest of the agent talks to the actor.
#[derive(Clone)]
pub struct Handle {
    commands: Sender<Command>,
    applied: AppliedWatch,
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
}

impl Reconciler {
    /// Read the persisted applied state and failed release (the only reads of them in a running
    /// agent) and make the actor. Errors reading either are logged and the actor starts without
    /// them, as the agent always did: it waits for a release.
    pub fn new(engine: Engine, health: std::sync::Arc<HealthBoard>) -> (Reconciler, Handle) {
        let config = engine.config();
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
        let (commands_tx, commands) = std::sync::mpsc::channel();
        let (applied_tx, applied_rx) = watch::channel(applied);
        let handle = Handle {
            commands: commands_tx,
            applied: applied_rx,
        };
        let reconciler = Reconciler {
            engine,
            commands,
            applied: applied_tx,
            failed,
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

    /// Enforce the applied state once: write back drifted files, report conflicts.
    fn check(&mut self, watcher: &mut notify::RecommendedWatcher) {
        let Some(applied) = self.applied.borrow().clone() else {
            if !self.waiting_logged {
                tracing::info!(node = %self.node(), "no applied state yet; waiting for a spec (apply-local or a coordinator)");
                self.waiting_logged = true;
            }
            return;
        };
        self.keep_state_file(&applied);
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
        match drift::check_and_repair(&self.engine, &applied) {
            Ok(checked) => {
                crate::health::update(&self.health, |health| {
                    health.conflicts.clone_from(&checked.conflicts);
                    health.enforce_error.clear();
                    if !checked.repaired.is_empty() {
                        health.repairs += 1;
                        health.last_repair_ms = state::now_unix_ms();
                    }
                    // A filter error stays until the filter check itself clears it.
                    if !health.firewall.starts_with("error") {
                        health.firewall = firewall;
                    }
                });
                for path in &checked.repaired {
                    drift::rewatch_file(watcher, path);
                }
                if checked.conflicts != self.reported_conflicts {
                    for conflict in &checked.conflicts {
                        if !self.reported_conflicts.contains(conflict) {
                            tracing::warn!(node = %applied.node_spec.node, "conflict: {conflict}");
                        }
                    }
                    if checked.conflicts.is_empty() {
                        tracing::info!(node = %applied.node_spec.node, "no unmanaged hosts line shadows kreach's entries any more");
                    }
                    self.reported_conflicts = checked.conflicts;
                }
            }
            Err(error) => {
                tracing::error!(node = %applied.node_spec.node, "cannot enforce the applied state: {error}");
                crate::health::update(&self.health, |health| {
                    health.enforce_error = error.to_string();
                });
            }
        }
    }

    /// The applied state's file is for the next start: if it went (the state directory removed
    /// under us), write it back from memory.
    fn keep_state_file(&self, applied: &AppliedState) {
        let config = self.engine.config();
        let state_dir = &config.state_dir;
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
            events,
        } = request;
        let result = self.decide(id, spec, &released_by, &events);
        let _ = events.send(ReleaseEvent::Done(result));
    }

    fn decide(
        &mut self,
        id: ReleaseId,
        spec: Result<NodeSpec, String>,
        released_by: &str,
        events: &tokio::sync::mpsc::UnboundedSender<ReleaseEvent>,
    ) -> ReleaseResult {
        let node = self.node().to_string();
        if let Some(failed) = self.failed.as_ref().filter(|failed| failed.release() == id) {
            tracing::info!(node = %node, release = %id, "release already failed here; reporting that again instead of re-applying");
            return ReleaseResult::FailedBefore(failed.clone());
        }
        let spec = match spec {
            Ok(spec) => spec,
            Err(reason) => {
                let reason = format!("{reason}; nothing was applied");
                tracing::warn!(node = %node, release = %id, "refusing release: {reason}");
                return self.failed(id, Phase::Failed, reason);
            }
        };
        let applied = self.applied.borrow().clone();
        let plan = self.engine.plan(&spec);
        // Already applied and nothing drifted: say so without touching anything.
        let same = applied
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
                    return self.failed(id, Phase::Failed, reason);
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
                .apply(&plan, applied.as_ref(), id, released_by)
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
                self.applied.send_replace(Some(*applied));
                self.failed = None;
                if let Err(error) = state::clear_failed(&self.engine.config().state_dir) {
                    tracing::warn!(node = %node, "{error}");
                }
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
                self.failed(id, Phase::RolledBack, reason.clone());
                ReleaseResult::RolledBack {
                    reason,
                    restart_window,
                }
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(node = %node, cluster = %cluster, generation = id.generation, "release {id} failed: {reason}");
                crate::metrics::record_apply("failed", false, started.elapsed());
                self.failed(id, Phase::Failed, reason)
            }
        }
    }

    /// Remember a release that failed or rolled back here (`phase`), also across a restart of the
    /// agent, so the same release is answered the same way and not applied again.
    fn failed(&mut self, id: ReleaseId, phase: Phase, reason: String) -> ReleaseResult {
        let failed = FailedRelease {
            generation: id.generation,
            step: id.step,
            attempt: id.attempt,
            phase,
            reason: reason.clone(),
            at_unix_ms: state::now_unix_ms(),
        };
        if let Err(error) = state::save_failed(&self.engine.config().state_dir, &failed) {
            // Still kept in memory: only a restart of this agent would apply the release again.
            tracing::warn!(node = %self.node(), "cannot persist the failed release: {error}");
        }
        self.failed = Some(failed);
        ReleaseResult::Failed { reason }
    }
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

    /// Send a release and collect what the reconciler answers.
    async fn release(
        handle: &Handle,
        id: ReleaseId,
        spec: Result<NodeSpec, String>,
    ) -> (bool, ReleaseResult) {
        let (events, mut answers) = unbounded_channel();
        let request = ReleaseRequest {
            id,
            spec,
            released_by: "test".into(),
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !hosts().contains("198.18.0.11\tb1.c")
            || !crate::state::exists(&dir.path().join("state"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "not repaired:\n{}",
                hosts()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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
}
