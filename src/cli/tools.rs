//! `ci-tools`' flags and subcommands, shared by the binary and
//! `ci-tools man/completions`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::DispatcherAddr;
use super::docs::Program;
use crate::tools::table::Colour;
use crate::util::parse_secs;

#[derive(Parser, Debug)]
#[command(name = "ci-tools", version, about = "Look at and drive the CI system.")]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// A file holding the tool's secret (see the README's Security section); else the CI_TOKEN
    /// environment variable, if set. For `up`: the dispatcher's role file,
    /// whose runner and observer lines the runners and the observer use.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// When to colour outcomes and runner states in tables: auto is on a
    /// terminal unless NO_COLOR is set (CLICOLOR_FORCE forces it). JSON never is.
    #[arg(long, value_enum, default_value_t, value_name = "WHEN", global = true)]
    pub color: Colour,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The whole event history, in log order.
    Replay {
        /// Read the log directly (no dispatcher may hold it) instead of
        /// asking a dispatcher.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// JSON Lines, one event each.
        #[arg(long)]
        json: bool,
        /// Rebuild the state from event 1 and compare with the snapshot-based state.
        #[arg(long, requires = "data_dir")]
        verify: bool,
        /// Only the events about this named repository's commits and branches.
        #[arg(long, value_parser = crate::cli::parse_repository_name, value_name = "NAME", conflicts_with = "verify")]
        repository: Option<String>,
    },
    /// Runners, queue and running jobs.
    Status {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Outcome per commit, newest last, with when, who and what.
    Results {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// Only this commit (a full id or a unique prefix of 7+ hex digits).
        #[arg(long, value_name = "SHA")]
        commit: Option<String>,
        /// Only commits reported on this branch.
        #[arg(long, value_name = "NAME")]
        branch: Option<String>,
        /// Only commits of this named repository (the dispatcher's --repository NAME=URL).
        #[arg(long, value_parser = crate::cli::parse_repository_name, value_name = "NAME")]
        repository: Option<String>,
        /// Only commits in this state.
        #[arg(long, value_name = "STATE", value_parser = ["pending", "running", "pass", "fail", "error", "timeout", "cancelled"])]
        outcome: Option<String>,
        /// Only the newest N.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What retention removed: each stored output pruned (job, attempt,
    /// commit, when it finished, when it was pruned, why, bytes), newest
    /// first, then the totals.
    Pruned {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// Only the newest N.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// One JSON object (`pruned`, `totals`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a commit's test output; with --follow, live until its job ends (then exit 0 if it passed, 1 if not).
    Logs {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// Wait for the job (if it is queued) and print its output as the test writes it,
        /// reconnecting if the dispatcher restarts; exit 0 if the job passed, 1 if not.
        #[arg(short, long)]
        follow: bool,
        /// The commit: a full id or a unique prefix of 7+ hex digits.
        #[arg(value_name = "SHA")]
        sha: String,
    },
    /// Stop testing a commit: dequeue it, or kill its running job; its outcome becomes cancelled.
    Cancel {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// The commit: a full id or a unique prefix of 7+ hex digits.
        #[arg(value_name = "SHA")]
        sha: String,
    },
    /// Test a finished commit again: a new attempt is queued.
    Retry {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// The commit: a full id or a unique prefix of 7+ hex digits.
        #[arg(value_name = "SHA")]
        sha: String,
    },
    /// Queue commits for testing (what a post-receive hook calls).
    Submit {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// The branch the commits are on; moves the branch's known tip.
        #[arg(long, value_name = "NAME")]
        branch: Option<String>,
        /// The named repository the commits are of (the dispatcher's
        /// --repository NAME=URL) [default: its unnamed one].
        #[arg(long, value_parser = crate::cli::parse_repository_name, value_name = "NAME")]
        repository: Option<String>,
        /// Full commit ids, oldest first.
        #[arg(required = true, value_name = "SHA")]
        shas: Vec<String>,
    },
    /// Block until each commit has a final outcome: exit 0 if all passed, 1 if not, 2 on timeout.
    Wait {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// Seconds to wait for all of them before giving up (exit 2).
        #[arg(long, default_value = "600", value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
        timeout: Duration,
        /// The final results as one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// The commits: full ids or unique prefixes of 7+ hex digits.
        #[arg(required = true, value_name = "SHA")]
        shas: Vec<String>,
    },
    /// Print the stored output of a commit's final attempt.
    Output {
        #[command(flatten)]
        dispatcher: DispatcherAddr,
        /// The commit: a full id or a unique prefix of 7+ hex digits.
        #[arg(value_name = "SHA")]
        sha: String,
    },
    /// Dispatcher, runners and observer in one process, for one machine.
    Up {
        /// The repository to watch and test.
        #[arg(long, value_name = "URL_OR_PATH")]
        repo: String,
        /// How many runners to start.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256), value_name = "N")]
        runners: u32,
        /// Directory for the event log; the runners' and observer's clones go in DIR/work.
        #[arg(long, default_value = "ci-data", value_name = "DIR")]
        data_dir: PathBuf,
        /// Address the dispatcher listens on; port 0 picks a free port.
        #[arg(long, default_value = super::DEFAULT_DISPATCHER, value_name = "ADDR")]
        listen: String,
        /// Seconds between observer polls.
        #[arg(long, default_value = "2", value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
        interval: Duration,
        /// Branch to watch (repeatable) [default: every branch].
        #[arg(long = "branch", value_name = "NAME")]
        branches: Vec<String>,
        /// Without --token-file, listen on a non-loopback address anyway.
        #[arg(long)]
        insecure: bool,
        /// Also serve the web dashboard, the JSON API (/api/v1/) and /metrics over HTTP on this address; port 0 picks a free port. Off by default.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// Run the whole system on a throw-away repository and print the results.
    Demo,
    /// Measure the performance figures of issue 5 against the real binaries.
    Bench {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Only these figures (repeatable or comma-separated): jobs, appends, restart, replay, rss, idle, push, pages, live, dashboards.
        #[arg(long, value_delimiter = ',', value_name = "FIGURE")]
        only: Vec<String>,
        /// Repetitions of each figure (the median is reported).
        #[arg(long, default_value_t = 3, value_name = "N")]
        reps: usize,
        /// Simulated runners for the job-cycle figure.
        #[arg(long, default_value_t = 64, value_name = "N")]
        runners: usize,
        /// Jobs per job-cycle repetition.
        #[arg(long, default_value_t = 20_000, value_name = "N")]
        jobs: u64,
        /// Commits per observer report in the job-cycle figure.
        #[arg(long, default_value_t = 100, value_name = "N")]
        commits_per_report: usize,
        /// Concurrent clients for the append figure.
        #[arg(long, default_value_t = 64, value_name = "N")]
        append_clients: usize,
        /// Events per append repetition.
        #[arg(long, default_value_t = 100_000, value_name = "N")]
        append_events: u64,
        /// Events (commits) per request in the append figure.
        #[arg(long, default_value_t = 1, value_name = "N")]
        append_batch: usize,
        /// Events of history for restart, replay and memory.
        #[arg(long, default_value_t = 1_000_000, value_name = "N")]
        history: u64,
        /// Events per group commit in the generated history.
        #[arg(long, default_value_t = 64, value_name = "N")]
        history_batch: usize,
        /// Connected idle runners for the CPU figure (each takes a
        /// descriptor in this process and one in the dispatcher).
        #[arg(long, default_value_t = 10_000, value_name = "N")]
        idle_runners: usize,
        /// Seconds between one idle runner's heartbeats (the default is
        /// the pace the dispatcher asks of idle runners by default,
        /// ci-dispatcher --idle-heartbeat-interval).
        #[arg(long, default_value = crate::dispatcher::IDLE_HEARTBEAT_INTERVAL_SECS, value_parser = parse_secs, value_name = "SECS")]
        idle_heartbeat: Duration,
        /// Seconds per CPU measurement window.
        #[arg(long, default_value = "3", value_parser = parse_secs, value_name = "SECS")]
        idle_window: Duration,
        /// Also measure growth: runners 1..1000 (idle runners up to 10,000),
        /// history 10^4..HISTORY.
        #[arg(long)]
        growth: bool,
        /// Commits of history for the page figure.
        #[arg(long, default_value_t = 100_000, value_name = "N")]
        page_commits: u64,
        /// Requests of each kind in the page figure.
        #[arg(long, default_value_t = 200, value_name = "N")]
        page_requests: usize,
        /// Dashboard clients streaming in the dashboards figure.
        #[arg(long, default_value_t = 20, value_name = "N")]
        dashboards: usize,
    },
    /// Print a shell's completion script for the four programs (or one).
    ///
    /// bash: `source <(ci-tools completions bash)` in ~/.bashrc; zsh:
    /// `source <(ci-tools completions zsh)` after compinit; fish:
    /// `ci-tools completions fish | source`. To install one file per
    /// program (a bash-completion, zsh fpath or fish completions
    /// directory), give --program.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
        /// Only this program's script [default: all four].
        #[arg(long, value_enum, value_name = "PROGRAM")]
        program: Option<Program>,
    },
    /// Write man pages (section 1) for the four programs and each ci-tools subcommand.
    Man {
        /// Directory to write the pages into (made if missing).
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
    },
}
