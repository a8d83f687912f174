//! What each delivery says, made only from the notification as the log
//! holds it and the dispatcher's fixed settings: a repeat after a restart
//! is byte for byte the first delivery.

use serde_json::{Value, json};

use super::sink::{Forge, StatusTarget};
use crate::core::{Due, NoticeKind, NoticeState, Outcome};

/// The JSON event a URL or a command is sent: the contract's fields (`id`,
/// `type`, `commit`, `branch`, `outcome`) and the rest of the result.
pub fn event(due: &Due, dashboard: Option<&str>) -> Vec<u8> {
    let n = &due.notice;
    let body = json!({
        "id": due.key(),
        "type": n.kind.as_str(),
        "commit": n.commit.to_string(),
        "repository": n.repository,
        "branch": n.branch,
        "outcome": n.state.as_str(),
        "job": n.job.0,
        "attempt": n.attempt,
        "runner": n.runner,
        "message": n.message,
        "tests": n.tests.map(|t| json!({
            "total": t.total,
            "passed": t.passed,
            "failed": t.failed,
            "errors": t.errors,
            "skipped": t.skipped,
        })),
        "duration_ms": n.duration_ms,
        "url": link(dashboard, due),
        "at_ms": due.at_ms,
    });
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// The commit's page on the dashboard, when its address is known.
fn link(dashboard: Option<&str>, due: &Due) -> Option<String> {
    dashboard.map(|d| format!("{}/commits/{}", d.trim_end_matches('/'), due.notice.commit))
}

/// One request to a forge's status API.
#[derive(Debug, PartialEq)]
pub struct StatusRequest {
    pub url: String,
    /// The authorization header's name and value.
    pub auth: (&'static str, String),
    pub body: Vec<u8>,
}

/// Longest description the forges keep (GitHub's limit is 140 characters).
const MAX_DESCRIPTION_CHARS: usize = 140;

/// The status request for `due` on `target`: state names per forge;
/// `None` when neither `--status-repo` nor the job names the forge's
/// repository.
pub fn status(target: &StatusTarget, due: &Due, dashboard: Option<&str>) -> Option<StatusRequest> {
    let n = &due.notice;
    let repo = target.repo.as_deref().or(n.repository.as_deref())?;
    debug_assert_eq!(n.kind, NoticeKind::Status);
    let api = target.api.trim_end_matches('/');
    let description: String = match n.state {
        NoticeState::Finished(o) if n.message.is_empty() => o.as_str().to_string(),
        NoticeState::Finished(o) => format!("{}: {}", o.as_str(), n.message),
        _ => n.message.clone(),
    }
    .chars()
    .take(MAX_DESCRIPTION_CHARS)
    .collect();
    let target_url = link(dashboard, due);
    match target.forge {
        Forge::Github | Forge::Gitea => {
            // Neither has "running": it is pending with a description.
            let state = match n.state {
                NoticeState::Queued | NoticeState::Running => "pending",
                NoticeState::Finished(Outcome::Pass) => "success",
                NoticeState::Finished(Outcome::Fail | Outcome::Timeout) => "failure",
                NoticeState::Finished(Outcome::Error | Outcome::Cancelled) => "error",
            };
            let mut body = json!({
                "state": state,
                "description": description,
                "context": target.context,
            });
            if let Some(u) = target_url {
                body["target_url"] = Value::String(u);
            }
            let auth = match target.forge {
                Forge::Github => ("Authorization", format!("Bearer {}", target.token)),
                _ => ("Authorization", format!("token {}", target.token)),
            };
            Some(StatusRequest {
                url: format!("{api}/repos/{repo}/statuses/{}", n.commit),
                auth,
                body: serde_json::to_vec(&body).expect("a JSON value serializes"),
            })
        }
        Forge::Gitlab => {
            let state = match n.state {
                NoticeState::Queued => "pending",
                NoticeState::Running => "running",
                NoticeState::Finished(Outcome::Pass) => "success",
                NoticeState::Finished(Outcome::Cancelled) => "canceled",
                NoticeState::Finished(_) => "failed",
            };
            let mut body = json!({
                "state": state,
                "description": description,
                "name": target.context,
            });
            if let Some(b) = &n.branch {
                body["ref"] = Value::String(b.clone());
            }
            if let Some(u) = target_url {
                body["target_url"] = Value::String(u);
            }
            Some(StatusRequest {
                url: format!(
                    "{api}/projects/{}/statuses/{}",
                    percent_encode_path(repo),
                    n.commit
                ),
                auth: ("PRIVATE-TOKEN", target.token.clone()),
                body: serde_json::to_vec(&body).expect("a JSON value serializes"),
            })
        }
    }
}

/// A GitLab project path as one path segment (`group/app` → `group%2Fapp`).
fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CommitId, JobId, Notice, TestCounts};

    fn due(kind: NoticeKind, state: NoticeState) -> Due {
        Due {
            n: 7,
            sink: "url:0011223344556677".into(),
            notice: Notice {
                kind,
                job: JobId(3),
                commit: CommitId::parse("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3").unwrap(),
                repository: None,
                branch: Some("main".into()),
                attempt: 1,
                state,
                runner: Some("r1".into()),
                message: "2 failed, 5 passed".into(),
                tests: Some(TestCounts {
                    total: 7,
                    passed: 5,
                    failed: 2,
                    errors: 0,
                    skipped: 0,
                }),
                duration_ms: 1200,
            },
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn an_event_carries_the_contract_fields_and_is_the_same_every_time() {
        let d = due(
            NoticeKind::BranchBroken,
            NoticeState::Finished(Outcome::Fail),
        );
        let a = event(&d, Some("http://ci.example/"));
        assert_eq!(a, event(&d, Some("http://ci.example/")));
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["id"], "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3.7");
        assert_eq!(v["type"], "branch_broken");
        assert_eq!(v["commit"], "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3");
        assert_eq!(v["branch"], "main");
        assert_eq!(v["outcome"], "fail");
        assert_eq!(v["tests"]["failed"], 2);
        assert_eq!(
            v["url"],
            "http://ci.example/commits/a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
        );
    }

    fn target(forge: Forge, api: &str, repo: &str) -> StatusTarget {
        StatusTarget {
            forge,
            api: api.into(),
            repo: Some(repo.into()),
            context: "ci".into(),
            token: "tok".into(),
        }
    }

    #[test]
    fn each_forge_gets_its_path_header_and_state_names() {
        let running = due(NoticeKind::Status, NoticeState::Running);
        let failed = due(NoticeKind::Status, NoticeState::Finished(Outcome::Fail));
        let gh = target(Forge::Github, "https://api.github.com/", "o/r");
        let r = status(&gh, &running, None).unwrap();
        assert_eq!(
            r.url,
            "https://api.github.com/repos/o/r/statuses/a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
        );
        assert_eq!(r.auth, ("Authorization", "Bearer tok".to_string()));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["state"], "pending");
        assert_eq!(v["context"], "ci");
        let v: Value = serde_json::from_slice(&status(&gh, &failed, None).unwrap().body).unwrap();
        assert_eq!(v["state"], "failure");

        let gt = target(Forge::Gitea, "https://git.example/api/v1", "o/r");
        assert_eq!(
            status(&gt, &running, None).unwrap().auth,
            ("Authorization", "token tok".to_string())
        );

        let gl = target(Forge::Gitlab, "https://gitlab.example/api/v4", "group/app");
        let r = status(&gl, &running, Some("http://ci")).unwrap();
        assert_eq!(
            r.url,
            "https://gitlab.example/api/v4/projects/group%2Fapp/statuses/a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
        );
        assert_eq!(r.auth.0, "PRIVATE-TOKEN");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(v["name"], "ci");
        assert_eq!(v["ref"], "main");
        assert!(
            v["target_url"]
                .as_str()
                .unwrap()
                .ends_with("/commits/a94a8fe5ccb19ba61c4c0873d391e987982fbbd3")
        );
        let v: Value = serde_json::from_slice(&status(&gl, &failed, None).unwrap().body).unwrap();
        assert_eq!(v["state"], "failed");
    }
}
