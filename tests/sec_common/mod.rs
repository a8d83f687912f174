//! Helpers for the tests that run the real binaries with tokens
//! (hostile input, edges, containment); the general harness is tests/common.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const RUNNER: &str = "runner-secret-7f3a9c0b2d4e6f81";
pub const OBSERVER: &str = "observer-secret-5b1d8e2a9c7f3046";
pub const TOOL: &str = "tool-secret-c4e8a1f7b3d92605";
pub const TOOL_WRITE: &str = "tool-write-secret-9a2f6c1e8b4d7035";

pub fn bin(name: &str) -> PathBuf {
    match name {
        "ci-dispatcher" => env!("CARGO_BIN_EXE_ci-dispatcher").into(),
        "ci-runner" => env!("CARGO_BIN_EXE_ci-runner").into(),
        "ci-observer" => env!("CARGO_BIN_EXE_ci-observer").into(),
        "ci-tools" => env!("CARGO_BIN_EXE_ci-tools").into(),
        other => panic!("no binary {other}"),
    }
}

/// Writes a file readable by its owner only.
pub fn write_secret(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The dispatcher's token file and one file per client secret.
pub struct Secrets {
    pub dispatcher: PathBuf,
    pub runner: PathBuf,
    pub observer: PathBuf,
    pub tool: PathBuf,
    pub tool_write: PathBuf,
}

pub fn secrets(dir: &Path) -> Secrets {
    let s = Secrets {
        dispatcher: dir.join("dispatcher.tokens"),
        runner: dir.join("runner.token"),
        observer: dir.join("observer.token"),
        tool: dir.join("tool.token"),
        tool_write: dir.join("tool-write.token"),
    };
    write_secret(
        &s.dispatcher,
        &format!(
            "# role secrets\nrunner: {RUNNER}\nobserver: {OBSERVER}\ntool: {TOOL}\ntool-write: {TOOL_WRITE}\n"
        ),
    );
    write_secret(&s.runner, &format!("{RUNNER}\n"));
    write_secret(&s.observer, &format!("{OBSERVER}\n"));
    write_secret(&s.tool, &format!("{TOOL}\n"));
    write_secret(&s.tool_write, &format!("{TOOL_WRITE}\n"));
    s
}

/// A running `ci-dispatcher`; SIGTERMed and reaped on drop.
pub struct Dispatcher {
    pub child: Child,
    pub addr: String,
}

impl Dispatcher {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Dispatcher {
        Dispatcher::start_with(data_dir, extra, |cmd| {
            cmd.env("RUST_LOG", "warn").stderr(Stdio::null());
        })
    }

    /// As [`Dispatcher::start`], with `configure` applied last (its
    /// environment, its stderr).
    pub fn start_with(
        data_dir: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Dispatcher {
        let mut cmd = Command::new(bin("ci-dispatcher"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("CI_TOKEN_FILE")
            .env_remove("CI_TOKEN")
            .stdout(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Dispatcher { child, addr }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if !self.alive() {
            return; // already reaped: its pid may belong to someone else now
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs `ci-tools` with `args`, without any token from the environment.
pub fn tools(args: &[&str]) -> Output {
    Command::new(bin("ci-tools"))
        .args(args)
        .env_remove("CI_TOKEN_FILE")
        .env_remove("CI_TOKEN")
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The event types `ci-tools replay --json` lists.
pub fn replay_types(addr: &str, token: &Path) -> Vec<(String, serde_json::Value)> {
    let o = tools(&[
        "--token-file",
        token.to_str().unwrap(),
        "replay",
        "--dispatcher",
        addr,
        "--json",
    ]);
    assert!(o.status.success(), "replay failed: {}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["type"].as_str().unwrap().to_string(), v)
        })
        .collect()
}
