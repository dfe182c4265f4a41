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
const CLUSTERS_DIR: &str = "clusters";

/// The home core's index in [`Clusters::cores`].
const HOME: usize = 0;

/// An agent's place: the core that keeps its record and its release stream.
struct Agent {
    core: usize,
    /// Its release stream, fed from its core's channel by `forward`.
    out: Arc<watch::Sender<Option<pb::Release>>>,
    /// Release streams open now.
    connections: u32,
    forward: Option<tokio::task::JoinHandle<()>>,
}

pub struct Clusters {
    state_dir: PathBuf,
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

impl Clusters {
    /// Open the home core at `state_dir` and every cluster under `state_dir/clusters/`.
    pub fn open(state_dir: &Path, clock: Arc<dyn Clock>) -> Result<Clusters, CoreError> {
        let mut cores = vec![Core::open_with_clock(state_dir, Arc::clone(&clock))?];
        let mut pending = vec![None];
        let dir = state_dir.join(CLUSTERS_DIR);
        if dir.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|error| io_error(&dir, &error))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.join(crate::core::STORE_FILE).is_file())
                .collect();
            names.sort();
            for path in names {
                cores.push(Core::open_with_clock(&path, Arc::clone(&clock))?);
                pending.push(
                    path.file_name()
                        .map(|name| name.to_string_lossy().into_owned()),
                );
            }
        }
        let mut clusters = Clusters {
            state_dir: state_dir.to_path_buf(),
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
        // Where every known agent's record is (a record in two stores, from a move the store
        // did not finish, is kept in the first).
        for index in 0..clusters.cores.len() {
            let nodes: Vec<String> = clusters.cores[index].agent_nodes().cloned().collect();
            for node in nodes {
                if clusters.agents.contains_key(&node) {
                    clusters.cores[index].take_agent(&node);
                    continue;
                }
                clusters.agents.insert(node, Agent::new(index));
            }
        }
        Ok(clusters)
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
        pb::ClustersResponse { clusters }
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
    /// core for a new cluster name. Refuses a spec that lists a node another cluster's spec lists
    /// (a node belongs to one cluster). The agents it lists that no cluster claims are moved to
    /// it first, so that the plan sees their facts (keys, controller).
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
        let listed: Vec<(&str, &str)> = spec
            .brokers
            .iter()
            .map(|broker| (broker.node.as_str(), "broker"))
            .chain(
                spec.clients
                    .iter()
                    .map(|client| (client.node.as_str(), "client")),
            )
            .collect();
        for &(node, role) in &listed {
            let other = (0..self.cores.len())
                .find(|&other| Some(other) != existing && self.cores[other].lists(node));
            if let Some(other) = other {
                return Err(CoreError::Refused(format!(
                    "node {node:?} ({role} in this spec) is listed in cluster {:?}'s spec; a node belongs to one cluster of a coordinator (drop it from that cluster first; a spec with exactly that cluster's brokers renames it)",
                    self.cores[other].cluster_name().unwrap_or_default()
                )));
            }
        }
        let index = match existing {
            Some(index) => index,
            None => self.new_core(&spec.name)?,
        };
        for &(node, _) in &listed {
            if self
                .agents
                .get(node)
                .is_some_and(|agent| agent.core != index && !self.claimed(node, agent.core))
            {
                self.move_agent(node, index);
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
        let mut core = Core::open_with_clock(&dir, Arc::clone(&self.clock))?;
        core.set_max_agents(self.max_agents);
        self.feeds_mut().push(core.watch_status());
        self.cores.push(core);
        self.pending.push(Some(name.to_string()));
        tracing::info!(cluster = name, dir = %dir.display(), "a new cluster on this coordinator");
        Ok(self.cores.len() - 1)
    }

    pub fn plan_draft(&mut self, spec_toml: &str) -> Result<crate::core::PlanDraft, CoreError> {
        let index = self.core_for_spec(spec_toml)?;
        self.cores[index].plan_draft(spec_toml)
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
    /// released to it.
    fn claimed(&self, node: &str, index: usize) -> bool {
        let core = &self.cores[index];
        core.lists(node)
            || core.has_release(node)
            || core
                .agent(node)
                .is_some_and(|entry| core.selects(node, entry))
    }

    /// The core `node` belongs to now: the cluster whose spec lists it, else one whose client
    /// group selects it, else one that released to it (where it is first, for the last two),
    /// else where it is.
    fn route(&self, node: &str) -> usize {
        let here = self.agents.get(node).map_or(HOME, |agent| agent.core);
        let entry = self.cores[here].agent(node);
        let first = |test: &dyn Fn(&Core) -> bool| {
            std::iter::once(here)
                .chain(0..self.cores.len())
                .find(|&index| test(&self.cores[index]))
        };
        first(&|core| core.lists(node))
            .or_else(|| first(&|core| entry.is_some_and(|entry| core.selects(node, entry))))
            .or_else(|| first(&|core| core.has_release(node)))
            .unwrap_or(here)
    }

    fn reroute(&mut self, node: &str) {
        let Some(agent) = self.agents.get(node) else {
            return;
        };
        let target = self.route(node);
        if target != agent.core {
            self.move_agent(node, target);
        }
    }

    /// Move `node`'s record and release stream to the core at `target`.
    fn move_agent(&mut self, node: &str, target: usize) {
        let Some(agent) = self.agents.get_mut(node) else {
            return;
        };
        let from = agent.core;
        let Some(entry) = self.cores[from].take_agent(node) else {
            agent.core = target;
            return;
        };
        tracing::info!(
            node,
            from = self.cores[from].cluster_name().unwrap_or("(none)"),
            to = self.cores[target].cluster_name().unwrap_or("(none)"),
            "agent moves to another cluster"
        );
        let receiver = self.cores[target].adopt_agent(node, entry);
        agent.core = target;
        if agent.connections > 0 {
            agent.follow(receiver);
        }
    }

    /// `node`'s agent opened its release stream.
    pub fn subscribe(
        &mut self,
        node: &str,
    ) -> Result<watch::Receiver<Option<pb::Release>>, CoreError> {
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
        let here = self.agents[node].core;
        let receiver = match self.cores[here].subscribe(node) {
            Ok(receiver) => receiver,
            Err(error) => {
                if self.agents[node].connections == 0 && self.cores[here].agent(node).is_none() {
                    self.agents.remove(node);
                }
                return Err(error);
            }
        };
        let agent = self.agents.get_mut(node).expect("inserted above");
        agent.connections += 1;
        if agent.forward.is_none() {
            agent.follow(receiver);
        }
        let out = agent.out.subscribe();
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
            if let Some(forward) = agent.forward.take() {
                forward.abort();
            }
        }
        let here = agent.core;
        self.cores[here].disconnect(node);
    }

    /// The core that keeps `node`'s record (the home core for a node not seen yet).
    fn core_of(&mut self, node: &str) -> &mut Core {
        let index = self.agents.get(node).map_or(HOME, |agent| agent.core);
        &mut self.cores[index]
    }

    /// `node`'s report on a release of `cluster` (empty from agents before several clusters):
    /// to that cluster's rollout; a report on another cluster's release than the one the node
    /// belongs to now (it moved meanwhile) is dropped.
    pub fn report_status(
        &mut self,
        node: &str,
        cluster: &str,
        report: NodeReport,
    ) -> Result<(), CoreError> {
        let core = self.core_of(node);
        if !cluster.is_empty() && core.cluster_name().is_some_and(|name| name != cluster) {
            tracing::debug!(node, cluster, "report on another cluster's release dropped");
            return Ok(());
        }
        core.report_status(node, report)
    }

    pub fn report_facts(&mut self, node: &str, facts: HostFacts) -> Result<(), CoreError> {
        self.core_of(node).report_facts(node, facts)?;
        self.reroute(node);
        Ok(())
    }

    pub fn report_health(&mut self, node: &str, health: AgentHealth) -> Result<(), CoreError> {
        self.core_of(node).report_health(node, health)
    }

    /// The report writer of the store that keeps `node`'s audit trail.
    pub fn report_writer(&mut self, node: &str) -> ReportWriter {
        self.core_of(node).report_writer()
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
            core,
            out: Arc::new(watch::channel(None).0),
            connections: 0,
            forward: None,
        }
    }

    /// Feed the agent's stream from `receiver` (its core's channel for it), every change and
    /// every nudge, instead of from wherever it was fed before.
    fn follow(&mut self, mut receiver: watch::Receiver<Option<pb::Release>>) {
        if let Some(forward) = self.forward.take() {
            forward.abort();
        }
        // What the core holds now, at once: nothing of the core it followed before stays on
        // the stream. Then every later change and nudge.
        self.out.send_replace(receiver.borrow_and_update().clone());
        let out = Arc::clone(&self.out);
        self.forward = Some(tokio::spawn(async move {
            while receiver.changed().await.is_ok() {
                let release = receiver.borrow_and_update().clone();
                if release.is_some() {
                    out.send_replace(release);
                }
            }
        }));
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

    /// The next release on `stream`, within 5 s.
    async fn next_release(stream: &mut watch::Receiver<Option<pb::Release>>) -> pb::Release {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if let Some(release) = stream.borrow_and_update().clone() {
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
        // kafka-b's brokers: b1 and a1, which is kafka-a's.
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
            "node \"a1\" (broker in this spec) is listed in cluster \"kafka-a\"'s spec; a node belongs to one cluster of a coordinator (drop it from that cluster first; a spec with exactly that cluster's brokers renames it)"
        );
        let error = clusters
            .plan_draft(&spec("kafka-b", "b1", &["c1"]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.starts_with("node \"c1\" (client in this spec) is listed in cluster \"kafka-a\""),
            "{error}"
        );
        // Nothing of kafka-b was applied.
        assert_eq!(clusters.names(), ["kafka-a"]);
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
        assert!(stream.borrow().is_none());
        assert!(clusters.core("").unwrap().agent("c1").is_some());

        clusters
            .apply(&spec("kafka-b", "b1", &["c1"]), true, "test")
            .unwrap();
        let release = next_release(&mut stream).await;
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
        tokio::task::spawn_blocking(move || {
            clusters.tick().unwrap();
            clusters.flush_reports().unwrap();
        })
        .await
        .unwrap();
        let mut reopened = reopen(dir.path());
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
}
