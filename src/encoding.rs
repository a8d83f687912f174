//! The one place that knows the binary encoding (bincode 2 through serde).
//!
//! Both the wire and the log go through here, so swapping the codec is a
//! change to this file only. Every decode has a size limit, so a small input
//! can never ask for a huge allocation.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Upper bound on what one decode may allocate, in bytes.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Upper bound on what decoding one wire frame may allocate: the largest
/// frame (`proto::MAX_FRAME_BYTES`), so a frame can never claim more memory
/// than a frame may be long.
pub const WIRE_DECODE_LIMIT: usize = 8 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

fn wire_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<WIRE_DECODE_LIMIT>()
}

/// The value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot decode: {0} trailing bytes after the value")]
    Trailing(usize),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Appends the encoding of `value` to `out` (no intermediate buffer).
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())?;
    Ok(())
}

/// How many bytes `value` encodes to, without allocating.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config())?;
    Ok(size.bytes_written)
}

/// Decodes exactly one value; trailing bytes are an error (a damaged record
/// or frame, not something to ignore).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, config())
}

/// As [`decode`], with the tighter limit for one network frame.
pub fn decode_wire<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, wire_config())
}

fn decode_with<T: DeserializeOwned>(
    bytes: &[u8],
    config: impl bincode::config::Config,
) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}
