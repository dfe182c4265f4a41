//! What `kreachctl status` and `kreachctl nodes` show, made from the coordinator's state: every
//! node with its role, latest release and reports, the rollout's progress, the reachability
//! matrix judged against the spec, and the Kafka certificates with their renewal state.
//!
//! Pure: functions of what they are given (the time included), no I/O and no clock, so each view
//! is the same for the same state. Owns nothing.

use std::collections::BTreeMap;

use kreach_domain::desired::{bootstrap_endpoints, BootstrapEndpoint, NodeRole};
use kreach_domain::reachability::Failure;
use kreach_domain::report::Reached;
use kreach_domain::spec::{ClusterSpec, View};
use kreach_proto as pb;

use crate::groups::Membership;
use crate::registry::{AgentEntry, Registry};
use crate::rollout::{self, Rollout};

/// What [`status`] is made from.
#[derive(Clone, Copy)]
pub struct StatusInputs<'a> {
    /// Every node's latest release.
    pub releases: &'a BTreeMap<String, rollout::Release>,
    /// The newest generation's spec.
    pub spec: Option<&'a ClusterSpec>,
    pub registry: &'a Registry,
    /// The client groups' members now and their releases (see [`crate::groups`]).
    pub membership: &'a Membership,
    pub member_releases: &'a BTreeMap<String, rollout::Release>,
    pub rollout: Option<&'a Rollout>,
    pub now_ms: u64,
    /// When the newest rollout completed (0: not since this coordinator started): a client's
    /// reachability reported before it may describe what the brokers advertised before.
    pub completed_at_ms: u64,
    pub cluster: &'a str,
}

/// `kreachctl nodes`: every known agent's facts and whether it is connected.
pub fn nodes(registry: &Registry) -> pb::NodesResponse {
    let mut response = pb::NodesResponse::default();
    for (node, entry) in registry.iter() {
        let facts = entry.facts.clone().unwrap_or_default();
        response
            .nodes
            .push(pb::HostFacts::from((node.as_str(), &facts)));
        response.online.push(entry.connections > 0);
    }
    response
}

/// `kreachctl status`: every node with its role, release and reports, the rollout, the
/// reachability matrix and the certificates.
pub fn status(inputs: &StatusInputs<'_>) -> pb::StatusResponse {
    let StatusInputs {
        releases,
        spec,
        registry,
        membership,
        member_releases,
        rollout,
        now_ms: now,
        completed_at_ms,
        cluster,
    } = *inputs;
    let mut roles: BTreeMap<String, String> = BTreeMap::new();
    if let Some(spec) = spec {
        for node in kreach_domain::desired::all_node_specs(spec) {
            roles.insert(node.node.clone(), node.role.to_string());
        }
    }
    for (node, release) in releases {
        roles
            .entry(node.clone())
            .or_insert_with(|| release.spec.role.to_string());
    }
    for (node, member) in &membership.members {
        let role = NodeRole::Client { view: member.view };
        roles.insert(
            node.clone(),
            format!("{role} (client group {})", member.group),
        );
    }
    for (node, why) in &membership.conflicts {
        roles.insert(node.clone(), format!("no role: {why}"));
    }
    for (node, _) in registry.iter() {
        roles
            .entry(node.clone())
            .or_insert_with(|| "unknown (not in the spec)".to_string());
    }
    let nodes = roles
        .into_iter()
        .map(|(node, role)| {
            let entry = registry.get(&node);
            pb::NodeView {
                online: entry.is_some_and(AgentEntry::online),
                released: releases
                    .get(&node)
                    .or_else(|| member_releases.get(&node))
                    .map(|release| pb::ReleaseId::from(release.id())),
                status: entry
                    .and_then(|e| e.status.as_ref())
                    .map(|status| pb::NodeStatus::from((node.as_str(), status))),
                health: entry
                    .and_then(|e| e.health.as_ref())
                    .map(|health| pb::AgentHealth::from((node.as_str(), health))),
                node,
                role,
            }
        })
        .collect();
    let rollout = rollout.map(|rollout| {
        let status = rollout.status();
        pb::RolloutView {
            generation: status.generation,
            state: status.state.clone(),
            current_step: status.current_step.unwrap_or(status.total_steps),
            total_steps: status.total_steps,
            paused_node: status.paused_node.clone().unwrap_or_default(),
            paused_reason: status.paused_reason.clone().unwrap_or_default(),
            steps: plan_steps(rollout.plan()),
            waiting: status
                .nodes
                .iter()
                .filter(|(_, progress)| !progress.is_done())
                .map(|(node, _)| node.clone())
                .collect(),
            step_nodes: status.nodes.len() as u32,
            skipped: status
                .skipped
                .iter()
                .map(|(node, why)| format!("{node}: {why}"))
                .collect(),
        }
    });
    let renew_before_ms = spec
        .map(|spec| u64::try_from(spec.tls.renew_before.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let certificates = releases
        .iter()
        .flat_map(|(node, release)| {
            release.spec.certificates.iter().map(move |cert| {
                let state = if cert.not_after_ms <= now {
                    "expired"
                } else if cert.not_after_ms <= now.saturating_add(renew_before_ms) {
                    "due for renewal"
                } else {
                    "ok"
                };
                pb::CertificateView {
                    node: node.clone(),
                    listener: cert.listener.clone(),
                    serial: cert.serial.clone(),
                    sans: cert.sans.clone(),
                    not_after_ms: cert.not_after_ms,
                    state: state.to_string(),
                }
            })
        })
        .collect();
    pb::StatusResponse {
        applied_generation: rollout.as_ref().map(|r| r.generation).unwrap_or(0),
        rollout,
        nodes,
        reachability: spec
            .map(|spec| reachability_rows(spec, membership, registry, completed_at_ms))
            .unwrap_or_default(),
        certificates,
        cluster: cluster.to_string(),
        ..Default::default()
    }
}

/// The reachability matrix: one row per client of the newest spec, one cell per broker it
/// should reach (its view's bootstrap endpoints), from what the client last reported.
fn reachability_rows(
    spec: &ClusterSpec,
    membership: &Membership,
    registry: &Registry,
    completed_at_ms: u64,
) -> Vec<pb::ReachabilityRow> {
    // Listed clients, then the group members connected now.
    let listed = spec
        .clients
        .iter()
        .map(|client| (client.node.as_str(), client.view));
    let members = membership
        .members
        .iter()
        .map(|(node, member)| (node.as_str(), member.view));
    listed
        .chain(members)
        .map(|(node, view)| {
            let entry = registry.get(node);
            let reported: &[Reached] = entry
                .and_then(|entry| entry.status.as_ref())
                .map(|status| status.reachability.as_slice())
                .unwrap_or(&[]);
            let addresses: Vec<String> = entry
                .and_then(|entry| entry.facts.as_ref())
                .map(|facts| facts.addresses.clone())
                .unwrap_or_default();
            let expected = bootstrap_endpoints(spec, view);
            let brokers = expected
                .iter()
                .map(|endpoint| {
                    let mut cell = reachability_cell(endpoint, reported, node);
                    if view == View::Public
                        && Failure::from_reason(&cell.reason) == Some(Failure::TimedOut)
                    {
                        if let Some(note) = dropped_note(&addresses, &spec.external.allow) {
                            cell.detail = format!("{note}; {}", cell.detail);
                        }
                    }
                    pb::Reachability::from(&cell)
                })
                .collect();
            pb::ReachabilityRow {
                client: node.to_string(),
                view: view.as_str().to_string(),
                brokers,
                reported: !reported.is_empty(),
                current: !reported.is_empty()
                    && entry.is_some_and(|entry| entry.reachability_at_ms >= completed_at_ms),
            }
        })
        .collect()
}

/// One cell of the matrix: the client's report on `expected`'s broker, judged against the spec.
/// Pure.
pub fn reachability_cell(
    expected: &BootstrapEndpoint,
    reported: &[Reached],
    client: &str,
) -> Reached {
    let endpoint = expected.to_string();
    let same = |reach: &&Reached| reach.endpoint.eq_ignore_ascii_case(&endpoint);
    let about: Vec<&Reached> = reported
        .iter()
        .filter(|reach| reach.broker_id == expected.broker_id)
        .collect();
    if let Some(ok) = about.iter().find(|reach| reach.ok && same(reach)) {
        return (*ok).clone();
    }
    if let Some(failed) = about
        .iter()
        .find(|reach| !reach.ok && same(reach))
        .or_else(|| about.iter().find(|reach| !reach.ok))
    {
        return (*failed).clone();
    }
    let (reason, detail, checked_at_ms) = match about.first() {
        Some(reached) => (
            "stale",
            format!(
                "{client} reached broker {} at {}, but the spec advertises {endpoint} for its view (not checked since)",
                expected.broker_id, reached.endpoint
            ),
            reached.checked_at_ms,
        ),
        None if reported.is_empty() => (
            "unknown",
            format!("{client} has not reported its reachability yet (is its agent running?)"),
            0,
        ),
        None => (
            "unknown",
            format!(
                "{client} has not reported on broker {} yet (it checks after each apply and periodically)",
                expected.broker_id
            ),
            0,
        ),
    };
    Reached {
        broker_id: expected.broker_id,
        endpoint,
        ok: false,
        reason: reason.to_string(),
        checked_at_ms,
        detail,
    }
}

/// "dropped: 198.19.0.50 is not in listeners.external.allow", when none of the client's own
/// addresses is allowed (its packets to the EXTERNAL port are dropped, which looks like a timeout).
pub fn dropped_note(addresses: &[String], allow: &[ipnet::IpNet]) -> Option<String> {
    let parsed: Vec<std::net::IpAddr> = addresses
        .iter()
        .filter_map(|address| address.parse().ok())
        .collect();
    if parsed.is_empty()
        || parsed
            .iter()
            .any(|ip| allow.iter().any(|net| net.contains(ip)))
    {
        return None;
    }
    let list = parsed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "dropped: {list} {} not in listeners.external.allow",
        if parsed.len() == 1 { "is" } else { "are" }
    ))
}

/// The rollout's steps as `status` and `plan` list them.
pub fn plan_steps(plan: &rollout::RolloutPlan) -> Vec<pb::PlannedStep> {
    plan.steps
        .iter()
        .enumerate()
        .map(|(index, step)| pb::PlannedStep {
            index: index as u32,
            kind: if step.controller {
                format!("{} (controller)", step.kind)
            } else {
                step.kind.to_string()
            },
            nodes: step.nodes(),
            restarts: step.restarts,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: i32, host: &str) -> BootstrapEndpoint {
        BootstrapEndpoint {
            broker_id: id,
            host: host.to_string(),
            port: 9093,
        }
    }

    fn reach(id: i32, endpoint: &str, reason: &str) -> Reached {
        Reached {
            broker_id: id,
            endpoint: endpoint.to_string(),
            ok: reason.is_empty(),
            reason: reason.to_string(),
            checked_at_ms: 7,
            detail: "d".to_string(),
        }
    }

    #[test]
    fn cells_judge_reports_against_the_spec() {
        let expected = endpoint(1, "B1.c");
        let cell = |reported: &[Reached]| reachability_cell(&expected, reported, "etl");
        assert!(
            cell(&[reach(1, "b1.c:9093", "")]).ok,
            "names compare case-insensitively"
        );
        assert_eq!(cell(&[reach(1, "b1.c:9093", "refused")]).reason, "refused");
        // Reached, but at an endpoint the spec no longer advertises for this view.
        let stale = cell(&[reach(1, "198.19.0.11:9093", "")]);
        assert_eq!((stale.ok, stale.reason.as_str()), (false, "stale"));
        // Never reported at all, or not on this broker.
        let unknown = cell(&[]);
        assert_eq!(unknown.reason, "unknown");
        assert!(
            unknown
                .detail
                .contains("has not reported its reachability yet"),
            "{}",
            unknown.detail
        );
        let unknown = cell(&[reach(2, "b2.c:9093", "")]);
        assert!(
            unknown.detail.contains("not reported on broker 1"),
            "{}",
            unknown.detail
        );
    }

    #[test]
    fn a_client_outside_allow_is_told_it_is_dropped() {
        let allow: Vec<ipnet::IpNet> = vec!["198.19.0.0/28".parse().unwrap()];
        assert_eq!(
            dropped_note(&["198.19.0.50".into()], &allow).as_deref(),
            Some("dropped: 198.19.0.50 is not in listeners.external.allow")
        );
        assert_eq!(
            dropped_note(&["198.19.0.5".into(), "10.0.0.1".into()], &allow),
            None
        );
        assert_eq!(dropped_note(&[], &allow), None, "no facts: no guess");
    }
}
