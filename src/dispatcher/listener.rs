//! The accept loop and who gets in: a cap on connections that fits under
//! the process's descriptor limit, and a cap on connections per source
//! address that have not yet proved who they are. A stranger may hold at
//! most a few descriptors, for at most the hello timeout. A connection
//! beyond the cap is told so (`Busy`, with the cap) and closed, not left
//! waiting in the kernel's backlog until its client times out; the
//! dispatcher says once in its log that it is full and what to raise.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::conn;
use super::metrics::Metrics;
use crate::proto::conn::Writer;
use crate::proto::{ErrorCode, ServerMsg};

/// Descriptors kept free for everything but client connections: the log's
/// files, the listener, the runtime, standard streams, sled's blob files,
/// and the [`MAX_REFUSING`] connections being told the cap is reached.
pub const FD_RESERVE: u64 = 64;

/// Most connections beyond the cap being refused at once (each holds a
/// descriptor for at most a second); past it one is closed without a
/// word. Taken from [`FD_RESERVE`].
pub const MAX_REFUSING: usize = 16;

/// How often at most the log says again that the cap is reached.
const FULL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Most connections per source address that have not yet said a valid
/// hello: an eighth of the cap, between 4 and 1,024. A fleet behind one
/// address (runners behind a NAT, a benchmark's ten thousand runners on
/// 127.0.0.1) reconnects all at once after a dispatcher restart, and each
/// is unproven only for its handshake: 128 made most of such a burst
/// wait for `Busy` and a back-off. Still small next to the cap, so one
/// stranger cannot hold the descriptors everyone needs (1,024 of 16,384,
/// each for at most the hello timeout).
pub fn max_unproven_per_addr(cap: usize) -> u32 {
    (cap / 8).clamp(4, 1024) as u32
}

/// Raises the soft limit on open files to the hard limit, and returns the
/// soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    {
        lim.rlim_cur as u64
    }
}

/// The connection cap: what was asked, but never more than the descriptor
/// limit leaves after the reserve (and at least a few).
pub fn connection_cap(asked: usize, fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(FD_RESERVE).max(8);
    asked.min(room as usize)
}

/// The open-file limit under which the TCP port's cap is `asked`: what
/// to tell people to raise the limit to (`LimitNOFILE=`, `ulimit -n`).
pub fn fd_limit_for(asked: usize, web: WebSide) -> u64 {
    let mut fd_limit = asked as u64 + FD_RESERVE;
    // The HTTP share grows with the limit, so step up until it fits
    // (a few steps: the share is at most `web::MAX_CONNECTIONS`).
    loop {
        let (tcp, _) = connection_caps(asked, fd_limit, web);
        if tcp >= asked {
            return fd_limit;
        }
        fd_limit += (asked - tcp) as u64;
    }
}

/// Whether the dispatcher serves HTTP too (`--http`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebSide {
    Off,
    On,
}

/// The TCP port's and the HTTP side's connection caps under `fd_limit`.
/// Both take descriptors from the same limit, so HTTP's share
/// ([`crate::web::connection_cap`]) comes off first and the TCP port gets
/// what is left after it and the reserve: together they never run the
/// log out of descriptors.
pub fn connection_caps(asked: usize, fd_limit: u64, web: WebSide) -> (usize, usize) {
    let http = match web {
        WebSide::Off => 0,
        WebSide::On => crate::web::connection_cap(fd_limit),
    };
    let tcp = connection_cap(asked, fd_limit.saturating_sub(http as u64));
    (tcp, http)
}

/// Counts unproven connections per source address.
#[derive(Debug)]
pub(crate) struct Admission {
    unproven: Mutex<HashMap<IpAddr, u32>>,
    max_per_addr: u32,
}

/// One unproven connection's place; given back when dropped (after the
/// hello was checked, or when the connection ends).
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut m = self.unproven.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= self.max_per_addr {
            return None;
        }
        *n += 1;
        Some(Admitted {
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self
            .admission
            .unproven
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

pub(crate) struct Listener {
    pub listener: TcpListener,
    /// What every connection task is given.
    pub shared: conn::Shared,
    pub cap: usize,
    /// Connection numbers, shared with in-process clients ([`super::local`]).
    pub ids: Arc<AtomicU64>,
    pub metrics: Arc<Metrics>,
}

impl Listener {
    /// Accepts until `stop`; then closes every connection and returns.
    ///
    /// Descriptors: at most `cap` connections served or being refused for
    /// their address, plus at most [`MAX_REFUSING`] beyond the cap being
    /// told so, plus the one just accepted; the last two come out of
    /// [`FD_RESERVE`].
    pub async fn run(self, stop: CancellationToken) {
        let limit = Arc::new(Semaphore::new(self.cap));
        let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
        let mut full_logged: Option<Instant> = None;
        let admission = Arc::new(Admission {
            unproven: Mutex::new(HashMap::new()),
            max_per_addr: max_unproven_per_addr(self.cap),
        });
        let conns = TaskTracker::new();
        let conn_stop = CancellationToken::new();
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(5);
                    a
                }
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                // Full: say so, once a minute in the log and to each
                // client (within the reserve), rather than let it wait in
                // the backlog for a greeting that does not come.
                if full_logged.is_none_or(|at| at.elapsed() >= FULL_LOG_EVERY) {
                    full_logged = Some(Instant::now());
                    warn!(
                        cap = self.cap,
                        "connection cap reached: {} connections open, refusing new ones until some close; to serve more raise the open-file limit (LimitNOFILE= in the service, ulimit -n) and --max-connections",
                        self.cap
                    );
                }
                if let Ok(slot) = refusing.clone().try_acquire_owned() {
                    let cap = self.cap;
                    conns.spawn(async move {
                        refuse_full(stream, cap).await;
                        drop(slot);
                    });
                }
                continue;
            };
            let Some(admitted) = admission.admit(peer.ip()) else {
                conns.spawn(async move {
                    refuse_busy(stream, peer.ip()).await;
                    drop(permit);
                });
                continue;
            };
            let id = self.ids.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            let stop = conn_stop.clone();
            let metrics = self.metrics.clone();
            metrics.connection_opened();
            conns.spawn(async move {
                conn::serve(stream, id, shared, admitted, stop).await;
                metrics.connection_closed();
                drop(permit);
            });
        }
        drop(self.listener);
        conn_stop.cancel();
        conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
        info!("listener closed");
    }
}

/// Tells a connection beyond the cap that the dispatcher is full, and
/// closes it. `Busy` is not permanent: clients back off and come again.
async fn refuse_full(stream: TcpStream, cap: usize) {
    let mut w: Writer<TcpStream, ServerMsg> = Writer::new(stream);
    let msg = ServerMsg::error(
        ErrorCode::Busy,
        format!(
            "the dispatcher serves at most {cap} connections at once (--max-connections, lowered to fit its open-file limit) and is full; try again shortly"
        ),
        true,
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), w.send(&msg)).await;
}

/// Tells a connection from an address with too many unproven connections
/// to come back later, and closes it.
async fn refuse_busy(stream: TcpStream, ip: IpAddr) {
    warn!(%ip, "too many connections without a hello from this address; refusing one");
    let mut w: Writer<TcpStream, ServerMsg> = Writer::new(stream);
    let msg = ServerMsg::error(
        ErrorCode::Busy,
        "too many connections from this address are still in their handshake; try again shortly",
        true,
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), w.send(&msg)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_together_leave_the_reserve_free() {
        for fd_limit in [512u64, 1024, 4096, 20_000, 1 << 20] {
            for web in [WebSide::Off, WebSide::On] {
                let (tcp, http) = connection_caps(16_384, fd_limit, web);
                assert!(
                    (tcp + http) as u64 + FD_RESERVE <= fd_limit,
                    "{fd_limit} {web:?}: {tcp} + {http}"
                );
                assert_eq!(http == 0, web == WebSide::Off);
            }
        }
        // Room to spare: what was asked.
        assert_eq!(connection_caps(100, 1 << 20, WebSide::On).0, 100);
    }

    #[test]
    fn the_limit_to_ask_for_gives_the_cap_asked() {
        for asked in [8usize, 100, 10_000, 16_384, 100_000] {
            for web in [WebSide::Off, WebSide::On] {
                let need = fd_limit_for(asked, web);
                assert_eq!(
                    connection_caps(asked, need, web).0,
                    asked,
                    "{asked} {web:?}"
                );
            }
        }
        assert_eq!(fd_limit_for(16_384, WebSide::Off), 16_384 + FD_RESERVE);
    }

    #[test]
    fn a_fleet_behind_one_address_may_reconnect_at_once() {
        assert_eq!(max_unproven_per_addr(16_384), 1024);
        assert_eq!(max_unproven_per_addr(192), 24);
        assert_eq!(max_unproven_per_addr(8), 4);
    }
}
