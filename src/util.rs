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

/// A retention age (`--keep-outputs-for`): `forever` (no age limit), a
/// number of seconds (`3600`, `0.5`), or a duration with units as
/// humantime reads them (`30d`, `12h`, `90days`, `1h 30m`). `None` is
/// forever. Zero is refused: it would prune every output as it is
/// stored, surely a mistake (use `--keep-outputs-bytes` to keep little).
pub fn parse_keep_for(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    let d = match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v <= u64::MAX as f64 / 1000.0 => {
            Duration::from_secs_f64(v)
        }
        Ok(_) => {
            return Err(format!(
                "{s:?} is not a usable number of seconds; e.g. 30d, 12h, 3600 or forever"
            ));
        }
        Err(_) => humantime::parse_duration(t).map_err(|e| {
            format!("{s:?} is not a duration ({e}); e.g. 30d, 12h, 3600 (seconds) or forever")
        })?,
    };
    if d.is_zero() {
        return Err(format!(
            "{s:?} would prune every output at once; e.g. 30d, 12h, or forever for no age limit"
        ));
    }
    Ok(Some(d))
}

/// A retention size (`--keep-outputs-bytes`): `unlimited`, a number of
/// bytes, or one with a binary unit: `K`, `M`, `G`, `T` (also written
/// `KiB`... `TiB`), powers of 1024 as `dd` and docker read them, so
/// `10G` is 10 GiB. `KB`, `MB`... are refused as ambiguous (1000 or
/// 1024?). `None` is unlimited; zero is refused as for the age.
pub fn parse_keep_bytes(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let example = "e.g. 500M, 10G, 1048576 or unlimited";
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "{s:?}: {unit} is ambiguous (1000 or 1024?); write {}{} or {}{}iB, powers of 1024",
                number,
                &unit[..1].to_ascii_uppercase(),
                number,
                &unit[..1].to_ascii_uppercase()
            ));
        }
        _ => return Err(format!("{s:?} is not a size; {example}")),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size; {example}"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large; {example}"));
    }
    let bytes = bytes as u64;
    if bytes == 0 {
        return Err(format!("{s:?} would prune every output at once; {example}"));
    }
    Ok(Some(bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_ages_take_seconds_units_and_forever() {
        assert_eq!(parse_keep_for("forever"), Ok(None));
        assert_eq!(parse_keep_for("3600"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(parse_keep_for("2s"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(
            parse_keep_for("30d"),
            Ok(Some(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(parse_keep_for("12h"), Ok(Some(Duration::from_secs(43_200))));
        for bad in ["0", "0s", "-1", "soon", "12x", ""] {
            let e = parse_keep_for(bad).unwrap_err();
            assert!(e.contains("e.g."), "{bad}: {e}");
        }
    }

    #[test]
    fn retention_sizes_take_binary_units_and_unlimited() {
        assert_eq!(parse_keep_bytes("unlimited"), Ok(None));
        assert_eq!(parse_keep_bytes("1000"), Ok(Some(1000)));
        assert_eq!(parse_keep_bytes("500M"), Ok(Some(500 << 20)));
        assert_eq!(parse_keep_bytes("10G"), Ok(Some(10 << 30)));
        assert_eq!(parse_keep_bytes("10GiB"), Ok(Some(10 << 30)));
        assert_eq!(parse_keep_bytes("1.5k"), Ok(Some(1536)));
        assert!(
            parse_keep_bytes("10GB")
                .unwrap_err()
                .contains("10G or 10GiB")
        );
        for bad in ["0", "0M", "-5", "lots", "5X", "", "M"] {
            let e = parse_keep_bytes(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }
}
