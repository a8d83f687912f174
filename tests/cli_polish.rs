//! The command lines as a person meets them: where `--dispatcher` comes
//! from, help for every flag, shell completions and man pages, colour only
//! where it belongs, and `ci-tools up` with tokens. On the real binaries.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use clap::Command as ClapCommand;
use common::*;

use ci::cli::docs::Program;

/// Runs one of the programs with a clean environment for what these tests
/// look at: no dispatcher, token or colour settings from the user's shell,
/// then `env` on top.
fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(program));
    cmd.args(args).stdin(Stdio::null());
    for var in [
        "CI_DISPATCHER",
        "CI_TOKEN",
        "CI_TOKEN_FILE",
        "NO_COLOR",
        "CLICOLOR",
        "CLICOLOR_FORCE",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the program");
    // Shown when the test fails.
    eprintln!(
        "{program} {args:?} {env:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every subcommand path of `cmd` (itself first), e.g. `ci-tools status`.
fn walk(cmd: &ClapCommand, path: Vec<String>, out: &mut Vec<(Vec<String>, ClapCommand)>) {
    out.push((path.clone(), cmd.clone()));
    for sub in cmd.get_subcommands() {
        let mut p = path.clone();
        p.push(sub.get_name().to_string());
        walk(sub, p, out);
    }
}

fn all_commands() -> Vec<(Vec<String>, ClapCommand)> {
    let mut out = Vec::new();
    for program in Program::ALL {
        let mut cmd = program.command();
        cmd.build();
        walk(&cmd, vec![program.name().to_string()], &mut out);
    }
    out
}

/// The subcommands of ci-tools as its own definition lists them.
fn tools_subcommands() -> Vec<String> {
    Program::Tools
        .command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// --dispatcher: the flag, then CI_DISPATCHER, then 127.0.0.1:8765
// ---------------------------------------------------------------------------

/// Every client command takes `--dispatcher`, reads `CI_DISPATCHER` and
/// falls back to the dispatcher's own default `--listen`.
#[test]
fn every_client_command_defaults_its_dispatcher_the_same_way() {
    let clients = [
        "ci-runner",
        "ci-observer",
        "ci-tools replay",
        "ci-tools status",
        "ci-tools results",
        "ci-tools submit",
        "ci-tools wait",
        "ci-tools output",
    ];
    let commands = all_commands();
    for client in clients {
        let (_, cmd) = commands
            .iter()
            .find(|(path, _)| path.join(" ") == client)
            .unwrap_or_else(|| panic!("no command {client}"));
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("dispatcher"))
            .unwrap_or_else(|| panic!("{client} has no --dispatcher"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("CI_DISPATCHER"),
            "{client}"
        );
        let defaults: Vec<_> = arg.get_default_values().iter().collect();
        assert_eq!(defaults, ["127.0.0.1:8765"], "{client}");
    }
    // ... and it is the dispatcher's own default.
    let listen = Program::Dispatcher
        .command()
        .get_arguments()
        .find(|a| a.get_long() == Some("listen"))
        .map(|a| a.get_default_values().to_vec())
        .unwrap();
    assert_eq!(listen, ["127.0.0.1:8765"]);
    // `--help` says so.
    let o = run_env("ci-tools", &["status", "--help"], &[]);
    let help = text(&o.stdout);
    assert!(
        help.contains("[env: CI_DISPATCHER=]") && help.contains("[default: 127.0.0.1:8765]"),
        "{help}"
    );
}

#[test]
fn the_flag_wins_over_ci_dispatcher_which_wins_over_the_default() {
    let repo = TestRepo::new();
    let d = Dispatcher::start(&repo.dir("data"), &[]);
    let closed = closed_port();

    // CI_DISPATCHER alone.
    let o = run_env(
        "ci-tools",
        &["status", "--json"],
        &[("CI_DISPATCHER", d.addr())],
    );
    assert!(o.status.success());
    // The flag over CI_DISPATCHER.
    let o = run_env(
        "ci-tools",
        &["status", "--json", "--dispatcher", d.addr()],
        &[("CI_DISPATCHER", &closed)],
    );
    assert!(o.status.success());
    // CI_DISPATCHER over the default: the error names it.
    let o = run_env("ci-tools", &["status"], &[("CI_DISPATCHER", &closed)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains(&closed), "{}", text(&o.stderr));
    // Neither: 127.0.0.1:8765. Someone may run a dispatcher there on a
    // shared machine; if none does, the error names the address tried.
    let o = run_env("ci-tools", &["status", "--json"], &[]);
    if !o.status.success() {
        assert!(
            text(&o.stderr).contains("127.0.0.1:8765"),
            "{}",
            text(&o.stderr)
        );
    }

    // The runner and the observer find the dispatcher through CI_DISPATCHER.
    let sha = repo.commit_passing(1).remove(0);
    let sandbox = repo.root();
    let env = [("CI_DISPATCHER", d.addr().to_string())];
    let observer_work = repo.dir("observer");
    let mut observer = Proc::spawn_with_env(
        "ci-observer",
        &[
            "--repo",
            repo.url(),
            "--work-dir",
            p(&observer_work),
            "--branch",
            "main",
            "--once",
        ],
        sandbox,
        "observer",
        &env,
    );
    assert_eq!(observer.wait_exit(LONG).code(), Some(0));
    let runner_work = repo.dir("runner");
    let _runner = Proc::spawn_with_env(
        "ci-runner",
        &[
            "--repo",
            repo.url(),
            "--work-dir",
            p(&runner_work),
            "--name",
            "r1",
            "--heartbeat-interval",
            RUNNER_HEARTBEAT_INTERVAL_SECS,
        ],
        sandbox,
        "runner",
        &env,
    );
    let results = wait_final(d.addr(), &[&sha], LONG);
    assert_eq!(outcome_of(&results, &sha), Some("pass"));
    assert_eq!(result_for(&results, &sha).unwrap()["runner"], "r1");
}

/// `replay --data-dir` reads the log even with CI_DISPATCHER set (a value
/// from the environment is not a conflict); both typed is an error.
#[test]
fn replay_offline_ignores_ci_dispatcher_but_not_a_typed_flag() {
    let repo = TestRepo::new();
    let data = repo.dir("data");
    let sha = "ab".repeat(20);
    {
        let mut d = Dispatcher::start(&data, &[]);
        let o = run_env("ci-tools", &["submit", "--dispatcher", d.addr(), &sha], &[]);
        assert!(o.status.success());
        assert_eq!(d.stop(), Some(0));
    }
    let closed = closed_port();
    let o = run_env(
        "ci-tools",
        &["replay", "--data-dir", p(&data), "--json"],
        &[("CI_DISPATCHER", &closed)],
    );
    assert!(o.status.success());
    assert!(text(&o.stdout).contains(&sha), "{}", text(&o.stdout));
    let o = run_env(
        "ci-tools",
        &["replay", "--data-dir", p(&data), "--dispatcher", &closed],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("give either --data-dir DIR or --dispatcher ADDR"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------

/// Every flag and argument of every program and subcommand has a
/// description, and `--help` shows it.
#[test]
fn every_flag_and_argument_has_help() {
    for (path, cmd) in all_commands() {
        if path.iter().any(|p| p == "help") {
            continue; // clap's own `help` subcommand
        }
        assert!(cmd.get_about().is_some(), "{path:?} has no description");
        let mut args: Vec<&str> = path.iter().skip(1).map(String::as_str).collect();
        args.push("--help");
        let o = run_env(&path[0], &args, &[]);
        assert_eq!(o.status.code(), Some(0), "{path:?}");
        let shown = text(&o.stdout);
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() {
                continue;
            }
            let id = arg.get_id().as_str();
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(!help.trim().is_empty(), "{path:?}: {id} has no help");
            let first_line = help.lines().next().unwrap();
            assert!(
                shown.contains(first_line),
                "{path:?} --help does not show {id}'s help {first_line:?}:\n{shown}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Completions and man pages
// ---------------------------------------------------------------------------

#[test]
fn bash_completion_knows_every_subcommand_and_program() {
    let o = run_env("ci-tools", &["completions", "bash"], &[]);
    assert!(o.status.success());
    let script = text(&o.stdout);
    let subs = tools_subcommands();
    for sub in [
        "replay",
        "status",
        "results",
        "submit",
        "wait",
        "output",
        "up",
        "demo",
        "bench",
        "completions",
        "man",
    ] {
        assert!(subs.iter().any(|s| s == sub), "ci-tools has no {sub}");
    }
    for sub in &subs {
        assert!(
            script.contains(&format!("ci__tools,{sub})")),
            "no completion for ci-tools {sub}"
        );
    }
    for program in Program::ALL {
        assert!(
            script.contains(&format!("-o bashdefault -o default {}", program.name())),
            "no `complete` for {}",
            program.name()
        );
    }
    for flag in [
        "--dispatcher",
        "--work-dir",
        "--heartbeat-timeout",
        "--color",
    ] {
        assert!(script.contains(flag), "{flag}");
    }
    // bash itself accepts it.
    let check = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    // In a real bash, sourcing it registers every program.
    let registered = Command::new("bash")
        .args([
            "--norc",
            "--noprofile",
            "-c",
            &format!("{script}\ncomplete -p"),
        ])
        .output()
        .unwrap();
    let registered = text(&registered.stdout);
    for program in Program::ALL {
        assert!(
            registered
                .lines()
                .any(|l| l.trim_end().ends_with(&format!(" {}", program.name()))),
            "{registered}"
        );
    }
}

#[test]
fn completions_for_every_shell_and_for_one_program() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = run_env("ci-tools", &["completions", shell], &[]);
        assert!(o.status.success(), "{shell}");
        let script = text(&o.stdout);
        for program in Program::ALL {
            assert!(
                script.contains(program.name()),
                "{shell}: {}",
                program.name()
            );
        }
        let o = run_env(
            "ci-tools",
            &["completions", shell, "--program", "ci-runner"],
            &[],
        );
        assert!(o.status.success(), "{shell}");
        let one = text(&o.stdout);
        assert!(one.contains("ci-runner") && one.contains("heartbeat-interval"));
        assert!(
            !one.contains("ci-tools"),
            "{shell}: only ci-runner's script"
        );
    }
    // PowerShell allows `using` only before any other statement.
    let o = run_env("ci-tools", &["completions", "powershell"], &[]);
    let script = text(&o.stdout);
    let statements: Vec<&str> = script.lines().filter(|l| !l.trim().is_empty()).collect();
    let usings: Vec<usize> = statements
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("using "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(usings, [0, 1], "{script}");
    // An unknown shell is a usage error on one line that lists the shells.
    let o = run_env("ci-tools", &["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bash, elvish, fish, powershell, zsh"), "{err}");
}

#[test]
fn man_writes_a_page_per_program_and_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("share/man/man1");
    let o = run_env("ci-tools", &["man", "--out", p(&out)], &[]);
    assert!(o.status.success());
    let listed: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    let mut pages: Vec<String> = Program::ALL.iter().map(|p| p.name().to_string()).collect();
    pages.extend(tools_subcommands().iter().map(|s| format!("ci-tools-{s}")));
    let have_man = Command::new("man")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    for page in pages {
        let file = out.join(format!("{page}.1"));
        assert!(listed.contains(&p(&file).to_string()), "{page}: {listed:?}");
        let roff = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(roff.contains(&format!("\n.TH {page} 1 ")), "{page}: {roff}");
        // The footer names the program and its version, subcommands too.
        let program = if page.starts_with("ci-tools") {
            "ci-tools"
        } else {
            page.as_str()
        };
        let footer = format!("\"{program} {}\"", env!("CARGO_PKG_VERSION"));
        assert!(roff.contains(&footer), "{page}: {roff}");
        if have_man {
            let shown = Command::new("man")
                .arg("-l")
                .arg(&file)
                .env("MANPAGER", "cat")
                .env("PAGER", "cat")
                .env("MANWIDTH", "100")
                .output()
                .unwrap();
            assert!(shown.status.success(), "{page}: {}", text(&shown.stderr));
            let shown = text(&shown.stdout);
            assert!(
                shown.contains("NAME") && shown.contains("SYNOPSIS"),
                "{shown}"
            );
        }
    }
    // The flags are in their pages.
    let runner = std::fs::read_to_string(out.join("ci-runner.1")).unwrap();
    assert!(runner.contains("heartbeat\\-interval"), "{runner}");
    assert!(runner.contains("CI_DISPATCHER"), "{runner}");
}

// ---------------------------------------------------------------------------
// Colour
// ---------------------------------------------------------------------------

/// Runs `args` with stdout on a pseudo-terminal (python3's pty; python3 is
/// needed by the example tests anyway); returns what it printed there.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    const PTY: &str = r#"
import os, subprocess, sys
master, slave = os.openpty()
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
os.close(slave)
out = b""
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
sys.stdout.buffer.write(out)
sys.exit(p.wait())
"#;
    let tools = bin("ci-tools");
    let mut full = vec!["-c", PTY, p(&tools)];
    full.extend(args);
    let mut cmd = Command::new("python3");
    cmd.args(&full);
    for var in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "CI_DISPATCHER"] {
        cmd.env_remove(var);
    }
    cmd.env("TERM", "xterm-256color");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    text(&o.stdout)
}

const ESC: char = '\u{1b}';

#[test]
fn outcomes_are_coloured_on_a_terminal_only() {
    let repo = TestRepo::new();
    let d = Dispatcher::start(&repo.dir("data"), &[]);
    let sha = "cd".repeat(20);
    let o = run_env("ci-tools", &["submit", "--dispatcher", d.addr(), &sha], &[]);
    assert!(o.status.success());
    let results = ["results", "--dispatcher", d.addr()];
    let pending = format!("{ESC}[36mpending{ESC}[0m");

    // Into a pipe: plain, whatever --color auto would do on a terminal.
    let o = run_env("ci-tools", &results, &[]);
    let piped = text(&o.stdout);
    assert!(
        piped.contains("pending") && !piped.contains(ESC),
        "{piped:?}"
    );
    // On a terminal: coloured ...
    let tty = on_a_terminal(&results, &[]);
    assert!(tty.contains(&pending), "{tty:?}");
    // ... unless NO_COLOR is set (to anything but the empty string).
    let tty = on_a_terminal(&results, &[("NO_COLOR", "1")]);
    assert!(tty.contains("pending") && !tty.contains(ESC), "{tty:?}");
    let tty = on_a_terminal(&[&results[..], &["--color", "never"]].concat(), &[]);
    assert!(tty.contains("pending") && !tty.contains(ESC), "{tty:?}");
    // CLICOLOR_FORCE colours a pipe; NO_COLOR still wins over it.
    let o = run_env("ci-tools", &results, &[("CLICOLOR_FORCE", "1")]);
    assert!(text(&o.stdout).contains(&pending), "{:?}", text(&o.stdout));
    let o = run_env(
        "ci-tools",
        &results,
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    );
    assert!(!text(&o.stdout).contains(ESC));
    // --color always colours a pipe; never JSON.
    let o = run_env(
        "ci-tools",
        &[&results[..], &["--color", "always"]].concat(),
        &[],
    );
    assert!(text(&o.stdout).contains(&pending), "{:?}", text(&o.stdout));
    for json in [
        vec!["results", "--json"],
        vec!["status", "--json"],
        vec!["replay", "--json"],
    ] {
        let mut args = json.clone();
        args.extend(["--dispatcher", d.addr(), "--color", "always"]);
        let o = run_env("ci-tools", &args, &[("CLICOLOR_FORCE", "1")]);
        assert!(o.status.success(), "{args:?}");
        assert!(!text(&o.stdout).contains(ESC), "{args:?}");
        let tty = on_a_terminal(&args, &[]);
        assert!(!tty.contains(ESC), "{args:?}: {tty:?}");
    }
    // Coloured or not, the columns line up the same.
    let plain = text(&run_env("ci-tools", &results, &[]).stdout);
    let coloured = text(
        &run_env(
            "ci-tools",
            &[&results[..], &["--color", "always"]].concat(),
            &[],
        )
        .stdout,
    );
    assert_eq!(anstream::adapter::strip_str(&coloured).to_string(), plain);
}

// ---------------------------------------------------------------------------
// ci-tools up with tokens
// ---------------------------------------------------------------------------

/// Starts `ci-tools GLOBAL up --listen LISTEN EXTRA...` and returns it with
/// the address it printed. (A test only ever connects to loopback.)
fn start_up(
    repo: &TestRepo,
    global: &[&str],
    listen: &str,
    extra: &[&str],
    label: &str,
) -> (Proc, String) {
    let data = repo.root().join(format!("{label}-data"));
    let mut args: Vec<&str> = global.to_vec();
    args.extend([
        "up",
        "--repo",
        repo.url(),
        "--data-dir",
        p(&data),
        "--listen",
        listen,
        "--interval",
        "0.25",
        "--branch",
        "main",
    ]);
    args.extend(extra);
    let mut up = Proc::spawn("ci-tools", &args, repo.root(), label);
    let addr = wait_for("`up` to print its address", SHORT, || {
        if let Some(status) = up.try_exit() {
            panic!("up exited ({status:?}) before listening");
        }
        let out = up.stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("listening on "))
            .map(|a| a.trim().to_string())
            .ok_or(out)
    });
    (up, addr)
}

#[test]
fn up_with_a_token_file_refuses_clients_without_the_token() {
    let repo = TestRepo::new();
    let sha = repo.commit_passing(1).remove(0);
    let tokens = repo.root().join("dispatcher.tokens");
    let tool = repo.root().join("tool.token");
    let write = |path: &Path, content: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write(
        &tokens,
        "runner: runner-secret-0123456789abcdef\n\
         observer: observer-secret-0123456789abcdef\n\
         tool: tool-secret-0123456789abcdef\n",
    );
    write(&tool, "tool-secret-0123456789abcdef\n");
    let (mut up, addr) = start_up(
        &repo,
        &["--token-file", p(&tokens)],
        "127.0.0.1:0",
        &[],
        "up",
    );

    // Without the token: refused, on one line.
    let o = run_env("ci-tools", &["status", "--dispatcher", &addr], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("requires a token"), "{err}");
    // With it (its own file, or the role file itself): served.
    for token in [&tool, &tokens] {
        let o = run_env(
            "ci-tools",
            &[
                "--token-file",
                p(token),
                "status",
                "--dispatcher",
                &addr,
                "--json",
            ],
            &[],
        );
        assert!(o.status.success());
    }
    // The in-process observer and runners proved their roles' lines: the
    // commit was seen and tested.
    let results = wait_for("the commit to pass", LONG, || {
        let o = run_env(
            "ci-tools",
            &[
                "--token-file",
                p(&tool),
                "results",
                "--dispatcher",
                &addr,
                "--json",
            ],
            &[],
        );
        let out = text(&o.stdout);
        let results: Vec<serde_json::Value> =
            serde_json::from_str(&out).map_err(|_| out.clone())?;
        match outcome_of(&results, &sha) {
            Some("pass") => Ok(results),
            _ => Err(out),
        }
    });
    assert_eq!(results.len(), 1);
    up.sigterm();
    assert_eq!(up.wait_exit(SHORT).code(), Some(0));
}

#[test]
fn up_says_what_is_wrong_with_its_token_file_and_listen_address() {
    let repo = TestRepo::new();
    repo.commit_passing(1);
    let data = repo.root().join("data");
    // A role file without a runner line cannot serve up's runners.
    let tokens = repo.root().join("observer-only.tokens");
    std::fs::write(&tokens, "observer: observer-secret-0123456789abcdef\n").unwrap();
    let o = run_env(
        "ci-tools",
        &[
            "--token-file",
            p(&tokens),
            "up",
            "--repo",
            repo.url(),
            "--data-dir",
            p(&data),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("no line for role runner"), "{err}");
    assert!(err.contains(p(&tokens)), "{err}");
    // Beyond loopback without tokens: refused, naming both ways out ...
    let o = run_env(
        "ci-tools",
        &[
            "up",
            "--repo",
            repo.url(),
            "--data-dir",
            p(&data),
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("--token-file") && err.contains("--insecure"),
        "{err}"
    );
    // ... and started with --insecure, saying what that means.
    let (mut up, addr) = start_up(&repo, &[], "0.0.0.0:0", &["--insecure"], "up");
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    assert!(up.stderr().contains("every client that can reach"));
    up.sigterm();
    assert_eq!(up.wait_exit(SHORT).code(), Some(0));
}

/// `up --http` serves the dashboard too, printing where (as
/// `ci-dispatcher --http` does): the commits page shows what ran.
#[test]
fn up_with_http_serves_the_dashboard() {
    let repo = TestRepo::new();
    let sha = repo.commit_passing(1).remove(0);
    let (mut up, addr) = start_up(
        &repo,
        &[],
        "127.0.0.1:0",
        &["--http", "127.0.0.1:0"],
        "up-http",
    );
    let http = printed_http_addr(&up);
    let results = wait_final(&addr, &[&sha], LONG);
    assert_eq!(outcome_of(&results, &sha), Some("pass"));
    let (status, body) = http_get(&http, "/", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("id=\"commits\""), "{body}");
    assert!(body.contains(&format!("data-sha=\"{sha}\"")), "{body}");
    up.sigterm();
    assert_eq!(up.wait_exit(SHORT).code(), Some(0));
}
