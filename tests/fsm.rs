//! The state machine against SPEC §2, through its public API: one test per
//! row and rule the fsm decides (versions, cas, delete, expiry, cluster time),
//! then the apply contract (no-op entries, corrupt entries, batch order,
//! determinism, snapshots). Property tests (codec, model) live in
//! tests/fsm_properties.rs.

use bytes::Bytes;
use raftfs::fsm::{encode_batch, Command, DecodeError, FileView, Fsm, Outcome};

fn write(name: &str, content: &str, exptime_s: u64) -> Command {
    Command::Write {
        name: Bytes::copy_from_slice(name.as_bytes()),
        content: Bytes::copy_from_slice(content.as_bytes()),
        exptime_s,
    }
}

fn cas(name: &str, version: u64, content: &str, exptime_s: u64) -> Command {
    Command::Cas {
        name: Bytes::copy_from_slice(name.as_bytes()),
        version,
        content: Bytes::copy_from_slice(content.as_bytes()),
        exptime_s,
    }
}

fn delete(name: &str) -> Command {
    Command::Delete {
        name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

/// Applies one batch stamped `stamp_ms` and returns its outcomes.
fn apply(fsm: &mut Fsm, stamp_ms: u64, commands: &[Command]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    fsm.apply(&encode_batch(stamp_ms, commands), &mut outcomes)
        .expect("valid batch");
    assert_eq!(outcomes.len(), commands.len(), "one outcome per command");
    fsm.check_invariants();
    outcomes
}

fn apply_one(fsm: &mut Fsm, stamp_ms: u64, command: Command) -> Outcome {
    apply(fsm, stamp_ms, &[command])[0]
}

fn written(version: u64) -> Outcome {
    Outcome::Written { version }
}

/// What a read shows a client: version, content, seconds left.
fn view(version: u64, content: &str, expires_in_s: u64) -> Option<(u64, &[u8], u64)> {
    Some((version, content.as_bytes(), expires_in_s))
}

fn shown(file: Option<FileView<'_>>) -> Option<(u64, &[u8], u64)> {
    file.map(|f| (f.version, f.content, f.expires_in_s))
}

// ---- versions (SPEC §2 "Versions", "Versions are consecutive") ----

#[test]
fn the_first_write_on_a_fresh_store_is_version_1() {
    let mut fsm = Fsm::new();
    assert_eq!(fsm.version_counter(), 0);
    assert_eq!(apply_one(&mut fsm, 1_000, write("a", "x", 0)), written(1));
    assert_eq!(fsm.version_counter(), 1);
}

#[test]
fn every_write_takes_the_next_version_from_one_counter_across_files() {
    let mut fsm = Fsm::new();
    let outcomes = apply(
        &mut fsm,
        1_000,
        &[write("a", "1", 0), write("b", "2", 0), write("a", "3", 0)],
    );
    assert_eq!(outcomes, [written(1), written(2), written(3)]);
    assert_eq!(shown(fsm.read(b"a", 1_000)), view(3, "3", 0));
    assert_eq!(shown(fsm.read(b"b", 1_000)), view(2, "2", 0));
    assert_eq!(fsm.len(), 2);
}

#[test]
fn a_recreated_file_gets_a_higher_version_than_before_its_delete() {
    let mut fsm = Fsm::new();
    assert_eq!(apply_one(&mut fsm, 1_000, write("a", "old", 0)), written(1));
    assert_eq!(apply_one(&mut fsm, 1_000, delete("a")), Outcome::Deleted);
    assert_eq!(apply_one(&mut fsm, 1_000, write("a", "new", 0)), written(2));
    // A cas aimed at the old incarnation fails: no ABA.
    assert_eq!(
        apply_one(&mut fsm, 1_000, cas("a", 1, "stale", 0)),
        Outcome::VersionMismatch { current: 2 }
    );
}

// ---- read ----

#[test]
fn read_of_a_missing_file_is_absent() {
    let fsm = Fsm::new();
    assert_eq!(fsm.read(b"nothing", 0), None);
}

#[test]
fn read_shows_version_content_and_zero_for_no_expiry() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 5, write("name", "hello world", 0));
    assert_eq!(shown(fsm.read(b"name", 5)), view(1, "hello world", 0));
    assert_eq!(
        shown(fsm.read(b"name", u64::MAX)),
        view(1, "hello world", 0)
    );
}

#[test]
fn empty_content_is_a_file() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 5, write("empty", "", 0));
    assert_eq!(shown(fsm.read(b"empty", 5)), view(1, "", 0));
}

#[test]
fn names_are_bytes_and_utf8_names_work() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 5, write("fïlé-名前", "u", 0));
    assert_eq!(shown(fsm.read("fïlé-名前".as_bytes(), 5)), view(1, "u", 0));
    assert_eq!(fsm.read(b"file", 5), None);
}

// ---- cas ----

#[test]
fn cas_with_the_current_version_replaces_and_takes_the_next_version() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 0, write("a", "one", 0));
    apply_one(&mut fsm, 0, write("other", "x", 0));
    assert_eq!(apply_one(&mut fsm, 0, cas("a", 1, "two", 0)), written(3));
    assert_eq!(shown(fsm.read(b"a", 0)), view(3, "two", 0));
}

#[test]
fn cas_with_another_version_fails_changes_nothing_and_consumes_no_version() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 0, write("a", "one", 0));
    let before = fsm.checksum(0);
    assert_eq!(
        apply_one(&mut fsm, 0, cas("a", 7, "two", 0)),
        Outcome::VersionMismatch { current: 1 }
    );
    assert_eq!(fsm.checksum(0), before);
    assert_eq!(fsm.version_counter(), 1);
    assert_eq!(apply_one(&mut fsm, 0, write("b", "", 0)), written(2));
}

#[test]
fn cas_on_a_missing_file_is_not_found_and_never_creates_it() {
    let mut fsm = Fsm::new();
    assert_eq!(
        apply_one(&mut fsm, 0, cas("a", 0, "x", 0)),
        Outcome::NotFound
    );
    assert_eq!(
        apply_one(&mut fsm, 0, cas("a", 1, "x", 0)),
        Outcome::NotFound
    );
    assert_eq!(fsm.read(b"a", 0), None);
    assert!(fsm.is_empty());
    assert_eq!(fsm.version_counter(), 0);
}

#[test]
fn cas_on_a_deleted_file_is_not_found() {
    let mut fsm = Fsm::new();
    apply(&mut fsm, 0, &[write("a", "x", 0), delete("a")]);
    assert_eq!(
        apply_one(&mut fsm, 0, cas("a", 1, "y", 0)),
        Outcome::NotFound
    );
}

// ---- delete ----

#[test]
fn delete_removes_the_file_and_consumes_no_version() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 0, write("a", "x", 0));
    assert_eq!(apply_one(&mut fsm, 0, delete("a")), Outcome::Deleted);
    assert_eq!(fsm.read(b"a", 0), None);
    assert!(fsm.is_empty());
    assert_eq!(fsm.version_counter(), 1);
}

#[test]
fn delete_of_a_missing_file_is_not_found() {
    let mut fsm = Fsm::new();
    assert_eq!(apply_one(&mut fsm, 0, delete("a")), Outcome::NotFound);
    apply(&mut fsm, 0, &[write("a", "x", 0), delete("a")]);
    assert_eq!(apply_one(&mut fsm, 0, delete("a")), Outcome::NotFound);
}

// ---- expiry ----

#[test]
fn a_file_expires_exactly_at_its_deadline() {
    let mut fsm = Fsm::new();
    // Written at cluster time 10 000 with EXPTIME 2: deadline 12 000.
    apply_one(&mut fsm, 10_000, write("a", "x", 2));
    assert_eq!(shown(fsm.read(b"a", 11_999)), view(1, "x", 1));
    assert_eq!(fsm.read(b"a", 12_000), None);
    assert_eq!(fsm.read(b"a", 12_001), None);
}

#[test]
fn remaining_seconds_are_rounded_up() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 10_000, write("a", "x", 5));
    // Deadline 15 000.
    assert_eq!(
        fsm.read(b"a", 10_000).map(|file| file.expires_in_s),
        Some(5)
    );
    assert_eq!(
        fsm.read(b"a", 10_001).map(|file| file.expires_in_s),
        Some(5)
    );
    assert_eq!(
        fsm.read(b"a", 10_999).map(|file| file.expires_in_s),
        Some(5)
    );
    assert_eq!(
        fsm.read(b"a", 11_000).map(|file| file.expires_in_s),
        Some(4)
    );
    assert_eq!(
        fsm.read(b"a", 13_999).map(|file| file.expires_in_s),
        Some(2)
    );
    assert_eq!(
        fsm.read(b"a", 14_000).map(|file| file.expires_in_s),
        Some(1)
    );
    assert_eq!(
        fsm.read(b"a", 14_999).map(|file| file.expires_in_s),
        Some(1)
    );
}

#[test]
fn an_expired_file_is_reaped_when_cluster_time_passes_its_deadline() {
    let mut fsm = Fsm::new();
    apply(
        &mut fsm,
        1_000,
        &[
            write("short", "x", 1),
            write("long", "y", 100),
            write("never", "z", 0),
        ],
    );
    assert_eq!(fsm.len(), 3);
    // Any later entry carries cluster time forward; an empty batch is enough.
    apply(&mut fsm, 1_999, &[]);
    assert_eq!(fsm.len(), 3);
    apply(&mut fsm, 2_000, &[]);
    assert_eq!(fsm.len(), 2);
    assert_eq!(fsm.read(b"short", 2_000), None);
    apply(&mut fsm, 500_000, &[]);
    assert_eq!(fsm.len(), 1);
    assert_eq!(shown(fsm.read(b"never", 500_000)), view(3, "z", 0));
}

#[test]
fn cas_and_delete_on_an_expired_file_are_not_found() {
    let mut fsm = Fsm::new();
    apply(&mut fsm, 1_000, &[write("a", "x", 1), write("b", "y", 1)]);
    assert_eq!(
        apply_one(&mut fsm, 2_000, cas("a", 1, "z", 0)),
        Outcome::NotFound
    );
    assert_eq!(apply_one(&mut fsm, 2_000, delete("b")), Outcome::NotFound);
    assert!(fsm.is_empty());
    assert_eq!(fsm.version_counter(), 2);
}

#[test]
fn a_write_on_an_expired_file_creates_it_afresh_with_the_next_version() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 1_000, write("a", "old", 1));
    assert_eq!(apply_one(&mut fsm, 2_000, write("a", "new", 0)), written(2));
    assert_eq!(shown(fsm.read(b"a", 10_000_000)), view(2, "new", 0));
}

#[test]
fn a_later_write_with_exptime_0_cancels_the_expiry() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 1_000, write("a", "x", 1));
    apply_one(&mut fsm, 1_500, write("a", "y", 0));
    apply(&mut fsm, 100_000, &[]);
    assert_eq!(shown(fsm.read(b"a", 100_000)), view(2, "y", 0));
    assert_eq!(fsm.len(), 1);
}

#[test]
fn a_later_write_replaces_the_deadline_both_ways() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 1_000, write("later", "x", 1));
    apply_one(&mut fsm, 1_000, write("sooner", "x", 100));
    // later: 2 000 → 11 000; sooner: 101 000 → 3 000.
    apply(
        &mut fsm,
        1_000,
        &[write("later", "y", 10), write("sooner", "y", 2)],
    );
    apply(&mut fsm, 3_000, &[]);
    assert_eq!(shown(fsm.read(b"later", 3_000)), view(3, "y", 8));
    assert_eq!(fsm.read(b"sooner", 3_000), None);
    apply(&mut fsm, 11_000, &[]);
    assert!(fsm.is_empty());
}

#[test]
fn a_cas_replaces_the_expiry_too() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 1_000, write("a", "x", 1));
    assert_eq!(apply_one(&mut fsm, 1_500, cas("a", 1, "y", 0)), written(2));
    apply(&mut fsm, 60_000, &[]);
    assert_eq!(shown(fsm.read(b"a", 60_000)), view(2, "y", 0));
    assert_eq!(apply_one(&mut fsm, 60_000, cas("a", 2, "z", 3)), written(3));
    assert_eq!(shown(fsm.read(b"a", 60_000)), view(3, "z", 3));
    assert_eq!(
        apply_one(&mut fsm, 63_000, cas("a", 3, "w", 0)),
        Outcome::NotFound
    );
}

#[test]
fn a_failed_cas_keeps_the_old_expiry() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 1_000, write("a", "x", 2));
    assert_eq!(
        apply_one(&mut fsm, 1_000, cas("a", 9, "y", 0)),
        Outcome::VersionMismatch { current: 1 }
    );
    assert_eq!(shown(fsm.read(b"a", 2_500)), view(1, "x", 1));
    assert_eq!(fsm.read(b"a", 3_000), None);
}

#[test]
fn huge_exptime_saturates_instead_of_overflowing() {
    let mut fsm = Fsm::new();
    apply(
        &mut fsm,
        1_000,
        &[
            write("max", "x", u64::MAX),
            write("big", "x", u64::MAX / 1_000 + 1),
        ],
    );
    let remaining_s = (u64::MAX - 1_000).div_ceil(1_000);
    assert_eq!(shown(fsm.read(b"max", 1_000)), view(1, "x", remaining_s));
    assert_eq!(shown(fsm.read(b"big", 1_000)), view(2, "x", remaining_s));
    // A stamp near the end of time saturates too.
    let late_ms = u64::MAX - 10;
    apply_one(&mut fsm, late_ms, write("late", "x", 1));
    assert_eq!(shown(fsm.read(b"late", late_ms)), view(3, "x", 1));
    assert_eq!(fsm.read(b"late", u64::MAX), None);
}

#[test]
fn expiry_follows_cluster_time_only_and_never_goes_back() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 5_000, write("a", "x", 1));
    assert_eq!(fsm.cluster_time_ms(), 5_000);
    // An entry stamped earlier (a correct leader never makes one) does not
    // move cluster time back: the write inside is judged at 5 000.
    apply_one(&mut fsm, 1_000, write("b", "y", 1));
    assert_eq!(fsm.cluster_time_ms(), 5_000);
    assert_eq!(shown(fsm.read(b"b", 5_000)), view(2, "y", 1));
    apply(&mut fsm, 6_000, &[]);
    assert!(fsm.is_empty());
}

// ---- the apply contract ----

#[test]
fn empty_entry_data_is_a_no_op() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 1_000, write("a", "x", 1));
    let mut outcomes = vec![Outcome::Deleted];
    fsm.apply(&Bytes::new(), &mut outcomes).expect("no-op");
    assert_eq!(outcomes, [Outcome::Deleted], "the no-op pushes nothing");
    assert_eq!(fsm.cluster_time_ms(), 1_000);
    assert_eq!(fsm.len(), 1);
}

#[test]
fn outcomes_are_appended_in_command_order() {
    let mut fsm = Fsm::new();
    let mut outcomes = vec![Outcome::NotFound];
    let data = encode_batch(0, &[write("a", "x", 0), delete("b"), delete("a")]);
    fsm.apply(&data, &mut outcomes).expect("valid batch");
    assert_eq!(
        outcomes,
        [
            Outcome::NotFound,
            written(1),
            Outcome::NotFound,
            Outcome::Deleted
        ]
    );
}

#[test]
fn later_commands_in_a_batch_see_earlier_ones() {
    let mut fsm = Fsm::new();
    let outcomes = apply(
        &mut fsm,
        0,
        &[
            write("a", "1", 0),
            cas("a", 1, "2", 0),
            cas("a", 1, "3", 0),
            delete("a"),
            cas("a", 2, "4", 0),
        ],
    );
    assert_eq!(
        outcomes,
        [
            written(1),
            written(2),
            Outcome::VersionMismatch { current: 2 },
            Outcome::Deleted,
            Outcome::NotFound
        ]
    );
}

#[test]
fn a_corrupt_entry_changes_nothing_and_pushes_nothing() {
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 1_000, write("a", "x", 1));
    let before = fsm.checksum(1_000);
    let mut data = encode_batch(9_000, &[delete("a"), write("b", "y", 0)]).to_vec();
    data.push(0);
    let mut outcomes = Vec::new();
    assert_eq!(
        fsm.apply(&Bytes::from(data), &mut outcomes),
        Err(DecodeError::TrailingBytes(1))
    );
    assert!(outcomes.is_empty());
    assert_eq!(fsm.checksum(1_000), before);
    assert_eq!(
        fsm.cluster_time_ms(),
        1_000,
        "a corrupt entry's stamp is not taken"
    );
}

#[test]
fn replicas_applying_the_same_entries_agree_on_the_checksum() {
    let entries = [
        encode_batch(
            1_000,
            &[write("a", "1", 0), write("b", "2", 3), write("c", "3", 1)],
        ),
        encode_batch(
            2_500,
            &[cas("a", 1, "4", 0), delete("c"), write("d", "", 0)],
        ),
        Bytes::new(),
        encode_batch(3_000, &[write("e", "5", 10)]),
    ];
    let mut first = Fsm::new();
    let mut second = Fsm::new();
    let mut outcomes = Vec::new();
    for entry in &entries {
        first.apply(entry, &mut outcomes).expect("valid");
        second.apply(entry, &mut outcomes).expect("valid");
    }
    assert_eq!(first.checksum(3_000), second.checksum(3_000));
    assert_eq!(first.version_counter(), second.version_counter());
}

#[test]
fn the_checksum_sees_every_field_and_the_counter() {
    let base = |content: &str, exptime_s: u64| {
        let mut fsm = Fsm::new();
        apply(&mut fsm, 1_000, &[write("a", content, exptime_s)]);
        fsm
    };
    let reference = base("x", 0).checksum(1_000);
    assert_ne!(base("y", 0).checksum(1_000), reference, "content");
    assert_ne!(base("x", 5).checksum(1_000), reference, "expiry");
    let mut renamed = Fsm::new();
    apply(&mut renamed, 1_000, &[write("b", "x", 0)]);
    assert_ne!(renamed.checksum(1_000), reference, "name");
    let mut later_version = Fsm::new();
    apply(
        &mut later_version,
        1_000,
        &[write("a", "x", 0), write("a", "x", 0)],
    );
    assert_ne!(later_version.checksum(1_000), reference, "version");
    let mut same_files_higher_counter = Fsm::new();
    apply(
        &mut same_files_higher_counter,
        1_000,
        &[write("b", "", 0), delete("b"), write("a", "x", 0)],
    );
    let mut same_files = Fsm::new();
    apply(
        &mut same_files,
        1_000,
        &[write("z", "", 0), write("a", "x", 0), delete("z")],
    );
    assert_eq!(
        same_files.checksum(1_000),
        same_files_higher_counter.checksum(1_000)
    );
}

#[test]
fn the_checksum_ignores_files_expired_at_its_time() {
    let mut lagging = Fsm::new();
    apply(
        &mut lagging,
        1_000,
        &[write("a", "x", 0), write("b", "y", 1)],
    );
    let mut reaped = Fsm::new();
    apply(
        &mut reaped,
        1_000,
        &[write("a", "x", 0), write("b", "y", 1)],
    );
    apply(&mut reaped, 2_000, &[]);
    assert_eq!(lagging.len(), 2);
    assert_eq!(reaped.len(), 1);
    assert_eq!(lagging.checksum(2_000), reaped.checksum(2_000));
    assert_ne!(lagging.checksum(1_999), reaped.checksum(1_999));
}

#[test]
fn a_snapshot_restores_files_versions_and_cluster_time() {
    let mut fsm = Fsm::new();
    apply(
        &mut fsm,
        1_000,
        &[
            write("a", "1", 0),
            write("b", "2", 5),
            write("c", "3", 0),
            delete("c"),
        ],
    );
    let restored = Fsm::from_snapshot(&fsm.snapshot()).expect("own snapshot");
    restored.check_invariants();
    assert_eq!(restored.checksum(1_000), fsm.checksum(1_000));
    assert_eq!(restored.cluster_time_ms(), 1_000);
    assert_eq!(shown(restored.read(b"b", 1_000)), view(2, "2", 5));
    let mut restored = restored;
    // Versions go on from the counter, not from the highest live version.
    assert_eq!(
        apply_one(&mut restored, 1_000, write("c", "4", 0)),
        written(4)
    );
    apply(&mut restored, 6_000, &[]);
    assert_eq!(restored.read(b"b", 6_000), None);
}

#[test]
fn a_bad_snapshot_is_refused() {
    let mut fsm = Fsm::new();
    apply(&mut fsm, 1_000, &[write("a", "1", 0), write("b", "2", 0)]);
    let good = fsm.snapshot().to_vec();
    let mut duplicate = good.clone();
    // Rename the second file to the first one's name (both one-byte names).
    let second_name_at = duplicate
        .iter()
        .rposition(|&byte| byte == b'b')
        .expect("name b");
    duplicate[second_name_at] = b'a';
    assert_eq!(
        Fsm::from_snapshot(&Bytes::from(duplicate)).err(),
        Some(DecodeError::DuplicateName)
    );
    let mut low_counter = good.clone();
    low_counter[1..9].copy_from_slice(&1u64.to_le_bytes());
    assert!(matches!(
        Fsm::from_snapshot(&Bytes::from(low_counter)),
        Err(DecodeError::VersionAboveCounter {
            version: 2,
            version_counter: 1
        })
    ));
    for len in 0..good.len() {
        assert!(Fsm::from_snapshot(&Bytes::copy_from_slice(&good[..len])).is_err());
    }
}

#[test]
fn the_state_machine_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Fsm>();
    let mut fsm = Fsm::new();
    apply_one(&mut fsm, 0, write("a", "x", 0));
    let moved = std::thread::spawn(move || fsm.read(b"a", 0).map(|file| file.version))
        .join()
        .expect("thread");
    assert_eq!(moved, Some(1));
}
