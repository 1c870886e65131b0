//! The Raft node: one flat struct, a `Role` enum, `&mut self` everywhere.
//!
//! This file owns the node's state, its public inputs and the dispatch of
//! incoming messages by term (Raft §5.1: a higher term turns anyone into a
//! follower; a lower-term message is answered with our term or dropped).
//! The behaviours live in sibling modules that extend `Node`:
//! `election` (§5.2, PreVote §9.6, CheckQuorum §6.2), `replication` (§5.3,
//! §5.4, pipelining §10.2), `read` (ReadIndex §6.4, leadership transfer §3.10),
//! `reconfigure` (membership change, thesis chapter 4; the rule and the
//! configurations themselves are in `membership`).
//!
//! Messages are processed whoever sends them (thesis §4.1: a server does not
//! consult its configuration to answer an RPC; quorums are counted over the
//! configuration in force only), except from a removed data dir, which is
//! refused (`StepError::Removed`).
//!
//! Invariants (asserted where they change): the term never decreases; the
//! commit index never decreases and never passes the log's end; a hard state
//! change is pushed as `PersistHardState` before any `Send` of that term;
//! committed entries are handed to `Apply` exactly once, in order. Outputs
//! depend only on inputs and `Config::seed` (BTreeMaps, no clocks).

use super::action::Action;
use super::log::Log;
use super::membership::{Configuration, Configurations, MemberAddresses};
use super::message::{Entry, Envelope, HardState, Index, Message, NodeId, SnapshotMeta, Term};
use super::progress::Progress;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use std::collections::{BTreeMap, VecDeque};

/// Static configuration of one Raft node. Timeouts are in ticks.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The bootstrap voters (cluster.toml): the configuration in force
    /// until the log holds one (see `membership`). Normally includes `id`;
    /// a node that is not among them waits until a leader adds it.
    pub members: Vec<NodeId>,
    /// The bootstrap members' addresses, written into the first
    /// configuration entry (empty strings where unknown).
    pub addresses: BTreeMap<NodeId, MemberAddresses>,
    /// This node's data-dir incarnation, stamped on every envelope it sends.
    pub incarnation: u64,
    /// Election timeout drawn uniformly from `[min, max)` ticks.
    pub election_timeout_ticks: (u64, u64),
    pub heartbeat_ticks: u64,
    pub inflight_appends_max: usize,
    pub append_bytes_max: usize,
    /// Bytes of snapshot per InstallSnapshot chunk (at most
    /// `limits::SNAPSHOT_CHUNK_BYTES_MAX`; the simulator uses small chunks
    /// so small snapshots span several).
    pub snapshot_chunk_bytes_max: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Seed of the node's private RNG (election timeouts).
    pub seed: u64,
}

/// What storage recovered at start: the durable hard state, the snapshot
/// the state machine was restored from (if any) and the log after it.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub hard_state: HardState,
    /// Contiguous entries starting right after the snapshot (at index 1
    /// without one).
    pub entries: Vec<Entry>,
    /// The snapshot the executor restored its state machine from; its index
    /// counts as committed and applied.
    pub snapshot: Option<SnapshotMeta>,
    /// The configuration in force at the snapshot's index, if the snapshot
    /// holds one (snapshots written before membership change do not).
    pub snapshot_configuration: Option<Configuration>,
}

/// What `Node::install_snapshot` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The log now starts after the snapshot; `log_kept` says whether the
    /// entries after its index were kept (they matched) or all discarded.
    Installed { log_kept: bool },
    /// Not needed: everything through the snapshot's index is already
    /// committed here (or the sender is not our leader). Discard it.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Returned when an operation needs the leader; names the leader if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLeader {
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    /// The sender's incarnation differs from the one recorded for it.
    WrongIncarnation {
        from: NodeId,
        recorded: u64,
        got: u64,
    },
    /// The message is not addressed to us.
    NotForUs,
    /// The sender's data dir was removed from the cluster (its id may have
    /// been added again with a new data dir).
    Removed { from: NodeId, incarnation: u64 },
    /// The message failed `check_message` (forged or malformed).
    Malformed(String),
}

/// A ReadIndex request waiting for its heartbeat round.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingRead {
    pub id: u64,
    pub index: Index,
    /// The heartbeat round a majority must answer (sent after registration).
    pub round: u64,
}

/// A leadership transfer in progress (thesis §3.10).
#[derive(Clone, Copy, Debug)]
pub(super) struct Transfer {
    pub target: NodeId,
    pub elapsed_ticks: u64,
    pub timeout_now_sent: bool,
}

/// State that exists only while this node leads.
#[derive(Debug)]
pub(super) struct Leader {
    /// One entry per other member.
    pub progress: BTreeMap<NodeId, Progress>,
    /// Ticks since this term began; in-flight appends are stamped with it.
    pub ticks: u64,
    pub heartbeat_elapsed_ticks: u64,
    /// Index of this term's no-op; reads wait until it commits.
    pub noop_index: Index,
    /// The last heartbeat round sent.
    pub read_round: u64,
    /// Confirmed-index reads, in registration order (rounds non-decreasing).
    pub reads: VecDeque<PendingRead>,
    /// Reads registered before the no-op committed.
    pub reads_before_noop: Vec<u64>,
    /// Proposals arrived since the last flush: send appends at drain time so
    /// one turn's proposals share messages.
    pub append_pending: bool,
    pub transfer: Option<Transfer>,
    /// Members removed while this node led, still sent the log (in no
    /// quorum) so they learn of their removal: id → (removal index, tick
    /// removed, addresses).
    pub retiring: BTreeMap<NodeId, Retiring>,
}

/// A member this leader removed and still replicates to for a while.
#[derive(Clone, Debug)]
pub(super) struct Retiring {
    pub removal_index: Index,
    pub since_tick: u64,
    pub addresses: MemberAddresses,
}

pub struct Node {
    pub(super) config: Config,
    pub(super) hard_state: HardState,
    pub(super) log: Log,
    /// The newest snapshot (index 0 = none): what a lagging follower gets.
    pub(super) snapshot: SnapshotMeta,
    pub(super) role: Role,
    pub(super) leader_id: Option<NodeId>,
    pub(super) commit_index: Index,
    /// The largest `leader_commit` heard from a leader (for health checks: a
    /// follower still catching up knows how far behind it is).
    pub(super) leader_commit_seen: Index,
    /// Last index handed over in `Action::Apply`.
    pub(super) applied_index: Index,
    /// Highest index reported durable by `persisted` (for the current log).
    pub(super) persisted_index: Index,
    pub(super) rng: Pcg64,
    pub(super) election_elapsed_ticks: u64,
    /// This round's randomised election timeout.
    pub(super) election_timeout_ticks: u64,
    /// PreVote or vote answers in the current campaign (self included).
    pub(super) votes: BTreeMap<NodeId, bool>,
    pub(super) leader: Option<Leader>,
    pub(super) actions: Vec<Action>,
    /// The configurations the log holds; the last is in force.
    pub(super) configurations: Configurations,
    /// Bumped whenever the configuration in force changes (drivers compare
    /// it to refresh address tables).
    pub(super) configuration_version: u64,
    /// Set when this node, its log empty, heard a vote refusal of an older
    /// term: most likely a member holding a log, which refuses an empty log
    /// without taking its term. From then on its campaigns, while its log
    /// is empty, start with a PreVote even if PreVote is off (`election`).
    pub(super) refused_by_a_log: bool,
}

impl Node {
    /// A node starting as a follower from recovered state. The configuration
    /// must be valid (checked by `config`): panics on a programming error such
    /// as `members` not containing `id` or an empty timeout range.
    pub fn new(mut config: Config, restored: Restored) -> Node {
        config.members.sort_unstable();
        config.members.dedup();
        assert!(
            !config.members.is_empty() && !config.members.contains(&0),
            "the bootstrap members must be positive ids, at least one"
        );
        let (timeout_min, timeout_max) = config.election_timeout_ticks;
        assert!(
            timeout_min >= 1 && timeout_min < timeout_max,
            "election timeout range must be [min, max) with min >= 1"
        );
        assert!(
            config.heartbeat_ticks >= 1 && config.heartbeat_ticks < timeout_min,
            "heartbeat must be shorter than the election timeout"
        );
        assert!(config.inflight_appends_max >= 1 && config.append_bytes_max >= 1);
        assert!(
            (1..=crate::limits::SNAPSHOT_CHUNK_BYTES_MAX)
                .contains(&config.snapshot_chunk_bytes_max),
            "snapshot chunks must be 1..=SNAPSHOT_CHUNK_BYTES_MAX bytes"
        );
        let snapshot = restored.snapshot.unwrap_or_default();
        let bootstrap = Configuration::bootstrap(&config.members, &config.addresses);
        let mut configurations = match restored.snapshot_configuration {
            Some(configuration) => Configurations::starting(snapshot.index, configuration, true),
            None => Configurations::starting(snapshot.index, bootstrap, false),
        };
        let log = Log::from_snapshot(snapshot.index, snapshot.term, restored.entries);
        if let Err(reason) = configurations.observe(log.slice(log.first_index(), log.last_index()))
        {
            // The WAL's records passed their CRC: only a foreign format gets
            // here. Keep the configurations read so far (logged).
            log::error!("node {}: {reason}", config.id);
        }
        let persisted_index = log.last_index();
        let mut node = Node {
            rng: Pcg64::seed_from_u64(config.seed),
            config,
            hard_state: restored.hard_state,
            log,
            snapshot,
            role: Role::Follower,
            leader_id: None,
            commit_index: snapshot.index,
            leader_commit_seen: snapshot.index,
            applied_index: snapshot.index,
            persisted_index,
            election_elapsed_ticks: 0,
            election_timeout_ticks: 0,
            votes: BTreeMap::new(),
            leader: None,
            actions: Vec::new(),
            configurations,
            configuration_version: 0,
            refused_by_a_log: false,
        };
        node.reset_election_timer();
        if snapshot.index > 0 {
            // The snapshot's configuration is committed, and its commit
            // forgot the incarnations of the members it removed; that
            // hard-state write may not have outlived the snapshot (a power
            // loss after an installed snapshot became durable), and commit
            // restarts past it here, so nothing would forget them again.
            // A voter that kept the record refused the member's new data
            // dir for good, as a leader too (sim seed 16874025226990815019:
            // a re-added learner never got its snapshot).
            node.on_commit_of_configurations(snapshot.index, snapshot.index);
        }
        node
    }

    /// Advance logical time by one tick: election timeouts on followers and
    /// candidates; heartbeats, CheckQuorum and transfer timeouts on leaders.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                self.election_elapsed_ticks += 1;
                if self.election_elapsed_ticks >= self.election_timeout_ticks {
                    if self.may_campaign() {
                        self.campaign(false);
                    } else {
                        // A learner, or a node not (or no longer) a member:
                        // it never starts an election.
                        self.reset_election_timer();
                        self.ask_whether_removed();
                    }
                }
            }
        }
    }

    /// Start an election now, as a `TimeoutNow` would (thesis §3.10: no
    /// PreVote, and voters skip their leader-lease check). For scripted
    /// schedules and operator tooling (etcd's `Campaign`); a leader ignores it.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader {
            self.campaign(true);
        }
    }

    /// Handle one message. Refused messages (`Err`) change nothing beyond
    /// what is documented on `StepError`.
    pub fn step(&mut self, envelope: Envelope) -> Result<(), StepError> {
        if envelope.to != self.config.id
            || envelope.from == self.config.id
            || envelope.message.is_client_traffic()
        {
            return Err(StepError::NotForUs);
        }
        self.check_message(&envelope)
            .map_err(StepError::Malformed)?;
        self.observe_incarnation(envelope.from, envelope.incarnation)?;
        let answers = matches!(
            envelope.message,
            Message::PreVoteResponse { .. }
                | Message::RequestVoteResponse { .. }
                | Message::AppendEntriesResponse { .. }
                | Message::HeartbeatResponse { .. }
                | Message::InstallSnapshotResponse { .. }
        );
        let bound = self
            .configurations
            .current()
            .bound_incarnation(envelope.from);
        if answers && bound.is_some_and(|bound| bound != envelope.incarnation) {
            // A vote or acknowledgement counts only from the data dir the
            // configuration binds (membership's "Voters are data dirs"):
            // this one is a new data dir under a removed voter's id.
            log::debug!(
                "node {}: ignored an answer from node {} data dir {:016x}: the configuration in \
                 force binds that voter to another one",
                self.config.id,
                envelope.from,
                envelope.incarnation
            );
            return Ok(());
        }
        let fresh_next_index = self.log.last_index() + 1;
        if let Some(progress) = self
            .leader
            .as_mut()
            .and_then(|leader| leader.progress.get_mut(&envelope.from))
        {
            if progress.incarnation != envelope.incarnation {
                if progress.incarnation != 0 {
                    // A new data dir under a removed member's id (its
                    // predecessor still retiring): what the old one matched
                    // means nothing for it (sim seed 3552: probing above an
                    // empty log forever).
                    *progress = Progress::new(fresh_next_index);
                }
                progress.incarnation = envelope.incarnation;
            }
        }
        let Envelope {
            from,
            term,
            incarnation,
            message,
            ..
        } = envelope;
        if term > self.hard_state.term {
            match &message {
                // A PreVote names a term nobody is in yet; granting one and
                // counting grants changes no durable state (thesis §9.6).
                Message::PreVote { .. } | Message::PreVoteResponse { granted: true } => {}
                Message::RequestVote {
                    last_log_index: 0, ..
                } if self.log.last_index() > 0
                    && !self
                        .configurations
                        .current()
                        .counts_as_voter(from, incarnation) =>
                {
                    // A candidate with an empty log that is no voter here
                    // (a node waiting to be added, or a new data dir under
                    // another's id) can never get this vote: refuse it
                    // without taking its term, so such a node cannot keep
                    // deposing the cluster's leaders (sim seed 1178,
                    // PreVote off). A voter whose log a power loss emptied
                    // is answered as Raft answers anyone: its term is
                    // taken, so this node's next candidacy outbids it
                    // (sim seed 4552018912604097780: taking no term from
                    // two emptied voters kept the one holding an entry a
                    // term behind them at every election, for ever).
                    self.send(from, Message::RequestVoteResponse { granted: false });
                    return Ok(());
                }
                Message::RequestVote {
                    leadership_transfer: false,
                    ..
                } if self.in_lease() => {
                    // A follower that hears from a live leader ignores a
                    // disruptive candidate (thesis §4.2.3 / §9.6).
                    self.send(from, Message::RequestVoteResponse { granted: false });
                    return Ok(());
                }
                Message::AppendEntries { .. }
                | Message::Heartbeat { .. }
                | Message::TimeoutNow
                | Message::InstallSnapshot { .. } => {
                    self.become_follower(term, Some(from));
                }
                _ => self.become_follower(term, None),
            }
        } else if term < self.hard_state.term {
            // Answer so a stale leader or candidate learns the newer term
            // (§5.1); anything else from an old term is dropped.
            match message {
                Message::AppendEntries { .. } => self.send(
                    from,
                    Message::AppendEntriesResponse {
                        success: false,
                        match_index: 0,
                        conflict_index: 0,
                        conflict_term: None,
                    },
                ),
                Message::Heartbeat { .. } => {
                    self.send(from, Message::HeartbeatResponse { read_round: 0 })
                }
                Message::PreVote { .. } => {
                    self.send(from, Message::PreVoteResponse { granted: false })
                }
                Message::RequestVote { .. } => {
                    self.send(from, Message::RequestVoteResponse { granted: false })
                }
                Message::RequestVoteResponse { granted: false } if self.log.last_index() == 0 => {
                    self.refused_by_a_log = true;
                }
                Message::InstallSnapshot { snapshot, .. } => self.send(
                    from,
                    Message::InstallSnapshotResponse {
                        index: snapshot.index,
                        next_offset: 0,
                        installed: false,
                    },
                ),
                _ => {}
            }
            return Ok(());
        }
        match message {
            Message::PreVote {
                last_log_index,
                last_log_term,
            } => self.handle_pre_vote(from, term, last_log_index, last_log_term),
            Message::PreVoteResponse { granted } => {
                self.handle_pre_vote_response(from, term, granted)
            }
            Message::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => self.handle_request_vote(from, last_log_index, last_log_term),
            Message::RequestVoteResponse { granted } => self.handle_vote_response(from, granted),
            Message::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                if self.accept_leader(from) {
                    self.handle_append_entries(
                        from,
                        prev_log_index,
                        prev_log_term,
                        &entries,
                        leader_commit,
                    );
                }
            }
            Message::AppendEntriesResponse {
                success,
                match_index,
                conflict_index,
                conflict_term,
            } => self.handle_append_response(
                from,
                success,
                match_index,
                conflict_index,
                conflict_term,
            ),
            Message::Heartbeat {
                leader_commit,
                read_round,
            } => {
                if self.accept_leader(from) {
                    self.handle_heartbeat(from, leader_commit, read_round);
                }
            }
            Message::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(from, read_round)
            }
            Message::InstallSnapshot {
                snapshot,
                offset,
                data,
            } => {
                if self.accept_leader(from) {
                    self.handle_install_snapshot(from, snapshot, offset, data);
                }
            }
            Message::InstallSnapshotResponse {
                index,
                next_offset,
                installed,
            } => self.handle_install_snapshot_response(from, index, next_offset, installed),
            // Refused above: the replica handles client traffic.
            Message::ForwardCommands { .. }
            | Message::ForwardAnswers { .. }
            | Message::ReadIndexRequest { .. }
            | Message::ReadIndexResponse { .. } => return Err(StepError::NotForUs),
            Message::TimeoutNow => {
                if self.accept_leader(from) && self.is_voter() {
                    // thesis §3.10: campaign now, skipping PreVote and the
                    // voters' lease check.
                    self.campaign(true);
                }
            }
        }
        Ok(())
    }

    /// Record a member's data-dir incarnation the first time it is seen
    /// (durably, via `PersistHardState`); refuse any other one afterwards,
    /// and one the committed configuration names as removed (but while
    /// this leader still tells it of its removal). A non-member (a node
    /// waiting to be added) is neither recorded nor refused. A node whose
    /// log is empty has nothing another incarnation could corrupt (it
    /// counts no vote or acknowledgement that matters: an empty log wins
    /// only a unanimous first election), so it records a member's new
    /// incarnation instead of refusing it: a node waiting to be added must
    /// follow a replaced member that leads. So does a node that is not a
    /// voter of its configuration in force (a learner, or a node not or no
    /// longer a member), when that configuration binds `from` to a data
    /// dir or does not count it as a voter: such a node never campaigns
    /// or leads, so it counts no vote or acknowledgement, and the binding,
    /// not this record, keeps another data dir from counting as `from`
    /// once it votes. Its log may be stale: it cannot tell a member
    /// replaced since from an impostor, and refusing would cut it off from
    /// a replaced leader for good when no other voter can tell it (sim
    /// seed 4552018912604091360: a learner that missed the replacement of
    /// the sole voter). The voters still refuse an impostor, which stops it.
    pub fn observe_incarnation(&mut self, from: NodeId, incarnation: u64) -> Result<(), StepError> {
        let (_, committed) = self.configurations.at(self.commit_index);
        let retiring = self
            .leader
            .as_ref()
            .is_some_and(|leader| leader.retiring.contains_key(&from));
        if committed.was_removed(from, incarnation) && !retiring {
            return Err(StepError::Removed { from, incarnation });
        }
        if !committed.contains(from) && !self.configurations.current().contains(from) {
            return Ok(());
        }
        match self.hard_state.incarnations.get(&from) {
            Some(&recorded) if recorded == incarnation => Ok(()),
            Some(_) if self.log.last_index() == 0 || self.learns_incarnations(from) => {
                self.hard_state.incarnations.insert(from, incarnation);
                self.persist_hard_state();
                Ok(())
            }
            Some(&recorded) => Err(StepError::WrongIncarnation {
                from,
                recorded,
                got: incarnation,
            }),
            None => {
                self.hard_state.incarnations.insert(from, incarnation);
                self.persist_hard_state();
                Ok(())
            }
        }
    }

    /// Whether this node records a new incarnation of `from` instead of
    /// refusing it although its log is not empty (see
    /// `observe_incarnation`): it is no voter, and its configuration in
    /// force binds voter `from` to a data dir or lists it as no voter.
    fn learns_incarnations(&self, from: NodeId) -> bool {
        let configuration = self.configurations.current();
        !self.is_voter()
            && (!configuration.is_voter(from) || configuration.bound_incarnation(from).is_some())
    }

    /// Append `data` as a new entry (leader only; refused during a transfer).
    /// Returns the entry's index; it is sent to followers at the next drain.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, NotLeader> {
        debug_assert!(
            !super::membership::is_configuration_entry(&data),
            "configuration entries go through propose_membership_change"
        );
        let term = self.hard_state.term;
        let index = self.log.last_index() + 1;
        let leader = self.leader_for_request()?;
        leader.append_pending = true;
        let entry = Entry { term, index, data };
        self.log.append(entry.clone());
        self.actions.push(Action::PersistEntries(vec![entry]));
        Ok(index)
    }

    /// The executor made entries through `index` durable, `term` being the
    /// term of the entry at `index` (a report for a since-replaced entry is
    /// ignored). The leader counts itself toward commit only from here.
    pub fn persisted(&mut self, index: Index, term: Term) {
        if index <= self.persisted_index || !self.log.matches(index, term) {
            return;
        }
        self.persisted_index = index;
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Move every pending action into `out`, in order. Proposals and reads
    /// registered since the last drain are sent first (one AppendEntries per
    /// follower window, one heartbeat round for the waiting reads
    /// unless a round is already in flight).
    pub fn drain_actions(&mut self, out: &mut Vec<Action>) {
        self.flush();
        out.append(&mut self.actions);
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.hard_state.term
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }
    pub fn commit_index(&self) -> Index {
        self.commit_index
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }
    /// Last index handed over in `Action::Apply`.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }
    /// Highest index reported durable through `persisted`.
    pub fn persisted_index(&self) -> Index {
        self.persisted_index
    }
    /// The entry at `index`, if the log holds it.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// The entries held in `[from, to]` (clamped to the log).
    pub fn entries(&self, from: Index, to: Index) -> &[Entry] {
        self.log.slice(from, to)
    }
    /// The term of the entry at `index`, if known (held, or the snapshot's).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term_at(index)
    }
    /// The newest snapshot (index 0 if none).
    pub fn snapshot(&self) -> SnapshotMeta {
        self.snapshot
    }
    /// The first index still held in the log.
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }
    /// The target of a leadership transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.leader
            .as_ref()
            .and_then(|leader| leader.transfer.map(|transfer| transfer.target))
    }
    /// The configuration in force (the last in the log).
    pub fn configuration(&self) -> &Configuration {
        self.configurations.current()
    }
    /// The index of the entry that made the configuration in force.
    pub fn configuration_index(&self) -> Index {
        self.configurations.current_index()
    }
    /// The configuration in force at `index` and the index of its entry
    /// (what a snapshot through `index` records).
    pub fn configuration_at(&self, index: Index) -> (Index, &Configuration) {
        self.configurations.at(index)
    }
    /// Changes whenever the configuration in force changes.
    pub fn configuration_version(&self) -> u64 {
        self.configuration_version
    }
    /// Whether the configuration in force came from the log (else it is
    /// cluster.toml's, not yet written by a leader).
    pub fn configuration_from_log(&self) -> bool {
        self.configurations.from_log()
    }
    /// Whether this node (this data dir) votes in the configuration in
    /// force.
    pub fn is_voter(&self) -> bool {
        self.configurations
            .current()
            .counts_as_voter(self.config.id, self.config.incarnation)
    }
    /// Whether this node runs elections: it votes in the configuration in
    /// force, or that configuration, not yet committed, removes it while
    /// the committed one counts it as a voter. Such a node may hold the
    /// only copy of the entry that removes it (the leader that proposed it
    /// lost it to a power loss), and the voters whose logs lack it cannot
    /// win its vote: it must be elected to commit it, then it stops
    /// (thesis §4.2.2, Figure 4.6; sim seed 18132229121564287368).
    pub(super) fn may_campaign(&self) -> bool {
        if self.is_voter() {
            return true;
        }
        let (own, incarnation) = (self.config.id, self.config.incarnation);
        let (_, committed) = self.configurations.at(self.commit_index);
        self.configurations.current_index() > self.commit_index
            && !self.configurations.current().contains(own)
            && committed.counts_as_voter(own, incarnation)
    }
    /// The cluster's commit index as far as this node knows: its own, or the
    /// largest one a leader announced (which may be ahead while catching up).
    pub fn known_commit_index(&self) -> Index {
        self.commit_index.max(self.leader_commit_seen)
    }
    /// Leader only: each follower's match index (for lag metrics).
    pub fn match_indexes(&self) -> Vec<(NodeId, Index)> {
        self.leader.as_ref().map_or_else(Vec::new, |leader| {
            leader
                .progress
                .iter()
                .map(|(id, progress)| (*id, progress.match_index))
                .collect()
        })
    }

    // ---- shared helpers for the sibling modules ----

    /// Every voter but this node, in id order (whom a campaign asks).
    /// A non-voter that hears no leader for an election timeout may have
    /// been removed without hearing it committed, or at all (a new leader,
    /// or one whose retiring window passed while it was cut off, sends it
    /// nothing more): it would wait for ever. So it sends the voters a
    /// PreVote (which changes no state anywhere): a member that committed
    /// its removal refuses the sender's removed data dir, which stops it
    /// (sim seeds 1586, 5268); if it is still a member, a leader
    /// replicates to it again.
    fn ask_whether_removed(&mut self) {
        if !self.configurations.from_log() || self.removed_at().is_some() {
            // A node waiting to be added, or one that knows it was removed
            // (its driver stops it).
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let campaign_term = self.hard_state.term + 1;
        for peer in self.voter_peers() {
            self.send_with_term(
                peer,
                campaign_term,
                Message::PreVote {
                    last_log_index,
                    last_log_term,
                },
            );
        }
    }

    pub(super) fn voter_peers(&self) -> Vec<NodeId> {
        let own = self.config.id;
        self.configurations
            .current()
            .voters()
            .into_iter()
            .filter(|id| *id != own)
            .collect()
    }

    /// Whom the leader replicates to: every other member, and the members
    /// it removed that are still retiring.
    pub(super) fn replication_peers(&self) -> Vec<NodeId> {
        self.leader
            .as_ref()
            .map_or_else(Vec::new, |leader| leader.progress.keys().copied().collect())
    }

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        let term = self.hard_state.term;
        self.send_with_term(to, term, message);
    }

    pub(super) fn send_with_term(&mut self, to: NodeId, term: Term, message: Message) {
        self.actions.push(Action::Send(Envelope {
            from: self.config.id,
            to,
            term,
            incarnation: self.config.incarnation,
            message,
        }));
    }

    pub(super) fn persist_hard_state(&mut self) {
        self.actions
            .push(Action::PersistHardState(self.hard_state.clone()));
    }

    pub(super) fn reset_election_timer(&mut self) {
        let (timeout_min, timeout_max) = self.config.election_timeout_ticks;
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks = self.rng.gen_range(timeout_min..timeout_max);
    }

    /// The leader state, or the `NotLeader` answer for a client request
    /// (no leader is named during a transfer: the client should wait).
    pub(super) fn leader_for_request(&mut self) -> Result<&mut Leader, NotLeader> {
        let leader_id = self.leader_id;
        match self.leader.as_mut() {
            Some(leader) if leader.transfer.is_none() => Ok(leader),
            Some(_) => Err(NotLeader { leader: None }),
            None => Err(NotLeader { leader: leader_id }),
        }
    }

    /// Become (or stay) a follower in `term`, following `leader` if known.
    /// A term change clears the vote and is persisted before anything else
    /// of the new term can be sent.
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        debug_assert!(term >= self.hard_state.term, "terms never decrease");
        if term > self.hard_state.term {
            self.hard_state.term = term;
            self.hard_state.vote = None;
            self.persist_hard_state();
        }
        if let Some(state) = self.leader.take() {
            // A deposed leader cannot confirm anything any more.
            for id in state.reads_before_noop {
                self.actions.push(Action::ReadFailed { id });
            }
            for read in state.reads {
                self.actions.push(Action::ReadFailed { id: read.id });
            }
        }
        self.role = Role::Follower;
        self.leader_id = leader;
        self.votes.clear();
        self.reset_election_timer();
    }

    /// An AppendEntries, Heartbeat or TimeoutNow of our own term arrived from
    /// `from`: it is the term's leader. Returns false if we lead this term
    /// ourselves, which election safety (§5.2) rules out.
    fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            debug_assert!(false, "two leaders in term {}", self.hard_state.term);
            log::error!(
                "node {} got a leader message from {from} in its own term",
                self.config.id
            );
            return false;
        }
        if self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(self.hard_state.term, Some(from));
        }
        self.election_elapsed_ticks = 0;
        true
    }

    /// Advance the commit index to `index` (never backwards) and hand the
    /// newly committed entries over.
    pub(super) fn advance_commit(&mut self, index: Index) {
        let index = index.min(self.log.last_index());
        if index <= self.commit_index {
            return;
        }
        let committed_from = self.commit_index + 1;
        self.commit_index = index;
        debug_assert!(self.applied_index < self.commit_index);
        self.on_commit_of_configurations(committed_from, index);
        let entries = self
            .log
            .slice(self.applied_index + 1, self.commit_index)
            .to_vec();
        self.applied_index = self.commit_index;
        self.actions.push(Action::Apply(entries));
        if self.role == Role::Leader {
            self.on_leader_commit();
        }
    }

    fn flush(&mut self) {
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        if std::mem::take(&mut leader.append_pending) {
            self.broadcast_append();
        }
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        // At most one read round in flight: reads registered while one is
        // unanswered wait for it, then share the next. Under load one round
        // then serves every read of the turns it took (not one round per
        // turn, and per follower asking); a lost answer delays them by at
        // most the heartbeat interval, whose round serves them.
        let newest_waits = leader
            .reads
            .back()
            .is_some_and(|read| read.round > leader.read_round);
        let round_in_flight = leader
            .reads
            .front()
            .is_some_and(|read| read.round <= leader.read_round);
        if newest_waits && !round_in_flight {
            self.broadcast_heartbeat();
        }
    }
}
