//! Retention of stored test outputs: which outputs to drop, decided
//! without IO.
//!
//! Outputs are for people and grow without bound (up to 1 MiB an
//! attempt); the events are the history and are never dropped. What goes
//! is chosen here, from facts the shell reads out of the store (the total
//! bytes stored and a bounded page of the oldest outputs) and the policy
//! (`--keep-outputs-for`, `--keep-outputs-bytes`); the choice is logged as
//! `Event::OutputsPruned` and made durable before any output is deleted.
//! Like Jenkins' "discard old builds": the build's record stays, its log
//! goes.
//!
//! The rules, oldest first (by finishing time, then job number, then
//! attempt):
//! - an output older than the age limit goes (reason `age`);
//! - while the total is over the size limit, the oldest outputs go
//!   (reason `size`), however recent: a disk that fills up stops the
//!   dispatcher, which is worse than a missing log;
//! - an output of a job that is queued or running again (a retried job
//!   keeps its earlier attempts' outputs) never goes: somebody may be
//!   looking at it while its next attempt runs. A running attempt has no
//!   stored output yet (it is stored with its result), so what a follower
//!   is streaming is never touched.

use serde::{Deserialize, Serialize};

use super::ids::{CommitId, JobRef};

/// Why outputs were pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneReason {
    /// Older than `--keep-outputs-for`.
    Age,
    /// The stored outputs were over `--keep-outputs-bytes`.
    Size,
}

impl PruneReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PruneReason::Age => "age",
            PruneReason::Size => "size",
        }
    }

    /// Every reason, in the order of [`super::State::pruned_totals`].
    pub const ALL: [PruneReason; 2] = [PruneReason::Age, PruneReason::Size];

    pub fn index(self) -> usize {
        match self {
            PruneReason::Age => 0,
            PruneReason::Size => 1,
        }
    }
}

/// One stored output, as retention sees it: whose, when its attempt
/// finished (the `Result` record's stamp) and how big it is. The store
/// keeps these in finishing order; a pruning event lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoredOutput {
    pub job: JobRef,
    pub commit: CommitId,
    /// Wall-clock milliseconds of the attempt's `Result` record.
    pub at_ms: u64,
    pub bytes: u64,
}

impl StoredOutput {
    /// The order outputs age in: finishing time, then job, then attempt.
    pub fn age_key(&self) -> (u64, u64, u32) {
        (self.at_ms, self.job.job.0, self.job.attempt)
    }
}

/// One output retention removed, as `ci-tools pruned` lists it: which,
/// when and why. Derived from an `OutputsPruned` record (`seq`, its
/// stamp) and its place in it (`index`); `(seq, index)` orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedOutput {
    pub seq: u64,
    pub index: u32,
    /// When it was pruned (the record's stamp).
    pub at_ms: u64,
    pub reason: PruneReason,
    pub output: StoredOutput,
}

impl PrunedOutput {
    /// Its place among all pruned outputs (a cursor for pages).
    pub fn place(&self) -> (u64, u32) {
        (self.seq, self.index)
    }

    /// The outputs a record says were pruned, in order (none for any
    /// other event).
    pub fn of_record(rec: &super::event::Record) -> Vec<PrunedOutput> {
        match &rec.event {
            super::event::Event::OutputsPruned { reason, outputs } => outputs
                .iter()
                .zip(0u32..)
                .map(|(o, index)| PrunedOutput {
                    seq: rec.seq,
                    index,
                    at_ms: rec.at_ms,
                    reason: *reason,
                    output: *o,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// How many outputs retention removed, and how many bytes they held:
/// what the fold keeps of the pruning events (counters only, never a set
/// of jobs: memory must not grow with history).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedTotals {
    pub outputs: u64,
    pub bytes: u64,
}

/// What to keep (`--keep-outputs-for`, `--keep-outputs-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Outputs older than this go; `None`: kept whatever their age.
    pub keep_for_ms: Option<u64>,
    /// The stored outputs are kept at most this big; `None`: no limit.
    pub keep_bytes: Option<u64>,
}

/// 90 days: a quarter of history to look back at, as Buildkite keeps logs.
pub const DEFAULT_KEEP_FOR_MS: u64 = 90 * 24 * 3600 * 1000;

/// 10 GiB: ten thousand full (1 MiB) outputs, and room left on any disk a
/// dispatcher is likely to be given.
pub const DEFAULT_KEEP_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Most outputs one pruning event names (and one round of the shell reads
/// from the store): a round never holds the log writer for long, and an
/// event stays small.
pub const PRUNE_PAGE: usize = 256;

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_for_ms: Some(DEFAULT_KEEP_FOR_MS),
            keep_bytes: Some(DEFAULT_KEEP_BYTES),
        }
    }
}

impl RetentionPolicy {
    /// Nothing is ever pruned.
    pub const KEEP_ALL: RetentionPolicy = RetentionPolicy {
        keep_for_ms: None,
        keep_bytes: None,
    };

    /// How often the shell looks for outputs to prune: every minute, more
    /// often for a short age limit (a quarter of it, at least a second),
    /// so an output is gone at most a quarter late.
    pub fn every_ms(&self) -> u64 {
        let every = self.keep_for_ms.map_or(60_000, |k| k / 4);
        every.clamp(1000, 60_000)
    }

    /// Whether `stored_bytes` is over the size limit.
    pub fn over_size(&self, stored_bytes: u64) -> bool {
        self.keep_bytes.is_some_and(|limit| stored_bytes > limit)
    }
}

/// One pruning decision: outputs that go, for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prune {
    pub reason: PruneReason,
    pub outputs: Vec<StoredOutput>,
}

/// Chooses the outputs to drop among `oldest` (the oldest stored outputs,
/// in age order, [`StoredOutput::age_key`]), given the total stored
/// (`stored_bytes`, all outputs, not only these) and the wall clock now.
/// `protected` says which jobs' outputs must stay (queued or running
/// again). At most one [`Prune`] per reason, age first, each with at most
/// [`PRUNE_PAGE`] outputs; nothing when nothing is due. Pure: the same
/// facts give the same choice.
pub fn choose(
    policy: &RetentionPolicy,
    now_wall_ms: u64,
    stored_bytes: u64,
    oldest: &[StoredOutput],
    protected: impl Fn(JobRef) -> bool,
) -> Vec<Prune> {
    let mut total = stored_bytes;
    let mut age = Vec::new();
    let mut size = Vec::new();
    for o in oldest {
        if age.len() == PRUNE_PAGE || size.len() == PRUNE_PAGE {
            break;
        }
        if protected(o.job) {
            continue;
        }
        let expired = policy
            .keep_for_ms
            .is_some_and(|keep| o.at_ms.saturating_add(keep) <= now_wall_ms);
        if expired {
            age.push(*o);
        } else if policy.over_size(total) {
            size.push(*o);
        } else {
            // In age order: nothing after this one is older, and the size
            // is within the limit.
            break;
        }
        total = total.saturating_sub(o.bytes);
    }
    let mut out = Vec::new();
    for (reason, outputs) in [(PruneReason::Age, age), (PruneReason::Size, size)] {
        if !outputs.is_empty() {
            out.push(Prune { reason, outputs });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::JobId;

    fn out(job: u64, attempt: u32, at_ms: u64, bytes: u64) -> StoredOutput {
        StoredOutput {
            job: JobRef {
                job: JobId(job),
                attempt,
            },
            commit: CommitId::from_bytes(&[job as u8; 20]).unwrap(),
            at_ms,
            bytes,
        }
    }

    fn jobs(p: &Prune) -> Vec<u64> {
        p.outputs.iter().map(|o| o.job.job.0).collect()
    }

    const NONE: fn(JobRef) -> bool = |_| false;

    #[test]
    fn nothing_to_do_under_both_limits() {
        let policy = RetentionPolicy {
            keep_for_ms: Some(1000),
            keep_bytes: Some(100),
        };
        let oldest = [out(1, 1, 500, 10), out(2, 1, 600, 10)];
        assert!(choose(&policy, 1400, 20, &oldest, NONE).is_empty());
        assert!(choose(&policy, 0, 0, &[], NONE).is_empty());
        assert!(
            choose(
                &RetentionPolicy::KEEP_ALL,
                u64::MAX,
                u64::MAX,
                &oldest,
                NONE
            )
            .is_empty()
        );
    }

    #[test]
    fn age_takes_every_output_older_than_the_limit_and_stops_at_the_first_young_one() {
        let policy = RetentionPolicy {
            keep_for_ms: Some(1000),
            keep_bytes: None,
        };
        let oldest = [out(1, 1, 100, 10), out(2, 1, 200, 10), out(3, 1, 300, 10)];
        // Exactly the limit old counts as expired.
        let p = choose(&policy, 1200, 30, &oldest, NONE);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].reason, PruneReason::Age);
        assert_eq!(jobs(&p[0]), [1, 2]);
    }

    #[test]
    fn size_takes_the_oldest_until_the_total_fits() {
        let policy = RetentionPolicy {
            keep_for_ms: None,
            keep_bytes: Some(25),
        };
        let oldest = [
            out(1, 1, 100, 10),
            out(2, 1, 200, 10),
            out(3, 1, 300, 10),
            out(4, 1, 400, 10),
        ];
        let p = choose(&policy, 500, 40, &oldest, NONE);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].reason, PruneReason::Size);
        assert_eq!(jobs(&p[0]), [1, 2]);
        // Exactly at the limit is within it.
        let policy = RetentionPolicy {
            keep_bytes: Some(40),
            ..policy
        };
        assert!(choose(&policy, 500, 40, &oldest, NONE).is_empty());
    }

    #[test]
    fn age_first_then_size_counting_what_age_freed() {
        let policy = RetentionPolicy {
            keep_for_ms: Some(1000),
            keep_bytes: Some(15),
        };
        let oldest = [
            out(1, 1, 100, 10),
            out(2, 1, 900, 10),
            out(3, 1, 1500, 10),
            out(4, 1, 1600, 10),
        ];
        let p = choose(&policy, 1500, 40, &oldest, NONE);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].reason, jobs(&p[0])), (PruneReason::Age, vec![1]));
        assert_eq!((p[1].reason, jobs(&p[1])), (PruneReason::Size, vec![2, 3]));
    }

    #[test]
    fn outputs_of_jobs_running_again_are_never_taken() {
        let policy = RetentionPolicy {
            keep_for_ms: Some(10),
            keep_bytes: Some(0),
        };
        let oldest = [out(1, 1, 100, 10), out(2, 1, 200, 10), out(3, 2, 300, 10)];
        let running = |j: JobRef| j.job.0 == 2;
        let p = choose(&policy, 10_000, 30, &oldest, running);
        assert_eq!(jobs(&p[0]), [1, 3]);
        // Only protected ones: nothing.
        assert!(choose(&policy, 10_000, 10, &oldest[1..2], running).is_empty());
    }

    #[test]
    fn ties_go_in_the_order_given_and_one_prune_is_bounded() {
        let policy = RetentionPolicy {
            keep_for_ms: Some(1),
            keep_bytes: None,
        };
        let mut oldest: Vec<StoredOutput> = (1..=PRUNE_PAGE as u64 + 10)
            .map(|j| out(j, 1, 5, 1))
            .collect();
        oldest.sort_by_key(StoredOutput::age_key);
        let p = choose(&policy, 100, oldest.len() as u64, &oldest, NONE);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].outputs.len(), PRUNE_PAGE);
        assert_eq!(p[0].outputs[0].job.job.0, 1);
        assert_eq!(p[0].outputs[PRUNE_PAGE - 1].job.job.0, PRUNE_PAGE as u64);
    }

    #[test]
    fn a_round_comes_at_least_every_minute_and_at_most_every_second() {
        assert_eq!(RetentionPolicy::default().every_ms(), 60_000);
        assert_eq!(RetentionPolicy::KEEP_ALL.every_ms(), 60_000);
        let short = RetentionPolicy {
            keep_for_ms: Some(2000),
            keep_bytes: None,
        };
        assert_eq!(short.every_ms(), 1000);
    }
}
