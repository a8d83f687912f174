//! The events of the dispatcher's log: the only source of durable truth.
//!
//! **API boundary:** these types are a disk format. Changing a variant's
//! fields means a new `FORMAT_VERSION` and a decoder for the old one in
//! `store::format`; adding a variant at the end is compatible.

use serde::{Deserialize, Serialize};

use super::archive::ArchivedJob;
use super::ids::{CommitId, JobId, JobRef, RunnerName};
use super::retention::{PruneReason, StoredOutput};

/// How a job ended. `pending` and `running` exist only in views, never here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The test command exited 0.
    Pass,
    /// The test command exited non-zero.
    Fail,
    /// The test command ran past its time limit and was killed.
    Timeout,
    /// The tests could not be run (unknown commit, bad config, runners lost
    /// too often); see the message.
    Error,
    /// Somebody stopped it (`ci-tools cancel`, the dashboard's button).
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Every outcome, for parsing filters and for metrics.
    pub const ALL: [Outcome; 5] = [
        Outcome::Pass,
        Outcome::Fail,
        Outcome::Timeout,
        Outcome::Error,
        Outcome::Cancelled,
    ];

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Who wrote a commit and what it says, for people (tables, pages). Not
/// part of the state the dispatcher decides on: kept beside the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// `Name <email>` as git has it, at most [`CommitInfo::MAX_AUTHOR`] bytes.
    pub author: String,
    /// The first line of the message, at most [`CommitInfo::MAX_SUBJECT`] bytes.
    pub subject: String,
    /// The committer's time, milliseconds since the epoch.
    pub time_ms: u64,
}

impl CommitInfo {
    pub const MAX_AUTHOR: usize = 256;
    pub const MAX_SUBJECT: usize = 1024;
}

/// Test counts parsed from the test command's summary, when it has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TestCounts {
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub errors: u32,
    pub skipped: u32,
}

/// What a runner reports for one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    pub outcome: Outcome,
    /// `None` when the process was killed by a signal or never started.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub tests: Option<TestCounts>,
    /// One line for a person: why an `error`, or the summary line of the tests.
    pub message: String,
}

/// Why a runner's hold on a job was declared lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// Nothing heard for the heartbeat timeout.
    HeartbeatTimeout,
    /// The runner came back after a restart and said it had lost the job.
    RunnerRestarted,
    /// The runner stopped (SIGTERM) and handed the job back.
    HandedBack,
}

impl LostReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::HeartbeatTimeout => "heartbeat_timeout",
            LostReason::RunnerRestarted => "runner_restarted",
            LostReason::HandedBack => "handed_back",
        }
    }
}

/// One fact in the dispatcher's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The dispatcher process started; marks restarts in the history.
    DispatcherStarted { pid: u32 },
    /// A commit was accepted and queued as job `job`.
    CommitSeen {
        job: JobId,
        commit: CommitId,
        /// `None` for commits submitted without a branch.
        branch: Option<String>,
    },
    /// A branch's tip moved to a commit that was already known (force-push
    /// back, or the observer's first look at a branch whose tip was submitted).
    BranchMoved { branch: String, tip: CommitId },
    /// The job was handed to `runner` as attempt `attempt` (1-based).
    JobAssigned {
        job: JobId,
        commit: CommitId,
        runner: RunnerName,
        attempt: u32,
    },
    /// `runner` lost its hold on the job; the job is queued again at the front
    /// unless a `Result` follows for it.
    HeartbeatLost {
        runner: RunnerName,
        job: JobId,
        attempt: u32,
        reason: LostReason,
    },
    /// The job's final outcome. Exactly one per job.
    Result {
        job: JobId,
        commit: CommitId,
        /// `None` when the dispatcher itself gave up (attempts exhausted).
        runner: Option<RunnerName>,
        attempt: u32,
        report: JobReport,
        /// Bytes of output stored under (job, attempt) in the output store.
        output_bytes: u64,
    },
    /// The dispatcher could not run or make progress for `gap_ms`
    /// (SIGSTOP, a frozen VM, swapping, a disk that blocked its writes);
    /// every runner got a full heartbeat timeout from then, as after a
    /// restart.
    DispatcherPaused { gap_ms: u64 },
    /// Somebody cancelled the job: its outcome is `cancelled`. `attempt`
    /// is the attempt it was at (0 if it never ran); a runner running it
    /// is told to stop.
    JobCancelled {
        job: JobId,
        commit: CommitId,
        attempt: u32,
    },
    /// Somebody asked for the finished job to run again: it is queued at
    /// the back, its next hand-out is attempt `attempt + 1`, and its count
    /// of lost runners starts over.
    JobRetried {
        job: JobId,
        commit: CommitId,
        attempt: u32,
    },
    /// A notification (a commit status, a result, a branch turning) is
    /// owed to `sink`: number `n`, sent until `NotificationDelivered`
    /// (or `NotificationDropped`) follows. The outbox of `notify/`.
    NotificationDue {
        n: u64,
        sink: String,
        notice: Notice,
    },
    /// The sink took notification `n` (it answered 2xx, or the command
    /// exited 0). A crash before this is written sends it again, with the
    /// same idempotency key and body.
    NotificationDelivered { n: u64 },
    /// Notification `n` will not be sent: why.
    NotificationDropped { n: u64, reason: DropReason },
    /// As `CommitSeen`, for a commit of the named repository `repository`
    /// (`--repository NAME=URL`). Commits of the default (unnamed)
    /// repository are still `CommitSeen`, so a log with one repository is
    /// byte for byte what it was before names existed.
    CommitSeenIn {
        job: JobId,
        commit: CommitId,
        branch: Option<String>,
        repository: String,
    },
    /// As `BranchMoved`, for a branch of the named repository.
    BranchMovedIn {
        repository: String,
        branch: String,
        tip: CommitId,
    },
    /// A finished job that had left memory (it is kept in the history
    /// indexes) is brought back, as it was, because the next event
    /// (a `JobRetried`) changes it. The log carries the job's facts so that
    /// the fold needs nothing but the log.
    JobRestored { job: Box<ArchivedJob> },
    /// From here on, `jobs` finished jobs are kept in memory (the
    /// dispatcher was started with another `--keep-in-memory`): on record,
    /// so every replay moves the same jobs out at the same point.
    MemoryWindow { jobs: u32 },
    /// Retention (`--keep-outputs-for`, `--keep-outputs-bytes`) removes
    /// these stored outputs, for `reason`. Durable before any of them is
    /// deleted: a crash in between leaves this on record, and the next
    /// start finishes the deletion. The jobs and their results stay; only
    /// the outputs go. At most `retention::PRUNE_PAGE` outputs.
    OutputsPruned {
        reason: PruneReason,
        outputs: Vec<StoredOutput>,
    },
}

/// What a notification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A job's result was recorded (sinks of events).
    Result,
    /// The branch's newest finished commit failed; the one before passed.
    BranchBroken,
    /// The branch's newest finished commit passed; the one before did not.
    BranchFixed,
    /// The commit's status changed (sinks of commit statuses).
    Status,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Result => "result",
            NoticeKind::BranchBroken => "branch_broken",
            NoticeKind::BranchFixed => "branch_fixed",
            NoticeKind::Status => "status",
        }
    }
}

/// Where the job stood when the notice was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NoticeState {
    Queued,
    Running,
    Finished(Outcome),
}

impl NoticeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Queued => "pending",
            NoticeState::Running => "running",
            NoticeState::Finished(o) => o.as_str(),
        }
    }
}

/// One notification's content: everything its body is made of, so a
/// repeat after a restart says exactly what the first delivery said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub job: JobId,
    pub commit: CommitId,
    /// The repository's name; `None` for a dispatcher's only (unnamed) one.
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub attempt: u32,
    pub state: NoticeState,
    pub runner: Option<RunnerName>,
    /// One line for a person (the result's message, "running on ...").
    pub message: String,
    pub tests: Option<TestCounts>,
    pub duration_ms: u64,
}

/// Why a notification was given up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The dispatcher was restarted without the sink it was owed to.
    SinkRemoved,
    /// The sink refused it for good (an HTTP 4xx other than 408 and 429):
    /// sending it again cannot help. The status and a line of the answer.
    Refused { status: u16, message: String },
    /// The sink's outbox was full: the oldest undelivered one goes.
    OutboxFull,
}

impl DropReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::SinkRemoved => "sink_removed",
            DropReason::Refused { .. } => "refused",
            DropReason::OutboxFull => "outbox_full",
        }
    }
}

impl Event {
    /// The job this event is about, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::CommitSeen { job, .. } | Event::CommitSeenIn { job, .. } => Some(*job),
            Event::NotificationDue { notice, .. } => Some(notice.job),
            Event::JobRestored { job } => Some(job.id),
            other => other.job_ref().map(|j| j.job),
        }
    }

    /// The `type` tag used in JSON and tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DispatcherStarted { .. } => "dispatcher_started",
            Event::CommitSeen { .. } => "commit_seen",
            Event::BranchMoved { .. } => "branch_moved",
            Event::JobAssigned { .. } => "job_assigned",
            Event::HeartbeatLost { .. } => "heartbeat_lost",
            Event::Result { .. } => "result",
            Event::DispatcherPaused { .. } => "dispatcher_paused",
            Event::JobCancelled { .. } => "job_cancelled",
            Event::JobRetried { .. } => "job_retried",
            Event::NotificationDue { .. } => "notification_due",
            Event::NotificationDelivered { .. } => "notification_delivered",
            Event::NotificationDropped { .. } => "notification_dropped",
            // The same facts as their unnamed forms, with a `repository`
            // field: readers of `replay --json` filter on one type.
            Event::CommitSeenIn { .. } => "commit_seen",
            Event::BranchMovedIn { .. } => "branch_moved",
            Event::JobRestored { .. } => "job_restored",
            Event::MemoryWindow { .. } => "memory_window",
            Event::OutputsPruned { .. } => "outputs_pruned",
        }
    }

    /// The named repository a commit or branch event is about (`None`:
    /// the default repository, or an event about no commit).
    pub fn repository(&self) -> Option<&str> {
        match self {
            Event::CommitSeenIn { repository, .. } | Event::BranchMovedIn { repository, .. } => {
                Some(repository)
            }
            _ => None,
        }
    }

    pub fn job_ref(&self) -> Option<JobRef> {
        match self {
            Event::JobAssigned { job, attempt, .. }
            | Event::HeartbeatLost { job, attempt, .. }
            | Event::Result { job, attempt, .. }
            | Event::JobCancelled { job, attempt, .. }
            | Event::JobRetried { job, attempt, .. } => Some(JobRef {
                job: *job,
                attempt: *attempt,
            }),
            _ => None,
        }
    }
}

/// An event as stored: its place in the log and when it was appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub event: Event,
}

impl Record {
    /// `events` as consecutive records from `first_seq`, all stamped
    /// `at_ms` (for tools and tests that write logs directly).
    pub fn run(first_seq: u64, at_ms: u64, events: &[Event]) -> Vec<Record> {
        events
            .iter()
            .zip(first_seq..)
            .map(|(event, seq)| Record {
                seq,
                at_ms,
                event: event.clone(),
            })
            .collect()
    }
}
