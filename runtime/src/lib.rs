//! What kreach's daemons and commands need around the domain ([`kreach_domain`]): mutual-TLS
//! material for the control plane ([`tls`]), certificates for Kafka's TLS listeners
//! ([`kafka_tls`]), the bounds check every Kafka response passes before the agent decodes it
//! ([`kafka_frame`]), logging set up the same way in both daemons ([`daemon`], to journald with
//! fields by [`journal`]) and systemd's service notifications.
//!
//! Owns no policy: what to issue, when to log and when a daemon is ready are its callers'.

pub mod clock;
pub mod daemon;
pub mod journal;
pub mod kafka_frame;
pub mod kafka_tls;
pub mod tls;
