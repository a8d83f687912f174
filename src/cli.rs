//! What every binary shares at its edge: its flags (one module per
//! program, so `ci-tools man` and `ci-tools completions` see the same
//! definitions), the runtime, signals, and turning errors into one line on
//! stderr and exit code 2 (never a panic trace).

pub mod dispatcher;
pub mod docs;
pub mod git;
pub mod observer;
pub mod runner;
pub mod tools;

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

/// Where clients find the dispatcher when neither `--dispatcher` nor
/// [`DISPATCHER_ENV`] says: the dispatcher's own default `--listen`.
pub const DEFAULT_DISPATCHER: &str = "127.0.0.1:8765";

/// The environment variable `--dispatcher` defaults to.
pub const DISPATCHER_ENV: &str = "CI_DISPATCHER";

/// `--dispatcher ADDR`, the same on every program that talks to a
/// dispatcher. One address for now (several, comma-separated, is issue 14).
#[derive(clap::Args, Clone, Debug)]
pub struct DispatcherAddr {
    /// The dispatcher's address, HOST:PORT.
    #[arg(
        id = "dispatcher",
        long = "dispatcher",
        env = DISPATCHER_ENV,
        default_value = DEFAULT_DISPATCHER,
        value_name = "ADDR"
    )]
    pub addr: String,
}

/// Writes one line to stderr, ignoring a failed write: `eprintln!` panics
/// when stderr is closed, and a daemon must outlive its terminal.
pub fn stderr_line(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Whether `e` is, at bottom, a write to a closed pipe (`ci-tools replay |
/// head`). For a tool the reader has what it wanted, so that is not an
/// error; a daemon that cannot print its address still fails.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs `main` on a multi-threaded runtime. `Ok(code)` is returned as is;
/// an error is printed as `NAME: error: ...` and exits 2.
pub fn run<F>(name: &str, main: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<ExitCode>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            stderr_line(format_args!(
                "{name}: error: cannot start the async runtime: {e}"
            ));
            return ExitCode::from(2);
        }
    };
    match rt.block_on(main) {
        Ok(code) => code,
        Err(e) => {
            stderr_line(format_args!("{name}: error: {}", one_line(&e)));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause only if the text so far
/// does not already say it (many of our errors quote their cause).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Parses the command line; a usage error becomes one line on stderr
/// ([`usage_line`]) and exit 2. `--help` and `--version` print as usual and
/// exit 0.
pub fn parse_args<T: clap::Parser>(name: &str) -> Result<T, ExitCode> {
    parse_args_and_matches(name).map(|(args, _)| args)
}

/// As [`parse_args`], also giving clap's matches, for a program that needs
/// to know where a value came from (the command line, the environment or a
/// default).
pub fn parse_args_and_matches<T: clap::Parser>(
    name: &str,
) -> Result<(T, clap::ArgMatches), ExitCode> {
    let matches = T::command()
        .try_get_matches()
        .map_err(|e| usage_error(name, e))?;
    let args = T::from_arg_matches(&matches)
        .map_err(|e| usage_error(name, e.format(&mut T::command())))?;
    Ok((args, matches))
}

fn usage_error(name: &str, e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            stderr_line(format_args!(
                "{}",
                usage_line(name, &e.render().to_string())
            ));
            ExitCode::from(2)
        }
    }
}

/// clap's rendered usage error as one line: `NAME: error: WHAT; tip: ...;
/// see COMMAND --help`. What clap lists under its first line (the missing
/// arguments, the possible values) stays on the line, and so do its tips
/// (`a similar subcommand exists: 'status'`); its usage block goes, except
/// for the (sub)command whose `--help` to see.
pub fn usage_line(name: &str, rendered: &str) -> String {
    let mut line = String::new();
    let mut command = name.to_string();
    for raw in rendered.lines() {
        let text = raw.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(usage) = text.strip_prefix("Usage:") {
            let words: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['-', '<', '[']))
                .collect();
            if !words.is_empty() {
                command = words.join(" ");
            }
            break;
        }
        if text.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            line.push_str(text.strip_prefix("error: ").unwrap_or(text));
        } else if text.starts_with("tip:") {
            line.push_str("; ");
            line.push_str(text);
        } else if line.ends_with(':') || text.starts_with('[') {
            line.push(' ');
            line.push_str(text);
        } else {
            line.push_str(", ");
            line.push_str(text);
        }
    }
    if line.is_empty() {
        line.push_str("invalid arguments");
    }
    format!("{name}: error: {line}; see {command} --help")
}

/// A named repository as the flags give it: `NAME=URL_OR_PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedRepo {
    pub name: String,
    pub url: String,
}

/// `--repository NAME=URL` (the dispatcher) and `--repo NAME=URL` (a
/// runner): the name follows `core::ids::validate_repository_name`.
pub fn parse_named_repo(s: &str) -> Result<NamedRepo, String> {
    let Some((name, url)) = s.split_once('=') else {
        return Err(format!("{s:?} is not NAME=URL"));
    };
    crate::core::ids::validate_repository_name(name).map_err(|e| e.to_string())?;
    if url.is_empty() {
        return Err(format!("repository {name} has no URL or path after ="));
    }
    Ok(NamedRepo {
        name: name.to_string(),
        url: url.to_string(),
    })
}

/// `--repository NAME` of the observer and the tools.
pub fn parse_repository_name(s: &str) -> Result<String, String> {
    crate::core::ids::validate_repository_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A runner's `--repo`: `NAME=URL` when what comes before the first `=`
/// is a repository name (so `https://...?a=b` and `/path/a=b` are
/// plain URLs; write a relative path with `=` as `./a=b`), else the
/// default repository's URL or path.
pub fn parse_runner_repo(s: &str) -> Result<(Option<String>, String), String> {
    match s.split_once('=') {
        Some((name, _)) if crate::core::ids::validate_repository_name(name).is_ok() => {
            let r = parse_named_repo(s)?;
            Ok((Some(r.name), r.url))
        }
        _ if s.is_empty() => Err("an empty --repo".into()),
        _ => Ok((None, s.to_string())),
    }
}

/// A client's secret for `role`: `--token-file` (or `CI_TOKEN_FILE`), else
/// `CI_TOKEN`, else none.
pub fn client_token(
    file: Option<&std::path::Path>,
    role: crate::proto::Role,
) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(crate::proto::auth::client_token(file, role)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_argument_is_named_on_the_line() {
        let rendered = "error: the following required arguments were not provided:\n  --repo <URL_OR_PATH>\n  --work-dir <DIR>\n\nUsage: ci-runner --repo <URL_OR_PATH> --work-dir <DIR>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line("ci-runner", rendered),
            "ci-runner: error: the following required arguments were not provided: --repo <URL_OR_PATH>, --work-dir <DIR>; see ci-runner --help"
        );
    }

    #[test]
    fn a_tip_stays_and_the_subcommand_is_named() {
        let rendered = "error: unexpected argument '--jsn' found\n\n  tip: a similar argument exists: '--json'\n\nUsage: ci-tools status --json\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line("ci-tools", rendered),
            "ci-tools: error: unexpected argument '--jsn' found; tip: a similar argument exists: '--json'; see ci-tools status --help"
        );
    }

    #[test]
    fn the_flags_of_every_program_are_consistent() {
        use clap::CommandFactory;
        dispatcher::Args::command().debug_assert();
        runner::Args::command().debug_assert();
        observer::Args::command().debug_assert();
        tools::Args::command().debug_assert();
    }
}
