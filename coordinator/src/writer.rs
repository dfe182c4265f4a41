//! The report writer: durable writes of what agents report, off the coordinator's main lock.
//!
//! Every agent hands over its audit entries after each apply, and the coordinator keeps them
//! durably (an fsync). Done under [`crate::core::Core`]'s lock, one fsync per agent, a 200-agent
//! apply held every other agent's report and every operator call behind 200 fsyncs. Here one
//! thread owns those writes and commits everything queued while the previous commit ran in one
//! redb transaction (group commit): one fsync for all of them.
//!
//! Durability is unchanged: an audit report is acknowledged to its agent only after the
//! transaction holding it has committed. Agent records (last status and facts) were already
//! flushed once per tick, after their reports had been answered; they now ride the same commits.
//! Rollout state is not written here: the core still persists it under its lock before it
//! publishes a release (a `kill -9` resumes exactly where it was).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use crate::store::{AgentRecord, AuditBatch, Store, StoreError};

/// What the writer is asked to do.
enum Job {
    /// Keep an audit batch; answer with the node's highest seq kept once committed.
    Audit {
        batch: AuditBatch,
        done: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Keep agent records, or remove them where None (no answer: nobody waits for them).
    Agents(Vec<(String, Option<AgentRecord>)>),
    /// Answer once everything queued before it is committed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A handle on the writer thread; cheap to clone. The thread ends when every handle is dropped.
#[derive(Clone)]
pub struct ReportWriter {
    jobs: Sender<Job>,
    store: Arc<Store>,
}

impl ReportWriter {
    /// Start the writer thread over `store`.
    pub fn start(store: Arc<Store>) -> ReportWriter {
        let (jobs, queue) = mpsc::channel();
        let thread_store = Arc::clone(&store);
        std::thread::Builder::new()
            .name("report-writer".into())
            .spawn(move || run(&thread_store, &queue))
            .expect("spawning the report writer thread");
        ReportWriter { jobs, store }
    }

    /// Keep `batch` durably; the node's highest seq kept, once committed.
    pub async fn append_audit(&self, batch: AuditBatch) -> Result<u64, StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Audit { batch, done }).is_err() {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// The highest seq kept for `node` (a read: it never waits for the writer).
    pub fn audit_last_seq(&self, node: &str) -> Result<u64, StoreError> {
        self.store.audit_last_seq(node)
    }

    /// Queue agent records for the next commit (None: remove the node's record).
    pub fn save_agents(&self, records: Vec<(String, Option<AgentRecord>)>) {
        if !records.is_empty() && self.jobs.send(Job::Agents(records)).is_err() {
            tracing::error!("the report writer stopped: agent records were not saved");
        }
    }

    /// Wait until everything queued so far is committed (at shutdown). Blocking.
    pub fn flush(&self) {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = answer.blocking_recv();
        }
    }

    fn stopped(&self) -> StoreError {
        StoreError::Io {
            path: self.store.path().to_path_buf(),
            message: "the report writer stopped".into(),
        }
    }
}

/// Wait for a job, take every job queued behind it, commit them in one transaction, answer.
fn run(store: &Store, queue: &Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        jobs.extend(queue.try_iter());
        let mut audits = Vec::new();
        let mut waiting = Vec::new();
        let mut agents = Vec::new();
        let mut flushes = Vec::new();
        for job in jobs {
            match job {
                Job::Audit { batch, done } => {
                    audits.push(batch);
                    waiting.push(done);
                }
                Job::Agents(records) => agents.extend(records),
                Job::Flush(done) => flushes.push(done),
            }
        }
        if !audits.is_empty() || !agents.is_empty() {
            let reports = audits.len();
            match store.write_reports(&audits, &agents) {
                Ok(last_seqs) => {
                    tracing::debug!(reports, agents = agents.len(), "reports committed");
                    for (done, last_seq) in waiting.into_iter().zip(last_seqs) {
                        let _ = done.send(Ok(last_seq));
                    }
                }
                Err(error) => {
                    tracing::error!(
                        reports,
                        agents = agents.len(),
                        "cannot store agent reports: {error}"
                    );
                    for done in waiting {
                        let _ = done.send(Err(StoreError::Io {
                            path: store.path().to_path_buf(),
                            message: error.to_string(),
                        }));
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(node: &str, seqs: std::ops::RangeInclusive<u64>) -> AuditBatch {
        AuditBatch {
            node: node.to_string(),
            entries: seqs
                .map(|seq| kreach_domain::report::AuditRecord {
                    seq,
                    ..Default::default()
                })
                .collect(),
            restarted: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reports_are_each_answered_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("coordinator.redb")).unwrap());
        let writer = ReportWriter::start(Arc::clone(&store));
        // Ten agents at once, each sending five batches in order and awaiting every ack, as the
        // agent's client does.
        let mut agents = Vec::new();
        for index in 0..10 {
            let writer = writer.clone();
            let store = Arc::clone(&store);
            agents.push(tokio::spawn(async move {
                let node = format!("c{index}");
                let mut acked = 0;
                for first in (1..=13).step_by(3) {
                    acked = writer
                        .append_audit(batch(&node, first..=first + 2))
                        .await
                        .unwrap();
                    // Acknowledged means stored: the store already holds what the answer says.
                    assert_eq!(store.audit_last_seq(&node).unwrap(), acked);
                }
                (node, acked)
            }));
        }
        let mut acked = std::collections::BTreeMap::new();
        for agent in agents {
            let (node, last_seq) = agent.await.unwrap();
            acked.insert(node, last_seq);
        }
        writer.save_agents(vec![(
            "c1".to_string(),
            Some(AgentRecord {
                status: None,
                facts: None,
                last_seen_ms: 42,
            }),
        )]);
        tokio::task::spawn_blocking({
            let writer = writer.clone();
            move || writer.flush()
        })
        .await
        .unwrap();
        assert_eq!(acked.len(), 10);
        for (node, last_seq) in &acked {
            assert_eq!(*last_seq, 15, "{node}");
            assert_eq!(store.audit(node, None).unwrap().len(), 15, "{node}");
        }
        assert_eq!(store.agents().unwrap()[0].1.last_seen_ms, 42);
        // A record that moved to another cluster's store is removed from this one.
        writer.save_agents(vec![("c1".to_string(), None)]);
        tokio::task::spawn_blocking(move || writer.flush())
            .await
            .unwrap();
        assert!(store.agents().unwrap().is_empty());
    }
}
