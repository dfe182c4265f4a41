//! e2e-systemd tier: `SystemdManager` against real systemd in a systemd-nspawn container.
//!
//! Run as its own tier: `cargo test -p kreach-tests --test e2e_systemd_backend` (as root).
//! The test builds the `restart_unit` example itself (`cargo build --example restart_unit -p
//! kreach-agent` into the same target dir as this test binary), copies it into the container and
//! runs it there against real units. It skips, loudly, only when not root or when the rootfs
//! cannot be prepared on this machine; everything else that goes wrong fails.

use std::path::PathBuf;
use std::sync::OnceLock;

use kreach_tests::artifacts::build_artifact;
use kreach_tests::nspawn::{boot_or_skip, Host};

const RESTART_UNIT: &str = "/usr/local/bin/restart_unit";

/// Boot a host with `restart_unit` in it, or print why the tier is skipped and return `None`.
fn host_or_skip(test: &str) -> Option<Host> {
    let host = boot_or_skip(test)?;
    host.copy_in(&restart_unit_binary(), RESTART_UNIT)
        .expect("copying restart_unit into the host");
    Some(host)
}

/// The `restart_unit` example, built by this test into the target dir this test binary lives in.
fn restart_unit_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            build_artifact(
                &["--example", "restart_unit", "-p", "kreach-agent"],
                "examples/restart_unit",
            )
            .expect("building the restart_unit example")
        })
        .clone()
}

fn install_unit(host: &Host, unit: &str, body: &str) {
    host.write_file(
        &format!("/etc/systemd/system/{unit}"),
        body.as_bytes(),
        0o644,
    )
    .expect("writing the unit file");
    host.exec_ok(&["systemctl", "daemon-reload"])
        .expect("systemctl daemon-reload");
}

#[test]
fn systemd_manager_really_restarts_the_unit() {
    let Some(host) = host_or_skip("restart") else {
        return;
    };
    install_unit(
        &host,
        "kafka.service",
        "[Unit]\nDescription=stand-in for Kafka\n\n[Service]\nExecStart=/bin/sh -c 'exec sleep infinity'\n",
    );
    host.exec_ok(&["systemctl", "start", "kafka.service"])
        .unwrap();
    let before_invocation = host.unit_property("kafka.service", "InvocationID").unwrap();
    let before_pid = host.unit_property("kafka.service", "MainPID").unwrap();
    assert_eq!(
        host.unit_property("kafka.service", "ActiveState").unwrap(),
        "active"
    );
    assert!(!before_invocation.is_empty() && before_pid != "0");

    let output = host.exec(&[RESTART_UNIT, "kafka.service"]).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "restart_unit failed: {} stdout: {stdout} stderr: {stderr}",
        output.status
    );
    assert!(
        stdout.contains("restarted kafka.service via systemd (D-Bus)"),
        "{stdout}"
    );

    let after_invocation = host.unit_property("kafka.service", "InvocationID").unwrap();
    let after_pid = host.unit_property("kafka.service", "MainPID").unwrap();
    assert_eq!(
        host.unit_property("kafka.service", "ActiveState").unwrap(),
        "active"
    );
    assert_ne!(
        after_invocation, before_invocation,
        "systemd started a new invocation"
    );
    assert_ne!(after_pid, before_pid, "a new main process runs");
    assert_ne!(after_pid, "0");
}

#[test]
fn systemd_manager_reports_a_unit_that_fails_to_start() {
    let Some(host) = host_or_skip("failing") else {
        return;
    };
    // Type=simple: the start job succeeds and the process dies right after; the settle window
    // must catch it. Type=oneshot: the start job itself fails.
    install_unit(&host, "broken.service", "[Service]\nExecStart=/bin/false\n");
    install_unit(
        &host,
        "broken-oneshot.service",
        "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    );
    for unit in ["broken.service", "broken-oneshot.service"] {
        let output = host.exec(&[RESTART_UNIT, unit]).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{unit}: {stderr}");
        assert!(
            stderr.contains(&format!("{unit} did not come back after restart")),
            "{unit}: {stderr}"
        );
        assert!(stderr.contains("ActiveState=failed"), "{unit}: {stderr}");
        assert!(stderr.contains("Result=exit-code"), "{unit}: {stderr}");
    }

    let output = host.exec(&[RESTART_UNIT, "no-such-kafka.service"]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("systemd has no unit \"no-such-kafka.service\""),
        "{stderr}"
    );
}
