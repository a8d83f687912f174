//! How a record is laid out in the log, and every format version we can read.
//!
//! Key: the sequence number, big-endian (so sled's order is log order).
//! Value: one format-version byte, then the encoded `(at_ms, Event)`.
//! An old version stays readable forever: add a decoder, never edit one.

use crate::core::{Event, Record};
use crate::encoding;

/// The version this build writes.
pub const FORMAT_VERSION: u8 = 1;

pub fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

pub fn encode_value(at_ms: u64, event: &Event) -> Result<Vec<u8>, encoding::CodecError> {
    let mut out = vec![FORMAT_VERSION];
    encoding::encode_into(&(at_ms, event), &mut out)?;
    Ok(out)
}

/// Decodes a stored value; the error says what is wrong, for the operator.
pub fn decode_value(seq: u64, value: &[u8]) -> Result<Record, String> {
    let (&version, body) = value.split_first().ok_or("empty record")?;
    match version {
        1 => {
            let (at_ms, event): (u64, Event) =
                encoding::decode(body).map_err(|e| format!("format 1 record: {e}"))?;
            Ok(Record { seq, at_ms, event })
        }
        v if v > FORMAT_VERSION => Err(format!(
            "format version {v} is newer than this build understands (up to {FORMAT_VERSION})"
        )),
        v => Err(format!("unknown format version {v}")),
    }
}
