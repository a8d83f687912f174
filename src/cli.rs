//! What every binary shares at its edge: the runtime, signals, and turning
//! errors into one line on stderr and exit code 2 (never a panic trace).

use std::future::Future;
use std::process::ExitCode;

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
            eprintln!("{name}: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(main) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::from(2)
        }
    }
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

/// Reads a token file: its content without surrounding whitespace; an
/// empty or unreadable file is an error naming the file.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&raw);
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(token.as_bytes().to_vec())
}
