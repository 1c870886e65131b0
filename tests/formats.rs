//! On-disk format versions: a WAL segment or snapshot file of a format this
//! build does not read is refused with an error naming both versions (never
//! misread), through the library and through a real `raftfs node`; and the
//! hard state records format-1 data dirs hold (bincode's bytes, before the
//! WAL's own codec) still read back.
//!
//! The tests run one at a time: a node spawned by one test can inherit,
//! between its fork and its exec, another test's data dir lock, which then
//! outlives that test's `drop` of its WAL (seen once in CI as "in use by
//! another raftfs node" at a reopen).

mod common;

use common::cluster::{serial, Cluster, Options};
use raftfs::error::Error;
use raftfs::storage::{self, segment};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|item| item.ok().map(|item| item.path()))
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    found
}

/// Rewrites a segment header to claim `version`, with a valid header CRC
/// (as a newer build would write it).
fn set_segment_version(path: &Path, version: u32) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).expect("write segment");
}

#[test]
fn a_wal_segment_of_another_format_version_is_refused_by_name() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = storage::open(dir.path(), false).expect("open");
    wal.append(&[raftfs::raft::Entry {
        term: 1,
        index: 1,
        data: bytes::Bytes::from_static(b"x"),
    }])
    .expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let segment = files_ending(dir.path(), ".wal").pop().expect("a segment");
    set_segment_version(&segment, segment::FORMAT_VERSION + 1);
    match storage::open(dir.path(), false) {
        Err(Error::Corrupt(message)) => assert!(
            message.contains("format version 2, this build reads only version 1"),
            "{message}"
        ),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("a version-2 segment was read"),
    }
}

#[test]
fn a_snapshot_file_of_another_format_is_refused_by_name() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let fsm = raftfs::fsm::Fsm::new();
    let (_, path) =
        raftfs::snapshot::write_file(dir.path(), fsm.freeze(), 7, 2, false).expect("written");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    // A newer build would write a valid trailer over its own header.
    let body = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    let error = match raftfs::snapshot::load(&path) {
        Ok(_) => panic!("a format-3 snapshot was read"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("format 3, this build reads only 1 to 2"),
        "{error}"
    );
}

/// A format-1 data dir written before the WAL had its own hard state codec:
/// its segment's hard state record carries bincode's bytes, framed as the
/// WAL frames every record.
#[test]
fn a_hard_state_record_written_by_bincode_reads_back() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let (wal, _) = storage::open(dir.path(), false).expect("open");
    drop(wal);
    let segment = files_ending(dir.path(), ".wal").pop().expect("a segment");
    // bincode 1.3 of HardState { term: 5, vote: Some(3), incarnations: {1: 7, 3: 9} }
    let mut payload = vec![2u8]; // kind: hard state
    payload.extend_from_slice(&5u64.to_le_bytes());
    payload.push(1);
    payload.extend_from_slice(&3u64.to_le_bytes());
    payload.extend_from_slice(&2u64.to_le_bytes());
    for (member, incarnation) in [(1u64, 7u64), (3, 9)] {
        payload.extend_from_slice(&member.to_le_bytes());
        payload.extend_from_slice(&incarnation.to_le_bytes());
    }
    let length = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length), &payload);
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(&length);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(&segment, bytes).expect("write");
    let (_, recovered) = storage::open(dir.path(), false).expect("reopen");
    assert_eq!(recovered.hard_state.term, 5);
    assert_eq!(recovered.hard_state.vote, Some(3));
    assert_eq!(
        recovered
            .hard_state
            .incarnations
            .into_iter()
            .collect::<Vec<_>>(),
        vec![(1, 7), (3, 9)]
    );
}

#[test]
fn a_node_refuses_a_data_dir_of_another_wal_version_in_one_line() {
    let _serial = serial();
    let mut cluster = Cluster::start(Options::new(1).fsync(false));
    assert!(
        cluster.wait_leader(Duration::from_secs(10)).is_some(),
        "{}",
        cluster.log_text(1)
    );
    cluster.kill(1);
    for segment in files_ending(&cluster.data_dir(1), ".wal") {
        set_segment_version(&segment, 2);
    }
    let log_before = cluster.log_text(1).len();
    cluster.start_node(1);
    let status = cluster
        .wait_exit(1, Duration::from_secs(10))
        .expect("the node exits");
    assert!(!status.success(), "{status}");
    let log = cluster.log_text(1);
    let new_lines = &log[log_before..];
    assert!(
        new_lines.contains("format version 2, this build reads only version 1"),
        "{new_lines}"
    );
}
