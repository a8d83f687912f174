//! Events as people and scripts read them: a table row, or one flat JSON
//! object per event (`replay --json`).

use serde_json::{Map, Value, json};

use crate::core::{Event, Record};

use super::table::format_ms;

/// `{"seq", "at_ms", "type", ...fields}`, with a result's report fields
/// (`outcome`, `exit_code`, ...) at the top level.
pub fn to_json(rec: &Record) -> Value {
    let mut obj = Map::new();
    obj.insert("seq".into(), json!(rec.seq));
    obj.insert("at_ms".into(), json!(rec.at_ms));
    obj.insert("type".into(), json!(rec.event.kind()));
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
