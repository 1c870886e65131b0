//! What happens to the cluster from outside during the fault phase: one
//! fault per `Fault` event, drawn by weight from `FaultWeights`.
//!
//! Crash a node (or the leader) as a process kill or a power loss; pause a
//! node (or the leader: it wakes up believing it still leads, to a socket
//! full of stale messages, and catches up its missed ticks a few at a
//! time); symmetric partitions, isolating the leader, one-way link cuts,
//! healing; changing loss, duplication and delay; leadership transfer; a
//! jump of one node's wall clock by up to a year either way (cluster time
//! must not care); a membership change asked of the leader, as `raftfs
//! member` asks it (add a waiting node as a learner, promote a learner,
//! remove any member, the leader included), or a new disk for a removed
//! node so it can be added again. The other faults go on meanwhile, so
//! crashes and partitions strike during changes.

use super::{address_of, Sim, TICK_US};
use crate::member::MemberRequest;
use crate::raft::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;

/// A year, the largest wall-clock jump.
const YEAR_MS: i64 = 365 * 86_400_000;

impl Sim {
    fn up_positions(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.nodes[index].is_up())
            .collect()
    }

    fn power_loss(&mut self) -> bool {
        self.rng
            .gen_bool(self.config.disk.power_loss_probability.clamp(0.0, 1.0))
    }

    pub(super) fn fault(&mut self) -> Result<(), String> {
        self.faults += 1;
        let weights = self.config.faults.clone();
        let mut pick = self.rng.gen_range(0..weights.total());
        let mut chosen = |weight: u32| {
            if pick < weight {
                true
            } else {
                pick -= weight;
                false
            }
        };
        let up = self.up_positions();
        let leader = self.leader_position();
        if chosen(weights.crash) {
            if let Some(&victim) = up.choose(&mut self.rng) {
                let power_loss = self.power_loss();
                self.crash_node(victim, power_loss);
            }
        } else if chosen(weights.crash_leader) {
            if let Some(victim) = leader.or_else(|| up.choose(&mut self.rng).copied()) {
                let power_loss = self.power_loss();
                self.crash_node(victim, power_loss);
            }
        } else if chosen(weights.pause) {
            let victim = if self.rng.gen_bool(0.6) { leader } else { None };
            if let Some(victim) = victim.or_else(|| up.choose(&mut self.rng).copied()) {
                let (low, high) = self.config.pause_ticks;
                let pause_us = self.rng.gen_range(low..=high.max(low)) * TICK_US;
                let id = self.nodes[victim].id;
                self.trace_fault(format!("pause node {id} for {} ticks", pause_us / TICK_US));
                let node = &mut self.nodes[victim];
                node.paused_until_us = node.paused_until_us.max(self.now_us + pause_us);
            }
        } else if chosen(weights.partition_symmetric) {
            if self.rng.gen_bool(0.5) {
                self.net.heal_all();
            }
            let mut shuffled = self.members.clone();
            shuffled.shuffle(&mut self.rng);
            let side_size = self.rng.gen_range(1..self.members.len());
            let side: Vec<NodeId> = shuffled[..side_size].to_vec();
            self.trace_fault(format!("partition {side:?} from the rest"));
            self.net.partition_symmetric(&side, &self.members);
            self.partitions += 1;
        } else if chosen(weights.isolate_leader) {
            if let Some(leader) = leader {
                let id = self.nodes[leader].id;
                self.trace_fault(format!("isolate leader {id}"));
                self.net.partition_symmetric(&[id], &self.members);
                self.partitions += 1;
            }
        } else if chosen(weights.partition_one_way) {
            let node = self.members[self.rng.gen_range(0..self.members.len())];
            let deaf = self.rng.gen_bool(0.5);
            for &other in &self.members.clone() {
                if other != node && self.rng.gen_bool(0.7) {
                    if deaf {
                        self.net.cut_one_way(other, node);
                    } else {
                        self.net.cut_one_way(node, other);
                    }
                }
            }
            self.trace_fault(format!("one-way cuts around node {node} (deaf {deaf})"));
            self.partitions += 1;
        } else if chosen(weights.heal) {
            self.trace_fault("heal all links".to_string());
            self.net.heal_all();
        } else if chosen(weights.network_weather) {
            self.net.config.loss_probability = [0.0, 0.01, 0.05, 0.2][self.rng.gen_range(0..4)];
            self.net.config.duplicate_probability = [0.0, 0.0, 0.05, 0.2][self.rng.gen_range(0..4)];
            self.net.config.long_delay_probability =
                [0.0, 0.0, 0.05, 0.2][self.rng.gen_range(0..4)];
            let config = self.net.config.clone();
            self.trace_fault(format!("network weather {config:?}"));
        } else if chosen(weights.transfer_leadership) {
            if let Some(leader) = leader.filter(|&leader| self.pause_left_us(leader).is_none()) {
                if let Some(replica) = self.nodes[leader].replica.as_mut() {
                    let target = replica.transfer_leadership();
                    self.trace_fault(format!("transfer leadership: {target:?}"));
                }
                self.turn(leader)?;
            }
        } else if chosen(weights.membership) {
            self.membership_fault()?;
        } else if chosen(weights.clock_jump) {
            if let Some(&victim) = up.choose(&mut self.rng) {
                let jump_ms = self.rng.gen_range(-YEAR_MS..=YEAR_MS);
                let id = self.nodes[victim].id;
                self.trace_fault(format!("node {id}'s wall clock jumps {jump_ms} ms"));
                self.nodes[victim].wall_offset_ms =
                    self.nodes[victim].wall_offset_ms.saturating_add(jump_ms);
            }
        }
        Ok(())
    }

    /// One membership change through the leader (see the module doc).
    fn membership_fault(&mut self) -> Result<(), String> {
        let retired: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| self.nodes[index].retired)
            .collect();
        let Some(leader) = self
            .leader_position()
            .filter(|&leader| self.pause_left_us(leader).is_none())
        else {
            // No leader to ask: give a removed node its new disk meanwhile.
            if let Some(&index) = retired.choose(&mut self.rng) {
                self.trace_fault(format!("new disk for node {}", self.nodes[index].id));
                self.replace_disk(index)?;
            }
            return Ok(());
        };
        let Some(configuration) = self.nodes[leader]
            .replica
            .as_ref()
            .map(|replica| replica.raft().configuration().clone())
        else {
            return Ok(());
        };
        let waiting: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|node| node.is_up() && !configuration.contains(node.id))
            .map(|node| node.id)
            .collect();
        let learners = configuration.learners();
        let members: Vec<NodeId> = configuration.members().keys().copied().collect();
        let mut actions: Vec<Option<MemberRequest>> = Vec::new();
        if let Some(&id) = waiting.choose(&mut self.rng) {
            actions.push(Some(MemberRequest::Add {
                id,
                peer: format!("node-{id}:9080"),
                client: address_of(id),
                metrics: None,
            }));
        }
        if let Some(&id) = learners.choose(&mut self.rng) {
            actions.push(Some(MemberRequest::Promote { id }));
        }
        if let Some(&id) = members.choose(&mut self.rng) {
            actions.push(Some(MemberRequest::Remove { id }));
        }
        if !retired.is_empty() {
            // None: a new disk for a removed node.
            actions.push(None);
        }
        let Some(action) = actions.choose(&mut self.rng).cloned() else {
            return Ok(());
        };
        let Some(request) = action else {
            if let Some(&index) = retired.choose(&mut self.rng) {
                self.trace_fault(format!("new disk for node {}", self.nodes[index].id));
                self.replace_disk(index)?;
            }
            return Ok(());
        };
        let Some(replica) = self.nodes[leader].replica.as_mut() else {
            return Ok(());
        };
        let answer = replica.member_request(&request);
        if matches!(answer, crate::member::MemberAnswer::Proposed { .. }) {
            self.membership_changes += 1;
        }
        self.trace_fault(format!("membership {request:?}: {answer:?}"));
        self.turn(leader)
    }

    fn trace_fault(&self, line: String) {
        if self.config.verbose {
            self.trace(format!("    fault: {line}"));
        }
    }
}
