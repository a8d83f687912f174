//! The runner: checks out exactly the commit it is given and runs its tests.

pub mod agent;
pub mod config;
pub mod exec;
pub mod job;
pub mod machine;
pub mod unittest;
