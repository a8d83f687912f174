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
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    interval: Duration,
    /// Report what is new once, then exit.
    #[arg(long)]
    once: bool,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
        token: None,
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
