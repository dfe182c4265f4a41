//! `kreach-coordinator migrate` between a redb state directory of two clusters and a real etcd
//! (Debian's etcd-server, one member started by the test), with real coordinators reading the
//! result: what was moved is what they serve, and every refusal changes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kreach_test_parts::etcd::EtcdCluster;
use kreach_tests::fleet::Proc;

const COORDINATOR: &str = env!("CARGO_BIN_EXE_kreach-coordinator");
const KREACHCTL: &str = env!("CARGO_BIN_EXE_kreachctl");

fn spec(name: &str, broker: &str, ip: &str) -> String {
    format!(
        "[cluster]\nname = \"{name}\"\n\n[listeners.internal]\nport = 9092\n\n[[broker]]\nid = 1\nnode = \"{broker}\"\nprivate_ip = \"{ip}\"\n"
    )
}

/// A coordinator on `config`, and its URL once it serves.
fn start(config: &Path) -> (Proc, String) {
    let proc = Proc::spawn(Command::new(COORDINATOR).arg("--config").arg(config)).unwrap();
    let line = proc
        .wait_for_log("kreach-coordinator listening on ", Duration::from_secs(20))
        .unwrap();
    let address = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',']).next())
        .unwrap()
        .to_string();
    (proc, format!("http://{address}"))
}

fn ctl(url: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(KREACHCTL)
        .args(["--coordinator", url, "--insecure"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn migrate(config: &Path, from: &str, to: &str) -> (i32, String, String) {
    let output = Command::new(COORDINATOR)
        .arg("--config")
        .arg(config)
        .args(["migrate", "--from", from, "--to", to])
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::write(&path, text).unwrap();
    path
}

/// The history of both clusters as kreachctl prints them (the applied time and outcome included).
fn histories(url: &str) -> String {
    let mut text = String::new();
    for cluster in ["mig-a", "mig-b"] {
        let (code, out, err) = ctl(url, &["history", "--cluster", cluster]);
        assert_eq!(code, 0, "{err}");
        text += &out;
    }
    text
}

#[test]
fn two_clusters_move_from_redb_to_etcd_and_back_and_every_refusal_changes_nothing() {
    let Some(etcd) = EtcdCluster::start("coordinator_migrate", 1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let redb_dir = dir.path().join("redb");
    let back_dir = dir.path().join("back");
    let redb_config = write(
        dir.path().join("redb.toml"),
        &format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n",
            redb_dir.display().to_string()
        ),
    );
    let etcd_config = write(
        dir.path().join("etcd.toml"),
        &format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n[store]\nkind = \"etcd\"\nendpoints = {:?}\nprefix = \"/migrate\"\nlease_ttl = \"2s\"\n",
            dir.path().join("etcd-state").display().to_string(),
            etcd.endpoints()
        ),
    );

    // Two clusters on redb, each with a rollout waiting for an agent that never comes.
    let (mut coordinator, url) = start(&redb_config);
    for (name, broker, ip) in [
        ("mig-a", "a-1", "198.18.0.1"),
        ("mig-b", "b-1", "198.18.0.2"),
    ] {
        let file = write(
            dir.path().join(format!("{name}.toml")),
            &spec(name, broker, ip),
        );
        let (code, _, err) = ctl(&url, &["apply", "--yes", "--force", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    }
    coordinator.terminate(Duration::from_secs(10));

    let (code, _, err) = migrate(
        &etcd_config,
        &format!("redb:{}", redb_dir.display()),
        "etcd",
    );
    assert_eq!(code, 1);
    assert!(err.contains("rollout of generation 1 is moving"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");

    let (mut coordinator, url) = start(&redb_config);
    for cluster in ["mig-a", "mig-b"] {
        let (code, _, err) = ctl(&url, &["rollout", "--cluster", cluster, "pause"]);
        assert_eq!(code, 0, "{err}");
    }
    let before = histories(&url);
    coordinator.terminate(Duration::from_secs(10));

    let (code, out, err) = migrate(
        &etcd_config,
        &format!("redb:{}", redb_dir.display()),
        "etcd",
    );
    assert_eq!(code, 0, "{err}");
    eprintln!("{out}");
    assert!(out.contains("home store: 1 generation(s)"), "{out}");
    assert!(
        out.contains("cluster store \"mig-b\": 1 generation(s)"),
        "{out}"
    );
    assert!(out.contains("migrated 2 store(s)"), "{out}");

    // A coordinator on etcd serves what was moved.
    let (mut leader, url) = start(&etcd_config);
    leader
        .wait_for_log("elected leader", Duration::from_secs(10))
        .unwrap();
    assert_eq!(histories(&url), before);
    let (code, out, _) = ctl(&url, &["status", "--cluster", "mig-b"]);
    assert_eq!(code, 0);
    assert!(out.contains("paused"), "{out}");

    // Refused while it leads, and into a prefix that holds a store.
    let (code, _, err) = migrate(
        &etcd_config,
        "etcd",
        &format!("redb:{}", back_dir.display()),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("a coordinator leads on etcd prefix /migrate"),
        "{err}"
    );
    assert!(!back_dir.exists());
    leader.terminate(Duration::from_secs(10));
    let (code, _, err) = migrate(
        &etcd_config,
        &format!("redb:{}", redb_dir.display()),
        "etcd",
    );
    assert_eq!(code, 1);
    assert!(err.contains("already holds"), "{err}");

    // And back to redb: a coordinator there serves the same history.
    let (code, out, err) = migrate(
        &etcd_config,
        "etcd",
        &format!("redb:{}", back_dir.display()),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("migrated 2 store(s)"), "{out}");
    let back_config = write(
        dir.path().join("back.toml"),
        &format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n",
            back_dir.display().to_string()
        ),
    );
    let (mut coordinator, url) = start(&back_config);
    assert_eq!(histories(&url), before);
    coordinator.terminate(Duration::from_secs(10));
}
