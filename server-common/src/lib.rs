//! kreach's domain, shared by the agent and the coordinator.
//!
//! Owns: the cluster spec and its validation ([`spec`]), the per-node desired state derived from it
//! ([`desired`]), and the two pure editors that turn desired state into file content: the hosts block
//! ([`hosts`]) and the listener keys of `server.properties` ([`properties`]), proto ↔ domain
//! conversion ([`convert`]), mutual-TLS material ([`tls`]), the daemons' logging and systemd
//! notifications ([`daemon`]), and the bounds check every Kafka response passes before the agent
//! decodes it ([`kafka_frame`]). Everything but [`tls`] (certificate files) and [`daemon`] (stderr,
//! the notify socket) is pure: no I/O.

pub mod convert;
pub mod daemon;
pub mod desired;
pub mod diagnose;
pub mod diff;
pub mod gates;
pub mod hosts;
pub mod journal;
pub mod kafka_frame;
pub mod kafka_tls;
pub mod limits;
pub mod prometheus_text;
pub mod properties;
pub mod spec;
pub mod tls;
