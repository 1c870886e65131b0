//! The Raft consensus core: sans-IO and deterministic.
//!
//! Inputs: `Node::tick`, `Node::step(envelope)`, `Node::propose(data)`,
//! `Node::read_index(id)`, `Node::persisted(index, term)`,
//! `Node::transfer_leadership`. Outputs: an ordered list of `Action`s drained
//! with `Node::drain_actions`. The core never touches a socket, file, clock or
//! global RNG.

pub mod action;
pub mod message;
pub mod node;

pub use action::Action;
pub use message::{Entry, Envelope, HardState, Index, Message, NodeId, Term};
pub use node::{Config, Node, NotLeader, Restored, Role, StepError};
