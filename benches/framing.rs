//! Framing benchmark: ns per command for `parse_next` over pipelined `write`,
//! `read` and `cas` commands, and for `encode_reply`.
//!
//! Each measurement frames (or encodes) a batch of `BATCH_COMMANDS` commands
//! and reports throughput in commands, so criterion's time divided by the batch
//! is the cost of one command. The workload functions live in `workload` so
//! that `tests/protocol_framing.rs` runs them at tiny sizes under
//! `cargo test --release` (and `cargo test --benches` runs this file once in
//! criterion's test mode).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raftfs::protocol::{encode_reply, Reply};
use std::hint::black_box;

/// Commands framed or encoded per measured iteration.
const BATCH_COMMANDS: usize = 1_000;
/// Content bytes of each `write`/`cas` (a small file, the common case).
const CONTENT_BYTES: usize = 100;

pub mod workload {
    use bytes::BytesMut;
    use raftfs::limits::FILE_BYTES_MAX_DEFAULT;
    use raftfs::protocol::{encode_reply, parse_next, Parsed, Reply};

    /// Which command a pipelined batch repeats.
    #[derive(Clone, Copy, Debug)]
    pub enum Kind {
        Write,
        Read,
        Cas,
    }

    impl Kind {
        pub fn label(self) -> &'static str {
            match self {
                Kind::Write => "write",
                Kind::Read => "read",
                Kind::Cas => "cas",
            }
        }
    }

    /// `count` pipelined commands of `kind` on files `key-<n>`, each `write` /
    /// `cas` carrying `content_bytes` of content.
    pub fn pipelined_input(kind: Kind, count: usize, content_bytes: usize) -> BytesMut {
        let content = vec![b'v'; content_bytes];
        let mut input = BytesMut::with_capacity(count * (content_bytes + 48));
        for index in 0..count {
            let line = match kind {
                Kind::Write => format!("write key-{index} {content_bytes} 60\r\n"),
                Kind::Read => format!("read key-{index}\r\n"),
                Kind::Cas => format!("cas key-{index} {} {content_bytes}\r\n", index + 1),
            };
            input.extend_from_slice(line.as_bytes());
            if !matches!(kind, Kind::Read) {
                input.extend_from_slice(&content);
                input.extend_from_slice(b"\r\n");
            }
        }
        input
    }

    /// Frames every command in `input`; returns how many well-formed requests
    /// it found (a malformed one stops the count).
    pub fn parse_all(input: &mut BytesMut) -> usize {
        let mut requests = 0;
        while let Some(parsed) = parse_next(input, FILE_BYTES_MAX_DEFAULT) {
            match parsed {
                Parsed::Request(request) => {
                    std::hint::black_box(&request);
                    requests += 1;
                }
                Parsed::Malformed { .. } => break,
            }
        }
        requests
    }

    /// The replies a busy node sends, in a fixed rotation.
    pub fn reply_rotation(content: &[u8]) -> [Reply<'_>; 4] {
        [
            Reply::Written { version: 1_234_567 },
            Reply::Contents {
                version: 98_765_432,
                content,
                expires_in_s: 42,
            },
            Reply::VersionMismatch { current: 7_654_321 },
            Reply::Redirect("127.0.0.1:8081"),
        ]
    }

    /// Encodes `count` replies from the rotation into `out`; returns bytes written.
    pub fn encode_all(count: usize, content: &[u8], out: &mut BytesMut) -> usize {
        let replies = reply_rotation(content);
        let before = out.len();
        for index in 0..count {
            encode_reply(&replies[index % replies.len()], out);
        }
        out.len() - before
    }
}

fn bench_parse(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("parse");
    group.throughput(Throughput::Elements(BATCH_COMMANDS as u64));
    for kind in [
        workload::Kind::Write,
        workload::Kind::Read,
        workload::Kind::Cas,
    ] {
        let input = workload::pipelined_input(kind, BATCH_COMMANDS, CONTENT_BYTES);
        group.bench_function(kind.label(), |bencher| {
            bencher.iter_batched(
                || input.clone(),
                |mut buffer| {
                    let requests = workload::parse_all(&mut buffer);
                    assert_eq!(requests, BATCH_COMMANDS);
                    buffer
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_encode(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("encode_reply");
    group.throughput(Throughput::Elements(BATCH_COMMANDS as u64));
    let content = vec![b'v'; CONTENT_BYTES];
    let mut out = bytes::BytesMut::with_capacity(BATCH_COMMANDS * (CONTENT_BYTES + 64));
    group.bench_function("mixed", |bencher| {
        bencher.iter(|| {
            out.clear();
            black_box(workload::encode_all(BATCH_COMMANDS, &content, &mut out))
        })
    });
    group.bench_function("written", |bencher| {
        bencher.iter(|| {
            out.clear();
            for version in 0..BATCH_COMMANDS as u64 {
                encode_reply(
                    &Reply::Written {
                        version: black_box(1_000_000 + version),
                    },
                    &mut out,
                );
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_parse, bench_encode);
criterion_main!(benches);
