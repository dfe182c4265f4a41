//! The real `kreach-agent run` against a minimal in-test coordinator (plaintext on loopback): it
//! applies what is released, reports it, keeps repairing drift while the coordinator is gone, and
//! tells the next coordinator what it applied.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kreach_domain::desired::node_spec;
use kreach_domain::spec::ClusterSpec;
use kreach_proto as pb;
use kreach_proto::agent_service_server::{AgentService, AgentServiceServer};
use support::{expected_client_hosts, wait_until, Host, Ports, SpecOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Recorded {
    subscribes: Vec<pb::SubscribeRequest>,
    statuses: Vec<pb::NodeStatus>,
    facts: Vec<pb::HostFacts>,
    audit: Vec<pb::AuditRecord>,
    health: Vec<pb::AgentHealth>,
}

type Streams = Arc<Mutex<Vec<mpsc::Sender<Result<pb::Release, Status>>>>>;

/// Sends `releases` to every subscriber and records everything the agent reports.
struct TestAgentService {
    releases: Vec<pb::Release>,
    recorded: Arc<Mutex<Recorded>>,
    /// Open streams stay open until the coordinator is dropped.
    streams: Streams,
}

#[tonic::async_trait]
impl AgentService for TestAgentService {
    type SubscribeStream = ReceiverStream<Result<pb::Release, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.recorded
            .lock()
            .unwrap()
            .subscribes
            .push(request.into_inner());
        let (sender, receiver) = mpsc::channel(self.releases.len().max(1));
        for release in &self.releases {
            sender.send(Ok(release.clone())).await.unwrap();
        }
        self.streams.lock().unwrap().push(sender);
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn report_status(
        &self,
        request: Request<pb::NodeStatus>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.recorded
            .lock()
            .unwrap()
            .statuses
            .push(request.into_inner());
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_facts(
        &self,
        request: Request<pb::HostFacts>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.recorded
            .lock()
            .unwrap()
            .facts
            .push(request.into_inner());
        Ok(Response::new(pb::Ack {}))
    }

    async fn report_audit(
        &self,
        request: Request<pb::AuditReport>,
    ) -> Result<Response<pb::AuditAck>, Status> {
        let mut recorded = self.recorded.lock().unwrap();
        recorded.audit.extend(request.into_inner().records);
        let last_seq = recorded.audit.iter().map(|r| r.seq).max().unwrap_or(0);
        Ok(Response::new(pb::AuditAck { last_seq }))
    }

    async fn report_health(
        &self,
        request: Request<pb::AgentHealth>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.recorded
            .lock()
            .unwrap()
            .health
            .push(request.into_inner());
        Ok(Response::new(pb::Ack {}))
    }

    type DryRunsStream = ReceiverStream<Result<pb::DryRunRequest, Status>>;

    /// An older coordinator, without dry runs: the agent must work on without them.
    async fn dry_runs(
        &self,
        _request: Request<pb::DryRunSubscription>,
    ) -> Result<Response<Self::DryRunsStream>, Status> {
        Err(Status::unimplemented(
            "this test coordinator takes no dry runs",
        ))
    }

    async fn report_dry_run(
        &self,
        _request: Request<pb::DryRunReport>,
    ) -> Result<Response<pb::Ack>, Status> {
        Err(Status::unimplemented(
            "this test coordinator takes no dry runs",
        ))
    }

    async fn report_diagnose(
        &self,
        _request: Request<pb::DiagnoseStep>,
    ) -> Result<Response<pb::Ack>, Status> {
        Err(Status::unimplemented(
            "this test coordinator asks for no diagnoses",
        ))
    }
}

/// A coordinator on 127.0.0.1 in its own runtime; dropping it closes the port and every connection.
struct TestCoordinator {
    runtime: Option<tokio::runtime::Runtime>,
    port: u16,
    recorded: Arc<Mutex<Recorded>>,
}

impl TestCoordinator {
    /// Listen on `port` (0: any free port), retrying while a previous listener's port is released.
    fn start(port: u16, releases: Vec<pb::Release>) -> TestCoordinator {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut listener = None;
        wait_until(Duration::from_secs(5), || {
            listener = runtime
                .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
                .ok();
            listener.is_some()
        });
        let listener = listener.unwrap_or_else(|| panic!("cannot listen on 127.0.0.1:{port}"));
        let port = listener.local_addr().unwrap().port();
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let service = TestAgentService {
            releases,
            recorded: Arc::clone(&recorded),
            streams: Streams::default(),
        };
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        TestCoordinator {
            runtime: Some(runtime),
            port,
            recorded,
        }
    }

    fn statuses_for(&self, id: pb::ReleaseId) -> Vec<pb::NodeStatus> {
        self.recorded
            .lock()
            .unwrap()
            .statuses
            .iter()
            .filter(|status| status.release == Some(id))
            .cloned()
            .collect()
    }

    fn phases_for(&self, id: pb::ReleaseId) -> Vec<pb::Phase> {
        self.recorded
            .lock()
            .unwrap()
            .statuses
            .iter()
            .filter(|status| status.release == Some(id))
            .map(|status| status.phase())
            .collect()
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[test]
fn the_agent_applies_releases_reports_them_and_keeps_enforcing_while_the_coordinator_is_gone() {
    let host = Host::client("etl-1");
    let ports = Ports::new();
    let spec_path = host.write_spec(&SpecOptions::new(&ports));
    let spec = ClusterSpec::parse(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let desired = node_spec(&spec, "etl-1").unwrap();
    let id = pb::ReleaseId {
        generation: 7,
        step: 1,
        attempt: 1,
    };
    let release = pb::Release {
        id: Some(id),
        spec: Some(pb::NodeSpec::from(&desired)),
        released_by: "rollout gen 7 step 1: clients".into(),
        clusters: Vec::new(),
    };
    let coordinator = TestCoordinator::start(0, vec![release.clone()]);
    let port = coordinator.port;
    host.append_config(&format!(
        "[coordinator]\nurl = \"http://127.0.0.1:{port}\"\ninsecure = true\n"
    ));
    let expected = expected_client_hosts("127.0.0.1\tlocalhost\n", &spec_path);
    assert!(expected.contains("198.18.0.11"), "{expected}");

    let mut agent = host.spawn_agent(&["run"]);

    // The release is applied and reported: APPLYING, then CONVERGED, for that release.
    wait_until(Duration::from_secs(15), || {
        coordinator.phases_for(id).contains(&pb::Phase::Converged)
    });
    assert_eq!(
        coordinator.phases_for(id),
        vec![pb::Phase::Applying, pb::Phase::Converged],
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(host.hosts(), expected);
    // The change is handed over from the agent's audit trail right after the release.
    wait_until(Duration::from_secs(15), || {
        !coordinator.recorded.lock().unwrap().audit.is_empty()
    });
    {
        let recorded = coordinator.recorded.lock().unwrap();
        let audit = &recorded.audit;
        assert_eq!(audit.len(), 1, "one file written: {audit:?}");
        assert_eq!(
            (
                audit[0].seq,
                audit[0].action.as_str(),
                audit[0].file.as_str()
            ),
            (1, "apply", "hosts block"),
            "{audit:?}"
        );
        assert_eq!(audit[0].generation, id.generation, "{audit:?}");
        assert!(
            audit[0].old_hash.len() == 64 && audit[0].new_hash.len() == 64,
            "{audit:?}"
        );
    }
    {
        let recorded = coordinator.recorded.lock().unwrap();
        let facts = recorded.facts.first().expect("facts reported on connect");
        assert_eq!(facts.node, "etl-1");
        assert!(!facts.hostname.is_empty(), "{facts:?}");
        assert_eq!(recorded.subscribes.len(), 1);
        assert_eq!(recorded.subscribes[0].node, "etl-1");
        assert_eq!(recorded.subscribes[0].applied, None);
    }
    let state = host.agent(&["state"]);
    let state: serde_json::Value = serde_json::from_str(&state.stdout).unwrap();
    assert_eq!(
        (&state["generation"], &state["step"], &state["attempt"]),
        (&7.into(), &1.into(), &1.into()),
        "{state}"
    );
    assert_eq!(state["released_by"], "rollout gen 7 step 1: clients");

    // The coordinator goes away: the agent keeps running and keeps repairing its block.
    drop(coordinator);
    agent.wait_for_log("coordinator connection lost", Duration::from_secs(10));
    agent.wait_for_log("cannot connect to the coordinator", Duration::from_secs(10));
    // Written atomically like an editor's save: a plain truncate-and-write could be read half-done.
    let tampered = host.root().join("hosts.edit");
    std::fs::write(&tampered, expected.replace("198.18.0.11", "198.18.0.99")).unwrap();
    std::fs::rename(&tampered, host.hosts_path()).unwrap();
    let took = wait_until(Duration::from_secs(10), || host.hosts() == expected);
    assert_eq!(
        host.hosts(),
        expected,
        "drift repaired while disconnected; log:\n{}",
        agent.log()
    );
    assert!(took < Duration::from_secs(10));
    let repaired_mtime = host.mtimes()[0];

    // A new coordinator on the same port: the agent re-subscribes with what it applied, and the
    // same release, already applied, is only confirmed (no APPLYING, no write).
    let coordinator = TestCoordinator::start(port, vec![release]);
    wait_until(Duration::from_secs(30), || {
        coordinator.phases_for(id).contains(&pb::Phase::Converged)
    });
    assert_eq!(
        coordinator.phases_for(id),
        vec![pb::Phase::Converged],
        "agent log:\n{}",
        agent.log()
    );
    {
        let recorded = coordinator.recorded.lock().unwrap();
        assert_eq!(recorded.subscribes[0].applied, Some(id));
        assert!(!recorded.facts.is_empty());
    }
    assert_eq!(host.hosts(), expected);
    assert_eq!(host.mtimes()[0], repaired_mtime, "nothing was rewritten");

    assert_eq!(
        agent.terminate(Duration::from_secs(5)),
        Some(0),
        "SIGTERM stops the agent with exit 0 within 5 s; log:\n{}",
        agent.log()
    );
}

#[test]
fn releases_for_another_node_or_with_invalid_wire_data_fail_and_change_nothing() {
    let host = Host::client("etl-1");
    let ports = Ports::new();
    let spec_path = host.write_spec(&SpecOptions::new(&ports));
    let spec = ClusterSpec::parse(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let other_node = pb::ReleaseId {
        generation: 3,
        step: 1,
        attempt: 1,
    };
    let bad_address = pb::ReleaseId {
        generation: 3,
        step: 1,
        attempt: 2,
    };
    let mut invalid = pb::NodeSpec::from(&node_spec(&spec, "etl-1").unwrap());
    invalid.hosts_entries[0].ip = "not-an-address".into();
    let releases = vec![
        pb::Release {
            id: Some(other_node),
            spec: Some(pb::NodeSpec::from(
                &node_spec(&spec, "emr-worker-1").unwrap(),
            )),
            released_by: "test".into(),
            clusters: Vec::new(),
        },
        pb::Release {
            id: Some(bad_address),
            spec: Some(invalid),
            released_by: "test".into(),
            clusters: Vec::new(),
        },
    ];
    let coordinator = TestCoordinator::start(0, releases);
    host.append_config(&format!(
        "[coordinator]\nurl = \"http://127.0.0.1:{}\"\ninsecure = true\n",
        coordinator.port
    ));
    let before = host.hosts();
    let mut agent = host.spawn_agent(&["run"]);
    wait_until(Duration::from_secs(15), || {
        !coordinator.statuses_for(bad_address).is_empty()
    });

    let refused = coordinator.statuses_for(other_node);
    assert_eq!(refused.len(), 1, "log:\n{}", agent.log());
    assert_eq!(refused[0].phase(), pb::Phase::Failed);
    assert!(
        refused[0].reason.contains("emr-worker-1")
            && refused[0].reason.contains("nothing was applied"),
        "{}",
        refused[0].reason
    );
    let invalid = coordinator.statuses_for(bad_address);
    assert_eq!(invalid.len(), 1, "log:\n{}", agent.log());
    assert_eq!(invalid[0].phase(), pb::Phase::Failed);
    assert!(
        invalid[0].reason.contains("NodeSpec.hosts_entries[0].ip"),
        "{}",
        invalid[0].reason
    );
    assert_eq!(host.hosts(), before, "nothing was applied");
    assert_eq!(host.agent(&["state"]).stdout.trim(), "null");
    assert_eq!(agent.terminate(Duration::from_secs(5)), Some(0));
}
