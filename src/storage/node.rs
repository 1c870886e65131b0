//! A node's real disk behind the replica's `Storage` port: the WAL and its
//! fsync threads, snapshot files and the snapshot helper thread, and the
//! chunks of snapshots being sent or received.
//!
//! The reactor owns one `NodeStorage` next to its `Replica`, passes it to
//! `Replica::end_turn`, and once per turn hands the replica what finished
//! meanwhile (`deliver_completions`: fsyncs done or failed, snapshots
//! taken). Nothing here decides anything: the order of writes, syncs and
//! snapshot steps is the replica's (see `replica::storage` for the
//! contract this keeps).

use super::{Syncer, Wal};
use crate::error::{Error, Result};
use crate::limits;
use crate::raft::{Entry, HardState, Index, NodeId, SnapshotMeta, Term};
use crate::replica::{Replica, SnapshotDone, Storage};
use crate::snapshot::file_name;
use crate::snapshot::transfer::{Assembler, ChunkReader, Stored, TempFile};
use crate::snapshot::worker::{Done, Job, Worker};
use bytes::Bytes;
use std::path::PathBuf;

pub struct NodeStorage {
    wal: Wal,
    syncer: Syncer,
    dir: PathBuf,
    fsync: bool,
    worker: Worker,
    reader: ChunkReader,
    assembler: Assembler<TempFile>,
}

impl NodeStorage {
    /// Starts the fsync threads (`notify` runs on them whenever one is
    /// done: the reactor's waker) and the snapshot helper thread.
    pub fn start(
        wal: Wal,
        dir: PathBuf,
        fsync: bool,
        notify: Box<dyn Fn() + Send + Sync>,
    ) -> Result<NodeStorage> {
        let syncer = Syncer::start(limits::SYNCS_IN_FLIGHT_MAX, notify)
            .map_err(|e| Error::io("starting the WAL sync threads", e))?;
        let worker = Worker::start(dir.clone(), fsync)
            .map_err(|e| Error::io("starting the snapshot helper thread", e))?;
        Ok(NodeStorage {
            wal,
            syncer,
            dir,
            fsync,
            worker,
            reader: ChunkReader::default(),
            assembler: Assembler::default(),
        })
    }

    /// Hands the replica every fsync and snapshot finished since the last
    /// call. An error means the fsync threads are gone: the node stops.
    pub fn deliver_completions(&mut self, replica: &mut Replica) -> Result<()> {
        while let Some(done) = self.syncer.try_done()? {
            let (id, took_us) = (done.id, done.took.as_micros() as u64);
            match self.wal.end_sync(done) {
                Ok(()) => replica.synced(id, took_us),
                Err(error) => replica.sync_failed(id, error.to_string()),
            }
        }
        while let Some(done) = self.worker.try_done() {
            match done {
                Done::Taken { snapshot, elapsed } => {
                    log::debug!(
                        "snapshot {} written in {elapsed:?} on the helper thread",
                        snapshot.index
                    );
                    replica.snapshot_done(SnapshotDone::Taken(snapshot));
                }
                Done::Failed(reason) => replica.snapshot_done(SnapshotDone::Failed(reason)),
                Done::Deleted => {}
            }
        }
        Ok(())
    }
}

impl Storage for NodeStorage {
    fn append_entries(&mut self, entries: &[Entry]) -> Result<()> {
        self.wal.append(entries)
    }

    fn save_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        self.wal.save_hard_state(hard_state)
    }

    fn mark_log_start(&mut self, index: Index, term: Term) -> Result<()> {
        self.wal.mark_log_start(index, term)
    }

    fn begin_sync(&mut self, id: u64) -> Result<bool> {
        match self.wal.begin_sync()? {
            Some(mut request) => {
                request.id = id;
                self.syncer.submit(request)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn start_snapshot(&mut self, job: Job) -> bool {
        self.worker.submit(job)
    }

    fn discard_obsolete(&mut self, wal_through: Option<Index>, snapshots: Vec<SnapshotMeta>) {
        // Segments first (oldest first), then snapshot files.
        let mut paths: Vec<PathBuf> = match wal_through {
            Some(through) => self
                .wal
                .take_obsolete_segments(through)
                .into_iter()
                .map(|segment| segment.path)
                .collect(),
            None => Vec::new(),
        };
        paths.extend(
            snapshots
                .iter()
                .map(|old| self.dir.join(file_name(old.index, old.term))),
        );
        if !paths.is_empty() && !self.worker.submit(Job::Delete(paths)) {
            log::warn!("the snapshot helper thread is gone; obsolete files stay");
        }
    }

    fn read_snapshot_chunk(
        &mut self,
        to: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        length_bytes: u64,
    ) -> std::io::Result<Bytes> {
        self.reader
            .read(&self.dir, to, snapshot, offset, length_bytes)
    }

    fn close_snapshot_reader(&mut self, to: NodeId) {
        self.reader.close(to);
    }

    fn store_snapshot_chunk(
        &mut self,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<Stored> {
        let (dir, fsync) = (&self.dir, self.fsync);
        self.assembler.store(snapshot, offset, data, |snapshot| {
            TempFile::create(dir, fsync, snapshot)
        })
    }

    fn commit_received_snapshot(&mut self) -> Result<()> {
        self.assembler.commit().map(|_| ())
    }

    fn discard_received_snapshot(&mut self) {
        self.assembler.discard();
    }
}
