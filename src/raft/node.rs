//! The Raft node: one flat struct, `Role` enum, `&mut self` everywhere.
//! (API skeleton: bodies are being written.)

use super::action::Action;
use super::message::{Entry, Envelope, HardState, Index, NodeId, Term};
use bytes::Bytes;

/// Static configuration of one Raft node. Timeouts are in ticks.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Every voting member, including `id`.
    pub members: Vec<NodeId>,
    /// This node's data-dir incarnation, stamped on every envelope it sends.
    pub incarnation: u64,
    /// Election timeout drawn uniformly from `[min, max)` ticks.
    pub election_timeout_ticks: (u64, u64),
    pub heartbeat_ticks: u64,
    pub inflight_appends_max: usize,
    pub append_bytes_max: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Seed of the node's private RNG (election timeouts).
    pub seed: u64,
}

/// What storage recovered at start: the durable hard state and the log.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub hard_state: HardState,
    /// Contiguous entries starting at index 1.
    pub entries: Vec<Entry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Returned when an operation needs the leader; names the leader if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLeader {
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    /// The sender's incarnation differs from the one recorded for it.
    WrongIncarnation {
        from: NodeId,
        recorded: u64,
        got: u64,
    },
    /// The sender is not a member, or the message is not addressed to us.
    NotForUs,
}

pub struct Node {
    _todo: (),
}

impl Node {
    pub fn new(_config: Config, _restored: Restored) -> Node {
        todo!()
    }
    pub fn tick(&mut self) {
        todo!()
    }
    pub fn step(&mut self, _envelope: Envelope) -> Result<(), StepError> {
        todo!()
    }
    pub fn observe_incarnation(
        &mut self,
        _from: NodeId,
        _incarnation: u64,
    ) -> Result<(), StepError> {
        todo!()
    }
    pub fn propose(&mut self, _data: Bytes) -> Result<Index, NotLeader> {
        todo!()
    }
    pub fn read_index(&mut self, _id: u64) -> Result<(), NotLeader> {
        todo!()
    }
    pub fn persisted(&mut self, _index: Index, _term: Term) {
        todo!()
    }
    pub fn transfer_leadership(&mut self, _to: Option<NodeId>) -> Result<NodeId, NotLeader> {
        todo!()
    }
    pub fn drain_actions(&mut self, _out: &mut Vec<Action>) {
        todo!()
    }
    pub fn id(&self) -> NodeId {
        todo!()
    }
    pub fn role(&self) -> Role {
        todo!()
    }
    pub fn term(&self) -> Term {
        todo!()
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        todo!()
    }
    pub fn commit_index(&self) -> Index {
        todo!()
    }
    pub fn last_index(&self) -> Index {
        todo!()
    }
    pub fn hard_state(&self) -> &HardState {
        todo!()
    }
}
