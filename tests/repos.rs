//! Several repositories on one dispatcher, on the real binaries: two git
//! repositories behind `--repository NAME=URL`, an observer per
//! repository, runners that serve any or only one, filters, the refusal
//! of an unknown name, fairness between a flood and a trickle, and a data
//! directory written without names replaying unchanged.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

/// A repository whose history differs from every other test repository's
/// from its first commit on (same files, same second, same sha otherwise).
fn distinct_repo(tag: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.commit(
        &[("REPOSITORY", &format!("{tag}\n"))],
        &format!("{tag} root"),
    );
    repo
}

fn repo_flag(name: &str, repo: &TestRepo) -> String {
    format!("{name}={}", repo.url())
}

fn results_of(addr: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["results", "--dispatcher", addr, "--json"];
    args.extend_from_slice(extra);
    let out = tools_expect(&args, 0);
    serde_json::from_slice(&out.stdout).expect("results --json is JSON")
}

fn sha_set(results: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = results
        .iter()
        .map(|r| r["commit"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn two_repositories_with_an_observer_each_and_runners_that_serve_any_or_one() {
    let app = distinct_repo("app");
    let lib = distinct_repo("lib");
    let app_shas = app.commit_passing(2);
    let lib_shas = lib.commit_passing(2);
    let (app_flag, lib_flag) = (repo_flag("app", &app), repo_flag("lib", &lib));
    let d = Dispatcher::start(
        &app.dir("data"),
        &["--repository", &app_flag, "--repository", &lib_flag],
    );
    let addr = d.addr().to_string();
    let _o_app = observer_with(&addr, &app, "main", &["--repository", "app"]);
    let _o_lib = observer_with(&addr, &lib, "main", &["--repository", "lib"]);
    // One runner serves any repository (cloning from the dispatcher's
    // URLs), one only lib, with its own URL.
    let _any = runner_with(&addr, &app, "any", &["--any-repository"]);
    let _lib_only = runner_with(&addr, &lib, "libonly", &["--repo", &lib_flag]);

    // The observers report each repository's current tip first.
    let tips = [app_shas[1].clone(), lib_shas[1].clone()];
    wait_final(&addr, &tips, LONG);
    // Later commits of both, pushed together.
    let more_app = app.commit_passing(2);
    let more_lib = lib.commit_passing(2);
    let all: Vec<String> = more_app.iter().chain(&more_lib).cloned().collect();
    let results = wait_final(&addr, &all, LONG);
    for r in &results {
        assert_eq!(r["outcome"], "pass", "{}", pretty(r));
        let repo = r["repository"].as_str().expect("a named repository");
        assert!(repo == "app" || repo == "lib", "{}", pretty(r));
        if repo == "app" {
            assert_eq!(r["runner"], "any", "app's job ran on a lib-only runner");
        }
    }
    let app_results = results_of(&addr, &["--repository", "app"]);
    assert!(
        app_results.iter().all(|r| r["repository"] == "app"),
        "{}",
        pretty(&app_results)
    );
    assert_eq!(
        sha_set(&app_results),
        sorted(vec![
            app_shas[1].clone(),
            more_app[0].clone(),
            more_app[1].clone()
        ])
    );
    let lib_results = results_of(&addr, &["--repository", "lib"]);
    assert_eq!(
        sha_set(&lib_results),
        sorted(vec![
            lib_shas[1].clone(),
            more_lib[0].clone(),
            more_lib[1].clone()
        ])
    );
    // Each repository has its own `main`.
    let replay = replay_json_online(&addr);
    let moved: Vec<&Value> = replay
        .iter()
        .filter(|e| e["type"] == "commit_seen")
        .collect();
    assert!(moved.iter().all(|e| e["repository"].is_string()));

    // A repository the dispatcher lacks is refused, saying what to do.
    let out = tools(&[
        "submit",
        "--dispatcher",
        &addr,
        "--repository",
        "nosuch",
        &more_app[0],
    ]);
    assert!(!out.status.success(), "{}", show_tools(&["submit"], &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--repository nosuch=URL"),
        "the refusal says how to add it: {err}"
    );
    // Status: every queued repository is served.
    let status = status_json(&addr);
    assert!(
        status["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["served"] == true),
        "{}",
        pretty(&status)
    );
}

#[test]
fn a_flood_of_one_repository_does_not_starve_another() {
    let app = distinct_repo("app");
    let lib = distinct_repo("lib");
    let app_shas = app.commit_passing(20);
    let lib_shas = lib.commit_passing(2);
    let (app_flag, lib_flag) = (repo_flag("app", &app), repo_flag("lib", &lib));
    let d = Dispatcher::start(
        &app.dir("data"),
        &["--repository", &app_flag, "--repository", &lib_flag],
    );
    let addr = d.addr().to_string();
    let mut submit = vec!["submit", "--dispatcher", &addr, "--repository", "app"];
    submit.extend(app_shas.iter().map(String::as_str));
    tools_expect(&submit, 0);
    let mut submit = vec!["submit", "--dispatcher", &addr, "--repository", "lib"];
    submit.extend(lib_shas.iter().map(String::as_str));
    tools_expect(&submit, 0);
    // One runner serving both, each from its own URL.
    let _r = runner_with(
        &addr,
        &app,
        "both",
        &["--repo", &app_flag, "--repo", &lib_flag],
    );
    let all: Vec<String> = app_shas.iter().chain(&lib_shas).cloned().collect();
    let results = wait_final(&addr, &all, LONG);
    let finished = |sha: &str| {
        result_for(&results, sha).unwrap()["finished_at_ms"]
            .as_u64()
            .unwrap()
    };
    let lib_done = lib_shas.iter().map(|s| finished(s)).max().unwrap();
    let app_before = app_shas.iter().filter(|s| finished(s) < lib_done).count();
    assert!(
        app_before <= 3,
        "lib's commits waited for {app_before} of app's 20:\n{}",
        pretty(&results)
    );
    assert!(results.iter().all(|r| r["outcome"] == "pass"));
}

#[test]
fn a_log_written_without_names_replays_unchanged_with_named_repositories() {
    let repo = TestRepo::new();
    let shas = repo.commit_passing(2);
    let data = repo.dir("data");
    let mut d = Dispatcher::start(&data, &[]);
    let addr = d.addr().to_string();
    let mut r = runner(&addr, &repo, "r1");
    let mut submit = vec!["submit", "--dispatcher", &addr, "--branch", "main"];
    submit.extend(shas.iter().map(String::as_str));
    tools_expect(&submit, 0);
    let before_results = wait_final(&addr, &shas, LONG);
    r.sigterm();
    r.wait_exit(Duration::from_secs(30));
    d.stop();
    let before = replay_json_offline(&data);
    // Nothing of a single-repository log names a repository.
    assert!(before.iter().all(|e| e.get("repository").is_none()));

    // Started again with named repositories: the old history is the
    // default repository's, unchanged.
    let other = distinct_repo("other");
    let flag = repo_flag("other", &other);
    let mut d = Dispatcher::start(&data, &["--repository", &flag]);
    let addr = d.addr().to_string();
    let after_results = results_json(&addr);
    assert_eq!(after_results, before_results);
    assert!(after_results.iter().all(|r| r["repository"].is_null()));
    d.stop();
    let after = replay_json_offline(&data);
    assert_eq!(&after[..before.len()], &before[..]);
    assert!(
        after[before.len()..]
            .iter()
            .all(|e| e["type"] == "dispatcher_started")
    );
    tools_expect(&["replay", "--data-dir", p(&data), "--verify"], 0);
}

/// The `<td class="repository">` cell of `sha`'s row on a commits page.
fn repository_cell(page: &str, sha: &str) -> Option<String> {
    let row_at = page.find(&format!("data-sha=\"{sha}\""))?;
    let row = &page[row_at..];
    let row = &row[..row.find("</tr>")?];
    let cell = row.split("<td class=\"repository\">").nth(1)?;
    Some(cell[..cell.find("</td>")?].to_string())
}

fn page(http: &str, path: &str) -> (u16, String) {
    http_get(http, path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn the_dashboard_and_tables_show_and_filter_by_repository() {
    let app = distinct_repo("app");
    let lib = distinct_repo("lib");
    let app_shas = app.commit_passing(2);
    let lib_shas = lib.commit_passing(2);
    let (app_flag, lib_flag) = (repo_flag("app", &app), repo_flag("lib", &lib));
    let d = Dispatcher::start(
        &app.dir("data"),
        &[
            "--http",
            "127.0.0.1:0",
            "--repository",
            &app_flag,
            "--repository",
            &lib_flag,
        ],
    );
    let addr = d.addr().to_string();
    let http = printed_http_addr(&d.proc);
    for (name, shas) in [("app", &app_shas), ("lib", &lib_shas)] {
        let mut submit = vec![
            "submit",
            "--dispatcher",
            &addr,
            "--repository",
            name,
            "--branch",
            "main",
        ];
        submit.extend(shas.iter().map(String::as_str));
        tools_expect(&submit, 0);
    }

    // The commits page: a repository column and filter; every commit with
    // its repository.
    let (status, body) = page(&http, "/");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<th class=\"repository\">Repository</th>"),
        "{body}"
    );
    assert!(body.contains("<select name=\"repo\">"), "{body}");
    for (name, shas) in [("app", &app_shas), ("lib", &lib_shas)] {
        for sha in shas {
            assert_eq!(
                repository_cell(&body, sha).as_deref(),
                Some(name),
                "{sha} on the commits page: {body}"
            );
        }
    }
    // Filtered: only lib's, lib chosen in the form.
    let (status, body) = page(&http, "/?repo=lib");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<option value=\"lib\" selected>lib</option>"),
        "{body}"
    );
    for sha in &lib_shas {
        assert_eq!(
            repository_cell(&body, sha).as_deref(),
            Some("lib"),
            "{body}"
        );
    }
    for sha in &app_shas {
        assert!(
            !body.contains(sha.as_str()),
            "app's {sha} on lib's page: {body}"
        );
    }
    // The pager's cursor link keeps the filter, and its page is lib's too.
    let (status, body) = page(&http, "/?repo=lib&limit=1");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&lib_shas[1]), "{body}");
    let next = body
        .split("<a id=\"next\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no #next link: {body}"))
        .replace("&amp;", "&");
    assert!(next.contains("repo=lib"), "{next}");
    let (status, body) = page(&http, &next);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&lib_shas[0]), "{body}");
    assert!(
        !app_shas.iter().any(|s| body.contains(s.as_str())),
        "{body}"
    );
    // The API agrees.
    let (status, json) = page(&http, "/api/v1/commits?repo=lib");
    assert_eq!(status, 200, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        sha_set(v["commits"].as_array().unwrap()),
        sorted(lib_shas.clone())
    );
    // A repository the dispatcher lacks: 404 from both, saying how to add it.
    for path in ["/?repo=nosuch", "/api/v1/commits?repo=nosuch"] {
        let (status, body) = page(&http, path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("--repository nosuch=URL"), "{path}: {body}");
    }
    // A commit's page names its repository.
    let (status, body) = page(&http, &format!("/commits/{}", app_shas[0]));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<dd id=\"repository\">app</dd>"), "{body}");

    // `results`: a REPOSITORY column naming each commit's.
    let out = tools_expect(&["results", "--dispatcher", &addr], 0);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let header = text.lines().next().unwrap_or_default();
    assert!(header.contains("REPOSITORY"), "{text}");
    for (name, shas) in [("app", &app_shas), ("lib", &lib_shas)] {
        for sha in shas {
            let line = text
                .lines()
                .find(|l| l.starts_with(short(sha).get(..7).unwrap()))
                .unwrap_or_else(|| panic!("{sha} not in {text}"));
            assert!(
                line.split_whitespace().nth(1) == Some(name),
                "{sha} is {name}'s: {text}"
            );
        }
    }
    // `status`: queued jobs that no connected runner serves, said per
    // repository.
    let out = tools_expect(&["status", "--dispatcher", &addr], 0);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for name in ["app", "lib"] {
        assert!(
            text.contains(&format!(
                "repository {name}: 2 queued; no connected runner serves it"
            )),
            "{text}"
        );
    }
}

#[test]
fn without_named_repositories_no_repository_column_or_filter() {
    let repo = TestRepo::new();
    let shas = repo.commit_passing(2);
    let d = Dispatcher::start(&repo.dir("data"), &["--http", "127.0.0.1:0"]);
    let addr = d.addr().to_string();
    let http = printed_http_addr(&d.proc);
    let mut submit = vec!["submit", "--dispatcher", &addr, "--branch", "main"];
    submit.extend(shas.iter().map(String::as_str));
    tools_expect(&submit, 0);
    // `repo=` is ignored without named repositories, as the API does.
    for path in ["/", "/?repo=app"] {
        let (status, body) = page(&http, path);
        assert_eq!(status, 200, "{body}");
        assert!(shas.iter().all(|s| body.contains(s.as_str())), "{body}");
        assert!(!body.contains("repository"), "{path}: {body}");
        assert!(!body.contains("name=\"repo\""), "{path}: {body}");
    }
    let (status, body) = page(&http, &format!("/commits/{}", shas[0]));
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("id=\"repository\""), "{body}");
    let out = tools_expect(&["results", "--dispatcher", &addr], 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("COMMIT"), "{text}");
    assert!(!text.contains("REPOSITORY"), "{text}");
    let out = tools_expect(&["status", "--dispatcher", &addr], 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("repository"), "{text}");
}
