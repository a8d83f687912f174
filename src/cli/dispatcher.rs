//! `ci-dispatcher`'s flags, shared by the binary and `ci-tools man/completions`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::util::parse_secs;

#[derive(Parser, Debug)]
#[command(
    name = "ci-dispatcher",
    version,
    about = "Owns the CI queue and its event log; assigns commits to runners."
)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = super::DEFAULT_DISPATCHER, value_name = "ADDR")]
    pub listen: String,
    /// Directory holding the event log (sled). One dispatcher per directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Seconds without a heartbeat before a runner's job is re-queued.
    #[arg(long, default_value = "10", value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
    pub heartbeat_timeout: Duration,
    /// Store a state snapshot every this many events (restart replays only the tail).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub snapshot_every: u64,
    /// The role secrets, one `ROLE: SECRET` line each for runner, observer,
    /// tool and tool-write (see the README's Security section). Without it every client is
    /// trusted and only loopback addresses are allowed.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Without --token-file, listen on a non-loopback address anyway.
    #[arg(long)]
    pub insecure: bool,
    /// Also serve the web dashboard, the JSON API (/api/v1/), /metrics and
    /// the forge webhooks (/hooks/) over HTTP on this address; port 0 picks
    /// a free port. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// The secret forge webhooks (POST /hooks/github, /hooks/gitea,
    /// /hooks/gitlab on --http) are signed with: one line, at least 16
    /// characters. Read once at start. Without it the hook URLs answer 404.
    #[arg(long, value_name = "FILE", requires = "http")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Most connections at once; lowered to fit under the open-file limit
    /// (whose soft limit is raised to the hard one at start).
    #[arg(long, default_value_t = crate::dispatcher::MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(8..), value_name = "N")]
    pub max_connections: u32,
    /// Seconds a new connection has to say hello (for tests).
    #[arg(long, default_value = "5", value_parser = parse_secs, hide = true, value_name = "SECS")]
    pub hello_timeout: Duration,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
