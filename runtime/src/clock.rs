//! The system's clock for the daemons: [`SteadyWallClock`], the implementation of the domain's
//! [`kreach_domain::clock::Clock`] that the agent and the coordinator run with.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The wall clock read once, when the clock is made, then advanced by the monotonic clock: a
/// wall-clock step (NTP, `date -s`) must neither end a settle early nor stretch it, nor fire a
/// health timeout (found by the fault suite, tests/tests/faults.rs). Stored times stay roughly
/// wall-clock, so a restarted coordinator still resumes a settle or a timeout where it was.
#[derive(Debug, Clone, Copy)]
pub struct SteadyWallClock {
    started: Instant,
    wall_ms: u64,
}

impl SteadyWallClock {
    pub fn new() -> SteadyWallClock {
        SteadyWallClock {
            started: Instant::now(),
            wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

impl Default for SteadyWallClock {
    fn default() -> SteadyWallClock {
        SteadyWallClock::new()
    }
}

impl kreach_domain::clock::Clock for SteadyWallClock {
    fn now_ms(&self) -> u64 {
        self.wall_ms
            .saturating_add(self.started.elapsed().as_millis() as u64)
    }
}
