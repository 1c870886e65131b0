//! Carrying out a node's actions, as `raft::action` demands, and crashing it.
//!
//! After every input to a node the executor drains its actions and executes
//! them in order: persists go to the simulated disk (unsynced), a send waits
//! while any earlier persist is unsynced, applies feed the state machine,
//! read answers are checked and served. Then the disk syncs at once or a
//! group commit is scheduled (the RNG decides); a sync releases the held
//! sends and reports the durable log end to `Node::persisted`, whose actions
//! are drained in turn. Every action is checked against the invariants as it
//! is executed. Snapshot actions (and compaction, tried after each drain) are
//! carried out by `snapshot.rs`.

use super::{invariants, Event, Sim};
use crate::raft::{Action, Envelope, Message, NodeId};
use rand::Rng;

impl Sim {
    /// Drain and execute node `index`'s actions until it is quiet, syncing
    /// its disk now or later.
    pub(super) fn run_node(&mut self, index: usize) -> Result<(), String> {
        loop {
            self.execute_actions(index)?;
            if self.maybe_compact(index)? {
                continue;
            }
            let node = &self.nodes[index];
            if !node.is_up() || !node.disk.is_dirty() || node.sync_scheduled {
                return Ok(());
            }
            let probability = self.config.disk.sync_now_probability.clamp(0.0, 1.0);
            if self.rng.gen_bool(probability) {
                self.sync_node(index)?;
            } else {
                let delay = self.rng.gen_range(0..=self.config.disk.sync_delay_us_max);
                let generation = node.generation;
                self.nodes[index].sync_scheduled = true;
                self.schedule(
                    delay.max(1),
                    Event::Sync {
                        node: index,
                        generation,
                    },
                );
                return Ok(());
            }
        }
    }

    /// fsync: make every write durable, release the sends that waited for it,
    /// tell the node how far its log is durable. The caller drains after.
    pub(super) fn sync_node(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        node.sync_scheduled = false;
        let persisted = node.disk.sync();
        // The held sends were emitted before this sync's `persisted`, so they
        // leave first.
        let sends = std::mem::take(&mut node.held_sends);
        for envelope in sends {
            self.send(envelope);
        }
        if let Some((last_index, last_term)) = persisted {
            let raft = self.nodes[index]
                .raft
                .as_mut()
                .ok_or("sync on a node that is down")?;
            raft.persisted(last_index, last_term);
        }
        Ok(())
    }

    fn execute_actions(&mut self, index: usize) -> Result<(), String> {
        let mut actions = std::mem::take(&mut self.action_buffer);
        loop {
            actions.clear();
            match self.nodes[index].raft.as_mut() {
                Some(raft) => raft.drain_actions(&mut actions),
                None => break,
            }
            if actions.is_empty() {
                break;
            }
            for action in actions.drain(..) {
                self.execute(index, action)?;
            }
        }
        self.action_buffer = actions;
        Ok(())
    }

    fn execute(&mut self, index: usize, action: Action) -> Result<(), String> {
        let id = self.nodes[index].id;
        if self.config.verbose {
            self.trace(format!("    node {id}: {}", describe_action(&action)));
        }
        match action {
            Action::PersistHardState(hard_state) => {
                let node = &mut self.nodes[index];
                invariants::vote_once_per_term(id, node.disk.hard_state(), &hard_state)?;
                node.disk.write_hard_state(hard_state);
            }
            Action::PersistEntries(entries) => {
                let Some(first) = entries.first().map(|entry| entry.index) else {
                    return Ok(());
                };
                let node = &mut self.nodes[index];
                node.disk
                    .write_entries(entries)
                    .map_err(|reason| format!("node {id}: {reason}"))?;
                invariants::log_matching_after(
                    &mut self.observations.positions,
                    id,
                    (node.disk.snapshot_index(), node.disk.snapshot_term()),
                    node.disk.log(),
                    first,
                )?;
            }
            Action::Send(envelope) => self.execute_send(index, envelope)?,
            Action::Apply(entries) => {
                for entry in entries {
                    self.apply(index, entry)?;
                }
            }
            Action::ReadReady {
                id: read_id,
                index: read_index,
            } => {
                let step = self.step;
                let Some(record) = self.history.read_ready(step, read_id, read_index) else {
                    return Err(format!(
                        "node {id} answered read {read_id}, which was never registered"
                    ));
                };
                if record.node != id {
                    return Err(format!(
                        "node {id} answered read {read_id}, registered on node {}",
                        record.node
                    ));
                }
                invariants::read_linearizable(read_id, id, record.required_index, read_index)?;
                let node = &mut self.nodes[index];
                node.reads_waiting.push((read_id, read_index));
                self.serve_reads(index);
            }
            Action::ReadFailed { id: read_id } => self.history.read_failed(self.step, read_id),
            Action::SendSnapshotChunk {
                envelope,
                length_bytes,
            } => {
                let envelope = self.fill_snapshot_chunk(index, envelope, length_bytes)?;
                self.execute_send(index, envelope)?;
            }
            Action::SnapshotChunk {
                from,
                snapshot,
                offset,
                data,
            } => self.receive_snapshot_chunk(index, from, snapshot, offset, data)?,
        }
        Ok(())
    }

    fn execute_send(&mut self, index: usize, envelope: Envelope) -> Result<(), String> {
        let node = &self.nodes[index];
        let id = node.id;
        if envelope.from != id || envelope.incarnation != super::incarnation_of(id) {
            return Err(format!(
                "node {id} sent an envelope stamped from {} incarnation {}",
                envelope.from, envelope.incarnation
            ));
        }
        if !self.members.contains(&envelope.to) || envelope.to == id {
            return Err(format!(
                "node {id} sent to {}, which is not a peer",
                envelope.to
            ));
        }
        let term = node.raft.as_ref().map_or(0, |raft| raft.term());
        // A PreVote names the term its sender would campaign in, without
        // adopting it; its answer echoes that term.
        let pre_vote = matches!(
            envelope.message,
            Message::PreVote { .. } | Message::PreVoteResponse { .. }
        );
        if !pre_vote && envelope.term > term {
            return Err(format!(
                "node {id} in term {term} sent a message of term {}",
                envelope.term
            ));
        }
        let durable_term = node.disk.hard_state().term;
        if !pre_vote && envelope.term > durable_term {
            return Err(format!(
                "node {id} sent a term-{} message but only asked to persist term {durable_term}",
                envelope.term
            ));
        }
        if matches!(
            envelope.message,
            Message::AppendEntries { .. }
                | Message::Heartbeat { .. }
                | Message::TimeoutNow
                | Message::InstallSnapshot { .. }
        ) {
            // Only a leader sends these: one more witness for Election Safety.
            if invariants::election_safety(&mut self.observations.leaders, envelope.term, id)? {
                invariants::leader_completeness_view(
                    &self.observations.committed,
                    id,
                    envelope.term,
                    node.disk.view(),
                )?;
            }
        }
        // Thesis §10.2.1: a leader's appends may go out before its own write
        // is durable (they promise nothing about the leader's disk; its term
        // and vote were synced before it could win).
        let early_append = self.config.disk.leader_appends_before_sync
            && matches!(envelope.message, Message::AppendEntries { .. })
            && self.nodes[index].is_leader()
            && envelope.term <= self.nodes[index].synced_term();
        if self.nodes[index].disk.is_dirty() && !early_append {
            self.nodes[index].held_sends.push(envelope);
        } else {
            self.send(envelope);
        }
        Ok(())
    }

    pub(super) fn apply(&mut self, index: usize, entry: crate::raft::Entry) -> Result<(), String> {
        let node = &self.nodes[index];
        let id = node.id;
        let raft = node.raft.as_ref().ok_or("apply on a node that is down")?;
        invariants::apply_from_own_log(
            id,
            &entry,
            node.disk.entry(entry.index),
            raft.commit_index(),
        )?;
        let newly_committed = invariants::state_machine_safety(
            &mut self.observations.committed,
            id,
            raft.term(),
            node.applied.len() as u64,
            &entry,
        )?;
        self.nodes[index].applied.push(entry.data.clone());
        if newly_committed {
            self.applied_max = self.applied_max.max(entry.index);
            if entry.data.starts_with(b"w") {
                self.history
                    .write_committed(self.step, entry.index, entry.data.clone());
            }
            if let Some(committed) = self.observations.committed.get(&entry.index) {
                for leader in self.nodes.iter().filter(|node| node.is_leader()) {
                    let term = leader.raft.as_ref().map_or(0, |raft| raft.term());
                    invariants::leader_has_committed_entry(
                        entry.index,
                        committed,
                        leader.id,
                        term,
                        leader.disk.view(),
                    )?;
                }
            }
        }
        self.serve_reads(index);
        Ok(())
    }

    /// Answer every ready read whose index the state machine has reached.
    pub(super) fn serve_reads(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let applied = node.applied.len() as u64;
        let mut served = Vec::new();
        node.reads_waiting.retain(|&(read_id, read_index)| {
            if read_index <= applied {
                served.push(read_id);
                false
            } else {
                true
            }
        });
        for read_id in served {
            self.history.read_served(self.step, read_id, applied);
        }
    }

    /// Power loss: the node and its unsent messages vanish; the disk keeps
    /// what was synced (and maybe a prefix of the rest).
    pub(super) fn crash_node(&mut self, index: usize) {
        if !self.nodes[index].is_up() {
            return;
        }
        let unsynced = self.nodes[index].disk.unsynced_write_count();
        let kept = if self.config.disk.crash_keeps_unsynced_prefix {
            self.rng.gen_range(0..=unsynced)
        } else {
            0
        };
        let node = &mut self.nodes[index];
        node.raft = None;
        node.held_sends.clear();
        node.disk.crash(kept);
        node.generation += 1;
        node.sync_scheduled = false;
        node.applied.clear();
        node.reads_waiting.clear();
        node.incoming = None;
        node.snapshots_held.clear();
        node.commit_index_seen = 0;
        node.paused_until_us = 0;
        let generation = node.generation;
        let id = node.id;
        self.crashes += 1;
        if self.config.verbose {
            self.trace(format!(
                "    crash node {id} (kept {kept} of {unsynced} unsynced writes)"
            ));
        }
        let (low, high) = self.config.downtime_us;
        let downtime = self.rng.gen_range(low..=high.max(low));
        self.schedule(
            downtime,
            Event::Restart {
                node: index,
                generation,
            },
        );
    }

    pub(super) fn restart_node(&mut self, index: usize) -> Result<(), String> {
        self.start_node(index);
        self.run_node(index)
    }

    pub(super) fn node_id(&self, index: usize) -> NodeId {
        self.nodes[index].id
    }
}

fn describe_action(action: &Action) -> String {
    match action {
        Action::PersistEntries(entries) => format!(
            "persist entries {}..{} (terms {:?})",
            entries.first().map_or(0, |entry| entry.index),
            entries.last().map_or(0, |entry| entry.index),
            entries.iter().map(|entry| entry.term).collect::<Vec<_>>()
        ),
        Action::Apply(entries) => format!(
            "apply {:?}",
            entries
                .iter()
                .map(|entry| format!("{}={}", entry.index, invariants::show(&entry.data)))
                .collect::<Vec<_>>()
        ),
        Action::Send(envelope) => format!(
            "send -> {} term {}: {}",
            envelope.to,
            envelope.term,
            super::describe_message(&envelope.message)
        ),
        other => format!("{other:?}"),
    }
}
