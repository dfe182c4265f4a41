//! Shared helpers for kreach integration tests.

pub mod artifacts;
pub mod fleet;
pub mod ha;
pub mod netns;
pub mod nspawn;
