//! The WAL from the outside: what `storage::open` gives back after appends,
//! syncs, truncations, torn and damaged tails, rollovers, failures and
//! restarts. Each test works in its own temporary data dir.

use bytes::Bytes;
use raftfs::error::Error;
use raftfs::raft::message::{Entry, HardState};
use raftfs::storage::{self, InjectedFailure, Wal, WalOptions};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        data: Bytes::from(format!("entry {index} of term {term}")),
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|index| entry(term, index)).collect()
}

fn hard_state(term: u64, vote: Option<u64>) -> HardState {
    HardState {
        term,
        vote,
        incarnations: BTreeMap::from([(1, 0xaa), (2, 0xbb), (3, term)]),
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        fsync: true,
        segment_bytes_max: 4096,
    }
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    paths.sort();
    paths
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Opens `dir`, expecting success.
fn reopen(dir: &Path, options: WalOptions) -> (Wal, storage::Recovered) {
    match storage::open_with(dir, options) {
        Ok(opened) => opened,
        Err(error) => panic!("reopening {} failed: {error}", dir.display()),
    }
}

#[test]
fn round_trip_of_entries_and_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, recovered) = storage::open(dir.path(), true).unwrap();
    assert_eq!(recovered.entries, vec![]);
    assert_eq!(recovered.hard_state, HardState::default());
    assert_eq!(wal.last_index(), 0);
    wal.save_hard_state(&hard_state(1, Some(2))).unwrap();
    wal.append(&entries(1, 1..=10)).unwrap();
    wal.append(&[Entry {
        term: 1,
        index: 11,
        data: Bytes::new(),
    }])
    .unwrap();
    assert_eq!(wal.last_index(), 11);
    wal.sync().unwrap();
    drop(wal);

    let (wal, recovered) = storage::open(dir.path(), true).unwrap();
    let mut expected = entries(1, 1..=10);
    expected.push(Entry {
        term: 1,
        index: 11,
        data: Bytes::new(),
    });
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.hard_state, hard_state(1, Some(2)));
    assert_eq!(wal.last_index(), 11);
}

#[test]
fn restart_sees_everything_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    wal.append(&entries(1, 1..=5)).unwrap();
    wal.save_hard_state(&hard_state(1, None)).unwrap();
    wal.sync().unwrap();
    // Appended but never synced: a crash may lose these.
    wal.append(&entries(2, 6..=8)).unwrap();
    wal.save_hard_state(&hard_state(2, Some(3))).unwrap();
    drop(wal);

    let (mut wal, recovered) = storage::open(dir.path(), true).unwrap();
    assert_eq!(recovered.entries, entries(1, 1..=5));
    assert_eq!(recovered.hard_state, hard_state(1, None));
    wal.append(&entries(2, 6..=6)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = storage::open(dir.path(), true).unwrap();
    assert_eq!(recovered.entries.len(), 6);
}

#[test]
fn last_hard_state_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    for term in 1..=5 {
        wal.save_hard_state(&hard_state(term, Some(term % 3)))
            .unwrap();
        wal.append(&entries(term, term..=term)).unwrap();
        if term % 2 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.save_hard_state(&hard_state(7, None)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = storage::open(dir.path(), true).unwrap();
    assert_eq!(recovered.hard_state, hard_state(7, None));
    assert_eq!(recovered.entries.len(), 5);
}

#[test]
fn truncation_of_the_suffix_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    wal.append(&entries(1, 1..=10)).unwrap();
    wal.sync().unwrap();
    wal.append(&entries(2, 6..=8)).unwrap();
    assert_eq!(wal.last_index(), 8);
    wal.sync().unwrap();
    drop(wal);

    let (mut wal, recovered) = storage::open(dir.path(), true).unwrap();
    let mut expected = entries(1, 1..=5);
    expected.extend(entries(2, 6..=8));
    assert_eq!(recovered.entries, expected);
    assert_eq!(wal.last_index(), 8);
    // Replace from the very first index, then grow again.
    wal.append(&entries(3, 1..=2)).unwrap();
    wal.append(&entries(3, 3..=4)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = storage::open(dir.path(), true).unwrap();
    assert_eq!(recovered.entries, entries(3, 1..=4));
}

#[test]
fn truncation_back_into_an_older_segment_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for start in (1..=300).step_by(10) {
        wal.append(&entries(1, start..=start + 9)).unwrap();
        wal.sync().unwrap();
    }
    assert!(segment_paths(dir.path()).len() > 3);
    wal.append(&entries(2, 20..=25)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, recovered) = reopen(dir.path(), small_segments());
    let mut expected = entries(1, 1..=19);
    expected.extend(entries(2, 20..=25));
    assert_eq!(recovered.entries, expected);
    assert_eq!(wal.last_index(), 25);
}

#[test]
fn appends_that_would_leave_a_gap_are_refused_without_poisoning() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    wal.append(&entries(1, 1..=3)).unwrap();
    assert!(matches!(
        wal.append(&entries(1, 5..=6)),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        wal.append(&[entry(1, 4), entry(1, 6)]),
        Err(Error::Refused(_))
    ));
    assert!(matches!(wal.append(&[entry(1, 0)]), Err(Error::Refused(_))));
    assert!(!wal.is_poisoned());
    assert_eq!(wal.last_index(), 3);
    wal.append(&[]).unwrap();
    wal.append(&entries(1, 4..=4)).unwrap();
    wal.sync().unwrap();
}

/// Writes 1..=4 synced, then `last` (an entry or a hard state) synced, and
/// returns the segment path with its length before and after `last`.
fn write_then_last_record(dir: &Path, last_is_entry: bool) -> (PathBuf, u64, u64) {
    let (mut wal, _) = storage::open(dir, true).unwrap();
    wal.save_hard_state(&hard_state(1, Some(1))).unwrap();
    wal.append(&entries(1, 1..=4)).unwrap();
    wal.sync().unwrap();
    let path = segment_paths(dir).pop().unwrap();
    let before = file_bytes(&path);
    if last_is_entry {
        wal.append(&entries(1, 5..=5)).unwrap();
    } else {
        wal.save_hard_state(&hard_state(2, Some(3))).unwrap();
    }
    wal.sync().unwrap();
    (path.clone(), before, file_bytes(&path))
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_recovers_the_previous_one() {
    for last_is_entry in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (path, before, after) = write_then_last_record(dir.path(), last_is_entry);
        let whole = std::fs::read(&path).unwrap();
        assert!(after > before);
        for cut in before..after {
            // Torn by length (the write stopped) and torn by content (the
            // size reached the disk, the data did not: zeros).
            let mut zeroed = whole.clone();
            zeroed[cut as usize..].fill(0);
            for damaged in [&whole[..cut as usize], &zeroed[..]] {
                if damaged == &whole[..] {
                    continue; // the record's own bytes were zeros already
                }
                std::fs::write(&path, damaged).unwrap();
                let options = WalOptions {
                    fsync: false,
                    ..WalOptions::default()
                };
                let (wal, recovered) = reopen(dir.path(), options);
                assert_eq!(recovered.entries, entries(1, 1..=4), "cut at {cut}");
                assert_eq!(recovered.hard_state, hard_state(1, Some(1)), "cut at {cut}");
                assert_eq!(wal.last_index(), 4);
                assert_eq!(
                    file_bytes(&path),
                    before,
                    "the torn tail is cut off the file"
                );
            }
        }
        // After a recovery the log goes on from the previous record.
        let (mut wal, _) = storage::open(dir.path(), true).unwrap();
        wal.append(&entries(2, 5..=6)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, recovered) = storage::open(dir.path(), true).unwrap();
        let mut expected = entries(1, 1..=4);
        expected.extend(entries(2, 5..=6));
        assert_eq!(recovered.entries, expected);
    }
}

#[test]
fn random_damage_to_the_tail_never_panics_nor_loses_a_synced_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    wal.save_hard_state(&hard_state(1, Some(1))).unwrap();
    wal.append(&entries(1, 1..=20)).unwrap();
    wal.sync().unwrap();
    let path = segment_paths(dir.path()).pop().unwrap();
    let synced_bytes = file_bytes(&path) as usize;
    // The tail: records a crash might tear (a truncation and a hard state too).
    wal.append(&entries(2, 18..=30)).unwrap();
    wal.save_hard_state(&hard_state(2, Some(2))).unwrap();
    wal.append(&entries(2, 31..=35)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let whole = std::fs::read(&path).unwrap();
    let mut full_log = entries(1, 1..=17);
    full_log.extend(entries(2, 18..=35));

    let mut rng = rand_pcg::Pcg64::seed_from_u64(0x5eed);
    for round in 0..300 {
        let mut damaged = whole.clone();
        for _ in 0..rng.gen_range(1..=4) {
            let kind = if damaged.len() > synced_bytes {
                rng.gen_range(0..4)
            } else {
                3
            };
            let at = rng
                .gen_range(synced_bytes..=damaged.len())
                .min(damaged.len() - 1);
            match kind {
                0 => damaged[at] ^= 1 << rng.gen_range(0..8),
                1 => damaged[at] = rng.gen(),
                2 => damaged.truncate(at),
                _ => {
                    let garbage_bytes = rng.gen_range(1..64);
                    damaged.extend((0..garbage_bytes).map(|_| rng.gen::<u8>()));
                }
            }
        }
        std::fs::write(&path, &damaged).unwrap();
        let options = WalOptions {
            fsync: false,
            ..WalOptions::default()
        };
        let (_, recovered) = reopen(dir.path(), options);
        assert!(
            recovered.entries.len() >= 17,
            "round {round}: a synced entry was lost"
        );
        assert_eq!(recovered.entries[..17], full_log[..17], "round {round}");
        // Either the tail was cut before the replacement of 18.. (and every
        // synced entry is there), or what is there is a prefix of the log.
        let length = recovered.entries.len();
        assert!(
            recovered.entries == entries(1, 1..=20)
                || (length >= 18 && recovered.entries[..] == full_log[..length]),
            "round {round}: recovered {length} entries that are not what was written"
        );
        assert!(
            [hard_state(1, Some(1)), hard_state(2, Some(2))].contains(&recovered.hard_state),
            "round {round}"
        );
    }
}

#[test]
fn segments_roll_over_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small_segments());
    wal.save_hard_state(&hard_state(1, Some(1))).unwrap();
    let mut next_index = 1;
    for batch in 0..150u64 {
        let batch_entries = 1 + batch % 9;
        wal.append(&entries(1, next_index..=next_index + batch_entries - 1))
            .unwrap();
        next_index += batch_entries;
        wal.sync().unwrap();
    }
    let last_index = next_index - 1;
    let paths = segment_paths(dir.path());
    assert!(
        paths.len() >= 5,
        "expected several segments, got {}",
        paths.len()
    );
    assert_eq!(wal.segment_sequence(), paths.len() as u64);
    for path in &paths[..paths.len() - 1] {
        // A segment is closed at the first record that would overfill it.
        assert!(file_bytes(path) <= 4096, "{} overfull", path.display());
        assert!(file_bytes(path) > 2048, "{} underfull", path.display());
    }
    drop(wal);

    let (mut wal, recovered) = reopen(dir.path(), small_segments());
    assert_eq!(recovered.entries, entries(1, 1..=last_index));
    // Saved once, before every rollover: each segment repeats it.
    assert_eq!(recovered.hard_state, hard_state(1, Some(1)));
    // An entry larger than a whole segment gets a segment of its own.
    let big = Entry {
        term: 1,
        index: last_index + 1,
        data: Bytes::from(vec![7u8; 10_000]),
    };
    wal.append(std::slice::from_ref(&big)).unwrap();
    wal.append(&entries(1, last_index + 2..=last_index + 2))
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path(), small_segments());
    assert_eq!(recovered.entries.len() as u64, last_index + 2);
    assert_eq!(recovered.entries[last_index as usize], big);
}

#[test]
fn damage_in_an_older_segment_refuses_to_start_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for start in (1..=200).step_by(10) {
        wal.append(&entries(1, start..=start + 9)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let paths = segment_paths(dir.path());
    assert!(paths.len() >= 3);
    let victim = &paths[1];
    let original = std::fs::read(victim).unwrap();
    let middle = original.len() / 2;

    let mut flipped = original.clone();
    flipped[middle] ^= 0x01;
    std::fs::write(victim, &flipped).unwrap();
    match storage::open_with(dir.path(), small_segments()) {
        Err(Error::Corrupt(message)) => {
            let name = victim.file_name().unwrap().to_str().unwrap();
            assert!(message.contains(name), "{message}");
            assert!(message.contains("offset"), "{message}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, got a WAL"),
    }
    // A cut-short older segment is refused too, and so is a missing one.
    std::fs::write(victim, &original[..middle]).unwrap();
    assert!(matches!(
        storage::open_with(dir.path(), small_segments()),
        Err(Error::Corrupt(_))
    ));
    std::fs::remove_file(victim).unwrap();
    match storage::open_with(dir.path(), small_segments()) {
        Err(Error::Corrupt(message)) => assert!(message.contains("missing"), "{message}"),
        _ => panic!("expected Corrupt for a missing segment"),
    }
    // Nothing was modified by the refusals: put it back and all is there.
    std::fs::write(victim, &original).unwrap();
    let (_, recovered) = reopen(dir.path(), small_segments());
    assert_eq!(recovered.entries, entries(1, 1..=200));
}

#[test]
fn a_damaged_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    wal.append(&entries(1, 1..=3)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let path = segment_paths(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[9] ^= 0xff; // the format version
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        storage::open(dir.path(), true),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn a_failed_write_or_fsync_poisons_the_wal() {
    for failure in [InjectedFailure::Write, InjectedFailure::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = storage::open(dir.path(), true).unwrap();
        wal.append(&entries(1, 1..=3)).unwrap();
        wal.sync().unwrap();
        wal.append(&entries(1, 4..=6)).unwrap();
        wal.inject_failure(failure);
        assert!(matches!(wal.sync(), Err(Error::Io { .. })), "{failure:?}");
        assert!(wal.is_poisoned());
        // Every later call refuses, even though the disk would work now.
        assert!(matches!(wal.sync(), Err(Error::Io { .. })));
        assert!(matches!(
            wal.append(&entries(1, 7..=7)),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            wal.save_hard_state(&hard_state(2, None)),
            Err(Error::Io { .. })
        ));
        let refusal = wal.sync().unwrap_err().to_string();
        assert!(refusal.contains("earlier failure"), "{refusal}");
        drop(wal);
        // What was synced before the failure is still there.
        let (_, recovered) = storage::open(dir.path(), true).unwrap();
        assert_eq!(recovered.entries[..3], entries(1, 1..=3)[..]);
    }
}

#[test]
fn a_failure_during_rollover_poisons_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small_segments());
    wal.append(&entries(1, 1..=50)).unwrap();
    wal.inject_failure(InjectedFailure::Sync);
    let mut index = 51;
    let error = loop {
        match wal.append(&entries(1, index..=index)) {
            Ok(()) => index += 1,
            Err(error) => break error,
        }
        assert!(index < 1_000, "never rolled over");
    };
    assert!(matches!(error, Error::Io { .. }), "{error}");
    assert!(wal.is_poisoned());
    assert!(wal.sync().is_err());
}

#[test]
fn incarnation_is_stable_across_reopen_and_differs_for_a_fresh_dir() {
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let (wal, first) = storage::open(first_dir.path(), true).unwrap();
    drop(wal);
    let (wal, again) = storage::open(first_dir.path(), true).unwrap();
    drop(wal);
    let (_, second) = storage::open(second_dir.path(), true).unwrap();
    assert_ne!(first.incarnation, 0);
    assert_eq!(first.incarnation, again.incarnation);
    assert_ne!(first.incarnation, second.incarnation);
    let text = std::fs::read_to_string(first_dir.path().join("incarnation")).unwrap();
    assert_eq!(text, format!("{:016x}\n", first.incarnation));
}

#[test]
fn a_lost_incarnation_file_with_a_wal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    wal.append(&entries(1, 1..=1)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    std::fs::remove_file(dir.path().join("incarnation")).unwrap();
    match storage::open(dir.path(), true) {
        Err(Error::Corrupt(message)) => assert!(message.contains("incarnation"), "{message}"),
        _ => panic!("expected Corrupt"),
    }
    std::fs::write(dir.path().join("incarnation"), "not hex\n").unwrap();
    assert!(matches!(
        storage::open(dir.path(), true),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn a_dir_that_cannot_be_created_or_written_gives_a_clear_error() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"not a dir").unwrap();
    let under_a_file = file.join("data");
    match storage::open(&under_a_file, true) {
        Err(error @ Error::Io { .. }) => {
            let message = error.to_string();
            assert!(message.contains("creating data dir"), "{message}");
            assert!(
                message.contains(&under_a_file.display().to_string()),
                "{message}"
            );
        }
        _ => panic!("expected an I/O error"),
    }
    assert!(matches!(storage::open(&file, true), Err(Error::Io { .. })));

    // Permissions do not bind root, so this half only runs for other users.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let read_only = parent.path().join("read-only");
        std::fs::create_dir(&read_only).unwrap();
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o500)).unwrap();
        let result = storage::open(&read_only, true);
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o700)).unwrap();
        match result {
            Err(error @ Error::Io { .. }) => assert!(error.to_string().contains("writable")),
            _ => panic!("expected an I/O error for a read-only dir"),
        }
    }
}

#[test]
fn a_data_dir_is_opened_by_one_wal_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = storage::open(dir.path(), true).unwrap();
    assert!(matches!(
        storage::open(dir.path(), true),
        Err(Error::Refused(_))
    ));
    drop(wal);
    storage::open(dir.path(), true).unwrap();
}

#[test]
fn leftover_temporary_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = storage::open(dir.path(), true).unwrap();
    drop(wal);
    let leftover = dir.path().join("00000000000000000002.wal.tmp");
    std::fs::write(&leftover, b"half a header").unwrap();
    let (wal, _) = storage::open(dir.path(), true).unwrap();
    assert!(!leftover.exists());
    assert_eq!(wal.segment_sequence(), 1);
}

/// Appends+syncs per second of 100-byte entries in batches of 1 and 256, with
/// fsync on and off. `cargo test --release --test wal -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_append_and_sync() {
    for (fsync, batch) in [(true, 1u64), (true, 256), (false, 1), (false, 256)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = storage::open(dir.path(), fsync).unwrap();
        let data = Bytes::from(vec![b'x'; 100]);
        let started = std::time::Instant::now();
        let mut syncs = 0u64;
        let mut next_index = 1;
        while started.elapsed() < std::time::Duration::from_secs(2) {
            let batch_entries: Vec<Entry> = (next_index..next_index + batch)
                .map(|index| Entry {
                    term: 1,
                    index,
                    data: data.clone(),
                })
                .collect();
            wal.append(&batch_entries).unwrap();
            wal.sync().unwrap();
            next_index += batch;
            syncs += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "fsync {fsync:>5}, batch {batch:>3}: {:>8.0} syncs/s, {:>9.0} entries/s, {:.3} ms per sync",
            syncs as f64 / seconds,
            (syncs * batch) as f64 / seconds,
            seconds * 1000.0 / syncs as f64
        );
    }
}

#[test]
fn a_newest_segment_without_a_whole_header_is_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = reopen(dir.path(), small_segments());
    for start in (1..=100).step_by(10) {
        wal.append(&entries(1, start..=start + 9)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    // What a crash with fsync off can leave: the new segment's name, not its data.
    let newest = segment_paths(dir.path()).len() as u64 + 1;
    let path = dir.path().join(format!("{newest:020}.wal"));
    std::fs::write(&path, [0u8; 10]).unwrap();
    let (mut wal, recovered) = reopen(dir.path(), small_segments());
    assert_eq!(recovered.entries, entries(1, 1..=100));
    assert_eq!(wal.segment_sequence(), newest);
    wal.append(&entries(1, 101..=101)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = reopen(dir.path(), small_segments());
    assert_eq!(recovered.entries, entries(1, 1..=101));
}

/// Waits (bounded) for the sync thread to finish the request in flight.
fn wait_for_sync(syncer: &storage::Syncer) -> storage::SyncDone {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(done) = syncer.try_done().unwrap() {
            return done;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fsync never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn background_sync_covers_what_was_written_before_it_and_no_more() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    let notified = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&notified);
    let syncer = storage::Syncer::start(
        1,
        Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    // What a restart replays may sit only in the page cache: the first sync
    // after open covers it, even with nothing appended since.
    let first = wal
        .begin_sync()
        .unwrap()
        .expect("the first sync after open is real");
    syncer.submit(first).unwrap();
    wal.end_sync(wait_for_sync(&syncer)).unwrap();
    assert!(wal.begin_sync().unwrap().is_none(), "nothing to sync yet");

    wal.append(&entries(1, 1..=5)).unwrap();
    let request = wal
        .begin_sync()
        .unwrap()
        .expect("entries 1-5 need an fsync");
    syncer.submit(request).unwrap();
    // Appended while the fsync runs: not covered by it.
    wal.append(&entries(1, 6..=8)).unwrap();
    let done = wait_for_sync(&syncer);
    wal.end_sync(done).unwrap();
    assert_eq!(notified.load(Ordering::SeqCst), 2);
    let request = wal
        .begin_sync()
        .unwrap()
        .expect("entries 6-8 still need one");
    syncer.submit(request).unwrap();
    wal.end_sync(wait_for_sync(&syncer)).unwrap();
    assert!(wal.begin_sync().unwrap().is_none(), "everything is durable");
    drop(wal);
    let (_, recovered) = storage::open(dir.path(), true).unwrap();
    assert_eq!(recovered.entries, entries(1, 1..=8));
}

#[test]
fn background_sync_failure_poisons_the_wal_and_fsync_off_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    wal.append(&entries(1, 1..=3)).unwrap();
    wal.inject_failure(InjectedFailure::Sync);
    assert!(matches!(wal.begin_sync(), Err(Error::Io { .. })));
    assert!(wal.is_poisoned());
    assert!(wal.begin_sync().is_err());

    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), false).unwrap();
    wal.append(&entries(1, 1..=3)).unwrap();
    assert!(
        wal.begin_sync().unwrap().is_none(),
        "fsync off: written only"
    );
    drop(wal);
    let (_, recovered) = storage::open(dir.path(), false).unwrap();
    assert_eq!(recovered.entries, entries(1, 1..=3));
}

#[test]
fn background_syncs_finished_out_of_order_leave_everything_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = storage::open(dir.path(), true).unwrap();
    let syncer = storage::Syncer::start(2, Box::new(|| {})).unwrap();
    wal.append(&entries(1, 1..=5)).unwrap();
    let mut first = wal
        .begin_sync()
        .unwrap()
        .expect("entries 1-5 need an fsync");
    first.id = 1;
    syncer.submit(first).unwrap();
    wal.append(&entries(1, 6..=8)).unwrap();
    let mut second = wal.begin_sync().unwrap().expect("entries 6-8 need one");
    second.id = 2;
    syncer.submit(second).unwrap();
    let mut done = [wait_for_sync(&syncer), wait_for_sync(&syncer)];
    done.sort_by_key(|d| std::cmp::Reverse(d.id));
    let [newer, older] = done;
    assert_eq!((newer.id, older.id), (2, 1));
    // The newer one is taken first; the older, late one changes nothing.
    wal.end_sync(newer).unwrap();
    assert!(
        wal.begin_sync().unwrap().is_none(),
        "the newer fsync covers all"
    );
    wal.end_sync(older).unwrap();
    assert!(wal.begin_sync().unwrap().is_none());
    drop(wal);
    let (_, recovered) = storage::open(dir.path(), true).unwrap();
    assert_eq!(recovered.entries, entries(1, 1..=8));
}
