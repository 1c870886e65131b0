//! The Raft consensus core: sans-IO and deterministic.
//!
//! Inputs: `Node::tick`, `Node::step(envelope)`, `Node::propose(data)`,
//! `Node::read_index(id)`, `Node::persisted(index, term)`,
//! `Node::transfer_leadership`. Outputs: an ordered list of `Action`s drained
//! with `Node::drain_actions`. The core never touches a socket, file, clock or
//! global RNG.
//!
//! What we implement, by section of the Raft paper (Ongaro & Ousterhout 2014)
//! and Ongaro's thesis (2014):
//! - §5.2 leader election with randomised timeouts (`election`), plus PreVote
//!   (thesis §9.6), the follower lease against disruptive candidates (thesis
//!   §4.2.3) and CheckQuorum (thesis §6.2);
//! - §5.3 log replication with fast conflict backtracking, pipelining and
//!   flow control per follower (`replication`, `progress`, thesis §10.2);
//! - §5.4 safety: the up-to-date vote rule and the Figure 8 commit rule
//!   (`quorum`, `log`), a no-op per new term;
//! - thesis §6.4 ReadIndex reads and §3.10 leadership transfer (`read`);
//! - thesis §10.2.1: the leader writes its log in parallel with replication and
//!   counts itself only after `persisted`.
//!
//! Invariants: election safety (one leader per term), log matching, leader
//! append-only, commit monotonic, state machine safety — asserted with
//! `debug_assert!` where state changes, and checked end to end by the
//! simulator.
//!
//! - §7 log compaction and InstallSnapshot, streamed in chunks (`snapshot`);
//!   the executor owns the snapshot bytes (contract in `action`);
//! - thesis chapter 4 membership change, one member at a time, with
//!   learners (`membership`: the configurations and the change rule, with
//!   the safety argument; `reconfigure`: the node's side). Every quorum
//!   (commit, elections, PreVote, CheckQuorum, ReadIndex rounds, the
//!   transfer target) is counted over the voters of the configuration in
//!   force.
//!
//! - every peer message is checked before it changes anything (`validate`):
//!   a forged or malformed one is refused in release builds too.
//!
//! Left out: joint consensus.

pub mod action;
mod election;
pub mod log;
pub mod membership;
pub mod message;
pub mod node;
pub mod progress;
pub mod quorum;
mod read;
mod reconfigure;
mod replication;
mod snapshot;
mod validate;

pub use action::Action;
pub use membership::{Change, ChangeError, Configuration, MemberAddresses, MemberRole};
pub use message::{Entry, Envelope, HardState, Index, Message, NodeId, SnapshotMeta, Term};
pub use node::{Config, Installed, Node, NotLeader, Restored, Role, StepError};
