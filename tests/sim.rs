//! A deterministic simulation of the dispatcher core, in the style of
//! TigerBeetle's VOPR and FoundationDB's simulator.
//!
//! One seeded PRNG drives everything: a virtual clock, an observer that
//! reports commits (sometimes twice), runners that behave like
//! `src/runner/agent.rs` (heartbeats, results resent until acked, a marker
//! that survives crashes, stalls, stops with hand-back), TCP connections that
//! keep order but lose the unsent tail when they break, and a dispatcher shell
//! that batches like `src/dispatcher/actor.rs` and sometimes crashes, before
//! or after a flush, and is rebuilt from its durable log. No threads, no
//! tokio, no sled, no real clock: a seed replays exactly.
//!
//! Invariants are checked after every step; at the end, after a quiet period
//! without faults, every commit must have exactly one outcome, and the right
//! one.
//!
//! - `cargo test --release --test sim`: the default seed range.
//! - `SIM_SEED=n`: one seed, with a trace of every step.
//! - `SIM_SEEDS=a..b`, `SIM_STEPS=n`, `SIM_BUDGET_S=s`: widen the run (the
//!   budget stops starting new seeds after `s` seconds); see
//!   `tools/sim-soak.sh`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::Instant;

use ci::core::{
    CommitId, Core, CoreConfig, Event, Input, JobId, JobRef, JobReport, JobStatus, LostReason,
    Outcome, Record, Reply, State, Step, ToRunner,
};

const HEARTBEAT_TIMEOUT_MS: u64 = 5_000;
const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// As in actor.rs: a quarter of the timeout.
const TICK_MS: u64 = HEARTBEAT_TIMEOUT_MS / 4;
const MAX_ATTEMPTS: u32 = 3;
const DEFAULT_SEEDS: std::ops::Range<u64> = 0..200;
const DEFAULT_STEPS: u64 = 2_000;
/// The quiet period fails when nothing finishes for this long (virtual).
const QUIET_STALL_MS: u64 = 20 * HEARTBEAT_TIMEOUT_MS + 6 * 15_000;
/// A backstop on the quiet period's length, per step of the active one.
const QUIET_STEPS_PER_STEP: u64 = 100;
const BRANCH: &str = "main";

// ---------------------------------------------------------------------------
// Randomness

/// splitmix64: tiny, fast, and good enough to drive a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Inclusive range.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed's `n`th commit.
fn commit_id(seed: u64, n: u64) -> CommitId {
    let mut bytes = [0u8; 20];
    let mut h = mix(seed ^ 0x5eed) ^ n;
    for chunk in bytes.chunks_mut(8) {
        h = mix(h);
        chunk.copy_from_slice(&h.to_le_bytes()[..chunk.len()]);
    }
    CommitId::from_bytes(&bytes).expect("20 bytes")
}

/// What the tests of a commit really do: deterministic per commit.
fn true_outcome(commit: &CommitId) -> Outcome {
    let h = commit
        .as_bytes()
        .iter()
        .fold(0u64, |h, b| mix(h ^ *b as u64));
    if h % 2 == 0 {
        Outcome::Pass
    } else {
        Outcome::Fail
    }
}

// ---------------------------------------------------------------------------
// The world's pieces

type ConnId = u64;

/// Runner or observer to dispatcher.
#[derive(Clone, Debug)]
enum Up {
    Hello {
        holding: Option<JobRef>,
        crashed: Option<JobRef>,
    },
    Heartbeat {
        holding: Option<JobRef>,
    },
    Ready,
    Result {
        job: JobRef,
        outcome: Outcome,
    },
    HandBack {
        job: JobRef,
    },
    Commits {
        req: u64,
        commits: Vec<CommitId>,
        tip: Option<CommitId>,
    },
}

/// Dispatcher to runner or observer.
#[derive(Clone, Debug)]
enum Down {
    Welcome,
    Assign { job: JobRef, commit: CommitId },
    Abandon { job: JobRef },
    ResultAck { job: JobRef, accepted: bool },
    CommitsAck { req: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Runner(usize),
    Observer,
}

/// One TCP connection. Each direction keeps order (delivery times only
/// grow); when it breaks, what was due after the cut in each direction is
/// lost and each side learns of it once it has read the rest.
struct Conn {
    owner: Owner,
    /// The dispatcher incarnation it was accepted by.
    epoch: u64,
    up_last_ms: u64,
    down_last_ms: u64,
    up_cut_ms: Option<u64>,
    down_cut_ms: Option<u64>,
}

#[derive(Debug)]
enum Ev {
    ToDispatcher {
        conn: ConnId,
        msg: Up,
    },
    ToPeer {
        conn: ConnId,
        msg: Down,
    },
    /// The dispatcher's connection task read EOF.
    Gone {
        conn: ConnId,
    },
    /// The runner or observer read EOF.
    PeerSawClose {
        conn: ConnId,
    },
    Batch,
    Tick,
    DispatcherRestart,
    Heartbeat(usize),
    JobDone {
        runner: usize,
        run: u64,
    },
    RunnerRestart(usize),
    Reconnect(usize),
    StallEnd(usize),
    ObserverPoll,
    Fault,
}

impl Ev {
    /// The runner whose process handles this event, if any.
    fn runner(&self, conns: &HashMap<ConnId, Conn>) -> Option<usize> {
        match self {
            Ev::ToPeer { conn, .. } | Ev::PeerSawClose { conn } => match conns[conn].owner {
                Owner::Runner(i) => Some(i),
                Owner::Observer => None,
            },
            Ev::JobDone { runner, .. } => Some(*runner),
            Ev::Reconnect(i) => Some(*i),
            _ => None,
        }
    }
}

struct Scheduled {
    at_ms: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` pops the earliest, first scheduled first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

/// A runner process, as `src/runner/agent.rs` behaves.
struct SimRunner {
    name: String,
    up: bool,
    /// Frozen (SIGSTOP, a long GC, a partition that TCP does not notice):
    /// everything it would handle waits in `deferred`.
    stalled: bool,
    deferred: Vec<Ev>,
    conn: Option<ConnId>,
    /// Welcome received: the session runs.
    welcomed: bool,
    running: Option<(JobRef, CommitId, u64)>,
    pending: Option<(JobRef, Outcome)>,
    /// The marker file: survives crashes.
    marker: Option<JobRef>,
    crashed: Option<JobRef>,
    backoff_ms: u64,
    runs: u64,
}

impl SimRunner {
    fn holding(&self) -> Option<JobRef> {
        self.running
            .map(|r| r.0)
            .or(self.pending.as_ref().map(|p| p.0))
    }
}

/// The observer: reports new commits, and resends until acknowledged.
#[derive(Default)]
struct Observer {
    conn: Option<ConnId>,
    commits: Vec<CommitId>,
    unacked: BTreeSet<usize>,
    requests: HashMap<u64, Vec<usize>>,
    next_req: u64,
}

enum Cmd {
    Msg(ConnId, Up),
    Gone(ConnId),
    Tick,
}

enum Target {
    Runner(String),
    Conn(ConnId),
}

/// The dispatcher process: the core, its durable log and the shell's
/// connection table, as in actor.rs.
struct Dispatcher {
    core: Option<Core>,
    epoch: u64,
    inbox: Vec<Cmd>,
    batch_scheduled: bool,
    runners: BTreeMap<String, ConnId>,
    crash_before_next_flush: bool,
    /// The durable log: only flushed batches.
    log: Vec<Record>,
    /// The durable log folded record by record as it is flushed.
    replica: State,
    /// The newest snapshot taken (every `SNAPSHOT_EVERY` durable events), as
    /// the real dispatcher stores it; a restart starts from it.
    snapshot: Option<Vec<u8>>,
}

/// How often the simulated dispatcher snapshots its state (in events);
/// prime, so snapshots fall at every kind of moment.
const SNAPSHOT_EVERY: usize = 37;

/// Per-seed knobs (swarm testing: each seed stresses a different mix).
#[derive(Debug)]
struct Knobs {
    runners: usize,
    net_delay_ms_max: u64,
    spike_percent: u64,
    job_ms_max: u64,
    new_commit_percent: u64,
    fault_gap_ms_max: u64,
    /// Weights of: drop runner conn, drop observer conn, runner crash,
    /// runner stall, runner stop, dispatcher crash, crash before flush.
    fault_weights: [u64; 7],
}

impl Knobs {
    fn draw(rng: &mut Rng) -> Knobs {
        let mut fault_weights = [0; 7];
        for w in &mut fault_weights {
            *w = rng.below(10);
        }
        Knobs {
            runners: rng.range(1, 5) as usize,
            net_delay_ms_max: rng.range(1, 200),
            spike_percent: rng.below(4),
            job_ms_max: rng.range(200, 3 * HEARTBEAT_TIMEOUT_MS),
            new_commit_percent: rng.range(10, 70),
            fault_gap_ms_max: rng.range(200, 10_000),
            fault_weights,
        }
    }
}

struct World {
    seed: u64,
    rng: Rng,
    knobs: Knobs,
    now_ms: u64,
    steps: u64,
    next_seq: u64,
    heap: BinaryHeap<Scheduled>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    runners: Vec<SimRunner>,
    observer: Observer,
    dispatcher: Dispatcher,
    /// No more faults, no new commits: let everything finish.
    quiet: bool,
    /// When a job last finished or a commit was last acked.
    progress_ms: u64,
    trace: bool,
    // Facts learned from the durable log, for the invariants.
    results_per_job: HashMap<JobId, u32>,
    real_losses: HashMap<JobId, u32>,
    assigned: HashSet<(JobRef, String)>,
}

fn config() -> CoreConfig {
    CoreConfig {
        heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS,
        max_attempts: MAX_ATTEMPTS,
    }
}

impl World {
    fn new(seed: u64, trace: bool) -> World {
        let mut rng = Rng(seed);
        let knobs = Knobs::draw(&mut rng);
        let runners = (0..knobs.runners)
            .map(|i| SimRunner {
                name: format!("r{i}"),
                up: true,
                stalled: false,
                deferred: Vec::new(),
                conn: None,
                welcomed: false,
                running: None,
                pending: None,
                marker: None,
                crashed: None,
                backoff_ms: 50,
                runs: 0,
            })
            .collect();
        let mut w = World {
            seed,
            rng,
            knobs,
            now_ms: 0,
            steps: 0,
            next_seq: 0,
            heap: BinaryHeap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            runners,
            observer: Observer::default(),
            dispatcher: Dispatcher {
                core: None,
                epoch: 0,
                inbox: Vec::new(),
                batch_scheduled: false,
                runners: BTreeMap::new(),
                crash_before_next_flush: false,
                log: Vec::new(),
                replica: State::new(),
                snapshot: None,
            },
            quiet: false,
            progress_ms: 0,
            trace,
            results_per_job: HashMap::new(),
            real_losses: HashMap::new(),
            assigned: HashSet::new(),
        };
        w.say(|| format!("knobs {:?}", w.knobs));
        w.restart_dispatcher();
        for i in 0..w.runners.len() {
            let first = w.rng.range(0, 100);
            w.schedule(first, Ev::Reconnect(i));
            let beat = w.rng.range(0, HEARTBEAT_INTERVAL_MS);
            w.schedule(beat, Ev::Heartbeat(i));
        }
        w.schedule(TICK_MS, Ev::Tick);
        w.schedule(10, Ev::ObserverPoll);
        let gap = w.fault_gap();
        w.schedule(gap, Ev::Fault);
        w
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("[{:>9} ms #{:>6}] {}", self.now_ms, self.steps, what());
        }
    }

    fn schedule(&mut self, after_ms: u64, ev: Ev) {
        self.next_seq += 1;
        self.heap.push(Scheduled {
            at_ms: self.now_ms + after_ms,
            seq: self.next_seq,
            ev,
        });
    }

    fn fault_gap(&mut self) -> u64 {
        self.rng.range(50, self.knobs.fault_gap_ms_max)
    }

    fn net_delay(&mut self) -> u64 {
        if !self.quiet && self.rng.percent(self.knobs.spike_percent) {
            self.rng.range(0, 2 * HEARTBEAT_TIMEOUT_MS)
        } else {
            self.rng.range(1, self.knobs.net_delay_ms_max)
        }
    }

    // -- the network -------------------------------------------------------

    fn connect(&mut self, owner: Owner) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                owner,
                epoch: self.dispatcher.epoch,
                up_last_ms: self.now_ms,
                down_last_ms: self.now_ms,
                up_cut_ms: None,
                down_cut_ms: None,
            },
        );
        id
    }

    fn send_up(&mut self, conn: ConnId, msg: Up) {
        let delay = self.net_delay();
        let c = self.conns.get_mut(&conn).expect("conn exists");
        if c.up_cut_ms.is_some() {
            return;
        }
        let at = c.up_last_ms.max(self.now_ms + delay);
        c.up_last_ms = at;
        let after = at - self.now_ms;
        self.schedule(after, Ev::ToDispatcher { conn, msg });
    }

    fn send_down(&mut self, conn: ConnId, msg: Down) {
        let delay = self.net_delay();
        let c = self.conns.get_mut(&conn).expect("conn exists");
        if c.down_cut_ms.is_some() {
            return;
        }
        let at = c.down_last_ms.max(self.now_ms + delay);
        c.down_last_ms = at;
        let after = at - self.now_ms;
        self.schedule(after, Ev::ToPeer { conn, msg });
    }

    /// Breaks a connection: messages due by each cut still arrive (they were
    /// in the peer's buffers), the rest are lost, then each side reads EOF.
    fn break_conn(&mut self, conn: ConnId, up_keep_ms: u64, down_keep_ms: u64) {
        let now = self.now_ms;
        let c = self.conns.get_mut(&conn).expect("conn exists");
        if c.up_cut_ms.is_some() {
            return;
        }
        let up_cut = now + up_keep_ms;
        let down_cut = now + down_keep_ms;
        c.up_cut_ms = Some(up_cut);
        c.down_cut_ms = Some(down_cut);
        let peer_notices = self.rng.range(1, 50);
        self.schedule(up_cut - now + 1, Ev::Gone { conn });
        self.schedule(down_cut - now + peer_notices, Ev::PeerSawClose { conn });
        self.say(|| format!("conn {conn} breaks (up cut {up_cut}, down cut {down_cut})"));
    }

    fn alive(&self, conn: ConnId, cut: fn(&Conn) -> Option<u64>) -> bool {
        cut(&self.conns[&conn]).is_none_or(|c| self.now_ms <= c)
    }

    // -- the dispatcher ----------------------------------------------------

    fn restart_dispatcher(&mut self) {
        // Rebuild from scratch, as the real one does from its log.
        let mut state = State::new();
        for rec in &self.dispatcher.log {
            if let Err(e) = state.apply_record(rec) {
                self.fail(format!("the durable log does not replay: {e}"));
            }
        }
        if state != self.dispatcher.replica {
            self.fail("replaying the whole log differs from the incremental fold".into());
        }
        // As the real one does: the newest snapshot, then the log's tail.
        if let Some(bytes) = &self.dispatcher.snapshot {
            let mut from_snapshot = match State::from_snapshot(bytes) {
                Ok(s) => s,
                Err(e) => self.fail(format!("a snapshot does not decode: {e}")),
            };
            for rec in &self.dispatcher.log[from_snapshot.last_seq as usize..] {
                if let Err(e) = from_snapshot.apply_record(rec) {
                    self.fail(format!(
                        "the log's tail does not apply to the snapshot: {e}"
                    ));
                }
            }
            if from_snapshot != state {
                self.fail("snapshot + tail differs from replaying the whole log".into());
            }
            state = from_snapshot;
        }
        self.dispatcher.epoch += 1;
        self.dispatcher.runners.clear();
        self.dispatcher.inbox.clear();
        let mut core = Core::new(state, config());
        let step = core.handle(
            Input::Started {
                pid: self.dispatcher.epoch as u32,
            },
            self.now_ms,
        );
        self.dispatcher.core = Some(core);
        assert!(step.sends.is_empty(), "Started sent messages");
        self.say(|| format!("dispatcher starts (epoch {})", self.dispatcher.epoch));
        self.flush(step.events);
    }

    fn crash_dispatcher(&mut self, why: &str) {
        if self.dispatcher.core.take().is_none() {
            return;
        }
        self.say(|| format!("dispatcher crashes ({why})"));
        self.dispatcher.inbox.clear();
        self.dispatcher.runners.clear();
        self.dispatcher.crash_before_next_flush = false;
        let epoch = self.dispatcher.epoch;
        let mut live: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.epoch == epoch && c.up_cut_ms.is_none())
            .map(|(id, _)| *id)
            .collect();
        live.sort_unstable();
        for conn in live {
            // Nothing more reaches a dead process; what it wrote may.
            let keep = self.rng.range(0, self.knobs.net_delay_ms_max);
            self.break_conn(conn, 0, keep);
        }
        let down_ms = self.rng.range(50, 2 * HEARTBEAT_TIMEOUT_MS);
        self.schedule(down_ms, Ev::DispatcherRestart);
    }

    fn enqueue(&mut self, cmd: Cmd) {
        self.dispatcher.inbox.push(cmd);
        if !self.dispatcher.batch_scheduled {
            self.dispatcher.batch_scheduled = true;
            let after = self.rng.range(0, 3);
            self.schedule(after, Ev::Batch);
        }
    }

    /// One turn of actor.rs's loop: decide on everything waiting, append,
    /// flush, then deliver.
    fn batch(&mut self) {
        self.dispatcher.batch_scheduled = false;
        let Some(mut core) = self.dispatcher.core.take() else {
            return;
        };
        let now = self.now_ms;
        let mut events = Vec::new();
        let mut deliveries: Vec<(Target, Down)> = Vec::new();
        let cmds = std::mem::take(&mut self.dispatcher.inbox);
        let taken = cmds.len();
        for cmd in cmds {
            let (conn, msg) = match cmd {
                Cmd::Tick => {
                    let step = core.handle(Input::Tick, now);
                    absorb(step, &mut events, &mut deliveries);
                    continue;
                }
                Cmd::Gone(conn) => {
                    if let Owner::Runner(i) = self.conns[&conn].owner {
                        let name = self.runners[i].name.clone();
                        if self.dispatcher.runners.get(&name) == Some(&conn) {
                            self.dispatcher.runners.remove(&name);
                            let step = core.handle(Input::RunnerDisconnected { runner: name }, now);
                            absorb(step, &mut events, &mut deliveries);
                        }
                    }
                    continue;
                }
                Cmd::Msg(conn, msg) => (conn, msg),
            };
            let name = match self.conns[&conn].owner {
                Owner::Runner(i) => self.runners[i].name.clone(),
                Owner::Observer => {
                    let Up::Commits { req, commits, tip } = msg else {
                        unreachable!("the observer only reports commits")
                    };
                    let step = core.handle(
                        Input::CommitsReported {
                            branch: Some(BRANCH.into()),
                            commits,
                            tip,
                        },
                        now,
                    );
                    deliveries.push((Target::Conn(conn), Down::CommitsAck { req }));
                    absorb(step, &mut events, &mut deliveries);
                    continue;
                }
            };
            if let Up::Hello { holding, crashed } = msg {
                self.dispatcher.runners.insert(name.clone(), conn);
                let mut step = core.handle(
                    Input::RunnerConnected {
                        runner: name.clone(),
                        holding,
                        crashed,
                    },
                    now,
                );
                // The runner ignores `keep`, as agent.rs does.
                if let Some(Reply::Welcome { .. }) = step.reply.take() {
                    deliveries.push((Target::Runner(name), Down::Welcome));
                }
                absorb(step, &mut events, &mut deliveries);
                continue;
            }
            if self.dispatcher.runners.get(&name) != Some(&conn) {
                // A message from a fenced connection is ignored.
                continue;
            }
            let input = match msg {
                Up::Heartbeat { holding } => Input::Heartbeat {
                    runner: name,
                    holding,
                },
                Up::Ready => Input::RunnerReady { runner: name },
                Up::HandBack { job } => Input::HandBack { runner: name, job },
                Up::Result { job, outcome } => Input::ResultReported {
                    runner: name,
                    job,
                    report: JobReport {
                        outcome,
                        exit_code: Some((outcome != Outcome::Pass) as i32),
                        duration_ms: 1,
                        tests: None,
                        message: String::new(),
                    },
                    output_bytes: 0,
                },
                Up::Hello { .. } | Up::Commits { .. } => unreachable!(),
            };
            let runner = match &input {
                Input::ResultReported { runner, .. } => Some(runner.clone()),
                _ => None,
            };
            let mut step = core.handle(input, now);
            if let (Some(runner), Some(Reply::ResultAck { job, accepted, .. })) =
                (runner, step.reply.take())
            {
                deliveries.push((Target::Runner(runner), Down::ResultAck { job, accepted }));
            }
            absorb(step, &mut events, &mut deliveries);
        }
        if self.dispatcher.crash_before_next_flush && !self.quiet {
            self.say(|| {
                format!(
                    "batch of {taken}: {} events and {} messages lost",
                    events.len(),
                    deliveries.len()
                )
            });
            self.dispatcher.core = Some(core);
            self.crash_dispatcher("before the flush");
            return;
        }
        self.dispatcher.core = Some(core);
        self.say(|| {
            format!(
                "batch of {taken}: {} events, {} messages",
                events.len(),
                deliveries.len()
            )
        });
        self.flush(events);
        for (target, msg) in deliveries {
            let conn = match target {
                Target::Conn(c) => Some(c),
                Target::Runner(name) => self.dispatcher.runners.get(&name).copied(),
            };
            if let Some(conn) = conn {
                self.send_down(conn, msg);
            }
        }
    }

    /// Makes events durable, checking each against what the log already says.
    fn flush(&mut self, events: Vec<Event>) {
        for event in events {
            self.say(|| format!("  durable: {event:?}"));
            self.check_record(&event);
            if matches!(event, Event::Result { .. }) {
                self.progress_ms = self.now_ms;
            }
            let rec = Record {
                seq: self.dispatcher.log.len() as u64 + 1,
                at_ms: self.now_ms,
                event,
            };
            if let Err(e) = self.dispatcher.replica.apply_record(&rec) {
                self.fail(format!("a flushed event does not apply: {e}"));
            }
            self.dispatcher.log.push(rec);
            if self.dispatcher.log.len().is_multiple_of(SNAPSHOT_EVERY) {
                self.dispatcher.snapshot = Some(self.dispatcher.replica.to_snapshot());
            }
        }
        let last = self.dispatcher.log.len() as u64;
        let core = self.dispatcher.core.as_mut().expect("dispatcher up");
        core.state.last_seq = last;
        if core.state != self.dispatcher.replica {
            let live = format!("{:?}", core.state);
            let durable = format!("{:?}", self.dispatcher.replica);
            self.fail(format!(
                "state rebuilt from the log differs from the live state\n live:    {live}\n durable: {durable}"
            ));
        }
    }

    fn check_record(&mut self, event: &Event) {
        let replica = &self.dispatcher.replica;
        match event {
            Event::JobAssigned {
                job,
                runner,
                attempt,
                ..
            } => {
                let jr = JobRef {
                    job: *job,
                    attempt: *attempt,
                };
                self.assigned.insert((jr, runner.clone()));
            }
            Event::HeartbeatLost { job, reason, .. } if *reason != LostReason::HandedBack => {
                *self.real_losses.entry(*job).or_default() += 1;
            }
            Event::Result {
                job,
                commit,
                runner,
                attempt,
                report,
                ..
            } => {
                let n = self.results_per_job.entry(*job).or_default();
                *n += 1;
                if *n > 1 {
                    self.fail(format!("a second Result for job {job}"));
                }
                let current = replica.job(*job).map(|j| j.attempts);
                if current != Some(*attempt) {
                    self.fail(format!(
                        "Result for job {job} attempt {attempt}, the job is at {current:?}"
                    ));
                }
                let lost = self.real_losses.get(job).copied().unwrap_or(0);
                match runner {
                    Some(r) if report.outcome != true_outcome(commit) => self.fail(format!(
                        "job {job}: {r} reported {:?}, the truth is {:?}",
                        report.outcome,
                        true_outcome(commit)
                    )),
                    None if report.outcome != Outcome::Error || lost < MAX_ATTEMPTS => {
                        self.fail(format!(
                            "job {job} given up ({:?}) after only {lost} real losses",
                            report.outcome
                        ))
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    // -- runners -----------------------------------------------------------

    fn runner_send(&mut self, i: usize, msg: Up) {
        if let Some(conn) = self.runners[i].conn {
            self.say(|| format!("{} sends {msg:?}", self.runners[i].name));
            self.send_up(conn, msg);
        }
    }

    fn runner_event(&mut self, i: usize, ev: Ev) {
        let r = &self.runners[i];
        if !r.up {
            return;
        }
        if r.stalled {
            self.runners[i].deferred.push(ev);
            return;
        }
        match ev {
            Ev::ToPeer { conn, msg } => {
                if self.runners[i].conn == Some(conn) {
                    self.runner_receive(i, msg);
                }
            }
            Ev::PeerSawClose { conn } => {
                if self.runners[i].conn == Some(conn) {
                    let r = &mut self.runners[i];
                    r.conn = None;
                    r.welcomed = false;
                    let backoff = r.backoff_ms;
                    self.schedule(backoff, Ev::Reconnect(i));
                }
            }
            Ev::JobDone { run, .. } => {
                let r = &mut self.runners[i];
                if let Some((job, commit, _)) = r.running.filter(|x| x.2 == run) {
                    r.running = None;
                    let outcome = true_outcome(&commit);
                    r.pending = Some((job, outcome));
                    if r.welcomed {
                        self.runner_send(i, Up::Result { job, outcome });
                    }
                }
            }
            Ev::Reconnect(_) => {
                if self.runners[i].conn.is_some() {
                    return;
                }
                if self.dispatcher.core.is_none() {
                    let r = &mut self.runners[i];
                    let backoff = r.backoff_ms;
                    r.backoff_ms = (backoff * 2).min(2_000);
                    self.schedule(backoff, Ev::Reconnect(i));
                    return;
                }
                let conn = self.connect(Owner::Runner(i));
                let r = &mut self.runners[i];
                r.conn = Some(conn);
                r.welcomed = false;
                let hello = Up::Hello {
                    holding: r.holding(),
                    crashed: r.crashed,
                };
                self.runner_send(i, hello);
            }
            other => unreachable!("not a runner event: {other:?}"),
        }
    }

    fn runner_receive(&mut self, i: usize, msg: Down) {
        self.say(|| format!("{} receives {msg:?}", self.runners[i].name));
        let name = self.runners[i].name.clone();
        match msg {
            Down::Welcome => {
                let r = &mut self.runners[i];
                r.welcomed = true;
                r.crashed = None;
                r.backoff_ms = 50;
                if let Some((job, outcome)) = r.pending {
                    self.runner_send(i, Up::Result { job, outcome });
                }
            }
            Down::Assign { job, commit } => {
                if !self.assigned.contains(&(job, name.clone())) {
                    self.fail(format!("{name} got {job} before it was durably assigned"));
                }
                let r = &mut self.runners[i];
                if r.holding().is_some() {
                    // Already in hand, or holding another: ignored.
                    return;
                }
                r.marker = Some(job);
                r.runs += 1;
                r.running = Some((job, commit, r.runs));
                let run = r.runs;
                let ms = self.rng.range(10, self.knobs.job_ms_max);
                self.schedule(ms, Ev::JobDone { runner: i, run });
            }
            Down::Abandon { job } => {
                let r = &mut self.runners[i];
                let mut dropped = false;
                if r.running.map(|x| x.0) == Some(job) {
                    r.running = None;
                    dropped = true;
                }
                if r.pending.map(|p| p.0) == Some(job) {
                    r.pending = None;
                    dropped = true;
                }
                if dropped {
                    r.marker = None;
                    self.runner_send(i, Up::Ready);
                }
            }
            Down::ResultAck { job, accepted } => {
                if accepted {
                    let replica = &self.dispatcher.replica;
                    let ok = replica.job(job.job).is_some_and(|j| {
                        matches!(&j.status, JobStatus::Done(f)
                            if f.attempt == job.attempt && replica.runner(f) == Some(name.as_str()))
                    });
                    if !ok {
                        self.fail(format!("{name}'s result for {job} acked but not durable"));
                    }
                }
                let r = &mut self.runners[i];
                if r.pending.map(|p| p.0) == Some(job) {
                    r.pending = None;
                    r.marker = None;
                    if !accepted {
                        self.runner_send(i, Up::Ready);
                    }
                }
            }
            Down::CommitsAck { .. } => unreachable!("runners report no commits"),
        }
    }

    fn heartbeat(&mut self, i: usize) {
        let jitter = self.rng.range(0, HEARTBEAT_INTERVAL_MS / 10);
        self.schedule(HEARTBEAT_INTERVAL_MS + jitter, Ev::Heartbeat(i));
        let r = &self.runners[i];
        if r.up && !r.stalled && r.welcomed {
            let holding = r.holding();
            self.runner_send(i, Up::Heartbeat { holding });
        }
    }

    fn crash_runner(&mut self, i: usize) {
        let keep = self.rng.range(0, self.knobs.net_delay_ms_max);
        let r = &mut self.runners[i];
        r.up = false;
        r.stalled = false;
        r.deferred.clear();
        r.running = None;
        r.pending = None;
        r.welcomed = false;
        let conn = r.conn.take();
        self.say(|| {
            format!(
                "{} crashes (marker {:?})",
                self.runners[i].name, self.runners[i].marker
            )
        });
        if let Some(conn) = conn {
            // What it wrote may still arrive; nothing more reaches it.
            self.break_conn(conn, keep, 0);
        }
        let down_ms = self.rng.range(10, 2 * HEARTBEAT_TIMEOUT_MS);
        self.schedule(down_ms, Ev::RunnerRestart(i));
    }

    /// SIGTERM: the running job is killed and handed back, then the process
    /// exits and closes its connection cleanly.
    fn stop_runner(&mut self, i: usize) {
        let r = &mut self.runners[i];
        if !r.welcomed || r.stalled {
            return;
        }
        if let Some((job, _, _)) = r.running.take() {
            r.marker = None;
            self.runner_send(i, Up::HandBack { job });
        }
        let conn = self.runners[i]
            .conn
            .expect("welcomed runners are connected");
        let flushed = self.conns[&conn].up_last_ms.saturating_sub(self.now_ms);
        self.say(|| format!("{} stops", self.runners[i].name));
        let r = &mut self.runners[i];
        r.up = false;
        r.pending = None;
        r.welcomed = false;
        r.conn = None;
        self.break_conn(conn, flushed, 0);
        let down_ms = self.rng.range(10, 2 * HEARTBEAT_TIMEOUT_MS);
        self.schedule(down_ms, Ev::RunnerRestart(i));
    }

    // -- the observer ------------------------------------------------------

    fn observer_poll(&mut self) {
        let next = self.rng.range(100, 2_000);
        self.schedule(next, Ev::ObserverPoll);
        if self.observer.conn.is_none() {
            if self.dispatcher.core.is_none() {
                return;
            }
            self.observer.conn = Some(self.connect(Owner::Observer));
        }
        let conn = self.observer.conn.expect("connected");
        if !self.quiet && self.rng.percent(self.knobs.new_commit_percent) {
            for _ in 0..self.rng.range(1, 3) {
                let n = self.observer.commits.len();
                self.observer.commits.push(commit_id(self.seed, n as u64));
                self.observer.unacked.insert(n);
            }
        }
        let mut batch: Vec<usize> = self.observer.unacked.iter().copied().collect();
        let known = self.observer.commits.len();
        if known > 0 && self.rng.percent(20) {
            // A commit it already reported, say after a force-push back.
            batch.insert(0, self.rng.below(known as u64) as usize);
        }
        if batch.is_empty() {
            return;
        }
        let copies = if self.rng.percent(10) { 2 } else { 1 };
        for _ in 0..copies {
            let req = self.observer.next_req;
            self.observer.next_req += 1;
            self.observer.requests.insert(req, batch.clone());
            let commits: Vec<CommitId> = batch.iter().map(|n| self.observer.commits[*n]).collect();
            let tip = commits.last().copied();
            self.say(|| format!("observer reports {:?} (req {req})", batch));
            self.send_up(conn, Up::Commits { req, commits, tip });
        }
    }

    fn observer_receive(&mut self, msg: Down) {
        let Down::CommitsAck { req } = msg else {
            unreachable!("the observer gets only acks")
        };
        let Some(batch) = self.observer.requests.remove(&req) else {
            return;
        };
        for n in batch {
            let commit = self.observer.commits[n];
            if self.dispatcher.replica.job_for_commit(&commit).is_none() {
                self.fail(format!("commit {n} acked but not durable"));
            }
            if self.observer.unacked.remove(&n) {
                self.progress_ms = self.now_ms;
            }
        }
    }

    // -- faults ------------------------------------------------------------

    fn fault(&mut self) {
        if self.quiet {
            return;
        }
        let gap = self.fault_gap();
        self.schedule(gap, Ev::Fault);
        let total: u64 = self.knobs.fault_weights.iter().sum();
        if total == 0 {
            return;
        }
        let mut pick = self.rng.below(total);
        let mut kind = 0;
        for (k, w) in self.knobs.fault_weights.iter().enumerate() {
            if pick < *w {
                kind = k;
                break;
            }
            pick -= w;
        }
        let i = self.rng.below(self.runners.len() as u64) as usize;
        let keep_up = self.rng.range(0, self.knobs.net_delay_ms_max);
        let keep_down = self.rng.range(0, self.knobs.net_delay_ms_max);
        match kind {
            0 => {
                if let Some(conn) = self.runners[i].conn {
                    self.break_conn(conn, keep_up, keep_down);
                }
            }
            1 => {
                if let Some(conn) = self.observer.conn {
                    self.break_conn(conn, keep_up, keep_down);
                }
            }
            2 if self.runners[i].up => self.crash_runner(i),
            3 if self.runners[i].up && !self.runners[i].stalled => {
                self.runners[i].stalled = true;
                let ms = self
                    .rng
                    .range(HEARTBEAT_TIMEOUT_MS / 2, 3 * HEARTBEAT_TIMEOUT_MS);
                self.say(|| format!("{} stalls for {ms} ms", self.runners[i].name));
                self.schedule(ms, Ev::StallEnd(i));
            }
            4 if self.runners[i].up => self.stop_runner(i),
            5 => self.crash_dispatcher("at rest"),
            6 => self.dispatcher.crash_before_next_flush = true,
            _ => {}
        }
    }

    // -- the loop ----------------------------------------------------------

    fn step(&mut self) -> bool {
        let Some(s) = self.heap.pop() else {
            return false;
        };
        debug_assert!(s.at_ms >= self.now_ms);
        self.now_ms = s.at_ms;
        self.steps += 1;
        if let Some(i) = s.ev.runner(&self.conns) {
            self.runner_event(i, s.ev);
            self.check();
            return true;
        }
        match s.ev {
            Ev::ToDispatcher { conn, msg } => {
                let up = self.dispatcher.core.is_some()
                    && self.conns[&conn].epoch == self.dispatcher.epoch
                    && self.alive(conn, |c| c.up_cut_ms);
                if up {
                    self.enqueue(Cmd::Msg(conn, msg));
                }
            }
            Ev::ToPeer { conn, msg } => {
                if self.alive(conn, |c| c.down_cut_ms) {
                    match self.conns[&conn].owner {
                        Owner::Observer => {
                            if self.observer.conn == Some(conn) {
                                self.observer_receive(msg);
                            }
                        }
                        Owner::Runner(_) => unreachable!("routed to the runner"),
                    }
                }
            }
            Ev::Gone { conn } => {
                if self.dispatcher.core.is_some()
                    && self.conns[&conn].epoch == self.dispatcher.epoch
                {
                    self.enqueue(Cmd::Gone(conn));
                }
            }
            Ev::PeerSawClose { conn } => {
                if self.observer.conn == Some(conn) {
                    self.observer.conn = None;
                }
            }
            Ev::Batch => self.batch(),
            Ev::Tick => {
                self.schedule(TICK_MS, Ev::Tick);
                if self.dispatcher.core.is_some() {
                    self.enqueue(Cmd::Tick);
                }
            }
            Ev::DispatcherRestart => self.restart_dispatcher(),
            Ev::Heartbeat(i) => self.heartbeat(i),
            Ev::RunnerRestart(i) => {
                let r = &mut self.runners[i];
                r.up = true;
                r.crashed = r.marker;
                r.backoff_ms = 50;
                self.say(|| {
                    format!(
                        "{} restarts (crashed {:?})",
                        self.runners[i].name, self.runners[i].crashed
                    )
                });
                self.schedule(0, Ev::Reconnect(i));
            }
            Ev::StallEnd(i) => {
                let r = &mut self.runners[i];
                r.stalled = false;
                let deferred = std::mem::take(&mut r.deferred);
                self.say(|| {
                    format!(
                        "{} resumes with {} deferred",
                        self.runners[i].name,
                        deferred.len()
                    )
                });
                for ev in deferred {
                    self.schedule(0, ev);
                }
            }
            Ev::ObserverPoll => self.observer_poll(),
            Ev::Fault => self.fault(),
            Ev::JobDone { .. } | Ev::Reconnect(_) => unreachable!("routed to the runner"),
        }
        self.check();
        true
    }

    /// The invariants that must hold after every step.
    fn check(&self) {
        if let Some(core) = &self.dispatcher.core {
            let mut held: HashMap<JobId, &str> = HashMap::new();
            for (runner, jr) in core.state.holders() {
                if let Some(other) = held.insert(jr.job, runner) {
                    self.fail(format!("job {} held by {other} and {runner}", jr.job));
                }
                let j = core.state.job(jr.job).expect("held job exists");
                let ok = j.attempts == jr.attempt
                    && matches!(&j.status, JobStatus::Running { runner: r } if core.state.name(*r) == runner);
                if !ok {
                    self.fail(format!("{runner} holds {jr} but the job is {j:?}"));
                }
            }
            for j in core.state.jobs() {
                if let JobStatus::Running { runner } = &j.status
                    && let runner = core.state.name(*runner)
                    && core.state.holder(runner) != Some(j.current())
                {
                    self.fail(format!(
                        "job {} runs on {runner}, who does not hold it",
                        j.id
                    ));
                }
            }
        }
        // No attempt is in the hands of two runner processes, and each was
        // durably given to the runner holding it.
        let mut in_hand: HashMap<JobRef, &str> = HashMap::new();
        for r in self.runners.iter().filter(|r| r.up) {
            if let Some(jr) = r.holding() {
                if let Some(other) = in_hand.insert(jr, &r.name) {
                    self.fail(format!("{jr} in the hands of {other} and {}", r.name));
                }
                if !self.assigned.contains(&(jr, r.name.clone())) {
                    self.fail(format!(
                        "{} runs {jr}, never durably assigned to it",
                        r.name
                    ));
                }
            }
        }
    }

    /// Everything settled: no work left anywhere.
    fn settled(&self) -> bool {
        let Some(core) = &self.dispatcher.core else {
            return false;
        };
        self.observer.unacked.is_empty()
            && core.state.unfinished() == 0
            && self.runners.iter().all(|r| {
                r.up && !r.stalled && r.welcomed && r.holding().is_none() && core.is_idle(&r.name)
            })
    }

    fn finish(&mut self) {
        self.quiet = true;
        self.say(|| "quiet period".into());
        let start = self.steps;
        self.progress_ms = self.now_ms;
        while !self.settled() {
            let stalled = self.now_ms - self.progress_ms > QUIET_STALL_MS;
            let too_long = self.steps - start > QUIET_STEPS_PER_STEP * start.max(1_000);
            if stalled || too_long || !self.step() {
                let core = self.dispatcher.core.as_ref();
                let stuck: Vec<String> = self
                    .runners
                    .iter()
                    .map(|r| {
                        format!(
                            "{}: up {} conn {:?} welcomed {} holding {:?} core-idle {:?} core-holder {:?}",
                            r.name,
                            r.up,
                            r.conn,
                            r.welcomed,
                            r.holding(),
                            core.map(|c| c.is_idle(&r.name)),
                            core.and_then(|c| c.state.holder(&r.name)),
                        )
                    })
                    .collect();
                self.fail(format!(
                    "no progress in the quiet period: unfinished {:?}, unacked commits {:?}\n  {}",
                    core.map(|c| c.state.unfinished()),
                    self.observer.unacked,
                    stuck.join("\n  ")
                ));
            }
        }
        let mut replayed = State::new();
        for rec in &self.dispatcher.log {
            replayed.apply_record(rec).expect("log replays");
        }
        if replayed != self.dispatcher.core.as_ref().expect("up").state {
            self.fail("final replay differs from the live state".into());
        }
        for (n, commit) in self.observer.commits.iter().enumerate() {
            let Some(j) = replayed.job_for_commit(commit) else {
                self.fail(format!("commit {n} has no job"));
            };
            let JobStatus::Done(f) = &j.status else {
                self.fail(format!("commit {n} (job {}) has no outcome", j.id));
            };
            if self.results_per_job.get(&j.id) != Some(&1) {
                self.fail(format!("job {} does not have exactly one Result", j.id));
            }
            let lost = self.real_losses.get(&j.id).copied().unwrap_or(0);
            let right = match f.runner {
                Some(_) => f.outcome == true_outcome(commit),
                None => f.outcome == Outcome::Error && lost >= MAX_ATTEMPTS,
            };
            if !right {
                self.fail(format!(
                    "job {} ended wrongly: {f:?}, {lost} real losses",
                    j.id
                ));
            }
        }
        if replayed.jobs().len() != self.observer.commits.len() {
            self.fail("jobs for commits nobody reported".into());
        }
    }

    fn fail(&self, why: String) -> ! {
        panic!("{why}");
    }
}

/// Moves a step's effects into the batch, as actor.rs's `absorb` does.
fn absorb(step: Step, events: &mut Vec<Event>, deliveries: &mut Vec<(Target, Down)>) {
    events.extend(step.events);
    for (runner, msg) in step.sends {
        let msg = match msg {
            ToRunner::Assign { job, commit, .. } => Down::Assign { job, commit },
            ToRunner::Abandon { job, .. } => Down::Abandon { job },
        };
        deliveries.push((Target::Runner(runner), msg));
    }
}

/// What one seed did.
struct Ran {
    steps: u64,
    commits: usize,
    events: usize,
}

fn run_seed(seed: u64, steps: u64, trace: bool) -> Ran {
    let mut w = World::new(seed, trace);
    while w.steps < steps && w.step() {}
    w.finish();
    Ran {
        steps: w.steps,
        commits: w.observer.commits.len(),
        events: w.dispatcher.log.len(),
    }
}

/// Runs one seed; a failure names the seed and how to replay it.
fn run_checked(seed: u64, steps: u64, trace: bool) -> Ran {
    match std::panic::catch_unwind(|| run_seed(seed, steps, trace)) {
        Ok(ran) => ran,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "simulation seed {seed} failed: {why}\n  replay: SIM_SEED={seed} SIM_STEPS={steps} \
                 cargo test --release --test sim -- --nocapture simulate_seeds"
            );
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    )
}

#[test]
fn simulate_seeds() {
    let steps = env_u64("SIM_STEPS").unwrap_or(DEFAULT_STEPS);
    if let Some(seed) = env_u64("SIM_SEED") {
        let ran = run_checked(seed, steps, true);
        println!(
            "sim: seed {seed} passed: {} steps, {} commits, {} events",
            ran.steps, ran.commits, ran.events
        );
        return;
    }
    let seeds = match std::env::var("SIM_SEEDS") {
        Ok(r) => {
            let (a, b) = r
                .split_once("..")
                .unwrap_or_else(|| panic!("SIM_SEEDS={r}: expected a..b"));
            a.parse().expect("SIM_SEEDS start")..b.parse().expect("SIM_SEEDS end")
        }
        Err(_) => DEFAULT_SEEDS,
    };
    let budget_s = env_u64("SIM_BUDGET_S");
    let started = Instant::now();
    let (mut seeds_run, mut steps_run, mut commits) = (0u64, 0u64, 0usize);
    for seed in seeds.clone() {
        if budget_s.is_some_and(|b| started.elapsed().as_secs() >= b) {
            break;
        }
        let ran = run_checked(seed, steps, false);
        seeds_run += 1;
        steps_run += ran.steps;
        commits += ran.commits;
    }
    println!(
        "sim: {seeds_run} seeds of {seeds:?} passed, {steps_run} steps, {commits} commits, {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

// Seeds that found bugs in the core; each must keep passing.

/// A hand-back counted as a loss: job 1 was timed out, handed back, timed
/// out again and given up as `error` after two real losses.
#[test]
fn regression_seed_0_hand_back_is_not_a_loss() {
    run_checked(0, DEFAULT_STEPS, false);
}

/// A runner that stalled while idle was declared lost, dropped from the
/// idle queue, and heartbeated holding nothing forever without work.
#[test]
fn regression_seed_12_lost_idle_runner_gets_work_again() {
    run_checked(12, DEFAULT_STEPS, false);
}

/// A late heartbeat made a runner idle while it still held a stale result;
/// it ignored the Assign, dropped the stale job, and the assigned job never
/// ran: a heartbeat holding nothing now gets the held assignment again.
#[test]
fn regression_seed_62_ignored_assign_is_sent_again() {
    run_checked(62, DEFAULT_STEPS, false);
}
