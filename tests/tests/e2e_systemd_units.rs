//! e2e-systemd tier: the shipped units in `systemd/`, hardening included, on a host booting real
//! systemd.
//!
//! Run as its own tier: `cargo test -p kreach-tests --test e2e_systemd_units` (as root). Each test
//! boots one systemd-nspawn host, installs a daemon at the path its unit names, the unit file from
//! `systemd/` unchanged, and a config, then checks what `Type=notify` promises: `systemctl start`
//! returns only once the daemon said READY=1, and by then it serves; `systemctl stop` ends it
//! cleanly within 5 s. Not root or a rootfs that cannot be prepared fails it, unless the tier is opted
//! out (`KREACH_SKIP=e2e-systemd`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kreach_tests::artifacts::build_artifact;
use kreach_tests::nspawn::{boot_or_skip, Host};

const STOP_WITHIN: Duration = Duration::from_secs(5);

fn unit_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name)
}

/// Install `unit` from `systemd/` and the binary it runs; `systemctl daemon-reload`.
fn install(host: &Host, unit: &str, package: &str, binary: &str) {
    let built = build_artifact(&["-p", package, "--bin", binary], binary)
        .unwrap_or_else(|error| panic!("building {binary}: {error:#}"));
    host.copy_in(&built, &format!("/usr/bin/{binary}")).unwrap();
    host.copy_in(&unit_file(unit), &format!("/etc/systemd/system/{unit}"))
        .unwrap();
    host.exec_ok(&["systemctl", "daemon-reload"]).unwrap();
}

/// Install the coordinator's unit and binary, and the kreach user it runs as (created from the
/// sysusers file packages install); the unit's name.
fn install_coordinator(host: &Host) -> &'static str {
    let unit = "kreach-coordinator.service";
    install(host, unit, "kreach-coordinator", "kreach-coordinator");
    host.copy_in(
        &unit_file("kreach.sysusers"),
        "/usr/lib/sysusers.d/kreach.conf",
    )
    .unwrap();
    host.exec_ok(&["systemd-sysusers"]).unwrap();
    unit
}

fn accepts(host: &Host, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
    host.exec(&["bash", "-c", &script])
        .is_ok_and(|output| output.status.success())
}

fn journal(host: &Host, unit: &str) -> String {
    host.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_else(|error| format!("(journalctl failed: {error:#})"))
}

/// `systemctl start` (blocks until READY=1 for a notify unit), then the unit must be active with
/// the daemon's status line, under the watchdog.
fn start_and_expect_ready(host: &Host, unit: &str, status_prefix: &str) {
    if let Err(error) = host.exec_ok(&["systemctl", "start", unit]) {
        panic!("{error:#}\njournal:\n{}", journal(host, unit));
    }
    let active = host.unit_property(unit, "ActiveState").unwrap();
    assert_eq!(active, "active", "journal:\n{}", journal(host, unit));
    let status = host.unit_property(unit, "StatusText").unwrap();
    assert!(
        status.starts_with(status_prefix),
        "{unit}: status {status:?}, expected {status_prefix:?}...; journal:\n{}",
        journal(host, unit)
    );
    assert_eq!(host.unit_property(unit, "WatchdogUSec").unwrap(), "30s");
}

/// `systemctl stop` returns within 5 s and the daemon exited cleanly (not killed).
fn stop_within_deadline(host: &Host, unit: &str) {
    let started = Instant::now();
    host.exec_ok(&["systemctl", "stop", unit]).unwrap();
    let took = started.elapsed();
    assert!(
        took < STOP_WITHIN,
        "stopping {unit} took {took:?}; journal:\n{}",
        journal(host, unit)
    );
    assert_eq!(host.unit_property(unit, "ActiveState").unwrap(), "inactive");
    assert_eq!(
        host.unit_property(unit, "Result").unwrap(),
        "success",
        "journal:\n{}",
        journal(host, unit)
    );
}

#[test]
fn coordinator_unit_is_ready_only_when_serving_and_stops_within_5s() {
    let Some(host) = boot_or_skip("units-coordinator") else {
        return;
    };
    let unit = install_coordinator(&host);
    host.write_file(
        "/etc/kreach/coordinator.toml",
        b"listen = \"127.0.0.1:7443\"\nstate_dir = \"/var/lib/kreach-coordinator\"\n\n[tls]\ninsecure = true\n",
        0o644,
    )
    .unwrap();
    assert!(!accepts(&host, 7443), "something already listens on 7443");

    start_and_expect_ready(&host, unit, "listening on 127.0.0.1:7443");
    // READY came after the bind: the port answers at once, no waiting.
    assert!(
        accepts(&host, 7443),
        "active but nothing accepts on 7443; journal:\n{}",
        journal(&host, unit)
    );
    // The store was created in the StateDirectory, owned by the service user.
    let owner = host
        .exec_ok(&["stat", "-c", "%U", "/var/lib/kreach-coordinator"])
        .unwrap();
    assert_eq!(owner.trim(), "kreach");

    stop_within_deadline(&host, unit);
    assert!(!accepts(&host, 7443), "7443 still answers after stop");
}

/// Wait until `check` holds, up to `timeout`; the journal of `unit` in the panic otherwise.
fn wait_until(host: &Host, unit: &str, timeout: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}; journal:\n{}",
            journal(host, unit)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn coordinator_unit_on_etcd_follows_without_etcd_and_leads_again_under_its_watchdog() {
    use kreach_test_parts::etcd::{etcd_runs, ETCD};
    let test = "units-coordinator-etcd";
    if !etcd_runs(test) {
        return;
    }
    let Some(host) = boot_or_skip(test) else {
        return;
    };
    let unit = install_coordinator(&host);
    // One etcd member inside the host, as a transient unit of its own.
    host.copy_in(Path::new(ETCD), "/usr/local/bin/etcd")
        .unwrap();
    let start_etcd = || {
        host.exec_ok(&[
            "systemd-run",
            "--collect",
            "--unit=etcd-test",
            "/usr/local/bin/etcd",
            "--data-dir=/var/lib/etcd-test",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
        ])
        .unwrap();
        wait_until(
            &host,
            "etcd-test.service",
            Duration::from_secs(20),
            "etcd answers",
            || accepts(&host, 2379),
        );
    };
    start_etcd();
    host.write_file(
        "/etc/kreach/coordinator.toml",
        b"listen = \"127.0.0.1:7443\"\nstate_dir = \"/var/lib/kreach-coordinator\"\n\n[tls]\ninsecure = true\n\n\
          [store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"3s\"\n",
        0o644,
    )
    .unwrap();
    // The packaged unit, its watchdog shortened by a drop-in so that a follower must feed it
    // within this test's time.
    host.write_file(
        "/etc/systemd/system/kreach-coordinator.service.d/watchdog.conf",
        b"[Service]\nWatchdogSec=4s\n",
        0o644,
    )
    .unwrap();
    host.exec_ok(&["systemctl", "daemon-reload"]).unwrap();

    // Ready as soon as it listens and campaigns; then elected.
    if let Err(error) = host.exec_ok(&["systemctl", "start", unit]) {
        panic!("{error:#}\njournal:\n{}", journal(&host, unit));
    }
    let elected = |times: usize| journal(&host, unit).matches("elected leader").count() >= times;
    wait_until(&host, unit, Duration::from_secs(20), "elected", || {
        elected(1)
    });
    let pid = host.unit_property(unit, "MainPID").unwrap();

    // etcd goes: the leader stops leading within its lease and starts again as a follower, by
    // executing itself again (same pid, so systemd keeps the service), which feeds the watchdog
    // while it waits: still active, same pid, no restart, after twice the watchdog's time.
    host.exec_ok(&["systemctl", "stop", "etcd-test.service"])
        .unwrap();
    wait_until(
        &host,
        unit,
        Duration::from_secs(10),
        "stopped leading, starting again as a follower",
        || journal(&host, unit).contains("starting again as a follower"),
    );
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        host.unit_property(unit, "ActiveState").unwrap(),
        "active",
        "journal:\n{}",
        journal(&host, unit)
    );
    assert_eq!(host.unit_property(unit, "MainPID").unwrap(), pid);
    assert_eq!(host.unit_property(unit, "NRestarts").unwrap(), "0");
    assert!(
        host.unit_property(unit, "StatusText")
            .unwrap()
            .ends_with("campaigning"),
        "journal:\n{}",
        journal(&host, unit)
    );
    assert!(
        accepts(&host, 7443),
        "a follower still answers (who leads, and the reads)"
    );

    // etcd back: it leads again, in the same process.
    start_etcd();
    wait_until(
        &host,
        unit,
        Duration::from_secs(20),
        "elected again",
        || elected(2),
    );
    assert_eq!(host.unit_property(unit, "MainPID").unwrap(), pid);
    stop_within_deadline(&host, unit);
}

#[test]
fn agent_unit_is_ready_under_its_hardening_and_stops_within_5s() {
    let Some(host) = boot_or_skip("units-agent") else {
        return;
    };
    let unit = "kreach-agent.service";
    install(&host, unit, "kreach-agent", "kreach-agent");
    host.write_file(
        "/etc/kreach/agent.toml",
        b"node = \"emr-worker-1\"\n\n[manage]\nhosts_file = \"/etc/hosts\"\n\
          kafka_properties = \"/etc/kafka/server.properties\"\nkafka_unit = \"kafka.service\"\nprobe = \"tcp\"\n\n\
          [service_manager]\nkind = \"systemd\"\n",
        0o644,
    )
    .unwrap();
    host.write_file(
        "/etc/kafka/server.properties",
        b"listeners=INTERNAL://127.0.0.1:9092\n",
        0o644,
    )
    .unwrap();

    start_and_expect_ready(&host, unit, "no applied state yet");
    stop_within_deadline(&host, unit);
}
