//! Shared helpers for kreach integration tests.

pub mod nspawn;
