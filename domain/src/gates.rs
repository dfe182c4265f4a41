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
    /// Set when the broker supports DescribeConfigs but the request failed: the values are
    /// unknown, so a partition whose replication factor exceeds the default blocks the restart
    /// (guessing 1 could let a restart drop a partition below its real minimum).
    #[serde(default)]
    pub unreadable: Option<String>,
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

// ---------------------------------------------------------------------------------------------
// Checks and verdicts

/// Check names, as reported in the agent's check list and at the start of failure reasons.
pub const CHECK_SERVING: &str = "kafka serving";
pub const CHECK_ADVERTISED: &str = "advertised endpoint";
pub const CHECK_UNDER_REPLICATED: &str = "under-replicated partitions";
pub const CHECK_CLUSTER_HEALTH: &str = "cluster health";
pub const CHECK_MIN_ISR: &str = "min.insync.replicas";
pub const CHECK_CONTROLLER: &str = "controller";

/// One named check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl GateCheck {
    /// A check that passed: `name` and what it found.
    pub fn pass(name: &str, detail: impl Into<String>) -> GateCheck {
        GateCheck {
            name: name.to_string(),
            ok: true,
            detail: detail.into(),
        }
    }
    /// A check that failed: `name` and what it found.
    pub fn fail(name: &str, detail: impl Into<String>) -> GateCheck {
        GateCheck {
            name: name.to_string(),
            ok: false,
            detail: detail.into(),
        }
    }
}

impl GateCheck {
    /// A passed check named `name` whose finding is a whole sentence that starts with the name
    /// (`INTERNAL accepts connections on 127.0.0.1:9092`).
    pub fn sentence(name: &str, sentence: impl Into<String>) -> GateCheck {
        GateCheck::pass(name, sentence)
    }

    /// The check as one line for people: the sentence itself, or `name: detail`.
    pub fn line(&self) -> String {
        if self.detail.starts_with(&self.name) {
            self.detail.clone()
        } else {
            self.to_string()
        }
    }
}

impl std::fmt::Display for GateCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.detail)
    }
}

/// Every check of one gate. The gate passes when every check passed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateVerdict {
    pub checks: Vec<GateCheck>,
}

impl GateVerdict {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.ok)
    }

    /// The failed checks as one reason, `name: detail; name: detail`; None when the gate passed.
    pub fn failure_reason(&self) -> Option<String> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|check| !check.ok)
            .map(ToString::to_string)
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Which broker is this one

/// Whether two advertised hosts name the same thing: IP addresses by value, names
/// case-insensitively and without a trailing dot.
pub fn same_host(a: &str, b: &str) -> bool {
    let clean = |host: &str| {
        host.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase()
    };
    let (a, b) = (clean(a), clean(b));
    match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// What a listener's metadata says about the broker that should be at `desired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfInMetadata {
    /// A broker is advertised at the desired endpoint. `note` explains an id that differs from
    /// the spec's when nothing else claims the spec's id (tansu always answers as node 111).
    AtDesired { id: i32, note: Option<String> },
    /// The spec's broker id is advertised at another endpoint, or another broker holds the
    /// desired endpoint while the spec's id is elsewhere: the reason says which.
    Wrong { id: i32, advertised: String },
    /// Nothing is advertised at the desired endpoint and the spec's id is not listed.
    Missing,
}

/// Find this broker in `metadata`: by the endpoint it should advertise, then by the spec's id.
/// An id that differs from the spec's is accepted (and noted) unless the spec's id is listed at
/// another endpoint.
pub fn find_self(
    metadata: &ClusterMetadata,
    spec_id: i32,
    desired_host: &str,
    desired_port: u16,
) -> SelfInMetadata {
    let at_desired = metadata
        .brokers
        .iter()
        .find(|broker| broker.port == desired_port && same_host(&broker.host, desired_host));
    let spec_elsewhere = metadata.brokers.iter().find(|broker| {
        broker.id == spec_id
            && !(broker.port == desired_port && same_host(&broker.host, desired_host))
    });
    match (at_desired, spec_elsewhere) {
        (Some(broker), _) if broker.id == spec_id => SelfInMetadata::AtDesired {
            id: broker.id,
            note: None,
        },
        (_, Some(ours)) => SelfInMetadata::Wrong {
            id: ours.id,
            advertised: ours.endpoint(),
        },
        (Some(broker), None) => SelfInMetadata::AtDesired {
            id: broker.id,
            note: Some(format!(
                "answers as node {}; the spec calls it broker {spec_id}",
                broker.id
            )),
        },
        (None, None) => SelfInMetadata::Missing,
    }
}

/// The id this broker answers as in `metadata`, when it can be told: the broker at the advertised
/// endpoint, else the spec's id when listed, else the only broker listed.
pub fn self_id(
    metadata: &ClusterMetadata,
    spec_id: i32,
    advertised: Option<(&str, u16)>,
) -> Option<i32> {
    if let Some((host, port)) = advertised {
        if let Some(broker) = metadata
            .brokers
            .iter()
            .find(|b| b.port == port && same_host(&b.host, host))
        {
            return Some(broker.id);
        }
    }
    if metadata.brokers.iter().any(|broker| broker.id == spec_id) {
        return Some(spec_id);
    }
    match metadata.brokers.as_slice() {
        [only] => Some(only.id),
        _ => None,
    }
}

fn list_brokers(metadata: &ClusterMetadata) -> String {
    if metadata.brokers.is_empty() {
        return "it lists no brokers".to_string();
    }
    let listed: Vec<String> = metadata
        .brokers
        .iter()
        .map(|broker| format!("broker {} at {}", broker.id, broker.endpoint()))
        .collect();
    format!("it lists {}", listed.join(", "))
}

fn ids(list: &[i32]) -> String {
    let items: Vec<String> = list.iter().map(i32::to_string).collect();
    format!("[{}]", items.join(","))
}

/// At most `limit` items, then "and N more".
fn some_of(items: &[String], limit: usize) -> String {
    if items.len() <= limit {
        items.join("; ")
    } else {
        format!(
            "{}; and {} more",
            items[..limit].join("; "),
            items.len() - limit
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Health over one metadata answer

/// Every sign of an unhealthy cluster in `metadata`: topic errors, partitions without a leader,
/// replicas on brokers missing from the metadata or reported offline, and under-replicated
/// partitions (ISR smaller than the replica set).
pub fn cluster_problems(metadata: &ClusterMetadata) -> Vec<String> {
    let mut problems: Vec<String> = metadata.topic_errors.clone();
    for partition in &metadata.partitions {
        let name = format!("{}-{}", partition.topic, partition.partition);
        if partition.leader < 0 {
            problems.push(format!("partition {name} has no leader (offline)"));
        }
        let missing: Vec<i32> = partition
            .replicas
            .iter()
            .copied()
            .filter(|replica| !metadata.brokers.iter().any(|broker| broker.id == *replica))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "partition {name} has replicas {} on brokers missing from the metadata",
                ids(&missing)
            ));
        }
        if !partition.offline_replicas.is_empty() {
            problems.push(format!(
                "partition {name} has offline replicas {}",
                ids(&partition.offline_replicas)
            ));
        }
        if is_under_replicated(partition) {
            problems.push(format!(
                "partition {name} is under-replicated: ISR {} of replicas {}",
                ids(&partition.isr),
                ids(&partition.replicas)
            ));
        }
    }
    problems
}

/// ISR smaller than the replica set (or a replica not in the ISR).
pub fn is_under_replicated(partition: &PartitionState) -> bool {
    partition
        .replicas
        .iter()
        .any(|replica| !partition.isr.contains(replica))
}

/// The under-replicated partitions, as `topic-partition`.
pub fn under_replicated(metadata: &ClusterMetadata) -> Vec<String> {
    metadata
        .partitions
        .iter()
        .filter(|partition| is_under_replicated(partition))
        .map(|partition| {
            format!(
                "{}-{} (ISR {} of replicas {})",
                partition.topic,
                partition.partition,
                ids(&partition.isr),
                ids(&partition.replicas)
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Before a restart

/// What the probes saw of the broker as it runs now, before its restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunningBroker {
    /// No running listener answered Kafka: nothing to protect.
    NotServing { detail: String },
    /// A running listener answered ApiVersions and Metadata.
    Serving {
        /// The listener that answered, and the address it was probed on.
        listener: String,
        probed: String,
        /// The endpoint that listener advertises now, from the running config (if known).
        advertised: Option<(String, u16)>,
        metadata: Box<ClusterMetadata>,
        min_isr: TopicMinIsr,
    },
}

/// May this broker restart now? Refuses while the cluster is unhealthy, or while a partition with
/// a replica here would drop below its topic's `min.insync.replicas` without this broker.
pub fn pre_restart_gate(spec_id: i32, running: &RunningBroker) -> GateVerdict {
    let (listener, probed, advertised, metadata, min_isr) = match running {
        RunningBroker::NotServing { detail } => {
            return GateVerdict {
                checks: vec![GateCheck::pass(
                    CHECK_SERVING,
                    format!("broker {spec_id} is not serving Kafka before the restart ({detail}); nothing to protect"),
                )],
            }
        }
        RunningBroker::Serving { listener, probed, advertised, metadata, min_isr } => (listener, probed, advertised, metadata, min_isr),
    };
    let mut checks = vec![GateCheck::pass(
        CHECK_SERVING,
        format!(
            "listener {listener} on {probed} answers Metadata ({} brokers, {} partitions)",
            metadata.brokers.len(),
            metadata.partitions.len()
        ),
    )];

    let problems = cluster_problems(metadata);
    checks.push(if problems.is_empty() {
        GateCheck::pass(CHECK_CLUSTER_HEALTH, format!("every partition has a leader and a full ISR (as listener {listener} on {probed} reports)"))
    } else {
        GateCheck::fail(
            CHECK_CLUSTER_HEALTH,
            format!("listener {listener} on {probed} reports an unhealthy cluster, so broker {spec_id} must not restart now: {}", some_of(&problems, 5)),
        )
    });

    let advertised_ref = advertised
        .as_ref()
        .map(|(host, port)| (host.as_str(), *port));
    let Some(me) = self_id(metadata, spec_id, advertised_ref) else {
        checks.push(GateCheck::fail(
            CHECK_MIN_ISR,
            format!(
                "cannot tell which broker in the metadata of listener {listener} on {probed} is this one ({}; the spec calls it broker {spec_id}), so its partitions cannot be checked",
                list_brokers(metadata)
            ),
        ));
        return GateVerdict { checks };
    };
    let mut hosted = 0;
    let mut not_blocking = 0;
    let mut blocking = Vec::new();
    for partition in metadata
        .partitions
        .iter()
        .filter(|p| p.replicas.contains(&me))
    {
        hosted += 1;
        let min = min_isr.get(&partition.topic);
        let replication_factor = i32::try_from(partition.replicas.len()).unwrap_or(i32::MAX);
        if replication_factor <= min {
            not_blocking += 1;
            continue;
        }
        let remaining = partition.isr.iter().filter(|id| **id != me).count();
        if i32::try_from(remaining).unwrap_or(i32::MAX) < min {
            blocking.push(format!(
                "partition {}-{} (ISR {} of replicas {}) to {remaining} in-sync replica(s), below min.insync.replicas={min}",
                partition.topic,
                partition.partition,
                ids(&partition.isr),
                ids(&partition.replicas)
            ));
        }
    }
    if let Some(error) = &min_isr.unreadable {
        let at_risk = metadata
            .partitions
            .iter()
            .filter(|p| p.replicas.contains(&me) && p.replicas.len() > 1)
            .count();
        if at_risk > 0 {
            blocking.insert(
                0,
                format!(
                    "an unknown number of {at_risk} partition(s) with more than one replica: their min.insync.replicas could not be read from listener {listener} on {probed} ({error})"
                ),
            );
        }
    }
    let identity = if me == spec_id {
        format!("broker {me}")
    } else {
        format!("node {me} (the spec calls it broker {spec_id})")
    };
    let mut detail = if blocking.is_empty() {
        format!("{hosted} partition(s) have a replica on {identity}; none would fall below min.insync.replicas while it restarts")
    } else {
        format!(
            "restarting {identity} now would drop {}",
            some_of(&blocking, 5)
        )
    };
    if not_blocking > 0 {
        detail.push_str(&format!(
            " ({not_blocking} with replication factor ≤ min.insync.replicas do not block)"
        ));
    }
    for note in &min_isr.notes {
        detail.push_str(&format!("; {note}"));
    }
    checks.push(GateCheck {
        name: CHECK_MIN_ISR.to_string(),
        ok: blocking.is_empty(),
        detail,
    });
    GateVerdict { checks }
}

// ---------------------------------------------------------------------------------------------
// After a restart

/// What one listener answered after the restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerAnswer {
    /// ApiVersions and Metadata answered.
    Kafka(ClusterMetadata),
    /// Not serving Kafka there: the probe's error.
    NotServing(String),
    /// Kafka could not be spoken (e.g. an SSL listener); the detail says what was checked instead.
    Unprobed(String),
}

/// One listener as the post-restart gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerObservation {
    pub listener: String,
    /// The address probed, e.g. `127.0.0.1:9092` for a wildcard bind.
    pub probed: String,
    /// The endpoint the spec says this listener advertises. An empty host leaves it to Kafka.
    pub desired_host: String,
    pub desired_port: u16,
    pub answer: ListenerAnswer,
}

/// Did the restarted broker come back right? Serves Kafka on every listener, each listener
/// advertises exactly the desired endpoint for this broker, and no partition is under-replicated.
pub fn post_restart_gate(spec_id: i32, observations: &[ListenerObservation]) -> GateVerdict {
    let mut checks = Vec::new();
    let mut cluster_view: Option<(&ListenerObservation, &ClusterMetadata)> = None;
    for observation in observations {
        let name = &observation.listener;
        let probed = &observation.probed;
        let desired = endpoint_text(&observation.desired_host, observation.desired_port);
        let metadata = match &observation.answer {
            ListenerAnswer::Kafka(metadata) => metadata,
            ListenerAnswer::NotServing(error) => {
                checks.push(GateCheck::fail(
                    CHECK_SERVING,
                    format!("listener {name} on {probed} does not serve Kafka: {error}"),
                ));
                continue;
            }
            ListenerAnswer::Unprobed(detail) => {
                checks.push(GateCheck::pass(
                    CHECK_SERVING,
                    format!("listener {name} on {probed}: {detail}"),
                ));
                checks.push(GateCheck::pass(
                    CHECK_ADVERTISED,
                    format!("listener {name}: not compared ({detail}); desired {desired}"),
                ));
                continue;
            }
        };
        cluster_view.get_or_insert((observation, metadata));
        checks.push(GateCheck::pass(
            CHECK_SERVING,
            format!("listener {name} on {probed} answers ApiVersions and Metadata"),
        ));
        if observation.desired_host.trim().is_empty() {
            checks.push(GateCheck::pass(
                CHECK_ADVERTISED,
                format!("listener {name} on {probed}: the spec leaves the advertised host to Kafka (its canonical hostname), so only the port {} is expected; {}", observation.desired_port, list_brokers(metadata)),
            ));
            continue;
        }
        checks.push(match find_self(metadata, spec_id, &observation.desired_host, observation.desired_port) {
            SelfInMetadata::AtDesired { id, note: None } => {
                GateCheck::pass(CHECK_ADVERTISED, format!("listener {name} on {probed} advertises {desired} for broker {id}"))
            }
            SelfInMetadata::AtDesired { id, note: Some(note) } => GateCheck::pass(
                CHECK_ADVERTISED,
                format!("listener {name} on {probed} advertises {desired} for node {id} ({note})"),
            ),
            SelfInMetadata::Wrong { id, advertised } => GateCheck::fail(
                CHECK_ADVERTISED,
                format!("listener {name} on {probed} advertises {advertised} for broker {id}, desired {desired}"),
            ),
            SelfInMetadata::Missing => match metadata.brokers.as_slice() {
                [only] => GateCheck::fail(
                    CHECK_ADVERTISED,
                    format!(
                        "listener {name} on {probed} advertises {} for broker {}{}, desired {desired}",
                        only.endpoint(),
                        only.id,
                        if only.id == spec_id { String::new() } else { format!(" (the spec calls it broker {spec_id})") }
                    ),
                ),
                _ => GateCheck::fail(
                    CHECK_ADVERTISED,
                    format!("listener {name} on {probed} advertises nothing at the desired {desired} for broker {spec_id}: {}", list_brokers(metadata)),
                ),
            },
        });
    }
    match cluster_view {
        Some((observation, metadata)) => {
            let lagging = under_replicated(metadata);
            checks.push(if lagging.is_empty() {
                GateCheck::pass(
                    CHECK_UNDER_REPLICATED,
                    format!(
                        "none of {} partition(s), as listener {} on {} reports",
                        metadata.partitions.len(),
                        observation.listener,
                        observation.probed
                    ),
                )
            } else {
                GateCheck::fail(
                    CHECK_UNDER_REPLICATED,
                    format!(
                        "{} partition(s) under-replicated, as listener {} on {} reports: {}",
                        lagging.len(),
                        observation.listener,
                        observation.probed,
                        some_of(&lagging, 5)
                    ),
                )
            });
        }
        None if observations
            .iter()
            .all(|o| matches!(o.answer, ListenerAnswer::Unprobed(_)))
            && !observations.is_empty() =>
        {
            checks.push(GateCheck::pass(
                CHECK_UNDER_REPLICATED,
                "not checked: no listener speaks plaintext Kafka to the probe",
            ));
        }
        None => checks.push(GateCheck::fail(
            CHECK_UNDER_REPLICATED,
            "cannot be checked: no listener answered Metadata".to_string(),
        )),
    }
    GateVerdict { checks }
}

// ---------------------------------------------------------------------------------------------
// The active controller

/// Is this broker the active controller? The quorum leader when the broker answered DescribeQuorum,
/// else Metadata's controller id; compared with the id found behind this broker's own endpoint
/// (the same identity rule as the gates). Returns the answer and a detail saying how it was found.
pub fn is_controller(
    spec_id: i32,
    metadata: &ClusterMetadata,
    advertised: Option<(&str, u16)>,
    quorum_leader: Result<Option<i32>, String>,
) -> (bool, GateCheck) {
    let Some(me) = self_id(metadata, spec_id, advertised) else {
        return (
            false,
            GateCheck::fail(CHECK_CONTROLLER, format!("cannot tell which broker in the metadata is this one ({}; the spec calls it broker {spec_id})", list_brokers(metadata))),
        );
    };
    let (controller, source) = match quorum_leader {
        Ok(Some(leader)) => (
            Some(leader),
            "the KRaft quorum leader (DescribeQuorum)".to_string(),
        ),
        Ok(None) => (
            metadata.controller_id,
            "Metadata's controller id (the quorum has no leader right now)".to_string(),
        ),
        Err(why) => (
            metadata.controller_id,
            format!("Metadata's controller id ({why})"),
        ),
    };
    let is_me = controller == Some(me);
    let who = match controller {
        Some(id) => format!("node {id}"),
        None => "no node".to_string(),
    };
    let identity = if me == spec_id {
        format!("broker {me}")
    } else {
        format!("node {me}, which the spec calls broker {spec_id}")
    };
    (
        is_me,
        GateCheck::pass(
            CHECK_CONTROLLER,
            format!(
                "{who} is the active controller per {source}; this is {identity}, {}",
                if is_me {
                    "the controller"
                } else {
                    "not the controller"
                }
            ),
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// The listeners a broker runs with now

/// A listener as `server.properties` configures it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningListener {
    pub name: String,
    pub bind_host: String,
    pub port: u16,
    /// Where `advertised.listeners` points clients for this listener, when it lists it.
    pub advertised: Option<(String, u16)>,
    /// From `listener.security.protocol.map` (or the name itself, Kafka's default map).
    pub security_protocol: String,
    /// Named in `controller.listener.names`: KRaft's controller listener, which serves no Metadata.
    pub controller: bool,
}

impl RunningListener {
    /// This listener as the post-restart gate checks one: what a broker started on this file must
    /// serve and advertise. `ListenerSpec` advertises on the bound port, so a listener advertising
    /// another port (a NAT in front) is checked for serving only (empty advertised host).
    pub fn as_listener_spec(&self) -> crate::properties::ListenerSpec {
        let advertised_host = match &self.advertised {
            Some((host, port)) if *port == self.port => host.clone(),
            _ => String::new(),
        };
        crate::properties::ListenerSpec {
            name: self.name.clone(),
            bind_host: self.bind_host.clone(),
            port: self.port,
            advertised_host,
            security_protocol: self.security_protocol.clone(),
            tls: None,
            sasl_mechanism: None,
        }
    }
}

/// The listeners in a `server.properties`, with what each advertises. Entries that cannot be
/// parsed are left out (the agent only probes; it does not validate the operator's file here).
pub fn running_listeners(content: &str) -> Vec<RunningListener> {
    use crate::properties::get_property;
    let value = |key: &str| get_property(content, key).ok().flatten();
    let listeners = value("listeners").unwrap_or_else(|| "PLAINTEXT://:9092".to_string());
    let advertised = value("advertised.listeners")
        .map(|text| parse_listener_entries(&text))
        .unwrap_or_default();
    let protocols: Vec<(String, String)> = value("listener.security.protocol.map")
        .map(|text| {
            text.split(',')
                .filter_map(|entry| entry.trim().rsplit_once(':'))
                .map(|(name, protocol)| {
                    (name.trim().to_uppercase(), protocol.trim().to_uppercase())
                })
                .collect()
        })
        .unwrap_or_default();
    let controllers: Vec<String> = value("controller.listener.names")
        .map(|text| {
            text.split(',')
                .map(|name| name.trim().to_uppercase())
                .collect()
        })
        .unwrap_or_default();
    parse_listener_entries(&listeners)
        .into_iter()
        .map(|(name, host, port)| {
            let advertised = advertised
                .iter()
                .find(|(other, _, _)| *other == name)
                .map(|(_, host, port)| (host.clone(), *port))
                // Kafka advertises the listener itself when advertised.listeners omits it.
                .or_else(|| (!controllers.contains(&name)).then(|| (host.clone(), port)));
            RunningListener {
                security_protocol: protocols
                    .iter()
                    .find(|(other, _)| *other == name)
                    .map(|(_, protocol)| protocol.clone())
                    .unwrap_or_else(|| name.clone()),
                controller: controllers.contains(&name),
                name,
                bind_host: host,
                port,
                advertised,
            }
        })
        .collect()
}

/// `NAME://host:port` entries, upper-cased names, brackets removed; malformed entries skipped.
fn parse_listener_entries(value: &str) -> Vec<(String, String, u16)> {
    value
        .split(',')
        .filter_map(|entry| {
            let (name, address) = entry.trim().split_once("://")?;
            let (host, port) = address.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((
                name.trim().to_uppercase(),
                host.to_string(),
                port.parse().ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_named_and_read_as_one_line() {
        // A TCP probe's check: named by the listener, its finding a whole sentence.
        let check =
            GateCheck::sentence("INTERNAL", "INTERNAL accepts connections on 127.0.0.1:9092");
        assert_eq!((check.name.as_str(), check.ok), ("INTERNAL", true));
        assert_eq!(
            check.detail,
            "INTERNAL accepts connections on 127.0.0.1:9092"
        );
        assert_eq!(
            check.line(),
            "INTERNAL accepts connections on 127.0.0.1:9092"
        );
        // A gate's check: its name, then what it found.
        let check = GateCheck::pass(
            CHECK_ADVERTISED,
            "listener EXTERNAL on 198.19.0.11:9093 advertises 198.19.0.11:9093",
        );
        assert_eq!(check.name, "advertised endpoint");
        assert_eq!(
            check.line(),
            "advertised endpoint: listener EXTERNAL on 198.19.0.11:9093 advertises 198.19.0.11:9093"
        );
        assert_eq!(check.line(), check.to_string());
    }
    use proptest::prelude::*;

    fn broker(id: i32, host: &str, port: u16) -> AdvertisedBroker {
        AdvertisedBroker {
            id,
            host: host.into(),
            port,
            rack: None,
        }
    }

    fn partition(
        topic: &str,
        index: i32,
        leader: i32,
        replicas: &[i32],
        isr: &[i32],
    ) -> PartitionState {
        PartitionState {
            topic: topic.into(),
            partition: index,
            leader,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            offline_replicas: Vec::new(),
        }
    }

    /// Three brokers on 10.0.0.{1,2,3}:9092, broker 2 the controller.
    fn three_brokers(partitions: Vec<PartitionState>) -> ClusterMetadata {
        ClusterMetadata {
            cluster_id: Some("c".into()),
            controller_id: Some(2),
            brokers: vec![
                broker(1, "10.0.0.1", 9092),
                broker(2, "10.0.0.2", 9092),
                broker(3, "10.0.0.3", 9092),
            ],
            partitions,
            topic_errors: Vec::new(),
        }
    }

    /// What tansu answers: one node, 111, at whatever it advertises, replicas = ISR = [111].
    fn tansu(host: &str, port: u16) -> ClusterMetadata {
        ClusterMetadata {
            cluster_id: Some("tansu_cluster".into()),
            controller_id: Some(111),
            brokers: vec![broker(111, host, port)],
            partitions: vec![partition("orders", 0, 111, &[111], &[111])],
            topic_errors: Vec::new(),
        }
    }

    fn observed(
        listener: &str,
        probed: &str,
        desired: &str,
        answer: ListenerAnswer,
    ) -> ListenerObservation {
        let (host, port) = desired.rsplit_once(':').unwrap();
        ListenerObservation {
            listener: listener.into(),
            probed: probed.into(),
            desired_host: host.into(),
            desired_port: port.parse().unwrap(),
            answer,
        }
    }

    fn serving(metadata: ClusterMetadata, min_isr: TopicMinIsr) -> RunningBroker {
        RunningBroker::Serving {
            listener: "INTERNAL".into(),
            probed: "127.0.0.1:9092".into(),
            advertised: Some(("10.0.0.1".into(), 9092)),
            metadata: Box::new(metadata),
            min_isr,
        }
    }

    fn min_isr(pairs: &[(&str, i32)]) -> TopicMinIsr {
        TopicMinIsr {
            by_topic: pairs
                .iter()
                .map(|(topic, value)| (topic.to_string(), *value))
                .collect(),
            ..TopicMinIsr::default()
        }
    }

    #[test]
    fn a_wrong_advertised_endpoint_names_check_listener_and_both_endpoints() {
        let metadata = ClusterMetadata {
            brokers: vec![broker(1, "10.0.0.1", 9093)],
            ..tansu("x", 1)
        };
        let verdict = post_restart_gate(
            1,
            &[observed(
                "EXTERNAL",
                "198.19.0.11:9093",
                "198.19.0.11:9093",
                ListenerAnswer::Kafka(metadata),
            )],
        );
        assert!(!verdict.passed());
        assert_eq!(
            verdict.failure_reason().unwrap(),
            "advertised endpoint: listener EXTERNAL on 198.19.0.11:9093 advertises 10.0.0.1:9093 for broker 1, desired 198.19.0.11:9093"
        );
    }

    #[test]
    fn tansu_answering_as_node_111_at_the_desired_endpoint_passes_with_a_note() {
        let verdict = post_restart_gate(
            1,
            &[
                observed(
                    "INTERNAL",
                    "127.0.0.1:9092",
                    "10.0.0.1:9092",
                    ListenerAnswer::Kafka(tansu("10.0.0.1", 9092)),
                ),
                observed(
                    "EXTERNAL",
                    "127.0.0.1:9093",
                    "198.19.0.11:9093",
                    ListenerAnswer::Kafka(tansu("198.19.0.11", 9093)),
                ),
            ],
        );
        assert!(verdict.passed(), "{verdict:#?}");
        let advertised: Vec<&GateCheck> = verdict
            .checks
            .iter()
            .filter(|c| c.name == CHECK_ADVERTISED)
            .collect();
        assert_eq!(advertised.len(), 2);
        assert!(
            advertised[1].detail.contains("198.19.0.11:9093")
                && advertised[1]
                    .detail
                    .contains("answers as node 111; the spec calls it broker 1"),
            "{}",
            advertised[1].detail
        );
        assert!(verdict
            .checks
            .iter()
            .any(|c| c.name == CHECK_UNDER_REPLICATED && c.ok));
    }

    #[test]
    fn tansu_advertising_the_wrong_address_fails_naming_node_111() {
        let verdict = post_restart_gate(
            1,
            &[observed(
                "EXTERNAL",
                "127.0.0.1:9093",
                "198.19.0.11:9093",
                ListenerAnswer::Kafka(tansu("10.0.0.1", 9093)),
            )],
        );
        assert_eq!(
            verdict.failure_reason().unwrap(),
            "advertised endpoint: listener EXTERNAL on 127.0.0.1:9093 advertises 10.0.0.1:9093 for broker 111 (the spec calls it broker 1), desired 198.19.0.11:9093"
        );
    }

    #[test]
    fn another_id_at_our_endpoint_fails_when_the_spec_id_is_listed_elsewhere() {
        // Broker 3 claims 10.0.0.1:9092 while broker 1 (us) is listed at 10.0.0.9.
        let mut metadata = three_brokers(vec![]);
        metadata.brokers = vec![
            broker(1, "10.0.0.9", 9092),
            broker(2, "10.0.0.2", 9092),
            broker(3, "10.0.0.1", 9092),
        ];
        let verdict = post_restart_gate(
            1,
            &[observed(
                "INTERNAL",
                "127.0.0.1:9092",
                "10.0.0.1:9092",
                ListenerAnswer::Kafka(metadata),
            )],
        );
        assert_eq!(
            verdict.failure_reason().unwrap(),
            "advertised endpoint: listener INTERNAL on 127.0.0.1:9092 advertises 10.0.0.9:9092 for broker 1, desired 10.0.0.1:9092"
        );
    }

    #[test]
    fn nothing_at_the_desired_endpoint_in_a_cluster_lists_what_is_there() {
        let mut metadata = three_brokers(vec![]);
        metadata.brokers.remove(0);
        let verdict = post_restart_gate(
            1,
            &[observed(
                "INTERNAL",
                "127.0.0.1:9092",
                "10.0.0.1:9092",
                ListenerAnswer::Kafka(metadata),
            )],
        );
        let reason = verdict.failure_reason().unwrap();
        assert!(
            reason.starts_with("advertised endpoint: listener INTERNAL on 127.0.0.1:9092 advertises nothing at the desired 10.0.0.1:9092")
                && reason.contains("broker 2 at 10.0.0.2:9092"),
            "{reason}"
        );
    }

    #[test]
    fn a_listener_that_does_not_serve_kafka_fails_and_urp_cannot_be_checked_without_metadata() {
        let verdict = post_restart_gate(
            1,
            &[observed(
                "INTERNAL",
                "127.0.0.1:9092",
                "10.0.0.1:9092",
                ListenerAnswer::NotServing("127.0.0.1:9092 closed the connection".into()),
            )],
        );
        let reason = verdict.failure_reason().unwrap();
        assert!(reason.starts_with("kafka serving: listener INTERNAL on 127.0.0.1:9092 does not serve Kafka: 127.0.0.1:9092 closed"), "{reason}");
        assert!(
            reason.contains("under-replicated partitions: cannot be checked"),
            "{reason}"
        );
    }

    #[test]
    fn one_failing_listener_fails_the_gate_even_when_the_other_is_right() {
        let verdict = post_restart_gate(
            1,
            &[
                observed(
                    "INTERNAL",
                    "127.0.0.1:9092",
                    "10.0.0.1:9092",
                    ListenerAnswer::Kafka(three_brokers(vec![])),
                ),
                observed(
                    "EXTERNAL",
                    "198.19.0.11:9093",
                    "198.19.0.11:9093",
                    ListenerAnswer::NotServing(
                        "cannot connect to 198.19.0.11:9093: refused".into(),
                    ),
                ),
            ],
        );
        assert!(!verdict.passed());
        let reason = verdict.failure_reason().unwrap();
        assert!(
            reason.contains("listener EXTERNAL on 198.19.0.11:9093")
                && !reason.contains("INTERNAL"),
            "{reason}"
        );
    }

    #[test]
    fn under_replicated_partitions_fail_the_post_restart_gate_naming_them() {
        let metadata = three_brokers(vec![
            partition("orders", 0, 2, &[1, 2, 3], &[2, 3]),
            partition("orders", 1, 1, &[1, 2, 3], &[1, 2, 3]),
        ]);
        let verdict = post_restart_gate(
            1,
            &[observed(
                "INTERNAL",
                "127.0.0.1:9092",
                "10.0.0.1:9092",
                ListenerAnswer::Kafka(metadata),
            )],
        );
        let reason = verdict.failure_reason().unwrap();
        assert_eq!(
            reason,
            "under-replicated partitions: 1 partition(s) under-replicated, as listener INTERNAL on 127.0.0.1:9092 reports: orders-0 (ISR [2,3] of replicas [1,2,3])"
        );
    }

    #[test]
    fn listeners_kafka_cannot_be_spoken_on_are_reported_not_silently_passed() {
        let verdict = post_restart_gate(
            1,
            &[observed(
                "SECURE",
                "127.0.0.1:9094",
                "10.0.0.1:9094",
                ListenerAnswer::Unprobed("uses SSL; only TCP was checked".into()),
            )],
        );
        assert!(verdict.passed());
        assert!(
            verdict
                .checks
                .iter()
                .all(|c| c.detail.contains("SSL") || c.detail.contains("not checked")),
            "{verdict:#?}"
        );
    }

    #[test]
    fn a_broker_not_serving_before_the_restart_has_nothing_to_protect() {
        let verdict = pre_restart_gate(
            1,
            &RunningBroker::NotServing {
                detail: "cannot connect to 127.0.0.1:9092: refused".into(),
            },
        );
        assert!(verdict.passed());
        assert!(
            verdict.checks[0].detail.contains("nothing to protect")
                && verdict.checks[0].detail.contains("127.0.0.1:9092")
        );
    }

    #[test]
    fn a_healthy_cluster_with_spare_replicas_allows_the_restart() {
        let metadata = three_brokers(vec![
            partition("orders", 0, 1, &[1, 2, 3], &[1, 2, 3]),
            partition("orders", 1, 2, &[2, 3], &[2, 3]),
            partition("audit", 0, 1, &[1, 2], &[1, 2]),
        ]);
        let verdict = pre_restart_gate(
            1,
            &serving(metadata, min_isr(&[("orders", 2), ("audit", 2)])),
        );
        assert!(verdict.passed(), "{verdict:#?}");
        let detail = &verdict
            .checks
            .iter()
            .find(|c| c.name == CHECK_MIN_ISR)
            .unwrap()
            .detail;
        // audit has RF 2 = min.insync.replicas: it does not block, and the detail says so.
        assert!(
            detail.contains("2 partition(s) have a replica on broker 1")
                && detail.contains("1 with replication factor"),
            "{detail}"
        );
    }

    #[test]
    fn a_partition_that_would_drop_below_min_isr_refuses_the_restart() {
        // orders-0 lost broker 3 from its ISR; restarting broker 1 would leave only broker 2.
        let metadata = three_brokers(vec![partition("orders", 0, 1, &[1, 2, 3], &[1, 2])]);
        let verdict = pre_restart_gate(1, &serving(metadata, min_isr(&[("orders", 2)])));
        let reason = verdict.failure_reason().unwrap();
        assert!(
            reason.contains("min.insync.replicas: restarting broker 1 now would drop partition orders-0 (ISR [1,2] of replicas [1,2,3]) to 1 in-sync replica(s), below min.insync.replicas=2"),
            "{reason}"
        );
        assert!(
            reason.contains(
                "cluster health: listener INTERNAL on 127.0.0.1:9092 reports an unhealthy cluster"
            ),
            "{reason}"
        );
    }

    #[test]
    fn unreadable_min_isr_blocks_only_where_it_could_matter() {
        let unreadable = TopicMinIsr {
            unreadable: Some("127.0.0.1:9092 closed the connection during DescribeConfigs".into()),
            ..TopicMinIsr::default()
        };
        let replicated = three_brokers(vec![partition("orders", 0, 1, &[1, 2, 3], &[1, 2, 3])]);
        let reason = pre_restart_gate(1, &serving(replicated, unreadable.clone()))
            .failure_reason()
            .unwrap();
        assert!(
            reason.starts_with("min.insync.replicas: restarting broker 1 now would drop an unknown number of 1 partition(s)")
                && reason.contains("could not be read from listener INTERNAL on 127.0.0.1:9092 (127.0.0.1:9092 closed the connection during DescribeConfigs)"),
            "{reason}"
        );
        // Single-replica partitions cannot drop below any minimum by this restart's choice.
        let single = three_brokers(vec![partition("logs", 0, 1, &[1], &[1])]);
        assert!(pre_restart_gate(1, &serving(single, unreadable)).passed());
    }

    #[test]
    fn min_isr_equal_to_the_replication_factor_does_not_block() {
        let metadata = three_brokers(vec![partition("strict", 0, 1, &[1, 2, 3], &[1, 2, 3])]);
        let verdict = pre_restart_gate(1, &serving(metadata, min_isr(&[("strict", 3)])));
        assert!(verdict.passed(), "{verdict:#?}");
    }

    #[test]
    fn another_brokers_trouble_refuses_the_restart_too() {
        let mut offline = partition("orders", 2, -1, &[2, 3], &[]);
        offline.offline_replicas = vec![2, 3];
        let metadata = three_brokers(vec![offline, partition("audit", 0, 2, &[2, 4], &[2, 4])]);
        let verdict = pre_restart_gate(1, &serving(metadata, TopicMinIsr::default()));
        let reason = verdict.failure_reason().unwrap();
        for expected in [
            "partition orders-2 has no leader (offline)",
            "partition orders-2 has offline replicas [2,3]",
            "partition audit-0 has replicas [4] on brokers missing from the metadata",
            "partition orders-2 is under-replicated: ISR [] of replicas [2,3]",
        ] {
            assert!(
                reason.contains(expected),
                "{expected} missing from: {reason}"
            );
        }
    }

    #[test]
    fn topic_errors_count_as_unhealthy() {
        let mut metadata = three_brokers(vec![]);
        metadata
            .topic_errors
            .push("topic \"orders\": LeaderNotAvailable".into());
        let verdict = pre_restart_gate(1, &serving(metadata, TopicMinIsr::default()));
        assert!(verdict
            .failure_reason()
            .unwrap()
            .contains("LeaderNotAvailable"));
    }

    #[test]
    fn unsupported_describe_configs_is_reported_and_the_default_of_one_applies() {
        let metadata = three_brokers(vec![partition("orders", 0, 1, &[1, 2], &[1, 2])]);
        let fallback = TopicMinIsr {
            by_topic: BTreeMap::new(),
            notes: vec!["127.0.0.1:9092 does not support DescribeConfigs; using Kafka's default min.insync.replicas=1 for every topic".into()],
            unreadable: None,
        };
        assert_eq!(fallback.get("orders"), DEFAULT_MIN_INSYNC_REPLICAS);
        let verdict = pre_restart_gate(1, &serving(metadata, fallback));
        assert!(verdict.passed());
        let detail = &verdict
            .checks
            .iter()
            .find(|c| c.name == CHECK_MIN_ISR)
            .unwrap()
            .detail;
        assert!(
            detail.contains("does not support DescribeConfigs") && detail.contains("default"),
            "{detail}"
        );
    }

    #[test]
    fn tansu_before_a_restart_is_found_by_its_endpoint_and_passes() {
        let running = RunningBroker::Serving {
            listener: "INTERNAL".into(),
            probed: "127.0.0.1:9092".into(),
            advertised: Some(("10.0.0.1".into(), 9092)),
            metadata: Box::new(tansu("10.0.0.1", 9092)),
            min_isr: TopicMinIsr::default(),
        };
        let verdict = pre_restart_gate(1, &running);
        assert!(verdict.passed(), "{verdict:#?}");
        let detail = &verdict
            .checks
            .iter()
            .find(|c| c.name == CHECK_MIN_ISR)
            .unwrap()
            .detail;
        assert!(
            detail.contains("node 111 (the spec calls it broker 1)")
                && detail.contains("1 with replication factor"),
            "{detail}"
        );
    }

    #[test]
    fn a_broker_that_cannot_be_found_in_its_own_metadata_refuses() {
        let running = RunningBroker::Serving {
            listener: "INTERNAL".into(),
            probed: "127.0.0.1:9092".into(),
            advertised: Some(("10.0.0.9".into(), 9092)),
            metadata: Box::new(three_brokers(vec![])),
            min_isr: TopicMinIsr::default(),
        };
        let verdict = pre_restart_gate(7, &running);
        assert!(
            verdict
                .failure_reason()
                .unwrap()
                .contains("cannot tell which broker"),
            "{verdict:#?}"
        );
    }

    #[test]
    fn the_controller_is_the_quorum_leader_or_metadata_controller_behind_our_endpoint() {
        let metadata = tansu("10.0.0.1", 9092);
        let (is_me, check) = is_controller(
            1,
            &metadata,
            Some(("10.0.0.1", 9092)),
            Err("127.0.0.1:9092 does not support DescribeQuorum".into()),
        );
        assert!(is_me);
        assert!(
            check.detail.contains(
                "Metadata's controller id (127.0.0.1:9092 does not support DescribeQuorum)"
            ),
            "{}",
            check.detail
        );
        let cluster = three_brokers(vec![]);
        assert!(
            !is_controller(
                1,
                &cluster,
                Some(("10.0.0.1", 9092)),
                Err("unsupported".into())
            )
            .0
        );
        assert!(
            is_controller(
                2,
                &cluster,
                Some(("10.0.0.2", 9092)),
                Err("unsupported".into())
            )
            .0
        );
        // The quorum leader wins over Metadata's (possibly random, in KRaft) controller id.
        assert!(is_controller(1, &cluster, Some(("10.0.0.1", 9092)), Ok(Some(1))).0);
        assert!(!is_controller(2, &cluster, Some(("10.0.0.2", 9092)), Ok(Some(1))).0);
    }

    #[test]
    fn hosts_compare_by_address_value_and_case_insensitively() {
        assert!(same_host("::1", "[0:0:0:0:0:0:0:1]"));
        assert!(same_host("EMR-Worker-1.cluster.", "emr-worker-1.cluster"));
        assert!(!same_host("10.0.0.1", "10.0.0.10"));
        assert_eq!(endpoint_text("::1", 9092), "[::1]:9092");
        assert_eq!(endpoint_text("[::1]", 9092), "[::1]:9092");
    }

    #[test]
    fn running_listeners_come_from_listeners_advertised_map_and_controller_names() {
        let content = "process.roles=broker,controller\n\
            listeners=INTERNAL://0.0.0.0:9092,EXTERNAL://[::]:9093,CONTROLLER://:9094,PLAINTEXT://:9095\n\
            advertised.listeners=INTERNAL://10.0.0.1:9092,EXTERNAL://198.19.0.11:19093\n\
            listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:SSL,CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
            controller.listener.names=CONTROLLER\n";
        let running = running_listeners(content);
        type Summary = (String, String, u16, Option<(String, u16)>, String, bool);
        let summary: Vec<Summary> = running
            .into_iter()
            .map(|l| {
                (
                    l.name,
                    l.bind_host,
                    l.port,
                    l.advertised,
                    l.security_protocol,
                    l.controller,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "INTERNAL".into(),
                    "0.0.0.0".into(),
                    9092,
                    Some(("10.0.0.1".into(), 9092)),
                    "PLAINTEXT".into(),
                    false
                ),
                (
                    "EXTERNAL".into(),
                    "::".into(),
                    9093,
                    Some(("198.19.0.11".into(), 19093)),
                    "SSL".into(),
                    false
                ),
                (
                    "CONTROLLER".into(),
                    "".into(),
                    9094,
                    None,
                    "PLAINTEXT".into(),
                    true
                ),
                (
                    "PLAINTEXT".into(),
                    "".into(),
                    9095,
                    Some(("".into(), 9095)),
                    "PLAINTEXT".into(),
                    false
                ),
            ]
        );
        let default = running_listeners("broker.id=1\n");
        assert_eq!(default.len(), 1);
        assert_eq!(
            (default[0].name.as_str(), default[0].port),
            ("PLAINTEXT", 9092)
        );
    }

    #[test]
    fn a_running_listener_becomes_the_spec_the_post_restart_gate_checks() {
        let content = "listeners=INTERNAL://0.0.0.0:9092,EXTERNAL://[::]:9093\n\
            advertised.listeners=INTERNAL://10.0.0.1:9092,EXTERNAL://198.19.0.11:19093\n\
            listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:SSL\n";
        let specs: Vec<crate::properties::ListenerSpec> = running_listeners(content)
            .iter()
            .map(RunningListener::as_listener_spec)
            .collect();
        assert_eq!(
            specs[0],
            crate::properties::ListenerSpec {
                name: "INTERNAL".into(),
                bind_host: "0.0.0.0".into(),
                port: 9092,
                advertised_host: "10.0.0.1".into(),
                security_protocol: "PLAINTEXT".into(),
                tls: None,
                sasl_mechanism: None,
            }
        );
        // Advertised on another port than it binds: only "serving" can be checked.
        assert_eq!(
            (
                specs[1].port,
                specs[1].advertised_host.as_str(),
                specs[1].security_protocol.as_str()
            ),
            (9093, "", "SSL")
        );
    }

    /// A cluster of `n` brokers where every partition is fully in sync.
    fn healthy_cluster() -> impl Strategy<Value = (ClusterMetadata, TopicMinIsr)> {
        (2usize..6)
            .prop_flat_map(|brokers| {
                let partition = (
                    proptest::sample::subsequence(
                        (1..=brokers as i32).collect::<Vec<_>>(),
                        1..=brokers,
                    ),
                    0usize..3,
                )
                    .prop_map(|(replicas, topic)| (replicas, topic));
                (
                    Just(brokers),
                    proptest::collection::vec(partition, 0..12),
                    proptest::collection::vec(1i32..4, 3),
                )
            })
            .prop_map(|(brokers, partitions, mins)| {
                let metadata = ClusterMetadata {
                    cluster_id: None,
                    controller_id: Some(1),
                    brokers: (1..=brokers as i32)
                        .map(|id| broker(id, &format!("10.0.0.{id}"), 9092))
                        .collect(),
                    partitions: partitions
                        .into_iter()
                        .enumerate()
                        .map(|(index, (replicas, topic))| {
                            partition(
                                &format!("t{topic}"),
                                index as i32,
                                replicas[0],
                                &replicas,
                                &replicas,
                            )
                        })
                        .collect(),
                    topic_errors: Vec::new(),
                };
                let min = min_isr(&[("t0", mins[0]), ("t1", mins[1]), ("t2", mins[2])]);
                (metadata, min)
            })
    }

    proptest! {
        /// With every ISR full, one broker going down drops a partition below min.insync.replicas
        /// only when that min exceeds RF - 1 — and those (RF ≤ min) never block. So: always pass.
        #[test]
        fn a_fully_in_sync_cluster_always_allows_one_restart((metadata, min) in healthy_cluster(), me in 1i32..6) {
            prop_assume!(metadata.brokers.iter().any(|b| b.id == me));
            let running = RunningBroker::Serving {
                listener: "INTERNAL".into(),
                probed: "127.0.0.1:9092".into(),
                advertised: Some((format!("10.0.0.{me}"), 9092)),
                metadata: Box::new(metadata),
                min_isr: min,
            };
            let verdict = pre_restart_gate(me, &running);
            prop_assert!(verdict.passed(), "{:#?}", verdict);
        }

        /// Whenever the gate passes, no hosted partition with RF > min is left below min.
        #[test]
        fn a_passing_gate_never_leaves_a_partition_below_min_isr(
            (mut metadata, min) in healthy_cluster(),
            me in 1i32..6,
            drop_from_isr in proptest::collection::vec(any::<bool>(), 12),
        ) {
            prop_assume!(metadata.brokers.iter().any(|b| b.id == me));
            for (partition, drop) in metadata.partitions.iter_mut().zip(drop_from_isr) {
                if drop && partition.isr.len() > 1 {
                    partition.isr.pop();
                }
            }
            let running = RunningBroker::Serving {
                listener: "INTERNAL".into(),
                probed: "127.0.0.1:9092".into(),
                advertised: Some((format!("10.0.0.{me}"), 9092)),
                metadata: Box::new(metadata.clone()),
                min_isr: min.clone(),
            };
            if pre_restart_gate(me, &running).passed() {
                for partition in metadata.partitions.iter().filter(|p| p.replicas.contains(&me)) {
                    let floor = min.get(&partition.topic);
                    let left = partition.isr.iter().filter(|id| **id != me).count() as i32;
                    prop_assert!(partition.replicas.len() as i32 <= floor || left >= floor);
                }
            }
        }
    }
}
