//! Snapshot files from outside the module: a map of many files serialises,
//! is written durably and loads back equal; damage is caught; restart picks
//! the newest valid snapshot and falls back to the older one, or refuses.
//! `RAFTFS_SNAPSHOT_FILES=1000000 cargo test --release --test snapshot_files
//! -- --nocapture` prints the figures for a large map.

use bytes::Bytes;
use raftfs::fsm::command::encode_batch;
use raftfs::fsm::{Command, Fsm};
use raftfs::raft::Entry;
use raftfs::snapshot::{self, worker};
use std::time::Instant;

fn write_batch(stamp_ms: u64, first: u64, count: u64, value: &str) -> Bytes {
    let commands: Vec<Command> = (first..first + count)
        .map(|n| Command::Write {
            name: Bytes::from(format!("file-{n}")),
            content: Bytes::from(format!("{value}{n}")),
            exptime_s: 0,
        })
        .collect();
    encode_batch(stamp_ms, &commands)
}

fn entries(from_index: u64, count: u64, files_per_entry: u64, value: &str) -> Vec<Entry> {
    (0..count)
        .map(|i| Entry {
            term: 1,
            index: from_index + i,
            data: write_batch(1_000 + i, i * files_per_entry, files_per_entry, value),
        })
        .collect()
}

#[test]
fn helper_builds_the_same_map_and_restart_uses_newest_valid() {
    let files: u64 = std::env::var("RAFTFS_SNAPSHOT_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let per_entry = 1_000u64;
    let count = files.div_ceil(per_entry);
    let log = entries(1, count, per_entry, &"v".repeat(60));
    let mut expected = Fsm::new();
    let mut outcomes = Vec::new();
    for entry in &log {
        expected.apply(&entry.data, &mut outcomes).expect("apply");
    }
    let started = Instant::now();
    let first =
        worker::take(dir.path(), true, Default::default(), &log, count, 1).expect("snapshot taken");
    let take_time = started.elapsed();
    let started = Instant::now();
    let path = dir
        .path()
        .join(snapshot::file_name(first.index, first.term));
    let (meta, loaded) = snapshot::load(&path).expect("loads");
    let load_time = started.elapsed();
    eprintln!(
        "{} files: snapshot {:.1} MiB, built+written in {take_time:?} (helper thread), loaded in \
         {load_time:?}",
        loaded.len(),
        meta.size_bytes as f64 / (1 << 20) as f64
    );
    assert_eq!(meta, first);
    assert_eq!(loaded.checksum(0), expected.checksum(0));
    assert_eq!(loaded.version_counter(), expected.version_counter());

    // A second snapshot built on the first, with a later entry.
    let more = entries(count + 1, 1, 10, "w");
    let second =
        worker::take(dir.path(), true, first, &more, count + 1, 2).expect("second snapshot");
    assert_eq!(second.index, count + 1);
    let restore = snapshot::restore(dir.path(), Vec::new(), 0).expect("restores");
    assert_eq!(restore.snapshot, Some(second));
    assert_eq!(restore.kept, vec![first, second]);

    // Damage the newest: restart falls back to the older one and keeps the
    // WAL entries after it.
    let newest = dir
        .path()
        .join(snapshot::file_name(second.index, second.term));
    let mut bytes = std::fs::read(&newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&newest, &bytes).expect("write");
    let restore = snapshot::restore(dir.path(), more.clone(), count).expect("falls back");
    assert_eq!(restore.snapshot, Some(first));
    assert_eq!(restore.entries, more);
    // ...unless the WAL no longer reaches back to it: then it refuses.
    let refused = snapshot::restore(dir.path(), Vec::new(), count + 1);
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("refusing"), "{message}");
}

/// The two ways a snapshot is taken (a copy of the live map written as is,
/// or the helper's replay of the log onto the previous snapshot) give the
/// same file, byte for byte, and the clone the reactor hands over is a
/// deep copy: the map goes on changing without touching it.
#[test]
fn a_written_copy_equals_the_replayed_snapshot_byte_for_byte() {
    let replayed_dir = tempfile::tempdir().expect("tempdir");
    let copied_dir = tempfile::tempdir().expect("tempdir");
    let log = entries(1, 5, 200, "x");
    let mut live = Fsm::new();
    let mut outcomes = Vec::new();
    for entry in &log {
        live.apply(&entry.data, &mut outcomes).expect("apply");
    }
    let replayed =
        worker::take(replayed_dir.path(), true, Default::default(), &log, 5, 1).expect("taken");

    let worker = worker::Worker::start(copied_dir.path().to_path_buf(), true).expect("worker");
    let copy = Box::new(live.clone());
    // The live map moves on after the copy was made.
    for entry in entries(6, 2, 300, "y") {
        live.apply(&entry.data, &mut outcomes).expect("apply");
    }
    assert!(worker.submit(worker::Job::Write {
        fsm: copy,
        index: 5,
        term: 1
    }));
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let written = loop {
        match worker.try_done() {
            Some(worker::Done::Taken { snapshot, .. }) => break snapshot,
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                assert!(Instant::now() < deadline, "the copy was never written");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    };
    assert_eq!(written, replayed);
    let name = snapshot::file_name(5, 1);
    let replayed_bytes = std::fs::read(replayed_dir.path().join(&name)).expect("read");
    let written_bytes = std::fs::read(copied_dir.path().join(&name)).expect("read");
    assert!(
        replayed_bytes == written_bytes,
        "the two snapshot files differ"
    );
    let (_, loaded) = snapshot::load(&copied_dir.path().join(&name)).expect("loads");
    assert_eq!(loaded.len(), 1_000);
    assert!(loaded.version_counter() < live.version_counter());
}
