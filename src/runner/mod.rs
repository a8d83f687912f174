//! The runner: checks out exactly the commit it is given and runs its tests.

pub mod agent;
pub mod config;
pub mod exec;
pub mod job;
pub mod machine;
pub mod unittest;

/// `ci-runner --heartbeat-interval`'s default, in seconds. The benchmark's
/// idle runners beat at this rate too, so its figure is what a fleet of
/// runners left at their defaults costs the dispatcher.
pub const HEARTBEAT_INTERVAL_SECS: &str = "2";
