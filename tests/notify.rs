//! Notifications and commit statuses on the real binaries: `--notify-url`
//! (signed), `--notify-command` and `--status-forge` against receivers
//! the test runs on loopback, each counting what it gets. The outbox's
//! promise is shown by killing the dispatcher with SIGKILL while a
//! delivery is in the receiver's hands and not yet recorded: after the
//! restart it comes again with the same id and the same body, and nothing
//! is lost or counted twice once the receiver drops repeats by id.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::*;
use hmac::{KeyInit, Mac};
use serde_json::Value;

/// What a receiver does with a request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Answer 200 at once.
    Take,
    /// Record it and never answer (the delivery is "in flight").
    Hold,
    /// Answer with this status, then take everything after it.
    RefuseOnce(u16),
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Vec<Got>>>,
    mode: Arc<Mutex<Mode>>,
}

/// An HTTP receiver on loopback, on its own runtime; stops when dropped.
struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(port: u16, mode: Mode) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Shared {
            got: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            addr,
            shared,
            _rt: rt,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds of what was received; returns it.
    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        wait_for(what, timeout, || {
            let got = self.got();
            if pred(&got) {
                Ok(got)
            } else {
                Err(got
                    .iter()
                    .map(|g| format!("{} {}", g.path, String::from_utf8_lossy(&g.body)))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        })
    }
}

async fn receive(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    s.got.lock().unwrap().push(Got {
        path: uri.path().to_string(),
        headers,
        body,
    });
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::Take => (StatusCode::OK, "ok"),
        Mode::Hold => std::future::pending().await,
        Mode::RefuseOnce(code) => {
            *s.mode.lock().unwrap() = Mode::Take;
            (
                StatusCode::from_u16(code).unwrap(),
                "{\"message\":\"no such thing\"}",
            )
        }
    }
}

/// The receiver's view after dropping repeats by id: id → body, in order
/// of first arrival; panics if a repeat's body differs from the first.
fn by_id(got: &[Got]) -> Vec<(String, Value)> {
    let mut seen: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut out = Vec::new();
    for g in got {
        let v = g.json();
        let id = v["id"].as_str().expect("an id").to_string();
        assert_eq!(g.header("idempotency-key"), Some(id.as_str()));
        match seen.get(&id) {
            Some(first) => assert_eq!(first, &g.body, "a repeat of {id} must carry the same body"),
            None => {
                seen.insert(id.clone(), g.body.clone());
                out.push((id, v));
            }
        }
    }
    out
}

/// `submit --dispatcher ADDR --branch main SHA...`, which must succeed.
fn submit(addr: &str, shas: &[&str]) {
    let mut args = vec!["submit", "--dispatcher", addr, "--branch", "main"];
    args.extend_from_slice(shas);
    tools_expect(&args, 0);
}

/// Every notification the log says was due is delivered or dropped.
fn outbox_empty(addr: &str) -> Result<(), String> {
    let replay = try_replay_json_online(addr)?;
    let due: Vec<u64> = events(&replay, "notification_due")
        .iter()
        .map(|e| e["n"].as_u64().unwrap())
        .collect();
    let done: Vec<u64> = events(&replay, "notification_delivered")
        .iter()
        .chain(events(&replay, "notification_dropped").iter())
        .map(|e| e["n"].as_u64().unwrap())
        .collect();
    let owed: Vec<&u64> = due.iter().filter(|n| !done.contains(n)).collect();
    if owed.is_empty() {
        Ok(())
    } else {
        Err(format!("still owed: {owed:?}"))
    }
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn results_and_a_branch_turning_red_and_green_are_posted_signed_in_order() {
    let repo = TestRepo::new();
    let secret = "notify-secret-0123456789abcdef";
    let secret_file = repo.root().join("notify-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let rx = Receiver::start(0, Mode::Take);
    let url = rx.url("/ci-events");
    let d = Dispatcher::start(
        &repo.dir("data"),
        &[
            "--notify-url",
            &url,
            "--notify-secret-file",
            p(&secret_file),
            "--public-url",
            "http://ci.example:8080/",
        ],
    );
    let _r = runner(d.addr(), &repo, "r1");
    let pass = repo.commit_passing(1).remove(0);
    let fail = repo.commit_failing();
    let fixed = repo.commit_fixed();
    submit(d.addr(), &[&pass, &fail, &fixed]);
    wait_final(d.addr(), &[&pass, &fail, &fixed], LONG);

    let got = rx.wait("3 results, a break and a fix", SHORT, |g| {
        by_id(g).len() >= 5
    });
    for g in &got {
        assert_eq!(g.path, "/ci-events");
        assert_eq!(g.header("content-type"), Some("application/json"));
        let want = format!("sha256={}", hmac_hex(secret.as_bytes(), &g.body));
        assert_eq!(g.header("x-ci-signature"), Some(want.as_str()));
    }
    let seq: Vec<(String, String, String)> = by_id(&got)
        .iter()
        .map(|(_, v)| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["commit"].as_str().unwrap().to_string(),
                v["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let t = |ty: &str, c: &str, o: &str| (ty.to_string(), c.to_string(), o.to_string());
    assert_eq!(
        seq,
        vec![
            t("result", &pass, "pass"),
            t("result", &fail, "fail"),
            t("branch_broken", &fail, "fail"),
            t("result", &fixed, "pass"),
            t("branch_fixed", &fixed, "pass"),
        ],
        "what the receiver got:\n{}",
        pretty(&by_id(&got).iter().map(|(_, v)| v).collect::<Vec<_>>())
    );
    let first = got[0].json();
    assert_eq!(first["branch"], "main");
    assert_eq!(
        first["url"],
        format!("http://ci.example:8080/commits/{pass}")
    );
    assert_eq!(first["tests"]["total"].as_u64().map(|n| n > 0), Some(true));
    wait_for("the outbox to empty", SHORT, || outbox_empty(d.addr()));
}

#[test]
fn a_notification_in_flight_at_a_kill_9_is_delivered_after_the_restart_with_the_same_id_and_body() {
    let repo = TestRepo::new();
    let rx = Receiver::start(0, Mode::Hold);
    let url = rx.url("/hook");
    let port = free_port();
    let mut d = Dispatcher::start_on(port, &repo.dir("data"), &["--notify-url", &url]);
    let _r = runner(d.addr(), &repo, "r1");
    let shas = repo.commit_passing(4);
    let refs: Vec<&str> = shas.iter().map(String::as_str).collect();
    submit(d.addr(), &refs);
    wait_final(d.addr(), &refs, LONG);
    // The first result is in the receiver's hands; the dispatcher has not
    // heard back, so "delivered" is not in its log.
    let held = rx.wait("the first delivery", SHORT, |g| !g.is_empty());
    assert_eq!(held.len(), 1, "one delivery at a time per sink");
    let held_id = held[0].json()["id"].as_str().unwrap().to_string();
    d.kill9();
    rx.set_mode(Mode::Take);
    d.restart();

    rx.wait("all four results", LONG, |g| by_id(g).len() >= 4);
    wait_for("the outbox to empty", SHORT, || outbox_empty(d.addr()));
    let got = rx.got();
    let unique = by_id(&got);
    let commits: Vec<&str> = unique
        .iter()
        .map(|(_, v)| v["commit"].as_str().unwrap())
        .collect();
    assert_eq!(commits, refs, "each result once, in order");
    assert!(unique.iter().all(|(_, v)| v["type"] == "result"));
    let repeats = got
        .iter()
        .filter(|g| g.json()["id"].as_str() == Some(held_id.as_str()))
        .count();
    assert_eq!(
        repeats, 2,
        "the delivery cut off by the kill came again after the restart"
    );
    // Nothing else was sent twice.
    assert_eq!(
        got.len(),
        5,
        "{}",
        pretty(&got.iter().map(Got::json).collect::<Vec<_>>())
    );
}

#[test]
fn a_receiver_that_is_down_gets_everything_in_order_once_it_is_back() {
    let repo = TestRepo::new();
    // "Down": the port is held by a listener that closes every connection
    // at once (held, so no other test's server can take it meanwhile).
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = down.local_addr().unwrap().port();
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let closer = {
        let refusing = refusing.clone();
        std::thread::spawn(move || {
            for conn in down.incoming() {
                drop(conn);
                if !refusing.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
        })
    };
    let url = format!("http://127.0.0.1:{port}/down-then-up");
    let d = Dispatcher::start(&repo.dir("data"), &["--notify-url", &url]);
    let _r = runner(d.addr(), &repo, "r1");
    let shas = repo.commit_passing(5);
    let refs: Vec<&str> = shas.iter().map(String::as_str).collect();
    submit(d.addr(), &refs);
    wait_final(d.addr(), &refs, LONG);
    // Refused connections for a while: the notifier backs off and keeps
    // everything owed.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        outbox_empty(d.addr()).is_err(),
        "nothing can have been delivered"
    );
    refusing.store(false, std::sync::atomic::Ordering::SeqCst);
    // One more connection wakes the closer, which then lets the port go.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    closer.join().unwrap();
    let rx = Receiver::start(port, Mode::Take);
    let got = rx.wait("five results", LONG, |g| by_id(g).len() >= 5);
    let commits: Vec<String> = by_id(&got)
        .iter()
        .map(|(_, v)| v["commit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(commits, shas, "in order, each once");
    wait_for("the outbox to empty", SHORT, || outbox_empty(d.addr()));
}

#[test]
fn a_notification_refused_for_good_is_dropped_on_record_and_the_rest_go_on() {
    let repo = TestRepo::new();
    let rx = Receiver::start(0, Mode::RefuseOnce(422));
    let url = rx.url("/picky");
    let d = Dispatcher::start(&repo.dir("data"), &["--notify-url", &url]);
    let _r = runner(d.addr(), &repo, "r1");
    let shas = repo.commit_passing(2);
    let refs: Vec<&str> = shas.iter().map(String::as_str).collect();
    submit(d.addr(), &refs);
    wait_final(d.addr(), &refs, LONG);
    let got = rx.wait("both results tried", SHORT, |g| by_id(g).len() >= 2);
    // The refused one is not tried again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.got().len(), 2, "a refusal is final: {:?}", got.len());
    wait_for("the outbox to empty", SHORT, || outbox_empty(d.addr()));
    let replay = replay_json_online(d.addr());
    let dropped = events(&replay, "notification_dropped");
    assert_eq!(dropped.len(), 1, "{}", pretty(&dropped));
    assert_eq!(dropped[0]["reason"]["refused"]["status"], 422);
    assert_eq!(events(&replay, "notification_delivered").len(), 1);
}

#[test]
fn a_command_gets_the_event_on_its_standard_input() {
    let repo = TestRepo::new();
    let out = repo.root().join("events.jsonl");
    let script = format!(
        "python3 -c 'import sys; open({:?}, \"a\").write(sys.stdin.read() + \"\\n\")'",
        p(&out)
    );
    let d = Dispatcher::start(&repo.dir("data"), &["--notify-command", &script]);
    let _r = runner(d.addr(), &repo, "r1");
    let sha = repo.commit_failing();
    submit(d.addr(), &[&sha]);
    wait_final(d.addr(), &[&sha], LONG);
    let lines = wait_for("the command to run", SHORT, || {
        let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        let lines: Vec<Value> = parse_json_lines(&text)?;
        if lines.is_empty() {
            Err(text)
        } else {
            Ok(lines)
        }
    });
    assert_eq!(lines.len(), 1, "{}", pretty(&lines));
    assert_eq!(lines[0]["type"], "result");
    assert_eq!(lines[0]["commit"], sha.as_str());
    assert_eq!(lines[0]["outcome"], "fail");
    wait_for("the outbox to empty", SHORT, || outbox_empty(d.addr()));
}

/// A forge's (name, API base path, expected path prefix, auth header,
/// states posted for queued, running and passed).
type ForgeCase = (
    &'static str,
    &'static str,
    &'static str,
    (&'static str, &'static str),
    [&'static str; 3],
);

#[test]
fn each_forge_gets_pending_running_and_the_outcome_as_commit_statuses() {
    let cases: [ForgeCase; 3] = [
        (
            "github",
            "",
            "/repos/acme/app/statuses/",
            ("authorization", "Bearer status-token"),
            ["pending", "pending", "success"],
        ),
        (
            "gitea",
            "/api/v1",
            "/api/v1/repos/acme/app/statuses/",
            ("authorization", "token status-token"),
            ["pending", "pending", "success"],
        ),
        (
            "gitlab",
            "/api/v4",
            "/api/v4/projects/acme%2Fapp/statuses/",
            ("private-token", "status-token"),
            ["pending", "running", "success"],
        ),
    ];
    for (forge, base, prefix, (auth_name, auth_value), states) in cases {
        let repo = TestRepo::new();
        let token_file = repo.root().join("status-token");
        std::fs::write(&token_file, "status-token\n").unwrap();
        let rx = Receiver::start(0, Mode::Take);
        let api = rx.url(base);
        let d = Dispatcher::start(
            &repo.dir("data"),
            &[
                "--status-forge",
                forge,
                "--status-api",
                &api,
                "--status-repo",
                "acme/app",
                "--status-token-file",
                p(&token_file),
                "--public-url",
                "https://ci.example",
            ],
        );
        let sha = repo.commit_passing(1).remove(0);
        submit(d.addr(), &[&sha]);
        // Queued before any runner exists: "pending" is posted first.
        rx.wait(&format!("{forge}: pending"), SHORT, |g| !g.is_empty());
        let _r = runner(d.addr(), &repo, "r1");
        wait_final(d.addr(), &[&sha], LONG);
        let got = rx.wait(&format!("{forge}: three statuses"), SHORT, |g| g.len() >= 3);
        assert_eq!(got.len(), 3, "{forge}: one post per change");
        let mut seen_states = Vec::new();
        for g in &got {
            assert_eq!(g.path, format!("{prefix}{sha}"), "{forge}");
            assert_eq!(g.header(auth_name), Some(auth_value), "{forge}");
            let v = g.json();
            assert_eq!(
                v["target_url"],
                format!("https://ci.example/commits/{sha}"),
                "{forge}"
            );
            let name_field = if forge == "gitlab" { "name" } else { "context" };
            assert_eq!(v[name_field], "ci", "{forge}");
            seen_states.push(v["state"].as_str().unwrap().to_string());
        }
        assert_eq!(seen_states, states, "{forge}");
        let running = got[1].json();
        assert!(
            running["description"]
                .as_str()
                .unwrap()
                .contains("running on r1"),
            "{forge}: {running}"
        );
        wait_for("the outbox to empty", SHORT, || outbox_empty(d.addr()));
    }
}

#[test]
fn bad_notification_flags_get_one_clear_error() {
    let repo = TestRepo::new();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--notify-url", "ftp://example.com/x"],
            "only http and https",
        ),
        (
            &["--notify-url", "https://u:pw@example.com/x"],
            "--notify-secret-file",
        ),
        (
            &["--notify-command", "echo 'unbalanced"],
            "unbalanced quotes",
        ),
        (
            &["--status-forge", "gitlab", "--status-repo", "a/b"],
            "--status-api is needed",
        ),
    ];
    for (i, (flags, says)) in cases.iter().enumerate() {
        let data = repo.dir(&format!("data-{i}"));
        let mut proc = Dispatcher::spawn_proc("127.0.0.1:0", &data, flags, i);
        let status = proc.wait_exit(SHORT);
        let err = proc.stderr();
        assert_eq!(exit_code(&status), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?} should say {says:?}: {err}");
        assert!(!err.contains("pw@"), "a password is never shown: {err}");
    }
    // Every queue is bounded: so is the number of sinks.
    let urls: Vec<String> = (0..33)
        .map(|i| format!("http://127.0.0.1:9/sink-{i}"))
        .collect();
    let mut flags: Vec<&str> = Vec::new();
    for u in &urls {
        flags.extend(["--notify-url", u.as_str()]);
    }
    let mut proc = Dispatcher::spawn_proc("127.0.0.1:0", &repo.dir("data-many"), &flags, 9);
    let status = proc.wait_exit(SHORT);
    let err = proc.stderr();
    assert_eq!(exit_code(&status), Some(2), "{err}");
    assert!(
        err.contains("33 notification sinks given; at most 32"),
        "{err}"
    );
}

#[test]
fn with_several_repositories_each_jobs_status_goes_to_its_own_forge_repository() {
    let app = TestRepo::new();
    let lib = TestRepo::new();
    let token_file = app.root().join("status-token");
    std::fs::write(&token_file, "status-token\n").unwrap();
    let rx = Receiver::start(0, Mode::Take);
    let api = rx.url("");
    let app_flag = format!("acme/app={}", app.url());
    let lib_flag = format!("acme/lib={}", lib.url());
    let d = Dispatcher::start(
        &app.dir("data"),
        &[
            "--repository",
            &app_flag,
            "--repository",
            &lib_flag,
            "--status-forge",
            "github",
            "--status-api",
            &api,
            "--status-token-file",
            p(&token_file),
        ],
    );
    let a = app.commit_passing(1).remove(0);
    let l = lib.commit_failing();
    for (repo, sha) in [("acme/app", &a), ("acme/lib", &l)] {
        tools_expect(
            &[
                "submit",
                "--dispatcher",
                d.addr(),
                "--repository",
                repo,
                "--branch",
                "main",
                sha,
            ],
            0,
        );
    }
    let _r = runner_with(d.addr(), &app, "any", &["--any-repository"]);
    wait_final(d.addr(), &[&a, &l], LONG);
    let got = rx.wait("three statuses for each", SHORT, |g| g.len() >= 6);
    let last_state = |path: String| {
        let posts: Vec<&Got> = got.iter().filter(|g| g.path == path).collect();
        assert_eq!(posts.len(), 3, "{path}: pending, running, outcome");
        posts[2].json()["state"].as_str().unwrap().to_string()
    };
    assert_eq!(
        last_state(format!("/repos/acme/app/statuses/{a}")),
        "success"
    );
    assert_eq!(
        last_state(format!("/repos/acme/lib/statuses/{l}")),
        "failure"
    );
    wait_for("the outbox to empty", SHORT, || outbox_empty(d.addr()));
}
