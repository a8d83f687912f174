//! Errors at the edges of every binary: one line on stderr naming what is
//! wrong and what to do, exit 2, no panic or backtrace.

/// Helpers for tests that run with tokens (shared with edges, containment).
#[path = "sec_common/mod.rs"]
mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn run(name: &str, args: &[&str]) -> Output {
    let started = Instant::now();
    let o = Command::new(bin(name))
        .args(args)
        .env_remove("CI_TOKEN_FILE")
        .env_remove("CI_TOKEN")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    o
}

/// Exit 2 and exactly one stderr line, which starts with the program's
/// name and contains every `want`.
fn one_line_error(name: &str, o: &Output, want: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{name}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains("warning:")).collect();
    assert_eq!(lines.len(), 1, "{name}: {err}");
    assert!(lines[0].starts_with(&format!("{name}: error: ")), "{err}");
    for w in want {
        assert!(lines[0].contains(w), "{name}: wanted {w:?} in {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[test]
fn tools_against_an_unreachable_dispatcher() {
    let addr = closed_port();
    for sub in [
        &["status", "--dispatcher", &addr][..],
        &["results", "--dispatcher", &addr, "--json"],
        &["replay", "--dispatcher", &addr],
        &["submit", "--dispatcher", &addr, &"a".repeat(40)],
    ] {
        let o = run("ci-tools", sub);
        one_line_error(
            "ci-tools",
            &o,
            &[
                "cannot reach the dispatcher",
                &addr,
                "check that ci-dispatcher runs",
            ],
        );
    }
}

#[test]
fn a_locked_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _d = Dispatcher::start(&data, &[]);
    let data_s = data.to_str().unwrap();
    let o = run(
        "ci-dispatcher",
        &["--listen", "127.0.0.1:0", "--data-dir", data_s],
    );
    one_line_error(
        "ci-dispatcher",
        &o,
        &["in use by another dispatcher", data_s],
    );
    let o = run("ci-tools", &["replay", "--data-dir", data_s]);
    one_line_error(
        "ci-tools",
        &o,
        &["in use by another dispatcher", "--dispatcher"],
    );
}

#[test]
fn unreadable_token_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.token");
    let m = missing.to_str().unwrap();
    let unreadable = dir.path().join("unreadable.token");
    write_secret(&unreadable, "runner: abcdefghijklmnopqrstuvwxyz\n");
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    let (data, work) = (data.to_str().unwrap(), work.to_str().unwrap());
    let want = ["cannot read the token file", m];
    let o = run(
        "ci-dispatcher",
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--token-file",
            m,
        ],
    );
    one_line_error("ci-dispatcher", &o, &want);
    let o = run(
        "ci-tools",
        &["--token-file", m, "status", "--dispatcher", "127.0.0.1:1"],
    );
    one_line_error("ci-tools", &o, &want);
    // The token is read before the repository or the dispatcher is touched.
    let common = [
        "--dispatcher",
        "127.0.0.1:1",
        "--repo",
        "/no/such/repo",
        "--work-dir",
        work,
    ];
    let mut args = common.to_vec();
    args.extend(["--token-file", m]);
    one_line_error("ci-runner", &run("ci-runner", &args), &want);
    one_line_error("ci-observer", &run("ci-observer", &args), &want);

    // Malformed dispatcher token files name the line and the rule.
    let bad = dir.path().join("bad.tokens");
    write_secret(&bad, "runner: short\n");
    let o = run(
        "ci-dispatcher",
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--token-file",
            bad.to_str().unwrap(),
        ],
    );
    one_line_error("ci-dispatcher", &o, &["line 1", "shorter than 16"]);
    assert!(!stderr(&o).contains("short\n"));

    // Permission denied (meaningless as root, who reads anything).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
        let u = unreadable.to_str().unwrap();
        let o = run(
            "ci-dispatcher",
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--token-file",
                u,
            ],
        );
        one_line_error("ci-dispatcher", &o, &["cannot read the token file", u]);
    }
}

#[test]
fn bad_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            "ci-dispatcher",
            vec!["--data-dir", data, "--heartbeat-timeout", "-1"],
            "--heartbeat-timeout",
        ),
        (
            "ci-dispatcher",
            vec!["--data-dir", data, "--heartbeat-timeout", "0"],
            "--heartbeat-timeout",
        ),
        (
            "ci-observer",
            vec![
                "--dispatcher",
                "127.0.0.1:1",
                "--repo",
                ".",
                "--work-dir",
                data,
                "--interval",
                "abc",
            ],
            "--interval",
        ),
        (
            "ci-runner",
            vec![
                "--dispatcher",
                "127.0.0.1:1",
                "--repo",
                ".",
                "--work-dir",
                data,
                "--job-timeout",
                "-5",
            ],
            "--job-timeout",
        ),
        (
            "ci-tools",
            vec![
                "wait",
                "--dispatcher",
                "127.0.0.1:1",
                "--timeout",
                "abc",
                "x",
            ],
            "--timeout",
        ),
        (
            "ci-tools",
            vec!["status", "--no-such-flag"],
            "--no-such-flag",
        ),
    ];
    for (name, args, flag) in cases {
        let o = run(name, &args);
        one_line_error(name, &o, &[flag, "--help"]);
    }
    // Not a usage error: listening beyond loopback without tokens.
    let o = run(
        "ci-dispatcher",
        &["--listen", "0.0.0.0:0", "--data-dir", data],
    );
    one_line_error(
        "ci-dispatcher",
        &o,
        &["--token-file", "--insecure", "0.0.0.0:0"],
    );
    assert!(stderr(&o).contains("warning: no --token-file"));
    // Help is not an error.
    let o = run("ci-tools", &["--help"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn a_repository_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let work = work.to_str().unwrap();
    let addr = closed_port();
    for name in ["ci-runner", "ci-observer"] {
        let o = run(
            name,
            &[
                "--dispatcher",
                &addr,
                "--repo",
                "/no/such/repo",
                "--work-dir",
                work,
            ],
        );
        one_line_error(name, &o, &["/no/such/repo", "no such file", "give --repo"]);
        let o = run(
            name,
            &[
                "--dispatcher",
                &addr,
                "--repo",
                "ftp://example.com/r.git",
                "--work-dir",
                work,
            ],
        );
        one_line_error(name, &o, &["ftp://example.com/r.git", ci::git::SOURCE_RULE]);
        let o = run(
            name,
            &[
                "--dispatcher",
                &addr,
                "--repo",
                dir.path().to_str().unwrap(),
                "--work-dir",
                work,
            ],
        );
        one_line_error(name, &o, &["cannot read repository", "--repo"]);
    }
    // A bad branch name names the value and the rule.
    let o = run(
        "ci-observer",
        &[
            "--dispatcher",
            &addr,
            "--repo",
            "/no/such",
            "--work-dir",
            work,
            "--branch",
            "a..b",
        ],
    );
    one_line_error("ci-observer", &o, &["\"a..b\"", "branch name"]);
    let o = run(
        "ci-tools",
        &[
            "submit",
            "--dispatcher",
            &addr,
            "--branch=-x",
            &"a".repeat(40),
        ],
    );
    one_line_error("ci-tools", &o, &["\"-x\"", "cannot begin with -"]);
    let o = run("ci-tools", &["submit", "--dispatcher", &addr, "HEAD~1"]);
    one_line_error("ci-tools", &o, &["\"HEAD~1\"", "hexadecimal"]);
}

#[test]
fn a_wrong_token_is_fatal_for_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let d = Dispatcher::start(
        &dir.path().join("data"),
        &["--token-file", s.dispatcher.to_str().unwrap()],
    );
    let wrong = dir.path().join("wrong.token");
    write_secret(&wrong, "not-the-right-secret-at-all\n");
    let w = wrong.to_str().unwrap();
    let o = run(
        "ci-tools",
        &["--token-file", w, "status", "--dispatcher", &d.addr],
    );
    one_line_error("ci-tools", &o, &["wrong token for role tool"]);
    let o = run("ci-tools", &["status", "--dispatcher", &d.addr]);
    one_line_error("ci-tools", &o, &["requires a token"]);
    // CI_TOKEN works in place of a file.
    let o = Command::new(bin("ci-tools"))
        .args(["status", "--dispatcher", &d.addr, "--json"])
        .env_remove("CI_TOKEN_FILE")
        .env("CI_TOKEN", TOOL)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A pipe whose reading end is already closed: every write to it fails with
/// EPIPE, as when a terminal goes away or `| head` has read enough.
fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

#[test]
fn a_dispatcher_whose_stderr_is_closed_keeps_serving_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = Dispatcher::start_with(&data, &[], |cmd| {
        // Every event logged: each one a failed write.
        cmd.env("RUST_LOG", "debug").stderr(closed_pipe());
    });
    let addr = d.addr.clone();
    let sha = "c".repeat(40);
    let o = run("ci-tools", &["submit", "--dispatcher", &addr, &sha]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run("ci-tools", &["status", "--dispatcher", &addr, "--json"]);
    assert!(stdout(&o).contains(&sha), "{}", stdout(&o));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = d.child.kill();
            panic!("the dispatcher did not stop on SIGTERM with its stderr closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let o = run(
        "ci-tools",
        &["replay", "--data-dir", data.to_str().unwrap(), "--json"],
    );
    assert!(
        stdout(&o).contains(&sha),
        "the submitted commit is in the log"
    );
}

#[test]
fn tools_writing_into_a_closed_pipe_stop_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Dispatcher::start(&data, &[]);
    let o = run(
        "ci-tools",
        &["submit", "--dispatcher", &d.addr, &"d".repeat(40)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // `ci-tools replay | head -0`: the reader has gone before the first line.
    let o = Command::new(bin("ci-tools"))
        .args(["replay", "--dispatcher", &d.addr])
        .env("RUST_LOG", "off")
        .stdout(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "no error line for a reader that went away");
}

/// `results | head` and `status | head`: the reader went away; no panic,
/// no error line (they printed with `println!`, which panics on EPIPE).
#[test]
fn results_and_status_into_a_closed_pipe_stop_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Dispatcher::start(&data, &[]);
    let shas: Vec<String> = (1..=50).map(|i| format!("{i:040x}")).collect();
    let mut args = vec!["submit", "--dispatcher", d.addr.as_str()];
    args.extend(shas.iter().map(String::as_str));
    let o = run("ci-tools", &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for cmd in [
        vec!["results", "--dispatcher", d.addr.as_str()],
        vec!["results", "--dispatcher", d.addr.as_str(), "--json"],
        vec!["status", "--dispatcher", d.addr.as_str()],
        vec!["status", "--dispatcher", d.addr.as_str(), "--json"],
    ] {
        let o = Command::new(bin("ci-tools"))
            .args(&cmd)
            .env("RUST_LOG", "off")
            .stdout(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{cmd:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{cmd:?}");
    }
}

/// What a post-receive hook may pass by mistake is refused with the rule,
/// and nothing is queued: the all-zero id (a created or deleted branch),
/// `HEAD`, a full ref name.
#[test]
fn submit_refuses_the_zero_id_head_and_full_ref_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Dispatcher::start(&data, &[]);
    let zero = "0".repeat(40);
    let ok = "e".repeat(40);
    for (args, want) in [
        (vec![zero.as_str()], "all-zero"),
        (vec![ok.as_str(), zero.as_str()], "all-zero"),
        (vec!["--branch", "HEAD", ok.as_str()], "cannot be HEAD"),
        (
            vec!["--branch", "refs/heads/main", ok.as_str()],
            "refs/heads/main is given as main",
        ),
    ] {
        let mut full = vec!["submit", "--dispatcher", d.addr.as_str()];
        full.extend(args.iter().copied());
        let o = run("ci-tools", &full);
        one_line_error("ci-tools", &o, &[want]);
    }
    // Nothing was queued.
    let o = run("ci-tools", &["status", "--dispatcher", &d.addr, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["jobs_total"], 0, "{status}");
}

/// The README's token-file example, comments and all, is what the parser
/// takes (it refused the trailing `# comment`s).
#[test]
fn the_readmes_token_file_example_parses() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("# /etc/ci/dispatcher.tokens")
        .expect("the README shows a token file");
    let block = &readme[start..readme[start..].find("```").map(|e| start + e).unwrap()];
    // The README abbreviates its secrets ("3f9c..."): give each a full one.
    let text: String = block
        .lines()
        .enumerate()
        .map(|(i, l)| l.replace("...", &format!("{i:x}").repeat(32)))
        .collect::<Vec<_>>()
        .join("\n");
    let tokens = ci::proto::auth::Tokens::parse(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    for role in [
        ci::proto::Role::Runner,
        ci::proto::Role::Observer,
        ci::proto::Role::Tool,
    ] {
        assert!(tokens.for_role(role).is_some(), "{role:?}");
    }
    assert!(tokens.tool.is_some() && tokens.tool_write.is_some());
}

/// `wait` on a commit nobody submitted says so (once) instead of waiting
/// out its timeout without a word, and the timeout names it.
#[test]
fn wait_says_when_the_dispatcher_has_never_seen_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Dispatcher::start(&data, &[]);
    let sha = "f".repeat(40);
    let started = Instant::now();
    let o = run(
        "ci-tools",
        &["wait", "--dispatcher", &d.addr, "--timeout", "12", &sha],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("has not seen").count(), 1, "one warning: {err}");
    assert!(err.contains("ci-tools submit"), "{err}");
    assert!(err.contains("never seen by the dispatcher"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(12));
}

/// A missing required argument is named on the one error line, and a typo
/// in a subcommand or a flag keeps clap's suggestion on that line, with the
/// (sub)command whose `--help` to read. (The line used to stop at "the
/// following required arguments were not provided:", naming none.)
#[test]
fn usage_errors_name_the_missing_argument_and_suggest_the_right_word() {
    let missing: [(&str, &[&str], &[&str]); 5] = [
        ("ci-dispatcher", &[], &["--data-dir <DIR>"]),
        (
            "ci-runner",
            &[],
            // A runner serves `--repo [NAME=]URL` (repeatable) or
            // `--any-repository`: the first is what is asked for.
            &["--repo <[NAME=]URL_OR_PATH>", "--work-dir <DIR>"],
        ),
        ("ci-observer", &["--repo", "."], &["--work-dir <DIR>"]),
        (
            "ci-tools",
            &["up"],
            &["--repo <URL_OR_PATH>", "ci-tools up --help"],
        ),
        (
            "ci-tools",
            &["submit"],
            &["<SHA>", "ci-tools submit --help"],
        ),
    ];
    for (name, args, want) in missing {
        let o = run(name, args);
        one_line_error(name, &o, &[&["not provided"], want].concat());
    }
    let typos: [(&str, &[&str], &[&str]); 4] = [
        (
            "ci-tools",
            &["stauts"],
            &["'stauts'", "tip:", "'status'", "see ci-tools --help"],
        ),
        (
            "ci-tools",
            &["status", "--jsno"],
            &["'--jsno'", "tip:", "'--json'", "see ci-tools status --help"],
        ),
        (
            "ci-runner",
            &["--repo", ".", "--work-dir", ".", "--job-timout", "5"],
            &["'--job-timout'", "'--job-timeout'", "see ci-runner --help"],
        ),
        (
            "ci-tools",
            &["completions", "fihs"],
            &["'fihs'", "possible values", "'fish'"],
        ),
    ];
    for (name, args, want) in typos {
        let o = run(name, args);
        one_line_error(name, &o, want);
    }
}
