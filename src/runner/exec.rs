//! Runs one test command, contained: its own process group, a scrubbed
//! environment, a time limit, bounded output, and directories it must not
//! see hidden in a mount namespace of its own.
//!
//! Tested code is untrusted. It must not see the runner's secrets, must not
//! outlive its job (background children included), must not be able to
//! exhaust the runner's memory or hang it by holding a pipe open, and must
//! not reach the runner's private files (its mirror) through `..`.
//!
//! Hiding ([`ExecSpec::hide`]): between fork and exec the child enters a
//! private mount namespace (`unshare(CLONE_NEWNS)` as root; otherwise a user
//! namespace too, mapping its own uid and gid to themselves so the test keeps
//! its identity and holds no capability after exec), makes every mount
//! private so nothing leaks back, and covers each hidden directory with an
//! empty, read-only, mode-000 tmpfs and each hidden file (a credential the
//! runner read at start) with `/dev/null`. Where that cannot be done (no user
//! namespaces, a seccomp filter) the command runs without it and the outcome
//! says why ([`Isolation::Unavailable`]); the runner's own checks are the
//! remaining protection. A process of the same user can still reach the
//! runner's files through `/proc/<runner>/root`: this is about accidents
//! and carelessness, not a sandbox.

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Variables passed through from the runner's environment. Everything else
/// (tokens, cloud credentials) is dropped.
pub const KEPT_ENV: [&str; 10] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM",
];

/// Set for every test: no `.pyc` files left in the checkout, and Python
/// output arrives in order with the process's other output.
pub const FIXED_ENV: [(&str, &str); 2] =
    [("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1")];

/// How long the pipes may stay open once the test's process group is gone.
/// Only a process that escaped the group (setsid) can hold them longer.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long to wait for the child to be reaped after SIGKILL; a process in
/// uninterruptible sleep must not hang the runner.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// One command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub timeout: Duration,
    /// Bytes of combined output kept (the last ones: that is where test
    /// summaries and tracebacks are).
    pub output_limit: usize,
    /// Set after [`KEPT_ENV`] and [`FIXED_ENV`], so they can override both.
    pub env: Vec<(String, String)>,
    /// Directories and files the command must not see (see the module's
    /// doc): each directory is covered by an empty read-only tmpfs, each
    /// file by `/dev/null`, in the command's own mount namespace. Entries
    /// that do not exist are skipped, and so is an entry holding `cwd` (it
    /// would hide the command's own directory).
    pub hide: Vec<PathBuf>,
}

/// Whether [`ExecSpec::hide`] took effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Nothing (existing) to hide: no namespace was made.
    NotRequested,
    /// The command ran in its own mount namespace with every hidden
    /// directory covered.
    Applied,
    /// The namespace could not be set up (why); the command ran without it.
    Unavailable(String),
}

/// How the command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitKind {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Cancelled,
    /// The command could not be started (or, rarely, not waited for); the
    /// message names the program.
    SpawnFailed(String),
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit: ExitKind,
    /// From spawn to exit (or kill); excludes draining the pipes.
    pub duration: Duration,
    /// The last `output_limit` bytes of stdout and stderr, interleaved in
    /// the order they arrived.
    pub output: Vec<u8>,
    /// Bytes dropped from the front to respect `output_limit`.
    pub truncated_bytes: u64,
    pub isolation: Isolation,
}

/// Keeps the tail of a stream within a fixed budget.
#[derive(Debug)]
struct Tail {
    buf: VecDeque<u8>,
    limit: usize,
    dropped: u64,
}

impl Tail {
    fn new(limit: usize) -> Tail {
        Tail {
            buf: VecDeque::with_capacity(limit.min(64 * 1024)),
            limit,
            dropped: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        if chunk.len() >= self.limit {
            let skip = chunk.len() - self.limit;
            self.dropped += (self.buf.len() + skip) as u64;
            self.buf.clear();
            self.buf.extend(&chunk[skip..]);
            return;
        }
        let overflow = (self.buf.len() + chunk.len()).saturating_sub(self.limit);
        if overflow > 0 {
            self.buf.drain(..overflow);
            self.dropped += overflow as u64;
        }
        self.buf.extend(chunk);
    }
}

/// A running command's output, shared with whoever streams it live: the
/// kept tail (the same bytes the outcome reports) and a wake-up when more
/// arrived. Reading never blocks the command: the tail is bounded and
/// drops its oldest bytes.
#[derive(Debug)]
pub struct Tap {
    tail: Mutex<Tail>,
    more: tokio::sync::Notify,
}

impl Tap {
    pub fn new(limit: usize) -> Arc<Tap> {
        Arc::new(Tap {
            tail: Mutex::new(Tail::new(limit)),
            more: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, chunk: &[u8]) {
        self.lock().push(chunk);
        self.more.notify_one();
    }

    /// Writes `line` into the stream as if the command had: the runner's
    /// own lines (the command it runs) among the command's output.
    pub fn announce(&self, line: &str) {
        self.push(line.as_bytes());
    }

    /// How many bytes the command has written so far.
    pub fn end(&self) -> u64 {
        let t = self.lock();
        t.dropped + t.buf.len() as u64
    }

    /// Up to `max` bytes from offset `from` on, as far as they are still
    /// kept: the offset of the first byte returned (later than `from` when
    /// bytes were dropped meanwhile), and the bytes.
    pub fn read_from(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let t = self.lock();
        let start = from.max(t.dropped);
        let skip = (start - t.dropped) as usize;
        let bytes = t.buf.iter().skip(skip).take(max).copied().collect();
        (start, bytes)
    }

    /// Resolves when bytes arrived since the last call.
    pub async fn changed(&self) {
        self.more.notified().await
    }
}

/// The environment the test sees, built from `parent` (the runner's own
/// environment in production; a fake one in tests).
fn test_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = parent
        .into_iter()
        .filter(|(k, _)| KEPT_ENV.iter().any(|kept| OsStr::new(kept) == k))
        .collect();
    let fixed = FIXED_ENV.iter().map(|(k, v)| (*k, *v));
    let extra = extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    for (k, v) in fixed.chain(extra) {
        env.retain(|(old, _)| old != k);
        env.push((k.into(), v.into()));
    }
    env
}

/// SIGKILLs a process group. Also armed as a drop guard so that a `run`
/// future dropped half-way (its task aborted) still leaves nothing behind.
struct GroupKiller {
    pgid: libc::pid_t,
    armed: bool,
}

impl GroupKiller {
    fn kill(&self) {
        // SAFETY: killpg has no memory-safety preconditions. ESRCH (the group
        // is already empty) is the expected case after a clean exit.
        let rc = unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(pgid = self.pgid, %err, "cannot kill the test's process group");
            }
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

fn spawn_reader<R>(mut pipe: R, tap: Arc<Tap>) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => tap.push(&chunk[..n]),
            }
        }
    })
}

enum Ended {
    Status(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// The command as it is spawned, without any hiding.
fn command(spec: &ExecSpec) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(test_env(std::env::vars_os(), &spec.env))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// How a hidden path is covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cover {
    /// A directory, or anything but a regular file: an empty tmpfs over it
    /// (which fails, and is reported, on a FIFO or a socket).
    Dir,
    /// A regular file (a credential): `/dev/null` bound over it.
    File,
}

/// The paths of `spec.hide` to cover, absolute (the child resolves them
/// after its `chdir`), as C strings made before the fork, each with how.
fn hide_targets(spec: &ExecSpec) -> Vec<(CString, Cover)> {
    let cwd = std::fs::canonicalize(&spec.cwd).unwrap_or_else(|_| spec.cwd.clone());
    spec.hide
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| !cwd.starts_with(p))
        .filter_map(|p| {
            let cover = match std::fs::metadata(&p).ok()?.is_file() {
                true => Cover::File,
                false => Cover::Dir,
            };
            Some((CString::new(p.as_os_str().as_bytes()).ok()?, cover))
        })
        .collect()
}

/// Spawns the command, hiding what `spec` asks if it can: on a failure to
/// set up the namespace it spawns again without one.
fn spawn(
    spec: &ExecSpec,
    adjust: &(dyn Fn(&mut tokio::process::Command) + Sync),
) -> io::Result<(tokio::process::Child, Isolation)> {
    let plain = || {
        let mut cmd = command(spec);
        adjust(&mut cmd);
        cmd.spawn()
    };
    let targets = hide_targets(spec);
    if targets.is_empty() {
        return Ok((plain()?, Isolation::NotRequested));
    }
    let (report_r, report_w) = match report_pipe() {
        Ok(pipe) => pipe,
        Err(err) => {
            let why = format!("cannot make a pipe for the namespace's report: {err}");
            return Ok((plain()?, Isolation::Unavailable(why)));
        }
    };
    let hider = Hider {
        targets,
        report: report_w.as_raw_fd(),
    };
    let mut cmd = command(spec);
    adjust(&mut cmd);
    // SAFETY: `Hider::enter` makes only async-signal-safe calls (unshare,
    // prctl, open, write, close, mount) on data prepared before the fork,
    // and allocates nothing.
    unsafe {
        cmd.pre_exec(move || hider.enter());
    }
    let spawned = cmd.spawn();
    // The child wrote its report before exec, and spawn returns after exec.
    drop(cmd);
    drop(report_w);
    let report = read_report(&report_r);
    match (spawned, report) {
        (Ok(child), Some(Ok(()))) => Ok((child, Isolation::Applied)),
        (Ok(child), _) => Ok((
            child,
            Isolation::Unavailable("the test process sent no report".into()),
        )),
        (Err(_), Some(Err(why))) => Ok((plain()?, Isolation::Unavailable(why))),
        (Err(err), _) => Err(err),
    }
}

fn report_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child's report: `Ok` when hidden, `Err(why)` when it gave up;
/// `None` when it never got that far.
fn read_report(fd: &OwnedFd) -> Option<Result<(), String>> {
    let mut rec = [0u8; REPORT_LEN];
    // SAFETY: reads at most REPORT_LEN bytes into a buffer of that size.
    let n = unsafe { libc::read(fd.as_raw_fd(), rec.as_mut_ptr().cast(), REPORT_LEN) };
    if n != REPORT_LEN as isize {
        return None;
    }
    let errno = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
    Some(match rec[0] {
        STEP_DONE => Ok(()),
        step => Err(format!(
            "cannot {}: {}",
            step_name(step),
            io::Error::from_raw_os_error(errno)
        )),
    })
}

/// One report record: the step that failed (or [`STEP_DONE`]), three bytes
/// of padding, the errno in native byte order.
const REPORT_LEN: usize = 8;
const STEP_DONE: u8 = 0;
const STEP_USER_NS: u8 = 1;
const STEP_SETGROUPS: u8 = 2;
const STEP_UID_MAP: u8 = 3;
const STEP_GID_MAP: u8 = 4;
const STEP_PRIVATE: u8 = 5;
const STEP_COVER: u8 = 6;
const STEP_COVER_FILE: u8 = 7;

fn step_name(step: u8) -> &'static str {
    match step {
        STEP_USER_NS => "create a mount namespace (nor a user namespace with one)",
        STEP_SETGROUPS => "deny setgroups in the new user namespace",
        STEP_UID_MAP => "map the user id into the new user namespace",
        STEP_GID_MAP => "map the group id into the new user namespace",
        STEP_PRIVATE => "make the mounts of the new namespace private",
        STEP_COVER => "cover a hidden directory with an empty tmpfs",
        STEP_COVER_FILE => "cover a hidden file with /dev/null",
        _ => "set up the mount namespace",
    }
}

/// Options of the tmpfs laid over a hidden directory: empty, no access,
/// and as small as tmpfs allows.
const COVER_OPTIONS: &CStr = c"mode=000,size=4k,nr_inodes=1";

/// What the child does between fork and exec to hide `targets`; everything
/// it needs is made before the fork.
struct Hider {
    targets: Vec<(CString, Cover)>,
    /// Write end of the report pipe (close-on-exec).
    report: RawFd,
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `Err((step, errno))` unless `rc` is 0.
fn check(step: u8, rc: libc::c_int) -> Result<(), (u8, i32)> {
    if rc == 0 {
        Ok(())
    } else {
        Err((step, errno()))
    }
}

/// Writes `data` to the file at `path` in one `write`.
fn write_file(step: u8, path: &CStr, data: &[u8]) -> Result<(), (u8, i32)> {
    // SAFETY: open, write and close are async-signal-safe; `path` is a
    // valid C string and `data` a valid buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err((step, errno()));
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let failed = if n == data.len() as isize {
            None
        } else if n < 0 {
            Some(errno())
        } else {
            Some(libc::EIO)
        };
        libc::close(fd);
        match failed {
            None => Ok(()),
            Some(e) => Err((step, e)),
        }
    }
}

/// `"ID ID 1\n"` (a one-line id map of `id` to itself) in `buf`, without
/// allocating.
fn id_map(id: u32, buf: &mut [u8; 32]) -> &[u8] {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = id;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    for _ in 0..2 {
        for i in (0..n).rev() {
            buf[len] = digits[i];
            len += 1;
        }
        buf[len] = b' ';
        len += 1;
    }
    buf[len] = b'1';
    buf[len + 1] = b'\n';
    &buf[..len + 2]
}

impl Hider {
    /// Runs in the forked child. Async-signal-safe calls only, no
    /// allocation. Reports how it went on the pipe; a failure fails the
    /// spawn (the parent then spawns again without hiding), so the command
    /// never runs half-isolated (in a user namespace without an id map,
    /// say).
    fn enter(&self) -> io::Result<()> {
        let result = self.try_enter();
        let (step, err) = match result {
            Ok(()) => (STEP_DONE, 0),
            Err(failure) => failure,
        };
        let mut rec = [0u8; REPORT_LEN];
        rec[0] = step;
        rec[4..8].copy_from_slice(&err.to_ne_bytes());
        // SAFETY: write is async-signal-safe; the buffer is valid.
        unsafe { libc::write(self.report, rec.as_ptr().cast(), REPORT_LEN) };
        match result {
            Ok(()) => Ok(()),
            Err((_, err)) => Err(io::Error::from_raw_os_error(err)),
        }
    }

    fn try_enter(&self) -> Result<(), (u8, i32)> {
        // SAFETY (whole function): unshare, prctl, mount and the id getters
        // are async-signal-safe syscalls; every pointer is a valid C string
        // or null where the kernel allows it.
        unsafe {
            let root = libc::geteuid() == 0;
            if !(root && libc::unshare(libc::CLONE_NEWNS) == 0) {
                self.enter_user_ns()?;
            }
            // Nothing mounted below may propagate back to the runner's
            // namespace (systemd makes / shared).
            check(
                STEP_PRIVATE,
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
            )?;
            for (target, cover) in &self.targets {
                let (rc, step) = match cover {
                    Cover::Dir => (
                        libc::mount(
                            c"tmpfs".as_ptr(),
                            target.as_ptr(),
                            c"tmpfs".as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                            COVER_OPTIONS.as_ptr().cast(),
                        ),
                        STEP_COVER,
                    ),
                    Cover::File => (
                        libc::mount(
                            c"/dev/null".as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ),
                        STEP_COVER_FILE,
                    ),
                };
                if rc != 0 {
                    let err = errno();
                    // Removed since the parent looked: nothing to hide.
                    if err != libc::ENOENT {
                        return Err((step, err));
                    }
                }
            }
        }
        Ok(())
    }

    /// A user namespace owning a new mount namespace, with this process's
    /// uid and gid mapped to themselves.
    fn enter_user_ns(&self) -> Result<(), (u8, i32)> {
        // SAFETY: as in `try_enter`.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        // The runner makes itself non-dumpable (so tests cannot read its
        // memory through /proc), and this child inherits that, which makes
        // its /proc/self files root's and the id maps unwritable. Dumpable
        // only while the maps are written, then not again: the child still
        // holds a copy of the runner's memory until exec (which sets the
        // flag for the test program as usual).
        let dumpable = |on: libc::c_ulong| {
            // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, on, 0, 0, 0) };
        };
        // SAFETY: as in `try_enter`.
        check(STEP_USER_NS, unsafe {
            libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)
        })?;
        dumpable(1);
        let mapped = Self::map_ids(uid, gid);
        dumpable(0);
        mapped
    }

    /// Maps `uid` and `gid` to themselves in the new user namespace.
    fn map_ids(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), (u8, i32)> {
        match write_file(STEP_SETGROUPS, c"/proc/self/setgroups", b"deny") {
            // Kernels before 3.19 have no such file and need no denial.
            Err((_, libc::ENOENT)) | Ok(()) => {}
            Err(failure) => return Err(failure),
        }
        let mut buf = [0u8; 32];
        write_file(STEP_UID_MAP, c"/proc/self/uid_map", id_map(uid, &mut buf))?;
        write_file(STEP_GID_MAP, c"/proc/self/gid_map", id_map(gid, &mut buf))
    }
}

/// Runs `spec` to completion, time-out or cancellation; never fails: every
/// way of ending is an [`ExitKind`].
///
/// The command gets its own process group, which is SIGKILLed when it ends
/// in any way, so background processes the tests started do not survive.
pub async fn run(spec: &ExecSpec, cancel: CancellationToken) -> ExecOutcome {
    run_tapped(spec, cancel, Tap::new(spec.output_limit)).await
}

/// [`run`], with its output also readable as it comes through `tap`
/// (whose limit then bounds the output kept).
pub async fn run_tapped(spec: &ExecSpec, cancel: CancellationToken, tap: Arc<Tap>) -> ExecOutcome {
    run_adjusted(spec, cancel, tap, &|_| {}).await
}

/// [`run`], with `adjust` applied to the command before it is spawned (the
/// tests run it as another user).
async fn run_adjusted(
    spec: &ExecSpec,
    cancel: CancellationToken,
    tap: Arc<Tap>,
    adjust: &(dyn Fn(&mut tokio::process::Command) + Sync),
) -> ExecOutcome {
    let started = Instant::now();
    let failed = |msg: String| ExecOutcome {
        exit: ExitKind::SpawnFailed(msg),
        duration: started.elapsed(),
        output: Vec::new(),
        truncated_bytes: 0,
        isolation: Isolation::NotRequested,
    };
    if !spec.cwd.is_dir() {
        return failed(format!(
            "cannot start {:?}: working directory {} does not exist",
            spec.program,
            spec.cwd.display()
        ));
    }

    let (mut child, isolation) = match spawn(spec, adjust) {
        Ok(spawned) => spawned,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return failed(format!(
                "cannot start {:?}: program not found",
                spec.program
            ));
        }
        Err(err) => return failed(format!("cannot start {:?}: {err}", spec.program)),
    };
    let Some(pgid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return failed(format!(
            "{:?} exited before it could be tracked",
            spec.program
        ));
    };
    let mut killer = GroupKiller { pgid, armed: true };

    let tail = tap;
    let mut readers = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, tail.clone()));
    }

    let ended = tokio::select! {
        status = child.wait() => Ended::Status(status),
        _ = tokio::time::sleep(spec.timeout) => Ended::TimedOut,
        _ = cancel.cancelled() => Ended::Cancelled,
    };
    let duration = started.elapsed();
    // Whatever happened, nothing of the group may outlive the job.
    killer.kill();
    if !matches!(ended, Ended::Status(_))
        && tokio::time::timeout(REAP_LIMIT, child.wait())
            .await
            .is_err()
    {
        tracing::warn!(pgid, "test process not reaped after SIGKILL");
    }
    killer.armed = false;

    let exit = match ended {
        Ended::TimedOut => ExitKind::TimedOut,
        Ended::Cancelled => ExitKind::Cancelled,
        Ended::Status(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => ExitKind::Exited(code),
                (None, Some(sig)) => ExitKind::Signaled(sig),
                (None, None) => ExitKind::SpawnFailed(format!(
                    "{:?} ended with an unknown status {status}",
                    spec.program
                )),
            }
        }
        Ended::Status(Err(err)) => {
            ExitKind::SpawnFailed(format!("cannot wait for {:?}: {err}", spec.program))
        }
    };

    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    for mut reader in readers {
        if tokio::time::timeout_at(deadline, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }

    // Copied, not taken: a live reader may still read the end.
    let (output, truncated_bytes) = {
        let t = tail.lock();
        (t.buf.iter().copied().collect(), t.dropped)
    };
    ExecOutcome {
        exit,
        duration,
        output,
        truncated_bytes,
        isolation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(program: &str, args: &[&str]) -> ExecSpec {
        ExecSpec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: std::env::temp_dir(),
            timeout: Duration::from_secs(30),
            output_limit: 1024 * 1024,
            env: Vec::new(),
            hide: Vec::new(),
        }
    }

    fn sh(script: &str) -> ExecSpec {
        spec("sh", &["-c", script])
    }

    async fn go(s: &ExecSpec) -> ExecOutcome {
        run(s, CancellationToken::new()).await
    }

    fn text(o: &ExecOutcome) -> String {
        String::from_utf8_lossy(&o.output).into_owned()
    }

    /// Alive and not a zombie (a zombie's reaping is up to its new parent,
    /// which in a container may never do it).
    fn alive(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks for existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    async fn assert_gone(pid: libc::pid_t) {
        for _ in 0..50 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("process {pid} survived its job");
    }

    fn first_pid(o: &ExecOutcome) -> libc::pid_t {
        text(o).lines().next().unwrap().trim().parse().unwrap()
    }

    #[tokio::test]
    async fn exit_codes_are_reported() {
        assert_eq!(go(&sh("exit 0")).await.exit, ExitKind::Exited(0));
        assert_eq!(go(&sh("exit 3")).await.exit, ExitKind::Exited(3));
        assert_eq!(
            go(&sh("kill -TERM $$")).await.exit,
            ExitKind::Signaled(libc::SIGTERM)
        );
    }

    #[tokio::test]
    async fn both_streams_are_captured_in_order() {
        let o = go(&sh(
            "echo out; sleep 0.1; echo err >&2; sleep 0.1; echo out2",
        ))
        .await;
        assert_eq!(o.exit, ExitKind::Exited(0));
        assert_eq!(text(&o), "out\nerr\nout2\n");
        assert_eq!(o.truncated_bytes, 0);
    }

    #[tokio::test]
    async fn output_limit_keeps_the_tail() {
        let mut s = sh("i=0; while [ $i -lt 1000 ]; do echo line$i; i=$((i+1)); done; echo END");
        s.output_limit = 100;
        let o = go(&s).await;
        assert_eq!(o.output.len(), 100);
        assert!(text(&o).ends_with("line999\nEND\n"), "{}", text(&o));
        let total: u64 = (0..1000)
            .map(|i| format!("line{i}\n").len() as u64)
            .sum::<u64>()
            + 4;
        assert_eq!(o.truncated_bytes, total - 100);

        s.output_limit = 0;
        let o = go(&s).await;
        assert!(o.output.is_empty());
        assert_eq!(o.truncated_bytes, total);
    }

    #[test]
    fn tail_handles_every_chunk_size() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cd");
        t.push(b"e");
        assert_eq!(t.buf.iter().copied().collect::<Vec<_>>(), b"bcde");
        t.push(b"123456");
        assert_eq!(t.buf.iter().copied().collect::<Vec<_>>(), b"3456");
        assert_eq!(t.dropped, 1 + 4 + 2);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let mut s = sh("sleep 100 & echo $!; sleep 100");
        s.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let o = go(&s).await;
        assert_eq!(o.exit, ExitKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_gone(first_pid(&o)).await;
    }

    #[tokio::test]
    async fn background_children_die_after_a_normal_exit() {
        // The background sleep holds the pipes open; the run must not wait for it.
        let started = Instant::now();
        let o = go(&sh("sleep 100 & echo $!; exit 0")).await;
        assert_eq!(o.exit, ExitKind::Exited(0));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_gone(first_pid(&o)).await;
    }

    #[tokio::test]
    async fn an_escaped_grandchild_cannot_hang_the_runner() {
        // setsid leaves the group, so only the drain limit ends the wait.
        // The pause lets setsid run before the group is killed.
        let s = sh("setsid sh -c 'echo $$; exec sleep 10' & sleep 0.5");
        let started = Instant::now();
        let o = go(&s).await;
        let elapsed = started.elapsed();
        let escaped = first_pid(&o);
        // SAFETY: kill has no memory-safety preconditions; this is our own process.
        unsafe { libc::kill(escaped, libc::SIGKILL) };
        assert_eq!(o.exit, ExitKind::Exited(0));
        assert!(elapsed >= DRAIN_LIMIT, "the pipes were held: {elapsed:?}");
        assert!(
            elapsed < DRAIN_LIMIT + Duration::from_secs(2),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn cancellation_kills_the_group() {
        let cancel = CancellationToken::new();
        let s = sh("sleep 100 & echo $!; sleep 100");
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.cancel();
        });
        let o = run(&s, cancel).await;
        assert_eq!(o.exit, ExitKind::Cancelled);
        assert_gone(first_pid(&o)).await;
    }

    #[test]
    fn environment_is_scrubbed() {
        let parent = [
            ("PATH", "/bin"),
            ("CI_TOKEN_4f1c2e", "secret"),
            ("HOME", "/home/r"),
            ("PYTHONUNBUFFERED", "0"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = test_env(parent, &[("EXTRA".into(), "x".into())]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("CI_TOKEN_4f1c2e"), None);
        assert_eq!(get("PATH"), Some("/bin".into()));
        assert_eq!(get("HOME"), Some("/home/r".into()));
        assert_eq!(get("PYTHONUNBUFFERED"), Some("1".into()));
        assert_eq!(get("PYTHONDONTWRITEBYTECODE"), Some("1".into()));
        assert_eq!(get("EXTRA"), Some("x".into()));
        assert_eq!(env.len(), 5);
    }

    /// End to end against the real environment of the test process (which
    /// cargo fills with CARGO_* variables), without mutating it: `set_var`
    /// is unsafe while other test threads run.
    #[tokio::test]
    async fn child_sees_only_allowed_variables() {
        let mut s = spec("env", &[]);
        s.env = vec![("MY_SETTING".into(), "on".into())];
        let o = go(&s).await;
        assert_eq!(o.exit, ExitKind::Exited(0));
        let out = text(&o);
        let mut seen = Vec::new();
        for line in out.lines() {
            let name = line.split_once('=').map_or(line, |(k, _)| k);
            let allowed = KEPT_ENV.contains(&name)
                || FIXED_ENV.iter().any(|(k, _)| *k == name)
                || name == "MY_SETTING";
            assert!(allowed, "child saw {name}");
            seen.push(name.to_string());
        }
        assert!(seen.iter().any(|n| n == "MY_SETTING"));
        assert!(seen.iter().any(|n| n == "PYTHONDONTWRITEBYTECODE"));
        if std::env::var_os("PATH").is_some() {
            assert!(seen.iter().any(|n| n == "PATH"));
        }
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_failure() {
        let o = go(&spec("no-such-program-7d3a", &[])).await;
        match o.exit {
            ExitKind::SpawnFailed(msg) => assert!(msg.contains("no-such-program-7d3a"), "{msg}"),
            other => panic!("expected SpawnFailed, got {other:?}"),
        }
        let mut s = sh("exit 0");
        s.cwd = "/no/such/dir".into();
        assert!(matches!(go(&s).await.exit, ExitKind::SpawnFailed(_)));
    }

    /// A sandbox for the hiding tests: `secret/f` (what must not be seen)
    /// next to `work/` (the command's directory), all readable by anyone
    /// so that another user could see them if nothing hid them.
    fn hiding_sandbox() -> (tempfile::TempDir, ExecSpec) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("secret")).unwrap();
        std::fs::write(root.join("secret/f"), "the mirror's secret\n").unwrap();
        std::fs::create_dir(root.join("work")).unwrap();
        for (p, mode) in [
            ("", 0o755),
            ("secret", 0o755),
            ("secret/f", 0o644),
            ("work", 0o777),
        ] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut s =
            sh("echo start; cat ../secret/f; ls -A ../secret; touch ../secret/new; echo end");
        s.cwd = root.join("work");
        s.hide = vec![root.join("secret"), root.join("no-such-dir")];
        (dir, s)
    }

    /// Whether this machine lets `args` (an `unshare` command line, maybe
    /// behind setpriv) make namespaces: what the hiding needs.
    fn namespaces_work(args: &[&str]) -> bool {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn mounted_here(path: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let path = path.to_str().unwrap();
        info.lines().any(|l| l.split(' ').nth(4) == Some(path))
    }

    fn assert_hidden(o: &ExecOutcome, secret: &Path) {
        let out = text(o);
        assert!(
            out.starts_with("start\n") && out.ends_with("end\n"),
            "{out}"
        );
        assert!(
            !out.contains("the mirror's secret"),
            "the command saw it:\n{out}"
        );
        assert!(
            !out.lines().any(|l| l == "f"),
            "the command listed it:\n{out}"
        );
        assert_eq!(
            std::fs::read_to_string(secret.join("f")).unwrap(),
            "the mirror's secret\n",
            "the hidden directory itself is untouched"
        );
        assert!(!secret.join("new").exists(), "the command wrote into it");
        assert!(
            !mounted_here(secret),
            "the cover leaked into the runner's namespace"
        );
    }

    #[tokio::test]
    async fn hidden_directories_are_covered_by_an_empty_read_only_tmpfs() {
        let (dir, s) = hiding_sandbox();
        let o = go(&s).await;
        assert_eq!(o.exit, ExitKind::Exited(0), "{}", text(&o));
        let root = unsafe { libc::geteuid() } == 0;
        let expected = if root {
            namespaces_work(&["unshare", "-m", "true"])
        } else {
            namespaces_work(&["unshare", "-U", "-m", "true"])
        };
        if !expected {
            assert!(matches!(o.isolation, Isolation::Unavailable(_)), "{o:?}");
            eprintln!("namespaces unavailable here: {:?}", o.isolation);
            return;
        }
        assert_eq!(o.isolation, Isolation::Applied, "{}", text(&o));
        assert_hidden(&o, &dir.path().join("secret"));
    }

    /// The path of a runner that is not root: a user namespace mapping the
    /// user to itself. Needs root to switch users (skipped otherwise: then
    /// the test above already ran as that kind of user).
    #[tokio::test]
    async fn another_user_keeps_its_ids_and_sees_nothing_hidden() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let (dir, s) = hiding_sandbox();
        let mut s = s;
        s.program = "sh".into();
        s.args = vec![
            "-c".into(),
            format!(
                "echo start; id -u; id -g; {}",
                s.args[1].trim_start_matches("echo start; ")
            ),
        ];
        let o = run_adjusted(&s, CancellationToken::new(), Tap::new(1 << 20), &|cmd| {
            cmd.uid(65534).gid(65534);
        })
        .await;
        assert_eq!(o.exit, ExitKind::Exited(0), "{}", text(&o));
        let out = text(&o);
        assert!(
            out.starts_with("start\n65534\n65534\n"),
            "ids changed:\n{out}"
        );
        let userns = namespaces_work(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "-U",
            "-m",
            "true",
        ]);
        if !userns {
            assert!(matches!(o.isolation, Isolation::Unavailable(_)), "{o:?}");
            eprintln!("user namespaces unavailable here: {:?}", o.isolation);
            return;
        }
        assert_eq!(o.isolation, Isolation::Applied, "{out}");
        assert_hidden(&o, &dir.path().join("secret"));
    }

    /// A credential file the runner read at start reads as empty.
    #[tokio::test]
    async fn hidden_files_are_covered_by_dev_null() {
        let (dir, mut s) = hiding_sandbox();
        let file = dir.path().join("secret/f");
        s.hide = vec![file.clone()];
        s.args[1] = "echo start; cat ../secret/f; echo end".into();
        let o = go(&s).await;
        assert_eq!(o.exit, ExitKind::Exited(0), "{}", text(&o));
        let root = unsafe { libc::geteuid() } == 0;
        let ns = if root {
            namespaces_work(&["unshare", "-m", "true"])
        } else {
            namespaces_work(&["unshare", "-U", "-m", "true"])
        };
        if !ns {
            eprintln!("namespaces unavailable here: {:?}", o.isolation);
            return;
        }
        assert_eq!(o.isolation, Isolation::Applied, "{}", text(&o));
        assert_eq!(text(&o), "start\nend\n");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "the mirror's secret\n"
        );
        assert!(!mounted_here(&file), "the cover leaked");
    }

    #[tokio::test]
    async fn a_command_runs_unhidden_when_hiding_fails() {
        let (dir, mut s) = hiding_sandbox();
        // A FIFO can be covered neither by a tmpfs nor as a credential
        // file: setting up fails.
        let file = dir.path().join("secret/fifo");
        let c = CString::new(file.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        s.hide = vec![file.clone()];
        s.args[1] = "echo start; cat ../secret/f; echo end".into();
        let o = go(&s).await;
        assert_eq!(o.exit, ExitKind::Exited(0), "{}", text(&o));
        match &o.isolation {
            Isolation::Unavailable(why) => assert!(why.starts_with("cannot "), "{why}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(text(&o), "start\nthe mirror's secret\nend\n");
        assert!(!mounted_here(&file));
    }

    #[tokio::test]
    async fn nothing_to_hide_means_no_namespace() {
        let (dir, mut s) = hiding_sandbox();
        // The command's own directory and what does not exist are skipped.
        s.hide = vec![dir.path().to_path_buf(), dir.path().join("gone")];
        s.args[1] = "echo start; cat ../secret/f; echo end".into();
        let o = go(&s).await;
        assert_eq!(o.exit, ExitKind::Exited(0), "{}", text(&o));
        assert_eq!(o.isolation, Isolation::NotRequested);
        assert_eq!(text(&o), "start\nthe mirror's secret\nend\n");
        assert_eq!(go(&sh("true")).await.isolation, Isolation::NotRequested);
    }

    #[test]
    fn id_maps_are_formatted_without_allocating() {
        let mut buf = [0u8; 32];
        assert_eq!(id_map(0, &mut buf), b"0 0 1\n");
        assert_eq!(id_map(1000, &mut buf), b"1000 1000 1\n");
        assert_eq!(id_map(u32::MAX, &mut buf), b"4294967295 4294967295 1\n");
    }

    #[test]
    fn failure_reports_name_the_step_and_the_error() {
        let (r, w) = report_pipe().unwrap();
        let mut rec = [0u8; REPORT_LEN];
        rec[0] = STEP_UID_MAP;
        rec[4..8].copy_from_slice(&libc::EPERM.to_ne_bytes());
        // SAFETY: writes a valid buffer to a pipe we own.
        unsafe { libc::write(w.as_raw_fd(), rec.as_ptr().cast(), REPORT_LEN) };
        let why = read_report(&r).unwrap().unwrap_err();
        assert!(why.starts_with("cannot map the user id"), "{why}");
        assert!(why.contains("not permitted"), "{why}");
        assert_eq!(read_report(&r), None, "nothing more to read");
    }
}
