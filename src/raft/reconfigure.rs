//! Membership change on a `Node` (thesis chapter 4): proposing a change,
//! following the configuration in force, learners, and members that leave.
//!
//! The rule and the configurations are `membership`'s; this file wires them
//! into the node:
//! - `propose_membership_change` (leader): refuses a change before an entry
//!   of this term is committed, while another change is uncommitted, that
//!   removes the leader itself, or that promotes a learner not caught up;
//!   otherwise appends the new configuration as an entry, in force at once.
//! - `on_configuration_changed`: whenever the configuration in force
//!   changes (an entry appended, a suffix replaced, a snapshot installed),
//!   the leader adds progress for new members and moves removed ones to
//!   `retiring`; a node that is no longer a voter stops campaigning.
//! - `on_commit_of_configurations`: once a configuration is committed, the
//!   incarnations of members it no longer lists (or lists as removed) are
//!   forgotten (durably), so the id can come back with a new data dir.
//! - Retiring: a leader keeps replicating to a member it removed for
//!   `RETIRING_TICKS_MAX` ticks, counted in no quorum, so the member
//!   receives and commits the entry that removes it and stops
//!   (`Node::removed_at`) instead of campaigning against the cluster.
//!
//! Invariants: the leader is a voter of every configuration it appends;
//! `progress` holds exactly the other members plus the retiring ones; at
//! most `MEMBERS_MAX` nodes are replicated to, the leader included.

use super::membership::{Change, ChangeError, MemberAddresses};
use super::message::{Entry, Index, NodeId};
use super::node::{Node, Retiring, Role};
use super::progress::{Progress, ProgressState};
use super::Action;
use crate::limits::{MEMBERS_MAX, PROMOTION_LAG_ENTRIES_MAX, RETIRING_TICKS_MAX};
use std::collections::BTreeMap;

impl Node {
    /// Leader: propose `change`. Returns the index of the entry that makes
    /// it (an earlier one if the configuration in force already reflects
    /// it: a retried command). The change is in force at once and done once
    /// that index is committed.
    pub fn propose_membership_change(&mut self, change: Change) -> Result<Index, ChangeError> {
        let Some(leader) = self.leader.as_ref() else {
            return Err(ChangeError::NotLeader {
                leader: self.leader_id,
            });
        };
        if leader.transfer.is_some() || !self.is_voter() {
            // A leader that is no voter commits its own removal and stops
            // (`Node::may_campaign`): it proposes no change.
            return Err(ChangeError::NotLeader { leader: None });
        }
        let noop_index = leader.noop_index;
        let current = self.configurations.current();
        if current.reflects(&change) {
            return Ok(self.configurations.current_index());
        }
        if self.commit_index < noop_index {
            return Err(ChangeError::TermNotCommitted);
        }
        let pending = self.configurations.current_index();
        if pending > self.commit_index {
            return Err(ChangeError::ChangePending { index: pending });
        }
        if let Change::Remove { id } = change {
            if id == self.config.id {
                return Err(ChangeError::RemovesLeader { id });
            }
        }
        if let Change::Promote { id } = change {
            self.check_caught_up(id)?;
        }
        // The data dir the change is about: the one removed (refused from
        // then on) or the one promoted (the new voter is bound to it).
        let incarnation = match change {
            Change::Remove { id } | Change::Promote { id } => {
                self.hard_state.incarnations.get(&id).copied()
            }
            Change::AddLearner { .. } => None,
        };
        let next = current.apply_change(&change, incarnation)?;
        debug_assert!(next.counts_as_voter(self.config.id, self.config.incarnation));
        let entry = Entry {
            term: self.hard_state.term,
            index: self.log.last_index() + 1,
            data: next.encode(),
        };
        let index = entry.index;
        log::info!(
            "node {} proposes configuration {next} at index {index} ({change:?})",
            self.config.id
        );
        self.append_own_entry(entry);
        Ok(index)
    }

    /// Leader: append an entry of its own (a configuration) to its log,
    /// persist it and send it at the next drain.
    pub(super) fn append_own_entry(&mut self, entry: Entry) {
        self.log.append(entry.clone());
        let changed = self.observe_configurations(std::slice::from_ref(&entry));
        self.actions.push(Action::PersistEntries(vec![entry]));
        if let Some(leader) = self.leader.as_mut() {
            leader.append_pending = true;
        }
        if changed {
            self.on_configuration_changed();
        }
    }

    /// Note the configuration entries among entries just written; true if
    /// the configuration in force changed. An entry that does not decode is
    /// logged and skipped (only a foreign format gets here: the log's bytes
    /// passed the WAL's or the link's checks; followers refuse such appends
    /// before they write them, see `replication`).
    pub(super) fn observe_configurations(&mut self, entries: &[Entry]) -> bool {
        match self.configurations.observe(entries) {
            Ok(changed) => changed,
            Err(reason) => {
                log::error!("node {}: {reason}", self.config.id);
                true
            }
        }
    }

    fn check_caught_up(&self, id: NodeId) -> Result<(), ChangeError> {
        let timeout_min = self.config.election_timeout_ticks.0;
        let not_caught_up = |match_index, heard_ticks_ago| ChangeError::NotCaughtUp {
            id,
            match_index,
            commit_index: self.commit_index,
            heard_ticks_ago,
        };
        let Some(leader) = self.leader.as_ref() else {
            return Err(ChangeError::NotLeader {
                leader: self.leader_id,
            });
        };
        if !self.configurations.current().is_learner(id) {
            // The change rule gives the precise reason.
            return Ok(());
        }
        let Some(progress) = leader.progress.get(&id) else {
            return Err(not_caught_up(0, None));
        };
        let heard = progress
            .heard_this_term
            .then(|| leader.ticks - progress.last_heard_tick);
        let recent = heard.is_some_and(|ticks| ticks < timeout_min);
        let close = progress.match_index + PROMOTION_LAG_ENTRIES_MAX >= self.commit_index;
        if recent && close && progress.state != ProgressState::Snapshot {
            Ok(())
        } else {
            Err(not_caught_up(progress.match_index, heard))
        }
    }

    /// The configuration in force changed: follow it.
    pub(super) fn on_configuration_changed(&mut self) {
        self.configuration_version += 1;
        let own = self.config.id;
        let configuration = self.configurations.current().clone();
        // Said at info only when the members shown change: the first
        // leader's entry binding cluster.toml's voters to their data dirs
        // is news to nobody.
        let shown = configuration.to_string();
        let level = match self.configurations.all().rev().nth(1) {
            Some((_, previous)) if previous.to_string() == shown => log::Level::Debug,
            _ => log::Level::Info,
        };
        log::log!(
            level,
            "node {own}: configuration {shown} in force (index {})",
            self.configurations.current_index()
        );
        if !configuration.counts_as_voter(own, self.config.incarnation)
            && matches!(self.role, Role::PreCandidate | Role::Candidate)
        {
            self.become_follower(self.hard_state.term, None);
        }
        let next_index = self.log.last_index() + 1;
        let removal_index = self.configurations.current_index();
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        debug_assert!(configuration.is_voter(own), "a leader stays a voter");
        let ticks = leader.ticks;
        for &id in configuration.members().keys() {
            if id == own {
                continue;
            }
            if leader.retiring.remove(&id).is_some() {
                // Removed and added again: a new data dir, a new log.
                leader.progress.remove(&id);
            }
            leader.progress.entry(id).or_insert_with(|| {
                let mut progress = Progress::new(next_index);
                progress.last_heard_tick = ticks;
                progress
            });
        }
        let departed: Vec<NodeId> = leader
            .progress
            .keys()
            .copied()
            .filter(|id| !configuration.contains(*id) && !leader.retiring.contains_key(id))
            .collect();
        for id in departed {
            let addresses = self
                .configurations
                .all()
                .rev()
                .find_map(|(_, c)| c.member(id))
                .map(|member| member.addresses.clone())
                .unwrap_or_default();
            leader.retiring.insert(
                id,
                Retiring {
                    removal_index,
                    since_tick: ticks,
                    addresses,
                },
            );
        }
        // Never more than MEMBERS_MAX nodes in all: drop the oldest retiring.
        while configuration.members().len() + leader.retiring.len() > MEMBERS_MAX {
            let Some(oldest) = leader
                .retiring
                .iter()
                .min_by_key(|(id, retiring)| (retiring.since_tick, **id))
                .map(|(id, _)| *id)
            else {
                break;
            };
            leader.retiring.remove(&oldest);
            leader.progress.remove(&oldest);
        }
        if let Some(transfer) = leader.transfer {
            if !configuration.is_voter(transfer.target) {
                leader.transfer = None;
            }
        }
    }

    /// Leader, every tick: stop replicating to members retired long enough.
    pub(super) fn tick_retiring(&mut self) {
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let ticks = leader.ticks;
        let expired: Vec<NodeId> = leader
            .retiring
            .iter()
            .filter(|(_, retiring)| ticks.saturating_sub(retiring.since_tick) >= RETIRING_TICKS_MAX)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            leader.retiring.remove(&id);
            leader.progress.remove(&id);
        }
    }

    /// Entries `from..=to` were just committed: forget the incarnations of
    /// members the committed configurations among them no longer hold, so
    /// their ids can come back with new data dirs.
    pub(super) fn on_commit_of_configurations(&mut self, from: Index, to: Index) {
        let committed: Vec<_> = self
            .configurations
            .all()
            .filter(|(index, _)| *index >= from && *index <= to)
            .map(|(_, configuration)| configuration.clone())
            .collect();
        if committed.is_empty() {
            return;
        }
        let current = self.configurations.current().clone();
        let before = self.hard_state.incarnations.len();
        for configuration in &committed {
            self.hard_state.incarnations.retain(|id, incarnation| {
                let removed = configuration.was_removed(*id, *incarnation)
                    || current.was_removed(*id, *incarnation);
                !removed && (configuration.contains(*id) || current.contains(*id))
            });
        }
        if self.hard_state.incarnations.len() != before {
            self.persist_hard_state();
        }
    }

    /// Whether this data dir was removed from the cluster: the committed
    /// configuration names its (id, incarnation) as removed (the id alone
    /// says nothing: it may have been added again with a new data dir).
    /// Returns that configuration's index. A removed node must stop: it is
    /// in no quorum and is sent nothing more.
    pub fn removed_at(&self) -> Option<Index> {
        let (index, committed) = self.configurations.at(self.commit_index);
        committed
            .was_removed(self.config.id, self.config.incarnation)
            .then_some(index)
    }

    /// Where to reach every node this one may send to: the other members
    /// of the configuration in force and, on a leader, the retiring ones.
    pub fn peer_addresses(&self) -> BTreeMap<NodeId, MemberAddresses> {
        let own = self.config.id;
        let mut addresses: BTreeMap<NodeId, MemberAddresses> = self
            .configurations
            .current()
            .members()
            .iter()
            .filter(|(id, _)| **id != own)
            .map(|(id, member)| (*id, member.addresses.clone()))
            .collect();
        if let Some(leader) = self.leader.as_ref() {
            for (id, retiring) in &leader.retiring {
                addresses
                    .entry(*id)
                    .or_insert_with(|| retiring.addresses.clone());
            }
        }
        addresses
    }

    /// Leader only: the members it still replicates to after removing
    /// them, with the index of the configuration that removed each.
    pub fn retiring(&self) -> Vec<(NodeId, Index)> {
        self.leader.as_ref().map_or_else(Vec::new, |leader| {
            leader
                .retiring
                .iter()
                .map(|(id, retiring)| (*id, retiring.removal_index))
                .collect()
        })
    }
}
