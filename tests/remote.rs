//! Remote repositories on the real binaries: the observer and a runner
//! fetch over https (nginx + fcgiwrap + `git http-backend`, TLS with a CA
//! made here, HTTP basic auth) and over ssh (Debian's OpenSSH server with a
//! host key and an authorized key made here), all on 127.0.0.1 and stopped
//! when the test ends.
//!
//! What is checked: a commit observed and tested over each passes; the
//! tested code can read neither the token nor the key, nor find the token
//! in its environment; a wrong token, an unknown CA, an unknown or changed
//! host key, a password in the URL and a server that never answers each
//! end in one clear error within seconds; no program ever prints the token.
//!
//! Needs nginx, fcgiwrap, openssh-server, openssl and git's http-backend
//! (`.ci/run` installs them); a missing one fails the test saying what to
//! install.

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// How long a refused start may take: one connection, one refusal.
const QUICK: Duration = Duration::from_secs(20);

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (.ci/run does)"
    );
}

/// Runs a helper program to completion; panics with its output if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; is it installed?"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Waits until something listens on 127.0.0.1:`port`.
fn wait_listening(port: u16, server: &mut Proc) {
    let deadline = Instant::now() + SHORT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(server.is_running(), "{} exited at start", server.label());
        assert!(
            Instant::now() < deadline,
            "{} does not listen on {port}",
            server.label()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A secret nobody could guess from the test's code or logs.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random bytes");
    format!(
        "tok{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the
/// openssl CLI: (ca.crt, server.crt, server.key).
fn make_certs(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    need("/usr/bin/openssl", "openssl");
    let f = |n: &str| dir.join(format!("{name}-{n}"));
    let (ca_key, ca_crt, key, csr, crt, ext) = (
        f("ca.key"),
        f("ca.crt"),
        f("server.key"),
        f("server.csr"),
        f("server.crt"),
        f("ext.cnf"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", p(&ca_key), "-out", p(&ca_crt), "-days", "2"]);
    args.extend(["-subj", "/CN=ci remote test CA"]);
    run("openssl", &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        p(&key),
        "-out",
        p(&csr),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run("openssl", &args);
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            p(&csr),
            "-CA",
            p(&ca_crt),
            "-CAkey",
            p(&ca_key),
            "-CAcreateserial",
            "-out",
            p(&crt),
            "-days",
            "2",
            "-extfile",
            p(&ext),
        ],
    );
    (ca_crt, crt, key)
}

/// nginx serving `git http-backend` (through fcgiwrap) for the
/// repositories under `root`, over TLS, behind HTTP basic auth.
struct HttpsServer {
    port: u16,
    ca: PathBuf,
    _fcgiwrap: Proc,
    _nginx: Proc,
}

impl HttpsServer {
    fn start(repo: &TestRepo, user: &str, token: &str) -> HttpsServer {
        need("/usr/sbin/nginx", "nginx");
        need("/usr/sbin/fcgiwrap", "fcgiwrap");
        need("/usr/lib/git-core/git-http-backend", "git");
        let dir = repo.dir("https");
        let (ca, crt, key) = make_certs(&dir, "https");
        let hash = run("openssl", &["passwd", "-apr1", token]);
        fs::write(dir.join("htpasswd"), format!("{user}:{}\n", hash.trim())).unwrap();
        for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(dir.join("tmp").join(t)).unwrap();
        }
        let sock = dir.join("fcgiwrap.sock");
        let mut fcgiwrap = Proc::spawn_path(
            Path::new("/usr/sbin/fcgiwrap"),
            &["-s", &format!("unix:{}", p(&sock))],
            repo.root(),
            "fcgiwrap",
        );
        let deadline = Instant::now() + SHORT;
        while !sock.exists() {
            assert!(fcgiwrap.is_running(), "fcgiwrap exited at start");
            assert!(Instant::now() < deadline, "fcgiwrap made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = free_port();
        let d = p(&dir);
        // As root nginx would run its workers as nobody, who can read
        // nothing here.
        let user_line = if is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"daemon off;
{user_line}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        location / {{
            auth_basic "git";
            auth_basic_user_file {d}/htpasswd;
            fastcgi_pass unix:{sock};
            fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
            fastcgi_param GIT_PROJECT_ROOT {root};
            fastcgi_param GIT_HTTP_EXPORT_ALL 1;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param GIT_CONFIG_NOSYSTEM 1;
        }}
    }}
}}
"#,
            crt = p(&crt),
            key = p(&key),
            sock = p(&sock),
            root = p(repo.root()),
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let mut nginx = Proc::spawn_path(
            Path::new("/usr/sbin/nginx"),
            &[
                "-p",
                d,
                "-c",
                p(&conf_path),
                "-e",
                &format!("{d}/nginx-error.log"),
            ],
            repo.root(),
            "nginx",
        );
        wait_listening(port, &mut nginx);
        HttpsServer {
            port,
            ca,
            _fcgiwrap: fcgiwrap,
            _nginx: nginx,
        }
    }

    /// The test repository's URL (`origin/.git` under the project root).
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/origin/.git", self.port)
    }
}

/// Debian's OpenSSH server on 127.0.0.1, letting in the current user with
/// one key.
struct SshServer {
    port: u16,
    /// The server's public host key line (`type base64 comment`).
    host_key: String,
    _sshd: Proc,
}

fn current_user() -> String {
    run("id", &["-un"]).trim().to_string()
}

impl SshServer {
    fn start(repo: &TestRepo, client_pub: &Path) -> SshServer {
        need("/usr/sbin/sshd", "openssh-server");
        need("/usr/bin/ssh-keygen", "openssh-client");
        let dir = repo.dir("sshd");
        let host_key = dir.join("host_ed25519");
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "host",
                "-f",
                p(&host_key),
            ],
        );
        fs::copy(client_pub, dir.join("authorized_keys")).unwrap();
        if is_root() {
            // Privilege separation's empty directory.
            fs::create_dir_all("/run/sshd").unwrap();
        }
        let port = free_port();
        let d = p(&dir);
        let conf = format!(
            "HostKey {d}/host_ed25519\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\n\
             ListenAddress 127.0.0.1\n\
             StrictModes no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             UsePAM no\n\
             LogLevel VERBOSE\n"
        );
        let conf_path = dir.join("sshd_config");
        fs::write(&conf_path, conf).unwrap();
        let mut sshd = Proc::spawn_path(
            Path::new("/usr/sbin/sshd"),
            &["-D", "-e", "-f", p(&conf_path), "-p", &port.to_string()],
            repo.root(),
            "sshd",
        );
        wait_listening(port, &mut sshd);
        let host_key = fs::read_to_string(dir.join("host_ed25519.pub"))
            .unwrap()
            .trim()
            .to_string();
        SshServer {
            port,
            host_key,
            _sshd: sshd,
        }
    }

    fn url(&self, repo: &TestRepo) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            current_user(),
            self.port,
            p(repo.path())
        )
    }

    /// A known_hosts line for this server holding `key`.
    fn known_hosts_line(&self, key: &str) -> String {
        format!("[127.0.0.1]:{} {key}\n", self.port)
    }
}

/// A client key pair (no passphrase): the private key's path.
fn make_client_key(dir: &Path) -> PathBuf {
    let key = dir.join("id_ed25519");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", p(&key)],
    );
    key
}

/// A commit whose test fails if it can read any of `secrets` (files that
/// must read as empty or not at all) or finds `token` in its environment;
/// only a hash of the token is committed.
fn commit_secret_check(repo: &TestRepo, secrets: &[&Path], token: &str) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let paths: Vec<String> = secrets.iter().map(|s| format!("{:?}", p(s))).collect();
    let test = format!(
        r#"import hashlib, os, unittest

SECRETS = [{paths}]
TOKEN_SHA256 = "{hash}"

class Secrets(unittest.TestCase):
    def test_secret_files_read_as_nothing(self):
        for path in SECRETS:
            try:
                with open(path, "rb") as f:
                    seen = f.read()
            except OSError:
                seen = b""
            self.assertTrue(seen == b"", "%s is readable (%d bytes)" % (path, len(seen)))
        print("secret files hidden")

    def test_token_not_in_environment(self):
        for k, v in os.environ.items():
            for word in [v] + v.split():
                h = hashlib.sha256(word.encode()).hexdigest()
                self.assertTrue(h != TOKEN_SHA256, "the token is in " + k)
"#,
        paths = paths.join(", ")
    );
    repo.commit(
        &[("tests/test_secrets.py", &test)],
        "a test that looks for the credentials",
    )
}

/// Panics if any program's output (everything under `logs/`) holds `token`.
fn assert_token_never_printed(repo: &TestRepo, token: &str) {
    let logs = repo.root().join("logs");
    let mut seen = 0;
    for entry in fs::read_dir(&logs).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains(token),
            "{} prints the token:\n{text}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 2, "no logs to check in {}", logs.display());
}

/// Starts a runner with `extra` flags and waits for it to exit; its stderr.
fn refused_runner(addr: &str, repo: &TestRepo, name: &str, extra: &[&str]) -> String {
    let started = Instant::now();
    let mut r = runner_with(addr, repo, name, extra);
    let status = r.wait_exit(QUICK);
    assert_eq!(exit_code(&status), Some(2), "{}", r.report());
    let err = r.stderr();
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{err}");
    eprintln!("{name}: refused in {:?}: {}", started.elapsed(), errors[0]);
    errors[0].to_string()
}

#[test]
fn https_with_a_token_and_a_private_ca() {
    let repo = TestRepo::new();
    let token = random_token();
    let server = HttpsServer::start(&repo, "x-access-token", &token);
    let secrets = repo.dir("secrets");
    let token_file = secrets.join("token");
    write_private(&token_file, &format!("{token}\n"));
    let ca = p(&server.ca).to_string();
    let url = server.url();
    let tf = p(&token_file).to_string();
    let flags = [
        "--repo",
        &url,
        "--git-token-file",
        &tf,
        "--git-ca-file",
        &ca,
    ];

    let d = Dispatcher::start(&repo.dir("data"), &[]);
    repo.commit_passing(1);
    let sha = commit_secret_check(&repo, &[&token_file], &token);
    let _observer = observer_with(d.addr(), &repo, "main", &flags);
    let _runner = runner_with(d.addr(), &repo, "https", &flags);
    let results = wait_final(d.addr(), &[&sha], LONG);
    let r = result_for(&results, &sha).unwrap();
    assert_eq!(r["outcome"], "pass", "{}", pretty(r));
    let out = tools_expect(&["output", "--dispatcher", d.addr(), &sha], 0);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("secret files hidden"), "{out}");
    assert!(!out.contains(&token), "{out}");

    // The same server, other credentials: one clear error each, at once.
    let wrong = secrets.join("wrong");
    write_private(&wrong, "not-the-token\n");
    let line = refused_runner(
        d.addr(),
        &repo,
        "wrong-token",
        &[
            "--repo",
            &url,
            "--git-token-file",
            p(&wrong),
            "--git-ca-file",
            &ca,
        ],
    );
    assert!(line.contains("authentication failed"), "{line}");
    assert!(line.contains("--git-token-file"), "{line}");
    assert!(line.contains(&url), "{line}");

    let line = refused_runner(
        d.addr(),
        &repo,
        "no-token",
        &["--repo", &url, "--git-ca-file", &ca],
    );
    assert!(line.contains("give --git-token-file"), "{line}");

    let line = refused_runner(
        d.addr(),
        &repo,
        "unknown-ca",
        &["--repo", &url, "--git-token-file", &tf],
    );
    assert!(line.contains("TLS"), "{line}");
    assert!(line.contains("--git-ca-file"), "{line}");

    let with_password = format!(
        "https://x-access-token:{token}@127.0.0.1:{}/origin/.git",
        server.port
    );
    let line = refused_runner(
        d.addr(),
        &repo,
        "password",
        &["--repo", &with_password, "--git-ca-file", &ca],
    );
    assert!(line.contains("--git-token-file"), "{line}");
    assert!(line.contains(&url), "shown without userinfo: {line}");

    // A user name in the URL is the one sent with the token.
    let other_user_url = format!("https://someone@127.0.0.1:{}/origin/.git", server.port);
    let line = refused_runner(
        d.addr(),
        &repo,
        "other-user",
        &[
            "--repo",
            &other_user_url,
            "--git-token-file",
            &tf,
            "--git-ca-file",
            &ca,
        ],
    );
    assert!(line.contains("user someone"), "{line}");
    assert!(!line.contains("someone@"), "userinfo shown: {line}");

    // The observer says it the same way.
    let mut o = observer_with(
        d.addr(),
        &repo,
        "main",
        &[
            "--repo",
            &url,
            "--git-token-file",
            p(&wrong),
            "--git-ca-file",
            &ca,
        ],
    );
    let status = o.wait_exit(QUICK);
    assert_eq!(exit_code(&status), Some(2), "{}", o.report());
    assert!(
        o.stderr().contains("authentication failed"),
        "{}",
        o.report()
    );

    assert_token_never_printed(&repo, &token);
}

#[test]
fn ssh_with_a_key_and_known_hosts() {
    let repo = TestRepo::new();
    let keys = repo.dir("keys");
    let key = make_client_key(&keys);
    let mut key_pub = key.clone().into_os_string();
    key_pub.push(".pub");
    let server = SshServer::start(&repo, Path::new(&key_pub));
    let known = keys.join("known_hosts");
    fs::write(&known, server.known_hosts_line(&server.host_key)).unwrap();
    let url = server.url(&repo);
    let flags = [
        "--repo",
        &url,
        "--git-ssh-key-file",
        p(&key),
        "--git-known-hosts",
        p(&known),
    ];

    let d = Dispatcher::start(&repo.dir("data"), &[]);
    repo.commit_passing(1);
    let sha = commit_secret_check(&repo, &[&key], "no token here");
    let _observer = observer_with(d.addr(), &repo, "main", &flags);
    let _runner = runner_with(d.addr(), &repo, "ssh", &flags);
    let results = wait_final(d.addr(), &[&sha], LONG);
    let r = result_for(&results, &sha).unwrap();
    assert_eq!(r["outcome"], "pass", "{}", pretty(r));
    let shown = url.replace(&format!("{}@", current_user()), "");

    // An unknown host key: refused, saying what to do.
    let empty = keys.join("empty_known_hosts");
    fs::write(&empty, "# nothing\n").unwrap();
    let line = refused_runner(
        d.addr(),
        &repo,
        "unknown-host",
        &[
            "--repo",
            &url,
            "--git-ssh-key-file",
            p(&key),
            "--git-known-hosts",
            p(&empty),
        ],
    );
    assert!(line.contains("is not in"), "{line}");
    assert!(line.contains("ssh-keyscan"), "{line}");
    assert!(line.contains(&shown), "{line}");

    // A changed host key: refused, naming the line.
    let other = make_client_key(&repo.dir("other"));
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    let changed = keys.join("changed_known_hosts");
    fs::write(&changed, server.known_hosts_line(other_pub.trim())).unwrap();
    let line = refused_runner(
        d.addr(),
        &repo,
        "changed-host",
        &[
            "--repo",
            &url,
            "--git-ssh-key-file",
            p(&key),
            "--git-known-hosts",
            p(&changed),
        ],
    );
    assert!(line.contains("is not the one in"), "{line}");
    assert!(line.contains("line 1"), "{line}");

    // A key the server does not know: refused once, not asked forever.
    let line = refused_runner(
        d.addr(),
        &repo,
        "wrong-key",
        &[
            "--repo",
            &url,
            "--git-ssh-key-file",
            p(&other),
            "--git-known-hosts",
            p(&known),
        ],
    );
    assert!(line.contains("authentication failed"), "{line}");

    let line = refused_runner(
        d.addr(),
        &repo,
        "no-key",
        &["--repo", &url, "--git-known-hosts", p(&known)],
    );
    assert!(line.contains("give --git-ssh-key-file"), "{line}");
}

/// A server that accepts connections and never says anything: the fetch
/// fails after --git-timeout, for https and ssh alike.
#[test]
fn a_server_that_never_answers_is_an_error_not_a_hang() {
    let repo = TestRepo::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(16) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let d = Dispatcher::start(&repo.dir("data"), &[]);
    let token_file = repo.dir("secrets").join("token");
    write_private(&token_file, "whatever\n");
    for url in [
        format!("https://127.0.0.1:{port}/x.git"),
        format!("ssh://git@127.0.0.1:{port}/x.git"),
    ] {
        let started = Instant::now();
        let line = refused_runner(
            d.addr(),
            &repo,
            "hung",
            &[
                "--repo",
                &url,
                "--git-timeout",
                "1",
                "--git-token-file",
                p(&token_file),
            ],
        );
        assert!(line.contains("cannot reach repository"), "{line}");
        assert!(started.elapsed() < Duration::from_secs(15), "{line}");
    }
    // And a port nobody listens on.
    let line = refused_runner(
        d.addr(),
        &repo,
        "closed",
        &["--repo", &format!("https://{}/x.git", closed_port())],
    );
    assert!(line.contains("cannot reach repository"), "{line}");
    drop(held);
}

/// Credential files that cannot be read are one error naming the flag and
/// the file, before anything is fetched.
#[test]
fn unreadable_credential_files_are_named() {
    let repo = TestRepo::new();
    let d = Dispatcher::start(&repo.dir("data"), &[]);
    let missing = repo.root().join("no-such-token");
    for flag in [
        "--git-token-file",
        "--git-ssh-key-file",
        "--git-ca-file",
        "--git-known-hosts",
    ] {
        let line = refused_runner(
            d.addr(),
            &repo,
            "files",
            &["--repo", "https://127.0.0.1:1/x.git", flag, p(&missing)],
        );
        assert!(line.contains(flag), "{line}");
        assert!(line.contains(p(&missing)), "{line}");
    }
}
