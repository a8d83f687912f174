//! The wire protocol between the dispatcher and its clients.
//!
//! **API boundary:** TCP, each frame a big-endian u32 length followed by a
//! bincode payload (`encoding`). The server speaks first with a
//! [`Greeting`]; the client's first frame is a [`ClientMsg::Hello`] carrying
//! the protocol version and its role. One message enum per direction.
//! Adding a variant at the end is compatible; anything else bumps
//! [`PROTOCOL_VERSION`].

pub mod conn;
pub mod views;

use serde::{Deserialize, Serialize};

use crate::core::{CommitId, JobId, JobRef, JobReport, Record};
pub use views::{ResultView, RunnerView, RunningView, StatusView};

pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame either side accepts; checked before allocating.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Largest test output a runner sends (the tail is kept).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Most events one `Replay` answer carries.
pub const REPLAY_PAGE: usize = 10_000;

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
    /// Runners: the job still running from before a reconnection.
    pub holding: Option<JobRef>,
    /// Runners: the job that was running when this runner last died.
    pub crashed: Option<JobRef>,
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
    },
    HandBack {
        job: JobRef,
    },
    // Observers and tools.
    Commits {
        branch: Option<String>,
        commits: Vec<CommitId>,
        tip: Option<CommitId>,
    },
    GetTips,
    // Tools.
    Status,
    Results {
        commit: Option<CommitId>,
    },
    Replay {
        from_seq: u64,
        limit: u32,
    },
    Output {
        job: JobId,
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
            ClientMsg::GetTips => "get_tips",
            ClientMsg::Status => "status",
            ClientMsg::Results { .. } => "results",
            ClientMsg::Replay { .. } => "replay",
            ClientMsg::Output { .. } => "output",
        }
    }
}

/// Dispatcher to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    Greeting(Greeting),
    /// The hello was accepted. Runners: `keep` is the job they may go on running.
    Welcome {
        keep: Option<JobRef>,
    },
    /// A refusal; the connection closes after it when `fatal`.
    Error {
        message: String,
        fatal: bool,
    },
    Assign {
        job: JobRef,
        commit: CommitId,
        branch: Option<String>,
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
    Tips(Vec<(String, CommitId)>),
    Status(StatusView),
    Results(Vec<ResultView>),
    Events {
        records: Vec<Record>,
        last_seq: u64,
    },
    Output(Option<Vec<u8>>),
}
