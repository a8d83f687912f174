//! The dashboard on the real dispatcher (`--http 127.0.0.1:0`) with a real
//! runner and observer on real git repositories: pages and API for a known
//! history (fields, paging with the cursor, filters, escaping), the live
//! log over server-sent events (lines before the job ends, the same bytes
//! as `ci-tools logs`, `Last-Event-ID` resumes), cancel and retry, access
//! with tokens (bearer, login cookie, CSRF, cross-site), and hostile input
//! (malformed requests, huge heads and bodies, thousands of idle
//! connections and live-log subscribers, a subscriber that stops reading)
//! while the TCP port and job cycles carry on and memory stays bounded.
//!
//! Requests are written by hand over `TcpStream` so that nothing a client
//! library would fix up hides what the server does.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        let want = format!("{}:", name.to_ascii_lowercase());
        self.head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with(&want)
                .then(|| l[want.len()..].trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends `raw` (a whole request) and reads the answer to the end.
fn send_raw(addr: &str, raw: &[u8]) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(SHORT)).unwrap();
    s.write_all(raw).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    Ok(Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `METHOD path` with `headers` and `body`, Host set to `addr`.
fn req(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    send_raw(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn get(addr: &str, path: &str) -> Resp {
    req(addr, "GET", path, &[], "")
}

fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    req(addr, "GET", path, headers, "")
}

/// The CSRF token a page carries for its script.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"ci-csrf\" content=\"")
        .unwrap_or_else(|| panic!("no csrf meta in {page}"));
    let rest = &page[at + "name=\"ci-csrf\" content=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The commit's view from the API.
fn api_commit(http: &str, sha: &str, auth: &[(&str, &str)]) -> Value {
    let r = get_with(http, &format!("/api/v1/commits/{sha}"), auth);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn wait_outcome(http: &str, sha: &str, auth: &[(&str, &str)], want: &str) -> Value {
    wait_for(&format!("{} to be {want}", short(sha)), LONG, || {
        let r = get_with(http, &format!("/api/v1/commits/{sha}"), auth);
        if r.status == 404 {
            return Err(r.body);
        }
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        if v["outcome"] == want {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
}

/// The count of `needle` in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn pages_and_api_show_a_known_history() {
    let repo = TestRepo::new();
    let first = repo.commit_passing(1).remove(0);
    let hostile = repo.commit(
        &[("notes.txt", "x\n")],
        "<script>alert(1)</script> & \"quotes\"",
    );
    let second = repo.commit_passing(1).remove(0);
    let broken = repo.commit_failing();
    let all = [&first, &hostile, &second, &broken];
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--http", "127.0.0.1:0"]);
    let addr = d.addr().to_string();
    let http = printed_http_addr(&d.proc);
    // Submitted oldest first (no observer: it would report the tip first).
    let mut submit = vec!["submit", "--dispatcher", &addr, "--branch", "main"];
    submit.extend(all.iter().map(|s| s.as_str()));
    tools_expect(&submit, 0);
    let _runner = runner(&addr, &repo, "r1");
    wait_final(&addr, &all, LONG);

    // The API: every field of `results --json`, newest first.
    let r = get(&http, "/api/v1/commits");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("application/json")
    );
    let page = r.json();
    let commits = page["commits"].as_array().unwrap().clone();
    assert_eq!(page["next"], Value::Null, "{page}");
    let shas: Vec<&str> = commits
        .iter()
        .map(|c| c["commit"].as_str().unwrap())
        .collect();
    assert_eq!(
        shas,
        vec![&broken[..], &second[..], &hostile[..], &first[..]]
    );
    let mut tools_view = results_json(&addr);
    tools_view.reverse();
    assert_eq!(commits, tools_view, "the API and `results --json` disagree");
    for key in [
        "commit",
        "branch",
        "outcome",
        "attempts",
        "runner",
        "exit_code",
        "duration_ms",
    ] {
        assert!(
            commits[0].get(key).is_some(),
            "{key} missing: {}",
            commits[0]
        );
    }
    assert_eq!(commits[0]["outcome"], "fail");
    assert_eq!(commits[1]["outcome"], "pass");

    // Paging with the cursor gives the same commits, each once.
    let mut paged = Vec::new();
    let mut path = "/api/v1/commits?limit=3".to_string();
    loop {
        let p = get(&http, &path).json();
        paged.extend(p["commits"].as_array().unwrap().iter().cloned());
        match p["next"].as_str() {
            Some(c) => path = format!("/api/v1/commits?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, commits);
    // Filters.
    let fails = get(&http, "/api/v1/commits?outcome=fail&repo=any").json();
    assert_eq!(fails["commits"].as_array().unwrap().len(), 1, "{fails}");
    let main = get(&http, "/api/v1/commits?branch=main").json();
    assert_eq!(main["commits"].as_array().unwrap().len(), 4, "{main}");
    let none = get(&http, "/api/v1/commits?branch=nowhere").json();
    assert_eq!(none["commits"].as_array().unwrap().len(), 0, "{none}");
    for bad in [
        "/api/v1/commits?outcome=bogus",
        "/api/v1/commits?limit=0",
        "/api/v1/commits?limit=501",
        "/api/v1/commits?limit=x",
        "/api/v1/commits?cursor=-1",
        "/api/v1/history?from=x",
    ] {
        let r = get(&http, bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{bad}: {}", r.body);
    }

    // The commits page: rows, escaping, filters, paging, the nav.
    let r = get(&http, "/");
    assert_eq!(r.status, 200, "{}", r.body);
    let html = &r.body;
    assert!(html.contains("<table id=\"commits\">"), "{html}");
    assert_eq!(count(html, "<tr class=\"commit outcome-"), 4, "{html}");
    for sha in all {
        assert!(html.contains(&format!("data-sha=\"{sha}\"")), "{sha}");
    }
    assert!(html.contains(&format!(
        "<tr class=\"commit outcome-fail\" data-sha=\"{broken}\"><td class=\"outcome\">"
    )));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"));
    assert!(!html.contains("<script>alert"), "{html}");
    for needle in [
        "<form id=\"filters\"",
        "<select name=\"branch\">",
        "<select name=\"outcome\">",
        "href=\"/runners\"",
        "href=\"/history\"",
    ] {
        assert!(html.contains(needle), "{needle} missing");
    }
    let r = get(&http, "/?limit=2&outcome=pass");
    assert_eq!(count(&r.body, "<tr class=\"commit outcome-pass\""), 2);
    assert!(
        r.body.contains("<a id=\"next\" href=\"/?cursor="),
        "{}",
        r.body
    );
    // Security headers on every answer.
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(r.header("referrer-policy").is_some());

    // A commit's page: the break, the timeline, the command, the output.
    let r = get(&http, &format!("/commits/{broken}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let html = &r.body;
    assert!(html.contains("<span id=\"outcome\" class=\"badge outcome-fail\">fail</span>"));
    assert!(html.contains("<p id=\"broke\">"), "{html}");
    assert!(html.contains(&second[..12]), "the previous commit is named");
    assert!(html.contains("<ol id=\"timeline\">"));
    assert!(html.contains("assigned to runner r1"), "{html}");
    assert!(html.contains("result fail"), "{html}");
    assert!(html.contains("<code id=\"command\">"), "{html}");
    let command = html.split("<code id=\"command\">").nth(1).unwrap();
    let command = &command[..command.find("</code>").unwrap()];
    assert!(command.contains("unittest"), "command: {command}");
    assert!(html.contains("<pre id=\"log\""));
    assert!(
        html.contains("<button id=\"retry\" type=\"button\">"),
        "{html}"
    );
    assert!(html.contains("<button id=\"cancel\" type=\"button\" disabled>"));
    let r = get(&http, &format!("/commits/{second}"));
    assert!(!r.body.contains("id=\"broke\""));
    // The API's view of it: the same fields plus the timeline.
    let v = api_commit(&http, &broken, &[]);
    assert_eq!(v["outcome"], "fail");
    assert_eq!(v["broke"]["previous"], second.as_str());
    let types: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"job_assigned") && types.contains(&"result"),
        "{types:?}"
    );
    // A short id redirects; a bad one is 400, an unknown one 404.
    let r = get(&http, &format!("/commits/{}", &broken[..8]));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some(format!("/commits/{broken}")));
    assert_eq!(get(&http, "/commits/zzz").status, 400);
    assert_eq!(get(&http, "/commits/..%2F..%2Fetc").status, 400);
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    assert_eq!(get(&http, &format!("/commits/{unknown}")).status, 404);
    let r = get(&http, &format!("/api/v1/commits/{unknown}"));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());

    // Runners and history.
    let r = get(&http, "/runners");
    assert!(r.body.contains("<table id=\"runners\">"), "{}", r.body);
    assert!(
        r.body.contains("<tr class=\"runner\" data-name=\"r1\">"),
        "{}",
        r.body
    );
    let runners = get(&http, "/api/v1/runners").json();
    assert_eq!(runners["runners"][0]["name"], "r1", "{runners}");
    let status = get(&http, "/api/v1/status").json();
    assert_eq!(status["runners"][0]["name"], "r1", "{status}");
    let replay = replay_json_online(&addr);
    let h = get(&http, "/api/v1/history?from=1&limit=3").json();
    let events = h["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    for (a, b) in events.iter().zip(&replay) {
        assert_eq!((&a["seq"], &a["type"]), (&b["seq"], &b["type"]));
    }
    assert_eq!(h["next"], 4);
    let r = get(&http, "/history?from=2&limit=2");
    assert!(r.body.contains("<table id=\"history\">"));
    assert!(
        r.body
            .contains("<a id=\"next\" href=\"/history?from=4&amp;limit=2\">"),
        "{}",
        r.body
    );
    assert!(r.body.contains("<a id=\"prev\""));

    // Without tokens only loopback names are answered (DNS rebinding).
    let r = get_with(&http, "/", &[("Host", "evil.example:80")]);
    assert!(
        r.status == 421 || r.status == 403,
        "{} {}",
        r.status,
        r.body
    );

    // Retry through the API: cross-site refused, CSRF needed, then done.
    let page = get(&http, &format!("/commits/{broken}")).body;
    let csrf = csrf_of(&page);
    let path = format!("/api/v1/commits/{broken}/retry");
    let r = req(
        &http,
        "POST",
        &path,
        &[("Origin", "http://evil.example")],
        "",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = req(
        &http,
        "POST",
        &path,
        &[("Sec-Fetch-Site", "cross-site"), ("X-CI-CSRF", &csrf)],
        "",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = req(&http, "POST", &path, &[], "");
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    let r = req(&http, "POST", &path, &[("X-CI-CSRF", "wrong")], "");
    assert_eq!(r.status, 403, "{}", r.body);
    let origin = format!("http://{http}");
    let r = req(
        &http,
        "POST",
        &path,
        &[("X-CI-CSRF", &csrf), ("Origin", &origin)],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["message"].is_string());
    let v = wait_for("the retry to run", LONG, || {
        let v = api_commit(&http, &broken, &[]);
        if v["attempts"] == 2 && v["outcome"] == "fail" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(v["attempts"], 2);
    // Cancelling a finished job is a conflict.
    let r = req(
        &http,
        "POST",
        &format!("/api/v1/commits/{broken}/cancel"),
        &[("X-CI-CSRF", &csrf)],
        "",
    );
    assert_eq!(r.status, 409, "{}", r.body);
    // GET on an action is not allowed.
    assert_eq!(get(&http, &path).status, 405);
}

const LIVE_TEST: &str = r#"import time
import unittest


class TestLive(unittest.TestCase):
    def test_prints_slowly(self):
        for i in range(8):
            print("line %d \x1b[31mred\x1b[0m </pre><b>bold</b> é" % i, flush=True)
            time.sleep(0.4)
"#;

const SLOW_TEST: &str = r#"import time
import unittest


class TestLong(unittest.TestCase):
    def test_waits(self):
        print("started", flush=True)
        time.sleep(120)
"#;

/// Events read from a live log: message text joined as the format says,
/// the ids seen, and when the first message and the end arrived.
struct Sse {
    text: String,
    ids: Vec<u64>,
    first_data: Option<Instant>,
    end: Option<(Instant, Value)>,
}

/// Opens the live log (HTTP/1.0: the body is the raw stream) and reads it
/// until `end` or EOF.
fn read_sse(http: &str, path: &str, headers: &[(&str, &str)]) -> Sse {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut raw = format!("GET {path} HTTP/1.0\r\nHost: {http}\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    s.write_all(raw.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if line.to_ascii_lowercase().starts_with("content-type:") {
            assert!(line.contains("text/event-stream"), "{line}");
        }
    }
    let mut out = Sse {
        text: String::new(),
        ids: Vec::new(),
        first_data: None,
        end: None,
    };
    let (mut kind, mut data): (Option<String>, Vec<String>) = (None, Vec::new());
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return out;
        }
        assert!(
            !line.trim_end_matches('\n').contains('\r'),
            "raw CR: {line:?}"
        );
        let l = line.strip_suffix('\n').unwrap_or(&line);
        if l.is_empty() {
            match kind.take().as_deref() {
                None if !data.is_empty() => {
                    out.first_data.get_or_insert_with(Instant::now);
                    out.text.push_str(&data.join("\n"));
                }
                Some("end") => {
                    let v = serde_json::from_str(&data.join("\n")).unwrap();
                    out.end = Some((Instant::now(), v));
                    return out;
                }
                _ => {}
            }
            data.clear();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data.push(v.to_string());
        } else if let Some(v) = l.strip_prefix("id: ") {
            out.ids.push(v.parse().unwrap());
        } else if let Some(v) = l.strip_prefix("event: ") {
            kind = Some(v.to_string());
        }
    }
}

#[test]
fn live_log_streams_lines_while_the_job_runs() {
    let repo = TestRepo::new();
    let live = repo.commit(&[("tests/test_live.py", LIVE_TEST)], "live output");
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--http", "127.0.0.1:0"]);
    let addr = d.addr().to_string();
    let http = printed_http_addr(&d.proc);
    let _observer = observer(&addr, &repo, "main");
    // Follow from before it starts: the stream waits while it is queued.
    wait_outcome(&http, &live, &[], "pending");
    let reader = {
        let http = http.clone();
        let live = live.clone();
        std::thread::spawn(move || read_sse(&http, &format!("/api/v1/commits/{live}/log"), &[]))
    };
    let _runner = runner(&addr, &repo, "r1");
    let sse = reader.join().unwrap();
    let first = sse.first_data.expect("no output arrived");
    let (end_at, view) = sse.end.expect("no end event");
    assert_eq!(view["outcome"], "pass", "{view}");
    assert!(
        end_at.duration_since(first) > Duration::from_millis(1500),
        "the output came all at once at the end ({:?} before it)",
        end_at.duration_since(first)
    );
    // The same bytes as `ci-tools logs`.
    let logs = tools_expect(&["logs", "--dispatcher", &addr, &live], 0);
    let want = String::from_utf8_lossy(&logs.stdout).to_string();
    assert_eq!(sse.text, want);
    assert!(want.contains("line 7"), "{want}");
    // Ids rise to the byte count.
    assert!(sse.ids.windows(2).all(|w| w[0] < w[1]), "{:?}", sse.ids);
    assert_eq!(sse.ids.last().copied(), Some(want.len() as u64));
    // Resuming from any id gives the rest, no gap, nothing twice.
    for id in [0, sse.ids[0], sse.ids[sse.ids.len() / 2], want.len() as u64] {
        let h = id.to_string();
        let again = read_sse(
            &http,
            &format!("/api/v1/commits/{live}/log"),
            &[("Last-Event-ID", &h)],
        );
        assert_eq!(
            again.text.as_bytes(),
            &want.as_bytes()[id as usize..],
            "from {id}"
        );
        assert!(again.end.is_some());
        let q = read_sse(&http, &format!("/api/v1/commits/{live}/log?from={id}"), &[]);
        assert_eq!(q.text, again.text);
    }
    // The page shows it as text: ANSI stripped, markup escaped.
    let page = get(&http, &format!("/commits/{live}")).body;
    let log = page.split("<pre id=\"log\"").nth(1).unwrap();
    let log = &log[..log.find("</pre>").unwrap()];
    assert!(
        log.contains("line 0 red &lt;/pre&gt;&lt;b&gt;bold&lt;/b&gt; é"),
        "{log}"
    );
    assert!(
        !page.contains('\u{1b}'),
        "an escape sequence reached the page"
    );
    assert!(page.contains("data-live=\"0\""));
    // An unknown commit's log is 404, a bad one 400.
    let r = get(
        &http,
        "/api/v1/commits/0123456789abcdef0123456789abcdef01234567/log",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(get(&http, "/api/v1/commits/nothex/log").status, 400);

    // Cancel a running job through the API: its stream ends, cancelled.
    let slow = repo.commit(&[("tests/test_live.py", SLOW_TEST)], "slow");
    let running = wait_outcome(&http, &slow, &[], "running");
    assert_eq!(running["runner"], "r1");
    let reader = {
        let http = http.clone();
        let slow = slow.clone();
        std::thread::spawn(move || read_sse(&http, &format!("/api/v1/commits/{slow}/log"), &[]))
    };
    wait_for("started in the output", LONG, || {
        let p = get(&http, &format!("/commits/{slow}")).body;
        if p.contains("started") {
            Ok(())
        } else {
            Err(p)
        }
    });
    let page = get(&http, &format!("/commits/{slow}")).body;
    assert!(page.contains("data-live=\"1\""));
    assert!(
        page.contains("<button id=\"cancel\" type=\"button\">"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let r = req(
        &http,
        "POST",
        &format!("/api/v1/commits/{}/cancel", &slow[..10]),
        &[("X-CI-CSRF", &csrf)],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sse = reader.join().unwrap();
    assert_eq!(sse.end.expect("no end").1["outcome"], "cancelled");
    assert!(
        sse.text.starts_with("$ ") || sse.text.contains("started"),
        "{}",
        sse.text
    );
    wait_outcome(&http, &slow, &[], "cancelled");
}

fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "runner: runner-secret-0123456789\nobserver: observer-secret-0123456789\n\
         tool: tool-secret-0123456789\ntool-write: tool-write-secret-0123456789\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    tokens
}

/// The `ci_session=VALUE` of a `Set-Cookie` answer.
fn session_of(r: &Resp) -> String {
    let c = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {}", r.head));
    assert!(c.contains("HttpOnly"), "{c}");
    assert!(c.contains("SameSite=Strict"), "{c}");
    assert!(c.contains("Path=/"), "{c}");
    c.split(';').next().unwrap().trim().to_string()
}

#[test]
fn tokens_guard_reads_and_actions() {
    let repo = TestRepo::new();
    let sha = repo.commit_passing(1).remove(0);
    let tokens = token_file(repo.root());
    let d = Dispatcher::start(
        &repo.dir("dispatcher"),
        &["--http", "127.0.0.1:0", "--token-file", p(&tokens)],
    );
    let addr = d.addr().to_string();
    let http = printed_http_addr(&d.proc);
    // No runner: the commit stays queued.
    let _observer = observer_with(&addr, &repo, "main", &["--token-file", p(&tokens)]);
    let read = [("Authorization", "Bearer tool-secret-0123456789")];
    let write = [("Authorization", "Bearer tool-write-secret-0123456789")];
    wait_outcome(&http, &sha, &read, "pending");

    // Reads need the tool secret.
    let r = get(&http, "/api/v1/commits");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    for wrong in [
        "Bearer runner-secret-0123456789",
        "Bearer nope",
        "Basic abc",
    ] {
        let r = get_with(&http, "/api/v1/commits", &[("Authorization", wrong)]);
        assert_eq!(r.status, 401, "{wrong}");
    }
    let r = get(&http, "/");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location").as_deref(), Some("/login"));
    assert_eq!(
        get(&http, &format!("/api/v1/commits/{sha}/log")).status,
        401
    );
    let r = get_with(&http, "/api/v1/commits", &read);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["commits"][0]["commit"], sha.as_str());
    // With tokens any Host is served (the secret is the guard).
    let r = get_with(&http, "/api/v1/status", &[read[0], ("Host", "ci.example")]);
    assert_eq!(r.status, 200);

    // Actions need tool-write; a bearer needs no CSRF token.
    let cancel = format!("/api/v1/commits/{sha}/cancel");
    let retry = format!("/api/v1/commits/{sha}/retry");
    let r = req(&http, "POST", &cancel, &read, "");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = req(&http, "POST", &cancel, &[], "");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = req(&http, "POST", &retry, &write, "");
    assert_eq!(r.status, 409, "a queued job cannot be retried: {}", r.body);

    // A browser logs in with the secret and gets a cookie.
    assert_eq!(get(&http, "/login").status, 200);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = req(
        &http,
        "POST",
        "/login",
        &form,
        "secret=wrong-secret-0123456789",
    );
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let r = req(
        &http,
        "POST",
        "/login",
        &form,
        "secret=tool-secret-0123456789",
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let read_cookie = session_of(&r);
    assert!(
        !read_cookie.contains("tool-secret"),
        "the cookie holds the secret"
    );
    let r = get_with(&http, "/", &[("Cookie", &read_cookie)]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains(&format!("data-sha=\"{sha}\"")));
    let csrf = csrf_of(&r.body);
    let r = req(
        &http,
        "POST",
        &cancel,
        &[("Cookie", &read_cookie), ("X-CI-CSRF", &csrf)],
        "",
    );
    assert_eq!(r.status, 403, "a read-only session may not act: {}", r.body);

    let r = req(
        &http,
        "POST",
        "/login",
        &form,
        "secret=tool-write-secret-0123456789",
    );
    let cookie = session_of(&r);
    let page = get_with(&http, &format!("/commits/{sha}"), &[("Cookie", &cookie)]).body;
    let csrf = csrf_of(&page);
    let r = req(&http, "POST", &cancel, &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 403, "missing CSRF token: {}", r.body);
    let r = req(
        &http,
        "POST",
        &cancel,
        &[
            ("Cookie", &cookie),
            ("X-CI-CSRF", &csrf),
            ("Origin", "http://evil.example"),
        ],
        "",
    );
    assert_eq!(r.status, 403, "cross-site: {}", r.body);
    let r = req(
        &http,
        "POST",
        &cancel,
        &[("Cookie", &cookie), ("X-CI-CSRF", &csrf)],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_outcome(&http, &sha, &read, "cancelled");
    // Retry by a script with the tool-write bearer: queued again.
    let r = req(&http, "POST", &retry, &write, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = wait_outcome(&http, &sha, &read, "pending");
    assert_eq!(v["outcome"], "pending");

    // Logging out clears the cookie.
    let r = req(
        &http,
        "POST",
        "/logout",
        &[form[0], ("Cookie", &cookie)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    // /metrics keeps its rule.
    assert_eq!(get(&http, "/metrics").status, 401);
    assert_eq!(get_with(&http, "/metrics", &read).status, 200);
}

/// The dispatcher's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Raises this process's soft limit on open files to the hard one (the
/// test holds thousands of sockets).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn hostile_http_input_is_bounded() {
    raise_fd_limit();
    let repo = TestRepo::new();
    let slow = repo.commit(&[("tests/test_slow.py", SLOW_TEST)], "slow");
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--http", "127.0.0.1:0"]);
    let addr = d.addr().to_string();
    let http = printed_http_addr(&d.proc);
    let pid = d.proc.pid();
    let _observer = observer(&addr, &repo, "main");
    let _r1 = runner(&addr, &repo, "r1");
    wait_outcome(&http, &slow, &[], "running");
    let before_kib = rss_kib(pid);

    // Malformed requests: 400 (or closed), never a crash.
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        if let Ok(r) = send_raw(&http, raw) {
            assert!(r.status >= 400 && r.status < 500, "{raw:?}: {}", r.head);
        }
    }
    // A 1 MiB header: refused by size.
    let big = "a".repeat(1024 * 1024);
    let raw = format!("GET / HTTP/1.1\r\nHost: {http}\r\nX-Big: {big}\r\n\r\n");
    if let Ok(r) = send_raw(&http, raw.as_bytes()) {
        assert_eq!(r.status, 431, "{}", r.head);
    }
    // A huge body: 413 from its declared length, before reading it.
    let raw = format!(
        "POST /login HTTP/1.1\r\nHost: {http}\r\nContent-Length: 104857600\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\r\nsecret="
    );
    assert_eq!(send_raw(&http, raw.as_bytes()).unwrap().status, 413);
    // A long target: 414; a bad path never a 500.
    let long = format!("/api/v1/commits?branch={}", "b".repeat(4096));
    assert_eq!(get(&http, &long).status, 414);
    for bad in [
        "/commits/%ff%fe",
        "/api/v1/commits/%00",
        "/commits/a/b/c",
        "/history?from=-1",
    ] {
        let r = get(&http, bad);
        assert!(
            r.status == 400 || r.status == 404,
            "{bad}: {} {}",
            r.status,
            r.body
        );
    }

    // 2,000 idle connections and 1,500 live-log subscribers at once.
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(&http).expect("connect"))
        .collect();
    let mut subscribers = Vec::new();
    let mut refused = 0;
    let mut streaming = 0;
    for _ in 0..1500 {
        let mut s = TcpStream::connect(&http).expect("connect");
        s.set_read_timeout(Some(SHORT)).unwrap();
        write!(
            s,
            "GET /api/v1/commits/{slow}/log HTTP/1.0\r\nHost: {http}\r\n\r\n"
        )
        .unwrap();
        subscribers.push(s);
    }
    for s in &mut subscribers {
        let mut buf = [0u8; 12];
        if s.read_exact(&mut buf).is_ok() {
            match &buf[9..12] {
                b"200" => streaming += 1,
                b"503" => refused += 1,
                other => panic!("{:?}", String::from_utf8_lossy(other)),
            }
        }
    }
    // Some wait behind the idle connections for a slot; the cap holds.
    assert!(streaming <= 1024, "{streaming} streams");
    assert!(streaming >= 100, "only {streaming} streams");
    eprintln!("{streaming} streams, {refused} refused with 503");
    // The TCP port and a job cycle carry on meanwhile.
    let _r2 = runner(&addr, &repo, "r2");
    let quick = repo.commit(&[("tests/test_slow.py", "")], "quick");
    // (the file above is replaced: an empty test module)
    let started = Instant::now();
    wait_final(&addr, &[&quick], LONG);
    eprintln!("a job cycle took {:?} under load", started.elapsed());
    tools_expect(&["status", "--dispatcher", &addr], 0);
    let during_kib = rss_kib(pid);
    // Baseline plus at most ~100 KiB for each of the 3,500 connections
    // (hyper's buffers, a task, a local connection with its bounded
    // queue): 512 MiB is far above that and far below what an unbounded
    // buffer per stream or connection would take.
    assert!(
        during_kib < 512 * 1024,
        "RSS {during_kib} KiB (was {before_kib} KiB)"
    );
    eprintln!("RSS {before_kib} KiB before, {during_kib} KiB under load");
    // Idle connections are closed after the header read timeout (10 s).
    let mut first = &idle[0];
    first.set_read_timeout(Some(SHORT)).unwrap();
    let mut buf = [0u8; 256];
    match first.read(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("an idle connection stayed open: {e}"),
    }
    drop(idle);
    drop(subscribers);
    // Everything answers again once they are gone.
    wait_for("the dashboard to answer", LONG, || {
        let r = send_raw(
            &http,
            format!("GET /api/v1/status HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        if r.status == 200 { Ok(()) } else { Err(r.head) }
    });
    // Cancel the slow job: its streams end.
    let page = get(&http, &format!("/commits/{slow}")).body;
    let r = req(
        &http,
        "POST",
        &format!("/api/v1/commits/{slow}/cancel"),
        &[("X-CI-CSRF", &csrf_of(&page))],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

const FLOOD_TEST: &str = r#"import sys
import time
import unittest


class TestFlood(unittest.TestCase):
    def test_floods_then_waits(self):
        line = "x" * 1000 + "\n"
        start = time.time()
        i = 0
        while time.time() - start < 30:
            sys.stdout.write("%08d " % i + line * 64)
            sys.stdout.flush()
            i += 1
            time.sleep(0.05)
        time.sleep(120)
"#;

/// A live-log reader that stops reading while output keeps coming has its
/// connection dropped (after the 30 s stall limit), not buffered for.
#[test]
fn a_live_log_reader_that_stops_reading_is_dropped() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let repo = TestRepo::new();
    let flood = repo.commit(&[("tests/test_flood.py", FLOOD_TEST)], "flood");
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--http", "127.0.0.1:0"]);
    let addr = d.addr().to_string();
    let http = printed_http_addr(&d.proc);
    let _observer = observer(&addr, &repo, "main");
    let _runner = runner(&addr, &repo, "r1");
    wait_outcome(&http, &flood, &[], "running");
    wait_for("the flood in the dispatcher", LONG, || {
        let v = api_commit(&http, &flood, &[]);
        let page = get(&http, &format!("/commits/{flood}")).body;
        if v["outcome"] == "running" && page.contains("00000010 ") {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });
    // A small receive buffer, and no reading.
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let target: std::net::SocketAddr = http.parse().unwrap();
    sock.connect(&SockAddr::from(target)).unwrap();
    let mut s: TcpStream = sock.into();
    write!(
        s,
        "GET /api/v1/commits/{flood}/log HTTP/1.0\r\nHost: {http}\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(40));
    // By now the dispatcher gave up on it: what was sent ends without the
    // job's end, well short of the output.
    s.set_read_timeout(Some(SHORT)).unwrap();
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection is still open: {r:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(!text.contains("event: end"));
    // Kernel buffers (up to 4 MiB a side) and the stream's small queue.
    assert!(got.len() < 16 << 20, "{} bytes arrived", got.len());
    eprintln!(
        "{} bytes arrived before the connection was dropped",
        got.len()
    );
    // The dashboard still answers, and the job can be cancelled.
    let page = get(&http, &format!("/commits/{flood}")).body;
    let r = req(
        &http,
        "POST",
        &format!("/api/v1/commits/{flood}/cancel"),
        &[("X-CI-CSRF", &csrf_of(&page))],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
