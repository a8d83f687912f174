//! The `ci-tools` subcommands, as library functions the binary calls.
//! Each prints a table for people or JSON (`--json`) for scripts.

pub mod bench;
pub mod demo;
pub mod events;
pub mod progress;
pub mod table;
pub mod up;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::{Client, Identity};
use crate::core::{CommitId, Record};
use crate::proto::{ClientMsg, REPLAY_PAGE, ResultView, Role, ServerMsg, StatusView};
use crate::store::{self, EventLog, SledLog};

/// How a tool identifies itself.
pub fn tool_identity(token: Option<Vec<u8>>) -> Identity {
    Identity {
        role: Role::Tool,
        name: "ci-tools".into(),
        token,
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

fn print_json_lines(records: &[Record], out: &mut impl Write) -> anyhow::Result<()> {
    for r in records {
        serde_json::to_writer(&mut *out, &events::to_json(r))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads the whole history from a data directory no dispatcher holds.
pub fn replay_offline(data_dir: &Path, json: bool, verify: bool) -> anyhow::Result<ExitCode> {
    if !data_dir.join("db").exists() {
        bail!(
            "{} holds no event log (no dispatcher ever ran there)",
            data_dir.display()
        );
    }
    let log = SledLog::open(data_dir)?;
    if verify {
        return verify_log(&log);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut from = 1;
    let mut rows = Vec::new();
    loop {
        let batch = log.read(from, REPLAY_PAGE)?;
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        if json {
            print_json_lines(&batch, &mut out)?;
        } else {
            rows.extend(batch.iter().map(events::to_row));
        }
    }
    if !json {
        out.write_all(table::render(&events::HEADER, &rows).as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Rebuilds the state from event 1 and compares it with the state from the
/// newest snapshot plus the tail.
fn verify_log(log: &SledLog) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let full = store::load_state(log, false)?;
    let full_ms = started.elapsed().as_millis();
    let snap = log.latest_snapshot()?;
    let snap_seq = snap.as_ref().map(|s| s.last_seq);
    let from_snapshot = store::load_state(log, true)?;
    println!(
        "replayed {} events in {full_ms} ms ({:.0} events/s); {} jobs, {} results",
        full.last_seq,
        full.last_seq as f64 / (full_ms.max(1) as f64 / 1000.0),
        full.jobs().len(),
        full.results
    );
    match snap_seq {
        Some(seq) => println!("newest snapshot covers events 1..={seq}"),
        None => println!("no snapshot stored"),
    }
    if full == from_snapshot {
        println!("ok: the state from the snapshot plus the tail equals the full replay");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("MISMATCH between the full replay and the snapshot-based state:");
        for line in state_diff(&full, &from_snapshot) {
            println!("  {line}");
        }
        Ok(ExitCode::from(1))
    }
}

/// Where two states differ, job by job, for `replay --verify`.
pub fn state_diff(a: &crate::core::State, b: &crate::core::State) -> Vec<String> {
    let mut out = Vec::new();
    if a.last_seq != b.last_seq {
        out.push(format!("last_seq: {} vs {}", a.last_seq, b.last_seq));
    }
    if a.jobs().len() != b.jobs().len() {
        out.push(format!(
            "job count: {} vs {}",
            a.jobs().len(),
            b.jobs().len()
        ));
    }
    for (x, y) in a.jobs().iter().zip(b.jobs()) {
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
            bail!("unexpected answer to replay: {answer:?}");
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
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, token).await?;
    let records = fetch_history(&mut client).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        print_json_lines(&records, &mut out)?;
    } else {
        let rows: Vec<_> = records.iter().map(events::to_row).collect();
        out.write_all(table::render(&events::HEADER, &rows).as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn fetch_status(client: &mut Client) -> anyhow::Result<StatusView> {
    match client.request(&ClientMsg::Status).await? {
        ServerMsg::Status(s) => Ok(s),
        other => bail!("unexpected answer to status: {other:?}"),
    }
}

pub async fn status(addr: &str, token: Option<Vec<u8>>, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr, token).await?;
    let s = fetch_status(&mut client).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} jobs, {} done, {} queued, {} running; log at event {}",
        s.jobs_total,
        s.jobs_done,
        s.queued_total,
        s.running.len(),
        s.last_seq
    );
    println!();
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
    print!(
        "{}",
        table::render(&["RUNNER", "STATE", "JOB", "COMMIT", "ATTEMPT"], &rows)
    );
    if !s.queued.is_empty() {
        println!();
        println!(
            "queued (oldest first): {}{}",
            s.queued
                .iter()
                .take(10)
                .map(|c| c.short())
                .collect::<Vec<_>>()
                .join(" "),
            if s.queued_total > 10 { " ..." } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fetch_results(
    client: &mut Client,
    commit: Option<CommitId>,
) -> anyhow::Result<Vec<ResultView>> {
    match client.request(&ClientMsg::Results { commit }).await? {
        ServerMsg::Results(r) => Ok(r),
        other => bail!("unexpected answer to results: {other:?}"),
    }
}

pub fn results_table(results: &[ResultView]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.commit.short(),
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
                r.message.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "COMMIT", "BRANCH", "OUTCOME", "ATTEMPTS", "RUNNER", "EXIT", "DURATION", "TESTS",
            "MESSAGE",
        ],
        &rows,
    )
}

pub async fn results(
    addr: &str,
    token: Option<Vec<u8>>,
    commit: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let commit = match commit {
        Some(c) => Some(CommitId::parse(&c)?),
        None => None,
    };
    let mut client = connect(addr, token).await?;
    let r = fetch_results(&mut client, commit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if r.is_empty() {
        println!("no results yet");
    } else {
        print!("{}", results_table(&r));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn submit(
    addr: &str,
    token: Option<Vec<u8>>,
    branch: Option<String>,
    shas: &[String],
) -> anyhow::Result<ExitCode> {
    if shas.is_empty() {
        bail!("give at least one commit id to submit");
    }
    let commits = parse_commits(shas)?;
    if let Some(b) = &branch {
        crate::core::ids::validate_branch_name(b)?;
    }
    let mut client = connect(addr, token).await?;
    let tip = commits.last().copied().filter(|_| branch.is_some());
    match client
        .request(&ClientMsg::Commits {
            branch,
            commits,
            tip,
        })
        .await?
    {
        ServerMsg::CommitsAck {
            accepted,
            duplicates,
        } => {
            println!(
                "queued {} commit(s); {duplicates} already known",
                accepted.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer to submit: {other:?}"),
    }
}

/// Blocks until every commit has a final outcome. Survives dispatcher
/// restarts (it reconnects) until the timeout.
pub async fn wait(
    addr: &str,
    token: Option<Vec<u8>>,
    timeout: Duration,
    shas: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    if shas.is_empty() {
        bail!("give at least one commit id to wait for");
    }
    let commits = parse_commits(shas)?;
    let deadline = Instant::now() + timeout;
    let mut progress = progress::Progress::new();
    let mut client: Option<Client> = None;
    let mut last: HashMap<CommitId, ResultView> = HashMap::new();
    loop {
        if Instant::now() >= deadline {
            progress.finish();
            let missing: Vec<String> = commits
                .iter()
                .filter(|c| !last.get(c).is_some_and(|r| r.is_final()))
                .map(|c| c.short())
                .collect();
            bail!(
                "timed out after {:.0} s waiting for {}",
                timeout.as_secs_f64(),
                missing.join(", ")
            );
        }
        if client.is_none() {
            match connect(addr, token.clone()).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    progress.update(&format!("waiting for the dispatcher at {addr}: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        let mut failed = false;
        for commit in &commits {
            if last.get(commit).is_some_and(|r| r.is_final()) {
                continue;
            }
            match fetch_results(c, Some(*commit)).await {
                Ok(mut r) => {
                    if let Some(v) = r.pop() {
                        last.insert(*commit, v);
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            client = None;
            continue;
        }
        let count = |o: &str| last.values().filter(|r| r.outcome == o).count();
        let done = last.values().filter(|r| r.is_final()).count();
        let unseen = commits.len() - last.len();
        progress.update(&format!(
            "{done}/{} done: {} passed, {} not passed; {} running, {} queued, {unseen} not yet seen",
            commits.len(),
            count("pass"),
            done - count("pass"),
            count("running"),
            count("pending"),
        ));
        if done == commits.len() {
            progress.finish();
            let ordered: Vec<ResultView> = commits
                .iter()
                .filter_map(|c| last.get(c).cloned())
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&ordered)?);
            } else {
                print!("{}", results_table(&ordered));
            }
            let all_pass = ordered.iter().all(|r| r.outcome == "pass");
            return Ok(if all_pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The output of a commit's final attempt.
pub async fn output(addr: &str, token: Option<Vec<u8>>, sha: &str) -> anyhow::Result<ExitCode> {
    let commit = CommitId::parse(sha)?;
    let mut client = connect(addr, token).await?;
    let r = fetch_results(&mut client, Some(commit)).await?;
    let Some(view) = r.first() else {
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
            std::io::stdout().write_all(&bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        ServerMsg::Output(None) => bail!(
            "commit {} has no final result yet ({})",
            commit.short(),
            view.outcome
        ),
        other => bail!("unexpected answer: {other:?}"),
    }
}
