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

/// The `[store]` keys for etcd only are accepted with an etcd store.
const ETCD_BASE: &str = r#"
[tls]
ca = "/probe/ca.pem"
cert = "/probe/coordinator.pem"
key = "/probe/coordinator.key"
[store]
kind = "etcd"
endpoints = ["https://etcd-1:2379"]
ca = "/probe/etcd-ca.pem"
cert = "/probe/etcd-client.pem"
key = "/probe/etcd-client.key"
"#;

#[test]
fn the_coordinator_config_reference_matches_the_parser_and_the_example() {
    reference_support::check_config_reference(
        "coordinator-config.md",
        include_str!("../../packaging/coordinator.toml.example"),
        &[BASE, ETCD_BASE],
        &|text| CoordinatorConfig::parse(text).map(|config| format!("{config:?}")),
    );
}
