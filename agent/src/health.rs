//! What the agent knows of its host between releases, for the node's status: the hosts lines that
//! shadow kreach's entries, drift repairs and the last one's time, an enforcement that cannot run,
//! the EXTERNAL port filter, dynamic broker configs that hide kreach's edits.
//!
//! Owns one value, [`LocalHealth`], on a `watch` channel: the drift enforcer and the firewall
//! repair write their parts of it, the coordinator client reports it whenever it changes (and at
//! every new session). Owns no decision: what counts as a conflict or a repair is the engine's.

use tokio::sync::watch;

/// What the agent reports as its health: the domain's [`AgentHealth`], the coordinator's word for it.
pub use kreach_domain::report::AgentHealth as LocalHealth;

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
