//! A coordinator and five agents as real processes over real TCP. An observer that does not ask
//! the coordinator — the stand-in Kafka's own restart log and the clients' hosts files — checks the
//! rules: at most `max_unavailable` brokers down at once, the controller last, client names in place
//! before any broker advertises them; a failing broker pauses the rollout and nothing else moves;
//! a `kill -9` of the coordinator mid-rollout loses nothing and repeats nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kreach_tests::fleet::{
    http_get, max_concurrent, metrics_address, now_ns, restarts_since, Fleet, FleetSpec, Restart,
};

/// Apply with `--force`: these "brokers" share one host, so their host facts never match the spec
/// (the refusal itself is checked in the first test).
fn apply(fleet: &Fleet, spec: &std::path::Path) {
    fleet.apply_forced(spec);
}

/// A started fleet (coordinator, agents) with generation 1 — the default spec — rolled out.
fn fleet_on_generation_1(
    net: u8,
    brokers: u32,
    clients: &[(&str, &str)],
    controller: Option<u32>,
) -> (Fleet, std::path::PathBuf) {
    fleet_probing_on_generation_1(net, brokers, clients, controller, "tcp")
}

/// [`fleet_on_generation_1`] with the brokers' `[manage] probe` (`"kafka"`: the agents speak Kafka
/// to their stand-in brokers, for key store reloads, dynamic overrides and SCRAM users).
fn fleet_probing_on_generation_1(
    net: u8,
    brokers: u32,
    clients: &[(&str, &str)],
    controller: Option<u32>,
    probe: &'static str,
) -> (Fleet, std::path::PathBuf) {
    let mut fleet = Fleet::new(net, brokers, clients).unwrap();
    fleet.probe = probe;
    fleet.start_coordinator().unwrap();
    fleet.start_agents(controller).unwrap();
    let gen1 = fleet
        .write_spec("gen1.toml", &FleetSpec::default())
        .unwrap();
    apply(&fleet, &gen1);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    (fleet, gen1)
}

/// Samples the clients' hosts files until stopped; records when each first held `needle`.
struct HostsObserver {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, u128)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostsObserver {
    fn start(files: Vec<(String, std::path::PathBuf)>, needle: String) -> HostsObserver {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || {
                let mut pending = files;
                // Bounded: at most two minutes of sampling every 2 ms.
                for _ in 0..60_000 {
                    if stop.load(Ordering::Relaxed) || pending.is_empty() {
                        return;
                    }
                    pending.retain(|(node, path)| {
                        let text = std::fs::read_to_string(path).unwrap_or_default();
                        if text.contains(&needle) {
                            seen.lock().unwrap().push((node.clone(), now_ns()));
                            false
                        } else {
                            true
                        }
                    });
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        HostsObserver {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(String, u128)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn a_rolling_change_keeps_max_unavailable_restarts_the_controller_last_and_expands_first() {
    let mut fleet = Fleet::new(11, 3, &[("etl-1", "private"), ("etl-2", "private")]).unwrap();
    fleet.labels.insert(
        "etl-2".into(),
        r#"cluster = "spark-prod", role = "task""#.into(),
    );
    fleet.start_coordinator().unwrap();
    fleet.start_agents(Some(2)).unwrap();

    let gen1 = fleet
        .write_spec("gen1.toml", &FleetSpec::default())
        .unwrap();
    // Without --yes and without a terminal to ask on, apply refuses and applies nothing.
    let unasked = fleet
        .ctl(&["apply", "--force", gen1.to_str().unwrap()])
        .unwrap();
    assert_eq!(unasked.code, 1, "{}", unasked.stdout);
    assert!(
        unasked
            .stderr
            .contains("not asking without a terminal: pass --yes"),
        "{}",
        unasked.stderr
    );
    // The agents reported host facts that disagree with the spec: refused without --force.
    let refused = fleet
        .ctl(&["apply", "--yes", gen1.to_str().unwrap()])
        .unwrap();
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("broker 1 (node \"emr-worker-1\"): private_ip 127.0.11.1 is not an address of that host"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        fleet.ctl(&["history"]).unwrap().stdout.lines().count(),
        1,
        "nothing was applied"
    );
    let nodes = fleet.ctl(&["nodes"]).unwrap();
    assert_eq!(nodes.stdout.lines().count(), 6, "{}", nodes.stdout);
    assert!(
        nodes.stdout.contains("emr-worker-2") && nodes.stdout.contains("etl-2"),
        "{}",
        nodes.stdout
    );
    // The labels in etl-2's agent.toml came with its facts; etl-1 has none.
    let row = |node: &str| {
        let line = nodes.stdout.lines().find(|l| l.starts_with(node));
        line.unwrap_or_default().trim_end().to_string()
    };
    assert!(
        row("etl-2").ends_with("cluster=spark-prod,role=task") && row("etl-1").ends_with(" -"),
        "{}",
        nodes.stdout
    );
    apply(&fleet, &gen1);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();

    // Host facts are reported when they change: a line outside kreach's block gives etl-2's host
    // a new FQDN, and `kreachctl nodes` shows it within a few facts periods (1 s here).
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let fqdn = format!("{hostname}.facts-changed.test");
    let etl2_hosts = fleet.clients[1].1.join("etc/hosts");
    let mut text = std::fs::read_to_string(&etl2_hosts).unwrap();
    text.push_str(&format!("127.0.1.1\t{fqdn} {hostname}\n"));
    std::fs::write(&etl2_hosts, text).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let run = fleet.ctl(&["nodes", "--output", "json"]).unwrap();
        let nodes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let etl2 = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "etl-2")
            .cloned()
            .unwrap();
        if etl2["fqdn"] == fqdn.as_str() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changed FQDN was not reported: {etl2:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Generation 2: brokers advertise hostnames and open EXTERNAL. Clients must learn the names first.
    let since = now_ns();
    let observer = HostsObserver::start(
        fleet
            .clients
            .iter()
            .map(|(node, dir)| (node.clone(), dir.join("etc/hosts")))
            .collect(),
        "emr-worker-3.fleet-11".to_string(),
    );
    let gen2 = fleet
        .write_spec(
            "gen2.toml",
            &FleetSpec {
                hostnames: true,
                external: true,
                ..FleetSpec::default()
            },
        )
        .unwrap();
    // Host facts disagree (one machine plays every broker): plan shows everything, then refuses
    // as apply would; with --force it exits 0.
    let plan = fleet.ctl(&["plan", gen2.to_str().unwrap()]).unwrap();
    assert_eq!(plan.code, 1, "{}", plan.stderr);
    assert!(
        plan.stderr.contains("refused: host facts disagree")
            && plan
                .stdout
                .contains("warning: broker 1 (node \"emr-worker-1\")"),
        "{}\n{}",
        plan.stdout,
        plan.stderr
    );
    let plan = fleet
        .ctl(&["plan", "--force", gen2.to_str().unwrap()])
        .unwrap();
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout.contains("restart brokers (controller)"),
        "the plan shows the controller step:\n{}",
        plan.stdout
    );
    // The exact diff per node: a client gains the brokers' names, a broker's advertised listener
    // changes and it restarts.
    let lines: Vec<&str> = plan.stdout.lines().collect();
    assert!(
        lines.contains(&"~ etl-1 (client, private view)")
            && lines.iter().any(|l| l.starts_with('+')
                && l.contains("127.0.11.1")
                && l.contains("emr-worker-1.fleet-11")),
        "{}",
        plan.stdout
    );
    assert!(
        lines.contains(&"~ emr-worker-1 (broker 1): restarts Kafka")
            && lines
                .iter()
                .any(|l| l.starts_with("+advertised.listeners=")
                    && l.contains("emr-worker-1.fleet-11:")),
        "{}",
        plan.stdout
    );
    // And planning changed nothing.
    assert!(restarts_since(&fleet, since).is_empty());
    assert!(!fleet
        .client_hosts("etl-1")
        .contains("emr-worker-1.fleet-11"));
    apply(&fleet, &gen2);
    let status = fleet
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    let seen = observer.finish();

    let restarts = restarts_since(&fleet, since);
    eprintln!("restarts since generation 2: {restarts:?}\nclients saw the names at: {seen:?}");
    for broker in &fleet.brokers {
        let mine: Vec<_> = restarts.iter().filter(|(id, _)| *id == broker.id).collect();
        assert_eq!(
            mine.len(),
            1,
            "broker {} restarted exactly once: {restarts:?}",
            broker.id
        );
        assert!(mine[0].1.ok);
        assert!(broker.properties().contains(&format!(
            "EXTERNAL://{}.fleet-11:{}",
            broker.node,
            fleet.port + 1
        )));
    }
    let windows: Vec<Restart> = restarts.iter().map(|(_, r)| *r).collect();
    assert!(
        max_concurrent(&windows) <= 1,
        "never more than max_unavailable = 1 broker down: {restarts:?}"
    );
    let controller = restarts.iter().find(|(id, _)| *id == 2).unwrap().1;
    for (id, restart) in &restarts {
        if *id != 2 {
            assert!(
                restart.end_ns <= controller.start_ns,
                "the controller (broker 2) goes last: {restarts:?}"
            );
        }
    }
    assert_eq!(seen.len(), 2, "both clients got the new names: {seen:?}");
    let first_restart = restarts.first().unwrap().1.start_ns;
    for (node, at) in &seen {
        assert!(
            *at < first_restart,
            "{node} had the names before any broker restarted to advertise them"
        );
    }
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["phase"] == "converged"),
        "{status:#}"
    );

    let history = fleet.ctl(&["history"]).unwrap();
    assert!(
        history.stdout.lines().count() == 3,
        "header + 2 generations:\n{}",
        history.stdout
    );

    // rollback --to 1 rolls generation 1's spec out again as generation 3, like any spec.
    let gen1_listeners: Vec<String> = fleet
        .brokers
        .iter()
        .map(|b| format!("advertised.listeners=INTERNAL://{}:{}\n", b.ip, fleet.port))
        .collect();
    let rollback = fleet
        .ctl(&["rollback", "--to", "1", "--yes", "--force"])
        .unwrap();
    assert_eq!(rollback.code, 0, "{}{}", rollback.stdout, rollback.stderr);
    assert!(
        rollback
            .stdout
            .contains("applied generation 3 (the spec of generation 1)"),
        "{}",
        rollback.stdout
    );
    fleet
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    for (broker, listeners) in fleet.brokers.iter().zip(&gen1_listeners) {
        assert!(
            broker.properties().contains(listeners.as_str()),
            "{}: {}",
            broker.node,
            broker.properties()
        );
        assert!(
            !broker.properties().contains("EXTERNAL"),
            "EXTERNAL removed again"
        );
    }
    let history = fleet.ctl(&["history", "--output", "json"]).unwrap();
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(history[2]["rollback_of"], 1, "{history:#}");
    assert_eq!(history[1]["outcome"], "completed", "{history:#}");
}

#[test]
fn a_failing_broker_pauses_the_rollout_rolls_back_and_resume_and_abort_behave() {
    let (mut fleet, gen1) = fleet_on_generation_1(12, 3, &[("etl-1", "private")], None);
    let gen1_properties = fleet.brokers[1].properties();

    // Broker 2's new EXTERNAL address is taken: its Kafka cannot start on the new config.
    let squatter = std::net::TcpListener::bind(("127.0.12.2", fleet.port + 1)).unwrap();
    let since = now_ns();
    let gen2 = fleet
        .write_spec(
            "gen2.toml",
            &FleetSpec {
                external: true,
                ..FleetSpec::default()
            },
        )
        .unwrap();
    apply(&fleet, &gen2);
    let status = fleet
        .wait_for_rollout("paused", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        status["rollout"]["paused_node"], "emr-worker-2",
        "{status:#}"
    );
    let reason = status["rollout"]["paused_reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot bind"),
        "the reason carries the broker's own error: {reason}"
    );
    assert_eq!(
        fleet.brokers[1].properties(),
        gen1_properties,
        "broker 2 is back on its old config"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.12.2", fleet.port)).is_ok(),
        "and serving"
    );
    let restarts = restarts_since(&fleet, since);
    assert!(
        restarts.iter().all(|(id, _)| *id != 3),
        "no other broker was touched after the failure: {restarts:?}"
    );

    // What kreach changed on broker 2, and why — from the coordinator, out of the agent's audit
    // trail: the write of generation 2's listener settings, then its rollback with the reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let changes = loop {
        let run = fleet
            .ctl(&["history", "--node", "emr-worker-2", "--output", "json"])
            .unwrap();
        assert_eq!(run.code, 0, "{}", run.stderr);
        let changes: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
        let has_rollback = changes.iter().any(|c| c["action"] == "rollback");
        if has_rollback || std::time::Instant::now() > deadline {
            break changes;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let gen2_changes: Vec<&serde_json::Value> = changes
        .iter()
        .filter(|c| c["generation"] == 2 && c["file"] == "listener settings")
        .collect();
    assert_eq!(gen2_changes.len(), 2, "{changes:#?}");
    assert_eq!(gen2_changes[0]["action"], "apply", "{changes:#?}");
    assert!(
        gen2_changes[0]["released_by"]
            .as_str()
            .unwrap()
            .contains("generation 2"),
        "{changes:#?}"
    );
    assert_eq!(gen2_changes[1]["action"], "rollback", "{changes:#?}");
    assert!(
        gen2_changes[1]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot bind"),
        "{changes:#?}"
    );
    assert_eq!(
        gen2_changes[1]["new_hash"], gen2_changes[0]["old_hash"],
        "the rollback restored exactly the bytes before: {changes:#?}"
    );
    let table = fleet.ctl(&["history", "--node", "emr-worker-2"]).unwrap();
    assert!(
        table.stdout.contains("SHA256 BEFORE -> AFTER") && table.stdout.contains("rollback"),
        "{}",
        table.stdout
    );

    // The failed broker's agent restarts while the rollout is paused: it gets the same release
    // again on reconnect and answers with its failure, without applying it or restarting Kafka.
    let restarts_before = fleet.brokers[1].restarts().len();
    assert_eq!(fleet.stop_agent("emr-worker-2"), Some(0));
    fleet.restart_agent("emr-worker-2").unwrap();
    fleet.wait_until_online(Duration::from_secs(20)).unwrap();
    fleet.agents["emr-worker-2"]
        .wait_for_log("release already failed here", Duration::from_secs(20))
        .unwrap();
    let status = fleet.status_json().unwrap();
    assert_eq!(status["rollout"]["state"], "paused", "{status:#}");
    assert_eq!(
        fleet.brokers[1].restarts().len(),
        restarts_before,
        "a restarted agent does not retry a failed release on its own"
    );
    assert_eq!(fleet.brokers[1].properties(), gen1_properties);

    // Resume retries the same broker; still failing, it pauses again.
    let resumed = fleet.ctl(&["rollout", "resume"]).unwrap();
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    std::thread::sleep(Duration::from_millis(300));
    let status = fleet
        .wait_for_rollout("paused", Duration::from_secs(60))
        .unwrap();
    assert_eq!(status["rollout"]["paused_node"], "emr-worker-2");
    assert!(restarts_since(&fleet, since).iter().all(|(id, _)| *id != 3));

    // With the port free, resume finishes the rollout.
    drop(squatter);
    assert_eq!(fleet.ctl(&["rollout", "resume"]).unwrap().code, 0);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    assert!(
        fleet.brokers[2].properties().contains("EXTERNAL://"),
        "broker 3 got the change after the resume"
    );

    // A new failure, then abort: the rollout stops, later brokers are untouched, a new spec is accepted.
    let squatter = std::net::TcpListener::bind(("127.0.12.1", fleet.port + 3)).unwrap();
    let since = now_ns();
    let mut text = std::fs::read_to_string(&gen2).unwrap();
    text = text.replace(
        &format!(
            "port = {}\nbind = \"private_ip\"\nadvertise = \"public_ip\"",
            fleet.port + 1
        ),
        &format!(
            "port = {}\nbind = \"private_ip\"\nadvertise = \"public_ip\"",
            fleet.port + 3
        ),
    );
    let gen3 = fleet.dir.path().join("gen3.toml");
    std::fs::write(&gen3, text).unwrap();
    apply(&fleet, &gen3);
    let status = fleet
        .wait_for_rollout("paused", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        status["rollout"]["paused_node"], "emr-worker-1",
        "{status:#}"
    );
    let refused = fleet
        .ctl(&["apply", "--yes", "--force", gen1.to_str().unwrap()])
        .unwrap();
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("still rolling out"),
        "{}",
        refused.stderr
    );
    let aborted = fleet.ctl(&["rollout", "abort"]).unwrap();
    assert_eq!(aborted.code, 0, "{}", aborted.stderr);
    assert!(aborted.stdout.contains("aborted"), "{}", aborted.stdout);
    let restarts = restarts_since(&fleet, since);
    assert!(
        restarts.iter().all(|(id, _)| *id == 1),
        "only broker 1 was touched: {restarts:?}"
    );
    // The same spec applied again once the cause is fixed: broker 1 is still on generation 2's
    // bytes (it rolled back), so it gets generation 3's change again and the rollout completes.
    drop(squatter);
    apply(&fleet, &gen3);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    let external = format!("EXTERNAL://127.0.12.1:{}", fleet.port + 3);
    for broker in &fleet.brokers {
        assert!(
            broker
                .properties()
                .contains(&format!(":{}", fleet.port + 3)),
            "broker {} runs the re-applied spec:\n{}",
            broker.id,
            broker.properties()
        );
    }
    assert!(fleet.brokers[0].properties().contains(&external));
}

#[test]
fn kill_9_of_the_coordinator_mid_rollout_resumes_without_repeating_or_skipping_a_step() {
    let (mut fleet, _) = fleet_on_generation_1(13, 3, &[("etl-1", "private")], None);

    let since = now_ns();
    let gen2 = fleet
        .write_spec(
            "gen2.toml",
            &FleetSpec {
                external: true,
                settle: "2s",
                ..FleetSpec::default()
            },
        )
        .unwrap();
    apply(&fleet, &gen2);
    // As soon as the first broker has restarted, kill the coordinator without warning.
    fleet.wait_for_a_restart(since, Duration::from_secs(60));
    fleet.coordinator.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(500));
    fleet.start_coordinator().unwrap();
    fleet
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();

    let restarts = restarts_since(&fleet, since);
    eprintln!("restarts: {restarts:?}");
    let order: Vec<u32> = restarts.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        order,
        vec![1, 2, 3],
        "every broker restarted exactly once, in order"
    );
    let windows: Vec<Restart> = restarts.iter().map(|(_, r)| *r).collect();
    assert!(max_concurrent(&windows) <= 1);
    for pair in restarts.windows(2) {
        let gap_ms = (pair[1].1.start_ns.saturating_sub(pair[0].1.end_ns)) / 1_000_000;
        assert!(
            gap_ms >= 1_900,
            "no step ran early: settle of 2 s between brokers, saw {gap_ms} ms ({restarts:?})"
        );
    }
}

#[test]
fn an_offline_agent_blocks_its_step_and_is_shown_never_skipped() {
    let (mut fleet, _) =
        fleet_on_generation_1(14, 2, &[("etl-1", "private"), ("etl-2", "private")], None);

    // etl-2's agent goes away; a change that gives every client new names must wait for it.
    assert_eq!(fleet.stop_agent("etl-2"), Some(0));
    let gen2 = fleet
        .write_spec(
            "gen2.toml",
            &FleetSpec {
                hostnames: true,
                ..FleetSpec::default()
            },
        )
        .unwrap();
    apply(&fleet, &gen2);
    std::thread::sleep(Duration::from_secs(3));
    let status = fleet.status_json().unwrap();
    assert_eq!(status["rollout"]["state"], "running", "{status:#}");
    assert_eq!(
        status["rollout"]["current_step"], 0,
        "still the expand step: {status:#}"
    );
    let etl2 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "etl-2")
        .unwrap();
    assert_eq!(etl2["online"], false, "shown offline: {status:#}");
    let table = fleet.ctl(&["status"]).unwrap().stdout;
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("etl-2") && line.contains("OFFLINE")),
        "{table}"
    );
    assert!(
        table.contains("waiting for etl-2 (agent OFFLINE)"),
        "status says what the step waits for: {table}"
    );
    assert!(
        fleet
            .brokers
            .iter()
            .all(|b| !b.properties().contains("fleet-14:")),
        "no broker advertises the new names while a client lacks them"
    );

    // An operator pause holds the rollout even when etl-2 comes back and converges its step.
    let paused = fleet.ctl(&["rollout", "pause"]).unwrap();
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert!(
        paused
            .stdout
            .contains("at operator: paused by the operator"),
        "{}",
        paused.stdout
    );
    fleet.restart_agent("etl-2").unwrap();
    fleet.wait_until_online(Duration::from_secs(20)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !fleet
        .client_hosts("etl-2")
        .contains("emr-worker-1.fleet-14")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "etl-2 got its released step"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let status = fleet.status_json().unwrap();
    assert_eq!(status["rollout"]["state"], "paused", "{status:#}");
    assert!(
        fleet
            .brokers
            .iter()
            .all(|b| !b.properties().contains("fleet-14:")),
        "nothing more is released while paused"
    );

    // Resume: the rollout goes on to the end.
    assert_eq!(fleet.ctl(&["rollout", "resume"]).unwrap().code, 0);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    assert!(
        fleet
            .brokers
            .iter()
            .all(|b| b.properties().contains("fleet-14:")),
        "the brokers advertise the names after the resume"
    );
    assert!(fleet
        .client_hosts("etl-2")
        .contains("emr-worker-1.fleet-14"));
}

#[test]
fn the_coordinator_stops_within_5_s_on_sigterm_while_agents_are_connected() {
    let (mut fleet, _) = fleet_on_generation_1(15, 2, &[("etl-1", "private")], None);
    let mut coordinator = fleet.coordinator.take().expect("running");
    let started = std::time::Instant::now();
    let code = coordinator.terminate(Duration::from_secs(5));
    assert_eq!(
        code,
        Some(0),
        "the coordinator did not end cleanly within 5 s of SIGTERM (it was killed after {:?}); log:\n{}",
        started.elapsed(),
        coordinator.log()
    );
    // The store was flushed and closed: a new coordinator opens it and knows generation 1.
    fleet.start_coordinator().unwrap();
    fleet.wait_until_online(Duration::from_secs(30)).unwrap();
    let history = fleet.ctl(&["history", "--output", "json"]).unwrap();
    assert!(
        history.stdout.contains("\"generation\": 1"),
        "{}",
        history.stdout
    );
}

/// Every managed file of the fleet (hosts files, server.properties) with its bytes.
fn managed_files(fleet: &Fleet) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut paths: Vec<std::path::PathBuf> = fleet
        .brokers
        .iter()
        .flat_map(|b| [b.dir.join("etc/hosts"), b.properties_path()])
        .collect();
    paths.extend(fleet.clients.iter().map(|(_, dir)| dir.join("etc/hosts")));
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// The node `node` of a plan's JSON.
fn plan_node<'a>(plan: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .unwrap_or_else(|| panic!("{node} is not in the plan: {plan:#}"))
}

fn plan_json(fleet: &Fleet, spec: &std::path::Path) -> serde_json::Value {
    let run = fleet
        .ctl(&[
            "--output",
            "json",
            "plan",
            "--force",
            spec.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn the_plan_shows_the_hosts_real_files_and_a_dropped_node_loses_its_block() {
    let mut fleet = Fleet::new(
        24,
        2,
        &[
            ("etl-1", "private"),
            ("etl-2", "private"),
            ("etl-3", "private"),
        ],
    )
    .unwrap();
    fleet.start_coordinator().unwrap();
    fleet.start_agents(None).unwrap();

    // Hosts as an operator finds them before kreach ever applied anything: an unmanaged line in a
    // client's hosts file, a hand-set listener in a broker's server.properties.
    let etl1_hosts = fleet.clients[0].1.join("etc/hosts");
    let hand_hosts = "127.0.0.1\tlocalhost\n10.9.9.9\thand-made.example  # added by hand\n";
    std::fs::write(&etl1_hosts, hand_hosts).unwrap();
    let (broker_ip, broker_properties) = (
        fleet.brokers[0].ip.clone(),
        fleet.brokers[0].properties_path(),
    );
    // Kafka configured by hand on its default listener, PLAINTEXT on 9092, beside the controller.
    let original_properties = fleet.brokers[0].properties();
    let hand_properties = original_properties
        .replace(
            &format!("INTERNAL://{broker_ip}:{}", fleet.port),
            "PLAINTEXT://:9092",
        )
        .replace("INTERNAL:PLAINTEXT", "PLAINTEXT:PLAINTEXT")
        .replace(
            "inter.broker.listener.name=INTERNAL",
            "inter.broker.listener.name=PLAINTEXT",
        );
    let hand_listeners = hand_properties
        .lines()
        .find(|line| line.starts_with("listeners="))
        .unwrap()
        .to_string();
    assert!(hand_listeners.starts_with("listeners=PLAINTEXT://:9092,CONTROLLER://"));
    std::fs::write(&broker_properties, &hand_properties).unwrap();
    // etl-3's agent is offline.
    assert_eq!(fleet.stop_agent("etl-3"), Some(0));

    // Brokers advertise hostnames, so every host gets kreach's hosts block.
    let options = FleetSpec {
        hostnames: true,
        ..FleetSpec::default()
    };
    let gen1 = fleet.write_spec("gen1.toml", &options).unwrap();
    let before = managed_files(&fleet);
    let since = now_ns();
    let text = fleet
        .ctl(&["plan", "--force", gen1.to_str().unwrap()])
        .unwrap();
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    eprintln!("plan of generation 1:\n{}", text.stdout);
    let plan = plan_json(&fleet, &gen1);

    // The broker: the real listeners line, as it is in the file, is the one replaced.
    let worker1 = plan_node(&plan, "emr-worker-1");
    assert_eq!(worker1["source"], "host", "{worker1:#}");
    let diff = worker1["diff"].as_str().unwrap();
    assert!(
        diff.lines().any(|l| l == format!("-{hand_listeners}"))
            && diff
                .lines()
                .any(|l| l.starts_with("+listeners=PLAINTEXT://:9092,")
                    && l.contains(&format!("INTERNAL://{}:{}", broker_ip, fleet.port))),
        "{diff}"
    );
    assert_eq!(worker1["restart"], true);
    assert!(
        text.stdout.contains(&format!("-{hand_listeners}\n")),
        "{}",
        text.stdout
    );
    // emr-worker-2's `listeners` line already is what the spec renders: on its host only the
    // advertised listener changes, though against the (empty) previous generation every line
    // looks new.
    let worker2 = plan_node(&plan, "emr-worker-2");
    assert_eq!(worker2["source"], "host", "{worker2:#}");
    let diff = worker2["diff"].as_str().unwrap();
    let ip2 = &fleet.brokers[1].ip;
    assert!(
        !diff
            .lines()
            .any(|l| l.starts_with("+listeners=") || l.starts_with("-listeners="))
            && diff
                .lines()
                .any(|l| l == format!("-advertised.listeners=INTERNAL://{ip2}:{}", fleet.port))
            && diff.lines().any(|l| l
                == format!(
                    "+advertised.listeners=INTERNAL://emr-worker-2.fleet-24:{}",
                    fleet.port
                )),
        "{diff}"
    );
    assert!(
        worker2["generation_diff"]
            .as_str()
            .unwrap()
            .contains("\n+listeners="),
        "{worker2:#}"
    );
    // The client: its unmanaged line is context that stays; kreach's block is added below it.
    let etl1 = plan_node(&plan, "etl-1");
    assert_eq!(etl1["source"], "host", "{etl1:#}");
    let diff = etl1["diff"].as_str().unwrap();
    assert!(
        diff.lines()
            .any(|l| l == " 10.9.9.9\thand-made.example  # added by hand")
            && diff
                .lines()
                .any(|l| l.starts_with('+') && l.contains("emr-worker-1.fleet-24")),
        "{diff}"
    );
    // The offline agent: marked, with the generation diff labelled as not the host's.
    let etl3 = plan_node(&plan, "etl-3");
    assert_eq!(etl3["source"], "generation", "{etl3:#}");
    assert!(
        etl3["not_checked"]
            .as_str()
            .unwrap()
            .starts_with("its agent is offline"),
        "{etl3:#}"
    );
    assert!(
        text.stdout.contains(
            "~ etl-3 (client, private view)\n  NOT CHECKED against the host (its agent is offline"
        ) && text
            .stdout
            .contains("the diff below is generation 0 → 1, not the host's files"),
        "{}",
        text.stdout
    );
    // Planning changed nothing: same bytes, no restart, no backup, no applied state.
    assert_eq!(managed_files(&fleet), before, "plan changed a host's file");
    assert!(restarts_since(&fleet, since).is_empty());
    for dir in fleet
        .brokers
        .iter()
        .map(|b| b.dir.clone())
        .chain(fleet.clients.iter().map(|(_, dir)| dir.clone()))
    {
        for name in ["backups", "applied.json", "audit.jsonl"] {
            assert!(
                !dir.join("state").join(name).exists(),
                "{} appeared after a plan",
                dir.join("state").join(name).display()
            );
        }
    }

    // Back to the generated listeners before applying: a broker restarted on the hand-set
    // `PLAINTEXT://:9092` would listen on every interface of this machine.
    std::fs::write(&broker_properties, &original_properties).unwrap();
    fleet.restart_agent("etl-3").unwrap();
    fleet.wait_until_online(Duration::from_secs(20)).unwrap();
    apply(&fleet, &gen1);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    assert!(fleet.client_hosts("etl-1").starts_with(hand_hosts));
    for node in ["etl-2", "etl-3"] {
        assert!(fleet
            .client_hosts(node)
            .contains("# BEGIN kreach fleet-24 "));
    }

    // Generation 2 drops etl-2 (online) and etl-3 (offline).
    assert_eq!(fleet.stop_agent("etl-3"), Some(0));
    let mut gen2_text = fleet.spec(&options);
    for node in ["etl-2", "etl-3"] {
        let section = format!("\n[[client]]\nnode = \"{node}\"\nview = \"private\"\n");
        assert!(gen2_text.contains(&section));
        gen2_text = gen2_text.replace(&section, "");
    }
    let gen2 = fleet.dir.path().join("gen2.toml");
    std::fs::write(&gen2, gen2_text).unwrap();
    let text = fleet
        .ctl(&["plan", "--force", gen2.to_str().unwrap()])
        .unwrap();
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    eprintln!("plan of generation 2:\n{}", text.stdout);
    let plan = plan_json(&fleet, &gen2);
    assert_eq!(
        plan["dropped"],
        serde_json::json!(["etl-2", "etl-3"]),
        "{plan:#}"
    );
    assert!(
        text.stdout.contains("- etl-2 (client, private view): removed from the spec: its kreach hosts block is removed in the contract phase\n"),
        "{}",
        text.stdout
    );
    let etl2 = plan_node(&plan, "etl-2");
    assert_eq!(etl2["source"], "host", "{etl2:#}");
    assert!(
        etl2["diff"]
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("-# BEGIN kreach fleet-24 ")),
        "{etl2:#}"
    );
    let etl3 = plan_node(&plan, "etl-3");
    assert_eq!(
        (&etl3["dropped"], &etl3["source"]),
        (&serde_json::json!(true), &serde_json::json!("generation")),
        "{etl3:#}"
    );
    assert!(
        text.stdout.contains("note: etl-3 is no longer in the spec and its agent is offline: the contract step does not wait for it"),
        "{}",
        text.stdout
    );

    // apply --wait ends: etl-2's block is gone, etl-3 is skipped, not waited for.
    let started = std::time::Instant::now();
    let run = fleet
        .ctl(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen2.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(fleet.client_hosts("etl-2"), "127.0.0.1\tlocalhost\n");
    assert!(fleet.client_hosts("etl-3").contains("# BEGIN kreach"));
    let status = fleet.status_json().unwrap();
    let skipped = status["rollout"]["skipped"].as_array().unwrap();
    assert!(
        skipped.len() == 1
            && skipped[0]
                .as_str()
                .unwrap()
                .starts_with("etl-3: dropped from the spec and its agent is offline"),
        "{status:#}"
    );
    let table = fleet.ctl(&["status"]).unwrap().stdout;
    assert!(table.contains("skipped etl-3: "), "{table}");

    // When etl-3's agent comes back, it gets its release and removes its block.
    fleet.restart_agent("etl-3").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fleet.client_hosts("etl-3") != "127.0.0.1\tlocalhost\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "etl-3 kept its block: {}",
            fleet.client_hosts("etl-3")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing else moved: etl-1 keeps its own line and its block.
    let etl1 = fleet.client_hosts("etl-1");
    assert!(
        etl1.starts_with(hand_hosts) && etl1.contains("# BEGIN kreach"),
        "{etl1}"
    );
}

#[test]
fn a_node_whose_agent_never_connected_is_refused_and_with_force_pauses_after_agent_timeout() {
    let (fleet, _gen1) = fleet_on_generation_1(16, 2, &[("etl-1", "private")], Some(2));
    // The same cluster, plus a client nobody installed an agent on, and a short agent_timeout.
    let text = fleet
        .spec(&FleetSpec::default())
        .replace("[rollout]\n", "[rollout]\nagent_timeout = \"2s\"\n")
        + "\n[[client]]\nnode = \"office-laptop\"\nview = \"private\"\n";
    let spec = fleet.dir.path().join("with-laptop.toml");
    std::fs::write(&spec, text).unwrap();
    let spec = spec.to_str().unwrap();
    let never = "client \"office-laptop\": its agent has never connected to this coordinator";

    // plan and apply name it and refuse (exit 1), and nothing is applied.
    for args in [&["plan", spec][..], &["apply", "--yes", spec][..]] {
        let run = fleet.ctl(args).unwrap();
        assert_eq!(run.code, 1, "{args:?}:\n{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains(never) || run.stderr.contains(never),
            "{args:?} names the node:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    let status = fleet.status_json().unwrap();
    assert_eq!(status["rollout"]["generation"], 1, "{status:#}");

    // With --force the rollout starts, and the step that waits for the laptop pauses after
    // agent_timeout naming it, instead of waiting without end.
    apply(&fleet, std::path::Path::new(spec));
    let status = fleet
        .wait_for_rollout("paused", Duration::from_secs(30))
        .unwrap();
    assert_eq!(status["rollout"]["generation"], 2, "{status:#}");
    assert_eq!(
        status["rollout"]["paused_node"], "office-laptop",
        "{status:#}"
    );
    assert_eq!(
        status["rollout"]["paused_reason"], "agent office-laptop offline for 2s",
        "{status:#}"
    );
    // abort behaves as for any pause.
    let aborted = fleet.ctl(&["rollout", "abort"]).unwrap();
    assert_eq!(aborted.code, 0, "{}", aborted.stderr);
    fleet
        .wait_for_rollout("aborted", Duration::from_secs(10))
        .unwrap();
}

#[test]
fn a_hosts_line_shadowing_kreachs_entries_shows_in_status_and_fails_check() {
    // Hostname mode: clients' hosts files carry the brokers' names.
    let mut fleet = Fleet::new(17, 2, &[("etl-1", "private")]).unwrap();
    fleet.start_coordinator().unwrap();
    fleet.start_agents(Some(2)).unwrap();
    let options = FleetSpec {
        hostnames: true,
        ..FleetSpec::default()
    };
    apply(&fleet, &fleet.write_spec("gen1.toml", &options).unwrap());
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    assert!(fleet
        .client_hosts("etl-1")
        .contains("emr-worker-1.fleet-17"));
    let (_, dir) = fleet.clients.iter().find(|(n, _)| n == "etl-1").unwrap();
    let hosts = dir.join("etc/hosts");
    // A hand edit above kreach's block: the resolver takes the first match, so this line wins.
    let text = std::fs::read_to_string(&hosts).unwrap();
    std::fs::write(&hosts, format!("10.9.9.9\temr-worker-1.fleet-17\n{text}")).unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = fleet.status_json().unwrap();
        let node = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "etl-1")
            .cloned()
            .unwrap();
        if node["host"]["conflicts"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
        {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the conflict never reached the status: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let problems = status["host_problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{status:#}");
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .starts_with("etl-1: conflict: line 1 maps emr-worker-1.fleet-17 to 10.9.9.9"),
        "{status:#}"
    );
    let text = fleet.ctl(&["status"]).unwrap();
    assert!(
        text.stdout
            .contains("✗ etl-1: conflict: line 1 maps emr-worker-1.fleet-17 to 10.9.9.9"),
        "{}",
        text.stdout
    );
    let check = fleet.ctl(&["check"]).unwrap();
    assert_eq!(check.code, 4, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("1 host problem(s)"),
        "{}",
        check.stdout
    );

    // The line removed: the conflict is gone from status and from check. (Reachability itself
    // fails in this fleet: its clients' hosts files are sandbox files the resolver never reads.)
    std::fs::write(&hosts, text_without_first_line(&hosts)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = fleet.status_json().unwrap();
        if status["host_problems"]
            .as_array()
            .is_some_and(Vec::is_empty)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the conflict stays in the status after the line is gone: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let check = fleet.ctl(&["check"]).unwrap();
    assert!(
        check.stdout.contains(", 0 host problem(s)"),
        "{}",
        check.stdout
    );
}

fn text_without_first_line(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_once('\n')
        .map(|(_, rest)| rest.to_string())
        .unwrap()
}

#[test]
fn apply_wait_without_a_terminal_prints_one_line_per_event() {
    let (fleet, _gen1) = fleet_on_generation_1(
        18,
        3,
        &[("etl-1", "private"), ("etl-2", "private")],
        Some(2),
    );
    let gen2 = fleet
        .write_spec(
            "gen2.toml",
            &FleetSpec {
                external: true,
                ..FleetSpec::default()
            },
        )
        .unwrap();
    // Stdout is a pipe here, as in a CI log or `| tee`.
    let run = fleet
        .ctl(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen2.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // The plan it reviewed comes first; what follows "applied generation 2" is the progress.
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("applied generation 2"))
        .skip(1)
        .collect();
    assert!(
        !lines.is_empty(),
        "no progress after the apply:\n{}",
        run.stdout
    );
    // No table redrawn: the node table's header never appears, and no line repeats the one before
    // it (an unchanged state is not an event).
    assert!(
        !lines.iter().any(|line| line.starts_with("NODE ")),
        "{}",
        run.stdout
    );
    for pair in lines.windows(2) {
        assert_ne!(pair[0], pair[1], "a line repeated:\n{}", run.stdout);
    }
    // Each broker's node line changes a bounded number of times (released, restarting, verified,
    // converged ...), and the rollout's headline once per step and at the end.
    for broker in ["emr-worker-1", "emr-worker-2", "emr-worker-3"] {
        let mentions = lines
            .iter()
            .filter(|line| line.trim_start().starts_with(broker))
            .count();
        assert!(
            (1..=6).contains(&mentions),
            "{broker} on {mentions} lines:\n{}",
            run.stdout
        );
    }
    assert!(
        lines.len() <= 30,
        "{} lines for 3 brokers and 2 clients:\n{}",
        lines.len(),
        run.stdout
    );
    assert!(
        lines.iter().any(|line| line.contains("completed")),
        "{}",
        run.stdout
    );
}

/// A TLS handshake with a real TLS client (Python's ssl module, OpenSSL underneath) against
/// `addr`, trusting only `ca` and verifying `server_name` as a client connecting by that name or
/// address would. Returns the peer certificate's serial (hex) or the client's error.
fn tls_handshake(addr: &str, ca: &std::path::Path, server_name: &str) -> Result<String, String> {
    let script = r#"
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
context = ssl.create_default_context(cafile=sys.argv[2])
try:
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=sys.argv[3]) as tls:
            print(tls.getpeercert()["serialNumber"])
except Exception as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, addr, &ca.display().to_string(), server_name])
        .output()
        .map_err(|error| format!("python3: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim()
            .to_lowercase())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

#[test]
fn secure_public_access_gives_each_broker_a_certificate_for_its_own_key_that_clients_verify() {
    let (fleet, _gen1) = fleet_on_generation_1(19, 3, &[("etl-1", "private")], Some(2));
    let secure = FleetSpec {
        external: true,
        external_protocol: "SSL",
        ..FleetSpec::default()
    };
    let gen2 = fleet.write_spec("gen2.toml", &secure).unwrap();
    let plan = fleet
        .ctl(&["plan", "--force", gen2.to_str().unwrap()])
        .unwrap();
    assert!(
        plan.stdout.contains(
            "external.keystore.pem (created): key store for EXTERNAL: certificate serial"
        ) && plan
            .stdout
            .contains("for emr-worker-1.fleet-19, emr-worker-1, 198.19.19.1, valid until"),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("PRIVATE KEY"), "{}", plan.stdout);
    let run = fleet
        .ctl(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen2.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    let mut serials = Vec::new();
    for broker in &fleet.brokers {
        let tls_dir = broker.dir.join("kafka-tls");
        let keystore = tls_dir.join("external.keystore.pem");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keystore).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", keystore.display());
        let key = std::fs::read_to_string(broker.state_dir().join("kafka-tls.key")).unwrap();
        assert!(std::fs::read_to_string(&keystore)
            .unwrap()
            .starts_with(&key));
        assert!(
            broker.properties().contains(&format!(
                "listener.name.external.ssl.keystore.location={}",
                keystore.display()
            )),
            "{}",
            broker.properties()
        );
        // The broker serves the certificate on its EXTERNAL port; a client that trusts the
        // Kafka CA and connects by the public IP verifies it.
        let addr = format!("{}:{}", broker.ip, fleet.port + 1);
        let public_ip = format!("198.19.19.{}", broker.id);
        let ca = tls_dir.join("ca.pem");
        let serial = tls_handshake(&addr, &ca, &public_ip).unwrap_or_else(|error| {
            panic!("broker {} at {addr} as {public_ip}: {error}", broker.id)
        });
        serials.push(serial);
        // A name the certificate does not cover fails verification.
        let wrong = tls_handshake(&addr, &ca, "kafka.example").unwrap_err();
        assert!(
            wrong.contains("certificate verify failed") || wrong.contains("match"),
            "{wrong}"
        );
        // The key never shows up in the agent's log or audit trail.
        let log = fleet.agents[&broker.node].log();
        assert!(!log.contains("PRIVATE KEY"), "{log}");
        let audit = std::fs::read_to_string(broker.state_dir().join("audit.jsonl")).unwrap();
        assert!(audit.contains("Kafka key store") && !audit.contains("PRIVATE KEY"));
    }
    // Status lists every broker's certificate and its expiry; none needs attention yet.
    let status = fleet.ctl(&["status"]).unwrap().stdout;
    assert!(status.contains("TLS certificates"), "{status}");
    for broker in &fleet.brokers {
        assert!(
            status.contains(&format!("{} EXTERNAL: serial ", broker.node))
                && status.contains(&format!("198.19.19.{}", broker.id)),
            "{status}"
        );
    }
    assert!(
        !status.contains("due for renewal") && !status.contains("expired"),
        "{status}"
    );
    // What a Kafka client on etl-1 (private view, PLAINTEXT) is told to use.
    let config = fleet
        .ctl(&["client-config", "etl-1", "--output", "json"])
        .unwrap();
    assert_eq!(config.code, 0, "{}", config.stderr);
    let config: serde_json::Value = serde_json::from_str(&config.stdout).unwrap();
    assert_eq!(config["security.protocol"], "plaintext", "{config}");
    let servers = config["bootstrap.servers"].as_str().unwrap();
    for broker in &fleet.brokers {
        assert!(
            servers.contains(&format!("{}:{}", broker.ip, fleet.port)),
            "{servers}"
        );
    }
    // Each broker has a certificate of its own.
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 3, "{serials:?}");

    // The same spec again changes nothing: the certificates are reused.
    let keystores: Vec<String> = fleet
        .brokers
        .iter()
        .map(|b| std::fs::read_to_string(b.dir.join("kafka-tls/external.keystore.pem")).unwrap())
        .collect();
    let restarts: usize = fleet.brokers.iter().map(|b| b.restarts().len()).sum();
    let again = fleet
        .ctl(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen2.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    for (broker, before) in fleet.brokers.iter().zip(&keystores) {
        let now =
            std::fs::read_to_string(broker.dir.join("kafka-tls/external.keystore.pem")).unwrap();
        assert_eq!(&now, before, "broker {}'s key store changed", broker.id);
    }
    assert_eq!(
        fleet
            .brokers
            .iter()
            .map(|b| b.restarts().len())
            .sum::<usize>(),
        restarts,
        "nothing restarted"
    );
}

/// A TLS client that keeps connecting to every `(addr, server name)` until `stop` exists (at most
/// 2,000 rounds and 180 s), verifying each broker's certificate against `ca`; its report is one
/// line per target: `addr ok=N failed=M serials=a,b` (serials in the order first seen).
const TLS_CLIENT_LOOP: &str = r#"
import os, socket, ssl, sys, time
ca, stop, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
context = ssl.create_default_context(cafile=ca)
seen = {t: {"ok": 0, "failed": 0, "serials": [], "errors": []} for t in targets}
deadline = time.monotonic() + 180
for _ in range(2000):
    if os.path.exists(stop) or time.monotonic() > deadline:
        break
    for target in targets:
        addr, name = target.split("@")
        host, port = addr.rsplit(":", 1)
        entry = seen[target]
        try:
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=name) as tls:
                    serial = tls.getpeercert()["serialNumber"].lower()
            entry["ok"] += 1
            if serial not in entry["serials"]:
                entry["serials"].append(serial)
        except Exception as error:
            entry["failed"] += 1
            entry["errors"].append(f"{type(error).__name__}: {error}")
    time.sleep(0.05)
for target, entry in seen.items():
    print(f"{target} ok={entry['ok']} failed={entry['failed']} serials={','.join(entry['serials'])} errors={entry['errors'][:3]}")
"#;

/// Start [`TLS_CLIENT_LOOP`] against `targets` (`addr@server-name`), trusting `ca`, until `stop`
/// exists.
fn spawn_tls_client(
    ca: &std::path::Path,
    stop: &std::path::Path,
    targets: &[String],
) -> std::process::Child {
    std::process::Command::new("python3")
        .args([
            "-c",
            TLS_CLIENT_LOOP,
            &ca.display().to_string(),
            &stop.display().to_string(),
        ])
        .args(targets)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the TLS client loop")
}

#[test]
fn certificates_due_for_renewal_are_renewed_and_reloaded_live_while_a_client_keeps_connecting() {
    // The Kafka-speaking probe: it asks the broker to reload and checks what it serves.
    let (fleet, _gen1) =
        fleet_probing_on_generation_1(20, 3, &[("etl-1", "private")], Some(2), "kafka");
    // Due 25 s after issue: long enough for the rollout that enables TLS to complete first.
    let secure = FleetSpec {
        external: true,
        external_protocol: "SSL",
        tls: Some("lifetime = \"1h\"\nrenew_before = \"3575s\""),
        ..FleetSpec::default()
    };
    let gen2 = fleet.write_spec("gen2.toml", &secure).unwrap();
    let run = fleet
        .ctl(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen2.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let generation = |fleet: &Fleet| {
        fleet.status_json().unwrap()["rollout"]["generation"]
            .as_u64()
            .unwrap()
    };
    let enabled = generation(&fleet);
    let restarts_before: usize = fleet.brokers.iter().map(|b| b.restarts().len()).sum();
    let ca = fleet.brokers[0].dir.join("kafka-tls/ca.pem");
    let targets: Vec<String> = fleet
        .brokers
        .iter()
        .map(|b| format!("{}:{}@198.19.20.{}", b.ip, fleet.port + 1, b.id))
        .collect();
    let stop = fleet.brokers[0].dir.join("client-loop.stop");
    let client = spawn_tls_client(&ca, &stop, &targets);

    // Nobody applies anything: the coordinator renews by itself once the certificates are due.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let renewed = loop {
        let status = fleet.status_json().unwrap();
        let now = status["rollout"]["generation"].as_u64().unwrap();
        if now > enabled && status["rollout"]["state"] == "completed" {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal completed: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").unwrap();
    let report = client.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&report.stdout).to_string();
    eprintln!("TLS client during the change:\n{report}");

    let steps: Vec<&str> = renewed["rollout"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|step| step["kind"].as_str())
        .collect();
    assert!(
        steps
            .iter()
            .filter(|kind| kind.starts_with("reload certificates"))
            .count()
            == 3,
        "{steps:?}"
    );
    let coordinator = fleet.coordinator.as_ref().unwrap().log();
    assert!(
        coordinator.contains("renewing Kafka certificates due for renewal"),
        "{coordinator}"
    );
    // Reloaded, not restarted: no broker restarted, each now serves another certificate, and
    // the client saw every broker switch while it kept connecting, without one failed handshake.
    let restarts_after: usize = fleet.brokers.iter().map(|b| b.restarts().len()).sum();
    assert_eq!(
        restarts_after, restarts_before,
        "a renewal restarted a broker"
    );
    for (broker, target) in fleet.brokers.iter().zip(&targets) {
        let line = report
            .lines()
            .find(|line| line.starts_with(target.as_str()))
            .unwrap_or_else(|| panic!("{report}"));
        assert!(line.contains(" failed=0 "), "{line}");
        let serials = line
            .split(" serials=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(
            serials.split(',').count() >= 2,
            "broker {} never switched: {line}",
            broker.id
        );
        let log = fleet.agents[&broker.node].log();
        assert!(
            log.contains("reloading key stores without a restart"),
            "{log}"
        );
        let node = renewed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == broker.node.as_str())
            .unwrap();
        assert!(
            node["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|check| check["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("serves the new certificate")),
            "{node:#}"
        );
    }
}

#[test]
fn an_elastic_ip_move_in_hostname_mode_changes_public_clients_entries_and_reloads_the_certificate_without_a_restart(
) {
    let mut fleet = Fleet::new(21, 3, &[("laptop-1", "public")]).unwrap();
    fleet.probe = "kafka";
    // Kafka 3.7+ (KIP-978): a reloaded certificate may drop the old elastic IP's SAN.
    for broker in &fleet.brokers {
        let mut text = broker.properties();
        text.push_str("ssl.allow.san.changes=true\n");
        std::fs::write(broker.properties_path(), text).unwrap();
    }
    fleet.start_coordinator().unwrap();
    fleet.start_agents(Some(2)).unwrap();
    let secure = FleetSpec {
        hostnames: true,
        external: true,
        external_protocol: "SSL",
        ..FleetSpec::default()
    };
    let gen1 = fleet.write_spec("gen1.toml", &secure).unwrap();
    let run = fleet
        .ctl(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen1.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let hostname = |broker: &kreach_tests::fleet::Broker| format!("{}.fleet-21", broker.node);
    let hosts = fleet.client_hosts("laptop-1");
    for broker in &fleet.brokers {
        assert!(
            hosts.contains(&format!("198.19.21.{}\t{}", broker.id, hostname(broker))),
            "{hosts}"
        );
    }
    let restarts_before: usize = fleet.brokers.iter().map(|b| b.restarts().len()).sum();
    let ca = fleet.brokers[0].dir.join("kafka-tls/ca.pem");
    // A public client keeps connecting by each broker's name (its address: the NAT's target).
    let targets: Vec<String> = fleet
        .brokers
        .iter()
        .map(|b| format!("{}:{}@{}", b.ip, fleet.port + 1, hostname(b)))
        .collect();
    let stop = fleet.brokers[0].dir.join("client-loop.stop");
    let client = spawn_tls_client(&ca, &stop, &targets);

    // Every elastic IP moves.
    let moved = FleetSpec {
        public_ip_offset: 100,
        ..secure
    };
    let gen2 = fleet.write_spec("gen2.toml", &moved).unwrap();
    let plan = fleet
        .ctl(&["plan", "--force", gen2.to_str().unwrap()])
        .unwrap();
    assert!(
        plan.stdout.contains("reload certificates") && !plan.stdout.contains("restart brokers"),
        "{}",
        plan.stdout
    );
    let run = fleet
        .ctl(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen2.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, "").unwrap();
    let report = client.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&report.stdout).to_string();
    eprintln!("TLS client during the change:\n{report}");

    let restarts_after: usize = fleet.brokers.iter().map(|b| b.restarts().len()).sum();
    assert_eq!(
        restarts_after, restarts_before,
        "the move restarted a broker"
    );
    let hosts = fleet.client_hosts("laptop-1");
    for (broker, target) in fleet.brokers.iter().zip(&targets) {
        let new_ip = format!("198.19.21.{}", broker.id + 100);
        assert!(
            hosts.contains(&format!("{new_ip}\t{}", hostname(broker)))
                && !hosts.contains(&format!("198.19.21.{}\t", broker.id)),
            "{hosts}"
        );
        let line = report
            .lines()
            .find(|line| line.starts_with(target.as_str()))
            .unwrap_or_else(|| panic!("{report}"));
        assert!(line.contains(" failed=0 "), "{line}");
        // The served certificate covers the new address, no longer the old one.
        let addr = format!("{}:{}", broker.ip, fleet.port + 1);
        tls_handshake(&addr, &ca, &new_ip).unwrap_or_else(|error| panic!("{new_ip}: {error}"));
        assert!(tls_handshake(&addr, &ca, &format!("198.19.21.{}", broker.id)).is_err());
        let log = fleet.agents[&broker.node].log();
        assert!(
            log.contains("reloading key stores without a restart"),
            "{log}"
        );
    }
}

/// Set broker `id`'s dynamic config `key` = `value` at `addr` with IncrementalAlterConfigs v0, as
/// `kafka-configs.sh --alter --entity-type brokers --entity-name ID` does.
fn set_dynamic_config(addr: &str, id: u32, key: &str, value: &str) {
    let script = r#"
import socket, struct, sys
addr, broker, key, value = sys.argv[1:]
host, port = addr.rsplit(":", 1)
def s(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data
body = (struct.pack(">hhi", 44, 0, 1) + s("test") + struct.pack(">i", 1) + struct.pack(">b", 4) + s(broker)
        + struct.pack(">i", 1) + s(key) + struct.pack(">b", 0) + s(value) + struct.pack(">b", 0))
with socket.create_connection((host, int(port)), timeout=5) as conn:
    conn.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", conn.recv(4))[0]
    answer = b""
    while len(answer) < size:
        answer += conn.recv(size - len(answer))
    error = struct.unpack(">h", answer[12:14])[0]
    sys.exit(error)
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script, addr, &id.to_string(), key, value])
        .status()
        .unwrap();
    assert!(status.success(), "IncrementalAlterConfigs failed: {status}");
}

#[test]
fn a_dynamic_override_that_hides_kreachs_edit_shows_in_status_fails_check_and_warns_in_plan() {
    let (fleet, gen1) =
        fleet_probing_on_generation_1(22, 2, &[("etl-1", "private")], Some(2), "kafka");
    let broker = &fleet.brokers[0];
    set_dynamic_config(
        &format!("{}:{}", broker.ip, fleet.port),
        broker.id,
        "advertised.listeners",
        "INTERNAL://stale-name:9092",
    );
    // The broker's agent finds it within a facts period (1 s here).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = fleet.ctl(&["status"]).unwrap().stdout;
        if status.contains("dynamic override") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.contains(&format!(
            "{}: dynamic override: advertised.listeners is set dynamically (DYNAMIC_BROKER_CONFIG: \"INTERNAL://stale-name:9092\")",
            broker.node
        )),
        "{status}"
    );
    let check = fleet.ctl(&["check"]).unwrap();
    assert_ne!(check.code, 0, "{}", check.stdout);
    assert!(
        check.stdout.contains("dynamic override"),
        "{}",
        check.stdout
    );
    let plan = fleet.ctl(&["plan", gen1.to_str().unwrap()]).unwrap();
    assert!(
        plan.stdout
            .contains("kreach's edits of that key would not take effect")
            || plan
                .stderr
                .contains("kreach's edits of that key would not take effect"),
        "{}{}",
        plan.stdout,
        plan.stderr
    );
    // Deleted on the broker's host, it leaves the status.
    let deleted = std::process::Command::new(kreach_tests::fleet::agent_binary())
        .arg("--config")
        .arg(broker.dir.join("agent.toml"))
        .args(["overrides", "--delete"])
        .output()
        .unwrap();
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = fleet.ctl(&["status"]).unwrap().stdout;
        if !status.contains("dynamic override") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PBKDF2-HMAC-SHA512 of `password` over the hex `salt`, hex: the salted password Kafka checks a
/// SCRAM-SHA-512 login against (RFC 5802), computed by Python's hashlib, not by kreach.
fn scram_sha512_salted(password: &str, salt_hex: &str, iterations: u64) -> String {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib, sys; print(hashlib.pbkdf2_hmac('sha512', sys.argv[1].encode(), bytes.fromhex(sys.argv[2]), int(sys.argv[3])).hex())",
            password,
            salt_hex,
            &iterations.to_string(),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn scram_users_are_salted_by_kreachctl_stored_without_the_password_and_kept_by_every_broker() {
    let (fleet, _gen1) =
        fleet_probing_on_generation_1(23, 2, &[("etl-1", "private")], Some(2), "kafka");
    let list = fleet.ctl(&["users", "list"]).unwrap();
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains("no SCRAM users"), "{}", list.stdout);

    // Kafka's bounds are checked before anything is stored.
    let refused = fleet
        .ctl_with_input(&["users", "add", "app", "--iterations", "100"], "pw\n")
        .unwrap();
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("iterations 100"),
        "{}",
        refused.stderr
    );

    let password = "correct horse battery staple";
    let added = fleet
        .ctl_with_input(&["users", "add", "app"], &format!("{password}\n"))
        .unwrap();
    assert_eq!(added.code, 0, "{}{}", added.stdout, added.stderr);
    assert!(
        added.stdout.contains("rolls the change out"),
        "{}",
        added.stdout
    );
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    // Every broker holds the credential in Kafka: the salted password of that password (checked
    // with an independent PBKDF2), never the password.
    for broker in &fleet.brokers {
        let held = std::fs::read_to_string(broker.state_dir().join("scram-users.json"))
            .unwrap_or_else(|_| panic!("broker {} keeps no SCRAM users", broker.id));
        let users: serde_json::Value = serde_json::from_str(&held).unwrap();
        let credential = &users["app"]["SCRAM-SHA-512"];
        assert_eq!(credential["iterations"], 8192, "{held}");
        let salt = credential["salt"].as_str().unwrap();
        assert_eq!(
            credential["salted_password"].as_str().unwrap(),
            scram_sha512_salted(password, salt, 8192),
            "{held}"
        );
        assert!(!held.contains(password));
    }
    let store = std::fs::read(fleet.dir.path().join("coordinator/coordinator.redb")).unwrap();
    assert!(
        !store
            .windows(password.len())
            .any(|window| window == password.as_bytes()),
        "the password is in the coordinator's store"
    );
    let list = fleet.ctl(&["users", "list"]).unwrap();
    assert!(
        list.stdout.contains("app\tSCRAM-SHA-512\t8192 iterations"),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains(password));

    let removed = fleet.ctl(&["users", "remove", "app"]).unwrap();
    assert_eq!(removed.code, 0, "{}{}", removed.stdout, removed.stderr);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    for broker in &fleet.brokers {
        let held = std::fs::read_to_string(broker.state_dir().join("scram-users.json")).unwrap();
        assert!(!held.contains("\"app\""), "{held}");
    }
    let missing = fleet.ctl(&["users", "remove", "app"]).unwrap();
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("no SCRAM user"),
        "{}",
        missing.stderr
    );
}

/// Where `promtool` (Debian's prometheus package) is, or the test fails saying how to install it.
fn promtool_or_fail(test: &str) -> Option<&'static str> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists());
    kreach_test_parts::require(
        kreach_test_parts::Tier::Root,
        test,
        promtool.is_none().then(|| {
            kreach_test_parts::Missing::new(
                "promtool and prometheus (Debian's prometheus package)",
                "apt-get install prometheus (or bash tests/install.sh)",
            )
        }),
    )
    .then_some(promtool)
    .flatten()
}

#[test]
fn the_coordinator_serves_prometheus_metrics_that_promtool_accepts() {
    let Some(promtool) = promtool_or_fail("coordinator_metrics") else {
        return;
    };
    let mut fleet = Fleet::new(24, 2, &[("etl-1", "private")]).unwrap();
    fleet.coordinator_extra = "[metrics]\nlisten = \"127.0.0.1:0\"\n".to_string();
    fleet.agent_extra = "[metrics]\nlisten = \"127.0.0.1:0\"\n".to_string();
    fleet.start_coordinator().unwrap();
    let address = metrics_address(fleet.coordinator.as_ref().unwrap());
    let before = http_get(&address, "/metrics");
    assert!(
        before.contains("kreach_rollout_info{cluster=\"\",phase=\"none\"} 1"),
        "{before}"
    );
    fleet.start_agents(None).unwrap();
    let gen1 = fleet
        .write_spec("gen1.toml", &FleetSpec::default())
        .unwrap();
    apply(&fleet, &gen1);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    // The status is republished at the next tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = http_get(&address, "/metrics");
        if metrics.contains("kreach_rollout_info{cluster=\"fleet-24\",phase=\"completed\"} 1") {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for line in [
        "kreach_rollout_generation{cluster=\"fleet-24\"} 1",
        "kreach_nodes{cluster=\"fleet-24\",state=\"converged\"} 3",
        "kreach_agents_connected{cluster=\"fleet-24\"} 3",
        "kreach_reachability_up{cluster=\"fleet-24\",client=\"etl-1\",broker_id=\"1\"}",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    // The client agent's own metrics: what it applied and what it reaches.
    let agent_address = |node: &str| metrics_address(&fleet.agents[node]);
    let client_metrics = http_get(&agent_address("etl-1"), "/metrics");
    for line in [
        "kreach_applied_generation 1",
        "kreach_applies_total{outcome=\"converged\"} ",
        "kreach_reachability_up{broker_id=\"1\"} 1",
        "kreach_reachability_up{broker_id=\"2\"} 1",
        "kreach_drift_repairs_total{file=\"hosts\",cause=\"changed\"} 0",
        "kreach_last_apply_duration_seconds ",
    ] {
        assert!(
            client_metrics.contains(line),
            "no {line:?} in\n{client_metrics}"
        );
    }
    let broker_metrics = http_get(&agent_address(&fleet.brokers[0].node), "/metrics");
    assert!(
        broker_metrics.contains("kreach_applies_total{outcome=\"converged\"} 1")
            && broker_metrics.contains("kreach_kafka_restarts_total "),
        "{broker_metrics}"
    );
    for text in [&metrics, &client_metrics, &broker_metrics] {
        promtool_check_metrics(promtool, text);
    }
}

/// `promtool check metrics` on `metrics`: the format parses and the names follow Prometheus'
/// conventions (no lint).
fn promtool_check_metrics(promtool: &str, metrics: &str) {
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
    }
    let checked = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{metrics}"
    );
}

/// Prometheus' answer to an instant `query` at `prometheus` (HTTP API): each series' labels and
/// value.
fn prometheus_query(prometheus: &str, query: &str) -> Vec<(serde_json::Value, f64)> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let body = http_get(prometheus, &format!("/api/v1/query?query={encoded}"));
    let answer: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    answer["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer:#}"))
        .iter()
        .map(|series| {
            let value = series["value"][1].as_str().unwrap().parse::<f64>().unwrap();
            (series["metric"].clone(), value)
        })
        .collect()
}

#[test]
fn prometheus_scrapes_a_rollout_from_running_to_completed_and_the_generations_converge() {
    if promtool_or_fail("prometheus_scrape").is_none() {
        return;
    }
    let prometheus_binary = "/usr/bin/prometheus";
    let mut fleet = Fleet::new(25, 2, &[("etl-1", "private")]).unwrap();
    fleet.coordinator_extra = "[metrics]\nlisten = \"127.0.0.1:0\"\n".to_string();
    fleet.agent_extra = "[metrics]\nlisten = \"127.0.0.1:0\"\n".to_string();
    fleet.start_coordinator().unwrap();
    fleet.start_agents(None).unwrap();
    let gen1 = fleet
        .write_spec("gen1.toml", &FleetSpec::default())
        .unwrap();
    apply(&fleet, &gen1);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();

    // Prometheus from Debian's package, scraping every second, with its own storage here.
    let coordinator = metrics_address(fleet.coordinator.as_ref().unwrap());
    let by_address: std::collections::BTreeMap<String, String> = fleet
        .agents
        .iter()
        .map(|(node, agent)| (metrics_address(agent), node.clone()))
        .collect();
    let agents: Vec<String> = by_address.keys().cloned().collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = fleet.brokers[0].dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: coordinator\n    static_configs:\n      - targets: [{coordinator:?}]\n  - job_name: agents\n    static_configs:\n      - targets: {agents:?}\n"
        ),
    )
    .unwrap();
    let prometheus = kreach_tests::fleet::Proc::spawn(
        std::process::Command::new(prometheus_binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
    )
    .unwrap();
    let web = format!("127.0.0.1:{port}");
    prometheus
        .wait_for_log(
            "Server is ready to receive web requests",
            Duration::from_secs(30),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while prometheus_query(&web, "up")
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .count()
        < 1 + agents.len()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "targets not up: {:?}",
            prometheus_query(&web, "up")
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A rolling change that takes a while: two brokers restart one at a time, settling between.
    let gen2 = fleet
        .write_spec(
            "gen2.toml",
            &FleetSpec {
                external: true,
                settle: "3s",
                ..FleetSpec::default()
            },
        )
        .unwrap();
    apply(&fleet, &gen2);
    let mut saw = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        // Phases of generation 2's rollout only (generation 1's completed one is there first).
        let of_generation_2 = prometheus_query(&web, "kreach_rollout_generation")
            .iter()
            .any(|(_, generation)| *generation == 2.0);
        for (metric, value) in prometheus_query(&web, "kreach_rollout_info == 1") {
            if metric["cluster"] == "fleet-25" && value == 1.0 && of_generation_2 {
                saw.insert(metric["phase"].as_str().unwrap().to_string());
            }
        }
        // Every broker applied generation 2; etl-1 (private view, private IPs) kept generation 1,
        // which gen2 did not change for it.
        let applied: std::collections::BTreeMap<String, f64> =
            prometheus_query(&web, "kreach_applied_generation")
                .into_iter()
                .filter_map(|(metric, value)| {
                    let node = by_address.get(metric["instance"].as_str()?)?;
                    Some((node.clone(), value))
                })
                .collect();
        let converged = fleet
            .brokers
            .iter()
            .all(|b| applied.get(&b.node) == Some(&2.0))
            && applied.get("etl-1") == Some(&1.0);
        if saw.contains("completed") && saw.len() > 1 && converged {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus saw the phases {saw:?}; generations: {:?}",
            prometheus_query(&web, "kreach_applied_generation")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        saw.contains("running") || saw.contains("settling"),
        "Prometheus never saw the rollout in progress: {saw:?}"
    );
    let generation = prometheus_query(&web, "kreach_rollout_generation");
    assert_eq!(generation[0].1, 2.0, "{generation:?}");
    eprintln!(
        "Prometheus saw the rollout phases {saw:?}; both brokers report generation 2, etl-1 (unchanged) 1"
    );
    // The store's writes (generations, rollout steps, agent records) are timed and scraped.
    let writes = prometheus_query(&web, "kreach_store_write_duration_seconds_count");
    assert!(
        writes.first().is_some_and(|(_, count)| *count > 0.0),
        "{writes:?}"
    );
    for query in [
        "kreach_applied_generation",
        "kreach_rollout_info == 1",
        "histogram_quantile(0.9, sum by (le) (kreach_store_write_duration_seconds_bucket))",
    ] {
        let result: Vec<String> = prometheus_query(&web, query)
            .iter()
            .map(|(metric, value)| format!("{metric} {value}"))
            .collect();
        eprintln!("query {query}:\n  {}", result.join("\n  "));
    }
    drop(prometheus);
}

/// `kreachctl diagnose CLIENT`: the client's agent takes the steps a person would take by hand
/// and kreachctl prints them as they come; a stopped broker is named at its broken step, and a
/// diagnosis that cannot be asked (a broker node, an unknown broker, an offline agent) says why.
#[test]
fn kreachctl_diagnose_walks_a_clients_steps_and_names_the_first_broken_one() {
    let mut fleet = Fleet::new(26, 2, &[("etl-1", "private")]).unwrap();
    fleet.probe = "kafka";
    // Names from the managed hosts file, as the sandbox's agents cannot change /etc/hosts.
    fleet.agent_extra = "[reachability]\nresolve = \"hosts_file\"\n".to_string();
    fleet.start_coordinator().unwrap();
    fleet.start_agents(None).unwrap();
    let spec = fleet
        .write_spec(
            "gen1.toml",
            &FleetSpec {
                hostnames: true,
                ..FleetSpec::default()
            },
        )
        .unwrap();
    apply(&fleet, &spec);
    fleet
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();

    let working = fleet.ctl(&["diagnose", "etl-1"]).unwrap();
    println!("kreachctl diagnose etl-1 (working):\n{}", working.stdout);
    assert_eq!(working.code, 0, "{}{}", working.stdout, working.stderr);
    let lines: Vec<&str> = working.stdout.lines().collect();
    assert!(
        lines[0].contains("from etl-1's vantage"),
        "{}",
        working.stdout
    );
    for id in [1, 2] {
        for step in [
            "resolve",
            "TCP connect",
            "ApiVersions",
            "Metadata",
            "advertised endpoint",
        ] {
            assert!(
                lines
                    .iter()
                    .any(|line| line.starts_with(&format!("broker {id} "))
                        && line.contains(step)
                        && line.contains(" ok ")),
                "no passing {step} for broker {id}:\n{}",
                working.stdout
            );
        }
    }
    assert!(
        working.stdout.contains("by the hosts file"),
        "{}",
        working.stdout
    );
    assert_eq!(lines.last(), Some(&"every step passed"));

    let json = fleet
        .ctl(&["--output", "json", "diagnose", "etl-1", "--broker", "1"])
        .unwrap();
    assert_eq!(json.code, 0, "{}{}", json.stdout, json.stderr);
    let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(document["ok"], true, "{document}");
    let steps = document["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5, "{document}");
    assert!(steps.iter().all(|step| step["broker_id"] == 1));

    // Broker 2's Kafka stops: its TCP connect is refused and named; broker 1 still passes.
    let stopped = std::process::Command::new("python3")
        .arg(kreach_tests::fleet::FAKE_KAFKA)
        .arg("stop")
        .arg(fleet.brokers[1].state_dir())
        .status()
        .unwrap();
    assert!(stopped.success());
    let broken = fleet.ctl(&["diagnose", "etl-1"]).unwrap();
    println!(
        "kreachctl diagnose etl-1 (broker 2 stopped):\n{}",
        broken.stdout
    );
    assert_eq!(broken.code, 4, "{}{}", broken.stdout, broken.stderr);
    let last = broken.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("broken: broker 2 at TCP connect:") && last.contains("refused"),
        "{}",
        broken.stdout
    );
    assert!(
        !broken.stdout.contains("broker 2   ApiVersions"),
        "steps after the broken one ran:\n{}",
        broken.stdout
    );
    assert!(broken
        .stdout
        .lines()
        .any(|line| line.starts_with("broker 1 ")
            && line.contains("advertised endpoint")
            && line.contains(" ok ")));

    for (args, why) in [
        (
            vec!["diagnose", "etl-1", "--broker", "9"],
            "broker 9 is not one this client's view reaches",
        ),
        (
            vec!["diagnose", "emr-worker-1"],
            "is not a client of the newest spec",
        ),
    ] {
        let refused = fleet.ctl(&args).unwrap();
        assert_eq!(
            refused.code, 1,
            "{args:?}: {}{}",
            refused.stdout, refused.stderr
        );
        assert!(refused.stderr.contains(why), "{args:?}: {}", refused.stderr);
    }
    fleet.stop_agent("etl-1");
    let offline = fleet.ctl(&["diagnose", "etl-1"]).unwrap();
    assert_eq!(offline.code, 1, "{}{}", offline.stdout, offline.stderr);
    assert!(
        offline.stderr.contains("etl-1's agent is not connected"),
        "{}",
        offline.stderr
    );
}

/// Issue 14 (client groups): agents a `[[client_group]]` selects by label enrol themselves during
/// a rollout, each getting the brokers' names in its hosts file shortly after it connects; the
/// matrix lists exactly the members whose agent runs; an agent the group does not select gets
/// nothing; the rollout still restarts one broker at a time.
#[test]
fn agents_a_client_group_selects_enrol_themselves_during_a_rollout_and_leave_the_matrix_when_they_stop(
) {
    let tasks: Vec<String> = (1..=20).map(|i| format!("task-{i:02}")).collect();
    let mut clients: Vec<(&str, &str)> = vec![("etl-1", "private"), ("driver-1", "private")];
    clients.extend(tasks.iter().map(|task| (task.as_str(), "private")));
    let mut fleet = Fleet::new(27, 3, &clients).unwrap();
    for task in &tasks {
        fleet.unlisted.insert(task.clone());
        fleet.idle.insert(task.clone());
        fleet.labels.insert(
            task.clone(),
            r#"cluster = "spark-prod", role = "task""#.into(),
        );
    }
    // Same cluster label, another role: the group does not select it.
    fleet.unlisted.insert("driver-1".into());
    let driver = r#"cluster = "spark-prod", role = "driver""#;
    fleet.labels.insert("driver-1".into(), driver.into());
    fleet.start_coordinator().unwrap();
    // A second Kafka cluster on the same coordinator, applied first (so agents no cluster
    // claims wait with it), with a client group of its own on other labels.
    let mut other = Fleet::with_broker_prefix(30, "kafka-b", 2, &[("flink-1", "private")]).unwrap();
    other.share_coordinator(&fleet);
    other.unlisted.insert("flink-1".into());
    other
        .labels
        .insert("flink-1".into(), r#"cluster = "flink-prod""#.into());
    other.start_agents(None).unwrap();
    let other_spec = other
        .write_spec(
            "b1.toml",
            &FleetSpec {
                hostnames: true,
                client_groups: Some(
                    "[[client_group]]\nname = \"flink\"\nlabels = { cluster = \"flink-prod\" }\n",
                ),
                ..FleetSpec::default()
            },
        )
        .unwrap();
    apply(&other, &other_spec);
    other.cluster = Some("fleet-30".into());
    other
        .wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    // Until fleet-27 is applied, its agents wait with fleet-30 (the only cluster).
    fleet.start_agents(Some(2)).unwrap();

    let gen1 = fleet
        .write_spec(
            "gen1.toml",
            &FleetSpec {
                hostnames: true,
                settle: "3s",
                client_groups: Some(
                    "[[client_group]]\nname = \"spark-task\"\nlabels = { cluster = \"spark-prod\", role = \"task\" }\n",
                ),
                ..FleetSpec::default()
            },
        )
        .unwrap();
    let other_hosts = other.client_hosts("flink-1");
    assert!(other_hosts.contains("kafka-b-1.fleet-30"), "{other_hosts}");
    let since = now_ns();
    apply(&fleet, &gen1);
    fleet.cluster = Some("fleet-27".into());
    assert_eq!(
        fleet.status_json().unwrap()["rollout"]["state"],
        "running",
        "the agents join during the rollout"
    );
    let names: Vec<String> = fleet
        .brokers
        .iter()
        .map(|broker| format!("{}.fleet-27", broker.node))
        .collect();
    let has_names = |hosts: &str| names.iter().all(|name| hosts.contains(name.as_str()));

    // One by one: each new agent's hosts file holds every broker's name within 2 s of its start
    // (connecting included).
    let mut took = Vec::new();
    let mut joined_while_running = 0;
    for task in &tasks {
        let state = fleet.status_json().unwrap()["rollout"]["state"].clone();
        if state == "running" || state == "settling" {
            joined_while_running += 1;
        }
        let started = std::time::Instant::now();
        fleet.restart_agent(task).unwrap();
        while !has_names(&fleet.client_hosts(task)) {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{task} has no broker names 2 s after its agent started:\n{}",
                fleet.client_hosts(task)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        took.push(started.elapsed().as_millis());
    }
    took.sort_unstable();
    eprintln!(
        "client group: names in place after agent start (ms): median {}, max {}; {joined_while_running} of 20 joined while the rollout ran",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(
        joined_while_running >= 1,
        "no agent joined during the rollout"
    );
    fleet
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();

    // Ten leave: the matrix lists exactly etl-1 and the ten still running.
    for task in &tasks[10..] {
        fleet.stop_agent(task);
    }
    let mut expected: Vec<String> = tasks[..10].to_vec();
    expected.push("etl-1".into());
    expected.sort();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = fleet.status_json().unwrap();
        let mut rows: Vec<String> = status["reachability"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["client"].as_str().unwrap().to_string())
            .collect();
        rows.sort();
        if rows == expected {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the matrix lists {rows:?}, not {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let role = |node: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .map(|n| n["role"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        role("task-01"),
        "client, private view (client group spark-task)"
    );
    // The driver is no client: no names, no row. No cluster claims it, so it waits with the
    // first cluster applied, whose status says it is not in the spec.
    assert!(!has_names(&fleet.client_hosts("driver-1")));
    assert_eq!(role("driver-1"), "");
    let unclaimed = other.status_json().unwrap();
    let driver_row = unclaimed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "driver-1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        driver_row["role"], "unknown (not in the spec)",
        "{unclaimed:#}"
    );

    // The rollout itself went on as ever: every broker restarted once, one at a time.
    let restarts = restarts_since(&fleet, since);
    let windows: Vec<Restart> = restarts.iter().map(|(_, r)| *r).collect();
    assert_eq!(restarts.len(), 3, "{restarts:?}");
    assert!(max_concurrent(&windows) <= 1, "{restarts:?}");
    // The other cluster was not touched: no restart, its group member's hosts file as it was,
    // its rollout still generation 1, its matrix its own member only.
    assert!(restarts_since(&other, since).is_empty());
    assert_eq!(other.client_hosts("flink-1"), other_hosts);
    let other_status = other.status_json().unwrap();
    assert_eq!(other_status["rollout"]["generation"], 1, "{other_status:#}");
    let rows: Vec<&str> = other_status["reachability"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["client"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["flink-1"], "{other_status:#}");
}

/// The block of `cluster` in a hosts file, marker lines included ("" when there is none).
fn hosts_block(hosts: &str, cluster: &str) -> String {
    let begin = format!("# BEGIN kreach {cluster} ");
    let end = format!("# END kreach {cluster}");
    let mut block = String::new();
    let mut inside = false;
    for line in hosts.lines() {
        inside |= line.starts_with(&begin);
        if inside {
            block.push_str(line);
            block.push('\n');
        }
        if line == end {
            inside = false;
        }
    }
    block
}

#[test]
fn a_client_of_two_clusters_holds_both_blocks_and_a_name_both_claim_is_a_conflict_in_both() {
    // fleet-31: two brokers and the client etl-x; fleet-32: two brokers (kafka-b-N), and etl-x
    // listed as its client too. One coordinator serves both.
    let mut a = Fleet::new(31, 2, &[("etl-x", "private")]).unwrap();
    let mut b = Fleet::with_broker_prefix(32, "kafka-b", 2, &[]).unwrap();
    a.start_coordinator().unwrap();
    b.share_coordinator(&a);
    a.start_agents(None).unwrap();
    b.start_agents(None).unwrap();
    let hostnames = FleetSpec {
        hostnames: true,
        ..FleetSpec::default()
    };
    let with_etl_x = |spec: String| spec + "\n[[client]]\nnode = \"etl-x\"\nview = \"private\"\n";
    apply(&a, &a.write_spec("a1.toml", &hostnames).unwrap());
    a.wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    let b1 = b.dir.path().join("b1.toml");
    std::fs::write(&b1, with_etl_x(b.spec(&hostnames))).unwrap();
    apply(&b, &b1);
    a.cluster = Some("fleet-31".into());
    b.cluster = Some("fleet-32".into());
    b.wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();

    // etl-x holds one block per cluster, each with its cluster's names.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hosts_block(&a.client_hosts("etl-x"), "fleet-32").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "etl-x never got fleet-32's block:\n{}",
            a.client_hosts("etl-x")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let hosts = a.client_hosts("etl-x");
    let block_a = hosts_block(&hosts, "fleet-31");
    let block_b = hosts_block(&hosts, "fleet-32");
    assert!(
        block_a.contains("127.0.31.1\temr-worker-1.fleet-31"),
        "{hosts}"
    );
    assert!(!block_a.contains("fleet-32"), "{hosts}");
    assert!(block_b.contains("\tkafka-b-1.fleet-32"), "{hosts}");
    assert!(!block_b.contains("fleet-31"), "{hosts}");
    // Both clusters count it as their client, converged on their own release.
    for fleet in [&a, &b] {
        let status = fleet.status_json().unwrap();
        let row = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["node"] == "etl-x")
            .cloned()
            .unwrap_or_default();
        assert_eq!(row["phase"], "converged", "{status:#}");
    }

    // A rolling restart of fleet-31 leaves fleet-32's block byte for byte and its brokers alone.
    let since = now_ns();
    apply(
        &a,
        &a.write_spec(
            "a2.toml",
            &FleetSpec {
                external: true,
                ..hostnames
            },
        )
        .unwrap(),
    );
    a.wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    assert_eq!(restarts_since(&a, since).len(), 2);
    assert!(restarts_since(&b, since).is_empty(), "fleet-32 untouched");
    assert_eq!(hosts_block(&a.client_hosts("etl-x"), "fleet-32"), block_b);

    // fleet-32 now names a broker as fleet-31 names one of its own, at another address: etl-x
    // reports the conflict, and both clusters' status show it.
    let b2 = b.dir.path().join("b2.toml");
    std::fs::write(
        &b2,
        with_etl_x(b.spec(&hostnames)).replace("kafka-b-1.fleet-32", "emr-worker-1.fleet-31"),
    )
    .unwrap();
    apply(&b, &b2);
    b.wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    let conflict_of = |fleet: &Fleet| -> Option<String> {
        let status = fleet.status_json().unwrap();
        status["host_problems"]
            .as_array()?
            .iter()
            .filter_map(|problem| problem.as_str())
            .find(|problem| {
                problem.starts_with("etl-x: conflict: ")
                    && problem.contains("emr-worker-1.fleet-31")
            })
            .map(str::to_string)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while conflict_of(&a).is_none() || conflict_of(&b).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the conflict is not in both statuses: {:?} / {:?}\n{}",
            conflict_of(&a),
            conflict_of(&b),
            a.client_hosts("etl-x")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let conflict = conflict_of(&b).unwrap();
    eprintln!("in both statuses' host problems: {conflict}");
    assert!(conflict.contains("127.0.32.1"), "{conflict}");
    assert!(conflict.contains("127.0.31.1"), "{conflict}");

    // fleet-32 drops etl-x: its block goes, fleet-31's stays, and the conflict is gone.
    let b3 = b.write_spec("b3.toml", &hostnames).unwrap();
    apply(&b, &b3);
    b.wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !hosts_block(&a.client_hosts("etl-x"), "fleet-32").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "fleet-32's block stays:\n{}",
            a.client_hosts("etl-x")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let hosts = a.client_hosts("etl-x");
    assert!(
        hosts_block(&hosts, "fleet-31").contains("emr-worker-1.fleet-31"),
        "{hosts}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while conflict_of(&a).is_some() {
        assert!(std::time::Instant::now() < deadline, "the conflict stays");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_clusters_on_one_coordinator_roll_out_on_their_own() {
    // Cluster fleet-28: three brokers and a client; cluster fleet-29: two brokers (nodes
    // kafka-b-N) and a client, served by fleet-28's coordinator.
    let mut a = Fleet::new(28, 3, &[("etl-a", "private")]).unwrap();
    let mut b = Fleet::with_broker_prefix(29, "kafka-b", 2, &[("etl-b", "private")]).unwrap();
    a.coordinator_extra = "[metrics]\nlisten = \"127.0.0.1:0\"\n".to_string();
    a.start_coordinator().unwrap();
    b.share_coordinator(&a);
    a.start_agents(None).unwrap();
    b.start_agents(None).unwrap();
    let hostnames = FleetSpec {
        hostnames: true,
        ..FleetSpec::default()
    };
    apply(&a, &a.write_spec("a1.toml", &hostnames).unwrap());
    a.wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();
    let b1 = b.write_spec("b1.toml", &hostnames).unwrap();
    apply(&b, &b1);
    a.cluster = Some("fleet-28".into());
    b.cluster = Some("fleet-29".into());
    b.wait_for_rollout("completed", Duration::from_secs(60))
        .unwrap();

    // Each client holds its own cluster's names, and only those.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(a.client_hosts("etl-a").contains("emr-worker-1.fleet-28")
        && b.client_hosts("etl-b").contains("kafka-b-1.fleet-29"))
    {
        assert!(std::time::Instant::now() < deadline, "clients' names");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!a.client_hosts("etl-a").contains("fleet-29"));
    assert!(!b.client_hosts("etl-b").contains("fleet-28"));

    // Without --cluster, a request is refused naming both.
    let saved = a.cluster.take();
    let run = a.ctl(&["status"]).unwrap();
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(
            "this coordinator holds 2 clusters (fleet-28, fleet-29): say which with --cluster NAME"
        ),
        "{}",
        run.stderr
    );
    a.cluster = saved;
    // A host is a broker of one cluster: fleet-29's spec may not make a broker of fleet-28 its
    // broker too.
    let stolen = b.dir.path().join("stolen.toml");
    std::fs::write(
        &stolen,
        b.spec(&hostnames)
            .replace("\"kafka-b-2\"", "\"emr-worker-2\""),
    )
    .unwrap();
    let run = b
        .ctl(&["apply", "--yes", "--force", stolen.to_str().unwrap()])
        .unwrap();
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(
            "node \"emr-worker-2\" is a broker in this spec and in cluster \"fleet-28\"'s"
        ),
        "{}",
        run.stderr
    );

    // A rolling restart of fleet-28 restarts each of its brokers once, one at a time, and
    // nothing of fleet-29.
    let since = now_ns();
    apply(
        &a,
        &a.write_spec(
            "a2.toml",
            &FleetSpec {
                external: true,
                ..hostnames
            },
        )
        .unwrap(),
    );
    let status_a = a
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    assert_eq!(status_a["rollout"]["generation"], 2, "{status_a:#}");
    let restarts = restarts_since(&a, since);
    let windows: Vec<Restart> = restarts.iter().map(|(_, r)| *r).collect();
    assert_eq!(restarts.len(), 3, "{restarts:?}");
    assert!(max_concurrent(&windows) <= 1, "{restarts:?}");
    assert!(restarts_since(&b, since).is_empty(), "fleet-29 untouched");
    let status_b = b.status_json().unwrap();
    assert_eq!(status_b["cluster"], "fleet-29", "{status_b:#}");
    let text = b.ctl(&["status"]).unwrap();
    assert!(
        text.stdout
            .starts_with("cluster: fleet-29\nrollout: generation 1 completed"),
        "{}",
        text.stdout
    );
    assert_eq!(status_b["rollout"]["generation"], 1, "{status_b:#}");
    assert_eq!(status_b["rollout"]["state"], "completed", "{status_b:#}");
    let nodes: Vec<&str> = status_b["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["etl-b", "kafka-b-1", "kafka-b-2"], "{status_b:#}");
    for broker in &b.brokers {
        assert!(!broker.properties().contains("EXTERNAL"), "{}", broker.node);
    }
    // `clusters` lists both, each with its own generation and agents.
    let run = a.ctl(&["clusters"]).unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["CLUSTER", "GENERATION", "ROLLOUT", "NODES", "ONLINE"],
            vec!["fleet-28", "2", "completed", "4", "4"],
            vec!["fleet-29", "1", "completed", "3", "3"],
        ],
        "{}",
        run.stdout
    );
    // Each cluster's history is its own.
    let history = |fleet: &Fleet| {
        let run = fleet.ctl(&["history", "--output", "json"]).unwrap();
        assert_eq!(run.code, 0, "{}", run.stderr);
        serde_json::from_str::<serde_json::Value>(&run.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!((history(&a), history(&b)), (2, 1));
    // The metrics endpoint shows both clusters, each by its name.
    let metrics = http_get(
        &metrics_address(a.coordinator.as_ref().unwrap()),
        "/metrics",
    );
    for line in [
        "kreach_rollout_generation{cluster=\"fleet-28\"} 2",
        "kreach_rollout_generation{cluster=\"fleet-29\"} 1",
        "kreach_agents_connected{cluster=\"fleet-28\"} 4",
        "kreach_agents_connected{cluster=\"fleet-29\"} 3",
        "kreach_rollout_info{cluster=\"fleet-29\",phase=\"completed\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
}
