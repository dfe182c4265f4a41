//! The high-availability harness (issue 16): coordinators sharing a real etcd (Debian's
//! `etcd-server`, members started by the test on loopback), in front of a fleet of stand-in
//! agents. Used by `tests/ha_etcd.rs` and the failover benchmark.

use std::process::Command;
use std::time::{Duration, Instant};

use kreach_test_parts::etcd::EtcdCluster;

use crate::fleet::{coordinator_binary, Fleet, FleetSpec, Proc};

/// The coordinators' `lease_ttl`, seconds: short, so failover is quick in a test.
pub const LEASE_TTL_S: u64 = 3;

/// Coordinators on one etcd prefix, each with its own state directory and port.
pub struct Coordinators {
    pub configs: Vec<std::path::PathBuf>,
    pub urls: Vec<String>,
    /// Each one's `[metrics] listen` address: fixed, so that it stays when a deposed coordinator
    /// executes itself again.
    pub metrics: Vec<String>,
    pub procs: Vec<Option<Proc>>,
}

impl Coordinators {
    /// One coordinator per entry of `endpoints` (the etcd URLs it is given), all on one prefix.
    /// Coordinator 0 starts first and leads before the others start, so a test knows who leads.
    pub fn new(fleet: &Fleet, endpoints: &[Vec<String>]) -> Coordinators {
        let mut configs = Vec::new();
        let mut urls = Vec::new();
        let mut metrics = Vec::new();
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        for (index, endpoints) in endpoints.iter().enumerate() {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let metrics_address = format!("127.0.0.1:{}", free_port());
            let config = fleet.dir.path().join(format!("coordinator-{index}.toml"));
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n\
                     [store]\nkind = \"etcd\"\nendpoints = {endpoints:?}\nprefix = \"/kreach-test\"\n\
                     lease_ttl = \"{LEASE_TTL_S}s\"\nadvertise = {url:?}\n\
                     [metrics]\nlisten = {metrics_address:?}\n",
                    fleet
                        .dir
                        .path()
                        .join(format!("coordinator-{index}"))
                        .display()
                        .to_string(),
                ),
            )
            .unwrap();
            configs.push(config);
            urls.push(url);
            metrics.push(metrics_address);
        }
        let mut coordinators = Coordinators {
            procs: configs.iter().map(|_| None).collect(),
            configs,
            urls,
            metrics,
        };
        for index in 0..coordinators.configs.len() {
            coordinators.start(index);
            if index == 0 {
                assert_eq!(coordinators.leader(Duration::from_secs(20)), 0);
            }
        }
        coordinators
    }

    pub fn start(&mut self, index: usize) {
        let proc = Proc::spawn(
            Command::new(coordinator_binary())
                .arg("--config")
                .arg(&self.configs[index]),
        )
        .unwrap();
        proc.wait_for_log("listening on", Duration::from_secs(20))
            .unwrap();
        self.procs[index] = Some(proc);
    }

    /// `GET /metrics` of coordinator `index`, tried for up to 5 s (a coordinator that executed
    /// itself again binds the port anew); every coordinator's log in the panic if it fails.
    pub fn scrape(&self, index: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match crate::fleet::http_get_checked(&self.metrics[index], "/metrics") {
                Ok(body) => return body,
                Err(error) if Instant::now() > deadline => panic!(
                    "metrics of coordinator {index}: {error:#}\n{}",
                    self.logs_tail()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The end of every coordinator's log, for a failure's message.
    pub fn logs_tail(&self) -> String {
        let mut text = String::new();
        for (index, proc) in self.procs.iter().enumerate() {
            if let Some(proc) = proc {
                let log = proc.log();
                let start = log.len().saturating_sub(3000);
                let start = (start..log.len())
                    .find(|&at| log.is_char_boundary(at))
                    .unwrap_or(log.len());
                text += &format!("--- coordinator {index}:\n{}\n", &log[start..]);
            }
        }
        text
    }

    /// The index of the coordinator that leads now (its log says it was elected and it was not
    /// killed), waiting up to `timeout`.
    pub fn leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for (index, proc) in self.procs.iter().enumerate() {
                if let Some(proc) = proc {
                    let log = proc.log();
                    let elected = log.matches("elected leader of the coordinators").count();
                    let lost = log.matches("stopped leading").count();
                    if elected > lost {
                        return index;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no coordinator leads after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HA setup at a time (nine etcd members would otherwise share two cores with nine
/// coordinators and their fleets, and a test's 3 s lease could not tell load from a partition).
/// Held by what [`ha_fleet`] returns until the test drops it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What [`ha_fleet`] starts; dropping it stops everything and lets the next test start.
pub struct Ha {
    // Dropped in this order: the agents, the coordinators, etcd, then the turn.
    pub fleet: Fleet,
    pub coordinators: Coordinators,
    pub etcd: EtcdCluster,
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
}

/// Wait for the turn to run an HA setup (see [`Ha`]); hold it until the setup is dropped.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Etcd (three members on loopback), three coordinators (0 leads), three brokers and a client
/// on generation 1.
pub fn ha_fleet(test: &str, net: u8) -> Option<Ha> {
    let turn = one_at_a_time();
    let etcd = EtcdCluster::start(test, 3)?;
    let endpoints = vec![etcd.endpoints(); 3];
    Some(ha_fleet_on(Some(turn), etcd, net, &endpoints))
}

/// [`ha_fleet`] on an etcd the caller started (in a network namespace of its own, say),
/// coordinator N given the etcd URLs `endpoints[N]`. `turn`: from [`one_at_a_time`], or None
/// where the caller holds it on another thread.
pub fn ha_fleet_on(
    turn: Option<std::sync::MutexGuard<'static, ()>>,
    etcd: EtcdCluster,
    net: u8,
    endpoints: &[Vec<String>],
) -> Ha {
    let mut fleet = Fleet::new(net, 3, &[("etl-1", "private")]).unwrap();
    let coordinators = Coordinators::new(&fleet, endpoints);
    fleet.coordinator_urls = coordinators.urls.clone();
    if let Err(error) = fleet.start_agents(Some(3)) {
        panic!("{error}\n{}", coordinators.logs_tail());
    }
    let gen1 = fleet
        .write_spec("gen1.toml", &FleetSpec::default())
        .unwrap();
    fleet.apply_forced(&gen1);
    if let Err(error) = fleet.wait_for_rollout("completed", Duration::from_secs(60)) {
        panic!("{error}\n{}", coordinators.logs_tail());
    }
    Ha {
        etcd,
        coordinators,
        fleet,
        _turn: turn,
    }
}

/// A spec `name` that restarts every broker when applied after generation 1's (`external`: with
/// the EXTERNAL listener; alternate it to change again), with `settle = "1s"`.
pub fn restarting_spec(fleet: &Fleet, name: &str, external: bool) -> std::path::PathBuf {
    fleet
        .write_spec(
            name,
            &FleetSpec {
                external,
                settle: "1s",
                ..FleetSpec::default()
            },
        )
        .unwrap()
}

/// Apply [`restarting_spec`] and wait until the first broker's restart began; when it was applied
/// (`now_ns`).
pub fn roll_until_a_restart(fleet: &Fleet, name: &str, external: bool) -> u128 {
    let since = crate::fleet::now_ns();
    fleet.apply_forced(&restarting_spec(fleet, name, external));
    fleet.wait_for_a_restart(since, Duration::from_secs(60));
    since
}
