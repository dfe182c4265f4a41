//! Several coordinator URLs, as an operator lists them for highly available coordinators: a real
//! `kreach-coordinator` (the leader) on loopback, a follower's refusal (the coordinator's own
//! `Refusal` service, as a follower that cannot read the store answers every call: `UNAVAILABLE`
//! `not the leader: ...`, the leader in `kreach-leader` metadata), and a
//! URL nothing listens on (a stopped coordinator). `kreachctl` and `kreach-agent run` given all
//! three reach the leader; `kreachctl` given only the other two names each URL and its reason.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kreach_coordinator::grpc::Services;
use kreach_coordinator::leader::{Refusal, Standing};
use kreach_proto::admin_service_server::AdminServiceServer;
use kreach_proto::agent_service_server::AgentServiceServer;
use kreach_tests::fleet::{agent_binary, Proc};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_kreach-coordinator");
const KREACHCTL: &str = env!("CARGO_BIN_EXE_kreachctl");
/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// The leader, a follower naming it, and a URL nothing listens on.
struct Coordinators {
    _leader: Proc,
    /// The follower's server runs here; dropping it stops the server.
    _follower: tokio::runtime::Runtime,
    leader_url: String,
    follower_url: String,
    dead_url: String,
    _dir: tempfile::TempDir,
}

impl Coordinators {
    fn start() -> Coordinators {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[tls]\ninsecure = true\n",
                dir.path().join("coordinator").display().to_string()
            ),
        )
        .unwrap();
        let leader = Proc::spawn(Command::new(COORDINATOR).arg("--config").arg(&config)).unwrap();
        let line = leader
            .wait_for_log("kreach-coordinator listening on ", DEADLINE)
            .unwrap();
        let address = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap();
        let leader_url = format!("http://{address}");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let follower_url = format!("http://{}", listener.local_addr().unwrap());
        // The coordinator's own refusal, as a follower that cannot read the store answers.
        let (_, standing) = tokio::sync::watch::channel(Standing::Follows(leader_url.clone()));
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(Refusal::<AdminServiceServer<Services>>::new(
                    standing.clone(),
                ))
                .add_service(Refusal::<AgentServiceServer<Services>>::new(standing))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        // A port that was free a moment ago: connecting to it is refused.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);

        Coordinators {
            _leader: leader,
            _follower: runtime,
            leader_url,
            follower_url,
            dead_url,
            _dir: dir,
        }
    }
}

struct Ctl {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `kreachctl ARGS --insecure`, with `coordinators` in `--coordinator` or, when `env`, in
/// `KREACH_COORDINATOR`.
fn kreachctl(coordinators: &str, env: bool, args: &[&str]) -> Ctl {
    let mut command = Command::new(KREACHCTL);
    command.args(args).arg("--insecure").stdin(Stdio::null());
    if env {
        command.env("KREACH_COORDINATOR", coordinators);
    } else {
        command.env_remove("KREACH_COORDINATOR");
        command.args(["--coordinator", coordinators]);
    }
    let output = command.output().unwrap();
    Ctl {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn kreachctl_passes_over_a_stopped_coordinator_and_a_follower_to_the_leader() {
    let at = Coordinators::start();
    let all = format!("{},{},{}", at.dead_url, at.follower_url, at.leader_url);
    // Only the real coordinator says this: the command reached it.
    let reached = "no cluster yet: no spec has been applied to this coordinator";
    for env in [false, true] {
        let run = kreachctl(&all, env, &["clusters"]);
        assert_eq!(run.code, 0, "env {env}: {}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains(reached), "{}", run.stdout);
    }
    let run = kreachctl(&all, false, &["nodes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("NODE"), "{}", run.stdout);
    // The follower first: it names the leader, which is tried next.
    let run = kreachctl(
        &format!("{},{}", at.follower_url, at.leader_url),
        false,
        &["clusters"],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    // Without the leader in the list: every URL with its own reason, exit 1.
    let run = kreachctl(
        &format!("{},{}", at.dead_url, at.follower_url),
        false,
        &["nodes"],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let error = run.stderr.trim_end();
    let expected_start = format!(
        "kreachctl: error: no coordinator answered: {}: ",
        at.dead_url
    );
    let follower_reason = format!(
        "; {}: not the leader: this coordinator follows; the leader is at {}",
        at.follower_url, at.leader_url
    );
    assert!(
        error.starts_with(&expected_start)
            && error.to_lowercase().contains("connection refused")
            && error.ends_with(&follower_reason),
        "{error}"
    );

    // The follower alone: its answer, and what to do about it.
    let run = kreachctl(&at.follower_url, false, &["nodes"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("not the leader: this coordinator follows")
            && run
                .stderr
                .contains("list every coordinator in --coordinator"),
        "{}",
        run.stderr
    );

    // A list with a gap or a URL twice is a mistake, said before anything is tried.
    let run = kreachctl(
        &format!("{},,{}", at.dead_url, at.leader_url),
        false,
        &["nodes"],
    );
    assert!(
        run.code == 1 && run.stderr.contains("entry 2 is empty"),
        "{}",
        run.stderr
    );
    let run = kreachctl(&format!("{0},{0}", at.leader_url), false, &["nodes"]);
    assert!(
        run.code == 1 && run.stderr.contains("is listed twice"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_agent_listing_a_stopped_coordinator_and_a_follower_subscribes_to_the_leader() {
    let at = Coordinators::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"etl-1\"\nstate_dir = {:?}\n[manage]\nhosts_file = {:?}\n\
             [coordinator]\nurl = [{:?}, {:?}, {:?}]\ninsecure = true\n",
            dir.path().join("state").display().to_string(),
            dir.path().join("hosts").display().to_string(),
            at.dead_url,
            at.follower_url,
            at.leader_url,
        ),
    )
    .unwrap();
    let agent = Proc::spawn(
        Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .arg("run"),
    )
    .unwrap();

    // The leader lists the agent online.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let run = kreachctl(&at.leader_url, false, &["nodes"]);
        if run
            .stdout
            .lines()
            .any(|line| line.starts_with("etl-1") && line.contains("online"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etl-1 never online on the leader: {}{}\nagent log:\n{}",
            run.stdout,
            run.stderr,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    let subscribed = log
        .lines()
        .find(|line| line.contains("subscribed to the coordinator"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(subscribed.contains(&at.leader_url), "{log}");
    // Why it passed over the other two, and no backoff: a full round never failed.
    assert!(
        log.lines().any(|line| line.contains(&at.dead_url)
            && line.contains("coordinator connection lost")
            && line.contains(&format!("trying {}", at.follower_url))),
        "{log}"
    );
    assert!(
        log.lines().any(|line| line.contains(&at.follower_url)
            && line.contains("not the leader")
            && line.contains(&format!("trying the leader it named, {}", at.leader_url))),
        "{log}"
    );
    assert!(!log.contains("every coordinator failed"), "{log}");
}
