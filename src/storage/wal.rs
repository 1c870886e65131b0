//! The write-ahead log: appends entries and hard states to the newest segment
//! file, and makes them durable with one write and one fdatasync per `sync`
//! (group commit: every record since the last sync shares that fsync).
//!
//! Invariants:
//! - Records reach the file only in the order they were appended, and nothing
//!   appended is durable before `sync` returns `Ok`.
//! - Every segment but the newest is complete and was fsynced before the next
//!   one was created, so after a crash only the newest can have a torn tail.
//! - Each new segment starts with the latest hard state, so the hard state
//!   never depends on an older segment (and old segments can one day be
//!   deleted by log compaction).
//! - After any failed write or fsync the Wal is poisoned: every later call
//!   returns an error, so the node can never acknowledge past an I/O error
//!   (after a failed fsync the kernel may have dropped the dirty pages, and a
//!   retry would "succeed" without them).
//! - Memory: the write buffer (bounded by `WAL_BUFFER_BYTES_MAX` between
//!   syncs), the latest hard state and a few numbers. The log itself lives in
//!   the Raft core, not here.
//!
//! Compaction: the Wal remembers, for every finished segment, the largest
//! entry index written in it. `take_obsolete_segments(index)` hands back
//! (oldest first) the segments holding only entries through `index` — or
//! only entries a later log start record voided — for the caller to delete
//! in that order, fsyncing the directory after each, so a crash never
//! leaves a gap in the sequence. `mark_log_start` records that the log now
//! starts after an installed snapshot.
//!
//! Background fsync: `begin_sync` writes the buffer and hands back a
//! `SyncRequest` for the `syncer` thread; `end_sync` takes its `SyncDone`.
//! `sync` does both at once, on the caller's thread. A segment is known
//! durable only when a sync that covered its whole length came back.
//!
//! Left out: reading the log back (that is `open`'s replay) and deleting
//! files itself (the caller does, off the reactor thread).

use super::lost_unsynced::SyncedMarker;
use super::segment::{self, HEADER_BYTES};
use super::syncer::{SyncDone, SyncRequest};
use crate::error::{Error, Result};
use crate::limits::{WAL_BUFFER_BYTES_MAX, WAL_SEGMENT_BYTES_MAX};
use crate::raft::message::{Entry, HardState, Index};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A finished segment and the largest entry index written in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedSegment {
    pub sequence: u64,
    pub path: PathBuf,
    pub last_index_max: Index,
}

/// How a Wal behaves; `Default` is what production uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// `false` skips every fdatasync of the log: fast, but a machine crash can
    /// lose acknowledged writes (SPEC `fsync = false`).
    pub fsync: bool,
    /// Size at which the log rolls over to a new segment file.
    pub segment_bytes_max: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            fsync: true,
            segment_bytes_max: WAL_SEGMENT_BYTES_MAX,
        }
    }
}

/// A failure the next write or fsync will report instead of doing the I/O,
/// so tests can see what a full or failing disk does to the Wal.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedFailure {
    Write,
    Sync,
}

/// The newest segment, the one being appended to.
pub(super) struct OpenSegment {
    pub sequence: u64,
    pub path: PathBuf,
    /// Shared with the sync thread while a background fsync runs.
    pub file: Arc<File>,
    /// Bytes in the file (header included), after any torn tail was cut off.
    pub file_bytes: u64,
}

pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    segment: OpenSegment,
    /// Records appended since they were last written to the file.
    buffer: Vec<u8>,
    /// Something was written to `segment.file` and is not known durable.
    unsynced: bool,
    /// (segment sequence, length) durable so far, as last recorded: a
    /// background fsync that comes back late never moves it backwards.
    synced_position: (u64, u64),
    last_index: Index,
    /// The latest hard state, written again at the head of every new segment.
    hard_state: Option<HardState>,
    /// Largest entry index written to the current segment.
    segment_last_index_max: Index,
    /// Finished segments not yet handed out for deletion, oldest first.
    finished: VecDeque<FinishedSegment>,
    /// Sequence of the segment with the latest log start record: every
    /// segment before it holds only voided entries.
    log_start_sequence: Option<u64>,
    /// Why the Wal refuses to go on, once something failed.
    poisoned: Option<String>,
    injected_failure: Option<InjectedFailure>,
    /// Lost-fsync test mode: where each successful fdatasync is recorded
    /// (see `lost_unsynced`).
    synced_marker: Option<SyncedMarker>,
    /// Holds the data dir's lock for as long as the Wal lives.
    _lock: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segment_sequence", &self.segment.sequence)
            .field("last_index", &self.last_index)
            .field("buffered_bytes", &self.buffer.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Wal {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn resume(
        dir: PathBuf,
        options: WalOptions,
        segment: OpenSegment,
        segment_last_index_max: Index,
        finished: VecDeque<FinishedSegment>,
        log_start_sequence: Option<u64>,
        last_index: Index,
        hard_state: Option<HardState>,
        lock: File,
    ) -> Wal {
        Wal {
            dir,
            options,
            synced_position: (segment.sequence, segment.file_bytes),
            segment,
            buffer: Vec::new(),
            // What replay found may sit only in the page cache (a process
            // killed before its fsync): the first sync covers it.
            unsynced: true,
            last_index,
            hard_state,
            segment_last_index_max,
            finished,
            log_start_sequence,
            poisoned: None,
            injected_failure: None,
            synced_marker: None,
            _lock: lock,
        }
    }

    /// Index of the last entry appended (durable or not); 0 for an empty log.
    pub fn last_index(&self) -> Index {
        self.last_index
    }

    /// Sequence number of the segment being appended to.
    pub fn segment_sequence(&self) -> u64 {
        self.segment.sequence
    }

    /// Whether an earlier failure has stopped this Wal.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Queues `entries` (contiguous, the first at most `last_index() + 1`) for
    /// the next `sync`. An entry at an index the log already holds replaces
    /// the stored suffix from there, as `Action::PersistEntries` requires.
    /// Usually only buffers; writes when the buffer or the segment is full.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.check_usable()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index == 0 || first.index > self.last_index + 1 {
            return Err(Error::Refused(format!(
                "WAL append at index {} would leave a gap after last index {}",
                first.index, self.last_index
            )));
        }
        for (previous, next) in entries.iter().zip(entries.iter().skip(1)) {
            if next.index != previous.index + 1 {
                return Err(Error::Refused(format!(
                    "WAL append of non-contiguous entries: {} then {}",
                    previous.index, next.index
                )));
            }
        }
        if let Some(entry) = entries
            .iter()
            .find(|e| e.data.len() > segment::ENTRY_DATA_BYTES_MAX)
        {
            return Err(Error::Refused(format!(
                "entry {} of {} bytes is larger than a WAL record may be",
                entry.index,
                entry.data.len()
            )));
        }
        for entry in entries {
            self.make_room(segment::entry_record_bytes(entry))?;
            segment::encode_entry(&mut self.buffer, entry);
            self.segment_last_index_max = self.segment_last_index_max.max(entry.index);
        }
        self.last_index = entries[entries.len() - 1].index;
        Ok(())
    }

    /// Queues `hard_state` for the next `sync`; after a restart the last hard
    /// state saved wins.
    pub fn save_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        self.check_usable()?;
        let payload = segment::hard_state_payload(hard_state);
        self.make_room(segment::FRAME_BYTES + payload.len())?;
        segment::encode_hard_state(&mut self.buffer, &payload);
        self.hard_state = Some(hard_state.clone());
        Ok(())
    }

    /// Queues a record saying the log now starts after `index` (a snapshot
    /// through `index`, of `term`, was installed and the old log discarded):
    /// on replay every entry before it is void. The next append must be at
    /// `index + 1`. Durable at the next `sync`.
    pub fn mark_log_start(&mut self, index: Index, term: u64) -> Result<()> {
        self.check_usable()?;
        self.make_room(segment::LOG_START_RECORD_BYTES)?;
        segment::encode_log_start(&mut self.buffer, index, term);
        self.last_index = index;
        self.log_start_sequence = Some(self.segment.sequence);
        Ok(())
    }

    /// Hands out, oldest first, the finished segments that hold nothing
    /// needed once a snapshot through `index` is durable: every entry in
    /// them is at most `index`, or voided by a later log start record. The
    /// caller deletes them in this order (fsyncing the directory after
    /// each). The segment being appended to is never handed out.
    pub fn take_obsolete_segments(&mut self, index: Index) -> Vec<FinishedSegment> {
        let mut obsolete = Vec::new();
        while let Some(oldest) = self.finished.front() {
            let voided = self
                .log_start_sequence
                .is_some_and(|sequence| oldest.sequence < sequence);
            if oldest.last_index_max > index && !voided {
                break;
            }
            if let Some(oldest) = self.finished.pop_front() {
                obsolete.push(oldest);
            }
        }
        obsolete
    }

    /// Finished segments still on disk (not handed out), oldest first.
    pub fn finished_segments(&self) -> impl Iterator<Item = &FinishedSegment> {
        self.finished.iter()
    }

    /// Makes everything appended so far durable: one write of the buffer and
    /// one fdatasync (none when `fsync` is off). On `Ok`, every entry up to
    /// `last_index()` and the latest hard state survive a crash.
    pub fn sync(&mut self) -> Result<()> {
        self.check_usable()?;
        self.write_buffer()?;
        self.sync_file()
    }

    /// The first half of `sync` for the `syncer` thread: writes the buffer
    /// and returns the fsync that would make everything appended so far
    /// durable, or `None` when it already is (or `fsync` is off). The
    /// caller tags it (`id`) and finishes each with `end_sync`.
    pub fn begin_sync(&mut self) -> Result<Option<SyncRequest>> {
        self.check_usable()?;
        self.write_buffer()?;
        self.fsync_request()
    }

    /// The second half: on `Ok`, everything appended before the matching
    /// `begin_sync` survives a crash (whatever order requests finish in).
    /// A failed fsync poisons the Wal.
    pub fn end_sync(&mut self, done: SyncDone) -> Result<()> {
        if let Err(source) = done.result {
            return Err(self.fsync_failed(&done.path, source));
        }
        if (done.sequence, done.file_bytes) == (self.segment.sequence, self.segment.file_bytes) {
            self.unsynced = false;
        }
        self.record_synced_position(done.sequence, done.file_bytes)
    }

    /// Turns on the lost-fsync test mode (`storage::lost_unsynced`): from now
    /// on every successful fdatasync records how far the log is durable, so
    /// a simulated power failure can throw away the rest. Call before the
    /// first append; the segment is fsynced first so the marker starts true.
    pub fn track_synced_position(&mut self) -> Result<()> {
        self.check_usable()?;
        let marker = SyncedMarker::open(&self.dir)?;
        self.write_buffer()?;
        if self.options.fsync {
            self.segment.file.sync_data().map_err(|e| {
                Error::io(
                    format!("fsyncing WAL segment {}", self.segment.path.display()),
                    e,
                )
            })?;
            self.unsynced = false;
        }
        marker
            .record(self.segment.sequence, self.segment.file_bytes)
            .map_err(|e| Error::io("recording the synced WAL position", e))?;
        self.synced_position = (self.segment.sequence, self.segment.file_bytes);
        self.synced_marker = Some(marker);
        Ok(())
    }

    /// Makes the next write or fsync fail with an I/O error, as a full or
    /// broken disk would. For tests only.
    #[doc(hidden)]
    pub fn inject_failure(&mut self, failure: InjectedFailure) {
        self.injected_failure = Some(failure);
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(reason) => Err(Error::io(
                format!(
                    "WAL in {} refuses: an earlier failure stopped it",
                    self.dir.display()
                ),
                io::Error::other(reason.clone()),
            )),
        }
    }

    /// Records the error so that every later call refuses, and returns it.
    fn poison(&mut self, error: Error) -> Error {
        log::error!("WAL in {} stopped: {error}", self.dir.display());
        self.poisoned = Some(error.to_string());
        error
    }

    /// Called before `record_bytes` more bytes go into the buffer: rolls over
    /// to a new segment if they would overfill this one, and writes the
    /// buffer out if it is full.
    fn make_room(&mut self, record_bytes: usize) -> Result<()> {
        let segment_bytes = self.segment.file_bytes + self.buffer.len() as u64;
        let segment_has_records = segment_bytes > HEADER_BYTES as u64;
        if segment_has_records
            && segment_bytes + record_bytes as u64 > self.options.segment_bytes_max
        {
            self.roll_over()?;
        } else if self.buffer.len() + record_bytes > WAL_BUFFER_BYTES_MAX && !self.buffer.is_empty()
        {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// Finishes the current segment (written and fsynced, so that only the
    /// newest segment can ever have a torn tail) and starts the next one.
    fn roll_over(&mut self) -> Result<()> {
        self.write_buffer()?;
        self.sync_file()?;
        let sequence = self.segment.sequence + 1;
        let segment = match create_segment(&self.dir, sequence, self.options.fsync) {
            Ok(segment) => segment,
            Err(error) => return Err(self.poison(error)),
        };
        log::debug!("WAL rolled over to {}", segment.path.display());
        let finished = std::mem::replace(&mut self.segment, segment);
        self.finished.push_back(FinishedSegment {
            sequence: finished.sequence,
            path: finished.path,
            last_index_max: std::mem::take(&mut self.segment_last_index_max),
        });
        if self.options.fsync {
            // create_segment fsynced the header and the directory.
            self.record_synced_position(self.segment.sequence, self.segment.file_bytes)?;
        }
        if let Some(hard_state) = &self.hard_state {
            let payload = segment::hard_state_payload(hard_state);
            segment::encode_hard_state(&mut self.buffer, &payload);
        }
        Ok(())
    }

    /// Writes the buffer to the current segment in one write call.
    fn write_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = if self.injected_failure == Some(InjectedFailure::Write) {
            self.injected_failure = None;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            (&*self.segment.file).write_all(&self.buffer)
        };
        if let Err(source) = result {
            let context = format!("writing WAL segment {}", self.segment.path.display());
            return Err(self.poison(Error::io(context, source)));
        }
        self.segment.file_bytes += self.buffer.len() as u64;
        self.unsynced = true;
        self.buffer.clear();
        if self.buffer.capacity() > WAL_BUFFER_BYTES_MAX {
            self.buffer.shrink_to(WAL_BUFFER_BYTES_MAX);
        }
        Ok(())
    }

    /// fsyncs the segment in place (as the sync thread would).
    fn sync_file(&mut self) -> Result<()> {
        match self.fsync_request()? {
            Some(request) => self.end_sync(request.run()),
            None => Ok(()),
        }
    }

    /// The fsync that would make the segment durable as written so far, or
    /// `None` when it already is (or `fsync` is off: then it counts as
    /// durable). An injected sync failure fails here, as the disk would.
    fn fsync_request(&mut self) -> Result<Option<SyncRequest>> {
        if !self.unsynced || !self.options.fsync {
            self.unsynced = false;
            return Ok(None);
        }
        if self.injected_failure == Some(InjectedFailure::Sync) {
            self.injected_failure = None;
            let path = self.segment.path.clone();
            return Err(self.fsync_failed(&path, io::Error::from_raw_os_error(libc::EIO)));
        }
        Ok(Some(SyncRequest {
            id: 0,
            file: Arc::clone(&self.segment.file),
            path: self.segment.path.clone(),
            sequence: self.segment.sequence,
            file_bytes: self.segment.file_bytes,
        }))
    }

    fn fsync_failed(&mut self, path: &Path, source: io::Error) -> Error {
        self.poison(Error::io(
            format!("fsyncing WAL segment {}", path.display()),
            source,
        ))
    }

    /// Segment `sequence` is durable up to `file_bytes` (lost-fsync mode
    /// records it; an older position than the last recorded is ignored).
    fn record_synced_position(&mut self, sequence: u64, file_bytes: u64) -> Result<()> {
        if (sequence, file_bytes) <= self.synced_position {
            return Ok(());
        }
        self.synced_position = (sequence, file_bytes);
        let Some(marker) = &self.synced_marker else {
            return Ok(());
        };
        if let Err(source) = marker.record(sequence, file_bytes) {
            return Err(self.poison(Error::io("recording the synced WAL position", source)));
        }
        Ok(())
    }
}

/// The file name of the segment with this sequence number: zero-padded so
/// that name order is sequence order.
pub(super) fn segment_file_name(sequence: u64) -> String {
    format!("{sequence:020}.wal")
}

/// The sequence number a segment file name stands for, if it is one.
pub(super) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates segment `sequence` holding just its header. The header is written
/// to a temporary file, fsynced and renamed into place, and the directory is
/// fsynced, so a segment file never exists without a whole header.
pub(super) fn create_segment(dir: &Path, sequence: u64, fsync: bool) -> Result<OpenSegment> {
    let path = dir.join(segment_file_name(sequence));
    let temporary = dir.join(format!("{}.tmp", segment_file_name(sequence)));
    let created = (|| -> io::Result<File> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all(&segment::encode_header(sequence))?;
        if fsync {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &path)?;
        if fsync {
            super::sync_dir(dir)?;
        }
        // Reopen in append mode so every write lands at the end.
        OpenOptions::new().append(true).open(&path)
    })();
    match created {
        Ok(file) => Ok(OpenSegment {
            sequence,
            path,
            file: Arc::new(file),
            file_bytes: HEADER_BYTES as u64,
        }),
        Err(source) => Err(Error::io(
            format!("creating WAL segment {}", path.display()),
            source,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_sequence_and_parse_back() {
        assert_eq!(segment_file_name(7), "00000000000000000007.wal");
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("7.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000a.wal"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000007.wal.tmp"),
            None
        );
    }
}
