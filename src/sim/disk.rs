//! One node's simulated storage: hard state and log, synced vs not yet synced.
//!
//! Writes land in the `current` view at once (what the node would read back)
//! and are queued as unsynced; `sync` makes them durable. A crash keeps the
//! synced state, plus — when the schedule allows it — a prefix of the unsynced
//! writes in order (a write-ahead log's pages may reach the platter before the
//! fsync, but never out of order). `restored` is what a restart reads.
//! Invariant: log positions are contiguous from index 1 in both views.
//! Left out: torn records and bit rot (the WAL's CRC tests own those).

use crate::raft::{Entry, HardState, Index, Restored, Term};

#[derive(Clone, Debug)]
enum Write {
    HardState(HardState),
    Entries(Vec<Entry>),
}

#[derive(Clone, Debug, Default)]
struct Stored {
    hard_state: HardState,
    entries: Vec<Entry>,
}

impl Stored {
    fn apply(&mut self, write: &Write) {
        match write {
            Write::HardState(hard_state) => self.hard_state = hard_state.clone(),
            Write::Entries(entries) => {
                if let Some(first) = entries.first() {
                    let keep = (first.index.saturating_sub(1) as usize).min(self.entries.len());
                    self.entries.truncate(keep);
                    self.entries.extend(entries.iter().cloned());
                }
            }
        }
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
        let last_index = self.current.entries.len() as Index;
        if first.index == 0 || first.index > last_index + 1 {
            return Err(format!(
                "PersistEntries starting at index {} would leave a gap after the stored last index {}",
                first.index, last_index
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
        Some(
            self.synced
                .entries
                .last()
                .map_or((0, 0), |entry| (entry.index, entry.term)),
        )
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
            // The simulator does not compact yet: no snapshot on its disks.
            snapshot: None,
        }
    }

    /// The log as the node sees it (synced and unsynced writes).
    pub fn log(&self) -> &[Entry] {
        &self.current.entries
    }

    pub fn hard_state(&self) -> &HardState {
        &self.current.hard_state
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        index
            .checked_sub(1)
            .and_then(|position| self.current.entries.get(position as usize))
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
}
