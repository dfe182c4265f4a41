//! Reachability from the client's side (DESIGN.md rule 9): can this host reach every broker the
//! way a Kafka client would?
//!
//! A client bootstraps through its view's endpoints, reads the metadata, then resolves every
//! advertised name with the system resolver (so the hosts file counts), connects, and asks the
//! broker behind the address who it is. This module owns that walk ([`check`], pure over the
//! [`Network`] seam, unit-tested with a fake) and the classification of what went wrong
//! ([`classify_connect`]). It does not report anything (the coordinator client does) and never
//! changes the host.
//!
//! "The broker behind the address" is decided from that broker's own metadata: the broker there
//! must list itself at the advertised endpoint with the id the bootstrap metadata gave it. (Some
//! brokers, such as tansu, report one node id everywhere; the endpoint still tells them apart.)

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use kreach_domain::desired::BootstrapEndpoint;
use kreach_domain::gates::{endpoint_text, AdvertisedBroker};

use crate::kafka::{KafkaConnection, ProbeError};

/// How long one connect (and each Kafka request after it) may take before it counts as timed out.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub use kreach_domain::reachability::Failure;

/// Why a connect (or the Kafka handshake after it) failed, as the [`Network`] seam reports it.
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connect failed with this error.
    Io(io::Error),
    /// Connected, but the Kafka exchange failed.
    Kafka(String),
    /// Connected, but the TLS handshake failed (see [`Failure`]'s TLS variants).
    Tls(Failure, String),
    /// Connected, but the SASL login failed.
    Auth(String),
}

/// The network as seen from this host: resolving names and asking a broker for its metadata.
pub trait Network {
    /// Every address `host` resolves to (the system resolver: hosts file, then DNS).
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
    /// Connect to `address` (which `host` resolved to; a TLS client verifies the certificate
    /// against `host`) and return the brokers its metadata advertises.
    fn advertised(
        &self,
        host: &str,
        address: SocketAddr,
    ) -> Result<Vec<AdvertisedBroker>, ConnectError>;
}

/// The real network: getaddrinfo and the Kafka probe.
pub struct SystemNetwork {
    pub timeout: Duration,
    /// The view's listener speaks TLS: connect over it, trusting this CA only.
    pub tls: Option<crate::kafka::TlsClient>,
    /// The view's listener speaks SASL and this host has credentials: log in before Metadata.
    pub sasl: Option<SaslLogin>,
}

/// A SCRAM login the check makes as a client of a SASL listener would.
pub struct SaslLogin {
    pub mechanism: crate::scram::Mechanism,
    pub user: String,
    pub password: String,
}

impl Network for SystemNetwork {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        (bare, port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|error| error.to_string())
    }

    fn advertised(
        &self,
        host: &str,
        address: SocketAddr,
    ) -> Result<Vec<AdvertisedBroker>, ConnectError> {
        let mut connection = match &self.tls {
            None => KafkaConnection::connect(address, self.timeout),
            Some(tls) => KafkaConnection::connect_tls(address, self.timeout, tls, host),
        }
        .map_err(kafka_error)?;
        if let Some(login) = &self.sasl {
            connection
                .sasl_scram_login(login.mechanism, &login.user, &login.password)
                .map_err(kafka_error)?;
        }
        let metadata = connection.metadata().map_err(kafka_error)?;
        Ok(metadata.brokers)
    }
}

fn kafka_error(error: ProbeError) -> ConnectError {
    if let ProbeError::Tls { failure, .. } = &error {
        let failure = match failure {
            crate::kafka::TlsFailure::NotForName => Failure::CertificateNotForHost,
            crate::kafka::TlsFailure::UnknownCa => Failure::UnknownCa,
            crate::kafka::TlsFailure::Expired => Failure::CertificateExpired,
            crate::kafka::TlsFailure::Other => Failure::TlsFailed,
        };
        return ConnectError::Tls(failure, error.to_string());
    }
    match error {
        ProbeError::Connect { source, .. } => ConnectError::Io(source),
        auth @ ProbeError::Auth { .. } => ConnectError::Auth(auth.to_string()),
        other => ConnectError::Kafka(other.to_string()),
    }
}

/// What a failed connect means for a person. Pure.
pub fn classify_connect(error: &ConnectError) -> Failure {
    let error = match error {
        ConnectError::Kafka(_) => return Failure::NotKafka,
        ConnectError::Tls(failure, _) => return *failure,
        ConnectError::Auth(_) => return Failure::AuthenticationFailed,
        ConnectError::Io(error) => error,
    };
    match error.kind() {
        io::ErrorKind::ConnectionRefused => return Failure::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => return Failure::TimedOut,
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => return Failure::NoRoute,
        _ => {}
    }
    match error.raw_os_error() {
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EADDRNOTAVAIL) => Failure::NoRoute,
        Some(libc::ECONNREFUSED) => Failure::Refused,
        Some(libc::ETIMEDOUT) => Failure::TimedOut,
        _ => Failure::CannotConnect,
    }
}

/// One advertised broker endpoint as this host reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReach {
    /// The spec's broker id (see [`check`] for how an advertised broker is matched to it).
    pub broker_id: i32,
    /// `host:port` as advertised, or as the spec gives it when nothing advertised it.
    pub endpoint: String,
    /// `None` when reachable.
    pub failure: Option<Failure>,
    /// What was tried and what happened, for the operator.
    pub detail: String,
}

impl EndpointReach {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// What probing one `host:port` gave: the address that answered and its metadata.
type Probe = Result<(SocketAddr, Vec<AdvertisedBroker>), (Failure, String)>;

/// The network as a host sees it when its programs resolve only through one hosts file (see
/// `[reachability] resolve = "hosts_file"`): names from that file, the rest as [`SystemNetwork`].
pub struct HostsFileNetwork {
    pub path: std::path::PathBuf,
    pub system: SystemNetwork,
}

impl Network for HostsFileNetwork {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let content = std::fs::read_to_string(&self.path)
            .map_err(|error| format!("cannot read {}: {error}", self.path.display()))?;
        let addresses = kreach_domain::hosts::lookup(&content, bare);
        if addresses.is_empty() {
            return Err(format!("not in {}", self.path.display()));
        }
        Ok(addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    fn advertised(
        &self,
        host: &str,
        address: SocketAddr,
    ) -> Result<Vec<AdvertisedBroker>, ConnectError> {
        self.system.advertised(host, address)
    }
}

/// Resolve `host` and ask each of its addresses in turn until one answers.
fn probe(network: &dyn Network, host: &str, port: u16) -> Probe {
    let endpoint = endpoint_text(host, port);
    let addresses = match network.resolve(host, port) {
        Ok(addresses) if !addresses.is_empty() => addresses,
        Ok(_) => {
            return Err((
                Failure::DoesNotResolve,
                format!("{host} resolves to no address"),
            ))
        }
        Err(error) => {
            return Err((
                Failure::DoesNotResolve,
                format!("{host} does not resolve: {error}"),
            ))
        }
    };
    let mut first_failure = None;
    for address in addresses {
        match network.advertised(host, address) {
            Ok(brokers) => return Ok((address, brokers)),
            Err(error) => {
                let failure = classify_connect(&error);
                let text = match &error {
                    ConnectError::Io(error) => {
                        format!("connecting to {address} ({endpoint}): {error}")
                    }
                    ConnectError::Kafka(message)
                    | ConnectError::Tls(_, message)
                    | ConnectError::Auth(message) => {
                        format!("{endpoint} at {address}: {message}")
                    }
                };
                first_failure.get_or_insert((failure, text));
            }
        }
    }
    Err(first_failure.expect("at least one address was tried"))
}

fn same_endpoint(broker: &AdvertisedBroker, host: &str, port: u16) -> bool {
    broker.port == port && broker.host.eq_ignore_ascii_case(host)
}

/// Check every broker this client should reach: bootstrap through each of `bootstrap` (the spec's
/// endpoints for this client's view), take every broker any of them advertises, and resolve,
/// connect to and identify each. One result per advertised endpoint, plus one per spec broker that
/// no metadata advertised (with its bootstrap's failure when that failed), sorted by broker id.
///
/// An advertised broker counts for the spec's broker of the same id; failing that (brokers that
/// report one id everywhere), for the spec's broker whose endpoint it is; failing that, under its
/// own id.
pub fn check(network: &dyn Network, bootstrap: &[BootstrapEndpoint]) -> Vec<EndpointReach> {
    // Bootstrap through every endpoint: a real cluster lists all brokers from any one, but a
    // broker that knows only itself (or a cluster split by a filter) needs them all.
    let mut probes: BTreeMap<String, Probe> = BTreeMap::new();
    let mut advertised: Vec<AdvertisedBroker> = Vec::new();
    for endpoint in bootstrap {
        let result = probe(network, &endpoint.host, endpoint.port);
        if let Ok((_, brokers)) = &result {
            for broker in brokers {
                if !advertised.iter().any(|known| {
                    known.id == broker.id && same_endpoint(known, &broker.host, broker.port)
                }) {
                    advertised.push(broker.clone());
                }
            }
        }
        probes.insert(endpoint_key(&endpoint.host, endpoint.port), result);
    }

    let spec_id = |broker: &AdvertisedBroker| -> i32 {
        if bootstrap.iter().any(|spec| spec.broker_id == broker.id) {
            return broker.id;
        }
        bootstrap
            .iter()
            .find(|spec| same_endpoint(broker, &spec.host, spec.port))
            .map(|spec| spec.broker_id)
            .unwrap_or(broker.id)
    };

    let mut results = Vec::new();
    for broker in &advertised {
        let endpoint = broker.endpoint();
        let key = endpoint_key(&broker.host, broker.port);
        let result = match probes.get(&key) {
            Some(known) => known.clone(),
            None => {
                let fresh = probe(network, &broker.host, broker.port);
                probes.insert(key, fresh.clone());
                fresh
            }
        };
        let (failure, detail) = match result {
            Err((failure, detail)) => (Some(failure), detail),
            Ok((address, behind)) => identify(broker, address, &behind),
        };
        results.push(EndpointReach {
            broker_id: spec_id(broker),
            endpoint,
            failure,
            detail,
        });
    }

    for spec in bootstrap {
        if results
            .iter()
            .any(|reach| reach.broker_id == spec.broker_id)
        {
            continue;
        }
        let endpoint = endpoint_text(&spec.host, spec.port);
        let (failure, detail) = match &probes[&endpoint_key(&spec.host, spec.port)] {
            Err((failure, detail)) => (*failure, format!("bootstrap through {endpoint}: {detail}")),
            Ok((address, behind)) => {
                if behind
                    .iter()
                    .any(|broker| same_endpoint(broker, &spec.host, spec.port))
                {
                    (
                        Failure::NotAdvertised,
                        format!(
                            "no metadata advertises broker {} (the broker at {endpoint} → {address} lists {})",
                            spec.broker_id,
                            describe_brokers(behind)
                        ),
                    )
                } else {
                    (
                        Failure::WrongBroker,
                        format!(
                            "{endpoint} → {address}: the broker there does not advertise {endpoint} (it lists {})",
                            describe_brokers(behind)
                        ),
                    )
                }
            }
        };
        results.push(EndpointReach {
            broker_id: spec.broker_id,
            endpoint,
            failure: Some(failure),
            detail,
        });
    }
    results.sort_by(|a, b| (a.broker_id, &a.endpoint).cmp(&(b.broker_id, &b.endpoint)));
    results
}

/// Whether the broker that answered at `address` is the one advertised there.
fn identify(
    advertised: &AdvertisedBroker,
    address: SocketAddr,
    behind: &[AdvertisedBroker],
) -> (Option<Failure>, String) {
    let endpoint = advertised.endpoint();
    match behind
        .iter()
        .find(|broker| same_endpoint(broker, &advertised.host, advertised.port))
    {
        Some(found) if found.id == advertised.id => (
            None,
            format!("{endpoint} → {address}: broker {}", advertised.id),
        ),
        Some(found) => (
            Some(Failure::WrongBroker),
            format!(
                "{endpoint} → {address}: broker {} is there, but the metadata lists broker {} at {endpoint}",
                found.id, advertised.id
            ),
        ),
        None => (
            Some(Failure::WrongBroker),
            format!(
                "{endpoint} → {address}: the broker there does not advertise {endpoint} (it lists {})",
                describe_brokers(behind)
            ),
        ),
    }
}

fn describe_brokers(brokers: &[AdvertisedBroker]) -> String {
    if brokers.is_empty() {
        return "no brokers".to_string();
    }
    brokers
        .iter()
        .map(|broker| format!("broker {} at {}", broker.id, broker.endpoint()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn endpoint_key(host: &str, port: u16) -> String {
    endpoint_text(&host.to_ascii_lowercase(), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A scripted network: names → addresses, addresses → metadata or an error.
    #[derive(Default)]
    struct FakeNetwork {
        names: HashMap<String, Vec<SocketAddr>>,
        behind: HashMap<SocketAddr, Result<Vec<AdvertisedBroker>, (io::ErrorKind, &'static str)>>,
        connects: Mutex<Vec<SocketAddr>>,
    }

    impl FakeNetwork {
        fn name(mut self, host: &str, address: &str) -> Self {
            self.names
                .entry(host.to_string())
                .or_default()
                .push(address.parse().unwrap());
            self
        }
        fn broker(mut self, address: &str, advertises: &[(i32, &str, u16)]) -> Self {
            self.behind.insert(
                address.parse().unwrap(),
                Ok(advertises
                    .iter()
                    .map(|(id, host, port)| advertised(*id, host, *port))
                    .collect()),
            );
            self
        }
        fn fails(mut self, address: &str, kind: io::ErrorKind) -> Self {
            self.behind
                .insert(address.parse().unwrap(), Err((kind, "scripted")));
            self
        }
    }

    impl Network for FakeNetwork {
        fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            self.names
                .get(host)
                .map(|addresses| {
                    addresses
                        .iter()
                        .map(|a| SocketAddr::new(a.ip(), port))
                        .collect()
                })
                .ok_or_else(|| "Name or service not known".to_string())
        }
        fn advertised(
            &self,
            _host: &str,
            address: SocketAddr,
        ) -> Result<Vec<AdvertisedBroker>, ConnectError> {
            self.connects.lock().unwrap().push(address);
            match self.behind.get(&address) {
                Some(Ok(brokers)) => Ok(brokers.clone()),
                Some(Err((kind, message))) => {
                    Err(ConnectError::Io(io::Error::new(*kind, *message)))
                }
                None => Err(ConnectError::Io(io::Error::from(
                    io::ErrorKind::ConnectionRefused,
                ))),
            }
        }
    }

    fn advertised(id: i32, host: &str, port: u16) -> AdvertisedBroker {
        AdvertisedBroker {
            id,
            host: host.to_string(),
            port,
            rack: None,
        }
    }

    fn spec(endpoints: &[(i32, &str, u16)]) -> Vec<BootstrapEndpoint> {
        endpoints
            .iter()
            .map(|(id, host, port)| BootstrapEndpoint {
                broker_id: *id,
                host: host.to_string(),
                port: *port,
            })
            .collect()
    }

    fn summary(results: &[EndpointReach]) -> Vec<String> {
        results
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.broker_id,
                    r.endpoint,
                    r.failure.map(Failure::reason).unwrap_or("ok")
                )
            })
            .collect()
    }

    const CLUSTER: &[(i32, &str, u16)] = &[(1, "b1.c", 9092), (2, "b2.c", 9092)];

    #[test]
    fn a_healthy_cluster_is_reachable_broker_by_broker() {
        let network = FakeNetwork::default()
            .name("b1.c", "198.18.0.11:0")
            .name("b2.c", "198.18.0.12:0")
            .broker("198.18.0.11:9092", CLUSTER)
            .broker("198.18.0.12:9092", CLUSTER);
        let results = check(&network, &spec(CLUSTER));
        assert_eq!(summary(&results), ["1 b1.c:9092 ok", "2 b2.c:9092 ok"]);
        assert!(
            results[0].detail.contains("198.18.0.11:9092"),
            "{}",
            results[0].detail
        );
    }

    #[test]
    fn brokers_reporting_one_id_everywhere_are_told_apart_by_endpoint() {
        // tansu: every broker is node 111 and knows only itself.
        let network = FakeNetwork::default()
            .broker("198.18.0.11:9092", &[(111, "198.18.0.11", 9092)])
            .broker("198.18.0.12:9092", &[(111, "198.18.0.12", 9092)]);
        let bootstrap = spec(&[(1, "198.18.0.11", 9092), (2, "198.18.0.12", 9092)]);
        assert_eq!(
            summary(&check(&network, &bootstrap)),
            ["1 198.18.0.11:9092 ok", "2 198.18.0.12:9092 ok"]
        );
    }

    #[test]
    fn each_failure_is_named() {
        // b1's name is missing from the hosts file; b2 is filtered; b3 is down.
        let network = FakeNetwork::default()
            .name("b2.c", "198.19.0.12:0")
            .name("b3.c", "198.19.0.13:0")
            .name("b4.c", "198.19.0.14:0")
            .broker(
                "198.19.0.10:9093",
                &[
                    (1, "b1.c", 9093),
                    (2, "b2.c", 9093),
                    (3, "b3.c", 9093),
                    (4, "b4.c", 9093),
                ],
            )
            .fails("198.19.0.12:9093", io::ErrorKind::TimedOut)
            .fails("198.19.0.14:9093", io::ErrorKind::HostUnreachable);
        let bootstrap = spec(&[(9, "198.19.0.10", 9093)]);
        let results = check(&network, &bootstrap);
        assert_eq!(
            summary(&results),
            [
                "1 b1.c:9093 does not resolve",
                "2 b2.c:9093 timed out",
                "3 b3.c:9093 refused",
                "4 b4.c:9093 no route",
                // The bootstrap address answers, but the broker there does not advertise itself
                // at it: whoever is there, it is not the spec's broker 9.
                "9 198.19.0.10:9093 wrong broker",
            ]
        );
        assert!(
            results[0].detail.contains("b1.c does not resolve"),
            "{}",
            results[0].detail
        );
        assert!(
            results[1].detail.contains("198.19.0.12:9093"),
            "{}",
            results[1].detail
        );
    }

    #[test]
    fn a_name_mapped_to_another_broker_is_the_wrong_broker() {
        // A stale hosts entry maps b1's name to b2's address; b2 knows only itself (tansu).
        let network = FakeNetwork::default()
            .name("b1.c", "198.18.0.12:0")
            .name("b2.c", "198.18.0.12:0")
            .broker("198.18.0.12:9092", &[(111, "b2.c", 9092)]);
        let results = check(&network, &spec(CLUSTER));
        assert_eq!(
            summary(&results),
            ["1 b1.c:9092 wrong broker", "2 b2.c:9092 ok"]
        );
        assert!(
            results[0]
                .detail
                .contains("does not advertise b1.c:9092 (it lists broker 111 at b2.c:9092)"),
            "{}",
            results[0].detail
        );
        // A cluster that lists everyone advertises broker 2 at b2.c, but the name leads to
        // another cluster's broker 5.
        let network = FakeNetwork::default()
            .name("b1.c", "198.18.0.11:0")
            .name("b2.c", "198.18.0.99:0")
            .broker("198.18.0.11:9092", CLUSTER)
            .broker("198.18.0.99:9092", &[(5, "b2.c", 9092)]);
        let results = check(&network, &spec(&CLUSTER[..1]));
        assert_eq!(
            summary(&results),
            ["1 b1.c:9092 ok", "2 b2.c:9092 wrong broker"]
        );
        assert!(
            results[1]
                .detail
                .contains("broker 5 is there, but the metadata lists broker 2 at b2.c:9092"),
            "{}",
            results[1].detail
        );
    }

    #[test]
    fn an_unreachable_bootstrap_reports_its_own_failure_per_broker() {
        let network = FakeNetwork::default()
            .name("b1.c", "198.18.0.11:0")
            .fails("198.18.0.11:9092", io::ErrorKind::TimedOut);
        let results = check(&network, &spec(CLUSTER));
        assert_eq!(
            summary(&results),
            ["1 b1.c:9092 timed out", "2 b2.c:9092 does not resolve"]
        );
        assert!(
            results[0].detail.starts_with("bootstrap through b1.c:9092"),
            "{}",
            results[0].detail
        );
    }

    #[test]
    fn endpoints_already_probed_at_bootstrap_are_not_connected_again() {
        let network = FakeNetwork::default()
            .broker(
                "198.18.0.11:9092",
                &[(1, "198.18.0.11", 9092), (2, "198.18.0.12", 9092)],
            )
            .broker(
                "198.18.0.12:9092",
                &[(1, "198.18.0.11", 9092), (2, "198.18.0.12", 9092)],
            );
        let bootstrap = spec(&[(1, "198.18.0.11", 9092), (2, "198.18.0.12", 9092)]);
        assert!(check(&network, &bootstrap).iter().all(EndpointReach::ok));
        assert_eq!(network.connects.lock().unwrap().len(), 2);
    }

    #[test]
    fn connect_errors_are_classified_by_kind_and_errno() {
        let io = |error: io::Error| classify_connect(&ConnectError::Io(error));
        assert_eq!(
            io(io::ErrorKind::ConnectionRefused.into()),
            Failure::Refused
        );
        assert_eq!(io(io::ErrorKind::TimedOut.into()), Failure::TimedOut);
        assert_eq!(
            io(io::Error::from_raw_os_error(libc::EHOSTUNREACH)),
            Failure::NoRoute
        );
        assert_eq!(
            io(io::Error::from_raw_os_error(libc::ENETUNREACH)),
            Failure::NoRoute
        );
        assert_eq!(
            io(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            Failure::Refused
        );
        assert_eq!(
            io(io::Error::from_raw_os_error(libc::EPERM)),
            Failure::CannotConnect
        );
        assert_eq!(
            classify_connect(&ConnectError::Kafka("closed during ApiVersions".into())),
            Failure::NotKafka
        );
    }

    #[test]
    fn the_real_network_classifies_a_refused_loopback_port() {
        // A port that was just free: nothing listens, so the kernel refuses at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let network = SystemNetwork {
            timeout: CONNECT_TIMEOUT,
            tls: None,
            sasl: None,
        };
        let results = check(&network, &spec(&[(1, "127.0.0.1", port)]));
        assert_eq!(results[0].failure, Some(Failure::Refused), "{results:?}");
        assert!(
            results[0].detail.contains(&format!("127.0.0.1:{port}")),
            "{results:?}"
        );
    }
}
