//! Dry runs for the coordinator's plans: render a node spec against this host's files as they are
//! now, and say what an apply would change.
//!
//! Owns the translation from a `DryRunRequest` to a `DryRunReport`; the rendering and diffing are
//! the engine's own ([`crate::engine::plan_files`], the same code `apply-local --dry-run` and every
//! apply use), so a plan shows exactly what the apply will do. It only reads: no lock, no backup,
//! no write, no audit entry, no applied-state change, no restart, no firewall change. It does not
//! own the stream the requests arrive on ([`crate::client`]).

use kreach_domain::desired::NodeSpec;
use kreach_proto as pb;

use crate::config::AgentConfig;
use crate::engine;

/// Answer one dry-run request for the node `config` describes. Never fails: a spec that cannot be
/// rendered here (not this node, invalid, server.properties missing, ...) is answered with `error`.
/// `held` is the clusters this host holds: their hosts blocks stay, as in an apply.
pub fn answer(
    config: &AgentConfig,
    held: &engine::Held,
    request: &pb::DryRunRequest,
) -> pb::DryRunReport {
    let mut report = pb::DryRunReport {
        node: config.node.clone(),
        id: request.id,
        ..pb::DryRunReport::default()
    };
    let spec = match request.spec.as_ref() {
        None => Err("invalid DryRunRequest.spec in a kreach.v1 message: missing".to_string()),
        Some(wire) => NodeSpec::try_from(wire).map_err(|error| error.to_string()),
    };
    let plan = spec.and_then(|spec| {
        engine::plan_files(&crate::fsio::Disk, config, &spec, held)
            .map_err(|error| error.to_string())
    });
    match plan {
        Ok(plan) => {
            report.diff = plan.render_diff();
            if let Some((unit, why)) = plan.restart {
                report.restart_unit = unit;
                report.restart_reason = why;
            }
            report.conflicts = plan.conflicts.iter().map(ToString::to_string).collect();
        }
        Err(error) => report.error = error,
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HOSTS: &str = "127.0.0.1\tlocalhost\n198.18.0.99 emr-worker-2.c  # set by hand\n";
    const PROPERTIES: &str =
        "# hand-written\nnode.id=2\nlisteners=PLAINTEXT://:9092\nlog.dirs=/var/lib/kafka\n";

    fn config(root: &Path) -> AgentConfig {
        let root = root.display();
        AgentConfig::parse(&format!(
            "node = \"emr-worker-2\"\nstate_dir = \"{root}/state\"\n[manage]\nhosts_file = \"{root}/hosts\"\nkafka_properties = \"{root}/server.properties\"\n"
        ))
        .unwrap()
    }

    /// A dry-run request for `node` of a cluster whose INTERNAL listener is on `port`.
    fn request_on(node: &str, port: u16) -> pb::DryRunRequest {
        let spec = kreach_domain::spec::ClusterSpec::parse(&format!(
            "[cluster]\nname = \"c\"\n[listeners.internal]\nport = {port}\nadvertise = \"hostname\"\n\
             [[broker]]\nid = 2\nnode = \"emr-worker-2\"\nhostname = \"emr-worker-2.c\"\nprivate_ip = \"198.18.0.12\"\n\
             [[client]]\nnode = \"{}\"\n",
            if node == "emr-worker-2" { "etl-1" } else { node }
        ))
        .unwrap();
        let node_spec = kreach_domain::desired::node_spec(&spec, node).unwrap();
        pb::DryRunRequest {
            id: 7,
            spec: Some(pb::NodeSpec::from(&node_spec)),
            diagnose: None,
        }
    }

    fn request(node: &str) -> pb::DryRunRequest {
        request_on(node, 9093)
    }

    /// Every file under `dir` with its bytes, to prove nothing was created, changed or removed.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files.push((path.display().to_string(), Vec::new()));
                    pending.push(path);
                } else {
                    files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
                }
            }
        }
        files.sort();
        files
    }

    #[test]
    fn a_dry_run_shows_the_real_lines_it_replaces_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), HOSTS).unwrap();
        std::fs::write(dir.path().join("server.properties"), PROPERTIES).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let before = snapshot(dir.path());

        let report = answer(
            &config(dir.path()),
            &Default::default(),
            &request("emr-worker-2"),
        );

        assert_eq!((report.node.as_str(), report.id), ("emr-worker-2", 7));
        assert_eq!(report.error, "");
        let lines: Vec<&str> = report.diff.lines().collect();
        // The hand-set listener line, as it is in the file, is what the apply replaces (keeping
        // the listener kreach does not own).
        assert!(
            lines.contains(&"-listeners=PLAINTEXT://:9092")
                && lines.contains(&"+listeners=PLAINTEXT://:9092,INTERNAL://0.0.0.0:9093")
                && lines.contains(
                    &"+advertised.listeners=PLAINTEXT://:9092,INTERNAL://emr-worker-2.c:9093"
                ),
            "{}",
            report.diff
        );
        // Under the host's own paths, and the hosts file gains kreach's block.
        let hosts = dir.path().join("hosts").display().to_string();
        assert!(
            report.diff.contains(&format!("+++ b{hosts}"))
                && lines
                    .iter()
                    .any(|l| l.starts_with('+') && l.contains("198.18.0.12")),
            "{}",
            report.diff
        );
        assert_eq!(report.restart_unit, "kafka.service");
        assert!(
            report.restart_reason.contains("listeners"),
            "{}",
            report.restart_reason
        );
        // The hand-written line maps kreach's name elsewhere: a conflict, reported, not removed.
        assert_eq!(report.conflicts.len(), 1, "{:?}", report.conflicts);
        assert!(report.conflicts[0].contains("emr-worker-2.c"));
        assert_eq!(
            snapshot(dir.path()),
            before,
            "no write, no backup, no audit entry, no applied state"
        );
    }

    #[test]
    fn a_dropped_brokers_dry_run_removes_its_block_and_leaves_server_properties_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        std::fs::write(dir.path().join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        std::fs::write(dir.path().join("server.properties"), PROPERTIES).unwrap();
        // Its hosts file as an earlier release left it.
        let mut request = request("emr-worker-2");
        let spec = NodeSpec::try_from(request.spec.as_ref().unwrap()).unwrap();
        let plan =
            engine::plan_files(&crate::fsio::Disk, &config, &spec, &Default::default()).unwrap();
        let hosts = &plan.changes[0];
        std::fs::write(&hosts.path, &hosts.new).unwrap();
        // What the coordinator releases a broker dropped from the spec: no entries, no listeners.
        let dropped = NodeSpec {
            hosts_entries: Vec::new(),
            listeners: None,
            ..spec
        };
        request.spec = Some(pb::NodeSpec::from(&dropped));
        let report = answer(&config, &Default::default(), &request);
        assert_eq!(report.error, "");
        assert!(
            report
                .diff
                .lines()
                .any(|l| l.starts_with("-# BEGIN kreach"))
                && !report.diff.contains("server.properties"),
            "{}",
            report.diff
        );
        assert_eq!(report.restart_unit, "", "a dropped broker never restarts");
    }

    #[test]
    fn a_spec_this_host_cannot_render_is_answered_with_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), HOSTS).unwrap();
        // Another node's spec.
        let report = answer(&config(dir.path()), &Default::default(), &request("etl-9"));
        assert!(
            report.error.contains("but this agent is \"emr-worker-2\""),
            "{}",
            report.error
        );
        assert!(report.diff.is_empty() && report.restart_unit.is_empty());
        // This node's spec, but server.properties is missing.
        let report = answer(
            &config(dir.path()),
            &Default::default(),
            &request("emr-worker-2"),
        );
        assert!(report.error.contains("does not exist"), "{}", report.error);
        // The apply would be refused: the plan says why instead of showing a diff.
        std::fs::write(dir.path().join("server.properties"), PROPERTIES).unwrap();
        let report = answer(
            &config(dir.path()),
            &Default::default(),
            &request_on("emr-worker-2", 9092),
        );
        assert!(
            report
                .error
                .contains("PLAINTEXT and INTERNAL both use port 9092"),
            "{}",
            report.error
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("server.properties")).unwrap(),
            PROPERTIES
        );
        // No spec at all.
        let report = answer(
            &config(dir.path()),
            &Default::default(),
            &pb::DryRunRequest {
                id: 1,
                spec: None,
                diagnose: None,
            },
        );
        assert!(report.error.contains("missing"), "{}", report.error);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hosts")).unwrap(),
            HOSTS
        );
    }
}
