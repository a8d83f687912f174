//! Identifiers that cross every boundary: commits, jobs, runners.
//!
//! They are validated at construction so that nothing past the edge of the
//! program ever holds an ill-formed id (a forged `../../x` never becomes a
//! `CommitId`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A full git object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
///
/// Stored inline (no heap) because the dispatcher keeps one per job for the
/// whole history.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId {
    len: u8,
    bytes: [u8; 32],
}

/// Why a string is not a commit id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a commit id: {rule}")]
pub struct BadCommitId {
    pub value: String,
    pub rule: &'static str,
}

impl CommitId {
    pub const RULE: &'static str =
        "a full object id is 40 (SHA-1) or 64 (SHA-256) hexadecimal digits";

    pub fn parse(s: &str) -> Result<CommitId, BadCommitId> {
        let bad = || BadCommitId {
            value: s.chars().take(80).collect(),
            rule: Self::RULE,
        };
        if s.len() != 40 && s.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        let raw = s.as_bytes();
        for i in 0..s.len() / 2 {
            let hi = hex_val(raw[2 * i]).ok_or_else(bad)?;
            let lo = hex_val(raw[2 * i + 1]).ok_or_else(bad)?;
            bytes[i] = (hi << 4) | lo;
        }
        Ok(CommitId {
            len: (s.len() / 2) as u8,
            bytes,
        })
    }

    pub fn from_bytes(raw: &[u8]) -> Option<CommitId> {
        if raw.len() != 20 && raw.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 32];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(CommitId {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The all-zero id, which git hooks use for "no commit" (a branch
    /// created or deleted); never a real commit.
    pub fn is_zero(&self) -> bool {
        self.as_bytes().iter().all(|b| *b == 0)
    }

    /// Whether the id's hex digits start with `prefix` (lowercase hex).
    pub fn starts_with_hex(&self, prefix: &str) -> bool {
        let bytes = self.as_bytes();
        prefix.len() <= 2 * bytes.len()
            && prefix.bytes().enumerate().all(|(i, c)| {
                let b = bytes[i / 2];
                let nibble = if i % 2 == 0 { b >> 4 } else { b & 0xf };
                hex_val(c) == Some(nibble)
            })
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitId({self})")
    }
}

impl FromStr for CommitId {
    type Err = BadCommitId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommitId::parse(s)
    }
}

impl Serialize for CommitId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(self.as_bytes())
        }
    }
}

impl<'de> Deserialize<'de> for CommitId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            CommitId::parse(&s).map_err(D::Error::custom)
        } else {
            // No allocation: snapshots hold hundreds of thousands of these.
            d.deserialize_bytes(RawCommitId)
        }
    }
}

/// Reads a commit id's raw bytes straight into a `CommitId`.
struct RawCommitId;

impl<'de> serde::de::Visitor<'de> for RawCommitId {
    type Value = CommitId;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a commit id of 20 or 32 bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<CommitId, E> {
        CommitId::from_bytes(v).ok_or_else(|| E::custom("commit id must be 20 or 32 bytes"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<CommitId, A::Error> {
        let mut buf = [0u8; 32];
        let mut n = 0;
        while let Some(b) = seq.next_element::<u8>()? {
            if n == buf.len() {
                return Err(serde::de::Error::custom("commit id too long"));
            }
            buf[n] = b;
            n += 1;
        }
        self.visit_bytes(&buf[..n])
    }
}

/// Jobs are numbered from 1 in the order their commits were accepted; one job per commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One hand-out of a job to a runner. Fencing compares whole `JobRef`s:
/// anything about an older attempt is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobRef {
    pub job: JobId,
    pub attempt: u32,
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} attempt {}", self.job, self.attempt)
    }
}

/// A runner's self-chosen name; unique among connected runners.
pub type RunnerName = String;

/// Why a runner or branch name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what}: {rule}")]
pub struct BadName {
    pub value: String,
    pub what: &'static str,
    pub rule: &'static str,
}

/// Runner names appear in logs and tables: printable, short, no spaces.
pub fn validate_runner_name(name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(BadName {
            value: name.chars().take(80).collect(),
            what: "runner name",
            rule: "1 to 64 characters from A-Z a-z 0-9 - _ . @",
        })
    }
}

/// Longest repository name.
pub const MAX_REPOSITORY_NAME_BYTES: usize = 100;

/// A repository's name on a dispatcher serving several (`--repository
/// NAME=URL`): 1 to 100 bytes of `A-Z a-z 0-9 . _ / -`, not beginning with
/// `-`, `.` or `/`, without `..`. It becomes a directory under a runner's
/// work dir, so it can never climb out of it.
pub fn validate_repository_name(name: &str) -> Result<(), BadName> {
    let bad = |rule: &'static str| BadName {
        value: name.chars().take(120).collect(),
        what: "repository name",
        rule,
    };
    if name.is_empty() || name.len() > MAX_REPOSITORY_NAME_BYTES {
        return Err(bad("must be 1 to 100 bytes long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    {
        return Err(bad("may only contain A-Z a-z 0-9 . _ / -"));
    }
    if name.starts_with(['-', '.', '/']) {
        return Err(bad("cannot begin with -, . or /"));
    }
    if name.contains("..") {
        return Err(bad("cannot contain .."));
    }
    Ok(())
}

/// git's ref-name rules (git-check-ref-format) for a branch's short name.
pub fn validate_branch_name(name: &str) -> Result<(), BadName> {
    let bad = |rule: &'static str| BadName {
        value: name.chars().take(120).collect(),
        what: "branch name",
        rule,
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad("must be 1 to 255 bytes long"));
    }
    if name == "@" {
        return Err(bad("cannot be the single character @"));
    }
    if name == "HEAD" {
        return Err(bad("cannot be HEAD (give the branch HEAD points at)"));
    }
    if name.starts_with("refs/") {
        return Err(bad(
            "is a short name: refs/heads/main is given as main (a hook strips refs/heads/)",
        ));
    }
    if name.starts_with('-') {
        return Err(bad("cannot begin with -"));
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(bad("cannot begin or end with / or contain //"));
    }
    if name.ends_with('.') || name.contains("..") || name.contains("@{") {
        return Err(bad("cannot end with . or contain .. or @{"));
    }
    for comp in name.split('/') {
        if comp.starts_with('.') || comp.ends_with(".lock") {
            return Err(bad("no component may begin with . or end with .lock"));
        }
    }
    if name
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b))
    {
        return Err(bad(
            "cannot contain control characters, space, ~ ^ : ? * [ or \\",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_round_trip_and_reject_garbage() {
        let s = "0123456789abcdef0123456789abcdef01234567";
        let c = CommitId::parse(s).unwrap();
        assert_eq!(c.to_string(), s);
        assert_eq!(CommitId::parse(&s.to_uppercase()).unwrap(), c);
        assert!(CommitId::parse("../../x").is_err());
        assert!(CommitId::parse(&s[..39]).is_err());
        assert!(CommitId::parse(&format!("{}g", &s[..39])).is_err());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, format!("\"{s}\""));
    }

    #[test]
    fn repository_names_are_plain_paths() {
        for ok in ["app", "team/lib", "a.b-c_d", "X9", &"r".repeat(100)] {
            assert!(validate_repository_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "/x",
            "a/../b",
            "a..b",
            "a b",
            "a:b",
            "é",
            &"r".repeat(101),
        ] {
            assert!(validate_repository_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_names_follow_git_rules() {
        for ok in ["main", "feature/x", "release-1.0", "a.b"] {
            assert!(validate_branch_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a..b",
            "a/",
            "/a",
            "a b",
            "x.lock",
            ".hidden",
            "a@{1}",
            "a:b",
            "HEAD",
            "refs/heads/main",
        ] {
            assert!(validate_branch_name(bad).is_err(), "{bad}");
        }
    }
}
