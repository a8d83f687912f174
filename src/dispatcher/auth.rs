//! Who may connect, and what they may do.
//!
//! Without tokens every client is trusted (the dispatcher then listens only
//! on loopback unless told otherwise). Token checking is added here without
//! touching the connection code: `check` turns a hello into a [`Grant`].

use crate::proto::Hello;

/// What an authenticated client may do beyond its role's reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Tools: may submit commits.
    pub write: bool,
}

#[derive(Debug, Default)]
pub struct Auth {
    _private: (),
}

impl Auth {
    /// No tokens: every client is trusted.
    pub fn open() -> Auth {
        Auth::default()
    }

    pub fn nonce(&self) -> [u8; 16] {
        let mut n = [0u8; 16];
        let t = crate::util::now_ms().to_le_bytes();
        n[..8].copy_from_slice(&t);
        n
    }

    pub fn check(&self, _hello: &Hello, _nonce: &[u8; 16]) -> Result<Grant, String> {
        Ok(Grant { write: true })
    }
}

/// A client's proof of its token for one connection.
pub fn proof(token: &[u8], nonce: &[u8; 16], role: crate::proto::Role, name: &str) -> Vec<u8> {
    // Placeholder until tokens are enforced: binds nothing secret.
    let _ = (token, nonce, role, name);
    Vec::new()
}
