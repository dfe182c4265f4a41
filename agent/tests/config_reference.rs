//! docs/agent-config.md against the agent's config parser (agent/src/config.rs) and the packaged
//! example (packaging/agent.toml.example): the same keys in all three, the documented defaults are
//! the parser's, the documented values are accepted.

#[path = "../../coordinator/tests/reference_support/mod.rs"]
mod reference_support;

use kreach_agent::config::AgentConfig;

/// Every table present, so that each key can be set on its own.
const BASE: &str = r#"
node = "probe"

[manage]

[service_manager]

[reachability]

[coordinator]
url = "https://probe-coordinator:7443"
ca = "/probe/ca.pem"
cert = "/probe/node.pem"
key = "/probe/node.key"
"#;

#[test]
fn the_agent_config_reference_matches_the_parser_and_the_example() {
    reference_support::check_config_reference(
        "agent-config.md",
        include_str!("../../packaging/agent.toml.example"),
        &[
            BASE,
            &BASE.replace("[service_manager]", "[service_manager]\nkind = \"command\""),
        ],
        &|text| AgentConfig::parse(text).map(|config| format!("{config:?}")),
    );
}
