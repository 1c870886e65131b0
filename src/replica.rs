//! One raftfs node minus its sockets: the Raft core, the file map, the WAL and
//! the table of client commands waiting for an answer.
//!
//! The reactor feeds it client requests (`submit`), peer messages (`step`)
//! and ticks, then calls `end_turn` once per loop turn. A turn:
//! 1. routes the turn's requests: not leader → `ERR_REDIRECT` (or held up to
//!    one election timeout while no leader is known); leader → writes join the
//!    turn's batch, reads get a position in the log;
//! 2. proposes the batch as one entry (a few if large) stamped with cluster
//!    time, and registers one ReadIndex round for reads that need one;
//! 3. runs the core's actions in order: persists go to the WAL; applies run
//!    the file map and answer the waiting commands; then what the turn wrote
//!    is made durable by one fsync on the WAL's sync thread (group commit,
//!    see "Durability" below).
//!
//! Durability. Up to `SYNCS_IN_FLIGHT_MAX` fsyncs run at a time (`syncing`,
//! oldest first); what is written meanwhile gathers into the next
//! (`gathering`), which starts as soon as one is free: low load gets an
//! fsync per turn at once, high load gets everything written since the
//! last fsync started in the next. A finished fsync also covers every
//! older one, so batches are released in order, never out of it. A batch
//! carries what waits for it: the log position the core hears as
//! `persisted` when it is done, and the messages that promise durable state
//! (votes, append acknowledgements, anything sent while a new term or vote
//! is unsynced). Only a leader's appends and heartbeats leave at once (they
//! promise nothing; thesis §10.2.1: the leader's disk and the followers'
//! work in parallel, and the core counts the leader only after
//! `persisted`). The reactor never waits for the disk. Without a sync
//! thread (`start_background_sync` not called) each batch is synced in
//! place, at the end of its turn.
//!
//! Reads (SPEC §3: linearizable, and in per-connection order). A read is
//! answered from the state at one log position `p`, computed exactly at `p`:
//! - if the turn already batched a write, or this connection has a write or
//!   read still anchored at an unapplied entry, `p` is a position inside this
//!   leader's own entry (after the commands that precede the read); the answer
//!   is computed while that entry is applied and its commit proves leadership;
//! - otherwise `p` is the applied index now (once this term's first entry has
//!   been applied, so every acknowledged write is included), and the answer is
//!   released only after a ReadIndex heartbeat round confirms leadership.
//!
//! Reads judge whether a file is alive at the cluster time of the applied
//! state they see (so a file never comes back after a leader change) and
//! show the seconds left on the leader's clock.
//!
//! Snapshots and compaction live in the `snapshot` submodule.
//!
//! Cluster time (SPEC §2): a new leader starts from the largest stamp seen in
//! its log (the wall clock only if there is none) and advances it with its
//! monotonic clock; proposals carry it as their stamp. While files have
//! deadlines, a leader with nothing else to propose writes a stamp-only
//! entry when a deadline passes and at least every
//! `CLUSTER_TIME_STAMP_INTERVAL_MS` (see `maybe_stamp_cluster_time`).

mod snapshot;

pub use snapshot::{SnapshotSettings, Snapshots};

use crate::error::{Error, Result};
use crate::fsm::command::{batch_stamp_ms, decode_batch_ref, encode_batch};
use crate::fsm::{Command, Fsm, Outcome};
use crate::limits;
use crate::metrics::ReplicaMetrics;
use crate::protocol::{encode_reply, Reply, Request};
use crate::raft::{self, Action, Entry, Envelope, Index, Message, NodeId, Role, Term};
use crate::storage::wal::Wal;
use crate::storage::Syncer;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Who is waiting for an answer: a connection's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRef {
    /// The connection's slab key in the reactor.
    pub key: usize,
    /// The connection's unique id (slab keys are reused).
    pub conn_id: u64,
    /// The command's sequence number on its connection.
    pub seq: u64,
}

pub struct ReplicaConfig {
    pub raft: raft::Config,
    /// Advertised client address of every member, for ERR_REDIRECT.
    pub client_addresses: BTreeMap<NodeId, String>,
    /// How long a command is held while no leader is known.
    pub hold_while_leaderless: Duration,
}

/// Observable state, for status, metrics and the demo's leader line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Option<Role>,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: Index,
    pub applied_index: Index,
    pub last_index: Index,
    pub files: usize,
}

struct Pending {
    client: ClientRef,
    request: Request,
    arrived: Instant,
}

/// A read answered from the state at position `offset` inside an entry.
struct AnchoredRead {
    offset: usize,
    client: ClientRef,
    name: Bytes,
}

/// One entry this leader proposed and whose commands wait for their fate.
struct Waiting {
    index: Index,
    term: Term,
    /// The entry's cluster-time stamp.
    stamp_ms: u64,
    /// One client per command, in command order.
    clients: Vec<ClientRef>,
    /// Sorted by offset.
    reads: Vec<AnchoredRead>,
    deadline: Instant,
    /// When it was proposed (for the apply latency metric).
    proposed_at: Instant,
}

/// The batch being built in this turn (one entry).
#[derive(Default)]
struct TurnBatch {
    commands: Vec<Command>,
    clients: Vec<ClientRef>,
    reads: Vec<AnchoredRead>,
    size_bytes: usize,
    deadline: Option<Instant>,
}

/// Written to the WAL and waiting for one fsync (see "Durability").
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

/// A connection's latest anchored position: `offset` inside entry `index`.
#[derive(Clone, Copy)]
struct ConnectionFloor {
    conn_id: u64,
    index: Index,
    offset: usize,
}

/// Reads answered at the applied index, waiting for a ReadIndex round.
struct ReadGroup {
    id: u64,
    answers: Vec<(ClientRef, Bytes)>,
    deadline: Instant,
}

pub struct Replica {
    raft: raft::Node,
    fsm: Fsm,
    wal: Wal,
    config: ReplicaConfig,
    actions: Vec<Action>,
    incoming: Vec<Pending>,
    held: VecDeque<Pending>,
    batches: Vec<TurnBatch>,
    turn_reads: Vec<(ClientRef, Bytes)>,
    waiting: VecDeque<Waiting>,
    read_groups: VecDeque<ReadGroup>,
    next_read_id: u64,
    /// Per connection (indexed by its slab key): the latest unapplied log
    /// position one of its commands is anchored at; its later reads must not
    /// be answered from before it. A plain vector: one store per command,
    /// no hashing; an entry counts only while its `conn_id` matches.
    connection_floor: Vec<Option<ConnectionFloor>>,
    applied_index: Index,
    applied_term: Term,
    /// Largest cluster-time stamp seen in the log (appended or applied).
    max_stamp_ms: u64,
    /// (cluster time at the start of leadership, the monotonic instant then).
    leader_clock: Option<(u64, Instant, Term)>,
    last_proposed_stamp_ms: u64,
    reply_buffer: BytesMut,
    /// Answers ready for the reactor to hand to connections.
    pub replies: Vec<(ClientRef, Bytes)>,
    /// Messages the reactor sends after this turn.
    pub messages: Vec<Envelope>,
    /// A leader's appends and heartbeats: sent at once, before any fsync.
    early_messages: Vec<Envelope>,
    /// This turn's other messages, until they join a `SyncBatch`.
    durable_messages: Vec<Envelope>,
    /// The fsyncs running on the sync threads, oldest first, by request id.
    syncing: VecDeque<(u64, SyncBatch)>,
    next_sync_id: u64,
    /// Written since the newest of `syncing` started; the next fsync.
    gathering: SyncBatch,
    /// The WAL's sync thread; `None` = sync in place.
    syncer: Option<Syncer>,
    /// Counters and histograms for `GET /metrics` (plain increments).
    pub metrics: ReplicaMetrics,
    /// The instant the current turn started (for cluster time during apply).
    turn_now: Instant,
    snapshots: Option<Snapshots>,
}

impl Replica {
    pub fn new(config: ReplicaConfig, wal: Wal, restored: raft::Restored) -> Replica {
        let max_stamp_ms = restored
            .entries
            .iter()
            .rev()
            .find_map(|e| batch_stamp_ms(&e.data))
            .unwrap_or(0);
        let raft = raft::Node::new(config.raft.clone(), restored);
        Replica {
            raft,
            fsm: Fsm::new(),
            wal,
            config,
            actions: Vec::new(),
            incoming: Vec::new(),
            held: VecDeque::new(),
            batches: Vec::new(),
            turn_reads: Vec::new(),
            waiting: VecDeque::new(),
            read_groups: VecDeque::new(),
            next_read_id: 1,
            connection_floor: Vec::new(),
            applied_index: 0,
            applied_term: 0,
            max_stamp_ms,
            leader_clock: None,
            last_proposed_stamp_ms: 0,
            reply_buffer: BytesMut::new(),
            replies: Vec::new(),
            messages: Vec::new(),
            early_messages: Vec::new(),
            durable_messages: Vec::new(),
            syncing: VecDeque::new(),
            next_sync_id: 1,
            gathering: SyncBatch::default(),
            syncer: None,
            metrics: ReplicaMetrics::default(),
            turn_now: Instant::now(),
            snapshots: None,
        }
    }

    /// Moves fsyncs to a thread of their own; `notify` (the reactor's
    /// waker) runs on it whenever one is done, and the next `end_turn`
    /// takes the result.
    pub fn start_background_sync(&mut self, notify: Box<dyn Fn() + Send + Sync>) -> Result<()> {
        let syncer = Syncer::start(limits::SYNCS_IN_FLIGHT_MAX, notify)
            .map_err(|e| Error::io("starting the WAL sync threads", e))?;
        self.syncer = Some(syncer);
        Ok(())
    }

    pub fn id(&self) -> NodeId {
        self.raft.id()
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.raft.id(),
            role: Some(self.raft.role()),
            term: self.raft.term(),
            leader: self.raft.leader_id(),
            commit_index: self.raft.commit_index(),
            applied_index: self.applied_index,
            last_index: self.raft.last_index(),
            files: self.fsm.len(),
        }
    }

    /// The Raft core, for read-only views (metrics, status).
    pub fn raft(&self) -> &raft::Node {
        &self.raft
    }

    pub fn fsm(&self) -> &Fsm {
        &self.fsm
    }

    /// A client request, answered in a later `end_turn`.
    pub fn submit(&mut self, client: ClientRef, request: Request, now: Instant) {
        self.incoming.push(Pending {
            client,
            request,
            arrived: now,
        });
    }

    /// Answer a client at once (e.g. ERR_CMD_ERR from framing).
    pub fn answer(&mut self, client: ClientRef, reply: Reply<'_>) {
        let bytes = cut_answer(&mut self.reply_buffer, |out| encode_reply(&reply, out));
        self.replies.push((client, bytes));
    }

    pub fn connection_closed(&mut self, key: usize) {
        if let Some(floor) = self.connection_floor.get_mut(key) {
            *floor = None;
        }
    }

    fn connection_floor(&self, client: ClientRef) -> Option<(Index, usize)> {
        let floor = self.connection_floor.get(client.key).copied().flatten()?;
        (floor.conn_id == client.conn_id).then_some((floor.index, floor.offset))
    }

    /// Raises the connection's floor to `(index, offset)` (never lowers it:
    /// a read anchored early in a batch must not hide a later write of the
    /// same connection from its next read).
    fn set_connection_floor(&mut self, client: ClientRef, index: Index, offset: usize) {
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
                offset,
            });
        }
    }

    /// Accept a peer's incarnation at handshake, or say why not.
    pub fn accept_peer(
        &mut self,
        from: NodeId,
        incarnation: u64,
    ) -> std::result::Result<(), String> {
        self.raft
            .observe_incarnation(from, incarnation)
            .map_err(|e| describe_step_error(&e))
    }

    /// A message from a peer. Refused messages are logged and dropped.
    pub fn step(&mut self, envelope: Envelope) {
        if let Err(error) = self.raft.step(envelope) {
            log::warn!("dropped a peer message: {}", describe_step_error(&error));
        }
    }

    pub fn tick(&mut self, now: Instant) {
        self.raft.tick();
        self.expire_waiting(now);
    }

    /// Start handing leadership away (graceful stop). Returns the target.
    pub fn transfer_leadership(&mut self) -> Option<NodeId> {
        self.raft.transfer_leadership(None).ok()
    }

    /// Whether commands are still waiting for an answer.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty() || !self.read_groups.is_empty() || !self.held.is_empty()
    }

    /// Run one turn: route requests, propose, persist + fsync, release sends,
    /// apply, answer. An error means the node must stop (I/O or corruption).
    ///
    /// `send_now` takes messages that may leave before this turn's fsync
    /// (the reactor sends and flushes them at once); the rest wait in
    /// `messages` until `end_turn` returns.
    pub fn end_turn(
        &mut self,
        now: Instant,
        send_now: &mut dyn FnMut(&mut Vec<Envelope>),
    ) -> Result<()> {
        self.turn_now = now;
        self.finish_background_sync()?;
        self.update_leader_clock(now);
        self.route_requests(now);
        self.maybe_stamp_cluster_time(now);
        self.propose_batches(now);
        self.register_turn_reads(now);
        self.run_actions(send_now)?;
        self.maybe_snapshot();
        Ok(())
    }

    /// Leader and not handing leadership away (during a transfer commands
    /// are held, then redirected to the new leader).
    fn is_ready_leader(&self) -> bool {
        self.raft.role() == Role::Leader && self.raft.transfer_target().is_none()
    }

    /// Reads need this term's first entry applied: only then has the applied
    /// state every write acknowledged by any earlier leader.
    fn is_ready_for_reads(&self) -> bool {
        self.is_ready_leader() && self.applied_term == self.raft.term()
    }

    fn update_leader_clock(&mut self, now: Instant) {
        let term = self.raft.term();
        match (self.raft.role(), self.leader_clock) {
            (Role::Leader, Some((_, _, clock_term))) if clock_term == term => {}
            (Role::Leader, _) => {
                let base_ms = self.max_stamp_ms.max(self.fsm.cluster_time_ms());
                let base_ms = if base_ms == 0 {
                    wall_clock_ms()
                } else {
                    base_ms
                };
                self.leader_clock = Some((base_ms, now, term));
            }
            _ => self.leader_clock = None,
        }
    }

    /// The leader's cluster time now; never below a stamp already proposed.
    fn cluster_time_ms(&self, now: Instant) -> u64 {
        match self.leader_clock {
            Some((base_ms, since, _)) => {
                let elapsed_ms = now.saturating_duration_since(since).as_millis() as u64;
                base_ms
                    .saturating_add(elapsed_ms)
                    .max(self.last_proposed_stamp_ms)
            }
            None => self.max_stamp_ms.max(self.fsm.cluster_time_ms()),
        }
    }

    fn route_requests(&mut self, now: Instant) {
        let mut queue = std::mem::take(&mut self.held);
        queue.extend(self.incoming.drain(..));
        // Connections with a command held this turn: their later commands
        // wait behind it, so per-connection order is kept.
        let mut blocked: Vec<u64> = Vec::new();
        for pending in queue {
            if blocked.contains(&pending.client.conn_id) {
                self.held.push_back(pending);
                continue;
            }
            let is_read = matches!(pending.request, Request::Read { .. });
            if self.is_ready_leader() && (!is_read || self.is_ready_for_reads()) {
                self.route_as_leader(pending, now);
            } else if let Some(leader) = self.raft.leader_id().filter(|&l| l != self.raft.id()) {
                self.answer_redirect(pending.client, Some(leader));
            } else if now.saturating_duration_since(pending.arrived)
                >= self.config.hold_while_leaderless
            {
                self.answer(pending.client, Reply::Internal);
            } else {
                blocked.push(pending.client.conn_id);
                self.held.push_back(pending);
            }
        }
    }

    fn answer_redirect(&mut self, client: ClientRef, leader: Option<NodeId>) {
        let address = leader
            .and_then(|l| self.config.client_addresses.get(&l))
            .cloned();
        match address {
            Some(address) if leader != Some(self.raft.id()) => {
                self.answer(client, Reply::Redirect(&address))
            }
            _ => self.answer(client, Reply::Internal),
        }
    }

    fn route_as_leader(&mut self, pending: Pending, now: Instant) {
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
                let deadline = pending.arrived + Duration::from_millis(limits::COMMAND_TIMEOUT_MS);
                if let Some(batch) = self.batches.last_mut() {
                    batch.commands.push(command);
                    batch.clients.push(pending.client);
                    batch.size_bytes += size_bytes;
                    batch.deadline = Some(batch.deadline.map_or(deadline, |d| d.min(deadline)));
                }
            }
            Request::Read { name } => {
                let client = pending.client;
                if let Some(batch) = self.batches.last_mut() {
                    let offset = batch.commands.len();
                    batch.reads.push(AnchoredRead {
                        offset,
                        client,
                        name,
                    });
                    return;
                }
                let floor = self.connection_floor(client);
                if let Some((index, offset)) =
                    floor.filter(|&(index, _)| index > self.applied_index)
                {
                    if let Some(waiting) = self.waiting_mut(index) {
                        waiting.reads.push(AnchoredRead {
                            offset,
                            client,
                            name,
                        });
                        return;
                    }
                }
                let answer =
                    self.render_read(&name, self.fsm.cluster_time_ms(), self.cluster_time_ms(now));
                self.turn_reads.push((client, answer));
            }
        }
    }

    fn waiting_mut(&mut self, index: Index) -> Option<&mut Waiting> {
        let position = self
            .waiting
            .binary_search_by_key(&index, |w| w.index)
            .ok()?;
        self.waiting.get_mut(position)
    }

    fn propose_batches(&mut self, now: Instant) {
        let batches = std::mem::take(&mut self.batches);
        for batch in batches {
            if batch.commands.is_empty() {
                // Only reads: they were anchored to a batch that no longer
                // gets commands; answer them like reads at the applied index.
                for read in batch.reads {
                    let answer = self.render_read(
                        &read.name,
                        self.fsm.cluster_time_ms(),
                        self.cluster_time_ms(now),
                    );
                    self.turn_reads.push((read.client, answer));
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
                    for (offset, client) in batch.clients.iter().enumerate() {
                        self.set_connection_floor(*client, index, offset + 1);
                    }
                    for read in &batch.reads {
                        self.set_connection_floor(read.client, index, read.offset);
                    }
                    self.waiting.push_back(Waiting {
                        index,
                        term: self.raft.term(),
                        stamp_ms,
                        clients: batch.clients,
                        reads: batch.reads,
                        deadline: batch.deadline.unwrap_or(now),
                        proposed_at: now,
                    });
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

    /// A stamp-only entry (no command), proposed when no batch of this turn
    /// carries time forward and either
    /// - a file's deadline has passed on the leader's clock but not in the
    ///   applied state (reads judge liveness at the applied cluster time, so
    ///   this is what makes the expiry visible), or
    /// - files have deadlines and the last stamp is older than
    ///   `CLUSTER_TIME_STAMP_INTERVAL_MS` (a new leader starts from the last
    ///   stamp in its log; without this a leader change after a quiet spell
    ///   would make files expire late by the whole spell).
    ///
    /// It waits like any proposal, with no client.
    fn maybe_stamp_cluster_time(&mut self, now: Instant) {
        if !self.is_ready_for_reads() || !self.batches.is_empty() {
            return;
        }
        let Some(deadline_ms) = self.fsm.next_deadline_ms() else {
            return;
        };
        let stamp_ms = self.cluster_time_ms(now);
        let carried = self
            .waiting
            .back()
            .is_some_and(|w| w.stamp_ms >= deadline_ms);
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
            self.waiting.push_back(Waiting {
                index,
                term: self.raft.term(),
                stamp_ms,
                clients: Vec::new(),
                reads: Vec::new(),
                deadline: now + Duration::from_millis(limits::COMMAND_TIMEOUT_MS),
                proposed_at: now,
            });
        }
    }

    fn register_turn_reads(&mut self, now: Instant) {
        if self.turn_reads.is_empty() {
            return;
        }
        let answers = std::mem::take(&mut self.turn_reads);
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.raft.read_index(id) {
            Ok(()) => self.read_groups.push_back(ReadGroup {
                id,
                answers,
                deadline: now + Duration::from_millis(limits::COMMAND_TIMEOUT_MS),
            }),
            Err(not_leader) => {
                for (client, _) in answers {
                    self.answer_redirect(client, not_leader.leader);
                }
            }
        }
    }

    /// Execute the core's actions until it has nothing more to say, then
    /// hand what the turn wrote to an fsync (see "Durability").
    fn run_actions(&mut self, send_now: &mut dyn FnMut(&mut Vec<Envelope>)) -> Result<()> {
        loop {
            self.raft.drain_actions(&mut self.actions);
            if self.actions.is_empty() {
                send_now(&mut self.early_messages);
                self.place_durable_messages();
                if self.gathering.written
                    && self.syncing.len() < limits::SYNCS_IN_FLIGHT_MAX
                    && self.start_sync()?
                {
                    continue;
                }
                return Ok(());
            }
            let mut actions = std::mem::take(&mut self.actions);
            for action in actions.drain(..) {
                self.execute(action)?;
            }
            self.actions = actions;
        }
    }

    /// The turn's messages wait for everything written before them: the
    /// gathering batch if it has anything, else the newest running fsync,
    /// else nothing.
    fn place_durable_messages(&mut self) {
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
            None => self.messages.append(&mut self.durable_messages),
        }
    }

    /// Starts the fsync of the gathering batch. `true` when it is already
    /// done (synced in place, or nothing needed syncing) and its effects
    /// ran, so the core may have more to say.
    fn start_sync(&mut self) -> Result<bool> {
        let batch = std::mem::take(&mut self.gathering);
        let started = Instant::now();
        if let Some(syncer) = &self.syncer {
            if let Some(mut request) = self.wal.begin_sync()? {
                let id = self.next_sync_id;
                self.next_sync_id += 1;
                request.id = id;
                syncer.submit(request)?;
                self.syncing.push_back((id, batch));
                return Ok(false);
            }
        } else {
            self.wal.sync()?;
        }
        // Synced in place, or written with nothing to fsync (`fsync` off).
        self.record_fsync_time(started.elapsed());
        self.batch_durable(batch);
        Ok(true)
    }

    /// Takes the finished background fsyncs and releases, in order, every
    /// batch one of them covers.
    fn finish_background_sync(&mut self) -> Result<()> {
        loop {
            let Some(syncer) = &self.syncer else {
                return Ok(());
            };
            let Some(done) = syncer.try_done()? else {
                return Ok(());
            };
            let done_id = done.id;
            self.record_fsync_time(done.took);
            self.wal.end_sync(done)?;
            while self.syncing.front().is_some_and(|(id, _)| *id <= done_id) {
                if let Some((_, batch)) = self.syncing.pop_front() {
                    self.batch_durable(batch);
                }
            }
        }
    }

    fn batch_durable(&mut self, batch: SyncBatch) {
        self.messages.extend(batch.messages);
        if let Some((index, term)) = batch.persisted {
            self.raft.persisted(index, term);
        }
    }

    /// A new term or vote is written but not yet durable.
    fn hard_state_unsynced(&self) -> bool {
        self.gathering.hard_state || self.syncing.iter().any(|(_, batch)| batch.hard_state)
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

    fn execute(&mut self, action: Action) -> Result<()> {
        match action {
            Action::PersistHardState(hard_state) => {
                self.wal.save_hard_state(&hard_state)?;
                self.gathering.written = true;
                self.gathering.hard_state = true;
            }
            Action::PersistEntries(entries) => {
                let Some(first) = entries.first() else {
                    return Ok(());
                };
                if first.index <= self.wal.last_index() {
                    self.fail_truncated_from(first.index);
                }
                self.wal.append(&entries)?;
                self.gathering.written = true;
                if let Some(last) = entries.last() {
                    self.gathering.persisted = Some((last.index, last.term));
                }
                if let Some(stamp_ms) = entries.iter().rev().find_map(|e| batch_stamp_ms(&e.data)) {
                    self.max_stamp_ms = self.max_stamp_ms.max(stamp_ms);
                }
            }
            Action::Send(envelope) => {
                // Only a leader's appends and heartbeats promise nothing
                // durable; everything else waits for an fsync, and so does
                // everything while a new term or vote is unsynced.
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
            Action::Apply(entries) => {
                for entry in &entries {
                    self.apply(entry)?;
                }
            }
            Action::ReadReady { id, .. } => {
                while let Some(group) = self.read_groups.front() {
                    if group.id > id {
                        break;
                    }
                    if let Some(group) = self.read_groups.pop_front() {
                        self.replies.extend(group.answers);
                    }
                }
            }
            Action::SendSnapshotChunk {
                envelope,
                length_bytes,
            } => self.send_snapshot_chunk(&envelope, length_bytes),
            Action::SnapshotChunk {
                from,
                snapshot,
                offset,
                data,
            } => self.receive_snapshot_chunk(from, snapshot, offset, &data)?,
            Action::ReadFailed { id } => {
                if let Some(position) = self.read_groups.iter().position(|g| g.id == id) {
                    if let Some(group) = self.read_groups.remove(position) {
                        let leader = self.raft.leader_id();
                        for (client, _) in group.answers {
                            self.answer_redirect(client, leader);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Entries from `index` on are being replaced: commands waiting on them
    /// were never committed here (SPEC §3: ERR_REDIRECT).
    fn fail_truncated_from(&mut self, index: Index) {
        let leader = self.raft.leader_id();
        while self.waiting.back().is_some_and(|w| w.index >= index) {
            if let Some(waiting) = self.waiting.pop_back() {
                self.fail_waiting(waiting, leader);
            }
        }
    }

    fn fail_waiting(&mut self, waiting: Waiting, leader: Option<NodeId>) {
        for client in waiting.clients {
            self.answer_redirect(client, leader);
        }
        for read in waiting.reads {
            self.answer_redirect(read.client, leader);
        }
    }

    fn apply(&mut self, entry: &Entry) -> Result<()> {
        debug_assert_eq!(
            entry.index,
            self.applied_index + 1,
            "entries apply in order, once"
        );
        self.applied_index = entry.index;
        self.applied_term = entry.term;
        self.note_applied_bytes(entry.size_bytes());
        // Waiting entries before this one can no longer be ours.
        while self.waiting.front().is_some_and(|w| w.index < entry.index) {
            if let Some(stale) = self.waiting.pop_front() {
                self.fail_waiting(stale, self.raft.leader_id());
            }
        }
        let mine = match self.waiting.front() {
            Some(w) if w.index == entry.index && w.term == entry.term => self.waiting.pop_front(),
            Some(w) if w.index == entry.index => {
                if let Some(replaced) = self.waiting.pop_front() {
                    self.fail_waiting(replaced, self.raft.leader_id());
                }
                None
            }
            _ => None,
        };
        if let Some(waiting) = &mine {
            self.metrics
                .apply_latency_seconds
                .record_duration(waiting.proposed_at.elapsed());
        }
        if entry.data.is_empty() {
            return Ok(());
        }
        let batch = decode_batch_ref(&entry.data).map_err(|e| {
            Error::Corrupt(format!(
                "committed entry {} does not decode: {e:?}",
                entry.index
            ))
        })?;
        self.max_stamp_ms = self.max_stamp_ms.max(batch.stamp_ms);
        let time_ms = self.fsm.begin_batch(batch.stamp_ms);
        let display_ms = self.cluster_time_ms(self.turn_now);
        let display_ms = display_ms.max(time_ms);
        let (clients, reads) = match mine {
            Some(waiting) => (waiting.clients, waiting.reads),
            None => (Vec::new(), Vec::new()),
        };
        let mut reads = reads.into_iter().peekable();
        for (offset, command) in batch.commands.into_iter().enumerate() {
            while let Some(read) = reads.next_if(|r| r.offset <= offset) {
                let answer = self.render_read(&read.name, time_ms, display_ms);
                self.replies.push((read.client, answer));
            }
            let outcome = self.fsm.apply_command(command, time_ms);
            if let Some(&client) = clients.get(offset) {
                let answer = cut_answer(&mut self.reply_buffer, |out| encode_outcome(outcome, out));
                self.replies.push((client, answer));
            }
        }
        for read in reads {
            let answer = self.render_read(&read.name, time_ms, display_ms);
            self.replies.push((read.client, answer));
        }
        Ok(())
    }

    /// The encoded answer to `read NAME` from the state applied so far.
    fn render_read(&mut self, name: &[u8], live_ms: u64, display_ms: u64) -> Bytes {
        cut_answer(&mut self.reply_buffer, |out| {
            encode_read(&self.fsm, name, live_ms, display_ms, out)
        })
    }

    fn expire_waiting(&mut self, now: Instant) {
        while self.waiting.front().is_some_and(|w| w.deadline <= now) {
            if let Some(waiting) = self.waiting.pop_front() {
                for client in waiting.clients {
                    self.answer(client, Reply::Internal);
                }
                for read in waiting.reads {
                    self.answer(read.client, Reply::Internal);
                }
            }
        }
        while self.read_groups.front().is_some_and(|g| g.deadline <= now) {
            if let Some(group) = self.read_groups.pop_front() {
                for (client, _) in group.answers {
                    self.answer(client, Reply::Internal);
                }
            }
        }
    }
}

/// Encode the answer to `read NAME`. Whether the file is alive is judged at
/// `live_ms`, the cluster time of the applied state the read sees (so a file
/// never comes back: a later leader starts from at least that time); the
/// seconds left are shown against `display_ms`, the leader's cluster time
/// now (at least 1 while the file is alive: it may expire late, never early).
fn encode_read(fsm: &Fsm, name: &[u8], live_ms: u64, display_ms: u64, out: &mut BytesMut) {
    match fsm.read(name, live_ms) {
        Some(file) => {
            let expires_in_s = match file.deadline_ms {
                Some(deadline_ms) => deadline_ms
                    .saturating_sub(display_ms)
                    .div_ceil(1_000)
                    .max(1),
                None => 0,
            };
            encode_reply(
                &Reply::Contents {
                    version: file.version,
                    content: file.content,
                    expires_in_s,
                },
                out,
            )
        }
        None => encode_reply(&Reply::NotFound, out),
    }
}

/// Encodes one answer into `buffer` and cuts it off as its own `Bytes`.
/// Answers share `REPLY_BUFFER_CHUNK_BYTES` blocks (one allocation for many
/// small answers, where an empty buffer costs two per answer); a large one
/// grows the block itself.
fn cut_answer(buffer: &mut BytesMut, encode: impl FnOnce(&mut BytesMut)) -> Bytes {
    if buffer.capacity() < limits::READ_REPLY_HEADER_BYTES_MAX {
        buffer.reserve(limits::REPLY_BUFFER_CHUNK_BYTES);
    }
    encode(buffer);
    buffer.split().freeze()
}

fn encode_outcome(outcome: Outcome, out: &mut BytesMut) {
    let reply = match outcome {
        Outcome::Written { version } => Reply::Written { version },
        Outcome::Deleted => Reply::Deleted,
        Outcome::NotFound => Reply::NotFound,
        Outcome::VersionMismatch { current } => Reply::VersionMismatch { current },
    };
    encode_reply(&reply, out);
}

fn command_size_bytes(command: &Command) -> usize {
    match command {
        Command::Write { name, content, .. } | Command::Cas { name, content, .. } => {
            name.len() + content.len() + 32
        }
        Command::Delete { name } => name.len() + 16,
    }
}

/// Test hook: milliseconds added to this node's wall clock (negative moves
/// it back), so tests can give nodes clocks far apart without touching the
/// system clock (tests/clock.rs).
pub const WALL_CLOCK_OFFSET_ENV: &str = "RAFTFS_TEST_WALL_CLOCK_OFFSET_MS";

/// The only wall-clock read in the node: where cluster time starts when the
/// log holds no stamp yet (SPEC §2). Everything else uses `Instant`.
fn wall_clock_ms() -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let offset_ms: i64 = std::env::var(WALL_CLOCK_OFFSET_ENV)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    now_ms.saturating_add_signed(offset_ms).max(1)
}

fn describe_step_error(error: &raft::StepError) -> String {
    match error {
        raft::StepError::WrongIncarnation { from, recorded, got } => format!(
            "node {from} came back with data-dir incarnation {got:016x}, but this cluster knows it as \
             {recorded:016x}: its data dir was lost or replaced, so it may not rejoin under its old id \
             (replacing a lost host needs membership change)"
        ),
        raft::StepError::NotForUs => "message not addressed to this node or from a non-member".into(),
    }
}
