//! Shared helpers for kreach integration tests.
