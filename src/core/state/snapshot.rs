//! The snapshot layout of a [`State`]: written and read by hand, field by
//! field, with LEB128 varints.
//!
//! Why not serde and bincode, like everything else: restart time is the
//! time to decode the snapshot, and a state holds one job per commit ever
//! seen. Through serde, a million-event history (a third of a million
//! jobs) took ~105 ms to decode; this loop takes a fraction of that, on
//! bytes of about the same size. It is the one place where the layout is
//! spelled out by hand, so it is versioned on its own
//! (`store::format::SNAPSHOT_VERSION`) and checked on the way in: a
//! snapshot that does not decode to a consistent state is refused, never
//! half-used.
//!
//! Layout (every integer a varint unless noted):
//! `last_seq results window seen archived` and the five outcome counts
//! (since snapshot version 6, which holds only the jobs in memory), names (`n`, then `len bytes` each), branch tips
//! (`n`, then `branch commit` each), holders (`n`, then `runner job
//! attempt` each), queue (`n`, then job numbers), jobs in memory (`n`, then
//! each job in number order, its number first), the finish order (`n`, then
//! job numbers). A string is `len bytes` (UTF-8); a commit is its
//! length byte (20 or 32) and its bytes; an optional value is `0` for none
//! or the value + 1. A job: `commit branch? attempts lost seen_at_ms` and a
//! status byte: `0` queued, `1` running (`runner since_ms`), `2` done (`runner?
//! attempt outcome-byte exit_code? duration_ms tests? message output_bytes
//! at_ms`), where `exit_code` is zigzag-encoded, `tests` is a presence
//! byte then five counts and `message` a string inline; `repository?` (the
//! named repository's interned name) follows `branch?`. Then (since snapshot version 5) the
//! notifications: `notices`, the outbox (`n`, then `n sink at_ms` and the
//! notice: `kind-byte job commit branch? attempt state-byte runner?
//! message tests? duration_ms`, strings inline, `state-byte` 0 queued, 1
//! running, 2 + outcome-byte finished), and the branch marks (`n`, then
//! `branch job outcome-byte` each), then the named repositories' branch
//! tips (`n`, then `repository` and its tips as above) and branch marks
//! (`n`, then `repository` and its marks as above).

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{BranchMark, Due, Finished, Index, Job, JobStatus, State, Sym};
use crate::core::event::{Notice, NoticeKind, NoticeState, Outcome, TestCounts};
use crate::core::ids::{CommitId, JobId, JobRef};

/// Encodes `state` (without its derived indexes), appended to `out`.
pub(super) fn encode(state: &State, out: &mut Vec<u8>) {
    out.reserve(64 + state.jobs.len() * 64);
    let mut w = Writer(out);
    w.uint(state.last_seq);
    w.uint(state.results);
    w.uint(state.window() as u64);
    w.uint(state.seen);
    w.uint(state.archived);
    for n in state.outcomes {
        w.uint(n);
    }
    w.uint(state.names.len() as u64);
    for n in &state.names {
        w.str(n);
    }
    write_tips(&mut w, &state.branch_tips);
    w.uint(state.holders.len() as u64);
    for (r, h) in &state.holders {
        w.str(r);
        w.uint(h.job.0);
        w.uint(h.attempt.into());
    }
    w.uint(state.queue.len() as u64);
    for j in &state.queue {
        w.uint(j.0);
    }
    w.uint(state.jobs.len() as u64);
    for j in state.jobs.values() {
        w.uint(j.id.0);
        w.commit(&j.commit);
        w.opt(j.branch.map(|s| s.0.into()));
        w.opt(j.repository.map(|s| s.0.into()));
        w.uint(j.attempts.into());
        w.uint(j.lost.into());
        w.uint(j.seen_at_ms);
        match j.status {
            JobStatus::Queued => w.byte(0),
            JobStatus::Running { runner, since_ms } => {
                w.byte(1);
                w.uint(runner.0.into());
                w.uint(since_ms);
            }
            JobStatus::Done(f) => {
                w.byte(2);
                w.opt(f.runner.map(|s| s.0.into()));
                w.uint(f.attempt.into());
                w.byte(outcome_byte(f.outcome));
                w.opt(f.exit_code.map(zigzag));
                w.uint(f.duration_ms);
                write_tests(&mut w, f.tests);
                w.str(state.message(j.id));
                w.uint(f.output_bytes);
                w.uint(f.at_ms);
            }
        }
    }
    w.uint(state.finished.len() as u64);
    for j in &state.finished {
        w.uint(j.0);
    }
    w.uint(state.notices);
    w.uint(state.outbox.len() as u64);
    for d in state.outbox.values() {
        w.uint(d.n);
        w.str(&d.sink);
        w.uint(d.at_ms);
        write_notice(&mut w, &d.notice);
    }
    write_marks(&mut w, &state.branch_marks);
    w.uint(state.repo_tips.len() as u64);
    for (repo, tips) in &state.repo_tips {
        w.str(repo);
        write_tips(&mut w, tips);
    }
    w.uint(state.repo_marks.len() as u64);
    for (repo, marks) in &state.repo_marks {
        w.str(repo);
        write_marks(&mut w, marks);
    }
    for t in &state.pruned {
        w.uint(t.outputs);
        w.uint(t.bytes);
    }
}

fn write_tips(w: &mut Writer<'_>, tips: &BTreeMap<String, CommitId>) {
    w.uint(tips.len() as u64);
    for (b, c) in tips {
        w.str(b);
        w.commit(c);
    }
}

fn read_tips(r: &mut Reader<'_>) -> Result<BTreeMap<String, CommitId>, String> {
    let mut tips = BTreeMap::new();
    for _ in 0..r.len(2)? {
        let b = r.str()?.to_owned();
        tips.insert(b, r.commit()?);
    }
    Ok(tips)
}

fn write_marks(w: &mut Writer<'_>, marks: &BTreeMap<String, BranchMark>) {
    w.uint(marks.len() as u64);
    for (b, m) in marks {
        w.str(b);
        w.uint(m.job.0);
        w.byte(outcome_byte(m.outcome));
    }
}

fn read_marks(r: &mut Reader<'_>) -> Result<BTreeMap<String, BranchMark>, String> {
    let mut marks = BTreeMap::new();
    for _ in 0..r.len(3)? {
        let b = r.str()?.to_owned();
        let job = JobId(r.uint()?);
        let outcome = byte_outcome(r.byte()?)?;
        marks.insert(b, BranchMark { job, outcome });
    }
    Ok(marks)
}

fn write_notice(w: &mut Writer<'_>, n: &Notice) {
    w.byte(match n.kind {
        NoticeKind::Result => 0,
        NoticeKind::BranchBroken => 1,
        NoticeKind::BranchFixed => 2,
        NoticeKind::Status => 3,
    });
    w.uint(n.job.0);
    w.commit(&n.commit);
    w.opt_str(n.repository.as_deref());
    w.opt_str(n.branch.as_deref());
    w.uint(n.attempt.into());
    match n.state {
        NoticeState::Queued => w.byte(0),
        NoticeState::Running => w.byte(1),
        NoticeState::Finished(o) => {
            w.byte(2);
            w.byte(outcome_byte(o));
        }
    }
    w.opt_str(n.runner.as_deref());
    w.str(&n.message);
    write_tests(w, n.tests);
    w.uint(n.duration_ms);
}

fn write_tests(w: &mut Writer<'_>, tests: Option<TestCounts>) {
    match tests {
        None => w.byte(0),
        Some(t) => {
            w.byte(1);
            for n in [t.total, t.passed, t.failed, t.errors, t.skipped] {
                w.uint(n.into());
            }
        }
    }
}

fn read_tests(r: &mut Reader<'_>) -> Result<Option<TestCounts>, String> {
    Ok(match r.byte()? {
        0 => None,
        1 => Some(TestCounts {
            total: r.u32()?,
            passed: r.u32()?,
            failed: r.u32()?,
            errors: r.u32()?,
            skipped: r.u32()?,
        }),
        b => return Err(format!("test counts marker {b}")),
    })
}

fn read_notice(r: &mut Reader<'_>) -> Result<Notice, String> {
    let kind = match r.byte()? {
        0 => NoticeKind::Result,
        1 => NoticeKind::BranchBroken,
        2 => NoticeKind::BranchFixed,
        3 => NoticeKind::Status,
        b => return Err(format!("notice kind byte {b}")),
    };
    let job = JobId(r.uint()?);
    let commit = r.commit()?;
    let repository = r.opt_str()?;
    let branch = r.opt_str()?;
    let attempt = r.u32()?;
    let state = match r.byte()? {
        0 => NoticeState::Queued,
        1 => NoticeState::Running,
        2 => NoticeState::Finished(byte_outcome(r.byte()?)?),
        b => return Err(format!("notice state byte {b}")),
    };
    Ok(Notice {
        kind,
        job,
        commit,
        repository,
        branch,
        attempt,
        state,
        runner: r.opt_str()?,
        message: r.str()?.to_owned(),
        tests: read_tests(r)?,
        duration_ms: r.uint()?,
    })
}

/// Decodes what [`encode`] wrote, checking that every reference inside
/// (names, job numbers) points at something that exists. `with_pruned`:
/// the layout ends with the retention counters (snapshot version 7); a
/// version 6 snapshot was written by a build that never pruned, so its
/// counters are zero.
pub(super) fn decode(bytes: &[u8], with_pruned: bool) -> Result<State, String> {
    let mut r = Reader { bytes, pos: 0 };
    let last_seq = r.uint()?;
    let results = r.uint()?;
    let window = usize::try_from(r.uint()?).map_err(|_| "window too large")?;
    if window == 0 {
        return Err("a window of 0 jobs".into());
    }
    let seen = r.uint()?;
    let archived = r.uint()?;
    let mut outcomes = [0u64; 5];
    for n in &mut outcomes {
        *n = r.uint()?;
    }
    if outcomes.iter().sum::<u64>() != results || results > seen {
        return Err(format!(
            "{results} results of {seen} jobs, by outcome {outcomes:?}"
        ));
    }
    let n = r.len(1)?;
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        names.push(Box::<str>::from(r.str()?));
    }
    let sym = |v: u64, what: &str| -> Result<Sym, String> {
        if v < names.len() as u64 {
            Ok(Sym(v as u32))
        } else {
            Err(format!("{what} names string {v} of {}", names.len()))
        }
    };
    let branch_tips = read_tips(&mut r)?;
    let mut holders = BTreeMap::new();
    for _ in 0..r.len(3)? {
        let runner = r.str()?.to_owned();
        let job = JobId(r.uint()?);
        let attempt = r.u32()?;
        holders.insert(runner, JobRef { job, attempt });
    }
    let n = r.len(1)?;
    let mut queue = VecDeque::with_capacity(n);
    for _ in 0..n {
        queue.push_back(JobId(r.uint()?));
    }
    let n = r.len(24)?;
    let mut jobs = BTreeMap::new();
    let mut messages = HashMap::default();
    let mut finished_in_memory = 0;
    for _ in 0..n {
        let id = JobId(r.uint()?);
        if id.0 == 0 || id.0 > seen || jobs.last_key_value().is_some_and(|(k, _)| *k >= id) {
            return Err(format!("job {id} out of order or never seen"));
        }
        let commit = r.commit()?;
        let branch = r.opt()?.map(|v| sym(v, "a branch")).transpose()?;
        let repository = r.opt()?.map(|v| sym(v, "a repository")).transpose()?;
        let attempts = r.u32()?;
        let lost = r.u32()?;
        let seen_at_ms = r.uint()?;
        let status = match r.byte()? {
            0 => JobStatus::Queued,
            1 => JobStatus::Running {
                runner: sym(r.uint()?, "a runner")?,
                since_ms: r.uint()?,
            },
            2 => {
                let runner = r.opt()?.map(|v| sym(v, "a runner")).transpose()?;
                let attempt = r.u32()?;
                let outcome = byte_outcome(r.byte()?)?;
                let exit_code = match r.opt()? {
                    None => None,
                    Some(z) => Some(unzigzag(z)?),
                };
                let duration_ms = r.uint()?;
                let tests = read_tests(&mut r)?;
                let message = r.str()?;
                if !message.is_empty() {
                    messages.insert(id, Box::<str>::from(message));
                }
                finished_in_memory += 1;
                JobStatus::Done(Finished {
                    runner,
                    attempt,
                    outcome,
                    exit_code,
                    duration_ms,
                    tests,
                    output_bytes: r.uint()?,
                    at_ms: r.uint()?,
                })
            }
            b => return Err(format!("job {id} has status byte {b}")),
        };
        jobs.insert(
            id,
            Job {
                id,
                commit,
                branch,
                repository,
                attempts,
                lost,
                status,
                seen_at_ms,
            },
        );
    }
    let n = r.len(1)?;
    let mut finished = VecDeque::with_capacity(n);
    for _ in 0..n {
        let j = JobId(r.uint()?);
        if j.0 == 0 || j.0 > seen {
            return Err(format!("the finish order names job {j}, never seen"));
        }
        finished.push_back(j);
    }
    let notices = r.uint()?;
    let mut outbox = BTreeMap::new();
    for _ in 0..r.len(8)? {
        let n = r.uint()?;
        let sink = r.str()?.to_owned();
        let at_ms = r.uint()?;
        let notice = read_notice(&mut r)?;
        if n == 0 || n > notices {
            return Err(format!("notification {n} of {notices}"));
        }
        outbox.insert(
            n,
            Due {
                n,
                sink,
                notice,
                at_ms,
            },
        );
    }
    let branch_marks = read_marks(&mut r)?;
    let mut repo_tips = BTreeMap::new();
    for _ in 0..r.len(2)? {
        let repo = r.str()?.to_owned();
        repo_tips.insert(repo, read_tips(&mut r)?);
    }
    let mut repo_marks = BTreeMap::new();
    for _ in 0..r.len(2)? {
        let repo = r.str()?.to_owned();
        repo_marks.insert(repo, read_marks(&mut r)?);
    }
    let mut pruned = [crate::core::retention::PrunedTotals::default(); 2];
    if with_pruned {
        for t in &mut pruned {
            t.outputs = r.uint()?;
            t.bytes = r.uint()?;
        }
    }
    if r.pos != bytes.len() {
        return Err(format!("{} bytes left over", bytes.len() - r.pos));
    }
    let in_memory = |j: JobId| jobs.contains_key(&j);
    let exists = |j: JobId| j.0 >= 1 && j.0 <= seen;
    if let Some(j) = queue.iter().find(|&&j| !in_memory(j)) {
        return Err(format!("the queue holds job {j}, which is not in memory"));
    }
    if let Some((r, h)) = holders.iter().find(|(_, h)| !in_memory(h.job)) {
        return Err(format!("runner {r} holds {h}, which is not in memory"));
    }
    if let Some((b, m)) = branch_marks
        .iter()
        .chain(repo_marks.values().flatten())
        .find(|(_, m)| !exists(m.job))
    {
        return Err(format!(
            "branch {b} is marked by job {}, which does not exist",
            m.job
        ));
    }
    if let Some(d) = outbox.values().find(|d| !exists(d.notice.job)) {
        return Err(format!(
            "notification {} is about job {}, which does not exist",
            d.n, d.notice.job
        ));
    }
    let mut state = State {
        last_seq,
        window,
        jobs,
        seen,
        finished,
        finished_in_memory,
        messages,
        archived,
        outgoing: Vec::new(),
        outcomes,
        queue,
        holders,
        branch_tips,
        results,
        names,
        by_commit: HashMap::default(),
        by_name: Index::default(),
        outbox,
        notices,
        owed: BTreeMap::new(),
        branch_marks,
        repo_tips,
        repo_marks,
        queued: BTreeMap::new(),
        pruned,
    };
    state.rebuild_indexes()?;
    Ok(state)
}

/// An outcome's byte: its place in the state's counts, one numbering.
fn outcome_byte(o: Outcome) -> u8 {
    super::outcome_index(o) as u8
}

fn byte_outcome(b: u8) -> Result<Outcome, String> {
    Ok(match b {
        0 => Outcome::Pass,
        1 => Outcome::Fail,
        2 => Outcome::Timeout,
        3 => Outcome::Error,
        4 => Outcome::Cancelled,
        _ => return Err(format!("outcome byte {b}")),
    })
}

fn zigzag(v: i32) -> u64 {
    ((v << 1) ^ (v >> 31)) as u32 as u64
}

fn unzigzag(z: u64) -> Result<i32, String> {
    let z = u32::try_from(z).map_err(|_| format!("exit code {z} out of range"))?;
    Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn opt(&mut self, v: Option<u64>) {
        self.uint(v.map_or(0, |v| v + 1));
    }

    fn str(&mut self, s: &str) {
        self.uint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.byte(0),
            Some(s) => {
                self.byte(1);
                self.str(s);
            }
        }
    }

    fn commit(&mut self, c: &CommitId) {
        let b = c.as_bytes();
        self.0.push(b.len() as u8);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> String {
        format!("truncated at byte {}", self.pos)
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                if shift == 63 && b > 1 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(format!("an integer too large at byte {}", self.pos))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let v = self.uint()?;
        u32::try_from(v).map_err(|_| format!("{v} out of range at byte {}", self.pos))
    }

    fn opt(&mut self) -> Result<Option<u64>, String> {
        Ok(self.uint()?.checked_sub(1))
    }

    /// A count of items at least `min_bytes` long each: bounded by what is
    /// left, so a damaged count cannot ask for a huge allocation.
    fn len(&mut self, min_bytes: usize) -> Result<usize, String> {
        let n = self.uint()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes as u64) > left {
            return Err(format!("a count of {n} with {left} bytes left"));
        }
        Ok(n as usize)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.truncated())?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len(1)?;
        let at = self.pos;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| format!("a string at byte {at} is not UTF-8"))
    }

    fn opt_str(&mut self) -> Result<Option<String>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?.to_owned())),
            b => Err(format!("optional string marker {b}")),
        }
    }

    fn commit(&mut self) -> Result<CommitId, String> {
        let n = self.byte()? as usize;
        let at = self.pos;
        CommitId::from_bytes(self.take(n)?)
            .ok_or_else(|| format!("a commit id of {n} bytes at byte {at}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{Event, JobReport, LostReason};

    fn enc(s: &State) -> Vec<u8> {
        let mut out = Vec::new();
        encode(s, &mut out);
        out
    }

    fn commit(n: u8, len: usize) -> CommitId {
        CommitId::from_bytes(&vec![n; len]).unwrap()
    }

    /// A state with a job in every status and every optional field both
    /// present and absent, values at their extremes.
    fn varied() -> State {
        let mut s = State::new();
        let mut at = 1_700_000_000_000;
        let mut apply = |s: &mut State, e: Event| {
            at += 1;
            s.apply(&e, at).unwrap();
            s.last_seq += 1;
        };
        for (i, branch) in [Some("main"), None, Some("feature/ü"), Some("main"), None]
            .into_iter()
            .enumerate()
        {
            apply(
                &mut s,
                Event::CommitSeen {
                    job: JobId(i as u64 + 1),
                    commit: commit(i as u8 + 1, if i == 2 { 32 } else { 20 }),
                    branch: branch.map(Into::into),
                },
            );
        }
        let assign = |job: u64, runner: &str, attempt: u32| Event::JobAssigned {
            job: JobId(job),
            commit: commit(job as u8, if job == 3 { 32 } else { 20 }),
            runner: runner.into(),
            attempt,
        };
        let result =
            |job: u64, runner: Option<&str>, attempt: u32, report: JobReport| Event::Result {
                job: JobId(job),
                commit: commit(job as u8, if job == 3 { 32 } else { 20 }),
                runner: runner.map(Into::into),
                attempt,
                report,
                output_bytes: u64::MAX,
            };
        apply(&mut s, assign(1, "r1", 1));
        apply(
            &mut s,
            Event::HeartbeatLost {
                runner: "r1".into(),
                job: JobId(1),
                attempt: 1,
                reason: LostReason::HeartbeatTimeout,
            },
        );
        apply(&mut s, assign(1, "r2", 2));
        apply(
            &mut s,
            result(
                1,
                Some("r2"),
                2,
                JobReport {
                    outcome: Outcome::Fail,
                    exit_code: Some(i32::MIN),
                    duration_ms: u64::MAX,
                    tests: Some(TestCounts {
                        total: u32::MAX,
                        passed: 0,
                        failed: 7,
                        errors: 1,
                        skipped: 2,
                    }),
                    message: "FAILED (failures=7)".into(),
                },
            ),
        );
        apply(&mut s, assign(2, "r1", 1));
        apply(
            &mut s,
            result(
                2,
                Some("r1"),
                1,
                JobReport {
                    outcome: Outcome::Timeout,
                    exit_code: None,
                    duration_ms: 0,
                    tests: None,
                    message: String::new(),
                },
            ),
        );
        apply(
            &mut s,
            result(
                4,
                None,
                0,
                JobReport {
                    outcome: Outcome::Error,
                    exit_code: Some(-1),
                    duration_ms: 1,
                    tests: None,
                    message: "gave up".into(),
                },
            ),
        );
        apply(&mut s, assign(3, "r3", 1));
        apply(
            &mut s,
            Event::BranchMoved {
                branch: "release".into(),
                tip: commit(9, 20),
            },
        );
        // Named repositories: a queued job, a finished one that marks its
        // branch, a branch moved.
        for (job, repo) in [(6, "app"), (7, "team/lib")] {
            apply(
                &mut s,
                Event::CommitSeenIn {
                    job: JobId(job),
                    commit: commit(job as u8, 20),
                    branch: Some("main".into()),
                    repository: repo.into(),
                },
            );
        }
        apply(&mut s, assign(7, "r1", 1));
        apply(
            &mut s,
            result(
                7,
                Some("r1"),
                1,
                JobReport {
                    outcome: Outcome::Pass,
                    exit_code: Some(0),
                    duration_ms: 5,
                    tests: None,
                    message: "ok".into(),
                },
            ),
        );
        apply(
            &mut s,
            Event::BranchMovedIn {
                repository: "app".into(),
                branch: "dev".into(),
                tip: commit(6, 20),
            },
        );
        apply(
            &mut s,
            Event::OutputsPruned {
                reason: crate::core::PruneReason::Size,
                outputs: vec![crate::core::StoredOutput {
                    job: JobRef {
                        job: JobId(2),
                        attempt: 1,
                    },
                    commit: commit(2, 20),
                    at_ms: 5,
                    bytes: u64::MAX / 2,
                }],
            },
        );
        s
    }

    #[test]
    fn a_layout_6_snapshot_reads_with_nothing_pruned() {
        // Layout 7 is layout 6 with the four retention counters at the end.
        let mut s = varied();
        s.pruned = Default::default();
        let bytes = enc(&s);
        let v6 = &bytes[..bytes.len() - 4];
        assert_eq!(decode(v6, false).unwrap(), s);
        assert!(decode(v6, true).is_err());
    }

    #[test]
    fn a_state_survives_its_snapshot() {
        let s = varied();
        assert!(s.jobs.values().any(|j| j.status == JobStatus::Queued));
        assert!(
            s.jobs
                .values()
                .any(|j| matches!(j.status, JobStatus::Running { .. }))
        );
        let back = decode(&enc(&s), true).unwrap();
        assert_eq!(back, s);
        // The rebuilt indexes answer as the originals do.
        for j in s.jobs.values() {
            assert_eq!(back.job_for_commit(&j.commit).map(|b| b.id), Some(j.id));
        }
        assert_eq!(back.sym("feature/ü"), s.sym("feature/ü"));
        assert_eq!(decode(&enc(&State::new()), true).unwrap(), State::new());
    }

    #[test]
    fn every_truncation_and_any_extra_byte_is_refused() {
        let bytes = enc(&varied());
        for n in 0..bytes.len() {
            assert!(
                decode(&bytes[..n], true).is_err(),
                "a prefix of {n} bytes decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, true).unwrap_err().contains("left over"));
    }

    #[test]
    fn damaged_references_are_refused_not_followed() {
        let s = varied();
        let mut bad = s.clone();
        bad.queue.push_back(JobId(99));
        assert!(decode(&enc(&bad), true).unwrap_err().contains("job 99"));
        let mut bad = s.clone();
        bad.jobs.get_mut(&JobId(2)).unwrap().branch = Some(Sym(1000));
        assert!(
            decode(&enc(&bad), true)
                .unwrap_err()
                .contains("names string 1000")
        );
        let mut bad = s.clone();
        bad.jobs.get_mut(&JobId(2)).unwrap().commit = bad.jobs[&JobId(1)].commit;
        assert!(decode(&enc(&bad), true).unwrap_err().contains("two jobs"));
        let mut bad = s;
        bad.names.push("main".into());
        assert!(
            decode(&enc(&bad), true)
                .unwrap_err()
                .contains("interned twice")
        );
    }

    #[test]
    fn a_huge_count_does_not_allocate() {
        let mut bytes = Vec::new();
        let mut w = Writer(&mut bytes);
        w.uint(1); // last_seq
        w.uint(0); // results
        w.uint(3); // window
        w.uint(0); // seen
        w.uint(0); // archived
        for _ in 0..5 {
            w.uint(0); // by outcome
        }
        w.uint(u64::MAX / 2); // names
        assert!(decode(&bytes, true).unwrap_err().contains("a count of"));
    }

    #[test]
    fn varints_and_zigzag_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut bytes = Vec::new();
            Writer(&mut bytes).uint(v);
            let mut r = Reader {
                bytes: &bytes,
                pos: 0,
            };
            assert_eq!(r.uint().unwrap(), v);
            assert_eq!(r.pos, bytes.len());
        }
        // An eleventh byte, or a tenth one above 1, overflows a u64.
        let mut r = Reader {
            bytes: &[0xff; 10],
            pos: 0,
        };
        assert!(r.uint().is_err());
        let mut r = Reader {
            bytes: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            pos: 0,
        };
        assert!(r.uint().is_err());
        for v in [0, 1, -1, i32::MIN, i32::MAX] {
            assert_eq!(unzigzag(zigzag(v)).unwrap(), v);
        }
    }
}
