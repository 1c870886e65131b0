//! Leader election (Raft §5.2), PreVote (thesis §9.6) and CheckQuorum
//! (thesis §6.2), as methods on `Node`.
//!
//! - A follower whose randomised election timeout (drawn from the node's
//!   seeded RNG) expires first runs a PreVote round for `term + 1` without
//!   changing its term; only a majority of grants starts a real election. A
//!   node cut off by a partition therefore cannot inflate its term and, when
//!   it rejoins, depose a healthy leader.
//! - Voters grant a vote only to a log at least as up to date as theirs
//!   (§5.4.1), at most one per term (the vote is persisted before the reply
//!   leaves), and refuse PreVotes and votes while they hear from a leader
//!   (the lease), unless the candidate runs after a TimeoutNow.
//! - A leader that has not heard from a majority during an election timeout
//!   steps down (CheckQuorum), so clients on a minority side are not stuck.
//! - A new leader appends an empty no-op entry of its term so earlier entries
//!   can commit (§5.4.2, Figure 8) and reads can be served (§6.4); the
//!   first leader of a log that holds no configuration appends the
//!   bootstrap configuration instead, which serves as that entry.
//! - Only voters of the configuration in force campaign (and a voter whose
//!   own removal is not committed yet, `Node::may_campaign`), are asked,
//!   and are counted; a candidate whose log is empty needs every voter
//!   (`membership`: a new node must not decide a cluster of its own).
//!   Such a candidate, once a member holding a log refused it, runs a
//!   PreVote first even with PreVote off, so it stops raising terms.

use super::message::{Entry, Index, Message, NodeId, Term};
use super::node::{Leader, Node, Role};
use super::progress::Progress;
use super::quorum::VoteResult;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

impl Node {
    /// The election timeout fired (or TimeoutNow arrived, `transfer`).
    pub(super) fn campaign(&mut self, transfer: bool) {
        // An empty log wins only a unanimous election, and a member holding
        // a log refuses it (without taking its term, `Node::step`). Once
        // refused so, it asks with PreVotes first even if PreVote is off:
        // otherwise nodes waiting to be added raise their terms together
        // every election timeout, and an empty learner they drag along
        // deposes each leader that sends it the log (sim seed
        // 4552018912604080824, PreVote off).
        let pre_vote =
            self.config.pre_vote || (self.refused_by_a_log && self.log.last_index() == 0);
        if pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.votes = BTreeMap::from([(self.config.id, true)]);
        self.reset_election_timer();
        let campaign_term = self.hard_state.term + 1;
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
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
        self.maybe_finish_campaign();
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.hard_state.term += 1;
        self.hard_state.vote = Some(self.config.id);
        self.persist_hard_state();
        self.role = Role::Candidate;
        self.leader_id = None;
        self.votes = BTreeMap::from([(self.config.id, true)]);
        self.reset_election_timer();
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voter_peers() {
            self.send(
                peer,
                Message::RequestVote {
                    last_log_index,
                    last_log_term,
                    leadership_transfer: transfer,
                },
            );
        }
        self.maybe_finish_campaign();
    }

    fn maybe_finish_campaign(&mut self) {
        // An empty log cannot tell a new cluster from one it is to join.
        let unanimous = self.log.last_index() == 0;
        match (
            self.configurations.current().tally(&self.votes, unanimous),
            self.role,
        ) {
            (VoteResult::Won, Role::PreCandidate) => self.become_candidate(false),
            (VoteResult::Won, Role::Candidate) => self.become_leader(),
            (VoteResult::Lost, Role::PreCandidate | Role::Candidate) => {
                self.become_follower(self.hard_state.term, None)
            }
            _ => {}
        }
    }

    /// True while this node should ignore disruptive candidates: a follower
    /// that heard from its leader within the minimum election timeout, or a
    /// leader checking its quorum.
    pub(super) fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => self.config.check_quorum,
            Role::Follower => {
                (self.config.pre_vote || self.config.check_quorum)
                    && self.leader_id.is_some()
                    && self.election_elapsed_ticks < self.config.election_timeout_ticks.0
            }
            Role::PreCandidate | Role::Candidate => false,
        }
    }

    /// `campaign_term` is the envelope's term: the term the pre-candidate
    /// would run in. A grant is answered in that term, a refusal in ours.
    pub(super) fn handle_pre_vote(
        &mut self,
        from: NodeId,
        campaign_term: Term,
        last_log_index: Index,
        last_log_term: Term,
    ) {
        let granted = campaign_term > self.hard_state.term
            && !self.in_lease()
            && self.log.is_up_to_date(last_log_index, last_log_term);
        let reply_term = if granted {
            campaign_term
        } else {
            self.hard_state.term
        };
        self.send_with_term(from, reply_term, Message::PreVoteResponse { granted });
    }

    pub(super) fn handle_pre_vote_response(&mut self, from: NodeId, term: Term, granted: bool) {
        // Grants carry our campaign term, refusals our own term (a higher
        // refusal already made us a follower).
        let expected_term = if granted {
            self.hard_state.term + 1
        } else {
            self.hard_state.term
        };
        if self.role != Role::PreCandidate || term != expected_term {
            return;
        }
        self.votes.insert(from, granted);
        self.maybe_finish_campaign();
    }

    /// The envelope's term equals ours here (a higher one was adopted).
    pub(super) fn handle_request_vote(
        &mut self,
        from: NodeId,
        last_log_index: Index,
        last_log_term: Term,
    ) {
        let can_vote = match self.hard_state.vote {
            Some(vote) => vote == from,
            None => self.leader_id.is_none(),
        };
        let granted = can_vote && self.log.is_up_to_date(last_log_index, last_log_term);
        if granted {
            if self.hard_state.vote.is_none() {
                self.hard_state.vote = Some(from);
                // Durable before the grant leaves (the executor orders it).
                self.persist_hard_state();
            }
            self.election_elapsed_ticks = 0;
        }
        self.send(from, Message::RequestVoteResponse { granted });
    }

    pub(super) fn handle_vote_response(&mut self, from: NodeId, granted: bool) {
        if self.role != Role::Candidate {
            return;
        }
        self.votes.insert(from, granted);
        self.maybe_finish_campaign();
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        debug_assert_eq!(self.hard_state.vote, Some(self.config.id));
        let term = self.hard_state.term;
        let next_index = self.log.last_index() + 1;
        let own = self.config.id;
        let progress = self
            .configurations
            .current()
            .members()
            .keys()
            .filter(|id| **id != own)
            .map(|peer| (*peer, Progress::new(next_index)))
            .collect();
        self.role = Role::Leader;
        self.leader_id = Some(self.config.id);
        self.votes.clear();
        // The term's first entry: the no-op, or the bootstrap configuration
        // if the log holds none yet (it then lives in the log for good).
        let data = if self.configurations.from_log() {
            Bytes::new()
        } else {
            // Each voter bound to the data dir that voted for this leader
            // (membership's "Voters are data dirs").
            let own = (self.config.id, self.config.incarnation);
            let incarnations = &self.hard_state.incarnations;
            self.configurations
                .current()
                .binding_voters(|id| {
                    if id == own.0 {
                        Some(own.1)
                    } else {
                        incarnations.get(&id).copied()
                    }
                })
                .encode()
        };
        let noop = Entry {
            term,
            index: next_index,
            data,
        };
        self.leader = Some(Leader {
            progress,
            ticks: 0,
            heartbeat_elapsed_ticks: 0,
            noop_index: noop.index,
            read_round: 0,
            reads: VecDeque::new(),
            reads_before_noop: Vec::new(),
            append_pending: false,
            transfer: None,
            retiring: BTreeMap::new(),
        });
        self.append_own_entry(noop);
        self.broadcast_append();
    }

    pub(super) fn tick_leader(&mut self) {
        let timeout_min = self.config.election_timeout_ticks.0;
        let heartbeat_ticks = self.config.heartbeat_ticks;
        let check_quorum = self.config.check_quorum;
        let own = self.config.id;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        leader.ticks += 1;
        // CheckQuorum, evaluated every tick so the leader steps down exactly
        // one election timeout after it last heard from a majority of the
        // voters in force.
        let ticks = leader.ticks;
        let progress = &leader.progress;
        let active = |id: NodeId| {
            id == own
                || progress
                    .get(&id)
                    .is_some_and(|progress| ticks - progress.last_heard_tick < timeout_min)
        };
        if check_quorum && !self.configurations.current().has_majority(active) {
            log::info!(
                "node {} steps down: no quorum heard in an election timeout",
                self.config.id
            );
            self.become_follower(self.hard_state.term, None);
            return;
        }
        if let Some(transfer) = leader.transfer.as_mut() {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= timeout_min {
                log::info!(
                    "node {} aborts leadership transfer to {}",
                    self.config.id,
                    transfer.target
                );
                leader.transfer = None;
            }
        }
        leader.heartbeat_elapsed_ticks += 1;
        let heartbeat_due = leader.heartbeat_elapsed_ticks >= heartbeat_ticks;
        self.tick_retiring();
        if heartbeat_due {
            self.broadcast_heartbeat();
        }
    }
}
