//! The Raft core's outputs, in the order they must be carried out.
//!
//! Contract for whoever executes actions (the replica, the simulator):
//! - Actions are executed in order.
//! - A `Send` may leave only once every `PersistHardState`/`PersistEntries`
//!   emitted before it is durable (fsynced). Batching every persist of a turn
//!   into one fsync before the turn's sends satisfies this.
//! - After entries are durable the executor calls `Node::persisted(index)`;
//!   the leader counts itself toward a commit only after that (thesis §10.2.1).
//! - `Apply` hands over newly committed entries exactly once, in index order.

use super::message::{Entry, Envelope, HardState, Index};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this hard state durable.
    PersistHardState(HardState),
    /// Make these entries durable. If `entries[0].index` is not past the
    /// stored log's last index, the stored suffix from there is replaced.
    PersistEntries(Vec<Entry>),
    /// Deliver to `envelope.to` (after the persists before it are durable).
    Send(Envelope),
    /// Newly committed entries, in order, each handed over once.
    Apply(Vec<Entry>),
    /// The read registered under `id` may be served once the state machine
    /// has applied up to `index`.
    ReadReady { id: u64, index: Index },
    /// The read registered under `id` cannot be served here (not leader).
    ReadFailed { id: u64 },
}
