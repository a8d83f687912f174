//! Where notifications go: a URL (`--notify-url`), a command
//! (`--notify-command`) or a forge's commit statuses (`--status-forge`).
//! Each sink has a key that names it in the log, so that what it was owed
//! before a restart is still sent to it after.

use sha2::{Digest, Sha256};

use crate::core::{SinkSpec, SinkTakes};

/// A forge whose commit-status API the notifier speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Forge {
    /// `POST /repos/{owner}/{repo}/statuses/{sha}`, `Authorization: Bearer`.
    Github,
    /// Gitea and Forgejo: GitHub's path under `/api/v1`, `Authorization: token`.
    Gitea,
    /// `POST /projects/{id}/statuses/{sha}` under `/api/v4`, `PRIVATE-TOKEN`.
    Gitlab,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitea => "gitea",
            Forge::Gitlab => "gitlab",
        }
    }
}

/// Commit statuses on one forge repository.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusTarget {
    pub forge: Forge,
    /// The API's base URL, e.g. `https://api.github.com`,
    /// `https://gitea.example.com/api/v1`, `https://gitlab.example.com/api/v4`.
    pub api: String,
    /// `owner/name` (GitLab: the project's path or numeric id); `None`:
    /// the job's repository name is the forge's (several repositories).
    pub repo: Option<String>,
    /// The name the status is shown under (GitHub's and Gitea's
    /// `context`, GitLab's `name`).
    pub context: String,
    pub token: String,
}

impl std::fmt::Debug for StatusTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTarget")
            .field("forge", &self.forge)
            .field("api", &self.api)
            .field("repo", &self.repo)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// One place notifications go.
#[derive(Clone, PartialEq, Eq)]
pub enum Sink {
    /// A `POST` of the event as JSON, signed when a secret is given.
    Url {
        url: String,
        secret: Option<Vec<u8>>,
    },
    /// A program run with the event as JSON on its standard input.
    Command { argv: Vec<String> },
    /// The commit's status on a forge.
    Status(StatusTarget),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Sink {
    /// The sink's name in the log: its kind and a hash of what identifies
    /// it (not its secrets, which may be rotated without orphaning what
    /// is owed).
    pub fn key(&self) -> String {
        let (kind, identity) = match self {
            Sink::Url { url, .. } => ("url", url.clone()),
            Sink::Command { argv } => ("command", argv.join("\0")),
            Sink::Status(t) => (
                "status",
                format!(
                    "{}\0{}\0{}\0{}",
                    t.forge.as_str(),
                    t.api,
                    t.repo.as_deref().unwrap_or("*"),
                    t.context
                ),
            ),
        };
        let digest = Sha256::digest(identity.as_bytes());
        format!("{kind}:{}", crate::util::hex(&digest[..8]))
    }

    pub fn takes(&self) -> SinkTakes {
        match self {
            Sink::Url { .. } | Sink::Command { .. } => SinkTakes::Events,
            Sink::Status(_) => SinkTakes::Statuses,
        }
    }

    pub fn spec(&self) -> SinkSpec {
        SinkSpec {
            key: self.key(),
            takes: self.takes(),
        }
    }

    /// For logs: no secrets, no user part or query of a URL.
    pub fn describe(&self) -> String {
        match self {
            Sink::Url { url, .. } => format!("url {}", redact_url(url)),
            Sink::Command { argv } => {
                format!("command {}", argv.first().map_or("", String::as_str))
            }
            Sink::Status(t) => format!(
                "{} statuses of {} at {}",
                t.forge.as_str(),
                t.repo.as_deref().unwrap_or("each repository"),
                redact_url(&t.api)
            ),
        }
    }
}

/// `url` without its user part and query (either may hold a secret).
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "(not a URL)".into();
    };
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if u.query().is_some() {
        u.set_query(Some("..."));
    }
    u.to_string()
}

/// Why a sink's definition cannot be used; says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("--notify-url {url}: {why}")]
    BadUrl { url: String, why: String },
    #[error("--notify-command {command:?}: {why}")]
    BadCommand { command: String, why: String },
    #[error("--status-forge: {0}")]
    BadStatus(String),
}

/// Checks a `--notify-url`: http or https, with a host.
pub fn check_url(url: &str) -> Result<(), SinkError> {
    let bad = |why: &str| SinkError::BadUrl {
        url: redact_url(url),
        why: why.into(),
    };
    let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("only http and https URLs can be notified"));
    }
    if u.host_str().is_none() {
        return Err(bad("the URL has no host"));
    }
    if u.password().is_some() {
        return Err(bad(
            "the URL holds a password; sign the body with --notify-secret-file instead",
        ));
    }
    Ok(())
}

/// Splits a `--notify-command` the way a shell would (quotes, no
/// expansion) into its argument vector.
pub fn parse_command(command: &str) -> Result<Vec<String>, SinkError> {
    let bad = |why: &str| SinkError::BadCommand {
        command: command.chars().take(200).collect(),
        why: why.into(),
    };
    let argv = shlex::split(command).ok_or_else(|| bad("unbalanced quotes"))?;
    if argv.is_empty() {
        return Err(bad("the command is empty"));
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_ignore_secrets() {
        let a = Sink::Url {
            url: "https://hooks.example/ci".into(),
            secret: None,
        };
        let b = Sink::Url {
            url: "https://hooks.example/ci".into(),
            secret: Some(b"s3cret-s3cret-s3cret".to_vec()),
        };
        assert_eq!(a.key(), b.key());
        assert!(a.key().starts_with("url:"));
        assert_eq!(a.key().len(), "url:".len() + 16);
        let c = Sink::Url {
            url: "https://hooks.example/other".into(),
            secret: None,
        };
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        let shown = redact_url("https://user:pw@example.com/hook?token=abc");
        assert!(!shown.contains("pw") && !shown.contains("abc") && !shown.contains("user"));
        assert!(shown.starts_with("https://example.com/hook"));
        assert!(check_url("https://u:p@example.com/").is_err());
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("http://127.0.0.1:9/x").is_ok());
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            parse_command("notify-send 'CI says' --urgency=low").unwrap(),
            vec!["notify-send", "CI says", "--urgency=low"]
        );
        assert!(parse_command("  ").is_err());
        assert!(parse_command("echo 'unbalanced").is_err());
    }
}
