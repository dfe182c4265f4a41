//! `kreach-agent`: the node daemon and its one-shot `apply-local`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kreach_agent::cli::{Cli, Command};
use kreach_agent::client::CoordinatorClient;
use kreach_agent::config::{AgentConfig, ProbeKind, ServiceManagerKind};
use kreach_agent::engine::{Engine, Outcome};
use kreach_agent::reconciler::{self, Reconciler};
use kreach_agent::service::{CommandManager, ServiceManager, SystemdManager};
use kreach_agent::state;
use kreach_agent::verify::{KafkaProbe, ListenerProbe, TcpProbe};
use kreach_domain::desired::node_spec;
use kreach_domain::spec::ClusterSpec;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit codes, documented in `--help`.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_ROLLED_BACK: u8 = 3;
const EXIT_CONFLICTS: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("kreach-agent: error: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Completions { shell } = cli.command {
        kreach_agent::cli::write_completions(shell, &mut std::io::stdout());
        return Ok(0);
    }
    let config = match AgentConfig::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kreach-agent: {error}");
            return Ok(EXIT_INVALID);
        }
    };
    // Every journal line of this agent carries NODE (journalctl -u kreach-agent NODE=...).
    kreach_runtime::daemon::init_logging(&[("NODE", config.node.as_str())]);
    match cli.command {
        Command::ApplyLocal {
            spec,
            spec_option,
            dry_run,
        } => {
            let spec = spec.or(spec_option).expect("clap requires SPEC or --spec");
            apply_local(config, &cli.config, &spec, dry_run)
        }
        Command::Completions { .. } => unreachable!("handled before the config is read"),
        Command::Run => run_daemon(config),
        Command::Diagnose { broker, json } => {
            let mut first_broken: Option<kreach_agent::diagnose::Step> = None;
            let mut report = |step: kreach_agent::diagnose::Step| {
                if json {
                    println!("{}", serde_json::to_string(&step).expect("json"));
                } else {
                    println!("{}", step.line());
                }
                if !step.ok && first_broken.is_none() {
                    first_broken = Some(step);
                }
            };
            let all_ok = kreach_agent::diagnose::run(
                &config,
                state::load(&config.state_dir)?.as_ref(),
                broker,
                &mut report,
            )
            .map_err(anyhow::Error::msg)?;
            if all_ok {
                if !json {
                    println!("{}", kreach_domain::diagnose::ALL_PASSED);
                }
                return Ok(0);
            }
            if let (Some(step), false) = (&first_broken, json) {
                println!("{}", step.broken_line());
            }
            Ok(4)
        }
        Command::Overrides { delete } => {
            let applied = state::load(&config.state_dir)?;
            let applied = applied.as_ref();
            let mut found =
                kreach_agent::overrides::find(&config, applied).map_err(anyhow::Error::msg)?;
            if delete && !found.is_empty() {
                let deleted = kreach_agent::overrides::delete(&config, applied, &found)
                    .map_err(anyhow::Error::msg)?;
                for key in &deleted {
                    println!("deleted the dynamic override of {key}");
                }
                found =
                    kreach_agent::overrides::find(&config, applied).map_err(anyhow::Error::msg)?;
            }
            if found.is_empty() {
                println!("no dynamic broker config hides kreach's settings in server.properties");
                return Ok(0);
            }
            for o in &found {
                println!("{o}; {}", kreach_agent::overrides::remedy(&config.node, o));
            }
            Ok(3)
        }
        Command::State => {
            match state::load(&config.state_dir)? {
                Some(applied) => println!("{}", serde_json::to_string_pretty(&applied)?),
                None => println!("null"),
            }
            Ok(0)
        }
        Command::Audit { last, json } => {
            let log = kreach_agent::audit::AuditLog::new(&config.state_dir);
            let mut entries = log.read_since(0)?;
            if let Some(last) = last {
                entries.drain(..entries.len().saturating_sub(last));
            }
            if entries.is_empty() && !json {
                eprintln!(
                    "kreach-agent: no changes recorded in {}",
                    log.path().display()
                );
            }
            for entry in &entries {
                if json {
                    println!("{}", serde_json::to_string(entry)?);
                } else {
                    println!("{}", kreach_agent::audit::render(entry));
                }
            }
            Ok(0)
        }
    }
}

fn service_manager(
    config: &AgentConfig,
) -> Result<Box<dyn ServiceManager>, kreach_agent::service::ServiceError> {
    Ok(match config.service_manager.kind {
        ServiceManagerKind::Systemd => Box::new(SystemdManager::connect()?),
        ServiceManagerKind::Command => Box::new(CommandManager {
            restart: config.service_manager.restart.clone(),
            status: config.service_manager.status.clone(),
        }),
    })
}

/// The health probe `manage.probe` chooses.
fn health_probe(config: &AgentConfig) -> Box<dyn ListenerProbe> {
    match config.manage.probe {
        ProbeKind::Kafka => Box::new(KafkaProbe::default()),
        ProbeKind::Tcp => Box::new(TcpProbe),
    }
}

fn apply_local(
    config: AgentConfig,
    config_path: &Path,
    spec_path: &Path,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let text = match kreach_domain::spec::read_spec_file(spec_path) {
        Ok(text) => text,
        Err(error) if error.is_invalid_spec() => {
            eprintln!("kreach-agent: {error}; nothing was changed");
            return Ok(EXIT_INVALID);
        }
        Err(error) => return Err(error.into()),
    };
    let spec = match ClusterSpec::parse(&text) {
        Ok(spec) => spec,
        Err(errors) => {
            eprintln!(
                "kreach-agent: {} is invalid; nothing was changed:",
                spec_path.display()
            );
            for error in &errors.0 {
                eprintln!("  {}: {error}", spec_path.display());
            }
            return Ok(EXIT_INVALID);
        }
    };
    let desired = match node_spec(&spec, &config.node) {
        Ok(desired) => desired,
        Err(error) => {
            eprintln!(
                "kreach-agent: {error}; check `node` in {}",
                config_path.display()
            );
            return Ok(EXIT_INVALID);
        }
    };
    println!("node {}", desired.describe());

    // The service manager is needed only when something restarts; a dry run or a client host
    // must work without D-Bus.
    let services: Box<dyn ServiceManager> = Box::new(LazyServices {
        config: config.clone(),
    });
    let probe = health_probe(&config);
    let mut engine = Engine::new(config, services, probe);
    // A client of several clusters keeps the other clusters' blocks (their releases are the
    // coordinator's).
    engine.set_held(kreach_agent::engine::Held::with_primary_in(
        &engine.config().state_dir,
        &desired.cluster,
    ));
    // What this node applied last: read once, here (the daemon's reconciler holds its own copy).
    let previous = state::load(&engine.config().state_dir)?;
    let plan = match engine.plan(&desired) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("kreach-agent: {error}");
            return Ok(EXIT_INVALID);
        }
    };
    if plan.is_empty() {
        println!(
            "nothing to change: {} already matches the spec",
            desired.node
        );
        for conflict in &plan.conflicts {
            println!("conflict: {conflict}");
        }
        if !dry_run {
            record_state_if_new(&engine, previous.as_ref(), &desired)?;
        }
        return Ok(converged_exit(&plan));
    }
    print!("{}", plan.render());
    if dry_run {
        println!("dry run: nothing was changed");
        return Ok(converged_exit(&plan));
    }
    let outcome = match engine.apply(
        &plan,
        previous.as_ref(),
        state::ReleaseId::LOCAL,
        "apply-local",
    ) {
        Ok(outcome) => outcome,
        Err(refused @ kreach_agent::engine::EngineError::PreRestartRefused { .. }) => {
            println!("refused: {refused}");
            return Ok(EXIT_FAILED);
        }
        Err(error) => return Err(error.into()),
    };
    match outcome {
        Outcome::Converged {
            written,
            restarted,
            checks,
            ..
        } => {
            for (path, method) in written {
                let how = match method {
                    kreach_agent::fsio::WriteMethod::Renamed => "atomic rename",
                    kreach_agent::fsio::WriteMethod::InPlace => {
                        "locked in-place rewrite: the file is a mount point"
                    }
                };
                println!("wrote {} ({how})", path.display());
            }
            if let Some(unit) = restarted {
                println!("restarted {unit}");
            }
            for check in checks {
                println!("check passed: {}", check.line());
            }
            if plan.conflicts.is_empty() {
                println!("converged: {} matches the spec", desired.node);
            } else {
                println!(
                    "applied, but {} unmanaged hosts line(s) shadow kreach's entries (see conflicts above)",
                    plan.conflicts.len()
                );
            }
            Ok(converged_exit(&plan))
        }
        Outcome::RolledBack {
            reason, restored, ..
        } => {
            println!("rolled back: {reason}");
            for path in restored {
                println!("restored {}", path.display());
            }
            Ok(EXIT_ROLLED_BACK)
        }
    }
}

/// The exit code once the files match `plan` (or would, in a dry run): conflicting unmanaged
/// hosts lines make it [`EXIT_CONFLICTS`] whether or not anything had to change, so a script
/// sees the same answer from `--dry-run` and from the apply.
fn converged_exit(plan: &kreach_agent::engine::Plan) -> u8 {
    if plan.conflicts.is_empty() {
        0
    } else {
        EXIT_CONFLICTS
    }
}

/// Persist the desired state even when the files already match, so that `run` enforces it.
fn record_state_if_new(
    engine: &Engine,
    current: Option<&state::AppliedState>,
    desired: &kreach_domain::desired::NodeSpec,
) -> anyhow::Result<()> {
    let state_dir = &engine.config().state_dir;
    if current.map(|applied| &applied.node_spec) != Some(desired) {
        state::save(
            state_dir,
            &state::AppliedState {
                generation: 0,
                step: 0,
                attempt: 0,
                released_by: "apply-local".into(),
                applied_at_unix_ms: state::now_unix_ms(),
                node_spec: desired.clone(),
            },
        )?;
    }
    Ok(())
}

/// Connects to the configured service manager on first use.
struct LazyServices {
    config: AgentConfig,
}

impl ServiceManager for LazyServices {
    fn restart(
        &self,
        unit: &str,
        timeout: std::time::Duration,
    ) -> Result<(), kreach_agent::service::ServiceError> {
        service_manager(&self.config)?.restart(unit, timeout)
    }
    fn describe(&self) -> String {
        format!("{:?}", self.config.service_manager.kind).to_lowercase()
    }
}

fn run_daemon(config: AgentConfig) -> anyhow::Result<u8> {
    // One daemon per node: a second one (same state directory) stops here with the first's pid.
    let _daemon_lock = state::lock_daemon(&config.state_dir)?;
    // One thread runs every async task: the agent's async work is a gRPC stream, a few timers
    // and signals, all light; what blocks (files, the process table, probes, restarts) runs on the
    // blocking pool. Worker threads of their own would only add stacks and malloc arenas (each
    // thread that allocates gets one), which were most of a connected agent's idle memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        // The reconciler is the one owner of the engine, the applied state and the filter; the
        // coordinator client, the metrics endpoint and the facts talk to it or read its state.
        let services: Box<dyn ServiceManager> = Box::new(LazyServices { config: config.clone() });
        let engine = Engine::new(config.clone(), services, health_probe(&config));
        // What the reconciler and the coordinator client learn of the host, for the node's status.
        let health = Arc::new(kreach_agent::health::board());
        let (reconciler, handle) = Reconciler::new(engine, Arc::clone(&health));
        if config.manage.probe == ProbeKind::Kafka && config.manage.kafka_properties.is_some() {
            kreach_agent::facts::use_kafka_probe_for_controller(handle.applied());
        }
        // READY waits for the reconciler's watches: before them, drift would go unnoticed.
        let (watching_tx, watching_rx) = tokio::sync::oneshot::channel();
        let mut enforcer = reconciler::spawn(reconciler, &handle, watching_tx);

        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut reachability = None;
        match config.coordinator.clone() {
            Some(coordinator) => {
                tracing::info!(node = %config.node, url = %coordinator.url, "following the coordinator's releases");
                // Reachability is checked whether or not the coordinator is there; the latest
                // result is reported by whichever session is up.
                let (checker, checking) = kreach_agent::reachability::start(config.clone(), handle.applied(), handle.secondary(), cancel.clone());
                tasks.spawn(checking);
                reachability = Some(checker.results());
                if config.manage.probe == ProbeKind::Kafka && config.manage.kafka_properties.is_some() {
                    // Dynamic broker configs that hide kreach's edits, looked for every facts period.
                    tasks.spawn(kreach_agent::overrides::watch(config.clone(), handle.applied(), Arc::clone(&health), coordinator.facts_period, cancel.clone()));
                }
                let client = CoordinatorClient::new(config.clone(), coordinator, handle.clone(), checker, Arc::clone(&health));
                tasks.spawn(client.run(cancel.clone()));
            }
            None => tracing::info!(node = %config.node, "no [coordinator] in the config: running stand-alone"),
        }
        if let Some(address) = config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the metrics endpoint {address}"))?;
            tracing::info!(node = %config.node, "metrics on http://{}/metrics", listener.local_addr()?);
            let (config, health, applied) = (config.clone(), health.subscribe(), handle.applied());
            tokio::spawn(async move {
                if let Err(error) = kreach_agent::metrics::serve(listener, config, health, applied, reachability).await {
                    tracing::error!("the metrics endpoint stopped: {error}");
                }
            });
        }
        tasks.close();

        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        // A failed watch drops the sender; the loop below then reports the enforcer's error.
        if watching_rx.await.is_ok() {
            kreach_runtime::daemon::systemd_notify::ready(&startup_status(&handle.applied().borrow()));
        }
        // Watchdog pings come from this loop, so they stop when it or the enforcer does.
        // Half of WatchdogSec, jittered by at most 20 %: always well inside the limit.
        let mut watchdog = kreach_runtime::daemon::systemd_notify::watchdog_interval().map(kreach_agent::jitter::PeriodicTimer::new);
        let early_end = loop {
            tokio::select! {
                _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); break None }
                _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); break None }
                ended = &mut enforcer => break Some(ended),
                _ = next_tick(&mut watchdog) => kreach_runtime::daemon::systemd_notify::watchdog(),
            }
        };
        kreach_runtime::daemon::systemd_notify::stopping();
        // The client first: an apply in flight finishes and is reported; then the enforcer.
        cancel.cancel();
        tasks.wait().await;
        if let Some(ended) = early_end {
            ended.context("reconciler task")?.context("watching the managed files")?;
            anyhow::bail!("the reconciler stopped unexpectedly");
        }
        handle.send(reconciler::Command::Stop);
        enforcer.await.context("reconciler task")?.context("watching the managed files")?;
        Ok::<u8, anyhow::Error>(0)
    });
    // Blocking work left behind on purpose (a reachability check waiting on connect timeouts)
    // does not delay the stop: SIGTERM ends the agent within a second.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// The unit's status line at READY: what the agent enforces from now on.
fn startup_status(applied: &Option<state::AppliedState>) -> String {
    match applied {
        Some(applied) => format!(
            "enforcing generation {} (released by {})",
            applied.generation, applied.released_by
        ),
        None => "no applied state yet; waiting for a spec".to_string(),
    }
}

/// The next watchdog tick; never, without a watchdog.
async fn next_tick(interval: &mut Option<kreach_agent::jitter::PeriodicTimer>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
