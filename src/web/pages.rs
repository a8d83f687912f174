//! The dashboard's HTML pages: commits (`/`), one commit
//! (`/commits/{sha}`), runners, history. Each gets its data from the same
//! functions as the API ([`super::api`]) and escapes everything that came
//! from a repository, a test or a runner.
//!
//! The ids and classes a browser test relies on are fixed: `#commits`
//! (`tr.commit.outcome-X[data-sha]`, `td.outcome`), `#filters`, `#next`;
//! `#outcome`, `#command`, `#timeline`, `#log`, `#cancel`, `#retry`,
//! `#broke`; `#runners` (`tr.runner[data-name]`); `#history`. With named
//! repositories (`--repository NAME=URL`) only: `th.repository` and
//! `td.repository` in `#commits`, `select[name=repo]` in `#filters`, and
//! `#repository` on a commit's page (when the commit is a named
//! repository's).

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::api::{self, CommitsQuery, OUTCOMES};
use super::auth::{self, Access, Via};
use super::html::{self, duration, escape, time};
use super::{App, WebError};
use crate::core::Record;
use crate::proto::ResultView;
use crate::tools::events;

/// Seconds between refreshes of the commits table while something runs,
/// and otherwise.
const REFRESH_BUSY_S: u32 = 5;
const REFRESH_IDLE_S: u32 = 30;

fn page(app: &App, access: &Access, title: &str, body_attrs: &str, body: &str) -> Response {
    let csrf = access.csrf(app);
    let mut main = String::new();
    if let (Via::Cookie(_), Some(t)) = (&access.via, &csrf) {
        let _ = write!(
            main,
            "<form id=\"logout\" method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out</button></form>",
            escape(t)
        );
    }
    main.push_str(body);
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::layout(title, csrf.as_deref(), body_attrs, &main),
    )
        .into_response()
}

/// `s` percent-encoded for a query string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, WebError> {
    q.map(|Query(q)| q)
        .map_err(|e| WebError::BadRequest(format!("bad query string: {e}")))
}

fn author_name(author: &str) -> &str {
    author.split(" <").next().unwrap_or(author).trim()
}

fn dash() -> String {
    "—".to_string()
}

/// Whether the commits table has a repository column: only on a
/// dispatcher with named repositories, so that one serving a single
/// repository shows what it always showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RepositoryColumn {
    Shown,
    Hidden,
}

impl RepositoryColumn {
    fn of(app: &App) -> RepositoryColumn {
        if app.ctx.repositories.is_empty() {
            RepositoryColumn::Hidden
        } else {
            RepositoryColumn::Shown
        }
    }
}

fn commit_row(r: &ResultView, column: RepositoryColumn) -> String {
    let sha = r.commit.to_string();
    let o = escape(&r.outcome);
    let when = match r.committed_at_ms {
        Some(c) => format!(
            "seen {}<br><small>committed {}</small>",
            time(r.seen_at_ms),
            time(c)
        ),
        None => format!("seen {}", time(r.seen_at_ms)),
    };
    let tests = r.tests.map_or_else(dash, |t| {
        format!(
            "{}/{} passed{}",
            t.passed,
            t.total,
            if t.failed + t.errors > 0 {
                format!(", {} failed", t.failed + t.errors)
            } else {
                String::new()
            }
        )
    });
    let repository = match column {
        RepositoryColumn::Shown => format!(
            "<td class=\"repository\">{}</td>",
            r.repository.as_deref().map_or_else(dash, escape)
        ),
        RepositoryColumn::Hidden => String::new(),
    };
    format!(
        "<tr class=\"commit outcome-{o}\" data-sha=\"{sha}\">\
         <td class=\"outcome\"><span class=\"badge outcome-{o}\">{o}</span></td>\
         <td><a href=\"/commits/{sha}\"><code>{short}</code></a></td>{repository}\
         <td>{branch}</td><td>{author}</td><td>{subject}</td><td>{when}</td>\
         <td>{dur}</td><td>{runner}</td><td>{attempts}</td><td>{tests}</td></tr>",
        short = r.commit.short(),
        branch = r.branch.as_deref().map_or_else(dash, escape),
        author = r
            .author
            .as_deref()
            .map(author_name)
            .filter(|a| !a.is_empty())
            .map_or_else(dash, escape),
        subject = r
            .subject
            .as_deref()
            .filter(|s| !s.is_empty())
            .map_or_else(dash, escape),
        dur = duration(r.duration_ms),
        runner = r.runner.as_deref().map_or_else(dash, escape),
        attempts = r.attempts,
    )
}

/// A filter's `<select>`: `name` is the query parameter, `any` the
/// first choice's label ("any branch").
fn options(name: &str, any: &str, choices: &[String], chosen: Option<&str>) -> String {
    let mut s = format!("<select name=\"{name}\"><option value=\"\">{any}</option>");
    for c in choices {
        let sel = if chosen == Some(c.as_str()) {
            " selected"
        } else {
            ""
        };
        let e = escape(c);
        let _ = write!(s, "<option value=\"{e}\"{sel}>{e}</option>");
    }
    s.push_str("</select>");
    s
}

/// `GET /`: the commits, newest first, filtered and paged.
pub async fn commits(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    match commits_inner(&app, &headers, q).await {
        Ok(r) => r,
        Err(e) => e.into_page(),
    }
}

async fn commits_inner(
    app: &App,
    headers: &HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, WebError> {
    let a = auth::access(app, headers)?;
    let q = CommitsQuery::parse(&query(q)?)?;
    let column = RepositoryColumn::of(app);
    let data = api::commits_page(app, a.grant, &q).await?;
    let mut branches = api::branches(app, a.grant, q.repository(app)).await?;
    if let Some(b) = &q.branch
        && !branches.contains(b)
    {
        branches.push(b.clone());
    }
    let outcomes: Vec<String> = OUTCOMES.iter().map(|s| s.to_string()).collect();
    let repository_filter = match column {
        RepositoryColumn::Shown => format!(
            "{} ",
            options(
                "repo",
                "any repository",
                &app.ctx.repositories,
                q.repository(app)
            )
        ),
        RepositoryColumn::Hidden => String::new(),
    };
    let mut body = String::from("<h1>Commits</h1>");
    let _ = write!(
        body,
        "<form id=\"filters\" method=\"get\" action=\"/\">{repository_filter}{} {} \
         <button type=\"submit\">Filter</button> <a href=\"/\">clear</a></form>",
        options("branch", "any branch", &branches, q.branch.as_deref()),
        options("outcome", "any outcome", &outcomes, q.outcome.as_deref()),
    );
    let _ = write!(
        body,
        "<table id=\"commits\"><thead><tr><th>Outcome</th><th>Commit</th>{}<th>Branch</th>\
         <th>Author</th><th>Subject</th><th>Time (UTC)</th><th>Duration</th><th>Runner</th>\
         <th>Attempts</th><th>Tests</th></tr></thead><tbody>",
        match column {
            RepositoryColumn::Shown => "<th class=\"repository\">Repository</th>",
            RepositoryColumn::Hidden => "",
        }
    );
    for r in &data.commits {
        body.push_str(&commit_row(r, column));
    }
    body.push_str("</tbody></table>");
    if data.commits.is_empty() {
        body.push_str("<p>No commits yet.</p>");
    }
    if let Some(next) = &data.next {
        let mut href = format!("/?cursor={}", url_encode(next));
        if let Some(r) = q.repository(app) {
            let _ = write!(href, "&repo={}", url_encode(r));
        }
        if let Some(b) = &q.branch {
            let _ = write!(href, "&branch={}", url_encode(b));
        }
        if let Some(o) = &q.outcome {
            let _ = write!(href, "&outcome={}", url_encode(o));
        }
        if q.limit != api::DEFAULT_LIMIT {
            let _ = write!(href, "&limit={}", q.limit);
        }
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"{}\">Older commits →</a></p>",
            escape(&href)
        );
    }
    let busy = data.commits.iter().any(|r| !r.is_final());
    let refresh = if busy { REFRESH_BUSY_S } else { REFRESH_IDLE_S };
    Ok(page(
        app,
        &a,
        "Commits",
        &format!(" data-refresh=\"{refresh}\""),
        &body,
    ))
}

/// A timeline record in words, from the columns `replay` prints.
fn describe(rec: &Record) -> String {
    let row = events::to_row(rec);
    let col = |i: usize| row.get(i).map(String::as_str).unwrap_or("-");
    let (kind, runner, attempt, detail) = (col(2), col(5), col(6), col(7));
    match kind {
        "commit_seen" => format!("seen ({detail})"),
        "job_assigned" => format!("attempt {attempt}: assigned to runner {runner}"),
        "heartbeat_lost" => format!(
            "attempt {attempt}: lost by runner {runner} ({})",
            detail.replace('_', " ")
        ),
        "job_cancelled" => format!("attempt {attempt}: cancelled"),
        "job_retried" => "retried: queued again".to_string(),
        "result" => format!("attempt {attempt}: result {detail} (runner {runner})"),
        other => format!("{other} {detail}"),
    }
}

/// `GET /commits/{sha}` (a unique prefix redirects to the full id).
pub async fn commit(
    State(app): State<App>,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    match commit_inner(&app, &headers, p).await {
        Ok(r) => r,
        Err(e) => e.into_page(),
    }
}

async fn commit_inner(
    app: &App,
    headers: &HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, WebError> {
    let a = auth::access(app, headers)?;
    let given = p
        .map(|Path(p)| p)
        .map_err(|e| WebError::BadRequest(format!("bad path: {e}")))?;
    let commit = match api::parse_sha(&given)? {
        Some(c) => c,
        None => {
            let c = api::resolve(app, a.grant, &given).await?;
            return Ok(Redirect::to(&format!("/commits/{c}")).into_response());
        }
    };
    let d = api::commit_detail(app, a.grant, commit).await?;
    let v = &d.view;
    let sha = v.commit.to_string();
    let opt = |s: &Option<String>| s.as_deref().map_or_else(dash, escape);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Commit <code>{short}</code> <span id=\"outcome\" class=\"badge outcome-{o}\">{o}</span></h1>",
        short = v.commit.short(),
        o = escape(&v.outcome),
    );
    if let Some(b) = &d.broke {
        let prev = b.previous.to_string();
        let _ = write!(
            body,
            "<p id=\"broke\">This commit broke {branch}: the previous commit on {branch}, \
             <a href=\"/commits/{prev}\"><code>{short}</code></a>, passed.</p>",
            branch = escape(&b.branch),
            short = b.previous.short(),
        );
    }
    let final_ = v.is_final();
    let _ = write!(
        body,
        "<p><button id=\"cancel\" type=\"button\"{}>Cancel</button> \
         <button id=\"retry\" type=\"button\"{}>Retry</button> \
         <span id=\"action-message\"></span></p>",
        if final_ || !a.grant.write {
            " disabled"
        } else {
            ""
        },
        if !final_ || !a.grant.write {
            " disabled"
        } else {
            ""
        },
    );
    let tests = v.tests.map_or_else(dash, |t| {
        format!(
            "{} total: {} passed, {} failed, {} errors, {} skipped",
            t.total, t.passed, t.failed, t.errors, t.skipped
        )
    });
    // The repository only when the commit is a named one's: a dispatcher
    // of one repository shows what it always showed.
    let repository = v.repository.as_deref().map_or_else(String::new, |r| {
        format!(
            "<dt>Repository</dt><dd id=\"repository\">{}</dd>",
            escape(r)
        )
    });
    let _ = write!(
        body,
        "<dl><dt>Commit</dt><dd><code>{sha}</code></dd>{repository}\
         <dt>Branch</dt><dd>{branch}</dd><dt>Author</dt><dd>{author}</dd>\
         <dt>Subject</dt><dd>{subject}</dd>\
         <dt>Seen</dt><dd>{seen}</dd><dt>Committed</dt><dd>{committed}</dd>\
         <dt>Started</dt><dd>{started}</dd><dt>Finished</dt><dd>{finished}</dd>\
         <dt>Duration</dt><dd>{dur}</dd><dt>Runner</dt><dd>{runner}</dd>\
         <dt>Attempts</dt><dd>{attempts}</dd><dt>Exit code</dt><dd>{exit}</dd>\
         <dt>Tests</dt><dd>{tests}</dd><dt>Message</dt><dd>{message}</dd>\
         <dt>Command</dt><dd><code id=\"command\">{command}</code></dd></dl>",
        branch = opt(&v.branch),
        author = opt(&v.author),
        subject = opt(&v.subject),
        seen = time(v.seen_at_ms),
        committed = v.committed_at_ms.map_or_else(dash, time),
        started = v.started_at_ms.map_or_else(dash, time),
        finished = v.finished_at_ms.map_or_else(dash, time),
        dur = duration(v.duration_ms),
        runner = opt(&v.runner),
        attempts = v.attempts,
        exit = v.exit_code.map_or_else(dash, |c| c.to_string()),
        message = if v.message.is_empty() {
            dash()
        } else {
            escape(&v.message)
        },
        command = d.command.as_deref().map_or_else(dash, escape),
    );
    body.push_str("<h2>Timeline</h2><ol id=\"timeline\">");
    for rec in &d.records {
        let _ = write!(
            body,
            "<li><time>{}</time> {}</li>",
            time(rec.at_ms),
            escape(&describe(rec))
        );
    }
    body.push_str("</ol>");
    if d.timeline_more {
        body.push_str("<p>(more records than a timeline shows)</p>");
    }
    let live = if final_ { "0" } else { "1" };
    if let Some(p) = &d.output_pruned {
        let _ = write!(
            body,
            "<h2>Output</h2><p id=\"pruned\" class=\"pruned\" data-reason=\"{}\">Output removed by retention: {}.</p>",
            p.reason.as_str(),
            escape(&crate::tools::events::describe_pruned(p)),
        );
    } else {
        let _ = write!(
            body,
            "<h2>Output</h2><pre id=\"log\" data-live=\"{live}\" data-src=\"/api/v1/commits/{sha}/log?from={from}\">{text}</pre>",
            from = d.output_end,
            text = html::output_text(&d.output),
        );
    }
    Ok(page(
        app,
        &a,
        &format!("Commit {}", v.commit.short()),
        &format!(
            " data-sha=\"{sha}\" data-write=\"{}\"",
            if a.grant.write { "1" } else { "0" }
        ),
        &body,
    ))
}

/// `GET /runners`.
pub async fn runners(State(app): State<App>, headers: HeaderMap) -> Response {
    let r = async {
        let a = auth::access(&app, &headers)?;
        let rows = api::runner_rows(&app, a.grant).await?;
        let mut body = String::from(
            "<h1>Runners</h1><table id=\"runners\"><thead><tr><th>Name</th><th>State</th>\
             <th>Current job</th><th>Elapsed</th><th>Last heard</th></tr></thead><tbody>",
        );
        for r in &rows {
            let name = escape(&r.view.name);
            let job = match r.commit {
                Some(c) => format!(
                    "<a href=\"/commits/{c}\"><code>{}</code></a> (attempt {})",
                    c.short(),
                    r.attempt.unwrap_or(0)
                ),
                None => dash(),
            };
            let _ = write!(
                body,
                "<tr class=\"runner\" data-name=\"{name}\"><td>{name}</td>\
                 <td><span class=\"state-{s}\">{s}</span></td><td>{job}</td><td>{elapsed}</td>\
                 <td>{heard}</td></tr>",
                s = escape(&r.view.state),
                elapsed = duration(r.elapsed_ms),
                heard = r.view.heard_ms_ago.map_or_else(
                    || "not since the dispatcher started".into(),
                    |ms| { format!("{} ago", html::duration(Some(ms))) }
                ),
            );
        }
        body.push_str("</tbody></table>");
        if rows.is_empty() {
            body.push_str("<p>No runners.</p>");
        }
        Ok::<_, WebError>(page(&app, &a, "Runners", "", &body))
    }
    .await;
    r.unwrap_or_else(WebError::into_page)
}

/// `GET /history?from=SEQ`: what `ci-tools replay` shows, paged.
pub async fn history(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let r = async {
        let a = auth::access(&app, &headers)?;
        let (from, limit) = api::history_query(&query(q)?)?;
        let h = api::history_page(&app, a.grant, from, limit).await?;
        let mut body = String::from("<h1>History</h1><table id=\"history\"><thead><tr>");
        for col in events::HEADER {
            let _ = write!(body, "<th>{}</th>", escape(col));
        }
        body.push_str("</tr></thead><tbody>");
        for (rec, json) in h.records.iter().zip(&h.events) {
            let row = events::to_row(rec);
            body.push_str("<tr>");
            for (i, cell) in row.iter().enumerate() {
                let full = json.get("commit").and_then(Value::as_str);
                match (i, full) {
                    (4, Some(c)) if cell != "-" => {
                        let _ = write!(
                            body,
                            "<td><a href=\"/commits/{}\"><code>{}</code></a></td>",
                            escape(c),
                            escape(cell)
                        );
                    }
                    _ => {
                        let _ = write!(body, "<td>{}</td>", escape(cell));
                    }
                }
            }
            body.push_str("</tr>");
        }
        body.push_str("</tbody></table><p>");
        let lim = if limit == api::HISTORY_PAGE {
            String::new()
        } else {
            format!("&limit={limit}")
        };
        if let Some(p) = h.prev {
            let _ = write!(
                body,
                "<a id=\"prev\" href=\"/history?from={p}{}\">← Earlier</a> ",
                escape(&lim)
            );
        }
        if let Some(n) = h.next {
            let _ = write!(
                body,
                "<a id=\"next\" href=\"/history?from={n}{}\">Later →</a>",
                escape(&lim)
            );
        }
        let _ = write!(body, "</p><p>{} events in the log.</p>", h.last_seq);
        Ok::<_, WebError>(page(&app, &a, "History", "", &body))
    }
    .await;
    r.unwrap_or_else(WebError::into_page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(repository: Option<&str>) -> ResultView {
        ResultView {
            commit: crate::core::CommitId::parse(&"ab".repeat(20)).unwrap(),
            repository: repository.map(str::to_string),
            branch: Some("main".into()),
            outcome: "pass".into(),
            attempts: 1,
            runner: None,
            exit_code: Some(0),
            duration_ms: None,
            tests: None,
            message: String::new(),
            job: 1,
            output_bytes: 0,
            seen_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            author: None,
            subject: None,
            committed_at_ms: None,
        }
    }

    #[test]
    fn a_row_has_a_repository_cell_only_with_the_column() {
        let hidden = commit_row(&view(Some("app")), RepositoryColumn::Hidden);
        assert!(!hidden.contains("repository"), "{hidden}");
        let named = commit_row(&view(Some("team/app")), RepositoryColumn::Shown);
        assert!(
            named.contains("<td class=\"repository\">team/app</td>"),
            "{named}"
        );
        let default = commit_row(&view(None), RepositoryColumn::Shown);
        assert!(
            default.contains("<td class=\"repository\">—</td>"),
            "{default}"
        );
        // Escaped, whatever reaches it.
        let odd = commit_row(&view(Some("<b>&")), RepositoryColumn::Shown);
        assert!(odd.contains("&lt;b&gt;&amp;"), "{odd}");
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("feature/x y&z"), "feature%2Fx%20y%26z");
        assert_eq!(url_encode("main"), "main");
        assert_eq!(url_encode("é"), "%C3%A9");
    }
}
