//! The notifier as a state machine: which notification goes out next to
//! which sink, what a delivery's outcome means, when to try again. No IO,
//! no clock: time comes in as milliseconds on a monotonic clock, so the
//! dispatcher's notifier (`notify::run`) and the simulator
//! (`tests/sim.rs`) run this same code.
//!
//! Rules: each sink gets its notifications one at a time, oldest first (a
//! forge must never see "pending" after "success"); a failed attempt is
//! tried again after a backoff, from [`RETRY_FIRST_MS`] doubling to
//! [`RETRY_MAX_MS`], and the sink's later notifications wait behind it; a
//! sink that refuses one for good has it dropped (on record) and goes on.
//! A notification is acknowledged to the dispatcher only after its
//! delivery: until the acknowledgement is durable it is owed, and sent
//! again after a restart.

use std::collections::BTreeMap;

use crate::client::Backoff;
use crate::core::{DropReason, Due};

/// The first pause after a failed delivery.
pub const RETRY_FIRST_MS: u64 = 500;

/// The longest pause between attempts on a sink that is down: once it is
/// back, it is noticed within this.
pub const RETRY_MAX_MS: u64 = 30_000;

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The sink took it.
    Delivered,
    /// Try again later: the sink is down, slow, overloaded, or failed.
    Retry(String),
    /// The sink refused it for good (HTTP 4xx other than 408 and 429).
    Refused { status: u16, message: String },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `due` to the sink named `sink`, then report with
    /// [`Notifier::outcome`].
    Deliver { sink: String, due: Due },
    /// Tell the dispatcher notification `n` is settled (delivered when
    /// `dropped` is `None`).
    Ack { n: u64, dropped: Option<DropReason> },
}

/// One sink's side of the machine.
#[derive(Debug)]
struct SinkState {
    owed: BTreeMap<u64, Due>,
    /// The notification being delivered, if any.
    in_flight: Option<u64>,
    /// No attempt before this (after a failure).
    retry_at_ms: Option<u64>,
    backoff: Backoff,
    /// When the current run of failures began.
    failing_since_ms: Option<u64>,
}

/// The notifier's state: what each sink is owed.
#[derive(Debug)]
pub struct Notifier {
    sinks: BTreeMap<String, SinkState>,
    actions: Vec<Action>,
}

impl Notifier {
    /// A notifier for the sinks with these keys; `seed` draws the jitter.
    pub fn new(keys: impl IntoIterator<Item = String>, seed: u64) -> Notifier {
        let sinks = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let state = SinkState {
                    owed: BTreeMap::new(),
                    in_flight: None,
                    retry_at_ms: None,
                    backoff: Backoff::between(RETRY_FIRST_MS, RETRY_MAX_MS, seed ^ i as u64),
                    failing_since_ms: None,
                };
                (k, state)
            })
            .collect();
        Notifier {
            sinks,
            actions: Vec::new(),
        }
    }

    /// The dispatcher says these are owed (again, after a reconnection:
    /// repeats are ignored). Notifications for a sink this notifier does
    /// not have are ignored (the dispatcher drops them at its start).
    pub fn owed(&mut self, dues: impl IntoIterator<Item = Due>) {
        for d in dues {
            if let Some(s) = self.sinks.get_mut(&d.sink) {
                s.owed.entry(d.n).or_insert(d);
            }
        }
    }

    /// What a delivery of `n` to `sink` came to, at `now_ms`.
    pub fn outcome(&mut self, sink: &str, n: u64, delivery: Delivery, now_ms: u64) {
        let Some(s) = self.sinks.get_mut(sink) else {
            return;
        };
        if s.in_flight != Some(n) {
            return;
        }
        s.in_flight = None;
        let dropped = match delivery {
            Delivery::Delivered => None,
            Delivery::Refused { status, message } => Some(DropReason::Refused { status, message }),
            Delivery::Retry(_) => {
                s.failing_since_ms.get_or_insert(now_ms);
                s.retry_at_ms = Some(now_ms + s.backoff.next_delay_ms());
                return;
            }
        };
        s.failing_since_ms = None;
        s.retry_at_ms = None;
        s.backoff.reset();
        s.owed.remove(&n);
        self.actions.push(Action::Ack { n, dropped });
    }

    /// How long `sink` has been failing, if it is.
    pub fn failing_for_ms(&self, sink: &str, now_ms: u64) -> Option<u64> {
        let since = self.sinks.get(sink)?.failing_since_ms?;
        Some(now_ms.saturating_sub(since))
    }

    /// The next things to do at `now_ms`: acknowledgements, then each idle
    /// sink's oldest owed notification.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = std::mem::take(&mut self.actions);
        for (key, s) in &mut self.sinks {
            if s.in_flight.is_some() || s.retry_at_ms.is_some_and(|t| now_ms < t) {
                continue;
            }
            if let Some((&n, due)) = s.owed.first_key_value() {
                s.in_flight = Some(n);
                s.retry_at_ms = None;
                out.push(Action::Deliver {
                    sink: key.clone(),
                    due: due.clone(),
                });
            }
        }
        out
    }

    /// When [`Notifier::poll`] has something to do again without news:
    /// the earliest retry.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.sinks
            .values()
            .filter(|s| s.in_flight.is_none() && !s.owed.is_empty())
            .filter_map(|s| s.retry_at_ms)
            .min()
    }

    /// Notifications owed and not yet acknowledged, over every sink.
    pub fn pending(&self) -> usize {
        self.sinks.values().map(|s| s.owed.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CommitId, JobId, Notice, NoticeKind, NoticeState};

    fn due(n: u64, sink: &str) -> Due {
        Due {
            n,
            sink: sink.into(),
            notice: Notice {
                kind: NoticeKind::Status,
                job: JobId(1),
                commit: CommitId::from_bytes(&[7; 20]).unwrap(),
                repository: None,
                branch: None,
                attempt: 0,
                state: NoticeState::Queued,
                runner: None,
                message: String::new(),
                tests: None,
                duration_ms: 0,
            },
            at_ms: 0,
        }
    }

    fn delivers(actions: &[Action]) -> Vec<(String, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { sink, due } => Some((sink.clone(), due.n)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_at_a_time_per_sink_oldest_first_and_sinks_do_not_wait_on_each_other() {
        let mut m = Notifier::new(["a".to_string(), "b".to_string()], 1);
        m.owed([due(3, "a"), due(1, "a"), due(2, "b"), due(9, "gone")]);
        assert_eq!(delivers(&m.poll(0)), vec![("a".into(), 1), ("b".into(), 2)]);
        assert!(
            m.poll(0).is_empty(),
            "nothing more while both are in flight"
        );
        m.outcome("a", 1, Delivery::Delivered, 5);
        let next = m.poll(5);
        assert_eq!(
            next[0],
            Action::Ack {
                n: 1,
                dropped: None
            }
        );
        assert_eq!(delivers(&next), vec![("a".into(), 3)]);
    }

    #[test]
    fn a_failure_holds_the_sink_back_with_growing_pauses_then_it_goes_on() {
        let mut m = Notifier::new(["a".to_string()], 1);
        m.owed([due(1, "a"), due(2, "a")]);
        assert_eq!(delivers(&m.poll(0)), vec![("a".into(), 1)]);
        m.outcome("a", 1, Delivery::Retry("down".into()), 0);
        let first = m.poll_timeout().expect("a retry is due");
        assert!((RETRY_FIRST_MS * 3 / 4..=RETRY_FIRST_MS).contains(&first));
        assert!(m.poll(first - 1).is_empty());
        assert_eq!(delivers(&m.poll(first)), vec![("a".into(), 1)]);
        m.outcome("a", 1, Delivery::Retry("down".into()), first);
        let second = m.poll_timeout().unwrap() - first;
        assert!(second > first, "the pause grows: {first} then {second}");
        assert_eq!(m.failing_for_ms("a", first + 10), Some(first + 10));
        // Down for a long time: the pause stops growing at the cap.
        let mut now = first;
        for _ in 0..30 {
            now = m.poll_timeout().unwrap();
            assert_eq!(delivers(&m.poll(now)), vec![("a".into(), 1)]);
            m.outcome("a", 1, Delivery::Retry("down".into()), now);
        }
        assert!(m.poll_timeout().unwrap() - now <= RETRY_MAX_MS);
        // Back: everything, in order.
        let at = m.poll_timeout().unwrap();
        m.poll(at);
        m.outcome("a", 1, Delivery::Delivered, at);
        assert_eq!(delivers(&m.poll(at)), vec![("a".into(), 2)]);
        assert_eq!(m.failing_for_ms("a", at), None);
    }

    #[test]
    fn a_refusal_drops_on_record_and_repeats_are_ignored() {
        let mut m = Notifier::new(["a".to_string()], 1);
        m.owed([due(1, "a")]);
        m.poll(0);
        m.outcome(
            "a",
            1,
            Delivery::Refused {
                status: 422,
                message: "no".into(),
            },
            1,
        );
        let acts = m.poll(1);
        assert!(matches!(
            &acts[0],
            Action::Ack {
                n: 1,
                dropped: Some(DropReason::Refused { status: 422, .. })
            }
        ));
        // An outcome for something not in flight changes nothing.
        m.outcome("a", 1, Delivery::Delivered, 2);
        assert!(m.poll(2).is_empty());
        assert_eq!(m.pending(), 0);
    }
}
