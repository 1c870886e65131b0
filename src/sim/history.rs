//! The client's view of a schedule: proposals, commits, reads and answers.
//!
//! The simulated client proposes unique data (`w<seq>`) and asks for
//! ReadIndex reads. `History` records each operation with the step it
//! happened at, and keeps per read what linearizability requires of it: the
//! highest index observed committed when the read was requested. The state
//! machine is the applied sequence of entry data, so a read served at applied
//! index `k` reflects exactly the writes at indices `1..=k`.
//! Left out: per-file histories of the real state machine (`lincheck` owns
//! those for the fs protocol).

use crate::raft::{Index, NodeId};
use bytes::Bytes;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `accepted_at` is the index the node gave the proposal, or `None` if the
    /// node was not leader.
    Propose {
        step: u64,
        node: NodeId,
        data: Bytes,
        accepted_at: Option<Index>,
    },
    /// A client write was applied somewhere for the first time.
    WriteCommitted {
        step: u64,
        index: Index,
        data: Bytes,
    },
    ReadRequested {
        step: u64,
        node: NodeId,
        id: u64,
        required_index: Index,
        accepted: bool,
    },
    ReadReady {
        step: u64,
        id: u64,
        index: Index,
    },
    /// The read's answer: the node's state machine at `applied_index`.
    ReadServed {
        step: u64,
        id: u64,
        applied_index: Index,
    },
    ReadFailed {
        step: u64,
        id: u64,
    },
}

/// What is known about one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub node: NodeId,
    pub requested_step: u64,
    pub required_index: Index,
    pub ready_index: Option<Index>,
    pub served_at: Option<Index>,
    pub failed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCounts {
    pub writes_proposed: u64,
    pub writes_accepted: u64,
    pub writes_committed: u64,
    pub reads_requested: u64,
    pub reads_accepted: u64,
    pub reads_served: u64,
    pub reads_failed: u64,
}

#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub reads: BTreeMap<u64, ReadRecord>,
    pub counts: ClientCounts,
}

impl History {
    pub fn propose(&mut self, step: u64, node: NodeId, data: Bytes, accepted_at: Option<Index>) {
        self.counts.writes_proposed += 1;
        if accepted_at.is_some() {
            self.counts.writes_accepted += 1;
        }
        self.ops.push(Op::Propose {
            step,
            node,
            data,
            accepted_at,
        });
    }

    pub fn write_committed(&mut self, step: u64, index: Index, data: Bytes) {
        self.counts.writes_committed += 1;
        self.ops.push(Op::WriteCommitted { step, index, data });
    }

    pub fn read_requested(
        &mut self,
        step: u64,
        node: NodeId,
        id: u64,
        required_index: Index,
        accepted: bool,
    ) {
        self.counts.reads_requested += 1;
        if accepted {
            self.counts.reads_accepted += 1;
            self.reads.insert(
                id,
                ReadRecord {
                    node,
                    requested_step: step,
                    required_index,
                    ready_index: None,
                    served_at: None,
                    failed: false,
                },
            );
        }
        self.ops.push(Op::ReadRequested {
            step,
            node,
            id,
            required_index,
            accepted,
        });
    }

    /// Record a ReadReady; returns the read's record (None for an id the
    /// client never registered on that node, which the caller reports).
    pub fn read_ready(&mut self, step: u64, id: u64, index: Index) -> Option<&ReadRecord> {
        self.ops.push(Op::ReadReady { step, id, index });
        let record = self.reads.get_mut(&id)?;
        record.ready_index = Some(index);
        Some(record)
    }

    pub fn read_served(&mut self, step: u64, id: u64, applied_index: Index) {
        self.counts.reads_served += 1;
        if let Some(record) = self.reads.get_mut(&id) {
            record.served_at = Some(applied_index);
        }
        self.ops.push(Op::ReadServed {
            step,
            id,
            applied_index,
        });
    }

    pub fn read_failed(&mut self, step: u64, id: u64) {
        self.counts.reads_failed += 1;
        if let Some(record) = self.reads.get_mut(&id) {
            record.failed = true;
        }
        self.ops.push(Op::ReadFailed { step, id });
    }
}
