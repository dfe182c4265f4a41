//! Kafka's startup rules and malformed input: `apply_listeners` must refuse to produce a file
//! Kafka would reject, and say why.

use kreach_domain::properties::{
    apply_listeners, check_kafka_rules, get_property, ListenerSettings, ListenerSpec,
    PropertiesError,
};

fn listener(name: &str, port: u16, advertised: &str) -> ListenerSpec {
    ListenerSpec {
        name: name.into(),
        bind_host: "0.0.0.0".into(),
        port,
        advertised_host: advertised.into(),
        security_protocol: "PLAINTEXT".into(),
        tls: None,
        sasl_mechanism: None,
    }
}

fn settings(listeners: Vec<ListenerSpec>, inter: &str) -> ListenerSettings {
    ListenerSettings {
        owned_names: vec!["INTERNAL".into(), "EXTERNAL".into()],
        listeners,
        inter_broker_listener: inter.into(),
    }
}

fn violations(result: Result<impl std::fmt::Debug, PropertiesError>) -> Vec<String> {
    match result {
        Err(PropertiesError::KafkaRules { violations }) => violations,
        other => panic!("expected a Kafka rule violation, got {other:?}"),
    }
}

const KRAFT: &str = "process.roles=broker,controller\n\
listeners=INTERNAL://0.0.0.0:9092,CONTROLLER://:9093\n\
advertised.listeners=INTERNAL://10.0.1.24:9092\n\
controller.listener.names=CONTROLLER\n\
listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
inter.broker.listener.name=INTERNAL\n";

#[test]
fn port_clash_with_controller_is_refused() {
    let desired = settings(
        vec![
            listener("INTERNAL", 9092, "10.0.1.24"),
            listener("EXTERNAL", 9093, "47.96.1.24"),
        ],
        "INTERNAL",
    );
    assert_eq!(
        violations(apply_listeners(KRAFT, &desired)),
        vec!["listeners (line 2): EXTERNAL and CONTROLLER both use port 9093"]
    );
}

#[test]
fn port_zero_never_clashes() {
    let content = "listeners=PLAINTEXT://:0,SSL://:0\nadvertised.listeners=PLAINTEXT://h:0\n";
    assert_eq!(check_kafka_rules(content), Vec::<String>::new());
}

#[test]
fn inter_broker_listener_must_be_advertised() {
    // kreach stops owning the listener the brokers talk over without naming a new one.
    let content = "listeners=INTERNAL://0.0.0.0:9092,REPLICATION://0.0.0.0:9095\n\
advertised.listeners=INTERNAL://10.0.1.24:9092\n\
listener.security.protocol.map=INTERNAL:PLAINTEXT,REPLICATION:PLAINTEXT\n\
inter.broker.listener.name=REPLICATION\n";
    assert_eq!(
        check_kafka_rules(content),
        vec![
            "inter.broker.listener.name (line 4): inter-broker listener REPLICATION is not in advertised.listeners (line 2)"
        ]
    );
    let desired = settings(vec![listener("EXTERNAL", 9093, "47.96.1.24")], "");
    let found = violations(apply_listeners(content, &desired));
    assert!(
        found
            .iter()
            .any(|v| v.contains("REPLICATION is not in advertised.listeners")),
        "{found:?}"
    );
}

#[test]
fn default_inter_broker_listener_is_plaintext() {
    // Without inter.broker.listener.name Kafka uses the listener named PLAINTEXT.
    let content = "listeners=INTERNAL://0.0.0.0:9092\nlistener.security.protocol.map=INTERNAL:PLAINTEXT\nadvertised.listeners=INTERNAL://h:9092\n";
    assert_eq!(
        check_kafka_rules(content),
        vec!["inter.broker.listener.name (not set, so PLAINTEXT): inter-broker listener PLAINTEXT is not in advertised.listeners (line 3)"]
    );
}

#[test]
fn inter_broker_listener_and_protocol_cannot_both_be_set() {
    let content = "security.inter.broker.protocol=PLAINTEXT\n";
    let desired = settings(vec![listener("INTERNAL", 9092, "10.0.1.24")], "INTERNAL");
    let found = violations(apply_listeners(content, &desired));
    assert!(
        found.contains(&"inter.broker.listener.name (line 5) and security.inter.broker.protocol (line 1): only one may be set; remove security.inter.broker.protocol".to_string()),
        "{found:?}"
    );
}

#[test]
fn inter_broker_protocol_naming_the_listener_is_left_alone() {
    // security.inter.broker.protocol=PLAINTEXT already selects the PLAINTEXT listener; writing
    // inter.broker.listener.name as well would make Kafka refuse to start.
    let content = "security.inter.broker.protocol=PLAINTEXT\n";
    let mut desired = settings(vec![listener("PLAINTEXT", 9092, "10.0.1.24")], "PLAINTEXT");
    desired.owned_names.push("PLAINTEXT".into());
    let edit = apply_listeners(content, &desired).unwrap();
    assert_eq!(
        edit.content,
        "security.inter.broker.protocol=PLAINTEXT\n\
listeners=PLAINTEXT://0.0.0.0:9092\n\
advertised.listeners=PLAINTEXT://10.0.1.24:9092\n"
    );
}

#[test]
fn controller_listener_cannot_carry_inter_broker_traffic() {
    let content = KRAFT.replace(
        "inter.broker.listener.name=INTERNAL",
        "inter.broker.listener.name=controller",
    );
    assert_eq!(
        check_kafka_rules(&content),
        vec!["inter.broker.listener.name (line 6): CONTROLLER is a controller listener (controller.listener.names); brokers cannot use it among themselves"]
    );
}

#[test]
fn advertising_the_wildcard_address_is_refused() {
    // Port 9094: an empty file still has Kafka's default PLAINTEXT://:9092.
    let desired = settings(vec![listener("INTERNAL", 9094, "0.0.0.0")], "INTERNAL");
    let found = violations(apply_listeners("", &desired));
    assert_eq!(
        found,
        vec!["advertised.listeners (line 2): INTERNAL advertises 0.0.0.0, which clients cannot connect to; advertise a routable host"]
    );
    // Without advertised.listeners Kafka advertises `listeners`, wildcard included.
    assert_eq!(
        check_kafka_rules("listeners=PLAINTEXT://0.0.0.0:9092\n"),
        vec!["advertised.listeners (not set, so listeners): PLAINTEXT advertises 0.0.0.0, which clients cannot connect to; advertise a routable host"]
    );
}

#[test]
fn unmapped_controller_listener_is_reported_when_the_map_is_created() {
    // CONTROLLER had no protocol before either; kreach cannot guess one and says so.
    let content = "process.roles=broker,controller\ncontroller.listener.names=CONTROLLER\nlisteners=CONTROLLER://:9094\n";
    let desired = settings(vec![listener("INTERNAL", 9092, "10.0.1.24")], "INTERNAL");
    let found = violations(apply_listeners(content, &desired));
    assert_eq!(
        found,
        vec!["listener.security.protocol.map (line 5): listener CONTROLLER has no entry"]
    );
    assert_eq!(
        check_kafka_rules(content),
        vec![
            "listener.security.protocol.map (not set): listener CONTROLLER is not a security protocol name, so it needs an entry CONTROLLER:PROTOCOL",
            "inter.broker.listener.name (not set, so PLAINTEXT): inter-broker listener PLAINTEXT is not in advertised.listeners (not set, so listeners)",
        ]
    );
}

#[test]
fn advertised_listener_must_be_bound_and_names_unique() {
    let content = "listeners=INTERNAL://:9092,internal://:9093\n\
advertised.listeners=INTERNAL://h:9092,EXTERNAL://h:9093\n\
listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:FOO\n\
inter.broker.listener.name=INTERNAL\n";
    assert_eq!(
        check_kafka_rules(content),
        vec![
            "listeners (line 1): listener INTERNAL is defined twice",
            "advertised.listeners (line 2): EXTERNAL is not in listeners",
            "listener.security.protocol.map (line 3): EXTERNAL maps to unknown security protocol FOO (known: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)",
        ]
    );
}

#[test]
fn controller_only_nodes_skip_broker_rules() {
    let content = "process.roles=controller\ncontroller.listener.names=CONTROLLER\nlisteners=CONTROLLER://0.0.0.0:9093\nlistener.security.protocol.map=CONTROLLER:PLAINTEXT\n";
    assert_eq!(check_kafka_rules(content), Vec::<String>::new());
}

#[test]
fn malformed_listener_names_key_line_and_entry() {
    let content = "# c\nlisteners=INTERNAL://0.0.0.0:9092, EXTERNAL:9093\n";
    let desired = settings(vec![listener("INTERNAL", 9092, "10.0.1.24")], "INTERNAL");
    assert_eq!(
        apply_listeners(content, &desired),
        Err(PropertiesError::MalformedListener {
            key: "listeners".into(),
            line: 2,
            entry: "EXTERNAL:9093".into(),
            reason: "no `://`".into(),
        })
    );
    let error = apply_listeners("advertised.listeners=INTERNAL://h:70000\n", &desired).unwrap_err();
    assert_eq!(
        error.to_string(),
        "server.properties line 1: advertised.listeners entry `INTERNAL://h:70000` is malformed (port 70000 is not in 0-65535); expected NAME://host:port"
    );
    assert_eq!(
        apply_listeners("listener.security.protocol.map=INTERNAL\n", &desired),
        Err(PropertiesError::MalformedProtocolMapEntry {
            key: "listener.security.protocol.map".into(),
            line: 1,
            entry: "INTERNAL".into(),
        })
    );
}

#[test]
fn malformed_escape_anywhere_is_refused() {
    let desired = settings(vec![listener("INTERNAL", 9092, "10.0.1.24")], "INTERNAL");
    assert_eq!(
        apply_listeners("a=1\nssl.key.password=\\u00zz\n", &desired),
        Err(PropertiesError::MalformedEscape {
            key: "ssl.key.password".into(),
            line: 2
        })
    );
}

#[test]
fn inconsistent_settings_are_refused() {
    let cases = [
        (
            settings(vec![listener("INTERNAL", 9092, "h")], "EXTERNAL"),
            "inter-broker listener `EXTERNAL` is not one of the desired listeners",
        ),
        (
            settings(
                vec![
                    listener("INTERNAL", 9092, "h"),
                    listener("internal", 9093, "h"),
                ],
                "INTERNAL",
            ),
            "listener INTERNAL is listed twice",
        ),
        (
            settings(vec![listener("IN TERNAL", 9092, "h")], ""),
            "listener name `IN TERNAL` must be letters, digits, `_` and `-` only",
        ),
        (
            settings(vec![listener("INTERNAL", 9092, "h/x")], ""),
            "listener INTERNAL: advertised_host `h/x` is not a hostname or IP address",
        ),
    ];
    for (desired, message) in cases {
        assert_eq!(
            apply_listeners("", &desired),
            Err(PropertiesError::InvalidSettings(message.into()))
        );
    }
    let mut bad_protocol = settings(vec![listener("INTERNAL", 9092, "h")], "");
    bad_protocol.listeners[0].security_protocol = "TLS".into();
    assert!(matches!(
        apply_listeners("", &bad_protocol),
        Err(PropertiesError::InvalidSettings(m)) if m.contains("`TLS` is not one of")
    ));
}

#[test]
fn desired_listeners_are_owned_even_if_not_listed() {
    let mut desired = settings(vec![listener("INTERNAL", 9092, "10.0.1.24")], "INTERNAL");
    desired.owned_names.clear();
    let content = "listeners=INTERNAL://:1\nadvertised.listeners=INTERNAL://old:1\nlistener.security.protocol.map=INTERNAL:PLAINTEXT\ninter.broker.listener.name=INTERNAL\n";
    let edit = apply_listeners(content, &desired).unwrap();
    assert_eq!(
        get_property(&edit.content, "listeners").unwrap().as_deref(),
        Some("INTERNAL://0.0.0.0:9092")
    );
}

#[test]
fn get_property_reads_absent_keys_as_none() {
    assert_eq!(
        get_property("#listeners=PLAINTEXT://:9092\n", "listeners"),
        Ok(None)
    );
}
