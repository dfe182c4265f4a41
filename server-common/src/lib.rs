//! kreach's domain, shared by the agent and the coordinator.
//!
//! Owns: the cluster spec and its validation ([`spec`]), the per-node desired state derived from it
//! ([`desired`]), and the two pure editors that turn desired state into file content: the hosts block
//! ([`hosts`]) and the listener keys of `server.properties` ([`properties`]), proto ↔ domain
//! conversion ([`convert`]) and mutual-TLS material ([`tls`]). Everything but [`tls`] (which
//! writes and reads certificate files) is pure: no I/O.

pub mod convert;
pub mod desired;
pub mod diff;
pub mod hosts;
pub mod properties;
pub mod spec;
pub mod tls;
