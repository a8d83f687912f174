//! The observer: polls a repository and reports every new commit on each
//! watched branch, oldest first.
//!
//! It keeps no state of its own that matters: on each connection it asks
//! the dispatcher which tip it last saw per branch, and walks from there.
//! The dispatcher ignores duplicates, so re-sending after a lost ack is safe.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client::{Client, ClientError, Identity};
use crate::core::CommitId;
use crate::git::{GitError, Mirror};
use crate::proto::{ClientMsg, Role, ServerMsg};

/// Most commits reported for one branch in one poll (newest kept).
pub const MAX_NEW_COMMITS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct ObserverConfig {
    pub dispatcher: String,
    pub repo: String,
    pub work_dir: PathBuf,
    /// Watched branches; empty means every branch.
    pub branches: Vec<String>,
    pub interval: Duration,
    /// Deliver one round of new commits, then exit.
    pub once: bool,
    pub token: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{0}")]
    Refused(String),
}

pub struct Observer {
    cfg: ObserverConfig,
    mirror: Arc<Mutex<Mirror>>,
}

/// What one poll found for one branch.
struct Found {
    branch: String,
    tip: CommitId,
    commits: Vec<CommitId>,
}

impl Observer {
    pub async fn prepare(cfg: ObserverConfig) -> Result<Observer, ObserverError> {
        let mirror = Mirror::prepare(&cfg.repo, &cfg.work_dir).await?;
        Ok(Observer {
            cfg,
            mirror: Arc::new(Mutex::new(mirror)),
        })
    }

    /// Polls until `stop`; never exits because the dispatcher is away.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ObserverError> {
        let id = Identity {
            role: Role::Observer,
            name: "observer".into(),
            token: self.cfg.token.clone(),
        };
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let connected = tokio::select! {
                c = Client::connect(&self.cfg.dispatcher, &id, None, None) => c,
                _ = stop.cancelled() => return Ok(()),
            };
            match connected {
                Ok(client) => {
                    info!(dispatcher = %self.cfg.dispatcher, "observer connected");
                    backoff = Duration::from_millis(50);
                    warned = false;
                    match self.session(client, &stop).await {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(e) if e.is_fatal() => {
                            return Err(ObserverError::Refused(e.to_string()));
                        }
                        Err(e) => info!(error = %e, "lost the dispatcher; reconnecting"),
                    }
                }
                Err(e) if e.is_fatal() => return Err(ObserverError::Refused(e.to_string())),
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "dispatcher unavailable; retrying with backoff");
                        warned = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One connection's life; `Ok(true)` when `--once` is done.
    async fn session(
        &self,
        mut client: Client,
        stop: &CancellationToken,
    ) -> Result<bool, ClientError> {
        let mut known: BTreeMap<String, CommitId> = client.tips().await?;
        loop {
            match self.poll(&known).await {
                Ok(found) => {
                    for f in found {
                        let n = f.commits.len();
                        let answer = client
                            .request(&ClientMsg::Commits {
                                branch: Some(f.branch.clone()),
                                commits: f.commits,
                                tip: Some(f.tip),
                            })
                            .await?;
                        if let ServerMsg::CommitsAck {
                            accepted,
                            duplicates,
                        } = answer
                        {
                            info!(branch = %f.branch, tip = %f.tip.short(), new = accepted.len(), duplicates, reported = n, "reported commits");
                        }
                        known.insert(f.branch, f.tip);
                    }
                    if self.cfg.once {
                        return Ok(true);
                    }
                }
                Err(e) => warn!(error = %e, "poll failed; will try again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = stop.cancelled() => return Ok(true),
            }
        }
    }

    /// Fetches, then lists what is new on each watched branch.
    async fn poll(&self, known: &BTreeMap<String, CommitId>) -> Result<Vec<Found>, String> {
        let mirror = self.mirror.clone();
        let known = known.clone();
        let watched = self.cfg.branches.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<Found>, GitError> {
            let m = mirror.lock().unwrap_or_else(|p| p.into_inner());
            m.fetch()?;
            let mut found = Vec::new();
            for (branch, tip) in m.branch_tips()? {
                if !watched.is_empty() && !watched.contains(&branch) {
                    continue;
                }
                let last = known.get(&branch).copied();
                if last == Some(tip) {
                    continue;
                }
                let commits = m.new_commits(tip, last, MAX_NEW_COMMITS)?;
                debug!(%branch, tip = %tip.short(), new = commits.len(), "branch moved");
                found.push(Found {
                    branch,
                    tip,
                    commits,
                });
            }
            Ok(found)
        })
        .await
        .map_err(|e| format!("poll task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        Ok(found)
    }
}
