//! InstallSnapshot's bytes: the leader reads chunks from its snapshot file,
//! the follower writes them to a temporary file. Memory on both sides is one
//! chunk; the core (`raft::snapshot`) owns the protocol.
//!
//! Leader (`ChunkReader`): one open file per follower being sent to, so a
//! compaction that deletes the file mid-transfer changes nothing (the open
//! handle keeps it readable).
//!
//! Follower (`Assembler`): chunks of one snapshot are appended in order to
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

struct Receiving {
    snapshot: SnapshotMeta,
    path: PathBuf,
    file: File,
    received_bytes: u64,
}

/// The follower's side: one snapshot being received at a time.
#[derive(Default)]
pub struct Assembler {
    receiving: Option<Receiving>,
}

impl Assembler {
    /// Stores one chunk of `snapshot` at `offset` (see the module doc).
    pub fn store(
        &mut self,
        dir: &Path,
        fsync: bool,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<Stored> {
        if self.receiving.as_ref().map(|r| r.snapshot) != Some(snapshot) {
            self.discard();
            if offset != 0 {
                return Ok(Stored::Partial { next_offset: 0 });
            }
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
            self.receiving = Some(Receiving {
                snapshot,
                path,
                file,
                received_bytes: 0,
            });
        }
        let Some(receiving) = self.receiving.as_mut() else {
            return Ok(Stored::Partial { next_offset: 0 });
        };
        if offset == receiving.received_bytes && !data.is_empty() {
            receiving
                .file
                .write_all(data)
                .map_err(|e| Error::io(format!("writing {}", receiving.path.display()), e))?;
            receiving.received_bytes += data.len() as u64;
        }
        if receiving.received_bytes < snapshot.size_bytes {
            return Ok(Stored::Partial {
                next_offset: receiving.received_bytes,
            });
        }
        if fsync {
            receiving
                .file
                .sync_all()
                .map_err(|e| Error::io(format!("fsyncing {}", receiving.path.display()), e))?;
        }
        // Read back as a stream: the file is never held whole in memory.
        let file = File::open(&receiving.path)
            .map_err(|e| Error::io(format!("reading {}", receiving.path.display()), e))?;
        match decode_from(
            BufReader::with_capacity(1 << 20, file),
            receiving.received_bytes,
        ) {
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

    /// Renames the complete snapshot into place (durably). Returns its path.
    pub fn commit(&mut self, dir: &Path, fsync: bool) -> Result<Option<PathBuf>> {
        let Some(receiving) = self.receiving.take() else {
            return Ok(None);
        };
        let path = dir.join(file_name(receiving.snapshot.index, receiving.snapshot.term));
        std::fs::rename(&receiving.path, &path)
            .map_err(|e| Error::io(format!("renaming {}", receiving.path.display()), e))?;
        if fsync {
            crate::storage::sync_dir(dir)
                .map_err(|e| Error::io(format!("fsyncing {}", dir.display()), e))?;
        }
        Ok(Some(path))
    }

    /// Drops whatever is being received.
    pub fn discard(&mut self) {
        if let Some(receiving) = self.receiving.take() {
            if let Err(e) = std::fs::remove_file(&receiving.path) {
                log::debug!("removing {}: {e}", receiving.path.display());
            }
        }
    }
}
