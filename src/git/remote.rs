//! Sources over the network: which URLs are accepted, how they are shown,
//! and the credentials and trust a fetch uses (https with a token, ssh with
//! a key checked against a known_hosts file).
//!
//! Credentials are read from files once, at start, into a [`GitAuth`]; the
//! mirror of each source holds one (an `Arc`), so a process fetching from
//! several sources can give each its own. Nothing here is global except
//! what libgit2 only has globally: its network timeouts and its TLS trust
//! store ([`set_network_timeout`], `--git-ca-file`).
//!
//! A source is never shown with its userinfo ([`redact`]), and a URL with a
//! password in it is refused: a password belongs in `--git-token-file`,
//! not in a command line that `ps` and logs show.

use std::cell::RefCell;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};
use hmac::{KeyInit, Mac};
use sha2::Digest;

use super::GitError;

/// The user name sent with a token when the URL names none: GitHub,
/// Gitea/Forgejo and GitLab all accept a token as the password of any user
/// name, and GitHub documents this one for installation tokens.
pub const TOKEN_USER: &str = "x-access-token";

/// The user an ssh URL without one logs in as: what every forge expects.
pub const SSH_USER: &str = "git";

/// Longest token file read (a token is a line).
const MAX_TOKEN_BYTES: u64 = 4 * 1024;
/// Longest private key file read.
const MAX_KEY_BYTES: u64 = 64 * 1024;
/// Longest known_hosts or CA bundle read.
const MAX_LIST_BYTES: u64 = 8 * 1024 * 1024;

/// The network timeout when nobody set one: how long a server may take to
/// accept a connection, and to answer each read or write after that.
pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_secs(30);

static TIMEOUT_SET: AtomicBool = AtomicBool::new(false);

/// Sets libgit2's connect timeout and its read/write timeout (process-wide:
/// libgit2 has no other place for them), so a server that does not answer
/// fails the fetch instead of hanging it. Call before the first fetch.
pub fn set_network_timeout(timeout: Duration) -> Result<(), GitError> {
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    let failed = |err| GitError::Git {
        what: "setting the network timeout".into(),
        err,
    };
    // SAFETY: these set two integers in libgit2's settings; they are called
    // before the process starts fetching (and again only with the same
    // kind of value), so no fetch reads them half-written.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms).map_err(failed)?;
        git2::opts::set_server_timeout_in_milliseconds(ms).map_err(failed)?;
    }
    TIMEOUT_SET.store(true, Ordering::SeqCst);
    Ok(())
}

/// [`DEFAULT_NETWORK_TIMEOUT`] unless a timeout was set already.
pub(super) fn ensure_network_timeout() -> Result<(), GitError> {
    if TIMEOUT_SET.load(Ordering::SeqCst) {
        return Ok(());
    }
    set_network_timeout(DEFAULT_NETWORK_TIMEOUT)
}

/// `source` without userinfo (`https://user@host/x` → `https://host/x`,
/// `git@host:x` → `host:x`): how every source is shown in logs and errors.
pub fn redact(source: &str) -> String {
    if let Some((scheme, rest)) = source.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        return match authority.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}{tail}"),
            None => source.to_string(),
        };
    }
    match scp_like(source) {
        Some(scp) if scp.user.is_some() => format!("{}:{}", scp.host, scp.path),
        _ => source.to_string(),
    }
}

/// `user@host:path`, the scp-like ssh syntax forges print. A user is
/// required, so that a local path with a colon is never taken for a host.
struct ScpLike<'a> {
    user: Option<&'a str>,
    host: &'a str,
    path: &'a str,
}

fn scp_like(source: &str) -> Option<ScpLike<'_>> {
    let (before, path) = source.split_once(':')?;
    let (user, host) = before.split_once('@')?;
    if user.is_empty() || host.is_empty() || before.contains('/') || path.is_empty() {
        return None;
    }
    Some(ScpLike {
        user: Some(user),
        host,
        path,
    })
}

/// What kind of source, with what its credentials and checks need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum OriginKind {
    /// A local path or a `file://` URL (the path, for "does it exist").
    Local(String),
    /// `git://`: no credentials, no checks.
    Git,
    /// `https://`, with the URL's user name if it has one.
    Https { user: Option<String> },
    /// `ssh://` or `user@host:path`.
    Ssh {
        user: Option<String>,
        host: String,
        port: u16,
    },
}

/// The rule quoted when a source is refused.
pub const SOURCE_RULE: &str = "a repository is a local path that exists, a file://, git://, https:// or ssh:// URL, or user@host:path";

fn bad(source: &str, rule: &'static str) -> GitError {
    GitError::BadSource {
        source: redact(source),
        rule,
    }
}

/// Sorts a URL (one with `://`) into its kind; refuses a password in it.
pub(super) fn parse_url(source: &str) -> Result<OriginKind, GitError> {
    let Some((scheme, rest)) = source.split_once("://") else {
        return Err(bad(source, SOURCE_RULE));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            return Err(GitError::PasswordInUrl {
                source: redact(source),
            });
        }
        Some((user, hostport)) => (Some(user.to_string()), hostport),
        None => (None, authority),
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => Ok(OriginKind::Local(rest.to_string())),
        "git" => Ok(OriginKind::Git),
        "https" => {
            if hostport.is_empty() {
                return Err(bad(source, "an https URL names a host"));
            }
            Ok(OriginKind::Https { user })
        }
        "ssh" | "ssh+git" | "git+ssh" => {
            let (host, port) = split_host_port(hostport).ok_or_else(|| {
                bad(
                    source,
                    "an ssh URL names a host, and a port only as a number",
                )
            })?;
            Ok(OriginKind::Ssh {
                user,
                host: host.to_string(),
                port: port.unwrap_or(22),
            })
        }
        _ => Err(bad(source, SOURCE_RULE)),
    }
}

/// The ssh kind of a `user@host:path` source, if it is one.
pub(super) fn parse_scp_like(source: &str) -> Option<OriginKind> {
    let scp = scp_like(source)?;
    Some(OriginKind::Ssh {
        user: scp.user.map(str::to_string),
        host: scp
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: 22,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `None` if malformed.
fn split_host_port(hostport: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    Some((host, port))
}

/// A credential held in memory: never printed, not even by `Debug`.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A private key (and its public half, when it was beside it).
#[derive(Clone, Debug)]
struct SshKey {
    file: PathBuf,
    private: Secret,
    public: Option<String>,
}

/// The files a [`GitAuth`] is read from: the flags' values.
#[derive(Clone, Debug, Default)]
pub struct GitAuthFiles {
    /// `--git-token-file`: the password of HTTP basic auth for https.
    pub token: Option<PathBuf>,
    /// `--git-ssh-key-file`: a private key for ssh (`FILE.pub` beside it is
    /// used when present).
    pub ssh_key: Option<PathBuf>,
    /// `--git-ca-file`: CA certificates trusted for https besides the
    /// system's.
    pub ca: Option<PathBuf>,
    /// `--git-known-hosts`: the ssh host keys trusted [default:
    /// `~/.ssh/known_hosts`].
    pub known_hosts: Option<PathBuf>,
}

/// Credentials and trust for fetching, read from files once.
#[derive(Clone, Debug, Default)]
pub struct GitAuth {
    token: Option<Secret>,
    ssh_key: Option<SshKey>,
    known_hosts: KnownHosts,
    /// The files holding secrets (token, private key): what a runner hides
    /// from the code it tests.
    secret_files: Vec<PathBuf>,
}

/// CA files already handed to libgit2 (its trust store only grows).
static CA_LOADED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl GitAuth {
    /// No credentials and no known hosts: local, `file://` and `git://`
    /// sources only (an ssh host is unknown, https needs a public CA).
    pub fn none() -> GitAuth {
        GitAuth::default()
    }

    /// Reads every file `files` names, once. A file that cannot be used is
    /// one error naming its flag and path. Without `known_hosts`,
    /// `~/.ssh/known_hosts` is read if it exists.
    pub fn load(files: &GitAuthFiles) -> Result<GitAuth, GitError> {
        let mut auth = GitAuth::default();
        if let Some(path) = &files.token {
            let text = read_bounded("--git-token-file", path, MAX_TOKEN_BYTES)?;
            let token = text.trim();
            if token.is_empty() || token.contains(['\n', '\r']) {
                return Err(file_error(
                    "--git-token-file",
                    path,
                    "it must hold the token alone, on one line",
                ));
            }
            auth.token = Some(Secret(token.to_string()));
            auth.secret_files.push(path.clone());
        }
        if let Some(path) = &files.ssh_key {
            let private = read_bounded("--git-ssh-key-file", path, MAX_KEY_BYTES)?;
            if !private.contains("PRIVATE KEY-----") {
                return Err(file_error(
                    "--git-ssh-key-file",
                    path,
                    "it is not a private key in PEM or OpenSSH format",
                ));
            }
            if private.contains("ENCRYPTED") || openssh_key_is_encrypted(&private) {
                return Err(file_error(
                    "--git-ssh-key-file",
                    path,
                    "the key has a passphrase; give a key without one (ssh-keygen -p -N '' -f FILE on a copy)",
                ));
            }
            let mut pub_path = path.clone().into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            let public = match fs::symlink_metadata(&pub_path) {
                Ok(_) => Some(
                    read_bounded("--git-ssh-key-file", &pub_path, MAX_KEY_BYTES)?
                        .trim()
                        .to_string(),
                ),
                Err(_) => None,
            };
            auth.ssh_key = Some(SshKey {
                file: path.clone(),
                private: Secret(private),
                public,
            });
            auth.secret_files.push(path.clone());
        }
        if let Some(path) = &files.ca {
            let text = read_bounded("--git-ca-file", path, MAX_LIST_BYTES)?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(file_error(
                    "--git-ca-file",
                    path,
                    "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
            load_ca(path)?;
        }
        auth.known_hosts = match &files.known_hosts {
            Some(path) => KnownHosts::parse(
                Some(path.clone()),
                &read_bounded("--git-known-hosts", path, MAX_LIST_BYTES)?,
            ),
            None => match default_known_hosts() {
                Some(path) if path.exists() => KnownHosts::parse(
                    Some(path.clone()),
                    &read_bounded("--git-known-hosts", &path, MAX_LIST_BYTES)?,
                ),
                path => KnownHosts::parse(path, ""),
            },
        };
        Ok(auth)
    }

    /// Whether a token was given (for https).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The files holding secrets, to be hidden from tested code.
    pub fn secret_files(&self) -> &[PathBuf] {
        &self.secret_files
    }
}

fn default_known_hosts() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".ssh/known_hosts"))
}

/// Adds `path`'s certificates to libgit2's trust store, once per path.
fn load_ca(path: &Path) -> Result<(), GitError> {
    let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut loaded = CA_LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if loaded.contains(&abs) {
        return Ok(());
    }
    // SAFETY: adds the file's certificates to libgit2's OpenSSL context;
    // called at start, before any fetch, under a lock.
    unsafe { git2::opts::set_ssl_cert_file(&abs) }.map_err(|e| {
        file_error(
            "--git-ca-file",
            path,
            &format!("OpenSSL cannot load it: {}", e.message()),
        )
    })?;
    loaded.push(abs);
    Ok(())
}

/// Whether an OpenSSH-format private key names a cipher (has a passphrase).
fn openssh_key_is_encrypted(text: &str) -> bool {
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let Ok(bytes) = STANDARD.decode(body.trim()) else {
        return false;
    };
    // "openssh-key-v1\0", then the cipher name as an ssh string.
    let Some(rest) = bytes.strip_prefix(b"openssh-key-v1\0") else {
        return false;
    };
    ssh_string(rest).is_some_and(|(cipher, _)| cipher != b"none")
}

fn file_error(flag: &'static str, path: &Path, problem: &str) -> GitError {
    GitError::CredentialFile {
        flag,
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// Reads a whole UTF-8 file of at most `max` bytes that is not empty.
fn read_bounded(flag: &'static str, path: &Path, max: u64) -> Result<String, GitError> {
    let io_error = |e: io::Error| file_error(flag, path, &format!("cannot read it: {e}"));
    let file = fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > max {
        return Err(file_error(
            flag,
            path,
            &format!("it is larger than {max} bytes"),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(file_error(flag, path, "it is empty"));
    }
    String::from_utf8(bytes).map_err(|_| file_error(flag, path, "it is not UTF-8 text"))
}

/// Why the server's ssh host key was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyProblem {
    /// No line of the known hosts file is for this host and key type.
    Unknown,
    /// A line for this host and key type holds another key.
    Changed { line: usize },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
}

/// The host key a server showed, and why it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKeyRefusal {
    /// As known_hosts writes it: `host`, or `[host]:port` off port 22.
    pub host: String,
    pub port: u16,
    pub key_type: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The file consulted (`None`: no `--git-known-hosts` and no `$HOME`).
    pub known_hosts: Option<PathBuf>,
    pub problem: HostKeyProblem,
}

impl fmt::Display for HostKeyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .known_hosts
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the known hosts file".into());
        let (key, host, port) = (
            format!("{} {}", self.key_type, self.fingerprint),
            &self.host,
            self.port,
        );
        match &self.problem {
            HostKeyProblem::Unknown => write!(
                f,
                "the ssh host key of {host} ({key}) is not in {file}; if it is the server's key (check its fingerprint with the server's admin or the forge's documentation), add it with `ssh-keyscan -p {port} {bare} >> {file}`, or give --git-known-hosts",
                bare = bare_host(host)
            ),
            HostKeyProblem::Changed { line } => write!(
                f,
                "the ssh host key of {host} ({key}) is not the one in {file} line {line}: refusing to connect (the server's key changed, or someone is in between); if the server's key really changed, replace that line"
            ),
            HostKeyProblem::Revoked { line } => write!(
                f,
                "the ssh host key of {host} ({key}) is marked @revoked in {file} line {line}: refusing to connect"
            ),
        }
    }
}

fn bare_host(known_as: &str) -> &str {
    known_as
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or(known_as, |(h, _)| h)
}

/// Why the server would not let us in (or what we had no credentials for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthProblem {
    /// An https server asked for credentials and there is no token.
    NoToken,
    /// The https server refused the token (sent as `user`'s password).
    TokenRefused { user: String },
    /// An ssh server asked for a key and there is none.
    NoKey,
    /// The ssh server refused the key (for `user`).
    KeyRefused { user: String, key: PathBuf },
    /// libssh2 could not use the key (format, type).
    KeyUnusable { key: PathBuf, why: String },
    /// The server asked for a kind of credentials this program has none of.
    Unsupported { what: String },
}

impl fmt::Display for AuthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthProblem::NoToken => f.write_str(
                "the server asks for credentials and none were given; give --git-token-file with a token that may read the repository",
            ),
            AuthProblem::TokenRefused { user } => write!(
                f,
                "authentication failed: the server refused the token from --git-token-file (sent as the password of user {user}); check that it is valid, not expired, and may read the repository"
            ),
            AuthProblem::NoKey => f.write_str(
                "the ssh server asks for a key and none was given; give --git-ssh-key-file",
            ),
            AuthProblem::KeyRefused { user, key } => write!(
                f,
                "authentication failed: the ssh server refused the key {} for user {user}; check that its public key is registered for the repository",
                key.display()
            ),
            AuthProblem::KeyUnusable { key, why } => write!(
                f,
                "the ssh key {} cannot be used: {why}",
                key.display()
            ),
            AuthProblem::Unsupported { what } => write!(
                f,
                "the server asks for {what}, which this program cannot give"
            ),
        }
    }
}

/// What a fetch's callbacks refused, kept for the error.
#[derive(Clone, Debug)]
pub(super) enum Refusal {
    Auth(AuthProblem),
    HostKey(Box<HostKeyRefusal>),
}

/// The callbacks of one fetch (or probe) from a source of `kind`: they
/// give the credentials once and record what was refused in `refusal`.
pub(super) fn callbacks<'a>(
    kind: &'a OriginKind,
    auth: &'a GitAuth,
    refusal: &'a RefCell<Option<Refusal>>,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut given = false;
    cb.credentials(move |_url, user_from_url, allowed| {
        let refuse = |problem: AuthProblem| {
            let err = git2::Error::from_str(&problem.to_string());
            *refusal.borrow_mut() = Some(Refusal::Auth(problem));
            Err(err)
        };
        match kind {
            OriginKind::Https { user } => {
                if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                    return refuse(AuthProblem::Unsupported {
                        what: format!("{allowed:?} credentials"),
                    });
                }
                let Some(token) = &auth.token else {
                    return refuse(AuthProblem::NoToken);
                };
                let user = user.as_deref().unwrap_or(TOKEN_USER);
                // libgit2 asks again after a refusal: once is enough.
                if given {
                    return refuse(AuthProblem::TokenRefused {
                        user: user.to_string(),
                    });
                }
                given = true;
                Cred::userpass_plaintext(user, &token.0)
            }
            OriginKind::Ssh { user, .. } => {
                let user = user_from_url
                    .or(user.as_deref())
                    .unwrap_or(SSH_USER)
                    .to_string();
                if allowed.contains(CredentialType::USERNAME) {
                    return Cred::username(&user);
                }
                if !allowed.contains(CredentialType::SSH_KEY) {
                    return refuse(AuthProblem::Unsupported {
                        what: format!("{allowed:?} credentials (only a key is given)"),
                    });
                }
                let Some(key) = &auth.ssh_key else {
                    return refuse(AuthProblem::NoKey);
                };
                if given {
                    return refuse(AuthProblem::KeyRefused {
                        user,
                        key: key.file.clone(),
                    });
                }
                given = true;
                Cred::ssh_key_from_memory(&user, key.public.as_deref(), &key.private.0, None)
                    .or_else(|e| {
                        refuse(AuthProblem::KeyUnusable {
                            key: key.file.clone(),
                            why: e.message().to_string(),
                        })
                    })
            }
            OriginKind::Local(_) | OriginKind::Git => refuse(AuthProblem::Unsupported {
                what: "credentials".into(),
            }),
        }
    });
    cb.certificate_check(move |cert, _host| match kind {
        OriginKind::Ssh { host, port, .. } => {
            let blob = cert.as_hostkey().and_then(|h| h.hostkey()).unwrap_or(&[]);
            match auth.known_hosts.check(host, *port, blob) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(r) => {
                    let err = git2::Error::from_str(&r.to_string());
                    *refusal.borrow_mut() = Some(Refusal::HostKey(Box::new(r)));
                    Err(err)
                }
            }
        }
        // https: OpenSSL's verdict stands (the system's CAs and --git-ca-file).
        _ => Ok(CertificateCheckStatus::CertificatePassthrough),
    });
    cb
}

/// An OpenSSH known_hosts file, parsed.
#[derive(Clone, Debug, Default)]
struct KnownHosts {
    path: Option<PathBuf>,
    entries: Vec<KnownHost>,
}

#[derive(Clone, Debug)]
struct KnownHost {
    /// 1-based, for messages.
    line: usize,
    marker: Marker,
    hosts: Vec<HostPattern>,
    key_type: String,
    key: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Clone, Debug)]
enum HostPattern {
    /// A glob (`*`, `?`), negated with `!`.
    Plain { negated: bool, glob: String },
    /// `|1|salt|hash`: HMAC-SHA1 of the name under the salt.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// HMAC-SHA1, as known_hosts hashes host names.
type HmacSha1 = hmac::Hmac<sha1::Sha1>;

impl KnownHosts {
    /// Parses what OpenSSH would; lines it would skip are skipped.
    fn parse(path: Option<PathBuf>, text: &str) -> KnownHosts {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                _ => Marker::None,
            };
            if marker != Marker::None {
                first = fields.next().unwrap_or_default();
            }
            let (Some(key_type), Some(key)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(key) = STANDARD.decode(key) else {
                continue;
            };
            let hosts = first.split(',').filter_map(HostPattern::parse).collect();
            entries.push(KnownHost {
                line: line_no,
                marker,
                hosts,
                key_type: key_type.to_string(),
                key,
            });
        }
        KnownHosts { path, entries }
    }

    /// Whether `blob` (the key in ssh wire format) is `host:port`'s key.
    fn check(&self, host: &str, port: u16, blob: &[u8]) -> Result<(), HostKeyRefusal> {
        let name = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        let key_type = ssh_string(blob)
            .map(|(t, _)| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_else(|| "unknown".into());
        let refusal = |problem| HostKeyRefusal {
            host: name.clone(),
            port,
            key_type: key_type.clone(),
            fingerprint: format!(
                "SHA256:{}",
                STANDARD_NO_PAD.encode(sha2::Sha256::digest(blob))
            ),
            known_hosts: self.path.clone(),
            problem,
        };
        let mine = || self.entries.iter().filter(|e| e.matches(&name));
        if let Some(e) = mine().find(|e| e.marker == Marker::Revoked && e.key == blob) {
            return Err(refusal(HostKeyProblem::Revoked { line: e.line }));
        }
        let plain = || mine().filter(|e| e.marker == Marker::None);
        if !blob.is_empty() && plain().any(|e| e.key == blob) {
            return Ok(());
        }
        match plain().find(|e| e.key_type == key_type) {
            Some(e) => Err(refusal(HostKeyProblem::Changed { line: e.line })),
            None => Err(refusal(HostKeyProblem::Unknown)),
        }
    }
}

impl KnownHost {
    /// OpenSSH's rule: some pattern matches and no negated one does.
    fn matches(&self, name: &str) -> bool {
        let mut hit = false;
        for p in &self.hosts {
            match p {
                HostPattern::Plain { negated, glob } => {
                    if glob_match(&glob.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
                        if *negated {
                            return false;
                        }
                        hit = true;
                    }
                }
                HostPattern::Hashed { salt, hash } => {
                    let Ok(mut mac) = HmacSha1::new_from_slice(salt) else {
                        continue;
                    };
                    mac.update(name.as_bytes());
                    if mac.finalize().into_bytes().as_slice() == hash.as_slice() {
                        hit = true;
                    }
                }
            }
        }
        hit
    }
}

impl HostPattern {
    fn parse(p: &str) -> Option<HostPattern> {
        if let Some(rest) = p.strip_prefix("|1|") {
            let (salt, hash) = rest.split_once('|')?;
            return Some(HostPattern::Hashed {
                salt: STANDARD.decode(salt).ok()?,
                hash: STANDARD.decode(hash).ok()?,
            });
        }
        let (negated, glob) = match p.strip_prefix('!') {
            Some(g) => (true, g),
            None => (false, p),
        };
        (!glob.is_empty()).then(|| HostPattern::Plain {
            negated,
            glob: glob.to_string(),
        })
    }
}

/// `*` and `?` globbing, as known_hosts patterns use.
fn glob_match(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    let (mut gi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ni;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// The first ssh wire-format string of `bytes` and what follows it.
fn ssh_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let s = bytes.get(4..4usize.checked_add(len)?)?;
    Some((s, &bytes[4 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_userinfo_only() {
        let cases = [
            ("https://host/a.git", "https://host/a.git"),
            ("https://me@host/a.git", "https://host/a.git"),
            (
                "https://me:pw@host:8443/a@b.git",
                "https://host:8443/a@b.git",
            ),
            ("ssh://git@host:2222/srv/a.git", "ssh://host:2222/srv/a.git"),
            ("git@github.com:org/repo.git", "github.com:org/repo.git"),
            ("/srv/git/a.git", "/srv/git/a.git"),
            ("/srv/a@b:c", "/srv/a@b:c"),
            ("file:///srv/a.git", "file:///srv/a.git"),
        ];
        for (given, shown) in cases {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_showing_it() {
        let err = parse_url("https://me:hunter2@host/a.git").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GitError::PasswordInUrl { .. }), "{err:?}");
        assert!(!msg.contains("hunter2") && !msg.contains("me:"), "{msg}");
        assert!(msg.contains("--git-token-file"), "{msg}");
    }

    #[test]
    fn urls_are_sorted_into_kinds() {
        assert_eq!(
            parse_url("ssh://git@[::1]:2222/x.git").unwrap(),
            OriginKind::Ssh {
                user: Some("git".into()),
                host: "::1".into(),
                port: 2222
            }
        );
        assert_eq!(
            parse_url("https://host/x").unwrap(),
            OriginKind::Https { user: None }
        );
        assert!(parse_url("ssh://host:notaport/x").is_err());
        assert!(parse_url("http://host/x").is_err());
        assert_eq!(
            parse_scp_like("git@github.com:o/r.git").unwrap(),
            OriginKind::Ssh {
                user: Some("git".into()),
                host: "github.com".into(),
                port: 22
            }
        );
        assert!(parse_scp_like("/a/b@c:d").is_none());
        assert!(parse_scp_like("host:path").is_none());
    }

    fn blob(kind: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (kind.len() as u32).to_be_bytes().to_vec();
        b.extend(kind.as_bytes());
        b.extend(body);
        b
    }

    #[test]
    fn known_hosts_accepts_the_key_and_refuses_others() {
        let key = blob("ssh-ed25519", b"right");
        let other = blob("ssh-ed25519", b"wrong");
        let rsa = blob("ssh-rsa", b"rsa");
        let salt = b"0123456789abcdef0123";
        let mut mac = HmacSha1::new_from_slice(salt).unwrap();
        mac.update(b"hashed.example");
        let hashed = format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        );
        let text = format!(
            "# comment\n[127.0.0.1]:2222,other ssh-ed25519 {k}\n{hashed} ssh-ed25519 {k}\n*.wild,!bad.wild ssh-ed25519 {k}\n@revoked revoked.example ssh-ed25519 {o}\nrevoked.example ssh-ed25519 {o}\n",
            k = STANDARD.encode(&key),
            o = STANDARD.encode(&other)
        );
        let kh = KnownHosts::parse(Some("/kh".into()), &text);
        assert!(kh.check("127.0.0.1", 2222, &key).is_ok());
        assert!(kh.check("hashed.example", 22, &key).is_ok());
        assert!(kh.check("a.wild", 22, &key).is_ok());
        let r = kh.check("127.0.0.1", 2222, &other).unwrap_err();
        assert_eq!(r.problem, HostKeyProblem::Changed { line: 2 });
        assert!(r.to_string().contains("/kh line 2"), "{r}");
        let r = kh.check("127.0.0.1", 22, &key).unwrap_err();
        assert_eq!(r.problem, HostKeyProblem::Unknown);
        assert!(
            r.to_string().contains("ssh-keyscan -p 22 127.0.0.1 >> /kh"),
            "{r}"
        );
        assert_eq!(
            kh.check("127.0.0.1", 2222, &rsa).unwrap_err().problem,
            HostKeyProblem::Unknown,
            "another key type is not known"
        );
        assert_eq!(
            kh.check("bad.wild", 22, &key).unwrap_err().problem,
            HostKeyProblem::Unknown
        );
        assert_eq!(
            kh.check("revoked.example", 22, &other).unwrap_err().problem,
            HostKeyProblem::Revoked { line: 5 }
        );
        assert!(kh.check("127.0.0.1", 2222, &[]).is_err());
    }

    #[test]
    fn credential_files_are_read_once_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = GitAuth::load(&GitAuthFiles {
            token: Some(missing.clone()),
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("--git-token-file"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");

        let empty = dir.path().join("empty");
        fs::write(&empty, "\n").unwrap();
        let err = GitAuth::load(&GitAuthFiles {
            token: Some(empty),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("it is empty"), "{err}");

        let token = dir.path().join("token");
        fs::write(&token, "s3cret\n").unwrap();
        let auth = GitAuth::load(&GitAuthFiles {
            token: Some(token.clone()),
            known_hosts: Some(token.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(auth.secret_files(), std::slice::from_ref(&token));
        assert!(!format!("{auth:?}").contains("s3cret"));

        let err = GitAuth::load(&GitAuthFiles {
            ssh_key: Some(token),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("not a private key"), "{err}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.example.com", "a.example.com"));
        assert!(glob_match("h?st", "host"));
        assert!(!glob_match("*.example.com", "example.com"));
        assert!(glob_match("*", ""));
    }
}
