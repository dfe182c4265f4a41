//! Health gates around a restart: may the broker go down now, and did it come back right?
//!
//! Owns the [`ListenerProbe`] seam between the engine and the network, and its two real
//! implementations: [`KafkaProbe`] (the default: ApiVersions, Metadata and DescribeConfigs through
//! [`crate::kafka`], judged by `kreach_domain::gates`) and [`TcpProbe`] (only "does the port
//! accept TCP", for services that do not speak Kafka, chosen with `manage.probe = "tcp"`). The
//! decisions are the gates' pure functions; this module only gathers what they decide over, polls
//! until the health timeout, and turns verdicts into check lines.
//!
//! Also the live reload of a TLS listener's key store (issue 13): ask the running broker to load
//! the rewritten file (Kafka's dynamic same-path `ssl.keystore.location` update), then check from
//! a TLS handshake that the listener serves the new certificate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use kreach_domain::desired::ScramUser;
use kreach_domain::gates::{
    self, GateCheck, GateVerdict, ListenerAnswer, ListenerObservation, RunningBroker,
    RunningListener,
};
use kreach_domain::properties::ListenerSpec;

use crate::kafka::{KafkaConnection, TlsClient};

/// A TLS listener whose key store was rewritten in place, and what it must serve once reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoreReload {
    pub listener: String,
    /// The key store's path, as server.properties names it.
    pub keystore: String,
    /// The serial of the certificate in the new key store (hex).
    pub serial: String,
}

/// The seam between the engine and the network, so the engine's unit tests need no listeners.
/// Check lines read `name: detail`; a refusal or failure is one reason naming the check, the
/// listener and the address.
pub trait ListenerProbe: Send + Sync {
    /// Before a restart, against the broker as it runs now (`running`, from the current
    /// `server.properties`): Ok with the checks that passed when the broker may go down now,
    /// otherwise the reason to refuse.
    fn before_restart(
        &self,
        broker_id: i32,
        running: &[RunningListener],
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String>;

    /// After a restart: Ok with the checks that passed once every listener is healthy within
    /// `timeout`; otherwise the reason, naming the listener and the address that failed.
    fn verify(
        &self,
        broker_id: i32,
        listeners: &[ListenerSpec],
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String>;

    /// After new key stores were written for TLS listeners of the running broker: have it load
    /// them without a restart, and check that each listener then serves its new certificate (a
    /// handshake trusting `ca_pem`, verified for the listener's advertised host). Ok with the
    /// checks that passed; otherwise why not, and the engine restarts the broker instead.
    fn reload_certificates(
        &self,
        broker_id: i32,
        listeners: &[ListenerSpec],
        reloads: &[KeystoreReload],
        ca_pem: &str,
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String>;

    /// Keep the cluster's SCRAM users: create or change `upsert`, delete `delete` (user,
    /// mechanism), over one of `listeners` (the broker as it runs). Ok with the checks that
    /// passed; otherwise why not (then nothing else of the release is applied).
    fn apply_scram_users(
        &self,
        listeners: &[ListenerSpec],
        upsert: &[ScramUser],
        delete: &[(String, String)],
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String>;
}

/// Kafka's number for a SCRAM mechanism in AlterUserScramCredentials.
fn scram_mechanism(name: &str) -> Result<i8, String> {
    match name {
        "SCRAM-SHA-256" => Ok(1),
        "SCRAM-SHA-512" => Ok(2),
        other => Err(format!("unknown SCRAM mechanism {other:?}")),
    }
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    kreach_domain::desired::from_hex(text)
        .ok_or_else(|| "a SCRAM credential is not hex".to_string())
}

/// Connects with TCP to each listener's bind address (a wildcard bind is probed on loopback).
pub struct TcpProbe;

/// Where to connect to reach a listener bound to `bind_host`.
pub fn probe_address(bind_host: &str, port: u16) -> Result<SocketAddr, String> {
    let ip = match bind_host {
        "" | "0.0.0.0" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "::" | "[::]" => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => {
            let bare = other.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                ip
            } else {
                return (bare, port)
                    .to_socket_addrs()
                    .map_err(|error| format!("cannot resolve {bare}: {error}"))?
                    .next()
                    .ok_or_else(|| format!("{bare} resolves to no address"));
            }
        }
    };
    Ok(SocketAddr::new(ip, port))
}

impl ListenerProbe for TcpProbe {
    fn before_restart(
        &self,
        _broker_id: i32,
        _running: &[RunningListener],
        _timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        Ok(vec![GateCheck::pass(
            "pre-restart",
            "not checked (manage.probe = \"tcp\": the service is not asked about Kafka partitions)",
        )])
    }

    fn verify(
        &self,
        _broker_id: i32,
        listeners: &[ListenerSpec],
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        let deadline = Instant::now() + timeout;
        let mut passed = Vec::new();
        for listener in listeners {
            let address = probe_address(&listener.bind_host, listener.port)
                .map_err(|error| format!("listener {}: {error}", listener.name))?;
            let mut last_error;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let attempt = remaining
                    .min(Duration::from_secs(2))
                    .max(Duration::from_millis(50));
                match TcpStream::connect_timeout(&address, attempt) {
                    Ok(_) => {
                        passed.push(GateCheck::sentence(
                            &listener.name,
                            format!("{} accepts connections on {address}", listener.name),
                        ));
                        break;
                    }
                    Err(error) => last_error = error,
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "listener {} does not accept TCP connections on {address} after {:.1?} (last error: {last_error})",
                        listener.name, timeout
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(passed)
    }

    fn reload_certificates(
        &self,
        _broker_id: i32,
        _listeners: &[ListenerSpec],
        _reloads: &[KeystoreReload],
        _ca_pem: &str,
        _timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        Err("manage.probe = \"tcp\" does not speak Kafka, so it cannot ask the broker to reload its key store".to_string())
    }

    fn apply_scram_users(
        &self,
        _listeners: &[ListenerSpec],
        _upsert: &[ScramUser],
        _delete: &[(String, String)],
        _timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        Err("manage.probe = \"tcp\" does not speak Kafka, so it cannot keep SCRAM users; set probe = \"kafka\"".to_string())
    }
}

/// The Kafka-aware probe: the pre- and post-restart gates of `kreach_domain::gates` over what
/// ApiVersions, Metadata and DescribeConfigs answer on the broker's own listeners.
pub struct KafkaProbe {
    /// Bounds each connect and each request; the gates' overall deadline is the health timeout.
    pub request_timeout: Duration,
    /// Pause between rounds while waiting for the broker to become healthy.
    pub poll_interval: Duration,
}

impl Default for KafkaProbe {
    fn default() -> Self {
        KafkaProbe {
            request_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// kreach speaks Kafka in plaintext only; other listeners get a TCP check and say so.
fn speaks_plaintext(security_protocol: &str) -> bool {
    security_protocol.eq_ignore_ascii_case("PLAINTEXT")
}

impl KafkaProbe {
    fn connect(
        &self,
        address: SocketAddr,
        budget: Duration,
    ) -> Result<KafkaConnection, crate::kafka::ProbeError> {
        KafkaConnection::connect(
            address,
            self.request_timeout
                .min(budget)
                .max(Duration::from_millis(200)),
        )
    }

    /// A connection to the broker's first PLAINTEXT listener (where kreach speaks Kafka to its own
    /// broker), and that listener's name.
    pub fn plaintext_connection(
        &self,
        listeners: &[ListenerSpec],
        timeout: Duration,
    ) -> Result<(KafkaConnection, String), String> {
        let listener = listeners
            .iter()
            .find(|l| speaks_plaintext(&l.security_protocol))
            .ok_or("the broker has no PLAINTEXT listener kreach can speak Kafka on")?;
        let address = probe_address(&listener.bind_host, listener.port)
            .map_err(|error| format!("listener {}: {error}", listener.name))?;
        let connection = self
            .connect(address, timeout)
            .map_err(|error| error.to_string())?;
        Ok((connection, listener.name.clone()))
    }

    /// What the broker as it runs now answers, for the pre-restart gate.
    pub fn observe_running(&self, running: &[RunningListener], timeout: Duration) -> RunningBroker {
        let deadline = Instant::now() + timeout;
        let mut why_not = Vec::new();
        for listener in running.iter().filter(|l| !l.controller) {
            if !speaks_plaintext(&listener.security_protocol) {
                why_not.push(format!(
                    "listener {} uses {} (not probed)",
                    listener.name, listener.security_protocol
                ));
                continue;
            }
            let address = match probe_address(&listener.bind_host, listener.port) {
                Ok(address) => address,
                Err(error) => {
                    why_not.push(format!("listener {}: {error}", listener.name));
                    continue;
                }
            };
            let budget = deadline.saturating_duration_since(Instant::now());
            let answer = self.connect(address, budget).and_then(|mut connection| {
                let metadata = connection.metadata()?;
                let topics: std::collections::BTreeSet<String> = metadata
                    .partitions
                    .iter()
                    .map(|p| p.topic.clone())
                    .collect();
                let topics: Vec<String> = topics.into_iter().collect();
                // Metadata answered, so the broker serves: a failed DescribeConfigs must not
                // turn into "not serving, nothing to protect". The gate decides what it blocks.
                let min_isr = connection
                    .min_insync_replicas(&topics)
                    .unwrap_or_else(|error| gates::TopicMinIsr {
                        unreadable: Some(error.to_string()),
                        ..gates::TopicMinIsr::default()
                    });
                Ok((metadata, min_isr))
            });
            match answer {
                Ok((metadata, min_isr)) => {
                    return RunningBroker::Serving {
                        listener: listener.name.clone(),
                        probed: address.to_string(),
                        advertised: listener.advertised.clone(),
                        metadata: Box::new(metadata),
                        min_isr,
                    }
                }
                Err(error) => why_not.push(format!("listener {}: {error}", listener.name)),
            }
        }
        if why_not.is_empty() {
            why_not.push("server.properties lists no broker listener".to_string());
        }
        RunningBroker::NotServing {
            detail: why_not.join("; "),
        }
    }

    /// One round over every desired listener, for the post-restart gate.
    pub fn observe_listeners(
        &self,
        listeners: &[ListenerSpec],
        deadline: Instant,
    ) -> Vec<ListenerObservation> {
        listeners
            .iter()
            .map(|listener| {
                let address = probe_address(&listener.bind_host, listener.port);
                let probed = address
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|_| gates::endpoint_text(&listener.bind_host, listener.port));
                let budget = deadline.saturating_duration_since(Instant::now());
                let answer = match address {
                    Err(error) => ListenerAnswer::NotServing(error),
                    Ok(address) if !speaks_plaintext(&listener.security_protocol) => {
                        match TcpStream::connect_timeout(&address, self.request_timeout.min(budget).max(Duration::from_millis(200))) {
                            Ok(_) => ListenerAnswer::Unprobed(format!(
                                "uses {}, which the probe does not speak; it accepts TCP connections",
                                listener.security_protocol
                            )),
                            Err(error) => ListenerAnswer::NotServing(format!("cannot connect to {address}: {error}")),
                        }
                    }
                    Ok(address) => match self.connect(address, budget).and_then(|mut c| c.metadata()) {
                        Ok(metadata) => ListenerAnswer::Kafka(metadata),
                        Err(error) => ListenerAnswer::NotServing(error.to_string()),
                    },
                };
                ListenerObservation {
                    listener: listener.name.clone(),
                    probed,
                    desired_host: listener.advertised_host.clone(),
                    desired_port: listener.port,
                    answer,
                }
            })
            .collect()
    }

    /// Is this broker the active controller? None when no plaintext listener answers.
    pub fn controller(&self, broker_id: i32, listeners: &[ListenerSpec]) -> Option<(bool, String)> {
        for listener in listeners
            .iter()
            .filter(|l| speaks_plaintext(&l.security_protocol))
        {
            let Ok(address) = probe_address(&listener.bind_host, listener.port) else {
                continue;
            };
            let Ok(mut connection) = self.connect(address, self.request_timeout) else {
                continue;
            };
            let Ok(metadata) = connection.metadata() else {
                continue;
            };
            let quorum = if connection.supports(ApiKey::DescribeQuorum) {
                connection
                    .quorum_leader()
                    .map_err(|error| error.to_string())
            } else {
                Err(format!("{address} does not support DescribeQuorum"))
            };
            let advertised = (!listener.advertised_host.is_empty())
                .then_some((listener.advertised_host.as_str(), listener.port));
            let (is_controller, check) =
                gates::is_controller(broker_id, &metadata, advertised, quorum);
            return Some((is_controller, check.to_string()));
        }
        None
    }
}

impl ListenerProbe for KafkaProbe {
    fn before_restart(
        &self,
        broker_id: i32,
        running: &[RunningListener],
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        let observed = self.observe_running(running, timeout);
        let verdict = gates::pre_restart_gate(broker_id, &observed);
        match verdict.failure_reason() {
            None => Ok(verdict.checks),
            Some(reason) => Err(reason),
        }
    }

    fn verify(
        &self,
        broker_id: i32,
        listeners: &[ListenerSpec],
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        let deadline = Instant::now() + timeout;
        // Bounded in time by the deadline and in count by the rounds that fit in it.
        let rounds = 2 + timeout.as_millis() / self.poll_interval.as_millis().max(1);
        let mut last = GateVerdict::default();
        for _ in 0..rounds {
            last =
                gates::post_restart_gate(broker_id, &self.observe_listeners(listeners, deadline));
            if last.passed() {
                return Ok(last.checks);
            }
            if Instant::now() + self.poll_interval >= deadline {
                break;
            }
            std::thread::sleep(self.poll_interval);
        }
        Err(format!(
            "not healthy within {:.0?}: {}",
            timeout,
            last.failure_reason()
                .unwrap_or_else(|| "no check ran".to_string())
        ))
    }

    fn reload_certificates(
        &self,
        broker_id: i32,
        listeners: &[ListenerSpec],
        reloads: &[KeystoreReload],
        ca_pem: &str,
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        let deadline = Instant::now() + timeout;
        let settings: Vec<(String, Option<String>)> = reloads
            .iter()
            .map(|reload| {
                (
                    format!(
                        "listener.name.{}.ssl.keystore.location",
                        reload.listener.to_ascii_lowercase()
                    ),
                    Some(reload.keystore.clone()),
                )
            })
            .collect();
        let (mut connection, asked) = self
            .plaintext_connection(listeners, timeout)
            .map_err(|error| format!("cannot ask the broker to reload: {error}"))?;
        let address = connection.addr();
        connection
            .alter_broker_configs(broker_id, &settings)
            .map_err(|error| format!("the broker did not take the key store reload: {error}"))?;
        let mut passed = vec![GateCheck::pass(
            "reload",
            format!(
                "broker {broker_id} took {} over {} ({address})",
                settings
                    .iter()
                    .map(|(key, _)| key.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                asked
            ),
        )];
        let trusted = TlsClient::from_ca_pem(ca_pem)?;
        for reload in reloads {
            let listener = listeners
                .iter()
                .find(|l| l.name.eq_ignore_ascii_case(&reload.listener))
                .ok_or_else(|| format!("no listener {} to check", reload.listener))?;
            let target = probe_address(&listener.bind_host, listener.port)
                .map_err(|error| format!("listener {}: {error}", listener.name))?;
            let host = if listener.advertised_host.is_empty() {
                listener.bind_host.as_str()
            } else {
                listener.advertised_host.as_str()
            };
            // Kafka applies a dynamic config once its metadata log delivers it: poll, bounded by
            // the deadline in time and by the rounds that fit in it in count.
            let rounds = 2 + timeout.as_millis() / self.poll_interval.as_millis().max(1);
            let mut last;
            for round in 0..rounds {
                let budget = deadline.saturating_duration_since(Instant::now());
                let served = KafkaConnection::connect_tls(
                    target,
                    self.request_timeout
                        .min(budget)
                        .max(Duration::from_millis(200)),
                    &trusted,
                    host,
                )
                .map_err(|error| error.to_string())
                .and_then(|connection| {
                    let der = connection
                        .peer_certificate()
                        .ok_or("no certificate was presented")?;
                    kreach_runtime::kafka_tls::inspect_der(&der)
                        .map(|info| info.serial)
                        .map_err(|error| error.to_string())
                });
                match served {
                    Ok(serial) if serial.eq_ignore_ascii_case(&reload.serial) => {
                        passed.push(GateCheck::pass("reload", format!(
                            "{} serves the new certificate (serial {serial}) on {target} for {host}, without a restart",
                            listener.name
                        )));
                        break;
                    }
                    Ok(serial) => last = format!("certificate serial {serial}"),
                    Err(error) => last = error,
                }
                if round + 1 == rounds || Instant::now() + self.poll_interval >= deadline {
                    return Err(format!(
                        "{} on {target} still serves {last} {timeout:.0?} after the reload, not serial {}",
                        listener.name, reload.serial
                    ));
                }
                std::thread::sleep(self.poll_interval);
            }
        }
        Ok(passed)
    }

    fn apply_scram_users(
        &self,
        listeners: &[ListenerSpec],
        upsert: &[ScramUser],
        delete: &[(String, String)],
        timeout: Duration,
    ) -> Result<Vec<GateCheck>, String> {
        let upserts = upsert
            .iter()
            .map(|user| {
                Ok((
                    user.name.clone(),
                    scram_mechanism(&user.mechanism)?,
                    i32::try_from(user.iterations)
                        .map_err(|_| "too many iterations".to_string())?,
                    unhex(&user.salt)?,
                    unhex(&user.salted_password)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let deletions = delete
            .iter()
            .map(|(name, mechanism)| Ok((name.clone(), scram_mechanism(mechanism)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let (mut connection, listener) = self
            .plaintext_connection(listeners, timeout)
            .map_err(|error| format!("cannot reach the broker to keep its SCRAM users: {error}"))?;
        connection
            .alter_scram_credentials(&upserts, &deletions)
            .map_err(|error| format!("SCRAM users not kept: {error}"))?;
        let named = |users: Vec<String>| {
            if users.is_empty() {
                "none".to_string()
            } else {
                users.join(", ")
            }
        };
        Ok(vec![GateCheck::pass(
            "scram users",
            format!(
                "kept over {listener} ({}): set {}, deleted {}",
                connection.addr(),
                named(
                    upsert
                        .iter()
                        .map(|u| format!("{} {}", u.name, u.mechanism))
                        .collect()
                ),
                named(delete.iter().map(|(n, m)| format!("{n} {m}")).collect())
            ),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn listener(name: &str, port: u16) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            bind_host: "0.0.0.0".into(),
            port,
            advertised_host: "10.0.0.1".into(),
            security_protocol: "PLAINTEXT".into(),
            tls: None,
            sasl_mechanism: None,
        }
    }

    #[test]
    fn a_listening_port_passes_and_a_closed_one_names_listener_and_address() {
        let open = TcpListener::bind("127.0.0.1:0").unwrap();
        let open_port = open.local_addr().unwrap().port();
        let closed_port = {
            let temporary = TcpListener::bind("127.0.0.1:0").unwrap();
            temporary.local_addr().unwrap().port()
        };
        let passed = TcpProbe
            .verify(
                1,
                &[listener("INTERNAL", open_port)],
                Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(passed.len(), 1);
        let error = TcpProbe
            .verify(
                1,
                &[
                    listener("INTERNAL", open_port),
                    listener("EXTERNAL", closed_port),
                ],
                Duration::from_millis(300),
            )
            .unwrap_err();
        assert!(
            error.contains("listener EXTERNAL")
                && error.contains(&format!("127.0.0.1:{closed_port}")),
            "{error}"
        );
    }

    #[test]
    fn wildcard_binds_are_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0", 9092).unwrap().to_string(),
            "127.0.0.1:9092"
        );
        assert_eq!(
            probe_address("", 9092).unwrap().to_string(),
            "127.0.0.1:9092"
        );
        assert_eq!(probe_address("::", 9092).unwrap().to_string(), "[::1]:9092");
        assert_eq!(
            probe_address("198.18.0.5", 9093).unwrap().to_string(),
            "198.18.0.5:9093"
        );
    }
}
