//! `ci-tools up` and the demo: a dispatcher, runners and an observer in one
//! process, each the same code the separate binaries run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::dispatcher::{self, Dispatcher, DispatcherConfig};
use crate::git::GitAuth;
use crate::observer::{Observer, ObserverConfig};
use crate::proto::Role;
use crate::proto::auth::{Auth, TokenError, Tokens};
use crate::runner::agent::{Runner, RunnerConfig};
use crate::store::SledLog;

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub repo: String,
    pub runners: usize,
    pub data_dir: PathBuf,
    /// Where runners and the observer keep their clones.
    pub work_dir: PathBuf,
    pub listen: String,
    pub poll_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub job_timeout: Duration,
    pub branches: Vec<String>,
    /// Serve the dashboard, the API and `/metrics` here (`--http`).
    pub http: Option<String>,
}

/// Who `up`'s dispatcher trusts: as `ci-dispatcher --token-file F
/// --insecure`. The default trusts every client and listens on loopback only.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// The dispatcher's role file (`ROLE: SECRET` lines); the in-process
    /// runners and observer prove their roles' lines from the same file,
    /// so it needs a `runner` and an `observer` line.
    pub token_file: Option<PathBuf>,
    /// Without a token file, listen on a non-loopback address anyway.
    pub insecure: bool,
}

pub struct Cluster {
    pub dispatcher: Dispatcher,
    pub addr: String,
    /// Where the dashboard is served, when asked for.
    pub http_addr: Option<std::net::SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Stops runners and the observer, then the dispatcher (log flushed).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.dispatcher.shutdown().await?;
        Ok(())
    }
}

/// Starts a cluster that trusts every client, on a loopback address only.
pub async fn launch(opts: UpOptions) -> anyhow::Result<Cluster> {
    launch_with(opts, Security::default()).await
}

/// Starts a cluster whose dispatcher checks tokens as `security` says.
pub async fn launch_with(opts: UpOptions, security: Security) -> anyhow::Result<Cluster> {
    let (auth, runner_token, observer_token) = match &security.token_file {
        Some(path) => {
            let tokens = Tokens::from_file(path)?;
            let line = |role: Role| {
                tokens
                    .for_role(role)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| TokenError::NoLineForRole {
                        path: path.clone(),
                        role,
                    })
            };
            let runner = line(Role::Runner)?;
            let observer = line(Role::Observer)?;
            (Auth::with_tokens(tokens), Some(runner), Some(observer))
        }
        None => (Auth::open(), None, None),
    };
    let mut cfg = DispatcherConfig::new(opts.listen.clone());
    cfg.heartbeat_timeout = opts.heartbeat_timeout;
    cfg.insecure = security.insecure;
    cfg.http = opts.http.clone();
    let dir = opts.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || SledLog::open(&dir))
        .await?
        .with_context(|| format!("cannot start the dispatcher on {}", opts.data_dir.display()))?;
    let d = dispatcher::start(cfg, auth, Box::new(store))
        .await
        .with_context(|| format!("cannot start the dispatcher on {}", opts.data_dir.display()))?;
    let addr = d.local_addr().to_string();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 1..=opts.runners {
        let rc = RunnerConfig {
            dispatcher: addr.clone(),
            repo: Some(opts.repo.clone()),
            repos: Default::default(),
            others: crate::runner::agent::Others::Refuse,
            git_auth: Arc::new(GitAuth::none()),
            work_dir: opts.work_dir.join(format!("runner-{i}")),
            name: format!("runner-{i}"),
            heartbeat_interval: opts.heartbeat_interval,
            job_timeout: opts.job_timeout,
            token: runner_token.clone(),
        };
        let runner = Runner::prepare(rc).await.context("cannot start a runner")?;
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = runner.run(s).await {
                error!(error = %e, "runner stopped");
            }
        }));
    }
    let oc = ObserverConfig {
        repository: None,
        dispatcher: addr.clone(),
        repo: opts.repo.clone(),
        git_auth: Arc::new(GitAuth::none()),
        work_dir: opts.work_dir.join("observer"),
        branches: opts.branches.clone(),
        interval: opts.poll_interval,
        once: false,
        token: observer_token,
    };
    let observer = Observer::prepare(oc)
        .await
        .context("cannot start the observer")?;
    let s = stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = observer.run(s).await {
            error!(error = %e, "observer stopped");
        }
    }));
    Ok(Cluster {
        http_addr: d.http_addr,
        dispatcher: d,
        addr,
        stop,
        tasks,
    })
}
