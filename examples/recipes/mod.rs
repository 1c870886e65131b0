//! The coordination recipes of docs/RECIPES.md as a small library: a
//! blocking client (`client`), a lock with a lease and fencing tokens
//! (`lock`), leader election (`election`) and a barrier (`barrier`). The
//! examples (`examples/lock.rs`, `election.rs`, `barrier.rs`) are thin
//! command lines over it, and `tests/recipes.rs` runs it against real
//! clusters under kill -9.
#![allow(dead_code)]

pub mod barrier;
pub mod client;
pub mod election;
pub mod lock;

/// The client addresses of a `--addr HOST:PORT[,HOST:PORT...]` flag.
pub fn addresses(flag: &str) -> Vec<String> {
    flag.split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(String::from)
        .collect()
}
