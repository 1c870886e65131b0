//! The simulated network: delay, loss, duplication, reordering, partitions.
//!
//! `Net` decides the fate of each envelope when it is sent (dropped, or one or
//! two delivery times) and again when it arrives (a link cut while the message
//! was in flight drops it). Links are directed, so a partition can be
//! asymmetric: `a` hears `b` while `b` does not hear `a`. Reordering comes from
//! random delays plus occasional long holds. All randomness comes from the
//! caller's RNG, so the network is as deterministic as the seed.
//! Left out: bandwidth, message corruption (bincode framing and CRCs are
//! tested elsewhere), and delivery to a node that is down (the simulator drops
//! those at arrival).

use super::config::NetConfig;
use crate::raft::NodeId;
use rand::Rng;
use std::collections::BTreeSet;

/// Counters for the schedule's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub dropped_by_partition: u64,
}

pub struct Net {
    pub config: NetConfig,
    /// Directed links `(from, to)` that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub stats: NetStats,
}

impl Net {
    pub fn new(config: NetConfig) -> Net {
        Net {
            config,
            blocked: BTreeSet::new(),
            stats: NetStats::default(),
        }
    }

    /// Delays (microseconds from now) at which copies of a message sent now
    /// from `from` to `to` arrive: none if lost, two if duplicated.
    pub fn route(&mut self, rng: &mut impl Rng, from: NodeId, to: NodeId) -> Vec<u64> {
        self.stats.sent += 1;
        if self.is_blocked(from, to) {
            self.stats.dropped_by_partition += 1;
            return Vec::new();
        }
        if self.config.loss_probability > 0.0 && rng.gen_bool(self.config.loss_probability) {
            self.stats.lost += 1;
            return Vec::new();
        }
        let mut delays = vec![self.delay_us(rng)];
        if self.config.duplicate_probability > 0.0
            && rng.gen_bool(self.config.duplicate_probability)
        {
            self.stats.duplicated += 1;
            delays.push(self.delay_us(rng));
        }
        delays
    }

    fn delay_us(&self, rng: &mut impl Rng) -> u64 {
        let (low, high) = self.config.delay_us;
        let mut delay = rng.gen_range(low..=high.max(low));
        if self.config.long_delay_probability > 0.0
            && rng.gen_bool(self.config.long_delay_probability)
        {
            delay += rng.gen_range(0..=self.config.long_delay_us_max);
        }
        delay
    }

    /// Whether a message arriving now on `from → to` gets through the partitions.
    pub fn admits(&mut self, from: NodeId, to: NodeId) -> bool {
        if self.is_blocked(from, to) {
            self.stats.dropped_by_partition += 1;
            return false;
        }
        true
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Cut every link between `side` and the rest, both ways.
    pub fn partition_symmetric(&mut self, side: &[NodeId], members: &[NodeId]) {
        for &inside in side {
            for &outside in members.iter().filter(|member| !side.contains(member)) {
                self.blocked.insert((inside, outside));
                self.blocked.insert((outside, inside));
            }
        }
    }

    /// Cut the directed link `from → to` only.
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        if from != to {
            self.blocked.insert((from, to));
        }
    }

    pub fn heal_all(&mut self) {
        self.blocked.clear();
    }

    pub fn blocked_links(&self) -> usize {
        self.blocked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64;

    fn reliable() -> NetConfig {
        NetConfig {
            delay_us: (10, 20),
            loss_probability: 0.0,
            duplicate_probability: 0.0,
            long_delay_probability: 0.0,
            long_delay_us_max: 0,
        }
    }

    #[test]
    fn partitions_block_directed_links_until_healed() {
        let mut rng = Pcg64::seed_from_u64(1);
        let mut net = Net::new(reliable());
        net.partition_symmetric(&[1], &[1, 2, 3]);
        assert!(net.route(&mut rng, 1, 2).is_empty());
        assert!(net.route(&mut rng, 3, 1).is_empty());
        assert_eq!(net.route(&mut rng, 2, 3).len(), 1);
        net.heal_all();
        net.cut_one_way(2, 3);
        assert!(net.route(&mut rng, 2, 3).is_empty());
        assert_eq!(net.route(&mut rng, 3, 2).len(), 1);
        assert!(!net.admits(2, 3));
        net.heal_all();
        assert!(net.admits(2, 3));
    }

    #[test]
    fn loss_and_duplication_follow_their_probabilities() {
        let mut rng = Pcg64::seed_from_u64(2);
        let mut config = reliable();
        config.loss_probability = 1.0;
        let mut net = Net::new(config.clone());
        assert!(net.route(&mut rng, 1, 2).is_empty());
        config.loss_probability = 0.0;
        config.duplicate_probability = 1.0;
        let mut net = Net::new(config);
        let delays = net.route(&mut rng, 1, 2);
        assert_eq!(delays.len(), 2);
        assert!(delays.iter().all(|delay| (10..=20).contains(delay)));
    }
}
