//! Golden files for the `server.properties` listener editor: each case under
//! `tests/golden/properties/<case>/` holds a hand-written `input.properties` and the
//! `expected.properties` an operator should see after kreach applies the settings given here.

use std::path::PathBuf;

use kreach_domain::properties::{
    apply_listeners, check_kafka_rules, get_property, ListenerSettings, ListenerSpec,
};

fn golden(case: &str, file: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/golden/properties",
        case,
        file,
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn listener(name: &str, bind: &str, port: u16, advertised: &str, protocol: &str) -> ListenerSpec {
    ListenerSpec {
        name: name.into(),
        bind_host: bind.into(),
        port,
        advertised_host: advertised.into(),
        security_protocol: protocol.into(),
        tls: None,
        sasl_mechanism: None,
    }
}

fn internal() -> ListenerSpec {
    listener("INTERNAL", "0.0.0.0", 9092, "10.0.1.24", "PLAINTEXT")
}

fn external() -> ListenerSpec {
    listener("EXTERNAL", "0.0.0.0", 9093, "47.96.1.24", "SASL_SSL")
}

fn settings(owned: &[&str], listeners: Vec<ListenerSpec>) -> ListenerSettings {
    ListenerSettings {
        owned_names: owned.iter().map(|s| s.to_string()).collect(),
        listeners,
        inter_broker_listener: "INTERNAL".into(),
    }
}

/// Applies `desired` to the case's input, compares with its expected output byte for byte, and
/// checks that a second apply changes nothing.
fn check(case: &str, desired: &ListenerSettings, changed: &[&str]) {
    let input = golden(case, "input.properties");
    let expected = golden(case, "expected.properties");
    let edit = apply_listeners(&input, desired).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(
        edit.content, expected,
        "{case}: rendered output differs from expected.properties"
    );
    assert_eq!(edit.changed_keys, changed, "{case}: changed keys");
    assert!(
        check_kafka_rules(&expected).is_empty(),
        "{case}: expected output breaks Kafka's rules"
    );
    let again = apply_listeners(&edit.content, desired).unwrap();
    assert_eq!(again.content, edit.content, "{case}: second apply changed");
    assert!(
        again.changed_keys.is_empty(),
        "{case}: second apply changed keys"
    );
}

const ALL_KEYS: [&str; 4] = [
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
];

#[test]
fn zookeeper_stock_config_gets_keys_appended_and_default_plaintext_replaced() {
    // The stock file relies on Kafka's default PLAINTEXT://:9092; owning PLAINTEXT lets kreach
    // replace it instead of clashing with it on port 9092.
    let desired = settings(&["PLAINTEXT", "INTERNAL", "EXTERNAL"], vec![internal()]);
    check("zookeeper_stock", &desired, &ALL_KEYS);
}

#[test]
fn kraft_controller_listener_stays_in_place() {
    let desired = settings(&["PLAINTEXT", "INTERNAL", "EXTERNAL"], vec![internal()]);
    check("kraft_controller", &desired, &ALL_KEYS);
}

#[test]
fn enabling_external_adds_its_entries_after_internal() {
    let desired = settings(&["INTERNAL", "EXTERNAL"], vec![internal(), external()]);
    check("enable_external", &desired, &ALL_KEYS[..3]);
}

#[test]
fn disabling_external_removes_only_its_entries() {
    let desired = settings(&["INTERNAL", "EXTERNAL"], vec![internal()]);
    check("disable_external", &desired, &ALL_KEYS[..3]);
}

#[test]
fn colon_and_whitespace_separators_are_kept() {
    let desired = settings(&["INTERNAL", "EXTERNAL"], vec![internal(), external()]);
    check("separators", &desired, &ALL_KEYS[..3]);
}

#[test]
fn managed_key_over_continuation_lines_is_rewritten_onto_one_line() {
    let desired = settings(&["INTERNAL", "EXTERNAL"], vec![internal()]);
    check("continuation", &desired, &ALL_KEYS[..3]);
}

#[test]
fn crlf_line_endings_are_kept_and_used_for_appended_keys() {
    let desired = settings(&["INTERNAL", "EXTERNAL"], vec![internal(), external()]);
    check("crlf", &desired, &ALL_KEYS);
}

#[test]
fn missing_final_newline_is_added_only_when_appending() {
    let desired = settings(&["INTERNAL", "EXTERNAL"], vec![internal()]);
    check("no_final_newline", &desired, &ALL_KEYS[3..]);
    check("no_final_newline_managed", &desired, &ALL_KEYS[1..2]);
}

#[test]
fn duplicated_key_edits_the_last_definition() {
    let desired = settings(&["INTERNAL", "EXTERNAL"], vec![internal()]);
    check("duplicate_key", &desired, &ALL_KEYS[1..2]);
}

#[test]
fn escapes_in_unrelated_keys_are_untouched() {
    let desired = settings(
        &["INTERNAL"],
        vec![listener("INTERNAL", "::", 9092, "fd00::24", "PLAINTEXT")],
    );
    check("escapes_untouched", &desired, &ALL_KEYS[1..2]);
    let output = golden("escapes_untouched", "expected.properties");
    assert_eq!(
        get_property(&output, "weird key=name").unwrap().as_deref(),
        Some("value with é and \ttab")
    );
    assert_eq!(
        get_property(&output, "sasl.jaas.config").unwrap().as_deref(),
        Some(
            "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"sécret\";"
        )
    );
}

#[test]
fn already_applied_settings_leave_every_byte_alone() {
    for case in ["enable_external", "crlf", "continuation", "separators"] {
        let expected = golden(case, "expected.properties");
        let desired = match case {
            "continuation" => settings(&["INTERNAL", "EXTERNAL"], vec![internal()]),
            _ => settings(&["INTERNAL", "EXTERNAL"], vec![internal(), external()]),
        };
        let edit = apply_listeners(&expected, &desired).unwrap();
        assert_eq!(edit.content, expected, "{case}");
        assert!(edit.changed_keys.is_empty(), "{case}");
    }
}
