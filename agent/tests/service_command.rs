//! CommandManager against real processes: restart scripts, failing commands, status polling,
//! timeouts that must kill what they started.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use kreach_agent::service::{CommandManager, ServiceError, ServiceManager};

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn manager(restart: Vec<String>, status: Option<Vec<String>>) -> CommandManager {
    CommandManager { restart, status }
}

/// Whether a process with this pid still exists (and is not a zombie).
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z")
        }
        Err(_) => false,
    }
}

#[test]
fn restart_script_runs_with_the_unit_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("restarts.log");
    let script = format!(
        r#"echo "restart $KREACH_UNIT start=$(date +%s%N)" >> {log}; echo "end=$(date +%s%N)" >> {log}"#,
        log = log.display()
    );
    let manager = manager(sh(&script), None);
    manager
        .restart("kafka.service", Duration::from_secs(10))
        .unwrap();
    manager
        .restart("kafka.service", Duration::from_secs(10))
        .unwrap();

    let lines: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 4, "two restarts, two lines each: {lines:?}");
    assert!(
        lines[0].starts_with("restart kafka.service start="),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("restart kafka.service start="),
        "{lines:?}"
    );
    let stamp = |line: &str| -> u128 { line.rsplit('=').next().unwrap().parse().unwrap() };
    // The second restart began only after the first one ended: restart runs to completion.
    assert!(stamp(&lines[2]) >= stamp(&lines[1]), "{lines:?}");
    assert!(manager.describe().starts_with("command"));
}

#[test]
fn failing_restart_reports_exit_code_and_stderr() {
    let manager = manager(
        sh("echo 'some noise' >&2; echo 'kafka: config invalid, listeners missing' >&2; exit 3"),
        None,
    );
    let err = manager
        .restart("kafka.service", Duration::from_secs(10))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ServiceError::CommandFailed { unit, status, stderr_tail, .. }
            if unit == "kafka.service" && status == "exit status 3"
                && stderr_tail.ends_with("kafka: config invalid, listeners missing")),
        "{err:?}"
    );
    assert!(text.contains("exit status 3"), "{text}");
    assert!(
        text.contains("kafka: config invalid, listeners missing"),
        "{text}"
    );
    assert!(text.contains("kafka.service"), "{text}");
    assert!(
        text.contains("/bin/sh -c"),
        "message names the command: {text}"
    );
}

#[test]
fn missing_program_is_a_spawn_error_naming_it() {
    let manager = manager(vec!["/nonexistent/kafka-restart".into()], None);
    let err = manager
        .restart("kafka.service", Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(err, ServiceError::CommandSpawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/kafka-restart"));
}

#[test]
fn status_command_is_polled_until_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("polls");
    // Healthy from the fourth poll on.
    let status = format!(
        r#"n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ "$KREACH_UNIT" = kafka.service ] && [ $n -ge 4 ]"#,
        c = counter.display()
    );
    let manager = manager(vec!["/bin/true".into()], Some(sh(&status)));
    let started = Instant::now();
    manager
        .restart("kafka.service", Duration::from_secs(20))
        .unwrap();
    let polls: u32 = fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(polls, 4);
    // Three failed polls, 200 ms apart.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn status_that_never_succeeds_times_out() {
    let manager = manager(
        vec!["/bin/true".into()],
        Some(sh("echo 'not listening on 9092' >&2; exit 1")),
    );
    let started = Instant::now();
    let err = manager
        .restart("kafka.service", Duration::from_millis(1500))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, ServiceError::StatusTimeout { unit, last_status, stderr_tail, .. }
            if unit == "kafka.service" && last_status == "exit status 1"
                && stderr_tail == "not listening on 9092"),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not succeed within"), "{err}");
    assert!(
        elapsed < Duration::from_secs(3),
        "gave up in time: {elapsed:?}"
    );
}

#[test]
fn hanging_restart_is_killed_at_the_timeout_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The shell starts a child and waits on it: both must be gone afterwards.
    let script = format!(
        "echo starting >&2; sleep 300 & echo $$ $! > {p}; wait",
        p = pids.display()
    );
    let manager = manager(sh(&script), Some(vec!["/bin/true".into()]));
    let started = Instant::now();
    let err = manager
        .restart("kafka.service", Duration::from_millis(800))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, ServiceError::CommandTimeout { unit, stderr_tail, .. }
            if unit == "kafka.service" && stderr_tail == "starting"),
        "{err:?}"
    );
    assert!(err.to_string().contains("was killed"), "{err}");
    assert!(
        elapsed < Duration::from_secs(3),
        "returned promptly: {elapsed:?}"
    );

    // SIGKILL to the group is immediate, but an orphaned grandchild's exit is reaped by init a
    // moment later: allow that moment, not a survivor.
    let recorded = fs::read_to_string(&pids).unwrap();
    for pid in recorded.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid), "process {pid} survived the timeout");
    }
}

#[test]
fn restart_that_leaves_a_daemon_behind_does_not_block() {
    // Like an init script: starts a daemon that inherits stdout/stderr, then exits 0.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("daemon.pid");
    let script = format!("sleep 30 & echo $! > {p}; exit 0", p = pid_file.display());
    let manager = manager(sh(&script), None);
    let started = Instant::now();
    manager
        .restart("kafka.service", Duration::from_secs(10))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Clean up the daemon we made, by the pid it recorded.
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(Path::new(&pid_file).exists());
}
