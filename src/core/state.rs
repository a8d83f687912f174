//! The dispatcher's durable state, derived from the log by a pure fold.
//!
//! `State::apply` is the only way state changes. Replaying the same records
//! always gives the same `State`; that is what makes restart and
//! `replay --verify` exact.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::event::{Event, JobReport, LostReason, Record};
use super::ids::{CommitId, JobId, JobRef, RunnerName};

/// Where one job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Queued,
    Running { runner: RunnerName },
    Done(Box<Finished>),
}

/// The recorded final result of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub runner: Option<RunnerName>,
    pub attempt: u32,
    pub report: JobReport,
    pub output_bytes: u64,
    pub at_ms: u64,
}

/// One commit's job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub commit: CommitId,
    pub branch: Option<String>,
    /// How many times it was handed to a runner (the current attempt number).
    pub attempts: u32,
    /// How many of those hand-outs were lost. A hand-back (the runner was
    /// stopped cleanly) is not a loss: it must never make the job give up.
    pub lost: u32,
    pub status: JobStatus,
    pub seen_at_ms: u64,
}

impl Job {
    pub fn current(&self) -> JobRef {
        JobRef {
            job: self.id,
            attempt: self.attempts,
        }
    }
}

/// A record could not be applied: the log is inconsistent (or a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {seq} cannot be applied: {why}")]
pub struct ApplyError {
    pub seq: u64,
    pub why: String,
}

/// Everything the log says, folded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Sequence number of the last applied record (0 = empty log).
    pub last_seq: u64,
    jobs: Vec<Job>,
    by_commit: HashMap<CommitId, JobId>,
    queue: VecDeque<JobId>,
    /// Which job each runner holds. A runner holds at most one.
    holders: BTreeMap<RunnerName, JobRef>,
    branch_tips: BTreeMap<String, CommitId>,
    /// Count of `Result` events, to cross-check "exactly one per job".
    pub results: u64,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Applies one stored record; its sequence number must follow the last.
    pub fn apply_record(&mut self, rec: &Record) -> Result<(), ApplyError> {
        if rec.seq != self.last_seq + 1 {
            return Err(ApplyError {
                seq: rec.seq,
                why: format!("expected sequence number {}", self.last_seq + 1),
            });
        }
        self.apply(&rec.event, rec.at_ms)
            .map_err(|why| ApplyError { seq: rec.seq, why })?;
        self.last_seq = rec.seq;
        Ok(())
    }

    /// The fold step. Errors mean the event contradicts the state: a damaged
    /// log or a bug in `decide`, never a peer's bad input.
    pub fn apply(&mut self, event: &Event, at_ms: u64) -> Result<(), String> {
        match event {
            Event::DispatcherStarted { .. } => {}
            Event::CommitSeen {
                job,
                commit,
                branch,
            } => {
                if job.0 != self.jobs.len() as u64 + 1 {
                    return Err(format!("job {job} is not the next job number"));
                }
                if self.by_commit.contains_key(commit) {
                    return Err(format!("commit {commit} was already seen"));
                }
                self.jobs.push(Job {
                    id: *job,
                    commit: *commit,
                    branch: branch.clone(),
                    attempts: 0,
                    lost: 0,
                    status: JobStatus::Queued,
                    seen_at_ms: at_ms,
                });
                self.by_commit.insert(*commit, *job);
                self.queue.push_back(*job);
                if let Some(b) = branch {
                    self.branch_tips.insert(b.clone(), *commit);
                }
            }
            Event::BranchMoved { branch, tip } => {
                self.branch_tips.insert(branch.clone(), *tip);
            }
            Event::JobAssigned {
                job,
                runner,
                attempt,
                ..
            } => {
                if self.holders.contains_key(runner) {
                    return Err(format!("runner {runner} already holds a job"));
                }
                let j = self.job_mut(*job)?;
                if j.status != JobStatus::Queued || *attempt != j.attempts + 1 {
                    return Err(format!("job {job} is not queued for attempt {attempt}"));
                }
                j.attempts = *attempt;
                j.status = JobStatus::Running {
                    runner: runner.clone(),
                };
                self.holders.insert(
                    runner.clone(),
                    JobRef {
                        job: *job,
                        attempt: *attempt,
                    },
                );
                remove_from_queue(&mut self.queue, *job);
            }
            Event::HeartbeatLost {
                runner,
                job,
                attempt,
                reason,
            } => {
                let held = JobRef {
                    job: *job,
                    attempt: *attempt,
                };
                if self.holders.get(runner) != Some(&held) {
                    return Err(format!("runner {runner} does not hold {held}"));
                }
                self.holders.remove(runner);
                let j = self.job_mut(*job)?;
                if *reason != LostReason::HandedBack {
                    j.lost += 1;
                }
                j.status = JobStatus::Queued;
                self.queue.push_front(*job);
            }
            Event::Result {
                job,
                runner,
                attempt,
                report,
                output_bytes,
                ..
            } => {
                let j = self.job_mut(*job)?;
                if matches!(j.status, JobStatus::Done(_)) {
                    return Err(format!("job {job} already has a result"));
                }
                if *attempt != j.attempts {
                    return Err(format!(
                        "result for attempt {attempt} of job {job}, current is {}",
                        j.attempts
                    ));
                }
                let was_queued = j.status == JobStatus::Queued;
                j.status = JobStatus::Done(Box::new(Finished {
                    runner: runner.clone(),
                    attempt: *attempt,
                    report: report.clone(),
                    output_bytes: *output_bytes,
                    at_ms,
                }));
                if let Some(r) = runner
                    && self.holders.get(r).map(|h| h.job) == Some(*job)
                {
                    self.holders.remove(r);
                }
                if was_queued {
                    remove_from_queue(&mut self.queue, *job);
                }
                self.results += 1;
            }
        }
        Ok(())
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut Job, String> {
        let idx = id.0.checked_sub(1).ok_or("job 0 does not exist")? as usize;
        self.jobs
            .get_mut(idx)
            .ok_or_else(|| format!("job {id} does not exist"))
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        let idx = id.0.checked_sub(1)? as usize;
        self.jobs.get(idx)
    }

    pub fn job_for_commit(&self, commit: &CommitId) -> Option<&Job> {
        self.by_commit.get(commit).and_then(|id| self.job(*id))
    }

    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    pub fn queue(&self) -> impl Iterator<Item = &Job> + '_ {
        self.queue.iter().filter_map(|id| self.job(*id))
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn queue_front(&self) -> Option<JobId> {
        self.queue.front().copied()
    }

    pub fn holder(&self, runner: &str) -> Option<JobRef> {
        self.holders.get(runner).copied()
    }

    pub fn holders(&self) -> impl Iterator<Item = (&RunnerName, &JobRef)> + '_ {
        self.holders.iter()
    }

    pub fn branch_tips(&self) -> &BTreeMap<String, CommitId> {
        &self.branch_tips
    }

    pub fn next_job_id(&self) -> JobId {
        JobId(self.jobs.len() as u64 + 1)
    }

    /// Jobs with no final outcome yet.
    pub fn unfinished(&self) -> usize {
        self.jobs.len() - self.results as usize
    }
}

fn remove_from_queue(queue: &mut VecDeque<JobId>, job: JobId) {
    if queue.front() == Some(&job) {
        queue.pop_front();
    } else if let Some(pos) = queue.iter().position(|j| *j == job) {
        queue.remove(pos);
    }
}
