//! What every binary shares at its edge: the runtime, signals, and turning
//! errors into one line on stderr and exit code 2 (never a panic trace).

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

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
/// (`NAME: error: ...; see NAME --help`) and exit 2. `--help` and
/// `--version` print as usual and exit 0.
pub fn parse_args<T: clap::Parser>(name: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(args) => Ok(args),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return Err(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        ExitCode::from(2)
                    } else {
                        ExitCode::SUCCESS
                    },
                );
            }
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            stderr_line(format_args!("{name}: error: {first}; see {name} --help"));
            Err(ExitCode::from(2))
        }
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
