//! Connecting to a dispatcher: TCP, the greeting, the hello, and typed
//! request/response for observers and tools.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::core::JobRef;
use crate::proto::conn::{ProtoError, Reader, Writer};
use crate::proto::{ClientMsg, Hello, PROTOCOL_VERSION, Role, ServerMsg};

/// How long connecting and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not `#[source]`: the message already says it, once.
    #[error(
        "cannot reach the dispatcher at {addr}: {err}; check that ci-dispatcher runs there and that --dispatcher names its address"
    )]
    Connect { addr: String, err: std::io::Error },
    #[error("the dispatcher at {addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("the dispatcher refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Proto(#[from] ProtoError),
}

impl ClientError {
    /// A refusal that retrying cannot cure (a wrong token, a role's
    /// limits, an invalid name, another protocol version, a second runner
    /// with this name): the program stops and says so instead of
    /// reconnecting forever.
    pub fn is_fatal(&self) -> bool {
        const FATAL: [&str; 5] = ["token", "may not", "not a valid", "version", "took over"];
        match self {
            ClientError::Refused(m) => FATAL.iter().any(|f| m.contains(f)),
            _ => false,
        }
    }
}

/// What the client says about itself in its hello.
#[derive(Clone, Debug)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    pub token: Option<Vec<u8>>,
}

pub struct Client {
    pub reader: Reader<OwnedReadHalf, ServerMsg>,
    pub writer: Writer<OwnedWriteHalf, ClientMsg>,
    pub welcome_keep: Option<JobRef>,
}

impl Client {
    /// Connects and says hello. Runners pass the jobs they hold.
    pub async fn connect(
        addr: &str,
        id: &Identity,
        holding: Option<JobRef>,
        crashed: Option<JobRef>,
    ) -> Result<Client, ClientError> {
        let fut = Self::connect_inner(addr, id, holding, crashed);
        match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: addr.to_string(),
                secs: CONNECT_TIMEOUT.as_secs(),
            }),
        }
    }

    async fn connect_inner(
        addr: &str,
        id: &Identity,
        holding: Option<JobRef>,
        crashed: Option<JobRef>,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| ClientError::Connect {
                addr: addr.to_string(),
                err,
            })?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut reader = Reader::new(r);
        let mut writer = Writer::new(w);
        let greeting = match reader.expect().await {
            Ok(ServerMsg::Greeting(g)) => g,
            Ok(ServerMsg::Error { message, .. }) => return Err(ClientError::Refused(message)),
            Ok(_) => {
                return Err(ClientError::Refused(
                    "the dispatcher did not greet first; is this a ci-dispatcher?".into(),
                ));
            }
            Err(ProtoError::Codec(_)) => {
                return Err(ClientError::Refused(format!(
                    "the peer at {addr} does not speak this protocol (version {PROTOCOL_VERSION}); is it a ci-dispatcher of the same release?"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if greeting.version != PROTOCOL_VERSION {
            return Err(ClientError::Refused(format!(
                "protocol version mismatch: the dispatcher speaks version {}, this program version {PROTOCOL_VERSION}; upgrade the older side",
                greeting.version
            )));
        }
        let proof = id
            .token
            .as_ref()
            .map(|t| crate::dispatcher::auth::proof(t, &greeting.nonce, id.role, &id.name));
        writer
            .send(&ClientMsg::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: id.role,
                name: id.name.clone(),
                proof,
                holding,
                crashed,
            }))
            .await?;
        match reader.expect().await? {
            ServerMsg::Welcome { keep } => Ok(Client {
                reader,
                writer,
                welcome_keep: keep,
            }),
            ServerMsg::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Refused(format!(
                "unexpected answer to hello: {other:?}"
            ))),
        }
    }

    /// Sends one request and waits for its answer; error frames become errors.
    pub async fn request(&mut self, msg: &ClientMsg) -> Result<ServerMsg, ClientError> {
        self.writer.send(msg).await?;
        match self.reader.expect().await? {
            ServerMsg::Error { message, .. } => Err(ClientError::Refused(message)),
            other => Ok(other),
        }
    }
}
