//! `ci-tools`: history, status, results, push-style triggering, and the demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};

use ci::tools;
use ci::util::parse_secs;

#[derive(Parser, Debug)]
#[command(name = "ci-tools", version, about = "Look at and drive the CI system.")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// A file holding the tool's secret (see SECURITY.md); else the CI_TOKEN
    /// environment variable, if set.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The whole event history, in log order.
    Replay {
        /// Read the log directly (no dispatcher may hold it).
        #[arg(
            long,
            conflicts_with = "dispatcher",
            required_unless_present = "dispatcher"
        )]
        data_dir: Option<PathBuf>,
        /// Ask a running dispatcher.
        #[arg(long)]
        dispatcher: Option<String>,
        /// JSON Lines, one event each.
        #[arg(long)]
        json: bool,
        /// Rebuild the state from event 1 and compare with the snapshot-based state.
        #[arg(long, requires = "data_dir")]
        verify: bool,
    },
    /// Runners, queue and running jobs.
    Status {
        #[arg(long)]
        dispatcher: String,
        #[arg(long)]
        json: bool,
    },
    /// Outcome per commit.
    Results {
        #[arg(long)]
        dispatcher: String,
        /// Only this commit (full id).
        #[arg(long)]
        commit: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Queue commits for testing (what a post-receive hook calls).
    Submit {
        #[arg(long)]
        dispatcher: String,
        /// The branch the commits are on; moves the branch's known tip.
        #[arg(long)]
        branch: Option<String>,
        /// Full commit ids, oldest first.
        #[arg(required = true)]
        shas: Vec<String>,
    },
    /// Block until each commit has a final outcome: exit 0 if all passed, 1 if not, 2 on timeout.
    Wait {
        #[arg(long)]
        dispatcher: String,
        #[arg(long, default_value = "600", value_parser = parse_secs, allow_negative_numbers = true)]
        timeout: Duration,
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        shas: Vec<String>,
    },
    /// Print the stored output of a commit's final attempt.
    Output {
        #[arg(long)]
        dispatcher: String,
        sha: String,
    },
    /// Dispatcher, runners and observer in one process, for one machine.
    Up {
        /// The repository to watch and test.
        #[arg(long)]
        repo: String,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
        runners: u32,
        #[arg(long, default_value = "ci-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8765")]
        listen: String,
        /// Seconds between observer polls.
        #[arg(long, default_value = "2", value_parser = parse_secs, allow_negative_numbers = true)]
        interval: Duration,
        /// Branch to watch (repeatable) [default: every branch].
        #[arg(long = "branch")]
        branches: Vec<String>,
    },
    /// Run the whole system on a throw-away repository and print the results.
    Demo,
}

fn main() -> ExitCode {
    let args: Args = match ci::cli::parse_args("ci-tools") {
        Ok(a) => a,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, false);
    ci::cli::run("ci-tools", run(args.cmd, args.token_file))
}

async fn run(cmd: Cmd, token_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Read lazily: offline replay, up and demo need no token.
    let token = || ci::cli::client_token(token_file.as_deref(), ci::proto::Role::Tool);
    match cmd {
        Cmd::Replay {
            data_dir,
            dispatcher,
            json,
            verify,
        } => match (data_dir, dispatcher) {
            (Some(dir), None) => {
                tokio::task::spawn_blocking(move || tools::replay_offline(&dir, json, verify))
                    .await?
            }
            (None, Some(addr)) => tools::replay_online(&addr, token()?, json).await,
            _ => bail!("give either --data-dir DIR or --dispatcher ADDR"),
        },
        Cmd::Status { dispatcher, json } => tools::status(&dispatcher, token()?, json).await,
        Cmd::Results {
            dispatcher,
            commit,
            json,
        } => tools::results(&dispatcher, token()?, commit, json).await,
        Cmd::Submit {
            dispatcher,
            branch,
            shas,
        } => tools::submit(&dispatcher, token()?, branch, &shas).await,
        Cmd::Wait {
            dispatcher,
            timeout,
            json,
            shas,
        } => tools::wait(&dispatcher, token()?, timeout, &shas, json).await,
        Cmd::Output { dispatcher, sha } => tools::output(&dispatcher, token()?, &sha).await,
        Cmd::Up {
            repo,
            runners,
            data_dir,
            listen,
            interval,
            branches,
        } => {
            let work_dir = data_dir.join("work");
            let cluster = tools::up::launch(tools::up::UpOptions {
                repo,
                runners: runners as usize,
                data_dir,
                work_dir,
                listen,
                poll_interval: interval,
                heartbeat_timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_secs(2),
                job_timeout: Duration::from_secs(1800),
                branches,
            })
            .await?;
            println!("listening on {}", cluster.addr);
            println!("{runners} runner(s) and an observer started; Ctrl-C to stop");
            ci::cli::terminated().await;
            cluster.stop().await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo => tools::demo::run().await,
    }
}
