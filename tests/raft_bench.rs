//! Runs the Raft benchmark's cluster driver at a tiny size under `cargo test`
//! so the benchmark cannot rot, and checks what it measures really happens:
//! every command is applied on every node.

#[path = "../benches/support/raft_cluster.rs"]
mod raft_cluster;

use bytes::Bytes;
use raft_cluster::Cluster;

#[test]
fn batches_replicate_and_apply_everywhere() {
    for size in [1, 3, 5] {
        for batch in [1, 16, 256] {
            let mut cluster = Cluster::new(size, 4);
            let payload = Bytes::from(vec![7u8; 64]);
            for _ in 0..3 {
                cluster.replicate_batch(batch, &payload);
            }
            let expected = 1 + 3 * batch as u64; // the leader's no-op plus the commands
            assert_eq!(
                cluster.applied,
                vec![expected; size],
                "size {size} batch {batch}"
            );
            for node in &cluster.nodes {
                assert_eq!(node.commit_index(), expected);
            }
        }
    }
}
