//! What may leave before which fsync: group commit and the messages that
//! wait for it.
//!
//! Up to `SYNCS_IN_FLIGHT_MAX` fsyncs run at a time (`syncing`, oldest
//! first); what is written meanwhile gathers into the next (`gathering`),
//! which starts as soon as one is free: low load gets an fsync per turn at
//! once, high load gets everything written since the last fsync started in
//! the next. A finished fsync also covers every older one, so batches are
//! released in order, never out of it. A batch carries what waits for it:
//! the log position the core hears as `persisted` when it is done, and the
//! messages that promise durable state (votes, append acknowledgements,
//! snapshot answers, anything sent while a new term or vote is unsynced).
//!
//! Only a leader's appends and heartbeats leave at once: they promise
//! nothing (thesis §10.2.1: the leader's disk and the followers' work in
//! parallel, and the core counts the leader only after `persisted`).
//!
//! Invariants: a message that promises durable state is released only by
//! the fsync of a batch started after every write before it (the gathering
//! batch if it has writes, else the newest running one), and only while
//! the node is still in the term it was made in; batches are released
//! oldest first; a failed fsync releases nothing, ever again.
//! After a restart the first batch covers everything replayed (it may sit
//! unsynced in the page cache after a `kill -9`), so nothing the replayed
//! log or vote promises leaves before it is durable.

use super::storage::Storage;
use super::Replica;
use crate::error::Result;
use crate::limits;
use crate::raft::{Envelope, Index, Message, Term};
use std::collections::VecDeque;
use std::time::Duration;

/// Written to storage and waiting for one fsync.
#[derive(Default)]
struct SyncBatch {
    /// Something was written for this batch.
    written: bool,
    /// A new term or vote is among it.
    hard_state: bool,
    /// The last entry written, for `Node::persisted`.
    persisted: Option<(Index, Term)>,
    /// Sent once the batch is durable.
    messages: Vec<Envelope>,
}

pub(super) struct Durability {
    /// The fsyncs running, oldest first, by request id.
    syncing: VecDeque<(u64, SyncBatch)>,
    next_sync_id: u64,
    /// Written since the newest of `syncing` started; the next fsync.
    gathering: SyncBatch,
    /// A leader's appends and heartbeats: sent at once, before any fsync.
    early_messages: Vec<Envelope>,
    /// This turn's other messages, until they join a batch.
    durable_messages: Vec<Envelope>,
}

impl Durability {
    /// The state after a restart: what was replayed counts as written and
    /// not yet synced (see the module doc).
    pub(super) fn after_restart() -> Durability {
        Durability {
            syncing: VecDeque::new(),
            next_sync_id: 1,
            gathering: SyncBatch {
                written: true,
                hard_state: true,
                persisted: None,
                messages: Vec::new(),
            },
            early_messages: Vec::new(),
            durable_messages: Vec::new(),
        }
    }

    pub(super) fn note_written(&mut self, hard_state: bool) {
        self.gathering.written = true;
        self.gathering.hard_state |= hard_state;
    }

    pub(super) fn note_entries_written(&mut self, last: (Index, Term)) {
        self.gathering.written = true;
        self.gathering.persisted = Some(last);
    }

    /// A new term or vote is written but not yet durable.
    pub(super) fn hard_state_unsynced(&self) -> bool {
        self.gathering.hard_state || self.syncing.iter().any(|(_, batch)| batch.hard_state)
    }

    /// Only a leader's appends and heartbeats promise nothing durable;
    /// everything else waits for an fsync, and so does everything while a
    /// new term or vote is unsynced. Client traffic between replicas
    /// (`forward`) promises nothing about this node's disk at all.
    pub(super) fn queue_send(&mut self, envelope: Envelope) {
        if envelope.message.is_client_traffic() {
            self.early_messages.push(envelope);
            return;
        }
        let promises_nothing = matches!(
            envelope.message,
            Message::AppendEntries { .. } | Message::Heartbeat { .. }
        );
        if promises_nothing && !self.hard_state_unsynced() {
            self.early_messages.push(envelope);
        } else {
            self.durable_messages.push(envelope);
        }
    }

    /// Messages queued since the actions ran that may leave now.
    pub(super) fn release_early(&mut self, out: &mut Vec<Envelope>) {
        out.append(&mut self.early_messages);
    }

    /// The turn's durable messages wait for everything written before them:
    /// the gathering batch if it has anything, else the newest running
    /// fsync, else nothing (they go out now).
    fn place_durable_messages(&mut self, out: &mut Vec<Envelope>) {
        if self.durable_messages.is_empty() {
            return;
        }
        let waiting_for = if self.gathering.written {
            Some(&mut self.gathering)
        } else {
            self.syncing.back_mut().map(|(_, batch)| batch)
        };
        match waiting_for {
            Some(batch) => batch.messages.append(&mut self.durable_messages),
            None => out.append(&mut self.durable_messages),
        }
    }
}

impl Replica {
    /// End of the core's actions: release what may leave now and start the
    /// fsync of what was written. `true` when that fsync was not needed
    /// (`fsync` off) and its effects ran, so the core may have more to say.
    pub(super) fn finish_turn_writes(&mut self, storage: &mut impl Storage) -> Result<bool> {
        self.messages.append(&mut self.durability.early_messages);
        self.durability.place_durable_messages(&mut self.messages);
        if !self.durability.gathering.written
            || self.durability.syncing.len() >= limits::SYNCS_IN_FLIGHT_MAX
        {
            return Ok(false);
        }
        let batch = std::mem::take(&mut self.durability.gathering);
        let id = self.durability.next_sync_id;
        self.durability.next_sync_id += 1;
        if storage.begin_sync(id)? {
            self.durability.syncing.push_back((id, batch));
            return Ok(false);
        }
        self.batch_durable(batch);
        Ok(true)
    }

    /// Input: the fsync `id` (and so every older one) is done, after
    /// `took_us` microseconds. Its effects run at the next `end_turn`.
    pub fn synced(&mut self, id: u64, took_us: u64) {
        if self.failed.is_some() {
            return;
        }
        self.record_fsync_time(Duration::from_micros(took_us));
        while self
            .durability
            .syncing
            .front()
            .is_some_and(|(sync_id, _)| *sync_id <= id)
        {
            if let Some((_, batch)) = self.durability.syncing.pop_front() {
                self.batch_durable(batch);
            }
        }
    }

    /// Input: the fsync `id` failed. The node must stop: nothing written
    /// since the last good fsync may be acknowledged (the page cache may
    /// have dropped it), so nothing is released and `end_turn` fails.
    pub fn sync_failed(&mut self, id: u64, reason: String) {
        log::error!("fsync {id} failed: {reason}; this node stops");
        self.failed.get_or_insert(reason);
    }

    fn batch_durable(&mut self, batch: SyncBatch) {
        // A promise made in an older term is dropped, as if lost: what it
        // promised may no longer hold (a newer leader can have replaced the
        // entries it acknowledges), and a leader of that term must not
        // count it now (sim seed 3233: a term-44 append acknowledgement
        // left after the follower durably moved to term 45 and truncated).
        let term = self.raft.term();
        self.messages.extend(
            batch
                .messages
                .into_iter()
                .filter(|envelope| envelope.term >= term),
        );
        if let Some((index, term)) = batch.persisted {
            self.raft.persisted(index, term);
        }
    }

    fn record_fsync_time(&mut self, took: Duration) {
        self.metrics.fsync_seconds.record_duration(took);
        if took >= Duration::from_millis(limits::FSYNC_SLOW_MS) {
            self.metrics.fsync_slow += 1;
            log::warn!(
                "slow fsync: {} ms (over {} ms; keep the election timeout well above the disk's sync latency)",
                took.as_millis(),
                limits::FSYNC_SLOW_MS
            );
        }
    }
}
