//! The web side's figures (issue 10), against the real `ci-dispatcher`
//! with `--http` over loopback:
//!
//! - `pages`: the commits API and pages with a long history: request time
//!   on one kept-alive connection (client and loopback included, so an
//!   upper bound of the server's time);
//! - `live`: from a test writing a line (it prints its own wall-clock
//!   time) to the line arriving, over the log's server-sent events and
//!   over the TCP protocol's `Follow` (`ci-tools logs --follow`);
//! - `dashboards`: job cycles per second while dashboard clients stream.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::{DispatcherProc, generate_history, identity, save_snapshot};
use crate::client::Client;
use crate::core::CommitInfo;
use crate::proto::{ClientMsg, Role, ServerMsg};
use crate::store::{OutputStore, SledLog};

/// One HTTP/1.1 connection, kept alive between requests.
struct Http {
    send: SendRequest<Empty<Bytes>>,
    host: String,
}

impl Http {
    async fn connect(addr: &str) -> anyhow::Result<Http> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Http {
            send,
            host: addr.to_string(),
        })
    }

    fn request(&self, path: &str) -> anyhow::Result<hyper::Request<Empty<Bytes>>> {
        Ok(hyper::Request::get(path)
            .header(hyper::header::HOST, &self.host)
            .body(Empty::new())?)
    }

    /// The whole body of `GET path`, which must answer 200.
    async fn get(&mut self, path: &str) -> anyhow::Result<Bytes> {
        self.send.ready().await?;
        let res = self.send.send_request(self.request(path)?).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if status != hyper::StatusCode::OK {
            bail!(
                "GET {path}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(body)
    }

    /// `GET path` as a stream: the response, its body read as it comes.
    async fn stream(mut self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        self.send.ready().await?;
        let res = self.send.send_request(self.request(path)?).await?;
        if res.status() != hyper::StatusCode::OK {
            bail!("GET {path}: {}", res.status());
        }
        Ok(res.into_body())
    }
}

fn wall_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

// ---------------------------------------------------------------- pages

/// The request times of each page and API call, in ms.
pub(super) struct Pages {
    pub api_first: Vec<f64>,
    pub api_next: Vec<f64>,
    pub commits_page: Vec<f64>,
    pub commit_page: Vec<f64>,
    pub history_page: Vec<f64>,
}

/// With `commits` finished commits of history (each with an author and a
/// subject), `requests` of each kind, one after another.
pub(super) async fn pages(tmp: &Path, commits: u64, requests: usize) -> anyhow::Result<Pages> {
    let dir = tmp.join("pages");
    let state = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            // Three events per commit, and a start now and then.
            let state = generate_history(&dir, commits * 3 + commits / 30_000 + 3, 64)?;
            let mut log = SledLog::open(&dir)?;
            for id in 1..=state.jobs_seen() {
                let j = crate::core::JobId(id);
                let info = CommitInfo {
                    author: format!("Author {} <a{}@example.org>", j.0 % 97, j.0 % 97),
                    subject: format!("Change number {} of the benchmark history", j.0),
                    time_ms: 1_700_000_000_000 + j.0 * 60_000,
                };
                log.put_info(j, &info)?;
            }
            crate::store::EventLog::flush(&mut log)?;
            drop(log);
            save_snapshot(&dir, &state)?;
            Ok(state)
        })
        .await??
    };
    let jobs = state.jobs_seen();
    let middle = super::fake_commit(0xbe7c, jobs / 2);
    let d = DispatcherProc::spawn(&dir, &["--http", "127.0.0.1:0"]).await?;
    let http_addr = d.http.clone().context("no http address")?;
    let mut http = Http::connect(&http_addr).await?;
    let first = http.get("/api/v1/commits?limit=50").await?;
    let first: serde_json::Value = serde_json::from_slice(&first)?;
    let shown = first["commits"].as_array().map_or(0, |a| a.len());
    if shown != 50 {
        bail!("the first page has {shown} commits, not 50: {first}");
    }
    let cursor = first["next"]
        .as_str()
        .context("the first page has no next cursor")?
        .to_string();
    let next_path = format!("/api/v1/commits?limit=50&cursor={cursor}");
    let commit_path = format!("/commits/{middle}");
    let mut out = Pages {
        api_first: Vec::new(),
        api_next: Vec::new(),
        commits_page: Vec::new(),
        commit_page: Vec::new(),
        history_page: Vec::new(),
    };
    for i in 0..requests + 5 {
        for (path, into) in [
            ("/api/v1/commits?limit=50", &mut out.api_first),
            (next_path.as_str(), &mut out.api_next),
            ("/", &mut out.commits_page),
            (commit_path.as_str(), &mut out.commit_page),
            ("/history", &mut out.history_page),
        ] {
            let t = Instant::now();
            http.get(path).await?;
            // The first few warm caches up.
            if i >= 5 {
                into.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    d.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

// ---------------------------------------------------------------- live

/// A test that prints its wall-clock time every 50 ms for two seconds.
const TIMESTAMPS: &str = "import time\nfor i in range(40):\n    print('T=%.6f' % time.time(), flush=True)\n    time.sleep(0.05)\n";

/// `T=<seconds>.<6 digits>`: a whole line of the test above (a line cut
/// in two by a chunk boundary never parses as one).
fn stamp(line: &str) -> Option<f64> {
    let t = line.trim_end_matches('\r').strip_prefix("T=")?;
    let (_, frac) = t.split_once('.')?;
    if frac.len() != 6 {
        return None;
    }
    t.parse().ok()
}

/// Delays (ms) of the lines in `text` stamped after `since`, arrived at
/// `now`.
fn delays(text: &str, since: f64, now: f64, into: &mut Vec<f64>) {
    for line in text.lines() {
        if let Some(t) = stamp(line)
            && t > since
        {
            into.push((now - t) * 1000.0);
        }
    }
}

/// Lines of the log's SSE stream as they arrive, until it ends.
async fn sse_delays(http_addr: &str, sha: &str, into: &mut Vec<f64>) -> anyhow::Result<()> {
    let http = Http::connect(http_addr).await?;
    let since = wall_s();
    let mut body = http.stream(&format!("/api/v1/commits/{sha}/log")).await?;
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = wall_s();
        pending.push_str(&String::from_utf8_lossy(data));
        // Whole lines only; SSE data lines carry the output's lines.
        if let Some(end) = pending.rfind('\n') {
            let text: String = pending.drain(..=end).collect();
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            delays(&data, since, now, into);
        }
    }
    Ok(())
}

/// The same over the TCP protocol: `Follow`, as `ci-tools logs --follow`.
async fn follow_delays(
    addr: &str,
    commit: crate::core::CommitId,
    into: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let mut c = Client::connect(addr, &identity(Role::Tool, "bench".into()), None, None).await?;
    let since = wall_s();
    c.writer.send(&ClientMsg::Follow { commit }).await?;
    let mut line = Vec::new();
    loop {
        match c.reader.recv().await? {
            Some(ServerMsg::OutputChunk { data, .. }) => {
                let now = wall_s();
                for b in data {
                    if b == b'\n' {
                        delays(&String::from_utf8_lossy(&line), since, now, into);
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
            Some(ServerMsg::Update(_)) => {}
            Some(ServerMsg::Ended(_)) | None => return Ok(()),
            Some(other) => bail!("unexpected while following: {}", other.kind()),
        }
    }
}

/// Per line of output: (SSE delays, TCP follow delays), in ms, over
/// `reps` jobs of a real runner.
pub(super) async fn live(tmp: &Path, reps: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let repo = tmp.join("live-repo");
    let ci_toml = "[test]\ncommand = [\"python3\", \"stamps.py\"]\n";
    super::super::demo::commit_files(
        &repo,
        &[(".ci.toml", ci_toml), ("stamps.py", TIMESTAMPS)],
        "first",
    )?;
    let dir = tmp.join("live-dispatcher");
    let d = DispatcherProc::spawn(&dir, &["--http", "127.0.0.1:0"]).await?;
    let http_addr = d.http.clone().context("no http address")?;
    let mut runner = super::spawn_runner(&d.addr, &repo, tmp, "live")?;
    let mut tool =
        Client::connect(&d.addr, &identity(Role::Tool, "bench".into()), None, None).await?;
    let (mut sse, mut tcp) = (Vec::new(), Vec::new());
    // Repetition 0 warms up (the runner's first clone).
    for i in 0..=reps {
        let c = super::super::demo::commit_files(
            &repo,
            &[("n.txt", &format!("{i}\n"))],
            &format!("change {i}"),
        )?;
        match tool
            .request(&ClientMsg::Commits {
                repository: None,
                branch: Some("main".into()),
                commits: vec![c],
                tip: Some(c),
                infos: Vec::new(),
            })
            .await?
        {
            ServerMsg::CommitsAck { .. } => {}
            other => bail!("unexpected answer to commits: {}", other.kind()),
        }
        let sha = c.to_string();
        let (mut s, mut t) = (Vec::new(), Vec::new());
        let (a, b) = tokio::join!(
            sse_delays(&http_addr, &sha, &mut s),
            follow_delays(&d.addr, c, &mut t)
        );
        a?;
        b?;
        if i > 0 {
            if s.len() < 20 || t.len() < 20 {
                bail!(
                    "too few lines arrived live ({} over SSE, {} over TCP); see {}",
                    s.len(),
                    t.len(),
                    tmp.join("live-runner.log").display()
                );
            }
            sse.extend(s);
            tcp.extend(t);
        }
    }
    super::stop_runner(&mut runner).await;
    d.stop().await?;
    Ok((sse, tcp))
}

// ----------------------------------------------------------- dashboards

/// How often a dashboard client looks again: four times a second, far
/// more often than a person's page does, so the figure errs on the safe
/// side.
const DASHBOARD_PERIOD: Duration = Duration::from_millis(250);

/// One dashboard client until `stop`: each period it loads the commits
/// page and the API's first page, then streams the newest commit's log
/// until that job ends, as a person watching the newest job does.
/// Returns how many rounds it made.
pub(super) async fn dashboard(
    addr: String,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<u64> {
    let mut http = Http::connect(&addr).await?;
    let rounds = std::sync::atomic::AtomicU64::new(0);
    let round = async {
        loop {
            http.get("/").await?;
            let page = http.get("/api/v1/commits?limit=50").await?;
            let page: serde_json::Value = serde_json::from_slice(&page)?;
            if let Some(sha) = page["commits"][0]["commit"].as_str() {
                let mut body = Http::connect(&addr)
                    .await?
                    .stream(&format!("/api/v1/commits/{sha}/log"))
                    .await?;
                while let Some(frame) = body.frame().await {
                    frame?;
                }
            }
            rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(DASHBOARD_PERIOD).await;
        }
    };
    tokio::select! {
        r = round => r,
        _ = stop.cancelled() => Ok(rounds.load(std::sync::atomic::Ordering::Relaxed)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_commit;
    use super::*;
    use crate::core::JobId;

    #[test]
    fn only_whole_stamped_lines_count() {
        assert_eq!(stamp("T=1764000000.123456"), Some(1_764_000_000.123456));
        for cut in [
            "T=1764000000.12345",
            "6",
            "T=1764000000",
            "x T=1.000000",
            "",
        ] {
            assert_eq!(stamp(cut), None, "{cut:?}");
        }
        let mut v = Vec::new();
        delays("T=10.000000\nT=20.000000\nT=20.5000", 15.0, 20.25, &mut v);
        assert_eq!(v, vec![250.0]);
    }

    #[test]
    fn commits_of_the_generated_history_are_the_fake_ones() {
        // The page figure looks a middle commit up by its job.
        let dir = tempfile::tempdir().unwrap();
        let state = generate_history(dir.path(), 31, 8).unwrap();
        let j = state.job(JobId(5)).unwrap();
        assert_eq!(j.commit, fake_commit(0xbe7c, 5));
    }
}
