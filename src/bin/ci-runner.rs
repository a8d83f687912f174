//! `ci-runner`: runs the tests of the commits the dispatcher assigns to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use ci::runner::agent::{Runner, RunnerConfig, default_name};
use ci::util::parse_secs;

#[derive(Parser, Debug)]
#[command(
    name = "ci-runner",
    version,
    about = "Checks out exactly the commit it is given and runs its tests."
)]
struct Args {
    /// The dispatcher's address, HOST:PORT.
    #[arg(long)]
    dispatcher: String,
    /// The repository to test: a path, file:// or git:// URL.
    #[arg(long)]
    repo: String,
    /// Where this runner keeps its clone and checkouts.
    #[arg(long)]
    work_dir: PathBuf,
    /// Unique runner name [default: host name + a hash of the work dir].
    #[arg(long)]
    name: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, default_value = "2", value_parser = parse_secs, allow_negative_numbers = true)]
    heartbeat_interval: Duration,
    /// Longest a test run may take before its process group is killed.
    #[arg(long, default_value = "1800", value_parser = parse_secs, allow_negative_numbers = true)]
    job_timeout: Duration,
    /// A file holding this program's secret (see the README's Security section); else the
    /// CI_TOKEN environment variable, if set.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args: Args = match ci::cli::parse_args("ci-runner") {
        Ok(a) => a,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, true);
    // Tested code runs as this user: make this process non-dumpable so it
    // cannot read our environment or memory through /proc/PID.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers and has no
    // memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    ci::cli::run("ci-runner", run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = match args.name {
        Some(n) => n,
        None => default_name(&args.work_dir),
    };
    ci::core::ids::validate_runner_name(&name)?;
    let cfg = RunnerConfig {
        dispatcher: args.dispatcher,
        repo: args.repo,
        work_dir: args.work_dir,
        name,
        heartbeat_interval: args.heartbeat_interval,
        job_timeout: args.job_timeout,
        token: ci::cli::client_token(args.token_file.as_deref(), ci::proto::Role::Runner)?,
    };
    let runner = Runner::prepare(cfg).await?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        ci::cli::terminated().await;
        s.cancel();
        tracing::info!("signal received; handing back any running job and stopping");
    });
    runner.run(stop).await?;
    Ok(ExitCode::SUCCESS)
}
