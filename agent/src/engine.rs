//! The local engine: plan → backup → atomic write → restart if needed → verify → roll back on failure.
//!
//! Owns the order of side effects on one node. What to write comes from `kreach-domain`'s pure
//! editors; how bytes reach the disk is [`crate::fsio`]'s; how Kafka restarts is behind
//! [`ServiceManager`]; how health is checked is behind [`ListenerProbe`]: a pre-restart gate before
//! anything is written (a refusal changes nothing), a post-restart gate after the restart (a
//! failure restores the previous bytes). Everything is rendered before anything is written, so a
//! bad input changes nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kreach_domain::desired::{NodeRole, NodeSpec, ScramUser};
use kreach_domain::diff::{content_hash, unified_diff};
use kreach_domain::gates;
use kreach_domain::hosts::{self, HostsConflict};
use kreach_domain::properties::{self, ListenerSpec};

use crate::audit::{AuditAction, AuditEntry, AuditLog};
use crate::config::AgentConfig;
use crate::firewall::{Nft, PacketFilter};
use crate::fsio::{self, Files, WriteMethod};
use crate::service::ServiceManager;
use crate::state::{self, AppliedState, ReleaseId};
use crate::verify::{KeystoreReload, ListenerProbe};
use kreach_domain::clock::Clock;
use kreach_runtime::clock::SteadyWallClock;

/// How many previous versions of each managed file are kept under `state_dir/backups`.
pub const BACKUPS_KEPT: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedFile {
    Hosts,
    KafkaProperties,
    /// A TLS listener's PEM key store: the private key and the certificate chain (0600).
    KafkaKeyStore,
    /// The Kafka CA bundle a TLS listener trusts.
    KafkaCa,
}

impl ManagedFile {
    pub fn describe(self) -> &'static str {
        match self {
            ManagedFile::Hosts => "hosts block",
            ManagedFile::KafkaProperties => "listener settings",
            ManagedFile::KafkaKeyStore => "Kafka key store",
            ManagedFile::KafkaCa => "Kafka CA bundle",
        }
    }
}

/// The most a live key store reload may take until the listener serves the new certificate: Kafka
/// applies a dynamic config within seconds; a broker still serving the old one after this did not
/// reload it, and the gated restart takes over.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// The most the pre-restart gate may spend probing the running broker.
pub const PRE_RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// One file whose content will change.
#[derive(Debug, Clone)]
pub struct FileChange {
    pub file: ManagedFile,
    pub path: PathBuf,
    /// None when the file does not exist yet.
    pub old: Option<String>,
    pub new: String,
    /// For properties: the keys whose value changes.
    pub changed_keys: Vec<String>,
    /// PEM files (key stores with a private key in them, CA bundles): what the plan shows
    /// instead of a diff (never a key store's content).
    pub secret_summary: Option<String>,
}

/// Everything one apply would do, computed without side effects.
#[derive(Debug, Clone)]
pub struct Plan {
    pub node_spec: NodeSpec,
    pub changes: Vec<FileChange>,
    /// Unmanaged hosts lines that map our names elsewhere (the resolver takes the first match).
    pub conflicts: Vec<HostsConflict>,
    /// The unit to restart and why, when the listener settings change.
    pub restart: Option<(String, String)>,
    /// Without a restart: the TLS listeners whose key store is rewritten in place, which the
    /// running broker is asked to reload (a restart when it cannot).
    pub reload: Vec<KeystoreReload>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The plan as an operator reads it: a unified diff per file, then the restarts it implies.
    pub fn render(&self) -> String {
        let mut out = self.render_diff();
        match &self.restart {
            Some((unit, why)) => out.push_str(&format!("restart: {unit} ({why})\n")),
            None if !self.reload.is_empty() => out.push_str(&format!(
                "restart: none ({} reload{} the new certificate live; a restart only if the broker cannot)\n",
                self.reload
                    .iter()
                    .map(|reload| reload.listener.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if self.reload.len() == 1 { "s" } else { "" }
            )),
            None if !self.changes.is_empty() => {
                out.push_str("restart: none (no listener setting changes)\n")
            }
            None => {}
        }
        for conflict in &self.conflicts {
            out.push_str(&format!("conflict: {conflict}\n"));
        }
        out
    }

    /// Only the unified diff of every file that changes, under its path on this host.
    pub fn render_diff(&self) -> String {
        let mut out = String::new();
        for change in &self.changes {
            if let Some(summary) = &change.secret_summary {
                let verb = if change.old.is_some() {
                    "replaced"
                } else {
                    "created"
                };
                out.push_str(&format!("{} ({verb}): {summary}\n", change.path.display()));
                continue;
            }
            let old = change.old.as_deref().unwrap_or("");
            out.push_str(&unified_diff(
                &change.path.display().to_string(),
                old,
                &change.new,
            ));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// How an apply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node matches its desired state; `written` lists the files that changed.
    Converged {
        /// The state now applied (also persisted): its owner keeps it from here on.
        applied: Box<AppliedState>,
        written: Vec<(PathBuf, WriteMethod)>,
        restarted: Option<String>,
        checks: Vec<gates::GateCheck>,
        /// When the restart of the unit began and ended; None when nothing restarted.
        restart_window: Option<RestartWindow>,
    },
    /// A gate failed after the change; the previous bytes are back and Kafka was restarted on them.
    RolledBack {
        reason: String,
        restored: Vec<PathBuf>,
        /// From the start of the failed restart to the end of the recovery restart.
        restart_window: Option<RestartWindow>,
    },
}

/// The wall-clock span of a restart (Unix ms, from the engine's clock), for the coordinator's
/// availability accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartWindow {
    pub started_ms: u64,
    pub finished_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Desired(#[from] kreach_domain::desired::DesiredError),
    #[error("{path} is not valid UTF-8 (at byte {offset}); kreach edits text files only and changed nothing")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{path} changed while kreach was planning its edit; nothing was written (it is checked again)")]
    ChangedUnderneath { path: PathBuf },
    #[error("cannot plan {path}: {message}; nothing was changed")]
    Render { path: PathBuf, message: String },
    #[error("node {node:?} is a broker in the spec, but this agent's config has no manage.kafka_properties; add the path of server.properties to agent.toml")]
    NoPropertiesConfigured { node: String },
    #[error("{path} does not exist; kreach edits Kafka's config but never creates it")]
    PropertiesMissing { path: PathBuf },
    #[error("the spec is for node {spec_node:?} but this agent is {agent_node:?}")]
    WrongNode {
        spec_node: String,
        agent_node: String,
    },
    #[error(transparent)]
    Fs(#[from] fsio::FsError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(
        "writing {path} failed: {message}; the files already written were restored: {restored}"
    )]
    WriteFailedRestored {
        path: PathBuf,
        message: String,
        restored: String,
    },
    #[error("the pre-restart gate refused to restart {unit}, so nothing was written: {reason}")]
    PreRestartRefused { unit: String, reason: String },
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
    #[error("rollback failed: {message}; the node needs attention")]
    RollbackFailed { message: String },
    #[error("the cluster's SCRAM users could not be kept: {reason}; nothing was changed")]
    ScramUsers { reason: String },
    #[error("listener {listener} uses TLS but {missing} does not exist on this host, so Kafka could not start on it; nothing was changed (put the PEM key store — private key and certificate chain — and the CA bundle there)")]
    TlsFilesMissing { listener: String, missing: String },
}

pub struct Engine {
    config: AgentConfig,
    services: Box<dyn ServiceManager>,
    probe: Box<dyn ListenerProbe>,
    /// The managed files: the disk, or a fake in unit tests.
    files: Box<dyn Files>,
    /// The kernel's packet filter (`nft`), or a fake in unit tests.
    packet_filter: Box<dyn PacketFilter>,
    /// Restart windows and the applied state's time: the system's clock, or a test's.
    clock: Box<dyn Clock>,
    /// The clusters whose releases this host holds (a client of several clusters).
    held: Held,
}

/// The clusters whose releases a host holds, as its reconciler lays them out: their hosts blocks
/// stay when one of them is planned, and the primary's state is `state_dir/applied.json` while
/// each other's is `state_dir/clusters/NAME/`. The default (none) is a host of one cluster: a
/// plan keeps only its own cluster's block, and the state is the state directory's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// The cluster of the broker's release, else the first cluster whose release was applied.
    pub primary: Option<String>,
    /// Every cluster held, the primary included.
    pub clusters: Vec<String>,
}

impl Held {
    /// Where the applied state of `cluster`'s release is kept.
    pub fn state_dir(&self, root: &Path, cluster: &str) -> PathBuf {
        if self
            .primary
            .as_deref()
            .is_none_or(|primary| primary == cluster)
        {
            root.to_path_buf()
        } else {
            state::cluster_dir(root, cluster)
        }
    }

    /// The clusters `state_dir` holds besides `primary` (a client of several clusters), with
    /// `primary` as the primary one: what `apply-local` of `primary`'s spec keeps.
    pub fn with_primary_in(state_dir: &Path, primary: &str) -> Held {
        let mut clusters = vec![primary.to_string()];
        clusters.extend(
            state::cluster_dirs(state_dir)
                .into_iter()
                .filter(|cluster| cluster != primary),
        );
        Held {
            primary: Some(primary.to_string()),
            clusters,
        }
    }

    /// The clusters whose blocks a plan for `cluster` keeps: its own and every one held.
    pub fn keep<'a>(&'a self, cluster: &'a str) -> Vec<&'a str> {
        let mut keep: Vec<&str> = self.clusters.iter().map(String::as_str).collect();
        if !keep.contains(&cluster) {
            keep.push(cluster);
        }
        keep
    }
}

impl Engine {
    pub fn new(
        config: AgentConfig,
        services: Box<dyn ServiceManager>,
        probe: Box<dyn ListenerProbe>,
    ) -> Engine {
        Engine {
            config,
            services,
            probe,
            files: Box::new(fsio::Disk),
            packet_filter: Box::new(Nft::default()),
            clock: Box::new(SteadyWallClock::new()),
            held: Held::default(),
        }
    }

    /// The clusters this host holds from now on (the reconciler's layout): what a plan keeps and
    /// where an apply keeps its state.
    pub fn set_held(&mut self, held: Held) {
        self.held = held;
    }

    pub fn held(&self) -> &Held {
        &self.held
    }

    /// The same engine reading time from `clock` (the unit tests' own).
    pub fn with_clock(mut self, clock: Box<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// The same engine changing the packet filter through `packet_filter` (the unit tests' fake).
    pub fn with_packet_filter(mut self, packet_filter: Box<dyn PacketFilter>) -> Engine {
        self.packet_filter = packet_filter;
        self
    }

    /// Put `node`'s EXTERNAL filter in force (brokers with `manage.firewall`; else `None`).
    pub fn enforce_filter(&self, node: &NodeSpec) -> Result<Option<gates::GateCheck>, EngineError> {
        Ok(crate::firewall::enforce_for(
            &self.config,
            self.packet_filter.as_ref(),
            node,
        )?)
    }

    /// Put `node`'s EXTERNAL filter back if it went from the kernel (or remove a table that
    /// should not be there); `Some(what)` when something was repaired.
    pub fn repair_filter(
        &self,
        node: &NodeSpec,
    ) -> Result<Option<String>, crate::firewall::FirewallError> {
        crate::firewall::repair(&self.config, self.packet_filter.as_ref(), node)
    }

    fn restore_filter(&self, previous: Option<&NodeSpec>) {
        crate::firewall::restore_previous(&self.config, self.packet_filter.as_ref(), previous);
    }

    /// The same engine reaching its managed files through `files` (the unit tests' fake).
    pub fn with_files(mut self, files: Box<dyn Files>) -> Engine {
        self.files = files;
        self
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The paths this engine may write: the hosts file and, on brokers, server.properties.
    pub fn managed_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.config.manage.hosts_file.clone()];
        paths.extend(self.config.manage.kafka_properties.clone());
        paths
    }

    /// Render every managed file for `node_spec` and compare with what is on disk. No side effects.
    pub fn plan(&self, node_spec: &NodeSpec) -> Result<Plan, EngineError> {
        plan_files(self.files.as_ref(), &self.config, node_spec, &self.held)
    }

    /// Carry out `plan`: back up and write every changed file, restart Kafka when its listener
    /// settings changed (or have it reload rewritten key stores live, restarting only when it
    /// cannot), verify, and on a failed gate restore the previous bytes and restart again.
    /// `previous` is the state last applied (its SCRAM users are the ones to keep or delete, its
    /// filter is the one a rollback puts back); its owner passes it, the engine never reads it
    /// back from disk. On success the new state is persisted (for the agent's next start) and
    /// returned in the outcome for the owner to hold.
    pub fn apply(
        &self,
        plan: &Plan,
        previous: Option<&AppliedState>,
        release: ReleaseId,
        released_by: &str,
    ) -> Result<Outcome, EngineError> {
        let generation = release.generation;
        let state_dir = &self.config.state_dir;
        let _lock = state::lock_node(state_dir)?;
        let broker_id = match plan.node_spec.role {
            NodeRole::Broker { id } => id,
            NodeRole::Client { .. } => 0,
        };
        let mut checks = Vec::new();
        // The broker as it runs now: what the current server.properties configures. A rollback
        // writes exactly these bytes back, so they are also what the recovered broker must serve.
        let running = self.running_listeners(plan)?;
        if let Some((unit, _)) = &plan.restart {
            checks.extend(self.pre_restart_gate(plan, unit, broker_id, &running, generation)?);
        }
        checks.extend(self.keep_scram_users(plan, previous, &running)?);
        let previous_spec = previous.map(|applied| &applied.node_spec);
        // The EXTERNAL filter before any file (brokers with `manage.firewall`): if nft refuses, nothing changed.
        let firewall_check = self.enforce_filter(&plan.node_spec)?;
        let written = self
            .write_all(plan, generation, released_by, AuditAction::Apply)
            .inspect_err(|_| self.restore_filter(previous_spec))?;

        let mut restart = plan.restart.clone();
        if restart.is_none() && !plan.reload.is_empty() {
            match self.reload_live(plan, broker_id) {
                Ok(passed) => checks.extend(passed),
                Err(reason) => {
                    let unit = self.config.manage.kafka_unit.clone();
                    tracing::warn!(unit = %unit, node = %plan.node_spec.node, cluster = %plan.node_spec.cluster, generation, "no live reload, restarting instead: {reason}");
                    // The gate the restart would have had before the write: the broker still
                    // runs on the same listener settings, only its key store file is new.
                    match self.pre_restart_gate(plan, &unit, broker_id, &running, generation) {
                        Ok(passed) => checks.extend(passed),
                        Err(refused) => {
                            let reason = format!("{reason}; and {refused}");
                            let restored = self.restore(
                                &written,
                                generation,
                                released_by,
                                AuditAction::Rollback,
                                &reason,
                            )?;
                            self.restore_filter(previous_spec);
                            return Ok(Outcome::RolledBack {
                                reason,
                                restored,
                                restart_window: None,
                            });
                        }
                    }
                    restart = Some((unit, format!("the live reload failed: {reason}")));
                }
            }
        }

        let mut restart_window = None;
        if let Some((unit, why)) = &restart {
            match self.restart_and_verify(
                plan,
                (unit, why),
                broker_id,
                &running,
                &written,
                previous_spec,
                release,
                released_by,
            )? {
                Ok((passed, window)) => {
                    checks.extend(passed);
                    restart_window = Some(window);
                }
                Err(rolled_back) => return Ok(rolled_back),
            }
        }
        checks.extend(firewall_check);
        let applied = AppliedState {
            generation,
            step: release.step,
            attempt: release.attempt,
            released_by: released_by.to_string(),
            applied_at_unix_ms: self.clock.now_ms(),
            node_spec: plan.node_spec.clone(),
        };
        state::save(
            &self.held.state_dir(state_dir, &plan.node_spec.cluster),
            &applied,
        )?;
        Ok(Outcome::Converged {
            applied: Box::new(applied),
            written: written.into_iter().map(|w| (w.path, w.method)).collect(),
            restarted: restart.map(|(unit, _)| unit),
            checks,
            restart_window,
        })
    }

    /// What the current server.properties configures: from the plan's properties change, or read
    /// when the plan leaves the file alone (a key store reload may still fall back to a restart).
    fn running_listeners(&self, plan: &Plan) -> Result<Vec<gates::RunningListener>, EngineError> {
        if let Some(change) = plan
            .changes
            .iter()
            .find(|change| change.file == ManagedFile::KafkaProperties)
        {
            return Ok(change
                .old
                .as_deref()
                .map(gates::running_listeners)
                .unwrap_or_default());
        }
        if plan.reload.is_empty() {
            return Ok(Vec::new());
        }
        let Some(path) = &self.config.manage.kafka_properties else {
            return Ok(Vec::new());
        };
        Ok(read_text(self.files.as_ref(), path)?
            .as_deref()
            .map(gates::running_listeners)
            .unwrap_or_default())
    }

    /// A broker's SCRAM users, before anything is written: what the last applied release kept
    /// against this one's, created, changed or deleted over the broker as it runs now. A refusal
    /// fails the release with nothing changed.
    fn keep_scram_users(
        &self,
        plan: &Plan,
        previous: Option<&AppliedState>,
        running: &[gates::RunningListener],
    ) -> Result<Vec<gates::GateCheck>, EngineError> {
        if !matches!(plan.node_spec.role, NodeRole::Broker { .. }) {
            return Ok(Vec::new());
        }
        let held: &[ScramUser] = previous
            .map(|applied| applied.node_spec.scram_users.as_slice())
            .unwrap_or_default();
        let wanted = &plan.node_spec.scram_users;
        let upsert: Vec<ScramUser> = wanted
            .iter()
            .filter(|user| !held.contains(user))
            .cloned()
            .collect();
        let delete: Vec<(String, String)> = held
            .iter()
            .filter(|old| {
                !wanted
                    .iter()
                    .any(|new| new.name == old.name && new.mechanism == old.mechanism)
            })
            .map(|old| (old.name.clone(), old.mechanism.clone()))
            .collect();
        if upsert.is_empty() && delete.is_empty() {
            return Ok(Vec::new());
        }
        let mut listeners: Vec<ListenerSpec> = running
            .iter()
            .filter(|listener| !listener.controller)
            .map(gates::RunningListener::as_listener_spec)
            .collect();
        if listeners.is_empty() {
            if let Some(path) = &self.config.manage.kafka_properties {
                listeners = read_text(self.files.as_ref(), path)?
                    .as_deref()
                    .map(gates::running_listeners)
                    .unwrap_or_default()
                    .iter()
                    .filter(|listener| !listener.controller)
                    .map(gates::RunningListener::as_listener_spec)
                    .collect();
            }
        }
        let timeout =
            Duration::from_millis(plan.node_spec.health_timeout_ms).min(PRE_RESTART_TIMEOUT);
        self.probe
            .apply_scram_users(&listeners, &upsert, &delete, timeout)
            .map_err(|reason| EngineError::ScramUsers { reason })
    }

    /// May the broker go down now? The checks that passed, or the refusal (nothing written yet).
    fn pre_restart_gate(
        &self,
        plan: &Plan,
        unit: &str,
        broker_id: i32,
        running: &[gates::RunningListener],
        generation: u64,
    ) -> Result<Vec<gates::GateCheck>, EngineError> {
        let timeout =
            Duration::from_millis(plan.node_spec.health_timeout_ms).min(PRE_RESTART_TIMEOUT);
        match self.probe.before_restart(broker_id, running, timeout) {
            Ok(passed) => {
                tracing::info!(unit = %unit, node = %plan.node_spec.node, cluster = %plan.node_spec.cluster, generation, "pre-restart gate passed");
                Ok(passed)
            }
            Err(reason) => {
                tracing::warn!(unit = %unit, node = %plan.node_spec.node, cluster = %plan.node_spec.cluster, generation, "not restarting {unit}, nothing written: {reason}");
                Err(EngineError::PreRestartRefused {
                    unit: unit.to_string(),
                    reason,
                })
            }
        }
    }

    /// Have the running broker load its rewritten key stores and check it serves them.
    fn reload_live(&self, plan: &Plan, broker_id: i32) -> Result<Vec<gates::GateCheck>, String> {
        let listeners = plan
            .node_spec
            .listeners
            .as_ref()
            .map(|settings| crate::kafka_tls::localize(settings, &self.config).listeners)
            .unwrap_or_default();
        tracing::info!(node = %plan.node_spec.node, listeners = ?plan.reload.iter().map(|r| &r.listener).collect::<Vec<_>>(), "reloading key stores without a restart");
        self.probe.reload_certificates(
            broker_id,
            &listeners,
            &plan.reload,
            &plan.node_spec.kafka_ca_pem,
            Duration::from_millis(plan.node_spec.health_timeout_ms).min(RELOAD_TIMEOUT),
        )
    }

    /// Restart `unit` and run the post-restart gate. `Ok(Ok(..))` with the checks and the restart
    /// window when the broker is healthy; `Ok(Err(outcome))` when it was not and the previous
    /// files are back and serving (rolled back); `Err` when even that failed.
    #[allow(clippy::too_many_arguments)]
    fn restart_and_verify(
        &self,
        plan: &Plan,
        (unit, why): (&str, &str),
        broker_id: i32,
        running: &[gates::RunningListener],
        written: &[Written],
        previous: Option<&NodeSpec>,
        release: ReleaseId,
        released_by: &str,
    ) -> Result<Result<(Vec<gates::GateCheck>, RestartWindow), Outcome>, EngineError> {
        let generation = release.generation;
        let listeners = plan
            .node_spec
            .listeners
            .as_ref()
            .map(|l| l.listeners.as_slice())
            .unwrap_or(&[]);
        let timeout = Duration::from_millis(plan.node_spec.health_timeout_ms);
        tracing::info!(unit = %unit, node = %plan.node_spec.node, cluster = %plan.node_spec.cluster, generation, "restarting {unit}: {why}");
        let started = Instant::now();
        let restart_started = self.clock.now_ms();
        let restarted = self.services.restart(unit, timeout);
        let mut window = RestartWindow {
            started_ms: restart_started,
            finished_ms: self.clock.now_ms(),
        };
        let gate = restarted
            .map_err(|error| format!("restart of {unit} failed: {error}"))
            .and_then(|()| {
                let remaining = timeout
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_secs(1));
                self.probe
                    .verify(broker_id, listeners, remaining)
                    .map_err(|error| format!("health check failed: {error}"))
            });
        let reason = match gate {
            Ok(passed) => {
                tracing::info!(unit = %unit, elapsed_ms = started.elapsed().as_millis() as u64, "{unit} is healthy");
                return Ok(Ok((passed, window)));
            }
            Err(reason) => reason,
        };
        tracing::warn!(unit = %unit, node = %plan.node_spec.node, cluster = %plan.node_spec.cluster, generation, "rolling back: {reason}");
        let restored = self.restore(
            written,
            generation,
            released_by,
            AuditAction::Rollback,
            &reason,
        )?;
        self.restore_filter(previous);
        // Checked against the restored bytes, not the last applied state: on a
        // node's first apply there is none, and the old broker must still serve.
        let previous: Vec<ListenerSpec> = running
            .iter()
            .filter(|listener| !listener.controller)
            .map(gates::RunningListener::as_listener_spec)
            .collect();
        let recovery = self.services.restart(unit, timeout);
        window.finished_ms = self.clock.now_ms();
        let recovery = recovery
            .map_err(|error| format!("restarting it on them failed: {error}"))
            .and_then(|()| {
                self.probe
                    .verify(broker_id, &previous, timeout)
                    .map_err(|error| format!("it is not serving on them either: {error}"))
            });
        if let Err(error) = recovery {
            tracing::error!(unit = %unit, node = %plan.node_spec.node, cluster = %plan.node_spec.cluster, generation, "{unit} is down after the rollback: {error}");
            return Err(EngineError::RollbackFailed {
                message: format!(
                    "{reason}; the previous files of {unit} were restored, but {error}"
                ),
            });
        }
        Ok(Err(Outcome::RolledBack {
            reason,
            restored,
            restart_window: Some(window),
        }))
    }

    /// Write the plan's files without restarting anything: drift repair puts back bytes that the
    /// running Kafka already runs with, so a restart would only cost availability.
    pub fn repair(
        &self,
        plan: &Plan,
        generation: u64,
        released_by: &str,
    ) -> Result<Vec<PathBuf>, EngineError> {
        let _lock = state::lock_node(&self.config.state_dir)?;
        let written = self.write_all(plan, generation, released_by, AuditAction::Repair)?;
        Ok(written.into_iter().map(|w| w.path).collect())
    }

    fn write_all(
        &self,
        plan: &Plan,
        generation: u64,
        released_by: &str,
        action: AuditAction,
    ) -> Result<Vec<Written>, EngineError> {
        let mut written: Vec<Written> = Vec::new();
        for change in &plan.changes {
            match self.write_one(change, generation, released_by, action) {
                Ok(method) => written.push(Written {
                    path: change.path.clone(),
                    file: change.file,
                    old: change.old.clone(),
                    new_hash: content_hash(change.new.as_bytes()),
                    method,
                }),
                Err(error) => {
                    // Nothing half-done: put back what this apply already wrote.
                    let why = format!("writing {} failed: {error}", change.path.display());
                    let restored =
                        self.restore(&written, generation, released_by, AuditAction::Undo, &why)?;
                    if restored.is_empty() {
                        return Err(error);
                    }
                    return Err(EngineError::WriteFailedRestored {
                        path: change.path.clone(),
                        message: error.to_string(),
                        restored: restored
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
        Ok(written)
    }

    fn write_one(
        &self,
        change: &FileChange,
        generation: u64,
        released_by: &str,
        action: AuditAction,
    ) -> Result<WriteMethod, EngineError> {
        // Compare-and-swap: the plan was rendered from `change.old`; if another writer touched the
        // file since, writing our render would drop their edit.
        let current = self.files.read(&change.path)?;
        if current.as_deref() != change.old.as_deref().map(str::as_bytes) {
            return Err(EngineError::ChangedUnderneath {
                path: change.path.clone(),
            });
        }
        if let Some(old) = &change.old {
            self.files.backup(
                &self.config.state_dir,
                &change.path,
                old.as_bytes(),
                BACKUPS_KEPT,
            )?;
        }
        let method = match change.file {
            ManagedFile::KafkaKeyStore | ManagedFile::KafkaCa => {
                // A broker's TLS directory is Kafka's (0750); a client's CA directory is for
                // every Kafka client on the host (0755).
                let broker = self.config.manage.kafka_properties.is_some();
                let owner = broker
                    .then(|| crate::kafka_tls::kafka_owner(&self.config))
                    .flatten();
                let mode = if broker { 0o750 } else { 0o755 };
                if let Some(dir) = change.path.parent() {
                    self.files.create_dir(dir, mode, owner).map_err(|message| {
                        EngineError::Render {
                            path: dir.to_path_buf(),
                            message,
                        }
                    })?;
                }
                let private =
                    (change.file == ManagedFile::KafkaKeyStore).then_some(fsio::Private { owner });
                self.files
                    .replace(&change.path, change.new.as_bytes(), private)?
            }
            ManagedFile::Hosts | ManagedFile::KafkaProperties => {
                self.files
                    .replace(&change.path, change.new.as_bytes(), None)?
            }
        };
        tracing::info!(
            file = %change.path.display(),
            node = %self.config.node,
            generation,
            released_by,
            old_hash = %change.old.as_deref().map(|old| content_hash(old.as_bytes())).unwrap_or_default(),
            new_hash = %content_hash(change.new.as_bytes()),
            method = ?method,
            "wrote {} ({})",
            change.path.display(),
            change.file.describe()
        );
        let reason = match action {
            AuditAction::Repair => format!(
                "drift: the {} no longer matched the last applied state",
                change.file.describe()
            ),
            _ if change.changed_keys.is_empty() => {
                format!("desired {} changed", change.file.describe())
            }
            _ => format!("changed {}", change.changed_keys.join(", ")),
        };
        self.audit(AuditEntry {
            seq: 0,
            at_ms: 0,
            node: self.config.node.clone(),
            file: change.file.describe().to_string(),
            path: change.path.display().to_string(),
            action,
            old_hash: change
                .old
                .as_deref()
                .map(|old| content_hash(old.as_bytes())),
            new_hash: Some(content_hash(change.new.as_bytes())),
            reason,
            generation,
            released_by: released_by.to_string(),
        });
        Ok(method)
    }

    /// Keep `entry` in the audit trail. A trail that cannot be written (a full disk) must not
    /// stop a rollback or leave the node half-changed: the change is in the journal either way.
    fn audit(&self, entry: AuditEntry) {
        if let Err(error) = AuditLog::new(&self.config.state_dir).append(entry) {
            tracing::error!(%error, "the audit trail misses a change");
        }
    }

    fn restore(
        &self,
        written: &[Written],
        generation: u64,
        released_by: &str,
        action: AuditAction,
        why: &str,
    ) -> Result<Vec<PathBuf>, EngineError> {
        let mut restored = Vec::new();
        for item in written.iter().rev() {
            let result = match &item.old {
                Some(old) => self
                    .files
                    .replace(&item.path, old.as_bytes(), None)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                // The file did not exist before this apply: restoring means removing it.
                None => self.files.remove(&item.path).map_err(|e| e.to_string()),
            };
            result.map_err(|error| EngineError::RollbackFailed {
                message: format!("could not restore {}: {error}", item.path.display()),
            })?;
            tracing::warn!(file = %item.path.display(), generation, "restored previous {} ({why})", item.path.display());
            self.audit(AuditEntry {
                seq: 0,
                at_ms: 0,
                node: self.config.node.clone(),
                file: item.file.describe().to_string(),
                path: item.path.display().to_string(),
                action,
                old_hash: Some(item.new_hash.clone()),
                new_hash: item.old.as_deref().map(|old| content_hash(old.as_bytes())),
                reason: why.to_string(),
                generation,
                released_by: released_by.to_string(),
            });
            restored.push(item.path.clone());
        }
        Ok(restored)
    }
}

/// [`Engine::plan`] without an engine: render every managed file of `config` for `node_spec` and
/// compare with what is on disk. It only reads: no lock, no backup, no write, no audit entry, no
/// state change, so a dry run may call it at any time (even while an apply holds the engine).
pub fn plan_files(
    files: &dyn Files,
    config: &AgentConfig,
    node_spec: &NodeSpec,
    held: &Held,
) -> Result<Plan, EngineError> {
    if node_spec.node != config.node {
        return Err(EngineError::WrongNode {
            spec_node: node_spec.node.clone(),
            agent_node: config.node.clone(),
        });
    }
    let mut changes = Vec::new();

    let hosts_path = &config.manage.hosts_file;
    let hosts_old = read_text(files, hosts_path)?;
    // The blocks of the clusters this host holds stay; that of any other cluster (one the node
    // left, or the cluster's old name) goes in the same write.
    let edit = hosts::retain_blocks(
        hosts_old.as_deref().unwrap_or(""),
        &held.keep(&node_spec.cluster),
    )
    .and_then(|kept| hosts::apply_block(&kept, &node_spec.cluster, &node_spec.hosts_entries))
    .map_err(|error| EngineError::Render {
        path: hosts_path.clone(),
        message: error.to_string(),
    })?;
    let conflicts = edit.conflicts;
    if hosts_old.as_deref() != Some(edit.content.as_str())
        && !(hosts_old.is_none() && edit.content.is_empty())
    {
        changes.push(FileChange {
            file: ManagedFile::Hosts,
            path: hosts_path.clone(),
            old: hosts_old,
            new: edit.content,
            changed_keys: Vec::new(),
            secret_summary: None,
        });
    }

    // The PEM files of TLS listeners first: server.properties may name them only once they exist.
    for file in
        crate::kafka_tls::desired_files(node_spec, config).map_err(|error| EngineError::Render {
            path: config.manage.kafka_tls_dir.clone(),
            message: error.to_string(),
        })?
    {
        let old = read_text(files, &file.path)?;
        if old.as_deref() != Some(file.content.as_str()) {
            changes.push(FileChange {
                file: if file.private {
                    ManagedFile::KafkaKeyStore
                } else {
                    ManagedFile::KafkaCa
                },
                path: file.path,
                old,
                new: file.content,
                changed_keys: Vec::new(),
                secret_summary: Some(file.summary),
            });
        }
    }

    let mut restart = None;
    let mut reload = Vec::new();
    if let (NodeRole::Broker { .. }, Some(listeners)) = (&node_spec.role, &node_spec.listeners) {
        let path = config.manage.kafka_properties.clone().ok_or_else(|| {
            EngineError::NoPropertiesConfigured {
                node: node_spec.node.clone(),
            }
        })?;
        let old = read_text(files, &path)?
            .ok_or_else(|| EngineError::PropertiesMissing { path: path.clone() })?;
        let listeners = &crate::kafka_tls::localize(listeners, config);
        check_tls_files(listeners, &changes)?;
        let edit =
            properties::apply_listeners(&old, listeners).map_err(|error| EngineError::Render {
                path: path.clone(),
                message: error.to_string(),
            })?;
        if edit.content != old {
            restart = Some((
                config.manage.kafka_unit.clone(),
                format!("{} changed", edit.changed_keys.join(", ")),
            ));
            changes.push(FileChange {
                file: ManagedFile::KafkaProperties,
                path,
                old: Some(old),
                new: edit.content,
                changed_keys: edit.changed_keys,
                secret_summary: None,
            });
        } else {
            // Same listener settings, new key stores: reloaded live, unless Kafka would refuse it.
            match keystore_reloads(listeners, node_spec, &changes, &old) {
                Ok(found) => reload = found,
                Err(why) => restart = Some((config.manage.kafka_unit.clone(), why)),
            }
        }
    }
    Ok(Plan {
        node_spec: node_spec.clone(),
        changes,
        conflicts,
        restart,
        reload,
    })
}

/// The key stores `changes` rewrites for listeners whose settings stay the same, as reloads; or
/// why Kafka would not take them live: since 3.7 (KIP-978) a reloaded certificate must keep every
/// SAN of the one it replaces unless `ssl.allow.san.changes=true` (before, SAN changes were
/// refused outright), so a certificate that drops a name is loaded by a restart.
fn keystore_reloads(
    settings: &properties::ListenerSettings,
    node_spec: &NodeSpec,
    changes: &[FileChange],
    properties_text: &str,
) -> Result<Vec<KeystoreReload>, String> {
    let mut reloads = Vec::new();
    for change in changes
        .iter()
        .filter(|change| change.file == ManagedFile::KafkaKeyStore)
    {
        let Some(listener) = settings.listeners.iter().find(|listener| {
            listener
                .tls
                .as_ref()
                .is_some_and(|tls| Path::new(&tls.keystore) == change.path)
        }) else {
            continue;
        };
        let Some(certificate) = node_spec
            .certificates
            .iter()
            .find(|c| c.listener.eq_ignore_ascii_case(&listener.name))
        else {
            continue;
        };
        let Some(old) = change.old.as_deref() else {
            return Err(format!(
                "the key store of {} is new while Kafka runs with that listener",
                listener.name
            ));
        };
        if let Ok(held) = kreach_runtime::kafka_tls::inspect(old) {
            let dropped: Vec<&String> = held
                .sans
                .iter()
                .filter(|san| !certificate.sans.contains(san))
                .collect();
            if !dropped.is_empty() && !allows_san_changes(properties_text, &listener.name) {
                return Err(format!(
                    "the new certificate of {} no longer covers {}, which Kafka refuses to reload live (ssl.allow.san.changes is not true)",
                    listener.name,
                    dropped
                        .iter()
                        .map(|san| san.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        reloads.push(KeystoreReload {
            listener: listener.name.clone(),
            keystore: change.path.display().to_string(),
            serial: certificate.serial.clone(),
        });
    }
    Ok(reloads)
}

/// Whether server.properties sets `ssl.allow.san.changes=true` for `listener` (or for all).
fn allows_san_changes(properties_text: &str, listener: &str) -> bool {
    let scoped = format!(
        "listener.name.{}.ssl.allow.san.changes",
        listener.to_ascii_lowercase()
    );
    [scoped.as_str(), "ssl.allow.san.changes"]
        .iter()
        .any(|key| {
            properties::get_property(properties_text, key)
                .ok()
                .flatten()
                .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
        })
}

/// A TLS listener whose PEM files are missing (and not written by this plan) would stop Kafka at
/// its restart: refuse before anything is written, naming the files.
fn check_tls_files(
    settings: &properties::ListenerSettings,
    planned: &[FileChange],
) -> Result<(), EngineError> {
    for listener in &settings.listeners {
        let Some(tls) = &listener.tls else { continue };
        let missing: Vec<&str> = [tls.keystore.as_str(), tls.truststore.as_str()]
            .into_iter()
            .filter(|path| {
                !Path::new(path).is_file() && !planned.iter().any(|c| c.path == Path::new(path))
            })
            .collect();
        if !missing.is_empty() {
            return Err(EngineError::TlsFilesMissing {
                listener: listener.name.clone(),
                missing: missing.join(", "),
            });
        }
    }
    Ok(())
}

struct Written {
    path: PathBuf,
    file: ManagedFile,
    old: Option<String>,
    new_hash: String,
    method: WriteMethod,
}

fn read_text(files: &dyn Files, path: &Path) -> Result<Option<String>, EngineError> {
    let Some(bytes) = files.read(path)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|error| EngineError::NotUtf8 {
            path: path.to_path_buf(),
            offset: error.utf8_error().valid_up_to(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::service::ServiceError;

    #[test]
    fn a_plan_keeps_the_blocks_of_the_clusters_held_and_drops_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display();
        let config = AgentConfig::parse(&format!(
            "node = \"etl-1\"\nstate_dir = \"{root}/state\"\n[manage]\nhosts_file = \"{root}/hosts\"\n"
        ))
        .unwrap();
        let block = |cluster: &str, ip: &str| {
            format!(
                "# BEGIN kreach {cluster} (managed by kreach-agent; manual edits inside are reverted)\n{ip}\tb1.{cluster}\n# END kreach {cluster}\n"
            )
        };
        std::fs::write(
            dir.path().join("hosts"),
            format!(
                "127.0.0.1 localhost\n{}{}",
                block("payments", "198.18.0.21"),
                block("old-name", "198.18.0.31")
            ),
        )
        .unwrap();
        // payments' state is held here (a client of two clusters); old-name's is not.
        std::fs::create_dir_all(dir.path().join("state/clusters/payments")).unwrap();
        let spec = kreach_domain::spec::ClusterSpec::parse(
            "[cluster]\nname = \"orders\"\n[listeners.internal]\nadvertise = \"hostname\"\n\
             [[broker]]\nid = 1\nnode = \"b1\"\nhostname = \"b1.orders\"\nprivate_ip = \"198.18.0.11\"\n\
             [[client]]\nnode = \"etl-1\"\n",
        )
        .unwrap();
        let node_spec = kreach_domain::desired::node_spec(&spec, "etl-1").unwrap();
        let held = Held::with_primary_in(&config.state_dir, "orders");
        assert_eq!(held.clusters, ["orders", "payments"]);
        let plan = plan_files(&fsio::Disk, &config, &node_spec, &held).unwrap();
        let hosts = &plan.changes[0].new;
        assert!(hosts.contains(&block("payments", "198.18.0.21")), "{hosts}");
        assert!(hosts.contains("198.18.0.11\tb1.orders"), "{hosts}");
        assert!(!hosts.contains("old-name"), "{hosts}");
        // A host of one cluster (nothing held) keeps its own block only.
        let plan = plan_files(&fsio::Disk, &config, &node_spec, &Held::default()).unwrap();
        assert!(!plan.changes[0].new.contains("payments"));
    }
    use crate::verify::{KeystoreReload, ListenerProbe};
    use kreach_domain::gates::{GateCheck, RunningListener};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    /// What the pre-restart gate was asked: the broker id and the running listeners.
    type Asked = Arc<Mutex<Vec<(i32, Vec<RunningListener>)>>>;
    /// The listeners each post-restart check was asked to verify, in order.
    type Verified = Arc<Mutex<Vec<Vec<ListenerSpec>>>>;

    /// Records restarts; never fails.
    struct CountingServices(Arc<Mutex<u32>>);

    impl ServiceManager for CountingServices {
        fn restart(&self, _unit: &str, _timeout: Duration) -> Result<(), ServiceError> {
            *self.0.lock().unwrap() += 1;
            Ok(())
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    /// Answers the gates as told, and records what each gate was asked about.
    struct ScriptedProbe {
        refuse: Option<String>,
        /// The post-restart answers in turn; the last one repeats.
        post: Vec<Result<Vec<GateCheck>, String>>,
        asked: Asked,
        verified: Verified,
        /// What a live key store reload answers.
        reload: Result<Vec<GateCheck>, String>,
        reloads: Reloads,
    }

    /// The key store reloads the probe was asked for, in order.
    type Reloads = Arc<Mutex<Vec<Vec<KeystoreReload>>>>;

    impl ListenerProbe for ScriptedProbe {
        fn before_restart(
            &self,
            broker_id: i32,
            running: &[RunningListener],
            _timeout: Duration,
        ) -> Result<Vec<GateCheck>, String> {
            self.asked
                .lock()
                .unwrap()
                .push((broker_id, running.to_vec()));
            match &self.refuse {
                Some(reason) => Err(reason.clone()),
                None => Ok(vec![GateCheck::pass("min.insync.replicas", "fine")]),
            }
        }
        fn verify(
            &self,
            _broker_id: i32,
            listeners: &[ListenerSpec],
            _timeout: Duration,
        ) -> Result<Vec<GateCheck>, String> {
            let mut verified = self.verified.lock().unwrap();
            verified.push(listeners.to_vec());
            self.post[(verified.len() - 1).min(self.post.len() - 1)].clone()
        }
        fn reload_certificates(
            &self,
            _broker_id: i32,
            _listeners: &[ListenerSpec],
            reloads: &[KeystoreReload],
            _ca_pem: &str,
            _timeout: Duration,
        ) -> Result<Vec<GateCheck>, String> {
            self.reloads.lock().unwrap().push(reloads.to_vec());
            self.reload.clone()
        }
        fn apply_scram_users(
            &self,
            _listeners: &[ListenerSpec],
            _upsert: &[ScramUser],
            _delete: &[(String, String)],
            _timeout: Duration,
        ) -> Result<Vec<GateCheck>, String> {
            Ok(Vec::new())
        }
    }

    /// A broker host in a temporary directory whose Kafka restarts are counted (the reconciler's
    /// tests use it too).
    pub(crate) struct Fixture {
        pub(crate) dir: tempfile::TempDir,
        pub(crate) restarts: Arc<Mutex<u32>>,
        asked: Asked,
        verified: Verified,
        reloads: Reloads,
    }

    const INITIAL: &str = "listeners=INTERNAL://127.0.0.1:9092\nadvertised.listeners=INTERNAL://old-name:9092\nlistener.security.protocol.map=INTERNAL:PLAINTEXT\n";

    impl Fixture {
        pub(crate) fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
            std::fs::write(dir.path().join("server.properties"), INITIAL).unwrap();
            Fixture {
                dir,
                restarts: Arc::new(Mutex::new(0)),
                asked: Arc::new(Mutex::new(Vec::new())),
                verified: Arc::new(Mutex::new(Vec::new())),
                reloads: Arc::new(Mutex::new(Vec::new())),
            }
        }

        pub(crate) fn engine(
            &self,
            refuse: Option<&str>,
            post: Result<Vec<GateCheck>, String>,
        ) -> Engine {
            self.engine_answering(refuse, vec![post])
        }

        /// An engine whose post-restart checks answer `post` in turn (the last one repeats).
        fn engine_answering(
            &self,
            refuse: Option<&str>,
            post: Vec<Result<Vec<GateCheck>, String>>,
        ) -> Engine {
            self.engine_reloading(refuse, post, Err("not asked to".into()))
        }

        /// An engine whose live key store reload answers `reload`.
        fn engine_reloading(
            &self,
            refuse: Option<&str>,
            post: Vec<Result<Vec<GateCheck>, String>>,
            reload: Result<Vec<GateCheck>, String>,
        ) -> Engine {
            let root = self.dir.path().display().to_string();
            let config = AgentConfig::parse(&format!(
                "node = \"emr-worker-2\"\nstate_dir = \"{root}/state\"\n[manage]\nhosts_file = \"{root}/hosts\"\nkafka_properties = \"{root}/server.properties\"\nkafka_tls_dir = \"{root}/kafka-tls\"\n"
            ))
            .unwrap();
            Engine::new(
                config,
                Box::new(CountingServices(Arc::clone(&self.restarts))),
                Box::new(ScriptedProbe {
                    refuse: refuse.map(str::to_string),
                    post,
                    asked: Arc::clone(&self.asked),
                    verified: Arc::clone(&self.verified),
                    reload,
                    reloads: Arc::clone(&self.reloads),
                }),
            )
        }

        pub(crate) fn node_spec(&self) -> NodeSpec {
            let spec = kreach_domain::spec::ClusterSpec::parse(
                "[cluster]\nname = \"c\"\n[listeners.internal]\nport = 9092\nbind = \"127.0.0.1\"\nadvertise = \"hostname\"\n\
                 [[broker]]\nid = 2\nnode = \"emr-worker-2\"\nhostname = \"emr-worker-2.c\"\nprivate_ip = \"198.18.0.12\"\n",
            )
            .unwrap();
            kreach_domain::desired::node_spec(&spec, "emr-worker-2").unwrap()
        }

        pub(crate) fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.dir.path().join(name)).unwrap()
        }
    }

    #[test]
    fn a_tls_listener_whose_pem_files_are_missing_is_refused_before_anything_is_written() {
        let fixture = Fixture::new();
        let engine = fixture.engine(None, Ok(vec![]));
        let mut spec = fixture.node_spec();
        let dir = fixture.dir.path().join("kafka-tls");
        let tls = kreach_domain::properties::ListenerTls {
            keystore: dir.join("internal.keystore.pem").display().to_string(),
            truststore: dir.join("ca.pem").display().to_string(),
        };
        let settings = spec.listeners.as_mut().unwrap();
        settings.listeners[0].security_protocol = "SSL".into();
        settings.listeners[0].tls = Some(tls.clone());
        let error = engine.plan(&spec).unwrap_err();
        assert!(
            matches!(error, EngineError::TlsFilesMissing { .. })
                && error.to_string().contains("internal.keystore.pem")
                && error.to_string().contains("nothing was changed"),
            "{error}"
        );
        assert_eq!(fixture.read("server.properties"), INITIAL);
        // With the files in place the listener's settings point at them.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&tls.keystore, "key and chain").unwrap();
        std::fs::write(&tls.truststore, "ca").unwrap();
        let plan = engine.plan(&spec).unwrap();
        let new = &plan
            .changes
            .iter()
            .find(|c| c.file == ManagedFile::KafkaProperties)
            .unwrap()
            .new;
        assert!(
            new.contains(&format!(
                "listener.name.internal.ssl.keystore.location={}",
                tls.keystore
            )) && new.contains("listener.name.internal.ssl.keystore.type=PEM")
                && new.contains("INTERNAL:SSL"),
            "{new}"
        );
    }

    #[test]
    fn issued_certificates_become_a_private_key_store_before_the_listener_points_at_it() {
        let fixture = Fixture::new();
        let engine = fixture.engine(None, Ok(vec![]));
        let public = crate::kafka_tls::ensure_key(engine.config()).unwrap();
        let key = std::fs::read_to_string(crate::kafka_tls::key_path(engine.config())).unwrap();
        let ca = kreach_runtime::kafka_tls::KafkaCa::create("c", SystemTime::now()).unwrap();
        let issued = ca
            .issue(
                "broker 2",
                &public,
                &["emr-worker-2.c".into()],
                SystemTime::now(),
                Duration::from_secs(86_400),
            )
            .unwrap();
        let mut spec = fixture.node_spec();
        let settings = spec.listeners.as_mut().unwrap();
        settings.listeners[0].security_protocol = "SSL".into();
        settings.listeners[0].tls = Some(kreach_domain::desired::tls_files("INTERNAL"));
        spec.certificates = vec![kreach_domain::desired::ListenerCertificate {
            listener: "INTERNAL".into(),
            chain_pem: issued.chain_pem.clone(),
            sans: issued.sans.clone(),
            serial: issued.serial.clone(),
            not_after_ms: issued.not_after_ms,
        }];
        spec.kafka_ca_pem = ca.cert_pem.clone();
        let plan = engine.plan(&spec).unwrap();
        let files: Vec<ManagedFile> = plan.changes.iter().map(|c| c.file).collect();
        assert_eq!(
            files,
            [
                ManagedFile::Hosts,
                ManagedFile::KafkaKeyStore,
                ManagedFile::KafkaCa,
                ManagedFile::KafkaProperties
            ],
            "key store and CA are written before server.properties names them"
        );
        let shown = plan.render();
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("BEGIN CERTIFICATE"),
            "{shown}"
        );
        assert!(
            shown.contains("ca.pem (created): the Kafka CA bundle"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("certificate serial {}", issued.serial)),
            "{shown}"
        );
        engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap();
        let keystore = fixture.dir.path().join("kafka-tls/internal.keystore.pem");
        let content = std::fs::read_to_string(&keystore).unwrap();
        assert!(content.starts_with(&key) && content.ends_with(&issued.chain_pem));
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keystore), 0o600);
        assert_eq!(mode(&crate::kafka_tls::key_path(engine.config())), 0o600);
        assert_eq!(
            std::fs::read_to_string(fixture.dir.path().join("kafka-tls/ca.pem")).unwrap(),
            ca.cert_pem
        );
        let properties = fixture.read("server.properties");
        assert!(
            properties.contains(&format!(
                "listener.name.internal.ssl.keystore.location={}",
                keystore.display()
            )),
            "{properties}"
        );
        // The audit trail records hashes, never the key.
        let audit = std::fs::read_to_string(fixture.dir.path().join("state/audit.jsonl")).unwrap();
        assert!(
            audit.contains("Kafka key store") && !audit.contains("PRIVATE"),
            "{audit}"
        );
        // Applying the same again changes nothing.
        assert!(engine.plan(&spec).unwrap().is_empty());
    }

    /// A broker whose INTERNAL listener serves TLS with a certificate for `sans`, applied; and
    /// the spec of a renewal: a new certificate for `renewed_sans`, same listener settings.
    fn tls_broker_then_renewal(
        fixture: &Fixture,
        sans: &[&str],
        renewed_sans: &[&str],
    ) -> (NodeSpec, NodeSpec) {
        let engine = fixture.engine(None, Ok(vec![]));
        let public = crate::kafka_tls::ensure_key(engine.config()).unwrap();
        let ca = kreach_runtime::kafka_tls::KafkaCa::create("c", SystemTime::now()).unwrap();
        let certificate = |sans: &[&str]| {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let issued = ca
                .issue(
                    "kafka broker 2 INTERNAL",
                    &public,
                    &sans,
                    SystemTime::now(),
                    Duration::from_secs(86_400),
                )
                .unwrap();
            kreach_domain::desired::ListenerCertificate {
                listener: "INTERNAL".into(),
                chain_pem: issued.chain_pem,
                sans: issued.sans,
                serial: issued.serial,
                not_after_ms: issued.not_after_ms,
            }
        };
        let mut spec = fixture.node_spec();
        let settings = spec.listeners.as_mut().unwrap();
        settings.listeners[0].security_protocol = "SSL".into();
        settings.listeners[0].tls = Some(kreach_domain::desired::tls_files("INTERNAL"));
        spec.certificates = vec![certificate(sans)];
        spec.kafka_ca_pem = ca.cert_pem.clone();
        let plan = engine.plan(&spec).unwrap();
        engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap();
        let mut renewed = spec.clone();
        renewed.certificates = vec![certificate(renewed_sans)];
        (spec, renewed)
    }

    #[test]
    fn a_renewed_certificate_is_reloaded_live_without_a_restart() {
        let fixture = Fixture::new();
        let (_, renewed) = tls_broker_then_renewal(
            &fixture,
            &["emr-worker-2.c", "emr-worker-2"],
            &["emr-worker-2.c", "emr-worker-2"],
        );
        let restarts_before = *fixture.restarts.lock().unwrap();
        let engine = fixture.engine_reloading(
            None,
            vec![Ok(vec![])],
            Ok(vec![GateCheck::pass(
                "reload",
                "INTERNAL serves the new certificate",
            )]),
        );
        let plan = engine.plan(&renewed).unwrap();
        assert!(plan.restart.is_none(), "{:?}", plan.restart);
        assert_eq!(plan.reload.len(), 1);
        assert_eq!(plan.reload[0].serial, renewed.certificates[0].serial);
        assert!(
            plan.render()
                .contains("restart: none (INTERNAL reloads the new certificate live"),
            "{}",
            plan.render()
        );
        let outcome = engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap();
        let Outcome::Converged {
            restarted, checks, ..
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(restarted, None);
        assert!(checks
            .iter()
            .any(|c| c.detail.contains("serves the new certificate")));
        assert_eq!(*fixture.restarts.lock().unwrap(), restarts_before);
        let asked = fixture.reloads.lock().unwrap().clone();
        assert_eq!(asked.len(), 1);
        assert!(asked[0][0]
            .keystore
            .ends_with("kafka-tls/internal.keystore.pem"));
        assert!(engine.plan(&renewed).unwrap().is_empty());
    }

    #[test]
    fn a_broker_that_cannot_reload_is_restarted_through_the_gates() {
        let fixture = Fixture::new();
        let (_, renewed) =
            tls_broker_then_renewal(&fixture, &["emr-worker-2.c"], &["emr-worker-2.c"]);
        let restarts_before = *fixture.restarts.lock().unwrap();
        let asked_before = fixture.asked.lock().unwrap().len();
        let engine = fixture.engine_reloading(
            None,
            vec![Ok(vec![GateCheck::pass("INTERNAL", "healthy")])],
            Err("127.0.0.1:9092 does not support IncrementalAlterConfigs".into()),
        );
        let plan = engine.plan(&renewed).unwrap();
        let outcome = engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap();
        let Outcome::Converged { restarted, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(restarted.is_some());
        assert_eq!(*fixture.restarts.lock().unwrap(), restarts_before + 1);
        // The pre-restart gate was asked about the broker as it runs.
        let asked = fixture.asked.lock().unwrap();
        assert_eq!(asked.len(), asked_before + 1);
        assert_eq!(asked.last().unwrap().1[0].name, "INTERNAL");
    }

    #[test]
    fn a_failed_reload_the_pre_restart_gate_refuses_puts_the_old_key_store_back() {
        let fixture = Fixture::new();
        let (spec, renewed) =
            tls_broker_then_renewal(&fixture, &["emr-worker-2.c"], &["emr-worker-2.c"]);
        let keystore = fixture.dir.path().join("kafka-tls/internal.keystore.pem");
        let before = std::fs::read_to_string(&keystore).unwrap();
        assert!(before.ends_with(&spec.certificates[0].chain_pem));
        let restarts_before = *fixture.restarts.lock().unwrap();
        let engine = fixture.engine_reloading(
            Some("min.insync.replicas: restarting broker 2 now would drop orders-0 to 1"),
            vec![Ok(vec![])],
            Err("the broker did not take the key store reload".into()),
        );
        let plan = engine.plan(&renewed).unwrap();
        let outcome = engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap();
        let Outcome::RolledBack {
            reason, restored, ..
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert!(
            reason.contains("did not take the key store reload")
                && reason.contains("min.insync.replicas"),
            "{reason}"
        );
        assert_eq!(restored, vec![keystore.clone()]);
        assert_eq!(std::fs::read_to_string(&keystore).unwrap(), before);
        assert_eq!(*fixture.restarts.lock().unwrap(), restarts_before);
    }

    #[test]
    fn a_certificate_that_drops_a_name_is_loaded_by_a_restart_unless_san_changes_are_allowed() {
        let fixture = Fixture::new();
        let (_, renewed) = tls_broker_then_renewal(
            &fixture,
            &["emr-worker-2.c", "198.19.0.12"],
            &["emr-worker-2.c"],
        );
        let engine = fixture.engine(None, Ok(vec![]));
        let plan = engine.plan(&renewed).unwrap();
        let (_, why) = plan.restart.clone().expect("a restart");
        assert!(
            why.contains("no longer covers 198.19.0.12") && why.contains("ssl.allow.san.changes"),
            "{why}"
        );
        assert!(plan.reload.is_empty());
        // Kafka 3.7+ with ssl.allow.san.changes=true takes it live.
        let properties = fixture.dir.path().join("server.properties");
        let mut text = std::fs::read_to_string(&properties).unwrap();
        text.push_str("listener.name.internal.ssl.allow.san.changes=true\n");
        std::fs::write(&properties, text).unwrap();
        let plan = engine.plan(&renewed).unwrap();
        assert!(plan.restart.is_none());
        assert_eq!(plan.reload.len(), 1);
    }

    #[test]
    fn a_refused_pre_restart_gate_writes_nothing_and_restarts_nothing() {
        let fixture = Fixture::new();
        let engine = fixture.engine(
            Some("min.insync.replicas: restarting broker 2 now would drop partition orders-0 to 1"),
            Ok(vec![]),
        );
        let plan = engine.plan(&fixture.node_spec()).unwrap();
        assert!(plan.restart.is_some());
        let error = engine
            .apply(&plan, None, ReleaseId::LOCAL, "test")
            .unwrap_err();
        assert!(
            matches!(error, EngineError::PreRestartRefused { .. })
                && error.to_string().contains("refused to restart kafka.service, so nothing was written: min.insync.replicas: restarting broker 2"),
            "{error}"
        );
        assert_eq!(fixture.read("server.properties"), INITIAL);
        assert_eq!(fixture.read("hosts"), "127.0.0.1 localhost\n");
        assert_eq!(*fixture.restarts.lock().unwrap(), 0);
        assert!(state::load(&fixture.dir.path().join("state"))
            .unwrap()
            .is_none());
        // The gate was asked about the broker as it runs now: the current file's listener.
        let asked = fixture.asked.lock().unwrap();
        assert_eq!(asked[0].0, 2);
        assert_eq!(
            asked[0].1[0].advertised,
            Some(("old-name".to_string(), 9092))
        );
    }

    #[test]
    fn both_gates_checks_are_reported_and_a_failed_post_gate_rolls_back() {
        let fixture = Fixture::new();
        let engine = fixture.engine(
            None,
            Ok(vec![GateCheck::pass("advertised endpoint", "right")]),
        );
        let plan = engine.plan(&fixture.node_spec()).unwrap();
        match engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap() {
            Outcome::Converged { checks, .. } => assert_eq!(
                checks,
                vec![
                    GateCheck::pass("min.insync.replicas", "fine"),
                    GateCheck::pass("advertised endpoint", "right")
                ]
            ),
            other => panic!("{other:?}"),
        }

        let fixture = Fixture::new();
        let engine = fixture.engine_answering(
            None,
            vec![
                Err("advertised endpoint: listener INTERNAL on 127.0.0.1:9092 advertises x".into()),
                Ok(vec![GateCheck::pass("advertised endpoint", "back")]),
            ],
        );
        let plan = engine.plan(&fixture.node_spec()).unwrap();
        match engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap() {
            Outcome::RolledBack { reason, .. } => {
                assert!(
                    reason.contains("advertised endpoint: listener INTERNAL"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fixture.read("server.properties"), INITIAL);
        assert_eq!(
            *fixture.restarts.lock().unwrap(),
            2,
            "the restart and the recovery restart"
        );
        // No applied state yet (a first apply): the recovered broker was checked against the
        // restored file's listener, as it advertised before.
        let verified = fixture.verified.lock().unwrap();
        assert_eq!(verified.len(), 2, "the new config, then the restored one");
        assert_eq!(verified[1], vec![initial_internal()]);
    }

    /// INITIAL's one listener, as the restored broker must serve it.
    fn initial_internal() -> ListenerSpec {
        ListenerSpec {
            name: "INTERNAL".into(),
            bind_host: "127.0.0.1".into(),
            port: 9092,
            advertised_host: "old-name".into(),
            security_protocol: "PLAINTEXT".into(),
            tls: None,
            sasl_mechanism: None,
        }
    }

    #[test]
    fn a_first_apply_whose_restored_broker_does_not_serve_is_not_reported_rolled_back() {
        let fixture = Fixture::new();
        let engine = fixture.engine_answering(
            None,
            vec![
                Err("kafka serving: listener INTERNAL on 127.0.0.1:9092 does not serve Kafka: refused".into()),
                Err("kafka serving: listener INTERNAL on 127.0.0.1:9092 does not serve Kafka: still refused".into()),
            ],
        );
        let plan = engine.plan(&fixture.node_spec()).unwrap();
        assert!(state::load(&fixture.dir.path().join("state"))
            .unwrap()
            .is_none());
        let error = engine
            .apply(&plan, None, ReleaseId::LOCAL, "test")
            .expect_err("a broker down after the rollback is not a clean rollback");
        assert!(
            matches!(error, EngineError::RollbackFailed { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.starts_with("rollback failed: health check failed: kafka serving: listener INTERNAL on 127.0.0.1:9092 does not serve Kafka: refused; ")
                && text.contains("the previous files of kafka.service were restored, but it is not serving on them either: kafka serving: listener INTERNAL on 127.0.0.1:9092 does not serve Kafka: still refused")
                && text.ends_with("the node needs attention"),
            "{text}"
        );
        assert_eq!(fixture.read("server.properties"), INITIAL);
        assert_eq!(*fixture.restarts.lock().unwrap(), 2);
        assert_eq!(
            fixture.verified.lock().unwrap()[1],
            vec![initial_internal()]
        );
    }

    /// The managed files in memory: the engine's file seam without a disk. The `n`-th write of a
    /// path named in `failing` fails (as a full disk would), after the writes before it went
    /// through.
    #[derive(Default)]
    struct MemFiles {
        files: Mutex<std::collections::BTreeMap<PathBuf, Vec<u8>>>,
        failing: Vec<(PathBuf, usize)>,
        writes: Mutex<Vec<PathBuf>>,
    }

    impl MemFiles {
        fn with(files: &[(&Path, &str)], failing: &[(&Path, usize)]) -> MemFiles {
            MemFiles {
                files: Mutex::new(
                    files
                        .iter()
                        .map(|(path, text)| (path.to_path_buf(), text.as_bytes().to_vec()))
                        .collect(),
                ),
                failing: failing.iter().map(|(p, n)| (p.to_path_buf(), *n)).collect(),
                writes: Mutex::new(Vec::new()),
            }
        }
    }

    impl Files for Arc<MemFiles> {
        fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, fsio::FsError> {
            Ok(self.files.lock().unwrap().get(path).cloned())
        }
        fn replace(
            &self,
            path: &Path,
            content: &[u8],
            _private: Option<fsio::Private>,
        ) -> Result<WriteMethod, fsio::FsError> {
            let mut writes = self.writes.lock().unwrap();
            writes.push(path.to_path_buf());
            let nth = writes.iter().filter(|written| *written == path).count();
            if self.failing.iter().any(|(p, n)| p == path && *n == nth) {
                return Err(fsio::FsError::WriteTemp {
                    path: path.to_path_buf(),
                    temp: path.with_extension("kreach-tmp"),
                    source: std::io::Error::from_raw_os_error(28),
                });
            }
            self.files
                .lock()
                .unwrap()
                .insert(path.to_path_buf(), content.to_vec());
            Ok(WriteMethod::Renamed)
        }
        fn backup(&self, _: &Path, _: &Path, _: &[u8], _: usize) -> Result<(), fsio::FsError> {
            Ok(())
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            match self.files.lock().unwrap().remove(path) {
                Some(_) => Ok(()),
                None => Err(std::io::ErrorKind::NotFound.into()),
            }
        }
        fn create_dir(&self, _: &Path, _: u32, _: Option<(u32, u32)>) -> Result<(), String> {
            Ok(())
        }
    }

    /// The fixture's hosts file and server.properties paths.
    fn managed(fixture: &Fixture) -> (PathBuf, PathBuf) {
        let dir = fixture.dir.path();
        (dir.join("hosts"), dir.join("server.properties"))
    }

    /// An engine reaching its managed files through `files`.
    fn engine_on(fixture: &Fixture, files: &Arc<MemFiles>) -> Engine {
        fixture
            .engine(None, Ok(vec![]))
            .with_files(Box::new(Arc::clone(files)))
    }

    fn text(files: &MemFiles, path: &Path) -> Option<String> {
        let files = files.files.lock().unwrap();
        files
            .get(path)
            .map(|b| String::from_utf8(b.clone()).unwrap())
    }

    #[test]
    fn a_failed_write_puts_back_the_files_the_apply_had_already_written() {
        let fixture = Fixture::new();
        let (hosts, properties) = managed(&fixture);
        let original_hosts = "127.0.0.1 localhost\n# an operator's line\n";
        // The hosts file goes through; server.properties, written after it, does not.
        let files = Arc::new(MemFiles::with(
            &[(&hosts, original_hosts), (&properties, INITIAL)],
            &[(&properties, 1)],
        ));
        let engine = engine_on(&fixture, &files);
        let plan = engine.plan(&fixture.node_spec()).unwrap();
        let order: Vec<&Path> = plan.changes.iter().map(|c| c.path.as_path()).collect();
        assert_eq!(order, [hosts.as_path(), properties.as_path()]);

        let error = engine
            .apply(&plan, None, ReleaseId::LOCAL, "test")
            .unwrap_err();
        let EngineError::WriteFailedRestored { path, restored, .. } = &error else {
            panic!("expected WriteFailedRestored, got {error}");
        };
        assert_eq!(path, &properties);
        assert_eq!(restored, &hosts.display().to_string());
        assert!(
            error.to_string().contains("no space left on device"),
            "{error}"
        );
        // Nothing half-done: both files hold their bytes from before, Kafka was not restarted,
        // and nothing was recorded as applied.
        assert_eq!(text(&files, &hosts).as_deref(), Some(original_hosts));
        assert_eq!(text(&files, &properties).as_deref(), Some(INITIAL));
        assert_eq!(*fixture.restarts.lock().unwrap(), 0);
        assert!(state::load(&fixture.dir.path().join("state"))
            .unwrap()
            .is_none());
        // The trail says what happened to the hosts file: written, then undone.
        let trail = AuditLog::new(&fixture.dir.path().join("state"))
            .read_since(0)
            .unwrap();
        let actions: Vec<(AuditAction, &str)> = trail
            .iter()
            .map(|entry| (entry.action, entry.path.as_str()))
            .collect();
        let hosts_text = hosts.display().to_string();
        assert_eq!(
            actions,
            [
                (AuditAction::Apply, hosts_text.as_str()),
                (AuditAction::Undo, hosts_text.as_str())
            ]
        );
    }

    #[test]
    fn a_file_the_failed_apply_created_is_removed_again() {
        let fixture = Fixture::new();
        let (hosts, properties) = managed(&fixture);
        // No hosts file yet: the apply creates it, then the properties write fails.
        let files = Arc::new(MemFiles::with(
            &[(&properties, INITIAL)],
            &[(&properties, 1)],
        ));
        let engine = engine_on(&fixture, &files);
        let plan = engine.plan(&fixture.node_spec()).unwrap();
        assert!(plan.changes[0].old.is_none());

        let error = engine
            .apply(&plan, None, ReleaseId::LOCAL, "test")
            .unwrap_err();
        assert!(
            matches!(error, EngineError::WriteFailedRestored { .. }),
            "{error}"
        );
        assert_eq!(text(&files, &hosts), None, "the created file is gone again");
        assert_eq!(text(&files, &properties).as_deref(), Some(INITIAL));
    }

    #[test]
    fn an_undo_that_fails_too_names_the_file_left_changed() {
        let fixture = Fixture::new();
        let (hosts, properties) = managed(&fixture);
        // The properties write fails, and so does putting the hosts file back (its 2nd write).
        let files = Arc::new(MemFiles::with(
            &[(&hosts, "127.0.0.1 localhost\n"), (&properties, INITIAL)],
            &[(&properties, 1), (&hosts, 2)],
        ));
        let engine = engine_on(&fixture, &files);
        let plan = engine.plan(&fixture.node_spec()).unwrap();

        let error = engine
            .apply(&plan, None, ReleaseId::LOCAL, "test")
            .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, EngineError::RollbackFailed { .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("could not restore {}", hosts.display()))
                && message.contains("the node needs attention"),
            "{message}"
        );
        assert_eq!(*fixture.restarts.lock().unwrap(), 0);
    }

    /// The packet filter in memory: records every filter it is asked to put in force.
    type Enforced = Arc<Mutex<Vec<Option<kreach_domain::desired::ExternalFilter>>>>;
    struct RecordingFilter(Enforced);

    impl PacketFilter for RecordingFilter {
        fn enforce(
            &self,
            filter: Option<&kreach_domain::desired::ExternalFilter>,
        ) -> Result<GateCheck, crate::firewall::FirewallError> {
            self.0.lock().unwrap().push(filter.cloned());
            Ok(GateCheck::pass("firewall", "recorded"))
        }
        fn present(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_rollback_puts_the_previous_releases_filter_back_after_the_new_one() {
        let fixture = Fixture::new();
        let root = fixture.dir.path().display().to_string();
        let config = AgentConfig::parse(&format!(
            "node = \"emr-worker-2\"\nstate_dir = \"{root}/state\"\n[manage]\nhosts_file = \"{root}/hosts\"\nkafka_properties = \"{root}/server.properties\"\nfirewall = \"nftables\"\n"
        ))
        .unwrap();
        let spec = |allow: &str| {
            let spec = kreach_domain::spec::ClusterSpec::parse(&format!(
                "[cluster]\nname = \"c\"\n[listeners.internal]\nport = 9092\nbind = \"127.0.0.1\"\n\
                 [listeners.external]\nport = 9093\nallow = [\"{allow}\"]\n\
                 [[broker]]\nid = 2\nnode = \"emr-worker-2\"\nprivate_ip = \"198.18.0.12\"\npublic_ip = \"198.19.0.12\"\n",
            ))
            .unwrap();
            kreach_domain::desired::node_spec(&spec, "emr-worker-2").unwrap()
        };
        let previous = state::AppliedState {
            generation: 1,
            step: 1,
            attempt: 1,
            released_by: "test".into(),
            applied_at_unix_ms: 0,
            node_spec: spec("198.18.5.0/24"),
        };
        let filters = Arc::new(Mutex::new(Vec::new()));
        // The restarted broker fails its check; back on the old files it passes.
        let engine = Engine::new(
            config,
            Box::new(CountingServices(Arc::clone(&fixture.restarts))),
            Box::new(ScriptedProbe {
                refuse: None,
                post: vec![Err("EXTERNAL does not answer".into()), Ok(vec![])],
                asked: Arc::clone(&fixture.asked),
                verified: Arc::clone(&fixture.verified),
                reload: Err("not asked to".into()),
                reloads: Arc::clone(&fixture.reloads),
            }),
        )
        .with_packet_filter(Box::new(RecordingFilter(Arc::clone(&filters))));
        let new = spec("198.18.7.0/24");
        let plan = engine.plan(&new).unwrap();
        assert!(plan.restart.is_some());

        let outcome = engine
            .apply(&plan, Some(&previous), ReleaseId::LOCAL, "test")
            .unwrap();
        assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
        // The new filter went in before the files, and the previous one is back with them.
        let (new, previous) = (new.external_filter, previous.node_spec.external_filter);
        assert!(new.is_some() && new != previous);
        assert_eq!(*filters.lock().unwrap(), [new, previous]);
        assert_eq!(fixture.read("server.properties"), INITIAL);
    }

    /// A clock that moves one second at every reading, from 1 s after the epoch.
    struct SteppingClock(std::sync::atomic::AtomicU64);

    impl Clock for SteppingClock {
        fn now_ms(&self) -> u64 {
            self.0
                .fetch_add(1_000, std::sync::atomic::Ordering::SeqCst)
                .saturating_add(1_000)
        }
    }

    #[test]
    fn the_restart_window_and_the_applied_time_are_read_from_the_engines_clock() {
        let fixture = Fixture::new();
        let engine = fixture
            .engine(None, Ok(vec![]))
            .with_clock(Box::new(SteppingClock(0.into())));
        let plan = engine.plan(&fixture.node_spec()).unwrap();
        assert!(plan.restart.is_some());
        let outcome = engine.apply(&plan, None, ReleaseId::LOCAL, "test").unwrap();
        let Outcome::Converged {
            applied,
            restart_window,
            ..
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        // Read just before and just after the restart, then when the state was recorded.
        assert_eq!(
            restart_window,
            Some(RestartWindow {
                started_ms: 1_000,
                finished_ms: 2_000
            })
        );
        assert_eq!(applied.applied_at_unix_ms, 3_000);
        let saved = state::load(&fixture.dir.path().join("state")).unwrap();
        assert_eq!(saved.map(|s| s.applied_at_unix_ms), Some(3_000));
    }
}
