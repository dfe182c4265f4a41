//! Time as the agent and the coordinator read it: an injected [`Clock`], so that what depends on
//! time (timeouts, settle periods, restart windows, timestamps) is driven by a test's own clock
//! instead of sleeps. The system's clock is `kreach-runtime`'s.

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}
