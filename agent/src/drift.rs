//! Drift repair: keep enforcing the last applied state while the agent runs.
//!
//! Owns watching the managed files and deciding when to re-check them. Every check is a fresh plan
//! against the persisted desired state, so the editors decide what counts as drift: an edit inside
//! kreach's hosts block or to a managed listener entry shows up as a change and is written back;
//! edits anywhere else render to the same bytes and are left alone. Repairs never restart Kafka:
//! they put back the bytes the running broker was started with.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::engine::{Engine, EngineError};
use crate::state::AppliedState;

/// A full re-check happens at least this often even without file events (a missed event, a file
/// system without inotify).
pub const SAFETY_CHECK_PERIOD: Duration = Duration::from_secs(5);
/// Events arriving within this window are handled as one change (editors write in several steps).
const COALESCE: Duration = Duration::from_millis(50);

/// What wakes the enforcer.
#[derive(Debug)]
pub enum Wake {
    Files(Vec<PathBuf>),
    Stop,
}

/// Start watching `paths`. Both the parent directory (a rename replaces the file's inode) and the
/// file itself (a bind-mounted file such as `ip netns exec`'s /etc/hosts reports only to a watch
/// on the file) are watched.
pub fn watch(paths: &[PathBuf], wake: Sender<Wake>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
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

/// Check once: if the managed files differ from `applied`, write them back. Returns the repaired paths.
pub fn check_and_repair(
    engine: &Engine,
    applied: &AppliedState,
) -> Result<Vec<PathBuf>, EngineError> {
    let plan = engine.plan(&applied.node_spec)?;
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    for change in &plan.changes {
        tracing::warn!(
            path = %change.path.display(),
            node = %applied.node_spec.node,
            generation = applied.generation,
            "drift: kreach's {} in {} was changed outside kreach; restoring it",
            change.file.describe(),
            change.path.display()
        );
    }
    let repaired = engine.repair(&plan, applied.generation, "drift-repair")?;
    for path in &repaired {
        tracing::info!(path = %path.display(), generation = applied.generation, "corrective change: repaired {}", path.display());
    }
    Ok(repaired)
}

/// Enforce `applied` until [`Wake::Stop`] arrives: check at start, on every event about a managed
/// path, and every [`SAFETY_CHECK_PERIOD`].
pub fn enforce(
    engine: &Engine,
    applied: &AppliedState,
    watcher: &mut notify::RecommendedWatcher,
    wake: &Receiver<Wake>,
) {
    let managed = engine.managed_paths();
    let check = |watcher: &mut notify::RecommendedWatcher| match check_and_repair(engine, applied) {
        Ok(repaired) => {
            for path in repaired {
                rewatch_file(watcher, &path);
            }
        }
        Err(error) => {
            tracing::error!(node = %applied.node_spec.node, "cannot enforce the applied state: {error}")
        }
    };
    check(watcher);
    loop {
        match wake.recv_timeout(SAFETY_CHECK_PERIOD) {
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
    }
}
