//! Fault injection (issue 6 item 3): a real coordinator and real agents (tests/src/fleet.rs), one
//! fault at a time, each checked the way a user would check it:
//! - what the user sees: `kreachctl status --output json` (rollout state, paused node and reason, a
//!   node's phase and online flag) or the agent's own exit and log;
//! - that no managed file is ever torn or empty: a sampler reads every managed file of the fleet
//!   every few milliseconds for the whole fault and checks each version it sees (besides explicit
//!   checks at every observation point);
//! - that no more than `max_unavailable` brokers were down at once, from the stand-in Kafka's own
//!   restart log (restarts of one broker that overlap count once: it is one broker down).
//!
//! One test runs every fault, counts what it tried and prints a table at the end (straight to
//! stderr, so it shows even without `--nocapture`):
//!
//! ```text
//! cargo test -p kreach-tests --test faults -- --nocapture
//! ```
//!
//! Disk full (tmpfs), immutable files (chattr) and the network cut (network namespaces) need root;
//! the clock fault needs libfaketime (`apt-get install -y faketime`; tests/install.sh does). A
//! fault that cannot run fails its row with the fix, unless the faults tier is opted out
//! (`KREACH_SKIP=faults`): then it shows as opted out and the rest still runs.
//! `KREACH_FAULTS=3,8` runs only those faults (while working on one; the others show as opted out).
//! The network fault waits for HTTP/2 keep-alives to notice the cut (up to ~40 s), so it runs on a
//! second lane beside the others.

use std::fs::File;
use std::io::Write as _;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kreach_test_parts::{Missing, Tier};
use kreach_tests::fleet::{
    agent_binary, max_concurrent, now_ns, restarts_since, Fleet, FleetSpec, Proc, Restart,
};
use serde_json::Value;

/// Every fault the suite injects; the test fails unless each was tried (or opted out, loudly).
const PLANNED: usize = 8;

// ------------------------------------------------------------------------------------------------
// The run and its table
// ------------------------------------------------------------------------------------------------

#[test]
fn every_fault_leaves_files_whole_keeps_max_unavailable_and_says_what_happened() {
    let started = Instant::now();
    // The network fault spends most of its time waiting for keep-alives: its own lane.
    let network = std::thread::spawn(|| {
        run_fault("5 network cut agent<->coordinator", true, fault_network_cut)
    });
    let mut rows = vec![
        run_fault("1 disk full while writing", true, fault_disk_full),
        run_fault("2 managed file immutable", true, fault_immutable),
        run_fault(
            "3 state dir removed under agent",
            false,
            fault_state_dir_removed,
        ),
        run_fault(
            "4 coordinator SIGKILL + restart",
            false,
            fault_coordinator_killed,
        ),
        run_fault("6 agent SIGKILL during apply", false, fault_agent_killed),
        run_fault("7 two agents on one node", false, fault_two_agents),
        run_fault("8 clock jumps (faketime)", false, fault_clock_jumps),
    ];
    rows.push(
        network
            .join()
            .expect("the network lane reports, never panics"),
    );
    rows.sort_by(|a, b| a.fault.cmp(b.fault));

    let tried = rows.iter().filter(|row| row.tried).count();
    let opted_out = rows
        .iter()
        .filter(|row| row.result.starts_with("OPTED OUT"))
        .count();
    print_table(&rows);
    loud(&format!(
        "faults: planned {PLANNED}, tried {tried}, opted out {opted_out}, in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(rows.len(), PLANNED, "one row per planned fault");
    let failed: Vec<String> = rows
        .iter()
        .filter(|row| row.result != "PASS" && !row.result.starts_with("OPTED OUT"))
        .map(|row| format!("{}: {}", row.fault, row.result))
        .collect();
    assert!(failed.is_empty(), "faults failed:\n{}", failed.join("\n"));
    assert_eq!(
        tried + opted_out,
        PLANNED,
        "every planned fault was injected or opted out loudly"
    );
}

/// One line of the table. `tried` is set once the fault has really been injected.
#[derive(Default)]
struct Row {
    fault: &'static str,
    sees: String,
    intact: String,
    max_unavailable: String,
    result: String,
    tried: bool,
}

/// A part a fault needs is missing and the faults tier is opted out: the row says so.
#[derive(Debug)]
struct OptedOut(String);

impl std::fmt::Display for OptedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptedOut {}

/// Whether `fault` runs without `missing`: `Err(OptedOut)` when the faults tier is opted out, an
/// error naming the fix otherwise (the row fails).
fn need(fault: &str, missing: Option<Missing>) -> Result<()> {
    let what = missing.as_ref().map(|m| m.what.clone()).unwrap_or_default();
    match kreach_test_parts::check(Tier::Faults, fault, missing) {
        Ok(true) => Ok(()),
        Ok(false) => Err(OptedOut(what).into()),
        Err(message) => bail!("{message}"),
    }
}

fn run_fault(fault: &'static str, needs_root: bool, body: fn(&mut Row) -> Result<()>) -> Row {
    let mut row = Row {
        fault,
        ..Row::default()
    };
    if let Ok(only) = std::env::var("KREACH_FAULTS") {
        let number = fault.split_whitespace().next().unwrap_or_default();
        if !only.split(',').any(|wanted| wanted.trim() == number) {
            kreach_test_parts::opted_out(
                Tier::Faults,
                fault,
                &format!("not in KREACH_FAULTS={only}"),
            );
            row.result = "OPTED OUT (not in KREACH_FAULTS)".into();
            return row;
        }
    }
    loud(&format!("faults: == {fault}"));
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if needs_root {
            need(fault, (!is_root()).then(Missing::not_root))?;
        }
        body(&mut row)
    }));
    row.result = match outcome {
        Ok(Ok(())) => "PASS".into(),
        Ok(Err(error)) => match error.downcast_ref::<OptedOut>() {
            Some(why) => format!("OPTED OUT ({why})"),
            None => format!("FAIL: {error:#}"),
        },
        Err(panic) => format!(
            "FAIL (panic): {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        ),
    };
    row.sees = tidy_paths(&row.sees);
    loud(&format!(
        "faults: == {fault}: {} ({:.1} s)\n   user sees: {}\n   files: {}\n   max_unavailable: {}",
        row.result,
        started.elapsed().as_secs_f64(),
        row.sees,
        row.intact,
        row.max_unavailable
    ));
    row
}

/// The fleets' temp directories (`/tmp/.tmpAbC123`) as `$FLEET`, so the table shows what matters.
fn tidy_paths(text: &str) -> String {
    let prefix = format!("{}/.tmp", std::env::temp_dir().display());
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&prefix) {
        out.push_str(&rest[..at]);
        out.push_str("$FLEET");
        let after = &rest[at + prefix.len()..];
        rest = &after[after.find('/').unwrap_or(after.len())..];
    }
    out.push_str(rest);
    out
}

fn print_table(rows: &[Row]) {
    let cut = |text: &str, width: usize| -> String {
        let one_line = text.replace('\n', " ");
        if one_line.chars().count() <= width {
            one_line
        } else {
            let mut short: String = one_line.chars().take(width - 1).collect();
            short.push('…');
            short
        }
    };
    let mut out = String::from("\nfault-injection suite (issue 6 item 3)\n");
    out += &format!(
        "{:<34} | {:<110} | {:<38} | {:<38} | result\n",
        "fault", "what the user sees", "files intact", "max_unavailable respected"
    );
    out += &format!("{}\n", "-".repeat(34 + 110 + 38 + 38 + 20));
    for row in rows {
        out += &format!(
            "{:<34} | {:<110} | {:<38} | {:<38} | {}\n",
            row.fault,
            cut(&row.sees, 110),
            cut(&row.intact, 38),
            cut(&row.max_unavailable, 38),
            cut(&row.result, 60)
        );
    }
    out += "\nwhat the user sees, in full:\n";
    for row in rows {
        out += &format!("  {}: {}\n", row.fault, row.sees);
    }
    loud(&out);
}

/// Straight to the process's stderr, past the test harness's capture.
fn loud(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn is_root() -> bool {
    kreach_test_parts::is_root()
}

// ------------------------------------------------------------------------------------------------
// Shared checks: whole files, restart windows, fleet set-up
// ------------------------------------------------------------------------------------------------

type Check = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// A hosts file is whole when its unmanaged first line is there, it ends in a newline and it has
/// either no kreach block or one complete block.
fn hosts_check() -> Check {
    Box::new(|text: &str| {
        if text.is_empty() {
            return Err("empty".into());
        }
        if !text.starts_with("127.0.0.1\tlocalhost\n") {
            return Err("the unmanaged localhost line is gone".into());
        }
        if !text.ends_with('\n') {
            return Err("cut short (no final newline)".into());
        }
        let begins = text.matches("# BEGIN kreach").count();
        let ends = text.matches("# END kreach").count();
        if begins != ends || begins > 1 {
            return Err(format!("{begins} BEGIN and {ends} END markers"));
        }
        Ok(())
    })
}

/// A server.properties is whole when every unmanaged line is there, each managed key exactly once,
/// the CONTROLLER listener kept, and it ends in a newline.
fn properties_check(id: u32) -> Check {
    let unmanaged = vec![
        format!("# KRaft broker {id}\n"),
        format!("node.id={id}\n"),
        "process.roles=broker,controller\n".to_string(),
        "controller.listener.names=CONTROLLER\n".to_string(),
        "inter.broker.listener.name=INTERNAL\n".to_string(),
    ];
    Box::new(move |text: &str| {
        if text.is_empty() {
            return Err("empty".into());
        }
        if !text.ends_with('\n') {
            return Err("cut short (no final newline)".into());
        }
        for line in &unmanaged {
            if !text.contains(line.as_str()) {
                return Err(format!("the unmanaged line {:?} is gone", line.trim_end()));
            }
        }
        for key in ["listeners=", "advertised.listeners="] {
            let count = text.lines().filter(|line| line.starts_with(key)).count();
            if count != 1 {
                return Err(format!("{key} appears {count} times"));
            }
        }
        let listeners = text
            .lines()
            .find(|line| line.starts_with("listeners="))
            .unwrap_or_default();
        if !listeners.contains("CONTROLLER://") {
            return Err("the CONTROLLER listener was dropped".into());
        }
        Ok(())
    })
}

/// Every managed file of the fleet with its check.
fn managed_files(fleet: &Fleet) -> Vec<(PathBuf, Check)> {
    let mut files: Vec<(PathBuf, Check)> = Vec::new();
    for broker in &fleet.brokers {
        files.push((broker.properties_path(), properties_check(broker.id)));
        files.push((broker.dir.join("etc/hosts"), hosts_check()));
    }
    for (_, dir) in &fleet.clients {
        files.push((dir.join("etc/hosts"), hosts_check()));
    }
    files
}

/// Check every managed file now (an observation point).
fn check_files_now(fleet: &Fleet, when: &str) -> Result<()> {
    for (path, check) in managed_files(fleet) {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{when}: {} unreadable", path.display()))?;
        if let Err(why) = check(&text) {
            bail!("{when}: {} is not whole: {why}:\n{text}", path.display());
        }
        let dir = path.parent().unwrap();
        let leftovers: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".kreach-tmp."))
            .collect();
        ensure!(
            leftovers.is_empty(),
            "{when}: temp files left in {}: {leftovers:?}",
            dir.display()
        );
    }
    Ok(())
}

/// What the sampler saw of one file.
struct Sampled {
    path: PathBuf,
    /// Each distinct content, with when it was first seen.
    versions: Vec<(String, u128)>,
    reads: usize,
    bad: Vec<String>,
}

/// Reads every managed file every few milliseconds until finished (at most ten minutes).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sampled>>>,
}

impl Sampler {
    fn start(fleet: &Fleet) -> Sampler {
        let files = managed_files(fleet);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut sampled: Vec<Sampled> = files
                .iter()
                .map(|(path, _)| Sampled {
                    path: path.clone(),
                    versions: Vec::new(),
                    reads: 0,
                    bad: Vec::new(),
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                for ((path, check), seen) in files.iter().zip(sampled.iter_mut()) {
                    seen.reads += 1;
                    match std::fs::read_to_string(path) {
                        Ok(text) => {
                            if seen.versions.iter().all(|(known, _)| *known != text) {
                                if let Err(why) = check(&text) {
                                    seen.bad.push(format!(
                                        "{}: {why}: {:?}",
                                        path.display(),
                                        text.chars().take(300).collect::<String>()
                                    ));
                                }
                                seen.versions.push((text, now_ns()));
                            }
                        }
                        Err(error) => {
                            if seen.bad.len() < 10 {
                                seen.bad
                                    .push(format!("{}: unreadable: {error}", path.display()));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            sampled
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop sampling, fill the row's "files intact" column, and fail on any torn or empty version.
    fn finish(mut self, row: &mut Row) -> Result<Vec<Sampled>> {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self
            .thread
            .take()
            .unwrap()
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        let reads: usize = sampled.iter().map(|s| s.reads).sum();
        let versions: usize = sampled.iter().map(|s| s.versions.len()).sum();
        let bad: Vec<&String> = sampled.iter().flat_map(|s| &s.bad).collect();
        if bad.is_empty() {
            row.intact = format!(
                "yes: {reads} reads, {} files, {versions} versions",
                sampled.len()
            );
            Ok(sampled)
        } else {
            row.intact = format!("NO: {} torn/empty/missing", bad.len());
            bail!("managed files not whole: {bad:#?}")
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every version the sampler saw of `path` was exactly `old` or exactly `new`: never a mix.
fn only_old_or_new(sampled: &[Sampled], path: &Path, old: &str, new: &str) -> Result<usize> {
    let seen = sampled
        .iter()
        .find(|s| s.path == path)
        .with_context(|| format!("{} was sampled", path.display()))?;
    for (version, _) in &seen.versions {
        ensure!(
            version == old || version == new,
            "{} was neither the old nor the new content at one point:\n{version}",
            path.display()
        );
    }
    Ok(seen.versions.len())
}

/// The most brokers down at one moment since `since_ns`: each broker's overlapping restarts are one
/// outage; then the outages of different brokers are counted against `max_unavailable`.
fn check_max_unavailable(
    row: &mut Row,
    fleet: &Fleet,
    since_ns: u128,
    max_unavailable: usize,
) -> Result<()> {
    let restarts = restarts_since(fleet, since_ns);
    let mut outages: Vec<Restart> = Vec::new();
    for broker in &fleet.brokers {
        let mut mine: Vec<Restart> = restarts
            .iter()
            .filter(|(id, _)| *id == broker.id)
            .map(|(_, r)| *r)
            .collect();
        mine.sort_by_key(|r| r.start_ns);
        let mut merged: Vec<Restart> = Vec::new();
        for window in mine {
            match merged.last_mut() {
                Some(last) if window.start_ns <= last.end_ns => {
                    last.end_ns = last.end_ns.max(window.end_ns)
                }
                _ => merged.push(window),
            }
        }
        outages.extend(merged);
    }
    let most = max_concurrent(&outages);
    let ok = most <= max_unavailable;
    row.max_unavailable = format!(
        "{}: at most {most} of {max_unavailable} down ({} restarts)",
        if ok { "yes" } else { "NO" },
        restarts.len()
    );
    ensure!(
        ok,
        "{most} brokers down at once, max_unavailable = {max_unavailable}: {restarts:?}"
    );
    Ok(())
}

/// Apply with `--force`: these "brokers" share one host, so their host facts never match the spec.
fn apply(fleet: &Fleet, spec: &Path) -> Result<()> {
    let run = fleet.ctl(&["apply", "--yes", "--force", spec.to_str().unwrap()])?;
    ensure!(
        run.code == 0,
        "apply failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    Ok(())
}

/// Start the coordinator and the agents, and roll generation 1 out.
fn start_on_generation_1(fleet: &mut Fleet, spec: &FleetSpec) -> Result<()> {
    fleet.start_coordinator()?;
    fleet.start_agents(None)?;
    let gen1 = fleet.write_spec("gen1.toml", spec)?;
    apply(fleet, &gen1)?;
    fleet.wait_for_rollout("completed", Duration::from_secs(60))?;
    Ok(())
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == name))
        .unwrap_or(&Value::Null)
}

fn ctl_ok(fleet: &Fleet, args: &[&str]) -> Result<String> {
    let run = fleet.ctl(args)?;
    ensure!(
        run.code == 0,
        "kreachctl {args:?} failed:\n{}{}",
        run.stdout,
        run.stderr
    );
    Ok(run.stdout)
}

/// Wait until `condition` holds, polling every 20 ms for at most `timeout`.
fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn temp_files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(".kreach-tmp."))
                .collect()
        })
        .unwrap_or_default()
}

/// Replace a file by rename, so the sampler never sees the test's own write half done.
fn replace_file(path: &Path, content: &str) -> Result<()> {
    let temp = path.with_extension("test-drift");
    std::fs::write(&temp, content)?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

fn short(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

// ------------------------------------------------------------------------------------------------
// 1. Disk full while writing
// ------------------------------------------------------------------------------------------------

/// A small tmpfs mounted on a directory; unmounted (lazily, so a busy mount never blocks) on drop.
struct Tmpfs {
    path: PathBuf,
    filler: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Result<Tmpfs> {
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={bytes},mode=0755").as_str()),
        )
        .with_context(|| format!("mounting a tmpfs on {}", path.display()))?;
        Ok(Tmpfs {
            path: path.to_path_buf(),
            filler: path.join("filler"),
        })
    }

    /// Fill it until the kernel says ENOSPC; returns the bytes written.
    fn fill(&self) -> Result<u64> {
        let mut file = File::create(&self.filler)?;
        let chunk = vec![b'x'; 4096];
        let mut written = 0u64;
        for _ in 0..100_000 {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => {
                    // Check it is really full: not even one more byte in a new file.
                    let probe = self.path.join("probe");
                    let full = std::fs::write(&probe, b"x").is_err();
                    let _ = std::fs::remove_file(&probe);
                    ensure!(full, "the tmpfs still takes bytes after ENOSPC");
                    return Ok(written);
                }
                Err(error) => return Err(error.into()),
            }
        }
        bail!("{} never filled up", self.path.display())
    }

    fn make_room(&self) -> Result<()> {
        std::fs::remove_file(&self.filler)?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(error) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            loud(&format!(
                "faults: cannot unmount the tmpfs on {}: {error}",
                self.path.display()
            ));
        }
    }
}

fn fault_disk_full(row: &mut Row) -> Result<()> {
    let mut fleet = Fleet::new(61, 2, &[("etl-1", "private")])?;
    let props = fleet.brokers[0].properties_path();
    let dir = props.parent().unwrap().to_path_buf();
    let original = std::fs::read(&props)?;
    // Broker 1's Kafka config directory on a 64 KiB tmpfs, before anything watches it.
    let tmpfs = Tmpfs::mount(&dir, 64 * 1024)?;
    std::fs::write(&props, &original)?;
    start_on_generation_1(&mut fleet, &FleetSpec::default())?;
    let old = std::fs::read_to_string(&props)?;

    let sampler = Sampler::start(&fleet);
    let since = now_ns();
    let filled = tmpfs.fill()?;
    row.tried = true;
    let gen2 = fleet.write_spec(
        "gen2.toml",
        &FleetSpec {
            external: true,
            ..FleetSpec::default()
        },
    )?;
    apply(&fleet, &gen2)?;
    let status = fleet.wait_for_rollout("paused", Duration::from_secs(60))?;
    let reason = status["rollout"]["paused_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    row.sees = format!(
        "paused at {}: {reason}",
        status["rollout"]["paused_node"].as_str().unwrap_or("?")
    );
    ensure!(
        status["rollout"]["paused_node"] == "emr-worker-1",
        "{status:#}"
    );
    ensure!(
        reason.contains("no space left on device") && reason.contains(&props.display().to_string()),
        "the reason names the file and the cause: {reason}"
    );
    ensure!(
        node(&status, "emr-worker-1")["phase"] == "failed",
        "{status:#}"
    );
    ensure!(
        std::fs::read_to_string(&props)? == old,
        "after ENOSPC ({filled} bytes filled) the old server.properties stays"
    );
    ensure!(temp_files_in(&dir).is_empty(), "no temp file left behind");
    check_files_now(&fleet, "disk full")?;
    ensure!(
        restarts_since(&fleet, since).is_empty(),
        "a failed write restarts nothing"
    );

    // Space returns; resume retries the step and converges.
    tmpfs.make_room()?;
    ctl_ok(&fleet, &["rollout", "resume"])?;
    fleet.wait_for_rollout("completed", Duration::from_secs(60))?;
    ensure!(fleet.brokers[0].properties().contains("EXTERNAL://"));
    ensure!(fleet.brokers[1].properties().contains("EXTERNAL://"));
    check_files_now(&fleet, "after resume")?;
    row.sees += "; resume after freeing space: completed";
    let sampled = sampler.finish(row)?;
    only_old_or_new(&sampled, &props, &old, &fleet.brokers[0].properties())?;
    check_max_unavailable(row, &fleet, since, 1)?;
    drop(fleet);
    drop(tmpfs);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// 2. The managed file made read-only and immutable
// ------------------------------------------------------------------------------------------------

/// chmod 0444 on a file and 0555 on its directory (root ignores both) plus `chattr +i` on the file
/// (root does not); all undone on drop, or the temp dir could not be removed.
struct Immutable {
    file: PathBuf,
    dir: PathBuf,
}

impl Immutable {
    fn set(file: &Path) -> Result<Immutable> {
        use std::os::unix::fs::PermissionsExt;
        let dir = file.parent().unwrap().to_path_buf();
        let guard = Immutable {
            file: file.to_path_buf(),
            dir: dir.clone(),
        };
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))?;
        let chattr = Command::new("chattr").arg("+i").arg(file).output()?;
        ensure!(
            chattr.status.success(),
            "chattr +i {}: {}",
            file.display(),
            String::from_utf8_lossy(&chattr.stderr)
        );
        Ok(guard)
    }

    fn clear(&self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = Command::new("chattr").arg("-i").arg(&self.file).status();
        let _ = std::fs::set_permissions(&self.file, std::fs::Permissions::from_mode(0o644));
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755));
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.clear();
    }
}

fn fault_immutable(row: &mut Row) -> Result<()> {
    let mut fleet = Fleet::new(62, 2, &[("etl-1", "private")])?;
    start_on_generation_1(&mut fleet, &FleetSpec::default())?;
    let props = fleet.brokers[0].properties_path();
    let dir = props.parent().unwrap().to_path_buf();
    // chattr +i needs a file system that keeps the flag (ext4 here); say so when it does not.
    let lsattr = Command::new("lsattr").arg("-d").arg(&dir).output()?;
    if !lsattr.status.success() {
        bail!(
            "lsattr does not work on {} ({}): immutable files cannot be tested on this file system",
            dir.display(),
            String::from_utf8_lossy(&lsattr.stderr).trim()
        );
    }
    let old = std::fs::read_to_string(&props)?;
    let sampler = Sampler::start(&fleet);
    let since = now_ns();
    let immutable = Immutable::set(&props)?;
    let attributes = Command::new("lsattr").arg(&props).output()?;
    let attributes = String::from_utf8_lossy(&attributes.stdout).to_string();
    ensure!(
        attributes
            .split_whitespace()
            .next()
            .unwrap_or("")
            .contains('i'),
        "lsattr shows the immutable flag: {attributes}"
    );
    row.tried = true;

    let gen2 = fleet.write_spec(
        "gen2.toml",
        &FleetSpec {
            external: true,
            ..FleetSpec::default()
        },
    )?;
    apply(&fleet, &gen2)?;
    let status = fleet.wait_for_rollout("paused", Duration::from_secs(60))?;
    let reason = status["rollout"]["paused_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    row.sees = format!(
        "paused at {}: {reason}",
        status["rollout"]["paused_node"].as_str().unwrap_or("?")
    );
    ensure!(
        status["rollout"]["paused_node"] == "emr-worker-1",
        "{status:#}"
    );
    ensure!(
        reason.contains(&props.display().to_string())
            && reason.contains("operation not permitted")
            && reason.contains("chattr -i"),
        "the reason names the file, the cause and the fix: {reason}"
    );
    ensure!(
        std::fs::read_to_string(&props)? == old,
        "the old file stays"
    );
    ensure!(temp_files_in(&dir).is_empty(), "no temp file left behind");
    ensure!(
        restarts_since(&fleet, since).is_empty(),
        "a failed write restarts nothing"
    );

    immutable.clear();
    drop(immutable);
    check_files_now(&fleet, "immutable")?;
    ctl_ok(&fleet, &["rollout", "resume"])?;
    fleet.wait_for_rollout("completed", Duration::from_secs(60))?;
    ensure!(fleet.brokers[0].properties().contains("EXTERNAL://"));
    check_files_now(&fleet, "after resume")?;
    row.sees += "; chattr -i + resume: completed";
    let sampled = sampler.finish(row)?;
    only_old_or_new(&sampled, &props, &old, &fleet.brokers[0].properties())?;
    check_max_unavailable(row, &fleet, since, 1)
}

// ------------------------------------------------------------------------------------------------
// 3. The state directory removed under a running agent
// ------------------------------------------------------------------------------------------------

fn fault_state_dir_removed(row: &mut Row) -> Result<()> {
    let mut fleet = Fleet::new(63, 2, &[("etl-1", "private")])?;
    // Brokers advertise hostnames: clients carry a kreach block to enforce.
    start_on_generation_1(
        &mut fleet,
        &FleetSpec {
            hostnames: true,
            ..FleetSpec::default()
        },
    )?;
    let client_dir = fleet.clients[0].1.clone();
    let hosts = client_dir.join("etc/hosts");
    let state_dir = client_dir.join("state");
    let enforced = std::fs::read_to_string(&hosts)?;
    ensure!(
        enforced.contains("# BEGIN kreach"),
        "etl-1 has a kreach block to enforce:\n{enforced}"
    );
    let sampler = Sampler::start(&fleet);
    let since = now_ns();

    std::fs::remove_dir_all(&state_dir)?;
    row.tried = true;
    // Someone edits the hosts file and drops kreach's block: the agent must still put it back.
    std::thread::sleep(Duration::from_millis(300));
    replace_file(&hosts, "127.0.0.1\tlocalhost\n")?;
    let repaired = wait_until("drift repaired", Duration::from_secs(20), || {
        std::fs::read_to_string(&hosts).is_ok_and(|text| text == enforced)
    });
    let agent = fleet.agents.get_mut("etl-1").unwrap();
    let exited = agent.exited();
    let log = agent.log();
    ensure!(exited.is_none(), "the agent exited ({exited:?}):\n{log}");
    ensure!(!log.contains("panicked"), "no panic:\n{log}");
    let errors = log.lines().filter(|line| line.contains("ERROR")).count();
    ensure!(errors <= 5, "no error loop ({errors} ERROR lines):\n{log}");
    repaired.with_context(|| {
        format!(
            "the agent stopped enforcing its hosts block once its state directory was gone; log:\n{log}"
        )
    })?;
    let recreated = state_dir.join("applied.json").is_file();
    let said = log
        .lines()
        .rev()
        .find(|line| line.contains("ERROR") && line.contains("state"))
        .and_then(|line| line.split("ERROR ").nth(1))
        .map(|text| text.split(" node=").next().unwrap_or(text).to_string())
        .unwrap_or_default();
    row.sees = format!(
        "drift still repaired; applied.json {}; agent said: {}",
        if recreated {
            "recreated"
        } else {
            "NOT recreated"
        },
        short(said.trim(), 200)
    );
    ensure!(
        recreated,
        "the agent recreates its state directory and applied.json; log:\n{log}"
    );

    // And it still takes releases: generation 2 (brokers advertise addresses again, so the
    // clients' block goes) reaches it and completes.
    let gen2 = fleet.write_spec("gen2.toml", &FleetSpec::default())?;
    apply(&fleet, &gen2)?;
    let status = fleet.wait_for_rollout("completed", Duration::from_secs(90))?;
    ensure!(node(&status, "etl-1")["phase"] == "converged", "{status:#}");
    let applied = std::fs::read_to_string(state_dir.join("applied.json"))?;
    let applied: Value = serde_json::from_str(&applied)?;
    ensure!(applied["generation"] == 2, "{applied:#}");
    check_files_now(&fleet, "after generation 2")?;
    row.sees += "; next rollout completed";
    sampler.finish(row)?;
    check_max_unavailable(row, &fleet, since, 1)
}

// ------------------------------------------------------------------------------------------------
// 4. The coordinator killed (SIGKILL) and restarted during a rollout
// ------------------------------------------------------------------------------------------------

fn count_in_log(proc: &Proc, needle: &str) -> usize {
    proc.log()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

fn fault_coordinator_killed(row: &mut Row) -> Result<()> {
    let mut fleet = Fleet::new(64, 3, &[("etl-1", "private")])?;
    start_on_generation_1(&mut fleet, &FleetSpec::default())?;
    let sampler = Sampler::start(&fleet);
    let since = now_ns();
    let gen2 = fleet.write_spec(
        "gen2.toml",
        &FleetSpec {
            external: true,
            settle: "1s",
            ..FleetSpec::default()
        },
    )?;
    let mut seen = Vec::new();
    let before: Vec<usize> = ["emr-worker-1", "emr-worker-2"]
        .iter()
        .map(|name| count_in_log(&fleet.agents[*name], "restarting "))
        .collect();
    apply(&fleet, &gen2)?;
    // Kill it while broker 1 restarts, and again while broker 2 does.
    for (index, name) in ["emr-worker-1", "emr-worker-2"].iter().enumerate() {
        wait_until(
            &format!("{name} starts restarting"),
            Duration::from_secs(60),
            || count_in_log(&fleet.agents[*name], "restarting ") > before[index],
        )?;
        let coordinator = fleet.coordinator.as_mut().unwrap();
        let pid = coordinator.pid();
        coordinator.kill9();
        row.tried = true;
        check_files_now(&fleet, "coordinator dead")?;
        std::thread::sleep(Duration::from_millis(300));
        fleet.start_coordinator()?;
        let status = fleet.status_json()?;
        seen.push(format!(
            "kill -9 {pid} during {name}'s restart -> restarted: generation {} {} at step {}",
            status["rollout"]["generation"],
            status["rollout"]["state"].as_str().unwrap_or("?"),
            status["rollout"]["current_step"]
        ));
        ensure!(
            status["rollout"]["generation"] == 2,
            "the restarted coordinator resumes generation 2: {status:#}"
        );
    }
    let status = fleet.wait_for_rollout("completed", Duration::from_secs(90))?;
    seen.push("completed".into());
    row.sees = seen.join("; ");
    ensure!(
        fleet
            .brokers
            .iter()
            .all(|b| node(&status, &b.node)["phase"] == "converged"),
        "{status:#}"
    );
    let restarts = restarts_since(&fleet, since);
    let order: Vec<u32> = restarts.iter().map(|(id, _)| *id).collect();
    ensure!(
        order == vec![1, 2, 3],
        "every broker restarted exactly once, in order: {restarts:?}"
    );
    for pair in restarts.windows(2) {
        ensure!(
            pair[1].1.start_ns >= pair[0].1.end_ns + 900_000_000,
            "settle (1 s) kept across the kills: {restarts:?}"
        );
    }
    check_files_now(&fleet, "completed")?;
    sampler.finish(row)?;
    check_max_unavailable(row, &fleet, since, 1)
}

// ------------------------------------------------------------------------------------------------
// 5. The network between an agent and the coordinator cut and restored
// ------------------------------------------------------------------------------------------------

/// Move the calling thread into the network namespace behind `namespace` (a /run/netns file or a
/// /proc/.../ns/net file). Sockets keep the namespace they were created in.
#[allow(unsafe_code)]
fn enter_netns(namespace: &File) -> Result<()> {
    // SAFETY: setns(2) on a valid, open namespace fd; it changes only the calling thread's network
    // namespace and touches no memory of ours.
    let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(result == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(args).output()?;
    ensure!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Two namespaces of our own joined by a veth pair: the agent's ("a", 198.18.65.2) and the
/// coordinator side's ("c", 198.18.65.1). Nothing in the root namespace changes. Deleted on drop.
struct Netns {
    a: String,
    c: String,
}

impl Netns {
    fn create() -> Result<Netns> {
        let id = std::process::id();
        let netns = Netns {
            a: format!("kreach-faults-{id}-a"),
            c: format!("kreach-faults-{id}-c"),
        };
        ip(&["netns", "add", &netns.a])?;
        ip(&["netns", "add", &netns.c])?;
        ip(&[
            "link", "add", "eth0", "netns", &netns.a, "type", "veth", "peer", "name", "eth0",
            "netns", &netns.c,
        ])?;
        for (name, address) in [(&netns.a, "198.18.65.2/24"), (&netns.c, "198.18.65.1/24")] {
            ip(&["-n", name, "addr", "add", address, "dev", "eth0"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            ip(&["-n", name, "link", "set", "eth0", "up"])?;
        }
        Ok(netns)
    }

    fn file(name: &str) -> Result<File> {
        File::open(format!("/run/netns/{name}")).with_context(|| format!("opening netns {name}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.a, &self.c] {
            if let Err(error) = ip(&["netns", "del", name]) {
                loud(&format!("faults: cannot delete netns {name}: {error:#}"));
            }
        }
    }
}

/// A TCP relay: listens in one namespace, connects out from another. Plaintext agent connections
/// are allowed to loopback only, so the agent in its namespace talks to a relay on its own
/// loopback, which crosses the veth to a relay on the coordinator side, which reaches the
/// coordinator on the root namespace's loopback. Cutting the veth cuts the only path.
struct Relay {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(
        listen_in: File,
        listen: &str,
        connect_from: File,
        target: SocketAddr,
    ) -> Result<Relay> {
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listen = listen.to_string();
        let thread = {
            let (stop, streams) = (Arc::clone(&stop), Arc::clone(&streams));
            std::thread::spawn(move || {
                let bound = (|| -> Result<TcpListener> {
                    enter_netns(&listen_in)?;
                    let listener = TcpListener::bind(&listen)?;
                    listener.set_nonblocking(true)?;
                    enter_netns(&connect_from)?;
                    Ok(listener)
                })();
                let listener = match bound {
                    Ok(listener) => {
                        let _ = ready_tx.send(listener.local_addr().map_err(Into::into));
                        listener
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((inbound, _)) => {
                            let _ = inbound.set_nonblocking(false);
                            let Ok(outbound) =
                                TcpStream::connect_timeout(&target, Duration::from_secs(3))
                            else {
                                continue; // dropping `inbound` closes it: the caller sees the cut
                            };
                            let pairs = [
                                (inbound.try_clone(), outbound.try_clone()),
                                (outbound.try_clone(), inbound.try_clone()),
                            ];
                            let mut kept = streams.lock().unwrap();
                            kept.push(inbound);
                            kept.push(outbound);
                            for pair in pairs {
                                if let (Ok(mut from), Ok(mut to)) = pair {
                                    std::thread::spawn(move || {
                                        let _ = std::io::copy(&mut from, &mut to);
                                        let _ = to.shutdown(Shutdown::Write);
                                    });
                                }
                            }
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        let address = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("relay start")??;
        Ok(Relay {
            address,
            stop,
            streams,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for stream in self.streams.lock().unwrap().iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn fault_network_cut(row: &mut Row) -> Result<()> {
    let netns = Netns::create()?;
    let root = File::open("/proc/thread-self/ns/net")?;
    // health_timeout 60 s: the coordinator waits 90 s for a silent node before it pauses; the cut
    // lasts well under that, so the rollout must wait and then go on by itself.
    let spec = FleetSpec {
        health_timeout: "60s",
        ..FleetSpec::default()
    };
    let mut fleet = Fleet::new(65, 2, &[("etl-1", "private")])?;
    fleet.start_coordinator()?;
    fleet.start_agents(None)?;
    let coordinator: SocketAddr = fleet.coordinator_addr.parse()?;
    let relay_c = Relay::start(
        Netns::file(&netns.c)?,
        "198.18.65.1:0",
        root.try_clone()?,
        coordinator,
    )?;
    let relay_a = Relay::start(
        Netns::file(&netns.a)?,
        "127.0.0.1:0",
        Netns::file(&netns.a)?,
        relay_c.address,
    )?;
    // etl-1's agent moves into namespace a, reaching the coordinator only across the veth.
    ensure!(fleet.stop_agent("etl-1") == Some(0), "etl-1 stopped");
    let client_dir = fleet.clients[0].1.clone();
    let config_path = client_dir.join("agent.toml");
    let config = std::fs::read_to_string(&config_path)?.replace(
        &format!("http://{}", fleet.coordinator_addr),
        &format!("http://{}", relay_a.address),
    );
    std::fs::write(&config_path, config)?;
    let agent_ns = Netns::file(&netns.a)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                enter_netns(&agent_ns)?;
                fleet.restart_agent("etl-1")
            })
            .join()
            .map_err(|_| anyhow::anyhow!("spawning etl-1 in its namespace panicked"))?
    })?;
    fleet.wait_until_online(Duration::from_secs(30))?;
    let gen1 = fleet.write_spec("gen1.toml", &spec)?;
    apply(&fleet, &gen1)?;
    fleet.wait_for_rollout("completed", Duration::from_secs(60))?;

    let sampler = Sampler::start(&fleet);
    let since = now_ns();
    ip(&["-n", &netns.a, "link", "set", "eth0", "down"])?;
    row.tried = true;
    let cut_at = Instant::now();
    wait_until("etl-1 shown offline", Duration::from_secs(120), || {
        let offline = fleet
            .status_json()
            .is_ok_and(|status| node(&status, "etl-1")["online"] == false);
        if !offline {
            std::thread::sleep(Duration::from_millis(500));
        }
        offline
    })?;
    let noticed = cut_at.elapsed();
    let table = ctl_ok(&fleet, &["status"])?;
    ensure!(
        table
            .lines()
            .any(|line| line.starts_with("etl-1") && line.contains("OFFLINE")),
        "{table}"
    );

    // A change every client must learn first: it has to wait for etl-1.
    let gen2 = fleet.write_spec(
        "gen2.toml",
        &FleetSpec {
            hostnames: true,
            ..spec
        },
    )?;
    apply(&fleet, &gen2)?;
    std::thread::sleep(Duration::from_secs(3));
    let status = fleet.status_json()?;
    ensure!(
        status["rollout"]["state"] == "running" && status["rollout"]["current_step"] == 0,
        "the rollout waits at its first step for etl-1: {status:#}"
    );
    ensure!(node(&status, "etl-1")["online"] == false, "{status:#}");
    ensure!(
        fleet
            .brokers
            .iter()
            .all(|b| !b.properties().contains("fleet-65:")),
        "no broker advertises the new names while etl-1 lacks them"
    );
    ensure!(
        restarts_since(&fleet, since).is_empty(),
        "no broker restarted while the step waits"
    );
    check_files_now(&fleet, "network cut")?;
    row.sees = format!(
        "etl-1 OFFLINE after {:.0} s; rollout running, waiting at step {} of {}",
        noticed.as_secs_f64(),
        status["rollout"]["current_step"].as_u64().unwrap_or(0) + 1,
        status["rollout"]["total_steps"]
    );

    ip(&["-n", &netns.a, "link", "set", "eth0", "up"])?;
    let restored_at = Instant::now();
    let status = fleet.wait_for_rollout("completed", Duration::from_secs(120))?;
    row.sees += &format!(
        "; link up -> completed {:.0} s later",
        restored_at.elapsed().as_secs_f64()
    );
    ensure!(node(&status, "etl-1")["online"] == true, "{status:#}");
    ensure!(
        fleet
            .client_hosts("etl-1")
            .contains("emr-worker-1.fleet-65"),
        "etl-1 got the names"
    );
    check_files_now(&fleet, "completed")?;
    let sampled = sampler.finish(row)?;
    // Never skipped: etl-1 had the names before any broker restarted to advertise them.
    let learned = sampled
        .iter()
        .find(|s| s.path == client_dir.join("etc/hosts"))
        .and_then(|s| {
            s.versions
                .iter()
                .find(|(text, _)| text.contains("emr-worker-1.fleet-65"))
        })
        .map(|(_, at)| *at)
        .context("the sampler saw etl-1 learn the names")?;
    let restarts = restarts_since(&fleet, since);
    ensure!(
        restarts.iter().all(|(_, r)| r.start_ns > learned),
        "brokers restarted only after etl-1 learned the names: {restarts:?}"
    );
    check_max_unavailable(row, &fleet, since, 1)?;
    drop(relay_a);
    drop(relay_c);
    drop(fleet);
    drop(netns);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// 6. An agent killed during an apply
// ------------------------------------------------------------------------------------------------

fn fault_agent_killed(row: &mut Row) -> Result<()> {
    let mut fleet = Fleet::new(66, 2, &[("etl-1", "private")])?;
    // Broker 1's restart command takes 2 s more after Kafka is back: the apply is in progress.
    fleet.restart_wrapper.insert(
        "emr-worker-1".into(),
        vec![
            "sh".into(),
            "-c".into(),
            "\"$@\" && sleep 2".into(),
            "sh".into(),
        ],
    );
    start_on_generation_1(&mut fleet, &FleetSpec::default())?;
    let props = fleet.brokers[0].properties_path();
    let old = std::fs::read_to_string(&props)?;
    let sampler = Sampler::start(&fleet);
    let since = now_ns();
    let gen2 = fleet.write_spec(
        "gen2.toml",
        &FleetSpec {
            external: true,
            ..FleetSpec::default()
        },
    )?;
    apply(&fleet, &gen2)?;
    let broker = &fleet.brokers[0];
    wait_until(
        "broker 1's Kafka restarts on the new config",
        Duration::from_secs(60),
        || broker.restarts().iter().any(|r| r.start_ns >= since),
    )?;
    let agent = fleet.agents.get_mut("emr-worker-1").unwrap();
    let pid = agent.pid();
    agent.kill9();
    row.tried = true;
    let mid = std::fs::read_to_string(&props)?;
    check_files_now(&fleet, "agent killed")?;
    ensure!(
        mid != old && mid.contains("EXTERNAL://"),
        "the kill landed after the write"
    );
    let status = fleet.status_json()?;
    let dead = node(&status, "emr-worker-1");
    let while_dead = format!(
        "online={} phase={}",
        dead["online"],
        dead["phase"].as_str().unwrap_or("?")
    );

    fleet.restart_agent("emr-worker-1")?;
    let status = fleet.wait_for_rollout("completed", Duration::from_secs(90))?;
    ensure!(
        node(&status, "emr-worker-1")["phase"] == "converged",
        "{status:#}"
    );
    ensure!(fleet.brokers[0].properties().contains("EXTERNAL://"));
    let applied: Value = serde_json::from_str(&std::fs::read_to_string(
        fleet.brokers[0].state_dir().join("applied.json"),
    )?)?;
    ensure!(applied["generation"] == 2, "{applied:#}");
    let restarts_of_1 = restarts_since(&fleet, since)
        .iter()
        .filter(|(id, _)| *id == 1)
        .count();
    row.sees = format!(
        "kill -9 {pid} mid-restart: status {while_dead}; agent restarted -> converged on generation 2, completed ({restarts_of_1} restarts of broker 1)"
    );
    check_files_now(&fleet, "completed")?;
    let sampled = sampler.finish(row)?;
    let versions = only_old_or_new(&sampled, &props, &old, &fleet.brokers[0].properties())?;
    row.sees += &format!("; server.properties went through {versions} versions, each old or new");
    check_max_unavailable(row, &fleet, since, 1)
}

// ------------------------------------------------------------------------------------------------
// 7. Two agents started on the same node
// ------------------------------------------------------------------------------------------------

fn fault_two_agents(row: &mut Row) -> Result<()> {
    let mut fleet = Fleet::new(67, 2, &[("etl-1", "private")])?;
    start_on_generation_1(&mut fleet, &FleetSpec::default())?;
    let sampler = Sampler::start(&fleet);
    let since = now_ns();
    let first_pid = fleet.agents["emr-worker-1"].pid();
    let mut second = Proc::spawn(
        Command::new(agent_binary())
            .arg("--config")
            .arg(fleet.brokers[0].dir.join("agent.toml"))
            .arg("run"),
    )?;
    row.tried = true;
    let exit = second.wait_exit(Duration::from_secs(20));
    let log = second.log();
    let said = log
        .lines()
        .find(|line| line.contains("another kreach-agent"))
        .unwrap_or_default()
        .to_string();
    row.sees = match exit {
        Some(status) => format!("second agent exit {:?}: {said}", status.code()),
        None => "second agent still running after 20 s".into(),
    };
    let Some(exit) = exit else {
        bail!("the second agent for emr-worker-1 did not refuse to run; its log:\n{log}");
    };
    ensure!(!exit.success(), "the second agent fails: {exit:?}\n{log}");
    ensure!(
        said.contains(&first_pid.to_string()),
        "the error names the running agent (pid {first_pid}):\n{log}"
    );
    let first = fleet.agents.get_mut("emr-worker-1").unwrap();
    ensure!(first.exited().is_none(), "the first agent carries on");

    let gen2 = fleet.write_spec(
        "gen2.toml",
        &FleetSpec {
            external: true,
            ..FleetSpec::default()
        },
    )?;
    apply(&fleet, &gen2)?;
    let status = fleet.wait_for_rollout("completed", Duration::from_secs(60))?;
    ensure!(
        node(&status, "emr-worker-1")["phase"] == "converged",
        "{status:#}"
    );
    ensure!(
        fleet.agents["emr-worker-1"]
            .log()
            .contains("converged on release generation 2"),
        "the first agent applied generation 2"
    );
    row.sees += "; first agent applied generation 2";
    check_files_now(&fleet, "completed")?;
    sampler.finish(row)?;
    check_max_unavailable(row, &fleet, since, 1)
}

// ------------------------------------------------------------------------------------------------
// 8. Clock jumps
// ------------------------------------------------------------------------------------------------

fn faketime_library() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.is_file())
}

/// libfaketime with the offset read from `clock` at every call: writing "+7200" to it steps the
/// process's wall clock two hours forward at once. The monotonic clock is left alone, as in a
/// real clock step (NTP, an operator's `date -s`).
fn faketime_env(library: &Path, clock: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), library.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            clock.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

fn set_clock(clock: &Path, offset_seconds: i64) -> Result<()> {
    replace_file(clock, &format!("{offset_seconds:+}\n"))
}

fn fault_clock_jumps(row: &mut Row) -> Result<()> {
    let Some(library) = faketime_library() else {
        let missing = Missing::new("libfaketime is missing", "apt-get install -y faketime");
        need("8 clock jumps (faketime)", Some(missing))?;
        unreachable!("a missing part is an error or an opt-out");
    };
    let mut fleet = Fleet::new(68, 3, &[])?;
    let coordinator_clock = fleet.dir.path().join("coordinator.faketime");
    let agent_clock = fleet.dir.path().join("emr-worker-2.faketime");
    set_clock(&coordinator_clock, 0)?;
    set_clock(&agent_clock, 0)?;
    fleet.env.insert(
        "coordinator".into(),
        faketime_env(&library, &coordinator_clock),
    );
    fleet
        .env
        .insert("emr-worker-2".into(), faketime_env(&library, &agent_clock));
    // Every broker's restart stays in progress 1.5 s after Kafka is back (its node is waited for),
    // and the stand-in Kafka itself runs on the real clock: its restart log is the observer.
    for broker in &fleet.brokers {
        fleet.restart_wrapper.insert(
            broker.node.clone(),
            vec![
                "sh".into(),
                "-c".into(),
                "env -u LD_PRELOAD \"$@\" && sleep 1.5".into(),
                "sh".into(),
            ],
        );
    }
    // The coordinator's wall clock starts 2 h ahead, broker 2's agent's 3 h ahead.
    set_clock(&coordinator_clock, 7200)?;
    set_clock(&agent_clock, 10800)?;
    start_on_generation_1(&mut fleet, &FleetSpec::default())?;
    let history: Value = serde_json::from_str(&ctl_ok(&fleet, &["history", "--output", "json"])?)?;
    let applied_at_ms = history
        .as_array()
        .and_then(|generations| generations.last())
        .and_then(|newest| newest["applied_at_ms"].as_u64())
        .unwrap_or(0);
    let ahead_s = (applied_at_ms as i64 - (now_ns() / 1_000_000) as i64) / 1000;
    ensure!(
        (6600..7800).contains(&ahead_s),
        "the coordinator runs on the faked clock (2 h ahead): its generation 1 is stamped {ahead_s} s ahead"
    );
    let sampler = Sampler::start(&fleet);
    row.tried = true;
    let since = now_ns();
    let gen2 = fleet.write_spec(
        "gen2.toml",
        &FleetSpec {
            external: true,
            settle: "3s",
            ..FleetSpec::default()
        },
    )?;
    apply(&fleet, &gen2)?;

    let mut states: Vec<String> = Vec::new();
    let mut watch = |fleet: &Fleet,
                     until: &dyn Fn(&Value) -> bool,
                     what: &str,
                     timeout: Duration|
     -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = fleet.status_json()?;
            let state = status["rollout"]["state"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            if states.last() != Some(&state) {
                states.push(state.clone());
            }
            ensure!(
                state != "paused",
                "spurious pause under a clock jump: {}",
                status["rollout"]["paused_reason"]
            );
            if until(&status) {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?} (a hang?): {status:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let broker_restarted = |fleet: &Fleet, id: u32| {
        restarts_since(fleet, since)
            .iter()
            .any(|(broker, _)| *broker == id)
    };

    // Jump 1: while broker 1's restart is in progress, the coordinator's clock +4 h more.
    wait_until("broker 1 restarts", Duration::from_secs(60), || {
        broker_restarted(&fleet, 1)
    })?;
    set_clock(&coordinator_clock, 7200 + 14400)?;
    // Jump 2: in the settle after broker 1, the coordinator's clock back 7 h.
    watch(
        &fleet,
        &|s| s["rollout"]["state"] == "settling",
        "settling after broker 1",
        Duration::from_secs(30),
    )?;
    set_clock(&coordinator_clock, -3600)?;
    // Jump 3: while broker 2 restarts, its agent's clock +6 h, then back 12 h.
    watch(
        &fleet,
        &|_| broker_restarted(&fleet, 2),
        "broker 2 restarts after the settle",
        Duration::from_secs(30),
    )?;
    set_clock(&agent_clock, 10800 + 21600)?;
    std::thread::sleep(Duration::from_millis(500));
    set_clock(&agent_clock, 10800 + 21600 - 43200)?;
    // Jump 4: in the settle after broker 2, the coordinator's clock +11 h.
    watch(
        &fleet,
        &|s| s["rollout"]["state"] == "settling",
        "settling after broker 2",
        Duration::from_secs(30),
    )?;
    set_clock(&coordinator_clock, 36000)?;
    let status = watch(
        &fleet,
        &|s| s["rollout"]["state"] == "completed",
        "completed",
        Duration::from_secs(60),
    )?;
    row.sees = format!(
        "coordinator +2h,+4h,-7h,+11h; agent +3h,+6h,-12h: states {} ; no spurious pause",
        states.join(">")
    );
    ensure!(
        fleet
            .brokers
            .iter()
            .all(|b| node(&status, &b.node)["phase"] == "converged"),
        "{status:#}"
    );
    // Broker 2's agent really ran on its faked clock: it stamped its restart 3 h ahead.
    let stamped = node(&status, "emr-worker-2")["restart_started_ms"]
        .as_u64()
        .unwrap_or(0);
    let agent_ahead_s = (stamped as i64 - (now_ns() / 1_000_000) as i64) / 1000;
    ensure!(
        (10000..11600).contains(&agent_ahead_s),
        "broker 2's agent runs on the faked clock (3 h ahead): it stamped its restart {agent_ahead_s} s ahead"
    );
    let restarts = restarts_since(&fleet, since);
    let order: Vec<u32> = restarts.iter().map(|(id, _)| *id).collect();
    ensure!(
        order == vec![1, 2, 3],
        "each broker once, in order: {restarts:?}"
    );
    // The settle (3 s) was neither cut short by the forward jump nor stretched by the backward one.
    let gaps_ms: Vec<u128> = restarts
        .windows(2)
        .map(|pair| pair[1].1.start_ns.saturating_sub(pair[0].1.end_ns) / 1_000_000)
        .collect();
    row.sees += &format!("; gaps between brokers {gaps_ms:?} ms (settle 3 s)");
    ensure!(
        gaps_ms.iter().all(|gap| *gap >= 2_900),
        "settle cut short by a clock jump: gaps {gaps_ms:?} ms"
    );
    check_files_now(&fleet, "completed")?;
    sampler.finish(row)?;
    check_max_unavailable(row, &fleet, since, 1)
}
