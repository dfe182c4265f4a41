//! What the agent knows of its host between releases, for the node's status: the hosts lines that
//! shadow kreach's entries, drift repairs and the last one's time, an enforcement that cannot run,
//! the EXTERNAL port filter, dynamic broker configs that hide kreach's edits.
//!
//! Owns one value, [`LocalHealth`], on a `watch` channel: the drift enforcer and the firewall
//! repair write their parts of it, the coordinator client reports it whenever it changes (and at
//! every new session). Owns no decision: what counts as a conflict or a repair is the engine's.

use tokio::sync::watch;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalHealth {
    /// Unmanaged hosts lines that shadow kreach's entries, one sentence each.
    pub conflicts: Vec<String>,
    /// Drift repairs since the agent started, and the Unix milliseconds of the last one (0: none).
    pub repairs: u64,
    pub last_repair_ms: u64,
    /// Why the last check of the managed files could not enforce the applied state (empty: it did).
    pub enforce_error: String,
    /// The EXTERNAL port filter: what is in force, "not managed", or "error: ...".
    pub firewall: String,
    /// Dynamic broker configs that hide kreach's edits of server.properties, one sentence each
    /// (see [`crate::overrides`]).
    pub dynamic_overrides: Vec<String>,
}

/// The one writer side, shared by the enforcer and the client; readers subscribe.
pub type HealthBoard = watch::Sender<LocalHealth>;

pub fn board() -> HealthBoard {
    watch::channel(LocalHealth::default()).0
}

/// Apply `change` and notify readers only when it changed something.
pub fn update(board: &HealthBoard, change: impl FnOnce(&mut LocalHealth)) {
    board.send_if_modified(|health| {
        let before = health.clone();
        change(health);
        *health != before
    });
}
