//! The dispatcher's shell as a state machine: no sockets, no threads, no
//! clock, no disk writes. The real dispatcher (`actor.rs`) and the
//! simulator (`tests/sim.rs`) drive this same code; quinn-proto and str0m
//! are the models.
//!
//! What it owns: the [`Core`], the table of connections (who is which
//! runner, what each role may send), fencing (a newer connection with a
//! runner's name wins), turning the core's decisions into messages for
//! connections, and the group-commit pipeline's rules: every message rides
//! in a [`Batch`] with the records it depends on, and the batch says how it
//! is made durable ([`FlushPlan`]). What it is told: frames and connection
//! ends ([`ShellInput`]), the time ([`Now`]), which batches are durable
//! ([`Shell::durable`]) and whether storage failed
//! ([`Shell::storage_failed`]).
//!
//! The driver's loop, in both worlds:
//! 1. feed inputs with [`Shell::handle`]; call [`Shell::handle_timeout`]
//!    when [`Shell::poll_timeout`] is due;
//! 2. [`Shell::take_batch`]: append its records and outputs, then follow
//!    its plan: send at once, flush here then send, or hand it to the
//!    flusher, which flushes once for every batch waiting, sends them in
//!    order and reports them with [`Shell::durable`];
//! 3. when [`Shell::snapshot_due`], store a snapshot of [`Shell::state`].
//!
//! Any storage error goes to [`Shell::storage_failed`]; from then on the
//! shell accepts nothing, and the driver stops.

use std::collections::{BTreeMap, HashMap};

use tracing::{debug, info, warn};

use super::live::Live;
use crate::core::ids::{validate_branch_name, validate_repository_name, validate_runner_name};
use crate::core::{
    ArchivedJob, CommitId, CommitInfo, Core, Event, HistoryFilter, Input, Job, JobId, JobRef,
    JobReport, JobStatus, LeftJob, Now, Outcome, Record, Refusal, Reply, RunnerName, Serves, State,
    Step, ToRunner,
};
use crate::proto::auth::Grant;
use crate::proto::{
    ClientMsg, ErrorCode, MAX_CHUNK_BYTES, MAX_HISTORY_EVENTS, MAX_MESSAGE_BYTES, MAX_OUTPUT_BYTES,
    MAX_SERVED, MAX_WATCHED, MIN_PREFIX_HEX, MetricsView, PAGE_BYTES, REPLAY_PAGE, ResultView,
    Role, ServerMsg, StatusView, bounded,
};
use crate::store::{OutputStore, Reads, StoreError};

/// A connection's number, given by the driver in the order connections
/// were accepted: of two connections with one runner's name, the one
/// accepted later wins, whichever hello arrives first.
pub type ConnId = u64;

/// Most commits one report may carry.
pub const MAX_COMMITS_PER_REPORT: usize = 100_000;

/// Most results one `Results` answer lists, whatever the limit asked.
pub const MAX_RESULTS_PAGE: usize = 20_000;

/// Most tips one `Tips` answer lists.
pub const MAX_TIPS_PAGE: usize = 10_000;

/// A wait at least this long for the first command of a batch means the
/// dispatcher is quiet: a lone command is then flushed on the deciding
/// thread (waking the flusher would add a thread switch to every request
/// of a quiet dispatcher; under load, blocking there would stall the
/// pipeline).
pub const QUIET_MS: u64 = 1;

/// Most commands taken into one batch.
pub const MAX_BATCH: usize = 4096;

/// The shell's tunables.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// Store a snapshot every this many events.
    pub snapshot_every: u64,
    /// The named repositories (`--repository NAME=URL`) and the URL a
    /// runner that serves any repository clones each from. The default
    /// (unnamed) repository always exists besides them.
    pub repositories: BTreeMap<String, String>,
}

/// What a connection task reports, past its handshake.
#[derive(Debug)]
pub enum ShellInput {
    /// A runner proved itself; it says what it holds and what it let go.
    RunnerHello {
        conn: ConnId,
        name: RunnerName,
        holding: Option<JobRef>,
        left: Option<LeftJob>,
        serves: Serves,
    },
    /// An observer or tool proved itself (it was welcomed already).
    ClientHello {
        conn: ConnId,
        role: Role,
        grant: Grant,
    },
    /// A frame from a connection that said hello.
    Frame { conn: ConnId, msg: ClientMsg },
    /// The dispatcher's notifier (an in-process connection) opened.
    NotifierHello { conn: ConnId },
    /// The connection ended (either side).
    Closed { conn: ConnId },
}

/// One message for one connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    pub conn: ConnId,
    pub msg: ServerMsg,
}

/// How a batch becomes durable before its messages leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPlan {
    /// Nothing to wait for: it wrote nothing and no batch is in flight.
    SendNow,
    /// Flush on the deciding thread, then send: a lone command after a
    /// quiet spell, with nothing in flight.
    Inline,
    /// Hand to the flusher, which flushes once for every batch waiting
    /// (when any of them wrote) and sends them in order. A batch that
    /// wrote nothing still waits for the batches handed over before it.
    Handoff { wrote: bool },
}

/// One batch of decisions: records to append, outputs to store, messages
/// that may leave only once the records (and every earlier batch's) are
/// durable.
#[derive(Debug)]
pub struct Batch {
    pub id: u64,
    pub records: Vec<Record>,
    pub outputs: Vec<(JobRef, Vec<u8>)>,
    /// Commits' authors and subjects, kept beside the log.
    pub infos: Vec<(JobId, CommitInfo)>,
    /// Finished jobs that left the state's memory, for the history
    /// indexes, and the state's count of them after these.
    pub archived: Vec<ArchivedJob>,
    pub archived_through: u64,
    pub sends: Vec<Transmit>,
    pub plan: FlushPlan,
}

/// Where the shell stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShellStatus {
    Serving,
    /// Storage failed: nothing more is accepted, decided or acknowledged.
    Failed,
}

/// What the shell knows of a connection.
#[derive(Clone, Debug)]
enum Peer {
    Runner { name: RunnerName },
    Client { role: Role, grant: Grant },
    Notifier,
}

/// Most notifications in one [`ServerMsg::Owed`] (an in-process message,
/// never a frame): with at most [`crate::notify::MAX_SINKS`] sinks of at
/// most [`crate::core::MAX_OWED_PER_SINK`] each, everything owed fits in
/// the notifier's queue of messages when it connects.
pub const OWED_PAGE: usize = 4096;

pub struct Shell {
    core: Core,
    conns: HashMap<ConnId, Peer>,
    /// The current connection of each runner name; others are fenced.
    runners: HashMap<RunnerName, ConnId>,
    open: Open,
    next_batch: u64,
    /// The newest batch handed to the flusher.
    handed_off: u64,
    /// Batches handed to the flusher and not yet durable, with when
    /// (monotonic): how the shell notices a disk that holds everything back.
    waiting: std::collections::VecDeque<(u64, u64)>,
    /// The newest batch the flusher has made durable and sent.
    durable: u64,
    status: ShellStatus,
    config: ShellConfig,
    last_snapshot_seq: u64,
    next_tick_mono_ms: Option<u64>,
    /// Live output, followers and watchers (not durable, not decided on).
    live: Live,
    /// The notifier's connection, if it is connected.
    notifier: Option<ConnId>,
}

/// The batch being decided.
#[derive(Default)]
struct Open {
    records: Vec<Record>,
    outputs: Vec<(JobRef, Vec<u8>)>,
    infos: Vec<(JobId, CommitInfo)>,
    /// Jobs that left memory in this batch (readers look here before the
    /// history indexes, which get them when the batch is written).
    archived: Vec<ArchivedJob>,
    sends: Vec<Transmit>,
    /// Notifications that became due in this batch, for the notifier.
    owed: Vec<crate::core::Due>,
    inputs: usize,
}

impl Shell {
    /// A shell over a core rebuilt from the log. Call [`Shell::start`]
    /// before anything else, and make its batch durable before serving.
    pub fn new(core: Core, config: ShellConfig) -> Shell {
        let last_snapshot_seq = core.state.last_seq();
        Shell {
            core,
            conns: HashMap::new(),
            runners: HashMap::new(),
            open: Open::default(),
            next_batch: 1,
            handed_off: 0,
            waiting: std::collections::VecDeque::new(),
            durable: 0,
            status: ShellStatus::Serving,
            config,
            last_snapshot_seq,
            next_tick_mono_ms: None,
            live: Live::default(),
            notifier: None,
        }
    }

    /// Records the start; the batch this leaves must be durable before
    /// the dispatcher serves.
    /// Records the start: the batch to append and flush (on this thread,
    /// [`FlushPlan::Inline`]) before anything is served.
    pub fn start(&mut self, pid: u32, now: Now) -> Batch {
        self.next_tick_mono_ms = Some(now.mono_ms + self.core.config().tick_ms());
        let step = self.core.handle(Input::Started { pid }, now);
        self.absorb(step);
        let open = std::mem::take(&mut self.open);
        let id = self.next_batch;
        self.next_batch += 1;
        Batch {
            id,
            records: open.records,
            outputs: open.outputs,
            infos: open.infos,
            archived: open.archived,
            archived_through: self.core.state.archived_count(),
            sends: open.sends,
            plan: FlushPlan::Inline,
        }
    }

    pub fn state(&self) -> &State {
        &self.core.state
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn status(&self) -> ShellStatus {
        self.status
    }

    /// The connection a runner name is served on, if any.
    pub fn runner_conn(&self, runner: &str) -> Option<ConnId> {
        self.runners.get(runner).copied()
    }

    /// Connections the shell knows (past their hello).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Batches handed to the flusher and not yet reported durable.
    pub fn in_flight(&self) -> u64 {
        self.handed_off - self.durable
    }

    /// When [`Shell::handle_timeout`] is next due (monotonic).
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.status {
            ShellStatus::Serving => self.next_tick_mono_ms,
            ShellStatus::Failed => None,
        }
    }

    /// Time passed: heartbeat deadlines (and the pause check) run.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.status != ShellStatus::Serving {
            return;
        }
        let tick_ms = self.core.config().tick_ms();
        match self.next_tick_mono_ms {
            Some(due) if now.mono_ms < due => return,
            _ => {}
        }
        self.next_tick_mono_ms = Some(now.mono_ms + tick_ms);
        if self.stalled_ms(now) > self.core.config().pause_gap_ms() {
            // Every acknowledgement and welcome waits on the disk: runners
            // cannot be judged on what they could not be answered.
            return;
        }
        let step = self.core.handle(Input::Tick, now);
        self.absorb(step);
    }

    /// How long the oldest batch waiting for the flusher has waited.
    fn stalled_ms(&self, now: Now) -> u64 {
        self.waiting
            .front()
            .map_or(0, |(_, at)| now.mono_ms.saturating_sub(*at))
    }

    /// One input from a connection; `log` answers reads (replay, output).
    pub fn handle<L: Reads + ?Sized>(&mut self, input: ShellInput, now: Now, log: &L) {
        if self.status != ShellStatus::Serving {
            if let ShellInput::Frame { conn, .. } | ShellInput::RunnerHello { conn, .. } = input {
                self.send(
                    conn,
                    ServerMsg::error(ErrorCode::ShuttingDown, "the dispatcher is stopping", true),
                );
            }
            return;
        }
        self.open.inputs += 1;
        match input {
            ShellInput::RunnerHello {
                conn,
                name,
                holding,
                left,
                serves,
            } => self.runner_hello(conn, name, holding, left, serves, now),
            ShellInput::ClientHello { conn, role, grant } => {
                self.conns.insert(conn, Peer::Client { role, grant });
            }
            ShellInput::NotifierHello { conn } => self.notifier_hello(conn),
            ShellInput::Frame { conn, msg } => match self.conns.get(&conn).cloned() {
                Some(Peer::Runner { name }) => self.runner_frame(conn, name, msg, now),
                Some(Peer::Client { role, grant }) => {
                    self.request(conn, role, grant, msg, now, log)
                }
                Some(Peer::Notifier) => self.notifier_frame(conn, msg, now),
                None => debug!(conn, "a frame from a connection without hello ignored"),
            },
            ShellInput::Closed { conn } => self.closed(conn, now),
        }
    }

    fn runner_hello(
        &mut self,
        conn: ConnId,
        name: RunnerName,
        holding: Option<JobRef>,
        left: Option<LeftJob>,
        serves: Serves,
        now: Now,
    ) {
        if let Err(e) = validate_runner_name(&name) {
            self.send(
                conn,
                ServerMsg::error(ErrorCode::Invalid, e.to_string(), true),
            );
            return;
        }
        if let Err(why) = validate_serves(&serves) {
            self.send(conn, ServerMsg::error(ErrorCode::Invalid, why, true));
            return;
        }
        if let Some(&newer) = self.runners.get(&name)
            && newer > conn
        {
            // A hello that was slow to arrive on a connection accepted
            // before the current one: the older connection loses.
            self.send(conn, superseded(&name));
            return;
        }
        if let Some(old) = self.runners.insert(name.clone(), conn) {
            info!(runner = %name, old_conn = old, conn, "runner reconnected; older connection fenced");
            self.send(old, superseded(&name));
            self.conns.remove(&old);
        }
        self.conns.insert(conn, Peer::Runner { name: name.clone() });
        let mut step = self.core.handle(
            Input::RunnerConnected {
                runner: name,
                holding,
                left,
                serves,
            },
            now,
        );
        if let Some(Reply::Welcome { keep }) = step.reply.take() {
            let idle_heartbeat_ms = self.core.config().idle_heartbeat_ms;
            self.send(
                conn,
                ServerMsg::Welcome {
                    keep,
                    idle_heartbeat_ms,
                },
            );
            if let Some(job) = keep {
                // Where its live output goes on from, so a reconnection
                // leaves neither a gap nor a repeat.
                let offset = self.live.end_of(job);
                self.send(conn, ServerMsg::OutputFrom { job, offset });
            }
        }
        self.absorb(step);
    }

    /// The notifier connected: it gets everything owed, in pages, then
    /// each batch's new notifications. Only the newest notifier is served.
    fn notifier_hello(&mut self, conn: ConnId) {
        if let Some(old) = self.notifier.replace(conn) {
            self.conns.remove(&old);
        }
        self.conns.insert(conn, Peer::Notifier);
        let owed: Vec<crate::core::Due> = self.core.state.outbox().values().cloned().collect();
        for page in owed.chunks(OWED_PAGE) {
            self.send(
                conn,
                ServerMsg::Owed {
                    dues: page.to_vec(),
                },
            );
        }
    }

    fn notifier_frame(&mut self, conn: ConnId, msg: ClientMsg, now: Now) {
        match msg {
            ClientMsg::Notified { n, dropped } => {
                let step = self
                    .core
                    .handle(crate::core::Input::Notified { n, dropped }, now);
                self.absorb(step);
            }
            other => self.send(
                conn,
                ServerMsg::error(
                    ErrorCode::NotPermitted,
                    format!("the notifier may not send {}", other.kind()),
                    false,
                ),
            ),
        }
    }

    fn closed(&mut self, conn: ConnId, now: Now) {
        self.live.closed(conn);
        if self.notifier == Some(conn) {
            self.notifier = None;
        }
        let Some(peer) = self.conns.remove(&conn) else {
            return;
        };
        if let Peer::Runner { name } = peer
            && self.runners.get(&name) == Some(&conn)
        {
            self.runners.remove(&name);
            let step = self
                .core
                .handle(Input::RunnerDisconnected { runner: name }, now);
            self.absorb(step);
        }
    }

    fn runner_frame(&mut self, conn: ConnId, name: RunnerName, msg: ClientMsg, now: Now) {
        if self.runners.get(&name) != Some(&conn) {
            debug!(runner = %name, conn, "message from a fenced connection ignored");
            return;
        }
        let input = match msg {
            ClientMsg::Heartbeat { holding } => Input::Heartbeat {
                runner: name,
                holding,
            },
            ClientMsg::Ready => Input::RunnerReady { runner: name },
            ClientMsg::HandBack { job } => Input::HandBack { runner: name, job },
            ClientMsg::Result {
                job,
                report,
                output,
                info,
            } => return self.result(conn, name, job, report, output, info, now),
            ClientMsg::OutputChunk { job, offset, data } => {
                return self.output_chunk(name, job, offset, data, now);
            }
            other => {
                self.send(
                    conn,
                    ServerMsg::error(
                        ErrorCode::NotPermitted,
                        format!("a runner may not send {}", other.kind()),
                        true,
                    ),
                );
                return;
            }
        };
        let step = self.core.handle(input, now);
        self.absorb(step);
    }

    /// Live output from the runner holding `job`: kept, and passed to
    /// whoever follows the commit. Nothing of it is logged.
    fn output_chunk(
        &mut self,
        name: RunnerName,
        job: JobRef,
        offset: u64,
        mut data: Vec<u8>,
        now: Now,
    ) {
        // Output is a sign of life as good as a heartbeat, even of a job
        // the runner no longer holds (its heartbeats sort that out): a
        // runner busy streaming is never taken for lost.
        let held = self.core.state.holder(&name) == Some(job);
        let step = self.core.handle(Input::Heard { runner: name }, now);
        self.absorb(step);
        if !held {
            return;
        }
        data.truncate(MAX_CHUNK_BYTES);
        let Some((offset, new)) = self.live.chunk(job, offset, &data) else {
            return;
        };
        for conn in self.live.followers(job.job).to_vec() {
            self.send(
                conn,
                ServerMsg::OutputChunk {
                    job,
                    offset,
                    data: new.clone(),
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn result(
        &mut self,
        conn: ConnId,
        name: RunnerName,
        job: JobRef,
        mut report: JobReport,
        mut output: Vec<u8>,
        info: Option<CommitInfo>,
        now: Now,
    ) {
        // Bounded at the edge: the tail of the output, the start of the line.
        if output.len() > MAX_OUTPUT_BYTES {
            output.drain(..output.len() - MAX_OUTPUT_BYTES);
        }
        report.message = bounded(report.message, MAX_MESSAGE_BYTES);
        let mut step = self.core.handle(
            Input::ResultReported {
                runner: name.clone(),
                job,
                report,
                output_bytes: output.len() as u64,
            },
            now,
        );
        let recorded = step.records.iter().any(|r| {
            matches!(&r.event, Event::Result { job: j, attempt, .. } if *j == job.job && *attempt == job.attempt)
        });
        if recorded {
            self.rest_to_followers(job, &output);
        }
        if recorded && !output.is_empty() {
            self.open.outputs.push((job, output));
        }
        if recorded && let Some(info) = info {
            self.open.infos.push((job.job, bounded_info(info)));
        }
        if let Some(Reply::ResultAck {
            job,
            accepted,
            reason,
        }) = step.reply.take()
        {
            if !accepted {
                warn!(runner = %name, %job, %reason, "stale result rejected");
            }
            self.send(
                conn,
                ServerMsg::ResultAck {
                    job,
                    accepted,
                    reason,
                },
            );
        }
        self.absorb(step);
    }

    /// What followers of a finishing attempt have not had yet: the runner
    /// streams its output before its result, but a runner that reconnected
    /// (to a restarted dispatcher, say) may not have streamed it all. The
    /// offsets of a result's output are exact only when nothing was
    /// dropped from it, so only then is the rest sent.
    fn rest_to_followers(&mut self, job: JobRef, output: &[u8]) {
        let followers = self.live.followers(job.job).to_vec();
        if followers.is_empty() {
            return;
        }
        let had = self.live.end_of(job);
        let rest = if had == 0 {
            0
        } else if output.len() < MAX_OUTPUT_BYTES && (had as usize) < output.len() {
            had as usize
        } else {
            return;
        };
        for (i, piece) in output[rest..].chunks(MAX_CHUNK_BYTES).enumerate() {
            for &conn in &followers {
                self.send(
                    conn,
                    ServerMsg::OutputChunk {
                        job,
                        offset: (rest + i * MAX_CHUNK_BYTES) as u64,
                        data: piece.to_vec(),
                    },
                );
            }
        }
    }

    fn request<L: Reads + ?Sized>(
        &mut self,
        conn: ConnId,
        role: Role,
        grant: Grant,
        msg: ClientMsg,
        now: Now,
        log: &L,
    ) {
        if let Err((code, why)) = permitted(role, grant, &msg).and_then(|()| validate(&msg)) {
            self.send(conn, ServerMsg::error(code, why, false));
            return;
        }
        if let Err((code, why)) = self.check_repository(&msg) {
            self.send(conn, ServerMsg::error(code, why, false));
            return;
        }
        let answer = match msg {
            ClientMsg::Commits {
                repository,
                branch,
                commits,
                tip,
                infos,
            } => {
                let reported: Vec<(CommitId, CommitInfo)> = if infos.len() == commits.len() {
                    commits.iter().copied().zip(infos).collect()
                } else {
                    Vec::new()
                };
                // "Already seen" stays exact: commits out of memory are
                // looked up first, and a failed lookup accepts nothing.
                if let Err(e) = self.recall(&commits, log) {
                    self.send(conn, read_failed(e));
                    return;
                }
                let mut step = self.core.handle(
                    Input::CommitsReported {
                        repository,
                        branch,
                        commits,
                        tip,
                    },
                    now,
                );
                if let Some(Reply::Commits {
                    accepted,
                    duplicates,
                }) = step.reply.take()
                {
                    // Information about the commits just accepted is kept
                    // beside them.
                    for (c, info) in reported {
                        if accepted.contains(&c)
                            && let Some(j) = self.core.state.job_for_commit(&c)
                        {
                            self.open.infos.push((j.id, bounded_info(info)));
                        }
                    }
                    self.send(
                        conn,
                        ServerMsg::CommitsAck {
                            accepted,
                            duplicates,
                        },
                    );
                }
                self.absorb(step);
                return;
            }
            ClientMsg::Cancel { commit } => {
                return self.action(conn, Input::Cancel { commit }, commit, now, log);
            }
            ClientMsg::Retry { commit } => {
                return self.action(conn, Input::Retry { commit }, commit, now, log);
            }
            ClientMsg::Follow { commit } => return self.follow(conn, commit, log),
            ClientMsg::Watch { commits } => return self.watch(conn, commits, log),
            ClientMsg::Resolve { prefix } => self.resolve(&prefix, log),
            ClientMsg::GetTips { repository, after } => self.tips(repository.as_deref(), after),
            ClientMsg::Status => ServerMsg::Status(StatusView::of(&self.core, now)),
            ClientMsg::Results {
                commit,
                before,
                limit,
                branch,
                outcome,
                repository,
            } => self.results(
                commit,
                before,
                limit,
                ResultFilter {
                    branch: branch.as_deref(),
                    outcome: outcome.as_deref(),
                    repository: repository.as_deref(),
                },
                log,
            ),
            ClientMsg::Replay { from_seq, limit } => {
                let limit = (limit as usize).clamp(1, REPLAY_PAGE);
                match log.read(from_seq, limit) {
                    Ok(records) => ServerMsg::Events {
                        records: fit_page(records, PAGE_BYTES),
                        last_seq: self.core.state.last_seq(),
                    },
                    Err(e) => read_failed(e),
                }
            }
            ClientMsg::Output { job } => self.output(job, log),
            ClientMsg::History { commit } => self.history(commit, log),
            ClientMsg::Metrics => ServerMsg::Metrics(MetricsView::of(&self.core)),
            other => ServerMsg::error(
                ErrorCode::Invalid,
                format!("{} is not a request", other.kind()),
                false,
            ),
        };
        self.send(conn, answer);
    }

    /// The commit's job's records: its timeline.
    fn history<L: Reads + ?Sized>(&self, commit: CommitId, log: &L) -> ServerMsg {
        let id = match self.find_commit(&commit, log) {
            Ok(Some(found)) => found.id(),
            Ok(None) => {
                return ServerMsg::error(
                    ErrorCode::NotFound,
                    format!("the dispatcher has not seen commit {commit}"),
                    false,
                );
            }
            Err(e) => return read_failed(e),
        };
        match log.job_events(id, MAX_HISTORY_EVENTS + 1) {
            Ok(mut records) => {
                let more = records.len() > MAX_HISTORY_EVENTS;
                records.truncate(MAX_HISTORY_EVENTS);
                // Decided but not yet written: the open batch's records.
                if !more {
                    let after = records.last().map_or(0, |r| r.seq);
                    records.extend(
                        self.open
                            .records
                            .iter()
                            .filter(|r| r.seq > after && r.event.job() == Some(id))
                            .cloned(),
                    );
                }
                ServerMsg::History {
                    commit,
                    records: fit_page(records, PAGE_BYTES),
                    more,
                }
            }
            Err(e) => read_failed(e),
        }
    }

    /// Refuses a request naming a repository this dispatcher lacks.
    fn check_repository(&self, msg: &ClientMsg) -> Result<(), (ErrorCode, String)> {
        let named = match msg {
            ClientMsg::Commits { repository, .. }
            | ClientMsg::GetTips { repository, .. }
            | ClientMsg::Results { repository, .. } => repository.as_deref(),
            _ => None,
        };
        let Some(name) = named else { return Ok(()) };
        validate_repository_name(name).map_err(|e| (ErrorCode::Invalid, e.to_string()))?;
        if self.config.repositories.contains_key(name) {
            Ok(())
        } else {
            Err((
                ErrorCode::NotFound,
                format!(
                    "the dispatcher has no repository {name:?}; start it with --repository {name}=URL"
                ),
            ))
        }
    }

    fn tips(&self, repository: Option<&str>, after: Option<String>) -> ServerMsg {
        let empty = BTreeMap::new();
        let tips = self.core.state.tips_of(repository).unwrap_or(&empty);
        let range = match &after {
            Some(a) => {
                tips.range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => tips.range::<String, _>(..),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for (b, c) in range {
            if out.len() == MAX_TIPS_PAGE || bytes + b.len() + 40 > PAGE_BYTES {
                next = out.last().map(|(b, _): &(String, _)| b.clone());
                break;
            }
            bytes += b.len() + 40;
            out.push((b.clone(), *c));
        }
        ServerMsg::Tips { tips: out, next }
    }

    /// A page of results, newest job first: the jobs in memory merged
    /// with the history indexes by job number (memory wins: it is newer).
    /// A rare filter reads at most [`HISTORY_SCAN`] index entries a page;
    /// the page may then be short, and `next` says where to go on.
    fn results<L: Reads + ?Sized>(
        &self,
        commit: Option<CommitId>,
        before: Option<u64>,
        limit: u32,
        filter: ResultFilter<'_>,
        log: &L,
    ) -> ServerMsg {
        let ResultFilter {
            branch,
            outcome,
            repository,
        } = filter;
        let state = &self.core.state;
        if let Some(c) = commit {
            return match self.find_commit(&c, log) {
                Ok(found) => ServerMsg::Results {
                    results: found.map(|f| self.view(&f, log)).into_iter().collect(),
                    next: None,
                },
                Err(e) => read_failed(e),
            };
        }
        // A filter by a name never seen (a branch, a repository without a
        // commit yet) matches nothing in memory: `None` here; no filter is
        // `Some(None)`. The indexes filter by the names themselves.
        let sym = |name: Option<&str>| match name {
            Some(n) => state.sym(n).map(Some),
            None => Some(None),
        };
        let (branch_sym, repository_sym) = (sym(branch), sym(repository));
        let wanted = |j: &Job| {
            branch_sym.is_some_and(|b| b.is_none_or(|b| j.branch == Some(b)))
                && repository_sym.is_some_and(|r| r.is_none_or(|r| j.repository == Some(r)))
                && outcome.is_none_or(|o| status_word(&j.status) == o)
        };
        let before = JobId(before.unwrap_or(u64::MAX).min(state.next_job_id().0));
        let limit = (limit as usize).clamp(1, MAX_RESULTS_PAGE);
        // Finished outcomes only are in the indexes.
        let finished = match outcome {
            None => Some(None),
            Some(o) => Outcome::parse(o).map(Some),
        };
        let history = match finished {
            Some(outcome) => {
                let filter = HistoryFilter {
                    branch: branch.map(str::to_string),
                    repository: repository.map(|r| Some(r.to_string())),
                    outcome,
                };
                match log.archived_page(before, &filter, limit + 1, HISTORY_SCAN) {
                    Ok(page) => page,
                    Err(e) => return read_failed(e),
                }
            }
            None => crate::store::HistoryPage::default(),
        };
        // Below `floor` the indexes were not read: the page ends there.
        let floor = history.resume.map_or(JobId(0), |r| {
            if history.jobs.len() > limit {
                JobId(0)
            } else {
                r
            }
        });
        let mut memory = state
            .jobs_before(before)
            .take_while(|j| j.id >= floor)
            .filter(|j| wanted(j))
            .peekable();
        // Jobs of the open batch that left memory are not in the indexes
        // yet; the indexes may still hold an older copy of a job in
        // memory (retried since).
        let mut pending: Vec<&ArchivedJob> = self
            .open
            .archived
            .iter()
            .filter(|a| a.id < before && a.id >= floor)
            .collect();
        pending.sort_by_key(|a| std::cmp::Reverse(a.id));
        pending.dedup_by_key(|a| a.id);
        let hfilter = |a: &ArchivedJob| {
            branch.is_none_or(|b| a.branch.as_deref() == Some(b))
                && repository.is_none_or(|r| a.repository.as_deref() == Some(r))
                && outcome.is_none_or(|o| a.finished.outcome.as_str() == o)
        };
        let mut pending = pending.into_iter().filter(|a| hfilter(a)).peekable();
        let mut archived = history.jobs.iter().peekable();
        let mut results = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        let mut last = None;
        loop {
            // The newest of the three heads.
            let m = memory.peek().map(|j| j.id);
            let p = pending.peek().map(|a| a.id);
            let a = archived.peek().map(|a| a.id);
            let Some(top) = [m, p, a].into_iter().flatten().max() else {
                break;
            };
            let view = if m == Some(top) {
                let j = memory.next().expect("peeked");
                ResultView::of(state, j, self.stored_info(j.id, log).as_ref())
            } else if p == Some(top) {
                let a = pending.next().expect("peeked");
                ResultView::of_archived(a, self.stored_info(a.id, log).as_ref())
            } else {
                let a = archived.next().expect("peeked");
                ResultView::of_archived(a, self.stored_info(a.id, log).as_ref())
            };
            // One job once: memory, then the open batch, then the indexes.
            while memory.peek().is_some_and(|j| j.id == top) {
                memory.next();
            }
            while pending.peek().is_some_and(|a| a.id == top) {
                pending.next();
            }
            while archived.peek().is_some_and(|a| a.id == top) {
                archived.next();
            }
            if state.job(top).is_some() && m != Some(top) {
                // An out-of-date copy: the job is in memory but the filter
                // does not take it now.
                continue;
            }
            let size = view.size_hint();
            if results.len() == limit || bytes + size > PAGE_BYTES {
                next = last;
                break;
            }
            bytes += size;
            last = Some(top.0);
            results.push(view);
        }
        if next.is_none() && history.resume.is_some() && history.jobs.len() <= limit {
            // The indexes stopped early (a rare filter): go on below.
            next = Some(floor.0);
        }
        ServerMsg::Results { results, next }
    }

    /// A cancel or a retry.
    fn action<L: Reads + ?Sized>(
        &mut self,
        conn: ConnId,
        input: Input,
        commit: CommitId,
        now: Now,
        log: &L,
    ) {
        if let Err(e) = self.recall(&[commit], log) {
            self.send(conn, read_failed(e));
            return;
        }
        let mut step = self.core.handle(input, now);
        let answer = match step.reply.take() {
            Some(Reply::Done) => ServerMsg::ActionDone {
                commit,
                message: match step.records.first().map(|r| &r.event) {
                    Some(Event::JobCancelled { attempt: 0, .. }) => {
                        "cancelled before it ran".into()
                    }
                    Some(Event::JobCancelled { .. }) => "cancelled; its runner stops it".into(),
                    _ => "queued again".into(),
                },
            },
            Some(Reply::Refused(why)) => {
                let (code, message) = match why {
                    Refusal::UnknownCommit => (
                        ErrorCode::NotFound,
                        format!("the dispatcher has not seen commit {commit}"),
                    ),
                    Refusal::AlreadyFinished(o) => (
                        ErrorCode::Conflict,
                        format!(
                            "commit {} already finished ({}); nothing to cancel",
                            commit.short(),
                            o.as_str()
                        ),
                    ),
                    Refusal::NotFinished => (
                        ErrorCode::Conflict,
                        format!(
                            "commit {} is still queued or running; cancel it first, or wait",
                            commit.short()
                        ),
                    ),
                };
                ServerMsg::error(code, message, false)
            }
            _ => ServerMsg::error(ErrorCode::Invalid, "no answer", false),
        };
        self.send(conn, answer);
        self.absorb(step);
    }

    /// The one commit whose id starts with `prefix`: in memory, in the
    /// open batch, or in the history indexes.
    fn resolve<L: Reads + ?Sized>(&self, prefix: &str, log: &L) -> ServerMsg {
        let p = prefix.to_ascii_lowercase();
        let mut found: Vec<CommitId> = self
            .core
            .state
            .jobs()
            .map(|j| j.commit)
            .chain(self.open.archived.iter().map(|a| a.commit))
            .filter(|c| c.starts_with_hex(&p))
            .take(2)
            .collect();
        match log.archived_prefix(&p, 2) {
            Ok(more) => found.extend(more),
            Err(e) => return read_failed(e),
        }
        found.sort();
        found.dedup();
        match found.as_slice() {
            [commit] => ServerMsg::Resolved { commit: *commit },
            [] => ServerMsg::error(
                ErrorCode::NotFound,
                format!("the dispatcher has seen no commit starting with {prefix}"),
                false,
            ),
            _ => ServerMsg::error(
                ErrorCode::Ambiguous,
                format!("more than one commit starts with {prefix}; give more digits"),
                false,
            ),
        }
    }

    /// Finished jobs out of memory that `commits` name, handed to the core
    /// before it decides on them ([`Core::recall`]).
    fn recall<L: Reads + ?Sized>(
        &mut self,
        commits: &[CommitId],
        log: &L,
    ) -> Result<(), StoreError> {
        let mut recalled = Vec::new();
        for c in commits {
            if self.core.state.job_for_commit(c).is_some() {
                continue;
            }
            if let Some(Found::Archived(a)) = self.find_commit(c, log)? {
                recalled.push(*a);
            }
        }
        self.core.recall(recalled);
        Ok(())
    }

    /// A commit's job wherever it is kept: memory first (it is the newest),
    /// then the open batch, then the history indexes.
    fn find_commit<L: Reads + ?Sized>(
        &self,
        commit: &CommitId,
        log: &L,
    ) -> Result<Option<Found<'_>>, StoreError> {
        if let Some(j) = self.core.state.job_for_commit(commit) {
            return Ok(Some(Found::Memory(j)));
        }
        if let Some(a) = self
            .open
            .archived
            .iter()
            .rev()
            .find(|a| a.commit == *commit)
        {
            return Ok(Some(Found::Archived(Box::new(a.clone()))));
        }
        Ok(log
            .archived_commit(commit)?
            .map(|a| Found::Archived(Box::new(a))))
    }

    /// A job by number, out of memory (the open batch, then the indexes).
    fn find_archived<L: Reads + ?Sized>(
        &self,
        job: JobId,
        log: &L,
    ) -> Result<Option<ArchivedJob>, StoreError> {
        if let Some(a) = self.open.archived.iter().rev().find(|a| a.id == job) {
            return Ok(Some(a.clone()));
        }
        log.archived_job(job)
    }

    fn view<L: Reads + ?Sized>(&self, found: &Found<'_>, log: &L) -> ResultView {
        let info = self.stored_info(found.id(), log);
        match found {
            Found::Memory(j) => ResultView::of(&self.core.state, j, info.as_ref()),
            Found::Archived(a) => ResultView::of_archived(a, info.as_ref()),
        }
    }

    /// Streams a commit's output to `conn`: what there is now, then chunks
    /// as they come, then `Ended`.
    fn follow<L: Reads + ?Sized>(&mut self, conn: ConnId, commit: CommitId, log: &L) {
        let found = match self.find_commit(&commit, log) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let why = format!("the dispatcher has not seen commit {commit}");
                self.send(conn, ServerMsg::error(ErrorCode::NotFound, why, false));
                return;
            }
            Err(e) => {
                self.send(conn, read_failed(e));
                return;
            }
        };
        let view = self.view(&found, log);
        let (job, finished, current) = match &found {
            Found::Memory(j) => (
                j.id,
                match j.status {
                    JobStatus::Done(f) => Some(f.attempt),
                    _ => None,
                },
                j.current(),
            ),
            Found::Archived(a) => (
                a.id,
                Some(a.finished.attempt),
                JobRef {
                    job: a.id,
                    attempt: a.attempts,
                },
            ),
        };
        match finished {
            Some(attempt) => {
                let attempt = JobRef { job, attempt };
                let output = self
                    .stored_output(attempt, log)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                for (i, piece) in output.chunks(MAX_CHUNK_BYTES).enumerate() {
                    self.send(
                        conn,
                        ServerMsg::OutputChunk {
                            job: attempt,
                            offset: (i * MAX_CHUNK_BYTES) as u64,
                            data: piece.to_vec(),
                        },
                    );
                }
                self.send(conn, ServerMsg::Ended(Box::new(view)));
            }
            None => {
                if self.live.follow(conn, job).is_err() {
                    self.send(conn, too_many());
                    return;
                }
                if let Some((offset, bytes)) = self.live.buffered(current) {
                    for (i, piece) in bytes.chunks(MAX_CHUNK_BYTES).enumerate() {
                        self.send(
                            conn,
                            ServerMsg::OutputChunk {
                                job: current,
                                offset: offset + (i * MAX_CHUNK_BYTES) as u64,
                                data: piece.to_vec(),
                            },
                        );
                    }
                }
                self.send(conn, ServerMsg::Update(Box::new(view)));
            }
        }
    }

    /// The current view of each commit, then updates as they change.
    fn watch<L: Reads + ?Sized>(&mut self, conn: ConnId, commits: Vec<CommitId>, log: &L) {
        for c in commits {
            let found = match self.find_commit(&c, log) {
                Ok(found) => found,
                Err(e) => {
                    self.send(conn, read_failed(e));
                    return;
                }
            };
            let now = found.map(|f| {
                let view = match &f {
                    Found::Memory(j) => ResultView::of(&self.core.state, j, None),
                    Found::Archived(a) => ResultView::of_archived(a, None),
                };
                (f.id(), view)
            });
            let (sub, msg) = match now {
                Some((id, view)) => (self.live.watch(conn, id), ServerMsg::Update(Box::new(view))),
                None => (
                    self.live.watch_unseen(conn, c),
                    ServerMsg::Unseen { commit: c },
                ),
            };
            if sub.is_err() {
                self.send(conn, too_many());
                return;
            }
            self.send(conn, msg);
        }
    }

    /// An attempt's stored output, also when its result is in the batch
    /// still open (decided, not yet written).
    fn stored_output<L: OutputStore + ?Sized>(
        &self,
        attempt: JobRef,
        log: &L,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.open.outputs.iter().rev().find(|(j, _)| *j == attempt) {
            Some((_, o)) => Ok(Some(o.clone())),
            None => log.output(attempt),
        }
    }

    /// Who wrote a commit and what it says, if known (also from the open
    /// batch). A read error only leaves it out of a view.
    fn stored_info<L: OutputStore + ?Sized>(&self, job: JobId, log: &L) -> Option<CommitInfo> {
        match self.open.infos.iter().rev().find(|(j, _)| *j == job) {
            Some((_, i)) => Some(i.clone()),
            None => log.info(job).ok().flatten(),
        }
    }

    fn output<L: Reads + ?Sized>(&self, job: JobId, log: &L) -> ServerMsg {
        let attempt = match self.core.state.job(job) {
            Some(j) => match &j.status {
                JobStatus::Done(f) => Some(f.attempt),
                _ => None,
            },
            None => match self.find_archived(job, log) {
                Ok(a) => a.map(|a| a.finished.attempt),
                Err(e) => return read_failed(e),
            },
        };
        match attempt {
            Some(attempt) => match self.stored_output(JobRef { job, attempt }, log) {
                Ok(o) => ServerMsg::Output(Some(o.unwrap_or_default())),
                Err(e) => read_failed(e),
            },
            None => ServerMsg::Output(None),
        }
    }

    /// Moves a core step's records and messages into the open batch.
    fn absorb(&mut self, step: Step) {
        if self.core.state.has_archived() {
            let gone = self.core.state.take_archived();
            self.open.archived.extend(gone);
        }
        for rec in &step.records {
            match &rec.event {
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
                } => warn!(%job, %commit, "giving up on job: too many lost runners"),
                Event::DispatcherPaused { gap_ms } => warn!(
                    gap_ms,
                    "the dispatcher did not run for a while (paused, frozen or blocked); every runner gets a full heartbeat timeout"
                ),
                _ => {}
            }
        }
        if !self.live.is_idle() || step.records.iter().any(ends_attempt) {
            self.tell_watchers(&step.records);
        }
        if self.notifier.is_some() {
            for rec in &step.records {
                if let Event::NotificationDue { n, .. } = &rec.event
                    && let Some(d) = self.core.state.outbox().get(n)
                {
                    self.open.owed.push(d.clone());
                }
            }
        }
        self.open.records.extend(step.records);
        for (runner, msg) in step.sends {
            let msg = match msg {
                ToRunner::Assign {
                    job,
                    commit,
                    branch,
                    repository,
                } => ServerMsg::Assign {
                    job,
                    commit,
                    branch,
                    url: repository
                        .as_ref()
                        .and_then(|r| self.config.repositories.get(r))
                        .cloned(),
                    repository,
                },
                ToRunner::Abandon { job, reason } => {
                    info!(%runner, %job, %reason, "told runner to abandon a stale job");
                    ServerMsg::Abandon { job, reason }
                }
            };
            // Addressed now, in decision order: a runner that reconnects
            // later must not get what was meant for its fenced connection.
            if let Some(conn) = self.runners.get(&runner).copied() {
                self.send(conn, msg);
            }
        }
    }

    /// After records about jobs: attempts that ended lose their live
    /// output; followers of a finished job get its end; watchers get the
    /// new views (one per job per step).
    fn tell_watchers(&mut self, records: &[Record]) {
        let mut touched: Vec<JobId> = Vec::new();
        for rec in records {
            if let Some(jr) = rec.event.job_ref()
                && ends_attempt(rec)
            {
                self.live.attempt_ended(jr);
            }
            if let Event::CommitSeen { job, commit, .. } | Event::CommitSeenIn { job, commit, .. } =
                &rec.event
            {
                // Watched before it was seen.
                if !self.live.seen(*commit, *job).is_empty() {
                    touched.push(*job);
                }
            }
            if let Some(job) = rec.event.job()
                && !touched.contains(&job)
            {
                touched.push(job);
            }
        }
        for job in touched {
            let Some(j) = self.core.state.job(job) else {
                continue;
            };
            let done = matches!(j.status, JobStatus::Done(_));
            let watchers = self.live.watchers(job).to_vec();
            let followers = if done {
                self.live.end_follows(job)
            } else {
                Vec::new()
            };
            if watchers.is_empty() && followers.is_empty() {
                continue;
            }
            let view = ResultView::of(&self.core.state, j, None);
            for conn in watchers {
                self.send(conn, ServerMsg::Update(Box::new(view.clone())));
            }
            for conn in followers {
                self.send(conn, ServerMsg::Ended(Box::new(view.clone())));
            }
        }
    }

    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.open.sends.push(Transmit { conn, msg });
    }

    /// Closes the open batch, if it holds anything. `idle_wait_ms` is how
    /// long the driver waited for its first input (0 when it did not).
    pub fn take_batch(&mut self, now: Now, idle_wait_ms: u64) -> Option<Batch> {
        let mut open = std::mem::take(&mut self.open);
        if let Some(conn) = self.notifier {
            // After everything else of the batch, durable with it.
            for page in open.owed.chunks(OWED_PAGE) {
                open.sends.push(Transmit {
                    conn,
                    msg: ServerMsg::Owed {
                        dues: page.to_vec(),
                    },
                });
            }
        }
        let wrote = !open.records.is_empty()
            || !open.outputs.is_empty()
            || !open.infos.is_empty()
            || !open.archived.is_empty();
        if !wrote && open.sends.is_empty() {
            return None;
        }
        let pipeline_idle = self.in_flight() == 0;
        let plan = if !wrote && pipeline_idle {
            FlushPlan::SendNow
        } else if pipeline_idle && idle_wait_ms >= QUIET_MS && open.inputs <= 1 {
            FlushPlan::Inline
        } else {
            FlushPlan::Handoff { wrote }
        };
        let id = self.next_batch;
        self.next_batch += 1;
        if let FlushPlan::Handoff { .. } = plan {
            self.handed_off = id;
            self.waiting.push_back((id, now.mono_ms));
        }
        Some(Batch {
            id,
            records: open.records,
            outputs: open.outputs,
            infos: open.infos,
            archived: open.archived,
            archived_through: self.core.state.archived_count(),
            sends: open.sends,
            plan,
        })
    }

    /// Every batch up to `batch` is durable and its messages were sent.
    /// A batch that waited longer than the pause gap means the disk held
    /// the dispatcher back: every runner gets a full timeout from now.
    pub fn durable(&mut self, batch: u64, now: Now) {
        self.durable = self.durable.max(batch.min(self.handed_off));
        let mut stalled_ms = 0;
        while let Some(&(id, at)) = self.waiting.front()
            && id <= self.durable
        {
            stalled_ms = stalled_ms.max(now.mono_ms.saturating_sub(at));
            self.waiting.pop_front();
        }
        if stalled_ms > self.core.config().pause_gap_ms() && self.status == ShellStatus::Serving {
            let step = self.core.handle(Input::Stalled { gap_ms: stalled_ms }, now);
            self.absorb(step);
        }
    }

    /// Appending, flushing or snapshotting failed: the log can take no
    /// more. Nothing further is decided or acknowledged; every connection
    /// is told, and the driver stops. Returns what to send (these depend
    /// on nothing durable).
    pub fn storage_failed(&mut self, error: &StoreError) -> Vec<Transmit> {
        self.status = ShellStatus::Failed;
        self.open = Open::default();
        let message = format!("the dispatcher is stopping: {error}");
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        conns
            .into_iter()
            .map(|conn| Transmit {
                conn,
                msg: ServerMsg::error(ErrorCode::ShuttingDown, message.clone(), true),
            })
            .collect()
    }

    /// Whether a snapshot is due (every `snapshot_every` events).
    pub fn snapshot_due(&self) -> bool {
        self.status == ShellStatus::Serving
            && self.core.state.last_seq() >= self.last_snapshot_seq + self.config.snapshot_every
    }

    /// A snapshot of the state at `seq` was stored.
    pub fn snapshot_saved(&mut self, seq: u64) {
        self.last_snapshot_seq = seq;
    }
}

/// Whether a record ends an attempt (its live output is then dropped).
fn ends_attempt(rec: &Record) -> bool {
    matches!(
        rec.event,
        Event::Result { .. } | Event::JobCancelled { .. } | Event::HeartbeatLost { .. }
    )
}

/// A job's status as the word tables and filters use.
fn status_word(status: &JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "pending",
        JobStatus::Running { .. } => "running",
        JobStatus::Done(f) => f.outcome.as_str(),
    }
}

/// A commit's information cut to its limits.
fn bounded_info(info: CommitInfo) -> CommitInfo {
    CommitInfo {
        author: bounded(info.author, CommitInfo::MAX_AUTHOR),
        subject: bounded(info.subject, CommitInfo::MAX_SUBJECT),
        time_ms: info.time_ms,
    }
}

fn too_many() -> ServerMsg {
    ServerMsg::error(
        ErrorCode::Invalid,
        format!(
            "this connection follows or watches too much (at most {})",
            super::live::MAX_SUBSCRIPTIONS
        ),
        false,
    )
}

/// What a connection fenced by a newer one with its runner's name is told.
fn superseded(name: &str) -> ServerMsg {
    ServerMsg::error(
        ErrorCode::Superseded,
        format!(
            "another connection took over runner {name}: two runners may not share a name; give each its own --name"
        ),
        true,
    )
}

/// Whether `role` may send `msg`.
fn permitted(role: Role, grant: Grant, msg: &ClientMsg) -> Result<(), (ErrorCode, String)> {
    let ok = match msg {
        ClientMsg::Commits { .. } => role == Role::Observer || grant.write,
        ClientMsg::Cancel { .. } | ClientMsg::Retry { .. } => role == Role::Tool && grant.write,
        ClientMsg::GetTips { .. }
        | ClientMsg::Status
        | ClientMsg::Results { .. }
        | ClientMsg::Replay { .. }
        | ClientMsg::Output { .. }
        | ClientMsg::Resolve { .. }
        | ClientMsg::Follow { .. }
        | ClientMsg::Watch { .. }
        | ClientMsg::History { .. }
        | ClientMsg::Metrics => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    warn!(
        role = role.as_str(),
        msg = msg.kind(),
        "refused: not permitted for this role"
    );
    let hint = if role == Role::Tool
        && matches!(
            msg,
            ClientMsg::Commits { .. } | ClientMsg::Cancel { .. } | ClientMsg::Retry { .. }
        ) {
        " (this tool's token is read-only; that needs the tool-write secret)"
    } else {
        ""
    };
    let article = if role == Role::Observer { "an" } else { "a" };
    Err((
        ErrorCode::NotPermitted,
        format!(
            "{article} {} may not send {}{hint}",
            role.as_str(),
            msg.kind()
        ),
    ))
}

/// What a `Results` request filters on.
/// Most history index entries one results page reads: a filter that
/// matches one job in a million still answers in a few milliseconds, with
/// a cursor to go on.
pub const HISTORY_SCAN: usize = 20_000;

/// A job found by its commit.
enum Found<'a> {
    Memory(&'a Job),
    Archived(Box<ArchivedJob>),
}

impl Found<'_> {
    fn id(&self) -> JobId {
        match self {
            Found::Memory(j) => j.id,
            Found::Archived(a) => a.id,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ResultFilter<'a> {
    branch: Option<&'a str>,
    outcome: Option<&'a str>,
    repository: Option<&'a str>,
}

/// A runner's list of repositories: bounded, every name valid.
fn validate_serves(serves: &Serves) -> Result<(), String> {
    if let Serves::Only(names) = serves {
        if names.len() > MAX_SERVED {
            return Err(format!(
                "a runner serves at most {MAX_SERVED} named repositories, not {}",
                names.len()
            ));
        }
        for name in names.iter().flatten() {
            validate_repository_name(name).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Checks what a request names before anything is decided on it.
fn validate(msg: &ClientMsg) -> Result<(), (ErrorCode, String)> {
    let invalid = |why: String| (ErrorCode::Invalid, why);
    match msg {
        ClientMsg::GetTips { after: Some(a), .. } if a.len() > 255 => {
            return Err(invalid("a branch name is at most 255 bytes".into()));
        }
        ClientMsg::Resolve { prefix } => {
            let ok = (MIN_PREFIX_HEX..=64).contains(&prefix.len())
                && prefix.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(invalid(format!(
                    "{:?} is not a commit id prefix: {MIN_PREFIX_HEX} to 64 hexadecimal digits",
                    prefix.chars().take(80).collect::<String>()
                )));
            }
        }
        ClientMsg::Watch { commits } if commits.len() > MAX_WATCHED => {
            return Err(invalid(format!(
                "{} commits to watch; at most {MAX_WATCHED}",
                commits.len()
            )));
        }
        ClientMsg::Results {
            branch, outcome, ..
        } => {
            if let Some(b) = branch {
                validate_branch_name(b).map_err(|e| invalid(e.to_string()))?;
            }
            if let Some(o) = outcome
                && !matches!(o.as_str(), "pending" | "running")
                && Outcome::parse(o).is_none()
            {
                return Err(invalid(format!(
                    "{:?} is not an outcome: pending, running, pass, fail, timeout, error or cancelled",
                    o.chars().take(40).collect::<String>()
                )));
            }
        }
        _ => {}
    }
    if let ClientMsg::Commits {
        branch,
        commits,
        tip,
        ..
    } = msg
    {
        if let Some(b) = branch {
            validate_branch_name(b).map_err(|e| invalid(e.to_string()))?;
        }
        if commits.len() > MAX_COMMITS_PER_REPORT {
            return Err(invalid(format!(
                "{} commits in one report; at most {MAX_COMMITS_PER_REPORT}",
                commits.len()
            )));
        }
        if let Some(c) = commits.iter().chain(tip).find(|c| c.is_zero()) {
            return Err(invalid(format!(
                "{c} is not a commit: the all-zero id means \"no commit\" in git hooks"
            )));
        }
    }
    Ok(())
}

/// A read failed: the tool is told; the dispatcher goes on.
fn read_failed(e: StoreError) -> ServerMsg {
    warn!(error = %e, "a read from the log failed");
    ServerMsg::error(ErrorCode::Unavailable, e.to_string(), false)
}

/// The leading records that fit in `max_bytes` encoded (at least one).
fn fit_page(mut records: Vec<Record>, max_bytes: usize) -> Vec<Record> {
    let mut bytes = 0;
    let mut keep = records.len();
    for (i, r) in records.iter().enumerate() {
        bytes += crate::encoding::encoded_len(r).unwrap_or(max_bytes);
        if bytes > max_bytes && i > 0 {
            keep = i;
            break;
        }
    }
    records.truncate(keep);
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CommitId, CoreConfig, JobReport, Outcome};
    use crate::proto::{MAX_FRAME_BYTES, PAGE_BYTES};
    use crate::store::EventLog;
    use crate::store::mem::MemStore;

    fn now(ms: u64) -> Now {
        Now::at(ms)
    }

    fn commit(n: u64) -> CommitId {
        let mut b = [0x11u8; 20];
        b[..8].copy_from_slice(&n.to_be_bytes());
        CommitId::from_bytes(&b).unwrap()
    }

    fn shell_with(state: State) -> Shell {
        let mut s = Shell::new(
            Core::new(state, CoreConfig::default()),
            ShellConfig {
                snapshot_every: 1_000_000,
                repositories: BTreeMap::new(),
            },
        );
        let b = s.start(1, now(1));
        assert_eq!(b.plan, FlushPlan::Inline);
        assert_eq!(s.in_flight(), 0);
        s
    }

    fn tool(s: &mut Shell, conn: ConnId, store: &MemStore) {
        s.handle(
            ShellInput::ClientHello {
                conn,
                role: Role::Tool,
                grant: Grant { write: true },
            },
            now(2),
            store,
        );
    }

    /// A state of `n` finished jobs whose messages are `len` bytes long.
    fn finished(n: u64, len: usize) -> State {
        let mut st = State::new();
        let mut seq = 0;
        let mut apply = |st: &mut State, event: Event| {
            seq += 1;
            st.apply_record(&Record {
                seq,
                at_ms: 1,
                event,
            })
            .unwrap();
        };
        for j in 1..=n {
            let job = JobId(j);
            apply(
                &mut st,
                Event::CommitSeen {
                    job,
                    commit: commit(j),
                    branch: Some("main".into()),
                },
            );
            apply(
                &mut st,
                Event::JobAssigned {
                    job,
                    commit: commit(j),
                    runner: "r".into(),
                    attempt: 1,
                },
            );
            apply(
                &mut st,
                Event::Result {
                    job,
                    commit: commit(j),
                    runner: Some("r".into()),
                    attempt: 1,
                    report: JobReport {
                        outcome: Outcome::Pass,
                        exit_code: Some(0),
                        duration_ms: 1,
                        tests: None,
                        message: format!("{j:0len$}"),
                    },
                    output_bytes: 0,
                },
            );
        }
        st
    }

    fn answers(batch: &Batch) -> Vec<&ServerMsg> {
        batch.sends.iter().map(|t| &t.msg).collect()
    }

    /// A hello slow to arrive on a connection accepted before the current
    /// one loses: the newer connection keeps the runner's name.
    #[test]
    fn the_later_connection_wins_whichever_hello_arrives_first() {
        let store = MemStore::new();
        let mut s = shell_with(State::new());
        for conn in [2, 1] {
            s.handle(
                ShellInput::RunnerHello {
                    conn,
                    name: "r".into(),
                    holding: None,
                    left: None,
                    serves: Serves::Default,
                },
                now(5),
                &store,
            );
        }
        assert_eq!(s.runner_conn("r"), Some(2));
        let b = s.take_batch(now(5), 0).unwrap();
        let to_1: Vec<_> = b.sends.iter().filter(|t| t.conn == 1).collect();
        assert!(matches!(
            to_1[..],
            [Transmit {
                msg: ServerMsg::Error {
                    code: ErrorCode::Superseded,
                    fatal: true,
                    ..
                },
                ..
            }]
        ));
        // A third, newer one takes over from the second.
        s.handle(
            ShellInput::RunnerHello {
                conn: 3,
                name: "r".into(),
                holding: None,
                left: None,
                serves: Serves::Default,
            },
            now(6),
            &store,
        );
        assert_eq!(s.runner_conn("r"), Some(3));
    }

    /// However long the history and its messages, each answer fits in a
    /// frame, and paging covers every job once.
    #[test]
    fn every_results_page_fits_in_a_frame_and_paging_covers_all() {
        let store = MemStore::new();
        let n = 3_000;
        let mut s = shell_with(finished(n, 4_000));
        tool(&mut s, 7, &store);
        let mut seen = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            s.handle(
                ShellInput::Frame {
                    conn: 7,
                    msg: ClientMsg::Results {
                        commit: None,
                        before,
                        limit: u32::MAX,
                        branch: None,
                        outcome: None,

                        repository: None,
                    },
                },
                now(10),
                &store,
            );
            let b = s.take_batch(now(10), 0).unwrap();
            let [ServerMsg::Results { results, next }] = answers(&b)[..] else {
                panic!("{:?}", answers(&b));
            };
            let bytes = crate::encoding::encoded_len(&b.sends[0].msg).unwrap();
            assert!(bytes <= MAX_FRAME_BYTES, "{bytes}");
            assert!(!results.is_empty());
            seen.extend(results.iter().map(|r| r.job));
            pages += 1;
            match next {
                Some(n) => before = Some(*n),
                None => break,
            }
        }
        assert!(pages > 1, "one page of {n} long results cannot fit");
        seen.reverse();
        assert_eq!(seen, (1..=n).collect::<Vec<_>>());
        let _ = PAGE_BYTES;
    }

    /// The all-zero id is refused at the edge and queues nothing; a result's
    /// message is cut to the limit.
    #[test]
    fn zero_ids_are_refused_and_long_messages_cut() {
        let store = MemStore::new();
        let mut s = shell_with(State::new());
        tool(&mut s, 7, &store);
        let zero = CommitId::from_bytes(&[0; 20]).unwrap();
        s.handle(
            ShellInput::Frame {
                conn: 7,
                msg: ClientMsg::Commits {
                    infos: Vec::new(),
                    repository: None,
                    branch: None,
                    commits: vec![commit(1), zero],
                    tip: None,
                },
            },
            now(3),
            &store,
        );
        let b = s.take_batch(now(3), 0).unwrap();
        assert!(b.records.is_empty());
        assert!(matches!(
            answers(&b)[..],
            [ServerMsg::Error {
                code: ErrorCode::Invalid,
                fatal: false,
                ..
            }]
        ));
        // A runner reports a result with a 100 KB message.
        s.handle(
            ShellInput::Frame {
                conn: 7,
                msg: ClientMsg::Commits {
                    infos: Vec::new(),
                    repository: None,
                    branch: None,
                    commits: vec![commit(1)],
                    tip: None,
                },
            },
            now(4),
            &store,
        );
        s.handle(
            ShellInput::RunnerHello {
                conn: 8,
                name: "r".into(),
                holding: None,
                left: None,
                serves: Serves::Default,
            },
            now(4),
            &store,
        );
        let b = s.take_batch(now(4), 0).unwrap();
        let job = b
            .sends
            .iter()
            .find_map(|t| match &t.msg {
                ServerMsg::Assign { job, .. } => Some(*job),
                _ => None,
            })
            .expect("assigned");
        s.handle(
            ShellInput::Frame {
                conn: 8,
                msg: ClientMsg::Result {
                    job,
                    report: JobReport {
                        outcome: Outcome::Pass,
                        exit_code: Some(0),
                        duration_ms: 1,
                        tests: None,
                        message: "é".repeat(50_000),
                    },
                    output: vec![b'x'; 3 * MAX_OUTPUT_BYTES],
                    info: None,
                },
            },
            now(5),
            &store,
        );
        let b = s.take_batch(now(5), 0).unwrap();
        let Some(Event::Result {
            report,
            output_bytes,
            ..
        }) = b
            .records
            .iter()
            .map(|r| &r.event)
            .find(|e| matches!(e, Event::Result { .. }))
        else {
            panic!("no result recorded");
        };
        assert!(report.message.len() <= MAX_MESSAGE_BYTES);
        assert!(report.message.len() > MAX_MESSAGE_BYTES - 2);
        assert_eq!(*output_bytes, MAX_OUTPUT_BYTES as u64);
        assert_eq!(b.outputs[0].1.len(), MAX_OUTPUT_BYTES);
    }

    /// Writes a batch as the driver would, and returns it.
    fn carry(s: &mut Shell, store: &mut MemStore, at: u64) -> Batch {
        let b = s.take_batch(now(at), 0).expect("a batch");
        for (job, output) in &b.outputs {
            store.put_output(*job, output).unwrap();
        }
        store.append(&b.records).unwrap();
        store.flush().unwrap();
        s.durable(b.id, now(at));
        b
    }

    /// A follower sees what the runner streamed, the rest it did not
    /// stream when the result comes, then the end; the commit's history
    /// is its own records, in order; the metrics count it.
    #[test]
    fn a_followed_job_streams_ends_and_has_a_timeline() {
        let mut store = MemStore::new();
        let mut s = Shell::new(
            Core::new(State::new(), CoreConfig::default()),
            ShellConfig {
                snapshot_every: 1_000_000,
                repositories: BTreeMap::new(),
            },
        );
        store.append(&s.start(1, now(1)).records).unwrap();
        tool(&mut s, 7, &store);
        tool(&mut s, 9, &store);
        let frame = |s: &mut Shell, conn, msg, at, store: &MemStore| {
            s.handle(ShellInput::Frame { conn, msg }, now(at), store)
        };
        frame(
            &mut s,
            7,
            ClientMsg::Commits {
                infos: Vec::new(),
                repository: None,
                branch: Some("main".into()),
                commits: vec![commit(1), commit(2)],
                tip: None,
            },
            3,
            &store,
        );
        frame(
            &mut s,
            9,
            ClientMsg::Follow { commit: commit(1) },
            3,
            &store,
        );
        s.handle(
            ShellInput::RunnerHello {
                conn: 8,
                name: "r".into(),
                holding: None,
                left: None,
                serves: Serves::Default,
            },
            now(3),
            &store,
        );
        let b = carry(&mut s, &mut store, 3);
        let job = b
            .sends
            .iter()
            .find_map(|t| match &t.msg {
                ServerMsg::Assign { job, .. } => Some(*job),
                _ => None,
            })
            .expect("assigned");
        assert!(b.sends.iter().any(
            |t| t.conn == 9 && matches!(&t.msg, ServerMsg::Update(v) if v.outcome == "pending")
        ));
        // The runner streams 6 of the 10 bytes, one chunk twice.
        for (offset, data) in [
            (0, b"abc".to_vec()),
            (0, b"abc".to_vec()),
            (3, b"def".to_vec()),
        ] {
            frame(
                &mut s,
                8,
                ClientMsg::OutputChunk { job, offset, data },
                4,
                &store,
            );
        }
        frame(
            &mut s,
            8,
            ClientMsg::Result {
                job,
                report: JobReport {
                    outcome: Outcome::Fail,
                    exit_code: Some(1),
                    duration_ms: 2_000,
                    tests: None,
                    message: String::new(),
                },
                output: b"abcdefghij".to_vec(),
                info: None,
            },
            5,
            &store,
        );
        let b = carry(&mut s, &mut store, 5);
        let mut seen = Vec::new();
        let mut ended = None;
        for t in b.sends.iter().filter(|t| t.conn == 9) {
            match &t.msg {
                ServerMsg::OutputChunk {
                    job: j,
                    offset,
                    data,
                } => {
                    assert_eq!(*j, job);
                    assert_eq!(*offset as usize, seen.len(), "no gap, no repeat");
                    seen.extend_from_slice(data);
                }
                ServerMsg::Ended(v) => ended = Some(v.outcome.clone()),
                other => panic!("the follower got {other:?}"),
            }
        }
        assert_eq!(seen, b"abcdefghij");
        assert_eq!(ended.as_deref(), Some("fail"));
        // Its timeline.
        frame(
            &mut s,
            7,
            ClientMsg::History { commit: commit(1) },
            6,
            &store,
        );
        frame(
            &mut s,
            7,
            ClientMsg::History { commit: commit(3) },
            6,
            &store,
        );
        frame(&mut s, 7, ClientMsg::Metrics, 6, &store);
        let b = s.take_batch(now(6), 0).unwrap();
        let msgs = answers(&b);
        let ServerMsg::History { records, more, .. } = msgs[0] else {
            panic!("{:?}", msgs[0]);
        };
        let kinds: Vec<&str> = records.iter().map(|r| r.event.kind()).collect();
        assert_eq!(kinds, ["commit_seen", "job_assigned", "result"]);
        assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(!more);
        assert!(matches!(
            msgs[1],
            ServerMsg::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ));
        let ServerMsg::Metrics(m) = msgs[2] else {
            panic!("{:?}", msgs[2]);
        };
        assert_eq!(m.queued, 0, "commit 2 went to the idle runner");
        let count = |w: &str| m.jobs.iter().find(|(k, _)| k == w).map(|(_, n)| *n);
        assert_eq!((count("fail"), count("running")), (Some(1), Some(1)));
        assert_eq!(
            m.runners.iter().find(|(k, _)| k == "busy").map(|x| x.1),
            Some(1)
        );
    }

    /// After a storage failure nothing is decided: every connection is told
    /// to go, later frames are refused, the timer stops.
    #[test]
    fn a_storage_failure_stops_every_decision() {
        let store = MemStore::new();
        let mut s = shell_with(State::new());
        tool(&mut s, 7, &store);
        let told = s.storage_failed(&StoreError::FlusherStopped);
        assert_eq!(told.len(), 1);
        assert!(matches!(
            told[0].msg,
            ServerMsg::Error {
                code: ErrorCode::ShuttingDown,
                fatal: true,
                ..
            }
        ));
        assert_eq!(s.status(), ShellStatus::Failed);
        assert_eq!(s.poll_timeout(), None);
        s.handle(
            ShellInput::Frame {
                conn: 7,
                msg: ClientMsg::Commits {
                    infos: Vec::new(),
                    repository: None,
                    branch: None,
                    commits: vec![commit(1)],
                    tip: None,
                },
            },
            now(9),
            &store,
        );
        s.handle_timeout(now(100_000));
        let b = s.take_batch(now(100_000), 5).unwrap();
        assert!(b.records.is_empty() && b.outputs.is_empty());
        assert!(!s.snapshot_due());
    }

    /// How a batch is made durable: a lone command after a quiet spell on
    /// this thread; under load by the flusher; nothing to write and nothing
    /// in flight at once; nothing to write behind a batch in flight waits.
    #[test]
    fn flush_plans_follow_the_pipeline() {
        let store = MemStore::new();
        let mut s = shell_with(State::new());
        tool(&mut s, 7, &store);
        assert!(
            s.take_batch(now(2), 0).is_none(),
            "a hello alone sends nothing"
        );
        let submit = |s: &mut Shell, n: u64| {
            s.handle(
                ShellInput::Frame {
                    conn: 7,
                    msg: ClientMsg::Commits {
                        infos: Vec::new(),
                        repository: None,
                        branch: None,
                        commits: vec![commit(n)],
                        tip: None,
                    },
                },
                now(10),
                &store,
            )
        };
        let status = |s: &mut Shell| {
            s.handle(
                ShellInput::Frame {
                    conn: 7,
                    msg: ClientMsg::Status,
                },
                now(10),
                &store,
            )
        };
        submit(&mut s, 1);
        assert_eq!(
            s.take_batch(now(10), QUIET_MS).unwrap().plan,
            FlushPlan::Inline
        );
        submit(&mut s, 2);
        submit(&mut s, 3);
        let b = s.take_batch(now(10), QUIET_MS).unwrap();
        assert_eq!(b.plan, FlushPlan::Handoff { wrote: true });
        status(&mut s);
        assert_eq!(
            s.take_batch(now(10), 0).unwrap().plan,
            FlushPlan::Handoff { wrote: false }
        );
        s.durable(b.id + 1, now(11));
        assert_eq!(s.in_flight(), 0);
        status(&mut s);
        assert_eq!(s.take_batch(now(11), 0).unwrap().plan, FlushPlan::SendNow);
        // Busy, not quiet: a lone write goes to the flusher.
        submit(&mut s, 4);
        assert_eq!(
            s.take_batch(now(11), 0).unwrap().plan,
            FlushPlan::Handoff { wrote: true }
        );
    }

    /// A batch held back by a slow disk longer than the pause gap: nobody
    /// is expired meanwhile, and everyone gets a full timeout after.
    #[test]
    fn a_disk_that_holds_everything_back_condemns_nobody() {
        let store = MemStore::new();
        let mut s = shell_with(State::new());
        let timeout = CoreConfig::default().heartbeat_timeout_ms;
        s.handle(
            ShellInput::RunnerHello {
                conn: 1,
                name: "r".into(),
                holding: None,
                left: None,
                serves: Serves::Default,
            },
            now(10),
            &store,
        );
        tool(&mut s, 7, &store);
        s.handle(
            ShellInput::Frame {
                conn: 7,
                msg: ClientMsg::Commits {
                    infos: Vec::new(),
                    repository: None,
                    branch: None,
                    commits: vec![commit(1)],
                    tip: None,
                },
            },
            now(10),
            &store,
        );
        let b = s.take_batch(now(10), 0).unwrap();
        assert!(matches!(b.plan, FlushPlan::Handoff { .. }));
        // The flush takes two timeouts; ticks keep coming.
        let mut t = 10;
        while t < 2 * timeout {
            t += 1_000;
            s.handle_timeout(now(t));
            if let Some(b) = s.take_batch(now(t), 0) {
                assert!(
                    !b.records
                        .iter()
                        .any(|r| matches!(r.event, Event::HeartbeatLost { .. })),
                    "lost while the disk held the welcome back"
                );
            }
        }
        s.durable(b.id, now(t));
        let b = s.take_batch(now(t), 0).unwrap();
        assert!(matches!(b.records[0].event, Event::DispatcherPaused { .. }));
    }
}
