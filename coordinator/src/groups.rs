//! Client groups (`[[client_group]]`): which connected agents the newest spec's groups select, and
//! the hosts two groups of different views both select (a client of neither).
//!
//! Pure: a function of the spec and the registry. Owns nothing; the core turns members into
//! releases and the views show them.

use std::collections::BTreeMap;

use kreach_domain::spec::{ClusterSpec, View};

use crate::registry::{AgentEntry, Registry};

/// One agent a group selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub group: String,
    pub view: View,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Node → the (first) group that selects it.
    pub members: BTreeMap<String, Member>,
    /// Node → why it is a client of no group: groups of different views select it.
    pub conflicts: BTreeMap<String, String>,
}

/// The agents `spec`'s client groups select now: connected, with facts, and not a listed broker
/// or client.
pub fn membership(spec: &ClusterSpec, registry: &Registry) -> Membership {
    let mut membership = Membership::default();
    if spec.client_groups.is_empty() {
        return membership;
    }
    for (node, entry) in registry.iter() {
        match member_of(spec, node, entry) {
            Some(Ok(member)) => {
                membership.members.insert(node.clone(), member);
            }
            Some(Err(conflict)) => {
                membership.conflicts.insert(node.clone(), conflict);
            }
            None => {}
        }
    }
    membership
}

/// Whether `spec`'s groups select `node`'s agent: the first group that does, why none may (two
/// views select it), or None.
pub fn member_of(
    spec: &ClusterSpec,
    node: &str,
    entry: &AgentEntry,
) -> Option<Result<Member, String>> {
    if !entry.online() || spec.broker_by_node(node).is_some() || spec.client_by_node(node).is_some()
    {
        return None;
    }
    let facts = entry.facts.as_ref()?;
    let addresses: Vec<std::net::IpAddr> = facts
        .addresses
        .iter()
        .filter_map(|address| address.parse().ok())
        .collect();
    let selecting: Vec<&kreach_domain::spec::ClientGroup> = spec
        .client_groups
        .iter()
        .filter(|group| group.selects(node, &facts.labels, &addresses))
        .collect();
    let first = selecting.first()?;
    if selecting.iter().any(|group| group.view != first.view) {
        let groups = selecting
            .iter()
            .map(|group| format!("{} ({})", group.name, group.view.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        return Some(Err(format!(
            "client groups of different views select it: {groups}; it is a client of none until one no longer does"
        )));
    }
    Some(Ok(Member {
        group: first.name.clone(),
        view: first.view,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AgentRecord;
    use kreach_domain::report::HostFacts;

    #[test]
    fn connected_unlisted_agents_are_members_and_two_views_make_a_conflict() {
        let spec = ClusterSpec::parse(
            "[cluster]\nname = \"c\"\n[listeners.external]\nallow = [\"0.0.0.0/0\"]\n\
             [[broker]]\nid = 1\nnode = \"b1\"\nprivate_ip = \"10.0.0.1\"\npublic_ip = \"198.19.0.1\"\n\
             [[client]]\nnode = \"task-listed\"\n\
             [[client_group]]\nname = \"tasks\"\nnodes = \"task-*\"\n\
             [[client_group]]\nname = \"edge\"\nview = \"public\"\ncidrs = [\"198.18.9.0/24\"]\n",
        )
        .unwrap();
        let facts = |address: &str| AgentRecord {
            status: None,
            facts: Some(HostFacts {
                addresses: vec![address.to_string()],
                ..HostFacts::default()
            }),
            last_seen_ms: 0,
        };
        let mut registry = Registry::load(
            vec![
                ("task-1".into(), facts("10.0.0.9")),
                ("task-2".into(), facts("198.18.9.4")),
                ("task-3".into(), facts("10.0.0.10")),
                ("task-listed".into(), facts("10.0.0.11")),
                ("gw-1".into(), facts("198.18.9.5")),
            ],
            100,
        );
        for node in ["task-1", "task-2", "task-listed", "gw-1"] {
            registry.connected(node, 1);
        }
        let membership = membership(&spec, &registry);
        let members: Vec<(&str, &str, View)> = membership
            .members
            .iter()
            .map(|(node, m)| (node.as_str(), m.group.as_str(), m.view))
            .collect();
        // task-3 is offline, task-listed is a listed client: neither is a member.
        assert_eq!(
            members,
            [
                ("gw-1", "edge", View::Public),
                ("task-1", "tasks", View::Private)
            ]
        );
        assert_eq!(
            membership.conflicts["task-2"],
            "client groups of different views select it: tasks (private), edge (public); it is a client of none until one no longer does"
        );
    }
}
