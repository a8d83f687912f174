//! Shell completions (clap_complete) and man pages (clap_mangen) for the
//! four programs, made from the same clap definitions their binaries parse
//! with, so they cannot drift from the real flags.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// One of the four programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    #[value(name = "ci-dispatcher")]
    Dispatcher,
    #[value(name = "ci-runner")]
    Runner,
    #[value(name = "ci-observer")]
    Observer,
    #[value(name = "ci-tools")]
    Tools,
}

impl Program {
    pub const ALL: [Program; 4] = [
        Program::Dispatcher,
        Program::Runner,
        Program::Observer,
        Program::Tools,
    ];

    /// The program's name, as installed.
    pub fn name(self) -> &'static str {
        match self {
            Program::Dispatcher => "ci-dispatcher",
            Program::Runner => "ci-runner",
            Program::Observer => "ci-observer",
            Program::Tools => "ci-tools",
        }
    }

    /// The program's clap definition.
    pub fn command(self) -> Command {
        match self {
            Program::Dispatcher => super::dispatcher::Args::command(),
            Program::Runner => super::runner::Args::command(),
            Program::Observer => super::observer::Args::command(),
            Program::Tools => super::tools::Args::command(),
        }
    }
}

/// Writes `shell`'s completion script for each of `programs`, one after
/// the other, into `out`: sourced together they complete every program.
pub fn completions(shell: Shell, programs: &[Program], out: &mut dyn Write) -> std::io::Result<()> {
    for (i, program) in programs.iter().enumerate() {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut program.command(), program.name(), &mut script);
        let script = String::from_utf8_lossy(&script);
        if shell == Shell::PowerShell && i > 0 {
            // PowerShell allows `using` only before any other statement:
            // the first script's lines serve every script after it.
            for line in script
                .lines()
                .filter(|l| !l.starts_with("using namespace "))
            {
                writeln!(out, "{line}")?;
            }
        } else {
            out.write_all(script.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes one man page per program and one per subcommand (`ci-tools-
/// status.1`, ...) into `dir`, made if missing; returns their paths.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    // As clap_mangen::generate_to, but keeping the paths for the caller,
    // and every page's footer naming the program and its version (a
    // subcommand has no version of its own).
    fn generate(
        cmd: &Command,
        source: &str,
        dir: &Path,
        written: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        let page = clap_mangen::Man::new(cmd.clone()).source(source);
        written.push(page.generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            generate(sub, source, dir, written)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for program in Program::ALL {
        let mut cmd = program.command().disable_help_subcommand(true);
        cmd.build();
        let source = format!("{} {}", program.name(), env!("CARGO_PKG_VERSION"));
        generate(&cmd, &source, dir, &mut written)?;
    }
    Ok(written)
}
