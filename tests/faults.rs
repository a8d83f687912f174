//! Faults beyond kill -9, on the real binaries: a full disk, lost file
//! descriptors (for writing, and strangers holding connections), a paused
//! dispatcher, a stepped wall clock, clients facing a dispatcher that
//! accepts and refuses, a runner stopped while the dispatcher is away, a
//! damaged snapshot, a damaged database, a data directory deleted under a
//! running dispatcher, and inspection of a read-only copy. Each ends in one
//! clear error, a clean stop or a recovery, and nothing acknowledged is lost.
//!
//! Several need root (a tmpfs, lowering a process's descriptor limit,
//! remounting read-only); CI runs as root. The clock test needs Debian's
//! libfaketime (`.ci/run` installs it).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn need_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "{what} needs root (CI runs as root)"
    );
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small tmpfs mounted by the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        need_root("mounting a tmpfs");
        std::fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                p(dir),
            ],
        );
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, opts: &str) {
        run("mount", &["-o", &format!("remount,{opts}"), p(&self.0)]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", p(&self.0)]).output();
    }
}

/// The lines of `text` that report an error: logged at error level, or
/// the program's own last words.
fn error_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(": error: "))
        .collect()
}

/// Asserts a dispatcher stopped with exit 2 and exactly one error line
/// containing every word of `want`; returns that line.
fn one_error_line(d: &mut Proc, want: &[&str]) -> String {
    let err = d.stderr();
    assert!(!err.contains("panicked"), "{err}");
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "one error line, not: {err}");
    let lower = lines[0].to_lowercase();
    for w in want {
        assert!(
            lines[0].contains(w) || lower.contains(w),
            "{w:?} missing from {:?}",
            lines[0]
        );
    }
    lines[0].to_string()
}

fn sha_of_commits(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| r["commit"].as_str().map(str::to_string))
        .collect()
}

fn fake_sha(n: u64) -> String {
    format!("{:040x}", 0xfa17_0000_0000u64 + n)
}

fn submit(addr: &str, shas: &[String]) -> std::process::Output {
    let mut args = vec!["submit", "--dispatcher", addr];
    args.extend(shas.iter().map(String::as_str));
    tools(&args)
}

/// A full disk under the data directory: the dispatcher says so once, stops
/// with exit 2 within seconds, releases its port and lock; every commit it
/// acknowledged is there after a restart once there is space again.
#[test]
fn a_full_disk_stops_the_dispatcher_cleanly_and_a_restart_resumes() {
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("disk"), "6m");
    let data = disk.0.join("data");
    let port = free_port();
    let mut d = Dispatcher::start_on(port, &data, &[]);
    // Leave a little room, then submit until the disk is full.
    let filler = disk.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    std::fs::write(&filler, vec![0u8; 0]).ok();
    let free = 5 * 1024 * 1024 + 512 * 1024;
    std::fs::write(&filler, vec![0u8; free]).unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    let started = Instant::now();
    for n in 0..20_000u64 {
        let shas: Vec<String> = (0..50).map(|i| fake_sha(n * 50 + i)).collect();
        let o = submit(d.addr(), &shas);
        if o.status.success() {
            acked.extend(shas);
        } else {
            refused = Some(String::from_utf8_lossy(&o.stderr).into_owned());
            break;
        }
        assert!(started.elapsed() < LONG, "the disk never filled");
    }
    let refused = refused.expect("a submission was refused");
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the disk filled"
    );
    // The refusal says why, and the dispatcher is gone within seconds.
    assert!(
        refused.contains("stopping") || refused.contains("cannot reach"),
        "{refused}"
    );
    let status = d.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(exit_code(&status), Some(2), "{}", d.proc.report());
    one_error_line(&mut d.proc, &["no space left", p(&data), "free space"]);
    // Port and lock are free: the same port binds, the same directory opens.
    drop(TcpListener::bind(("127.0.0.1", port)).expect("the port was released"));
    // With the disk still full it refuses to start, saying so.
    let mut again = Dispatcher::spawn_proc(&format!("127.0.0.1:{port}"), &data, &[], 1);
    let st = again.wait_exit(SHORT);
    assert_eq!(exit_code(&st), Some(2), "{}", again.report());
    assert!(!again.stderr().contains("in use"), "{}", again.stderr());
    // Space again: it resumes, and every acknowledged commit is there.
    std::fs::remove_file(&filler).unwrap();
    let d2 = Dispatcher::start_on(port, &data, &[]);
    let results = results_json(d2.addr());
    let have: std::collections::HashSet<String> = sha_of_commits(&results).into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|s| !have.contains(*s)).collect();
    assert!(lost.is_empty(), "{} acknowledged commits lost", lost.len());
    drop(d2);
    drop(disk);
}

/// A test whose output is large enough for sled to write it to a file of
/// its own, after sleeping a little.
fn big_output_commit(repo: &TestRepo, secs: f64) -> String {
    repo.commit(
        &[(
            "tests/test_big.py",
            &format!(
                "import sys, time, unittest\n\nclass T(unittest.TestCase):\n    def test_big(self):\n        time.sleep({secs})\n        sys.stdout.write('x' * 300000 + '\\n')\n"
            ),
        )],
        "a test with a big output",
    )
}

fn wait_running(addr: &str, sha: &str) {
    wait_for("the job to run", LONG, || {
        let r = try_results_json(addr)?;
        match outcome_of(&r, sha) {
            Some("running") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// The dispatcher runs out of file descriptors while it writes (here: its
/// limit is lowered under it, as a leak or a flood would): one clear line,
/// exit 2; the runner keeps its finished result and delivers it to the
/// restarted dispatcher, and the commit passes in its first attempt.
#[test]
fn out_of_descriptors_while_writing_stops_cleanly_and_the_result_survives() {
    need_root("lowering a process's descriptor limit");
    let repo = TestRepo::new();
    let sha = big_output_commit(&repo, 2.0);
    let data = repo.dir("dispatcher");
    let port = free_port();
    let mut d = Dispatcher::start_on(port, &data, &[]);
    let _r = runner(d.addr(), &repo, "r1");
    let o = submit(d.addr(), std::slice::from_ref(&sha));
    assert!(o.status.success(), "{}", show_tools(&["submit"], &o));
    wait_running(d.addr(), &sha);
    run(
        "prlimit",
        &["--pid", &d.proc.pid().to_string(), "--nofile=8:8"],
    );
    let status = d.proc.wait_exit(LONG);
    assert_eq!(exit_code(&status), Some(2), "{}", d.proc.report());
    one_error_line(&mut d.proc, &["too many open files", "open-file limit"]);
    d.restart();
    let results = wait_final(d.addr(), &[&sha], LONG);
    let r = result_for(&results, &sha).unwrap();
    assert_eq!(r["outcome"], "pass", "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
    let replay = replay_json_online(d.addr());
    assert!(events(&replay, "heartbeat_lost").is_empty(), "{replay:?}");
}

/// Strangers holding idle connections (no token, no hello) cannot use up
/// the dispatcher's descriptors: the connection cap fits under its limit,
/// unproven connections per address are few and time out quickly. A
/// submission and a runner from another address are served meanwhile.
#[test]
fn strangers_holding_connections_cannot_starve_the_dispatcher() {
    let repo = TestRepo::new();
    let shas = repo.commit_passing(1);
    let data = repo.dir("dispatcher");
    let port = free_port();
    // A common descriptor limit, lower than the default connection cap.
    let mut args = vec![
        "--nofile=256:256".to_string(),
        bin("ci-dispatcher").display().to_string(),
    ];
    args.extend(
        [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            p(&data),
            "--heartbeat-timeout",
            "5",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut d = Proc::spawn_path(
        Path::new("/usr/bin/prlimit"),
        &args,
        repo.root(),
        "dispatcher",
    );
    let addr = format!("127.0.0.1:{port}");
    wait_for("the dispatcher to listen", SHORT, || {
        TcpStream::connect(&addr)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    // 600 idle connections from another loopback address, held open.
    let stranger: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..600 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&stranger.into()).unwrap();
        s.set_nonblocking(true).unwrap();
        let target: SocketAddr = addr.parse().unwrap();
        let _ = s.connect(&target.into());
        held.push(s);
    }
    let started = Instant::now();
    let o = submit(&addr, &shas);
    assert!(o.status.success(), "{}", show_tools(&["submit"], &o));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "served only after {:?}",
        started.elapsed()
    );
    let _r = runner(&addr, &repo, "r1");
    let results = wait_final(&addr, &shas, LONG);
    assert_eq!(outcome_of(&results, &shas[0]), Some("pass"));
    assert!(d.is_running(), "{}", d.report());
    let err = d.stderr();
    assert!(
        err.contains("open-file limit allows fewer connections"),
        "{err}"
    );
    drop(held);
    d.sigterm();
    assert_eq!(exit_code(&d.wait_exit(SHORT)), Some(0), "{}", d.report());
}

/// A test that sleeps, for jobs that outlast the faults.
fn sleeping_commit(repo: &TestRepo, secs: f64) -> String {
    repo.commit(
        &[(
            "tests/test_sleep.py",
            &format!(
                "import time, unittest\n\nclass T(unittest.TestCase):\n    def test_sleep(self):\n        time.sleep({secs})\n"
            ),
        )],
        "a slow test",
    )
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// SIGSTOP of the dispatcher, longer than the heartbeat timeout, three
/// times while a job runs (a frozen VM, swapping, a debugger): the healthy
/// runner keeps its job; the pauses are on record.
#[test]
fn a_paused_dispatcher_loses_no_runner() {
    let repo = TestRepo::new();
    let sha = sleeping_commit(&repo, 12.0);
    let data = repo.dir("dispatcher");
    let mut d = Dispatcher::start(&data, &["--heartbeat-timeout", "2"]);
    let _r = runner(d.addr(), &repo, "r1");
    let o = submit(d.addr(), std::slice::from_ref(&sha));
    assert!(o.status.success());
    wait_running(d.addr(), &sha);
    let pid = d.proc.pid();
    for _ in 0..3 {
        signal(pid, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(3_000));
        signal(pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(400));
    }
    let results = wait_final(d.addr(), &[&sha], LONG);
    let r = result_for(&results, &sha).unwrap();
    assert_eq!(r["outcome"], "pass", "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
    let replay = replay_json_online(d.addr());
    assert!(events(&replay, "heartbeat_lost").is_empty(), "{replay:?}");
    assert!(
        events(&replay, "dispatcher_paused").len() >= 3,
        "{replay:?}"
    );
    assert_eq!(d.stop(), Some(0));
}

/// The dispatcher's wall clock steps forward two hours, then back three
/// (libfaketime): nobody is lost for it; a runner that really dies is still
/// found within the timeout; records carry the wall time of the moment.
#[test]
fn a_stepped_wall_clock_loses_no_runner_and_still_finds_a_dead_one() {
    let lib = Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1");
    assert!(
        lib.exists(),
        "{} is missing: install Debian's libfaketime (.ci/run does)",
        lib.display()
    );
    let repo = TestRepo::new();
    let sha = sleeping_commit(&repo, 60.0);
    let data = repo.dir("dispatcher");
    let clock = repo.root().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        p(&data),
        "--heartbeat-timeout",
        "2",
    ];
    let env = [
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", p(&clock).to_string()),
        ("FAKETIME_NO_CACHE", "1".into()),
        ("DONT_FAKE_MONOTONIC", "1".into()),
    ];
    let mut d = Proc::spawn_with_env("ci-dispatcher", &args, repo.root(), "dispatcher", &env);
    let addr = wait_for("the dispatcher to listen", SHORT, || {
        d.stdout()
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("listening on "))
            .map(str::to_string)
            .ok_or_else(|| d.stdout())
    });
    let mut r = runner(&addr, &repo, "r1");
    assert!(submit(&addr, std::slice::from_ref(&sha)).status.success());
    wait_running(&addr, &sha);
    std::fs::write(&clock, "+2h\n").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    std::fs::write(&clock, "-1h\n").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let replay = replay_json_online(&addr);
    assert!(
        events(&replay, "heartbeat_lost").is_empty(),
        "a clock step lost a runner: {replay:?}"
    );
    // The runner dies now: found within the timeout, not an hour later.
    r.kill9_group();
    let died = Instant::now();
    let lost = wait_for("the dead runner to be found", LONG, || {
        let replay = try_replay_json_online(&addr)?;
        events(&replay, "heartbeat_lost")
            .first()
            .map(|e| (*e).clone())
            .ok_or_else(|| format!("{} events", replay.len()))
    });
    assert!(
        died.elapsed() < Duration::from_secs(10),
        "found after {:?}",
        died.elapsed()
    );
    assert_eq!(lost["reason"], "heartbeat_timeout", "{lost}");
    // Stamped with the stepped wall clock (an hour behind), for display.
    let at = lost["at_ms"].as_u64().unwrap();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(real - at > 3_000_000, "at_ms {at} vs now {real}");
    d.sigterm();
    assert_eq!(exit_code(&d.wait_exit(SHORT)), Some(0), "{}", d.report());
}

/// A stand-in for a dispatcher that accepts, greets, welcomes, and then
/// closes on the first request (or before the greeting): counts how often
/// it is connected to.
fn refusing_server(greet: bool) -> (String, Arc<AtomicUsize>) {
    use ci::proto::{ClientMsg, Greeting, PROTOCOL_VERSION, ServerMsg};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            if !greet {
                continue;
            }
            let frame = |m: &ServerMsg| {
                let b = ci::encoding::encode(m).unwrap();
                let mut f = (b.len() as u32).to_be_bytes().to_vec();
                f.extend(b);
                f
            };
            let _ = s.write_all(&frame(&ServerMsg::Greeting(Greeting {
                version: PROTOCOL_VERSION,
                nonce: [0; 16],
            })));
            // Read the hello, welcome it, then close on what follows.
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut len = [0u8; 4];
            if std::io::Read::read_exact(&mut s, &mut len).is_ok() {
                let mut body = vec![0; u32::from_be_bytes(len) as usize];
                if std::io::Read::read_exact(&mut s, &mut body).is_ok()
                    && matches!(
                        ci::encoding::decode_wire::<ClientMsg>(&body),
                        Ok(ClientMsg::Hello(_))
                    )
                {
                    let _ = s.write_all(&frame(&ServerMsg::Welcome {
                        keep: None,
                        idle_heartbeat_ms: 0,
                    }));
                    let _ = std::io::Read::read_exact(&mut s, &mut len);
                }
            }
        }
    });
    (addr, count)
}

/// Every client loop backs off from a dispatcher that accepts and then
/// refuses or closes: a few connections a second at most, never thousands.
#[test]
fn clients_back_off_from_a_dispatcher_that_accepts_and_refuses() {
    let repo = TestRepo::new();
    let sha = repo.commit_passing(1).remove(0);
    for greet in [true, false] {
        // ci-tools wait
        let (addr, count) = refusing_server(greet);
        let o = tools_timeout(
            &["wait", "--dispatcher", &addr, "--timeout", "4", &sha],
            SHORT,
        );
        assert_eq!(o.status.code(), Some(2), "{}", show_tools(&["wait"], &o));
        let n = count.load(Ordering::SeqCst);
        assert!((2..=20).contains(&n), "wait connected {n} times in 4 s");
        // ci-runner and ci-observer
        let (addr, count) = refusing_server(greet);
        let mut r = runner(&addr, &repo, &format!("r-{greet}"));
        let mut o = observer(&addr, &repo, "main");
        std::thread::sleep(Duration::from_secs(4));
        let n = count.load(Ordering::SeqCst);
        assert!(
            r.is_running() && o.is_running(),
            "{}\n{}",
            r.report(),
            o.report()
        );
        assert!(
            (2..=40).contains(&n),
            "runner and observer connected {n} times in 4 s"
        );
    }
}

/// A runner running a test that sleeps `secs`, whose dispatcher was just
/// killed (kill -9): the repository, the commit, the dispatcher (to
/// restart on the same port) and the runner.
fn running_then_dispatcher_killed(secs: f64) -> (TestRepo, String, Dispatcher, Proc) {
    let repo = TestRepo::new();
    let sha = sleeping_commit(&repo, secs);
    let data = repo.dir("dispatcher");
    let mut d = Dispatcher::start_on(free_port(), &data, &[]);
    let r = runner(d.addr(), &repo, "r1");
    let o = submit(d.addr(), std::slice::from_ref(&sha));
    assert!(o.status.success(), "{}", show_tools(&["submit"], &o));
    wait_running(d.addr(), &sha);
    d.kill9();
    (repo, sha, d, r)
}

/// The runner finishes its job while the dispatcher is down, and is stopped
/// (SIGTERM) before the dispatcher is back: the result is kept on disk and
/// delivered by the runner's next start. Nothing runs twice, nothing is
/// counted as lost.
#[test]
fn a_result_finished_while_the_dispatcher_is_away_survives_a_runner_stop() {
    let (repo, sha, mut d, mut r) = running_then_dispatcher_killed(2.0);
    wait_for("the job to finish", LONG, || {
        if r.stderr().contains("job finished") {
            Ok(())
        } else {
            Err(r.stderr())
        }
    });
    r.sigterm();
    assert_eq!(exit_code(&r.wait_exit(SHORT)), Some(0), "{}", r.report());
    d.restart();
    let _r2 = runner(d.addr(), &repo, "r1");
    let results = wait_final(d.addr(), &[&sha], LONG);
    let res = result_for(&results, &sha).unwrap();
    assert_eq!(res["outcome"], "pass", "{res}");
    assert_eq!(res["attempts"], 1, "{res}");
    let replay = replay_json_online(d.addr());
    assert!(events(&replay, "heartbeat_lost").is_empty(), "{replay:?}");
    assert_eq!(events(&replay, "job_assigned").len(), 1, "{replay:?}");
}

/// A runner stopped (SIGTERM) mid-job while the dispatcher is down hands
/// the job back on its next start: queued again, not counted as a loss.
#[test]
fn a_job_handed_back_while_the_dispatcher_is_away_is_not_a_loss() {
    let (repo, sha, mut d, mut r) = running_then_dispatcher_killed(4.0);
    r.sigterm();
    assert_eq!(exit_code(&r.wait_exit(SHORT)), Some(0), "{}", r.report());
    d.restart();
    let _r2 = runner(d.addr(), &repo, "r1");
    let results = wait_final(d.addr(), &[&sha], LONG);
    let res = result_for(&results, &sha).unwrap();
    assert_eq!(res["outcome"], "pass", "{res}");
    let replay = replay_json_online(d.addr());
    let lost = events(&replay, "heartbeat_lost");
    assert_eq!(lost.len(), 1, "{replay:?}");
    assert_eq!(lost[0]["reason"], "handed_back", "{replay:?}");
}

/// Snapshots are a cache: a damaged newest snapshot is skipped with a
/// warning, the state comes from an older one or the log, and nothing is
/// missing.
#[test]
fn a_damaged_snapshot_is_skipped_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut d = Dispatcher::start(&data, &["--snapshot-every", "5"]);
    let shas: Vec<String> = (0..30).map(fake_sha).collect();
    for chunk in shas.chunks(3) {
        assert!(submit(d.addr(), chunk).status.success());
    }
    assert_eq!(d.stop(), Some(0));
    let newest = {
        use ci::store::SnapshotStore;
        let mut log = ci::store::SledLog::open(&data).unwrap();
        let seqs = log.snapshot_seqs().unwrap();
        assert!(seqs.len() >= 2, "{seqs:?}");
        let mut value = vec![ci::store::format::SNAPSHOT_VERSION];
        value.extend(std::iter::repeat_n(0xffu8, 64));
        log.put_raw_snapshot(seqs[0], &value).unwrap();
        ci::store::EventLog::flush(&mut log).unwrap();
        seqs[0]
    };
    let mut d2 = Dispatcher::start(&data, &["--snapshot-every", "5"]);
    let results = results_json(d2.addr());
    assert_eq!(results.len(), shas.len());
    assert_eq!(d2.stop(), Some(0));
    let err = d2.proc.stderr();
    assert!(
        err.contains("damaged snapshot") && err.contains(&format!("seq={newest}")),
        "{err}"
    );
    let out = tools_expect(&["replay", "--verify", "--data-dir", p(&data)], 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok:"));
}

/// Every file under `dir`: path, size, modification time and a digest.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                let digest = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
                });
                out.push((e.path(), m.len(), m.modified().unwrap(), digest));
            }
        }
    }
    out.sort();
    out
}

/// Looking at history changes nothing: `replay --data-dir` (and
/// `--verify`) leave every file as it was, and read a read-only copy.
#[test]
fn replay_leaves_the_data_dir_unchanged_and_reads_a_read_only_copy() {
    let root = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&root.path().join("disk"), "64m");
    let data = disk.0.join("data");
    let mut d = Dispatcher::start(&data, &["--snapshot-every", "7"]);
    let shas: Vec<String> = (0..20).map(fake_sha).collect();
    for chunk in shas.chunks(4) {
        assert!(submit(d.addr(), chunk).status.success());
    }
    let online = replay_json_online(d.addr());
    assert_eq!(d.stop(), Some(0));
    let before = fingerprint(&data);
    let offline = replay_json_offline(&data);
    tools_expect(&["replay", "--verify", "--data-dir", p(&data)], 0);
    assert_eq!(fingerprint(&data), before, "replay changed the data dir");
    assert_eq!(offline, online);
    // A read-only backup reads the same.
    disk.remount("ro");
    assert_eq!(replay_json_offline(&data), online);
    tools_expect(&["replay", "--verify", "--data-dir", p(&data)], 0);
    disk.remount("rw");
    assert_eq!(fingerprint(&data), before);
}

/// The data directory deleted under a running dispatcher: it notices at
/// the next write, acknowledges nothing more, and stops saying what
/// happened.
#[test]
fn deleting_the_data_dir_under_a_running_dispatcher_stops_it() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut d = Dispatcher::start(&data, &[]);
    assert!(submit(d.addr(), &[fake_sha(1)]).status.success());
    std::fs::remove_dir_all(&data).unwrap();
    let o = submit(d.addr(), &[fake_sha(2)]);
    assert_eq!(o.status.code(), Some(2), "{}", show_tools(&["submit"], &o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("queued"),
        "acknowledged into a deleted directory"
    );
    let status = d.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(exit_code(&status), Some(2), "{}", d.proc.report());
    one_error_line(&mut d.proc, &["deleted, moved or replaced", p(&data)]);
}

/// A damaged database file: the message names the directory, says it is
/// damaged and what to do, instead of sled's "Read corrupted data at file
/// offset None".
#[test]
fn a_damaged_database_says_which_directory_and_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut d = Dispatcher::start(&data, &[]);
    let shas: Vec<String> = (0..200).map(fake_sha).collect();
    for chunk in shas.chunks(20) {
        assert!(submit(d.addr(), chunk).status.success());
    }
    assert_eq!(d.stop(), Some(0));
    let file = data.join("db").join("db");
    let mut bytes = std::fs::read(&file).unwrap();
    for b in bytes.iter_mut().skip(64) {
        *b ^= 0xa5;
    }
    std::fs::write(&file, bytes).unwrap();
    let mut again = Dispatcher::spawn_proc("127.0.0.1:0", &data, &[], 1);
    assert_eq!(
        exit_code(&again.wait_exit(SHORT)),
        Some(2),
        "{}",
        again.report()
    );
    let line = one_error_line(&mut again, &[p(&data)]);
    assert!(
        line.contains("damaged") && line.contains("backup"),
        "{line}"
    );
    assert!(!line.contains("file offset None"), "{line}");
    // Looking at it says the same, and changes nothing.
    let o = tools(&["replay", "--data-dir", p(&data)]);
    assert_eq!(o.status.code(), Some(2), "{}", show_tools(&["replay"], &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("damaged") && err.contains(p(&data)), "{err}");
}
