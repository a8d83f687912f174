//! One branch must not stop the observer: the real binaries, a repository
//! with a branch whose name git accepts and the protocol refuses.
//!
//! Regression: a 300-byte branch name (valid for git, refused by the
//! dispatcher's `validate_branch_name`) made ci-observer exit 2 at its first
//! poll; the branches sorted after it were never reported.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

/// A valid git branch name of 300 bytes: every component is shorter than
/// 255 bytes, so the ref file can exist; `q/` sorts it between `main` and
/// `zzz-after`.
fn long_name() -> String {
    let name = format!(
        "q/{}/{}/{}",
        "a".repeat(100),
        "b".repeat(100),
        "c".repeat(96)
    );
    assert_eq!(name.len(), 300);
    name
}

#[test]
fn a_branch_name_the_protocol_refuses_is_skipped_and_the_others_are_observed() {
    let repo = TestRepo::new();
    let first = repo.commit_passing(1).remove(0);
    let long = long_name();
    repo.branch(&long);
    repo.branch("zzz-after");
    let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
    let addr = dispatcher.addr();
    let _runner = runner(addr, &repo, "r1");
    // Every branch: no --branch flag.
    let work_dir = repo.dir("observer");
    let mut observer = Proc::spawn(
        "ci-observer",
        &[
            "--dispatcher",
            addr,
            "--repo",
            repo.url(),
            "--work-dir",
            p(&work_dir),
            "--interval",
            OBSERVER_INTERVAL_SECS,
        ],
        repo.root(),
        "observer",
    );
    wait_final(addr, &[&first], LONG);

    let on_main = repo.commit_passing(1).remove(0);
    let files = data_files("passing");
    let mut files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    files.push(("after.txt", "after\n"));
    let on_after = repo.commit_on("zzz-after", &files, "a commit on zzz-after");
    let results = wait_final(addr, &[&on_main, &on_after], LONG);
    for (sha, branch) in [(&on_main, "main"), (&on_after, "zzz-after")] {
        let r = result_for(&results, sha).expect("a result");
        assert_eq!(r["outcome"], "pass", "{}", pretty(r));
        assert_eq!(r["branch"], branch, "{}", pretty(r));
    }

    // Several more polls: the observer keeps going and does not repeat itself.
    thread::sleep(Duration::from_secs(2));
    assert!(observer.is_running(), "{}", observer.report());
    let stderr = observer.stderr();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("skipping a branch") && l.contains("q/aaaa"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning about the long name, not one per poll:\n{stderr}"
    );
    assert!(warnings[0].contains("255 bytes"), "{}", warnings[0]);
    assert!(
        !stderr.contains(&long),
        "the whole 300-byte name is not repeated into the log:\n{stderr}"
    );
    // Nothing about the long branch reached the dispatcher.
    let replay = replay_json_online(addr);
    assert!(
        !replay
            .iter()
            .any(|e| e["branch"].as_str() == Some(long.as_str())),
        "{}",
        pretty(&replay)
    );
}
