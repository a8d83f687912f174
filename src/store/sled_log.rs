//! The embedded default log on sled: one tree of events, one of outputs, one
//! of commit details, one of snapshots, and an index of each job's events
//! (for its page's timeline), the stored outputs by age and the outputs
//! retention removed, in one database under the data directory.
//! The only file that knows sled: its errors become [`StoreError`]s here.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::core::{
    ArchivedJob, CommitId, CommitInfo, HistoryFilter, JobId, JobRef, PrunedOutput, Record, State,
    StoredOutput,
};

use super::format;
use super::sled_history::SledHistory;
use super::{
    EventLog, Flusher, HistoryPage, HistoryStore, IoFailure, OutputStore, OutputUsage,
    SnapshotStore, Store, StoreError,
};

/// sled's page cache, in bytes.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A small file beside the database holding how many events the log held
/// when it was last opened or cleanly stopped. sled reads a damaged file as
/// a shorter (even empty) log without a word; a log that holds fewer events
/// than it once did is damaged, and is refused instead of overwritten.
const HIGH_WATER_FILE: &str = "log-high-water";

fn read_high_water(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(HIGH_WATER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn write_high_water(dir: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(HIGH_WATER_FILE);
    let tmp = dir.join(format!("{HIGH_WATER_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    writeln!(f, "{seq}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

pub struct SledLog {
    db: sled::Db,
    /// sled's own flush ends in `sync_file_range`, which survives a process
    /// crash but not a power cut (it neither commits the file's metadata nor
    /// flushes the device cache). An `fdatasync` on the same file after it
    /// does, so an acknowledged event survives both. Also how the log
    /// notices that its files were deleted or replaced (see [`Presence`]).
    data_file: File,
    presence: Presence,
    events: sled::Tree,
    outputs: sled::Tree,
    infos: sled::Tree,
    snapshots: sled::Tree,
    /// Keys `job ++ seq` (big-endian) for every event about a job: a job's
    /// history without reading the log. Derived from the log, and rebuilt
    /// from it where it falls behind (see [`SledLog::catch_up_index`]).
    by_job: sled::Tree,
    /// Every stored output in age order: key `at_ms ++ job ++ attempt`
    /// (big-endian), value `bytes ++ commit`. What retention reads (the
    /// oldest few), and what the running total counts.
    by_age: sled::Tree,
    /// The outputs retention removed, from the `OutputsPruned` records:
    /// key `seq ++ index`, value the encoded `PrunedOutput`. Derived from
    /// the log like `by_job` (written at append, caught up at open).
    pruned: sled::Tree,
    /// The same by attempt: key as `outputs`, value `seq ++ index`.
    pruned_jobs: sled::Tree,
    /// `indexed`: the last sequence number `by_job` covers; `pruned-through`:
    /// the last `OutputsPruned` whose deletions were made; `outputs-usage`:
    /// the total below at a clean stop (removed at open, so a crash is
    /// told by its absence); `outputs-aged`: `by_age` covers every output.
    meta: sled::Tree,
    /// The outputs in `by_age`, and their bytes: kept as they change,
    /// counted again from `by_age` after a crash.
    usage: OutputUsage,
    /// Finished jobs out of the state's memory (`sled_history.rs`).
    history: SledHistory,
    last_seq: u64,
    dir: PathBuf,
    /// For a read-only copy: the temporary directory that holds it.
    _copy: Option<tempfile::TempDir>,
}

/// Whether the data file this process writes is still the one at the data
/// directory's path: `rm -rf` of the directory (the open file lives on with
/// no name), a `mv` or a replacement would otherwise go unnoticed while
/// acknowledged events went into files nobody will find.
struct Presence {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Presence {
    fn of(file: &File, path: &Path) -> std::io::Result<Presence> {
        let m = file.metadata()?;
        Ok(Presence {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Fails when the open file has no name any more or the path names
    /// another file.
    fn check(&self, file: &File, dir: &Path) -> Result<(), StoreError> {
        let vanished = || StoreError::Vanished {
            dir: dir.to_path_buf(),
        };
        let open = file.metadata().map_err(|e| write_error(dir, e))?;
        if open.nlink() == 0 {
            return Err(vanished());
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => Ok(()),
            Ok(_) => Err(vanished()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(vanished()),
            Err(e) => Err(write_error(dir, e)),
        }
    }
}

fn write_error(dir: &Path, e: std::io::Error) -> StoreError {
    let failure = io_failure(&e);
    // sled re-wraps OS errors as their `Debug` text (`Os { code: 28, ...
    // }`); for the failures we know, say it in words.
    let detail = match (failure, e.raw_os_error()) {
        (_, Some(_)) | (IoFailure::Other, _) => e.to_string(),
        (f, None) => f.to_string(),
    };
    StoreError::Write {
        dir: dir.to_path_buf(),
        failure,
        detail,
    }
}

/// What kind of failure an `io::Error` is, looking through sled's wrapping
/// (it re-wraps OS errors, keeping their kind but not their code).
fn io_failure(e: &std::io::Error) -> IoFailure {
    use std::io::ErrorKind;
    if e.raw_os_error().is_some() {
        return IoFailure::of(e);
    }
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<std::io::Error>()) {
        return io_failure(inner);
    }
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => IoFailure::NoSpace,
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => IoFailure::NotWritable,
        _ => IoFailure::Other,
    }
}

/// A sled error met while writing (appending, flushing, storing).
pub(super) fn sled_write(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => write_error(dir, io),
        sled::Error::Corruption { .. } => StoreError::Damaged {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        },
        other => StoreError::Write {
            dir: dir.to_path_buf(),
            failure: IoFailure::Other,
            detail: other.to_string(),
        },
    }
}

/// A sled error met while reading.
pub(super) fn sled_read(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Damaged {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        },
        other => StoreError::Read {
            dir: dir.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

/// Whether another process holds sled's lock on the data file.
fn locked_by_another(data_path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = File::open(data_path) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own; LOCK_NB never blocks.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
    }
    // SAFETY: as above; releases the shared lock just taken.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    false
}

/// Copies a directory tree (files and subdirectories), for a read-only copy.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl SledLog {
    /// Opens (or creates) the log; fails with `Locked` if another process
    /// holds it.
    pub fn open(dir: &Path) -> Result<SledLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let log = Self::open_db(dir, &dir.join("db"), None)?;
        // The events read back are durable: a later open must find them.
        write_high_water(dir, log.last_seq).map_err(|e| write_error(dir, e))?;
        Ok(log)
    }

    /// Notes that every appended event is durable (after a final flush),
    /// so the next open can tell a damaged log from a short one.
    pub fn mark_clean_stop(&mut self) -> Result<(), StoreError> {
        if self._copy.is_none() {
            self.mark_indexed(self.last_seq)?;
            let mut usage = [0u8; 16];
            usage[..8].copy_from_slice(&self.usage.outputs.to_be_bytes());
            usage[8..].copy_from_slice(&self.usage.bytes.to_be_bytes());
            self.meta
                .insert(USAGE, &usage[..])
                .map_err(|e| sled_write(&self.dir, e))?;
        }
        self.flush()?;
        if self._copy.is_none() {
            write_high_water(&self.dir, self.last_seq).map_err(|e| write_error(&self.dir, e))?;
        }
        Ok(())
    }

    /// Opens a log for reading only, leaving `dir` exactly as it was: sled
    /// writes while it opens (recovery, its own snapshot files), so the
    /// database is copied to a private temporary directory and opened
    /// there. Works on a read-only backup; refuses, saying so, while a
    /// dispatcher holds `dir`. Needs free space for the copy in the
    /// temporary directory (`TMPDIR`).
    pub fn open_read_only(dir: &Path) -> Result<SledLog, StoreError> {
        let db_dir = dir.join("db");
        if !db_dir.join("db").is_file() {
            return Err(StoreError::Open {
                dir: dir.to_path_buf(),
                detail: "it holds no event log (no dispatcher ever ran there)".into(),
            });
        }
        if locked_by_another(&db_dir.join("db")) {
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        let copy_err = |e: std::io::Error| StoreError::Copy {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        };
        let tmp = tempfile::Builder::new()
            .prefix("ci-replay-")
            .tempdir()
            .map_err(copy_err)?;
        copy_tree(&db_dir, &tmp.path().join("db")).map_err(copy_err)?;
        let copy_db = tmp.path().join("db");
        let mut log = Self::open_db(dir, &copy_db, Some(tmp)).map_err(|e| match e {
            // Name the directory the user gave, not the copy.
            StoreError::Open { detail, .. } => StoreError::Open {
                dir: dir.to_path_buf(),
                detail,
            },
            other => other,
        })?;
        log.dir = dir.to_path_buf();
        Ok(log)
    }

    fn open_db(
        dir: &Path,
        db_dir: &Path,
        copy: Option<tempfile::TempDir>,
    ) -> Result<SledLog, StoreError> {
        let db = sled::Config::new()
            .path(db_dir)
            .mode(sled::Mode::HighThroughput)
            // sled's default page cache is 1 GiB; the dispatcher reads the
            // log once at start and then only appends, so a small cache
            // keeps its resident memory to the state it needs.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| classify_open_error(dir, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| sled_read(dir, e));
        let events = tree("events")?;
        let outputs = tree("outputs")?;
        let infos = tree("infos")?;
        let snapshots = tree("snapshots")?;
        let by_job = tree("by-job")?;
        let by_age = tree("outputs-by-age")?;
        let pruned = tree("pruned")?;
        let pruned_jobs = tree("pruned-jobs")?;
        let meta = tree("meta")?;
        let history = SledHistory::open(&db, dir)?;
        let data_path = db_dir.join("db");
        let cannot_sync = |e: std::io::Error| StoreError::Open {
            dir: data_path.clone(),
            detail: format!("cannot open sled's data file to sync it: {e}"),
        };
        let data_file = File::open(&data_path).map_err(cannot_sync)?;
        let presence = Presence::of(&data_file, &data_path).map_err(cannot_sync)?;
        let last_seq = match events.last().map_err(|e| sled_read(dir, e))? {
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
        if let Some(high) = read_high_water(dir)
            && last_seq < high
        {
            return Err(StoreError::Damaged {
                dir: dir.to_path_buf(),
                detail: format!(
                    "the log reads as {last_seq} events, but it held {high} when it was last opened or stopped; sled could not read the rest"
                ),
            });
        }
        let mut log = SledLog {
            db,
            data_file,
            presence,
            events,
            outputs,
            infos,
            snapshots,
            by_job,
            by_age,
            pruned,
            pruned_jobs,
            meta,
            usage: OutputUsage::default(),
            history,
            last_seq,
            dir: dir.to_path_buf(),
            _copy: copy,
        };
        log.catch_up_index()?;
        log.age_outputs()?;
        Ok(log)
    }

    /// Brings the age index and its total up to date at open: outputs
    /// stored before retention existed are indexed once (when their
    /// attempt finished, from its `Result` record), and the total is the
    /// one noted at the last clean stop, or counted again after a crash.
    fn age_outputs(&mut self) -> Result<(), StoreError> {
        let read = |e| sled_read(&self.dir, e);
        let write = |e| sled_write(&self.dir, e);
        if self.meta.get(AGED).map_err(read)?.is_none() {
            let mut indexed = 0u64;
            for item in self.outputs.iter() {
                let (k, v) = item.map_err(read)?;
                let Some(job) = job_ref_of(&k) else { continue };
                let Some((commit, at_ms)) = self.result_of(job)? else {
                    continue;
                };
                let stored = StoredOutput {
                    job,
                    commit,
                    at_ms,
                    bytes: v.len() as u64,
                };
                self.by_age
                    .insert(age_key(&stored), age_value(&stored))
                    .map_err(write)?;
                indexed += 1;
            }
            if indexed > 0 {
                tracing::info!(
                    outputs = indexed,
                    "indexed the stored outputs by age, once (for retention)"
                );
            }
            self.meta.insert(AGED, &[1u8][..]).map_err(write)?;
        }
        match self.meta.remove(USAGE).map_err(write)? {
            Some(v) if v.len() == 16 => {
                self.usage = OutputUsage {
                    outputs: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                    bytes: u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
                };
            }
            _ => {
                let mut usage = OutputUsage::default();
                for item in self.by_age.iter() {
                    let (_, v) = item.map_err(read)?;
                    usage.outputs += 1;
                    usage.bytes += age_value_bytes(&v);
                }
                self.usage = usage;
            }
        }
        Ok(())
    }

    /// The commit and the `Result` stamp of an attempt, from its job's
    /// records.
    fn result_of(&self, job: JobRef) -> Result<Option<(CommitId, u64)>, StoreError> {
        let records = self.job_events(job.job, usize::MAX)?;
        Ok(records.iter().rev().find_map(|r| match &r.event {
            crate::core::Event::Result {
                commit, attempt, ..
            } if *attempt == job.attempt => Some((*commit, r.at_ms)),
            _ => None,
        }))
    }

    /// Deletes one pruned output and its age entry; the total counts the
    /// age entry, so a repeat after a crash counts nothing twice. The age
    /// entry goes first: a crash between leaves an output outside the
    /// index, which the start-up catch-up deletes.
    fn delete_output(&mut self, o: &StoredOutput) -> Result<bool, StoreError> {
        let write = |e| sled_write(&self.dir, e);
        if let Some(v) = self.by_age.remove(age_key(o)).map_err(write)? {
            self.usage.outputs = self.usage.outputs.saturating_sub(1);
            self.usage.bytes = self.usage.bytes.saturating_sub(age_value_bytes(&v));
        }
        Ok(self
            .outputs
            .remove(output_key(o.job))
            .map_err(write)?
            .is_some())
    }

    fn mark_pruned_through(&self, seq: u64) -> Result<(), StoreError> {
        self.meta
            .insert(PRUNED_THROUGH, &format::key(seq))
            .map_err(|e| sled_write(&self.dir, e))?;
        Ok(())
    }

    /// Indexes the events the job index does not cover yet: all of them
    /// for a log written before the index existed, else the few a crash
    /// kept from it (the index is written after its events).
    fn catch_up_index(&mut self) -> Result<(), StoreError> {
        let indexed = match self
            .meta
            .get(INDEXED)
            .map_err(|e| sled_read(&self.dir, e))?
        {
            Some(v) => format::seq_of(&v).unwrap_or(0),
            None => 0,
        };
        if indexed >= self.last_seq {
            return Ok(());
        }
        let behind = self.last_seq - indexed;
        if behind > 100_000 {
            tracing::info!(
                events = behind,
                "indexing the log's events by job, once (for the commit pages)"
            );
        }
        let mut from = indexed + 1;
        while from <= self.last_seq {
            let records = match self.read(from, 65_536) {
                Ok(records) => records,
                // A damaged record is reported, with its sequence number,
                // by whoever reads the log next (the dispatcher refuses to
                // start); opening stays possible so that tools can look.
                Err(StoreError::Corrupt { .. }) => break,
                Err(e) => return Err(e),
            };
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            self.index(&records)?;
            from = last + 1;
        }
        Ok(())
    }

    /// Adds `records` to the job index, one insert each (a sled batch per
    /// append measured 2.4 times slower in `bench --only appends`; the
    /// index needs no atomicity, it is caught up at open), and now and
    /// then moves its mark past them.
    fn index(&self, records: &[Record]) -> Result<(), StoreError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        for r in records {
            if let Some(job) = r.event.job() {
                self.by_job
                    .insert(&job_event_key(job, r.seq)[..], &[][..])
                    .map_err(|e| sled_write(&self.dir, e))?;
            }
            for p in PrunedOutput::of_record(r) {
                let value = crate::encoding::encode(&p).map_err(|e| StoreError::Corrupt {
                    seq: r.seq,
                    detail: e.to_string(),
                })?;
                let place = pruned_key(p.place());
                self.pruned
                    .insert(&place[..], value)
                    .map_err(|e| sled_write(&self.dir, e))?;
                self.pruned_jobs
                    .insert(&output_key(p.output.job)[..], &place[..])
                    .map_err(|e| sled_write(&self.dir, e))?;
            }
        }
        // The mark moves once per `INDEX_MARK_EVERY` events (and at a
        // clean stop): a write per append cost a quarter of the appends'
        // throughput, and what a crash leaves behind it is indexed again
        // at the next open (the same keys: nothing counted twice).
        let first = records[0].seq;
        if (first - 1) / INDEX_MARK_EVERY != last.seq / INDEX_MARK_EVERY {
            self.mark_indexed(last.seq)?;
        }
        Ok(())
    }

    fn mark_indexed(&self, seq: u64) -> Result<(), StoreError> {
        self.meta
            .insert(INDEXED, &format::key(seq))
            .map_err(|e| sled_write(&self.dir, e))?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a raw value at `seq`, for tests of damaged and old records.
    #[doc(hidden)]
    pub fn put_raw(&mut self, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        self.events
            .insert(format::key(seq), value)
            .map_err(|e| sled_write(&self.dir, e))?;
        self.last_seq = self.last_seq.max(seq);
        Ok(())
    }

    /// Writes a raw snapshot value at `seq`, for tests of damaged snapshots.
    #[doc(hidden)]
    pub fn put_raw_snapshot(&mut self, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        self.snapshots
            .insert(format::key(seq), value)
            .map_err(|e| sled_write(&self.dir, e))?;
        Ok(())
    }

    /// Disk space used, for benchmarks.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn classify_open_error(dir: &Path, e: sled::Error) -> StoreError {
    match &e {
        // sled reports its lock as an `Other` I/O error; the lock itself
        // says whether that is what it was.
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::Other
                && locked_by_another(&dir.join("db").join("db")) =>
        {
            return StoreError::Locked {
                dir: dir.to_path_buf(),
            };
        }
        sled::Error::Corruption { .. } => {
            return StoreError::Damaged {
                dir: dir.to_path_buf(),
                detail: "sled found corrupted data while opening".into(),
            };
        }
        _ => {}
    }
    StoreError::Open {
        dir: dir.to_path_buf(),
        detail: e.to_string(),
    }
}

/// The job index's mark (in the `meta` tree).
const INDEXED: &[u8] = b"indexed";

/// How many events the job index's mark may lag behind the index.
const INDEX_MARK_EVERY: u64 = 4096;

fn job_event_key(job: JobId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&job.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The age index's key: when the attempt finished, then job and attempt.
fn age_key(o: &StoredOutput) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&o.at_ms.to_be_bytes());
    k[8..16].copy_from_slice(&o.job.job.0.to_be_bytes());
    k[16..].copy_from_slice(&o.job.attempt.to_be_bytes());
    k
}

fn age_value(o: &StoredOutput) -> Vec<u8> {
    let mut v = o.bytes.to_be_bytes().to_vec();
    v.extend_from_slice(o.commit.as_bytes());
    v
}

fn age_value_bytes(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The output an age index entry stands for (`None`: not one of ours).
fn age_entry(k: &[u8], v: &[u8]) -> Option<StoredOutput> {
    if k.len() != 20 || v.len() < 8 {
        return None;
    }
    Some(StoredOutput {
        at_ms: u64::from_be_bytes(k[..8].try_into().ok()?),
        job: JobRef {
            job: JobId(u64::from_be_bytes(k[8..16].try_into().ok()?)),
            attempt: u32::from_be_bytes(k[16..].try_into().ok()?),
        },
        commit: CommitId::from_bytes(&v[8..])?,
        bytes: age_value_bytes(v),
    })
}

fn pruned_key((seq, index): (u64, u32)) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&seq.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn job_ref_of(k: &[u8]) -> Option<JobRef> {
    Some(JobRef {
        job: JobId(u64::from_be_bytes(k.get(..8)?.try_into().ok()?)),
        attempt: u32::from_be_bytes(k.get(8..12)?.try_into().ok()?),
    })
}

/// The meta keys of retention (see [`SledLog::meta`]).
const USAGE: &[u8] = b"outputs-usage";
const AGED: &[u8] = b"outputs-aged";
const PRUNED_THROUGH: &[u8] = b"pruned-through";

fn output_key(job: JobRef) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&job.job.0.to_be_bytes());
    k[8..].copy_from_slice(&job.attempt.to_be_bytes());
    k
}

/// sled's flush, then the `fdatasync` that makes it survive a power cut
/// (see `SledLog::data_file`), then the check that the files are still
/// where the next start will look.
fn flush_db(
    db: &sled::Db,
    data_file: &File,
    presence: &Presence,
    dir: &Path,
) -> Result<(), StoreError> {
    db.flush().map_err(|e| sled_write(dir, e))?;
    data_file.sync_data().map_err(|e| write_error(dir, e))?;
    presence.check(data_file, dir)
}

/// [`SledLog::flush`] from another thread: sled's handles are shared, and
/// its flush covers every write made before it began.
struct SledFlusher {
    db: sled::Db,
    data_file: File,
    presence: Presence,
    dir: PathBuf,
}

impl Flusher for SledFlusher {
    fn flush(&self) -> Result<(), StoreError> {
        flush_db(&self.db, &self.data_file, &self.presence, &self.dir)
    }
}

impl EventLog for SledLog {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        if first.seq != self.last_seq + 1 {
            return Err(StoreError::OutOfOrder {
                expected: self.last_seq + 1,
                got: first.seq,
            });
        }
        // One key per run of records stamped alike (format 2: a batch
        // shares its `at_ms`), at most MAX_BATCH_EVENTS each, applied
        // atomically.
        let mut runs: Vec<(sled::IVec, Vec<u8>)> = Vec::with_capacity(1);
        let mut seq = self.last_seq;
        let mut events = Vec::new();
        let mut i = 0;
        while i < records.len() {
            let at_ms = records[i].at_ms;
            let start = seq + 1;
            events.clear();
            while i < records.len()
                && records[i].at_ms == at_ms
                && events.len() < format::MAX_BATCH_EVENTS
            {
                let r = &records[i];
                if r.seq != seq + 1 {
                    return Err(StoreError::OutOfOrder {
                        expected: seq + 1,
                        got: r.seq,
                    });
                }
                events.push(r.event.clone());
                seq += 1;
                i += 1;
            }
            let value = format::encode_batch(at_ms, &events).map_err(|e| StoreError::Corrupt {
                seq: start,
                detail: e.to_string(),
            })?;
            runs.push((format::key(start)[..].into(), value));
        }
        // Almost every append is one run (the shell stamps a batch with
        // one clock reading), and one key is one `insert`, atomic on its
        // own. A sled `Batch` is kept for several keys only, because
        // `apply_batch` takes sled's global concurrency lock exclusively:
        // it waits for the flusher's `flush`, which holds that lock shared
        // for as long as the write and its sync take, so every append
        // stalled behind the previous group commit's disk write (and,
        // once taken, the lock makes every later sled call take it too).
        // A plain `insert` takes it shared, like `flush`: the writer
        // appends the next batch while the flusher syncs this one.
        if runs.len() == 1 {
            let (key, value) = runs.pop().expect("one run");
            self.events
                .insert(key, value)
                .map_err(|e| sled_write(&self.dir, e))?;
        } else {
            let mut batch = sled::Batch::default();
            for (key, value) in runs {
                batch.insert(key, value);
            }
            self.events
                .apply_batch(batch)
                .map_err(|e| sled_write(&self.dir, e))?;
        }
        self.last_seq = seq;
        self.index(records)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        flush_db(&self.db, &self.data_file, &self.presence, &self.dir)
    }

    fn flusher(&self) -> Result<Box<dyn Flusher>, StoreError> {
        let data_file = self
            .data_file
            .try_clone()
            .map_err(|e| write_error(&self.dir, e))?;
        Ok(Box::new(SledFlusher {
            db: self.db.clone(),
            data_file,
            presence: Presence {
                path: self.presence.path.clone(),
                dev: self.presence.dev,
                ino: self.presence.ino,
            },
            dir: self.dir.clone(),
        }))
    }

    fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let from = from_seq.max(1);
        let mut out = Vec::with_capacity(limit.min(8192));
        if limit == 0 {
            return Ok(out);
        }
        let read_err = |e| sled_read(&self.dir, e);
        // The key holding `from` is the last one at or before it (a batch
        // keyed by its first event).
        let start = match self.events.range(..=format::key(from)).next_back() {
            Some(item) => item.map_err(read_err)?.0,
            None => sled::IVec::from(&format::key(from)),
        };
        for item in self.events.range(start..) {
            let (k, v) = item.map_err(read_err)?;
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

    fn job_events(&self, job: JobId, limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        for item in self.by_job.scan_prefix(job.0.to_be_bytes()).take(limit) {
            let (k, _) = item.map_err(|e| sled_read(&self.dir, e))?;
            let Some(seq) = k.get(8..).and_then(format::seq_of) else {
                continue;
            };
            // A key the log does not hold (it cannot happen; if it did, a
            // timeline would only miss a line).
            if let Some(r) = self.read(seq, 1)?.into_iter().find(|r| r.seq == seq) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

impl OutputStore for SledLog {
    fn put_output(&mut self, stored: &StoredOutput, output: &[u8]) -> Result<(), StoreError> {
        let write = |e| sled_write(&self.dir, e);
        let old = self
            .outputs
            .insert(output_key(stored.job), output)
            .map_err(write)?;
        if old.is_some() {
            // Stored before by a run whose result a crash lost: its age
            // entry (another finishing time) goes, once.
            let mut stale = Vec::new();
            for item in self.by_age.iter() {
                let (k, v) = item.map_err(|e| sled_read(&self.dir, e))?;
                if age_entry(&k, &v).is_some_and(|o| o.job == stored.job) {
                    stale.push(k);
                }
            }
            for k in stale {
                if let Some(v) = self.by_age.remove(k).map_err(write)? {
                    self.usage.outputs = self.usage.outputs.saturating_sub(1);
                    self.usage.bytes = self.usage.bytes.saturating_sub(age_value_bytes(&v));
                }
            }
        }
        let stored = StoredOutput {
            bytes: output.len() as u64,
            ..*stored
        };
        if self
            .by_age
            .insert(age_key(&stored), age_value(&stored))
            .map_err(write)?
            .is_none()
        {
            self.usage.outputs += 1;
            self.usage.bytes += stored.bytes;
        }
        Ok(())
    }

    fn output(&self, job: JobRef) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .outputs
            .get(output_key(job))
            .map_err(|e| sled_read(&self.dir, e))?
            .map(|v| v.to_vec()))
    }

    fn output_usage(&self) -> OutputUsage {
        self.usage
    }

    fn oldest_outputs(
        &self,
        after: Option<&StoredOutput>,
        limit: usize,
    ) -> Result<Vec<StoredOutput>, StoreError> {
        let mut out = Vec::new();
        let range = match after {
            Some(a) => self.by_age.range(age_key(a)..),
            None => self.by_age.range::<&[u8], _>(..),
        };
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| sled_read(&self.dir, e))?;
            if after.is_some_and(|a| k.as_ref() == age_key(a)) {
                continue;
            }
            if let Some(o) = age_entry(&k, &v) {
                out.push(o);
            }
        }
        Ok(out)
    }

    fn delete_outputs(&mut self, seq: u64, outputs: &[StoredOutput]) -> Result<(), StoreError> {
        for o in outputs {
            self.delete_output(o)?;
        }
        self.mark_pruned_through(seq)
    }

    fn finish_pruning(&mut self) -> Result<u64, StoreError> {
        let read = |e| sled_read(&self.dir, e);
        let through = match self.meta.get(PRUNED_THROUGH).map_err(read)? {
            Some(v) => format::seq_of(&v).unwrap_or(0),
            None => 0,
        };
        let mut due = Vec::new();
        for item in self.pruned.range(pruned_key((through + 1, 0))..) {
            let (_, v) = item.map_err(read)?;
            let p: PrunedOutput = crate::encoding::decode(&v).map_err(|e| StoreError::Read {
                dir: self.dir.clone(),
                detail: format!("a damaged entry of the pruned outputs' index: {e}"),
            })?;
            due.push(p);
        }
        let Some(last) = due.last().map(|p| p.seq) else {
            return Ok(0);
        };
        let mut deleted = 0;
        for p in &due {
            if self.delete_output(&p.output)? {
                deleted += 1;
            }
        }
        self.mark_pruned_through(last)?;
        Ok(deleted)
    }

    fn pruned_output(&self, job: JobRef) -> Result<Option<PrunedOutput>, StoreError> {
        let read = |e| sled_read(&self.dir, e);
        let Some(place) = self.pruned_jobs.get(output_key(job)).map_err(read)? else {
            return Ok(None);
        };
        let Some(v) = self.pruned.get(place).map_err(read)? else {
            return Ok(None);
        };
        Ok(crate::encoding::decode(&v).ok())
    }

    fn pruned_page(
        &self,
        before: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<PrunedOutput>, StoreError> {
        let range = match before {
            Some(b) => self.pruned.range(..pruned_key(b)),
            None => self.pruned.range::<&[u8], _>(..),
        };
        let mut out = Vec::new();
        for item in range.rev().take(limit) {
            let (_, v) = item.map_err(|e| sled_read(&self.dir, e))?;
            if let Ok(p) = crate::encoding::decode(&v) {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn put_info(&mut self, job: JobId, info: &CommitInfo) -> Result<(), StoreError> {
        let value = crate::encoding::encode(info).map_err(|e| StoreError::Write {
            dir: self.dir.clone(),
            failure: IoFailure::Other,
            detail: e.to_string(),
        })?;
        self.infos
            .insert(job.0.to_be_bytes(), value)
            .map_err(|e| sled_write(&self.dir, e))?;
        Ok(())
    }

    fn info(&self, job: JobId) -> Result<Option<CommitInfo>, StoreError> {
        let Some(v) = self
            .infos
            .get(job.0.to_be_bytes())
            .map_err(|e| sled_read(&self.dir, e))?
        else {
            return Ok(None);
        };
        // Damaged information is only a missing subject on a page.
        Ok(crate::encoding::decode(&v).ok())
    }
}

impl HistoryStore for SledLog {
    fn archive(&self, jobs: &[ArchivedJob], through: u64) -> Result<(), StoreError> {
        self.history.archive(jobs, through)
    }

    fn archived_through(&self) -> Result<u64, StoreError> {
        self.history.through()
    }

    fn archived_job(&self, job: JobId) -> Result<Option<ArchivedJob>, StoreError> {
        self.history.job(job)
    }

    fn archived_commit(&self, commit: &CommitId) -> Result<Option<ArchivedJob>, StoreError> {
        self.history.commit(commit)
    }

    fn archived_page(
        &self,
        before: JobId,
        filter: &HistoryFilter,
        limit: usize,
        budget: usize,
    ) -> Result<HistoryPage, StoreError> {
        self.history.page(before, filter, limit, budget)
    }

    fn archived_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<CommitId>, StoreError> {
        self.history.prefix(prefix, limit)
    }
}

impl SnapshotStore for SledLog {
    fn save_snapshot(&mut self, state: &State) -> Result<(), StoreError> {
        let value = format::encode_snapshot(state);
        let write = |e| sled_write(&self.dir, e);
        self.snapshots
            .insert(format::key(state.last_seq()), value)
            .map_err(write)?;
        // Keep the newest two: one spare in case the newest is damaged.
        let keys: Vec<sled::IVec> = self
            .snapshots
            .iter()
            .keys()
            .filter_map(Result::ok)
            .collect();
        if keys.len() > 2 {
            for k in &keys[..keys.len() - 2] {
                self.snapshots.remove(k).map_err(write)?;
            }
        }
        Ok(())
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        for k in self.snapshots.iter().keys() {
            let k = k.map_err(|e| sled_read(&self.dir, e))?;
            if let Some(seq) = format::seq_of(&k) {
                seqs.push(seq);
            }
        }
        seqs.reverse();
        Ok(seqs)
    }

    fn load_snapshot(&self, seq: u64) -> Result<Option<State>, StoreError> {
        let t = std::time::Instant::now();
        let bad = |detail: String| StoreError::BadSnapshot { seq, detail };
        let Some(v) = self
            .snapshots
            .get(format::key(seq))
            .map_err(|e| bad(e.to_string()))?
        else {
            return Ok(None);
        };
        let read_ms = t.elapsed().as_millis() as u64;
        let state = format::decode_snapshot(seq, &v).map_err(bad)?;
        tracing::debug!(
            bytes = v.len(),
            read_ms,
            decode_ms = t.elapsed().as_millis() as u64 - read_ms,
            "snapshot read"
        );
        Ok(state)
    }
}

impl Store for SledLog {
    fn describe(&self) -> String {
        format!("sled in {}", self.dir.display())
    }

    fn stopped_cleanly(&mut self) -> Result<(), StoreError> {
        self.mark_clean_stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CommitId, Event, JobId};
    use crate::store::Rebuild;

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
            log.append(&Record::run(1, 7, &evs)).unwrap();
            assert_eq!(log.last_seq(), 3);
            log.flush().unwrap();
        }
        let log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq(), 3);
        let recs = log.read(2, 10).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].seq, 2);
        assert_eq!(recs[0].at_ms, 7);
        let state = super::super::load_state(&log, Rebuild::FromSnapshot).unwrap();
        assert_eq!(state.jobs_seen() as usize, 3);
    }

    /// Two finished jobs with outputs (3 and 5 bytes), then a pruning of
    /// job 1's output made durable (a flush) but not carried out: a kill -9
    /// between the `OutputsPruned` record and the deletion.
    fn pruned_but_not_deleted(dir: &Path) -> crate::core::StoredOutput {
        use crate::core::{JobReport, Outcome, PruneReason, StoredOutput};
        let mut log = SledLog::open(dir).unwrap();
        let mut evs = Vec::new();
        let mut stored = Vec::new();
        for j in 1..=2u64 {
            let job = JobRef {
                job: JobId(j),
                attempt: 1,
            };
            evs.push(Event::CommitSeen {
                job: JobId(j),
                commit: commit(j as u8),
                branch: None,
            });
            evs.push(Event::JobAssigned {
                job: JobId(j),
                commit: commit(j as u8),
                runner: "r".into(),
                attempt: 1,
            });
            evs.push(Event::Result {
                job: JobId(j),
                commit: commit(j as u8),
                runner: Some("r".into()),
                attempt: 1,
                report: JobReport {
                    outcome: Outcome::Pass,
                    exit_code: Some(0),
                    duration_ms: 1,
                    tests: None,
                    message: String::new(),
                },
                output_bytes: 1 + 2 * j,
            });
            let s = StoredOutput {
                job,
                commit: commit(j as u8),
                at_ms: 100,
                bytes: 1 + 2 * j,
            };
            log.put_output(&s, &b"hello"[..(1 + 2 * j) as usize])
                .unwrap();
            stored.push(s);
        }
        log.append(&Record::run(1, 100, &evs)).unwrap();
        assert_eq!(
            log.output_usage(),
            OutputUsage {
                outputs: 2,
                bytes: 8
            }
        );
        assert_eq!(log.oldest_outputs(None, 10).unwrap(), stored);
        assert_eq!(
            log.oldest_outputs(Some(&stored[0]), 10).unwrap(),
            &stored[1..]
        );
        let prune = Event::OutputsPruned {
            reason: PruneReason::Age,
            outputs: vec![stored[0]],
        };
        log.append(&Record::run(7, 200, &[prune])).unwrap();
        log.flush().unwrap();
        stored[0]
    }

    #[test]
    fn a_pruning_on_record_but_not_carried_out_is_finished_at_start_once() {
        let dir = tempfile::tempdir().unwrap();
        let gone = pruned_but_not_deleted(dir.path());
        let mut log = SledLog::open(dir.path()).unwrap();
        // The output is still there, the log says it was pruned.
        assert!(log.output(gone.job).unwrap().is_some());
        let p = log.pruned_output(gone.job).unwrap().expect("indexed");
        assert_eq!((p.seq, p.at_ms, p.output), (7, 200, gone));
        // Counted again after the crash: both outputs.
        assert_eq!(log.output_usage().bytes, 8);
        assert_eq!(log.finish_pruning().unwrap(), 1);
        assert_eq!(log.output(gone.job).unwrap(), None);
        let kept = JobRef {
            job: JobId(2),
            attempt: 1,
        };
        assert_eq!(log.output(kept).unwrap().as_deref(), Some(&b"hello"[..]));
        let after = OutputUsage {
            outputs: 1,
            bytes: 5,
        };
        assert_eq!(log.output_usage(), after);
        // Nothing twice: again, and after a clean stop and an open.
        assert_eq!(log.finish_pruning().unwrap(), 0);
        assert_eq!(log.output_usage(), after);
        log.mark_clean_stop().unwrap();
        drop(log);
        let mut log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.output_usage(), after);
        assert_eq!(log.finish_pruning().unwrap(), 0);
        let page = log.pruned_page(None, 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(log.pruned_page(Some(page[0].place()), 10).unwrap(), vec![]);
        assert_eq!(log.oldest_outputs(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn outputs_stored_before_retention_are_indexed_by_age_once() {
        let dir = tempfile::tempdir().unwrap();
        pruned_but_not_deleted(dir.path());
        {
            // As a store written before retention: no age index, no marks.
            let mut log = SledLog::open(dir.path()).unwrap();
            log.by_age.clear().unwrap();
            log.meta.remove(AGED).unwrap();
            log.meta.remove(USAGE).unwrap();
            log.flush().unwrap();
        }
        let log = SledLog::open(dir.path()).unwrap();
        let oldest = log.oldest_outputs(None, 10).unwrap();
        assert_eq!(oldest.len(), 2);
        assert!(oldest.iter().all(|o| o.at_ms == 100));
        assert_eq!(log.output_usage().bytes, 8);
    }

    #[test]
    fn a_jobs_events_come_from_the_index_which_a_reopen_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let seen = |j: u64| Event::CommitSeen {
            job: JobId(j),
            commit: commit(j as u8),
            branch: None,
        };
        let assigned = |j: u64| Event::JobAssigned {
            job: JobId(j),
            commit: commit(j as u8),
            runner: "r".into(),
            attempt: 1,
        };
        {
            let mut log = SledLog::open(dir.path()).unwrap();
            let evs = vec![
                seen(1),
                seen(2),
                assigned(2),
                Event::DispatcherStarted { pid: 1 },
            ];
            log.append(&Record::run(1, 7, &evs)).unwrap();
            log.append(&Record::run(5, 8, &[assigned(1)])).unwrap();
            let seqs = |log: &SledLog, j| -> Vec<u64> {
                log.job_events(JobId(j), 10)
                    .unwrap()
                    .iter()
                    .map(|r| r.seq)
                    .collect()
            };
            assert_eq!(seqs(&log, 1), vec![1, 5]);
            assert_eq!(seqs(&log, 2), vec![2, 3]);
            assert_eq!(seqs(&log, 3), Vec::<u64>::new());
            assert_eq!(log.job_events(JobId(1), 1).unwrap().len(), 1);
            // As if written before the index existed, or a crash kept the
            // events and not their index entries.
            log.by_job.clear().unwrap();
            log.meta.clear().unwrap();
            log.flush().unwrap();
        }
        let log = SledLog::open(dir.path()).unwrap();
        let events = log.job_events(JobId(1), 10).unwrap();
        assert_eq!(events.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 5]);
        assert_eq!(events[1].event, assigned(1));
    }

    /// The index's mark lags (it moves every `INDEX_MARK_EVERY` events):
    /// entries a crash lost after it are made again at the next open, and
    /// a clean stop moves it to the end.
    #[test]
    fn index_entries_lost_after_the_mark_come_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let seen = |j: u64| Event::CommitSeen {
            job: JobId(j),
            commit: commit(j as u8),
            branch: None,
        };
        let n = INDEX_MARK_EVERY + 10;
        {
            let mut log = SledLog::open(dir.path()).unwrap();
            for j in 1..=n {
                log.append(&Record::run(j, 7, &[seen(j)])).unwrap();
            }
            let mark = log.meta.get(INDEXED).unwrap().unwrap();
            assert_eq!(format::seq_of(&mark), Some(INDEX_MARK_EVERY));
            // A crash kept the last event but not its index entry.
            log.by_job.remove(job_event_key(JobId(n), n)).unwrap();
            log.flush().unwrap();
        }
        let mut log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.job_events(JobId(n), 10).unwrap().len(), 1);
        log.mark_clean_stop().unwrap();
        let mark = log.meta.get(INDEXED).unwrap().unwrap();
        assert_eq!(format::seq_of(&mark), Some(n));
    }

    #[test]
    fn a_damaged_record_names_its_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SledLog::open(dir.path()).unwrap();
        log.append(&Record::run(1, 1, &[Event::DispatcherStarted { pid: 1 }]))
            .unwrap();
        log.put_raw(2, &[1, 0xff, 0xff, 0xff]).unwrap();
        log.put_raw(3, &[9, 0]).unwrap();
        let err = super::super::load_state(&log, Rebuild::FromScratch)
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
        log.append(&Record::run(3, 7, &evs[..3])).unwrap();
        assert_eq!(log.last_seq(), 5);
        // Two runs stamped apart: two keys, written as one sled batch.
        let mut two = Record::run(6, 8, &evs[3..4]);
        two.extend(Record::run(7, 9, &evs[4..]));
        log.append(&two).unwrap();
        assert_eq!(log.last_seq(), 7);
        log.append(&[]).unwrap();
        assert_eq!(log.last_seq(), 7);
        // A batch that does not follow on is refused and changes nothing.
        assert!(matches!(
            log.append(&Record::run(9, 9, &evs[..1])),
            Err(StoreError::OutOfOrder {
                expected: 8,
                got: 9
            })
        ));
        assert_eq!(log.last_seq(), 7);
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
        let recs = log.read(6, 2).unwrap();
        assert_eq!(recs[0].at_ms, 8);
        assert_eq!(recs[0].event, evs[3]);
        assert_eq!((recs[1].at_ms, &recs[1].event), (9, &evs[4]));
        let state = super::super::load_state(&log, Rebuild::FromScratch).unwrap();
        assert_eq!(state.last_seq(), 7);
        assert_eq!(state.jobs_seen() as usize, 5);
    }
}
