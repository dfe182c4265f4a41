//! `kreachctl`'s side of the admin API: connecting with the admin certificate, and turning
//! responses into tables for people and JSON for scripts.

use kreach_proto::leader::{is_not_the_leader, leader_of, same_url};
use std::path::PathBuf;
use std::time::Duration;

use kreach_proto as pb;
use pb::admin_service_client::AdminServiceClient;
use serde_json::{json, Value};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the coordinator is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `--coordinator`: one URL, or several separated by commas (the coordinators of a highly
    /// available setup; see [`Connection::admin`]).
    pub url: String,
    /// Directory with `ca.pem`, `admin.pem` and `admin.key` (from `kreachctl certs init`).
    pub certs: PathBuf,
    pub insecure: bool,
    /// `--cluster`: which of the coordinator's clusters (empty: its only one).
    pub cluster: String,
}

/// The metadata key in which a follower coordinator names the leader's URL.
pub use kreach_proto::leader::LEADER_METADATA;

/// How long the leader check of one coordinator may take, once connected.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one of several coordinators was passed over.
struct PassedOver {
    reason: String,
    /// The leader it named (`kreach-leader`), if it is a follower that knows one.
    leader: Option<String>,
}

impl Connection {
    /// The URLs of `--coordinator`, in the order given: split at commas, each trimmed. An empty
    /// entry or one given twice is an error.
    pub fn urls(&self) -> anyhow::Result<Vec<String>> {
        let urls: Vec<String> = self
            .url
            .split(',')
            .map(|url| url.trim().to_string())
            .collect();
        if urls.len() == 1 {
            // One URL is taken as given, as before lists were possible.
            return Ok(vec![self.url.clone()]);
        }
        for (index, url) in urls.iter().enumerate() {
            if url.is_empty() {
                anyhow::bail!(
                    "--coordinator {:?}: entry {} is empty; separate the URLs with single commas",
                    self.url,
                    index + 1
                );
            }
            if urls[..index].contains(url) {
                anyhow::bail!(
                    "--coordinator {:?}: {url} is listed twice; list each coordinator once",
                    self.url
                );
            }
        }
        Ok(urls)
    }

    /// A client of the coordinator that leads. With one URL, that coordinator, as it always was.
    /// With several, they are tried in order: one that refuses the connection, or answers
    /// `UNAVAILABLE` (a follower says `not the leader`), is passed over for the leader it names
    /// in `kreach-leader` when that is one of the list, else for the next one; each URL at most
    /// once. Whether a coordinator leads is asked with one cheap call (`Clusters`), since a
    /// follower accepts connections and answers reads (its answer says `served_by`). When no
    /// coordinator leads but a follower answered, that follower: reads are served from the
    /// store, and what only the leader does is refused saying why. When none answers, the error
    /// names each URL and its reason.
    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        let urls = self.urls()?;
        if let [url] = urls.as_slice() {
            return self.admin_at(url).await;
        }
        // Every URL is checked before any is tried: a typo is an error, not a reason to skip.
        let endpoints = urls
            .iter()
            .map(|url| self.endpoint(url))
            .collect::<anyhow::Result<Vec<Endpoint>>>()?;
        let mut tried = vec![false; urls.len()];
        let mut reasons = Vec::new();
        let mut follower = None;
        let mut index = 0;
        loop {
            tried[index] = true;
            let passed_over = match endpoints[index].connect().await {
                Err(error) => PassedOver {
                    reason: kreach_runtime::tls::explain_transport(
                        kreach_runtime::tls::error_chain(&error),
                    ),
                    leader: None,
                },
                Ok(channel) => {
                    let mut admin = admin_client(channel);
                    match tokio::time::timeout(
                        PROBE_TIMEOUT,
                        admin.clusters(pb::ClustersRequest {}),
                    )
                    .await
                    {
                        Err(_) => PassedOver {
                            reason: format!("no answer within {PROBE_TIMEOUT:?}"),
                            leader: None,
                        },
                        // A follower's refusal, or one dying as it was asked.
                        Ok(Err(status)) if is_lost_connection(&status) => PassedOver {
                            reason: kreach_runtime::tls::with_causes(
                                status.message(),
                                std::error::Error::source(&status),
                            ),
                            leader: leader_of(&status),
                        },
                        Ok(Ok(answer)) if !answer.get_ref().served_by.is_empty() => {
                            let leader = answer
                                .metadata()
                                .get(LEADER_METADATA)
                                .and_then(|value| value.to_str().ok())
                                .map(str::to_string);
                            let reason = format!("answers as {}", answer.get_ref().served_by);
                            follower.get_or_insert(admin);
                            PassedOver { reason, leader }
                        }
                        // It leads; any other refusal is the command's to report.
                        Ok(_) => return Ok(admin),
                    }
                }
            };
            reasons.push(format!("{}: {}", urls[index], passed_over.reason));
            let leader = passed_over
                .leader
                .and_then(|leader| urls.iter().position(|url| same_url(url, &leader)))
                .filter(|&leader| !tried[leader]);
            let next = leader.or_else(|| {
                (1..urls.len())
                    .map(|step| (index + step) % urls.len())
                    .find(|&candidate| !tried[candidate])
            });
            match (next, follower) {
                (Some(next), unused) => {
                    index = next;
                    follower = unused;
                }
                (None, Some(follower)) => return Ok(follower),
                (None, None) => anyhow::bail!("no coordinator answered: {}", reasons.join("; ")),
            }
        }
    }

    /// The endpoint of one coordinator, with this connection's TLS settings.
    fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let uri: tonic::transport::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--coordinator {url:?} is not a URL: {e}"))?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut endpoint = Endpoint::from(uri.clone()).connect_timeout(Duration::from_secs(5));
        if self.insecure {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                anyhow::bail!("--insecure is allowed only for a coordinator on a loopback address, not {host}");
            }
        } else {
            let files = kreach_runtime::tls::load_tls_files(
                &self.certs.join(kreach_runtime::tls::CA_CERT_FILE),
                &self.certs.join(kreach_runtime::tls::ADMIN_CERT_FILE),
                &self.certs.join(kreach_runtime::tls::ADMIN_KEY_FILE),
            )?;
            endpoint = endpoint.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&files.ca_pem))
                    .identity(Identity::from_pem(&files.cert_pem, &files.key_pem))
                    .domain_name(host.clone()),
            )?;
        }
        Ok(endpoint)
    }

    /// The one coordinator at `url`, with the errors kreachctl has always given.
    async fn admin_at(&self, url: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
        let channel = self.endpoint(url)?.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the coordinator at {}: {}",
                url,
                kreach_runtime::tls::explain_transport(kreach_runtime::tls::error_chain(&e))
            )
        })?;
        Ok(admin_client(channel))
    }
}

fn admin_client(channel: Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel).max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
}

/// Whether `status` ended a call because the coordinator went away or stopped serving it (its
/// connection broke, it stopped, it no longer leads), rather than refused what was asked: a
/// coordinator killed mid-call ends it with a transport error (`Unknown`, the transport's error
/// as its source), one stopping or deposed with `Unavailable` or `Cancelled`.
pub fn is_lost_connection(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => true,
        tonic::Code::Unknown | tonic::Code::Internal => {
            std::error::Error::source(status).is_some()
                || status.message().contains("h2 protocol error")
        }
        _ => false,
    }
}

/// A gRPC error as an operator reads it.
pub fn status_message(status: &tonic::Status) -> String {
    let message =
        kreach_runtime::tls::with_causes(status.message(), std::error::Error::source(status));
    if kreach_runtime::tls::handshake_hint(&message).is_some() {
        return kreach_runtime::tls::explain_transport(message);
    }
    let hint = match status.code() {
        tonic::Code::Unavailable if leader_of(status).is_some() => {
            " (list every coordinator in --coordinator, comma-separated, and kreachctl goes to the leader)"
        }
        tonic::Code::Unavailable if is_not_the_leader(status) => {
            " (nothing can be changed until a coordinator leads again; status, history and nodes still answer)"
        }
        tonic::Code::Unavailable => " (is kreach-coordinator running, and is --coordinator right?)",
        // With TLS 1.3 a refused client certificate shows up only as a closed connection.
        tonic::Code::Cancelled => {
            " (the coordinator closed the connection: is --certs the admin certificate from the coordinator's own CA?)"
        }
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            " (kreachctl needs the admin certificate: --certs DIR with ca.pem, admin.pem, admin.key)"
        }
        _ => "",
    };
    format!("{message}{hint}")
}

/// A release as people count: `gen 2 step 1 try 1` (steps from 1, as in the plan and the rollout
/// headline; `try` is the attempt, 2 after a resume).
fn release_text(release: &Option<pb::ReleaseId>) -> String {
    match release {
        Some(id) => format!(
            "gen {} step {} try {}",
            id.generation,
            id.step + 1,
            id.attempt
        ),
        None => "-".to_string(),
    }
}

fn phase_text(phase: i32) -> &'static str {
    match pb::Phase::try_from(phase).unwrap_or(pb::Phase::Unspecified) {
        pb::Phase::Unspecified => "-",
        pb::Phase::Idle => "idle",
        pb::Phase::Applying => "applying",
        pb::Phase::Converged => "converged",
        pb::Phase::RolledBack => "rolled-back",
        pb::Phase::Failed => "failed",
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (index, cell) in cells.iter().enumerate() {
            if index + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[index]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

pub fn steps_text(steps: &[pb::PlannedStep]) -> String {
    if steps.is_empty() {
        return "no steps: nothing to change\n".to_string();
    }
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|step| {
            vec![
                (step.index + 1).to_string(),
                step.kind.clone(),
                if step.restarts { "yes" } else { "no" }.to_string(),
                step.nodes.join(", "),
            ]
        })
        .collect();
    table(&["STEP", "KIND", "RESTARTS", "NODES"], &rows)
}

pub fn plan_text(plan: &pb::PlanResponse) -> String {
    let mut out = String::new();
    for node in &plan.nodes {
        out.push_str(&node_plan_text(node, plan.from_generation));
    }
    out.push_str(&format!(
        "\nrollout from generation {}:\n",
        plan.from_generation
    ));
    out.push_str(&steps_text(&plan.steps));
    for warning in &plan.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    for note in &plan.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// The diff a plan shows for `node`: against its host's files when its agent answered, else the
/// generation diff.
fn shown_diff(node: &pb::NodeDiff) -> &str {
    if node.source == "host" {
        &node.host_diff
    } else {
        &node.diff
    }
}

/// One node of a plan: a header saying what happens to it, whether it was checked against the
/// host's files (and if not, why, with the generation diff labelled as such), then the diff.
fn node_plan_text(node: &pb::NodeDiff, from_generation: u64) -> String {
    let checked = node.source == "host";
    let diff = shown_diff(node);
    let mut out = if node.dropped {
        format!(
            "- {} ({}): removed from the spec: its kreach hosts block is removed in the contract phase{}\n",
            node.node,
            node.role,
            if node.role.starts_with("broker") {
                "; its server.properties and Kafka are left as they are (no restart)"
            } else {
                ""
            }
        )
    } else if diff.is_empty() {
        format!(
            "= {} ({}): unchanged{}\n",
            node.node,
            node.role,
            if checked { " on the host" } else { "" }
        )
    } else {
        format!(
            "~ {} ({}){}\n",
            node.node,
            node.role,
            if node.restart { ": restarts Kafka" } else { "" }
        )
    };
    if checked {
        if !node.restart_reason.is_empty() {
            out.push_str(&format!("  restart {}\n", node.restart_reason));
        }
    } else {
        out.push_str(&format!(
            "  NOT CHECKED against the host ({}): {}\n",
            node.not_checked,
            if diff.is_empty() {
                format!("unchanged from generation {from_generation}, but its files may differ")
            } else {
                format!(
                    "the diff below is generation {from_generation} → {}, not the host's files",
                    from_generation + 1
                )
            }
        ));
    }
    out.push_str(diff);
    if !diff.is_empty() && !diff.ends_with('\n') {
        out.push('\n');
    }
    for conflict in &node.conflicts {
        out.push_str(&format!("  conflict: {conflict}\n"));
    }
    out
}

pub fn plan_json(plan: &pb::PlanResponse) -> Value {
    json!({
        "from_generation": plan.from_generation,
        "nodes": plan.nodes.iter().map(|n| json!({
            "node": n.node,
            "role": n.role,
            // "host": checked against the host's files now; "generation": not (see not_checked).
            "source": n.source,
            "not_checked": (!n.not_checked.is_empty()).then_some(&n.not_checked),
            "diff": shown_diff(n),
            "host_diff": (n.source == "host").then_some(&n.host_diff),
            "generation_diff": n.diff,
            "restart": n.restart,
            "restart_reason": n.restart_reason,
            "conflicts": n.conflicts,
            "dropped": n.dropped,
        })).collect::<Vec<_>>(),
        "dropped": plan.nodes.iter().filter(|n| n.dropped).map(|n| n.node.as_str()).collect::<Vec<_>>(),
        "steps": steps_json(&plan.steps),
        "warnings": plan.warnings,
        "notes": plan.notes,
    })
}

fn steps_json(steps: &[pb::PlannedStep]) -> Value {
    Value::Array(
        steps
            .iter()
            .map(|s| json!({"index": s.index, "kind": s.kind, "restarts": s.restarts, "nodes": s.nodes}))
            .collect(),
    )
}

/// The rollout's one-line headline: `rollout: generation 2 running (step 2 of 4)`, with where and
/// why it paused.
pub fn rollout_line(rollout: &pb::RolloutView) -> String {
    let mut out = format!(
        "rollout: generation {} {} (step {} of {})",
        rollout.generation,
        rollout.state,
        (rollout.current_step + 1).min(rollout.total_steps),
        rollout.total_steps
    );
    if rollout.state == "paused" {
        let node = if rollout.paused_node.is_empty() {
            "operator"
        } else {
            rollout.paused_node.as_str()
        };
        out.push_str(&format!(" at {node}: {}", rollout.paused_reason));
    }
    out
}

/// `step 2 of 4 (brokers): 1 of 3 node(s) converged, 41 s` — the progress line of a terminal's
/// `apply --wait` / `status --watch`.
pub fn progress_line(rollout: &pb::RolloutView, elapsed: std::time::Duration) -> String {
    let step = (rollout.current_step + 1).min(rollout.total_steps);
    let kind = rollout
        .steps
        .iter()
        .find(|planned| planned.index == rollout.current_step)
        .map(|planned| format!(" ({})", planned.kind))
        .unwrap_or_default();
    format!(
        "step {step} of {}{kind}: {} of {} node(s) converged, {} s",
        rollout.total_steps,
        (rollout.step_nodes as usize).saturating_sub(rollout.waiting.len()),
        rollout.step_nodes,
        elapsed.as_secs()
    )
}

/// What changed between two statuses, one line per event, for `apply --wait` and `status
/// --watch` without a terminal: the rollout's headline when it changes, each node whose phase or
/// applied release changes, and host problems as they appear. Pure.
pub fn status_events(
    previous: Option<&pb::StatusResponse>,
    now: &pb::StatusResponse,
) -> Vec<String> {
    let mut events = Vec::new();
    let headline = |status: &pb::StatusResponse| status.rollout.as_ref().map(rollout_line);
    if previous.and_then(headline) != headline(now) {
        if let Some(line) = headline(now) {
            events.push(line);
        }
    }
    let node_state = |node: &pb::NodeView| {
        node.status.as_ref().map(|status| {
            let applied = status
                .release
                .as_ref()
                .map(|id| format!(", generation {} step {}", id.generation, id.step + 1))
                .unwrap_or_default();
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", status.reason)
            };
            format!("{}{applied}{reason}", phase_text(status.phase))
        })
    };
    for node in &now.nodes {
        let before = previous
            .and_then(|previous| previous.nodes.iter().find(|n| n.node == node.node))
            .and_then(node_state);
        let after = node_state(node);
        if after.is_some() && after != before {
            events.push(format!(
                "  {} ({}): {}",
                node.node,
                node.role,
                after.unwrap_or_default()
            ));
        }
        let was_online = previous
            .and_then(|previous| previous.nodes.iter().find(|n| n.node == node.node))
            .is_none_or(|n| n.online);
        if was_online && !node.online && !now.liveness_unknown {
            events.push(format!("  {} ({}): agent OFFLINE", node.node, node.role));
        }
    }
    let known: Vec<String> = previous
        .map(|p| host_problems(&p.nodes))
        .unwrap_or_default();
    for problem in host_problems(&now.nodes) {
        if !known.contains(&problem) {
            events.push(format!("  ✗ {problem}"));
        }
    }
    events
}

/// The properties a Kafka client needs for `config`, with librdkafka's names or (`java`) the
/// Java client's. SASL credentials are left as placeholders: kreach never holds a password.
pub fn client_properties(config: &pb::ClientConfigResponse, java: bool) -> Vec<(String, String)> {
    let mut properties = vec![
        ("bootstrap.servers".to_string(), config.bootstrap.join(",")),
        (
            "security.protocol".to_string(),
            config.security_protocol.to_lowercase(),
        ),
    ];
    let tls = matches!(config.security_protocol.as_str(), "SSL" | "SASL_SSL");
    if tls {
        if java {
            properties.push(("ssl.truststore.type".into(), "PEM".into()));
            properties.push(("ssl.truststore.location".into(), config.ca_path.clone()));
        } else {
            properties.push(("ssl.ca.location".into(), config.ca_path.clone()));
        }
        properties.push((
            "ssl.endpoint.identification.algorithm".into(),
            "https".into(),
        ));
    }
    if !config.sasl_mechanism.is_empty() {
        properties.push(("sasl.mechanism".into(), config.sasl_mechanism.clone()));
        if java {
            properties.push((
                "sasl.jaas.config".into(),
                "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"USER\" password=\"PASSWORD\";".into(),
            ));
        } else {
            properties.push(("sasl.username".into(), "USER".into()));
            properties.push(("sasl.password".into(), "PASSWORD".into()));
        }
    }
    if java {
        // The Java client spells the protocol in upper case.
        properties[1].1 = config.security_protocol.clone();
    }
    properties
}

/// A follower's answer says so (several coordinators on etcd): the line kreachctl prints on
/// standard error for it. None from the coordinator that leads.
pub fn served_by_note(served_by: &str, liveness_unknown: bool) -> Option<String> {
    if served_by.is_empty() {
        return None;
    }
    let mut note = format!("kreachctl: answered by {served_by}");
    if liveness_unknown {
        note.push_str(UNKNOWN_LIVENESS);
    }
    Some(note)
}

const UNKNOWN_LIVENESS: &str =
    "; the agents' connections are unknown while no coordinator leads (AGENT \"unknown\")";

/// The AGENT column: whether the agent is connected, or `unknown` (see `liveness_unknown`).
fn agent_text(online: bool, unknown: bool) -> &'static str {
    match (unknown, online) {
        (true, _) => "unknown",
        (false, true) => "online",
        (false, false) => "OFFLINE",
    }
}

/// `online` in JSON: null when unknown.
fn online_json(online: bool, unknown: bool) -> Value {
    if unknown {
        Value::Null
    } else {
        Value::Bool(online)
    }
}

pub fn status_text(status: &pb::StatusResponse) -> String {
    let mut out = String::new();
    if !status.served_by.is_empty() {
        out.push_str(&format!("answered by {}", status.served_by));
        if status.liveness_unknown {
            out.push_str(UNKNOWN_LIVENESS);
        }
        out.push_str(
            "\n(the hosts' health goes to the leader alone: a follower does not show it)\n",
        );
    }
    // Which of the coordinator's clusters this is (it may hold several).
    if !status.cluster.is_empty() {
        out.push_str(&format!("cluster: {}\n", status.cluster));
    }
    match &status.rollout {
        Some(rollout) => {
            out.push_str(&rollout_line(rollout));
            out.push('\n');
            if !rollout.waiting.is_empty() && rollout.state != "completed" {
                let offline: Vec<&str> = status
                    .nodes
                    .iter()
                    .filter(|node| !node.online && !status.liveness_unknown)
                    .map(|node| node.node.as_str())
                    .collect();
                let waiting: Vec<String> = rollout
                    .waiting
                    .iter()
                    .map(|node| {
                        if offline.contains(&node.as_str()) {
                            format!("{node} (agent OFFLINE)")
                        } else {
                            node.clone()
                        }
                    })
                    .collect();
                out.push_str(&format!(
                    "step progress: {} of {} node(s) converged; waiting for {}\n",
                    rollout.step_nodes as usize - rollout.waiting.len(),
                    rollout.step_nodes,
                    waiting.join(", ")
                ));
            }
        }
        None => out.push_str("rollout: none (no spec applied yet)\n"),
    }
    if let Some(rollout) = &status.rollout {
        for skipped in &rollout.skipped {
            out.push_str(&format!("skipped {skipped}\n"));
        }
    }
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|node| {
            let reported = node.status.as_ref();
            vec![
                node.node.clone(),
                node.role.clone(),
                agent_text(node.online, status.liveness_unknown).to_string(),
                release_text(&node.released),
                reported
                    .map(|s| release_text(&s.release))
                    .unwrap_or_else(|| "-".into()),
                reported
                    .map(|s| phase_text(s.phase))
                    .unwrap_or("-")
                    .to_string(),
                reported.map(health_text).unwrap_or_else(|| "-".into()),
                reported
                    .map(|s| s.reason.clone())
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "ROLE",
            "AGENT",
            "RELEASED",
            "APPLIED",
            "PHASE",
            "HEALTH",
            "LAST ERROR",
        ],
        &rows,
    ));
    out.push_str(&host_text(&status.nodes));
    out.push_str(&certificates_text(&status.certificates));
    out.push_str(&reachability_text(&status.reachability));
    out
}

/// What each agent knows of its host between releases: the EXTERNAL filter, drift repairs, and
/// the problems `check` fails on (marked ✗). Empty when no agent reported.
pub fn host_text(nodes: &[pb::NodeView]) -> String {
    let reported: Vec<(&str, &pb::AgentHealth)> = nodes
        .iter()
        .filter_map(|node| Some((node.node.as_str(), node.health.as_ref()?)))
        .collect();
    if reported.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "
hosts (as each agent last reported):
",
    );
    for (node, health) in reported {
        let repairs = match health.repairs {
            0 => "no drift repaired".to_string(),
            n => format!(
                "{n} drift repair(s), the last at {}",
                format_ms(health.last_repair_ms)
            ),
        };
        let firewall = if health.firewall.is_empty() {
            String::new()
        } else {
            format!("firewall {}; ", health.firewall)
        };
        out.push_str(&format!(
            "  {node}: {firewall}{repairs}
"
        ));
    }
    for problem in host_problems(nodes) {
        out.push_str(&format!(
            "  ✗ {problem}
"
        ));
    }
    out
}

/// Every problem an agent reports on its host, as a line an operator can act on: hosts lines that
/// shadow kreach's entries, managed files it cannot enforce, a filter it cannot put in place.
/// `check` fails on any. Pure.
/// The brokers' TLS certificates: expiry and what each covers; a ✗ line for each problem.
pub fn certificates_text(certificates: &[pb::CertificateView]) -> String {
    if certificates.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nTLS certificates (kreach-issued, per broker listener):\n");
    for cert in certificates {
        out.push_str(&format!(
            "  {} {}: serial {}, valid until {}, covers {}{}\n",
            cert.node,
            cert.listener,
            cert.serial,
            format_ms(cert.not_after_ms),
            cert.sans.join(", "),
            if cert.state == "ok" {
                String::new()
            } else {
                format!(" — {}", cert.state)
            }
        ));
    }
    for problem in certificate_problems(certificates) {
        out.push_str(&format!("  ✗ {problem}\n"));
    }
    out
}

/// Certificates that need attention: expired, or due for renewal (the coordinator renews them by
/// itself after a completed rollout; one still due means the newest rollout did not complete).
pub fn certificate_problems(certificates: &[pb::CertificateView]) -> Vec<String> {
    certificates
        .iter()
        .filter(|cert| cert.state != "ok")
        .map(|cert| {
            format!(
                "{} {}: certificate {} {} ({}); the coordinator renews it once the newest rollout has completed (see `kreachctl status`)",
                cert.node,
                cert.listener,
                cert.serial,
                cert.state,
                format_ms(cert.not_after_ms)
            )
        })
        .collect()
}

pub fn host_problems(nodes: &[pb::NodeView]) -> Vec<String> {
    let mut problems = Vec::new();
    for node in nodes {
        let Some(health) = &node.health else { continue };
        for conflict in &health.conflicts {
            problems.push(format!("{}: conflict: {conflict}", node.node));
        }
        if !health.enforce_error.is_empty() {
            problems.push(format!(
                "{}: cannot enforce its managed files: {}",
                node.node, health.enforce_error
            ));
        }
        if health.firewall.starts_with("error") {
            problems.push(format!("{}: firewall {}", node.node, health.firewall));
        }
        for dynamic in &health.dynamic_overrides {
            problems.push(format!("{}: dynamic override: {dynamic}", node.node));
        }
    }
    problems
}

/// The reachability matrix, client × broker: ✓ or the short reason; then one line per failure
/// with its detail. Empty when the spec has no clients.
pub fn reachability_text(rows: &[pb::ReachabilityRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut brokers: Vec<i32> = rows
        .iter()
        .flat_map(|row| row.brokers.iter().map(|cell| cell.broker_id))
        .collect();
    brokers.sort_unstable();
    brokers.dedup();
    let header: Vec<String> = ["CLIENT".to_string(), "VIEW".to_string()]
        .into_iter()
        .chain(brokers.iter().map(|id| format!("BROKER {id}")))
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut line = vec![row.client.clone(), row.view.clone()];
            for id in &brokers {
                line.push(
                    match row.brokers.iter().find(|cell| cell.broker_id == *id) {
                        Some(cell) if cell.ok => "✓".to_string(),
                        Some(cell) => cell.reason.clone(),
                        None => "-".to_string(),
                    },
                );
            }
            line
        })
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut out = String::from("\nreachability (client × broker):\n");
    out.push_str(&table(&header_refs, &cells));
    let failures = check_failures(rows);
    for failure in &failures {
        out.push_str(&format!("  ✗ {failure}\n"));
    }
    out
}

/// Every client × broker pair that is not reachable, as a line an operator can act on. Empty ⇒
/// every client reaches every broker it should. Pure.
pub fn check_failures(rows: &[pb::ReachabilityRow]) -> Vec<String> {
    let mut failures = Vec::new();
    for row in rows {
        for cell in row.brokers.iter().filter(|cell| !cell.ok) {
            failures.push(format!(
                "{} ({} view) → broker {} at {}: {}: {}",
                row.client, row.view, cell.broker_id, cell.endpoint, cell.reason, cell.detail
            ));
        }
    }
    failures
}

fn reachability_json(rows: &[pb::ReachabilityRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| {
                json!({
                    "client": row.client,
                    "view": row.view,
                    "reported": row.reported,
                    "current": row.current,
                    "brokers": row.brokers.iter().map(|cell| json!({
                        "broker_id": cell.broker_id,
                        "endpoint": cell.endpoint,
                        "ok": cell.ok,
                        "reason": cell.reason,
                        "detail": cell.detail,
                        "checked_at_ms": cell.checked_at_ms,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// `kreachctl check --output json`: whether every client reaches every broker and no host
/// reports a problem, and what fails.
pub fn check_json(status: &pb::StatusResponse) -> Value {
    let failures = check_failures(&status.reachability);
    let mut problems = host_problems(&status.nodes);
    problems.extend(certificate_problems(&status.certificates));
    json!({
        "ok": failures.is_empty() && problems.is_empty(),
        "failures": failures,
        "host_problems": problems,
        "reachability": reachability_json(&status.reachability),
    })
}

/// A node's health as its agent last reported it: the checks of its last apply (listeners,
/// advertised endpoints, under-replicated partitions, ...), or what its phase implies.
fn health_text(status: &pb::NodeStatus) -> String {
    let failing: Vec<&str> = status
        .checks
        .iter()
        .filter(|check| !check.ok)
        .map(|check| check.name.as_str())
        .collect();
    if !failing.is_empty() {
        return format!("FAILING: {}", failing.join(", "));
    }
    let phase = pb::Phase::try_from(status.phase).unwrap_or(pb::Phase::Unspecified);
    match phase {
        pb::Phase::RolledBack | pb::Phase::Failed => "unhealthy".to_string(),
        pb::Phase::Converged if !status.checks.is_empty() => {
            format!("ok ({} checks)", status.checks.len())
        }
        pb::Phase::Converged => "ok".to_string(),
        _ => "-".to_string(),
    }
}

pub fn status_json(status: &pb::StatusResponse) -> Value {
    let release = |id: &Option<pb::ReleaseId>| {
        id.as_ref()
            .map(|id| json!({"generation": id.generation, "step": id.step, "attempt": id.attempt}))
            .unwrap_or(Value::Null)
    };
    json!({
        "cluster": status.cluster,
        "served_by": status.served_by,
        "liveness_unknown": status.liveness_unknown,
        "rollout": status.rollout.as_ref().map(|r| json!({
            "generation": r.generation,
            "state": r.state,
            "current_step": r.current_step,
            "total_steps": r.total_steps,
            "paused_node": r.paused_node,
            "paused_reason": r.paused_reason,
            "steps": steps_json(&r.steps),
            "waiting": r.waiting,
            "step_nodes": r.step_nodes,
            "skipped": r.skipped,
        })),
        "nodes": status.nodes.iter().map(|n| json!({
            "node": n.node,
            "role": n.role,
            "online": online_json(n.online, status.liveness_unknown),
            "released": release(&n.released),
            "applied": n.status.as_ref().map(|s| release(&s.release)).unwrap_or(Value::Null),
            "phase": n.status.as_ref().map(|s| phase_text(s.phase)).unwrap_or("-"),
            "reason": n.status.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
            "health": n.status.as_ref().map(health_text).unwrap_or_else(|| "-".into()),
            "checks": n.status.as_ref().map(|s| s.checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>()).unwrap_or_default(),
            "restart_started_ms": n.status.as_ref().map(|s| s.restart_started_ms).unwrap_or(0),
            "restart_finished_ms": n.status.as_ref().map(|s| s.restart_finished_ms).unwrap_or(0),
            "host": n.health.as_ref().map(|h| json!({
                "conflicts": h.conflicts,
                "repairs": h.repairs,
                "last_repair_ms": h.last_repair_ms,
                "enforce_error": h.enforce_error,
                "firewall": h.firewall,
            })).unwrap_or(Value::Null),
        })).collect::<Vec<_>>(),
        "host_problems": host_problems(&status.nodes),
        "reachability": reachability_json(&status.reachability),
    })
}

pub fn history_text(history: &pb::HistoryResponse) -> String {
    let rows: Vec<Vec<String>> = history
        .generations
        .iter()
        .map(|g| {
            vec![
                g.generation.to_string(),
                format_ms(g.applied_at_ms),
                g.outcome.clone(),
                g.summary.clone(),
            ]
        })
        .collect();
    table(&["GEN", "APPLIED (UTC)", "OUTCOME", "SUMMARY"], &rows)
}

pub fn history_json(history: &pb::HistoryResponse) -> Value {
    Value::Array(
        history
            .generations
            .iter()
            .map(|g| json!({"generation": g.generation, "applied_at_ms": g.applied_at_ms, "outcome": g.outcome, "summary": g.summary, "rollback_of": g.rollback_of}))
            .collect(),
    )
}

/// A node's changes (its agent's audit trail), one row each.
pub fn changes_text(node: &str, changes: &[pb::AuditRecord]) -> String {
    if changes.is_empty() {
        return format!("no changes reported by node {node}\n");
    }
    let short = |hash: &str| {
        if hash.is_empty() {
            "(none)".to_string()
        } else {
            hash.chars().take(12).collect()
        }
    };
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                format_ms(c.at_ms),
                c.generation.to_string(),
                c.action.clone(),
                c.path.clone(),
                format!("{} -> {}", short(&c.old_hash), short(&c.new_hash)),
                c.reason.clone(),
                c.released_by.clone(),
            ]
        })
        .collect();
    table(
        &[
            "AT (UTC)",
            "GEN",
            "ACTION",
            "FILE",
            "SHA256 BEFORE -> AFTER",
            "REASON",
            "RELEASED BY",
        ],
        &rows,
    )
}

pub fn changes_json(changes: &[pb::AuditRecord]) -> Value {
    Value::Array(
        changes
            .iter()
            .map(|c| {
                json!({"node": c.node, "seq": c.seq, "at_ms": c.at_ms, "file": c.file, "path": c.path,
                       "action": c.action, "old_hash": c.old_hash, "new_hash": c.new_hash,
                       "reason": c.reason, "generation": c.generation, "released_by": c.released_by})
            })
            .collect(),
    )
}

pub fn nodes_text(nodes: &pb::NodesResponse) -> String {
    let rows: Vec<Vec<String>> = nodes
        .nodes
        .iter()
        .zip(nodes.online.iter().chain(std::iter::repeat(&false)))
        .map(|(facts, online)| {
            vec![
                facts.node.clone(),
                agent_text(*online, nodes.liveness_unknown).to_string(),
                facts.hostname.clone(),
                facts.fqdn.clone(),
                facts.addresses.join(","),
                if facts.kafka_running { "running" } else { "-" }.to_string(),
                if facts.kafka_controller { "yes" } else { "-" }.to_string(),
                labels_text(&facts.labels),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "AGENT",
            "HOSTNAME",
            "FQDN",
            "ADDRESSES",
            "KAFKA",
            "CONTROLLER",
            "LABELS",
        ],
        &rows,
    )
}

/// `cluster=spark-prod,role=task`, or `-` for none.
fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    labels
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `kreachctl clusters`: one row per cluster.
pub fn clusters_text(response: &pb::ClustersResponse) -> String {
    if response.clusters.is_empty() {
        return "no cluster yet: no spec has been applied to this coordinator\n".to_string();
    }
    let rows: Vec<Vec<String>> = response
        .clusters
        .iter()
        .map(|cluster| {
            let rollout = if cluster.state == "paused" {
                format!("paused at {}", cluster.paused_node)
            } else {
                cluster.state.clone()
            };
            vec![
                cluster.name.clone(),
                cluster.generation.to_string(),
                rollout,
                cluster.nodes.to_string(),
                if response.liveness_unknown {
                    "unknown".to_string()
                } else {
                    cluster.online.to_string()
                },
            ]
        })
        .collect();
    table(
        &["CLUSTER", "GENERATION", "ROLLOUT", "NODES", "ONLINE"],
        &rows,
    )
}

pub fn clusters_json(response: &pb::ClustersResponse) -> Value {
    Value::Array(
        response
            .clusters
            .iter()
            .map(|c| json!({"cluster": c.name, "generation": c.generation, "state": c.state, "nodes": c.nodes, "online": if response.liveness_unknown { Value::Null } else { json!(c.online) }, "paused_node": c.paused_node, "paused_reason": c.paused_reason}))
            .collect(),
    )
}

pub fn nodes_json(nodes: &pb::NodesResponse) -> Value {
    Value::Array(
        nodes
            .nodes
            .iter()
            .zip(nodes.online.iter().chain(std::iter::repeat(&false)))
            .map(|(f, online)| json!({"node": f.node, "online": online_json(*online, nodes.liveness_unknown), "hostname": f.hostname, "fqdn": f.fqdn, "addresses": f.addresses, "kafka_running": f.kafka_running, "kafka_controller": f.kafka_controller, "agent_version": f.agent_version, "labels": f.labels}))
            .collect(),
    )
}

/// `2026-11-25 16:36:11` from unix milliseconds (UTC), without a date crate.
pub fn format_ms(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's published algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_ms(1_795_624_571_000), "2026-11-25 16:36:11");
    }

    fn cell(id: i32, reason: &str) -> pb::Reachability {
        pb::Reachability {
            broker_id: id,
            endpoint: format!("b{id}.c:9093"),
            ok: reason.is_empty(),
            reason: reason.to_string(),
            checked_at_ms: 1,
            detail: if reason.is_empty() {
                "fine".into()
            } else {
                format!("why {id}")
            },
        }
    }

    fn rows() -> Vec<pb::ReachabilityRow> {
        vec![
            pb::ReachabilityRow {
                client: "etl-1".into(),
                view: "private".into(),
                brokers: vec![cell(1, ""), cell(2, "")],
                reported: true,
                current: true,
            },
            pb::ReachabilityRow {
                client: "laptop-2".into(),
                view: "public".into(),
                brokers: vec![cell(1, "timed out"), cell(2, "")],
                reported: true,
                current: true,
            },
        ]
    }

    #[test]
    fn the_matrix_shows_a_tick_or_the_reason_and_lists_failures() {
        let text = reachability_text(&rows());
        assert_eq!(
            text,
            "\nreachability (client × broker):\n\
             CLIENT    VIEW     BROKER 1   BROKER 2\n\
             etl-1     private  ✓          ✓\n\
             laptop-2  public   timed out  ✓\n  \
             ✗ laptop-2 (public view) → broker 1 at b1.c:9093: timed out: why 1\n"
        );
        assert_eq!(reachability_text(&[]), "", "no clients, no matrix");
    }

    #[test]
    fn check_passes_only_when_every_cell_is_reachable_and_no_host_has_a_problem() {
        let mut status = pb::StatusResponse {
            reachability: rows(),
            ..Default::default()
        };
        assert_eq!(check_failures(&status.reachability).len(), 1);
        assert_eq!(check_json(&status)["ok"], false);
        status.reachability[1].brokers[0] = cell(1, "");
        assert!(check_failures(&status.reachability).is_empty());
        assert_eq!(check_json(&status)["ok"], true);
        assert_eq!(
            check_json(&status)["reachability"][1]["brokers"][0]["ok"],
            true
        );
        // A hosts line shadowing kreach's entries on a client fails the check, and says where.
        status.nodes.push(pb::NodeView {
            node: "etl-1".into(),
            health: Some(pb::AgentHealth {
                node: "etl-1".into(),
                conflicts: vec!["line 3 maps b1.c to 10.9.9.9".into()],
                firewall: "not managed".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(check_json(&status)["ok"], false);
        assert_eq!(
            host_problems(&status.nodes),
            ["etl-1: conflict: line 3 maps b1.c to 10.9.9.9"]
        );
        assert_eq!(
            host_text(&status.nodes),
            "\nhosts (as each agent last reported):\n  etl-1: firewall not managed; no drift repaired\n  \
             ✗ etl-1: conflict: line 3 maps b1.c to 10.9.9.9\n"
        );
    }

    #[test]
    fn a_plan_says_per_node_whether_it_was_checked_on_the_host_and_what_dropping_does() {
        let plan = pb::PlanResponse {
            from_generation: 4,
            nodes: vec![
                pb::NodeDiff {
                    node: "w1".into(),
                    role: "broker 1".into(),
                    diff: "+generation line\n".into(),
                    host_diff: "-listeners=PLAINTEXT://:9092\n".into(),
                    source: "host".into(),
                    restart: true,
                    restart_reason: "kafka.service: listeners changed".into(),
                    ..Default::default()
                },
                pb::NodeDiff {
                    node: "w3".into(),
                    role: "broker 3".into(),
                    diff: "-old block\n".into(),
                    source: "generation".into(),
                    not_checked: "its agent never connected".into(),
                    dropped: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = plan_text(&plan);
        let expected = [
            "~ w1 (broker 1): restarts Kafka",
            "  restart kafka.service: listeners changed",
            "-listeners=PLAINTEXT://:9092",
            "- w3 (broker 3): removed from the spec: its kreach hosts block is removed in the contract phase; its server.properties and Kafka are left as they are (no restart)",
            "  NOT CHECKED against the host (its agent never connected): the diff below is generation 4 → 5, not the host's files",
            "-old block",
        ];
        assert_eq!(text.lines().take(6).collect::<Vec<_>>(), expected, "{text}");
        let json = plan_json(&plan);
        assert_eq!(json["dropped"], json!(["w3"]));
        assert_eq!(json["nodes"][0]["diff"], "-listeners=PLAINTEXT://:9092\n");
        assert_eq!(json["nodes"][0]["generation_diff"], "+generation line\n");
        assert_eq!(json["nodes"][1]["source"], "generation");
        assert_eq!(json["nodes"][1]["host_diff"], Value::Null);
        assert_eq!(json["nodes"][1]["not_checked"], "its agent never connected");
    }

    #[test]
    fn without_a_terminal_each_event_is_one_line_and_nothing_repeats() {
        let rollout = |state: &str, step: u32, waiting: &[&str]| pb::RolloutView {
            generation: 2,
            state: state.into(),
            current_step: step,
            total_steps: 2,
            waiting: waiting.iter().map(|n| n.to_string()).collect(),
            step_nodes: 1,
            ..Default::default()
        };
        let node = |phase: pb::Phase| pb::NodeView {
            node: "w1".into(),
            role: "broker".into(),
            online: true,
            status: Some(pb::NodeStatus {
                node: "w1".into(),
                phase: phase as i32,
                release: Some(pb::ReleaseId {
                    generation: 2,
                    step: 0,
                    attempt: 1,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let first = pb::StatusResponse {
            rollout: Some(rollout("running", 0, &["w1"])),
            nodes: vec![node(pb::Phase::Applying)],
            ..Default::default()
        };
        assert_eq!(
            status_events(None, &first),
            [
                "rollout: generation 2 running (step 1 of 2)",
                "  w1 (broker): applying, generation 2 step 1"
            ]
        );
        assert!(
            status_events(Some(&first), &first).is_empty(),
            "nothing new, nothing printed"
        );
        let converged = pb::StatusResponse {
            rollout: Some(rollout("running", 1, &[])),
            nodes: vec![node(pb::Phase::Converged)],
            ..Default::default()
        };
        assert_eq!(
            status_events(Some(&first), &converged),
            [
                "rollout: generation 2 running (step 2 of 2)",
                "  w1 (broker): converged, generation 2 step 1"
            ]
        );
        assert_eq!(
            progress_line(
                &rollout("running", 0, &["w1"]),
                std::time::Duration::from_secs(41)
            ),
            "step 1 of 2: 0 of 1 node(s) converged, 41 s"
        );
    }

    #[test]
    fn clusters_are_one_row_each_and_a_paused_one_says_where() {
        let summary = |name: &str, state: &str, paused: &str| pb::ClusterSummary {
            name: name.into(),
            generation: 4,
            state: state.into(),
            nodes: 250,
            online: 249,
            paused_node: paused.into(),
            paused_reason: String::new(),
        };
        let mut response = pb::ClustersResponse {
            clusters: vec![
                summary("kafka-a", "completed", ""),
                summary("kafka-b", "paused", "b-2"),
            ],
            ..Default::default()
        };
        assert_eq!(
            clusters_text(&response),
            "CLUSTER  GENERATION  ROLLOUT        NODES  ONLINE\n\
             kafka-a  4           completed      250    249\n\
             kafka-b  4           paused at b-2  250    249\n"
        );
        assert_eq!(clusters_json(&response)[1]["paused_node"], "b-2");
        // From a follower while no coordinator leads: nobody knows who is connected.
        response.served_by = "a follower, from the etcd store; no coordinator leads (x)".into();
        response.liveness_unknown = true;
        assert_eq!(
            clusters_text(&response),
            "CLUSTER  GENERATION  ROLLOUT        NODES  ONLINE\n\
             kafka-a  4           completed      250    unknown\n\
             kafka-b  4           paused at b-2  250    unknown\n"
        );
        assert_eq!(clusters_json(&response)[0]["online"], Value::Null);
        assert_eq!(
            served_by_note(&response.served_by, response.liveness_unknown).unwrap(),
            "kreachctl: answered by a follower, from the etcd store; no coordinator leads (x); the agents' connections are unknown while no coordinator leads (AGENT \"unknown\")"
        );
        assert_eq!(
            served_by_note("", false),
            None,
            "the leader's answer is plain"
        );
        assert_eq!(
            clusters_text(&pb::ClustersResponse::default()),
            "no cluster yet: no spec has been applied to this coordinator\n"
        );
    }

    #[test]
    fn status_says_which_cluster_it_is_about() {
        let status = pb::StatusResponse {
            cluster: "kafka-b".into(),
            rollout: Some(pb::RolloutView {
                generation: 3,
                state: "completed".into(),
                current_step: 1,
                total_steps: 1,
                ..pb::RolloutView::default()
            }),
            ..pb::StatusResponse::default()
        };
        assert!(
            status_text(&status)
                .starts_with("cluster: kafka-b\nrollout: generation 3 completed (step 1 of 1)\n"),
            "{}",
            status_text(&status)
        );
        // Before the first apply there is no cluster to name.
        let none = status_text(&pb::StatusResponse::default());
        assert!(
            none.starts_with("rollout: none (no spec applied yet)\n"),
            "{none}"
        );
    }

    fn connection(url: &str) -> Connection {
        Connection {
            url: url.to_string(),
            certs: PathBuf::new(),
            insecure: true,
            cluster: String::new(),
        }
    }

    #[test]
    fn coordinator_urls_are_comma_separated_and_one_is_taken_as_given() {
        assert_eq!(
            connection("https://a:7443").urls().unwrap(),
            ["https://a:7443"]
        );
        assert_eq!(
            connection("https://a:7443, https://b:7443,https://c:7443")
                .urls()
                .unwrap(),
            ["https://a:7443", "https://b:7443", "https://c:7443"]
        );
        let error = connection("https://a:7443,").urls().unwrap_err();
        assert!(error.to_string().contains("entry 2 is empty"), "{error}");
        let error = connection("https://a:7443,https://a:7443")
            .urls()
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("https://a:7443 is listed twice; list each coordinator once"),
            "{error}"
        );
    }

    #[test]
    fn a_follower_is_told_apart_and_its_leader_read() {
        let mut follower = tonic::Status::unavailable("not the leader: the leader is at https://b");
        follower
            .metadata_mut()
            .insert(LEADER_METADATA, "https://b:7443".parse().unwrap());
        assert_eq!(leader_of(&follower).as_deref(), Some("https://b:7443"));
        assert!(status_message(&follower).contains("list every coordinator in --coordinator"));
        let leaderless =
            tonic::Status::unavailable("not the leader: no coordinator leads (etcd: x)");
        assert!(is_not_the_leader(&leaderless) && leader_of(&leaderless).is_none());
        let down = tonic::Status::unavailable("connection refused");
        assert!(!is_not_the_leader(&down));
        assert!(status_message(&down).contains("is kreach-coordinator running"));
        assert!(same_url("https://B:7443/", "https://b:7443"));
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(text, "A    LONG\nxyz  1\n");
    }

    #[test]
    fn certificates_that_expired_or_are_due_are_problems_check_counts() {
        let cert = |node: &str, state: &str| pb::CertificateView {
            node: node.into(),
            listener: "EXTERNAL".into(),
            serial: "0a".into(),
            sans: vec!["b1.c".into(), "198.19.0.1".into()],
            not_after_ms: 1_796_000_000_000,
            state: state.into(),
        };
        let certificates = [
            cert("b1", "ok"),
            cert("b2", "due for renewal"),
            cert("b3", "expired"),
        ];
        let problems = certificate_problems(&certificates);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("b2 EXTERNAL: certificate 0a due for renewal"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("expired") && problems[1].contains("the coordinator renews it")
        );
        let text = certificates_text(&certificates);
        assert!(
            text.contains("b1 EXTERNAL: serial 0a, valid until ")
                && text.contains("covers b1.c, 198.19.0.1\n"),
            "{text}"
        );
        let status = pb::StatusResponse {
            certificates: certificates.to_vec(),
            ..Default::default()
        };
        assert_eq!(check_json(&status)["ok"], false);
    }
}
