//! The dispatcher's durable state, derived from the log by a pure fold.
//!
//! `State::apply` is the only way state changes. Replaying the same records
//! always gives the same `State`; that is what makes restart and
//! `replay --verify` exact.
//!
//! Bounded by design: the state holds the unfinished jobs and a window of
//! recently finished ones (older ones move out to the history indexes, see
//! [`super::archive`]); a job is plain data with no heap allocation of its
//! own. Branch, repository and runner names are interned into one table of the
//! state ([`Sym`] indexes it, in order of first appearance, so interning is
//! part of the pure fold; result messages differ from job to job and are
//! kept beside the jobs in memory), and the commits in memory are indexed
//! by a hash table that is rebuilt, not stored, when a snapshot loads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;

/// foldhash, seeded per process: several times faster than SipHash on a
/// commit id, and crafted ids still cannot aim at a bucket.
type RandomState = foldhash::quality::RandomState;

mod snapshot;

use super::archive::{ArchivedJob, ArchivedResult};
use super::event::{Event, JobReport, LostReason, Notice, Outcome, Record, TestCounts};
use super::ids::{CommitId, JobId, JobRef, RunnerName};
use super::retention::{PruneReason, PrunedTotals};

/// An interned string (branch, runner name or result message) of a `State`;
/// resolve it with [`State::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sym(u32);

/// Where one job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    /// Handed to `runner` at `since_ms` (wall clock, for display).
    Running {
        runner: Sym,
        since_ms: u64,
    },
    Done(Finished),
}

/// The recorded final result of a job (the `JobReport` flattened, strings
/// interned; [`State::report`] rebuilds the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// `None` when the dispatcher itself gave up.
    pub runner: Option<Sym>,
    pub attempt: u32,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub tests: Option<TestCounts>,
    /// The message is kept beside: [`State::message`].
    pub output_bytes: u64,
    pub at_ms: u64,
}

/// One commit's job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub commit: CommitId,
    /// Resolve with [`State::branch`].
    pub branch: Option<Sym>,
    /// The named repository it is a commit of (`None`: the default one);
    /// resolve with [`State::repository`].
    pub repository: Option<Sym>,
    /// How many times it was handed to a runner (the current attempt number).
    pub attempts: u32,
    /// How many of those hand-outs were lost. A hand-back (the runner was
    /// stopped cleanly) is not a loss: it must never make the job give up.
    pub lost: u32,
    pub status: JobStatus,
    pub seen_at_ms: u64,
}

impl Job {
    pub fn current(&self) -> JobRef {
        JobRef {
            job: self.id,
            attempt: self.attempts,
        }
    }
}

/// A notification owed: to which sink, what it says, when it was decided.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Due {
    pub n: u64,
    pub sink: String,
    pub notice: Notice,
    pub at_ms: u64,
}

impl Due {
    /// The idempotency key: the same for every delivery of this
    /// notification, different for any other one of this log (the commit
    /// is in it so that a log started afresh does not repeat old keys for
    /// other commits).
    pub fn key(&self) -> String {
        format!("{}.{}", self.notice.commit, self.n)
    }
}

/// Where a branch stands for "broken" and "fixed": its newest finished
/// job (by number, cancelled ones not counted) and that job's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchMark {
    pub job: JobId,
    pub outcome: Outcome,
}

/// A snapshot that cannot be used: what in it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct BadSnapshot {
    pub why: String,
}

/// A record could not be applied: the log is inconsistent (or a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {seq} cannot be applied: {why}")]
pub struct ApplyError {
    pub seq: u64,
    pub why: String,
}

/// An open-addressing hash index of `u32` values (0 = empty slot) whose keys
/// live elsewhere (the jobs' commits, the interned names): 4 bytes a slot,
/// no copy of the key. The hasher is keyed per process (foldhash with a random seed), so
/// crafted keys cannot force collisions. Derived data: two indexes compare
/// equal when they index the same number of keys (what they index is
/// compared by the owner).
#[derive(Clone, Default)]
struct Index {
    slots: Vec<u32>,
    len: usize,
    hasher: RandomState,
}

impl PartialEq for Index {
    fn eq(&self, other: &Index) -> bool {
        self.len == other.len
    }
}

impl Eq for Index {}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Index({} keys)", self.len)
    }
}

impl Index {
    fn hash<K: std::hash::Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The value whose key `is` says matches, among those with hash `h`.
    fn find(&self, h: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            match self.slots[i] {
                0 => return None,
                v if is(v) => return Some(v),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Makes room for `extra` more keys; `hash_of` rehashes a stored value.
    fn reserve(&mut self, extra: usize, hash_of: impl Fn(u32) -> u64) {
        let want = self.len + extra;
        // Load factor at most 1/2: short probe runs.
        if want * 2 <= self.slots.len() {
            return;
        }
        let cap = (want * 2).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        let mask = cap - 1;
        for v in old.into_iter().filter(|&v| v != 0) {
            let mut i = hash_of(v) as usize & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = v;
        }
    }

    /// Adds `v` (not 0) with hash `h` unless a value `same` matches is
    /// there already (then `false`); call `reserve` first.
    fn insert_unique(&mut self, h: u64, v: u32, mut same: impl FnMut(u32) -> bool) -> bool {
        debug_assert!(v != 0 && (self.len + 1) * 2 <= self.slots.len());
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            match self.slots[i] {
                0 => break,
                old if same(old) => return false,
                _ => i = (i + 1) & mask,
            }
        }
        self.slots[i] = v;
        self.len += 1;
        true
    }

    /// Adds `v` (not 0, not present) with hash `h`; call `reserve` first.
    fn insert_new(&mut self, h: u64, v: u32) {
        self.insert_unique(h, v, |_| false);
    }
}

/// How many finished jobs the state keeps in memory by default; older ones
/// live in the store's history indexes (see [`super::archive`]).
pub const DEFAULT_WINDOW: usize = 10_000;

/// Everything the log says, folded: in memory, what scheduling needs (the
/// unfinished jobs, the queue, the holders, branch tips and marks, the
/// outbox) and a bounded window of recently finished jobs. Jobs that leave
/// the window are handed out by [`State::take_archived`] for the history
/// indexes; memory does not grow with history.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Sequence number of the last applied record (0 = empty log).
    last_seq: u64,
    /// How many finished jobs stay in memory (0: the default).
    window: usize,
    /// The jobs in memory, by number: every unfinished one and the window.
    jobs: BTreeMap<JobId, Job>,
    /// How many jobs were ever seen (the next is number + 1).
    seen: u64,
    /// The in-memory finished jobs in the order they finished, oldest
    /// first (an entry whose job was retried or moved out since is
    /// skipped when it comes up).
    finished: VecDeque<JobId>,
    /// How many jobs in memory are finished.
    finished_in_memory: usize,
    /// The result messages of finished jobs in memory (empty ones absent):
    /// messages differ from job to job, so they are not interned.
    messages: HashMap<JobId, Box<str>, RandomState>,
    /// How many jobs ever moved out of memory (the history indexes say
    /// how many they hold, so a snapshot is only used with indexes that
    /// caught up with it).
    archived: u64,
    /// Jobs moved out and not yet taken by the owner (derived: not in
    /// snapshots, not compared).
    outgoing: Vec<ArchivedJob>,
    queue: VecDeque<JobId>,
    /// Which job each runner holds. A runner holds at most one.
    holders: BTreeMap<RunnerName, JobRef>,
    /// The default repository's branch tips.
    branch_tips: BTreeMap<String, CommitId>,
    /// Each named repository's branch tips: a branch `main` of one
    /// repository is not `main` of another.
    repo_tips: BTreeMap<String, BTreeMap<String, CommitId>>,
    /// How many jobs are finished (a result or a cancel; a retry makes one
    /// unfinished again).
    results: u64,
    /// Finished jobs by outcome (in the order of [`Outcome::ALL`]), in
    /// memory or not.
    outcomes: [u64; 5],
    /// Interned branch, repository and runner names, in order of first
    /// appearance; `Sym(i)` is `names[i]`.
    names: Vec<Box<str>>,
    /// Commit -> job number, for the jobs in memory (derived, rebuilt on
    /// load).
    by_commit: HashMap<CommitId, JobId, RandomState>,
    /// Name -> `Sym` + 1 (derived from `names`, rebuilt on load).
    by_name: Index,
    /// Notifications due and not yet delivered or dropped, by number.
    outbox: BTreeMap<u64, Due>,
    /// How many notifications were ever due (the next is number + 1).
    notices: u64,
    /// How many of the outbox's are owed to each sink (derived from
    /// `outbox`, rebuilt on load).
    owed: BTreeMap<String, usize>,
    /// Each branch's newest finished job and its outcome (default
    /// repository).
    branch_marks: BTreeMap<String, BranchMark>,
    /// The same for each named repository's branches.
    repo_marks: BTreeMap<String, BTreeMap<String, BranchMark>>,
    /// How many queued jobs each repository has (derived from `queue`,
    /// rebuilt on load): the scheduler's candidates without a scan.
    queued: BTreeMap<Option<Sym>, usize>,
    /// What retention removed, by reason (in the order of
    /// [`PruneReason::ALL`]): counters only, whatever the history.
    pruned: [PrunedTotals; 2],
}

/// Two states are equal when the log they fold says the same: what is in
/// memory, not the order of hash tables or what waits to be taken out.
impl PartialEq for State {
    fn eq(&self, o: &State) -> bool {
        self.last_seq == o.last_seq
            && self.window() == o.window()
            && self.jobs == o.jobs
            && self.seen == o.seen
            && self.finished == o.finished
            && self.finished_in_memory == o.finished_in_memory
            && self.messages == o.messages
            && self.archived == o.archived
            && self.queue == o.queue
            && self.holders == o.holders
            && self.branch_tips == o.branch_tips
            && self.repo_tips == o.repo_tips
            && self.results == o.results
            && self.outcomes == o.outcomes
            && self.names == o.names
            && self.outbox == o.outbox
            && self.notices == o.notices
            && self.branch_marks == o.branch_marks
            && self.repo_marks == o.repo_marks
            && self.pruned == o.pruned
    }
}

impl Eq for State {}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// How many finished jobs stay in memory.
    pub fn window(&self) -> usize {
        match self.window {
            0 => DEFAULT_WINDOW,
            w => w,
        }
    }

    /// The snapshot of this state: everything but the derived indexes, in
    /// the layout of [`snapshot`].
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_snapshot(&mut out);
        out
    }

    /// As [`State::to_snapshot`], appended to `out` (after a header of the
    /// caller's, without copying the snapshot again).
    pub fn write_snapshot(&self, out: &mut Vec<u8>) {
        snapshot::encode(self, out)
    }

    /// The state a snapshot holds; an error says what in it is wrong.
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, BadSnapshot> {
        snapshot::decode(bytes, true).map_err(|why| BadSnapshot { why })
    }

    /// The state a snapshot in the layout before retention (snapshot
    /// version 6) holds: the same, with no outputs pruned.
    pub fn from_snapshot_before_retention(bytes: &[u8]) -> Result<State, BadSnapshot> {
        snapshot::decode(bytes, false).map_err(|why| BadSnapshot { why })
    }

    /// Rebuilds the derived indexes; a commit or name found twice means the
    /// jobs or names did not come from a fold.
    fn rebuild_indexes(&mut self) -> Result<(), String> {
        self.queued.clear();
        for id in &self.queue {
            let j = self
                .job(*id)
                .ok_or_else(|| format!("queued job {id} does not exist"))?;
            *self.queued.entry(j.repository).or_default() += 1;
        }
        self.owed.clear();
        for d in self.outbox.values() {
            *self.owed.entry(d.sink.clone()).or_default() += 1;
        }
        self.by_commit.clear();
        self.by_commit.reserve(self.jobs.len());
        for j in self.jobs.values() {
            if self.by_commit.insert(j.commit, j.id).is_some() {
                return Err(format!("commit {} has two jobs", j.commit));
            }
        }
        let State { names, by_name, .. } = self;
        let hn = by_name.hasher.clone();
        by_name.reserve(names.len(), |v| hn.hash_one(&*names[v as usize - 1]));
        for (i, n) in names.iter().enumerate() {
            if !by_name.insert_unique(hn.hash_one(&**n), i as u32 + 1, |v| {
                names[v as usize - 1] == *n
            }) {
                return Err(format!("the name {n:?} is interned twice"));
            }
        }
        Ok(())
    }

    /// The `Sym` of `s`, interning it on first sight.
    fn intern(&mut self, s: &str) -> Result<Sym, String> {
        let h = self.by_name.hash(s);
        let names = &self.names;
        if let Some(v) = self.by_name.find(h, |v| &*names[v as usize - 1] == s) {
            return Ok(Sym(v - 1));
        }
        let sym = u32::try_from(self.names.len())
            .ok()
            .filter(|&n| n < u32::MAX)
            .ok_or("too many distinct names")?;
        let (hn, names) = (self.by_name.hasher.clone(), &self.names);
        self.by_name
            .reserve(1, |v| hn.hash_one(&*names[v as usize - 1]));
        self.by_name.insert_new(h, sym + 1);
        self.names.push(s.into());
        Ok(Sym(sym))
    }

    /// The string `sym` stands for ("" for a symbol of another state).
    pub fn name(&self, sym: Sym) -> &str {
        self.names.get(sym.0 as usize).map_or("", |s| s)
    }

    /// The `Sym` of `s` if this state has seen it.
    pub fn sym(&self, s: &str) -> Option<Sym> {
        let names = &self.names;
        self.by_name
            .find(self.by_name.hash(s), |v| &*names[v as usize - 1] == s)
            .map(|v| Sym(v - 1))
    }

    /// The job's named repository (`None`: the default repository).
    pub fn repository(&self, job: &Job) -> Option<&str> {
        job.repository.map(|r| self.name(r))
    }

    /// The job's branch, if it was submitted with one.
    pub fn branch(&self, job: &Job) -> Option<&str> {
        job.branch.map(|b| self.name(b))
    }

    /// The runner a finished job ran on (`None`: the dispatcher gave up).
    pub fn runner(&self, f: &Finished) -> Option<&str> {
        f.runner.map(|r| self.name(r))
    }

    /// The report a finished job's `Result` event carried.
    pub fn report(&self, job: JobId, f: &Finished) -> JobReport {
        JobReport {
            outcome: f.outcome,
            exit_code: f.exit_code,
            duration_ms: f.duration_ms,
            tests: f.tests,
            message: self.message(job).to_string(),
        }
    }

    /// The result message of a finished job in memory ("" if none).
    pub fn message(&self, job: JobId) -> &str {
        self.messages.get(&job).map_or("", |m| m)
    }

    /// A finished job in memory as it is kept in the history indexes
    /// (`None` while it is unfinished).
    pub fn archive_of(&self, job: &Job) -> Option<ArchivedJob> {
        let JobStatus::Done(f) = job.status else {
            return None;
        };
        Some(ArchivedJob {
            id: job.id,
            commit: job.commit,
            branch: self.branch(job).map(str::to_string),
            repository: self.repository(job).map(str::to_string),
            attempts: job.attempts,
            lost: job.lost,
            seen_at_ms: job.seen_at_ms,
            finished: ArchivedResult {
                runner: self.runner(&f).map(str::to_string),
                attempt: f.attempt,
                outcome: f.outcome,
                exit_code: f.exit_code,
                duration_ms: f.duration_ms,
                tests: f.tests,
                message: self.message(job.id).to_string(),
                output_bytes: f.output_bytes,
                at_ms: f.at_ms,
            },
        })
    }

    /// The jobs that left memory since the last call, oldest first: the
    /// owner writes them to the history indexes before anything reads
    /// them there.
    pub fn take_archived(&mut self) -> Vec<ArchivedJob> {
        std::mem::take(&mut self.outgoing)
    }

    /// Whether jobs left memory and were not taken yet.
    pub fn has_archived(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// How many jobs ever left memory (counting a job again each time).
    pub fn archived_count(&self) -> u64 {
        self.archived
    }

    /// What retention removed so far, by reason (in the order of
    /// [`PruneReason::ALL`]).
    pub fn pruned_totals(&self) -> [PrunedTotals; 2] {
        self.pruned
    }

    /// What retention removed for `reason`.
    pub fn pruned(&self, reason: PruneReason) -> PrunedTotals {
        self.pruned[reason.index()]
    }

    /// Finished jobs by outcome, in the order of [`Outcome::ALL`].
    pub fn outcome_counts(&self) -> [u64; 5] {
        self.outcomes
    }

    /// A job finished at `at`: its message kept, counted, and the oldest
    /// finished jobs beyond the window moved out.
    fn finish(&mut self, job: JobId, outcome: Outcome, message: &str) {
        if !message.is_empty() {
            self.messages.insert(job, message.into());
        }
        self.outcomes[outcome_index(outcome)] += 1;
        self.results += 1;
        self.finished.push_back(job);
        self.finished_in_memory += 1;
        self.evict();
    }

    /// Moves finished jobs out of memory, oldest finished first, until the
    /// window holds.
    fn evict(&mut self) {
        while self.finished_in_memory > self.window() {
            let Some(id) = self.finished.pop_front() else {
                break;
            };
            // An entry of a job retried (or moved out) since is stale.
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let Some(archived) = self.archive_of(job) else {
                continue;
            };
            let commit = job.commit;
            self.jobs.remove(&id);
            self.by_commit.remove(&commit);
            self.messages.remove(&id);
            self.finished_in_memory -= 1;
            self.archived += 1;
            self.outgoing.push(archived);
        }
    }

    /// Brings an archived job back into memory, as it was.
    fn restore(&mut self, a: &ArchivedJob) -> Result<(), String> {
        if a.id.0 == 0 || a.id.0 > self.seen {
            return Err(format!("job {} was never seen", a.id));
        }
        if self.jobs.contains_key(&a.id) {
            return Err(format!("job {} is in memory already", a.id));
        }
        if self.by_commit.contains_key(&a.commit) {
            return Err(format!("commit {} has a job in memory", a.commit));
        }
        let branch = a.branch.as_deref().map(|b| self.intern(b)).transpose()?;
        let repository = a
            .repository
            .as_deref()
            .map(|r| self.intern(r))
            .transpose()?;
        let runner = a
            .finished
            .runner
            .as_deref()
            .map(|r| self.intern(r))
            .transpose()?;
        let f = &a.finished;
        self.jobs.insert(
            a.id,
            Job {
                id: a.id,
                commit: a.commit,
                branch,
                repository,
                attempts: a.attempts,
                lost: a.lost,
                status: JobStatus::Done(Finished {
                    runner,
                    attempt: f.attempt,
                    outcome: f.outcome,
                    exit_code: f.exit_code,
                    duration_ms: f.duration_ms,
                    tests: f.tests,
                    output_bytes: f.output_bytes,
                    at_ms: f.at_ms,
                }),
                seen_at_ms: a.seen_at_ms,
            },
        );
        self.by_commit.insert(a.commit, a.id);
        if !f.message.is_empty() {
            self.messages.insert(a.id, f.message.as_str().into());
        }
        self.finished.push_back(a.id);
        self.finished_in_memory += 1;
        Ok(())
    }

    /// As [`State::apply_record`] for a log written before jobs left
    /// memory, whose `JobRetried` may name a job this fold moved out: the
    /// owner found it in the history indexes, and it comes back first.
    pub fn apply_record_restoring(
        &mut self,
        rec: &Record,
        archived: &ArchivedJob,
    ) -> Result<(), ApplyError> {
        self.restore(archived)
            .map_err(|why| ApplyError { seq: rec.seq, why })?;
        self.apply_record(rec)
    }

    /// The job a record needs in memory and that is not there (it left
    /// with the window): what [`State::apply_record_restoring`] is for.
    pub fn missing_job(&self, rec: &Record) -> Option<JobId> {
        match &rec.event {
            Event::JobRetried { job, .. } if !self.jobs.contains_key(job) && job.0 <= self.seen => {
                Some(*job)
            }
            _ => None,
        }
    }

    /// Applies one stored record; its sequence number must follow the last.
    pub fn apply_record(&mut self, rec: &Record) -> Result<(), ApplyError> {
        if rec.seq != self.last_seq + 1 {
            return Err(ApplyError {
                seq: rec.seq,
                why: format!("expected sequence number {}", self.last_seq + 1),
            });
        }
        self.apply(&rec.event, rec.at_ms)
            .map_err(|why| ApplyError { seq: rec.seq, why })?;
        self.last_seq = rec.seq;
        Ok(())
    }

    fn set_tip(&mut self, repository: Option<&str>, branch: &str, tip: CommitId) {
        let tips = match repository {
            None => &mut self.branch_tips,
            Some(r) => match self.repo_tips.get_mut(r) {
                Some(t) => t,
                None => self.repo_tips.entry(r.to_string()).or_default(),
            },
        };
        match tips.get_mut(branch) {
            Some(t) => *t = tip,
            None => {
                tips.insert(branch.to_string(), tip);
            }
        }
    }

    /// Sequence number of the last applied record (0 = empty log).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How many jobs are finished.
    pub fn results(&self) -> u64 {
        self.results
    }

    /// The fold step. Errors mean the event contradicts the state: a damaged
    /// log or a bug in `decide`, never a peer's bad input. Private: records
    /// come in through [`State::apply_record`], which keeps their order.
    fn apply(&mut self, event: &Event, at_ms: u64) -> Result<(), String> {
        match event {
            Event::DispatcherStarted { .. } | Event::DispatcherPaused { .. } => {}
            Event::CommitSeen {
                job,
                commit,
                branch,
            } => self.see(*job, *commit, branch.as_deref(), None, at_ms)?,
            Event::CommitSeenIn {
                job,
                commit,
                branch,
                repository,
            } => self.see(*job, *commit, branch.as_deref(), Some(repository), at_ms)?,
            Event::BranchMoved { branch, tip } => {
                self.set_tip(None, branch, *tip);
            }
            Event::BranchMovedIn {
                repository,
                branch,
                tip,
            } => {
                self.set_tip(Some(repository), branch, *tip);
            }
            Event::JobAssigned {
                job,
                runner,
                attempt,
                ..
            } => {
                if self.holders.contains_key(runner) {
                    return Err(format!("runner {runner} already holds a job"));
                }
                let j = self.job_mut(*job)?;
                if j.status != JobStatus::Queued || *attempt != j.attempts + 1 {
                    return Err(format!("job {job} is not queued for attempt {attempt}"));
                }
                let runner_sym = self.intern(runner)?;
                let j = self.job_mut(*job)?;
                j.attempts = *attempt;
                j.status = JobStatus::Running {
                    runner: runner_sym,
                    since_ms: at_ms,
                };
                self.holders.insert(
                    runner.clone(),
                    JobRef {
                        job: *job,
                        attempt: *attempt,
                    },
                );
                self.dequeue(*job);
            }
            Event::HeartbeatLost {
                runner,
                job,
                attempt,
                reason,
            } => {
                let held = JobRef {
                    job: *job,
                    attempt: *attempt,
                };
                if self.holders.get(runner) != Some(&held) {
                    return Err(format!("runner {runner} does not hold {held}"));
                }
                self.holders.remove(runner);
                let j = self.job_mut(*job)?;
                if *reason != LostReason::HandedBack {
                    j.lost += 1;
                }
                j.status = JobStatus::Queued;
                let repository = j.repository;
                self.enqueue_front(*job, repository);
            }
            Event::Result {
                job,
                runner,
                attempt,
                report,
                output_bytes,
                ..
            } => {
                let j = self.job_mut(*job)?;
                if matches!(j.status, JobStatus::Done(_)) {
                    return Err(format!("job {job} already has a result"));
                }
                if *attempt != j.attempts {
                    return Err(format!(
                        "result for attempt {attempt} of job {job}, current is {}",
                        j.attempts
                    ));
                }
                let was_queued = j.status == JobStatus::Queued;
                let runner_sym = match runner {
                    Some(r) => Some(self.intern(r)?),
                    None => None,
                };
                let j = self.job_mut(*job)?;
                j.status = JobStatus::Done(Finished {
                    runner: runner_sym,
                    attempt: *attempt,
                    outcome: report.outcome,
                    exit_code: report.exit_code,
                    duration_ms: report.duration_ms,
                    tests: report.tests,
                    output_bytes: *output_bytes,
                    at_ms,
                });
                if let Some(r) = runner
                    && self.holders.get(r).map(|h| h.job) == Some(*job)
                {
                    self.holders.remove(r);
                }
                if was_queued {
                    self.dequeue(*job);
                }
                if let Some(j) = self.job(*job)
                    && let Some(b) = j.branch
                {
                    let branch = self.name(b).to_string();
                    let repository = j.repository.map(|r| self.name(r).to_string());
                    self.mark_branch(repository, branch, *job, report.outcome);
                }
                self.finish(*job, report.outcome, &report.message);
            }
            Event::JobCancelled { job, attempt, .. } => {
                let j = self.job_mut(*job)?;
                if *attempt != j.attempts {
                    return Err(format!(
                        "cancel of attempt {attempt} of job {job}, current is {}",
                        j.attempts
                    ));
                }
                let status = j.status;
                if let JobStatus::Done(_) = status {
                    return Err(format!("job {job} already has a result"));
                }
                // A running job keeps who ran it and for how long (from
                // the hand-out to the cancel, checkout included).
                let (ran_on, ran_ms) = match status {
                    JobStatus::Running { runner, since_ms } => {
                        let name = self.name(runner).to_string();
                        if self.holders.get(&name).map(|h| h.job) == Some(*job) {
                            self.holders.remove(&name);
                        }
                        (Some(runner), at_ms.saturating_sub(since_ms))
                    }
                    _ => (None, 0),
                };
                if status == JobStatus::Queued {
                    self.dequeue(*job);
                }
                let j = self.job_mut(*job)?;
                j.status = JobStatus::Done(Finished {
                    runner: ran_on,
                    attempt: *attempt,
                    outcome: Outcome::Cancelled,
                    exit_code: None,
                    duration_ms: ran_ms,
                    tests: None,
                    output_bytes: 0,
                    at_ms,
                });
                self.finish(*job, Outcome::Cancelled, "cancelled");
            }
            Event::JobRetried { job, attempt, .. } => {
                let j = self.job_mut(*job)?;
                let JobStatus::Done(f) = j.status else {
                    return Err(format!("job {job} is not finished to be retried"));
                };
                if *attempt != j.attempts {
                    return Err(format!(
                        "job {job} is not finished at attempt {attempt} to be retried"
                    ));
                }
                j.status = JobStatus::Queued;
                j.lost = 0;
                let repository = j.repository;
                self.enqueue_back(*job, repository);
                self.results -= 1;
                self.outcomes[outcome_index(f.outcome)] -= 1;
                self.finished_in_memory -= 1;
                self.messages.remove(job);
            }
            Event::JobRestored { job } => self.restore(job)?,
            Event::MemoryWindow { jobs } => {
                self.window = (*jobs as usize).max(1);
                self.evict();
            }
            Event::NotificationDue { n, sink, notice } => {
                if *n != self.notices + 1 {
                    return Err(format!("notification {n} is not the next number"));
                }
                self.notices = *n;
                *self.owed.entry(sink.clone()).or_default() += 1;
                self.outbox.insert(
                    *n,
                    Due {
                        n: *n,
                        sink: sink.clone(),
                        notice: notice.clone(),
                        at_ms,
                    },
                );
            }
            Event::OutputsPruned { reason, outputs } => {
                if outputs.is_empty() {
                    return Err("a pruning of no outputs".into());
                }
                let t = &mut self.pruned[reason.index()];
                t.outputs += outputs.len() as u64;
                t.bytes += outputs.iter().map(|o| o.bytes).sum::<u64>();
            }
            Event::NotificationDelivered { n } | Event::NotificationDropped { n, .. } => {
                let Some(d) = self.outbox.remove(n) else {
                    return Err(format!("notification {n} is not owed"));
                };
                if let Some(c) = self.owed.get_mut(&d.sink) {
                    *c -= 1;
                    if *c == 0 {
                        self.owed.remove(&d.sink);
                    }
                }
            }
        }
        Ok(())
    }

    /// A commit seen: its job, queued at the back.
    fn see(
        &mut self,
        job: JobId,
        commit: CommitId,
        branch: Option<&str>,
        repository: Option<&str>,
        at_ms: u64,
    ) -> Result<(), String> {
        if job.0 != self.seen + 1 {
            return Err(format!("job {job} is not the next job number"));
        }
        // Commits that left memory are checked by whoever decided this
        // (the core, with the history indexes' answer).
        if self.by_commit.contains_key(&commit) {
            return Err(format!("commit {commit} was already seen"));
        }
        let branch_sym = match branch {
            Some(b) => Some(self.intern(b)?),
            None => None,
        };
        let repository_sym = match repository {
            Some(r) => Some(self.intern(r)?),
            None => None,
        };
        self.seen = job.0;
        self.jobs.insert(
            job,
            Job {
                id: job,
                commit,
                branch: branch_sym,
                repository: repository_sym,
                attempts: 0,
                lost: 0,
                status: JobStatus::Queued,
                seen_at_ms: at_ms,
            },
        );
        self.by_commit.insert(commit, job);
        self.enqueue_back(job, repository_sym);
        if let Some(b) = branch {
            self.set_tip(repository, b, commit);
        }
        Ok(())
    }

    fn enqueue_back(&mut self, job: JobId, repository: Option<Sym>) {
        self.queue.push_back(job);
        *self.queued.entry(repository).or_default() += 1;
    }

    fn enqueue_front(&mut self, job: JobId, repository: Option<Sym>) {
        self.queue.push_front(job);
        *self.queued.entry(repository).or_default() += 1;
    }

    /// Takes a queued job off the queue.
    fn dequeue(&mut self, job: JobId) {
        let repository = self.job(job).and_then(|j| j.repository);
        remove_from_queue(&mut self.queue, job);
        if let Some(n) = self.queued.get_mut(&repository) {
            *n -= 1;
            if *n == 0 {
                self.queued.remove(&repository);
            }
        }
    }

    /// Moves the branch's mark to `job` unless a newer job marks it.
    fn mark_branch(
        &mut self,
        repository: Option<String>,
        branch: String,
        job: JobId,
        outcome: Outcome,
    ) {
        if outcome == Outcome::Cancelled {
            return;
        }
        let mark = BranchMark { job, outcome };
        let marks = match repository {
            None => &mut self.branch_marks,
            Some(r) => self.repo_marks.entry(r).or_default(),
        };
        match marks.get_mut(&branch) {
            Some(m) if m.job > job => {}
            Some(m) => *m = mark,
            None => {
                marks.insert(branch, mark);
            }
        }
    }

    /// The default repository's branch's newest finished job and its
    /// outcome, if any finished.
    pub fn branch_mark(&self, branch: &str) -> Option<BranchMark> {
        self.branch_marks.get(branch).copied()
    }

    /// As [`State::branch_mark`], for the branch of a repository.
    pub fn branch_mark_in(&self, repository: Option<&str>, branch: &str) -> Option<BranchMark> {
        match repository {
            None => self.branch_mark(branch),
            Some(r) => self.repo_marks.get(r)?.get(branch).copied(),
        }
    }

    /// Notifications owed, oldest first.
    pub fn outbox(&self) -> &BTreeMap<u64, Due> {
        &self.outbox
    }

    /// How many notifications are owed to `sink`.
    pub fn owed(&self, sink: &str) -> usize {
        self.owed.get(sink).copied().unwrap_or(0)
    }

    /// The number the next due notification gets.
    pub fn next_notice(&self) -> u64 {
        self.notices + 1
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut Job, String> {
        let seen = self.seen;
        self.jobs.get_mut(&id).ok_or_else(|| match id.0 {
            n if n >= 1 && n <= seen => format!("job {id} is not in memory"),
            _ => format!("job {id} does not exist"),
        })
    }

    /// A job in memory (unfinished, or among the recently finished).
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// The job of a commit, if it is in memory; a commit that is not may
    /// still be in the history indexes.
    pub fn job_for_commit(&self, commit: &CommitId) -> Option<&Job> {
        self.jobs.get(self.by_commit.get(commit)?)
    }

    /// The jobs in memory, by number.
    pub fn jobs(&self) -> impl DoubleEndedIterator<Item = &Job> + '_ {
        self.jobs.values()
    }

    /// The jobs in memory numbered below `before`, newest first.
    pub fn jobs_before(&self, before: JobId) -> impl Iterator<Item = &Job> + '_ {
        self.jobs.range(..before).rev().map(|(_, j)| j)
    }

    /// How many jobs are in memory.
    pub fn jobs_in_memory(&self) -> usize {
        self.jobs.len()
    }

    /// How many jobs were ever seen.
    pub fn jobs_seen(&self) -> u64 {
        self.seen
    }

    pub fn queue(&self) -> impl Iterator<Item = &Job> + '_ {
        self.queue.iter().filter_map(|id| self.job(*id))
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn queue_front(&self) -> Option<JobId> {
        self.queue.front().copied()
    }

    pub fn holder(&self, runner: &str) -> Option<JobRef> {
        self.holders.get(runner).copied()
    }

    pub fn holders(&self) -> impl Iterator<Item = (&RunnerName, &JobRef)> + '_ {
        self.holders.iter()
    }

    /// The default repository's branch tips.
    pub fn branch_tips(&self) -> &BTreeMap<String, CommitId> {
        &self.branch_tips
    }

    /// A repository's branch tips (`None` for a named one never seen).
    pub fn tips_of(&self, repository: Option<&str>) -> Option<&BTreeMap<String, CommitId>> {
        match repository {
            None => Some(&self.branch_tips),
            Some(r) => self.repo_tips.get(r),
        }
    }

    /// Each named repository's branch tips, by name.
    pub fn repo_tips(&self) -> &BTreeMap<String, BTreeMap<String, CommitId>> {
        &self.repo_tips
    }

    /// How many jobs each repository (by its interned name; `None` the
    /// default) has queued; repositories with none are absent.
    pub fn queued_by_repository(&self) -> &BTreeMap<Option<Sym>, usize> {
        &self.queued
    }

    pub fn next_job_id(&self) -> JobId {
        JobId(self.seen + 1)
    }

    /// Jobs with no final outcome yet.
    pub fn unfinished(&self) -> usize {
        (self.seen - self.results) as usize
    }
}

/// Where an outcome counts in [`State::outcome_counts`].
pub fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Pass => 0,
        Outcome::Fail => 1,
        Outcome::Timeout => 2,
        Outcome::Error => 3,
        Outcome::Cancelled => 4,
    }
}

fn remove_from_queue(queue: &mut VecDeque<JobId>, job: JobId) {
    if queue.front() == Some(&job) {
        queue.pop_front();
    } else if let Some(pos) = queue.iter().position(|j| *j == job) {
        queue.remove(pos);
    }
}
