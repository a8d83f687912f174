//! The log writer: one thread that owns the core and the log, and the
//! log flusher beside it.
//!
//! The writer takes every command waiting in its channel as one batch, lets
//! the core decide on each and appends all resulting events; the flusher
//! flushes once for every batch handed to it (group commit) and only then
//! sends their replies and assignments, while the writer decides the next
//! batch. So nothing leaves the process before the events it depends on
//! are durable, and one fsync serves a whole burst of requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::core::{Core, Event, Input, JobRef, Reply, RunnerName, ToRunner};
use crate::proto::{ClientMsg, REPLAY_PAGE, ResultView, ServerMsg, StatusView};
use crate::store::{EventLog, Flusher, StoreError};
use crate::util::now_ms;

pub(crate) type ConnId = u64;

/// Most commands taken into one batch.
const MAX_BATCH: usize = 4096;

/// A wait this long for the next command means the dispatcher is quiet:
/// a lone command is then flushed on the deciding thread.
const QUIET: Duration = Duration::from_millis(1);

/// Most results one `Results` answer lists (newest first are kept).
const MAX_RESULTS: usize = 20_000;

/// A message from a runner connection.
pub(crate) enum RunnerCmd {
    Heartbeat {
        holding: Option<JobRef>,
    },
    Ready,
    Result {
        job: JobRef,
        report: crate::core::JobReport,
        output: Vec<u8>,
    },
    HandBack {
        job: JobRef,
    },
}

pub(crate) enum Cmd {
    RunnerHello {
        conn: ConnId,
        name: RunnerName,
        holding: Option<JobRef>,
        crashed: Option<JobRef>,
        tx: mpsc::UnboundedSender<ServerMsg>,
    },
    Runner {
        conn: ConnId,
        name: RunnerName,
        cmd: RunnerCmd,
    },
    RunnerGone {
        conn: ConnId,
        name: RunnerName,
    },
    /// An observer's or tool's request; answered after the batch is durable.
    Request {
        msg: ClientMsg,
        reply: oneshot::Sender<ServerMsg>,
    },
    Shutdown,
}

enum Delivery {
    Runner(RunnerName, ServerMsg),
    Reply(oneshot::Sender<ServerMsg>, ServerMsg),
}

/// A delivery with its destination resolved.
enum Outgoing {
    Reply(oneshot::Sender<ServerMsg>, ServerMsg),
    Runner(mpsc::UnboundedSender<ServerMsg>, ServerMsg),
}

/// One batch's deliveries, handed from the deciding thread to the flusher.
struct Handoff {
    /// Whether the batch appended anything. If not, its deliveries wait
    /// only for the batches handed over before it.
    wrote: bool,
    sends: Vec<Outgoing>,
}

/// The flushing half of [`Actor::run`]: takes every batch handed over so
/// far, flushes once if any of them wrote (one fsync covers all of them,
/// and everything appended before them), then sends their deliveries in
/// order. Nothing leaves before the events it depends on are durable.
fn flush_and_send(
    flusher: Box<dyn Flusher>,
    rx: Receiver<Handoff>,
    in_flight: &AtomicUsize,
) -> Result<(), StoreError> {
    let mut ready = Vec::new();
    while let Ok(first) = rx.recv() {
        ready.push(first);
        while let Ok(more) = rx.try_recv() {
            ready.push(more);
        }
        if ready.iter().any(|h| h.wrote) {
            flusher.flush()?;
        }
        let n = ready.len();
        for h in ready.drain(..) {
            send_all(h.sends);
        }
        // Only after sending: the deciding thread sends by itself only when
        // nothing handed over is still unsent.
        in_flight.fetch_sub(n, Ordering::AcqRel);
    }
    Ok(())
}

fn send_all(sends: Vec<Outgoing>) {
    for o in sends {
        match o {
            Outgoing::Reply(tx, msg) => {
                let _ = tx.send(msg);
            }
            Outgoing::Runner(tx, msg) => {
                let _ = tx.send(msg);
            }
        }
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    outputs: Vec<(JobRef, Vec<u8>)>,
    deliveries: Vec<Delivery>,
}

pub(crate) struct Actor {
    pub core: Core,
    pub log: Box<dyn EventLog>,
    runners: HashMap<RunnerName, (ConnId, mpsc::UnboundedSender<ServerMsg>)>,
    snapshot_every: u64,
    last_snapshot_seq: u64,
    tick: Duration,
    /// Batches handed to the flusher and not yet sent.
    in_flight: Arc<AtomicUsize>,
}

impl Actor {
    pub fn new(core: Core, log: Box<dyn EventLog>, snapshot_every: u64) -> Actor {
        let timeout_ms = core.config().heartbeat_timeout_ms;
        let tick = Duration::from_millis((timeout_ms / 4).clamp(20, 1000));
        let last_snapshot_seq = core.state.last_seq;
        Actor {
            core,
            log,
            runners: HashMap::new(),
            snapshot_every,
            last_snapshot_seq,
            tick,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Records the start and makes it durable.
    pub fn start(&mut self) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        let now = now_ms();
        let step = self.core.handle(
            Input::Started {
                pid: std::process::id(),
            },
            now,
        );
        batch.events.extend(step.events);
        self.append(&mut batch, now)?;
        self.log.flush()
    }

    /// Runs until `Shutdown` or until every sender is gone; an error means
    /// the log could not be written and the process must stop.
    ///
    /// Two threads make the group commit a pipeline: this one decides and
    /// appends batch after batch; the `log-flusher` flushes what has been
    /// appended and then sends that batch's replies and assignments. While
    /// one batch waits for its fsync, the next is being decided.
    pub fn run(mut self, rx: Receiver<Cmd>) -> Result<(), StoreError> {
        let flusher = self.log.flusher()?;
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        let in_flight = self.in_flight.clone();
        let flushing = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || flush_and_send(flusher, out_rx, &in_flight))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let decided = self.decide(rx, &out_tx);
        // The flusher sends what is still waiting, then stops.
        drop(out_tx);
        let flushed = flushing.join().unwrap_or(Err(StoreError::FlusherPanicked));
        decided?;
        flushed?;
        self.log.flush()?;
        info!(
            last_seq = self.log.last_seq(),
            "log flushed; dispatcher core stopped"
        );
        Ok(())
    }

    /// The deciding half of [`Actor::run`]; returns when told to stop, when
    /// every sender is gone, or when the flusher has stopped (its error is
    /// the one to report).
    fn decide(&mut self, rx: Receiver<Cmd>, out: &Sender<Handoff>) -> Result<(), StoreError> {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let idle_since = Instant::now();
            let first = match rx.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let quiet = idle_since.elapsed() >= QUIET;
            let now = now_ms();
            let mut batch = Batch::default();
            let mut stop = false;
            let mut taken = 0;
            if let Some(cmd) = first {
                stop |= self.process(cmd, now, &mut batch);
                taken = 1;
                while taken < MAX_BATCH && !stop {
                    match rx.try_recv() {
                        Ok(cmd) => {
                            stop |= self.process(cmd, now, &mut batch);
                            taken += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            if Instant::now() >= next_tick {
                let step = self.core.handle(Input::Tick, now);
                self.absorb(step, None, &mut batch);
                next_tick = Instant::now() + self.tick;
            }
            let wrote = self.append(&mut batch, now)?;
            let sends = self.address(batch.deliveries);
            if quiet && taken <= 1 && self.in_flight.load(Ordering::Acquire) == 0 {
                // A lone command after a quiet spell, and an idle pipeline:
                // flush and send here. Waking the flusher would add a
                // thread switch to every request of a quiet dispatcher
                // (under load, blocking here would stall the pipeline).
                // Nothing handed over earlier is still unsent: order holds.
                if wrote {
                    self.log.flush()?;
                }
                send_all(sends);
            } else if wrote || !sends.is_empty() {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                if out.send(Handoff { wrote, sends }).is_err() {
                    return Ok(());
                }
            }
            if self.log.last_seq() >= self.last_snapshot_seq + self.snapshot_every {
                self.snapshot()?;
            }
            if stop {
                break;
            }
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.log.save_snapshot(&self.core.state)?;
        self.last_snapshot_seq = self.core.state.last_seq;
        debug!(
            seq = self.last_snapshot_seq,
            ms = started.elapsed().as_millis() as u64,
            "snapshot saved"
        );
        Ok(())
    }

    /// Appends the batch's events and outputs, stamped with the `now` the
    /// core decided them at (so replay rebuilds identical state); not yet
    /// durable. True if anything was written. A failure is fatal.
    fn append(&mut self, batch: &mut Batch, now: u64) -> Result<bool, StoreError> {
        if batch.events.is_empty() && batch.outputs.is_empty() {
            return Ok(false);
        }
        for (job, output) in &batch.outputs {
            self.log.put_output(*job, output)?;
        }
        let last = self.log.append(now, &batch.events)?;
        // The core folds events as it decides; sequence numbers are
        // assigned here, by the log.
        self.core.state.last_seq = last;
        Ok(true)
    }

    /// Resolves each delivery's destination now, in decision order: a
    /// runner that reconnects later must not get what was meant for its
    /// fenced connection.
    fn address(&self, deliveries: Vec<Delivery>) -> Vec<Outgoing> {
        deliveries
            .into_iter()
            .filter_map(|d| match d {
                Delivery::Reply(tx, msg) => Some(Outgoing::Reply(tx, msg)),
                Delivery::Runner(name, msg) => self
                    .runners
                    .get(&name)
                    .map(|(_, tx)| Outgoing::Runner(tx.clone(), msg)),
            })
            .collect()
    }

    /// Moves a core step's effects into the batch.
    fn absorb(
        &mut self,
        step: crate::core::Step,
        reply_to: Option<oneshot::Sender<ServerMsg>>,
        batch: &mut Batch,
    ) {
        for ev in &step.events {
            match ev {
                Event::HeartbeatLost {
                    runner,
                    job,
                    attempt,
                    reason,
                } => {
                    warn!(%runner, %job, attempt, ?reason, "runner lost its job; re-queued")
                }
                Event::Result {
                    job,
                    commit,
                    runner: None,
                    ..
                } => {
                    warn!(%job, %commit, "giving up on job: too many lost runners")
                }
                _ => {}
            }
        }
        batch.events.extend(step.events);
        if let (Some(reply), Some(tx)) = (step.reply, reply_to) {
            batch.deliveries.push(Delivery::Reply(tx, reply_msg(reply)));
        }
        for (runner, msg) in step.sends {
            let msg = match msg {
                ToRunner::Assign {
                    job,
                    commit,
                    branch,
                } => ServerMsg::Assign {
                    job,
                    commit,
                    branch,
                },
                ToRunner::Abandon { job, reason } => {
                    info!(%runner, %job, %reason, "told runner to abandon a stale job");
                    ServerMsg::Abandon { job, reason }
                }
            };
            batch.deliveries.push(Delivery::Runner(runner, msg));
        }
    }

    /// Handles one command; true means stop after this batch.
    fn process(&mut self, cmd: Cmd, now: u64, batch: &mut Batch) -> bool {
        match cmd {
            Cmd::Shutdown => return true,
            Cmd::RunnerHello {
                conn,
                name,
                holding,
                crashed,
                tx,
            } => {
                if let Some((old, _)) = self.runners.insert(name.clone(), (conn, tx)) {
                    info!(runner = %name, old_conn = old, conn, "runner reconnected; older connection fenced");
                }
                let step = self.core.handle(
                    Input::RunnerConnected {
                        runner: name.clone(),
                        holding,
                        crashed,
                    },
                    now,
                );
                if let Some(Reply::Welcome { keep }) = &step.reply {
                    batch.deliveries.push(Delivery::Runner(
                        name.clone(),
                        ServerMsg::Welcome { keep: *keep },
                    ));
                }
                let step = crate::core::Step {
                    reply: None,
                    ..step
                };
                self.absorb(step, None, batch);
            }
            Cmd::RunnerGone { conn, name } => {
                if self.runners.get(&name).is_some_and(|(c, _)| *c == conn) {
                    self.runners.remove(&name);
                    let step = self
                        .core
                        .handle(Input::RunnerDisconnected { runner: name }, now);
                    self.absorb(step, None, batch);
                }
            }
            Cmd::Runner { conn, name, cmd } => {
                if self.runners.get(&name).is_none_or(|(c, _)| *c != conn) {
                    debug!(runner = %name, conn, "message from a fenced connection ignored");
                    return false;
                }
                match cmd {
                    RunnerCmd::Heartbeat { holding } => {
                        let step = self.core.handle(
                            Input::Heartbeat {
                                runner: name,
                                holding,
                            },
                            now,
                        );
                        self.absorb(step, None, batch);
                    }
                    RunnerCmd::Ready => {
                        let step = self.core.handle(Input::RunnerReady { runner: name }, now);
                        self.absorb(step, None, batch);
                    }
                    RunnerCmd::HandBack { job } => {
                        let step = self.core.handle(Input::HandBack { runner: name, job }, now);
                        self.absorb(step, None, batch);
                    }
                    RunnerCmd::Result {
                        job,
                        report,
                        output,
                    } => {
                        let output_bytes = output.len() as u64;
                        let step = self.core.handle(
                            Input::ResultReported {
                                runner: name.clone(),
                                job,
                                report,
                                output_bytes,
                            },
                            now,
                        );
                        let recorded = step.events.iter().any(|e| {
                            matches!(e, Event::Result { job: j, attempt, .. } if *j == job.job && *attempt == job.attempt)
                        });
                        if recorded && !output.is_empty() {
                            batch.outputs.push((job, output));
                        }
                        if let Some(Reply::ResultAck {
                            accepted: false,
                            reason,
                            ..
                        }) = &step.reply
                        {
                            warn!(runner = %name, %job, %reason, "stale result rejected");
                        }
                        if let Some(reply) = step.reply.clone() {
                            batch
                                .deliveries
                                .push(Delivery::Runner(name, reply_msg(reply)));
                        }
                        let step = crate::core::Step {
                            reply: None,
                            ..step
                        };
                        self.absorb(step, None, batch);
                    }
                }
            }
            Cmd::Request { msg, reply } => self.request(msg, reply, now, batch),
        }
        false
    }

    fn request(
        &mut self,
        msg: ClientMsg,
        reply: oneshot::Sender<ServerMsg>,
        now: u64,
        batch: &mut Batch,
    ) {
        let answer = match msg {
            ClientMsg::Commits {
                branch,
                commits,
                tip,
            } => {
                let step = self.core.handle(
                    Input::CommitsReported {
                        branch,
                        commits,
                        tip,
                    },
                    now,
                );
                self.absorb(step, Some(reply), batch);
                return;
            }
            ClientMsg::GetTips => ServerMsg::Tips(
                self.core
                    .state
                    .branch_tips()
                    .iter()
                    .map(|(b, c)| (b.clone(), *c))
                    .collect(),
            ),
            ClientMsg::Status => ServerMsg::Status(StatusView::of(&self.core)),
            ClientMsg::Results { commit } => {
                let views = match commit {
                    Some(c) => self
                        .core
                        .state
                        .job_for_commit(&c)
                        .map(|j| ResultView::of(&self.core.state, j))
                        .into_iter()
                        .collect(),
                    None => {
                        let state = &self.core.state;
                        let jobs = state.jobs();
                        let skip = jobs.len().saturating_sub(MAX_RESULTS);
                        jobs[skip..]
                            .iter()
                            .map(|j| ResultView::of(state, j))
                            .collect()
                    }
                };
                ServerMsg::Results(views)
            }
            ClientMsg::Replay { from_seq, limit } => {
                // Only what is durable: the log itself, not this batch.
                let limit = (limit as usize).clamp(1, REPLAY_PAGE);
                match self.log.read(from_seq, limit) {
                    Ok(records) => ServerMsg::Events {
                        records,
                        last_seq: self.log.last_seq(),
                    },
                    Err(e) => ServerMsg::Error {
                        message: e.to_string(),
                        fatal: false,
                    },
                }
            }
            ClientMsg::Output { job } => {
                let attempt = self.core.state.job(job).and_then(|j| match &j.status {
                    crate::core::JobStatus::Done(f) => Some(f.attempt),
                    _ => None,
                });
                match attempt {
                    Some(attempt) => match self.log.output(JobRef { job, attempt }) {
                        Ok(o) => ServerMsg::Output(Some(o.unwrap_or_default())),
                        Err(e) => ServerMsg::Error {
                            message: e.to_string(),
                            fatal: false,
                        },
                    },
                    None => ServerMsg::Output(None),
                }
            }
            other => ServerMsg::Error {
                message: format!("{} is not a request", other.kind()),
                fatal: false,
            },
        };
        batch.deliveries.push(Delivery::Reply(reply, answer));
    }
}

fn reply_msg(reply: Reply) -> ServerMsg {
    match reply {
        Reply::None => ServerMsg::Error {
            message: "no reply".into(),
            fatal: false,
        },
        Reply::Commits {
            accepted,
            duplicates,
        } => ServerMsg::CommitsAck {
            accepted,
            duplicates,
        },
        Reply::ResultAck {
            job,
            accepted,
            reason,
        } => ServerMsg::ResultAck {
            job,
            accepted,
            reason,
        },
        Reply::Welcome { keep } => ServerMsg::Welcome { keep },
    }
}
