//! The client protocol of SPEC §2 against a follower of a three-member
//! cluster: every case of `tests/protocol.rs` (`tests/protocol/cases.rs`),
//! so any node, leader or not, serves every command byte for byte (SPEC §3:
//! `follower_requests = "forward"`, the default).

mod common;

/// The node under test: a follower of a fresh three-member cluster.
fn fresh_node() -> common::single::Node {
    common::single::Node::start_follower("")
}

include!("protocol/cases.rs");
