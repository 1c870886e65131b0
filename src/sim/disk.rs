//! One simulated node's disk, behind the same `Storage` port as the real
//! one: WAL records that are durable only once a sync covers them, snapshot
//! files in the real file format, and the snapshot being received.
//!
//! The WAL is kept as its records (`storage::segment::Record`), in write
//! order; `records[..synced]` are durable. What a restart reads back is
//! `storage::replay_records` over them, then `snapshot::restore_from` over
//! the snapshot files: the production code, not a model of it.
//!
//! Crashes (`crash`): a process kill keeps every write (the page cache
//! survives; what was not synced stays unsynced, so a later power loss can
//! still drop it); a power loss keeps the synced records plus, if the
//! schedule allows, a prefix of the others (a WAL's pages may reach the
//! platter before its fsync, never out of order; a torn last record is cut
//! off at replay, which is a shorter prefix). Both drop the snapshot being
//! received and the snapshots being taken (their temporary files are
//! removed at start), and every sync in flight.
//!
//! Snapshot files are durable once complete: one the helper takes appears
//! when the simulator completes its job (`complete_snapshot`), one received
//! when `commit_received_snapshot` returns. Compaction
//! (`discard_obsolete`) deletes files and drops durable WAL records covered
//! by the older kept snapshot, keeping the latest hard state (a real WAL
//! repeats it at the start of each segment).
//!
//! Left out: bit rot (the WAL's and snapshot files' CRC tests own it).

use crate::error::{Error, Result};
use crate::fsm::Fsm;
use crate::raft::{Entry, HardState, Index, NodeId, SnapshotMeta, Term};
use crate::replica::{Boot, Storage};
use crate::sim::invariants::Durable;
use crate::snapshot::transfer::{Assembler, ReceivedFile, Stored};
use crate::snapshot::worker::Job;
use crate::snapshot::{self, SnapshotSource};
use crate::storage::replay_records;
use crate::storage::segment::Record;
use bytes::Bytes;
use std::collections::BTreeMap;

/// Work the simulator schedules the end of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskRequest {
    /// An fsync with this id was asked for.
    Sync(u64),
    /// A snapshot job with this id was started.
    Snapshot(u64),
}

#[derive(Default)]
pub struct SimDisk {
    records: Vec<Record>,
    /// `records[..synced]` are durable.
    synced: usize,
    /// Per fsync in flight: how many records it covers.
    sync_points: BTreeMap<u64, usize>,
    /// The hard state and last index the node asked to persist.
    hard_state: HardState,
    last_index: Index,
    /// The same, as far as it is durable.
    synced_hard_state: HardState,
    synced_last_index: Index,
    snapshots: BTreeMap<(Index, Term), Bytes>,
    /// Snapshot jobs in flight. A job is encoded when it completes, as the
    /// helper thread does while the replica goes on applying: the frozen
    /// view must not see those later changes.
    jobs: BTreeMap<u64, Job>,
    next_job_id: u64,
    receiving: Assembler<MemoryFile>,
    /// Files open for sending, per follower: an open file stays readable
    /// after it is deleted, as on a real file system.
    sending: BTreeMap<NodeId, (SnapshotMeta, Bytes)>,
    /// Started since the simulator last looked.
    pub requests: Vec<DiskRequest>,
    /// The lowest log index written since the simulator last looked (its
    /// Log Matching check starts there).
    pub written_from: Option<Index>,
    /// The term of each log entry as far as it is durable (the commit rule
    /// check asks which voters durably hold an entry).
    durable_terms: BTreeMap<Index, Term>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// What a restarting node starts from (the production restore).
    pub fn boot(&self) -> Result<Boot> {
        let (hard_state, entries, log_start) =
            replay_records(self.records.iter().cloned()).map_err(Error::Corrupt)?;
        let restore = snapshot::restore_from(self, entries, log_start)?;
        Ok(Boot {
            hard_state: hard_state.unwrap_or_default(),
            restore,
        })
    }

    /// The node crashed (see the module doc). `unsynced_kept` is how many
    /// unsynced records a power loss keeps.
    pub fn crash(&mut self, power_loss: bool, unsynced_kept: usize) {
        if power_loss {
            let kept = (self.synced + unsynced_kept).min(self.records.len());
            self.records.truncate(kept);
            // What reached the platter is durable from now on.
            for position in self.synced..kept {
                let record = self.records[position].clone();
                self.note_durable(&record);
            }
            self.synced = self.records.len();
        }
        self.sync_points.clear();
        self.jobs.clear();
        self.receiving.discard();
        self.sending.clear();
        self.requests.clear();
        if let Ok((hard_state, entries, log_start)) = replay_records(self.records.iter().cloned()) {
            self.hard_state = hard_state.unwrap_or_default();
            self.last_index = entries.last().map_or(log_start, |e| e.index);
        }
        if power_loss {
            self.synced_hard_state = self.hard_state.clone();
            self.synced_last_index = self.last_index;
        }
    }

    /// What is durable, for the promises a node makes.
    pub fn durable(&self) -> Durable {
        let snapshot_index = self
            .snapshots
            .keys()
            .next_back()
            .map_or(0, |&(index, _)| index);
        Durable {
            hard_state: self.synced_hard_state.clone(),
            covered_index: self.synced_last_index.max(snapshot_index),
        }
    }

    /// The fsync `id` finished: what it covers is durable.
    pub fn complete_sync(&mut self, id: u64) {
        if let Some(&covered) = self.sync_points.get(&id) {
            let records: Vec<Record> = self
                .records
                .get(self.synced..covered)
                .unwrap_or(&[])
                .to_vec();
            for record in &records {
                match record {
                    Record::HardState(state) => self.synced_hard_state = state.clone(),
                    Record::Entry(entry) => self.synced_last_index = entry.index,
                    Record::LogStart { index, .. } => self.synced_last_index = *index,
                }
                self.note_durable(record);
            }
            self.synced = self.synced.max(covered);
        }
        self.sync_points.retain(|&other, _| other > id);
    }

    /// A record became durable: follow the log it describes.
    fn note_durable(&mut self, record: &Record) {
        match record {
            Record::Entry(entry) => {
                // An entry replaces the suffix from its index (a truncation).
                self.durable_terms.split_off(&entry.index);
                self.durable_terms.insert(entry.index, entry.term);
            }
            Record::LogStart { index, term } => {
                self.durable_terms.clear();
                self.durable_terms.insert(*index, *term);
            }
            Record::HardState(_) => {}
        }
    }

    /// Whether this disk durably holds the entry at `index` of `term`: in
    /// its synced WAL, or covered by a snapshot file.
    pub fn durably_holds(&self, index: Index, term: Term) -> bool {
        self.durable_terms.get(&index) == Some(&term)
            || self.snapshots.keys().any(|&(covered, _)| covered >= index)
    }

    /// The snapshot job `id` finished: its file appears, durable. Returns
    /// its meta, or why it failed; `None` if the job is unknown (lost in a
    /// crash).
    pub fn complete_snapshot(
        &mut self,
        id: u64,
    ) -> Option<std::result::Result<SnapshotMeta, String>> {
        let job = self.jobs.remove(&id)?;
        Some(Self::build_snapshot(job).map(|(meta, bytes)| {
            self.snapshots.insert((meta.index, meta.term), bytes);
            meta
        }))
    }

    pub fn unsynced_records(&self) -> usize {
        self.records.len() - self.synced
    }

    /// The hard state the node last asked to persist.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The last log index the node last asked to persist.
    pub fn last_index(&self) -> Index {
        self.last_index
    }

    /// The snapshot files on disk.
    pub fn snapshot_files(&self) -> impl Iterator<Item = (Index, Term)> + '_ {
        self.snapshots.keys().copied()
    }

    fn build_snapshot(job: Job) -> std::result::Result<(SnapshotMeta, Bytes), String> {
        let Job::Write { state, index, term } = job else {
            return Err("not a snapshot job".to_string());
        };
        let bytes = snapshot::encode(&state, index, term);
        let meta = SnapshotMeta {
            index,
            term,
            size_bytes: bytes.len() as u64,
        };
        Ok((meta, bytes))
    }

    /// Drops the durable WAL records every kept snapshot covers (those of
    /// entries through `through`), keeping the latest hard state.
    fn compact_wal(&mut self, through: Index) {
        // A kept snapshot covers these now (`durably_holds`).
        self.durable_terms = self.durable_terms.split_off(&through);
        let mut cut = 0;
        let mut hard_state = None;
        while cut < self.synced {
            match &self.records[cut] {
                Record::Entry(entry) if entry.index <= through => {}
                Record::LogStart { index, .. } if *index <= through => {}
                Record::HardState(state) => hard_state = Some(state.clone()),
                _ => break,
            }
            cut += 1;
        }
        self.records.drain(..cut);
        self.synced -= cut;
        let inserted = usize::from(hard_state.is_some());
        if let Some(state) = hard_state {
            self.records.insert(0, Record::HardState(state));
            self.synced += 1;
        }
        // Syncs in flight cover at least what is synced, so at least `cut`.
        for covered in self.sync_points.values_mut() {
            *covered = covered.saturating_sub(cut) + inserted;
        }
    }
}

impl SnapshotSource for SimDisk {
    fn list(&self) -> Result<Vec<(Index, Term)>> {
        Ok(self.snapshots.keys().copied().collect())
    }

    fn load(&self, index: Index, term: Term) -> Result<(SnapshotMeta, Fsm)> {
        let bytes = self
            .snapshots
            .get(&(index, term))
            .ok_or_else(|| Error::Corrupt(format!("snapshot {index} vanished")))?;
        snapshot::decode(bytes).map_err(Error::Corrupt)
    }

    fn size_bytes(&self, index: Index, term: Term) -> u64 {
        self.snapshots
            .get(&(index, term))
            .map_or(0, |bytes| bytes.len() as u64)
    }

    fn describe(&self) -> String {
        "the simulated disk".to_string()
    }
}

impl Storage for SimDisk {
    fn append_entries(&mut self, entries: &[Entry]) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        if first.index == 0 || first.index > self.last_index + 1 {
            return Err(Error::Refused(format!(
                "WAL append at index {} would leave a gap after last index {}",
                first.index, self.last_index
            )));
        }
        if entries
            .windows(2)
            .any(|pair| pair[1].index != pair[0].index + 1)
        {
            return Err(Error::Refused(
                "WAL append of non-contiguous entries".into(),
            ));
        }
        self.records
            .extend(entries.iter().cloned().map(Record::Entry));
        self.last_index = last.index;
        self.written_from = Some(
            self.written_from
                .map_or(first.index, |from| from.min(first.index)),
        );
        Ok(())
    }

    fn save_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        self.records.push(Record::HardState(hard_state.clone()));
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn mark_log_start(&mut self, index: Index, term: Term) -> Result<()> {
        self.records.push(Record::LogStart { index, term });
        self.last_index = index;
        Ok(())
    }

    fn begin_sync(&mut self, id: u64) -> Result<bool> {
        self.sync_points.insert(id, self.records.len());
        self.requests.push(DiskRequest::Sync(id));
        Ok(true)
    }

    fn start_snapshot(&mut self, job: Job) -> bool {
        let id = self.next_job_id;
        self.next_job_id += 1;
        self.jobs.insert(id, job);
        self.requests.push(DiskRequest::Snapshot(id));
        true
    }

    fn discard_obsolete(&mut self, wal_through: Option<Index>, snapshots: Vec<SnapshotMeta>) {
        if let Some(through) = wal_through {
            self.compact_wal(through);
        }
        for snapshot in snapshots {
            self.snapshots.remove(&(snapshot.index, snapshot.term));
        }
    }

    fn read_snapshot_chunk(
        &mut self,
        to: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        length_bytes: u64,
    ) -> std::io::Result<Bytes> {
        let bytes = match self.sending.get(&to) {
            Some((open, bytes)) if *open == snapshot => bytes.clone(),
            _ => {
                let bytes = self
                    .snapshots
                    .get(&(snapshot.index, snapshot.term))
                    .cloned()
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
                self.sending.insert(to, (snapshot, bytes.clone()));
                bytes
            }
        };
        let end = offset.saturating_add(length_bytes);
        if end > bytes.len() as u64 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        Ok(bytes.slice(offset as usize..end as usize))
    }

    fn close_snapshot_reader(&mut self, to: NodeId) {
        self.sending.remove(&to);
    }

    fn store_snapshot_chunk(
        &mut self,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<Stored> {
        self.receiving
            .store(snapshot, offset, data, |_| Ok(MemoryFile::default()))
    }

    fn commit_received_snapshot(&mut self) -> Result<()> {
        if let Some((meta, bytes)) = self.receiving.commit()? {
            self.snapshots.insert((meta.index, meta.term), bytes);
        }
        Ok(())
    }

    fn discard_received_snapshot(&mut self) {
        self.receiving.discard();
    }
}

/// A received snapshot's bytes, in memory until committed.
#[derive(Default)]
struct MemoryFile {
    bytes: Vec<u8>,
}

impl ReceivedFile for MemoryFile {
    type Committed = (SnapshotMeta, Bytes);

    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn check(
        &mut self,
        _size_bytes: u64,
    ) -> Result<std::result::Result<(SnapshotMeta, Fsm), String>> {
        Ok(snapshot::decode(&self.bytes))
    }

    fn commit(self, snapshot: SnapshotMeta) -> Result<(SnapshotMeta, Bytes)> {
        Ok((snapshot, Bytes::from(self.bytes)))
    }

    fn remove(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            data: Bytes::new(),
        }
    }

    #[test]
    fn power_loss_keeps_synced_records_and_a_prefix() {
        let mut disk = SimDisk::new();
        disk.append_entries(&[entry(1, 1), entry(2, 1)])
            .expect("append");
        disk.begin_sync(1).expect("sync");
        disk.complete_sync(1);
        disk.append_entries(&[entry(3, 1)]).expect("append");
        disk.append_entries(&[entry(4, 1)]).expect("append");
        let mut killed = SimDisk {
            records: disk.records.clone(),
            synced: disk.synced,
            ..SimDisk::default()
        };
        killed.crash(false, 0);
        assert_eq!(
            killed.last_index(),
            4,
            "a process kill keeps the page cache"
        );
        assert_eq!(killed.unsynced_records(), 2);
        killed.crash(true, 1);
        assert_eq!(killed.last_index(), 3, "a power loss keeps a prefix");
        disk.crash(true, 0);
        assert_eq!(disk.last_index(), 2);
        let boot = disk.boot().expect("boots");
        assert_eq!(boot.restore.entries.len(), 2);
    }

    #[test]
    fn gaps_are_refused() {
        let mut disk = SimDisk::new();
        assert!(disk.append_entries(&[entry(2, 1)]).is_err());
        disk.append_entries(&[entry(1, 1)]).expect("first");
        assert!(disk.append_entries(&[entry(2, 1), entry(4, 1)]).is_err());
    }
}
