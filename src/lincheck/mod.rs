//! Linearizability checker for raftfs client histories (SPEC §3: "the history
//! of answers a cluster gives ... is linearizable per file").
//!
//! What it owns: a [`History`] of client operations (invocation time, answer,
//! answer time) recorded by a test harness against real processes or the
//! simulator, and [`check`], which decides whether that history could have
//! come from one correct raftfs cluster.
//!
//! The model (SPEC §2), per file: a register that is either absent or present
//! with a version and content (expiry is not modelled: histories must not use
//! it). Versions come from one cluster-wide counter, so the versions one file
//! sees are increasing but not contiguous. Checked:
//! - per file, by Wing–Gong/Lowe search with memoisation (as Porcupine does),
//!   split per file (P-compositionality): there is an order of the file's
//!   operations that respects real time (an operation answered before another
//!   was invoked comes first) in which every answer is the one the register
//!   gives: `write`/`cas` success returns a version strictly greater than any
//!   version this file had before; `cas` succeeds iff the file is present
//!   with exactly the expected version, answers `ERR_VERSION` with the current
//!   version otherwise and `ERR_FILE_NOT_FOUND` when absent; `delete` succeeds
//!   iff present; `read` returns the current version and content or not-found;
//!   `watch NAME VERSION` is a read observed at some point inside its own
//!   interval (SPEC §2), so it steps the model exactly as a read does, and
//!   its answer must also show another version than VERSION (absent counts
//!   as 0), which is a property of the answer alone (`answer_fits_command`).
//! - across files (`global`): one version is never seen on two files nor
//!   returned by two successful writes; and a write/cas invoked after another
//!   operation was answered gets a version greater than every version that
//!   operation saw (the counter only grows, in real time).
//!
//! Indeterminate operations (`ERR_INTERNAL`, timeout, dropped connection, or
//! never completed) may take effect at any point after their invocation or
//! never; their version is unknown until a later answer reveals it (the model
//! carries a lower bound, see `model`). Indeterminate reads and watches are
//! dropped.
//! Operations answered `ERR_REDIRECT` or `ERR_CMD_ERR` did not take effect:
//! the harness calls [`History::discard`] (or never records them).
//!
//! Not checked (documented gaps): expiry; when a watch is answered (that it
//! is answered at all after a change is liveness: the simulator checks it);
//! the per-connection order of
//! pipelined commands (SPEC §3: commands on one connection take effect in the
//! order sent) beyond what real time already implies; that the global
//! counter has no gaps (an indeterminate write may consume a number unseen);
//! cross-file orders other than the version rule above (files are checked
//! independently, which is exact for per-file linearizability).
//!
//! Bounds: the search stops with [`Verdict::Unknown`] when the time budget
//! runs out or its memo table passes [`MEMO_BYTES_MAX`]; it never hangs.
//! Cost: valid histories check in near-linear time at moderate concurrency;
//! proving a history invalid explores every configuration up to the
//! violation, which grows quickly with the number of indeterminate
//! operations pending at once (each may or may not have taken effect).

mod global;
mod model;
mod render;
mod search;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use model::{Action, Answer, FileOp};
use search::SearchResult;

/// Most bytes the memo table of one file's search may hold before the check
/// gives up with `Unknown` (kept here rather than in `limits` because it
/// bounds a test tool, not the node).
pub const MEMO_BYTES_MAX: usize = 1 << 30;

/// One client command, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write {
        name: Vec<u8>,
        content: Vec<u8>,
    },
    Cas {
        name: Vec<u8>,
        expected_version: u64,
        content: Vec<u8>,
    },
    Delete {
        name: Vec<u8>,
    },
    Read {
        name: Vec<u8>,
    },
    /// `watch NAME VERSION`.
    Watch {
        name: Vec<u8>,
        version: u64,
    },
}

impl Op {
    /// The file the command is about.
    pub fn name(&self) -> &[u8] {
        match self {
            Op::Write { name, .. }
            | Op::Cas { name, .. }
            | Op::Delete { name }
            | Op::Read { name }
            | Op::Watch { name, .. } => name,
        }
    }
}

/// The answer a client got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `OK VERSION` to a `write` or `cas`.
    Written { version: u64 },
    /// `ERR_VERSION CURRENT` to a `cas`.
    VersionMismatch { current: u64 },
    /// `OK` to a `delete`.
    Deleted,
    /// `ERR_FILE_NOT_FOUND` to a `cas`, `delete`, `read` or `watch`.
    NotFound,
    /// `CONTENTS VERSION ...` to a `read` or `watch`.
    Contents { version: u64, content: Vec<u8> },
    /// `ERR_INTERNAL`, a timeout or a dropped connection: the command may or
    /// may not have taken effect.
    Indeterminate,
}

/// Index of an operation in its [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub usize);

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Record {
    pub client: u64,
    pub op: Op,
    pub invoked_ns: u64,
    /// The answer and when it came; `None` while (or if never) answered.
    pub completion: Option<(Outcome, u64)>,
    /// Set by [`History::discard`]: the operation did not take effect.
    pub discarded: bool,
}

impl Record {
    /// When a definite answer came; `None` means the operation is
    /// indeterminate (its completion is at +infinity).
    fn definite_completion_ns(&self) -> Option<u64> {
        match &self.completion {
            Some((Outcome::Indeterminate, _)) | None => None,
            Some((_, at_ns)) => Some(*at_ns),
        }
    }
}

/// A concurrent client history. Times are nanoseconds on one clock shared by
/// every client of the history (e.g. from one `Instant` origin).
#[derive(Clone, Debug, Default)]
pub struct History {
    records: Vec<Record>,
}

impl History {
    pub fn new() -> Self {
        History {
            records: Vec::new(),
        }
    }

    /// Records that `client` sent `op` at `at_ns`.
    pub fn invoke(&mut self, client: u64, op: Op, at_ns: u64) -> OpId {
        self.records.push(Record {
            client,
            op,
            invoked_ns: at_ns,
            completion: None,
            discarded: false,
        });
        OpId(self.records.len() - 1)
    }

    /// Records the answer to `id`. An unknown id or a second answer is
    /// ignored (the first answer stands); a time before the invocation is
    /// taken as the invocation time.
    pub fn complete(&mut self, id: OpId, outcome: Outcome, at_ns: u64) {
        if let Some(record) = self.records.get_mut(id.0) {
            if record.completion.is_none() {
                let at_ns = at_ns.max(record.invoked_ns);
                record.completion = Some((outcome, at_ns));
            }
        }
    }

    /// Marks `id` as not having taken effect (`ERR_REDIRECT`, `ERR_CMD_ERR`):
    /// the checker ignores it.
    pub fn discard(&mut self, id: OpId) {
        if let Some(record) = self.records.get_mut(id.0) {
            record.discarded = true;
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Every operation on file `name`, one line each (for failure reports).
    pub fn describe_file(&self, name: &[u8]) -> String {
        self.records
            .iter()
            .enumerate()
            .filter(|(_, record)| record.op.name() == name)
            .map(|(index, record)| {
                let discarded = if record.discarded { " (discarded)" } else { "" };
                format!(
                    "{}{discarded}\n",
                    render::describe_record(OpId(index), record)
                )
            })
            .collect()
    }
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No valid order exists for `file` (or, for a cross-file violation, the
    /// first file involved); `explanation` names the operations involved.
    NotLinearizable {
        file: Vec<u8>,
        explanation: String,
    },
    /// The budget ran out before a decision.
    Unknown {
        reason: String,
    },
}

/// Figures from one check, for tests and reports.
#[derive(Clone, Debug, Default)]
pub struct CheckStats {
    pub files: usize,
    /// Operations checked (discarded ones and indeterminate reads excluded).
    pub operations: usize,
    pub indeterminate_operations: usize,
    /// Search steps (candidate operations tried) over all files.
    pub steps: u64,
    /// Configurations stored in the memo tables, over all files.
    pub memo_entries: u64,
    pub elapsed: Duration,
}

/// Decides whether `history` is linearizable, within `budget` of wall time.
pub fn check(history: &History, budget: Duration) -> Verdict {
    check_with_stats(history, budget).0
}

/// [`check`], also returning figures about the work done.
pub fn check_with_stats(history: &History, budget: Duration) -> (Verdict, CheckStats) {
    let started = Instant::now();
    let deadline = started
        .checked_add(budget)
        .unwrap_or_else(|| started + Duration::from_secs(86_400 * 365));
    let mut stats = CheckStats::default();
    let verdict = check_inner(history, deadline, &mut stats);
    stats.elapsed = started.elapsed();
    (verdict, stats)
}

fn check_inner(history: &History, deadline: Instant, stats: &mut CheckStats) -> Verdict {
    let records = &history.records;
    for (index, record) in records.iter().enumerate() {
        if record.discarded {
            continue;
        }
        if let Some((outcome, _)) = &record.completion {
            if !model::answer_fits_command(&record.op, outcome) {
                return Verdict::NotLinearizable {
                    file: record.op.name().to_vec(),
                    explanation: format!(
                        "this answer is not one the command can get: {}",
                        render::describe_record(OpId(index), record)
                    ),
                };
            }
        }
    }
    if let Some(violation) = global::check_versions(records) {
        return violation;
    }
    // Versions determinate writes took, on any file (see `model`).
    let taken: HashSet<u64> = records
        .iter()
        .filter(|record| !record.discarded)
        .filter_map(|record| match record.completion {
            Some((Outcome::Written { version }, _)) => Some(version),
            _ => None,
        })
        .collect();
    let mut by_file: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        if !record.discarded {
            by_file.entry(record.op.name()).or_default().push(index);
        }
    }
    stats.files = by_file.len();
    let mut unknown: Option<String> = None;
    for (name, indexes) in by_file {
        let ops = build_file_ops(records, &indexes, &taken);
        stats.operations += ops.len();
        stats.indeterminate_operations += ops.iter().filter(|op| op.return_ns.is_none()).count();
        match search::search(&ops, deadline, stats) {
            SearchResult::Linearizable => {}
            SearchResult::NotLinearizable(failure) => {
                return Verdict::NotLinearizable {
                    file: name.to_vec(),
                    explanation: render::explain_failure(name, records, &ops, &failure),
                };
            }
            SearchResult::OutOfBudget(reason) => {
                if unknown.is_none() {
                    unknown = Some(format!("file {}: {}", render::quote(name), reason));
                }
            }
        }
    }
    match unknown {
        Some(reason) => Verdict::Unknown { reason },
        None => Verdict::Linearizable,
    }
}

/// Turns one file's records into the search's compact form. Contents are
/// interned; content that no determinate read returned is only ever told
/// apart by reads, so all of it shares one id (`model::UNSEEN_CONTENT`),
/// which makes indeterminate writes of unseen content interchangeable for
/// the search. Content a read returns that no write sent gets an id that no
/// state holds. Indeterminate reads are dropped.
fn build_file_ops(records: &[Record], indexes: &[usize], taken: &HashSet<u64>) -> Vec<FileOp> {
    let mut written: HashMap<&[u8], u32> = HashMap::new();
    for &index in indexes {
        if let Op::Write { content, .. } | Op::Cas { content, .. } = &records[index].op {
            let next_id = written.len() as u32;
            written.entry(content.as_slice()).or_insert(next_id);
        }
    }
    let mut seen: HashSet<u32> = HashSet::new();
    for &index in indexes {
        if let Some((Outcome::Contents { content, .. }, _)) = &records[index].completion {
            if let Some(&id) = written.get(content.as_slice()) {
                seen.insert(id);
            }
        }
    }
    let sent_id = |content: &Vec<u8>| match written.get(content.as_slice()) {
        Some(id) if seen.contains(id) => *id,
        _ => model::UNSEEN_CONTENT,
    };
    let unwritten_id = written.len() as u32;
    let mut ops = Vec::with_capacity(indexes.len());
    for &index in indexes {
        let record = &records[index];
        let action = match &record.op {
            Op::Write { content, .. } => Action::Write {
                content: sent_id(content),
            },
            Op::Cas {
                expected_version,
                content,
                ..
            } => Action::Cas {
                expected: *expected_version,
                content: sent_id(content),
            },
            Op::Delete { .. } => Action::Delete,
            // The version condition is checked on the answer up front.
            Op::Read { .. } | Op::Watch { .. } => Action::Read,
        };
        let answer = match &record.completion {
            None | Some((Outcome::Indeterminate, _)) => Answer::Unknown,
            Some((Outcome::Written { version }, _)) => Answer::Written(*version),
            Some((Outcome::VersionMismatch { current }, _)) => Answer::Mismatch(*current),
            Some((Outcome::Deleted, _)) => Answer::Deleted,
            Some((Outcome::NotFound, _)) => Answer::NotFound,
            Some((Outcome::Contents { version, content }, _)) => Answer::Contents {
                version: *version,
                content: written
                    .get(content.as_slice())
                    .copied()
                    .unwrap_or(unwritten_id),
            },
        };
        if matches!((action, answer), (Action::Read, Answer::Unknown)) {
            continue;
        }
        let pins_taken = FileOp::pinned_version(&action, &answer)
            .is_some_and(|version| taken.contains(&version));
        ops.push(FileOp {
            action,
            answer,
            call_ns: record.invoked_ns,
            return_ns: record.definite_completion_ns(),
            record: index,
            pins_taken,
        });
    }
    ops
}
