//! The `ci-tools` subcommands about commits: `results`, `wait`, `logs`
//! (and `output`), `cancel`, `retry`, and naming a commit by a short id.
//!
//! `wait` and `logs --follow` subscribe (`Watch`, `Follow`): the
//! dispatcher pushes what changes, nobody polls.

use std::collections::HashMap;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Format, connect, progress, stdout, table};
use crate::client::{Backoff, Client, ClientError};
use crate::core::{CommitId, JobRef};
use crate::proto::{ClientMsg, ErrorCode, MIN_PREFIX_HEX, ResultView, ServerMsg};

/// What `results` shows.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// One commit (a full id or a unique prefix).
    pub commit: Option<String>,
    pub branch: Option<String>,
    /// `pending`, `running`, or an outcome.
    pub outcome: Option<String>,
    /// Only this named repository's commits.
    pub repository: Option<String>,
    /// The newest this many; all when `None`.
    pub limit: Option<usize>,
}

/// A commit named on the command line: a full id, or a prefix of at least
/// [`MIN_PREFIX_HEX`] hex digits that the dispatcher resolves (it must be
/// unique among the commits it has seen).
pub async fn resolve(client: &mut Client, given: &str) -> anyhow::Result<CommitId> {
    if let Some(c) = check_given(given)? {
        return Ok(c);
    }
    match client
        .request(&ClientMsg::Resolve {
            prefix: given.to_string(),
        })
        .await?
    {
        ServerMsg::Resolved { commit } => Ok(commit),
        other => bail!("unexpected answer to resolve: {}", other.kind()),
    }
}

/// What can be said of a commit named on the command line without asking
/// the dispatcher: a full id is one, a prefix must be asked about (`None`),
/// anything else is refused.
pub fn check_given(given: &str) -> anyhow::Result<Option<CommitId>> {
    if let Ok(c) = CommitId::parse(given) {
        return Ok(Some(c));
    }
    let hex = given.len() >= MIN_PREFIX_HEX
        && given.len() < 64
        && given.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        bail!(
            "{given:?} is not a commit id: give the full id, or at least {MIN_PREFIX_HEX} of its first hexadecimal digits"
        );
    }
    Ok(None)
}

/// Commits named on the command line, each resolved.
pub async fn resolve_all(client: &mut Client, given: &[String]) -> anyhow::Result<Vec<CommitId>> {
    let mut out = Vec::with_capacity(given.len());
    for g in given {
        out.push(resolve(client, g).await?);
    }
    Ok(out)
}

/// One commit's result, if the dispatcher knows the commit.
pub async fn fetch_result(
    client: &mut Client,
    commit: CommitId,
) -> anyhow::Result<Option<ResultView>> {
    let msg = ClientMsg::Results {
        commit: Some(commit),
        before: None,
        limit: 1,
        branch: None,
        outcome: None,
        repository: None,
    };
    match client.request(&msg).await? {
        ServerMsg::Results { mut results, .. } => Ok(results.pop()),
        other => bail!("unexpected answer to results: {}", other.kind()),
    }
}

/// Results newest first, page by page, up to `limit` (all when `None`).
pub async fn fetch_results(
    client: &mut Client,
    branch: Option<&str>,
    outcome: Option<&str>,
    repository: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<Vec<ResultView>> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let want = limit.map_or(u32::MAX, |l| (l - all.len()).min(u32::MAX as usize) as u32);
        let msg = ClientMsg::Results {
            commit: None,
            before,
            limit: want,
            branch: branch.map(str::to_string),
            outcome: outcome.map(str::to_string),
            repository: repository.map(str::to_string),
        };
        match client.request(&msg).await? {
            ServerMsg::Results { results, next } => {
                all.extend(results);
                if limit.is_some_and(|l| all.len() >= l) {
                    break;
                }
                match next {
                    Some(n) => before = Some(n),
                    None => break,
                }
            }
            other => bail!("unexpected answer to results: {}", other.kind()),
        }
    }
    Ok(all)
}

/// At most `max` characters, with an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `Name <email>` without the email, for tables.
fn author_name(author: &str) -> &str {
    author.split(" <").next().unwrap_or(author).trim()
}

/// Whether a results table has a REPOSITORY column: only when a result
/// listed is a named repository's, so that a dispatcher of one repository
/// prints what it always printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RepositoryColumn {
    Shown,
    Hidden,
}

/// A table of results, in the order given.
pub fn results_table(results: &[ResultView]) -> String {
    let column = if results.iter().any(|r| r.repository.is_some()) {
        RepositoryColumn::Shown
    } else {
        RepositoryColumn::Hidden
    };
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let when = r.finished_at_ms.or(r.started_at_ms).unwrap_or(r.seen_at_ms);
            let mut row = vec![r.commit.short()];
            if column == RepositoryColumn::Shown {
                row.push(
                    r.repository
                        .as_deref()
                        .map(|n| clip(n, 30))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            row.extend([
                r.branch.clone().unwrap_or_else(|| "-".into()),
                r.outcome.clone(),
                r.attempts.to_string(),
                r.runner.clone().unwrap_or_else(|| "-".into()),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.duration_ms
                    .map(table::format_duration_ms)
                    .unwrap_or_else(|| "-".into()),
                r.tests
                    .map(|t| format!("{}/{} passed", t.passed, t.total))
                    .unwrap_or_else(|| "-".into()),
                table::format_ms(when),
                r.author
                    .as_deref()
                    .map(author_name)
                    .filter(|a| !a.is_empty())
                    .map(|a| clip(a, 20))
                    .unwrap_or_else(|| "-".into()),
                r.subject
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(|s| clip(s, 50))
                    .unwrap_or_else(|| "-".into()),
                r.message.clone(),
            ]);
            row
        })
        .collect();
    let mut header = vec!["COMMIT"];
    if column == RepositoryColumn::Shown {
        header.push("REPOSITORY");
    }
    header.extend([
        "BRANCH",
        "OUTCOME",
        "ATTEMPTS",
        "RUNNER",
        "EXIT",
        "DURATION",
        "TESTS",
        "WHEN (UTC)",
        "AUTHOR",
        "SUBJECT",
        "MESSAGE",
    ]);
    table::render(&header, &rows)
}

/// `results`: one commit, or the history (newest `limit`, filtered), printed
/// oldest first.
pub async fn results(
    addr: &str,
    token: Option<Vec<u8>>,
    query: Query,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, token).await?;
    let mut r = match &query.commit {
        Some(c) => {
            let commit = resolve(&mut client, c).await?;
            fetch_result(&mut client, commit)
                .await?
                .into_iter()
                .filter(|r| query.repository.is_none() || r.repository == query.repository)
                .collect()
        }
        None => {
            fetch_results(
                &mut client,
                query.branch.as_deref(),
                query.outcome.as_deref(),
                query.repository.as_deref(),
                query.limit,
            )
            .await?
        }
    };
    r.reverse();
    let mut out = stdout();
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
    } else if r.is_empty() {
        writeln!(out, "no results yet")?;
    } else {
        write!(out, "{}", results_table(&r))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `pruned`: the outputs retention removed, newest first (all of them, or
/// the newest `limit`), fetched page by page, then what was ever pruned.
pub async fn pruned(
    addr: &str,
    token: Option<Vec<u8>>,
    limit: Option<usize>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    use crate::core::PruneReason;
    let mut client = connect(addr, token).await?;
    let mut outputs = Vec::new();
    let mut before = None;
    let totals = loop {
        let want = limit.map_or(crate::proto::PRUNED_PAGE, |l| {
            (l - outputs.len()).min(crate::proto::PRUNED_PAGE)
        });
        match client
            .request(&ClientMsg::Pruned {
                before,
                limit: want as u32,
            })
            .await
            .context("fetching pruned outputs")?
        {
            ServerMsg::Pruned {
                outputs: page,
                next,
                totals,
            } => {
                outputs.extend(page);
                before = next;
                if before.is_none() || limit.is_some_and(|l| outputs.len() >= l) {
                    break totals;
                }
            }
            other => bail!("unexpected answer to pruned: {}", other.kind()),
        }
    };
    let (all_outputs, all_bytes) = totals
        .iter()
        .fold((0, 0), |(n, b), t| (n + t.outputs, b + t.bytes));
    let mut out = stdout();
    if format == Format::Json {
        let mut by_reason = serde_json::Map::new();
        for r in PruneReason::ALL {
            let t = totals[r.index()];
            by_reason.insert(
                r.as_str().into(),
                serde_json::json!({"outputs": t.outputs, "bytes": t.bytes}),
            );
        }
        let list: Vec<serde_json::Value> = outputs.iter().map(super::events::pruned_json).collect();
        let doc = serde_json::json!({
            "pruned": list,
            "totals": {"outputs": all_outputs, "bytes": all_bytes, "by_reason": by_reason},
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        if outputs.is_empty() {
            writeln!(out, "no outputs pruned")?;
        } else {
            let rows: Vec<Vec<String>> = outputs
                .iter()
                .map(|p| {
                    vec![
                        p.output.job.job.to_string(),
                        p.output.job.attempt.to_string(),
                        p.output.commit.short(),
                        table::format_ms(p.output.at_ms),
                        table::format_ms(p.at_ms),
                        p.reason.as_str().to_string(),
                        p.output.bytes.to_string(),
                    ]
                })
                .collect();
            let header = [
                "JOB",
                "ATTEMPT",
                "COMMIT",
                "FINISHED (UTC)",
                "PRUNED (UTC)",
                "WHY",
                "BYTES",
            ];
            write!(out, "{}", table::render(&header, &rows))?;
        }
        let age = totals[PruneReason::Age.index()];
        let size = totals[PruneReason::Size.index()];
        writeln!(
            out,
            "total: {all_outputs} outputs, {all_bytes} bytes pruned (age: {} outputs, {} bytes; size: {} outputs, {} bytes)",
            age.outputs, age.bytes, size.outputs, size.bytes
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `cancel` and `retry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Retry,
}

pub async fn act(
    addr: &str,
    token: Option<Vec<u8>>,
    action: Action,
    sha: &str,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, token).await?;
    let commit = resolve(&mut client, sha).await?;
    let msg = match action {
        Action::Cancel => ClientMsg::Cancel { commit },
        Action::Retry => ClientMsg::Retry { commit },
    };
    match client.request(&msg).await? {
        ServerMsg::ActionDone { commit, message } => {
            let mut out = stdout();
            writeln!(out, "{}: {message}", commit.short())?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer: {}", other.kind()),
    }
}

/// Where a `logs` stream got to: the attempt whose output is being printed
/// and the offset of its next byte. Kept across reconnections, so that what
/// a restarted dispatcher sends again is not printed twice.
#[derive(Debug, Default)]
struct Printed {
    attempt: Option<JobRef>,
    next_offset: u64,
}

impl Printed {
    /// Prints the part of a chunk not printed yet; says so on stderr when
    /// a new attempt starts or bytes were not kept.
    fn chunk(
        &mut self,
        out: &mut impl Write,
        job: JobRef,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        if self.attempt != Some(job) {
            if self.attempt.is_some() {
                out.flush()?;
                crate::cli::stderr_line(format_args!(
                    "--- attempt {} (the previous one was lost) ---",
                    job.attempt
                ));
            }
            self.attempt = Some(job);
            self.next_offset = offset;
        }
        let end = offset + data.len() as u64;
        if end <= self.next_offset {
            return Ok(());
        }
        if offset > self.next_offset {
            out.flush()?;
            crate::cli::stderr_line(format_args!(
                "--- {} bytes of output not kept ---",
                offset - self.next_offset
            ));
        }
        let skip = self.next_offset.saturating_sub(offset) as usize;
        out.write_all(&data[skip..])?;
        self.next_offset = end;
        out.flush()
    }
}

/// Why a `logs` session stopped before the job ended.
enum Stopped {
    /// The dispatcher went away (or refused for now): connect again.
    Away(anyhow::Error),
    /// Retrying cannot help (a permanent refusal, stdout closed...).
    Fatal(anyhow::Error),
}

impl Stopped {
    /// Sorted on the error's type and the refusal's code, never its text.
    fn of(e: anyhow::Error) -> Stopped {
        match e.downcast_ref::<ClientError>() {
            Some(ClientError::Refused { code, .. }) if code.is_permanent() => Stopped::Fatal(e),
            Some(_) => Stopped::Away(e),
            None => Stopped::Fatal(e),
        }
    }
}

/// `logs SHA [--follow]`: the output of the commit's latest attempt.
/// Without `follow`, what there is now (exit 0); with it, as it is produced
/// (waiting while the commit is queued) until the job ends, reconnecting
/// when the dispatcher goes away (nothing printed twice); exit 0 if the job
/// passed, 1 if it ended otherwise.
pub async fn logs(
    addr: &str,
    token: Option<Vec<u8>>,
    sha: &str,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let mut commit = None;
    let mut printed = Printed::default();
    let mut backoff = Backoff::random();
    let mut said_away = false;
    loop {
        let since = Instant::now();
        match logs_session(addr, token.clone(), sha, follow, &mut commit, &mut printed).await {
            Ok(code) => return Ok(code),
            Err(Stopped::Fatal(e)) => return Err(e),
            Err(Stopped::Away(e)) if !follow => return Err(e),
            Err(Stopped::Away(e)) => {
                if !said_away {
                    said_away = true;
                    crate::cli::stderr_line(format_args!(
                        "--- waiting for the dispatcher at {addr} ({e:#}) ---"
                    ));
                }
                tracing::debug!("logs --follow: {e:#}; reconnecting");
                backoff.session_ended(since.elapsed().as_millis() as u64);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One connection of `logs`: resolve (once), follow, print.
async fn logs_session(
    addr: &str,
    token: Option<Vec<u8>>,
    sha: &str,
    follow: bool,
    commit: &mut Option<CommitId>,
    printed: &mut Printed,
) -> Result<ExitCode, Stopped> {
    let mut client = connect(addr, token).await.map_err(Stopped::of)?;
    let commit = match *commit {
        Some(c) => c,
        None => {
            let c = resolve(&mut client, sha).await.map_err(Stopped::of)?;
            *commit = Some(c);
            c
        }
    };
    client
        .writer
        .send(&ClientMsg::Follow { commit })
        .await
        .map_err(|e| Stopped::of(ClientError::from(e).into()))?;
    let mut out = stdout();
    let fatal = |e: io::Error| Stopped::Fatal(e.into());
    loop {
        let msg = match client.reader.recv().await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return Err(Stopped::Away(anyhow::anyhow!(
                    "the dispatcher closed the connection before the job ended"
                )));
            }
            Err(e) => return Err(Stopped::of(ClientError::from(e).into())),
        };
        match msg {
            ServerMsg::OutputChunk { job, offset, data } => {
                printed.chunk(&mut out, job, offset, &data).map_err(fatal)?;
            }
            ServerMsg::OutputPruned(p) => {
                crate::cli::stderr_line(format_args!(
                    "{}: {}",
                    commit.short(),
                    super::events::describe_pruned(&p)
                ));
            }
            ServerMsg::Ended(view) => {
                out.flush().map_err(fatal)?;
                let passed = view.outcome == "pass";
                return Ok(if !follow || passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            ServerMsg::Update(view) if !follow => {
                if view.outcome == "pending" {
                    crate::cli::stderr_line(format_args!(
                        "{} is queued; `ci-tools logs --follow` waits for it",
                        commit.short()
                    ));
                }
                out.flush().map_err(fatal)?;
                return Ok(ExitCode::SUCCESS);
            }
            ServerMsg::Update(_) => {}
            ServerMsg::Error { code, message, .. } => {
                return Err(Stopped::of(ClientError::Refused { code, message }.into()));
            }
            other => {
                return Err(Stopped::Fatal(anyhow::anyhow!(
                    "unexpected message while following: {}",
                    other.kind()
                )));
            }
        }
    }
}

/// Blocks until every commit has a final outcome, watching them (the
/// dispatcher says when something changes). Survives dispatcher restarts
/// (it reconnects, backing off) until the timeout; says at once when a
/// commit is not known to the dispatcher, and keeps waiting for it.
pub async fn wait(
    addr: &str,
    token: Option<Vec<u8>>,
    timeout: Duration,
    shas: &[String],
    format: Format,
) -> anyhow::Result<ExitCode> {
    if shas.is_empty() {
        bail!("give at least one commit id to wait for");
    }
    // Before the loop: a malformed id is not cured by waiting for the
    // dispatcher.
    for sha in shas {
        check_given(sha)?;
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut progress = progress::Progress::new();
    let mut backoff = Backoff::random();
    let mut last: HashMap<CommitId, ResultView> = HashMap::new();
    let mut commits: Option<Vec<CommitId>> = None;
    let mut said_unseen: Vec<CommitId> = Vec::new();
    let timed_out = |commits: &Option<Vec<CommitId>>, last: &HashMap<CommitId, ResultView>| {
        let missing: Vec<String> = match commits {
            None => shas.to_vec(),
            Some(cs) => cs
                .iter()
                .filter(|c| !last.get(c).is_some_and(ResultView::is_final))
                .map(|c| match last.get(c) {
                    Some(r) => format!("{} ({})", c.short(), r.outcome),
                    None => format!("{} (never seen by the dispatcher)", c.short()),
                })
                .collect(),
        };
        anyhow::anyhow!(
            "timed out after {:.0} s waiting for {}",
            timeout.as_secs_f64(),
            missing.join(", ")
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            progress.finish();
            return Err(timed_out(&commits, &last));
        }
        let since = Instant::now();
        let session = async {
            let mut client = connect(addr, token.clone()).await?;
            let cs = match &commits {
                Some(cs) => cs.clone(),
                None => {
                    let cs = resolve_all(&mut client, shas).await?;
                    commits = Some(cs.clone());
                    cs
                }
            };
            client
                .writer
                .send(&ClientMsg::Watch {
                    commits: cs.clone(),
                })
                .await
                .map_err(ClientError::from)?;
            loop {
                let Some(msg) = client.reader.recv().await.map_err(ClientError::from)? else {
                    bail!("the dispatcher closed the connection");
                };
                match msg {
                    ServerMsg::Update(v) => {
                        last.insert(v.commit, *v);
                    }
                    ServerMsg::Unseen { commit } => {
                        if !said_unseen.contains(&commit) {
                            said_unseen.push(commit);
                            progress.finish();
                            crate::cli::stderr_line(format_args!(
                                "ci-tools: warning: the dispatcher has not seen {}: submit it (ci-tools submit) or check that an observer watches its branch; waiting for it",
                                commit.short()
                            ));
                        }
                    }
                    ServerMsg::Error { code, message, .. } => {
                        return Err(ClientError::Refused { code, message }.into());
                    }
                    other => bail!("unexpected message while waiting: {}", other.kind()),
                }
                let count = |o: &str| last.values().filter(|r| r.outcome == o).count();
                let done = last.values().filter(|r| r.is_final()).count();
                progress.update(&format!(
                    "{done}/{} done: {} passed, {} not passed; {} running, {} queued, {} not yet seen",
                    cs.len(),
                    count("pass"),
                    done - count("pass"),
                    count("running"),
                    count("pending"),
                    cs.len() - last.len(),
                ));
                if done == cs.len() {
                    return anyhow::Ok(cs);
                }
            }
        };
        match tokio::time::timeout(left, session).await {
            Err(_) => {
                progress.finish();
                return Err(timed_out(&commits, &last));
            }
            Ok(Ok(cs)) => {
                progress.finish();
                let ordered: Vec<ResultView> =
                    cs.iter().filter_map(|c| last.get(c).cloned()).collect();
                let mut out = stdout();
                match format {
                    Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&ordered)?)?,
                    Format::Table => write!(out, "{}", results_table(&ordered))?,
                }
                out.flush()?;
                let all_pass = ordered.iter().all(|r| r.outcome == "pass");
                return Ok(if all_pass {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            Ok(Err(e)) => {
                // A refusal retrying cannot cure ends the wait; anything
                // else is a dispatcher away: wait for it, backing off.
                if let Some(ClientError::Refused { code, .. }) = e.downcast_ref::<ClientError>()
                    && (code.is_permanent() || *code == ErrorCode::NotFound)
                {
                    progress.finish();
                    return Err(e);
                }
                progress.update(&format!("waiting for the dispatcher at {addr}: {e:#}"));
                backoff.session_ended(since.elapsed().as_millis() as u64);
                let pause = backoff
                    .next_delay()
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The stored output of a commit's final attempt (`output SHA`, kept from
/// before `logs`): fails while the commit has no outcome.
pub async fn output(addr: &str, token: Option<Vec<u8>>, sha: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, token).await?;
    let commit = resolve(&mut client, sha).await?;
    let Some(view) = fetch_result(&mut client, commit).await? else {
        bail!("the dispatcher has not seen commit {commit}");
    };
    match client
        .request(&ClientMsg::Output {
            job: crate::core::JobId(view.job),
        })
        .await
        .context("fetching output")?
    {
        ServerMsg::Output(Some(bytes)) => {
            let mut out = stdout();
            out.write_all(&bytes)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        ServerMsg::OutputPruned(p) => bail!(
            "commit {}: {}",
            commit.short(),
            super::events::describe_pruned(&p)
        ),
        ServerMsg::Output(None) => bail!(
            "commit {} has no final result yet ({}); `ci-tools logs --follow {}` shows it as it runs",
            commit.short(),
            view.outcome,
            commit.short()
        ),
        other => bail!("unexpected answer to output: {}", other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::JobId;

    fn attempt(n: u32) -> JobRef {
        JobRef {
            job: JobId(7),
            attempt: n,
        }
    }

    fn view(sha: char, repository: Option<&str>) -> ResultView {
        ResultView {
            commit: CommitId::parse(&sha.to_string().repeat(40)).unwrap(),
            repository: repository.map(str::to_string),
            branch: Some("main".into()),
            outcome: "pending".into(),
            attempts: 0,
            runner: None,
            exit_code: None,
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
    fn the_repository_column_only_when_a_result_names_one() {
        let one = results_table(&[view('a', None), view('b', None)]);
        assert!(one.starts_with("COMMIT "), "{one}");
        assert!(!one.contains("REPOSITORY"), "{one}");
        let several = results_table(&[view('a', None), view('b', Some("lib"))]);
        let lines: Vec<&str> = several.lines().collect();
        let cols = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        assert_eq!(cols(lines[0]), "COMMIT REPOSITORY BRANCH", "{several}");
        assert!(lines[1].split_whitespace().nth(1) == Some("-"), "{several}");
        assert!(
            lines[2].split_whitespace().nth(1) == Some("lib"),
            "{several}"
        );
    }

    #[test]
    fn a_followed_log_prints_each_byte_once_whatever_is_sent_again() {
        let text = b"$ python3 -m unittest\nfirst line\nsecond line\n";
        let mut out = Vec::new();
        let mut p = Printed::default();
        p.chunk(&mut out, attempt(1), 0, &text[..10]).unwrap();
        // A restarted dispatcher sends it all again, in other pieces.
        p.chunk(&mut out, attempt(1), 0, &text[..4]).unwrap();
        p.chunk(&mut out, attempt(1), 4, &text[4..20]).unwrap();
        p.chunk(&mut out, attempt(1), 20, &text[20..]).unwrap();
        p.chunk(&mut out, attempt(1), 0, text).unwrap();
        assert_eq!(out, text);
        assert_eq!(p.next_offset, text.len() as u64);
    }

    #[test]
    fn a_gap_or_a_new_attempt_moves_on_without_repeating() {
        let mut out = Vec::new();
        let mut p = Printed::default();
        // A follower that joins late starts where the dispatcher's buffer does.
        p.chunk(&mut out, attempt(1), 100, b"abc").unwrap();
        p.chunk(&mut out, attempt(1), 110, b"xyz").unwrap();
        assert_eq!(out, b"abcxyz");
        // The next attempt starts over at its own offsets.
        p.chunk(&mut out, attempt(2), 0, b"123").unwrap();
        p.chunk(&mut out, attempt(2), 0, b"1234").unwrap();
        assert_eq!(out, b"abcxyz1234");
    }
}
