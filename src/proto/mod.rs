//! The wire protocol between the dispatcher and its clients.
//!
//! **API boundary:** TCP, each frame a big-endian u32 length followed by a
//! bincode payload (`encoding`). The server speaks first with a
//! [`Greeting`]; the client's first frame is a [`ClientMsg::Hello`] carrying
//! the protocol version and its role. One message enum per direction.
//! Adding a variant at the end is compatible; anything else bumps
//! [`PROTOCOL_VERSION`].

pub mod auth;
pub mod conn;
pub mod views;

use serde::{Deserialize, Serialize};

pub use crate::core::Serves;
use crate::core::{
    CommitId, CommitInfo, DropReason, Due, JobId, JobRef, JobReport, LeftJob, Record,
};
pub use views::{
    MetricsView, RepositoryQueueView, ResultView, RunnerView, RunningView, StatusView,
};

/// 2: typed refusals (`ErrorCode`), `Hello::left`, paged results and tips.
/// 3: live output, cancel and retry, subscriptions, short ids, commit
/// information, result filters.
/// 4: several repositories: `Commits`, `GetTips` and `Results` name one,
/// `Hello::serves`, `Assign` carries the repository and its URL.
/// 5: `Welcome::idle_heartbeat_ms`, the pace of an idle runner's
/// heartbeats, set by the dispatcher.
pub const PROTOCOL_VERSION: u16 = 5;

/// Most repositories a runner's hello may name ([`Serves::Only`]).
pub const MAX_SERVED: usize = 256;

/// Largest frame either side accepts; checked before allocating.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Largest test output a runner sends (the tail is kept).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Largest piece of live output in one frame.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// Most commits one `Watch` may name.
pub const MAX_WATCHED: usize = 1000;

/// Shortest commit id prefix accepted wherever a full id is not required.
pub const MIN_PREFIX_HEX: usize = 7;

/// Most records a [`ServerMsg::History`] carries (a job retried and lost
/// hundreds of times shows its first ones, and says there are more).
pub const MAX_HISTORY_EVENTS: usize = 1000;

/// Most events one `Replay` answer carries.
pub const REPLAY_PAGE: usize = 10_000;

/// Most bytes of records, results or tips one answer carries: every answer
/// fits in a frame, whatever the history holds.
pub const PAGE_BYTES: usize = MAX_FRAME_BYTES / 2;

/// Longest name in a hello (runner names are validated further).
pub const MAX_NAME_BYTES: usize = 64;

/// Longest one-line message carried anywhere (a result's message, a
/// refusal, a reason); longer ones are cut at a character boundary.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Why the dispatcher refused something. Clients decide from the code,
/// never from the message text: [`ErrorCode::is_permanent`] says whether
/// trying again can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request or hello is malformed or names something invalid.
    Invalid,
    /// This role may not do that (a read-only tool submitting...).
    NotPermitted,
    /// Missing or wrong token, or the role is not accepted here.
    Unauthorized,
    /// The two sides speak different protocol versions.
    Version,
    /// A newer connection with this runner's name took over.
    Superseded,
    /// The dispatcher is stopping (a signal, or its storage failed).
    ShuttingDown,
    /// Too many connections (from this address); try again later.
    Busy,
    /// The peer said nothing (a hello) in time.
    Timeout,
    /// Something the dispatcher needs is missing right now (randomness...).
    Unavailable,
    /// The peer was too slow to read what it was sent.
    TooSlow,
    /// The request names something the dispatcher does not have (a commit
    /// never seen, a prefix nothing starts with).
    NotFound,
    /// The request does not fit the state (cancel a finished job, retry
    /// one still running).
    Conflict,
    /// A short commit id that more than one commit starts with.
    Ambiguous,
}

impl ErrorCode {
    /// Whether retrying cannot cure it: the client stops and says so.
    pub fn is_permanent(self) -> bool {
        match self {
            ErrorCode::Invalid
            | ErrorCode::NotPermitted
            | ErrorCode::Unauthorized
            | ErrorCode::Version
            | ErrorCode::Superseded
            | ErrorCode::NotFound
            | ErrorCode::Conflict
            | ErrorCode::Ambiguous => true,
            ErrorCode::ShuttingDown
            | ErrorCode::Busy
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::TooSlow => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Version => "version",
            ErrorCode::Superseded => "superseded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooSlow => "too_slow",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Ambiguous => "ambiguous",
        }
    }
}

/// What a client is; decides which messages it may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Runner,
    Observer,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Runner => "runner",
            Role::Observer => "observer",
            Role::Tool => "tool",
        }
    }
}

/// The server's first frame: its version, and a nonce the client's proof of
/// the token is computed over (so a captured hello cannot be replayed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    pub version: u16,
    pub nonce: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    /// Runner name; for other roles a free-form label for logs.
    pub name: String,
    /// Proof of the role's token (see `auth`), if the client has one.
    pub proof: Option<Vec<u8>>,
    /// Runners: the job still running (or whose result is not yet
    /// acknowledged) from before a reconnection.
    pub holding: Option<JobRef>,
    /// Runners: a job let go of while away (died running it, or stopped
    /// and handed it back).
    pub left: Option<LeftJob>,
    /// Runners: the repositories it takes jobs of (others: `Default`).
    pub serves: Serves,
}

/// Client to dispatcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    Hello(Hello),
    // Runners.
    Heartbeat {
        holding: Option<JobRef>,
    },
    Ready,
    Result {
        job: JobRef,
        report: JobReport,
        output: Vec<u8>,
        /// Who wrote the commit and what it says, read from the checkout.
        info: Option<CommitInfo>,
    },
    HandBack {
        job: JobRef,
    },
    /// Output of the running attempt as it is produced: the bytes from
    /// `offset` of the attempt's whole stream (at most
    /// [`MAX_CHUNK_BYTES`]). After a reconnection the dispatcher says where
    /// to go on from ([`ServerMsg::OutputFrom`]).
    OutputChunk {
        job: JobRef,
        offset: u64,
        data: Vec<u8>,
    },
    // Observers and tools.
    Commits {
        /// The named repository they are commits of (`None`: the default
        /// one); one the dispatcher lacks is refused with `NotFound`.
        repository: Option<String>,
        branch: Option<String>,
        commits: Vec<CommitId>,
        tip: Option<CommitId>,
        /// For each commit (same order), when the reporter knows it;
        /// empty otherwise.
        infos: Vec<CommitInfo>,
    },
    /// The repository's branch tips, by name, from after `after` on.
    GetTips {
        repository: Option<String>,
        after: Option<String>,
    },
    // Tools.
    Status,
    /// One commit's result, or a page of results, newest first, of jobs
    /// before job `before` (all when `None`), at most `limit`, of one
    /// branch and outcome when given (`pending`, `running` or an outcome).
    Results {
        commit: Option<CommitId>,
        before: Option<u64>,
        limit: u32,
        branch: Option<String>,
        outcome: Option<String>,
        /// Only the named repository's (`None`: every repository's).
        repository: Option<String>,
    },
    Replay {
        from_seq: u64,
        limit: u32,
    },
    Output {
        job: JobId,
    },
    // Tools with write access.
    /// Stop the commit's queued or running job: outcome `cancelled`.
    Cancel {
        commit: CommitId,
    },
    /// Queue the commit's finished job again.
    Retry {
        commit: CommitId,
    },
    // Tools.
    /// The one commit whose id starts with `prefix` (hex, at least
    /// [`MIN_PREFIX_HEX`] digits).
    Resolve {
        prefix: String,
    },
    /// Stream the output of the commit's current attempt: what there is,
    /// then chunks as they come, then [`ServerMsg::Ended`] with the final
    /// result.
    Follow {
        commit: CommitId,
    },
    /// Send the current view of each commit, then an update whenever one
    /// changes, for as long as the connection lasts.
    Watch {
        commits: Vec<CommitId>,
    },
    /// The records about the commit's job, oldest first (at most
    /// [`MAX_HISTORY_EVENTS`]): its timeline.
    History {
        commit: CommitId,
    },
    /// The counts `/metrics` shows.
    Metrics,
    // The dispatcher's own notifier (an in-process connection only).
    /// Notification `n` was delivered (`dropped` is `None`) or given up.
    Notified {
        n: u64,
        dropped: Option<DropReason>,
    },
}

impl ClientMsg {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello(_) => "hello",
            ClientMsg::Heartbeat { .. } => "heartbeat",
            ClientMsg::Ready => "ready",
            ClientMsg::Result { .. } => "result",
            ClientMsg::HandBack { .. } => "hand_back",
            ClientMsg::Commits { .. } => "commits",
            ClientMsg::GetTips { .. } => "get_tips",
            ClientMsg::Status => "status",
            ClientMsg::Results { .. } => "results",
            ClientMsg::Replay { .. } => "replay",
            ClientMsg::Output { .. } => "output",
            ClientMsg::OutputChunk { .. } => "output_chunk",
            ClientMsg::Cancel { .. } => "cancel",
            ClientMsg::Retry { .. } => "retry",
            ClientMsg::Resolve { .. } => "resolve",
            ClientMsg::Follow { .. } => "follow",
            ClientMsg::Watch { .. } => "watch",
            ClientMsg::History { .. } => "history",
            ClientMsg::Metrics => "metrics",
            ClientMsg::Notified { .. } => "notified",
        }
    }
}

/// Dispatcher to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    Greeting(Greeting),
    /// The hello was accepted. Runners: `keep` is the job they may go on
    /// running, and `idle_heartbeat_ms` how often to beat while holding
    /// no job (the dispatcher sets it, as Buildkite's agent registration
    /// does, so a large idle fleet costs what the dispatcher can afford).
    Welcome {
        keep: Option<JobRef>,
        idle_heartbeat_ms: u64,
    },
    /// A refusal; the connection closes after it when `fatal`.
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
    Assign {
        job: JobRef,
        commit: CommitId,
        branch: Option<String>,
        /// The job's named repository (`None`: the default one).
        repository: Option<String>,
        /// Where the dispatcher clones the named repository from
        /// (`--repository NAME=URL`): for runners that serve any.
        url: Option<String>,
    },
    Abandon {
        job: JobRef,
        reason: String,
    },
    ResultAck {
        job: JobRef,
        accepted: bool,
        reason: String,
    },
    CommitsAck {
        accepted: Vec<CommitId>,
        duplicates: u32,
    },
    /// Tips by branch name; `next` is the `after` for the next page.
    Tips {
        tips: Vec<(String, CommitId)>,
        next: Option<String>,
    },
    Status(StatusView),
    /// Newest first; `next` is the `before` for the next page.
    Results {
        results: Vec<ResultView>,
        next: Option<u64>,
    },
    Events {
        records: Vec<Record>,
        last_seq: u64,
    },
    Output(Option<Vec<u8>>),
    /// To a runner after a reconnection: stream the kept job's output on
    /// from `offset` (what the dispatcher already has).
    OutputFrom {
        job: JobRef,
        offset: u64,
    },
    /// A cancel or a retry was recorded.
    ActionDone {
        commit: CommitId,
        message: String,
    },
    Resolved {
        commit: CommitId,
    },
    /// Live output for a follower: bytes from `offset` of the attempt's
    /// stream (a jump in `offset` means bytes were dropped in between).
    OutputChunk {
        job: JobRef,
        offset: u64,
        data: Vec<u8>,
    },
    /// The followed commit's job ended (or had already): its view.
    Ended(Box<ResultView>),
    /// A watched commit's view, now.
    Update(Box<ResultView>),
    /// A watched commit the dispatcher has not seen (yet).
    Unseen {
        commit: CommitId,
    },
    /// The commit's job's records, oldest first; `more` when there were
    /// more than [`MAX_HISTORY_EVENTS`].
    History {
        commit: CommitId,
        records: Vec<Record>,
        more: bool,
    },
    Metrics(MetricsView),
    /// To the notifier: notifications owed (all of them when it connects,
    /// then each batch's new ones once they are durable), oldest first.
    Owed {
        dues: Vec<Due>,
    },
}

impl ServerMsg {
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Greeting(_) => "greeting",
            ServerMsg::Welcome { .. } => "welcome",
            ServerMsg::Error { .. } => "error",
            ServerMsg::Assign { .. } => "assign",
            ServerMsg::Abandon { .. } => "abandon",
            ServerMsg::ResultAck { .. } => "result_ack",
            ServerMsg::CommitsAck { .. } => "commits_ack",
            ServerMsg::Tips { .. } => "tips",
            ServerMsg::Status(_) => "status",
            ServerMsg::Results { .. } => "results",
            ServerMsg::Events { .. } => "events",
            ServerMsg::Output(_) => "output",
            ServerMsg::OutputFrom { .. } => "output_from",
            ServerMsg::ActionDone { .. } => "action_done",
            ServerMsg::Resolved { .. } => "resolved",
            ServerMsg::OutputChunk { .. } => "output_chunk",
            ServerMsg::Ended(_) => "ended",
            ServerMsg::Update(_) => "update",
            ServerMsg::Unseen { .. } => "unseen",
            ServerMsg::History { .. } => "history",
            ServerMsg::Metrics(_) => "metrics",
            ServerMsg::Owed { .. } => "owed",
        }
    }

    /// A refusal with its code; the message is cut to [`MAX_MESSAGE_BYTES`].
    pub fn error(code: ErrorCode, message: impl Into<String>, fatal: bool) -> ServerMsg {
        ServerMsg::Error {
            code,
            message: bounded(message.into(), MAX_MESSAGE_BYTES),
            fatal,
        }
    }
}
