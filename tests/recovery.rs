//! Recovery guarantees on the real binaries and the real log: durability
//! before acknowledgement (traced syscalls), damaged and old-format logs,
//! snapshots, and graceful stops.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use ci::core::{CommitId, Event, JobId, JobReport, LostReason, Outcome, Record, TestCounts};
use ci::store::{self, EventLog, Rebuild, SledLog, SnapshotStore};
use common::*;

fn commit(n: u8) -> CommitId {
    CommitId::from_bytes(&[n; 20]).unwrap()
}

/// The events of the first log format's fixture, in order.
fn fixture_events() -> Vec<Event> {
    vec![
        Event::DispatcherStarted { pid: 42 },
        Event::CommitSeen {
            job: JobId(1),
            commit: commit(1),
            branch: Some("main".into()),
        },
        Event::CommitSeen {
            job: JobId(2),
            commit: commit(2),
            branch: None,
        },
        Event::BranchMoved {
            branch: "main".into(),
            tip: commit(2),
        },
        Event::JobAssigned {
            job: JobId(1),
            commit: commit(1),
            runner: "r1".into(),
            attempt: 1,
        },
        Event::HeartbeatLost {
            runner: "r1".into(),
            job: JobId(1),
            attempt: 1,
            reason: LostReason::HeartbeatTimeout,
        },
        Event::JobAssigned {
            job: JobId(1),
            commit: commit(1),
            runner: "r2".into(),
            attempt: 2,
        },
        Event::Result {
            job: JobId(1),
            commit: commit(1),
            runner: Some("r2".into()),
            attempt: 2,
            report: JobReport {
                outcome: Outcome::Fail,
                exit_code: Some(1),
                duration_ms: 321,
                tests: Some(TestCounts {
                    total: 5,
                    passed: 4,
                    failed: 1,
                    errors: 0,
                    skipped: 0,
                }),
                message: "Ran 5 tests: FAILED (failures=1)".into(),
            },
            output_bytes: 10,
        },
    ]
}

/// Loads a checked-in log (`seq value-hex` per line) into a fresh log and
/// checks it replays to the fixture's events and state. `write` produces
/// the value for one chunk of events when `CI_WRITE_FIXTURE=1` is set: only
/// ever used to add the fixture of a new format; an old one is never edited.
fn check_fixture(name: &str, write: impl Fn(u64, &[Event]) -> Vec<u8>, per_value: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("CI_WRITE_FIXTURE").is_some() {
        let mut text = format!("# seq value-hex; {name}\n");
        let events = fixture_events();
        for (i, chunk) in events.chunks(per_value).enumerate() {
            let seq = (i * per_value) as u64 + 1;
            let v = write(1_764_000_000_000 + seq, chunk);
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!("{seq} {hex}\n"));
        }
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut log = SledLog::open(dir.path()).unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (seq, hex) = line.split_once(' ').unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        log.put_raw(seq.parse().unwrap(), &bytes).unwrap();
    }
    let records = log.read(1, 100).unwrap();
    let events: Vec<Event> = records.iter().map(|r| r.event.clone()).collect();
    assert_eq!(events, fixture_events(), "{name}");
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "{name}"
    );
    let state = store::load_state(&log, Rebuild::FromScratch).unwrap();
    assert_eq!(state.jobs_seen(), 2);
    assert_eq!(state.results(), 1);
    assert_eq!(state.job(JobId(1)).unwrap().attempts, 2);
    assert_eq!(state.branch_tips().get("main"), Some(&commit(2)));
}

/// A log written by the first format (one event per key) replays forever.
#[test]
fn a_log_in_the_first_format_still_replays() {
    check_fixture(
        "log-format-1.txt",
        |at, evs| ci::store::format::encode_value(at, &evs[0]).unwrap(),
        1,
    );
}

/// A log written by the second format (one appended batch per key) too.
#[test]
fn a_log_in_the_second_format_still_replays() {
    check_fixture(
        "log-format-2.txt",
        |at, evs| ci::store::format::encode_batch(at, evs).unwrap(),
        3,
    );
}

#[test]
fn a_damaged_record_stops_startup_naming_its_sequence_number() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    {
        let mut log = SledLog::open(&data).unwrap();
        log.append(&Record::run(1, 1, &fixture_events()[..3]))
            .unwrap();
        log.put_raw(4, &[1, 0xde, 0xad, 0xbe, 0xef]).unwrap();
        log.flush().unwrap();
    }
    let mut d = Dispatcher::spawn_proc("127.0.0.1:0", &data, &[], 0);
    let status = d.wait_exit(SHORT);
    assert_eq!(exit_code(&status), Some(2), "{}", d.report());
    let err = d.stderr();
    assert!(
        err.contains("record 4"),
        "stderr should name record 4: {err}"
    );
    assert!(err.contains("nothing was skipped"), "{err}");
    let errors = err.lines().filter(|l| l.contains("error")).count();
    assert_eq!(errors, 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // And a record from a newer format says so.
    {
        let mut log = SledLog::open(&data).unwrap();
        log.put_raw(4, &[9, 0]).unwrap();
        log.flush().unwrap();
    }
    let mut d = Dispatcher::spawn_proc("127.0.0.1:0", &data, &[], 1);
    assert_eq!(exit_code(&d.wait_exit(SHORT)), Some(2));
    assert!(
        d.stderr().contains("newer than this build"),
        "{}",
        d.stderr()
    );
}

/// Snapshots are taken every N events; a restart loads the newest one and
/// replays only the tail, and `replay --verify` finds it equal to a full
/// replay.
#[test]
fn snapshots_restart_from_the_tail_and_verify_equal() {
    let repo = TestRepo::new();
    let shas = repo.commit_passing(12);
    let data = repo.dir("dispatcher");
    let mut d = Dispatcher::start(&data, &["--snapshot-every", "5"]);
    for chunk in shas.chunks(3) {
        let mut args = vec!["submit", "--dispatcher", d.addr(), "--branch", "main"];
        args.extend(chunk.iter().map(String::as_str));
        tools_expect(&args, 0);
    }
    assert_eq!(d.stop(), Some(0));
    {
        let log = SledLog::open(&data).unwrap();
        let newest = *log
            .snapshot_seqs()
            .unwrap()
            .first()
            .expect("a snapshot was stored");
        let snap = log.load_snapshot(newest).unwrap().expect("it loads");
        assert!(snap.last_seq() >= 5, "snapshot at {}", snap.last_seq());
        let full = store::load_state(&log, Rebuild::FromScratch).unwrap();
        assert_eq!(
            store::load_state(&log, Rebuild::FromSnapshot).unwrap(),
            full
        );
        assert_eq!(full.jobs_seen(), 12);
    }
    let out = tools_expect(&["replay", "--verify", "--data-dir", p(&data)], 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok:"), "{text}");
    // A restart on top of the snapshot serves the same history.
    let mut d2 = Dispatcher::start(&data, &["--snapshot-every", "5"]);
    let results = results_json(d2.addr());
    assert_eq!(results.len(), 12);
    assert_eq!(d2.stop(), Some(0));
}

/// Every event is on disk (fdatasync, not only in the page cache) before the
/// acknowledgement that depends on it is written to the socket.
#[test]
fn an_event_is_fsynced_before_it_is_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let trace = root.path().join("trace");
    let mut strace = Proc::spawn_path(
        Path::new("/usr/bin/strace"),
        &[
            "-f",
            "-ttt",
            "-s",
            "1000000",
            "-e",
            "trace=pwrite64,fsync,fdatasync,writev,write",
            "-o",
            p(&trace),
            &bin("ci-dispatcher").display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            p(&data),
        ],
        root.path(),
        "strace-dispatcher",
    );
    let addr = wait_for("listening line", SHORT, || {
        strace
            .stdout()
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("listening on "))
            .map(str::to_owned)
            .ok_or_else(|| strace.stderr())
    });
    // Commit ids whose bytes are capital letters, so strace prints them
    // as they are: one alone (the dispatcher flushes on its own thread),
    // then 24 at once over 24 connections (the group commit is pipelined
    // through the flusher thread).
    let letters = |i: usize| -> String {
        (0..20u8)
            .map(|k| (b'A' + (i as u8 + k) % 26) as char)
            .collect()
    };
    let hex = |s: &str| -> String { s.bytes().map(|b| format!("{b:02x}")).collect() };
    tools_expect(&["submit", "--dispatcher", &addr, &hex(&letters(0))], 0);
    let together: Vec<String> = (1..=24).map(|i| hex(&letters(i))).collect();
    submit_concurrently(&addr, &together);

    // Stop the traced dispatcher (strace's child) so the trace is complete.
    let pid = strace.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let child: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    unsafe { libc::kill(child, libc::SIGTERM) };
    strace.wait_exit(SHORT);
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for i in 0..=24 {
        // The record and the acknowledgement both carry the commit's bytes.
        let marker = letters(i);
        let ack = lines
            .iter()
            .position(|l| (l.contains("writev(") || l.contains("write(")) && l.contains(&marker))
            .unwrap_or_else(|| panic!("no acknowledgement of commit {i} in the trace:\n{text}"));
        // Between the record's first write and the ack there is a
        // completed data sync. The first: sled rewrites a whole tree node
        // when it consolidates it, so a later append may write the
        // record's bytes again (a copy of data already durable) before
        // this ack goes out.
        let record_write = lines[..ack]
            .iter()
            .position(|l| l.contains("pwrite64(") && l.contains(&marker))
            .unwrap_or_else(|| panic!("commit {i} was not written before its ack:\n{text}"));
        let synced = lines[record_write..ack].iter().any(|l| {
            (l.contains("fdatasync(")
                || l.contains("fsync(")
                || l.contains("fdatasync resumed")
                || l.contains("fsync resumed"))
                && l.trim_end().ends_with("= 0")
        });
        assert!(
            synced,
            "no completed fsync/fdatasync between the record of commit {i} and its ack:\n{}",
            lines[record_write..=ack].join("\n")
        );
    }
}

/// Submits each commit over its own connection, all released at once.
fn submit_concurrently(addr: &str, shas: &[String]) {
    use ci::client::{Client, Identity};
    use ci::proto::{ClientMsg, Role, ServerMsg};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..shas.len() {
            let id = Identity {
                role: Role::Tool,
                name: format!("durability-{i}"),
                token: None,
                serves: ci::proto::Serves::Default,
            };
            clients.push(Client::connect(addr, &id, None, None).await.unwrap());
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(shas.len()));
        let tasks: Vec<_> = clients
            .into_iter()
            .zip(shas)
            .map(|(mut c, sha)| {
                let start = start.clone();
                let commit = CommitId::parse(sha).unwrap();
                tokio::spawn(async move {
                    start.wait().await;
                    let msg = ClientMsg::Commits {
                        infos: Vec::new(),
                        repository: None,
                        branch: None,
                        commits: vec![commit],
                        tip: None,
                    };
                    match c.request(&msg).await.unwrap() {
                        ServerMsg::CommitsAck { .. } => {}
                        other => panic!("unexpected answer {other:?}"),
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// SIGTERM to a runner kills its test and hands the job back at once (no
/// waiting for the heartbeat timeout, not counted as a lost attempt).
#[test]
fn sigterm_to_a_runner_hands_its_job_back() {
    let repo = TestRepo::new();
    repo.copy_data("slow");
    let sha = repo.commit(&[("SLEEP_SECS", "30")], "a slow test");
    let data = repo.dir("dispatcher");
    let d = Dispatcher::start(&data, &["--heartbeat-timeout", "60"]);
    let mut r1 = runner(d.addr(), &repo, "r1");
    tools_expect(&["submit", "--dispatcher", d.addr(), &sha], 0);
    wait_results(d.addr(), SHORT, "running on r1", |rs| {
        outcome_of(rs, &sha) == Some("running")
    });
    let t = Instant::now();
    r1.sigterm();
    let status = r1.wait_exit(SHORT);
    assert_eq!(exit_code(&status), Some(0), "{}", r1.report());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "runner took {:?} to stop",
        t.elapsed()
    );
    let replay = replay_json_online(d.addr());
    let lost = events(&replay, "heartbeat_lost");
    assert_eq!(lost.len(), 1, "{}", pretty(&replay));
    assert_eq!(lost[0]["reason"], "handed_back");
    let results = results_json(d.addr());
    assert_eq!(
        outcome_of(&results, &sha),
        Some("pending"),
        "{}",
        pretty(&results)
    );
    // No test process survives its runner: none has its working directory
    // in the runner's work dir.
    let work_dir = repo.dir("runner-r1");
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok())
        .filter(|cwd| cwd.starts_with(&work_dir))
        .map(|cwd| cwd.display().to_string())
        .collect();
    assert!(
        leftovers.is_empty(),
        "test processes survived: {leftovers:?}"
    );
}

/// SIGTERM to the observer stops it at once; commits pushed while it is
/// down are reported by the next observer (the dispatcher holds the tips).
#[test]
fn sigterm_to_the_observer_is_immediate_and_loses_nothing() {
    let repo = TestRepo::new();
    let first = repo.copy_data("passing");
    let data = repo.dir("dispatcher");
    let d = Dispatcher::start(&data, &[]);
    let mut o = observer_with(d.addr(), &repo, "main", &["--interval", "30"]);
    wait_results(d.addr(), SHORT, "first commit seen", |rs| {
        result_for(rs, &first).is_some()
    });
    let t = Instant::now();
    o.sigterm();
    assert_eq!(exit_code(&o.wait_exit(SHORT)), Some(0), "{}", o.report());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "observer took {:?}",
        t.elapsed()
    );
    let later = repo.commit_passing(3);
    let _o2 = observer(d.addr(), &repo, "main");
    wait_results(d.addr(), SHORT, "commits pushed while down", |rs| {
        later.iter().all(|s| result_for(rs, s).is_some())
    });
    let replay = replay_json_online(d.addr());
    assert_eq!(
        events(&replay, "commit_seen").len(),
        4,
        "{}",
        pretty(&replay)
    );
}
