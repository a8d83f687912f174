//! `ci-tools up` and the demo: a dispatcher, runners and an observer in one
//! process, each the same code the separate binaries run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::dispatcher::{self, Dispatcher, DispatcherConfig};
use crate::observer::{Observer, ObserverConfig};
use crate::proto::auth::Auth;
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
}

pub struct Cluster {
    pub dispatcher: Dispatcher,
    pub addr: String,
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

pub async fn launch(opts: UpOptions) -> anyhow::Result<Cluster> {
    let mut cfg = DispatcherConfig::new(opts.listen.clone());
    cfg.heartbeat_timeout = opts.heartbeat_timeout;
    let dir = opts.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || SledLog::open(&dir))
        .await?
        .with_context(|| format!("cannot start the dispatcher on {}", opts.data_dir.display()))?;
    let d = dispatcher::start(cfg, Auth::open(), Box::new(store))
        .await
        .with_context(|| format!("cannot start the dispatcher on {}", opts.data_dir.display()))?;
    let addr = d.local_addr().to_string();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 1..=opts.runners {
        let rc = RunnerConfig {
            dispatcher: addr.clone(),
            repo: opts.repo.clone(),
            work_dir: opts.work_dir.join(format!("runner-{i}")),
            name: format!("runner-{i}"),
            heartbeat_interval: opts.heartbeat_interval,
            job_timeout: opts.job_timeout,
            token: None,
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
        dispatcher: addr.clone(),
        repo: opts.repo.clone(),
        work_dir: opts.work_dir.join("observer"),
        branches: opts.branches.clone(),
        interval: opts.poll_interval,
        once: false,
        token: None,
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
        dispatcher: d,
        addr,
        stop,
        tasks,
    })
}
