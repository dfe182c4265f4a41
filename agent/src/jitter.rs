//! Jitter for the agent's periodic timers, so that a fleet of agents does not act in lockstep.
//!
//! Agents that start or connect together (a fleet boot, a coordinator restart) would otherwise
//! gather facts, check reachability and re-check their files at the same instants forever: with
//! hundreds of agents on one machine that is seconds of full CPU every period, and a release that
//! lands in such a burst waits for it. So every periodic timer starts at a random phase and every
//! period is scaled by a random factor in 1 ± [`JITTER`].
//!
//! Owns the pure arithmetic ([`jittered`], [`first_delay`]), the random source ([`random_unit`])
//! and [`PeriodicTimer`], the async timer the coordinator client uses. It does not decide periods.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Each period is scaled by a random factor in 1 ± this.
pub const JITTER: f64 = 0.2;

/// `period` scaled by `1 + JITTER · (2u − 1)` for `unit` u in [0, 1] (clamped): from 0.8 to 1.2
/// times `period`. Pure, so the bounds are testable.
pub fn jittered(period: Duration, unit: f64) -> Duration {
    let factor = 1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    period.mul_f64(factor)
}

/// The wait before a timer's first tick: a random phase, `unit · period` (at most one period).
pub fn first_delay(period: Duration, unit: f64) -> Duration {
    period.mul_f64(unit.clamp(0.0, 1.0))
}

/// A uniformly distributed number in [0, 1) from the standard library's per-process random keys
/// (each `RandomState` draws fresh ones); jitter needs no stronger source, nor a crate.
pub fn random_unit() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// A periodic timer with a random first phase and a jittered period at every tick. A tick that
/// comes late (the task was busy) starts the next period from when it fired, never a burst.
pub struct PeriodicTimer {
    period: Duration,
    next: tokio::time::Instant,
}

impl PeriodicTimer {
    /// The first tick comes after a random phase in [0, `period`).
    pub fn new(period: Duration) -> PeriodicTimer {
        PeriodicTimer {
            period,
            next: tokio::time::Instant::now() + first_delay(period, random_unit()),
        }
    }

    /// Wait for the next tick. Cancel-safe: dropped before it fires, the same tick stays due.
    pub async fn tick(&mut self) {
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now() + jittered(self.period, random_unit());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_periods_stay_within_twenty_percent() {
        let period = Duration::from_secs(30);
        assert_eq!(jittered(period, 0.0), Duration::from_secs(24));
        assert_eq!(jittered(period, 0.5), period);
        assert_eq!(jittered(period, 1.0), Duration::from_secs(36));
        // Out-of-range inputs are clamped.
        assert_eq!(jittered(period, -3.0), Duration::from_secs(24));
        assert_eq!(jittered(period, 7.0), Duration::from_secs(36));
        for _ in 0..1000 {
            let delay = jittered(period, random_unit());
            assert!(
                (Duration::from_secs(24)..=Duration::from_secs(36)).contains(&delay),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn first_ticks_spread_over_one_period() {
        let period = Duration::from_secs(5);
        assert_eq!(first_delay(period, 0.0), Duration::ZERO);
        assert_eq!(first_delay(period, 2.0), period);
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| first_delay(period, random_unit()))
            .collect();
        assert!(firsts.iter().all(|first| *first <= period));
        // Agents started together do not tick together: the phases cover the period.
        assert!(firsts.iter().any(|first| *first < Duration::from_secs(1)));
        assert!(firsts.iter().any(|first| *first > Duration::from_secs(4)));
    }
}
