//! Read-only views of the dispatcher's state, sent to tools and printed as
//! JSON. Their JSON field names are part of the outside contract.

use serde::{Deserialize, Serialize};

use crate::core::{CommitId, Core, Job, JobStatus, RunnerState, State, TestCounts};

/// One commit's result, as `results --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultView {
    pub commit: CommitId,
    pub branch: Option<String>,
    /// pass, fail, timeout, error, pending or running.
    pub outcome: String,
    pub attempts: u32,
    pub runner: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub tests: Option<TestCounts>,
    pub message: String,
    pub job: u64,
    pub output_bytes: u64,
}

impl ResultView {
    pub fn of(state: &State, job: &Job) -> ResultView {
        let (outcome, runner, exit_code, duration_ms, tests, message, output_bytes) =
            match &job.status {
                JobStatus::Queued => (
                    "pending".to_string(),
                    None,
                    None,
                    None,
                    None,
                    String::new(),
                    0,
                ),
                JobStatus::Running { runner } => (
                    "running".to_string(),
                    Some(state.name(*runner).to_string()),
                    None,
                    None,
                    None,
                    String::new(),
                    0,
                ),
                JobStatus::Done(f) => (
                    f.outcome.as_str().to_string(),
                    state.runner(f).map(str::to_string),
                    f.exit_code,
                    Some(f.duration_ms),
                    f.tests,
                    state.name(f.message).to_string(),
                    f.output_bytes,
                ),
            };
        ResultView {
            commit: job.commit,
            branch: state.branch(job).map(str::to_string),
            outcome,
            attempts: job.attempts,
            runner,
            exit_code,
            duration_ms,
            tests,
            message,
            job: job.id.0,
            output_bytes,
        }
    }

    /// About how many bytes the view takes on the wire (an upper bound
    /// for its fixed part plus its strings), to keep an answer in a frame.
    pub fn size_hint(&self) -> usize {
        96 + self.outcome.len()
            + self.message.len()
            + self.branch.as_ref().map_or(0, String::len)
            + self.runner.as_ref().map_or(0, String::len)
    }

    /// Whether the outcome is final.
    pub fn is_final(&self) -> bool {
        !matches!(self.outcome.as_str(), "pending" | "running")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerView {
    pub name: String,
    /// idle, busy or lost.
    pub state: String,
    pub job: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningView {
    pub commit: CommitId,
    pub runner: String,
    pub attempt: u32,
    pub job: u64,
}

/// `status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub runners: Vec<RunnerView>,
    /// Oldest first; at most `QUEUE_SHOWN` entries.
    pub queued: Vec<CommitId>,
    pub queued_total: u64,
    pub running: Vec<RunningView>,
    pub jobs_total: u64,
    pub jobs_done: u64,
    pub last_seq: u64,
}

/// How much of the queue `status` lists.
pub const QUEUE_SHOWN: usize = 1000;

impl StatusView {
    pub fn of(core: &Core) -> StatusView {
        let state = &core.state;
        let mut names: Vec<&String> = core.sessions().keys().collect();
        for (r, _) in state.holders() {
            if !core.sessions().contains_key(r) {
                names.push(r);
            }
        }
        names.sort();
        names.dedup();
        let runners = names
            .into_iter()
            .map(|name| RunnerView {
                name: name.clone(),
                state: match core.runner_state(name) {
                    RunnerState::Idle => "idle",
                    RunnerState::Busy => "busy",
                    RunnerState::Lost => "lost",
                }
                .to_string(),
                job: state.holder(name).map(|h| h.job.0),
            })
            .collect();
        let running = state
            .holders()
            .filter_map(|(r, h)| {
                state.job(h.job).map(|j| RunningView {
                    commit: j.commit,
                    runner: r.clone(),
                    attempt: h.attempt,
                    job: h.job.0,
                })
            })
            .collect();
        StatusView {
            runners,
            queued: state.queue().take(QUEUE_SHOWN).map(|j| j.commit).collect(),
            queued_total: state.queue_len() as u64,
            running,
            jobs_total: state.jobs().len() as u64,
            jobs_done: state.results(),
            last_seq: state.last_seq(),
        }
    }
}
