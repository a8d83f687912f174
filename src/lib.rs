//! A distributed, event-sourced continuous-integration system.
//!
//! Module map (ARCHITECTURE.md has the rules between them):
//! - [`core`]: the pure state machine (events, state fold, decisions). No IO.
//! - [`encoding`]: the one binary codec, for the wire and the log.
//! - [`proto`]: wire messages, refusal codes, views, framed connections, tokens.
//! - [`store`]: the event log, output and snapshot stores behind three
//!   interfaces; `store::sled_log` is the only file that knows sled.
//! - [`dispatcher`]: the sans-IO shell around the core (`shell`), and the IO
//!   that carries it out: listener, connections, log writer and flusher.
//! - [`client`]: connecting to a dispatcher, and backing off, for runners,
//!   observers and tools.
//! - [`runner`]: the runner's state machine (`machine`), its driver, and
//!   the contained run of one job.
//! - [`observer`]: watches branches and reports new commits.
//! - [`git`]: every use of git2.
//! - [`tools`]: the `ci-tools` subcommands.

pub mod cli;
pub mod client;
pub mod core;
pub mod dispatcher;
pub mod encoding;
pub mod git;
pub mod notify;
pub mod observer;
pub mod proto;
pub mod runner;
pub mod store;
pub mod tools;
pub mod util;
pub mod web;
