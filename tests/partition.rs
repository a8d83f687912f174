//! A network partition between hosts, with hosts made of network namespaces
//! and veth pairs this test creates (and deletes) itself: the dispatcher and
//! two runners on separate "hosts"; one runner's link is cut mid-job; its
//! job is re-run on the other runner after the heartbeat timeout; when the
//! link comes back, the cut-off runner's late result for the old attempt is
//! rejected and changes nothing. Needs root and iproute2 (`.ci/run` installs
//! it); traffic stays between the test's own namespaces.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces: `d` (dispatcher) linked to `r1` and `r2` by veth pairs.
struct Hosts {
    d: String,
    r1: String,
    r2: String,
    /// The dispatcher's end of r1's link, to cut and restore.
    d_to_r1: String,
    net: u8,
}

impl Hosts {
    fn create() -> Hosts {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the partition test needs root to create network namespaces (CI runs as root)"
        );
        let tag = std::process::id() % 100_000;
        let net = 100 + (tag % 100) as u8;
        let h = Hosts {
            d: format!("ci-d-{tag}"),
            r1: format!("ci-r1-{tag}"),
            r2: format!("ci-r2-{tag}"),
            d_to_r1: format!("cd1-{tag}"),
            net,
        };
        for ns in [&h.d, &h.r1, &h.r2] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (i, ns) in [(1, &h.r1), (2, &h.r2)] {
            let d_end = format!("cd{i}-{tag}");
            let r_end = format!("cr{i}-{tag}");
            ip(&[
                "link", "add", &d_end, "type", "veth", "peer", "name", &r_end,
            ]);
            ip(&["link", "set", &d_end, "netns", &h.d]);
            ip(&["link", "set", &r_end, "netns", ns]);
            ip(&[
                "-n",
                &h.d,
                "addr",
                "add",
                &format!("10.{net}.{i}.1/24"),
                "dev",
                &d_end,
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.{net}.{i}.2/24"),
                "dev",
                &r_end,
            ]);
            ip(&["-n", &h.d, "link", "set", &d_end, "up"]);
            ip(&["-n", ns, "link", "set", &r_end, "up"]);
        }
        h
    }

    fn cut_r1(&self, down: bool) {
        ip(&[
            "-n",
            &self.d,
            "link",
            "set",
            &self.d_to_r1,
            if down { "down" } else { "up" },
        ]);
    }

    /// Runs one of the package's binaries inside namespace `ns`.
    fn spawn(&self, ns: &str, program: &str, args: &[String], dir: &Path, label: &str) -> Proc {
        let mut full = vec!["netns".to_string(), "exec".into(), ns.into()];
        full.push(bin(program).display().to_string());
        full.extend(args.iter().cloned());
        Proc::spawn_path(Path::new("ip"), &full, dir, label)
    }

    fn tools(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.d])
            .arg(bin("ci-tools"))
            .args(args);
        cmd.output()
            .expect("run ci-tools in the dispatcher's namespace")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.d, &self.r1, &self.r2] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn json_of(out: &std::process::Output) -> Result<serde_json::Value, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[test]
fn a_partitioned_runner_loses_its_job_and_its_late_result_is_rejected() {
    let hosts = Hosts::create();
    let repo = TestRepo::new();
    repo.copy_data("slow");
    let sha = repo.commit(&[("SLEEP_SECS", "4")], "a 4 s test");
    let data = repo.dir("dispatcher");
    let port = free_port();
    let net = hosts.net;
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let mut dispatcher = hosts.spawn(
        &hosts.d.clone(),
        "ci-dispatcher",
        &strs(&[
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--data-dir",
            p(&data),
            "--heartbeat-timeout",
            "2",
            "--insecure",
        ]),
        repo.root(),
        "dispatcher",
    );
    let local = format!("127.0.0.1:{port}");
    wait_for("the dispatcher in its namespace", SHORT, || {
        json_of(&hosts.tools(&["status", "--dispatcher", &local, "--json"]))
            .map_err(|e| format!("{e}\n{}", dispatcher.stderr()))
    });
    let runner_args = |n: u8| {
        strs(&[
            "--dispatcher",
            &format!("10.{net}.{n}.1:{port}"),
            "--repo",
            repo.url(),
            "--work-dir",
            p(&repo.dir(&format!("runner-r{n}"))),
            "--name",
            &format!("r{n}"),
            "--heartbeat-interval",
            "0.3",
        ])
    };
    let mut r1 = hosts.spawn(
        &hosts.r1.clone(),
        "ci-runner",
        &runner_args(1),
        repo.root(),
        "runner-r1",
    );
    let out = hosts.tools(&["submit", "--dispatcher", &local, &sha]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("r1 running the job", SHORT, || {
        let s = json_of(&hosts.tools(&["status", "--dispatcher", &local, "--json"]))?;
        match s["running"][0]["runner"].as_str() {
            Some("r1") => Ok(()),
            _ => Err(pretty(&s)),
        }
    });
    let _r2 = hosts.spawn(
        &hosts.r2.clone(),
        "ci-runner",
        &runner_args(2),
        repo.root(),
        "runner-r2",
    );

    // Cut r1 off mid-job, for longer than its job and the timeout.
    hosts.cut_r1(true);
    wait_for("the job re-run on r2 as attempt 2", SHORT, || {
        let s = json_of(&hosts.tools(&["status", "--dispatcher", &local, "--json"]))?;
        let run = &s["running"][0];
        if run["runner"] == "r2" && run["attempt"] == 2 {
            Ok(())
        } else {
            Err(pretty(&s))
        }
    });
    // r1 finishes attempt 1 while cut off, then the link comes back.
    std::thread::sleep(Duration::from_secs(3));
    hosts.cut_r1(false);

    let results = wait_for("a final result", LONG, || {
        let r = json_of(&hosts.tools(&["results", "--dispatcher", &local, "--json"]))?;
        match r[0]["outcome"].as_str() {
            Some("pass") => Ok(r),
            _ => Err(pretty(&r)),
        }
    });
    assert_eq!(results[0]["runner"], "r2", "{}", pretty(&results));
    assert_eq!(results[0]["attempts"], 2);

    wait_for("the late result of attempt 1 rejected", SHORT, || {
        let err = dispatcher.stderr();
        if err.contains("stale result rejected") && err.contains("r1") {
            Ok(())
        } else {
            Err(format!("dispatcher log:\n{err}\nr1 log:\n{}", r1.stderr()))
        }
    });
    let replay = hosts.tools(&["replay", "--dispatcher", &local, "--json"]);
    let events = parse_json_lines(&String::from_utf8_lossy(&replay.stdout)).unwrap();
    let lost: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "heartbeat_lost")
        .collect();
    assert_eq!(lost.len(), 1, "{}", pretty(&events));
    assert_eq!(lost[0]["runner"], "r1");
    let res: Vec<_> = events.iter().filter(|e| e["type"] == "result").collect();
    assert_eq!(res.len(), 1, "exactly one result: {}", pretty(&events));
    assert_eq!(res[0]["attempt"], 2);
    r1.sigterm();
    dispatcher.sigterm();
}
