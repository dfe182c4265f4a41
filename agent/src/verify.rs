//! Health checks after a restart: does every listener accept TCP connections?
//!
//! Owns the local, protocol-free check. Kafka-aware probes (ApiVersions, Metadata) come later and
//! plug in behind the same [`ListenerProbe`] seam.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use kreach_common::properties::ListenerSpec;

/// The seam between the engine and the network, so the engine's unit tests need no listeners.
pub trait ListenerProbe: Send + Sync {
    /// Ok when every listener accepts a connection before `timeout`; otherwise the reason, naming
    /// the listener and the address that failed.
    fn verify(&self, listeners: &[ListenerSpec], timeout: Duration) -> Result<Vec<String>, String>;
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
    fn verify(&self, listeners: &[ListenerSpec], timeout: Duration) -> Result<Vec<String>, String> {
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
                        passed.push(format!(
                            "{} accepts connections on {address}",
                            listener.name
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
            .verify(&[listener("INTERNAL", open_port)], Duration::from_secs(1))
            .unwrap();
        assert_eq!(passed.len(), 1);
        let error = TcpProbe
            .verify(
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
