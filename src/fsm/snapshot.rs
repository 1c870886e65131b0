//! Snapshots of the state machine: the whole file map as one byte string, so a
//! node can compact its log and bring a lagging follower up to date
//! (InstallSnapshot).
//!
//! Format, little-endian (the same name and content encodings as a batch):
//!
//! ```text
//! snapshot := format:u8 (= 1)  version_counter:u64  cluster_time_ms:u64  count:u64  file{count}
//! file     := name:(len:u8 bytes)  version:u64  deadline_ms:u64 (0 = never)  content:(len:u32 bytes)
//! ```
//!
//! Invariants: `Fsm::from_snapshot(&fsm.snapshot())` answers every read,
//! write, cas and delete exactly as `fsm` would, and has the same `checksum`;
//! the version counter and cluster time survive, so versions are not reused
//! and expiry goes on from the same cluster time. Restoring never panics on
//! garbage and refuses duplicate names and versions above the counter.
//!
//! Left out: chunking (the caller owns transport and storage of the bytes)
//! and identical bytes across replicas (file order follows each replica's
//! arena; only the content is guaranteed equal).

use bytes::{BufMut, Bytes, BytesMut};

use super::command::Reader;
use super::files::File;
use super::{DecodeError, Fsm};

/// The format byte that opens every snapshot.
pub const SNAPSHOT_FORMAT: u8 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 1 + 8 + 8 + 8;
/// The smallest encoded file: a one-byte name and empty content.
const FILE_BYTES_MIN: usize = 1 + 1 + 8 + 8 + 4;

fn encoded_file_len(file: &File) -> usize {
    1 + file.name().len() + 8 + 8 + 4 + file.content().len()
}

impl Fsm {
    /// The whole state as one byte string (see the module doc).
    pub fn snapshot(&self) -> Bytes {
        let len = SNAPSHOT_HEADER_BYTES + self.files.iter().map(encoded_file_len).sum::<usize>();
        let mut out = BytesMut::with_capacity(len);
        out.put_u8(SNAPSHOT_FORMAT);
        out.put_u64_le(self.files.version_counter());
        out.put_u64_le(self.cluster_time_ms);
        out.put_u64_le(self.files.len() as u64);
        for file in self.files.iter() {
            // Names and contents in the map came through the codec's bounds,
            // so these casts cannot truncate.
            out.put_u8(file.name().len() as u8);
            out.put_slice(file.name());
            out.put_u64_le(file.version());
            out.put_u64_le(file.deadline_ms().unwrap_or(0));
            out.put_u32_le(file.content().len() as u32);
            out.put_slice(file.content());
        }
        debug_assert_eq!(out.len(), len);
        out.freeze()
    }

    /// Rebuilds a state machine from `snapshot()` bytes.
    pub fn from_snapshot(data: &[u8]) -> Result<Fsm, DecodeError> {
        let mut reader = Reader::new(data);
        let format = reader.u8()?;
        if format != SNAPSHOT_FORMAT {
            return Err(DecodeError::UnknownFormat(format));
        }
        let version_counter = reader.u64()?;
        let cluster_time_ms = reader.u64()?;
        let count = reader.u64()?;
        if count > (reader.remaining() / FILE_BYTES_MIN) as u64 {
            return Err(DecodeError::Truncated);
        }
        let mut fsm = Fsm::new();
        fsm.files.set_version_counter(version_counter);
        fsm.cluster_time_ms = cluster_time_ms;
        for _ in 0..count {
            let name = reader.name()?;
            let version = reader.u64()?;
            let deadline_ms = reader.u64()?;
            let content = reader.content()?;
            if version > version_counter {
                return Err(DecodeError::VersionAboveCounter {
                    version,
                    version_counter,
                });
            }
            if fsm.files.find(name).is_some() {
                return Err(DecodeError::DuplicateName);
            }
            let deadline_ms = (deadline_ms != 0).then_some(deadline_ms);
            fsm.files.insert(name, content, version, deadline_ms);
        }
        if reader.remaining() != 0 {
            return Err(DecodeError::TrailingBytes(reader.remaining()));
        }
        // A snapshot taken after apply holds no due file; one from elsewhere
        // might, and apply's invariant is that none survives to the next command.
        fsm.files.expire_through(cluster_time_ms);
        Ok(fsm)
    }
}
