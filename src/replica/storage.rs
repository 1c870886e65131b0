//! The replica's port to its disk: what it asks of storage, in the order
//! durability needs, and nothing about how storage does it.
//!
//! Two implementations: `storage::NodeStorage` (the WAL's segment files and
//! fsync threads, snapshot files and the snapshot helper thread) and the
//! simulator's disk (`sim::disk`), which keeps what was synced apart from
//! what was only written, and loses the latter in a crash.
//!
//! Contract (the replica relies on it; both implementations keep it):
//! - Writes (`append_entries`, `save_hard_state`, `mark_log_start`) take
//!   effect in call order; none is durable until a sync covers it.
//! - `begin_sync(id)` asks that every write made before it become durable;
//!   the driver reports the end with `Replica::synced(id)` (which also
//!   covers every older id) or `Replica::sync_failed`. `Ok(false)` means
//!   nothing needs waiting for (`fsync` off): the writes count as durable
//!   now and no report follows.
//! - `start_snapshot(job)` writes a snapshot file (temporary file, fsync,
//!   rename, directory fsync) off the turn; the driver reports the end with
//!   `Replica::snapshot_done`. A crash before then leaves no file.
//! - `commit_received_snapshot` makes the snapshot assembled by
//!   `store_snapshot_chunk` a durable file under its final name before it
//!   returns: the replica writes the log-start record after it, so the
//!   record can never be durable without the snapshot it points to.
//! - `discard_obsolete` deletes, in this order, WAL segments holding only
//!   entries through `wal_through` and then the snapshot files named: a
//!   crash leaves a prefix deleted, never a gap.
//! - `read_snapshot_chunk` may fail (the file is gone): the replica then
//!   restarts that transfer with its newest snapshot.

use crate::error::Result;
use crate::raft::{Entry, HardState, Index, NodeId, SnapshotMeta, Term};
use crate::snapshot::transfer::Stored;
use crate::snapshot::worker::Job;
use bytes::Bytes;

pub trait Storage {
    /// Append entries; an entry at an index already held replaces the
    /// stored suffix from there.
    fn append_entries(&mut self, entries: &[Entry]) -> Result<()>;
    fn save_hard_state(&mut self, hard_state: &HardState) -> Result<()>;
    /// The log now starts after `index` (of `term`); every entry before
    /// it is void, and the next append is at `index + 1`.
    fn mark_log_start(&mut self, index: Index, term: Term) -> Result<()>;
    /// Start making every write so far durable (see the module doc).
    fn begin_sync(&mut self, id: u64) -> Result<bool>;
    /// Take a snapshot off the turn; false if the helper is gone.
    fn start_snapshot(&mut self, job: Job) -> bool;
    /// Delete WAL segments covered by `wal_through`, then these snapshots.
    fn discard_obsolete(&mut self, wal_through: Option<Index>, snapshots: Vec<SnapshotMeta>);
    /// `length_bytes` bytes of `snapshot` from `offset`, for `to`.
    fn read_snapshot_chunk(
        &mut self,
        to: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        length_bytes: u64,
    ) -> std::io::Result<Bytes>;
    /// The transfer to `to` ended: its open file may be closed.
    fn close_snapshot_reader(&mut self, to: NodeId);
    /// Keep one received chunk; `Complete` once every byte is held,
    /// durable (in a temporary file) and checked.
    fn store_snapshot_chunk(
        &mut self,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<Stored>;
    /// Make the complete received snapshot a durable file (see above).
    fn commit_received_snapshot(&mut self) -> Result<()>;
    /// Drop whatever is being received.
    fn discard_received_snapshot(&mut self);
}
