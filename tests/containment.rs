//! The runner's secret is not visible to the code it tests: not in the
//! test's environment, not through /proc/<runner>/environ, not in the
//! checkout, not in the output.

/// Helpers for tests that run with tokens (shared with edges, containment).
#[path = "sec_common/mod.rs"]
mod common;

use std::process::{Command, Stdio};

use common::*;

fn git_repo(dir: &std::path::Path, files: &[(&str, &str)]) -> String {
    let repo = git2::Repository::init(dir).unwrap();
    for (p, c) in files {
        std::fs::write(dir.join(p), c).unwrap();
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("T", "t@example.invalid").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "m", &tree, &[])
        .unwrap()
        .to_string()
}

const PROBE: &str = r#"
echo "== env"; env
echo "== parent environ"
# root reads any process's environment: nothing a runner can do about it,
# so the README says not to run runners as root.
if [ "$(id -u)" != 0 ]; then tr '\0' '\n' < /proc/$PPID/environ 2>&1 || echo "environ unreadable"; fi
echo "== checkout"; grep -r . . 2>/dev/null | head -50
echo "== fds"; ls -l /proc/$$/fd 2>&1
"#;

#[test]
fn the_runner_token_is_invisible_to_tests() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let toml = format!(
        "[test]\ncommand = [\"sh\", \"-c\", {}]\ntimeout_secs = 30\n",
        toml_str(PROBE)
    );
    let sha = git_repo(&src, &[(".ci.toml", &toml)]);
    let d = Dispatcher::start(
        &dir.path().join("data"),
        &["--token-file", s.dispatcher.to_str().unwrap()],
    );
    let mut runner = Command::new(bin("ci-runner"))
        .args(["--dispatcher", &d.addr, "--repo", src.to_str().unwrap()])
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .args(["--name", "r1", "--token-file", s.runner.to_str().unwrap()])
        // The secret is also in the runner's environment, twice over.
        .env("CI_TOKEN", RUNNER)
        .env("CI_TOKEN_FILE", &s.runner)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tw = s.tool_write.to_str().unwrap();
    let o = tools(&["--token-file", tw, "submit", "--dispatcher", &d.addr, &sha]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tools(&[
        "--token-file",
        tw,
        "wait",
        "--dispatcher",
        &d.addr,
        "--timeout",
        "60",
        &sha,
    ]);
    let o2 = tools(&["--token-file", tw, "output", "--dispatcher", &d.addr, &sha]);
    let _ = runner.kill();
    let _ = runner.wait();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o2);
    assert!(out.contains("== env") && out.contains("PATH="), "{out}");
    assert!(out.contains("== parent environ"), "{out}");
    for secret in [RUNNER, OBSERVER, TOOL, TOOL_WRITE] {
        assert!(!out.contains(secret), "the test saw a secret:\n{out}");
    }
    assert!(!out.contains("CI_TOKEN"), "{out}");
    assert!(!out.contains(s.runner.to_str().unwrap()), "{out}");
}

fn toml_str(s: &str) -> String {
    format!("'''{s}'''")
}
