//! One task per client connection: the handshake (greeting, hello, token
//! check), then frames in to the log writer and messages out from it. What
//! a frame means is the shell's business; an error here closes this
//! connection only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::actor::{Beat, Beats, Cmd, OUTBOX, Outbox};
use super::listener::Admitted;
use super::shell::{ConnId, ShellInput};
use crate::proto::auth::Auth;
use crate::proto::conn::{ProtoError, Reader, Writer};
use crate::proto::{
    ClientMsg, ErrorCode, Greeting, Hello, MAX_NAME_BYTES, PROTOCOL_VERSION, Role, ServerMsg,
};

/// A connection that has not said hello by then is closed (the default of
/// `DispatcherConfig::hello_timeout`): a stranger may not hold a
/// descriptor for long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

type Rd = Reader<tokio::net::tcp::OwnedReadHalf, ClientMsg>;
type Wr = Writer<tokio::net::tcp::OwnedWriteHalf, ServerMsg>;

/// Per-connection timing rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// A connection that has not said hello by then is closed.
    pub hello_timeout: Duration,
    /// Heartbeats that only say "still here, same job" are passed to the
    /// log writer at most this often (a quarter of the heartbeat timeout),
    /// and on the [`Beats`] board, which does not wake it: ten thousand
    /// chatty runners neither fill its queue nor wake it thousands of
    /// times a second. A change of the job held is always passed on at
    /// once, through the queue.
    pub heartbeat_forward: Duration,
}

/// What every connection task shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub cmds: flume::Sender<Cmd>,
    pub beats: Arc<Beats>,
    pub auth: Arc<Auth>,
    pub timing: Timing,
    pub metrics: Arc<super::metrics::Metrics>,
}

pub(crate) async fn serve(
    stream: TcpStream,
    conn: ConnId,
    shared: Shared,
    admitted: Admitted,
    shutdown: CancellationToken,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let span = info_span!("conn", conn, %peer, role = tracing::field::Empty, runner = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut reader: Rd = Reader::new(r);
        let mut writer: Wr = Writer::new(w);
        let result = tokio::select! {
            r = handshake_and_serve(&mut reader, &mut writer, conn, &shared, admitted) => r,
            _ = shutdown.cancelled() => Err(ProtoError::refused(ErrorCode::ShuttingDown, "the dispatcher is stopping")),
        };
        match result {
            Ok(()) => debug!("connection closed"),
            Err(ProtoError::Closed) => debug!("peer closed the connection"),
            Err(e) => {
                info!(error = %e, "connection dropped");
                let msg = ServerMsg::error(e.code(), e.to_string(), true);
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(&msg)).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn handshake_and_serve(
    reader: &mut Rd,
    writer: &mut Wr,
    conn: ConnId,
    shared: &Shared,
    admitted: Admitted,
) -> Result<(), ProtoError> {
    let Shared {
        cmds,
        beats,
        auth,
        timing,
        metrics,
    } = shared;
    let nonce = auth
        .nonce()
        .map_err(|e| ProtoError::refused(e.code(), e.to_string()))?;
    let hello = tokio::time::timeout(timing.hello_timeout, async {
        writer
            .send(&ServerMsg::Greeting(Greeting {
                version: PROTOCOL_VERSION,
                nonce,
            }))
            .await?;
        read_hello(reader).await
    })
    .await
    .map_err(|_| ProtoError::Timeout("no hello in time"))??;
    // Nothing a client sent reaches the log writer before this check.
    let grant = auth.check(&hello, &nonce).map_err(|e| {
        warn!(role = hello.role.as_str(), "refused: {e}");
        ProtoError::refused(e.code(), e.to_string())
    })?;
    drop(admitted);
    tracing::Span::current().record("role", hello.role.as_str());
    let (tx, rx) = tokio::sync::mpsc::channel(OUTBOX);
    let outbox = Outbox {
        tx,
        kill: CancellationToken::new(),
    };
    let kill = outbox.kill.clone();
    let first = match hello.role {
        Role::Runner => {
            tracing::Span::current().record("runner", hello.name.as_str());
            info!(holding = ?hello.holding, left = ?hello.left, "runner connected");
            ShellInput::RunnerHello {
                conn,
                name: hello.name.clone(),
                holding: hello.holding,
                left: hello.left,
                serves: hello.serves.clone(),
            }
        }
        Role::Observer | Role::Tool => {
            writer
                .send(&ServerMsg::Welcome {
                    keep: None,
                    idle_heartbeat_ms: 0,
                })
                .await?;
            ShellInput::ClientHello {
                conn,
                role: hello.role,
                grant,
            }
        }
    };
    send_cmd(
        cmds,
        Cmd::Open {
            conn,
            outbox,
            hello: first,
        },
    )
    .await?;
    let forward = match hello.role {
        Role::Runner => Some(Forward {
            every: timing.heartbeat_forward,
            last: (Instant::now(), hello.holding),
        }),
        _ => None,
    };
    let inbound = Inbound {
        conn,
        cmds,
        beats,
        metrics,
        forward,
        sent: 0,
    };
    let result = pump(reader, writer, inbound, rx, kill).await;
    let _ = send_cmd(cmds, Cmd::Input(ShellInput::Closed { conn })).await;
    result
}

async fn read_hello(reader: &mut Rd) -> Result<Hello, ProtoError> {
    let hello = match reader.recv().await {
        Ok(Some(ClientMsg::Hello(h))) => h,
        Ok(Some(other)) => {
            return Err(ProtoError::refused(
                ErrorCode::Invalid,
                format!("the first frame must be a hello, got {}", other.kind()),
            ));
        }
        Ok(None) => return Err(ProtoError::Closed),
        Err(ProtoError::Codec(e)) => {
            return Err(ProtoError::refused(
                ErrorCode::Version,
                format!(
                    "the first frame is not a hello this dispatcher understands (protocol version {PROTOCOL_VERSION}): {e}"
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(ProtoError::refused(
            ErrorCode::Version,
            format!(
                "protocol version mismatch: this dispatcher speaks version {PROTOCOL_VERSION}, the client version {}; upgrade the older side",
                hello.version
            ),
        ));
    }
    if hello.name.len() > MAX_NAME_BYTES {
        return Err(ProtoError::refused(
            ErrorCode::Invalid,
            format!("a name in a hello is at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(hello)
}

/// What becomes of a runner's heartbeat ([`Timing::heartbeat_forward`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Same job, passed on recently: dropped here.
    Drop,
    /// Same job, due again: left on the board.
    Board,
    /// A different job held: through the queue, now.
    Queue,
}

/// The unchanged-heartbeat filter of [`Timing::heartbeat_forward`].
struct Forward {
    every: Duration,
    last: (Instant, Option<crate::core::JobRef>),
}

impl Forward {
    fn pass(&mut self, holding: Option<crate::core::JobRef>) -> Pass {
        let now = Instant::now();
        let pass = match holding == self.last.1 {
            true if now.duration_since(self.last.0) < self.every => return Pass::Drop,
            true => Pass::Board,
            false => Pass::Queue,
        };
        self.last = (now, holding);
        pass
    }
}

/// The inbound half of a connection: where its frames go, in order.
struct Inbound<'a> {
    conn: ConnId,
    cmds: &'a flume::Sender<Cmd>,
    beats: &'a Beats,
    metrics: &'a super::metrics::Metrics,
    forward: Option<Forward>,
    /// Frames sent as commands so far (a [`Beat`]'s place).
    sent: u64,
}

impl Inbound<'_> {
    async fn frame(&mut self, msg: ClientMsg) -> Result<(), ProtoError> {
        if let ClientMsg::Heartbeat { .. } = msg {
            self.metrics.heartbeat_received();
        }
        if let (ClientMsg::Heartbeat { holding }, Some(f)) = (&msg, self.forward.as_mut()) {
            match f.pass(*holding) {
                Pass::Drop => return Ok(()),
                Pass::Board => {
                    let beat = Beat {
                        conn: self.conn,
                        holding: *holding,
                        after: self.sent,
                    };
                    if self.beats.put(beat) {
                        return Ok(());
                    }
                }
                Pass::Queue => {}
            }
        }
        self.sent += 1;
        let conn = self.conn;
        send_cmd(self.cmds, Cmd::Input(ShellInput::Frame { conn, msg })).await
    }
}

/// Frames in, messages out, until either side ends.
async fn pump(
    reader: &mut Rd,
    writer: &mut Wr,
    mut inbound: Inbound<'_>,
    mut rx: tokio::sync::mpsc::Receiver<ServerMsg>,
    kill: CancellationToken,
) -> Result<(), ProtoError> {
    // Registered once, not on every frame.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(msg) = out else {
                    return Err(ProtoError::refused(ErrorCode::ShuttingDown, "the dispatcher is stopping"));
                };
                if write_batch(writer, msg, &mut rx).await? {
                    return Ok(());
                }
            }
            msg = reader.recv() => {
                let Some(msg) = msg? else { return Ok(()) };
                inbound.frame(msg).await?;
            }
            _ = &mut killed => {
                return Err(ProtoError::refused(
                    ErrorCode::TooSlow,
                    "this connection did not read what it was sent; closing it",
                ));
            }
        }
    }
}

/// Writes `first` and whatever else is already waiting, then flushes once.
/// True when a fatal error was written: the connection ends.
async fn write_batch(
    writer: &mut Wr,
    first: ServerMsg,
    rx: &mut tokio::sync::mpsc::Receiver<ServerMsg>,
) -> Result<bool, ProtoError> {
    let mut fatal = matches!(first, ServerMsg::Error { fatal: true, .. });
    writer.feed(&first).await?;
    let mut n = 1;
    while n < 256 && !fatal {
        match rx.try_recv() {
            Ok(m) => {
                fatal = matches!(m, ServerMsg::Error { fatal: true, .. });
                writer.feed(&m).await?;
            }
            Err(_) => break,
        }
        n += 1;
    }
    writer.flush().await?;
    Ok(fatal)
}

async fn send_cmd(cmds: &flume::Sender<Cmd>, cmd: Cmd) -> Result<(), ProtoError> {
    cmds.send_async(cmd)
        .await
        .map_err(|_| ProtoError::refused(ErrorCode::ShuttingDown, "the dispatcher is stopping"))
}
