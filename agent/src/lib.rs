//! The kreach node agent.
//!
//! Owns everything that touches the host: reading its own config, writing files atomically,
//! restarting the Kafka unit through a service manager, verifying listeners, and repairing drift.
//! The decisions themselves (what to write) come from `kreach-common`'s pure editors.

pub mod config;
pub mod drift;
pub mod engine;
pub mod fsio;
pub mod service;
pub mod state;
pub mod verify;
