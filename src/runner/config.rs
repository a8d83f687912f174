//! The tested repository's own configuration: `.ci.toml` at its root says
//! which command runs its tests.
//!
//! The file comes from the commit under test, so it is untrusted input: it
//! is size-limited, must be a regular file (a symlink could point at the
//! runner's secrets and have them echoed in a parse error), and every
//! problem becomes a [`ConfigError`] that the runner reports as the job's
//! `error` outcome.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file's name, at the root of the checkout.
pub const FILE_NAME: &str = ".ci.toml";

/// Larger than any sane configuration; keeps a hostile file from costing memory.
pub const MAX_BYTES: u64 = 64 * 1024;

/// The 500-Lines chapter's test command, used when the repository has no
/// configuration.
pub const DEFAULT_COMMAND: [&str; 6] = ["python3", "-m", "unittest", "discover", "-s", "tests"];

/// How to run one repository's tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    /// argv, never passed through a shell; never empty.
    pub command: Vec<String>,
    /// Can only shorten the runner's own limit (see [`RepoConfig::timeout`]).
    pub timeout_secs: Option<u64>,
    /// Sorted by name, so runs are reproducible.
    pub env: Vec<(String, String)>,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            command: DEFAULT_COMMAND.iter().map(|s| s.to_string()).collect(),
            timeout_secs: None,
            env: Vec::new(),
        }
    }
}

impl RepoConfig {
    /// The time limit for a job: the repository may ask for less than the
    /// runner's `--job-timeout`, never more, since the operator's limit is
    /// what protects the runner.
    pub fn timeout(&self, runner_limit: Duration) -> Duration {
        match self.timeout_secs {
            Some(secs) => runner_limit.min(Duration::from_secs(secs)),
            None => runner_limit,
        }
    }
}

/// Why a repository's configuration cannot be used. Each message is one
/// line naming the file, fit for a job's result message. `path` is the
/// file's path in the repository ([`FILE_NAME`]): where the runner keeps
/// its checkout is nobody's business and differs from runner to runner.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {err}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("{} is not a regular file (it is {kind})", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{} is larger than the limit of {MAX_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    /// Only the parser's message and position, never the offending text:
    /// the message is shown to everyone who reads results.
    #[error("{} is invalid{}: {message}", path.display(), at_line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        at_line: Option<usize>,
        message: String,
    },
    #[error("{}: {problem}", path.display())]
    Bad { path: PathBuf, problem: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    test: Option<TestShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestShape {
    command: Option<Vec<String>>,
    timeout_secs: Option<u64>,
    env: Option<BTreeMap<String, String>>,
}

/// Reads `.ci.toml` from the root of `checkout`; with no such file the
/// default configuration applies.
pub fn load(checkout: &Path) -> Result<RepoConfig, ConfigError> {
    let file = checkout.join(FILE_NAME);
    // What errors name: the file as the repository knows it.
    let path = PathBuf::from(FILE_NAME);
    let read_err = |err| ConfigError::Read {
        path: path.clone(),
        err,
    };
    let meta = match fs::symlink_metadata(&file) {
        Ok(m) => m,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(RepoConfig::default()),
        Err(err) => return Err(read_err(err)),
    };
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(ConfigError::NotAFile { path, kind });
    }
    if meta.len() > MAX_BYTES {
        return Err(ConfigError::TooLarge { path });
    }
    let mut raw = Vec::new();
    fs::File::open(&file)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut raw))
        .map_err(read_err)?;
    if raw.len() as u64 > MAX_BYTES {
        return Err(ConfigError::TooLarge { path });
    }
    let text = String::from_utf8(raw).map_err(|_| ConfigError::NotUtf8 { path: path.clone() })?;
    parse(&text, &path)
}

fn parse(text: &str, path: &Path) -> Result<RepoConfig, ConfigError> {
    let shape: FileShape = toml::from_str(text).map_err(|err| ConfigError::Invalid {
        path: path.to_path_buf(),
        at_line: err
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        message: err.message().trim().replace('\n', " "),
    })?;
    let bad = |problem: String| ConfigError::Bad {
        path: path.to_path_buf(),
        problem,
    };
    let Some(test) = shape.test else {
        return Ok(RepoConfig::default());
    };
    let command = match test.command {
        None => RepoConfig::default().command,
        Some(c) if c.first().is_none_or(|p| p.is_empty()) => {
            return Err(bad(
                "test.command must name a program: a non-empty list whose first item is not empty"
                    .into(),
            ));
        }
        Some(c) => c,
    };
    if command.iter().any(|a| a.contains('\0')) {
        return Err(bad("test.command must not contain NUL characters".into()));
    }
    if test.timeout_secs == Some(0) {
        return Err(bad("test.timeout_secs must be at least 1".into()));
    }
    let env: Vec<(String, String)> = test.env.unwrap_or_default().into_iter().collect();
    for (k, v) in &env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(bad(format!(
                "test.env: {k:?} is not a usable variable (names are non-empty without = or NUL; values without NUL)"
            )));
        }
    }
    Ok(RepoConfig {
        command,
        timeout_secs: test.timeout_secs,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(content: &[u8]) -> (tempfile::TempDir, Result<RepoConfig, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), content).unwrap();
        let r = load(dir.path());
        (dir, r)
    }

    fn err_of(content: &str) -> String {
        let (d, r) = with_file(content.as_bytes());
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(FILE_NAME), "message names the file: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(
            !msg.contains(d.path().to_str().unwrap()),
            "message names the file as the repository knows it: {msg}"
        );
        msg
    }

    #[test]
    fn absent_file_gives_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path()).unwrap();
        assert_eq!(c.command, DEFAULT_COMMAND.map(String::from).to_vec());
        assert_eq!(c, RepoConfig::default());
    }

    #[test]
    fn full_file() {
        let (_d, r) = with_file(
            br#"
[test]
command = ["python3", "-m", "pytest", "-q"]  # argv
timeout_secs = 60
env = { B = "2", A = "1" }
"#,
        );
        let c = r.unwrap();
        assert_eq!(c.command, ["python3", "-m", "pytest", "-q"]);
        assert_eq!(c.timeout_secs, Some(60));
        assert_eq!(c.env, [("A".into(), "1".into()), ("B".into(), "2".into())]);
        assert_eq!(c.timeout(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(c.timeout(Duration::from_secs(10)), Duration::from_secs(10));
    }

    #[test]
    fn partial_files_fall_back_to_defaults() {
        let (_d, r) = with_file(b"");
        assert_eq!(r.unwrap(), RepoConfig::default());
        let (_d, r) = with_file(b"[test]\ntimeout_secs = 5\n");
        let c = r.unwrap();
        assert_eq!(c.command, RepoConfig::default().command);
        assert_eq!(c.timeout(Duration::from_secs(600)), Duration::from_secs(5));
    }

    #[test]
    fn invalid_toml() {
        let msg = err_of("[test]\ncommand = [\"a\"\n");
        assert!(msg.contains("invalid at line"), "{msg}");
    }

    /// Regression: messages used to name the runner's absolute checkout
    /// path (`/var/cache/ci-runner/checkout/.ci.toml is invalid...`).
    #[test]
    fn messages_name_the_file_relative_to_the_repository() {
        let msg = err_of("[test]\ntimeout_secs = 5\ncommand = [\"a\"\n");
        assert!(msg.starts_with(".ci.toml is invalid at line 3: "), "{msg}");
        assert!(
            err_of("[test]\ncommand = []\n").starts_with(".ci.toml: test.command"),
            "bad values too"
        );
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        let msg = load(dir.path()).unwrap_err().to_string();
        assert_eq!(msg, ".ci.toml is not a regular file (it is a directory)");
        let (_d, r) = with_file(b"\xff");
        assert_eq!(r.unwrap_err().to_string(), ".ci.toml is not UTF-8 text");
    }

    #[test]
    fn wrong_types() {
        err_of("[test]\ncommand = \"make test\"\n");
        err_of("[test]\ntimeout_secs = -1\n");
    }

    #[test]
    fn empty_command() {
        assert!(err_of("[test]\ncommand = []\n").contains("test.command"));
        assert!(err_of("[test]\ncommand = [\"\"]\n").contains("test.command"));
    }

    #[test]
    fn unknown_keys() {
        assert!(err_of("[test]\ncomand = [\"x\"]\n").contains("comand"));
        assert!(err_of("[build]\nx = 1\n").contains("build"));
    }

    #[test]
    fn zero_timeout_and_bad_env() {
        err_of("[test]\ntimeout_secs = 0\n");
        err_of("[test]\nenv = { \"A=B\" = \"x\" }\n");
    }

    #[test]
    fn too_large() {
        let mut big = b"# padding\n".repeat(7000);
        big.extend_from_slice(b"[test]\n");
        let (_d, r) = with_file(&big);
        let err = r.unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains(FILE_NAME));
    }

    #[test]
    fn not_utf8() {
        let (_d, r) = with_file(b"[test]\ncommand = [\"\xff\"]\n");
        assert!(matches!(r.unwrap_err(), ConfigError::NotUtf8 { .. }));
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "token = hunter2").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join(FILE_NAME)).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::NotAFile { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"));
    }
}
