//! Linearizable reads by ReadIndex (thesis §6.4) and leadership transfer
//! (thesis §3.10), as methods on `Node`.
//!
//! ReadIndex: a read registered on the leader records the commit index, then
//! waits for one heartbeat round sent after it was registered to be answered
//! by a majority (this node counting itself): no newer leader can have
//! committed anything then, so state as of that index is current. One round
//! serves every read registered before its heartbeats left; rounds are sent
//! at drain time, so one turn's reads share one round, and at most one
//! round is unanswered: reads registered meanwhile share the next. The leader serves no
//! read until its term's no-op has committed (before that its commit index
//! may lag entries committed by earlier leaders); such reads are queued. A
//! deposed leader fails every pending read. `ReadReady{id, index}` tells the
//! executor to serve the read once it has applied through `index`.
//!
//! Leadership transfer: the leader stops taking proposals, brings the target
//! up to date, sends it TimeoutNow (the target then campaigns at once, and
//! voters skip their lease check), and gives up after an election timeout.

use super::message::{Index, Message, NodeId};
use super::node::{Node, NotLeader, PendingRead, Role, Transfer};
use super::Action;

impl Node {
    /// Register a linearizable read under `id` (leader only). The answer is
    /// a later `Action::ReadReady { id, index }` or `Action::ReadFailed { id }`.
    pub fn read_index(&mut self, id: u64) -> Result<(), NotLeader> {
        let commit_index = self.commit_index;
        let leader = self.leader_for_request()?;
        if commit_index < leader.noop_index {
            leader.reads_before_noop.push(id);
        } else {
            self.register_read(id, commit_index);
        }
        Ok(())
    }

    /// Hand leadership to `to`, or to the most up-to-date follower if `to` is
    /// `None` or not another member. Returns the target; the node's own id if
    /// it is the only member (nothing to do). While the transfer runs,
    /// `propose` and `read_index` answer `NotLeader { leader: None }`.
    pub fn transfer_leadership(&mut self, to: Option<NodeId>) -> Result<NodeId, NotLeader> {
        let own_id = self.config.id;
        let Some(leader) = self.leader.as_mut() else {
            return Err(NotLeader {
                leader: self.leader_id,
            });
        };
        if let Some(transfer) = leader.transfer {
            return Ok(transfer.target);
        }
        let configuration = self.configurations.current();
        let requested =
            to.filter(|id| leader.progress.contains_key(id) && configuration.is_voter(*id));
        // Most up to date voter: highest match index, ties to the lowest id.
        let best = leader
            .progress
            .iter()
            .filter(|(id, _)| configuration.is_voter(**id))
            .max_by(|(a_id, a), (b_id, b)| a.match_index.cmp(&b.match_index).then(b_id.cmp(a_id)))
            .map(|(id, _)| *id);
        let Some(target) = requested.or(best) else {
            return Ok(own_id);
        };
        let last_index = self.log.last_index();
        if let Some(progress) = leader.progress.get_mut(&target) {
            if progress.match_index < last_index {
                // Do not wait for a possibly lost pipeline: probe now.
                progress.become_probe();
            }
        }
        leader.transfer = Some(Transfer {
            target,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        });
        log::info!("node {own_id} transfers leadership to {target}");
        self.maybe_send_timeout_now(target);
        while self.maybe_send_append(target) {}
        Ok(target)
    }

    /// Send TimeoutNow once the transfer target holds the whole log.
    pub(super) fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let last_index = self.log.last_index();
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let Some(transfer) = leader.transfer.as_mut() else {
            return;
        };
        let caught_up = leader
            .progress
            .get(&peer)
            .is_some_and(|progress| progress.match_index == last_index);
        let voter = self.configurations.current().is_voter(peer);
        if transfer.target == peer && !transfer.timeout_now_sent && caught_up && voter {
            transfer.timeout_now_sent = true;
            self.send(peer, Message::TimeoutNow);
        }
    }

    fn register_read(&mut self, id: u64, index: Index) {
        let own = self.config.id;
        if self
            .configurations
            .current()
            .has_majority(|voter| voter == own)
        {
            // A single voter is its own majority.
            self.actions.push(Action::ReadReady { id, index });
            return;
        }
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let round = leader.read_round + 1;
        leader.reads.push_back(PendingRead { id, index, round });
    }

    /// Emit ReadReady for every pending read whose round a majority of the
    /// voters in force answered.
    pub(super) fn maybe_confirm_reads(&mut self) {
        let own = self.config.id;
        let configuration = self.configurations.current();
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        while let Some(read) = leader.reads.front().copied() {
            let progress = &leader.progress;
            let acked = configuration.has_majority(|id| {
                id == own
                    || progress
                        .get(&id)
                        .is_some_and(|progress| progress.read_round_acked >= read.round)
            });
            if !acked {
                break;
            }
            leader.reads.pop_front();
            self.actions.push(Action::ReadReady {
                id: read.id,
                index: read.index,
            });
        }
    }

    /// The leader's commit index advanced: once the no-op is committed, the
    /// reads that waited for it get the current commit index.
    pub(super) fn on_leader_commit(&mut self) {
        debug_assert_eq!(self.role, Role::Leader);
        let commit_index = self.commit_index;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        if commit_index < leader.noop_index || leader.reads_before_noop.is_empty() {
            return;
        }
        for id in std::mem::take(&mut leader.reads_before_noop) {
            self.register_read(id, commit_index);
        }
    }
}
