//! Prometheus metrics of the agent (issue 15): `[metrics] listen` in agent.toml serves
//! `GET /metrics` in the text exposition format, plain HTTP (bind it to loopback or a management
//! network; it carries broker ids and file states, never a secret).
//!
//! Owns the apply counters the coordinator client bumps ([`record_apply`]) and turning the agent's
//! own views — the applied state on disk, the health board, the latest reachability result — into
//! metrics at each scrape, named by prometheus.io's rules (`kreach_` prefix, base units, `_total`
//! counters, labels with bounded values).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use kreach_proto as pb;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::AgentConfig;
use crate::health::LocalHealth;

type Labels = Vec<(String, String)>;

/// The apply outcomes counted, in the order they are written.
const OUTCOMES: [&str; 3] = ["converged", "rolled_back", "failed"];

/// Releases this agent applied since it started, by outcome ([`OUTCOMES`]), and the Kafka
/// restarts they made.
struct Counters {
    applies: [AtomicU64; 3],
    restarts: AtomicU64,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| Counters {
        applies: Default::default(),
        restarts: AtomicU64::new(0),
    })
}

/// Count one release applied with `outcome` (`converged`, `rolled_back`, `failed`), and whether
/// Kafka restarted for it.
pub fn record_apply(outcome: &str, restarted: bool) {
    if let Some(index) = OUTCOMES.iter().position(|o| *o == outcome) {
        counters().applies[index].fetch_add(1, Ordering::Relaxed);
    }
    if restarted {
        counters().restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters in the Prometheus text format (0.0.4), whose `# TYPE` line names the sample
/// itself, `NAME_total`. (prometheus-client writes counters the OpenMetrics way, TYPE without
/// `_total`, which Prometheus' text parser and `promtool check metrics` read as help-less samples;
/// so the agent's few counters are written here.)
fn write_counters(out: &mut String, repairs: u64) {
    let counters = counters();
    out.push_str(
        "# HELP kreach_applies_total Releases applied since the agent started, by outcome.\n",
    );
    out.push_str("# TYPE kreach_applies_total counter\n");
    for (outcome, count) in OUTCOMES.iter().zip(&counters.applies) {
        out.push_str(&format!(
            "kreach_applies_total{{outcome=\"{outcome}\"}} {}\n",
            count.load(Ordering::Relaxed)
        ));
    }
    for (name, help, value) in [
        (
            "kreach_kafka_restarts_total",
            "Kafka restarts the agent made for releases since it started.",
            counters.restarts.load(Ordering::Relaxed),
        ),
        (
            "kreach_drift_repairs_total",
            "Managed files put back after someone changed them, since the agent started.",
            repairs,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// The metrics text for this agent now.
pub fn render(
    config: &AgentConfig,
    health: &LocalHealth,
    reachability: Option<&[pb::Reachability]>,
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

    let applied = crate::state::load(&config.state_dir).ok().flatten();
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
                .set(i64::from(row.ok));
            if !row.ok {
                failures
                    .get_or_create(&vec![("reason".to_string(), row.reason.clone())])
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
    write_counters(&mut text, health.repairs);
    text
}

/// Serve `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: AgentConfig,
    health: tokio::sync::watch::Receiver<LocalHealth>,
    reachability: Option<tokio::sync::watch::Receiver<Option<crate::client::Checked>>>,
) -> std::io::Result<()> {
    let config = std::sync::Arc::new(config);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let config = std::sync::Arc::clone(&config);
            let health = health.borrow().clone();
            let rows = reachability
                .as_ref()
                .and_then(|r| r.borrow().as_ref().map(|(rows, _)| rows.clone()));
            async move {
                // Reads the applied state from disk: off the async thread.
                let text =
                    tokio::task::spawn_blocking(move || render(&config, &health, rows.as_deref()))
                        .await
                        .unwrap_or_default();
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
        record_apply("converged", true);
        let health = LocalHealth {
            repairs: 2,
            conflicts: vec!["line 3".into()],
            ..LocalHealth::default()
        };
        let rows = vec![
            pb::Reachability {
                broker_id: 1,
                ok: true,
                ..pb::Reachability::default()
            },
            pb::Reachability {
                broker_id: 2,
                ok: false,
                reason: "timed out".into(),
                ..pb::Reachability::default()
            },
        ];
        let text = render(&config, &health, Some(&rows));
        for line in [
            "kreach_applied_generation 0",
            "kreach_applies_total{outcome=\"converged\"} 1",
            "kreach_applies_total{outcome=\"failed\"} 0",
            "kreach_kafka_restarts_total 1",
            "kreach_drift_repairs_total 2",
            "kreach_hosts_conflicts 1",
            "kreach_reachability_up{broker_id=\"1\"} 1",
            "kreach_reachability_up{broker_id=\"2\"} 0",
            "kreach_reachability_failing{reason=\"timed out\"} 1",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
