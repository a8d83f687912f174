//! `/metrics` on the real dispatcher (`--http`): the Prometheus text
//! format with every figure the issue names, counting what really
//! happened; the tool secret to read it when tokens are set; and the
//! loopback rule for HTTP as for the TCP port.

mod common;

use common::*;

/// The value of the sample `name` (labels included) in a text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_count_what_happened() {
    let repo = TestRepo::new();
    let good = repo.copy_data("passing");
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--http", "127.0.0.1:0"]);
    let addr = d.addr();
    let http = printed_http_addr(&d.proc);
    // Nothing yet: the figures are there, at zero.
    let (status, text) = http_get(&http, "/metrics", None).unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "ci_queue_length"), Some(0.0), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    let _observer = observer(addr, &repo, "main");
    // Queued with no runner: the queue shows it.
    wait_for("the commit queued", LONG, || {
        let (_, text) = http_get(&http, "/metrics", None)?;
        match sample(&text, "ci_queue_length") {
            Some(n) if n >= 1.0 => Ok(()),
            _ => Err(text),
        }
    });
    let _runner = runner(addr, &repo, "r1");
    wait_final(addr, &[&good], LONG);
    let text = wait_for("the runner idle again", LONG, || {
        let (_, text) = http_get(&http, "/metrics", None)?;
        match sample(&text, "ci_runners{state=\"idle\"}") {
            Some(1.0) => Ok(text),
            _ => Err(text),
        }
    });
    for (name, want) in [
        ("ci_queue_length", 0.0),
        ("ci_jobs{status=\"pass\"}", 1.0),
        ("ci_jobs{status=\"pending\"}", 0.0),
        ("ci_runners{state=\"busy\"}", 0.0),
        ("ci_runners{state=\"lost\"}", 0.0),
        ("ci_job_duration_seconds_count", 1.0),
        ("ci_events_total{kind=\"result\"}", 1.0),
        ("ci_events_total{kind=\"commit_seen\"}", 1.0),
        ("ci_heartbeat_losses_total", 0.0),
    ] {
        assert_eq!(sample(&text, name), Some(want), "{name} in:\n{text}");
    }
    // Runner and observer connected (and maybe a tool), appends and
    // flushes measured.
    for (name, at_least) in [
        ("ci_connections", 2.0),
        ("ci_connections_accepted_total", 2.0),
        ("ci_log_append_seconds_count", 2.0),
        ("ci_log_flush_seconds_count", 2.0),
        ("ci_log_events", 4.0),
    ] {
        let v = sample(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(v >= at_least, "{name} is {v}, expected at least {at_least}");
    }
    let (status, _) = http_get(&http, "/nowhere", None).unwrap();
    assert_eq!(status, 404);
}

#[test]
fn metrics_need_the_tool_secret_when_tokens_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "runner: runner-secret-0123456789\nobserver: observer-secret-0123456789\n\
         tool: tool-secret-0123456789\ntool-write: tool-write-secret-0123456789\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Dispatcher::start(
        &dir.path().join("data"),
        &["--http", "127.0.0.1:0", "--token-file", p(&tokens)],
    );
    let http = printed_http_addr(&d.proc);
    for wrong in [None, Some("runner-secret-0123456789"), Some("nope")] {
        let (status, body) = http_get(&http, "/metrics", wrong).unwrap();
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert!(!body.contains("ci_"), "{body}");
    }
    for right in ["tool-secret-0123456789", "tool-write-secret-0123456789"] {
        let (status, body) = http_get(&http, "/metrics", Some(right)).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("ci_queue_length 0"), "{body}");
    }
}

#[test]
fn http_on_a_non_loopback_address_needs_tokens_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Dispatcher::spawn_proc(
        "127.0.0.1:0",
        &dir.path().join("data"),
        &["--http", "0.0.0.0:0"],
        0,
    );
    let status = proc.wait_exit(SHORT);
    assert_ne!(exit_code(&status), Some(0), "{}", proc.report());
    let err = proc.stderr();
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without tokens")
            && err.contains("--insecure"),
        "{err}"
    );
}

/// Runners beat at the pace the dispatcher asks while idle (told in the
/// welcome) and at their own interval while they hold a job; an idle
/// runner silent for longer than the heartbeat timeout is not lost, and a
/// job given to it gets a full timeout from the assignment.
#[test]
fn idle_runners_beat_at_the_dispatchers_pace() {
    let repo = TestRepo::new();
    repo.copy_data("passing");
    repo.copy_data("slow");
    let sha = repo.commit(&[("SLEEP_SECS", "2")], "slow commit");
    let d = Dispatcher::start(
        &repo.dir("dispatcher"),
        &[
            "--http",
            "127.0.0.1:0",
            "--heartbeat-timeout",
            "1",
            "--idle-heartbeat-interval",
            "2",
        ],
    );
    let addr = d.addr();
    let http = printed_http_addr(&d.proc);
    let metric = |name: &str| -> f64 {
        let (_, text) = http_get(&http, "/metrics", None).unwrap();
        sample(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    let _runner = runner_with(addr, &repo, "r1", &["--heartbeat-interval", "0.1"]);
    wait_for("the runner idle", LONG, || {
        let (_, text) = http_get(&http, "/metrics", None)?;
        match sample(&text, "ci_runners{state=\"idle\"}") {
            Some(1.0) => Ok(()),
            _ => Err(text),
        }
    });
    // 4.5 s idle: about two beats at the idle pace (45 at its own), and
    // never lost, although silent for twice the timeout between beats.
    let before = metric("ci_heartbeats_received_total");
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_millis(4_500) {
        assert_eq!(metric("ci_runners{state=\"lost\"}"), 0.0);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let idle_beats = metric("ci_heartbeats_received_total") - before;
    assert!(
        (1.0..=4.0).contains(&idle_beats),
        "{idle_beats} heartbeats in 4.5 s idle at a 2 s pace"
    );
    // With a job, at its own pace; the job is never taken back.
    let before = metric("ci_heartbeats_received_total");
    tools_expect(
        &["submit", "--dispatcher", addr, "--branch", "main", &sha],
        0,
    );
    let results = wait_final(addr, &[&sha], LONG);
    let r = result_for(&results, &sha).unwrap();
    assert_eq!(r["outcome"], "pass", "{}", pretty(r));
    assert_eq!(r["attempts"], 1, "{}", pretty(r));
    let busy_beats = metric("ci_heartbeats_received_total") - before;
    assert!(
        busy_beats >= 8.0,
        "{busy_beats} heartbeats over a 2 s job at a 0.1 s pace"
    );
    assert_eq!(metric("ci_heartbeat_losses_total"), 0.0);
}
