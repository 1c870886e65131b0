//! Snapshot files from outside the module: a map of many files serialises,
//! is written durably and loads back equal; damage is caught; restart picks
//! the newest valid snapshot and falls back to the older one, or refuses.
//! `RAFTFS_SNAPSHOT_FILES=1000000 cargo test --release --test snapshot_files
//! -- --nocapture` prints the figures for a large map.

use bytes::Bytes;
use raftfs::fsm::command::encode_batch;
use raftfs::fsm::{Command, Fsm};
use raftfs::raft::{Entry, SnapshotMeta};
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

/// The map after applying `entries` to an empty one.
fn applied(entries: &[Entry]) -> Fsm {
    let mut fsm = Fsm::new();
    let mut outcomes = Vec::new();
    for entry in entries {
        fsm.apply(&entry.data, &mut outcomes).expect("apply");
    }
    fsm
}

/// Writes `fsm` as snapshot `index` of `term` on the helper thread, as a
/// node does, and waits (bounded) for it.
fn take_on_helper(dir: &std::path::Path, fsm: &Fsm, index: u64, term: u64) -> SnapshotMeta {
    let worker = worker::Worker::start(dir.to_path_buf(), true).expect("worker");
    assert!(worker.submit(worker::Job::Write {
        state: fsm.freeze(),
        index,
        term,
    }));
    wait_taken(&worker)
}

fn wait_taken(worker: &worker::Worker) -> SnapshotMeta {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match worker.try_done() {
            Some(worker::Done::Taken { snapshot, .. }) => return snapshot,
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                assert!(Instant::now() < deadline, "the snapshot was never written");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

#[test]
fn helper_writes_the_same_map_and_restart_uses_newest_valid() {
    let files: u64 = std::env::var("RAFTFS_SNAPSHOT_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let per_entry = 1_000u64;
    let count = files.div_ceil(per_entry);
    let log = entries(1, count, per_entry, &"v".repeat(60));
    let mut expected = applied(&log);
    let started = Instant::now();
    let first = take_on_helper(dir.path(), &expected, count, 1);
    let take_time = started.elapsed();
    let started = Instant::now();
    let path = dir
        .path()
        .join(snapshot::file_name(first.index, first.term));
    let (meta, loaded) = snapshot::load(&path).expect("loads");
    let load_time = started.elapsed();
    eprintln!(
        "{} files: snapshot {:.1} MiB, written in {take_time:?} (helper thread), loaded in \
         {load_time:?}",
        loaded.len(),
        meta.size_bytes as f64 / (1 << 20) as f64
    );
    assert_eq!(meta, first);
    assert_eq!(loaded.checksum(0), expected.checksum(0));
    assert_eq!(loaded.version_counter(), expected.version_counter());

    // A second snapshot built on the first, with a later entry.
    let more = entries(count + 1, 1, 10, "w");
    let mut outcomes = Vec::new();
    expected.apply(&more[0].data, &mut outcomes).expect("apply");
    let second = take_on_helper(dir.path(), &expected, count + 1, 2);
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

/// A frozen view written while the live map goes on changing (rewrites of
/// the same size, which reuse a file's bytes when nothing else holds them,
/// other sizes, deletes and new files) is, byte for byte, the snapshot of a
/// map that only ever saw the entries up to the freeze.
#[test]
fn a_frozen_view_written_after_the_map_moved_on_is_the_map_at_its_index() {
    let frozen_dir = tempfile::tempdir().expect("tempdir");
    let expected_dir = tempfile::tempdir().expect("tempdir");
    let log = entries(1, 5, 1_000, "x");
    let mut live = applied(&log);
    let state = live.freeze();
    let mut later: Vec<Bytes> = entries(6, 2, 700, "y")
        .into_iter()
        .map(|e| e.data)
        .collect();
    later.push(write_batch(5_000, 0, 1_000, "z"));
    let deletes: Vec<Command> = (100..400)
        .map(|n| Command::Delete {
            name: Bytes::from(format!("file-{n}")),
        })
        .collect();
    later.push(encode_batch(5_001, &deletes));
    later.push(write_batch(5_002, 4_000, 2_000, "new"));
    let mut outcomes = Vec::new();
    for data in &later {
        live.apply(data, &mut outcomes).expect("apply");
    }
    live.check_invariants();

    let worker = worker::Worker::start(frozen_dir.path().to_path_buf(), true).expect("worker");
    assert!(worker.submit(worker::Job::Write {
        state,
        index: 5,
        term: 1
    }));
    let written = wait_taken(&worker);
    let expected = take_on_helper(expected_dir.path(), &applied(&log), 5, 1);
    assert_eq!(written, expected);
    let name = snapshot::file_name(5, 1);
    let frozen_bytes = std::fs::read(frozen_dir.path().join(&name)).expect("read");
    let expected_bytes = std::fs::read(expected_dir.path().join(&name)).expect("read");
    assert!(
        frozen_bytes == expected_bytes,
        "the frozen view's file differs from the map at its index"
    );
    let (_, loaded) = snapshot::load(&frozen_dir.path().join(&name)).expect("loads");
    assert_eq!(loaded.len(), 5_000);
    assert!(loaded.version_counter() < live.version_counter());
    // The live map is untouched by the view's end.
    let mut replayed = applied(&log);
    for data in &later {
        replayed.apply(data, &mut outcomes).expect("apply");
    }
    assert_eq!(live.checksum(0), replayed.checksum(0));
}
