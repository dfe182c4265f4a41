//! Plans checked against the hosts: ask each node's agent to dry-run its spec against its files as
//! they are now, and put the answers into the plan.
//!
//! Owns the agents' dry-run streams (one per connected agent that opened `DryRuns`), the requests
//! waiting for an answer, and the bounded wait: every agent is asked at once, and whatever has not
//! answered when the deadline passes is shown as not checked. It does not plan (that is
//! [`crate::core`]) and never touches the rollout: a dry run changes nothing anywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kreach_proto as pb;
use tokio::sync::{mpsc, oneshot};

/// How long a plan waits, in total, for the agents' dry runs.
pub const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests queued per agent before further ones are refused (a plan asks one per node).
const QUEUE: usize = 16;

/// The dry-run side of every connected agent. Cheap to clone; all clones share one registry.
#[derive(Clone, Default)]
pub struct DryRuns {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// node → (its stream's connection number, the stream's sender).
    agents: BTreeMap<String, (u64, mpsc::Sender<pb::DryRunRequest>)>,
    /// request id → (the node asked, where its answer goes).
    pending: HashMap<u64, (String, oneshot::Sender<pb::DryRunReport>)>,
    /// diagnosis id → (the client node asked, where its steps go).
    diagnoses: HashMap<u64, (String, mpsc::Sender<pb::DiagnoseStep>)>,
}

/// Why a request was not put on an agent's stream.
enum Unsent {
    /// The agent has no dry-run stream open here.
    NoStream,
    /// Its queue is full.
    Busy,
}

impl Inner {
    /// Put the request `build` makes (given a fresh id) on `node`'s stream; the id it went with.
    fn send(
        &mut self,
        node: &str,
        build: impl FnOnce(u64) -> pb::DryRunRequest,
    ) -> Result<u64, Unsent> {
        let (_, sender) = self.agents.get(node).ok_or(Unsent::NoStream)?;
        self.next_id += 1;
        sender
            .try_send(build(self.next_id))
            .map_err(|_| Unsent::Busy)?;
        Ok(self.next_id)
    }
}

/// A diagnosis asked of a client's agent: its steps arrive on `steps`. Dropping it (kreachctl went
/// away, the diagnosis ended) forgets the request; later steps from the agent are refused.
pub struct Diagnosis {
    pub steps: mpsc::Receiver<pb::DiagnoseStep>,
    dry_runs: DryRuns,
    id: u64,
}

impl Drop for Diagnosis {
    fn drop(&mut self) {
        self.dry_runs.lock().diagnoses.remove(&self.id);
    }
}

/// Unregisters an agent's stream when the stream is dropped (its connection ended).
pub struct Registration {
    dry_runs: DryRuns,
    node: String,
    connection: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.dry_runs.lock();
        // A newer stream of the same node (a reconnect) stays.
        if inner
            .agents
            .get(&self.node)
            .is_some_and(|(connection, _)| *connection == self.connection)
        {
            inner.agents.remove(&self.node);
        }
    }
}

/// What became of one node's dry run.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Report(pb::DryRunReport),
    /// Why there is no report: its agent has no dry-run stream, did not answer in time, ...
    NotChecked(String),
}

impl DryRuns {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An agent opened its dry-run stream: requests for `node` go to the returned receiver until
    /// the registration is dropped or the node connects again.
    pub fn connect(&self, node: &str) -> (mpsc::Receiver<pb::DryRunRequest>, Registration) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let mut inner = self.lock();
        inner.next_id += 1;
        let connection = inner.next_id;
        inner.agents.insert(node.to_string(), (connection, sender));
        drop(inner);
        (
            receiver,
            Registration {
                dry_runs: self.clone(),
                node: node.to_string(),
                connection,
            },
        )
    }

    /// Whether `node`'s agent has a dry-run stream open.
    pub fn is_connected(&self, node: &str) -> bool {
        self.lock().agents.contains_key(node)
    }

    /// Ask `node`'s agent to diagnose from its vantage (`kreachctl diagnose`). Refused when its
    /// agent has no stream open here or is busy.
    pub fn diagnose(&self, node: &str, broker: Option<i32>) -> Result<Diagnosis, String> {
        let mut inner = self.lock();
        let id = inner
            .send(node, |id| pb::DryRunRequest {
                id,
                spec: None,
                diagnose: Some(pb::DiagnoseRequest {
                    node: node.to_string(),
                    broker,
                    // An agent serves the one cluster it holds a release of.
                    cluster: String::new(),
                }),
            })
            .map_err(|unsent| match unsent {
                Unsent::NoStream => format!(
                    "{node}'s agent is not connected to the coordinator, so it cannot be asked (kreachctl status shows when it was last seen)"
                ),
                Unsent::Busy => format!("{node}'s agent is busy with other requests; try again"),
            })?;
        let (steps_sender, steps) = mpsc::channel(QUEUE);
        inner.diagnoses.insert(id, (node.to_string(), steps_sender));
        Ok(Diagnosis {
            steps,
            dry_runs: self.clone(),
            id,
        })
    }

    /// One step of a diagnosis from its agent, passed on to whoever asked. Refused when no
    /// diagnosis with that id waits for that node (kreachctl went away, or another node's id).
    pub async fn report_diagnose(&self, step: pb::DiagnoseStep) -> Result<(), String> {
        let sender = {
            let mut inner = self.lock();
            let sender = match inner.diagnoses.get(&step.id) {
                Some((node, sender)) if *node == step.node => sender.clone(),
                _ => {
                    return Err(format!(
                        "no diagnosis {} is waiting for node {:?} (whoever asked went away)",
                        step.id, step.node
                    ))
                }
            };
            if step.done {
                inner.diagnoses.remove(&step.id);
            }
            sender
        };
        let id = step.id;
        sender
            .send(step)
            .await
            .map_err(|_| format!("nobody waits for diagnosis {id} any more"))
    }

    /// An agent's answer. Refused when no request with that id waits for that node (too late,
    /// already answered, or another node's).
    pub fn report(&self, report: pb::DryRunReport) -> Result<(), String> {
        let mut inner = self.lock();
        // An agent that knows no diagnoses took the request for a dry run without a spec.
        if let Some((node, sender)) = inner.diagnoses.get(&report.id) {
            if *node == report.node {
                let _ = sender.try_send(pb::DiagnoseStep {
                    node: node.clone(),
                    id: report.id,
                    done: true,
                    error: format!(
                        "its agent cannot diagnose (a kreach-agent older than the coordinator?): {}",
                        report.error
                    ),
                    ..pb::DiagnoseStep::default()
                });
                inner.diagnoses.remove(&report.id);
                return Ok(());
            }
        }
        match inner.pending.get(&report.id) {
            Some((node, _)) if *node == report.node => {}
            _ => {
                return Err(format!(
                "no dry run {} is waiting for node {:?} (it was answered already, or timed out)",
                report.id, report.node
            ))
            }
        }
        let (_, answer) = inner.pending.remove(&report.id).expect("checked above");
        let _ = answer.send(report);
        Ok(())
    }

    /// Ask every node of `specs` at once; wait at most `timeout` in total. One answer per node.
    pub async fn ask_all(
        &self,
        specs: Vec<(String, pb::NodeSpec)>,
        timeout: Duration,
    ) -> BTreeMap<String, Answer> {
        let mut answers = BTreeMap::new();
        let mut waiting = Vec::new();
        {
            let mut inner = self.lock();
            for (node, spec) in specs {
                let sent = inner.send(&node, |id| pb::DryRunRequest {
                    id,
                    spec: Some(spec),
                    diagnose: None,
                });
                let id = match sent {
                    Ok(id) => id,
                    Err(unsent) => {
                        let why = match unsent {
                            Unsent::NoStream => "its agent takes no dry runs (a kreach-agent older than the coordinator?)",
                            Unsent::Busy => "its agent is busy with other dry runs",
                        };
                        answers.insert(node, Answer::NotChecked(why.to_string()));
                        continue;
                    }
                };
                let (answer, receiver) = oneshot::channel();
                inner.pending.insert(id, (node.clone(), answer));
                waiting.push((node, id, receiver));
            }
        }
        // Every request is out: waiting for them one after the other costs no more than the
        // slowest, and never more than `timeout` in all.
        let deadline = tokio::time::Instant::now() + timeout;
        for (node, id, receiver) in waiting {
            let answer = match tokio::time::timeout_at(deadline, receiver).await {
                Ok(Ok(report)) => Answer::Report(report),
                Ok(Err(_)) | Err(_) => Answer::NotChecked(format!(
                    "its agent did not answer within {}s",
                    timeout.as_secs_f64()
                )),
            };
            self.lock().pending.remove(&id);
            answers.insert(node, answer);
        }
        answers
    }
}

/// Fill `plan`'s nodes with the agents' answers: the host diff where the agent answered, otherwise
/// why not (`not_checked`, with the generation diff kept as the fallback). `unreachable` names
/// the nodes not asked at all and why (never connected, offline). Pure.
pub fn merge(
    plan: &mut pb::PlanResponse,
    mut answers: BTreeMap<String, Answer>,
    unreachable: &BTreeMap<String, String>,
) {
    for node in &mut plan.nodes {
        let answer = unreachable
            .get(&node.node)
            .map(|why| Answer::NotChecked(why.clone()))
            .or_else(|| answers.remove(&node.node))
            .unwrap_or_else(|| Answer::NotChecked("its agent was not asked".to_string()));
        match answer {
            Answer::Report(report) if report.error.is_empty() => {
                node.source = "host".to_string();
                node.host_diff = report.diff;
                node.restart = !report.restart_unit.is_empty();
                node.restart_reason = if node.restart {
                    format!("{}: {}", report.restart_unit, report.restart_reason)
                } else {
                    String::new()
                };
                node.conflicts = report.conflicts;
                node.not_checked.clear();
            }
            Answer::Report(report) => {
                node.source = "generation".to_string();
                node.not_checked = format!("its agent could not render it: {}", report.error);
            }
            Answer::NotChecked(why) => {
                node.source = "generation".to_string();
                node.not_checked = why;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(node: &str) -> pb::NodeSpec {
        pb::NodeSpec {
            node: node.to_string(),
            ..pb::NodeSpec::default()
        }
    }

    #[tokio::test]
    async fn answers_arrive_concurrently_and_the_silent_are_not_checked_within_the_timeout() {
        let dry_runs = DryRuns::default();
        let (mut quick, _quick) = dry_runs.connect("quick");
        let (mut silent, _silent) = dry_runs.connect("silent");
        let responder = {
            let dry_runs = dry_runs.clone();
            tokio::spawn(async move {
                let request = quick.recv().await.unwrap();
                assert_eq!(request.spec.unwrap().node, "quick");
                // Another node's id or a made-up one is refused.
                assert!(dry_runs
                    .report(pb::DryRunReport {
                        node: "silent".into(),
                        id: request.id,
                        ..Default::default()
                    })
                    .is_err());
                dry_runs
                    .report(pb::DryRunReport {
                        node: "quick".into(),
                        id: request.id,
                        diff: "-a\n+b\n".into(),
                        ..Default::default()
                    })
                    .unwrap();
            })
        };
        let started = std::time::Instant::now();
        let answers = dry_runs
            .ask_all(
                vec![
                    ("quick".into(), spec("quick")),
                    ("silent".into(), spec("silent")),
                    ("absent".into(), spec("absent")),
                ],
                Duration::from_millis(300),
            )
            .await;
        responder.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(&answers["quick"], Answer::Report(report) if report.diff == "-a\n+b\n"),
            "{answers:?}"
        );
        assert_eq!(
            answers["silent"],
            Answer::NotChecked("its agent did not answer within 0.3s".into())
        );
        assert!(
            matches!(&answers["absent"], Answer::NotChecked(why) if why.contains("takes no dry runs"))
        );
        // The silent agent's request was sent, and a late answer is refused, not kept.
        let late = silent.recv().await.unwrap();
        assert!(dry_runs
            .report(pb::DryRunReport {
                node: "silent".into(),
                id: late.id,
                ..Default::default()
            })
            .is_err());
        assert!(dry_runs.lock().pending.is_empty());
    }

    #[tokio::test]
    async fn a_diagnosis_passes_its_steps_on_until_done_and_refuses_strays() {
        let dry_runs = DryRuns::default();
        assert!(dry_runs
            .diagnose("etl-1", None)
            .err()
            .is_some_and(|why| why.contains("not connected")));
        let (mut agent, _registered) = dry_runs.connect("etl-1");
        let mut diagnosis = dry_runs.diagnose("etl-1", Some(2)).unwrap();
        let request = agent.recv().await.unwrap();
        assert_eq!(request.spec, None);
        assert_eq!(request.diagnose.unwrap().broker, Some(2));
        let step = |node: &str, done: bool| pb::DiagnoseStep {
            node: node.into(),
            id: request.id,
            step: "resolve".into(),
            ok: true,
            done,
            ..Default::default()
        };
        assert!(dry_runs
            .report_diagnose(step("laptop-1", false))
            .await
            .is_err());
        dry_runs
            .report_diagnose(step("etl-1", false))
            .await
            .unwrap();
        dry_runs.report_diagnose(step("etl-1", true)).await.unwrap();
        assert_eq!(diagnosis.steps.recv().await.unwrap().step, "resolve");
        assert!(diagnosis.steps.recv().await.unwrap().done);
        // Done: the diagnosis is forgotten; a late step is refused.
        assert!(dry_runs
            .report_diagnose(step("etl-1", false))
            .await
            .is_err());

        // kreachctl went away: the agent's next step is refused, so it stops.
        let gone = dry_runs.diagnose("etl-1", None).unwrap();
        let request = agent.recv().await.unwrap();
        drop(gone);
        assert!(dry_runs
            .report_diagnose(pb::DiagnoseStep {
                node: "etl-1".into(),
                id: request.id,
                ..Default::default()
            })
            .await
            .is_err());

        // An agent that knows no diagnoses answers with a dry-run report: the asker is told.
        let mut old = dry_runs.diagnose("etl-1", None).unwrap();
        let request = agent.recv().await.unwrap();
        dry_runs
            .report(pb::DryRunReport {
                node: "etl-1".into(),
                id: request.id,
                error: "invalid DryRunRequest.spec: missing".into(),
                ..Default::default()
            })
            .unwrap();
        let last = old.steps.recv().await.unwrap();
        assert!(
            last.done && last.error.contains("cannot diagnose"),
            "{last:?}"
        );
    }

    #[test]
    fn a_dropped_stream_unregisters_only_itself() {
        let dry_runs = DryRuns::default();
        let (_old_receiver, old) = dry_runs.connect("w1");
        let (_new_receiver, new) = dry_runs.connect("w1");
        drop(old);
        assert!(dry_runs.is_connected("w1"), "the reconnected stream stays");
        drop(new);
        assert!(!dry_runs.is_connected("w1"));
    }

    #[test]
    fn merge_shows_the_host_diff_or_says_why_not() {
        let node = |name: &str| pb::NodeDiff {
            node: name.into(),
            diff: format!("generation diff of {name}"),
            restart: true,
            ..Default::default()
        };
        let mut plan = pb::PlanResponse {
            nodes: vec![node("a"), node("b"), node("c")],
            ..Default::default()
        };
        let answers = BTreeMap::from([
            (
                "a".to_string(),
                Answer::Report(pb::DryRunReport {
                    diff: "host diff".into(),
                    ..Default::default()
                }),
            ),
            (
                "b".to_string(),
                Answer::Report(pb::DryRunReport {
                    error: "server.properties does not exist".into(),
                    ..Default::default()
                }),
            ),
        ]);
        let unreachable = BTreeMap::from([("c".to_string(), "its agent is offline".to_string())]);
        merge(&mut plan, answers, &unreachable);
        let [a, b, c] = &plan.nodes[..] else { panic!() };
        assert_eq!(
            (a.source.as_str(), a.host_diff.as_str()),
            ("host", "host diff")
        );
        assert!(!a.restart, "the host says nothing restarts");
        assert_eq!(b.source, "generation");
        assert!(b.not_checked.contains("does not exist") && b.restart);
        assert_eq!(
            (c.source.as_str(), c.not_checked.as_str(), c.diff.as_str()),
            ("generation", "its agent is offline", "generation diff of c")
        );
    }
}
