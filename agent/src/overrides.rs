//! Dynamic broker configs that hide kreach's edits (issue 13): Kafka keeps configs set over the
//! Kafka protocol (IncrementalAlterConfigs, `kafka-configs.sh --alter`) in the cluster's metadata,
//! and a broker uses such a per-broker or cluster-wide value instead of what server.properties
//! says. An override of `advertised.listeners` (or any key kreach owns) makes kreach's edit of the
//! file silently ineffective.
//!
//! Owns asking the broker (DescribeConfigs of its own broker resource, over its PLAINTEXT
//! listener) for the keys kreach owns and, on the operator's word, deleting them, and the daemon's
//! periodic look ([`watch`]) whose findings go into the node's health. Which config is an
//! override that matters is `kreach_domain::properties::hidden_by_dynamic`'s pure decision.

use std::time::Duration;

use kreach_domain::desired::NodeRole;
use kreach_domain::properties::{self, DynamicOverride};

use crate::config::AgentConfig;
use crate::health::HealthBoard;
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

/// A broker's agent with the Kafka probe: look for overrides every `period` (jittered, from a
/// random phase) until `cancel`, against the applied state the reconciler holds; the node's
/// health lists each one found (a new one is logged once) and drops it once it is gone.
pub async fn watch(
    config: AgentConfig,
    applied: crate::reconciler::AppliedWatch,
    health: std::sync::Arc<HealthBoard>,
    period: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut timer = crate::jitter::PeriodicTimer::new(period);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = timer.tick() => {}
        }
        let config_for_check = config.clone();
        let held = applied.borrow().clone();
        let found = tokio::task::spawn_blocking(move || find(&config_for_check, held.as_ref()));
        let found = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            found = found => found,
        };
        let found = match found {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                tracing::debug!(node = %config.node, "dynamic broker configs not checked: {error}");
                continue;
            }
            Err(error) => {
                tracing::error!(node = %config.node, "the dynamic-config check failed: {error}");
                continue;
            }
        };
        let sentences: Vec<String> = found
            .iter()
            .map(|o| format!("{o}; {}", remedy(&config.node, o)))
            .collect();
        let node = config.node.as_str();
        crate::health::update(&health, |health| {
            for sentence in &sentences {
                if !health.dynamic_overrides.contains(sentence) {
                    tracing::warn!(node = %node, "dynamic override: {sentence}");
                }
            }
            health.dynamic_overrides = sentences;
        });
    }
}
