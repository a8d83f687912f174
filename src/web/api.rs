//! Reads and actions through local connections to the shell, and the JSON
//! API under `/api/v1/` that serves them. The pages call the same
//! functions (`commits`, `commit_detail`, `runners`, `history`), so a page
//! and the API never disagree.
//!
//! JSON shapes: a commit is the `ResultView` that `ci-tools results
//! --json` prints (same serializer, same field names); history records
//! are `ci-tools replay --json`'s objects; errors are
//! `{"error": "..."}` with a status decided on the refusal's `ErrorCode`.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::auth::{self, Access};
use super::{App, WebError};
use crate::core::ids::MAX_REPOSITORY_NAME_BYTES;
use crate::core::{CommitId, Event, JobRef, Record};
use crate::proto::auth::Grant;
use crate::proto::{
    ClientMsg, MAX_OUTPUT_BYTES, MIN_PREFIX_HEX, ResultView, RunnerView, ServerMsg, StatusView,
};
use crate::tools::events;

/// Commits per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// Most commits one page may ask for.
pub const MAX_LIMIT: usize = 500;
/// History records per page.
pub const HISTORY_PAGE: usize = 200;
/// Most history records one page may ask for.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Most branches the filter offers.
const MAX_BRANCHES_SHOWN: usize = 500;
/// How long a page waits for a job's output so far.
const OUTPUT_WAIT: Duration = Duration::from_secs(5);
/// Earlier results looked at to find the branch's previous outcome.
const PREVIOUS_LOOKED_AT: u32 = 20;

/// One request over a fresh local connection; a refusal becomes
/// [`WebError::Refused`] with its code.
pub async fn ask(app: &App, grant: Grant, msg: ClientMsg) -> Result<ServerMsg, WebError> {
    let mut conn = app.ctx.local.open(grant).await?;
    answer(conn.request(msg).await?)
}

/// A refusal as [`WebError::Refused`]; any other answer as it is.
pub(super) fn answer(msg: ServerMsg) -> Result<ServerMsg, WebError> {
    match msg {
        ServerMsg::Error { code, message, .. } => Err(WebError::Refused { code, message }),
        m => Ok(m),
    }
}

/// A commit id as given in a path: a full id, or a prefix of at least
/// [`MIN_PREFIX_HEX`] hex digits. `Ok(None)`: a prefix, to be resolved.
pub fn parse_sha(given: &str) -> Result<Option<CommitId>, WebError> {
    if let Ok(c) = CommitId::parse(given) {
        return Ok(Some(c));
    }
    let hex =
        (MIN_PREFIX_HEX..64).contains(&given.len()) && given.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        Ok(None)
    } else {
        Err(WebError::BadRequest(format!(
            "{:?} is not a commit id: give the full id, or at least {MIN_PREFIX_HEX} of its first hexadecimal digits",
            given.chars().take(80).collect::<String>()
        )))
    }
}

/// The commit a path names (a prefix resolved by the dispatcher).
pub async fn resolve(app: &App, grant: Grant, given: &str) -> Result<CommitId, WebError> {
    if let Some(c) = parse_sha(given)? {
        return Ok(c);
    }
    match ask(
        app,
        grant,
        ClientMsg::Resolve {
            prefix: given.to_ascii_lowercase(),
        },
    )
    .await?
    {
        ServerMsg::Resolved { commit } => Ok(commit),
        other => Err(WebError::Unexpected(other.kind())),
    }
}

/// A page cursor: the job id the next page starts before (decimal,
/// positive).
pub fn parse_cursor(s: &str) -> Result<u64, WebError> {
    let bad = || WebError::BadRequest(format!("{:?} is not a cursor", trunc(s)));
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad()),
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A positive number no larger than `max`, or 400.
fn parse_limit(s: &str, max: usize) -> Result<usize, WebError> {
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) && s.len() <= 6 => Ok(n),
        _ => Err(WebError::BadRequest(format!(
            "{:?} is not a limit: a number from 1 to {max}",
            trunc(s)
        ))),
    }
}

/// The outcomes (and states) a filter may name.
pub const OUTCOMES: [&str; 7] = [
    "pending",
    "running",
    "pass",
    "fail",
    "timeout",
    "error",
    "cancelled",
];

/// `?branch=&outcome=&repo=&limit=&cursor=`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitsQuery {
    pub branch: Option<String>,
    pub outcome: Option<String>,
    /// A named repository (`repo=`); ignored by a dispatcher without
    /// named repositories.
    pub repo: Option<String>,
    pub limit: usize,
    pub cursor: Option<u64>,
}

impl CommitsQuery {
    /// From the query string's pairs; an empty value means "any". `repo`
    /// is ignored by a dispatcher without named repositories.
    pub fn parse(q: &HashMap<String, String>) -> Result<CommitsQuery, WebError> {
        let given = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let branch = given("branch").map(str::to_string);
        if branch.as_ref().is_some_and(|b| b.len() > 255) {
            return Err(WebError::BadRequest(
                "a branch name is at most 255 bytes".into(),
            ));
        }
        let outcome = match given("outcome") {
            Some(o) if OUTCOMES.contains(&o) => Some(o.to_string()),
            Some(o) => {
                return Err(WebError::BadRequest(format!(
                    "{:?} is not an outcome: {}",
                    trunc(o),
                    OUTCOMES.join(", ")
                )));
            }
            None => None,
        };
        let limit = match given("limit") {
            Some(l) => parse_limit(l, MAX_LIMIT)?,
            None => DEFAULT_LIMIT,
        };
        let cursor = given("cursor").map(parse_cursor).transpose()?;
        let repo = given("repo").map(str::to_string);
        if repo
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REPOSITORY_NAME_BYTES)
        {
            return Err(WebError::BadRequest(format!(
                "a repository name is at most {MAX_REPOSITORY_NAME_BYTES} bytes"
            )));
        }
        Ok(CommitsQuery {
            branch,
            outcome,
            repo,
            limit,
            cursor,
        })
    }

    /// The repository asked for, if the dispatcher has named ones (else
    /// `repo=` is ignored).
    pub fn repository<'a>(&'a self, app: &App) -> Option<&'a str> {
        self.repo
            .as_deref()
            .filter(|_| !app.ctx.repositories.is_empty())
    }
}

/// A page of commits, newest first; `next` is the cursor of the next page.
#[derive(Serialize)]
pub struct CommitsPage {
    pub commits: Vec<ResultView>,
    pub next: Option<String>,
}

pub async fn commits_page(
    app: &App,
    grant: Grant,
    q: &CommitsQuery,
) -> Result<CommitsPage, WebError> {
    let mut conn = app.ctx.local.open(grant).await?;
    let repository = q.repository(app).map(str::to_string);
    let mut all: Vec<ResultView> = Vec::new();
    let mut before = q.cursor;
    let mut next = None;
    while all.len() < q.limit {
        let msg = ClientMsg::Results {
            commit: None,
            before,
            limit: (q.limit - all.len()) as u32,
            branch: q.branch.clone(),
            outcome: q.outcome.clone(),
            repository: repository.clone(),
        };
        match answer(conn.request(msg).await?)? {
            ServerMsg::Results { results, next: n } => {
                all.extend(results);
                next = n;
                match n {
                    Some(n) => before = Some(n),
                    None => break,
                }
            }
            other => return Err(WebError::Unexpected(other.kind())),
        }
    }
    // A full page may be the last one: look one further to say so.
    if next.is_some() && all.len() == q.limit {
        let probe = ClientMsg::Results {
            commit: None,
            before,
            limit: 1,
            branch: q.branch.clone(),
            outcome: q.outcome.clone(),
            repository,
        };
        if let ServerMsg::Results { results, .. } = answer(conn.request(probe).await?)?
            && results.is_empty()
        {
            next = None;
        }
    }
    Ok(CommitsPage {
        commits: all,
        next: next.map(|n| n.to_string()),
    })
}

/// Branch names the dispatcher knows (the filter's choices): the named
/// repository's, or with none named every repository's (the default one's
/// and each of `repositories`), sorted, each once, at most
/// [`MAX_BRANCHES_SHOWN`].
pub async fn branches(
    app: &App,
    grant: Grant,
    repo: Option<&str>,
) -> Result<Vec<String>, WebError> {
    let mut conn = app.ctx.local.open(grant).await?;
    let asked: Vec<Option<String>> = match repo {
        Some(r) => vec![Some(r.to_string())],
        None => std::iter::once(None)
            .chain(app.ctx.repositories.iter().cloned().map(Some))
            .collect(),
    };
    let mut out = std::collections::BTreeSet::new();
    for repository in asked {
        if out.len() >= MAX_BRANCHES_SHOWN {
            break;
        }
        match answer(
            conn.request(ClientMsg::GetTips {
                repository,
                after: None,
            })
            .await?,
        )? {
            ServerMsg::Tips { tips, .. } => out.extend(tips.into_iter().map(|(b, _)| b)),
            other => return Err(WebError::Unexpected(other.kind())),
        }
    }
    Ok(out.into_iter().take(MAX_BRANCHES_SHOWN).collect())
}

/// "This commit broke its branch": the previous finished commit on the
/// branch passed, and this one did not.
#[derive(Clone, Debug, Serialize)]
pub struct Broke {
    pub branch: String,
    pub previous: CommitId,
}

/// One commit with everything its page shows.
#[derive(Serialize)]
pub struct CommitDetail {
    #[serde(flatten)]
    pub view: ResultView,
    /// The attempt's command: the first output line starting with `$ `.
    pub command: Option<String>,
    pub broke: Option<Broke>,
    /// The job's records, as `replay --json` prints them.
    pub timeline: Vec<Value>,
    /// More records than a timeline carries.
    pub timeline_more: bool,
    #[serde(skip)]
    pub records: Vec<Record>,
    /// The output so far (all of it once the job ended).
    #[serde(skip)]
    pub output: Vec<u8>,
    /// The byte offset after `output` in its attempt's stream.
    #[serde(skip)]
    pub output_end: u64,
    /// Retention removed the output (when, why, how big): the JSON's
    /// `output_pruned` (`null` when the output is there, or empty).
    #[serde(serialize_with = "pruned_json")]
    pub output_pruned: Option<crate::core::PrunedOutput>,
}

fn pruned_json<S: serde::Serializer>(
    p: &Option<crate::core::PrunedOutput>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    p.as_ref().map(events::pruned_json).serialize(s)
}

/// The command line a runner writes first: `$ ARGV`.
pub fn command_of(output: &[u8]) -> Option<String> {
    let head = &output[..output.len().min(64 * 1024)];
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| l.strip_prefix("$ "))
        .map(|c| super::html::strip_ansi(c).trim_end().to_string())
}

pub async fn commit_detail(
    app: &App,
    grant: Grant,
    commit: CommitId,
) -> Result<CommitDetail, WebError> {
    let mut conn = app.ctx.local.open(grant).await?;
    let view = match answer(
        conn.request(ClientMsg::Results {
            commit: Some(commit),
            before: None,
            limit: 1,
            branch: None,
            outcome: None,
            repository: None,
        })
        .await?,
    )? {
        ServerMsg::Results { mut results, .. } => match results.pop() {
            Some(v) => v,
            None => {
                return Err(WebError::Refused {
                    code: crate::proto::ErrorCode::NotFound,
                    message: format!("the dispatcher has not seen commit {commit}"),
                });
            }
        },
        other => return Err(WebError::Unexpected(other.kind())),
    };
    let (records, timeline_more) = match answer(conn.request(ClientMsg::History { commit }).await?)?
    {
        ServerMsg::History { records, more, .. } => (records, more),
        other => return Err(WebError::Unexpected(other.kind())),
    };
    let broke = match (&view.branch, view.outcome.as_str()) {
        (Some(branch), "fail" | "error" | "timeout") => {
            let msg = ClientMsg::Results {
                commit: None,
                before: Some(view.job),
                limit: PREVIOUS_LOOKED_AT,
                branch: Some(branch.clone()),
                outcome: None,
                // A branch is one repository's.
                repository: view.repository.clone(),
            };
            match answer(conn.request(msg).await?)? {
                ServerMsg::Results { results, .. } => results
                    .into_iter()
                    .find(|r| r.is_final() && r.outcome != "cancelled")
                    .filter(|r| r.outcome == "pass")
                    .map(|r| Broke {
                        branch: branch.clone(),
                        previous: r.commit,
                    }),
                other => return Err(WebError::Unexpected(other.kind())),
            }
        }
        _ => None,
    };
    let (output, output_end, output_pruned) = output_so_far(&mut conn, commit).await?;
    let mut view = view;
    if view.started_at_ms.is_none() && view.is_final() {
        // The view carries the start only while the job runs; a finished
        // job's last hand-out is in its timeline.
        view.started_at_ms = records
            .iter()
            .rev()
            .find(|r| matches!(r.event, Event::JobAssigned { .. }))
            .map(|r| r.at_ms);
    }
    Ok(CommitDetail {
        command: command_of(&output),
        broke,
        timeline: records.iter().map(events::to_json).collect(),
        timeline_more,
        records,
        output,
        output_end,
        output_pruned,
        view,
    })
}

/// The output of the commit's latest attempt as it is now: all of it when
/// the job ended, what the dispatcher holds while it runs. Uses `Follow`
/// and stops at its first `Update` (the job goes on) or `Ended`. The
/// third value: retention removed the output (then there is none).
async fn output_so_far(
    conn: &mut crate::dispatcher::local::LocalConn,
    commit: CommitId,
) -> Result<(Vec<u8>, u64, Option<crate::core::PrunedOutput>), WebError> {
    conn.send(ClientMsg::Follow { commit }).await?;
    let mut pruned = None;
    let mut out: Vec<u8> = Vec::new();
    let mut attempt: Option<JobRef> = None;
    let mut end = 0u64;
    let collect = async {
        loop {
            match conn.recv().await {
                Some(ServerMsg::OutputChunk { job, offset, data }) => {
                    if attempt != Some(job) {
                        attempt = Some(job);
                        out.clear();
                    }
                    if out.len() + data.len() <= MAX_OUTPUT_BYTES + crate::proto::MAX_CHUNK_BYTES {
                        out.extend_from_slice(&data);
                    }
                    end = offset + data.len() as u64;
                }
                Some(ServerMsg::Ended(_)) | Some(ServerMsg::Update(_)) => return Ok(()),
                Some(ServerMsg::OutputPruned(p)) => pruned = Some(p),
                Some(ServerMsg::Error { code, message, .. }) => {
                    return Err(WebError::Refused { code, message });
                }
                Some(_) => {}
                None => return Err(WebError::Gone),
            }
        }
    };
    match tokio::time::timeout(OUTPUT_WAIT, collect).await {
        Ok(r) => r?,
        Err(_) => return Err(WebError::Gone),
    }
    Ok((out, end, pruned))
}

/// A runner as the runners page shows it: its view, and its running job.
#[derive(Serialize)]
pub struct RunnerRow {
    #[serde(flatten)]
    pub view: RunnerView,
    pub commit: Option<CommitId>,
    pub attempt: Option<u32>,
    pub started_at_ms: Option<u64>,
    pub elapsed_ms: Option<u64>,
}

pub async fn status(app: &App, grant: Grant) -> Result<StatusView, WebError> {
    match ask(app, grant, ClientMsg::Status).await? {
        ServerMsg::Status(s) => Ok(s),
        other => Err(WebError::Unexpected(other.kind())),
    }
}

pub async fn runner_rows(app: &App, grant: Grant) -> Result<Vec<RunnerRow>, WebError> {
    let s = status(app, grant).await?;
    Ok(s.runners
        .into_iter()
        .map(|view| {
            let running = s.running.iter().find(|r| r.runner == view.name);
            RunnerRow {
                commit: running.map(|r| r.commit),
                attempt: running.map(|r| r.attempt),
                started_at_ms: running.map(|r| r.started_at_ms),
                elapsed_ms: running.map(|r| r.elapsed_ms),
                view,
            }
        })
        .collect())
}

/// A page of the event history from `from`.
#[derive(Serialize)]
pub struct HistoryPage {
    #[serde(skip)]
    pub records: Vec<Record>,
    pub events: Vec<Value>,
    pub last_seq: u64,
    /// `from` of the next page, when there is one.
    pub next: Option<u64>,
    /// `from` of the previous page, when there is one.
    pub prev: Option<u64>,
}

/// `?from=&limit=` of the history.
pub fn history_query(q: &HashMap<String, String>) -> Result<(u64, usize), WebError> {
    let given = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let from = match given("from") {
        Some(f) => match f.parse::<u64>() {
            Ok(n) if f.len() <= 20 => n.max(1),
            _ => {
                return Err(WebError::BadRequest(format!(
                    "{:?} is not a sequence number",
                    trunc(f)
                )));
            }
        },
        None => 1,
    };
    let limit = match given("limit") {
        Some(l) => parse_limit(l, MAX_HISTORY_LIMIT)?,
        None => HISTORY_PAGE,
    };
    Ok((from, limit))
}

pub async fn history_page(
    app: &App,
    grant: Grant,
    from: u64,
    limit: usize,
) -> Result<HistoryPage, WebError> {
    let msg = ClientMsg::Replay {
        from_seq: from,
        limit: limit as u32,
    };
    match ask(app, grant, msg).await? {
        ServerMsg::Events { records, last_seq } => {
            let after = records.last().map(|r| r.seq);
            let next = after.filter(|&s| s < last_seq).map(|s| s + 1);
            let prev = (from > 1).then(|| from.saturating_sub(limit as u64).max(1));
            Ok(HistoryPage {
                events: records.iter().map(events::to_json).collect(),
                records,
                last_seq,
                next,
                prev,
            })
        }
        other => Err(WebError::Unexpected(other.kind())),
    }
}

fn json<T: Serialize>(r: Result<T, WebError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_json(),
    }
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, WebError> {
    q.map(|Query(q)| q)
        .map_err(|e| WebError::BadRequest(format!("bad query string: {e}")))
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, WebError> {
    p.map(|Path(p)| p)
        .map_err(|e| WebError::BadRequest(format!("bad path: {e}")))
}

/// `GET /api/v1/commits`.
pub async fn commits(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    json(
        async {
            let a = auth::access(&app, &headers)?;
            let q = CommitsQuery::parse(&query(q)?)?;
            commits_page(&app, a.grant, &q).await
        }
        .await,
    )
}

/// `GET /api/v1/commits/{sha}`.
pub async fn commit(
    State(app): State<App>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    json(
        async {
            let a = auth::access(&app, &headers)?;
            let c = resolve(&app, a.grant, &path(p)?).await?;
            commit_detail(&app, a.grant, c).await
        }
        .await,
    )
}

/// What a POST on a commit asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Cancel,
    Retry,
}

async fn act(
    app: App,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    action: Action,
) -> Response {
    json(
        async {
            let a: Access = auth::access(&app, &headers)?;
            auth::check_action(&app, &a, &headers, None)?;
            let commit = resolve(&app, a.grant, &path(p)?).await?;
            let msg = match action {
                Action::Cancel => ClientMsg::Cancel { commit },
                Action::Retry => ClientMsg::Retry { commit },
            };
            match ask(&app, a.grant, msg).await? {
                ServerMsg::ActionDone { commit, message } => {
                    Ok(json!({"commit": commit, "message": message}))
                }
                other => Err(WebError::Unexpected(other.kind())),
            }
        }
        .await,
    )
}

/// `POST /api/v1/commits/{sha}/cancel`.
pub async fn cancel(
    State(app): State<App>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    act(app, headers, p, Action::Cancel).await
}

/// `POST /api/v1/commits/{sha}/retry`.
pub async fn retry(
    State(app): State<App>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    act(app, headers, p, Action::Retry).await
}

/// `GET /api/v1/runners`.
pub async fn runners(State(app): State<App>, headers: HeaderMap) -> Response {
    json(
        async {
            let a = auth::access(&app, &headers)?;
            Ok(json!({ "runners": runner_rows(&app, a.grant).await? }))
        }
        .await,
    )
}

/// `GET /api/v1/history?from=&limit=`.
pub async fn history(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    json(
        async {
            let a = auth::access(&app, &headers)?;
            let (from, limit) = history_query(&query(q)?)?;
            history_page(&app, a.grant, from, limit).await
        }
        .await,
    )
}

/// `GET /api/v1/status`: what `ci-tools status --json` prints.
pub async fn status_json(State(app): State<App>, headers: HeaderMap) -> Response {
    json(
        async {
            let a = auth::access(&app, &headers)?;
            status(&app, a.grant).await
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cursors_are_positive_decimal_job_ids() {
        assert_eq!(parse_cursor("1").ok(), Some(1));
        assert_eq!(parse_cursor("18446744073709551615").ok(), Some(u64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.5",
            "abc",
            " 1",
            "18446744073709551616",
            "999999999999999999999",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commits_queries() {
        let d = CommitsQuery::parse(&q(&[])).unwrap();
        assert_eq!(d.limit, DEFAULT_LIMIT);
        assert_eq!((d.branch, d.outcome, d.cursor), (None, None, None));
        let f = CommitsQuery::parse(&q(&[
            ("branch", "main"),
            ("outcome", "fail"),
            ("limit", "500"),
            ("cursor", "42"),
            ("repo", "anything"),
        ]))
        .unwrap();
        assert_eq!(f.branch.as_deref(), Some("main"));
        assert_eq!(f.outcome.as_deref(), Some("fail"));
        assert_eq!((f.limit, f.cursor), (500, Some(42)));
        // Empty values mean "any".
        let e = CommitsQuery::parse(&q(&[("branch", ""), ("outcome", "")])).unwrap();
        assert_eq!((e.branch, e.outcome), (None, None));
        for bad in [
            ("limit", "0"),
            ("limit", "501"),
            ("limit", "-1"),
            ("limit", "ten"),
            ("outcome", "passed"),
            ("cursor", "x"),
        ] {
            assert!(CommitsQuery::parse(&q(&[bad])).is_err(), "{bad:?}");
        }
        let long = "b".repeat(256);
        assert!(CommitsQuery::parse(&q(&[("branch", &long)])).is_err());
    }

    #[test]
    fn shas_and_prefixes() {
        let full = "a".repeat(40);
        assert!(parse_sha(&full).unwrap().is_some());
        assert!(parse_sha("abcdef1").unwrap().is_none());
        for bad in ["abc", "xyz1234", "", "../../etc", &"a".repeat(65)] {
            assert!(parse_sha(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_is_the_first_dollar_line() {
        assert_eq!(
            command_of(b"$ python3 -m unittest discover -s tests\nok\n$ other\n").as_deref(),
            Some("python3 -m unittest discover -s tests")
        );
        assert_eq!(command_of(b"no command\n"), None);
        assert_eq!(command_of(b""), None);
    }

    #[test]
    fn history_queries() {
        assert_eq!(history_query(&q(&[])).ok(), Some((1, HISTORY_PAGE)));
        assert_eq!(
            history_query(&q(&[("from", "0"), ("limit", "5")])).ok(),
            Some((1, 5))
        );
        assert!(history_query(&q(&[("from", "x")])).is_err());
        assert!(history_query(&q(&[("limit", "1001")])).is_err());
    }
}
