//! What the Kafka probes observe, and the gates that decide over it.
//!
//! Owns the observed cluster shape ([`ClusterMetadata`], [`TopicMinIsr`]) as plain values, and the
//! pure decisions over them. Does not own the network: the agent's `kafka` module fills these
//! values from a broker's answers, and no Kafka wire type appears here, so the coordinator and the
//! tests can build them by hand.

use std::collections::BTreeMap;

/// One broker as a listener's Metadata answer lists it: where clients are told to connect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdvertisedBroker {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

impl AdvertisedBroker {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn endpoint(&self) -> String {
        endpoint_text(&self.host, self.port)
    }
}

/// One partition's replica state, from Metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    /// -1 when the partition has no leader (offline).
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Replicas the broker reports as offline (Metadata v5+); empty when unknown.
    #[serde(default)]
    pub offline_replicas: Vec<i32>,
}

/// What one listener's Metadata answer says about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    /// None when the broker reports no controller (-1) or the Metadata version has none.
    pub controller_id: Option<i32>,
    pub brokers: Vec<AdvertisedBroker>,
    pub partitions: Vec<PartitionState>,
    /// Topics the broker answered with an error instead of partitions (e.g. no leader yet).
    #[serde(default)]
    pub topic_errors: Vec<String>,
}

/// Kafka's documented default for `min.insync.replicas`.
pub const DEFAULT_MIN_INSYNC_REPLICAS: i32 = 1;

/// `min.insync.replicas` per topic, as the broker answered DescribeConfigs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicMinIsr {
    pub by_topic: BTreeMap<String, i32>,
    /// Why some or all topics use Kafka's default instead of an answer (the request is not
    /// supported, or the broker returned an error for a topic). Shown in the check detail.
    pub notes: Vec<String>,
}

impl TopicMinIsr {
    /// The topic's value, or Kafka's default (1) when the broker did not say.
    pub fn get(&self, topic: &str) -> i32 {
        self.by_topic
            .get(topic)
            .copied()
            .unwrap_or(DEFAULT_MIN_INSYNC_REPLICAS)
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn endpoint_text(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}
