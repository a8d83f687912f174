//! `ci-tools`: history, status, results, push-style triggering, the demo,
//! completions and man pages.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::parser::ValueSource;

use ci::cli::docs::{self, Program};
use ci::cli::tools::{Args, Cmd};
use ci::tools;
use ci::tools::commits;

fn main() -> ExitCode {
    let (args, matches) = match ci::cli::parse_args_and_matches::<Args>("ci-tools") {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, false);
    args.color.set_global();
    // `replay --data-dir` reads the log itself; a --dispatcher typed next
    // to it is a mistake, one from CI_DISPATCHER or the default is not.
    let replay_dispatcher_typed = matches
        .subcommand_matches("replay")
        .and_then(|m| m.value_source("dispatcher"))
        == Some(ValueSource::CommandLine);
    ci::cli::run("ci-tools", async {
        match run(args.cmd, args.token_file, replay_dispatcher_typed).await {
            // As ripgrep does: the reader closed the pipe, stop quietly.
            Err(e) if ci::cli::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
            other => other,
        }
    })
}

async fn run(
    cmd: Cmd,
    token_file: Option<PathBuf>,
    replay_dispatcher_typed: bool,
) -> anyhow::Result<ExitCode> {
    // Read lazily: offline replay, up and demo need no token.
    let token = || ci::cli::client_token(token_file.as_deref(), ci::proto::Role::Tool);
    match cmd {
        Cmd::Replay {
            data_dir,
            dispatcher,
            json,
            verify,
            repository,
        } => match data_dir {
            Some(_) if replay_dispatcher_typed => {
                bail!("give either --data-dir DIR or --dispatcher ADDR, not both")
            }
            Some(dir) => {
                let what = if verify {
                    tools::Replay::Verify
                } else {
                    tools::Replay::Print(
                        tools::Format::json(json),
                        tools::RepoFilter::new(repository),
                    )
                };
                tokio::task::spawn_blocking(move || tools::replay_offline(&dir, what)).await?
            }
            None => {
                tools::replay_online(
                    &dispatcher.addr,
                    token()?,
                    tools::Format::json(json),
                    tools::RepoFilter::new(repository),
                )
                .await
            }
        },
        Cmd::Status { dispatcher, json } => {
            tools::status(&dispatcher.addr, token()?, tools::Format::json(json)).await
        }
        Cmd::Results {
            dispatcher,
            commit,
            branch,
            repository,
            outcome,
            limit,
            json,
        } => {
            let query = commits::Query {
                commit,
                branch,
                outcome,
                repository,
                limit,
            };
            commits::results(&dispatcher.addr, token()?, query, tools::Format::json(json)).await
        }
        Cmd::Pruned {
            dispatcher,
            limit,
            json,
        } => commits::pruned(&dispatcher.addr, token()?, limit, tools::Format::json(json)).await,
        Cmd::Logs {
            dispatcher,
            follow,
            sha,
        } => commits::logs(&dispatcher.addr, token()?, &sha, follow).await,
        Cmd::Cancel { dispatcher, sha } => {
            commits::act(&dispatcher.addr, token()?, commits::Action::Cancel, &sha).await
        }
        Cmd::Retry { dispatcher, sha } => {
            commits::act(&dispatcher.addr, token()?, commits::Action::Retry, &sha).await
        }
        Cmd::Submit {
            dispatcher,
            branch,
            repository,
            shas,
        } => tools::submit(&dispatcher.addr, token()?, repository, branch, &shas).await,
        Cmd::Wait {
            dispatcher,
            timeout,
            json,
            shas,
        } => {
            commits::wait(
                &dispatcher.addr,
                token()?,
                timeout,
                &shas,
                tools::Format::json(json),
            )
            .await
        }
        Cmd::Output { dispatcher, sha } => commits::output(&dispatcher.addr, token()?, &sha).await,
        Cmd::Up {
            repo,
            runners,
            data_dir,
            listen,
            interval,
            branches,
            insecure,
            http,
        } => {
            if insecure && token_file.is_none() {
                ci::cli::stderr_line(format_args!(
                    "ci-tools: warning: no --token-file and --insecure: every client that can reach {listen} is trusted"
                ));
            }
            let work_dir = data_dir.join("work");
            let security = tools::up::Security {
                token_file,
                insecure,
            };
            let cluster = tools::up::launch_with(
                tools::up::UpOptions {
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
                    http,
                },
                security,
            )
            .await?;
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "listening on {}", cluster.addr)?;
                if let Some(http) = cluster.http_addr {
                    writeln!(out, "http listening on {http}")?;
                }
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
        Cmd::Completions { shell, program } => {
            let programs = match program {
                Some(p) => vec![p],
                None => Program::ALL.to_vec(),
            };
            let mut out = std::io::stdout().lock();
            docs::completions(shell, &programs, &mut out)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { out: dir } => {
            let written = docs::man_pages(&dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            let mut out = std::io::stdout().lock();
            for path in written {
                writeln!(out, "{}", path.display())?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
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
            idle_heartbeat,
            idle_window,
            growth,
            page_commits,
            page_requests,
            dashboards,
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
                idle_heartbeat,
                idle_window,
                reps,
                only,
                growth,
                json,
                page_commits,
                page_requests,
                dashboards,
            })
            .await
        }
    }
}
