//! Harness for the end-to-end tests: real git repositories made with git2,
//! the real binaries as child processes, and waits that always end.
//!
//! In the manner of ripgrep's `tests/util.rs`:
//! - every test owns a temp dir ([`TestRepo`]) holding the origin repository,
//!   the dispatcher's data dir, each runner's and observer's work dir and the
//!   processes' logs; nothing is shared between tests, ports are 0 or fresh;
//! - the binaries are the ones cargo built for this package;
//! - a failing test prints, for every process it started, the command line,
//!   its stdout and its stderr ([`Proc`]'s `Drop`), and a timed-out wait
//!   prints what it waited for and the last state it saw ([`wait_for`]).
//!
//! Environment knobs (all optional):
//! - `CI_TEST_RUST_LOG`: `RUST_LOG` given to the long-running programs
//!   (default `info`, so a failure report shows their logs);
//! - `CI_TEST_KEEP`: keep every test's temp dir and print its path;
//! - `CI_TEST_BIN_DIR`: run the programs from this directory instead of the
//!   ones cargo built for the test (e.g. `target/release`).
#![allow(dead_code)]

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// For things that take a moment: a process starting, a command answering.
pub const SHORT: Duration = Duration::from_secs(15);
/// The longest any single wait in a test may take.
pub const LONG: Duration = Duration::from_secs(60);
/// How often [`wait_for`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Upper bound for one `ci-tools` run unless a test says otherwise.
pub const TOOLS_TIMEOUT: Duration = Duration::from_secs(90);

/// `--heartbeat-timeout` given to dispatchers unless the test gives its own.
pub const HEARTBEAT_TIMEOUT_SECS: &str = "5";
/// `--heartbeat-interval` given to runners unless the test gives its own.
pub const RUNNER_HEARTBEAT_INTERVAL_SECS: &str = "0.5";
/// `--interval` given to observers unless the test gives its own.
pub const OBSERVER_INTERVAL_SECS: &str = "0.25";

/// How much of each output stream a failure report shows (the tail).
const REPORT_TAIL_BYTES: usize = 16 * 1024;

// ---------------------------------------------------------------------------
// Binaries and commands
// ---------------------------------------------------------------------------

/// The path of one of the package's programs, as built by cargo for this test.
///
/// `CARGO_BIN_EXE_<name>` is read with `option_env!` so that the tests compile
/// even before the binaries exist; the fallback is the directory cargo puts
/// binaries in (`target/<profile>/`, the parent of this test's `deps/`).
/// `CI_TEST_BIN_DIR` overrides both (e.g. `target/release`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CI_TEST_BIN_DIR") {
        return Path::new(&dir).join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    }
    let built = match name {
        "ci-dispatcher" => option_env!("CARGO_BIN_EXE_ci-dispatcher"),
        "ci-runner" => option_env!("CARGO_BIN_EXE_ci-runner"),
        "ci-observer" => option_env!("CARGO_BIN_EXE_ci-observer"),
        "ci-tools" => option_env!("CARGO_BIN_EXE_ci-tools"),
        _ => None,
    };
    if let Some(path) = built {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A command for one of the programs with an environment free of the user's
/// settings: no inherited `RUST_LOG`/`RUST_BACKTRACE`, no git repository
/// variables (cargo test may run inside a git hook), no system git config.
fn command(program: &str) -> Command {
    command_for(&bin(program))
}

fn command_for(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "RUST_LOG",
        "RUST_BACKTRACE",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CEILING_DIRECTORIES",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1");
    cmd.stdin(Stdio::null());
    // Own process group, so that a test can kill a program with everything
    // it started (a runner's python3), and a dead test leaves nothing behind.
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// `program arg arg...` for messages.
fn command_line<A: AsRef<str>>(program: &str, args: &[A]) -> String {
    let mut line = bin(program).display().to_string();
    for arg in args {
        line.push(' ');
        let arg = arg.as_ref();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            line.push_str(&format!("{arg:?}"));
        } else {
            line.push_str(arg);
        }
    }
    line
}

/// A path as the `&str` a flag needs (temp dirs are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// The exit code, or `None` when killed by a signal.
pub fn exit_code(status: &ExitStatus) -> Option<i32> {
    status.code()
}

fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(REPORT_TAIL_BYTES);
    let mut text = String::from_utf8_lossy(&bytes[start..]).into_owned();
    if start > 0 {
        text.insert_str(0, &format!("[... {start} bytes cut ...]\n"));
    }
    text
}

// ---------------------------------------------------------------------------
// Proc: a long-running program
// ---------------------------------------------------------------------------

static PROC_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A spawned program, killed (with its process group) when dropped. Its stdout
/// and stderr go to files under `<dir>/logs/`; if the test is panicking when
/// the `Proc` is dropped, the command line and both streams are printed (so
/// panics in this harness do not repeat them).
pub struct Proc {
    label: String,
    cmdline: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `program` (one of the package's binaries) with `args`. `dir` is
    /// the test's sandbox: logs go to `dir/logs`, `HOME` is `dir/home`.
    pub fn spawn<A: AsRef<str>>(program: &str, args: &[A], dir: &Path, label: &str) -> Proc {
        let cmdline = command_line(program, args);
        Proc::spawn_command(command(program), cmdline, args, dir, label)
    }

    /// As [`Proc::spawn`] for any program (the harness's own self-test).
    pub fn spawn_path<A: AsRef<str>>(program: &Path, args: &[A], dir: &Path, label: &str) -> Proc {
        let mut cmdline = program.display().to_string();
        for arg in args {
            cmdline.push(' ');
            cmdline.push_str(arg.as_ref());
        }
        let mut cmd = command_for(program);
        cmd.env_remove("RUST_LOG");
        Proc::spawn_command(cmd, cmdline, args, dir, label)
    }

    /// As [`Proc::spawn`], with extra environment variables (an
    /// `LD_PRELOAD`, say).
    pub fn spawn_with_env<A: AsRef<str>>(
        program: &str,
        args: &[A],
        dir: &Path,
        label: &str,
        env: &[(&str, String)],
    ) -> Proc {
        let cmdline = command_line(program, args);
        let mut cmd = command(program);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn_command(cmd, cmdline, args, dir, label)
    }

    fn spawn_command<A: AsRef<str>>(
        mut cmd: Command,
        cmdline: String,
        args: &[A],
        dir: &Path,
        label: &str,
    ) -> Proc {
        let logs = dir.join("logs");
        let home = dir.join("home");
        fs::create_dir_all(&logs).expect("create logs dir");
        fs::create_dir_all(&home).expect("create home dir");
        let n = PROC_COUNTER.fetch_add(1, Ordering::Relaxed);
        let stdout_path = logs.join(format!("{n:03}-{label}.stdout"));
        let stderr_path = logs.join(format!("{n:03}-{label}.stderr"));
        cmd.args(args.iter().map(|a| OsStr::new(a.as_ref())))
            .env("HOME", &home)
            .env(
                "RUST_LOG",
                std::env::var("CI_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(File::create(&stdout_path).expect("create stdout log"))
            .stderr(File::create(&stderr_path).expect("create stderr log"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmdline}: {e} (is the binary built?)"));
        Proc {
            label: label.to_owned(),
            cmdline,
            child,
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Everything the program has written to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the program has written to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status if the program has exited (reaping it), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the program to exit; panics with a report after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                // Its report follows, printed by `Drop`.
                panic!("{} did not exit within {timeout:?}", self.label);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the program alone (not its children), then reaps it.
    pub fn kill9(&mut self) {
        if self.try_exit().is_none() {
            // SAFETY: plain syscall on our own child's pid (not yet reaped).
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            self.status = Some(self.child.wait().expect("wait after SIGKILL"));
        }
    }

    /// `kill -9` of the program and everything in its process group.
    pub fn kill9_group(&mut self) {
        // SAFETY: the group id is our child's pid (it leads its own group).
        unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        if self.status.is_none() {
            self.status = Some(self.child.wait().expect("wait after SIGKILL"));
        }
    }

    /// Sends SIGTERM; use [`Proc::wait_exit`] to see how it ended.
    pub fn sigterm(&mut self) {
        if self.try_exit().is_none() {
            // SAFETY: plain syscall on our own child's pid (not yet reaped).
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// The command line, how it ended and the tails of stdout and stderr.
    pub fn report(&mut self) -> String {
        let state = match self.try_exit() {
            Some(status) => describe_status(&status),
            None => "still running".to_owned(),
        };
        let stdout = fs::read(&self.stdout_path).unwrap_or_default();
        let stderr = fs::read(&self.stderr_path).unwrap_or_default();
        format!(
            "=== {} (pid {}, {state}) ===\ncommand: {}\n--- stdout ({}) ---\n{}\n--- stderr ({}) ---\n{}\n=== end of {} ===",
            self.label,
            self.child.id(),
            self.cmdline,
            self.stdout_path.display(),
            tail(&stdout),
            self.stderr_path.display(),
            tail(&stderr),
            self.label,
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if panicking {
            eprintln!("{}", self.report());
        }
        self.kill9_group();
    }
}

// ---------------------------------------------------------------------------
// Dispatcher
// ---------------------------------------------------------------------------

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released),
/// for a dispatcher that must come back on the same address after a restart.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A loopback address nobody listens on (a port just bound and freed).
pub fn closed_port() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A running `ci-dispatcher`.
pub struct Dispatcher {
    pub proc: Proc,
    addr: String,
    data_dir: PathBuf,
    extra_args: Vec<String>,
    restarts: usize,
    /// Earlier processes on this data dir, kept for the failure report.
    previous: Vec<Proc>,
}

impl Dispatcher {
    /// `ci-dispatcher --listen 127.0.0.1:0 --data-dir DATA_DIR
    /// --heartbeat-timeout 5 EXTRA...`; returns once it printed `listening on
    /// HOST:PORT`. A `--heartbeat-timeout` in `extra_args` replaces the
    /// default. Logs go to `DATA_DIR/../logs`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Dispatcher {
        Dispatcher::launch("127.0.0.1:0".to_owned(), data_dir, extra_args, 0)
    }

    /// As [`Dispatcher::start`] but on a fixed port (see [`free_port`]), for
    /// tests that restart it: runners and the observer reconnect to the
    /// address they were given.
    pub fn start_on(port: u16, data_dir: &Path, extra_args: &[&str]) -> Dispatcher {
        Dispatcher::launch(format!("127.0.0.1:{port}"), data_dir, extra_args, 0)
    }

    fn launch(listen: String, data_dir: &Path, extra_args: &[&str], restarts: usize) -> Dispatcher {
        let proc = Dispatcher::spawn_proc(&listen, data_dir, extra_args, restarts);
        let mut dispatcher = Dispatcher {
            proc,
            addr: String::new(),
            data_dir: data_dir.to_owned(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            restarts,
            previous: Vec::new(),
        };
        let fixed_port = listen
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|&port| port != 0);
        dispatcher.addr = dispatcher.wait_listening(fixed_port);
        dispatcher
    }

    /// Spawns a dispatcher process without waiting for it (for tests that
    /// expect it to refuse to start).
    pub fn spawn_proc(listen: &str, data_dir: &Path, extra_args: &[&str], n: usize) -> Proc {
        let sandbox = data_dir.parent().expect("data dir has a parent");
        let args = with_defaults(
            &[
                ("--listen", listen),
                ("--data-dir", p(data_dir)),
                ("--heartbeat-timeout", HEARTBEAT_TIMEOUT_SECS),
            ],
            extra_args,
        );
        let label = if n == 0 {
            "dispatcher".to_owned()
        } else {
            format!("dispatcher-{n}")
        };
        Proc::spawn("ci-dispatcher", &args, sandbox, &label)
    }

    /// Reads `listening on HOST:PORT` from the first stdout line; with a fixed
    /// port, a successful TCP connection to it also counts.
    fn wait_listening(&mut self, fixed_port: Option<u16>) -> String {
        let deadline = Instant::now() + SHORT;
        loop {
            let stdout = self.proc.stdout();
            if let Some((line, _)) = stdout.split_once('\n') {
                match line.trim().strip_prefix("listening on ") {
                    Some(addr) => return addr.trim().to_owned(),
                    None if fixed_port.is_none() => panic!(
                        "dispatcher's first stdout line is {line:?}, not `listening on HOST:PORT`"
                    ),
                    None => {}
                }
            }
            if let Some(port) = fixed_port {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return addr.to_string();
                }
            }
            if let Some(status) = self.proc.try_exit() {
                panic!(
                    "dispatcher exited ({}) before listening",
                    describe_status(&status)
                );
            }
            if Instant::now() >= deadline {
                panic!("dispatcher did not print `listening on HOST:PORT` within {SHORT:?}");
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// `HOST:PORT` it listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("addr has a port")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// SIGTERM, then the exit code (panics if it takes longer than [`SHORT`]).
    pub fn stop(&mut self) -> Option<i32> {
        self.proc.sigterm();
        exit_code(&self.proc.wait_exit(SHORT))
    }

    /// Starts it again on the same address and data dir with the same flags
    /// (after [`Dispatcher::kill9`] or [`Dispatcher::stop`]; a still-running
    /// one is killed first).
    pub fn restart(&mut self) {
        self.proc.kill9();
        let extra: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let mut next =
            Dispatcher::launch(self.addr.clone(), &self.data_dir, &extra, self.restarts + 1);
        next.previous = std::mem::take(&mut self.previous);
        std::mem::swap(self, &mut next);
        // `next` now holds the old process: keep it for the failure report.
        self.previous.push(next.proc);
    }
}

/// `defaults` as flag/value pairs, minus those whose flag appears in `extra`,
/// then `extra`: lets a test override a default without clap refusing a
/// repeated flag.
fn with_defaults(defaults: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, value) in defaults {
        if !extra.contains(flag) {
            args.push(flag.to_string());
            args.push(value.to_string());
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

// ---------------------------------------------------------------------------
// Runners and observers
// ---------------------------------------------------------------------------

/// `ci-runner --dispatcher ADDR --repo REPO --work-dir ROOT/runner-NAME --name
/// NAME --heartbeat-interval 0.5 --job-timeout 60`. A runner restarted with
/// the same name gets the same work dir, as on a real machine.
pub fn runner(addr: &str, repo: &TestRepo, name: &str) -> Proc {
    runner_with(addr, repo, name, &[])
}

/// [`runner`] with extra flags; a flag given here replaces its default.
pub fn runner_with(addr: &str, repo: &TestRepo, name: &str, extra: &[&str]) -> Proc {
    let work_dir = repo.dir(&format!("runner-{name}"));
    let args = with_defaults(
        &[
            ("--dispatcher", addr),
            ("--repo", repo.url()),
            ("--work-dir", p(&work_dir)),
            ("--name", name),
            ("--heartbeat-interval", RUNNER_HEARTBEAT_INTERVAL_SECS),
            ("--job-timeout", "60"),
        ],
        extra,
    );
    Proc::spawn("ci-runner", &args, repo.root(), &format!("runner-{name}"))
}

/// `ci-observer --dispatcher ADDR --repo REPO --work-dir ROOT/observer-BRANCH
/// --branch BRANCH --interval 0.25`.
pub fn observer(addr: &str, repo: &TestRepo, branch: &str) -> Proc {
    observer_with(addr, repo, branch, &[])
}

/// [`observer`] with extra flags; a flag given here replaces its default
/// (`--branch` in `extra` adds branches).
pub fn observer_with(addr: &str, repo: &TestRepo, branch: &str, extra: &[&str]) -> Proc {
    let work_dir = repo.dir(&format!("observer-{branch}"));
    let mut args = with_defaults(
        &[
            ("--dispatcher", addr),
            ("--repo", repo.url()),
            ("--work-dir", p(&work_dir)),
            ("--interval", OBSERVER_INTERVAL_SECS),
        ],
        extra,
    );
    args.push("--branch".to_owned());
    args.push(branch.to_owned());
    Proc::spawn(
        "ci-observer",
        &args,
        repo.root(),
        &format!("observer-{branch}"),
    )
}

// ---------------------------------------------------------------------------
// TestRepo: the origin repository
// ---------------------------------------------------------------------------

/// The files of `data/<subdir>`, as (path relative to it, contents), sorted.
pub fn data_files(subdir: &str) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                if path.file_name() != Some(OsStr::new("__pycache__")) {
                    walk(base, &path, out);
                }
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                let rel = rel.to_str().expect("UTF-8 data path").replace('\\', "/");
                let text = fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.push((rel, text));
            }
        }
    }
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(subdir);
    let mut files = Vec::new();
    walk(&base, &base, &mut files);
    files.sort();
    assert!(!files.is_empty(), "data/{subdir} has no files");
    files
}

/// A git repository (made with git2, no `git` program) in its own temp dir,
/// with `HEAD -> refs/heads/main`. The temp dir is also the test's sandbox:
/// [`TestRepo::dir`] hands out fresh directories next to the repository.
pub struct TestRepo {
    repo: git2::Repository,
    path: PathBuf,
    counter: Cell<u32>,
    // Last: removed after everything above is closed.
    root: tempfile::TempDir,
}

impl Default for TestRepo {
    fn default() -> Self {
        TestRepo::new()
    }
}

impl TestRepo {
    /// An empty repository at `<tmp>/origin` whose unborn HEAD is `main`.
    pub fn new() -> TestRepo {
        let root = tempfile::Builder::new()
            .prefix("ci-e2e-")
            .tempdir()
            .expect("create temp dir");
        let path = root.path().join("origin");
        let mut opts = git2::RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = git2::Repository::init_opts(&path, &opts).expect("git init");
        TestRepo {
            repo,
            path,
            counter: Cell::new(0),
            root,
        }
    }

    /// The repository's directory (what `--repo` is given).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`TestRepo::path`] as a `--repo` value.
    pub fn url(&self) -> &str {
        p(&self.path)
    }

    /// The test's temp dir.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `<tmp>/<name>`, created if missing.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        fs::create_dir_all(&dir).expect("create dir");
        dir
    }

    pub fn git(&self) -> &git2::Repository {
        &self.repo
    }

    /// Commits `files` (path, contents), added to or replacing those of the
    /// current tip, on `main`; returns the full sha.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        self.commit_on("main", files, message)
    }

    /// As [`TestRepo::commit`] on any branch (created if missing). The
    /// checkout is updated when the branch is `main`.
    pub fn commit_on(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        let refname = format!("refs/heads/{branch}");
        let parent = self
            .repo
            .find_reference(&refname)
            .ok()
            .map(|r| r.peel_to_commit().expect("branch points at a commit"));
        let mut index = git2::Index::new().expect("in-memory index");
        if let Some(parent) = &parent {
            index
                .read_tree(&parent.tree().expect("tree"))
                .expect("read tree");
        }
        for (path, contents) in files {
            let id = self.repo.blob(contents.as_bytes()).expect("write blob");
            index
                .add(&git2::IndexEntry {
                    ctime: git2::IndexTime::new(0, 0),
                    mtime: git2::IndexTime::new(0, 0),
                    dev: 0,
                    ino: 0,
                    mode: 0o100644,
                    uid: 0,
                    gid: 0,
                    file_size: contents.len() as u32,
                    id,
                    flags: 0,
                    flags_extended: 0,
                    path: path.as_bytes().to_vec(),
                })
                .expect("add to index");
        }
        let tree_id = index.write_tree_to(&self.repo).expect("write tree");
        let tree = self.repo.find_tree(tree_id).expect("find tree");
        let sig = git2::Signature::now("CI Test", "ci-test@example.invalid").expect("signature");
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let id = self
            .repo
            .commit(Some(&refname), &sig, &sig, message, &tree, &parents)
            .expect("commit");
        if branch == "main" {
            self.repo
                .checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
                .expect("checkout main");
        }
        id.to_string()
    }

    /// Commits the files of `data/<subdir>` (see `data/README.md`) on `main`.
    pub fn copy_data(&self, subdir: &str) -> String {
        let files = data_files(subdir);
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(path, text)| (path.as_str(), text.as_str()))
            .collect();
        self.commit(&files, &format!("add data/{subdir}"))
    }

    /// `n` commits on `main`, each the passing tests (added if missing) and a
    /// new value in `counter.txt`; their shas, oldest first.
    pub fn commit_passing(&self, n: usize) -> Vec<String> {
        let mut files = data_files("passing");
        files.push(("counter.txt".to_owned(), String::new()));
        (0..n)
            .map(|_| {
                let count = self.counter.get() + 1;
                self.counter.set(count);
                files.last_mut().expect("counter").1 = format!("{count}\n");
                let files: Vec<(&str, &str)> = files
                    .iter()
                    .map(|(path, text)| (path.as_str(), text.as_str()))
                    .collect();
                self.commit(&files, &format!("passing commit {count}"))
            })
            .collect()
    }

    /// Adds `data/failing` (one failing test) on `main`.
    pub fn commit_failing(&self) -> String {
        self.copy_data("failing")
    }

    /// Adds `data/fixed` (the fix for `data/failing`) on `main`.
    pub fn commit_fixed(&self) -> String {
        self.copy_data("fixed")
    }

    /// Creates `name` at the tip of `main`; returns that sha.
    pub fn branch(&self, name: &str) -> String {
        let tip = self
            .repo
            .find_reference("refs/heads/main")
            .and_then(|r| r.peel_to_commit())
            .expect("main has a commit");
        self.repo.branch(name, &tip, false).expect("create branch");
        tip.id().to_string()
    }

    /// The sha `branch` points at, if it exists.
    pub fn tip(&self, branch: &str) -> Option<String> {
        self.repo
            .find_reference(&format!("refs/heads/{branch}"))
            .ok()
            .and_then(|r| r.target())
            .map(|id| id.to_string())
    }

    /// The tip of `main`.
    pub fn head(&self) -> String {
        self.tip("main").expect("main has a commit")
    }
}

impl Drop for TestRepo {
    fn drop(&mut self) {
        if std::env::var_os("CI_TEST_KEEP").is_some() {
            self.root.disable_cleanup(true);
            eprintln!("kept test dir {}", self.root.path().display());
        } else if thread::panicking() {
            eprintln!(
                "test dir (removed; set CI_TEST_KEEP=1 to keep it): {}",
                self.root.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// ci-tools
// ---------------------------------------------------------------------------

/// Runs `ci-tools ARGS` to completion (at most [`TOOLS_TIMEOUT`]).
pub fn tools(args: &[&str]) -> Output {
    tools_timeout(args, TOOLS_TIMEOUT)
}

/// Runs `ci-tools ARGS`; kills it and panics with its output after `timeout`.
pub fn tools_timeout(args: &[&str], timeout: Duration) -> Output {
    tools_in(None, args, timeout)
}

/// Runs `ci-tools ARGS` in `cwd` (or the test's cwd).
pub fn tools_in(cwd: Option<&Path>, args: &[&str], timeout: Duration) -> Output {
    let cmdline = command_line("ci-tools", args);
    let mut cmd = command("ci-tools");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e} (is the binary built?)"));
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: the group is the one our child leads.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
            break child.wait().expect("wait after SIGKILL");
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Whatever it started dies with it (nothing keeps the pipes open).
    // SAFETY: as above.
    unsafe { libc::killpg(pid, libc::SIGKILL) };
    let output = Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    };
    if timed_out {
        panic!(
            "timed out after {timeout:?}: {}",
            show_output(&cmdline, &output)
        );
    }
    output
}

/// The command line, its exit status, stdout and stderr, for messages.
pub fn show_output(cmdline: &str, output: &Output) -> String {
    format!(
        "command: {cmdline}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
        describe_status(&output.status),
        tail(&output.stdout),
        tail(&output.stderr)
    )
}

/// [`show_output`] for a `ci-tools` run.
pub fn show_tools(args: &[&str], output: &Output) -> String {
    show_output(&command_line("ci-tools", args), output)
}

/// Runs `ci-tools ARGS` and asserts its exit code.
pub fn tools_expect(args: &[&str], code: i32) -> Output {
    let output = tools(args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit code {code}\n{}",
        show_tools(args, &output)
    );
    output
}

fn try_tools_json(args: &[&str]) -> Result<String, String> {
    let output = tools_timeout(args, SHORT);
    if !output.status.success() {
        return Err(show_tools(args, &output));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("stdout not UTF-8: {e}"))
}

/// A finished command's stdout as JSON (panics, showing both streams, if
/// it is not).
pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `ci-tools results --dispatcher ADDR --json`; `Err` describes what failed
/// (the dispatcher may be restarting).
pub fn try_results_json(addr: &str) -> Result<Vec<Value>, String> {
    let args = ["results", "--dispatcher", addr, "--json"];
    let text = try_tools_json(&args)?;
    serde_json::from_str(&text)
        .map_err(|e| format!("results --json is not a JSON array ({e}):\n{text}"))
}

pub fn results_json(addr: &str) -> Vec<Value> {
    try_results_json(addr).unwrap_or_else(|e| panic!("{e}"))
}

/// `ci-tools status --dispatcher ADDR --json`.
pub fn try_status_json(addr: &str) -> Result<Value, String> {
    let args = ["status", "--dispatcher", addr, "--json"];
    let text = try_tools_json(&args)?;
    serde_json::from_str(&text).map_err(|e| format!("status --json is not JSON ({e}):\n{text}"))
}

pub fn status_json(addr: &str) -> Value {
    try_status_json(addr).unwrap_or_else(|e| panic!("{e}"))
}

/// Parses JSON Lines (blank lines ignored).
pub fn parse_json_lines(text: &str) -> Result<Vec<Value>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).map_err(|e| format!("bad JSON line ({e}): {line}")))
        .collect()
}

/// `ci-tools replay --dispatcher ADDR --json`: the history from a running
/// dispatcher.
pub fn try_replay_json_online(addr: &str) -> Result<Vec<Value>, String> {
    let args = ["replay", "--dispatcher", addr, "--json"];
    parse_json_lines(&try_tools_json(&args)?)
}

pub fn replay_json_online(addr: &str) -> Vec<Value> {
    try_replay_json_online(addr).unwrap_or_else(|e| panic!("{e}"))
}

/// `ci-tools replay --data-dir DIR --json`: the history read from the log
/// (no dispatcher may hold DIR).
pub fn replay_json_offline(data_dir: &Path) -> Vec<Value> {
    let args = ["replay", "--data-dir", p(data_dir), "--json"];
    try_tools_json(&args)
        .and_then(|text| parse_json_lines(&text))
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `poll` every [`POLL_INTERVAL`] until it returns `Ok`. `Err` means
/// "not yet" and carries the state seen (e.g. the last results JSON), which
/// the panic after `timeout` prints along with `what` was awaited.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut poll: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        let last = match poll() {
            Ok(value) => return value,
            Err(state) => state,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}\nlast state seen:\n{last}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until `results --json` satisfies `pred`; returns those results.
pub fn wait_results(
    addr: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    wait_for(what, timeout, || {
        let results = try_results_json(addr)?;
        if pred(&results) {
            Ok(results)
        } else {
            Err(pretty(&results))
        }
    })
}

/// Waits until every commit in `shas` has a final outcome in `results`.
pub fn wait_final<S: AsRef<str>>(addr: &str, shas: &[S], timeout: Duration) -> Vec<Value> {
    let what = format!("final outcomes for {} commit(s)", shas.len());
    wait_for(&what, timeout, || {
        let results = try_results_json(addr)?;
        let missing: Vec<&str> = shas
            .iter()
            .map(AsRef::as_ref)
            .filter(|sha| {
                !result_for(&results, sha)
                    .and_then(|r| r["outcome"].as_str())
                    .is_some_and(is_final)
            })
            .collect();
        if missing.is_empty() {
            Ok(results)
        } else {
            Err(format!(
                "not final yet: {missing:?}\nresults:\n{}",
                pretty(&results)
            ))
        }
    })
}

// ---------------------------------------------------------------------------
// Reading the JSON
// ---------------------------------------------------------------------------

/// `pass`, `fail`, `timeout` and `error` are final; `pending`, `running` not.
pub fn is_final(outcome: &str) -> bool {
    matches!(outcome, "pass" | "fail" | "timeout" | "error")
}

pub fn pretty<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("<unprintable: {e}>"))
}

/// The `results --json` element for `sha`.
pub fn result_for<'a>(results: &'a [Value], sha: &str) -> Option<&'a Value> {
    results.iter().find(|r| r["commit"] == sha)
}

/// The outcome of `sha` in `results --json`.
pub fn outcome_of<'a>(results: &'a [Value], sha: &str) -> Option<&'a str> {
    result_for(results, sha).and_then(|r| r["outcome"].as_str())
}

/// The events of `replay --json` with this `type`, in log order.
pub fn events<'a>(replay: &'a [Value], kind: &str) -> Vec<&'a Value> {
    replay.iter().filter(|e| e["type"] == kind).collect()
}

/// The events of this `type` about `sha`, in log order.
pub fn events_for<'a>(replay: &'a [Value], kind: &str, sha: &str) -> Vec<&'a Value> {
    replay
        .iter()
        .filter(|e| e["type"] == kind && ev_commit(e) == Some(sha))
        .collect()
}

pub fn ev_seq(event: &Value) -> u64 {
    event["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without a numeric seq: {event}"))
}

pub fn ev_commit(event: &Value) -> Option<&str> {
    event["commit"].as_str()
}

pub fn ev_runner(event: &Value) -> Option<&str> {
    event["runner"].as_str()
}

pub fn ev_attempt(event: &Value) -> Option<u64> {
    event["attempt"].as_u64()
}

/// A `result` event's outcome: top-level `outcome` as in CONTRACT.md, or
/// `report.outcome` if the implementation nests the runner's report.
pub fn ev_outcome(event: &Value) -> Option<&str> {
    event["outcome"]
        .as_str()
        .or_else(|| event["report"]["outcome"].as_str())
}

/// The first 12 hex digits, for messages.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// `GET path` over plain HTTP/1.1 on loopback: (status, body).
pub fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(SHORT)).unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// The `http listening on HOST:PORT` line a dispatcher (or `up`) started
/// with `--http` prints after its `listening on` line.
pub fn printed_http_addr(p: &Proc) -> String {
    wait_for("the http address", SHORT, || {
        let out = p.stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("http listening on "))
            .map(|a| a.trim().to_string())
            .ok_or(out)
    })
}
