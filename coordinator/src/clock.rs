//! The coordinator's clock, injected into [`crate::core::Core`]: settle timers, health and offline
//! timeouts, last-seen times, certificate renewal and expiry all read it, so unit tests drive them
//! with a clock of their own instead of sleeping.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the coordinator counts them.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

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

impl Clock for SteadyWallClock {
    fn now_ms(&self) -> u64 {
        self.wall_ms
            .saturating_add(self.started.elapsed().as_millis() as u64)
    }
}
