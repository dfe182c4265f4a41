//! kreach's domain, shared by the agent and the coordinator: pure, no I/O, no wire format, no TLS,
//! no logging set-up.
//!
//! Owns: the cluster spec and its validation ([`spec`]), the per-node desired state derived from it
//! ([`desired`]), the two editors that turn desired state into file content — the hosts block
//! ([`hosts`]) and the listener keys of `server.properties` ([`properties`]) — the health gates
//! ([`gates`]), diffs ([`diff`]), the bounds of what the agent accepts ([`limits`]), a diagnosis
//! step ([`diagnose`]), the one [`release::ReleaseId`] of the agent–coordinator contract, the reachability
//! failures ([`reachability::Failure`]), what agents report of their nodes ([`report`]), and the
//! counters' text format ([`prometheus_text`]).
//!
//! Does not own: the wire (proto ↔ domain conversion is `kreach-proto`'s `convert`), TLS material,
//! the daemons' logging and systemd notifications, or the Kafka frame check (`kreach-runtime`).

pub mod clock;
pub mod desired;
pub mod diagnose;
pub mod diff;
pub mod gates;
pub mod hosts;
pub mod limits;
pub mod prometheus_text;
pub mod properties;
pub mod reachability;
pub mod release;
pub mod report;
pub mod spec;
