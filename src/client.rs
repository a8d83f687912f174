//! Connecting to a dispatcher: TCP, the greeting, the hello, and typed
//! request/response for observers and tools.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::core::{JobRef, LeftJob};
use crate::proto::conn::{ProtoError, Reader, Writer};
use crate::proto::{ClientMsg, ErrorCode, Hello, PROTOCOL_VERSION, Role, ServerMsg};

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
    #[error("the dispatcher refused: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The dispatcher answered a request with a message of another kind.
    #[error("unexpected answer to {request}: {got}")]
    Unexpected {
        request: &'static str,
        got: &'static str,
    },
}

impl ClientError {
    fn refused(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Refused {
            code,
            message: message.into(),
        }
    }

    /// A refusal that retrying cannot cure (a wrong token, a role's
    /// limits, an invalid name, another protocol version, a second runner
    /// with this name): the program stops and says so instead of
    /// reconnecting forever. Decided on the refusal's code alone.
    pub fn is_fatal(&self) -> bool {
        match self {
            ClientError::Refused { code, .. } => code.is_permanent(),
            _ => false,
        }
    }

    /// The refusal's code, if the dispatcher refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Exponential backoff between attempts to reach the dispatcher, shared by
/// every client loop: 50 ms doubling to 2 s, less up to a quarter of
/// jitter so that many clients refused together do not come back together.
/// It starts over only after a connection lasted a while
/// ([`Backoff::session_ended`]): a dispatcher that accepts and then refuses
/// at once must not be hammered. Milliseconds, no clock: the runner's
/// state machine uses it on virtual time too.
#[derive(Clone, Debug)]
pub struct Backoff {
    next_ms: u64,
    first_ms: u64,
    max_ms: u64,
    seed: u64,
}

impl Backoff {
    pub const FIRST_MS: u64 = 50;
    pub const MAX_MS: u64 = 2_000;
    /// A connection that lasted this long earns a fresh start.
    pub const HEALTHY_MS: u64 = 5_000;

    /// With jitter drawn from `seed` (any value).
    pub fn new(seed: u64) -> Backoff {
        Backoff::between(Self::FIRST_MS, Self::MAX_MS, seed)
    }

    /// From `first_ms` doubling to `max_ms` (the notifier waits longer
    /// between attempts on a sink that is down than a client on the
    /// dispatcher).
    pub fn between(first_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        Backoff {
            next_ms: first_ms,
            first_ms,
            max_ms: max_ms.max(first_ms),
            seed: seed | 1,
        }
    }

    /// Starts over from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next_ms = self.first_ms;
    }

    /// With jitter from the operating system's random source.
    pub fn random() -> Backoff {
        Backoff::new(random_seed())
    }

    /// The pause before the next attempt; the step after it doubles.
    pub fn next_delay_ms(&mut self) -> u64 {
        // xorshift: jitter only, no need for quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let step = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        step - self.seed % (step / 4).max(1)
    }

    /// As [`Backoff::next_delay_ms`], as a `Duration`.
    pub fn next_delay(&mut self) -> Duration {
        Duration::from_millis(self.next_delay_ms())
    }

    /// A connection ended after `lasted_ms`: only a long one resets.
    pub fn session_ended(&mut self, lasted_ms: u64) {
        if lasted_ms >= Self::HEALTHY_MS {
            self.reset();
        }
    }
}

/// 64 random bits for jitter (a fixed value if the system has none).
pub fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    u64::from_le_bytes(seed)
}

/// What the client says about itself in its hello.
#[derive(Clone, Debug)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    pub token: Option<Vec<u8>>,
    /// Runners: the repositories they take jobs of (`Serves::Default` for
    /// every other role).
    pub serves: crate::proto::Serves,
}

pub struct Client {
    pub reader: Reader<OwnedReadHalf, ServerMsg>,
    pub writer: Writer<OwnedWriteHalf, ClientMsg>,
    pub welcome_keep: Option<JobRef>,
    /// How often the dispatcher wants this runner to beat while idle.
    pub idle_heartbeat_ms: u64,
}

impl Client {
    /// Connects and says hello. Runners pass the job they hold and the one
    /// they let go of while away.
    pub async fn connect(
        addr: &str,
        id: &Identity,
        holding: Option<JobRef>,
        left: Option<LeftJob>,
    ) -> Result<Client, ClientError> {
        let fut = Self::connect_inner(addr, id, holding, left);
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
        left: Option<LeftJob>,
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
            Ok(ServerMsg::Error { code, message, .. }) => {
                return Err(ClientError::refused(code, message));
            }
            Ok(_) => {
                return Err(ClientError::refused(
                    ErrorCode::Version,
                    "the dispatcher did not greet first; is this a ci-dispatcher?",
                ));
            }
            Err(ProtoError::Codec(_)) => {
                return Err(ClientError::refused(
                    ErrorCode::Version,
                    format!(
                        "the peer at {addr} does not speak this protocol (version {PROTOCOL_VERSION}); is it a ci-dispatcher of the same release?"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if greeting.version != PROTOCOL_VERSION {
            return Err(ClientError::refused(
                ErrorCode::Version,
                format!(
                    "protocol version mismatch: the dispatcher speaks version {}, this program version {PROTOCOL_VERSION}; upgrade the older side",
                    greeting.version
                ),
            ));
        }
        let proof = id
            .token
            .as_ref()
            .map(|t| crate::proto::auth::proof(t, &greeting.nonce, id.role, &id.name));
        writer
            .send(&ClientMsg::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: id.role,
                name: id.name.clone(),
                proof,
                holding,
                left,
                serves: id.serves.clone(),
            }))
            .await?;
        match reader.expect().await? {
            ServerMsg::Welcome {
                keep,
                idle_heartbeat_ms,
            } => Ok(Client {
                reader,
                writer,
                welcome_keep: keep,
                idle_heartbeat_ms,
            }),
            ServerMsg::Error { code, message, .. } => Err(ClientError::refused(code, message)),
            other => Err(ClientError::refused(
                ErrorCode::Invalid,
                format!("unexpected answer to hello: {}", other.kind()),
            )),
        }
    }

    /// The branch tips of one of the dispatcher's repositories (`None`:
    /// the default one), every page of them.
    pub async fn tips(
        &mut self,
        repository: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, crate::core::CommitId>, ClientError> {
        let mut all = std::collections::BTreeMap::new();
        let mut after = None;
        loop {
            let repository = repository.map(str::to_string);
            match self
                .request(&ClientMsg::GetTips { repository, after })
                .await?
            {
                ServerMsg::Tips { tips, next } => {
                    all.extend(tips);
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(all),
                    }
                }
                other => {
                    return Err(ClientError::Unexpected {
                        request: "get_tips",
                        got: other.kind(),
                    });
                }
            }
        }
    }

    /// Sends one request and waits for its answer; error frames become errors.
    pub async fn request(&mut self, msg: &ClientMsg) -> Result<ServerMsg, ClientError> {
        self.writer.send(msg).await?;
        match self.reader.expect().await? {
            ServerMsg::Error { code, message, .. } => Err(ClientError::refused(code, message)),
            other => Ok(other),
        }
    }
}
