//! End-to-end tests: the four real programs, a real git repository, real
//! sockets and real `kill -9`s, checked against `../shared/CONTRACT.md`
//! through `ci-tools` and its `--json` output only.
//!
//! Each test owns its temp dir and ports; every wait is bounded (see
//! `common`). A failing test prints every process's command, stdout and
//! stderr.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Asserts `sha` has exactly one `result` event and returns it.
fn single_result<'a>(replay: &'a [Value], sha: &str) -> &'a Value {
    let results = events_for(replay, "result", sha);
    assert_eq!(
        results.len(),
        1,
        "commit {} should have exactly one result event\nreplay:\n{}",
        short(sha),
        pretty(replay)
    );
    results[0]
}

/// Asserts `sha` has exactly one `commit_seen` event (nothing counted twice).
fn single_commit_seen(replay: &[Value], sha: &str) {
    let seen = events_for(replay, "commit_seen", sha);
    assert_eq!(
        seen.len(),
        1,
        "commit {} should be seen exactly once\nreplay:\n{}",
        short(sha),
        pretty(replay)
    );
}

/// The positions in `replay` of the first event of `kind` for each of `shas`.
fn positions(replay: &[Value], kind: &str, shas: &[String]) -> Vec<usize> {
    shas.iter()
        .map(|sha| {
            replay
                .iter()
                .position(|e| e["type"] == kind && ev_commit(e) == Some(sha))
                .unwrap_or_else(|| {
                    panic!(
                        "no {kind} event for {}\nreplay:\n{}",
                        short(sha),
                        pretty(replay)
                    )
                })
        })
        .collect()
}

fn assert_increasing(what: &str, positions: &[usize], replay: &[Value]) {
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{what} are not in commit order (positions {positions:?})\nreplay:\n{}",
        pretty(replay)
    );
}

fn assert_no_panic(stderr: &[u8]) {
    let stderr = String::from_utf8_lossy(stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "a program panicked:\n{stderr}"
    );
}

#[test]
fn passing_commit_passes_and_failing_commit_fails() {
    let repo = TestRepo::new();
    let good = repo.copy_data("passing");
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr();
    let _runner = runner(addr, &repo, "r1");
    let _observer = observer(addr, &repo, "main");

    let results = wait_final(addr, &[&good], LONG);
    let r = result_for(&results, &good).unwrap();
    assert_eq!(r["outcome"], "pass", "{}", pretty(r));
    assert_eq!(r["exit_code"], 0, "{}", pretty(r));
    assert_eq!(r["branch"], "main", "{}", pretty(r));
    assert_eq!(r["runner"], "r1", "{}", pretty(r));
    assert_eq!(r["attempts"], 1, "{}", pretty(r));
    assert!(r["duration_ms"].is_u64(), "{}", pretty(r));

    let bad = repo.commit_failing();
    let results = wait_final(addr, &[&bad], LONG);
    let r = result_for(&results, &bad).unwrap();
    assert_eq!(r["outcome"], "fail", "{}", pretty(r));
    // What `python3 -m unittest` exits with when a test fails.
    assert_eq!(r["exit_code"], 1, "{}", pretty(r));
    assert_eq!(r["attempts"], 1, "{}", pretty(r));
    assert_eq!(outcome_of(&results, &good), Some("pass"));
}

/// The 500-Lines observer saw only the newest commit of each poll: 1 of 10
/// commits pushed together was tested.
#[test]
fn ten_commits_pushed_at_once_are_each_tested_once_in_order() {
    let repo = TestRepo::new();
    let first = repo.copy_data("passing");
    let history = repo.commit_passing(2);
    let tip = history.last().unwrap().clone();
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr();
    let _runner = runner(addr, &repo, "r1");
    // A 1 s poll: the ten commits below take milliseconds, so they land
    // between two polls.
    let _observer = observer_with(addr, &repo, "main", &["--interval", "1"]);

    // First look at a branch the dispatcher never saw: the tip only.
    wait_final(addr, &[&tip], LONG);

    let shas = repo.commit_passing(10);
    let results = wait_final(addr, &shas, LONG);
    for sha in &shas {
        let r = result_for(&results, sha).unwrap();
        assert_eq!(r["outcome"], "pass", "{}", pretty(r));
        assert_eq!(r["attempts"], 1, "{}", pretty(r));
    }
    for old in [&first, &history[0]] {
        assert!(
            result_for(&results, old).is_none(),
            "history before the first tip was reported: {}\n{}",
            short(old),
            pretty(&results)
        );
    }

    let replay = replay_json_online(addr);
    single_result(&replay, &tip);
    for sha in &shas {
        single_commit_seen(&replay, sha);
        single_result(&replay, sha);
        assert_eq!(
            events_for(&replay, "job_assigned", sha).len(),
            1,
            "{} assigned more than once\n{}",
            short(sha),
            pretty(&replay)
        );
    }
    let seen = positions(&replay, "commit_seen", &shas);
    assert_increasing("commit_seen events", &seen, &replay);
    let assigned = positions(&replay, "job_assigned", &shas);
    assert_increasing("job_assigned events", &assigned, &replay);
    // One runner: one job at a time, so results come in the same order.
    let finished = positions(&replay, "result", &shas);
    assert_increasing("result events", &finished, &replay);
}

/// The 500-Lines dispatcher lost 6 of 7 commits to a `kill -9`.
#[test]
fn kill9_dispatcher_midway_loses_nothing() {
    let repo = TestRepo::new();
    repo.copy_data("passing");
    repo.copy_data("slow");
    let first = repo.commit(&[("SLEEP_SECS", "0")], "fast first commit");

    let port = free_port();
    let data_dir = repo.dir("dispatcher");
    let mut dispatcher = Dispatcher::start_on(port, &data_dir, &["--heartbeat-timeout", "5"]);
    let addr = dispatcher.addr().to_owned();
    let _r1 = runner(&addr, &repo, "r1");
    let _r2 = runner(&addr, &repo, "r2");
    let _observer = observer(&addr, &repo, "main");
    wait_final(&addr, &[&first], LONG);

    // Six commits of about 2 s each for two runners: some run, some queue.
    let mut expected: Vec<(String, &str)> = Vec::new();
    let sha = repo.commit(&[("SLEEP_SECS", "2"), ("counter.txt", "1")], "slow 1");
    expected.push((sha, "pass"));
    let sha = repo.commit(&[("counter.txt", "2")], "slow 2");
    expected.push((sha, "pass"));
    expected.push((repo.commit_failing(), "fail"));
    expected.push((repo.commit_fixed(), "pass"));
    let sha = repo.commit(&[("counter.txt", "5")], "slow 5");
    expected.push((sha, "pass"));
    let sha = repo.commit(&[("counter.txt", "6")], "slow 6");
    expected.push((sha, "pass"));

    wait_for("a job running and another queued", LONG, || {
        let status = try_status_json(&addr)?;
        let running = status["running"].as_array().map_or(0, Vec::len);
        let queued = status["queued"].as_array().map_or(0, Vec::len);
        if running > 0 && queued > 0 {
            Ok(())
        } else {
            Err(pretty(&status))
        }
    });
    dispatcher.kill9();
    dispatcher.restart();

    let mut all: Vec<&str> = vec![&first];
    all.extend(expected.iter().map(|(sha, _)| sha.as_str()));
    let results = wait_final(&addr, &all, LONG);
    for (sha, outcome) in &expected {
        let r = result_for(&results, sha).unwrap();
        assert_eq!(r["outcome"], *outcome, "{}\n{}", short(sha), pretty(r));
    }

    let online = replay_json_online(&addr);
    for sha in &all {
        single_commit_seen(&online, sha);
        let result = single_result(&online, sha);
        let want = expected
            .iter()
            .find(|(s, _)| s == sha)
            .map_or("pass", |(_, o)| *o);
        assert_eq!(ev_outcome(result), Some(want), "{}", pretty(result));
    }

    assert_eq!(
        dispatcher.stop(),
        Some(0),
        "SIGTERM should stop the dispatcher with exit 0"
    );
    let offline = replay_json_offline(&data_dir);
    for log in [&online, &offline] {
        let seqs: Vec<u64> = log.iter().map(ev_seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seq not increasing: {seqs:?}"
        );
    }
    let by_seq: HashMap<u64, &Value> = offline.iter().map(|e| (ev_seq(e), e)).collect();
    for event in &online {
        let stored = by_seq.get(&ev_seq(event)).unwrap_or_else(|| {
            panic!(
                "online event missing from the log: {event}\noffline:\n{}",
                pretty(&offline)
            )
        });
        assert_eq!(
            (&stored["type"], ev_commit(stored)),
            (&event["type"], ev_commit(event)),
            "online and offline replay differ at seq {}",
            ev_seq(event)
        );
    }
}

#[test]
fn runner_killed_midjob_is_lost_and_another_runner_finishes_with_attempt_2() {
    let repo = TestRepo::new();
    repo.copy_data("passing");
    repo.copy_data("slow");
    let sha = repo.commit(&[("SLEEP_SECS", "2")], "slow commit");

    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &["--heartbeat-timeout", "2"]);
    let addr = dispatcher.addr();
    let mut runners = [runner(addr, &repo, "r1"), runner(addr, &repo, "r2")];
    wait_for("both runners registered", SHORT, || {
        let status = try_status_json(addr)?;
        match status["runners"].as_array() {
            Some(list) if list.len() == 2 => Ok(()),
            _ => Err(pretty(&status)),
        }
    });

    tools_expect(
        &["submit", "--dispatcher", addr, "--branch", "main", &sha],
        0,
    );
    let holder = wait_for("the job to be running", SHORT, || {
        let status = try_status_json(addr)?;
        status["running"]
            .as_array()
            .and_then(|running| running.first())
            .and_then(|job| job["runner"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| pretty(&status))
    });
    let other = if holder == "r1" { "r2" } else { "r1" };
    let index = runners
        .iter()
        .position(|r| r.label() == format!("runner-{holder}"))
        .unwrap_or_else(|| panic!("status names an unknown runner {holder:?}"));
    runners[index].kill9();

    let results = wait_final(addr, &[&sha], LONG);
    let r = result_for(&results, &sha).unwrap();
    assert_eq!(r["outcome"], "pass", "{}", pretty(r));
    assert_eq!(r["attempts"], 2, "{}", pretty(r));
    assert_eq!(r["runner"], other, "{}", pretty(r));

    let replay = replay_json_online(addr);
    let lost = replay
        .iter()
        .position(|e| e["type"] == "heartbeat_lost" && ev_runner(e) == Some(holder.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "no heartbeat_lost for {holder}\nreplay:\n{}",
                pretty(&replay)
            )
        });
    let assigned = events_for(&replay, "job_assigned", &sha);
    let attempts: Vec<(Option<&str>, Option<u64>)> = assigned
        .iter()
        .map(|e| (ev_runner(e), ev_attempt(e)))
        .collect();
    assert_eq!(
        attempts,
        vec![(Some(holder.as_str()), Some(1)), (Some(other), Some(2))],
        "replay:\n{}",
        pretty(&replay)
    );
    let second = replay
        .iter()
        .position(|e| {
            e["type"] == "job_assigned" && ev_commit(e) == Some(&sha) && ev_attempt(e) == Some(2)
        })
        .unwrap();
    assert!(lost < second, "heartbeat_lost must come before the retry");
    let result = single_result(&replay, &sha);
    assert_eq!(ev_runner(result), Some(other), "{}", pretty(result));
    assert_eq!(ev_attempt(result), Some(2), "{}", pretty(result));
    assert_eq!(ev_outcome(result), Some("pass"), "{}", pretty(result));
}

/// The 500-Lines dispatcher wrote a forged id like `../../x` to a file
/// outside its results folder.
#[test]
fn submit_refuses_bad_sha() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let addr = dispatcher.addr();
    let well_formed = "0123456789abcdef0123456789abcdef01234567";

    for bad in [
        vec!["../../x"],
        vec!["abc1234"],
        vec![well_formed, "../../x"],
    ] {
        let mut args = vec!["submit", "--dispatcher", addr];
        args.extend(&bad);
        let output = tools_expect(&args, 2);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let value = bad.last().unwrap();
        assert!(
            stderr.contains(value),
            "stderr should name {value:?}\n{}",
            show_tools(&args, &output)
        );
        assert_no_panic(&output.stderr);
    }

    let status = status_json(addr);
    assert_eq!(
        status["queued"],
        serde_json::json!([]),
        "{}",
        pretty(&status)
    );
    assert_eq!(
        status["running"],
        serde_json::json!([]),
        "{}",
        pretty(&status)
    );
    let results = results_json(addr);
    assert!(results.is_empty(), "{}", pretty(&results));
    let replay = replay_json_online(addr);
    assert!(
        events(&replay, "commit_seen").is_empty(),
        "{}",
        pretty(&replay)
    );
}

#[test]
fn submit_and_wait() {
    let repo = TestRepo::new();
    let good = repo.copy_data("passing");
    let bad = repo.commit_failing();
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr();
    let _runner = runner(addr, &repo, "r1");

    tools_expect(
        &["submit", "--dispatcher", addr, "--branch", "main", &good],
        0,
    );
    tools_expect(&["wait", "--dispatcher", addr, "--timeout", "60", &good], 0);

    tools_expect(&["submit", "--dispatcher", addr, &bad], 0);
    tools_expect(&["wait", "--dispatcher", addr, "--timeout", "60", &bad], 1);
    tools_expect(
        &["wait", "--dispatcher", addr, "--timeout", "60", &good, &bad],
        1,
    );

    let results = results_json(addr);
    assert_eq!(outcome_of(&results, &good), Some("pass"));
    assert_eq!(outcome_of(&results, &bad), Some("fail"));
}

/// The 500-Lines runner stayed busy forever on a bogus commit id.
#[test]
fn submit_unknown_commit_ends_in_error() {
    let repo = TestRepo::new();
    repo.copy_data("passing");
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr();
    let _runner = runner(addr, &repo, "r1");
    let missing = "deadbeef".repeat(5);

    tools_expect(&["submit", "--dispatcher", addr, &missing], 0);
    let args = ["wait", "--dispatcher", addr, "--timeout", "60", &missing];
    let output = tools(&args);
    assert_ne!(
        output.status.code(),
        Some(0),
        "{}",
        show_tools(&args, &output)
    );
    let results = results_json(addr);
    assert_eq!(
        outcome_of(&results, &missing),
        Some("error"),
        "{}",
        pretty(&results)
    );
}

#[test]
fn demo_exits_zero() {
    // Run from an empty directory: the demo's repository content is embedded.
    let cwd = tempfile::tempdir().unwrap();
    let args = ["demo"];
    let output = tools_in(Some(cwd.path()), &args, Duration::from_secs(180));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        show_tools(&args, &output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("pass") && stdout.contains("fail"),
        "the results table should show a pass and a fail\n{}",
        show_tools(&args, &output)
    );
    assert_no_panic(&output.stderr);
}

#[test]
fn dispatcher_refuses_second_instance_on_same_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut first = Dispatcher::start(&data_dir, &[]);

    let mut second = Dispatcher::spawn_proc("127.0.0.1:0", &data_dir, &[], 1);
    let status = second.wait_exit(SHORT);
    let stderr = second.stderr();
    // On failure, `Proc`'s `Drop` prints both dispatchers' output.
    assert_eq!(status.code(), Some(2), "second dispatcher's exit");
    let lower = stderr.to_lowercase();
    assert!(
        ["already", "lock", "in use", "another", p(&data_dir)]
            .iter()
            .any(|word| lower.contains(&word.to_lowercase())),
        "stderr should say the data dir is taken: {stderr}"
    );
    assert_no_panic(stderr.as_bytes());

    // The first one is untouched.
    assert!(first.proc.is_running(), "the first dispatcher died");
    results_json(first.addr());
}

/// The observer and a runner started before the dispatcher simply wait for
/// it (they never exit because it is away) and then do their work.
#[test]
fn observer_and_runner_started_before_the_dispatcher_wait_for_it() {
    let repo = TestRepo::new();
    let sha = repo.copy_data("passing");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut o = observer(&addr, &repo, "main");
    let mut r = runner(&addr, &repo, "early");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(o.is_running(), "the observer gave up: {}", o.report());
    assert!(r.is_running(), "the runner gave up: {}", r.report());
    let data = repo.dir("dispatcher");
    let d = Dispatcher::start_on(port, &data, &[]);
    let results = wait_final(d.addr(), &[&sha], LONG);
    assert_eq!(outcome_of(&results, &sha), Some("pass"));
    assert_eq!(result_for(&results, &sha).unwrap()["runner"], "early");
}

/// Two runners with one name must not both hold jobs: the newest connection
/// wins, and the older runner stops with a message naming the problem
/// instead of fighting for the name forever.
#[test]
fn a_second_runner_with_the_same_name_fences_the_first() {
    let repo = TestRepo::new();
    repo.copy_data("passing");
    let data = repo.dir("dispatcher");
    let d = Dispatcher::start(&data, &[]);
    let mut first = runner(d.addr(), &repo, "twin");
    wait_for("the first twin connected", SHORT, || {
        let s = try_status_json(d.addr())?;
        if s["runners"].as_array().map_or(0, Vec::len) == 1 {
            Ok(())
        } else {
            Err(pretty(&s))
        }
    });
    let other_dir = repo.dir("runner-twin-2");
    let mut second = runner_with(d.addr(), &repo, "twin", &["--work-dir", p(&other_dir)]);
    let status = first.wait_exit(SHORT);
    assert_eq!(exit_code(&status), Some(2), "{}", first.report());
    let err = first.stderr();
    assert!(err.contains("took over runner twin"), "{err}");
    assert!(err.contains("--name"), "{err}");
    // The newest one serves.
    let sha = repo.commit_passing(1).remove(0);
    tools_expect(&["submit", "--dispatcher", d.addr(), &sha], 0);
    let results = wait_final(d.addr(), &[&sha], LONG);
    assert_eq!(outcome_of(&results, &sha), Some("pass"));
    assert!(second.is_running(), "{}", second.report());
}

/// The output of a commit's final attempt is stored outside the event log
/// and printed by `ci-tools output`.
#[test]
fn the_test_output_is_kept_and_shown() {
    let repo = TestRepo::new();
    let sha = repo.copy_data("passing");
    let data = repo.dir("dispatcher");
    let d = Dispatcher::start(&data, &[]);
    let _r = runner(d.addr(), &repo, "r1");
    tools_expect(&["submit", "--dispatcher", d.addr(), &sha], 0);
    let results = wait_final(d.addr(), &[&sha], LONG);
    let r = result_for(&results, &sha).unwrap();
    assert!(r["output_bytes"].as_u64().unwrap() > 0, "{}", pretty(r));
    assert_eq!(r["tests"]["total"], 3, "{}", pretty(r));
    let out = tools_expect(&["output", "--dispatcher", d.addr(), &sha], 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Ran 3 tests"), "{text}");
    assert!(text.contains("OK"), "{text}");
}
