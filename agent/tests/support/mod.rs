//! A sandbox "host" for running the real `kreach-agent` binary: its own etc/, state dir and
//! agent.toml, and a stand-in Kafka service (examples/quickstart/fake-kafka.py) that opens real
//! listeners from the server.properties the agent wrote.
#![allow(dead_code)]

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kreach_domain::desired::node_spec;
use kreach_domain::spec::ClusterSpec;

pub const AGENT: &str = env!("CARGO_BIN_EXE_kreach-agent");
pub const FAKE_KAFKA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/quickstart/fake-kafka.py"
);

pub struct Host {
    dir: tempfile::TempDir,
    pub node: String,
    broker: bool,
    restart_env: Mutex<Option<String>>,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Host {
    pub fn broker(node: &str) -> Host {
        Host::new(node, true)
    }

    pub fn client(node: &str) -> Host {
        Host::new(node, false)
    }

    fn new(node: &str, broker: bool) -> Host {
        let host = Host {
            dir: tempfile::tempdir().unwrap(),
            node: node.to_string(),
            broker,
            restart_env: Mutex::new(None),
        };
        std::fs::create_dir_all(host.etc().join("kafka")).unwrap();
        std::fs::create_dir_all(host.state_dir()).unwrap();
        host.write_hosts("127.0.0.1\tlocalhost\n");
        host.write_config();
        host
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn etc(&self) -> PathBuf {
        self.root().join("etc")
    }
    pub fn hosts_path(&self) -> PathBuf {
        self.etc().join("hosts")
    }
    pub fn properties_path(&self) -> PathBuf {
        self.etc().join("kafka/server.properties")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root().join("agent.toml")
    }

    fn restart_argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(env) = self.restart_env.lock().unwrap().clone() {
            argv.extend(["env".to_string(), env]);
        }
        argv.extend([
            "python3".to_string(),
            FAKE_KAFKA.to_string(),
            "restart".to_string(),
            self.properties_path().display().to_string(),
            self.state_dir().display().to_string(),
        ]);
        argv
    }

    fn write_config(&self) {
        let mut text = format!(
            "node = {:?}\nstate_dir = {:?}\n[manage]\nhosts_file = {:?}\n",
            self.node,
            self.state_dir().display().to_string(),
            self.hosts_path().display().to_string()
        );
        if self.broker {
            text += &format!(
                "kafka_properties = {:?}\nkafka_unit = \"kafka.service\"\nprobe = \"tcp\"\n[service_manager]\nkind = \"command\"\nrestart = {:?}\n",
                self.properties_path().display().to_string(),
                self.restart_argv()
            );
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Append TOML to agent.toml (e.g. a `[coordinator]` section).
    pub fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(self.config_path()).unwrap();
        config.push_str(text);
        std::fs::write(self.config_path(), config).unwrap();
    }

    /// Run the Kafka stand-in's restart command with an extra environment assignment.
    pub fn set_restart_env(&self, assignment: &str) {
        *self.restart_env.lock().unwrap() = Some(assignment.to_string());
        self.write_config();
    }

    /// Start the "broker" on the current server.properties, as before kreach arrives.
    pub fn start_kafka(&self) {
        let argv = self.restart_argv();
        let status = Command::new(&argv[0]).args(&argv[1..]).status().unwrap();
        assert!(
            status.success(),
            "the stand-in Kafka starts on the initial config"
        );
    }

    pub fn write_file(&self, name: &str, content: &str) -> String {
        let path = self.root().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }
    pub fn write_hosts(&self, content: &str) {
        std::fs::write(self.hosts_path(), content).unwrap();
    }
    pub fn write_properties(&self, content: &str) {
        std::fs::write(self.properties_path(), content).unwrap();
    }
    pub fn hosts(&self) -> String {
        std::fs::read_to_string(self.hosts_path()).unwrap()
    }
    pub fn properties(&self) -> String {
        std::fs::read_to_string(self.properties_path()).unwrap()
    }
    pub fn write_spec(&self, options: &SpecOptions<'_>) -> String {
        self.write_file("spec.toml", &options.render())
    }

    /// Every managed file's bytes.
    pub fn snapshot(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        [self.hosts_path(), self.properties_path()]
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).ok();
                (path, bytes)
            })
            .collect()
    }

    pub fn mtimes(&self) -> Vec<Option<SystemTime>> {
        [self.hosts_path(), self.properties_path()]
            .iter()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// The stand-in Kafka's restart log: "start_ns end_ns ok|failed" per restart.
    pub fn restarts(&self) -> Vec<String> {
        std::fs::read_to_string(self.state_dir().join("restarts.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn backups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.state_dir().join("backups")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }

    pub fn agent(&self, args: &[&str]) -> Output {
        let output = Command::new(AGENT)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("KREACH_LOG", "info")
            .output()
            .unwrap();
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn spawn_agent(&self, args: &[&str]) -> Daemon {
        let mut child = Command::new(AGENT)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("KREACH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Daemon { child, log }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.broker {
            let _ = Command::new("python3")
                .args([FAKE_KAFKA, "stop"])
                .arg(self.state_dir())
                .status();
        }
    }
}

/// A running agent process; killed (by its pid) when dropped.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no log line containing {needle:?} within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// The log lines containing `needle`, in order.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Wait up to `timeout` until at least `count` log lines contain `needle`; returns them all.
    pub fn wait_for_log_lines(&self, needle: &str, count: usize, timeout: Duration) -> Vec<String> {
        let found = wait_until(timeout, || self.log_lines(needle).len() >= count);
        let lines = self.log_lines(needle);
        assert!(
            lines.len() >= count,
            "{} log line(s) containing {needle:?} after {found:?}, expected {count}; log:\n{}",
            lines.len(),
            self.log()
        );
        lines
    }

    /// SIGTERM, then wait up to `timeout` for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Free loopback ports for one test's listeners.
pub struct Ports {
    pub internal: u16,
    pub external: u16,
    pub controller: u16,
}

impl Ports {
    pub fn new() -> Ports {
        let listeners: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let port = |index: usize| listeners[index].local_addr().unwrap().port();
        Ports {
            internal: port(0),
            external: port(1),
            controller: port(2),
        }
    }

    /// A KRaft broker's server.properties before kreach: INTERNAL and CONTROLLER only.
    pub fn initial_properties(&self) -> String {
        format!(
            "# Kafka broker configuration (KRaft mode).\n\
             process.roles=broker,controller\n\
             node.id=1\n\
             controller.listener.names=CONTROLLER\n\
             \n\
             listeners=INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=INTERNAL://emr-worker-1.cluster-48742:{internal}\n\
             listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             inter.broker.listener.name=INTERNAL\n\
             num.partitions=3\n",
            internal = self.internal,
            controller = self.controller
        )
    }
}

pub struct SpecOptions<'a> {
    pub ports: &'a Ports,
    pub external: bool,
    pub external_advertise: &'static str,
    pub health_timeout: &'static str,
}

impl<'a> SpecOptions<'a> {
    pub fn new(ports: &'a Ports) -> SpecOptions<'a> {
        SpecOptions {
            ports,
            external: false,
            external_advertise: "public_ip",
            health_timeout: "10s",
        }
    }

    /// Three brokers advertising hostnames internally, loopback binds, and clients.
    pub fn render(&self) -> String {
        let mut text = format!(
            "[cluster]\nname = \"emr-48742\"\n\n[listeners.internal]\nport = {}\nbind = \"127.0.0.1\"\nadvertise = \"hostname\"\n",
            self.ports.internal
        );
        if self.external {
            text += &format!(
                "\n[listeners.external]\nport = {}\nbind = \"127.0.0.1\"\nadvertise = {:?}\nallow = [\"198.19.0.0/24\"]\n",
                self.ports.external, self.external_advertise
            );
        }
        for id in 1..=3 {
            text += &format!(
                "\n[[broker]]\nid = {id}\nnode = \"emr-worker-{id}\"\nhostname = \"emr-worker-{id}.cluster-48742\"\nprivate_ip = \"198.18.0.1{id}\"\npublic_ip = \"198.19.0.1{id}\"\n"
            );
        }
        text += "\n[[client]]\nnode = \"etl-1\"\nview = \"private\"\n";
        if self.external {
            text += "\n[[client]]\nnode = \"laptop-1\"\nview = \"public\"\n";
        }
        text += &format!("\n[rollout]\nhealth_timeout = {:?}\n", self.health_timeout);
        text
    }
}

/// What the hosts file of client etl-1 should become when `spec_path` is applied to `before`.
pub fn expected_client_hosts(before: &str, spec_path: &str) -> String {
    let spec = ClusterSpec::parse(&std::fs::read_to_string(spec_path).unwrap()).unwrap();
    let desired = node_spec(&spec, "etl-1").unwrap();
    kreach_domain::hosts::apply_block(before, &desired.cluster, &desired.hosts_entries)
        .unwrap()
        .content
}

/// Poll `condition` until it holds or `timeout` passes; returns how long it took (or `timeout`).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    timeout
}

/// A small random source for kill delays (no need for a crate).
pub struct Lcg(u64);

impl Lcg {
    pub fn seeded() -> Lcg {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("random seed {seed}");
        Lcg(seed | 1)
    }
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// `mount --bind source target`, unmounted on drop.
pub struct BindMount {
    target: PathBuf,
}

impl BindMount {
    pub fn new(source: impl AsRef<Path>, target: &Path) -> BindMount {
        let status = Command::new("mount")
            .arg("--bind")
            .arg(source.as_ref())
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success(), "mount --bind");
        BindMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
    }
}
