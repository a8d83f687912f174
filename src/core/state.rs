//! The dispatcher's durable state, derived from the log by a pure fold.
//!
//! `State::apply` is the only way state changes. Replaying the same records
//! always gives the same `State`; that is what makes restart and
//! `replay --verify` exact.
//!
//! Compact by design: the state holds one [`Job`] per commit ever seen, so a
//! job is plain data with no heap allocation of its own. Branch names,
//! runner names and result messages are interned into one table of the
//! state ([`Sym`] indexes it, in order of first appearance, so interning is
//! part of the pure fold), and commits are indexed by an open-addressing
//! table of job numbers that is rebuilt, not stored, when a snapshot loads.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;

/// foldhash, seeded per process: several times faster than SipHash on a
/// commit id, and crafted ids still cannot aim at a bucket.
type RandomState = foldhash::quality::RandomState;

mod snapshot;

use super::event::{Event, JobReport, LostReason, Notice, Outcome, Record, TestCounts};
use super::ids::{CommitId, JobId, JobRef, RunnerName};

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
    pub message: Sym,
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

/// The key of a commit in the index: all of its bytes. (Not just a prefix:
/// ids made up by tools and tests share long prefixes.)
fn commit_key(c: &CommitId) -> &[u8] {
    c.as_bytes()
}

/// Everything the log says, folded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Sequence number of the last applied record (0 = empty log).
    last_seq: u64,
    jobs: Vec<Job>,
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
    /// Interned strings, in order of first appearance; `Sym(i)` is `names[i]`.
    names: Vec<Box<str>>,
    /// Commit -> job number (derived from `jobs`, rebuilt on load).
    by_commit: Index,
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
}

impl State {
    pub fn new() -> State {
        State::default()
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
        snapshot::decode(bytes).map_err(|why| BadSnapshot { why })
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
        let State {
            jobs,
            names,
            by_commit,
            by_name,
            ..
        } = self;
        let (hc, hn) = (by_commit.hasher.clone(), by_name.hasher.clone());
        by_commit.reserve(jobs.len(), |v| {
            hc.hash_one(commit_key(&jobs[v as usize - 1].commit))
        });
        for (i, j) in jobs.iter().enumerate() {
            let h = hc.hash_one(commit_key(&j.commit));
            if !by_commit
                .insert_unique(h, i as u32 + 1, |v| jobs[v as usize - 1].commit == j.commit)
            {
                return Err(format!("commit {} has two jobs", j.commit));
            }
        }
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
    pub fn report(&self, f: &Finished) -> JobReport {
        JobReport {
            outcome: f.outcome,
            exit_code: f.exit_code,
            duration_ms: f.duration_ms,
            tests: f.tests,
            message: self.name(f.message).to_string(),
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
                let message = self.intern(&report.message)?;
                let j = self.job_mut(*job)?;
                j.status = JobStatus::Done(Finished {
                    runner: runner_sym,
                    attempt: *attempt,
                    outcome: report.outcome,
                    exit_code: report.exit_code,
                    duration_ms: report.duration_ms,
                    tests: report.tests,
                    message,
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
                self.results += 1;
                if let Some(j) = self.job(*job)
                    && let Some(b) = j.branch
                {
                    let branch = self.name(b).to_string();
                    let repository = j.repository.map(|r| self.name(r).to_string());
                    self.mark_branch(repository, branch, *job, report.outcome);
                }
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
                let message = self.intern("cancelled")?;
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
                    message,
                    output_bytes: 0,
                    at_ms,
                });
                self.results += 1;
            }
            Event::JobRetried { job, attempt, .. } => {
                let j = self.job_mut(*job)?;
                if !matches!(j.status, JobStatus::Done(_)) || *attempt != j.attempts {
                    return Err(format!(
                        "job {job} is not finished at attempt {attempt} to be retried"
                    ));
                }
                j.status = JobStatus::Queued;
                j.lost = 0;
                let repository = j.repository;
                self.enqueue_back(*job, repository);
                self.results -= 1;
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
        if job.0 != self.jobs.len() as u64 + 1 {
            return Err(format!("job {job} is not the next job number"));
        }
        if job.0 >= u32::MAX as u64 {
            return Err(format!("job {job}: too many jobs"));
        }
        let h = self.by_commit.hash(&commit_key(&commit));
        let jobs = &self.jobs;
        if self
            .by_commit
            .find(h, |v| jobs[v as usize - 1].commit == commit)
            .is_some()
        {
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
        self.jobs.push(Job {
            id: job,
            commit,
            branch: branch_sym,
            repository: repository_sym,
            attempts: 0,
            lost: 0,
            status: JobStatus::Queued,
            seen_at_ms: at_ms,
        });
        let (hc, jobs) = (self.by_commit.hasher.clone(), &self.jobs);
        self.by_commit
            .reserve(1, |v| hc.hash_one(commit_key(&jobs[v as usize - 1].commit)));
        self.by_commit.insert_new(h, job.0 as u32);
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
        let idx = id.0.checked_sub(1).ok_or("job 0 does not exist")? as usize;
        self.jobs
            .get_mut(idx)
            .ok_or_else(|| format!("job {id} does not exist"))
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        let idx = id.0.checked_sub(1)? as usize;
        self.jobs.get(idx)
    }

    pub fn job_for_commit(&self, commit: &CommitId) -> Option<&Job> {
        let jobs = &self.jobs;
        let v = self
            .by_commit
            .find(self.by_commit.hash(&commit_key(commit)), |v| {
                jobs[v as usize - 1].commit == *commit
            })?;
        jobs.get(v as usize - 1)
    }

    pub fn jobs(&self) -> &[Job] {
        &self.jobs
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
        JobId(self.jobs.len() as u64 + 1)
    }

    /// Jobs with no final outcome yet.
    pub fn unfinished(&self) -> usize {
        self.jobs.len() - self.results as usize
    }
}

fn remove_from_queue(queue: &mut VecDeque<JobId>, job: JobId) {
    if queue.front() == Some(&job) {
        queue.pop_front();
    } else if let Some(pos) = queue.iter().position(|j| *j == job) {
        queue.remove(pos);
    }
}
