//! Fuzzes the cluster-spec parser and validator (`ClusterSpec::parse`) and the per-node desired
//! state derived from it (`desired::all_node_specs`): whatever the text, nothing panics, errors
//! render, and a spec that passes validation yields desired state the editors accept — every
//! node renders, its hosts entries are a valid block, and a broker's listener settings are
//! consistent (the editor may only refuse them over Kafka's own rules for the file at hand).
#![no_main]

use kreach_domain::desired::{all_node_specs, render_node};
use kreach_domain::hosts::apply_block;
use kreach_domain::properties::{apply_listeners, owned_values, PropertiesError};
use kreach_domain::spec::ClusterSpec;
use libfuzzer_sys::fuzz_target;

const STOCK_PROPERTIES: &str = "broker.id=1\nlisteners=PLAINTEXT://:9092\nlog.dirs=/tmp/kafka-logs\n";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let spec = match ClusterSpec::parse(&text) {
        Ok(spec) => spec,
        Err(errors) => {
            let message = errors.to_string();
            assert!(!errors.0.is_empty(), "a refused spec must name at least one error");
            let _ = message;
            return;
        }
    };
    // Parsing is deterministic.
    assert_eq!(ClusterSpec::parse(&text).as_ref(), Ok(&spec));

    let nodes = all_node_specs(&spec);
    assert_eq!(nodes.len(), spec.nodes().len());
    for node in &nodes {
        let _ = node.describe();
        if let Err(error) = render_node(node) {
            panic!("a validated spec renders node {} with an error: {error}", node.node);
        }
        if !node.hosts_entries.is_empty() {
            if let Err(error) = apply_block("", &node.cluster, &node.hosts_entries) {
                panic!("a validated spec gives node {} hosts entries the editor refuses: {error}", node.node);
            }
        }
        if let Some(settings) = &node.listeners {
            owned_values(settings).expect("a validated spec gives consistent listener settings");
            match apply_listeners(STOCK_PROPERTIES, settings) {
                Ok(edit) => {
                    let again = apply_listeners(&edit.content, settings)
                        .expect("re-applying a validated spec's settings must succeed");
                    assert_eq!(again.content, edit.content);
                }
                Err(PropertiesError::KafkaRules { .. }) => {}
                Err(error) => panic!(
                    "a validated spec gives node {} listener settings the editor refuses: {error}",
                    node.node
                ),
            }
        }
    }
});
