//! The dashboard in a real browser: Debian's `chromium`, headless, driven
//! through `chromedriver` (WebDriver, with fantoccini) against the real
//! dispatcher (`--http`) and a real runner on a known history.
//!
//! What it checks, page by page, through the DOM contract the pages keep
//! (ids and classes in `src/web/pages.rs`):
//! - the commits page lists every commit with its outcome (row class and
//!   cell), a subject holding `<script>` shows as text and runs nothing (no
//!   alert, no global set), the filter form narrows by outcome and branch,
//!   `#next` pages;
//! - a commit page shows its outcome, the exact command, a timeline, the
//!   output; `#broke` only on the commit that turned `main` from pass to
//!   fail; cancel and retry disabled where they do not apply;
//! - a running job's output appears in `#log` before the job ends; pressing
//!   Cancel makes `#outcome` `cancelled`; pressing Retry runs it again, to
//!   `pass`;
//! - `/runners` and `/history`, and the nav on every page;
//! - with named repositories (`--repository NAME=URL`), a repository
//!   column (`td.repository`), the filter form's `select[name=repo]`
//!   narrowing to one, and `#repository` on a commit page; without them,
//!   neither column nor filter.
//!
//! Screenshots of the commits page and of a commit page are taken every
//! run; with `CI_SCREENSHOTS=1` they are written to `docs/screenshots/`
//! (the README shows them), otherwise into the test's temp dir.
//!
//! chromium and chromedriver must be installed (`.ci/run` installs them):
//! without them the test fails, saying so; it never skips.

mod common;

use std::fs::{self, File};
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Fails (never skips) when the browser is missing.
fn require_browser() {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the browser test needs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver; .ci/run installs them)"
        );
    }
}

/// `chromedriver` on a free loopback port, and the chromium it starts;
/// both killed when dropped, also when the test panics.
struct Driver {
    child: Child,
    port: u16,
    /// chromium's `--user-data-dir`: every process with it in its command
    /// line is one this test started.
    profile: PathBuf,
    log: PathBuf,
}

impl Driver {
    fn start(sandbox: &Path) -> Driver {
        let port = free_port();
        let profile = sandbox.join("chromium-profile");
        fs::create_dir_all(&profile).expect("profile dir");
        let log = sandbox.join("chromedriver.log");
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("log"))
            .stderr(File::create(sandbox.join("chromedriver.stderr")).expect("log"))
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let driver = Driver {
            child,
            port,
            profile,
            log,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for("chromedriver to listen", SHORT, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .map(drop)
                .map_err(|e| format!("{e}; log:\n{}", driver.log_text()))
        });
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The capabilities for headless chromium (as root in CI: no sandbox).
    fn capabilities(&self) -> serde_json::Map<String, Value> {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,860",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }
        });
        match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("=== chromedriver log ===\n{}", self.log_text());
        }
        // SAFETY: the group is the one our child leads.
        unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
        // chromium's processes, found by the profile only they use.
        let marker = format!("--user-data-dir={}", self.profile.display());
        if let Ok(dir) = fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    // SAFETY: a plain syscall on a process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// A WebDriver session, used synchronously from the test.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    base: String,
}

impl Browser {
    fn open(driver: &Driver, base: &str) -> Browser {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let caps = driver.capabilities();
        let url = driver.url();
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    LONG,
                    ClientBuilder::new(HttpConnector::new())
                        .capabilities(caps)
                        .connect(&url),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("no browser session within {LONG:?}"))
            .unwrap_or_else(|e| panic!("cannot start a chromium session: {e}"));
        Browser {
            rt,
            client: Some(client),
            base: format!("http://{base}"),
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    fn run<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, fantoccini::error::CmdError>>,
    ) -> T {
        self.rt
            .block_on(async { tokio::time::timeout(SHORT, f).await })
            .unwrap_or_else(|_| panic!("{what}: no answer within {SHORT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.run(&format!("open {url}"), self.c().goto(&url));
    }

    fn path(&self) -> String {
        let url = self.run("current url", self.c().current_url());
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    fn count(&self, css: &str) -> usize {
        self.run(&format!("find {css}"), self.c().find_all(Locator::Css(css)))
            .len()
    }

    fn exists(&self, css: &str) -> bool {
        self.count(css) > 0
    }

    fn text(&self, css: &str) -> String {
        let c = self.c();
        self.run(&format!("text of {css}"), async {
            c.find(Locator::Css(css)).await?.text().await
        })
    }

    fn texts(&self, css: &str) -> Vec<String> {
        let c = self.c();
        self.run(&format!("texts of {css}"), async {
            let mut out = Vec::new();
            for e in c.find_all(Locator::Css(css)).await? {
                out.push(e.text().await?);
            }
            Ok(out)
        })
    }

    fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        let c = self.c();
        self.run(&format!("{attr} of {css}"), async {
            let mut out = Vec::new();
            for e in c.find_all(Locator::Css(css)).await? {
                out.push(e.attr(attr).await?.unwrap_or_default());
            }
            Ok(out)
        })
    }

    fn enabled(&self, css: &str) -> bool {
        let c = self.c();
        self.run(&format!("is {css} enabled"), async {
            c.find(Locator::Css(css)).await?.is_enabled().await
        })
    }

    fn click(&self, css: &str) {
        let c = self.c();
        self.run(&format!("click {css}"), async {
            c.find(Locator::Css(css)).await?.click().await
        });
    }

    fn select(&self, css: &str, value: &str) {
        let c = self.c();
        self.run(&format!("select {value} in {css}"), async {
            c.find(Locator::Css(css))
                .await?
                .select_by_value(value)
                .await
        });
    }

    fn js(&self, script: &str) -> Value {
        self.run(&format!("run {script}"), self.c().execute(script, vec![]))
    }

    /// Whether an alert is open (the answer to "did a script run?").
    fn alert_open(&self) -> bool {
        let c = self.c();
        self.rt
            .block_on(async { tokio::time::timeout(SHORT, c.get_alert_text()).await })
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Polls the page's `css` text until `pred` holds (each poll a fresh
    /// read; the page may reload under it).
    fn wait_text(
        &self,
        what: &str,
        css: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let c = self.c();
        wait_for(what, timeout, || {
            let got = self.rt.block_on(async {
                tokio::time::timeout(SHORT, async {
                    c.find(Locator::Css(css)).await?.text().await
                })
                .await
            });
            match got {
                Ok(Ok(text)) if pred(&text) => Ok(text),
                Ok(Ok(text)) => Err(format!("{css}: {text:?}")),
                Ok(Err(e)) => Err(format!("{css}: {e}")),
                Err(_) => Err(format!("{css}: no answer")),
            }
        })
    }

    fn resize(&self, width: u32, height: u32) {
        self.run("resize", self.c().set_window_size(width, height));
    }

    fn screenshot(&self, to: &Path) {
        let png = self.run("screenshot", self.c().screenshot());
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        assert!(
            png.len() > 10_000,
            "an empty-looking screenshot: {} bytes",
            png.len()
        );
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).expect("screenshot dir");
        }
        fs::write(to, png).expect("write screenshot");
    }

    fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(SHORT, c.close()).await });
        }
    }
}

/// A commit of `data/<subdir>`'s files (see `data/README.md`) on main.
fn commit_data(repo: &TestRepo, subdir: &str, message: &str) -> String {
    let files = data_files(subdir);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    repo.commit(&files, message)
}

/// A test that writes `FLAGS/waiting`, waits for `FLAGS/speak`, prints
/// `first line`, writes `FLAGS/started`, waits for `FLAGS/go`, then prints
/// `second line` and passes.
fn gated_test(flags: &Path) -> String {
    format!(
        r#"import os, time, unittest

FLAGS = {flags:?}


class TestSlow(unittest.TestCase):
    def wait_for(self, flag):
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(FLAGS, flag)):
            self.assertLess(time.time(), deadline, "never told " + flag)
            time.sleep(0.05)

    def test_waits_for_the_go_ahead(self):
        open(os.path.join(FLAGS, "waiting"), "w").close()
        self.wait_for("speak")
        print("first line", flush=True)
        open(os.path.join(FLAGS, "started"), "w").close()
        self.wait_for("go")
        print("second line", flush=True)
"#,
        flags = flags.display().to_string()
    )
}

/// Where screenshots go: the repository's `docs/screenshots/` with
/// `CI_SCREENSHOTS=1`, else the test's temp dir.
fn screenshot_dir(repo: &TestRepo) -> PathBuf {
    if std::env::var("CI_SCREENSHOTS").is_ok_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
    } else {
        repo.dir("screenshots")
    }
}

/// Every page has the nav with its three links.
fn assert_nav(b: &Browser) {
    let links = b.attrs("nav a", "href");
    for want in ["/", "/runners", "/history"] {
        assert!(
            links
                .iter()
                .any(|h| h == want || h.ends_with(&format!("{}{want}", b.base))),
            "nav links {links:?} on {}",
            b.path()
        );
    }
}

#[test]
fn the_dashboard_in_chromium_shows_the_history_streams_a_running_job_and_cancels_and_retries() {
    require_browser();
    let started = Instant::now();
    let repo = TestRepo::new();
    let flags = repo.dir("flags");

    // A known history: pass, pass (a hostile subject), fail (main broken),
    // pass (fixed), and a commit on another branch.
    let good = commit_data(&repo, "passing", "Add the first tests");
    let hostile = repo.commit(
        &[("NOTES.md", "notes\n")],
        "<script>window.pwned=1;alert('pwned')</script> Notes",
    );
    let broken = commit_data(&repo, "failing", "Add a test that fails");
    let fixed = commit_data(&repo, "fixed", "Fix the failing test");
    let feature = repo.commit_on(
        "feature",
        &[("tests/test_feature.py", "import unittest\n\n\nclass TestFeature(unittest.TestCase):\n    def test_it(self):\n        self.assertTrue(True)\n")],
        "Start the feature branch",
    );
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--http", "127.0.0.1:0"]);
    let addr = d.addr().to_owned();
    let http = printed_http_addr(&d.proc);
    let submit = |branch: &str, shas: &[&str]| {
        let mut args = vec!["submit", "--dispatcher", &addr, "--branch", branch];
        args.extend_from_slice(shas);
        tools_expect(&args, 0);
    };
    submit("main", &[&good, &hostile, &broken, &fixed]);
    submit("feature", &[&feature]);
    let _runner = runner(&addr, &repo, "r1");
    let results = wait_final(&addr, &[&good, &hostile, &broken, &fixed, &feature], LONG);
    let outcomes: Vec<&str> = [&good, &hostile, &broken, &fixed, &feature]
        .iter()
        .map(|s| outcome_of(&results, s).expect("an outcome"))
        .collect();
    assert_eq!(outcomes, ["pass", "pass", "fail", "pass", "pass"]);

    let driver = Driver::start(repo.root());
    let b = Browser::open(&driver, &http);
    eprintln!("browser up after {:?}", started.elapsed());

    // --- The commits page.
    b.goto("/");
    assert_nav(&b);
    let shas = b.attrs("#commits tr.commit", "data-sha");
    assert_eq!(shas.len(), 5, "{shas:?}");
    for (sha, outcome) in [
        (&good, "pass"),
        (&hostile, "pass"),
        (&broken, "fail"),
        (&fixed, "pass"),
        (&feature, "pass"),
    ] {
        assert!(shas.contains(sha), "{} listed", short(sha));
        let row = format!("#commits tr.commit.outcome-{outcome}[data-sha=\"{sha}\"]");
        assert!(b.exists(&row), "{row}");
        assert_eq!(b.text(&format!("{row} td.outcome")), outcome);
    }
    // Newest first.
    assert_eq!(shas[0], feature);
    // One repository: no repository column or filter.
    assert!(!b.exists("#commits th.repository") && !b.exists("#commits td.repository"));
    assert!(!b.exists("#filters select[name=repo]"));
    // The hostile subject is text: shown as typed, nothing ran.
    let row = b.text(&format!("#commits tr[data-sha=\"{hostile}\"]"));
    assert!(
        row.contains("<script>window.pwned=1;alert('pwned')</script> Notes"),
        "the subject as text: {row:?}"
    );
    assert!(!b.alert_open(), "no alert fired");
    assert_eq!(b.js("return typeof window.pwned;"), "undefined");

    // The filter form: outcome, then branch.
    b.select("#filters select[name=outcome]", "fail");
    b.click("#filters button[type=submit]");
    b.wait_text("the filtered table", "#commits", SHORT, |_| {
        b.path().contains("outcome=fail")
    });
    assert_eq!(b.attrs("#commits tr.commit", "data-sha"), [broken.as_str()]);
    b.goto("/");
    b.select("#filters select[name=branch]", "feature");
    b.click("#filters button[type=submit]");
    b.wait_text("the branch filter", "#commits", SHORT, |_| {
        b.path().contains("branch=feature")
    });
    assert_eq!(
        b.attrs("#commits tr.commit", "data-sha"),
        [feature.as_str()]
    );

    // Paging: two a page, #next to the older ones, then no #next.
    b.goto("/?limit=2");
    let mut seen = b.attrs("#commits tr.commit", "data-sha");
    assert_eq!(seen.len(), 2);
    while b.exists("#next") {
        b.click("#next");
        let page = b.attrs("#commits tr.commit", "data-sha");
        assert!(!page.is_empty() && page.len() <= 2, "{page:?}");
        seen.extend(page);
        assert!(seen.len() <= 5, "pages repeat: {seen:?}");
    }
    assert_eq!(
        seen, shas,
        "every commit once, newest first, over the pages"
    );

    // --- Commit pages.
    b.goto(&format!("/commits/{broken}"));
    assert_nav(&b);
    assert_eq!(b.text("#outcome"), "fail");
    assert!(b.exists("#broke"), "the commit that broke main says so");
    assert!(b.text("#broke").contains("main"), "{}", b.text("#broke"));
    assert_eq!(b.text("#command"), "python3 -m unittest discover -s tests");
    let timeline = b.texts("#timeline li");
    assert!(timeline.len() >= 3, "seen, assigned, result: {timeline:?}");
    assert!(
        timeline.iter().any(|t| t.contains("assigned to runner r1")),
        "{timeline:?}"
    );
    assert!(
        timeline.iter().any(|t| t.contains("result fail")),
        "{timeline:?}"
    );
    let log = b.text("#log");
    assert!(
        log.starts_with("$ python3 -m unittest discover -s tests"),
        "{log}"
    );
    assert!(log.contains("FAILED (failures=1)"), "{log}");
    assert!(!b.enabled("#cancel"), "a finished job cannot be cancelled");
    assert!(b.enabled("#retry"), "a finished job can be retried");
    // Tall enough for the output below the timeline.
    b.resize(1280, 1320);
    b.screenshot(&screenshot_dir(&repo).join("commit.png"));
    b.resize(1280, 860);
    for (sha, outcome) in [(&good, "pass"), (&fixed, "pass"), (&hostile, "pass")] {
        b.goto(&format!("/commits/{sha}"));
        assert_eq!(b.text("#outcome"), outcome);
        assert!(!b.exists("#broke"), "{} broke nothing", short(sha));
    }
    // The hostile subject on its own page: text again.
    let page_text = b.text("main");
    assert!(page_text.contains("<script>window.pwned=1;"), "{page_text}");
    assert!(!b.alert_open());
    assert_eq!(b.js("return typeof window.pwned;"), "undefined");
    // A short id redirects to the full one.
    b.goto(&format!("/commits/{}", &good[..7]));
    assert_eq!(b.path(), format!("/commits/{good}"));

    // --- Runners and history.
    b.goto("/runners");
    assert_nav(&b);
    assert_eq!(b.attrs("#runners tr.runner", "data-name"), ["r1"]);
    assert!(b.text("#runners tr.runner[data-name=r1]").contains("idle"));
    b.goto("/history");
    assert_nav(&b);
    let history = b.text("#history");
    for kind in ["commit_seen", "job_assigned", "result"] {
        assert!(history.contains(kind), "{kind} in history:\n{history}");
    }

    // --- A running job, live; cancel; retry.
    let live = repo.commit(
        &[("tests/test_slow.py", &gated_test(&flags))],
        "Add a slow test",
    );
    submit("main", &[&live]);
    b.goto(&format!("/commits/{live}"));
    // The job runs and has printed nothing of its own yet; the page is
    // not reloaded from here on (the mark would be gone).
    wait_file(&flags, "waiting");
    b.js("window.ciTestMark = 'loaded once'; return null;");
    assert!(!b.text("#log").contains("first line"));
    touch(&flags, "speak");
    wait_file(&flags, "started");
    let text = b.wait_text("the first line, live", "#log", LONG, |t| {
        t.contains("first line")
    });
    assert_eq!(
        b.js("return window.ciTestMark;"),
        "loaded once",
        "the line arrived without a reload"
    );
    assert!(text.starts_with("$ python3 -m unittest"), "{text}");
    assert!(!text.contains("second line"));
    assert!(!flags.join("go").exists(), "the job has not ended");
    assert_eq!(b.text("#outcome"), "running");
    assert!(b.enabled("#cancel") && !b.enabled("#retry"));
    // Meanwhile a commit behind it, cancelled from the command line, so
    // the commits page has one of each.
    let queued = repo.commit(&[("NOTES.md", "more notes\n")], "Update the notes");
    submit("main", &[&queued]);
    tools_expect(&["cancel", "--dispatcher", &addr, &queued], 0);

    b.click("#cancel");
    b.wait_text("#outcome to be cancelled", "#outcome", SHORT, |t| {
        t == "cancelled"
    });
    let r = results_json(&addr);
    assert_eq!(outcome_of(&r, &live), Some("cancelled"));
    b.wait_text("retry to be enabled", "#outcome", SHORT, |_| {
        b.enabled("#retry") && !b.enabled("#cancel")
    });
    b.wait_text("the cancel in the timeline", "#timeline", SHORT, |t| {
        t.contains("attempt 1: cancelled")
    });

    touch(&flags, "go");
    b.click("#retry");
    b.wait_text(
        "#outcome to be pass after the retry",
        "#outcome",
        LONG,
        |t| t == "pass",
    );
    b.wait_text("the retried run's output", "#log", SHORT, |t| {
        t.contains("second line")
    });
    let r = results_json(&addr);
    let v = result_for(&r, &live).expect("live commit");
    assert_eq!(v["outcome"], "pass");
    assert_eq!(v["attempts"], 2, "retry adds an attempt");
    // The timeline is drawn with the page: reloaded, it has the retry.
    b.goto(&format!("/commits/{live}"));
    let timeline = b.text("#timeline");
    assert!(
        timeline.contains("retried") && timeline.contains("attempt 2: result pass"),
        "{timeline}"
    );
    assert_eq!(b.text("#outcome"), "pass");

    // The commits page with one of each outcome, for the README.
    b.goto("/");
    assert!(b.exists(&format!(
        "tr.commit.outcome-cancelled[data-sha=\"{queued}\"]"
    )));
    assert!(b.exists(&format!("tr.commit.outcome-pass[data-sha=\"{live}\"]")));
    assert!(!b.alert_open());
    b.screenshot(&screenshot_dir(&repo).join("commits.png"));

    b.close();
    drop(driver);
    eprintln!("browser test took {:?}", started.elapsed());
}

#[test]
fn with_named_repositories_the_commits_page_shows_and_filters_by_repository() {
    require_browser();
    let app = TestRepo::new();
    let app_sha = app.commit(&[("APP", "app\n")], "The app's commit");
    let lib = TestRepo::new();
    let lib_sha = lib.commit(&[("LIB", "lib\n")], "The lib's commit");
    let (app_flag, lib_flag) = (format!("app={}", app.url()), format!("lib={}", lib.url()));
    let d = Dispatcher::start(
        &app.dir("dispatcher"),
        &[
            "--http",
            "127.0.0.1:0",
            "--repository",
            &app_flag,
            "--repository",
            &lib_flag,
        ],
    );
    let addr = d.addr().to_owned();
    let http = printed_http_addr(&d.proc);
    for (name, sha) in [("app", &app_sha), ("lib", &lib_sha)] {
        tools_expect(
            &[
                "submit",
                "--dispatcher",
                &addr,
                "--repository",
                name,
                "--branch",
                "main",
                sha,
            ],
            0,
        );
    }
    let driver = Driver::start(app.root());
    let b = Browser::open(&driver, &http);

    b.goto("/");
    assert_nav(&b);
    assert_eq!(b.text("#commits th.repository"), "Repository");
    for (name, sha) in [("app", &app_sha), ("lib", &lib_sha)] {
        let cell = format!("#commits tr.commit[data-sha=\"{sha}\"] td.repository");
        assert_eq!(b.text(&cell), name, "{cell}");
    }
    // The filter form: lib only, and lib stays chosen.
    b.select("#filters select[name=repo]", "lib");
    b.click("#filters button[type=submit]");
    b.wait_text("the filtered table", "#commits", SHORT, |_| {
        b.path().contains("repo=lib")
    });
    assert_eq!(
        b.attrs("#commits tr.commit", "data-sha"),
        [lib_sha.as_str()]
    );
    assert_eq!(
        b.js("return document.querySelector('#filters select[name=repo]').value;"),
        "lib"
    );
    // A commit's page names its repository.
    b.goto(&format!("/commits/{app_sha}"));
    assert_eq!(b.text("#repository"), "app");
    assert!(!b.alert_open());

    b.close();
    drop(driver);
}

fn wait_file(dir: &Path, name: &str) {
    let path = dir.join(name);
    wait_for(&format!("{}", path.display()), LONG, || {
        if path.exists() {
            Ok(())
        } else {
            Err("missing".into())
        }
    });
}

fn touch(dir: &Path, name: &str) {
    fs::write(dir.join(name), b"").expect("flag");
}
