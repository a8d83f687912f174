//! kill -9 chaos on the real binaries: a stream of commits while the
//! dispatcher (and, more rarely, runners) are killed with SIGKILL at random
//! moments and restarted. At the end every commit has exactly one
//! `commit_seen` and exactly one `result` event, with the outcome a
//! fault-free run gives.
//!
//! Seeded: `CHAOS_SEED=n` replays a plan (the kill moments; the machine's
//! timing still varies). `CHAOS_COMMITS=n` lengthens it; `tools/chaos.sh`
//! runs many seeds.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// splitmix64: small, seedable, good enough for a test plan.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const TEST_COMMAND: &str = r#"[test]
command = ["python3", "-c", "import sys, time; time.sleep(float(open('delay').read())); sys.exit(0 if open('expect').read().strip() == 'pass' else 1)"]
"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn kill9_chaos_every_commit_gets_exactly_one_correct_result() {
    let seed = env_u64("CHAOS_SEED", 7);
    let commits = env_u64("CHAOS_COMMITS", 40);
    eprintln!("chaos: seed {seed}, {commits} commits (replay with CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let repo = TestRepo::new();
    let mut expected: Vec<(String, &str)> = Vec::new();
    let first = repo.commit(
        &[
            (".ci.toml", TEST_COMMAND),
            ("expect", "pass"),
            ("delay", "0.1"),
        ],
        "chaos base",
    );
    expected.push((first, "pass"));

    let port = free_port();
    let data = repo.dir("dispatcher");
    let mut d = Dispatcher::start_on(
        port,
        &data,
        &["--heartbeat-timeout", "3", "--snapshot-every", "7"],
    );
    let addr = d.addr().to_owned();
    let names = ["r1", "r2", "r3"];
    let mut runners: HashMap<&str, Proc> = names
        .iter()
        .map(|n| {
            (
                *n,
                runner_with(&addr, &repo, n, &["--heartbeat-interval", "0.3"]),
            )
        })
        .collect();
    let _observer = observer_with(&addr, &repo, "main", &["--interval", "0.2"]);
    // The observer reports only the tip of a branch it has never seen: let
    // it see the base before the stream starts.
    wait_final(&addr, &[&expected[0].0], LONG);

    let mut dispatcher_kills = 0;
    let mut runner_kills = 0;
    let mut made = 1;
    while made < commits {
        let burst = 1 + rng.below(3);
        for _ in 0..burst {
            let outcome = if rng.chance(30) { "fail" } else { "pass" };
            let delay = format!("0.{}", 1 + rng.below(6));
            let counter = made.to_string();
            let sha = repo.commit(
                &[
                    ("expect", outcome),
                    ("delay", &delay),
                    ("counter", &counter),
                ],
                &format!("chaos commit {made}"),
            );
            expected.push((sha, outcome));
            made += 1;
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
        if rng.chance(35) {
            dispatcher_kills += 1;
            d.kill9();
            std::thread::sleep(Duration::from_millis(rng.below(300)));
            d.restart();
        }
        if runner_kills < 2 && rng.chance(8) {
            let name = names[rng.below(names.len() as u64) as usize];
            runner_kills += 1;
            let mut old = runners.remove(name).expect("runner exists");
            old.kill9_group();
            runners.insert(
                name,
                runner_with(&addr, &repo, name, &["--heartbeat-interval", "0.3"]),
            );
            // The old process stays around for the failure report.
            std::mem::forget(old);
        }
    }
    // One last kill, while the tail of the stream is queued and running.
    dispatcher_kills += 1;
    d.kill9();
    d.restart();

    let shas: Vec<&str> = expected.iter().map(|(s, _)| s.as_str()).collect();
    let results = wait_final(&addr, &shas, Duration::from_secs(120));
    let replay = replay_json_online(&addr);
    for (sha, outcome) in &expected {
        let seen = events_for(&replay, "commit_seen", sha);
        assert_eq!(
            seen.len(),
            1,
            "commit {} seen {} times",
            short(sha),
            seen.len()
        );
        let res = events_for(&replay, "result", sha);
        assert_eq!(
            res.len(),
            1,
            "commit {} has {} results:\n{}",
            short(sha),
            res.len(),
            pretty(&res)
        );
        assert_eq!(
            outcome_of(&results, sha),
            Some(*outcome),
            "commit {} (seed {seed})",
            short(sha)
        );
    }
    assert_eq!(d.stop(), Some(0));
    let verify = tools_expect(&["replay", "--verify", "--data-dir", p(&data)], 0);
    assert!(String::from_utf8_lossy(&verify.stdout).contains("ok:"));
    eprintln!(
        "chaos: seed {seed}: {} commits, {dispatcher_kills} dispatcher kills, {runner_kills} runner kills, {} events, {:.1} s",
        expected.len(),
        replay.len(),
        started.elapsed().as_secs_f64()
    );
}
