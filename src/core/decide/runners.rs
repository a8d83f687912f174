//! The core's per-runner bookkeeping that every heartbeat and every tick
//! touch, kept logarithmic so that ten thousand connected runners cost
//! little: the queue of idle runners and the heartbeat deadlines.
//!
//! Both used to be linear: a `VecDeque::contains` over every idle runner
//! on each heartbeat (with 10,000 idle runners that string scan was half
//! of the dispatcher's CPU), and a pass over every session on each tick.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::core::ids::RunnerName;

/// Runners waiting for work, longest-waiting first. Each waiting runner
/// has a place number (later arrivals get larger ones); the order is by
/// place and membership is a map lookup, so a heartbeat's "is it already
/// waiting?" and a departure are `O(log n)` instead of a scan.
#[derive(Clone, Debug, Default)]
pub(super) struct IdleQueue {
    by_place: BTreeMap<u64, RunnerName>,
    place: BTreeMap<RunnerName, u64>,
    next: u64,
}

impl IdleQueue {
    pub fn contains(&self, runner: &str) -> bool {
        self.place.contains_key(runner)
    }

    /// Queues `runner` at the back; one already waiting keeps its place.
    pub fn push_back(&mut self, runner: &RunnerName) {
        if self.contains(runner) {
            return;
        }
        let at = self.next;
        self.next += 1;
        self.by_place.insert(at, runner.clone());
        self.place.insert(runner.clone(), at);
    }

    /// Takes `runner` out of the queue, if it was waiting.
    pub fn remove(&mut self, runner: &str) {
        if let Some(at) = self.place.remove(runner) {
            self.by_place.remove(&at);
        }
    }

    /// The longest-waiting runner, with its place (for [`IdleQueue::restore`]).
    pub fn pop_front(&mut self) -> Option<(u64, RunnerName)> {
        let (at, runner) = self.by_place.pop_first()?;
        self.place.remove(&runner);
        Some((at, runner))
    }

    /// Puts a runner taken by [`IdleQueue::pop_front`] back where it was, so
    /// a runner passed over (no job it serves) keeps its turn.
    pub fn restore(&mut self, at: u64, runner: RunnerName) {
        if self.contains(&runner) {
            return;
        }
        self.by_place.insert(at, runner.clone());
        self.place.insert(runner, at);
    }
}

/// Heartbeat deadlines, earliest first: one live entry per runner in good
/// standing (the one its session's `armed_ms` names), due no later than
/// its real deadline (last heard + the timeout for a busy or an idle
/// runner). An assignment that moves a deadline earlier arms a new entry;
/// the old one is stale and dropped when it comes due.
/// Hearing a runner only moves its `last_heard`, so a heartbeat costs no
/// heap operation; an entry that comes due is checked against the session
/// and, when the runner was heard since, armed again at its real
/// deadline. A tick so costs the entries due, not a pass over every
/// runner, and each runner is armed again at most once per timeout.
#[derive(Clone, Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(u64, RunnerName)>>,
}

impl Deadlines {
    /// `runner` must be judged at `due_ms` (monotonic) at the latest.
    pub fn arm(&mut self, due_ms: u64, runner: RunnerName) {
        self.heap.push(Reverse((due_ms, runner)));
    }

    /// An entry due at `now_ms`, taken out with the time it was armed for
    /// (the caller arms it again if the runner was heard since).
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, RunnerName)> {
        match self.heap.peek() {
            Some(Reverse((due, _))) if *due <= now_ms => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_queue_keeps_order_and_places() {
        let mut q = IdleQueue::default();
        for r in ["a", "b", "c"] {
            q.push_back(&r.to_string());
        }
        q.push_back(&"a".to_string());
        assert_eq!(q.by_place.len(), 3, "a waiting runner keeps its place");
        q.remove("b");
        assert!(!q.contains("b"));
        let (at, a) = q.pop_front().expect("a waits");
        assert_eq!(a, "a");
        q.push_back(&"d".to_string());
        q.restore(at, a);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_front().map(|(_, r)| r)).collect();
        assert_eq!(order, ["a", "c", "d"]);
    }

    #[test]
    fn deadlines_come_due_in_order() {
        let mut d = Deadlines::default();
        d.arm(30, "late".into());
        d.arm(10, "early".into());
        assert_eq!(d.pop_due(5), None);
        assert_eq!(d.pop_due(30), Some((10, "early".to_string())));
        assert_eq!(d.pop_due(30), Some((30, "late".to_string())));
        assert_eq!(d.len(), 0);
    }
}
