//! Reading the WAL back at start: segments in sequence order, records in file
//! order, the last hard state winning and a later entry at an index the log
//! already holds replacing the suffix from there.
//!
//! With compaction the log need not start at index 1: segments wholly
//! covered by a snapshot are deleted (oldest first), so the first entry
//! replayed may be anywhere; a log start record (written when a snapshot
//! from the leader replaced a non-matching log) voids every entry before it.
//! Which snapshot the entries follow is the caller's business.
//!
//! Invariants: the result is exactly what the records say, or an error; a
//! torn or damaged tail is cut off only in the newest segment (older segments
//! were complete and fsynced before their successor was created, so damage
//! there is corruption, and the node refuses to start rather than lose
//! acknowledged entries); entries come back contiguous (from index 1 unless
//! compacted).
//!
//! Left out: damage in the middle of the newest segment cannot be told apart
//! from a torn write (the page cache may persist a later page before an
//! earlier one), so it is treated as a torn tail and cut off there, like etcd
//! and others do. Bit rot in the newest segment can thus shorten the log;
//! Raft repairs that from the other members.

use super::segment::{self, Damage, Record, HEADER_BYTES};
use super::wal::{self, OpenSegment};
use crate::error::{Error, Result};
use crate::raft::message::{Entry, HardState};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// What the segments held.
pub(super) struct Replayed {
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    /// The index just before `entries[0]` (0 for a log from the start); set
    /// by the first entry or by a log start record.
    pub base_index: Option<u64>,
    /// Every segment replayed, with the largest entry index written in it.
    pub segments: Vec<SegmentSummary>,
    /// Sequence of the segment holding the last log start record.
    pub log_start_sequence: Option<u64>,
    /// The newest segment, opened for appending; `None` when there were none.
    pub newest: Option<OpenSegment>,
}

/// One segment as replay saw it.
#[derive(Clone, Debug)]
pub(super) struct SegmentSummary {
    pub sequence: u64,
    pub path: PathBuf,
    /// Largest entry index in the segment (0 if it holds no entry).
    pub last_index_max: u64,
}

impl Replayed {
    /// Index of the last entry (or the log start when there is none).
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.base_index.unwrap_or(0), |entry| entry.index)
    }
}

/// The WAL segment files in `dir`, sorted by sequence, checked to be
/// consecutive (a missing segment is corruption, not an empty log).
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let listing =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut segments = Vec::new();
    for item in listing {
        let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = item.file_name();
        if let Some(sequence) = name.to_str().and_then(wal::parse_segment_file_name) {
            segments.push((sequence, item.path()));
        }
    }
    segments.sort();
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(Error::Corrupt(format!(
                "WAL segment(s) missing between {} and {}",
                pair[0].1.display(),
                pair[1].1.display()
            )));
        }
    }
    Ok(segments)
}

/// Replays every segment; cuts a torn tail off the newest one (and fsyncs
/// that) and opens it for appending.
pub(super) fn replay(dir: &Path, segments: &[(u64, PathBuf)], fsync: bool) -> Result<Replayed> {
    let mut replayed = Replayed {
        hard_state: None,
        entries: Vec::new(),
        base_index: None,
        segments: Vec::new(),
        log_start_sequence: None,
        newest: None,
    };
    for (position, (sequence, path)) in segments.iter().enumerate() {
        let is_newest = position + 1 == segments.len();
        if is_newest && has_unfinished_header(path)? {
            // Only possible with fsync off (the header is fsynced before the
            // segment gets its name otherwise), and it holds no record.
            log::warn!(
                "{}: recreating a segment whose header never reached the disk",
                path.display()
            );
            replayed.newest = Some(wal::create_segment(dir, *sequence, fsync)?);
            replayed.segments.push(SegmentSummary {
                sequence: *sequence,
                path: path.clone(),
                last_index_max: 0,
            });
            break;
        }
        replayed.segments.push(SegmentSummary {
            sequence: *sequence,
            path: path.clone(),
            last_index_max: 0,
        });
        let good_bytes = replay_segment(*sequence, path, is_newest, &mut replayed)?;
        if is_newest {
            replayed.newest = Some(open_newest(*sequence, path, good_bytes)?);
        }
    }
    Ok(replayed)
}

/// Whether the segment is no longer than a header and has no valid one.
fn has_unfinished_header(path: &Path) -> Result<bool> {
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
        .len();
    if file_bytes > HEADER_BYTES as u64 {
        return Ok(false);
    }
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(segment::decode_header(&bytes).is_err())
}

/// Applies one segment's records to `replayed`; returns how many bytes of the
/// file are good (all of them, unless this is the newest segment and its
/// tail is torn).
fn replay_segment(
    sequence: u64,
    path: &Path,
    is_newest: bool,
    replayed: &mut Replayed,
) -> Result<u64> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    match segment::decode_header(&bytes) {
        Ok(found) if found == sequence => {}
        Ok(found) => {
            return Err(Error::Corrupt(format!(
                "{}: header names segment {found}, file name says {sequence}",
                path.display()
            )));
        }
        Err(reason) => return Err(Error::Corrupt(format!("{}: {reason}", path.display()))),
    }
    let mut offset = HEADER_BYTES;
    loop {
        match segment::decode_record(&bytes, offset) {
            Ok(None) => return Ok(bytes.len() as u64),
            Ok(Some((record, next_offset))) => {
                match &record {
                    Record::Entry(entry) => {
                        if let Some(summary) = replayed.segments.last_mut() {
                            summary.last_index_max = summary.last_index_max.max(entry.index);
                        }
                    }
                    Record::LogStart { .. } => replayed.log_start_sequence = Some(sequence),
                    Record::HardState(_) => {}
                }
                apply(record, replayed).map_err(|reason| {
                    Error::Corrupt(format!("{} at offset {offset}: {reason}", path.display()))
                })?;
                offset = next_offset;
            }
            Err(Damage::Torn(reason)) if is_newest => {
                log::warn!(
                    "{}: cutting off a torn tail of {} bytes at offset {offset} ({reason})",
                    path.display(),
                    bytes.len() - offset
                );
                return Ok(offset as u64);
            }
            Err(Damage::Torn(reason) | Damage::Undecodable(reason)) => {
                return Err(Error::Corrupt(format!(
                    "{} at offset {offset}: {reason}{}",
                    path.display(),
                    if is_newest {
                        ""
                    } else {
                        " (not the newest segment: refusing to start)"
                    }
                )));
            }
        }
    }
}

/// The log that `records`, in write order, stand for: the last hard
/// state, the entries, and the index before the first entry. The rules are
/// those replay applies to segment files (one place for both); storage
/// models that keep records rather than files (the simulator's disk) use it.
pub fn replay_records(
    records: impl IntoIterator<Item = Record>,
) -> std::result::Result<(Option<HardState>, Vec<Entry>, u64), String> {
    let mut replayed = Replayed {
        hard_state: None,
        entries: Vec::new(),
        base_index: None,
        segments: Vec::new(),
        log_start_sequence: None,
        newest: None,
    };
    for record in records {
        apply(record, &mut replayed)?;
    }
    Ok((
        replayed.hard_state,
        replayed.entries,
        replayed.base_index.unwrap_or(0),
    ))
}

fn apply(record: Record, replayed: &mut Replayed) -> std::result::Result<(), String> {
    match record {
        Record::HardState(hard_state) => replayed.hard_state = Some(hard_state),
        Record::LogStart { index, .. } => {
            replayed.entries.clear();
            replayed.base_index = Some(index);
        }
        Record::Entry(entry) => {
            if entry.index == 0 {
                return Err("entry index 0".to_string());
            }
            let base_index = *replayed.base_index.get_or_insert(entry.index - 1);
            let last_index = base_index + replayed.entries.len() as u64;
            if entry.index > last_index + 1 {
                return Err(format!(
                    "entry index {} does not follow last index {last_index}",
                    entry.index
                ));
            }
            if entry.index <= base_index {
                // A replacement below the first entry kept (only possible if
                // older segments were compacted away): start over from it.
                replayed.entries.clear();
                replayed.base_index = Some(entry.index - 1);
            } else {
                // A replacement at an index already held drops the suffix
                // from there, as the append that wrote it did.
                replayed
                    .entries
                    .truncate((entry.index - 1 - base_index) as usize);
            }
            replayed.entries.push(entry);
        }
    }
    Ok(())
}

/// Opens the newest segment for appending, first cutting it to `good_bytes`
/// (and fsyncing the cut, so a torn tail can never resurface after later
/// appends land on top of it).
fn open_newest(sequence: u64, path: &Path, good_bytes: u64) -> Result<OpenSegment> {
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {} for appending", path.display()), e))?;
    let current_bytes = file
        .metadata()
        .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
        .len();
    if current_bytes != good_bytes {
        file.set_len(good_bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(format!("cutting the torn tail off {}", path.display()), e))?;
    }
    Ok(OpenSegment {
        sequence,
        path: path.to_path_buf(),
        file: std::sync::Arc::new(file),
        file_bytes: good_bytes,
    })
}
