//! The replica's side of snapshots: when to take one, what compaction then
//! deletes, and executing the core's InstallSnapshot actions.
//!
//! Taking (both roles): once `snapshot_entries` entries (or as many bytes
//! as `SNAPSHOT_LOG_TO_SNAPSHOT_RATIO` times the last snapshot's size, kept
//! between `SNAPSHOT_LOG_BYTES_MIN` and `..._MAX`: writing a snapshot then
//! costs the disk at most half the log it replaces, thesis §5.1.3, while
//! the log in memory stays bounded) were applied since the last snapshot, a
//! copy of
//! the map (if small: `SNAPSHOT_COPY_*_MAX`) or else the committed entries
//! since then go to the helper thread (`snapshot::worker`), which writes the
//! new snapshot file. When it is durable, the core drops its
//! log through that index (`Node::compact`), snapshot files beyond the newest
//! `SNAPSHOTS_KEPT` are deleted, and so are WAL segments holding only entries
//! the *older* kept snapshot covers — so a damaged newest snapshot can fall
//! back to the older one at restart. Deletion runs on the helper thread.
//!
//! Installing (follower): chunks go to disk (`snapshot::transfer`); the
//! complete, checked, durable snapshot replaces the file map; commands still
//! waiting on entries it covers get ERR_INTERNAL (SPEC §3: their fate is
//! not known here), those on discarded entries ERR_REDIRECT.
//!
//! Reactor cost, measured per snapshot and logged: copying the map (at most
//! `SNAPSHOT_COPY_FILES_MAX` files) or cloning the entry list handed to the
//! helper, `Node::compact` (moving the kept tail of the log),
//! and on a follower the check and decode of a received snapshot.

use super::{Replica, Waiting};
use crate::error::{Error, Result};
use crate::fsm::Fsm;
use crate::limits::{
    SNAPSHOTS_KEPT, SNAPSHOT_COPY_BYTES_MAX, SNAPSHOT_COPY_FILES_MAX, SNAPSHOT_LOG_BYTES_MAX,
    SNAPSHOT_LOG_BYTES_MIN, SNAPSHOT_LOG_TO_SNAPSHOT_RATIO,
};
use crate::protocol::Reply;
use crate::raft::{Envelope, Index, Installed, Message, NodeId, SnapshotMeta};
use crate::snapshot::file_name;
use crate::snapshot::transfer::{Assembler, ChunkReader, Stored};
use crate::snapshot::worker::{Done, Job, Worker};
use bytes::Bytes;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How a replica keeps snapshots; `None` in a replica without a data dir.
pub struct SnapshotSettings {
    pub dir: PathBuf,
    pub fsync: bool,
    /// Take a snapshot once this many entries were applied since the last.
    pub snapshot_entries: u64,
}

/// Snapshot state owned by the replica.
pub struct Snapshots {
    settings: SnapshotSettings,
    worker: Worker,
    reader: ChunkReader,
    assembler: Assembler,
    /// Snapshot files on disk, oldest first (the core's current one last).
    kept: Vec<SnapshotMeta>,
    /// The index of the snapshot being taken.
    taking: Option<Index>,
    /// Entry bytes applied since the last snapshot (or its start).
    applied_bytes: u64,
    /// The longest time one snapshot step held the reactor (wall clock,
    /// so it includes being descheduled on a busy machine).
    stall_max: Duration,
    /// The most CPU time one snapshot step took on the reactor thread.
    stall_cpu_max: Duration,
    /// Snapshots taken and installed since start.
    pub taken: u64,
    pub installed: u64,
}

impl Snapshots {
    pub fn new(settings: SnapshotSettings, kept: Vec<SnapshotMeta>) -> Result<Snapshots> {
        let worker = Worker::start(settings.dir.clone(), settings.fsync)
            .map_err(|e| Error::io("starting the snapshot helper thread", e))?;
        Ok(Snapshots {
            settings,
            worker,
            reader: ChunkReader::default(),
            assembler: Assembler::default(),
            kept,
            taking: None,
            applied_bytes: 0,
            stall_max: Duration::ZERO,
            stall_cpu_max: Duration::ZERO,
            taken: 0,
            installed: 0,
        })
    }

    /// The longest reactor stall a snapshot step caused so far.
    pub fn stall_max(&self) -> Duration {
        self.stall_max
    }

    /// The most reactor-thread CPU time one snapshot step took so far.
    pub fn stall_cpu_max(&self) -> Duration {
        self.stall_cpu_max
    }

    fn note_stall(&mut self, started: (Instant, Duration)) -> Duration {
        let stall = started.0.elapsed();
        self.stall_max = self.stall_max.max(stall);
        let cpu = thread_cpu_time().saturating_sub(started.1);
        self.stall_cpu_max = self.stall_cpu_max.max(cpu);
        stall
    }

    /// Remember `snapshot` as the newest file; returns the files to delete
    /// (beyond the kept ones) and the index WAL segments may be dropped to.
    fn push_kept(&mut self, snapshot: SnapshotMeta) -> (Vec<PathBuf>, Option<Index>) {
        self.kept.retain(|kept| kept.index < snapshot.index);
        self.kept.push(snapshot);
        let excess = self.kept.len().saturating_sub(SNAPSHOTS_KEPT);
        let obsolete = self
            .kept
            .drain(..excess)
            .map(|old| self.settings.dir.join(file_name(old.index, old.term)))
            .collect();
        let wal_through = (self.kept.len() >= SNAPSHOTS_KEPT).then(|| self.kept[0].index);
        (obsolete, wal_through)
    }
}

impl Replica {
    /// Gives the replica its snapshot store (and the state machine restored
    /// from the newest snapshot, with its meta, which `restored` named too).
    pub fn enable_snapshots(
        &mut self,
        settings: SnapshotSettings,
        fsm: Fsm,
        kept: Vec<SnapshotMeta>,
    ) -> Result<()> {
        let snapshot = self.raft.snapshot();
        if snapshot.index > 0 {
            self.fsm = fsm;
            self.applied_index = snapshot.index;
            self.applied_term = snapshot.term;
            self.max_stamp_ms = self.max_stamp_ms.max(self.fsm.cluster_time_ms());
        }
        self.snapshots = Some(Snapshots::new(settings, kept)?);
        Ok(())
    }

    /// Snapshot state, if enabled (for status and tests).
    pub fn snapshots(&self) -> Option<&Snapshots> {
        self.snapshots.as_ref()
    }

    /// Count an applied entry toward the next snapshot.
    pub(super) fn note_applied_bytes(&mut self, bytes: usize) {
        if let Some(snapshots) = self.snapshots.as_mut() {
            snapshots.applied_bytes = snapshots.applied_bytes.saturating_add(bytes as u64);
        }
    }

    /// Once per turn: collect a finished snapshot, start one if due.
    pub(super) fn maybe_snapshot(&mut self) {
        while let Some(done) = self.snapshots.as_ref().and_then(|s| s.worker.try_done()) {
            match done {
                Done::Taken { snapshot, elapsed } => {
                    if let Some(snapshots) = self.snapshots.as_mut() {
                        snapshots.taking = None;
                    }
                    self.finish_snapshot(snapshot, elapsed);
                }
                Done::Failed(reason) => {
                    log::error!("snapshot failed: {reason}; retrying later");
                    if let Some(snapshots) = self.snapshots.as_mut() {
                        snapshots.taking = None;
                        snapshots.applied_bytes = 0;
                    }
                }
                Done::Deleted => {}
            }
        }
        let Some(snapshots) = self.snapshots.as_mut() else {
            return;
        };
        let base = self.raft.snapshot();
        let applied = self.applied_index;
        let log_bytes_due = base
            .size_bytes
            .saturating_mul(SNAPSHOT_LOG_TO_SNAPSHOT_RATIO)
            .clamp(SNAPSHOT_LOG_BYTES_MIN, SNAPSHOT_LOG_BYTES_MAX);
        let due = applied.saturating_sub(base.index) >= snapshots.settings.snapshot_entries
            || snapshots.applied_bytes >= log_bytes_due;
        if snapshots.taking.is_some() || !due || applied <= base.index {
            return;
        }
        let Some(term) = self.raft.term_at(applied) else {
            return;
        };
        let started = (Instant::now(), thread_cpu_time());
        snapshots.applied_bytes = 0;
        // A small map is cheaper to copy than its writes are to replay.
        let job = if self.fsm.len() <= SNAPSHOT_COPY_FILES_MAX
            && self.fsm.stored_bytes() <= SNAPSHOT_COPY_BYTES_MAX
        {
            Job::Write {
                fsm: Box::new(self.fsm.clone()),
                index: applied,
                term,
            }
        } else {
            Job::Take {
                base,
                entries: self.raft.entries(base.index + 1, applied).to_vec(),
                index: applied,
                term,
            }
        };
        if snapshots.worker.submit(job) {
            snapshots.taking = Some(applied);
        }
        let stall = snapshots.note_stall(started);
        log::debug!("snapshot {applied} handed to the helper in {stall:?}");
    }

    fn finish_snapshot(&mut self, snapshot: SnapshotMeta, elapsed: Duration) {
        let started = (Instant::now(), thread_cpu_time());
        if !self.raft.compact(snapshot.index, snapshot.size_bytes) {
            log::warn!(
                "snapshot {} is not past the current one {}; not used",
                snapshot.index,
                self.raft.snapshot().index
            );
            if let Some(snapshots) = self.snapshots.as_mut() {
                let path = snapshots
                    .settings
                    .dir
                    .join(file_name(snapshot.index, snapshot.term));
                snapshots.worker.submit(Job::Delete(vec![path]));
            }
            return;
        }
        self.after_new_snapshot(snapshot);
        if let Some(snapshots) = self.snapshots.as_mut() {
            snapshots.taken += 1;
            let stall = snapshots.note_stall(started);
            log::info!(
                "snapshot {} taken: {} bytes, {elapsed:?} on the helper thread, {stall:?} on the \
                 reactor (longest stall so far {:?}, {:?} of it CPU)",
                snapshot.index,
                snapshot.size_bytes,
                snapshots.stall_max,
                snapshots.stall_cpu_max
            );
        }
    }

    /// Prune snapshot files and WAL segments after a new snapshot.
    fn after_new_snapshot(&mut self, snapshot: SnapshotMeta) {
        let Some(snapshots) = self.snapshots.as_mut() else {
            return;
        };
        let (mut obsolete, wal_through) = snapshots.push_kept(snapshot);
        if let Some(through) = wal_through {
            let segments = self.wal.take_obsolete_segments(through);
            // Segments first (oldest first), then snapshot files.
            let mut paths: Vec<PathBuf> = segments.into_iter().map(|s| s.path).collect();
            paths.append(&mut obsolete);
            obsolete = paths;
        }
        if !obsolete.is_empty() {
            snapshots.worker.submit(Job::Delete(obsolete));
        }
    }

    /// Leader: fill and send one chunk of a snapshot.
    pub(super) fn send_snapshot_chunk(&mut self, envelope: &Envelope, length_bytes: u64) {
        let Some(snapshots) = self.snapshots.as_mut() else {
            return;
        };
        let Message::InstallSnapshot {
            snapshot, offset, ..
        } = &envelope.message
        else {
            return;
        };
        let (snapshot, offset) = (*snapshot, *offset);
        match snapshots.reader.read(
            &snapshots.settings.dir,
            envelope.to,
            snapshot,
            offset,
            length_bytes,
        ) {
            Ok(data) => {
                let mut envelope = envelope.clone();
                envelope.message = Message::InstallSnapshot {
                    snapshot,
                    offset,
                    data,
                };
                if offset + length_bytes >= snapshot.size_bytes {
                    snapshots.reader.close(envelope.to);
                }
                if self.hard_state_unsynced() {
                    self.durable_messages.push(envelope);
                } else {
                    self.messages.push(envelope);
                }
            }
            Err(e) => log::error!(
                "cannot read snapshot {} for node {}: {e}",
                snapshot.index,
                envelope.to
            ),
        }
    }

    /// Follower: keep one chunk; install the snapshot once it is whole.
    pub(super) fn receive_snapshot_chunk(
        &mut self,
        from: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &Bytes,
    ) -> Result<()> {
        let Some(snapshots) = self.snapshots.as_mut() else {
            return Ok(());
        };
        let started = (Instant::now(), thread_cpu_time());
        let (dir, fsync) = (snapshots.settings.dir.clone(), snapshots.settings.fsync);
        let stored = snapshots
            .assembler
            .store(&dir, fsync, snapshot, offset, data)?;
        let fsm = match stored {
            Stored::Partial { next_offset } => {
                self.raft.snapshot_chunk_stored(from, snapshot, next_offset);
                return Ok(());
            }
            Stored::Complete(fsm) => fsm,
        };
        match self.raft.install_snapshot(from, snapshot) {
            Installed::Stale => {
                snapshots.assembler.discard();
                Ok(())
            }
            Installed::Installed { log_kept } => {
                snapshots.assembler.commit(&dir, fsync)?;
                if !log_kept {
                    self.wal.mark_log_start(snapshot.index, snapshot.term)?;
                    self.gathering.written = true;
                    self.gathering.persisted = None;
                }
                self.fsm = *fsm;
                self.fail_waiting_covered_by(snapshot.index, log_kept);
                self.applied_index = snapshot.index;
                self.applied_term = snapshot.term;
                self.max_stamp_ms = self.max_stamp_ms.max(self.fsm.cluster_time_ms());
                self.after_new_snapshot(snapshot);
                if let Some(snapshots) = self.snapshots.as_mut() {
                    snapshots.installed += 1;
                    snapshots.applied_bytes = 0;
                    let stall = snapshots.note_stall(started);
                    log::info!(
                        "installed snapshot {} from node {from} ({} bytes, {} files, log {}) in \
                         {stall:?}",
                        snapshot.index,
                        snapshot.size_bytes,
                        self.fsm.len(),
                        if log_kept { "kept" } else { "discarded" }
                    );
                }
                Ok(())
            }
        }
    }

    /// Commands waiting on entries a snapshot now covers: their fate is not
    /// known here (ERR_INTERNAL, SPEC §3); on entries after it that were
    /// discarded: never committed here (ERR_REDIRECT).
    fn fail_waiting_covered_by(&mut self, index: Index, log_kept: bool) {
        let leader = self.raft.leader_id();
        let waiting: Vec<Waiting> = self.waiting.drain(..).collect();
        for entry in waiting {
            if entry.index <= index {
                for client in entry.clients {
                    self.answer(client, Reply::Internal);
                }
                for read in entry.reads {
                    self.answer(read.client, Reply::Internal);
                }
            } else if !log_kept {
                self.fail_waiting(entry, leader);
            } else {
                self.waiting.push_back(entry);
            }
        }
    }
}

/// CPU time the calling thread has used (0 if the clock is unavailable).
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        time.tv_sec.max(0) as u64,
        time.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
