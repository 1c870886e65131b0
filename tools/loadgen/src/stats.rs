//! Counters and latency histograms of one worker, and their merge.
//!
//! Owns: `Stats` (answers and errors per command kind, an HdrHistogram of
//! microseconds overall and per kind, connection counters), `ErrorKind` and
//! `Answer`. Invariants: every command that leaves the in-flight queue is
//! counted exactly once, as an answer (recorded in the histograms) or as an
//! error (not recorded in them); `ERR_FILE_NOT_FOUND` and `ERR_VERSION` are
//! answers. Leaves out: printing (see `report`).

use hdrhistogram::Histogram;

use crate::config::Kind;
use crate::limits::{HISTOGRAM_SIGNIFICANT_FIGURES, MAX_TRACKED_LATENCY_US};

/// Why a command failed (SPEC §4's error list, plus unparsable or mismatched replies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `ERR_CMD_ERR`.
    CommandError,
    /// `ERR_INTERNAL`.
    Internal,
    /// A redirect it cannot follow: a loop (too many hops), an unresolvable or unreachable address.
    Redirect,
    /// Unanswered for `--timeout-ms`.
    Timeout,
    /// Unanswered when its connection closed.
    Closed,
    /// A reply that does not parse, or does not fit the command it answers.
    Protocol,
}

impl ErrorKind {
    /// Every kind, in the order of `Stats::errors`.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::CommandError,
        ErrorKind::Internal,
        ErrorKind::Redirect,
        ErrorKind::Timeout,
        ErrorKind::Closed,
        ErrorKind::Protocol,
    ];

    /// The name used in the report and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::CommandError => "cmd_err",
            ErrorKind::Internal => "internal",
            ErrorKind::Redirect => "redirect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// Position in `ErrorKind::ALL`.
    pub fn index(self) -> usize {
        match self {
            ErrorKind::CommandError => 0,
            ErrorKind::Internal => 1,
            ErrorKind::Redirect => 2,
            ErrorKind::Timeout => 3,
            ErrorKind::Closed => 4,
            ErrorKind::Protocol => 5,
        }
    }
}

/// A definite answer to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `CONTENTS`, `OK VERSION` or `OK`.
    Success,
    /// `ERR_FILE_NOT_FOUND`.
    NotFound,
    /// `ERR_VERSION`.
    VersionMismatch,
}

/// A latency histogram in microseconds with loadgen's bounds.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, HISTOGRAM_SIGNIFICANT_FIGURES)
        .expect("the constant histogram bounds are valid")
}

/// Counters of one command kind.
#[derive(Clone, Debug)]
pub struct KindStats {
    /// Commands generated (a re-send after a redirect is not counted again).
    pub sent: u64,
    pub success: u64,
    pub not_found: u64,
    pub version_mismatch: u64,
    pub errors: u64,
    /// Latency of the answers, microseconds.
    pub latency_us: Histogram<u64>,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats {
            sent: 0,
            success: 0,
            not_found: 0,
            version_mismatch: 0,
            errors: 0,
            latency_us: new_latency_histogram(),
        }
    }

    /// Answers of this kind (success, not found or version mismatch).
    pub fn answered(&self) -> u64 {
        self.success + self.not_found + self.version_mismatch
    }
}

/// Everything one worker counted in one phase.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of every answer, microseconds.
    pub latency_us: Histogram<u64>,
    /// Indexed by `Kind::index`.
    pub kinds: [KindStats; 4],
    /// Indexed by `ErrorKind::index`.
    pub errors: [u64; 6],
    /// Redirects followed (one per reconnect caused by `ERR_REDIRECT`). In a
    /// `Report` this and the two connection counters cover the whole run.
    pub redirects_followed: u64,
    /// Connections established (the first of each client included).
    pub connections_opened: u64,
    /// Connection attempts that failed (refused, unreachable, timed out).
    pub connect_failures: u64,
    /// Open loop: operations due before the end that were never sent (no
    /// pipeline slot was free); neither answers nor errors.
    pub unsent: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// All zero.
    pub fn new() -> Stats {
        Stats {
            latency_us: new_latency_histogram(),
            kinds: [
                KindStats::new(),
                KindStats::new(),
                KindStats::new(),
                KindStats::new(),
            ],
            errors: [0; 6],
            redirects_followed: 0,
            connections_opened: 0,
            connect_failures: 0,
            unsent: 0,
        }
    }

    /// Counts a generated command.
    pub fn record_sent(&mut self, kind: Kind) {
        self.kinds[kind.index()].sent += 1;
    }

    /// Counts an answer and records its latency.
    pub fn record_answer(&mut self, kind: Kind, answer: Answer, latency_us: u64) {
        let kind_stats = &mut self.kinds[kind.index()];
        match answer {
            Answer::Success => kind_stats.success += 1,
            Answer::NotFound => kind_stats.not_found += 1,
            Answer::VersionMismatch => kind_stats.version_mismatch += 1,
        }
        kind_stats.latency_us.saturating_record(latency_us);
        self.latency_us.saturating_record(latency_us);
    }

    /// Counts a failed command.
    pub fn record_error(&mut self, kind: Kind, error: ErrorKind) {
        self.kinds[kind.index()].errors += 1;
        self.errors[error.index()] += 1;
    }

    /// Commands answered (errors excluded).
    pub fn ops(&self) -> u64 {
        self.kinds.iter().map(KindStats::answered).sum()
    }

    /// Commands failed, all kinds.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// The count of one error kind.
    pub fn error_count(&self, error: ErrorKind) -> u64 {
        self.errors[error.index()]
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so adding cannot fail; saturate rather than panic anyway.
        let _ = self.latency_us.add(&other.latency_us);
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds.iter()) {
            mine.sent += theirs.sent;
            mine.success += theirs.success;
            mine.not_found += theirs.not_found;
            mine.version_mismatch += theirs.version_mismatch;
            mine.errors += theirs.errors;
            let _ = mine.latency_us.add(&theirs.latency_us);
        }
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors.iter()) {
            *mine += theirs;
        }
        self.redirects_followed += other.redirects_followed;
        self.connections_opened += other.connections_opened;
        self.connect_failures += other.connect_failures;
        self.unsent += other.unsent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let mut left = Stats::new();
        left.record_sent(Kind::Read);
        left.record_answer(Kind::Read, Answer::NotFound, 10);
        let mut right = Stats::new();
        right.record_sent(Kind::Cas);
        right.record_answer(Kind::Cas, Answer::VersionMismatch, 1000);
        right.record_error(Kind::Cas, ErrorKind::Timeout);
        right.connect_failures = 2;
        left.merge(&right);
        assert_eq!(left.ops(), 2);
        assert_eq!(left.error_total(), 1);
        assert_eq!(left.error_count(ErrorKind::Timeout), 1);
        assert_eq!(left.latency_us.len(), 2);
        assert_eq!(left.kinds[Kind::Cas.index()].sent, 1);
        assert_eq!(left.connect_failures, 2);
        assert!(left.latency_us.max() >= 999);
    }
}
