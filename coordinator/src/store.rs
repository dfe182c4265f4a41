//! The coordinator's durable store (redb): every applied spec as a numbered generation, the
//! rollout state, what was released to each node, and the last status and facts of every agent.
//!
//! Owns persistence only. Every write is one redb transaction, committed durably before the
//! coordinator acts on it, so a `kill -9` at any point resumes exactly where it was: a release is
//! stored before it is sent, never after.

use std::path::{Path, PathBuf};

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

/// One node's audit entries as one ReportAudit handed them over: `(agent seq, encoded entry)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBatch {
    pub node: String,
    pub entries: Vec<(u64, Vec<u8>)>,
    /// The agent's trail started over: its first entry is kept even at a lower seq.
    pub restarted: bool,
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
    for (index, (seq, bytes)) in batch.entries.iter().enumerate() {
        let fresh = if batch.restarted && index == 0 {
            true
        } else {
            *seq > cursor.last_seq
        };
        if !fresh {
            continue;
        }
        table.insert((node, cursor.next_ordinal), bytes.as_slice())?;
        cursor.next_ordinal += 1;
        cursor.last_seq = *seq;
    }
    if cursor.next_ordinal > AUDIT_KEPT_PER_NODE {
        let below = cursor.next_ordinal - AUDIT_KEPT_PER_NODE;
        table.retain_in((node, 0)..(node, below), |_, _| false)?;
    }
    let encoded = serde_json::to_vec(&cursor).expect("serializable");
    cursors.insert(node, encoded.as_slice())?;
    Ok(cursor.last_seq)
}

const ROLLOUT_KEY: &str = "rollout";
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
    /// The last NodeStatus, protobuf-encoded (it is the wire value, kept as such).
    pub status: Option<Vec<u8>>,
    /// The last HostFacts, protobuf-encoded.
    pub facts: Option<Vec<u8>>,
    pub last_seen_ms: u64,
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
}

pub struct Store {
    db: Database,
    path: PathBuf,
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
            db,
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
        Ok(store)
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
        let started = std::time::Instant::now();
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        body(&txn).map_err(|e| self.io(e))?;
        txn.commit().map_err(|e| self.io(e))?;
        crate::metrics::record_store_write(started.elapsed());
        Ok(())
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
        self.write(|txn| {
            txn.open_table(GENERATIONS)?
                .insert(record.generation, generation.as_slice())?;
            txn.open_table(META)?
                .insert(ROLLOUT_KEY, rollout.as_slice())?;
            Ok(())
        })
    }

    pub fn save_rollout<R: Serialize>(&self, rollout: &R) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rollout).expect("serializable");
        self.write(|txn| {
            txn.open_table(META)?
                .insert(ROLLOUT_KEY, bytes.as_slice())?;
            Ok(())
        })
    }

    /// The cluster's SCRAM users (salted credentials), as `kreachctl users` left them.
    pub fn scram_users<U: DeserializeOwned>(&self) -> Result<Vec<U>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(META).map_err(|e| self.io(e))?;
        match table.get(SCRAM_USERS_KEY).map_err(|e| self.io(e))? {
            Some(value) => self.decode(SCRAM_USERS_KEY, value.value()),
            None => Ok(Vec::new()),
        }
    }

    pub fn save_scram_users<U: Serialize>(&self, users: &[U]) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(users).expect("serializable");
        self.write(|txn| {
            txn.open_table(META)?
                .insert(SCRAM_USERS_KEY, bytes.as_slice())?;
            Ok(())
        })
    }

    pub fn load_rollout<R: DeserializeOwned>(&self) -> Result<Option<R>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(META).map_err(|e| self.io(e))?;
        match table.get(ROLLOUT_KEY).map_err(|e| self.io(e))? {
            Some(value) => self.decode(ROLLOUT_KEY, value.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn generations(&self) -> Result<Vec<GenerationRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(GENERATIONS).map_err(|e| self.io(e))?;
        let mut records = Vec::new();
        for item in table.iter().map_err(|e| self.io(e))? {
            let (key, value) = item.map_err(|e| self.io(e))?;
            records.push(self.decode(&format!("generation {}", key.value()), value.value())?);
        }
        Ok(records)
    }

    pub fn generation(&self, generation: u64) -> Result<Option<GenerationRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(GENERATIONS).map_err(|e| self.io(e))?;
        match table.get(generation).map_err(|e| self.io(e))? {
            Some(value) => self
                .decode(&format!("generation {generation}"), value.value())
                .map(Some),
            None => Ok(None),
        }
    }

    pub fn save_agent(&self, node: &str, record: &AgentRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("serializable");
        self.write(|txn| {
            txn.open_table(AGENTS)?.insert(node, bytes.as_slice())?;
            Ok(())
        })
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
        self.write(|txn| {
            let mut table = txn.open_table(AGENTS)?;
            for (node, bytes) in &encoded {
                table.insert(*node, bytes.as_slice())?;
            }
            Ok(())
        })
    }

    /// Keep a node's audit entries `(agent seq, encoded entry)`, in one transaction: entries at or
    /// below the highest seq already kept are duplicates of a resend and skipped, unless the
    /// agent's trail `restarted`. Only the latest [`AUDIT_KEPT_PER_NODE`] stay. Returns the
    /// highest seq kept.
    pub fn append_audit(
        &self,
        node: &str,
        entries: &[(u64, Vec<u8>)],
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
        agents: &[(String, AgentRecord)],
    ) -> Result<Vec<u64>, StoreError> {
        let encoded: Vec<(&str, Vec<u8>)> = agents
            .iter()
            .map(|(node, record)| {
                (
                    node.as_str(),
                    serde_json::to_vec(record).expect("serializable"),
                )
            })
            .collect();
        let mut last_seqs = Vec::with_capacity(audits.len());
        self.write(|txn| {
            if !encoded.is_empty() {
                let mut table = txn.open_table(AGENTS)?;
                for (node, bytes) in &encoded {
                    table.insert(*node, bytes.as_slice())?;
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
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let cursors = txn.open_table(AUDIT_CURSORS).map_err(|e| self.io(e))?;
        let cursor: AuditCursor = match cursors.get(node).map_err(|e| self.io(e))? {
            Some(value) => self.decode(&format!("audit cursor {node}"), value.value())?,
            None => AuditCursor::default(),
        };
        Ok(cursor.last_seq)
    }

    /// `node`'s kept audit entries (encoded), oldest first; at most the `last` latest when set.
    pub fn audit(&self, node: &str, last: Option<usize>) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(AUDIT).map_err(|e| self.io(e))?;
        let mut entries = Vec::new();
        for item in table
            .range((node, 0)..=(node, u64::MAX))
            .map_err(|e| self.io(e))?
        {
            let (_, value) = item.map_err(|e| self.io(e))?;
            entries.push(value.value().to_vec());
        }
        if let Some(last) = last {
            entries.drain(..entries.len().saturating_sub(last));
        }
        Ok(entries)
    }

    pub fn agents(&self) -> Result<Vec<(String, AgentRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
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
                        status: Some(vec![1, 2]),
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
        assert_eq!(store.agents().unwrap()[0].1.last_seen_ms, 9);
    }

    #[test]
    fn audit_entries_are_kept_once_per_node_pruned_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.redb");
        {
            let store = Store::open(&path).unwrap();
            let batch: Vec<(u64, Vec<u8>)> = (1..=3).map(|seq| (seq, vec![seq as u8])).collect();
            assert_eq!(store.append_audit("w1", &batch, false).unwrap(), 3);
            // A resend after a lost ack adds nothing.
            assert_eq!(store.append_audit("w1", &batch[1..], false).unwrap(), 3);
            assert_eq!(store.append_audit("w2", &batch[..1], false).unwrap(), 1);
            // A trail that started over keeps the older entries too.
            assert_eq!(store.append_audit("w1", &[(1, vec![9])], true).unwrap(), 1);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.audit("w1", None).unwrap(),
            vec![vec![1], vec![2], vec![3], vec![9]]
        );
        assert_eq!(store.audit("w1", Some(2)).unwrap(), vec![vec![3], vec![9]]);
        assert_eq!(store.audit("w2", None).unwrap(), vec![vec![1]]);
        assert_eq!(store.audit_last_seq("w1").unwrap(), 1);
        assert_eq!(store.audit_last_seq("nobody").unwrap(), 0);

        let many: Vec<(u64, Vec<u8>)> = (10..10 + AUDIT_KEPT_PER_NODE + 5)
            .map(|seq| (seq, seq.to_le_bytes().to_vec()))
            .collect();
        store.append_audit("w1", &many, false).unwrap();
        let kept = store.audit("w1", None).unwrap();
        assert_eq!(kept.len() as u64, AUDIT_KEPT_PER_NODE);
        assert_eq!(kept.last().unwrap(), &many.last().unwrap().1);
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
}
