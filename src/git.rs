//! Every use of git2: mirrors, fetching, checkouts and history walks.
//!
//! Runner and observer both keep a private *bare* mirror of the watched
//! repository under their work directory and never touch the user's clone.
//! Keeping all of git2 here means one place decides which sources are
//! allowed (local paths, `file://`, `git://`, and over the network `https://`
//! and `ssh://` with the credentials of a [`GitAuth`]: see `git/remote.rs`),
//! how force-pushes are handled and how a checkout is made clean.
//!
//! A mirror is a cache: whatever happens to it on disk (a test that deleted
//! or truncated its files, a full disk, a crash mid-write), it is checked
//! before use and rebuilt from the source when damaged ([`Mirror::sync`]).
//! Only a source that really cannot be read is reported as one, with the
//! hint about `--repo`.
//!
//! **Architecture invariant:** nothing in the product shells out to `git`.

use std::cell::RefCell;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, Direction, ErrorClass, ErrorCode, FetchOptions, FetchPrune, Oid, Remote,
    Repository, Sort,
};
use tracing::{info, warn};

use crate::core::CommitId;

mod remote;

pub use remote::{
    AuthProblem, DEFAULT_NETWORK_TIMEOUT, GitAuth, GitAuthFiles, HostKeyProblem, HostKeyRefusal,
    SOURCE_RULE, SSH_USER, TOKEN_USER, redact, set_network_timeout,
};
use remote::{OriginKind, Refusal};

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
    /// The mirror holds something unreadable (a truncated pack, a corrupt
    /// object): the runner's cache, to be rebuilt, never the source's fault.
    Damaged { dir: PathBuf, what: String },
    /// The mirror was damaged and rebuilding it failed, for `cause` (most
    /// often: the source cannot be read right now). Says both.
    Unrepairable {
        dir: PathBuf,
        damage: String,
        cause: Box<GitError>,
    },
    /// The URL carries a password (shown without it).
    PasswordInUrl { source: String },
    /// A file named by a flag (`--git-token-file`...) cannot be used.
    CredentialFile {
        flag: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// The server wants credentials that were not given, or refused them.
    Auth {
        source: String,
        problem: AuthProblem,
    },
    /// The https server's certificate is not trusted (or TLS failed).
    Tls { source: String, err: git2::Error },
    /// The ssh server's host key is not the known one.
    HostKey {
        source: String,
        refusal: Box<HostKeyRefusal>,
    },
    /// The server could not be reached, or stopped answering.
    Unreachable { source: String, err: git2::Error },
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
                    "cannot read repository {source}: no such file or directory; give --repo an existing repository path or a file://, git://, https:// or ssh:// URL"
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
            GitError::Damaged { dir, what } => {
                write!(f, "the mirror at {} is damaged: {what}", dir.display())
            }
            GitError::Unrepairable { dir, damage, cause } => write!(
                f,
                "the mirror at {} is damaged ({damage}) and could not be rebuilt: {cause}",
                dir.display()
            ),
            GitError::PasswordInUrl { source } => write!(
                f,
                "the repository URL {source} carries a password: put the token in a file and give --git-token-file instead (the URL may keep a user name)"
            ),
            GitError::CredentialFile {
                flag,
                path,
                problem,
            } => write!(f, "{flag} {}: {problem}", path.display()),
            GitError::Auth { source, problem } => {
                write!(f, "cannot read repository {source}: {problem}")
            }
            GitError::Tls { source, err } => write!(
                f,
                "cannot read repository {source}: TLS failed: {}; if the server's certificate is signed by a private CA, give --git-ca-file with that CA's certificate (PEM)",
                err.message()
            ),
            GitError::HostKey { source, refusal } => {
                write!(f, "cannot read repository {source}: {refusal}")
            }
            GitError::Unreachable { source, err } => write!(
                f,
                "cannot reach repository {source}: {}; check the host name and port, and that the server is up",
                err.message()
            ),
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
            GitError::Unrepairable { cause, .. } => Some(cause.as_ref()),
            GitError::BadSource { .. }
            | GitError::Damaged { .. }
            | GitError::SourceMissing { .. }
            | GitError::PasswordInUrl { .. }
            | GitError::CredentialFile { .. }
            | GitError::Auth { .. }
            | GitError::HostKey { .. }
            // Their messages say git2's, and one line is enough.
            | GitError::Tls { .. }
            | GitError::Unreachable { .. }
            | GitError::UnknownCommit { .. } => None,
        }
    }
}

/// A bare mirror of one source repository, kept under a work directory.
///
/// Holds an open `git2::Repository`, so it is `Send` but not `Sync`: callers
/// in async code use it from `spawn_blocking` or behind a mutex.
pub struct Mirror {
    repo: Repository,
    origin: Origin,
    dir: PathBuf,
}

/// Where a mirror fetches from, and with what credentials.
struct Origin {
    /// As the user gave it without userinfo ([`redact`]), for messages.
    source: String,
    /// What git2 is handed: absolute for local paths so the working
    /// directory of the process never matters.
    url: String,
    kind: OriginKind,
    auth: Arc<GitAuth>,
}

impl Origin {
    fn new(source: &str, auth: Arc<GitAuth>) -> Result<Origin, GitError> {
        let (url, kind) = validate_source(source)?;
        Ok(Origin {
            source: redact(source),
            url,
            kind,
            auth,
        })
    }

    /// Brings every branch into `repo`'s `refs/remotes/origin/*`.
    fn fetch_into(&self, repo: &Repository) -> Result<(), FetchFailure> {
        // Anonymous: nothing about the source is written into the mirror's
        // config, so a changed --repo takes effect without any migration.
        let refusal = RefCell::new(None);
        let result = (|| {
            let mut remote = repo.remote_anonymous(&self.url)?;
            let mut opts = FetchOptions::new();
            opts.prune(FetchPrune::On)
                .download_tags(AutotagOption::None)
                .update_fetchhead(false)
                .remote_callbacks(remote::callbacks(&self.kind, &self.auth, &refusal));
            remote.fetch(&[FETCH_REFSPEC], Some(&mut opts), None)
        })();
        result.map_err(|err| FetchFailure {
            err,
            refusal: refusal.into_inner(),
        })
    }

    /// Whether the source answers at all, without a mirror: lists its
    /// references over a connection of its own.
    fn probe(&self) -> Result<(), FetchFailure> {
        let refusal = RefCell::new(None);
        let result = (|| {
            let mut remote = Remote::create_detached(self.url.as_str())?;
            let cb = remote::callbacks(&self.kind, &self.auth, &refusal);
            let conn = remote.connect_auth(Direction::Fetch, Some(cb), None)?;
            conn.list()?;
            Ok(())
        })();
        result.map_err(|err| FetchFailure {
            err,
            refusal: refusal.into_inner(),
        })
    }

    /// Why the source could not be read, as one error: what the callbacks
    /// refused, a local path that has gone (git2 would call it an
    /// unsupported URL), TLS, a server that does not answer.
    fn error(&self, failure: FetchFailure) -> GitError {
        let source = self.source.clone();
        let FetchFailure { err, refusal } = failure;
        match refusal {
            Some(Refusal::Auth(problem)) => return GitError::Auth { source, problem },
            Some(Refusal::HostKey(refusal)) => return GitError::HostKey { source, refusal },
            None => {}
        }
        let network = matches!(self.kind, OriginKind::Https { .. } | OriginKind::Ssh { .. });
        match &self.kind {
            OriginKind::Local(path) if !Path::new(path).exists() => {
                return GitError::SourceMissing { source };
            }
            OriginKind::Https { .. }
                if err.class() == ErrorClass::Ssl || err.code() == ErrorCode::Certificate =>
            {
                return GitError::Tls { source, err };
            }
            OriginKind::Https { user } if err.code() == ErrorCode::Auth => {
                let problem = match self.auth.has_token() {
                    true => AuthProblem::TokenRefused {
                        user: user.clone().unwrap_or_else(|| TOKEN_USER.into()),
                    },
                    false => AuthProblem::NoToken,
                };
                return GitError::Auth { source, problem };
            }
            _ => {}
        }
        if network
            && (err.code() == ErrorCode::Timeout
                || err.class() == ErrorClass::Net
                || is_connect_failure(&err)
                || is_ssh_transport_failure(&err))
        {
            return GitError::Unreachable { source, err };
        }
        GitError::CannotRead { source, err }
    }
}

/// libgit2's socket could not connect (refused, no route), or a read
/// timed out under TLS (OpenSSL sees the socket's timeout as EAGAIN): it
/// says so as an OS error.
fn is_connect_failure(err: &git2::Error) -> bool {
    let m = err.message();
    err.class() == ErrorClass::Os
        && (m.starts_with("failed to connect to")
            || m.contains("timed out")
            || m.contains("Resource temporarily unavailable"))
}

/// An ssh session that never got as far as authentication (no banner, key
/// exchange cut short, timed out): the server is not answering as one.
fn is_ssh_transport_failure(err: &git2::Error) -> bool {
    err.class() == ErrorClass::Ssh && err.code() != ErrorCode::Auth && {
        let m = err.message().to_ascii_lowercase();
        m.contains("timed out")
            || m.contains("banner")
            || m.contains("failed to start ssh session")
            || m.contains("socket")
    }
}

/// A failed fetch: git2's error and what the callbacks refused, if they did.
struct FetchFailure {
    err: git2::Error,
    refusal: Option<Refusal>,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("source", &self.origin.source)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Checks the source before git2 sees it, so a refused scheme gets a message
/// naming the rule instead of git2's "unsupported URL protocol".
/// Returns what git2 is handed and the kind of source.
fn validate_source(source: &str) -> Result<(String, OriginKind), GitError> {
    if source.contains("://") {
        return Ok((source.to_string(), remote::parse_url(source)?));
    }
    if source.is_empty() {
        return Err(GitError::BadSource {
            source: String::new(),
            rule: SOURCE_RULE,
        });
    }
    let path = Path::new(source);
    if fs::symlink_metadata(path).is_err()
        && let Some(kind) = remote::parse_scp_like(source)
    {
        return Ok((source.to_string(), kind));
    }
    match fs::canonicalize(path) {
        Ok(abs) => match abs.to_str() {
            Some(abs) => Ok((abs.to_string(), OriginKind::Local(abs.to_string()))),
            None => Err(GitError::BadSource {
                source: redact(source),
                rule: "the repository path must be valid UTF-8",
            }),
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(GitError::SourceMissing {
            source: redact(source),
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

/// What [`Mirror::sync`] did besides fetching.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Synced {
    /// The mirror was found damaged (how) and rebuilt from the source.
    pub rebuilt: Option<String>,
    /// The mirror is sound but the source could not be read: what it has
    /// may still be enough (a commit fetched earlier).
    pub source_error: Option<GitError>,
}

/// One branch of the source as of the last fetch: its short name (lossy if
/// the name is not UTF-8) and its tip, or why the tip cannot be read.
#[derive(Debug)]
pub struct Branch {
    pub name: String,
    pub tip: Result<CommitId, GitError>,
}

/// Whether a git2 failure while reading objects means the object store is
/// damaged (rather than, say, the checkout's directory being unwritable).
fn is_object_damage(err: &git2::Error) -> bool {
    matches!(
        err.class(),
        ErrorClass::Odb
            | ErrorClass::Zlib
            | ErrorClass::Object
            | ErrorClass::Tree
            | ErrorClass::Indexer
            | ErrorClass::Sha1
    )
}

/// Opens the bare repository at `dir` and checks what every job relies on:
/// a real directory (not a symlink), a repository git2 can open (`HEAD`,
/// `objects/`, `refs/`, a readable config), an object database, and the
/// commit and root tree of every fetched branch readable. `Err` says what is
/// wrong, for the log and for messages.
///
/// Blobs are not read (that would cost a full scan); a damaged blob is found
/// by the checkout that needs it ([`Mirror::sync_and_checkout`]).
fn inspect(dir: &Path) -> Result<Repository, String> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("it is not a directory".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("it is missing".into()),
        Err(e) => return Err(format!("it cannot be examined: {e}")),
    }
    let repo =
        Repository::open_bare(dir).map_err(|e| format!("it cannot be opened: {}", e.message()))?;
    if !repo.is_bare() {
        return Err("it is not a bare repository".into());
    }
    repo.odb()
        .map_err(|e| format!("its object database cannot be opened: {}", e.message()))?;
    let refs = repo
        .references_glob(&format!("{REMOTE_PREFIX}*"))
        .map_err(|e| format!("its branches cannot be listed: {}", e.message()))?;
    for r in refs {
        let r = r.map_err(|e| format!("its branches cannot be listed: {}", e.message()))?;
        // Symbolic references (origin/HEAD) point at one of the others.
        let Some(oid) = r.target() else {
            continue;
        };
        let name = String::from_utf8_lossy(r.name_bytes()).into_owned();
        let unreadable =
            |e: git2::Error| format!("the tip of {name} cannot be read: {}", e.message());
        // Any object will do (a branch may point at a blob in the source);
        // it must be there and readable, and so must a commit's tree.
        let object = repo.find_object(oid, None).map_err(unreadable)?;
        if let Some(commit) = object.as_commit() {
            commit.tree().map_err(unreadable)?;
        }
    }
    Ok(repo)
}

/// Builds a new mirror of `origin` at `dir` (replacing whatever is there)
/// and fetches into it.
fn build_fresh(dir: &Path, origin: &Origin) -> Result<Repository, GitError> {
    remove_tree(dir).map_err(|err| GitError::Io {
        what: "remove",
        path: dir.to_path_buf(),
        err,
    })?;
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|err| GitError::Io {
            what: "create directory",
            path: parent.to_path_buf(),
            err,
        })?;
    }
    let repo = Repository::init_bare(dir).map_err(|err| GitError::Mirror {
        dir: dir.to_path_buf(),
        err,
    })?;
    origin.fetch_into(&repo).map_err(|f| origin.error(f))?;
    Ok(repo)
}

/// Rebuilds the damaged mirror at `dir` from the source: a fresh one is
/// built next to it first and only then put in its place, so a source that
/// cannot be read leaves things as they were (and says so, with the damage).
fn rebuild_at(dir: &Path, origin: &Origin, damage: &str) -> Result<Repository, GitError> {
    warn!(mirror = %dir.display(), %damage, "the mirror is damaged; rebuilding it from the source");
    let fresh = rebuild_dir(dir);
    let unrepairable = |cause: GitError| GitError::Unrepairable {
        dir: dir.to_path_buf(),
        damage: damage.to_string(),
        cause: Box::new(cause),
    };
    match build_fresh(&fresh, origin) {
        Ok(repo) => drop(repo),
        Err(cause) => {
            let _ = remove_tree(&fresh);
            return Err(unrepairable(cause));
        }
    }
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |err| unrepairable(GitError::Io { what, path, err })
    };
    remove_tree(dir).map_err(io("remove the damaged mirror", dir))?;
    fs::rename(&fresh, dir).map_err(io("move the rebuilt mirror into place from", &fresh))?;
    let repo = Repository::open_bare(dir).map_err(|err| {
        unrepairable(GitError::Mirror {
            dir: dir.to_path_buf(),
            err,
        })
    })?;
    info!(mirror = %dir.display(), "the mirror was rebuilt from the source");
    Ok(repo)
}

/// A repository with nothing in it and no files behind it: what a mirror
/// holds while its real one is closed.
fn closed_repository() -> Result<Repository, GitError> {
    git2::Odb::new()
        .and_then(Repository::from_odb)
        .map_err(|err| GitError::Git {
            what: "closing the mirror".into(),
            err,
        })
}

/// Where a damaged mirror's replacement is built: next to it.
fn rebuild_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".rebuild");
    dir.with_file_name(name)
}

impl Mirror {
    /// Creates `work_dir` if needed and opens (or clones) the mirror kept in
    /// `work_dir/mirror.git`, off the async threads: what runners and the
    /// observer do at start.
    pub async fn prepare(
        source: &str,
        work_dir: &Path,
        auth: Arc<GitAuth>,
    ) -> Result<Mirror, GitError> {
        std::fs::create_dir_all(work_dir).map_err(|err| GitError::Io {
            what: "create the work directory",
            path: work_dir.to_path_buf(),
            err,
        })?;
        let source = source.to_string();
        let dir = work_dir.join("mirror.git");
        let path = dir.clone();
        tokio::task::spawn_blocking(move || Mirror::open_or_create_with(&source, &dir, auth))
            .await
            .map_err(|e| GitError::Io {
                what: "open the mirror in",
                path,
                err: io::Error::other(e.to_string()),
            })?
    }

    /// [`Mirror::open_or_create_with`] without credentials: local,
    /// `file://` and `git://` sources.
    pub fn open_or_create(source: &str, dir: &Path) -> Result<Mirror, GitError> {
        Mirror::open_or_create_with(source, dir, Arc::new(GitAuth::none()))
    }

    /// Opens the mirror at `dir` (creating a bare repository there if
    /// absent, rebuilding it if damaged) and fetches once with `auth`, so a
    /// bad source or bad credentials are reported at start-up rather than
    /// at the first job.
    pub fn open_or_create_with(
        source: &str,
        dir: &Path,
        auth: Arc<GitAuth>,
    ) -> Result<Mirror, GitError> {
        remote::ensure_network_timeout()?;
        let origin = Origin::new(source, auth)?;
        if let Err(e) = fs::symlink_metadata(dir)
            && e.kind() == io::ErrorKind::NotFound
        {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).map_err(|err| GitError::Io {
                    what: "create directory",
                    path: parent.to_path_buf(),
                    err,
                })?;
            }
            Repository::init_bare(dir).map_err(|err| GitError::Mirror {
                dir: dir.to_path_buf(),
                err,
            })?;
        }
        let mut mirror = Mirror {
            repo: closed_repository()?,
            origin,
            dir: dir.to_path_buf(),
        };
        // Opens it; a runner restarted on a work dir whose mirror a test
        // (or a crash) damaged gets it rebuilt rather than exiting.
        if let Some(e) = mirror.sync()?.source_error {
            return Err(e);
        }
        Ok(mirror)
    }

    /// The source as given to [`Mirror::open_or_create`], without
    /// userinfo ([`redact`]).
    pub fn source(&self) -> &str {
        &self.origin.source
    }

    /// The credentials this mirror fetches with.
    pub fn auth(&self) -> &GitAuth {
        &self.origin.auth
    }

    /// The bare repository's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directories this mirror keeps on disk (itself and the place a
    /// replacement is built) and the files its credentials were read from.
    /// What a runner hides from the code it tests.
    pub fn private_dirs(&self) -> Vec<PathBuf> {
        let mut private = vec![self.dir.clone(), rebuild_dir(&self.dir)];
        private.extend(self.origin.auth.secret_files().iter().cloned());
        private
    }

    /// Brings every branch of the source into `refs/remotes/origin/*`,
    /// following force-pushes and dropping deleted branches, so
    /// [`Mirror::branch_tips`] always shows the source as it is now.
    /// Objects of dropped or rewritten branches stay (no gc), so a commit
    /// once fetched can still be checked out.
    ///
    /// Every failure is reported as the source's ([`GitError::CannotRead`],
    /// [`GitError::SourceMissing`]); [`Mirror::sync`] tells the source's
    /// failures from the mirror's.
    pub fn fetch(&self) -> Result<(), GitError> {
        self.origin
            .fetch_into(&self.repo)
            .map_err(|f| self.origin.error(f))
    }

    /// Closes the mirror's handle. git2 shares open pack files between the
    /// handles of a process, by path, and maps them into memory: a handle
    /// kept across a change of the files (a pack truncated in place, a
    /// rebuilt mirror whose packs have the same names) would make the next
    /// one read stale data, or fault on a mapping past the end of a
    /// truncated file. Closing first makes the next open see the files as
    /// they are.
    fn close(&mut self) -> Result<(), GitError> {
        self.repo = closed_repository()?;
        Ok(())
    }

    /// Rebuilds the mirror from the source because of `damage`.
    pub fn rebuild(&mut self, damage: &str) -> Result<(), GitError> {
        self.close()?;
        self.repo = rebuild_at(&self.dir, &self.origin, damage)?;
        Ok(())
    }

    /// What to do before relying on the mirror: reopen and inspect it
    /// (see [`inspect`]), rebuild it from the source if damaged, fetch.
    /// A fetch that fails while the source answers is tried once more and
    /// then taken as damage too.
    ///
    /// `Err` only when the mirror cannot be made sound: damaged and not
    /// rebuildable ([`GitError::Unrepairable`] names both problems), or the
    /// file system refuses. A source that cannot be read with a sound mirror
    /// is [`Synced::source_error`]: the commit may be here already.
    pub fn sync(&mut self) -> Result<Synced, GitError> {
        self.close()?;
        match inspect(&self.dir) {
            Ok(repo) => self.repo = repo,
            Err(damage) => {
                self.rebuild(&damage)?;
                return Ok(Synced {
                    rebuilt: Some(damage),
                    source_error: None,
                });
            }
        }
        let Err(first) = self.origin.fetch_into(&self.repo) else {
            return Ok(Synced::default());
        };
        // Refused credentials or host key, TLS, a server that does not
        // answer: the source's problem for sure, and asking again would
        // only wait (or be refused) again.
        let source_error = self.origin.error(first);
        let surely_source = matches!(
            source_error,
            GitError::Auth { .. }
                | GitError::HostKey { .. }
                | GitError::Tls { .. }
                | GitError::Unreachable { .. }
        );
        if surely_source {
            return Ok(Synced {
                rebuilt: None,
                source_error: Some(source_error),
            });
        }
        if let Err(e) = self.origin.probe() {
            tracing::debug!(probe = %self.origin.error(e), "the source does not answer");
            return Ok(Synced {
                rebuilt: None,
                source_error: Some(source_error),
            });
        }
        // The source answers: a passing glitch, or the mirror cannot take
        // what it sends.
        if self.origin.fetch_into(&self.repo).is_ok() {
            return Ok(Synced::default());
        }
        let damage = match &source_error {
            GitError::CannotRead { err, .. } => {
                format!("fetching into it failed: {}", err.message())
            }
            other => format!("fetching into it failed: {other}"),
        };
        self.rebuild(&damage)?;
        Ok(Synced {
            rebuilt: Some(damage),
            source_error: None,
        })
    }

    /// What a runner does before each job: [`Mirror::sync`], then
    /// [`Mirror::checkout`]. A checkout that finds the mirror damaged (an
    /// unreadable object the inspection did not look at) rebuilds it once
    /// and checks out again.
    pub fn sync_and_checkout(&mut self, commit: CommitId, into: &Path) -> Result<(), GitError> {
        let synced = self.sync()?;
        if let Some(e) = &synced.source_error {
            // Not yet fatal: the commit may be here already.
            warn!(error = %e, "fetch failed");
        }
        match self.checkout(commit, into) {
            Err(GitError::Damaged { what, .. }) if synced.rebuilt.is_none() => {
                self.rebuild(&what)?;
                self.checkout(commit, into)
            }
            other => other,
        }
    }

    /// Every branch of the source as of the last fetch, sorted by name,
    /// each with its tip or why that cannot be read: one bad branch must not
    /// hide the others.
    pub fn branches(&self) -> Result<Vec<Branch>, GitError> {
        let listing = |err| GitError::Git {
            what: "listing fetched branches".into(),
            err,
        };
        let refs = self
            .repo
            .references_glob(&format!("{REMOTE_PREFIX}*"))
            .map_err(listing)?;
        let mut branches = Vec::new();
        for r in refs {
            let r = r.map_err(listing)?;
            let full = String::from_utf8_lossy(r.name_bytes()).into_owned();
            let Some(short) = full.strip_prefix(REMOTE_PREFIX) else {
                continue;
            };
            if short == "HEAD" {
                continue;
            }
            let name = short.to_string();
            let tip = if r.name().is_err() {
                Err(GitError::Git {
                    what: format!("branch {name}"),
                    err: git2::Error::from_str("the name is not UTF-8"),
                })
            } else {
                r.peel_to_commit()
                    .map_err(|err| GitError::Git {
                        what: format!("reading the tip of branch {name}"),
                        err,
                    })
                    .and_then(|c| to_commit_id(c.id()))
            };
            branches.push(Branch { name, tip });
        }
        branches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(branches)
    }

    /// Every branch of the source as of the last fetch, sorted by name;
    /// branches whose tip cannot be read are left out (see
    /// [`Mirror::branches`]).
    pub fn branch_tips(&self) -> Result<Vec<(String, CommitId)>, GitError> {
        Ok(self
            .branches()?
            .into_iter()
            .filter_map(|b| match b.tip {
                Ok(tip) => Some((b.name, tip)),
                Err(e) => {
                    tracing::debug!(error = %e, "leaving out a branch");
                    None
                }
            })
            .collect())
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
                    source: self.origin.source.clone(),
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

    /// Who wrote the commit, its subject and its time, if the mirror has it.
    pub fn commit_info(&self, c: CommitId) -> Option<crate::core::CommitInfo> {
        let commit = self.repo.find_commit(to_oid(c)?).ok()?;
        let author = commit.author();
        let who = match (author.name().ok(), author.email().ok()) {
            (Some(n), Some(e)) => format!("{n} <{e}>"),
            (Some(n), None) => n.to_string(),
            (None, Some(e)) => format!("<{e}>"),
            (None, None) => String::new(),
        };
        let subject = commit
            .summary()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_string();
        let time_ms = (commit.time().seconds().max(0) as u64).saturating_mul(1000);
        Some(crate::core::CommitInfo {
            author: who,
            subject,
            time_ms,
        })
    }

    /// Whether the mirror holds this commit (as a commit, not another object).
    pub fn has_commit(&self, c: CommitId) -> bool {
        to_oid(c).is_some_and(|oid| self.repo.find_commit(oid).is_ok())
    }

    /// Writes exactly `commit`'s tree into `into`, which is first removed
    /// entirely so that nothing from an earlier job (build output, a file
    /// deleted since) can change the result. Fetches once if the commit is
    /// not yet in the mirror (it may have been pushed since the last fetch).
    ///
    /// An object the mirror has but cannot read is [`GitError::Damaged`].
    pub fn checkout(&self, commit: CommitId, into: &Path) -> Result<(), GitError> {
        if !self.has_commit(commit) {
            self.fetch()?;
        }
        let unknown = || GitError::UnknownCommit {
            commit,
            source: self.origin.source.clone(),
        };
        let oid = to_oid(commit).ok_or_else(unknown)?;
        let object = match self.repo.find_commit(oid) {
            Ok(c) => c.into_object(),
            // Not there, or not a commit: the source's answer stands.
            Err(e) if !is_object_damage(&e) || !self.object_exists(oid) => {
                return Err(unknown());
            }
            Err(e) => {
                return Err(GitError::Damaged {
                    dir: self.dir.clone(),
                    what: format!("commit {commit} cannot be read: {}", e.message()),
                });
            }
        };

        remove_tree(into).map_err(|err| GitError::Io {
            what: "remove old checkout",
            path: into.to_path_buf(),
            err,
        })?;
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
            .map_err(|err| {
                if is_object_damage(&err) {
                    GitError::Damaged {
                        dir: self.dir.clone(),
                        what: format!("checking out {commit}: {}", err.message()),
                    }
                } else {
                    GitError::Git {
                        what: format!("checking out {commit} into {}", into.display()),
                        err,
                    }
                }
            })
    }

    /// Whether the object database lists `oid` at all (readable or not).
    fn object_exists(&self, oid: Oid) -> bool {
        self.repo.odb().is_ok_and(|odb| odb.exists(oid))
    }
}

/// Removes `path` whatever it is (a tree, a file, a symlink; nothing is
/// fine too). Tests may leave directories without write or search
/// permission behind, or (as root) immutable files: when the first attempt
/// fails, every directory is made `rwx` for its owner, immutable and
/// append-only flags are lifted, and removal is tried once more. (As root
/// permissions do not stop the first attempt; as any other user they
/// would.)
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    loosen(path);
    match fs::remove_dir_all(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Makes the tree under `dir` removable by its owner: directories `rwx`,
/// no immutable or append-only flags. Best effort: what fails here surfaces
/// as the second removal's error.
fn loosen(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        lift_inode_flags(&d, true);
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => lift_inode_flags(&e.path(), false),
                _ => {}
            }
        }
    }
}

/// Lifts the immutable and append-only flags (`chattr +i`, `+a`: root can
/// set them, and then not even root can remove the file) of a regular file
/// or a directory. Nothing else is opened: opening a device can have
/// effects.
fn lift_inode_flags(path: &Path, dir: bool) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    const FS_IMMUTABLE_FL: libc::c_int = 0x10;
    const FS_APPEND_FL: libc::c_int = 0x20;
    let mut flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    else {
        return;
    };
    if !dir && !f.metadata().is_ok_and(|m| m.is_file()) {
        return;
    }
    let mut attrs: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS and FS_IOC_SETFLAGS read and write one int
    // through the pointer, which points at a live c_int.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut attrs) == 0
            && attrs & (FS_IMMUTABLE_FL | FS_APPEND_FL) != 0
        {
            attrs &= !(FS_IMMUTABLE_FL | FS_APPEND_FL);
            libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &attrs);
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

        let err = Mirror::open_or_create("ftp://example.com/r.git", &dir).unwrap_err();
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

    /// Every regular file under `dir`, recursively.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    fn truncate_to_half(path: &Path) {
        let len = fs::metadata(path).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }

    /// One way of damaging the mirror at a path, and its name.
    type Damage = (&'static str, fn(&Path));

    /// What tests (or crashes) do to a mirror.
    fn damages() -> Vec<Damage> {
        vec![
            ("removed", |d| fs::remove_dir_all(d).unwrap()),
            ("HEAD removed", |d| fs::remove_file(d.join("HEAD")).unwrap()),
            ("refs removed", |d| {
                fs::remove_dir_all(d.join("refs")).unwrap()
            }),
            ("config garbled", |d| {
                fs::write(d.join("config"), "[core\n\0garbage").unwrap()
            }),
            ("objects truncated", |d| {
                let objects = files_under(&d.join("objects"));
                assert!(!objects.is_empty());
                for f in objects {
                    truncate_to_half(&f);
                }
            }),
            ("objects removed", |d| {
                fs::remove_dir_all(d.join("objects")).unwrap()
            }),
            ("replaced by a file", |d| {
                fs::remove_dir_all(d).unwrap();
                fs::write(d, "not a repository").unwrap();
            }),
            ("unsearchable", |d| {
                fs::remove_dir_all(d.join("objects")).unwrap();
                fs::set_permissions(d, fs::Permissions::from_mode(0o000)).unwrap();
            }),
        ]
    }

    #[test]
    fn a_damaged_mirror_is_rebuilt_from_the_source() {
        for (what, damage) in damages() {
            let mut src = Source::new();
            let a = src.commit("main", &[], &[("f", "a", false)]);
            let (work, mut m) = mirror_of(&src);
            damage(m.dir());
            let b = src.commit("main", &[a], &[("f", "b", false)]);
            let synced = m.sync().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(synced.rebuilt.is_some(), "{what}: not noticed");
            assert!(synced.source_error.is_none(), "{what}");
            let co = work.path().join("co");
            m.checkout(cid(b), &co).unwrap();
            assert_eq!(fs::read_to_string(co.join("f")).unwrap(), "b", "{what}");
            m.checkout(cid(a), &co).unwrap();
            assert_eq!(fs::read_to_string(co.join("f")).unwrap(), "a", "{what}");
            assert!(inspect(m.dir()).is_ok(), "{what}");
            assert!(!rebuild_dir(m.dir()).exists(), "{what}: leftovers");
            // Sound now: the next sync leaves it alone.
            assert!(m.sync().unwrap().rebuilt.is_none(), "{what}");
        }
    }

    #[test]
    fn a_runner_restarted_on_a_damaged_mirror_starts() {
        for (what, damage) in damages() {
            let mut src = Source::new();
            let a = src.commit("main", &[], &[("f", "a", false)]);
            let (work, m) = mirror_of(&src);
            let dir = m.dir().to_path_buf();
            drop(m);
            damage(&dir);
            let m =
                Mirror::open_or_create(src.path(), &dir).unwrap_or_else(|e| panic!("{what}: {e}"));
            m.checkout(cid(a), &work.path().join("co")).unwrap();
        }
    }

    #[test]
    fn a_sound_mirror_is_left_alone() {
        use std::os::unix::fs::MetadataExt;
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let (_work, mut m) = mirror_of(&src);
        let ino = fs::metadata(m.dir()).unwrap().ino();
        let b = src.commit("main", &[a], &[("f", "b", false)]);
        let synced = m.sync().unwrap();
        assert!(synced.rebuilt.is_none() && synced.source_error.is_none());
        assert!(m.has_commit(cid(b)), "fetched");
        assert_eq!(fs::metadata(m.dir()).unwrap().ino(), ino, "not rebuilt");
    }

    /// Damage the mirror AND lose the source: the message says both, and
    /// the damaged mirror stays where it was until the source is back.
    #[test]
    fn damage_with_an_unreadable_source_names_both() {
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let (work, mut m) = mirror_of(&src);
        fs::remove_file(m.dir().join("HEAD")).unwrap();
        let away = src.dir.path().with_extension("away");
        fs::rename(src.dir.path(), &away).unwrap();

        let err = m.sync().unwrap_err();
        assert!(matches!(err, GitError::Unrepairable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "the mirror at {} is damaged (it cannot be opened",
                m.dir().display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "and could not be rebuilt: cannot read repository {}: no such file or directory",
                src.path()
            )),
            "{msg}"
        );
        assert!(m.dir().join("objects").is_dir(), "the old mirror stays");
        assert!(!rebuild_dir(m.dir()).exists(), "no half-built mirror left");
        let err = m
            .sync_and_checkout(cid(a), &work.path().join("co"))
            .unwrap_err();
        assert!(matches!(err, GitError::Unrepairable { .. }), "{err:?}");

        fs::rename(&away, src.dir.path()).unwrap();
        m.sync_and_checkout(cid(a), &work.path().join("co"))
            .unwrap();
        assert_eq!(fs::read_to_string(work.path().join("co/f")).unwrap(), "a");
    }

    /// A source that cannot be read is not damage: the mirror is kept and
    /// what it holds can still be checked out; only a commit it lacks is
    /// blamed on the source.
    #[test]
    fn an_unreadable_source_with_a_sound_mirror_is_the_sources_problem() {
        use std::os::unix::fs::MetadataExt;
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let (work, mut m) = mirror_of(&src);
        let ino = fs::metadata(m.dir()).unwrap().ino();
        let away = src.dir.path().with_extension("away");
        fs::rename(src.dir.path(), &away).unwrap();

        let synced = m.sync().unwrap();
        assert!(synced.rebuilt.is_none());
        let err = synced.source_error.expect("the fetch failed");
        assert!(matches!(err, GitError::SourceMissing { .. }), "{err:?}");
        m.sync_and_checkout(cid(a), &work.path().join("co"))
            .unwrap();
        let missing = CommitId::parse(&"0123456789".repeat(4)).unwrap();
        let err = m
            .sync_and_checkout(missing, &work.path().join("co"))
            .unwrap_err();
        assert!(matches!(err, GitError::SourceMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("--repo"), "{err}");
        assert_eq!(fs::metadata(m.dir()).unwrap().ino(), ino, "not rebuilt");
        fs::rename(&away, src.dir.path()).unwrap();
    }

    /// Damage the inspection does not look at, found by the fetch: the
    /// source answers, so the mirror is to blame and is rebuilt.
    #[test]
    fn a_fetch_the_mirror_cannot_take_rebuilds_it() {
        let mut src = Source::new();
        let (_work, mut m) = mirror_of(&src);
        let pack = m.dir().join("objects/pack");
        fs::remove_dir_all(&pack).unwrap();
        fs::write(&pack, "in the way").unwrap();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let synced = m.sync().unwrap();
        let damage = synced.rebuilt.expect("rebuilt");
        assert!(damage.starts_with("fetching into it failed"), "{damage}");
        assert!(m.has_commit(cid(a)));
    }

    /// The byte offset of `oid` in the pack next to the v2 index `idx`.
    fn pack_offset(idx: &Path, oid: Oid) -> u64 {
        let data = fs::read(idx).unwrap();
        assert_eq!(&data[..8], b"\xfftOc\x00\x00\x00\x02", "a v2 pack index");
        let word = |at: usize| u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
        let n = word(8 + 255 * 4) as usize;
        let names = 8 + 256 * 4;
        let i = (0..n)
            .find(|i| &data[names + i * 20..names + i * 20 + 20] == oid.as_bytes())
            .expect("the object is in the pack");
        let offset = word(names + n * 24 + i * 4);
        assert_eq!(offset & 0x8000_0000, 0, "a small pack");
        u64::from(offset)
    }

    /// A blob the inspection does not read is corrupt: the checkout finds
    /// it, the mirror is rebuilt and the checkout made again.
    #[test]
    fn a_corrupt_object_found_by_the_checkout_rebuilds_the_mirror() {
        use std::io::{Seek, SeekFrom, Write};
        let mut src = Source::new();
        let big = "a blob large enough to be compressed on its own\n".repeat(50);
        let a = src.commit("main", &[], &[("big.txt", &big, false)]);
        let (work, mut m) = mirror_of(&src);
        let blob = m.repo.blob(big.as_bytes()).unwrap();
        // `blob` wrote nothing new: the object is in the fetched pack.
        let packs: Vec<PathBuf> = files_under(&m.dir().join("objects/pack"));
        let idx = packs
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "idx"))
            .expect("a pack index");
        let offset = pack_offset(idx, blob);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(idx.with_extension("pack"))
            .unwrap();
        f.seek(SeekFrom::Start(offset + 2)).unwrap();
        f.write_all(&[0xde; 16]).unwrap();
        drop(f);

        // Commit and tree are fine, so the inspection passes...
        let co = work.path().join("co");
        let reopened = Mirror::open_or_create(src.path(), m.dir()).unwrap();
        let err = reopened.checkout(cid(a), &co).unwrap_err();
        assert!(matches!(err, GitError::Damaged { .. }), "{err:?}");
        assert!(!err.to_string().contains("--repo"), "{err}");
        // One handle per mirror, as in the runner (see `Mirror::close`).
        drop(reopened);
        // ...and the checkout before a job repairs it.
        m.sync_and_checkout(cid(a), &co).unwrap();
        assert_eq!(fs::read_to_string(co.join("big.txt")).unwrap(), big);
    }

    #[test]
    fn a_branch_whose_tip_is_not_a_commit_does_not_hide_the_others() {
        let mut src = Source::new();
        let a = src.commit("main", &[], &[("f", "a", false)]);
        let blob = src.repo.blob(b"not a commit").unwrap();
        src.repo
            .reference("refs/heads/blobby", blob, true, "test")
            .unwrap();
        src.commit("zzz", &[a], &[("f", "z", false)]);
        let (_work, mut m) = mirror_of(&src);
        // Not damage either: the source has it so.
        assert!(m.sync().unwrap().rebuilt.is_none());
        let branches = m.branches().unwrap();
        let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["blobby", "main", "zzz"]);
        assert!(branches[0].tip.is_err());
        assert_eq!(branches[1].tip.as_ref().unwrap(), &cid(a));
        assert!(branches[2].tip.is_ok());
        let tips: Vec<String> = m.branch_tips().unwrap().into_iter().map(|t| t.0).collect();
        assert_eq!(tips, ["main", "zzz"]);
    }

    /// As root a test can make a file immutable (`chattr +i`); the next
    /// job's removal lifts the flag. Skipped where the flag cannot be set
    /// (not root, or a file system without it).
    #[test]
    fn remove_tree_lifts_immutable_flags() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("sub/f"), "x").unwrap();
        let f = fs::File::open(t.join("sub/f")).unwrap();
        let mut attrs: libc::c_int = 0;
        // SAFETY: as in `lift_inode_flags`.
        let set = unsafe {
            libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut attrs) == 0 && {
                attrs |= 0x10;
                libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &attrs) == 0
            }
        };
        drop(f);
        if !set {
            eprintln!("cannot set the immutable flag here; skipped");
            return;
        }
        assert!(fs::remove_file(t.join("sub/f")).is_err(), "immutable");
        remove_tree(&t).unwrap();
        assert!(!t.exists());
    }

    #[test]
    fn remove_tree_takes_anything_a_test_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("a/b/c")).unwrap();
        fs::write(t.join("a/b/c/f"), "x").unwrap();
        fs::write(t.join("ro"), "x").unwrap();
        fs::set_permissions(t.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
        std::os::unix::fs::symlink("/", t.join("root-link")).unwrap();
        fs::set_permissions(t.join("a/b/c"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(t.join("a/b"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(t.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(
            Path::new("/").join("tmp").exists(),
            "the symlink was not followed"
        );
        remove_tree(&t).unwrap();
        fs::write(&t, "a file").unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
    }
}
