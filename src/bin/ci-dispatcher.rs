//! `ci-dispatcher`: owns the queue and the event log; hands commits to runners.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use ci::dispatcher::{self, Auth, DispatcherConfig};
use ci::util::parse_secs;

#[derive(Parser, Debug)]
#[command(
    name = "ci-dispatcher",
    version,
    about = "Owns the CI queue and its event log; assigns commits to runners."
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: String,
    /// Directory holding the event log (sled). One dispatcher per directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Seconds without a heartbeat before a runner's job is re-queued.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    heartbeat_timeout: Duration,
    /// Store a state snapshot every this many events (restart replays only the tail).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    ci::util::init_tracing(args.verbose, true);
    ci::cli::run("ci-dispatcher", run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = DispatcherConfig::new(args.listen.clone(), args.data_dir.clone());
    config.heartbeat_timeout = args.heartbeat_timeout;
    config.snapshot_every = args.snapshot_every;
    let d = dispatcher::start(config, Auth::open())
        .await
        .with_context(|| format!("cannot start on {}", args.data_dir.display()))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", d.local_addr())?;
        out.flush()?;
    }
    let token = d.shutdown_token();
    tokio::spawn(async move {
        ci::cli::terminated().await;
        tracing::info!("signal received; stopping");
        token.cancel();
    });
    d.wait().await?;
    Ok(ExitCode::SUCCESS)
}
