//! The coordinator's store on a real three-member etcd (Debian's etcd-server, started by the
//! test): the same records as redb, writes cut within etcd's limits, and a deposed leader's writes
//! refused inside etcd (fencing).

use std::sync::Arc;
use std::time::Duration;

use kreach_coordinator::etcd_store::{EtcdHandle, EtcdStore, Fence};
use kreach_coordinator::store::{
    AgentRecord, AuditBatch, GenerationRecord, Store, AUDIT_KEPT_PER_NODE,
};
use kreach_domain::report::AuditRecord;
use kreach_test_parts::etcd::EtcdCluster;

fn handle(etcd: &EtcdCluster, prefix: &str) -> Arc<EtcdHandle> {
    EtcdHandle::new(
        kreach_etcd::Config {
            endpoints: etcd.endpoints(),
            tls: None,
            timeout: Duration::from_secs(2),
            require_leader: true,
        },
        prefix,
    )
    .unwrap()
}

fn entry(seq: u64) -> AuditRecord {
    AuditRecord {
        seq,
        reason: format!("entry {seq}"),
        ..AuditRecord::default()
    }
}

#[test]
fn records_survive_a_new_connection_and_big_writes_are_cut_within_etcds_limits() {
    let Some(etcd) = EtcdCluster::start("etcd_store_records", 3) else {
        return;
    };
    {
        let handle = handle(&etcd, "/t");
        let store = Store::open_etcd(EtcdStore::new(Arc::clone(&handle), None)).unwrap();
        let record = GenerationRecord {
            generation: 1,
            spec_toml: "[cluster]\nname = \"a\"\n".into(),
            applied_at_ms: 5,
            summary: "first".into(),
            rollback_of: None,
            outcome: None,
        };
        store.record_generation(&record, &vec![1, 2, 3]).unwrap();
        // 300 agents: more than one transaction may carry (etcd's --max-txn-ops is 128).
        let agents: Vec<(String, AgentRecord)> = (0..300)
            .map(|n| {
                (
                    format!("node-{n:03}"),
                    AgentRecord {
                        last_seen_ms: n,
                        ..AgentRecord::default()
                    },
                )
            })
            .collect();
        store.save_agents(&agents).unwrap();
        // 1,100 audit entries in one batch: kept, then pruned to the latest 1,000.
        let batch = AuditBatch {
            node: "node-007".into(),
            entries: (1..=1100).map(entry).collect(),
            restarted: false,
        };
        assert_eq!(store.write_reports(&[batch], &[]).unwrap(), vec![1100]);
        // A resend of the last 10 is a duplicate.
        let again = AuditBatch {
            node: "node-007".into(),
            entries: (1091..=1100).map(entry).collect(),
            restarted: false,
        };
        assert_eq!(store.write_reports(&[again], &[]).unwrap(), vec![1100]);
        let cluster = Store::open_etcd(EtcdStore::new(Arc::clone(&handle), Some("b"))).unwrap();
        cluster.save_rollout(&"b's").unwrap();
    }
    let handle = handle(&etcd, "/t");
    let store = Store::open_etcd(EtcdStore::new(Arc::clone(&handle), None)).unwrap();
    assert_eq!(store.generations().unwrap().len(), 1);
    assert_eq!(store.generation(1).unwrap().unwrap().summary, "first");
    assert_eq!(
        store.load_rollout::<Vec<u32>>().unwrap(),
        Some(vec![1, 2, 3])
    );
    let agents = store.agents().unwrap();
    assert_eq!(agents.len(), 300);
    assert_eq!(agents[299].1.last_seen_ms, 299);
    let audit = store.audit("node-007", None).unwrap();
    assert_eq!(audit.len() as u64, AUDIT_KEPT_PER_NODE);
    assert_eq!(audit.first().unwrap().seq, 101);
    assert_eq!(audit.last().unwrap().seq, 1100);
    assert_eq!(store.audit_last_seq("node-007").unwrap(), 1100);
    assert_eq!(handle.cluster_names().unwrap(), vec!["b".to_string()]);
    let cluster = Store::open_etcd(EtcdStore::new(Arc::clone(&handle), Some("b"))).unwrap();
    assert_eq!(
        cluster.load_rollout::<String>().unwrap().as_deref(),
        Some("b's")
    );
    // Another prefix sees none of it.
    let other = Store::open_etcd(EtcdStore::new(self::handle(&etcd, "/other"), None)).unwrap();
    assert!(other.generations().unwrap().is_empty());
}

#[test]
fn a_deposed_leaders_write_is_refused_inside_etcd_and_says_so() {
    let Some(etcd) = EtcdCluster::start("etcd_store_fencing", 3) else {
        return;
    };
    let handle = handle(&etcd, "/f");
    let key = handle.leader_key();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = handle.client().clone();
    let revision = runtime
        .block_on(client.put(&key, b"http://127.0.0.1:1", 0))
        .unwrap();
    handle.set_fence(Some(Fence {
        key: key.clone(),
        revision,
        lease: 0,
    }));
    let store = Store::open_etcd(EtcdStore::new(Arc::clone(&handle), None)).unwrap();
    store.save_rollout(&"step 1").unwrap();
    assert!(handle.deposed().borrow().is_none());

    // Another coordinator is elected: the key is deleted and created again.
    runtime.block_on(async {
        client
            .txn(kreach_etcd::Txn {
                then: vec![kreach_etcd::Op::Delete { key: key.clone() }],
                ..Default::default()
            })
            .await
            .unwrap();
        client.put(&key, b"http://127.0.0.1:2", 0).await.unwrap();
    });
    let error = store.save_rollout(&"step 2").unwrap_err().to_string();
    assert!(
        error.contains("this coordinator no longer leads"),
        "{error}"
    );
    assert!(handle
        .deposed()
        .borrow()
        .as_deref()
        .is_some_and(|why| why.contains("no longer leads")));
    handle.set_fence(None);
    assert_eq!(
        store.load_rollout::<String>().unwrap().as_deref(),
        Some("step 1"),
        "the refused write left nothing"
    );
}

/// One etcd member serving TLS and asking for client certificates, started and stopped (by pid)
/// by the test.
struct TlsMember {
    child: std::process::Child,
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn certs(dir: &std::path::Path) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_kreachctl"))
        .args(["certs", "init", "--node", "etcd-client", "--certs"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_etcd_store_over_tls_with_a_client_certificate_and_a_wrong_ca_refused_with_the_reason() {
    let test = "etcd_store_tls";
    let missing = (!std::path::Path::new(kreach_test_parts::etcd::ETCD).exists()).then(|| {
        kreach_test_parts::Missing::new(
            "etcd (Debian etcd-server)",
            kreach_test_parts::etcd::INSTALL_ETCD,
        )
    });
    if !kreach_test_parts::require(kreach_test_parts::Tier::Ha, test, missing) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (dir.path().join("good"), dir.path().join("other"));
    certs(&good);
    certs(&other);
    let (client_port, peer_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let child = std::process::Command::new(kreach_test_parts::etcd::ETCD)
        .args(["--name", "m0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("m0={peer}")])
        .arg("--cert-file")
        .arg(good.join("coordinator.pem"))
        .arg("--key-file")
        .arg(good.join("coordinator.key"))
        .arg("--trusted-ca-file")
        .arg(good.join("ca.pem"))
        .args([
            "--client-cert-auth",
            "--logger",
            "zap",
            "--log-level",
            "error",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _member = TlsMember { child };
    let config = |certs: &std::path::Path, with_client_cert: bool| {
        let client = if with_client_cert {
            format!(
                "cert = {:?}\nkey = {:?}\n",
                certs.join("nodes/etcd-client.pem"),
                certs.join("nodes/etcd-client.key")
            )
        } else {
            String::new()
        };
        kreach_coordinator::config::CoordinatorConfig::parse(&format!(
            "listen = \"127.0.0.1:0\"\n[tls]\ninsecure = true\n[store]\nkind = \"etcd\"\nendpoints = [{url:?}]\nprefix = \"/tls\"\nca = {:?}\n{client}",
            certs.join("ca.pem")
        ))
        .unwrap()
    };
    // The member takes a moment to start: retry the first write for a while.
    let handle = EtcdHandle::from_config(&config(&good, true).store).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let store = loop {
        match Store::open_etcd(EtcdStore::new(Arc::clone(&handle), None)) {
            Ok(store) => break store,
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "{error}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    store.save_rollout(&"over TLS").unwrap();
    assert_eq!(
        store.load_rollout::<String>().unwrap().as_deref(),
        Some("over TLS")
    );

    // Another CA: the member's certificate is not trusted, and the error says so.
    let handle = EtcdHandle::from_config(&config(&other, true).store).unwrap();
    let error = Store::open_etcd(EtcdStore::new(handle, None))
        .err()
        .expect("refused")
        .to_string();
    eprintln!("another CA: {error}");
    assert!(error.contains(&url), "{error}");
    assert!(
        error.to_lowercase().contains("certificate"),
        "the reason names the certificate: {error}"
    );
    // No client certificate: the member refuses the connection.
    let handle = EtcdHandle::from_config(&config(&good, false).store).unwrap();
    let error = Store::open_etcd(EtcdStore::new(handle, None))
        .err()
        .expect("refused")
        .to_string();
    eprintln!("no client certificate: {error}");
    assert!(error.contains(&url), "{error}");
}
