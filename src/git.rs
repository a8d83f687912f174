//! Every use of git2: mirrors, fetching, checkouts and history walks.
//!
//! Runner and observer both keep a private *bare* mirror of the watched
//! repository under their work directory and never touch the user's clone.
//! Keeping all of git2 here means one place decides which sources are
//! allowed (local paths, `file://`, `git://`: git2 is built without https
//! and ssh), how force-pushes are handled and how a checkout is made clean.
//!
//! **Architecture invariant:** nothing in the product shells out to `git`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{AutotagOption, FetchOptions, FetchPrune, Oid, Repository, Sort};

use crate::core::CommitId;

/// Where fetched branches land in the mirror. A private namespace so that
/// the mirror's own `HEAD`/`refs/heads` never get in the way of a forced update.
const REMOTE_PREFIX: &str = "refs/remotes/origin/";
/// `+` so force-pushed branches are followed instead of refused.
const FETCH_REFSPEC: &str = "+refs/heads/*:refs/remotes/origin/*";

/// Why a git operation failed.
///
/// `Display` and `Error` are written by hand rather than with `thiserror`
/// because `UnknownCommit` must carry a field named `source` (the repository
/// it was looked for in), and `thiserror` would take that field for the
/// error's cause.
#[derive(Debug)]
#[non_exhaustive]
pub enum GitError {
    /// The source string is neither an existing path nor an allowed URL.
    BadSource { source: String, rule: &'static str },
    /// The source is a local path that does not exist.
    SourceMissing { source: String },
    /// Fetching from the source failed (not a repository, unreachable...).
    CannotRead { source: String, err: git2::Error },
    /// The mirror under the work directory could not be opened or created.
    Mirror { dir: PathBuf, err: git2::Error },
    /// The commit is in neither the mirror nor the source: the outcome of
    /// the job is `error`, not a retry.
    UnknownCommit { commit: CommitId, source: String },
    /// Any other git2 failure, with what was being done.
    Git { what: String, err: git2::Error },
    /// Preparing the checkout directory failed.
    Io {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

impl fmt::Display for GitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitError::BadSource { source, rule } => {
                write!(f, "cannot use {source:?} as a repository: {rule}")
            }
            GitError::SourceMissing { source } => {
                write!(
                    f,
                    "cannot read repository {source}: no such file or directory; give --repo an existing repository path or a file:// or git:// URL"
                )
            }
            GitError::CannotRead { source, err } => {
                write!(
                    f,
                    "cannot read repository {source}: {}; check that --repo names a git repository",
                    err.message()
                )
            }
            GitError::Mirror { dir, err } => write!(
                f,
                "cannot open or create the mirror at {}: {}",
                dir.display(),
                err.message()
            ),
            GitError::UnknownCommit { commit, source } => {
                write!(
                    f,
                    "commit {commit} was not found in {source} after fetching"
                )
            }
            GitError::Git { what, err } => write!(f, "{what}: {}", err.message()),
            GitError::Io { what, path, err } => {
                write!(f, "cannot {what} {}: {err}", path.display())
            }
        }
    }
}

impl std::error::Error for GitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GitError::CannotRead { err, .. }
            | GitError::Mirror { err, .. }
            | GitError::Git { err, .. } => Some(err),
            GitError::Io { err, .. } => Some(err),
            GitError::BadSource { .. }
            | GitError::SourceMissing { .. }
            | GitError::UnknownCommit { .. } => None,
        }
    }
}

/// The rule quoted when a source is refused; git2 has no https or ssh here.
pub const SOURCE_RULE: &str =
    "a repository is a local path that exists, or a file:// or git:// URL";

/// A bare mirror of one source repository, kept under a work directory.
///
/// Holds an open `git2::Repository`, so it is `Send` but not `Sync`: callers
/// in async code use it from `spawn_blocking` or behind a mutex.
pub struct Mirror {
    repo: Repository,
    /// As the user gave it, for messages.
    source: String,
    /// What git2 is handed: absolute for local paths so the working
    /// directory of the process never matters.
    url: String,
    dir: PathBuf,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("source", &self.source)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Checks the source before git2 sees it, so a refused scheme gets a message
/// naming the rule instead of git2's "unsupported URL protocol".
fn validate_source(source: &str) -> Result<String, GitError> {
    if let Some((scheme, _)) = source.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "file" | "git" => Ok(source.to_string()),
            _ => Err(GitError::BadSource {
                source: source.to_string(),
                rule: SOURCE_RULE,
            }),
        };
    }
    if source.is_empty() {
        return Err(GitError::BadSource {
            source: String::new(),
            rule: SOURCE_RULE,
        });
    }
    let path = Path::new(source);
    match fs::canonicalize(path) {
        Ok(abs) => abs.to_str().map(str::to_string).ok_or(GitError::BadSource {
            source: source.to_string(),
            rule: "the repository path must be valid UTF-8",
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(GitError::SourceMissing {
            source: source.to_string(),
        }),
        Err(err) => Err(GitError::Io {
            what: "resolve repository path",
            path: path.to_path_buf(),
            err,
        }),
    }
}

fn to_oid(c: CommitId) -> Option<Oid> {
    // SHA-256 ids do not convert without git2's unstable feature: such a
    // commit cannot be in the mirror, which callers already handle.
    Oid::from_bytes(c.as_bytes()).ok()
}

fn to_commit_id(oid: Oid) -> Result<CommitId, GitError> {
    CommitId::from_bytes(oid.as_bytes()).ok_or_else(|| GitError::Git {
        what: format!("object id {oid} has an unexpected length"),
        err: git2::Error::from_str("unexpected object id length"),
    })
}

impl Mirror {
    /// Creates `work_dir` if needed and opens (or clones) the mirror kept in
    /// `work_dir/mirror.git`, off the async threads: what runners and the
    /// observer do at start.
    pub async fn prepare(source: &str, work_dir: &Path) -> Result<Mirror, GitError> {
        std::fs::create_dir_all(work_dir).map_err(|err| GitError::Io {
            what: "create the work directory",
            path: work_dir.to_path_buf(),
            err,
        })?;
        let source = source.to_string();
        let dir = work_dir.join("mirror.git");
        let path = dir.clone();
        tokio::task::spawn_blocking(move || Mirror::open_or_create(&source, &dir))
            .await
            .map_err(|e| GitError::Io {
                what: "open the mirror in",
                path,
                err: io::Error::other(e.to_string()),
            })?
    }

    /// Opens the mirror at `dir` (creating a bare repository there if
    /// absent) and fetches once, so a bad source is reported at start-up
    /// rather than at the first job.
    pub fn open_or_create(source: &str, dir: &Path) -> Result<Mirror, GitError> {
        let url = validate_source(source)?;
        let repo = if dir.exists() {
            Repository::open_bare(dir)
        } else {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).map_err(|err| GitError::Io {
                    what: "create directory",
                    path: parent.to_path_buf(),
                    err,
                })?;
            }
            Repository::init_bare(dir)
        }
        .map_err(|err| GitError::Mirror {
            dir: dir.to_path_buf(),
            err,
        })?;
        let mirror = Mirror {
            repo,
            source: source.to_string(),
            url,
            dir: dir.to_path_buf(),
        };
        mirror.fetch()?;
        Ok(mirror)
    }

    /// The source as given to [`Mirror::open_or_create`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The bare repository's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Brings every branch of the source into `refs/remotes/origin/*`,
    /// following force-pushes and dropping deleted branches, so
    /// [`Mirror::branch_tips`] always shows the source as it is now.
    /// Objects of dropped or rewritten branches stay (no gc), so a commit
    /// once fetched can still be checked out.
    pub fn fetch(&self) -> Result<(), GitError> {
        let cannot_read = |err| GitError::CannotRead {
            source: self.source.clone(),
            err,
        };
        // Anonymous: nothing about the source is written into the mirror's
        // config, so a changed --repo takes effect without any migration.
        let mut remote = self.repo.remote_anonymous(&self.url).map_err(cannot_read)?;
        let mut opts = FetchOptions::new();
        opts.prune(FetchPrune::On)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        remote
            .fetch(&[FETCH_REFSPEC], Some(&mut opts), None)
            .map_err(cannot_read)?;
        Ok(())
    }

    /// Every branch of the source as of the last fetch, sorted by name.
    pub fn branch_tips(&self) -> Result<Vec<(String, CommitId)>, GitError> {
        let git = |what: &str| {
            let what = what.to_string();
            move |err| GitError::Git { what, err }
        };
        let refs = self
            .repo
            .references_glob(&format!("{REMOTE_PREFIX}*"))
            .map_err(git("listing fetched branches"))?;
        let mut tips = Vec::new();
        for r in refs {
            let r = r.map_err(git("listing fetched branches"))?;
            let Ok(name) = r.name() else {
                tracing::warn!("skipping a branch whose name is not UTF-8");
                continue;
            };
            let Some(short) = name.strip_prefix(REMOTE_PREFIX) else {
                continue;
            };
            if short == "HEAD" {
                continue;
            }
            let short = short.to_string();
            let commit = r
                .peel_to_commit()
                .map_err(git(&format!("reading the tip of branch {short}")))?;
            tips.push((short, to_commit_id(commit.id())?));
        }
        tips.sort();
        Ok(tips)
    }

    /// What the observer submits when a branch moved from `known` to `tip`:
    /// commits reachable from `tip` and not from `known`, oldest first
    /// (parents before children, merges included), at most `cap` of them,
    /// the newest kept when there are more.
    ///
    /// With no `known`, or a `known` the mirror does not have (history
    /// rewritten and collected, or a foreign id), only `[tip]` is returned:
    /// reporting a whole unrelated history would flood the queue. A `known`
    /// that is present but no longer an ancestor (force-push) yields the
    /// commits of the new history since the two diverged.
    pub fn new_commits(
        &self,
        tip: CommitId,
        known: Option<CommitId>,
        cap: usize,
    ) -> Result<Vec<CommitId>, GitError> {
        let tip_oid = match to_oid(tip) {
            Some(oid) if self.repo.find_commit(oid).is_ok() => oid,
            _ => {
                return Err(GitError::UnknownCommit {
                    commit: tip,
                    source: self.source.clone(),
                });
            }
        };
        if cap == 0 {
            return Ok(Vec::new());
        }
        let known_oid = known
            .and_then(to_oid)
            .filter(|oid| self.repo.find_commit(*oid).is_ok());
        let Some(known_oid) = known_oid else {
            return Ok(vec![tip]);
        };
        let walk_err = |err| GitError::Git {
            what: format!("walking history from {tip}"),
            err,
        };
        let mut walk = self.repo.revwalk().map_err(walk_err)?;
        // Newest first, so the walk can stop after `cap` commits; reversed below.
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME)
            .map_err(walk_err)?;
        walk.push(tip_oid).map_err(walk_err)?;
        walk.hide(known_oid).map_err(walk_err)?;
        let mut out = Vec::new();
        for oid in walk.take(cap) {
            out.push(to_commit_id(oid.map_err(walk_err)?)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Whether the mirror holds this commit (as a commit, not another object).
    pub fn has_commit(&self, c: CommitId) -> bool {
        to_oid(c).is_some_and(|oid| self.repo.find_commit(oid).is_ok())
    }

    /// Writes exactly `commit`'s tree into `into`, which is first removed
    /// entirely so that nothing from an earlier job (build output, a file
    /// deleted since) can change the result. Fetches once if the commit is
    /// not yet in the mirror (it may have been pushed since the last fetch).
    pub fn checkout(&self, commit: CommitId, into: &Path) -> Result<(), GitError> {
        if !self.has_commit(commit) {
            self.fetch()?;
        }
        let unknown = || GitError::UnknownCommit {
            commit,
            source: self.source.clone(),
        };
        let oid = to_oid(commit).ok_or_else(unknown)?;
        let object = self
            .repo
            .find_commit(oid)
            .map_err(|_| unknown())?
            .into_object();

        remove_all(into)?;
        fs::create_dir_all(into).map_err(|err| GitError::Io {
            what: "create checkout directory",
            path: into.to_path_buf(),
            err,
        })?;

        let mut cb = CheckoutBuilder::new();
        // The bare mirror has no index; with an empty baseline and `force`
        // every file of the tree is written, with its executable bit.
        cb.target_dir(into).force().update_index(false);
        self.repo
            .checkout_tree(&object, Some(&mut cb))
            .map_err(|err| GitError::Git {
                what: format!("checking out {commit} into {}", into.display()),
                err,
            })
    }
}

/// Removes `path` whatever it is. Tests may leave read-only directories
/// behind; those are made writable and removal is tried once more.
fn remove_all(path: &Path) -> Result<(), GitError> {
    let io_err = |err| GitError::Io {
        what: "remove old checkout",
        path: path.to_path_buf(),
        err,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_err(err)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(io_err);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    make_dirs_writable(path);
    fs::remove_dir_all(path).map_err(io_err)
}

/// Best effort: errors here surface as the second removal's error.
fn make_dirs_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Signature, Time};
    use std::os::unix::fs::PermissionsExt;

    /// A non-bare source repository whose commits are made with git2.
    struct Source {
        dir: tempfile::TempDir,
        repo: Repository,
        clock: i64,
    }

    impl Source {
        fn new() -> Source {
            let dir = tempfile::tempdir().unwrap();
            let repo = Repository::init(dir.path()).unwrap();
            Source {
                dir,
                repo,
                clock: 1_700_000_000,
            }
        }

        fn path(&self) -> &str {
            self.dir.path().to_str().unwrap()
        }

        /// Commits exactly `files` (path, content, executable) with the given
        /// parents and points `refs/heads/<branch>` at it, forcibly.
        fn commit(&mut self, branch: &str, parents: &[Oid], files: &[(&str, &str, bool)]) -> Oid {
            let root = self.dir.path();
            for e in fs::read_dir(root).unwrap() {
                let e = e.unwrap();
                if e.file_name() == ".git" {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    fs::remove_dir_all(e.path()).unwrap();
                } else {
                    fs::remove_file(e.path()).unwrap();
                }
            }
            for (path, content, exec) in files {
                let p = root.join(path);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, content).unwrap();
                let mode = if *exec { 0o755 } else { 0o644 };
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            }
            let mut index = self.repo.index().unwrap();
            index.clear().unwrap();
            index
                .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
                .unwrap();
            index.write().unwrap();
            let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
            self.clock += 60;
            let sig = Signature::new("T", "t@example.com", &Time::new(self.clock, 0)).unwrap();
            let parents: Vec<_> = parents
                .iter()
                .map(|p| self.repo.find_commit(*p).unwrap())
                .collect();
            let parent_refs: Vec<_> = parents.iter().collect();
            let oid = self
                .repo
                .commit(None, &sig, &sig, "msg", &tree, &parent_refs)
                .unwrap();
            self.repo
                .reference(&format!("refs/heads/{branch}"), oid, true, "test")
                .unwrap();
            oid
        }
    }

    fn cid(oid: Oid) -> CommitId {
        CommitId::from_bytes(oid.as_bytes()).unwrap()
    }

    fn mirror_of(src: &Source) -> (tempfile::TempDir, Mirror) {
        let work = tempfile::tempdir().unwrap();
        let m = Mirror::open_or_create(src.path(), &work.path().join("mirror.git")).unwrap();
        (work, m)
    }

    #[test]
    fn fetch_brings_new_commits_and_branches() {
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "1", false)]);
        let (_work, m) = mirror_of(&src);
        assert_eq!(m.branch_tips().unwrap(), vec![("main".into(), cid(a))]);

        let b = src.commit("main", &[a], &[("f", "2", false)]);
        let c = src.commit("feature/x", &[a], &[("g", "3", false)]);
        assert!(!m.has_commit(cid(b)));
        m.fetch().unwrap();
        assert!(m.has_commit(cid(b)));
        assert_eq!(
            m.branch_tips().unwrap(),
            vec![("feature/x".into(), cid(c)), ("main".into(), cid(b))]
        );
        // A new branch seen for the first time: the tip only.
        assert_eq!(m.new_commits(cid(c), None, 100).unwrap(), vec![cid(c)]);

        // Deleted branches disappear from the tips.
        src.repo
            .find_reference("refs/heads/feature/x")
            .unwrap()
            .delete()
            .unwrap();
        m.fetch().unwrap();
        assert_eq!(m.branch_tips().unwrap(), vec![("main".into(), cid(b))]);
        // ...but their commits can still be checked out.
        assert!(m.has_commit(cid(c)));
    }

    #[test]
    fn new_commits_are_oldest_first_with_merges_and_capped() {
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let (_work, m) = mirror_of(&src);
        let b = src.commit("main", &[a], &[("f", "b", false)]);
        let s = src.commit("side", &[a], &[("f", "s", false)]);
        let c = src.commit("main", &[b], &[("f", "c", false)]);
        let mg = src.commit("main", &[c, s], &[("f", "m", false)]);
        let d = src.commit("main", &[mg], &[("f", "d", false)]);
        m.fetch().unwrap();

        let got = m.new_commits(cid(d), Some(cid(a)), 100).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(&got[3..], &[cid(mg), cid(d)]);
        let pos = |x: Oid| got.iter().position(|g| *g == cid(x)).unwrap();
        assert!(pos(b) < pos(c));
        assert!(pos(s) < pos(mg) && pos(c) < pos(mg));

        // Capped: the newest are kept, still oldest first.
        assert_eq!(
            m.new_commits(cid(d), Some(cid(a)), 2).unwrap(),
            vec![cid(mg), cid(d)]
        );
        assert_eq!(m.new_commits(cid(d), Some(cid(d)), 10).unwrap(), vec![]);
        assert_eq!(m.new_commits(cid(d), Some(cid(a)), 0).unwrap(), vec![]);
    }

    #[test]
    fn force_push_does_not_error() {
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let b = src.commit("main", &[a], &[("f", "b", false)]);
        let (_work, m) = mirror_of(&src);
        // Rewrite: main now a -> b2 -> c2; b is no longer an ancestor.
        let b2 = src.commit("main", &[a], &[("f", "b2", false)]);
        let c2 = src.commit("main", &[b2], &[("f", "c2", false)]);
        m.fetch().unwrap();
        assert_eq!(m.branch_tips().unwrap(), vec![("main".into(), cid(c2))]);
        assert_eq!(
            m.new_commits(cid(c2), Some(cid(b)), 10).unwrap(),
            vec![cid(b2), cid(c2)]
        );
        // A `known` the mirror never had: the tip only.
        let foreign = CommitId::parse(&"ab".repeat(20)).unwrap();
        assert_eq!(
            m.new_commits(cid(c2), Some(foreign), 10).unwrap(),
            vec![cid(c2)]
        );
    }

    #[test]
    fn checkout_is_exact_and_clean() {
        let mut src = Source::new();
        let a = src.commit(
            "main",
            &[],
            &[("old.txt", "old", false), ("run.sh", "#!/bin/sh\n", true)],
        );
        let b = src.commit("main", &[a], &[("sub/new.txt", "new", false)]);
        let (work, m) = mirror_of(&src);
        let into = work.path().join("checkout");

        m.checkout(cid(a), &into).unwrap();
        assert_eq!(fs::read_to_string(into.join("old.txt")).unwrap(), "old");
        let mode = fs::metadata(into.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable bit kept");
        fs::write(into.join("junk"), "left by a job").unwrap();
        // A read-only directory left behind by a job must not block the next one.
        fs::create_dir(into.join("ro")).unwrap();
        fs::write(into.join("ro/f"), "x").unwrap();
        fs::set_permissions(into.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();

        m.checkout(cid(b), &into).unwrap();
        assert!(!into.join("old.txt").exists());
        assert!(!into.join("junk").exists());
        assert!(!into.join("ro").exists());
        assert_eq!(fs::read_to_string(into.join("sub/new.txt")).unwrap(), "new");
        assert!(!m.dir().join("index").exists(), "mirror stays index-free");
    }

    #[test]
    fn checkout_fetches_a_commit_pushed_since() {
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let (work, m) = mirror_of(&src);
        let b = src.commit("main", &[a], &[("f", "b", false)]);
        m.checkout(cid(b), &work.path().join("co")).unwrap();
        assert_eq!(fs::read_to_string(work.path().join("co/f")).unwrap(), "b");
    }

    #[test]
    fn unknown_commit_is_a_distinct_error() {
        let mut src = Source::new();
        src.commit("main", &[], &[("f", "a", false)]);
        let (work, m) = mirror_of(&src);
        let missing = CommitId::parse(&"0123456789".repeat(4)).unwrap();
        let err = m.checkout(missing, &work.path().join("co")).unwrap_err();
        assert!(matches!(err, GitError::UnknownCommit { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "commit {missing} was not found in {} after fetching",
                src.path()
            )
        );
        assert!(!m.has_commit(missing));
    }

    #[test]
    fn bad_sources_are_named() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("mirror.git");

        let err = Mirror::open_or_create("/no/such/repo", &dir).unwrap_err();
        assert!(matches!(err, GitError::SourceMissing { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("cannot read repository /no/such/repo:"),
            "{err}"
        );

        let not_repo = tempfile::tempdir().unwrap();
        let p = not_repo.path().to_str().unwrap();
        let err = Mirror::open_or_create(p, &dir).unwrap_err();
        assert!(matches!(err, GitError::CannotRead { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read repository {p}:")),
            "{err}"
        );

        let err = Mirror::open_or_create("file:///no/such/repo", &dir).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read repository file:///no/such/repo:"),
            "{err}"
        );

        let err = Mirror::open_or_create("https://example.com/r.git", &dir).unwrap_err();
        assert!(matches!(err, GitError::BadSource { .. }), "{err:?}");
        assert!(err.to_string().contains(SOURCE_RULE), "{err}");
    }

    #[test]
    fn file_urls_and_reopening_work() {
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("mirror.git");
        let url = format!("file://{}", src.path());
        let m = Mirror::open_or_create(&url, &dir).unwrap();
        assert!(m.has_commit(cid(a)));
        drop(m);
        let b = src.commit("main", &[a], &[("f", "b", false)]);
        let m = Mirror::open_or_create(&url, &dir).unwrap();
        assert_eq!(m.branch_tips().unwrap(), vec![("main".into(), cid(b))]);
    }
}
