//! The replica's side of snapshots: when to take one, what compaction then
//! deletes, and carrying out the core's InstallSnapshot actions. The bytes
//! live behind the `Storage` port.
//!
//! Taking (both roles): once `snapshot_entries` entries (or as many bytes
//! as `SNAPSHOT_LOG_TO_SNAPSHOT_RATIO` times the last snapshot's size, kept
//! between `SNAPSHOT_LOG_BYTES_MIN` and `..._MAX`: writing a snapshot then
//! costs the disk at most half the log it replaces, thesis §5.1.3, while
//! the log in memory stays bounded) were applied since the last snapshot, a
//! frozen view of the map (`Fsm::freeze`, copy-on-write) goes to the
//! snapshot helper (`Storage::start_snapshot`), which writes the new
//! snapshot file. When it is durable
//! (`snapshot_done`), the core drops its log through that index
//! (`Node::compact`), snapshot files beyond the newest `SNAPSHOTS_KEPT` are
//! deleted, and so are WAL segments holding only entries the *older* kept
//! snapshot covers — so a damaged newest snapshot can fall back to the
//! older one at restart.
//!
//! Sending (leader): each chunk is read from storage as the core asks; a
//! chunk that cannot be read (the file was deleted: two newer snapshots
//! were taken while the transfer stalled) restarts that transfer with the
//! newest snapshot (`Node::snapshot_unavailable`), instead of retrying a
//! file that will never come back.
//!
//! Installing (follower): chunks go to storage; the complete, checked
//! snapshot is made a durable file *before* the log-start record that
//! voids the old log is written (that record durable without the snapshot
//! would leave a log with nothing before it); then it replaces the file
//! map. Commands still waiting on entries it covers get `ERR_INTERNAL`
//! (SPEC §3: their fate is not known here), those on discarded entries
//! `ERR_REDIRECT`. If the node dies between the two writes, restart
//! (`snapshot::restore`) sees a snapshot past the WAL and writes the
//! log-start record itself.

use super::storage::Storage;
use super::Replica;
use crate::error::Result;
use crate::limits::{
    SNAPSHOTS_KEPT, SNAPSHOT_LOG_BYTES_MAX, SNAPSHOT_LOG_BYTES_MIN, SNAPSHOT_LOG_TO_SNAPSHOT_RATIO,
};
use crate::raft::{Envelope, Index, Installed, Message, NodeId, SnapshotMeta};
use crate::snapshot::transfer::Stored;
use crate::snapshot::worker::Job;
use bytes::Bytes;
use std::collections::VecDeque;

/// A snapshot the helper finished (input `Replica::snapshot_done`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotDone {
    Taken(SnapshotMeta),
    /// It could not be taken; the node goes on and retries later.
    Failed(String),
}

/// Snapshot state owned by the replica.
pub(super) struct Snapshots {
    /// Take a snapshot once this many entries were applied since the last.
    snapshot_entries: u64,
    /// Snapshot files on disk, oldest first (the core's current one last).
    kept: Vec<SnapshotMeta>,
    /// The index of the snapshot being taken.
    taking: Option<Index>,
    /// Entry bytes applied since the last snapshot (or its start).
    applied_bytes: u64,
    /// Finished snapshots not yet handled.
    done: VecDeque<SnapshotDone>,
    /// Snapshots taken and installed since start.
    taken: u64,
    installed: u64,
}

impl Snapshots {
    pub(super) fn new(snapshot_entries: u64, kept: Vec<SnapshotMeta>) -> Snapshots {
        Snapshots {
            snapshot_entries,
            kept,
            taking: None,
            applied_bytes: 0,
            done: VecDeque::new(),
            taken: 0,
            installed: 0,
        }
    }

    /// Remember `snapshot` as the newest file; returns the files to delete
    /// (beyond the kept ones) and the index WAL segments may be dropped to.
    fn push_kept(&mut self, snapshot: SnapshotMeta) -> (Vec<SnapshotMeta>, Option<Index>) {
        self.kept.retain(|kept| kept.index < snapshot.index);
        self.kept.push(snapshot);
        let excess = self.kept.len().saturating_sub(SNAPSHOTS_KEPT);
        let obsolete = self.kept.drain(..excess).collect();
        let wal_through = (self.kept.len() >= SNAPSHOTS_KEPT).then(|| self.kept[0].index);
        (obsolete, wal_through)
    }
}

impl Replica {
    /// Input: the snapshot helper finished.
    pub fn snapshot_done(&mut self, done: SnapshotDone) {
        self.snapshots.done.push_back(done);
    }

    /// Snapshots taken and installed since start.
    pub fn snapshot_counts(&self) -> (u64, u64) {
        (self.snapshots.taken, self.snapshots.installed)
    }

    /// Count an applied entry toward the next snapshot.
    pub(super) fn note_applied_bytes(&mut self, bytes: usize) {
        let snapshots = &mut self.snapshots;
        snapshots.applied_bytes = snapshots.applied_bytes.saturating_add(bytes as u64);
    }

    /// Once per turn: collect a finished snapshot, start one if due.
    pub(super) fn maybe_snapshot(&mut self, storage: &mut impl Storage) -> Result<()> {
        while let Some(done) = self.snapshots.done.pop_front() {
            self.snapshots.taking = None;
            match done {
                SnapshotDone::Taken(snapshot) => self.finish_snapshot(snapshot, storage),
                SnapshotDone::Failed(reason) => {
                    log::error!("snapshot failed: {reason}; retrying later");
                    self.snapshots.applied_bytes = 0;
                }
            }
        }
        let base = self.raft.snapshot();
        let applied = self.applied_index;
        let snapshots = &mut self.snapshots;
        let log_bytes_due = base
            .size_bytes
            .saturating_mul(SNAPSHOT_LOG_TO_SNAPSHOT_RATIO)
            .clamp(SNAPSHOT_LOG_BYTES_MIN, SNAPSHOT_LOG_BYTES_MAX);
        let due = applied.saturating_sub(base.index) >= snapshots.snapshot_entries
            || snapshots.applied_bytes >= log_bytes_due;
        if snapshots.taking.is_some() || !due || applied <= base.index {
            return Ok(());
        }
        let Some(term) = self.raft.term_at(applied) else {
            return Ok(());
        };
        snapshots.applied_bytes = 0;
        // The map as of `applied`, frozen: the helper encodes it while the
        // map goes on changing (src/fsm/arena.rs).
        let job = Job::Write {
            state: self.fsm.freeze(),
            index: applied,
            term,
        };
        if storage.start_snapshot(job) {
            self.snapshots.taking = Some(applied);
        }
        Ok(())
    }

    fn finish_snapshot(&mut self, snapshot: SnapshotMeta, storage: &mut impl Storage) {
        if !self.raft.compact(snapshot.index, snapshot.size_bytes) {
            log::warn!(
                "snapshot {} is not past the current one {}; not used",
                snapshot.index,
                self.raft.snapshot().index
            );
            storage.discard_obsolete(None, vec![snapshot]);
            return;
        }
        self.after_new_snapshot(snapshot, storage);
        self.snapshots.taken += 1;
        log::info!(
            "snapshot {} taken: {} bytes",
            snapshot.index,
            snapshot.size_bytes
        );
    }

    /// Prune snapshot files and WAL segments after a new snapshot.
    fn after_new_snapshot(&mut self, snapshot: SnapshotMeta, storage: &mut impl Storage) {
        let (obsolete, wal_through) = self.snapshots.push_kept(snapshot);
        if wal_through.is_some() || !obsolete.is_empty() {
            storage.discard_obsolete(wal_through, obsolete);
        }
    }

    /// Leader: fill and send one chunk of a snapshot.
    pub(super) fn send_snapshot_chunk(
        &mut self,
        envelope: Envelope,
        length_bytes: u64,
        storage: &mut impl Storage,
    ) {
        let Message::InstallSnapshot {
            snapshot, offset, ..
        } = envelope.message
        else {
            return;
        };
        let to = envelope.to;
        match storage.read_snapshot_chunk(to, snapshot, offset, length_bytes) {
            Ok(data) => {
                if offset + length_bytes >= snapshot.size_bytes {
                    storage.close_snapshot_reader(to);
                }
                let envelope = Envelope {
                    message: Message::InstallSnapshot {
                        snapshot,
                        offset,
                        data,
                    },
                    ..envelope
                };
                self.durability.queue_send(envelope);
            }
            Err(e) => {
                log::warn!(
                    "cannot read snapshot {} for node {to} ({e}); sending the newest snapshot instead",
                    snapshot.index,
                );
                storage.close_snapshot_reader(to);
                self.raft.snapshot_unavailable(to, snapshot);
            }
        }
    }

    /// Follower: keep one chunk; install the snapshot once it is whole.
    pub(super) fn receive_snapshot_chunk(
        &mut self,
        from: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &Bytes,
        storage: &mut impl Storage,
    ) -> Result<()> {
        let fsm = match storage.store_snapshot_chunk(snapshot, offset, data)? {
            Stored::Partial { next_offset } => {
                self.raft.snapshot_chunk_stored(from, snapshot, next_offset);
                return Ok(());
            }
            Stored::Complete(fsm) => fsm,
        };
        let configuration = super::members::snapshot_configuration(&fsm);
        match self.raft.install_snapshot(from, snapshot, configuration) {
            Installed::Stale => {
                storage.discard_received_snapshot();
                Ok(())
            }
            Installed::Installed { log_kept } => {
                storage.commit_received_snapshot()?;
                if !log_kept {
                    storage.mark_log_start(snapshot.index, snapshot.term)?;
                    self.durability.note_written(false);
                }
                self.fsm = *fsm;
                self.wake_all_watches();
                self.fail_waiting_covered_by(snapshot.index);
                self.applied_index = snapshot.index;
                self.applied_term = snapshot.term;
                self.max_stamp_ms = self.max_stamp_ms.max(self.fsm.cluster_time_ms());
                self.after_new_snapshot(snapshot, storage);
                self.snapshots.installed += 1;
                self.snapshots.applied_bytes = 0;
                log::info!(
                    "installed snapshot {} from node {from} ({} bytes, {} files, log {})",
                    snapshot.index,
                    snapshot.size_bytes,
                    self.fsm.len(),
                    if log_kept { "kept" } else { "discarded" }
                );
                Ok(())
            }
        }
    }

    /// Commands waiting on entries a snapshot now covers: their fate is not
    /// known here (ERR_INTERNAL, SPEC §3). Those on entries after it wait
    /// on: the entry applied at their index decides (`apply`).
    fn fail_waiting_covered_by(&mut self, index: Index) {
        let later = self.waiting.split_off(&(index + 1, 0));
        let covered = std::mem::replace(&mut self.waiting, later);
        for (_, entry) in covered {
            self.answer_unknown_fate(entry);
        }
    }
}
