//! `ci-dispatcher`'s flags, shared by the binary and `ci-tools man/completions`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::util::parse_secs;

#[derive(Parser, Debug)]
#[command(
    name = "ci-dispatcher",
    version,
    about = "Owns the CI queue and its event log; assigns commits to runners."
)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = super::DEFAULT_DISPATCHER, value_name = "ADDR")]
    pub listen: String,
    /// Directory holding the event log (sled). One dispatcher per directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Seconds without a heartbeat before a runner's job is re-queued.
    #[arg(long, default_value = "10", value_parser = parse_secs, allow_negative_numbers = true, value_name = "SECS")]
    pub heartbeat_timeout: Duration,
    /// Seconds between the heartbeats of a runner that holds no job (told
    /// to each runner in its welcome). An idle runner is judged lost after
    /// this plus --heartbeat-timeout; a runner with a job beats at its own
    /// --heartbeat-interval.
    #[arg(long, default_value = crate::dispatcher::IDLE_HEARTBEAT_INTERVAL_SECS, value_parser = parse_secs, value_name = "SECS")]
    pub idle_heartbeat_interval: Duration,
    /// Store a state snapshot every this many events (restart replays only the tail).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub snapshot_every: u64,
    /// Finished jobs kept in memory; older ones are read from the on-disk
    /// history indexes (memory and restart time stay flat as history grows).
    #[arg(long, default_value_t = crate::core::state::DEFAULT_WINDOW as u32, value_parser = clap::value_parser!(u32).range(1..=10_000_000), value_name = "JOBS")]
    pub keep_in_memory: u32,
    /// The role secrets, one `ROLE: SECRET` line each for runner, observer,
    /// tool and tool-write (see the README's Security section). Without it every client is
    /// trusted and only loopback addresses are allowed.
    #[arg(long, env = "CI_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Without --token-file, listen on a non-loopback address anyway.
    #[arg(long)]
    pub insecure: bool,
    /// A named repository this dispatcher accepts commits of, and the URL
    /// (or path) runners that serve any repository clone it from;
    /// repeatable. The unnamed (default) repository is served besides.
    #[arg(long = "repository", value_parser = super::parse_named_repo, value_name = "NAME=URL")]
    pub repositories: Vec<super::NamedRepo>,
    /// Also serve the web dashboard, the JSON API (/api/v1/), /metrics and
    /// the forge webhooks (/hooks/) over HTTP on this address; port 0 picks
    /// a free port. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// The secret forge webhooks (POST /hooks/github, /hooks/gitea,
    /// /hooks/gitlab on --http) are signed with: one line, at least 16
    /// characters. Read once at start. Without it the hook URLs answer 404.
    #[arg(long, value_name = "FILE", requires = "http")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Most connections at once (runners and tools); lowered to fit under
    /// the open-file limit (whose soft limit is raised to the hard one at
    /// start, with a warning saying what to raise it to). One more is
    /// refused as busy.
    #[arg(long, default_value_t = crate::dispatcher::MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(8..), value_name = "N")]
    pub max_connections: u32,
    /// POST a JSON event to this URL for every result and when a branch
    /// turns red (`branch_broken`) or green again (`branch_fixed`);
    /// repeatable. Owed notifications survive a crash and are retried with
    /// backoff; a repeat carries the same `id`.
    #[arg(long = "notify-url", value_name = "URL")]
    pub notify_urls: Vec<String>,
    /// Sign --notify-url bodies: `X-CI-Signature: sha256=<hex HMAC-SHA256>`
    /// with the secret in this file.
    #[arg(long, value_name = "FILE")]
    pub notify_secret_file: Option<PathBuf>,
    /// Run this command (split like a shell would, never run by one) with
    /// the same JSON event on its standard input; exit status 0 means
    /// delivered. Repeatable.
    #[arg(long = "notify-command", value_name = "COMMAND")]
    pub notify_commands: Vec<String>,
    /// Set each job's commit status (pending, running, its outcome) on
    /// this forge. Needs --status-repo and --status-token-file.
    #[arg(long, value_enum, value_name = "FORGE")]
    pub status_forge: Option<crate::notify::Forge>,
    /// The forge's API base URL. Default for github:
    /// https://api.github.com; Gitea/Forgejo: https://HOST/api/v1;
    /// GitLab: https://HOST/api/v4.
    #[arg(long, value_name = "URL", requires = "status_forge")]
    pub status_api: Option<String>,
    /// The repository statuses are set on: OWNER/NAME (GitLab: the
    /// project's path, or its numeric id). With --repository and without
    /// this, each job's status goes to the forge repository of its name
    /// (name them OWNER/NAME).
    #[arg(long, value_name = "REPO", requires = "status_forge")]
    pub status_repo: Option<String>,
    /// The token statuses are set with (GitHub: `repo:status` or a
    /// fine-grained token with "Commit statuses: write"; Gitea: `write:repository`;
    /// GitLab: `api`).
    #[arg(long, value_name = "FILE", requires = "status_forge")]
    pub status_token_file: Option<PathBuf>,
    /// The name the status is shown under on the forge.
    #[arg(long, default_value = "ci", value_name = "NAME")]
    pub status_context: String,
    /// The dashboard's address as people reach it (e.g.
    /// https://ci.example.com), for links in statuses and notifications.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Seconds a new connection has to say hello (for tests).
    #[arg(long, default_value = "5", value_parser = parse_secs, hide = true, value_name = "SECS")]
    pub hello_timeout: Duration,
    /// More logs on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Why the notification flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyFlagsError {
    #[error(transparent)]
    Sink(#[from] crate::notify::sink::SinkError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is empty; put the secret or token on its first line")]
    Empty { path: String },
    #[error("{0}")]
    Missing(&'static str),
    #[error(
        "{given} notification sinks given; at most {max} (--notify-url, --notify-command and --status-forge together)"
    )]
    TooMany { given: usize, max: usize },
}

/// The first line of a secret or token file, trimmed.
fn read_secret(path: &std::path::Path) -> Result<String, NotifyFlagsError> {
    let text = std::fs::read_to_string(path).map_err(|source| NotifyFlagsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(NotifyFlagsError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(line)
}

impl Args {
    /// The sinks the flags name, with their secrets read.
    pub fn notify_config(&self) -> Result<crate::notify::NotifyConfig, NotifyFlagsError> {
        use crate::notify::sink::{Sink, StatusTarget, check_url, parse_command};
        let mut sinks = Vec::new();
        let secret = match &self.notify_secret_file {
            Some(p) => Some(read_secret(p)?.into_bytes()),
            None => None,
        };
        if secret.is_some() && self.notify_urls.is_empty() {
            return Err(NotifyFlagsError::Missing(
                "--notify-secret-file signs --notify-url bodies; give a --notify-url too",
            ));
        }
        for url in &self.notify_urls {
            check_url(url)?;
            sinks.push(Sink::Url {
                url: url.clone(),
                secret: secret.clone(),
            });
        }
        for c in &self.notify_commands {
            sinks.push(Sink::Command {
                argv: parse_command(c)?,
            });
        }
        if let Some(forge) = self.status_forge {
            let api = match (&self.status_api, forge) {
                (Some(a), _) => a.clone(),
                (None, crate::notify::Forge::Github) => "https://api.github.com".into(),
                (None, _) => {
                    return Err(NotifyFlagsError::Missing(
                        "--status-api is needed for gitea and gitlab (e.g. https://HOST/api/v1, https://HOST/api/v4)",
                    ));
                }
            };
            check_url(&api)?;
            // With named repositories, each job's status goes to the forge
            // repository of its name unless one is given for all.
            let repo = match (&self.status_repo, self.repositories.is_empty()) {
                (Some(r), _) => Some(r.clone()),
                (None, false) => None,
                (None, true) => {
                    return Err(NotifyFlagsError::Missing(
                        "--status-forge needs --status-repo OWNER/NAME",
                    ));
                }
            };
            let token_file = self.status_token_file.as_ref().ok_or(NotifyFlagsError::Missing(
                "--status-forge needs --status-token-file (a token allowed to set commit statuses)",
            ))?;
            sinks.push(Sink::Status(StatusTarget {
                forge,
                api,
                repo,
                context: self.status_context.clone(),
                token: read_secret(token_file)?,
            }));
        }
        if sinks.len() > crate::notify::MAX_SINKS {
            return Err(NotifyFlagsError::TooMany {
                given: sinks.len(),
                max: crate::notify::MAX_SINKS,
            });
        }
        if let Some(u) = &self.public_url {
            check_url(u).map_err(|_| {
                NotifyFlagsError::Missing("--public-url must be an http or https URL")
            })?;
        }
        Ok(crate::notify::NotifyConfig {
            sinks,
            dashboard: self.public_url.clone(),
        })
    }
}
