//! Any node serves (SPEC §3, `follower_requests = "forward"`): a follower
//! forwards its clients' writes to the leader and answers their reads
//! itself with follower ReadIndex (thesis §6.4).
//!
//! Follower side. A turn's writes (from every connection) go to the leader
//! in one `ForwardCommands`; the leader proposes them like its own clients'
//! commands and sends back each one's answer (`ForwardAnswers`) once its
//! fate is known. A turn's reads share one `ReadIndexRequest`; the leader
//! answers with its commit index once a heartbeat round sent after the
//! request arrived confirmed its leadership; the follower answers the reads
//! from its own state once it has applied through that index. A `watch`'s
//! check is such a read (`watch`): answered from this node's state at or
//! after the read index if the file left VERSION, else armed here and woken
//! by this node's own apply.
//!
//! Per-connection order: a connection has at most one unit outstanding —
//! one forwarded batch of its consecutive writes, or one group of its
//! consecutive reads — and its later commands wait (`busy`). So a read
//! after a write is only asked for once the write is applied at the leader
//! (its ReadIndex is then at least the write's index), and a write after a
//! read is only sent once the read is answered.
//!
//! Never applied twice: a forwarded batch is proposed at most once. The
//! leader accepts a batch only in the term the follower addressed and only
//! once: it remembers, per follower process (`session`), the highest batch
//! id it took (in any term), and drops any other silently (a duplicate, or
//! one overtaken by a later batch: links are FIFO, so that only happens to
//! a message the follower already gave up on). A batch that arrives after
//! its addressee left that term, and was never taken, is *refused* (an
//! empty `ForwardAnswers`): it was proposed nowhere, so the follower routes
//! its commands again, to the new leader — a rolling restart hands
//! leadership over without failing a forwarded write. Otherwise, if no
//! answer comes within `COMMAND_TIMEOUT_MS` of the commands' arrival, or
//! within two election timeouts (`2 × hold_while_leaderless_ms`) of this
//! node learning of another leader, they get `ERR_INTERNAL` (fate unknown).
//! A deposed leader that is alive hears of its successor within a heartbeat
//! and answers then; one killed never answers, and its followers' clients
//! waited the whole 5 s (an e2e leader kill left them all stuck). A leader that steps down still
//! answers the batches it took, once their entries' fate is known.
//! The `taken` memory lives as long as the process: that suffices because a
//! peer link is a connection that dies with the receiving process (its send
//! queue is cleared, never replayed), so a batch reaches at most the one
//! lifetime it was sent to (the simulator models links so; sim seed 1629
//! delivered a duplicate to the next lifetime, which took it again).
//!
//! Leader side. Forwarded commands become `Pending` requests of a remote
//! client (`ClientRef::key == REMOTE_KEY`, `conn_id` names the batch) and
//! follow the leader's own rules (batching, fate, timeouts); their answers
//! are gathered per batch and sent back together. Read requests join the
//! turn's ReadIndex round.

use super::{ClientRef, Now, Replica};
use crate::fsm::command::decode_batch;
use crate::fsm::command::encode_batch;
use crate::fsm::Command;
use crate::limits;
use crate::protocol::{Reply, Request};
use crate::raft::{Envelope, Index, Message, NodeId, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// `ClientRef::key` of a command forwarded by another node.
pub(super) const REMOTE_KEY: usize = usize::MAX;

/// Sessions remembered per follower (a follower that restarts starts a new
/// one; late messages of an old one must still be recognised).
const SESSIONS_KEPT: usize = 4;

/// A batch this follower forwarded, waiting for its answers.
struct Forwarded {
    leader: NodeId,
    /// Each command with its client and arrival (routed again if refused).
    commands: Vec<(ClientRef, Command, u64)>,
    deadline_us: u64,
}

/// A read, or a watch's check (`watched_version`), served by a follower.
struct FollowerRead {
    client: ClientRef,
    name: Bytes,
    watched_version: Option<u64>,
}

impl FollowerRead {
    /// The request it came from (routed again after losing its leader).
    fn into_request(self) -> Request {
        match self.watched_version {
            Some(version) => Request::Watch {
                name: self.name,
                version,
            },
            None => Request::Read { name: self.name },
        }
    }
}

/// Reads of one turn waiting for the leader's read index, then for this
/// node to apply through it.
struct FollowerReads {
    leader: NodeId,
    reads: Vec<FollowerRead>,
    deadline_us: u64,
    /// Known once the leader answered.
    index: Option<Index>,
}

/// A follower's ReadIndex request, waiting for a round on this leader.
pub(super) struct ReadRequest {
    from: NodeId,
    session: u64,
    id: u64,
}

/// A batch forwarded to this leader, gathering its answers.
struct Remote {
    from: NodeId,
    session: u64,
    id: u64,
    answers: Vec<Option<Bytes>>,
    left: usize,
}

#[derive(Default)]
pub(super) struct Forwarding {
    /// This node's process, in its `ForwardCommands` (from the driver).
    session: u64,
    next_id: u64,
    /// This turn's forwarded writes and reads, sent at the end of routing,
    /// and the kind each connection has in them (true: reads).
    turn_writes: Vec<(ClientRef, Command, u64)>,
    turn_reads: Vec<FollowerRead>,
    turn_kind: HashMap<(usize, u64), bool>,
    /// Follower: batches and reads outstanding, by id.
    forwarded: BTreeMap<u64, Forwarded>,
    reads: BTreeMap<u64, FollowerReads>,
    /// Connections (key, conn_id) with a batch or reads outstanding.
    busy: HashSet<(usize, u64)>,
    /// Leader: batches forwarded here, by local id (`ClientRef::conn_id`).
    remote: HashMap<u64, Remote>,
    next_remote_id: u64,
    /// Leader: per follower, the (session, highest batch id) taken in any
    /// term, newest session last.
    taken: HashMap<NodeId, VecDeque<(u64, u64)>>,
    /// Leader: follower read requests waiting for this turn's round.
    turn_read_requests: Vec<ReadRequest>,
    /// Leader: when a forwarded batch last arrived (a stopping node waits
    /// until followers stop sending to it).
    last_taken_us: u64,
}

impl Forwarding {
    pub(super) fn new(session: u64) -> Forwarding {
        Forwarding {
            session,
            next_id: 1,
            next_remote_id: 1,
            ..Forwarding::default()
        }
    }

    pub(super) fn is_busy(&self, client: ClientRef) -> bool {
        self.busy.contains(&(client.key, client.conn_id))
    }

    pub(super) fn connection_closed(&mut self, key: usize) {
        self.busy.retain(|&(busy_key, _)| busy_key != key);
    }

    /// Outstanding forwarded commands or reads (a stopping node waits).
    pub(super) fn has_waiting(&self) -> bool {
        !self.forwarded.is_empty() || !self.reads.is_empty()
    }
}

/// Pending requests waiting to be routed again (reads that lost their
/// leader, writes whose batch was refused), oldest first.
type Rerouted = Vec<super::routing::Pending>;

impl Replica {
    /// Follower: whether this request must wait because its connection
    /// already has a unit of the other kind in this turn.
    pub(super) fn conflicts_with_turn(&self, client: ClientRef, is_read: bool) -> bool {
        self.forwarding
            .turn_kind
            .get(&(client.key, client.conn_id))
            .is_some_and(|&unit_is_read| unit_is_read != is_read)
    }

    /// Follower: the request joins this turn's forwarded writes or reads
    /// (a watch's check is a read).
    pub(super) fn route_as_follower(
        &mut self,
        client: ClientRef,
        request: Request,
        arrived_us: u64,
    ) {
        let read = match request {
            Request::Command(command) => {
                self.forwarding
                    .turn_writes
                    .push((client, command, arrived_us));
                None
            }
            Request::Read { name } => Some(FollowerRead {
                client,
                name,
                watched_version: None,
            }),
            Request::Watch { name, version } => Some(FollowerRead {
                client,
                name,
                watched_version: Some(version),
            }),
        };
        self.forwarding
            .turn_kind
            .insert((client.key, client.conn_id), read.is_some());
        if let Some(read) = read {
            self.forwarding.turn_reads.push(read);
        }
    }

    /// End of routing: send this turn's forwarded writes and read request.
    pub(super) fn send_turn_forwards(&mut self, now: Now) {
        let Some(leader) = self.raft.leader_id().filter(|&l| l != self.raft.id()) else {
            // Routing only forwards while a leader is known.
            debug_assert!(self.forwarding.turn_writes.is_empty());
            return;
        };
        let reads_deadline_us = now.after_ms(limits::COMMAND_TIMEOUT_MS);
        let units = std::mem::take(&mut self.forwarding.turn_kind);
        self.forwarding.busy.extend(units.into_keys());
        let mut writes = std::mem::take(&mut self.forwarding.turn_writes);
        // One batch per `PEER_FORWARD_COMMANDS_MAX` commands and
        // `APPEND_BYTES_MAX` bytes (a larger command alone), so every
        // batch and its answers fit the peer frame and list limits.
        while !writes.is_empty() {
            let mut take = 0;
            let mut batch_bytes = 0usize;
            for (_, command, _) in &writes {
                let bytes = command.encoded_len();
                if take == limits::PEER_FORWARD_COMMANDS_MAX
                    || (take > 0 && batch_bytes + bytes > limits::APPEND_BYTES_MAX)
                {
                    break;
                }
                take += 1;
                batch_bytes += bytes;
            }
            let rest = writes.split_off(take);
            let writes = std::mem::replace(&mut writes, rest);
            let id = self.forwarding.next_id;
            self.forwarding.next_id += 1;
            let first_arrival_us = writes.iter().map(|w| w.2).min().unwrap_or(now.monotonic_us);
            let deadline_us = first_arrival_us + limits::COMMAND_TIMEOUT_MS * 1_000;
            let commands: Vec<Command> = writes.iter().map(|w| w.1.clone()).collect();
            self.metrics.forwarded_commands += commands.len() as u64;
            let message = Message::ForwardCommands {
                session: self.forwarding.session,
                id,
                batch: encode_batch(0, &commands),
            };
            self.forwarding.forwarded.insert(
                id,
                Forwarded {
                    leader,
                    commands: writes,
                    deadline_us,
                },
            );
            self.send_client_traffic(leader, message);
        }
        let reads = std::mem::take(&mut self.forwarding.turn_reads);
        if !reads.is_empty() {
            let id = self.forwarding.next_id;
            self.forwarding.next_id += 1;
            self.forwarding.reads.insert(
                id,
                FollowerReads {
                    leader,
                    reads,
                    deadline_us: reads_deadline_us,
                    index: None,
                },
            );
            let session = self.forwarding.session;
            self.send_client_traffic(leader, Message::ReadIndexRequest { session, id });
        }
    }

    /// Client traffic promises nothing durable: it leaves with this turn.
    fn send_client_traffic(&mut self, to: NodeId, message: Message) {
        let envelope = Envelope {
            from: self.raft.id(),
            to,
            term: self.raft.term(),
            incarnation: self.config.raft.incarnation,
            message,
        };
        self.durability.queue_send(envelope);
    }

    /// A client-traffic message from a peer (see the module doc).
    pub(super) fn step_client_traffic(&mut self, envelope: Envelope, now: Now) {
        let Envelope {
            from,
            term,
            message,
            ..
        } = envelope;
        // Members of the configuration in force only (a learner forwards
        // like a follower); a removed node's traffic is dropped: what it
        // forwarded was never taken, and it answers its clients itself as
        // it stops (`Replica::removed`).
        if !self.raft.configuration().contains(from) || from == self.raft.id() {
            return;
        }
        match message {
            Message::ForwardCommands { session, id, batch } => {
                self.take_forwarded(from, term, session, id, &batch, now)
            }
            Message::ForwardAnswers {
                session,
                id,
                answers,
            } if session == self.forwarding.session => {
                self.forward_answered(from, id, answers, now)
            }
            Message::ReadIndexRequest { session, id } => {
                let request = ReadRequest { from, session, id };
                if self.is_ready_for_reads() && term == self.raft.term() {
                    self.forwarding.turn_read_requests.push(request);
                } else {
                    self.answer_read_requests(vec![request], None);
                }
            }
            Message::ReadIndexResponse { session, id, index }
                if session == self.forwarding.session =>
            {
                self.read_index_answered(from, id, index)
            }
            _ => {}
        }
    }

    /// Leader: a follower's batch of writes.
    fn take_forwarded(
        &mut self,
        from: NodeId,
        term: Term,
        session: u64,
        id: u64,
        batch: &Bytes,
        now: Now,
    ) {
        self.forwarding.last_taken_us = now.monotonic_us;
        let commands = match decode_batch(batch) {
            Ok(batch) => batch.commands,
            Err(error) => {
                log::warn!("node {from} forwarded a batch that does not decode: {error:?}");
                return;
            }
        };
        if self.was_taken(from, session, id) {
            // A duplicate (its first copy is answered) or overtaken.
            return;
        }
        if term != self.raft.term() {
            // Addressed to another term's leader and taken nowhere: refused,
            // so the follower may route its commands again.
            let refusal = Message::ForwardAnswers {
                session,
                id,
                answers: Vec::new(),
            };
            self.send_client_traffic(from, refusal);
            return;
        }
        self.note_taken(from, session, id);
        let local_id = self.forwarding.next_remote_id;
        self.forwarding.next_remote_id += 1;
        self.forwarding.remote.insert(
            local_id,
            Remote {
                from,
                session,
                id,
                answers: vec![None; commands.len()],
                left: commands.len(),
            },
        );
        for (offset, command) in commands.into_iter().enumerate() {
            let client = ClientRef {
                key: REMOTE_KEY,
                conn_id: local_id,
                seq: offset as u64,
            };
            self.client_request(client, Request::Command(command), now);
        }
    }

    /// Whether batch `id` of `from`'s `session` (or a later one) was taken.
    fn was_taken(&self, from: NodeId, session: u64, id: u64) -> bool {
        self.forwarding.taken.get(&from).is_some_and(|sessions| {
            sessions
                .iter()
                .any(|&(known, highest)| known == session && highest >= id)
        })
    }

    /// Records batch `id` of `from`'s `session` as taken.
    fn note_taken(&mut self, from: NodeId, session: u64, id: u64) {
        let sessions = self.forwarding.taken.entry(from).or_default();
        match sessions.iter_mut().find(|(known, _)| *known == session) {
            Some((_, highest)) => *highest = id,
            None => {
                if sessions.len() >= SESSIONS_KEPT {
                    sessions.pop_front();
                }
                sessions.push_back((session, id));
            }
        }
    }

    /// Leader: answers for forwarded commands are gathered per batch and
    /// sent back once complete; the rest stay in `replies`.
    pub(super) fn gather_remote_answers(&mut self) {
        if self.forwarding.remote.is_empty() {
            return;
        }
        let mut local = Vec::with_capacity(self.replies.len());
        let mut complete = Vec::new();
        for (client, answer) in self.replies.drain(..) {
            if client.key != REMOTE_KEY {
                local.push((client, answer));
                continue;
            }
            let Some(remote) = self.forwarding.remote.get_mut(&client.conn_id) else {
                continue;
            };
            if let Some(slot) = remote.answers.get_mut(client.seq as usize) {
                if slot.replace(answer).is_none() {
                    remote.left -= 1;
                }
            }
            if remote.left == 0 {
                complete.push(client.conn_id);
            }
        }
        self.replies = local;
        for local_id in complete {
            if let Some(remote) = self.forwarding.remote.remove(&local_id) {
                let answers = remote.answers.into_iter().flatten().collect();
                self.send_client_traffic(
                    remote.from,
                    Message::ForwardAnswers {
                        session: remote.session,
                        id: remote.id,
                        answers,
                    },
                );
            }
        }
    }

    /// Follower: another leader is known. Reads that were waiting for the
    /// old leader's read index are routed again (a read changes nothing, so
    /// asking again is safe). A batch forwarded to the old leader waits for
    /// its answer: the old leader answers what it took once the fate is
    /// known, and refuses what it did not take; if it has not within two
    /// election timeouts (it may be dead), the batch's commands get
    /// `ERR_INTERNAL` then (`expire_forwarded`).
    pub(super) fn maybe_leader_changed(&mut self, now: Now) {
        let Some(leader) = self.raft.leader_id() else {
            return;
        };
        let grace_us = self.config.hold_while_leaderless_ms.saturating_mul(2_000);
        let old_leader_deadline_us = now.monotonic_us.saturating_add(grace_us);
        for batch in self.forwarding.forwarded.values_mut() {
            if batch.leader != leader {
                batch.deadline_us = batch.deadline_us.min(old_leader_deadline_us);
            }
        }
        let lost: Vec<u64> = self
            .forwarding
            .reads
            .iter()
            .filter(|(_, reads)| reads.leader != leader && reads.index.is_none())
            .map(|(&id, _)| id)
            .collect();
        let mut rerouted: Rerouted = Vec::new();
        for id in lost {
            if let Some(reads) = self.forwarding.reads.remove(&id) {
                for read in reads.reads {
                    let client = read.client;
                    self.forwarding.busy.remove(&(client.key, client.conn_id));
                    rerouted.push(super::routing::Pending {
                        client,
                        request: read.into_request(),
                        arrived_us: now.monotonic_us,
                    });
                }
            }
        }
        self.route_again(rerouted);
    }

    /// Requests routed again ahead of what their connections sent after
    /// them.
    fn route_again(&mut self, rerouted: Rerouted) {
        for pending in rerouted.into_iter().rev() {
            self.held.push_front(pending);
        }
    }

    /// When a forwarded batch last arrived here (monotonic µs).
    pub fn last_forward_taken_us(&self) -> u64 {
        self.forwarding.last_taken_us
    }

    /// Follower: `from`'s answers to batch `id`.
    fn forward_answered(&mut self, from: NodeId, id: u64, answers: Vec<Bytes>, now: Now) {
        if self
            .forwarding
            .forwarded
            .get(&id)
            .is_none_or(|forwarded| forwarded.leader != from)
        {
            return;
        }
        let Some(forwarded) = self.forwarding.forwarded.remove(&id) else {
            return;
        };
        if answers.is_empty() {
            // Refused: proposed nowhere, so routed again (within the
            // commands' own deadline, counted from their arrival).
            self.metrics.forwards_refused += 1;
            let mut rerouted: Rerouted = Vec::new();
            for (client, command, arrived_us) in forwarded.commands {
                self.forwarding.busy.remove(&(client.key, client.conn_id));
                rerouted.push(super::routing::Pending {
                    client,
                    request: Request::Command(command),
                    arrived_us: arrived_us.min(now.monotonic_us),
                });
            }
            self.route_again(rerouted);
            return;
        }
        let mut answers = answers.into_iter();
        for (client, _, _) in forwarded.commands {
            self.forwarding.busy.remove(&(client.key, client.conn_id));
            match answers.next() {
                Some(answer) => self.replies.push((client, answer)),
                None => self.answer(client, Reply::Internal),
            }
        }
    }

    /// Leader: the follower read requests of this turn (they join its
    /// ReadIndex round).
    pub(super) fn take_turn_read_requests(&mut self) -> Vec<ReadRequest> {
        std::mem::take(&mut self.forwarding.turn_read_requests)
    }

    /// Leader: the round confirmed at `index` (or failed: `None`).
    pub(super) fn answer_read_requests(
        &mut self,
        requests: Vec<ReadRequest>,
        index: Option<Index>,
    ) {
        for request in requests {
            let message = Message::ReadIndexResponse {
                session: request.session,
                id: request.id,
                index,
            };
            self.send_client_traffic(request.from, message);
        }
    }

    /// Follower: `from`'s read index for reads `id`.
    fn read_index_answered(&mut self, from: NodeId, id: u64, index: Option<Index>) {
        if self
            .forwarding
            .reads
            .get(&id)
            .is_none_or(|reads| reads.leader != from)
        {
            return;
        }
        match index {
            Some(index) => {
                if let Some(reads) = self.forwarding.reads.get_mut(&id) {
                    reads.index = Some(index);
                }
                self.maybe_answer_follower_reads();
            }
            None => {
                if let Some(reads) = self.forwarding.reads.remove(&id) {
                    let leader = self.raft.leader_id();
                    for FollowerRead { client, .. } in reads.reads {
                        self.forwarding.busy.remove(&(client.key, client.conn_id));
                        self.answer_redirect(client, leader);
                    }
                }
            }
        }
    }

    /// Follower: answer the reads whose read index this node has applied
    /// (a watch whose file still has VERSION arms instead: `watch`).
    pub(super) fn maybe_answer_follower_reads(&mut self) {
        let applied = self.applied_index;
        let ready: Vec<u64> = self
            .forwarding
            .reads
            .iter()
            .filter(|(_, reads)| reads.index.is_some_and(|index| index <= applied))
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            let Some(reads) = self.forwarding.reads.remove(&id) else {
                continue;
            };
            let live_ms = self.fsm.cluster_time_ms();
            let display_ms = self.cluster_time_ms(self.now).max(live_ms);
            for read in reads.reads {
                let client = read.client;
                self.forwarding.busy.remove(&(client.key, client.conn_id));
                if let Some(answer) = self.answer_at(
                    client,
                    &read.name,
                    read.watched_version,
                    live_ms,
                    display_ms,
                ) {
                    self.replies.push((client, answer));
                }
            }
        }
    }

    /// This node was removed and stops (`Replica::leave`): nothing more is
    /// forwarded. A batch already sent may have been taken, so its
    /// commands get `ERR_INTERNAL` (fate unknown, never a blind retry);
    /// writes not yet sent and reads (which change nothing) are redirected
    /// to the leader.
    pub(super) fn abandon_forwarding(&mut self) {
        let leader = self.raft.leader_id();
        let sent = std::mem::take(&mut self.forwarding.forwarded);
        for (client, _, _) in sent.into_values().flat_map(|batch| batch.commands) {
            self.answer(client, Reply::Internal);
        }
        let unsent: Vec<ClientRef> = std::mem::take(&mut self.forwarding.turn_writes)
            .into_iter()
            .map(|(client, _, _)| client)
            .chain(
                std::mem::take(&mut self.forwarding.turn_reads)
                    .into_iter()
                    .map(|read| read.client),
            )
            .chain(
                std::mem::take(&mut self.forwarding.reads)
                    .into_values()
                    .flat_map(|reads| reads.reads)
                    .map(|read| read.client),
            )
            .collect();
        for client in unsent {
            self.answer_redirect(client, leader);
        }
        self.forwarding.turn_kind.clear();
        self.forwarding.busy.clear();
    }

    /// Follower: forwarded commands and reads past their deadline.
    pub(super) fn expire_forwarded(&mut self, now: Now) {
        let late: Vec<u64> = self
            .forwarding
            .forwarded
            .iter()
            .filter(|(_, f)| f.deadline_us <= now.monotonic_us)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(forwarded) = self.forwarding.forwarded.remove(&id) {
                for (client, _, _) in forwarded.commands {
                    self.forwarding.busy.remove(&(client.key, client.conn_id));
                    self.answer(client, Reply::Internal);
                }
            }
        }
        let late: Vec<u64> = self
            .forwarding
            .reads
            .iter()
            .filter(|(_, r)| r.deadline_us <= now.monotonic_us)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(reads) = self.forwarding.reads.remove(&id) {
                for FollowerRead { client, .. } in reads.reads {
                    self.forwarding.busy.remove(&(client.key, client.conn_id));
                    self.answer(client, Reply::Internal);
                }
            }
        }
    }
}
