//! Progress for long waits: a live line on a terminal, plain lines otherwise
//! (only when something changed, so logs stay short).

use std::io::{IsTerminal, Write};

pub struct Progress {
    live: bool,
    last: String,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            live: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    pub fn update(&mut self, line: &str) {
        if line == self.last {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.live {
            let _ = write!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.last = line.to_string();
    }

    pub fn finish(&mut self) {
        if self.live && !self.last.is_empty() {
            let _ = writeln!(std::io::stderr());
        }
        self.last.clear();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
