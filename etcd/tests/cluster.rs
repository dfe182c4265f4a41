//! The client against a real three-member etcd 3.4 cluster (tier `ha`): each test starts its own
//! cluster on free loopback ports (test-parts `EtcdCluster`) and tears it down.
//!
//! One cluster runs at a time: three members per test with 50 ms heartbeats on a two-core CI
//! machine lose their leader under load, and a flapping leader would make these tests flaky for
//! reasons that are not the client's.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kreach_etcd::{Client, Compare, Config, Error, Op, Txn, PAGE_KEYS};
use kreach_test_parts::EtcdCluster;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Running {
    cluster: EtcdCluster,
    // Declared after `cluster`, so released only once its members are gone.
    _turn: MutexGuard<'static, ()>,
}

fn three_members(test: &str) -> Option<Running> {
    let turn = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cluster = EtcdCluster::start(test, 3)?;
    Some(Running {
        cluster,
        _turn: turn,
    })
}

fn client(endpoints: Vec<String>, require_leader: bool) -> Client {
    Client::new(Config {
        endpoints,
        tls: None,
        timeout: Duration::from_secs(2),
        require_leader,
    })
    .expect("a valid client config")
}

fn put_op(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
    }
}

#[tokio::test]
async fn keys_written_are_read_back_and_a_prefix_is_listed_across_pages() {
    let Some(running) = three_members("keys_written_are_read_back") else {
        return;
    };
    let etcd = client(running.cluster.endpoints(), true);

    let revision = etcd.put(b"one", b"1", 0).await.unwrap();
    let kv = etcd
        .get(b"one")
        .await
        .unwrap()
        .expect("the key just written");
    assert_eq!(kv.value, b"1");
    assert_eq!((kv.create_revision, kv.mod_revision), (revision, revision));
    assert_eq!(etcd.get(b"missing").await.unwrap(), None);

    // More keys than one page holds, written 100 per txn.
    let count = 1100;
    assert!(count > PAGE_KEYS as usize, "the listing must span pages");
    let mut last_write = 0;
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let then = chunk
            .iter()
            .map(|i| put_op(format!("list/{i:05}"), format!("value {i}")))
            .collect();
        let result = etcd
            .txn(Txn {
                then,
                ..Txn::default()
            })
            .await
            .unwrap();
        assert!(result.succeeded);
        last_write = result.revision;
    }
    // Neighbours of the prefix that must not be listed.
    etcd.put(b"list", b"not under list/", 0).await.unwrap();
    etcd.put(b"list0", b"just past list/", 0).await.unwrap();

    let (kvs, read_at) = etcd.get_prefix(b"list/").await.unwrap();
    assert_eq!(kvs.len(), count, "every key under the prefix, once");
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv.key, format!("list/{i:05}").into_bytes(), "sorted by key");
        assert_eq!(kv.value, format!("value {i}").into_bytes());
    }
    assert!(read_at > last_write, "read at the current revision");
}

#[tokio::test]
async fn a_write_fenced_on_the_leader_key_lands_only_while_that_key_is_unchanged() {
    let Some(running) = three_members("a_write_fenced_on_the_leader_key") else {
        return;
    };
    let etcd = client(running.cluster.endpoints(), true);
    let leader = b"election/leader".to_vec();

    // Become leader: create the key only if absent.
    let won = etcd
        .txn(Txn {
            when: vec![Compare::CreateRevision {
                key: leader.clone(),
                equals: 0,
            }],
            then: vec![put_op(leader.clone(), "me")],
            otherwise: vec![Op::Get {
                key: leader.clone(),
            }],
        })
        .await
        .unwrap();
    assert!(won.succeeded);
    assert!(won.gets.is_empty(), "the branch taken had no Get");
    let epoch = won.revision;

    let fenced = |value: &str| Txn {
        when: vec![Compare::CreateRevision {
            key: leader.clone(),
            equals: epoch,
        }],
        then: vec![put_op("state", value)],
        otherwise: vec![Op::Get {
            key: leader.clone(),
        }],
    };
    let write = etcd.txn(fenced("written by me")).await.unwrap();
    assert!(write.succeeded, "the leader's fenced write lands");

    // Deposed: the key is deleted and re-created by another candidate.
    etcd.txn(Txn {
        then: vec![Op::Delete {
            key: leader.clone(),
        }],
        ..Txn::default()
    })
    .await
    .unwrap();
    etcd.put(&leader, b"other", 0).await.unwrap();

    let late = etcd.txn(fenced("late write")).await.unwrap();
    assert!(!late.succeeded, "a deposed leader's write must not land");
    assert_eq!(late.gets.len(), 1);
    assert_eq!(late.gets[0].len(), 1);
    assert_eq!(
        late.gets[0][0].value, b"other",
        "the otherwise branch reads the new leader"
    );
    assert!(late.gets[0][0].create_revision > epoch);
    let state = etcd.get(b"state").await.unwrap().unwrap();
    assert_eq!(state.value, b"written by me");

    // ModRevision and Value compares hold and fail the same way.
    let current = etcd.get(&leader).await.unwrap().unwrap();
    let both = etcd
        .txn(Txn {
            when: vec![
                Compare::ModRevision {
                    key: leader.clone(),
                    equals: current.mod_revision,
                },
                Compare::Value {
                    key: leader.clone(),
                    equals: b"other".to_vec(),
                },
            ],
            then: vec![Op::Get {
                key: leader.clone(),
            }],
            otherwise: vec![],
        })
        .await
        .unwrap();
    assert!(both.succeeded);
    assert_eq!(both.gets[0][0].value, b"other");
}

#[tokio::test]
async fn a_txn_of_more_than_128_operations_is_refused_whole() {
    let Some(running) = three_members("a_txn_of_more_than_128_operations") else {
        return;
    };
    let etcd = client(running.cluster.endpoints(), true);
    let puts = |count: usize| Txn {
        then: (0..count)
            .map(|i| put_op(format!("ops/{count}/{i}"), "x"))
            .collect(),
        ..Txn::default()
    };

    match etcd.txn(puts(129)).await {
        Err(Error::Rejected { code, message }) => {
            assert_eq!(code, tonic::Code::InvalidArgument);
            assert!(
                message.contains("too many operations in txn request"),
                "{message}"
            );
        }
        other => panic!("129 operations must be refused, got {other:?}"),
    }
    let (written, _) = etcd.get_prefix(b"ops/129/").await.unwrap();
    assert!(written.is_empty(), "nothing of a refused txn is written");

    assert!(
        etcd.txn(puts(128)).await.unwrap().succeeded,
        "128 is the limit"
    );
    assert_eq!(etcd.get_prefix(b"ops/128/").await.unwrap().0.len(), 128);
}

#[tokio::test]
async fn a_revoked_lease_cannot_be_kept_alive_and_takes_its_keys() {
    let Some(running) = three_members("a_revoked_lease") else {
        return;
    };
    let etcd = client(running.cluster.endpoints(), true);

    let (lease, granted) = etcd.lease_grant(10).await.unwrap();
    assert_ne!(lease, 0);
    assert_eq!(granted, 10);
    etcd.put(b"owned", b"by the lease", lease).await.unwrap();
    assert_eq!(etcd.get(b"owned").await.unwrap().unwrap().lease, lease);

    let remaining = etcd.lease_keep_alive(lease).await.unwrap();
    assert!(remaining > 0 && remaining <= 10, "renewed: {remaining}");

    etcd.lease_revoke(lease).await.unwrap();
    let remaining = etcd.lease_keep_alive(lease).await.unwrap();
    assert!(remaining <= 0, "a revoked lease is gone: {remaining}");
    assert_eq!(
        etcd.get(b"owned").await.unwrap(),
        None,
        "its key went with it"
    );
}

#[tokio::test]
async fn reads_work_after_a_compaction_and_compacting_below_it_is_refused() {
    let Some(running) = three_members("reads_work_after_a_compaction") else {
        return;
    };
    let etcd = client(running.cluster.endpoints(), true);
    let first = etcd.put(b"c/key", b"v1", 0).await.unwrap();
    let second = etcd.put(b"c/key", b"v2", 0).await.unwrap();
    etcd.put(b"c/other", b"o", 0).await.unwrap();

    etcd.compact(second).await.unwrap();
    assert_eq!(etcd.get(b"c/key").await.unwrap().unwrap().value, b"v2");
    let (kvs, _) = etcd.get_prefix(b"c/").await.unwrap();
    let values: Vec<&[u8]> = kvs.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, [b"v2".as_slice(), b"o".as_slice()]);

    match etcd.compact(first).await {
        Err(Error::Rejected { message, .. }) => {
            assert!(message.contains("compacted"), "{message}")
        }
        other => panic!("compacting below the compacted revision must fail, got {other:?}"),
    }
}

#[tokio::test]
async fn a_killed_member_is_skipped_and_every_write_lands() {
    let Some(mut running) = three_members("a_killed_member_is_skipped") else {
        return;
    };
    let etcd = client(running.cluster.endpoints(), true);
    // Member 0 is the one the client uses.
    etcd.put(b"f/before", b"x", 0).await.unwrap();

    running.cluster.kill(0);
    // The survivors elect a leader if member 0 was it; writes before that fail on every client.
    running.cluster.wait_healthy(1, Duration::from_secs(10));
    running.cluster.wait_healthy(2, Duration::from_secs(10));

    for i in 0..30 {
        let write = etcd.put(format!("f/{i:02}").as_bytes(), b"x", 0).await;
        assert!(write.is_ok(), "put {i} with member 0 dead: {write:?}");
    }
    let (kvs, _) = etcd.get_prefix(b"f/").await.unwrap();
    assert_eq!(kvs.len(), 31);

    // Back from its data dir, member 0 catches up on what it missed.
    running.cluster.restart(0);
    running.cluster.wait_healthy(0, Duration::from_secs(10));
    let only_member_0 = client(vec![running.cluster.endpoint(0)], true);
    assert_eq!(only_member_0.get_prefix(b"f/").await.unwrap().0.len(), 31);
}

#[tokio::test]
async fn without_quorum_writes_fail_fast_and_serializable_reads_still_answer() {
    let Some(mut running) = three_members("without_quorum_writes_fail_fast") else {
        return;
    };
    let writer = client(running.cluster.endpoints(), true);
    writer.put(b"q/state", b"last known", 0).await.unwrap();
    // Member 2 must have applied the write before it is left alone.
    let only_member_2 = client(vec![running.cluster.endpoint(2)], false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while only_member_2
        .get_prefix_serializable(b"q/")
        .await
        .unwrap()
        .0
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "member 2 never applied the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    running.cluster.kill(0);
    running.cluster.kill(1);
    // Until its election timeout, member 2 still believes in the old leader.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.cluster.health(2) != Some(false) {
        assert!(
            Instant::now() < deadline,
            "member 2 kept a leader without quorum"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let write = writer.put(b"q/state", b"new", 0).await;
    let took = started.elapsed();
    assert!(
        matches!(write, Err(Error::Unavailable { .. })),
        "a write without quorum must be Unavailable, got {write:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "it must fail fast, took {took:?}"
    );

    let reader = client(running.cluster.endpoints(), false);
    let (kvs, _) = reader.get_prefix_serializable(b"q/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, b"last known", "the stale read still answers");
    let kv = reader.get_serializable(b"q/state").await.unwrap().unwrap();
    assert_eq!(kv.value, b"last known", "one key too");
    assert!(
        reader.get(b"q/state").await.is_err(),
        "a linearizable read has no answer without quorum"
    );
}
