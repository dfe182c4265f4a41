//! The gRPC edge: `AgentService` and `AdminService` over [`Clusters`] (one core per Kafka
//! cluster), identity checks from mutual TLS, and the one place where errors become
//! `tonic::Status`.
//!
//! Identity: with TLS, a peer's certificate names it (`kreach://node/NAME`, `kreach://admin`); an
//! agent may subscribe and report only for its own node, and only the admin certificate reaches
//! the admin service. Without TLS (`insecure`, loopback only) every caller is trusted.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use kreach_proto as pb;
use kreach_runtime::tls::{peer_identity, PeerIdentity};
use pb::admin_service_server::AdminService;
use pb::agent_service_server::AgentService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::clusters::Clusters;
use crate::core::{CoreError, PlanDraft};
use crate::dry_run::{self, DryRuns, DRY_RUN_TIMEOUT};
use crate::store::AuditBatch;
use kreach_domain::report::{AgentHealth, AuditRecord, HostFacts, NodeReport};

/// The most audit entries one AuditReport may carry (agents send batches of 500).
pub const MAX_AUDIT_BATCH: usize = 1000;

/// Every cluster's core, behind one lock.
pub type SharedClusters = Arc<Mutex<Clusters>>;

/// Whether callers are authenticated by certificate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Auth {
    MutualTls,
    /// Plaintext on loopback: no identities.
    Insecure,
}

#[derive(Clone)]
pub struct Services {
    pub clusters: SharedClusters,
    pub auth: Auth,
    /// The agents' dry-run streams, for plans checked against the hosts.
    pub dry_runs: DryRuns,
}

impl From<CoreError> for Status {
    fn from(error: CoreError) -> Status {
        match &error {
            CoreError::InvalidSpec(_) => Status::invalid_argument(error.to_string()),
            CoreError::Refused(_) => Status::failed_precondition(error.to_string()),
            CoreError::NotFound(_) => Status::not_found(error.to_string()),
            CoreError::Store(_) => Status::internal(error.to_string()),
            CoreError::TooManyAgents { .. } => Status::resource_exhausted(error.to_string()),
        }
    }
}

impl Auth {
    /// Who the caller is by its certificate (None: `insecure`, every caller trusted).
    fn identity<T>(self, request: &Request<T>) -> Result<Option<PeerIdentity>, Status> {
        if self == Auth::Insecure {
            return Ok(None);
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: present the certificate from `kreachctl certs init`",
            )
        })?;
        let first = certs.first().ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: present the certificate from `kreachctl certs init`",
            )
        })?;
        peer_identity(first.as_ref()).map(Some).map_err(|error| {
            Status::permission_denied(format!("unrecognised client certificate: {error}"))
        })
    }

    /// The caller must hold the admin certificate.
    pub fn require_admin<T>(self, request: &Request<T>) -> Result<(), Status> {
        match self.identity(request)? {
            None | Some(PeerIdentity::Admin) => Ok(()),
            Some(other) => Err(Status::permission_denied(format!(
                "the admin service needs the admin certificate; this one is the {other} certificate"
            ))),
        }
    }
}

impl Services {
    fn clusters(&self) -> MutexGuard<'_, Clusters> {
        self.clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn identity<T>(&self, request: &Request<T>) -> Result<Option<PeerIdentity>, Status> {
        self.auth.identity(request)
    }

    /// The caller must be the agent of `node`.
    fn require_node<T>(&self, request: &Request<T>, node: &str) -> Result<(), Status> {
        match self.identity(request)? {
            None => Ok(()),
            Some(PeerIdentity::Node(name)) if name == node => Ok(()),
            Some(PeerIdentity::Node(name)) => Err(Status::permission_denied(format!(
                "the certificate of node {name:?} cannot act for node {node:?}"
            ))),
            Some(other) => Err(Status::permission_denied(format!(
                "the agent service needs a node certificate, not the {other} certificate"
            ))),
        }
    }

    fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.auth.require_admin(request)
    }

    /// Ask the agents of `draft` to dry-run their node's spec (all at once, at most
    /// [`DRY_RUN_TIMEOUT`] in all, the core not held) and put their answers into the plan.
    async fn check_on_hosts(&self, draft: PlanDraft) -> pb::PlanResponse {
        let PlanDraft {
            mut response,
            host_checks,
            unreachable,
        } = draft;
        let answers = self.dry_runs.ask_all(host_checks, DRY_RUN_TIMEOUT).await;
        dry_run::merge(&mut response, answers, &unreachable);
        response
    }

    fn who<T>(&self, request: &Request<T>) -> String {
        match request.remote_addr() {
            Some(address) => format!("kreachctl from {address}"),
            None => "kreachctl".to_string(),
        }
    }
}

type ReleaseStream = Pin<Box<dyn Stream<Item = Result<pb::Release, Status>> + Send>>;
pub type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::StatusResponse, Status>> + Send>>;
type DryRunStream = Pin<Box<dyn Stream<Item = Result<pb::DryRunRequest, Status>> + Send>>;
pub type DiagnoseStream = Pin<Box<dyn Stream<Item = Result<pb::DiagnoseStep, Status>> + Send>>;

/// How long a diagnosis may go without a step before kreachctl is told (each step is bounded by
/// the agent's own timeouts, a few seconds; a slow system resolver takes longer).
const DIAGNOSE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// An agent's release stream: each release of every cluster the agent is attached to, once per
/// change or nudge, in the order of their clusters.
struct ReleaseFeed {
    releases: tokio_stream::wrappers::WatchStream<crate::clusters::Releases>,
    /// The number of each cluster's release last sent, by core.
    sent: std::collections::BTreeMap<usize, u64>,
    ready: std::collections::VecDeque<pb::Release>,
    _presence: Presence,
}

impl Stream for ReleaseFeed {
    type Item = Result<pb::Release, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            if let Some(release) = self.ready.pop_front() {
                return std::task::Poll::Ready(Some(Ok(release)));
            }
            match std::task::ready!(Pin::new(&mut self.releases).poll_next(cx)) {
                None => return std::task::Poll::Ready(None),
                Some(releases) => {
                    let feed = &mut *self;
                    feed.ready.extend(releases.unsent(&mut feed.sent));
                }
            }
        }
    }
}

/// Marks the agent offline when its stream is dropped (the connection ended).
struct Presence {
    clusters: SharedClusters,
    node: String,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .disconnect(&self.node);
    }
}

#[tonic::async_trait]
impl AgentService for Services {
    type SubscribeStream = ReleaseStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<ReleaseStream>, Status> {
        let node = request.get_ref().node.clone();
        if node.is_empty() {
            return Err(Status::invalid_argument("SubscribeRequest.node is empty"));
        }
        self.require_node(&request, &node)?;
        let receiver = self.clusters().subscribe(&node)?;
        let presence = Presence {
            clusters: Arc::clone(&self.clusters),
            node,
        };
        let stream = ReleaseFeed {
            releases: tokio_stream::wrappers::WatchStream::new(receiver),
            sent: Default::default(),
            ready: Default::default(),
            _presence: presence,
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_status(
        &self,
        request: Request<pb::NodeStatus>,
    ) -> Result<Response<pb::Ack>, Status> {
        let node = request.get_ref().node.clone();
        self.require_node(&request, &node)?;
        let report = NodeReport::from(request.get_ref());
        let cluster = &request.get_ref().cluster;
        self.clusters().report_status(&node, cluster, report)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_audit(
        &self,
        request: Request<pb::AuditReport>,
    ) -> Result<Response<pb::AuditAck>, Status> {
        let node = request.get_ref().node.clone();
        self.require_node(&request, &node)?;
        let records = request.get_ref().records.len();
        if records > MAX_AUDIT_BATCH {
            return Err(Status::invalid_argument(format!(
                "AuditReport carries {records} records; send at most {MAX_AUDIT_BATCH} at a time"
            )));
        }
        // Off the core's lock: the writer commits every report queued meanwhile in one
        // transaction and answers each once it is stored.
        let writer = self.clusters().report_writer(&node);
        let report = request.into_inner();
        let node = report.node;
        let last_seq = if report.records.is_empty() {
            writer.audit_last_seq(&node).map_err(CoreError::from)?
        } else {
            let entries = report
                .records
                .into_iter()
                .map(|mut record| {
                    record.node = node.clone();
                    AuditRecord::from(&record)
                })
                .collect();
            let batch = AuditBatch {
                node,
                entries,
                restarted: report.restarted,
            };
            writer.append_audit(batch).await.map_err(CoreError::from)?
        };
        Ok(Response::new(pb::AuditAck { last_seq }))
    }

    async fn report_facts(
        &self,
        request: Request<pb::HostFacts>,
    ) -> Result<Response<pb::Ack>, Status> {
        let node = request.get_ref().node.clone();
        self.require_node(&request, &node)?;
        let facts = HostFacts::from(request.get_ref());
        self.clusters().report_facts(&node, facts)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_health(
        &self,
        request: Request<pb::AgentHealth>,
    ) -> Result<Response<pb::Ack>, Status> {
        let node = request.get_ref().node.clone();
        self.require_node(&request, &node)?;
        let health = AgentHealth::from(request.get_ref());
        self.clusters().report_health(&node, health)?;
        Ok(Response::new(pb::Ack {}))
    }

    type DryRunsStream = DryRunStream;

    async fn dry_runs(
        &self,
        request: Request<pb::DryRunSubscription>,
    ) -> Result<Response<DryRunStream>, Status> {
        let node = request.get_ref().node.clone();
        if node.is_empty() {
            return Err(Status::invalid_argument("DryRunSubscription.node is empty"));
        }
        self.require_node(&request, &node)?;
        let (receiver, registration) = self.dry_runs.connect(&node);
        tracing::debug!(node, "agent takes dry runs");
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver).map(move |request| {
            let _registered = &registration;
            Ok(request)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_dry_run(
        &self,
        request: Request<pb::DryRunReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        let node = request.get_ref().node.clone();
        self.require_node(&request, &node)?;
        self.dry_runs
            .report(request.into_inner())
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_diagnose(
        &self,
        request: Request<pb::DiagnoseStep>,
    ) -> Result<Response<pb::Ack>, Status> {
        let node = request.get_ref().node.clone();
        self.require_node(&request, &node)?;
        self.dry_runs
            .report_diagnose(request.into_inner())
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::Ack {}))
    }
}

#[tonic::async_trait]
impl AdminService for Services {
    type WatchStream = StatusStream;
    type DiagnoseStream = DiagnoseStream;

    async fn diagnose(
        &self,
        request: Request<pb::DiagnoseRequest>,
    ) -> Result<Response<DiagnoseStream>, Status> {
        self.require_admin(&request)?;
        let pb::DiagnoseRequest {
            node,
            broker,
            cluster,
        } = request.into_inner();
        self.clusters()
            .core(&cluster)?
            .client_of_newest_spec(&node)?;
        let mut diagnosis = self
            .dry_runs
            .diagnose(&node, broker)
            .map_err(Status::unavailable)?;
        tracing::info!(node, "diagnosis asked of a client's agent");
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let next = tokio::time::timeout(DIAGNOSE_IDLE, diagnosis.steps.recv()).await;
                let item = match next {
                    Ok(Some(step)) => Ok(step),
                    Ok(None) => Err(Status::unavailable(format!(
                        "{node}'s agent went away during the diagnosis"
                    ))),
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{node}'s agent sent nothing for {}s during the diagnosis",
                        DIAGNOSE_IDLE.as_secs()
                    ))),
                };
                let last = item.as_ref().map_or(true, |step| step.done);
                if sender.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        self.require_admin(&request)?;
        let draft = self.clusters().plan_draft(&request.get_ref().spec_toml)?;
        Ok(Response::new(self.check_on_hosts(draft).await))
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        self.require_admin(&request)?;
        let who = self.who(&request);
        let body = request.into_inner();
        Ok(Response::new(self.clusters().apply(
            &body.spec_toml,
            body.force,
            &who,
        )?))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.require_admin(&request)?;
        let cluster = &request.get_ref().cluster;
        Ok(Response::new(
            self.clusters().core(cluster)?.status_response(),
        ))
    }

    async fn watch(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        self.require_admin(&request)?;
        let receiver = self
            .clusters()
            .core(&request.get_ref().cluster)?
            .watch_status();
        let stream = tokio_stream::wrappers::WatchStream::new(receiver).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn pause(
        &self,
        request: Request<pb::RolloutControl>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.require_admin(&request)?;
        let cluster = &request.get_ref().cluster;
        Ok(Response::new(self.clusters().core(cluster)?.pause()?))
    }

    async fn resume(
        &self,
        request: Request<pb::RolloutControl>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.require_admin(&request)?;
        let cluster = &request.get_ref().cluster;
        Ok(Response::new(self.clusters().core(cluster)?.resume()?))
    }

    async fn abort(
        &self,
        request: Request<pb::RolloutControl>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.require_admin(&request)?;
        let cluster = &request.get_ref().cluster;
        Ok(Response::new(self.clusters().core(cluster)?.abort()?))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.require_admin(&request)?;
        let body = request.get_ref();
        Ok(Response::new(
            self.clusters().core(&body.cluster)?.history(body)?,
        ))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        self.require_admin(&request)?;
        let who = self.who(&request);
        let body = request.into_inner();
        if body.dry_run {
            let draft = self
                .clusters()
                .core(&body.cluster)?
                .rollback_draft(body.to)?;
            return Ok(Response::new(pb::ApplyResponse {
                generation: 0,
                plan: Some(self.check_on_hosts(draft).await),
            }));
        }
        let mut clusters = self.clusters();
        let response =
            clusters
                .core(&body.cluster)?
                .rollback(body.to, body.force, body.dry_run, &who)?;
        clusters.reroute_all();
        Ok(Response::new(response))
    }

    async fn nodes(
        &self,
        request: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesResponse>, Status> {
        self.require_admin(&request)?;
        let cluster = &request.get_ref().cluster;
        Ok(Response::new(self.clusters().core(cluster)?.nodes()))
    }

    async fn clusters(
        &self,
        request: Request<pb::ClustersRequest>,
    ) -> Result<Response<pb::ClustersResponse>, Status> {
        self.require_admin(&request)?;
        Ok(Response::new(self.clusters().summaries()))
    }

    async fn client_config(
        &self,
        request: Request<pb::ClientConfigRequest>,
    ) -> Result<Response<pb::ClientConfigResponse>, Status> {
        self.require_admin(&request)?;
        let body = request.get_ref();
        Ok(Response::new(
            self.clusters()
                .core(&body.cluster)?
                .client_config(&body.client)?,
        ))
    }

    async fn users(
        &self,
        request: Request<pb::UsersRequest>,
    ) -> Result<Response<pb::UsersResponse>, Status> {
        self.require_admin(&request)?;
        let who = self.who(&request);
        let body = request.get_ref();
        Ok(Response::new(
            self.clusters().core(&body.cluster)?.users(body, &who)?,
        ))
    }
}
