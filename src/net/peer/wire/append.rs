//! Zero-copy decoding of AppendEntries payloads.
//!
//! Owns: `decode_envelope_shared`, the decoder the inbound path uses. It
//! parses the layout `encode_envelope` writes (bincode 1.3 with
//! `DefaultOptions`: varint integers, little endian) by hand for
//! AppendEntries, so that every entry's data is a `Bytes::slice` of the
//! received payload instead of a fresh copy (bincode's `read_vec`, a tenth of
//! a follower's instructions). Other messages go through bincode.
//!
//! Invariants: for every input the result equals `wire::decode_envelope`'s
//! (the bincode decoder) on acceptance, and both reject the same inputs
//! (error texts differ). The rules copied from bincode 1.3.3: a varint is one
//! byte up to 250, else 251/252/253 and a little-endian u16/u32/u64 (not
//! necessarily minimal); 254 and 255 are errors; a length is any u64 (usize
//! is 64 bits here); bytes left after the last field are an error
//! (`DefaultOptions` rejects trailing bytes); the `with_limit` byte limit
//! plays no part (bincode replaces it with no limit when decoding a slice).
//! Bad input never panics, and a claimed entry count never allocates more
//! than the bytes left could hold (an entry takes at least 3 bytes).
//!
//! Leaves out: framing (`next_frame`) and the envelope's checks against the
//! handshake (`inbound`).

use super::{decode_envelope, WireError, APPEND_ENTRIES_VARIANT};
use crate::raft::{Entry, Envelope, Message};
use bytes::Bytes;

/// The fewest bytes one encoded entry takes (three one-byte varints).
const ENTRY_BYTES_MIN: usize = 3;

/// Decodes an envelope from a frame's payload. An AppendEntries' entry data
/// points into `payload` (no copy; the entries keep its allocation alive);
/// other messages are decoded by bincode.
pub fn decode_envelope_shared(payload: Bytes) -> Result<Envelope, WireError> {
    let mut reader = Reader {
        bytes: &payload,
        position: 0,
    };
    let header = (|| {
        Ok::<_, WireError>((
            reader.varint()?,
            reader.varint()?,
            reader.varint()?,
            reader.varint()?,
            reader.varint()?,
        ))
    })();
    let (from, to, term, incarnation) = match header {
        Ok((from, to, term, incarnation, APPEND_ENTRIES_VARIANT)) => (from, to, term, incarnation),
        // Another message, or a header bincode rejects as well.
        _ => return decode_envelope(&payload),
    };
    let prev_log_index = reader.varint()?;
    let prev_log_term = reader.varint()?;
    let count = reader.varint()?;
    let capacity = count.min((reader.remaining_bytes() / ENTRY_BYTES_MIN) as u64) as usize;
    let mut entries = Vec::with_capacity(capacity);
    for _ in 0..count {
        let term = reader.varint()?;
        let index = reader.varint()?;
        let data_bytes = reader.varint()?;
        let start = reader.position;
        if data_bytes > reader.remaining_bytes() as u64 {
            return Err(truncated(start, data_bytes));
        }
        let end = start + data_bytes as usize;
        reader.position = end;
        entries.push(Entry {
            term,
            index,
            data: payload.slice(start..end),
        });
    }
    let leader_commit = reader.varint()?;
    if reader.remaining_bytes() != 0 {
        return Err(WireError::Malformed(format!(
            "{} bytes after the AppendEntries",
            reader.remaining_bytes()
        )));
    }
    Ok(Envelope {
        from,
        to,
        term,
        incarnation,
        message: Message::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        },
    })
}

fn truncated(position: usize, wanted_bytes: u64) -> WireError {
    WireError::Malformed(format!(
        "AppendEntries truncated: {wanted_bytes} bytes wanted at byte {position}"
    ))
}

/// A position in a payload being parsed.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn remaining_bytes(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// `N` bytes, advancing past them.
    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        match self.bytes.get(self.position..self.position + N) {
            Some(bytes) => out.copy_from_slice(bytes),
            None => return Err(truncated(self.position, N as u64)),
        }
        self.position += N;
        Ok(out)
    }

    /// One bincode 1.3 varint as a u64.
    fn varint(&mut self) -> Result<u64, WireError> {
        let [marker] = self.take::<1>()?;
        match marker {
            0..=250 => Ok(u64::from(marker)),
            251 => Ok(u64::from(u16::from_le_bytes(self.take()?))),
            252 => Ok(u64::from(u32::from_le_bytes(self.take()?))),
            253 => Ok(u64::from_le_bytes(self.take()?)),
            _ => Err(WireError::Malformed(format!(
                "varint marker {marker} at byte {}",
                self.position - 1
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::peer::wire::{encode_frame, next_frame};
    use bytes::BytesMut;

    fn append_entries(data: &[&[u8]]) -> Envelope {
        Envelope {
            from: 1,
            to: 2,
            term: 300,
            incarnation: 0x1234_5678_9abc,
            message: Message::AppendEntries {
                prev_log_index: 70_000,
                prev_log_term: 299,
                entries: data
                    .iter()
                    .enumerate()
                    .map(|(position, data)| Entry {
                        term: 300,
                        index: 70_001 + position as u64,
                        data: Bytes::copy_from_slice(data),
                    })
                    .collect(),
                leader_commit: 69_999,
            },
        }
    }

    fn payload_of(envelope: &Envelope) -> Bytes {
        let mut buffer =
            BytesMut::from(&encode_frame(envelope, &mut BytesMut::new(), 1 << 20).unwrap()[..]);
        next_frame(&mut buffer, 1 << 20).unwrap().unwrap().freeze()
    }

    #[test]
    fn entry_data_points_into_the_payload() {
        let long = vec![7u8; 8192];
        let envelope = append_entries(&[b"first", &long, b"", b"last"]);
        let payload = payload_of(&envelope);
        let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        let decoded = decode_envelope_shared(payload.clone()).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decode_envelope(&payload).unwrap(), envelope);
        let Message::AppendEntries { entries, .. } = &decoded.message else {
            panic!("decoded another message");
        };
        for entry in entries.iter().filter(|entry| !entry.data.is_empty()) {
            let start = entry.data.as_ptr() as usize;
            assert!(
                range.contains(&start),
                "data at {start:#x} outside the payload"
            );
            assert!(start + entry.data.len() <= range.end);
        }
    }

    #[test]
    fn other_messages_and_bad_input_follow_bincode() {
        let heartbeat = Envelope {
            message: Message::Heartbeat {
                leader_commit: 9,
                read_round: 300,
            },
            ..append_entries(&[])
        };
        assert_eq!(
            decode_envelope_shared(payload_of(&heartbeat)),
            Ok(heartbeat)
        );
        let valid = payload_of(&append_entries(&[b"abc", b"defg"]));
        // Every truncation and one trailing byte are rejected by both.
        for cut in 0..valid.len() {
            assert!(
                decode_envelope_shared(valid.slice(..cut)).is_err(),
                "cut {cut}"
            );
            assert!(decode_envelope(&valid[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = valid.to_vec();
        trailing.push(0);
        assert!(decode_envelope(&trailing).is_err());
        assert!(decode_envelope_shared(Bytes::from(trailing)).is_err());
        // A non-minimal varint (the variant as 251 + u16) is accepted by both.
        let mut wide = vec![1u8, 2, 7, 9, 251, 4, 0, 0, 0, 1, 7, 4, 3];
        wide.extend_from_slice(b"abc");
        wide.push(0);
        let expected = decode_envelope(&wide).unwrap();
        assert_eq!(decode_envelope_shared(Bytes::from(wide)), Ok(expected));
        // Markers 254 and 255 are rejected by both; so is a count of u64::MAX
        // entries (without allocating for it).
        for marker in [254u8, 255] {
            let bytes = vec![1u8, 2, 7, 9, 4, marker, 0, 0, 0];
            assert!(decode_envelope(&bytes).is_err());
            assert!(decode_envelope_shared(Bytes::from(bytes)).is_err());
        }
        let mut hostile = vec![1u8, 2, 7, 9, 4, 0, 0, 253];
        hostile.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_envelope_shared(Bytes::from(hostile)).is_err());
    }
}
