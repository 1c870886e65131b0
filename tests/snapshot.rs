//! Snapshots end to end, with real `raftfs node` processes (issue 5):
//! - 200,000 writes over 1,000 keys with `snapshot_entries = 2000`: every
//!   node's data dir stays under the README's bound, old WAL segments are
//!   deleted, and a restart of every node (newest snapshot + WAL tail) serves
//!   every acknowledged write;
//! - a follower stopped while the others compact past it catches up by
//!   InstallSnapshot, and is then needed for a majority (two others stopped)
//!   and serves every acknowledged write.

mod common;

use common::cluster::{command_anywhere, command_traced, Cluster, Options};
use common::files::{dir_bytes, files_ending};
use common::workload::{write_all, write_pipelined};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The README's bound on one node's data dir in the first test (16 MiB of
/// log per snapshot, 16 MiB WAL segments, two small snapshots kept).
const DATA_DIR_BYTES_MAX: u64 = 80 << 20;

fn read_value(cluster: &Cluster, key: &str) -> Option<String> {
    let reply = command_anywhere(
        cluster,
        format!("read {key}\r\n").as_bytes(),
        Duration::from_secs(20),
    )?;
    reply
        .split_once('\n')
        .map(|(_, content)| content.to_string())
}

fn largest_stall(cluster: &Cluster, id: u64) -> String {
    cluster
        .log_text(id)
        .lines()
        .filter_map(|line| line.split("longest stall so far ").nth(1))
        .next_back()
        .map(|s| s.trim_end_matches(')').to_string())
        .unwrap_or_else(|| "n/a".into())
}

#[test]
fn data_dir_stays_bounded_and_restart_serves_every_write() {
    let mut cluster = Cluster::start(
        Options::new(3)
            .fsync(false)
            .extra("snapshot_entries = 2000"),
    );
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("a leader");
    let address = cluster.client_address(leader);
    let started = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let address = address.clone();
            std::thread::spawn(move || {
                write_pipelined(&address, t * 50_000, 50_000, 1_000, 16, |n| {
                    format!("{n:08}-{}", "x".repeat(500))
                })
            })
        })
        .collect();
    let acknowledged: u64 = threads.into_iter().map(|t| t.join().expect("writer")).sum();
    assert_eq!(acknowledged, 200_000, "every write is acknowledged");
    eprintln!("200000 writes in {:?}", started.elapsed());
    // Known final values, then let followers apply and snapshot.
    let finals = write_pipelined(&address, 1_000_000, 1_000, 1_000, 16, |n| {
        format!("final-{n}")
    });
    assert_eq!(finals, 1_000);
    std::thread::sleep(Duration::from_secs(2));
    for id in 1..=3 {
        let dir = cluster.data_dir(id);
        let bytes = dir_bytes(&dir);
        let segments = files_ending(&dir, ".wal");
        let snapshots = files_ending(&dir, ".snap");
        eprintln!(
            "node {id}: {:.1} MiB, segments {segments:?}, snapshots {snapshots:?}, longest stall {}",
            bytes as f64 / (1 << 20) as f64,
            largest_stall(&cluster, id)
        );
        assert!(
            bytes < DATA_DIR_BYTES_MAX,
            "node {id}'s data dir holds {bytes} bytes"
        );
        assert!(
            !snapshots.is_empty() && snapshots.len() <= 2,
            "{snapshots:?}"
        );
        assert!(
            segments
                .first()
                .is_some_and(|first| first != "00000000000000000001.wal"),
            "old WAL segments were deleted: {segments:?}"
        );
    }
    // Restart every node: newest snapshot + WAL tail.
    for id in 1..=3 {
        cluster.kill(id);
    }
    let restarted = Instant::now();
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster
        .wait_leader(Duration::from_secs(20))
        .expect("a leader after restart");
    eprintln!("restart to a serving leader: {:?}", restarted.elapsed());
    for n in (1_000_000..1_001_000u64).step_by(37) {
        let key = format!("key-{}", n % 1_000);
        assert_eq!(
            read_value(&cluster, &key),
            Some(format!("final-{n}")),
            "{key}"
        );
    }
    for id in 1..=3 {
        let log = cluster.log_text(id);
        assert!(
            log.contains("restored snapshot"),
            "node {id} restarted from a snapshot:\n{}",
            log.lines()
                .filter(|l| !l.contains("link"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn lagging_follower_catches_up_by_install_snapshot_and_then_serves() {
    const KEYS: u64 = 200;
    let mut cluster = Cluster::start(Options::new(5).fsync(false).extra("snapshot_entries = 300"));
    let mut leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("a leader");
    let lagging = if leader == 1 { 2 } else { 1 };
    let mut last: BTreeMap<u64, String> = BTreeMap::new();
    // Some history the lagging node holds, then it stops.
    let value = |n: u64| format!("v{n}");
    write_all(&cluster, &mut leader, 0, 500, KEYS, 2, value);
    for n in 0..500 {
        last.insert(n % KEYS, value(n));
    }
    std::thread::sleep(Duration::from_millis(500));
    cluster.kill(lagging);
    // Write until the others have compacted well past it.
    let mut n = 500;
    while !cluster.wait_log(leader, Duration::from_millis(1), |log| {
        log.matches(" taken: ").count() >= 3
    }) {
        assert!(n < 200_000, "the leader never compacted");
        write_all(&cluster, &mut leader, n, 1_000, KEYS, 2, value);
        for m in n..n + 1_000 {
            last.insert(m % KEYS, value(m));
        }
        n += 1_000;
    }
    cluster.start_node(lagging);
    assert!(
        cluster.wait_log(lagging, Duration::from_secs(30), |log| log
            .contains("installed snapshot")),
        "node {lagging} caught up by InstallSnapshot:\n{}",
        cluster.log_text(lagging)
    );
    assert!((1..=5).any(|id| cluster.log_text(id).contains("sends snapshot")));
    std::thread::sleep(Duration::from_secs(1));
    // Stop two others (not the lagging node, the leader first if it is not
    // the lagging one): the three left need the lagging node for a majority.
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("a leader");
    let mut stopped: Vec<u64> = Vec::new();
    for id in std::iter::once(leader).chain(1..=5) {
        if id != lagging && !stopped.contains(&id) && stopped.len() < 2 {
            stopped.push(id);
        }
    }
    for &id in &stopped {
        cluster.kill(id);
    }
    let reply = command_anywhere(
        &cluster,
        b"write after-stop 2\r\nok\r\n",
        Duration::from_secs(20),
    );
    assert!(
        reply.as_deref().is_some_and(|r| r.starts_with("OK ")),
        "a majority with the lagging node writes: {reply:?}"
    );
    for (key, value) in &last {
        let traced = command_traced(
            &cluster,
            format!("read key-{key}\r\n").as_bytes(),
            Duration::from_secs(20),
        );
        let got = traced
            .as_ref()
            .and_then(|(_, reply)| reply.split_once('\n'))
            .map(|(_, content)| content.to_string());
        if got.as_ref() != Some(value) {
            let kept = cluster.keep_logs("lagging-follower");
            panic!(
                "key-{key}: expected {value:?}, got {traced:?} (lagging node {lagging}, \
                 stopped {stopped:?}); node logs kept in {kept}\n{}",
                cluster.all_logs_summary()
            );
        }
    }
}

/// Benchmark (not CI): `RAFTFS_SNAPSHOT_BENCH=1 cargo test --release --test
/// snapshot bench -- --nocapture`: 1,000,000 writes of 1 KiB (1 GB of
/// history) over 100,000 keys with the default `snapshot_entries`, then the
/// time for a restarted cluster to serve again. Under plain `cargo test` it
/// runs at a tiny size so it cannot rot.
#[test]
fn bench_million_writes_and_restart() {
    let full = std::env::var_os("RAFTFS_SNAPSHOT_BENCH").is_some();
    let (writes, keys, value_bytes) = if full {
        (1_000_000u64, 100_000u64, 1_000usize)
    } else {
        (4_000, 400, 100)
    };
    let mut cluster = Cluster::start(Options::new(3).fsync(false));
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("a leader");
    let address = cluster.client_address(leader);
    let started = Instant::now();
    let per_thread = writes / 4;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let address = address.clone();
            std::thread::spawn(move || {
                write_pipelined(&address, t * per_thread, per_thread, keys, 16, move |n| {
                    format!("{n:08}-{}", "y".repeat(value_bytes))
                })
            })
        })
        .collect();
    let acknowledged: u64 = threads.into_iter().map(|t| t.join().expect("writer")).sum();
    assert_eq!(acknowledged, writes);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    for id in 1..=3 {
        eprintln!(
            "node {id}: data dir {:.1} MiB, snapshots {:?}, longest stall {}",
            dir_bytes(&cluster.data_dir(id)) as f64 / (1 << 20) as f64,
            files_ending(&cluster.data_dir(id), ".snap"),
            largest_stall(&cluster, id)
        );
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    let restarted = Instant::now();
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster
        .wait_leader(Duration::from_secs(60))
        .expect("a leader after restart");
    let restart = restarted.elapsed();
    eprintln!(
        "{writes} writes of {value_bytes} bytes in {elapsed:?} ({:.0}/s); restart to a serving \
         leader in {restart:?}",
        writes as f64 / elapsed.as_secs_f64()
    );
    let key = format!("key-{}", (writes - 1) % keys);
    assert!(read_value(&cluster, &key).is_some());
}
