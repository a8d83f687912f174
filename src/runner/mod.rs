//! The runner: checks out exactly the commit it is given and runs its tests.

pub mod agent;
pub mod config;
pub mod exec;
pub mod job;
pub mod machine;
pub mod unittest;

/// `ci-runner --heartbeat-interval`'s default, in seconds: the pace while
/// the runner holds a job. Idle, it beats at the pace the dispatcher's
/// welcome asks (`ci-dispatcher --idle-heartbeat-interval`), which the
/// benchmark's idle runners use too.
pub const HEARTBEAT_INTERVAL_SECS: &str = "2";
