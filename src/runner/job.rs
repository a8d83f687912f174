//! One job on the runner: fetch, check out exactly the commit into a fresh
//! directory, read `.ci.toml`, run the test command contained, and turn what
//! happened into a [`JobReport`]. Everything here is IO; the connection and
//! its rules live in `agent.rs`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::config;
use super::exec::{self, ExecSpec, ExitKind};
use super::unittest;
use crate::core::{CommitId, JobReport, Outcome};
use crate::git::{GitError, Mirror};
use crate::proto::MAX_OUTPUT_BYTES;

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

/// Fetches, checks out exactly `commit` into a fresh directory, and runs the
/// configured test command there.
pub async fn execute(
    mirror: Arc<Mutex<Mirror>>,
    work_dir: &Path,
    commit: CommitId,
    job_timeout: Duration,
    cancel: CancellationToken,
) -> (JobReport, Vec<u8>) {
    let checkout = work_dir.join("checkout");
    let dir = checkout.clone();
    let git = tokio::task::spawn_blocking(move || -> Result<(), GitError> {
        let m = mirror.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = m.fetch() {
            // A fetch failure is not yet fatal: the commit may be here already.
            warn!(error = %e, "fetch failed");
        }
        m.checkout(commit, &dir)
    })
    .await;
    match git {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return error_report(e.to_string()),
        Err(e) => return error_report(format!("checkout task failed: {e}")),
    }
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
    };
    debug!(command = ?cfg.command, timeout_s = timeout.as_secs_f64(), "running tests");
    let out = exec::run(&spec, cancel).await;
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
