//! The leader's view of one follower's replication (Raft §5.3, with the
//! flow control of etcd/raft-rs and thesis §10.2's pipelining).
//!
//! A follower is in one of two states:
//! - `Probe`: the leader does not know where the follower's log matches; it
//!   sends one AppendEntries at a time and waits for the answer (or for a
//!   heartbeat response, which unpauses it: lost messages must not stall).
//! - `Replicate`: the last answer was a success; the leader streams appends
//!   optimistically (`next_index` advances as it sends) with at most
//!   `inflight_appends_max` unacknowledged messages in flight.
//! - `Snapshot`: the follower needs entries the leader has compacted away
//!   (Raft §7); the leader streams its snapshot in chunks, at most
//!   `inflight_appends_max` chunks beyond what the follower acknowledged, and
//!   goes back to `Probe` after `index + 1` once it is installed.
//!
//! Invariants: `match_index < next_index`; `match_index` never decreases
//! within a term; the in-flight window holds increasing last indexes, all
//! above `match_index` once acknowledged ones are freed. A rejection moves the
//! follower back to `Probe`; a stale rejection (for an index already known to
//! match, or not the one being probed) is ignored.

use super::message::{Index, SnapshotMeta};
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

/// A snapshot being streamed to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSending {
    pub snapshot: SnapshotMeta,
    /// Bytes the follower says it holds.
    pub acked_offset: u64,
    /// Bytes sent so far (`acked_offset..sent_offset` are in flight).
    pub sent_offset: u64,
    /// The leader tick of the last chunk sent or acknowledgement heard.
    pub progress_tick: u64,
    /// The lowest answer below `acked_offset` heard since the last
    /// progress: stale, or the follower lost what it held. Believed only
    /// if nothing moves for a window timeout.
    pub lower_answer: Option<u64>,
}

/// One AppendEntries in flight: its last entry index and when it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflight {
    pub last_index: Index,
    pub sent_tick: u64,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// In `Probe`: one append is outstanding, send no other.
    pub probe_sent: bool,
    /// In `Replicate`: appends awaiting an answer, oldest first.
    pub inflight: VecDeque<Inflight>,
    /// The leader tick at which this follower last answered (CheckQuorum);
    /// 0, the start of the term, until then: its vote counts as contact.
    pub last_heard_tick: u64,
    /// Highest ReadIndex heartbeat round this follower has answered.
    pub read_round_acked: u64,
    /// It answered something in this term (a learner's promotion needs it).
    pub heard_this_term: bool,
    /// In `Snapshot`: the transfer.
    pub snapshot: Option<SnapshotSending>,
    /// The data dir (incarnation) whose answers this progress follows; 0
    /// until one answered. Another one under the id starts afresh.
    pub incarnation: u64,
}

impl Progress {
    pub fn new(next_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index: next_index.max(1),
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            last_heard_tick: 0,
            read_round_acked: 0,
            heard_this_term: false,
            snapshot: None,
            incarnation: 0,
        }
    }

    /// May another AppendEntries go to this follower now?
    pub fn can_send(&self, inflight_appends_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => self.inflight.len() < inflight_appends_max,
            ProgressState::Snapshot => false,
        }
    }

    /// Record that an append whose entries end at `last_index_sent` left.
    pub fn on_sent(&mut self, last_index_sent: Index, entry_count: usize, tick: u64) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
            ProgressState::Replicate => {
                if entry_count > 0 {
                    debug_assert!(last_index_sent >= self.next_index);
                    self.next_index = last_index_sent + 1;
                    self.inflight.push_back(Inflight {
                        last_index: last_index_sent,
                        sent_tick: tick,
                    });
                }
            }
        }
    }

    /// A success saying the follower matches through `match_index`. Returns
    /// true if `match_index` advanced.
    pub fn on_success(&mut self, match_index: Index) -> bool {
        let advanced = match_index > self.match_index;
        if advanced {
            self.match_index = match_index;
        }
        while self
            .inflight
            .front()
            .is_some_and(|sent| sent.last_index <= self.match_index)
        {
            self.inflight.pop_front();
        }
        match self.state {
            ProgressState::Probe => {
                // Any success proves the logs agree through `match_index`:
                // stream from there.
                self.state = ProgressState::Replicate;
                self.probe_sent = false;
                self.inflight.clear();
                self.next_index = self.match_index + 1;
            }
            ProgressState::Replicate => self.next_index = self.next_index.max(self.match_index + 1),
            // A stale append answer: the transfer goes on.
            ProgressState::Snapshot => self.next_index = self.next_index.max(self.match_index + 1),
        }
        debug_assert!(self.match_index < self.next_index);
        advanced
    }

    /// A rejection of the append whose `prev_log_index` was `rejected`, with
    /// the leader's computed `hint_next_index`. Returns false if stale.
    pub fn on_reject(&mut self, rejected: Index, hint_next_index: Index) -> bool {
        match self.state {
            ProgressState::Replicate if rejected <= self.match_index => return false,
            ProgressState::Probe if rejected + 1 != self.next_index => return false,
            ProgressState::Snapshot => return false,
            _ => {}
        }
        self.become_probe();
        // The next probe goes below the rejected index but never below what
        // is known to match.
        self.next_index = hint_next_index.min(rejected).max(self.match_index + 1);
        true
    }

    /// Back to one-at-a-time probing from just past the known match.
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = None;
        self.next_index = self.match_index + 1;
    }

    /// Start streaming `snapshot` from its first byte.
    pub fn become_snapshot(&mut self, snapshot: SnapshotMeta, tick: u64) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = Some(SnapshotSending {
            snapshot,
            acked_offset: 0,
            sent_offset: 0,
            progress_tick: tick,
            lower_answer: None,
        });
    }

    /// The next chunk to send, `(snapshot, offset, length_bytes)`, if the
    /// window has room; records it as sent. Snapshots are never empty (the
    /// node refuses to compact to a zero-byte one).
    pub fn next_snapshot_chunk(
        &mut self,
        chunk_bytes_max: u64,
        chunks_inflight_max: usize,
        tick: u64,
    ) -> Option<(SnapshotMeta, u64, u64)> {
        let sending = self.snapshot.as_mut()?;
        let size_bytes = sending.snapshot.size_bytes;
        let window_bytes = chunk_bytes_max.saturating_mul(chunks_inflight_max as u64);
        if sending.sent_offset >= size_bytes
            || sending.sent_offset - sending.acked_offset >= window_bytes
        {
            return None;
        }
        let offset = sending.sent_offset;
        let length_bytes = chunk_bytes_max.min(size_bytes - offset);
        sending.sent_offset = offset + length_bytes;
        sending.progress_tick = tick;
        Some((sending.snapshot, offset, length_bytes))
    }

    /// The follower holds `next_offset` bytes of snapshot `index`. Returns
    /// false if this is not the transfer in progress, or an answer older
    /// than one already taken.
    pub fn on_snapshot_ack(&mut self, index: Index, next_offset: u64, tick: u64) -> bool {
        let Some(sending) = self.snapshot.as_mut() else {
            return false;
        };
        if sending.snapshot.index != index || next_offset > sending.snapshot.size_bytes {
            return false;
        }
        if next_offset < sending.acked_offset && next_offset != 0 {
            // Most likely an older answer overtaken by a newer one:
            // following each at once would resend a window per stale
            // answer, and with duplication that multiplies without bound
            // (sim seed 6764061473182115213: 300k chunks for one 2 KB
            // snapshot). But a follower that restarted and then got a
            // delayed first chunk holds a little and answers exactly this
            // forever (sim seed 6728): remembered for
            // `maybe_restart_snapshot_window`.
            sending.lower_answer = Some(
                sending
                    .lower_answer
                    .map_or(next_offset, |lower| lower.min(next_offset)),
            );
            return false;
        }
        if next_offset < sending.acked_offset || next_offset > sending.sent_offset {
            // The follower lost what it held (it restarted, or discarded a
            // damaged file) or holds more than this transfer sent: go on
            // from what it holds.
            sending.sent_offset = next_offset;
        }
        sending.acked_offset = next_offset;
        sending.progress_tick = tick;
        sending.lower_answer = None;
        true
    }

    /// If chunks are outstanding and nothing moved for `ticks` (chunks were
    /// lost, or the link dropped), resend from the acknowledged offset, or
    /// from a lower answer heard meanwhile (the follower lost what it held:
    /// returns true, and the caller may start over with a newer snapshot).
    pub fn maybe_restart_snapshot_window(&mut self, tick: u64, ticks: u64) -> bool {
        let Some(sending) = self.snapshot.as_mut() else {
            return false;
        };
        if sending.sent_offset <= sending.acked_offset
            || tick.saturating_sub(sending.progress_tick) < ticks
        {
            return false;
        }
        let lost = sending.lower_answer.take();
        if let Some(held) = lost {
            sending.acked_offset = held;
        }
        sending.sent_offset = sending.acked_offset;
        sending.progress_tick = tick;
        lost.is_some()
    }

    /// The snapshot through `index` is installed: replicate from after it.
    pub fn on_snapshot_installed(&mut self, index: Index) {
        self.match_index = self.match_index.max(index);
        self.become_probe();
    }

    /// The tick at which the oldest unanswered append left, if any.
    pub fn oldest_inflight_tick(&self) -> Option<u64> {
        self.inflight.front().map(|sent| sent.sent_tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_then_replicates() {
        let mut progress = Progress::new(6);
        assert!(progress.can_send(4));
        progress.on_sent(6, 1, 0);
        assert!(!progress.can_send(4));
        assert!(progress.on_success(6));
        assert_eq!(progress.state, ProgressState::Replicate);
        assert_eq!(progress.next_index, 7);
    }

    #[test]
    fn replicate_window_is_bounded_and_freed_by_acks() {
        let mut progress = Progress::new(1);
        progress.on_success(0);
        for last in [2, 4, 6] {
            assert!(progress.can_send(3));
            progress.on_sent(last, 2, 0);
        }
        assert!(!progress.can_send(3));
        assert_eq!(progress.next_index, 7);
        progress.on_success(4);
        assert_eq!(progress.inflight.len(), 1);
        assert!(progress.can_send(3));
        assert_eq!(progress.next_index, 7);
    }

    #[test]
    fn rejection_falls_back_to_probe_and_stale_ones_are_ignored() {
        let mut progress = Progress::new(1);
        progress.on_success(3);
        progress.on_sent(5, 2, 0);
        progress.on_sent(7, 2, 0);
        assert!(!progress.on_reject(2, 1), "below match: stale");
        assert!(progress.on_reject(5, 4));
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!(progress.next_index, 4);
        progress.on_sent(7, 4, 0);
        assert!(!progress.on_reject(5, 4), "not the probe in flight: stale");
        assert!(progress.on_reject(3, 1));
        assert_eq!(progress.next_index, 4, "never below match + 1");
    }

    #[test]
    fn snapshot_chunks_stream_in_a_window_and_resume() {
        let snapshot = SnapshotMeta {
            index: 50,
            term: 3,
            size_bytes: 250,
        };
        let mut progress = Progress::new(1);
        progress.become_snapshot(snapshot, 0);
        assert!(!progress.can_send(4), "no appends while a snapshot streams");
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 1),
            Some((snapshot, 0, 100))
        );
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 1),
            Some((snapshot, 100, 100))
        );
        assert_eq!(progress.next_snapshot_chunk(100, 2, 1), None, "window full");
        assert!(progress.on_snapshot_ack(50, 100, 2));
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 2),
            Some((snapshot, 200, 50))
        );
        assert_eq!(progress.next_snapshot_chunk(100, 2, 2), None, "all sent");
        progress.maybe_restart_snapshot_window(3, 5);
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 3),
            None,
            "not stalled yet"
        );
        progress.maybe_restart_snapshot_window(9, 5);
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 9),
            Some((snapshot, 100, 100))
        );
        assert!(!progress.on_snapshot_ack(49, 0, 9), "another snapshot");
        assert!(
            !progress.on_snapshot_ack(50, 50, 9),
            "an overtaken answer is ignored, not followed"
        );
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 9),
            Some((snapshot, 200, 50)),
            "the window goes on from where it was, not from 50"
        );
        assert!(
            !progress.maybe_restart_snapshot_window(10, 5),
            "not stalled yet"
        );
        assert!(
            progress.maybe_restart_snapshot_window(14, 5),
            "stalled after a lower answer: the follower holds only that"
        );
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 14),
            Some((snapshot, 50, 100)),
            "resent from the lower answer"
        );
        assert!(progress.on_snapshot_ack(50, 150, 15));
        assert!(
            !progress.maybe_restart_snapshot_window(30, 5),
            "nothing outstanding beyond the answer"
        );
        assert!(progress.on_snapshot_ack(50, 0, 9), "the follower restarted");
        assert_eq!(
            progress.next_snapshot_chunk(100, 2, 9),
            Some((snapshot, 0, 100))
        );
        progress.on_snapshot_installed(50);
        assert_eq!(progress.state, ProgressState::Probe);
        assert_eq!((progress.match_index, progress.next_index), (50, 51));
    }

    #[test]
    fn hint_is_clamped_between_match_and_rejected() {
        let mut progress = Progress::new(1);
        progress.on_success(5);
        progress.on_sent(9, 4, 0);
        assert!(progress.on_reject(8, 2));
        assert_eq!(progress.next_index, 6);
        progress.on_sent(9, 4, 0);
        assert!(progress.on_reject(5, 100));
        assert_eq!(progress.next_index, 6, "never above the rejected index");
    }
}
