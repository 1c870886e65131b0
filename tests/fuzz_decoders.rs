//! A bounded fuzzing corpus run in CI (issue 7, part 4): proptest instead of
//! cargo-fuzz (which needs a nightly toolchain and libFuzzer in CI), over
//! the three decoders that take bytes from outside: the client protocol
//! framing, the peer wire decoder, and WAL recovery with a damaged tail.
//! Inputs are mutations of valid encodings (bit flips, byte changes, cuts,
//! insertions) and plain random bytes. `RAFTFS_FUZZ_CASES` raises the case
//! count for longer runs; a failing case is kept by proptest in
//! `tests/fuzz_decoders.proptest-regressions` and replayed first from then
//! on (and gets an explicit regression test).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use raftfs::net::peer::wire;
use raftfs::protocol::{parse_next, Parsed};
use raftfs::raft::message::{Entry, Envelope, HardState, Message};
use raftfs::storage;

fn cases(default_cases: u32) -> u32 {
    std::env::var("RAFTFS_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases)
}

/// One mutation of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    SetByte { at: usize, value: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, length: usize },
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, length)| Mutation::Remove { at, length }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let length = bytes.len();
    match mutation {
        Mutation::FlipBit { at, bit } if length > 0 => bytes[at % length] ^= 1 << bit,
        Mutation::SetByte { at, value } if length > 0 => bytes[at % length] = *value,
        Mutation::Truncate { at } => bytes.truncate(at % (length + 1)),
        Mutation::Insert {
            at,
            bytes: inserted,
        } => {
            let at = at % (length + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Remove {
            at,
            length: removed,
        } if length > 0 => {
            let at = at % length;
            let end = (at + removed).min(length);
            bytes.drain(at..end);
        }
        _ => {}
    }
}

fn message_strategy() -> impl Strategy<Value = Message> {
    let entry = (
        any::<u64>(),
        any::<u64>(),
        // Short data is copied into a frame, long data (over
        // `wire::INLINE_DATA_BYTES_MAX`) is a segment of its own.
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => proptest::collection::vec(any::<u8>(), 500..700),
        ],
    )
        .prop_map(|(term, index, data)| Entry {
            term,
            index,
            data: Bytes::from(data),
        });
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(last_log_index, last_log_term)| Message::PreVote {
            last_log_index,
            last_log_term
        }),
        any::<bool>().prop_map(|granted| Message::RequestVoteResponse { granted }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(entry, 0..4),
            any::<u64>()
        )
            .prop_map(|(prev_log_index, prev_log_term, entries, leader_commit)| {
                Message::AppendEntries {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                }
            }),
        (
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(success, match_index, conflict_index, conflict_term)| {
                Message::AppendEntriesResponse {
                    success,
                    match_index,
                    conflict_index,
                    conflict_term,
                }
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(leader_commit, read_round)| Message::Heartbeat {
            leader_commit,
            read_round
        }),
        Just(Message::TimeoutNow),
    ]
}

fn envelope_strategy() -> impl Strategy<Value = Envelope> {
    (
        1u64..10,
        1u64..10,
        any::<u64>(),
        any::<u64>(),
        message_strategy(),
    )
        .prop_map(|(from, to, term, incarnation, message)| Envelope {
            from,
            to,
            term,
            incarnation,
            message,
        })
}

/// Runs every decoder a peer connection uses over `stream`, as the inbound
/// side would: frames, then hello / reply / envelope payloads.
fn decode_peer_stream(stream: &[u8]) -> usize {
    let mut buffer = BytesMut::from(stream);
    let mut frames = 0;
    while let Ok(Some(payload)) = wire::next_frame(&mut buffer, 1 << 20) {
        let _ = wire::decode_hello(&payload);
        let _ = wire::decode_reply(&payload);
        let _ = wire::decode_envelope(&payload);
        frames += 1;
    }
    frames
}

/// Frames everything `input` holds; returns the number of commands framed.
/// Checks the framing's progress contract on the way.
fn frame_all(input: &[u8]) -> usize {
    let mut buffer = BytesMut::from(input);
    let mut framed = 0;
    loop {
        let before = buffer.len();
        match parse_next(&mut buffer, 4096) {
            Some(Parsed::Malformed { close: true }) => {
                assert!(buffer.is_empty(), "a closing error drops the whole buffer");
                return framed + 1;
            }
            Some(_) => {
                assert!(buffer.len() < before, "a framed command consumes bytes");
                framed += 1;
            }
            None => {
                assert_eq!(
                    buffer.len(),
                    before,
                    "an incomplete command consumes nothing"
                );
                assert!(
                    buffer.len() <= 500 + 2 + 4096 + 2,
                    "waiting only for an unfinished line or pending content"
                );
                return framed;
            }
        }
    }
}

const VALID_COMMANDS: &[u8] = b"write a 3\r\nabc\r\nread a\r\ncas a 1 2 10\r\nxy\r\ndelete a\r\n\
write b 0\r\n\r\nread b\nwrite c 5 0\r\nhello\r\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3_000), ..ProptestConfig::default() })]

    #[test]
    fn peer_frames_round_trip_and_survive_mutation(
        envelopes in proptest::collection::vec(envelope_strategy(), 1..4),
        mutations in proptest::collection::vec(mutation_strategy(), 0..6),
    ) {
        let mut stream = Vec::new();
        let hello = wire::encode_hello(&wire::Hello { cluster_id: 7, from: 1, incarnation: 9, to: 2 })
            .expect("hello");
        stream.extend_from_slice(&hello);
        let mut scratch = BytesMut::new();
        for envelope in &envelopes {
            let frame = wire::encode_frame(envelope, &mut scratch, 1 << 20).expect("encode");
            // The segmented encoder the links use writes the very same bytes.
            let mut segments = Vec::new();
            let frame_bytes = wire::encode_envelope(envelope, &mut scratch, 1 << 20, &mut segments)
                .expect("encode in segments");
            prop_assert_eq!(segments.concat(), frame.to_vec());
            prop_assert_eq!(frame_bytes, frame.len());
            // Pair check: what is encoded decodes to the same envelope.
            let mut one = BytesMut::from(&frame[..]);
            let payload = wire::next_frame(&mut one, 1 << 20).expect("frame").expect("whole");
            prop_assert_eq!(&wire::decode_envelope(&payload).expect("decode"), envelope);
            stream.extend_from_slice(&frame);
        }
        prop_assert_eq!(decode_peer_stream(&stream), envelopes.len() + 1);
        for mutation in &mutations {
            mutate(&mut stream, mutation);
        }
        decode_peer_stream(&stream);
    }

    #[test]
    fn peer_decoders_survive_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_peer_stream(&bytes);
        let _ = wire::decode_hello(&bytes);
        let _ = wire::decode_envelope(&bytes);
        // And as a payload behind a well-formed header.
        let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        prop_assert_eq!(decode_peer_stream(&framed), 1);
    }

    #[test]
    fn client_framing_survives_mutated_commands(
        mutations in proptest::collection::vec(mutation_strategy(), 1..8),
    ) {
        let mut input = VALID_COMMANDS.to_vec();
        for mutation in &mutations {
            mutate(&mut input, mutation);
        }
        frame_all(&input);
    }
}

proptest! {
    // WAL cases touch files: fewer of them.
    #![proptest_config(ProptestConfig { cases: cases(150), ..ProptestConfig::default() })]

    #[test]
    fn wal_recovery_survives_a_damaged_tail(
        synced_entries in 1u64..20,
        tail_entries in 1u64..10,
        sizes in proptest::collection::vec(0usize..300, 30),
        mutations in proptest::collection::vec(mutation_strategy(), 1..5),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = |index: u64| Entry {
            term: 1 + index / 7,
            index,
            data: Bytes::from(vec![index as u8; sizes[index as usize % sizes.len()]]),
        };
        let synced_bytes;
        let path;
        {
            let (mut wal, _) = storage::open(dir.path(), true).expect("open");
            wal.save_hard_state(&HardState { term: 3, vote: Some(1), incarnations: Default::default() })
                .expect("hard state");
            let synced: Vec<Entry> = (1..=synced_entries).map(entry).collect();
            wal.append(&synced).expect("append");
            wal.sync().expect("sync");
            path = std::fs::read_dir(dir.path())
                .expect("list")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "wal"))
                .expect("segment");
            synced_bytes = std::fs::metadata(&path).expect("size").len() as usize;
            let tail: Vec<Entry> = (synced_entries + 1..=synced_entries + tail_entries).map(entry).collect();
            wal.append(&tail).expect("append");
            wal.sync().expect("sync");
        }
        // Damage only what the last sync wrote: the tail a crash may tear.
        let whole = std::fs::read(&path).expect("read");
        let mut tail = whole[synced_bytes..].to_vec();
        for mutation in &mutations {
            mutate(&mut tail, mutation);
        }
        let mut damaged = whole[..synced_bytes].to_vec();
        damaged.extend_from_slice(&tail);
        std::fs::write(&path, &damaged).expect("write");
        let (_, recovered) = storage::open(dir.path(), false).expect("a torn tail never stops a node");
        let length = recovered.entries.len() as u64;
        prop_assert!(length >= synced_entries, "a synced entry was lost: {} < {}", length, synced_entries);
        prop_assert!(length <= synced_entries + tail_entries);
        for (position, recovered_entry) in recovered.entries.iter().enumerate() {
            prop_assert_eq!(recovered_entry, &entry(position as u64 + 1));
        }
        prop_assert_eq!(recovered.hard_state.term, 3);
    }
}
