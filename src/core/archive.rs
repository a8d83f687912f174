//! Finished jobs as they are kept outside memory.
//!
//! The state keeps in memory only what scheduling needs: unfinished jobs and
//! a bounded window of the most recently finished ones ([`State::window`]).
//! When a finished job falls out of the window the fold moves it out as an
//! [`ArchivedJob`] (every fact, names spelled out), and the owner of the
//! state writes it to the store's history indexes. That is a change of
//! where a job is kept, never of what the log says: the indexes are derived
//! from the log by the same fold and can be rebuilt from it at any time.
//!
//! [`State::window`]: super::State::window

use serde::{Deserialize, Serialize};

use super::event::{Outcome, TestCounts};
use super::ids::{CommitId, JobId};

/// A finished job, out of memory: what the history indexes hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedJob {
    pub id: JobId,
    pub commit: CommitId,
    pub branch: Option<String>,
    /// The named repository (`None`: the default one).
    pub repository: Option<String>,
    pub attempts: u32,
    pub lost: u32,
    pub seen_at_ms: u64,
    pub finished: ArchivedResult,
}

/// The final result of an archived job, as the state held it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedResult {
    /// `None` when the dispatcher itself gave up (or it was cancelled
    /// before it ran).
    pub runner: Option<String>,
    pub attempt: u32,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub tests: Option<TestCounts>,
    pub message: String,
    pub output_bytes: u64,
    pub at_ms: u64,
}

/// Which archived jobs a history page wants; every field narrows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// A branch (of `repository`).
    pub branch: Option<String>,
    /// `Some(None)` is the default repository; `None` is every one.
    pub repository: Option<Option<String>>,
    pub outcome: Option<Outcome>,
}

impl HistoryFilter {
    pub fn matches(&self, job: &ArchivedJob) -> bool {
        self.branch
            .as_deref()
            .is_none_or(|b| job.branch.as_deref() == Some(b))
            && self
                .repository
                .as_ref()
                .is_none_or(|r| job.repository.as_deref() == r.as_deref())
            && self.outcome.is_none_or(|o| job.finished.outcome == o)
    }
}
