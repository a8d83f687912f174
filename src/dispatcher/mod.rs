//! The dispatcher: the IO shell around the pure core.
//!
//! `start` opens the log (taking its lock), rebuilds the state, records the
//! start, binds the listener and spawns the accept loop; one thread
//! ([`actor`]) owns the core and the log; one task per connection ([`conn`]).

pub mod actor;
pub mod auth;
pub mod conn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::core::{Core, CoreConfig};
use crate::store::{self, EventLog, SledLog, StoreError};

pub use auth::{Auth, Tokens};

/// Most connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub heartbeat_timeout: Duration,
    /// Store a snapshot of the state every this many events.
    pub snapshot_every: u64,
    pub max_attempts: u32,
    /// A connection that has not said hello by then is closed.
    pub hello_timeout: Duration,
    /// Without tokens, listen on a non-loopback address anyway.
    pub insecure: bool,
}

impl DispatcherConfig {
    pub fn new(listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        DispatcherConfig {
            listen: listen.into(),
            data_dir: data_dir.into(),
            heartbeat_timeout: Duration::from_secs(10),
            snapshot_every: 100_000,
            max_attempts: 3,
            hello_timeout: conn::HELLO_TIMEOUT,
            insecure: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "refusing to listen on {addr} without tokens: anyone who can reach it could submit commits and post results; give --token-file FILE, or --insecure if this network is trusted"
    )]
    NotLoopback { addr: String },
    #[error("the log writer stopped: {0}")]
    Writer(String),
}

/// A started dispatcher. Dropping it does not stop it; call `shutdown`.
pub struct Dispatcher {
    addr: SocketAddr,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<Result<(), DispatcherError>>,
    pub replayed_events: u64,
    pub restart_ms: u64,
}

impl Dispatcher {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, makes every appended event durable and returns.
    pub async fn shutdown(self) -> Result<(), DispatcherError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the dispatcher stops (shutdown or a fatal log error).
    pub async fn wait(self) -> Result<(), DispatcherError> {
        match self.done.await {
            Ok(r) => r,
            Err(e) => Err(DispatcherError::Writer(e.to_string())),
        }
    }
}

/// Whether every address `listen` names is a loopback address.
async fn is_loopback(listen: &str) -> Result<bool, std::io::Error> {
    let mut any = false;
    for a in tokio::net::lookup_host(listen).await? {
        if !a.ip().is_loopback() {
            return Ok(false);
        }
        any = true;
    }
    Ok(any)
}

/// Hands the memory freed after loading (the snapshot's bytes, replay
/// pages) back to the system, so the dispatcher's resident memory is the
/// state it keeps rather than its start-up peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub async fn start(config: DispatcherConfig, auth: Auth) -> Result<Dispatcher, DispatcherError> {
    let started = Instant::now();
    if auth.is_open() && !config.insecure {
        let loopback =
            is_loopback(&config.listen)
                .await
                .map_err(|source| DispatcherError::Bind {
                    addr: config.listen.clone(),
                    source,
                })?;
        if !loopback {
            return Err(DispatcherError::NotLoopback {
                addr: config.listen.clone(),
            });
        }
    }
    let data_dir = config.data_dir.clone();
    let (log, state) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let t = Instant::now();
        let log = SledLog::open(&data_dir)?;
        let open_ms = t.elapsed().as_millis() as u64;
        let state = store::load_state(&log, true)?;
        release_free_memory();
        info!(
            open_ms,
            load_ms = t.elapsed().as_millis() as u64 - open_ms,
            events = state.last_seq,
            jobs = state.jobs().len(),
            "log opened and state rebuilt"
        );
        Ok((log, state))
    })
    .await
    .map_err(|e| DispatcherError::Writer(e.to_string()))??;
    let replayed_events = state.last_seq;
    let core = Core::new(
        state,
        CoreConfig {
            heartbeat_timeout_ms: config.heartbeat_timeout.as_millis() as u64,
            max_attempts: config.max_attempts,
        },
    );
    let mut actor = actor::Actor::new(
        core,
        Box::new(log) as Box<dyn EventLog>,
        config.snapshot_every,
    );
    actor.start()?;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| DispatcherError::Bind {
                addr: config.listen.clone(),
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DispatcherError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let restart_ms = started.elapsed().as_millis() as u64;
    info!(%addr, replayed_events, restart_ms, "dispatcher serving");

    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || actor.run(rx))
        .map_err(|e| DispatcherError::Writer(e.to_string()))?;

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let auth = Arc::new(auth);
    let timing = conn::Timing {
        hello_timeout: config.hello_timeout,
        heartbeat_forward: config.heartbeat_timeout / 4,
    };
    let done = tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let next_conn = AtomicU64::new(1);
        let conns = tokio_util::task::TaskTracker::new();
        let conn_shutdown = CancellationToken::new();
        let mut writer_done = tokio::task::spawn_blocking(move || writer.join());
        let outcome = loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = token.cancelled() => break None,
                r = &mut writer_done => break Some(r),
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = token.cancelled() => break None,
                r = &mut writer_done => break Some(r),
            };
            match accepted {
                Ok((stream, _)) => {
                    let id = next_conn.fetch_add(1, Ordering::Relaxed);
                    let cmds = tx.clone();
                    let auth = auth.clone();
                    let stop = conn_shutdown.clone();
                    conns.spawn(async move {
                        conn::serve(stream, id, cmds, auth, timing, stop).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        drop(listener);
        conn_shutdown.cancel();
        let joined = match outcome {
            Some(r) => r,
            None => {
                let _ = tx.send(actor::Cmd::Shutdown);
                drop(tx);
                writer_done.await
            }
        };
        match joined {
            Ok(Ok(Ok(()))) => {
                info!("dispatcher stopped; log durable");
                Ok(())
            }
            Ok(Ok(Err(e))) => {
                error!(error = %e, "log writer failed");
                Err(DispatcherError::Store(e))
            }
            Ok(Err(_)) => Err(DispatcherError::Writer("the log writer panicked".into())),
            Err(e) => Err(DispatcherError::Writer(e.to_string())),
        }
    });
    Ok(Dispatcher {
        addr,
        shutdown,
        done,
        replayed_events,
        restart_ms,
    })
}
