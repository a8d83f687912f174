//! The observer: polls a repository and reports every new commit on each
//! watched branch, oldest first.
//!
//! It keeps no state of its own that matters: on each connection it asks
//! the dispatcher which tip it last saw per branch, and walks from there.
//! The dispatcher ignores duplicates, so re-sending after a lost ack is safe.
//!
//! One branch never stops the others: a branch whose name the protocol
//! refuses (git accepts longer names than the dispatcher does), whose tip
//! cannot be read or whose history cannot be walked is skipped, with one
//! warning until its trouble changes, and the poll goes on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client::{Backoff, Client, ClientError, Identity};
use crate::core::ids::validate_branch_name;
use crate::core::{CommitId, CommitInfo};
use crate::git::{GitAuth, GitError, Mirror};
use crate::proto::{ClientMsg, Role, ServerMsg};

/// Most commits reported for one branch in one poll (newest kept).
pub const MAX_NEW_COMMITS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct ObserverConfig {
    pub dispatcher: String,
    pub repo: String,
    /// The name the dispatcher knows the repository by (`--repository
    /// NAME`); `None` for its default repository.
    pub repository: Option<String>,
    /// Credentials and trust for fetching `repo` (read once, at start).
    pub git_auth: Arc<GitAuth>,
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
    /// Branches skipped by the last poll, with why: each is warned about
    /// once, not on every poll, until its reason changes.
    skipped: Mutex<BTreeMap<String, String>>,
}

/// What one poll found for one branch.
struct Found {
    branch: String,
    tip: CommitId,
    commits: Vec<CommitId>,
    /// Each commit's author, subject and time, for tables and pages.
    infos: Vec<CommitInfo>,
}

/// What one poll found: the branches to report, and those skipped (name,
/// why).
struct Polled {
    found: Vec<Found>,
    skipped: Vec<(String, String)>,
}

/// A branch name as logs show it: names can be long (git allows more than
/// the protocol does).
fn shown(name: &str) -> String {
    const MAX_CHARS: usize = 80;
    if name.chars().count() <= MAX_CHARS {
        name.to_string()
    } else {
        let head: String = name.chars().take(MAX_CHARS).collect();
        format!("{head}... ({} bytes)", name.len())
    }
}

impl Observer {
    pub async fn prepare(cfg: ObserverConfig) -> Result<Observer, ObserverError> {
        let mirror = Mirror::prepare(&cfg.repo, &cfg.work_dir, cfg.git_auth.clone()).await?;
        Ok(Observer {
            cfg,
            mirror: Arc::new(Mutex::new(mirror)),
            skipped: Mutex::new(BTreeMap::new()),
        })
    }

    /// Polls until `stop`; never exits because the dispatcher is away.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ObserverError> {
        let id = Identity {
            role: Role::Observer,
            name: "observer".into(),
            token: self.cfg.token.clone(),
            serves: crate::proto::Serves::Default,
        };
        // Every way back to the dispatcher waits: a dispatcher that
        // accepts and then refuses at once must not be hammered.
        let mut backoff = Backoff::random();
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
                    warned = false;
                    let since = std::time::Instant::now();
                    match self.session(client, &stop).await {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(e) if e.is_fatal() => {
                            return Err(ObserverError::Refused(e.to_string()));
                        }
                        Err(e) => info!(error = %e, "lost the dispatcher; reconnecting"),
                    }
                    backoff.session_ended(since.elapsed().as_millis() as u64);
                }
                Err(e) if e.is_fatal() => return Err(ObserverError::Refused(e.to_string())),
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "dispatcher unavailable; retrying with backoff");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }

    /// One connection's life; `Ok(true)` when `--once` is done.
    async fn session(
        &self,
        mut client: Client,
        stop: &CancellationToken,
    ) -> Result<bool, ClientError> {
        let mut known: BTreeMap<String, CommitId> =
            client.tips(self.cfg.repository.as_deref()).await?;
        loop {
            match self.poll(&known).await {
                Ok(found) => {
                    for f in found {
                        let n = f.commits.len();
                        let answer = client
                            .request(&ClientMsg::Commits {
                                repository: self.cfg.repository.clone(),
                                branch: Some(f.branch.clone()),
                                commits: f.commits,
                                tip: Some(f.tip),
                                infos: f.infos,
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

    /// Makes the mirror sound and fetches, then lists what is new on each
    /// watched branch; branches that cannot be reported are skipped.
    async fn poll(&self, known: &BTreeMap<String, CommitId>) -> Result<Vec<Found>, String> {
        let mirror = self.mirror.clone();
        let known = known.clone();
        let watched = self.cfg.branches.clone();
        let polled = tokio::task::spawn_blocking(move || -> Result<Polled, GitError> {
            let mut m = mirror.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = m.sync()?.source_error {
                return Err(e);
            }
            Self::walk(&m, &known, &watched)
        })
        .await
        .map_err(|e| format!("poll task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        self.note_skipped(polled.skipped);
        Ok(polled.found)
    }

    /// What is new on each watched branch of the (fetched) mirror.
    fn walk(
        m: &Mirror,
        known: &BTreeMap<String, CommitId>,
        watched: &[String],
    ) -> Result<Polled, GitError> {
        let mut polled = Polled {
            found: Vec::new(),
            skipped: Vec::new(),
        };
        for b in m.branches()? {
            if !watched.is_empty() && !watched.contains(&b.name) {
                continue;
            }
            // The dispatcher refuses such a name, and refusals end the
            // connection: never send it.
            if let Err(e) = validate_branch_name(&b.name) {
                polled.skipped.push((b.name, e.rule.to_string()));
                continue;
            }
            let tip = match b.tip {
                Ok(tip) => tip,
                Err(e) => {
                    polled.skipped.push((b.name, e.to_string()));
                    continue;
                }
            };
            let last = known.get(&b.name).copied();
            if last == Some(tip) {
                continue;
            }
            match m.new_commits(tip, last, MAX_NEW_COMMITS) {
                Ok(commits) => {
                    debug!(branch = %b.name, tip = %tip.short(), new = commits.len(), "branch moved");
                    let infos = commits
                        .iter()
                        .map(|c| m.commit_info(*c).unwrap_or_default())
                        .collect();
                    polled.found.push(Found {
                        branch: b.name,
                        tip,
                        commits,
                        infos,
                    });
                }
                Err(e) => polled.skipped.push((b.name, e.to_string())),
            }
        }
        Ok(polled)
    }

    /// Warns about each skipped branch once (again only if its reason
    /// changes, or it recovered and fails anew); returns the branches
    /// warned about.
    fn note_skipped(&self, skipped: Vec<(String, String)>) -> Vec<String> {
        let mut known = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = BTreeMap::new();
        let mut warned = Vec::new();
        for (branch, reason) in skipped {
            if known.get(&branch) != Some(&reason) {
                warn!(branch = %shown(&branch), %reason, "skipping a branch; the others are still observed");
                warned.push(branch.clone());
            }
            now.insert(branch, reason);
        }
        for branch in known.keys() {
            if !now.contains_key(branch) {
                debug!(branch = %shown(branch), "a skipped branch is no longer skipped");
            }
        }
        *known = now;
        warned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source repository whose branches are `main` (two commits), a
    /// 300-byte name git accepts and the protocol refuses, one pointing at
    /// a blob, and `zzz-after`; and a mirror of it.
    fn awkward_source() -> (tempfile::TempDir, Mirror, String, CommitId) {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path().join("src")).unwrap();
        let sig = git2::Signature::now("T", "t@example.invalid").unwrap();
        let tree = repo
            .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
            .unwrap();
        let a = repo.commit(None, &sig, &sig, "a", &tree, &[]).unwrap();
        let b = repo
            .commit(
                None,
                &sig,
                &sig,
                "b",
                &tree,
                &[&repo.find_commit(a).unwrap()],
            )
            .unwrap();
        let long = format!(
            "q/{}/{}/{}",
            "a".repeat(100),
            "b".repeat(100),
            "c".repeat(96)
        );
        assert_eq!(long.len(), 300);
        let blob = repo.blob(b"not a commit").unwrap();
        for (name, oid) in [
            ("main", b),
            (long.as_str(), a),
            ("r-blob", blob),
            ("zzz-after", b),
        ] {
            repo.reference(&format!("refs/heads/{name}"), oid, true, "t")
                .unwrap();
        }
        let m = Mirror::open_or_create(
            dir.path().join("src").to_str().unwrap(),
            &dir.path().join("mirror.git"),
        )
        .unwrap();
        let b = CommitId::from_bytes(b.as_bytes()).unwrap();
        (dir, m, long, b)
    }

    fn observer(m: Mirror) -> Observer {
        Observer {
            cfg: ObserverConfig {
                repository: None,
                dispatcher: "127.0.0.1:1".into(),
                repo: String::new(),
                git_auth: Arc::new(GitAuth::none()),
                work_dir: PathBuf::new(),
                branches: Vec::new(),
                interval: Duration::from_secs(1),
                once: false,
                token: None,
            },
            mirror: Arc::new(Mutex::new(m)),
            skipped: Mutex::new(BTreeMap::new()),
        }
    }

    #[test]
    fn one_bad_branch_does_not_stop_the_others() {
        let (_dir, m, long, b) = awkward_source();
        let polled = Observer::walk(&m, &BTreeMap::new(), &[]).unwrap();
        let found: Vec<(&str, CommitId)> = polled
            .found
            .iter()
            .map(|f| (f.branch.as_str(), f.tip))
            .collect();
        assert_eq!(found, [("main", b), ("zzz-after", b)]);
        let skipped: Vec<&str> = polled.skipped.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(skipped, [long.as_str(), "r-blob"]);
        assert!(
            polled.skipped[0].1.contains("255 bytes"),
            "{:?}",
            polled.skipped
        );

        // Watching only the bad one: nothing found, nothing fails.
        let polled = Observer::walk(&m, &BTreeMap::new(), std::slice::from_ref(&long)).unwrap();
        assert!(polled.found.is_empty());
        assert_eq!(polled.skipped.len(), 1);
    }

    #[test]
    fn a_skipped_branch_is_warned_about_once() {
        let (_dir, m, long, _b) = awkward_source();
        let o = observer(m);
        let poll = || {
            let m = o.mirror.lock().unwrap();
            Observer::walk(&m, &BTreeMap::new(), &[]).unwrap().skipped
        };
        let first = o.note_skipped(poll());
        assert_eq!(first, [long.clone(), "r-blob".to_string()]);
        for _ in 0..5 {
            assert!(o.note_skipped(poll()).is_empty(), "warned again");
        }
        // Gone, then back: a new warning.
        assert!(o.note_skipped(Vec::new()).is_empty());
        assert_eq!(o.note_skipped(poll()).len(), 2);
        // A new reason for the same branch: a new warning.
        let changed = vec![("r-blob".to_string(), "another reason".to_string())];
        assert_eq!(o.note_skipped(changed), ["r-blob"]);
    }

    #[test]
    fn long_names_are_shortened_in_logs() {
        assert_eq!(shown("main"), "main");
        let long = "x".repeat(300);
        let s = shown(&long);
        assert!(
            s.starts_with(&"x".repeat(80)) && s.ends_with("... (300 bytes)"),
            "{s}"
        );
    }
}
