//! Events as people and scripts read them: a table row, or one flat JSON
//! object per event (`replay --json`).

use serde_json::{Map, Value, json};

use crate::core::{Event, PruneReason, PrunedOutput, Record};

use super::table::format_ms;

/// `{"seq", "at_ms", "type", ...fields}`, with a result's report fields
/// (`outcome`, `exit_code`, ...) at the top level.
pub fn to_json(rec: &Record) -> Value {
    let mut obj = Map::new();
    obj.insert("seq".into(), json!(rec.seq));
    obj.insert("at_ms".into(), json!(rec.at_ms));
    obj.insert("type".into(), json!(rec.event.kind()));
    if let Event::OutputsPruned { outputs, .. } = &rec.event {
        obj.insert(
            "bytes".into(),
            json!(outputs.iter().map(|o| o.bytes).sum::<u64>()),
        );
    }
    if let Ok(Value::Object(outer)) = serde_json::to_value(&rec.event) {
        for (_, inner) in outer {
            if let Value::Object(fields) = inner {
                for (k, v) in fields {
                    if k == "report" {
                        if let Value::Object(r) = v {
                            obj.extend(r);
                        }
                    } else {
                        obj.insert(k, v);
                    }
                }
            }
        }
    }
    Value::Object(obj)
}

/// What a reader says instead of an output retention removed: when, why
/// and how big it was, and that the job's result is kept. Never to be
/// mistaken for an empty output.
pub fn describe_pruned(p: &PrunedOutput) -> String {
    let why = match p.reason {
        PruneReason::Age => "older than --keep-outputs-for",
        PruneReason::Size => "the stored outputs were over --keep-outputs-bytes",
    };
    format!(
        "the output of job {} (attempt {}, {} bytes) was removed by retention at {} UTC ({}: {why}); the result is kept",
        p.output.job.job,
        p.output.job.attempt,
        p.output.bytes,
        format_ms(p.at_ms),
        p.reason.as_str(),
    )
}

/// A pruned output as `ci-tools pruned --json` prints it.
pub fn pruned_json(p: &PrunedOutput) -> Value {
    json!({
        "job": p.output.job.job.0,
        "attempt": p.output.job.attempt,
        "commit": p.output.commit.to_string(),
        "finished_at_ms": p.output.at_ms,
        "pruned_at_ms": p.at_ms,
        "reason": p.reason.as_str(),
        "bytes": p.output.bytes,
        "seq": p.seq,
    })
}

pub const HEADER: [&str; 8] = [
    "SEQ",
    "TIME (UTC)",
    "TYPE",
    "JOB",
    "COMMIT",
    "RUNNER",
    "ATTEMPT",
    "DETAIL",
];

pub fn to_row(rec: &Record) -> Vec<String> {
    let dash = || "-".to_string();
    let (job, commit, runner, attempt, detail) = match &rec.event {
        Event::DispatcherStarted { pid } => (dash(), dash(), dash(), dash(), format!("pid {pid}")),
        Event::NotificationDue { n, sink, notice } => (
            notice.job.to_string(),
            notice.commit.short(),
            notice.runner.clone().unwrap_or_else(dash),
            notice.attempt.to_string(),
            format!(
                "notification {n} due to {sink}: {} {}",
                notice.kind.as_str(),
                notice.state.as_str()
            ),
        ),
        Event::NotificationDelivered { n } => (
            dash(),
            dash(),
            dash(),
            dash(),
            format!("notification {n} delivered"),
        ),
        Event::NotificationDropped { n, reason } => (
            dash(),
            dash(),
            dash(),
            dash(),
            match reason {
                crate::core::DropReason::Refused { status, message } => {
                    format!("notification {n} dropped: refused with {status}: {message}")
                }
                other => format!("notification {n} dropped: {}", other.as_str()),
            },
        ),
        Event::JobCancelled {
            job,
            commit,
            attempt,
        } => (
            job.to_string(),
            commit.short(),
            dash(),
            attempt.to_string(),
            "cancelled".to_string(),
        ),
        Event::JobRetried {
            job,
            commit,
            attempt,
        } => (
            job.to_string(),
            commit.short(),
            dash(),
            attempt.to_string(),
            "queued again".to_string(),
        ),
        Event::JobRestored { job } => (
            job.id.to_string(),
            job.commit.short(),
            job.branch.clone().unwrap_or_else(dash),
            job.finished.attempt.to_string(),
            format!(
                "{} (attempt {}) back from the history",
                job.finished.outcome.as_str(),
                job.finished.attempt
            ),
        ),
        Event::OutputsPruned { reason, outputs } => {
            let one = (outputs.len() == 1).then(|| outputs[0]);
            let bytes: u64 = outputs.iter().map(|o| o.bytes).sum();
            let mut jobs: Vec<String> = outputs
                .iter()
                .take(8)
                .map(|o| format!("{}#{}", o.job.job, o.job.attempt))
                .collect();
            if outputs.len() > 8 {
                jobs.push(format!("and {} more", outputs.len() - 8));
            }
            (
                one.map_or_else(dash, |o| o.job.job.to_string()),
                one.map_or_else(dash, |o| o.commit.short()),
                dash(),
                one.map_or_else(dash, |o| o.job.attempt.to_string()),
                format!(
                    "{} output{} ({bytes} bytes) removed by retention ({}): {}",
                    outputs.len(),
                    if outputs.len() == 1 { "" } else { "s" },
                    reason.as_str(),
                    jobs.join(", ")
                ),
            )
        }
        Event::MemoryWindow { jobs } => (
            dash(),
            dash(),
            dash(),
            dash(),
            format!("{jobs} finished jobs kept in memory from here on"),
        ),
        Event::DispatcherPaused { gap_ms } => (
            dash(),
            dash(),
            dash(),
            dash(),
            format!("did not run for {gap_ms} ms; runners given grace"),
        ),
        Event::CommitSeen {
            job,
            commit,
            branch,
        } => (
            job.to_string(),
            commit.short(),
            dash(),
            dash(),
            format!("branch {}", branch.as_deref().unwrap_or("-")),
        ),
        Event::CommitSeenIn {
            job,
            commit,
            branch,
            repository,
        } => (
            job.to_string(),
            commit.short(),
            dash(),
            dash(),
            format!(
                "repository {repository} branch {}",
                branch.as_deref().unwrap_or("-")
            ),
        ),
        Event::BranchMovedIn {
            repository,
            branch,
            tip,
        } => (
            dash(),
            tip.short(),
            dash(),
            dash(),
            format!("repository {repository} branch {branch} moved"),
        ),
        Event::BranchMoved { branch, tip } => (
            dash(),
            tip.short(),
            dash(),
            dash(),
            format!("branch {branch} moved"),
        ),
        Event::JobAssigned {
            job,
            commit,
            runner,
            attempt,
        } => (
            job.to_string(),
            commit.short(),
            runner.clone(),
            attempt.to_string(),
            String::new(),
        ),
        Event::HeartbeatLost {
            runner,
            job,
            attempt,
            reason,
        } => (
            job.to_string(),
            dash(),
            runner.clone(),
            attempt.to_string(),
            reason.as_str().to_string(),
        ),
        Event::Result {
            job,
            commit,
            runner,
            attempt,
            report,
            ..
        } => (
            job.to_string(),
            commit.short(),
            runner.clone().unwrap_or_else(dash),
            attempt.to_string(),
            format!(
                "{}{} {}",
                report.outcome.as_str(),
                report
                    .exit_code
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default(),
                report.message
            )
            .trim_end()
            .to_string(),
        ),
    };
    vec![
        rec.seq.to_string(),
        format_ms(rec.at_ms),
        rec.event.kind().to_string(),
        job,
        commit,
        runner,
        attempt,
        detail,
    ]
}
