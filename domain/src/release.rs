//! Which release something is about: the coordinator's generation, the rollout step and the
//! attempt of that step. One type for the whole agent–coordinator contract: the coordinator's
//! rollout stamps it on releases, agents keep it with what they applied and echo it in reports,
//! so a late report for an older release is recognisable. All 0: a local `apply-local`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct ReleaseId {
    pub generation: u64,
    pub step: u32,
    pub attempt: u32,
}

impl ReleaseId {
    /// The local one-shot `apply-local`, which no coordinator released.
    pub const LOCAL: ReleaseId = ReleaseId {
        generation: 0,
        step: 0,
        attempt: 0,
    };

    /// Whether a coordinator released it (not `apply-local`).
    pub fn is_from_coordinator(&self) -> bool {
        self.generation > 0
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generation {} step {} attempt {}",
            self.generation, self.step, self.attempt
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_reads_as_its_generation_step_and_attempt() {
        let id = ReleaseId {
            generation: 7,
            step: 2,
            attempt: 1,
        };
        assert_eq!(id.to_string(), "generation 7 step 2 attempt 1");
        assert!(id.is_from_coordinator() && !ReleaseId::LOCAL.is_from_coordinator());
        // Stored as today's field names (the coordinator's rollouts in redb, the agent's state).
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#"{"generation":7,"step":2,"attempt":1}"#
        );
    }
}
