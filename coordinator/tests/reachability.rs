//! Reachability as an operator sees it: a real coordinator, a broker agent and a client agent on
//! loopback, a real Kafka-protocol broker (tansu), and `kreachctl status` / `kreachctl check`.
//!
//! The client agent bootstraps through the broker, reads its metadata and connects to what it
//! advertises; the matrix and `check` follow the broker going away and coming back. Needs tansu
//! (`KREACH_TANSU`, or the CI venv's); fails without it unless the e2e-net tier is opted out
//! (`KREACH_SKIP=e2e-net`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kreach_tests::fleet::{agent_binary, Proc};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_kreach-coordinator");
const KREACHCTL: &str = env!("CARGO_BIN_EXE_kreachctl");
/// This test's loopback network (127.0.NET.x), apart from the fleet tests'.
const NET: u8 = 211;
/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// tansu; `None` only when the e2e-net tier is opted out (KREACH_SKIP), missing otherwise fails.
fn tansu(test: &str) -> Option<PathBuf> {
    kreach_test_parts::tansu(kreach_test_parts::Tier::E2eNet, test)
}

fn start_tansu(tansu: &Path, address: &str) -> Proc {
    let url = format!("tcp://{address}");
    let proc = Proc::spawn(
        Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"]),
    )
    .unwrap();
    // tansu logs to stdout, which Proc discards: wait until the port answers instead.
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

struct Ctl {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(coordinator: &str, args: &[&str]) -> Ctl {
    let output = Command::new(KREACHCTL)
        .args([
            "--coordinator",
            &format!("http://{coordinator}"),
            "--insecure",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ctl {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Run `kreachctl check` until its exit code is `code`; that run.
fn check_until(coordinator: &str, code: i32, what: &str) -> Ctl {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let run = ctl(coordinator, &["check"]);
        if run.code == code {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "kreachctl check never exited {code} ({what}); last: {}{}",
            run.stdout,
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_matrix_and_check_follow_what_the_client_can_reach() {
    let Some(tansu) = tansu("the_matrix_and_check_follow_what_the_client_can_reach") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker_ip = format!("127.0.{NET}.1");
    let port = std::net::TcpListener::bind((broker_ip.as_str(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker_address = format!("{broker_ip}:{port}");
    let mut broker = Some(start_tansu(&tansu, &broker_address));

    // The coordinator, on a port it picks.
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n",
            dir.path().join("coordinator").display().to_string()
        ),
    )
    .unwrap();
    let coordinator_proc =
        Proc::spawn(Command::new(COORDINATOR).arg("--config").arg(&config)).unwrap();
    let line = coordinator_proc
        .wait_for_log("kreach-coordinator listening on ", DEADLINE)
        .unwrap();
    let coordinator = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();

    // The broker host: its listener is the one tansu already serves, so "restarting Kafka" is a
    // no-op command and the health check only needs the port.
    let broker_dir = dir.path().join("w1");
    std::fs::create_dir_all(broker_dir.join("state")).unwrap();
    std::fs::write(broker_dir.join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    std::fs::write(
        broker_dir.join("server.properties"),
        format!("node.id=1\nlisteners=INTERNAL://{broker_address}\n"),
    )
    .unwrap();
    std::fs::write(
        broker_dir.join("agent.toml"),
        format!(
            "node = \"w1\"\nstate_dir = {:?}\n[manage]\nhosts_file = {:?}\nkafka_properties = {:?}\nprobe = \"tcp\"\n\
             [service_manager]\nkind = \"command\"\nrestart = [\"true\"]\n\
             [coordinator]\nurl = \"http://{coordinator}\"\ninsecure = true\n",
            broker_dir.join("state").display().to_string(),
            broker_dir.join("hosts").display().to_string(),
            broker_dir.join("server.properties").display().to_string(),
        ),
    )
    .unwrap();
    let _broker_agent = Proc::spawn(
        Command::new(agent_binary())
            .arg("--config")
            .arg(broker_dir.join("agent.toml"))
            .arg("run"),
    )
    .unwrap();

    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "[cluster]\nname = \"reach\"\n[listeners.internal]\nport = {port}\nbind = \"private_ip\"\n\
             [[broker]]\nid = 1\nnode = \"w1\"\nprivate_ip = \"{broker_ip}\"\n\
             [[client]]\nnode = \"etl-1\"\nview = \"private\"\n\
             [rollout]\nhealth_timeout = \"20s\"\nsettle = \"0s\"\n"
        ),
    )
    .unwrap();
    // --force: a loopback "broker" is not the host's own address, which the facts check notices.
    let applied = ctl(
        &coordinator,
        &["apply", "--yes", "--force", spec.to_str().unwrap()],
    );
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);

    // The client has no agent yet: unknown is a failure, and says why.
    let unknown = check_until(&coordinator, 4, "the client never reported");
    assert!(
        unknown
            .stdout
            .contains("etl-1 (private view) → broker 1 at")
            && unknown
                .stdout
                .contains("unknown: etl-1 has not reported its reachability yet"),
        "{}",
        unknown.stdout
    );
    assert!(
        unknown.stdout.contains("1 failure(s)"),
        "{}",
        unknown.stdout
    );

    let client_dir = dir.path().join("etl-1");
    std::fs::create_dir_all(client_dir.join("state")).unwrap();
    std::fs::write(client_dir.join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    std::fs::write(
        client_dir.join("agent.toml"),
        format!(
            "node = \"etl-1\"\nstate_dir = {:?}\n[manage]\nhosts_file = {:?}\n[reachability]\nperiod = \"1s\"\n\
             [coordinator]\nurl = \"http://{coordinator}\"\ninsecure = true\n",
            client_dir.join("state").display().to_string(),
            client_dir.join("hosts").display().to_string(),
        ),
    )
    .unwrap();
    let client_agent = Proc::spawn(
        Command::new(agent_binary())
            .arg("--config")
            .arg(client_dir.join("agent.toml"))
            .arg("run"),
    )
    .unwrap();

    // The client bootstraps through the real broker and reaches what it advertises.
    let passed = check_until(&coordinator, 0, "the broker is up");
    assert!(
        passed
            .stdout
            .contains("ok: 1 client(s) reach every broker they should"),
        "{}",
        passed.stdout
    );
    let status = ctl(&coordinator, &["status"]);
    assert!(
        status.stdout.contains("reachability (client × broker):")
            && status.stdout.lines().any(|line| line.starts_with("etl-1")
                && line.contains("private")
                && line.trim_end().ends_with('✓')),
        "{}",
        status.stdout
    );
    let json = ctl(&coordinator, &["status", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let cell = &json["reachability"][0]["brokers"][0];
    assert_eq!(json["reachability"][0]["client"], "etl-1");
    assert_eq!(cell["ok"], true, "{json:#}");
    assert_eq!(cell["endpoint"], broker_address.as_str());

    // The broker goes away: the next check finds nothing listening.
    drop(broker.take());
    let refused = check_until(&coordinator, 4, "the broker is down");
    assert!(
        refused
            .stdout
            .contains(&format!("broker 1 at {broker_address}: refused")),
        "{}",
        refused.stdout
    );
    let status = ctl(&coordinator, &["status"]);
    assert!(
        status
            .stdout
            .lines()
            .any(|line| line.starts_with("etl-1") && line.trim_end().ends_with("refused")),
        "{}",
        status.stdout
    );

    // And comes back.
    broker = Some(start_tansu(&tansu, &broker_address));
    check_until(&coordinator, 0, "the broker is back");
    assert!(
        client_agent
            .log()
            .contains("reachability changed; reporting it"),
        "{}",
        client_agent.log()
    );
    drop(broker);
}
