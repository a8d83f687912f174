//! Decisions: inputs in, events and messages out.
//!
//! `Core` pairs the durable [`State`] with the volatile facts that do not
//! belong in the log (which runners are connected, idle, when each was last
//! heard). `Core::handle` applies every event it returns before returning,
//! so later decisions in the same batch see them; the shell must make the
//! events durable before it delivers any of the step's messages.

use std::collections::{BTreeMap, VecDeque};

use super::event::{Event, JobReport, LostReason, Outcome};
use super::ids::{CommitId, JobId, JobRef, RunnerName};
use super::state::{JobStatus, State};

/// Tunables of the decisions.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// A runner not heard from for this long loses its job.
    pub heartbeat_timeout_ms: u64,
    /// A job whose runner is lost this many times ends as `error`.
    pub max_attempts: u32,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            heartbeat_timeout_ms: 10_000,
            max_attempts: 3,
        }
    }
}

/// Something that happened outside the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The dispatcher (re)started on top of the replayed state.
    Started {
        pid: u32,
    },
    /// An observer or a tool reports commits, oldest first.
    CommitsReported {
        branch: Option<String>,
        commits: Vec<CommitId>,
        /// The branch's tip as the reporter sees it.
        tip: Option<CommitId>,
    },
    /// A runner said hello. `holding` is the job it is still running;
    /// `crashed` is a job it was running when it last died.
    RunnerConnected {
        runner: RunnerName,
        holding: Option<JobRef>,
        crashed: Option<JobRef>,
    },
    RunnerDisconnected {
        runner: RunnerName,
    },
    Heartbeat {
        runner: RunnerName,
        holding: Option<JobRef>,
    },
    /// The runner is idle and wants work.
    RunnerReady {
        runner: RunnerName,
    },
    ResultReported {
        runner: RunnerName,
        job: JobRef,
        report: JobReport,
        output_bytes: u64,
    },
    /// The runner is stopping and gives its job back unfinished.
    HandBack {
        runner: RunnerName,
        job: JobRef,
    },
    /// Time passed; check heartbeats.
    Tick,
}

/// A message for one runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToRunner {
    Assign {
        job: JobRef,
        commit: CommitId,
        branch: Option<String>,
    },
    /// Stop working on `job`: it is no longer yours.
    Abandon { job: JobRef, reason: String },
}

/// The answer to the input's sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    None,
    Commits {
        accepted: Vec<CommitId>,
        duplicates: u32,
    },
    /// `accepted` false means the result was stale and changed nothing.
    ResultAck {
        job: JobRef,
        accepted: bool,
        reason: String,
    },
    /// The runner may keep running the job it reported holding.
    Welcome {
        keep: Option<JobRef>,
    },
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Already applied to the state; must be durable before anything below
    /// leaves the process.
    pub events: Vec<Event>,
    pub sends: Vec<(RunnerName, ToRunner)>,
    pub reply: Option<Reply>,
}

/// Volatile per-runner facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub connected: bool,
    pub last_heard_ms: u64,
    /// Declared lost (silent past the timeout); cleared when heard again.
    pub lost: bool,
}

/// How a runner looks from outside, for `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerState {
    Idle,
    Busy,
    Lost,
}

/// The state machine the dispatcher runs.
#[derive(Clone, Debug)]
pub struct Core {
    pub state: State,
    sessions: BTreeMap<RunnerName, Session>,
    /// Runners waiting for work, longest-waiting first.
    idle: VecDeque<RunnerName>,
    config: CoreConfig,
    /// Counts of inputs refused as stale, for tracing and tests.
    pub stale_rejections: u64,
}

impl Core {
    pub fn new(state: State, config: CoreConfig) -> Core {
        Core {
            state,
            sessions: BTreeMap::new(),
            idle: VecDeque::new(),
            config,
            stale_rejections: 0,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    pub fn sessions(&self) -> &BTreeMap<RunnerName, Session> {
        &self.sessions
    }

    pub fn runner_state(&self, runner: &str) -> RunnerState {
        match self.sessions.get(runner) {
            Some(s) if s.lost => RunnerState::Lost,
            _ if self.state.holder(runner).is_some() => RunnerState::Busy,
            Some(s) if s.connected => RunnerState::Idle,
            _ => RunnerState::Lost,
        }
    }

    /// Decides on one input; see the module docs for the contract.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Step {
        let mut step = Step::default();
        match input {
            Input::Started { pid } => {
                // Old timestamps must not condemn anyone: every runner that
                // holds a job gets a full timeout from now to come back.
                let holders: Vec<RunnerName> =
                    self.state.holders().map(|(r, _)| r.clone()).collect();
                for r in holders {
                    self.sessions.insert(
                        r,
                        Session {
                            connected: false,
                            last_heard_ms: now_ms,
                            lost: false,
                        },
                    );
                }
                self.emit(&mut step, Event::DispatcherStarted { pid }, now_ms);
            }
            Input::CommitsReported {
                branch,
                commits,
                tip,
            } => {
                let mut accepted = Vec::new();
                let mut duplicates = 0;
                for commit in commits {
                    if self.state.job_for_commit(&commit).is_some() {
                        duplicates += 1;
                        continue;
                    }
                    let job = self.state.next_job_id();
                    self.emit(
                        &mut step,
                        Event::CommitSeen {
                            job,
                            commit,
                            branch: branch.clone(),
                        },
                        now_ms,
                    );
                    accepted.push(commit);
                }
                if let (Some(branch), Some(tip)) = (branch, tip)
                    && self.state.branch_tips().get(&branch) != Some(&tip)
                {
                    self.emit(&mut step, Event::BranchMoved { branch, tip }, now_ms);
                }
                step.reply = Some(Reply::Commits {
                    accepted,
                    duplicates,
                });
            }
            Input::RunnerConnected {
                runner,
                holding,
                crashed,
            } => {
                self.hear(&runner, now_ms, true);
                self.idle.retain(|r| *r != runner);
                let held = self.state.holder(&runner);
                let mut keep = None;
                if let Some(h) = holding {
                    if held == Some(h) {
                        keep = Some(h);
                    } else {
                        self.abandon(&mut step, &runner, h);
                    }
                }
                match held {
                    Some(h) if keep.is_none() && crashed == Some(h) => {
                        self.lose(&mut step, &runner, h, LostReason::RunnerRestarted, now_ms);
                        self.idle.push_back(runner.clone());
                    }
                    Some(h) if keep.is_none() => {
                        // The assignment was made durable but never reached
                        // the runner (or it restarted before starting it):
                        // hand the same attempt out again.
                        self.resend_assign(&mut step, &runner, h);
                        keep = Some(h);
                    }
                    Some(_) => {}
                    // A runner told to abandon says Ready once it stopped.
                    None if holding.is_none() => self.idle.push_back(runner.clone()),
                    None => {}
                }
                step.reply = Some(Reply::Welcome { keep });
            }
            Input::RunnerDisconnected { runner } => {
                if let Some(s) = self.sessions.get_mut(&runner) {
                    s.connected = false;
                }
                self.idle.retain(|r| *r != runner);
            }
            Input::Heartbeat { runner, holding } => {
                self.hear(&runner, now_ms, false);
                match (holding, self.state.holder(&runner)) {
                    // A runner declared lost while idle was dropped from
                    // `idle` and never says Ready again: hearing it hold
                    // nothing makes it idle again.
                    (None, None) => self.make_idle(&runner),
                    // It holds nothing but was given `h`: the Assign was
                    // lost or ignored (it arrived while the runner still
                    // held a stale job). Hand the same attempt out again;
                    // a runner already holding `h` ignores the repeat.
                    (None, Some(h)) => self.resend_assign(&mut step, &runner, h),
                    (Some(_), _) => {}
                }
                if let Some(h) = holding
                    && self.state.holder(&runner) != Some(h)
                {
                    self.abandon(&mut step, &runner, h);
                }
            }
            Input::RunnerReady { runner } => {
                self.hear(&runner, now_ms, false);
                self.make_idle(&runner);
            }
            Input::ResultReported {
                runner,
                job,
                report,
                output_bytes,
            } => {
                self.hear(&runner, now_ms, false);
                let reply =
                    self.accept_result(&mut step, &runner, job, report, output_bytes, now_ms);
                step.reply = Some(reply);
            }
            Input::HandBack { runner, job } => {
                self.hear(&runner, now_ms, false);
                if self.state.holder(&runner) == Some(job) {
                    self.lose(&mut step, &runner, job, LostReason::HandedBack, now_ms);
                }
                self.idle.retain(|r| *r != runner);
            }
            Input::Tick => {
                let timeout = self.config.heartbeat_timeout_ms;
                let expired: Vec<RunnerName> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| !s.lost && now_ms.saturating_sub(s.last_heard_ms) >= timeout)
                    .map(|(r, _)| r.clone())
                    .collect();
                for runner in expired {
                    if let Some(s) = self.sessions.get_mut(&runner) {
                        s.lost = true;
                    }
                    self.idle.retain(|r| *r != runner);
                    if let Some(h) = self.state.holder(&runner) {
                        self.lose(&mut step, &runner, h, LostReason::HeartbeatTimeout, now_ms);
                    }
                }
            }
        }
        self.schedule(&mut step, now_ms);
        step
    }

    fn accept_result(
        &mut self,
        step: &mut Step,
        runner: &RunnerName,
        job: JobRef,
        report: JobReport,
        output_bytes: u64,
        now_ms: u64,
    ) -> Reply {
        let Some(j) = self.state.job(job.job) else {
            self.stale_rejections += 1;
            return Reply::ResultAck {
                job,
                accepted: false,
                reason: format!("unknown job {}", job.job),
            };
        };
        match &j.status {
            JobStatus::Done(f)
                if f.attempt == job.attempt && self.state.runner(f) == Some(runner.as_str()) =>
            {
                // A resend of a result we already recorded (the ack was lost).
                self.make_idle(runner);
                Reply::ResultAck {
                    job,
                    accepted: true,
                    reason: "already recorded".into(),
                }
            }
            JobStatus::Running { runner: r }
                if self.state.name(*r) == runner && j.attempts == job.attempt =>
            {
                let commit = j.commit;
                self.emit(
                    step,
                    Event::Result {
                        job: job.job,
                        commit,
                        runner: Some(runner.clone()),
                        attempt: job.attempt,
                        report,
                        output_bytes,
                    },
                    now_ms,
                );
                self.make_idle(runner);
                Reply::ResultAck {
                    job,
                    accepted: true,
                    reason: String::new(),
                }
            }
            _ => {
                self.stale_rejections += 1;
                Reply::ResultAck {
                    job,
                    accepted: false,
                    reason: self.why_not_held(job),
                }
            }
        }
    }

    /// Sends `runner` the assignment it already holds in the state.
    fn resend_assign(&self, step: &mut Step, runner: &RunnerName, h: JobRef) {
        let job = self.state.job(h.job).expect("held job exists");
        step.sends.push((
            runner.clone(),
            ToRunner::Assign {
                job: h,
                commit: job.commit,
                branch: self.state.branch(job).map(str::to_string),
            },
        ));
    }

    /// Tells `runner` that `job` is not (or no longer) its to run.
    fn abandon(&mut self, step: &mut Step, runner: &RunnerName, job: JobRef) {
        self.stale_rejections += 1;
        let reason = self.why_not_held(job);
        step.sends
            .push((runner.clone(), ToRunner::Abandon { job, reason }));
    }

    /// Why `job` is not (or no longer) this attempt's to run.
    fn why_not_held(&self, job: JobRef) -> String {
        match self.state.job(job.job) {
            None => format!("unknown job {}", job.job),
            Some(j) => match &j.status {
                JobStatus::Done(f) => format!(
                    "stale {job}: the job already finished ({}) in attempt {}",
                    f.outcome.as_str(),
                    f.attempt
                ),
                JobStatus::Running { runner } => format!(
                    "stale {job}: the job is now attempt {} on runner {}",
                    j.attempts,
                    self.state.name(*runner)
                ),
                JobStatus::Queued => format!(
                    "stale {job}: the job was re-queued after attempt {}",
                    j.attempts
                ),
            },
        }
    }

    /// Queues a connected runner that holds nothing as waiting for work.
    fn make_idle(&mut self, runner: &RunnerName) {
        if self
            .sessions
            .get(runner)
            .is_some_and(|s| s.connected && !s.lost)
            && self.state.holder(runner).is_none()
            && !self.idle.contains(runner)
        {
            self.idle.push_back(runner.clone());
        }
    }

    fn hear(&mut self, runner: &RunnerName, now_ms: u64, connected: bool) {
        let s = self.sessions.entry(runner.clone()).or_insert(Session {
            connected,
            last_heard_ms: now_ms,
            lost: false,
        });
        s.last_heard_ms = now_ms;
        s.lost = false;
        if connected {
            s.connected = true;
        }
    }

    /// The runner's hold on `job` ends unfinished: queue it again, or give up
    /// when it has been lost `max_attempts` times.
    fn lose(
        &mut self,
        step: &mut Step,
        runner: &RunnerName,
        job: JobRef,
        reason: LostReason,
        now_ms: u64,
    ) {
        self.emit(
            step,
            Event::HeartbeatLost {
                runner: runner.clone(),
                job: job.job,
                attempt: job.attempt,
                reason,
            },
            now_ms,
        );
        let j = self.state.job(job.job).expect("lost job exists");
        if j.lost >= self.config.max_attempts && reason != LostReason::HandedBack {
            let commit = j.commit;
            let lost = j.lost;
            self.emit(
                step,
                Event::Result {
                    job: job.job,
                    commit,
                    runner: None,
                    attempt: job.attempt,
                    report: JobReport {
                        outcome: Outcome::Error,
                        exit_code: None,
                        duration_ms: 0,
                        tests: None,
                        message: format!(
                            "gave up: the runner running this commit was lost {lost} times"
                        ),
                    },
                    output_bytes: 0,
                },
                now_ms,
            );
        }
    }

    /// Hands queued jobs to idle runners, oldest job to longest-waiting runner.
    fn schedule(&mut self, step: &mut Step, now_ms: u64) {
        while let Some(job) = self.state.queue_front() {
            let Some(runner) = self.idle.pop_front() else {
                break;
            };
            let usable = self
                .sessions
                .get(&runner)
                .is_some_and(|s| s.connected && !s.lost)
                && self.state.holder(&runner).is_none();
            if !usable {
                continue;
            }
            let j = self.state.job(job).expect("queued job exists");
            let (commit, attempt) = (j.commit, j.attempts + 1);
            let branch = self.state.branch(j).map(str::to_string);
            self.emit(
                step,
                Event::JobAssigned {
                    job,
                    commit,
                    runner: runner.clone(),
                    attempt,
                },
                now_ms,
            );
            step.sends.push((
                runner,
                ToRunner::Assign {
                    job: JobRef { job, attempt },
                    commit,
                    branch,
                },
            ));
        }
    }

    fn emit(&mut self, step: &mut Step, event: Event, now_ms: u64) {
        if let Err(why) = self.state.apply(&event, now_ms) {
            // decide only produces events valid for the current state.
            panic!("core produced an inapplicable event {event:?}: {why}");
        }
        step.events.push(event);
    }

    /// Jobs the core considers held, for invariant checks.
    pub fn held_jobs(&self) -> Vec<(RunnerName, JobRef)> {
        self.state.holders().map(|(r, j)| (r.clone(), *j)).collect()
    }

    pub fn is_idle(&self, runner: &str) -> bool {
        self.idle.iter().any(|r| r == runner)
    }

    pub fn job_of(&self, id: JobId) -> Option<&super::state::Job> {
        self.state.job(id)
    }
}
