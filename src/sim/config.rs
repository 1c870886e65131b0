//! The knobs of one simulated schedule, and how a seed picks them.
//!
//! Everything a schedule does follows from `(seed, SimConfig)`; `mixed(seed)`
//! derives a whole fault mix (3 or 5 nodes, loss, partitions, crashes and
//! power losses, pauses, slow and failing disks, wall-clock jumps, Raft
//! options, snapshots in half of them, membership changes with one or two
//! spare nodes in half of them, client load) from the seed alone, so
//! a seed printed by a failing test is all that is needed to replay it.
//! Time is simulated microseconds; one Raft tick is `limits::TICK_MS` of it.

use crate::limits::TICK_MS;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

/// Seeds the draw of a schedule's watch share (see `mixed`).
const WATCH_MIX_SALT: u64 = 0x3a7c_4000_0000_0001;

/// Simulated microseconds in one Raft tick.
pub const TICK_US: u64 = TICK_MS * 1_000;

/// Network behaviour. Probabilities are per message.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way delay drawn uniformly from `[min, max]` microseconds.
    pub delay_us: (u64, u64),
    pub loss_probability: f64,
    pub duplicate_probability: f64,
    /// A message is held back by up to `long_delay_us_max` (reordering).
    pub long_delay_probability: f64,
    pub long_delay_us_max: u64,
}

/// Simulated disk behaviour.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// An fsync takes a time drawn from `[min, max]` microseconds...
    pub sync_us: (u64, u64),
    /// ... or, with this probability, up to `slow_sync_us_max` (a slow disk).
    pub slow_sync_probability: f64,
    pub slow_sync_us_max: u64,
    /// An fsync fails with this probability: the node must stop, and it
    /// restarts after its downtime.
    pub sync_failure_probability: f64,
    /// Taking a snapshot on the helper takes `[min, max]` microseconds.
    pub snapshot_us: (u64, u64),
    /// A crash is a power loss with this probability, else a process kill.
    pub power_loss_probability: f64,
    /// A power loss may keep a prefix of the unsynced writes.
    pub crash_keeps_unsynced_prefix: bool,
}

/// Raft options handed to every node (see `raft::Config`).
#[derive(Clone, Debug)]
pub struct RaftKnobs {
    pub election_timeout_ticks: (u64, u64),
    pub heartbeat_ticks: u64,
    pub inflight_appends_max: usize,
    pub append_bytes_max: usize,
    pub snapshot_chunk_bytes_max: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
}

/// The simulated clients.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub clients: usize,
    /// Each client keeps up to this many commands outstanding on its
    /// connection (pipelining).
    pub pipeline_max: usize,
    /// Files are `k0`..`k{keys-1}`.
    pub keys: usize,
    /// Mean gap between a client's turns, microseconds.
    pub gap_us_mean: u64,
    pub read_probability: f64,
    pub cas_probability: f64,
    pub delete_probability: f64,
    /// A client that waits this long for an answer closes its connection
    /// (its outstanding commands become indeterminate) and reconnects.
    pub timeout_us: u64,
    /// Share of commands that are `watch` (taken from the top of the roll,
    /// so the other shares keep their meaning).
    pub watch_probability: f64,
    /// `timeout_us` for a watch, which waits for a change.
    pub watch_timeout_us: u64,
    /// Largest value written (values are random text up to this length).
    pub value_bytes_max: usize,
}

/// Relative weights of the faults drawn during the fault phase.
#[derive(Clone, Debug, Default)]
pub struct FaultWeights {
    pub crash: u32,
    pub crash_leader: u32,
    /// Stop a node (often the leader) for a while, as SIGSTOP or a GC pause.
    pub pause: u32,
    pub partition_symmetric: u32,
    pub isolate_leader: u32,
    pub partition_one_way: u32,
    pub heal: u32,
    pub network_weather: u32,
    pub transfer_leadership: u32,
    /// Move a node's wall clock by up to a year, either way.
    pub clock_jump: u32,
    /// A membership change through the leader, as an operator makes it:
    /// add a waiting node as a learner, promote a learner, remove a member
    /// (the leader included), or give a removed node a new disk to add it
    /// back (`SimConfig::spare_nodes`).
    pub membership: u32,
}

impl FaultWeights {
    pub fn total(&self) -> u32 {
        self.crash
            + self.crash_leader
            + self.pause
            + self.partition_symmetric
            + self.isolate_leader
            + self.partition_one_way
            + self.heal
            + self.network_weather
            + self.transfer_leadership
            + self.clock_jump
            + self.membership
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The bootstrap voters, ids `1..=node_count`.
    pub node_count: usize,
    /// Nodes `node_count + 1..` that start with empty disks, not members:
    /// membership changes add them (their cluster.toml lists the bootstrap
    /// voters and themselves, as an operator's would).
    pub spare_nodes: usize,
    /// Steps (events) in the fault phase; then the liveness phase starts.
    pub fault_steps: u64,
    /// After the faults stop, a leader must exist, a fresh write must be
    /// applied on every node and every client answered within this many
    /// ticks...
    pub liveness_ticks_max: u64,
    /// ... plus this many ticks per entry of the longest log (the backlog
    /// a slow network must ship first), or more where the Raft knobs make
    /// catching up slower than that (`catch_up_us_per_entry`).
    pub catch_up_ticks_per_entry: u64,
    /// Each node's tick period is `TICK_US` ± up to this many per mille.
    pub tick_skew_per_mille: u64,
    /// Mean gap between faults, microseconds; 0 disables faults.
    pub fault_gap_us_mean: u64,
    pub faults: FaultWeights,
    /// A crashed node stays down for a time drawn from this range.
    pub downtime_us: (u64, u64),
    /// A paused node stays paused for a number of ticks drawn from this.
    pub pause_ticks: (u64, u64),
    /// After a node installs a snapshot, crash it at once with this
    /// probability (the window between the snapshot and its log-start
    /// record becoming durable).
    pub crash_after_install_probability: f64,
    pub net: NetConfig,
    pub disk: DiskConfig,
    pub raft: RaftKnobs,
    pub clients: ClientConfig,
    /// Replicas snapshot once this many entries were applied since the
    /// last one (`u64::MAX`: never).
    pub snapshot_entries: u64,
    /// What followers do with client commands.
    pub follower_requests: crate::config::FollowerRequests,
    /// Write every step to stderr.
    pub verbose: bool,
}

impl SimConfig {
    /// Simulated microseconds the liveness phase allows per entry of
    /// backlog: `catch_up_ticks_per_entry`, or half again the mean time a
    /// follower catching up takes per entry when the Raft knobs make that
    /// slower. It gets at most `inflight_appends_max` appends per round
    /// trip (two network delays and its fsync, slow ones included; the
    /// liveness phase has no loss, duplication or long delay), each of at
    /// most `append_bytes_max` bytes but at least one entry. With a window
    /// of one append, batches of one entry, delays and fsyncs of up to 2
    /// ticks, that is 3.3 ticks per entry on average, which no leader
    /// honouring the knobs can beat (soak seeds 8200918891022321866 and
    /// 5832867549585122990 took 3.37 and 3.55). A real node always runs 16
    /// appends of up to 1 MiB (`server.rs`): the knobs are the simulator's.
    pub fn catch_up_us_per_entry(&self) -> u64 {
        let (delay_low, delay_high) = self.net.delay_us;
        let (sync_low, sync_high) = self.disk.sync_us;
        let slow = self.disk.slow_sync_probability.clamp(0.0, 1.0);
        let sync_mean_us = (1.0 - slow) * (sync_low + sync_high.max(sync_low)) as f64 / 2.0
            + slow * (sync_high + self.disk.slow_sync_us_max.max(sync_high)) as f64 / 2.0;
        let round_trip_us = (delay_low + delay_high.max(delay_low)) as f64 + sync_mean_us;
        // An entry is at most one batch of every command the clients can
        // have outstanding (doubled for a forwarded batch whose client gave
        // up and sent more), each with its name, header and value.
        let commands = 2 * self.clients.clients * self.clients.pipeline_max;
        let entry_bytes_max = 64 + commands * (64 + self.clients.value_bytes_max);
        let entries_per_append = (self.raft.append_bytes_max / entry_bytes_max).max(1);
        let entries_per_round_trip =
            (self.raft.inflight_appends_max.max(1) * entries_per_append) as f64;
        let knobs_us = (1.5 * round_trip_us / entries_per_round_trip).ceil() as u64;
        (self.catch_up_ticks_per_entry * TICK_US).max(knobs_us)
    }

    /// A fault-free cluster with a fast, reliable network and disks: for
    /// benchmarks and for tests that need steady progress.
    pub fn quiet(node_count: usize) -> SimConfig {
        SimConfig {
            node_count,
            spare_nodes: 0,
            fault_steps: 0,
            liveness_ticks_max: 300,
            catch_up_ticks_per_entry: 3,
            tick_skew_per_mille: 0,
            fault_gap_us_mean: 0,
            faults: FaultWeights::default(),
            downtime_us: (TICK_US, TICK_US),
            pause_ticks: (2, 50),
            crash_after_install_probability: 0.0,
            net: NetConfig {
                delay_us: (100, 500),
                loss_probability: 0.0,
                duplicate_probability: 0.0,
                long_delay_probability: 0.0,
                long_delay_us_max: 0,
            },
            disk: DiskConfig {
                sync_us: (50, 200),
                slow_sync_probability: 0.0,
                slow_sync_us_max: 0,
                sync_failure_probability: 0.0,
                snapshot_us: (100, 1_000),
                power_loss_probability: 0.0,
                crash_keeps_unsynced_prefix: false,
            },
            raft: RaftKnobs {
                election_timeout_ticks: (10, 20),
                heartbeat_ticks: 2,
                inflight_appends_max: crate::limits::INFLIGHT_APPENDS_MAX,
                append_bytes_max: crate::limits::APPEND_BYTES_MAX,
                snapshot_chunk_bytes_max: crate::limits::SNAPSHOT_CHUNK_BYTES_MAX,
                pre_vote: true,
                check_quorum: true,
            },
            clients: ClientConfig {
                clients: 3,
                pipeline_max: 2,
                keys: 4,
                gap_us_mean: TICK_US,
                read_probability: 0.3,
                cas_probability: 0.2,
                delete_probability: 0.05,
                timeout_us: 700 * TICK_US,
                watch_probability: 0.1,
                watch_timeout_us: 3_000 * TICK_US,
                value_bytes_max: 16,
            },
            snapshot_entries: u64::MAX,
            follower_requests: crate::config::FollowerRequests::Forward,
            verbose: false,
        }
    }

    /// The mixed-fault schedule for `seed`: 3 nodes for even seeds, 5 for
    /// odd, and every other knob drawn from a generator seeded with `seed`
    /// (apart from the one that runs the schedule).
    pub fn mixed(seed: u64, fault_steps: u64) -> SimConfig {
        let mut rng = Pcg64::seed_from_u64(seed ^ 0x5eed_c0f1_6000_0000);
        let node_count = if seed.is_multiple_of(2) { 3 } else { 5 };
        let mut config = SimConfig::quiet(node_count);
        config.fault_steps = fault_steps;
        config.liveness_ticks_max = 600;
        config.tick_skew_per_mille = rng.gen_range(0..=80);
        config.fault_gap_us_mean = [5 * TICK_US, 15 * TICK_US, 40 * TICK_US][rng.gen_range(0..3)];
        config.downtime_us = (TICK_US, rng.gen_range(10..80) * TICK_US);
        config.pause_ticks = (2, [20, 60, 200][rng.gen_range(0..3)]);
        config.faults = FaultWeights {
            crash: rng.gen_range(0..4),
            crash_leader: rng.gen_range(0..4),
            pause: rng.gen_range(0..4),
            partition_symmetric: rng.gen_range(0..4),
            isolate_leader: rng.gen_range(0..4),
            partition_one_way: rng.gen_range(0..3),
            heal: rng.gen_range(1..5),
            network_weather: rng.gen_range(0..3),
            transfer_leadership: rng.gen_range(0..2),
            clock_jump: rng.gen_range(0..2),
            membership: 0,
        };
        if config.faults.total() == config.faults.heal {
            // At least one fault that breaks something.
            config.faults.crash = 1;
            config.faults.partition_symmetric = 1;
        }
        let delay_max_us = [TICK_US / 10, TICK_US / 2, 2 * TICK_US][rng.gen_range(0..3)];
        config.net = NetConfig {
            delay_us: (delay_max_us / 20, delay_max_us),
            loss_probability: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
            duplicate_probability: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
            long_delay_probability: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
            long_delay_us_max: rng.gen_range(2..30) * TICK_US,
        };
        let sync_max_us = [TICK_US / 20, TICK_US / 2, 2 * TICK_US][rng.gen_range(0..3)];
        config.disk = DiskConfig {
            sync_us: (sync_max_us / 10, sync_max_us),
            slow_sync_probability: [0.0, 0.01, 0.05][rng.gen_range(0..3)],
            slow_sync_us_max: rng.gen_range(5..60) * TICK_US,
            sync_failure_probability: [0.0, 0.0, 0.001][rng.gen_range(0..3)],
            snapshot_us: (TICK_US / 10, rng.gen_range(1..20) * TICK_US),
            power_loss_probability: [0.0, 0.5, 1.0][rng.gen_range(0..3)],
            crash_keeps_unsynced_prefix: rng.gen_bool(0.5),
        };
        config.raft = RaftKnobs {
            election_timeout_ticks: (10, 20),
            heartbeat_ticks: rng.gen_range(1..=3),
            inflight_appends_max: [1, 4, 16][rng.gen_range(0..3)],
            append_bytes_max: [64, 512, 1 << 20][rng.gen_range(0..3)],
            snapshot_chunk_bytes_max: [64, 512, 1 << 20][rng.gen_range(0..3)],
            pre_vote: rng.gen_bool(0.7),
            check_quorum: rng.gen_bool(0.7),
        };
        config.clients = ClientConfig {
            clients: rng.gen_range(1..=5),
            pipeline_max: rng.gen_range(1..=4),
            keys: rng.gen_range(1..=6),
            gap_us_mean: [TICK_US / 4, TICK_US, 3 * TICK_US][rng.gen_range(0..3)],
            read_probability: [0.1, 0.3, 0.5][rng.gen_range(0..3)],
            cas_probability: [0.0, 0.2, 0.4][rng.gen_range(0..3)],
            delete_probability: [0.0, 0.05, 0.15][rng.gen_range(0..3)],
            timeout_us: 700 * TICK_US,
            // Drawn apart, so the rest of a seed's mix is what it was.
            watch_probability: [0.0, 0.05, 0.1, 0.2]
                [Pcg64::seed_from_u64(seed ^ WATCH_MIX_SALT).gen_range(0..4)],
            watch_timeout_us: 3_000 * TICK_US,
            value_bytes_max: [8, 64, 600][rng.gen_range(0..3)],
        };
        if rng.gen_bool(0.5) {
            config.snapshot_entries = [5, 20, 80][rng.gen_range(0..3)];
            config.crash_after_install_probability = [0.0, 0.3][rng.gen_range(0..2)];
        }
        // Drawn last, so the knobs above stay what they were for each seed.
        if rng.gen_bool(0.2) {
            config.follower_requests = crate::config::FollowerRequests::Redirect;
        }
        if rng.gen_bool(0.5) {
            config.spare_nodes = rng.gen_range(1..=2);
            config.faults.membership = rng.gen_range(1..=4);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_budget_covers_a_stop_and_wait_window() {
        // Soak seed 8200918891022321866's knobs: one append of one entry
        // per round trip of 3.3 ticks on average.
        let config = SimConfig::mixed(8_200_918_891_022_321_866, 20_000);
        assert_eq!(config.raft.inflight_appends_max, 1);
        let per_entry = config.catch_up_us_per_entry();
        assert!(per_entry >= 5 * TICK_US, "{per_entry} us");
        // The same network with a real node's window and batches: the
        // fixed budget binds.
        let mut real = config.clone();
        real.raft.inflight_appends_max = crate::limits::INFLIGHT_APPENDS_MAX;
        real.raft.append_bytes_max = crate::limits::APPEND_BYTES_MAX;
        assert_eq!(real.catch_up_us_per_entry(), 3 * TICK_US);
        // A window of one append holding many entries: the fixed budget too.
        let mut one_big = config;
        one_big.raft.append_bytes_max = crate::limits::APPEND_BYTES_MAX;
        assert_eq!(one_big.catch_up_us_per_entry(), 3 * TICK_US);
        assert_eq!(SimConfig::quiet(3).catch_up_us_per_entry(), 3 * TICK_US);
    }
}
