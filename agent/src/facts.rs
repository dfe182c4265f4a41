//! Host facts reported to the coordinator: hostname, FQDN, addresses, whether Kafka runs here.
//!
//! Owns reading them from the OS ([`gather`]) and the pure decisions over what was read
//! ([`facts_from`], [`fqdn`], [`is_kafka_process`]), which are unit-tested without a host. It does
//! not decide anything from the facts: the coordinator compares them with the spec (a `private_ip`
//! that is not one of the host's addresses, a broker node where no Kafka runs).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use kreach_domain::desired::NodeRole;

use crate::reconciler::AppliedWatch;
use crate::verify::KafkaProbe;

/// What the agent reports about its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub fqdn: String,
    /// Every interface address except loopback, sorted, without duplicates.
    pub addresses: Vec<String>,
    pub kafka_running: bool,
    /// Whether this broker is the active controller: `manage.controller_check` when configured,
    /// else the Kafka probe's answer (see [`use_kafka_probe_for_controller`]).
    pub kafka_controller: bool,
}

/// What [`facts_from`] decides over, as read from the OS.
#[derive(Debug, Clone, Default)]
pub struct RawFacts {
    pub hostname: String,
    /// The hosts file's text (empty when unreadable).
    pub hosts_file: String,
    /// Every interface address, loopback included.
    pub addresses: Vec<IpAddr>,
    /// Every process: its name and its command line joined with spaces.
    pub processes: Vec<(String, String)>,
    /// What the controller check said (false when there is none).
    pub controller: bool,
}

/// Decide the facts from what was read. Pure.
pub fn facts_from(raw: &RawFacts) -> HostFacts {
    let addresses: BTreeSet<IpAddr> = raw
        .addresses
        .iter()
        .copied()
        .filter(|address| !address.is_loopback())
        .collect();
    let addresses: Vec<IpAddr> = addresses.into_iter().collect();
    HostFacts {
        hostname: raw.hostname.clone(),
        fqdn: fqdn(&raw.hostname, &raw.hosts_file, &addresses),
        addresses: addresses.iter().map(IpAddr::to_string).collect(),
        kafka_running: raw
            .processes
            .iter()
            .any(|(name, command_line)| is_kafka_process(name, command_line)),
        kafka_controller: raw.controller,
    }
}

/// The host's fully qualified name, best effort and without DNS (a resolver that hangs must not
/// stall the agent, and DNS may not know the host at all):
/// 1. the hostname itself when it already contains a dot;
/// 2. else the canonical (first) name of a hosts-file line that lists the hostname as an alias and
///    whose canonical name is `hostname.` + domain — what `hostname -f` finds on a typical
///    `127.0.1.1 host.example.com host` line;
/// 3. else the first dotted canonical name of a hosts-file line for one of the host's
///    non-loopback addresses;
/// 4. else the hostname.
pub fn fqdn(hostname: &str, hosts_file: &str, addresses: &[IpAddr]) -> String {
    if hostname.contains('.') || hostname.is_empty() {
        return hostname.to_string();
    }
    let lines: Vec<(IpAddr, Vec<&str>)> = hosts_file
        .lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let address = fields.next()?.parse().ok()?;
            let names: Vec<&str> = fields.collect();
            (!names.is_empty()).then_some((address, names))
        })
        .collect();
    let prefix = format!("{}.", hostname.to_ascii_lowercase());
    let by_alias = lines.iter().find_map(|(_, names)| {
        let canonical = names[0];
        let lists_hostname = names.iter().any(|name| name.eq_ignore_ascii_case(hostname));
        (lists_hostname && canonical.to_ascii_lowercase().starts_with(&prefix)).then_some(canonical)
    });
    let by_address = || {
        lines.iter().find_map(|(address, names)| {
            (addresses.contains(address) && names[0].contains('.')).then_some(names[0])
        })
    };
    by_alias.or_else(by_address).unwrap_or(hostname).to_string()
}

/// A Kafka broker: the JVM running `kafka.Kafka`, or a process named `kafka` or `tansu`.
pub fn is_kafka_process(name: &str, command_line: &str) -> bool {
    name == "kafka" || name == "tansu" || command_line.contains("kafka.Kafka")
}

/// The applied state (as the reconciler holds it) whose broker listeners the Kafka probe asks who
/// the controller is. Set once by the daemon when `manage.probe = "kafka"` on a broker; a
/// process-wide setting because [`gather`]'s callers pass only the hosts file and the explicit
/// controller check.
static KAFKA_CONTROLLER_APPLIED: OnceLock<AppliedWatch> = OnceLock::new();

/// Detect the controller with the Kafka probe when no `manage.controller_check` is configured.
pub fn use_kafka_probe_for_controller(applied: AppliedWatch) {
    let _ = KAFKA_CONTROLLER_APPLIED.set(applied);
}

/// Read the facts from this host. Blocking (a walk over /proc, a Kafka probe); call it off the
/// async runtime. `hosts_file` is the file the agent manages, which is the resolver's hosts file
/// on a real host. An explicit `controller_check` overrides the Kafka probe.
pub fn gather(hosts_file: &Path, controller_check: Option<&[String]>) -> HostFacts {
    let controller = match controller_check {
        Some(argv) => run_controller_check(argv),
        None => KAFKA_CONTROLLER_APPLIED
            .get()
            .and_then(|applied| applied.borrow().clone())
            .is_some_and(|applied| kafka_controller(&applied)),
    };
    facts_from(&RawFacts {
        controller,
        hostname: nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        hosts_file: std::fs::read_to_string(hosts_file).unwrap_or_default(),
        addresses: interface_addresses(),
        processes: processes(),
    })
}

/// Ask this broker, on the listeners it last applied, whether it is the active controller.
fn kafka_controller(applied: &crate::state::AppliedState) -> bool {
    let (NodeRole::Broker { id }, Some(settings)) =
        (&applied.node_spec.role, &applied.node_spec.listeners)
    else {
        return false;
    };
    let probe = KafkaProbe {
        request_timeout: std::time::Duration::from_secs(3),
        ..KafkaProbe::default()
    };
    match probe.controller(*id, &settings.listeners) {
        Some((is_controller, detail)) => {
            tracing::debug!(node = %applied.node_spec.node, "{detail}");
            is_controller
        }
        None => {
            tracing::debug!(node = %applied.node_spec.node, "controller: no plaintext listener answered Metadata");
            false
        }
    }
}

/// Run the configured controller check: exit 0 means "this broker is the active controller". It
/// is killed after 5 s (a check that hangs answers "no").
fn run_controller_check(argv: &[String]) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        tracing::warn!(command = %program, "cannot run manage.controller_check");
        return false;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(command = %program, "manage.controller_check did not finish within 5 s");
                return false;
            }
        }
    }
}

fn interface_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// Every process: its name (`/proc/PID/comm`) and its command line joined with spaces; only
/// what [`is_kafka_process`] looks at. Two small reads per process and nothing else: no thread
/// lists, no memory or CPU figures (a general process-table library read several files per process
/// and every process's task directory, which made the facts timer most of a connected agent's idle
/// CPU). Processes that exit meanwhile are skipped.
fn processes() -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| {
            let dir = entry.path();
            let name = std::fs::read(dir.join("comm")).ok()?;
            let command_line = std::fs::read(dir.join("cmdline")).ok()?;
            Some((
                String::from_utf8_lossy(&name).trim_end().to_string(),
                command_line_text(&command_line),
            ))
        })
        .collect()
}

/// `/proc/PID/cmdline` (arguments separated by NULs) as one line, arguments joined with spaces.
fn command_line_text(raw: &[u8]) -> String {
    raw.split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_table_finds_this_test_and_reads_command_lines() {
        assert_eq!(
            command_line_text(b"java\0-cp\0/opt/kafka/libs/*\0kafka.Kafka\0server.properties\0"),
            "java -cp /opt/kafka/libs/* kafka.Kafka server.properties"
        );
        assert_eq!(command_line_text(b""), "");
        let own = std::process::id().to_string();
        let exe = std::env::args().next().unwrap_or_default();
        let processes = processes();
        assert!(processes.len() > 1);
        assert!(
            processes
                .iter()
                .any(|(_, command_line)| command_line.starts_with(&exe)),
            "this test process ({own}, {exe}) is in the table"
        );
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_addresses_are_left_out_and_the_rest_sorted_once() {
        let raw = RawFacts {
            hostname: "etl-1".into(),
            addresses: vec![
                ip("127.0.0.1"),
                ip("10.0.1.9"),
                ip("::1"),
                ip("fe80::1"),
                ip("10.0.1.5"),
                ip("10.0.1.9"),
            ],
            ..RawFacts::default()
        };
        assert_eq!(
            facts_from(&raw).addresses,
            vec!["10.0.1.5", "10.0.1.9", "fe80::1"]
        );
    }

    #[test]
    fn fqdn_prefers_a_dotted_hostname_then_the_alias_line_then_an_address_line() {
        let hosts = "127.0.0.1 localhost\n\
                     # 127.0.1.1 etl-1.commented.example etl-1\n\
                     10.0.1.5 emr-worker-1.cluster-48742 emr-worker-1\n\
                     127.0.1.1 etl-1.corp.example etl-1\n";
        assert_eq!(fqdn("etl-1.dc.example", hosts, &[]), "etl-1.dc.example");
        assert_eq!(
            fqdn("etl-1", hosts, &[ip("10.0.1.5")]),
            "etl-1.corp.example"
        );
        assert_eq!(
            fqdn(
                "emr-worker-1",
                "10.0.1.5 emr-worker-1.cluster-48742 emr-worker-1\n",
                &[]
            ),
            "emr-worker-1.cluster-48742"
        );
        assert_eq!(
            fqdn(
                "host-a",
                "10.0.1.5 node5.cluster-48742 node5\n",
                &[ip("10.0.1.5")]
            ),
            "node5.cluster-48742"
        );
        // A line for another host's address, or an undotted name, is not ours.
        assert_eq!(
            fqdn(
                "host-a",
                "10.0.1.6 node6.cluster-48742\n10.0.1.5 node5\n",
                &[ip("10.0.1.5")]
            ),
            "host-a"
        );
        assert_eq!(fqdn("etl-1", "", &[]), "etl-1");
    }

    #[test]
    fn kafka_is_the_kafka_main_class_or_a_kafka_or_tansu_process() {
        let java =
            "/usr/bin/java -Xmx1G -cp /opt/kafka/libs/* kafka.Kafka /etc/kafka/server.properties";
        assert!(is_kafka_process("java", java));
        assert!(is_kafka_process("kafka", "/usr/local/bin/kafka"));
        assert!(is_kafka_process("tansu", "tansu broker"));
        assert!(!is_kafka_process("java", "java -jar zookeeper.jar"));
        assert!(!is_kafka_process(
            "kafka-console-c",
            "kafka-console-consumer.sh"
        ));
        let raw = RawFacts {
            hostname: "b".into(),
            processes: vec![("bash".into(), "bash".into()), ("java".into(), java.into())],
            ..RawFacts::default()
        };
        assert!(facts_from(&raw).kafka_running);
        assert!(!facts_from(&RawFacts::default()).kafka_running);
    }
}
