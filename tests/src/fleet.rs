//! A fleet on one machine: a real `kreach-coordinator` and real `kreach-agent run` processes over
//! real TCP on loopback, each agent on its own sandbox directory, brokers served by the stand-in
//! Kafka (examples/quickstart/fake-kafka.py) that records every restart's start and end.
//!
//! Brokers get their own loopback addresses (127.0.N.id) and bind their listeners there
//! (`bind = "private_ip"`), so three "brokers" share one machine without sharing a port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::artifacts::build_artifact;

pub const FAKE_KAFKA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/quickstart/fake-kafka.py"
);

pub fn agent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        build_artifact(
            &["-p", "kreach-agent", "--bin", "kreach-agent"],
            "kreach-agent",
        )
        .unwrap()
    })
}

pub fn coordinator_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        build_artifact(
            &["-p", "kreach-coordinator", "--bin", "kreach-coordinator"],
            "kreach-coordinator",
        )
        .unwrap()
    })
}

pub fn kreachctl_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        build_artifact(
            &["-p", "kreach-coordinator", "--bin", "kreachctl"],
            "kreachctl",
        )
        .unwrap()
    })
}

/// A child process whose stderr is collected; killed (by its pid) when dropped.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(command: &mut Command) -> Result<Proc> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("KREACH_LOG", "info")
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Ok(Proc { child, log })
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Wait until the log contains `needle`; returns the log line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|line| line.contains(needle)) {
                return Ok(line.to_string());
            }
            if Instant::now() > deadline {
                bail!(
                    "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has ended (does not wait).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait at most `timeout` for the process to end on its own; None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One restart of a broker's Kafka, as the stand-in recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub start_ns: u128,
    pub end_ns: u128,
    pub ok: bool,
}

pub struct Broker {
    pub id: u32,
    pub node: String,
    pub ip: String,
    pub dir: PathBuf,
}

impl Broker {
    pub fn properties_path(&self) -> PathBuf {
        self.dir.join("etc/kafka/server.properties")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn restarts(&self) -> Vec<Restart> {
        std::fs::read_to_string(self.state_dir().join("restarts.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some(Restart {
                    start_ns: parts.next()?.parse().ok()?,
                    end_ns: parts.next()?.parse().ok()?,
                    ok: parts.next()? == "ok",
                })
            })
            .collect()
    }
    pub fn properties(&self) -> String {
        std::fs::read_to_string(self.properties_path()).unwrap_or_default()
    }
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    /// The third octet of this fleet's loopback addresses, so fleets in parallel tests never meet.
    pub net: u8,
    pub port: u16,
    pub coordinator_addr: String,
    pub coordinator: Option<Proc>,
    pub brokers: Vec<Broker>,
    pub clients: Vec<(String, PathBuf)>,
    /// Each client's view in the spec ("private" or "public").
    pub views: BTreeMap<String, String>,
    pub agents: BTreeMap<String, Proc>,
    /// The brokers' `[manage] probe` ("tcp" unless a test asks for "kafka": the stand-in Kafka
    /// answers ApiVersions, Metadata and IncrementalAlterConfigs, enough for key store reloads).
    pub probe: &'static str,
    /// More coordinator.toml (whole sections, e.g. `[metrics]`), appended as written.
    pub coordinator_extra: String,
    /// More agent.toml for every agent (whole sections), appended as written.
    pub agent_extra: String,
    /// An agent's `labels` (key: its node), as the inline table's inside: `role = "etl"`.
    pub labels: BTreeMap<String, String>,
    /// Clients the spec does not list (members of a client group, or hosts no group selects).
    pub unlisted: std::collections::BTreeSet<String>,
    /// Clients whose agent `start_agents` configures but does not start (`restart_agent` does).
    pub idle: std::collections::BTreeSet<String>,
    /// Extra environment for the coordinator (key "coordinator") or one agent (key: its node), set
    /// before it starts; e.g. to run it under a faked clock.
    pub env: BTreeMap<String, Vec<(String, String)>>,
    /// A command put in front of a broker's restart command (key: its node), e.g. `sh -c '"$@" &&
    /// sleep 2' sh` to keep a restart in progress for a while.
    pub restart_wrapper: BTreeMap<String, Vec<String>>,
    /// `KREACH_CLUSTER` for this fleet's kreachctl runs: needed once its coordinator holds
    /// several clusters.
    pub cluster: Option<String>,
    /// Several coordinators (`http://host:port` each) instead of `coordinator_addr`'s one: the
    /// agents' `url` list and kreachctl's `--coordinator` list.
    pub coordinator_urls: Vec<String>,
}

pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    fn from_output(output: std::process::Output) -> Ctl {
        Ctl {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Fleet {
    /// The `labels = { .. }` line of `node`'s agent.toml, or nothing.
    fn labels_line(&self, node: &str) -> String {
        self.labels
            .get(node)
            .map(|labels| format!("labels = {{ {labels} }}\n"))
            .unwrap_or_default()
    }

    /// `brokers` brokers (ids 1.., nodes `emr-worker-ID`) and the given clients (node, view).
    /// Nothing runs yet.
    pub fn new(net: u8, brokers: u32, clients: &[(&str, &str)]) -> Result<Fleet> {
        Fleet::with_broker_prefix(net, "emr-worker", brokers, clients)
    }

    /// [`Fleet::new`] with the brokers' nodes named `PREFIX-ID` (two fleets on one coordinator
    /// need distinct node names).
    pub fn with_broker_prefix(
        net: u8,
        prefix: &str,
        brokers: u32,
        clients: &[(&str, &str)],
    ) -> Result<Fleet> {
        let dir = tempfile::tempdir()?;
        // One port number for all brokers' INTERNAL listeners (their addresses differ).
        let port = {
            let probe = std::net::TcpListener::bind((format!("127.0.{net}.1").as_str(), 0))?;
            probe.local_addr()?.port()
        };
        let mut fleet = Fleet {
            dir,
            net,
            port,
            coordinator_addr: String::new(),
            coordinator: None,
            brokers: Vec::new(),
            clients: Vec::new(),
            agents: BTreeMap::new(),
            probe: "tcp",
            coordinator_extra: String::new(),
            agent_extra: String::new(),
            labels: BTreeMap::new(),
            unlisted: Default::default(),
            idle: Default::default(),
            views: BTreeMap::new(),
            env: BTreeMap::new(),
            restart_wrapper: BTreeMap::new(),
            cluster: None,
            coordinator_urls: Vec::new(),
        };
        for id in 1..=brokers {
            let node = format!("{prefix}-{id}");
            let ip = format!("127.0.{net}.{id}");
            let dir = fleet.dir.path().join(&node);
            std::fs::create_dir_all(dir.join("etc/kafka"))?;
            std::fs::create_dir_all(dir.join("state"))?;
            std::fs::write(dir.join("etc/hosts"), "127.0.0.1\tlocalhost\n")?;
            std::fs::write(
                dir.join("etc/kafka/server.properties"),
                format!(
                    "# KRaft broker {id}\nnode.id={id}\nprocess.roles=broker,controller\ncontroller.listener.names=CONTROLLER\n\
                     listeners=INTERNAL://{ip}:{p},CONTROLLER://{ip}:{c}\n\
                     advertised.listeners=INTERNAL://{ip}:{p}\n\
                     listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                     inter.broker.listener.name=INTERNAL\n",
                    p = port,
                    c = port + 2
                ),
            )?;
            fleet.brokers.push(Broker { id, node, ip, dir });
        }
        for (node, _view) in clients {
            let dir = fleet.dir.path().join(node);
            std::fs::create_dir_all(dir.join("etc"))?;
            std::fs::create_dir_all(dir.join("state"))?;
            std::fs::write(dir.join("etc/hosts"), "127.0.0.1\tlocalhost\n")?;
            fleet.clients.push((node.to_string(), dir));
            fleet.views.insert(node.to_string(), _view.to_string());
        }
        Ok(fleet)
    }

    pub fn spec(&self, options: &FleetSpec) -> String {
        let net = self.net;
        let mut text = format!(
            "[cluster]\nname = \"fleet-{net}\"\n\n[listeners.internal]\nport = {}\nbind = \"private_ip\"\nadvertise = {:?}\n",
            self.port,
            if options.hostnames { "hostname" } else { "private_ip" }
        );
        if options.external {
            text += &format!(
                "\n[listeners.external]\nport = {}\nbind = \"private_ip\"\nadvertise = {:?}\nallow = [\"198.19.0.0/24\"]\nsecurity_protocol = {:?}\n",
                self.port + 1,
                if options.hostnames { "hostname" } else { "public_ip" },
                options.external_protocol
            );
        }
        for broker in &self.brokers {
            text += &format!(
                "\n[[broker]]\nid = {}\nnode = \"{}\"\nhostname = \"{}.fleet-{net}\"\nprivate_ip = \"{}\"\npublic_ip = \"198.19.{net}.{}\"\n",
                broker.id,
                broker.node,
                broker.node,
                broker.ip,
                broker.id + options.public_ip_offset
            );
        }
        for (node, _) in self
            .clients
            .iter()
            .filter(|(n, _)| !self.unlisted.contains(n))
        {
            let view = self.views.get(node).map_or("private", String::as_str);
            text += &format!("\n[[client]]\nnode = \"{node}\"\nview = \"{view}\"\n");
        }
        text += &format!(
            "\n[rollout]\nmax_unavailable = {}\nhealth_timeout = \"{}\"\nsettle = \"{}\"\n",
            options.max_unavailable, options.health_timeout, options.settle
        );
        if let Some(tls) = options.tls {
            text += &format!("\n[tls]\n{tls}\n");
        }
        if let Some(groups) = options.client_groups {
            text += &format!("\n{groups}\n");
        }
        text
    }

    pub fn write_spec(&self, name: &str, options: &FleetSpec) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, self.spec(options))?;
        Ok(path)
    }

    pub fn start_coordinator(&mut self) -> Result<()> {
        let config = self.dir.path().join("coordinator.toml");
        if !config.exists() {
            // Port 0 first time; later starts reuse the port the agents know.
            let listen = if self.coordinator_addr.is_empty() {
                "127.0.0.1:0".to_string()
            } else {
                self.coordinator_addr.clone()
            };
            std::fs::write(
                &config,
                format!(
                    "listen = {listen:?}\nstate_dir = {:?}\n[tls]\ninsecure = true\n{}",
                    self.dir.path().join("coordinator").display().to_string(),
                    self.coordinator_extra
                ),
            )?;
        }
        let mut command = Command::new(coordinator_binary());
        command.arg("--config").arg(&config);
        for (key, value) in self.env.get("coordinator").into_iter().flatten() {
            command.env(key, value);
        }
        let proc = Proc::spawn(&mut command)?;
        let line =
            proc.wait_for_log("kreach-coordinator listening on ", Duration::from_secs(20))?;
        let address = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("address in the log")?
            .to_string();
        if self.coordinator_addr.is_empty() {
            self.coordinator_addr = address.clone();
            std::fs::write(
                &config,
                format!(
                    "listen = {address:?}\nstate_dir = {:?}\n[tls]\ninsecure = true\n{}",
                    self.dir.path().join("coordinator").display().to_string(),
                    self.coordinator_extra
                ),
            )?;
        }
        self.coordinator = Some(proc);
        Ok(())
    }

    /// Start the stand-in Kafka on every broker (its initial config) and every agent.
    pub fn start_agents(&mut self, controller: Option<u32>) -> Result<()> {
        for broker in &self.brokers {
            let status = Command::new("python3")
                .arg(FAKE_KAFKA)
                .arg("restart")
                .arg(broker.properties_path())
                .arg(broker.state_dir())
                .status()?;
            if !status.success() {
                bail!("the stand-in Kafka of {} did not start", broker.node);
            }
            let flag = broker.dir.join("is-controller");
            if controller == Some(broker.id) {
                std::fs::write(&flag, "")?;
            }
            let mut restart = self
                .restart_wrapper
                .get(&broker.node)
                .cloned()
                .unwrap_or_default();
            restart.extend([
                "python3".to_string(),
                FAKE_KAFKA.to_string(),
                "restart".to_string(),
                broker.properties_path().display().to_string(),
                broker.state_dir().display().to_string(),
            ]);
            let config = format!(
                "node = \"{node}\"\nstate_dir = {state:?}\n{labels}[manage]\nhosts_file = {hosts:?}\nkafka_properties = {props:?}\nprobe = {probe:?}\nkafka_tls_dir = {tls:?}\n\
                 controller_check = [\"test\", \"-e\", {flag:?}]\n\
                 [service_manager]\nkind = \"command\"\nrestart = {restart:?}\n\
                 [coordinator]\nurl = {url}\ninsecure = true\nfacts_period = \"1s\"\n",
                node = broker.node,
                labels = self.labels_line(&broker.node),
                state = broker.state_dir().display().to_string(),
                hosts = broker.dir.join("etc/hosts").display().to_string(),
                props = broker.properties_path().display().to_string(),
                tls = broker.dir.join("kafka-tls").display().to_string(),
                flag = flag.display().to_string(),
                url = self.agent_url(),
                probe = self.probe,
            );
            std::fs::write(
                broker.dir.join("agent.toml"),
                format!("{config}{}", self.agent_extra),
            )?;
        }
        for (node, dir) in &self.clients {
            let config = format!(
                "node = \"{node}\"\nstate_dir = {:?}\n{}[manage]\nhosts_file = {:?}\nkafka_ca_dir = {:?}\n[coordinator]\nurl = {}\ninsecure = true\nfacts_period = \"1s\"\n",
                dir.join("state").display().to_string(),
                self.labels_line(node),
                dir.join("etc/hosts").display().to_string(),
                dir.join("kafka-ca").display().to_string(),
                self.agent_url()
            );
            std::fs::write(
                dir.join("agent.toml"),
                format!("{config}{}", self.agent_extra),
            )?;
        }
        let nodes: Vec<(String, PathBuf)> = self
            .brokers
            .iter()
            .map(|b| (b.node.clone(), b.dir.clone()))
            .chain(self.clients.iter().cloned())
            .filter(|(node, _)| !self.idle.contains(node))
            .collect();
        for (node, dir) in nodes {
            self.spawn_agent(&node, &dir)?;
        }
        self.wait_until_online(Duration::from_secs(20))
    }

    /// The agents' `[coordinator] url`, as TOML: one URL, or the list of `coordinator_urls`.
    fn agent_url(&self) -> String {
        if self.coordinator_urls.is_empty() {
            format!("\"http://{}\"", self.coordinator_addr)
        } else {
            format!("{:?}", self.coordinator_urls)
        }
    }

    /// kreachctl's `--coordinator`: one URL, or `coordinator_urls` comma-separated.
    pub fn ctl_url(&self) -> String {
        if self.coordinator_urls.is_empty() {
            format!("http://{}", self.coordinator_addr)
        } else {
            self.coordinator_urls.join(",")
        }
    }

    fn spawn_agent(&mut self, node: &str, dir: &Path) -> Result<()> {
        let mut command = Command::new(agent_binary());
        command
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .arg("run");
        for (key, value) in self.env.get(node).into_iter().flatten() {
            command.env(key, value);
        }
        let proc = Proc::spawn(&mut command)?;
        self.agents.insert(node.to_string(), proc);
        Ok(())
    }

    /// Stop one agent (SIGTERM): its node goes offline.
    pub fn stop_agent(&mut self, node: &str) -> Option<i32> {
        self.agents
            .remove(node)
            .and_then(|mut proc| proc.terminate(Duration::from_secs(10)))
    }

    /// Start a stopped agent again, with the config it had.
    pub fn restart_agent(&mut self, node: &str) -> Result<()> {
        let dir = self
            .brokers
            .iter()
            .map(|b| (b.node.clone(), b.dir.clone()))
            .chain(self.clients.iter().cloned())
            .find(|(name, _)| name == node)
            .map(|(_, dir)| dir)
            .context("no such node")?;
        self.spawn_agent(node, &dir)
    }

    pub fn wait_until_online(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let expected = self.brokers.len() + self.clients.len() - self.idle.len();
        // This fleet's own agents (another fleet's may share the coordinator).
        let own: std::collections::BTreeSet<&str> = self
            .brokers
            .iter()
            .map(|broker| broker.node.as_str())
            .chain(self.clients.iter().map(|(node, _)| node.as_str()))
            .collect();
        loop {
            let status = self.status_json()?;
            let online = status["nodes"]
                .as_array()
                .map(|nodes| {
                    nodes
                        .iter()
                        .filter(|n| n["online"] == true)
                        .filter(|n| n["node"].as_str().is_some_and(|node| own.contains(node)))
                        .count()
                })
                .unwrap_or(0);
            if online == expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {online} of {expected} agents online after {timeout:?}: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Serve this fleet's agents from `other`'s coordinator (not one of its own): two clusters on
    /// one coordinator.
    pub fn share_coordinator(&mut self, other: &Fleet) {
        self.coordinator_addr.clone_from(&other.coordinator_addr);
    }

    pub fn ctl(&self, args: &[&str]) -> Result<Ctl> {
        self.ctl_with_input(args, "")
    }

    /// [`Fleet::ctl`] with `input` on kreachctl's standard input.
    pub fn ctl_with_input(&self, args: &[&str], input: &str) -> Result<Ctl> {
        self.ctl_at_with_input(&self.ctl_url(), args, input)
    }

    /// [`Fleet::ctl`] given `--coordinator url` (one of several coordinators, say).
    pub fn ctl_at(&self, url: &str, args: &[&str]) -> Result<Ctl> {
        self.ctl_at_with_input(url, args, "")
    }

    fn ctl_at_with_input(&self, url: &str, args: &[&str], input: &str) -> Result<Ctl> {
        use std::io::Write as _;
        let mut child = self.ctl_command(url, args).spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
        Ok(Ctl::from_output(child.wait_with_output()?))
    }

    /// [`Fleet::ctl`] started in the background (`apply --wait` across a failover, say).
    pub fn ctl_spawn(&self, args: &[&str]) -> Result<RunningCtl> {
        let child = self
            .ctl_command(&self.ctl_url(), args)
            .stdin(Stdio::null())
            .spawn()?;
        Ok(RunningCtl(Some(child)))
    }

    fn ctl_command(&self, url: &str, args: &[&str]) -> Command {
        let mut command = Command::new(kreachctl_binary());
        if let Some(cluster) = &self.cluster {
            command.env("KREACH_CLUSTER", cluster);
        }
        command
            .arg("--coordinator")
            .arg(url)
            .arg("--insecure")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// `kreachctl apply --yes --force SPEC`, which must succeed (`--force`: these stand-in brokers
    /// share one host, so their host facts never match the spec).
    pub fn apply_forced(&self, spec: &Path) {
        let run = self
            .ctl(&[
                "apply",
                "--yes",
                "--force",
                spec.to_str().expect("UTF-8 path"),
            ])
            .expect("kreachctl runs");
        assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    }

    /// Wait until some broker's restart began at or after `since_ns`.
    pub fn wait_for_a_restart(&self, since_ns: u128, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while restarts_since(self, since_ns).is_empty() {
            assert!(
                Instant::now() < deadline,
                "no broker restarted within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn status_json(&self) -> Result<serde_json::Value> {
        let run = self.ctl(&["status", "--output", "json"])?;
        if run.code != 0 {
            bail!("kreachctl status failed: {}", run.stderr);
        }
        Ok(serde_json::from_str(&run.stdout)?)
    }

    /// Wait until the rollout reaches `state` ("completed", "paused", ...).
    pub fn wait_for_rollout(&self, state: &str, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status_json()?;
            if status["rollout"]["state"] == state {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("rollout not {state} after {timeout:?}: {status:#}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn client_hosts(&self, node: &str) -> String {
        let (_, dir) = self
            .clients
            .iter()
            .find(|(n, _)| n == node)
            .expect("client");
        std::fs::read_to_string(dir.join("etc/hosts")).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.agents.clear();
        self.coordinator = None;
        for broker in &self.brokers {
            let _ = Command::new("python3")
                .arg(FAKE_KAFKA)
                .arg("stop")
                .arg(broker.state_dir())
                .status();
        }
    }
}

pub struct FleetSpec {
    pub hostnames: bool,
    pub external: bool,
    /// The external listener's `security_protocol` (`"SSL"`: certificates issued and served).
    pub external_protocol: &'static str,
    pub max_unavailable: u32,
    pub health_timeout: &'static str,
    pub settle: &'static str,
    /// The body of a `[tls]` section (certificate lifetime and renewal), when given.
    pub tls: Option<&'static str>,
    /// `[[client_group]]` tables, appended as written.
    pub client_groups: Option<&'static str>,
    /// Broker N's public IP is 198.19.NET.(N + this): a new value moves every elastic IP.
    pub public_ip_offset: u32,
}

impl Default for FleetSpec {
    fn default() -> FleetSpec {
        FleetSpec {
            hostnames: false,
            external: false,
            external_protocol: "PLAINTEXT",
            max_unavailable: 1,
            health_timeout: "20s",
            settle: "0s",
            tls: None,
            client_groups: None,
            public_ip_offset: 0,
        }
    }
}

/// Wall-clock nanoseconds, the unit of the stand-in's restarts.log.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Every broker's restarts that began at or after `since_ns` (see [`now_ns`]), oldest first.
pub fn restarts_since(fleet: &Fleet, since_ns: u128) -> Vec<(u32, Restart)> {
    let mut all: Vec<(u32, Restart)> = fleet
        .brokers
        .iter()
        .flat_map(|broker| broker.restarts().into_iter().map(move |r| (broker.id, r)))
        .filter(|(_, r)| r.start_ns >= since_ns)
        .collect();
    all.sort_by_key(|(_, r)| r.start_ns);
    all
}

/// The most restart windows open at any one moment.
pub fn max_concurrent(restarts: &[Restart]) -> usize {
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for restart in restarts {
        edges.push((restart.start_ns, 1));
        edges.push((restart.end_ns, -1));
    }
    // Ends sort before starts at the same instant: touching windows do not overlap.
    edges.sort_by_key(|&(time, delta)| (time, delta));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        open += delta;
        most = most.max(open);
    }
    most as usize
}

/// The `ADDRESS:PORT` a process logged its metrics endpoint on ("metrics on http://ADDR/metrics").
pub fn metrics_address(process: &Proc) -> String {
    let line = process
        .wait_for_log("metrics on http://", Duration::from_secs(10))
        .unwrap();
    line.split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string()
}

/// `GET path` on `address` over plain HTTP/1.1; the body.
pub fn http_get(address: &str, path: &str) -> String {
    http_get_checked(address, path).unwrap()
}

/// [`http_get`], an error unless it answers 200.
pub fn http_get_checked(address: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} on {address}: {head}");
    }
    Ok(body.to_string())
}

/// A kreachctl running in the background ([`Fleet::ctl_spawn`]); killed (by its pid) if dropped
/// while it runs.
pub struct RunningCtl(Option<Child>);

impl RunningCtl {
    /// Its output once it exits; an error (and it is killed) when it runs past `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<Ctl> {
        let deadline = Instant::now() + timeout;
        let child = self.0.as_mut().expect("running");
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("kreachctl still runs after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let child = self.0.take().expect("running");
        Ok(Ctl::from_output(child.wait_with_output()?))
    }
}

impl Drop for RunningCtl {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
