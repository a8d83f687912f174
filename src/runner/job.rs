//! One job on the runner: make the mirror sound and fetch, check out exactly
//! the commit into a fresh directory, read `.ci.toml`, run the test command
//! contained, and turn what happened into a [`JobReport`]. Everything here
//! is IO; the connection and its rules live in `agent.rs`.
//!
//! The work directory (`--work-dir`) holds:
//!
//! ```text
//! mirror.git/        the default repository's bare mirror (git.rs), hidden
//!                    from tests
//! repos/NAME/mirror.git/  a named repository's mirror (`/` in NAME as
//!                    `%2F`), made on demand; `repos/` is hidden from tests
//! mirror.git.rebuild/  only while a damaged mirror is being rebuilt, hidden
//!                    (so are the --git-token-file and --git-ssh-key-file)
//! jobs/checkout/     the commit under test: the test's working directory;
//!                    `jobs/` holds nothing else, so `..` shows no runner file
//! trash/             earlier jobs' directories on their way out, hidden
//! current-job        the marker: the job in progress, or handed back (agent.rs)
//! pending-result     a finished result not yet acknowledged (agent.rs)
//! ```
//!
//! Runners of earlier releases checked out into `checkout/` at the top; a
//! leftover one is cleared away like an earlier job's directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::config;
use super::exec::{self, ExecSpec, ExitKind, Isolation};
use super::unittest;
use crate::core::{CommitId, JobReport, Outcome};
use crate::git::{self, GitError, Mirror};
use crate::proto::MAX_OUTPUT_BYTES;

/// The parts of the work directory a job uses (see the module's doc).
#[derive(Clone, Debug)]
pub struct Layout {
    work_dir: PathBuf,
}

impl Layout {
    pub fn new(work_dir: &Path) -> Layout {
        Layout {
            work_dir: work_dir.to_path_buf(),
        }
    }

    /// The directory of everything one job may write to.
    pub fn jobs(&self) -> PathBuf {
        self.work_dir.join("jobs")
    }

    /// The test's working directory.
    pub fn checkout(&self) -> PathBuf {
        self.jobs().join("checkout")
    }

    /// Where earlier jobs' directories go to be removed.
    pub fn trash(&self) -> PathBuf {
        self.work_dir.join("trash")
    }

    /// The checkout of runners before `jobs/` existed.
    fn legacy_checkout(&self) -> PathBuf {
        self.work_dir.join("checkout")
    }

    /// Gets whatever earlier jobs left out of the way before a new one:
    /// `jobs/` (and an old release's `checkout/`) is first renamed into the
    /// trash, so a process that outlived its job and still writes there
    /// cannot reach the next checkout, then the trash is emptied. Only
    /// failing to get `jobs/` out of the way is an error; trash that cannot
    /// be removed yet (something still writing into it) is tried again
    /// next time.
    pub fn clear(&self) -> Result<(), GitError> {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let trash = self.trash();
        for dir in [self.jobs(), self.legacy_checkout()] {
            if std::fs::symlink_metadata(&dir).is_err() {
                continue;
            }
            let moved = std::fs::create_dir_all(&trash).and_then(|()| {
                let n = SERIAL.fetch_add(1, Ordering::Relaxed);
                let name = format!("{}-{}-{n}", std::process::id(), unique_ms());
                std::fs::rename(&dir, trash.join(name))
            });
            if let Err(e) = moved {
                debug!(dir = %dir.display(), error = %e, "cannot move into the trash; removing in place");
                git::remove_tree(&dir).map_err(|err| GitError::Io {
                    what: "clear the previous job's directory",
                    path: dir.clone(),
                    err,
                })?;
            }
        }
        if let Err(e) = git::remove_tree(&trash) {
            warn!(trash = %trash.display(), error = %e, "cannot empty the trash yet; trying again before the next job");
        }
        Ok(())
    }

    /// What the test must not see: the mirror's directories, its
    /// credential files, the trash, and every other mirror: the default
    /// repository's (`mirror.git`) and the named ones' (`repos/`).
    pub fn hidden(&self, mirror: &Mirror) -> Vec<PathBuf> {
        let mut hide = mirror.private_dirs();
        hide.push(self.trash());
        for other in [
            self.work_dir.join("mirror.git"),
            self.work_dir.join("repos"),
        ] {
            if other.is_dir() && !hide.contains(&other) {
                hide.push(other);
            }
        }
        hide
    }
}

fn unique_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

fn error_report(message: String) -> (JobReport, Vec<u8>) {
    warn!(%message, "job cannot run");
    (
        JobReport {
            outcome: Outcome::Error,
            exit_code: None,
            duration_ms: 0,
            tests: None,
            message: message.clone(),
        },
        message.into_bytes(),
    )
}

/// Says once per process that tests run without their mount namespace.
fn warn_isolation(isolation: &Isolation) {
    static WARNED: Once = Once::new();
    if let Isolation::Unavailable(why) = isolation {
        WARNED.call_once(|| {
            warn!(%why, "tests run without isolation: they can see the runner's work directory; the mirror is checked before every job instead");
        });
    }
}

/// A job that could not start (no mirror for its repository): an `error`.
pub fn cannot_run(message: String) -> Executed {
    let (report, output) = error_report(message);
    Executed {
        report,
        output,
        info: None,
    }
}

/// Makes the mirror sound, fetches, checks out exactly `commit` into a fresh
/// directory, and runs the configured test command there.
/// What one job produced: the report, the output's tail, and who wrote the
/// commit and what it says (when the checkout got that far).
pub struct Executed {
    pub report: JobReport,
    pub output: Vec<u8>,
    pub info: Option<crate::core::CommitInfo>,
}

pub async fn execute(
    mirror: Arc<Mutex<Mirror>>,
    work_dir: &Path,
    commit: CommitId,
    job_timeout: Duration,
    cancel: CancellationToken,
    tap: Arc<exec::Tap>,
) -> Executed {
    let mut info = None;
    let (report, output) = run_job(
        mirror,
        work_dir,
        commit,
        job_timeout,
        cancel,
        tap,
        &mut info,
    )
    .await;
    Executed {
        report,
        output,
        info,
    }
}

async fn run_job(
    mirror: Arc<Mutex<Mirror>>,
    work_dir: &Path,
    commit: CommitId,
    job_timeout: Duration,
    cancel: CancellationToken,
    tap: Arc<exec::Tap>,
    info: &mut Option<crate::core::CommitInfo>,
) -> (JobReport, Vec<u8>) {
    let layout = Layout::new(work_dir);
    let checkout = layout.checkout();
    let prepared = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(
            move || -> Result<(Vec<PathBuf>, Option<crate::core::CommitInfo>), GitError> {
                layout.clear()?;
                let mut m = mirror.lock().unwrap_or_else(|p| p.into_inner());
                m.sync_and_checkout(commit, &layout.checkout())?;
                Ok((layout.hidden(&m), m.commit_info(commit)))
            },
        )
        .await
    };
    let hide = match prepared {
        Ok(Ok((hide, found))) => {
            *info = found;
            hide
        }
        Ok(Err(e)) => return error_report(e.to_string()),
        Err(e) => return error_report(format!("checkout task failed: {e}")),
    };
    let cfg = match config::load(&checkout) {
        Ok(c) => c,
        Err(e) => return error_report(e.to_string()),
    };
    let timeout = match cfg.timeout_secs {
        Some(s) => job_timeout.min(Duration::from_secs(s)),
        None => job_timeout,
    };
    let Some((program, args)) = cfg.command.split_first() else {
        return error_report("the test command is empty".into());
    };
    let spec = ExecSpec {
        program: program.clone(),
        args: args.to_vec(),
        cwd: checkout,
        timeout,
        output_limit: MAX_OUTPUT_BYTES,
        env: cfg.env.clone(),
        hide,
    };
    debug!(command = ?cfg.command, timeout_s = timeout.as_secs_f64(), "running tests");
    // The log starts with the exact command, as Buildkite's and Jenkins'
    // logs do: the dashboard shows it, and a reader can run it by hand.
    tap.announce(&command_line(&cfg.command));
    let out = exec::run_tapped(&spec, cancel, tap).await;
    warn_isolation(&out.isolation);
    let text = String::from_utf8_lossy(&out.output);
    let tests = unittest::parse_summary(&text);
    let summary = unittest::summary_line(&text);
    let (outcome, exit_code, message) = match &out.exit {
        ExitKind::Exited(0) => (
            Outcome::Pass,
            Some(0),
            summary.unwrap_or_else(|| "exit 0".into()),
        ),
        ExitKind::Exited(c) => (
            Outcome::Fail,
            Some(*c),
            summary.unwrap_or_else(|| format!("exit {c}")),
        ),
        ExitKind::Signaled(s) => (Outcome::Fail, None, format!("killed by signal {s}")),
        ExitKind::TimedOut => (
            Outcome::Timeout,
            None,
            format!(
                "timed out after {:.1} s; the process group was killed",
                timeout.as_secs_f64()
            ),
        ),
        ExitKind::Cancelled => (Outcome::Error, None, "cancelled".into()),
        ExitKind::SpawnFailed(m) => (Outcome::Error, None, m.clone()),
    };
    (
        JobReport {
            outcome,
            exit_code,
            duration_ms: out.duration.as_millis() as u64,
            tests,
            message,
        },
        out.output,
    )
}

/// `$ ARGV...` and a newline, each argument quoted as a POSIX shell
/// would need it to be typed.
fn command_line(argv: &[String]) -> String {
    let quoted =
        shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| format!("{argv:?}"));
    format!("$ {quoted}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_command_line_reads_as_it_would_be_typed() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&argv(&[
                "python3", "-m", "unittest", "discover", "-s", "tests"
            ])),
            "$ python3 -m unittest discover -s tests\n"
        );
        assert_eq!(
            command_line(&argv(&["sh", "-c", "echo 'hi'; exit 1"])),
            "$ sh -c \"echo 'hi'; exit 1\"\n"
        );
    }

    #[test]
    fn clear_takes_away_whatever_earlier_jobs_left() {
        let work = tempfile::tempdir().unwrap();
        let l = Layout::new(work.path());
        let co = l.checkout();
        fs::create_dir_all(co.join("locked/deeper")).unwrap();
        fs::write(co.join("locked/deeper/f"), "x").unwrap();
        fs::set_permissions(co.join("locked/deeper"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(co.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(&co, fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(l.jobs(), fs::Permissions::from_mode(0o500)).unwrap();
        // An older release's checkout, at the top.
        fs::create_dir_all(work.path().join("checkout/tests")).unwrap();
        fs::write(work.path().join("checkout/tests/t.py"), "x").unwrap();
        // Untouched: the mirror and the marker.
        fs::create_dir(work.path().join("mirror.git")).unwrap();
        fs::write(work.path().join("current-job"), "1 1\n").unwrap();

        l.clear().unwrap();
        let mut left: Vec<String> = fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["current-job", "mirror.git"]);
        l.clear().unwrap();
    }

    /// `jobs` replaced by a file, or by a symlink to something that must
    /// survive: only the link goes.
    #[test]
    fn clear_never_follows_what_a_test_put_in_place_of_jobs() {
        let work = tempfile::tempdir().unwrap();
        let precious = tempfile::tempdir().unwrap();
        fs::write(precious.path().join("canary"), "alive").unwrap();
        let l = Layout::new(work.path());
        std::os::unix::fs::symlink(precious.path(), l.jobs()).unwrap();
        l.clear().unwrap();
        assert!(fs::symlink_metadata(l.jobs()).is_err());
        assert_eq!(
            fs::read_to_string(precious.path().join("canary")).unwrap(),
            "alive"
        );
        fs::write(l.jobs(), "a file").unwrap();
        l.clear().unwrap();
        assert!(fs::symlink_metadata(l.jobs()).is_err());
    }

    /// A process that outlived its job keeps writing into its working
    /// directory (by inode, as a process's cwd does): the next checkout
    /// directory is a different one, and clearing does not fail because
    /// the trash is still being written to.
    #[test]
    fn a_writer_left_behind_cannot_reach_the_next_checkout() {
        use std::sync::atomic::AtomicBool;
        let work = tempfile::tempdir().unwrap();
        let l = Layout::new(work.path());
        fs::create_dir_all(l.checkout()).unwrap();
        let cwd = fs::File::open(l.checkout()).unwrap();
        let via_fd = PathBuf::from(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            cwd.as_raw_fd()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = fs::write(via_fd.join(format!("junk-{i}")), "x");
                    i += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..20 {
            l.clear().unwrap();
            fs::create_dir_all(l.checkout()).unwrap();
            assert_eq!(fs::read_dir(l.checkout()).unwrap().count(), 0);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        drop(cwd);
        l.clear().unwrap();
        assert!(!l.trash().exists(), "emptied once the writer stopped");
    }
}
