//! The peer wire format: frames, the handshake, and the cluster id.
//!
//! Owns: how bytes on a peer connection are cut into frames and what the
//! frames mean. Every frame is a `u32` little-endian payload length followed
//! by the payload. The dialer's first frame is a hello: the 4 magic bytes
//! `RFSP`, the format version as a `u32` little endian, then the bincode body
//! (cluster id, sender id and incarnation, intended receiver). The magic and
//! version sit outside bincode so that a node of another format version is
//! still told why it is refused instead of failing to decode. The receiver
//! answers with one `HelloReply` frame; after `Accept` the dialer sends only
//! `Envelope` frames and the receiver sends nothing more.
//!
//! The cluster id is random, made once by the cluster's first leader and
//! stored in every data dir (`storage`); 0 in a hello means "not known yet"
//! (a data dir that has not met its cluster). `Accept` names the receiver's
//! cluster id so such a dialer adopts it. A `Refuse` says whether it is
//! `fatal` (this data dir was removed, or its id is bound to another data
//! dir: SPEC §3, the dialer stops) or not (another cluster, another node,
//! not a member yet: the dialer logs it and retries, slowly).
//!
//!
//! A status probe (`raftfs status`) is a connection whose first frame is the
//! 4 bytes `STATUS_MAGIC` and the format version: the receiver answers with
//! one frame holding its status report (its encoding belongs to `status`)
//! and closes. It needs no cluster id, so an operator's tool can ask any node.
//! A probe may carry a membership request after the version (`raftfs
//! member`; its encoding belongs to `member`): the answer is then the
//! request's, not the report.
//!
//! Invariants: decoding never panics and never allocates more than the frame
//! it was given (bincode runs over a slice with a byte limit equal to the
//! payload's own length, so no declared length or count can make it
//! reserve more than the bytes actually present); a frame longer
//! than the caller's maximum is an error as soon as its header is seen, before
//! its bytes are buffered. Encoding writes straight into a `BytesMut`;
//! `encode_envelope` yields the same bytes as segments, so an entry's data is
//! shared by the frames for every follower instead of copied into each.
//!
//! Leaves out: sockets, buffering policy and the incarnation decision
//! (`net::peer` and the caller).

use crate::limits;
use crate::raft::{Envelope, Message, NodeId};
use bincode::Options;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_BYTES: usize = 4;
/// First bytes of every hello: tells a peer connection from a stray client.
pub const HELLO_MAGIC: [u8; 4] = *b"RFSP";
/// First bytes of a status probe's only frame.
pub const STATUS_MAGIC: [u8; 4] = *b"RFSQ";
/// Bumped whenever a frame's meaning changes; peers of another version are
/// refused with a reason.
/// 2: the cluster id is persisted and announced in `Accept`; `Refuse` says
/// whether it is fatal.
pub const FORMAT_VERSION: u32 = 2;

/// The bincode configuration of every payload: varint integers (indexes and
/// terms are mostly small), little endian, trailing bytes rejected, and a size
/// limit (`limit_bytes`) so a hostile length inside a payload cannot make
/// decoding allocate: bincode checks each declared length against what is
/// left of the limit before it reserves, so with the limit set to the
/// payload's length a claim beyond the bytes present fails at once.
fn options(limit_bytes: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit_bytes as u64)
}

/// What a dialer says about itself before sending any envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The dialer's cluster (0: it does not know its cluster yet).
    pub cluster_id: u64,
    pub from: NodeId,
    /// The sender's data-dir incarnation (SPEC §3).
    pub incarnation: u64,
    /// The node the sender means to reach at this address.
    pub to: NodeId,
}

/// The receiver's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// `cluster_id`: the receiver's (0: it does not know it yet either).
    Accept { cluster_id: u64 },
    /// `fatal`: the dialer must stop (SPEC §3); else it retries later.
    Refuse { reason: String, fatal: bool },
}

/// Why bytes could not be taken as a frame or a payload.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// The length prefix announces more than the connection allows.
    FrameTooLarge {
        length_bytes: usize,
        max_bytes: usize,
    },
    /// The first frame does not start with `HELLO_MAGIC`.
    NotPeerProtocol,
    /// A hello of another format version.
    FormatVersion(u32),
    /// The payload does not decode as what was expected.
    Malformed(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::FrameTooLarge {
                length_bytes,
                max_bytes,
            } => {
                write!(
                    f,
                    "frame of {length_bytes} bytes exceeds the limit of {max_bytes}"
                )
            }
            WireError::NotPeerProtocol => write!(f, "not the raftfs peer protocol (bad magic)"),
            WireError::FormatVersion(version) => {
                write!(
                    f,
                    "peer format version {version}, this node speaks {FORMAT_VERSION}"
                )
            }
            WireError::Malformed(message) => write!(f, "undecodable frame: {message}"),
        }
    }
}

/// Why a value could not be encoded as a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum EncodeError {
    FrameTooLarge { length_bytes: u64, max_bytes: usize },
    Serialize(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::FrameTooLarge {
                length_bytes,
                max_bytes,
            } => {
                write!(
                    f,
                    "frame of {length_bytes} bytes exceeds the limit of {max_bytes}"
                )
            }
            EncodeError::Serialize(message) => write!(f, "cannot encode: {message}"),
        }
    }
}

/// Takes the next whole frame's payload off the front of `buffer`, if one is
/// there. `Ok(None)` means more bytes are needed. The payload is split off
/// without a copy.
pub fn next_frame(buffer: &mut BytesMut, max_bytes: usize) -> Result<Option<BytesMut>, WireError> {
    let Some(header) = buffer.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let mut length = [0u8; FRAME_HEADER_BYTES];
    length.copy_from_slice(header);
    let length_bytes = u32::from_le_bytes(length) as usize;
    if length_bytes > max_bytes {
        return Err(WireError::FrameTooLarge {
            length_bytes,
            max_bytes,
        });
    }
    if buffer.len() < FRAME_HEADER_BYTES + length_bytes {
        return Ok(None);
    }
    buffer.advance(FRAME_HEADER_BYTES);
    Ok(Some(buffer.split_to(length_bytes)))
}

/// Encodes `value` as one frame at the end of `buffer` (which the caller keeps
/// empty between frames, so its allocation is reused) and returns the frame.
pub fn encode_frame<T: Serialize>(
    value: &T,
    buffer: &mut BytesMut,
    max_bytes: usize,
) -> Result<Bytes, EncodeError> {
    let payload_bytes = options(limits::PEER_FRAME_BYTES_MAX)
        .serialized_size(value)
        .map_err(|error| EncodeError::Serialize(error.to_string()))?;
    if payload_bytes > max_bytes as u64 || payload_bytes > u64::from(u32::MAX) {
        return Err(EncodeError::FrameTooLarge {
            length_bytes: payload_bytes,
            max_bytes,
        });
    }
    // Frames share one allocation until it is used up; the minimum keeps small
    // frames from allocating one by one.
    buffer.reserve((FRAME_HEADER_BYTES + payload_bytes as usize).max(64 << 10));
    buffer.put_u32_le(payload_bytes as u32);
    if let Err(error) =
        options(limits::PEER_FRAME_BYTES_MAX).serialize_into(&mut (&mut *buffer).writer(), value)
    {
        buffer.clear();
        return Err(EncodeError::Serialize(error.to_string()));
    }
    debug_assert_eq!(buffer.len(), FRAME_HEADER_BYTES + payload_bytes as usize);
    Ok(buffer.split().freeze())
}

/// Entry data up to this many bytes is copied into the frame's own bytes;
/// longer data goes out as its own segment, straight from the log's `Bytes`
/// (copying a few hundred bytes is cheaper than the two extra slices, one
/// for the data and one for the header after it, in every vectored write; a
/// judgement, not a measured optimum: `benches/peer_encode.rs` covers 130-byte
/// entries, inlined, and 8 KiB ones, shared).
pub const INLINE_DATA_BYTES_MAX: usize = 512;

/// bincode's variant index of `Message::AppendEntries` (declaration order);
/// a unit test checks it against bincode's own encoding.
const APPEND_ENTRIES_VARIANT: u64 = 4;

/// Encodes `envelope` as one frame, appended to `segments` as byte strings to
/// be written in order; returns the frame's length in bytes. The bytes are
/// exactly those of `encode_frame` (the decoder does not change), but the
/// data of an AppendEntries' entries is not copied: each entry longer than
/// `INLINE_DATA_BYTES_MAX` becomes its own segment, a clone of the entry's
/// `Bytes` shared with the log and with the frames for the other followers.
/// Only the small headers (envelope fields, each entry's term, index and
/// length) are encoded per frame, into `buffer` (kept empty between calls
/// so its allocation is reused). Other messages take one segment.
pub fn encode_envelope(
    envelope: &Envelope,
    buffer: &mut BytesMut,
    max_bytes: usize,
    segments: &mut Vec<Bytes>,
) -> Result<usize, EncodeError> {
    let Message::AppendEntries {
        prev_log_index,
        prev_log_term,
        entries,
        leader_commit,
    } = &envelope.message
    else {
        let frame = encode_frame(envelope, buffer, max_bytes)?;
        let frame_bytes = frame.len();
        segments.push(frame);
        return Ok(frame_bytes);
    };
    let header = [
        envelope.from,
        envelope.to,
        envelope.term,
        envelope.incarnation,
        APPEND_ENTRIES_VARIANT,
        *prev_log_index,
        *prev_log_term,
        entries.len() as u64,
    ];
    // One pass for the sizes: the whole payload, and the part written into
    // `buffer` (everything but the data of long entries).
    let mut inline_bytes = header
        .iter()
        .map(|value| varint_bytes(*value))
        .sum::<usize>()
        + varint_bytes(*leader_commit);
    let mut payload_bytes = inline_bytes as u64;
    for entry in entries {
        let data_bytes = entry.data.len();
        let entry_header_bytes =
            varint_bytes(entry.term) + varint_bytes(entry.index) + varint_bytes(data_bytes as u64);
        inline_bytes += entry_header_bytes;
        if data_bytes <= INLINE_DATA_BYTES_MAX {
            inline_bytes += data_bytes;
        }
        payload_bytes += (entry_header_bytes + data_bytes) as u64;
    }
    if payload_bytes > max_bytes as u64 || payload_bytes > u64::from(u32::MAX) {
        return Err(EncodeError::FrameTooLarge {
            length_bytes: payload_bytes,
            max_bytes,
        });
    }
    buffer.reserve((FRAME_HEADER_BYTES + inline_bytes).max(64 << 10));
    buffer.put_u32_le(payload_bytes as u32);
    for value in header {
        put_varint(buffer, value);
    }
    for entry in entries {
        put_varint(buffer, entry.term);
        put_varint(buffer, entry.index);
        put_varint(buffer, entry.data.len() as u64);
        if entry.data.len() <= INLINE_DATA_BYTES_MAX {
            buffer.put_slice(&entry.data);
        } else {
            segments.push(buffer.split().freeze());
            segments.push(entry.data.clone());
        }
    }
    put_varint(buffer, *leader_commit);
    segments.push(buffer.split().freeze());
    Ok(FRAME_HEADER_BYTES + payload_bytes as usize)
}

/// Bytes of `value` in bincode's varint encoding.
fn varint_bytes(value: u64) -> usize {
    match value {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// bincode 1.3's varint: one byte up to 250, else a marker byte (251, 252,
/// 253) and the value as a little-endian u16, u32 or u64.
fn put_varint(buffer: &mut BytesMut, value: u64) {
    match value {
        0..=250 => buffer.put_u8(value as u8),
        251..=0xffff => {
            buffer.put_u8(251);
            buffer.put_u16_le(value as u16);
        }
        0x1_0000..=0xffff_ffff => {
            buffer.put_u8(252);
            buffer.put_u32_le(value as u32);
        }
        _ => {
            buffer.put_u8(253);
            buffer.put_u64_le(value);
        }
    }
}

/// Encodes a hello frame (magic and version in front of the bincode body).
pub fn encode_hello(hello: &Hello) -> Result<Bytes, EncodeError> {
    let body = options(limits::PEER_HANDSHAKE_BYTES_MAX)
        .serialize(hello)
        .map_err(|error| EncodeError::Serialize(error.to_string()))?;
    let payload_bytes = HELLO_MAGIC.len() + 4 + body.len();
    let mut frame = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload_bytes);
    frame.put_u32_le(payload_bytes as u32);
    frame.put_slice(&HELLO_MAGIC);
    frame.put_u32_le(FORMAT_VERSION);
    frame.put_slice(&body);
    Ok(frame.freeze())
}

/// The one frame of a status probe.
pub fn encode_status_probe() -> Bytes {
    let mut frame = BytesMut::with_capacity(FRAME_HEADER_BYTES + STATUS_MAGIC.len() + 4);
    frame.put_u32_le((STATUS_MAGIC.len() + 4) as u32);
    frame.put_slice(&STATUS_MAGIC);
    frame.put_u32_le(FORMAT_VERSION);
    frame.freeze()
}

/// The one frame of a status probe carrying a membership request (at most
/// a handshake frame's size).
pub fn encode_member_probe(request: &[u8]) -> Result<Bytes, EncodeError> {
    let payload_bytes = STATUS_MAGIC.len() + 4 + request.len();
    if payload_bytes > limits::PEER_HANDSHAKE_BYTES_MAX {
        return Err(EncodeError::FrameTooLarge {
            length_bytes: payload_bytes as u64,
            max_bytes: limits::PEER_HANDSHAKE_BYTES_MAX,
        });
    }
    let mut frame = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload_bytes);
    frame.put_u32_le(payload_bytes as u32);
    frame.put_slice(&STATUS_MAGIC);
    frame.put_u32_le(FORMAT_VERSION);
    frame.put_slice(request);
    Ok(frame.freeze())
}

/// Where a probe's membership request starts in its payload.
pub fn probe_request_offset() -> usize {
    STATUS_MAGIC.len() + 4
}

/// Whether a first frame is a status probe rather than a hello.
pub fn is_status_probe(payload: &[u8]) -> bool {
    payload.get(..STATUS_MAGIC.len()) == Some(&STATUS_MAGIC[..])
}

/// `payload` as one frame (a status report or a membership answer), or an
/// error if it is over `STATUS_REPORT_BYTES_MAX`.
pub fn encode_raw_frame(payload: &[u8]) -> Result<Bytes, EncodeError> {
    if payload.len() > limits::STATUS_REPORT_BYTES_MAX {
        return Err(EncodeError::FrameTooLarge {
            length_bytes: payload.len() as u64,
            max_bytes: limits::STATUS_REPORT_BYTES_MAX,
        });
    }
    let mut frame = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.put_u32_le(payload.len() as u32);
    frame.put_slice(payload);
    Ok(frame.freeze())
}

/// Decodes a hello payload; the magic and version are checked before the body.
pub fn decode_hello(payload: &[u8]) -> Result<Hello, WireError> {
    if payload.get(..HELLO_MAGIC.len()) != Some(&HELLO_MAGIC[..]) {
        return Err(WireError::NotPeerProtocol);
    }
    let mut version = [0u8; 4];
    match payload.get(HELLO_MAGIC.len()..HELLO_MAGIC.len() + 4) {
        Some(bytes) => version.copy_from_slice(bytes),
        None => return Err(WireError::Malformed("hello shorter than its header".into())),
    }
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(WireError::FormatVersion(version));
    }
    decode(&payload[HELLO_MAGIC.len() + 4..])
}

/// Encodes a handshake answer; an overlong refusal reason is cut at a char
/// boundary so the frame stays under `PEER_HANDSHAKE_BYTES_MAX`.
pub fn encode_reply(reply: &HelloReply) -> Result<Bytes, EncodeError> {
    let reply = match reply {
        HelloReply::Refuse { reason, fatal }
            if reason.len() > limits::PEER_REFUSE_REASON_BYTES_MAX =>
        {
            let mut end = limits::PEER_REFUSE_REASON_BYTES_MAX;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            HelloReply::Refuse {
                reason: reason[..end].to_string(),
                fatal: *fatal,
            }
        }
        other => other.clone(),
    };
    encode_frame(
        &reply,
        &mut BytesMut::new(),
        limits::PEER_HANDSHAKE_BYTES_MAX,
    )
}

pub fn decode_reply(payload: &[u8]) -> Result<HelloReply, WireError> {
    decode(payload)
}

pub fn decode_envelope(payload: &[u8]) -> Result<Envelope, WireError> {
    decode(payload)
}

fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, WireError> {
    options(payload.len())
        .deserialize(payload)
        .map_err(|error| WireError::Malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, Message};

    fn envelope(data: &[u8]) -> Envelope {
        Envelope {
            from: 1,
            to: 2,
            term: 7,
            incarnation: 99,
            message: Message::AppendEntries {
                prev_log_index: 3,
                prev_log_term: 6,
                entries: vec![Entry {
                    term: 7,
                    index: 4,
                    data: Bytes::copy_from_slice(data),
                }],
                leader_commit: 3,
            },
        }
    }

    #[test]
    fn frames_round_trip_and_split_at_any_byte() {
        let mut encode_buffer = BytesMut::new();
        let first = encode_frame(&envelope(b"one"), &mut encode_buffer, 1 << 20).unwrap();
        let second = encode_frame(&envelope(b"two"), &mut encode_buffer, 1 << 20).unwrap();
        assert!(encode_buffer.is_empty());
        let wire: Vec<u8> = first.iter().chain(second.iter()).copied().collect();
        for cut in 0..wire.len() {
            let mut buffer = BytesMut::from(&wire[..cut]);
            let mut decoded = Vec::new();
            while let Some(payload) = next_frame(&mut buffer, 1 << 20).unwrap() {
                decoded.push(decode_envelope(&payload).unwrap());
            }
            buffer.extend_from_slice(&wire[cut..]);
            while let Some(payload) = next_frame(&mut buffer, 1 << 20).unwrap() {
                decoded.push(decode_envelope(&payload).unwrap());
            }
            assert_eq!(
                decoded,
                vec![envelope(b"one"), envelope(b"two")],
                "cut at {cut}"
            );
            assert!(buffer.is_empty());
        }
    }

    /// Every field at each varint width boundary, and entry data on both
    /// sides of the inline limit: the segments concatenate to exactly what
    /// bincode writes, and long data is shared, not copied.
    #[test]
    fn segmented_append_entries_match_bincode_byte_for_byte() {
        let values = [
            0,
            250,
            251,
            0xffff,
            0x1_0000,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ];
        let data_lengths = [
            0,
            250,
            251,
            INLINE_DATA_BYTES_MAX,
            INLINE_DATA_BYTES_MAX + 1,
            70_000,
        ];
        let mut encode_buffer = BytesMut::new();
        let mut segments = Vec::new();
        for (position, value) in values.iter().enumerate() {
            let other = values[(position + 3) % values.len()];
            let entries: Vec<Entry> = data_lengths
                .iter()
                .map(|length| Entry {
                    term: *value,
                    index: other,
                    data: Bytes::from(vec![*length as u8; *length]),
                })
                .collect();
            let envelope = Envelope {
                from: *value,
                to: other,
                term: *value,
                incarnation: other,
                message: Message::AppendEntries {
                    prev_log_index: other,
                    prev_log_term: *value,
                    entries: entries.clone(),
                    leader_commit: *value,
                },
            };
            let expected = encode_frame(&envelope, &mut encode_buffer, 1 << 20).unwrap();
            let frame_bytes =
                encode_envelope(&envelope, &mut encode_buffer, 1 << 20, &mut segments).unwrap();
            assert_eq!(frame_bytes, expected.len());
            assert_eq!(segments.concat(), expected.to_vec(), "value {value}");
            let long: Vec<&Entry> = entries
                .iter()
                .filter(|entry| entry.data.len() > INLINE_DATA_BYTES_MAX)
                .collect();
            for entry in &long {
                assert!(
                    segments
                        .iter()
                        .any(|segment| segment.as_ptr() == entry.data.as_ptr()),
                    "long data goes out as the log's own bytes"
                );
            }
            assert_eq!(segments.len(), 1 + 2 * long.len());
            assert!(encode_buffer.is_empty());
            segments.clear();
        }
        // Other messages are one segment, as `encode_frame` writes them.
        let heartbeat = Envelope {
            message: Message::Heartbeat {
                leader_commit: 9,
                read_round: 300,
            },
            ..envelope(b"")
        };
        encode_envelope(&heartbeat, &mut encode_buffer, 1 << 20, &mut segments).unwrap();
        let expected = encode_frame(&heartbeat, &mut encode_buffer, 1 << 20).unwrap();
        assert_eq!(segments, vec![expected]);
        // The limit holds for the whole frame, data included.
        let error = encode_envelope(
            &envelope(&[0; 2000]),
            &mut encode_buffer,
            1000,
            &mut segments,
        )
        .unwrap_err();
        assert!(matches!(error, EncodeError::FrameTooLarge { .. }));
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let mut buffer = BytesMut::from(&(1001u32).to_le_bytes()[..]);
        assert_eq!(
            next_frame(&mut buffer, 1000),
            Err(WireError::FrameTooLarge {
                length_bytes: 1001,
                max_bytes: 1000
            })
        );
        let error = encode_frame(&envelope(&[0; 2000]), &mut BytesMut::new(), 1000).unwrap_err();
        assert!(matches!(error, EncodeError::FrameTooLarge { .. }));
    }

    #[test]
    fn hello_checks_magic_and_version_before_the_body() {
        let hello = Hello {
            cluster_id: 5,
            from: 1,
            incarnation: 77,
            to: 2,
        };
        let mut frame = BytesMut::from(&encode_hello(&hello).unwrap()[..]);
        let payload = next_frame(&mut frame, 4096).unwrap().unwrap();
        assert_eq!(decode_hello(&payload), Ok(hello));
        let mut other_version = payload.to_vec();
        other_version[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            decode_hello(&other_version),
            Err(WireError::FormatVersion(9))
        );
        assert_eq!(
            decode_hello(b"GET / HTTP/1.1"),
            Err(WireError::NotPeerProtocol)
        );
        assert!(matches!(
            decode_hello(b"RFSP\x01"),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn status_probes_are_told_apart_from_hellos() {
        let mut frame = BytesMut::from(&encode_status_probe()[..]);
        let payload = next_frame(&mut frame, limits::PEER_HANDSHAKE_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert!(frame.is_empty());
        assert!(is_status_probe(&payload));
        // A node without probes refuses it as not being a hello.
        assert_eq!(decode_hello(&payload), Err(WireError::NotPeerProtocol));
        let hello = encode_hello(&Hello {
            cluster_id: 1,
            from: 1,
            incarnation: 1,
            to: 2,
        })
        .unwrap();
        assert!(!is_status_probe(&hello[FRAME_HEADER_BYTES..]));
        let report = encode_raw_frame(b"{}").unwrap();
        assert_eq!(&report[..], b"\x02\x00\x00\x00{}");
        assert!(encode_raw_frame(&vec![0; limits::STATUS_REPORT_BYTES_MAX + 1]).is_err());
        let mut frame = BytesMut::from(&encode_member_probe(b"{}").unwrap()[..]);
        let payload = next_frame(&mut frame, limits::PEER_HANDSHAKE_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert!(is_status_probe(&payload));
        assert_eq!(&payload[probe_request_offset()..], b"{}");
        assert!(encode_member_probe(&vec![b' '; limits::PEER_HANDSHAKE_BYTES_MAX]).is_err());
    }

    #[test]
    fn refusal_reasons_are_cut_to_the_limit() {
        let reason = "é".repeat(limits::PEER_REFUSE_REASON_BYTES_MAX);
        let mut frame = BytesMut::from(
            &encode_reply(&HelloReply::Refuse {
                reason,
                fatal: false,
            })
            .unwrap()[..],
        );
        let payload = next_frame(&mut frame, limits::PEER_HANDSHAKE_BYTES_MAX)
            .unwrap()
            .unwrap();
        match decode_reply(&payload).unwrap() {
            HelloReply::Refuse { reason, .. } => {
                assert!(reason.len() <= limits::PEER_REFUSE_REASON_BYTES_MAX);
                assert!(reason.len() > limits::PEER_REFUSE_REASON_BYTES_MAX - 2);
            }
            HelloReply::Accept { .. } => panic!("expected a refusal"),
        }
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        let mut state = 0x1234_5678_u64;
        for length in 0..512 {
            let bytes: Vec<u8> = (0..length)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let _ = decode_envelope(&bytes);
            let _ = decode_reply(&bytes);
            let _ = decode_hello(&bytes);
        }
        // Lengths far beyond the payload must fail, not allocate: an
        // AppendEntries (variant 4) claiming u64::MAX entries, then one whose
        // single entry claims 2^40 data bytes.
        let mut hostile = vec![1u8, 2, 7, 9, 4, 0, 0, 253];
        hostile.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_envelope(&hostile).is_err());
        let mut hostile = vec![1u8, 2, 7, 9, 4, 0, 0, 1, 7, 4, 253];
        hostile.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode_envelope(&hostile).is_err());
        let mut valid = vec![1u8, 2, 7, 9, 4, 0, 0, 1, 7, 4, 3];
        valid.extend_from_slice(b"abc");
        valid.push(0);
        assert!(
            decode_envelope(&valid).is_ok(),
            "the hostile cases differ from a valid one only in length"
        );
    }
}
