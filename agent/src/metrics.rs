//! Prometheus metrics of the agent (issue 15): `[metrics] listen` in agent.toml serves
//! `GET /metrics` in the text exposition format, plain HTTP (bind it to loopback or a management
//! network; it carries broker ids and file states, never a secret).
//!
//! Owns the apply counters the coordinator client bumps ([`record_apply`]) and turning the agent's
//! own views — the applied state the reconciler holds, the health board, the latest reachability result — into
//! metrics at each scrape, named by prometheus.io's rules (`kreach_` prefix, base units, `_total`
//! counters, labels with bounded values).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use kreach_domain::prometheus_text::write_counter;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::AgentConfig;
use crate::engine::ManagedFile;
use crate::health::LocalHealth;

type Labels = Vec<(String, String)>;

/// The apply outcomes counted, in the order they are written.
const OUTCOMES: [&str; 3] = ["converged", "rolled_back", "failed"];
/// The managed files a drift repair counts, by [`ManagedFile`], as the `file` label.
const FILES: [&str; 4] = ["hosts", "server_properties", "kafka_key_store", "kafka_ca"];
/// Why a file was put back, as the `cause` label: its content changed, or it was removed.
const CAUSES: [&str; 2] = ["changed", "removed"];

/// What this agent did since it started: releases applied by outcome ([`OUTCOMES`]), the Kafka
/// restarts they made, files put back by file and cause, and how long the last apply took.
struct Counters {
    applies: [AtomicU64; 3],
    restarts: AtomicU64,
    repairs: [[AtomicU64; 2]; 4],
    /// Milliseconds the last apply took, plus one (0: none yet).
    last_apply_ms: AtomicU64,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| Counters {
        applies: Default::default(),
        restarts: AtomicU64::new(0),
        repairs: Default::default(),
        last_apply_ms: AtomicU64::new(0),
    })
}

/// Count one release applied with `outcome` (`converged`, `rolled_back`, `failed`), whether
/// Kafka restarted for it, and how long it took (gates and restart included).
pub fn record_apply(outcome: &str, restarted: bool, took: Duration) {
    if let Some(index) = OUTCOMES.iter().position(|o| *o == outcome) {
        counters().applies[index].fetch_add(1, Ordering::Relaxed);
    }
    if restarted {
        counters().restarts.fetch_add(1, Ordering::Relaxed);
    }
    counters()
        .last_apply_ms
        .store(took.as_millis() as u64 + 1, Ordering::Relaxed);
}

/// Count one managed file put back after someone changed (`removed`: deleted) it.
pub fn record_repair(file: ManagedFile, removed: bool) {
    let file = match file {
        ManagedFile::Hosts => 0,
        ManagedFile::KafkaProperties => 1,
        ManagedFile::KafkaKeyStore => 2,
        ManagedFile::KafkaCa => 3,
    };
    counters().repairs[file][usize::from(removed)].fetch_add(1, Ordering::Relaxed);
}

/// The counters, in the 0.0.4 text format ([`kreach_domain::prometheus_text`]).
fn write_counters(out: &mut String) {
    let counters = counters();
    write_counter(
        out,
        "kreach_applies_total",
        "Releases applied since the agent started, by outcome.",
        OUTCOMES
            .iter()
            .zip(&counters.applies)
            .map(|(outcome, count)| ([("outcome", *outcome)], count.load(Ordering::Relaxed))),
    );
    write_counter(
        out,
        "kreach_kafka_restarts_total",
        "Kafka restarts the agent made for releases since it started.",
        [([], counters.restarts.load(Ordering::Relaxed))],
    );
    write_counter(
        out,
        "kreach_drift_repairs_total",
        "Managed files put back after someone changed or removed them, since the agent started.",
        FILES
            .iter()
            .zip(&counters.repairs)
            .flat_map(|(file, by_cause)| {
                CAUSES.iter().zip(by_cause).map(|(cause, count)| {
                    (
                        [("file", *file), ("cause", *cause)],
                        count.load(Ordering::Relaxed),
                    )
                })
            }),
    );
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// The metrics text for this agent now.
pub fn render(
    config: &AgentConfig,
    applied: Option<&crate::state::AppliedState>,
    health: &LocalHealth,
    reachability: Option<&[crate::reach::EndpointReach]>,
) -> String {
    let mut registry = Registry::with_prefix("kreach");
    let info = Family::<Labels, Gauge>::default();
    registry.register(
        "build_info",
        "The running kreach-agent's version",
        info.clone(),
    );
    info.get_or_create(&vec![
        ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("node".to_string(), config.node.clone()),
    ])
    .set(1);

    gauge(
        &mut registry,
        "applied_generation",
        "The generation of the release this node last applied (0: none)",
        applied.as_ref().map_or(0, |a| a.generation as i64),
    );
    gauge(
        &mut registry,
        "hosts_conflicts",
        "Unmanaged hosts lines that shadow kreach's entries",
        health.conflicts.len() as i64,
    );
    gauge(
        &mut registry,
        "dynamic_overrides",
        "Dynamic broker configs that hide kreach's settings in server.properties",
        health.dynamic_overrides.len() as i64,
    );
    gauge(
        &mut registry,
        "enforce_error",
        "1 while the last check of the managed files could not enforce the applied state",
        i64::from(!health.enforce_error.is_empty()),
    );
    gauge(
        &mut registry,
        "firewall_error",
        "1 while the EXTERNAL port filter could not be enforced",
        i64::from(health.firewall.starts_with("error")),
    );
    gauge(
        &mut registry,
        "firewall_filter_active",
        "1 while the EXTERNAL port filter (nftables) is enforced on this broker",
        i64::from(health.firewall.starts_with("nftables: tcp/")),
    );
    let last_apply_ms = counters().last_apply_ms.load(Ordering::Relaxed);
    if last_apply_ms > 0 {
        let duration = Gauge::<f64, AtomicU64>::default();
        duration.set((last_apply_ms - 1) as f64 / 1000.0);
        registry.register(
            "last_apply_duration_seconds",
            "How long the last release took to apply, gates and Kafka restart included",
            duration,
        );
    }

    if let Some(rows) = reachability {
        let up = Family::<Labels, Gauge>::default();
        registry.register(
            "reachability_up",
            "Whether this client reaches a broker of its view (1 yes, 0 no), as last checked",
            up.clone(),
        );
        let failures = Family::<Labels, Gauge>::default();
        registry.register(
            "reachability_failing",
            "Brokers this client does not reach, by reason",
            failures.clone(),
        );
        for row in rows {
            up.get_or_create(&vec![("broker_id".to_string(), row.broker_id.to_string())])
                .set(i64::from(row.ok()));
            if let Some(failure) = row.failure {
                failures
                    .get_or_create(&vec![("reason".to_string(), failure.reason().to_string())])
                    .inc();
            }
        }
    }

    if let Some(applied) = &applied {
        let expiry = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When this broker's TLS certificate for a listener expires (Unix seconds)",
            expiry.clone(),
        );
        for cert in &applied.node_spec.certificates {
            expiry
                .get_or_create(&vec![("listener".to_string(), cert.listener.clone())])
                .set(cert.not_after_ms as f64 / 1000.0);
        }
    }

    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &registry)
        .expect("writing to a String does not fail");
    write_counters(&mut text);
    text
}

/// Serve `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: AgentConfig,
    health: tokio::sync::watch::Receiver<LocalHealth>,
    applied: crate::reconciler::AppliedWatch,
    reachability: Option<tokio::sync::watch::Receiver<Option<crate::reachability::Checked>>>,
) -> std::io::Result<()> {
    let config = std::sync::Arc::new(config);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let config = std::sync::Arc::clone(&config);
            let health = health.borrow().clone();
            let applied = applied.borrow().clone();
            let rows = reachability
                .as_ref()
                .and_then(|r| r.borrow().as_ref().map(|checked| checked.endpoints.clone()));
            async move {
                // Everything is in memory: rendered on the async thread.
                let text = render(&config, applied.as_ref(), &health, rows.as_deref());
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_reachability_become_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::parse(&format!(
            "node = \"etl-1\"\nstate_dir = \"{0}\"\n[manage]\nhosts_file = \"{0}/hosts\"\n",
            dir.path().display()
        ))
        .unwrap();
        record_apply("converged", true, Duration::from_millis(1500));
        record_repair(ManagedFile::KafkaProperties, false);
        record_repair(ManagedFile::Hosts, true);
        let health = LocalHealth {
            repairs: 2,
            conflicts: vec!["line 3".into()],
            ..LocalHealth::default()
        };
        let rows = vec![
            crate::reach::EndpointReach {
                broker_id: 1,
                endpoint: "b1:9093".into(),
                failure: None,
                detail: String::new(),
            },
            crate::reach::EndpointReach {
                broker_id: 2,
                endpoint: "b2:9093".into(),
                failure: Some(kreach_domain::reachability::Failure::TimedOut),
                detail: String::new(),
            },
        ];
        let text = render(&config, None, &health, Some(&rows));
        for line in [
            "kreach_applied_generation 0",
            "kreach_applies_total{outcome=\"converged\"} 1",
            "kreach_applies_total{outcome=\"failed\"} 0",
            "kreach_kafka_restarts_total 1",
            "kreach_drift_repairs_total{file=\"server_properties\",cause=\"changed\"} 1",
            "kreach_drift_repairs_total{file=\"hosts\",cause=\"removed\"} 1",
            "kreach_drift_repairs_total{file=\"kafka_ca\",cause=\"changed\"} 0",
            "kreach_last_apply_duration_seconds 1.5",
            "kreach_firewall_filter_active 0",
            "kreach_hosts_conflicts 1",
            "kreach_reachability_up{broker_id=\"1\"} 1",
            "kreach_reachability_up{broker_id=\"2\"} 0",
            "kreach_reachability_failing{reason=\"timed out\"} 1",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
