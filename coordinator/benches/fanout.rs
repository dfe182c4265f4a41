//! Fan-out benchmark: one real `kreach-coordinator` process, 1,000 simulated client agents and 3
//! simulated brokers, each agent on its own gRPC connection, and a hosts-only change (the brokers'
//! private addresses move) released to every node at once.
//!
//! It prints figures and asserts nothing: how long the agents took to connect, how long after the
//! `Apply` call returned each agent had its new release and each agent's CONVERGED report had been
//! acknowledged by the coordinator (p50/p99/max of both), when the coordinator's status showed the
//! rollout completed, and the coordinator's peak memory (VmHWM), next to the targets (the issue's
//! "time until all 1,000 report it" is the report figure).
//!
//! By default it runs as the product does: mutual TLS, with a CA, the coordinator's certificate
//! and one certificate per node made in a temp dir by `kreach_runtime::tls::init_certs` (what
//! `kreachctl certs init` runs), each simulated agent presenting its own node certificate. Plaintext
//! (`[tls] insecure = true`) is an option, to see what TLS costs:
//!
//! ```text
//! cargo bench -p kreach-coordinator --bench fanout                  # mutual TLS
//! FANOUT_TLS=0 cargo bench -p kreach-coordinator --bench fanout     # plaintext
//! cargo bench -p kreach-coordinator --bench fanout -- --plaintext   # plaintext (--tls: TLS)
//! cargo bench -p kreach-coordinator --bench fanout -- --group       # clients as a client group
//! cargo bench -p kreach-coordinator --bench fanout -- --clusters 20 # 20 clusters, 5,000 agents
//! FANOUT_CLUSTERS=20 cargo bench -p kreach-coordinator --bench fanout  # the same
//! ```
//!
//! With `--group` (or `FANOUT_GROUP=1`) only the first client is listed in the spec; the other
//! 999 are members of a `[[client_group]]` that selects them by a label they report with their
//! host facts before subscribing, so they get their releases as copies of the listed client's.
//!
//! With `--clusters N` (or `FANOUT_CLUSTERS=N`; N > 1, at most 40) the coordinator holds N Kafka
//! clusters (`fanout-k00`, `fanout-k01`, ...), each of 3 brokers and 247 clients (250 agents, so
//! 20 clusters are 5,000 agents; node names `k07-kafka-1`, `k07-c0123`, ...). Every agent
//! connects, generation 1 of each cluster is applied and waited for one after the other, then
//! the measured change is generation 2 of cluster `fanout-k00` only (its brokers' private
//! addresses move): the figures are over its 250 agents, and the report counts the agents of the
//! other clusters that got a release meanwhile (there should be none). With `--group` each
//! cluster lists its first client and selects the others by the label
//! `role = "fanout-client-k07"`. The overall deadline is 900s instead of 120s.
//!
//! The simulated agents touch no files: they report PHASE_CONVERGED for every release they
//! receive. All traffic stays on 127.0.0.1, and every wait is bounded by one overall deadline.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use kreach_coordinator::ctl::Connection;
use kreach_proto as pb;
use kreach_runtime::tls;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use pb::admin_service_client::AdminServiceClient;
use pb::agent_service_client::AgentServiceClient;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How many clusters, and how many agents of which kind in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    clusters: usize,
    brokers: usize,
    clients: usize,
}

/// Set once in `run`, from `--clusters` / `FANOUT_CLUSTERS`.
static SHAPE: OnceLock<Shape> = OnceLock::new();

/// The most clusters `--clusters` takes: 40 × 250 agents is the coordinator's default
/// `max_agents` (10,000).
const MAX_CLUSTERS: usize = 40;

impl Shape {
    /// One cluster: 1,000 clients and 3 brokers (the issue's figure); several: 247 clients and 3
    /// brokers each, 250 agents per cluster.
    fn for_clusters(clusters: usize) -> Shape {
        if clusters <= 1 {
            Shape {
                clusters: 1,
                brokers: 3,
                clients: 1000,
            }
        } else {
            Shape {
                clusters,
                brokers: 3,
                clients: 247,
            }
        }
    }

    fn multi(self) -> bool {
        self.clusters > 1
    }

    fn per_cluster(self) -> usize {
        self.brokers + self.clients
    }

    fn agents(self) -> usize {
        self.clusters * self.per_cluster()
    }

    /// The indexes of `cluster`'s agents: its brokers first, then its clients.
    fn agents_of(self, cluster: usize) -> Range<usize> {
        cluster * self.per_cluster()..(cluster + 1) * self.per_cluster()
    }

    /// The cluster of agent `index`, and its index within that cluster.
    fn place(self, index: usize) -> (usize, usize) {
        (index / self.per_cluster(), index % self.per_cluster())
    }

    /// The whole run, from making the certificates to reading the coordinator's memory.
    fn deadline(self) -> Duration {
        if self.multi() {
            Duration::from_secs(900)
        } else {
            Duration::from_secs(120)
        }
    }
}

fn shape() -> Shape {
    *SHAPE.get().expect("the shape is set at the start of run")
}

/// Connections opened at once: a burst of 1,000 SYNs can overflow the listen backlog, and a
/// dropped SYN costs a one-second retransmit that would measure the kernel, not the coordinator.
const CONNECT_CONCURRENCY: usize = 100;
/// No agent of this run receives more than a handful of releases (gen 1: expand + a broker step;
/// gen 2: one expand); the cap only bounds the loop.
const MAX_RELEASES_PER_AGENT: usize = 32;
/// File descriptors the coordinator needs: one socket per agent plus its own few.
fn coordinator_files_needed() -> u64 {
    shape().agents() as u64 + 64
}
/// The limit the coordinator is started with (under prlimit) when its inherited hard limit is too
/// low: it raises its soft limit to the hard one itself, but cannot go past the hard one.
const PRLIMIT_NOFILE: u64 = 65536;

const TARGET_P99: Duration = Duration::from_secs(2);
const TARGET_MEMORY_MIB: f64 = 200.0;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fanout: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (mode, clusters) = Mode::from_args_and_env()?;
    SHAPE
        .set(Shape::for_clusters(clusters))
        .map_err(|_| anyhow::anyhow!("the shape was set twice"))?;
    let shape = shape();
    let deadline_secs = shape.deadline().as_secs();
    let deadline = started + shape.deadline();
    if shape.multi() {
        println!(
            "fanout: mode: {}; {} clusters, clients: {}",
            mode.describe(),
            shape.clusters,
            if group_mode() {
                format!(
                    "1 listed, {} members of a client group per cluster (--group)",
                    shape.clients - 1
                )
            } else {
                format!("{} listed per cluster", shape.clients)
            }
        );
    } else {
        println!(
            "fanout: mode: {}; clients: {}",
            mode.describe(),
            if group_mode() {
                "1 listed, 999 members of a client group (--group)"
            } else {
                "1,000 listed"
            }
        );
    }
    let transport = Transport::prepare(mode)?;
    if let Some(took) = transport.certs_took {
        println!(
            "fanout: CA, coordinator, admin and {} node certificates made in {:.0} ms",
            shape.agents(),
            took.as_secs_f64() * 1e3
        );
    }
    if std::time::Instant::now() >= deadline {
        bail!("the overall {deadline_secs}s deadline passed");
    }

    // The coordinator starts first, so it inherits the limit a real deployment would give it, not
    // the one this process raises for its 1,003 client sockets.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    let coordinator = Coordinator::start(soft, hard, &transport)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    println!(
        "fanout: bench process RLIMIT_NOFILE soft {soft} -> {hard}; coordinator pid {} on {} ({})",
        coordinator.pid(),
        coordinator.address,
        coordinator.nofile_note
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
        let deadline = Instant::from_std(deadline);
        tokio::time::timeout_at(deadline, measure(&coordinator, &transport, deadline))
            .await
            .unwrap_or_else(|_| bail!("the overall {deadline_secs}s deadline passed"))
    });
    // Peak memory is read after the run and before the kill.
    let memory = read_memory(coordinator.pid());
    let coordinator_log = coordinator.log_tail();
    drop(coordinator);
    // Dropping the runtime ends the agents' tasks and closes their connections.
    drop(runtime);

    let figures = match result {
        Ok(figures) => figures,
        Err(error) => {
            eprintln!("fanout: the coordinator's last log lines:\n{coordinator_log}");
            return Err(error);
        }
    };
    print_report(&transport, &figures, &memory?);
    Ok(())
}

// -------------------------------------------------------------------------------------------
// Mutual TLS or plaintext

/// How the agents and the admin client talk to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The product's default: every connection authenticated both ways.
    MutualTls,
    /// `[tls] insecure = true` on loopback, to see what TLS costs.
    Plaintext,
}

impl Mode {
    /// The mode and the number of clusters. `--tls` / `--plaintext` after `--` win over
    /// `FANOUT_TLS` (`1`/`0`); the default is TLS. `--clusters N` wins over `FANOUT_CLUSTERS=N`;
    /// the default is 1. `--bench`, which `cargo bench` passes to every bench, is ignored.
    fn from_args_and_env() -> anyhow::Result<(Mode, usize)> {
        let mut mode = match std::env::var("FANOUT_TLS").as_deref() {
            Err(_) | Ok("") | Ok("1") | Ok("true") | Ok("yes") => Mode::MutualTls,
            Ok("0") | Ok("false") | Ok("no") => Mode::Plaintext,
            Ok(other) => bail!("FANOUT_TLS={other:?}: use 1 (mutual TLS, the default) or 0"),
        };
        let mut clusters = match std::env::var("FANOUT_CLUSTERS").as_deref() {
            Err(_) | Ok("") => 1,
            Ok(value) => parse_clusters(value).context("FANOUT_CLUSTERS")?,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => {}
                "--tls" => mode = Mode::MutualTls,
                "--plaintext" => mode = Mode::Plaintext,
                "--group" => {}
                "--clusters" => {
                    let value = args
                        .next()
                        .context("--clusters needs a number, e.g. --clusters 20")?;
                    clusters = parse_clusters(&value).context("--clusters")?;
                }
                other => match other.strip_prefix("--clusters=") {
                    Some(value) => clusters = parse_clusters(value).context("--clusters")?,
                    None => bail!(
                        "unknown argument {other:?}: use --tls (the default), --plaintext, \
                         --group or --clusters N"
                    ),
                },
            }
        }
        Ok((mode, clusters))
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::MutualTls => {
                "mutual TLS (the default; each agent presents its own node certificate)"
            }
            Mode::Plaintext => "PLAINTEXT ([tls] insecure = true; FANOUT_TLS=0 or --plaintext)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Mode::MutualTls => "mtls",
            Mode::Plaintext => "plaintext",
        }
    }
}

/// A number of clusters: 1 to [`MAX_CLUSTERS`].
fn parse_clusters(value: &str) -> anyhow::Result<usize> {
    let clusters: usize = value
        .trim()
        .parse()
        .with_context(|| format!("{value:?} is not a number of clusters"))?;
    if !(1..=MAX_CLUSTERS).contains(&clusters) {
        bail!("{clusters} clusters: use 1 to {MAX_CLUSTERS}");
    }
    Ok(clusters)
}

/// The mode, and for mutual TLS the certificate directory `kreachctl certs init` would write.
struct Transport {
    mode: Mode,
    certs: Option<tempfile::TempDir>,
    certs_took: Option<Duration>,
}

impl Transport {
    fn prepare(mode: Mode) -> anyhow::Result<Transport> {
        if mode == Mode::Plaintext {
            return Ok(Transport {
                mode,
                certs: None,
                certs_took: None,
            });
        }
        let started = std::time::Instant::now();
        let certs = tempfile::tempdir().context("creating the certificate directory")?;
        // The coordinator's certificate names the address the agents dial, as an operator's would.
        let coordinator_names = ["127.0.0.1".to_string(), "localhost".to_string()];
        let nodes: Vec<String> = (0..shape().agents()).map(node_name).collect();
        tls::init_certs(certs.path(), &coordinator_names, &nodes, 1, false)
            .context("making the certificates")?;
        Ok(Transport {
            mode,
            certs: Some(certs),
            certs_took: Some(started.elapsed()),
        })
    }

    fn certs_dir(&self) -> Option<PathBuf> {
        self.certs.as_ref().map(|dir| dir.path().to_path_buf())
    }

    fn url(&self, address: SocketAddr) -> String {
        match self.mode {
            Mode::MutualTls => format!("https://{address}"),
            Mode::Plaintext => format!("http://{address}"),
        }
    }

    /// The coordinator config's `[tls]` table.
    fn coordinator_tls_table(&self) -> String {
        match self.certs_dir() {
            None => "[tls]\ninsecure = true\n".to_string(),
            Some(dir) => format!(
                "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                dir.join(tls::CA_CERT_FILE),
                dir.join(tls::COORDINATOR_CERT_FILE),
                dir.join(tls::COORDINATOR_KEY_FILE),
            ),
        }
    }

    /// The admin client, as `kreachctl` connects (with the admin certificate under TLS).
    async fn admin(&self, address: SocketAddr) -> anyhow::Result<AdminServiceClient<Channel>> {
        Connection {
            url: self.url(address),
            certs: self.certs_dir().unwrap_or_default(),
            insecure: self.mode == Mode::Plaintext,
            cluster: String::new(),
        }
        .admin()
        .await
        .context("connecting the admin client")
    }
}

// -------------------------------------------------------------------------------------------
// The spec

/// One cluster: `kafka-1`.., `c0000`..; several: `k07-kafka-1`.., `k07-c0000`.. (unique across
/// the clusters).
fn node_name(index: usize) -> String {
    let shape = shape();
    let (cluster, local) = shape.place(index);
    let prefix = if shape.multi() {
        format!("k{cluster:02}-")
    } else {
        String::new()
    };
    if local < shape.brokers {
        format!("{prefix}kafka-{}", local + 1)
    } else {
        format!("{prefix}c{:04}", local - shape.brokers)
    }
}

/// One cluster: `fanout-bench`; several: `fanout-k00`, `fanout-k01`, ...
fn cluster_name(cluster: usize) -> String {
    if shape().multi() {
        format!("fanout-k{cluster:02}")
    } else {
        "fanout-bench".to_string()
    }
}

/// The label value a cluster's client group selects its members by (`--group`).
fn group_label(cluster: usize) -> String {
    if shape().multi() {
        format!("fanout-client-k{cluster:02}")
    } else {
        "fanout-client".to_string()
    }
}

/// The cluster: brokers advertise hostnames (so every client gets hosts entries) on 0.0.0.0;
/// `subnet` is the third octet of the brokers' private addresses, the only thing that changes.
/// `--group` or `FANOUT_GROUP=1`: clients after the first enrol through a client group.
fn group_mode() -> bool {
    static GROUP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GROUP.get_or_init(|| {
        std::env::args().any(|arg| arg == "--group")
            || matches!(
                std::env::var("FANOUT_GROUP").as_deref(),
                Ok("1") | Ok("true")
            )
    })
}

/// The spec of cluster `cluster` (0 when there is one). Broker private addresses repeat across
/// clusters: nothing dials them.
fn spec_toml(cluster: usize, subnet: u8) -> String {
    let shape = shape();
    let name = cluster_name(cluster);
    let agents = shape.agents_of(cluster);
    let mut spec = format!(
        "[cluster]\nname = \"{name}\"\nmetadata = \"kraft\"\n\n\
         [listeners.internal]\nname = \"INTERNAL\"\nport = 9092\nadvertise = \"hostname\"\n\n\
         [rollout]\nmax_unavailable = 1\nhealth_timeout = \"60s\"\nsettle = \"0s\"\n",
    );
    for broker in 1..=shape.brokers {
        let node = node_name(agents.start + broker - 1);
        spec.push_str(&format!(
            "\n[[broker]]\nid = {broker}\nnode = \"{node}\"\n\
             hostname = \"{node}.{name}\"\n\
             private_ip = \"198.18.{subnet}.{}\"\npublic_ip = \"198.19.0.{}\"\n",
            10 + broker,
            10 + broker
        ));
    }
    let listed = if group_mode() { 1 } else { shape.clients };
    for client in 0..listed {
        let node = node_name(agents.start + shape.brokers + client);
        spec.push_str(&format!(
            "\n[[client]]\nnode = \"{node}\"\nview = \"private\"\n"
        ));
    }
    if group_mode() {
        spec.push_str(&format!(
            "\n[[client_group]]\nname = \"fanout\"\nlabels = {{ role = \"{}\" }}\n",
            group_label(cluster)
        ));
    }
    spec
}

// -------------------------------------------------------------------------------------------
// The coordinator process

struct Coordinator {
    child: Child,
    address: SocketAddr,
    nofile_note: String,
    log: Arc<Mutex<VecDeque<String>>>,
    _state_dir: tempfile::TempDir,
}

impl Coordinator {
    fn start(
        inherited_soft: u64,
        inherited_hard: u64,
        transport: &Transport,
    ) -> anyhow::Result<Coordinator> {
        let binary = Path::new(env!("CARGO_BIN_EXE_kreach-coordinator"));
        let state_dir = tempfile::tempdir().context("creating the state directory")?;
        let config = state_dir.path().join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n\n{}",
                state_dir.path().join("state"),
                transport.coordinator_tls_table()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;

        // KREACH_BENCH_COORDINATOR_NOFILE=N starts the coordinator under `prlimit --nofile=N:N`,
        // e.g. 1024 to see what a default soft limit does to it.
        let forced: Option<u64> = std::env::var("KREACH_BENCH_COORDINATOR_NOFILE")
            .ok()
            .map(|value| value.parse())
            .transpose()
            .context("KREACH_BENCH_COORDINATOR_NOFILE must be a number")?;
        let prlimit = find_in_path("prlimit");
        let wanted = match forced {
            Some(limit) => Some(limit),
            None if inherited_hard < coordinator_files_needed() => Some(PRLIMIT_NOFILE),
            None => None,
        };
        let (mut command, nofile_note) = match (wanted, &prlimit) {
            (None, _) => (
                Command::new(binary),
                format!("inherited RLIMIT_NOFILE {inherited_soft}:{inherited_hard}"),
            ),
            (Some(limit), Some(prlimit)) => {
                let mut command = Command::new(prlimit);
                command.arg(format!("--nofile={limit}:{limit}")).arg(binary);
                (
                    command,
                    format!("started under prlimit --nofile={limit}:{limit}"),
                )
            }
            (Some(limit), None) => {
                println!(
                    "fanout: WARNING: the coordinator gets RLIMIT_NOFILE hard {inherited_hard} \
                     (needs ~{}) and there is no prlimit to give it {limit}; \
                     it may refuse connections",
                    coordinator_files_needed()
                );
                (
                    Command::new(binary),
                    format!("inherited RLIMIT_NOFILE {inherited_soft}:{inherited_hard}, TOO LOW"),
                )
            }
        };
        let mut child = command
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;

        // One thread drains stderr for the whole run (a full pipe would stall the coordinator),
        // hands over the listen address, and keeps the last lines for error reports.
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                use std::io::BufRead;
                let marker = "kreach-coordinator listening on ";
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split(marker).nth(1) {
                        let address = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = address_sender.send(address);
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == 40 {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let mut coordinator = Coordinator {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            nofile_note,
            log,
            _state_dir: state_dir,
        };
        let address = address_receiver
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| {
                anyhow::anyhow!(
                    "the coordinator did not log its listen address within 20s:\n{}",
                    coordinator.log_tail()
                )
            })?;
        coordinator.address = address
            .parse()
            .with_context(|| format!("the coordinator logged an unparsable address {address:?}"))?;
        // What it runs with, after raising its own soft limit (before it logged the address).
        let limits_path = format!("/proc/{}/limits", coordinator.pid());
        if let Some(line) = std::fs::read_to_string(&limits_path)
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find(|l| l.starts_with("Max open files"))
                    .map(str::to_string)
            })
        {
            let values: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
            coordinator.nofile_note += &format!("; running with {}", values.join(":"));
        }
        if !coordinator.address.ip().is_loopback() {
            bail!(
                "the coordinator listens on {}, not loopback",
                coordinator.address
            );
        }
        Ok(coordinator)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // SIGKILL to this pid only (prlimit execs the coordinator, so the pid is the same).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

struct Memory {
    peak_kib: u64,
    resident_kib: u64,
}

fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("{path} has no {name} line"))
    };
    Ok(Memory {
        peak_kib: field("VmHWM:")?,
        resident_kib: field("VmRSS:")?,
    })
}

// -------------------------------------------------------------------------------------------
// The simulated agents

enum AgentEvent {
    Subscribed,
    Received {
        agent: usize,
        generation: u64,
        at: Instant,
        /// For generation 2: whether the hosts entries carry the brokers' new addresses.
        has_new_addresses: bool,
    },
    Reported {
        agent: usize,
        generation: u64,
        at: Instant,
    },
    Failed {
        agent: usize,
        error: String,
    },
}

/// Where the simulated agents connect, and with what.
struct AgentTarget {
    url: String,
    /// The `kreachctl certs init` directory under mutual TLS; none in plaintext.
    certs: Option<PathBuf>,
}

impl AgentTarget {
    /// The agent's endpoint. The agent crate builds its own in a private function
    /// (`kreach_agent::client`), so this repeats what it does there: the shared loader
    /// `kreach_runtime::tls::load_tls_files` read at every connect, then the CA, the node's own
    /// certificate and key, and the URL's host as the name to verify.
    fn endpoint(&self, node: &str) -> Result<Endpoint, String> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| format!("endpoint {}: {e}", self.url))?
            .connect_timeout(Duration::from_secs(10));
        if let Some(certs) = &self.certs {
            let (cert, key) = tls::node_cert_paths(certs, node);
            let files = tls::load_tls_files(&certs.join(tls::CA_CERT_FILE), &cert, &key)
                .map_err(|e| e.to_string())?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&files.ca_pem))
                .identity(Identity::from_pem(&files.cert_pem, &files.key_pem))
                .domain_name("127.0.0.1");
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS config: {e}"))?;
        }
        Ok(endpoint)
    }
}

async fn run_agent(
    agent: usize,
    target: Arc<AgentTarget>,
    connect_permits: Arc<Semaphore>,
    events: mpsc::UnboundedSender<AgentEvent>,
) {
    if let Err(error) = agent_loop(agent, &target, connect_permits, &events).await {
        let _ = events.send(AgentEvent::Failed { agent, error });
    }
}

async fn agent_loop(
    agent: usize,
    target: &AgentTarget,
    connect_permits: Arc<Semaphore>,
    events: &mpsc::UnboundedSender<AgentEvent>,
) -> Result<(), String> {
    let node = node_name(agent);
    let permit = connect_permits
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    // Its own connection (and, under TLS, its own handshake with its own certificate): one
    // Endpoint::connect per agent, as separate agent hosts would have.
    let channel = target
        .endpoint(&node)?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
    let (cluster, local) = shape().place(agent);
    if group_mode() && local > shape().brokers {
        // A group member is selected by the labels of its host facts.
        client
            .report_facts(pb::HostFacts {
                node: node.clone(),
                agent_version: "fanout-bench".to_string(),
                labels: [("role".to_string(), group_label(cluster))].into(),
                ..Default::default()
            })
            .await
            .map_err(|status| format!("report_facts: {status}"))?;
    }
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            node: node.clone(),
            applied: None,
            agent_version: "fanout-bench".to_string(),
        })
        .await
        .map_err(|status| format!("subscribe: {status}"))?
        .into_inner();
    drop(permit);
    let _ = events.send(AgentEvent::Subscribed);

    for _ in 0..MAX_RELEASES_PER_AGENT {
        let release = match stream.message().await {
            Ok(Some(release)) => release,
            Ok(None) => return Err("the coordinator ended the release stream".to_string()),
            Err(status) => return Err(format!("release stream: {status}")),
        };
        let at = Instant::now();
        let id = release
            .id
            .ok_or_else(|| "a release without an id".to_string())?;
        // Its report names the release's cluster, as the agent's does.
        let release_cluster = release
            .spec
            .as_ref()
            .map(|spec| spec.cluster.clone())
            .unwrap_or_default();
        let has_new_addresses = release.spec.as_ref().is_some_and(|spec| {
            spec.hosts_entries
                .iter()
                .filter(|entry| entry.ip.starts_with("198.18.1."))
                .count()
                == shape().brokers
        });
        let _ = events.send(AgentEvent::Received {
            agent,
            generation: id.generation,
            at,
            has_new_addresses,
        });
        client
            .report_status(pb::NodeStatus {
                node: node.clone(),
                release: Some(id),
                phase: pb::Phase::Converged as i32,
                cluster: release_cluster,
                ..Default::default()
            })
            .await
            .map_err(|status| format!("report_status: {status}"))?;
        let _ = events.send(AgentEvent::Reported {
            agent,
            generation: id.generation,
            at: Instant::now(),
        });
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// The measurement

/// What one generation's rollout looked like from outside.
struct GenerationFigures {
    steps: Vec<pb::PlannedStep>,
    /// When the Apply call was sent.
    apply_sent: Instant,
    apply_call: Duration,
    /// Per agent of the cluster, ms from the Apply call returning to the first release of this
    /// generation (negative: it arrived before the Apply response did).
    received_ms: Vec<f64>,
    /// Per agent of the cluster, ms from the Apply call returning to the coordinator
    /// acknowledging (the ReportStatus call returning) that agent's CONVERGED report of this
    /// generation; for an agent with several releases in the generation, its last one seen.
    reported_ms: Vec<f64>,
    /// The Watch stream showing this generation completed, ms since Apply returned.
    completed_ms: f64,
    wrong_addresses: usize,
    /// The agents of other clusters that received a release after the Apply call was sent.
    other_cluster_agents: BTreeSet<usize>,
}

struct Figures {
    connect: Duration,
    online: usize,
    coordinator_open_files: Option<usize>,
    /// Generation 1 of the measured cluster (the first one).
    first: GenerationFigures,
    /// Several clusters: generation 1 of every cluster, one after the other, from the first Plan
    /// call to the last rollout completed.
    first_all: Duration,
    measured: GenerationFigures,
}

/// Several clusters: after the measured rollout completed, how long to go on watching for
/// releases to the other clusters' agents (a stray one could come a moment later).
const OTHER_CLUSTERS_LINGER: Duration = Duration::from_secs(1);

async fn measure(
    coordinator: &Coordinator,
    transport: &Transport,
    deadline: Instant,
) -> anyhow::Result<Figures> {
    let shape = shape();
    let total = shape.agents();
    let address = coordinator.address;
    let target = Arc::new(AgentTarget {
        url: transport.url(address),
        certs: transport.certs_dir(),
    });
    let (sender, mut events) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut agents = JoinSet::new();

    let connect_started = Instant::now();
    for agent in 0..total {
        agents.spawn(run_agent(
            agent,
            Arc::clone(&target),
            Arc::clone(&permits),
            sender.clone(),
        ));
    }
    drop(sender);
    let mut subscribed = 0;
    while subscribed < total {
        match events.recv().await {
            Some(AgentEvent::Subscribed) => subscribed += 1,
            Some(AgentEvent::Failed { agent, error }) => bail!(
                "agent {} failed after {subscribed}/{total} had subscribed: {error}",
                node_name(agent)
            ),
            Some(_) => {}
            None => bail!("every agent task ended"),
        }
    }
    let connect = connect_started.elapsed();
    println!(
        "fanout: {total} agents subscribed in {:.0} ms",
        connect.as_secs_f64() * 1e3
    );

    let mut admin = transport.admin(address).await?;
    // Before the first apply every agent is with the coordinator's home core, which this asks.
    let status = admin
        .status(pb::StatusRequest::default())
        .await
        .context("Status")?
        .into_inner();
    let online = status.nodes.iter().filter(|node| node.online).count();
    let coordinator_open_files = std::fs::read_dir(format!("/proc/{}/fd", coordinator.pid()))
        .ok()
        .map(|entries| entries.count());

    let first_started = Instant::now();
    let mut first = None;
    for cluster in 0..shape.clusters {
        let name = cluster_name(cluster);
        let figures = rollout(
            &mut admin,
            &mut events,
            &name,
            shape.agents_of(cluster),
            1,
            &spec_toml(cluster, 0),
            deadline,
        )
        .await
        .with_context(|| {
            if shape.multi() {
                format!("generation 1 of {name} (first apply)")
            } else {
                "generation 1 (first apply)".to_string()
            }
        })?;
        first.get_or_insert(figures);
    }
    let first_all = first_started.elapsed();
    let first = first.context("no cluster")?;
    if shape.multi() {
        println!(
            "fanout: generation 1 of all {} clusters applied and completed in {:.0} ms",
            shape.clusters,
            first_all.as_secs_f64() * 1e3
        );
    }

    let measured_agents = shape.agents_of(0);
    let mut measured = rollout(
        &mut admin,
        &mut events,
        &cluster_name(0),
        measured_agents.clone(),
        2,
        &spec_toml(0, 1),
        deadline,
    )
    .await
    .context("generation 2 (the brokers' private addresses move)")?;
    if shape.multi() {
        // A release to another cluster's agent could follow a moment after the rollout
        // completed: watch a little longer (bounded by the deadline too).
        let until = (Instant::now() + OTHER_CLUSTERS_LINGER).min(deadline);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(AgentEvent::Received { agent, at, .. })
                        if !measured_agents.contains(&agent) && at >= measured.apply_sent =>
                    {
                        measured.other_cluster_agents.insert(agent);
                    }
                    Some(AgentEvent::Failed { agent, error }) => {
                        bail!("agent {} failed: {error}", node_name(agent))
                    }
                    Some(_) => {}
                    None => bail!("every agent task ended"),
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
    }
    agents.abort_all();
    Ok(Figures {
        connect,
        online,
        coordinator_open_files,
        first,
        first_all,
        measured,
    })
}

/// Plan and apply `spec` (cluster `cluster`'s) as `generation`, then wait until each of the
/// cluster's agents (`agents`, by index) has its release and the coordinator's status of that
/// cluster shows the rollout completed. The events of other agents are ignored, failures
/// aside; those of them that received a release after Apply was sent are counted.
async fn rollout(
    admin: &mut AdminServiceClient<Channel>,
    events: &mut mpsc::UnboundedReceiver<AgentEvent>,
    cluster: &str,
    agents: Range<usize>,
    generation: u64,
    spec: &str,
    deadline: Instant,
) -> anyhow::Result<GenerationFigures> {
    let multi = shape().multi();
    let plan = admin
        .plan(pb::PlanRequest {
            spec_toml: spec.to_string(),
            force: false,
        })
        .await
        .context("Plan")?
        .into_inner();
    if multi {
        println!("fanout: {cluster} generation {generation} plan:");
    } else {
        println!("fanout: generation {generation} plan:");
    }
    for step in &plan.steps {
        println!(
            "  step {}: {:<18} {:>4} node(s){}",
            step.index,
            step.kind,
            step.nodes.len(),
            if step.restarts { "  RESTARTS" } else { "" }
        );
    }
    // One cluster: the coordinator's only one (no name needed, before the first apply too).
    let watch_request = pb::StatusRequest {
        cluster: if multi {
            cluster.to_string()
        } else {
            String::new()
        },
    };
    // A cluster's first spec makes it: until then there is nothing of it to watch, so then the
    // Watch opens right after the Apply (it starts with the status as it is by then).
    let watch = match admin.watch(watch_request.clone()).await {
        Ok(response) => Some(response.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound && generation == 1 => None,
        Err(status) => return Err(status).context("Watch"),
    };

    let apply_sent = Instant::now();
    let applied = admin
        .apply(pb::ApplyRequest {
            spec_toml: spec.to_string(),
            force: false,
        })
        .await
        .context("Apply")?
        .into_inner();
    let apply_returned = Instant::now();
    if applied.generation != generation {
        bail!(
            "the coordinator applied generation {} of {cluster}, expected {generation}",
            applied.generation
        );
    }
    let mut watch = match watch {
        Some(watch) => watch,
        None => admin
            .watch(watch_request)
            .await
            .context("Watch")?
            .into_inner(),
    };
    let since = |at: Instant| -> f64 {
        if at >= apply_returned {
            (at - apply_returned).as_secs_f64() * 1e3
        } else {
            -(apply_returned - at).as_secs_f64() * 1e3
        }
    };

    let count = agents.len();
    let mut received: Vec<Option<Instant>> = vec![None; count];
    let mut received_count = 0;
    let mut reported: Vec<Option<Instant>> = vec![None; count];
    let mut reported_count = 0;
    let mut wrong_addresses = 0;
    let mut other_cluster_agents = BTreeSet::new();
    let mut completed: Option<Instant> = None;
    let mut last_state = String::new();
    // Until every agent had its release and its report acknowledged, and the status shows the
    // rollout completed (the coordinator may complete it a moment before the last acks arrive).
    while received_count < count || reported_count < count || completed.is_none() {
        tokio::select! {
            event = events.recv() => match event {
                Some(AgentEvent::Received { agent, at, .. }) if !agents.contains(&agent) => {
                    if at >= apply_sent {
                        other_cluster_agents.insert(agent);
                    }
                }
                Some(AgentEvent::Received { agent, generation: g, at, has_new_addresses })
                    if g == generation && received[agent - agents.start].is_none() =>
                {
                    received[agent - agents.start] = Some(at);
                    received_count += 1;
                    if generation == 2 && !has_new_addresses {
                        wrong_addresses += 1;
                    }
                }
                Some(AgentEvent::Reported { agent, generation: g, at })
                    if g == generation && agents.contains(&agent) =>
                {
                    if reported[agent - agents.start].replace(at).is_none() {
                        reported_count += 1;
                    }
                }
                Some(AgentEvent::Failed { agent, error }) => {
                    bail!("agent {} failed: {error}", node_name(agent))
                }
                Some(_) => {}
                None => bail!("every agent task ended"),
            },
            message = watch.message(), if completed.is_none() => {
                let status = message
                    .context("Watch stream")?
                    .context("the coordinator ended the Watch stream")?;
                if let Some(view) = &status.rollout {
                    last_state = format!("generation {} {}", view.generation, view.state);
                    if view.generation == generation && view.state == "completed" {
                        completed = Some(Instant::now());
                    } else if view.generation == generation
                        && matches!(view.state.as_str(), "paused" | "aborted")
                    {
                        bail!("the rollout is {} at node {:?}: {}", view.state,
                            view.paused_node, view.paused_reason);
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => bail!(
                "deadline: {received_count}/{count} agents had the release, \
                 {reported_count}/{count} had their report acknowledged; coordinator: {last_state}"
            ),
        }
    }
    let completed = completed.expect("loop ends only when completed");
    Ok(GenerationFigures {
        steps: plan.steps,
        apply_sent,
        apply_call: apply_returned - apply_sent,
        received_ms: received.into_iter().flatten().map(since).collect(),
        reported_ms: reported.into_iter().flatten().map(since).collect(),
        completed_ms: since(completed),
        wrong_addresses,
        other_cluster_agents,
    })
}

// -------------------------------------------------------------------------------------------
// The report

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and max of some latencies.
struct Spread {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Spread {
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            max: percentile(&sorted, 1.0),
        }
    }
}

fn print_report(transport: &Transport, figures: &Figures, memory: &Memory) {
    let generation = &figures.measured;
    let received = Spread::of(&generation.received_ms);
    let reported = Spread::of(&generation.reported_ms);
    let peak_mib = memory.peak_kib as f64 / 1024.0;
    let target_p99_ms = TARGET_P99.as_secs_f64() * 1e3;
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    let restarts = generation.steps.iter().any(|step| step.restarts);
    let shape = shape();
    let total = shape.agents();
    // The measured cluster's agents (all of them when there is one cluster).
    let measured_agents = shape.per_cluster();

    println!();
    if shape.multi() {
        println!(
            "fanout: {} clusters × ({} clients + {} brokers) = {total} agents; \
             hosts-only change of one cluster (its {measured_agents} agents)",
            shape.clusters, shape.clients, shape.brokers
        );
    } else {
        println!(
            "fanout: {} clients + {} brokers, hosts-only change (brokers' private_ip moved)",
            shape.clients, shape.brokers
        );
    }
    println!("  mode: {}", transport.mode.describe());
    println!(
        "  measured plan: {}{}",
        generation
            .steps
            .iter()
            .map(|step| format!("{} ({} nodes)", step.kind, step.nodes.len()))
            .collect::<Vec<_>>()
            .join(", "),
        if restarts {
            "  -- UNEXPECTED: a step restarts brokers"
        } else {
            "  -- no broker restart"
        }
    );
    println!("  {:<52} {:>12}  {:>10}", "figure", "measured", "target");
    let row = |name: &str, value: String, target: &str| {
        println!("  {name:<52} {value:>12}  {target:>10}");
    };
    row(
        "agents connected + subscribed",
        format!("{}/{total}", figures.online),
        "",
    );
    row(
        "  connecting took (ms, all agents)",
        format!("{:.0}", figures.connect.as_secs_f64() * 1e3),
        "",
    );
    row(
        "Apply call (ms, sent -> returned)",
        format!("{:.1}", generation.apply_call.as_secs_f64() * 1e3),
        "",
    );
    row(
        "agents with the new release",
        format!("{}/{measured_agents}", generation.received_ms.len()),
        "",
    );
    row(
        "  release received p50 (ms since Apply returned)",
        format!("{:.1}", received.p50),
        "",
    );
    row(
        "  release received p99 (ms since Apply returned)",
        format!("{:.1}", received.p99),
        "",
    );
    row(
        "  release received max (ms since Apply returned)",
        format!("{:.1}", received.max),
        "",
    );
    row(
        "  releases missing the new addresses",
        generation.wrong_addresses.to_string(),
        "0",
    );
    row(
        "agents whose CONVERGED report was acked",
        format!("{}/{measured_agents}", generation.reported_ms.len()),
        "",
    );
    row(
        "  report acked p50 (ms since Apply returned)",
        format!("{:.1}", reported.p50),
        "",
    );
    row(
        "  report acked p99 (ms since Apply returned)",
        format!("{:.1}", reported.p99),
        &format!(
            "< {target_p99_ms:.0} {}",
            verdict(reported.p99 < target_p99_ms)
        ),
    );
    row(
        "  report acked max (ms since Apply returned)",
        format!("{:.1}", reported.max),
        "",
    );
    row(
        "  all reports acked (ms since Apply was SENT)",
        format!(
            "{:.1}",
            reported.max + generation.apply_call.as_secs_f64() * 1e3
        ),
        "",
    );
    row(
        "status: rollout completed (ms since Apply returned)",
        format!("{:.1}", generation.completed_ms),
        "",
    );
    if shape.multi() {
        let others = generation.other_cluster_agents.len();
        row(
            "agents of other clusters that got a release",
            format!("{others}/{}", total - measured_agents),
            &format!("0 {}", verdict(others == 0)),
        );
    }
    // The memory target is the 1,000-agent run's; several clusters report their figure only.
    let memory_target = if shape.clusters == 1 {
        format!(
            "< {TARGET_MEMORY_MIB:.0} {}",
            verdict(peak_mib < TARGET_MEMORY_MIB)
        )
    } else {
        String::new()
    };
    row(
        "coordinator VmHWM (MiB, after the run)",
        format!("{peak_mib:.1}"),
        &memory_target,
    );
    row(
        "  coordinator VmRSS at the end (MiB)",
        format!("{:.1}", memory.resident_kib as f64 / 1024.0),
        "",
    );
    if let Some(files) = figures.coordinator_open_files {
        row(
            "  coordinator open fds with all agents connected",
            files.to_string(),
            "",
        );
    }
    let first = &figures.first;
    row(
        if shape.multi() {
            "(gen 1 of this cluster) report p99 / completed (ms)"
        } else {
            "(gen 1, first apply) report p99 / completed (ms)"
        },
        format!(
            "{:.0} / {:.0}",
            Spread::of(&first.reported_ms).p99,
            first.completed_ms
        ),
        "",
    );
    if shape.multi() {
        row(
            "(gen 1 of all clusters, one after the other) (ms)",
            format!("{:.0}", figures.first_all.as_secs_f64() * 1e3),
            "",
        );
    }
    let clusters_note = if shape.multi() {
        format!(
            " clusters={} other_cluster_agents_released={}",
            shape.clusters,
            generation.other_cluster_agents.len()
        )
    } else {
        String::new()
    };
    // One line per run, for collecting several runs.
    println!(
        "fanout: summary mode={} connect_ms={:.0} apply_call_ms={:.1} \
         received_ms(p50/p99/max)={:.1}/{:.1}/{:.1} reported_ms(p50/p99/max)={:.1}/{:.1}/{:.1} \
         completed_ms={:.1} vmhwm_mib={peak_mib:.1}{clusters_note}",
        transport.mode.short(),
        figures.connect.as_secs_f64() * 1e3,
        generation.apply_call.as_secs_f64() * 1e3,
        received.p50,
        received.p99,
        received.max,
        reported.p50,
        reported.p99,
        reported.max,
        generation.completed_ms,
    );
}
