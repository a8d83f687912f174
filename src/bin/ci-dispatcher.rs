//! `ci-dispatcher`: owns the queue and the event log; hands commits to runners.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use ci::cli::dispatcher::Args;
use ci::dispatcher::{self, DispatcherConfig};
use ci::proto::auth::{Auth, Tokens};
use ci::store::SledLog;

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
    config.idle_heartbeat = args.idle_heartbeat_interval;
    config.snapshot_every = args.snapshot_every;
    config.keep_in_memory = args.keep_in_memory as usize;
    config.hello_timeout = args.hello_timeout;
    config.insecure = args.insecure;
    config.max_connections = args.max_connections as usize;
    config.http = args.http.clone();
    config.notify = args.notify_config()?;
    for r in &args.repositories {
        if config
            .repositories
            .insert(r.name.clone(), r.url.clone())
            .is_some()
        {
            anyhow::bail!("--repository {} is given twice", r.name);
        }
    }
    if let Some(path) = &args.webhook_secret_file {
        config.webhook_secret = Some(dispatcher::WebhookSecret::from_file(path)?);
    }
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
        if let Some(http) = d.http_addr {
            writeln!(out, "http listening on {http}")?;
        }
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
