//! The dispatcher's pure core: events, the state folded from them, and the
//! decisions that turn inputs into new events.
//!
//! **Architecture invariant:** nothing in here does IO, spawns, reads a clock
//! or knows of tokio or sled. Time comes in as [`Now`] with each input.

pub mod archive;
pub mod event;
pub mod ids;

pub use archive::{ArchivedJob, ArchivedResult, HistoryFilter};
pub use event::{
    CommitInfo, DropReason, Event, JobReport, LostReason, Notice, NoticeKind, NoticeState, Outcome,
    Record, TestCounts,
};
pub use ids::{CommitId, JobId, JobRef, RunnerName};
pub mod decide;
pub mod state;

pub use decide::{
    Core, CoreConfig, DEFAULT_IDLE_HEARTBEAT_MS, Input, LeftHow, LeftJob, Link, MAX_OWED_PER_SINK,
    Now, Refusal, Reply, RunnerState, Serves, Session, SinkSpec, SinkTakes, Standing, Step,
    ToRunner,
};
pub use state::{BranchMark, Due, Finished, Job, JobStatus, State, Sym};
