//! Snapshots of the state machine: the whole file map as one byte string, so a
//! node can compact its log and bring a lagging follower up to date
//! (InstallSnapshot).
//!
//! Format, little-endian (the same name and content encodings as a batch):
//!
//! ```text
//! snapshot := format:u8 (= 2)  version_counter:u64  cluster_time_ms:u64
//!             membership:(len:u32 bytes)  count:u64  file{count}
//! file     := name:(len:u8 bytes)  version:u64  deadline_ms:u64 (0 = never)  content:(len:u32 bytes)
//! ```
//!
//! `membership` is the last Raft configuration entry applied (empty: none;
//! `raft::membership`), so a snapshot says which members were in force at
//! its index. Format 1 (written before membership change existed) has no
//! `membership` field and still loads, with none.
//!
//! Streaming: `write_snapshot` encodes file by file into any `Write` and
//! `read_snapshot` decodes file by file from any `Read`, so a snapshot file
//! of 1M files is never held in memory whole next to its map (the snapshot
//! helper's peak; src/snapshot/worker.rs). `snapshot` / `from_snapshot` are
//! the same over one byte string.
//!
//! Invariants: `Fsm::from_snapshot(&fsm.snapshot())` answers every read,
//! write, cas and delete exactly as `fsm` would, and has the same `checksum`;
//! the version counter and cluster time survive, so versions are not reused
//! and expiry goes on from the same cluster time. Restoring never panics on
//! garbage, never allocates more than the bytes it was told it may read
//! (a file's content at most `FILE_BYTES_MAX_CEILING`), and refuses
//! duplicate names and versions above the counter.
//!
//! Left out: chunking (the caller owns transport and storage of the bytes),
//! checksums (the snapshot file's trailer, src/snapshot/mod.rs) and identical
//! bytes across replicas (file order follows each replica's arena; only the
//! content is guaranteed equal).

use std::io::{self, Read, Write};

use bytes::Bytes;

use super::arena::Frozen;
use super::files::File;
use super::{DecodeError, Fsm};
use crate::limits::{FILE_BYTES_MAX_CEILING, NAME_BYTES_MAX};

/// The format byte that opens every snapshot written.
pub const SNAPSHOT_FORMAT: u8 = 2;
/// The format before membership change (read, never written).
const SNAPSHOT_FORMAT_WITHOUT_MEMBERSHIP: u8 = 1;
/// Format, version counter, cluster time, membership length, file count.
const SNAPSHOT_HEADER_BYTES: usize = 1 + 8 + 8 + 4 + 8;
/// Most bytes a snapshot's membership field may hold.
const MEMBERSHIP_BYTES_MAX: usize = 64 << 10;
/// The smallest encoded file: a one-byte name and empty content.
const FILE_BYTES_MIN: u64 = 1 + 1 + 8 + 8 + 4;

fn encoded_file_len(file: &File) -> u64 {
    (1 + file.name().len() + 8 + 8 + 4 + file.content().len()) as u64
}

impl Fsm {
    /// The whole state as of now, for a helper thread to encode while this
    /// map goes on changing: one reference count per arena chunk, no copy
    /// of a file (src/fsm/arena.rs).
    pub fn freeze(&self) -> FrozenFsm {
        FrozenFsm {
            files: self.files.freeze(),
            version_counter: self.files.version_counter(),
            cluster_time_ms: self.cluster_time_ms,
            membership: self.membership.clone(),
        }
    }

    /// The whole state as one byte string (see the module doc).
    pub fn snapshot(&self) -> Bytes {
        self.freeze().snapshot()
    }

    /// Rebuilds a state machine from `snapshot()` bytes.
    pub fn from_snapshot(data: &[u8]) -> Result<Fsm, DecodeError> {
        let mut input = data;
        Fsm::read_snapshot(&mut input, data.len() as u64)
    }

    /// Rebuilds a state machine from the next `payload_bytes` bytes of
    /// `input`, which must be exactly one `snapshot()`; reads no further.
    /// An input that ends early is `Truncated`; any other read error is
    /// `Unreadable`.
    pub fn read_snapshot<R: Read>(input: &mut R, payload_bytes: u64) -> Result<Fsm, DecodeError> {
        let mut reader = StreamReader {
            input,
            remaining: payload_bytes,
        };
        let format = reader.u8()?;
        if format != SNAPSHOT_FORMAT && format != SNAPSHOT_FORMAT_WITHOUT_MEMBERSHIP {
            return Err(DecodeError::UnknownFormat(format));
        }
        let version_counter = reader.u64()?;
        let cluster_time_ms = reader.u64()?;
        let mut membership = Vec::new();
        if format == SNAPSHOT_FORMAT {
            let len = reader.u32()? as usize;
            if len > MEMBERSHIP_BYTES_MAX {
                return Err(DecodeError::ContentTooLong(len));
            }
            if len as u64 > reader.remaining {
                return Err(DecodeError::Truncated);
            }
            membership.resize(len, 0);
            reader.fill(&mut membership)?;
        }
        let count = reader.u64()?;
        if count > reader.remaining / FILE_BYTES_MIN {
            return Err(DecodeError::Truncated);
        }
        let mut fsm = Fsm::new();
        fsm.files.set_version_counter(version_counter);
        fsm.cluster_time_ms = cluster_time_ms;
        fsm.membership = Bytes::from(membership);
        let mut name = [0u8; NAME_BYTES_MAX];
        let mut content = Vec::new();
        for _ in 0..count {
            let name = reader.name(&mut name)?;
            let version = reader.u64()?;
            let deadline_ms = reader.u64()?;
            reader.content(&mut content)?;
            if version > version_counter {
                return Err(DecodeError::VersionAboveCounter {
                    version,
                    version_counter,
                });
            }
            let hash = fsm.files.hash_name(name);
            if fsm.files.find_hashed(hash, name).is_some() {
                return Err(DecodeError::DuplicateName);
            }
            let deadline_ms = (deadline_ms != 0).then_some(deadline_ms);
            fsm.files
                .insert_hashed(hash, name, &content, version, deadline_ms);
        }
        if reader.remaining != 0 {
            return Err(DecodeError::TrailingBytes(
                usize::try_from(reader.remaining).unwrap_or(usize::MAX),
            ));
        }
        // A snapshot taken after apply holds no due file; one from elsewhere
        // might, and apply's invariant is that none survives to the next command.
        fsm.files.expire_through(cluster_time_ms);
        Ok(fsm)
    }
}

/// The state of an `Fsm` at one moment (`Fsm::freeze`); it never changes.
#[derive(Clone, Debug)]
pub struct FrozenFsm {
    files: Frozen<File>,
    version_counter: u64,
    cluster_time_ms: u64,
    membership: Bytes,
}

impl FrozenFsm {
    /// The whole state as one byte string (see the module doc).
    pub fn snapshot(&self) -> Bytes {
        // The length is what the allocation is sized by, not data from outside.
        let mut out = Vec::with_capacity(self.snapshot_len() as usize);
        // Writing into a Vec cannot fail.
        let _ = self.write_snapshot(&mut out);
        debug_assert_eq!(out.len() as u64, self.snapshot_len());
        Bytes::from(out)
    }

    /// The length of `snapshot()` in bytes, without encoding it.
    pub fn snapshot_len(&self) -> u64 {
        SNAPSHOT_HEADER_BYTES as u64
            + self.membership.len() as u64
            + self.files.iter().map(encoded_file_len).sum::<u64>()
    }

    /// Encodes the whole state into `out`, file by file: exactly
    /// `snapshot_len()` bytes, the same as `snapshot()`.
    pub fn write_snapshot<W: Write>(&self, out: &mut W) -> io::Result<()> {
        let mut header = [0u8; 1 + 8 + 8 + 4];
        header[0] = SNAPSHOT_FORMAT;
        header[1..9].copy_from_slice(&self.version_counter.to_le_bytes());
        header[9..17].copy_from_slice(&self.cluster_time_ms.to_le_bytes());
        // Configuration entries are small (bounded by the member limits).
        header[17..21].copy_from_slice(&(self.membership.len() as u32).to_le_bytes());
        out.write_all(&header)?;
        out.write_all(&self.membership)?;
        out.write_all(&(self.files.len() as u64).to_le_bytes())?;
        for file in self.files.iter() {
            // Names and contents in the map came through the codec's bounds,
            // so these casts cannot truncate.
            let mut fixed = [0u8; 1 + NAME_BYTES_MAX + 8 + 8 + 4];
            let name = file.name();
            fixed[0] = name.len() as u8;
            let mut at = 1 + name.len();
            fixed[1..at].copy_from_slice(name);
            fixed[at..at + 8].copy_from_slice(&file.version().to_le_bytes());
            at += 8;
            fixed[at..at + 8].copy_from_slice(&file.deadline_ms().unwrap_or(0).to_le_bytes());
            at += 8;
            fixed[at..at + 4].copy_from_slice(&(file.content().len() as u32).to_le_bytes());
            at += 4;
            out.write_all(&fixed[..at])?;
            out.write_all(file.content())?;
        }
        Ok(())
    }
}

/// A bounds-checked cursor over the next `remaining` bytes of a stream.
struct StreamReader<'a, R> {
    input: &'a mut R,
    remaining: u64,
}

impl<R: Read> StreamReader<'_, R> {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), DecodeError> {
        if out.len() as u64 > self.remaining {
            return Err(DecodeError::Truncated);
        }
        self.input.read_exact(out).map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                DecodeError::Truncated
            } else {
                DecodeError::Unreadable(error.to_string())
            }
        })?;
        self.remaining -= out.len() as u64;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let mut byte = [0u8; 1];
        self.fill(&mut byte)?;
        Ok(byte[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut word = [0u8; 4];
        self.fill(&mut word)?;
        Ok(u32::from_le_bytes(word))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut word = [0u8; 8];
        self.fill(&mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    fn name<'n>(&mut self, buffer: &'n mut [u8; NAME_BYTES_MAX]) -> Result<&'n [u8], DecodeError> {
        let len = usize::from(self.u8()?);
        if !(1..=NAME_BYTES_MAX).contains(&len) {
            return Err(DecodeError::BadNameLength(len));
        }
        self.fill(&mut buffer[..len])?;
        Ok(&buffer[..len])
    }

    /// Reads a content into `buffer` (reused from file to file).
    fn content(&mut self, buffer: &mut Vec<u8>) -> Result<(), DecodeError> {
        let len = self.u32()? as usize;
        if len > FILE_BYTES_MAX_CEILING {
            return Err(DecodeError::ContentTooLong(len));
        }
        // Checked before resizing, so a bogus length allocates nothing.
        if len as u64 > self.remaining {
            return Err(DecodeError::Truncated);
        }
        buffer.resize(len, 0);
        self.fill(buffer)
    }
}
