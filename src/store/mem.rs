//! A store that keeps everything in memory and fails when told to: the
//! simulator's disk, and a test double for the shell.
//!
//! What was appended and what was flushed are kept apart, so a simulated
//! crash ([`MemDisk::crash`]) loses exactly what a real one could: records
//! and outputs not yet flushed. Faults ([`MemFault`]) make the next append
//! or flush fail the way a full disk, a lost descriptor or a vanished
//! directory makes the sled log fail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::core::{
    ArchivedJob, CommitId, CommitInfo, HistoryFilter, JobId, JobRef, PrunedOutput, Record, State,
    StoredOutput,
};

use super::format;
use super::{
    EventLog, Flusher, HistoryPage, HistoryStore, IoFailure, OutputStore, OutputUsage,
    SnapshotStore, Store, StoreError,
};

/// A failure the disk will show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemFault {
    /// Appends fail (no space, no descriptors...) until cleared.
    Append(IoFailure),
    /// Flushes fail until cleared.
    Flush(IoFailure),
    /// The directory was deleted: flushes report it.
    Vanished,
}

/// The simulated disk: shared by the store and whoever inspects it.
#[derive(Debug, Default)]
pub struct MemDisk {
    /// What survives a crash.
    durable: Vec<Record>,
    /// Appended after the last flush.
    pending: Vec<Record>,
    durable_outputs: BTreeMap<JobRef, (StoredOutput, Vec<u8>)>,
    /// Written (`Some`) or deleted (`None`) since the last flush.
    pending_outputs: BTreeMap<JobRef, Option<(StoredOutput, Vec<u8>)>>,
    /// The last `OutputsPruned` record whose deletions were made: durable,
    /// and as written since the last flush.
    durable_pruned_through: u64,
    pending_pruned_through: Option<u64>,
    durable_infos: BTreeMap<JobId, CommitInfo>,
    pending_infos: BTreeMap<JobId, CommitInfo>,
    /// Encoded snapshots by the event they cover; durable with the flush
    /// that covers that event, as in a log-structured store (a snapshot
    /// never survives a crash that the events before it did not).
    snapshots: BTreeMap<u64, Vec<u8>>,
    pending_snapshots: BTreeMap<u64, Vec<u8>>,
    /// The history indexes, written in the fold's order: what the last
    /// flush covered, then what was written after it.
    durable_history: History,
    pending_history: Vec<(Vec<ArchivedJob>, u64)>,
    fault: Option<MemFault>,
    /// Appends and flushes that failed, for tests.
    pub failures: u64,
}

impl MemDisk {
    /// Every record that survives a crash, in order.
    pub fn durable(&self) -> &[Record] {
        &self.durable
    }

    /// The last record appended, durable or not.
    pub fn appended_seq(&self) -> u64 {
        self.pending
            .last()
            .or(self.durable.last())
            .map_or(0, |r| r.seq)
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable.last().map_or(0, |r| r.seq)
    }

    /// Makes records up to `seq` durable (a flush that began when `seq`
    /// was the last appended, finishing now), with every output appended
    /// so far (outputs are few; a real flush covers them too).
    pub fn make_durable(&mut self, seq: u64) {
        let n = self.pending.iter().take_while(|r| r.seq <= seq).count();
        self.durable.extend(self.pending.drain(..n));
        for (job, o) in std::mem::take(&mut self.pending_outputs) {
            match o {
                Some(o) => self.durable_outputs.insert(job, o),
                None => self.durable_outputs.remove(&job),
            };
        }
        if let Some(p) = self.pending_pruned_through.take() {
            self.durable_pruned_through = p;
        }
        self.durable_infos.append(&mut self.pending_infos);
        for (jobs, through) in self.pending_history.drain(..) {
            self.durable_history.write(jobs, through);
        }
        let later = self.pending_snapshots.split_off(&(seq + 1));
        let covered = std::mem::replace(&mut self.pending_snapshots, later);
        self.snapshots.extend(covered);
        while self.snapshots.len() > 2 {
            self.snapshots.pop_first();
        }
    }

    /// A flush that began when `seq` was the last record appended ends
    /// now: it fails if a fault says so, else makes them durable.
    pub fn flush_upto(&mut self, seq: u64) -> Result<(), StoreError> {
        self.check_flush()?;
        self.make_durable(seq);
        Ok(())
    }

    /// The process died: everything not flushed is gone.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.pending_outputs.clear();
        self.pending_pruned_through = None;
        self.pending_infos.clear();
        self.pending_snapshots.clear();
        self.pending_history.clear();
    }

    /// Forgets the history indexes (they are rebuilt from the log).
    pub fn drop_history(&mut self) {
        self.durable_history = History::default();
        self.pending_history.clear();
    }

    /// The history indexes as a reader sees them: durable, then pending.
    fn history(&self) -> History {
        let mut h = self.durable_history.clone();
        for (jobs, through) in &self.pending_history {
            h.write(jobs.clone(), *through);
        }
        h
    }
}

/// The simulated history indexes.
#[derive(Clone, Debug, Default)]
struct History {
    jobs: BTreeMap<JobId, ArchivedJob>,
    commits: BTreeMap<CommitId, JobId>,
    through: u64,
}

impl History {
    fn write(&mut self, jobs: Vec<ArchivedJob>, through: u64) {
        for j in jobs {
            self.commits.insert(j.commit, j.id);
            self.jobs.insert(j.id, j);
        }
        self.through = through;
    }
}

impl MemDisk {
    pub fn set_fault(&mut self, fault: Option<MemFault>) {
        self.fault = fault;
    }

    pub fn fault(&self) -> Option<MemFault> {
        self.fault
    }

    /// Overwrites the newest snapshot's bytes (a damaged snapshot).
    pub fn damage_newest_snapshot(&mut self) {
        if let Some((_, bytes)) = self.snapshots.iter_mut().next_back() {
            for b in bytes.iter_mut().skip(1).step_by(3) {
                *b ^= 0x5a;
            }
        }
    }

    pub fn durable_output(&self, job: JobRef) -> Option<&[u8]> {
        self.durable_outputs.get(&job).map(|(_, o)| o.as_slice())
    }

    /// Every output stored now (durable, then as changed since the last
    /// flush), by attempt.
    fn outputs_now(&self) -> BTreeMap<JobRef, &(StoredOutput, Vec<u8>)> {
        let mut all: BTreeMap<JobRef, &(StoredOutput, Vec<u8>)> =
            self.durable_outputs.iter().map(|(j, o)| (*j, o)).collect();
        for (j, o) in &self.pending_outputs {
            match o {
                Some(o) => all.insert(*j, o),
                None => all.remove(j),
            };
        }
        all
    }

    /// Every output the log (durable and not) says was pruned, in order.
    fn pruned_now(&self) -> Vec<PrunedOutput> {
        self.durable
            .iter()
            .chain(&self.pending)
            .flat_map(PrunedOutput::of_record)
            .collect()
    }

    fn check_flush(&mut self) -> Result<(), StoreError> {
        match self.fault {
            Some(MemFault::Flush(failure)) => {
                self.failures += 1;
                Err(write_error(failure))
            }
            Some(MemFault::Vanished) => {
                self.failures += 1;
                Err(StoreError::Vanished { dir: dir() })
            }
            _ => Ok(()),
        }
    }
}

fn dir() -> PathBuf {
    PathBuf::from("<memory>")
}

fn write_error(failure: IoFailure) -> StoreError {
    StoreError::Write {
        dir: dir(),
        failure,
        detail: format!("simulated {failure:?}"),
    }
}

/// A [`Store`] over a shared [`MemDisk`].
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    disk: Arc<Mutex<MemDisk>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The disk, to inspect it or to inject faults.
    pub fn disk(&self) -> MutexGuard<'_, MemDisk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EventLog for MemStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut d = self.disk();
        if let Some(MemFault::Append(failure)) = d.fault {
            d.failures += 1;
            return Err(write_error(failure));
        }
        for (expected, r) in (d.appended_seq() + 1..).zip(records) {
            if r.seq != expected {
                return Err(StoreError::OutOfOrder {
                    expected,
                    got: r.seq,
                });
            }
        }
        d.pending.extend_from_slice(records);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        MemFlusher(self.disk.clone()).flush()
    }

    fn flusher(&self) -> Result<Box<dyn Flusher>, StoreError> {
        Ok(Box::new(MemFlusher(self.disk.clone())))
    }

    fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let d = self.disk();
        Ok(d.durable
            .iter()
            .chain(&d.pending)
            .filter(|r| r.seq >= from_seq)
            .take(limit)
            .cloned()
            .collect())
    }

    fn last_seq(&self) -> u64 {
        self.disk().appended_seq()
    }

    fn job_events(&self, job: JobId, limit: usize) -> Result<Vec<Record>, StoreError> {
        let d = self.disk();
        Ok(d.durable
            .iter()
            .chain(&d.pending)
            .filter(|r| r.event.job() == Some(job))
            .take(limit)
            .cloned()
            .collect())
    }
}

struct MemFlusher(Arc<Mutex<MemDisk>>);

impl Flusher for MemFlusher {
    fn flush(&self) -> Result<(), StoreError> {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        d.check_flush()?;
        let seq = d.appended_seq();
        d.make_durable(seq);
        Ok(())
    }
}

impl OutputStore for MemStore {
    fn put_output(&mut self, stored: &StoredOutput, output: &[u8]) -> Result<(), StoreError> {
        let mut d = self.disk();
        if let Some(MemFault::Append(failure)) = d.fault {
            d.failures += 1;
            return Err(write_error(failure));
        }
        d.pending_outputs
            .insert(stored.job, Some((*stored, output.to_vec())));
        Ok(())
    }

    fn output(&self, job: JobRef) -> Result<Option<Vec<u8>>, StoreError> {
        let d = self.disk();
        Ok(match d.pending_outputs.get(&job) {
            Some(o) => o.as_ref().map(|(_, o)| o.clone()),
            None => d.durable_outputs.get(&job).map(|(_, o)| o.clone()),
        })
    }

    fn output_usage(&self) -> OutputUsage {
        let d = self.disk();
        let all = d.outputs_now();
        OutputUsage {
            outputs: all.len() as u64,
            bytes: all.values().map(|(s, _)| s.bytes).sum(),
        }
    }

    fn oldest_outputs(
        &self,
        after: Option<&StoredOutput>,
        limit: usize,
    ) -> Result<Vec<StoredOutput>, StoreError> {
        let d = self.disk();
        let mut all: Vec<StoredOutput> = d.outputs_now().values().map(|(s, _)| *s).collect();
        all.sort_by_key(StoredOutput::age_key);
        Ok(all
            .into_iter()
            .filter(|o| after.is_none_or(|a| o.age_key() > a.age_key()))
            .take(limit)
            .collect())
    }

    fn delete_outputs(&mut self, seq: u64, outputs: &[StoredOutput]) -> Result<(), StoreError> {
        let mut d = self.disk();
        if let Some(MemFault::Append(failure)) = d.fault {
            d.failures += 1;
            return Err(write_error(failure));
        }
        for o in outputs {
            d.pending_outputs.insert(o.job, None);
        }
        d.pending_pruned_through = Some(seq);
        Ok(())
    }

    fn finish_pruning(&mut self) -> Result<u64, StoreError> {
        let (through, due) = {
            let d = self.disk();
            let through = d.pending_pruned_through.unwrap_or(d.durable_pruned_through);
            let due: Vec<PrunedOutput> = d
                .pruned_now()
                .into_iter()
                .filter(|p| p.seq > through)
                .collect();
            (through, due)
        };
        let Some(last) = due.last().map(|p| p.seq) else {
            return Ok(0);
        };
        let present = due
            .iter()
            .filter(|p| self.output(p.output.job).ok().flatten().is_some())
            .count() as u64;
        let outputs: Vec<StoredOutput> = due.iter().map(|p| p.output).collect();
        self.delete_outputs(last.max(through), &outputs)?;
        Ok(present)
    }

    fn pruned_output(&self, job: JobRef) -> Result<Option<PrunedOutput>, StoreError> {
        Ok(self
            .disk()
            .pruned_now()
            .into_iter()
            .rfind(|p| p.output.job == job))
    }

    fn pruned_page(
        &self,
        before: Option<(u64, u32)>,
        limit: usize,
    ) -> Result<Vec<PrunedOutput>, StoreError> {
        Ok(self
            .disk()
            .pruned_now()
            .into_iter()
            .rev()
            .filter(|p| before.is_none_or(|b| p.place() < b))
            .take(limit)
            .collect())
    }

    fn put_info(&mut self, job: JobId, info: &CommitInfo) -> Result<(), StoreError> {
        let mut d = self.disk();
        if let Some(MemFault::Append(failure)) = d.fault {
            d.failures += 1;
            return Err(write_error(failure));
        }
        d.pending_infos.insert(job, info.clone());
        Ok(())
    }

    fn info(&self, job: JobId) -> Result<Option<CommitInfo>, StoreError> {
        let d = self.disk();
        Ok(d.pending_infos
            .get(&job)
            .or(d.durable_infos.get(&job))
            .cloned())
    }
}

impl HistoryStore for MemStore {
    fn archive(&self, jobs: &[ArchivedJob], through: u64) -> Result<(), StoreError> {
        let mut d = self.disk();
        if let Some(MemFault::Append(failure)) = d.fault {
            d.failures += 1;
            return Err(write_error(failure));
        }
        d.pending_history.push((jobs.to_vec(), through));
        Ok(())
    }

    fn archived_through(&self) -> Result<u64, StoreError> {
        let d = self.disk();
        Ok(d.pending_history
            .last()
            .map_or(d.durable_history.through, |(_, t)| *t))
    }

    fn archived_job(&self, job: JobId) -> Result<Option<ArchivedJob>, StoreError> {
        let d = self.disk();
        let pending = d
            .pending_history
            .iter()
            .rev()
            .flat_map(|(j, _)| j.iter().rev());
        Ok(pending
            .into_iter()
            .find(|j| j.id == job)
            .or_else(|| d.durable_history.jobs.get(&job))
            .cloned())
    }

    fn archived_commit(&self, commit: &CommitId) -> Result<Option<ArchivedJob>, StoreError> {
        let d = self.disk();
        let pending = d
            .pending_history
            .iter()
            .rev()
            .flat_map(|(j, _)| j.iter().rev());
        let h = &d.durable_history;
        Ok(pending
            .into_iter()
            .find(|j| j.commit == *commit)
            .or_else(|| h.commits.get(commit).and_then(|j| h.jobs.get(j)))
            .cloned())
    }

    fn archived_page(
        &self,
        before: JobId,
        filter: &HistoryFilter,
        limit: usize,
        budget: usize,
    ) -> Result<HistoryPage, StoreError> {
        let h = self.disk().history();
        let mut page = HistoryPage::default();
        for (read, (id, j)) in h.jobs.range(..before).rev().enumerate() {
            if read == budget || page.jobs.len() == limit {
                page.resume = Some(JobId(id.0 + 1));
                break;
            }
            if filter.matches(j) {
                page.jobs.push(j.clone());
            }
        }
        Ok(page)
    }

    fn archived_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<CommitId>, StoreError> {
        let p = prefix.to_ascii_lowercase();
        Ok(self
            .disk()
            .history()
            .commits
            .keys()
            .filter(|c| c.starts_with_hex(&p))
            .take(limit)
            .copied()
            .collect())
    }
}

impl SnapshotStore for MemStore {
    fn save_snapshot(&mut self, state: &State) -> Result<(), StoreError> {
        let mut d = self.disk();
        if let Some(MemFault::Append(failure)) = d.fault {
            d.failures += 1;
            return Err(write_error(failure));
        }
        let value = format::encode_snapshot(state);
        let seq = state.last_seq();
        if seq <= d.durable_seq() {
            d.snapshots.insert(seq, value);
            while d.snapshots.len() > 2 {
                d.snapshots.pop_first();
            }
        } else {
            d.pending_snapshots.insert(seq, value);
        }
        Ok(())
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.disk().snapshots.keys().rev().copied().collect())
    }

    fn load_snapshot(&self, seq: u64) -> Result<Option<State>, StoreError> {
        let d = self.disk();
        let Some(v) = d.snapshots.get(&seq) else {
            return Ok(None);
        };
        format::decode_snapshot(seq, v).map_err(|detail| StoreError::BadSnapshot { seq, detail })
    }
}

impl Store for MemStore {
    fn describe(&self) -> String {
        "memory".into()
    }
}
