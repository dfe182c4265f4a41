//! The kreach node agent.
//!
//! Owns everything that touches the host: reading its own config, writing files atomically,
//! restarting the Kafka unit through a service manager, verifying listeners, repairing drift, and
//! (when configured) following the coordinator's releases.
//! The decisions themselves (what to write) come from `kreach-domain`'s pure editors.

pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod diagnose;
pub mod drift;
pub mod dry_run;
pub mod engine;
pub mod facts;
pub mod firewall;
pub mod fsio;
pub mod health;
pub mod jitter;
pub mod kafka;
pub mod kafka_tls;
pub mod metrics;
pub mod overrides;
pub mod reach;
pub mod reachability;
pub mod reconciler;
pub mod scram;
pub mod service;
pub mod state;
pub mod verify;
