//! Forge webhooks on the real dispatcher (`--http 127.0.0.1:0
//! --webhook-secret-file F`) with a real runner on a real git repository:
//! for GitHub, Gitea/Forgejo and GitLab, a signed push queues its commits
//! oldest first and they run and pass; a bad or missing signature is 401,
//! an event other than a push 422, an oversized body 413, a wrong content
//! type 415, a hostile payload 400, and none of them queues anything; a new
//! branch and a forced push are reported as the observer reports them; a
//! repeated delivery queues nothing new.
//!
//! The payloads are the checked-in fixtures of `tests/fixtures/webhooks/`
//! (each forge's documented push payload), with `ref`, `before`, `after`
//! and the commits filled in from the test repository, signed as the forge
//! signs them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-0123456789abcdef";
const ZERO: &str = "0000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forge {
    GitHub,
    Gitea,
    /// Gitea's endpoint with Forgejo's headers.
    Forgejo,
    GitLab,
}

const FORGES: [Forge; 4] = [Forge::GitHub, Forge::Gitea, Forge::Forgejo, Forge::GitLab];

impl Forge {
    fn path(self) -> &'static str {
        match self {
            Forge::GitHub => "/hooks/github",
            Forge::Gitea | Forge::Forgejo => "/hooks/gitea",
            Forge::GitLab => "/hooks/gitlab",
        }
    }

    fn fixture(self) -> Value {
        let name = match self {
            Forge::GitHub => "github-push.json",
            Forge::Gitea | Forge::Forgejo => "gitea-push.json",
            Forge::GitLab => "gitlab-push.json",
        };
        let path = format!(
            "{}/tests/fixtures/webhooks/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn event_header(self) -> &'static str {
        match self {
            Forge::GitHub => "X-GitHub-Event",
            Forge::Gitea => "X-Gitea-Event",
            Forge::Forgejo => "X-Forgejo-Event",
            Forge::GitLab => "X-Gitlab-Event",
        }
    }

    fn push_event(self) -> &'static str {
        match self {
            Forge::GitLab => "Push Hook",
            _ => "push",
        }
    }

    /// An event each forge sends that is not a push.
    fn other_event(self) -> &'static str {
        match self {
            Forge::GitHub => "pull_request",
            Forge::Gitea | Forge::Forgejo => "create",
            Forge::GitLab => "Tag Push Hook",
        }
    }

    /// The proof header for `body` under `secret`.
    fn signature(self, secret: &str, body: &[u8]) -> (&'static str, String) {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match self {
            Forge::GitHub => ("X-Hub-Signature-256", format!("sha256={hex}")),
            Forge::Gitea => ("X-Gitea-Signature", hex),
            Forge::Forgejo => ("X-Forgejo-Signature", hex),
            Forge::GitLab => ("X-Gitlab-Token", secret.to_string()),
        }
    }

    /// Gitea and Forgejo list the newest commit first.
    fn newest_first(self) -> bool {
        matches!(self, Forge::Gitea | Forge::Forgejo)
    }
}

/// An RFC 3339 time in UTC.
fn rfc3339(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The forge's push payload for `branch` moving from `before` to `after`,
/// listing `commits` (oldest first, read from `repo`).
fn push_payload(
    forge: Forge,
    repo: &TestRepo,
    branch: &str,
    before: &str,
    after: &str,
    commits: &[String],
) -> Vec<u8> {
    let mut v = forge.fixture();
    let template = v["commits"][0].clone();
    let mut listed: Vec<Value> = commits
        .iter()
        .map(|sha| {
            let c = repo
                .git()
                .find_commit(git2::Oid::from_str(sha).unwrap())
                .unwrap();
            let mut e = template.clone();
            e["id"] = json!(sha);
            e["message"] = json!(c.message().unwrap());
            e["timestamp"] = json!(rfc3339(c.time().seconds()));
            e["author"]["name"] = json!(c.author().name().unwrap());
            e["author"]["email"] = json!(c.author().email().unwrap());
            if forge == Forge::GitLab {
                e["title"] = json!(c.summary().unwrap());
            }
            e
        })
        .collect();
    if forge.newest_first() {
        listed.reverse();
    }
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["before"] = json!(before);
    v["after"] = json!(after);
    let head = listed
        .iter()
        .find(|c| c["id"] == after)
        .cloned()
        .unwrap_or(Value::Null);
    match forge {
        Forge::GitHub => {
            v["created"] = json!(before == ZERO);
            v["deleted"] = json!(after == ZERO);
            v["head_commit"] = head;
        }
        Forge::Gitea | Forge::Forgejo => {
            v["total_commits"] = json!(listed.len());
            v["head_commit"] = head;
        }
        Forge::GitLab => {
            v["checkout_sha"] = if after == ZERO {
                Value::Null
            } else {
                json!(after)
            };
            v["total_commits_count"] = json!(listed.len());
        }
    }
    v["commits"] = Value::Array(listed);
    serde_json::to_vec_pretty(&v).unwrap()
}

/// One HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {} {}", self.status, self.body))
    }
}

/// `POST path` with `headers` and `body` (Content-Length set unless
/// `chunked`); reads the answer to the end.
fn post_raw(
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    chunked: bool,
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SHORT)).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    // The server may answer (413) and close before the whole body is
    // written: a failed write is not the test's failure.
    let _ = s.write_all(head.as_bytes());
    if chunked {
        for part in body.chunks(64 * 1024) {
            if s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .is_err()
                || s.write_all(part).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
    } else {
        let _ = s.write_all(body);
    }
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response to POST {path}: {text:?}"));
    // Bodies here are small and sent whole; a chunked one is one chunk.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split_once("\r\n")
            .map(|(_, rest)| rest.rsplit_once("\r\n0\r\n").map_or(rest, |(b, _)| b))
            .unwrap_or(body)
            .to_string()
    } else {
        body.to_string()
    };
    Resp { status, body }
}

/// Delivers `body` as `forge` would: signed with `secret` (no signature
/// when `None`), with `event`, as JSON.
fn deliver(http: &str, forge: Forge, event: &str, secret: Option<&str>, body: &[u8]) -> Resp {
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        (forge.event_header(), event.to_string()),
        ("User-Agent", "webhook-test".to_string()),
    ];
    if let Some(secret) = secret {
        let (k, v) = forge.signature(secret, body);
        headers.push((k, v));
    }
    post_raw(http, forge.path(), &headers, body, false)
}

fn push(http: &str, forge: Forge, body: &[u8]) -> Resp {
    deliver(http, forge, forge.push_event(), Some(SECRET), body)
}

/// A dispatcher with `--http` and the webhook secret; its TCP and HTTP
/// addresses.
fn start_dispatcher(repo: &TestRepo) -> (Dispatcher, String) {
    let secret = repo.root().join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let d = Dispatcher::start(
        &repo.dir("dispatcher"),
        &["--http", "127.0.0.1:0", "--webhook-secret-file", p(&secret)],
    );
    let http = printed_http_addr(&d.proc);
    (d, http)
}

/// The commits the dispatcher has seen, in log order.
fn seen(addr: &str) -> Vec<String> {
    events(&replay_json_online(addr), "commit_seen")
        .iter()
        .map(|e| ev_commit(e).unwrap().to_string())
        .collect()
}

/// The branch's tip as the log says: its last commit seen or move.
fn tip_of(addr: &str, branch: &str) -> Option<String> {
    let mut tip = None;
    for e in replay_json_online(addr) {
        if e["branch"] == branch
            && matches!(e["type"].as_str(), Some("commit_seen" | "branch_moved"))
        {
            tip = e["commit"]
                .as_str()
                .or(e["tip"].as_str())
                .map(str::to_string);
        }
    }
    tip
}

/// What the observer's walk gives: commits reachable from `tip` and not
/// from `known`, oldest first (`git rev-list --reverse known..tip`).
fn walk(repo: &TestRepo, tip: &str, known: &str) -> Vec<String> {
    let mut w = repo.git().revwalk().unwrap();
    w.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)
        .unwrap();
    w.push(git2::Oid::from_str(tip).unwrap()).unwrap();
    w.hide(git2::Oid::from_str(known).unwrap()).unwrap();
    let mut out: Vec<String> = w.map(|o| o.unwrap().to_string()).collect();
    out.reverse();
    out
}

/// The passing tests and a new counter value, on `branch`.
fn commit_passing_on(repo: &TestRepo, branch: &str, n: usize, label: &str) -> Vec<String> {
    let mut files = data_files("passing");
    files.push(("counter.txt".to_owned(), String::new()));
    (0..n)
        .map(|i| {
            files.last_mut().unwrap().1 = format!("{label} {i}\n");
            let f: Vec<(&str, &str)> = files
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            repo.commit_on(branch, &f, &format!("{label} commit {i}\n\nwith a body"))
        })
        .collect()
}

#[test]
fn each_forge_queues_a_signed_push_oldest_first_and_a_runner_runs_it() {
    let repo = TestRepo::new();
    let (d, http) = start_dispatcher(&repo);
    let base = repo.commit_passing(1)[0].clone();
    let _runner = runner(d.addr(), &repo, "r1");

    let mut before = base.clone();
    let mut all = Vec::new();
    for forge in FORGES {
        let label = format!("{forge:?}");
        let shas = commit_passing_on(&repo, "main", 3, &label);
        let after = shas.last().unwrap().clone();
        let body = push_payload(forge, &repo, "main", &before, &after, &shas);
        let r = push(&http, forge, &body);
        assert_eq!(r.status, 202, "{forge:?}: {}", r.body);
        let v = r.json();
        assert_eq!(v["accepted"], 3, "{forge:?}: {v}");
        assert_eq!(v["duplicates"], 0, "{forge:?}: {v}");
        assert_eq!(v["commits"], json!(shas), "{forge:?}: oldest first: {v}");
        assert_eq!(v["tip"], json!(after), "{forge:?}: {v}");

        // The same delivery again (forges retry): nothing new.
        let r = push(&http, forge, &body);
        assert_eq!(r.status, 202, "{forge:?}: {}", r.body);
        assert_eq!(r.json()["accepted"], 0, "{forge:?}: {}", r.body);
        assert_eq!(r.json()["duplicates"], 3, "{forge:?}: {}", r.body);

        all.extend(shas);
        before = after;
    }
    assert_eq!(seen(d.addr()), all, "queued oldest first, each once");

    let results = wait_final(d.addr(), &all, LONG);
    for sha in &all {
        let r = result_for(&results, sha).unwrap();
        assert_eq!(r["outcome"], "pass", "{}", pretty(r));
        assert_eq!(r["branch"], "main", "{}", pretty(r));
        assert_eq!(r["attempts"], 1, "{}", pretty(r));
    }
    // The payload's author and subject are kept with the commit.
    let last = result_for(&results, all.last().unwrap()).unwrap();
    assert_eq!(last["subject"], "GitLab commit 2", "{}", pretty(last));
    assert_eq!(
        last["author"],
        "CI Test <ci-test@example.invalid>",
        "{}",
        pretty(last)
    );
    assert_eq!(tip_of(d.addr(), "main").as_deref(), Some(before.as_str()));

    // GitHub's ping, when a hook is made.
    let r = deliver(
        &http,
        Forge::GitHub,
        "ping",
        Some(SECRET),
        br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["message"].as_str().unwrap().contains("pong"),
        "{}",
        r.body
    );
}

#[test]
fn bad_signatures_other_events_and_hostile_bodies_queue_nothing() {
    let repo = TestRepo::new();
    let (d, http) = start_dispatcher(&repo);
    let base = repo.commit_passing(1)[0].clone();
    let shas = commit_passing_on(&repo, "main", 2, "x");

    for forge in FORGES {
        let body = push_payload(forge, &repo, "main", &base, &shas[1], &shas);
        // Missing signature.
        let r = deliver(&http, forge, forge.push_event(), None, &body);
        assert_eq!(r.status, 401, "{forge:?}: {}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("--webhook-secret-file"),
            "{}",
            r.body
        );
        // Wrong secret.
        let r = deliver(
            &http,
            forge,
            forge.push_event(),
            Some("another-secret-0123456789"),
            &body,
        );
        assert_eq!(r.status, 401, "{forge:?}: {}", r.body);
        // Right secret, body changed after signing.
        if forge != Forge::GitLab {
            let (k, v) = forge.signature(SECRET, &body);
            let mut tampered = body.clone();
            tampered.push(b' ');
            let headers = [
                ("Content-Type", "application/json".to_string()),
                (forge.event_header(), forge.push_event().to_string()),
                (k, v),
            ];
            let r = post_raw(&http, forge.path(), &headers, &tampered, false);
            assert_eq!(r.status, 401, "{forge:?}: {}", r.body);
        }
        // An event other than a push.
        let r = deliver(&http, forge, forge.other_event(), Some(SECRET), &body);
        assert_eq!(r.status, 422, "{forge:?}: {}", r.body);
        assert_eq!(r.json()["event"], forge.other_event(), "{}", r.body);
        // A wrong content type (GitHub's form encoding).
        let (k, v) = forge.signature(SECRET, &body);
        let headers = [
            (
                "Content-Type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            (forge.event_header(), forge.push_event().to_string()),
            (k, v),
        ];
        let r = post_raw(&http, forge.path(), &headers, &body, false);
        assert_eq!(r.status, 415, "{forge:?}: {}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{}",
            r.body
        );
        // A tag push: ignored.
        let mut tag: Value = serde_json::from_slice(&body).unwrap();
        tag["ref"] = json!("refs/tags/v1.0");
        tag["before"] = json!(ZERO);
        let r = push(&http, forge, &serde_json::to_vec(&tag).unwrap());
        assert_eq!(r.status, 200, "{forge:?}: {}", r.body);
        assert!(r.json()["ignored"].is_string(), "{}", r.body);
        // A branch deletion: ignored.
        let gone = push_payload(forge, &repo, "main", &shas[1], ZERO, &[]);
        let r = push(&http, forge, &gone);
        assert_eq!(r.status, 200, "{forge:?}: {}", r.body);
        assert!(r.json()["ignored"].is_string(), "{}", r.body);
    }

    // Oversized, declared (refused before it is read) and chunked (refused
    // while it is read).
    let big = vec![b' '; 8 * 1024 * 1024 + 1];
    for chunked in [false, true] {
        let (k, v) = Forge::GitHub.signature(SECRET, &big);
        let headers = [
            ("Content-Type", "application/json".to_string()),
            ("X-GitHub-Event", "push".to_string()),
            (k, v),
        ];
        let r = post_raw(&http, "/hooks/github", &headers, &big, chunked);
        assert_eq!(r.status, 413, "chunked {chunked}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("MiB"),
            "{}",
            r.body
        );
    }

    // Hostile bodies, correctly signed: 400 each.
    let good: Value = serde_json::from_slice(&push_payload(
        Forge::GitHub,
        &repo,
        "main",
        &base,
        &shas[1],
        &shas,
    ))
    .unwrap();
    let text = serde_json::to_string(&good).unwrap();
    let mut hostile: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", text.as_bytes()[..text.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("not json", b"payload=%7B%7D".to_vec()),
        ("an array", b"[1, 2, 3]".to_vec()),
        ("deep nesting", "[".repeat(100_000).into_bytes()),
    ];
    let mut with = |what: &'static str, f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        hostile.push((what, serde_json::to_vec(&v).unwrap()));
    };
    with("a huge message", &|v: &mut Value| {
        v["commits"][0]["message"] = json!("m".repeat(3 << 20))
    });
    with("a huge author", &|v: &mut Value| {
        v["commits"][0]["author"]["name"] = json!("a".repeat(100_000))
    });
    with("a huge ref", &|v: &mut Value| {
        v["ref"] = json!(format!("refs/heads/{}", "b".repeat(100_000)))
    });
    with("commits not a list", &|v: &mut Value| {
        v["commits"] = json!("all of them")
    });
    with("ref a number", &|v: &mut Value| v["ref"] = json!(42));
    with("after an object", &|v: &mut Value| {
        v["after"] = json!({"id": "x"})
    });
    with("a non-hex id", &|v: &mut Value| {
        v["commits"][0]["id"] = json!("z".repeat(40))
    });
    with("a short id", &|v: &mut Value| {
        v["commits"][1]["id"] = json!("abc1234")
    });
    with("a non-hex after", &|v: &mut Value| {
        v["after"] = json!("g".repeat(40))
    });
    with("no after", &|v: &mut Value| {
        v.as_object_mut().unwrap().remove("after");
    });
    for (what, body) in &hostile {
        let r = push(&http, Forge::GitHub, body);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{what}: {}", r.body);
    }

    // Unknown forge, wrong method.
    let r = post_raw(&http, "/hooks/bitbucket", &[], b"{}", false);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("/hooks/github"),
        "{}",
        r.body
    );
    let (status, body) = http_get(&http, "/hooks/github", None).unwrap();
    assert_eq!(status, 405, "{body}");

    // Nothing was queued, and the dispatcher still serves.
    assert_eq!(seen(d.addr()), Vec::<String>::new());
    let (status, body) = http_get(&http, "/api/v1/status", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let body = push_payload(Forge::GitHub, &repo, "main", &base, &shas[1], &shas);
    let r = push(&http, Forge::GitHub, &body);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(seen(d.addr()), shas);
}

#[test]
fn a_new_branch_and_a_forced_push_are_reported_as_the_observer_reports_them() {
    let repo = TestRepo::new();
    let (d, http) = start_dispatcher(&repo);
    let base = repo.commit_passing(2);
    let main_tip = base[1].clone();
    let forge = Forge::GitHub;
    let r = push(
        &http,
        forge,
        &push_payload(forge, &repo, "main", &base[0], &main_tip, &base[1..]),
    );
    assert_eq!(r.status, 202, "{}", r.body);

    for forge in FORGES {
        let b = format!("feature-{forge:?}").to_lowercase();
        // A new branch at a known commit: the forge lists no commit; the
        // observer reports the tip, which is known: nothing queued, the
        // branch's tip recorded.
        repo.branch(&b);
        let r = push(
            &http,
            forge,
            &push_payload(forge, &repo, &b, ZERO, &main_tip, &[]),
        );
        assert_eq!(r.status, 202, "{forge:?}: {}", r.body);
        assert_eq!(r.json()["accepted"], 0, "{}", r.body);
        assert_eq!(r.json()["duplicates"], 1, "{}", r.body);
        assert_eq!(
            tip_of(d.addr(), &b).as_deref(),
            Some(main_tip.as_str()),
            "{forge:?}"
        );

        // New commits on it, then history rewritten under them (a forced
        // push): the commits reachable from the new tip and not from the
        // old one, oldest first, and the tip moves.
        let first = commit_passing_on(&repo, &b, 2, &format!("{b} first"));
        let r = push(
            &http,
            forge,
            &push_payload(forge, &repo, &b, &main_tip, &first[1], &first),
        );
        assert_eq!(r.json()["commits"], json!(first), "{}", r.body);
        let old_tip = first[1].clone();
        repo.git()
            .reference(
                &format!("refs/heads/{b}"),
                git2::Oid::from_str(&main_tip).unwrap(),
                true,
                "reset",
            )
            .unwrap();
        let rewritten = commit_passing_on(&repo, &b, 3, &format!("{b} rewritten"));
        let new_tip = rewritten[2].clone();
        let listed = walk(&repo, &new_tip, &old_tip);
        assert_eq!(listed, rewritten, "what the observer walks");
        let mut forced: Value =
            serde_json::from_slice(&push_payload(forge, &repo, &b, &old_tip, &new_tip, &listed))
                .unwrap();
        if forge == Forge::GitHub {
            forced["forced"] = json!(true);
        }
        let r = push(&http, forge, &serde_json::to_vec(&forced).unwrap());
        assert_eq!(r.status, 202, "{forge:?}: {}", r.body);
        assert_eq!(
            r.json()["commits"],
            json!(rewritten),
            "{forge:?}: {}",
            r.body
        );
        assert_eq!(
            tip_of(d.addr(), &b).as_deref(),
            Some(new_tip.as_str()),
            "{forge:?}"
        );

        // Forced back to the first history's tip: no commit is new (the
        // forge lists none, the observer's walk is empty); the tip moves.
        assert!(
            walk(&repo, &old_tip, &new_tip)
                .iter()
                .all(|c| first.contains(c))
        );
        repo.git()
            .reference(
                &format!("refs/heads/{b}"),
                git2::Oid::from_str(&old_tip).unwrap(),
                true,
                "back",
            )
            .unwrap();
        let r = push(
            &http,
            forge,
            &push_payload(forge, &repo, &b, &new_tip, &old_tip, &[]),
        );
        assert_eq!(r.status, 202, "{forge:?}: {}", r.body);
        assert_eq!(r.json()["accepted"], 0, "{}", r.body);
        assert_eq!(
            tip_of(d.addr(), &b).as_deref(),
            Some(old_tip.as_str()),
            "{forge:?}"
        );

        // A new branch with commits of its own: its tip alone, as the
        // observer (which has no base to walk from) and the post-receive
        // hook report it, whatever the forge lists.
        let nb = format!("{b}-new");
        repo.branch(&nb);
        let own = commit_passing_on(&repo, &nb, 2, &nb);
        let r = push(
            &http,
            forge,
            &push_payload(forge, &repo, &nb, ZERO, &own[1], &own),
        );
        assert_eq!(r.status, 202, "{forge:?}: {}", r.body);
        assert_eq!(
            r.json()["commits"],
            json!([own[1]]),
            "{forge:?}: {}",
            r.body
        );
        assert_eq!(r.json()["accepted"], 1, "{forge:?}: {}", r.body);
        assert_eq!(
            tip_of(d.addr(), &nb).as_deref(),
            Some(own[1].as_str()),
            "{forge:?}"
        );
    }
}

#[test]
fn the_secret_file_is_required_for_hooks_and_checked_at_start() {
    let repo = TestRepo::new();
    // Without --webhook-secret-file: 404 saying how to turn hooks on.
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--http", "127.0.0.1:0"]);
    let http = printed_http_addr(&d.proc);
    let r = deliver(&http, Forge::GitHub, "push", Some(SECRET), b"{}");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("--webhook-secret-file"),
        "{}",
        r.body
    );
    drop(d);

    // An empty, unreadable or too short secret file stops the start.
    let empty = repo.root().join("empty.secret");
    std::fs::write(&empty, "\n").unwrap();
    let short = repo.root().join("short.secret");
    std::fs::write(&short, "abc\n").unwrap();
    let missing = repo.root().join("missing.secret");
    let cases = [
        (&empty, "is empty"),
        (&missing, "cannot read"),
        (&short, "shorter than"),
    ];
    for (n, (file, says)) in cases.into_iter().enumerate() {
        let dir = repo.dir(&format!(
            "d-{}",
            file.file_name().unwrap().to_string_lossy()
        ));
        let mut proc = Dispatcher::spawn_proc(
            "127.0.0.1:0",
            &dir,
            &["--http", "127.0.0.1:0", "--webhook-secret-file", p(file)],
            n + 1,
        );
        let status = proc.wait_exit(SHORT);
        assert_eq!(exit_code(&status), Some(2), "{}", proc.report());
        let err = proc.stderr();
        assert!(err.contains(says) && err.contains(p(file)), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // Without --http there is nowhere to serve hooks: a usage error.
    let mut proc = Dispatcher::spawn_proc(
        "127.0.0.1:0",
        &repo.dir("d-no-http"),
        &["--webhook-secret-file", p(&empty)],
        9,
    );
    let status = proc.wait_exit(SHORT);
    assert_eq!(exit_code(&status), Some(2), "{}", proc.report());
    assert!(proc.stderr().contains("--http"), "{}", proc.stderr());
}
