//! Checks of the e2e harness itself (`common`) that need none of the
//! programs: the git2 repository, the `data/` content and `Proc`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Checks out `sha` of `repo` with git2 into `dest` and runs the runner's
/// default command there; returns its exit code.
fn unittest_exit_code(repo: &TestRepo, sha: &str, dest: &Path) -> Option<i32> {
    let clone = git2::Repository::clone(repo.url(), dest).expect("clone");
    let commit = clone
        .find_commit(git2::Oid::from_str(sha).unwrap())
        .expect("commit is in the clone");
    clone
        .checkout_tree(
            commit.as_object(),
            Some(git2::build::CheckoutBuilder::new().force()),
        )
        .expect("checkout");
    clone.set_head_detached(commit.id()).expect("detach");
    Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(dest)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs")
        .status
        .code()
}

#[test]
fn test_repo_commits_are_real_history_on_main() {
    let repo = TestRepo::new();
    let first = repo.copy_data("passing");
    let more = repo.commit_passing(3);
    assert_eq!(repo.head(), more[2]);
    assert_eq!(first.len(), 40);
    let git = repo.git();
    assert_eq!(git.head().unwrap().name().ok(), Some("refs/heads/main"));
    let mut walk = git.revwalk().unwrap();
    walk.push_head().unwrap();
    let shas: Vec<String> = walk.map(|id| id.unwrap().to_string()).collect();
    assert_eq!(
        shas,
        [&more[2], &more[1], &more[0], &first].map(String::clone)
    );
    // The checkout follows main.
    assert_eq!(
        std::fs::read_to_string(repo.path().join("counter.txt")).unwrap(),
        "3\n"
    );

    let tip = repo.branch("feature");
    assert_eq!(repo.tip("feature").as_deref(), Some(tip.as_str()));
    let side = repo.commit_on("feature", &[("extra.txt", "x")], "side");
    assert_eq!(repo.tip("feature").as_deref(), Some(side.as_str()));
    assert_eq!(repo.head(), more[2], "main did not move");
}

#[test]
fn data_sets_give_the_documented_outcomes() {
    let repo = TestRepo::new();
    let pass = repo.copy_data("passing");
    let fail = repo.commit_failing();
    let fixed = repo.commit_fixed();
    repo.copy_data("slow");
    let slow = repo.commit(&[("SLEEP_SECS", "0.2")], "short sleep");
    let cases = [
        (&pass, Some(0)),
        (&fail, Some(1)),
        (&fixed, Some(0)),
        (&slow, Some(0)),
    ];
    for (i, (sha, want)) in cases.iter().enumerate() {
        let dest = repo.dir(&format!("checkout-{i}"));
        assert_eq!(unittest_exit_code(&repo, sha, &dest), *want, "commit {i}");
    }
}

#[test]
fn proc_captures_output_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let sh = Path::new("/bin/sh");
    let mut quick = Proc::spawn_path(
        sh,
        &["-c", "echo out; echo err >&2; exit 3"],
        dir.path(),
        "quick",
    );
    assert_eq!(quick.wait_exit(SHORT).code(), Some(3));
    assert_eq!(quick.stdout(), "out\n");
    assert_eq!(quick.stderr(), "err\n");
    assert!(quick.report().contains("exit code 3"));

    let mut slow = Proc::spawn_path(sh, &["-c", "sleep 30"], dir.path(), "slow");
    assert!(slow.is_running());
    slow.kill9();
    assert!(!slow.is_running());

    let mut term = Proc::spawn_path(
        sh,
        &["-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"],
        dir.path(),
        "term",
    );
    std::thread::sleep(Duration::from_millis(200));
    term.sigterm();
    assert_eq!(term.wait_exit(SHORT).code(), Some(0));
}

#[test]
fn wait_for_gives_up_with_the_last_state() {
    let result = std::panic::catch_unwind(|| {
        wait_for(
            "something that never happens",
            Duration::from_millis(300),
            || Err::<(), _>("state 42".to_owned()),
        )
    });
    let message = *result.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("something that never happens"),
        "{message}"
    );
    assert!(message.contains("state 42"), "{message}");
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
}
