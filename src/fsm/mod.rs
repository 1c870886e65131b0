//! The replicated state machine: the file map and the deterministic apply.
//! (Skeleton: being written.)

pub mod command;
pub mod files;

pub use command::Command;
