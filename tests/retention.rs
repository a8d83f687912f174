//! Retention of stored outputs on the real binaries: `--keep-outputs-bytes`
//! and `--keep-outputs-for` drop the oldest outputs, the log says which
//! (`outputs_pruned`), `ci-tools pruned` lists them, readers say "removed
//! by retention" instead of showing an empty output, and nothing of it is
//! lost or counted twice across a kill -9.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn pruned(addr: &str) -> Value {
    stdout_json(&tools_expect(
        &["pruned", "--dispatcher", addr, "--json"],
        0,
    ))
}

fn pruned_jobs(doc: &Value) -> BTreeSet<u64> {
    doc["pruned"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["job"].as_u64().expect("a job"))
        .collect()
}

/// Submits `shas` (oldest first) on main and waits for their outcomes.
fn run_jobs(addr: &str, shas: &[String]) -> Vec<Value> {
    let mut args = vec!["submit", "--dispatcher", addr, "--branch", "main"];
    args.extend(shas.iter().map(String::as_str));
    tools_expect(&args, 0);
    wait_final(addr, shas, Duration::from_secs(120))
}

#[test]
fn a_size_limit_keeps_stored_outputs_under_it_and_says_what_went() {
    let repo = TestRepo::new();
    let data = repo.dir("data");
    // A passing run prints a few hundred bytes: a limit of 600 keeps the
    // newest one or two.
    let limit = 600u64;
    let mut d = Dispatcher::start(
        &data,
        &["--keep-outputs-bytes", "600", "--http", "127.0.0.1:0"],
    );
    let http = printed_http_addr(&d.proc);
    let _runner = runner(d.addr(), &repo, "r1");
    let shas = repo.commit_passing(5);
    let results = run_jobs(d.addr(), &shas);
    let job_of = |sha: &str| -> u64 {
        result_for(&results, sha).expect("a result")["job"]
            .as_u64()
            .expect("a job")
    };
    let bytes_of = |sha: &str| -> u64 {
        result_for(&results, sha).expect("a result")["output_bytes"]
            .as_u64()
            .expect("bytes")
    };
    let total: u64 = shas.iter().map(|s| bytes_of(s)).sum();
    assert!(
        total > limit,
        "outputs of {total} bytes do not test the limit"
    );

    // Retention runs after results: what is kept fits under the limit,
    // oldest dropped first.
    let doc = wait_for(
        "the outputs to fit the limit",
        Duration::from_secs(20),
        || {
            let doc = pruned(d.addr());
            let gone = pruned_jobs(&doc);
            let kept: u64 = shas
                .iter()
                .filter(|s| !gone.contains(&job_of(s)))
                .map(|s| bytes_of(s))
                .sum();
            if kept <= limit {
                Ok(doc)
            } else {
                Err(doc.to_string())
            }
        },
    );
    let gone = pruned_jobs(&doc);
    assert!(!gone.is_empty());
    // Oldest first: the pruned ones are a prefix of the jobs.
    let order: Vec<u64> = shas.iter().map(|s| job_of(s)).collect();
    assert!(
        order[..gone.len()].iter().all(|j| gone.contains(j)),
        "{doc}"
    );
    assert!(!gone.contains(order.last().unwrap()));
    for p in doc["pruned"].as_array().unwrap() {
        assert_eq!(p["reason"], "size");
        assert_eq!(p["attempt"], 1);
        let sha = shas
            .iter()
            .find(|s| job_of(s) == p["job"].as_u64().unwrap())
            .unwrap();
        assert_eq!(p["commit"].as_str(), Some(sha.as_str()));
        assert_eq!(p["bytes"].as_u64(), Some(bytes_of(sha)));
    }
    let gone_bytes: u64 = shas
        .iter()
        .filter(|s| gone.contains(&job_of(s)))
        .map(|s| bytes_of(s))
        .sum();
    assert_eq!(doc["totals"]["outputs"].as_u64(), Some(gone.len() as u64));
    assert_eq!(doc["totals"]["bytes"].as_u64(), Some(gone_bytes));
    assert_eq!(
        doc["totals"]["by_reason"]["size"]["bytes"].as_u64(),
        Some(gone_bytes)
    );
    // `/metrics` counts the same, by reason.
    let (_, text) = http_get(&http, "/metrics", None).unwrap();
    for (name, want) in [
        ("ci_outputs_pruned{reason=\"size\"} ", gone.len() as u64),
        ("ci_outputs_pruned_bytes{reason=\"size\"} ", gone_bytes),
        ("ci_outputs_pruned{reason=\"age\"} ", 0),
    ] {
        let line = text.lines().find(|l| l.starts_with(name));
        assert_eq!(line, Some(format!("{name}{want}").as_str()), "{text}");
    }

    // Readers say "pruned", never an empty output; a kept one reads.
    let oldest = &shas[0];
    let newest = shas.last().unwrap();
    let out = tools_expect(&["logs", "--dispatcher", d.addr(), oldest], 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed by retention"), "{err}");
    assert!(err.contains("size"), "{err}");
    assert!(out.stdout.is_empty());
    let out = tools(&["output", "--dispatcher", d.addr(), oldest]);
    assert_eq!(exit_code(&out.status), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed by retention"));
    let out = tools_expect(&["logs", "--dispatcher", d.addr(), newest], 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    // The API, the commit page and the live log say it too.
    let (code, body) = http_get(&http, &format!("/api/v1/commits/{oldest}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["output_pruned"]["reason"], "size", "{body}");
    assert_eq!(api["outcome"], "pass");
    let (_, body) = http_get(&http, &format!("/api/v1/commits/{newest}"), None).unwrap();
    let api: Value = serde_json::from_str(&body).unwrap();
    assert!(api["output_pruned"].is_null(), "{body}");
    let (code, page) = http_get(&http, &format!("/commits/{oldest}"), None).unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("id=\"pruned\"") && page.contains("removed by retention"));
    let (code, sse) = http_get(&http, &format!("/api/v1/commits/{oldest}/log"), None).unwrap();
    assert_eq!(code, 200);
    assert!(sse.contains("event: pruned"), "{sse}");

    // The table says the same, with a totals line.
    let out = tools_expect(&["pruned", "--dispatcher", d.addr()], 0);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&oldest[..12]), "{table}");
    assert!(
        table.contains(&format!(
            "total: {} outputs, {gone_bytes} bytes",
            gone.len()
        )),
        "{table}"
    );

    // kill -9 and back: the same list and totals, nothing counted twice.
    d.kill9();
    d.restart();
    assert_eq!(pruned(d.addr()), doc);
    d.stop();
    let out = tools_expect(&["replay", "--verify", "--data-dir", p(&data)], 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok:"));
    let out = tools_expect(&["replay", "--data-dir", p(&data), "--json"], 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"type\":\"outputs_pruned\""), "{text}");
}

#[test]
fn an_age_limit_drops_outputs_older_than_it() {
    let repo = TestRepo::new();
    let data = repo.dir("data");
    let d = Dispatcher::start(
        &data,
        &[
            "--keep-outputs-for",
            "2s",
            "--keep-outputs-bytes",
            "unlimited",
        ],
    );
    let _runner = runner(d.addr(), &repo, "r1");
    let shas = repo.commit_passing(2);
    let results = run_jobs(d.addr(), &shas);
    let doc = wait_for("both outputs to age out", Duration::from_secs(20), || {
        let doc = pruned(d.addr());
        if pruned_jobs(&doc).len() == 2 {
            Ok(doc)
        } else {
            Err(doc.to_string())
        }
    });
    for p in doc["pruned"].as_array().unwrap() {
        assert_eq!(p["reason"], "age");
        let finished = p["finished_at_ms"].as_u64().unwrap();
        let pruned_at = p["pruned_at_ms"].as_u64().unwrap();
        assert!(pruned_at >= finished + 2000, "{p}");
    }
    // The results stay.
    let again = results_json(d.addr());
    assert_eq!(again.len(), results.len());
    let out = tools_expect(&["logs", "--dispatcher", d.addr(), &shas[1]], 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("(age:"));
}

#[test]
fn bad_retention_flags_name_the_flag_and_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, example) in [
        ("--keep-outputs-for", "soon", "30d"),
        ("--keep-outputs-for", "0", "forever"),
        ("--keep-outputs-bytes", "10GB", "10GiB"),
        ("--keep-outputs-bytes", "lots", "500M"),
    ] {
        let out = std::process::Command::new(bin("ci-dispatcher"))
            .args(["--data-dir", p(dir.path()), flag, value])
            .output()
            .unwrap();
        assert_eq!(exit_code(&out.status), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(flag) && err.contains(example), "{err}");
    }
}
