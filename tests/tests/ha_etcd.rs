//! High availability on etcd (issue 16): three coordinators share a three-member etcd (Debian's
//! `etcd-server`, started by the test on loopback), one leads; agents (the fleet tier's stand-ins,
//! real processes) and kreachctl know all three URLs.
//!
//! The observer does not ask the coordinators: the stand-in Kafka's own restart log says when each
//! broker was down.

use std::time::{Duration, Instant};

use kreach_tests::fleet::{max_concurrent, now_ns, restarts_since, FleetSpec, Restart};
use kreach_tests::ha::{apply, ha_fleet, LEASE_TTL_S};

#[test]
fn the_leader_killed_mid_rollout_another_leads_and_every_broker_restarts_exactly_once() {
    let Some((_etcd, mut coordinators, fleet)) = ha_fleet("ha_leader_killed", 41) else {
        return;
    };
    let since = now_ns();
    let gen2 = fleet
        .write_spec(
            "gen2.toml",
            &FleetSpec {
                external: true,
                settle: "1s",
                ..FleetSpec::default()
            },
        )
        .unwrap();
    apply(&fleet, &gen2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while restarts_since(&fleet, since).is_empty() {
        assert!(Instant::now() < deadline, "broker 1 never restarted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = coordinators.leader(Duration::from_secs(1));
    coordinators.procs[first].as_mut().unwrap().kill9();
    let killed_ns = now_ns();
    coordinators.procs[first] = None;

    let next = coordinators.leader(Duration::from_secs(LEASE_TTL_S * 3));
    assert_ne!(next, first);
    let elected_ms = (now_ns() - killed_ns) / 1_000_000;
    fleet
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    let restarts = restarts_since(&fleet, since);
    let after_kill = restarts
        .iter()
        .find(|(_, restart)| restart.start_ns > killed_ns)
        .map(|(_, restart)| (restart.start_ns - killed_ns) / 1_000_000);
    eprintln!(
        "leader {first} killed; coordinator {next} elected within {elected_ms} ms; next step released {after_kill:?} ms after the kill; restarts: {restarts:?}"
    );
    let order: Vec<u32> = restarts.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        order,
        vec![1, 2, 3],
        "every broker restarted exactly once, in order"
    );
    let windows: Vec<Restart> = restarts.iter().map(|(_, r)| *r).collect();
    assert!(
        max_concurrent(&windows) <= 1,
        "never more than max_unavailable = 1 down: {restarts:?}"
    );

    // The killed coordinator comes back as a follower and names the leader.
    coordinators.start(first);
    let back = coordinators.procs[first].as_ref().unwrap();
    back.wait_for_log("following the leader", Duration::from_secs(10))
        .unwrap();
    let status = fleet.status_json().unwrap();
    assert_eq!(status["rollout"]["state"], "completed");
}

#[test]
fn without_etcd_quorum_no_step_is_released_agents_keep_their_state_and_status_says_why() {
    let Some((mut etcd, coordinators, fleet)) = ha_fleet("ha_quorum_lost", 42) else {
        return;
    };
    let hosts_before = fleet.client_hosts("etl-1");
    let leader = coordinators.leader(Duration::from_secs(1));
    etcd.kill(1);
    etcd.kill(2);
    let lost_at = Instant::now();
    let log = coordinators.procs[leader]
        .as_ref()
        .unwrap()
        .wait_for_log("stopped leading", Duration::from_secs(LEASE_TTL_S * 3))
        .unwrap();
    eprintln!(
        "quorum lost; the leader stopped leading after {} ms: {}",
        lost_at.elapsed().as_millis(),
        log.lines()
            .find(|line| line.contains("stopped leading"))
            .unwrap_or_default()
    );

    // Status, from any coordinator, says why nothing leads.
    let run = fleet.ctl(&["status"]).unwrap();
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("no coordinator leads"),
        "status says why: {}",
        run.stderr
    );
    // A change is refused, and no broker restarts.
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
    let run = fleet
        .ctl(&["apply", "--yes", "--force", gen2.to_str().unwrap()])
        .unwrap();
    assert_ne!(run.code, 0, "apply without quorum: {}", run.stdout);
    std::thread::sleep(Duration::from_secs(2));
    assert!(restarts_since(&fleet, since).is_empty());
    assert_eq!(fleet.client_hosts("etl-1"), hosts_before);

    // Quorum back: a coordinator leads again and the change rolls out.
    etcd.restart(1);
    etcd.restart(2);
    coordinators.leader(Duration::from_secs(LEASE_TTL_S * 5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = fleet
            .ctl(&["apply", "--yes", "--force", gen2.to_str().unwrap()])
            .unwrap();
        if run.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "apply after quorum came back: {}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet
        .wait_for_rollout("completed", Duration::from_secs(90))
        .unwrap();
    let order: Vec<u32> = restarts_since(&fleet, since)
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(order, vec![1, 2, 3]);
}
