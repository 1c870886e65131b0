//! Cluster time (SPEC §2): the clock expiry runs on, agreed through the log.
//!
//! A new leader starts from the largest stamp seen in its log or applied
//! state (the wall clock only if there is none: the first leader of a
//! fresh cluster) and advances it with the driver's monotonic clock;
//! proposals carry it as their stamp and apply uses only that stamp. So
//! cluster time never goes backwards, and a wall-clock jump on any node
//! changes nothing.
//!
//! While files have deadlines, a leader with nothing else to propose writes
//! a stamp-only entry when a deadline passes (reads judge liveness at the
//! applied cluster time, so this is what makes an expiry visible) and at
//! least every `CLUSTER_TIME_STAMP_INTERVAL_MS` (a new leader starts from
//! the last stamp in its log; without this, a leader change after a quiet
//! spell would make files expire late by the whole spell).
//!
//! Invariants: stamps proposed by one leader never decrease; a leader's
//! cluster time is never below a stamp it has seen.

use super::apply::Waiting;
use super::{Now, Replica};
use crate::fsm::command::encode_batch;
use crate::limits;
use crate::raft::Role;

impl Replica {
    pub(super) fn update_leader_clock(&mut self, now: Now) {
        let term = self.raft.term();
        match (self.raft.role(), self.leader_clock) {
            (Role::Leader, Some((_, _, clock_term))) if clock_term == term => {}
            (Role::Leader, _) => {
                let base_ms = self.max_stamp_ms.max(self.fsm.cluster_time_ms());
                let base_ms = if base_ms == 0 {
                    now.wall_ms.max(1)
                } else {
                    base_ms
                };
                self.leader_clock = Some((base_ms, now.monotonic_us, term));
            }
            _ => self.leader_clock = None,
        }
    }

    /// The leader's cluster time now; never below a stamp already proposed.
    /// Off a leader: the newest stamp seen.
    pub(super) fn cluster_time_ms(&self, now: Now) -> u64 {
        match self.leader_clock {
            Some((base_ms, since_us, _)) => {
                let elapsed_ms = now.monotonic_us.saturating_sub(since_us) / 1_000;
                base_ms
                    .saturating_add(elapsed_ms)
                    .max(self.last_proposed_stamp_ms)
            }
            None => self.max_stamp_ms.max(self.fsm.cluster_time_ms()),
        }
    }

    /// Propose a stamp-only entry if due (see the module doc). It waits
    /// like any proposal, with no client.
    pub(super) fn maybe_stamp_cluster_time(&mut self, now: Now) {
        if !self.is_ready_for_reads() || !self.batches.is_empty() {
            return;
        }
        let Some(deadline_ms) = self.fsm.next_deadline_ms() else {
            return;
        };
        let stamp_ms = self.cluster_time_ms(now);
        let carried = self
            .waiting
            .last_key_value()
            .is_some_and(|(_, w)| w.stamp_ms >= deadline_ms);
        let expiry_due =
            deadline_ms <= stamp_ms && self.fsm.cluster_time_ms() < deadline_ms && !carried;
        let stamp_stale = stamp_ms
            >= self
                .last_proposed_stamp_ms
                .saturating_add(limits::CLUSTER_TIME_STAMP_INTERVAL_MS);
        if !expiry_due && !stamp_stale {
            return;
        }
        if let Ok(index) = self.raft.propose(encode_batch(stamp_ms, &[])) {
            self.last_proposed_stamp_ms = stamp_ms;
            let term = self.raft.term();
            self.waiting.insert(
                (index, term),
                Waiting {
                    stamp_ms,
                    clients: Vec::new(),
                    reads: Vec::new(),
                    deadline_us: now.after_ms(limits::COMMAND_TIMEOUT_MS),
                    proposed_us: now.monotonic_us,
                    expired: false,
                },
            );
        }
    }
}
