//! Reads the summary Python's unittest prints at the end of a run
//! ("Ran 3 tests in 0.002s" then "OK" or "FAILED (failures=1)").
//!
//! The counts are a convenience for people reading results; the outcome of
//! a job comes from the exit code alone, so anything unrecognised here is
//! simply `None`.

use crate::core::TestCounts;

/// The parts of the last summary in the output.
struct Summary<'a> {
    /// "Ran 3 tests", without the timing.
    ran: &'a str,
    total: u32,
    /// "OK", "FAILED (failures=1)", "NO TESTS RAN"...
    status: &'a str,
}

/// Parses "Ran N test(s) in X.XXXs"; returns ("Ran N tests", N).
fn parse_ran(line: &str) -> Option<(&str, u32)> {
    let rest = line.strip_prefix("Ran ")?;
    let (n, rest) = rest.split_once(' ')?;
    let total = n.parse().ok()?;
    let word_len = if rest.starts_with("tests ") {
        "tests".len()
    } else if rest.starts_with("test ") {
        "test".len()
    } else {
        return None;
    };
    let timing = rest[word_len..].strip_prefix(" in ")?;
    let secs = timing.strip_suffix('s')?;
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let ran_len = "Ran ".len() + n.len() + 1 + word_len;
    Some((&line[..ran_len], total))
}

fn find_summary(output: &str) -> Option<Summary<'_>> {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let (idx, (ran, total)) = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| parse_ran(l).map(|r| (i, r)))?;
    let status = lines[idx + 1..].iter().copied().find(|l| !l.is_empty())?;
    let known = ["OK", "FAILED", "NO TESTS RAN"]
        .iter()
        .any(|s| status == *s || status.starts_with(&format!("{s} (")));
    known.then_some(Summary { ran, total, status })
}

/// Counts from the last unittest summary in `output`, or `None` when there
/// is none (not unittest, or killed before it finished).
///
/// Unexpected successes count as failures (unittest fails the run for
/// them); expected failures count as passed.
pub fn parse_summary(output: &str) -> Option<TestCounts> {
    let s = find_summary(output)?;
    let mut counts = TestCounts {
        total: s.total,
        ..TestCounts::default()
    };
    if let Some(open) = s.status.find('(') {
        let inner = s.status[open + 1..].strip_suffix(')')?;
        for item in inner.split(',') {
            let (key, value) = item.trim().split_once('=')?;
            let value: u32 = value.trim().parse().ok()?;
            match key.trim() {
                "failures" | "unexpected successes" => {
                    counts.failed = counts.failed.saturating_add(value)
                }
                "errors" => counts.errors = value,
                "skipped" => counts.skipped = value,
                _ => {}
            }
        }
    }
    counts.passed = counts
        .total
        .saturating_sub(counts.failed)
        .saturating_sub(counts.errors)
        .saturating_sub(counts.skipped);
    Some(counts)
}

/// One line for a job's message, e.g. "Ran 3 tests: FAILED (failures=1)".
pub fn summary_line(output: &str) -> Option<String> {
    let s = find_summary(output)?;
    Some(format!("{}: {}", s.ran, s.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: u32, passed: u32, failed: u32, errors: u32, skipped: u32) -> TestCounts {
        TestCounts {
            total,
            passed,
            failed,
            errors,
            skipped,
        }
    }

    const RULE: &str = "----------------------------------------------------------------------";

    fn out(ran: &str, status: &str) -> String {
        format!("..F\n{RULE}\n{ran}\n\n{status}\n")
    }

    #[test]
    fn ok() {
        let o = out("Ran 3 tests in 0.002s", "OK");
        assert_eq!(parse_summary(&o), Some(counts(3, 3, 0, 0, 0)));
        assert_eq!(summary_line(&o).as_deref(), Some("Ran 3 tests: OK"));
    }

    #[test]
    fn one_test() {
        let o = out("Ran 1 test in 0.000s", "OK");
        assert_eq!(parse_summary(&o), Some(counts(1, 1, 0, 0, 0)));
        assert_eq!(summary_line(&o).as_deref(), Some("Ran 1 test: OK"));
    }

    #[test]
    fn ok_with_skips() {
        let o = out("Ran 5 tests in 0.010s", "OK (skipped=2)");
        assert_eq!(parse_summary(&o), Some(counts(5, 3, 0, 0, 2)));
    }

    #[test]
    fn failed() {
        let o = out("Ran 3 tests in 0.002s", "FAILED (failures=1)");
        assert_eq!(parse_summary(&o), Some(counts(3, 2, 1, 0, 0)));
        assert_eq!(
            summary_line(&o).as_deref(),
            Some("Ran 3 tests: FAILED (failures=1)")
        );
    }

    #[test]
    fn failed_with_everything() {
        let o = out(
            "Ran 10 tests in 1.234s",
            "FAILED (failures=1, errors=2, skipped=1, expected failures=1, unexpected successes=1)",
        );
        assert_eq!(parse_summary(&o), Some(counts(10, 5, 2, 2, 1)));
    }

    #[test]
    fn counts_never_underflow() {
        // Errors in setUpModule are counted without tests having run.
        let o = out("Ran 0 tests in 0.000s", "FAILED (errors=1)");
        assert_eq!(parse_summary(&o), Some(counts(0, 0, 0, 1, 0)));
    }

    #[test]
    fn no_tests_ran() {
        let o = out("Ran 0 tests in 0.000s", "NO TESTS RAN");
        assert_eq!(parse_summary(&o), Some(counts(0, 0, 0, 0, 0)));
    }

    #[test]
    fn last_summary_wins_and_crlf_is_fine() {
        let o = format!(
            "{}{}",
            out("Ran 2 tests in 0.1s", "OK"),
            out("Ran 4 tests in 0.1s", "FAILED (errors=1)").replace('\n', "\r\n")
        );
        assert_eq!(parse_summary(&o), Some(counts(4, 3, 0, 1, 0)));
    }

    #[test]
    fn no_summary() {
        assert_eq!(parse_summary(""), None);
        assert_eq!(parse_summary("make: *** [all] Error 1\n"), None);
        // Killed between the "Ran" line and the status.
        assert_eq!(
            parse_summary(&format!("{RULE}\nRan 3 tests in 0.1s\n")),
            None
        );
        assert_eq!(summary_line("Ran away\nOK\n"), None);
        assert_eq!(
            parse_summary("Ran 3 tests in 0.1s\n\nFAILED (failures=x)\n"),
            None
        );
    }
}
