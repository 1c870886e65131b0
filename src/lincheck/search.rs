//! Wing–Gong/Lowe search for one file, with Porcupine's memoisation.
//!
//! Completed operations sit in a time-ordered doubly linked list of call and
//! return entries (a call at the same instant as a return comes first, so
//! touching operations count as concurrent: never a false alarm). The search
//! repeatedly takes a call entry that precedes the first return entry still
//! in the list, steps the model, and removes the operation; at a return
//! entry it backtracks. A configuration (set of linearized operations, model
//! state) is explored at most once.
//!
//! Indeterminate operations have no return entry; they live in a second list
//! and are tried after the completed candidates, only for their effect (not
//! taking effect is the same as taking effect at the very end). Pruning, all
//! of it exact (it never hides a valid order):
//! - dominance in the memo: a configuration is skipped when one with the
//!   same completed operations, a dominating state (`RegisterState::
//!   dominates`) and a subset of the indeterminate operations spent was
//!   explored in the same mode; trying indeterminate operations last lets
//!   the cheaper configuration come first and prune the others;
//! - symmetry: indeterminate operations with the same action (all deletes;
//!   all writes of content nobody read) are interchangeable once invoked,
//!   so only the earliest unspent one of each class is tried;
//! - an indeterminate write or delete right after another indeterminate
//!   operation is never tried: without the earlier one the state dominates.
//!   The mode (last placed operation indeterminate or not) is part of the
//!   memo key, since such configurations are explored with that restriction.
//!
//! Invariants: lift/unlift happen in stack order (dancing links); the search
//! succeeds exactly when every completed operation is linearized.

use std::collections::HashMap;
use std::time::Instant;

use super::model::{step, Action, FileOp, RegisterState};
use super::{CheckStats, MEMO_BYTES_MAX};

/// Steps between two looks at the clock.
const STEPS_PER_CLOCK_CHECK: u64 = 1 << 10;
/// Linearized operations kept for the explanation of a failure.
const RECENT_KEPT: usize = 8;

pub(crate) enum SearchResult {
    Linearizable,
    NotLinearizable(Failure),
    OutOfBudget(String),
}

/// The deepest configuration the search reached (most completed operations
/// linearized): where the explanation of a failure starts.
pub(crate) struct Failure {
    pub linearized: Bits,
    pub state: RegisterState,
    /// The last operations of that order (indexes into the file's ops).
    pub recent: Vec<usize>,
    pub completed_total: usize,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn new(length: usize) -> Bits {
        Bits {
            words: vec![0; length.div_ceil(64)],
        }
    }
    fn set(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }
    fn clear(&mut self, index: usize) {
        self.words[index / 64] &= !(1 << (index % 64));
    }
    pub fn get(&self, index: usize) -> bool {
        self.words[index / 64] & (1 << (index % 64)) != 0
    }
    fn is_subset_of(&self, other: &Bits) -> bool {
        self.words
            .iter()
            .zip(&other.words)
            .all(|(mine, theirs)| mine & !theirs == 0)
    }
    fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Head,
    Tail,
    Call,
    Return,
}

#[derive(Clone, Copy)]
struct Node {
    prev: usize,
    next: usize,
    kind: Kind,
    /// Index into the completed (or indeterminate) operations.
    op: usize,
}

fn unlink(nodes: &mut [Node], index: usize) {
    let Node { prev, next, .. } = nodes[index];
    nodes[prev].next = next;
    nodes[next].prev = prev;
}

fn relink(nodes: &mut [Node], index: usize) {
    let Node { prev, next, .. } = nodes[index];
    nodes[prev].next = index;
    nodes[next].prev = index;
}

/// A list with head sentinel 0, `entries` in order, tail sentinel last.
fn build_list(entries: &[(Kind, usize)]) -> Vec<Node> {
    let length = entries.len() + 2;
    let mut nodes = Vec::with_capacity(length);
    nodes.push(Node {
        prev: 0,
        next: 1,
        kind: Kind::Head,
        op: 0,
    });
    for (position, &(kind, op)) in entries.iter().enumerate() {
        nodes.push(Node {
            prev: position,
            next: position + 2,
            kind,
            op,
        });
    }
    nodes.push(Node {
        prev: length - 2,
        next: length - 1,
        kind: Kind::Tail,
        op: 0,
    });
    nodes
}

struct MemoEntry {
    completed: Bits,
    state: RegisterState,
    indeterminate: Bits,
}

/// Memo table: visited configurations, bucketed by a hash of the completed
/// operations linearized, the content and the mode (whether the last
/// operation placed was indeterminate: see `search`), so that entries whose
/// states differ only in version bound share a bucket.
struct Memo {
    buckets: HashMap<u64, Vec<MemoEntry>>,
    bytes: usize,
    entries: u64,
}

impl Memo {
    /// Records the configuration; false if it, or one that dominates it
    /// (same completed operations, a dominating state, a subset of the
    /// indeterminate ones spent, same mode), was already explored.
    fn admit(
        &mut self,
        hash: u64,
        completed: &Bits,
        state: RegisterState,
        indeterminate: &Bits,
    ) -> bool {
        let bucket = self.buckets.entry(hash).or_default();
        let seen = bucket.iter().any(|entry| {
            entry.state.dominates(&state)
                && entry.completed == *completed
                && entry.indeterminate.is_subset_of(indeterminate)
        });
        if seen {
            return false;
        }
        self.bytes +=
            completed.bytes() + indeterminate.bytes() + std::mem::size_of::<MemoEntry>() + 16;
        self.entries += 1;
        bucket.push(MemoEntry {
            completed: completed.clone(),
            state,
            indeterminate: indeterminate.clone(),
        });
        true
    }
}

fn mix(mut value: u64) -> u64 {
    // splitmix64 finaliser.
    value = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// Hash of what a dominating state must share: the content, and the mode.
fn state_hash(state: &RegisterState, after_indeterminate: bool) -> u64 {
    let content = state.content.map_or(0, |id| u64::from(id) + 1);
    mix(content ^ (u64::from(after_indeterminate) << 40))
}

enum Frame {
    Completed {
        index: usize,
        previous: RegisterState,
    },
    Indeterminate {
        index: usize,
        previous: RegisterState,
        frontier_ns: u64,
    },
}

enum Cursor {
    Main(usize),
    Indeterminate { node: usize, frontier_ns: u64 },
}

/// Searches for a linearization of one file's operations.
pub(crate) fn search(ops: &[FileOp], deadline: Instant, stats: &mut CheckStats) -> SearchResult {
    let completed: Vec<&FileOp> = ops.iter().filter(|op| op.return_ns.is_some()).collect();
    let indeterminate: Vec<&FileOp> = ops.iter().filter(|op| op.return_ns.is_none()).collect();
    let indexes = Indexes {
        completed: ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.return_ns.is_some())
            .map(|(index, _)| index)
            .collect(),
        indeterminate: ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.return_ns.is_none())
            .map(|(index, _)| index)
            .collect(),
    };

    // Main list: (time, call-before-return, op) sorted.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(completed.len() * 2);
    for (index, op) in completed.iter().enumerate() {
        events.push((op.call_ns, 0, index));
        events.push((op.return_ns.unwrap_or(u64::MAX), 1, index));
    }
    events.sort_unstable();
    let entries: Vec<(Kind, usize)> = events
        .iter()
        .map(|&(_, kind, op)| (if kind == 0 { Kind::Call } else { Kind::Return }, op))
        .collect();
    let mut main = build_list(&entries);
    let mut call_node = vec![0; completed.len()];
    let mut return_node = vec![0; completed.len()];
    for (position, &(kind, op)) in entries.iter().enumerate() {
        match kind {
            Kind::Call => call_node[op] = position + 1,
            _ => return_node[op] = position + 1,
        }
    }
    let mut order: Vec<usize> = (0..indeterminate.len()).collect();
    order.sort_by_key(|&index| (indeterminate[index].call_ns, index));
    let mut side = build_list(
        &order
            .iter()
            .map(|&index| (Kind::Call, index))
            .collect::<Vec<_>>(),
    );
    let mut side_node = vec![0; indeterminate.len()];
    for (position, &index) in order.iter().enumerate() {
        side_node[index] = position + 1;
    }
    // Indeterminate operations with the same action are interchangeable
    // once available (the frontier only grows along a path, so an available
    // one stays available): only the earliest unspent one of each class is
    // tried, so the spent ones of a class are always its earliest.
    let mut classes: HashMap<Action, usize> = HashMap::new();
    let mut class_of = vec![0; indeterminate.len()];
    let mut rank_in_class = vec![0; indeterminate.len()];
    let mut class_sizes: Vec<usize> = Vec::new();
    for &index in &order {
        let next_class = classes.len();
        let class = *classes
            .entry(indeterminate[index].action)
            .or_insert(next_class);
        if class == class_sizes.len() {
            class_sizes.push(0);
        }
        class_of[index] = class;
        rank_in_class[index] = class_sizes[class];
        class_sizes[class] += 1;
    }
    let mut class_spent = vec![0usize; class_sizes.len()];
    let zobrist: Vec<u64> = (0..completed.len())
        .map(|index| mix(index as u64 ^ 0x5eed))
        .collect();

    let mut memo = Memo {
        buckets: HashMap::new(),
        bytes: 0,
        entries: 0,
    };
    let mut linearized = Bits::new(completed.len());
    let mut spent = Bits::new(indeterminate.len());
    let mut completed_hash = 0u64;
    let mut remaining = completed.len();
    let mut state = RegisterState::INITIAL;
    let mut stack: Vec<Frame> = Vec::new();
    let mut best = Deepest::take(&linearized, &spent, state, &stack, &indexes);
    let mut best_depth = 0;
    let mut cursor = Cursor::Main(main[0].next);
    let mut steps = 0u64;

    let result = loop {
        if remaining == 0 {
            break SearchResult::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(STEPS_PER_CLOCK_CHECK) {
            if Instant::now() >= deadline {
                break SearchResult::OutOfBudget(format!(
                    "time budget ran out after {steps} steps with {} of {} operations placed at best",
                    best_depth,
                    completed.len()
                ));
            }
            if memo.bytes > MEMO_BYTES_MAX {
                break SearchResult::OutOfBudget(format!(
                    "memo table passed {MEMO_BYTES_MAX} bytes"
                ));
            }
        }
        let mut backtrack = false;
        match cursor {
            Cursor::Main(node) => match main[node].kind {
                Kind::Call => {
                    let index = main[node].op;
                    cursor = Cursor::Main(main[node].next);
                    if let Ok(next) = step(state, completed[index]) {
                        linearized.set(index);
                        let hash = completed_hash ^ zobrist[index];
                        if memo.admit(hash ^ state_hash(&next, false), &linearized, next, &spent) {
                            stack.push(Frame::Completed {
                                index,
                                previous: state,
                            });
                            state = next;
                            completed_hash = hash;
                            remaining -= 1;
                            unlink(&mut main, call_node[index]);
                            unlink(&mut main, return_node[index]);
                            cursor = Cursor::Main(main[0].next);
                            let depth = completed.len() - remaining;
                            if depth > best_depth {
                                best_depth = depth;
                                best = Deepest::take(&linearized, &spent, state, &stack, &indexes);
                            }
                        } else {
                            linearized.clear(index);
                        }
                    }
                }
                Kind::Return => {
                    let frontier_ns = completed[main[node].op].return_ns.unwrap_or(u64::MAX);
                    cursor = Cursor::Indeterminate {
                        node: side[0].next,
                        frontier_ns,
                    };
                }
                // Unreachable while a completed operation remains (its return
                // entry comes first); backtracking is the safe answer.
                Kind::Head | Kind::Tail => backtrack = true,
            },
            Cursor::Indeterminate { node, frontier_ns } => {
                let index = side[node].op;
                if side[node].kind != Kind::Call || indeterminate[index].call_ns > frontier_ns {
                    backtrack = true;
                } else {
                    cursor = Cursor::Indeterminate {
                        node: side[node].next,
                        frontier_ns,
                    };
                    // An indeterminate write or delete straight after another
                    // indeterminate operation is never needed: dropping the
                    // earlier one leaves a dominating state.
                    let after_indeterminate =
                        matches!(stack.last(), Some(Frame::Indeterminate { .. }));
                    let useless = (after_indeterminate && indeterminate[index].overwrites())
                        || rank_in_class[index] != class_spent[class_of[index]];
                    if let (false, Ok(next)) = (useless, step(state, indeterminate[index])) {
                        spent.set(index);
                        if memo.admit(
                            completed_hash ^ state_hash(&next, true),
                            &linearized,
                            next,
                            &spent,
                        ) {
                            stack.push(Frame::Indeterminate {
                                index,
                                previous: state,
                                frontier_ns,
                            });
                            state = next;
                            class_spent[class_of[index]] += 1;
                            unlink(&mut side, side_node[index]);
                            cursor = Cursor::Main(main[0].next);
                        } else {
                            spent.clear(index);
                        }
                    }
                }
            }
        }
        if backtrack {
            match stack.pop() {
                None => break SearchResult::NotLinearizable(best.into_failure(&indexes)),
                Some(Frame::Completed { index, previous }) => {
                    state = previous;
                    linearized.clear(index);
                    completed_hash ^= zobrist[index];
                    remaining += 1;
                    relink(&mut main, return_node[index]);
                    relink(&mut main, call_node[index]);
                    cursor = Cursor::Main(main[call_node[index]].next);
                }
                Some(Frame::Indeterminate {
                    index,
                    previous,
                    frontier_ns,
                }) => {
                    state = previous;
                    spent.clear(index);
                    class_spent[class_of[index]] -= 1;
                    relink(&mut side, side_node[index]);
                    cursor = Cursor::Indeterminate {
                        node: side[side_node[index]].next,
                        frontier_ns,
                    };
                }
            }
        }
    };
    stats.steps += steps;
    stats.memo_entries += memo.entries;
    result
}

/// The deepest configuration so far, in the search's own indexes (cheap to
/// take: it is taken every time the search goes deeper).
struct Deepest {
    linearized: Bits,
    spent: Bits,
    state: RegisterState,
    recent: Vec<usize>,
}

impl Deepest {
    fn take(
        linearized: &Bits,
        spent: &Bits,
        state: RegisterState,
        stack: &[Frame],
        indexes: &Indexes,
    ) -> Deepest {
        let recent = stack[stack.len().saturating_sub(RECENT_KEPT)..]
            .iter()
            .map(|frame| match frame {
                Frame::Completed { index, .. } => indexes.completed[*index],
                Frame::Indeterminate { index, .. } => indexes.indeterminate[*index],
            })
            .collect();
        Deepest {
            linearized: linearized.clone(),
            spent: spent.clone(),
            state,
            recent,
        }
    }

    /// The failure, with bits over the file's operations.
    fn into_failure(self, indexes: &Indexes) -> Failure {
        let total = indexes.completed.len() + indexes.indeterminate.len();
        let mut bits = Bits::new(total);
        for (index, &op) in indexes.completed.iter().enumerate() {
            if self.linearized.get(index) {
                bits.set(op);
            }
        }
        for (index, &op) in indexes.indeterminate.iter().enumerate() {
            if self.spent.get(index) {
                bits.set(op);
            }
        }
        Failure {
            linearized: bits,
            state: self.state,
            recent: self.recent,
            completed_total: indexes.completed.len(),
        }
    }
}

/// Where the completed and the indeterminate operations sit among the file's.
struct Indexes {
    completed: Vec<usize>,
    indeterminate: Vec<usize>,
}
