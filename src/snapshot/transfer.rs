//! InstallSnapshot's bytes: the leader reads chunks from its snapshot file,
//! the follower writes them to a temporary file. Memory on both sides is one
//! chunk; the core (`raft::snapshot`) owns the protocol.
//!
//! Leader (`ChunkReader`): one open file per follower being sent to, so a
//! compaction that deletes the file mid-transfer changes nothing (the open
//! handle keeps it readable).
//!
//! Follower (`Assembler`, over a `ReceivedFile`: `TempFile` in a data dir,
//! memory in the simulator): chunks of one snapshot are appended in order to
//! `receiving-<index>-<term>.snap.tmp`; a chunk at any other offset than the
//! bytes held is ignored (the answer names what is held, so the leader
//! resends from there); a chunk of another snapshot starts over. When all
//! bytes are there the file is fsynced and checked (`snapshot::decode_from`, as a stream);
//! `commit` renames it into place and fsyncs the directory. A crash
//! mid-transfer leaves only a `.tmp` file, removed at start: the leader then
//! restarts the transfer from offset 0.

use super::{decode_from, file_name};
use crate::error::{Error, Result};
use crate::fsm::Fsm;
use crate::raft::{NodeId, SnapshotMeta};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The leader's side: chunks read from snapshot files.
#[derive(Default)]
pub struct ChunkReader {
    open: BTreeMap<NodeId, (SnapshotMeta, File)>,
}

impl ChunkReader {
    /// `length_bytes` bytes of `snapshot` from `offset`, for `to`.
    pub fn read(
        &mut self,
        dir: &Path,
        to: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        length_bytes: u64,
    ) -> io::Result<Bytes> {
        let reopen = !matches!(self.open.get(&to), Some((open, _)) if *open == snapshot);
        if reopen {
            let file = super::open_for_reading(dir, snapshot)?;
            self.open.insert(to, (snapshot, file));
        }
        let Some((_, file)) = self.open.get(&to) else {
            return Err(io::Error::other("snapshot file not open"));
        };
        let length = usize::try_from(length_bytes).map_err(io::Error::other)?;
        let mut buffer = vec![0u8; length];
        file.read_exact_at(&mut buffer, offset)?;
        Ok(Bytes::from(buffer))
    }

    /// Forget the file open for `to` (its transfer ended).
    pub fn close(&mut self, to: NodeId) {
        self.open.remove(&to);
    }
}

/// What a stored chunk led to.
pub enum Stored {
    /// The first `next_offset` bytes are held.
    Partial { next_offset: u64 },
    /// Every byte is held, durable and checked; `commit` or `discard` next.
    Complete(Box<Fsm>),
}

/// Where one received snapshot's bytes go while it is assembled: a
/// temporary file (`TempFile`), or the simulator's memory.
pub trait ReceivedFile: Sized {
    /// What `commit` yields (the final path, or the bytes).
    type Committed;
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Every byte is there: make them durable, then read them back as a
    /// snapshot (as a stream, never whole in memory).
    fn check(
        &mut self,
        size_bytes: u64,
    ) -> Result<std::result::Result<(SnapshotMeta, Fsm), String>>;
    /// Put the checked snapshot in place durably.
    fn commit(self, snapshot: SnapshotMeta) -> Result<Self::Committed>;
    /// Throw it away.
    fn remove(self);
}

struct Receiving<F> {
    snapshot: SnapshotMeta,
    file: F,
    received_bytes: u64,
}

/// The follower's side: one snapshot being received at a time.
pub struct Assembler<F> {
    receiving: Option<Receiving<F>>,
}

impl<F> Default for Assembler<F> {
    fn default() -> Self {
        Assembler { receiving: None }
    }
}

impl<F: ReceivedFile> Assembler<F> {
    /// Stores one chunk of `snapshot` at `offset` (see the module doc);
    /// `create` makes the file for a snapshot seen for the first time.
    pub fn store(
        &mut self,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &[u8],
        create: impl FnOnce(SnapshotMeta) -> Result<F>,
    ) -> Result<Stored> {
        if self.receiving.as_ref().map(|r| r.snapshot) != Some(snapshot) {
            self.discard();
            if offset != 0 {
                return Ok(Stored::Partial { next_offset: 0 });
            }
            self.receiving = Some(Receiving {
                snapshot,
                file: create(snapshot)?,
                received_bytes: 0,
            });
        }
        let Some(receiving) = self.receiving.as_mut() else {
            return Ok(Stored::Partial { next_offset: 0 });
        };
        if offset == receiving.received_bytes && !data.is_empty() {
            receiving.file.append(data)?;
            receiving.received_bytes += data.len() as u64;
        }
        if receiving.received_bytes < snapshot.size_bytes {
            return Ok(Stored::Partial {
                next_offset: receiving.received_bytes,
            });
        }
        match receiving.file.check(receiving.received_bytes)? {
            Ok((meta, fsm)) if meta == snapshot => Ok(Stored::Complete(Box::new(fsm))),
            Ok((meta, _)) => {
                log::warn!(
                    "received snapshot says {meta:?}, the leader announced {snapshot:?}; starting over"
                );
                self.discard();
                Ok(Stored::Partial { next_offset: 0 })
            }
            Err(reason) => {
                log::warn!(
                    "received snapshot {} is damaged ({reason}); starting over",
                    snapshot.index
                );
                self.discard();
                Ok(Stored::Partial { next_offset: 0 })
            }
        }
    }

    /// Puts the complete snapshot in place (durably).
    pub fn commit(&mut self) -> Result<Option<F::Committed>> {
        match self.receiving.take() {
            Some(receiving) => receiving.file.commit(receiving.snapshot).map(Some),
            None => Ok(None),
        }
    }

    /// Drops whatever is being received.
    pub fn discard(&mut self) {
        if let Some(receiving) = self.receiving.take() {
            receiving.file.remove();
        }
    }
}

/// A received snapshot in `receiving-<name>.tmp` of a data dir.
pub struct TempFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    fsync: bool,
}

impl TempFile {
    pub fn create(dir: &Path, fsync: bool, snapshot: SnapshotMeta) -> Result<TempFile> {
        let path = dir.join(format!(
            "receiving-{}.tmp",
            file_name(snapshot.index, snapshot.term)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(TempFile {
            dir: dir.to_path_buf(),
            path,
            file,
            fsync,
        })
    }
}

impl ReceivedFile for TempFile {
    type Committed = PathBuf;

    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    fn check(
        &mut self,
        size_bytes: u64,
    ) -> Result<std::result::Result<(SnapshotMeta, Fsm), String>> {
        if self.fsync {
            self.file
                .sync_all()
                .map_err(|e| Error::io(format!("fsyncing {}", self.path.display()), e))?;
        }
        let file = File::open(&self.path)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        Ok(decode_from(
            BufReader::with_capacity(1 << 20, file),
            size_bytes,
        ))
    }

    fn commit(self, snapshot: SnapshotMeta) -> Result<PathBuf> {
        let path = self.dir.join(file_name(snapshot.index, snapshot.term));
        std::fs::rename(&self.path, &path)
            .map_err(|e| Error::io(format!("renaming {}", self.path.display()), e))?;
        if self.fsync {
            crate::storage::sync_dir(&self.dir)
                .map_err(|e| Error::io(format!("fsyncing {}", self.dir.display()), e))?;
        }
        Ok(path)
    }

    fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::debug!("removing {}: {e}", self.path.display());
        }
    }
}
