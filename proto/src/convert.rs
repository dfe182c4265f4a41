//! Proto ↔ domain conversion, in one place.
//!
//! Invalid wire data is rejected here, at the edge, with an error naming the field, so that nothing
//! deeper ever sees a half-valid value (an unparseable address, an out-of-range port).

use std::net::IpAddr;

use crate as pb;

use kreach_domain::desired::{BootstrapEndpoint, ExternalFilter, NodeRole, NodeSpec};
use kreach_domain::hosts::HostsEntry;
use kreach_domain::properties::{ListenerSettings, ListenerSpec};
use kreach_domain::report;
use kreach_domain::spec::View;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {field} in a kreach.v1 message: {message}")]
pub struct WireError {
    pub field: String,
    pub message: String,
}

fn wire_error(field: &str, message: impl Into<String>) -> WireError {
    WireError {
        field: field.to_string(),
        message: message.into(),
    }
}

impl From<&NodeSpec> for pb::NodeSpec {
    fn from(spec: &NodeSpec) -> pb::NodeSpec {
        pb::NodeSpec {
            cluster: spec.cluster.clone(),
            node: spec.node.clone(),
            role: Some(match &spec.role {
                NodeRole::Broker { id } => pb::node_spec::Role::BrokerId(*id),
                NodeRole::Client { view } => pb::node_spec::Role::ClientView(
                    match view {
                        View::Private => "private",
                        View::Public => "public",
                    }
                    .to_string(),
                ),
            }),
            hosts_entries: spec
                .hosts_entries
                .iter()
                .map(|entry| pb::HostsEntry {
                    ip: entry.ip.to_string(),
                    names: entry.names.clone(),
                })
                .collect(),
            listeners: spec
                .listeners
                .as_ref()
                .map(|settings| pb::ListenerSettings {
                    owned_names: settings.owned_names.clone(),
                    listeners: settings
                        .listeners
                        .iter()
                        .map(|listener| pb::Listener {
                            name: listener.name.clone(),
                            bind_host: listener.bind_host.clone(),
                            port: u32::from(listener.port),
                            advertised_host: listener.advertised_host.clone(),
                            security_protocol: listener.security_protocol.clone(),
                            keystore: listener
                                .tls
                                .as_ref()
                                .map(|tls| tls.keystore.clone())
                                .unwrap_or_default(),
                            truststore: listener
                                .tls
                                .as_ref()
                                .map(|tls| tls.truststore.clone())
                                .unwrap_or_default(),
                            sasl_mechanism: listener.sasl_mechanism.clone().unwrap_or_default(),
                        })
                        .collect(),
                    inter_broker_listener: settings.inter_broker_listener.clone(),
                }),
            health_timeout_ms: spec.health_timeout_ms,
            bootstrap: spec
                .bootstrap
                .iter()
                .map(|endpoint| pb::BootstrapEndpoint {
                    broker_id: endpoint.broker_id,
                    host: endpoint.host.clone(),
                    port: u32::from(endpoint.port),
                })
                .collect(),
            external_filter: spec
                .external_filter
                .as_ref()
                .map(|filter| pb::ExternalFilter {
                    port: u32::from(filter.port),
                    allow: filter.allow.iter().map(ToString::to_string).collect(),
                }),
            certificates: spec
                .certificates
                .iter()
                .map(|cert| pb::ListenerCertificate {
                    listener: cert.listener.clone(),
                    chain_pem: cert.chain_pem.clone(),
                    sans: cert.sans.clone(),
                    serial: cert.serial.clone(),
                    not_after_ms: cert.not_after_ms,
                })
                .collect(),
            kafka_ca_pem: spec.kafka_ca_pem.clone(),
            scram_users: spec.scram_users.iter().map(pb::ScramUser::from).collect(),
            sasl_mechanism: spec.sasl_mechanism.clone(),
        }
    }
}

impl From<&kreach_domain::gates::GateCheck> for pb::Check {
    fn from(check: &kreach_domain::gates::GateCheck) -> pb::Check {
        pb::Check {
            name: check.name.clone(),
            ok: check.ok,
            detail: check.detail.clone(),
        }
    }
}

impl From<&pb::Check> for kreach_domain::gates::GateCheck {
    fn from(check: &pb::Check) -> kreach_domain::gates::GateCheck {
        kreach_domain::gates::GateCheck {
            name: check.name.clone(),
            ok: check.ok,
            detail: check.detail.clone(),
        }
    }
}

impl From<pb::Phase> for report::Phase {
    fn from(phase: pb::Phase) -> report::Phase {
        match phase {
            pb::Phase::Unspecified => report::Phase::Unknown,
            pb::Phase::Idle => report::Phase::Idle,
            pb::Phase::Applying => report::Phase::Applying,
            pb::Phase::Converged => report::Phase::Converged,
            pb::Phase::RolledBack => report::Phase::RolledBack,
            pb::Phase::Failed => report::Phase::Failed,
        }
    }
}

impl From<report::Phase> for pb::Phase {
    fn from(phase: report::Phase) -> pb::Phase {
        match phase {
            report::Phase::Unknown => pb::Phase::Unspecified,
            report::Phase::Idle => pb::Phase::Idle,
            report::Phase::Applying => pb::Phase::Applying,
            report::Phase::Converged => pb::Phase::Converged,
            report::Phase::RolledBack => pb::Phase::RolledBack,
            report::Phase::Failed => pb::Phase::Failed,
        }
    }
}

/// An unknown phase number (from a newer agent) reads as [`report::Phase::Unknown`].
impl From<&pb::NodeStatus> for report::NodeReport {
    fn from(status: &pb::NodeStatus) -> report::NodeReport {
        report::NodeReport {
            release: status.release.as_ref().map(Into::into),
            phase: pb::Phase::try_from(status.phase)
                .unwrap_or(pb::Phase::Unspecified)
                .into(),
            reason: status.reason.clone(),
            checks: status.checks.iter().map(Into::into).collect(),
            restart_started_ms: status.restart_started_ms,
            restart_finished_ms: status.restart_finished_ms,
            reachability: status.reachability.iter().map(Into::into).collect(),
        }
    }
}

/// `node`'s report as `kreach.v1` carries it.
impl From<(&str, &report::NodeReport)> for pb::NodeStatus {
    fn from((node, report): (&str, &report::NodeReport)) -> pb::NodeStatus {
        pb::NodeStatus {
            node: node.to_string(),
            release: report.release.map(Into::into),
            phase: pb::Phase::from(report.phase) as i32,
            reason: report.reason.clone(),
            checks: report.checks.iter().map(Into::into).collect(),
            restart_started_ms: report.restart_started_ms,
            restart_finished_ms: report.restart_finished_ms,
            reachability: report.reachability.iter().map(Into::into).collect(),
            cluster: String::new(),
        }
    }
}

/// Field-for-field conversions both ways between a `kreach.v1` message and its domain twin.
/// With `node`: the wire message also names the node, which the domain keeps as the key of the
/// record; it is dropped on the way in and given as `(node, &record)` on the way out.
macro_rules! twins {
    ($wire:path, $domain:path, node, [$($field:ident),* $(,)?]) => {
        impl From<&$wire> for $domain {
            fn from(wire: &$wire) -> $domain {
                $domain { $($field: wire.$field.clone()),* }
            }
        }
        impl From<(&str, &$domain)> for $wire {
            fn from((node, record): (&str, &$domain)) -> $wire {
                $wire { node: node.to_string(), $($field: record.$field.clone()),* }
            }
        }
    };
    ($wire:path, $domain:path, [$($field:ident),* $(,)?]) => {
        impl From<&$wire> for $domain {
            fn from(wire: &$wire) -> $domain {
                $domain { $($field: wire.$field.clone()),* }
            }
        }
        impl From<&$domain> for $wire {
            fn from(record: &$domain) -> $wire {
                $wire { $($field: record.$field.clone()),* }
            }
        }
    };
}

twins!(
    pb::Reachability,
    report::Reached,
    [broker_id, endpoint, ok, reason, checked_at_ms, detail]
);
twins!(
    pb::HostFacts,
    report::HostFacts,
    node,
    [
        hostname,
        fqdn,
        addresses,
        kafka_running,
        agent_version,
        kafka_controller,
        kafka_tls_public_key,
        labels,
    ]
);
twins!(
    pb::AgentHealth,
    report::AgentHealth,
    node,
    [
        conflicts,
        repairs,
        last_repair_ms,
        enforce_error,
        firewall,
        dynamic_overrides
    ]
);
twins!(
    pb::AuditRecord,
    report::AuditRecord,
    [
        seq,
        at_ms,
        file,
        path,
        action,
        old_hash,
        new_hash,
        reason,
        generation,
        released_by,
        node
    ]
);

impl From<kreach_domain::release::ReleaseId> for pb::ReleaseId {
    fn from(id: kreach_domain::release::ReleaseId) -> pb::ReleaseId {
        pb::ReleaseId {
            generation: id.generation,
            step: id.step,
            attempt: id.attempt,
        }
    }
}

impl From<&pb::ReleaseId> for kreach_domain::release::ReleaseId {
    fn from(id: &pb::ReleaseId) -> kreach_domain::release::ReleaseId {
        kreach_domain::release::ReleaseId {
            generation: id.generation,
            step: id.step,
            attempt: id.attempt,
        }
    }
}

impl From<&kreach_domain::diagnose::Step> for pb::DiagnoseStep {
    fn from(step: &kreach_domain::diagnose::Step) -> pb::DiagnoseStep {
        pb::DiagnoseStep {
            broker_id: step.broker_id,
            step: step.step.clone(),
            ok: step.ok,
            detail: step.detail.clone(),
            elapsed_ms: step.elapsed_ms,
            ..pb::DiagnoseStep::default()
        }
    }
}

impl From<&pb::DiagnoseStep> for kreach_domain::diagnose::Step {
    fn from(step: &pb::DiagnoseStep) -> kreach_domain::diagnose::Step {
        kreach_domain::diagnose::Step {
            broker_id: step.broker_id,
            step: step.step.clone(),
            ok: step.ok,
            detail: step.detail.clone(),
            elapsed_ms: step.elapsed_ms,
        }
    }
}

impl From<&kreach_domain::desired::ScramUser> for pb::ScramUser {
    fn from(user: &kreach_domain::desired::ScramUser) -> pb::ScramUser {
        pb::ScramUser {
            name: user.name.clone(),
            mechanism: user.mechanism.clone(),
            iterations: user.iterations,
            salt: user.salt.clone(),
            salted_password: user.salted_password.clone(),
        }
    }
}

impl From<&pb::ScramUser> for kreach_domain::desired::ScramUser {
    fn from(user: &pb::ScramUser) -> kreach_domain::desired::ScramUser {
        kreach_domain::desired::ScramUser {
            name: user.name.clone(),
            mechanism: user.mechanism.clone(),
            iterations: user.iterations,
            salt: user.salt.clone(),
            salted_password: user.salted_password.clone(),
        }
    }
}

fn wire_port(field: &str, port: u32) -> Result<u16, WireError> {
    u16::try_from(port)
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| wire_error(field, format!("{port} is not a port")))
}

impl TryFrom<&pb::NodeSpec> for NodeSpec {
    type Error = WireError;

    fn try_from(wire: &pb::NodeSpec) -> Result<NodeSpec, WireError> {
        if wire.node.is_empty() {
            return Err(wire_error("NodeSpec.node", "empty"));
        }
        let role = match &wire.role {
            Some(pb::node_spec::Role::BrokerId(id)) if *id >= 0 => NodeRole::Broker { id: *id },
            Some(pb::node_spec::Role::BrokerId(id)) => {
                return Err(wire_error(
                    "NodeSpec.broker_id",
                    format!("{id} is negative"),
                ))
            }
            Some(pb::node_spec::Role::ClientView(view)) => NodeRole::Client {
                view: match view.as_str() {
                    "private" => View::Private,
                    "public" => View::Public,
                    other => {
                        return Err(wire_error(
                            "NodeSpec.client_view",
                            format!("{other:?} is not \"private\" or \"public\""),
                        ))
                    }
                },
            },
            None => return Err(wire_error("NodeSpec.role", "missing")),
        };
        let hosts_entries = wire
            .hosts_entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let ip: IpAddr = entry.ip.parse().map_err(|_| {
                    wire_error(
                        &format!("NodeSpec.hosts_entries[{index}].ip"),
                        format!("{:?} is not an address", entry.ip),
                    )
                })?;
                if entry.names.is_empty() {
                    return Err(wire_error(
                        &format!("NodeSpec.hosts_entries[{index}].names"),
                        "empty",
                    ));
                }
                Ok(HostsEntry {
                    ip,
                    names: entry.names.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let listeners = match &wire.listeners {
            None => None,
            Some(settings) => Some(ListenerSettings {
                owned_names: settings.owned_names.clone(),
                listeners: settings
                    .listeners
                    .iter()
                    .enumerate()
                    .map(|(index, listener)| {
                        let port = u16::try_from(listener.port)
                            .ok()
                            .filter(|port| *port > 0)
                            .ok_or_else(|| {
                                wire_error(
                                    &format!("NodeSpec.listeners.listeners[{index}].port"),
                                    format!("{} is not a port", listener.port),
                                )
                            })?;
                        let field =
                            |name: &str| format!("NodeSpec.listeners.listeners[{index}].{name}");
                        let tls =
                            match (listener.keystore.is_empty(), listener.truststore.is_empty()) {
                                (true, true) => None,
                                (false, false) => Some(kreach_domain::properties::ListenerTls {
                                    keystore: listener.keystore.clone(),
                                    truststore: listener.truststore.clone(),
                                }),
                                (true, false) => {
                                    return Err(wire_error(
                                        &field("keystore"),
                                        "empty while truststore is set",
                                    ))
                                }
                                (false, true) => {
                                    return Err(wire_error(
                                        &field("truststore"),
                                        "empty while keystore is set",
                                    ))
                                }
                            };
                        Ok(ListenerSpec {
                            name: listener.name.clone(),
                            bind_host: listener.bind_host.clone(),
                            port,
                            advertised_host: listener.advertised_host.clone(),
                            security_protocol: listener.security_protocol.clone(),
                            tls,
                            sasl_mechanism: (!listener.sasl_mechanism.is_empty())
                                .then(|| listener.sasl_mechanism.clone()),
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?,
                inter_broker_listener: settings.inter_broker_listener.clone(),
            }),
        };
        let bootstrap = wire
            .bootstrap
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                if endpoint.host.trim().is_empty() {
                    return Err(wire_error(
                        &format!("NodeSpec.bootstrap[{index}].host"),
                        "empty",
                    ));
                }
                Ok(BootstrapEndpoint {
                    broker_id: endpoint.broker_id,
                    host: endpoint.host.clone(),
                    port: wire_port(&format!("NodeSpec.bootstrap[{index}].port"), endpoint.port)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let external_filter = match &wire.external_filter {
            None => None,
            Some(filter) => Some(ExternalFilter {
                port: wire_port("NodeSpec.external_filter.port", filter.port)?,
                allow: filter
                    .allow
                    .iter()
                    .enumerate()
                    .map(|(index, cidr)| {
                        cidr.parse().map_err(|_| {
                            wire_error(
                                &format!("NodeSpec.external_filter.allow[{index}]"),
                                format!("{cidr:?} is not a CIDR"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            }),
        };
        // A broker may come without listeners: the first release to a broker kreach never managed
        // gives it its hosts entries and leaves its listener keys alone. Clients never have any.
        if matches!(role, NodeRole::Client { .. }) && listeners.is_some() {
            return Err(wire_error(
                "NodeSpec.listeners",
                "a client has no listener settings",
            ));
        }
        match role {
            NodeRole::Client { .. } if external_filter.is_some() => {
                return Err(wire_error(
                    "NodeSpec.external_filter",
                    "a client has no EXTERNAL port to filter",
                ))
            }
            NodeRole::Broker { .. } if !bootstrap.is_empty() => {
                return Err(wire_error(
                    "NodeSpec.bootstrap",
                    "a broker has no bootstrap endpoints (they are a client's)",
                ))
            }
            _ => {}
        }
        let certificates = wire
            .certificates
            .iter()
            .map(|cert| kreach_domain::desired::ListenerCertificate {
                listener: cert.listener.clone(),
                chain_pem: cert.chain_pem.clone(),
                sans: cert.sans.clone(),
                serial: cert.serial.clone(),
                not_after_ms: cert.not_after_ms,
            })
            .collect();
        Ok(NodeSpec {
            cluster: wire.cluster.clone(),
            node: wire.node.clone(),
            role,
            hosts_entries,
            listeners,
            health_timeout_ms: wire.health_timeout_ms,
            bootstrap,
            external_filter,
            certificates,
            kafka_ca_pem: wire.kafka_ca_pem.clone(),
            scram_users: wire
                .scram_users
                .iter()
                .map(kreach_domain::desired::ScramUser::from)
                .collect(),
            sasl_mechanism: wire.sasl_mechanism.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kreach_domain::desired::all_node_specs;
    use kreach_domain::spec::ClusterSpec;

    #[test]
    fn every_node_of_the_example_survives_the_wire() {
        let spec = ClusterSpec::parse(include_str!("../../examples/cluster.toml")).unwrap();
        for node in all_node_specs(&spec) {
            let wire = pb::NodeSpec::from(&node);
            assert_eq!(NodeSpec::try_from(&wire).unwrap(), node);
        }
    }

    #[test]
    fn invalid_wire_values_name_the_field() {
        let spec = ClusterSpec::parse(include_str!("../../examples/cluster.toml")).unwrap();
        let broker = all_node_specs(&spec).into_iter().next().unwrap();
        let mut wire = pb::NodeSpec::from(&broker);
        wire.hosts_entries[1].ip = "300.1.1.1".into();
        let error = NodeSpec::try_from(&wire).unwrap_err();
        assert_eq!(error.field, "NodeSpec.hosts_entries[1].ip");
        let mut wire = pb::NodeSpec::from(&broker);
        wire.listeners.as_mut().unwrap().listeners[0].port = 70000;
        assert!(NodeSpec::try_from(&wire)
            .unwrap_err()
            .to_string()
            .contains("70000 is not a port"));
        let mut wire = pb::NodeSpec::from(&broker);
        wire.role = None;
        assert_eq!(
            NodeSpec::try_from(&wire).unwrap_err().field,
            "NodeSpec.role"
        );
        let mut wire = pb::NodeSpec::from(&broker);
        wire.role = Some(pb::node_spec::Role::ClientView("private".into()));
        assert_eq!(
            NodeSpec::try_from(&wire).unwrap_err().field,
            "NodeSpec.listeners"
        );
        let mut wire = pb::NodeSpec::from(&broker);
        wire.external_filter.as_mut().unwrap().allow[0] = "10.0.0.1/33".into();
        let error = NodeSpec::try_from(&wire).unwrap_err();
        assert_eq!(error.field, "NodeSpec.external_filter.allow[0]");
        assert!(error.to_string().contains("\"10.0.0.1/33\" is not a CIDR"));
        let mut wire = pb::NodeSpec::from(&broker);
        wire.bootstrap.push(pb::BootstrapEndpoint {
            broker_id: 1,
            host: "b".into(),
            port: 9092,
        });
        assert_eq!(
            NodeSpec::try_from(&wire).unwrap_err().field,
            "NodeSpec.bootstrap"
        );
        // A broker without listener settings (names only, listener keys left alone) is valid.
        let mut wire = pb::NodeSpec::from(&broker);
        wire.listeners = None;
        assert!(NodeSpec::try_from(&wire).unwrap().listeners.is_none());
    }
}
