//! The history indexes on sled: finished jobs that left the state's memory.
//!
//! Trees (all keys big-endian so that sled's order is number order):
//! - `history`: job number → the encoded [`ArchivedJob`];
//! - `history-commits`: commit bytes → job number (the exact "already
//!   seen" check, and prefixes for short ids);
//! - `history-branches`: `len branch job` → (): a branch's jobs;
//! - `history-repos`: `1 len name job`, for jobs of named repositories
//!   (the default one is read from `history` with the filter);
//! - `history-outcomes`: `outcome-byte job`, for every outcome but a pass
//!   (passes are most jobs: a scan of `history` finds them at once);
//! - `history-meta`: `through`, how many moves out the indexes hold.
//!
//! A job written again (it was retried and finished again) replaces its
//! entry; its old branch, repository and outcome keys are removed in the
//! same pass (sled's `insert` returns the value it replaced).

use std::path::{Path, PathBuf};

use crate::core::state::outcome_index;
use crate::core::{ArchivedJob, CommitId, HistoryFilter, JobId, Outcome};

use super::{HistoryPage, IoFailure, StoreError};

pub(super) struct SledHistory {
    jobs: sled::Tree,
    commits: sled::Tree,
    branches: sled::Tree,
    repos: sled::Tree,
    outcomes: sled::Tree,
    meta: sled::Tree,
    dir: PathBuf,
}

const THROUGH: &[u8] = b"through";

fn read_err(dir: &Path, e: sled::Error) -> StoreError {
    super::sled_log::sled_read(dir, e)
}

fn write_err(dir: &Path, e: sled::Error) -> StoreError {
    super::sled_log::sled_write(dir, e)
}

fn branch_prefix(branch: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(branch.len() + 10);
    k.extend_from_slice(&(branch.len() as u16).to_be_bytes());
    k.extend_from_slice(branch.as_bytes());
    k
}

fn repo_prefix(repository: Option<&str>) -> Vec<u8> {
    match repository {
        None => vec![0],
        Some(r) => {
            let mut k = vec![1];
            k.extend_from_slice(&(r.len() as u16).to_be_bytes());
            k.extend_from_slice(r.as_bytes());
            k
        }
    }
}

fn with_job(mut prefix: Vec<u8>, job: JobId) -> Vec<u8> {
    prefix.extend_from_slice(&job.0.to_be_bytes());
    prefix
}

/// The job number at the end of a secondary key.
fn job_of(key: &[u8]) -> Option<JobId> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(JobId(u64::from_be_bytes(tail)))
}

impl SledHistory {
    pub(super) fn open(db: &sled::Db, dir: &Path) -> Result<SledHistory, StoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(|e| read_err(dir, e));
        Ok(SledHistory {
            jobs: tree("history")?,
            commits: tree("history-commits")?,
            branches: tree("history-branches")?,
            repos: tree("history-repos")?,
            outcomes: tree("history-outcomes")?,
            meta: tree("history-meta")?,
            dir: dir.to_path_buf(),
        })
    }

    fn decode(&self, job: JobId, bytes: &[u8]) -> Result<ArchivedJob, StoreError> {
        crate::encoding::decode(bytes).map_err(|e| StoreError::Read {
            dir: self.dir.clone(),
            detail: format!("the history entry of job {job} cannot be read: {e}"),
        })
    }

    /// The secondary keys of `job`.
    fn keys(job: &ArchivedJob) -> [Option<Vec<u8>>; 3] {
        [
            job.branch
                .as_deref()
                .map(|b| with_job(branch_prefix(b), job.id)),
            job.repository
                .as_deref()
                .map(|r| with_job(repo_prefix(Some(r)), job.id)),
            (job.finished.outcome != Outcome::Pass)
                .then(|| with_job(vec![outcome_index(job.finished.outcome) as u8], job.id)),
        ]
    }

    pub(super) fn archive(&self, jobs: &[ArchivedJob], through: u64) -> Result<(), StoreError> {
        let w = |e| write_err(&self.dir, e);
        for job in jobs {
            let value = crate::encoding::encode(job).map_err(|e| StoreError::Write {
                dir: self.dir.clone(),
                failure: IoFailure::Other,
                detail: e.to_string(),
            })?;
            let key = job.id.0.to_be_bytes();
            let old = self.jobs.insert(key, value).map_err(w)?;
            let new_keys = Self::keys(job);
            if let Some(old) = old
                && let Ok(old) = crate::encoding::decode::<ArchivedJob>(&old)
            {
                let trees = [&self.branches, &self.repos, &self.outcomes];
                for ((tree, o), n) in trees.iter().zip(Self::keys(&old)).zip(&new_keys) {
                    if let Some(o) = o
                        && Some(&o) != n.as_ref()
                    {
                        tree.remove(o).map_err(w)?;
                    }
                }
            }
            self.commits
                .insert(job.commit.as_bytes(), &key[..])
                .map_err(w)?;
            let trees = [&self.branches, &self.repos, &self.outcomes];
            for (tree, k) in trees.iter().zip(new_keys) {
                if let Some(k) = k {
                    tree.insert(k, &[][..]).map_err(w)?;
                }
            }
        }
        self.meta
            .insert(THROUGH, &through.to_be_bytes()[..])
            .map_err(w)?;
        Ok(())
    }

    pub(super) fn through(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(THROUGH)
            .map_err(|e| read_err(&self.dir, e))?
            .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)))
            .unwrap_or(0))
    }

    pub(super) fn job(&self, job: JobId) -> Result<Option<ArchivedJob>, StoreError> {
        match self
            .jobs
            .get(job.0.to_be_bytes())
            .map_err(|e| read_err(&self.dir, e))?
        {
            Some(v) => Ok(Some(self.decode(job, &v)?)),
            None => Ok(None),
        }
    }

    pub(super) fn commit(&self, commit: &CommitId) -> Result<Option<ArchivedJob>, StoreError> {
        let Some(v) = self
            .commits
            .get(commit.as_bytes())
            .map_err(|e| read_err(&self.dir, e))?
        else {
            return Ok(None);
        };
        match job_of(&v) {
            Some(job) => self.job(job),
            None => Ok(None),
        }
    }

    pub(super) fn page(
        &self,
        before: JobId,
        filter: &HistoryFilter,
        limit: usize,
        budget: usize,
    ) -> Result<HistoryPage, StoreError> {
        let r = |e| read_err(&self.dir, e);
        let mut page = HistoryPage::default();
        if limit == 0 {
            page.resume = Some(before);
            return Ok(page);
        }
        // The narrowest index the filter allows; the rest is checked on
        // each job.
        let (tree, prefix) = match (&filter.branch, &filter.repository, filter.outcome) {
            (Some(b), _, _) => (&self.branches, branch_prefix(b)),
            (None, Some(Some(r)), _) => (&self.repos, repo_prefix(Some(r))),
            (None, _, Some(o)) if o != Outcome::Pass => {
                (&self.outcomes, vec![outcome_index(o) as u8])
            }
            _ => (&self.jobs, Vec::new()),
        };
        let end = with_job(prefix.clone(), before);
        let mut read = 0;
        for item in tree.range(prefix.clone()..end).rev() {
            let (k, v) = item.map_err(r)?;
            let job = match prefix.is_empty() {
                true => job_of(&k).map(|id| (id, Some(v))),
                false => job_of(&k).map(|id| (id, None)),
            };
            let Some((id, value)) = job else { continue };
            if read == budget {
                page.resume = Some(JobId(id.0 + 1));
                return Ok(page);
            }
            read += 1;
            let archived = match value {
                Some(v) => self.decode(id, &v)?,
                None => match self.job(id)? {
                    Some(a) => a,
                    None => continue,
                },
            };
            if filter.matches(&archived) {
                page.jobs.push(archived);
                if page.jobs.len() == limit {
                    page.resume = Some(id);
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    pub(super) fn prefix(&self, prefix: &str, limit: usize) -> Result<Vec<CommitId>, StoreError> {
        let p = prefix.to_ascii_lowercase();
        let whole: Vec<u8> = (0..p.len() / 2)
            .filter_map(|i| u8::from_str_radix(p.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let mut out = Vec::new();
        for item in self.commits.scan_prefix(&whole) {
            let (k, _) = item.map_err(|e| read_err(&self.dir, e))?;
            if let Some(c) = CommitId::from_bytes(&k)
                && c.starts_with_hex(&p)
            {
                out.push(c);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
