//! The runner's driver: carries out what the [`Machine`] decides, with
//! tokio, the file system and the job's processes. The rules (hello,
//! heartbeats, results kept until acknowledged, backoff, hand-back on
//! SIGTERM) live in `machine.rs`; this file only does what it is told and
//! reports what happened.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::exec::Tap;
use super::job;
use super::machine::{Effect, Exit, Finished, Machine, Marker, Saved};
use crate::client::{Client, ClientError, Identity};
use crate::core::{CommitId, JobId, JobRef};
use crate::git::{GitAuth, GitError, Mirror};
use crate::proto::{ClientMsg, ErrorCode, MAX_CHUNK_BYTES, Role};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub dispatcher: String,
    /// The default repository's URL or path (`--repo URL`), if it serves it.
    pub repo: Option<String>,
    /// Named repositories it serves, each with its own URL (`--repo
    /// NAME=URL`): a runner may reach a repository by another path than
    /// the dispatcher.
    pub repos: std::collections::BTreeMap<String, String>,
    /// Whether it also serves every other repository, cloned from the URL
    /// the dispatcher's assignment carries (`--any-repository`).
    pub others: Others,
    /// Credentials and trust for fetching every repository (read once, at
    /// start).
    pub git_auth: Arc<GitAuth>,
    pub work_dir: PathBuf,
    pub name: String,
    pub heartbeat_interval: Duration,
    pub job_timeout: Duration,
    pub token: Option<Vec<u8>>,
}

/// What a runner does with repositories it was not given a URL for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Others {
    /// Serves only those it was given.
    Refuse,
    /// Serves them too, cloned on demand from the dispatcher's URL.
    CloneFromDispatcher,
}

impl RunnerConfig {
    /// What its hello says it serves.
    pub fn serves(&self) -> crate::proto::Serves {
        use crate::proto::Serves;
        if self.others == Others::CloneFromDispatcher {
            return Serves::Any;
        }
        if self.repos.is_empty() {
            return Serves::Default;
        }
        let default = self.repo.as_ref().map(|_| None);
        Serves::Only(
            default
                .into_iter()
                .chain(self.repos.keys().map(|n| Some(n.clone())))
                .collect(),
        )
    }

    /// Where a job's repository is fetched from: the runner's own URL for
    /// it, else (serving any) the dispatcher's.
    fn source_for(&self, repository: Option<&str>, url: Option<&str>) -> Option<String> {
        let own = match repository {
            None => self.repo.clone(),
            Some(r) => self.repos.get(r).cloned(),
        };
        own.or_else(|| {
            url.filter(|_| self.others == Others::CloneFromDispatcher)
                .map(str::to_string)
        })
    }
}

/// A named repository's directory under the work dir:
/// `repos/<name, '/' as %2F>` (names never hold `%`, so no two collide).
pub fn repository_dir(work_dir: &Path, name: &str) -> PathBuf {
    work_dir.join("repos").join(name.replace('/', "%2F"))
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("cannot keep the runner's state in {}: {source}", path.display())]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A default runner name that survives restarts: host name plus a short
/// hash of the work directory (two runners on one host need two dirs).
pub fn default_name(work_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "runner".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let path = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    let mut h: u32 = 0x811c9dc5;
    for b in path.to_string_lossy().bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    format!(
        "{}-{:06x}",
        if host.is_empty() { "runner" } else { &host },
        h & 0xff_ffff
    )
}

/// The runner's own files in its work directory: the marker (which job is
/// in progress, or was handed back) and the result waiting for its
/// acknowledgement. Written atomically (a temporary file, fsync, rename),
/// so a crash leaves the old or the new content, never a torn one.
struct Disk {
    marker: PathBuf,
    result: PathBuf,
}

impl Disk {
    fn new(work_dir: &Path) -> Disk {
        Disk {
            marker: work_dir.join("current-job"),
            result: work_dir.join("pending-result"),
        }
    }

    /// What a starting runner finds. Unreadable files are reported and
    /// ignored: at worst the dispatcher counts a loss or re-runs a job.
    fn load(&self) -> Saved {
        let marker = std::fs::read_to_string(&self.marker)
            .ok()
            .and_then(|t| parse_marker(&t));
        let result = match std::fs::read(&self.result) {
            Ok(bytes) => match crate::encoding::decode::<Finished>(&bytes) {
                Ok(f) => Some(f),
                Err(e) => {
                    warn!(file = %self.result.display(), error = %e, "a saved result cannot be read; ignoring it");
                    None
                }
            },
            Err(_) => None,
        };
        Saved { marker, result }
    }

    fn save_marker(&self, marker: Option<Marker>) -> std::io::Result<()> {
        match marker {
            None => remove(&self.marker),
            Some(Marker::Running(j)) => write_atomic(
                &self.marker,
                format!("{} {}\n", j.job.0, j.attempt).as_bytes(),
            ),
            Some(Marker::HandedBack(j)) => write_atomic(
                &self.marker,
                format!("{} {} handed-back\n", j.job.0, j.attempt).as_bytes(),
            ),
        }
    }

    fn save_result(&self, result: Option<&Finished>) -> std::io::Result<()> {
        match result {
            None => remove(&self.result),
            Some(f) => {
                let bytes = crate::encoding::encode(f).map_err(std::io::Error::other)?;
                write_atomic(&self.result, &bytes)
            }
        }
    }
}

fn parse_marker(text: &str) -> Option<Marker> {
    let mut it = text.split_whitespace();
    let job = JobRef {
        job: JobId(it.next()?.parse().ok()?),
        attempt: it.next()?.parse().ok()?,
    };
    match it.next() {
        None => Some(Marker::Running(job)),
        Some("handed-back") => Some(Marker::HandedBack(job)),
        Some(_) => None,
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The mirrors, by repository (`None`: the default one), made on demand.
type Mirrors = Arc<Mutex<std::collections::BTreeMap<Option<String>, Arc<Mutex<Mirror>>>>>;

pub struct Runner {
    cfg: Arc<RunnerConfig>,
    mirrors: Mirrors,
    disk: Disk,
    saved: Saved,
}

/// Longest a frame may take to be written before the connection is given
/// up (and made again, with backoff).
const SEND_LIMIT: Duration = Duration::from_secs(30);

/// A connection under way.
type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Client, ClientError>> + Send>>;

/// What can happen while the driver waits.
enum Happened {
    Connected(Result<Client, ClientError>),
    Frame(Result<Option<crate::proto::ServerMsg>, crate::proto::conn::ProtoError>),
    JobDone(Finished),
    MoreOutput,
    Stop,
    Timeout,
}

impl Runner {
    /// Prepares the work directory and the repository clone; errors here are
    /// the operator's to fix (bad path, unreachable repository).
    pub async fn prepare(cfg: RunnerConfig) -> Result<Runner, RunnerError> {
        let mut mirrors = std::collections::BTreeMap::new();
        // The default repository's mirror keeps its place (`mirror.git` at
        // the top), so an upgraded runner does not clone again; named ones
        // are made on demand under `repos/`.
        if let Some(repo) = &cfg.repo {
            let mirror = Mirror::prepare(repo, &cfg.work_dir, cfg.git_auth.clone()).await?;
            mirrors.insert(None, Arc::new(Mutex::new(mirror)));
        } else {
            std::fs::create_dir_all(&cfg.work_dir).map_err(|source| RunnerError::State {
                path: cfg.work_dir.clone(),
                source,
            })?;
        }
        let disk = Disk::new(&cfg.work_dir);
        let saved = disk.load();
        match (&saved.marker, &saved.result) {
            (_, Some(r)) => {
                info!(job = %r.job, "a finished result was saved before the last stop; delivering it")
            }
            (Some(Marker::Running(j)), None) => {
                warn!(job = %j, "this runner died while running a job; reporting it lost")
            }
            (Some(Marker::HandedBack(j)), None) => {
                info!(job = %j, "a job was handed back at the last stop; reporting it")
            }
            (None, None) => {}
        }
        Ok(Runner {
            cfg: Arc::new(cfg),
            mirrors: Arc::new(Mutex::new(mirrors)),
            disk,
            saved,
        })
    }

    /// Serves until `stop` (SIGTERM): a running job is then killed and handed
    /// back to the dispatcher, which queues it again at the front.
    pub async fn run(self, stop: CancellationToken) -> Result<(), RunnerError> {
        let id = Identity {
            role: Role::Runner,
            name: self.cfg.name.clone(),
            token: self.cfg.token.clone(),
            serves: self.cfg.serves(),
        };
        let epoch = Instant::now();
        let now_ms = || epoch.elapsed().as_millis() as u64;
        let mut machine = Machine::new(
            self.saved.clone(),
            self.cfg.heartbeat_interval.as_millis() as u64,
            crate::client::random_seed(),
            now_ms(),
        );
        let (done_tx, mut done_rx) = mpsc::channel::<Finished>(4);
        let mut client: Option<Client> = None;
        let mut connecting: Option<Connecting> = None;
        let mut running: Option<(JobRef, CancellationToken)> = None;
        // The running job's output and how far it went to the dispatcher
        // on this connection (`None`: not streaming).
        let mut tap: Option<(JobRef, Arc<Tap>)> = None;
        let mut streamed: Option<u64> = None;
        let mut stop_seen = false;
        let mut unreachable_warned = false;
        loop {
            while let Some(effect) = machine.poll_effect() {
                match effect {
                    Effect::Connect { holding, left } => {
                        let addr = self.cfg.dispatcher.clone();
                        let id = id.clone();
                        connecting = Some(Box::pin(async move {
                            Client::connect(&addr, &id, holding, left).await
                        }));
                    }
                    Effect::Send(msg) => {
                        let Some(c) = client.as_mut() else { continue };
                        // A dispatcher that stopped reading (frozen, its
                        // socket full) must not freeze the runner too.
                        let sent = tokio::time::timeout(SEND_LIMIT, c.writer.send(&msg)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            info!("cannot write to the dispatcher; reconnecting");
                            client = None;
                            machine.disconnected(now_ms());
                        }
                    }
                    Effect::Disconnect => {
                        client = None;
                        streamed = None;
                    }
                    Effect::StartJob {
                        job,
                        commit,
                        branch,
                        repository,
                        url,
                    } => {
                        let cancel = CancellationToken::new();
                        running = Some((job, cancel.clone()));
                        let t = Tap::new(crate::proto::MAX_OUTPUT_BYTES);
                        tap = Some((job, t.clone()));
                        streamed = None;
                        let source = JobSource { repository, url };
                        self.start_job(job, commit, branch, source, cancel, t, done_tx.clone());
                    }
                    Effect::StreamFrom { job, offset } => {
                        if tap.as_ref().is_some_and(|(j, _)| *j == job) {
                            streamed = Some(offset);
                        }
                    }
                    Effect::KillJob(job) => {
                        if let Some((j, cancel)) = running.take_if(|(j, _)| *j == job) {
                            info!(job = %j, "killing the running job");
                            cancel.cancel();
                        }
                        if tap.take_if(|(j, _)| *j == job).is_some() {
                            streamed = None;
                        }
                    }
                    Effect::SaveMarker(m) => {
                        if let Err(e) = self.disk.save_marker(m) {
                            warn!(error = %e, "cannot write the job marker");
                        }
                    }
                    Effect::SaveResult(r) => {
                        if let Err(source) = self.disk.save_result(r.as_ref()) {
                            // Not fatal: the result is still sent; only a
                            // stop before its acknowledgement would lose it.
                            warn!(error = %source, "cannot save the finished result");
                        }
                    }
                    Effect::Exit(Exit::Stopped) => {
                        if let Some((_, cancel)) = running.take() {
                            cancel.cancel();
                        }
                        return Ok(());
                    }
                    Effect::Exit(Exit::Refused { code, message }) => {
                        if let Some((_, cancel)) = running.take() {
                            cancel.cancel();
                        }
                        return Err(RunnerError::Refused { code, message });
                    }
                }
            }
            // Whatever the job wrote since, to the dispatcher (live logs).
            if let (Some((job, t)), Some(from), Some(c)) = (&tap, streamed, client.as_mut()) {
                match send_output(c, *job, t, from).await {
                    Ok(to) => streamed = Some(to),
                    Err(()) => {
                        info!("cannot write to the dispatcher; reconnecting");
                        client = None;
                        streamed = None;
                        machine.disconnected(now_ms());
                        continue;
                    }
                }
            }
            let wake = machine
                .poll_timeout()
                .map(|ms| epoch + Duration::from_millis(ms));
            let happened = tokio::select! {
                c = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    Happened::Connected(c)
                }
                f = async { client.as_mut().expect("guarded").reader.recv().await }, if client.is_some() => {
                    Happened::Frame(f)
                }
                Some(fin) = done_rx.recv() => Happened::JobDone(fin),
                _ = async { tap.as_ref().expect("guarded").1.changed().await }, if tap.is_some() && streamed.is_some() && client.is_some() => {
                    Happened::MoreOutput
                }
                _ = stop.cancelled(), if !stop_seen => Happened::Stop,
                _ = sleep_until(wake) => Happened::Timeout,
            };
            let now = now_ms();
            match happened {
                Happened::MoreOutput => {}
                Happened::Connected(Ok(c)) => {
                    if unreachable_warned {
                        info!(dispatcher = %self.cfg.dispatcher, "connected again");
                    } else {
                        info!(dispatcher = %self.cfg.dispatcher, "connected");
                    }
                    unreachable_warned = false;
                    let idle_heartbeat_ms = c.idle_heartbeat_ms;
                    client = Some(c);
                    machine.connected(now, idle_heartbeat_ms);
                }
                Happened::Connected(Err(e)) => {
                    if e.is_fatal() {
                        machine.connect_failed(e.code(), &e.to_string(), now);
                    } else {
                        if !unreachable_warned {
                            warn!(error = %e, "dispatcher unavailable; retrying with backoff");
                            unreachable_warned = true;
                        } else {
                            debug!(error = %e, "still cannot reach the dispatcher");
                        }
                        machine.connect_failed(e.code(), &e.to_string(), now);
                    }
                }
                Happened::Frame(Ok(Some(msg))) => machine.message(msg, now),
                Happened::Frame(Ok(None)) | Happened::Frame(Err(_)) => {
                    info!("disconnected from the dispatcher; reconnecting");
                    client = None;
                    streamed = None;
                    machine.disconnected(now);
                }
                Happened::JobDone(fin) => {
                    if running.as_ref().is_some_and(|(j, _)| *j == fin.job) {
                        running = None;
                    }
                    // The rest of the stream goes before the result, so
                    // followers see all of it.
                    if let Some((job, t)) = tap.take_if(|(j, _)| *j == fin.job)
                        && let (Some(from), Some(c)) = (streamed.take(), client.as_mut())
                        && send_output(c, job, &t, from).await.is_err()
                    {
                        info!("cannot write to the dispatcher; reconnecting");
                        client = None;
                        machine.disconnected(now);
                    }
                    info!(job = %fin.job, outcome = fin.report.outcome.as_str(), ms = fin.report.duration_ms, "job finished");
                    machine.job_finished(fin);
                }
                Happened::Stop => {
                    stop_seen = true;
                    info!("stopping: handing back any running job");
                    machine.stop(now);
                }
                Happened::Timeout => machine.handle_timeout(now),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_job(
        &self,
        job: JobRef,
        commit: CommitId,
        branch: Option<String>,
        source: JobSource,
        cancel: CancellationToken,
        tap: Arc<Tap>,
        done: mpsc::Sender<Finished>,
    ) {
        let span =
            info_span!("job", job = job.job.0, attempt = job.attempt, commit = %commit.short());
        let mirrors = self.mirrors.clone();
        let cfg = self.cfg.clone();
        let work_dir = self.cfg.work_dir.clone();
        let job_timeout = self.cfg.job_timeout;
        info!(%job, %commit, branch = branch.as_deref().unwrap_or("-"), repository = source.repository.as_deref().unwrap_or("-"), "job assigned");
        tokio::spawn(
            async move {
                let started = Instant::now();
                let job::Executed {
                    mut report,
                    output,
                    info,
                } = match mirror_for(&cfg, &mirrors, &source).await {
                    Ok(mirror) => {
                        job::execute(mirror, &work_dir, commit, job_timeout, cancel.clone(), tap)
                            .await
                    }
                    Err(message) => job::cannot_run(message),
                };
                if report.duration_ms == 0 {
                    // Never ran: the time went to fetching and checking out.
                    report.duration_ms = started.elapsed().as_millis() as u64;
                }
                if !cancel.is_cancelled() {
                    let _ = done
                        .send(Finished {
                            job,
                            report,
                            output,
                            info,
                        })
                        .await;
                }
            }
            .instrument(span),
        );
    }
}

/// Which repository a job is of, and the dispatcher's URL for it.
struct JobSource {
    repository: Option<String>,
    url: Option<String>,
}

/// The job's repository's mirror, made on first use (a clone: it may take
/// a while, and only this job waits for it).
async fn mirror_for(
    cfg: &RunnerConfig,
    mirrors: &Mirrors,
    source: &JobSource,
) -> Result<Arc<Mutex<Mirror>>, String> {
    let key = source.repository.clone();
    if let Some(m) = mirrors.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(m.clone());
    }
    let shown = key.as_deref().unwrap_or("(default)");
    let Some(url) = cfg.source_for(key.as_deref(), source.url.as_deref()) else {
        return Err(format!(
            "this runner has no URL for repository {shown}: give it --repo {shown}=URL or --any-repository"
        ));
    };
    let dir = match &key {
        None => cfg.work_dir.clone(),
        Some(name) => repository_dir(&cfg.work_dir, name),
    };
    let mirror = Mirror::prepare(&url, &dir, cfg.git_auth.clone())
        .await
        .map_err(|e| format!("cannot clone repository {shown}: {e}"))?;
    let mirror = Arc::new(Mutex::new(mirror));
    mirrors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, mirror.clone());
    Ok(mirror)
}

/// Sends what the job wrote from byte `from` on, in frames of at most
/// [`MAX_CHUNK_BYTES`]; returns where it got to. Bytes the bounded tail
/// already dropped are skipped (the dispatcher starts over at the gap).
async fn send_output(c: &mut Client, job: JobRef, tap: &Tap, from: u64) -> Result<u64, ()> {
    let mut at = from;
    loop {
        let (offset, data) = tap.read_from(at, MAX_CHUNK_BYTES);
        if data.is_empty() {
            return Ok(offset.max(at));
        }
        at = offset + data.len() as u64;
        let msg = ClientMsg::OutputChunk { job, offset, data };
        match tokio::time::timeout(SEND_LIMIT, c.writer.send(&msg)).await {
            Ok(Ok(())) => {}
            _ => return Err(()),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path());
        let j = JobRef {
            job: JobId(7),
            attempt: 2,
        };
        assert_eq!(disk.load(), Saved::default());
        for m in [Marker::Running(j), Marker::HandedBack(j)] {
            disk.save_marker(Some(m)).unwrap();
            assert_eq!(disk.load().marker, Some(m));
        }
        disk.save_marker(None).unwrap();
        disk.save_marker(None).unwrap();
        assert_eq!(disk.load().marker, None);
        // The first release's marker ("job attempt") still reads.
        std::fs::write(dir.path().join("current-job"), "7 2\n").unwrap();
        assert_eq!(disk.load().marker, Some(Marker::Running(j)));
        std::fs::write(dir.path().join("current-job"), "garbage").unwrap();
        assert_eq!(disk.load().marker, None);
    }

    #[test]
    fn results_round_trip_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path());
        let f = Finished {
            job: JobRef {
                job: JobId(3),
                attempt: 1,
            },
            report: crate::core::JobReport {
                outcome: crate::core::Outcome::Pass,
                exit_code: Some(0),
                duration_ms: 12,
                tests: None,
                message: "Ran 3 tests: OK".into(),
            },
            output: b"ok\n".to_vec(),
            info: None,
        };
        disk.save_result(Some(&f)).unwrap();
        assert_eq!(disk.load().result, Some(f));
        std::fs::write(dir.path().join("pending-result"), [1, 2, 3]).unwrap();
        assert_eq!(disk.load().result, None);
        disk.save_result(None).unwrap();
        assert!(!dir.path().join("pending-result").exists());
    }
}
