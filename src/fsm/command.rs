//! Client commands that change files, and their encoding inside log entries.
//!
//! One log entry's data is one *batch*: the leader's cluster-time stamp and
//! the commands it proposed in one turn. The stamp is the only clock the state
//! machine ever sees (SPEC §2 expiry), so it travels inside the replicated
//! entry, and every replica applies the same stamp.
//!
//! Wire format, little-endian, no padding:
//!
//! ```text
//! batch   := format:u8 (= 1)  stamp_ms:u64  count:u32  command{count}
//! command := 1 name exptime_s:u64 content             (write)
//!          | 2 name version:u64 exptime_s:u64 content (cas)
//!          | 3 name                                   (delete)
//! name    := len:u8 (1..=NAME_BYTES_MAX) bytes
//! content := len:u32 (<= FILE_BYTES_MAX_CEILING) bytes
//! ```
//!
//! Empty entry data is not a batch: it is the Raft no-op a new leader commits.
//!
//! Invariants: `decode_batch(encode_batch(s, c)) == Batch { s, c }` for every
//! command list the protocol layer can produce (names of 1..=250 bytes,
//! contents up to the ceiling); decoding never panics and never allocates more
//! than the input can justify, whatever the bytes; names and contents of a
//! decoded batch are `Bytes::slice`s of the entry (no copy until apply).
//!
//! Left out: name byte validation (the protocol layer does it before
//! proposing; the codec only bounds lengths) and any checksum (the WAL and the
//! peer framing carry CRCs).

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::limits::{FILE_BYTES_MAX_CEILING, NAME_BYTES_MAX};

/// A change to the file map. Names and contents are `Bytes` slices of the
/// buffer they arrived in (no copy until apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Write {
        name: Bytes,
        content: Bytes,
        exptime_s: u64,
    },
    Cas {
        name: Bytes,
        version: u64,
        content: Bytes,
        exptime_s: u64,
    },
    Delete {
        name: Bytes,
    },
}

/// The format byte that opens every encoded batch.
pub const BATCH_FORMAT: u8 = 1;
/// Bytes of a batch before its first command: format, stamp, count.
pub const BATCH_HEADER_BYTES: usize = 1 + 8 + 4;

const TAG_WRITE: u8 = 1;
const TAG_CAS: u8 = 2;
const TAG_DELETE: u8 = 3;
/// The smallest encoded command: a delete of a one-byte name.
const COMMAND_BYTES_MIN: usize = 1 + 1 + 1;

const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(FILE_BYTES_MAX_CEILING <= u32::MAX as usize);

impl Command {
    /// The file this command changes.
    pub fn name(&self) -> &Bytes {
        match self {
            Command::Write { name, .. } | Command::Cas { name, .. } | Command::Delete { name } => {
                name
            }
        }
    }

    /// Bytes this command takes inside an encoded batch, so a proposer can cut
    /// batches at `limits::ENTRY_BYTES_MAX` before encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Command::Write { name, content, .. } => 1 + 1 + name.len() + 8 + 4 + content.len(),
            Command::Cas { name, content, .. } => 1 + 1 + name.len() + 8 + 8 + 4 + content.len(),
            Command::Delete { name } => 1 + 1 + name.len(),
        }
    }
}

/// One decoded log entry: the leader's stamp and the commands, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub stamp_ms: u64,
    pub commands: Vec<Command>,
}

/// Why entry data is not a valid batch. Entry data passed the WAL's or the
/// peer link's CRC, so any of these means a bug or a foreign format: the node
/// stops rather than apply something else than its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The data ends inside the header or a command.
    Truncated,
    /// The first byte is not a batch format this build knows.
    UnknownFormat(u8),
    /// A command tag this build does not know.
    UnknownCommand(u8),
    /// A name of 0 or more than `NAME_BYTES_MAX` bytes.
    BadNameLength(usize),
    /// Content longer than `FILE_BYTES_MAX_CEILING`.
    ContentTooLong(usize),
    /// Bytes left over after the last command.
    TrailingBytes(usize),
    /// A snapshot names the same file twice.
    DuplicateName,
    /// A snapshot holds a file version above its version counter.
    VersionAboveCounter { version: u64, version_counter: u64 },
    /// Reading a streamed snapshot failed (the I/O error's text).
    Unreadable(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "batch truncated"),
            DecodeError::UnknownFormat(format) => write!(f, "unknown batch format {format}"),
            DecodeError::UnknownCommand(tag) => write!(f, "unknown command tag {tag}"),
            DecodeError::BadNameLength(len) => write!(f, "bad name length {len}"),
            DecodeError::ContentTooLong(len) => {
                write!(f, "content of {len} bytes over the ceiling")
            }
            DecodeError::TrailingBytes(len) => write!(f, "{len} trailing bytes"),
            DecodeError::DuplicateName => write!(f, "snapshot names a file twice"),
            DecodeError::Unreadable(reason) => write!(f, "snapshot unreadable: {reason}"),
            DecodeError::VersionAboveCounter {
                version,
                version_counter,
            } => {
                write!(
                    f,
                    "snapshot file version {version} above the counter {version_counter}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encodes one log entry's data: the leader's cluster-time stamp and the
/// commands.
///
/// Precondition (checked by the protocol layer before anything is proposed):
/// every name has 1..=`NAME_BYTES_MAX` bytes and every content at most
/// `FILE_BYTES_MAX_CEILING`. Breaking it is a bug in the caller and panics
/// here, before the bad entry can reach any log.
pub fn encode_batch(stamp_ms: u64, commands: &[Command]) -> Bytes {
    let len = BATCH_HEADER_BYTES + commands.iter().map(Command::encoded_len).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    encode_batch_into(stamp_ms, commands, &mut out);
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// As [`encode_batch`], appending to `out` (for callers that reuse a buffer).
pub fn encode_batch_into(stamp_ms: u64, commands: &[Command], out: &mut BytesMut) {
    let count = u32::try_from(commands.len()).expect("a batch holds fewer than 2^32 commands");
    out.put_u8(BATCH_FORMAT);
    out.put_u64_le(stamp_ms);
    out.put_u32_le(count);
    for command in commands {
        match command {
            Command::Write {
                name,
                content,
                exptime_s,
            } => {
                out.put_u8(TAG_WRITE);
                put_name(out, name);
                out.put_u64_le(*exptime_s);
                put_content(out, content);
            }
            Command::Cas {
                name,
                version,
                content,
                exptime_s,
            } => {
                out.put_u8(TAG_CAS);
                put_name(out, name);
                out.put_u64_le(*version);
                out.put_u64_le(*exptime_s);
                put_content(out, content);
            }
            Command::Delete { name } => {
                out.put_u8(TAG_DELETE);
                put_name(out, name);
            }
        }
    }
}

fn put_name(out: &mut BytesMut, name: &[u8]) {
    assert!(
        (1..=NAME_BYTES_MAX).contains(&name.len()),
        "name of {} bytes reached the batch encoder",
        name.len()
    );
    out.put_u8(name.len() as u8);
    out.put_slice(name);
}

fn put_content(out: &mut BytesMut, content: &[u8]) {
    assert!(
        content.len() <= FILE_BYTES_MAX_CEILING,
        "content of {} bytes reached the batch encoder",
        content.len()
    );
    out.put_u32_le(content.len() as u32);
    out.put_slice(content);
}

/// The stamp of an encoded batch without decoding it; `None` for the empty
/// no-op entry or data that is not a batch.
pub fn batch_stamp_ms(data: &[u8]) -> Option<u64> {
    match data {
        [BATCH_FORMAT, stamp @ ..] if stamp.len() >= 8 => {
            let mut stamp_bytes = [0u8; 8];
            stamp_bytes.copy_from_slice(&stamp[..8]);
            Some(u64::from_le_bytes(stamp_bytes))
        }
        _ => None,
    }
}

/// Decodes one log entry's data. Names and contents are `Bytes::slice`s of
/// `data`. Never panics; the command vector is sized by what the data can hold,
/// not by the count it claims.
pub fn decode_batch(data: &Bytes) -> Result<Batch, DecodeError> {
    let borrowed = decode_batch_ref(data)?;
    let commands = borrowed
        .commands
        .iter()
        .map(|command| match *command {
            CommandRef::Write {
                name,
                content,
                exptime_s,
            } => Command::Write {
                name: data.slice_ref(name),
                content: data.slice_ref(content),
                exptime_s,
            },
            CommandRef::Cas {
                name,
                version,
                content,
                exptime_s,
            } => Command::Cas {
                name: data.slice_ref(name),
                version,
                content: data.slice_ref(content),
                exptime_s,
            },
            CommandRef::Delete { name } => Command::Delete {
                name: data.slice_ref(name),
            },
        })
        .collect();
    Ok(Batch {
        stamp_ms: borrowed.stamp_ms,
        commands,
    })
}

/// A command borrowed from entry data: what apply reads, with no reference
/// counting per name and content (see `decode_batch_ref`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandRef<'a> {
    Write {
        name: &'a [u8],
        content: &'a [u8],
        exptime_s: u64,
    },
    Cas {
        name: &'a [u8],
        version: u64,
        content: &'a [u8],
        exptime_s: u64,
    },
    Delete {
        name: &'a [u8],
    },
}

/// A batch borrowed from entry data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRef<'a> {
    pub stamp_ms: u64,
    pub commands: Vec<CommandRef<'a>>,
}

/// Decodes one log entry's data into borrowed commands. The same checks as
/// [`decode_batch`] (which is built on it); apply uses this one because
/// every `Bytes::slice` costs an atomic reference count up and down.
pub fn decode_batch_ref(data: &[u8]) -> Result<BatchRef<'_>, DecodeError> {
    let mut reader = Reader::new(data);
    let format = reader.u8()?;
    if format != BATCH_FORMAT {
        return Err(DecodeError::UnknownFormat(format));
    }
    let stamp_ms = reader.u64()?;
    let count = reader.u32()? as usize;
    if count > reader.remaining() / COMMAND_BYTES_MIN {
        return Err(DecodeError::Truncated);
    }
    let mut commands = Vec::with_capacity(count);
    for _ in 0..count {
        let command = match reader.u8()? {
            TAG_WRITE => {
                let name = reader.name()?;
                let exptime_s = reader.u64()?;
                let content = reader.content()?;
                CommandRef::Write {
                    name,
                    content,
                    exptime_s,
                }
            }
            TAG_CAS => {
                let name = reader.name()?;
                let version = reader.u64()?;
                let exptime_s = reader.u64()?;
                let content = reader.content()?;
                CommandRef::Cas {
                    name,
                    version,
                    content,
                    exptime_s,
                }
            }
            TAG_DELETE => CommandRef::Delete {
                name: reader.name()?,
            },
            tag => return Err(DecodeError::UnknownCommand(tag)),
        };
        commands.push(command);
    }
    if reader.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(reader.remaining()));
    }
    Ok(BatchRef { stamp_ms, commands })
}

/// A bounds-checked cursor over entry (or snapshot) data.
pub(super) struct Reader<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, position: 0 }
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len() - self.position
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let bytes = &self.data[self.position..self.position + len];
        self.position += len;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.take(4)?.get_u32_le())
    }

    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(self.take(8)?.get_u64_le())
    }

    pub(super) fn name(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u8()? as usize;
        if !(1..=NAME_BYTES_MAX).contains(&len) {
            return Err(DecodeError::BadNameLength(len));
        }
        self.take(len)
    }

    pub(super) fn content(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > FILE_BYTES_MAX_CEILING {
            return Err(DecodeError::ContentTooLong(len));
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &'static str, content: &'static str, exptime_s: u64) -> Command {
        Command::Write {
            name: Bytes::from(name),
            content: Bytes::from(content),
            exptime_s,
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let commands = vec![
            write("a", "hello", 0),
            Command::Cas {
                name: Bytes::from("b"),
                version: u64::MAX,
                content: Bytes::new(),
                exptime_s: u64::MAX,
            },
            Command::Delete {
                name: Bytes::from(vec![b'x'; NAME_BYTES_MAX]),
            },
        ];
        let data = encode_batch(42, &commands);
        assert_eq!(
            data.len(),
            BATCH_HEADER_BYTES + commands.iter().map(Command::encoded_len).sum::<usize>()
        );
        assert_eq!(
            decode_batch(&data),
            Ok(Batch {
                stamp_ms: 42,
                commands
            })
        );
        assert_eq!(batch_stamp_ms(&data), Some(42));
    }

    #[test]
    fn decoded_content_is_a_slice_of_the_entry() {
        let data = encode_batch(7, &[write("name", "content", 0)]);
        let batch = decode_batch(&data).expect("valid batch");
        let Command::Write { content, .. } = &batch.commands[0] else {
            panic!("not a write")
        };
        let entry = data.as_ptr_range();
        assert!(entry.contains(&content.as_ptr()));
    }

    #[test]
    fn empty_data_is_the_no_op_and_has_no_stamp() {
        assert_eq!(batch_stamp_ms(&[]), None);
        assert_eq!(decode_batch(&Bytes::new()), Err(DecodeError::Truncated));
    }

    #[test]
    fn every_proper_prefix_is_rejected() {
        let data = encode_batch(
            1,
            &[write("a", "xyz", 5), Command::Delete { name: "b".into() }],
        );
        for len in 0..data.len() {
            assert!(
                decode_batch(&data.slice(..len)).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut data = encode_batch(1, &[write("a", "x", 0)]).to_vec();
        data.push(0);
        assert_eq!(
            decode_batch(&Bytes::from(data.clone())),
            Err(DecodeError::TrailingBytes(1))
        );
        data[0] = 9;
        assert_eq!(
            decode_batch(&Bytes::from(data.clone())),
            Err(DecodeError::UnknownFormat(9))
        );
        assert_eq!(batch_stamp_ms(&data), None);
        data[0] = BATCH_FORMAT;
        data[BATCH_HEADER_BYTES] = 4;
        assert_eq!(
            decode_batch(&Bytes::from(data.clone())),
            Err(DecodeError::UnknownCommand(4))
        );
        data[BATCH_HEADER_BYTES] = TAG_WRITE;
        data[BATCH_HEADER_BYTES + 1] = 0;
        assert_eq!(
            decode_batch(&Bytes::from(data)),
            Err(DecodeError::BadNameLength(0))
        );
    }

    #[test]
    fn a_huge_claimed_count_is_refused_before_allocating() {
        let mut data = vec![BATCH_FORMAT];
        data.extend_from_slice(&0u64.to_le_bytes());
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_batch(&Bytes::from(data)),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn oversized_content_length_is_refused() {
        let mut data = encode_batch(1, &[write("a", "", 0)]).to_vec();
        let length_at = data.len() - 4;
        data[length_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_batch(&Bytes::from(data)),
            Err(DecodeError::ContentTooLong(u32::MAX as usize))
        );
    }

    #[test]
    #[should_panic(expected = "reached the batch encoder")]
    fn encoding_an_empty_name_is_a_caller_bug() {
        encode_batch(1, &[Command::Delete { name: Bytes::new() }]);
    }
}
