//! Benchmarks of the state machine: time per applied command (entries of 1 and
//! of 256 writes of 100 bytes spread over 10 000 files), per read, and the
//! batch codec on its own.
//!
//! `cargo bench --bench fsm` measures; criterion prints time per iteration and,
//! with the element throughput set here, commands per second (ns per command =
//! time per iteration / commands per entry). Under `cargo test` (no `--bench`
//! flag) criterion runs every routine once, and this file shrinks its sizes so
//! the benchmark is exercised on every test run and cannot rot.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raftfs::fsm::{decode_batch, encode_batch, Command, Fsm, Outcome};

const CONTENT_BYTES: usize = 100;
const STAMP_MS: u64 = 1_700_000_000_000;

/// How many files the workloads spread over: 10 000 when measuring, a few
/// hundred under `cargo test`.
fn key_count() -> usize {
    if std::env::args().any(|argument| argument == "--bench") {
        10_000
    } else {
        300
    }
}

fn key(index: usize) -> Bytes {
    Bytes::from(format!("key-{index}"))
}

fn write_of(index: usize, keys: usize) -> Command {
    Command::Write {
        name: key(index % keys),
        content: Bytes::from(vec![b'v'; CONTENT_BYTES]),
        exptime_s: 0,
    }
}

/// Entries of `batch` writes each, walking over every key in turn.
fn write_entries(batch: usize, keys: usize) -> Vec<Bytes> {
    let entry_count = keys.div_ceil(batch).max(1);
    (0..entry_count)
        .map(|entry| {
            let commands: Vec<Command> = (0..batch)
                .map(|offset| write_of(entry * batch + offset, keys))
                .collect();
            encode_batch(STAMP_MS, &commands)
        })
        .collect()
}

/// A store holding every key once (the steady state of an overwrite load).
fn filled_store(keys: usize) -> Fsm {
    let mut fsm = Fsm::new();
    let mut outcomes = Vec::new();
    for entry in write_entries(256, keys) {
        fsm.apply(&entry, &mut outcomes).expect("valid batch");
    }
    assert_eq!(fsm.len(), keys);
    fsm
}

fn bench_apply_writes(criterion: &mut Criterion) {
    let keys = key_count();
    let mut group = criterion.benchmark_group("fsm_apply_write_100B");
    for batch in [1usize, 256] {
        let entries = write_entries(batch, keys);
        let mut fsm = filled_store(keys);
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch);
        let mut next = 0usize;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch_{batch}"), |bencher| {
            bencher.iter(|| {
                outcomes.clear();
                fsm.apply(&entries[next % entries.len()], &mut outcomes)
                    .expect("valid batch");
                next += 1;
                black_box(outcomes.len())
            })
        });
        // Empty when a name filter skipped this benchmark.
        assert!(outcomes.is_empty() || matches!(outcomes.last(), Some(Outcome::Written { .. })));
    }
    group.finish();
}

fn bench_create_and_delete(criterion: &mut Criterion) {
    let keys = key_count();
    // Each entry creates 128 fresh files and deletes them again: the arena,
    // index and allocation paths rather than in-place overwrites.
    let fresh = |index: usize| Bytes::from(format!("fresh-{index}"));
    let commands: Vec<Command> = (0..128)
        .map(|index| Command::Write {
            name: fresh(index),
            content: Bytes::from(vec![b'v'; CONTENT_BYTES]),
            exptime_s: 0,
        })
        .chain((0..128).map(|index| Command::Delete { name: fresh(index) }))
        .collect();
    let entry = encode_batch(STAMP_MS, &commands);
    let mut fsm = filled_store(keys);
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut group = criterion.benchmark_group("fsm_apply_create_delete_100B");
    group.throughput(Throughput::Elements(commands.len() as u64));
    group.bench_function("batch_256", |bencher| {
        bencher.iter(|| {
            outcomes.clear();
            fsm.apply(&entry, &mut outcomes).expect("valid batch");
            black_box(outcomes.len())
        })
    });
    group.finish();
    // Empty when a name filter skipped this benchmark.
    assert!(outcomes.is_empty() || outcomes.last() == Some(&Outcome::Deleted));
    assert_eq!(fsm.len(), keys);
}

fn bench_reads(criterion: &mut Criterion) {
    let keys = key_count();
    let fsm = filled_store(keys);
    let names: Vec<Bytes> = (0..keys).map(key).collect();
    let mut next = 0usize;
    let mut group = criterion.benchmark_group("fsm_read_100B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hit", |bencher| {
        bencher.iter(|| {
            // A stride coprime with the key count, so successive reads do not
            // walk the arena in order.
            next = (next + 7_919) % names.len();
            let view = fsm
                .read(&names[next], STAMP_MS)
                .expect("every key is stored");
            black_box(view.content.len())
        })
    });
    let missing = Bytes::from_static(b"no-such-key");
    group.bench_function("miss", |bencher| {
        bencher.iter(|| black_box(fsm.read(&missing, STAMP_MS).is_none()))
    });
    group.finish();
}

fn bench_codec(criterion: &mut Criterion) {
    let keys = key_count();
    let commands: Vec<Command> = (0..256).map(|index| write_of(index, keys)).collect();
    let entry = encode_batch(STAMP_MS, &commands);
    let mut group = criterion.benchmark_group("fsm_codec_write_100B");
    group.throughput(Throughput::Elements(commands.len() as u64));
    group.bench_function("encode_batch_256", |bencher| {
        bencher.iter(|| black_box(encode_batch(STAMP_MS, &commands).len()))
    });
    group.bench_function("decode_batch_256", |bencher| {
        bencher.iter_batched_ref(
            || entry.clone(),
            |entry| black_box(decode_batch(entry).map(|batch| batch.commands.len())),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert_eq!(
        decode_batch(&entry).map(|batch| batch.commands),
        Ok(commands)
    );
}

criterion_group!(
    benches,
    bench_apply_writes,
    bench_create_and_delete,
    bench_reads,
    bench_codec
);
criterion_main!(benches);
