//! `ci-runner`'s flags, shared by the binary and `ci-tools man/completions`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::util::parse_secs;

#[derive(Parser, Debug)]
#[command(
    name = "ci-runner",
    version,
    about = "Checks out exactly the commit it is given and runs its tests."
)]
pub struct Args {
    #[command(flatten)]
    pub dispatcher: super::DispatcherAddr,
    /// The repository to test: a path, a file://, git://, https:// or ssh:// URL, or
    /// user@host:path (see the --git-* flags): the dispatcher's default
    /// repository. `NAME=URL` serves the dispatcher's repository NAME from
    /// this URL instead (write a relative path holding `=` as ./PATH).
    /// Repeatable.
    #[arg(long = "repo", value_parser = super::parse_runner_repo, value_name = "[NAME=]URL_OR_PATH", required_unless_present = "any_repository")]
    pub repos: Vec<(Option<String>, String)>,
    /// Also serve every other repository of the dispatcher, cloned on demand
    /// from the URL the dispatcher gives with each job (its --repository NAME=URL).
    #[arg(long)]
    pub any_repository: bool,
    #[command(flatten)]
    pub git: super::git::GitArgs,
    /// Where this runner keeps its clone and checkouts.
    #[arg(long, value_name = "DIR")]
    pub work_dir: PathBuf,
    /// Unique runner name [default: host name + a hash of the work dir].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, default_value = crate::runner::HEARTBEAT_INTERVAL_SECS, value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
    pub heartbeat_interval: Duration,
    /// Longest a test run may take before its process group is killed.
    #[arg(long, default_value = "1800", value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
    pub job_timeout: Duration,
    /// A file holding this program's secret (see the README's Security section); else the
    /// CI_TOKEN environment variable, if set.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
