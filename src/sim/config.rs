//! The knobs of one simulated schedule, and how a seed picks them.
//!
//! Everything a schedule does follows from `(seed, SimConfig)`; `mixed(seed)`
//! derives a whole fault mix (3 or 5 nodes, loss, partitions, crashes, slow
//! disks, Raft options, log compaction in half of them) from the seed
//! alone, so a seed printed by a failing test is all that is needed to replay
//! it. Time is simulated microseconds;
//! one Raft tick is `limits::TICK_MS` of it.

use crate::limits::TICK_MS;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

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
    /// After a node's turn, sync at once with this probability; otherwise a
    /// group commit is scheduled within `sync_delay_us_max`.
    pub sync_now_probability: f64,
    pub sync_delay_us_max: u64,
    /// A crash may keep a prefix of the unsynced writes (a write-ahead log's
    /// pages can reach the platter before the fsync), not only the synced part.
    pub crash_keeps_unsynced_prefix: bool,
    /// A leader's AppendEntries leave before its own log write is synced
    /// (thesis §10.2.1; the leader counts itself only after `persisted`).
    pub leader_appends_before_sync: bool,
}

/// Raft options handed to every node (see `raft::Config`).
#[derive(Clone, Debug)]
pub struct RaftKnobs {
    pub election_timeout_ticks: (u64, u64),
    pub heartbeat_ticks: u64,
    pub inflight_appends_max: usize,
    pub append_bytes_max: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
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
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub node_count: usize,
    /// Steps (events) in the fault phase; then the liveness phase starts.
    pub fault_steps: u64,
    /// After the faults stop, a leader must exist and a fresh proposal must be
    /// applied on every node within this many ticks.
    pub liveness_ticks_max: u64,
    /// ... and the fresh proposal within that plus this many ticks per entry
    /// of the longest log (the backlog a slow network must ship first).
    pub catch_up_ticks_per_entry: u64,
    /// Each node's tick period is `TICK_US` ± up to this many per mille.
    pub tick_skew_per_mille: u64,
    /// Mean gap between client operations, microseconds.
    pub client_gap_us_mean: u64,
    pub read_probability: f64,
    /// Mean gap between faults, microseconds; 0 disables faults.
    pub fault_gap_us_mean: u64,
    pub faults: FaultWeights,
    /// A crashed node stays down for a time drawn from this range.
    pub downtime_us: (u64, u64),
    pub net: NetConfig,
    pub disk: DiskConfig,
    pub raft: RaftKnobs,
    /// Each node takes a snapshot and compacts its log once it has applied
    /// this many entries (plus a random jitter of up to as many again) past
    /// its last snapshot, at a random applied index; 0 never compacts.
    pub compact_every_entries: u64,
    /// Bulk added to every serialised snapshot, so transfers span several
    /// `SNAPSHOT_CHUNK_BYTES_MAX` chunks (the entries alone never do).
    pub snapshot_padding_bytes: u64,
    /// Write every step to stderr.
    pub verbose: bool,
}

impl SimConfig {
    /// A fault-free cluster with a fast, reliable network: for benchmarks and
    /// for tests that need steady progress.
    pub fn quiet(node_count: usize) -> SimConfig {
        SimConfig {
            node_count,
            fault_steps: 0,
            liveness_ticks_max: 300,
            catch_up_ticks_per_entry: 3,
            tick_skew_per_mille: 0,
            client_gap_us_mean: 0,
            read_probability: 0.0,
            fault_gap_us_mean: 0,
            faults: FaultWeights::default(),
            downtime_us: (TICK_US, TICK_US),
            net: NetConfig {
                delay_us: (100, 500),
                loss_probability: 0.0,
                duplicate_probability: 0.0,
                long_delay_probability: 0.0,
                long_delay_us_max: 0,
            },
            disk: DiskConfig {
                sync_now_probability: 1.0,
                sync_delay_us_max: 0,
                crash_keeps_unsynced_prefix: false,
                leader_appends_before_sync: false,
            },
            raft: RaftKnobs {
                election_timeout_ticks: (10, 20),
                heartbeat_ticks: 2,
                inflight_appends_max: crate::limits::INFLIGHT_APPENDS_MAX,
                append_bytes_max: crate::limits::APPEND_BYTES_MAX,
                pre_vote: true,
                check_quorum: true,
            },
            compact_every_entries: 0,
            snapshot_padding_bytes: 0,
            verbose: false,
        }
    }

    /// The mixed-fault schedule for `seed`: 3 nodes for even seeds, 5 for odd,
    /// and every other knob drawn from a generator seeded with `seed` (apart
    /// from the one that runs the schedule).
    pub fn mixed(seed: u64, fault_steps: u64) -> SimConfig {
        let mut rng = Pcg64::seed_from_u64(seed ^ 0x5eed_c0f1_6000_0000);
        let node_count = if seed.is_multiple_of(2) { 3 } else { 5 };
        let mut config = SimConfig::quiet(node_count);
        config.fault_steps = fault_steps;
        config.liveness_ticks_max = 400;
        config.tick_skew_per_mille = rng.gen_range(0..=80);
        config.client_gap_us_mean = [TICK_US / 4, TICK_US, 3 * TICK_US][rng.gen_range(0..3)];
        config.read_probability = [0.1, 0.3, 0.5][rng.gen_range(0..3)];
        config.fault_gap_us_mean = [5 * TICK_US, 15 * TICK_US, 40 * TICK_US][rng.gen_range(0..3)];
        config.downtime_us = (TICK_US, rng.gen_range(10..80) * TICK_US);
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
        config.disk = DiskConfig {
            sync_now_probability: [1.0, 0.7, 0.2][rng.gen_range(0..3)],
            sync_delay_us_max: [TICK_US / 10, TICK_US, 3 * TICK_US][rng.gen_range(0..3)],
            crash_keeps_unsynced_prefix: rng.gen_bool(0.5),
            leader_appends_before_sync: rng.gen_bool(0.5),
        };
        config.raft = RaftKnobs {
            election_timeout_ticks: (10, 20),
            heartbeat_ticks: rng.gen_range(1..=3),
            inflight_appends_max: [1, 4, 16][rng.gen_range(0..3)],
            append_bytes_max: [64, 512, 1 << 20][rng.gen_range(0..3)],
            pre_vote: rng.gen_bool(0.7),
            check_quorum: rng.gen_bool(0.7),
        };
        // Drawn last, so the knobs above stay what they were for each seed.
        if rng.gen_bool(0.5) {
            config.compact_every_entries = [5, 20, 80][rng.gen_range(0..3)];
            if rng.gen_bool(0.2) {
                let chunk = crate::limits::SNAPSHOT_CHUNK_BYTES_MAX;
                config.snapshot_padding_bytes = rng.gen_range(chunk / 2..5 * chunk);
                // Bulky transfers: compact less often.
                config.compact_every_entries *= 10;
            }
        }
        config
    }
}
