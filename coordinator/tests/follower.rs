//! A following coordinator's reads on a real etcd (Debian's etcd-server, started by the test):
//! `status`, `history` and `nodes` from the shared store, with the agents' connections as the
//! leader stored them, `unknown` once no coordinator leads; every write refused naming the
//! leader; and nothing written through the follower's connection.

use std::sync::Arc;
use std::time::Duration;

use kreach_coordinator::clusters::Clusters;
use kreach_coordinator::ctl;
use kreach_coordinator::etcd_store::{EtcdHandle, EtcdStore, Fence};
use kreach_coordinator::follower::{Follower, FRESH};
use kreach_coordinator::grpc::Auth;
use kreach_coordinator::leader::{Standing, LEADER_METADATA};
use kreach_coordinator::store::{Store, StoreRoot};
use kreach_proto as pb;
use kreach_proto::admin_service_server::AdminService;
use kreach_test_parts::etcd::EtcdCluster;
use tonic::Request;

const PREFIX: &str = "/follower";
const LEADER_URL: &str = "http://127.0.0.1:7443";

const SPEC: &str = "[cluster]\nname = \"kafka-a\"\n\
    [listeners.internal]\nadvertise = \"hostname\"\n\
    [[broker]]\nid = 1\nnode = \"b1\"\nhostname = \"b1.kafka-a\"\nprivate_ip = \"10.0.0.1\"\n\
    [[broker]]\nid = 2\nnode = \"b2\"\nhostname = \"b2.kafka-a\"\nprivate_ip = \"10.0.0.2\"\n";

fn client_config(etcd: &EtcdCluster) -> kreach_etcd::Config {
    kreach_etcd::Config {
        endpoints: etcd.endpoints(),
        tls: None,
        timeout: Duration::from_secs(2),
        require_leader: true,
    }
}

fn online(status: &pb::StatusResponse, node: &str) -> bool {
    status
        .nodes
        .iter()
        .find(|view| view.node == node)
        .unwrap_or_else(|| panic!("{node} in {:?}", status.nodes))
        .online
}

/// The follower's status once its copy of the store is older than [`FRESH`] (read again).
async fn status_once_stale(follower: &Follower) -> pb::StatusResponse {
    tokio::time::sleep(FRESH + Duration::from_millis(100)).await;
    follower
        .status(Request::new(pb::StatusRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_the_store_shows_the_leaders_agents_and_refuses_writes() {
    let Some(etcd) = EtcdCluster::start("follower_reads", 1) else {
        return;
    };
    let clock = Arc::new(kreach_runtime::clock::SteadyWallClock::new());

    // The leader: elected by hand (the leader key on a lease of its own), one spec applied, b1's
    // agent connected, b2's not.
    let leader = EtcdHandle::new(client_config(&etcd), PREFIX).unwrap();
    let client = leader.client().clone();
    let key = leader.leader_key();
    let (lease, revision) = {
        let (client, key) = (client.clone(), key.clone());
        leader
            .spawn(async move {
                let (lease, _) = client.lease_grant(30).await.unwrap();
                let revision = client
                    .put(&key, LEADER_URL.as_bytes(), lease)
                    .await
                    .unwrap();
                (lease, revision)
            })
            .await
            .unwrap()
    };
    leader.set_fence(Some(Fence {
        key,
        revision,
        lease,
    }));
    let leader_dir = tempfile::tempdir().unwrap();
    let (mut clusters, _b1) = {
        let (leader, dir, clock) = (
            Arc::clone(&leader),
            leader_dir.path().to_path_buf(),
            clock.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut clusters = Clusters::open_in(&dir, StoreRoot::Etcd(leader), clock).unwrap();
            clusters.apply(SPEC, true, "test").unwrap();
            let b1 = clusters.subscribe("b1").unwrap();
            clusters.tick().unwrap();
            (clusters, b1)
        })
        .await
        .unwrap()
    };

    // A follower, on a connection of its own that cannot write.
    let reader = EtcdHandle::new_reader(client_config(&etcd), PREFIX).unwrap();
    let (standing, standing_now) =
        tokio::sync::watch::channel(Standing::Follows(LEADER_URL.to_string()));
    let follower_dir = tempfile::tempdir().unwrap();
    let follower = Follower::new(
        Arc::clone(&reader),
        follower_dir.path().to_path_buf(),
        clock.clone(),
        standing_now,
        Auth::Insecure,
    );

    let answer = follower
        .status(Request::new(pb::StatusRequest::default()))
        .await
        .unwrap();
    assert_eq!(
        answer.metadata().get(LEADER_METADATA).unwrap(),
        LEADER_URL,
        "a follower's answer names the leader"
    );
    let status = answer.into_inner();
    assert_eq!(
        status.served_by,
        format!("a follower, from the etcd store; the leader is at {LEADER_URL}")
    );
    assert!(!status.liveness_unknown);
    assert_eq!(status.cluster, "kafka-a");
    assert_eq!(status.rollout.as_ref().unwrap().generation, 1);
    assert!(
        online(&status, "b1"),
        "b1's agent is connected to the leader"
    );
    assert!(!online(&status, "b2"), "b2's agent never connected");
    let text = ctl::status_text(&status);
    assert!(
        text.starts_with(&format!(
            "answered by a follower, from the etcd store; the leader is at {LEADER_URL}\n"
        )),
        "{text}"
    );

    let history = follower
        .history(Request::new(pb::HistoryRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.generations.len(), 1);
    assert_eq!(history.generations[0].generation, 1);
    assert!(history.served_by.starts_with("a follower"));
    let nodes = follower
        .nodes(Request::new(pb::NodesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nodes.online, [true], "{nodes:?}");

    // Writes, and what needs the agents, are the leader's.
    let refused = follower
        .apply(Request::new(pb::ApplyRequest {
            spec_toml: SPEC.to_string(),
            force: true,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        refused.message(),
        format!("not the leader: this coordinator follows; the leader is at {LEADER_URL}")
    );
    // The follower's connection never writes: not a new store's format marker (a store no
    // coordinator has created is said to be missing), not a record of an existing one.
    let (missing, written) = {
        let reader = Arc::clone(&reader);
        tokio::task::spawn_blocking(move || {
            let missing = Store::open_etcd(EtcdStore::new(Arc::clone(&reader), Some("never")))
                .err()
                .unwrap()
                .to_string();
            let home = Store::open_etcd(EtcdStore::new(reader, None)).unwrap();
            let written = home
                .save_rollout(&"a follower's write")
                .unwrap_err()
                .to_string();
            (missing, written)
        })
        .await
        .unwrap()
    };
    assert_eq!(
        missing,
        "coordinator store etcd:/follower/clusters/never/: not there yet: no coordinator has led on this prefix (the first to lead creates it)"
    );
    assert!(
        written.contains("this coordinator follows: it reads the store and never writes it"),
        "{written}"
    );

    // b1's agent goes away: the leader stores it at its next tick, the follower shows it once
    // its copy is older than FRESH.
    clusters = tokio::task::spawn_blocking(move || {
        clusters.disconnect("b1");
        clusters.tick().unwrap();
        clusters
    })
    .await
    .unwrap();
    let status = status_once_stale(&follower).await;
    assert!(!online(&status, "b1"), "b1's agent went away");
    assert!(!status.liveness_unknown);
    assert!(ctl::status_text(&status).contains("OFFLINE"));

    // The leader goes (its lease revoked, as a stopping leader does): its record of the
    // agents goes with it, and until another coordinator leads nobody knows who is connected.
    leader
        .spawn(async move { client.lease_revoke(lease).await.unwrap() })
        .await
        .unwrap();
    standing.send_replace(Standing::NoLeader("etcd: the leader key is free".into()));
    let status = status_once_stale(&follower).await;
    assert!(status.liveness_unknown);
    assert_eq!(
        status.served_by,
        "a follower, from the etcd store; no coordinator leads (etcd: the leader key is free)"
    );
    assert_eq!(
        status.rollout.as_ref().unwrap().generation,
        1,
        "the state is still there"
    );
    let text = ctl::status_text(&status);
    assert!(
        text.contains("the agents' connections are unknown while no coordinator leads"),
        "{text}"
    );
    let b1_row = text
        .lines()
        .find(|line| line.starts_with("b1 "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        b1_row.contains("unknown") && !b1_row.contains("OFFLINE"),
        "{b1_row}"
    );
    assert_eq!(
        ctl::status_json(&status)["nodes"][0]["online"],
        serde_json::Value::Null
    );
    let nodes = follower
        .nodes(Request::new(pb::NodesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(nodes.liveness_unknown);
    drop(clusters);
}
