//! History without limit, on the real binaries: a dispatcher keeps only a
//! window of finished jobs in memory and serves the rest from the on-disk
//! history indexes, exactly, across restarts.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// A generated history of `events` events (a commit seen, assigned and
/// passed per job) under `dir/data`; returns how many jobs it holds.
fn history(dir: &Path, events: u64) -> u64 {
    let data = dir.join("data");
    let state = ci::tools::bench::generate_history(&data, events, 64).expect("history written");
    state.jobs_seen()
}

fn results(addr: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["results", "--dispatcher", addr, "--json"];
    args.extend_from_slice(extra);
    match stdout_json(&tools_expect(&args, 0)) {
        Value::Array(rows) => rows,
        other => panic!("results --json is not an array: {other}"),
    }
}

fn commit_of(row: &Value) -> String {
    row["commit"].as_str().expect("a commit").to_string()
}

#[test]
fn every_job_of_a_long_history_is_served_from_disk_exactly_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // About 10,000 jobs; 50 of them in memory.
    let jobs = history(dir.path(), 30_000);
    let data = dir.path().join("data");
    let mut d = Dispatcher::start(&data, &["--keep-in-memory", "50"]);

    // Every job, each once (the table's order: newest last): the tool
    // pages through memory and the indexes with a cursor.
    let all = results(d.addr(), &[]);
    assert_eq!(all.len() as u64, jobs);
    let numbers: Vec<u64> = all.iter().map(|r| r["job"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=jobs).collect::<Vec<_>>());
    assert!(all.iter().all(|r| r["outcome"] == "pass"));
    let oldest = commit_of(&all[0]);
    let middle = commit_of(&all[all.len() / 2]);

    // Filters read the indexes too.
    let passed = results(d.addr(), &["--outcome", "pass", "--limit", "3000"]);
    assert_eq!(passed.len(), 3000);
    assert_eq!(results(d.addr(), &["--outcome", "fail"]).len(), 0);
    assert_eq!(results(d.addr(), &["--branch", "main"]).len() as u64, jobs);

    // An old commit reported again is a duplicate: "already seen" is exact.
    let out = tools_expect(
        &[
            "submit",
            "--dispatcher",
            d.addr(),
            "--branch",
            "main",
            &oldest,
        ],
        0,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("duplicate") || text.contains("already"),
        "{text}"
    );

    // An old commit's stored output reads.
    tools_expect(&["output", "--dispatcher", d.addr(), &oldest], 0);
    let one = results(d.addr(), &["--limit", "1"]);
    assert_eq!(one[0]["job"].as_u64(), Some(jobs));

    // Cancelling a finished old job is refused; retrying it brings it back.
    let out = tools(&["cancel", "--dispatcher", d.addr(), &middle]);
    assert_ne!(exit_code(&out.status), Some(0));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("already finished"), "{why}");
    tools_expect(&["retry", "--dispatcher", d.addr(), &middle], 0);
    let row = results(d.addr(), &["--outcome", "pending"]);
    assert_eq!(row.len(), 1);
    assert_eq!(commit_of(&row[0]), middle);
    assert_eq!(row[0]["attempts"], 1);
    tools_expect(&["cancel", "--dispatcher", d.addr(), &middle], 0);

    // kill -9 and back: the same answers, from the snapshot or the log.
    d.kill9();
    d.restart();
    let again = results(d.addr(), &[]);
    assert_eq!(again.len() as u64, jobs);
    let cancelled: Vec<&Value> = again
        .iter()
        .filter(|r| r["outcome"] == "cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(commit_of(cancelled[0]), middle);
    let status = stdout_json(&tools_expect(
        &["status", "--dispatcher", d.addr(), "--json"],
        0,
    ));
    assert_eq!(status["jobs_total"].as_u64(), Some(jobs));
    assert_eq!(status["jobs_done"].as_u64(), Some(jobs));
    d.stop();

    // The log replays to the same state from a snapshot or from scratch.
    let out = tools_expect(&["replay", "--verify", "--data-dir", p(&data)], 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok:"), "{text}");
}

#[test]
fn lost_history_indexes_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = history(dir.path(), 3_000);
    let data = dir.path().join("data");
    let mut d = Dispatcher::start(
        &data,
        &["--keep-in-memory", "10", "--snapshot-every", "100"],
    );
    let before = results(d.addr(), &[]);
    assert_eq!(before.len() as u64, jobs);
    d.stop();
    // Drop every history tree: the snapshot now names moves out that the
    // indexes do not hold, so the dispatcher rebuilds them from the log.
    {
        let db = sled::open(data.join("db")).unwrap();
        for name in [
            "history",
            "history-commits",
            "history-branches",
            "history-repos",
            "history-outcomes",
            "history-meta",
        ] {
            db.drop_tree(name).unwrap();
        }
        db.flush().unwrap();
    }
    let d = Dispatcher::start(&data, &["--keep-in-memory", "10"]);
    let after = results(d.addr(), &[]);
    assert_eq!(after, before);
}
