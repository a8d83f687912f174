//! Framed, typed connections: length-delimited frames carrying `encoding`
//! payloads, with the frame size checked before anything is allocated.

use std::marker::PhantomData;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::{ErrorCode, MAX_FRAME_BYTES};
use crate::encoding::{self, CodecError};

/// A connection-level failure. Any of these closes that connection only.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
    #[error("the peer closed the connection")]
    Closed,
    /// Refused with a code the peer decides on, and a message for people.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl ProtoError {
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError::Refused {
            code,
            message: message.into(),
        }
    }

    /// The code a peer is told when this ends its connection.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Refused { code, .. } => *code,
            ProtoError::Timeout(_) => ErrorCode::Timeout,
            ProtoError::Io(_) | ProtoError::Closed => ErrorCode::Unavailable,
            ProtoError::Codec(_) | ProtoError::Unexpected(_) => ErrorCode::Invalid,
        }
    }
}

// A frame may never claim more memory in decoding than it may be long.
const _: () = assert!(encoding::WIRE_DECODE_LIMIT == MAX_FRAME_BYTES);

pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// Reading half: yields decoded messages of type `T`.
pub struct Reader<R, T> {
    inner: FramedRead<R, LengthDelimitedCodec>,
    _t: PhantomData<fn() -> T>,
}

impl<R: AsyncRead + Unpin, T: DeserializeOwned> Reader<R, T> {
    pub fn new(io: R) -> Self {
        Reader {
            inner: FramedRead::new(io, codec()),
            _t: PhantomData,
        }
    }

    /// The next message; `Ok(None)` on a clean end of stream.
    pub async fn recv(&mut self) -> Result<Option<T>, ProtoError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(ProtoError::Io(e)),
            Some(Ok(frame)) => Ok(Some(encoding::decode_wire(&frame)?)),
        }
    }

    /// The next message, where end of stream is an error.
    pub async fn expect(&mut self) -> Result<T, ProtoError> {
        self.recv().await?.ok_or(ProtoError::Closed)
    }
}

/// Writing half: encodes messages of type `T`.
pub struct Writer<W, T> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
    _t: PhantomData<fn(T)>,
}

impl<W: AsyncWrite + Unpin, T: Serialize> Writer<W, T> {
    pub fn new(io: W) -> Self {
        Writer {
            inner: FramedWrite::new(io, codec()),
            _t: PhantomData,
        }
    }

    pub async fn send(&mut self, msg: &T) -> Result<(), ProtoError> {
        let bytes = encoding::encode(msg)?;
        self.inner.send(Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Queues a message without flushing, for batching several frames into
    /// one write; call `flush` after.
    pub async fn feed(&mut self, msg: &T) -> Result<(), ProtoError> {
        let bytes = encoding::encode(msg)?;
        self.inner.feed(Bytes::from(bytes)).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ProtoError> {
        SinkExt::<Bytes>::flush(&mut self.inner).await?;
        Ok(())
    }
}
