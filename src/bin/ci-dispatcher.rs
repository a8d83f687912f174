//! `ci-dispatcher`: owns the queue and the event log; hands commits to runners.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use ci::dispatcher::{self, DispatcherConfig};
use ci::proto::auth::{Auth, Tokens};
use ci::store::SledLog;
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
    #[arg(long, default_value = "10", value_parser = parse_secs, allow_negative_numbers = true)]
    heartbeat_timeout: Duration,
    /// Store a state snapshot every this many events (restart replays only the tail).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
    /// The role secrets, one `ROLE: SECRET` line each for runner, observer,
    /// tool and tool-write (see the README's Security section). Without it every client is
    /// trusted and only loopback addresses are allowed.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Without --token-file, listen on a non-loopback address anyway.
    #[arg(long)]
    insecure: bool,
    /// Most connections at once; lowered to fit under the open-file limit
    /// (whose soft limit is raised to the hard one at start).
    #[arg(long, default_value_t = dispatcher::MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(8..))]
    max_connections: u32,
    /// Seconds a new connection has to say hello (for tests).
    #[arg(long, default_value = "5", value_parser = parse_secs, hide = true)]
    hello_timeout: Duration,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args: Args = match ci::cli::parse_args("ci-dispatcher") {
        Ok(a) => a,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, true);
    ci::cli::run("ci-dispatcher", run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = DispatcherConfig::new(args.listen.clone());
    config.heartbeat_timeout = args.heartbeat_timeout;
    config.snapshot_every = args.snapshot_every;
    config.hello_timeout = args.hello_timeout;
    config.insecure = args.insecure;
    config.max_connections = args.max_connections as usize;
    let auth = match &args.token_file {
        Some(path) => Auth::with_tokens(Tokens::from_file(path)?),
        None => {
            if args.insecure {
                ci::cli::stderr_line(format_args!(
                    "ci-dispatcher: warning: no --token-file and --insecure: every client that can reach {} is trusted",
                    args.listen
                ));
            } else {
                ci::cli::stderr_line(format_args!(
                    "ci-dispatcher: warning: no --token-file: every client is trusted, so only loopback addresses are allowed"
                ));
            }
            Auth::open()
        }
    };
    let dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || SledLog::open(&dir))
        .await?
        .with_context(|| format!("cannot start on {}", args.data_dir.display()))?;
    let d = dispatcher::start(config, auth, Box::new(store))
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
        // Cancel first: nothing after the signal may stand in the way of
        // the stop.
        token.cancel();
        tracing::info!("signal received; stopping");
    });
    d.wait().await?;
    Ok(ExitCode::SUCCESS)
}
