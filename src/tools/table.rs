//! Aligned tables for people (outcomes coloured on a terminal), and time
//! formatting without a calendar crate.
//!
//! Colour follows `--color WHEN` ([`Colour`]); with `auto`, standard output
//! is coloured only on a terminal, never when `NO_COLOR` is set
//! (<https://no-color.org>), always when `CLICOLOR_FORCE` is (anstream's
//! rules, which clap's own help follows too). JSON output never goes
//! through here.

use anstream::ColorChoice;
use anstyle::{AnsiColor, Style};

/// When to colour what the tools print for people (`ci-tools --color WHEN`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Colour {
    // Plain comments, not docs: clap would list them under `--color` and
    // turn every program's short help into the long layout.
    // On a terminal, unless NO_COLOR is set; CLICOLOR_FORCE forces it.
    #[default]
    Auto,
    // Always, even into a pipe or a file.
    Always,
    Never,
}

impl Colour {
    /// Makes this the process's choice: [`render`] follows it, and so does
    /// clap's help. Set once, by `ci-tools` from `--color`.
    pub fn set_global(self) {
        match self {
            Colour::Auto => ColorChoice::Auto,
            Colour::Always => ColorChoice::Always,
            Colour::Never => ColorChoice::Never,
        }
        .write_global();
    }

    /// The process's choice ([`Colour::set_global`]), `Auto` unless set.
    pub fn global() -> Colour {
        match ColorChoice::global() {
            ColorChoice::Auto => Colour::Auto,
            ColorChoice::Always | ColorChoice::AlwaysAnsi => Colour::Always,
            ColorChoice::Never => Colour::Never,
        }
    }

    /// Whether what goes to standard output is coloured in this mode.
    pub fn enabled(self) -> bool {
        match self {
            Colour::Always => true,
            Colour::Never => false,
            Colour::Auto => anstream::AutoStream::choice(&std::io::stdout()) != ColorChoice::Never,
        }
    }
}

/// The colour of an outcome: pass green, fail and error red, timeout
/// yellow, running and pending cyan, cancelled grey; anything else plain.
pub fn outcome_style(outcome: &str) -> Option<Style> {
    let colour = match outcome {
        "pass" => AnsiColor::Green,
        "fail" | "error" => AnsiColor::Red,
        "timeout" => AnsiColor::Yellow,
        "running" | "pending" => AnsiColor::Cyan,
        "cancelled" => AnsiColor::BrightBlack,
        _ => return None,
    };
    Some(colour.on_default())
}

/// The colour of a runner's state in `status`: busy cyan (as a running
/// job), lost yellow (its job waits for it or goes elsewhere); idle plain.
pub fn runner_state_style(state: &str) -> Option<Style> {
    match state {
        "busy" => Some(AnsiColor::Cyan.on_default()),
        "lost" => Some(AnsiColor::Yellow.on_default()),
        _ => None,
    }
}

/// `outcome` as a table cell, coloured when `colour` says so. [`render`]
/// already colours a column headed `OUTCOME` this way; this is for cells
/// built elsewhere (it measures cells without their escape codes).
pub fn outcome_cell(outcome: &str, colour: Colour) -> String {
    paint(outcome, outcome_style(outcome), colour.enabled())
}

fn paint(text: &str, style: Option<Style>, on: bool) -> String {
    match style {
        Some(style) if on => format!("{style}{text}{style:#}"),
        _ => text.to_string(),
    }
}

/// The characters a cell shows on a terminal: escape codes take no room.
fn visible_width(cell: &str) -> usize {
    anstream::adapter::strip_str(cell)
        .map(|s| s.chars().count())
        .sum()
}

/// Renders rows under a header, columns padded to their widest cell, in
/// the process's colour mode ([`Colour::global`]).
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    render_with(header, rows, Colour::global())
}

/// [`render`] in the given colour mode. A column headed `OUTCOME` is
/// coloured by [`outcome_style`], one headed `STATE` by
/// [`runner_state_style`]; the header itself stays plain.
pub fn render_with(header: &[&str], rows: &[Vec<String>], colour: Colour) -> String {
    let on = colour.enabled();
    let styles: Vec<fn(&str) -> Option<Style>> = header
        .iter()
        .map(|h| match *h {
            "OUTCOME" => outcome_style,
            "STATE" => runner_state_style,
            _ => |_: &str| None,
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| visible_width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(visible_width(cell));
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, coloured: bool, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            match styles.get(i) {
                Some(style) if coloured => out.push_str(&paint(c, style(c), on)),
                _ => out.push_str(c),
            }
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(visible_width(c)) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header.to_vec(), false, &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), true, &mut out);
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
pub fn format_ms(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let ms = at_ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Milliseconds as a short human duration: `850ms`, `12.3s`, `4m05s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_ms(1_764_130_000_123), "2025-11-26 04:06:40.123");
    }

    #[test]
    fn columns_align() {
        let t = render(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn outcomes_have_their_colours_when_forced() {
        let cases = [
            ("pass", "\x1b[32m"),
            ("fail", "\x1b[31m"),
            ("error", "\x1b[31m"),
            ("timeout", "\x1b[33m"),
            ("running", "\x1b[36m"),
            ("pending", "\x1b[36m"),
            ("cancelled", "\x1b[90m"),
        ];
        for (outcome, code) in cases {
            assert_eq!(
                outcome_cell(outcome, Colour::Always),
                format!("{code}{outcome}\x1b[0m")
            );
            assert_eq!(outcome_cell(outcome, Colour::Never), outcome);
        }
        assert_eq!(
            outcome_cell("something-new", Colour::Always),
            "something-new"
        );
    }

    #[test]
    fn coloured_columns_still_align() {
        let header = ["COMMIT", "OUTCOME", "RUNNER"];
        let rows = vec![
            vec!["abc".into(), "pass".into(), "r1".into()],
            vec!["def".into(), "timeout".into(), "r2".into()],
        ];
        let plain = render_with(&header, &rows, Colour::Never);
        assert_eq!(
            plain,
            "COMMIT  OUTCOME  RUNNER\nabc     pass     r1\ndef     timeout  r2\n"
        );
        assert!(!plain.contains('\x1b'));
        let coloured = render_with(&header, &rows, Colour::Always);
        assert_eq!(
            coloured,
            "COMMIT  OUTCOME  RUNNER\n\
             abc     \x1b[32mpass\x1b[0m     r1\n\
             def     \x1b[33mtimeout\x1b[0m  r2\n"
        );
        assert_eq!(anstream::adapter::strip_str(&coloured).to_string(), plain);
        // Cells coloured by the caller are measured without their codes.
        let rows = vec![vec![
            "abc".into(),
            outcome_cell("fail", Colour::Always),
            "r1".into(),
        ]];
        let t = render_with(&header, &rows, Colour::Never);
        assert_eq!(
            anstream::adapter::strip_str(&t).to_string(),
            "COMMIT  OUTCOME  RUNNER\nabc     fail     r1\n"
        );
    }

    #[test]
    fn runner_states_in_status() {
        let rows = vec![
            vec!["r1".into(), "busy".into()],
            vec!["r2".into(), "lost".into()],
            vec!["r3".into(), "idle".into()],
        ];
        let t = render_with(&["RUNNER", "STATE"], &rows, Colour::Always);
        assert!(t.contains("\x1b[36mbusy\x1b[0m"), "{t:?}");
        assert!(t.contains("\x1b[33mlost\x1b[0m"), "{t:?}");
        assert!(t.contains("r3      idle\n"), "{t:?}");
    }
}
