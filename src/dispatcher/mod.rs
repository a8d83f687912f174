//! The dispatcher: the IO shell around the pure core.
//!
//! [`start`] takes a store the caller opened (so it never knows which
//! backend it writes to), rebuilds the state from it, records the start,
//! binds the listener and runs three parts: the [`listener`] (accept loop
//! and admission), one task per connection ([`conn`]), and the log writer
//! thread ([`actor`]) that drives the sans-IO [`shell`].

pub mod actor;
pub mod conn;
pub mod listener;
pub mod live;
pub mod local;
pub mod metrics;
pub mod shell;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::{Core, CoreConfig};
use crate::proto::auth::Auth;
use crate::store::{self, Rebuild, Store, StoreError};

pub use crate::proto::auth::Tokens;
pub use crate::web::{WebhookSecret, WebhookSecretError};

/// Most connections served at once unless the descriptor limit says
/// fewer: ten thousand runners with room for tools, the web side's local
/// connections and a fleet's reconnections overlapping old connections
/// not yet closed. One more is refused (`Busy`, saying the cap).
pub const MAX_CONNECTIONS: usize = 16_384;

/// `--idle-heartbeat-interval`'s default, in seconds
/// ([`crate::core::DEFAULT_IDLE_HEARTBEAT_MS`]; a test keeps them equal).
pub const IDLE_HEARTBEAT_INTERVAL_SECS: &str = "15";

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub listen: String,
    pub heartbeat_timeout: Duration,
    /// How often a runner that holds no job beats (told in its welcome).
    pub idle_heartbeat: Duration,
    /// Store a snapshot of the state every this many events.
    pub snapshot_every: u64,
    /// Finished jobs kept in memory (the rest are in the history indexes).
    pub keep_in_memory: usize,
    pub max_attempts: u32,
    /// A connection that has not said hello by then is closed.
    pub hello_timeout: Duration,
    /// Without tokens, listen on a non-loopback address anyway.
    pub insecure: bool,
    /// Most connections at once (lowered to fit the descriptor limit).
    pub max_connections: usize,
    /// Serve the dashboard, the JSON API and `/metrics` over HTTP here.
    pub http: Option<String>,
    /// Where notifications and commit statuses go.
    pub notify: crate::notify::NotifyConfig,
    /// The secret forge webhooks are signed with (`/hooks/` on `http`).
    pub webhook_secret: Option<WebhookSecret>,
    /// The named repositories (`--repository NAME=URL`), name -> URL.
    pub repositories: std::collections::BTreeMap<String, String>,
}

impl DispatcherConfig {
    pub fn new(listen: impl Into<String>) -> Self {
        DispatcherConfig {
            listen: listen.into(),
            heartbeat_timeout: Duration::from_secs(10),
            idle_heartbeat: Duration::from_millis(crate::core::DEFAULT_IDLE_HEARTBEAT_MS),
            snapshot_every: 100_000,
            keep_in_memory: crate::core::state::DEFAULT_WINDOW,
            max_attempts: 3,
            hello_timeout: conn::HELLO_TIMEOUT,
            insecure: false,
            max_connections: MAX_CONNECTIONS,
            http: None,
            notify: crate::notify::NotifyConfig::default(),
            webhook_secret: None,
            repositories: std::collections::BTreeMap::new(),
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
    #[error("cannot start the log writer: {0}")]
    Thread(std::io::Error),
    #[error("the log writer panicked")]
    WriterPanicked,
}

impl DispatcherError {
    fn bind(addr: &str) -> impl FnOnce(std::io::Error) -> DispatcherError + '_ {
        move |source| DispatcherError::Bind {
            addr: addr.to_string(),
            source,
        }
    }
}

/// A started dispatcher. Dropping it does not stop it; call `shutdown`.
pub struct Dispatcher {
    addr: SocketAddr,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<Result<(), DispatcherError>>,
    pub replayed_events: u64,
    pub restart_ms: u64,
    /// The connection cap in force (see [`listener::connection_caps`]).
    pub connection_cap: usize,
    /// Where the HTTP server listens, when asked for (`--http`).
    pub http_addr: Option<SocketAddr>,
    local: local::Local,
    metrics: Arc<metrics::Metrics>,
}

impl Dispatcher {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Opens in-process connections (what the web server uses).
    pub fn local(&self) -> local::Local {
        self.local.clone()
    }

    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    /// Stops accepting, makes every appended event durable and returns.
    pub async fn shutdown(self) -> Result<(), DispatcherError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the dispatcher stops: after `shutdown`, or at once
    /// when its storage fails (the error says what to do).
    pub async fn wait(self) -> Result<(), DispatcherError> {
        match self.done.await {
            Ok(r) => r,
            Err(_) => Err(DispatcherError::WriterPanicked),
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

/// Starts a dispatcher on `store` (opened by the caller, e.g.
/// [`store::SledLog::open`]).
pub async fn start(
    config: DispatcherConfig,
    auth: Auth,
    store: Box<dyn Store>,
) -> Result<Dispatcher, DispatcherError> {
    let started = Instant::now();
    if auth.is_open() && !config.insecure {
        for addr in std::iter::once(&config.listen).chain(&config.http) {
            let loopback = is_loopback(addr)
                .await
                .map_err(DispatcherError::bind(addr))?;
            if !loopback {
                return Err(DispatcherError::NotLoopback { addr: addr.clone() });
            }
        }
    }
    let (store, state) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let t = Instant::now();
        let state = store::load_state(&*store, Rebuild::FromSnapshot)?;
        release_free_memory();
        info!(
            load_ms = t.elapsed().as_millis() as u64,
            events = state.last_seq(),
            jobs = state.jobs_seen(),
            in_memory = state.jobs_in_memory(),
            store = %store.describe(),
            "state rebuilt"
        );
        Ok((store, state))
    })
    .await
    .map_err(|_| DispatcherError::WriterPanicked)??;
    let replayed_events = state.last_seq();
    let core = Core::new(
        state,
        CoreConfig {
            heartbeat_timeout_ms: config.heartbeat_timeout.as_millis() as u64,
            idle_heartbeat_ms: (config.idle_heartbeat.as_millis() as u64).max(1),
            max_attempts: config.max_attempts,
            sinks: config.notify.sinks.iter().map(|s| s.spec()).collect(),
            window: config.keep_in_memory,
        },
    );
    let shell = shell::Shell::new(
        core,
        shell::ShellConfig {
            snapshot_every: config.snapshot_every,
            repositories: config.repositories.clone(),
        },
    );
    let metrics = metrics::Metrics::new();
    let beats = Arc::new(actor::Beats::default());
    let mut driver = actor::Driver::new(
        shell,
        store,
        beats.clone(),
        actor::Clock::new(),
        metrics.clone(),
    );
    driver.start()?;
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
    let fd_limit = listener::raise_fd_limit();
    let web_side = match config.http {
        Some(_) => listener::WebSide::On,
        None => listener::WebSide::Off,
    };
    let (cap, http_cap) = listener::connection_caps(config.max_connections, fd_limit, web_side);
    if cap < config.max_connections {
        let needed = listener::fd_limit_for(config.max_connections, web_side);
        warn!(
            cap,
            fd_limit,
            asked = config.max_connections,
            "the open-file limit allows fewer connections than asked: {fd_limit} open files leave room for {cap} connections (runners and tools together), not {}; to serve them all raise the hard limit to {needed} (LimitNOFILE={needed} in the service unit, or ulimit -n {needed} before starting)",
            config.max_connections
        );
    }
    let restart_ms = started.elapsed().as_millis() as u64;
    info!(%addr, replayed_events, restart_ms, cap, "dispatcher serving");

    let http_listener = match &config.http {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(DispatcherError::bind(addr))?,
        ),
        None => None,
    };
    let http_addr = match &http_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(DispatcherError::bind(config.http.as_deref().unwrap_or("")))?,
        ),
        None => None,
    };
    let (tx, rx) = flume::bounded(actor::COMMAND_QUEUE);
    let wake = tx.clone();
    let writer = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || driver.run(rx, wake))
        .map_err(DispatcherError::Thread)?;

    let shutdown = CancellationToken::new();
    let stop_listening = CancellationToken::new();
    let timing = conn::Timing {
        hello_timeout: config.hello_timeout,
        heartbeat_forward: config.heartbeat_timeout / 4,
    };
    let ids = Arc::new(AtomicU64::new(1));
    let local = local::Local::new(tx.clone(), ids.clone());
    let auth = Arc::new(auth);
    let accept = listener::Listener {
        listener,
        shared: conn::Shared {
            cmds: tx.clone(),
            beats,
            auth: auth.clone(),
            timing,
            metrics: metrics.clone(),
        },
        cap,
        ids,
        metrics: metrics.clone(),
    };
    let accepting = tokio::spawn(accept.run(stop_listening.clone()));
    let web = http_listener.map(|l| {
        info!(addr = %http_addr.expect("bound"), "http serving");
        let ctx = crate::web::WebContext {
            local: local.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            loopback_only: auth.is_open() && !config.insecure,
            max_connections: http_cap,
            webhook_secret: config.webhook_secret.clone(),
            repositories: config.repositories.keys().cloned().collect(),
        };
        tokio::spawn(crate::web::serve(l, ctx, stop_listening.clone()))
    });
    let notifier = tokio::spawn(crate::notify::run(
        local.clone(),
        config.notify.clone(),
        stop_listening.clone(),
    ));
    let token = shutdown.clone();
    let done = tokio::spawn(async move {
        let mut writer_done = tokio::task::spawn_blocking(move || writer.join());
        let ended = tokio::select! {
            _ = token.cancelled() => None,
            r = &mut writer_done => Some(r),
        };
        stop_listening.cancel();
        let joined = match ended {
            Some(r) => r,
            None => {
                // Stop accepting first, then let the writer finish what it
                // took and make it durable.
                let _ = accepting.await;
                if let Some(web) = web {
                    let _ = web.await;
                }
                let _ = notifier.await;
                let _ = tx.send_async(actor::Cmd::Shutdown).await;
                drop(tx);
                writer_done.await
            }
        };
        match joined {
            Ok(Ok(Ok(()))) => {
                info!("dispatcher stopped; log durable");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(DispatcherError::Store(e)),
            Ok(Err(_)) | Err(_) => Err(DispatcherError::WriterPanicked),
        }
    });
    Ok(Dispatcher {
        addr,
        shutdown,
        done,
        replayed_events,
        restart_ms,
        connection_cap: cap,
        http_addr,
        local,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_idle_pace_flag_default_is_the_cores() {
        let flag = crate::util::parse_secs(super::IDLE_HEARTBEAT_INTERVAL_SECS).expect("parses");
        assert_eq!(
            flag.as_millis() as u64,
            crate::core::DEFAULT_IDLE_HEARTBEAT_MS
        );
    }
}
