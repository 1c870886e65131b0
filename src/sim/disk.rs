//! One node's simulated storage: hard state and log, synced vs not yet synced.
//!
//! Writes land in the `current` view at once (what the node would read back)
//! and are queued as unsynced; `sync` makes them durable. A crash keeps the
//! synced state, plus — when the schedule allows it — a prefix of the unsynced
//! writes in order (a write-ahead log's pages may reach the platter before the
//! fsync, but never out of order). `restored` is what a restart reads.
//! Snapshots (`store_snapshot`) are durable at once in both views: the
//! executor syncs every earlier write first, then writes and fsyncs the
//! snapshot and drops the log through its index, as the replica does.
//! Invariant: log entries are contiguous from the snapshot's index + 1 (from
//! index 1 without one) in both views.
//! Left out: torn records and bit rot (the WAL's CRC tests own those).

use crate::raft::{Entry, HardState, Index, Restored, SnapshotMeta, Term};
use bytes::Bytes;
use std::sync::Arc;

/// A snapshot of the simulated state machine: the applied sequence of entry
/// data through `meta.index`, and its serialised form, which is what travels
/// in InstallSnapshot chunks: `padding_bytes` bytes of `PADDING_BYTE` (bulk
/// that makes a transfer span several chunks) then `body`, the encoded
/// entries; `meta.size_bytes` is the sum. With the padding fixed per
/// schedule, an older snapshot's form is a prefix of a newer one's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimSnapshot {
    pub meta: SnapshotMeta,
    /// Shared: both disk views and restarts hold the same sequence.
    pub applied: Arc<Vec<Bytes>>,
    pub padding_bytes: u64,
    pub body: Bytes,
}

/// The value of every padding byte of a serialised snapshot.
pub const PADDING_BYTE: u8 = 0x5a;

impl SimSnapshot {
    /// The snapshot of `applied` (the whole sequence) taken at term `term`
    /// of its last entry.
    pub fn of(applied: &[Bytes], term: Term, padding_bytes: u64) -> SimSnapshot {
        let body = encode(applied);
        SimSnapshot {
            meta: SnapshotMeta {
                index: applied.len() as Index,
                term,
                size_bytes: padding_bytes + body.len() as u64,
            },
            applied: Arc::new(applied.to_vec()),
            padding_bytes,
            body,
        }
    }

    /// Rebuild a snapshot from its received entry bytes (the padding was
    /// checked as it arrived); `Err` if they do not decode to exactly
    /// `meta.index` entries in `meta.size_bytes` bytes.
    pub fn decode(
        meta: SnapshotMeta,
        padding_bytes: u64,
        body: Bytes,
    ) -> Result<SimSnapshot, String> {
        let mut applied = Vec::new();
        let mut position = 0usize;
        while position < body.len() {
            let Some(header) = body.get(position..position + 4) else {
                return Err(format!("snapshot body truncated at byte {position}"));
            };
            let mut length = [0u8; 4];
            length.copy_from_slice(header);
            let length = u32::from_le_bytes(length) as usize;
            let start = position + 4;
            let Some(end) = start.checked_add(length).filter(|&end| end <= body.len()) else {
                return Err(format!(
                    "snapshot entry at byte {position} overruns the body"
                ));
            };
            applied.push(body.slice(start..end));
            position = end;
        }
        let size_bytes = padding_bytes + body.len() as u64;
        if applied.len() as Index != meta.index || size_bytes != meta.size_bytes {
            return Err(format!(
                "snapshot {meta:?} decodes to {} entries in {size_bytes} bytes",
                applied.len(),
            ));
        }
        Ok(SimSnapshot {
            meta,
            applied: Arc::new(applied),
            padding_bytes,
            body,
        })
    }
}

/// Entry data in order, each behind its length (u32, little-endian).
fn encode(applied: &[Bytes]) -> Bytes {
    let mut body = Vec::with_capacity(applied.iter().map(|data| data.len() + 4).sum());
    for data in applied {
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
    }
    Bytes::from(body)
}

#[derive(Clone, Debug)]
enum Write {
    HardState(HardState),
    Entries(Vec<Entry>),
}

#[derive(Clone, Debug, Default)]
struct Stored {
    hard_state: HardState,
    snapshot: Option<SimSnapshot>,
    /// Entries after the snapshot's index.
    entries: Vec<Entry>,
}

impl Stored {
    fn apply(&mut self, write: &Write) {
        match write {
            Write::HardState(hard_state) => self.hard_state = hard_state.clone(),
            Write::Entries(entries) => {
                if let Some(first) = entries.first() {
                    let keep = (first.index.saturating_sub(1 + self.snapshot_index()) as usize)
                        .min(self.entries.len());
                    self.entries.truncate(keep);
                    self.entries.extend(entries.iter().cloned());
                }
            }
        }
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.meta.index)
    }

    fn snapshot_term(&self) -> Term {
        self.snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.meta.term)
    }

    fn last(&self) -> (Index, Term) {
        self.entries.last().map_or_else(
            || (self.snapshot_index(), self.snapshot_term()),
            |entry| (entry.index, entry.term),
        )
    }

    fn store_snapshot(&mut self, snapshot: SimSnapshot, log_kept: bool) {
        let index = snapshot.meta.index;
        if log_kept {
            self.entries.retain(|entry| entry.index > index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot);
    }
}

#[derive(Clone, Debug, Default)]
pub struct Disk {
    synced: Stored,
    current: Stored,
    unsynced: Vec<Write>,
    /// Entries were written since the last `take_entries_synced`.
    entries_unsynced: bool,
}

impl Disk {
    pub fn new() -> Disk {
        Disk::default()
    }

    pub fn write_hard_state(&mut self, hard_state: HardState) {
        let write = Write::HardState(hard_state);
        self.current.apply(&write);
        self.unsynced.push(write);
    }

    /// Write entries, replacing the stored suffix from `entries[0].index`.
    /// Refuses (with the reason) a batch that would leave a gap or is not
    /// contiguous: that is a bug in whoever asked for it.
    pub fn write_entries(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let last_index = self.last_index();
        if first.index <= self.current.snapshot_index() || first.index > last_index + 1 {
            return Err(format!(
                "PersistEntries starting at index {} would leave a gap after the stored last index \
                 {last_index} or overwrite the snapshot through {}",
                first.index,
                self.current.snapshot_index()
            ));
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(format!(
                    "PersistEntries is not contiguous: {} then {}",
                    pair[0].index, pair[1].index
                ));
            }
        }
        let write = Write::Entries(entries);
        self.current.apply(&write);
        self.unsynced.push(write);
        self.entries_unsynced = true;
        Ok(())
    }

    pub fn is_dirty(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Make every write so far durable. Returns the durable log's last
    /// `(index, term)` when entries were among the writes (what the executor
    /// reports to `Node::persisted`).
    pub fn sync(&mut self) -> Option<(Index, Term)> {
        for write in self.unsynced.drain(..) {
            self.synced.apply(&write);
        }
        if !std::mem::take(&mut self.entries_unsynced) {
            return None;
        }
        Some(self.synced.last())
    }

    /// Make `snapshot` durable and drop the log through its index (all of
    /// the log unless `log_kept`). Refused while writes are unsynced: the
    /// caller syncs first, so the snapshot never overtakes an earlier write.
    pub fn store_snapshot(&mut self, snapshot: SimSnapshot, log_kept: bool) -> Result<(), String> {
        if self.is_dirty() {
            return Err("snapshot stored before the earlier writes were synced".to_string());
        }
        if snapshot.meta.index <= self.current.snapshot_index() {
            return Err(format!(
                "snapshot {} stored over the newer or equal snapshot {}",
                snapshot.meta.index,
                self.current.snapshot_index()
            ));
        }
        self.synced.store_snapshot(snapshot.clone(), log_kept);
        self.current.store_snapshot(snapshot, log_kept);
        Ok(())
    }

    /// The durable snapshot, if any.
    pub fn snapshot(&self) -> Option<&SimSnapshot> {
        self.current.snapshot.as_ref()
    }

    pub fn snapshot_index(&self) -> Index {
        self.current.snapshot_index()
    }

    pub fn snapshot_term(&self) -> Term {
        self.current.snapshot_term()
    }

    /// The last log index as the node sees it (the snapshot's without entries).
    pub fn last_index(&self) -> Index {
        self.current.last().0
    }

    /// Lose power: keep the synced state plus the first `unsynced_kept`
    /// unsynced writes.
    pub fn crash(&mut self, unsynced_kept: usize) {
        for write in self.unsynced.iter().take(unsynced_kept) {
            self.synced.apply(write);
        }
        self.unsynced.clear();
        self.entries_unsynced = false;
        self.current = self.synced.clone();
    }

    /// The term in the durable hard state.
    pub fn synced_term(&self) -> Term {
        self.synced.hard_state.term
    }

    pub fn unsynced_write_count(&self) -> usize {
        self.unsynced.len()
    }

    /// What a restarting node reads back.
    pub fn restored(&self) -> Restored {
        Restored {
            hard_state: self.current.hard_state.clone(),
            entries: self.current.entries.clone(),
            snapshot: self.current.snapshot.as_ref().map(|snapshot| snapshot.meta),
        }
    }

    /// The state machine a restart loads: the snapshot's applied sequence.
    pub fn restored_applied(&self) -> Vec<Bytes> {
        self.current
            .snapshot
            .as_ref()
            .map_or_else(Vec::new, |snapshot| snapshot.applied.to_vec())
    }

    /// The log entries after the snapshot as the node sees them (synced and
    /// unsynced writes).
    pub fn log(&self) -> &[Entry] {
        &self.current.entries
    }

    pub fn hard_state(&self) -> &HardState {
        &self.current.hard_state
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        index
            .checked_sub(1 + self.current.snapshot_index())
            .and_then(|position| self.current.entries.get(position as usize))
    }

    /// The log as the invariants see it: snapshot prefix, then entries.
    pub fn view(&self) -> crate::sim::invariants::LogView<'_> {
        crate::sim::invariants::LogView {
            snapshot_index: self.current.snapshot_index(),
            snapshot_term: self.current.snapshot_term(),
            snapshot_applied: self
                .current
                .snapshot
                .as_ref()
                .map_or(&[], |snapshot| snapshot.applied.as_slice()),
            entries: &self.current.entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            data: Bytes::from(format!("{index}/{term}")),
        }
    }

    #[test]
    fn crash_keeps_only_synced_writes_and_prefixes_in_order() {
        let mut disk = Disk::new();
        disk.write_entries(vec![entry(1, 1), entry(2, 1)])
            .expect("contiguous");
        assert_eq!(disk.sync(), Some((2, 1)));
        disk.write_hard_state(HardState {
            term: 2,
            vote: Some(3),
            ..HardState::default()
        });
        disk.write_entries(vec![entry(2, 2), entry(3, 2)])
            .expect("replaces suffix");
        assert_eq!(disk.log().len(), 3);
        assert_eq!(disk.entry(2), Some(&entry(2, 2)));
        let mut kept_one = disk.clone();
        kept_one.crash(1);
        assert_eq!(kept_one.hard_state().term, 2);
        assert_eq!(kept_one.log(), &[entry(1, 1), entry(2, 1)]);
        disk.crash(0);
        assert_eq!(disk.hard_state().term, 0);
        assert_eq!(disk.restored().entries, vec![entry(1, 1), entry(2, 1)]);
        assert_eq!(disk.sync(), None);
    }

    #[test]
    fn gaps_and_holes_are_refused() {
        let mut disk = Disk::new();
        assert!(disk.write_entries(vec![entry(2, 1)]).is_err());
        assert!(disk.write_entries(vec![entry(1, 1), entry(3, 1)]).is_err());
        assert!(disk.write_entries(Vec::new()).is_ok());
        assert!(!disk.is_dirty());
    }

    #[test]
    fn snapshots_are_durable_and_the_log_follows_them() {
        let mut disk = Disk::new();
        disk.write_entries(vec![entry(1, 1), entry(2, 1), entry(3, 2)])
            .expect("contiguous");
        let applied: Vec<Bytes> = disk.log()[..2].iter().map(|e| e.data.clone()).collect();
        let snapshot = SimSnapshot::of(&applied, 1, 10);
        assert_eq!(snapshot.meta.size_bytes, 10 + snapshot.body.len() as u64);
        assert!(disk.store_snapshot(snapshot.clone(), true).is_err());
        disk.sync();
        disk.store_snapshot(snapshot.clone(), true).expect("synced");
        assert_eq!(disk.log(), &[entry(3, 2)]);
        assert_eq!(disk.entry(3), Some(&entry(3, 2)));
        assert_eq!(disk.entry(2), None);
        assert_eq!(disk.last_index(), 3);
        assert!(disk.write_entries(vec![entry(2, 3)]).is_err());
        disk.write_entries(vec![entry(4, 2)])
            .expect("after the snapshot");
        disk.crash(0);
        let restored = disk.restored();
        assert_eq!(restored.snapshot, Some(snapshot.meta));
        assert_eq!(restored.entries, vec![entry(3, 2)]);
        assert_eq!(disk.restored_applied(), applied);
        assert!(disk.store_snapshot(snapshot.clone(), false).is_err());
        let decoded =
            SimSnapshot::decode(snapshot.meta, 10, snapshot.body.clone()).expect("decodes");
        assert_eq!(decoded, snapshot);
        assert!(SimSnapshot::decode(snapshot.meta, 10, snapshot.body.slice(1..)).is_err());
        assert!(SimSnapshot::decode(snapshot.meta, 9, snapshot.body.clone()).is_err());
        let mut later = applied.clone();
        later.push(Bytes::from_static(b"3/2"));
        disk.store_snapshot(SimSnapshot::of(&later, 2, 0), false)
            .expect("newer");
        assert!(disk.log().is_empty());
        assert_eq!(disk.sync(), None);
        assert_eq!(disk.last_index(), 3);
    }
}
