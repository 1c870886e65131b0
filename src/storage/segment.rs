//! The on-disk format of one WAL segment file: a header, then framed records.
//!
//! ```text
//! header (24 bytes):  magic "RAFTFSWL" | format version u32 | sequence u64 | crc32c u32
//! record:             payload length u32 | crc32c u32 | payload
//! payload:            kind u8 | body
//!   kind 1, entry:      term u64 | index u64 | data (the rest of the payload)
//!   kind 2, hard state: term u64 | vote tag u8 (0 none, 1 some) [| vote u64]
//!                       | count u64 | (member id u64 | incarnation u64){count}
//!                       (members in ascending id order, each once)
//!   kind 3, log start:  index u64 | term u64 (the log now starts after
//!                       `index`, covered by a snapshot; earlier entries void)
//! ```
//! Integers are little-endian. A record's CRC32C covers its length field and
//! its payload, so a damaged length is caught as surely as damaged data.
//!
//! The hard state body is byte for byte what bincode 1.3 wrote for
//! `HardState` with its default (fixed-width integer) options, which format
//! version 1 data dirs hold; it is written by hand here so the WAL no longer
//! depends on bincode (unmaintained, RUSTSEC-2025-0141). A unit test checks
//! both against each other while bincode is still in the tree (the peer wire).
//! Any change to a record's bytes needs a new `FORMAT_VERSION`: a segment of
//! another version is refused at start with a line naming both versions.
//!
//! Invariants: `encode_*` produce exactly `*_record_bytes` bytes, and (pair
//! check) a debug build decodes every record it has just encoded and compares
//! it with the original. `decode_record` never panics and never allocates
//! more than the bytes it was given, whatever those bytes are.
//!
//! Left out: which records mean what for the log (replay's job) and any I/O.

use crate::limits::WAL_RECORD_BYTES_MAX;
use crate::raft::message::{Entry, HardState};
use bytes::Bytes;

pub const SEGMENT_MAGIC: &[u8; 8] = b"RAFTFSWL";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 24;
/// Length and CRC in front of every payload.
pub const FRAME_BYTES: usize = 8;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_LOG_START: u8 = 3;
/// Kind, index and term of a log start record.
const LOG_START_PAYLOAD_BYTES: usize = 1 + 8 + 8;
/// Bytes `encode_log_start` adds.
pub const LOG_START_RECORD_BYTES: usize = FRAME_BYTES + LOG_START_PAYLOAD_BYTES;
/// Kind, term and index in front of an entry's data.
const ENTRY_PREFIX_BYTES: usize = 1 + 8 + 8;

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry(Entry),
    HardState(HardState),
    /// Every entry before this record is void; the log continues after
    /// `index` (a snapshot through `index`, of `term`, was installed).
    LogStart {
        index: u64,
        term: u64,
    },
}

/// Why the bytes at an offset are not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The frame is cut short or its CRC does not match: what a write torn by
    /// a crash looks like (and also what corruption looks like).
    Torn(String),
    /// The CRC matches but the payload cannot be understood: never the result
    /// of a torn write, always a refusal.
    Undecodable(String),
}

/// The 24-byte header that opens the segment with this sequence number.
pub fn encode_header(sequence: u64) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&sequence.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a segment's header and returns the sequence number it names.
pub fn decode_header(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "header is {} bytes, expected {HEADER_BYTES}",
            bytes.len()
        ));
    }
    if &bytes[0..8] != SEGMENT_MAGIC {
        return Err("bad magic (not a raftfs WAL segment)".to_string());
    }
    let crc_stored = read_u32(bytes, 20);
    if crc32c::crc32c(&bytes[0..20]) != crc_stored {
        return Err("header CRC mismatch".to_string());
    }
    let version = read_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads only version {FORMAT_VERSION}"
        ));
    }
    Ok(read_u64(bytes, 12))
}

/// Bytes `encode_entry` adds for this entry.
pub fn entry_record_bytes(entry: &Entry) -> usize {
    FRAME_BYTES + ENTRY_PREFIX_BYTES + entry.data.len()
}

/// Largest entry data that fits in one record.
pub const ENTRY_DATA_BYTES_MAX: usize = WAL_RECORD_BYTES_MAX - ENTRY_PREFIX_BYTES;

/// Appends one framed entry record to `buffer`. The caller has checked
/// `entry.data.len() <= ENTRY_DATA_BYTES_MAX`.
pub fn encode_entry(buffer: &mut Vec<u8>, entry: &Entry) {
    debug_assert!(entry.data.len() <= ENTRY_DATA_BYTES_MAX);
    let start = buffer.len();
    let payload_bytes = ENTRY_PREFIX_BYTES + entry.data.len();
    buffer.reserve(FRAME_BYTES + payload_bytes);
    buffer.extend_from_slice(&(payload_bytes as u32).to_le_bytes());
    buffer.extend_from_slice(&[0u8; 4]);
    buffer.push(KIND_ENTRY);
    buffer.extend_from_slice(&entry.term.to_le_bytes());
    buffer.extend_from_slice(&entry.index.to_le_bytes());
    buffer.extend_from_slice(&entry.data);
    seal(buffer, start);
    debug_assert_eq!(buffer.len() - start, entry_record_bytes(entry));
    debug_assert_eq!(
        decode_record(&buffer[start..], 0),
        Ok(Some((Record::Entry(entry.clone()), buffer.len() - start))),
        "pair check: an entry record must decode to the entry it encodes"
    );
}

/// The payload of a hard state record, encoded ahead so its size is known.
pub fn hard_state_payload(hard_state: &HardState) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + 8 + 9 + 8 + 16 * hard_state.incarnations.len());
    payload.push(KIND_HARD_STATE);
    payload.extend_from_slice(&hard_state.term.to_le_bytes());
    match hard_state.vote {
        None => payload.push(0),
        Some(vote) => {
            payload.push(1);
            payload.extend_from_slice(&vote.to_le_bytes());
        }
    }
    payload.extend_from_slice(&(hard_state.incarnations.len() as u64).to_le_bytes());
    for (member, incarnation) in &hard_state.incarnations {
        payload.extend_from_slice(&member.to_le_bytes());
        payload.extend_from_slice(&incarnation.to_le_bytes());
    }
    payload
}

/// Decodes a hard state body (the payload after its kind byte). Checks the
/// declared member count against the bytes present before allocating.
fn decode_hard_state(body: &[u8]) -> Result<HardState, String> {
    fn take_u64(rest: &mut &[u8], what: &str) -> Result<u64, String> {
        let (word, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| format!("cut short in its {what}"))?;
        *rest = tail;
        Ok(u64::from_le_bytes(*word))
    }
    let mut rest = body;
    let term = take_u64(&mut rest, "term")?;
    let vote = match rest.split_first() {
        Some((0, tail)) => {
            rest = tail;
            None
        }
        Some((1, tail)) => {
            rest = tail;
            Some(take_u64(&mut rest, "vote")?)
        }
        Some((tag, _)) => return Err(format!("vote tag {tag} (0 or 1 expected)")),
        None => return Err("cut short in its vote".to_string()),
    };
    let count = take_u64(&mut rest, "member count")?;
    let pairs_bytes = count
        .checked_mul(16)
        .filter(|&bytes| bytes == rest.len() as u64)
        .ok_or_else(|| {
            format!(
                "{count} members declared, {} bytes follow (16 per member)",
                rest.len()
            )
        })?;
    debug_assert_eq!(pairs_bytes as usize, rest.len());
    let mut incarnations = std::collections::BTreeMap::new();
    for pair in rest.chunks_exact(16) {
        let member = read_u64(pair, 0);
        let incarnation = read_u64(pair, 8);
        if incarnations
            .last_key_value()
            .is_some_and(|(&last, _)| last >= member)
        {
            return Err(format!("member {member} out of order or repeated"));
        }
        incarnations.insert(member, incarnation);
    }
    Ok(HardState {
        term,
        vote,
        incarnations,
    })
}

/// Appends one framed record carrying a payload from `hard_state_payload`.
pub fn encode_hard_state(buffer: &mut Vec<u8>, payload: &[u8]) {
    let start = buffer.len();
    frame_payload(buffer, payload);
    debug_assert!(
        matches!(
            decode_record(&buffer[start..], 0),
            Ok(Some((Record::HardState(_), _)))
        ),
        "pair check: a hard state record must decode"
    );
}

/// Appends one framed log start record.
pub fn encode_log_start(buffer: &mut Vec<u8>, index: u64, term: u64) {
    let start = buffer.len();
    let mut payload = [0u8; LOG_START_PAYLOAD_BYTES];
    payload[0] = KIND_LOG_START;
    payload[1..9].copy_from_slice(&index.to_le_bytes());
    payload[9..17].copy_from_slice(&term.to_le_bytes());
    frame_payload(buffer, &payload);
    debug_assert_eq!(
        decode_record(&buffer[start..], 0),
        Ok(Some((
            Record::LogStart { index, term },
            LOG_START_RECORD_BYTES
        ))),
        "pair check: a log start record must decode to what it encodes"
    );
}

/// Appends `payload` framed with its length and CRC.
fn frame_payload(buffer: &mut Vec<u8>, payload: &[u8]) {
    let start = buffer.len();
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&[0u8; 4]);
    buffer.extend_from_slice(payload);
    seal(buffer, start);
}

/// Fills in the CRC of the record that starts at `start` and runs to the end.
fn seal(buffer: &mut [u8], start: usize) {
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&buffer[start..start + 4]),
        &buffer[start + FRAME_BYTES..],
    );
    buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at `offset`. `Ok(None)` at the exact end of `bytes`;
/// otherwise the record and the offset just past it, or why there is none.
pub fn decode_record(bytes: &[u8], offset: usize) -> Result<Option<(Record, usize)>, Damage> {
    let remaining = bytes.len().saturating_sub(offset);
    if remaining == 0 {
        return Ok(None);
    }
    if remaining < FRAME_BYTES {
        return Err(Damage::Torn(format!(
            "{remaining} bytes, too few for a record frame"
        )));
    }
    let payload_bytes = read_u32(bytes, offset) as usize;
    if payload_bytes == 0 || payload_bytes > WAL_RECORD_BYTES_MAX {
        return Err(Damage::Torn(format!(
            "impossible record length {payload_bytes}"
        )));
    }
    if payload_bytes > remaining - FRAME_BYTES {
        return Err(Damage::Torn(format!(
            "record of {payload_bytes} bytes runs past the end of the file"
        )));
    }
    let payload_start = offset + FRAME_BYTES;
    let end = payload_start + payload_bytes;
    let payload = &bytes[payload_start..end];
    let crc_stored = read_u32(bytes, offset + 4);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[offset..offset + 4]), payload);
    if crc != crc_stored {
        return Err(Damage::Torn("record CRC mismatch".to_string()));
    }
    let record = match payload[0] {
        KIND_ENTRY => {
            if payload.len() < ENTRY_PREFIX_BYTES {
                return Err(Damage::Undecodable(format!(
                    "entry record of {} bytes is too short",
                    payload.len()
                )));
            }
            Record::Entry(Entry {
                term: read_u64(payload, 1),
                index: read_u64(payload, 9),
                data: Bytes::copy_from_slice(&payload[ENTRY_PREFIX_BYTES..]),
            })
        }
        KIND_HARD_STATE => match decode_hard_state(&payload[1..]) {
            Ok(hard_state) => Record::HardState(hard_state),
            Err(reason) => {
                return Err(Damage::Undecodable(format!("hard state record: {reason}")));
            }
        },
        KIND_LOG_START => {
            if payload.len() != LOG_START_PAYLOAD_BYTES {
                return Err(Damage::Undecodable(format!(
                    "log start record of {} bytes",
                    payload.len()
                )));
            }
            Record::LogStart {
                index: read_u64(payload, 1),
                term: read_u64(payload, 9),
            }
        }
        kind => return Err(Damage::Undecodable(format!("unknown record kind {kind}"))),
    };
    Ok(Some((record, end)))
}

/// Callers have checked that `offset + 4 <= bytes.len()`.
fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

/// Callers have checked that `offset + 8 <= bytes.len()`.
fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(index: u64, data: &'static [u8]) -> Entry {
        Entry {
            term: 3,
            index,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_header(42);
        assert_eq!(decode_header(&header), Ok(42));
        for byte in 0..HEADER_BYTES {
            let mut damaged = header;
            damaged[byte] ^= 0x10;
            assert!(
                decode_header(&damaged).is_err(),
                "flip in byte {byte} went unseen"
            );
        }
        assert!(decode_header(&header[..10]).is_err());
    }

    #[test]
    fn records_round_trip() {
        let hard_state = sample_hard_state();
        let mut buffer = Vec::new();
        encode_entry(&mut buffer, &entry(1, b"hello"));
        encode_hard_state(&mut buffer, &hard_state_payload(&hard_state));
        encode_entry(&mut buffer, &entry(2, b""));
        let (first, offset) = decode_record(&buffer, 0).unwrap().unwrap();
        assert_eq!(first, Record::Entry(entry(1, b"hello")));
        let (second, offset) = decode_record(&buffer, offset).unwrap().unwrap();
        assert_eq!(second, Record::HardState(hard_state));
        let (third, offset) = decode_record(&buffer, offset).unwrap().unwrap();
        assert_eq!(third, Record::Entry(entry(2, b"")));
        assert_eq!(decode_record(&buffer, offset), Ok(None));
    }

    /// What format version 1 data dirs hold: bincode 1.3's encoding of
    /// `HardState { term: 9, vote: Some(2), incarnations: {1: 11, 2: 22} }`.
    const HARD_STATE_V1_BODY: [u8; 57] = [
        9, 0, 0, 0, 0, 0, 0, 0, // term
        1, 2, 0, 0, 0, 0, 0, 0, 0, // vote: Some(2)
        2, 0, 0, 0, 0, 0, 0, 0, // two members
        1, 0, 0, 0, 0, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, // 1 -> 11
        2, 0, 0, 0, 0, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, // 2 -> 22
    ];

    fn sample_hard_state() -> HardState {
        HardState {
            term: 9,
            vote: Some(2),
            incarnations: BTreeMap::from([(1, 11), (2, 22)]),
        }
    }

    #[test]
    fn hard_state_bytes_are_those_format_1_data_dirs_hold() {
        let payload = hard_state_payload(&sample_hard_state());
        assert_eq!(payload[0], KIND_HARD_STATE);
        assert_eq!(payload[1..], HARD_STATE_V1_BODY);
        assert_eq!(
            decode_hard_state(&HARD_STATE_V1_BODY),
            Ok(sample_hard_state())
        );
        // Cross-check with bincode itself while the peer wire still has it.
        let samples = [
            HardState::default(),
            sample_hard_state(),
            HardState {
                term: u64::MAX,
                vote: None,
                incarnations: (1..=9u64)
                    .map(|id| (id, id.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                    .collect(),
            },
        ];
        for hard_state in samples {
            let from_bincode = bincode::serialize(&hard_state).expect("bincode encodes");
            assert_eq!(hard_state_payload(&hard_state)[1..], from_bincode[..]);
            assert_eq!(decode_hard_state(&from_bincode), Ok(hard_state));
        }
    }

    #[test]
    fn hard_state_garbage_is_refused_without_panic() {
        for cut in 0..HARD_STATE_V1_BODY.len() {
            assert!(
                decode_hard_state(&HARD_STATE_V1_BODY[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut extra = HARD_STATE_V1_BODY.to_vec();
        extra.push(0);
        assert!(decode_hard_state(&extra).is_err());
        let mut bad_tag = HARD_STATE_V1_BODY;
        bad_tag[8] = 2;
        assert!(decode_hard_state(&bad_tag)
            .unwrap_err()
            .contains("vote tag 2"));
        let mut huge_count = HARD_STATE_V1_BODY;
        huge_count[17..25].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_hard_state(&huge_count)
            .unwrap_err()
            .contains("members declared"));
        let mut repeated = HARD_STATE_V1_BODY;
        repeated[41] = 1; // second member id 2 -> 1
        assert!(decode_hard_state(&repeated)
            .unwrap_err()
            .contains("out of order"));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_seen() {
        let mut buffer = Vec::new();
        encode_entry(&mut buffer, &entry(7, b"some data"));
        for cut in 1..buffer.len() {
            assert!(matches!(
                decode_record(&buffer[..cut], 0),
                Err(Damage::Torn(_))
            ));
        }
        for byte in 0..buffer.len() {
            for bit in 0..8 {
                let mut damaged = buffer.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    decode_record(&damaged, 0).is_err(),
                    "flip {byte}:{bit} went unseen"
                );
            }
        }
    }

    #[test]
    fn valid_crc_on_a_bad_payload_is_undecodable() {
        let mut buffer = Vec::new();
        frame_payload(&mut buffer, &[99, 1, 2, 3]);
        assert!(matches!(
            decode_record(&buffer, 0),
            Err(Damage::Undecodable(_))
        ));
        let mut short_entry = Vec::new();
        frame_payload(&mut short_entry, &[KIND_ENTRY, 1, 2]);
        assert!(matches!(
            decode_record(&short_entry, 0),
            Err(Damage::Undecodable(_))
        ));
    }
}
