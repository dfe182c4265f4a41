//! The EXTERNAL port's source filter on a broker host, with nftables (issue 4 item 4).
//!
//! Owns one table, `table inet kreach`, and nothing else: other tables, chains and rules on the
//! host are never read or touched. The table is replaced as a whole in one `nft -f` transaction
//! (either the new rules are in force or the old ones still are; never neither), and removed when
//! public access is disabled. [`ruleset`] renders the transaction (pure, unit-tested);
//! [`enforce`] runs it and reads the table back as the check the agent reports.
//!
//! It is off unless the agent's own config says `[manage] firewall = "nftables"`: a host whose
//! packet filter is managed by something else keeps it that way.
//!
//! `nft` is driven directly rather than through the `nftables` crate: that crate also runs the
//! `nft` binary (with JSON), and our whole ruleset is a few lines of nft's own syntax, which is
//! what an operator reads back with `nft list table inet kreach`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use kreach_domain::desired::{ExternalFilter, NodeRole, NodeSpec};
use kreach_domain::gates::GateCheck;

use crate::config::{AgentConfig, FirewallKind};

/// The table kreach owns, in nft's `family name` form.
pub const TABLE: &str = "inet kreach";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {program} (is nftables installed? `apt-get install nftables`): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}; the table {TABLE} is as it was before")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
    #[error("after replacing table {TABLE}, `nft list table {TABLE}` does not show the filter on port {port}: {listing}")]
    NotInForce { port: u16, listing: String },
}

/// The nft transaction that makes table `inet kreach` match `filter` (or removes it for `None`).
///
/// `table inet kreach {}` followed by `delete table inet kreach` deletes the table whether or not
/// it exists, and because the whole script is one transaction the port is never unfiltered in
/// between. Sources outside `allow` are dropped on the port, per family: with no IPv6 CIDR in
/// `allow`, every IPv6 source is dropped there (and likewise for IPv4). Connections from the host
/// itself (they arrive on `lo`) are accepted first: the agent's own post-restart probe of a
/// listener bound to a wildcard address connects through loopback, and so do local health checks.
pub fn ruleset(filter: Option<&ExternalFilter>) -> String {
    let mut script = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
    let Some(filter) = filter else {
        return script;
    };
    let set = |nets: Vec<&IpNet>| {
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let v4: Vec<&IpNet> = filter
        .allow
        .iter()
        .filter(|net| matches!(net, IpNet::V4(_)))
        .collect();
    let v6: Vec<&IpNet> = filter
        .allow
        .iter()
        .filter(|net| matches!(net, IpNet::V6(_)))
        .collect();
    let port = filter.port;
    let v4_rule = if v4.is_empty() {
        format!("meta nfproto ipv4 tcp dport {port} drop")
    } else {
        format!("tcp dport {port} ip saddr != {{ {} }} drop", set(v4))
    };
    let v6_rule = if v6.is_empty() {
        format!("meta nfproto ipv6 tcp dport {port} drop")
    } else {
        format!("tcp dport {port} ip6 saddr != {{ {} }} drop", set(v6))
    };
    script.push_str(&format!(
        "table {TABLE} {{\n\
         \tcomment \"kreach: sources allowed to reach the EXTERNAL port (listeners.external.allow); managed by kreach-agent\"\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiif \"lo\" accept\n\
         \t\t{v4_rule}\n\
         \t\t{v6_rule}\n\
         \t}}\n\
         }}\n"
    ));
    script
}

/// Make the host's table match `filter`, using the `nft` at `program`; on success, the check to
/// report (what is now in force), read back from the kernel.
pub fn enforce(
    program: &Path,
    filter: Option<&ExternalFilter>,
) -> Result<GateCheck, FirewallError> {
    run(program, &["-f", "-"], Some(&ruleset(filter)))?;
    let Some(filter) = filter else {
        tracing::info!(
            table = TABLE,
            "removed the EXTERNAL filter: public access is disabled"
        );
        return Ok(GateCheck::pass(
            "firewall",
            format!("no EXTERNAL filter (public access disabled; table {TABLE} removed)"),
        ));
    };
    let listing = run(program, &["list", "table", "inet", "kreach"], None)?;
    if !listing.contains(&format!("tcp dport {}", filter.port)) {
        return Err(FirewallError::NotInForce {
            port: filter.port,
            listing: listing.trim().replace('\n', " "),
        });
    }
    let allowed = filter
        .allow
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(table = TABLE, port = filter.port, allow = %allowed, "EXTERNAL filter in force");
    Ok(GateCheck::pass(
        "firewall",
        format!(
            "nftables table {TABLE} drops tcp/{} from every source outside {allowed}",
            filter.port
        ),
    ))
}

/// How the agent reaches the kernel's packet filter: [`Nft`] in the agent; a recording fake in
/// the engine's unit tests.
pub trait PacketFilter: Send + Sync {
    /// Make table `inet kreach` match `filter` (None: remove it); the check, read back.
    fn enforce(&self, filter: Option<&ExternalFilter>) -> Result<GateCheck, FirewallError>;
    /// Whether table `inet kreach` is in the kernel now.
    fn present(&self) -> bool;
}

/// The `nft` binary (found on PATH by default).
#[derive(Debug, Clone)]
pub struct Nft {
    pub program: std::path::PathBuf,
}

impl Default for Nft {
    fn default() -> Nft {
        Nft {
            program: NFT.into(),
        }
    }
}

impl PacketFilter for Nft {
    fn enforce(&self, filter: Option<&ExternalFilter>) -> Result<GateCheck, FirewallError> {
        enforce(&self.program, filter)
    }
    fn present(&self) -> bool {
        run(&self.program, &["list", "table", "inet", "kreach"], None).is_ok()
    }
}

/// What the agent's apply does: on a broker whose config enables the firewall, enforce the node's
/// filter; otherwise nothing (`None`).
pub fn enforce_for(
    config: &AgentConfig,
    packet_filter: &dyn PacketFilter,
    node: &NodeSpec,
) -> Result<Option<GateCheck>, FirewallError> {
    match (config.manage.firewall, &node.role) {
        (FirewallKind::Nftables, NodeRole::Broker { .. }) => packet_filter
            .enforce(node.external_filter.as_ref())
            .map(Some),
        _ => Ok(None),
    }
}

/// What the filter of `node` is, for the node's status (what `enforce_for` would put in force).
pub fn describe(config: &AgentConfig, node: &NodeSpec) -> String {
    match (config.manage.firewall, &node.role, &node.external_filter) {
        (FirewallKind::Nftables, NodeRole::Broker { .. }, Some(filter)) => format!(
            "nftables: tcp/{} only from {}",
            filter.port,
            filter
                .allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (FirewallKind::Nftables, NodeRole::Broker { .. }, None) => {
            "nftables: no filter (public access disabled)".to_string()
        }
        _ => "not managed".to_string(),
    }
}

/// Drift repair for the filter: on a broker whose config enables the firewall, put the table back
/// when it is missing while a filter is desired (a reboot, `nft flush ruleset`), or remove it when
/// it is there while none is. `Ok(Some(what))` when something was repaired.
pub fn repair(
    config: &AgentConfig,
    packet_filter: &dyn PacketFilter,
    node: &NodeSpec,
) -> Result<Option<String>, FirewallError> {
    if config.manage.firewall != FirewallKind::Nftables
        || !matches!(node.role, NodeRole::Broker { .. })
    {
        return Ok(None);
    }
    match (&node.external_filter, packet_filter.present()) {
        (Some(filter), false) => {
            tracing::warn!(node = %config.node, table = TABLE, "the EXTERNAL filter is missing (a reboot or a flushed ruleset?); putting it back");
            packet_filter
                .enforce(Some(filter))
                .map(|check| Some(check.to_string()))
        }
        (None, true) => {
            tracing::warn!(node = %config.node, table = TABLE, "table {TABLE} is there but public access is disabled; removing it");
            packet_filter
                .enforce(None)
                .map(|check| Some(check.to_string()))
        }
        _ => Ok(None),
    }
}

/// Put back the filter of the last applied state (after a rollback or a failed write), so the
/// filter and Kafka's listeners stay from the same release. Errors are logged: the rollback itself
/// must go on.
pub fn restore_previous(
    config: &AgentConfig,
    packet_filter: &dyn PacketFilter,
    previous: Option<&NodeSpec>,
) {
    let Some(previous) = previous else {
        return;
    };
    if let Err(error) = enforce_for(config, packet_filter, previous) {
        tracing::error!(node = %config.node, "cannot restore the previous EXTERNAL filter: {error}");
    }
}

/// The `nft` binary, found on PATH.
pub const NFT: &str = "nft";

fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as nft's own error below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| FirewallError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(FirewallError::Failed {
            program: program.display().to_string(),
            args: args.join(" "),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(port: u16, allow: &[&str]) -> ExternalFilter {
        ExternalFilter {
            port,
            allow: allow.iter().map(|cidr| cidr.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction_and_drops_other_sources() {
        let script = ruleset(Some(&filter(9093, &["198.19.0.0/24", "203.0.113.7/32"])));
        assert!(
            script.starts_with(
                "table inet kreach {}\ndelete table inet kreach\ntable inet kreach {\n"
            ),
            "{script}"
        );
        assert!(script.contains("type filter hook input priority filter; policy accept;"));
        // The host's own connections (the agent's probe of 0.0.0.0:9093 goes to 127.0.0.1) pass.
        assert!(
            script.find("iif \"lo\" accept").expect("loopback accepted")
                < script.find("tcp dport 9093").expect("the port's rule"),
            "{script}"
        );
        assert!(
            script.contains("tcp dport 9093 ip saddr != { 198.19.0.0/24, 203.0.113.7/32 } drop"),
            "{script}"
        );
        // No IPv6 source is allowed, so IPv6 on the port is dropped.
        assert!(
            script.contains("meta nfproto ipv6 tcp dport 9093 drop"),
            "{script}"
        );
        // Nothing but kreach's own table is named.
        for line in script.lines() {
            if line.starts_with("table") || line.starts_with("delete") {
                assert!(line.contains("inet kreach"), "{line}");
            }
        }
    }

    #[test]
    fn ipv6_cidrs_get_their_own_rule() {
        let script = ruleset(Some(&filter(19093, &["2001:db8::/32"])));
        assert!(
            script.contains("tcp dport 19093 ip6 saddr != { 2001:db8::/32 } drop"),
            "{script}"
        );
        assert!(
            script.contains("meta nfproto ipv4 tcp dport 19093 drop"),
            "{script}"
        );
    }

    #[test]
    fn disabled_public_access_removes_the_table() {
        assert_eq!(
            ruleset(None),
            "table inet kreach {}\ndelete table inet kreach\n"
        );
    }

    #[test]
    fn a_missing_nft_is_a_clear_error() {
        let error = enforce(Path::new("/nonexistent/nft"), None).unwrap_err();
        assert!(
            error.to_string().contains("apt-get install nftables"),
            "{error}"
        );
    }
}
