//! Shared helpers for kreach integration tests.

pub mod artifacts;
pub mod nspawn;
