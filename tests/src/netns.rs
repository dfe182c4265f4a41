//! Hosts as network namespaces, for the e2e-net tier.
//!
//! Owns: the namespaces of one test ([`Net`]), named uniquely per test run (`kr<pid>x<n>-<host>`);
//! two layer-2 segments — the private network and the public side — as two bridges in a namespace
//! of the net's own; veth pairs created directly inside the namespaces (nothing is ever created in,
//! or moved through, the root namespace); `/etc/netns/<ns>/hosts` and `resolv.conf` per namespace
//! (`nameserver 127.0.0.1`, so an unknown name fails locally instead of being asked outside); and
//! processes started inside a namespace with `ip netns exec` ([`Daemon`], logging to a file).
//!
//! Teardown (on drop, also while a failed test unwinds): every process of every namespace of the
//! net — `ip netns pids`, which also finds what daemonized itself, such as a broker's proxies — gets
//! SIGTERM then SIGKILL by PID; then `ip netns del` and `/etc/netns/<ns>` removed. Namespaces left
//! behind by a test process that no longer exists (killed with SIGKILL) are removed the same way
//! when the next net is made.
//!
//! Does not own: what runs on the hosts (Kafka stand-ins, agents, clients: the e2e_net test).
//!
//! Addresses are from 198.18.0.0/15 only; traffic stays inside the namespaces made here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The private network's bridge and the public side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Private,
    Public,
}

impl Segment {
    fn bridge(self) -> &'static str {
        match self {
            Segment::Private => "br-private",
            Segment::Public => "br-public",
        }
    }
    fn letter(self) -> char {
        match self {
            Segment::Private => 'p',
            Segment::Public => 'u',
        }
    }
}

/// One interface of a host: its segment, its address with prefix length (`198.18.0.1/24`), and
/// routes over it beyond the connected one (`198.19.0.1/32`, for a host that must reach only some
/// addresses of its segment: give it a /32 address and list the routes).
#[derive(Debug, Clone)]
pub struct Link {
    pub segment: Segment,
    pub address: String,
    pub routes: Vec<String>,
}

impl Link {
    pub fn new(segment: Segment, address: &str) -> Link {
        Link {
            segment,
            address: address.to_string(),
            routes: Vec::new(),
        }
    }
    pub fn with_routes(mut self, routes: &[&str]) -> Link {
        self.routes = routes.iter().map(|r| r.to_string()).collect();
        self
    }
}

const NAME_PREFIX: &str = "kr";
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// Run `command`; an error (with its stderr) unless it exits 0.
pub fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}

/// A test's hosts. Dropping it tears everything down.
pub struct Net {
    run: String,
    bridge_ns: String,
    /// Every namespace created, the bridge's first; host name → namespace name for the others.
    namespaces: Vec<String>,
    hosts: Vec<(String, String)>,
    /// Host name → the bridge's port of each of its interfaces, in order.
    ports: Vec<(String, Vec<String>)>,
    links: u32,
    dir: tempfile::TempDir,
    daemons: Vec<Daemon>,
}

impl Net {
    /// A net for `test` with its two bridges up, and no hosts yet. Needs root.
    pub fn new(test: &str) -> Result<Net> {
        remove_stale_namespaces();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let run = format!(
            "{NAME_PREFIX}{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("kreach-e2e-net-{test}-"))
            .tempdir()?;
        fs::create_dir_all(dir.path().join("logs"))?;
        let mut net = Net {
            bridge_ns: format!("{run}-net"),
            run,
            namespaces: Vec::new(),
            hosts: Vec::new(),
            ports: Vec::new(),
            links: 0,
            dir,
            daemons: Vec::new(),
        };
        // From here on, an early return drops `net`, which undoes what was done so far.
        let bridge_ns = net.bridge_ns.clone();
        net.create_namespace(&bridge_ns)?;
        for segment in [Segment::Private, Segment::Public] {
            ip(&[
                "-n",
                &bridge_ns,
                "link",
                "add",
                segment.bridge(),
                "type",
                "bridge",
            ])?;
            ip(&["-n", &bridge_ns, "link", "set", segment.bridge(), "up"])?;
        }
        eprintln!(
            "netns: {test}: namespaces {}-*, files in {}",
            net.run,
            net.dir.path().display()
        );
        Ok(net)
    }

    fn create_namespace(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        let etc = Path::new("/etc/netns").join(name);
        fs::create_dir_all(&etc)?;
        fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        fs::write(etc.join("hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost\n")?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Add host `host` with one interface per link (`eth0`, `eth1`, ...), each a veth pair whose
    /// other end is a port of the segment's bridge.
    pub fn add_host(&mut self, host: &str, links: &[Link]) -> Result<()> {
        let ns = format!("{}-{host}", self.run);
        self.create_namespace(&ns)?;
        self.hosts.push((host.to_string(), ns.clone()));
        self.ports.push((host.to_string(), Vec::new()));
        for (index, link) in links.iter().enumerate() {
            self.links += 1;
            let device = format!("eth{index}");
            let port = format!("v{}{}", self.links, link.segment.letter());
            self.ports.last_mut().expect("pushed").1.push(port.clone());
            ip(&[
                "-n",
                &ns,
                "link",
                "add",
                &device,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.bridge_ns,
            ])?;
            ip(&[
                "-n",
                &self.bridge_ns,
                "link",
                "set",
                &port,
                "master",
                link.segment.bridge(),
            ])?;
            ip(&["-n", &self.bridge_ns, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &link.address, "dev", &device])?;
            ip(&["-n", &ns, "link", "set", &device, "up"])?;
            for route in &link.routes {
                ip(&["-n", &ns, "route", "add", route, "dev", &device])?;
            }
        }
        Ok(())
    }

    /// The switch of `host`'s interface `eth{index}`: its port on the bridge, to set down (the
    /// link is gone: the host's side stays up with its address and routes, and its packets go
    /// nowhere, as when a cable is pulled) and up again.
    pub fn link_switch(&self, host: &str, index: usize) -> LinkSwitch {
        let ports = &self
            .ports
            .iter()
            .find(|(name, _)| name == host)
            .unwrap_or_else(|| panic!("no host {host}"))
            .1;
        LinkSwitch {
            bridge_ns: self.bridge_ns.clone(),
            port: ports[index].clone(),
        }
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> &str {
        self.hosts
            .iter()
            .find(|(name, _)| name == host)
            .map(|(_, ns)| ns.as_str())
            .unwrap_or_else(|| panic!("no host {host} in this net"))
    }

    /// The file `ip netns exec` shows to `host` as `/etc/hosts`.
    pub fn hosts_file(&self, host: &str) -> PathBuf {
        Path::new("/etc/netns").join(self.ns(host)).join("hosts")
    }

    /// A directory for this test's files (configs, state, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` to run inside `host`.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.ns(host)]).arg(program);
        command
    }

    /// Run `argv` inside `host` to completion, with a time limit (SIGKILL at the limit).
    pub fn exec(&self, host: &str, argv: &[&str], timeout: Duration) -> Result<Output> {
        let mut command = self.command(host, argv[0]);
        command.args(&argv[1..]);
        output_within(&mut command, timeout)
    }

    /// Start `command` (made with [`Net::command`]) as a long-running process named `name`; its
    /// stdout and stderr go to `logs/<name>.log`. Stopped by PID at teardown, or with
    /// [`Net::stop`].
    pub fn spawn(&mut self, name: &str, command: &mut Command) -> Result<&Daemon> {
        let log_path = self.dir.path().join("logs").join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        self.daemons.push(Daemon {
            name: name.to_string(),
            child,
            log_path,
        });
        Ok(self.daemons.last().expect("just pushed"))
    }

    pub fn daemon(&self, name: &str) -> &Daemon {
        self.daemons
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no daemon {name}"))
    }

    pub fn daemon_mut(&mut self, name: &str) -> &mut Daemon {
        self.daemons
            .iter_mut()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no daemon {name}"))
    }

    /// SIGTERM the daemon `name`, wait (bounded), SIGKILL if needed; returns its exit code.
    pub fn stop(&mut self, name: &str) -> Option<i32> {
        let index = self.daemons.iter().position(|d| d.name == name)?;
        let mut daemon = self.daemons.remove(index);
        daemon.terminate()
    }

    /// The tail of every daemon's log, for a failure message.
    pub fn logs_tail(&self, bytes: usize) -> String {
        let mut out = String::new();
        for daemon in &self.daemons {
            out += &format!(
                "----- {} ({}) -----\n{}\n",
                daemon.name,
                daemon.log_path.display(),
                tail(&daemon.log(), bytes)
            );
        }
        out
    }

    /// Keep the test's directory (logs, configs) after the test, and return its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        dir.keep()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            let _ = kill(Pid::from_raw(daemon.child.id() as i32), Signal::SIGTERM);
        }
        for ns in &self.namespaces {
            kill_namespace_processes(ns);
        }
        for mut daemon in self.daemons.drain(..) {
            daemon.terminate();
        }
        // Hosts first, the bridge namespace last.
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// One host interface's port on its bridge ([`Net::link_switch`]).
#[derive(Debug, Clone)]
pub struct LinkSwitch {
    bridge_ns: String,
    port: String,
}

impl LinkSwitch {
    /// Set the link up or down.
    pub fn set(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.bridge_ns, "link", "set", &self.port, state])
    }
}

/// A process started inside a namespace. Killed by PID when dropped.
pub struct Daemon {
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Wait until the log contains `needle`, or fail with the log when the process exits or the
    /// time is up. Returns the first line containing it.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|line| line.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{} exited with {status} before logging {needle:?}; log:\n{}",
                    self.name,
                    tail(&self.log(), 4000)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} logged no {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    tail(&self.log(), 4000)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn terminate(&mut self) -> Option<i32> {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Run to completion within `timeout`; SIGKILL and an error after it.
pub fn output_within(command: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buffer);
        buffer
    });
    let err = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buffer);
        buffer
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// SIGTERM every process in namespace `ns`, wait (bounded), SIGKILL what is left. By PID, from
/// `ip netns pids`, which lists exactly the processes whose network namespace it is.
fn kill_namespace_processes(ns: &str) {
    let pids = |ns: &str| -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = pids(ns);
    if first.is_empty() {
        return;
    }
    for &pid in &first {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if pids(ns).iter().all(|&pid| is_zombie(pid)) {
            return;
        }
        std::thread::sleep(POLL);
    }
    for pid in pids(ns) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                == Some("Z")
        })
        .unwrap_or(true)
}

fn remove_namespace(ns: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}

/// Namespaces named `kr<pid>x<n>-*` whose test process is gone: left by a run that was killed.
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !name.contains('-') || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("netns: removing {name}, left behind by test process {pid}");
        kill_namespace_processes(&name);
        remove_namespace(&name);
    }
}

/// The last `bytes` bytes of `text` (on a char boundary).
pub fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
