//! Prometheus metrics of the coordinator (issue 15): `[metrics] listen` in coordinator.toml serves
//! `GET /metrics` in the text exposition format, plain HTTP (bind it to loopback or a management
//! network; it carries node names, never a secret).
//!
//! Owns turning one status snapshot (the same one `kreachctl status` shows, from the core's
//! `watch` channel, so a scrape never takes the core's lock) into metrics, named by prometheus.io's
//! rules: a `kreach_` prefix, base units, `_info` gauges of 1, labels with bounded values (phases,
//! states, node and listener names of the spec).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use kreach_domain::prometheus_text::write_counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use kreach_proto as pb;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// What paused rollouts, as [`crate::rollout::Event::pause_cause`] names it.
const PAUSE_CAUSES: [&str; 6] = [
    "rolled_back",
    "failed",
    "health_timeout",
    "agent_offline",
    "operator",
    "other",
];
/// Why a TLS handshake with the coordinator was refused, as [`crate::tls_accept::refusal`] names it.
pub const TLS_REFUSALS: [&str; 9] = [
    "no_certificate",
    "unknown_ca",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "other_certificate",
    "peer_refused",
    "timeout",
    "other",
];

/// What the coordinator counted since it started.
struct Counters {
    /// By cluster, then by [`PAUSE_CAUSES`].
    pauses: std::sync::Mutex<std::collections::BTreeMap<String, [u64; 6]>>,
    tls_refusals: [AtomicU64; 9],
    /// How long each write transaction of the store took, commit (fsync) included.
    store_writes: Histogram,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| Counters {
        pauses: Default::default(),
        tls_refusals: Default::default(),
        // 0.5 ms to about 1 s.
        store_writes: Histogram::new(exponential_buckets(0.0005, 2.0, 12)),
    })
}

/// Count a rollout pause of `cluster` by its cause (one of [`PAUSE_CAUSES`]).
pub fn record_pause(cluster: &str, cause: &str) {
    if let Some(index) = PAUSE_CAUSES.iter().position(|c| *c == cause) {
        let mut pauses = counters()
            .pauses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pauses.entry(cluster.to_string()).or_default()[index] += 1;
    }
}

/// Count a refused TLS handshake by its kind (one of [`TLS_REFUSALS`]).
pub fn record_tls_refusal(kind: &str) {
    if let Some(index) = TLS_REFUSALS.iter().position(|k| *k == kind) {
        counters().tls_refusals[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// Observe one store write transaction's duration.
pub fn record_store_write(took: Duration) {
    counters().store_writes.observe(took.as_secs_f64());
}

/// The counters for `cluster` in the 0.0.4 text format ([`kreach_domain::prometheus_text`]).
/// The counters of `clusters` in the 0.0.4 text format ([`kreach_domain::prometheus_text`]):
/// pauses by cluster; TLS refusals, which are the process's, under the first cluster's label.
fn write_counters(out: &mut String, clusters: &[&str]) {
    let counters = counters();
    let pauses = counters
        .pauses
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let samples = clusters.iter().flat_map(|cluster| {
        let counts = pauses.get(*cluster).copied().unwrap_or_default();
        PAUSE_CAUSES
            .iter()
            .zip(counts)
            .map(move |(cause, count)| ([("cluster", *cluster), ("cause", *cause)], count))
    });
    write_counter(
        out,
        "kreach_rollout_pauses_total",
        "Rollouts paused since the coordinator started, by cause (a node's gates rolled it back or failed, nodes silent past the health timeout, an agent offline, an operator)",
        samples,
    );
    let first = clusters.first().copied().unwrap_or_default();
    let samples = TLS_REFUSALS
        .iter()
        .zip(&counters.tls_refusals)
        .map(|(reason, count)| {
            (
                [("cluster", first), ("reason", *reason)],
                count.load(Ordering::Relaxed),
            )
        });
    write_counter(
        out,
        "kreach_tls_handshakes_refused_total",
        "TLS handshakes the coordinator refused since it started, by reason",
        samples,
    );
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A gauge family registered under `name`.
fn gauges(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// What a node's last report says, as the `state` label of `kreach_nodes`.
fn node_state(node: &pb::NodeView) -> &'static str {
    if !node.online {
        return "offline";
    }
    match node.status.as_ref().map(|s| s.phase()) {
        Some(pb::Phase::Converged) => "converged",
        Some(pb::Phase::Applying) => "applying",
        Some(pb::Phase::Failed) => "failed",
        Some(pb::Phase::RolledBack) => "rolled_back",
        _ => "unknown",
    }
}

/// The gauges of the process itself: its version, and whether it leads.
fn process_gauges(leading: bool) -> Registry {
    let mut registry = Registry::with_prefix("kreach");
    gauges(
        &mut registry,
        "build_info",
        "The running kreach-coordinator's version",
    )
    .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
    .set(1);
    let leader = Gauge::<i64>::default();
    leader.set(i64::from(leading));
    registry.register(
        "coordinator_leader",
        "1 when this coordinator leads (it releases steps, and its metrics cover the clusters); 0 while it follows (several coordinators on etcd)",
        leader,
    );
    registry
}

/// The metrics text of a coordinator that follows: only the process's own gauges (the clusters
/// are the leader's to report, so that no series is counted twice).
pub fn render_following() -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &process_gauges(false))
        .expect("writing to a String does not fail");
    text
}

/// The metrics text for one cluster's status.
pub fn render(status: &pb::StatusResponse) -> String {
    render_all(std::slice::from_ref(status))
}

/// The metrics text for every cluster of the coordinator, each series labelled with its
/// cluster. The process's own counters (TLS refusals, store writes) are not any one cluster's:
/// they carry the first cluster's label, as a single-cluster coordinator always had them.
pub fn render_all(statuses: &[pb::StatusResponse]) -> String {
    let mut registry = process_gauges(true);

    let info = gauges(
        &mut registry,
        "rollout_info",
        "The newest rollout's phase (running, settling, paused, aborted, completed, none): 1 for the current one",
    );
    let generation = gauges(
        &mut registry,
        "rollout_generation",
        "The newest rollout's generation (0: none yet)",
    );
    let step = gauges(
        &mut registry,
        "rollout_step",
        "The newest rollout's current step (1-based; 0: none)",
    );
    let steps = gauges(
        &mut registry,
        "rollout_steps",
        "How many steps the newest rollout has",
    );
    let nodes = gauges(
        &mut registry,
        "nodes",
        "Nodes by what their agent last reported (converged, applying, failed, rolled_back, unknown) or offline",
    );
    let connected = gauges(
        &mut registry,
        "agents_connected",
        "Agents with an open session to this coordinator",
    );
    let problems = gauges(
        &mut registry,
        "host_problems",
        "Problems agents report on their hosts: conflicting hosts lines, enforcement errors, firewall errors, dynamic overrides",
    );
    let reachable = gauges(
        &mut registry,
        "reachability_up",
        "Whether a client reaches a broker of its view, as the client last reported (1 yes, 0 no)",
    );
    let expiry = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "certificate_expiry_timestamp_seconds",
        "When a broker listener's TLS certificate expires (Unix seconds)",
        expiry.clone(),
    );

    for status in statuses {
        let cluster = status.cluster.as_str();
        let cluster_only = labels(&[("cluster", cluster)]);
        let rollout = status.rollout.as_ref();
        let phase = rollout.map(|r| r.state.as_str()).unwrap_or("none");
        for each in [
            "running",
            "settling",
            "paused",
            "aborted",
            "completed",
            "none",
        ] {
            info.get_or_create(&labels(&[("cluster", cluster), ("phase", each)]))
                .set(i64::from(each == phase));
        }
        generation
            .get_or_create(&cluster_only)
            .set(rollout.map_or(0, |r| r.generation as i64));
        step.get_or_create(&cluster_only)
            .set(rollout.map_or(0, |r| i64::from(r.current_step)));
        steps
            .get_or_create(&cluster_only)
            .set(rollout.map_or(0, |r| i64::from(r.total_steps)));
        for each in [
            "converged",
            "applying",
            "failed",
            "rolled_back",
            "unknown",
            "offline",
        ] {
            let count = status
                .nodes
                .iter()
                .filter(|n| node_state(n) == each)
                .count();
            nodes
                .get_or_create(&labels(&[("cluster", cluster), ("state", each)]))
                .set(count as i64);
        }
        connected
            .get_or_create(&cluster_only)
            .set(status.nodes.iter().filter(|n| n.online).count() as i64);
        problems
            .get_or_create(&cluster_only)
            .set(crate::ctl::host_problems(&status.nodes).len() as i64);
        for row in &status.reachability {
            for cell in &row.brokers {
                reachable
                    .get_or_create(&labels(&[
                        ("cluster", cluster),
                        ("client", &row.client),
                        ("broker_id", &cell.broker_id.to_string()),
                    ]))
                    .set(i64::from(cell.ok));
            }
        }
        for cert in &status.certificates {
            expiry
                .get_or_create(&labels(&[
                    ("cluster", cluster),
                    ("node", &cert.node),
                    ("listener", &cert.listener),
                ]))
                .set(cert.not_after_ms as f64 / 1000.0);
        }
    }

    registry.register(
        "store_write_duration_seconds",
        "How long the store's write transactions take, commit included",
        counters().store_writes.clone(),
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &registry)
        .expect("writing to a String does not fail");
    let names: Vec<&str> = statuses.iter().map(|s| s.cluster.as_str()).collect();
    write_counters(&mut text, &names);
    text
}

/// Every cluster's status channel, as the coordinator holds them (a cluster applied later joins).
pub type StatusFeeds =
    std::sync::Arc<std::sync::RwLock<Vec<tokio::sync::watch::Receiver<pb::StatusResponse>>>>;

/// Where `/metrics` takes the clusters from: None while this coordinator follows, every
/// cluster's status channel once it leads. One endpoint for the process's life, whatever its role.
pub type MetricsSource = std::sync::Arc<std::sync::RwLock<Option<StatusFeeds>>>;

/// Serve `GET /metrics` on `listener` until the process ends: from every cluster's latest status
/// while `source` holds them, else [`render_following`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: MetricsSource,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let feeds = source
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            let text = match feeds {
                Some(feeds) => render_leading(&feeds),
                None => render_following(),
            };
            async move {
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

fn render_leading(feeds: &StatusFeeds) -> String {
    let mut statuses: Vec<pb::StatusResponse> = feeds
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|feed| feed.borrow().clone())
        .collect();
    // A cluster planned but never applied has no name and nothing to show; before
    // any apply the one status (no cluster yet) is shown as always.
    if statuses.len() > 1 {
        statuses.retain(|status| !status.cluster.is_empty());
    }
    statuses.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    render_all(&statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_becomes_metrics_with_the_kreach_prefix_and_bounded_labels() {
        let status = pb::StatusResponse {
            cluster: "c".into(),
            rollout: Some(pb::RolloutView {
                generation: 3,
                state: "paused".into(),
                current_step: 2,
                total_steps: 4,
                ..pb::RolloutView::default()
            }),
            nodes: vec![pb::NodeView {
                node: "b1".into(),
                online: true,
                status: Some(pb::NodeStatus {
                    phase: pb::Phase::Converged as i32,
                    ..pb::NodeStatus::default()
                }),
                ..pb::NodeView::default()
            }],
            certificates: vec![pb::CertificateView {
                node: "b1".into(),
                listener: "EXTERNAL".into(),
                not_after_ms: 1_800_000_000_000,
                ..pb::CertificateView::default()
            }],
            ..pb::StatusResponse::default()
        };
        record_pause("c", "health_timeout");
        record_tls_refusal("unknown_ca");
        record_store_write(Duration::from_millis(3));
        let text = render(&status);
        // Counters are the process's: other tests in this binary add to them too.
        let sample = |series: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        assert!(
            sample("kreach_rollout_pauses_total{cluster=\"c\",cause=\"health_timeout\"}") >= 1.0
        );
        assert!(sample("kreach_rollout_pauses_total{cluster=\"c\",cause=\"operator\"}") >= 0.0);
        assert!(
            sample("kreach_tls_handshakes_refused_total{cluster=\"c\",reason=\"unknown_ca\"}")
                >= 1.0
        );
        assert!(sample("kreach_store_write_duration_seconds_count") >= 1.0);
        assert!(sample("kreach_store_write_duration_seconds_bucket{le=\"+Inf\"}") >= 1.0);
        for line in [
            "kreach_rollout_info{cluster=\"c\",phase=\"paused\"} 1",
            "kreach_rollout_info{cluster=\"c\",phase=\"running\"} 0",
            "kreach_rollout_generation{cluster=\"c\"} 3",
            "kreach_nodes{cluster=\"c\",state=\"converged\"} 1",
            "kreach_nodes{cluster=\"c\",state=\"offline\"} 0",
            "kreach_agents_connected{cluster=\"c\"} 1",
            "kreach_certificate_expiry_timestamp_seconds{cluster=\"c\",node=\"b1\",listener=\"EXTERNAL\"} 1800000000.0",
            "# TYPE kreach_build_info gauge",
            "kreach_coordinator_leader 1",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn a_follower_says_it_follows_and_reports_no_cluster() {
        let text = render_following();
        assert!(text.contains("kreach_coordinator_leader 0"), "{text}");
        assert!(text.contains("# TYPE kreach_build_info gauge"), "{text}");
        assert!(
            !text.contains("cluster="),
            "the clusters are the leader's to report: {text}"
        );
    }

    #[test]
    fn every_cluster_of_the_coordinator_has_its_series_under_one_family() {
        let status = |cluster: &str, generation: u64| pb::StatusResponse {
            cluster: cluster.into(),
            rollout: Some(pb::RolloutView {
                generation,
                state: "completed".into(),
                ..pb::RolloutView::default()
            }),
            ..pb::StatusResponse::default()
        };
        record_pause("kafka-b", "operator");
        let text = render_all(&[status("kafka-a", 4), status("kafka-b", 1)]);
        for line in [
            "kreach_rollout_generation{cluster=\"kafka-a\"} 4",
            "kreach_rollout_generation{cluster=\"kafka-b\"} 1",
            "kreach_rollout_pauses_total{cluster=\"kafka-b\",cause=\"operator\"} 1",
            "kreach_rollout_pauses_total{cluster=\"kafka-a\",cause=\"operator\"} 0",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        // One HELP and TYPE per family, whatever the number of clusters.
        assert_eq!(text.matches("# TYPE kreach_rollout_generation ").count(), 1);
        assert_eq!(
            text.matches("# TYPE kreach_rollout_pauses_total ").count(),
            1
        );
    }
}
