//! The in-memory view of the Raft log (Raft §5.3).
//!
//! Owns the entries after the last snapshot (Raft §7): `snapshot_index` and
//! `snapshot_term` name the last entry the snapshot covers, and the entries
//! run from `snapshot_index + 1` to `last_index()`. `term_at(i)` is known for
//! `i >= snapshot_index` (and 0 for the empty prefix when there is no
//! snapshot); below it the entries are gone. Invariants, checked by
//! `debug_assert!` and by validation of every entry list that comes from the
//! network or the disk:
//! - `entries[i].index == snapshot_index + i + 1` (contiguous);
//! - terms never decrease along the log, which makes term lookups a binary
//!   search;
//! - the log matching property (§5.3): an append is accepted only after the
//!   entry at `prev_log_index` has `prev_log_term`, and an existing entry is
//!   replaced only when its term conflicts.
//!
//! Durability is not this module's concern: the node turns every change into
//! an `Action::PersistEntries`.

use super::message::{Entry, Index, Term};

#[derive(Clone, Debug, Default)]
pub struct Log {
    /// The last index covered by the snapshot (0: none).
    snapshot_index: Index,
    /// The term of the entry at `snapshot_index` (0: none).
    snapshot_term: Term,
    entries: Vec<Entry>,
}

/// What `Log::merge` changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merged {
    /// First index written (appended or replaced), if anything was written.
    pub first_written: Option<Index>,
    /// True if entries from `first_written` on were replaced (a conflict).
    pub truncated: bool,
}

/// True if `entries` is a well-formed run following (`prev_index`, `prev_term`):
/// contiguous indexes from `prev_index + 1`, terms non-decreasing from
/// `prev_term` and never above `term_max`.
pub fn is_well_formed(
    prev_index: Index,
    prev_term: Term,
    entries: &[Entry],
    term_max: Term,
) -> bool {
    let mut expected_index = prev_index;
    let mut term_floor = prev_term;
    for entry in entries {
        expected_index = match expected_index.checked_add(1) {
            Some(index) => index,
            None => return false,
        };
        if entry.index != expected_index || entry.term < term_floor || entry.term > term_max {
            return false;
        }
        term_floor = entry.term;
    }
    true
}

impl Log {
    /// A log from recovered entries, contiguous from index 1.
    pub fn from_entries(entries: Vec<Entry>) -> Log {
        Log::from_snapshot(0, 0, entries)
    }

    /// A log that follows a snapshot through (`snapshot_index`,
    /// `snapshot_term`), with recovered entries from `snapshot_index + 1`.
    /// Keeps the longest well-formed prefix (contiguous, terms
    /// non-decreasing from the snapshot's); storage validates its records, so
    /// dropping anything here means a storage bug, which is logged.
    pub fn from_snapshot(
        snapshot_index: Index,
        snapshot_term: Term,
        mut entries: Vec<Entry>,
    ) -> Log {
        let mut valid = 0;
        let mut term_floor = snapshot_term;
        for (position, entry) in entries.iter().enumerate() {
            if entry.index != snapshot_index + position as Index + 1 || entry.term < term_floor {
                break;
            }
            term_floor = entry.term;
            valid = position + 1;
        }
        if valid < entries.len() {
            log::error!(
                "restored log is not contiguous at position {valid} after snapshot index \
                 {snapshot_index}; keeping {valid} entries"
            );
            entries.truncate(valid);
        }
        Log {
            snapshot_index,
            snapshot_term,
            entries,
        }
    }

    /// The last index covered by the snapshot (0 if none).
    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// The term of the entry at `snapshot_index` (0 if none).
    pub fn snapshot_term(&self) -> Term {
        self.snapshot_term
    }

    /// The first index still held as an entry (`last_index() + 1` if none).
    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot_term, |entry| entry.term)
    }

    /// Drop the entries through `index` (it must be held, or be the snapshot
    /// index): a snapshot now covers them. Returns false if there was nothing
    /// to drop or `index` is not held.
    pub fn compact(&mut self, index: Index) -> bool {
        if index <= self.snapshot_index || index > self.last_index() {
            return false;
        }
        let Some(term) = self.term_at(index) else {
            return false;
        };
        let count = (index - self.snapshot_index) as usize;
        self.entries.drain(..count);
        self.snapshot_index = index;
        self.snapshot_term = term;
        true
    }

    /// Start the log after a snapshot received from the leader (Raft §7
    /// receiver rules 6-7): if an entry at `index` has `term`, keep the
    /// entries after it; otherwise discard the whole log. Returns true if
    /// the entries after `index` were kept.
    pub fn install(&mut self, index: Index, term: Term) -> bool {
        if index > self.snapshot_index && self.matches(index, term) {
            return self.compact(index);
        }
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        false
    }

    /// The term of the entry at `index`; index 0 is the empty prefix, term 0.
    /// The term of the entry at `index`; the snapshot's last entry (index 0,
    /// term 0 without one) is known too, anything before it is not.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        let position = index.checked_sub(self.snapshot_index + 1)?;
        self.entries.get(usize::try_from(position).ok()?)
    }

    /// True if the log holds an entry at `index` with `term` (the §5.3 check).
    pub fn matches(&self, index: Index, term: Term) -> bool {
        self.term_at(index) == Some(term)
    }

    /// The entries in `[from, to]` (inclusive; clamped to the entries held).
    pub fn slice(&self, from: Index, to: Index) -> &[Entry] {
        let first = self.first_index();
        let start = (from.max(first) - first).min(self.entries.len() as Index) as usize;
        let end = (to
            .min(self.last_index())
            .saturating_sub(self.snapshot_index) as usize)
            .max(start);
        &self.entries[start..end]
    }

    /// Entries from `from` for one AppendEntries: as many as fit in
    /// `bytes_max`, but always at least one if any exist (a bigger single
    /// entry still goes alone). `Bytes` clones share the payload.
    pub fn entries_for_append(&self, from: Index, bytes_max: usize) -> Vec<Entry> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for entry in self.slice(from, self.last_index()) {
            let size = entry.size_bytes();
            if !out.is_empty() && bytes.saturating_add(size) > bytes_max {
                break;
            }
            bytes = bytes.saturating_add(size);
            out.push(entry.clone());
        }
        out
    }

    /// Append one entry at the end (the leader's path).
    pub fn append(&mut self, entry: Entry) {
        debug_assert_eq!(
            entry.index,
            self.last_index() + 1,
            "append must be contiguous"
        );
        debug_assert!(
            entry.term >= self.last_term(),
            "terms never decrease along the log"
        );
        self.entries.push(entry);
    }

    /// §5.4.1: is a log ending at (`last_log_index`, `last_log_term`) at least
    /// as up to date as this one?
    pub fn is_up_to_date(&self, last_log_index: Index, last_log_term: Term) -> bool {
        (last_log_term, last_log_index) >= (self.last_term(), self.last_index())
    }

    /// The last index whose entry has `term`, looking no further than `at_most`.
    pub fn last_index_of_term(&self, term: Term, at_most: Index) -> Option<Index> {
        let count = self.entries.partition_point(|entry| entry.term <= term) as Index;
        let index = (self.snapshot_index + count).min(at_most);
        (index > 0 && self.term_at(index) == Some(term)).then_some(index)
    }

    /// The first index whose entry has `term`.
    pub fn first_index_of_term(&self, term: Term) -> Option<Index> {
        let index = self.snapshot_index
            + self.entries.partition_point(|entry| entry.term < term) as Index
            + 1;
        (self.term_at(index) == Some(term)).then_some(index)
    }

    /// The fast-backtracking hint for a rejected AppendEntries whose
    /// `prev_log_index` did not match (thesis §5.3's optimisation): past our
    /// end, where our log ends; otherwise the term we hold there and the first
    /// index of that term, so the leader can skip the whole term at once.
    pub fn conflict_hint(&self, prev_log_index: Index) -> (Index, Option<Term>) {
        match self.term_at(prev_log_index) {
            // Past our end, or (for a stale message) inside our snapshot:
            // either way the leader should go on from our end.
            None => (self.last_index() + 1, None),
            Some(term) => {
                let first = self.first_index_of_term(term).unwrap_or(prev_log_index);
                (first, Some(term))
            }
        }
    }

    /// Merge entries that follow a matching `prev_log_index` (the follower's
    /// path, §5.3 step 3-4): skip entries already present with the same term,
    /// replace the suffix from the first conflicting entry, append the rest.
    /// Entries past a shorter message are never truncated (a stale message
    /// must not erase newer entries). The caller has checked `matches` and
    /// `is_well_formed`.
    pub fn merge(&mut self, prev_log_index: Index, entries: &[Entry]) -> Merged {
        debug_assert!(prev_log_index <= self.last_index());
        debug_assert!(prev_log_index >= self.snapshot_index);
        let mut merged = Merged {
            first_written: None,
            truncated: false,
        };
        for (offset, entry) in entries.iter().enumerate() {
            debug_assert_eq!(entry.index, prev_log_index + 1 + offset as Index);
            match self.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    debug_assert!(
                        entry.index > self.snapshot_index,
                        "snapshot entries are committed"
                    );
                    self.entries
                        .truncate((entry.index - self.snapshot_index - 1) as usize);
                    merged.truncated = true;
                }
                None => {}
            }
            merged.first_written = Some(entry.index);
            self.entries.extend_from_slice(&entries[offset..]);
            break;
        }
        debug_assert!(entries
            .last()
            .is_none_or(|last| self.matches(last.index, last.term)));
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from(format!("{index}/{term}")),
        }
    }

    fn log_of(terms: &[Term]) -> Log {
        Log::from_entries(
            terms
                .iter()
                .enumerate()
                .map(|(i, t)| entry(i as Index + 1, *t))
                .collect(),
        )
    }

    fn terms(log: &Log) -> Vec<Term> {
        log.slice(1, log.last_index())
            .iter()
            .map(|e| e.term)
            .collect()
    }

    #[test]
    fn term_lookups() {
        let log = log_of(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(7), None);
        assert_eq!(log.last_index_of_term(2, 100), Some(5));
        assert_eq!(log.last_index_of_term(2, 4), Some(4));
        assert_eq!(log.last_index_of_term(2, 2), None);
        assert_eq!(log.last_index_of_term(3, 100), None);
        assert_eq!(log.first_index_of_term(2), Some(3));
        assert_eq!(log.first_index_of_term(5), Some(6));
        assert_eq!(log.first_index_of_term(4), None);
    }

    #[test]
    fn conflict_hints() {
        let log = log_of(&[1, 1, 2, 2, 2]);
        assert_eq!(log.conflict_hint(9), (6, None));
        assert_eq!(log.conflict_hint(4), (3, Some(2)));
        assert_eq!(log.conflict_hint(2), (1, Some(1)));
    }

    #[test]
    fn restore_keeps_the_well_formed_prefix() {
        let log = Log::from_entries(vec![entry(1, 1), entry(2, 2), entry(4, 2)]);
        assert_eq!(log.last_index(), 2);
        let log = Log::from_entries(vec![entry(1, 3), entry(2, 2)]);
        assert_eq!(log.last_index(), 1);
    }

    #[test]
    fn merge_skips_matching_and_replaces_conflicts() {
        let mut log = log_of(&[1, 1, 1, 1]);
        let merged = log.merge(1, &[entry(2, 1), entry(3, 1)]);
        assert_eq!(
            merged,
            Merged {
                first_written: None,
                truncated: false
            }
        );
        assert_eq!(terms(&log), vec![1, 1, 1, 1]);

        let merged = log.merge(2, &[entry(3, 2)]);
        assert_eq!(
            merged,
            Merged {
                first_written: Some(3),
                truncated: true
            }
        );
        assert_eq!(terms(&log), vec![1, 1, 2]);

        let merged = log.merge(3, &[entry(4, 2), entry(5, 3)]);
        assert_eq!(
            merged,
            Merged {
                first_written: Some(4),
                truncated: false
            }
        );
        assert_eq!(terms(&log), vec![1, 1, 2, 2, 3]);
    }

    #[test]
    fn stale_short_message_truncates_nothing() {
        let mut log = log_of(&[1, 1, 1, 1]);
        let merged = log.merge(0, &[entry(1, 1)]);
        assert_eq!(merged.first_written, None);
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    fn append_batches_respect_the_byte_limit() {
        let log = log_of(&[1, 1, 1, 1]);
        let one = log.entry(1).map(Entry::size_bytes).unwrap_or(0);
        assert_eq!(log.entries_for_append(1, 2 * one).len(), 2);
        assert_eq!(
            log.entries_for_append(1, 1).len(),
            1,
            "an oversized entry goes alone"
        );
        assert_eq!(log.entries_for_append(4, usize::MAX).len(), 1);
        assert_eq!(log.entries_for_append(5, usize::MAX).len(), 0);
    }

    #[test]
    fn well_formed_checks() {
        assert!(is_well_formed(2, 1, &[entry(3, 1), entry(4, 2)], 2));
        assert!(!is_well_formed(2, 1, &[entry(4, 1)], 2), "gap");
        assert!(!is_well_formed(2, 3, &[entry(3, 2)], 3), "term below prev");
        assert!(
            !is_well_formed(2, 1, &[entry(3, 2), entry(4, 1)], 3),
            "decreasing"
        );
        assert!(
            !is_well_formed(2, 1, &[entry(3, 4)], 3),
            "term above sender"
        );
        assert!(is_well_formed(7, 1, &[], 1));
    }

    #[test]
    fn compaction_keeps_lookups_past_the_snapshot() {
        let mut log = log_of(&[1, 1, 2, 2, 3]);
        assert!(log.compact(3));
        assert_eq!(log.snapshot_index(), 3);
        assert_eq!(log.first_index(), 4);
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(2), None);
        assert_eq!(log.entry(4).map(|e| e.index), Some(4));
        assert_eq!(log.slice(1, 9).len(), 2);
        assert_eq!(log.last_index_of_term(2, 9), Some(4));
        assert_eq!(log.first_index_of_term(3), Some(5));
        assert_eq!(log.conflict_hint(1), (6, None));
        assert!(!log.compact(2), "already compacted");
        assert!(!log.compact(9), "past the end");
        let merged = log.merge(4, &[entry(5, 4)]);
        assert!(merged.truncated);
        assert_eq!(log.last_term(), 4);
        assert!(log.compact(5));
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.last_term(), 4);
        assert!(log.slice(1, 9).is_empty());
    }

    #[test]
    fn install_keeps_a_matching_suffix_or_discards_the_log() {
        let mut log = log_of(&[1, 1, 2, 2]);
        assert!(log.install(2, 1));
        assert_eq!((log.snapshot_index(), log.last_index()), (2, 4));
        assert!(!log.install(3, 5), "term differs: discard");
        assert_eq!(
            (log.snapshot_index(), log.last_index(), log.last_term()),
            (3, 3, 5)
        );
        assert!(!log.install(9, 6), "past the end: discard");
        assert_eq!(log.last_index(), 9);
        let restored = Log::from_snapshot(9, 6, vec![entry(10, 6), entry(12, 6)]);
        assert_eq!(restored.last_index(), 10);
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_of(&[1, 2, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(9, 1));
        assert!(!log.is_up_to_date(2, 2));
    }
}
