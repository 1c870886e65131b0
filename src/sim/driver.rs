//! What happens to the cluster from outside: client operations, faults, and
//! the liveness phase that follows them.
//!
//! The client mostly talks to a node that believes it leads (and follows one
//! redirect), sometimes to any node, so stale leaders get writes and reads
//! too; a paused node gets no client operations (its client would wait).
//! Faults: crash a node (or the leader), pause a node (or the leader: it wakes
//! up believing it still leads, to a socket full of stale messages),
//! symmetric partitions, isolating the leader, one-way link cuts, healing,
//! changing loss/duplication/delay, leadership transfer. Each fault is drawn by weight from `FaultWeights`.

use super::{Sim, TICK_US};
use crate::raft::{NodeId, NotLeader};
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;

impl Sim {
    fn up_positions(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.nodes[index].is_up())
            .collect()
    }

    fn leader_positions(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.nodes[index].is_leader())
            .collect()
    }

    pub(super) fn client_operation(&mut self) -> Result<(), String> {
        let up: Vec<usize> = self
            .up_positions()
            .into_iter()
            .filter(|&index| self.pause_left_us(index).is_none())
            .collect();
        let leaders: Vec<usize> = self
            .leader_positions()
            .into_iter()
            .filter(|&index| self.pause_left_us(index).is_none())
            .collect();
        let target = if !leaders.is_empty() && self.rng.gen_bool(0.8) {
            leaders[self.rng.gen_range(0..leaders.len())]
        } else if !up.is_empty() {
            up[self.rng.gen_range(0..up.len())]
        } else {
            return Ok(());
        };
        if self
            .rng
            .gen_bool(self.config.read_probability.clamp(0.0, 1.0))
        {
            self.client_read(target)
        } else {
            self.client_write(target, true)
        }
    }

    fn client_write(&mut self, target: usize, may_redirect: bool) -> Result<(), String> {
        self.write_sequence += 1;
        let mut text = format!("w{}", self.write_sequence);
        if self.rng.gen_bool(0.1) {
            let padding = self.rng.gen_range(50..400);
            text.push(':');
            text.extend(std::iter::repeat_n('x', padding));
        }
        let data = Bytes::from(text);
        let id = self.node_id(target);
        let Some(raft) = self.nodes[target].raft.as_mut() else {
            return Ok(());
        };
        let outcome = raft.propose(data.clone());
        if self.config.verbose {
            self.trace(format!(
                "    client propose {:?} at node {id}: {outcome:?}",
                short(&data)
            ));
        }
        match outcome {
            Ok(index) => {
                self.history.propose(self.step, id, data, Some(index));
                self.run_node(target)
            }
            Err(NotLeader { leader }) => {
                self.history.propose(self.step, id, data, None);
                self.run_node(target)?;
                match leader.and_then(|leader| self.position_of(leader)) {
                    Some(next) if may_redirect && next != target && self.nodes[next].is_up() => {
                        self.client_write(next, false)
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn client_read(&mut self, target: usize) -> Result<(), String> {
        self.read_sequence += 1;
        let read_id = self.read_sequence;
        let required_index = self.applied_max;
        let id = self.node_id(target);
        let Some(raft) = self.nodes[target].raft.as_mut() else {
            return Ok(());
        };
        let outcome = raft.read_index(read_id);
        if self.config.verbose {
            self.trace(format!("    client read {read_id} at node {id} (needs index {required_index}): {outcome:?}"));
        }
        self.history
            .read_requested(self.step, id, read_id, required_index, outcome.is_ok());
        self.run_node(target)
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
                self.crash_node(victim);
            }
        } else if chosen(weights.crash_leader) {
            if let Some(victim) = leader.or_else(|| up.choose(&mut self.rng).copied()) {
                self.crash_node(victim);
            }
        } else if chosen(weights.pause) {
            let victim = if self.rng.gen_bool(0.6) { leader } else { None };
            if let Some(victim) = victim.or_else(|| up.choose(&mut self.rng).copied()) {
                let pause_us = self.rng.gen_range(2..50) * TICK_US;
                let id = self.node_id(victim);
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
                let id = self.node_id(leader);
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
                let to = if self.rng.gen_bool(0.5) {
                    None
                } else {
                    self.members.choose(&mut self.rng).copied()
                };
                if let Some(raft) = self.nodes[leader].raft.as_mut() {
                    let outcome = raft.transfer_leadership(to);
                    self.trace_fault(format!("transfer leadership to {to:?}: {outcome:?}"));
                }
                self.run_node(leader)?;
            }
        }
        Ok(())
    }

    fn trace_fault(&self, line: String) {
        if self.config.verbose {
            self.trace(format!("    fault: {line}"));
        }
    }

    /// End the fault phase: heal, stop loss and holds, restart every node.
    pub(super) fn begin_liveness(&mut self) {
        self.fault_phase = false;
        self.liveness.started_us = self.now_us;
        self.net.heal_all();
        self.net.config.loss_probability = 0.0;
        self.net.config.long_delay_probability = 0.0;
        self.trace_fault("liveness phase: healed, loss stopped, restarting every node".to_string());
        for index in 0..self.nodes.len() {
            self.nodes[index].paused_until_us = 0;
            if !self.nodes[index].is_up() {
                // Invalidate the pending Restart event and boot now.
                self.nodes[index].generation += 1;
                self.start_node(index);
            }
        }
    }

    /// One look at the liveness phase: (re)propose the probe at the leader,
    /// notice when every node applied it, then do a read at the leader.
    pub(super) fn advance_liveness(&mut self) -> Result<(), String> {
        if self.liveness.done {
            return Ok(());
        }
        let election_ticks_max = self.config.raft.election_timeout_ticks.1.max(1);
        if !self.liveness.write_done {
            if let Some((_, _, index, data, _)) = &self.liveness.probe {
                let position = (*index as usize).saturating_sub(1);
                if self
                    .nodes
                    .iter()
                    .all(|node| node.applied.get(position) == Some(data))
                {
                    self.liveness.write_done = true;
                }
            }
        }
        let leader = self.leader_position();
        self.liveness.leader_seen |= leader.is_some();
        if !self.liveness.write_done {
            let stale = match &self.liveness.probe {
                None => true,
                Some((node, term, _, _, proposed_us)) => {
                    let still_leading = self.nodes[*node].is_leader()
                        && self.nodes[*node]
                            .raft
                            .as_ref()
                            .is_some_and(|raft| raft.term() == *term);
                    !still_leading || self.now_us > proposed_us + 5 * election_ticks_max * TICK_US
                }
            };
            if stale {
                if let Some(leader) = leader {
                    self.liveness.probes += 1;
                    let data = Bytes::from(format!("live{}", self.liveness.probes));
                    let Some(raft) = self.nodes[leader].raft.as_mut() else {
                        return Ok(());
                    };
                    let term = raft.term();
                    if let Ok(index) = raft.propose(data.clone()) {
                        self.liveness.probe = Some((leader, term, index, data, self.now_us));
                    }
                    self.run_node(leader)?;
                }
            }
            return Ok(());
        }
        let read_state = self.liveness.read.and_then(|(read_id, requested_us)| {
            self.history
                .reads
                .get(&read_id)
                .map(|record| (record, requested_us))
        });
        match read_state {
            Some((record, _)) if record.served_at.is_some() => {
                self.liveness.done = true;
                Ok(())
            }
            Some((record, requested_us))
                if !record.failed
                    && self.now_us <= requested_us + 5 * election_ticks_max * TICK_US =>
            {
                Ok(())
            }
            _ => {
                let Some(leader) = leader else { return Ok(()) };
                self.read_sequence += 1;
                let read_id = self.read_sequence;
                let required_index = self.applied_max;
                let id = self.node_id(leader);
                let Some(raft) = self.nodes[leader].raft.as_mut() else {
                    return Ok(());
                };
                let accepted = raft.read_index(read_id).is_ok();
                self.history
                    .read_requested(self.step, id, read_id, required_index, accepted);
                if accepted {
                    self.liveness.read = Some((read_id, self.now_us));
                }
                self.run_node(leader)
            }
        }
    }
}

/// A write's data, cut short for the trace.
fn short(data: &Bytes) -> String {
    let text = String::from_utf8_lossy(data);
    text.chars().take(12).collect()
}
