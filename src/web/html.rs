//! Text made safe for a page, and the page around it: HTML escaping,
//! ANSI escape sequences stripped from output, the layout with its nav,
//! the outcome badge, and the static stylesheet and script (served from
//! `/static/`, so the Content-Security-Policy allows no inline script).

use std::fmt::Write as _;

use crate::tools::table::{format_duration_ms, format_ms};

/// `s` with `& < > " '` replaced by entities: safe as element text and
/// inside a quoted attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Terminal output as plain text: ANSI escape sequences (CSI `ESC [ ...
/// final`, OSC `ESC ] ... BEL|ESC \`, `ESC ( B` and two-character `ESC x`) removed,
/// carriage returns and other control characters but `\n` and `\t`
/// dropped. The result still needs [`escape`].
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte.
                    for c in it.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') | Some('P') | Some('_') | Some('^') => {
                    // A string, ended by BEL or ST (ESC \).
                    while let Some(c) = it.next() {
                        if c == '\u{07}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            if it.peek() == Some(&'\\') {
                                it.next();
                            }
                            break;
                        }
                    }
                }
                Some(c) if (' '..='/').contains(&c) => {
                    // nF: intermediates, then one final character.
                    for c in it.by_ref() {
                        if !(' '..='/').contains(&c) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\u{9b}' => {
                // The one-character CSI.
                for c in it.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Output bytes as page text: lossy UTF-8, ANSI stripped, escaped.
pub fn output_text(bytes: &[u8]) -> String {
    escape(&strip_ansi(&String::from_utf8_lossy(bytes)))
}

/// The time a page shows (UTC).
pub fn time(ms: u64) -> String {
    format_ms(ms)
}

pub fn duration(ms: Option<u64>) -> String {
    ms.map(format_duration_ms).unwrap_or_else(|| "—".into())
}

/// A whole page: head, nav, `body`. `csrf` (when actions are possible)
/// goes into a meta element the script reads; `body_attrs` are extra
/// attributes of `<body>` (already escaped).
pub fn layout(title: &str, csrf: Option<&str>, body_attrs: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · ci</title><link rel=\"stylesheet\" href=\"/static/app.css\">",
        escape(title)
    );
    if let Some(t) = csrf {
        let _ = write!(out, "<meta name=\"ci-csrf\" content=\"{}\">", escape(t));
    }
    let _ = writeln!(
        out,
        "<script src=\"/static/app.js\" defer></script></head><body{body_attrs}>\
         <nav><a href=\"/\">Commits</a> <a href=\"/runners\">Runners</a> \
         <a href=\"/history\">History</a></nav><main>{body}</main></body></html>"
    );
    out
}

/// The stylesheet (`/static/app.css`).
pub const APP_CSS: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
nav{background:#263238;padding:.6em 1em}
nav a{color:#fff;margin-right:1.2em;text-decoration:none;font-weight:600}
main{padding:1em}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#eceff1}
code,pre{font-family:ui-monospace,monospace}
pre#log{background:#111;color:#eee;padding:.8em;overflow:auto;max-height:70vh;white-space:pre-wrap}
p.pruned{background:#fff8e1;border-left:4px solid #f9a825;padding:.6em .8em;color:#5d4037}
.badge{padding:.1em .5em;border-radius:.6em;color:#fff;font-weight:600;font-size:.85em}
.badge.outcome-pass{background:#2e7d32}.badge.outcome-fail,.badge.outcome-error{background:#c62828}
.badge.outcome-timeout{background:#f9a825}.badge.outcome-running,.badge.outcome-pending{background:#0277bd}
.badge.outcome-cancelled{background:#757575}
tr.commit.outcome-fail,tr.commit.outcome-error{background:#fff5f5}
tr.commit.outcome-running,tr.commit.outcome-pending{background:#f3f9fd}
tr.commit td.outcome{font-weight:600}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
#broke{background:#ffebee;border-left:4px solid #c62828;padding:.5em}
form#filters{margin-bottom:1em}
.error{color:#c62828}
"#;

/// The script (`/static/app.js`): refreshes the commits table, follows a
/// running job's log over server-sent events, and posts cancel/retry
/// with the page's CSRF token.
pub const APP_JS: &str = r#"
"use strict";
(function () {
  function csrf() {
    var m = document.querySelector('meta[name="ci-csrf"]');
    return m ? m.getAttribute("content") : "";
  }
  // ANSI escape sequences and stray control characters out of output.
  var ANSI = /\u001b\[[0-?]*[ -\/]*[@-~]|\u001b\][^\u0007\u001b]*(\u0007|\u001b\\)?|\u001b[@-_]|[\u0000-\u0008\u000b-\u001f\u007f\u240d]/g;
  function clean(s) { return s.replace(ANSI, ""); }

  // Commits page: re-fetch the table every few seconds.
  var table = document.getElementById("commits");
  var every = document.body.getAttribute("data-refresh");
  if (table && every) {
    setInterval(function () {
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (t) {
          if (!t) return;
          var doc = new DOMParser().parseFromString(t, "text/html");
          var fresh = doc.getElementById("commits");
          var now = document.getElementById("commits");
          if (fresh && now) now.replaceWith(document.importNode(fresh, true));
        })
        .catch(function () {});
    }, Number(every) * 1000);
  }

  // Commit page: live log and the buttons.
  var log = document.getElementById("log");
  var outcome = document.getElementById("outcome");
  function finished(view) {
    if (outcome && view && view.outcome) {
      outcome.textContent = view.outcome;
      outcome.className = "badge outcome-" + view.outcome;
    }
    var c = document.getElementById("cancel");
    var r = document.getElementById("retry");
    var write = document.body.getAttribute("data-write") === "1";
    if (c) c.disabled = true;
    if (r) r.disabled = !write;
  }
  if (log && log.getAttribute("data-live") === "1") {
    var url = log.getAttribute("data-src");
    var es = new EventSource(url);
    es.onmessage = function (e) {
      log.appendChild(document.createTextNode(clean(e.data + "")));
    };
    es.addEventListener("attempt", function (e) {
      log.appendChild(document.createTextNode("\n--- attempt " + e.data + " ---\n"));
    });
    es.addEventListener("status", function (e) {
      try {
        var v = JSON.parse(e.data);
        if (outcome && v.outcome) { outcome.textContent = v.outcome; outcome.className = "badge outcome-" + v.outcome; }
      } catch (x) {}
    });
    es.addEventListener("end", function (e) {
      es.close();
      try { finished(JSON.parse(e.data)); } catch (x) {}
    });
  }
  function act(kind) {
    var sha = document.body.getAttribute("data-sha");
    var msg = document.getElementById("action-message");
    fetch("/api/v1/commits/" + sha + "/" + kind, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CI-CSRF": csrf() }
    }).then(function (r) {
      return r.json().then(function (j) {
        if (msg) msg.textContent = j.message || j.error || "";
        if (r.ok) setTimeout(function () { window.location.reload(); }, 300);
      });
    }).catch(function (x) { if (msg) msg.textContent = String(x); });
  }
  ["cancel", "retry"].forEach(function (kind) {
    var b = document.getElementById(kind);
    if (b) b.addEventListener("click", function () { act(kind); });
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_makes_markup_text() {
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            escape("a & b \"c\" 'd'"),
            "a &amp; b &quot;c&quot; &#39;d&#39;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape(""), "");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn strip_ansi_removes_escapes_and_controls() {
        assert_eq!(strip_ansi("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(strip_ansi("\u{1b}[1;32;40mok\u{1b}[K"), "ok");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{07}after"), "after");
        assert_eq!(strip_ansi("\u{1b}]8;;http://x\u{1b}\\link"), "link");
        assert_eq!(strip_ansi("a\r\nb\tc\u{0}d"), "a\nb\tcd");
        assert_eq!(strip_ansi("\u{1b}(Bx"), "x");
        // A sequence cut at the end does not panic or leak.
        assert_eq!(strip_ansi("x\u{1b}[31"), "x");
        assert_eq!(strip_ansi("x\u{1b}"), "x");
    }

    #[test]
    fn output_text_is_lossy_stripped_and_escaped() {
        assert_eq!(
            output_text(b"\x1b[31m</pre><b>\xff\n"),
            "&lt;/pre&gt;&lt;b&gt;\u{fffd}\n"
        );
    }

    #[test]
    fn layout_has_the_nav_and_escapes_the_title() {
        let p = layout("<x>", Some("t\"k"), "", "<p>body</p>");
        assert!(p.contains("<title>&lt;x&gt; · ci</title>"));
        assert!(p.contains("content=\"t&quot;k\""));
        for href in ["href=\"/\"", "href=\"/runners\"", "href=\"/history\""] {
            assert!(p.contains(href), "{href}");
        }
    }
}
