//! The runner agent as a state machine: no sockets, no processes, no
//! clock, no files. `agent.rs` carries its effects out with tokio and the
//! file system; the simulator (`tests/sim.rs`) carries them out on virtual
//! time. Both run this code.
//!
//! What it decides: when to (re)connect and how long to back off, what the
//! hello says (the job held, the job let go of while away), heartbeats,
//! which assignment to start, what to kill when told to abandon, keeping a
//! finished result until the dispatcher acknowledges it, and stopping on
//! SIGTERM by handing the job back. What it is told: the connection's
//! fate, the dispatcher's messages, a job's end, the stop, and the time
//! (milliseconds on a monotonic clock).
//!
//! **Durability on the runner's side:** a finished result is saved
//! ([`Effect::SaveResult`]) before it is sent and kept until acknowledged,
//! and the marker ([`Effect::SaveMarker`]) says which job is in progress or
//! was handed back. A runner stopped or killed at any point tells the
//! dispatcher the truth on its next start: the result, a hand-back (not a
//! loss), or a crash (a loss).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::client::Backoff;
use crate::core::{CommitId, CommitInfo, JobRef, JobReport, LeftHow, LeftJob};
use crate::proto::{ClientMsg, ErrorCode, ServerMsg};

/// How long a stopping runner waits for the acknowledgement of a result
/// it just sent (it is saved either way).
pub const STOP_GRACE_MS: u64 = 2_000;

/// One attempt's finished report, kept until the dispatcher acknowledges it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub job: JobRef,
    pub report: JobReport,
    pub output: Vec<u8>,
    /// Who wrote the commit and what it says, when the checkout got that far.
    pub info: Option<CommitInfo>,
}

/// What the marker file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// This job was started and has not been handed back or acknowledged:
    /// found at start, it means the runner died running it.
    Running(JobRef),
    /// This job was killed cleanly and handed back (SIGTERM): found at
    /// start, it is reported as a hand-back, never a loss.
    HandedBack(JobRef),
}

/// What a runner finds on its disk when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub marker: Option<Marker>,
    pub result: Option<Finished>,
}

/// Why the runner stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Told to stop (SIGTERM); the job was handed back, a result saved.
    Stopped,
    /// Refused for a reason retrying cannot cure (wrong token, a second
    /// runner with this name...).
    Refused { code: ErrorCode, message: String },
}

/// Something the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Open a connection and say hello with these; report
    /// [`Machine::connected`] once welcomed, or [`Machine::connect_failed`].
    Connect {
        holding: Option<JobRef>,
        left: Option<LeftJob>,
    },
    /// Write a frame on the current connection.
    Send(ClientMsg),
    /// Close the current connection (then report [`Machine::disconnected`]).
    Disconnect,
    /// Fetch, check out and test `commit`; report [`Machine::job_finished`].
    StartJob {
        job: JobRef,
        commit: CommitId,
        branch: Option<String>,
        /// The job's named repository (`None`: the default one) and the
        /// dispatcher's URL for it.
        repository: Option<String>,
        url: Option<String>,
    },
    /// Kill the job's process group; its end is not reported.
    KillJob(JobRef),
    /// Stream the running job's output to the dispatcher from byte
    /// `offset` on (it has what came before), until the job ends or the
    /// connection does.
    StreamFrom { job: JobRef, offset: u64 },
    /// Write the marker file (`None`: remove it). Done before what follows.
    SaveMarker(Option<Marker>),
    /// Write the pending result (`None`: remove it). Done before it is sent.
    SaveResult(Option<Finished>),
    /// Stop the process.
    Exit(Exit),
}

/// The connection, as the machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Waiting until `retry_at_ms` to connect again.
    Down { retry_at_ms: u64 },
    /// A `Connect` is under way.
    Connecting { since_ms: u64 },
    /// Welcomed; heartbeats are due at `beat_at_ms`.
    Up { since_ms: u64, beat_at_ms: u64 },
}

/// The runner agent.
#[derive(Debug)]
pub struct Machine {
    heartbeat_ms: u64,
    /// The pace while holding no job, as the dispatcher's welcome said.
    idle_heartbeat_ms: u64,
    link: Link,
    backoff: Backoff,
    running: Option<JobRef>,
    pending: Option<Finished>,
    /// Let go of while away; said in the next hello, forgotten once welcomed.
    left: Option<LeftJob>,
    /// Set by SIGTERM: when to exit at the latest.
    stopping_until_ms: Option<u64>,
    effects: VecDeque<Effect>,
    /// Refusals that ended a connection, for tracing and tests.
    pub refusals: u64,
}

impl Machine {
    /// A runner starting with what its disk holds, at `now_ms`;
    /// `jitter_seed` spreads reconnections (any value; random in
    /// production, from the seed in simulations).
    pub fn new(saved: Saved, heartbeat_ms: u64, jitter_seed: u64, now_ms: u64) -> Machine {
        let Saved { marker, result } = saved;
        let mut left = None;
        let pending = result;
        match marker {
            Some(Marker::HandedBack(job)) => {
                left = Some(LeftJob {
                    job,
                    how: LeftHow::HandedBack,
                })
            }
            // It finished and its result was saved: deliver that, no loss.
            Some(Marker::Running(job)) if pending.as_ref().is_some_and(|p| p.job == job) => {}
            Some(Marker::Running(job)) => {
                left = Some(LeftJob {
                    job,
                    how: LeftHow::Crashed,
                })
            }
            None => {}
        }
        let mut m = Machine {
            heartbeat_ms: heartbeat_ms.max(1),
            idle_heartbeat_ms: heartbeat_ms.max(1),
            link: Link::Down {
                retry_at_ms: now_ms,
            },
            backoff: Backoff::new(jitter_seed),
            running: None,
            pending,
            left,
            stopping_until_ms: None,
            effects: VecDeque::new(),
            refusals: 0,
        };
        m.handle_timeout(now_ms);
        m
    }

    /// The job in hand: running, or finished and not yet acknowledged.
    pub fn holding(&self) -> Option<JobRef> {
        self.running.or(self.pending.as_ref().map(|p| p.job))
    }

    pub fn running(&self) -> Option<JobRef> {
        self.running
    }

    pub fn pending(&self) -> Option<&Finished> {
        self.pending.as_ref()
    }

    /// Whether the machine is welcomed on a connection.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// Whether a `Connect` is under way.
    pub fn is_connecting(&self) -> bool {
        matches!(self.link, Link::Connecting { .. })
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping_until_ms.is_some()
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Machine::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        let link = match self.link {
            Link::Down { retry_at_ms } if self.stopping_until_ms.is_none() => Some(retry_at_ms),
            Link::Up { beat_at_ms, .. } => Some(beat_at_ms),
            _ => None,
        };
        match (link, self.stopping_until_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: reconnect, heartbeat, or give up waiting to stop.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if let Some(until) = self.stopping_until_ms
            && now_ms >= until
        {
            self.exit(Exit::Stopped);
            return;
        }
        match self.link {
            Link::Down { retry_at_ms }
                if now_ms >= retry_at_ms && self.stopping_until_ms.is_none() =>
            {
                self.link = Link::Connecting { since_ms: now_ms };
                self.effects.push_back(Effect::Connect {
                    holding: self.holding(),
                    left: self.left,
                });
            }
            Link::Up {
                since_ms,
                beat_at_ms,
            } if now_ms >= beat_at_ms => {
                self.link = Link::Up {
                    since_ms,
                    beat_at_ms: now_ms + self.beat_every_ms(),
                };
                self.send(ClientMsg::Heartbeat {
                    holding: self.holding(),
                });
            }
            _ => {}
        }
    }

    /// How long until the next heartbeat: the runner's own interval while
    /// it holds a job, the dispatcher's idle pace (never faster) otherwise.
    fn beat_every_ms(&self) -> u64 {
        match self.holding() {
            Some(_) => self.heartbeat_ms,
            None => self.idle_heartbeat_ms.max(self.heartbeat_ms),
        }
    }

    /// The connection is up and the dispatcher welcomed the hello, asking
    /// for a heartbeat every `idle_heartbeat_ms` while idle (0: no
    /// preference, the runner's own interval).
    pub fn connected(&mut self, now_ms: u64, idle_heartbeat_ms: u64) {
        if idle_heartbeat_ms > 0 {
            self.idle_heartbeat_ms = idle_heartbeat_ms;
        }
        self.link = Link::Up {
            since_ms: now_ms,
            beat_at_ms: now_ms + self.beat_every_ms(),
        };
        // The dispatcher recorded what the hello said before welcoming.
        if self.left.take().is_some() && self.running.is_none() {
            let marker = self.pending.as_ref().map(|p| Marker::Running(p.job));
            self.effects.push_back(Effect::SaveMarker(marker));
        }
        if let Some(p) = &self.pending {
            let msg = result_msg(p);
            self.send(msg);
        }
    }

    /// Connecting failed (or the hello was refused).
    pub fn connect_failed(&mut self, refused: Option<ErrorCode>, message: &str, now_ms: u64) {
        if let Some(code) = refused {
            self.refusals += 1;
            if code.is_permanent() {
                self.exit(Exit::Refused {
                    code,
                    message: message.to_string(),
                });
                return;
            }
        }
        self.link_down(now_ms, 0);
    }

    /// The connection ended.
    pub fn disconnected(&mut self, now_ms: u64) {
        let lasted = match self.link {
            Link::Up { since_ms, .. } | Link::Connecting { since_ms } => {
                now_ms.saturating_sub(since_ms)
            }
            Link::Down { .. } => return,
        };
        self.link_down(now_ms, lasted);
    }

    fn link_down(&mut self, now_ms: u64, lasted_ms: u64) {
        self.backoff.session_ended(lasted_ms);
        if self.stopping_until_ms.is_some() {
            // Nothing more to deliver on this connection: stop now.
            self.exit(Exit::Stopped);
            return;
        }
        self.link = Link::Down {
            retry_at_ms: now_ms + self.backoff.next_delay_ms(),
        };
    }

    /// A message from the dispatcher.
    pub fn message(&mut self, msg: ServerMsg, now_ms: u64) {
        match msg {
            ServerMsg::Assign {
                job,
                commit,
                branch,
                repository,
                url,
            } => {
                if self.holding().is_some() || self.stopping_until_ms.is_some() {
                    // Already in hand (a repeat), or holding another (the
                    // dispatcher will sort it out from our heartbeats), or
                    // stopping.
                    return;
                }
                self.running = Some(job);
                // The dispatcher's clock for this job runs from the
                // assignment: beat at the working pace from now on.
                if let Link::Up {
                    since_ms,
                    beat_at_ms,
                } = self.link
                {
                    self.link = Link::Up {
                        since_ms,
                        beat_at_ms: beat_at_ms.min(now_ms + self.heartbeat_ms),
                    };
                }
                self.effects
                    .push_back(Effect::SaveMarker(Some(Marker::Running(job))));
                self.effects.push_back(Effect::StartJob {
                    job,
                    commit,
                    branch,
                    repository,
                    url,
                });
                // Streamed from its first byte on this connection.
                self.effects
                    .push_back(Effect::StreamFrom { job, offset: 0 });
            }
            ServerMsg::OutputFrom { job, offset } if self.running == Some(job) => {
                self.effects.push_back(Effect::StreamFrom { job, offset });
            }
            ServerMsg::Abandon { job, .. } => {
                let mut dropped = false;
                if self.running == Some(job) {
                    self.running = None;
                    self.effects.push_back(Effect::KillJob(job));
                    dropped = true;
                }
                if self.pending.as_ref().is_some_and(|p| p.job == job) {
                    self.pending = None;
                    self.effects.push_back(Effect::SaveResult(None));
                    dropped = true;
                }
                if dropped {
                    self.effects.push_back(Effect::SaveMarker(None));
                    self.send(ClientMsg::Ready);
                }
            }
            ServerMsg::ResultAck { job, accepted, .. }
                if self.pending.as_ref().is_some_and(|p| p.job == job) =>
            {
                self.pending = None;
                self.effects.push_back(Effect::SaveResult(None));
                self.effects.push_back(Effect::SaveMarker(None));
                if self.stopping_until_ms.is_some() {
                    self.exit(Exit::Stopped);
                } else if !accepted {
                    self.send(ClientMsg::Ready);
                }
            }
            ServerMsg::Error {
                code,
                fatal,
                message,
            } => {
                if !fatal {
                    return;
                }
                self.refusals += 1;
                if code.is_permanent() {
                    self.exit(Exit::Refused { code, message });
                } else {
                    self.effects.push_back(Effect::Disconnect);
                    self.disconnected(now_ms);
                }
            }
            _ => {}
        }
    }

    /// The running job ended on its own (not killed).
    pub fn job_finished(&mut self, finished: Finished) {
        if self.running != Some(finished.job) {
            return;
        }
        self.running = None;
        self.effects
            .push_back(Effect::SaveResult(Some(finished.clone())));
        if self.is_connected() {
            self.send(result_msg(&finished));
        }
        self.pending = Some(finished);
    }

    /// SIGTERM: kill and hand back the running job; give a just-sent result
    /// a moment to be acknowledged (it is saved either way); then exit.
    pub fn stop(&mut self, now_ms: u64) {
        if self.stopping_until_ms.is_some() {
            return;
        }
        if let Some(job) = self.running.take() {
            self.effects.push_back(Effect::KillJob(job));
            self.effects
                .push_back(Effect::SaveMarker(Some(Marker::HandedBack(job))));
            self.left = Some(LeftJob {
                job,
                how: LeftHow::HandedBack,
            });
            if self.is_connected() {
                self.send(ClientMsg::HandBack { job });
            }
        }
        if self.is_connected() && self.pending.is_some() {
            self.stopping_until_ms = Some(now_ms + STOP_GRACE_MS);
        } else {
            self.exit(Exit::Stopped);
        }
    }

    fn send(&mut self, msg: ClientMsg) {
        if self.is_connected() {
            self.effects.push_back(Effect::Send(msg));
        }
    }

    fn exit(&mut self, why: Exit) {
        self.stopping_until_ms = None;
        self.link = Link::Down {
            retry_at_ms: u64::MAX,
        };
        self.effects.push_back(Effect::Exit(why));
    }
}

fn result_msg(p: &Finished) -> ClientMsg {
    ClientMsg::Result {
        job: p.job,
        report: p.report.clone(),
        output: p.output.clone(),
        info: p.info.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::JobId;

    const BUSY_MS: u64 = 2_000;
    const IDLE_MS: u64 = 15_000;

    fn welcomed(now_ms: u64) -> Machine {
        let mut m = Machine::new(
            Saved {
                marker: None,
                result: None,
            },
            BUSY_MS,
            7,
            now_ms,
        );
        assert!(matches!(m.poll_effect(), Some(Effect::Connect { .. })));
        m.connected(now_ms, IDLE_MS);
        m
    }

    fn beats(m: &mut Machine) -> Vec<Option<JobRef>> {
        std::iter::from_fn(|| m.poll_effect())
            .filter_map(|e| match e {
                Effect::Send(ClientMsg::Heartbeat { holding }) => Some(holding),
                _ => None,
            })
            .collect()
    }

    /// Idle, the runner beats at the pace the welcome asked; given a job,
    /// within its own interval of the assignment, and at that pace until
    /// the job is done.
    #[test]
    fn the_pace_follows_the_job_in_hand() {
        let mut m = welcomed(0);
        assert_eq!(m.poll_timeout(), Some(IDLE_MS));
        m.handle_timeout(IDLE_MS);
        assert_eq!(beats(&mut m), [None]);
        assert_eq!(m.poll_timeout(), Some(2 * IDLE_MS));
        let job = JobRef {
            job: JobId(1),
            attempt: 1,
        };
        m.message(
            ServerMsg::Assign {
                job,
                commit: CommitId::from_bytes(&[1; 20]).expect("20 bytes"),
                branch: None,
                repository: None,
                url: None,
            },
            IDLE_MS + 100,
        );
        assert_eq!(m.poll_timeout(), Some(IDLE_MS + 100 + BUSY_MS));
        m.handle_timeout(IDLE_MS + 100 + BUSY_MS);
        assert_eq!(beats(&mut m), [Some(job)]);
        assert_eq!(m.poll_timeout(), Some(IDLE_MS + 100 + 2 * BUSY_MS));
    }

    /// A welcome without a preference (0) leaves the runner's own pace.
    #[test]
    fn no_idle_preference_keeps_the_runners_interval() {
        let mut m = Machine::new(
            Saved {
                marker: None,
                result: None,
            },
            BUSY_MS,
            7,
            0,
        );
        m.connected(0, 0);
        assert_eq!(m.poll_timeout(), Some(BUSY_MS));
    }
}
