//! `ci-tools`: history, status, results, push-style triggering, and the demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};

use ci::tools;
use ci::tools::commits;
use ci::util::parse_secs;

#[derive(Parser, Debug)]
#[command(name = "ci-tools", version, about = "Look at and drive the CI system.")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// A file holding the tool's secret (see the README's Security section); else the CI_TOKEN
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
    /// Outcome per commit, newest last.
    Results {
        #[arg(long)]
        dispatcher: String,
        /// Only this commit (a full id or a unique prefix of 7+ hex digits).
        #[arg(long)]
        commit: Option<String>,
        /// Only commits reported on this branch.
        #[arg(long)]
        branch: Option<String>,
        /// Only this status: pending, running, pass, fail, error, timeout, lost, cancelled.
        #[arg(long, value_parser = ["pending", "running", "pass", "fail", "error", "timeout", "lost", "cancelled"])]
        outcome: Option<String>,
        /// Only the newest N.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Print a commit's test output; with --follow, live until its job ends.
    Logs {
        #[arg(long)]
        dispatcher: String,
        /// Wait for the job (if queued) and print its output as it is written.
        #[arg(short, long)]
        follow: bool,
        /// A full commit id or a unique prefix of 7+ hex digits.
        sha: String,
    },
    /// Stop testing a commit: dequeue it, or kill its running job; its outcome becomes cancelled.
    Cancel {
        #[arg(long)]
        dispatcher: String,
        /// A full commit id or a unique prefix of 7+ hex digits.
        sha: String,
    },
    /// Test a finished commit again (a new attempt, queued at the front).
    Retry {
        #[arg(long)]
        dispatcher: String,
        /// A full commit id or a unique prefix of 7+ hex digits.
        sha: String,
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
    /// Measure the performance figures of issue 5 against the real binaries.
    Bench {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Only these figures (repeatable or comma-separated): jobs, appends, restart, replay, rss, idle, push.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Repetitions of each figure (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Simulated runners for the job-cycle figure.
        #[arg(long, default_value_t = 64)]
        runners: usize,
        /// Jobs per job-cycle repetition.
        #[arg(long, default_value_t = 20_000)]
        jobs: u64,
        /// Commits per observer report in the job-cycle figure.
        #[arg(long, default_value_t = 100)]
        commits_per_report: usize,
        /// Concurrent clients for the append figure.
        #[arg(long, default_value_t = 64)]
        append_clients: usize,
        /// Events per append repetition.
        #[arg(long, default_value_t = 100_000)]
        append_events: u64,
        /// Events (commits) per request in the append figure.
        #[arg(long, default_value_t = 1)]
        append_batch: usize,
        /// Events of history for restart, replay and memory.
        #[arg(long, default_value_t = 1_000_000)]
        history: u64,
        /// Events per group commit in the generated history.
        #[arg(long, default_value_t = 64)]
        history_batch: usize,
        /// Connected idle runners for the CPU figure.
        #[arg(long, default_value_t = 1000)]
        idle_runners: usize,
        /// Seconds per CPU measurement window.
        #[arg(long, default_value = "3", value_parser = parse_secs)]
        idle_window: Duration,
        /// Also measure growth: runners 1..1000, history 10^4..HISTORY.
        #[arg(long)]
        growth: bool,
    },
}

fn main() -> ExitCode {
    let args: Args = match ci::cli::parse_args("ci-tools") {
        Ok(a) => a,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, false);
    ci::cli::run("ci-tools", async {
        match run(args.cmd, args.token_file).await {
            // As ripgrep does: the reader closed the pipe, stop quietly.
            Err(e) if ci::cli::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
            other => other,
        }
    })
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
                let what = if verify {
                    tools::Replay::Verify
                } else {
                    tools::Replay::Print(tools::Format::json(json))
                };
                tokio::task::spawn_blocking(move || tools::replay_offline(&dir, what)).await?
            }
            (None, Some(addr)) => {
                tools::replay_online(&addr, token()?, tools::Format::json(json)).await
            }
            _ => bail!("give either --data-dir DIR or --dispatcher ADDR"),
        },
        Cmd::Status { dispatcher, json } => {
            tools::status(&dispatcher, token()?, tools::Format::json(json)).await
        }
        Cmd::Results {
            dispatcher,
            commit,
            branch,
            outcome,
            limit,
            json,
        } => {
            let query = commits::Query {
                commit,
                branch,
                outcome,
                limit,
            };
            commits::results(&dispatcher, token()?, query, tools::Format::json(json)).await
        }
        Cmd::Logs {
            dispatcher,
            follow,
            sha,
        } => commits::logs(&dispatcher, token()?, &sha, follow).await,
        Cmd::Cancel { dispatcher, sha } => {
            commits::act(&dispatcher, token()?, commits::Action::Cancel, &sha).await
        }
        Cmd::Retry { dispatcher, sha } => {
            commits::act(&dispatcher, token()?, commits::Action::Retry, &sha).await
        }
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
        } => {
            commits::wait(
                &dispatcher,
                token()?,
                timeout,
                &shas,
                tools::Format::json(json),
            )
            .await
        }
        Cmd::Output { dispatcher, sha } => commits::output(&dispatcher, token()?, &sha).await,
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
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                writeln!(out, "listening on {}", cluster.addr)?;
                writeln!(
                    out,
                    "{runners} runner(s) and an observer started; Ctrl-C to stop"
                )?;
            }
            ci::cli::terminated().await;
            cluster.stop().await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo => tools::demo::run().await,
        Cmd::Bench {
            json,
            only,
            reps,
            runners,
            jobs,
            commits_per_report,
            append_clients,
            append_events,
            append_batch,
            history,
            history_batch,
            idle_runners,
            idle_window,
            growth,
        } => {
            tools::bench::run(tools::bench::BenchOptions {
                runners,
                jobs,
                commits_per_report: commits_per_report.max(1),
                append_clients: append_clients.max(1),
                append_events,
                append_batch: append_batch.max(1),
                history,
                history_batch,
                idle_runners,
                idle_window,
                reps,
                only,
                growth,
                json,
            })
            .await
        }
    }
}
