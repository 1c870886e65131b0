//! Leader cost of turning one AppendEntries round into peer frames: the same
//! entries encoded for 4 followers (a 5-node cluster), each frame then
//! copied out once as the kernel would copy it from a socket write.
//!
//! Two entry shapes, both 64 `write` commands of 100-byte content: one entry
//! holding the 64-command batch (what the leader proposes per turn under
//! load), and 64 entries of one command each. Two encoders: `bincode`
//! (`wire::encode_frame`, every entry's data copied into every follower's
//! frame, the encoding before issue 6) and `segments`
//! (`wire::encode_envelope`, what `Peers::send` uses: long entry data shared
//! by all frames, written with a vectored write). Throughput is reported per
//! AppendEntries (4 per round).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raftfs::fsm::command::{encode_batch, Command};
use raftfs::net::peer::wire;
use raftfs::raft::{Entry, Envelope, Message};
use std::hint::black_box;
use std::io::{IoSlice, Write};
use std::time::Duration;

const FOLLOWERS: u64 = 4;
const COMMANDS: usize = 64;
const CONTENT_BYTES: usize = 100;

fn write_command(number: usize) -> Command {
    Command::Write {
        name: Bytes::from(format!("key-{number}")),
        content: Bytes::from(vec![b'v'; CONTENT_BYTES]),
        exptime_s: 0,
    }
}

/// The entries of one round: the 64 commands in one batch, or one per entry.
fn entries(one_batch: bool) -> Vec<Entry> {
    let commands: Vec<Command> = (0..COMMANDS).map(write_command).collect();
    if one_batch {
        vec![Entry {
            term: 3,
            index: 1_000,
            data: encode_batch(1_700_000_000_000, &commands),
        }]
    } else {
        commands
            .iter()
            .enumerate()
            .map(|(position, command)| Entry {
                term: 3,
                index: 1_000 + position as u64,
                data: encode_batch(1_700_000_000_000, std::slice::from_ref(command)),
            })
            .collect()
    }
}

/// The round's envelopes, one per follower, sharing the entries' data as
/// the Raft core's clones do.
fn round(entries: &[Entry]) -> Vec<Envelope> {
    (0..FOLLOWERS)
        .map(|follower| Envelope {
            from: 1,
            to: 2 + follower,
            term: 3,
            incarnation: 0x1234_5678_9abc,
            message: Message::AppendEntries {
                prev_log_index: 999,
                prev_log_term: 3,
                entries: entries.to_vec(),
                leader_commit: 998,
            },
        })
        .collect()
}

fn peer_encode(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("peer_encode");
    group.throughput(Throughput::Elements(FOLLOWERS));
    for (shape, one_batch) in [("1x64_commands", true), ("64x1_command", false)] {
        let envelopes = round(&entries(one_batch));
        let mut encode_buffer = BytesMut::new();
        let mut socket = Vec::with_capacity(1 << 20);
        group.bench_function(BenchmarkId::new("bincode", shape), |bencher| {
            bencher.iter(|| {
                socket.clear();
                for envelope in &envelopes {
                    let frame = wire::encode_frame(envelope, &mut encode_buffer, 1 << 30)
                        .expect("encodable");
                    socket.write_all(&frame).expect("a Vec takes everything");
                }
                black_box(socket.len())
            })
        });
        let mut segments = Vec::new();
        group.bench_function(BenchmarkId::new("segments", shape), |bencher| {
            bencher.iter(|| {
                socket.clear();
                for envelope in &envelopes {
                    let frame_bytes =
                        wire::encode_envelope(envelope, &mut encode_buffer, 1 << 30, &mut segments)
                            .expect("encodable");
                    let slices: Vec<IoSlice<'_>> = segments
                        .iter()
                        .map(|segment| IoSlice::new(segment))
                        .collect();
                    let written = socket
                        .write_vectored(&slices)
                        .expect("a Vec takes everything");
                    assert_eq!(written, frame_bytes);
                    segments.clear();
                }
                black_box(socket.len())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = peer_encode
}
criterion_main!(benches);
