//! How a record is laid out in the log, and every format version we can read.
//!
//! Key: the sequence number, big-endian (so sled's order is log order).
//! Value: one format-version byte, then
//! - version 1: the encoded `(at_ms, Event)`, one event per key;
//! - version 2: the encoded `(at_ms, Vec<Event>)`, one appended batch per
//!   key, keyed by the sequence number of its first event (the events
//!   follow on consecutively). One sled insert per group commit instead of
//!   one per event: the per-key cost of sled dominated appends and replay.
//!
//! An old version stays readable forever: add a decoder, never edit one.

use crate::core::{Event, Record};
use crate::encoding;

/// The version this build writes.
pub const FORMAT_VERSION: u8 = 2;

/// The version byte of snapshots, independent of the record format.
/// 1 and 2 were the serde encoding of `State`; 3 is the hand-written layout
/// of `core::state::snapshot`; 4 adds when a running job was handed out;
/// 5 adds the notifications owed and each branch's newest outcome; 6
/// holds only the jobs in memory (the rest are in the history indexes); 7
/// ends with the retention counters (6 is still read: it was written by a
/// build that never pruned, so its counters are zero).
/// A snapshot is a cache of the fold: one in another version is not used
/// (the state is rebuilt from the log) and the next snapshot is written in
/// this one.
pub const SNAPSHOT_VERSION: u8 = 7;

/// A stored snapshot: the version byte, then the state's own layout.
pub fn encode_snapshot(state: &crate::core::State) -> Vec<u8> {
    let mut value = vec![SNAPSHOT_VERSION];
    state.write_snapshot(&mut value);
    value
}

/// The state a stored snapshot at `seq` holds: `Ok(None)` for another
/// version (a cache miss, never an error), an error saying what is wrong
/// for a damaged one.
pub fn decode_snapshot(seq: u64, value: &[u8]) -> Result<Option<crate::core::State>, String> {
    let (&version, body) = value.split_first().ok_or("empty")?;
    let state = match version {
        SNAPSHOT_VERSION => crate::core::State::from_snapshot(body),
        6 => crate::core::State::from_snapshot_before_retention(body),
        _ => return Ok(None),
    }
    .map_err(|e| e.to_string())?;
    if state.last_seq() != seq {
        return Err(format!(
            "it is stored as covering event {seq} but holds the state at event {}",
            state.last_seq()
        ));
    }
    Ok(Some(state))
}

/// Most events stored under one key; bigger appends take several keys.
pub const MAX_BATCH_EVENTS: usize = 10_000;

pub fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// A version 1 value: one event. Still readable; no longer written.
pub fn encode_value(at_ms: u64, event: &Event) -> Result<Vec<u8>, encoding::CodecError> {
    let mut out = vec![1];
    encoding::encode_into(&(at_ms, event), &mut out)?;
    Ok(out)
}

/// A version 2 value: consecutive events appended together at `at_ms`.
pub fn encode_batch(at_ms: u64, events: &[Event]) -> Result<Vec<u8>, encoding::CodecError> {
    let mut out = vec![2];
    encoding::encode_into(&(at_ms, events), &mut out)?;
    Ok(out)
}

/// Decodes a stored value whose key is `seq` into its records (one for
/// version 1, the batch for version 2); the error says what is wrong, for
/// the operator.
pub fn decode_value(seq: u64, value: &[u8]) -> Result<Vec<Record>, String> {
    let (&version, body) = value.split_first().ok_or("empty record")?;
    match version {
        1 => {
            let (at_ms, event): (u64, Event) =
                encoding::decode(body).map_err(|e| format!("format 1 record: {e}"))?;
            Ok(vec![Record { seq, at_ms, event }])
        }
        2 => {
            let (at_ms, events): (u64, Vec<Event>) =
                encoding::decode(body).map_err(|e| format!("format 2 record: {e}"))?;
            if events.is_empty() {
                return Err("format 2 record: an empty batch".into());
            }
            Ok(events
                .into_iter()
                .zip(seq..)
                .map(|(event, seq)| Record { seq, at_ms, event })
                .collect())
        }
        v if v > FORMAT_VERSION => Err(format!(
            "format version {v} is newer than this build understands (up to {FORMAT_VERSION})"
        )),
        v => Err(format!("unknown format version {v}")),
    }
}
