//! Forge webhooks in: `POST /hooks/github`, `/hooks/gitea` (Forgejo's
//! headers too) and `/hooks/gitlab`.
//!
//! A delivery is checked in this order, and the first failure answers:
//! hooks on at all (`--webhook-secret-file`, else 404), the body's size
//! ([`MAX_HOOK_BODY_BYTES`], else 413), the signature (constant time, else
//! 401), the content type (`application/json`, else 415), the event (a
//! push, or GitHub's ping; anything else 422), the payload (well-formed
//! JSON of the right shape with bounded strings and full hex ids, else
//! 400). Nothing is queued before every check has passed.
//!
//! A push to a branch becomes one `Commits` request, as the observer and
//! `ci-tools submit` send it: the payload's commits oldest first (the
//! newest [`MAX_PUSH_COMMITS`] of them), each with its author, subject and
//! time, and `after` as the branch's tip. It goes over an in-process
//! connection with an observer's grant ([`Local::open_observer`]): a
//! delivery is authenticated by its signature, not by a cookie or a bearer
//! secret, and may report commits and nothing else. Tag pushes and branch
//! deletions are answered 200 with what was ignored and why, and queue
//! nothing.
//!
//! [`Local::open_observer`]: crate::dispatcher::local::Local::open_observer

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::{App, WebError, api};
use crate::core::ids::validate_branch_name;
use crate::core::{CommitId, CommitInfo};
use crate::proto::{ClientMsg, ServerMsg};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Largest delivery taken: a push of [`MAX_PUSH_COMMITS`] commits with
/// their file lists fits (GitHub's payloads are capped at 25 MB, but a
/// 2,048-commit push is a few MiB); 413 beyond. Other routes keep
/// [`super::MAX_BODY_BYTES`].
pub const MAX_HOOK_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Most commits taken from one push (the newest), as GitHub lists at most.
pub const MAX_PUSH_COMMITS: usize = 2048;

/// Longest commit message taken (only its first line is kept, bounded
/// again as every subject is); a longer one is a hostile payload.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest ref, repository name, author name or e-mail, timestamp.
const MAX_FIELD_BYTES: usize = 1024;

/// Largest secret file read (a secret is one line).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Shortest secret accepted, as for the role tokens.
pub const MIN_SECRET_BYTES: usize = crate::proto::auth::MIN_SECRET_BYTES;

/// The shared secret the forges sign deliveries with
/// (`--webhook-secret-file`). Never printed, not even in a debug log.
#[derive(Clone)]
pub struct WebhookSecret(Arc<[u8]>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Why a webhook secret file cannot be used. Never carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSecretError {
    #[error(
        "cannot read the webhook secret file {}: {source}; check the path and that this user may read it",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the webhook secret file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "the webhook secret file {} is larger than {MAX_SECRET_FILE_BYTES} bytes; it should hold one line, the secret",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("the webhook secret file {} is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(
        "the webhook secret file {} is empty; put the secret the forge signs with in it (make one with `openssl rand -hex 32`)",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "the webhook secret file {} must hold exactly one line, the secret",
        path.display()
    )]
    NotOneLine { path: PathBuf },
    #[error(
        "the webhook secret in {} is shorter than {MIN_SECRET_BYTES} characters (make one with `openssl rand -hex 32`)",
        path.display()
    )]
    TooShort { path: PathBuf },
    #[error(
        "the webhook secret in {} contains spaces or control characters",
        path.display()
    )]
    Whitespace { path: PathBuf },
}

impl WebhookSecret {
    /// Reads the secret: one line (surrounding whitespace and a final
    /// newline are not part of it), at least [`MIN_SECRET_BYTES`] long,
    /// without spaces or control characters.
    pub fn from_file(path: &Path) -> Result<WebhookSecret, WebhookSecretError> {
        use std::io::Read;
        let unreadable = |source| WebhookSecretError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(WebhookSecretError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(WebhookSecretError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| WebhookSecretError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        Self::from_text(&text).map_err(|p| p.at(path))
    }

    fn from_text(text: &str) -> Result<WebhookSecret, SecretProblem> {
        let secret = text.trim();
        if secret.is_empty() {
            return Err(SecretProblem::Empty);
        }
        if secret.lines().count() != 1 {
            return Err(SecretProblem::NotOneLine);
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SecretProblem::Whitespace);
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretProblem::TooShort);
        }
        Ok(WebhookSecret(secret.as_bytes().into()))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// What is wrong with a secret's text (before the file is named).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SecretProblem {
    Empty,
    NotOneLine,
    TooShort,
    Whitespace,
}

impl SecretProblem {
    fn at(self, path: &Path) -> WebhookSecretError {
        let path = path.to_path_buf();
        match self {
            SecretProblem::Empty => WebhookSecretError::Empty { path },
            SecretProblem::NotOneLine => WebhookSecretError::NotOneLine { path },
            SecretProblem::TooShort => WebhookSecretError::TooShort { path },
            SecretProblem::Whitespace => WebhookSecretError::Whitespace { path },
        }
    }
}

/// Which forge's headers and payload a route expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    /// Gitea, and Forgejo (which sends Gitea's headers and its own).
    Gitea,
    GitLab,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::Gitea => "gitea",
            Forge::GitLab => "gitlab",
        }
    }

    /// The headers that carry the proof, in the order looked at.
    fn signature_headers(self) -> &'static [&'static str] {
        match self {
            Forge::GitHub => &["x-hub-signature-256"],
            Forge::Gitea => &["x-forgejo-signature", "x-gitea-signature"],
            Forge::GitLab => &["x-gitlab-token"],
        }
    }

    /// The headers that name the event, in the order looked at.
    fn event_headers(self) -> &'static [&'static str] {
        match self {
            Forge::GitHub => &["x-github-event"],
            Forge::Gitea => &["x-forgejo-event", "x-gitea-event"],
            Forge::GitLab => &["x-gitlab-event"],
        }
    }

    /// What the forge calls the push event (what to select in its form).
    fn push_event(self) -> &'static str {
        match self {
            Forge::GitHub | Forge::Gitea => "push",
            Forge::GitLab => "Push Hook",
        }
    }

    fn event(self, name: &str) -> HookEvent {
        match (self, name) {
            (Forge::GitHub | Forge::Gitea, "push") | (Forge::GitLab, "Push Hook") => {
                HookEvent::Push
            }
            (Forge::GitHub, "ping") => HookEvent::Ping,
            _ => HookEvent::Other,
        }
    }
}

/// What a delivery's event header says, as far as this server cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HookEvent {
    Push,
    /// GitHub's hello when a hook is made or tested.
    Ping,
    Other,
}

/// Why a signature was refused (every case is a 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadSignature {
    Missing,
    /// Not `sha256=<64 hex digits>` (GitHub) or 64 hex digits (Gitea).
    Malformed,
    Wrong,
}

/// Why a delivery was refused; its status is decided on the variant.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "webhooks are off on this dispatcher: start ci-dispatcher with --webhook-secret-file FILE (the secret the forge signs deliveries with)"
    )]
    Off,
    #[error(
        "the delivery is larger than {} MiB; push fewer commits at once (every commit still reaches the dispatcher through the observer)",
        MAX_HOOK_BODY_BYTES / (1024 * 1024)
    )]
    TooLarge,
    #[error("the delivery's body could not be read: {0}")]
    Body(String),
    #[error("{}", signature_message(*forge, *why))]
    Signature { forge: Forge, why: BadSignature },
    #[error("the content type is {given:?}; set the webhook's content type to application/json")]
    ContentType { given: String },
    #[error(
        "no {header} header: this endpoint takes {forge} webhook deliveries; check the webhook's URL",
        header = forge.event_headers().join(" or "),
        forge = forge.as_str()
    )]
    NoEvent { forge: Forge },
    #[error(
        "event {event:?} is not handled here: select only the {push:?} event for this webhook",
        push = forge.push_event()
    )]
    Unsupported { forge: Forge, event: String },
    #[error("the payload is not a {forge} push: {why}", forge = forge.as_str())]
    Payload { forge: Forge, why: String },
    #[error("branch {branch:?} cannot be tested: {why}")]
    Branch { branch: String, why: String },
    #[error(
        "this dispatcher has no repository {name:?}: start it with --repository {name}=URL (it has: {known})"
    )]
    UnknownRepository { name: String, known: String },
    #[error(transparent)]
    Dispatcher(#[from] WebError),
}

/// The dispatcher's repository a push goes to: with no named
/// repositories, its default one whatever the payload says; else the one
/// named exactly as the payload's full name (`owner/name`), or as its last
/// component (`name`); a payload that names none goes to the default one.
pub fn repository_for(
    named: &[String],
    payload: Option<&str>,
) -> Result<Option<String>, HookError> {
    let Some(full) = payload.filter(|_| !named.is_empty()) else {
        return Ok(None);
    };
    let last = full.rsplit('/').next().unwrap_or(full);
    named
        .iter()
        .find(|n| n.as_str() == full)
        .or_else(|| named.iter().find(|n| n.as_str() == last))
        .map(|n| Some(n.clone()))
        .ok_or_else(|| HookError::UnknownRepository {
            name: full.to_string(),
            known: named.join(", "),
        })
}

fn signature_message(forge: Forge, why: BadSignature) -> String {
    let header = forge.signature_headers().join(" or ");
    let what = match forge {
        Forge::GitLab => "secret token",
        Forge::GitHub | Forge::Gitea => "signature",
    };
    match why {
        BadSignature::Missing => format!(
            "no {header} header: set the webhook's secret to the one in this dispatcher's --webhook-secret-file"
        ),
        BadSignature::Malformed => format!(
            "the {header} header is not a {what} this endpoint understands; check that the webhook is a {} one",
            forge.as_str()
        ),
        BadSignature::Wrong => format!(
            "wrong {what} in {header}: the webhook's secret must be the one in this dispatcher's --webhook-secret-file"
        ),
    }
}

impl HookError {
    pub fn status(&self) -> StatusCode {
        match self {
            HookError::Off => StatusCode::NOT_FOUND,
            HookError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HookError::Body(_) | HookError::NoEvent { .. } | HookError::Payload { .. } => {
                StatusCode::BAD_REQUEST
            }
            HookError::Signature { .. } => StatusCode::UNAUTHORIZED,
            HookError::ContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HookError::Unsupported { .. }
            | HookError::Branch { .. }
            | HookError::UnknownRepository { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            HookError::Dispatcher(e) => e.status(),
        }
    }

    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({ "error": self.to_string() });
        if let HookError::Unsupported { event, .. } = &self {
            body["event"] = json!(event);
        }
        if let HookError::UnknownRepository { name, .. } = &self {
            body["repository"] = json!(name);
        }
        (status, axum::Json(body)).into_response()
    }
}

/// A push as the payload tells it, whichever forge sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The repository the payload names (`repository.full_name`, GitLab's
    /// `project.path_with_namespace`). A dispatcher serving one repository
    /// takes pushes for it whatever the payload names it; once it serves
    /// several, this picks the one.
    pub repository: Option<String>,
    /// The full ref pushed (`refs/heads/main`, `refs/tags/v1`).
    pub git_ref: String,
    pub change: RefChange,
    /// The ref's new value (`after`); `None` when the ref was deleted.
    pub after: Option<CommitId>,
    /// The commits the payload lists, oldest first, the newest
    /// [`MAX_PUSH_COMMITS`] of them, each once.
    pub commits: Vec<(CommitId, CommitInfo)>,
}

/// What the push did to its ref.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefChange {
    Created,
    Updated,
    /// A push that rewrote history (`forced`; GitHub and Gitea say so).
    Forced,
    Deleted,
}

/// What a push becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// One `Commits` report, as the observer would send it.
    Report {
        branch: String,
        commits: Vec<(CommitId, CommitInfo)>,
        tip: CommitId,
    },
    /// Nothing to queue; the answer says why.
    Ignore(&'static str),
}

impl Push {
    /// What the observer would report for this push, as far as the payload
    /// tells: the listed commits, oldest first, ending at the tip (`after`,
    /// which moves the branch, also after a forced push); a new branch
    /// reports its tip alone, as the observer and the post-receive hook
    /// do; a forced push back to an older commit lists none and only moves
    /// the tip. Tags and deletions queue nothing.
    pub fn plan(self) -> Result<Plan, HookError> {
        let Some(branch) = self.git_ref.strip_prefix("refs/heads/") else {
            return Ok(Plan::Ignore(
                "not a branch (a tag or another ref): only branch pushes are tested",
            ));
        };
        let Some(tip) = self.after.filter(|_| self.change != RefChange::Deleted) else {
            return Ok(Plan::Ignore(
                "the branch was deleted: nothing to test (its results are kept)",
            ));
        };
        validate_branch_name(branch).map_err(|e| HookError::Branch {
            branch: branch.chars().take(120).collect(),
            why: e.rule.to_string(),
        })?;
        let mut commits = self.commits;
        if self.change == RefChange::Created {
            // As the observer (and the post-receive hook): a new branch is
            // its tip alone, whatever the forge lists with it.
            let info = commits
                .iter()
                .find(|c| c.0 == tip)
                .map(|c| c.1.clone())
                .unwrap_or_default();
            commits = vec![(tip, info)];
        } else if commits.is_empty() {
        } else if commits.last().map(|c| c.0) != Some(tip) {
            // The tip is always the newest commit reported when any is.
            commits.retain(|c| c.0 != tip);
            commits.push((tip, CommitInfo::default()));
            if commits.len() > MAX_PUSH_COMMITS {
                commits.remove(0);
            }
        }
        Ok(Plan::Report {
            branch: branch.to_string(),
            commits,
            tip,
        })
    }
}

// The payloads, as far as read. Unknown fields are ignored; every string
// is bounded after parsing (the body's own limit bounds them before).

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: Option<String>,
    after: String,
    #[serde(default)]
    created: Option<bool>,
    #[serde(default)]
    deleted: Option<bool>,
    #[serde(default)]
    forced: Option<bool>,
    #[serde(default)]
    commits: Option<Vec<PayloadCommit>>,
    /// GitHub and Gitea.
    #[serde(default)]
    repository: Option<Repository>,
    /// GitLab.
    #[serde(default)]
    project: Option<Project>,
}

#[derive(Deserialize)]
struct PayloadCommit {
    id: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    author: Option<Person>,
}

#[derive(Deserialize)]
struct Person {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    #[serde(default)]
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    #[serde(default)]
    path_with_namespace: Option<String>,
}

/// The newest commit a forge lists first (Gitea, Forgejo) or last (GitHub,
/// GitLab), when the tip does not say which end is newest.
fn newest_first(forge: Forge) -> bool {
    matches!(forge, Forge::Gitea)
}

/// Reads a push payload.
pub fn parse_push(forge: Forge, body: &[u8]) -> Result<Push, HookError> {
    let bad = |why: String| HookError::Payload { forge, why };
    let p: Payload = serde_json::from_slice(body).map_err(|e| bad(json_problem(&e)))?;
    let bounded = |what: &str, s: &str, max: usize| {
        if s.len() > max {
            Err(bad(format!("{what} is {} bytes; at most {max}", s.len())))
        } else {
            Ok(())
        }
    };
    bounded("ref", &p.git_ref, MAX_FIELD_BYTES)?;
    let id = |what: &str, s: &str| CommitId::parse(s).map_err(|e| bad(format!("{what}: {e}")));
    let after = id("after", &p.after)?;
    let before = match &p.before {
        Some(b) => Some(id("before", b)?),
        None => None,
    };
    let repository = match (&p.repository, &p.project) {
        (Some(r), _) if r.full_name.is_some() => r.full_name.clone(),
        (_, Some(pr)) => pr.path_with_namespace.clone(),
        _ => None,
    };
    if let Some(r) = &repository {
        bounded("the repository's name", r, MAX_FIELD_BYTES)?;
    }
    let change = if after.is_zero() || p.deleted == Some(true) {
        RefChange::Deleted
    } else if before.is_some_and(|b| b.is_zero()) || p.created == Some(true) {
        RefChange::Created
    } else if p.forced == Some(true) {
        RefChange::Forced
    } else {
        RefChange::Updated
    };
    let listed = p.commits.unwrap_or_default();
    let mut commits: Vec<(CommitId, CommitInfo)> = Vec::with_capacity(listed.len());
    for (i, c) in listed.iter().enumerate() {
        let at = |what: &str| format!("commits[{i}].{what}");
        let commit = id(&at("id"), &c.id)?;
        if commit.is_zero() {
            return Err(bad(format!(
                "{}: the all-zero id is not a commit",
                at("id")
            )));
        }
        let message = c.message.as_deref().unwrap_or("");
        bounded(&at("message"), message, MAX_MESSAGE_BYTES)?;
        let (name, email) = match &c.author {
            Some(a) => (a.name.as_deref(), a.email.as_deref()),
            None => (None, None),
        };
        for (what, s) in [("author.name", name), ("author.email", email)] {
            bounded(&at(what), s.unwrap_or(""), MAX_FIELD_BYTES)?;
        }
        let timestamp = c.timestamp.as_deref().unwrap_or("");
        bounded(&at("timestamp"), timestamp, MAX_FIELD_BYTES)?;
        commits.push((
            commit,
            CommitInfo {
                author: author_line(name, email),
                subject: subject_of(message),
                time_ms: rfc3339_ms(timestamp).unwrap_or(0),
            },
        ));
    }
    // Oldest first: the tip says which end is newest when it is at one.
    let reverse = match (commits.first(), commits.last()) {
        (Some(first), Some(last)) if commits.len() > 1 => {
            if last.0 == after {
                false
            } else if first.0 == after {
                true
            } else {
                newest_first(forge)
            }
        }
        _ => false,
    };
    if reverse {
        commits.reverse();
    }
    let mut seen = std::collections::HashSet::with_capacity(commits.len());
    commits.retain(|c| seen.insert(c.0));
    if commits.len() > MAX_PUSH_COMMITS {
        commits.drain(..commits.len() - MAX_PUSH_COMMITS);
    }
    Ok(Push {
        repository,
        git_ref: p.git_ref,
        change,
        after: (!after.is_zero()).then_some(after),
        commits,
    })
}

/// What serde_json says is wrong, with where, without quoting the input.
fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "the JSON ends too early (truncated?)".to_string(),
        Category::Syntax => "not well-formed JSON".to_string(),
        Category::Data => {
            let mut s = e.to_string();
            // serde's data errors name the field and the type wanted; keep
            // the first line and bound it.
            if let Some(at) = s.find(" at line ") {
                s.truncate(at);
            }
            s.chars().take(200).collect()
        }
        Category::Io => "the body could not be read".to_string(),
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// `Name <email>` as git shows an author.
fn author_line(name: Option<&str>, email: Option<&str>) -> String {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    let email = email.map(str::trim).filter(|e| !e.is_empty());
    let s = match (name, email) {
        (Some(n), Some(e)) => format!("{n} <{e}>"),
        (Some(n), None) => n.to_string(),
        (None, Some(e)) => format!("<{e}>"),
        (None, None) => String::new(),
    };
    bounded_chars(s, CommitInfo::MAX_AUTHOR)
}

/// The message's first line, as git's summary (bounded).
fn subject_of(message: &str) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    bounded_chars(first.to_string(), CommitInfo::MAX_SUBJECT)
}

/// `s` cut to at most `max` bytes on a character boundary.
fn bounded_chars(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An RFC 3339 time (GitHub's, Gitea's and GitLab's `timestamp`) in
/// milliseconds since the epoch; `None` when it is not one or is before
/// 1970.
fn rfc3339_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Checks the delivery's proof in constant time.
fn verify(
    forge: Forge,
    secret: &WebhookSecret,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), BadSignature> {
    let given = forge
        .signature_headers()
        .iter()
        .find_map(|h| headers.get(*h))
        .ok_or(BadSignature::Missing)?;
    let given = given.to_str().map_err(|_| BadSignature::Malformed)?.trim();
    match forge {
        Forge::GitLab => {
            if super::auth::same_bytes(given.as_bytes(), &secret.0) {
                Ok(())
            } else {
                Err(BadSignature::Wrong)
            }
        }
        Forge::GitHub | Forge::Gitea => {
            let hex = match forge {
                Forge::GitHub => given
                    .strip_prefix("sha256=")
                    .ok_or(BadSignature::Malformed)?,
                _ => given,
            };
            let tag = decode_hex(hex).ok_or(BadSignature::Malformed)?;
            if tag.len() != 32 {
                return Err(BadSignature::Malformed);
            }
            let mut mac = secret.mac();
            mac.update(body);
            mac.verify_slice(&tag).map_err(|_| BadSignature::Wrong)
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((val(p[0])? << 4) | val(p[1])?))
        .collect()
}

/// Whether the content type is JSON (`application/json`, parameters such
/// as `charset` allowed).
fn is_json(headers: &HeaderMap) -> Result<(), HookError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = given.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(HookError::ContentType {
            given: given.chars().take(100).collect(),
        })
    }
}

/// Reads the body up to [`MAX_HOOK_BODY_BYTES`].
async fn read_body(body: Body) -> Result<bytes::Bytes, HookError> {
    axum::body::to_bytes(body, MAX_HOOK_BODY_BYTES)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                HookError::TooLarge
            } else {
                HookError::Body(e.to_string())
            }
        })
}

/// `POST /hooks/github`.
pub async fn github(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    receive(&app, Forge::GitHub, &headers, body).await
}

/// `POST /hooks/gitea` (Gitea and Forgejo).
pub async fn gitea(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    receive(&app, Forge::Gitea, &headers, body).await
}

/// `POST /hooks/gitlab`.
pub async fn gitlab(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    receive(&app, Forge::GitLab, &headers, body).await
}

/// Any other method on a hook's URL.
pub async fn not_post() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST")],
        axum::Json(json!({
            "error": "webhook URLs take POST deliveries from a forge; enter this URL in the forge's webhook settings"
        })),
    )
        .into_response()
}

/// `POST /hooks/<anything else>`.
pub async fn unknown_forge() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "error": "no such webhook: use /hooks/github, /hooks/gitea (Gitea and Forgejo) or /hooks/gitlab"
        })),
    )
        .into_response()
}

async fn receive(app: &App, forge: Forge, headers: &HeaderMap, body: Body) -> Response {
    match deliver(app, forge, headers, body).await {
        Ok(r) => r,
        Err(e) => {
            warn!(forge = forge.as_str(), status = e.status().as_u16(), error = %e, "webhook delivery refused");
            e.into_response()
        }
    }
}

async fn deliver(
    app: &App,
    forge: Forge,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, HookError> {
    let secret = app.ctx.webhook_secret.as_ref().ok_or(HookError::Off)?;
    let body = read_body(body).await?;
    verify(forge, secret, headers, &body).map_err(|why| HookError::Signature { forge, why })?;
    is_json(headers)?;
    let event = forge
        .event_headers()
        .iter()
        .find_map(|h| headers.get(*h))
        .ok_or(HookError::NoEvent { forge })?;
    let event = String::from_utf8_lossy(event.as_bytes());
    let event = event.trim();
    match forge.event(event) {
        HookEvent::Ping => {
            return Ok((
                StatusCode::OK,
                axum::Json(json!({
                    "message": "pong: this dispatcher takes push events here",
                })),
            )
                .into_response());
        }
        HookEvent::Other => {
            return Err(HookError::Unsupported {
                forge,
                event: event.chars().take(64).collect(),
            });
        }
        HookEvent::Push => {}
    }
    let push = parse_push(forge, &body)?;
    let repository = push.repository.clone();
    // Before anything is queued: a push for a repository this dispatcher
    // lacks queues nothing.
    let target = repository_for(&app.ctx.repositories, repository.as_deref())?;
    let git_ref = push.git_ref.clone();
    let change = push.change;
    match push.plan()? {
        Plan::Ignore(why) => {
            info!(forge = forge.as_str(), repository = ?repository, git_ref = %git_ref, why, "webhook push ignored");
            Ok((
                StatusCode::OK,
                axum::Json(json!({ "ignored": why, "ref": git_ref })),
            )
                .into_response())
        }
        Plan::Report {
            branch,
            commits,
            tip,
        } => {
            let reported = commits.len();
            let (ids, infos): (Vec<CommitId>, Vec<CommitInfo>) = commits.into_iter().unzip();
            let mut conn = app
                .ctx
                .local
                .open_observer()
                .await
                .map_err(WebError::from)?;
            let answer = conn
                .request(ClientMsg::Commits {
                    repository: target.clone(),
                    branch: Some(branch.clone()),
                    commits: ids,
                    tip: Some(tip),
                    infos,
                })
                .await
                .map_err(WebError::from)?;
            let (accepted, duplicates) = match api::answer(answer)? {
                ServerMsg::CommitsAck {
                    accepted,
                    duplicates,
                } => (accepted, duplicates),
                _ => return Err(WebError::Unexpected("not a commits acknowledgement").into()),
            };
            info!(
                forge = forge.as_str(),
                repository = ?repository,
                branch = %branch,
                tip = %tip.short(),
                ?change,
                reported,
                new = accepted.len(),
                duplicates,
                "webhook push reported"
            );
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "branch": branch,
                    "repository": target,
                    "tip": tip.to_string(),
                    "reported": reported,
                    "accepted": accepted.len(),
                    "duplicates": duplicates,
                    "commits": accepted.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                })),
            )
                .into_response())
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_push_goes_to_the_repository_it_names_or_the_only_one() {
        let named = vec!["app".to_string(), "team/lib".to_string()];
        // No named repositories: the default one, whatever the payload says.
        assert_eq!(repository_for(&[], Some("o/x")).unwrap(), None);
        assert_eq!(repository_for(&named, None).unwrap(), None);
        assert_eq!(
            repository_for(&named, Some("team/lib")).unwrap().as_deref(),
            Some("team/lib")
        );
        assert_eq!(
            repository_for(&named, Some("acme/app")).unwrap().as_deref(),
            Some("app")
        );
        let e = repository_for(&named, Some("acme/nosuch")).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.to_string().contains("--repository acme/nosuch=URL"));
    }

    use super::*;
    use axum::http::HeaderValue;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    fn id(s: &str) -> CommitId {
        CommitId::parse(s).unwrap()
    }

    fn payload(before: &str, after: &str, commits: &[&str]) -> Vec<u8> {
        let commits: Vec<_> = commits
            .iter()
            .map(|c| {
                json!({"id": c, "message": format!("subject {c}\n\nbody"),
                       "timestamp": "2024-05-01T12:00:00+02:00",
                       "author": {"name": "A U Thor", "email": "a@example.com"}})
            })
            .collect();
        serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": before, "after": after,
            "commits": commits, "repository": {"full_name": "o/r"},
        }))
        .unwrap()
    }

    fn reported(plan: Plan) -> (Vec<CommitId>, CommitId) {
        match plan {
            Plan::Report { commits, tip, .. } => (commits.into_iter().map(|c| c.0).collect(), tip),
            Plan::Ignore(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn commits_come_oldest_first_whichever_end_the_forge_lists_first() {
        let p = parse_push(Forge::GitHub, &payload(A, C, &[B, C])).unwrap();
        assert_eq!(reported(p.plan().unwrap()), (vec![id(B), id(C)], id(C)));
        let p = parse_push(Forge::Gitea, &payload(A, C, &[C, B])).unwrap();
        assert_eq!(p.repository.as_deref(), Some("o/r"));
        assert_eq!(reported(p.plan().unwrap()), (vec![id(B), id(C)], id(C)));
        let p = parse_push(Forge::GitHub, &payload(A, C, &[B, C])).unwrap();
        let info = &p.commits[0].1;
        assert_eq!(info.author, "A U Thor <a@example.com>");
        assert_eq!(info.subject, format!("subject {B}"));
        assert_eq!(info.time_ms, 1_714_557_600_000);
    }

    #[test]
    fn new_branches_forced_pushes_tags_and_deletions() {
        // A new branch at a known commit: its tip, as the observer reports.
        let p = parse_push(Forge::GitHub, &payload(ZERO, B, &[])).unwrap();
        assert_eq!(p.change, RefChange::Created);
        assert_eq!(reported(p.plan().unwrap()), (vec![id(B)], id(B)));
        // A forced push back to an older commit lists nothing: the tip moves.
        let p = parse_push(Forge::GitHub, &payload(C, A, &[])).unwrap();
        assert_eq!(reported(p.plan().unwrap()), (vec![], id(A)));
        // Deleted.
        let p = parse_push(Forge::GitLab, &payload(C, ZERO, &[])).unwrap();
        assert_eq!(p.change, RefChange::Deleted);
        assert!(matches!(p.plan().unwrap(), Plan::Ignore(_)));
        // A tag.
        let mut v: serde_json::Value = serde_json::from_slice(&payload(ZERO, A, &[])).unwrap();
        v["ref"] = json!("refs/tags/v1");
        let p = parse_push(Forge::GitHub, &serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(p.plan().unwrap(), Plan::Ignore(_)));
    }

    #[test]
    fn hostile_payloads_are_refused() {
        for body in [
            &b"{\"ref\": \"refs/heads/main\", \"after\": "[..],
            b"[]",
            b"{\"ref\": 5, \"after\": \"x\"}",
            b"not json",
        ] {
            let e = parse_push(Forge::GitHub, body).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
        }
        let e = parse_push(Forge::GitHub, &payload(A, "zz", &[])).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_push(Forge::GitHub, &payload(A, B, &["nothex"])).unwrap_err();
        assert!(e.to_string().contains("commits[0].id"), "{e}");
        let mut v: serde_json::Value = serde_json::from_slice(&payload(A, B, &[B])).unwrap();
        v["commits"][0]["message"] = json!("x".repeat(MAX_MESSAGE_BYTES + 1));
        let e = parse_push(Forge::GitHub, &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.to_string().contains("commits[0].message"), "{e}");
    }

    #[test]
    fn signatures_are_checked() {
        let secret = WebhookSecret::from_text("0123456789abcdef0123\n").unwrap();
        let body = b"{}";
        let mut mac = secret.mac();
        mac.update(body);
        let hex = crate::util::hex(&mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        assert_eq!(
            verify(Forge::GitHub, &secret, &h, body),
            Err(BadSignature::Missing)
        );
        h.insert(
            "x-hub-signature-256",
            HeaderValue::from_str(&format!("sha256={hex}")).unwrap(),
        );
        assert_eq!(verify(Forge::GitHub, &secret, &h, body), Ok(()));
        assert_eq!(
            verify(Forge::GitHub, &secret, &h, b"{} "),
            Err(BadSignature::Wrong)
        );
        h.insert("x-hub-signature-256", HeaderValue::from_str(&hex).unwrap());
        assert_eq!(
            verify(Forge::GitHub, &secret, &h, body),
            Err(BadSignature::Malformed)
        );
        h.insert("x-gitea-signature", HeaderValue::from_str(&hex).unwrap());
        assert_eq!(verify(Forge::Gitea, &secret, &h, body), Ok(()));
        h.insert(
            "x-gitlab-token",
            HeaderValue::from_static("0123456789abcdef0123"),
        );
        assert_eq!(verify(Forge::GitLab, &secret, &h, body), Ok(()));
        h.insert(
            "x-gitlab-token",
            HeaderValue::from_static("0123456789abcdef012"),
        );
        assert_eq!(
            verify(Forge::GitLab, &secret, &h, body),
            Err(BadSignature::Wrong)
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert_eq!(
            WebhookSecret::from_text(" \n").unwrap_err(),
            SecretProblem::Empty
        );
        assert_eq!(
            WebhookSecret::from_text("short").unwrap_err(),
            SecretProblem::TooShort
        );
        assert_eq!(
            WebhookSecret::from_text("0123456789abcdef\n0123456789abcdef").unwrap_err(),
            SecretProblem::NotOneLine
        );
        assert_eq!(
            WebhookSecret::from_text("0123456789 abcdef").unwrap_err(),
            SecretProblem::Whitespace
        );
        assert_eq!(
            format!(
                "{:?}",
                WebhookSecret::from_text("0123456789abcdef").unwrap()
            ),
            "WebhookSecret(..)"
        );
    }
}
