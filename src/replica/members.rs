//! Membership change as the replica sees it: operators' requests, the
//! configuration's addresses, and leaving the cluster.
//!
//! Requests (`raftfs member add/promote/remove`) arrive through the driver
//! (the reactor takes them off the peer port; the simulator makes them up)
//! and are answered at once: `Proposed` names the log index of the entry
//! that makes the change (the command is done once a member reports that
//! index committed), anything else says why not, and whether to retry
//! (`crate::member` has the wire types). Removing the leader starts a
//! leadership transfer to the most up-to-date voter and answers `Retry`:
//! the new leader removes it.
//!
//! Addresses: the configuration in force carries every member's addresses;
//! redirects name a leader's client address from it (cluster.toml's table
//! for members it does not list), and the driver dials what
//! `peer_addresses` lists whenever `configuration_version` changes.
//!
//! Leaving: `removed` says why this node must stop (the committed
//! configuration no longer lists it); the driver stops it with that line.
//!
//! Refusals (`peer_refused`): a member refuses this node's link when it
//! knows another data dir under this id (SPEC §3) or this data dir as
//! removed. That stops the node, except when the refusal is about its
//! incarnation and either its log is empty and fewer than a majority of its
//! voters refused it (a stale member), or this data dir was added by the
//! cluster (a configuration from its log lists it): the refusing member has not yet learned that the
//! id was removed and added again. It learns it from a leader; if this
//! node leads, it hands leadership to another voter so one can tell it.
//! A refusing member that is no voter (a learner with a stale log) records
//! the new data dir instead (`raft::Node::observe_incarnation`), so a
//! replaced sole voter still reaches it.

use super::{Replica, REMOVED_REFUSAL_MARK};
use crate::member::{MemberAnswer, MemberRequest};
use crate::raft::{Change, ChangeError, Configuration, Index, MemberAddresses, MemberRole, NodeId};
use std::collections::BTreeMap;

/// One member as status and metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: NodeId,
    pub role: MemberRole,
    pub addresses: MemberAddresses,
    /// Leader only: the member's log matches through this index.
    pub match_index: Option<Index>,
}

/// The configuration in force as status and metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// The index of the entry that made it (0: cluster.toml's, not yet in
    /// the log).
    pub index: Index,
    /// Whether that entry is committed (the configuration cannot go back).
    pub committed: bool,
    pub members: Vec<MemberView>,
}

impl Replica {
    /// An operator's membership request (see the module doc).
    pub fn member_request(&mut self, request: &MemberRequest) -> MemberAnswer {
        let change = match request {
            MemberRequest::Add {
                id,
                peer,
                client,
                metrics,
            } => Change::AddLearner {
                id: *id,
                addresses: MemberAddresses {
                    peer: peer.clone(),
                    client: client.clone(),
                    metrics: metrics.clone().unwrap_or_default(),
                },
            },
            MemberRequest::Promote { id } => Change::Promote { id: *id },
            MemberRequest::Remove { id } => Change::Remove { id: *id },
        };
        match self.raft.propose_membership_change(change) {
            Ok(index) => MemberAnswer::Proposed { index },
            Err(ChangeError::NotLeader { leader }) => MemberAnswer::NotLeader { leader },
            Err(ChangeError::RemovesLeader { id }) => match self.raft.transfer_leadership(None) {
                Ok(target) if target != id => MemberAnswer::Retry {
                    reason: format!(
                        "node {id} leads: it is handing leadership to node {target} first"
                    ),
                },
                _ => MemberAnswer::Refused {
                    reason: format!("node {id} leads and no other voter can take over"),
                },
            },
            Err(error @ (ChangeError::TermNotCommitted | ChangeError::ChangePending { .. })) => {
                MemberAnswer::Retry {
                    reason: error.to_string(),
                }
            }
            Err(error @ (ChangeError::NotCaughtUp { .. } | ChangeError::Invalid(_))) => {
                MemberAnswer::Refused {
                    reason: error.to_string(),
                }
            }
        }
    }

    /// Why this node must stop, once the committed configuration no longer
    /// lists it (None while it is a member, or waiting to be added).
    pub fn removed(&self) -> Option<String> {
        let index = self.raft.removed_at()?;
        Some(format!(
            "node {} was removed from the cluster (configuration at log index {index}): it stops \
             and must not be started again with this data dir; to add it back, give it an empty \
             data dir and run `raftfs member add`",
            self.raft.id()
        ))
    }

    /// This node was removed (`removed`) and stops now: answer every
    /// command it holds, as a draining node does, so no client is left
    /// without one. Forwarded writes whose batch left get `ERR_INTERNAL`
    /// (a leader may have taken them); everything else, never sent to a
    /// leader, is redirected to the leader (`ERR_INTERNAL` if none is
    /// known). A removed node forwards nothing more.
    pub fn leave(&mut self) {
        self.drain();
        self.abandon_forwarding();
        let leader = self.raft.leader_id();
        let unrouted: Vec<_> = self
            .held
            .drain(..)
            .chain(self.incoming.drain(..))
            .map(|pending| pending.client)
            .filter(|client| client.key != super::forward::REMOTE_KEY)
            .collect();
        for client in unrouted {
            self.answer_redirect(client, leader);
        }
    }

    /// Member `by` refused this node's link, saying `reason` (see the
    /// module doc): Ok to go on (logged), Err(line) to stop.
    pub fn peer_refused(&mut self, by: NodeId, reason: &str) -> Result<(), String> {
        let line = format!("node {by} refused this node: {reason}");
        let own = self.raft.id();
        let added = self.raft.configuration().contains(own) && self.raft.configuration_from_log();
        if reason.contains(REMOVED_REFUSAL_MARK) {
            return Err(line);
        }
        if !added {
            // An empty log has nothing another data dir's history could
            // corrupt: it stops only once a majority of its voters refused
            // it (its id is another data dir's), not on one stale member
            // that has not learned the id was removed and added again (sim
            // seed 7052: such refusals kept a re-added node exiting before
            // the leader could send it the log).
            if self.raft.last_index() != 0 {
                return Err(line);
            }
            self.refused_by.insert(by);
            let voters = self.raft.configuration().voters();
            let refusing = voters
                .iter()
                .filter(|voter| self.refused_by.contains(voter))
                .count();
            if refusing >= crate::raft::quorum::majority(voters.len()) {
                return Err(line);
            }
            log::warn!("{line}; waiting for a leader");
            return Ok(());
        }
        log::warn!("{line}; it has not learned yet that node {own} was added again");
        if self.raft.role() == crate::raft::Role::Leader {
            let matches: BTreeMap<NodeId, Index> = self.raft.match_indexes().into_iter().collect();
            let target = self
                .raft
                .configuration()
                .voters()
                .into_iter()
                .filter(|&voter| voter != own && voter != by)
                .max_by_key(|voter| (matches.get(voter).copied().unwrap_or(0), u64::MAX - voter));
            if let Some(target) = target {
                if let Ok(chosen) = self.raft.transfer_leadership(Some(target)) {
                    log::info!(
                        "node {own} hands leadership to node {chosen} so node {by} can catch up"
                    );
                }
            }
        }
        Ok(())
    }

    /// The client address to name in a redirect to `leader`.
    pub(super) fn client_address(&self, leader: NodeId) -> Option<&String> {
        self.raft
            .configuration()
            .member(leader)
            .map(|member| &member.addresses.client)
            .filter(|address| !address.is_empty())
            .or_else(|| self.config.client_addresses.get(&leader))
    }

    /// Where to reach every node this one sends to (see the module doc);
    /// members whose configuration entry names no peer address (simulated
    /// or pre-membership ones) are left to the driver's own table.
    pub fn peer_addresses(&self) -> BTreeMap<NodeId, MemberAddresses> {
        self.raft.peer_addresses()
    }

    /// Changes whenever the configuration in force changes.
    pub fn configuration_version(&self) -> u64 {
        self.raft.configuration_version()
    }

    /// The configuration in force, for status and metrics.
    pub fn membership_view(&self) -> MembershipView {
        let index = self.raft.configuration_index();
        let matches: BTreeMap<NodeId, Index> = self.raft.match_indexes().into_iter().collect();
        let leader = self.raft.role() == crate::raft::Role::Leader;
        let own = self.raft.id();
        MembershipView {
            index,
            committed: index <= self.raft.commit_index(),
            members: self
                .raft
                .configuration()
                .members()
                .iter()
                .map(|(id, member)| MemberView {
                    id: *id,
                    role: member.role,
                    addresses: member.addresses.clone(),
                    match_index: if *id == own && leader {
                        Some(self.raft.last_index())
                    } else {
                        matches.get(id).copied()
                    },
                })
                .collect(),
        }
    }
}

/// The configuration a snapshot's state machine records (None for one
/// written before membership change, or undecodable: logged).
pub(super) fn snapshot_configuration(fsm: &crate::fsm::Fsm) -> Option<Configuration> {
    let data = fsm.membership();
    if data.is_empty() {
        return None;
    }
    match Configuration::decode(data) {
        Ok(configuration) => Some(configuration),
        Err(reason) => {
            log::error!("the snapshot's configuration does not decode ({reason}); ignored");
            None
        }
    }
}

/// The replica's side of peer handshakes and message checks.
impl crate::net::peer::PeerGate for Replica {
    /// A hello that names no cluster id comes from a data dir that has not
    /// met its cluster: accepted only while this cluster forms (its sender
    /// is one of cluster.toml's members and no leader wrote a configuration
    /// yet) or from the very data dir recorded for that member (its
    /// incarnation is the proof: 64 random bits). A node added later learns
    /// the id when the leader dials it. Then the incarnation rule (SPEC §3):
    /// a removed or replaced data dir is refused, fatally.
    fn accept(
        &mut self,
        from: NodeId,
        incarnation: u64,
        knows_cluster: bool,
    ) -> std::result::Result<(), crate::net::peer::Refusal> {
        if !knows_cluster {
            let recorded = self.raft.hard_state().incarnations.get(&from) == Some(&incarnation);
            let forming =
                !self.raft.configuration_from_log() && self.raft.configuration().contains(from);
            if !recorded && !forming {
                return Err(crate::net::peer::Refusal::retry(format!(
                    "node {from} names no cluster id and is not a data dir this cluster knows \
                     (a node added with `raftfs member add` learns the id when the leader dials it)"
                )));
            }
        }
        self.raft
            .observe_incarnation(from, incarnation)
            .map_err(|error| crate::net::peer::Refusal {
                reason: super::describe_step_error(&error),
                fatal: true,
            })
    }

    fn recorded_incarnation(&self, from: NodeId) -> Option<u64> {
        self.raft.hard_state().incarnations.get(&from).copied()
    }

    fn check(&mut self, envelope: &crate::raft::Envelope) -> std::result::Result<(), String> {
        self.raft.check_message(envelope)
    }
}
