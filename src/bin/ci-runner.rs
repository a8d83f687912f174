//! `ci-runner`: runs the tests of the commits the dispatcher assigns to it.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use ci::cli::runner::Args;
use ci::runner::agent::{Others, Runner, RunnerConfig, default_name};

fn main() -> ExitCode {
    let args: Args = match ci::cli::parse_args("ci-runner") {
        Ok(a) => a,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, true);
    // Tested code runs as this user: make this process non-dumpable so it
    // cannot read our environment or memory through /proc/PID.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers and has no
    // memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    ci::cli::run("ci-runner", run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = match args.name {
        Some(n) => n,
        None => default_name(&args.work_dir),
    };
    ci::core::ids::validate_runner_name(&name)?;
    let mut repo = None;
    let mut repos = std::collections::BTreeMap::new();
    for (name, url) in args.repos {
        let twice = match name {
            None => repo.replace(url).is_some(),
            Some(n) => repos.insert(n, url).is_some(),
        };
        if twice {
            anyhow::bail!("a repository is given twice with --repo");
        }
    }
    if repos.len() > ci::proto::MAX_SERVED {
        anyhow::bail!(
            "a runner serves at most {} named repositories",
            ci::proto::MAX_SERVED
        );
    }
    let cfg = RunnerConfig {
        dispatcher: args.dispatcher.addr,
        git_auth: std::sync::Arc::new(args.git.load()?),
        repo,
        repos,
        others: if args.any_repository {
            Others::CloneFromDispatcher
        } else {
            Others::Refuse
        },
        work_dir: args.work_dir,
        name,
        heartbeat_interval: args.heartbeat_interval,
        job_timeout: args.job_timeout,
        token: ci::cli::client_token(args.token_file.as_deref(), ci::proto::Role::Runner)?,
    };
    let runner = Runner::prepare(cfg).await?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        ci::cli::terminated().await;
        s.cancel();
        tracing::info!("signal received; handing back any running job and stopping");
    });
    runner.run(stop).await?;
    Ok(ExitCode::SUCCESS)
}
