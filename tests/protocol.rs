//! The client protocol of SPEC §2, byte for byte, over real sockets against a
//! real one-member cluster (`tests/protocol_followers.rs` runs the same cases,
//! `tests/protocol/cases.rs`, against a follower of a three-member cluster).
//!
//! One node serves the whole binary (tests run in parallel on their own file
//! names); the seed session gets a fresh node of its own because it checks the
//! versions of a fresh cluster. Tests that count versions exactly take the
//! write side of `VERSIONS`, every other test the read side, so no write of
//! another test can take a version in between.
//!
//! Covered: the seed telnet session; every malformed input with its keep or
//! close behaviour (and that nothing after a closing error or inside skipped
//! content ever runs); number and name lexing; pipelining 10,000 commands;
//! binary, empty and 1 MiB contents; bare `\n` line ends; versions; expiry.

mod common;

/// The node under test: a fresh one-member cluster.
fn fresh_node() -> common::single::Node {
    common::single::Node::start("")
}

include!("protocol/cases.rs");
