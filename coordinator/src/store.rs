//! The coordinator's durable store (redb): every applied spec as a numbered generation, the
//! rollout state, what was released to each node, and the last status and facts of every agent.
//!
//! Owns persistence only. Every write is one redb transaction, committed durably before the
//! coordinator acts on it, so a `kill -9` at any point resumes exactly where it was: a release is
//! stored before it is sent, never after.
//!
//! Everything is kept as JSON of the domain's types, never as wire messages. The format is
//! versioned ([`FORMAT`], under the key `format` in the meta table): a store without the key was
//! written before the version existed (format 1: agents' reports and audit entries as encoded
//! `kreach.v1` messages) and is migrated in one transaction when it is opened; a store from a
//! newer coordinator is refused rather than misread.

use std::path::{Path, PathBuf};

use kreach_domain::report::{AuditRecord, HostFacts, NodeReport};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

const GENERATIONS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("generations");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const AGENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("agents");
/// Each node's audit trail as its agent handed it over: (node, ordinal) → encoded entry.
const AUDIT: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("audit");
/// Per node: the highest agent seq kept and the next ordinal.
const AUDIT_CURSORS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("audit_cursors");

/// How many audit entries are kept per node (the agent keeps its own full trail).
pub const AUDIT_KEPT_PER_NODE: u64 = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AuditCursor {
    last_seq: u64,
    next_ordinal: u64,
}

/// This coordinator's store format; see the module docs.
pub const FORMAT: u64 = 2;
const FORMAT_KEY: &str = "format";

/// One node's audit entries as one ReportAudit handed them over, in the agent's seq order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBatch {
    pub node: String,
    pub entries: Vec<AuditRecord>,
    /// The agent's trail started over: its first entry is kept even at a lower seq.
    pub restarted: bool,
}

/// An audit entry at its ordinal, encoded.
type OrdinalEntry = (u64, Vec<u8>);

/// What one audit batch adds to a node's trail: the entries to keep, each at its ordinal, and the
/// ordinal below which older entries go. Moves `cursor` past them.
fn plan_audit(cursor: &mut AuditCursor, batch: &AuditBatch) -> (Vec<OrdinalEntry>, Option<u64>) {
    let mut kept = Vec::new();
    for (index, record) in batch.entries.iter().enumerate() {
        let fresh = if batch.restarted && index == 0 {
            true
        } else {
            record.seq > cursor.last_seq
        };
        if !fresh {
            continue;
        }
        kept.push((
            cursor.next_ordinal,
            serde_json::to_vec(record).expect("serializable"),
        ));
        cursor.next_ordinal += 1;
        cursor.last_seq = record.seq;
    }
    let below = (cursor.next_ordinal > AUDIT_KEPT_PER_NODE)
        .then(|| cursor.next_ordinal - AUDIT_KEPT_PER_NODE);
    (kept, below)
}

/// [`Store::append_audit`]'s work inside a write transaction; returns the node's highest seq kept.
fn append_audit_in(
    cursors: &mut redb::Table<'_, &'static str, &'static [u8]>,
    table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    batch: &AuditBatch,
) -> Result<u64, redb::Error> {
    let node = batch.node.as_str();
    let mut cursor: AuditCursor = cursors
        .get(node)?
        .and_then(|value| serde_json::from_slice(value.value()).ok())
        .unwrap_or_default();
    let (kept, below) = plan_audit(&mut cursor, batch);
    for (ordinal, bytes) in &kept {
        table.insert((node, *ordinal), bytes.as_slice())?;
    }
    if let Some(below) = below {
        table.retain_in((node, 0)..(node, below), |_, _| false)?;
    }
    let encoded = serde_json::to_vec(&cursor).expect("serializable");
    cursors.insert(node, encoded.as_slice())?;
    Ok(cursor.last_seq)
}

const ROLLOUT_KEY: &str = "rollout";
/// The Kafka CA kreach made, kept in a shared (etcd) store so every coordinator that leads issues
/// from the same one; a redb store's coordinator keeps it in `state_dir/kafka-ca` instead.
pub const KAFKA_CA_KEY: &str = "kafka_ca";

/// The Kafka CA's certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCa {
    pub cert_pem: String,
    pub key_pem: String,
}
/// The SCRAM users of `kreachctl users` (a JSON list of salted credentials).
const SCRAM_USERS_KEY: &str = "scram_users";

/// One applied spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u64,
    pub spec_toml: String,
    pub applied_at_ms: u64,
    pub summary: String,
    /// Set when this generation re-applies an older one (`kreachctl rollback --to N`).
    pub rollback_of: Option<u64>,
    /// How its rollout ended ("completed", "aborted"), once it has.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// What the coordinator last heard from one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Its last report on its release (and its reachability).
    pub status: Option<NodeReport>,
    pub facts: Option<HostFacts>,
    pub last_seen_ms: u64,
}

/// Which agents have a release stream open to the coordinator that leads, as it last stored them
/// (see [`Store::save_live`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRecord {
    /// Sorted.
    pub nodes: Vec<String>,
    /// When the leader stored it (it stores it again whenever the set changes).
    pub at_ms: u64,
}

/// An agent record as format 1 kept it: the wire messages, protobuf-encoded.
#[derive(Deserialize)]
struct AgentRecordV1 {
    status: Option<Vec<u8>>,
    facts: Option<Vec<u8>>,
    last_seen_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the coordinator store {path}: {message} (is another coordinator using it?)"
    )]
    Open { path: PathBuf, message: String },
    #[error("coordinator store {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("coordinator store {path}: record {key} is corrupt: {message}")]
    Corrupt {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("coordinator store {path} is in format {found}, newer than this coordinator reads ({FORMAT}): it was written by a newer kreach-coordinator; run that version (nothing was changed)")]
    Newer { path: PathBuf, found: u64 },
}

/// Run one store write (a redb transaction, or etcd's), counting how long a successful one took
/// in the store-write histogram of the metrics.
fn timed_write(write: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    write()?;
    crate::metrics::record_store_write(started.elapsed());
    Ok(())
}

/// Where a coordinator's stores are: one redb file per state directory, or keys in one etcd.
#[derive(Clone, Default)]
pub enum StoreRoot {
    #[default]
    Redb,
    Etcd(std::sync::Arc<crate::etcd_store::EtcdHandle>),
}

impl StoreRoot {
    /// The store of the home core (`cluster` None, kept in `dir`) or of the cluster stored as
    /// `cluster` (kept in `dir` = `state_dir/clusters/NAME` with redb).
    pub fn open(&self, dir: &Path, cluster: Option<&str>) -> Result<Store, StoreError> {
        match self {
            StoreRoot::Redb => Store::open(&dir.join(STORE_FILE)),
            StoreRoot::Etcd(handle) => Store::open_etcd(crate::etcd_store::EtcdStore::new(
                std::sync::Arc::clone(handle),
                cluster,
            )),
        }
    }
}

/// The redb store's file in a state directory.
pub const STORE_FILE: &str = "coordinator.redb";

pub struct Store {
    backend: Backend,
    /// Where it is, for messages: the redb file, or `etcd:PREFIX/...`.
    path: PathBuf,
}

enum Backend {
    Redb(Database),
    Etcd(crate::etcd_store::EtcdStore),
}

impl Store {
    /// Open (or create) the store at `path`. redb holds an exclusive lock: a second coordinator on
    /// the same state directory is refused.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| StoreError::Open {
                path: path.to_path_buf(),
                message: error.to_string(),
            })?;
        }
        let db = Database::create(path).map_err(|error| StoreError::Open {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        let store = Store {
            backend: Backend::Redb(db),
            path: path.to_path_buf(),
        };
        // Create the tables so that readers never meet a missing one.
        store.write(|txn| {
            txn.open_table(GENERATIONS)?;
            txn.open_table(META)?;
            txn.open_table(AGENTS)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_CURSORS)?;
            Ok(())
        })?;
        store.upgrade()?;
        Ok(store)
    }

    /// Open (or create) a store on etcd. A new one is marked with [`FORMAT`] (and, for a
    /// cluster's store, its index entry); one from a newer coordinator is refused.
    pub fn open_etcd(etcd: crate::etcd_store::EtcdStore) -> Result<Store, StoreError> {
        let store = Store {
            path: PathBuf::from(etcd.location()),
            backend: Backend::Etcd(etcd),
        };
        match store.format()? {
            Some(FORMAT) => Ok(store),
            Some(found) if found > FORMAT => Err(StoreError::Newer {
                path: store.path.clone(),
                found,
            }),
            None if store.etcd().expect("etcd").handle().is_read_only() => {
                Err(StoreError::Io {
                    path: store.path.clone(),
                    message: "not there yet: no coordinator has led on this prefix (the first to lead creates it)".into(),
                })
            }
            _ => {
                let marker = serde_json::to_vec(&FORMAT).expect("serializable");
                let ops = store.etcd().expect("etcd").create_ops(marker);
                store.commit(ops)?;
                Ok(store)
            }
        }
    }

    fn etcd(&self) -> Option<&crate::etcd_store::EtcdStore> {
        match &self.backend {
            Backend::Etcd(etcd) => Some(etcd),
            Backend::Redb(_) => None,
        }
    }

    fn db(&self) -> &Database {
        match &self.backend {
            Backend::Redb(db) => db,
            Backend::Etcd(_) => unreachable!("redb only"),
        }
    }

    fn commit(&self, ops: Vec<kreach_etcd::Op>) -> Result<(), StoreError> {
        timed_write(|| {
            let etcd = self.etcd().expect("etcd");
            etcd.commit(ops).map_err(|e| self.io(e))
        })
    }

    /// The format this store was written in; None: written before formats were numbered (1).
    pub fn format(&self) -> Result<Option<u64>, StoreError> {
        self.meta(FORMAT_KEY)
    }

    /// The meta table's record under `key`, decoded; None when there is none.
    fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        if let Some(etcd) = self.etcd() {
            return match etcd.meta(key).map_err(|e| self.io(e))? {
                Some(bytes) => self.decode(key, &bytes).map(Some),
                None => Ok(None),
            };
        }
        let txn = self.db().begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(META).map_err(|e| self.io(e))?;
        match table.get(key).map_err(|e| self.io(e))? {
            Some(value) => self.decode(key, value.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Bring a format 1 store (or a new, empty one) to [`FORMAT`] in one transaction; refuse a
    /// newer one.
    fn upgrade(&self) -> Result<(), StoreError> {
        match self.format()? {
            Some(FORMAT) => Ok(()),
            Some(found) if found > FORMAT => Err(StoreError::Newer {
                path: self.path.clone(),
                found,
            }),
            _ => self.migrate_from_v1(),
        }
    }

    /// Format 1 → 2: every agent record and audit entry from encoded `kreach.v1` messages to JSON
    /// of the domain's types (through `kreach-proto`'s conversions), then the format marker. A
    /// record that does not decode is dropped with a warning: it is a cache of what agents report
    /// again when they connect (the audit trail's source stays on each agent).
    fn migrate_from_v1(&self) -> Result<(), StoreError> {
        use prost::Message;
        let mut agents = 0usize;
        let mut audit = 0usize;
        let mut dropped = 0usize;
        self.write(|txn| {
            let mut table = txn.open_table(AGENTS)?;
            let mut migrated = Vec::new();
            for item in table.iter()? {
                let (key, value) = item?;
                let node = key.value().to_string();
                let Ok(old) = serde_json::from_slice::<AgentRecordV1>(value.value()) else {
                    dropped += 1;
                    continue;
                };
                let status = old.status.and_then(|bytes| {
                    kreach_proto::NodeStatus::decode(bytes.as_slice())
                        .ok()
                        .map(|status| NodeReport::from(&status))
                });
                let facts = old.facts.and_then(|bytes| {
                    kreach_proto::HostFacts::decode(bytes.as_slice())
                        .ok()
                        .map(|facts| HostFacts::from(&facts))
                });
                let record = AgentRecord {
                    status,
                    facts,
                    last_seen_ms: old.last_seen_ms,
                };
                migrated.push((node, serde_json::to_vec(&record).expect("serializable")));
            }
            for (node, bytes) in &migrated {
                table.insert(node.as_str(), bytes.as_slice())?;
            }
            agents = migrated.len();

            let mut table = txn.open_table(AUDIT)?;
            let mut migrated = Vec::new();
            let mut undecodable = Vec::new();
            for item in table.iter()? {
                let (key, value) = item?;
                let (node, ordinal) = key.value();
                match kreach_proto::AuditRecord::decode(value.value()) {
                    Ok(record) => migrated.push((
                        (node.to_string(), ordinal),
                        serde_json::to_vec(&AuditRecord::from(&record)).expect("serializable"),
                    )),
                    Err(_) => undecodable.push((node.to_string(), ordinal)),
                }
            }
            for ((node, ordinal), bytes) in &migrated {
                table.insert((node.as_str(), *ordinal), bytes.as_slice())?;
            }
            for (node, ordinal) in &undecodable {
                table.remove((node.as_str(), *ordinal))?;
            }
            audit = migrated.len();
            dropped += undecodable.len();

            let marker = serde_json::to_vec(&FORMAT).expect("serializable");
            txn.open_table(META)?
                .insert(FORMAT_KEY, marker.as_slice())?;
            Ok(())
        })?;
        if agents + audit + dropped > 0 {
            tracing::info!(
                store = %self.path.display(),
                agents,
                audit_entries = audit,
                "migrated the coordinator store from format 1 to {FORMAT}"
            );
        }
        if dropped > 0 {
            tracing::warn!(store = %self.path.display(), dropped, "format 1 records that did not decode were dropped (agents report them again)");
        }
        Ok(())
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }

    fn write(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        timed_write(|| {
            let txn = self.db().begin_write().map_err(|e| self.io(e))?;
            body(&txn).map_err(|e| self.io(e))?;
            txn.commit().map_err(|e| self.io(e))
        })
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            message: error.to_string(),
        })
    }

    /// Store a new generation and the rollout that rolls it out, in one transaction.
    pub fn record_generation<R: Serialize>(
        &self,
        record: &GenerationRecord,
        rollout: &R,
    ) -> Result<(), StoreError> {
        let generation = serde_json::to_vec(record).expect("serializable");
        let rollout = serde_json::to_vec(rollout).expect("serializable");
        if let Some(etcd) = self.etcd() {
            return self.commit(vec![
                etcd.put_generation(record.generation, generation),
                etcd.put_meta(ROLLOUT_KEY, rollout),
            ]);
        }
        self.write(|txn| {
            txn.open_table(GENERATIONS)?
                .insert(record.generation, generation.as_slice())?;
            txn.open_table(META)?
                .insert(ROLLOUT_KEY, rollout.as_slice())?;
            Ok(())
        })
    }

    pub fn save_rollout<R: Serialize>(&self, rollout: &R) -> Result<(), StoreError> {
        self.save_meta(ROLLOUT_KEY, rollout)
    }

    /// Replace the meta table's record under `key`, in a transaction of its own.
    fn save_meta(&self, key: &str, value: &impl Serialize) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("serializable");
        if let Some(etcd) = self.etcd() {
            return self.commit(vec![etcd.put_meta(key, bytes)]);
        }
        self.write(|txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    /// The cluster's SCRAM users (salted credentials), as `kreachctl users` left them.
    pub fn scram_users<U: DeserializeOwned>(&self) -> Result<Vec<U>, StoreError> {
        Ok(self.meta(SCRAM_USERS_KEY)?.unwrap_or_default())
    }

    pub fn save_scram_users<U: Serialize>(&self, users: &[U]) -> Result<(), StoreError> {
        self.save_meta(SCRAM_USERS_KEY, &users)
    }

    /// Whether several coordinators share this store (etcd): what each would keep in its own
    /// state directory goes in the store instead.
    pub fn is_shared(&self) -> bool {
        self.etcd().is_some()
    }

    /// Keep which agents are connected to this coordinator, for followers to show (etcd only,
    /// on the leader's lease; with redb there are no followers and nothing is written).
    pub fn save_live(&self, record: &LiveRecord) -> Result<(), StoreError> {
        let Some(etcd) = self.etcd() else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(record).expect("serializable");
        self.commit(vec![etcd.put_live(bytes)])
    }

    /// The leader's [`LiveRecord`]; None when no coordinator leads (or with redb).
    pub fn live(&self) -> Result<Option<LiveRecord>, StoreError> {
        let Some(etcd) = self.etcd() else {
            return Ok(None);
        };
        match etcd.live().map_err(|e| self.io(e))? {
            Some(bytes) => self.decode("live", &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn kafka_ca(&self) -> Result<Option<StoredCa>, StoreError> {
        self.meta(KAFKA_CA_KEY)
    }

    pub fn save_kafka_ca(&self, ca: &StoredCa) -> Result<(), StoreError> {
        self.save_meta(KAFKA_CA_KEY, ca)
    }

    pub fn load_rollout<R: DeserializeOwned>(&self) -> Result<Option<R>, StoreError> {
        self.meta(ROLLOUT_KEY)
    }

    pub fn generations(&self) -> Result<Vec<GenerationRecord>, StoreError> {
        if let Some(etcd) = self.etcd() {
            return etcd
                .generations()
                .map_err(|e| self.io(e))?
                .iter()
                .map(|(n, bytes)| self.decode(&format!("generation {n}"), bytes))
                .collect();
        }
        let txn = self.db().begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(GENERATIONS).map_err(|e| self.io(e))?;
        let mut records = Vec::new();
        for item in table.iter().map_err(|e| self.io(e))? {
            let (key, value) = item.map_err(|e| self.io(e))?;
            records.push(self.decode(&format!("generation {}", key.value()), value.value())?);
        }
        Ok(records)
    }

    pub fn generation(&self, generation: u64) -> Result<Option<GenerationRecord>, StoreError> {
        if let Some(etcd) = self.etcd() {
            return match etcd.generation(generation).map_err(|e| self.io(e))? {
                Some(bytes) => self
                    .decode(&format!("generation {generation}"), &bytes)
                    .map(Some),
                None => Ok(None),
            };
        }
        let txn = self.db().begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(GENERATIONS).map_err(|e| self.io(e))?;
        match table.get(generation).map_err(|e| self.io(e))? {
            Some(value) => self
                .decode(&format!("generation {generation}"), value.value())
                .map(Some),
            None => Ok(None),
        }
    }

    pub fn save_agent(&self, node: &str, record: &AgentRecord) -> Result<(), StoreError> {
        self.save_agents(&[(node.to_string(), record.clone())])
    }

    /// Save many agent records in one transaction.
    pub fn save_agents(&self, records: &[(String, AgentRecord)]) -> Result<(), StoreError> {
        let encoded: Vec<(&str, Vec<u8>)> = records
            .iter()
            .map(|(node, record)| {
                (
                    node.as_str(),
                    serde_json::to_vec(record).expect("serializable"),
                )
            })
            .collect();
        if let Some(etcd) = self.etcd() {
            return self.commit(
                encoded
                    .into_iter()
                    .map(|(node, bytes)| etcd.put_agent(node, bytes))
                    .collect(),
            );
        }
        self.write(|txn| {
            let mut table = txn.open_table(AGENTS)?;
            for (node, bytes) in &encoded {
                table.insert(*node, bytes.as_slice())?;
            }
            Ok(())
        })
    }

    /// Keep a node's audit entries (in the agent's seq order), in one transaction: entries at or
    /// below the highest seq already kept are duplicates of a resend and skipped, unless the
    /// agent's trail `restarted`. Only the latest [`AUDIT_KEPT_PER_NODE`] stay. Returns the
    /// highest seq kept.
    pub fn append_audit(
        &self,
        node: &str,
        entries: &[AuditRecord],
        restarted: bool,
    ) -> Result<u64, StoreError> {
        let batch = AuditBatch {
            node: node.to_string(),
            entries: entries.to_vec(),
            restarted,
        };
        Ok(self.write_reports(std::slice::from_ref(&batch), &[])?[0])
    }

    /// Group commit: every audit batch (in order, each as [`Store::append_audit`] would keep it)
    /// and every agent record in one transaction, so one fsync covers all of them. Returns the
    /// highest seq kept for each batch's node after that batch.
    pub fn write_reports(
        &self,
        audits: &[AuditBatch],
        agents: &[(String, Option<AgentRecord>)],
    ) -> Result<Vec<u64>, StoreError> {
        // None: the agent's record moved to another cluster's store; removed here.
        let encoded: Vec<(&str, Option<Vec<u8>>)> = agents
            .iter()
            .map(|(node, record)| {
                let bytes = record
                    .as_ref()
                    .map(|record| serde_json::to_vec(record).expect("serializable"));
                (node.as_str(), bytes)
            })
            .collect();
        let mut last_seqs = Vec::with_capacity(audits.len());
        if let Some(etcd) = self.etcd() {
            // One op per key: etcd refuses a transaction that writes a key twice, or puts a key
            // inside a range it deletes.
            let mut agent_ops: std::collections::BTreeMap<&str, kreach_etcd::Op> =
                Default::default();
            for (node, bytes) in encoded {
                let op = match bytes {
                    Some(bytes) => etcd.put_agent(node, bytes),
                    None => etcd.delete_agent(node),
                };
                agent_ops.insert(node, op);
            }
            let mut ops: Vec<kreach_etcd::Op> = agent_ops.into_values().collect();
            let mut trails: std::collections::BTreeMap<&str, (AuditCursor, Vec<OrdinalEntry>)> =
                Default::default();
            for batch in audits {
                let node = batch.node.as_str();
                if !trails.contains_key(node) {
                    let cursor = match etcd.cursor(node).map_err(|e| self.io(e))? {
                        Some(bytes) => self.decode(&format!("audit cursor {node}"), &bytes)?,
                        None => AuditCursor::default(),
                    };
                    trails.insert(node, (cursor, Vec::new()));
                }
                let (cursor, kept) = trails.get_mut(node).expect("read above");
                kept.extend(plan_audit(cursor, batch).0);
                last_seqs.push(cursor.last_seq);
            }
            let mut cursor_ops = Vec::new();
            for (node, (cursor, kept)) in trails {
                let below = cursor.next_ordinal.saturating_sub(AUDIT_KEPT_PER_NODE);
                for (ordinal, bytes) in kept {
                    if ordinal >= below {
                        ops.push(etcd.put_audit(node, ordinal, bytes));
                    }
                }
                if below > 0 {
                    ops.push(etcd.delete_audit_below(node, below));
                }
                cursor_ops.push(
                    etcd.put_cursor(node, serde_json::to_vec(&cursor).expect("serializable")),
                );
            }
            // The cursors last: a write cut in several transactions never has a cursor ahead
            // of the entries it counts.
            ops.extend(cursor_ops);
            self.commit(ops)?;
            return Ok(last_seqs);
        }
        self.write(|txn| {
            if !encoded.is_empty() {
                let mut table = txn.open_table(AGENTS)?;
                for (node, bytes) in &encoded {
                    match bytes {
                        Some(bytes) => {
                            table.insert(*node, bytes.as_slice())?;
                        }
                        None => {
                            table.remove(*node)?;
                        }
                    }
                }
            }
            if !audits.is_empty() {
                let mut cursors = txn.open_table(AUDIT_CURSORS)?;
                let mut table = txn.open_table(AUDIT)?;
                for batch in audits {
                    last_seqs.push(append_audit_in(&mut cursors, &mut table, batch)?);
                }
            }
            Ok(())
        })?;
        Ok(last_seqs)
    }

    /// The highest agent seq kept for `node` (0: none).
    pub fn audit_last_seq(&self, node: &str) -> Result<u64, StoreError> {
        if let Some(etcd) = self.etcd() {
            let cursor: AuditCursor = match etcd.cursor(node).map_err(|e| self.io(e))? {
                Some(bytes) => self.decode(&format!("audit cursor {node}"), &bytes)?,
                None => AuditCursor::default(),
            };
            return Ok(cursor.last_seq);
        }
        let txn = self.db().begin_read().map_err(|e| self.io(e))?;
        let cursors = txn.open_table(AUDIT_CURSORS).map_err(|e| self.io(e))?;
        let cursor: AuditCursor = match cursors.get(node).map_err(|e| self.io(e))? {
            Some(value) => self.decode(&format!("audit cursor {node}"), value.value())?,
            None => AuditCursor::default(),
        };
        Ok(cursor.last_seq)
    }

    /// `node`'s kept audit entries, oldest first; at most the `last` latest when set.
    pub fn audit(&self, node: &str, last: Option<usize>) -> Result<Vec<AuditRecord>, StoreError> {
        let mut entries = Vec::new();
        if let Some(etcd) = self.etcd() {
            for bytes in etcd.audit(node).map_err(|e| self.io(e))? {
                entries.push(self.decode(&format!("audit {node}"), &bytes)?);
            }
            if let Some(last) = last {
                entries.drain(..entries.len().saturating_sub(last));
            }
            return Ok(entries);
        }
        let txn = self.db().begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(AUDIT).map_err(|e| self.io(e))?;
        for item in table
            .range((node, 0)..=(node, u64::MAX))
            .map_err(|e| self.io(e))?
        {
            let (key, value) = item.map_err(|e| self.io(e))?;
            let (_, ordinal) = key.value();
            entries.push(self.decode(&format!("audit {node} {ordinal}"), value.value())?);
        }
        if let Some(last) = last {
            entries.drain(..entries.len().saturating_sub(last));
        }
        Ok(entries)
    }

    pub fn agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        if let Some(etcd) = self.etcd() {
            return etcd
                .agents()
                .map_err(|e| self.io(e))?
                .into_iter()
                .map(|(node, bytes)| {
                    let record = self.decode(&format!("agent {node}"), &bytes)?;
                    Ok((node, record))
                })
                .collect();
        }
        let txn = self.db().begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(AGENTS).map_err(|e| self.io(e))?;
        let mut records = Vec::new();
        for item in table.iter().map_err(|e| self.io(e))? {
            let (key, value) = item.map_err(|e| self.io(e))?;
            let node = key.value().to_string();
            let record = self.decode(&format!("agent {node}"), value.value())?;
            records.push((node, record));
        }
        Ok(records)
    }
}

/// Every record of a store as it is kept (JSON), for `kreach-coordinator migrate`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dump {
    /// The meta records but the format marker (the rollout, the SCRAM users).
    pub meta: Vec<(String, Vec<u8>)>,
    pub generations: Vec<(u64, Vec<u8>)>,
    pub agents: Vec<(String, Vec<u8>)>,
    /// (node, ordinal, entry)
    pub audit: Vec<(String, u64, Vec<u8>)>,
    pub cursors: Vec<(String, Vec<u8>)>,
}

impl Dump {
    /// `3 generations, 5 agents, 120 audit entries`
    pub fn summary(&self) -> String {
        format!(
            "{} generation(s), {} agent record(s), {} audit entries",
            self.generations.len(),
            self.agents.len(),
            self.audit.len()
        )
    }
}

impl Store {
    /// Every record, as kept.
    pub fn dump(&self) -> Result<Dump, StoreError> {
        if let Some(etcd) = self.etcd() {
            let io = |e| self.io(e);
            let mut dump = Dump {
                meta: etcd.list("meta").map_err(io)?,
                generations: etcd.generations().map_err(io)?,
                agents: etcd.list("agent").map_err(io)?,
                audit: Vec::new(),
                cursors: etcd.list("cursor").map_err(io)?,
            };
            dump.meta.retain(|(key, _)| key != FORMAT_KEY);
            for (rest, bytes) in etcd.list("audit").map_err(io)? {
                let parsed = rest
                    .rsplit_once('/')
                    .and_then(|(node, n)| Some((node.to_string(), n.parse::<u64>().ok()?)));
                let Some((node, ordinal)) = parsed else {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        key: format!("audit/{rest}"),
                        message: "not NODE/ORDINAL".into(),
                    });
                };
                dump.audit.push((node, ordinal, bytes));
            }
            return Ok(dump);
        }
        let txn = self.db().begin_read().map_err(|e| self.io(e))?;
        let read = || -> Result<Dump, redb::Error> {
            let mut dump = Dump::default();
            for item in txn.open_table(META)?.iter()? {
                let (key, value) = item?;
                if key.value() != FORMAT_KEY {
                    dump.meta
                        .push((key.value().to_string(), value.value().to_vec()));
                }
            }
            for item in txn.open_table(GENERATIONS)?.iter()? {
                let (key, value) = item?;
                dump.generations.push((key.value(), value.value().to_vec()));
            }
            for item in txn.open_table(AGENTS)?.iter()? {
                let (key, value) = item?;
                dump.agents
                    .push((key.value().to_string(), value.value().to_vec()));
            }
            for item in txn.open_table(AUDIT)?.iter()? {
                let (key, value) = item?;
                let (node, ordinal) = key.value();
                dump.audit
                    .push((node.to_string(), ordinal, value.value().to_vec()));
            }
            for item in txn.open_table(AUDIT_CURSORS)?.iter()? {
                let (key, value) = item?;
                dump.cursors
                    .push((key.value().to_string(), value.value().to_vec()));
            }
            Ok(dump)
        };
        read().map_err(|e| self.io(e))
    }

    /// Write every record of `dump` into this (new, empty) store.
    pub fn load(&self, dump: &Dump) -> Result<(), StoreError> {
        if let Some(etcd) = self.etcd() {
            let mut ops = Vec::new();
            ops.extend(
                dump.generations
                    .iter()
                    .map(|(n, b)| etcd.put_generation(*n, b.clone())),
            );
            ops.extend(
                dump.agents
                    .iter()
                    .map(|(node, b)| etcd.put_agent(node, b.clone())),
            );
            ops.extend(
                dump.audit
                    .iter()
                    .map(|(node, n, b)| etcd.put_audit(node, *n, b.clone())),
            );
            ops.extend(
                dump.cursors
                    .iter()
                    .map(|(node, b)| etcd.put_cursor(node, b.clone())),
            );
            // The rollout last: a store cut short has no rollout pointing past its generations.
            ops.extend(
                dump.meta
                    .iter()
                    .map(|(key, b)| etcd.put_meta(key, b.clone())),
            );
            return self.commit(ops);
        }
        self.write(|txn| {
            let mut table = txn.open_table(GENERATIONS)?;
            for (n, bytes) in &dump.generations {
                table.insert(*n, bytes.as_slice())?;
            }
            let mut table = txn.open_table(AGENTS)?;
            for (node, bytes) in &dump.agents {
                table.insert(node.as_str(), bytes.as_slice())?;
            }
            let mut table = txn.open_table(AUDIT)?;
            for (node, n, bytes) in &dump.audit {
                table.insert((node.as_str(), *n), bytes.as_slice())?;
            }
            let mut table = txn.open_table(AUDIT_CURSORS)?;
            for (node, bytes) in &dump.cursors {
                table.insert(node.as_str(), bytes.as_slice())?;
            }
            let mut table = txn.open_table(META)?;
            for (key, bytes) in &dump.meta {
                table.insert(key.as_str(), bytes.as_slice())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct FakeRollout {
        step: u32,
    }

    #[test]
    fn generations_rollout_and_agents_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.redb");
        {
            let store = Store::open(&path).unwrap();
            let record = GenerationRecord {
                generation: 1,
                spec_toml: "[cluster]".into(),
                applied_at_ms: 5,
                summary: "first".into(),
                rollback_of: None,
                outcome: None,
            };
            store
                .record_generation(&record, &FakeRollout { step: 0 })
                .unwrap();
            store.save_rollout(&FakeRollout { step: 2 }).unwrap();
            store
                .save_agent(
                    "w1",
                    &AgentRecord {
                        status: Some(NodeReport {
                            reason: "a rollback".into(),
                            ..NodeReport::default()
                        }),
                        facts: None,
                        last_seen_ms: 9,
                    },
                )
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.generations().unwrap().len(), 1);
        assert_eq!(store.generation(1).unwrap().unwrap().summary, "first");
        assert_eq!(store.generation(2).unwrap(), None);
        assert_eq!(
            store.load_rollout::<FakeRollout>().unwrap(),
            Some(FakeRollout { step: 2 })
        );
        let agents = store.agents().unwrap();
        assert_eq!(agents[0].1.last_seen_ms, 9);
        assert_eq!(agents[0].1.status.as_ref().unwrap().reason, "a rollback");
        assert_eq!(store.format().unwrap(), Some(FORMAT));
    }

    /// An audit entry whose reason marks it.
    fn entry(seq: u64, mark: &str) -> AuditRecord {
        AuditRecord {
            seq,
            reason: mark.to_string(),
            ..AuditRecord::default()
        }
    }

    fn marks(entries: &[AuditRecord]) -> Vec<&str> {
        entries.iter().map(|entry| entry.reason.as_str()).collect()
    }

    #[test]
    fn audit_entries_are_kept_once_per_node_pruned_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.redb");
        {
            let store = Store::open(&path).unwrap();
            let batch: Vec<AuditRecord> = (1..=3).map(|seq| entry(seq, &seq.to_string())).collect();
            assert_eq!(store.append_audit("w1", &batch, false).unwrap(), 3);
            // A resend after a lost ack adds nothing.
            assert_eq!(store.append_audit("w1", &batch[1..], false).unwrap(), 3);
            assert_eq!(store.append_audit("w2", &batch[..1], false).unwrap(), 1);
            // A trail that started over keeps the older entries too.
            assert_eq!(store.append_audit("w1", &[entry(1, "9")], true).unwrap(), 1);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            marks(&store.audit("w1", None).unwrap()),
            ["1", "2", "3", "9"]
        );
        assert_eq!(marks(&store.audit("w1", Some(2)).unwrap()), ["3", "9"]);
        assert_eq!(marks(&store.audit("w2", None).unwrap()), ["1"]);
        assert_eq!(store.audit_last_seq("w1").unwrap(), 1);
        assert_eq!(store.audit_last_seq("nobody").unwrap(), 0);

        let many: Vec<AuditRecord> = (10..10 + AUDIT_KEPT_PER_NODE + 5)
            .map(|seq| entry(seq, &seq.to_string()))
            .collect();
        store.append_audit("w1", &many, false).unwrap();
        let kept = store.audit("w1", None).unwrap();
        assert_eq!(kept.len() as u64, AUDIT_KEPT_PER_NODE);
        assert_eq!(kept.last(), many.last());
    }

    #[test]
    fn a_second_coordinator_on_the_same_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.redb");
        let _first = Store::open(&path).unwrap();
        let error = Store::open(&path)
            .err()
            .expect("second open refused")
            .to_string();
        assert!(
            error.contains("cannot open the coordinator store"),
            "{error}"
        );
    }

    #[test]
    fn a_format_1_store_is_migrated_to_domain_records_once_when_opened() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.redb");
        // A store as a coordinator before formats wrote it: no marker, wire messages as bytes.
        let status = kreach_proto::NodeStatus {
            node: "b1".into(),
            release: Some(kreach_proto::ReleaseId {
                generation: 4,
                step: 2,
                attempt: 1,
            }),
            phase: kreach_proto::Phase::RolledBack as i32,
            reason: "EXTERNAL did not answer".into(),
            checks: vec![kreach_proto::Check {
                name: "min.insync.replicas".into(),
                ok: true,
                detail: "2 of 3 in sync".into(),
            }],
            reachability: vec![kreach_proto::Reachability {
                broker_id: 1,
                endpoint: "b1.c:9093".into(),
                ok: false,
                reason: "timed out".into(),
                checked_at_ms: 7,
                detail: "no answer in 3 s".into(),
            }],
            ..Default::default()
        };
        let facts = kreach_proto::HostFacts {
            node: "b1".into(),
            hostname: "b1".into(),
            addresses: vec!["198.18.0.11".into()],
            kafka_controller: true,
            ..Default::default()
        };
        let audit = kreach_proto::AuditRecord {
            seq: 3,
            node: "b1".into(),
            action: "repair".into(),
            path: "/etc/hosts".into(),
            generation: 4,
            ..Default::default()
        };
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let v1 = serde_json::json!({
                "status": status.encode_to_vec(),
                "facts": facts.encode_to_vec(),
                "last_seen_ms": 99,
            });
            txn.open_table(AGENTS)
                .unwrap()
                .insert("b1", serde_json::to_vec(&v1).unwrap().as_slice())
                .unwrap();
            txn.open_table(AUDIT)
                .unwrap()
                .insert(("b1", 0), audit.encode_to_vec().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.format().unwrap(), Some(FORMAT));
        let agents = store.agents().unwrap();
        let record = &agents[0].1;
        assert_eq!(agents[0].0, "b1");
        assert_eq!(record.last_seen_ms, 99);
        // Every field came across, through the one conversion module.
        assert_eq!(record.status, Some(NodeReport::from(&status)));
        let report = record.status.as_ref().unwrap();
        assert_eq!(report.phase, kreach_domain::report::Phase::RolledBack);
        assert_eq!(report.reachability[0].reason, "timed out");
        assert_eq!(record.facts, Some(HostFacts::from(&facts)));
        assert_eq!(
            store.audit("b1", None).unwrap(),
            [AuditRecord::from(&audit)]
        );
        drop(store);
        // Opened again: format 2 already, nothing to migrate, the same records.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.agents().unwrap(), agents);
    }

    #[test]
    fn a_store_from_a_newer_coordinator_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, b"3".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let error = Store::open(&path).err().expect("refused").to_string();
        assert!(
            error.contains("is in format 3, newer than this coordinator reads (2)"),
            "{error}"
        );
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get(FORMAT_KEY).unwrap().unwrap().value(), b"3");
    }
}
