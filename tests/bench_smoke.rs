//! `ci-tools bench --json` with tiny sizes completes and prints every key.
//! No timing is asserted: the figures live in BENCHMARKS.md.

use assert_cmd::Command;

#[test]
fn bench_json_with_tiny_sizes_prints_every_key() {
    let out = Command::cargo_bin("ci-tools")
        .unwrap()
        .args([
            "bench",
            "--json",
            "--reps",
            "1",
            "--runners",
            "2",
            "--jobs",
            "20",
            "--append-clients",
            "2",
            "--append-events",
            "20",
            "--history",
            "300",
            "--idle-runners",
            "2",
            "--idle-window",
            "0.2",
            "--page-commits",
            "300",
            "--page-requests",
            "3",
            "--dashboards",
            "2",
        ])
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["history_events", "runners"] {
        assert!(v[key].is_u64(), "missing size {key}: {v}");
    }
    for key in [
        "jobs_per_s",
        "appends_per_s",
        "restart_ms_snapshot",
        "replay_events_per_s",
        "rss_mb",
        "idle_runners_cpu_pct",
        "push_to_result_ms",
        "api_commits_ms",
        "api_commits_next_ms",
        "commits_page_ms",
        "commit_page_ms",
        "history_page_ms",
        "live_log_sse_ms",
        "live_log_follow_ms",
        "jobs_per_s_http",
        "jobs_per_s_dashboards",
        "dashboards_ratio",
    ] {
        for part in ["median", "min", "max"] {
            assert!(v[key][part].is_number(), "missing {key}.{part}: {v}");
        }
    }
}
