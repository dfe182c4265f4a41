//! A real etcd cluster on loopback for the `ha` tier: N members of Debian's `/usr/bin/etcd` as
//! child processes of the test, on free ports, data dirs in a tempdir.
//!
//! Owns: picking ports, the members' flags, waiting for health, killing, stopping and restarting
//! one member, and tearing everything down (by pid, never by name) when the cluster is dropped.
//! Does not own: talking to etcd beyond `/health` and `/version` (that is the client under test).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{require, Missing, Tier};

/// Debian's etcd (package `etcd-server`).
pub const ETCD: &str = "/usr/bin/etcd";
/// The command that installs it.
pub const INSTALL_ETCD: &str = "apt-get install -y etcd-server";

/// How long `start` waits for every member to be healthy.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits after SIGTERM before SIGKILL (a member without quorum takes seconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running etcd cluster; every member still running is killed when it is dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    // Dropped last (fields drop in order), after the members are gone.
    dir: tempfile::TempDir,
}

struct Member {
    name: String,
    client_port: u16,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

/// Whether the `ha` tier runs `test` with Debian's etcd: false when the user opted out; a
/// missing etcd fails the test with the command that installs it.
pub fn etcd_runs(test: &str) -> bool {
    let missing = (!Path::new(ETCD).is_file())
        .then(|| Missing::new("etcd (Debian etcd-server)", INSTALL_ETCD));
    require(Tier::Ha, test, missing)
}

impl EtcdCluster {
    /// `members` etcd members, all healthy. `None` when the user opted out of the `ha` tier; a
    /// missing etcd fails the test with the command that installs it.
    pub fn start(test: &str, members: usize) -> Option<EtcdCluster> {
        EtcdCluster::start_with(test, members, &[])
    }

    /// [`EtcdCluster::start`] where member `i` also listens for clients on every URL of
    /// `extra_listen[i]` (e.g. an address another network namespace reaches); members past the
    /// end of `extra_listen` listen on loopback only.
    pub fn start_with(
        test: &str,
        members: usize,
        extra_listen: &[Vec<String>],
    ) -> Option<EtcdCluster> {
        assert!(members > 0, "an etcd cluster needs at least one member");
        if !etcd_runs(test) {
            return None;
        }
        // The ports are free when picked, but another test may take one before etcd binds it:
        // then start again on new ones.
        let mut last_error = String::new();
        for _ in 0..3 {
            match EtcdCluster::try_start(members, extra_listen) {
                Ok(cluster) => return Some(cluster),
                Err(error) if error.contains("address already in use") => last_error = error,
                Err(error) => panic!("ha test {test}: the etcd cluster did not start: {error}"),
            }
        }
        panic!("ha test {test}: the etcd cluster did not start after 3 tries: {last_error}")
    }

    fn try_start(members: usize, extra_listen: &[Vec<String>]) -> Result<EtcdCluster, String> {
        // In memory where there is a tmpfs: etcd fsyncs every write, and on a disk busy with a
        // build its answers (lease renewals included) can take seconds, which a test's short
        // lease cannot tell from a partition.
        // Only where it has room: each member preallocates a 64 MB write-ahead log, and a
        // container's /dev/shm is often 64 MB in all.
        let shm = std::path::Path::new("/dev/shm");
        let roomy = nix::sys::statvfs::statvfs(shm).is_ok_and(|stat| {
            stat.blocks_available().saturating_mul(stat.fragment_size()) >= 1 << 30
        });
        let mut builder = tempfile::Builder::new();
        builder.prefix("kreach-etcd-");
        let dir = if roomy {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .map_err(|error| format!("a tempdir for the data dirs: {error}"))?;
        let ports = free_ports(2 * members)?;
        let (client_ports, peer_ports) = ports.split_at(members);
        let name = |i: usize| format!("m{i}");
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=http://127.0.0.1:{port}", name(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "kreach-test-{}-{}",
            std::process::id(),
            dir.path().display()
        );
        let mut cluster = EtcdCluster {
            members: Vec::with_capacity(members),
            dir,
        };
        for i in 0..members {
            let client_url = format!("http://127.0.0.1:{}", client_ports[i]);
            let peer_url = format!("http://127.0.0.1:{}", peer_ports[i]);
            let mut listen = vec![client_url.clone()];
            listen.extend(extra_listen.get(i).into_iter().flatten().cloned());
            let data_dir = cluster.dir.path().join(name(i));
            let args: Vec<OsString> = [
                "--name".into(),
                name(i),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen-client-urls".into(),
                listen.join(","),
                "--advertise-client-urls".into(),
                client_url,
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url,
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                token.clone(),
                "--logger".into(),
                "zap".into(),
                "--log-level".into(),
                "warn".into(),
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
                "--pre-vote=true".into(),
            ]
            .into_iter()
            .map(OsString::from)
            .collect();
            cluster.members.push(Member {
                name: name(i),
                client_port: client_ports[i],
                args,
                log: cluster.dir.path().join(format!("{}.log", name(i))),
                child: None,
            });
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..members {
            cluster.await_health(i, deadline)?;
        }
        Ok(cluster)
    }

    /// Every member's client URL, `http://127.0.0.1:PORT`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Member `i`'s process id, or `None` when it is not running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// SIGKILL member `i` by its pid and reap it: a crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM member `i`, wait up to 5 s for it to exit, then SIGKILL it.
    pub fn stop(&mut self, i: usize) {
        let Some(mut child) = self.members[i].child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Start member `i` again (after `kill` or `stop`) with its data dir and flags, and wait
    /// until it answers `/version` (it may not be healthy yet: see [`EtcdCluster::wait_healthy`]).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        if let Err(error) = self.spawn(i) {
            panic!("restarting etcd member {i}: {error}");
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http_get(self.members[i].client_port, "/version")
                .is_some_and(|body| body.contains("etcdserver"))
            {
                return;
            }
            if let Err(error) = self.check_running(i) {
                panic!("restarting etcd member {i}: {error}");
            }
            if Instant::now() >= deadline {
                panic!(
                    "restarting etcd member {i}: no /version answer within {START_TIMEOUT:?}; its log:\n{}",
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until member `i`'s `/health` says `{"health":"true"}` (it has a leader and answers
    /// reads); panics with its log after `timeout`.
    pub fn wait_healthy(&self, i: usize, timeout: Duration) {
        if let Err(error) = self.await_health(i, Instant::now() + timeout) {
            panic!("{error}");
        }
    }

    /// Member `i`'s `/health`: `Some(true)` healthy, `Some(false)` answering but unhealthy (e.g.
    /// no leader), `None` no answer.
    pub fn health(&self, i: usize) -> Option<bool> {
        let body = http_get(self.members[i].client_port, "/health")?;
        if body.contains(r#""health":"true""#) {
            Some(true)
        } else if body.contains(r#""health""#) {
            Some(false)
        } else {
            None
        }
    }

    /// The last lines member `i` logged (warnings and errors), for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let member = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|error| format!("{}: {error}", member.log.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|error| format!("{}: {error}", member.log.display()))?;
        let child = Command::new(ETCD)
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| format!("starting {ETCD} for member {}: {error}", member.name))?;
        member.child = Some(child);
        Ok(())
    }

    fn check_running(&mut self, i: usize) -> Result<(), String> {
        let exited = match self.members[i].child.as_mut() {
            None => Some("it is not running (killed or stopped)".to_string()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(format!("it exited ({status})")),
                _ => None,
            },
        };
        match exited {
            None => Ok(()),
            Some(why) => {
                self.members[i].child = None;
                Err(format!(
                    "etcd member {i}: {why}; its log:\n{}",
                    self.log_tail(i)
                ))
            }
        }
    }

    fn await_health(&self, i: usize, deadline: Instant) -> Result<(), String> {
        loop {
            if self.health(i) == Some(true) {
                return Ok(());
            }
            // `&self`: a member that exited shows in its log; `try_wait` needs `&mut`.
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd member {i} ({}) not healthy in time; its log:\n{}",
                    self.endpoint(i),
                    self.log_tail(i)
                ));
            }
            if self.log_tail(i).contains("address already in use") {
                return Err(format!(
                    "etcd member {i}: address already in use; its log:\n{}",
                    self.log_tail(i)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `count` distinct loopback ports that were free just now (all bound at once, then released).
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("binding 127.0.0.1:0 to find a free port: {error}"))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("reading a bound port: {error}"))
}

/// A plain HTTP/1.0 GET on loopback; the body, or `None` when nothing answered in time.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_head, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_string())
}
