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
//!
//! Snapshots (Raft §7). The core never holds snapshot bytes; the executor
//! owns them (a file) and the core owns the decisions:
//! - Taking one: once the state machine has applied through `index`, the
//!   executor may serialise it (on any thread), make it durable, and then call
//!   `Node::compact(index, size_bytes)`; the core drops its log through
//!   `index` and from then on sends that snapshot to followers that need an
//!   entry it no longer has. The executor keeps the snapshot's bytes readable
//!   until every transfer of it ends (an open file handle suffices).
//! - Sending one: `SendSnapshotChunk` carries a ready envelope whose
//!   `InstallSnapshot.data` is empty; the executor fills it with
//!   `length_bytes` bytes of the snapshot named by its meta, from its
//!   `offset`, and sends it like `Send` (same ordering rule).
//! - Receiving one: `SnapshotChunk` hands a chunk to the executor, who keeps
//!   the bytes (bounded: only what is sent, never more than `size_bytes`) and
//!   answers with `Node::snapshot_chunk_stored(from, snapshot, next_offset)`;
//!   once it holds all `size_bytes`, has checked them and made them durable,
//!   it calls `Node::install_snapshot(from, snapshot)` and, if that says
//!   `Installed`, replaces its state machine with the snapshot's and (when the
//!   log was not kept) records in its log storage that the log now starts
//!   after `snapshot.index` — before the turn's sends leave, like any persist.
//! - Restarting: `Restored::snapshot` names the newest snapshot the executor
//!   loaded; `Restored::entries` then start right after it.

use super::message::{Entry, Envelope, HardState, Index, NodeId, SnapshotMeta};
use bytes::Bytes;

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
    /// Fill the envelope's `InstallSnapshot.data` with `length_bytes` bytes
    /// of its snapshot from its `offset`, then send it (see the module doc).
    SendSnapshotChunk {
        envelope: Envelope,
        length_bytes: u64,
    },
    /// Keep this chunk of `snapshot` from `from`; answer with
    /// `Node::snapshot_chunk_stored` or `Node::install_snapshot`.
    SnapshotChunk {
        from: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        data: Bytes,
    },
}
