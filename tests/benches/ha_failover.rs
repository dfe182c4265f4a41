//! Failover time of the etcd-backed coordinators (issue 16): three coordinators on a three-member
//! etcd, three stand-in brokers and a client. Each trial applies a generation that restarts every
//! broker, kills -9 the leader as soon as the first broker restarts, and measures the time from the
//! kill to (a) another coordinator elected and (b) the next step released (the next broker's
//! restart begins; the spec's settle of 1 s is in it). Every trial checks that each broker
//! restarted exactly once and never two at a time. Then times `kreachctl status` on the leader
//! and on a follower (from its copy of the store). Prints figures; asserts only that the rollout
//! is correct and the reads answer.
//!
//!     cargo bench -p kreach-tests --bench ha_failover -- [--trials N]

use std::time::{Duration, Instant};

use kreach_tests::fleet::{max_concurrent, now_ns, restarts_since, Restart};
use kreach_tests::ha::{ha_fleet, roll_until_a_restart, Ha, LEASE_TTL_S};

fn stats(label: &str, values: &mut [u128]) {
    values.sort_unstable();
    let median = values[values.len() / 2];
    println!(
        "{label}: median {median} ms, min {} ms, max {} ms over {} runs",
        values[0],
        values[values.len() - 1],
        values.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trials: usize = args
        .iter()
        .position(|arg| arg == "--trials")
        .and_then(|at| args.get(at + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let Some(mut ha) = ha_fleet("ha_failover_bench", 43) else {
        return;
    };
    let Ha {
        coordinators,
        fleet,
        ..
    } = &mut ha;
    println!("lease_ttl {LEASE_TTL_S}s, 3 coordinators, 3 etcd members, 3 brokers, settle 1s");
    let (mut elected, mut released) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        let since = roll_until_a_restart(fleet, &format!("trial-{trial}.toml"), trial % 2 == 0);
        let leader = coordinators.leader(Duration::from_secs(1));
        coordinators.procs[leader].as_mut().unwrap().kill9();
        let killed = now_ns();
        coordinators.procs[leader] = None;
        let next = coordinators.leader(Duration::from_secs(LEASE_TTL_S * 4));
        let elected_ms = (now_ns() - killed) / 1_000_000;
        let deadline = Instant::now() + Duration::from_secs(60);
        let released_ms = loop {
            let after = restarts_since(fleet, since)
                .into_iter()
                .find(|(_, restart)| restart.start_ns > killed);
            if let Some((_, restart)) = after {
                break (restart.start_ns - killed) / 1_000_000;
            }
            assert!(
                Instant::now() < deadline,
                "trial {trial}: no step after the kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        fleet
            .wait_for_rollout("completed", Duration::from_secs(90))
            .unwrap();
        let restarts = restarts_since(fleet, since);
        let order: Vec<u32> = restarts.iter().map(|(id, _)| *id).collect();
        assert_eq!(order, vec![1, 2, 3], "trial {trial}: {restarts:?}");
        let windows: Vec<Restart> = restarts.iter().map(|(_, r)| *r).collect();
        assert!(max_concurrent(&windows) <= 1, "trial {trial}: {restarts:?}");
        println!(
            "trial {trial}: killed coordinator {leader}; coordinator {next} elected after {elected_ms} ms; next step released {released_ms} ms after the kill"
        );
        elected.push(elected_ms);
        released.push(released_ms);
        coordinators.start(leader);
    }
    stats("kill -9 → another coordinator elected", &mut elected);
    stats("kill -9 → next step released", &mut released);

    // Reads: `kreachctl status` (the whole command) given the leader alone, and a follower alone,
    // whose copy of the store is read again for each (it is older than a second by then).
    let leader = coordinators.leader(Duration::from_secs(LEASE_TTL_S * 4));
    let follower = (leader + 1) % coordinators.urls.len();
    let (mut on_leader, mut on_follower) = (Vec::new(), Vec::new());
    for _ in 0..trials.max(5) {
        for (index, times) in [(leader, &mut on_leader), (follower, &mut on_follower)] {
            std::thread::sleep(Duration::from_millis(1100));
            let started = Instant::now();
            let run = fleet
                .ctl_at(&coordinators.urls[index], &["status"])
                .unwrap();
            assert_eq!(run.code, 0, "{}", run.stderr);
            times.push(started.elapsed().as_millis());
        }
    }
    stats("kreachctl status on the leader", &mut on_leader);
    stats(
        "kreachctl status on a follower (its copy read again)",
        &mut on_follower,
    );
}
