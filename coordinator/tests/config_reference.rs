//! docs/coordinator-config.md against the coordinator's config parser (coordinator/src/config.rs)
//! and the packaged example (packaging/coordinator.toml.example): the same keys in all three, the
//! documented defaults are the parser's, the documented values are accepted.

mod reference_support;

use kreach_coordinator::config::CoordinatorConfig;

const BASE: &str = r#"
[tls]
ca = "/probe/ca.pem"
cert = "/probe/coordinator.pem"
key = "/probe/coordinator.key"
"#;

#[test]
fn the_coordinator_config_reference_matches_the_parser_and_the_example() {
    reference_support::check_config_reference(
        "coordinator-config.md",
        include_str!("../../packaging/coordinator.toml.example"),
        &[BASE],
        &|text| CoordinatorConfig::parse(text).map(|config| format!("{config:?}")),
    );
}
