//! Small shared helpers: wall-clock milliseconds, duration flags, tracing setup.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; the shell's only clock for the core.
/// Lower-case hexadecimal of `bytes` (signatures, tokens, keys).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses a SECS flag: a non-negative number of seconds, fractions allowed
/// (`0.5`), at most a day.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(format!(
            "{s:?} must be more than 0 and at most 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Logs go to stderr through tracing; `RUST_LOG` wins over `-v`. Daemons
/// log at info by default; tools only warn, so their output stays readable.
pub fn init_tracing(verbose: u8, daemon: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // sled reports each failed write itself, several lines at a time; the
    // dispatcher says once what failed and what to do (`-vv` or RUST_LOG
    // shows sled's own lines).
    let default = match verbose {
        0 if !daemon => "warn,sled=off",
        0 => "warn,ci=info,sled=off",
        1 => "info,ci=debug,sled=off",
        _ => "debug,ci=trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        // sled stays quiet unless asked for by name.
        Ok(v) if !v.contains("sled") => EnvFilter::try_new(format!("{v},sled=off")),
        Ok(v) => EnvFilter::try_new(v),
        Err(_) => EnvFilter::try_new(default),
    }
    .unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // A closed stderr (the terminal went away, a supervisor's pipe
        // closed) must not stop a daemon: by default tracing-subscriber
        // reports a failed write with `eprintln!`, which panics there.
        .log_internal_errors(false)
        .try_init();
}
