//! `ci-tools bench`: the performance figures of issue 5, measured against
//! the real `ci-dispatcher` binary over loopback.
//!
//! Everything is built in a temporary directory: histories are written
//! straight into a `SledLog` (one big batch per 30,000 events, one flush),
//! runners and observers are simulated with [`Client`] speaking the real
//! protocol, and the push-to-result figure uses a real git repository, a
//! real `ci-runner` and `ci-tools submit`. Each figure is the median of
//! several repetitions (min and max are printed too). No timing threshold is
//! asserted here; `BENCHMARKS.md` compares the figures with the targets.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::client::{Client, Identity};
use crate::core::{CommitId, Event, JobId, JobRef, JobReport, Outcome, Record, State};
use crate::proto::{ClientMsg, Role, ServerMsg};
use crate::store::{EventLog, SledLog, SnapshotStore};
use crate::util::now_ms;

/// The figures `bench` can measure; `--only` picks some.
pub const FIGURES: [&str; 11] = [
    "jobs",
    "appends",
    "restart",
    "replay",
    "rss",
    "idle",
    "push",
    "pages",
    "live",
    "dashboards",
    "notify",
];

/// Sizes and repetitions; the defaults finish in about a minute.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Simulated runners for the job-cycle figure.
    pub runners: usize,
    /// Jobs per job-cycle repetition.
    pub jobs: u64,
    /// Commits per observer report in the job-cycle figure.
    pub commits_per_report: usize,
    /// Concurrent clients for the append figure.
    pub append_clients: usize,
    /// Events appended per append repetition.
    pub append_events: u64,
    /// Commits (so events) per request in the append figure.
    pub append_batch: usize,
    /// Events of history for restart, replay and RSS.
    pub history: u64,
    /// Events per appended batch (one group commit) in the generated history.
    pub history_batch: usize,
    /// Connected idle runners for the CPU figure.
    pub idle_runners: usize,
    /// Time between one idle runner's heartbeats.
    pub idle_heartbeat: Duration,
    /// Length of one CPU measurement window.
    pub idle_window: Duration,
    /// Repetitions of each figure.
    pub reps: usize,
    /// Commits of history for the page figure.
    pub page_commits: u64,
    /// Requests of each kind in the page figure.
    pub page_requests: usize,
    /// Dashboard clients streaming in the dashboards figure.
    pub dashboards: usize,
    /// Which figures (names from [`FIGURES`]); empty means all.
    pub only: Vec<String>,
    /// Also measure how the figures grow with runners and history.
    pub growth: bool,
    pub json: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            runners: 64,
            jobs: 20_000,
            commits_per_report: 100,
            append_clients: 64,
            append_events: 100_000,
            append_batch: 1,
            history: 1_000_000,
            history_batch: 64,
            idle_runners: 10_000,
            idle_heartbeat: crate::util::parse_secs(
                crate::dispatcher::IDLE_HEARTBEAT_INTERVAL_SECS,
            )
            .expect("the default idle pace parses"),
            idle_window: Duration::from_secs(3),
            reps: 3,
            page_commits: 100_000,
            page_requests: 200,
            dashboards: 20,
            only: Vec::new(),
            growth: false,
            json: false,
        }
    }
}

/// Median, minimum and maximum of the repetitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stat {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stat {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    fn json(&self) -> Value {
        json!({"median": round3(self.median), "min": round3(self.min), "max": round3(self.max)})
    }
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// One measured figure: its JSON key, how to print it, and its target.
struct Figure {
    key: &'static str,
    what: String,
    unit: &'static str,
    stat: Stat,
    /// (target, true if higher is better)
    target: Option<(f64, bool)>,
}

impl Figure {
    fn met(&self) -> Option<bool> {
        let (t, higher) = self.target?;
        Some(if higher {
            self.stat.median >= t
        } else {
            self.stat.median <= t
        })
    }
}

/// Where the project's binaries are: next to this executable.
fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the current executable")?;
    let dir = exe.parent().context("the executable has no directory")?;
    // `cargo test` runs from target/debug/deps; the binaries are one up.
    for d in [dir.to_path_buf(), dir.join("..")] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "cannot find {name} next to {}; build every binary (cargo build --release)",
        exe.display()
    )
}

mod web;

/// A real `ci-runner` named `bench-runner` on `repo`, its work directory
/// `TMP/NAME-work` and its log `TMP/NAME-runner.log`; killed when dropped.
fn spawn_runner(
    dispatcher: &str,
    repo: &Path,
    tmp: &Path,
    name: &str,
) -> anyhow::Result<tokio::process::Child> {
    Command::new(bin("ci-runner")?)
        .arg("--dispatcher")
        .arg(dispatcher)
        .arg("--repo")
        .arg(repo)
        .arg("--work-dir")
        .arg(tmp.join(format!("{name}-work")))
        .args(["--name", "bench-runner", "--heartbeat-interval", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            tmp.join(format!("{name}-runner.log")),
        )?))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start ci-runner")
}

/// A spawned `ci-dispatcher`.
struct DispatcherProc {
    child: Child,
    pid: u32,
    addr: String,
    /// The HTTP address, when started with `--http`.
    http: Option<String>,
    /// From spawning to the `listening on` line.
    startup: Duration,
}

impl DispatcherProc {
    async fn spawn(data_dir: &Path, extra: &[&str]) -> anyhow::Result<DispatcherProc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))?;
        let started = Instant::now();
        let mut child = Command::new(bin("ci-dispatcher")?)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start ci-dispatcher")?;
        let pid = child.id().context("ci-dispatcher exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
                .await
                .context("ci-dispatcher did not start within 120 s")??;
            match line {
                Some(l) => {
                    if let Some(a) = l.strip_prefix("listening on ") {
                        break a.trim().to_string();
                    }
                }
                None => bail!(
                    "ci-dispatcher exited before listening; see {}",
                    data_dir.with_extension("log").display()
                ),
            }
        };
        let startup = started.elapsed();
        let http = if extra.contains(&"--http") {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .context("ci-dispatcher did not say where http listens")??
                .unwrap_or_default();
            match line.strip_prefix("http listening on ") {
                Some(a) => Some(a.trim().to_string()),
                None => bail!("expected `http listening on HOST:PORT`, got {line:?}"),
            }
        } else {
            None
        };
        Ok(DispatcherProc {
            child,
            pid,
            addr,
            http,
            startup,
        })
    }

    /// Resident memory in MB (VmRSS) and peak (VmHWM).
    fn rss_mb(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(f64::NAN)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// The connection cap the dispatcher (started without `--http`) has
    /// under its open-file limit, which it raised at start: the same rule
    /// (`listener::connection_caps`) from its `/proc/PID/limits`.
    fn connection_cap(&self) -> anyhow::Result<usize> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid))?;
        let soft = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .context("no open-file limit in /proc/PID/limits")?;
        let fd_limit = match soft {
            "unlimited" => u64::MAX,
            n => n.parse().context("open-file limit")?,
        };
        let (cap, _) = crate::dispatcher::listener::connection_caps(
            crate::dispatcher::MAX_CONNECTIONS,
            fd_limit,
            crate::dispatcher::listener::WebSide::Off,
        );
        Ok(cap)
    }

    /// CPU time used so far (user + system).
    fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of(self.pid)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        // SIGTERM: the dispatcher flushes and exits cleanly.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64((utime + stime) as f64 / hz))
}

/// A distinct commit id per (salt, n).
fn fake_commit(salt: u32, n: u64) -> CommitId {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&salt.to_be_bytes());
    b[4..12].copy_from_slice(&n.to_be_bytes());
    b[12] = 0xc1;
    CommitId::from_bytes(&b).expect("20 bytes")
}

fn pass_report() -> JobReport {
    JobReport {
        outcome: Outcome::Pass,
        exit_code: Some(0),
        duration_ms: 1,
        tests: None,
        message: "ok".into(),
    }
}

fn identity(role: Role, name: String) -> Identity {
    Identity {
        serves: crate::proto::Serves::Default,
        role,
        name,
        token: None,
    }
}

/// Writes `events` events of history (commit seen, assigned, result per job,
/// a dispatcher start now and then) straight into a new log under `dir`.
/// Returns the folded state, for a snapshot.
pub fn generate_history(dir: &Path, events: u64, per_batch: usize) -> anyhow::Result<State> {
    let per_batch = per_batch.max(1);
    let mut log = SledLog::open(dir)?;
    let mut state = State::default();
    let mut batch: Vec<Record> = Vec::with_capacity(30_000);
    let mut job = 0u64;
    let mut written = 0u64;
    let at = now_ms();
    let push = |batch: &mut Vec<Record>, state: &mut State, event: Event| -> anyhow::Result<()> {
        let rec = Record {
            seq: state.last_seq() + 1,
            at_ms: at,
            event,
        };
        state.apply_record(&rec)?;
        batch.push(rec);
        Ok(())
    };
    // Jobs the fold moves out go to the history indexes, as a dispatcher
    // writes them.
    let archive = |log: &SledLog, state: &mut State| crate::store::archive_taken(log, state);
    while written < events {
        let left = events - written;
        if written.is_multiple_of(100_000) || left < 3 {
            push(&mut batch, &mut state, Event::DispatcherStarted { pid: 1 })?;
            written += 1;
        } else {
            job += 1;
            let commit = fake_commit(0xbe7c, job);
            let runner = format!("runner-{:02}", job % 64);
            push(
                &mut batch,
                &mut state,
                Event::CommitSeen {
                    job: JobId(job),
                    commit,
                    branch: Some("main".into()),
                },
            )?;
            push(
                &mut batch,
                &mut state,
                Event::JobAssigned {
                    job: JobId(job),
                    commit,
                    runner: runner.clone(),
                    attempt: 1,
                },
            )?;
            push(
                &mut batch,
                &mut state,
                Event::Result {
                    job: JobId(job),
                    commit,
                    runner: Some(runner),
                    attempt: 1,
                    report: pass_report(),
                    output_bytes: 0,
                },
            )?;
            written += 3;
        }
        // Append in commit-sized batches, as a dispatcher does; flush once.
        while batch.len() >= per_batch {
            let rest = batch.split_off(per_batch);
            log.append(&batch)?;
            batch = rest;
            archive(&log, &mut state)?;
        }
    }
    if !batch.is_empty() {
        log.append(&batch)?;
    }
    archive(&log, &mut state)?;
    log.flush()?;
    Ok(state)
}

/// Stores `state` as the newest snapshot of the log under `dir`.
fn save_snapshot(dir: &Path, state: &State) -> anyhow::Result<()> {
    let mut log = SledLog::open(dir)?;
    log.save_snapshot(state)?;
    log.flush()?;
    Ok(())
}

// ---------------------------------------------------------------- jobs

/// One repetition of the job-cycle figure: jobs per second from the first
/// report to the last acknowledged result.
/// What else a job cycle's dispatcher serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Web {
    /// No `--http`.
    Off,
    /// `--http`, with this many dashboard clients streaming
    /// ([`web::dashboard`]).
    Dashboards(usize),
    /// `--notify-url` to a receiver at this address ([`receiver`]).
    Notify(std::net::SocketAddr),
}

/// An HTTP receiver of notifications on loopback that answers 200 and
/// counts; stops with `stop`.
async fn receiver(
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicU64>)> {
    let got = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = got.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((addr, got))
}

async fn job_cycle(
    tmp: &Path,
    rep: u32,
    runners: usize,
    jobs: u64,
    per_report: usize,
    web: Web,
) -> anyhow::Result<f64> {
    let dir = tmp.join(format!("jobs-{runners}-{rep}"));
    let d = match web {
        Web::Off => DispatcherProc::spawn(&dir, &[]).await?,
        Web::Dashboards(_) => DispatcherProc::spawn(&dir, &["--http", "127.0.0.1:0"]).await?,
        Web::Notify(addr) => {
            let url = format!("http://{addr}/bench");
            DispatcherProc::spawn(&dir, &["--notify-url", &url]).await?
        }
    };
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut watchers = Vec::new();
    if let (Web::Dashboards(n), Some(http)) = (web, &d.http) {
        for _ in 0..n {
            watchers.push(tokio::spawn(web::dashboard(http.clone(), stop.clone())));
        }
    }
    let mut tasks = Vec::new();
    for i in 0..runners {
        let client = Client::connect(
            &d.addr,
            &identity(Role::Runner, format!("sim-{i:04}")),
            None,
            None,
        )
        .await?;
        tasks.push(tokio::spawn(sim_runner(
            client,
            acked.clone(),
            done.clone(),
            jobs,
            stop.clone(),
        )));
    }
    let mut observer = Client::connect(
        &d.addr,
        &identity(Role::Observer, "bench".into()),
        None,
        None,
    )
    .await?;
    let started = Instant::now();
    let salt = 0x10b5_0000 + rep;
    let mut n = 0u64;
    while n < jobs {
        let k = (per_report as u64).min(jobs - n);
        let commits: Vec<CommitId> = (n..n + k).map(|i| fake_commit(salt, i)).collect();
        n += k;
        match observer
            .request(&ClientMsg::Commits {
                repository: None,
                branch: None,
                commits,
                tip: None,
                infos: Vec::new(),
            })
            .await?
        {
            ServerMsg::CommitsAck { .. } => {}
            other => bail!("unexpected answer to commits: {other:?}"),
        }
    }
    let wait = done.notified();
    if acked.load(Ordering::SeqCst) < jobs {
        tokio::time::timeout(Duration::from_secs(300), wait)
            .await
            .context("the job cycle did not finish within 300 s")?;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    for w in watchers {
        let rounds = w.await.context("a dashboard client panicked")??;
        if rounds == 0 {
            bail!("a dashboard client made no round during the job cycle");
        }
    }
    d.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(jobs as f64 / secs)
}

/// Stops a real runner as its operator would (SIGTERM: it hands back what
/// it runs), killing it if it has not stopped within 10 s.
async fn stop_runner(runner: &mut Child) {
    if let Some(pid) = runner.id() {
        // SAFETY: kill takes plain integers and has no memory-safety
        // preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), runner.wait()).await;
    let _ = runner.kill().await;
}

/// A runner that passes every job at once and heartbeats each second.
async fn sim_runner(
    mut client: Client,
    acked: Arc<AtomicU64>,
    done: Arc<Notify>,
    total: u64,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    beat.tick().await;
    let mut holding: Option<JobRef> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = beat.tick() => {
                client.writer.send(&ClientMsg::Heartbeat { holding }).await?;
            }
            msg = client.reader.recv() => {
                let Some(msg) = msg? else { return Ok(()) };
                match msg {
                    ServerMsg::Assign { job, .. } => {
                        holding = Some(job);
                        client.writer.send(&ClientMsg::Result { job, report: pass_report(), output: Vec::new(), info: None }).await?;
                    }
                    ServerMsg::ResultAck { job, accepted, .. } => {
                        if holding == Some(job) {
                            holding = None;
                        }
                        if !accepted {
                            client.writer.send(&ClientMsg::Ready).await?;
                        }
                        if acked.fetch_add(1, Ordering::SeqCst) + 1 >= total {
                            done.notify_one();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------- appends

/// Durable events per second: `clients` connections each submitting
/// `batch` new commits per request (one `commit_seen` event each) and
/// waiting for the acknowledgement, which comes only after the flush.
/// What each request of [`appends`] carries.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// `Commits` with new commits: events appended and flushed.
    Commits,
    /// `GetTips`: the same connections, decoding, hop to the log writer and
    /// reply, but nothing to append or flush. Its rate is the ceiling the
    /// request path itself sets, whatever the log does.
    NoWrite,
}

/// Requests (`events / batch` of them, from `clients` connections, one
/// outstanding each) per second, counted in events for `Load::Commits`.
async fn appends(
    tmp: &Path,
    rep: u32,
    clients: usize,
    events: u64,
    batch: usize,
    load: Load,
) -> anyhow::Result<f64> {
    let dir = tmp.join(format!("appends-{rep}"));
    let d = DispatcherProc::spawn(&dir, &[]).await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for i in 0..clients {
        conns.push(
            Client::connect(
                &d.addr,
                &identity(Role::Observer, format!("app-{i}")),
                None,
                None,
            )
            .await?,
        );
    }
    let started = Instant::now();
    let salt = 0xa99e_0000 + rep;
    let mut tasks = Vec::new();
    for mut c in conns {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch as u64, Ordering::SeqCst);
                if from >= events {
                    return anyhow::Ok(());
                }
                let to = (from + batch as u64).min(events);
                let msg = match load {
                    Load::Commits => ClientMsg::Commits {
                        repository: None,
                        branch: None,
                        commits: (from..to).map(|i| fake_commit(salt, i)).collect(),
                        tip: None,
                        infos: Vec::new(),
                    },
                    Load::NoWrite => ClientMsg::GetTips {
                        repository: None,
                        after: None,
                    },
                };
                match (load, c.request(&msg).await?) {
                    (Load::Commits, ServerMsg::CommitsAck { .. }) => {}
                    (Load::NoWrite, ServerMsg::Tips { .. }) => {}
                    (_, other) => bail!("unexpected answer: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    d.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(events as f64 / secs)
}

// ---------------------------------------------------------------- history

/// Restart (with and without snapshot), replay and RSS on one history.
struct HistoryFigures {
    restart_snapshot_ms: Vec<f64>,
    restart_no_snapshot_ms: Vec<f64>,
    replay_events_per_s: Vec<f64>,
    rss_mb: Vec<f64>,
    rss_mb_no_snapshot: Vec<f64>,
    generate_s: f64,
}

/// The largest history whose full replay the bench times.
const FULL_REPLAY_MAX: u64 = 2_000_000;

async fn history_figures(
    tmp: &Path,
    events: u64,
    per_batch: usize,
    reps: usize,
    want_replay: bool,
) -> anyhow::Result<HistoryFigures> {
    let dir = tmp.join(format!("history-{events}"));
    let t = Instant::now();
    let d2 = dir.clone();
    let state =
        tokio::task::spawn_blocking(move || generate_history(&d2, events, per_batch)).await??;
    let generate_s = t.elapsed().as_secs_f64();
    let mut out = HistoryFigures {
        restart_snapshot_ms: Vec::new(),
        restart_no_snapshot_ms: Vec::new(),
        replay_events_per_s: Vec::new(),
        rss_mb: Vec::new(),
        rss_mb_no_snapshot: Vec::new(),
        generate_s,
    };
    // A snapshot interval no restart reaches: the log keeps no snapshot.
    let never = ["--snapshot-every", "1000000000000"];
    // Replaying the whole log (and rebuilding the history indexes on the
    // way) takes minutes beyond a few million events; those figures stop
    // there, the snapshot restart goes on.
    let full_replays = if events <= FULL_REPLAY_MAX { reps } else { 0 };
    for _ in 0..full_replays {
        let d = DispatcherProc::spawn(&dir, &never).await?;
        out.restart_no_snapshot_ms
            .push(d.startup.as_secs_f64() * 1000.0);
        out.rss_mb_no_snapshot.push(d.rss_mb()?.0);
        d.stop().await?;
    }
    if want_replay {
        for _ in 0..full_replays {
            out.replay_events_per_s.push(replay_rate(&dir).await?);
        }
    }
    let d2 = dir.clone();
    tokio::task::spawn_blocking(move || save_snapshot(&d2, &state)).await??;
    for _ in 0..reps {
        let d = DispatcherProc::spawn(&dir, &never).await?;
        out.restart_snapshot_ms
            .push(d.startup.as_secs_f64() * 1000.0);
        // Serve one request, so the figure is of a dispatcher at work.
        let mut c =
            Client::connect(&d.addr, &identity(Role::Tool, "bench".into()), None, None).await?;
        c.request(&ClientMsg::Status).await?;
        drop(c);
        out.rss_mb.push(d.rss_mb()?.0);
        d.stop().await?;
    }
    // CI_BENCH_KEEP=DIR keeps the history and the dispatcher's log there.
    match std::env::var_os("CI_BENCH_KEEP") {
        Some(keep) => {
            let keep = Path::new(&keep).join(dir.file_name().unwrap_or_default());
            std::fs::rename(&dir, &keep)?;
            std::fs::rename(dir.with_extension("log"), keep.with_extension("log"))?;
        }
        None => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(out)
}

/// Runs `ci-tools replay --verify` and reads its events-per-second figure.
async fn replay_rate(dir: &Path) -> anyhow::Result<f64> {
    let out = Command::new(bin("ci-tools")?)
        .args(["replay", "--verify", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "replayed N events in X ms (R events/s); ..."
    let line = text
        .lines()
        .find(|l| l.starts_with("replayed "))
        .with_context(|| format!("unexpected output of replay --verify: {text}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let events: f64 = words
        .get(1)
        .and_then(|w| w.parse().ok())
        .context("no event count")?;
    let ms: f64 = words
        .get(4)
        .and_then(|w| w.parse().ok())
        .context("no time")?;
    Ok(events / (ms.max(1.0) / 1000.0))
}

// ---------------------------------------------------------------- idle

/// Descriptors this process keeps besides the idle runners' connections
/// (the runtime, standard streams, the dispatcher's pipes, logs).
const BENCH_FD_RESERVE: u64 = 64;

/// Dispatcher CPU (% of one core) with `runners` idle runners connected,
/// each heartbeating every `heartbeat` (spread evenly over that time); one
/// value per window.
async fn idle_cpu(
    tmp: &Path,
    runners: usize,
    heartbeat: Duration,
    window: Duration,
    reps: usize,
) -> anyhow::Result<Vec<f64>> {
    let limit = crate::dispatcher::listener::raise_fd_limit();
    let needed = runners as u64 + BENCH_FD_RESERVE;
    if limit < needed {
        bail!(
            "{runners} idle runners need {needed} open files in this process, and the limit is {limit}; raise it (ulimit -n {needed}) or pass a smaller --idle-runners"
        );
    }
    let dir = tmp.join(format!("idle-{runners}"));
    let d = DispatcherProc::spawn(&dir, &[]).await?;
    // The dispatcher needs as many descriptors; under a lower limit it
    // would refuse some runners (and say so in its log): stop here rather
    // than measure a smaller fleet.
    let cap = d.connection_cap()?;
    if cap < runners {
        bail!(
            "the dispatcher serves at most {cap} connections under its open-file limit; {runners} idle runners need more (ulimit -n, LimitNOFILE=)"
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..runners {
        let client = Client::connect(
            &d.addr,
            &identity(Role::Runner, format!("idle-{i:05}")),
            None,
            None,
        )
        .await?;
        let stop = stop.clone();
        // Spread the heartbeats over the interval.
        let offset = heartbeat.mul_f64(i as f64 / runners.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return anyhow::Ok(()),
                    _ = beat.tick() => client.writer.send(&ClientMsg::Heartbeat { holding: None }).await?,
                    m = client.reader.recv() => if m?.is_none() { return Ok(()) },
                }
            }
        }));
    }
    // Let connection set-up settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut out = Vec::new();
    for _ in 0..reps {
        let c0 = d.cpu()?;
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let used = d.cpu()? - c0;
        out.push(100.0 * used.as_secs_f64() / t0.elapsed().as_secs_f64());
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    d.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

// ---------------------------------------------------------------- push

/// Push to result for a trivial test: from spawning `ci-tools submit` until
/// the result is visible, minus the median time of the bare test command.
/// Returns (net ms per repetition, bare command ms).
async fn push_to_result(tmp: &Path, reps: usize) -> anyhow::Result<(Vec<f64>, f64)> {
    let repo = tmp.join("push-repo");
    let ci_toml = "[test]\ncommand = [\"true\"]\n";
    super::demo::commit_files(&repo, &[(".ci.toml", ci_toml), ("n.txt", "0")], "first")?;
    let dir = tmp.join("push-dispatcher");
    let d = DispatcherProc::spawn(&dir, &[]).await?;
    let mut runner = spawn_runner(&d.addr, &repo, tmp, "push")?;
    let mut tool =
        Client::connect(&d.addr, &identity(Role::Tool, "bench".into()), None, None).await?;
    let tools_bin = bin("ci-tools")?;
    let mut samples = Vec::new();
    // Repetition 0 warms up (the runner's first clone) and is not counted.
    for i in 0..=reps {
        let c = super::demo::commit_files(
            &repo,
            &[("n.txt", &format!("{i}\n"))],
            &format!("change {i}"),
        )?;
        let started = Instant::now();
        let st = Command::new(&tools_bin)
            .args(["submit", "--dispatcher", &d.addr, "--branch", "main"])
            .arg(c.to_string())
            .stdout(Stdio::null())
            .status()
            .await?;
        if !st.success() {
            bail!("ci-tools submit failed: {st}");
        }
        let deadline = started + Duration::from_secs(60);
        loop {
            let r = super::commits::fetch_result(&mut tool, c).await?;
            if let Some(v) = r.as_ref()
                && v.is_final()
            {
                if v.outcome != "pass" {
                    bail!("the trivial test did not pass: {} {}", v.outcome, v.message);
                }
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no result within 60 s; see {}",
                    tmp.join("push-runner.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i > 0 {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut bare = Vec::new();
    for _ in 0..reps.max(3) {
        let t = Instant::now();
        Command::new("true").status().await?;
        bare.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let bare_ms = Stat::of(&bare).median;
    stop_runner(&mut runner).await;
    d.stop().await?;
    Ok((samples.into_iter().map(|s| s - bare_ms).collect(), bare_ms))
}

// ---------------------------------------------------------------- driver

fn wants(opts: &BenchOptions, name: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| o == name)
}

/// Progress goes to stderr, so stdout stays one table or one JSON object.
fn note(msg: &str) {
    eprintln!("bench: {msg}");
}

pub async fn run(opts: BenchOptions) -> anyhow::Result<ExitCode> {
    for o in &opts.only {
        if !FIGURES.contains(&o.as_str()) {
            bail!("unknown figure {o:?}; choose from {}", FIGURES.join(", "));
        }
    }
    let tmp = tempfile::Builder::new().prefix("ci-bench-").tempdir()?;
    let mut m = Measured {
        opts: &opts,
        tmp: tmp.path().to_path_buf(),
        reps: opts.reps.max(1),
        figs: Vec::new(),
        extra: serde_json::Map::new(),
    };
    if wants(&opts, "jobs") {
        m.jobs().await?;
    }
    if wants(&opts, "appends") {
        m.appends().await?;
    }
    if ["restart", "replay", "rss"].iter().any(|f| wants(&opts, f)) {
        m.history().await?;
    }
    if wants(&opts, "idle") {
        m.idle().await?;
    }
    if wants(&opts, "push") {
        m.push().await?;
    }
    if wants(&opts, "pages") {
        m.pages().await?;
    }
    if wants(&opts, "live") {
        m.live().await?;
    }
    if wants(&opts, "dashboards") {
        m.dashboards().await?;
    }
    if wants(&opts, "notify") {
        m.notify().await?;
    }
    let growth = match opts.growth {
        true => Some(measure_growth(&opts, &m.tmp).await?),
        false => None,
    };
    let Measured {
        figs, extra, reps, ..
    } = m;
    if opts.json {
        print_json(&opts, reps, &figs, extra, growth)?;
    } else {
        print_table(&figs, &extra, growth.as_deref());
    }
    Ok(ExitCode::SUCCESS)
}

/// The figures measured so far, and how to measure more.
struct Measured<'a> {
    opts: &'a BenchOptions,
    tmp: PathBuf,
    reps: usize,
    figs: Vec<Figure>,
    /// Sizes and side figures printed after the table.
    extra: serde_json::Map<String, Value>,
}

impl Measured<'_> {
    async fn jobs(&mut self) -> anyhow::Result<()> {
        let (opts, reps) = (self.opts, self.reps);
        note(&format!(
            "job cycles: {} runners, {} jobs x {reps}",
            opts.runners, opts.jobs
        ));
        let mut v = Vec::new();
        for r in 0..reps {
            v.push(
                job_cycle(
                    &self.tmp,
                    r as u32,
                    opts.runners,
                    opts.jobs,
                    opts.commits_per_report,
                    Web::Off,
                )
                .await?,
            );
        }
        self.figs.push(Figure {
            key: "jobs_per_s",
            what: format!("full job cycles, {} runners", opts.runners),
            unit: "jobs/s",
            stat: Stat::of(&v),
            target: Some((10_000.0, true)),
        });
        Ok(())
    }

    async fn appends(&mut self) -> anyhow::Result<()> {
        let (opts, reps) = (self.opts, self.reps);
        note(&format!(
            "durable appends: {} clients, {} events x {reps}",
            opts.append_clients, opts.append_events
        ));
        let (mut v, mut ceiling) = (Vec::new(), Vec::new());
        for r in 0..reps {
            for (load, out) in [(Load::Commits, &mut v), (Load::NoWrite, &mut ceiling)] {
                out.push(
                    appends(
                        &self.tmp,
                        r as u32,
                        opts.append_clients,
                        opts.append_events,
                        opts.append_batch,
                        load,
                    )
                    .await?,
                );
            }
        }
        self.figs.push(Figure {
            key: "appends_per_s",
            what: format!(
                "durable appends, {} clients, {} event(s)/request",
                opts.append_clients, opts.append_batch
            ),
            unit: "events/s",
            stat: Stat::of(&v),
            target: Some((100_000.0, true)),
        });
        // Requests/s, not events: the same clients asking something that
        // writes nothing. How close appends come to it says how much of
        // their cost is the log's.
        let requests = (opts.append_events as f64 / opts.append_batch.max(1) as f64).ceil();
        let per_request = requests / opts.append_events as f64;
        self.figs.push(Figure {
            key: "no_write_requests_per_s",
            what: format!(
                "same clients, requests that write nothing (x{:.0} for events)",
                1.0 / per_request
            ),
            unit: "requests/s",
            stat: Stat::of(&ceiling.iter().map(|r| r * per_request).collect::<Vec<_>>()),
            target: None,
        });
        Ok(())
    }

    /// Restart, replay and RSS, from one generated history.
    async fn history(&mut self) -> anyhow::Result<()> {
        let (opts, reps) = (self.opts, self.reps);
        note(&format!(
            "history of {} events: restart, replay, RSS x {reps}",
            opts.history
        ));
        let h = history_figures(
            &self.tmp,
            opts.history,
            opts.history_batch,
            reps,
            wants(opts, "replay"),
        )
        .await?;
        self.extra
            .insert("history_generate_s".into(), round3(h.generate_s));
        if wants(opts, "restart") {
            self.figs.push(Figure {
                key: "restart_ms_snapshot",
                what: "restart to serving, with snapshot".into(),
                unit: "ms",
                stat: Stat::of(&h.restart_snapshot_ms),
                target: Some((200.0, false)),
            });
            self.figs.push(Figure {
                key: "restart_ms_no_snapshot",
                what: "restart to serving, no snapshot".into(),
                unit: "ms",
                stat: Stat::of(&h.restart_no_snapshot_ms),
                target: None,
            });
        }
        if wants(opts, "replay") {
            self.figs.push(Figure {
                key: "replay_events_per_s",
                what: "replay --verify, no snapshot".into(),
                unit: "events/s",
                stat: Stat::of(&h.replay_events_per_s),
                target: Some((1_000_000.0, true)),
            });
        }
        if wants(opts, "rss") {
            self.figs.push(Figure {
                key: "rss_mb",
                what: "dispatcher RSS after restart (snapshot)".into(),
                unit: "MB",
                stat: Stat::of(&h.rss_mb),
                target: Some((100.0, false)),
            });
            self.figs.push(Figure {
                key: "rss_mb_no_snapshot",
                what: "dispatcher RSS after restart (full replay)".into(),
                unit: "MB",
                stat: Stat::of(&h.rss_mb_no_snapshot),
                target: None,
            });
        }
        Ok(())
    }

    async fn idle(&mut self) -> anyhow::Result<()> {
        let (opts, reps) = (self.opts, self.reps);
        note(&format!(
            "{} idle runners heartbeating every {:?}: {reps} windows of {:?}",
            opts.idle_runners, opts.idle_heartbeat, opts.idle_window
        ));
        let v = idle_cpu(
            &self.tmp,
            opts.idle_runners,
            opts.idle_heartbeat,
            opts.idle_window,
            reps,
        )
        .await?;
        self.figs.push(Figure {
            key: "idle_runners_cpu_pct",
            what: format!(
                "dispatcher CPU, {} idle runners, a heartbeat every {} s",
                opts.idle_runners,
                opts.idle_heartbeat.as_secs_f64()
            ),
            unit: "% core",
            stat: Stat::of(&v),
            target: Some((5.0, false)),
        });
        Ok(())
    }

    async fn push(&mut self) -> anyhow::Result<()> {
        let n = self.reps.max(5);
        note(&format!(
            "push to result: real repo, ci-runner, ci-tools submit x {n}"
        ));
        let (v, bare) = push_to_result(&self.tmp, n).await?;
        self.extra
            .insert("push_bare_command_ms".into(), round3(bare));
        self.figs.push(Figure {
            key: "push_to_result_ms",
            what: "push to result (minus bare `true`)".into(),
            unit: "ms",
            stat: Stat::of(&v),
            target: Some((50.0, false)),
        });
        Ok(())
    }

    async fn pages(&mut self) -> anyhow::Result<()> {
        let opts = self.opts;
        note(&format!(
            "pages: {} commits of history, {} requests of each",
            opts.page_commits, opts.page_requests
        ));
        let p = web::pages(&self.tmp, opts.page_commits, opts.page_requests.max(1)).await?;
        for (key, what, v) in [
            (
                "api_commits_ms",
                "GET /api/v1/commits?limit=50",
                &p.api_first,
            ),
            (
                "api_commits_next_ms",
                "the same, second page (cursor)",
                &p.api_next,
            ),
            ("commits_page_ms", "GET / (commits page)", &p.commits_page),
            (
                "commit_page_ms",
                "GET /commits/SHA (a middle one)",
                &p.commit_page,
            ),
            ("history_page_ms", "GET /history", &p.history_page),
        ] {
            self.figs.push(Figure {
                key,
                what: format!("{what}, {} commits", opts.page_commits),
                unit: "ms",
                stat: Stat::of(v),
                target: Some((50.0, false)),
            });
        }
        Ok(())
    }

    async fn live(&mut self) -> anyhow::Result<()> {
        let n = self.reps.max(3);
        note(&format!("live log: real runner, 40 lines x {n} jobs"));
        let (sse, tcp) = web::live(&self.tmp, n).await?;
        self.figs.push(Figure {
            key: "live_log_sse_ms",
            what: "a line written to it arriving over SSE".into(),
            unit: "ms",
            stat: Stat::of(&sse),
            target: Some((100.0, false)),
        });
        self.figs.push(Figure {
            key: "live_log_follow_ms",
            what: "the same over TCP (logs --follow)".into(),
            unit: "ms",
            stat: Stat::of(&tcp),
            target: None,
        });
        Ok(())
    }

    /// Job cycles with a `--notify-url` sink against the same without, in
    /// pairs as for the dashboards; and how fast the results' notifications
    /// reach the receiver (from the first report to the last delivery).
    async fn notify(&mut self) -> anyhow::Result<()> {
        let (opts, reps) = (self.opts, self.reps);
        note(&format!(
            "job cycles with and without a notification sink: {} runners, {} jobs x {reps}",
            opts.runners, opts.jobs
        ));
        let (mut alone, mut notifying, mut ratio, mut delivered) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..reps {
            let plain = job_cycle(
                &self.tmp,
                400 + 2 * r as u32,
                opts.runners,
                opts.jobs,
                opts.commits_per_report,
                Web::Off,
            )
            .await?;
            let stop = tokio_util::sync::CancellationToken::new();
            let (addr, got) = receiver(stop.clone()).await?;
            let started = Instant::now();
            let with = job_cycle(
                &self.tmp,
                401 + 2 * r as u32,
                opts.runners,
                opts.jobs,
                opts.commits_per_report,
                Web::Notify(addr),
            )
            .await;
            // The dispatcher stops at the end of the cycle: what it had not
            // delivered is still owed in its (removed) log, so the rate is
            // measured on what arrived while it ran.
            let secs = started.elapsed().as_secs_f64();
            stop.cancel();
            let with = with?;
            let n = got.load(Ordering::SeqCst);
            alone.push(plain);
            notifying.push(with);
            ratio.push(with / plain);
            delivered.push(n as f64 / secs);
        }
        self.figs.push(Figure {
            key: "jobs_per_s_notify",
            what: format!(
                "full job cycles, {} runners, a --notify-url sink",
                opts.runners
            ),
            unit: "jobs/s",
            stat: Stat::of(&notifying),
            target: None,
        });
        self.figs.push(Figure {
            key: "notify_cost_ratio",
            what: "with the sink / without (paired)".into(),
            unit: "x",
            stat: Stat::of(&ratio),
            target: None,
        });
        self.figs.push(Figure {
            key: "notifications_per_s",
            what: "result notifications received while the cycle ran".into(),
            unit: "/s",
            stat: Stat::of(&delivered),
            target: None,
        });
        Ok(())
    }

    /// Job cycles with dashboard clients streaming against the same
    /// without: pairs, alternating, so that a slow spell of a shared
    /// machine falls on both sides alike; both with `--http`, to isolate
    /// the clients' cost.
    async fn dashboards(&mut self) -> anyhow::Result<()> {
        let (opts, reps) = (self.opts, self.reps);
        note(&format!(
            "job cycles with and without {} dashboard clients: {} runners, {} jobs x {reps}",
            opts.dashboards, opts.runners, opts.jobs
        ));
        let (mut alone, mut watched, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..reps {
            let mut pair = [0.0; 2];
            for (i, web) in [Web::Dashboards(0), Web::Dashboards(opts.dashboards)]
                .into_iter()
                .enumerate()
            {
                pair[i] = job_cycle(
                    &self.tmp,
                    200 + (2 * r + i) as u32,
                    opts.runners,
                    opts.jobs,
                    opts.commits_per_report,
                    web,
                )
                .await?;
            }
            alone.push(pair[0]);
            watched.push(pair[1]);
            ratio.push(pair[1] / pair[0]);
        }
        self.figs.push(Figure {
            key: "jobs_per_s_http",
            what: format!(
                "full job cycles, {} runners, --http on, nobody looking",
                opts.runners
            ),
            unit: "jobs/s",
            stat: Stat::of(&alone),
            target: None,
        });
        self.figs.push(Figure {
            key: "jobs_per_s_dashboards",
            what: format!(
                "the same with {} dashboard clients streaming",
                opts.dashboards
            ),
            unit: "jobs/s",
            stat: Stat::of(&watched),
            target: None,
        });
        self.figs.push(Figure {
            key: "dashboards_ratio",
            what: "with dashboards / without, per pair".into(),
            unit: "x",
            stat: Stat::of(&ratio),
            target: Some((0.9, true)),
        });
        Ok(())
    }
}

fn print_json(
    opts: &BenchOptions,
    reps: usize,
    figs: &[Figure],
    extra: serde_json::Map<String, Value>,
    growth: Option<Vec<Value>>,
) -> anyhow::Result<()> {
    let mut obj = serde_json::Map::new();
    obj.insert("history_events".into(), json!(opts.history));
    obj.insert("history_batch".into(), json!(opts.history_batch));
    obj.insert("runners".into(), json!(opts.runners));
    obj.insert("jobs".into(), json!(opts.jobs));
    obj.insert("append_clients".into(), json!(opts.append_clients));
    obj.insert("append_events".into(), json!(opts.append_events));
    obj.insert("append_batch".into(), json!(opts.append_batch));
    obj.insert("idle_runners".into(), json!(opts.idle_runners));
    obj.insert(
        "idle_heartbeat_s".into(),
        json!(opts.idle_heartbeat.as_secs_f64()),
    );
    obj.insert("page_commits".into(), json!(opts.page_commits));
    obj.insert("dashboards".into(), json!(opts.dashboards));
    obj.insert("reps".into(), json!(reps));
    for f in figs {
        obj.insert(f.key.into(), f.stat.json());
    }
    obj.extend(extra);
    if let Some(growth) = growth {
        obj.insert("growth".into(), Value::Array(growth));
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(obj))?);
    Ok(())
}

fn print_table(figs: &[Figure], extra: &serde_json::Map<String, Value>, growth: Option<&[Value]>) {
    let fmt = |x: f64| {
        if x.abs() >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    let rows: Vec<Vec<String>> = figs
        .iter()
        .map(|f| {
            vec![
                f.what.clone(),
                fmt(f.stat.median),
                fmt(f.stat.min),
                fmt(f.stat.max),
                f.unit.to_string(),
                match f.target {
                    Some((t, true)) => format!(">= {}", fmt(t)),
                    Some((t, false)) => format!("<= {}", fmt(t)),
                    None => "-".into(),
                },
                match f.met() {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        super::table::render(
            &["FIGURE", "MEDIAN", "MIN", "MAX", "UNIT", "TARGET", "MET"],
            &rows
        )
    );
    for (k, v) in extra {
        println!("{k}: {v}");
    }
    if let Some(growth) = growth {
        println!();
        let rows: Vec<Vec<String>> = growth
            .iter()
            .map(|g| {
                vec![
                    g["figure"].as_str().unwrap_or("").to_string(),
                    g["size"].to_string(),
                    g["median"].to_string(),
                    g["min"].to_string(),
                    g["max"].to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            super::table::render(&["GROWTH", "SIZE", "MEDIAN", "MIN", "MAX"], &rows)
        );
    }
}

/// Each figure at growing sizes: runners 1..1000 (idle runners up to
/// 10,000), history 10^4..`history`.
async fn measure_growth(opts: &BenchOptions, tmp: &Path) -> anyhow::Result<Vec<Value>> {
    let reps = opts.reps.max(1);
    let mut out = Vec::new();
    let mut row = |figure: &str, size: u64, v: &[f64]| {
        let s = Stat::of(v);
        let mut o = s.json();
        o["figure"] = json!(figure);
        o["size"] = json!(size);
        out.push(o);
    };
    let mut sizes = vec![1usize, 10, 100, 1000];
    sizes.retain(|&r| r <= opts.idle_runners.max(opts.runners));
    for &r in &sizes {
        note(&format!("growth: job cycles with {r} runners"));
        let mut v = Vec::new();
        for k in 0..reps {
            v.push(
                job_cycle(
                    tmp,
                    100 + k as u32,
                    r,
                    opts.jobs,
                    opts.commits_per_report,
                    Web::Off,
                )
                .await?,
            );
        }
        row("jobs_per_s", r as u64, &v);
    }
    for &c in &sizes {
        note(&format!("growth: appends with {c} clients"));
        let mut v = Vec::new();
        for k in 0..reps {
            v.push(
                appends(
                    tmp,
                    100 + k as u32,
                    c,
                    opts.append_events,
                    opts.append_batch,
                    Load::Commits,
                )
                .await?,
            );
        }
        row("appends_per_s", c as u64, &v);
    }
    let mut idle_sizes = vec![1usize, 10, 100, 1000, 10_000];
    idle_sizes.retain(|&r| r <= opts.idle_runners);
    for &r in &idle_sizes {
        note(&format!("growth: {r} idle runners"));
        let v = idle_cpu(tmp, r, opts.idle_heartbeat, opts.idle_window, reps).await?;
        row("idle_runners_cpu_pct", r as u64, &v);
    }
    let mut h = 10_000u64;
    while h <= opts.history.max(10_000) {
        note(&format!("growth: history of {h} events"));
        let f = history_figures(tmp, h, opts.history_batch, reps, true).await?;
        row("restart_ms_snapshot", h, &f.restart_snapshot_ms);
        row("restart_ms_no_snapshot", h, &f.restart_no_snapshot_ms);
        row("replay_events_per_s", h, &f.replay_events_per_s);
        row("rss_mb", h, &f.rss_mb);
        row("rss_mb_no_snapshot", h, &f.rss_mb_no_snapshot);
        h *= 10;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0]);
        assert_eq!(
            s,
            Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn generated_history_replays_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = generate_history(dir.path(), 1000, 7).unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq(), 1000);
        let replayed = crate::store::load_state(&log, crate::store::Rebuild::FromScratch).unwrap();
        assert_eq!(replayed, state);
    }
}
