//! One delivery attempt to one sink, and what became of it.

use std::process::Stdio;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body;
pub use super::machine::Delivery;
use super::sink::Sink;
use crate::core::Due;

/// How long one HTTP delivery may take, connection included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a notification command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of a refusal's answer or a command's output kept for the log.
const MAX_ANSWER_BYTES: usize = 300;

/// Sends `due` to `sink` once.
pub async fn deliver(
    client: &reqwest::Client,
    sink: &Sink,
    due: &Due,
    dashboard: Option<&str>,
) -> Delivery {
    match sink {
        Sink::Url { url, secret } => {
            let body = body::event(due, dashboard);
            let mut req = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-ci-event", due.notice.kind.as_str())
                .header("x-ci-delivery", due.key())
                .header("idempotency-key", due.key());
            if let Some(secret) = secret {
                req = req.header("x-ci-signature", signature(secret, &body));
            }
            http(req.body(body)).await
        }
        Sink::Status(target) => {
            let Some(r) = body::status(target, due, dashboard) else {
                return Delivery::Refused {
                    status: 0,
                    message: "no forge repository for this job: give --status-repo".into(),
                };
            };
            let req = client
                .post(&r.url)
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .header(r.auth.0, r.auth.1)
                .body(r.body);
            http(req).await
        }
        Sink::Command { argv } => command(argv, &body::event(due, dashboard)).await,
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-CI-Signature` value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!("sha256={}", crate::util::hex(&tag))
}

async fn http(req: reqwest::RequestBuilder) -> Delivery {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Delivery::Retry(describe_http_error(&e)),
    };
    let status = resp.status();
    if status.is_success() {
        return Delivery::Delivered;
    }
    let text = resp.text().await.unwrap_or_default();
    let message = one_line(&text);
    let code = status.as_u16();
    if status.is_client_error() && code != 408 && code != 429 {
        Delivery::Refused {
            status: code,
            message,
        }
    } else {
        Delivery::Retry(format!("answered {code}: {message}"))
    }
}

/// The error without the URL (it may hold a secret in its query).
fn describe_http_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", one_line(&detail))
    }
}

/// The last line that says something (a traceback's last line is its
/// error; an HTTP answer is usually one line).
fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    crate::proto::bounded(line.to_string(), MAX_ANSWER_BYTES)
}

/// Runs the command with the event on its standard input; exit status 0
/// means delivered.
async fn command(argv: &[String], event: &[u8]) -> Delivery {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Delivery::Retry(format!("cannot start {}: {e}", argv[0])),
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let run = async {
        // A command that does not read its input must not block us.
        let _ = stdin.write_all(event).await;
        drop(stdin);
        let mut err = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut err).await;
        (child.wait().await, err)
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok((Ok(status), _)) if status.success() => Delivery::Delivered,
        Ok((Ok(status), err)) => Delivery::Retry(format!(
            "{} exited with {status}: {}",
            argv[0],
            one_line(&String::from_utf8_lossy(&err))
        )),
        Ok((Err(e), _)) => Delivery::Retry(format!("waiting for {}: {e}", argv[0])),
        Err(_) => Delivery::Retry(format!(
            "{} ran for more than {} s and was killed",
            argv[0],
            COMMAND_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_githubs_format() {
        // RFC 4231 test case 2.
        let s = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
