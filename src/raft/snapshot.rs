//! Log compaction and InstallSnapshot (Raft §7), as methods on `Node`.
//!
//! The core decides, the executor holds the bytes (see `action` for the
//! contract). Leader side: a follower whose `next_index` falls at or below
//! the snapshot index (its entries are gone) switches to
//! `ProgressState::Snapshot`; the snapshot streams as `SendSnapshotChunk`
//! actions, at most `SNAPSHOT_CHUNKS_INFLIGHT_MAX` chunks beyond the
//! follower's acknowledgement; a transfer with chunks outstanding and no
//! answer for a heartbeat interval resends from the acknowledged offset
//! (lost chunks, a dropped link); a follower that lost what it had answers
//! with a smaller offset and the transfer goes on from there (a restart).
//! Once installed, the follower is probed from `index + 1`.
//!
//! Follower side: a chunk from the current leader goes to the executor as
//! `SnapshotChunk`, unless everything through its index is already
//! committed here (then it answers `installed` at once). `install_snapshot`
//! applies receiver rules 6-8: keep the log after the snapshot if it matches,
//! else discard it; commit and applied jump to the snapshot's index.
//!
//! A snapshot records the configuration in force at its index (the executor
//! keeps it beside the state machine; `Node::configuration_at`), and an
//! installed snapshot's configuration replaces the log's (`membership`).
//!
//! Invariants: `snapshot.index <= applied_index <= commit_index`; compaction
//! only drops applied entries; an installed snapshot's index is above the
//! commit index it replaces (commit never goes backwards).

use super::membership::{Configuration, Configurations};
use super::message::{Envelope, Index, Message, NodeId, SnapshotMeta};
use super::node::{Installed, Node, Role};
use super::progress::ProgressState;
use super::Action;
use crate::limits::SNAPSHOT_CHUNKS_INFLIGHT_MAX;
use bytes::Bytes;

impl Node {
    /// The executor durably holds a snapshot of the state machine through
    /// `index` (already applied), `size_bytes` long: drop the log through
    /// `index`. Returns false (and changes nothing) if `index` is not past
    /// the current snapshot, not applied, or the snapshot is empty.
    pub fn compact(&mut self, index: Index, size_bytes: u64) -> bool {
        if index <= self.snapshot.index || index > self.applied_index || size_bytes == 0 {
            return false;
        }
        let Some(term) = self.log.term_at(index) else {
            return false;
        };
        if !self.log.compact(index) {
            return false;
        }
        self.configurations.compact_to(index);
        self.snapshot = SnapshotMeta {
            index,
            term,
            size_bytes,
        };
        debug_assert!(self.snapshot.index <= self.applied_index);
        true
    }

    /// Follower: the executor stored chunks of `snapshot` from `from` and
    /// now holds its first `next_offset` bytes (0 after losing them).
    pub fn snapshot_chunk_stored(
        &mut self,
        from: NodeId,
        snapshot: SnapshotMeta,
        next_offset: u64,
    ) {
        if self.role != Role::Follower || self.leader_id != Some(from) {
            return;
        }
        self.send(
            from,
            Message::InstallSnapshotResponse {
                index: snapshot.index,
                next_offset,
                installed: false,
            },
        );
    }

    /// Follower: the executor holds all of `snapshot` from `from`, checked
    /// and durable, recording `configuration` (None for a snapshot written
    /// before membership change). On `Installed` it must replace its state
    /// machine with the snapshot's (and, if the log was not kept, record
    /// durably that the log starts after `snapshot.index`) before this
    /// turn's sends leave.
    pub fn install_snapshot(
        &mut self,
        from: NodeId,
        snapshot: SnapshotMeta,
        configuration: Option<Configuration>,
    ) -> Installed {
        if self.role != Role::Follower || self.leader_id != Some(from) || snapshot.size_bytes == 0 {
            return Installed::Stale;
        }
        if snapshot.index <= self.commit_index {
            self.answer_installed(from, snapshot);
            return Installed::Stale;
        }
        let log_kept = self.log.install(snapshot.index, snapshot.term);
        let before = self.configurations.current().clone();
        let (base, from_log) = match configuration {
            Some(configuration) => (configuration, true),
            None => {
                let from_log = self.configurations.from_log();
                (self.configurations.at(snapshot.index).1.clone(), from_log)
            }
        };
        self.configurations = Configurations::starting(snapshot.index, base, from_log);
        if log_kept {
            let kept = self
                .log
                .slice(snapshot.index + 1, self.log.last_index())
                .to_vec();
            self.observe_configurations(&kept);
        }
        let committed_from = self.commit_index + 1;
        self.snapshot = snapshot;
        self.commit_index = snapshot.index;
        self.applied_index = snapshot.index;
        self.on_commit_of_configurations(committed_from, snapshot.index);
        if *self.configurations.current() != before {
            self.on_configuration_changed();
        }
        if log_kept {
            // The kept suffix stays durable as before; the snapshot is too.
            self.persisted_index = self.persisted_index.max(snapshot.index);
        } else {
            self.persisted_index = snapshot.index;
        }
        debug_assert_eq!(self.log.snapshot_index(), snapshot.index);
        self.answer_installed(from, snapshot);
        Installed::Installed { log_kept }
    }

    fn answer_installed(&mut self, from: NodeId, snapshot: SnapshotMeta) {
        self.send(
            from,
            Message::InstallSnapshotResponse {
                index: snapshot.index,
                next_offset: snapshot.size_bytes,
                installed: true,
            },
        );
    }

    /// Follower: one chunk arrived from the current leader.
    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) {
        debug_assert_eq!(self.role, Role::Follower);
        if snapshot.index <= self.commit_index {
            self.answer_installed(from, snapshot);
            return;
        }
        let end = offset.checked_add(data.len() as u64);
        if snapshot.size_bytes == 0
            || snapshot.term > self.hard_state.term
            || end.is_none_or(|end| end > snapshot.size_bytes)
        {
            log::warn!(
                "node {} drops a malformed InstallSnapshot chunk from {from}",
                self.config.id
            );
            return;
        }
        self.actions.push(Action::SnapshotChunk {
            from,
            snapshot,
            offset,
            data,
        });
    }

    /// Leader: a follower's answer about a snapshot transfer.
    pub(super) fn handle_install_snapshot_response(
        &mut self,
        from: NodeId,
        index: Index,
        next_offset: u64,
        installed: bool,
    ) {
        if index > self.log.last_index() {
            return;
        }
        let Some((ticks, progress)) = self.heard_from(from) else {
            return;
        };
        if installed {
            if index <= progress.match_index && progress.state != ProgressState::Snapshot {
                return;
            }
            progress.on_snapshot_installed(index);
            self.maybe_commit();
            self.maybe_send_timeout_now(from);
            while self.maybe_send_append(from) {}
        } else if progress.state == ProgressState::Snapshot
            && progress.on_snapshot_ack(index, next_offset, ticks)
        {
            if next_offset == 0 {
                // The follower holds nothing of it (it restarted): start
                // over with the newest snapshot, not one that may be gone.
                self.restart_with_newest_snapshot(from);
            }
            self.maybe_send_snapshot_chunks(from);
        }
    }

    /// Leader: the executor cannot read `snapshot` for `to` (its file was
    /// deleted once newer snapshots were taken): send the newest instead.
    pub fn snapshot_unavailable(&mut self, to: NodeId, snapshot: SnapshotMeta) {
        if self.role != Role::Leader || snapshot == self.snapshot {
            return;
        }
        self.restart_with_newest_snapshot(to);
        self.maybe_send_snapshot_chunks(to);
    }

    /// If `to` is being sent an older snapshot than the newest, start over
    /// with the newest (the follower discards a partial older one when the
    /// first chunk of another arrives).
    fn restart_with_newest_snapshot(&mut self, to: NodeId) {
        let newest = self.snapshot;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let ticks = leader.ticks;
        let Some(progress) = leader.progress.get_mut(&to) else {
            return;
        };
        let older = progress
            .snapshot
            .is_some_and(|sending| sending.snapshot.index < newest.index);
        if progress.state == ProgressState::Snapshot && older {
            log::info!(
                "node {} restarts the snapshot transfer to {to} with snapshot {}",
                self.config.id,
                newest.index
            );
            progress.become_snapshot(newest, ticks);
        }
    }

    /// Leader: start streaming the snapshot to `to` (its next entry is gone).
    pub(super) fn start_snapshot_transfer(&mut self, to: NodeId) {
        let snapshot = self.snapshot;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let ticks = leader.ticks;
        let Some(progress) = leader.progress.get_mut(&to) else {
            return;
        };
        log::info!(
            "node {} sends snapshot {} ({} bytes) to {to}, whose next index {} is compacted",
            self.config.id,
            snapshot.index,
            snapshot.size_bytes,
            progress.next_index
        );
        progress.become_snapshot(snapshot, ticks);
        self.maybe_send_snapshot_chunks(to);
    }

    /// Leader: send the chunks the window allows.
    pub(super) fn maybe_send_snapshot_chunks(&mut self, to: NodeId) {
        let term = self.hard_state.term;
        let from = self.config.id;
        let incarnation = self.config.incarnation;
        let chunk_bytes_max = self.config.snapshot_chunk_bytes_max;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let ticks = leader.ticks;
        let Some(progress) = leader.progress.get_mut(&to) else {
            return;
        };
        while let Some((snapshot, offset, length_bytes)) =
            progress.next_snapshot_chunk(chunk_bytes_max, SNAPSHOT_CHUNKS_INFLIGHT_MAX, ticks)
        {
            self.actions.push(Action::SendSnapshotChunk {
                envelope: Envelope {
                    from,
                    to,
                    term,
                    incarnation,
                    message: Message::InstallSnapshot {
                        snapshot,
                        offset,
                        data: Bytes::new(),
                    },
                },
                length_bytes,
            });
        }
    }

    /// Leader, on a heartbeat answer from `from` while it gets a snapshot:
    /// resend a window that went unanswered for a heartbeat interval.
    pub(super) fn maybe_resume_snapshot_transfer(&mut self, from: NodeId) {
        let heartbeat_ticks = self.config.heartbeat_ticks;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let ticks = leader.ticks;
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        if progress.maybe_restart_snapshot_window(ticks, heartbeat_ticks) {
            // The follower holds less than it said: as after a restart, an
            // older snapshot may be gone by now.
            self.restart_with_newest_snapshot(from);
        }
        self.maybe_send_snapshot_chunks(from);
    }
}
