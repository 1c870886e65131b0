//! Leader CPU cost per replicated command in the sans-IO Raft core.
//!
//! Drives an in-memory 3-node cluster (benches/support/raft_cluster.rs:
//! instant persistence, a FIFO loopback network) and times only the calls
//! made on the leader: propose, step of every response, drain, persisted.
//! Batch size = commands proposed in one turn before the turn's drain (so
//! they share AppendEntries messages). Reported per command via
//! `Throughput::Elements`. The same driver runs at a tiny size in
//! tests/raft_bench.rs under `cargo test`.

#[path = "support/raft_cluster.rs"]
mod raft_cluster;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_cluster::Cluster;
use std::time::Duration;

const COMMAND_BYTES: usize = 64;

fn leader_cost_per_command(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("raft_leader_per_command");
    let payload = Bytes::from(vec![0x5a; COMMAND_BYTES]);
    for batch in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("cluster3", batch),
            &batch,
            |bencher, &batch| {
                bencher.iter_custom(|iterations| {
                    // A fresh cluster per sample keeps the in-memory log bounded.
                    let mut cluster = Cluster::new(3, 16);
                    for _ in 0..iterations {
                        cluster.replicate_batch(batch, &payload);
                    }
                    cluster.leader_time
                });
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = leader_cost_per_command
}
criterion_main!(benches);
