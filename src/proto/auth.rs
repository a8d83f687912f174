//! Who may connect, and what they may do.
//!
//! Each role (runner, observer, tool, and tool with write access) has its own
//! shared secret. The secret never crosses the wire: the dispatcher's
//! greeting carries a fresh random 16-byte nonce, and the client's hello
//! carries `proof = HMAC-SHA256(secret, nonce || role || name)`, which the
//! dispatcher recomputes and compares in constant time. A captured hello is
//! worthless on another connection (another nonce), and a proof made for
//! one role or name does not verify for another.
//!
//! Without tokens ([`Auth::open`]) every client is trusted; the dispatcher
//! then listens only on loopback unless told otherwise (see `start`).
//!
//! The dispatcher's token file has one `ROLE: SECRET` line per role
//! (`runner`, `observer`, `tool`, `tool-write`); blank lines and lines
//! starting with `#` are ignored. A role without a line is refused. A
//! client's token file holds just its own secret (or, for convenience, the
//! dispatcher's format: the client then uses its role's line).

use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};

use super::{Hello, Role};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Largest token file read (a token file is a few lines).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// The roles a dispatcher token file names, in file order.
pub const TOKEN_ROLES: [&str; 4] = ["runner", "observer", "tool", "tool-write"];

/// The roles, for messages.
const ROLES_LIST: &str = "runner, observer, tool, tool-write";

/// What an authenticated client may do beyond its role's reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Tools: may submit commits, cancel and retry jobs.
    pub write: bool,
}

/// What is wrong with one secret. Never carries the secret itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error(
        "the secret is shorter than {MIN_SECRET_BYTES} characters (make one with `openssl rand -hex 32`)"
    )]
    TooShort,
    #[error("the secret contains spaces or control characters")]
    Whitespace,
}

/// Why a token file or token cannot be used. Messages name the file, the
/// line and the rule, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("line {line} is not `ROLE: SECRET` (roles: {ROLES_LIST})")]
    NotRoleSecret { line: usize },
    #[error("line {line}: unknown role {role:?} (roles: {ROLES_LIST})")]
    UnknownRole { line: usize, role: String },
    #[error("line {line}: a second secret for role {role}")]
    SecondSecret { line: usize, role: &'static str },
    #[error("line {line} ({role}): {problem}")]
    BadSecret {
        line: usize,
        role: &'static str,
        problem: SecretProblem,
    },
    #[error("no secrets: give one `ROLE: SECRET` line per role ({ROLES_LIST})")]
    NoSecrets,
    #[error(
        "roles {first} and {second} have the same secret; each role needs its own, or roles cannot be told apart"
    )]
    SharedSecret {
        first: &'static str,
        second: &'static str,
    },
    #[error(
        "cannot read the token file {}: {source}; check the path and that this user may read it",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "the token file {} is larger than {MAX_TOKEN_FILE_BYTES} bytes; it should hold a few lines",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("the token file {} is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("the token file {} is empty", path.display())]
    Empty { path: PathBuf },
    /// A problem inside a named token file.
    #[error("the token file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<TokenError>,
    },
    #[error("the token file {} has no line for role {}", path.display(), role.as_str())]
    NoLineForRole { path: PathBuf, role: Role },
    #[error("the token file {} must hold exactly one secret (one line)", path.display())]
    NotOneSecret { path: PathBuf },
    #[error("the token file {}: {problem}", path.display())]
    BadFileSecret {
        path: PathBuf,
        problem: SecretProblem,
    },
    #[error("{TOKEN_ENV}: {0}")]
    BadEnvSecret(SecretProblem),
    #[error("{TOKEN_ENV} is not UTF-8")]
    EnvNotUtf8,
}

/// The dispatcher's secrets, one per role; a role without one is refused.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub runner: Option<Vec<u8>>,
    pub observer: Option<Vec<u8>>,
    /// Tools that may only read.
    pub tool: Option<Vec<u8>>,
    /// Tools that may also submit commits.
    pub tool_write: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, not even in a debug log.
        let set = |t: &Option<Vec<u8>>| if t.is_some() { "set" } else { "-" };
        f.debug_struct("Tokens")
            .field("runner", &set(&self.runner))
            .field("observer", &set(&self.observer))
            .field("tool", &set(&self.tool))
            .field("tool_write", &set(&self.tool_write))
            .finish()
    }
}

/// A line without its comment: `#` at the start, or after whitespace, starts
/// one (a secret holds no whitespace, so `SECRET   # note` is unambiguous).
fn strip_comment(line: &str) -> &str {
    let line = line.trim();
    if line.starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return line[..i].trim_end();
        }
    }
    line
}

impl Tokens {
    /// Parses the dispatcher's token file format. Errors name the line and
    /// the rule, never the secret.
    pub fn parse(text: &str) -> Result<Tokens, TokenError> {
        let mut t = Tokens::default();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = strip_comment(line);
            if line.is_empty() {
                continue;
            }
            let Some((role, secret)) = line.split_once(':') else {
                return Err(TokenError::NotRoleSecret { line: n });
            };
            let secret = secret.trim();
            let (slot, role) = match role.trim() {
                "runner" => (&mut t.runner, TOKEN_ROLES[0]),
                "observer" => (&mut t.observer, TOKEN_ROLES[1]),
                "tool" => (&mut t.tool, TOKEN_ROLES[2]),
                "tool-write" => (&mut t.tool_write, TOKEN_ROLES[3]),
                other => {
                    return Err(TokenError::UnknownRole {
                        line: n,
                        role: other.chars().take(40).collect(),
                    });
                }
            };
            if slot.is_some() {
                return Err(TokenError::SecondSecret { line: n, role });
            }
            check_secret(secret).map_err(|problem| TokenError::BadSecret {
                line: n,
                role,
                problem,
            })?;
            *slot = Some(secret.as_bytes().to_vec());
        }
        let all = [&t.runner, &t.observer, &t.tool, &t.tool_write];
        if all.iter().all(|s| s.is_none()) {
            return Err(TokenError::NoSecrets);
        }
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate().skip(i + 1) {
                if a.is_some() && a == b {
                    return Err(TokenError::SharedSecret {
                        first: TOKEN_ROLES[i],
                        second: TOKEN_ROLES[j],
                    });
                }
            }
        }
        Ok(t)
    }

    /// Reads and parses a dispatcher token file.
    pub fn from_file(path: &Path) -> Result<Tokens, TokenError> {
        let text = read_text(path)?;
        Tokens::parse(&text).map_err(|e| TokenError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// The secret a client of `role` uses (tools prefer write access).
    pub fn for_role(&self, role: Role) -> Option<&[u8]> {
        match role {
            Role::Runner => self.runner.as_deref(),
            Role::Observer => self.observer.as_deref(),
            Role::Tool => self.tool_write.as_deref().or(self.tool.as_deref()),
        }
    }
}

fn check_secret(secret: &str) -> Result<(), SecretProblem> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(SecretProblem::TooShort);
    }
    if secret.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SecretProblem::Whitespace);
    }
    Ok(())
}

/// A token file's text; unreadable, oversized, non-UTF-8 or empty files
/// are errors naming the file and what to do.
fn read_text(path: &Path) -> Result<String, TokenError> {
    use std::io::Read;
    let unreadable = |source: std::io::Error| TokenError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(TokenError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_end(&mut raw))
        .map_err(unreadable)?;
    if raw.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(TokenError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = String::from_utf8(raw).map_err(|_| TokenError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    if text.trim().is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the token file is readable by other users; `chmod 600` it"
            );
        }
    }
    Ok(text)
}

/// A client's secret from its token file: the whole file trimmed, or, if
/// the file is in the dispatcher's `ROLE: SECRET` format, `role`'s line.
pub fn client_token_from_file(path: &Path, role: Role) -> Result<Vec<u8>, TokenError> {
    let text = read_text(path)?;
    let lines: Vec<&str> = text
        .lines()
        .map(strip_comment)
        .filter(|l| !l.is_empty())
        .collect();
    let role_file = lines.first().is_some_and(|first| {
        first
            .split_once(':')
            .is_some_and(|(r, _)| TOKEN_ROLES.contains(&r.trim()))
    });
    if role_file {
        let tokens = Tokens::parse(&text).map_err(|e| TokenError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        return tokens.for_role(role).map(<[u8]>::to_vec).ok_or_else(|| {
            TokenError::NoLineForRole {
                path: path.to_path_buf(),
                role,
            }
        });
    }
    if lines.len() != 1 {
        return Err(TokenError::NotOneSecret {
            path: path.to_path_buf(),
        });
    }
    check_secret(lines[0]).map_err(|problem| TokenError::BadFileSecret {
        path: path.to_path_buf(),
        problem,
    })?;
    Ok(lines[0].as_bytes().to_vec())
}

/// The environment variable a client's secret may come from instead of a file.
pub const TOKEN_ENV: &str = "CI_TOKEN";

/// A client's secret: from `--token-file` if given, else from `CI_TOKEN`,
/// else none.
pub fn client_token(file: Option<&Path>, role: Role) -> Result<Option<Vec<u8>>, TokenError> {
    if let Some(path) = file {
        return client_token_from_file(path, role).map(Some);
    }
    match std::env::var(TOKEN_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let v = v.trim();
            check_secret(v).map_err(TokenError::BadEnvSecret)?;
            Ok(Some(v.as_bytes().to_vec()))
        }
        Ok(_) => Ok(None),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(TokenError::EnvNotUtf8),
    }
}

/// Why a hello was refused. The message is what the client is told; it
/// never says which part of a proof was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this dispatcher requires a token: give this {} its secret with --token-file FILE or {TOKEN_ENV}",
        role.as_str()
    )]
    TokenRequired { role: Role },
    #[error(
        "this dispatcher accepts no {role} (its token file has no {role} line)",
        role = role.as_str()
    )]
    RoleNotAccepted { role: Role },
    #[error(
        "wrong token for role {role}: check this {role}'s --token-file (or {TOKEN_ENV}) against the dispatcher's token file",
        role = role.as_str()
    )]
    WrongToken { role: Role },
    #[error("no randomness available for the connection's nonce: {0}")]
    NoRandomness(String),
}

impl AuthError {
    /// The code the refusal carries on the wire.
    pub fn code(&self) -> super::ErrorCode {
        match self {
            AuthError::NoRandomness(_) => super::ErrorCode::Unavailable,
            _ => super::ErrorCode::Unauthorized,
        }
    }
}

#[derive(Debug, Default)]
pub struct Auth {
    tokens: Option<Tokens>,
}

impl Auth {
    /// No tokens: every client is trusted.
    pub fn open() -> Auth {
        Auth::default()
    }

    /// Every client must prove its role's token.
    pub fn with_tokens(tokens: Tokens) -> Auth {
        Auth {
            tokens: Some(tokens),
        }
    }

    /// True when no tokens are checked.
    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// 16 bytes from the operating system's random source.
    pub fn nonce(&self) -> Result<[u8; 16], AuthError> {
        let mut n = [0u8; 16];
        getrandom::fill(&mut n).map_err(|e| AuthError::NoRandomness(e.to_string()))?;
        Ok(n)
    }

    /// Checks a hello's proof against its role's token. The error is the
    /// message sent to the client; it never says which part was wrong.
    pub fn check(&self, hello: &Hello, nonce: &[u8; 16]) -> Result<Grant, AuthError> {
        let Some(tokens) = &self.tokens else {
            return Ok(Grant { write: true });
        };
        let role = hello.role;
        let Some(proof) = &hello.proof else {
            return Err(AuthError::TokenRequired { role });
        };
        let verifies = |secret: &Option<Vec<u8>>| {
            secret
                .as_deref()
                .is_some_and(|s| verify(s, nonce, hello, proof))
        };
        let (grant, configured) = match hello.role {
            Role::Runner => (
                verifies(&tokens.runner).then_some(Grant { write: false }),
                tokens.runner.is_some(),
            ),
            Role::Observer => (
                verifies(&tokens.observer).then_some(Grant { write: false }),
                tokens.observer.is_some(),
            ),
            Role::Tool => {
                let g = if verifies(&tokens.tool_write) {
                    Some(Grant { write: true })
                } else if verifies(&tokens.tool) {
                    Some(Grant { write: false })
                } else {
                    None
                };
                (g, tokens.tool.is_some() || tokens.tool_write.is_some())
            }
        };
        match grant {
            Some(g) => Ok(g),
            None if !configured => Err(AuthError::RoleNotAccepted { role }),
            None => Err(AuthError::WrongToken { role }),
        }
    }
}

impl Auth {
    /// What a tool's secret presented as such (an HTTP header or cookie,
    /// over a connection the operator secured) grants: reading with the
    /// `tool` secret, also writing with `tool-write`; `None` for anything
    /// else. Without tokens everything is granted (loopback only).
    /// Compared in constant time.
    pub fn grant_for_secret(&self, secret: &[u8]) -> Option<Grant> {
        let Some(tokens) = &self.tokens else {
            return Some(Grant { write: true });
        };
        let matches = |t: &Option<Vec<u8>>| {
            t.as_deref().is_some_and(|t| {
                // HMAC both sides under one key: equal lengths, constant time.
                let tag = |b: &[u8]| {
                    let mut m = HmacSha256::new_from_slice(b"ci-compare")
                        .expect("HMAC takes keys of any length");
                    m.update(b);
                    m.finalize().into_bytes()
                };
                let (a, b) = (tag(t), tag(secret));
                a.iter()
                    .zip(b.iter())
                    .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                    == 0
            })
        };
        if matches(&tokens.tool_write) {
            Some(Grant { write: true })
        } else if matches(&tokens.tool) {
            Some(Grant { write: false })
        } else {
            None
        }
    }
}

fn mac(token: &[u8], nonce: &[u8; 16], role: Role, name: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(token).expect("HMAC takes keys of any length");
    // Role names are prefix-free, so nonce || role || name is unambiguous.
    m.update(nonce);
    m.update(role.as_str().as_bytes());
    m.update(name.as_bytes());
    m
}

fn verify(token: &[u8], nonce: &[u8; 16], hello: &Hello, proof: &[u8]) -> bool {
    // Constant-time comparison.
    mac(token, nonce, hello.role, &hello.name)
        .verify_slice(proof)
        .is_ok()
}

/// A client's proof of its token for one connection:
/// HMAC-SHA256(token, nonce || role || name).
pub fn proof(token: &[u8], nonce: &[u8; 16], role: Role, name: &str) -> Vec<u8> {
    mac(token, nonce, role, name)
        .finalize()
        .into_bytes()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "runner-secret-0123456789";
    const O: &str = "observer-secret-0123456789";
    const T: &str = "tool-secret-0123456789";
    const W: &str = "tool-write-secret-0123456789";

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "# comment\nrunner: {R}\nobserver: {O}\n\ntool: {T}\ntool-write: {W}\n"
        ))
        .unwrap()
    }

    fn hello(role: Role, name: &str, proof: Option<Vec<u8>>) -> Hello {
        Hello {
            version: crate::proto::PROTOCOL_VERSION,
            role,
            name: name.into(),
            proof,
            holding: None,
            left: None,
            serves: crate::proto::Serves::Default,
        }
    }

    #[test]
    fn proofs_verify_only_for_their_role_name_and_nonce() {
        let auth = Auth::with_tokens(tokens());
        let n = auth.nonce().unwrap();
        let ok = |role, secret: &str, name: &str| {
            auth.check(
                &hello(role, name, Some(proof(secret.as_bytes(), &n, role, name))),
                &n,
            )
        };
        assert_eq!(ok(Role::Runner, R, "r1"), Ok(Grant { write: false }));
        assert_eq!(ok(Role::Observer, O, "o"), Ok(Grant { write: false }));
        assert_eq!(ok(Role::Tool, T, "t"), Ok(Grant { write: false }));
        assert_eq!(ok(Role::Tool, W, "t"), Ok(Grant { write: true }));
        // Another role's secret.
        assert!(
            ok(Role::Runner, O, "r1")
                .unwrap_err()
                .to_string()
                .contains("wrong token")
        );
        assert!(ok(Role::Observer, R, "o").is_err());
        assert!(ok(Role::Tool, R, "t").is_err());
        // A proof made for another name or nonce.
        let p = proof(R.as_bytes(), &n, Role::Runner, "r1");
        assert!(
            auth.check(&hello(Role::Runner, "r2", Some(p.clone())), &n)
                .is_err()
        );
        let other = auth.nonce().unwrap();
        assert_ne!(other, n, "nonces are random");
        assert!(
            auth.check(&hello(Role::Runner, "r1", Some(p)), &other)
                .is_err()
        );
        // Missing or garbage proofs.
        let e = auth
            .check(&hello(Role::Runner, "r1", None), &n)
            .unwrap_err()
            .to_string();
        assert!(e.contains("requires a token"), "{e}");
        assert!(
            auth.check(&hello(Role::Runner, "r1", Some(vec![])), &n)
                .is_err()
        );
        assert!(
            auth.check(&hello(Role::Runner, "r1", Some(vec![0; 1000])), &n)
                .is_err()
        );
        // Open: anything goes.
        assert_eq!(
            Auth::open().check(&hello(Role::Tool, "t", None), &n),
            Ok(Grant { write: true })
        );
    }

    #[test]
    fn a_role_without_a_line_is_refused() {
        let auth = Auth::with_tokens(Tokens::parse(&format!("runner: {R}\n")).unwrap());
        let n = auth.nonce().unwrap();
        let p = proof(T.as_bytes(), &n, Role::Tool, "t");
        let e = auth
            .check(&hello(Role::Tool, "t", Some(p)), &n)
            .unwrap_err()
            .to_string();
        assert!(e.contains("accepts no tool"), "{e}");
    }

    #[test]
    fn token_file_errors_are_clear_and_never_show_secrets() {
        for (text, want) in [
            ("runner {R}", "not `ROLE: SECRET`"),
            ("admin: aaaaaaaaaaaaaaaaaaaaaaa", "unknown role"),
            ("runner: xyzzy", "shorter than"),
            (
                "runner: aaaaaaaaaaaaaaaaaaaa\nrunner: bbbbbbbbbbbbbbbbbbbbbbbb",
                "second secret",
            ),
            (
                "runner: aaaaaaaaaaaaaaaaaaaa\ntool: aaaaaaaaaaaaaaaaaaaa",
                "same secret",
            ),
            ("# nothing\n", "no secrets"),
        ] {
            let e = Tokens::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("aaaaaaaa") && !e.contains("xyzzy"), "{e}");
        }
        assert!(!format!("{:?}", tokens()).contains("secret-"));
    }

    #[test]
    fn client_files_hold_one_secret_or_the_role_lines() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        std::fs::write(&one, format!("{R}\n")).unwrap();
        assert_eq!(
            client_token_from_file(&one, Role::Runner).unwrap(),
            R.as_bytes()
        );
        let all = dir.path().join("all");
        std::fs::write(&all, format!("runner: {R}\ntool: {T}\ntool-write: {W}\n")).unwrap();
        assert_eq!(
            client_token_from_file(&all, Role::Tool).unwrap(),
            W.as_bytes()
        );
        let e = client_token_from_file(&all, Role::Observer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no line for role observer"), "{e}");
        let two = dir.path().join("two");
        std::fs::write(&two, format!("{R}\n{T}\n")).unwrap();
        assert!(client_token_from_file(&two, Role::Runner).is_err());
        let e = client_token_from_file(&dir.path().join("missing"), Role::Runner)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the token file"), "{e}");
    }

    /// The README's example: a `# comment` after the secret. It was refused
    /// as a secret with spaces.
    #[test]
    fn trailing_comments_are_ignored() {
        let t = Tokens::parse(&format!(
            "# /etc/ci/dispatcher.tokens\nrunner:     {R}   # every ci-runner\nobserver:   {O}\t# the observer\ntool: {T}#not-a-comment-without-space\n"
        ))
        .unwrap();
        assert_eq!(t.runner.as_deref(), Some(R.as_bytes()));
        assert_eq!(t.observer.as_deref(), Some(O.as_bytes()));
        // A `#` inside a secret is part of it.
        assert_eq!(
            t.tool.as_deref(),
            Some(format!("{T}#not-a-comment-without-space").as_bytes())
        );
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        std::fs::write(&one, format!("# mine\n{R}  # the runner's secret\n")).unwrap();
        assert_eq!(
            client_token_from_file(&one, Role::Runner).unwrap(),
            R.as_bytes()
        );
    }

    #[test]
    fn a_presented_secret_grants_what_its_tool_line_says() {
        let auth = Auth::with_tokens(tokens());
        assert_eq!(
            auth.grant_for_secret(W.as_bytes()),
            Some(Grant { write: true })
        );
        assert_eq!(
            auth.grant_for_secret(T.as_bytes()),
            Some(Grant { write: false })
        );
        // Other roles' secrets, near misses and nothing grant nothing.
        for other in [R, O, "", "tool-secret-012345678", "tool-secret-01234567890"] {
            assert_eq!(auth.grant_for_secret(other.as_bytes()), None, "{other:?}");
        }
        assert_eq!(
            Auth::open().grant_for_secret(b""),
            Some(Grant { write: true })
        );
    }
}
