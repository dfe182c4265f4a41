//! Drift repair: keep enforcing the last applied state while the agent runs.
//!
//! Owns watching the managed files and deciding when to re-check them, always against the applied
//! state on disk (which the coordinator client replaces after each converged release). Every check
//! is a fresh plan against the persisted desired state, so the editors decide what counts as drift:
//! an edit inside kreach's hosts block or to a managed listener entry shows up as a change and is
//! written back; edits anywhere else render to the same bytes and are left alone, except that a
//! line elsewhere mapping one of kreach's names to another address is logged as a conflict (once,
//! when it appears). Repairs never restart Kafka: they put back the bytes the running broker was
//! started with.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::engine::{Engine, EngineError};
use crate::health::HealthBoard;
use crate::jitter::{first_delay, jittered, random_unit};
use crate::state::{self, AppliedState, ReleaseId};

/// How long a drifted file must stay unchanged before it is repaired.
const STABLE_AFTER: Duration = Duration::from_millis(150);
/// A full re-check happens about this often (± [`crate::jitter::JITTER`]) even without file
/// events (a missed event, a file system without inotify).
pub const SAFETY_CHECK_PERIOD: Duration = Duration::from_secs(5);
/// Events arriving within this window are handled as one change (editors write in several steps).
const COALESCE: Duration = Duration::from_millis(50);

/// What wakes the enforcer.
#[derive(Debug)]
pub enum Wake {
    Files(Vec<PathBuf>),
    Stop,
}

/// Whether an event of this kind can mean that a managed file's content changed: a write, a
/// write's end, a create, a delete, a rename. Opens, reads and read-only closes cannot: notify
/// reports them too, and reacting to them made the agent wake itself (its own check opens the
/// file) and wake at every name lookup on the host (each one opens /etc/hosts).
///
/// Metadata changes (chmod, chown, touch) are not drift either: kreach owns the bytes of its block,
/// not the file's mode or owner (Rule 5), and a repair would find nothing to write. A delete
/// arrives as Remove (and a link-count change as metadata), so nothing kreach owns is missed.
pub fn wakes_enforcer(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_) => true,
        // Unknown kinds (a backend's rescan notice, an overflow): look rather than miss drift.
        EventKind::Any | EventKind::Other => true,
    }
}

/// Start watching `paths`. Both the parent directory (a rename replaces the file's inode) and the
/// file itself (a bind-mounted file such as `ip netns exec`'s /etc/hosts reports only to a watch
/// on the file) are watched. Only events that [`wakes_enforcer`] are passed on.
pub fn watch(paths: &[PathBuf], wake: Sender<Wake>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error (a lost event) needs no wake: the safety check finds any drift.
        if let Some(event) = event.ok().filter(|event| wakes_enforcer(&event.kind)) {
            let _ = wake.send(Wake::Files(event.paths));
        }
    })?;
    for path in paths {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            watcher.watch(parent, RecursiveMode::NonRecursive)?;
        }
        rewatch_file(&mut watcher, path);
    }
    Ok(watcher)
}

fn rewatch_file(watcher: &mut notify::RecommendedWatcher, path: &Path) {
    if path.exists() {
        let _ = watcher.watch(path, RecursiveMode::NonRecursive);
    }
}

/// What one check found.
#[derive(Debug, Default)]
pub struct Checked {
    /// The managed files written back.
    pub repaired: Vec<PathBuf>,
    /// Unmanaged hosts lines that map one of kreach's names elsewhere (the resolver takes the
    /// first match): reported, never deleted.
    pub conflicts: Vec<String>,
}

/// Check once: if the managed files differ from `applied`, write them back; report the hosts
/// lines that shadow kreach's entries.
pub fn check_and_repair(engine: &Engine, applied: &AppliedState) -> Result<Checked, EngineError> {
    let first = engine.plan(&applied.node_spec)?;
    let conflicts = first.conflicts.iter().map(ToString::to_string).collect();
    let repaired = repair_drift(engine, applied, first)?;
    Ok(Checked {
        repaired,
        conflicts,
    })
}

fn repair_drift(
    engine: &Engine,
    applied: &AppliedState,
    first: crate::engine::Plan,
) -> Result<Vec<PathBuf>, EngineError> {
    if first.is_empty() {
        return Ok(Vec::new());
    }
    // An editor that saves in place (truncate, then write) shows a half-written file for a moment.
    // Repair only what stays the same across two reads; a file still changing is looked at again
    // on its next event.
    std::thread::sleep(STABLE_AFTER);
    let plan = engine.plan(&applied.node_spec)?;
    let olds = |plan: &crate::engine::Plan| -> Vec<(PathBuf, Option<String>)> {
        plan.changes
            .iter()
            .map(|c| (c.path.clone(), c.old.clone()))
            .collect()
    };
    if plan.is_empty() || olds(&plan) != olds(&first) {
        tracing::debug!("managed files still changing; checking again on the next event");
        return Ok(Vec::new());
    }
    for change in &plan.changes {
        tracing::warn!(
            file = %change.path.display(),
            node = %applied.node_spec.node,
            cluster = %applied.node_spec.cluster,
            generation = applied.generation,
            "drift: kreach's {} in {} was changed outside kreach; restoring it",
            change.file.describe(),
            change.path.display()
        );
    }
    let repaired = engine.repair(&plan, applied.generation, "drift-repair")?;
    for change in plan.changes.iter().filter(|c| repaired.contains(&c.path)) {
        crate::metrics::record_repair(change.file, change.old.is_none());
    }
    for path in &repaired {
        tracing::info!(file = %path.display(), node = %applied.node_spec.node, cluster = %applied.node_spec.cluster, generation = applied.generation, "corrective change: repaired {}", path.display());
    }
    Ok(repaired)
}

/// Lock the engine; a panic in another holder leaves the engine usable (its state is on disk).
pub fn lock_engine(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Enforce the last applied state until [`Wake::Stop`] arrives: check at start, on every event
/// about a managed path, and about every [`SAFETY_CHECK_PERIOD`] (jittered) after the last check.
///
/// The applied state is read from the state directory at every check (a small JSON file), so the
/// enforcer follows whatever the coordinator client applied last without being told. Every check
/// holds the engine's mutex, so a repair never interleaves with an apply in this process.
pub fn enforce(
    engine: &Mutex<Engine>,
    watcher: &mut notify::RecommendedWatcher,
    wake: &Receiver<Wake>,
    health: &HealthBoard,
) {
    let managed = lock_engine(engine).managed_paths();
    let mut enforcing: Option<(ReleaseId, String)> = None;
    let mut waiting_logged = false;
    // The last applied state seen on disk: if its file disappears (the state directory removed
    // under us), enforcing goes on from memory and the file is written back.
    let mut last_applied: Option<AppliedState> = None;
    // The conflicts last logged: a new or a resolved one is said once, not at every check.
    let mut reported_conflicts: Vec<String> = Vec::new();
    let mut check = |watcher: &mut notify::RecommendedWatcher| {
        let engine = lock_engine(engine);
        let state_dir = &engine.config().state_dir;
        let applied = match state::load(state_dir) {
            Ok(Some(applied)) => applied,
            Ok(None) if last_applied.is_some() => {
                let applied = last_applied.clone().expect("checked");
                match state::save(state_dir, &applied) {
                    Ok(()) => tracing::error!(
                        node = %engine.config().node,
                        dir = %state_dir.display(),
                        generation = applied.generation,
                        "the applied state in {} disappeared (state directory removed?); wrote it back from memory and keep enforcing generation {}",
                        state_dir.display(),
                        applied.generation
                    ),
                    Err(error) => tracing::error!(
                        node = %engine.config().node,
                        generation = applied.generation,
                        "the applied state disappeared and cannot be written back ({error}); enforcing generation {} from memory",
                        applied.generation
                    ),
                }
                applied
            }
            Ok(None) => {
                if !waiting_logged {
                    tracing::info!(node = %engine.config().node, "no applied state yet; waiting for a spec (apply-local or a coordinator)");
                    waiting_logged = true;
                }
                return;
            }
            Err(error) => {
                tracing::error!(node = %engine.config().node, "cannot enforce the applied state: {error}");
                return;
            }
        };
        last_applied = Some(applied.clone());
        let current = (applied.release(), applied.released_by.clone());
        if enforcing.as_ref() != Some(&current) {
            tracing::info!(
                node = %applied.node_spec.node,
                generation = applied.generation,
                step = applied.step,
                attempt = applied.attempt,
                "enforcing the last applied state (released by {})",
                applied.released_by
            );
            enforcing = Some(current);
        }
        let firewall = crate::firewall::describe(engine.config(), &applied.node_spec);
        match check_and_repair(&engine, &applied) {
            Ok(checked) => {
                crate::health::update(health, |health| {
                    health.conflicts.clone_from(&checked.conflicts);
                    health.enforce_error.clear();
                    if !checked.repaired.is_empty() {
                        health.repairs += 1;
                        health.last_repair_ms = state::now_unix_ms();
                    }
                    // A filter error stays until the firewall repair itself clears it.
                    if !health.firewall.starts_with("error") {
                        health.firewall = firewall;
                    }
                });
                for path in checked.repaired {
                    rewatch_file(watcher, &path);
                }
                if checked.conflicts != reported_conflicts {
                    for conflict in &checked.conflicts {
                        if !reported_conflicts.contains(conflict) {
                            tracing::warn!(node = %applied.node_spec.node, "conflict: {conflict}");
                        }
                    }
                    if checked.conflicts.is_empty() {
                        tracing::info!(node = %applied.node_spec.node, "no unmanaged hosts line shadows kreach's entries any more");
                    }
                    reported_conflicts = checked.conflicts;
                }
            }
            Err(error) => {
                tracing::error!(node = %applied.node_spec.node, "cannot enforce the applied state: {error}");
                crate::health::update(health, |health| {
                    health.enforce_error = error.to_string();
                });
            }
        }
    };
    check(watcher);
    // The safety checks start at a random phase and come every jittered period, measured from the
    // last check of any kind: agents of one fleet do not read their files in lockstep, and an
    // event that is not about a managed file does not postpone the next safety check.
    let mut next_check = Instant::now() + first_delay(SAFETY_CHECK_PERIOD, random_unit());
    loop {
        let wait = next_check.saturating_duration_since(Instant::now());
        match wake.recv_timeout(wait) {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Files(paths)) => {
                if !paths.iter().any(|path| managed.iter().any(|m| m == path)) {
                    continue;
                }
                // Let a multi-step edit finish, then look once.
                std::thread::sleep(COALESCE);
                while let Ok(next) = wake.try_recv() {
                    if matches!(next, Wake::Stop) {
                        return;
                    }
                }
                check(watcher);
            }
            Err(RecvTimeoutError::Timeout) => check(watcher),
        }
        next_check = Instant::now() + jittered(SAFETY_CHECK_PERIOD, random_unit());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn only_changes_wake_the_enforcer_not_opens_or_reads() {
        let wakes = [
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ];
        for kind in wakes {
            assert!(wakes_enforcer(&kind), "{kind:?} must wake the enforcer");
        }
        let quiet = [
            // The agent's own check and every name lookup on the host open and read the file.
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            // chmod/touch: not kreach's bytes.
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ];
        for kind in quiet {
            assert!(
                !wakes_enforcer(&kind),
                "{kind:?} must not wake the enforcer"
            );
        }
    }
}
