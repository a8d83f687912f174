//! What the dispatcher keeps for people watching, outside the log: the
//! output of each running attempt as it streams in, who follows which
//! commit's output, and who watches which commits' results. Sans-IO, owned
//! by the shell; nothing here is durable or decided on.
//!
//! Bounded: one buffer per running attempt, each the last
//! [`MAX_OUTPUT_BYTES`]; a connection follows or watches at most
//! [`MAX_SUBSCRIPTIONS`] things.

use std::collections::{HashMap, VecDeque};

use super::shell::ConnId;
use crate::core::{CommitId, JobId, JobRef};
use crate::proto::MAX_OUTPUT_BYTES;

/// Most follows and watches one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = crate::proto::MAX_WATCHED + 16;

/// One running attempt's output: the bytes from `start` of its stream.
#[derive(Debug, Default)]
struct Buffer {
    start: u64,
    bytes: VecDeque<u8>,
}

impl Buffer {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// What a connection subscribed to, so its end can undo it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    Follow(JobId),
    Watch(JobId),
    Unseen(CommitId),
}

/// The subscription was refused: this connection holds too many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooMany;

#[derive(Debug, Default)]
pub struct Live {
    buffers: HashMap<JobRef, Buffer>,
    followers: HashMap<JobId, Vec<ConnId>>,
    watchers: HashMap<JobId, Vec<ConnId>>,
    unseen: HashMap<CommitId, Vec<ConnId>>,
    subs: HashMap<ConnId, Vec<Sub>>,
}

impl Live {
    /// Takes a runner's chunk of `job`'s output at `offset`; returns the
    /// bytes that are new, with their offset (none if all were had
    /// already). A chunk past the end (bytes lost in between, say across a
    /// reconnection to a restarted dispatcher) starts the buffer over there.
    pub fn chunk(&mut self, job: JobRef, offset: u64, data: &[u8]) -> Option<(u64, Vec<u8>)> {
        let b = self.buffers.entry(job).or_default();
        if b.bytes.is_empty() && b.start == 0 {
            b.start = offset;
        }
        let end = b.end();
        if offset > end {
            b.bytes.clear();
            b.start = offset;
        }
        let end = b.end();
        let skip = end.saturating_sub(offset) as usize;
        if skip >= data.len() {
            return None;
        }
        let new = &data[skip..];
        b.bytes.extend(new);
        let over = b.bytes.len().saturating_sub(MAX_OUTPUT_BYTES);
        if over > 0 {
            b.bytes.drain(..over);
            b.start += over as u64;
        }
        Some((end, new.to_vec()))
    }

    /// Where the attempt's stream goes on from (what the dispatcher has).
    pub fn end_of(&self, job: JobRef) -> u64 {
        self.buffers.get(&job).map_or(0, Buffer::end)
    }

    /// What there is of the attempt's output, with its offset.
    pub fn buffered(&self, job: JobRef) -> Option<(u64, Vec<u8>)> {
        let b = self.buffers.get(&job)?;
        Some((b.start, b.bytes.iter().copied().collect()))
    }

    /// The attempt ended (a result, a loss, a cancel): its buffer goes.
    pub fn attempt_ended(&mut self, job: JobRef) {
        self.buffers.remove(&job);
    }

    fn subscribe(&mut self, conn: ConnId, sub: Sub) -> Result<bool, TooMany> {
        let subs = self.subs.entry(conn).or_default();
        if subs.contains(&sub) {
            return Ok(false);
        }
        if subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(TooMany);
        }
        subs.push(sub);
        Ok(true)
    }

    pub fn follow(&mut self, conn: ConnId, job: JobId) -> Result<(), TooMany> {
        if self.subscribe(conn, Sub::Follow(job))? {
            self.followers.entry(job).or_default().push(conn);
        }
        Ok(())
    }

    pub fn followers(&self, job: JobId) -> &[ConnId] {
        self.followers.get(&job).map_or(&[], Vec::as_slice)
    }

    /// The job ended: its followers are told by the caller and forgotten.
    pub fn end_follows(&mut self, job: JobId) -> Vec<ConnId> {
        let conns = self.followers.remove(&job).unwrap_or_default();
        for c in &conns {
            if let Some(subs) = self.subs.get_mut(c) {
                subs.retain(|s| *s != Sub::Follow(job));
            }
        }
        conns
    }

    pub fn watch(&mut self, conn: ConnId, job: JobId) -> Result<(), TooMany> {
        if self.subscribe(conn, Sub::Watch(job))? {
            self.watchers.entry(job).or_default().push(conn);
        }
        Ok(())
    }

    /// Watches a commit the dispatcher has not seen yet.
    pub fn watch_unseen(&mut self, conn: ConnId, commit: CommitId) -> Result<(), TooMany> {
        if self.subscribe(conn, Sub::Unseen(commit))? {
            self.unseen.entry(commit).or_default().push(conn);
        }
        Ok(())
    }

    pub fn watchers(&self, job: JobId) -> &[ConnId] {
        self.watchers.get(&job).map_or(&[], Vec::as_slice)
    }

    /// Whether anybody watches or follows anything (a fast path).
    pub fn is_idle(&self) -> bool {
        self.watchers.is_empty() && self.unseen.is_empty() && self.followers.is_empty()
    }

    /// The commit was just seen as `job`: who waited for it now watches
    /// the job.
    pub fn seen(&mut self, commit: CommitId, job: JobId) -> Vec<ConnId> {
        let Some(conns) = self.unseen.remove(&commit) else {
            return Vec::new();
        };
        for c in &conns {
            if let Some(subs) = self.subs.get_mut(c) {
                for s in subs.iter_mut() {
                    if *s == Sub::Unseen(commit) {
                        *s = Sub::Watch(job);
                    }
                }
            }
            self.watchers.entry(job).or_default().push(*c);
        }
        conns
    }

    /// The connection ended: everything it subscribed to is undone.
    pub fn closed(&mut self, conn: ConnId) {
        let Some(subs) = self.subs.remove(&conn) else {
            return;
        };
        for s in subs {
            match s {
                Sub::Follow(job) => remove_from(&mut self.followers, job, conn),
                Sub::Watch(job) => remove_from(&mut self.watchers, job, conn),
                Sub::Unseen(commit) => remove_from(&mut self.unseen, commit, conn),
            }
        }
    }
}

/// Takes `conn` off `key`'s list, and the list away when it is empty.
fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<ConnId>>, key: K, conn: ConnId) {
    if let Some(v) = map.get_mut(&key) {
        v.retain(|c| *c != conn);
        if v.is_empty() {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jr(job: u64, attempt: u32) -> JobRef {
        JobRef {
            job: JobId(job),
            attempt,
        }
    }

    /// Chunks resent after a reconnection are not doubled; a chunk past
    /// the end starts over there; the buffer keeps only the tail.
    #[test]
    fn chunks_are_taken_once_and_in_order() {
        let mut l = Live::default();
        let j = jr(1, 1);
        assert_eq!(l.chunk(j, 0, b"hello "), Some((0, b"hello ".to_vec())));
        assert_eq!(l.chunk(j, 0, b"hello "), None);
        assert_eq!(l.chunk(j, 3, b"lo world"), Some((6, b"world".to_vec())));
        assert_eq!(l.end_of(j), 11);
        assert_eq!(l.buffered(j), Some((0, b"hello world".to_vec())));
        assert_eq!(l.chunk(j, 20, b"later"), Some((20, b"later".to_vec())));
        assert_eq!(l.buffered(j), Some((20, b"later".to_vec())));
        let big = vec![b'x'; MAX_OUTPUT_BYTES + 10];
        l.chunk(j, 25, &big);
        let (start, bytes) = l.buffered(j).unwrap();
        assert_eq!(bytes.len(), MAX_OUTPUT_BYTES);
        assert_eq!(start + bytes.len() as u64, l.end_of(j));
        l.attempt_ended(j);
        assert_eq!(l.end_of(j), 0);
    }

    /// Follows and watches are undone when the connection ends, and are
    /// bounded per connection.
    #[test]
    fn subscriptions_end_with_their_connection_and_are_bounded() {
        let mut l = Live::default();
        l.follow(1, JobId(1)).unwrap();
        l.follow(2, JobId(1)).unwrap();
        l.watch(1, JobId(2)).unwrap();
        let c = CommitId::from_bytes(&[7; 20]).unwrap();
        l.watch_unseen(1, c).unwrap();
        assert_eq!(l.followers(JobId(1)), &[1, 2]);
        assert_eq!(l.seen(c, JobId(3)), vec![1]);
        assert_eq!(l.watchers(JobId(3)), &[1]);
        l.closed(1);
        assert_eq!(l.followers(JobId(1)), &[2]);
        assert!(l.watchers(JobId(2)).is_empty() && l.watchers(JobId(3)).is_empty());
        assert_eq!(l.end_follows(JobId(1)), vec![2]);
        assert!(l.is_idle());
        for j in 0..MAX_SUBSCRIPTIONS as u64 {
            l.watch(9, JobId(j)).unwrap();
        }
        assert_eq!(l.watch(9, JobId(u64::MAX)), Err(TooMany));
        l.closed(9);
        assert!(l.is_idle());
    }
}
