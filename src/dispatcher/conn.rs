//! One task per client connection: handshake, role checks, and translating
//! frames into commands for the log writer. An error here closes this
//! connection only.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::actor::{Cmd, ConnId, RunnerCmd};
use super::auth::Auth;
use crate::core::ids::{validate_branch_name, validate_runner_name};
use crate::proto::conn::{ProtoError, Reader, Writer};
use crate::proto::{
    ClientMsg, Greeting, Hello, MAX_OUTPUT_BYTES, PROTOCOL_VERSION, Role, ServerMsg,
};

/// A connection that has not said hello by then is closed (the default of
/// `DispatcherConfig::hello_timeout`).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most commits one report may carry.
pub const MAX_COMMITS_PER_REPORT: usize = 100_000;

type Rd = Reader<tokio::net::tcp::OwnedReadHalf, ClientMsg>;
type Wr = Writer<tokio::net::tcp::OwnedWriteHalf, ServerMsg>;

/// Per-connection timing rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// A connection that has not said hello by then is closed.
    pub hello_timeout: Duration,
    /// Heartbeats that only say "still here, same job" are passed to the
    /// log writer at most this often (a quarter of the heartbeat timeout),
    /// so a thousand chatty runners do not wake it a thousand times a
    /// second. A change of the job held is always passed on at once.
    pub heartbeat_forward: Duration,
}

pub(crate) async fn serve(
    stream: TcpStream,
    conn: ConnId,
    cmds: Sender<Cmd>,
    auth: Arc<Auth>,
    timing: Timing,
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
            r = handshake_and_serve(&mut reader, &mut writer, conn, &cmds, &auth, timing) => r,
            _ = shutdown.cancelled() => Ok(()),
        };
        match result {
            Ok(()) => debug!("connection closed"),
            Err(ProtoError::Closed) => debug!("peer closed the connection"),
            Err(e) => {
                info!(error = %e, "connection dropped");
                let _ = writer
                    .send(&ServerMsg::Error {
                        message: e.to_string(),
                        fatal: true,
                    })
                    .await;
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
    cmds: &Sender<Cmd>,
    auth: &Auth,
    timing: Timing,
) -> Result<(), ProtoError> {
    let hello_timeout = timing.hello_timeout;
    let nonce = auth.nonce().map_err(ProtoError::Refused)?;
    writer
        .send(&ServerMsg::Greeting(Greeting {
            version: PROTOCOL_VERSION,
            nonce,
        }))
        .await?;
    let first = tokio::time::timeout(hello_timeout, reader.recv())
        .await
        .map_err(|_| ProtoError::Timeout("no hello in time"))?;
    let hello = match first {
        Ok(Some(ClientMsg::Hello(h))) => h,
        Ok(Some(other)) => {
            return Err(ProtoError::Refused(format!(
                "the first frame must be a hello, got {}",
                other.kind()
            )));
        }
        Ok(None) => return Err(ProtoError::Closed),
        Err(ProtoError::Codec(e)) => {
            return Err(ProtoError::Refused(format!(
                "the first frame is not a hello this dispatcher understands (protocol version {PROTOCOL_VERSION}): {e}"
            )));
        }
        Err(e) => return Err(e),
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(ProtoError::Refused(format!(
            "protocol version mismatch: this dispatcher speaks version {PROTOCOL_VERSION}, the client version {}; upgrade the older side",
            hello.version
        )));
    }
    // Nothing a client sent reaches the log writer before this check.
    let grant = auth.check(&hello, &nonce).map_err(|why| {
        warn!(role = hello.role.as_str(), "refused: {why}");
        ProtoError::Refused(why)
    })?;
    tracing::Span::current().record("role", hello.role.as_str());
    match hello.role {
        Role::Runner => {
            serve_runner(reader, writer, conn, cmds, hello, timing.heartbeat_forward).await
        }
        Role::Observer | Role::Tool => {
            writer.send(&ServerMsg::Welcome { keep: None }).await?;
            serve_requests(reader, writer, cmds, hello.role, grant).await
        }
    }
}

async fn serve_runner(
    reader: &mut Rd,
    writer: &mut Wr,
    conn: ConnId,
    cmds: &Sender<Cmd>,
    hello: Hello,
    heartbeat_forward: Duration,
) -> Result<(), ProtoError> {
    let mut forwarded = (std::time::Instant::now(), hello.holding);
    validate_runner_name(&hello.name).map_err(|e| ProtoError::Refused(e.to_string()))?;
    let name = hello.name.clone();
    tracing::Span::current().record("runner", name.as_str());
    info!(holding = ?hello.holding, crashed = ?hello.crashed, "runner connected");
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMsg>();
    send_cmd(
        cmds,
        Cmd::RunnerHello {
            conn,
            name: name.clone(),
            holding: hello.holding,
            crashed: hello.crashed,
            tx,
        },
    )?;
    let result = loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(msg) = out else {
                    // The log writer dropped us: a newer connection with
                    // this name took over.
                    break Err(ProtoError::Refused(format!(
                        "another connection took over runner {name}: two runners may not share a name; give each its own --name"
                    )));
                };
                if let Err(e) = write_batch(writer, msg, &mut rx).await {
                    break Err(e);
                }
            }
            msg = reader.recv() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                };
                let cmd = match msg {
                    ClientMsg::Heartbeat { holding } => {
                        let now = std::time::Instant::now();
                        if holding == forwarded.1 && now.duration_since(forwarded.0) < heartbeat_forward {
                            continue;
                        }
                        forwarded = (now, holding);
                        RunnerCmd::Heartbeat { holding }
                    }
                    ClientMsg::Ready => RunnerCmd::Ready,
                    ClientMsg::Result { job, report, mut output } => {
                        if output.len() > MAX_OUTPUT_BYTES {
                            output.drain(..output.len() - MAX_OUTPUT_BYTES);
                        }
                        RunnerCmd::Result { job, report, output }
                    }
                    ClientMsg::HandBack { job } => RunnerCmd::HandBack { job },
                    other => {
                        break Err(ProtoError::Refused(format!(
                            "a runner may not send {}", other.kind()
                        )));
                    }
                };
                if let Err(e) = send_cmd(cmds, Cmd::Runner { conn, name: name.clone(), cmd }) {
                    break Err(e);
                }
            }
        }
    };
    let _ = send_cmd(cmds, Cmd::RunnerGone { conn, name });
    result
}

/// Writes `first` and whatever else is already waiting, then flushes once.
async fn write_batch(
    writer: &mut Wr,
    first: ServerMsg,
    rx: &mut mpsc::UnboundedReceiver<ServerMsg>,
) -> Result<(), ProtoError> {
    writer.feed(&first).await?;
    let mut n = 1;
    while n < 256 {
        match rx.try_recv() {
            Ok(m) => writer.feed(&m).await?,
            Err(_) => break,
        }
        n += 1;
    }
    writer.flush().await
}

async fn serve_requests(
    reader: &mut Rd,
    writer: &mut Wr,
    cmds: &Sender<Cmd>,
    role: Role,
    grant: super::auth::Grant,
) -> Result<(), ProtoError> {
    while let Some(msg) = reader.recv().await? {
        if let Err(why) = permitted(role, grant, &msg).and_then(|()| validate(&msg)) {
            writer
                .send(&ServerMsg::Error {
                    message: why,
                    fatal: false,
                })
                .await?;
            continue;
        }
        let (tx, rx) = oneshot::channel();
        send_cmd(cmds, Cmd::Request { msg, reply: tx })?;
        let answer = rx
            .await
            .map_err(|_| ProtoError::Refused("the dispatcher is shutting down".into()))?;
        writer.send(&answer).await?;
    }
    Ok(())
}

fn permitted(role: Role, grant: super::auth::Grant, msg: &ClientMsg) -> Result<(), String> {
    let ok = match msg {
        ClientMsg::Commits { .. } => role == Role::Observer || grant.write,
        ClientMsg::GetTips
        | ClientMsg::Status
        | ClientMsg::Results { .. }
        | ClientMsg::Replay { .. }
        | ClientMsg::Output { .. } => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        warn!(
            role = role.as_str(),
            msg = msg.kind(),
            "refused: not permitted for this role"
        );
        let hint = if role == Role::Tool && matches!(msg, ClientMsg::Commits { .. }) {
            " (this tool's token is read-only; submitting needs the tool-write secret)"
        } else {
            ""
        };
        let article = if role == Role::Observer { "an" } else { "a" };
        Err(format!(
            "{article} {} may not send {}{hint}",
            role.as_str(),
            msg.kind()
        ))
    }
}

fn validate(msg: &ClientMsg) -> Result<(), String> {
    if let ClientMsg::Commits {
        branch, commits, ..
    } = msg
    {
        if let Some(b) = branch {
            validate_branch_name(b).map_err(|e| e.to_string())?;
        }
        if commits.len() > MAX_COMMITS_PER_REPORT {
            return Err(format!(
                "{} commits in one report; at most {MAX_COMMITS_PER_REPORT}",
                commits.len()
            ));
        }
    }
    Ok(())
}

fn send_cmd(cmds: &Sender<Cmd>, cmd: Cmd) -> Result<(), ProtoError> {
    cmds.send(cmd)
        .map_err(|_| ProtoError::Refused("the dispatcher is shutting down".into()))
}
