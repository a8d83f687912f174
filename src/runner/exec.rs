//! Runs one test command, contained: its own process group, a scrubbed
//! environment, a time limit, bounded output.
//!
//! Tested code is untrusted. It must not see the runner's secrets, must not
//! outlive its job (background children included), and must not be able to
//! exhaust the runner's memory or hang it by holding a pipe open.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
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

fn spawn_reader<R>(mut pipe: R, tail: Arc<Mutex<Tail>>) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => match tail.lock() {
                    Ok(mut t) => t.push(&chunk[..n]),
                    Err(poisoned) => poisoned.into_inner().push(&chunk[..n]),
                },
            }
        }
    })
}

enum Ended {
    Status(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Runs `spec` to completion, time-out or cancellation; never fails: every
/// way of ending is an [`ExitKind`].
///
/// The command gets its own process group, which is SIGKILLed when it ends
/// in any way, so background processes the tests started do not survive.
pub async fn run(spec: &ExecSpec, cancel: CancellationToken) -> ExecOutcome {
    let started = Instant::now();
    let failed = |msg: String| ExecOutcome {
        exit: ExitKind::SpawnFailed(msg),
        duration: started.elapsed(),
        output: Vec::new(),
        truncated_bytes: 0,
    };
    if !spec.cwd.is_dir() {
        return failed(format!(
            "cannot start {:?}: working directory {} does not exist",
            spec.program,
            spec.cwd.display()
        ));
    }

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

    let mut child = match cmd.spawn() {
        Ok(c) => c,
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

    let tail = Arc::new(Mutex::new(Tail::new(spec.output_limit)));
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

    let (output, truncated_bytes) = match tail.lock() {
        Ok(mut t) => (t.buf.drain(..).collect(), t.dropped),
        Err(poisoned) => {
            let mut t = poisoned.into_inner();
            (t.buf.drain(..).collect(), t.dropped)
        }
    };
    ExecOutcome {
        exit,
        duration,
        output,
        truncated_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str]) -> ExecSpec {
        ExecSpec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: std::env::temp_dir(),
            timeout: Duration::from_secs(30),
            output_limit: 1024 * 1024,
            env: Vec::new(),
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
}
