//! Unit tests of the pure core: the fold (`State::apply`) and the decisions
//! (`Core::handle`), all through one small helper, [`Sim`], that keeps the
//! events every step produced so each test can also check that replaying
//! them rebuilds the live state exactly.

use ci::core::{
    CommitId, Core, CoreConfig, Event, Input, JobId, JobRef, JobReport, JobStatus, LeftHow,
    LeftJob, LostReason, Now, Outcome, Record, Refusal, Reply, RunnerState, Serves, SinkSpec,
    SinkTakes, State, Step, ToRunner,
};

const TIMEOUT_MS: u64 = 10_000;

/// A core on virtual time plus everything it ever emitted.
struct Sim {
    core: Core,
    now_ms: u64,
    /// Every record of every step.
    log: Vec<Record>,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(CoreConfig {
            heartbeat_timeout_ms: TIMEOUT_MS,
            max_attempts: 3,
            ..CoreConfig::default()
        })
    }

    fn with(config: CoreConfig) -> Sim {
        let mut sim = Sim {
            core: Core::new(State::new(), config),
            now_ms: 1_000,
            log: Vec::new(),
        };
        sim.input(Input::Started { pid: 1 });
        sim
    }

    /// Feeds one input at the current virtual time; checks replay after it.
    fn input(&mut self, input: Input) -> Step {
        let step = self.core.handle(input, Now::at(self.now_ms));
        self.log.extend(step.records.iter().cloned());
        assert_eq!(
            self.replayed(),
            self.live(),
            "replay differs from live state"
        );
        step
    }

    /// Time passes as it does in a live dispatcher: the shell feeds a
    /// tick at least every `tick_ms` (a gap without inputs is a pause; see
    /// [`Sim::pause`]). The ticks up to, not at, the new time.
    fn advance(&mut self, ms: u64) {
        let tick = self.core.config().tick_ms();
        let end = self.now_ms + ms;
        while self.now_ms + tick < end {
            self.now_ms += tick;
            self.input(Input::Tick);
        }
        self.now_ms = end;
    }

    /// Time passes while the dispatcher itself does not run (SIGSTOP, a
    /// frozen VM): no input at all.
    fn pause(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    fn replayed(&self) -> State {
        let mut s = State::new();
        for rec in &self.log {
            s.apply_record(rec).expect("logged record applies");
        }
        s
    }

    /// The live state (numbered by the core as it decides).
    fn live(&self) -> State {
        self.core.state.clone()
    }

    fn commits(&mut self, commits: &[CommitId]) -> Step {
        self.input(Input::CommitsReported {
            repository: None,
            branch: Some("main".into()),
            commits: commits.to_vec(),
            tip: commits.last().copied(),
        })
    }

    fn connect(&mut self, runner: &str) -> Step {
        self.connect_with(runner, None, None)
    }

    fn connect_with(
        &mut self,
        runner: &str,
        holding: Option<JobRef>,
        crashed: Option<JobRef>,
    ) -> Step {
        self.input(Input::RunnerConnected {
            runner: runner.into(),
            holding,
            left: crashed.map(|job| LeftJob {
                job,
                how: LeftHow::Crashed,
            }),
            serves: Serves::Default,
        })
    }

    /// A runner that serves `serves` connects (holding nothing).
    fn connect_serving(&mut self, runner: &str, serves: Serves) -> Step {
        self.input(Input::RunnerConnected {
            runner: runner.into(),
            holding: None,
            left: None,
            serves,
        })
    }

    /// Commits of a named repository (`None`: the default one) on `main`.
    fn commits_in(&mut self, repository: Option<&str>, commits: &[CommitId]) -> Step {
        self.input(Input::CommitsReported {
            repository: repository.map(str::to_string),
            branch: Some("main".into()),
            commits: commits.to_vec(),
            tip: commits.last().copied(),
        })
    }

    fn heartbeat(&mut self, runner: &str, holding: Option<JobRef>) -> Step {
        self.input(Input::Heartbeat {
            runner: runner.into(),
            holding,
        })
    }

    fn result(&mut self, runner: &str, job: JobRef, outcome: Outcome) -> Step {
        self.input(Input::ResultReported {
            runner: runner.into(),
            job,
            report: report(outcome),
            output_bytes: 3,
        })
    }

    fn tick(&mut self) -> Step {
        self.input(Input::Tick)
    }

    fn job(&self, n: u64) -> &ci::core::Job {
        self.core.state.job(JobId(n)).expect("job exists")
    }
}

fn commit(n: u8) -> CommitId {
    CommitId::from_bytes(&[n; 20]).unwrap()
}

fn jr(job: u64, attempt: u32) -> JobRef {
    JobRef {
        job: JobId(job),
        attempt,
    }
}

fn report(outcome: Outcome) -> JobReport {
    JobReport {
        outcome,
        exit_code: Some(0),
        duration_ms: 5,
        tests: None,
        message: String::new(),
    }
}

/// The (runner, job) pairs of every `Assign` in a step.
fn assigns(step: &Step) -> Vec<(String, JobRef)> {
    step.sends
        .iter()
        .filter_map(|(r, m)| match m {
            ToRunner::Assign { job, .. } => Some((r.clone(), *job)),
            _ => None,
        })
        .collect()
}

fn abandons(step: &Step) -> Vec<(String, JobRef)> {
    step.sends
        .iter()
        .filter_map(|(r, m)| match m {
            ToRunner::Abandon { job, .. } => Some((r.clone(), *job)),
            _ => None,
        })
        .collect()
}

fn kinds(step: &Step) -> Vec<&'static str> {
    step.events().map(Event::kind).collect()
}

#[test]
fn the_same_commit_twice_is_one_commit() {
    let mut sim = Sim::new();
    let step = sim.commits(&[commit(1)]);
    assert_eq!(kinds(&step), ["commit_seen"]);
    let step = sim.commits(&[commit(1)]);
    assert!(step.records.is_empty());
    assert_eq!(
        step.reply,
        Some(Reply::Commits {
            accepted: vec![],
            duplicates: 1
        })
    );
    // Twice in the same report, too.
    let step = sim.commits(&[commit(2), commit(2)]);
    assert_eq!(kinds(&step), ["commit_seen"]);
    assert_eq!(
        step.reply,
        Some(Reply::Commits {
            accepted: vec![commit(2)],
            duplicates: 1
        })
    );
    assert_eq!(sim.core.state.jobs_seen(), 2);
}

#[test]
fn jobs_go_to_idle_runners_oldest_first() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.connect("b");
    let step = sim.commits(&[commit(1), commit(2), commit(3)]);
    assert_eq!(
        assigns(&step),
        [("a".to_string(), jr(1, 1)), ("b".to_string(), jr(2, 1))]
    );
    assert_eq!(sim.core.state.queue_front(), Some(JobId(3)));
    let step = sim.result("b", jr(2, 1), Outcome::Pass);
    assert_eq!(assigns(&step), [("b".to_string(), jr(3, 1))]);
}

#[test]
fn a_result_for_a_reassigned_attempt_changes_nothing() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    sim.advance(TIMEOUT_MS);
    let step = sim.tick();
    assert_eq!(kinds(&step), ["heartbeat_lost"]);
    let step = sim.connect("b");
    assert_eq!(assigns(&step), [("b".to_string(), jr(1, 2))]);
    let before = sim.core.state.clone();
    let step = sim.result("a", jr(1, 1), Outcome::Fail);
    assert!(step.records.is_empty());
    assert!(matches!(
        step.reply,
        Some(Reply::ResultAck {
            accepted: false,
            ..
        })
    ));
    assert_eq!(sim.core.state, before);
}

#[test]
fn a_resent_result_is_acked_without_a_new_event() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let step = sim.result("a", jr(1, 1), Outcome::Pass);
    assert_eq!(kinds(&step), ["result"]);
    let before = sim.core.state.clone();
    let step = sim.result("a", jr(1, 1), Outcome::Pass);
    assert!(step.records.is_empty());
    assert!(matches!(
        step.reply,
        Some(Reply::ResultAck { accepted: true, .. })
    ));
    assert_eq!(sim.core.state, before);
    assert_eq!(sim.core.state.results(), 1);
}

#[test]
fn a_silent_runner_loses_its_job_to_the_front_of_the_queue() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1), commit(2)]);
    sim.advance(TIMEOUT_MS - 1);
    assert!(sim.tick().records.is_empty(), "not yet");
    sim.advance(1);
    let step = sim.tick();
    assert_eq!(
        step.events().cloned().collect::<Vec<_>>(),
        [Event::HeartbeatLost {
            runner: "a".into(),
            job: JobId(1),
            attempt: 1,
            reason: LostReason::HeartbeatTimeout
        }]
    );
    assert_eq!(sim.core.state.queue_front(), Some(JobId(1)));
    let step = sim.connect("b");
    assert_eq!(assigns(&step), [("b".to_string(), jr(1, 2))]);
}

#[test]
fn a_job_lost_three_times_ends_as_error() {
    let mut sim = Sim::new();
    sim.commits(&[commit(1)]);
    for attempt in 1..=3u32 {
        let name = format!("r{attempt}");
        let step = sim.connect(&name);
        assert_eq!(assigns(&step), [(name, jr(1, attempt))]);
        sim.advance(TIMEOUT_MS);
        let step = sim.tick();
        let expect: &[&str] = if attempt < 3 {
            &["heartbeat_lost"]
        } else {
            &["heartbeat_lost", "result"]
        };
        assert_eq!(kinds(&step), expect);
    }
    let j = sim.job(1);
    let JobStatus::Done(f) = &j.status else {
        panic!("job not done: {j:?}")
    };
    assert_eq!(f.outcome, Outcome::Error);
    assert_eq!(f.runner, None);
    assert_eq!(f.attempt, 3);
    assert_eq!(sim.core.state.queue_len(), 0);
}

#[test]
fn a_restart_gives_every_holder_a_full_timeout() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    // The dispatcher was down for a long time; the state is replayed.
    sim.pause(10 * TIMEOUT_MS);
    let state = sim.core.state.clone();
    sim.core = Core::new(state, sim.core.config().clone());
    sim.input(Input::Started { pid: 2 });
    assert!(sim.tick().records.is_empty(), "old timestamps condemned a");
    sim.advance(TIMEOUT_MS - 1);
    assert!(sim.tick().records.is_empty());
    sim.advance(1);
    assert_eq!(kinds(&sim.tick()), ["heartbeat_lost"]);
}

#[test]
fn a_runner_reconnecting_with_its_job_keeps_it() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let step = sim.connect_with("a", Some(jr(1, 1)), None);
    assert!(step.records.is_empty() && step.sends.is_empty());
    assert_eq!(
        step.reply,
        Some(Reply::Welcome {
            keep: Some(jr(1, 1))
        })
    );
    assert_eq!(sim.core.state.holder("a"), Some(jr(1, 1)));
}

#[test]
fn a_runner_that_never_got_its_assignment_gets_it_again() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let step = sim.connect_with("a", None, None);
    assert!(step.records.is_empty());
    assert_eq!(assigns(&step), [("a".to_string(), jr(1, 1))]);
    assert_eq!(sim.core.state.holder("a"), Some(jr(1, 1)));
}

#[test]
fn a_runner_that_crashed_loses_its_job_at_once() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let step = sim.connect_with("a", None, Some(jr(1, 1)));
    assert_eq!(
        step.records[0].event,
        Event::HeartbeatLost {
            runner: "a".into(),
            job: JobId(1),
            attempt: 1,
            reason: LostReason::RunnerRestarted
        }
    );
    // It is idle again, so the job comes straight back as attempt 2.
    assert_eq!(assigns(&step), [("a".to_string(), jr(1, 2))]);
    assert_eq!(sim.job(1).lost, 1);
}

#[test]
fn hand_back_requeues_and_never_gives_up() {
    let mut sim = Sim::new();
    sim.commits(&[commit(1), commit(2)]);
    for attempt in 1..=5u32 {
        sim.connect("a");
        let step = sim.input(Input::HandBack {
            runner: "a".into(),
            job: jr(1, attempt),
        });
        assert_eq!(kinds(&step), ["heartbeat_lost"], "attempt {attempt}");
        assert_eq!(sim.core.state.queue_front(), Some(JobId(1)));
    }
    assert_eq!(sim.core.state.results(), 0);
    // Hand-backs are not losses: the job still has all its attempts.
    for attempt in 6..=7u32 {
        let step = sim.connect("b");
        assert_eq!(assigns(&step), [("b".to_string(), jr(1, attempt))]);
        sim.advance(TIMEOUT_MS);
        assert_eq!(kinds(&sim.tick()), ["heartbeat_lost"]);
    }
    assert_eq!(sim.core.state.results(), 0, "gave up after 2 real losses");
}

#[test]
fn a_heartbeat_for_a_job_no_longer_held_gets_abandon() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    sim.advance(TIMEOUT_MS);
    sim.tick();
    let step = sim.heartbeat("a", Some(jr(1, 1)));
    assert_eq!(abandons(&step), [("a".to_string(), jr(1, 1))]);
    assert!(step.records.is_empty());
    // Holding the job it was given: nothing to say.
    sim.input(Input::RunnerReady { runner: "a".into() });
    let step = sim.heartbeat("a", Some(jr(1, 2)));
    assert!(step.sends.is_empty(), "{:?}", step.sends);
}

#[test]
fn an_idle_runner_heard_again_after_a_timeout_gets_work() {
    let mut sim = Sim::new();
    sim.connect("a");
    // a stalls while idle and is declared lost ...
    sim.advance(TIMEOUT_MS);
    sim.tick();
    // ... then heartbeats again, holding nothing; the runner never says
    // Ready in that case, so the heartbeat alone must make it idle again.
    sim.heartbeat("a", None);
    let step = sim.commits(&[commit(1)]);
    assert_eq!(assigns(&step), [("a".to_string(), jr(1, 1))]);
}

#[test]
fn a_heartbeat_holding_nothing_gets_the_held_assignment_again() {
    // Regression (sim seed 62): the runner ignored its Assign because it
    // still held a stale result; once it dropped that, it heartbeated
    // holding nothing forever while the state said it held the job.
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let step = sim.heartbeat("a", None);
    assert!(step.records.is_empty());
    assert_eq!(assigns(&step), [("a".to_string(), jr(1, 1))]);
    let step = sim.heartbeat("a", Some(jr(1, 1)));
    assert!(step.sends.is_empty());
}

#[test]
fn replaying_every_event_rebuilds_the_live_state() {
    // Sim::input checks this after every step; here a longer mixed history.
    let mut sim = Sim::new();
    sim.connect("a");
    sim.connect("b");
    sim.commits(&[commit(1), commit(2), commit(3), commit(4)]);
    sim.result("a", jr(1, 1), Outcome::Pass);
    sim.advance(TIMEOUT_MS / 2);
    sim.heartbeat("a", Some(jr(3, 1)));
    sim.advance(TIMEOUT_MS / 2);
    sim.tick();
    sim.connect_with("b", None, Some(jr(2, 2)));
    sim.result("a", jr(3, 1), Outcome::Fail);
    sim.input(Input::HandBack {
        runner: "a".into(),
        job: jr(2, 2),
    });
    sim.commits(&[commit(4), commit(5)]);
    let mut replayed = State::new();
    for rec in &sim.log {
        replayed.apply_record(rec).unwrap();
    }
    assert_eq!(replayed, sim.live());
}

/// SIGSTOP, a frozen VM or a blocked disk: the dispatcher did not run, so
/// it heard nobody. Nobody is condemned for that; every runner gets a full
/// timeout from the moment it runs again, and the gap is on record.
#[test]
fn a_paused_dispatcher_condemns_nobody() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    for _ in 0..3 {
        sim.pause(3 * TIMEOUT_MS);
        let step = sim.tick();
        assert_eq!(kinds(&step), ["dispatcher_paused"]);
        assert!(matches!(
            step.records[0].event,
            Event::DispatcherPaused { gap_ms } if gap_ms == 3 * TIMEOUT_MS
        ));
        sim.heartbeat("a", Some(jr(1, 1)));
    }
    assert_eq!(sim.job(1).lost, 0);
    // The grace is one timeout, no more: a runner that really went silent
    // is still found.
    sim.pause(3 * TIMEOUT_MS);
    assert_eq!(kinds(&sim.tick()), ["dispatcher_paused"]);
    sim.advance(TIMEOUT_MS - 1);
    assert!(sim.tick().records.is_empty());
    sim.advance(1);
    assert_eq!(kinds(&sim.tick()), ["heartbeat_lost"]);
    // An ordinary late tick is no pause.
    let gap = sim.core.config().pause_gap_ms();
    sim.pause(gap);
    assert!(sim.tick().records.is_empty());
}

/// The wall clock stepped forward an hour, then back two: no decision
/// changes (deadlines are on the monotonic clock); records carry the wall
/// time they were decided at, for people.
#[test]
fn a_stepped_wall_clock_changes_no_decision() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let hour = 3_600_000;
    let mono = sim.now_ms;
    let at = |sim: &mut Sim, wall_ms: u64, input: Input| {
        let step = sim.core.handle(
            input,
            Now {
                wall_ms,
                mono_ms: mono,
            },
        );
        sim.log.extend(step.records.iter().cloned());
        step
    };
    let step = at(&mut sim, mono + hour, Input::Tick);
    assert!(step.records.is_empty(), "a step forward lost a runner");
    let step = at(
        &mut sim,
        mono - hour,
        Input::CommitsReported {
            repository: None,
            branch: None,
            commits: vec![commit(2)],
            tip: None,
        },
    );
    assert_eq!(step.records[0].at_ms, mono - hour);
    assert_eq!(sim.replayed(), sim.live());
    // And a step back does not delay finding a dead runner: its deadline
    // is a timeout of monotonic time after it was last heard.
    sim.advance(TIMEOUT_MS);
    assert_eq!(kinds(&sim.tick()), ["heartbeat_lost"]);
}

/// A runner stopped with SIGTERM while the dispatcher was away says so in
/// its next hello: the job is queued again, and that is not a loss.
#[test]
fn a_job_handed_back_while_away_is_not_a_loss() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let step = sim.input(Input::RunnerConnected {
        runner: "a".into(),
        holding: None,
        left: Some(LeftJob {
            job: jr(1, 1),
            how: LeftHow::HandedBack,
        }),
        serves: Serves::Default,
    });
    assert_eq!(
        step.records[0].event,
        Event::HeartbeatLost {
            runner: "a".into(),
            job: JobId(1),
            attempt: 1,
            reason: LostReason::HandedBack
        }
    );
    assert_eq!(sim.job(1).lost, 0);
    // It is idle again and gets the job back as attempt 2.
    assert_eq!(kinds(&step), ["heartbeat_lost", "job_assigned"]);
    // A hand-back for an attempt no longer held changes nothing.
    let step = sim.input(Input::RunnerConnected {
        runner: "a".into(),
        holding: Some(jr(1, 2)),
        left: Some(LeftJob {
            job: jr(1, 1),
            how: LeftHow::HandedBack,
        }),
        serves: Serves::Default,
    });
    assert!(step.records.is_empty());
}

/// A shorter hiccup of the dispatcher (it missed a tick by more than half
/// a tick, not long enough to count as a pause): the first tick after it
/// judges nobody, so what waited in the sockets is read first; the next
/// one does.
#[test]
fn after_a_hiccup_the_sockets_are_read_before_anyone_is_judged() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    let tick = sim.core.config().tick_ms();
    sim.advance(TIMEOUT_MS - tick);
    assert!(sim.tick().records.is_empty());
    // Two ticks' worth without running: a's deadline passes meanwhile.
    sim.pause(2 * tick);
    assert!(sim.tick().records.is_empty(), "judged before reading");
    // a's heartbeat was waiting in its socket.
    sim.heartbeat("a", Some(jr(1, 1)));
    sim.advance(tick);
    assert!(sim.tick().records.is_empty());
    // Had it been silent, the next tick would have found it.
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    sim.advance(TIMEOUT_MS - tick);
    sim.tick();
    sim.pause(2 * tick);
    assert!(sim.tick().records.is_empty());
    sim.advance(tick);
    assert_eq!(kinds(&sim.tick()), ["heartbeat_lost"]);
}

/// A running job that is cancelled keeps who ran it and for how long; the
/// runner's late result for that attempt is refused, not taken for a
/// resend of a recorded one (found by the simulator, seed 2).
#[test]
fn a_cancelled_running_job_keeps_its_runner_and_refuses_its_late_result() {
    let mut sim = Sim::new();
    sim.connect("a");
    sim.commits(&[commit(1)]);
    sim.advance(1_500);
    let step = sim.input(Input::Cancel { commit: commit(1) });
    assert_eq!(kinds(&step), ["job_cancelled"]);
    let JobStatus::Done(f) = sim.job(1).status else {
        panic!("cancelled job has no outcome");
    };
    assert_eq!(f.outcome, Outcome::Cancelled);
    assert_eq!(sim.core.state.runner(&f), Some("a"));
    assert_eq!(f.duration_ms, 1_500);
    let step = sim.result("a", jr(1, 1), Outcome::Pass);
    assert!(step.records.is_empty());
    assert!(matches!(
        step.reply,
        Some(Reply::ResultAck {
            accepted: false,
            ..
        })
    ));
    assert_eq!(sim.core.state.results(), 1);
}

// ---------------------------------------------------------------------------
// The outbox: notifications due as events
// ---------------------------------------------------------------------------

fn notifying() -> Sim {
    Sim::with(CoreConfig {
        heartbeat_timeout_ms: TIMEOUT_MS,
        max_attempts: 3,
        sinks: vec![
            SinkSpec {
                key: "url:events".into(),
                takes: SinkTakes::Events,
            },
            SinkSpec {
                key: "status:forge".into(),
                takes: SinkTakes::Statuses,
            },
        ],
        ..CoreConfig::default()
    })
}

/// `(sink, kind, state)` of each notification the step made due.
fn dues(step: &Step) -> Vec<(String, &'static str, &'static str)> {
    step.events()
        .filter_map(|e| match e {
            Event::NotificationDue { sink, notice, .. } => {
                Some((sink.clone(), notice.kind.as_str(), notice.state.as_str()))
            }
            _ => None,
        })
        .collect()
}

fn due(
    sink: &str,
    kind: &'static str,
    state: &'static str,
) -> (String, &'static str, &'static str) {
    (sink.to_string(), kind, state)
}

#[test]
fn without_sinks_nothing_is_owed() {
    let mut sim = Sim::new();
    sim.connect("r1");
    let step = sim.commits(&[commit(1)]);
    assert!(dues(&step).is_empty());
    let step = sim.result("r1", jr(1, 1), Outcome::Fail);
    assert!(dues(&step).is_empty());
    assert!(sim.core.state.outbox().is_empty());
}

#[test]
fn a_job_owes_a_status_per_move_and_its_result_to_the_event_sinks() {
    let mut sim = notifying();
    let step = sim.commits(&[commit(1)]);
    assert_eq!(dues(&step), vec![due("status:forge", "status", "pending")]);
    let step = sim.connect("r1");
    assert_eq!(dues(&step), vec![due("status:forge", "status", "running")]);
    let step = sim.result("r1", jr(1, 1), Outcome::Pass);
    assert_eq!(
        dues(&step),
        vec![
            due("status:forge", "status", "pass"),
            due("url:events", "result", "pass"),
        ]
    );
    assert_eq!(sim.core.state.outbox().len(), 4);
    // The first result on a branch turns nothing.
    assert!(sim.core.state.branch_mark("main").is_some());
}

#[test]
fn a_branch_turning_red_and_green_again_is_owed_once_each() {
    let mut sim = notifying();
    sim.connect("r1");
    sim.commits(&[commit(1)]);
    sim.result("r1", jr(1, 1), Outcome::Pass);
    sim.commits(&[commit(2)]);
    let step = sim.result("r1", jr(2, 1), Outcome::Fail);
    assert!(dues(&step).contains(&due("url:events", "branch_broken", "fail")));
    sim.commits(&[commit(3)]);
    let step = sim.result("r1", jr(3, 1), Outcome::Timeout);
    assert!(
        !dues(&step).iter().any(|d| d.1.starts_with("branch_")),
        "still red is no news"
    );
    sim.commits(&[commit(4)]);
    let step = sim.result("r1", jr(4, 1), Outcome::Pass);
    assert!(dues(&step).contains(&due("url:events", "branch_fixed", "pass")));
}

#[test]
fn an_older_commit_finishing_late_does_not_turn_its_branch() {
    let mut sim = notifying();
    sim.connect("r1");
    sim.connect("r2");
    sim.commits(&[commit(1), commit(2)]);
    // Job 2 (newer) passes first; then job 1 (older) fails.
    sim.result("r2", jr(2, 1), Outcome::Pass);
    let step = sim.result("r1", jr(1, 1), Outcome::Fail);
    assert!(!dues(&step).iter().any(|d| d.1 == "branch_broken"));
    assert_eq!(sim.core.state.branch_mark("main").unwrap().job, JobId(2));
}

#[test]
fn a_cancel_owes_its_outcome_but_does_not_turn_the_branch() {
    let mut sim = notifying();
    sim.connect("r1");
    sim.commits(&[commit(1)]);
    sim.result("r1", jr(1, 1), Outcome::Pass);
    sim.commits(&[commit(2), commit(3)]);
    let step = sim.input(Input::Cancel { commit: commit(3) });
    assert_eq!(
        dues(&step),
        vec![
            due("status:forge", "status", "cancelled"),
            due("url:events", "result", "cancelled"),
        ]
    );
    assert_eq!(sim.core.state.branch_mark("main").unwrap().job, JobId(1));
}

#[test]
fn delivered_and_dropped_settle_a_notification_once() {
    let mut sim = notifying();
    sim.commits(&[commit(1)]);
    let n = *sim.core.state.outbox().keys().next().unwrap();
    let step = sim.input(Input::Notified { n, dropped: None });
    assert_eq!(kinds(&step), vec!["notification_delivered"]);
    // A repeat (the notifier reconnected) changes nothing.
    let step = sim.input(Input::Notified { n, dropped: None });
    assert!(step.records.is_empty());
    assert!(sim.core.state.outbox().is_empty());
}

#[test]
fn a_restart_without_a_sink_drops_what_it_was_owed_on_record() {
    let mut sim = notifying();
    sim.commits(&[commit(1)]);
    assert_eq!(sim.core.state.outbox().len(), 1);
    // Restart with only the events sink: the status sink is gone.
    let state = sim.core.state.clone();
    let mut config = sim.core.config().clone();
    config.sinks.retain(|s| s.takes == SinkTakes::Events);
    sim.core = Core::new(state, config);
    let step = sim.input(Input::Started { pid: 2 });
    assert_eq!(
        kinds(&step),
        vec!["dispatcher_started", "notification_dropped"]
    );
    assert!(sim.core.state.outbox().is_empty());
}

#[test]
fn the_outbox_survives_a_snapshot() {
    let mut sim = notifying();
    sim.connect("r1");
    sim.commits(&[commit(1), commit(2)]);
    sim.result("r1", jr(1, 1), Outcome::Pass);
    sim.result("r1", jr(2, 1), Outcome::Fail);
    let state = sim.live();
    assert!(state.outbox().len() > 4);
    let back = State::from_snapshot(&state.to_snapshot()).expect("decodes");
    assert_eq!(back, state);
    assert_eq!(back.outbox(), state.outbox());
    assert_eq!(back.branch_mark("main"), state.branch_mark("main"));
    assert_eq!(back.next_notice(), state.next_notice());
}

// --- Several repositories ---------------------------------------------

fn only(names: &[&str]) -> Serves {
    Serves::Only(names.iter().map(|n| Some(n.to_string())).collect())
}

/// The repository of the job an assignment hands out.
fn assigned_repos(step: &Step) -> Vec<Option<String>> {
    step.sends
        .iter()
        .filter_map(|(_, m)| match m {
            ToRunner::Assign { repository, .. } => Some(repository.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_runner_serving_only_one_repository_never_gets_anothers_job() {
    let mut sim = Sim::new();
    sim.connect_serving("lib-only", only(&["lib"]));
    let step = sim.commits_in(Some("app"), &[commit(1)]);
    assert!(assigns(&step).is_empty(), "app's job went to a lib runner");
    // Nor does a runner of the default repository take it.
    let step = sim.connect("default-only");
    assert!(assigns(&step).is_empty());
    let step = sim.commits_in(Some("lib"), &[commit(2)]);
    assert_eq!(assigns(&step), [("lib-only".to_string(), jr(2, 1))]);
    assert_eq!(assigned_repos(&step), [Some("lib".to_string())]);
    // A default commit goes to the default runner.
    let step = sim.commits_in(None, &[commit(3)]);
    assert_eq!(assigns(&step), [("default-only".to_string(), jr(3, 1))]);
    // app's job still waits: nobody connected serves it.
    assert_eq!(sim.core.unserved(), [Some("app".to_string())]);
    let step = sim.connect_serving("any", Serves::Any);
    assert_eq!(assigns(&step), [("any".to_string(), jr(1, 1))]);
    assert!(sim.core.unserved().is_empty());
}

#[test]
fn a_flood_of_one_repository_does_not_starve_another() {
    let mut sim = Sim::new();
    sim.connect_serving("r", Serves::Any);
    // The runner takes app's first; 20 more of app then 2 of lib queue.
    let app: Vec<CommitId> = (1..=21).map(commit).collect();
    sim.commits_in(Some("app"), &app);
    sim.commits_in(Some("lib"), &[commit(101), commit(102)]);
    let mut order = Vec::new();
    let mut held = jr(1, 1);
    for _ in 0..6 {
        let step = sim.result("r", held, Outcome::Pass);
        let (_, next) = assigns(&step)[0].clone();
        order.push(assigned_repos(&step)[0].clone().unwrap());
        held = next;
    }
    // lib's two go out alternating with app's, not after all of app's.
    assert_eq!(order, ["lib", "app", "lib", "app", "app", "app"]);
}

#[test]
fn a_job_nobody_serves_waits_and_says_so() {
    let mut sim = Sim::new();
    sim.connect("default-only");
    let step = sim.commits_in(Some("lib"), &[commit(1)]);
    assert!(assigns(&step).is_empty());
    assert_eq!(sim.core.unserved(), [Some("lib".to_string())]);
    let status = ci::proto::StatusView::of(&sim.core, Now::at(sim.now_ms));
    assert_eq!(status.repositories.len(), 1);
    assert_eq!(status.repositories[0].repository.as_deref(), Some("lib"));
    assert!(!status.repositories[0].served);
    // The runner stays idle for work it can take.
    assert!(sim.core.is_idle("default-only"));
    let step = sim.commits_in(None, &[commit(2)]);
    assert_eq!(assigns(&step), [("default-only".to_string(), jr(2, 1))]);
}

#[test]
fn two_repositories_replay_to_the_live_state_with_their_own_branches() {
    let mut sim = Sim::new();
    sim.connect_serving("r", Serves::Any);
    sim.commits_in(Some("app"), &[commit(1)]);
    sim.commits_in(Some("lib"), &[commit(2)]);
    sim.commits_in(None, &[commit(3)]);
    // Ties between repositories never served go to the default one first.
    assert_eq!(
        assigns(&sim.result("r", jr(1, 1), Outcome::Fail))[0].1,
        jr(3, 1)
    );
    assert_eq!(
        assigns(&sim.result("r", jr(3, 1), Outcome::Pass))[0].1,
        jr(2, 1)
    );
    sim.result("r", jr(2, 1), Outcome::Pass);
    // A commit known in one repository is known in all.
    let step = sim.commits_in(Some("lib"), &[commit(1)]);
    assert_eq!(
        step.reply,
        Some(Reply::Commits {
            accepted: vec![],
            duplicates: 1
        })
    );
    // `main` of each repository is its own branch.
    let state = &sim.core.state;
    assert_eq!(state.tips_of(Some("app")).unwrap()["main"], commit(1));
    assert_eq!(state.tips_of(Some("lib")).unwrap()["main"], commit(1));
    assert_eq!(state.tips_of(None).unwrap()["main"], commit(3));
    assert_eq!(
        state.branch_mark_in(Some("app"), "main").unwrap().outcome,
        Outcome::Fail
    );
    assert_eq!(
        state.branch_mark_in(Some("lib"), "main").unwrap().outcome,
        Outcome::Pass
    );
    assert_eq!(state.branch_mark("main").unwrap().job, JobId(3));
    // Replay (checked after every input) and the snapshot agree.
    let snap = State::from_snapshot(&sim.live().to_snapshot()).unwrap();
    assert_eq!(snap, sim.live());
    assert_eq!(sim.replayed(), sim.live());
    // Named repositories are written as their own events; the default
    // one's as before.
    let kinds: Vec<&str> = sim
        .log
        .iter()
        .filter_map(|r| match &r.event {
            Event::CommitSeen { .. } => Some("seen"),
            Event::CommitSeenIn { .. } => Some("seen_in"),
            Event::BranchMovedIn { .. } => Some("moved_in"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["seen_in", "seen_in", "seen", "moved_in"]);
}

#[test]
fn notices_carry_the_jobs_repository() {
    let mut sim = Sim::with(CoreConfig {
        heartbeat_timeout_ms: TIMEOUT_MS,
        max_attempts: 3,
        sinks: vec![SinkSpec {
            key: "events".into(),
            takes: SinkTakes::Events,
        }],
        ..CoreConfig::default()
    });
    sim.connect_serving("r", Serves::Any);
    sim.commits_in(Some("app"), &[commit(1)]);
    sim.result("r", jr(1, 1), Outcome::Pass);
    let due: Vec<Option<String>> = sim
        .core
        .state
        .outbox()
        .values()
        .map(|d| d.notice.repository.clone())
        .collect();
    assert_eq!(due, [Some("app".to_string())]);
}

// ---------------------------------------------------------------------------
// Finished jobs out of memory

fn windowed(window: usize) -> Sim {
    Sim::with(CoreConfig {
        heartbeat_timeout_ms: TIMEOUT_MS,
        window,
        ..CoreConfig::default()
    })
}

/// Four commits run to the end on one runner; with a window of two, jobs 1
/// and 2 leave memory, oldest finished first.
fn four_finished(sim: &mut Sim) -> Vec<ci::core::ArchivedJob> {
    sim.connect("r1");
    sim.commits(&[commit(1), commit(2), commit(3), commit(4)]);
    for n in 1..=4 {
        let outcome = if n == 2 { Outcome::Fail } else { Outcome::Pass };
        sim.result("r1", jr(n, 1), outcome);
    }
    sim.core.state.take_archived()
}

#[test]
fn finished_jobs_beyond_the_window_leave_memory_on_record() {
    let mut sim = windowed(2);
    let out = four_finished(&mut sim);
    assert_eq!(out.iter().map(|a| a.id.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(out[1].commit, commit(2));
    assert_eq!(out[1].branch.as_deref(), Some("main"));
    assert_eq!(out[1].finished.outcome, Outcome::Fail);
    assert_eq!(out[1].finished.runner.as_deref(), Some("r1"));
    assert_eq!(out[1].finished.exit_code, Some(0));
    let state = &sim.core.state;
    assert_eq!(state.jobs_in_memory(), 2);
    assert_eq!(state.jobs_seen(), 4);
    assert_eq!(state.results(), 4);
    assert_eq!(state.outcome_counts(), [3, 1, 0, 0, 0]);
    assert!(state.job(JobId(1)).is_none() && state.job(JobId(3)).is_some());
    // The window is on record: a replay moves the same jobs out.
    assert!(
        sim.log
            .iter()
            .any(|r| matches!(r.event, Event::MemoryWindow { jobs: 2 }))
    );
    let mut replayed = State::new();
    for rec in &sim.log {
        replayed.apply_record(rec).unwrap();
    }
    assert_eq!(replayed.take_archived(), out);
}

#[test]
fn a_commit_out_of_memory_is_a_duplicate_once_the_shell_recalls_it() {
    let mut sim = windowed(2);
    let out = four_finished(&mut sim);
    sim.core.recall([out[0].clone()]);
    let step = sim.commits(&[commit(1), commit(5)]);
    assert_eq!(
        step.reply,
        Some(Reply::Commits {
            accepted: vec![commit(5)],
            duplicates: 1
        })
    );
    // A recall answers one input only.
    let step = sim.input(Input::Cancel { commit: commit(2) });
    assert_eq!(step.reply, Some(Reply::Refused(Refusal::UnknownCommit)));
    sim.core.recall([out[1].clone()]);
    let step = sim.input(Input::Cancel { commit: commit(2) });
    assert_eq!(
        step.reply,
        Some(Reply::Refused(Refusal::AlreadyFinished(Outcome::Fail)))
    );
    assert!(step.records.is_empty());
}

#[test]
fn a_retry_of_a_job_out_of_memory_restores_it_on_record_then_queues_it() {
    let mut sim = windowed(2);
    let out = four_finished(&mut sim);
    sim.core.recall([out[1].clone()]);
    let step = sim.input(Input::Retry { commit: commit(2) });
    assert_eq!(kinds(&step)[..2], ["job_restored", "job_retried"]);
    assert_eq!(step.reply, Some(Reply::Done));
    // It was handed to the idle runner as attempt 2.
    assert_eq!(assigns(&step), [("r1".to_string(), jr(2, 2))]);
    assert_eq!(sim.core.state.results(), 3);
    assert_eq!(sim.core.state.outcome_counts(), [3, 0, 0, 0, 0]);
    let step = sim.result("r1", jr(2, 2), Outcome::Pass);
    assert_eq!(kinds(&step), ["result"]);
    assert_eq!(sim.core.state.outcome_counts(), [4, 0, 0, 0, 0]);
    // The window holds: the oldest finished in memory left again.
    assert_eq!(sim.core.state.jobs_in_memory(), 2);
    let again = sim.core.state.take_archived();
    assert_eq!(again.iter().map(|a| a.id.0).collect::<Vec<_>>(), [3]);
}

#[test]
fn a_late_result_for_a_job_out_of_memory_is_refused_as_stale() {
    let mut sim = windowed(1);
    four_finished(&mut sim);
    let step = sim.result("r1", jr(1, 1), Outcome::Pass);
    assert!(step.records.is_empty());
    match step.reply {
        Some(Reply::ResultAck {
            accepted: false,
            reason,
            ..
        }) => assert!(reason.contains("finished long ago"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// The idle pace of these tests: an idle runner may be silent for
/// `IDLE_MS + TIMEOUT_MS`.
const IDLE_MS: u64 = 15_000;

fn idle_paced() -> Sim {
    Sim::with(CoreConfig {
        heartbeat_timeout_ms: TIMEOUT_MS,
        idle_heartbeat_ms: IDLE_MS,
        ..CoreConfig::default()
    })
}

/// An idle runner beats at the dispatcher's idle pace: silent past the
/// busy timeout it is still idle, and it is judged lost only after one
/// idle interval more.
#[test]
fn an_idle_runner_is_judged_at_the_idle_pace() {
    let mut sim = idle_paced();
    sim.connect("a");
    sim.advance(TIMEOUT_MS + 1);
    sim.tick();
    assert_eq!(sim.core.runner_state("a"), RunnerState::Idle);
    sim.advance(IDLE_MS - 2);
    sim.tick();
    assert_eq!(sim.core.runner_state("a"), RunnerState::Idle, "not yet");
    sim.advance(1);
    sim.tick();
    assert_eq!(sim.core.runner_state("a"), RunnerState::Lost);
    // A lost idle runner is given no work; heard again, it is.
    let step = sim.commits(&[commit(1)]);
    assert!(assigns(&step).is_empty());
    let step = sim.heartbeat("a", None);
    assert_eq!(assigns(&step), [("a".to_string(), jr(1, 1))]);
}

/// A job given to a runner that was quiet at the idle pace gets a full
/// timeout from the assignment (not from the runner's last idle beat),
/// and no more: silent after it, the job is lost a timeout later, ahead
/// of the idle deadline armed before.
#[test]
fn an_assignment_starts_a_full_busy_timeout() {
    let mut sim = idle_paced();
    sim.connect("a");
    sim.advance(TIMEOUT_MS + 2_000);
    let step = sim.commits(&[commit(1)]);
    assert_eq!(assigns(&step), [("a".to_string(), jr(1, 1))]);
    sim.advance(TIMEOUT_MS - 1);
    assert!(
        sim.tick().records.is_empty(),
        "a full timeout from the assignment"
    );
    sim.advance(1);
    assert_eq!(kinds(&sim.tick()), ["heartbeat_lost"]);
}

/// A busy runner beating at the busy pace keeps its job past the idle
/// deadline it had before the assignment; once its job is done it is
/// judged at the idle pace again.
#[test]
fn a_runner_is_judged_by_whether_it_holds_a_job() {
    let mut sim = idle_paced();
    sim.connect("a");
    sim.advance(TIMEOUT_MS + 2_000);
    sim.commits(&[commit(1)]);
    for _ in 0..10 {
        sim.advance(TIMEOUT_MS / 2);
        sim.heartbeat("a", Some(jr(1, 1)));
        assert!(sim.tick().records.is_empty());
    }
    sim.result("a", jr(1, 1), Outcome::Pass);
    sim.advance(TIMEOUT_MS + 1);
    sim.tick();
    assert_eq!(sim.core.runner_state("a"), RunnerState::Idle);
    sim.advance(IDLE_MS);
    sim.tick();
    assert_eq!(sim.core.runner_state("a"), RunnerState::Lost);
}
