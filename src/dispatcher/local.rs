//! In-process clients of the log writer. The web server's requests and
//! live streams go to the same shell as TCP clients do, as a tool with
//! the grant its HTTP credentials earned: one code path, one set of rules,
//! no lock on the state, and nothing a page shows that `ci-tools` could
//! not. Each [`LocalConn`] is a connection without a socket: bounded like
//! one (a reader that falls [`OUTBOX`] messages behind is cut off), and
//! closed when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use super::actor::{Cmd, OUTBOX, Outbox};
use super::shell::{ConnId, ShellInput};
use crate::proto::auth::Grant;
use crate::proto::{ClientMsg, Role, ServerMsg};

/// The dispatcher stopped (or this connection was cut off for not
/// reading); nothing more will come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the dispatcher is stopping")]
pub struct Gone;

/// Opens in-process connections; cheap to clone.
#[derive(Clone)]
pub struct Local {
    cmds: flume::Sender<Cmd>,
    ids: Arc<AtomicU64>,
}

impl Local {
    pub(crate) fn new(cmds: flume::Sender<Cmd>, ids: Arc<AtomicU64>) -> Local {
        Local { cmds, ids }
    }

    /// A connection of a tool with `grant`.
    pub async fn open(&self, grant: Grant) -> Result<LocalConn, Gone> {
        self.open_client(Role::Tool, grant).await
    }

    /// A connection of an observer: it may report commits and read, and
    /// nothing else (a forge's webhook delivery, proven by its signature).
    pub async fn open_observer(&self) -> Result<LocalConn, Gone> {
        self.open_client(Role::Observer, Grant { write: false })
            .await
    }

    async fn open_client(&self, role: Role, grant: Grant) -> Result<LocalConn, Gone> {
        let conn = self.ids.fetch_add(1, Ordering::Relaxed);
        let hello = ShellInput::ClientHello { conn, role, grant };
        self.open_as(conn, hello).await
    }

    /// The notifier's connection: it is sent what is owed and reports
    /// what it delivered (`notify::run`).
    pub async fn open_notifier(&self) -> Result<LocalConn, Gone> {
        let conn = self.ids.fetch_add(1, Ordering::Relaxed);
        self.open_as(conn, ShellInput::NotifierHello { conn }).await
    }

    async fn open_as(&self, conn: ConnId, hello: ShellInput) -> Result<LocalConn, Gone> {
        let (tx, rx) = tokio::sync::mpsc::channel(OUTBOX);
        let kill = CancellationToken::new();
        let outbox = Outbox {
            tx,
            kill: kill.clone(),
        };
        self.cmds
            .send_async(Cmd::Open {
                conn,
                outbox,
                hello,
            })
            .await
            .map_err(|_| Gone)?;
        Ok(LocalConn {
            conn,
            cmds: self.cmds.clone(),
            rx,
            kill,
        })
    }
}

/// One in-process connection; closed (and its subscriptions ended) when
/// dropped.
pub struct LocalConn {
    conn: ConnId,
    cmds: flume::Sender<Cmd>,
    rx: tokio::sync::mpsc::Receiver<ServerMsg>,
    kill: CancellationToken,
}

impl LocalConn {
    pub async fn send(&self, msg: ClientMsg) -> Result<(), Gone> {
        let input = ShellInput::Frame {
            conn: self.conn,
            msg,
        };
        self.cmds
            .send_async(Cmd::Input(input))
            .await
            .map_err(|_| Gone)
    }

    /// The next message; `None` when the dispatcher stops or this
    /// connection fell too far behind.
    pub async fn recv(&mut self) -> Option<ServerMsg> {
        tokio::select! {
            biased;
            m = self.rx.recv() => m,
            _ = self.kill.cancelled() => None,
        }
    }

    /// Sends a request and returns its answer (the next message: use a
    /// connection for requests, or for one subscription, not both).
    pub async fn request(&mut self, msg: ClientMsg) -> Result<ServerMsg, Gone> {
        self.send(msg).await?;
        self.recv().await.ok_or(Gone)
    }
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        let closed = Cmd::Input(ShellInput::Closed { conn: self.conn });
        if let Err(flume::TrySendError::Full(closed)) = self.cmds.try_send(closed) {
            // The writer is busy: say it on the way, or the shell would
            // keep this connection's subscriptions.
            let cmds = self.cmds.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = cmds.send_async(closed).await;
                });
            }
        }
    }
}
