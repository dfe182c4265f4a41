//! `kreach-agent diagnose` (issue 15): on a client host, the steps a person takes by hand when a
//! Kafka client cannot connect — resolve the advertised name (and say which file or resolver
//! answered), TCP connect, TLS handshake with hostname verification, SASL login, ApiVersions,
//! Metadata, and the advertised endpoint compared with the spec — each with its result and timing,
//! broker by broker, stopping a broker's steps at the first that breaks.
//!
//! Owns the order of the steps and their report; the network work is [`crate::kafka`]'s and the
//! lookups are the reachability check's ([`crate::reach`]), so what diagnose says is what the check
//! does, one step at a time.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kreach_domain::desired::{BootstrapEndpoint, NodeRole, NodeSpec};

use crate::config::{AgentConfig, Resolve};
use crate::kafka::{KafkaConnection, TlsClient};
use crate::reach::{HostsFileNetwork, Network, SystemNetwork};

/// Bounds each connect and each request.
const TIMEOUT: Duration = Duration::from_secs(3);

pub use kreach_domain::diagnose::Step;

fn timed<T>(
    work: impl FnOnce() -> Result<(T, String), String>,
) -> (Result<T, String>, String, u64) {
    let started = Instant::now();
    let outcome = work();
    let elapsed = started.elapsed().as_millis() as u64;
    match outcome {
        Ok((value, detail)) => (Ok(value), detail, elapsed),
        Err(detail) => (Err(detail.clone()), detail, elapsed),
    }
}

/// Where `host` resolves for a Kafka client on this host, and what answered.
fn resolve(
    config: &AgentConfig,
    host: &str,
    port: u16,
) -> Result<(Vec<SocketAddr>, String), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok((
            vec![SocketAddr::new(ip, port)],
            format!("{bare} is an address"),
        ));
    }
    // The reachability check's own lookup, so diagnose resolves exactly as the check does.
    let hosts_file = &config.manage.hosts_file;
    let system = SystemNetwork {
        timeout: TIMEOUT,
        tls: None,
        sasl: None,
    };
    let (addresses, how) = match config.reachability.resolve {
        Resolve::HostsFile => {
            let network = HostsFileNetwork {
                path: hosts_file.clone(),
                system,
            };
            let addresses = network
                .resolve(bare, port)
                .map_err(|error| format!("{bare} does not resolve: {error}"))?;
            (addresses, "the hosts file".to_string())
        }
        Resolve::System => {
            // What the managed hosts file says, to tell whether it or DNS answered.
            let in_file = std::fs::read_to_string(hosts_file)
                .map(|content| kreach_domain::hosts::lookup(&content, bare))
                .unwrap_or_default();
            let source = if in_file.is_empty() {
                format!("not in {}", hosts_file.display())
            } else {
                format!(
                    "{} maps it to {}",
                    hosts_file.display(),
                    in_file
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let addresses = system
                .resolve(bare, port)
                .map_err(|error| format!("{bare} does not resolve ({error}); {source}"))?;
            if addresses.is_empty() {
                return Err(format!("{bare} does not resolve: {source}"));
            }
            (addresses, format!("the system resolver ({source})"))
        }
    };
    let detail = format!(
        "{bare} → {} by {how}",
        addresses
            .iter()
            .map(|a| a.ip().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((addresses, detail))
}

/// Every step against `endpoint`, reported to `report` as it finishes; stops at the first failure.
fn diagnose_broker(
    config: &AgentConfig,
    spec: &NodeSpec,
    endpoint: &BootstrapEndpoint,
    report: &mut dyn FnMut(Step),
) -> bool {
    let id = endpoint.broker_id;
    let mut step = |name: &'static str, ok: bool, detail: String, elapsed_ms: u64| {
        report(Step {
            broker_id: id,
            step: name.to_string(),
            ok,
            detail,
            elapsed_ms,
        });
        ok
    };
    let (resolved, detail, ms) = timed(|| resolve(config, &endpoint.host, endpoint.port));
    if !step("resolve", resolved.is_ok(), detail, ms) {
        return false;
    }
    let addresses = resolved.unwrap_or_default();
    let (connected, detail, ms) = timed(|| {
        let mut last = String::new();
        for address in &addresses {
            match TcpStream::connect_timeout(address, TIMEOUT) {
                Ok(_) => return Ok((*address, format!("{address} accepts connections"))),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut || error.kind() == std::io::ErrorKind::WouldBlock => {
                    last = format!("{address}: timed out after {TIMEOUT:?} (a packet filter dropping this source?)")
                }
                Err(error) => last = format!("{address}: {error}"),
            }
        }
        Err(last)
    });
    if !step("TCP connect", connected.is_ok(), detail, ms) {
        return false;
    }
    let address = connected.unwrap_or_else(|_| addresses[0]);
    let tls = if spec.kafka_ca_pem.is_empty() {
        None
    } else {
        match TlsClient::from_ca_pem(&spec.kafka_ca_pem) {
            Ok(tls) => Some(tls),
            Err(error) => return step("TLS handshake", false, error, 0),
        }
    };
    let (connection, detail, ms) = timed(|| {
        let connection = match &tls {
            None => KafkaConnection::connect(address, TIMEOUT),
            Some(tls) => KafkaConnection::connect_tls(address, TIMEOUT, tls, &endpoint.host),
        }
        .map_err(|error| error.to_string())?;
        let detail = match &tls {
            Some(_) => format!(
                "TLS verified for {} (the Kafka CA), then ApiVersions: {} APIs",
                endpoint.host,
                connection.api_count()
            ),
            None => format!("ApiVersions: {} APIs (PLAINTEXT)", connection.api_count()),
        };
        Ok((connection, detail))
    });
    let name = if tls.is_some() {
        "TLS handshake + ApiVersions"
    } else {
        "ApiVersions"
    };
    if !step(name, connection.is_ok(), detail, ms) {
        return false;
    }
    let mut connection = connection.expect("checked");
    if let Some(login) = crate::reachability::sasl_login(config, &spec.sasl_mechanism, &config.node)
    {
        let (logged_in, detail, ms) = timed(|| {
            connection
                .sasl_scram_login(login.mechanism, &login.user, &login.password)
                .map(|()| ((), format!("{} as {}", login.mechanism.name(), login.user)))
                .map_err(|error| error.to_string())
        });
        if !step("SASL login", logged_in.is_ok(), detail, ms) {
            return false;
        }
    }
    let (metadata, detail, ms) = timed(|| {
        let metadata = connection.metadata().map_err(|error| error.to_string())?;
        let detail = format!(
            "{} broker(s) advertised: {}",
            metadata.brokers.len(),
            metadata
                .brokers
                .iter()
                .map(|b| format!("{} at {}:{}", b.id, b.host, b.port))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok((metadata, detail))
    });
    if !step("Metadata", metadata.is_ok(), detail, ms) {
        return false;
    }
    let metadata = metadata.expect("checked");
    let advertised = metadata
        .brokers
        .iter()
        .any(|b| b.host.eq_ignore_ascii_case(&endpoint.host) && b.port == endpoint.port);
    step(
        "advertised endpoint",
        advertised,
        if advertised {
            format!(
                "{}:{} is advertised, as the spec says",
                endpoint.host, endpoint.port
            )
        } else {
            format!(
                "the spec expects {}:{}, which this broker does not advertise (a client would be sent elsewhere)",
                endpoint.host, endpoint.port
            )
        },
        0,
    )
}

/// Diagnose every broker of this client's view (or only `broker`), reporting each step as it
/// finishes. Ok(true) when every step passed; Err when this host is not a client with an applied
/// spec.
pub fn run(
    config: &AgentConfig,
    applied: Option<&crate::state::AppliedState>,
    broker: Option<i32>,
    report: &mut dyn FnMut(Step),
) -> Result<bool, String> {
    let spec = &applied
        .ok_or("nothing applied on this host yet: no spec to diagnose against")?
        .node_spec;
    if !matches!(spec.role, NodeRole::Client { .. }) {
        return Err(format!(
            "{} is {}, not a client: diagnose checks from a client's vantage",
            spec.node, spec.role
        ));
    }
    let endpoints: Vec<&BootstrapEndpoint> = spec
        .bootstrap
        .iter()
        .filter(|e| broker.is_none_or(|id| e.broker_id == id))
        .collect();
    if endpoints.is_empty() {
        return Err(match broker {
            Some(id) => format!("broker {id} is not one this client's view reaches"),
            None => {
                "this client's view has no broker endpoints (public access disabled?)".to_string()
            }
        });
    }
    let mut all_ok = true;
    for endpoint in endpoints {
        all_ok &= diagnose_broker(config, spec, endpoint, report);
    }
    Ok(all_ok)
}
