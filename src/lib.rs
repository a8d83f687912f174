//! A distributed, event-sourced continuous-integration system.
//!
//! Module map (see ARCHITECTURE.md for the rules between them):
//! - [`core`]: pure state machine (events, state, decisions). No IO.
//! - [`runner`]: the runner's job execution pieces.
//! - [`git`]: every use of git2.

pub mod core;
pub mod git;
pub mod runner;
