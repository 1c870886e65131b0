//! One raftfs node minus its sockets, threads and clocks: the Raft core, the
//! file map, the durability pipeline and the table of client commands
//! waiting for an answer. A deterministic state machine: the same inputs in
//! the same order give the same outputs, whoever drives it.
//!
//! Two drivers run this same code: `net::reactor` (real sockets, and
//! `storage::NodeStorage`: the WAL, its fsync threads, the snapshot helper
//! thread) and `sim` (a seeded network, simulated disks that lose what was
//! not synced, simulated clients, a logical clock). Nothing in here reads a
//! clock, opens a socket, starts a thread or knows the wire format.
//!
//! Inputs: `client_request` (a parsed command with its connection and
//! sequence number), `connection_closed`, `accept_peer` and `step` (peer
//! messages), `tick` (the time), `synced` / `sync_failed` (an fsync the
//! replica asked for finished), `snapshot_done` (a snapshot the helper
//! took), `transfer_leadership`, `drain`; then `end_turn`, once per
//! driver turn.
//! Outputs, drained by the driver after `end_turn`: `replies` (answers, each
//! for one connection's sequence number; the driver puts them in order) and
//! `messages` (envelopes that may leave now). Writes, fsync requests and
//! snapshot work go to the `Storage` port the driver passes to `end_turn`,
//! in the order durability needs (`durability`).
//!
//! A turn (`end_turn`):
//! 1. route the turn's requests (`routing`): not leader → `ERR_REDIRECT`
//!    (or held up to one election timeout while no leader is known); leader
//!    → writes join the turn's batch, reads get a position in the log;
//! 2. propose the batch as one entry (a few if large) stamped with cluster
//!    time (`clock`), and register one ReadIndex round for the reads that
//!    need one;
//! 3. run the core's actions in order (`durability`): persists go to
//!    storage; applies run the file map and answer the waiting commands
//!    (`apply`); what the turn wrote is handed to one fsync (group commit);
//!    messages that promise durable state wait for the fsync covering it;
//! 4. route the watches that what was applied woke and the commands held
//!    behind watches just answered, through steps 1-3 again (at most
//!    `WATCH_PASSES_PER_TURN_MAX` times; `watch`);
//! 5. collect a finished snapshot, start one if due (`snapshot`).
//!
//! Invariants: every command gets exactly one answer (its real result,
//! `ERR_REDIRECT` if it was never applied, or `ERR_INTERNAL` when its fate
//! cannot be known here or it waited `COMMAND_TIMEOUT_MS`); nothing that
//! promises durable state leaves before the fsync covering it; after a
//! failed fsync nothing more is acknowledged (`end_turn` fails from then
//! on); reads are linearizable and in per-connection order (`routing`); a
//! watch is answered only by such a read (`watch`).

mod apply;
mod clock;
mod durability;
mod forward;
mod members;
mod routing;
mod snapshot;
pub mod storage;
mod watch;

pub use members::{MemberView, MembershipView};
pub use snapshot::SnapshotDone;
pub use storage::Storage;

use crate::error::{Error, Result};
use crate::fsm::command::batch_stamp_ms;
use crate::fsm::Fsm;
use crate::limits;
use crate::metrics::ReplicaMetrics;
use crate::protocol::{Reply, Request};
use crate::raft::{self, Action, Envelope, HardState, Index, NodeId, Role, Term};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};

/// Entries proposed by this node, by (index, term).
type WaitingEntries = BTreeMap<(Index, Term), Waiting>;

use apply::{ReadGroup, Waiting};
use durability::Durability;
use forward::Forwarding;
use routing::{ConnectionFloor, Pending, TurnBatch};
use snapshot::Snapshots;
use watch::Watches;

/// Who is waiting for an answer: a connection's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientRef {
    /// The connection's key in the driver (a slab key: reused once closed).
    pub key: usize,
    /// The connection's unique id (keys are reused).
    pub conn_id: u64,
    /// The command's sequence number on its connection.
    pub seq: u64,
}

/// The time as the driver sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Microseconds on a monotonic clock with an arbitrary origin.
    pub monotonic_us: u64,
    /// Milliseconds since the Unix epoch; used only where cluster time
    /// starts (SPEC §2), never to judge expiry.
    pub wall_ms: u64,
}

impl Now {
    /// `ms` milliseconds after this instant, saturating.
    fn after_ms(&self, ms: u64) -> u64 {
        self.monotonic_us.saturating_add(ms.saturating_mul(1_000))
    }
}

pub struct ReplicaConfig {
    pub raft: raft::Config,
    /// Advertised client address of every member cluster.toml lists, for
    /// ERR_REDIRECT (the configuration in force names the others).
    pub client_addresses: BTreeMap<NodeId, String>,
    /// How long a command is held while no leader is known.
    pub hold_while_leaderless_ms: u64,
    /// Take a snapshot once this many entries were applied since the last.
    pub snapshot_entries: u64,
    /// What this node does with client commands while it is not leader.
    pub follower_requests: crate::config::FollowerRequests,
    /// A number that differs on every start of this node (the reactor:
    /// random; the simulator: from its seed); names its forwarded batches.
    pub session: u64,
}

/// What a node starts from: its durable hard state and what
/// `snapshot::restore` chose (the state machine, the snapshot it came from,
/// the log after it, and a log-start record still to write).
pub struct Boot {
    pub hard_state: HardState,
    pub restore: crate::snapshot::Restore,
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

pub struct Replica {
    raft: raft::Node,
    fsm: Fsm,
    config: ReplicaConfig,
    actions: Vec<Action>,
    /// Requests read this turn, routed at `end_turn`.
    incoming: Vec<Pending>,
    /// Requests held while no leader is known (and every later one of their
    /// connections, so per-connection order holds).
    held: VecDeque<Pending>,
    /// This turn's proposals being built (one entry each).
    batches: Vec<TurnBatch>,
    /// This turn's reads answered at the applied index, waiting for a
    /// ReadIndex round.
    turn_reads: Vec<(ClientRef, Bytes)>,
    /// Reads anchored in an earlier entry that also need this turn's round.
    turn_reads_anchored: u64,
    /// Entries this node proposed as leader, with what waits on them,
    /// until the entry at their index is applied (see `apply`).
    waiting: WaitingEntries,
    /// Read rounds not yet confirmed, oldest first.
    read_groups: VecDeque<ReadGroup>,
    next_read_id: u64,
    /// The newest read round the core confirmed.
    read_confirmed_id: u64,
    /// Per connection (indexed by its key): the latest unapplied log
    /// position one of its commands is anchored at (see `routing`).
    connection_floor: Vec<Option<ConnectionFloor>>,
    applied_index: Index,
    applied_term: Term,
    /// Largest cluster-time stamp seen in the log (appended or applied).
    max_stamp_ms: u64,
    /// (cluster time at the start of leadership, monotonic µs then, term).
    leader_clock: Option<(u64, u64, Term)>,
    last_proposed_stamp_ms: u64,
    /// The time of the current turn (cluster time shown by reads).
    now: Now,
    /// When the next Raft tick is due (monotonic µs); 0 = at the first call.
    next_tick_us: u64,
    /// A log-start record the restore asked for, written in the first turn.
    boot_log_start: Option<(Index, Term)>,
    durability: Durability,
    reply_buffer: BytesMut,
    /// Answers for the driver to hand to connections.
    pub replies: Vec<(ClientRef, Bytes)>,
    /// Messages that may leave now.
    pub messages: Vec<Envelope>,
    /// Counters and histograms for `GET /metrics` (plain increments).
    pub metrics: ReplicaMetrics,
    snapshots: Snapshots,
    /// Watches waiting on this node, and the commands held behind them.
    watches: Watches,
    /// Followers serving commands (`forward`).
    forwarding: Forwarding,
    /// Stopping: new commands are sent to the leader (`drain`).
    draining: bool,
    /// Members that refused this node's data dir (`members::peer_refused`).
    refused_by: std::collections::BTreeSet<NodeId>,
    /// Why the node must stop (a failed fsync): nothing is acknowledged
    /// past it.
    failed: Option<String>,
}

impl Replica {
    pub fn new(config: ReplicaConfig, boot: Boot) -> Replica {
        let Boot {
            hard_state,
            restore,
        } = boot;
        let max_stamp_ms = restore
            .entries
            .iter()
            .rev()
            .find_map(|e| batch_stamp_ms(&e.data))
            .unwrap_or(0)
            .max(restore.fsm.cluster_time_ms());
        let snapshot = restore.snapshot;
        let restored = raft::Restored {
            hard_state,
            entries: restore.entries,
            snapshot,
            snapshot_configuration: snapshot
                .and_then(|_| members::snapshot_configuration(&restore.fsm)),
        };
        let raft = raft::Node::new(config.raft.clone(), restored);
        let (applied_index, applied_term) = snapshot.map_or((0, 0), |s| (s.index, s.term));
        let snapshots = Snapshots::new(config.snapshot_entries, restore.kept);
        let forwarding = Forwarding::new(config.session);
        Replica {
            raft,
            fsm: restore.fsm,
            config,
            actions: Vec::new(),
            incoming: Vec::new(),
            held: VecDeque::new(),
            batches: Vec::new(),
            turn_reads: Vec::new(),
            turn_reads_anchored: 0,
            waiting: BTreeMap::new(),
            read_groups: VecDeque::new(),
            next_read_id: 1,
            read_confirmed_id: 0,
            connection_floor: Vec::new(),
            applied_index,
            applied_term,
            max_stamp_ms,
            leader_clock: None,
            last_proposed_stamp_ms: 0,
            now: Now::default(),
            next_tick_us: 0,
            boot_log_start: restore.log_start,
            // What was replayed may not be durable yet (a process killed
            // before its fsync leaves writes in the page cache): the first
            // turn syncs it before anything that promises it leaves.
            durability: Durability::after_restart(),
            reply_buffer: BytesMut::new(),
            replies: Vec::new(),
            messages: Vec::new(),
            metrics: ReplicaMetrics::default(),
            snapshots,
            watches: Watches::default(),
            forwarding,
            draining: false,
            refused_by: std::collections::BTreeSet::new(),
            failed: None,
        }
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

    /// The Raft core, for read-only views (metrics, status, the simulator).
    pub fn raft(&self) -> &raft::Node {
        &self.raft
    }

    pub fn fsm(&self) -> &Fsm {
        &self.fsm
    }

    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// A client request, answered in this or a later `end_turn`.
    pub fn client_request(&mut self, client: ClientRef, request: Request, now: Now) {
        self.admit(Pending {
            client,
            request,
            arrived_us: now.monotonic_us,
        });
    }

    /// A request joins the turn's incoming ones, unless a watch of its
    /// connection holds it; a watch opens its connection's block (`watch`).
    fn admit(&mut self, pending: Pending) {
        let Some(pending) = self.watches.hold_if_blocked(pending) else {
            return;
        };
        if let Request::Watch { name, version } = &pending.request {
            if !self.watches.open(pending.client, name, *version) {
                self.answer(pending.client, Reply::Internal);
                return;
            }
        }
        self.incoming.push(pending);
    }

    /// The connection with this key closed: forget its floor, its watch and
    /// the commands held behind it.
    pub fn connection_closed(&mut self, key: usize) {
        if let Some(floor) = self.connection_floor.get_mut(key) {
            *floor = None;
        }
        self.watches.connection_closed(key);
        self.forwarding.connection_closed(key);
    }

    /// Watches outstanding on this node (waiting for a change or being
    /// checked).
    pub fn watches_outstanding(&self) -> usize {
        self.watches.len()
    }

    /// Watches woken since start (by a change, an install, a leaderless
    /// spell), for the simulator's figures.
    pub fn watches_woken(&self) -> u64 {
        self.watches.woken_total
    }

    /// Panics if the watch table and its indexes disagree (the simulator
    /// checks after every step).
    pub fn check_watch_invariants(&self) {
        self.watches.check_invariants();
    }

    /// A message from a peer. Refused messages are logged and dropped.
    pub fn step(&mut self, envelope: Envelope) {
        if envelope.message.is_client_traffic() {
            let now = self.now;
            self.step_client_traffic(envelope, now);
            return;
        }
        if let Err(error) = self.raft.step(envelope) {
            log::warn!("dropped a peer message: {}", describe_step_error(&error));
        }
    }

    /// The time now: delivers the Raft ticks due since the last call (at
    /// most `TICKS_PER_CALL_MAX`: after a long stall the node catches up
    /// gradually instead of firing every missed timeout at once) and
    /// answers the commands whose deadline passed.
    pub fn tick(&mut self, now: Now) {
        let tick_us = limits::TICK_MS * 1_000;
        if self.next_tick_us == 0 {
            self.next_tick_us = now.monotonic_us.saturating_add(tick_us);
        }
        let mut ticks = 0;
        while now.monotonic_us >= self.next_tick_us && ticks < limits::TICKS_PER_CALL_MAX {
            self.raft.tick();
            self.next_tick_us += tick_us;
            ticks += 1;
        }
        if now.monotonic_us >= self.next_tick_us {
            self.next_tick_us = now.monotonic_us.saturating_add(tick_us);
        }
        self.expire_waiting(now);
        self.expire_forwarded(now);
    }

    /// This node is stopping: from now on, while it is not the leader, a
    /// new command is answered `ERR_REDIRECT` naming the leader (nothing
    /// applied: the client goes there) instead of being forwarded, while
    /// the commands already taken get their answers. Clients of a follower
    /// thus move away before it closes their connections (SPEC §3: a
    /// rolling restart fails no request). A leader hands leadership over
    /// first (`transfer_leadership`), then does the same.
    /// Armed watches are handed to the leader too, once another is known
    /// (`watch`).
    pub fn drain(&mut self) {
        self.draining = true;
        self.watches.stopping = true;
    }

    /// Start an election now (`raft::Node::campaign_now`).
    pub fn campaign_now(&mut self) {
        self.raft.campaign_now();
    }

    /// Start handing leadership away (graceful stop). Returns the target.
    pub fn transfer_leadership(&mut self) -> Option<NodeId> {
        self.raft.transfer_leadership(None).ok()
    }

    /// Whether commands are still waiting for an answer. An armed watch
    /// does not count: it may wait for ever (`watch`: a stopping node hands
    /// it over instead).
    pub fn has_waiting(&self) -> bool {
        self.waiting
            .values()
            .any(|w| !w.expired || !w.reads.is_empty())
            || !self.read_groups.is_empty()
            || !self.held.is_empty()
            || !self.incoming.is_empty()
            || self.forwarding.has_waiting()
    }

    /// Run one turn (see the module doc). An error means the node must stop
    /// (I/O, corruption, or an earlier failed fsync).
    pub fn end_turn(&mut self, now: Now, storage: &mut impl Storage) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::Refused(format!(
                "stopped after a failed fsync: {reason}"
            )));
        }
        self.now = now;
        if let Some((index, term)) = self.boot_log_start.take() {
            storage.mark_log_start(index, term)?;
            self.durability.note_written(true);
        }
        self.update_leader_clock(now);
        self.maybe_leader_changed(now);
        let mut settled = self.settle_watches(0, now);
        self.route_requests(now);
        self.maybe_stamp_cluster_time(now);
        self.propose_batches(now);
        self.register_turn_reads(now);
        self.send_turn_forwards(now);
        self.run_actions(storage)?;
        self.maybe_answer_follower_reads();
        for _ in 0..limits::WATCH_PASSES_PER_TURN_MAX {
            settled = self.settle_watches(settled, now);
            if self.incoming.is_empty() {
                break;
            }
            self.route_requests(now);
            self.propose_batches(now);
            self.register_turn_reads(now);
            self.send_turn_forwards(now);
            self.run_actions(storage)?;
            self.maybe_answer_follower_reads();
        }
        // The last pass's answers end their blocks too; what they release
        // is routed next turn.
        self.settle_watches(settled, now);
        self.maybe_snapshot(storage)?;
        self.gather_remote_answers();
        // Client traffic queued after the actions ran (answers gathered
        // now) leaves with this turn too.
        self.durability.release_early(&mut self.messages);
        Ok(())
    }

    /// Execute the core's actions until it has nothing more to say, then
    /// hand what the turn wrote to an fsync (see `durability`).
    fn run_actions(&mut self, storage: &mut impl Storage) -> Result<()> {
        loop {
            self.raft.drain_actions(&mut self.actions);
            if self.actions.is_empty() {
                if self.finish_turn_writes(storage)? {
                    continue;
                }
                return Ok(());
            }
            let mut actions = std::mem::take(&mut self.actions);
            for action in actions.drain(..) {
                self.execute(action, storage)?;
            }
            self.actions = actions;
        }
    }

    fn execute(&mut self, action: Action, storage: &mut impl Storage) -> Result<()> {
        match action {
            Action::PersistHardState(hard_state) => {
                storage.save_hard_state(&hard_state)?;
                self.durability.note_written(true);
            }
            Action::PersistEntries(entries) => self.persist_entries(entries, storage)?,
            Action::Send(envelope) => self.durability.queue_send(envelope),
            Action::Apply(entries) => {
                for entry in &entries {
                    self.apply(entry)?;
                }
            }
            Action::ReadReady { id, index } => self.read_confirmed(id, index),
            Action::ReadFailed { id } => self.read_failed(id),
            Action::SendSnapshotChunk {
                envelope,
                length_bytes,
            } => self.send_snapshot_chunk(envelope, length_bytes, storage),
            Action::SnapshotChunk {
                from,
                snapshot,
                offset,
                data,
            } => self.receive_snapshot_chunk(from, snapshot, offset, &data, storage)?,
        }
        Ok(())
    }

    fn persist_entries(
        &mut self,
        entries: Vec<raft::Entry>,
        storage: &mut impl Storage,
    ) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        // A replaced suffix decides nothing for the commands waiting on it:
        // another node may still hold those entries and get them committed.
        // Only the entry applied at their index does (`apply`).
        let last_position = (last.index, last.term);
        storage.append_entries(&entries)?;
        self.durability.note_entries_written(last_position);
        if let Some(stamp_ms) = entries.iter().rev().find_map(|e| batch_stamp_ms(&e.data)) {
            self.max_stamp_ms = self.max_stamp_ms.max(stamp_ms);
        }
        Ok(())
    }

    /// Answer a client at once.
    fn answer(&mut self, client: ClientRef, reply: Reply<'_>) {
        let bytes = apply::cut_answer(&mut self.reply_buffer, |out| {
            crate::protocol::encode_reply(&reply, out)
        });
        self.replies.push((client, bytes));
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
}

/// The words a refusal of a removed data dir carries (the refused node
/// stops for good on them, `members::peer_refused`).
pub const REMOVED_REFUSAL_MARK: &str = "removed from this cluster";

fn describe_step_error(error: &raft::StepError) -> String {
    match error {
        raft::StepError::WrongIncarnation { from, recorded, got } => format!(
            "node {from} came back with data-dir incarnation {got:016x}, but this cluster knows it as \
             {recorded:016x}: its data dir was lost or replaced, so it may not rejoin under its old id \
             (replace it: `raftfs member remove` its id, then add it again as a learner with the \
             new data dir and promote it)"
        ),
        raft::StepError::NotForUs => "message not addressed to this node".into(),
        raft::StepError::Malformed(reason) => format!("malformed or forged message: {reason}"),
        raft::StepError::Removed { from, incarnation } => format!(
            "node {from} (data-dir incarnation {incarnation:016x}) was {REMOVED_REFUSAL_MARK}: \
             it must stop; to add it back, give it an empty data dir and run `raftfs member add`"
        ),
    }
}
