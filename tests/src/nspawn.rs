//! Real systemd hosts for the e2e-systemd tier: systemd-nspawn containers booting real systemd.
//!
//! Owns: preparing the cached Debian rootfs (through `tests/e2e-systemd/prepare-rootfs.sh`),
//! extracting it once into a shared read-only lower dir, and the [`Host`] guard — one overlay, one
//! network namespace, one cgroup pair and one `systemd-nspawn` per host, all torn down on drop by
//! the PIDs, paths and names this module created (never by process name).
//!
//! Does not own: what runs inside a host (tests install units and binaries with [`Host::copy_in`]
//! and [`Host::write_file`] and drive them with [`Host::exec`]); networking between hosts (each host
//! has only loopback in its own namespace; links, when a test needs them, use 198.18.0.0/15 only).
//!
//! Needs root, `systemd-nspawn` (systemd-container), `nsenter`, `ip`, and cgroup v1 hybrid or v2.
//! PID 1 of the machine need not be systemd: nspawn runs with `--register=no --keep-unit`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where hosts' overlay dirs and the extracted lower dir live (outside any checkout).
const STATE_ROOT: &str = "/var/tmp/kreach-nspawn";
/// Default rootfs cache; `KREACH_ROOTFS_CACHE` overrides it (shared with the prepare script).
const DEFAULT_ROOTFS_CACHE: &str = "/var/cache/kreach-ci/rootfs-bookworm.tar.zst";
/// How long a host may take to reach running/degraded.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an orderly poweroff may take before we kill by PID.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Whether this machine can run the tier.
#[derive(Debug, Clone)]
pub enum Availability {
    /// The rootfs tarball is ready at this path.
    Ready(PathBuf),
    /// The tier cannot run here; the reason says why (printed loudly by the caller).
    Unavailable(String),
}

/// The rootfs cache path in force.
pub fn rootfs_cache_path() -> PathBuf {
    std::env::var_os("KREACH_ROOTFS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS_CACHE))
}

fn prepare_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e-systemd/prepare-rootfs.sh")
}

/// Check for root and prepare the rootfs cache (runs the prepare script, which is a no-op when the
/// cache exists). `Unavailable` only for "not root" and "cannot be prepared on this machine" (the
/// script's exit status 2: no mirror reachable, cannot install debootstrap); any other failure of
/// the script is an error, so that a broken recipe fails the tier instead of skipping it.
pub fn availability() -> Result<Availability> {
    static RESULT: OnceLock<std::result::Result<Availability, String>> = OnceLock::new();
    RESULT
        .get_or_init(|| check_availability().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn check_availability() -> Result<Availability> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(Availability::Unavailable(
            "not root: systemd-nspawn, overlay mounts, netns and cgroups need root".into(),
        ));
    }
    let script = prepare_script();
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(&script)
        .env("KREACH_ROOTFS_CACHE", rootfs_cache_path())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {
            let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            eprintln!(
                "nspawn: rootfs ready at {path} (prepare took {:?})",
                started.elapsed()
            );
            for tool in ["systemd-nspawn", "nsenter", "ip"] {
                if which(tool).is_none() {
                    bail!("{tool} not found in PATH after the prepare script ran");
                }
            }
            Ok(Availability::Ready(PathBuf::from(path)))
        }
        Some(2) => Ok(Availability::Unavailable(format!(
            "the rootfs cannot be prepared on this machine: {}",
            last_lines(&stderr, 4)
        ))),
        _ => bail!(
            "{} failed with {}: {}",
            script.display(),
            output.status,
            tail(&stderr, 3000)
        ),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    })
}

/// The last `n` non-empty lines on one line, for a one-line message.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// The shared read-only lower dir, extracted from the tarball once. It is keyed by the tarball's
/// size and mtime, so later runs reuse it and a rebuilt cache gets a fresh one; it is written to a
/// temporary name and renamed into place, so concurrent test processes never see a half extraction.
fn shared_lower(tarball: &Path) -> Result<PathBuf> {
    static LOWER: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    LOWER
        .get_or_init(|| extract_lower(tarball).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn extract_lower(tarball: &Path) -> Result<PathBuf> {
    let meta = fs::metadata(tarball).with_context(|| format!("stat {}", tarball.display()))?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let root = Path::new(STATE_ROOT);
    let lower = root.join(format!("lower-{}-{mtime}", meta.len()));
    if lower.join("etc/os-release").exists() {
        return Ok(lower);
    }
    fs::create_dir_all(root)?;
    // Remove lower dirs of older caches: they are only ever read by hosts of a finished run.
    for entry in fs::read_dir(root)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // ...unless a host of another run still has it mounted as its lower dir (tests of another
        // checkout may run at the same time on a shared machine).
        if name.starts_with("lower-") && entry.path() != lower && !is_overlay_lower(&entry.path()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let partial = root.join(format!(".lower-partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    let started = Instant::now();
    let decompress = if tarball.extension().is_some_and(|e| e == "zst") {
        "zstd -dc \"$1\" | tar --numeric-owner --xattrs -C \"$2\" -xf -"
    } else {
        "tar --numeric-owner --xattrs -C \"$2\" -xf \"$1\""
    };
    let output = Command::new("sh")
        .args(["-ec", decompress, "extract"])
        .arg(tarball)
        .arg(&partial)
        .output()?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&partial);
        bail!(
            "extracting {} failed: {}",
            tarball.display(),
            tail(&String::from_utf8_lossy(&output.stderr), 2000)
        );
    }
    if fs::rename(&partial, &lower).is_err() {
        // Another process won the race; use its copy.
        let _ = fs::remove_dir_all(&partial);
    }
    eprintln!(
        "nspawn: extracted rootfs to {} in {:?}",
        lower.display(),
        started.elapsed()
    );
    Ok(lower)
}

/// Whether any overlay mount on this machine uses `dir` as a lower dir.
fn is_overlay_lower(dir: &Path) -> bool {
    let needle = format!("lowerdir={}", dir.display());
    fs::read_to_string("/proc/self/mountinfo")
        .map(|mounts| {
            mounts
                .lines()
                .any(|line| line.split([',', ' ']).any(|option| option == needle))
        })
        .unwrap_or(true)
}

/// The cgroup hierarchies a launcher must be placed in: both the unified (v2) and the named
/// `systemd` (v1) hierarchy on a hybrid machine, or the root of a pure v2 machine.
fn cgroup_roots() -> Vec<PathBuf> {
    let hybrid = [
        PathBuf::from("/sys/fs/cgroup/unified"),
        PathBuf::from("/sys/fs/cgroup/systemd"),
    ];
    if hybrid.iter().all(|p| p.join("cgroup.procs").exists()) {
        hybrid.to_vec()
    } else {
        vec![PathBuf::from("/sys/fs/cgroup")]
    }
}

/// Boot a host for `test`; `None` only when the e2e-systemd tier is opted out (`KREACH_SKIP`).
/// Panics, with the command that fixes it, when the tier cannot run here (not root, no rootfs) or
/// the boot fails.
pub fn boot_or_skip(test: &str) -> Option<Host> {
    if !tier_runs(test) {
        return None;
    }
    Some(Host::boot(test).expect("booting a systemd-nspawn host"))
}

/// Whether the e2e-systemd tier runs `test`: `false` when opted out (said and recorded, before
/// any rootfs is prepared); a panic naming the fix when it cannot run here.
pub fn tier_runs(test: &str) -> bool {
    let tier = kreach_test_parts::Tier::E2eSystemd;
    if !kreach_test_parts::require(tier, test, None) {
        return false;
    }
    let missing = match availability().expect("preparing the e2e-systemd rootfs") {
        Availability::Ready(_) => None,
        Availability::Unavailable(reason) => Some(kreach_test_parts::Missing::new(
            reason,
            "as root: bash tests/e2e-systemd/prepare-rootfs.sh (needs a Debian mirror)",
        )),
    };
    kreach_test_parts::require(tier, test, missing)
}

/// One booted systemd host. Everything it created is torn down on drop.
pub struct Host {
    name: String,
    dir: PathBuf,
    merged: PathBuf,
    mounted: bool,
    netns: bool,
    cgroups: Vec<PathBuf>,
    nspawn: Option<Child>,
    leader: Option<i32>,
}

impl Host {
    /// Boot a host named `kreach-<test>-<n>` and wait until systemd reports running or degraded.
    ///
    /// Call [`tier_runs`] first: it fails or opts out when the tier cannot run here.
    pub fn boot(test: &str) -> Result<Host> {
        let tarball = match availability()? {
            Availability::Ready(path) => path,
            Availability::Unavailable(reason) => bail!("e2e-systemd unavailable: {reason}"),
        };
        let lower = shared_lower(&tarball)?;
        let started = Instant::now();

        let mut host = Host {
            name: String::new(),
            dir: PathBuf::new(),
            merged: PathBuf::new(),
            mounted: false,
            netns: false,
            cgroups: Vec::new(),
            nspawn: None,
            leader: None,
        };
        // From here on, an early return drops `host`, which undoes whatever was done so far.
        host.name = create_netns(test)?;
        host.netns = true;
        let name = host.name.clone();
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;

        host.dir = Path::new(STATE_ROOT).join("hosts").join(&name);
        let _ = fs::remove_dir_all(&host.dir);
        host.merged = host.dir.join("merged");
        for sub in ["upper", "work", "merged"] {
            fs::create_dir_all(host.dir.join(sub))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            host.dir.join("upper").display(),
            host.dir.join("work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &host.merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .with_context(|| format!("mount overlay on {}", host.merged.display()))?;
        host.mounted = true;
        // The rootfs carries the build machine's hostname; give each host its own.
        host.write_file("/etc/hostname", format!("{name}\n").as_bytes(), 0o644)?;

        // Each launcher in its own cgroup, or two containers share nspawn's payload/ cgroup and
        // one's systemd can kill the other's services.
        for root in cgroup_roots() {
            let cgroup = root.join(&name);
            fs::create_dir(&cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
            host.cgroups.push(cgroup);
        }
        // The shell moves itself into the cgroups and then execs nspawn, so nspawn and all it
        // forks start there (no unsafe pre_exec needed).
        let mut script = String::new();
        for (i, _) in host.cgroups.iter().enumerate() {
            script.push_str(&format!("echo $$ > \"${}/cgroup.procs\"; ", i + 1));
        }
        script.push_str("shift $CGROUPS; exec systemd-nspawn \"$@\"");
        let console = fs::File::create(host.dir.join("console.log"))?;
        let child = Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .arg("launcher")
            .args(&host.cgroups)
            .env("CGROUPS", host.cgroups.len().to_string())
            .args(["-q", "-D"])
            .arg(&host.merged)
            .args(["-M", &name, "--register=no", "--keep-unit", "-b"])
            .args(["--console=read-only"])
            .arg(format!("--network-namespace-path=/run/netns/{name}"))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("spawning systemd-nspawn")?;
        host.nspawn = Some(child);

        host.wait_running(started + BOOT_TIMEOUT)?;
        eprintln!("nspawn: {name} running after {:?}", started.elapsed());
        Ok(host)
    }

    fn wait_running(&mut self, deadline: Instant) -> Result<()> {
        let mut last = String::from("(container not started yet)");
        loop {
            if let Some(status) = self
                .nspawn
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "systemd-nspawn for {} exited with {status} while booting; console:\n{}",
                    self.name,
                    self.console_tail()
                );
            }
            if self.leader.is_none() {
                self.leader = self.find_leader();
            }
            if self.leader.is_some() {
                let output = self.exec(&["systemctl", "is-system-running"])?;
                last = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                if last == "running" || last == "degraded" {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not reach running/degraded within {BOOT_TIMEOUT:?} (last: {last}); console:\n{}",
                    self.name,
                    self.console_tail()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The container's PID 1 as seen from here: the child of nspawn that is PID 1 in its own
    /// PID namespace.
    fn find_leader(&self) -> Option<i32> {
        let nspawn = self.nspawn.as_ref()?.id();
        let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse::<i32>().ok())
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|status| {
                        status
                            .lines()
                            .find(|l| l.starts_with("NSpid:"))
                            .map(|l| l.split_whitespace().last() == Some("1"))
                    })
                    .unwrap_or(false)
            })
    }

    fn console_tail(&self) -> String {
        fs::read_to_string(self.dir.join("console.log"))
            .map(|s| tail(&s, 3000))
            .unwrap_or_default()
    }

    /// The machine name (also the netns and cgroup name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's PID 1, as seen from the machine.
    pub fn leader(&self) -> i32 {
        self.leader.expect("host is booted")
    }

    /// Run a command inside the host (all its namespaces), to completion.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let leader = self
            .leader
            .ok_or_else(|| anyhow!("{} has no running container", self.name))?;
        Command::new("nsenter")
            .args(["-t", &leader.to_string(), "-a", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter into {} for {argv:?}", self.name))
    }

    /// Like [`Host::exec`], but a non-zero exit is an error carrying stdout and stderr; returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let output = self.exec(argv)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "{argv:?} in {} failed with {}: stdout: {} stderr: {}",
                self.name,
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(stdout)
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn unit_property(&self, unit: &str, property: &str) -> Result<String> {
        Ok(self
            .exec_ok(&["systemctl", "show", "-p", property, "--value", unit])?
            .trim()
            .to_owned())
    }

    fn container_path(&self, container_path: &str) -> Result<PathBuf> {
        let relative = container_path
            .strip_prefix('/')
            .ok_or_else(|| anyhow!("container path must be absolute: {container_path}"))?;
        if Path::new(relative)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!("container path must not contain . or ..: {container_path}");
        }
        Ok(self.merged.join(relative))
    }

    /// Copy a file from the machine into the host (through the overlay's merged dir), keeping its
    /// permissions.
    pub fn copy_in(&self, host_path: &Path, container_path: &str) -> Result<()> {
        let target = self.container_path(container_path)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(host_path, &target).with_context(|| {
            format!(
                "copy {} into {}:{container_path}",
                host_path.display(),
                self.name
            )
        })?;
        Ok(())
    }

    /// Read a file inside the host (through the overlay's merged dir).
    pub fn read_file(&self, container_path: &str) -> Result<Vec<u8>> {
        let target = self.container_path(container_path)?;
        fs::read(&target).with_context(|| format!("read {}:{container_path}", self.name))
    }

    /// Write a file inside the host with the given mode.
    pub fn write_file(&self, container_path: &str, contents: &[u8], mode: u32) -> Result<()> {
        let target = self.container_path(container_path)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = fs::File::create(&target)
            .with_context(|| format!("write {}:{container_path}", self.name))?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.nspawn.take() {
            let pid = Pid::from_raw(child.id() as i32);
            // SIGTERM makes nspawn power the container off in order.
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + POWEROFF_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                    _ => {
                        problems.push(format!(
                            "nspawn (pid {pid}) did not power off within {POWEROFF_TIMEOUT:?}; killed"
                        ));
                        let _ = kill(pid, Signal::SIGKILL);
                        // SIGKILL to a PID namespace's init kills everything in it.
                        if let Some(leader) = self.leader {
                            let _ = kill(Pid::from_raw(leader), Signal::SIGKILL);
                        }
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // Anything still in our cgroups was started by this host: kill it by PID.
        for cgroup in &self.cgroups {
            for pid in pids_in(cgroup) {
                problems.push(format!("pid {pid} left in {}; killed", cgroup.display()));
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for cgroup in std::mem::take(&mut self.cgroups) {
            if let Err(e) = remove_cgroup_tree(&cgroup) {
                problems.push(format!("removing cgroup {}: {e}", cgroup.display()));
            }
        }
        if self.mounted {
            if let Err(e) = umount2(&self.merged, MntFlags::empty()) {
                problems.push(format!(
                    "umount {}: {e}; detaching lazily",
                    self.merged.display()
                ));
                let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
            }
            self.mounted = false;
        }
        if self.netns {
            let output = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
            if !output.as_ref().is_ok_and(|o| o.status.success()) {
                problems.push(format!("ip netns del {} failed: {output:?}", self.name));
            }
            self.netns = false;
            let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
        }
        if !self.dir.as_os_str().is_empty() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("rm -rf {}: {e}", self.dir.display()));
                }
            }
        }
        problems
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let started = Instant::now();
        let problems = self.teardown();
        if problems.is_empty() {
            eprintln!("nspawn: {} torn down in {:?}", self.name, started.elapsed());
        } else {
            eprintln!(
                "nspawn: teardown of {} had problems:\n  {}",
                self.name,
                problems.join("\n  ")
            );
        }
    }
}

/// A layer-2 segment between hosts: a bridge in a network namespace of its own (nothing is created
/// in the machine's namespace). Each attached host gets an `eth0` veth whose peer is a bridge port;
/// dropping the bridge deletes its namespace, which removes every veth pair with it.
pub struct Bridge {
    netns: String,
    ports: u32,
}

impl Bridge {
    /// A namespace `kreach-<test>-br-<n>` holding the bridge `br0`, up.
    pub fn new(test: &str) -> Result<Bridge> {
        let bridge = Bridge {
            netns: create_netns(&format!("{test}-br"))?,
            ports: 0,
        };
        run(Command::new("ip").args(["-n", &bridge.netns, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args([
            "-n",
            &bridge.netns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ]))?;
        run(Command::new("ip").args(["-n", &bridge.netns, "link", "set", "br0", "up"]))?;
        Ok(bridge)
    }

    /// Give `host` an `eth0` on this bridge with `addresses` (CIDR; 198.18.0.0/15 only).
    pub fn attach(&mut self, host: &Host, addresses: &[&str]) -> Result<()> {
        for address in addresses {
            let ip: std::net::Ipv4Addr = address
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("{address} is not an IPv4 CIDR"))?;
            let octets = ip.octets();
            if octets[0] != 198 || !(18..=19).contains(&octets[1]) {
                bail!("{address} is outside 198.18.0.0/15, the only range these tests may use");
            }
        }
        self.ports += 1;
        let port = format!("port{}", self.ports);
        run(Command::new("ip").args([
            "link",
            "add",
            "eth0",
            "netns",
            &host.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.netns,
        ]))?;
        run(Command::new("ip").args([
            "-n",
            &self.netns,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]))?;
        for address in addresses {
            run(Command::new("ip").args(["-n", &host.name, "addr", "add", address, "dev", "eth0"]))?;
        }
        run(Command::new("ip").args(["-n", &host.name, "link", "set", "eth0", "up"]))?;
        Ok(())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let output = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        if !output.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("nspawn: ip netns del {} failed: {output:?}", self.netns);
        }
    }
}

/// Create a network namespace `kreach-<test>-<n>` with the first free `n`; `ip netns add` fails
/// when the name exists, which makes the choice atomic across processes.
fn create_netns(test: &str) -> Result<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let test: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("kreach-{test}-{n}");
        if Path::new("/run/netns").join(&name).exists() {
            continue;
        }
        let output = Command::new("ip").args(["netns", "add", &name]).output()?;
        if output.status.success() {
            return Ok(name);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.contains("File exists") {
            bail!("ip netns add {name} failed: {}", stderr.trim());
        }
    }
    bail!("no free network namespace name kreach-{test}-N; remove stale ones with `ip netns del`")
}

fn pids_in(cgroup: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// rmdir a cgroup and its descendants, deepest first; retries briefly while killed processes exit.
fn remove_cgroup_tree(cgroup: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match remove_cgroup_once(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn remove_cgroup_once(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_cgroup_once(&entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

fn run(command: &mut Command) -> Result<()> {
    crate::netns::run(command).map(|_| ())
}
