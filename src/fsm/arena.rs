//! A slab arena whose storage is shared copy-on-write in fixed-size chunks,
//! so a frozen view of every value (`Arena::freeze`) costs one reference
//! count per chunk, and the arena goes on changing while another thread
//! reads the view.
//!
//! Chunks are `triomphe::Arc`s (a count and no weak count: `make_mut` on
//! an unshared chunk is one load).
//!
//! Why not the `slab` crate: a snapshot needs the map as it was at one log
//! index while the reactor keeps applying. `Slab` can only be cloned whole
//! (a second map: 2x memory, and the copy on the reactor); here a chunk is
//! copied only when it is first changed after a freeze, and that copy is
//! shallow when values are cheap to clone (the file map's values hold their
//! bytes behind an `Arc`).
//!
//! Same contract as a slab otherwise: `insert` returns a slot (a freed slot
//! is reused, most recently freed first), a slot stays valid until
//! `remove`, and slots stay below the peak number of values held.
//!
//! Invariants: `len` counts the occupied entries; the free list links every
//! vacant entry exactly once (checked by `check_invariants`); a frozen view
//! never changes.

use triomphe::Arc;

/// Slots per chunk: a first change after a freeze copies at most this many
/// entries (a few KiB), and a freeze clones one `Arc` per chunk (4,096 for
/// a million files).
const CHUNK_SLOTS: usize = 256;

/// End of the free list.
const NO_SLOT: u32 = u32::MAX;

#[derive(Clone, Debug)]
enum Entry<T> {
    Occupied(T),
    /// A free slot and the next free one (`NO_SLOT`: none).
    Vacant(u32),
}

type Chunk<T> = Arc<Vec<Entry<T>>>;

/// See the module doc.
#[derive(Clone, Debug)]
pub struct Arena<T> {
    chunks: Vec<Chunk<T>>,
    /// Slots handed out so far (occupied or vacant): the next new slot.
    slots: usize,
    len: usize,
    /// The most recently freed slot (`NO_SLOT`: none).
    free: u32,
}

/// Every value an `Arena` held when it was frozen, in slot order.
#[derive(Clone, Debug)]
pub struct Frozen<T> {
    chunks: Vec<Chunk<T>>,
    len: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            chunks: Vec::new(),
            slots: 0,
            len: 0,
            free: NO_SLOT,
        }
    }
}

impl<T: Clone> Arena<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots handed out so far: every slot is below it.
    pub fn slot_count(&self) -> usize {
        self.slots
    }

    pub fn get(&self, slot: usize) -> Option<&T> {
        match self
            .chunks
            .get(slot / CHUNK_SLOTS)?
            .get(slot % CHUNK_SLOTS)?
        {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant(_) => None,
        }
    }

    pub fn contains(&self, slot: usize) -> bool {
        self.get(slot).is_some()
    }

    /// The value in `slot`, its chunk first made this arena's own (copied
    /// if a frozen view shares it).
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        match self.entry_mut(slot)? {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant(_) => None,
        }
    }

    fn entry_mut(&mut self, slot: usize) -> Option<&mut Entry<T>> {
        let chunk = self.chunks.get_mut(slot / CHUNK_SLOTS)?;
        Arc::make_mut(chunk).get_mut(slot % CHUNK_SLOTS)
    }

    /// Stores `value` and returns its slot.
    pub fn insert(&mut self, value: T) -> usize {
        if self.free != NO_SLOT {
            let slot = self.free as usize;
            let entry = self.entry_mut(slot).expect("free slot inside the arena");
            let Entry::Vacant(next) = *entry else {
                unreachable!("the free list holds an occupied slot");
            };
            *entry = Entry::Occupied(value);
            self.free = next;
            self.len += 1;
            return slot;
        }
        let slot = self.slots;
        if slot.is_multiple_of(CHUNK_SLOTS) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK_SLOTS)));
        }
        let chunk = self.chunks.last_mut().expect("a chunk was just ensured");
        Arc::make_mut(chunk).push(Entry::Occupied(value));
        self.slots += 1;
        self.len += 1;
        slot
    }

    /// Takes the value out of `slot`; `None` if it was free.
    /// Precondition for reuse: `slot < u32::MAX` (the file map bounds slots
    /// far below it).
    pub fn remove(&mut self, slot: usize) -> Option<T> {
        let free = self.free;
        let entry = self.entry_mut(slot)?;
        if matches!(entry, Entry::Vacant(_)) {
            return None;
        }
        let Entry::Occupied(value) = std::mem::replace(entry, Entry::Vacant(free)) else {
            unreachable!("checked occupied above");
        };
        self.free = slot as u32;
        self.len -= 1;
        Some(value)
    }

    /// Every value with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> + '_ {
        occupied(&self.chunks)
    }

    /// A view of every value as of now; later changes to the arena do not
    /// show in it. Costs one reference count per chunk.
    pub fn freeze(&self) -> Frozen<T> {
        Frozen {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }

    /// Panics if the free list and the counts disagree (tests).
    pub fn check_invariants(&self) {
        let mut vacant = vec![false; self.slots];
        let mut at = self.free;
        let mut free_count = 0;
        while at != NO_SLOT {
            let slot = at as usize;
            assert!(slot < self.slots, "free list points past the arena");
            assert!(!vacant[slot], "free list loops");
            vacant[slot] = true;
            free_count += 1;
            match &self.chunks[slot / CHUNK_SLOTS][slot % CHUNK_SLOTS] {
                Entry::Vacant(next) => at = *next,
                Entry::Occupied(_) => panic!("free list holds an occupied slot"),
            }
        }
        assert_eq!(self.iter().count(), self.len, "occupied count differs");
        assert_eq!(
            self.len + free_count,
            self.slots,
            "a vacant slot is unlinked"
        );
    }
}

impl<T> Frozen<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        occupied(&self.chunks).map(|(_, value)| value)
    }
}

fn occupied<T>(chunks: &[Chunk<T>]) -> impl Iterator<Item = (usize, &T)> + '_ {
    chunks
        .iter()
        .flat_map(|chunk| chunk.iter())
        .enumerate()
        .filter_map(|(slot, entry)| match entry {
            Entry::Occupied(value) => Some((slot, value)),
            Entry::Vacant(_) => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vacant entry fits in the niche of a file's pointer: an entry costs
    /// what the file does (8 MB per million files otherwise).
    #[test]
    fn an_entry_is_no_larger_than_a_file() {
        use crate::fsm::files::File;
        assert_eq!(
            std::mem::size_of::<Entry<File>>(),
            std::mem::size_of::<File>()
        );
    }

    #[test]
    fn slots_are_reused_most_recent_first() {
        let mut arena = Arena::default();
        let slots: Vec<usize> = (0..600).map(|n| arena.insert(n)).collect();
        assert_eq!(slots, (0..600).collect::<Vec<_>>());
        assert_eq!(arena.remove(3), Some(3));
        assert_eq!(arena.remove(300), Some(300));
        assert_eq!(arena.remove(300), None);
        arena.check_invariants();
        assert_eq!(arena.insert(1_000), 300);
        assert_eq!(arena.insert(1_001), 3);
        assert_eq!(arena.insert(1_002), 600);
        assert_eq!(arena.len(), 601);
        assert_eq!(arena.get(3), Some(&1_001));
        arena.check_invariants();
    }

    #[test]
    fn a_frozen_view_never_changes() {
        let mut arena = Arena::default();
        for n in 0..1_000u64 {
            arena.insert(n);
        }
        let frozen = arena.freeze();
        *arena.get_mut(5).expect("occupied") = 55;
        arena.remove(700);
        arena.insert(7_000);
        arena.insert(8_000);
        arena.check_invariants();
        assert_eq!(frozen.len(), 1_000);
        assert_eq!(
            frozen.iter().copied().collect::<Vec<_>>(),
            (0..1_000).collect::<Vec<_>>()
        );
        assert_eq!(arena.get(5), Some(&55));
        assert_eq!(arena.get(700), Some(&7_000));
        assert_eq!(arena.get(1_000), Some(&8_000));
        // Only the chunks changed since the freeze were copied.
        let shared = (0..arena.chunks.len())
            .filter(|&chunk| Arc::ptr_eq(&arena.chunks[chunk], &frozen.chunks[chunk]))
            .count();
        assert_eq!(
            shared, 1,
            "chunks 0, 2 and 3 were copied, 1 is still shared"
        );
    }

    #[test]
    fn iteration_skips_free_slots() {
        let mut arena = Arena::default();
        for n in 0..10 {
            arena.insert(n);
        }
        for slot in [0, 4, 9] {
            arena.remove(slot);
        }
        let seen: Vec<(usize, i32)> = arena.iter().map(|(slot, &n)| (slot, n)).collect();
        assert_eq!(
            seen,
            vec![(1, 1), (2, 2), (3, 3), (5, 5), (6, 6), (7, 7), (8, 8)]
        );
        assert_eq!(arena.freeze().iter().count(), 7);
    }
}
