//! The runner's connection loop: says hello (with the job it still holds),
//! heartbeats, runs assigned jobs, reports results until acknowledged, and
//! reconnects with backoff whenever the dispatcher goes away, without ever
//! stopping a running job for that.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::job;
use crate::client::{Client, ClientError, Identity};
use crate::core::{CommitId, JobRef, JobReport};
use crate::git::{GitError, Mirror};
use crate::proto::{ClientMsg, Role, ServerMsg};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub dispatcher: String,
    pub repo: String,
    pub work_dir: PathBuf,
    pub name: String,
    pub heartbeat_interval: Duration,
    pub job_timeout: Duration,
    pub token: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{0}")]
    Refused(String),
}

/// One attempt's finished report, kept until the dispatcher acknowledges it.
struct Finished {
    job: JobRef,
    report: JobReport,
    output: Vec<u8>,
}

struct Running {
    job: JobRef,
    cancel: CancellationToken,
}

/// A default runner name that survives restarts: host name plus a short
/// hash of the work directory (two runners on one host need two dirs).
pub fn default_name(work_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "runner".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let path = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    let mut h: u32 = 0x811c9dc5;
    for b in path.to_string_lossy().bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    format!(
        "{}-{:06x}",
        if host.is_empty() { "runner" } else { &host },
        h & 0xff_ffff
    )
}

/// The marker file records the job in progress, so a runner that died
/// mid-job tells the dispatcher on its next start (the job is then re-queued
/// at once and counts as lost: a commit that kills runners cannot loop).
struct Marker(PathBuf);

impl Marker {
    fn read(&self) -> Option<JobRef> {
        let text = std::fs::read_to_string(&self.0).ok()?;
        let mut it = text.split_whitespace();
        let job = it.next()?.parse().ok()?;
        let attempt = it.next()?.parse().ok()?;
        Some(JobRef {
            job: crate::core::JobId(job),
            attempt,
        })
    }
    fn write(&self, job: JobRef) {
        if let Err(e) = std::fs::write(&self.0, format!("{} {}\n", job.job.0, job.attempt)) {
            warn!(error = %e, "cannot write the job marker");
        }
    }
    fn clear(&self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub struct Runner {
    cfg: RunnerConfig,
    mirror: Arc<Mutex<Mirror>>,
    marker: Marker,
    crashed: Option<JobRef>,
    running: Option<Running>,
    pending: Option<Finished>,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
}

impl Runner {
    /// Prepares the work directory and the repository clone; errors here are
    /// the operator's to fix (bad path, unreachable repository).
    pub async fn prepare(cfg: RunnerConfig) -> Result<Runner, RunnerError> {
        let mirror = Mirror::prepare(&cfg.repo, &cfg.work_dir).await?;
        let marker = Marker(cfg.work_dir.join("current-job"));
        let crashed = marker.read();
        if let Some(j) = crashed {
            warn!(job = %j, "this runner died while running a job; reporting it lost");
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Runner {
            cfg,
            mirror: Arc::new(Mutex::new(mirror)),
            marker,
            crashed,
            running: None,
            pending: None,
            done_tx,
            done_rx,
        })
    }

    /// Serves until `stop` (SIGTERM): a running job is then killed and handed
    /// back to the dispatcher, which queues it again at the front.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), RunnerError> {
        let id = Identity {
            role: Role::Runner,
            name: self.cfg.name.clone(),
            token: self.cfg.token.clone(),
        };
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        loop {
            if stop.is_cancelled() {
                self.stop_job();
                return Ok(());
            }
            let holding = self.holding();
            let connect = Client::connect(&self.cfg.dispatcher, &id, holding, self.crashed);
            let client = tokio::select! {
                c = connect => c,
                _ = stop.cancelled() => continue,
            };
            match client {
                Ok(client) => {
                    if warned {
                        info!(dispatcher = %self.cfg.dispatcher, "connected again");
                    } else {
                        info!(dispatcher = %self.cfg.dispatcher, "connected");
                    }
                    backoff = Duration::from_millis(50);
                    warned = false;
                    self.crashed = None;
                    match self.session(client, &stop).await {
                        Ok(()) => {}
                        Err(e) if e.is_fatal() => return Err(RunnerError::Refused(e.to_string())),
                        Err(e) => {
                            info!(error = %e, "disconnected from the dispatcher; reconnecting")
                        }
                    }
                }
                Err(e) if e.is_fatal() => return Err(RunnerError::Refused(e.to_string())),
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "dispatcher unavailable; retrying with backoff");
                        warned = true;
                    } else {
                        debug!(error = %e, "still cannot reach the dispatcher");
                    }
                    // A job that finishes meanwhile is kept until delivered.
                    let deadline = tokio::time::sleep(backoff);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            _ = stop.cancelled() => break,
                            Some(fin) = self.done_rx.recv() => self.finished(fin),
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn holding(&self) -> Option<JobRef> {
        self.running
            .as_ref()
            .map(|r| r.job)
            .or(self.pending.as_ref().map(|p| p.job))
    }

    fn stop_job(&mut self) {
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
        }
    }

    fn finished(&mut self, fin: Finished) {
        if self.running.as_ref().map(|r| r.job) == Some(fin.job) {
            self.running = None;
            info!(job = %fin.job, outcome = fin.report.outcome.as_str(), ms = fin.report.duration_ms, "job finished");
            self.pending = Some(fin);
        }
    }

    async fn session(
        &mut self,
        mut client: Client,
        stop: &CancellationToken,
    ) -> Result<(), ClientError> {
        if let Some(p) = &self.pending {
            client
                .writer
                .send(&ClientMsg::Result {
                    job: p.job,
                    report: p.report.clone(),
                    output: p.output.clone(),
                })
                .await?;
        }
        let mut beat = tokio::time::interval(self.cfg.heartbeat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    client.writer.send(&ClientMsg::Heartbeat { holding: self.holding() }).await?;
                }
                msg = client.reader.recv() => {
                    let Some(msg) = msg? else { return Err(ClientError::Proto(crate::proto::conn::ProtoError::Closed)) };
                    self.on_message(&mut client, msg).await?;
                }
                Some(fin) = self.done_rx.recv() => {
                    self.finished(fin);
                    if let Some(p) = &self.pending {
                        client.writer.send(&ClientMsg::Result {
                            job: p.job,
                            report: p.report.clone(),
                            output: p.output.clone(),
                        }).await?;
                    }
                }
                _ = stop.cancelled() => {
                    if let Some(r) = self.running.take() {
                        info!(job = %r.job, "stopping: killing the running job and handing it back");
                        r.cancel.cancel();
                        client.writer.send(&ClientMsg::HandBack { job: r.job }).await?;
                        self.marker.clear();
                    }
                    // A finished result not yet acknowledged: give it a moment.
                    if self.pending.is_some() {
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Ok(Some(m)) = client.reader.recv().await {
                                if let ServerMsg::ResultAck { .. } = m {
                                    self.marker.clear();
                                    break;
                                }
                            }
                        }).await;
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn on_message(&mut self, client: &mut Client, msg: ServerMsg) -> Result<(), ClientError> {
        match msg {
            ServerMsg::Assign {
                job,
                commit,
                branch,
            } => {
                if self.holding() == Some(job) {
                    debug!(%job, "assignment already in hand");
                    return Ok(());
                }
                if let Some(h) = self.holding() {
                    warn!(held = %h, offered = %job, "assigned a job while holding another; ignoring");
                    return Ok(());
                }
                self.start_job(job, commit, branch);
            }
            ServerMsg::Abandon { job, reason } => {
                let mut dropped = false;
                if self.running.as_ref().map(|r| r.job) == Some(job) {
                    warn!(%job, %reason, "told to abandon the running job; killing it");
                    self.stop_job();
                    dropped = true;
                }
                if self.pending.as_ref().map(|p| p.job) == Some(job) {
                    warn!(%job, %reason, "result refused as stale; dropping it");
                    self.pending = None;
                    dropped = true;
                }
                if dropped {
                    self.marker.clear();
                    client.writer.send(&ClientMsg::Ready).await?;
                }
            }
            ServerMsg::ResultAck {
                job,
                accepted,
                reason,
            } => {
                if self.pending.as_ref().map(|p| p.job) == Some(job) {
                    self.pending = None;
                    self.marker.clear();
                    if !accepted {
                        warn!(%job, %reason, "result rejected as stale");
                        client.writer.send(&ClientMsg::Ready).await?;
                    }
                }
            }
            ServerMsg::Error { message, fatal } => {
                warn!(%message, "dispatcher error");
                if fatal {
                    return Err(ClientError::Refused(message));
                }
            }
            other => debug!(?other, "unexpected message ignored"),
        }
        Ok(())
    }

    fn start_job(&mut self, job: JobRef, commit: CommitId, branch: Option<String>) {
        self.marker.write(job);
        let cancel = CancellationToken::new();
        self.running = Some(Running {
            job,
            cancel: cancel.clone(),
        });
        let span =
            info_span!("job", job = job.job.0, attempt = job.attempt, commit = %commit.short());
        let mirror = self.mirror.clone();
        let work_dir = self.cfg.work_dir.clone();
        let job_timeout = self.cfg.job_timeout;
        let done = self.done_tx.clone();
        info!(%job, %commit, branch = branch.as_deref().unwrap_or("-"), "job assigned");
        tokio::spawn(
            async move {
                let started = Instant::now();
                let (report, output) =
                    job::execute(mirror, &work_dir, commit, job_timeout, cancel.clone()).await;
                let mut report = report;
                if report.duration_ms == 0 {
                    // Never ran: the time went to fetching and checking out.
                    report.duration_ms = started.elapsed().as_millis() as u64;
                }
                if !cancel.is_cancelled() {
                    let _ = done.send(Finished {
                        job,
                        report,
                        output,
                    });
                }
            }
            .instrument(span),
        );
    }
}
