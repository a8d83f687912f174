//! The `ci-tools` subcommands, as library functions the binary calls.
//! Each prints a table for people or JSON (`--json`) for scripts.

pub mod bench;
pub mod commits;
pub mod demo;
pub mod events;
pub mod progress;
pub mod table;
pub mod up;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;

use crate::client::{Client, Identity};
use crate::core::{CommitId, Record};
use crate::proto::{ClientMsg, REPLAY_PAGE, Role, ServerMsg, StatusView};
use crate::store::{self, EventLog, Rebuild, SledLog, SnapshotStore};

/// How a tool prints: a table for people, JSON for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

impl Format {
    pub fn json(json: bool) -> Format {
        if json { Format::Json } else { Format::Table }
    }
}

/// What `replay --data-dir` does with the log.
#[derive(Clone, Debug)]
pub enum Replay {
    Print(Format, RepoFilter),
    /// Rebuild from event 1 and compare with the snapshot-based state.
    Verify,
}

/// Standard output, buffered; every write error (a closed pipe included)
/// comes back as an error, never a panic (`println!` panics on EPIPE).
fn stdout() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::new(std::io::stdout().lock())
}

/// How a tool identifies itself.
pub fn tool_identity(token: Option<Vec<u8>>) -> Identity {
    Identity {
        role: Role::Tool,
        name: "ci-tools".into(),
        token,
        serves: crate::proto::Serves::Default,
    }
}

pub async fn connect(addr: &str, token: Option<Vec<u8>>) -> anyhow::Result<Client> {
    Ok(Client::connect(addr, &tool_identity(token), None, None).await?)
}

/// Parses commit ids, refusing the whole list if any is malformed.
pub fn parse_commits(values: &[String]) -> anyhow::Result<Vec<CommitId>> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        out.push(CommitId::parse(v).map_err(anyhow::Error::new)?);
    }
    Ok(out)
}

/// `replay --repository NAME`: only the records about that repository's
/// commits and branches (a job's records follow its `commit_seen`).
#[derive(Clone, Debug, Default)]
pub struct RepoFilter {
    repository: Option<String>,
    jobs: std::collections::HashSet<crate::core::JobId>,
}

impl RepoFilter {
    pub fn new(repository: Option<String>) -> RepoFilter {
        RepoFilter {
            repository,
            jobs: Default::default(),
        }
    }

    /// Keeps the records `keep` says are about the repository (all of
    /// them without a filter).
    pub fn apply(&mut self, records: Vec<Record>) -> Vec<Record> {
        if self.repository.is_none() {
            return records;
        }
        records.into_iter().filter(|r| self.keep(r)).collect()
    }

    fn keep(&mut self, rec: &Record) -> bool {
        let Some(want) = self.repository.as_deref() else {
            return true;
        };
        match &rec.event {
            crate::core::Event::CommitSeenIn {
                job, repository, ..
            } if repository == want => {
                self.jobs.insert(*job);
                true
            }
            crate::core::Event::BranchMovedIn { repository, .. } => repository == want,
            e => e.job().is_some_and(|j| self.jobs.contains(&j)),
        }
    }
}

fn print_json_lines(records: &[Record], out: &mut impl Write) -> anyhow::Result<()> {
    for r in records {
        serde_json::to_writer(&mut *out, &events::to_json(r))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads the whole history from a data directory no dispatcher holds,
/// without changing it (a read-only backup works too): see
/// [`SledLog::open_read_only`].
pub fn replay_offline(data_dir: &Path, what: Replay) -> anyhow::Result<ExitCode> {
    let log = SledLog::open_read_only(data_dir)?;
    let (format, mut filter) = match what {
        Replay::Verify => return verify_log(&log),
        Replay::Print(f, filter) => (f, filter),
    };
    let mut out = stdout();
    let mut from = 1;
    let mut rows = Vec::new();
    loop {
        let batch = log.read(from, REPLAY_PAGE)?;
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        let batch = filter.apply(batch);
        match format {
            Format::Json => print_json_lines(&batch, &mut out)?,
            Format::Table => rows.extend(batch.iter().map(events::to_row)),
        }
    }
    if format == Format::Table {
        out.write_all(table::render(&events::HEADER, &rows).as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Rebuilds the state from event 1 and compares it with the state from the
/// newest usable snapshot plus the tail.
fn verify_log(log: &SledLog) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let full = store::load_state(log, Rebuild::FromScratch)?;
    let full_ms = started.elapsed().as_millis();
    let newest = log.snapshot_seqs()?.first().copied();
    let from_snapshot = store::load_state(log, Rebuild::FromSnapshot)?;
    let mut out = stdout();
    writeln!(
        out,
        "replayed {} events in {full_ms} ms ({:.0} events/s); {} jobs, {} results, {} in memory",
        full.last_seq(),
        full.last_seq() as f64 / (full_ms.max(1) as f64 / 1000.0),
        full.jobs_seen(),
        full.results(),
        full.jobs_in_memory()
    )?;
    match newest {
        Some(seq) => writeln!(out, "newest snapshot covers events 1..={seq}")?,
        None => writeln!(out, "no snapshot stored")?,
    }
    let code = if full == from_snapshot {
        writeln!(
            out,
            "ok: the state from the snapshot plus the tail equals the full replay"
        )?;
        ExitCode::SUCCESS
    } else {
        writeln!(
            out,
            "MISMATCH between the full replay and the snapshot-based state:"
        )?;
        for line in state_diff(&full, &from_snapshot) {
            writeln!(out, "  {line}")?;
        }
        ExitCode::from(1)
    };
    out.flush()?;
    Ok(code)
}

/// Where two states differ, job by job, for `replay --verify`.
pub fn state_diff(a: &crate::core::State, b: &crate::core::State) -> Vec<String> {
    let mut out = Vec::new();
    if a.last_seq() != b.last_seq() {
        out.push(format!("last_seq: {} vs {}", a.last_seq(), b.last_seq()));
    }
    if a.jobs_seen() != b.jobs_seen() || a.jobs_in_memory() != b.jobs_in_memory() {
        out.push(format!(
            "jobs seen (in memory): {} ({}) vs {} ({})",
            a.jobs_seen(),
            a.jobs_in_memory(),
            b.jobs_seen(),
            b.jobs_in_memory()
        ));
    }
    for (x, y) in a.jobs().zip(b.jobs()) {
        if x != y {
            out.push(format!("job {}: {x:?} vs {y:?}", x.id));
        }
        if out.len() > 20 {
            out.push("...".into());
            return out;
        }
    }
    let qa: Vec<_> = a.queue().map(|j| j.id).collect();
    let qb: Vec<_> = b.queue().map(|j| j.id).collect();
    if qa != qb {
        out.push(format!("queue: {qa:?} vs {qb:?}"));
    }
    let ha: Vec<_> = a.holders().collect();
    let hb: Vec<_> = b.holders().collect();
    if ha != hb {
        out.push(format!("holders: {ha:?} vs {hb:?}"));
    }
    if a.branch_tips() != b.branch_tips() {
        out.push(format!(
            "branch tips: {:?} vs {:?}",
            a.branch_tips(),
            b.branch_tips()
        ));
    }
    if out.is_empty() {
        out.push("(internal indexes differ)".into());
    }
    out
}

/// Fetches the history from a running dispatcher, page by page.
pub async fn fetch_history(client: &mut Client) -> anyhow::Result<Vec<Record>> {
    let mut from = 1;
    let mut all = Vec::new();
    loop {
        let answer = client
            .request(&ClientMsg::Replay {
                from_seq: from,
                limit: REPLAY_PAGE as u32,
            })
            .await?;
        let ServerMsg::Events { records, .. } = answer else {
            bail!("unexpected answer to replay: {}", answer.kind());
        };
        let Some(last) = records.last() else { break };
        from = last.seq + 1;
        all.extend(records);
    }
    Ok(all)
}

pub async fn replay_online(
    addr: &str,
    token: Option<Vec<u8>>,
    format: Format,
    mut filter: RepoFilter,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, token).await?;
    let records = filter.apply(fetch_history(&mut client).await?);
    let mut out = stdout();
    match format {
        Format::Json => print_json_lines(&records, &mut out)?,
        Format::Table => {
            let rows: Vec<_> = records.iter().map(events::to_row).collect();
            out.write_all(table::render(&events::HEADER, &rows).as_bytes())?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn fetch_status(client: &mut Client) -> anyhow::Result<StatusView> {
    match client.request(&ClientMsg::Status).await? {
        ServerMsg::Status(s) => Ok(s),
        other => bail!("unexpected answer to status: {}", other.kind()),
    }
}

pub async fn status(
    addr: &str,
    token: Option<Vec<u8>>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, token).await?;
    let s = fetch_status(&mut client).await?;
    let mut out = stdout();
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} jobs, {} done, {} queued, {} running; log at event {}",
        s.jobs_total,
        s.jobs_done,
        s.queued_total,
        s.running.len(),
        s.last_seq
    )?;
    // Per repository when a named one has queued jobs (a dispatcher of one
    // repository prints what it always printed).
    if s.repositories.iter().any(|r| r.repository.is_some()) {
        for r in &s.repositories {
            writeln!(
                out,
                "repository {}: {} queued{}",
                r.repository.as_deref().unwrap_or("(default)"),
                r.queued,
                if r.served {
                    ""
                } else {
                    "; no connected runner serves it: its jobs wait"
                }
            )?;
        }
    }
    writeln!(out)?;
    let rows: Vec<Vec<String>> = s
        .runners
        .iter()
        .map(|r| {
            let running = s.running.iter().find(|x| x.runner == r.name);
            vec![
                r.name.clone(),
                r.state.clone(),
                running
                    .map(|x| x.job.to_string())
                    .unwrap_or_else(|| "-".into()),
                running
                    .map(|x| x.commit.short())
                    .unwrap_or_else(|| "-".into()),
                running
                    .map(|x| x.attempt.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table::render(&["RUNNER", "STATE", "JOB", "COMMIT", "ATTEMPT"], &rows)
    )?;
    if !s.queued.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "queued (oldest first): {}{}",
            s.queued
                .iter()
                .take(10)
                .map(|c| c.short())
                .collect::<Vec<_>>()
                .join(" "),
            if s.queued_total > 10 { " ..." } else { "" }
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn submit(
    addr: &str,
    token: Option<Vec<u8>>,
    repository: Option<String>,
    branch: Option<String>,
    shas: &[String],
) -> anyhow::Result<ExitCode> {
    if shas.is_empty() {
        bail!("give at least one commit id to submit");
    }
    let commits = parse_commits(shas)?;
    if let Some(zero) = commits.iter().find(|c| c.is_zero()) {
        bail!(
            "{zero} is not a commit: the all-zero id means \"no commit\" in git hooks (a branch created or deleted); skip it in the hook"
        );
    }
    if let Some(b) = &branch {
        crate::core::ids::validate_branch_name(b)?;
    }
    let mut client = connect(addr, token).await?;
    let tip = commits.last().copied().filter(|_| branch.is_some());
    match client
        .request(&ClientMsg::Commits {
            repository,
            branch,
            commits,
            tip,
            infos: Vec::new(),
        })
        .await?
    {
        ServerMsg::CommitsAck {
            accepted,
            duplicates,
        } => {
            let mut out = stdout();
            writeln!(
                out,
                "queued {} commit(s); {duplicates} already known",
                accepted.len()
            )?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer to submit: {}", other.kind()),
    }
}
