//! A distributed, event-sourced continuous-integration system.
//!
//! Module map (ARCHITECTURE.md has the rules between them):
//! - [`core`]: the pure state machine (events, state fold, decisions). No IO.
//! - [`encoding`]: the one binary codec, for the wire and the log.
//! - [`proto`]: wire messages, views and framed connections.
//! - [`store`]: the event log and output store; the only module that knows sled.
//! - [`dispatcher`]: the IO shell around the core: listener, connections, log writer.
//! - [`client`]: connecting to a dispatcher, for runners, observers and tools.
//! - [`runner`]: runs tests for the commits it is assigned.
//! - [`observer`]: watches branches and reports new commits.
//! - [`git`]: every use of git2.
//! - [`tools`]: the `ci-tools` subcommands.

pub mod cli;
pub mod client;
pub mod core;
pub mod dispatcher;
pub mod encoding;
pub mod git;
pub mod observer;
pub mod proto;
pub mod runner;
pub mod store;
pub mod tools;
pub mod util;
