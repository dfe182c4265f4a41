//! High availability on etcd (issue 16): three coordinators share a three-member etcd (Debian's
//! `etcd-server`, started by the test on loopback, or for the partition in a network namespace of
//! its own), one leads; agents (the fleet tier's stand-ins, real processes) and kreachctl know all
//! three URLs.
//!
//! The observer does not ask the coordinators: the stand-in Kafka's own restart log says when each
//! broker was down.

use std::time::{Duration, Instant};

use kreach_test_parts::etcd::EtcdCluster;
use kreach_tests::fleet::{max_concurrent, now_ns, restarts_since, FleetSpec, Restart};
use kreach_tests::ha::{
    ha_fleet, ha_fleet_on, restarting_spec, roll_until_a_restart, Ha, LEASE_TTL_S,
};

#[test]
fn the_leader_killed_mid_rollout_another_leads_and_every_broker_restarts_exactly_once() {
    let Some(mut ha) = ha_fleet("ha_leader_killed", 41) else {
        return;
    };
    let Ha {
        coordinators,
        fleet,
        ..
    } = &mut ha;

    // A follower, asked alone, answers the reads from the store: the leader's generation, and
    // every agent connected (to the leader); a change it refuses, naming the leader.
    let leader = coordinators.leader(Duration::from_secs(1));
    let follower = &coordinators.urls[(leader + 1) % 3];
    let status = follower_status(fleet, coordinators, follower, &coordinators.urls[leader], 4);
    assert_eq!(status["rollout"]["generation"], 1);
    assert_eq!(status["rollout"]["state"], "completed");
    for args in [&["history"][..], &["nodes"]] {
        let run = fleet.ctl_at(follower, args).unwrap();
        assert_eq!(run.code, 0, "{args:?} on a follower: {}", run.stderr);
        assert!(
            run.stderr
                .contains("answered by a follower, from the etcd store; the leader is at"),
            "{}",
            run.stderr
        );
        eprintln!(
            "kreachctl {args:?} on a follower:\n{}{}",
            run.stderr, run.stdout
        );
    }
    // Each serves /metrics: the leader its clusters, a follower only that it follows.
    let leading = coordinators.scrape(leader);
    assert!(
        leading.contains("kreach_coordinator_leader 1")
            && leading.contains("kreach_rollout_generation{cluster=\"fleet-41\"} 1"),
        "{leading}"
    );
    let following = coordinators.scrape((leader + 1) % 3);
    assert!(
        following.contains("kreach_coordinator_leader 0") && !following.contains("cluster="),
        "{following}"
    );
    let gen1 = fleet.dir.path().join("gen1.toml");
    let run = fleet
        .ctl_at(
            follower,
            &["apply", "--yes", "--force", gen1.to_str().unwrap()],
        )
        .unwrap();
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!(
            "not the leader: this coordinator follows; the leader is at {}",
            coordinators.urls[leader]
        )),
        "{}",
        run.stderr
    );

    let since = now_ns();
    let gen2 = restarting_spec(fleet, "gen2.toml", true);
    // kreachctl follows the rollout (`apply --wait`) across the failover.
    let waiting = fleet
        .ctl_spawn(&[
            "apply",
            "--yes",
            "--force",
            "--wait",
            gen2.to_str().unwrap(),
        ])
        .unwrap();
    fleet.wait_for_a_restart(since, Duration::from_secs(60));
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
    let waited = waiting.wait(Duration::from_secs(60)).unwrap();
    eprintln!(
        "kreachctl apply --wait across the failover (exit {}):\n{}{}",
        waited.code, waited.stdout, waited.stderr
    );
    assert_eq!(waited.code, 0, "{}{}", waited.stdout, waited.stderr);
    assert!(
        waited
            .stderr
            .contains("following the rollout on the coordinator that leads now"),
        "{}",
        waited.stderr
    );
    let restarts = restarts_since(fleet, since);
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

    // The killed coordinator comes back as a follower and names the leader; asked alone, it
    // shows the rollout the new leader finished, and the agents connected to that one.
    coordinators.start(first);
    let back = coordinators.procs[first].as_ref().unwrap();
    back.wait_for_log("following the leader", Duration::from_secs(10))
        .unwrap();
    let status = fleet.status_json().unwrap();
    assert_eq!(status["rollout"]["state"], "completed");
    let status = follower_status(
        fleet,
        coordinators,
        &coordinators.urls[first],
        &coordinators.urls[next],
        4,
    );
    assert_eq!(status["rollout"]["generation"], 2);
    assert_eq!(status["rollout"]["state"], "completed");
    // The new leader's metrics cover the cluster now.
    let leading = coordinators.scrape(next);
    assert!(
        leading.contains("kreach_coordinator_leader 1")
            && leading.contains("kreach_rollout_generation{cluster=\"fleet-41\"} 2"),
        "{leading}"
    );
}

/// `kreachctl status` asked of `follower` alone, once it names `leader` and shows all `nodes`
/// online (waiting up to 20 s: the leader stores its agents at its next tick, and the follower
/// reads the store again once its copy is a second old).
fn follower_status(
    fleet: &kreach_tests::fleet::Fleet,
    coordinators: &kreach_tests::ha::Coordinators,
    follower: &str,
    leader: &str,
    nodes: usize,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = fleet
            .ctl_at(follower, &["status", "--output", "json"])
            .unwrap();
        let status: Option<serde_json::Value> = serde_json::from_str(&run.stdout).ok();
        if let Some(status) = status.filter(|status| {
            status["served_by"]
                == format!("a follower, from the etcd store; the leader is at {leader}")
                && status["liveness_unknown"] == false
                && status["nodes"].as_array().is_some_and(|all| {
                    all.len() == nodes && all.iter().all(|node| node["online"] == true)
                })
        }) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status on the follower {follower} (exit {}): {}\n{}\n{}",
            run.code,
            run.stdout,
            run.stderr,
            coordinators.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn without_etcd_quorum_no_step_is_released_agents_keep_their_state_and_status_says_why() {
    let Some(mut ha) = ha_fleet("ha_quorum_lost", 42) else {
        return;
    };
    let Ha {
        etcd,
        coordinators,
        fleet,
        ..
    } = &mut ha;
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

    // Status, from any coordinator, says why nothing leads: once the followers' own attempts at
    // etcd failed too (until then they name the leader they last saw, which refuses connections
    // while it starts again). A follower answers it from the surviving member's own copy of the
    // store, says so, and does not pretend to know which agents are connected.
    let deadline = Instant::now() + Duration::from_secs(LEASE_TTL_S * 3);
    let run = loop {
        let run = fleet.ctl(&["status"]).unwrap();
        if run.stdout.contains("no coordinator leads") || Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "status says why {} ms after the leader stopped",
        lost_at.elapsed().as_millis()
    );
    eprintln!(
        "kreachctl status without quorum (exit {}):\n{}{}",
        run.code, run.stdout, run.stderr
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("answered by a follower, from one etcd member's own copy of the store, which may be stale")
            && first.contains("no coordinator leads")
            && first.contains("the agents' connections are unknown while no coordinator leads"),
        "status says why: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains("rollout: generation 1"),
        "{}",
        run.stdout
    );
    let agents: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| {
            (line.starts_with("emr-worker-") || line.starts_with("etl-1 "))
                && line.contains(" gen 1 step ")
        })
        .collect();
    assert_eq!(agents.len(), 4, "{}", run.stdout);
    assert!(
        agents
            .iter()
            .all(|row| row.contains(" unknown ") && !row.contains("OFFLINE")),
        "{agents:?}"
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
    eprintln!(
        "kreachctl apply without quorum (exit {}):\n{}",
        run.code, run.stderr
    );
    assert_ne!(run.code, 0, "apply without quorum: {}", run.stdout);
    std::thread::sleep(Duration::from_secs(2));
    assert!(restarts_since(fleet, since).is_empty());
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
    let order: Vec<u32> = restarts_since(fleet, since)
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(order, vec![1, 2, 3]);
}

/// Run `body` on a thread inside the network namespace `ns`, so that every process it starts
/// runs there; its result, or its panic.
fn inside<T: Send + 'static>(ns: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    let outcome = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        body()
    })
    .join();
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The etcd host's client ports on its links (member N on `ETCD_PORT + N`).
const ETCD_PORT: u16 = 23790;

#[test]
fn a_leader_cut_off_from_etcd_stops_releasing_within_the_lease_ttl_and_follows_when_back() {
    use kreach_test_parts::{require, Missing, Tier};
    use kreach_tests::netns::{Link, Net, Segment};
    let test = "ha_partition";
    let missing = (!kreach_test_parts::is_root()).then(Missing::not_root);
    if !require(Tier::Ha, test, missing) {
        return;
    }
    // Two hosts, two links between them (each a veth pair to a bridge of its own): the host of
    // the coordinators and agents, and etcd's. Coordinator 0 reaches etcd over the first link,
    // coordinators 1 and 2 over the second, so the first going down cuts the leader alone.
    let turn = kreach_tests::ha::one_at_a_time();
    let mut net = Net::new(test).unwrap();
    net.add_host(
        "ha",
        &[
            Link::new(Segment::Private, "198.18.44.1/24"),
            Link::new(Segment::Public, "198.19.44.1/24"),
        ],
    )
    .unwrap();
    net.add_host(
        "etcd",
        &[
            Link::new(Segment::Private, "198.18.44.10/24"),
            Link::new(Segment::Public, "198.19.44.10/24"),
        ],
    )
    .unwrap();
    let url = |link: &str, member: u16| format!("http://{link}:{}", ETCD_PORT + member);
    let extra: Vec<Vec<String>> = (0..3)
        .map(|member| vec![url("198.18.44.10", member), url("198.19.44.10", member)])
        .collect();
    let Some(etcd) = inside(net.ns("etcd"), move || {
        EtcdCluster::start_with(test, 3, &extra)
    }) else {
        return;
    };
    let endpoints: Vec<Vec<String>> = ["198.18.44.10", "198.19.44.10", "198.19.44.10"]
        .iter()
        .map(|link| (0..3).map(|member| url(link, member)).collect())
        .collect();
    let leaders_link = net.link_switch("ha", 0);
    inside(net.ns("ha").to_string().as_str(), move || {
        // The turn stays with the test's thread (a lock guard is not sent across threads).
        let mut ha = ha_fleet_on(None, etcd, 44, &endpoints);
        let Ha {
            coordinators,
            fleet,
            ..
        } = &mut ha;
        let first = coordinators.leader(Duration::from_secs(1));
        assert_eq!(first, 0, "coordinator 0 leads, on the first link");

        let since = roll_until_a_restart(fleet, "gen2.toml", true);
        // The partition: the leader's link to etcd goes down (its connections hang, nothing is
        // refused). Agents still reach it (on the host's loopback).
        leaders_link.set(false).unwrap();
        let cut = Instant::now();
        let cut_ns = now_ns();
        let old = coordinators.procs[first].as_ref().unwrap();
        old.wait_for_log("stopped leading", Duration::from_secs(LEASE_TTL_S * 2))
            .unwrap();
        let stopped_ms = cut.elapsed().as_millis();
        let next = loop {
            let next = coordinators.leader(Duration::from_secs(LEASE_TTL_S * 4));
            if next != first {
                break next;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let elected_ms = cut.elapsed().as_millis();
        fleet
            .wait_for_rollout("completed", Duration::from_secs(90))
            .unwrap();
        let restarts = restarts_since(fleet, since);
        let after_cut: Vec<String> = restarts
            .iter()
            .map(|(id, r)| {
                format!(
                    "broker {id} restart began {} ms after the cut",
                    (r.start_ns as i128 - cut_ns as i128) / 1_000_000
                )
            })
            .collect();
        eprintln!(
            "partition timeline: leader {first} cut off from etcd at 0 ms; it stopped leading at {stopped_ms} ms (lease_ttl {LEASE_TTL_S} s); coordinator {next} elected by {elected_ms} ms; {after_cut:?}"
        );
        assert!(
            stopped_ms < u128::from(LEASE_TTL_S) * 1000,
            "the cut-off leader stops within the lease TTL: {stopped_ms} ms"
        );
        // Cut off, the old leader released nothing: no broker began a restart after the cut
        // until the new leader was elected (less 100 ms for seeing it in the log).
        for (id, restart) in &restarts {
            let at_ms = restart.start_ns.saturating_sub(cut_ns) / 1_000_000;
            assert!(
                restart.start_ns < cut_ns || at_ms + 100 >= elected_ms,
                "broker {id} began a restart {at_ms} ms after the cut, before a new leader ({elected_ms} ms)"
            );
        }
        let order: Vec<u32> = restarts.iter().map(|(id, _)| *id).collect();
        assert_eq!(order, vec![1, 2, 3], "every broker restarted exactly once");
        let windows: Vec<Restart> = restarts.iter().map(|(_, r)| *r).collect();
        assert!(max_concurrent(&windows) <= 1, "{restarts:?}");

        // The link comes back: the old leader follows the new one.
        leaders_link.set(true).unwrap();
        let url = &coordinators.urls[next];
        coordinators.procs[first]
            .as_ref()
            .unwrap()
            .wait_for_log(
                &format!("leader={url}"),
                Duration::from_secs(LEASE_TTL_S * 4),
            )
            .unwrap();
    });
    drop(turn);
}
