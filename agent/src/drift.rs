//! Drift: watching the managed files and repairing them against the applied state.
//!
//! Owns the file watches (which only report events: [`crate::reconciler`] decides when to look)
//! and one check against the applied state the reconciler holds. Every check is a fresh plan
//! against that desired state, so the editors decide what counts as drift:
//! an edit inside kreach's hosts block or to a managed listener entry shows up as a change and is
//! written back; edits anywhere else render to the same bytes and are left alone, except that a
//! line elsewhere mapping one of kreach's names to another address is logged as a conflict (once,
//! when it appears). Repairs never restart Kafka: they put back the bytes the running broker was
//! started with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::engine::{Engine, EngineError};
use crate::state::AppliedState;

/// How long a drifted file must stay unchanged before it is repaired.
const STABLE_AFTER: Duration = Duration::from_millis(150);
/// A full re-check happens about this often (± [`crate::jitter::JITTER`]) even without file
/// events (a missed event, a file system without inotify).
pub const SAFETY_CHECK_PERIOD: Duration = Duration::from_secs(5);

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
pub fn watch(
    paths: &[PathBuf],
    changed: impl Fn(Vec<PathBuf>) + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error (a lost event) needs no wake: the safety check finds any drift.
        if let Some(event) = event.ok().filter(|event| wakes_enforcer(&event.kind)) {
            changed(event.paths);
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

/// Watch `path` itself again (a rewrite replaced the inode the old watch was on).
pub fn rewatch_file(watcher: &mut notify::RecommendedWatcher, path: &Path) {
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
