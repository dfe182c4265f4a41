//! Dynamic broker configs that hide kreach's edits (issue 13): Kafka keeps configs set over the
//! Kafka protocol (IncrementalAlterConfigs, `kafka-configs.sh --alter`) in the cluster's metadata,
//! and a broker uses such a per-broker or cluster-wide value instead of what server.properties
//! says. An override of `advertised.listeners` (or any key kreach owns) makes kreach's edit of the
//! file silently ineffective.
//!
//! Owns asking the broker (DescribeConfigs of its own broker resource, over its PLAINTEXT
//! listener) for the keys kreach owns and, on the operator's word, deleting them. Which config is
//! an override that matters is `kreach_domain::properties::hidden_by_dynamic`'s pure decision.

use std::time::Duration;

use kreach_domain::desired::NodeRole;
use kreach_domain::properties::{self, DynamicOverride};

use crate::config::AgentConfig;
use crate::state::AppliedState;
use crate::verify::KafkaProbe;

/// Bounds the connect and each request.
const TIMEOUT: Duration = Duration::from_secs(5);

/// This broker's listeners as last applied, its id and server.properties' text; None on a node
/// that is not a broker with applied listener settings.
fn applied_broker(
    config: &AgentConfig,
    applied: Option<&AppliedState>,
) -> Result<Option<(i32, properties::ListenerSettings, String)>, String> {
    let Some(path) = &config.manage.kafka_properties else {
        return Ok(None);
    };
    let Some(applied) = applied else {
        return Ok(None);
    };
    let (NodeRole::Broker { id }, Some(settings)) =
        (&applied.node_spec.role, &applied.node_spec.listeners)
    else {
        return Ok(None);
    };
    let file = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    Ok(Some((
        *id,
        crate::kafka_tls::localize(settings, config),
        file,
    )))
}

/// The dynamic overrides of keys kreach owns that differ from server.properties (empty on a node
/// that is not a broker kreach has configured).
pub fn find(
    config: &AgentConfig,
    applied: Option<&AppliedState>,
) -> Result<Vec<DynamicOverride>, String> {
    let Some((id, settings, file)) = applied_broker(config, applied)? else {
        return Ok(Vec::new());
    };
    let probe = KafkaProbe::default();
    let (mut connection, _) = probe.plaintext_connection(&settings.listeners, TIMEOUT)?;
    let configs = connection
        .broker_configs(id)
        .map_err(|error| error.to_string())?;
    Ok(properties::hidden_by_dynamic(&settings, &file, &configs))
}

/// Delete `overrides` (per-broker ones from this broker's resource; a cluster-wide default is
/// left alone and named: deleting it changes every broker, which is for the operator to do).
/// Returns what was deleted.
pub fn delete(
    config: &AgentConfig,
    applied: Option<&AppliedState>,
    overrides: &[DynamicOverride],
) -> Result<Vec<String>, String> {
    let Some((id, settings, _)) = applied_broker(config, applied)? else {
        return Ok(Vec::new());
    };
    let keys: Vec<(String, Option<String>)> = overrides
        .iter()
        .filter(|o| o.source == "DYNAMIC_BROKER_CONFIG")
        .map(|o| (o.key.clone(), None))
        .collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let probe = KafkaProbe::default();
    let (mut connection, _) = probe.plaintext_connection(&settings.listeners, TIMEOUT)?;
    connection
        .alter_broker_configs(id, &keys)
        .map_err(|error| error.to_string())?;
    Ok(keys.into_iter().map(|(key, _)| key).collect())
}

/// How the operator deletes an override: on this host with the agent, or with Kafka's own tool
/// for a cluster-wide default.
pub fn remedy(node: &str, found: &DynamicOverride) -> String {
    if found.source == "DYNAMIC_BROKER_CONFIG" {
        format!("delete it with `kreach-agent overrides --delete` on {node}")
    } else {
        format!(
            "a cluster-wide default: `kafka-configs.sh --bootstrap-server BROKER --entity-type brokers --entity-default --alter --delete-config {}` deletes it for every broker",
            found.key
        )
    }
}
