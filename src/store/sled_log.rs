//! The embedded default log on sled: one tree of events, one of outputs, one
//! of snapshots, in one database under the data directory.

use std::path::{Path, PathBuf};

use crate::core::{Event, JobRef, Record, State};

use super::format;
use super::{EventLog, Flusher, StoreError};

/// sled's page cache, in bytes.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

pub struct SledLog {
    db: sled::Db,
    /// sled's own flush ends in `sync_file_range`, which survives a process
    /// crash but not a power cut (it neither commits the file's metadata nor
    /// flushes the device cache). An `fdatasync` on the same file after it
    /// does, so an acknowledged event survives both.
    data_file: Option<std::fs::File>,
    events: sled::Tree,
    outputs: sled::Tree,
    snapshots: sled::Tree,
    last_seq: u64,
    dir: PathBuf,
}

impl SledLog {
    /// Opens (or creates) the log; fails with `Locked` if another process
    /// holds it.
    pub fn open(dir: &Path) -> Result<SledLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .mode(sled::Mode::HighThroughput)
            // sled's default page cache is 1 GiB; the dispatcher reads the
            // log once at start and then only appends, so a small cache
            // keeps its resident memory to the state it needs.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| classify_open_error(dir, e))?;
        let events = db.open_tree("events")?;
        let outputs = db.open_tree("outputs")?;
        let snapshots = db.open_tree("snapshots")?;
        let data_path = dir.join("db").join("db");
        let data_file = Some(
            std::fs::File::open(&data_path).map_err(|e| StoreError::Open {
                dir: data_path.clone(),
                detail: format!("cannot open sled's data file to sync it: {e}"),
            })?,
        );
        let last_seq = match events.last()? {
            Some((k, v)) => {
                let first = format::seq_of(&k).ok_or_else(|| StoreError::Corrupt {
                    seq: 0,
                    detail: "a key in the events tree is not 8 bytes".into(),
                })?;
                // The last key holds the last batch; it ends the log.
                match format::decode_value(first, &v) {
                    Ok(recs) => recs.last().map_or(first, |r| r.seq),
                    // Reported with its sequence number when read.
                    Err(_) => first,
                }
            }
            None => 0,
        };
        Ok(SledLog {
            db,
            data_file,
            events,
            outputs,
            snapshots,
            last_seq,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a raw value at `seq`, for tests of damaged and old records.
    #[doc(hidden)]
    pub fn put_raw(&mut self, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        self.events.insert(format::key(seq), value)?;
        self.last_seq = self.last_seq.max(seq);
        Ok(())
    }

    /// Disk space used, for benchmarks.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn classify_open_error(dir: &Path, e: sled::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("lock")
        || text.contains("WouldBlock")
        || text.contains("temporarily unavailable")
    {
        StoreError::Locked {
            dir: dir.to_path_buf(),
        }
    } else {
        StoreError::Open {
            dir: dir.to_path_buf(),
            detail: text,
        }
    }
}

fn output_key(job: JobRef) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&job.job.0.to_be_bytes());
    k[8..].copy_from_slice(&job.attempt.to_be_bytes());
    k
}

/// sled's flush, then the `fdatasync` that makes it survive a power cut
/// (see `SledLog::data_file`).
fn flush_db(db: &sled::Db, data_file: Option<&std::fs::File>) -> Result<(), StoreError> {
    db.flush()?;
    if let Some(f) = data_file {
        f.sync_data()
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
    }
    Ok(())
}

/// [`SledLog::flush`] from another thread: sled's handles are shared, and
/// its flush covers every write made before it began.
struct SledFlusher {
    db: sled::Db,
    data_file: Option<std::fs::File>,
}

impl Flusher for SledFlusher {
    fn flush(&self) -> Result<(), StoreError> {
        flush_db(&self.db, self.data_file.as_ref())
    }
}

impl EventLog for SledLog {
    fn append(&mut self, at_ms: u64, events: &[Event]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(self.last_seq);
        }
        // One key per chunk of the batch (format 2), applied atomically.
        let mut batch = sled::Batch::default();
        let mut seq = self.last_seq;
        for chunk in events.chunks(format::MAX_BATCH_EVENTS) {
            let first = seq + 1;
            let value = format::encode_batch(at_ms, chunk).map_err(|e| StoreError::Corrupt {
                seq: first,
                detail: e.to_string(),
            })?;
            batch.insert(&format::key(first), value);
            seq += chunk.len() as u64;
        }
        self.events.apply_batch(batch)?;
        self.last_seq = seq;
        Ok(seq)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        flush_db(&self.db, self.data_file.as_ref())
    }

    fn flusher(&self) -> Result<Box<dyn Flusher>, StoreError> {
        let data_file = match &self.data_file {
            Some(f) => Some(
                f.try_clone()
                    .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?,
            ),
            None => None,
        };
        Ok(Box::new(SledFlusher {
            db: self.db.clone(),
            data_file,
        }))
    }

    fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let from = from_seq.max(1);
        let mut out = Vec::with_capacity(limit.min(8192));
        if limit == 0 {
            return Ok(out);
        }
        // The key holding `from` is the last one at or before it (a batch
        // keyed by its first event).
        let start = match self.events.range(..=format::key(from)).next_back() {
            Some(item) => item?.0,
            None => sled::IVec::from(&format::key(from)),
        };
        for item in self.events.range(start..) {
            let (k, v) = item?;
            let seq = format::seq_of(&k).ok_or_else(|| StoreError::Corrupt {
                seq: 0,
                detail: "a key in the events tree is not 8 bytes".into(),
            })?;
            let recs = format::decode_value(seq, &v)
                .map_err(|detail| StoreError::Corrupt { seq, detail })?;
            for rec in recs {
                if rec.seq >= from {
                    out.push(rec);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn put_output(&mut self, job: JobRef, output: &[u8]) -> Result<(), StoreError> {
        self.outputs.insert(output_key(job), output)?;
        Ok(())
    }

    fn output(&self, job: JobRef) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.outputs.get(output_key(job))?.map(|v| v.to_vec()))
    }

    fn save_snapshot(&mut self, state: &State) -> Result<(), StoreError> {
        let mut value = vec![format::SNAPSHOT_VERSION];
        state.write_snapshot(&mut value);
        self.snapshots.insert(format::key(state.last_seq), value)?;
        // Keep the newest two: one spare in case the newest is damaged.
        let keys: Vec<sled::IVec> = self
            .snapshots
            .iter()
            .keys()
            .filter_map(Result::ok)
            .collect();
        if keys.len() > 2 {
            for k in &keys[..keys.len() - 2] {
                self.snapshots.remove(k)?;
            }
        }
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<State>, StoreError> {
        let t = std::time::Instant::now();
        let Some((k, v)) = self.snapshots.last()? else {
            return Ok(None);
        };
        let read_ms = t.elapsed().as_millis() as u64;
        let seq = format::seq_of(&k).unwrap_or(0);
        let bad = |detail: String| StoreError::BadSnapshot { seq, detail };
        let (&version, body) = v.split_first().ok_or_else(|| bad("empty".into()))?;
        if version != format::SNAPSHOT_VERSION {
            // Snapshots are a cache: an old format is simply not used.
            return Ok(None);
        }
        let state = State::from_snapshot(body).map_err(bad)?;
        tracing::debug!(
            bytes = v.len(),
            read_ms,
            decode_ms = t.elapsed().as_millis() as u64 - read_ms,
            "snapshot read"
        );
        if state.last_seq > self.last_seq {
            return Err(bad(format!(
                "it covers event {} but the log ends at {}",
                state.last_seq, self.last_seq
            )));
        }
        Ok(Some(state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CommitId, JobId};

    fn commit(n: u8) -> CommitId {
        CommitId::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn appended_events_read_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SledLog::open(dir.path()).unwrap();
            let evs: Vec<Event> = (1..=3)
                .map(|i| Event::CommitSeen {
                    job: JobId(i),
                    commit: commit(i as u8),
                    branch: Some("main".into()),
                })
                .collect();
            assert_eq!(log.append(7, &evs).unwrap(), 3);
            log.flush().unwrap();
        }
        let log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq(), 3);
        let recs = log.read(2, 10).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].seq, 2);
        assert_eq!(recs[0].at_ms, 7);
        let state = super::super::load_state(&log, true).unwrap();
        assert_eq!(state.jobs().len(), 3);
    }

    #[test]
    fn a_damaged_record_names_its_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SledLog::open(dir.path()).unwrap();
        log.append(1, &[Event::DispatcherStarted { pid: 1 }])
            .unwrap();
        log.put_raw(2, &[1, 0xff, 0xff, 0xff]).unwrap();
        log.put_raw(3, &[9, 0]).unwrap();
        let err = super::super::load_state(&log, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("record 2"), "{err}");
        let err = log.read(3, 1).unwrap_err().to_string();
        assert!(err.contains("newer than this build"), "{err}");
    }

    #[test]
    fn reads_start_inside_a_batch_and_span_old_and_new_formats() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SledLog::open(dir.path()).unwrap();
        // Two single-event records of format 1, then batches of format 2.
        for seq in 1..=2 {
            let v = format::encode_value(5, &Event::DispatcherStarted { pid: seq as u32 }).unwrap();
            log.put_raw(seq, &v).unwrap();
        }
        let evs: Vec<Event> = (1..=5)
            .map(|i| Event::CommitSeen {
                job: JobId(i),
                commit: commit(i as u8),
                branch: None,
            })
            .collect();
        assert_eq!(log.append(7, &evs[..3]).unwrap(), 5);
        assert_eq!(log.append(8, &evs[3..]).unwrap(), 7);
        assert_eq!(log.append(9, &[]).unwrap(), 7);
        log.flush().unwrap();
        drop(log);
        let log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq(), 7);
        let seqs = |from, limit| -> Vec<u64> {
            log.read(from, limit)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(seqs(1, 100), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(seqs(4, 100), vec![4, 5, 6, 7]);
        assert_eq!(seqs(4, 2), vec![4, 5]);
        assert_eq!(seqs(7, 100), vec![7]);
        assert!(seqs(8, 100).is_empty());
        let recs = log.read(6, 1).unwrap();
        assert_eq!(recs[0].at_ms, 8);
        assert_eq!(recs[0].event, evs[3]);
        let state = super::super::load_state(&log, false).unwrap();
        assert_eq!(state.last_seq, 7);
        assert_eq!(state.jobs().len(), 5);
    }
}
