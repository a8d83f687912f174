//! `ci-observer`'s flags, shared by the binary and `ci-tools man/completions`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::util::parse_secs;

#[derive(Parser, Debug)]
#[command(
    name = "ci-observer",
    version,
    about = "Reports every new commit on the watched branches to the dispatcher."
)]
pub struct Args {
    #[command(flatten)]
    pub dispatcher: super::DispatcherAddr,
    /// The repository to watch: a path, a file://, git://, https:// or ssh:// URL, or
    /// user@host:path (see the --git-* flags).
    #[arg(long, value_name = "URL_OR_PATH")]
    pub repo: String,
    /// The name the dispatcher knows this repository by (its
    /// `--repository NAME=URL`) [default: the dispatcher's unnamed one].
    #[arg(long, value_parser = super::parse_repository_name, value_name = "NAME")]
    pub repository: Option<String>,
    #[command(flatten)]
    pub git: super::git::GitArgs,
    /// Where the observer keeps its clone.
    #[arg(long, value_name = "DIR")]
    pub work_dir: PathBuf,
    /// A branch to watch (repeatable) [default: every branch].
    #[arg(long = "branch", value_name = "NAME")]
    pub branches: Vec<String>,
    /// Seconds between polls.
    #[arg(long, default_value = "5", value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
    pub interval: Duration,
    /// Report what is new once, then exit.
    #[arg(long)]
    pub once: bool,
    /// A file holding this program's secret (see the README's Security section); else the
    /// CI_TOKEN environment variable, if set.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}
