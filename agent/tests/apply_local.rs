//! `kreach-agent apply-local` and `run` as real processes on temporary directories, with the
//! `command` service backend restarting a stand-in Kafka that opens real listeners.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::*;

#[test]
fn broker_plan_apply_and_second_run_changes_nothing() {
    let host = Host::broker("emr-worker-1");
    let ports = Ports::new();
    host.write_properties(&ports.initial_properties());
    host.start_kafka();
    let spec = host.write_spec(&SpecOptions {
        external: true,
        ..SpecOptions::new(&ports)
    });
    let before = host.snapshot();

    let dry = host.agent(&["apply-local", "--spec", &spec, "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry}");
    assert!(
        dry.stdout.contains(&format!(
            "+listeners=INTERNAL://127.0.0.1:{},EXTERNAL://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
            ports.internal, ports.external, ports.controller
        )),
        "{dry}"
    );
    assert!(dry.stdout.contains("restart: kafka.service ("), "{dry}");
    assert!(dry.stdout.contains("dry run: nothing was changed"), "{dry}");
    assert_eq!(
        host.snapshot(),
        before,
        "a dry run must not change any file"
    );
    assert_eq!(host.restarts().len(), 1);

    let apply = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(apply.code, 0, "{apply}");
    assert!(apply.stdout.contains("restarted kafka.service"), "{apply}");
    assert!(
        apply.stdout.contains(&format!(
            "check passed: EXTERNAL accepts connections on 127.0.0.1:{}",
            ports.external
        )),
        "{apply}"
    );
    assert!(apply.stdout.contains("converged"), "{apply}");
    let properties = host.properties();
    assert!(properties.contains(&format!("advertised.listeners=INTERNAL://emr-worker-1.cluster-48742:{},EXTERNAL://198.19.0.11:{}", ports.internal, ports.external)), "{properties}");
    assert!(
        properties.contains(&format!("CONTROLLER://127.0.0.1:{}", ports.controller)),
        "CONTROLLER kept: {properties}"
    );
    assert!(
        properties.starts_with("# Kafka broker configuration"),
        "comments kept: {properties}"
    );
    assert_eq!(host.restarts().len(), 2, "exactly one restart by kreach");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ports.external)).is_ok(),
        "the new listener serves"
    );
    assert!(
        host.backups().len() >= 2,
        "previous versions kept under the state dir: {:?}",
        host.backups()
    );

    let mtimes = host.mtimes();
    let again = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stdout.contains("nothing to change"), "{again}");
    assert_eq!(host.mtimes(), mtimes, "the second run writes nothing");
    assert_eq!(host.restarts().len(), 2, "and restarts nothing");

    // The audit trail answers "what did kreach change here, and why": one line per file written.
    let audit = host.agent(&["audit"]);
    assert_eq!(audit.code, 0, "{audit}");
    let lines: Vec<&str> = audit.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the hosts block and the listener settings: {audit}"
    );
    let properties_line = lines
        .iter()
        .find(|line| line.contains("(listener settings)"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        properties_line.contains(" gen 0 apply ")
            && properties_line.contains("changed listeners, advertised.listeners")
            && properties_line.ends_with("[released by apply-local]"),
        "{properties_line}"
    );
    let json = host.agent(&["audit", "--json", "--last", "1"]);
    let entry: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("one JSON line");
    assert_eq!(entry["seq"], 2, "{json}");
    assert_eq!(entry["new_hash"].as_str().map(str::len), Some(64), "{json}");
}

/// Broker emr-worker-1 running the stand-in Kafka on its initial config, then converged by
/// apply-local on a spec that enables EXTERNAL (one restart). Returns the host and the spec's path.
fn applied_broker(ports: &Ports) -> (Host, String) {
    let host = Host::broker("emr-worker-1");
    host.write_properties(&ports.initial_properties());
    host.start_kafka();
    let spec = host.write_spec(&SpecOptions {
        external: true,
        ..SpecOptions::new(ports)
    });
    let run = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 0, "{run}");
    (host, spec)
}

#[test]
fn a_change_to_the_hosts_block_alone_does_not_restart_kafka() {
    let ports = Ports::new();
    let (host, spec) = applied_broker(&ports);
    assert_eq!(
        host.restarts().len(),
        2,
        "enabling EXTERNAL restarts once (the recorder sees kreach's restarts)"
    );
    let hosts = host.hosts();
    let properties = host.properties();
    let properties_mtime = std::fs::metadata(host.properties_path())
        .and_then(|m| m.modified())
        .unwrap();

    // A peer moves: brokers advertise hostnames, so this broker's hosts block maps emr-worker-2
    // anew, while its own listener settings stay exactly as they are.
    let moved = host.write_file(
        "moved.toml",
        &std::fs::read_to_string(&spec)
            .unwrap()
            .replace("198.18.0.12", "198.18.0.22"),
    );
    let run = host.agent(&["apply-local", "--spec", &moved]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("restart: none (no listener setting changes)"),
        "{run}"
    );
    assert!(!run.stdout.contains("restarted"), "{run}");
    assert!(run.stdout.contains("converged"), "{run}");
    let new_hosts = host.hosts();
    assert_ne!(new_hosts, hosts, "the hosts file changed");
    assert!(
        new_hosts.contains("198.18.0.22\temr-worker-2.cluster-48742 emr-worker-2\n"),
        "{new_hosts:?}"
    );
    assert_eq!(host.properties(), properties, "server.properties unchanged");
    assert_eq!(
        std::fs::metadata(host.properties_path())
            .and_then(|m| m.modified())
            .unwrap(),
        properties_mtime,
        "and not rewritten"
    );
    assert_eq!(
        host.restarts().len(),
        2,
        "the restart command did not run: {:?}",
        host.restarts()
    );
}

#[test]
fn clients_get_split_horizon_entries_and_every_other_byte_survives() {
    let ports = Ports::new();
    let original = "127.0.0.1\tlocalhost\r\n# a comment\twith a tab\r\n::1 localhost ip6-localhost\r\n10.1.1.1 db db.internal";
    for (node, ip) in [("etl-1", "198.18.0.11"), ("laptop-1", "198.19.0.11")] {
        let host = Host::client(node);
        host.write_hosts(original);
        let spec = host.write_spec(&SpecOptions {
            external: true,
            external_advertise: "hostname",
            ..SpecOptions::new(&ports)
        });
        let run = host.agent(&["apply-local", "--spec", &spec]);
        assert_eq!(run.code, 0, "{run}");
        let hosts = host.hosts();
        assert!(
            hosts.starts_with(original),
            "everything before the block is byte-identical:\n{hosts:?}"
        );
        assert!(
            hosts.contains(&format!(
                "{ip}\temr-worker-1.cluster-48742 emr-worker-1\r\n"
            )),
            "{node}: {hosts:?}"
        );
        assert_eq!(
            kreach_domain::hosts::retain_blocks(&hosts, &[]).unwrap(),
            original
        );
    }
}

#[test]
fn an_unmanaged_hosts_line_mapping_our_name_elsewhere_is_a_conflict_exit_4() {
    let host = Host::client("etl-1");
    let ports = Ports::new();
    // An old hand-made entry sends the broker's long name to another address; the resolver
    // takes the first match, so it would win over kreach's block.
    let original = "127.0.0.1\tlocalhost\n10.9.9.9 emr-worker-1.cluster-48742 old-broker\n";
    host.write_hosts(original);
    let spec = host.write_spec(&SpecOptions::new(&ports));
    let conflict = "conflict: line 2 maps emr-worker-1.cluster-48742 to 10.9.9.9, but kreach manages it as 198.18.0.11";

    let dry = host.agent(&["apply-local", "--spec", &spec, "--dry-run"]);
    assert_eq!(dry.code, 4, "a dry run reports the conflict too: {dry}");
    assert!(dry.stdout.contains(conflict), "{dry}");
    assert!(dry.stdout.contains("dry run: nothing was changed"), "{dry}");
    assert_eq!(host.hosts(), original);

    let apply = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(apply.code, 4, "{apply}");
    assert!(apply.stdout.contains(conflict), "{apply}");
    assert!(
        apply
            .stdout
            .contains("applied, but 1 unmanaged hosts line(s) shadow kreach's entries"),
        "{apply}"
    );
    let hosts = host.hosts();
    assert!(
        hosts.starts_with(original),
        "the conflicting line is reported, not deleted or rewritten: {hosts:?}"
    );
    assert!(
        hosts.contains("198.18.0.11\temr-worker-1.cluster-48742 emr-worker-1\n"),
        "{hosts:?}"
    );

    // Nothing left to change: still 4, with and without --dry-run.
    for args in [
        &["apply-local", "--spec", &spec][..],
        &["apply-local", "--spec", &spec, "--dry-run"][..],
    ] {
        let again = host.agent(args);
        assert_eq!(again.code, 4, "{args:?}: {again}");
        assert!(again.stdout.contains("nothing to change"), "{again}");
        assert!(again.stdout.contains(conflict), "{again}");
    }
    assert_eq!(host.hosts(), hosts);
}

#[test]
fn an_invalid_spec_reports_every_error_and_changes_nothing() {
    let host = Host::broker("emr-worker-1");
    let ports = Ports::new();
    host.write_properties(&ports.initial_properties());
    let spec = host.write_file(
        "bad.toml",
        "[cluster]\nname = \"c\"\n[[broker]]\nid = 1\nnode = \"emr-worker-1\"\nprivate_ip = \"10.0.0.999\"\n[[broker]]\nid = 1\nnode = \"b\"\nprivate_ip = \"10.0.0.2\"\ncolour = \"red\"\n",
    );
    let before = host.snapshot();
    let run = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("broker[0].private_ip"), "{run}");
    assert!(run.stderr.contains("broker[1].id"), "{run}");
    assert!(
        run.stderr
            .contains("broker[1].colour: broker 1 (node \"b\"): unknown key"),
        "{run}"
    );
    assert!(run.stderr.contains("nothing was changed"), "{run}");
    assert_eq!(host.snapshot(), before);
}

#[test]
fn a_spec_file_that_cannot_be_a_spec_is_an_invalid_spec() {
    let host = Host::client("etl-1");
    let binary = host.write_file("binary.toml", "");
    std::fs::write(&binary, b"[cluster]\nname = \"\xff\xfe\"\n").unwrap();
    let before = host.snapshot();
    // /dev/zero never ends: the agent stops reading at the size limit.
    for (spec, why) in [
        (
            "/dev/zero",
            "/dev/zero is over 4 MiB, the limit for a cluster spec",
        ),
        (
            binary.as_str(),
            "is not UTF-8 text (invalid byte at offset 18)",
        ),
    ] {
        let run = host.agent(&["apply-local", "--spec", spec]);
        assert_eq!(run.code, 2, "{run}");
        assert!(run.stderr.contains(why), "{run}");
        assert!(run.stderr.contains("nothing was changed"), "{run}");
    }
    assert_eq!(host.snapshot(), before);
    let missing = host.agent(&["apply-local", "--spec", "/nonexistent/spec.toml"]);
    assert_eq!(missing.code, 1, "unreadable, not invalid: {missing}");
    assert!(
        missing.stderr.contains("reading /nonexistent/spec.toml"),
        "{missing}"
    );
}

#[test]
fn a_broker_that_cannot_start_on_the_new_config_is_rolled_back_and_serving() {
    let host = Host::broker("emr-worker-1");
    let ports = Ports::new();
    let original = ports.initial_properties();
    host.write_properties(&original);
    host.start_kafka();
    // Something else already holds the new EXTERNAL port: the "broker" cannot bind it.
    let squatter = TcpListener::bind(("127.0.0.1", ports.external)).unwrap();
    let spec = host.write_spec(&SpecOptions {
        external: true,
        ..SpecOptions::new(&ports)
    });
    let run = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 3, "{run}");
    assert!(
        run.stdout
            .contains("rolled back: restart of kafka.service failed"),
        "{run}"
    );
    assert!(
        run.stdout
            .contains(&format!("cannot bind 127.0.0.1:{}", ports.external)),
        "the reason carries the service's own error: {run}"
    );
    assert_eq!(host.properties(), original, "the previous bytes are back");
    let restarts = host.restarts();
    assert_eq!(
        restarts.len(),
        3,
        "initial start, failed restart, restart on the old config: {restarts:?}"
    );
    assert!(
        restarts[1].ends_with("failed") && restarts[2].ends_with("ok"),
        "{restarts:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ports.internal)).is_ok(),
        "serving on the old config"
    );
    drop(squatter);

    let audit = host.agent(&["audit"]);
    let actions: Vec<&str> = audit
        .stdout
        .lines()
        .filter(|line| line.contains("(listener settings)"))
        .collect();
    assert_eq!(actions.len(), 2, "the write and its rollback: {audit}");
    assert!(actions[0].contains(" apply "), "{audit}");
    assert!(
        actions[1].contains(" rollback ") && actions[1].contains("restart of kafka.service failed"),
        "the rollback names the failed gate: {audit}"
    );
}

#[test]
fn a_listener_that_does_not_come_up_fails_the_health_check_and_rolls_back() {
    let host = Host::broker("emr-worker-1");
    let ports = Ports::new();
    let original = ports.initial_properties();
    host.write_properties(&original);
    host.set_restart_env("FAKE_KAFKA_SKIP=EXTERNAL");
    host.start_kafka();
    let spec = host.write_spec(&SpecOptions {
        external: true,
        health_timeout: "5s",
        ..SpecOptions::new(&ports)
    });
    let run = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 3, "{run}");
    assert!(
        run.stdout.contains(&format!("rolled back: health check failed: listener EXTERNAL does not accept TCP connections on 127.0.0.1:{}", ports.external)),
        "the reason names the check, listener and endpoint: {run}"
    );
    assert_eq!(host.properties(), original);
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.internal)).is_ok());
}

#[test]
fn a_first_apply_whose_rollback_leaves_the_broker_down_is_reported_as_failed_not_rolled_back() {
    let host = Host::broker("emr-worker-1");
    let ports = Ports::new();
    let original = ports.initial_properties();
    host.write_properties(&original);
    host.start_kafka();
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.internal)).is_ok());
    // From now on every start of the "broker" leaves INTERNAL closed, on the new config and on the
    // restored one alike. No apply has happened yet, so there is no applied state to check against.
    host.set_restart_env("FAKE_KAFKA_SKIP=INTERNAL");
    let spec = host.write_spec(&SpecOptions {
        external: true,
        health_timeout: "2s",
        ..SpecOptions::new(&ports)
    });
    let run = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 1, "{run}");
    assert!(!run.stdout.contains("rolled back:"), "{run}");
    let unreachable = format!(
        "listener INTERNAL does not accept TCP connections on 127.0.0.1:{}",
        ports.internal
    );
    assert!(
        run.stderr.contains(&format!(
            "rollback failed: health check failed: {unreachable}"
        )),
        "names the failed gate: {run}"
    );
    assert!(
        run.stderr.contains(&format!(
            "the previous files of kafka.service were restored, but it is not serving on them either: {unreachable}"
        )),
        "says the restored broker does not serve either: {run}"
    );
    assert_eq!(host.properties(), original, "the previous bytes are back");
    assert_eq!(
        host.restarts().len(),
        3,
        "initial start, restart on the new config, restart on the restored one"
    );
}

#[test]
fn broker_without_properties_in_its_config_and_binary_hosts_files_are_refused() {
    let host = Host::client("emr-worker-1");
    let ports = Ports::new();
    let spec = host.write_spec(&SpecOptions::new(&ports));
    let run = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("no manage.kafka_properties"), "{run}");

    let client = Host::client("etl-1");
    std::fs::write(
        client.hosts_path(),
        b"127.0.0.1 localhost\n\xff\xfe binary\n",
    )
    .unwrap();
    let spec = client.write_spec(&SpecOptions::new(&ports));
    let run = client.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("is not valid UTF-8 (at byte 20)"),
        "{run}"
    );
    assert_eq!(
        std::fs::read(client.hosts_path()).unwrap(),
        b"127.0.0.1 localhost\n\xff\xfe binary\n"
    );
}

#[test]
fn a_hosts_file_with_nul_bytes_and_properties_with_an_absurd_line_are_refused_unchanged() {
    let ports = Ports::new();
    let client = Host::client("etl-1");
    let binary = b"127.0.0.1 localhost\n\0\0\0\0 corrupted\n".to_vec();
    std::fs::write(client.hosts_path(), &binary).unwrap();
    let spec = client.write_spec(&SpecOptions::new(&ports));
    let run = client.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("hosts"),
        "the error names the file: {run}"
    );
    assert!(
        run.stderr.contains("line 2 contains a NUL byte"),
        "the error names the line: {run}"
    );
    assert_eq!(std::fs::read(client.hosts_path()).unwrap(), binary);

    let broker = Host::broker("emr-worker-1");
    let absurd = format!(
        "{}ssl.truststore.certificates={}\n",
        ports.initial_properties(),
        "A".repeat(2 * 1024 * 1024)
    );
    broker.write_properties(&absurd);
    let spec = broker.write_spec(&SpecOptions::new(&ports));
    let before = broker.snapshot();
    let run = broker.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("server.properties"), "{run}");
    assert!(run.stderr.contains("bytes long"), "{run}");
    assert_eq!(broker.snapshot(), before, "nothing was written");
    assert!(broker.restarts().is_empty(), "Kafka was not restarted");
}

#[test]
fn the_daemon_repairs_drift_in_its_own_block_and_leaves_other_edits_alone() {
    let ports = Ports::new();
    let (host, _spec) = applied_broker(&ports);
    let applied_hosts = host.hosts();
    let applied_properties = host.properties();
    let restarts = host.restarts().len();

    let mut daemon = host.spawn_agent(&["run"]);
    daemon.wait_for_log("enforcing the last applied state", Duration::from_secs(10));
    let hosts_path = host.hosts_path();
    let properties_path = host.properties_path();

    // 1. A hand edit inside the block is reverted.
    expect_repair(
        &daemon,
        "edit inside the block",
        &hosts_path,
        1,
        || {
            host.write_hosts(
                &applied_hosts.replace("198.18.0.12\temr-worker-2", "10.9.9.9\temr-worker-2"),
            );
        },
        || host.hosts() == applied_hosts,
    );

    // 2. Deleting the block is repaired.
    expect_repair(
        &daemon,
        "block deleted",
        &hosts_path,
        2,
        || {
            host.write_hosts(&kreach_domain::hosts::retain_blocks(&applied_hosts, &[]).unwrap());
        },
        || host.hosts() == applied_hosts,
    );

    // 3. An edit outside the block stays.
    let edited = format!("# added by an operator\n{applied_hosts}");
    host.write_hosts(&edited);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        host.hosts(),
        edited,
        "edits outside kreach's block are left alone"
    );

    // 4. A managed listener entry changed by hand is put back, without restarting Kafka.
    expect_repair(
        &daemon,
        "listener entry",
        &properties_path,
        3,
        || {
            host.write_properties(
                &applied_properties.replace("EXTERNAL://198.19.0.11", "EXTERNAL://203.0.113.9"),
            );
        },
        || host.properties() == applied_properties,
    );
    assert_eq!(
        host.restarts().len(),
        restarts,
        "a drift repair never restarts Kafka"
    );

    // 5. A managed key deleted by hand comes back with its value (the editor places it anew, so
    // the bytes need not match), again without a restart.
    let advertised =
        |text: &str| kreach_domain::properties::get_property(text, "advertised.listeners").unwrap();
    let without_advertised: String = applied_properties
        .lines()
        .filter(|line| !line.starts_with("advertised.listeners="))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(advertised(&without_advertised), None);
    expect_repair(
        &daemon,
        "managed key deleted",
        &properties_path,
        4,
        || {
            host.write_properties(&without_advertised);
        },
        || advertised(&host.properties()) == advertised(&applied_properties),
    );
    assert_eq!(
        host.restarts().len(),
        restarts,
        "a drift repair never restarts Kafka"
    );
    let repaired_properties = host.properties();

    // An unrelated key changed by hand stays.
    let tuned = repaired_properties.replace("num.partitions=3", "num.partitions=6");
    host.write_properties(&tuned);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(host.properties(), tuned);
    assert_eq!(
        daemon.log_lines("corrective change").len(),
        4,
        "edits outside kreach's entries are not logged as corrective changes:\n{}",
        daemon.log()
    );

    let code = daemon.terminate(Duration::from_secs(5));
    assert_eq!(code, Some(0), "SIGTERM ends the daemon cleanly");
}

/// Make a drift `edit` and wait for the daemon to undo it (`repaired`). The repair must land
/// within a second of the edit (the bound; the measured latency is printed) and be logged
/// as corrective change number `nth`, naming `path`.
fn expect_repair(
    daemon: &Daemon,
    what: &str,
    path: &std::path::Path,
    nth: usize,
    edit: impl FnOnce(),
    repaired: impl Fn() -> bool,
) {
    let edited = std::time::Instant::now();
    edit();
    wait_until(Duration::from_secs(4), &repaired);
    let took = edited.elapsed();
    eprintln!("drift repair ({what}) took {took:?} from the edit");
    assert!(repaired(), "{what}: not repaired after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "{what}: repaired {took:?} after the edit, over the one-second bound"
    );
    let lines = daemon.wait_for_log_lines("corrective change", nth, Duration::from_secs(1));
    assert_eq!(
        lines.len(),
        nth,
        "{what}: one corrective change per repair: {lines:#?}"
    );
    assert!(
        lines[nth - 1].contains(&path.display().to_string()),
        "{what}: the corrective change names {}: {}",
        path.display(),
        lines[nth - 1]
    );
}

#[test]
fn a_restarted_agent_enforces_the_persisted_state_before_any_coordinator() {
    let host = Host::client("etl-1");
    let ports = Ports::new();
    let spec = host.write_spec(&SpecOptions::new(&ports));
    assert_eq!(host.agent(&["apply-local", "--spec", &spec]).code, 0);
    let applied = host.hosts();
    // While no agent runs, somebody removes kreach's entries.
    host.write_hosts(&kreach_domain::hosts::retain_blocks(&applied, &[]).unwrap());
    let mut daemon = host.spawn_agent(&["run"]);
    let took = wait_until(Duration::from_secs(5), || host.hosts() == applied);
    assert!(took < Duration::from_secs(5), "repaired at start-up");
    assert_eq!(daemon.terminate(Duration::from_secs(5)), Some(0));
}

#[test]
fn the_daemon_reports_a_conflicting_hosts_line_once_when_it_appears() {
    let host = Host::client("etl-1");
    let ports = Ports::new();
    let spec = host.write_spec(&SpecOptions::new(&ports));
    assert_eq!(host.agent(&["apply-local", "--spec", &spec]).code, 0);
    let mut daemon = host.spawn_agent(&["run"]);
    daemon.wait_for_log("enforcing the last applied state", Duration::from_secs(10));

    // Someone adds an old hand-made entry above kreach's block: it wins in the resolver.
    let applied = host.hosts();
    host.write_hosts(&format!("10.9.9.9 emr-worker-1.cluster-48742\n{applied}"));
    let needle = "conflict: line 1 maps emr-worker-1.cluster-48742 to 10.9.9.9, but kreach manages it as 198.18.0.11";
    daemon.wait_for_log(needle, Duration::from_secs(10));
    assert!(
        host.hosts()
            .starts_with("10.9.9.9 emr-worker-1.cluster-48742\n"),
        "the line is reported, not deleted"
    );
    // Said once, not at every later check (the safety check runs every 5 s).
    std::thread::sleep(kreach_agent::drift::SAFETY_CHECK_PERIOD + Duration::from_secs(1));
    assert_eq!(daemon.log_lines(needle).len(), 1, "{}", daemon.log());

    // Removed again: the daemon says so.
    host.write_hosts(&applied);
    daemon.wait_for_log(
        "no unmanaged hosts line shadows kreach's entries any more",
        Duration::from_secs(10),
    );
    assert_eq!(daemon.terminate(Duration::from_secs(5)), Some(0));
}

#[test]
fn sigkill_during_apply_never_leaves_a_torn_file() {
    // A big hosts file widens the window in which a kill lands mid-write.
    let host = Host::client("etl-1");
    let ports = Ports::new();
    let padding: String = (0..40_000)
        .map(|i| format!("# padding line {i:06} keeps the write busy\n"))
        .collect();
    host.write_hosts(&padding);
    let spec_a = host.write_spec(&SpecOptions::new(&ports));
    let spec_b = host.write_file(
        "b.toml",
        &std::fs::read_to_string(&spec_a)
            .unwrap()
            .replace("198.18.0.1", "198.18.1.1"),
    );
    // Time one whole apply, then kill at random moments across that span (and a little past it).
    let started = std::time::Instant::now();
    assert_eq!(host.agent(&["apply-local", "--spec", &spec_a]).code, 0);
    let span = started.elapsed().as_micros() as u64 * 6 / 5;
    let mut rng = Lcg::seeded();
    let (mut torn, mut old_seen, mut new_seen) = (0, 0, 0);
    let iterations = 200;
    for _ in 0..iterations {
        // Always apply the spec the file does not match yet, so every run has something to write.
        let before = host.hosts();
        let (spec, expected) = [&spec_a, &spec_b]
            .into_iter()
            .map(|spec| (spec, expected_client_hosts(&before, spec)))
            .find(|(_, expected)| *expected != before)
            .expect("one of the two specs changes the file");
        let delay = Duration::from_micros(rng.below(span));
        let mut child = host.spawn_agent(&["apply-local", "--spec", spec]);
        std::thread::sleep(delay);
        child.kill();
        let after = host.hosts();
        if after == before {
            old_seen += 1;
        } else if after == expected {
            new_seen += 1;
        } else {
            torn += 1;
        }
    }
    eprintln!("crash test: {iterations} SIGKILLs within {span} us of start: {old_seen} old, {new_seen} new, {torn} torn");
    assert_eq!(
        torn, 0,
        "every SIGKILL leaves exactly the old or the new content"
    );
    assert!(
        old_seen > 0 && new_seen > 0,
        "kills landed both before and after the write: {old_seen} old, {new_seen} new"
    );
    // A later apply that writes cleans up any temp file a killed writer left (one with nothing
    // to change writes nothing: the spec the file does not match yet).
    let before = host.hosts();
    let writes = [&spec_a, &spec_b]
        .into_iter()
        .find(|spec| expected_client_hosts(&before, spec) != before)
        .expect("one of the two specs changes the file");
    assert_eq!(host.agent(&["apply-local", "--spec", writes]).code, 0);
    let leftovers: Vec<_> = std::fs::read_dir(host.etc())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("kreach-tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "stale temp files removed: {leftovers:?}"
    );
}

#[test]
fn a_bind_mounted_hosts_file_is_rewritten_in_place() {
    if !kreach_test_parts::require_root(
        kreach_test_parts::Tier::Root,
        "a_bind_mounted_hosts_file_is_rewritten_in_place",
    ) {
        return;
    }
    let host = Host::client("etl-1");
    let ports = Ports::new();
    let source = host.write_file("netns-hosts", "127.0.0.1 localhost\n");
    host.write_hosts("placeholder\n");
    let _mount = BindMount::new(&source, &host.hosts_path());
    let spec = host.write_spec(&SpecOptions::new(&ports));
    let run = host.agent(&["apply-local", "--spec", &spec]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("locked in-place rewrite"), "{run}");
    let seen_through_mount = host.hosts();
    assert!(
        seen_through_mount.starts_with("127.0.0.1 localhost\n# BEGIN kreach"),
        "{seen_through_mount:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&source).unwrap(),
        seen_through_mount,
        "the mounted file itself changed"
    );
}

#[test]
fn sigterm_stops_the_agent_at_once_while_its_reachability_checks_time_out() {
    // A "broker" that accepts connections (the kernel's backlog does) and never answers: every
    // Kafka request of the client's reachability check waits out its timeout.
    let silent = std::net::TcpListener::bind("127.0.77.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let host = Host::client("etl-1");
    let spec = host.write_file(
        "silent.toml",
        &format!(
            "[cluster]\nname = \"silent\"\n\n[listeners.internal]\nport = {port}\nadvertise = \"private_ip\"\n\n\
             [[broker]]\nid = 1\nnode = \"b1\"\nhostname = \"b1.silent\"\nprivate_ip = \"127.0.77.1\"\npublic_ip = \"198.19.0.11\"\n\n\
             [[client]]\nnode = \"etl-1\"\nview = \"private\"\n"
        ),
    );
    assert_eq!(host.agent(&["apply-local", "--spec", &spec]).code, 0);
    // A coordinator nobody listens on (checks run without one), and a check every second.
    host.append_config(
        "[coordinator]\nurl = \"http://127.0.0.1:9\"\ninsecure = true\n\n[reachability]\nperiod = \"1s\"\n",
    );
    let mut daemon = host.spawn_agent(&["run"]);
    daemon.wait_for_log("enforcing the last applied state", Duration::from_secs(10));
    // Let a check start and hang on the silent broker.
    std::thread::sleep(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    assert_eq!(
        daemon.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        daemon.log()
    );
    let took = started.elapsed();
    // Before, the stop waited for the check's timeouts (8.4–9 s seen). The bound leaves room for
    // a loaded machine; the figure is printed.
    eprintln!("stopped {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(2),
        "stopped {took:?} after SIGTERM"
    );
    drop(silent);
}

#[test]
fn a_dynamic_override_of_advertised_listeners_is_found_and_deleted_with_kreach_agent_overrides() {
    let ports = Ports::new();
    let (host, _) = applied_broker(&ports);
    let run = host.agent(&["overrides"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("no dynamic broker config hides"),
        "{run}"
    );

    // Someone sets broker 1's advertised.listeners over the Kafka protocol (as `kafka-configs.sh
    // --alter --entity-type brokers --entity-name 1` does): Kafka would now advertise that.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", ports.internal).parse().unwrap();
    let mut kafka =
        kreach_agent::kafka::KafkaConnection::connect(addr, Duration::from_secs(5)).unwrap();
    kafka
        .alter_broker_configs(
            1,
            &[(
                "advertised.listeners".to_string(),
                Some("INTERNAL://stale-name:9092".to_string()),
            )],
        )
        .unwrap();
    let run = host.agent(&["overrides"]);
    assert_eq!(run.code, 3, "{run}");
    assert!(
        run.stdout.contains(
            "advertised.listeners is set dynamically (DYNAMIC_BROKER_CONFIG: \"INTERNAL://stale-name:9092\"), which Kafka uses instead of server.properties' \"INTERNAL://emr-worker-1.cluster-48742:"
        ) && run.stdout.contains("`kreach-agent overrides --delete` on emr-worker-1"),
        "{run}"
    );

    let run = host.agent(&["overrides", "--delete"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("deleted the dynamic override of advertised.listeners"),
        "{run}"
    );
    let left = kafka.broker_configs(1).unwrap();
    assert!(
        left.iter().all(|(key, _, _)| key != "advertised.listeners"),
        "{left:?}"
    );
}
