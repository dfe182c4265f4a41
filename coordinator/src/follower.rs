//! What a following coordinator answers (`[store] kind = "etcd"`): the reads (`status`, `watch`,
//! `history`, `nodes`, `clusters`) from the shared store, and for everything else the refusal
//! naming the leader ([`Standing::refusal`]).
//!
//! Owns: the follower's copy of the store, read through a connection that cannot write
//! ([`EtcdHandle::reader`]) and read again once it is older than [`FRESH`]. The agents are
//! connected to the leader, not here: their connections are shown as the leader stored them
//! ([`crate::core::Core::adopt_live`]), and when no coordinator leads they are unknown, which
//! every answer says. Does not own the answers themselves: they are the leader's own code
//! ([`Services`]) run over the copy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kreach_domain::clock::Clock;
use kreach_proto as pb;
use pb::admin_service_server::AdminService;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::clusters::Clusters;
use crate::etcd_store::EtcdHandle;
use crate::grpc::{Auth, DiagnoseStream, Services, StatusStream};
use crate::leader::{Standing, LEADER_METADATA};
use crate::store::StoreRoot;

/// How old the follower's copy of the store may be before a read reads the store again; also
/// how often `watch` looks for a change.
pub const FRESH: Duration = Duration::from_secs(1);

/// The admin service of a coordinator that follows. Cheap to clone.
#[derive(Clone)]
pub struct Follower(Arc<Inner>);

struct Inner {
    reader: Arc<EtcdHandle>,
    state_dir: PathBuf,
    clock: Arc<dyn Clock>,
    standing: watch::Receiver<Standing>,
    auth: Auth,
    copy: tokio::sync::Mutex<Option<Copy>>,
}

/// The store as read at `at`.
#[derive(Clone)]
struct Copy {
    at: Instant,
    services: Services,
    /// The leader's record of the agents' connections was there for every cluster, and current.
    live_known: bool,
    /// Why etcd could not answer linearizably, when the copy came from one member's own store.
    stale: Option<String>,
}

impl Follower {
    pub fn new(
        reader: Arc<EtcdHandle>,
        state_dir: PathBuf,
        clock: Arc<dyn Clock>,
        standing: watch::Receiver<Standing>,
        auth: Auth,
    ) -> Follower {
        Follower(Arc::new(Inner {
            reader,
            state_dir,
            clock,
            standing,
            auth,
            copy: tokio::sync::Mutex::new(None),
        }))
    }

    fn standing(&self) -> Standing {
        self.0.standing.borrow().clone()
    }

    fn refusal(&self) -> Status {
        self.standing().refusal()
    }

    /// The copy of the store, read again when older than [`FRESH`]. When the store cannot be
    /// read, the refusal (so that clients go to the leader), with why.
    async fn copy(&self) -> Result<Copy, Status> {
        let mut copy = self.0.copy.lock().await;
        if let Some(fresh) = copy.as_ref().filter(|copy| copy.at.elapsed() < FRESH) {
            return Ok(fresh.clone());
        }
        let at = Instant::now();
        // Without a leader, or from a member's own copy, the leader's record of its agents may
        // be left over (without quorum etcd cannot expire the lease it is on).
        let leader_known = matches!(self.standing(), Standing::Follows(_));
        let (reader, state_dir, clock) = (
            Arc::clone(&self.0.reader),
            self.0.state_dir.clone(),
            Arc::clone(&self.0.clock),
        );
        let read = tokio::task::spawn_blocking(move || {
            reader.take_stale();
            let root = StoreRoot::Etcd(Arc::clone(&reader));
            let mut clusters = Clusters::open_in(&state_dir, root, clock)?;
            let mut live_known = clusters.adopt_live(leader_known)?;
            let stale = reader.take_stale();
            if stale.is_some() && live_known {
                live_known = clusters.adopt_live(false)?;
            }
            Ok::<_, crate::core::CoreError>((clusters, live_known, stale))
        })
        .await;
        let (clusters, live_known, stale) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => return Err(self.unreadable(&error.to_string())),
            Err(error) => return Err(self.unreadable(&error.to_string())),
        };
        let fresh = Copy {
            at,
            services: Services {
                clusters: Arc::new(Mutex::new(clusters)),
                auth: self.0.auth,
                dry_runs: Default::default(),
            },
            live_known,
            stale,
        };
        *copy = Some(fresh.clone());
        Ok(fresh)
    }

    fn unreadable(&self, why: &str) -> Status {
        tracing::warn!("a follower's read of the store failed: {why}");
        let refusal = self.refusal();
        Status::with_metadata(
            refusal.code(),
            format!(
                "{}; this follower cannot read the store either: {why}",
                refusal.message()
            ),
            refusal.metadata().clone(),
        )
    }

    /// Who answered from what, for `served_by`.
    fn served_by(&self, copy: &Copy) -> String {
        let standing = self.standing();
        let who = match &standing {
            Standing::Follows(url) => format!("the leader is at {url}"),
            Standing::NoLeader(why) => format!("no coordinator leads ({why})"),
            Standing::Starting => "it has not heard yet who leads".to_string(),
        };
        let from = match (&copy.stale, &standing) {
            (None, _) => "from the etcd store".to_string(),
            // Why etcd answers nothing up to date is the same as why nobody leads, said below.
            (Some(_), Standing::NoLeader(_)) => {
                "from one etcd member's own copy of the store, which may be stale".to_string()
            }
            (Some(why), _) => format!(
                "from one etcd member's own copy of the store, which may be stale (etcd answered no up-to-date read: {why})"
            ),
        };
        format!("a follower, {from}; {who}")
    }

    /// `response` as the answer of this follower: the leader's URL in `kreach-leader`, as a
    /// refusal would name it, so that a client that prefers the leader can go there.
    fn answer<T>(&self, mut response: Response<T>) -> Response<T> {
        if let Standing::Follows(url) = self.standing() {
            if let Ok(value) = url.parse() {
                response.metadata_mut().insert(LEADER_METADATA, value);
            }
        }
        response
    }

    /// One cluster's status from the copy, marked as this follower's.
    async fn status_of(&self, cluster: &str) -> Result<pb::StatusResponse, Status> {
        let copy = self.copy().await?;
        let mut status = copy
            .services
            .clusters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .core(cluster)?
            .status_response();
        status.served_by = self.served_by(&copy);
        status.liveness_unknown = !copy.live_known;
        Ok(status)
    }
}

#[tonic::async_trait]
impl AdminService for Follower {
    type WatchStream = StatusStream;
    type DiagnoseStream = DiagnoseStream;

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.0.auth.require_admin(&request)?;
        let status = self.status_of(&request.get_ref().cluster).await?;
        Ok(self.answer(Response::new(status)))
    }

    /// The status each time the copy, read again every [`FRESH`], shows a change.
    async fn watch(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        self.0.auth.require_admin(&request)?;
        let cluster = request.into_inner().cluster;
        let first = self.status_of(&cluster).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let follower = self.clone();
        tokio::spawn(async move {
            let mut last = first.clone();
            if sender.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(FRESH) => {}
                    _ = sender.closed() => return,
                }
                match follower.status_of(&cluster).await {
                    Ok(now) if now == last => {}
                    Ok(now) => {
                        last = now.clone();
                        if sender.send(Ok(now)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(self.answer(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        ))))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.0.auth.require_admin(&request)?;
        let copy = self.copy().await?;
        let mut response = copy.services.history(request).await?;
        response.get_mut().served_by = self.served_by(&copy);
        Ok(self.answer(response))
    }

    async fn nodes(
        &self,
        request: Request<pb::NodesRequest>,
    ) -> Result<Response<pb::NodesResponse>, Status> {
        self.0.auth.require_admin(&request)?;
        let copy = self.copy().await?;
        let mut response = copy.services.nodes(request).await?;
        response.get_mut().served_by = self.served_by(&copy);
        response.get_mut().liveness_unknown = !copy.live_known;
        Ok(self.answer(response))
    }

    async fn clusters(
        &self,
        request: Request<pb::ClustersRequest>,
    ) -> Result<Response<pb::ClustersResponse>, Status> {
        self.0.auth.require_admin(&request)?;
        let copy = self.copy().await?;
        let mut response = copy.services.clusters(request).await?;
        response.get_mut().served_by = self.served_by(&copy);
        response.get_mut().liveness_unknown = !copy.live_known;
        Ok(self.answer(response))
    }

    // Everything else writes, or needs the agents (connected to the leader): the leader's.

    async fn diagnose(
        &self,
        _: Request<pb::DiagnoseRequest>,
    ) -> Result<Response<DiagnoseStream>, Status> {
        Err(self.refusal())
    }

    async fn plan(
        &self,
        _: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        Err(self.refusal())
    }

    async fn apply(
        &self,
        _: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        Err(self.refusal())
    }

    async fn pause(
        &self,
        _: Request<pb::RolloutControl>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Err(self.refusal())
    }

    async fn resume(
        &self,
        _: Request<pb::RolloutControl>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Err(self.refusal())
    }

    async fn abort(
        &self,
        _: Request<pb::RolloutControl>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Err(self.refusal())
    }

    async fn rollback(
        &self,
        _: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        Err(self.refusal())
    }

    async fn client_config(
        &self,
        _: Request<pb::ClientConfigRequest>,
    ) -> Result<Response<pb::ClientConfigResponse>, Status> {
        Err(self.refusal())
    }

    async fn users(
        &self,
        _: Request<pb::UsersRequest>,
    ) -> Result<Response<pb::UsersResponse>, Status> {
        Err(self.refusal())
    }
}
