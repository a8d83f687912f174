//! A test that damages what lies outside its checkout must not poison its
//! runner: the real binaries, one dispatcher and ONE runner, a commit whose
//! tests damage the runner's work directory, then a commit with passing
//! tests that must pass on the same runner. Neither result may blame
//! `--repo`: a damaged cache is the runner's to repair, not a configuration
//! problem.
//!
//! Regression: a python test doing `shutil.rmtree('../mirror.git')` used to
//! make every later job on that runner end as `error` within a millisecond,
//! with a message telling the operator to check `--repo`.
//!
//! The damaging tests reach the runner's files two ways: relative to their
//! checkout (what a careless test does; hidden by the runner's mount
//! namespace where it can set one up), and through `/proc/<runner>/root`,
//! which no mount namespace hides from a process of the same user (what a
//! determined test does; repaired by the runner's check before each job).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One dispatcher, one runner (`r1`), the origin repository with one
/// passing commit.
struct Bench {
    // Dropped first: the processes die before the temp dir goes.
    runner: Proc,
    dispatcher: Dispatcher,
    repo: TestRepo,
    /// The runner's name and `--work-dir` (absolute).
    name: String,
    work: PathBuf,
}

/// The unprivileged user a runner is started as by the tests that need one.
const NOBODY: u32 = 65534;

/// `chown -R nobody:nobody`.
fn chown_tree(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: lchown on a valid C string.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), NOBODY, NOBODY) }, 0);
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

impl Bench {
    fn start() -> Bench {
        let repo = TestRepo::new();
        repo.commit_passing(1);
        let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
        let runner = runner(dispatcher.addr(), &repo, "r1");
        let work = repo.root().join("runner-r1");
        Bench {
            runner,
            dispatcher,
            repo,
            name: "r1".into(),
            work,
        }
    }

    /// As [`Bench::start`] with the runner running as `nobody` (through
    /// setpriv), so that permissions bite and hiding goes through a user
    /// namespace. `None` unless this test runs as root with setpriv there.
    fn start_as_nobody() -> Option<Bench> {
        use std::os::unix::fs::PermissionsExt;
        let setpriv = Path::new("/usr/bin/setpriv");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !setpriv.exists() {
            return None;
        }
        let repo = TestRepo::new();
        repo.commit_passing(1);
        // The origin must be readable and owned by the runner's user (git
        // refuses repositories of other users), the work dir its own.
        fs::set_permissions(repo.root(), fs::Permissions::from_mode(0o755)).unwrap();
        let work = repo.dir("runner-nobody");
        chown_tree(repo.path());
        chown_tree(&work);
        let dispatcher = Dispatcher::start(&repo.dir("dispatcher"), &[]);
        let (reuid, regid) = (format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"));
        let runner_bin = bin("ci-runner");
        let runner = Proc::spawn_path(
            setpriv,
            &[
                reuid.as_str(),
                regid.as_str(),
                "--clear-groups",
                "--",
                "/usr/bin/env",
                // Not root's PATH: its python may live under /root.
                "PATH=/usr/local/bin:/usr/bin:/bin",
                p(&runner_bin),
                "--dispatcher",
                dispatcher.addr(),
                "--repo",
                repo.url(),
                "--work-dir",
                p(&work),
                "--name",
                "nobody",
                "--heartbeat-interval",
                RUNNER_HEARTBEAT_INTERVAL_SECS,
                "--job-timeout",
                "60",
            ],
            repo.root(),
            "runner-nobody",
        );
        Some(Bench {
            runner,
            dispatcher,
            repo,
            name: "nobody".into(),
            work,
        })
    }

    fn addr(&self) -> &str {
        self.dispatcher.addr()
    }

    /// The runner's `--work-dir`, absolute.
    fn work_dir(&self) -> PathBuf {
        self.work.clone()
    }

    /// Python that the damaging test runs: `RUNNER` is the runner's root
    /// directory as seen through /proc (the runner's own view of the file
    /// system, whatever mount namespace the test is in), `WORK` the
    /// runner's work directory.
    fn prelude(&self) -> String {
        format!(
            "import os, shutil, stat, subprocess, sys, time, unittest\n\
             WORK = {work:?}\n\
             RUNNER = '/proc/{pid}/root'\n\
             REAL_WORK = RUNNER + WORK\n",
            work = p(&self.work_dir()),
            pid = self.runner.pid(),
        )
    }

    /// Commit 1: the passing tests plus `tests/test_damage.py` holding
    /// `body` (a unittest class) after [`Bench::prelude`].
    fn commit_damage(&self, body: &str) -> String {
        let mut files = data_files("passing");
        files.push((
            "tests/test_damage.py".into(),
            format!("{}\n{body}", self.prelude()),
        ));
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        self.repo.commit(&files, "a test that damages its runner")
    }

    /// Commit 2: the passing tests, the damaging test made harmless, and a
    /// test that the checkout holds exactly the committed files (nothing
    /// left by an earlier job).
    fn commit_clean(&self) -> String {
        let mut files = data_files("passing");
        files.push(("tests/test_damage.py".into(), "# harmless now\n".into()));
        let mut expected = tip_files(&self.repo);
        expected.extend(files.iter().map(|(p, _)| p.clone()));
        expected.push("tests/test_clean.py".into());
        expected.sort();
        expected.dedup();
        files.push(("tests/test_clean.py".into(), clean_test(&expected)));
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        self.repo
            .commit(&files, "passing tests in a clean checkout")
    }

    fn submit(&self, shas: &[&str]) {
        let mut args = vec!["submit", "--dispatcher", self.addr(), "--branch", "main"];
        args.extend_from_slice(shas);
        tools_expect(&args, 0);
    }

    fn output(&self, sha: &str) -> String {
        let o = tools_expect(&["output", "--dispatcher", self.addr(), sha], 0);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Commits `body`'s damage and waits for its result, then commits the
    /// clean commit (so the runner must fetch it after the damage) and waits
    /// for that. Returns (damaging sha, clean sha, results).
    fn damage_then_pass(&self, body: &str) -> (String, String, Vec<Value>) {
        let bad = self.commit_damage(body);
        self.submit(&[&bad]);
        wait_final(self.addr(), &[&bad], LONG);
        let good = self.commit_clean();
        self.submit(&[&good]);
        let results = wait_final(self.addr(), &[&bad, &good], LONG);
        (bad, good, results)
    }

    /// The clean commit passed; nothing about either commit blames --repo.
    fn assert_recovered(&self, bad: &str, good: &str, results: &[Value]) {
        let r = result_for(results, good).expect("a result for the clean commit");
        let out = self.output(good);
        assert_eq!(
            r["outcome"],
            "pass",
            "the commit after the damage must pass on the same runner\nresult: {}\noutput:\n{out}",
            pretty(r)
        );
        assert_eq!(r["runner"], self.name.as_str(), "{}", pretty(r));
        for sha in [bad, good] {
            let r = result_for(results, sha).expect("a result");
            let message = r["message"].as_str().unwrap_or_default();
            let out = self.output(sha);
            assert!(
                !message.contains("--repo") && !out.contains("--repo"),
                "a damaged cache must not be blamed on --repo ({})\nresult: {}\noutput:\n{out}",
                short(sha),
                pretty(r)
            );
        }
    }

    fn runner_log(&self) -> String {
        self.runner.stderr()
    }

    /// Whether the runner said it could not hide its directories from tests.
    fn isolation_unavailable(&self) -> bool {
        self.runner_log().contains("without isolation")
    }
}

/// A unittest asserting that the checkout holds exactly `expected` (paths
/// relative to the checkout, sorted).
fn clean_test(expected: &[String]) -> String {
    format!(
        "import os, unittest\n\
         EXPECTED = {expected:?}\n\
         class TestClean(unittest.TestCase):\n\
         \x20   def test_checkout_holds_only_the_commit(self):\n\
         \x20       found = []\n\
         \x20       for root, dirs, files in os.walk('.'):\n\
         \x20           for f in files:\n\
         \x20               found.append(os.path.relpath(os.path.join(root, f), '.'))\n\
         \x20       self.assertEqual(sorted(found), EXPECTED)\n"
    )
}

/// Every file path in the tree of `main`'s tip.
fn tip_files(repo: &TestRepo) -> Vec<String> {
    let tree = repo
        .git()
        .find_reference("refs/heads/main")
        .and_then(|r| r.peel_to_tree())
        .expect("main has a tree");
    let mut out = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            out.push(format!("{dir}{}", entry.name().expect("UTF-8 name")));
        }
        git2::TreeWalkResult::Ok
    })
    .expect("walk the tree");
    out
}

fn mirror_head(work: &Path) -> PathBuf {
    work.join("mirror.git").join("HEAD")
}

/// The regression itself, through the checkout: with isolation the test
/// cannot even see the mirror; the next commit passes either way.
#[test]
fn a_test_removing_the_mirror_through_its_checkout_does_not_poison_the_runner() {
    let b = Bench::start();
    let (bad, good, results) = b.damage_then_pass(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_remove_the_mirror(self):\n\
         \x20       for up in ('..', '../..'):\n\
         \x20           path = os.path.join(up, 'mirror.git')\n\
         \x20           print(path, 'visible' if os.path.exists(os.path.join(path, 'HEAD')) else 'hidden')\n\
         \x20           shutil.rmtree(path, ignore_errors=True)\n",
    );
    b.assert_recovered(&bad, &good, &results);
    if b.isolation_unavailable() {
        eprintln!("isolation unavailable here: the mirror was rebuilt instead of hidden");
        return;
    }
    let out = b.output(&bad);
    assert!(!out.contains("visible"), "the test saw the mirror:\n{out}");
    assert!(
        mirror_head(&b.work_dir()).is_file(),
        "the mirror was damaged through the checkout"
    );
    assert!(
        !b.runner_log().contains("rebuil"),
        "the mirror needed no rebuild:\n{}",
        b.runner_log()
    );
}

/// What a determined test can do: remove the mirror through the runner's
/// own view of the file system. The runner notices before the next job
/// and rebuilds it.
#[test]
fn a_removed_mirror_is_rebuilt_before_the_next_job() {
    let b = Bench::start();
    let (bad, good, results) = b.damage_then_pass(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_remove_the_mirror(self):\n\
         \x20       # The directory itself stays: it is a mount point in this\n\
         \x20       # test's namespace (EBUSY). Everything in it goes.\n\
         \x20       shutil.rmtree(REAL_WORK + '/mirror.git', ignore_errors=True)\n\
         \x20       self.assertFalse(os.path.exists(REAL_WORK + '/mirror.git/HEAD'))\n",
    );
    assert_eq!(
        outcome_of(&results, &bad),
        Some("pass"),
        "the damage happened"
    );
    b.assert_recovered(&bad, &good, &results);
    let log = b.runner_log();
    assert!(log.contains("the mirror is damaged"), "{log}");
    assert!(log.contains("rebuilt from the source"), "{log}");
    assert!(mirror_head(&b.work_dir()).is_file());
}

/// Every object file of the mirror cut in half (packs and their indexes):
/// the runner must neither crash on its old memory mappings of them nor
/// blame the source.
#[test]
fn truncated_mirror_objects_are_rebuilt_before_the_next_job() {
    let b = Bench::start();
    let (bad, good, results) = b.damage_then_pass(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_truncate_the_objects(self):\n\
         \x20       n = 0\n\
         \x20       for root, dirs, files in os.walk(REAL_WORK + '/mirror.git/objects'):\n\
         \x20           for f in files:\n\
         \x20               path = os.path.join(root, f)\n\
         \x20               with open(path, 'r+b') as fh:\n\
         \x20                   fh.truncate(os.path.getsize(path) // 2)\n\
         \x20               n += 1\n\
         \x20       self.assertGreater(n, 0)\n",
    );
    assert_eq!(
        outcome_of(&results, &bad),
        Some("pass"),
        "the damage happened"
    );
    b.assert_recovered(&bad, &good, &results);
    assert!(b.runner_log().contains("rebuilt from the source"));
}

#[test]
fn a_mirror_without_head_is_rebuilt_before_the_next_job() {
    let b = Bench::start();
    let (bad, good, results) = b.damage_then_pass(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_remove_head(self):\n\
         \x20       os.remove(REAL_WORK + '/mirror.git/HEAD')\n",
    );
    assert_eq!(
        outcome_of(&results, &bad),
        Some("pass"),
        "the damage happened"
    );
    b.assert_recovered(&bad, &good, &results);
    assert!(b.runner_log().contains("rebuilt from the source"));
}

/// Directories without permissions, a read-only tree, a checkout and a
/// `jobs/` the test made read-only, and (as root, where the file system
/// allows it) an immutable file: the next job still gets a fresh, clean
/// checkout.
#[test]
fn a_checkout_left_unremovable_does_not_block_the_next_job() {
    let b = Bench::start();
    let (bad, good, results) = b.damage_then_pass(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_leave_an_unremovable_checkout(self):\n\
         \x20       os.makedirs('locked/deeper/deepest')\n\
         \x20       for d in ('locked/deeper/deepest', 'locked/deeper', 'locked'):\n\
         \x20           with open(os.path.join(d, 'f'), 'w') as fh:\n\
         \x20               fh.write('x')\n\
         \x20           os.chmod(d, 0)\n\
         \x20       os.makedirs('readonly/sub')\n\
         \x20       with open('readonly/sub/f', 'w') as fh:\n\
         \x20           fh.write('x')\n\
         \x20       for root, dirs, files in os.walk('readonly', topdown=False):\n\
         \x20           for f in files:\n\
         \x20               os.chmod(os.path.join(root, f), 0o444)\n\
         \x20           os.chmod(root, 0o555)\n\
         \x20       if os.geteuid() == 0:\n\
         \x20           subprocess.run(['chattr', '+i', 'readonly/sub/f'], stderr=subprocess.DEVNULL)\n\
         \x20       os.chmod('.', 0o500)\n\
         \x20       os.chmod('..', 0o500)\n",
    );
    let trash_left = b.work_dir().join("trash").exists();
    // Should the runner have failed to lift the flag: the temp dir must go.
    let _ = std::process::Command::new("chattr")
        .args(["-R", "-i"])
        .arg(b.work_dir())
        .stderr(std::process::Stdio::null())
        .status();
    assert_eq!(
        outcome_of(&results, &bad),
        Some("pass"),
        "the damage happened"
    );
    b.assert_recovered(&bad, &good, &results);
    assert!(
        !trash_left && !b.runner_log().contains("cannot empty the trash"),
        "the previous checkout was removed:\n{}",
        b.runner_log()
    );
}

/// Writers left behind: one in the test's process group (killed when the
/// test ends) and one that escaped it with setsid (alive for seconds
/// more, writing into its working directory). The next checkout is clean.
#[test]
fn writers_left_behind_do_not_dirty_the_next_checkout() {
    let b = Bench::start();
    let (bad, good, results) = b.damage_then_pass(
        "WRITER = 'i=0; while [ $i -lt 300 ]; do echo x > junk-$1-$i; i=$((i+1)); sleep 0.01; done'\n\
         class TestDamage(unittest.TestCase):\n\
         \x20   def test_leave_writers_behind(self):\n\
         \x20       quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
         \x20       subprocess.Popen(['sh', '-c', WRITER, 'sh', 'member'], **quiet)\n\
         \x20       subprocess.Popen(['sh', '-c', WRITER, 'sh', 'escaped'], start_new_session=True, **quiet)\n\
         \x20       time.sleep(0.3)\n\
         \x20       names = os.listdir('.')\n\
         \x20       self.assertTrue(any(n.startswith('junk-member') for n in names), names)\n\
         \x20       self.assertTrue(any(n.startswith('junk-escaped') for n in names), names)\n",
    );
    assert_eq!(outcome_of(&results, &bad), Some("pass"), "the writers ran");
    b.assert_recovered(&bad, &good, &results);
    let checkout = b.work_dir().join("jobs/checkout");
    thread::sleep(Duration::from_millis(500));
    let junk: Vec<_> = fs::read_dir(&checkout)
        .expect("the last checkout is there")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("junk"))
        .collect();
    assert!(junk.is_empty(), "junk in the current checkout: {junk:?}");
}

/// The marker file is the agent's: a test deleting it breaks nothing.
#[test]
fn a_test_removing_the_runners_marker_file_breaks_nothing() {
    let b = Bench::start();
    let (bad, good, results) = b.damage_then_pass(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_remove_the_marker(self):\n\
         \x20       for path in ('../../current-job', REAL_WORK + '/current-job'):\n\
         \x20           if os.path.exists(path):\n\
         \x20               os.remove(path)\n\
         \x20               print('removed', path)\n",
    );
    assert!(
        b.output(&bad).contains("removed"),
        "the marker was there to remove:\n{}",
        b.output(&bad)
    );
    b.assert_recovered(&bad, &good, &results);
}

/// Damaged mirror AND unreachable source: the job's message says both;
/// once the source is back, the next job passes.
#[test]
fn a_damaged_mirror_and_a_lost_source_are_both_named() {
    let b = Bench::start();
    let bad = b.commit_damage(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_remove_the_mirror(self):\n\
         \x20       shutil.rmtree(REAL_WORK + '/mirror.git', ignore_errors=True)\n",
    );
    b.submit(&[&bad]);
    wait_final(b.addr(), &[&bad], LONG);
    let stranded = b.commit_clean();
    let away = b.repo.root().join("origin-away");
    fs::rename(b.repo.path(), &away).expect("move the source away");
    b.submit(&[&stranded]);
    let results = wait_final(b.addr(), &[&stranded], LONG);
    fs::rename(&away, b.repo.path()).expect("bring the source back");
    let r = result_for(&results, &stranded).expect("a result");
    let message = r["message"].as_str().unwrap_or_default();
    assert_eq!(r["outcome"], "error", "{}", pretty(r));
    let mirror = b.work_dir().join("mirror.git");
    assert!(
        message.starts_with(&format!("the mirror at {} is damaged (", mirror.display())),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            ") and could not be rebuilt: cannot read repository {}: no such file or directory",
            b.repo.url()
        )),
        "{message}"
    );

    let good = b.commit_clean();
    b.submit(&[&good]);
    let results = wait_final(b.addr(), &[&good], LONG);
    assert_eq!(
        outcome_of(&results, &good),
        Some("pass"),
        "{}",
        pretty(&results)
    );
}

/// A runner restarted on a work dir from an earlier release (checkout at
/// the top) whose mirror a test damaged starts, and its first job passes.
#[test]
fn a_runner_restarted_on_an_old_damaged_work_dir_starts_and_passes() {
    let mut b = Bench::start();
    let first = b.commit_clean();
    b.submit(&[&first]);
    wait_final(b.addr(), &[&first], LONG);
    b.runner.kill9_group();
    let work = b.work_dir();
    // What an earlier release left, and a damaged mirror.
    fs::create_dir_all(work.join("checkout/tests")).unwrap();
    fs::write(
        work.join("checkout/tests/test_old.py"),
        "raise SystemExit(1)\n",
    )
    .unwrap();
    fs::remove_dir_all(work.join("jobs")).unwrap();
    fs::remove_file(mirror_head(&work)).unwrap();

    b.runner = runner(b.addr(), &b.repo, "r1");
    let good = b.commit_clean();
    b.submit(&[&good]);
    let results = wait_final(b.addr(), &[&good], LONG);
    b.assert_recovered(&first, &good, &results);
    assert!(
        !work.join("checkout").exists(),
        "the old checkout was cleared"
    );
    assert!(b.runner.is_running());
}

/// Regression: a broken `.ci.toml` ended the commit with a message naming
/// the runner's absolute checkout path.
#[test]
fn a_broken_ci_toml_is_named_as_the_repository_knows_it() {
    let b = Bench::start();
    let sha = b.repo.commit(
        &[(".ci.toml", "[test]\ntimeout_secs = 5\ncommand = [\"a\"\n")],
        "a broken .ci.toml",
    );
    b.submit(&[&sha]);
    let results = wait_final(b.addr(), &[&sha], LONG);
    let r = result_for(&results, &sha).expect("a result");
    let message = r["message"].as_str().unwrap_or_default();
    assert_eq!(r["outcome"], "error", "{}", pretty(r));
    assert!(
        message.starts_with(".ci.toml is invalid at line 3: "),
        "{message}"
    );
    assert!(!message.contains(p(&b.work_dir())), "{message}");
    assert!(!b.output(&sha).contains(p(&b.work_dir())));
}

/// A runner that is not root (the usual case): tests keep its uid, hiding
/// goes through a user namespace, and a checkout locked with permissions
/// (which bite here) is cleared before the next job.
#[test]
fn a_runner_that_is_not_root_hides_its_mirror_and_clears_locked_checkouts() {
    let Some(b) = Bench::start_as_nobody() else {
        eprintln!("skipped: needs root and setpriv to start a runner as nobody");
        return;
    };
    let (bad, good, results) = b.damage_then_pass(
        "class TestDamage(unittest.TestCase):\n\
         \x20   def test_as_the_runners_user(self):\n\
         \x20       print('uid', os.getuid(), os.geteuid(), 'gid', os.getgid())\n\
         \x20       for up in ('..', '../..'):\n\
         \x20           path = os.path.join(up, 'mirror.git')\n\
         \x20           print(path, 'visible' if os.path.exists(os.path.join(path, 'HEAD')) else 'hidden')\n\
         \x20           shutil.rmtree(path, ignore_errors=True)\n\
         \x20       os.makedirs('locked/deeper')\n\
         \x20       with open('locked/deeper/f', 'w') as fh:\n\
         \x20           fh.write('x')\n\
         \x20       os.chmod('locked/deeper', 0)\n\
         \x20       os.chmod('locked', 0)\n\
         \x20       os.chmod('.', 0o500)\n\
         \x20       os.chmod('..', 0o500)\n",
    );
    let out = b.output(&bad);
    assert_eq!(outcome_of(&results, &bad), Some("pass"), "{out}");
    assert!(out.contains("uid 65534 65534 gid 65534"), "{out}");
    b.assert_recovered(&bad, &good, &results);
    let log = b.runner_log();
    assert!(
        !log.contains("cannot empty the trash") && !b.work_dir().join("trash").exists(),
        "the locked checkout was removed:\n{log}"
    );
    if b.isolation_unavailable() {
        eprintln!("isolation unavailable for this user here: the mirror was rebuilt instead");
        return;
    }
    assert!(!out.contains("visible"), "the test saw the mirror:\n{out}");
    assert!(mirror_head(&b.work_dir()).is_file());
    assert!(!log.contains("rebuil"), "{log}");
}
