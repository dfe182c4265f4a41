//! The client host's reachability check, as a task of its own: after each apply (asked through
//! [`Checker::check_now`]) and every `[reachability] period`, what can this host reach of the
//! brokers its view names, through the names it resolves.
//!
//! Owns the timer and the latest result, published on a `watch` channel for the coordinator
//! client (which reports a change) and the metrics endpoint. Reads the applied state the
//! reconciler holds (a broker, or a node with nothing applied, has nothing to check). The network
//! work is [`crate::reach`]'s; turning a result into `kreach.v1` messages is [`crate::client`]'s.

use std::sync::Arc;

use kreach_domain::desired::NodeRole;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::jitter::PeriodicTimer;
use crate::reach::EndpointReach;
use crate::reconciler::AppliedWatch;
use crate::state::AppliedState;

/// One reachability check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Every endpoint of the view of the host's primary cluster, as this host reached it (empty
    /// when the host is that cluster's broker).
    pub endpoints: Vec<EndpointReach>,
    /// That cluster's name (empty when the host is its broker).
    pub cluster: String,
    /// Every other cluster this host is a client of, with the endpoints of its view.
    pub others: Vec<(String, Vec<EndpointReach>)>,
    /// When the check ran (Unix milliseconds).
    pub at_ms: u64,
    /// Whether it answers a check asked for (after an apply, or the coordinator handing the
    /// release again when a rollout completed): that one is reported even when nothing changed,
    /// so the coordinator knows the client looked again.
    pub asked: bool,
}

/// The check's handles: ask for a check now, read the latest result.
#[derive(Clone)]
pub struct Checker {
    check_now: Arc<Notify>,
    results: watch::Receiver<Option<Checked>>,
}

impl Checker {
    /// Check again at once (after an apply, or a release handed again).
    pub fn check_now(&self) {
        self.check_now.notify_one();
    }

    /// The latest result (None: not checked yet, or not a client).
    pub fn results(&self) -> watch::Receiver<Option<Checked>> {
        self.results.clone()
    }
}

/// The check's handles, and the check itself to run (it checks until `cancel`).
pub fn start(
    config: AgentConfig,
    applied: AppliedWatch,
    secondary: watch::Receiver<Vec<AppliedState>>,
    cancel: CancellationToken,
) -> (Checker, impl std::future::Future<Output = ()>) {
    let check_now = Arc::new(Notify::new());
    let (sender, results) = watch::channel(None);
    let checking = check_reachability(
        config,
        Arc::clone(&check_now),
        sender,
        (applied, secondary),
        cancel,
    );
    (Checker { check_now, results }, checking)
}

/// The SCRAM login of the reachability check: on a SASL listener, when agent.toml names a user
/// and a password file (read now, so a new password needs no agent restart).
pub fn sasl_login(
    config: &AgentConfig,
    mechanism: &str,
    node: &str,
) -> Option<crate::reach::SaslLogin> {
    let mechanism = crate::scram::Mechanism::from_name(mechanism)?;
    let (Some(user), Some(path)) = (
        &config.reachability.sasl_username,
        &config.reachability.sasl_password_file,
    ) else {
        tracing::debug!(node = %node, "reachability: a SASL listener, but no [reachability] sasl_username / sasl_password_file: not logging in");
        return None;
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Some(crate::reach::SaslLogin {
            mechanism,
            user: user.clone(),
            password: text.lines().next().unwrap_or("").to_string(),
        }),
        Err(error) => {
            tracing::warn!(node = %node, "reachability: cannot read {}: {error}; not logging in", path.display());
            None
        }
    }
}

/// Check reachability after each apply (`check_now`) and every `reachability.period` for every
/// cluster this host is a client of (the applied states the reconciler holds say which: the
/// primary one unless the host is its broker, and every secondary one), and publish each result.
async fn check_reachability(
    config: AgentConfig,
    check_now: Arc<Notify>,
    results: watch::Sender<Option<Checked>>,
    (applied, secondary): (AppliedWatch, watch::Receiver<Vec<AppliedState>>),
    cancel: CancellationToken,
) {
    // A first check at once (what can this host reach now?), then periodic checks from a random
    // phase, each period jittered: clients of one fleet do not all connect to every broker at once.
    let mut timer = PeriodicTimer::new(config.reachability.period);
    let mut first = true;
    loop {
        let asked = if std::mem::take(&mut first) {
            true
        } else {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = check_now.notified() => true,
                _ = timer.tick() => false,
            }
        };
        // Only clients check; a broker (or a node with nothing applied yet) has nothing to reach.
        let is_client =
            |spec: &kreach_domain::desired::NodeSpec| matches!(spec.role, NodeRole::Client { .. });
        let primary = applied
            .borrow()
            .as_ref()
            .map(|applied| applied.node_spec.clone())
            .filter(is_client);
        let others: Vec<_> = secondary
            .borrow()
            .iter()
            .map(|applied| applied.node_spec.clone())
            .filter(is_client)
            .collect();
        if primary.is_none() && others.is_empty() {
            continue;
        }
        let config_for_check = config.clone();
        let check = tokio::task::spawn_blocking(move || {
            let at_ms = crate::state::now_unix_ms();
            let (cluster, endpoints) = primary
                .map(|spec| (spec.cluster.clone(), check_view(&config_for_check, &spec)))
                .unwrap_or_default();
            let others = others
                .iter()
                .map(|spec| (spec.cluster.clone(), check_view(&config_for_check, spec)))
                .collect();
            Checked {
                endpoints,
                cluster,
                others,
                at_ms,
                asked,
            }
        });
        // A check whose connects are timing out must not hold up a stop: it is left behind (the
        // runtime does not wait for it either, see run_daemon's shutdown_timeout).
        let checked = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            checked = check => checked,
        };
        match checked {
            Ok(checked) => {
                results.send_replace(Some(checked));
            }
            Err(error) => {
                tracing::error!(node = %config.node, "reachability check failed: {error}")
            }
        }
    }
}

/// What this host reaches of the brokers of `spec`'s view, through the names it resolves.
fn check_view(config: &AgentConfig, spec: &kreach_domain::desired::NodeSpec) -> Vec<EndpointReach> {
    let node = &config.node;
    // The view's listener speaks TLS when the release carries the Kafka CA.
    let tls = if spec.kafka_ca_pem.is_empty() {
        None
    } else {
        match crate::kafka::TlsClient::from_ca_pem(&spec.kafka_ca_pem) {
            Ok(tls) => Some(tls),
            Err(error) => {
                tracing::warn!(node = %node, cluster = %spec.cluster, "reachability: {error}; checking without TLS");
                None
            }
        }
    };
    let system = crate::reach::SystemNetwork {
        timeout: crate::reach::CONNECT_TIMEOUT,
        tls,
        sasl: sasl_login(config, &spec.sasl_mechanism, node),
    };
    let hosts_file;
    let network: &dyn crate::reach::Network = match config.reachability.resolve {
        crate::config::Resolve::System => &system,
        crate::config::Resolve::HostsFile => {
            hosts_file = crate::reach::HostsFileNetwork {
                path: config.manage.hosts_file.clone(),
                system,
            };
            &hosts_file
        }
    };
    crate::reach::check(network, &spec.bootstrap)
}
