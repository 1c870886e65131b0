//! Where each client request goes: leader, follower or no leader; the
//! turn's batch; read positions and connection floors.
//!
//! Not leader: `ERR_REDIRECT` naming the leader; while no leader is known
//! (or leadership is being handed over) the request is held, with every
//! later request of its connection, up to `hold_while_leaderless_ms`, then
//! `ERR_INTERNAL`.
//!
//! Leader: the turn's writes become one entry (a few if large), stamped
//! with cluster time. Reads (SPEC §3: linearizable, and in per-connection
//! order) are answered from the state at one log position, computed
//! exactly there, and released only on evidence of leadership gathered
//! after the read arrived:
//! - the turn already batched a write: the read is placed inside this
//!   turn's entry, after the commands before it; its answer is computed
//!   while that entry is applied, and the entry's commit is the evidence
//!   (it was proposed after the read arrived);
//! - the read's connection has an earlier command still unapplied (its
//!   *floor*): the answer is computed at the floor's position when that
//!   entry applies, and is released only once this turn's ReadIndex round
//!   also confirms leadership. The commit of an entry proposed before the
//!   read proves nothing about the read: a deposed leader can learn of that
//!   commit late, after a newer leader acknowledged newer writes;
//! - otherwise the answer is computed from the applied state now (which
//!   holds every acknowledged write once this term's first entry applied)
//!   and released after this turn's ReadIndex round.
//!
//! A `watch` is routed exactly as a read is (`is_read_like`): its first
//! check, and every check after a change woke it, is a read at one of these
//! positions (`watch`).
//!
//! A floor entry that is no longer in this leader's log (its suffix was
//! replaced while this node followed, and it leads again) is never waited
//! for: it can never be committed. This node leads term T and has applied
//! its own term-T entry at some index k, which is committed, so every later
//! leader holds it; a later leader holding the floor entry (i, t), t < T,
//! would hold a term below T after index k if i > k (terms never decrease
//! along a log), or another entry than ours at a committed index if i ≤ k.
//! Waiting for it would hold the connection's reads until the log reached
//! index i (sim seed 13057182992639120356: a connection whose timed-out
//! writes sat in a truncated entry above the log's end had every later read
//! time out in a quiet cluster).
//!
//! Invariants: a connection's floor only rises while its entry is
//! unapplied (a read placed early in a batch never hides a later write of
//! the same connection from the next read); an entry whose commands timed
//! out stays a floor (`Waiting::expired`) until its fate is known, so a read
//! after a write answered `ERR_INTERNAL` is still ordered after that write
//! if it commits later.

use super::apply::{AnchoredRead, ReadGroup, Waiting};
use super::forward::REMOTE_KEY;
use super::{ClientRef, Now, Replica};
use crate::config::FollowerRequests;
use crate::fsm::command::encode_batch;
use crate::fsm::Command;
use crate::limits;
use crate::protocol::{Reply, Request};
use crate::raft::{Index, NodeId, Term};
use bytes::Bytes;

pub(super) struct Pending {
    pub client: ClientRef,
    pub request: Request,
    pub arrived_us: u64,
}

/// The batch being built in this turn (one entry).
#[derive(Default)]
pub(super) struct TurnBatch {
    commands: Vec<Command>,
    clients: Vec<ClientRef>,
    reads: Vec<AnchoredRead>,
    size_bytes: usize,
    deadline_us: Option<u64>,
}

/// A connection's latest anchored position: `offset` inside the entry at
/// `index` of `term`.
#[derive(Clone, Copy)]
pub(super) struct ConnectionFloor {
    conn_id: u64,
    index: Index,
    term: Term,
    offset: usize,
}

impl Replica {
    pub(super) fn route_requests(&mut self, now: Now) {
        let mut queue = std::mem::take(&mut self.held);
        queue.extend(self.incoming.drain(..));
        // Connections with a command held this turn: their later commands
        // wait behind it, so per-connection order is kept.
        let mut blocked: Vec<u64> = Vec::new();
        for pending in queue {
            // A connection with a command held this turn, or a forwarded
            // unit outstanding, waits (per-connection order).
            if blocked.contains(&pending.client.conn_id) || self.forwarding.is_busy(pending.client)
            {
                blocked.push(pending.client.conn_id);
                self.held.push_back(pending);
                continue;
            }
            let is_read = is_read_like(&pending.request);
            // A node the configuration in force does not list (removed, or
            // waiting to be added) forwards nothing: the leader would not
            // take it (`forward::step_client_traffic`); it redirects.
            let forwards = self.config.follower_requests == FollowerRequests::Forward
                && pending.client.key != REMOTE_KEY
                && !self.draining
                && self.raft.configuration().contains(self.raft.id());
            if self.is_ready_leader() && (!is_read || self.is_ready_for_reads()) {
                self.route_as_leader(pending, now);
            } else if let Some(leader) = self.raft.leader_id().filter(|&l| l != self.raft.id()) {
                if !forwards {
                    self.answer_redirect(pending.client, Some(leader));
                } else if self.conflicts_with_turn(pending.client, is_read) {
                    blocked.push(pending.client.conn_id);
                    self.held.push_back(pending);
                } else {
                    self.route_as_follower(pending.client, pending.request, pending.arrived_us);
                }
            } else if now.monotonic_us.saturating_sub(pending.arrived_us)
                >= self.config.hold_while_leaderless_ms.saturating_mul(1_000)
            {
                self.answer(pending.client, Reply::Internal);
            } else {
                blocked.push(pending.client.conn_id);
                self.held.push_back(pending);
            }
        }
    }

    pub(super) fn answer_redirect(&mut self, client: ClientRef, leader: Option<NodeId>) {
        let address = leader
            .filter(|&l| l != self.raft.id())
            .and_then(|l| self.client_address(l))
            .cloned();
        match address {
            Some(address) => self.answer(client, Reply::Redirect(&address)),
            None => self.answer(client, Reply::Internal),
        }
    }

    fn route_as_leader(&mut self, pending: Pending, now: Now) {
        match pending.request {
            Request::Command(command) => {
                let size_bytes = command_size_bytes(&command);
                let needs_new_batch = match self.batches.last() {
                    None => true,
                    Some(batch) => {
                        batch.size_bytes + size_bytes > limits::ENTRY_BYTES_MAX
                            && !batch.commands.is_empty()
                    }
                };
                if needs_new_batch {
                    self.batches.push(TurnBatch::default());
                }
                let deadline_us = pending
                    .arrived_us
                    .saturating_add(limits::COMMAND_TIMEOUT_MS * 1_000);
                if let Some(batch) = self.batches.last_mut() {
                    batch.commands.push(command);
                    batch.clients.push(pending.client);
                    batch.size_bytes += size_bytes;
                    batch.deadline_us = Some(
                        batch
                            .deadline_us
                            .map_or(deadline_us, |d| d.min(deadline_us)),
                    );
                }
            }
            Request::Read { name } => {
                self.route_read(pending.client, pending.arrived_us, name, None, now)
            }
            Request::Watch { name, version } => {
                self.route_read(pending.client, pending.arrived_us, name, Some(version), now)
            }
        }
    }

    /// A read (or a watch's check, `watched_version`) at its read position.
    fn route_read(
        &mut self,
        client: ClientRef,
        arrived_us: u64,
        name: Bytes,
        watched_version: Option<u64>,
        now: Now,
    ) {
        let deadline_us = arrived_us.saturating_add(limits::COMMAND_TIMEOUT_MS * 1_000);
        if let Some(batch) = self.batches.last_mut() {
            let offset = batch.commands.len();
            batch.reads.push(AnchoredRead {
                offset,
                client,
                name,
                watched_version,
                round: None,
                deadline_us,
            });
            return;
        }
        // A floor entry that is not in this leader's log can never apply
        // (see the module doc): the read does not wait for it.
        let floor = self.connection_floor(client);
        if let Some((position, offset)) = floor.filter(|&((index, term), _)| {
            index > self.applied_index && self.raft.term_at(index) == Some(term)
        }) {
            let round = self.next_read_id;
            if let Some(waiting) = self.waiting.get_mut(&position) {
                waiting.reads.push(AnchoredRead {
                    offset,
                    client,
                    name,
                    watched_version,
                    round: Some(round),
                    deadline_us,
                });
                self.turn_reads_anchored += 1;
                return;
            }
        }
        let (live_ms, display_ms) = (self.fsm.cluster_time_ms(), self.cluster_time_ms(now));
        if let Some(answer) = self.answer_at(client, &name, watched_version, live_ms, display_ms) {
            self.turn_reads.push((client, answer));
        }
    }

    /// The connection's floor: ((index, term), offset).
    fn connection_floor(&self, client: ClientRef) -> Option<((Index, Term), usize)> {
        let floor = self.connection_floor.get(client.key).copied().flatten()?;
        (floor.conn_id == client.conn_id).then_some(((floor.index, floor.term), floor.offset))
    }

    /// Raises the connection's floor to `(index, offset)` (never lowers it:
    /// a read anchored early in a batch must not hide a later write of the
    /// same connection from its next read).
    fn set_connection_floor(
        &mut self,
        client: ClientRef,
        (index, term): (Index, Term),
        offset: usize,
    ) {
        if self.connection_floor.len() <= client.key {
            self.connection_floor.resize(client.key + 1, None);
        }
        let slot = &mut self.connection_floor[client.key];
        let higher = match *slot {
            Some(floor) if floor.conn_id == client.conn_id => {
                (index, offset) > (floor.index, floor.offset)
            }
            _ => true,
        };
        if higher {
            *slot = Some(ConnectionFloor {
                conn_id: client.conn_id,
                index,
                term,
                offset,
            });
        }
    }

    pub(super) fn propose_batches(&mut self, now: Now) {
        let batches = std::mem::take(&mut self.batches);
        for batch in batches {
            if batch.commands.is_empty() {
                // Only reads: answer them like reads at the applied index.
                for read in batch.reads {
                    let (live_ms, display_ms) =
                        (self.fsm.cluster_time_ms(), self.cluster_time_ms(now));
                    if let Some(answer) = self.answer_read(&read, live_ms, display_ms) {
                        self.turn_reads.push((read.client, answer));
                    }
                }
                continue;
            }
            let stamp_ms = self.cluster_time_ms(now);
            let data = encode_batch(stamp_ms, &batch.commands);
            match self.raft.propose(data) {
                Ok(index) => {
                    self.metrics.proposals += 1;
                    self.metrics
                        .batch_commands
                        .record(batch.commands.len() as f64);
                    self.last_proposed_stamp_ms = stamp_ms;
                    let position = (index, self.raft.term());
                    for (offset, client) in batch.clients.iter().enumerate() {
                        if client.key != REMOTE_KEY {
                            self.set_connection_floor(*client, position, offset + 1);
                        }
                    }
                    for read in &batch.reads {
                        self.set_connection_floor(read.client, position, read.offset);
                    }
                    self.waiting.insert(
                        position,
                        Waiting {
                            stamp_ms,
                            clients: batch.clients,
                            reads: batch.reads,
                            deadline_us: batch.deadline_us.unwrap_or(now.monotonic_us),
                            proposed_us: now.monotonic_us,
                            expired: false,
                        },
                    );
                }
                Err(not_leader) => {
                    for client in batch.clients {
                        self.answer_redirect(client, not_leader.leader);
                    }
                    for read in batch.reads {
                        self.answer_redirect(read.client, not_leader.leader);
                    }
                }
            }
        }
    }

    /// One ReadIndex round for every read of the turn that needs one: the
    /// heartbeat it sends leaves after all of them arrived.
    pub(super) fn register_turn_reads(&mut self, now: Now) {
        let anchored = std::mem::take(&mut self.turn_reads_anchored);
        let followers = self.take_turn_read_requests();
        if self.turn_reads.is_empty() && anchored == 0 && followers.is_empty() {
            return;
        }
        let answers = std::mem::take(&mut self.turn_reads);
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.raft.read_index(id) {
            Ok(()) => self.read_groups.push_back(ReadGroup {
                id,
                answers,
                followers,
                deadline_us: now.after_ms(limits::COMMAND_TIMEOUT_MS),
            }),
            Err(not_leader) => {
                for (client, _) in answers {
                    self.answer_redirect(client, not_leader.leader);
                }
                self.answer_read_requests(followers, None);
                self.fail_anchored_reads(id, not_leader.leader);
            }
        }
    }
}

/// Reads and watches: served only once this term's first entry applied.
fn is_read_like(request: &Request) -> bool {
    matches!(request, Request::Read { .. } | Request::Watch { .. })
}

fn command_size_bytes(command: &Command) -> usize {
    match command {
        Command::Write { name, content, .. } | Command::Cas { name, content, .. } => {
            name.len() + content.len() + 32
        }
        Command::Delete { name } => name.len() + 16,
    }
}
