//! One step of a diagnosis from a client host's vantage (`kreach-agent diagnose` on the host,
//! `kreachctl diagnose` through the coordinator), and how both print it, so that the two show the
//! same lines. The steps themselves are the agent's (`kreach_agent::diagnose`). Pure.

/// One step against one broker: what was tried, whether it worked, what was seen, how long it took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub broker_id: i32,
    pub step: String,
    pub ok: bool,
    pub detail: String,
    pub elapsed_ms: u64,
}

impl Step {
    /// The step as one line of text: `broker 1   TCP connect   ok  198.18.0.11:9093 accepts … (2 ms)`.
    pub fn line(&self) -> String {
        format!(
            "broker {:<3} {:<28} {} {} ({} ms)",
            self.broker_id,
            self.step,
            if self.ok { "ok " } else { "BROKEN" },
            self.detail,
            self.elapsed_ms
        )
    }

    /// The summary naming the first broken step.
    pub fn broken_line(&self) -> String {
        format!(
            "broken: broker {} at {}: {}",
            self.broker_id, self.step, self.detail
        )
    }
}

/// The summary of a diagnosis where every step passed.
pub const ALL_PASSED: &str = "every step passed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reads_as_one_line_and_a_broken_one_is_named() {
        let step = Step {
            broker_id: 2,
            step: "TCP connect".into(),
            ok: false,
            detail: "198.18.0.12:9093: timed out".into(),
            elapsed_ms: 3001,
        };
        assert_eq!(
            step.line(),
            "broker 2   TCP connect                  BROKEN 198.18.0.12:9093: timed out (3001 ms)"
        );
        assert_eq!(
            step.broken_line(),
            "broken: broker 2 at TCP connect: 198.18.0.12:9093: timed out"
        );
    }
}
