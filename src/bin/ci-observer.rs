//! `ci-observer`: watches a repository's branches and reports new commits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use ci::observer::{Observer, ObserverConfig};
use ci::util::parse_secs;

#[derive(Parser, Debug)]
#[command(
    name = "ci-observer",
    version,
    about = "Reports every new commit on the watched branches to the dispatcher."
)]
struct Args {
    /// The dispatcher's address, HOST:PORT.
    #[arg(long)]
    dispatcher: String,
    /// The repository to watch: a path, file:// or git:// URL.
    #[arg(long)]
    repo: String,
    /// Where the observer keeps its clone.
    #[arg(long)]
    work_dir: PathBuf,
    /// A branch to watch (repeatable) [default: every branch].
    #[arg(long = "branch")]
    branches: Vec<String>,
    /// Seconds between polls.
    #[arg(long, default_value = "5", value_parser = parse_secs, allow_negative_numbers = true)]
    interval: Duration,
    /// Report what is new once, then exit.
    #[arg(long)]
    once: bool,
    /// A file holding this program's secret (see the README's Security section); else the
    /// CI_TOKEN environment variable, if set.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args: Args = match ci::cli::parse_args("ci-observer") {
        Ok(a) => a,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, true);
    ci::cli::run("ci-observer", run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    for b in &args.branches {
        ci::core::ids::validate_branch_name(b)?;
    }
    let cfg = ObserverConfig {
        dispatcher: args.dispatcher,
        repo: args.repo,
        work_dir: args.work_dir,
        branches: args.branches,
        interval: args.interval,
        once: args.once,
        token: ci::cli::client_token(args.token_file.as_deref(), ci::proto::Role::Observer)?,
    };
    let observer = Observer::prepare(cfg).await?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        ci::cli::terminated().await;
        s.cancel();
    });
    observer.run(stop).await?;
    Ok(ExitCode::SUCCESS)
}
