//! The EXTERNAL filter for real: nftables inside network namespaces this test creates.
//!
//! Three namespaces: a broker host with a listener on the EXTERNAL port, and two client hosts
//! wired to it by veth pairs, one inside `allow` and one outside. The agent's firewall code runs
//! in the broker's namespace (this test binary re-executed under `ip netns exec`), so the machine's
//! own ruleset is never touched. Needs root and `nft`; fails without them unless the e2e-net tier is
//! opted out (`KREACH_SKIP=e2e-net`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kreach_agent::firewall;
use kreach_agent::reach::{classify_connect, ConnectError};
use kreach_domain::desired::ExternalFilter;

const HELPER_ENV: &str = "KREACH_FIREWALL_TEST_HELPER";
const PORT: u16 = 19093;
const BROKER_FOR_ALLOWED: &str = "198.18.0.1";
const ALLOWED: &str = "198.18.0.2";
const BROKER_FOR_OTHER: &str = "198.18.1.1";
const OTHER: &str = "198.18.1.2";

/// Runs only when re-executed by the test below, inside a namespace; otherwise does nothing.
#[test]
fn netns_helper() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    match mode.as_str() {
        "enforce" => {
            let allow = std::env::var("KREACH_ALLOW").unwrap();
            let filter = (!allow.is_empty()).then(|| ExternalFilter {
                port: PORT,
                allow: allow.split(',').map(|cidr| cidr.parse().unwrap()).collect(),
            });
            match firewall::enforce(Path::new(firewall::NFT), filter.as_ref()) {
                Ok(check) => println!("RESULT: ok: {check}"),
                Err(error) => println!("RESULT: error: {error}"),
            }
        }
        "repair" => {
            let config = kreach_agent::config::AgentConfig::parse(
                "node = \"w1\"\n[manage]\nfirewall = \"nftables\"\n",
            )
            .unwrap();
            let spec = kreach_domain::spec::ClusterSpec::parse(&format!(
                "[cluster]\nname = \"c\"\n[listeners.external]\nport = {PORT}\nallow = [\"{ALLOWED}/32\"]\n\
                 [[broker]]\nid = 1\nnode = \"w1\"\nprivate_ip = \"{BROKER_FOR_ALLOWED}\"\npublic_ip = \"{BROKER_FOR_OTHER}\"\n"
            ))
            .unwrap();
            let node = kreach_domain::desired::node_spec(&spec, "w1").unwrap();
            match firewall::repair(&config, &firewall::Nft::default(), &node) {
                Ok(Some(check)) => println!("RESULT: repaired: {check}"),
                Ok(None) => println!("RESULT: nothing to repair"),
                Err(error) => println!("RESULT: error: {error}"),
            }
        }
        "listen" => {
            let listener = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
            listener.set_nonblocking(true).unwrap();
            println!("RESULT: listening");
            // Bounded: the test kills it by PID long before this.
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        "connect" => {
            let target: SocketAddr = std::env::var("KREACH_TARGET").unwrap().parse().unwrap();
            match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(_) => println!("RESULT: connected"),
                Err(error) => println!(
                    "RESULT: {}",
                    classify_connect(&ConnectError::Io(error)).reason()
                ),
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}

/// The namespaces and the listener, removed in every exit path (Drop runs on panic too).
struct Hosts {
    prefix: String,
    listener: Option<Child>,
}

impl Hosts {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Some(mut child) = self.listener.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in ["broker", "inside", "outside"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .output();
        }
    }
}

fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn in_ns(hosts: &Hosts, host: &str, command: &str) {
    let ns = hosts.ns(host);
    let mut args = vec!["ip", "netns", "exec", &ns];
    args.extend(command.split_whitespace());
    run(&args);
}

/// Re-execute this test binary's helper inside `host`'s namespace; its RESULT line.
fn helper(hosts: &Hosts, host: &str, mode: &str, env: &[(&str, &str)]) -> String {
    let output = helper_command(hosts, host, mode, env).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.split_once("RESULT: ").map(|(_, result)| result))
        .unwrap_or_else(|| {
            panic!(
                "helper {mode} in {host} printed no result: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string()
}

fn helper_command(hosts: &Hosts, host: &str, mode: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &hosts.ns(host)])
        .arg(std::env::current_exe().unwrap())
        .args([
            "netns_helper",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HELPER_ENV, mode);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

fn connect(hosts: &Hosts, from: &str, to: &str) -> String {
    helper(
        hosts,
        from,
        "connect",
        &[("KREACH_TARGET", &format!("{to}:{PORT}"))],
    )
}

fn enforce(hosts: &Hosts, allow: &str) -> String {
    helper(hosts, "broker", "enforce", &[("KREACH_ALLOW", allow)])
}

#[test]
fn only_allowed_sources_reach_the_external_port_and_nothing_else_is_touched() {
    use kreach_test_parts::{require, Missing, Tier};
    let test = "only_allowed_sources_reach_the_external_port_and_nothing_else_is_touched";
    if !kreach_test_parts::require_root(Tier::E2eNet, test) {
        return;
    }
    let no_nft = Command::new(firewall::NFT)
        .arg("--version")
        .output()
        .is_err();
    if !require(
        Tier::E2eNet,
        test,
        no_nft.then(|| Missing::new("nft is not installed", "apt-get install -y nftables")),
    ) {
        return;
    }
    let mut hosts = Hosts {
        prefix: format!("kreach-fw-{}", std::process::id()),
        listener: None,
    };
    for host in ["broker", "inside", "outside"] {
        run(&["ip", "netns", "add", &hosts.ns(host)]);
        in_ns(&hosts, host, "ip link set lo up");
    }
    let (broker, inside, outside) = (hosts.ns("broker"), hosts.ns("inside"), hosts.ns("outside"));
    run(&[
        "ip", "link", "add", "eth0", "netns", &inside, "type", "veth", "peer", "name", "eth0",
        "netns", &broker,
    ]);
    run(&[
        "ip", "link", "add", "eth0", "netns", &outside, "type", "veth", "peer", "name", "eth1",
        "netns", &broker,
    ]);
    for (host, device, address) in [
        ("broker", "eth0", BROKER_FOR_ALLOWED),
        ("broker", "eth1", BROKER_FOR_OTHER),
        ("inside", "eth0", ALLOWED),
        ("outside", "eth0", OTHER),
    ] {
        in_ns(
            &hosts,
            host,
            &format!("ip addr add {address}/24 dev {device}"),
        );
        in_ns(&hosts, host, &format!("ip link set {device} up"));
    }
    // Someone else's table on the broker host: kreach must leave it alone.
    in_ns(&hosts, "broker", "nft add table inet operator");
    in_ns(&hosts, "broker", "nft add chain inet operator keep");

    let mut listener = helper_command(&hosts, "broker", "listen", &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    hosts.listener = Some(listener);
    assert!(
        lines.any(|line| line.unwrap().contains("RESULT: listening")),
        "the listener did not start"
    );

    // Without a filter both sources connect.
    assert_eq!(connect(&hosts, "inside", BROKER_FOR_ALLOWED), "connected");
    assert_eq!(connect(&hosts, "outside", BROKER_FOR_OTHER), "connected");

    let check = enforce(&hosts, &format!("{ALLOWED}/32"));
    assert!(
        check.starts_with("ok: firewall: nftables table inet kreach drops tcp/19093"),
        "{check}"
    );
    assert_eq!(connect(&hosts, "inside", BROKER_FOR_ALLOWED), "connected");
    assert_eq!(
        connect(&hosts, "outside", BROKER_FOR_OTHER),
        "timed out",
        "a source outside allow is dropped"
    );

    // Applying again replaces the table (no duplicate rules); a wider allow lets both in.
    enforce(&hosts, &format!("{ALLOWED}/32"));
    let listing = run(&[
        "ip", "netns", "exec", &broker, "nft", "list", "table", "inet", "kreach",
    ]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(listing.matches("ip saddr != ").count(), 1, "{listing}");
    enforce(&hosts, "198.18.0.0/15");
    assert_eq!(connect(&hosts, "outside", BROKER_FOR_OTHER), "connected");

    // IPv6 CIDRs get their own rule next to the IPv4 one.
    let both = enforce(&hosts, "198.18.0.0/15,2001:db8::/32");
    assert!(both.starts_with("ok:"), "{both}");
    assert_eq!(connect(&hosts, "outside", BROKER_FOR_OTHER), "connected");

    // Someone flushes the ruleset (or the host rebooted): the agent's repair puts the filter back.
    enforce(&hosts, &format!("{ALLOWED}/32"));
    assert_eq!(helper(&hosts, "broker", "repair", &[]), "nothing to repair");
    in_ns(&hosts, "broker", "nft delete table inet kreach");
    assert_eq!(connect(&hosts, "outside", BROKER_FOR_OTHER), "connected");
    let repaired = helper(&hosts, "broker", "repair", &[]);
    assert!(
        repaired.starts_with("repaired: firewall: nftables table inet kreach"),
        "{repaired}"
    );
    assert_eq!(connect(&hosts, "outside", BROKER_FOR_OTHER), "timed out");

    // Public access disabled: the table goes, everyone connects, the operator's table stays.
    enforce(&hosts, &format!("{ALLOWED}/32"));
    assert_eq!(connect(&hosts, "outside", BROKER_FOR_OTHER), "timed out");
    let removed = enforce(&hosts, "");
    assert!(removed.contains("table inet kreach removed"), "{removed}");
    assert_eq!(connect(&hosts, "outside", BROKER_FOR_OTHER), "connected");
    let tables = run(&["ip", "netns", "exec", &broker, "nft", "list", "tables"]);
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(tables.contains("table inet operator"), "{tables}");
    assert!(!tables.contains("kreach"), "{tables}");
    // Removing what is not there is fine.
    assert!(enforce(&hosts, "").starts_with("ok:"));
}
