//! `ci-observer`: watches a repository's branches and reports new commits.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use ci::cli::observer::Args;
use ci::observer::{Observer, ObserverConfig};

fn main() -> ExitCode {
    let args: Args = match ci::cli::parse_args("ci-observer") {
        Ok(a) => a,
        Err(code) => return code,
    };
    ci::util::init_tracing(args.verbose, true);
    ci::cli::run("ci-observer", run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    for b in &args.branches {
        ci::core::ids::validate_branch_name(b)?;
    }
    let cfg = ObserverConfig {
        dispatcher: args.dispatcher.addr,
        git_auth: std::sync::Arc::new(args.git.load()?),
        repo: args.repo,
        repository: args.repository,
        work_dir: args.work_dir,
        branches: args.branches,
        interval: args.interval,
        once: args.once,
        token: ci::cli::client_token(args.token_file.as_deref(), ci::proto::Role::Observer)?,
    };
    let observer = Observer::prepare(cfg).await?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        ci::cli::terminated().await;
        s.cancel();
    });
    observer.run(stop).await?;
    Ok(ExitCode::SUCCESS)
}
