//! Read-only views of the dispatcher's state, sent to tools and printed as
//! JSON. Their JSON field names are part of the outside contract.

use serde::{Deserialize, Serialize};

use crate::core::{
    ArchivedJob, CommitId, CommitInfo, Core, Job, JobStatus, Now, Outcome, RunnerState, State,
    TestCounts,
};

/// One commit's result, as `results --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultView {
    pub commit: CommitId,
    /// The named repository (`null`: the dispatcher's default one).
    pub repository: Option<String>,
    pub branch: Option<String>,
    /// pass, fail, timeout, error, cancelled, pending or running.
    pub outcome: String,
    pub attempts: u32,
    pub runner: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub tests: Option<TestCounts>,
    pub message: String,
    pub job: u64,
    pub output_bytes: u64,
    /// When the dispatcher accepted the commit (ms since the epoch).
    pub seen_at_ms: u64,
    /// When the current attempt was handed out, while it runs.
    pub started_at_ms: Option<u64>,
    /// When the outcome was recorded.
    pub finished_at_ms: Option<u64>,
    /// Who wrote the commit, what it says and when, if known.
    pub author: Option<String>,
    pub subject: Option<String>,
    pub committed_at_ms: Option<u64>,
}

impl ResultView {
    pub fn of(state: &State, job: &Job, info: Option<&CommitInfo>) -> ResultView {
        let mut v = ResultView {
            commit: job.commit,
            repository: state.repository(job).map(str::to_string),
            branch: state.branch(job).map(str::to_string),
            outcome: "pending".into(),
            attempts: job.attempts,
            runner: None,
            exit_code: None,
            duration_ms: None,
            tests: None,
            message: String::new(),
            job: job.id.0,
            output_bytes: 0,
            seen_at_ms: job.seen_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            author: info.map(|i| i.author.clone()),
            subject: info.map(|i| i.subject.clone()),
            committed_at_ms: info.map(|i| i.time_ms),
        };
        match &job.status {
            JobStatus::Queued => {}
            JobStatus::Running { runner, since_ms } => {
                v.outcome = "running".into();
                v.runner = Some(state.name(*runner).to_string());
                v.started_at_ms = Some(*since_ms);
            }
            JobStatus::Done(f) => {
                v.outcome = f.outcome.as_str().into();
                v.runner = state.runner(f).map(str::to_string);
                v.exit_code = f.exit_code;
                // A job cancelled before it ran has no duration.
                v.duration_ms = (f.outcome != Outcome::Cancelled || f.runner.is_some())
                    .then_some(f.duration_ms);
                v.tests = f.tests;
                v.message = state.message(job.id).to_string();
                v.output_bytes = f.output_bytes;
                v.finished_at_ms = Some(f.at_ms);
            }
        }
        v
    }

    /// The view of a finished job kept in the history indexes: the same
    /// fields as [`ResultView::of`] gives while it was in memory.
    pub fn of_archived(job: &ArchivedJob, info: Option<&CommitInfo>) -> ResultView {
        let f = &job.finished;
        ResultView {
            commit: job.commit,
            repository: job.repository.clone(),
            branch: job.branch.clone(),
            outcome: f.outcome.as_str().into(),
            attempts: job.attempts,
            runner: f.runner.clone(),
            exit_code: f.exit_code,
            duration_ms: (f.outcome != Outcome::Cancelled || f.runner.is_some())
                .then_some(f.duration_ms),
            tests: f.tests,
            message: f.message.clone(),
            job: job.id.0,
            output_bytes: f.output_bytes,
            seen_at_ms: job.seen_at_ms,
            started_at_ms: None,
            finished_at_ms: Some(f.at_ms),
            author: info.map(|i| i.author.clone()),
            subject: info.map(|i| i.subject.clone()),
            committed_at_ms: info.map(|i| i.time_ms),
        }
    }

    /// About how many bytes the view takes on the wire (an upper bound
    /// for its fixed part plus its strings), to keep an answer in a frame.
    pub fn size_hint(&self) -> usize {
        160 + self.outcome.len()
            + self.message.len()
            + self.branch.as_ref().map_or(0, String::len)
            + self.repository.as_ref().map_or(0, String::len)
            + self.runner.as_ref().map_or(0, String::len)
            + self.author.as_ref().map_or(0, String::len)
            + self.subject.as_ref().map_or(0, String::len)
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
    /// How long ago the dispatcher last heard from it (none since its
    /// start, for a runner known only from the log).
    pub heard_ms_ago: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningView {
    pub commit: CommitId,
    pub runner: String,
    pub attempt: u32,
    pub job: u64,
    /// When the attempt was handed out (ms since the epoch).
    pub started_at_ms: u64,
    /// How long it has run.
    pub elapsed_ms: u64,
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
    /// Each repository with queued jobs (`null`: the default one), how
    /// many, and whether a connected runner serves it: a job nobody can
    /// take says so instead of waiting silently.
    pub repositories: Vec<RepositoryQueueView>,
}

/// One repository's queue in `status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryQueueView {
    pub repository: Option<String>,
    pub queued: u64,
    /// Whether any connected runner serves it.
    pub served: bool,
}

/// How much of the queue `status` lists.
pub const QUEUE_SHOWN: usize = 1000;

impl StatusView {
    pub fn of(core: &Core, now: Now) -> StatusView {
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
                heard_ms_ago: core
                    .sessions()
                    .get(name)
                    .map(|s| now.mono_ms.saturating_sub(s.last_heard_mono_ms)),
            })
            .collect();
        let running = state
            .holders()
            .filter_map(|(r, h)| {
                let j = state.job(h.job)?;
                let started_at_ms = match j.status {
                    JobStatus::Running { since_ms, .. } => since_ms,
                    _ => now.wall_ms,
                };
                Some(RunningView {
                    commit: j.commit,
                    runner: r.clone(),
                    attempt: h.attempt,
                    job: h.job.0,
                    started_at_ms,
                    elapsed_ms: now.wall_ms.saturating_sub(started_at_ms),
                })
            })
            .collect();
        let unserved = core.unserved();
        let repositories = state
            .queued_by_repository()
            .iter()
            .map(|(r, n)| {
                let repository = r.map(|s| state.name(s).to_string());
                RepositoryQueueView {
                    served: !unserved.contains(&repository),
                    repository,
                    queued: *n as u64,
                }
            })
            .collect();
        StatusView {
            repositories,
            runners,
            queued: state.queue().take(QUEUE_SHOWN).map(|j| j.commit).collect(),
            queued_total: state.queue_len() as u64,
            running,
            jobs_total: state.jobs_seen(),
            jobs_done: state.results(),
            last_seq: state.last_seq(),
        }
    }
}

/// The counts behind `/metrics`, derived from the state when asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsView {
    /// Jobs waiting for a runner.
    pub queued: u64,
    /// Runners by state (`idle`, `busy`, `lost`), every state present.
    pub runners: Vec<(String, u64)>,
    /// Jobs by status: `pending`, `running` and each outcome, every one
    /// present.
    pub jobs: Vec<(String, u64)>,
    /// Events in the log.
    pub last_seq: u64,
    /// Outputs retention removed, by reason (`age`, `size`, every one
    /// present): how many and their bytes, since the log began.
    pub pruned: Vec<(String, u64, u64)>,
}

impl MetricsView {
    pub fn of(core: &Core) -> MetricsView {
        let state = &core.state;
        let mut runners = [("idle", 0u64), ("busy", 0), ("lost", 0)];
        for name in core.sessions().keys() {
            let i = match core.runner_state(name) {
                RunnerState::Idle => 0,
                RunnerState::Busy => 1,
                RunnerState::Lost => 2,
            };
            runners[i].1 += 1;
        }
        let mut jobs: Vec<(String, u64)> = ["pending", "running"]
            .iter()
            .map(|s| s.to_string())
            .chain(
                crate::core::Outcome::ALL
                    .iter()
                    .map(|o| o.as_str().to_string()),
            )
            .map(|s| (s, 0))
            .collect();
        // Counted by the fold: finished jobs are mostly out of memory.
        jobs[0].1 = state.queue_len() as u64;
        jobs[1].1 = state.unfinished() as u64 - state.queue_len() as u64;
        for (slot, n) in jobs[2..].iter_mut().zip(state.outcome_counts()) {
            slot.1 = n;
        }
        MetricsView {
            queued: state.queue_len() as u64,
            runners: runners.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            jobs,
            last_seq: state.last_seq(),
            pruned: crate::core::PruneReason::ALL
                .iter()
                .map(|r| {
                    let t = state.pruned(*r);
                    (r.as_str().to_string(), t.outputs, t.bytes)
                })
                .collect(),
        }
    }
}
