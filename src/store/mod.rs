//! The event log, the output store and the snapshot store, behind three
//! small interfaces.
//!
//! The core never sees this module; the dispatcher shell appends a batch,
//! makes it durable with one `flush` (group commit), and only then lets
//! anything that depends on it leave the process. [`SledLog`] is the
//! embedded default; [`mem::MemStore`] keeps everything in memory and can
//! be told to fail, for the simulator and tests; a replicated backend
//! implements the same traits. Errors are [`StoreError`]s, which name no
//! backend's types: the shell decides on their kind, never their text.

pub mod format;
pub mod mem;
mod sled_history;
pub mod sled_log;

use std::path::PathBuf;

use crate::core::{
    ArchivedJob, CommitId, CommitInfo, HistoryFilter, JobId, JobRef, PrunedOutput, Record, State,
    StoredOutput,
};

pub use sled_log::SledLog;

/// What kind of input/output failure a backend met, so the shell and the
/// operator know what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoFailure {
    /// No space left on the device, or a quota reached.
    NoSpace,
    /// The process ran out of file descriptors.
    TooManyFiles,
    /// The file system is read-only, or permissions forbid writing.
    NotWritable,
    /// Anything else the operating system reported.
    Other,
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoFailure::NoSpace => "no space left on the device",
            IoFailure::TooManyFiles => "too many open files",
            IoFailure::NotWritable => "the file system is read-only or not writable",
            IoFailure::Other => "an input/output error",
        })
    }
}

impl IoFailure {
    pub fn of(e: &std::io::Error) -> IoFailure {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => IoFailure::NoSpace,
            Some(libc::EMFILE) | Some(libc::ENFILE) => IoFailure::TooManyFiles,
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => IoFailure::NotWritable,
            _ => IoFailure::Other,
        }
    }

    /// What the operator can do about it.
    pub fn advice(self) -> &'static str {
        match self {
            IoFailure::NoSpace => "free space on that file system, then start the dispatcher again",
            IoFailure::TooManyFiles => {
                "raise the open-file limit (ulimit -n, LimitNOFILE=) or lower the connection cap, then start the dispatcher again"
            }
            IoFailure::NotWritable => {
                "make the data directory writable by this user, then start the dispatcher again"
            }
            IoFailure::Other => {
                "check the disk and the system log, then start the dispatcher again"
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {} is in use by another dispatcher (its lock is held); stop that dispatcher, or use --dispatcher ADDR to read from it",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error("cannot open the data directory {}: {detail}", dir.display())]
    Open { dir: PathBuf, detail: String },
    /// Writing or syncing failed: the log cannot take more events.
    #[error(
        "cannot write the event log in {}: {detail}; nothing that was not yet durable was acknowledged; {}",
        dir.display(),
        failure.advice()
    )]
    Write {
        dir: PathBuf,
        failure: IoFailure,
        detail: String,
    },
    #[error("cannot read the event log in {}: {detail}", dir.display())]
    Read { dir: PathBuf, detail: String },
    /// The database files themselves are damaged.
    #[error(
        "the database in {} is damaged ({detail}); nothing was changed. Restore {} from a backup, or move it aside and start with an empty one (losing the history)",
        dir.display(),
        dir.display()
    )]
    Damaged { dir: PathBuf, detail: String },
    /// The data directory was deleted, moved or replaced under the
    /// dispatcher: what it writes would be lost.
    #[error(
        "the data directory {} was deleted, moved or replaced while the dispatcher ran; stopping so that nothing more is acknowledged into files nobody will find. Restore it (or point --data-dir at where it went) and start again",
        dir.display()
    )]
    Vanished { dir: PathBuf },
    #[error(
        "log record {seq} cannot be read: {detail}. The log is damaged or was written by a newer version; nothing was skipped. Restore the data directory from a backup or run the newer version"
    )]
    Corrupt { seq: u64, detail: String },
    #[error("snapshot at event {seq} cannot be read: {detail}")]
    BadSnapshot { seq: u64, detail: String },
    /// A batch did not follow on from the log's last record: a bug.
    #[error("records appended out of order: expected event {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    /// Copying a data directory for reading failed.
    #[error("cannot copy {} for reading: {detail}", dir.display())]
    Copy { dir: PathBuf, detail: String },
    #[error("the log flusher thread stopped")]
    FlusherStopped,
    #[error("{0}")]
    Apply(#[from] crate::core::state::ApplyError),
}

impl StoreError {
    /// Whether this failure means the log can take no more writes (the
    /// dispatcher must stop), as opposed to one read going wrong.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            StoreError::Read { .. } | StoreError::Corrupt { .. } | StoreError::BadSnapshot { .. }
        )
    }
}

/// An append-only, durable event log.
pub trait EventLog: Send {
    /// Appends records that follow on from the last one (their sequence
    /// numbers were given by the core). Not yet durable: call `flush`
    /// before anything depends on them.
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError>;
    /// Makes everything appended so far durable (one fsync for the batch),
    /// outputs included, after checking the storage is still where it was.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// A handle that does what `flush` does from another thread, while
    /// appends go on: the dispatcher decides and appends the next batch
    /// during the previous batch's fsync.
    fn flusher(&self) -> Result<Box<dyn Flusher>, StoreError>;
    /// Up to `limit` records from `from_seq` on, in order.
    fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<Record>, StoreError>;
    fn last_seq(&self) -> u64;
    /// The first `limit` records about `job` (`Event::job`), in order: its
    /// history for a timeline, without reading the whole log.
    fn job_events(&self, job: JobId, limit: usize) -> Result<Vec<Record>, StoreError>;
}

/// Makes durable everything appended to its log before the call.
pub trait Flusher: Send {
    fn flush(&self) -> Result<(), StoreError>;
}

/// What the output store holds, in total (retention's size limit is on
/// `bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputUsage {
    pub outputs: u64,
    pub bytes: u64,
}

/// What is kept beside the log, for people, so replay never reads it: the
/// (bounded) output of each attempt, and who wrote each commit and what
/// it says.
///
/// Outputs are also kept in age order (when their attempt finished), with
/// a running total, so retention reads the oldest few and the total
/// without a scan; and the outputs retention removed are indexed from the
/// `OutputsPruned` records (derived from the log, caught up with it), so
/// a reader can say "pruned, when and why" instead of "empty".
pub trait OutputStore: Send {
    /// Stores one attempt's output (`stored` says whose, when it finished
    /// and its size); durable with the log's next flush.
    fn put_output(&mut self, stored: &StoredOutput, output: &[u8]) -> Result<(), StoreError>;
    fn output(&self, job: JobRef) -> Result<Option<Vec<u8>>, StoreError>;
    /// The number and bytes of the outputs stored now.
    fn output_usage(&self) -> OutputUsage;
    /// Up to `limit` stored outputs in age order
    /// ([`StoredOutput::age_key`]), from the oldest (or the first after
    /// `after`).
    fn oldest_outputs(
        &self,
        after: Option<&StoredOutput>,
        limit: usize,
    ) -> Result<Vec<StoredOutput>, StoreError>;
    /// Deletes the outputs the durable `OutputsPruned` record `seq` names.
    /// Idempotent (one already gone is skipped, and counted once); only
    /// ever called after that record is durable.
    fn delete_outputs(&mut self, seq: u64, outputs: &[StoredOutput]) -> Result<(), StoreError>;
    /// Deletes what a crash left of pruned outputs: the outputs of every
    /// `OutputsPruned` record after the last deletion that finished. Run
    /// at start, before serving; returns how many outputs it deleted.
    fn finish_pruning(&mut self) -> Result<u64, StoreError>;
    /// Whether (and when and why) retention removed the attempt's output.
    fn pruned_output(&self, job: JobRef) -> Result<Option<PrunedOutput>, StoreError>;
    /// Up to `limit` pruned outputs, newest first, placed before `before`
    /// ([`PrunedOutput::place`]; all when `None`).
    fn pruned_page(
        &self,
        before: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<PrunedOutput>, StoreError>;
    /// Stores a commit's author, subject and time; durable with the next
    /// flush.
    fn put_info(&mut self, job: JobId, info: &CommitInfo) -> Result<(), StoreError>;
    fn info(&self, job: JobId) -> Result<Option<CommitInfo>, StoreError>;
}

/// Snapshots of the folded state, a cache of the log: any of them may be
/// missing or damaged, and the log alone still rebuilds everything.
pub trait SnapshotStore: Send {
    /// Stores a snapshot of the state folded up to `state.last_seq()`.
    fn save_snapshot(&mut self, state: &State) -> Result<(), StoreError>;
    /// The sequence numbers of the stored snapshots, newest first.
    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError>;
    /// The snapshot covering events up to `seq`; `Ok(None)` if it is in a
    /// layout this build does not read.
    fn load_snapshot(&self, seq: u64) -> Result<Option<State>, StoreError>;
}

/// The history indexes: finished jobs that left the state's memory
/// (`State::take_archived`), by number, by commit, by branch, by
/// repository and by outcome. Derived from the log by the fold, never a
/// second source of truth: written in the fold's order, durable with the
/// log's next flush, and rebuilt from the log when they are behind a
/// snapshot ([`load_state`]). A job written again replaces what was there
/// (a retried job leaves memory again with its new result).
pub trait HistoryStore: Send {
    /// Writes jobs that left memory, in the order they left; `through` is
    /// the state's `archived_count()` after them.
    fn archive(&self, jobs: &[ArchivedJob], through: u64) -> Result<(), StoreError>;
    /// The `through` of the last `archive` (0 for empty indexes): the
    /// indexes hold every job a state with that `archived_count()` moved
    /// out.
    fn archived_through(&self) -> Result<u64, StoreError>;
    fn archived_job(&self, job: JobId) -> Result<Option<ArchivedJob>, StoreError>;
    fn archived_commit(&self, commit: &CommitId) -> Result<Option<ArchivedJob>, StoreError>;
    /// Archived jobs numbered below `before` that `filter` takes, newest
    /// first: at most `limit` of them, reading at most `budget` index
    /// entries, so a filter that matches rarely still answers in bounded
    /// time.
    fn archived_page(
        &self,
        before: JobId,
        filter: &HistoryFilter,
        limit: usize,
        budget: usize,
    ) -> Result<HistoryPage, StoreError>;
    /// Up to `limit` archived commits whose hex id starts with `prefix`.
    fn archived_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<CommitId>, StoreError>;
}

/// What the dispatcher's shell reads: the log, outputs and the history.
pub trait Reads: EventLog + OutputStore + HistoryStore {}

impl<T: EventLog + OutputStore + HistoryStore + ?Sized> Reads for T {}

/// One page of [`HistoryStore::archived_page`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPage {
    pub jobs: Vec<ArchivedJob>,
    /// Where the page stopped: jobs numbered below this were not read (the
    /// next page starts there). `None`: nothing older matches.
    pub resume: Option<JobId>,
}

/// Everything a dispatcher keeps on disk: one backend behind its four
/// interfaces. Handed to `dispatcher::start`, which never opens storage
/// itself.
pub trait Store: EventLog + OutputStore + SnapshotStore + HistoryStore {
    /// Where it lives, for messages.
    fn describe(&self) -> String;

    /// Everything appended is flushed and the dispatcher stops: a chance
    /// to note how long the log is, so damage can be told from a short log
    /// on the next open.
    fn stopped_cleanly(&mut self) -> Result<(), StoreError> {
        self.flush()
    }
}

/// Whether a rebuild may start from a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuild {
    /// The newest usable snapshot, then the log's tail.
    FromSnapshot,
    /// Every record from the first (what `replay --verify` compares with).
    FromScratch,
}

/// The newest snapshot that loads, fits the log and whose moved-out jobs
/// the history indexes hold. A damaged one is skipped with a warning (the
/// next older, or none, is used instead): snapshots are a cache, never a
/// reason not to start.
pub fn newest_usable_snapshot<S: SnapshotStore + HistoryStore + ?Sized>(
    snapshots: &S,
    log_last_seq: u64,
) -> Result<Option<State>, StoreError> {
    let indexed = snapshots.archived_through()?;
    let seqs = match snapshots.snapshot_seqs() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the snapshots; rebuilding from the whole log");
            return Ok(None);
        }
    };
    for seq in seqs {
        match snapshots.load_snapshot(seq) {
            Ok(Some(state))
                if state.last_seq() <= log_last_seq && state.archived_count() <= indexed =>
            {
                return Ok(Some(state));
            }
            Ok(Some(state)) if state.last_seq() <= log_last_seq => tracing::warn!(
                seq,
                moved_out = state.archived_count(),
                indexed,
                "the history indexes are behind a snapshot; rebuilding them from the log"
            ),
            Ok(Some(state)) => tracing::warn!(
                seq,
                covers = state.last_seq(),
                log_ends = log_last_seq,
                "a snapshot covers more than the log holds; not using it"
            ),
            Ok(None) => {
                tracing::info!(seq, "a snapshot in an older layout; not using it")
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::warn!(seq, error = %e, "a damaged snapshot; trying an older one")
            }
        }
    }
    Ok(None)
}

/// Rebuilds the state: the newest usable snapshot (if asked), then the
/// tail. The history indexes are caught up on the way: jobs the fold
/// moves out that they do not hold yet are written to them (the same jobs,
/// in the same order, as when the records were first applied); what they
/// hold already is left alone, so a rebuild for checking writes nothing.
pub fn load_state<S: EventLog + SnapshotStore + HistoryStore + ?Sized>(
    store: &S,
    how: Rebuild,
) -> Result<State, StoreError> {
    let t = std::time::Instant::now();
    let mut state = match how {
        Rebuild::FromSnapshot => {
            newest_usable_snapshot(store, store.last_seq())?.unwrap_or_default()
        }
        Rebuild::FromScratch => State::default(),
    };
    let indexed = store.archived_through()?;
    let snapshot_seq = state.last_seq();
    let snapshot_ms = t.elapsed().as_millis() as u64;
    loop {
        let batch = store.read(state.last_seq() + 1, 8192)?;
        if batch.is_empty() {
            break;
        }
        for rec in &batch {
            match state.missing_job(rec) {
                // A log from before jobs left memory retries one that this
                // fold moved out: the job as the log had it then comes
                // back first.
                Some(job) => {
                    let archived =
                        job_as_of(store, job, rec.seq)?.ok_or_else(|| StoreError::Corrupt {
                            seq: rec.seq,
                            detail: format!("job {job} is retried but has no records"),
                        })?;
                    state.apply_record_restoring(rec, &archived)?;
                }
                None => state.apply_record(rec)?,
            }
            if state.has_archived() {
                catch_up_history(store, &mut state, indexed)?;
            }
        }
    }
    tracing::debug!(
        snapshot_seq,
        snapshot_ms,
        tail_events = state.last_seq() - snapshot_seq,
        tail_ms = t.elapsed().as_millis() as u64 - snapshot_ms,
        "state loaded"
    );
    Ok(state)
}

/// Writes the jobs the state moved out to the history indexes.
pub fn archive_taken<S: HistoryStore + ?Sized>(
    store: &S,
    state: &mut State,
) -> Result<(), StoreError> {
    if state.has_archived() {
        let jobs = state.take_archived();
        store.archive(&jobs, state.archived_count())?;
    }
    Ok(())
}

/// As [`archive_taken`], for the moves out past `indexed` only: the
/// indexes hold the first `indexed` already (and maybe newer copies of
/// those jobs, which must stay).
fn catch_up_history<S: HistoryStore + ?Sized>(
    store: &S,
    state: &mut State,
    indexed: u64,
) -> Result<(), StoreError> {
    let jobs = state.take_archived();
    let through = state.archived_count();
    let first = through - jobs.len() as u64 + 1;
    let skip = indexed.saturating_sub(first - 1).min(jobs.len() as u64) as usize;
    if skip < jobs.len() {
        store.archive(&jobs[skip..], through)?;
    }
    Ok(())
}

/// A job as its own records say it stood before record `before`: how a
/// log written before jobs left memory gets back a job this fold moved
/// out (the log is the source of truth; the indexes may hold a newer copy).
fn job_as_of<S: EventLog + ?Sized>(
    store: &S,
    job: JobId,
    before: u64,
) -> Result<Option<ArchivedJob>, StoreError> {
    use crate::core::{ArchivedResult, Event, LostReason, Outcome};
    let mut out: Option<ArchivedJob> = None;
    let mut running: Option<(String, u64)> = None;
    let records = store.job_events(job, usize::MAX)?;
    for r in records.iter().take_while(|r| r.seq < before) {
        let (commit, branch, repository) = match &r.event {
            Event::CommitSeen { commit, branch, .. } => (*commit, branch.clone(), None),
            Event::CommitSeenIn {
                commit,
                branch,
                repository,
                ..
            } => (*commit, branch.clone(), Some(repository.clone())),
            Event::JobRestored { job } => {
                out = Some((**job).clone());
                continue;
            }
            other => {
                let Some(a) = out.as_mut() else { continue };
                match other {
                    Event::JobAssigned {
                        runner, attempt, ..
                    } => {
                        a.attempts = *attempt;
                        running = Some((runner.clone(), r.at_ms));
                    }
                    Event::HeartbeatLost { reason, .. } => {
                        if *reason != LostReason::HandedBack {
                            a.lost += 1;
                        }
                        running = None;
                    }
                    Event::Result {
                        runner,
                        attempt,
                        report,
                        output_bytes,
                        ..
                    } => {
                        a.finished = ArchivedResult {
                            runner: runner.clone(),
                            attempt: *attempt,
                            outcome: report.outcome,
                            exit_code: report.exit_code,
                            duration_ms: report.duration_ms,
                            tests: report.tests,
                            message: report.message.clone(),
                            output_bytes: *output_bytes,
                            at_ms: r.at_ms,
                        };
                        running = None;
                    }
                    Event::JobCancelled { attempt, .. } => {
                        let (runner, ran_ms) = match running.take() {
                            Some((runner, since)) => (Some(runner), r.at_ms.saturating_sub(since)),
                            None => (None, 0),
                        };
                        a.finished = ArchivedResult {
                            runner,
                            attempt: *attempt,
                            outcome: Outcome::Cancelled,
                            exit_code: None,
                            duration_ms: ran_ms,
                            tests: None,
                            message: "cancelled".into(),
                            output_bytes: 0,
                            at_ms: r.at_ms,
                        };
                    }
                    Event::JobRetried { .. } => a.lost = 0,
                    _ => {}
                }
                continue;
            }
        };
        out = Some(ArchivedJob {
            id: job,
            commit,
            branch,
            repository,
            attempts: 0,
            lost: 0,
            seen_at_ms: r.at_ms,
            finished: ArchivedResult {
                runner: None,
                attempt: 0,
                outcome: Outcome::Error,
                exit_code: None,
                duration_ms: 0,
                tests: None,
                message: String::new(),
                output_bytes: 0,
                at_ms: r.at_ms,
            },
        });
    }
    Ok(out)
}
