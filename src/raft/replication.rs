//! Log replication (Raft §5.3), the commit rule (§5.4.2) and heartbeats, as
//! methods on `Node`.
//!
//! Leader side: each follower's `Progress` decides what to send (one probe
//! at a time, or a pipelined window of `inflight_appends_max` messages of at
//! most `append_bytes_max` entry bytes). A rejection carries a conflict hint
//! so the leader skips a whole conflicting term per round trip. A follower
//! that stops answering appends is re-probed when its heartbeat response shows
//! it lagging, so lost messages never stall replication.
//!
//! Commit rule: the leader commits the highest index stored on a majority,
//! counting itself only up to what it has durably `persisted` (thesis
//! §10.2.1), and only if that entry is of its own term (Figure 8: an older
//! entry on a majority may still be overwritten).
//!
//! Follower side: the §5.3 consistency check on `prev_log_index/term`; merge
//! by `Log::merge` (replacing a conflicting suffix, never a committed entry);
//! commit up to what the message proves matches. Every accepted write becomes
//! a `PersistEntries` before the acknowledgement is sent.

use super::log::is_well_formed;
use super::membership::{is_configuration_entry, Configuration};
use super::message::{Index, Message, NodeId, Term};
use super::node::{Node, Role};
use super::progress::{Progress, ProgressState};
use super::{Action, Entry};

impl Node {
    /// Send whatever each follower's window allows.
    pub(super) fn broadcast_append(&mut self) {
        for peer in self.replication_peers() {
            while self.maybe_send_append(peer) {}
        }
    }

    /// Send one AppendEntries to `to` if its progress allows; true if sent and
    /// another might follow (Replicate state with room left).
    pub(super) fn maybe_send_append(&mut self, to: NodeId) -> bool {
        let last_index = self.log.last_index();
        let commit_index = self.commit_index;
        let window = self.config.inflight_appends_max;
        let bytes_max = self.config.append_bytes_max;
        let Some(leader) = self.leader.as_mut() else {
            return false;
        };
        let ticks = leader.ticks;
        let Some(progress) = leader.progress.get_mut(&to) else {
            return false;
        };
        if !progress.can_send(window) {
            return false;
        }
        if progress.next_index <= self.log.snapshot_index() {
            // The entries it needs are compacted away (Raft §7).
            self.start_snapshot_transfer(to);
            return false;
        }
        if progress.state == ProgressState::Replicate && progress.next_index > last_index {
            return false;
        }
        let prev_log_index = progress.next_index - 1;
        let Some(prev_log_term) = self.log.term_at(prev_log_index) else {
            // Cannot happen: next_index is past the snapshot and <= last + 1.
            debug_assert!(
                false,
                "next_index {} past the log end {last_index}",
                progress.next_index
            );
            progress.become_probe();
            return false;
        };
        let entries = self.log.entries_for_append(progress.next_index, bytes_max);
        let last_sent = prev_log_index + entries.len() as Index;
        progress.on_sent(last_sent, entries.len(), ticks);
        let more = progress.state == ProgressState::Replicate && !entries.is_empty();
        self.send(
            to,
            Message::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: commit_index,
            },
        );
        more
    }

    /// One heartbeat round: liveness, commit propagation, and a new ReadIndex
    /// round number confirming leadership for every read registered before.
    pub(super) fn broadcast_heartbeat(&mut self) {
        let commit_index = self.commit_index;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        leader.heartbeat_elapsed_ticks = 0;
        leader.read_round += 1;
        let read_round = leader.read_round;
        // Tell each follower only of a commit it provably holds, so it can
        // commit without a log check (its log matches through match_index).
        let messages: Vec<(NodeId, Index)> = leader
            .progress
            .iter()
            .map(|(peer, progress)| (*peer, progress.match_index.min(commit_index)))
            .collect();
        for (peer, leader_commit) in messages {
            self.send(
                peer,
                Message::Heartbeat {
                    leader_commit,
                    read_round,
                },
            );
        }
        self.maybe_confirm_reads();
    }

    /// Follower: the §5.3 AppendEntries receiver rules.
    pub(super) fn handle_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        entries: &[Entry],
        leader_commit: Index,
    ) {
        debug_assert_eq!(self.role, Role::Follower);
        let snapshot_index = self.log.snapshot_index();
        if prev_log_index < snapshot_index {
            // A stale or overlapping append: entries through our snapshot are
            // committed, so they match; consider only the ones after it.
            let skip = (snapshot_index - prev_log_index).min(entries.len() as Index) as usize;
            let rest = &entries[skip..];
            if rest.is_empty() {
                self.send(
                    from,
                    Message::AppendEntriesResponse {
                        success: true,
                        match_index: snapshot_index.min(self.commit_index),
                        conflict_index: 0,
                        conflict_term: None,
                    },
                );
                return;
            }
            let snapshot_term = self.log.snapshot_term();
            return self.handle_append_entries(
                from,
                snapshot_index,
                snapshot_term,
                rest,
                leader_commit,
            );
        }
        if !is_well_formed(prev_log_index, prev_log_term, entries, self.hard_state.term) {
            log::warn!(
                "node {} drops a malformed AppendEntries from {from}",
                self.config.id
            );
            return;
        }
        if let Some(reason) = entries.iter().find_map(|entry| {
            is_configuration_entry(&entry.data)
                .then(|| Configuration::decode(&entry.data).err())
                .flatten()
                .map(|reason| format!("entry {}: {reason}", entry.index))
        }) {
            // Never write a configuration this build cannot follow.
            log::error!(
                "node {} drops an AppendEntries from {from} with a configuration it cannot read: {reason}",
                self.config.id
            );
            return;
        }
        if !self.log.matches(prev_log_index, prev_log_term) {
            let (conflict_index, conflict_term) = self.log.conflict_hint(prev_log_index);
            // On failure `match_index` echoes the rejected prev_log_index so
            // the leader can tell a stale rejection from a current one.
            self.send(
                from,
                Message::AppendEntriesResponse {
                    success: false,
                    match_index: prev_log_index,
                    conflict_index,
                    conflict_term,
                },
            );
            return;
        }
        let merged = self.log.merge(prev_log_index, entries);
        if let Some(first_written) = merged.first_written {
            let mut configuration_changed = false;
            if merged.truncated {
                debug_assert!(
                    first_written > self.commit_index,
                    "a committed entry was truncated"
                );
                self.persisted_index = self.persisted_index.min(first_written - 1);
                configuration_changed = self.configurations.truncate_from(first_written);
            }
            let written = self
                .log
                .slice(first_written, self.log.last_index())
                .to_vec();
            configuration_changed |= self.observe_configurations(&written);
            self.actions.push(Action::PersistEntries(written));
            if configuration_changed {
                self.on_configuration_changed();
            }
        }
        let match_index = prev_log_index + entries.len() as Index;
        self.leader_commit_seen = self.leader_commit_seen.max(leader_commit);
        self.advance_commit(leader_commit.min(match_index));
        self.send(
            from,
            Message::AppendEntriesResponse {
                success: true,
                match_index,
                conflict_index: 0,
                conflict_term: None,
            },
        );
    }

    /// Follower: a heartbeat's `leader_commit` never exceeds what this
    /// follower is known to hold, so it can be adopted directly.
    pub(super) fn handle_heartbeat(&mut self, from: NodeId, leader_commit: Index, read_round: u64) {
        self.leader_commit_seen = self.leader_commit_seen.max(leader_commit);
        self.advance_commit(leader_commit);
        self.send(from, Message::HeartbeatResponse { read_round });
    }

    /// Leader: a follower's answer to an AppendEntries of this term.
    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: Index,
        conflict_index: Index,
        conflict_term: Option<Term>,
    ) {
        let last_index = self.log.last_index();
        if match_index > last_index {
            log::warn!(
                "node {} ignores an append response from {from} past its log end",
                self.config.id
            );
            return;
        }
        let hint_next_index =
            match conflict_term.and_then(|term| self.log.last_index_of_term(term, match_index)) {
                Some(index) => index + 1,
                None => conflict_index,
            };
        let Some((_, progress)) = self.heard_from(from) else {
            return;
        };
        if success {
            if progress.on_success(match_index) {
                self.maybe_commit();
                self.maybe_send_timeout_now(from);
            }
            while self.maybe_send_append(from) {}
        } else if progress.on_reject(match_index, hint_next_index) {
            self.maybe_send_append(from);
        }
    }

    /// Leader: the leader's tick count and the progress of follower `from`,
    /// marked as heard from now (CheckQuorum counts it). `None` when not
    /// leader or `from` is not a follower.
    pub(super) fn heard_from(&mut self, from: NodeId) -> Option<(u64, &mut Progress)> {
        let leader = self.leader.as_mut()?;
        let ticks = leader.ticks;
        let progress = leader.progress.get_mut(&from)?;
        progress.last_heard_tick = ticks;
        progress.heard_this_term = true;
        Some((ticks, progress))
    }

    /// Leader: a follower answered heartbeat round `read_round`.
    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        let last_index = self.log.last_index();
        let heartbeat_ticks = self.config.heartbeat_ticks;
        let Some((ticks, progress)) = self.heard_from(from) else {
            return;
        };
        progress.read_round_acked = progress.read_round_acked.max(read_round);
        if progress.match_index < last_index {
            // The follower is alive but behind: unpause a probe, and restart
            // a pipeline whose oldest append has gone unanswered for a whole
            // heartbeat interval (it was most likely lost).
            match progress.state {
                ProgressState::Snapshot => {
                    self.maybe_resume_snapshot_transfer(from);
                    self.maybe_confirm_reads();
                    return;
                }
                ProgressState::Probe => progress.probe_sent = false,
                ProgressState::Replicate => {
                    if progress
                        .oldest_inflight_tick()
                        .is_some_and(|sent_tick| ticks.saturating_sub(sent_tick) >= heartbeat_ticks)
                    {
                        progress.become_probe();
                    }
                }
            }
            while self.maybe_send_append(from) {}
        }
        self.maybe_confirm_reads();
    }

    /// Leader: commit the highest index a majority of the voters in force
    /// holds, if of this term.
    pub(super) fn maybe_commit(&mut self) {
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        let own_match = self.persisted_index.min(self.log.last_index());
        let own = self.config.id;
        let majority_index = self.configurations.current().committed_index(|id| {
            if id == own {
                own_match
            } else {
                leader
                    .progress
                    .get(&id)
                    .map_or(0, |progress| progress.match_index)
            }
        });
        if majority_index > self.commit_index
            && self.log.term_at(majority_index) == Some(self.hard_state.term)
        {
            self.advance_commit(majority_index);
        }
    }
}
