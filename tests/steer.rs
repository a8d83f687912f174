//! Steering on the real binaries: `ci-tools logs [--follow]`, `cancel`,
//! `retry`, short commit ids, `results` filters and `wait`, against a real
//! dispatcher and runner and git repositories made by `common`.
//!
//! The tests' Python tests are gated by files in the test's temp dir (a
//! `flags/` directory outside the checkout): a test prints, writes
//! `started`, then waits for `go`. So "while the job runs" is a state the
//! test controls, never a race against a sleep. Every wait is bounded and
//! every process started is killed (with its group) when the test ends.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The first line of every attempt's output for the default command.
const DEFAULT_COMMAND_LINE: &str = "$ python3 -m unittest discover -s tests\n";

/// A unittest module whose one test prints `first line`, writes
/// `FLAGS/started`, prints `tick` every 0.1 s (when `ticks`) until
/// `FLAGS/go` exists, then prints `second line` and passes.
fn gated_test(flags: &Path, ticks: bool) -> String {
    format!(
        r#"import os, time, unittest

FLAGS = {flags:?}


class TestGated(unittest.TestCase):
    def test_gated(self):
        print("first line", flush=True)
        open(os.path.join(FLAGS, "started"), "w").close()
        deadline = time.time() + 120
        n = 0
        while not os.path.exists(os.path.join(FLAGS, "go")):
            self.assertLess(time.time(), deadline, "never told to go")
            if {ticks}:
                n += 1
                print("tick", n, flush=True)
            time.sleep(0.1)
        print("second line", flush=True)
"#,
        flags = flags.display().to_string(),
        ticks = if ticks { "True" } else { "False" },
    )
}

/// A unittest module whose test starts `sleep 300` as a child, writes
/// `FLAGS/pids` ("PYTHON_PID CHILD_PID"), prints `hanging` and sleeps.
fn hanging_test(flags: &Path) -> String {
    format!(
        r#"import os, subprocess, time, unittest

FLAGS = {flags:?}


class TestHang(unittest.TestCase):
    def test_hang(self):
        child = subprocess.Popen(["sleep", "300"])
        tmp = os.path.join(FLAGS, "pids.tmp")
        with open(tmp, "w") as f:
            f.write("%d %d\n" % (os.getpid(), child.pid))
        os.rename(tmp, os.path.join(FLAGS, "pids"))
        print("hanging", flush=True)
        time.sleep(300)
"#,
        flags = flags.display().to_string(),
    )
}

/// A unittest module that fails the first time it runs and passes after:
/// its memory is `FLAGS/flaky-runs`, outside the checkout.
fn flaky_test(flags: &Path) -> String {
    format!(
        r#"import os, unittest

STATE = os.path.join({flags:?}, "flaky-runs")


class TestFlaky(unittest.TestCase):
    def test_flaky(self):
        runs = int(open(STATE).read()) if os.path.exists(STATE) else 0
        with open(STATE, "w") as f:
            f.write(str(runs + 1))
        # One write, newline included: under PYTHONUNBUFFERED print("run",
        # n) writes each piece apart, and unittest's "." on stderr once
        # landed between.
        print(f"run {{runs + 1}}\n", end="", flush=True)
        self.assertGreater(runs, 0, "fails on its first run")
"#,
        flags = flags.display().to_string(),
    )
}

fn passing_test(name: &str) -> String {
    format!(
        "import unittest\n\n\nclass Test{name}(unittest.TestCase):\n    def test_ok(self):\n        self.assertTrue(True)\n"
    )
}

fn failing_test(name: &str) -> String {
    format!(
        "import unittest\n\n\nclass Test{name}(unittest.TestCase):\n    def test_broken(self):\n        self.assertEqual(1, 2)\n"
    )
}

/// The test's `flags/` directory (outside every checkout).
fn flags_dir(repo: &TestRepo) -> PathBuf {
    repo.dir("flags")
}

/// Waits until `dir/name` exists.
fn wait_file(dir: &Path, name: &str, timeout: Duration) {
    let path = dir.join(name);
    wait_for(&format!("{} to exist", path.display()), timeout, || {
        if path.exists() {
            Ok(())
        } else {
            Err("missing".into())
        }
    });
}

fn touch(dir: &Path, name: &str) {
    fs::write(dir.join(name), b"").expect("write flag file");
}

/// `submit --dispatcher ADDR --branch BRANCH SHA...`, which must succeed.
fn submit(addr: &str, branch: &str, shas: &[&str]) {
    let mut args = vec!["submit", "--dispatcher", addr, "--branch", branch];
    args.extend_from_slice(shas);
    tools_expect(&args, 0);
}

/// `ci-tools ARGS` run in the background, its output in the test's logs.
fn tools_bg(repo: &TestRepo, args: &[&str], label: &str) -> Proc {
    Proc::spawn("ci-tools", args, repo.root(), label)
}

/// The one `results --json` element for `sha` right now.
fn result(addr: &str, sha: &str) -> Value {
    let results = results_json(addr);
    result_for(&results, sha)
        .unwrap_or_else(|| panic!("no result for {}\n{}", short(sha), pretty(&results)))
        .clone()
}

/// Waits until `sha`'s outcome is `outcome`; returns its result.
fn wait_outcome(addr: &str, sha: &str, outcome: &str, timeout: Duration) -> Value {
    let what = format!("{} to have outcome {outcome}", short(sha));
    wait_results(addr, timeout, &what, |r| {
        outcome_of(r, sha) == Some(outcome)
    });
    result(addr, sha)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `ci-tools ARGS`, which must fail with exit 2 and one line on
/// stderr that holds each of `needles`.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let output = tools_expect(args, 2);
    let stderr = stderr_of(&output);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr should mention {needle:?}\n{}",
            show_tools(args, &output)
        );
    }
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr\n{}",
        show_tools(args, &output)
    );
    assert!(
        !stderr.contains("panicked"),
        "{}",
        show_tools(args, &output)
    );
    stderr
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs
/// nothing any more).
fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

/// Waits until `proc` exits; returns its exit code.
fn exit_of(proc: &mut Proc, timeout: Duration) -> Option<i32> {
    exit_code(&proc.wait_exit(timeout))
}

#[test]
fn logs_follow_waits_for_a_queued_job_prints_it_live_and_ends_with_the_outcome() {
    let repo = TestRepo::new();
    let flags = flags_dir(&repo);
    let sha = repo.commit(
        &[("tests/test_gated.py", &gated_test(&flags, false))],
        "a gated test",
    );
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr().to_owned();
    submit(&addr, "main", &[&sha]);

    // Queued (no runner yet): --follow waits, printing nothing.
    let mut follow = tools_bg(
        &repo,
        &["logs", "--follow", "--dispatcher", &addr, &sha[..7]],
        "logs-follow",
    );
    thread::sleep(Duration::from_millis(800));
    assert!(follow.is_running(), "logs --follow returned while queued");
    assert_eq!(follow.stdout(), "", "nothing printed while queued");
    // Without --follow, a queued commit: nothing to print, a note, exit 0.
    let now = tools_expect(&["logs", "--dispatcher", &addr, &sha], 0);
    assert!(now.stdout.is_empty());
    assert!(stderr_of(&now).contains("is queued"), "{}", stderr_of(&now));

    let _runner = runner(&addr, &repo, "r1");
    wait_file(&flags, "started", LONG);
    // The job is running (held at the gate): its first lines are out.
    let live = wait_for("the first line in logs --follow", SHORT, || {
        let out = follow.stdout();
        if out.contains("first line\n") {
            Ok(out)
        } else {
            Err(out)
        }
    });
    assert!(
        live.starts_with(DEFAULT_COMMAND_LINE),
        "the output starts with the command line:\n{live}"
    );
    assert!(!live.contains("second line"));
    assert!(follow.is_running(), "logs --follow ended before the job");
    assert_eq!(result(&addr, &sha)["outcome"], "running");

    touch(&flags, "go");
    assert_eq!(
        exit_of(&mut follow, LONG),
        Some(0),
        "exit 0: the job passed"
    );
    let followed = follow.stdout();
    assert!(followed.contains("second line\n"), "{followed}");
    assert!(
        followed.contains("\nOK\n"),
        "unittest's summary: {followed}"
    );

    // The same bytes as the stored output, and as many as results says.
    let stored = tools_expect(&["logs", "--dispatcher", &addr, &sha], 0);
    assert_eq!(followed.as_bytes(), &stored.stdout[..]);
    let output = tools_expect(&["output", "--dispatcher", &addr, &sha], 0);
    assert_eq!(output.stdout, stored.stdout);
    let r = result(&addr, &sha);
    assert_eq!(r["outcome"], "pass");
    assert_eq!(r["output_bytes"].as_u64(), Some(stored.stdout.len() as u64));

    // A finished commit: --follow prints it all and returns at once.
    let again = tools_expect(&["logs", "--follow", "--dispatcher", &addr, &sha], 0);
    assert_eq!(again.stdout, stored.stdout);
}

#[test]
fn logs_follow_exits_1_when_the_job_did_not_pass() {
    let repo = TestRepo::new();
    let sha = repo.commit(
        &[("tests/test_broken.py", &failing_test("Broken"))],
        "a failing test",
    );
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr().to_owned();
    submit(&addr, "main", &[&sha]);
    let mut follow = tools_bg(
        &repo,
        &["logs", "-f", "--dispatcher", &addr, &sha],
        "logs-follow",
    );
    let _runner = runner(&addr, &repo, "r1");
    assert_eq!(
        exit_of(&mut follow, LONG),
        Some(1),
        "exit 1: the job failed"
    );
    let out = follow.stdout();
    assert!(out.starts_with(DEFAULT_COMMAND_LINE), "{out}");
    assert!(out.contains("FAILED (failures=1)"), "{out}");
    // Without --follow, printing a failed job's output is a success.
    let stored = tools_expect(&["logs", "--dispatcher", &addr, &sha], 0);
    assert_eq!(out.as_bytes(), &stored.stdout[..]);
    assert_eq!(result(&addr, &sha)["outcome"], "fail");
}

#[test]
fn cancel_kills_the_running_tests_process_group_dequeues_a_queued_one_and_refuses_a_finished_one() {
    let repo = TestRepo::new();
    let flags = flags_dir(&repo);
    let hanging = repo.commit(
        &[("tests/test_hang.py", &hanging_test(&flags))],
        "a test that hangs",
    );
    let queued = repo.commit(
        &[("tests/test_hang.py", &passing_test("NoLongerHangs"))],
        "behind it",
    );
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr().to_owned();
    submit(&addr, "main", &[&hanging]);
    let _runner = runner(&addr, &repo, "r1");
    wait_file(&flags, "pids", LONG);
    submit(&addr, "main", &[&queued]);
    let pids: Vec<i32> = fs::read_to_string(flags.join("pids"))
        .expect("pids")
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| !process_gone(p)), "both alive first");
    assert_eq!(result(&addr, &hanging)["outcome"], "running");
    assert_eq!(result(&addr, &queued)["outcome"], "pending");
    let mut follow = tools_bg(
        &repo,
        &["logs", "--follow", "--dispatcher", &addr, &hanging],
        "logs-follow",
    );

    // The queued one first (the one runner is busy): it never runs.
    let out = tools_expect(&["cancel", "--dispatcher", &addr, &queued[..8]], 0);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains(short(&queued)), "{said}");
    assert_eq!(result(&addr, &queued)["outcome"], "cancelled");

    // Then the running one: the test and its child die with their group.
    let started = Instant::now();
    tools_expect(&["cancel", "--dispatcher", &addr, &hanging[..7]], 0);
    wait_for("the test and its child to be killed", SHORT, || {
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| !process_gone(p)).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {alive:?}"))
        }
    });
    eprintln!("killed {:?} after {:?}", pids, started.elapsed());
    let r = wait_outcome(&addr, &hanging, "cancelled", SHORT);
    assert_eq!(r["attempts"], 1);
    // A follower sees the job end; it did not pass.
    assert_eq!(exit_of(&mut follow, SHORT), Some(1));
    assert!(follow.stdout().contains("hanging\n"), "{}", follow.stdout());

    // Both in the log, and the runner is free again.
    let replay = replay_json_online(&addr);
    assert_eq!(events_for(&replay, "job_cancelled", &hanging).len(), 1);
    assert_eq!(events_for(&replay, "job_cancelled", &queued).len(), 1);
    assert!(events_for(&replay, "job_assigned", &queued).is_empty());
    assert!(
        events_for(&replay, "result", &hanging).is_empty(),
        "no result after a cancel: {}",
        pretty(&replay)
    );
    let text = replay_text(&addr);
    assert!(text.contains("cancel"), "replay's table shows it:\n{text}");
    wait_for("the runner to be idle", SHORT, || {
        let s = try_status_json(&addr)?;
        if s["runners"][0]["state"] == "idle" {
            Ok(())
        } else {
            Err(pretty(&s))
        }
    });

    // A finished job cannot be cancelled: a clear refusal, exit 2.
    let args = ["cancel", "--dispatcher", &addr, &hanging];
    refused(&args, &["already finished", "cancelled", short(&hanging)]);
    assert_eq!(result(&addr, &hanging)["outcome"], "cancelled");
}

/// `replay` as a person reads it.
fn replay_text(addr: &str) -> String {
    let out = tools_expect(&["replay", "--dispatcher", addr], 0);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn retry_runs_a_finished_commit_again_so_a_flaky_test_ends_pass_and_refuses_a_running_one() {
    let repo = TestRepo::new();
    let flags = flags_dir(&repo);
    let flaky = repo.commit(&[("tests/test_flaky.py", &flaky_test(&flags))], "flaky");
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr().to_owned();
    submit(&addr, "main", &[&flaky]);
    let _runner = runner(&addr, &repo, "r1");
    let first = wait_outcome(&addr, &flaky, "fail", LONG);
    assert_eq!(first["attempts"], 1);

    let out = tools_expect(&["retry", "--dispatcher", &addr, &flaky[..9]], 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(short(&flaky)),
        "{}",
        show_tools(&["retry"], &out)
    );
    let waited = tools_expect(&["wait", "--dispatcher", &addr, "--json", &flaky[..7]], 0);
    let waited: Vec<Value> = serde_json::from_slice(&waited.stdout).expect("wait --json");
    assert_eq!(waited[0]["outcome"], "pass");
    let second = result(&addr, &flaky);
    assert_eq!(second["outcome"], "pass");
    assert_eq!(second["attempts"], 2, "attempts grows by one");
    // The logs are the new attempt's.
    let logs = tools_expect(&["logs", "--dispatcher", &addr, &flaky], 0);
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(logs.starts_with(DEFAULT_COMMAND_LINE), "{logs}");
    assert!(
        logs.contains("run 2\n") && !logs.contains("run 1\n"),
        "{logs}"
    );

    let replay = replay_json_online(&addr);
    assert_eq!(events_for(&replay, "job_retried", &flaky).len(), 1);
    let outcomes: Vec<&str> = events_for(&replay, "result", &flaky)
        .into_iter()
        .filter_map(ev_outcome)
        .collect();
    assert_eq!(outcomes, ["fail", "pass"], "{}", pretty(&replay));

    // A running commit cannot be retried: a clear refusal, exit 2.
    let gated = repo.commit(
        &[("tests/test_gated.py", &gated_test(&flags, false))],
        "gated",
    );
    submit(&addr, "main", &[&gated]);
    wait_file(&flags, "started", LONG);
    let args = ["retry", "--dispatcher", &addr, &gated];
    refused(&args, &["still queued or running", short(&gated)]);
    touch(&flags, "go");
    let r = wait_outcome(&addr, &gated, "pass", LONG);
    assert_eq!(r["attempts"], 1, "the refused retry changed nothing");
}

/// Two commits on their own branches whose ids share their first 7 hex
/// digits (a birthday search over commit messages: about 2^14 hashes),
/// returned with the length of their common prefix.
fn colliding_commits(repo: &TestRepo) -> (String, String, usize) {
    let git = repo.git();
    let parent = git
        .find_reference("refs/heads/main")
        .and_then(|r| r.peel_to_commit())
        .expect("main has a commit");
    let tree = parent.tree().expect("tree");
    let sig = git2::Signature::new("CI Test", "ci-test@example.invalid", &git2::Time::new(0, 0))
        .expect("signature");
    let mut seen: HashMap<String, String> = HashMap::new();
    for n in 0u64.. {
        let message = format!("twin {n}");
        let buf = git
            .commit_create_buffer(&sig, &sig, &message, &tree, &[&parent])
            .expect("commit buffer");
        let oid = git2::Oid::hash_object(git2::ObjectType::Commit, &buf).expect("hash");
        let hex = oid.to_string();
        if let Some(other) = seen.get(&hex[..7]) {
            let twin = other.clone();
            let mut ids = Vec::new();
            for message in [twin, message] {
                let buf = git
                    .commit_create_buffer(&sig, &sig, &message, &tree, &[&parent])
                    .expect("commit buffer");
                let odb = git.odb().expect("odb");
                let id = odb
                    .write(git2::ObjectType::Commit, &buf)
                    .expect("write commit");
                ids.push(id.to_string());
            }
            for (i, id) in ids.iter().enumerate() {
                let commit = git
                    .find_commit(git2::Oid::from_str(id).expect("oid"))
                    .expect("find commit");
                git.branch(&format!("twin-{i}"), &commit, true)
                    .expect("branch");
            }
            let common = ids[0]
                .bytes()
                .zip(ids[1].bytes())
                .take_while(|(a, b)| a == b)
                .count();
            return (ids[0].clone(), ids[1].clone(), common);
        }
        seen.insert(hex[..7].to_string(), message);
        assert!(n < 2_000_000, "no 7-digit collision found");
    }
    unreachable!()
}

#[test]
fn short_ids_are_accepted_when_unique_and_refused_clearly_when_ambiguous_unknown_or_too_short() {
    let repo = TestRepo::new();
    let base = repo.commit(&[("tests/test_ok.py", &passing_test("Ok"))], "base");
    let (a, b, common) = colliding_commits(&repo);
    assert!((7..40).contains(&common), "{a} {b}");
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr().to_owned();
    submit(&addr, "main", &[&base]);
    submit(&addr, "twin-0", &[&a]);
    submit(&addr, "twin-1", &[&b]);
    let _runner = runner(&addr, &repo, "r1");
    wait_final(&addr, &[&base, &a, &b], LONG);

    // Unique prefixes of 7 digits (and more) work everywhere.
    let p7 = &base[..7];
    let r = tools_expect(
        &["results", "--dispatcher", &addr, "--commit", p7, "--json"],
        0,
    );
    let r: Vec<Value> = serde_json::from_slice(&r.stdout).expect("results --json");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["commit"], base.as_str());
    let upper = base[..10].to_ascii_uppercase();
    let r = tools_expect(
        &[
            "results",
            "--dispatcher",
            &addr,
            "--commit",
            &upper,
            "--json",
        ],
        0,
    );
    let r: Vec<Value> = serde_json::from_slice(&r.stdout).expect("results --json");
    assert_eq!(r[0]["commit"], base.as_str(), "prefixes are case-blind");
    let logs = tools_expect(&["logs", "--dispatcher", &addr, p7], 0);
    assert!(logs.stdout.starts_with(DEFAULT_COMMAND_LINE.as_bytes()));
    tools_expect(&["wait", "--dispatcher", &addr, p7], 0);
    tools_expect(&["retry", "--dispatcher", &addr, p7], 0);
    tools_expect(&["wait", "--dispatcher", &addr, p7], 0);
    assert_eq!(result(&addr, &base)["attempts"], 2);
    // Each twin by the shortest prefix that tells them apart.
    let pa = &a[..common + 1];
    let r = tools_expect(
        &["results", "--dispatcher", &addr, "--commit", pa, "--json"],
        0,
    );
    let r: Vec<Value> = serde_json::from_slice(&r.stdout).expect("results --json");
    assert_eq!(r[0]["commit"], a.as_str());

    // Ambiguous: every command names the prefix and asks for more digits.
    let twin = &a[..7];
    for cmd in [
        vec!["results", "--dispatcher", &addr, "--commit", twin],
        vec!["logs", "--dispatcher", &addr, twin],
        vec!["logs", "--follow", "--dispatcher", &addr, twin],
        vec!["cancel", "--dispatcher", &addr, twin],
        vec!["retry", "--dispatcher", &addr, twin],
        vec!["wait", "--dispatcher", &addr, twin],
        vec!["output", "--dispatcher", &addr, twin],
    ] {
        refused(&cmd, &[twin, "more than one commit"]);
    }
    // Unknown: named, and said at once.
    let unknown = (0..16u8)
        .map(|d| format!("{d:x}").repeat(7))
        .find(|p| ![&base, &a, &b].iter().any(|s| s.starts_with(p.as_str())))
        .expect("an unused prefix");
    for cmd in ["logs", "cancel", "retry", "wait", "output"] {
        let started = Instant::now();
        refused(
            &[cmd, "--dispatcher", &addr, &unknown],
            &[&unknown, "no commit starting with"],
        );
        assert!(started.elapsed() < SHORT);
    }
    refused(
        &["results", "--dispatcher", &addr, "--commit", &unknown],
        &[&unknown, "no commit starting with"],
    );
    // Too short, or not hex: refused before asking, with the rule.
    for bad in [&base[..6], "zzzzzzz", "abc-123"] {
        for cmd in ["logs", "cancel", "retry", "wait"] {
            refused(&[cmd, "--dispatcher", &addr, bad], &[bad, "at least 7"]);
        }
    }
}

#[test]
fn results_filter_by_branch_outcome_and_limit_and_wait_says_at_once_when_a_commit_is_unknown() {
    let repo = TestRepo::new();
    let m1 = repo.commit(&[("tests/test_a.py", &passing_test("A"))], "main passes");
    let m2 = repo.commit(&[("tests/test_a.py", &failing_test("A"))], "main fails");
    let m3 = repo.commit(&[("tests/test_a.py", &passing_test("A"))], "main fixed");
    let f1 = repo.commit_on(
        "feature",
        &[("tests/test_f.py", &failing_test("F"))],
        "feature fails",
    );
    let f2 = repo.commit_on(
        "feature",
        &[("tests/test_f.py", &failing_test("G"))],
        "feature still fails",
    );
    let f3 = repo.commit_on(
        "feature",
        &[("tests/test_f.py", &passing_test("F"))],
        "feature passes",
    );
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr().to_owned();
    submit(&addr, "main", &[m1.as_str(), m2.as_str(), m3.as_str()]);
    submit(&addr, "feature", &[&f1, &f2, &f3]);
    let _runner = runner(&addr, &repo, "r1");
    wait_final(&addr, &[&m1, &m2, &m3, &f1, &f2, &f3], LONG);

    let query = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["results", "--dispatcher", addr.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = tools_expect(&args, 0);
        let r: Vec<Value> = serde_json::from_slice(&out.stdout).expect("results --json");
        r.iter()
            .map(|v| v["commit"].as_str().expect("commit").to_string())
            .collect()
    };
    assert_eq!(
        query(&["--branch", "feature", "--outcome", "fail"]),
        [f1.as_str(), f2.as_str()]
    );
    assert_eq!(
        query(&["--branch", "feature", "--outcome", "fail", "--limit", "1"]),
        [f2.as_str()],
        "the newest one"
    );
    assert_eq!(
        query(&["--branch", "main", "--outcome", "fail"]),
        [m2.as_str()]
    );
    assert_eq!(
        query(&["--outcome", "pass", "--limit", "2"]),
        [m3.as_str(), f3.as_str()]
    );
    assert_eq!(
        query(&["--branch", "main"]),
        [m1.as_str(), m2.as_str(), m3.as_str()]
    );
    assert_eq!(query(&["--limit", "2"]).len(), 2);
    assert!(query(&["--branch", "nowhere"]).is_empty());
    assert!(query(&["--outcome", "cancelled"]).is_empty());
    // The table too, with the subject.
    let out = tools_expect(
        &[
            "results",
            "--dispatcher",
            &addr,
            "--branch",
            "feature",
            "--outcome",
            "fail",
        ],
        0,
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("feature still fails"), "{table}");
    assert!(!table.contains("feature passes"), "{table}");
    assert!(!table.contains(short(&m2)), "{table}");
    // A state that is not one is a usage error naming the choices.
    let args = ["results", "--dispatcher", &addr, "--outcome", "failed"];
    let out = tools_expect(&args, 2);
    assert!(
        stderr_of(&out).contains("fail"),
        "{}",
        show_tools(&args, &out)
    );

    // wait: a commit the dispatcher never saw is said at once (and waited
    // for until the timeout: an observer may bring it).
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let mut waiting = tools_bg(
        &repo,
        &["wait", "--dispatcher", &addr, "--timeout", "30", unknown],
        "wait-unknown",
    );
    let started = Instant::now();
    wait_for("wait to say the commit is unknown", SHORT, || {
        let err = waiting.stderr();
        if err.contains("has not seen") && err.contains(short(unknown)) {
            Ok(())
        } else {
            Err(err)
        }
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(waiting.is_running(), "it keeps waiting");
    waiting.kill9_group();
    let args = ["wait", "--dispatcher", &addr, "--timeout", "1", unknown];
    let out = tools_expect(&args, 2);
    assert!(
        stderr_of(&out).contains("never seen by the dispatcher"),
        "{}",
        show_tools(&args, &out)
    );
    // wait on known commits: 1 when one did not pass, 0 when all did.
    tools_expect(&["wait", "--dispatcher", &addr, &m1, &m2], 1);
    tools_expect(&["wait", "--dispatcher", &addr, &m1, &m3], 0);
}

#[test]
fn logs_follow_and_wait_survive_a_dispatcher_restart_without_losing_or_repeating_bytes() {
    let repo = TestRepo::new();
    let flags = flags_dir(&repo);
    let sha = repo.commit(
        &[("tests/test_gated.py", &gated_test(&flags, true))],
        "a gated test that ticks",
    );
    let mut dispatcher = Dispatcher::start_on(free_port(), &repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr().to_owned();
    submit(&addr, "main", &[&sha]);
    let _runner = runner(&addr, &repo, "r1");
    wait_file(&flags, "started", LONG);
    let mut follow = tools_bg(
        &repo,
        &["logs", "--follow", "--dispatcher", &addr, &sha],
        "logs-follow",
    );
    let mut wait = tools_bg(
        &repo,
        &[
            "wait",
            "--dispatcher",
            &addr,
            "--timeout",
            "90",
            "--json",
            &sha,
        ],
        "wait",
    );
    wait_for("ticks in logs --follow", SHORT, || {
        let out = follow.stdout();
        if out.contains("tick 3\n") {
            Ok(())
        } else {
            Err(out)
        }
    });

    // kill -9 while both wait; the test keeps ticking meanwhile.
    dispatcher.kill9();
    thread::sleep(Duration::from_millis(700));
    let before = follow.stdout();
    dispatcher.restart();
    wait_for("the runner back on the restarted dispatcher", LONG, || {
        let s = try_status_json(&addr)?;
        if s["runners"][0]["state"] == "busy" {
            Ok(())
        } else {
            Err(pretty(&s))
        }
    });
    // Output keeps coming through the new dispatcher.
    wait_for("more ticks after the restart", LONG, || {
        let out = follow.stdout();
        if out.len() > before.len() + 40 {
            Ok(())
        } else {
            Err(out)
        }
    });
    assert!(follow.is_running() && wait.is_running());
    touch(&flags, "go");

    assert_eq!(exit_of(&mut follow, LONG), Some(0), "logs --follow: pass");
    assert_eq!(exit_of(&mut wait, LONG), Some(0), "wait: pass");
    let waited: Vec<Value> = serde_json::from_str(&wait.stdout()).expect("wait --json");
    assert_eq!(waited[0]["outcome"], "pass");
    let r = result(&addr, &sha);
    assert_eq!(r["outcome"], "pass");
    assert_eq!(r["attempts"], 1, "the runner kept its job");

    // Every byte once, in order: what was followed is what was stored.
    let followed = follow.stdout();
    let stored = tools_expect(&["logs", "--dispatcher", &addr, &sha], 0);
    let stored = String::from_utf8_lossy(&stored.stdout).into_owned();
    assert!(stored.starts_with(DEFAULT_COMMAND_LINE), "{stored}");
    assert_eq!(followed, stored, "followed vs stored output");
    assert_eq!(r["output_bytes"].as_u64(), Some(stored.len() as u64));
    let ticks: Vec<u64> = stored
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .map(|n| n.parse().expect("tick number"))
        .collect();
    assert!(ticks.len() > 5, "{stored}");
    assert!(
        ticks.iter().enumerate().all(|(i, &n)| n == i as u64 + 1),
        "ticks in order, none twice or missing: {ticks:?}"
    );
}
