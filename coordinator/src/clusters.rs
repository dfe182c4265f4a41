//! Several Kafka clusters behind one coordinator: one [`Core`] per cluster, each with its own
//! store, generations, rollouts, history and Kafka CA, and which cluster each agent belongs to.
//!
//! Owns: the cores (by the cluster name of their newest spec), the choice of the core an admin
//! request is about (`--cluster`, or the only one), and each agent's place: the cluster whose
//! spec lists it, or whose client group selects it, or that last released to it; agents no
//! cluster claims stay with the home core. An agent's release stream is the hub's, fed from the
//! core it belongs to, so an agent that moves (a spec now lists it, its labels now match a
//! group) keeps its stream and gets the new cluster's release on it.
//!
//! Does not own: rollouts, releases, agent records (each core's), the wire (the gRPC edge).
//!
//! Layout on disk: the home core is the state directory itself (`coordinator.redb`, as every
//! install before several clusters had it: nothing moves on upgrade); each further cluster is
//! `clusters/NAME/` under it. The home core takes the first spec applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kreach_domain::clock::Clock;
use kreach_domain::report::{AgentHealth, HostFacts, NodeReport};
use kreach_domain::spec::ClusterSpec;
use kreach_proto as pb;
use tokio::sync::watch;

use crate::core::{Core, CoreError, DEFAULT_MAX_AGENTS};
use crate::writer::ReportWriter;

/// Where the cores of further clusters live, under the state directory.
pub const CLUSTERS_DIR: &str = "clusters";

/// The home core's index in [`Clusters::cores`].
const HOME: usize = 0;

/// What an agent's release stream carries: the latest release of every cluster it is attached
/// to, each with a number that changes whenever that release changes or is sent again (a
/// nudge), and the names of those clusters (stamped on every release sent, so that the agent
/// drops the clusters it no longer belongs to).
#[derive(Debug, Clone, Default)]
pub struct Releases {
    pub clusters: Vec<String>,
    pub by_core: BTreeMap<usize, (u64, pb::Release)>,
}

impl Releases {
    /// The releases not sent yet according to `sent` (the numbers last sent, by core), which
    /// is brought up to date; each stamped with the clusters attached.
    pub fn unsent(&self, sent: &mut BTreeMap<usize, u64>) -> Vec<pb::Release> {
        sent.retain(|core, _| self.by_core.contains_key(core));
        self.by_core
            .iter()
            .filter(|(core, (seq, _))| sent.insert(**core, *seq) != Some(*seq))
            .map(|(_, (_, release))| pb::Release {
                clusters: self.clusters.clone(),
                ..release.clone()
            })
            .collect()
    }
}

/// Numbers for [`Releases`]: unique in the process, so a release sent again is never mistaken
/// for one already sent.
static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_seq() -> u64 {
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An agent's place: the cores it is attached to (its primary first: a broker's cluster, else
/// the first that claimed it), each keeping a record of it and feeding its release stream.
struct Agent {
    cores: Vec<usize>,
    /// Its release stream, fed from each core's channel by `forwards`.
    out: Arc<watch::Sender<Releases>>,
    /// Release streams open now.
    connections: u32,
    forwards: BTreeMap<usize, tokio::task::JoinHandle<()>>,
}

pub struct Clusters {
    state_dir: PathBuf,
    root: crate::store::StoreRoot,
    clock: Arc<dyn Clock>,
    max_agents: usize,
    /// `cores[HOME]` is the home core; the others have a spec (or are being planned for the
    /// first time).
    cores: Vec<Core>,
    /// The cluster name each core was opened for (None: the home core), for a core planned but
    /// not applied yet, which has no spec to say it.
    pending: Vec<Option<String>>,
    agents: BTreeMap<String, Agent>,
    /// Every core's status channel, for the metrics endpoint.
    feeds: crate::metrics::StatusFeeds,
}

/// The clusters a redb state directory keeps beside its home store: the directories under
/// `clusters/` that hold a store, by name, sorted.
pub fn redb_cluster_names(state_dir: &Path) -> Result<Vec<String>, CoreError> {
    let dir = state_dir.join(CLUSTERS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|error| io_error(&dir, &error))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join(crate::core::STORE_FILE).is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

impl Clusters {
    /// Open the home core at `state_dir` and every cluster under `state_dir/clusters/`.
    pub fn open(state_dir: &Path, clock: Arc<dyn Clock>) -> Result<Clusters, CoreError> {
        Clusters::open_in(state_dir, crate::store::StoreRoot::Redb, clock)
    }

    /// [`Clusters::open`] with the stores `root` keeps: with etcd, the clusters are the ones its
    /// index lists (each with a local directory under `state_dir/clusters/` for its files).
    pub fn open_in(
        state_dir: &Path,
        root: crate::store::StoreRoot,
        clock: Arc<dyn Clock>,
    ) -> Result<Clusters, CoreError> {
        let mut cores = vec![Core::open_in(state_dir, &root, None, Arc::clone(&clock))?];
        let mut pending = vec![None];
        let dir = state_dir.join(CLUSTERS_DIR);
        let names = match &root {
            crate::store::StoreRoot::Etcd(handle) => handle.cluster_names().map_err(|message| {
                CoreError::Store(crate::store::StoreError::Io {
                    path: PathBuf::from(format!("etcd:{}/index/", handle.prefix())),
                    message,
                })
            })?,
            crate::store::StoreRoot::Redb => redb_cluster_names(state_dir)?,
        };
        for name in names {
            // With etcd, a directory of its own for the cluster's local files.
            let path = dir.join(&name);
            std::fs::create_dir_all(&path).map_err(|error| io_error(&path, &error))?;
            cores.push(Core::open_in(
                &path,
                &root,
                Some(&name),
                Arc::clone(&clock),
            )?);
            pending.push(Some(name));
        }
        let mut clusters = Clusters {
            state_dir: state_dir.to_path_buf(),
            root,
            clock,
            max_agents: DEFAULT_MAX_AGENTS,
            cores,
            pending,
            agents: BTreeMap::new(),
            feeds: Default::default(),
        };
        clusters
            .feeds_mut()
            .extend(clusters.cores.iter().map(Core::watch_status));
        // Where every known agent's records are: each store that keeps one is a cluster the
        // agent is attached to (checked again when it connects).
        for index in 0..clusters.cores.len() {
            let nodes: Vec<String> = clusters.cores[index].agent_nodes().cloned().collect();
            for node in nodes {
                match clusters.agents.get_mut(&node) {
                    Some(agent) => agent.cores.push(index),
                    None => {
                        clusters.agents.insert(node, Agent::new(index));
                    }
                }
            }
        }
        Ok(clusters)
    }

    /// A follower's copy of the store: every cluster's agents' connections as the leader stored
    /// them ([`Core::adopt_live`], `trust` as there). False when the leader's record is missing
    /// for any of them.
    pub fn adopt_live(&mut self, trust: bool) -> Result<bool, CoreError> {
        let mut known = true;
        for core in &mut self.cores {
            known &= core.adopt_live(trust)?;
        }
        Ok(known)
    }

    pub fn set_max_agents(&mut self, max_agents: usize) {
        self.max_agents = max_agents;
        for core in &mut self.cores {
            core.set_max_agents(max_agents);
        }
    }

    /// The names of the clusters this coordinator holds (those with a spec), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .cores
            .iter()
            .filter_map(|core| core.cluster_name().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// One line per cluster (those with a spec), by name, from each one's latest status.
    pub fn summaries(&self) -> pb::ClustersResponse {
        let mut clusters: Vec<pb::ClusterSummary> = self
            .cores
            .iter()
            .filter(|core| core.cluster_name().is_some())
            .map(|core| summary(&core.watch_status().borrow()))
            .collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        pb::ClustersResponse {
            clusters,
            ..Default::default()
        }
    }

    /// The core an admin request is about: the cluster it names, or the only one.
    pub fn core(&mut self, cluster: &str) -> Result<&mut Core, CoreError> {
        let index = self.index(cluster)?;
        Ok(&mut self.cores[index])
    }

    fn index(&self, cluster: &str) -> Result<usize, CoreError> {
        let named: Vec<usize> = (0..self.cores.len())
            .filter(|&index| self.cores[index].cluster_name().is_some())
            .collect();
        if cluster.is_empty() {
            return match named.as_slice() {
                [] => Ok(HOME),
                [only] => Ok(*only),
                _ => Err(CoreError::Refused(format!(
                    "this coordinator holds {} clusters ({}): say which with --cluster NAME",
                    named.len(),
                    self.names().join(", ")
                ))),
            };
        }
        named
            .into_iter()
            .find(|&index| self.cores[index].cluster_name() == Some(cluster))
            .ok_or_else(|| {
                let names = self.names();
                CoreError::NotFound(if names.is_empty() {
                    format!(
                        "no cluster {cluster:?}: no spec has been applied to this coordinator yet"
                    )
                } else {
                    format!(
                        "no cluster {cluster:?} on this coordinator; it holds: {}",
                        names.join(", ")
                    )
                })
            })
    }

    /// The core a spec is planned or applied on: its cluster's, the home core for the first
    /// spec, the cluster whose brokers are exactly this spec's (the cluster renamed), or a new
    /// core for a new cluster name. Refuses a spec whose broker is another cluster's broker (a
    /// host is a broker of one cluster; it may be a client of several). The agents it lists are
    /// attached to it first, so that the plan sees their facts (keys, controller).
    fn core_for_spec(&mut self, spec_toml: &str) -> Result<usize, CoreError> {
        let Ok(spec) = ClusterSpec::parse(spec_toml) else {
            // The core's own parse reports every problem.
            return Ok(self.index("").unwrap_or(HOME));
        };
        let name = Some(spec.name.as_str());
        let existing = (0..self.cores.len()).find(|&index| {
            let core = &self.cores[index];
            core.cluster_name() == name
                || (core.cluster_name().is_none() && self.pending[index].as_deref() == name)
        });
        let existing = existing
            .or_else(|| self.renamed(&spec))
            .or((self.cores[HOME].cluster_name().is_none()).then_some(HOME));
        for broker in &spec.brokers {
            let node = broker.node.as_str();
            let other = (0..self.cores.len())
                .find(|&other| Some(other) != existing && self.cores[other].lists_broker(node));
            if let Some(other) = other {
                return Err(CoreError::Refused(format!(
                    "node {node:?} is a broker in this spec and in cluster {:?}'s; a host is a broker of one cluster (it may be a client of several): drop it from that cluster first, or give a spec with exactly that cluster's brokers to rename it",
                    self.cores[other].cluster_name().unwrap_or_default()
                )));
            }
        }
        let index = match existing {
            Some(index) => index,
            None => self.new_core(&spec.name)?,
        };
        let listed = spec
            .brokers
            .iter()
            .map(|broker| &broker.node)
            .chain(spec.clients.iter().map(|client| &client.node));
        for node in listed {
            if self.agents.contains_key(node) {
                self.attach(node, index);
                self.stamp(node);
            }
        }
        Ok(index)
    }

    /// The cluster a spec of a new name renames: the one whose brokers are exactly its brokers.
    fn renamed(&self, spec: &ClusterSpec) -> Option<usize> {
        let brokers: std::collections::BTreeSet<&str> =
            spec.brokers.iter().map(|b| b.node.as_str()).collect();
        (0..self.cores.len()).find(|&index| {
            self.cores[index].spec().is_some_and(|theirs| {
                let theirs: std::collections::BTreeSet<&str> =
                    theirs.brokers.iter().map(|b| b.node.as_str()).collect();
                !theirs.is_empty() && theirs == brokers
            })
        })
    }

    /// Open a core for a new cluster under `clusters/NAME/` (`NAME.2`, ... when a renamed
    /// cluster keeps that directory).
    fn new_core(&mut self, name: &str) -> Result<usize, CoreError> {
        let base = self.state_dir.join(CLUSTERS_DIR);
        let dir = std::iter::once(base.join(name))
            .chain((2..).map(|n| base.join(format!("{name}.{n}"))))
            .find(|dir| !dir.exists())
            .expect("an unused directory name");
        std::fs::create_dir_all(&dir).map_err(|error| io_error(&dir, &error))?;
        let stored_as = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        let mut core = Core::open_in(
            &dir,
            &self.root,
            stored_as.as_deref(),
            Arc::clone(&self.clock),
        )?;
        core.set_max_agents(self.max_agents);
        self.feeds_mut().push(core.watch_status());
        self.cores.push(core);
        self.pending.push(Some(name.to_string()));
        tracing::info!(cluster = name, dir = %dir.display(), "a new cluster on this coordinator");
        Ok(self.cores.len() - 1)
    }

    pub fn plan_draft(&mut self, spec_toml: &str) -> Result<crate::core::PlanDraft, CoreError> {
        let index = self.core_for_spec(spec_toml)?;
        let draft = self.cores[index].plan_draft(spec_toml);
        // Nothing applied: the agents attached for the plan's sake go back.
        self.reroute_all();
        draft
    }

    pub fn apply(
        &mut self,
        spec_toml: &str,
        force: bool,
        who: &str,
    ) -> Result<pb::ApplyResponse, CoreError> {
        let index = self.core_for_spec(spec_toml)?;
        let response = self.cores[index].apply(spec_toml, force, who, None)?;
        self.reroute_all();
        Ok(response)
    }

    /// After a cluster's spec changed: every agent to the cluster it belongs to now.
    pub fn reroute_all(&mut self) {
        let nodes: Vec<String> = self.agents.keys().cloned().collect();
        for node in nodes {
            self.reroute(&node);
        }
    }

    /// Whether the core at `index` claims `node`: lists it, selects it by a client group, or
    /// released to it (a node dropped from a spec gets the removal of its block).
    fn claims(
        &self,
        node: &str,
        index: usize,
        entry: Option<&crate::registry::AgentEntry>,
    ) -> bool {
        let core = &self.cores[index];
        core.lists(node)
            || entry.is_some_and(|entry| core.selects(node, entry))
            || core.has_release(node)
    }

    /// The cores `node` belongs to now: every cluster that claims it, the one where it is a
    /// broker first, then those it is attached to already (in their order); none claiming it,
    /// the first it is attached to (the home core for an agent not seen yet).
    fn route(&self, node: &str) -> Vec<usize> {
        let attached = self
            .agents
            .get(node)
            .map_or_else(|| vec![HOME], |agent| agent.cores.clone());
        let entry = attached
            .iter()
            .find_map(|&index| self.cores[index].agent(node));
        let broker = (0..self.cores.len()).find(|&index| self.cores[index].lists_broker(node));
        let mut cores: Vec<usize> = Vec::new();
        for index in broker
            .into_iter()
            .chain(attached.iter().copied())
            .chain(0..self.cores.len())
        {
            if !cores.contains(&index) && self.claims(node, index, entry) {
                cores.push(index);
            }
        }
        if cores.is_empty() {
            cores.push(attached[0]);
        }
        cores
    }

    fn reroute(&mut self, node: &str) {
        let Some(agent) = self.agents.get(node) else {
            return;
        };
        let target = self.route(node);
        if target == agent.cores {
            return;
        }
        for &index in &target {
            self.attach(node, index);
        }
        let stale: Vec<usize> = self.agents[node]
            .cores
            .iter()
            .copied()
            .filter(|index| !target.contains(index))
            .collect();
        for index in stale {
            self.detach(node, index);
        }
        let agent = self.agents.get_mut(node).expect("checked above");
        agent.cores = target;
        self.stamp(node);
    }

    /// Attach `node`'s agent to the core at `index` too: a record there as the cores it is
    /// attached to know it (connections, facts, health; no report on a release of this
    /// cluster yet) and that core's release on its stream. The caller stamps the stream.
    fn attach(&mut self, node: &str, index: usize) {
        let Some(agent) = self.agents.get(node) else {
            return;
        };
        if agent.cores.contains(&index) {
            return;
        }
        let connected = agent.connections > 0;
        let known = agent
            .cores
            .iter()
            .find_map(|&other| self.cores[other].agent(node).cloned());
        let receiver = match known {
            Some(mut entry) => {
                tracing::info!(
                    node,
                    cluster = self.cores[index].cluster_name().unwrap_or("(none)"),
                    "agent attached to a cluster"
                );
                entry.status = None;
                entry.reachability_at_ms = 0;
                Some(self.cores[index].adopt_agent(node, entry))
            }
            // No record anywhere yet: a connected agent gets one here as it connected.
            None if connected => self.cores[index].subscribe(node).ok(),
            None => None,
        };
        let agent = self.agents.get_mut(node).expect("checked above");
        agent.cores.push(index);
        if let Some(receiver) = receiver.filter(|_| connected) {
            agent.follow(index, receiver);
        }
    }

    /// Detach `node`'s agent from the core at `index`: its record there goes (from the store at
    /// the next tick) and its stream no longer carries that core's release. The caller stamps
    /// the stream.
    fn detach(&mut self, node: &str, index: usize) {
        let Some(agent) = self.agents.get_mut(node) else {
            return;
        };
        agent.cores.retain(|&core| core != index);
        agent.unfollow(index);
        if self.cores[index].take_agent(node).is_some() {
            tracing::info!(
                node,
                cluster = self.cores[index].cluster_name().unwrap_or("(none)"),
                "agent detached from a cluster"
            );
        }
    }

    /// Put the names of the clusters `node` is attached to on its stream (every release is sent
    /// again with them when they changed).
    fn stamp(&mut self, node: &str) {
        let Some(agent) = self.agents.get(node) else {
            return;
        };
        let names: Vec<String> = agent
            .cores
            .iter()
            .filter_map(|&index| {
                self.cores[index]
                    .cluster_name()
                    .or(self.pending[index].as_deref())
                    .map(str::to_string)
            })
            .collect();
        agent.out.send_if_modified(|releases| {
            if releases.clusters == names {
                return false;
            }
            releases.clusters = names;
            for (seq, _) in releases.by_core.values_mut() {
                *seq = next_seq();
            }
            true
        });
    }

    /// `node`'s agent opened its release stream.
    pub fn subscribe(&mut self, node: &str) -> Result<watch::Receiver<Releases>, CoreError> {
        if !self.agents.contains_key(node) {
            let known: usize = self.agents.len();
            if known >= self.max_agents {
                return Err(CoreError::TooManyAgents {
                    node: node.to_string(),
                    limit: self.max_agents,
                });
            }
            self.agents.insert(node.to_string(), Agent::new(HOME));
        }
        let attached = self.agents[node].cores.clone();
        let mut receivers = Vec::new();
        for &index in &attached {
            match self.cores[index].subscribe(node) {
                Ok(receiver) => receivers.push((index, receiver)),
                Err(error) => {
                    for &(index, _) in &receivers {
                        self.cores[index].disconnect(node);
                    }
                    if self.agents[node].connections == 0
                        && attached
                            .iter()
                            .all(|&index| self.cores[index].agent(node).is_none())
                    {
                        self.agents.remove(node);
                    }
                    return Err(error);
                }
            }
        }
        let agent = self.agents.get_mut(node).expect("inserted above");
        agent.connections += 1;
        for (index, receiver) in receivers {
            if !agent.forwards.contains_key(&index) {
                agent.follow(index, receiver);
            }
        }
        let out = agent.out.subscribe();
        self.stamp(node);
        self.reroute(node);
        Ok(out)
    }

    /// One of `node`'s release streams ended.
    pub fn disconnect(&mut self, node: &str) {
        let Some(agent) = self.agents.get_mut(node) else {
            return;
        };
        agent.connections = agent.connections.saturating_sub(1);
        if agent.connections == 0 {
            for (_, forward) in std::mem::take(&mut agent.forwards) {
                forward.abort();
            }
        }
        for index in agent.cores.clone() {
            self.cores[index].disconnect(node);
        }
    }

    /// The cores `node` is attached to (the home core for a node not seen yet), its primary
    /// first.
    fn cores_of(&self, node: &str) -> Vec<usize> {
        self.agents
            .get(node)
            .map_or_else(|| vec![HOME], |agent| agent.cores.clone())
    }

    /// `node`'s report on a release of `cluster` (empty from agents before several clusters,
    /// and for reachability: its primary cluster): to that cluster's rollout; a report on the
    /// release of a cluster the node is not attached to (any more) is dropped.
    pub fn report_status(
        &mut self,
        node: &str,
        cluster: &str,
        report: NodeReport,
    ) -> Result<(), CoreError> {
        let cores = self.cores_of(node);
        let index = if cluster.is_empty() {
            Some(cores[0])
        } else {
            cores
                .iter()
                .copied()
                .find(|&index| self.cores[index].cluster_name() == Some(cluster))
                .or_else(|| {
                    // The home core before its first spec takes what it is sent.
                    (cores == [HOME] && self.cores[HOME].cluster_name().is_none()).then_some(HOME)
                })
        };
        let Some(index) = index else {
            tracing::debug!(
                node,
                cluster,
                "report on a release of a cluster the node left dropped"
            );
            return Ok(());
        };
        self.cores[index].report_status(node, report)
    }

    /// `node`'s facts, to every cluster it is attached to; then where it belongs (its labels
    /// may select it into a client group).
    pub fn report_facts(&mut self, node: &str, facts: HostFacts) -> Result<(), CoreError> {
        for index in self.cores_of(node) {
            self.cores[index].report_facts(node, facts.clone())?;
        }
        self.reroute(node);
        Ok(())
    }

    /// `node`'s health (its hosts conflicts among it), to every cluster it is attached to.
    pub fn report_health(&mut self, node: &str, health: AgentHealth) -> Result<(), CoreError> {
        for index in self.cores_of(node) {
            self.cores[index].report_health(node, health.clone())?;
        }
        Ok(())
    }

    /// The report writer of the store that keeps `node`'s audit trail (its primary cluster's).
    pub fn report_writer(&mut self, node: &str) -> ReportWriter {
        let index = self.cores_of(node)[0];
        self.cores[index].report_writer()
    }

    /// Every core's periodic work.
    pub fn tick(&mut self) -> Result<(), CoreError> {
        let mut first_error = None;
        for core in &mut self.cores {
            if let Err(error) = core.tick() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Wait until what agents reported last is stored, in every cluster (at shutdown).
    pub fn flush_reports(&mut self) -> Result<(), CoreError> {
        for core in &mut self.cores {
            core.flush_reports()?;
        }
        Ok(())
    }

    /// Every cluster's status channel, a cluster applied later included (the metrics
    /// endpoint's).
    pub fn status_feeds(&self) -> crate::metrics::StatusFeeds {
        Arc::clone(&self.feeds)
    }

    fn feeds_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, Vec<watch::Receiver<pb::StatusResponse>>> {
        self.feeds
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Agent {
    fn new(core: usize) -> Agent {
        Agent {
            cores: vec![core],
            out: Arc::new(watch::channel(Releases::default()).0),
            connections: 0,
            forwards: BTreeMap::new(),
        }
    }

    /// Feed the agent's stream with the release of the core at `index` from `receiver` (that
    /// core's channel for it): what it holds now, then every later change and nudge.
    fn follow(&mut self, index: usize, mut receiver: watch::Receiver<Option<pb::Release>>) {
        if let Some(forward) = self.forwards.remove(&index) {
            forward.abort();
        }
        let put = move |out: &watch::Sender<Releases>, release: Option<pb::Release>| {
            out.send_if_modified(|releases| match release {
                Some(release) => {
                    releases.by_core.insert(index, (next_seq(), release));
                    true
                }
                None => releases.by_core.remove(&index).is_some(),
            });
        };
        put(&self.out, receiver.borrow_and_update().clone());
        let out = Arc::clone(&self.out);
        self.forwards.insert(
            index,
            tokio::spawn(async move {
                while receiver.changed().await.is_ok() {
                    let release = receiver.borrow_and_update().clone();
                    if release.is_some() {
                        put(&out, release);
                    }
                }
            }),
        );
    }

    /// The core at `index` no longer feeds the stream.
    fn unfollow(&mut self, index: usize) {
        if let Some(forward) = self.forwards.remove(&index) {
            forward.abort();
        }
        self.out
            .send_if_modified(|releases| releases.by_core.remove(&index).is_some());
    }
}

/// A cluster's line in `kreachctl clusters`.
fn summary(status: &pb::StatusResponse) -> pb::ClusterSummary {
    let rollout = status.rollout.clone().unwrap_or_default();
    pb::ClusterSummary {
        name: status.cluster.clone(),
        generation: rollout.generation,
        state: if rollout.state.is_empty() {
            "none".to_string()
        } else {
            rollout.state
        },
        nodes: status.nodes.len() as u32,
        online: status.nodes.iter().filter(|node| node.online).count() as u32,
        paused_node: rollout.paused_node,
        paused_reason: rollout.paused_reason,
    }
}

fn io_error(path: &Path, error: &std::io::Error) -> CoreError {
    CoreError::Store(crate::store::StoreError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, broker: &str, clients: &[&str]) -> String {
        let mut spec = format!(
            "[cluster]\nname = \"{name}\"\n\
             [listeners.internal]\nadvertise = \"hostname\"\n\
             [[broker]]\nid = 1\nnode = \"{broker}\"\nhostname = \"{broker}.{name}\"\nprivate_ip = \"10.0.0.1\"\n"
        );
        for client in clients {
            spec.push_str(&format!(
                "[[client]]\nnode = \"{client}\"\nview = \"private\"\n"
            ));
        }
        spec
    }

    fn open(dir: &Path) -> Clusters {
        Clusters::open(dir, Arc::new(kreach_runtime::clock::SteadyWallClock::new())).unwrap()
    }

    /// Open again once the dropped coordinator's report writers have let go of their stores.
    fn reopen(dir: &Path) -> Clusters {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Clusters::open(dir, Arc::new(kreach_runtime::clock::SteadyWallClock::new())) {
                Ok(clusters) => return clusters,
                Err(error) if std::time::Instant::now() > deadline => panic!("{error}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    /// Store what `clusters` holds, drop it and open the state directory again.
    async fn restart(mut clusters: Clusters, dir: &Path) -> Clusters {
        tokio::task::spawn_blocking(move || {
            clusters.tick().unwrap();
            clusters.flush_reports().unwrap();
        })
        .await
        .unwrap();
        reopen(dir)
    }

    /// The release of `cluster` on `stream`, within 5 s, as the agent gets it.
    async fn release_of(stream: &mut watch::Receiver<Releases>, cluster: &str) -> pb::Release {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let releases = stream.borrow_and_update().clone();
                let found = releases
                    .unsent(&mut BTreeMap::new())
                    .into_iter()
                    .find(|release| {
                        release
                            .spec
                            .as_ref()
                            .is_some_and(|spec| spec.cluster == cluster)
                    });
                if let Some(release) = found {
                    return release;
                }
                stream.changed().await.unwrap();
            }
        })
        .await
        .expect("a release within 5 s")
    }

    #[tokio::test]
    async fn each_cluster_has_its_own_generations_and_store_and_requests_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let mut clusters = open(dir.path());
        // Before any spec, and with one cluster, requests need no name.
        assert!(clusters.core("").is_ok());
        let a = clusters
            .apply(&spec("kafka-a", "a1", &[]), true, "test")
            .unwrap();
        assert_eq!(clusters.core("").unwrap().cluster_name(), Some("kafka-a"));
        let b = clusters
            .apply(&spec("kafka-b", "b1", &[]), true, "test")
            .unwrap();
        assert_eq!(
            (a.generation, b.generation),
            (1, 1),
            "generations are per cluster"
        );
        assert_eq!(clusters.names(), ["kafka-a", "kafka-b"]);
        let error = clusters.core("").err().unwrap().to_string();
        assert_eq!(
            error,
            "this coordinator holds 2 clusters (kafka-a, kafka-b): say which with --cluster NAME"
        );
        let error = clusters.core("kafka-c").err().unwrap().to_string();
        assert_eq!(
            error,
            "no cluster \"kafka-c\" on this coordinator; it holds: kafka-a, kafka-b"
        );
        assert_eq!(
            clusters.core("kafka-b").unwrap().status_response().cluster,
            "kafka-b"
        );
        // The first cluster stays where a single-cluster coordinator kept it; the next has its
        // own directory.
        assert!(dir.path().join("coordinator.redb").is_file());
        assert!(dir
            .path()
            .join("clusters/kafka-b/coordinator.redb")
            .is_file());
        // kafka-a's rollout does not hold kafka-b's next generation back.
        clusters.core("kafka-b").unwrap().abort().unwrap();
        let again = clusters
            .apply(&spec("kafka-b", "b1", &["c1"]), true, "test")
            .unwrap();
        assert_eq!(again.generation, 2);
        drop(clusters);

        let mut reopened = reopen(dir.path());
        assert_eq!(reopened.names(), ["kafka-a", "kafka-b"]);
        let history = reopened
            .core("kafka-b")
            .unwrap()
            .history(&pb::HistoryRequest::default())
            .unwrap();
        assert_eq!(history.generations.len(), 2);
        let history = reopened
            .core("kafka-a")
            .unwrap()
            .history(&pb::HistoryRequest::default())
            .unwrap();
        assert_eq!(history.generations.len(), 1);
    }

    #[tokio::test]
    async fn a_node_belongs_to_one_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut clusters = open(dir.path());
        clusters
            .apply(&spec("kafka-a", "a1", &["c1"]), true, "test")
            .unwrap();
        // kafka-b's brokers: b1 and a1, which is kafka-a's broker.
        let stealing = spec("kafka-b", "b1", &[]).replace(
            "[[broker]]",
            "[[broker]]\nid = 2\nnode = \"a1\"\nhostname = \"a1.kafka-b\"\nprivate_ip = \"10.0.0.2\"\n[[broker]]",
        );
        let error = clusters
            .apply(&stealing, true, "test")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "node \"a1\" is a broker in this spec and in cluster \"kafka-a\"'s; a host is a broker of one cluster (it may be a client of several): drop it from that cluster first, or give a spec with exactly that cluster's brokers to rename it"
        );
        // Nothing of kafka-b was applied.
        assert_eq!(clusters.names(), ["kafka-a"]);
        // A client of kafka-a, and kafka-a's broker, may be clients of kafka-b too.
        let shared = spec("kafka-b", "b1", &["c1", "a1"]);
        assert!(clusters.plan_draft(&shared).is_ok());
        clusters.apply(&shared, true, "test").unwrap();
        assert_eq!(clusters.names(), ["kafka-a", "kafka-b"]);
    }

    #[tokio::test]
    async fn an_agent_moves_to_the_cluster_that_lists_it_on_the_stream_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let mut clusters = open(dir.path());
        clusters
            .apply(&spec("kafka-a", "a1", &[]), true, "test")
            .unwrap();
        // c1 connects while no cluster lists it: the home cluster keeps it, unlisted.
        let mut stream = clusters.subscribe("c1").unwrap();
        assert!(stream.borrow().by_core.is_empty());
        assert!(clusters.core("").unwrap().agent("c1").is_some());

        clusters
            .apply(&spec("kafka-b", "b1", &["c1"]), true, "test")
            .unwrap();
        let release = release_of(&mut stream, "kafka-b").await;
        assert_eq!(release.clusters, ["kafka-b"], "kafka-a never served it");
        let node_spec = release.spec.unwrap();
        assert_eq!(
            (node_spec.cluster.as_str(), node_spec.node.as_str()),
            ("kafka-b", "c1")
        );
        assert!(clusters.core("kafka-a").unwrap().agent("c1").is_none());
        let b = clusters.core("kafka-b").unwrap();
        assert!(b.agent("c1").is_some_and(|entry| entry.online()));

        // A report on a release of kafka-a (from before the move) does not reach kafka-b's
        // rollout; one of kafka-b's does.
        let report = NodeReport {
            release: release.id.as_ref().map(Into::into),
            phase: kreach_domain::report::Phase::Converged,
            ..NodeReport::default()
        };
        clusters
            .report_status("c1", "kafka-a", report.clone())
            .unwrap();
        let b = clusters.core("kafka-b").unwrap();
        assert!(b.agent("c1").unwrap().status.is_none());
        clusters.report_status("c1", "kafka-b", report).unwrap();
        let b = clusters.core("kafka-b").unwrap();
        assert!(b.agent("c1").unwrap().status.is_some());

        // After a restart the record is in kafka-b's store, not in kafka-a's.
        clusters.disconnect("c1");
        drop(stream);
        let mut reopened = restart(clusters, dir.path()).await;
        assert!(reopened.core("kafka-a").unwrap().agent("c1").is_none());
        assert!(reopened.core("kafka-b").unwrap().agent("c1").is_some());
    }

    #[tokio::test]
    async fn a_spec_of_a_new_name_with_exactly_a_clusters_brokers_renames_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut clusters = open(dir.path());
        clusters
            .apply(&spec("kafka-a", "a1", &[]), true, "test")
            .unwrap();
        clusters
            .apply(&spec("kafka-b", "b1", &[]), true, "test")
            .unwrap();
        clusters.core("kafka-b").unwrap().abort().unwrap();
        let renamed = clusters
            .apply(&spec("kafka-b2", "b1", &["c1"]), true, "test")
            .unwrap();
        assert_eq!(renamed.generation, 2, "the same cluster's next generation");
        assert_eq!(clusters.names(), ["kafka-a", "kafka-b2"]);
        // The old name is free again: a new cluster with other brokers gets it.
        let again = clusters
            .apply(&spec("kafka-b", "x1", &[]), true, "test")
            .unwrap();
        assert_eq!(again.generation, 1);
        assert_eq!(clusters.names(), ["kafka-a", "kafka-b", "kafka-b2"]);
        assert!(dir
            .path()
            .join("clusters/kafka-b.2/coordinator.redb")
            .is_file());
        drop(clusters);
        let reopened = reopen(dir.path());
        assert_eq!(reopened.names(), ["kafka-a", "kafka-b", "kafka-b2"]);
    }

    #[tokio::test]
    async fn a_client_of_two_clusters_gets_both_releases_on_its_stream_and_reports_to_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut clusters = open(dir.path());
        let mut stream = clusters.subscribe("c1").unwrap();
        // Its facts, as every agent reports them when it connects (what the stores keep).
        clusters.report_facts("c1", HostFacts::default()).unwrap();
        clusters
            .apply(&spec("kafka-a", "a1", &["c1"]), true, "test")
            .unwrap();
        clusters
            .apply(&spec("kafka-b", "b1", &["c1"]), true, "test")
            .unwrap();
        let a = release_of(&mut stream, "kafka-a").await;
        let b = release_of(&mut stream, "kafka-b").await;
        assert_eq!(a.clusters, ["kafka-a", "kafka-b"]);
        assert_eq!(b.clusters, ["kafka-a", "kafka-b"]);
        // Both keep a record of it, online.
        for name in ["kafka-a", "kafka-b"] {
            let core = clusters.core(name).unwrap();
            assert!(
                core.agent("c1").is_some_and(|entry| entry.online()),
                "{name}"
            );
        }
        // Each report reaches the rollout of its release's cluster only.
        let converged = |release: &pb::Release| NodeReport {
            release: release.id.as_ref().map(Into::into),
            phase: kreach_domain::report::Phase::Converged,
            ..NodeReport::default()
        };
        clusters
            .report_status("c1", "kafka-b", converged(&b))
            .unwrap();
        assert!(clusters
            .core("kafka-b")
            .unwrap()
            .agent("c1")
            .unwrap()
            .status
            .is_some());
        assert!(clusters
            .core("kafka-a")
            .unwrap()
            .agent("c1")
            .unwrap()
            .status
            .is_none());
        // Its health (its hosts conflicts) is shown by both.
        let health = AgentHealth {
            conflicts: vec!["line 3 maps b1.kafka-b elsewhere".into()],
            ..AgentHealth::default()
        };
        clusters.report_health("c1", health).unwrap();
        for name in ["kafka-a", "kafka-b"] {
            let core = clusters.core(name).unwrap();
            let entry = core.agent("c1").unwrap();
            assert_eq!(entry.health.as_ref().unwrap().conflicts.len(), 1, "{name}");
        }
        // A restart of the coordinator finds it attached to both.
        clusters.disconnect("c1");
        drop(stream);
        let mut reopened = restart(clusters, dir.path()).await;
        for name in ["kafka-a", "kafka-b"] {
            assert!(reopened.core(name).unwrap().agent("c1").is_some(), "{name}");
        }
        let mut stream = reopened.subscribe("c1").unwrap();
        let b = release_of(&mut stream, "kafka-b").await;
        assert_eq!(b.clusters, ["kafka-a", "kafka-b"]);
        release_of(&mut stream, "kafka-a").await;
    }
}
