//! `kreach-coordinator`: holds the desired state and sequences rolling changes.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kreach_coordinator::cli::coordinator::Cli;
use kreach_coordinator::clusters::Clusters;
use kreach_coordinator::config::{CoordinatorConfig, StoreKind};
use kreach_coordinator::etcd_store::EtcdHandle;
use kreach_coordinator::follower::Follower;
use kreach_coordinator::grpc::{Auth, Services};
use kreach_coordinator::leader::{self, Refusal, Standing};
use kreach_coordinator::store::StoreRoot;
use kreach_coordinator::tls_accept;
use kreach_proto as pb;
use tonic::transport::Server;

/// How long a stopping coordinator lets calls in flight finish before it closes the rest.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    kreach_runtime::daemon::init_logging(&[]);
    let cli = Cli::parse();
    let config = match CoordinatorConfig::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kreach-coordinator: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(kreach_coordinator::cli::coordinator::Command::Migrate { from, to }) = &cli.command
    {
        let sides = kreach_coordinator::migrate::parse_side("from", from).and_then(|from| {
            kreach_coordinator::migrate::parse_side("to", to).map(|to| (from, to))
        });
        let (from, to) = match sides {
            Ok(sides) => sides,
            Err(error) => {
                eprintln!("kreach-coordinator migrate: {error}");
                return ExitCode::from(2);
            }
        };
        return match kreach_coordinator::migrate::run(&config, &from, &to, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("kreach-coordinator migrate: {error}");
                ExitCode::from(1)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kreach-coordinator: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kreach-coordinator: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Every agent holds one connection: lift the soft open-files limit to the hard one so a large
/// fleet is not refused at the default 1,024.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!(soft, hard, "raised the open-files limit"),
                Err(error) => {
                    tracing::warn!(soft, hard, "cannot raise the open-files limit: {error}")
                }
            }
        }
    }
}

async fn serve(config: CoordinatorConfig) -> anyhow::Result<()> {
    raise_open_files_limit();
    let tls = server_tls(&config)?;
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let clock = Arc::new(kreach_runtime::clock::SteadyWallClock::new());
    let metrics = start_metrics(&config).await?;
    let etcd = match config.store.kind {
        StoreKind::Redb => None,
        StoreKind::Etcd => {
            Some(EtcdHandle::from_config(&config.store).map_err(anyhow::Error::msg)?)
        }
    };
    let Some(etcd) = etcd else {
        let clusters = Clusters::open(&config.state_dir, clock).context("opening the store")?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        return lead(&config, clusters, listener, tls, None, metrics)
            .await
            .map(|_| ());
    };

    // Follow until elected: the reads from the store, every other call answered with who leads.
    let me = config.store.advertise.clone().unwrap_or_else(|| {
        let scheme = if config.tls.insecure { "http" } else { "https" };
        format!("{scheme}://{address}")
    });
    let (standing, standing_now) = tokio::sync::watch::channel(Standing::Starting);
    let (stop_following, follow_stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = EtcdHandle::reader(&config.store).map_err(anyhow::Error::msg)?;
    let reads = Follower::new(
        reader,
        config.state_dir.clone(),
        clock.clone(),
        standing_now.clone(),
        auth(&config),
    );
    let router = Server::builder()
        .add_service(Refusal::<
            pb::agent_service_server::AgentServiceServer<Services>,
        >::new(standing_now))
        .add_service(
            pb::admin_service_server::AdminServiceServer::new(reads)
                .max_decoding_message_size(pb::MAX_MESSAGE_BYTES),
        );
    let following = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let mut follower = spawn_server(router, following, tls.clone(), async {
        let _ = follow_stopped.await;
    });
    tracing::info!(address = %address, me = %me, prefix = %config.store.prefix, "kreach-coordinator listening on {address}, campaigning to lead (etcd store)");
    kreach_runtime::daemon::systemd_notify::ready(&format!("listening on {address}, campaigning"));
    // A follower may follow for ever: it keeps systemd's watchdog fed as a leader's ticker does.
    let watchdog = kreach_runtime::daemon::systemd_notify::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            loop {
                interval.tick().await;
                kreach_runtime::daemon::systemd_notify::watchdog();
            }
        })
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Every etcd call on the etcd runtime, so that the client's connections live there (see
    // leader::campaign).
    let mut campaign = etcd.spawn(leader::campaign(
        Arc::clone(&etcd),
        me.clone(),
        config.store.lease_ttl,
        standing,
    ));
    let won = tokio::select! {
        won = &mut campaign => won.context("the campaign task")?,
        _ = terminate.recv() => { campaign.abort(); tracing::info!("SIGTERM: stopping"); return Ok(()); }
        _ = tokio::signal::ctrl_c() => { campaign.abort(); tracing::info!("SIGINT: stopping"); return Ok(()); }
        served = &mut follower => {
            served.context("the server task")?.context("serving")?;
            anyhow::bail!("the follower's server ended");
        }
    };
    let _ = stop_following.send(());
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut follower)
        .await
        .is_err()
    {
        follower.abort();
    }
    drop(terminate);

    etcd.set_fence(Some(won.fence.clone()));
    // On the etcd runtime: the core's store calls block the main runtime's workers while etcd
    // does not answer, and the renewals must go on (and give up in time) regardless.
    let lost = etcd.spawn(leader::hold(
        Arc::clone(&etcd),
        won.clone(),
        config.store.lease_ttl,
    ));
    let opened = {
        let (etcd, state_dir) = (Arc::clone(&etcd), config.state_dir.clone());
        tokio::task::spawn_blocking(move || {
            Clusters::open_in(&state_dir, StoreRoot::Etcd(etcd), clock)
        })
        .await?
    };
    let clusters = match opened {
        Ok(clusters) => clusters,
        Err(error) => {
            let _ = etcd
                .spawn(leader::resign(Arc::clone(&etcd), won.fence.lease))
                .await;
            return Err(error).context("opening the store");
        }
    };
    let listener = tokio::net::TcpListener::from_std(listener)?;
    match lead(&config, clusters, listener, tls, Some(lost), metrics).await? {
        Ended::Stopped => {
            let _ = etcd
                .spawn(leader::resign(Arc::clone(&etcd), won.fence.lease))
                .await;
            Ok(())
        }
        Ended::Deposed(why) => {
            tracing::error!("stopped leading: {why}; starting again as a follower");
            restart_self()
        }
    }
}

/// Start again from the top, as a new process in this one (same pid, same arguments): a
/// deposed leader drops every bit of state it held and campaigns like a coordinator just started.
fn restart_self() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "kreach-coordinator".into());
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .exec();
    Err(error).context("starting again as a follower")
}

fn server_tls(
    config: &CoordinatorConfig,
) -> anyhow::Result<Option<tokio_rustls::rustls::ServerConfig>> {
    if config.tls.insecure {
        return Ok(None);
    }
    let (ca, cert, key) = (
        config.tls.ca.as_ref().expect("validated"),
        config.tls.cert.as_ref().expect("validated"),
        config.tls.key.as_ref().expect("validated"),
    );
    let files = kreach_runtime::tls::load_tls_files(ca, cert, key)?;
    Ok(Some(
        tls_accept::server_config(&files.ca_pem, &files.cert_pem, &files.key_pem)
            .context("configuring TLS")?,
    ))
}

fn spawn_server(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    match tls {
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )),
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(tls_accept::accept_loop(listener, tls)),
            shutdown,
        )),
    }
}

fn auth(config: &CoordinatorConfig) -> Auth {
    if config.tls.insecure {
        Auth::Insecure
    } else {
        Auth::MutualTls
    }
}

/// How leading ended.
enum Ended {
    Stopped,
    Deposed(String),
}

/// `[metrics] listen`: the endpoint, for the process's life (a follower's shows that it follows;
/// [`lead`] gives it the clusters).
async fn start_metrics(
    config: &CoordinatorConfig,
) -> anyhow::Result<Option<kreach_coordinator::metrics::MetricsSource>> {
    let Some(address) = config.metrics.listen else {
        return Ok(None);
    };
    let metrics = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics endpoint {address}"))?;
    tracing::info!(address = %metrics.local_addr()?, "metrics on http://{}/metrics", metrics.local_addr()?);
    let source = kreach_coordinator::metrics::MetricsSource::default();
    let serving = Arc::clone(&source);
    tokio::spawn(async move {
        if let Err(error) = kreach_coordinator::metrics::serve(metrics, serving).await {
            tracing::error!("the metrics endpoint stopped: {error}");
        }
    });
    Ok(Some(source))
}

/// Serve `clusters` on `listener` until SIGTERM/SIGINT, or until `lost` says leadership is gone.
async fn lead(
    config: &CoordinatorConfig,
    mut clusters: Clusters,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::rustls::ServerConfig>,
    lost: Option<tokio::task::JoinHandle<String>>,
    metrics: Option<kreach_coordinator::metrics::MetricsSource>,
) -> anyhow::Result<Ended> {
    clusters.set_max_agents(config.max_agents);
    let core = Arc::new(Mutex::new(clusters));
    let services = Services {
        clusters: Arc::clone(&core),
        auth: auth(config),
        dry_runs: Default::default(),
    };
    let address = listener.local_addr()?;
    tracing::info!(
        address = %address,
        tls = !config.tls.insecure,
        "kreach-coordinator listening on {address}"
    );

    if let Some(source) = metrics {
        let feeds = core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status_feeds();
        *source.write().unwrap_or_else(|p| p.into_inner()) = Some(feeds);
    }

    // Watchdog pings come from the rollout ticker: a wedged core (its mutex, the store) stops them.
    let watchdog_every = kreach_runtime::daemon::systemd_notify::watchdog_interval();
    let ticker = {
        let core = Arc::clone(&core);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(200));
            let mut last_ping = tokio::time::Instant::now();
            loop {
                interval.tick().await;
                let result = core.lock().unwrap_or_else(|p| p.into_inner()).tick();
                if let Err(error) = result {
                    tracing::error!("periodic work failed: {error}");
                }
                if watchdog_every.is_some_and(|every| last_ping.elapsed() >= every) {
                    kreach_runtime::daemon::systemd_notify::watchdog();
                    last_ping = tokio::time::Instant::now();
                }
            }
        })
    };

    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stop_receiver.await;
    };
    let mut lost = lost;
    let deposed = async {
        match lost.as_mut() {
            Some(lost) => lost
                .await
                .unwrap_or_else(|error| format!("the lease task failed: {error}")),
            None => std::future::pending().await,
        }
    };
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(services.clone())
                .max_decoding_message_size(pb::MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::admin_service_server::AdminServiceServer::new(services)
                .max_decoding_message_size(pb::MAX_MESSAGE_BYTES),
        );
    let mut server = spawn_server(router, listener, tls, shutdown);
    // The store is open and the listener bound: connections queue in the backlog until serving.
    kreach_runtime::daemon::systemd_notify::ready(&format!("listening on {address}"));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ended = Ended::Stopped;
    tokio::select! {
        served = &mut server => {
            // The server ended by itself: an error (it never stops otherwise).
            served.context("the server task")?.context("serving")?;
        }
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        why = deposed => {
            // Stop releasing at once: nothing more is sent, and the store refuses our writes.
            ticker.abort();
            server.abort();
            return Ok(Ended::Deposed(why));
        }
    }
    kreach_runtime::daemon::systemd_notify::stopping();
    let _ = stop_sender.send(());
    // A graceful shutdown waits for every open call to end, and agents' Subscribe streams never
    // end by themselves: give calls in flight SHUTDOWN_GRACE, then close what is left (agents
    // reconnect to the next coordinator; what they report is retried, nothing is lost).
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(served) => served.context("the server task")?.context("serving")?,
        Err(_) => {
            tracing::info!(
                "closing the connections still open {SHUTDOWN_GRACE:?} after the stop signal"
            );
            server.abort();
        }
    }
    ticker.abort();
    // Flush what agents reported last, and wait until it is stored.
    let flushed = tokio::task::spawn_blocking(move || {
        core.lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_reports()
    })
    .await;
    if let Ok(Err(error)) = flushed {
        tracing::error!("flushing agent records at shutdown failed: {error}");
    }
    Ok(ended)
}
