//! Decisions: inputs in, events and messages out.
//!
//! `Core` pairs the durable [`State`] with the volatile facts that do not
//! belong in the log (which runners are connected, idle, when each was last
//! heard). `Core::handle` applies every record it returns before returning
//! (numbered after the state's last one and stamped with the wall clock),
//! so later decisions in the same batch see them; the shell must make the
//! records durable before it delivers any of the step's messages.
//!
//! Two clocks come in with every input ([`Now`]): the monotonic one decides
//! (heartbeat deadlines, pauses), the wall clock only stamps records for
//! people. A wall clock stepped forward or back changes no decision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::archive::ArchivedJob;
use super::event::{
    DropReason, Event, JobReport, LostReason, Notice, NoticeKind, NoticeState, Outcome, Record,
};
use super::ids::{CommitId, JobId, JobRef, RunnerName};
use super::retention::{self, RetentionPolicy, StoredOutput};
use super::state::{JobStatus, State};

mod runners;
use runners::{Deadlines, IdleQueue};

/// The time of an input, on both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the Unix epoch: stamps records, for display only.
    pub wall_ms: u64,
    /// Milliseconds on a clock that never steps (CLOCK_MONOTONIC in the
    /// shell): every deadline is measured on it.
    pub mono_ms: u64,
}

impl Now {
    /// Both clocks at `ms` (tests and simulations on virtual time).
    pub fn at(ms: u64) -> Now {
        Now {
            wall_ms: ms,
            mono_ms: ms,
        }
    }
}

/// How a runner let go of a job while away from the dispatcher; it says so
/// in its next hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeftHow {
    /// The runner process died while running it (its marker file says so).
    Crashed,
    /// The runner was stopped (SIGTERM) and killed the test cleanly: not a
    /// loss, the job is simply queued again.
    HandedBack,
}

/// A job a runner let go of while away, as its hello reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeftJob {
    pub job: JobRef,
    pub how: LeftHow,
}

impl LeftJob {
    fn reason(self) -> LostReason {
        match self.how {
            LeftHow::Crashed => LostReason::RunnerRestarted,
            LeftHow::HandedBack => LostReason::HandedBack,
        }
    }
}

/// Which repositories a runner serves, as its hello says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Serves {
    /// The default (unnamed) repository only: `--repo URL`, and every
    /// runner from before repositories had names.
    Default,
    /// These repositories; a `None` entry is the default one. At most
    /// `proto::MAX_SERVED` entries (checked at the edge).
    Only(Vec<Option<String>>),
    /// Every repository the dispatcher has (`--any-repository`), cloned
    /// from the URL each assignment carries.
    Any,
}

impl Serves {
    /// Whether a job of `repository` (`None`: the default) may go to it.
    pub fn serves(&self, repository: Option<&str>) -> bool {
        match self {
            Serves::Default => repository.is_none(),
            Serves::Only(names) => names.iter().any(|n| n.as_deref() == repository),
            Serves::Any => true,
        }
    }
}

/// Which notifications a sink takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkTakes {
    /// Results, and branches turning red or green (`--notify-url`,
    /// `--notify-command`).
    Events,
    /// Each job's status as it moves: pending, running, its outcome (a
    /// forge's commit statuses).
    Statuses,
}

/// A place notifications are owed to. `key` names it in the log: the same
/// sink keeps its key across restarts, so what it was owed is still sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    pub key: String,
    pub takes: SinkTakes,
}

/// Most notifications owed to one sink; beyond it, the oldest is dropped
/// (on record) so a sink that never comes back cannot fill the memory.
pub const MAX_OWED_PER_SINK: usize = 100_000;

/// `ci-dispatcher --idle-heartbeat-interval`'s default: Buildkite's agents
/// ping every 10 s, Jenkins' every 4 min; at 15 s, 10,000 idle runners
/// send 667 heartbeats a second.
pub const DEFAULT_IDLE_HEARTBEAT_MS: u64 = 15_000;

/// Tunables of the decisions.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// A runner not heard from for this long loses its job.
    pub heartbeat_timeout_ms: u64,
    /// How often a runner holding no job beats (told in its welcome). An
    /// idle runner is judged lost after this plus the timeout: ten
    /// thousand idle runners beating every 2 s cost the dispatcher more
    /// than a tenth of a core, and an idle runner's silence endangers no
    /// job.
    pub idle_heartbeat_ms: u64,
    /// A job whose runner is lost this many times ends as `error`.
    pub max_attempts: u32,
    /// Where notifications go; none by default.
    pub sinks: Vec<SinkSpec>,
    /// How many finished jobs stay in memory (`--keep-in-memory`).
    pub window: usize,
    /// Which stored outputs to keep (`--keep-outputs-for`,
    /// `--keep-outputs-bytes`); everything by default here, the
    /// dispatcher's flags have their own defaults.
    pub retention: RetentionPolicy,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            heartbeat_timeout_ms: 10_000,
            idle_heartbeat_ms: DEFAULT_IDLE_HEARTBEAT_MS,
            max_attempts: 3,
            sinks: Vec::new(),
            window: crate::core::state::DEFAULT_WINDOW,
            retention: RetentionPolicy::KEEP_ALL,
        }
    }
}

impl CoreConfig {
    /// How often the shell must feed [`Input::Tick`]: a quarter of the
    /// heartbeat timeout, between 20 ms and 1 s.
    pub fn tick_ms(&self) -> u64 {
        (self.heartbeat_timeout_ms / 4).clamp(20, 1000)
    }

    /// A gap longer than this between two inputs means the dispatcher
    /// itself did not run (SIGSTOP, a frozen VM, swapping, a disk that
    /// blocked the deciding thread): the runners could not have been heard,
    /// so none is condemned for it. Half the timeout: at least two ticks,
    /// so an ordinary late tick is no pause.
    pub fn pause_gap_ms(&self) -> u64 {
        self.heartbeat_timeout_ms / 2
    }

    /// How long a runner that holds nothing may stay silent: one idle
    /// heartbeat interval plus the timeout.
    pub fn idle_timeout_ms(&self) -> u64 {
        self.idle_heartbeat_ms
            .saturating_add(self.heartbeat_timeout_ms)
    }
}

/// Something that happened outside the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The dispatcher (re)started on top of the replayed state.
    Started {
        pid: u32,
    },
    /// An observer or a tool reports commits, oldest first, of
    /// `repository` (`None`: the default one; the shell has checked that
    /// the dispatcher has it).
    CommitsReported {
        repository: Option<String>,
        branch: Option<String>,
        commits: Vec<CommitId>,
        /// The branch's tip as the reporter sees it.
        tip: Option<CommitId>,
    },
    /// A runner said hello. `holding` is the job it is still running (or
    /// holds a result for); `left` a job it let go of while away.
    RunnerConnected {
        runner: RunnerName,
        holding: Option<JobRef>,
        left: Option<LeftJob>,
        serves: Serves,
    },
    RunnerDisconnected {
        runner: RunnerName,
    },
    Heartbeat {
        runner: RunnerName,
        holding: Option<JobRef>,
    },
    /// The runner sent something that only shows it is alive (a chunk of
    /// live output, perhaps of a job it no longer holds): it is heard,
    /// nothing is decided.
    Heard {
        runner: RunnerName,
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
    /// The dispatcher could not make progress for `gap_ms` although it ran
    /// (its disk held every acknowledgement back): as after a pause,
    /// nobody is condemned for what it could not hear or answer.
    Stalled {
        gap_ms: u64,
    },
    /// Somebody asks to stop the commit's job (queued or running).
    Cancel {
        commit: CommitId,
    },
    /// Somebody asks for the commit's finished job to run again.
    Retry {
        commit: CommitId,
    },
    /// The notifier delivered notification `n` (`None`), or gave it up
    /// for good (`Some(why)`).
    Notified {
        n: u64,
        dropped: Option<DropReason>,
    },
    /// What the output store holds, for retention: the bytes of every
    /// stored output, and the oldest outputs in age order (a bounded page,
    /// read by the shell). The core decides which go
    /// ([`retention::choose`]) and logs `OutputsPruned`; the shell deletes
    /// them only once that is durable.
    Retention {
        stored_bytes: u64,
        oldest: Vec<StoredOutput>,
    },
}

/// Why a cancel or a retry did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The dispatcher has never seen the commit.
    UnknownCommit,
    /// Cancel: the job already has its outcome.
    AlreadyFinished(Outcome),
    /// Retry: the job is still queued or running.
    NotFinished,
}

/// A message for one runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToRunner {
    Assign {
        job: JobRef,
        commit: CommitId,
        branch: Option<String>,
        /// The job's named repository (`None`: the default one).
        repository: Option<String>,
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
    /// A cancel or a retry was recorded.
    Done,
    /// A cancel or a retry changed nothing, and why.
    Refused(Refusal),
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Step {
    /// Already applied to the state (numbered on from its last record);
    /// must be durable before anything below leaves the process.
    pub records: Vec<Record>,
    pub sends: Vec<(RunnerName, ToRunner)>,
    pub reply: Option<Reply>,
}

/// Whether a runner has a live connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Connected,
    Disconnected,
}

/// Whether a runner is in good standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Heard,
    /// Declared lost (silent past the timeout); cleared when heard again.
    Lost,
}

impl Step {
    /// The events of [`Step::records`], in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.records.iter().map(|r| &r.event)
    }
}

/// Volatile per-runner facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub link: Link,
    /// On the monotonic clock.
    pub last_heard_mono_ms: u64,
    pub standing: Standing,
    /// The repositories it serves (from its last hello).
    pub serves: Serves,
    /// When its one live entry in the deadline heap comes due (while in
    /// good standing); an entry due at another time is stale.
    pub armed_ms: u64,
}

impl Session {
    fn usable(&self) -> bool {
        self.link == Link::Connected && self.standing == Standing::Heard
    }
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
    /// Finished jobs out of memory that the next input is about, as the
    /// shell found them in the history indexes ([`Core::recall`]); the
    /// core does no IO, so the shell looks up before it asks. Emptied by
    /// every `handle`.
    recalled: Vec<ArchivedJob>,
    sessions: BTreeMap<RunnerName, Session>,
    /// Runners waiting for work, longest-waiting first.
    idle: IdleQueue,
    /// When each runner in good standing must be judged at the latest:
    /// a tick looks at the ones due, not at every runner.
    deadlines: Deadlines,
    config: CoreConfig,
    /// Counts of inputs refused as stale, for tracing and tests.
    pub stale_rejections: u64,
    /// When the last input was decided (monotonic), to notice pauses.
    last_input_mono_ms: Option<u64>,
    /// No runner is expired before this (monotonic): right after the
    /// dispatcher did not run on time, what waited in its sockets is read
    /// before anyone is judged.
    hold_expiry_until_ms: u64,
    /// When each repository (interned name; `None` the default) last had
    /// a job handed out, by `assignments`: the least recently served goes
    /// first, so one repository's flood cannot starve another. Volatile:
    /// fairness is not history.
    served_at: BTreeMap<Option<super::state::Sym>, u64>,
    /// Hand-outs decided since this core started.
    assignments: u64,
}

impl Core {
    pub fn new(state: State, config: CoreConfig) -> Core {
        Core {
            state,
            recalled: Vec::new(),
            sessions: BTreeMap::new(),
            idle: IdleQueue::default(),
            deadlines: Deadlines::default(),
            config,
            stale_rejections: 0,
            last_input_mono_ms: None,
            hold_expiry_until_ms: 0,
            served_at: BTreeMap::new(),
            assignments: 0,
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
            Some(s) if s.standing == Standing::Lost => RunnerState::Lost,
            _ if self.state.holder(runner).is_some() => RunnerState::Busy,
            Some(s) if s.link == Link::Connected => RunnerState::Idle,
            _ => RunnerState::Lost,
        }
    }

    /// Decides on one input; see the module docs for the contract.
    /// Hands the core finished jobs that left memory and that the next
    /// input names (by commit): the history indexes' answer, looked up by
    /// the shell before [`Core::handle`]. What the core is not told about
    /// it takes as never seen, so the shell must ask for every commit of
    /// an input that [`State::job_for_commit`] does not find.
    pub fn recall(&mut self, jobs: impl IntoIterator<Item = ArchivedJob>) {
        self.recalled.extend(jobs);
    }

    /// A recalled job of `commit`.
    fn recalled(&self, commit: &CommitId) -> Option<&ArchivedJob> {
        self.recalled.iter().find(|a| a.commit == *commit)
    }

    pub fn handle(&mut self, input: Input, now: Now) -> Step {
        let step = self.decide(input, now);
        self.recalled.clear();
        step
    }

    fn decide(&mut self, input: Input, now: Now) -> Step {
        let mut step = Step::default();
        self.notice_pause(&mut step, now);
        match input {
            Input::Started { pid } => self.on_started(&mut step, pid, now),
            Input::CommitsReported {
                repository,
                branch,
                commits,
                tip,
            } => self.on_commits(&mut step, repository, branch, commits, tip, now),
            Input::RunnerConnected {
                runner,
                holding,
                left,
                serves,
            } => {
                self.hear(&runner, now, Link::Connected);
                if let Some(s) = self.sessions.get_mut(&runner) {
                    s.serves = serves;
                }
                self.on_connected(&mut step, runner, holding, left, now)
            }
            Input::RunnerDisconnected { runner } => {
                if let Some(s) = self.sessions.get_mut(&runner) {
                    s.link = Link::Disconnected;
                }
                self.idle.remove(&runner);
            }
            Input::Heartbeat { runner, holding } => {
                self.on_heartbeat(&mut step, runner, holding, now)
            }
            Input::Heard { runner } => self.hear(&runner, now, Link::Connected),
            Input::RunnerReady { runner } => {
                self.hear(&runner, now, Link::Connected);
                self.make_idle(&runner);
            }
            Input::ResultReported {
                runner,
                job,
                report,
                output_bytes,
            } => {
                self.hear(&runner, now, Link::Connected);
                let reply = self.accept_result(&mut step, &runner, job, report, output_bytes, now);
                step.reply = Some(reply);
            }
            Input::HandBack { runner, job } => {
                self.hear(&runner, now, Link::Connected);
                if self.state.holder(&runner) == Some(job) {
                    self.lose(&mut step, &runner, job, LostReason::HandedBack, now);
                }
                self.idle.remove(&runner);
            }
            Input::Tick => self.on_tick(&mut step, now),
            Input::Stalled { gap_ms } => self.grace_all(&mut step, gap_ms, now),
            Input::Cancel { commit } => self.on_cancel(&mut step, commit, now),
            Input::Retry { commit } => self.on_retry(&mut step, commit, now),
            Input::Notified { n, dropped } => {
                // A repeat (the notifier sent it twice across a
                // reconnection) changes nothing.
                if self.state.outbox().contains_key(&n) {
                    let event = match dropped {
                        None => Event::NotificationDelivered { n },
                        Some(reason) => Event::NotificationDropped { n, reason },
                    };
                    self.emit(&mut step, event, now);
                }
            }
            Input::Retention {
                stored_bytes,
                oldest,
            } => self.on_retention(&mut step, stored_bytes, &oldest, now),
        }
        self.schedule(&mut step, now);
        step
    }

    /// A gap since the last input longer than [`CoreConfig::pause_gap_ms`]
    /// means this process did not run: nobody could be heard meanwhile, so
    /// every runner gets a full timeout from now, as after a restart. A
    /// shorter gap that still missed a tick by half a tick holds expiry
    /// back for one tick: the frames that waited in the sockets meanwhile
    /// are read before anyone is judged on what they would have said.
    fn notice_pause(&mut self, step: &mut Step, now: Now) {
        let last = self.last_input_mono_ms.replace(now.mono_ms);
        let Some(last) = last else { return };
        let gap_ms = now.mono_ms.saturating_sub(last);
        let tick = self.config.tick_ms();
        if gap_ms > self.config.pause_gap_ms() {
            self.grace_all(step, gap_ms, now);
        } else if gap_ms > tick + tick / 2 {
            self.hold_expiry_until_ms = now.mono_ms + tick;
        }
    }

    /// Every runner gets a full timeout from now; the gap goes on record.
    fn grace_all(&mut self, step: &mut Step, gap_ms: u64, now: Now) {
        for s in self.sessions.values_mut() {
            s.last_heard_mono_ms = s.last_heard_mono_ms.max(now.mono_ms);
        }
        self.emit(step, Event::DispatcherPaused { gap_ms }, now);
    }

    fn on_started(&mut self, step: &mut Step, pid: u32, now: Now) {
        // Old timestamps must not condemn anyone: every runner that holds a
        // job gets a full timeout from now to come back.
        let holders: Vec<RunnerName> = self.state.holders().map(|(r, _)| r.clone()).collect();
        let due = now.mono_ms + self.config.heartbeat_timeout_ms;
        for r in holders {
            // One live deadline per runner in good standing: one judged
            // already keeps its entry, due no later than this one.
            let armed = self
                .sessions
                .get(&r)
                .filter(|s| s.standing == Standing::Heard)
                .map(|s| s.armed_ms);
            self.sessions.insert(
                r.clone(),
                Session {
                    link: Link::Disconnected,
                    last_heard_mono_ms: now.mono_ms,
                    standing: Standing::Heard,
                    serves: Serves::Default,
                    armed_ms: armed.unwrap_or(due),
                },
            );
            if armed.is_none() {
                self.deadlines.arm(due, r);
            }
        }
        self.emit(step, Event::DispatcherStarted { pid }, now);
        let window = self.config.window.clamp(1, u32::MAX as usize);
        if window != self.state.window() {
            let jobs = window as u32;
            self.emit(step, Event::MemoryWindow { jobs }, now);
        }
        // What is owed to a sink this start does not have cannot be sent.
        let gone: Vec<u64> = self
            .state
            .outbox()
            .values()
            .filter(|d| !self.config.sinks.iter().any(|s| s.key == d.sink))
            .map(|d| d.n)
            .collect();
        for n in gone {
            let reason = DropReason::SinkRemoved;
            self.emit(step, Event::NotificationDropped { n, reason }, now);
        }
    }

    /// Chooses the stored outputs that go and puts the choice on record.
    /// A job in memory that is not finished (queued or running again
    /// after a retry) keeps its outputs.
    fn on_retention(
        &mut self,
        step: &mut Step,
        stored_bytes: u64,
        oldest: &[StoredOutput],
        now: Now,
    ) {
        let state = &self.state;
        let protected = |j: JobRef| {
            state
                .job(j.job)
                .is_some_and(|job| !matches!(job.status, JobStatus::Done(_)))
        };
        let prunes = retention::choose(
            &self.config.retention,
            now.wall_ms,
            stored_bytes,
            oldest,
            protected,
        );
        for p in prunes {
            let event = Event::OutputsPruned {
                reason: p.reason,
                outputs: p.outputs,
            };
            self.emit(step, event, now);
        }
    }

    /// A commit already known is a duplicate whichever repository reported
    /// it: a commit id names one tree, so a fork's copy of a commit is the
    /// same test (and the job stays in the repository that reported it
    /// first).
    fn on_commits(
        &mut self,
        step: &mut Step,
        repository: Option<String>,
        branch: Option<String>,
        commits: Vec<CommitId>,
        tip: Option<CommitId>,
        now: Now,
    ) {
        let mut accepted = Vec::new();
        let mut duplicates = 0;
        for commit in commits {
            if self.state.job_for_commit(&commit).is_some() || self.recalled(&commit).is_some() {
                duplicates += 1;
                continue;
            }
            let job = self.state.next_job_id();
            let branch = branch.clone();
            let event = match &repository {
                None => Event::CommitSeen {
                    job,
                    commit,
                    branch,
                },
                Some(r) => Event::CommitSeenIn {
                    job,
                    commit,
                    branch,
                    repository: r.clone(),
                },
            };
            self.emit(step, event, now);
            accepted.push(commit);
        }
        if let (Some(branch), Some(tip)) = (branch, tip)
            && self
                .state
                .tips_of(repository.as_deref())
                .and_then(|t| t.get(&branch))
                != Some(&tip)
        {
            let event = match repository {
                None => Event::BranchMoved { branch, tip },
                Some(repository) => Event::BranchMovedIn {
                    repository,
                    branch,
                    tip,
                },
            };
            self.emit(step, event, now);
        }
        step.reply = Some(Reply::Commits {
            accepted,
            duplicates,
        });
    }

    fn on_connected(
        &mut self,
        step: &mut Step,
        runner: RunnerName,
        holding: Option<JobRef>,
        left: Option<LeftJob>,
        now: Now,
    ) {
        self.hear(&runner, now, Link::Connected);
        self.idle.remove(&runner);
        let held = self.state.holder(&runner);
        let mut keep = None;
        if let Some(h) = holding {
            if held == Some(h) {
                keep = Some(h);
            } else {
                self.abandon(step, &runner, h);
            }
        }
        match held {
            Some(h) if keep.is_none() && left.is_some_and(|l| l.job == h) => {
                let reason = left.map_or(LostReason::RunnerRestarted, LeftJob::reason);
                self.lose(step, &runner, h, reason, now);
                self.idle.push_back(&runner);
            }
            Some(h) if keep.is_none() => {
                // The assignment was made durable but never reached
                // the runner (or it restarted before starting it):
                // hand the same attempt out again.
                self.resend_assign(step, &runner, h);
                keep = Some(h);
            }
            Some(_) => {}
            // A runner told to abandon says Ready once it stopped.
            None if holding.is_none() => self.idle.push_back(&runner),
            None => {}
        }
        step.reply = Some(Reply::Welcome { keep });
    }

    fn on_heartbeat(
        &mut self,
        step: &mut Step,
        runner: RunnerName,
        holding: Option<JobRef>,
        now: Now,
    ) {
        self.hear(&runner, now, Link::Connected);
        match (holding, self.state.holder(&runner)) {
            // A runner declared lost while idle was dropped from
            // `idle` and never says Ready again: hearing it hold
            // nothing makes it idle again.
            (None, None) => self.make_idle(&runner),
            // It holds nothing but was given `h`: the Assign was
            // lost or ignored (it arrived while the runner still
            // held a stale job). Hand the same attempt out again;
            // a runner already holding `h` ignores the repeat.
            (None, Some(h)) => self.resend_assign(step, &runner, h),
            (Some(_), _) => {}
        }
        if let Some(h) = holding
            && self.state.holder(&runner) != Some(h)
        {
            self.abandon(step, &runner, h);
        }
    }

    fn on_cancel(&mut self, step: &mut Step, commit: CommitId, now: Now) {
        let Some(j) = self.state.job_for_commit(&commit) else {
            step.reply = Some(Reply::Refused(match self.recalled(&commit) {
                Some(a) => Refusal::AlreadyFinished(a.finished.outcome),
                None => Refusal::UnknownCommit,
            }));
            return;
        };
        let (job, attempt, status) = (j.id, j.attempts, j.status);
        let holder = match status {
            JobStatus::Done(f) => {
                step.reply = Some(Reply::Refused(Refusal::AlreadyFinished(f.outcome)));
                return;
            }
            JobStatus::Running { runner, .. } => Some(self.state.name(runner).to_string()),
            JobStatus::Queued => None,
        };
        self.emit(
            step,
            Event::JobCancelled {
                job,
                commit,
                attempt,
            },
            now,
        );
        if let Some(runner) = holder {
            // It kills the test's process group and says Ready.
            step.sends.push((
                runner,
                ToRunner::Abandon {
                    job: JobRef { job, attempt },
                    reason: format!("job {job} was cancelled"),
                },
            ));
        }
        step.reply = Some(Reply::Done);
    }

    fn on_retry(&mut self, step: &mut Step, commit: CommitId, now: Now) {
        if self.state.job_for_commit(&commit).is_none()
            && let Some(a) = self.recalled(&commit)
        {
            // It left memory: it comes back, on record, to be retried.
            let job = Box::new(a.clone());
            self.emit(step, Event::JobRestored { job }, now);
        }
        let Some(j) = self.state.job_for_commit(&commit) else {
            step.reply = Some(Reply::Refused(Refusal::UnknownCommit));
            return;
        };
        if !matches!(j.status, JobStatus::Done(_)) {
            step.reply = Some(Reply::Refused(Refusal::NotFinished));
            return;
        }
        let (job, attempt) = (j.id, j.attempts);
        self.emit(
            step,
            Event::JobRetried {
                job,
                commit,
                attempt,
            },
            now,
        );
        step.reply = Some(Reply::Done);
    }

    fn on_tick(&mut self, step: &mut Step, now: Now) {
        if now.mono_ms < self.hold_expiry_until_ms {
            return;
        }
        let mut expired: Vec<RunnerName> = Vec::new();
        while let Some((armed, runner)) = self.deadlines.pop_due(now.mono_ms) {
            let Some(s) = self.sessions.get(&runner) else {
                continue;
            };
            if s.standing != Standing::Heard || s.armed_ms != armed {
                continue;
            }
            let timeout = match self.state.holder(&runner) {
                Some(_) => self.config.heartbeat_timeout_ms,
                None => self.config.idle_timeout_ms(),
            };
            let due = s.last_heard_mono_ms.saturating_add(timeout);
            if due > now.mono_ms {
                self.arm(due, runner);
            } else {
                expired.push(runner);
            }
        }
        // In name order, as the sessions are kept: the order of the
        // records does not depend on when each runner was last heard.
        expired.sort_unstable();
        expired.dedup();
        for runner in expired {
            if let Some(s) = self.sessions.get_mut(&runner) {
                s.standing = Standing::Lost;
            }
            self.idle.remove(&runner);
            if let Some(h) = self.state.holder(&runner) {
                self.lose(step, &runner, h, LostReason::HeartbeatTimeout, now);
            }
        }
    }

    fn accept_result(
        &mut self,
        step: &mut Step,
        runner: &RunnerName,
        job: JobRef,
        report: JobReport,
        output_bytes: u64,
        now: Now,
    ) -> Reply {
        let Some(j) = self.state.job(job.job) else {
            self.stale_rejections += 1;
            return Reply::ResultAck {
                job,
                accepted: false,
                reason: self.why_not_held(job),
            };
        };
        match &j.status {
            JobStatus::Done(f)
                if f.attempt == job.attempt
                    && f.outcome != Outcome::Cancelled
                    && self.state.runner(f) == Some(runner.as_str()) =>
            {
                // A resend of a result we already recorded (the ack was lost);
                // a cancelled attempt's runner never had its result recorded.
                self.make_idle(runner);
                Reply::ResultAck {
                    job,
                    accepted: true,
                    reason: "already recorded".into(),
                }
            }
            JobStatus::Running { runner: r, .. }
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
                    now,
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
                repository: self.state.repository(job).map(str::to_string),
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
            None if job.job < self.state.next_job_id() => {
                format!("stale {job}: the job finished long ago")
            }
            None => format!("unknown job {}", job.job),
            Some(j) => match &j.status {
                JobStatus::Done(f) => format!(
                    "stale {job}: the job already finished ({}) in attempt {}",
                    f.outcome.as_str(),
                    f.attempt
                ),
                JobStatus::Running { runner, .. } => format!(
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
        if self.sessions.get(runner).is_some_and(Session::usable)
            && self.state.holder(runner).is_none()
        {
            self.idle.push_back(runner);
        }
    }

    /// A heartbeat's whole cost when nothing changes: one map lookup and
    /// two stores (no allocation, no deadline moved; see [`Deadlines`]).
    fn hear(&mut self, runner: &RunnerName, now: Now, link: Link) {
        let due = now.mono_ms + self.config.heartbeat_timeout_ms;
        match self.sessions.get_mut(runner) {
            Some(s) => {
                s.last_heard_mono_ms = now.mono_ms;
                s.link = link;
                if s.standing == Standing::Lost {
                    s.standing = Standing::Heard;
                    self.arm(due, runner.clone());
                }
            }
            None => {
                self.sessions.insert(
                    runner.clone(),
                    Session {
                        link,
                        last_heard_mono_ms: now.mono_ms,
                        standing: Standing::Heard,
                        serves: Serves::Default,
                        armed_ms: due,
                    },
                );
                self.deadlines.arm(due, runner.clone());
            }
        }
    }

    /// Makes `due_ms` the runner's one live deadline (an entry already in
    /// the heap becomes stale and is dropped when it comes due).
    fn arm(&mut self, due_ms: u64, runner: RunnerName) {
        if let Some(s) = self.sessions.get_mut(&runner) {
            s.armed_ms = due_ms;
            self.deadlines.arm(due_ms, runner);
        }
    }

    /// An assignment starts the runner's clock: an idle runner may have
    /// been silent for longer than the timeout (it beats at the idle
    /// pace), so from now it gets a full timeout to beat with its job, and
    /// its deadline moves earlier when it was armed at the idle pace.
    fn clock_from_assignment(&mut self, runner: &RunnerName, now: Now) {
        let due = now.mono_ms + self.config.heartbeat_timeout_ms;
        let Some(s) = self.sessions.get_mut(runner) else {
            return;
        };
        s.last_heard_mono_ms = s.last_heard_mono_ms.max(now.mono_ms);
        if due < s.armed_ms {
            self.arm(due, runner.clone());
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
        now: Now,
    ) {
        self.emit(
            step,
            Event::HeartbeatLost {
                runner: runner.clone(),
                job: job.job,
                attempt: job.attempt,
                reason,
            },
            now,
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
                now,
            );
        }
    }

    /// Hands queued jobs to idle runners: to the longest-waiting runner,
    /// of the repositories it serves the one served least recently, and of
    /// that one the oldest queued job (a job queued again after a loss is
    /// at the front). A runner that serves nothing queued keeps its place.
    fn schedule(&mut self, step: &mut Step, now: Now) {
        let mut passed: Vec<(u64, RunnerName)> = Vec::new();
        while self.state.queue_len() > 0 {
            let Some((place, runner)) = self.idle.pop_front() else {
                break;
            };
            let Some(session) = self.sessions.get(&runner) else {
                continue;
            };
            if !session.usable() || self.state.holder(&runner).is_some() {
                continue;
            }
            let Some(job) = self.pick(&session.serves) else {
                passed.push((place, runner));
                continue;
            };
            let j = self.state.job(job).expect("queued job exists");
            let (commit, attempt) = (j.commit, j.attempts + 1);
            let branch = self.state.branch(j).map(str::to_string);
            let repository = self.state.repository(j).map(str::to_string);
            self.assignments += 1;
            let counter = self.assignments;
            match self.served_at.get_mut(&j.repository) {
                Some(at) => *at = counter,
                None => {
                    self.served_at.insert(j.repository, counter);
                }
            }
            self.emit(
                step,
                Event::JobAssigned {
                    job,
                    commit,
                    runner: runner.clone(),
                    attempt,
                },
                now,
            );
            self.clock_from_assignment(&runner, now);
            step.sends.push((
                runner,
                ToRunner::Assign {
                    job: JobRef { job, attempt },
                    commit,
                    branch,
                    repository,
                },
            ));
        }
        for (place, runner) in passed {
            self.idle.restore(place, runner);
        }
    }

    /// The job a runner serving `serves` gets now, if any.
    fn pick(&self, serves: &Serves) -> Option<JobId> {
        let queued = self.state.queued_by_repository();
        let name = |r: &Option<super::state::Sym>| r.map(|s| self.state.name(s));
        // Fast path: one repository has queued jobs (always so with one
        // repository): its oldest is the queue's front.
        if queued.len() == 1 {
            let (repo, _) = queued.iter().next()?;
            return if serves.serves(name(repo)) {
                self.state.queue_front()
            } else {
                None
            };
        }
        let repo = *queued
            .keys()
            .filter(|r| serves.serves(name(r)))
            .min_by_key(|r| self.served_at.get(*r).copied().unwrap_or(0))?;
        self.state
            .queue()
            .find(|j| j.repository == repo)
            .map(|j| j.id)
    }

    /// The repositories with queued jobs that no connected runner serves
    /// (`None`: the default one): their jobs wait for such a runner.
    pub fn unserved(&self) -> Vec<Option<String>> {
        self.state
            .queued_by_repository()
            .keys()
            .map(|r| r.map(|s| self.state.name(s).to_string()))
            .filter(|r| {
                !self
                    .sessions
                    .values()
                    .any(|s| s.link == Link::Connected && s.serves.serves(r.as_deref()))
            })
            .collect()
    }

    /// Numbers `event` after the state's last record, stamps it with the
    /// wall clock and applies it: the only way the core changes its state.
    fn emit(&mut self, step: &mut Step, event: Event, now: Now) {
        // "Broken" and "fixed" compare with where the branch stood before.
        let mark_before = match &event {
            Event::Result { job, .. } if !self.config.sinks.is_empty() => {
                self.state.job(*job).and_then(|j| {
                    self.state
                        .branch_mark_in(self.state.repository(j), self.state.branch(j)?)
                })
            }
            _ => None,
        };
        let record = Record {
            seq: self.state.last_seq() + 1,
            at_ms: now.wall_ms,
            event,
        };
        if let Err(why) = self.state.apply_record(&record) {
            // decide only produces events valid for the current state.
            panic!("core produced an inapplicable record {record:?}: {why}");
        }
        let notices = if self.config.sinks.is_empty() {
            Vec::new()
        } else {
            self.notices_for(&record.event, mark_before)
        };
        step.records.push(record);
        for (takes, notice) in notices {
            self.owe(step, takes, notice, now);
        }
    }

    /// The notifications an event just applied makes due, by the kind of
    /// sink that takes them.
    fn notices_for(
        &self,
        event: &Event,
        mark_before: Option<super::state::BranchMark>,
    ) -> Vec<(SinkTakes, Notice)> {
        let (job, state, message) = match event {
            Event::CommitSeen { job, .. } | Event::CommitSeenIn { job, .. } => {
                (*job, NoticeState::Queued, "queued".to_string())
            }
            Event::JobAssigned { job, runner, .. } => {
                (*job, NoticeState::Running, format!("running on {runner}"))
            }
            Event::HeartbeatLost {
                job,
                runner,
                reason,
                ..
            } => (
                *job,
                NoticeState::Queued,
                match reason {
                    LostReason::HandedBack => format!("handed back by {runner}; queued again"),
                    _ => format!("runner {runner} lost; queued again"),
                },
            ),
            Event::JobRetried { job, .. } => (
                *job,
                NoticeState::Queued,
                "queued again (retry)".to_string(),
            ),
            Event::Result { job, .. } | Event::JobCancelled { job, .. } => {
                let Some(j) = self.state.job(*job) else {
                    return Vec::new();
                };
                let JobStatus::Done(f) = j.status else {
                    return Vec::new();
                };
                let report = self.state.report(j.id, &f);
                let base = Notice {
                    kind: NoticeKind::Result,
                    job: j.id,
                    commit: j.commit,
                    repository: self.state.repository(j).map(str::to_string),
                    branch: self.state.branch(j).map(str::to_string),
                    attempt: f.attempt,
                    state: NoticeState::Finished(f.outcome),
                    runner: self.state.runner(&f).map(str::to_string),
                    message: report.message,
                    tests: f.tests,
                    duration_ms: f.duration_ms,
                };
                let mut out = vec![
                    (
                        SinkTakes::Statuses,
                        Notice {
                            kind: NoticeKind::Status,
                            ..base.clone()
                        },
                    ),
                    (SinkTakes::Events, base.clone()),
                ];
                let now_mark = base
                    .branch
                    .as_deref()
                    .and_then(|b| self.state.branch_mark_in(base.repository.as_deref(), b));
                if let (Some(before), Some(after)) = (mark_before, now_mark)
                    && after.job == j.id
                    && before.job != j.id
                {
                    let was_green = before.outcome == Outcome::Pass;
                    let is_green = after.outcome == Outcome::Pass;
                    let turned = match (was_green, is_green) {
                        (true, false) => Some(NoticeKind::BranchBroken),
                        (false, true) => Some(NoticeKind::BranchFixed),
                        _ => None,
                    };
                    if let Some(kind) = turned {
                        out.push((SinkTakes::Events, Notice { kind, ..base }));
                    }
                }
                return out;
            }
            _ => return Vec::new(),
        };
        let Some(j) = self.state.job(job) else {
            return Vec::new();
        };
        vec![(
            SinkTakes::Statuses,
            Notice {
                kind: NoticeKind::Status,
                job,
                commit: j.commit,
                repository: self.state.repository(j).map(str::to_string),
                branch: self.state.branch(j).map(str::to_string),
                attempt: j.attempts,
                state,
                runner: match j.status {
                    JobStatus::Running { runner, .. } => Some(self.state.name(runner).to_string()),
                    _ => None,
                },
                message,
                tests: None,
                duration_ms: 0,
            },
        )]
    }

    /// Records `notice` as owed to every sink that takes it; a sink owed
    /// too much already loses its oldest.
    fn owe(&mut self, step: &mut Step, takes: SinkTakes, notice: Notice, now: Now) {
        let sinks: Vec<String> = self
            .config
            .sinks
            .iter()
            .filter(|s| s.takes == takes)
            .map(|s| s.key.clone())
            .collect();
        for sink in sinks {
            if self.state.owed(&sink) >= MAX_OWED_PER_SINK
                && let Some(n) = self
                    .state
                    .outbox()
                    .values()
                    .find(|d| d.sink == sink)
                    .map(|d| d.n)
            {
                let reason = DropReason::OutboxFull;
                self.emit(step, Event::NotificationDropped { n, reason }, now);
            }
            let n = self.state.next_notice();
            self.emit(
                step,
                Event::NotificationDue {
                    n,
                    sink,
                    notice: notice.clone(),
                },
                now,
            );
        }
    }

    /// Jobs the core considers held, for invariant checks.
    pub fn held_jobs(&self) -> Vec<(RunnerName, JobRef)> {
        self.state.holders().map(|(r, j)| (r.clone(), *j)).collect()
    }

    pub fn is_idle(&self, runner: &str) -> bool {
        self.idle.contains(runner)
    }

    pub fn job_of(&self, id: JobId) -> Option<&super::state::Job> {
        self.state.job(id)
    }
}
