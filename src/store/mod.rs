//! The event log and the output store behind a small interface.
//!
//! The core never sees this module; the dispatcher shell appends a batch,
//! makes it durable with one `flush` (group commit), and only then lets
//! anything that depends on it leave the process. `SledLog` is the embedded
//! default; a replicated backend implements the same [`EventLog`] trait.

pub mod format;
pub mod sled_log;

use std::path::PathBuf;

use crate::core::{Event, JobRef, Record, State};

pub use sled_log::SledLog;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {dir} is in use by another dispatcher (its lock is held); stop that dispatcher, or use --dispatcher ADDR to read from it"
    )]
    Locked { dir: PathBuf },
    #[error("cannot open the data directory {dir}: {detail}")]
    Open { dir: PathBuf, detail: String },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "log record {seq} cannot be read: {detail}. The log is damaged or was written by a newer version; nothing was skipped. Restore the data directory from a backup or run the newer version"
    )]
    Corrupt { seq: u64, detail: String },
    #[error("snapshot at event {seq} cannot be read: {detail}")]
    BadSnapshot { seq: u64, detail: String },
    #[error("the log flusher thread panicked")]
    FlusherPanicked,
    #[error("{0}")]
    Apply(#[from] crate::core::state::ApplyError),
}

/// An append-only, durable event log plus the per-attempt output store.
pub trait EventLog: Send {
    /// Appends events after the last one, stamped `at_ms`. Not yet durable:
    /// call `flush` before anything depends on them.
    fn append(&mut self, at_ms: u64, events: &[Event]) -> Result<u64, StoreError>;
    /// Makes everything appended so far durable (one fsync for the batch).
    fn flush(&mut self) -> Result<(), StoreError>;
    /// A handle that does what `flush` does from another thread, while
    /// appends go on: the dispatcher decides and appends the next batch
    /// during the previous batch's fsync.
    fn flusher(&self) -> Result<Box<dyn Flusher>, StoreError>;
    /// Up to `limit` records from `from_seq` on, in order.
    fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<Record>, StoreError>;
    fn last_seq(&self) -> u64;
    /// Stores the (bounded) output of one attempt; durable with the next flush.
    fn put_output(&mut self, job: JobRef, output: &[u8]) -> Result<(), StoreError>;
    fn output(&self, job: JobRef) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a snapshot of the state folded up to `state.last_seq`.
    fn save_snapshot(&mut self, state: &State) -> Result<(), StoreError>;
    fn latest_snapshot(&self) -> Result<Option<State>, StoreError>;
}

/// Makes durable everything appended to its log before the call.
pub trait Flusher: Send {
    fn flush(&self) -> Result<(), StoreError>;
}

/// Rebuilds the state: newest snapshot (if `use_snapshot`), then the tail.
pub fn load_state(log: &dyn EventLog, use_snapshot: bool) -> Result<State, StoreError> {
    let t = std::time::Instant::now();
    let mut state = if use_snapshot {
        log.latest_snapshot()?.unwrap_or_default()
    } else {
        State::default()
    };
    let snapshot_seq = state.last_seq;
    let snapshot_ms = t.elapsed().as_millis() as u64;
    loop {
        let batch = log.read(state.last_seq + 1, 8192)?;
        if batch.is_empty() {
            break;
        }
        for rec in &batch {
            state.apply_record(rec)?;
        }
    }
    tracing::debug!(
        snapshot_seq,
        snapshot_ms,
        tail_events = state.last_seq - snapshot_seq,
        tail_ms = t.elapsed().as_millis() as u64 - snapshot_ms,
        "state loaded"
    );
    Ok(state)
}
