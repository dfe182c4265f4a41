//! Restarting the Kafka unit: the seam between the agent and the host's service manager.
//!
//! Owns: the [`ServiceManager`] trait and its implementations — [`SystemdManager`] (systemd over the
//! system D-Bus), [`CommandManager`] (argv commands, for hosts without systemd) and
//! a recording fake for tests (compiled into tests only).
//!
//! Does not own: *whether* to restart (the reconciler decides, only when a rendered file changed) nor
//! whether the restarted broker is healthy as Kafka (the verify gates probe listeners and metadata).
//! "Restarted" here means the service manager reports the unit running again.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use zbus::blocking::{proxy::Builder as ProxyBuilder, Connection, Proxy};
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

/// How many bytes of a command's stderr an error keeps (the end, where the reason usually is).
const STDERR_TAIL_BYTES: usize = 2048;
/// How often [`CommandManager`] runs its status command.
const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often [`SystemdManager`] reads the unit's job and state while waiting.
const SYSTEMD_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why a restart did not bring the unit back. Every variant names the unit.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The system bus could not be reached at all.
    #[error(
        "cannot connect to the system D-Bus to restart units: {source}; \
         is systemd the init system here and is dbus running? \
         On hosts without systemd configure the command service manager instead"
    )]
    Connect {
        #[source]
        source: Box<zbus::Error>,
    },

    /// systemd does not know the unit.
    #[error(
        "systemd has no unit {unit:?}: {detail}; check the unit name in the agent config \
         (`systemctl list-unit-files '{unit}'`)"
    )]
    UnitNotFound { unit: String, detail: String },

    /// systemd refused the caller.
    #[error(
        "systemd refused to restart {unit}: {detail}; the agent must run as root \
         (or be allowed by polkit to manage {unit})"
    )]
    PermissionDenied { unit: String, detail: String },

    /// Any other D-Bus failure while talking to systemd. (`zbus::Error` is boxed: it is large and
    /// every `Result` of this module would carry its size.)
    #[error("D-Bus call {operation} for {unit} failed: {source}; see `journalctl -u {unit}` and the system bus log")]
    Dbus {
        unit: String,
        operation: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },

    /// The restart finished but the unit is not running.
    #[error(
        "{unit} did not come back after restart: ActiveState={active_state} SubState={sub_state}{}; \
         see `journalctl -u {unit}` for why it stopped",
        result.as_deref().map(|r| format!(" Result={r}")).unwrap_or_default()
    )]
    UnitFailed {
        unit: String,
        active_state: String,
        sub_state: String,
        /// The service's `Result` property (e.g. `exit-code`), when the unit is a service.
        result: Option<String>,
    },

    /// The restart did not finish in time.
    #[error(
        "{unit} was not running {timeout:?} after the restart was requested \
         (last seen ActiveState={active_state} SubState={sub_state}); \
         it may still be starting: see `systemctl status {unit}`, or raise the timeout"
    )]
    Timeout {
        unit: String,
        timeout: Duration,
        active_state: String,
        sub_state: String,
    },

    /// A configured command could not be started at all.
    #[error("cannot run `{command}` for {unit}: {source}; check the path and permissions in the agent config")]
    CommandSpawn {
        unit: String,
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// A configured command ran and failed.
    #[error(
        "`{command}` for {unit} failed with {status}{}",
        stderr_suffix(stderr_tail)
    )]
    CommandFailed {
        unit: String,
        command: String,
        /// e.g. "exit status 3" or "signal 9 (SIGKILL)".
        status: String,
        stderr_tail: String,
    },

    /// A configured restart command was still running at the timeout; it was killed.
    #[error(
        "`{command}` for {unit} was still running after {timeout:?} and was killed{}",
        stderr_suffix(stderr_tail)
    )]
    CommandTimeout {
        unit: String,
        command: String,
        timeout: Duration,
        stderr_tail: String,
    },

    /// The status command never reported healthy within the timeout.
    #[error(
        "{unit} was restarted but the status command `{command}` did not succeed within {timeout:?} \
         (last: {last_status}){}; check the service's own logs",
        stderr_suffix(stderr_tail)
    )]
    StatusTimeout {
        unit: String,
        command: String,
        timeout: Duration,
        last_status: String,
        stderr_tail: String,
    },

    /// A failure injected into the tests' fake service manager.
    #[cfg(test)]
    #[error("restart of {unit} failed (injected by the fake service manager): {message}")]
    Injected { unit: String, message: String },
}

fn stderr_suffix(stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr_tail}")
    }
}

/// The seam between the agent and the host's service manager.
pub trait ServiceManager: Send + Sync {
    /// Restart `unit` and wait until it is running again (or failed), at most `timeout`.
    fn restart(&self, unit: &str, timeout: Duration) -> Result<(), ServiceError>;
    /// Human name for logs, e.g. "systemd (D-Bus)" or "command".
    fn describe(&self) -> String;
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

const SYSTEMD_DESTINATION: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";

/// systemd over the system D-Bus.
///
/// `RestartUnit(unit, "replace")`, then polls the unit until its job is gone, then requires
/// `ActiveState == "active"` and that it *stays* active for a short settle window: a `Type=simple`
/// service whose process dies right after exec (bad config, missing file) completes its start job
/// successfully and only fails a few milliseconds later; without the settle window such a restart
/// would be reported as a success or a failure depending on timing.
///
/// Polling (every 100 ms, properties read uncached) rather than waiting for the `JobRemoved` signal
/// keeps this blocking and deadline-bound without a second thread or an async runtime; a Kafka
/// restart takes seconds, so the polling cost is irrelevant.
pub struct SystemdManager {
    connection: Connection,
    settle: Duration,
}

/// One reading of the unit's state.
#[derive(Debug, Clone, Default)]
struct UnitState {
    active_state: String,
    sub_state: String,
    /// Whether a job (our restart, or one systemd queued after it) is still pending.
    job_pending: bool,
    invocation_id: Vec<u8>,
}

impl SystemdManager {
    /// The settle window used unless [`SystemdManager::with_settle`] says otherwise.
    pub const DEFAULT_SETTLE: Duration = Duration::from_millis(1000);

    /// Connect to the system bus.
    pub fn connect() -> Result<Self, ServiceError> {
        let connection = Connection::system().map_err(|source| ServiceError::Connect {
            source: Box::new(source),
        })?;
        Ok(Self {
            connection,
            settle: Self::DEFAULT_SETTLE,
        })
    }

    /// How long the unit must stay `active` after its restart job finished (within the timeout).
    /// Zero accepts the first `active` reading.
    #[must_use]
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    fn proxy<'a>(
        &'a self,
        unit: &str,
        operation: &'static str,
        path: OwnedObjectPath,
        interface: &'static str,
    ) -> Result<Proxy<'a>, ServiceError> {
        ProxyBuilder::new(&self.connection)
            .destination(SYSTEMD_DESTINATION)
            .and_then(|b| b.path(path))
            .and_then(|b| b.interface(interface))
            .map(|b| b.cache_properties(CacheProperties::No))
            .and_then(|b| b.build())
            .map_err(|source| dbus_error(unit, operation, source))
    }

    fn manager(&self, unit: &str) -> Result<Proxy<'_>, ServiceError> {
        let path = OwnedObjectPath::try_from(SYSTEMD_PATH)
            .map_err(|e| dbus_error(unit, "Manager", zbus::Error::from(e)))?;
        self.proxy(unit, "Manager", path, MANAGER_INTERFACE)
    }

    fn read_state(&self, unit: &str, unit_proxy: &Proxy<'_>) -> Result<UnitState, ServiceError> {
        let get = |name: &'static str| -> Result<String, ServiceError> {
            unit_proxy
                .get_property::<String>(name)
                .map_err(|e| dbus_error(unit, name, e))
        };
        let (job_id, _job_path): (u32, OwnedObjectPath) = unit_proxy
            .get_property("Job")
            .map_err(|e| dbus_error(unit, "Job", e))?;
        let invocation_id: Vec<u8> = unit_proxy
            .get_property("InvocationID")
            .map_err(|e| dbus_error(unit, "InvocationID", e))?;
        Ok(UnitState {
            active_state: get("ActiveState")?,
            sub_state: get("SubState")?,
            job_pending: job_id != 0,
            invocation_id,
        })
    }

    /// The service's `Result` (e.g. "exit-code"); `None` for non-service units or on any error,
    /// since it only enriches an error message.
    fn service_result(&self, unit: &str, unit_path: &OwnedObjectPath) -> Option<String> {
        let proxy = self
            .proxy(unit, "Service", unit_path.clone(), SERVICE_INTERFACE)
            .ok()?;
        proxy.get_property::<String>("Result").ok()
    }

    fn failed(&self, unit: &str, unit_path: &OwnedObjectPath, state: UnitState) -> ServiceError {
        ServiceError::UnitFailed {
            unit: unit.to_owned(),
            active_state: state.active_state,
            sub_state: state.sub_state,
            result: self.service_result(unit, unit_path),
        }
    }
}

impl ServiceManager for SystemdManager {
    fn restart(&self, unit: &str, timeout: Duration) -> Result<(), ServiceError> {
        let deadline = Instant::now() + timeout;
        let manager = self.manager(unit)?;
        tracing::info!(unit, manager = "systemd", "restarting unit");
        let job: OwnedObjectPath = manager
            .call("RestartUnit", &(unit, "replace"))
            .map_err(|e| classify_restart_error(unit, e))?;
        let unit_path: OwnedObjectPath = manager
            .call("GetUnit", &(unit,))
            .map_err(|e| classify_restart_error(unit, e))?;
        let unit_proxy = self.proxy(unit, "Unit", unit_path.clone(), UNIT_INTERFACE)?;
        tracing::debug!(unit, job = job.as_str(), "restart job queued");

        let timed_out = |state: UnitState| ServiceError::Timeout {
            unit: unit.to_owned(),
            timeout,
            active_state: state.active_state,
            sub_state: state.sub_state,
        };

        // Phase 1: wait for the job to finish.
        let mut state = self.read_state(unit, &unit_proxy)?;
        while state.job_pending {
            if Instant::now() >= deadline {
                return Err(timed_out(state));
            }
            thread::sleep(SYSTEMD_POLL_INTERVAL.min(deadline - Instant::now()));
            state = self.read_state(unit, &unit_proxy)?;
        }
        if state.active_state != "active" {
            return Err(self.failed(unit, &unit_path, state));
        }

        // Phase 2: it must stay active (same invocation) for the settle window.
        let invocation = state.invocation_id.clone();
        let settled_at = (Instant::now() + self.settle).min(deadline);
        while Instant::now() < settled_at {
            thread::sleep(SYSTEMD_POLL_INTERVAL.min(settled_at - Instant::now()));
            state = self.read_state(unit, &unit_proxy)?;
            if state.active_state != "active" || state.invocation_id != invocation {
                return Err(self.failed(unit, &unit_path, state));
            }
        }
        tracing::info!(unit, sub_state = %state.sub_state, "unit active again after restart");
        Ok(())
    }

    fn describe(&self) -> String {
        "systemd (D-Bus)".to_owned()
    }
}

fn dbus_error(unit: &str, operation: &'static str, source: zbus::Error) -> ServiceError {
    ServiceError::Dbus {
        unit: unit.to_owned(),
        operation,
        source: Box::new(source),
    }
}

/// The D-Bus error name and message, whichever way zbus surfaced them.
fn error_name_and_detail(error: &zbus::Error) -> Option<(String, String)> {
    match error {
        zbus::Error::MethodError(name, detail, _) => Some((
            name.as_str().to_owned(),
            detail
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('.')
                .to_owned(),
        )),
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError;
            Some((
                fdo.name().to_string(),
                fdo.description()
                    .unwrap_or_default()
                    .trim_end_matches('.')
                    .to_owned(),
            ))
        }
        _ => None,
    }
}

fn classify_restart_error(unit: &str, error: zbus::Error) -> ServiceError {
    match error_name_and_detail(&error) {
        Some((name, detail))
            if name == "org.freedesktop.systemd1.NoSuchUnit"
                || name == "org.freedesktop.systemd1.LoadFailed" =>
        {
            ServiceError::UnitNotFound {
                unit: unit.to_owned(),
                detail,
            }
        }
        Some((name, detail))
            if name == "org.freedesktop.DBus.Error.AccessDenied"
                || name == "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" =>
        {
            ServiceError::PermissionDenied {
                unit: unit.to_owned(),
                detail,
            }
        }
        _ => dbus_error(unit, "RestartUnit", error),
    }
}

// ---------------------------------------------------------------------------------------------
// commands
// ---------------------------------------------------------------------------------------------

/// For hosts without systemd.
///
/// Runs `restart` (an argv, no shell) to completion — a non-zero exit is an error carrying the stderr
/// tail — then, if `status` is configured, runs it every 200 ms until it exits 0 or `timeout` (counted
/// from the start of the restart) passes. The unit name is passed to both commands in the environment
/// variable `KREACH_UNIT`.
///
/// Each command runs in its own process group; at the timeout the whole group gets SIGKILL, so a
/// hanging `sh -c '...'` does not leave its children behind. A restart command that *succeeds* may
/// leave a daemon running (that is how init scripts work); its output pipes are then not waited for.
#[derive(Debug, Clone)]
pub struct CommandManager {
    pub restart: Vec<String>,
    pub status: Option<Vec<String>>,
}

/// How one command run ended.
enum CommandOutcome {
    Exited {
        status: ExitStatus,
        stderr_tail: String,
    },
    TimedOut {
        stderr_tail: String,
    },
}

impl CommandManager {
    fn run_once(
        &self,
        unit: &str,
        argv: &[String],
        deadline: Instant,
    ) -> Result<CommandOutcome, ServiceError> {
        let command_line = display_command(argv);
        let Some((program, args)) = argv.split_first() else {
            return Err(ServiceError::CommandSpawn {
                unit: unit.to_owned(),
                command: command_line,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let mut child = Command::new(program)
            .args(args)
            .env("KREACH_UNIT", unit)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| ServiceError::CommandSpawn {
                unit: unit.to_owned(),
                command: command_line.clone(),
                source,
            })?;
        let pid = child.id();
        let stderr = TailReader::start(child.stderr.take());
        let stdout = TailReader::start(child.stdout.take());

        // A thread owns the child and reaps it; the channel gives us a wait with a deadline.
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = done_tx.send(child.wait());
        });
        let remaining = deadline.saturating_duration_since(Instant::now());
        let waited = match done_rx.recv_timeout(remaining) {
            Ok(waited) => Some(waited),
            Err(_) => {
                kill_process_group(pid);
                // Reaped by the thread right after the kill; the result no longer matters.
                let _ = done_rx.recv();
                None
            }
        };
        let stdout_tail = stdout.finish();
        let stderr_tail = stderr.finish();
        if !stdout_tail.is_empty() {
            tracing::debug!(unit, command = %command_line, stdout = %stdout_tail, "command output");
        }
        match waited {
            None => Ok(CommandOutcome::TimedOut { stderr_tail }),
            Some(Ok(status)) => Ok(CommandOutcome::Exited {
                status,
                stderr_tail,
            }),
            Some(Err(source)) => Err(ServiceError::CommandSpawn {
                unit: unit.to_owned(),
                command: command_line,
                source,
            }),
        }
    }
}

impl ServiceManager for CommandManager {
    fn restart(&self, unit: &str, timeout: Duration) -> Result<(), ServiceError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let restart_line = display_command(&self.restart);
        tracing::info!(unit, command = %restart_line, "restarting unit");
        match self.run_once(unit, &self.restart, deadline)? {
            CommandOutcome::TimedOut { stderr_tail } => {
                return Err(ServiceError::CommandTimeout {
                    unit: unit.to_owned(),
                    command: restart_line,
                    timeout,
                    stderr_tail,
                })
            }
            CommandOutcome::Exited {
                status,
                stderr_tail,
            } if !status.success() => {
                return Err(ServiceError::CommandFailed {
                    unit: unit.to_owned(),
                    command: restart_line,
                    status: describe_status(status),
                    stderr_tail,
                })
            }
            CommandOutcome::Exited { .. } => {}
        }

        let Some(status_argv) = &self.status else {
            tracing::info!(
                unit,
                "restart command succeeded (no status command configured)"
            );
            return Ok(());
        };
        let status_line = display_command(status_argv);
        let mut polls = 0u32;
        // The last poll that ran to its end: more telling than one cut off by the deadline.
        let mut finished: Option<(String, String)> = None;
        loop {
            polls += 1;
            let (last_status, stderr_tail) = match self.run_once(unit, status_argv, deadline)? {
                CommandOutcome::Exited { status, .. } if status.success() => {
                    tracing::info!(unit, polls, elapsed = ?start.elapsed(), "status command reports healthy");
                    return Ok(());
                }
                CommandOutcome::Exited {
                    status,
                    stderr_tail,
                } => {
                    finished = Some((describe_status(status), stderr_tail.clone()));
                    (describe_status(status), stderr_tail)
                }
                CommandOutcome::TimedOut { stderr_tail } => finished.clone().unwrap_or((
                    "still running at the timeout, killed".to_owned(),
                    stderr_tail,
                )),
            };
            let now = Instant::now();
            if now + STATUS_POLL_INTERVAL >= deadline {
                return Err(ServiceError::StatusTimeout {
                    unit: unit.to_owned(),
                    command: status_line,
                    timeout,
                    last_status,
                    stderr_tail,
                });
            }
            thread::sleep(STATUS_POLL_INTERVAL);
        }
    }

    fn describe(&self) -> String {
        format!("command (`{}`)", display_command(&self.restart))
    }
}

fn kill_process_group(pid: u32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let Ok(pid) = i32::try_from(pid) else { return };
    // ESRCH (already gone) is fine: the point is that nothing is left running.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(sig) => format!("signal {signal} ({sig})"),
            Err(_) => format!("signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// An argv as a human would type it (quoted where needed); for messages only, never executed.
fn display_command(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a pipe to its end on a thread, keeping only the last [`STDERR_TAIL_BYTES`].
struct TailReader {
    buffer: Arc<Mutex<VecDeque<u8>>>,
    done: Option<mpsc::Receiver<()>>,
}

impl TailReader {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Self {
        let buffer = Arc::new(Mutex::new(VecDeque::new()));
        let Some(mut pipe) = pipe else {
            return Self { buffer, done: None };
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(&buffer);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                let mut tail = shared.lock().unwrap_or_else(|p| p.into_inner());
                tail.extend(&chunk[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                tail.drain(..excess);
            }
            let _ = tx.send(());
        });
        Self {
            buffer,
            done: Some(rx),
        }
    }

    /// The tail so far, after waiting briefly for end-of-file: a daemon started by the command may
    /// hold the pipe open forever, and we must not wait for it.
    fn finish(self) -> String {
        if let Some(done) = self.done {
            let _ = done.recv_timeout(Duration::from_millis(200));
        }
        let tail = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// fake (tests only: not in the product binary)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
pub use fake::{FakeServiceManager, RestartRecord};

#[cfg(test)]
mod fake {
    use super::{ServiceError, ServiceManager};
    use std::fmt;
    use std::sync::Mutex;
    use std::thread;
    use std::time::{Duration, Instant};

    /// One restart seen by [`FakeServiceManager`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RestartRecord {
        pub unit: String,
        pub started: Instant,
        pub finished: Instant,
        /// The injected failure message, if this restart was made to fail.
        pub failure: Option<String>,
    }

    #[derive(Debug, Default)]
    struct FakeState {
        records: Vec<RestartRecord>,
        /// Failures keyed by the 1-based number of the restart they apply to.
        planned_failures: Vec<(usize, String)>,
        delay: Duration,
    }

    /// A recording fake for tests of the engine: records every restart (unit, start and end instant)
    /// and fails the restarts it was told to.
    #[derive(Debug, Default)]
    pub struct FakeServiceManager {
        state: Mutex<FakeState>,
    }

    impl FakeServiceManager {
        pub fn new() -> Self {
            Self::default()
        }

        /// Each restart takes this long (so tests can observe overlap between nodes).
        #[must_use]
        pub fn with_delay(self, delay: Duration) -> Self {
            self.lock().delay = delay;
            self
        }

        /// Make the next restart fail with `message`.
        pub fn fail_next(&self, message: impl Into<String>) {
            let mut state = self.lock();
            let next = state.records.len() + 1;
            state.planned_failures.push((next, message.into()));
        }

        /// Make the `n`th restart (1-based, counting all restarts this fake has seen) fail with `message`.
        pub fn fail_nth(&self, n: usize, message: impl Into<String>) {
            self.lock().planned_failures.push((n, message.into()));
        }

        /// The units restarted so far, in order (failed restarts included).
        pub fn restarts(&self) -> Vec<String> {
            self.lock().records.iter().map(|r| r.unit.clone()).collect()
        }

        /// Every restart with its timing.
        pub fn records(&self) -> Vec<RestartRecord> {
            self.lock().records.clone()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    impl ServiceManager for FakeServiceManager {
        fn restart(&self, unit: &str, _timeout: Duration) -> Result<(), ServiceError> {
            let started = Instant::now();
            let (number, delay) = {
                let mut state = self.lock();
                // Reserve our slot now so concurrent restarts number themselves in call order.
                state.records.push(RestartRecord {
                    unit: unit.to_owned(),
                    started,
                    finished: started,
                    failure: None,
                });
                (state.records.len(), state.delay)
            };
            if !delay.is_zero() {
                thread::sleep(delay);
            }
            let mut state = self.lock();
            let failure = state
                .planned_failures
                .iter()
                .position(|(n, _)| *n == number)
                .map(|i| state.planned_failures.remove(i).1);
            let record = &mut state.records[number - 1];
            record.finished = Instant::now();
            record.failure.clone_from(&failure);
            match failure {
                Some(message) => Err(ServiceError::Injected {
                    unit: unit.to_owned(),
                    message,
                }),
                None => Ok(()),
            }
        }

        fn describe(&self) -> String {
            "fake".to_owned()
        }
    }

    impl fmt::Display for RestartRecord {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "{} ({:?}{})",
                self.unit,
                self.finished - self.started,
                self.failure
                    .as_deref()
                    .map(|m| format!(", failed: {m}"))
                    .unwrap_or_default()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_records_and_fails_the_nth_restart() {
        let fake = FakeServiceManager::new();
        fake.fail_nth(2, "boom");
        assert!(fake.restart("a.service", Duration::from_secs(1)).is_ok());
        let err = fake
            .restart("b.service", Duration::from_secs(1))
            .unwrap_err();
        assert!(err.to_string().contains("b.service") && err.to_string().contains("boom"));
        fake.fail_next("again");
        assert!(fake.restart("c.service", Duration::from_secs(1)).is_err());
        assert!(fake.restart("d.service", Duration::from_secs(1)).is_ok());
        assert_eq!(
            fake.restarts(),
            ["a.service", "b.service", "c.service", "d.service"]
        );
        let records = fake.records();
        assert_eq!(records[1].failure.as_deref(), Some("boom"));
        assert!(records.iter().all(|r| r.finished >= r.started));
    }

    #[test]
    fn display_command_quotes_what_a_shell_would_split() {
        let argv = ["sh", "-c", "echo 'hi' there", ""].map(String::from);
        assert_eq!(display_command(&argv), r"sh -c 'echo '\''hi'\'' there' ''");
    }

    #[test]
    fn unit_failed_message_names_unit_state_and_result() {
        let err = ServiceError::UnitFailed {
            unit: "kafka.service".into(),
            active_state: "failed".into(),
            sub_state: "failed".into(),
            result: Some("exit-code".into()),
        };
        let text = err.to_string();
        assert!(text.contains("kafka.service did not come back"), "{text}");
        assert!(
            text.contains("ActiveState=failed SubState=failed Result=exit-code"),
            "{text}"
        );
        assert!(text.contains("journalctl -u kafka.service"), "{text}");
    }
}
