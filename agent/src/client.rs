//! The coordinator client: subscribe to this node's releases, apply each one, report what happened.
//!
//! Owns the connection to the coordinator (mutual TLS, or plaintext to loopback), reconnecting with
//! backoff, and the translation between `kreach.v1` messages and the reconciler's commands and
//! answers. It changes nothing on the host itself: releases go to [`crate::reconciler`], which owns
//! the engine, the applied state and drift repair, and keeps enforcing the last applied state
//! whether or not the coordinator is reachable.
//! Only a release received from the coordinator is ever applied (Rule 7: offline is safe).

use crate::health::HealthBoard;
pub use kreach_proto::leader::LEADER_METADATA;
use kreach_proto::leader::{is_not_the_leader, leader_of, same_url};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kreach_domain::desired::NodeSpec;
use kreach_proto as pb;
use kreach_proto::agent_service_client::AgentServiceClient;
use kreach_runtime::tls::error_chain;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::audit::{AuditEntry, AuditLog};
use crate::config::{AgentConfig, CoordinatorConfig};
use crate::engine::RestartWindow;
use crate::facts::{self, HostFacts};
use crate::jitter::{jittered, random_unit, PeriodicTimer};
use crate::reach::EndpointReach;
use crate::reconciler::{self, Command, ReleaseEvent, ReleaseRequest, ReleaseResult};
use crate::state::{self, ReleaseId};

/// The first reconnect waits this long; each further failure doubles it up to [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Each delay is scaled by a random factor in 1 ± [`crate::jitter::JITTER`], so that a fleet of
/// agents does not reconnect in lockstep after a coordinator restart.
/// A subscription that lasted longer than this was a working connection: the backoff starts over.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Bound on each unary call and on connecting, so a half-dead coordinator cannot stall the client.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Audit entries per ReportAudit (the coordinator takes up to 1,000).
const AUDIT_BATCH: usize = 500;

/// The delay before the reconnect that follows `failures` consecutive failed sessions (0 for the
/// first): `BACKOFF_INITIAL · 2^failures`, capped at `BACKOFF_MAX`, [`jittered`] with `unit` u in
/// [0, 1]. Pure, so the bounds are testable.
pub fn backoff_delay(failures: u32, unit: f64) -> Duration {
    let base = BACKOFF_INITIAL
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(BACKOFF_MAX);
    jittered(base, unit)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("coordinator.ca/cert/key: {0}")]
    TlsFiles(#[from] kreach_runtime::tls::TlsError),
    #[error("coordinator.url {url:?}: {source}")]
    Endpoint {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to the coordinator at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{call} failed: {}", rpc_failure(.status))]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("{call} got no answer within {CALL_TIMEOUT:?}")]
    Timeout { call: &'static str },
    #[error("the coordinator ended the release stream")]
    StreamEnded,
    #[error("the apply task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The coordinator client of one agent.
pub struct CoordinatorClient {
    config: AgentConfig,
    coordinator: CoordinatorConfig,
    reconciler: reconciler::Handle,
    /// This client host's reachability check: asked again after an apply, its results reported.
    reachability: crate::reachability::Checker,
    /// What the agent knows of its host between releases; reported whenever it changes.
    health: Arc<HealthBoard>,
    /// Brokers: the public key of Kafka's TLS key (see [`crate::kafka_tls`]); empty on clients or
    /// when the key could not be made (logged).
    kafka_tls_public_key: String,
}

impl CoordinatorClient {
    pub fn new(
        config: AgentConfig,
        coordinator: CoordinatorConfig,
        reconciler: reconciler::Handle,
        reachability: crate::reachability::Checker,
        health: Arc<HealthBoard>,
    ) -> CoordinatorClient {
        let kafka_tls_public_key = if config.manage.kafka_properties.is_some() {
            crate::kafka_tls::ensure_key(&config).unwrap_or_else(|error| {
                tracing::error!(node = %config.node, "Kafka TLS key: {error}; this broker cannot get certificates");
                String::new()
            })
        } else {
            String::new()
        };
        CoordinatorClient {
            kafka_tls_public_key,
            config,
            coordinator,
            reconciler,
            reachability,
            health,
        }
    }

    /// Connect, subscribe and apply releases until `cancel`; reconnect with backoff on any error or
    /// end of stream. An apply in flight when `cancel` fires finishes (and is reported) first.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.follow(&cancel).await;
        tracing::info!(node = %self.config.node, "coordinator client stopped");
    }

    async fn follow(&mut self, cancel: &CancellationToken) {
        let mut rotation = Rotation::new(self.coordinator.url.all().to_vec());
        // Failed rounds of URLs since the last working session: each one backs off longer.
        let mut failures = 0u32;
        // Per URL, the last failure logged at warn: a repeat of it is only a debug line.
        let mut warned: std::collections::BTreeMap<String, String> = Default::default();
        // A coordinator answered "not the leader" in this round: they are electing one (which
        // takes at most their lease TTL), so the round is retried soon instead of backing off
        // longer each time.
        let mut electing = false;
        loop {
            let url = rotation.current().to_string();
            let mut subscribed_at = None;
            let result = self.session(cancel, &url, &mut subscribed_at).await;
            if cancel.is_cancelled() {
                break;
            }
            let reason = match result {
                Ok(()) => break,
                Err(error) => error,
            };
            if subscribed_at.is_some() {
                warned.clear();
            }
            if subscribed_at.is_some_and(|at: Instant| at.elapsed() > STABLE_SESSION) {
                failures = 0;
                rotation.worked();
            }
            let leader = leader_named(&reason);
            electing |= follower_answered(&reason);
            let back_off = rotation.failed(leader.as_deref());
            let next = rotation.current().to_string();
            let delay = if back_off && std::mem::take(&mut electing) {
                backoff_delay(ELECTION_FAILURES, random_unit())
            } else if back_off {
                let delay = backoff_delay(failures, random_unit());
                failures = failures.saturating_add(1);
                delay
            } else {
                Duration::ZERO
            };
            let next_text = if next == url {
                format!("reconnecting in {} ms", delay.as_millis())
            } else if back_off {
                format!(
                    "every coordinator failed; trying {next} in {} ms",
                    delay.as_millis()
                )
            } else if leader
                .as_deref()
                .is_some_and(|leader| same_url(leader, &next))
            {
                format!("trying the leader it named, {next}")
            } else {
                format!("trying {next}")
            };
            let text = reason.to_string();
            if warned.get(&url) != Some(&text) {
                tracing::warn!(
                    node = %self.config.node,
                    url = %url,
                    "coordinator connection lost: {text}; {next_text} (still enforcing the last applied state)"
                );
                warned.insert(url, text);
            } else {
                tracing::debug!(
                    node = %self.config.node,
                    url = %url,
                    "coordinator connection lost again: {text}; {next_text}"
                );
            }
            if delay.is_zero() {
                continue;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection: report facts, subscribe, handle releases. `Ok(())` only when cancelled.
    async fn session(
        &mut self,
        cancel: &CancellationToken,
        url: &str,
        subscribed_at: &mut Option<Instant>,
    ) -> Result<(), ClientError> {
        let endpoint = endpoint(&self.coordinator, url)?;
        let channel = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            connected = tokio::time::timeout(CALL_TIMEOUT, endpoint.connect()) => match connected {
                Ok(Ok(channel)) => channel,
                Ok(Err(error)) => return Err(ClientError::Connect {
                    url: url.to_string(),
                    detail: kreach_runtime::tls::explain_transport(error_chain(&error)),
                }),
                Err(_) => return Err(ClientError::Connect {
                    url: url.to_string(),
                    detail: format!("no connection within {CALL_TIMEOUT:?}"),
                }),
            },
        };
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);

        let mut reported_facts = self.gather_facts().await?;
        call(
            "ReportFacts",
            client.report_facts(self.facts_message(&reported_facts)),
        )
        .await?;
        // The highest audit seq the coordinator confirmed in this session.
        let mut audit_acked = None;
        self.sync_audit(&mut client, &mut audit_acked).await?;

        let applied = applied_release(&self.reconciler.applied().borrow());
        let mut stream = call(
            "Subscribe",
            client.subscribe(pb::SubscribeRequest {
                node: self.config.node.clone(),
                applied,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        )
        .await?;
        *subscribed_at = Some(Instant::now());
        let _dry_runs = self.start_dry_runs(&client).await?;
        tracing::info!(
            node = %self.config.node,
            url = %url,
            applied = %applied.map(|id| describe(&id)).unwrap_or_else(|| "nothing".into()),
            "subscribed to the coordinator"
        );

        // A new session reports the latest reachability again: the coordinator may have restarted.
        // What was last reported for each cluster this host is a client of.
        let mut reported_reachability: std::collections::BTreeMap<String, Vec<EndpointReach>> =
            Default::default();
        let mut reachability = self.reachability.results();
        reachability.mark_changed();
        // And its health: every session starts with a report of it.
        let mut health = self.health.subscribe();
        health.mark_changed();
        // Facts were just reported: the timer starts at a random phase, so agents that connected
        // together (after a coordinator restart) do not gather and report together.
        let mut facts_timer = PeriodicTimer::new(self.coordinator.facts_period);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                changed = reachability.changed() => {
                    if changed.is_err() {
                        // The checker ended: only on cancel, which the next turn sees.
                        continue;
                    }
                    let latest = reachability.borrow_and_update().clone();
                    if let Some(latest) = latest {
                        // Each cluster's view to that cluster; only a change is reported (the
                        // time of the check aside), or an answer.
                        let primary = (!latest.cluster.is_empty())
                            .then(|| (latest.cluster.clone(), latest.endpoints.clone()));
                        for (cluster, endpoints) in primary.into_iter().chain(latest.others.clone()) {
                            if !latest.asked && reported_reachability.get(&cluster) == Some(&endpoints) {
                                continue;
                            }
                            let failing = endpoints.iter().filter(|reach| !reach.ok()).count();
                            tracing::info!(node = %self.config.node, cluster = %cluster, endpoints = endpoints.len(), failing, "reachability changed; reporting it");
                            report(&mut client, pb::NodeStatus {
                                node: self.config.node.clone(),
                                phase: pb::Phase::Unspecified as i32,
                                reachability: wire_reachability(&endpoints, latest.at_ms),
                                cluster: cluster.clone(),
                                ..pb::NodeStatus::default()
                            }).await?;
                            reported_reachability.insert(cluster, endpoints);
                        }
                    }
                }
                changed = health.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let latest = health.borrow_and_update().clone();
                    call("ReportHealth", client.report_health(pb::AgentHealth::from((self.config.node.as_str(), &latest)))).await?;
                }
                _ = facts_timer.tick() => {
                    let facts = self.gather_facts().await?;
                    if facts != reported_facts {
                        tracing::info!(node = %self.config.node, "host facts changed; reporting them");
                        call("ReportFacts", client.report_facts(self.facts_message(&facts))).await?;
                        reported_facts = facts;
                    }
                    // Drift repairs happen between releases: hand over their audit entries too.
                    self.sync_audit(&mut client, &mut audit_acked).await?;
                }
                message = stream.message() => match message {
                    // Not raced against `cancel`: an apply, once started, finishes and is reported.
                    Ok(Some(release)) => {
                        self.handle_release(&mut client, release).await?;
                        self.sync_audit(&mut client, &mut audit_acked).await?;
                    }
                    Ok(None) => return Err(ClientError::StreamEnded),
                    Err(status) => return Err(ClientError::Rpc { call: "Subscribe", status }),
                },
            }
        }
    }

    /// Open the dry-run stream and answer its requests in a task of its own, so that a plan is
    /// answered even while a release is being applied (a dry run only reads, see
    /// [`crate::dry_run`]). The task ends with the session (the guard aborts it). None when the
    /// coordinator takes no dry runs (an older one): its plans show this node as not checked.
    async fn start_dry_runs(
        &self,
        client: &AgentServiceClient<Channel>,
    ) -> Result<Option<AbortOnDrop>, ClientError> {
        let mut client = client.clone();
        let node = self.config.node.clone();
        let mut requests = match call(
            "DryRuns",
            client.dry_runs(pb::DryRunSubscription { node: node.clone() }),
        )
        .await
        {
            Ok(requests) => requests,
            Err(ClientError::Rpc { status, .. }) if status.code() == tonic::Code::Unimplemented => {
                tracing::warn!(node = %node, "the coordinator takes no dry runs (an older version?); its plans show this node as not checked against its files");
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let config = self.config.clone();
        let applied = self.reconciler.applied();
        let reconciler = self.reconciler.clone();
        let task = tokio::spawn(async move {
            loop {
                let request = match requests.message().await {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::warn!(node = %node, "the dry-run stream ended: {}", rpc_failure(&status));
                        return;
                    }
                };
                if let Some(diagnose) = request.diagnose.clone() {
                    // Its own task: a diagnosis takes seconds (timeouts) and a plan asked
                    // meanwhile is still answered.
                    tokio::spawn(Self::diagnose_for_the_coordinator(
                        config.clone(),
                        applied.borrow().clone(),
                        client.clone(),
                        request.id,
                        diagnose.broker,
                    ));
                    continue;
                }
                let config = config.clone();
                let held = reconciler.held();
                let report = match tokio::task::spawn_blocking(move || {
                    crate::dry_run::answer(&config, &held, &request)
                })
                .await
                {
                    Ok(report) => report,
                    Err(error) => {
                        tracing::error!(node = %node, "dry run failed: {error}");
                        continue;
                    }
                };
                if report.error.is_empty() {
                    tracing::info!(node = %node, id = report.id, changes = !report.diff.is_empty(), restart = !report.restart_unit.is_empty(), "dry run for the coordinator's plan (nothing was changed)");
                } else {
                    tracing::warn!(node = %node, id = report.id, "dry run for the coordinator's plan failed: {}", report.error);
                }
                if let Err(error) = call("ReportDryRun", client.report_dry_run(report)).await {
                    tracing::warn!(node = %node, "{error}");
                }
            }
        });
        Ok(Some(AbortOnDrop(task)))
    }

    /// Run `kreach-agent diagnose`'s steps for the coordinator (`kreachctl diagnose`) and send each
    /// as it finishes, then a done message (with why, when nothing could be diagnosed). Reads only.
    async fn diagnose_for_the_coordinator(
        config: AgentConfig,
        applied: Option<state::AppliedState>,
        mut client: AgentServiceClient<Channel>,
        id: u64,
        broker: Option<i32>,
    ) {
        let node = config.node.clone();
        tracing::info!(node = %node, id, "diagnosing from this host's vantage for kreachctl diagnose");
        let (sender, mut steps) = tokio::sync::mpsc::channel::<pb::DiagnoseStep>(16);
        let message = |mut step: pb::DiagnoseStep| {
            step.node = node.clone();
            step.id = id;
            step
        };
        let worker = {
            let sender = sender.clone();
            tokio::task::spawn_blocking(move || {
                let outcome =
                    crate::diagnose::run(&config, applied.as_ref(), broker, &mut |step| {
                        let _ = sender.blocking_send(pb::DiagnoseStep::from(&step));
                    });
                let done = pb::DiagnoseStep {
                    done: true,
                    error: outcome.err().unwrap_or_default(),
                    ..pb::DiagnoseStep::default()
                };
                let _ = sender.blocking_send(done);
            })
        };
        drop(sender);
        while let Some(step) = steps.recv().await {
            let done = step.done;
            if let Err(error) = call("ReportDiagnose", client.report_diagnose(message(step))).await
            {
                tracing::warn!(node = %node, id, "diagnosis not delivered: {error}");
                break;
            }
            if done {
                break;
            }
        }
        // A dropped receiver makes the remaining sends fail at once: the worker ends on its own.
        drop(steps);
        let _ = worker.await;
    }

    /// Hand the coordinator the audit entries it does not have yet (for `kreachctl history
    /// --node`). The local trail stays the record; failing to read it never ends the session.
    ///
    /// `acked` is the highest seq the coordinator confirmed in this session (None: not asked
    /// yet). Once known, a sync with nothing new costs no call and reads only the trail's tail:
    /// this runs after every release and at every facts tick.
    async fn sync_audit(
        &self,
        client: &mut AgentServiceClient<Channel>,
        acked: &mut Option<u64>,
    ) -> Result<(), ClientError> {
        let node = self.config.node.clone();
        let log = AuditLog::new(&self.config.state_dir);
        let local_last = match log.last_seq() {
            Ok(seq) => seq,
            Err(error) => {
                tracing::warn!(%error, "cannot read the audit trail to report it");
                return Ok(());
            }
        };
        let coordinator_last = match *acked {
            Some(seq) => seq,
            None => {
                call(
                    "ReportAudit",
                    client.report_audit(pb::AuditReport {
                        node: node.clone(),
                        records: Vec::new(),
                        restarted: false,
                    }),
                )
                .await?
                .last_seq
            }
        };
        *acked = Some(coordinator_last);
        if local_last == coordinator_last {
            return Ok(());
        }
        // A local trail behind the coordinator's started over (state dir recreated).
        let mut restarted = local_last < coordinator_last;
        let after = if restarted { 0 } else { coordinator_last };
        let entries = match log.read_since(after) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "cannot read the audit trail to report it");
                return Ok(());
            }
        };
        for batch in entries.chunks(AUDIT_BATCH) {
            let records = batch.iter().map(audit_record).collect();
            let ack = call(
                "ReportAudit",
                client.report_audit(pb::AuditReport {
                    node: node.clone(),
                    records,
                    restarted,
                }),
            )
            .await?;
            *acked = Some(ack.last_seq);
            restarted = false;
        }
        if !entries.is_empty() {
            tracing::debug!(node = %node, entries = entries.len(), "audit entries reported");
        }
        Ok(())
    }

    async fn gather_facts(&self) -> Result<HostFacts, ClientError> {
        let hosts_file = self.config.manage.hosts_file.clone();
        let controller_check = self.config.manage.controller_check.clone();
        Ok(tokio::task::spawn_blocking(move || {
            facts::gather(&hosts_file, controller_check.as_deref())
        })
        .await?)
    }

    fn facts_message(&self, facts: &HostFacts) -> pb::HostFacts {
        pb::HostFacts {
            node: self.config.node.clone(),
            hostname: facts.hostname.clone(),
            fqdn: facts.fqdn.clone(),
            addresses: facts.addresses.clone(),
            kafka_running: facts.kafka_running,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kafka_controller: facts.kafka_controller,
            kafka_tls_public_key: self.kafka_tls_public_key.clone(),
            labels: self.config.labels.clone(),
        }
    }

    /// Translate one release for the reconciler, and its answers into reports. Errors are only
    /// those of the connection; a release that cannot be applied is reported as FAILED.
    async fn handle_release(
        &mut self,
        client: &mut AgentServiceClient<Channel>,
        release: pb::Release,
    ) -> Result<(), ClientError> {
        let node = self.config.node.clone();
        let Some(id) = release.id else {
            tracing::warn!(node = %node, "refusing a release without an id; nothing was applied");
            let status = pb::NodeStatus {
                node,
                phase: pb::Phase::Failed as i32,
                reason: "invalid Release.id in a kreach.v1 message: missing; nothing was applied"
                    .into(),
                ..pb::NodeStatus::default()
            };
            return report(client, status).await;
        };
        let spec = match release.spec.as_ref() {
            None => Err("invalid Release.spec in a kreach.v1 message: missing".to_string()),
            Some(wire) => NodeSpec::try_from(wire).map_err(|error| error.to_string()),
        }
        .and_then(|spec| {
            if spec.node == node {
                Ok(spec)
            } else {
                Err(format!(
                    "the release is for node {:?} but this agent is {node:?} (config node)",
                    spec.node
                ))
            }
        });
        let (events, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let sent = self
            .reconciler
            .send(Command::Release(Box::new(ReleaseRequest {
                id: ReleaseId::from(&id),
                spec,
                released_by: release.released_by,
                clusters: release.clusters,
                events,
            })));
        // The release's cluster, so that a coordinator of several clusters gives the report to
        // that cluster's rollout.
        let cluster = release
            .spec
            .as_ref()
            .map(|spec| spec.cluster.clone())
            .unwrap_or_default();
        let status = |phase: pb::Phase, reason: String| pb::NodeStatus {
            node: node.clone(),
            release: Some(id),
            phase: phase as i32,
            reason,
            cluster: cluster.clone(),
            ..pb::NodeStatus::default()
        };
        // Not raced against anything: an apply, once started, finishes and is reported.
        let result = loop {
            match answers.recv().await {
                Some(ReleaseEvent::Applying) => {
                    report(client, status(pb::Phase::Applying, String::new())).await?
                }
                Some(ReleaseEvent::Done(result)) => break result,
                None => {
                    let why = if sent {
                        "stopped while applying it"
                    } else {
                        "has stopped"
                    };
                    break ReleaseResult::Failed {
                        reason: format!("the agent's reconciler {why}"),
                    };
                }
            }
        };
        let status = match result {
            ReleaseResult::FailedBefore(failed) => {
                status(pb::Phase::from(failed.phase), failed.reason)
            }
            ReleaseResult::AlreadyApplied => {
                // Handed again (a reconnect, or the coordinator's nudge when a rollout
                // completed): what the brokers advertise may have moved since the last check.
                self.reachability.check_now();
                status(pb::Phase::Converged, String::new())
            }
            ReleaseResult::Converged {
                checks,
                restart_window,
                conflicts,
            } => {
                let reason = if conflicts.is_empty() {
                    String::new()
                } else {
                    format!(
                        "applied, but unmanaged hosts lines shadow kreach's entries: {}",
                        conflicts.join("; ")
                    )
                };
                self.reachability.check_now();
                let mut converged = status(pb::Phase::Converged, reason);
                converged.checks = checks.iter().map(pb::Check::from).collect();
                set_restart_window(&mut converged, restart_window);
                converged
            }
            ReleaseResult::RolledBack {
                reason,
                restart_window,
            } => {
                let mut rolled_back = status(pb::Phase::RolledBack, reason);
                set_restart_window(&mut rolled_back, restart_window);
                rolled_back
            }
            ReleaseResult::Failed { reason } => status(pb::Phase::Failed, reason),
        };
        report(client, status).await
    }
}

/// Aborts its task when dropped: a task that belongs to one session ends with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A reachability result (checked at `at_ms`) as `kreach.v1` reports it.
fn wire_reachability(endpoints: &[EndpointReach], at_ms: u64) -> Vec<pb::Reachability> {
    endpoints
        .iter()
        .map(|reach| pb::Reachability {
            broker_id: reach.broker_id,
            ok: reach.ok(),
            reason: reach
                .failure
                .map(|failure| failure.reason().to_string())
                .unwrap_or_default(),
            endpoint: reach.endpoint.clone(),
            checked_at_ms: at_ms,
            detail: reach.detail.clone(),
        })
        .collect()
}

async fn report(
    client: &mut AgentServiceClient<Channel>,
    status: pb::NodeStatus,
) -> Result<(), ClientError> {
    call("ReportStatus", client.report_status(status))
        .await
        .map(|_| ())
}

fn audit_record(entry: &AuditEntry) -> pb::AuditRecord {
    pb::AuditRecord {
        seq: entry.seq,
        at_ms: entry.at_ms,
        file: entry.file.clone(),
        path: entry.path.clone(),
        action: entry.action.as_str().to_string(),
        old_hash: entry.old_hash.clone().unwrap_or_default(),
        new_hash: entry.new_hash.clone().unwrap_or_default(),
        reason: entry.reason.clone(),
        generation: entry.generation,
        released_by: entry.released_by.clone(),
        node: entry.node.clone(),
    }
}

/// A unary call (or the start of the stream) bounded by [`CALL_TIMEOUT`].
async fn call<T>(
    name: &'static str,
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(CALL_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(ClientError::Rpc { call: name, status }),
        Err(_) => Err(ClientError::Timeout { call: name }),
    }
}

/// The channel's endpoint to `url` (one of `coordinator`'s); the PEM files are read at every
/// connect so renewed files take effect.
fn endpoint(coordinator: &CoordinatorConfig, url: &str) -> Result<Endpoint, ClientError> {
    let endpoint_error = |source| ClientError::Endpoint {
        url: url.to_string(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(endpoint_error)?
        .connect_timeout(CALL_TIMEOUT)
        // Detect a coordinator that vanished without closing the connection. The interval is
        // jittered per connection so that agents connected together do not ping together.
        .http2_keep_alive_interval(jittered(Duration::from_secs(20), random_unit()))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if !coordinator.insecure {
        // Small files, read once per connection: blocking the runtime briefly is fine. The shared
        // loader (as kreachctl and the coordinator use) also catches a key that does not belong to
        // the certificate, or a certificate from another CA, naming the file.
        let path = |path: &Option<PathBuf>| path.clone().unwrap_or_default();
        let files = kreach_runtime::tls::load_tls_files(
            &path(&coordinator.ca),
            &path(&coordinator.cert),
            &path(&coordinator.key),
        )?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&files.ca_pem))
            .identity(Identity::from_pem(&files.cert_pem, &files.key_pem));
        // The server name is the host of the URL being connected to, not of the first listed.
        if let Some(host) = crate::config::url_host(url) {
            tls = tls.domain_name(host);
        }
        endpoint = endpoint.tls_config(tls).map_err(endpoint_error)?;
    }
    Ok(endpoint)
}

/// Which of the configured coordinators the next connection attempt goes to, and whether to back
/// off before it. Pure, so the order is testable.
///
/// Each attempt after a failure goes to the next URL in the list, or to the leader a follower
/// named when that is one of the list; only after as many failed attempts as there are URLs (a
/// full round) does the agent back off. With one URL every failure is a full round: the same
/// backoff as before several URLs were possible.
#[derive(Debug, Clone)]
pub struct Rotation {
    urls: Vec<String>,
    current: usize,
    /// Attempts that failed since the last back-off or the last working session.
    failed_in_round: usize,
}

impl Rotation {
    pub fn new(urls: Vec<String>) -> Rotation {
        assert!(!urls.is_empty(), "a checked config lists at least one URL");
        Rotation {
            urls,
            current: 0,
            failed_in_round: 0,
        }
    }

    /// The URL the next attempt goes to.
    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// The attempt to [`Rotation::current`] failed; `leader` is the URL a follower named, if it
    /// did. Moves on, and says whether a full round failed (back off first).
    pub fn failed(&mut self, leader: Option<&str>) -> bool {
        self.failed_in_round += 1;
        self.current = leader
            .and_then(|leader| self.urls.iter().position(|url| same_url(url, leader)))
            .unwrap_or((self.current + 1) % self.urls.len());
        if self.failed_in_round >= self.urls.len() {
            self.failed_in_round = 0;
            true
        } else {
            false
        }
    }

    /// The session was a working one: the next failure starts a new round.
    pub fn worked(&mut self) {
        self.failed_in_round = 0;
    }
}

/// The backoff step of a round in which a coordinator answered "not the leader": about 400 ms,
/// whatever failed before, so the agent reaches the new leader soon after it is elected.
const ELECTION_FAILURES: u32 = 1;

/// Whether `error` is a coordinator's "not the leader" answer (it runs; it does not lead now).
fn follower_answered(error: &ClientError) -> bool {
    matches!(error, ClientError::Rpc { status, .. } if is_not_the_leader(status))
}

/// The leader's URL when `error` is a follower's "not the leader" answer that names one.
fn leader_named(error: &ClientError) -> Option<String> {
    let ClientError::Rpc { status, .. } = error else {
        return None;
    };
    leader_of(status)
}

/// The release this node last applied from a coordinator; none after only `apply-local`
/// (generation 0), which the coordinator never released.
fn applied_release(applied: &Option<state::AppliedState>) -> Option<pb::ReleaseId> {
    applied
        .as_ref()
        .map(state::AppliedState::release)
        .filter(ReleaseId::is_from_coordinator)
        .map(pb::ReleaseId::from)
}

/// The restart's span, when Kafka restarted, as the report carries it.
fn set_restart_window(status: &mut pb::NodeStatus, window: Option<RestartWindow>) {
    if let Some(window) = window {
        status.restart_started_ms = window.started_ms;
        status.restart_finished_ms = window.finished_ms;
    }
}

fn describe(id: &pb::ReleaseId) -> String {
    ReleaseId::from(id).to_string()
}

/// The error and its sources on one line (tonic's transport errors hide the useful part below).
/// A failed call as the agent's log says it: the message, the code, the transport cause tonic
/// keeps in the sources, and what a TLS alert means.
fn rpc_failure(status: &tonic::Status) -> String {
    let mut text = kreach_runtime::tls::with_causes(
        &format!("{} ({:?})", status.message(), status.code()),
        std::error::Error::source(status),
    );
    if status.code() == tonic::Code::Cancelled && text.contains("connection closed") {
        // With TLS 1.3 a refused client certificate often shows only as a closed connection.
        text.push_str("; if this persists, check that [coordinator] cert and key are this node's certificate from the coordinator's CA (the coordinator logs why it refuses a handshake)");
        return text;
    }
    kreach_runtime::tls::explain_transport(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(urls: &[&str]) -> Rotation {
        Rotation::new(urls.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn one_url_backs_off_after_every_failure_as_before() {
        let mut one = rotation(&["https://c:7443"]);
        for _ in 0..3 {
            assert!(one.failed(None));
            assert_eq!(one.current(), "https://c:7443");
        }
        // A leader it does not list is not followed.
        assert!(one.failed(Some("https://elsewhere:7443")));
        assert_eq!(one.current(), "https://c:7443");
    }

    #[test]
    fn several_urls_are_tried_in_turn_and_back_off_only_after_a_full_round() {
        let mut urls = rotation(&["https://a:7443", "https://b:7443", "https://c:7443"]);
        assert_eq!(urls.current(), "https://a:7443");
        assert!(!urls.failed(None));
        assert_eq!(urls.current(), "https://b:7443");
        assert!(!urls.failed(None));
        assert_eq!(urls.current(), "https://c:7443");
        // The third failure in a row completes the round: back off, then start over at a.
        assert!(urls.failed(None));
        assert_eq!(urls.current(), "https://a:7443");
        // A working session starts a new round.
        assert!(!urls.failed(None));
        urls.worked();
        assert!(!urls.failed(None));
        assert!(!urls.failed(None));
        assert!(urls.failed(None));
    }

    #[test]
    fn a_follower_sends_the_next_attempt_to_the_leader_it_names_if_listed() {
        let mut urls = rotation(&["https://a:7443", "https://b:7443", "https://c:7443"]);
        // a is a follower naming c (as written with a trailing slash): c next, not b, no backoff.
        assert!(!urls.failed(Some("https://c:7443/")));
        assert_eq!(urls.current(), "https://c:7443");
        // A leader outside the list is ignored: the next in the list.
        assert!(!urls.failed(Some("https://10.0.0.9:7443")));
        assert_eq!(urls.current(), "https://a:7443");
        // Followers naming each other cannot loop without backing off: still one per round.
        assert!(urls.failed(Some("https://b:7443")));
        assert_eq!(urls.current(), "https://b:7443");
    }

    #[test]
    fn only_a_not_the_leader_answer_names_a_leader() {
        let with_leader = |code, message: &str| {
            let mut status = tonic::Status::new(code, message);
            status
                .metadata_mut()
                .insert(LEADER_METADATA, "https://b:7443".parse().unwrap());
            status
        };
        let follower = with_leader(
            tonic::Code::Unavailable,
            "not the leader: this coordinator follows; the leader is at https://b:7443",
        );
        assert_eq!(leader_of(&follower).as_deref(), Some("https://b:7443"));
        let error = ClientError::Rpc {
            call: "ReportFacts",
            status: follower,
        };
        assert_eq!(leader_named(&error).as_deref(), Some("https://b:7443"));
        assert_eq!(
            leader_of(&with_leader(tonic::Code::Unavailable, "connection refused")),
            None
        );
        assert_eq!(
            leader_of(&with_leader(tonic::Code::Internal, "not the leader: x")),
            None
        );
        assert_eq!(
            leader_of(&tonic::Status::unavailable(
                "not the leader: no coordinator leads (etcd: timeout)"
            )),
            None
        );
    }

    #[test]
    fn backoff_doubles_from_200_ms_to_a_10_s_cap() {
        let middle: Vec<u128> = (0..8).map(|n| backoff_delay(n, 0.5).as_millis()).collect();
        assert_eq!(
            middle,
            vec![200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(backoff_delay(u32::MAX, 0.5), BACKOFF_MAX);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(backoff_delay(0, 0.0), Duration::from_millis(160));
        assert_eq!(backoff_delay(0, 1.0), Duration::from_millis(240));
        assert_eq!(backoff_delay(40, 1.0), Duration::from_millis(12_000));
        assert_eq!(backoff_delay(40, 0.0), Duration::from_millis(8_000));
        // Out-of-range inputs are clamped, never a longer wait.
        assert_eq!(backoff_delay(0, 7.0), Duration::from_millis(240));
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit), "{unit}");
            let delay = backoff_delay(3, unit).as_millis();
            assert!((1280..=1920).contains(&delay), "{delay}");
            seen.push(unit);
        }
        // The source is not constant: jitter actually spreads agents out.
        assert!(seen.iter().any(|unit| *unit < 0.3) && seen.iter().any(|unit| *unit > 0.7));
    }
}
