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
    pub procs: Vec<Option<Proc>>,
    /// Each coordinator's own user id (so a firewall rule can single out its traffic), when
    /// they run as users of their own; None: as the test's user.
    pub uids: Option<Vec<u32>>,
}

impl Coordinators {
    pub fn new(fleet: &Fleet, etcd: &EtcdCluster, count: usize) -> Coordinators {
        Coordinators::new_as(fleet, etcd, count, None)
    }

    /// [`Coordinators::new`], coordinator N running as user `uids[N]` (root only): its state
    /// directory is given to that user, and the fleet's directory opened for reading.
    pub fn new_as(
        fleet: &Fleet,
        etcd: &EtcdCluster,
        count: usize,
        uids: Option<Vec<u32>>,
    ) -> Coordinators {
        if uids.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(fleet.dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let mut configs = Vec::new();
        let mut urls = Vec::new();
        for index in 0..count {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let url = format!("http://127.0.0.1:{port}");
            let config = fleet.dir.path().join(format!("coordinator-{index}.toml"));
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n\
                     [store]\nkind = \"etcd\"\nendpoints = {:?}\nprefix = \"/kreach-test\"\n\
                     lease_ttl = \"{LEASE_TTL_S}s\"\nadvertise = {url:?}\n\
                     [metrics]\nlisten = \"127.0.0.1:0\"\n",
                    fleet
                        .dir
                        .path()
                        .join(format!("coordinator-{index}"))
                        .display()
                        .to_string(),
                    etcd.endpoints(),
                ),
            )
            .unwrap();
            if let Some(uids) = &uids {
                let state = fleet.dir.path().join(format!("coordinator-{index}"));
                std::fs::create_dir_all(&state).unwrap();
                std::os::unix::fs::chown(&state, Some(uids[index]), Some(uids[index])).unwrap();
            }
            configs.push(config);
            urls.push(url);
        }
        let mut coordinators = Coordinators {
            configs,
            urls,
            procs: Vec::new(),
            uids,
        };
        for index in 0..count {
            coordinators.procs.push(None);
            coordinators.start(index);
        }
        coordinators
    }

    pub fn start(&mut self, index: usize) {
        let mut command = match &self.uids {
            // setpriv execs the coordinator: the pid is the coordinator's.
            Some(uids) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={}", uids[index]))
                    .arg(format!("--regid={}", uids[index]))
                    .arg("--clear-groups")
                    .arg(coordinator_binary());
                command
            }
            None => Command::new(coordinator_binary()),
        };
        command.arg("--config").arg(&self.configs[index]);
        let proc = Proc::spawn(&mut command).unwrap();
        proc.wait_for_log("listening on", Duration::from_secs(20))
            .unwrap();
        self.procs[index] = Some(proc);
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
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Etcd, three coordinators, three brokers and a client on generation 1.
pub fn ha_fleet(test: &str, net: u8) -> Option<Ha> {
    ha_fleet_as(test, net, None)
}

/// [`ha_fleet`] with each coordinator running as its user of `uids` (see
/// [`Coordinators::new_as`]).
pub fn ha_fleet_as(test: &str, net: u8, uids: Option<Vec<u32>>) -> Option<Ha> {
    let turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let etcd = EtcdCluster::start(test, 3)?;
    let mut fleet = Fleet::new(net, 3, &[("etl-1", "private")]).unwrap();
    let coordinators = Coordinators::new_as(&fleet, &etcd, 3, uids);
    fleet.coordinator_urls = coordinators.urls.clone();
    coordinators.leader(Duration::from_secs(20));
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
    Some(Ha {
        etcd,
        coordinators,
        fleet,
        _turn: turn,
    })
}
