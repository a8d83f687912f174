//! The log writer: the thread that drives the [`Shell`] over the real
//! store, and the log flusher beside it. Everything decided lives in the
//! shell; this file only carries it out: threads, channels, appends,
//! fsyncs, and handing messages to connections.
//!
//! The writer takes every command waiting in its channel as one batch,
//! lets the shell decide on each, appends the batch's records and follows
//! its [`FlushPlan`]; the flusher flushes once for every batch handed to it
//! (group commit), sends their messages in order and reports them durable,
//! while the writer decides the next batch.
//!
//! A storage error, in either thread, ends both: the shell is told (it
//! accepts nothing more and tells every connection), nothing not yet
//! durable is sent, and [`run`] returns the error at once. The store is
//! then dropped on a thread of its own: sled's `Drop` may wait forever for
//! a flush that cannot succeed, and the process must still stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::metrics::Metrics;
use super::shell::{Batch, ConnId, FlushPlan, MAX_BATCH, Pruned, Shell, ShellInput, Transmit};
use crate::core::{JobRef, Now};
use crate::proto::{ClientMsg, ServerMsg};
use crate::store::{Flusher, Store, StoreError};

/// Most commands waiting for the writer; connection tasks wait when it is
/// full (back-pressure onto their sockets).
pub(crate) const COMMAND_QUEUE: usize = 8192;

/// Most messages waiting to be written to one connection. A peer that
/// lets more pile up is too slow, and is disconnected rather than allowed
/// to hold memory (a runner reconnects; nothing it was sent is lost,
/// because everything is re-derived from the log).
pub(crate) const OUTBOX: usize = 1024;

/// The sending side of one connection.
#[derive(Clone)]
pub(crate) struct Outbox {
    pub tx: tokio::sync::mpsc::Sender<ServerMsg>,
    /// Cancelled when the connection must close (too slow to read).
    pub kill: CancellationToken,
}

impl Outbox {
    /// Queues a message without waiting; a full queue closes the connection.
    fn deliver(&self, msg: ServerMsg) {
        use tokio::sync::mpsc::error::TrySendError;
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.kill.cancel();
        }
    }
}

/// Most unchanged heartbeats waiting on the [`Beats`] board; beyond it a
/// connection sends its heartbeat as a command (as the board does not
/// wake the writer, this only fills when the writer is held up).
pub(crate) const BEATS_WAITING: usize = 65_536;

/// An unchanged heartbeat left for the writer, in its place among its
/// connection's frames: `after` frames of the connection were sent as
/// commands before it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Beat {
    pub conn: ConnId,
    pub holding: Option<JobRef>,
    pub after: u64,
}

/// The board where connection tasks leave the periodic heartbeats that
/// say nothing new ("still here, same job"), instead of the command
/// queue. Sending a command wakes the writer; with ten thousand idle
/// runners that was thousands of thread wake-ups a second, most of the
/// dispatcher's idle CPU besides reading the sockets. Nothing here wakes
/// it: the writer takes the board whenever it wakes anyway, and at the
/// latest at its next tick, before it judges heartbeat deadlines. A beat
/// so waits at most one tick (a quarter of the heartbeat timeout, at most
/// 1 s) and is heard when taken, never earlier, so nobody is judged
/// sooner for it. Anything that can change a decision (a heartbeat with a
/// different job held, any other frame) still goes through the queue.
#[derive(Debug, Default)]
pub(crate) struct Beats {
    waiting: Mutex<Vec<Beat>>,
}

impl Beats {
    /// Leaves `beat` for the writer; false when the board is full (then
    /// send it as a command).
    pub fn put(&self, beat: Beat) -> bool {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= BEATS_WAITING {
            return false;
        }
        w.push(beat);
        true
    }

    /// Everything on the board, into `into` (emptied first).
    fn take(&self, into: &mut Vec<Beat>) {
        into.clear();
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *w, into);
    }
}

pub(crate) enum Cmd {
    /// A connection past its handshake, with where its messages go.
    Open {
        conn: ConnId,
        outbox: Outbox,
        hello: ShellInput,
    },
    Input(ShellInput),
    /// The flusher stopped on an error (it is in the shared slot).
    FlusherFailed,
    Shutdown,
}

/// The two clocks, read together. Monotonic milliseconds count from the
/// start of the process; wall milliseconds only stamp records.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now(&self) -> Now {
        Now {
            wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            mono_ms: self.epoch.elapsed().as_millis() as u64,
        }
    }
}

/// One batch's messages, handed from the writer to the flusher.
struct Handoff {
    id: u64,
    wrote: bool,
    sends: Vec<(Outbox, ServerMsg)>,
}

/// What the flusher tells the writer.
#[derive(Default)]
struct FlusherReport {
    /// The newest batch made durable and sent.
    durable: AtomicU64,
    /// Why the flusher stopped, if it failed.
    failure: Mutex<Option<StoreError>>,
}

/// An open connection as the writer sees it.
struct Open {
    outbox: Outbox,
    /// Frames of it taken from the command queue, to put each [`Beat`] in
    /// its place.
    frames: u64,
}

pub(crate) struct Driver {
    pub shell: Shell,
    store: Option<Box<dyn Store>>,
    outboxes: HashMap<ConnId, Open>,
    beats: Arc<Beats>,
    /// The board's beats being handled (kept to reuse its allocation).
    taken: Vec<Beat>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Batches handed to the flusher with pruned outputs, by batch: their
    /// outputs are deleted once the flusher reports the batch durable.
    pruning: std::collections::VecDeque<(u64, Pruned)>,
}

impl Driver {
    pub fn new(
        shell: Shell,
        store: Box<dyn Store>,
        beats: Arc<Beats>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Driver {
        Driver {
            shell,
            store: Some(store),
            outboxes: HashMap::new(),
            beats,
            taken: Vec::new(),
            clock,
            metrics,
            pruning: std::collections::VecDeque::new(),
        }
    }

    fn store(&mut self) -> &mut dyn Store {
        self.store
            .as_deref_mut()
            .expect("the store is held until run ends")
    }

    /// Records the start and makes it durable before anything is served.
    pub fn start(&mut self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let batch = self.shell.start(std::process::id(), now);
        debug_assert_eq!(batch.plan, FlushPlan::Inline);
        self.store().append(&batch.records)?;
        if !batch.archived.is_empty() {
            self.store()
                .archive(&batch.archived, batch.archived_through)?;
        }
        self.store().flush()
    }

    /// Runs until `Shutdown` or until every sender is gone; an error means
    /// the log could not be written, and the process must stop.
    pub fn run(
        mut self,
        rx: flume::Receiver<Cmd>,
        wake: flume::Sender<Cmd>,
    ) -> Result<(), StoreError> {
        let report = Arc::new(FlusherReport::default());
        let flusher = self.store().flusher()?;
        let (out_tx, out_rx) = mpsc::channel();
        let flushing = {
            let report = report.clone();
            let metrics = self.metrics.clone();
            std::thread::Builder::new()
                .name("log-flusher".into())
                .spawn(move || flush_and_send(flusher, out_rx, &report, wake, &metrics))
                .map_err(|e| StoreError::Write {
                    dir: Default::default(),
                    failure: crate::store::IoFailure::of(&e),
                    detail: format!("cannot start the flusher thread: {e}"),
                })?
        };
        let decided = self.decide(&rx, &out_tx, &report);
        drop(out_tx);
        let result = match decided {
            Ok(()) => {
                // The flusher sends what is still waiting, then stops.
                let joined = flushing.join();
                let failed = report
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                match (failed, joined) {
                    (Some(e), _) => Err(e),
                    (None, Ok(())) => self.store().stopped_cleanly(),
                    (None, Err(_)) => Err(StoreError::FlusherStopped),
                }
            }
            // The flusher may be stuck in an fsync: it is not waited for.
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                info!(
                    last_seq = self.shell.state().last_seq(),
                    "log flushed; dispatcher core stopped"
                );
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Tells the shell and every connection, and lets go of the store
    /// without waiting for it.
    fn fail(&mut self, e: &StoreError) {
        for t in self.shell.storage_failed(e) {
            if let Some(o) = self.outboxes.get(&t.conn) {
                o.outbox.deliver(t.msg);
            }
        }
        self.outboxes.clear();
        if let Some(store) = self.store.take() {
            let _ = std::thread::Builder::new()
                .name("log-close".into())
                .spawn(move || drop(store));
        }
    }

    /// The deciding half of [`Driver::run`].
    fn decide(
        &mut self,
        rx: &flume::Receiver<Cmd>,
        out: &mpsc::Sender<Handoff>,
        report: &FlusherReport,
    ) -> Result<(), StoreError> {
        loop {
            let now = self.clock.now();
            let wait_ms = self
                .shell
                .poll_timeout()
                .map_or(1000, |due| due.saturating_sub(now.mono_ms));
            let waiting = Instant::now();
            let first = match rx.recv_timeout(Duration::from_millis(wait_ms)) {
                Ok(c) => Some(c),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let idle_wait_ms = waiting.elapsed().as_millis() as u64;
            if let Some(e) = report
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return Err(e);
            }
            let now = self.clock.now();
            let durable = report.durable.load(Ordering::Acquire);
            self.delete_durable_pruned(durable)?;
            self.shell.durable(durable, now);
            let mut stop = false;
            if let Some(cmd) = first {
                stop = self.process(cmd, now);
                let mut taken = 1;
                while taken < MAX_BATCH && !stop {
                    match rx.try_recv() {
                        Ok(cmd) => stop = self.process(cmd, now),
                        Err(_) => break,
                    }
                    taken += 1;
                }
            }
            self.take_beats(now);
            self.shell.handle_timeout(now);
            {
                let store = self.store.as_deref().expect("held until run ends");
                self.shell.prune_outputs(now, store);
            }
            if let Some(batch) = self.shell.take_batch(now, idle_wait_ms) {
                self.carry_out(batch, out)?;
            }
            if self.shell.snapshot_due() {
                self.snapshot()?;
            }
            if stop {
                return Ok(());
            }
        }
    }

    /// Appends a batch and follows its plan.
    fn carry_out(&mut self, batch: Batch, out: &mpsc::Sender<Handoff>) -> Result<(), StoreError> {
        let Batch {
            id,
            records,
            outputs,
            infos,
            archived,
            archived_through,
            sends,
            plan,
            pruned,
        } = batch;
        let started = Instant::now();
        let store = self.store();
        for (stored, output) in &outputs {
            store.put_output(stored, output)?;
        }
        for (job, info) in &infos {
            store.put_info(*job, info)?;
        }
        store.append(&records)?;
        // After the records they follow from: the indexes never hold a
        // job whose finishing record a crash could lose.
        if !archived.is_empty() {
            store.archive(&archived, archived_through)?;
        }
        if !records.is_empty() {
            self.metrics.appended(started.elapsed());
            self.metrics.records(&records);
        }
        let sends = self.address(sends);
        match plan {
            FlushPlan::SendNow => send_all(sends),
            FlushPlan::Inline => {
                let started = Instant::now();
                self.store().flush()?;
                self.metrics.flushed(started.elapsed());
                send_all(sends);
                self.delete_pruned(pruned)?;
            }
            FlushPlan::Handoff { wrote } => {
                if !pruned.is_empty() {
                    self.pruning.push_back((id, pruned));
                }
                if out.send(Handoff { id, wrote, sends }).is_err() {
                    return Err(StoreError::FlusherStopped);
                }
            }
        }
        Ok(())
    }

    /// Deletes pruned outputs whose `OutputsPruned` records are durable
    /// (their batch is `durable` or older): never before.
    fn delete_durable_pruned(&mut self, durable: u64) -> Result<(), StoreError> {
        while self.pruning.front().is_some_and(|(id, _)| *id <= durable) {
            let (_, pruned) = self.pruning.pop_front().expect("checked");
            self.delete_pruned(pruned)?;
        }
        Ok(())
    }

    fn delete_pruned(&mut self, pruned: Pruned) -> Result<(), StoreError> {
        for (seq, outputs) in pruned {
            self.store().delete_outputs(seq, &outputs)?;
            debug!(seq, outputs = outputs.len(), "pruned outputs deleted");
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let store = self.store.as_deref_mut().expect("held until run ends");
        store.save_snapshot(self.shell.state())?;
        let seq = self.shell.state().last_seq();
        self.shell.snapshot_saved(seq);
        debug!(
            seq,
            ms = started.elapsed().as_millis() as u64,
            "snapshot saved"
        );
        Ok(())
    }

    /// Resolves each message's connection now, in decision order.
    fn address(&self, sends: Vec<Transmit>) -> Vec<(Outbox, ServerMsg)> {
        sends
            .into_iter()
            .filter_map(|t| {
                self.outboxes
                    .get(&t.conn)
                    .map(|o| (o.outbox.clone(), t.msg))
            })
            .collect()
    }

    /// Hands the shell the heartbeats left on the [`Beats`] board, each as
    /// the frame it was. One is taken only in its place: every frame its
    /// connection sent before it taken already, none sent after it.
    /// Otherwise it is old news (a frame sent after it said more) or would
    /// overtake one, and it is dropped, as a heartbeat lost on the way;
    /// the connection's next one is at most a quarter timeout away.
    fn take_beats(&mut self, now: Now) {
        let mut taken = std::mem::take(&mut self.taken);
        self.beats.take(&mut taken);
        let store = self.store.as_deref().expect("held until run ends");
        for b in taken.drain(..) {
            if self
                .outboxes
                .get(&b.conn)
                .is_some_and(|o| o.frames == b.after)
            {
                let msg = ClientMsg::Heartbeat { holding: b.holding };
                let input = ShellInput::Frame { conn: b.conn, msg };
                self.shell.handle(input, now, store);
            }
        }
        self.taken = taken;
    }

    /// Handles one command; true means stop after this batch.
    fn process(&mut self, cmd: Cmd, now: Now) -> bool {
        match cmd {
            Cmd::Shutdown => return true,
            Cmd::FlusherFailed => {}
            Cmd::Open {
                conn,
                outbox,
                hello,
            } => {
                self.outboxes.insert(conn, Open { outbox, frames: 0 });
                let store = self.store.as_deref().expect("held until run ends");
                self.shell.handle(hello, now, store);
            }
            Cmd::Input(input) => {
                let closed = match &input {
                    ShellInput::Closed { conn } => Some(*conn),
                    ShellInput::Frame { conn, .. } => {
                        if let Some(o) = self.outboxes.get_mut(conn) {
                            o.frames += 1;
                        }
                        None
                    }
                    _ => None,
                };
                let store = self.store.as_deref().expect("held until run ends");
                self.shell.handle(input, now, store);
                if let Some(conn) = closed {
                    self.outboxes.remove(&conn);
                }
            }
        }
        false
    }
}

/// The flushing half of [`Driver::run`]: takes every batch handed over so
/// far, flushes once if any of them wrote (one fsync covers all of them,
/// and everything appended before them), then sends their messages in
/// order and reports them durable. Nothing leaves before the records it
/// depends on are durable; after a failed flush nothing leaves at all.
fn flush_and_send(
    flusher: Box<dyn Flusher>,
    rx: mpsc::Receiver<Handoff>,
    report: &FlusherReport,
    wake: flume::Sender<Cmd>,
    metrics: &Metrics,
) {
    let mut ready = Vec::new();
    while let Ok(first) = rx.recv() {
        ready.push(first);
        while let Ok(more) = rx.try_recv() {
            ready.push(more);
        }
        if ready.iter().any(|h| h.wrote) {
            let started = Instant::now();
            if let Err(e) = flusher.flush() {
                *report.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                let _ = wake.try_send(Cmd::FlusherFailed);
                return;
            }
            metrics.flushed(started.elapsed());
        }
        for h in ready.drain(..) {
            send_all(h.sends);
            report.durable.store(h.id, Ordering::Release);
        }
    }
}

fn send_all(sends: Vec<(Outbox, ServerMsg)>) {
    for (outbox, msg) in sends {
        outbox.deliver(msg);
    }
}
