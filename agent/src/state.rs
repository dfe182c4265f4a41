//! The agent's persisted state: the last node state it applied, and the lock that keeps two agents
//! on one node from writing at once.
//!
//! Owns the files under `state_dir` other than backups (those are [`crate::fsio`]'s). The applied
//! state is what a restarted agent enforces before any coordinator exists.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kreach_domain::desired::NodeSpec;
use kreach_domain::report::Phase;
use nix::fcntl::{Flock, FlockArg};

use crate::fsio;

const STATE_FILE: &str = "applied.json";
const FAILED_FILE: &str = "failed-release.json";
const LOCK_FILE: &str = "agent.lock";
const CLUSTERS_DIR: &str = "clusters";
/// Held by `kreach-agent run` for its whole life (the engine's `agent.lock` is taken per apply, so
/// it cannot be this one: a second flock from the same process would be refused).
const DAEMON_LOCK_FILE: &str = "daemon.lock";

/// What the agent last converged to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedState {
    /// The coordinator's generation, or 0 for a local `apply-local`.
    pub generation: u64,
    /// The rollout step and attempt of the coordinator's release (0 for `apply-local`, and in
    /// state files written before the agent had a coordinator client).
    #[serde(default)]
    pub step: u32,
    #[serde(default)]
    pub attempt: u32,
    /// Who released it: "apply-local", or the coordinator's rollout id.
    pub released_by: String,
    pub applied_at_unix_ms: u64,
    pub node_spec: NodeSpec,
}

impl AppliedState {
    pub fn release(&self) -> ReleaseId {
        ReleaseId {
            generation: self.generation,
            step: self.step,
            attempt: self.attempt,
        }
    }
}

/// Which release a state came from: the coordinator's generation, step and attempt (all 0 for a
/// local `apply-local`), the domain's one type.
pub use kreach_domain::release::ReleaseId;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] fsio::FsError),
    #[error("the applied state {path} is corrupt ({message}); move it away to start from scratch")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "another kreach-agent holds {path} (pid {holder}); two agents must not manage one node"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the state of a release of `cluster` lives when it is not the host's primary cluster (a
/// client of several clusters): `state_dir/clusters/NAME/`, with its own `applied.json` and
/// `failed-release.json`.
pub fn cluster_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join(CLUSTERS_DIR).join(cluster)
}

/// The clusters with a state directory under `state_dir/clusters/`, sorted.
pub fn cluster_dirs(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir.join(CLUSTERS_DIR))
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Remove a cluster's state directory (the host is no longer its client).
pub fn remove_cluster_dir(state_dir: &Path, cluster: &str) -> Result<(), StateError> {
    let path = cluster_dir(state_dir, cluster);
    match std::fs::remove_dir_all(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Remove { path, source }),
    }
}

pub fn ensure_state_dir(state_dir: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(state_dir).map_err(|source| StateError::CreateDir {
        path: state_dir.to_path_buf(),
        source,
    })
}

pub fn load(state_dir: &Path) -> Result<Option<AppliedState>, StateError> {
    load_json(&state_dir.join(STATE_FILE))
}

/// Whether the applied state's file is there (without reading it).
pub fn exists(state_dir: &Path) -> bool {
    state_dir.join(STATE_FILE).exists()
}

pub fn save(state_dir: &Path, state: &AppliedState) -> Result<(), StateError> {
    save_json(state_dir, STATE_FILE, state)
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let Some(bytes) = fsio::read_file(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| StateError::Corrupt {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
}

fn save_json(
    state_dir: &Path,
    file: &str,
    value: &impl serde::Serialize,
) -> Result<(), StateError> {
    ensure_state_dir(state_dir)?;
    let bytes = serde_json::to_vec_pretty(value).expect("state serializes to JSON");
    fsio::atomic_write(&state_dir.join(file), &bytes)?;
    Ok(())
}

/// A coordinator release that failed or rolled back here, and what was reported for it. Kept on
/// disk so that a restarted agent answers the same release with the same report instead of
/// applying it again (and restarting Kafka) while the rollout waits for an operator's `resume`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedRelease {
    pub generation: u64,
    pub step: u32,
    pub attempt: u32,
    /// The reported phase: rolled back or failed (stored as "rolled_back" / "failed").
    pub phase: Phase,
    pub reason: String,
    pub at_unix_ms: u64,
}

impl FailedRelease {
    pub fn release(&self) -> ReleaseId {
        ReleaseId {
            generation: self.generation,
            step: self.step,
            attempt: self.attempt,
        }
    }
}

pub fn load_failed(state_dir: &Path) -> Result<Option<FailedRelease>, StateError> {
    load_json(&state_dir.join(FAILED_FILE))
}

pub fn save_failed(state_dir: &Path, failed: &FailedRelease) -> Result<(), StateError> {
    save_json(state_dir, FAILED_FILE, failed)
}

/// Forget the failed release (a later release converged).
pub fn clear_failed(state_dir: &Path) -> Result<(), StateError> {
    let path = state_dir.join(FAILED_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Remove { path, source }),
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// An exclusive, non-blocking lock on a file in the state directory (`agent.lock` per apply,
/// `daemon.lock` for the daemon's life), held for the guard's lifetime. The holder's pid is written
/// into the file so the error can name it.
pub struct NodeLock {
    _lock: Flock<File>,
}

pub fn lock_node(state_dir: &Path) -> Result<NodeLock, StateError> {
    lock_file(&state_dir.join(LOCK_FILE))
}

/// The daemon's lock, held while `kreach-agent run` runs: a second daemon for the same node (same
/// state directory) refuses to start, naming the pid of the one that runs.
pub fn lock_daemon(state_dir: &Path) -> Result<NodeLock, StateError> {
    lock_file(&state_dir.join(DAEMON_LOCK_FILE))
}

fn lock_file(path: &Path) -> Result<NodeLock, StateError> {
    ensure_state_dir(path.parent().unwrap_or(Path::new(".")))?;
    let path = path.to_path_buf();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| StateError::Lock {
            path: path.clone(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            use std::io::{Seek, Write};
            let mut file: &File = &lock;
            let _ = file.set_len(0);
            let _ = file.seek(std::io::SeekFrom::Start(0));
            let _ = write!(file, "{}", std::process::id());
            Ok(NodeLock { _lock: lock })
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StateError::Locked {
            holder: std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_string(),
            path,
        }),
        Err((_, errno)) => Err(StateError::Lock {
            path,
            source: std::io::Error::from(errno),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_is_refused_and_the_first_can_still_apply() {
        let dir = tempfile::tempdir().unwrap();
        let _daemon = lock_daemon(dir.path()).unwrap();
        match lock_daemon(dir.path()) {
            Err(StateError::Locked { holder, .. }) => {
                assert_eq!(holder, std::process::id().to_string())
            }
            other => panic!("expected Locked, got {:?}", other.err()),
        }
        // The per-apply lock is another file: the daemon holding its own lock can still apply.
        drop(lock_node(dir.path()).unwrap());
    }

    #[test]
    fn a_failed_release_survives_a_restart_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_failed(dir.path()).unwrap(), None);
        let failed = FailedRelease {
            generation: 2,
            step: 3,
            attempt: 1,
            phase: Phase::RolledBack,
            reason: "cannot bind".into(),
            at_unix_ms: 7,
        };
        save_failed(dir.path(), &failed).unwrap();
        // The words the file has always held for the phase.
        let text = std::fs::read_to_string(dir.path().join(FAILED_FILE)).unwrap();
        assert!(text.contains(r#""phase": "rolled_back""#), "{text}");
        assert_eq!(load_failed(dir.path()).unwrap(), Some(failed));
        clear_failed(dir.path()).unwrap();
        assert_eq!(load_failed(dir.path()).unwrap(), None);
        clear_failed(dir.path()).unwrap();
    }

    #[test]
    fn state_files_without_step_and_attempt_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let spec = kreach_domain::desired::NodeSpec {
            cluster: "c".into(),
            node: "etl-1".into(),
            role: kreach_domain::desired::NodeRole::Client {
                view: kreach_domain::spec::View::Private,
            },
            hosts_entries: Vec::new(),
            listeners: None,
            health_timeout_ms: 1000,
            bootstrap: Vec::new(),
            external_filter: None,
            certificates: Vec::new(),
            kafka_ca_pem: String::new(),
            scram_users: Vec::new(),
            sasl_mechanism: String::new(),
        };
        let mut old = serde_json::json!({
            "generation": 3,
            "released_by": "apply-local",
            "applied_at_unix_ms": 1,
        });
        old["node_spec"] = serde_json::to_value(&spec).unwrap();
        std::fs::write(dir.path().join(STATE_FILE), old.to_string()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(
            loaded.release(),
            ReleaseId {
                generation: 3,
                step: 0,
                attempt: 0
            }
        );
    }
}
