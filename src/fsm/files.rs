//! The file map: a slab arena of files, a name index, the version counter and
//! the expiry queue. Pure storage: which command does what is decided by
//! `Fsm::apply` (mod.rs); this module only keeps the three structures in step.
//!
//! Storage. Each file's name and content are copied once, at apply, into
//! one shared slice (`triomphe::Arc<[u8]>`, whose header is one 8-byte
//! count: name length, name, content) held by the
//! arena: a `Bytes` slice of the entry would pin a whole network read
//! buffer (or log entry) for as long as the file lives, and two allocations
//! per file would cost a second allocator header and rounding (measured by
//! benches/memory.sh: 1M files of 16-byte names and 100-byte contents). A
//! rewrite with content of the same size reuses the allocation unless a
//! frozen view (a snapshot being written) still holds it. The arena is
//! `arena::Arena`, shared copy-on-write by chunks, so `freeze` hands a
//! snapshot the files as they are now for one reference count per chunk.
//!
//! Name index without a second copy of the name. The index is a
//! `hashbrown::HashTable<u32>` holding only the slot of each file (4 bytes
//! plus one control byte per bucket): a lookup hashes the probed name with a
//! keyed foldhash (random seed per process, so no client can aim for collisions),
//! and every candidate slot is confirmed by comparing the name the arena holds,
//! its only copy. Two names with the same hash are simply two entries. A
//! `HashMap<hash, slot>` cost 16 bytes per bucket, ~36 MB at 1M files; this
//! table ~10 MB. Slots are `u32`: the arena reuses freed slots, so a slot
//! stays below the peak file count, which `FILES_MAX` bounds.
//!
//! Expiry queue. An ordered set of `(deadline_ms, slot)` with exactly one
//! entry per live file that has a deadline: a rewrite or delete takes the old
//! entry out (O(log n)) instead of leaving a stale one behind, so the queue
//! cannot grow past the number of files, and nothing stale can ever expire a
//! newer file in the same slot. `expire_through(now_ms)` pops only due entries:
//! no scan of the files.
//!
//! Invariants (checked by `check_invariants` in tests):
//! - the index holds every arena slot exactly once, and nothing else;
//! - the expiry queue holds `(deadline, slot)` iff that slot's file has that
//!   deadline;
//! - names are unique in the arena.
//!
//! Left out: judging expiry (a file here may already be past its deadline until
//! the next `expire_through`; readers must check `File::is_live`), and giving
//! back arena capacity: a freed slot is reused by the next file, so the arena's
//! slot vector stays at the peak file count (the files' bytes are freed at once).

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::num::NonZeroU64;

use triomphe::{Arc, UniqueArc};

use hashbrown::HashTable;

use super::arena::{Arena, Frozen};

use crate::limits::FILES_MAX;

/// One stored file.
#[derive(Clone, Debug)]
pub struct File {
    /// The name's length (one byte, at most `NAME_BYTES_MAX`), the name,
    /// then the content. Never empty. Shared with frozen views; changed in
    /// place only while no view holds it. Keeping the length here rather than in
    /// a field makes `File` 32 bytes instead of 40 (8 MB per 1M files); the
    /// allocation rounds up to the same 16-byte step in most cases.
    bytes: Arc<[u8]>,
    version: u64,
    deadline_ms: Option<NonZeroU64>,
}

const _: () = assert!(crate::limits::NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(std::mem::size_of::<File>() == 32);

/// Name length, `name`, then `content`, in one allocation.
/// Precondition: `name.len() <= NAME_BYTES_MAX`.
fn name_and_content(name: &[u8], content: &[u8]) -> Arc<[u8]> {
    let mut bytes =
        UniqueArc::<[std::mem::MaybeUninit<u8>]>::new_uninit_slice(1 + name.len() + content.len());
    bytes[0].write(name.len() as u8);
    bytes[1..1 + name.len()].write_copy_of_slice(name);
    bytes[1 + name.len()..].write_copy_of_slice(content);
    // SAFETY: the three writes above initialised every byte of the slice.
    unsafe { UniqueArc::assume_init_slice(bytes) }.shareable()
}

impl File {
    /// Where the content starts in `bytes`.
    fn content_start(&self) -> usize {
        1 + usize::from(self.bytes[0])
    }

    pub fn name(&self) -> &[u8] {
        &self.bytes[1..self.content_start()]
    }

    pub fn content(&self) -> &[u8] {
        &self.bytes[self.content_start()..]
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Cluster time at which the file expires; `None` = never.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.deadline_ms.map(NonZeroU64::get)
    }

    /// Whether the file still exists at cluster time `now_ms` (SPEC §2: expired
    /// iff `now_ms >= deadline`).
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.deadline_ms()
            .is_none_or(|deadline_ms| now_ms < deadline_ms)
    }
}

/// Hashes names into index keys.
#[derive(Clone, Debug)]
enum NameHasher {
    /// foldhash's quality hasher with a random per-process seed: clients
    /// choose names, so the seed keeps them from aiming for collisions;
    /// only the layout depends on it, never what a replica answers. (Was
    /// SipHash: 15 % of a follower's instructions under a write load.)
    Keyed(foldhash::quality::RandomState),
    /// Every name hashes alike, to exercise the collision path.
    #[cfg(test)]
    Constant,
}

impl NameHasher {
    fn hash(&self, name: &[u8]) -> u64 {
        match self {
            NameHasher::Keyed(state) => state.hash_one(name),
            #[cfg(test)]
            NameHasher::Constant => 7,
        }
    }
}

/// The file map. See the module doc for its invariants.
#[derive(Clone, Debug)]
pub struct Files {
    arena: Arena<File>,
    /// The slot of every file, placed by the hash of its name.
    index: HashTable<u32>,
    name_hasher: NameHasher,
    /// `(deadline_ms, slot)` for every file with a deadline.
    expiry: BTreeSet<(u64, usize)>,
    /// The last version handed out; 0 on a fresh map.
    version_counter: u64,
    /// Bytes held by the files' own allocations (length byte, name,
    /// content), summed: what a copy of the map costs.
    stored_bytes: u64,
}

impl Default for Files {
    fn default() -> Self {
        Files::new()
    }
}

impl Files {
    pub fn new() -> Files {
        Files::with_name_hasher(NameHasher::Keyed(foldhash::quality::RandomState::default()))
    }

    fn with_name_hasher(name_hasher: NameHasher) -> Files {
        Files {
            arena: Arena::default(),
            index: HashTable::new(),
            name_hasher,
            expiry: BTreeSet::new(),
            version_counter: 0,
            stored_bytes: 0,
        }
    }

    /// A map whose names all share one hash (tests of the collision path).
    #[cfg(test)]
    fn colliding() -> Files {
        Files::with_name_hasher(NameHasher::Constant)
    }

    /// Bytes the files' names and contents occupy (see `stored_bytes`).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub fn len(&self) -> usize {
        self.arena.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arena.is_empty()
    }

    pub fn version_counter(&self) -> u64 {
        self.version_counter
    }

    /// Sets the counter (snapshot restore). It never moves backwards.
    pub fn set_version_counter(&mut self, version_counter: u64) {
        debug_assert!(version_counter >= self.version_counter);
        self.version_counter = version_counter;
    }

    /// Takes the next version: counter + 1 (the first is 1).
    pub fn next_version(&mut self) -> u64 {
        // 2^64 successful writes cannot happen (584 years at 10^9 per second);
        // saturating keeps even that case from wrapping onto old versions.
        self.version_counter = self.version_counter.saturating_add(1);
        self.version_counter
    }

    /// The slot of the file named `name`, live or not.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.find_hashed(self.hash_name(name), name)
    }

    /// The index key of `name`: computed once by callers that look a name up
    /// and may then insert it (`find_hashed`, `insert_hashed`).
    pub fn hash_name(&self, name: &[u8]) -> u64 {
        self.name_hasher.hash(name)
    }

    /// As `find`, with `hash == hash_name(name)`.
    pub fn find_hashed(&self, hash: u64, name: &[u8]) -> Option<usize> {
        debug_assert_eq!(hash, self.hash_name(name));
        let arena = &self.arena;
        self.index
            .find(hash, |&slot| {
                arena.get(slot as usize).map(File::name) == Some(name)
            })
            .map(|&slot| slot as usize)
    }

    pub fn get(&self, slot: usize) -> Option<&File> {
        self.arena.get(slot)
    }

    /// Every stored file, live or not, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &File> + '_ {
        self.arena.iter().map(|(_, file)| file)
    }

    /// Every stored file as of now, live or not, for a helper thread to
    /// read while this map goes on changing (see `arena`).
    pub fn freeze(&self) -> Frozen<File> {
        self.arena.freeze()
    }

    /// Stores a new file (copying name and content) and returns its slot.
    /// Precondition: no file named `name` exists.
    pub fn insert(
        &mut self,
        name: &[u8],
        content: &[u8],
        version: u64,
        deadline_ms: Option<u64>,
    ) -> usize {
        self.insert_hashed(self.hash_name(name), name, content, version, deadline_ms)
    }

    /// As `insert`, with `hash == hash_name(name)`.
    pub fn insert_hashed(
        &mut self,
        hash: u64,
        name: &[u8],
        content: &[u8],
        version: u64,
        deadline_ms: Option<u64>,
    ) -> usize {
        debug_assert!(self.find(name).is_none(), "insert of an existing name");
        // The codec and the snapshot decoder bound names to NAME_BYTES_MAX;
        // a longer name here is a caller bug, and truncating it would corrupt
        // the map, so it is refused loudly.
        assert!(
            name.len() <= crate::limits::NAME_BYTES_MAX,
            "file name longer than NAME_BYTES_MAX"
        );
        let deadline_ms = deadline_ms.and_then(NonZeroU64::new);
        let bytes = name_and_content(name, content);
        self.stored_bytes += bytes.len() as u64;
        let slot = self.arena.insert(File {
            bytes,
            version,
            deadline_ms,
        });
        // A slot is below the peak file count; reaching FILES_MAX files would
        // take hundreds of GB of memory first, so this is an invariant, not
        // an input check.
        let slot_u32 = u32::try_from(slot)
            .ok()
            .filter(|_| slot < FILES_MAX)
            .expect("more than FILES_MAX files");
        let (arena, name_hasher) = (&self.arena, &self.name_hasher);
        self.index.insert_unique(hash, slot_u32, |&other| {
            name_hasher.hash(arena.get(other as usize).map_or(&[], File::name))
        });
        if let Some(deadline_ms) = deadline_ms {
            self.expiry.insert((deadline_ms.get(), slot));
        }
        slot
    }

    /// Replaces the content, version and deadline of the file in `slot`.
    pub fn replace(&mut self, slot: usize, content: &[u8], version: u64, deadline_ms: Option<u64>) {
        let deadline_ms = deadline_ms.and_then(NonZeroU64::new);
        let file = self.arena.get_mut(slot).expect("replace of a free slot");
        let content_start = file.content_start();
        let same_size = file.bytes.len() - content_start == content.len();
        if let Some(bytes) = Arc::get_mut(&mut file.bytes).filter(|_| same_size) {
            // Same size (the common rewrite) and no frozen view holds the
            // old bytes: reuse the allocation.
            bytes[content_start..].copy_from_slice(content);
        } else {
            let bytes = name_and_content(file.name(), content);
            self.stored_bytes = self.stored_bytes - file.bytes.len() as u64 + bytes.len() as u64;
            file.bytes = bytes;
        }
        file.version = version;
        if file.deadline_ms != deadline_ms {
            if let Some(old) = file.deadline_ms {
                self.expiry.remove(&(old.get(), slot));
            }
            if let Some(new) = deadline_ms {
                self.expiry.insert((new.get(), slot));
            }
            file.deadline_ms = deadline_ms;
        }
    }

    /// Removes the file in `slot` from the arena, the index and the queue,
    /// freeing its bytes.
    pub fn remove(&mut self, slot: usize) -> File {
        let file = self.arena.remove(slot).expect("remove of a free slot");
        self.stored_bytes -= file.bytes.len() as u64;
        if let Some(deadline_ms) = file.deadline_ms {
            self.expiry.remove(&(deadline_ms.get(), slot));
        }
        let hash = self.name_hasher.hash(file.name());
        // The slot fits in u32: `insert_hashed` checked it.
        let slot_u32 = slot as u32;
        match self.index.find_entry(hash, |&other| other == slot_u32) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => debug_assert!(false, "removed file {slot} was not in the index"),
        }
        file
    }

    /// Removes every file whose deadline is at or before `now_ms`; returns how
    /// many. Costs O(log n) per removed file, nothing per live one.
    pub fn expire_through(&mut self, now_ms: u64) -> usize {
        let mut expired = 0;
        while let Some(&(deadline_ms, slot)) = self.expiry.first() {
            if deadline_ms > now_ms {
                break;
            }
            self.remove(slot);
            expired += 1;
        }
        expired
    }

    /// The earliest deadline in the queue.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.expiry.first().map(|&(deadline_ms, _)| deadline_ms)
    }

    /// Panics if the arena, index and queue disagree (tests and debug checks).
    pub fn check_invariants(&self) {
        self.arena.check_invariants();
        let mut indexed = vec![false; self.arena.slot_count()];
        for &slot in self.index.iter() {
            let slot = slot as usize;
            assert!(self.arena.contains(slot), "index points at a free slot");
            assert!(!indexed[slot], "slot indexed twice");
            indexed[slot] = true;
        }
        assert_eq!(
            self.index.len(),
            self.arena.len(),
            "index and arena sizes differ"
        );
        assert_eq!(
            self.stored_bytes,
            self.arena
                .iter()
                .map(|(_, f)| f.bytes.len() as u64)
                .sum::<u64>(),
            "stored bytes miscounted"
        );
        for (slot, file) in self.arena.iter() {
            assert_eq!(
                self.find(file.name()),
                Some(slot),
                "name not found at its own slot"
            );
        }
        let with_deadline = self
            .arena
            .iter()
            .filter(|(_, file)| file.deadline_ms.is_some())
            .count();
        assert_eq!(
            self.expiry.len(),
            with_deadline,
            "expiry queue size differs"
        );
        for &(deadline_ms, slot) in &self.expiry {
            let file = self.arena.get(slot).expect("expiry entry for a free slot");
            assert_eq!(
                file.deadline_ms(),
                Some(deadline_ms),
                "expiry entry with a stale deadline"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_from_one() {
        let mut files = Files::new();
        assert_eq!(files.version_counter(), 0);
        assert_eq!(files.next_version(), 1);
        assert_eq!(files.next_version(), 2);
        assert_eq!(files.version_counter(), 2);
    }

    #[test]
    fn insert_find_replace_remove() {
        let mut files = Files::new();
        let slot = files.insert(b"a", b"one", 1, None);
        assert_eq!(files.find(b"a"), Some(slot));
        assert_eq!(files.find(b"b"), None);
        files.replace(slot, b"two", 2, Some(5_000));
        let file = files.get(slot).expect("stored");
        assert_eq!(
            (file.content(), file.version(), file.deadline_ms()),
            (&b"two"[..], 2, Some(5_000))
        );
        files.replace(slot, b"three!", 3, None);
        assert_eq!(files.get(slot).map(File::content), Some(&b"three!"[..]));
        files.check_invariants();
        let removed = files.remove(slot);
        assert_eq!(removed.name(), b"a");
        assert_eq!(files.find(b"a"), None);
        assert!(files.is_empty());
        files.check_invariants();
    }

    #[test]
    fn colliding_names_stay_apart_through_every_removal_order() {
        for order in [[0, 1, 2], [1, 0, 2], [2, 1, 0], [0, 2, 1]] {
            let mut files = Files::colliding();
            let names: [&[u8]; 3] = [b"x", b"y", b"z"];
            let slots: Vec<usize> = names
                .iter()
                .map(|name| files.insert(name, name, 1, None))
                .collect();
            files.check_invariants();
            for (position, &which) in order.iter().enumerate() {
                files.remove(slots[which]);
                files.check_invariants();
                assert_eq!(files.find(names[which]), None);
                for &still in &order[position + 1..] {
                    let slot = files.find(names[still]).expect("other name still there");
                    assert_eq!(files.get(slot).map(File::content), Some(names[still]));
                }
            }
            assert!(files.index.is_empty());
        }
    }

    #[test]
    fn expiry_pops_only_due_files_and_follows_replacement() {
        let mut files = Files::new();
        let a = files.insert(b"a", b"", 1, Some(1_000));
        let b = files.insert(b"b", b"", 2, Some(2_000));
        files.insert(b"c", b"", 3, None);
        // The later write moves a's deadline: the old queue entry must go.
        files.replace(a, b"", 4, Some(3_000));
        files.check_invariants();
        assert_eq!(files.next_deadline_ms(), Some(2_000));
        assert_eq!(files.expire_through(1_999), 0);
        assert_eq!(files.expire_through(2_000), 1);
        assert!(files.get(b).is_none());
        assert_eq!(files.find(b"a"), Some(a));
        files.replace(a, b"", 5, None);
        assert_eq!(files.expire_through(u64::MAX), 0);
        assert_eq!(files.len(), 2);
        files.check_invariants();
    }

    #[test]
    fn is_live_is_strictly_before_the_deadline() {
        let mut files = Files::new();
        let slot = files.insert(b"a", b"", 1, Some(1_000));
        let file = files.get(slot).expect("stored");
        assert!(file.is_live(999));
        assert!(!file.is_live(1_000));
    }
}
