//! Deterministic simulator: N full replicas (`replica::Replica`, the code
//! the reactor runs), a seeded network, simulated disks and clients, one
//! logical clock.
//!
//! One `Pcg64` seeded from the schedule's seed drives everything: message
//! delays and losses, fsync and snapshot durations, which client does what,
//! which fault strikes, each node's election RNG seed. Time is simulated
//! microseconds; events (a node's tick, a message arriving, an fsync or a
//! snapshot finishing, a client's turn, a fault, a restart) wait in one
//! queue ordered by `(time, sequence)`. Each step pops one event, feeds it
//! to the replica it concerns and runs that replica's `end_turn` against
//! its `SimDisk`; the turn's outputs go out (messages to the network,
//! answers to the clients, fsyncs and snapshot jobs to the queue). Then the
//! invariants (`invariants.rs`) are checked on every node, so a violation is
//! reported at the step that caused it, with the seed.
//!
//! Checked after every step: Election Safety, Log Matching (on what each
//! node wrote), Leader Completeness (on each new leader and each new
//! commit), State Machine Safety (the same entry committed at each index
//! everywhere), the commit rule against the configuration in force (each
//! entry a leader commits is durable on a majority of its voters), commit
//! indexes never going back, every node's Raft state
//! matching what it asked its disk to persist, every promise (vote, append
//! acknowledgement, installed snapshot) leaving only once durable, every
//! two replicas holding the same file map at the same applied index, and
//! every answer belonging to a command sent and coming once. After every
//! schedule: the clients' history is linearizable (`lincheck`), which also
//! means every acknowledged write is seen by the final reads.
//!
//! A schedule has two phases. The fault phase runs `fault_steps` steps of
//! client traffic and faults (crashes and power losses, pauses, partitions,
//! loss, duplication, reordering, slow and failing fsyncs, wall-clock
//! jumps, leadership transfers, membership changes; `faults.rs`). Then
//! the liveness phase heals the network, restarts every node (a removed
//! one with a new disk) and requires, within a bound: a leader, every
//! client command answered (while watches wait, every key is written every
//! `WAKE_INTERVAL_TICKS`: a watch must then be answered, none may be
//! missed), a fresh write acknowledged and applied on every member of the
//! leader's configuration, and final reads of every key answered.
//!
//! Membership (`SimConfig::spare_nodes`): spare nodes start with empty
//! disks, not members, as a node an operator starts before adding it. A
//! node that learns it was removed stops for good, as the real one does
//! (exit code 4); so does one whose messages a member refuses because the
//! committed configuration names its data dir as removed (the peer
//! handshake's refusal). A removed node may later get a new disk (a new
//! incarnation) and be added again: a replaced host.

pub mod clients;
pub mod config;
pub mod disk;
mod faults;
pub mod invariants;
pub mod net;
pub mod script;

pub use config::{
    ClientConfig, DiskConfig, FaultWeights, NetConfig, RaftKnobs, SimConfig, TICK_US,
};
pub use net::NetStats;

use crate::fsm::Command;
use crate::lincheck::{self, Verdict};
use crate::protocol::Request;
use crate::raft::{Envelope, Index, Message, NodeId, Role};
use crate::replica::{ClientRef, Now, Replica, ReplicaConfig, SnapshotDone};
use bytes::Bytes;
use clients::{Clients, Intent};
use disk::{DiskRequest, SimDisk};
use invariants::Observations;
use net::Net;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// What a finished schedule did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub seed: u64,
    pub node_count: usize,
    pub steps: u64,
    pub simulated_ticks: u64,
    pub net: NetStats,
    pub faults: u64,
    pub crashes: u64,
    pub power_losses: u64,
    pub sync_failures: u64,
    pub partitions: u64,
    /// Distinct `(term, leader)` pairs observed.
    pub leaders_elected: u64,
    pub max_term: u64,
    pub committed_entries: u64,
    /// Client commands sent, answered, redirected, indeterminate.
    pub commands: u64,
    pub answered: u64,
    pub redirects: u64,
    pub indeterminate: u64,
    /// Watches sent; watches woken by a change (or a snapshot install) on
    /// some node, over every node and lifetime.
    pub watches: u64,
    pub watches_woken: u64,
    /// Watches answered with a state by a node that was a follower then.
    pub watches_on_followers: u64,
    /// Snapshots taken and installed, over every node and lifetime.
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// The linearizability check ran out of budget (not a failure).
    pub lincheck_unknown: bool,
    /// Ticks from the end of the fault phase until the liveness checks passed.
    pub liveness_ticks: u64,
    /// Membership changes proposed (add, promote, remove), nodes that
    /// stopped because they were removed, and removed nodes given a new
    /// disk to join again.
    pub membership_changes: u64,
    pub removed_nodes: u64,
    pub replaced_disks: u64,
    /// Hash of every event and every node's visible state after each step.
    pub trace_hash: u64,
}

/// A violated property (or a panic, or lost liveness), with where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub time_us: u64,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at step {} (tick {}): {} [replay: RAFTFS_SEED={} cargo test --release --test sim]",
            self.seed,
            self.step,
            self.time_us / TICK_US,
            self.message,
            self.seed
        )
    }
}

impl std::error::Error for Failure {}

#[derive(Clone, Debug)]
enum Event {
    Tick {
        node: usize,
        generation: u64,
    },
    /// `receiver_generation`: the receiver's lifetime when it was sent.
    Deliver {
        envelope: Envelope,
        receiver_generation: u64,
    },
    SyncDone {
        node: usize,
        generation: u64,
        id: u64,
    },
    SnapshotDone {
        node: usize,
        generation: u64,
        job: u64,
    },
    Restart {
        node: usize,
        generation: u64,
    },
    Client {
        client: usize,
    },
    Fault,
}

/// One simulated machine: the replica (None while down), its disk, clocks.
struct SimNode {
    id: NodeId,
    replica: Option<Replica>,
    disk: SimDisk,
    /// The data-dir incarnation of its current disk.
    incarnation: u64,
    /// Removed from the cluster and stopped for good (until a new disk).
    retired: bool,
    /// Bumped by each crash; events of an older lifetime are ignored.
    generation: u64,
    tick_period_us: u64,
    /// A paused node (a stopped process, a long GC) handles nothing before
    /// this time; what arrives waits.
    paused_until_us: u64,
    /// This node's wall clock minus simulated time (skew and jumps).
    wall_offset_ms: i64,
    /// Observation state, reset at each restart.
    commit_index_seen: Index,
    /// Entries checked by State Machine Safety so far.
    commit_observed: Index,
    applied_digest_seen: Index,
    /// An fsync failed: the node stops at its next turn, as it must.
    sync_failed: bool,
    /// Snapshots taken and installed in earlier lifetimes.
    snapshots_before: (u64, u64),
    /// Watches woken in earlier lifetimes.
    watches_woken_before: u64,
}

impl SimNode {
    fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    fn is_leader(&self) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|replica| replica.raft().role() == Role::Leader)
    }
}

/// The liveness phase's progress.
#[derive(Debug, Default)]
struct Liveness {
    started_us: u64,
    leader_seen: bool,
    /// The probe write was sent and is not answered yet.
    probe_sent: bool,
    /// The leader's commit index when the probe write was acknowledged.
    probe_acknowledged: Option<Index>,
    final_reads_sent: bool,
    final_reads_answered: usize,
    /// When the next round of wake writes may go (simulated µs).
    next_wake_us: u64,
    /// Wake writes sent so far (their contents are unique).
    wake_writes: u64,
    done: bool,
    /// Probe commands waiting for an answer, by sequence number, with the
    /// node they were sent to.
    pending: BTreeMap<u64, (NodeId, ProbeCommand)>,
    next_seq: u64,
    /// Probe connections are numbered apart from the clients'.
    conn_id: u64,
}

/// A command the simulator itself sends in the liveness phase.
#[derive(Clone, Copy, Debug)]
enum ProbeCommand {
    Write {
        leader: usize,
    },
    FinalRead(lincheck::OpId),
    /// A write of a client key that wakes the watches on it.
    WakeWrite(lincheck::OpId),
}

/// Ticks between two rounds of wake writes in the liveness phase.
const WAKE_INTERVAL_TICKS: u64 = 50;

pub struct Sim {
    seed: u64,
    config: SimConfig,
    rng: Pcg64,
    now_us: u64,
    step: u64,
    queue: BTreeMap<(u64, u64), Event>,
    event_sequence: u64,
    nodes: Vec<SimNode>,
    /// Every node's id (the bootstrap voters, then the spares).
    members: Vec<NodeId>,
    /// The bootstrap voters (cluster.toml's members).
    bootstrap: Vec<NodeId>,
    /// Every node has started once (cluster.toml lists them all since).
    started: bool,
    net: Net,
    clients: Clients,
    observations: Observations,
    digests: HashMap<Index, (u64, NodeId)>,
    fault_phase: bool,
    liveness: Liveness,
    faults: u64,
    crashes: u64,
    power_losses: u64,
    sync_failures: u64,
    partitions: u64,
    membership_changes: u64,
    removed_nodes: u64,
    replaced_disks: u64,
    trace_hash: u64,
}

/// Run one schedule. Panics inside the replicas are caught and reported as
/// failures with the seed and step.
pub fn run(seed: u64, config: &SimConfig) -> Result<Stats, Failure> {
    let mut sim = Sim::new(seed, config.clone());
    match std::panic::catch_unwind(AssertUnwindSafe(|| sim.run_schedule())) {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(sim.failure(format!("panic: {text}")))
        }
    }
}

/// Steps the liveness phase may take before it is called stuck, whatever
/// the simulated time (a replica that floods messages must not hang tests).
pub const LIVENESS_STEPS_MAX: u64 = 300_000;

/// Wall time the linearizability check of one schedule may take.
pub const LINCHECK_BUDGET: Duration = Duration::from_secs(1);

/// Where simulated wall clocks start (2026-01-01, in ms since the epoch).
const WALL_CLOCK_START_MS: u64 = 1_767_225_600_000;

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl Sim {
    /// A cluster of `config.node_count` fresh nodes with their first ticks,
    /// client turns and faults scheduled.
    pub fn new(seed: u64, config: SimConfig) -> Sim {
        let mut rng = Pcg64::seed_from_u64(seed);
        let bootstrap: Vec<NodeId> = (1..=config.node_count as NodeId).collect();
        let members: Vec<NodeId> =
            (1..=(config.node_count + config.spare_nodes) as NodeId).collect();
        let mut sim = Sim {
            seed,
            rng: Pcg64::seed_from_u64(0),
            now_us: 0,
            step: 0,
            queue: BTreeMap::new(),
            event_sequence: 0,
            nodes: Vec::new(),
            members: members.clone(),
            bootstrap,
            started: false,
            net: Net::new(config.net.clone()),
            clients: Clients::new(config.clients.clone()),
            observations: Observations::default(),
            digests: HashMap::new(),
            fault_phase: config.fault_steps > 0,
            liveness: Liveness {
                conn_id: u64::MAX / 2,
                ..Liveness::default()
            },
            faults: 0,
            crashes: 0,
            power_losses: 0,
            sync_failures: 0,
            partitions: 0,
            membership_changes: 0,
            removed_nodes: 0,
            replaced_disks: 0,
            trace_hash: FNV_OFFSET,
            config,
        };
        for &id in &members {
            let skew = sim.config.tick_skew_per_mille;
            let per_mille = 1_000 + rng.gen_range(0..=2 * skew) - skew;
            sim.nodes.push(SimNode {
                id,
                replica: None,
                disk: SimDisk::new(),
                incarnation: incarnation_of(id, 0),
                retired: false,
                generation: 0,
                tick_period_us: TICK_US * per_mille / 1_000,
                paused_until_us: 0,
                wall_offset_ms: rng.gen_range(-5_000..=5_000),
                commit_index_seen: 0,
                commit_observed: 0,
                applied_digest_seen: 0,
                sync_failed: false,
                snapshots_before: (0, 0),
                watches_woken_before: 0,
            });
        }
        sim.rng = rng;
        for index in 0..sim.nodes.len() {
            if let Err(message) = sim.start_node(index) {
                panic!("node {} does not start fresh: {message}", index + 1);
            }
        }
        sim.started = true;
        if sim.fault_phase {
            for client in 0..sim.clients.count() {
                let gap = sim.gap_us(sim.config.clients.gap_us_mean);
                sim.schedule(gap, Event::Client { client });
            }
            if sim.config.fault_gap_us_mean > 0 && sim.config.faults.total() > 0 {
                let gap = sim.gap_us(sim.config.fault_gap_us_mean);
                sim.schedule(gap, Event::Fault);
            }
        }
        sim
    }

    /// Run the fault phase, then the liveness phase, then check the history.
    pub fn run_schedule(&mut self) -> Result<Stats, Failure> {
        while self.step < self.config.fault_steps {
            self.step()?;
        }
        self.begin_liveness()
            .map_err(|message| self.failure(message))?;
        let backlog = self
            .nodes
            .iter()
            .map(|node| node.disk.last_index())
            .max()
            .unwrap_or(0);
        let leader_deadline_us = self.now_us + self.config.liveness_ticks_max * TICK_US;
        let deadline_us = leader_deadline_us + self.config.catch_up_us_per_entry() * backlog;
        let steps_max = self.step + LIVENESS_STEPS_MAX;
        loop {
            self.advance_liveness()
                .map_err(|message| self.failure(message))?;
            if self.liveness.done {
                break;
            }
            let late_leader = !self.liveness.leader_seen && self.now_us > leader_deadline_us;
            let too_many_steps = self.step > steps_max;
            if late_leader || too_many_steps || self.now_us > deadline_us {
                let summary = self.summary();
                return Err(self.failure(format!(
                    "liveness: {} within {} ticks of healing (backlog {backlog} entries, {} client \
                     commands unanswered [{}], probe {:?}, final reads answered {}); {summary}",
                    if late_leader {
                        "no leader"
                    } else if too_many_steps {
                        "still busy after LIVENESS_STEPS_MAX steps"
                    } else {
                        "not every command answered and every node caught up"
                    },
                    (self.now_us - self.liveness.started_us) / TICK_US,
                    self.clients.outstanding(),
                    self.clients.describe_outstanding(),
                    self.liveness.probe_acknowledged,
                    self.liveness.final_reads_answered,
                )));
            }
            self.step()?;
        }
        let lincheck_unknown = match lincheck::check(&self.clients.history, LINCHECK_BUDGET) {
            Verdict::Linearizable => false,
            Verdict::Unknown { .. } => true,
            Verdict::NotLinearizable { file, explanation } => {
                if self.config.verbose {
                    self.trace(format!(
                        "history of {:?}:\n{}",
                        String::from_utf8_lossy(&file),
                        self.clients.history.describe_file(&file)
                    ));
                }
                return Err(self.failure(format!(
                    "the client history is not linearizable for file {:?}: {explanation}",
                    String::from_utf8_lossy(&file)
                )));
            }
        };
        let mut stats = self.stats();
        stats.lincheck_unknown = lincheck_unknown;
        Ok(stats)
    }

    /// Handle the next event and check the invariants.
    pub fn step(&mut self) -> Result<(), Failure> {
        let Some(((time_us, _), event)) = self.queue.pop_first() else {
            return Err(self.failure("the event queue ran dry".to_string()));
        };
        self.now_us = time_us;
        self.step += 1;
        self.hash_event(&event);
        if self.config.verbose {
            let line = self.describe(&event);
            self.trace(line);
        }
        self.handle(event)
            .map_err(|message| self.failure(message))?;
        self.check_after_step()
            .map_err(|message| self.failure(message))
    }

    /// The node that is leader in the highest term, if any node is up and leads.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_position().map(|index| self.nodes[index].id)
    }

    /// The replica of node `id`, if it is up (for tests).
    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.position_of(id)
            .and_then(|index| self.nodes[index].replica.as_ref())
    }

    /// The client history so far.
    pub fn history(&self) -> &lincheck::History {
        &self.clients.history
    }

    /// The invariants' observation state, for tests that plant a violation
    /// and expect the simulator to report it.
    pub fn observations_mut(&mut self) -> &mut Observations {
        &mut self.observations
    }

    pub fn stats(&self) -> Stats {
        let (taken, installed) = self.snapshot_counts();
        Stats {
            seed: self.seed,
            node_count: self.nodes.len(),
            steps: self.step,
            simulated_ticks: self.now_us / TICK_US,
            net: self.net.stats.clone(),
            faults: self.faults,
            crashes: self.crashes,
            power_losses: self.power_losses,
            sync_failures: self.sync_failures,
            partitions: self.partitions,
            leaders_elected: self.observations.leaders.len() as u64,
            max_term: self
                .observations
                .leaders
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0),
            committed_entries: self.observations.committed.len() as u64,
            commands: self.clients.history.len() as u64,
            answered: self.clients.answered,
            redirects: self.clients.redirects,
            indeterminate: self.clients.indeterminate,
            watches: self.clients.watches,
            watches_woken: self.watches_woken(),
            watches_on_followers: self.clients.watches_on_followers,
            snapshots_taken: taken,
            snapshots_installed: installed,
            lincheck_unknown: false,
            liveness_ticks: if self.liveness.done {
                (self.now_us - self.liveness.started_us) / TICK_US
            } else {
                0
            },
            membership_changes: self.membership_changes,
            removed_nodes: self.removed_nodes,
            replaced_disks: self.replaced_disks,
            trace_hash: self.trace_hash,
        }
    }

    fn watches_woken(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| {
                node.watches_woken_before + node.replica.as_ref().map_or(0, Replica::watches_woken)
            })
            .sum()
    }

    fn snapshot_counts(&self) -> (u64, u64) {
        self.nodes.iter().fold((0, 0), |(taken, installed), node| {
            let (now_taken, now_installed) = node
                .replica
                .as_ref()
                .map_or((0, 0), |replica| replica.snapshot_counts());
            (
                taken + node.snapshots_before.0 + now_taken,
                installed + node.snapshots_before.1 + now_installed,
            )
        })
    }

    fn failure(&self, message: String) -> Failure {
        let failure = Failure {
            seed: self.seed,
            step: self.step,
            time_us: self.now_us,
            message,
        };
        if self.config.verbose {
            self.trace(format!("FAILURE: {failure}"));
        }
        failure
    }

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.event_sequence += 1;
        self.queue
            .insert((self.now_us + delay_us, self.event_sequence), event);
    }

    /// A gap with mean `mean_us` (uniform on `[0, 2 * mean]`).
    fn gap_us(&mut self, mean_us: u64) -> u64 {
        self.rng.gen_range(0..=2 * mean_us)
    }

    fn replica_config(&mut self, index: usize) -> ReplicaConfig {
        let knobs = &self.config.raft;
        let id = self.nodes[index].id;
        // cluster.toml as the operator keeps it: at the first start of a
        // bootstrap voter, the bootstrap voters; a spare starts with the
        // grown file, every node's table (DEPLOY.md: add the new nodes'
        // tables on every host, then start them); afterwards every node
        // restarts with that file. A new data dir whose file listed only
        // the bootstrap voters could, once every one of those was
        // replaced, bootstrap a second cluster with the other new data
        // dirs (seed 118); a spare whose file listed only the bootstrap
        // voters and itself (an even member count, which a real node
        // refuses) did so with the replaced ones while the one member
        // holding the log was down (soak seed 4552018912604112456): the
        // unanimous first election needs every listed node, and a member
        // holding a log refuses it.
        let listed = if self.started || !self.bootstrap.contains(&id) {
            self.members.clone()
        } else {
            self.bootstrap.clone()
        };
        ReplicaConfig {
            raft: crate::raft::Config {
                id,
                members: listed.clone(),
                addresses: listed.iter().map(|&id| (id, addresses_of(id))).collect(),
                incarnation: self.nodes[index].incarnation,
                election_timeout_ticks: knobs.election_timeout_ticks,
                heartbeat_ticks: knobs.heartbeat_ticks,
                inflight_appends_max: knobs.inflight_appends_max,
                append_bytes_max: knobs.append_bytes_max,
                snapshot_chunk_bytes_max: knobs.snapshot_chunk_bytes_max,
                pre_vote: knobs.pre_vote,
                check_quorum: knobs.check_quorum,
                seed: self.rng.gen(),
            },
            client_addresses: listed
                .iter()
                .map(|&member| (member, address_of(member)))
                .collect(),
            hold_while_leaderless_ms: knobs.election_timeout_ticks.1 * crate::limits::TICK_MS,
            snapshot_entries: self.config.snapshot_entries,
            follower_requests: self.config.follower_requests,
            session: self.rng.gen(),
        }
    }

    /// Boot (or reboot) a node from its disk (the production restore) and
    /// start its tick chain. A node that cannot start is a failure: a crash
    /// at any moment must never brick a node.
    fn start_node(&mut self, index: usize) -> Result<(), String> {
        if self.nodes[index].retired {
            return Ok(());
        }
        let config = self.replica_config(index);
        let node = &mut self.nodes[index];
        let boot = node
            .disk
            .boot()
            .map_err(|e| format!("node {} cannot restart: {e}", node.id))?;
        let replica = Replica::new(config, boot);
        if replica.removed().is_some() {
            // As `raftfs node` refuses to start a data dir whose removal
            // it knows committed.
            node.retired = true;
            self.removed_nodes += 1;
            return Ok(());
        }
        node.replica = Some(replica);
        node.commit_index_seen = 0;
        node.commit_observed = 0;
        node.applied_digest_seen = 0;
        node.sync_failed = false;
        let period = node.tick_period_us;
        let generation = node.generation;
        let first = self.rng.gen_range(0..period);
        self.schedule(
            first,
            Event::Tick {
                node: index,
                generation,
            },
        );
        Ok(())
    }

    /// The time as node `index` sees it.
    fn node_now(&self, index: usize) -> Now {
        let wall_ms = (WALL_CLOCK_START_MS + self.now_us / 1_000)
            .saturating_add_signed(self.nodes[index].wall_offset_ms);
        Now {
            monotonic_us: self.now_us,
            wall_ms,
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick { node, generation } => {
                if self.nodes[node].generation != generation || !self.nodes[node].is_up() {
                    return Ok(());
                }
                let period = self.nodes[node].tick_period_us;
                if let Some(resume) = self.pause_left_us(node) {
                    // A stopped process misses its ticks; it catches up
                    // (a bounded number per turn) when it resumes.
                    self.schedule(resume.max(period), Event::Tick { node, generation });
                    return Ok(());
                }
                let now = self.node_now(node);
                if let Some(replica) = self.nodes[node].replica.as_mut() {
                    replica.tick(now);
                }
                self.schedule(period, Event::Tick { node, generation });
                self.turn(node)
            }
            Event::Deliver {
                envelope,
                receiver_generation,
            } => self.deliver(envelope, receiver_generation),
            Event::SyncDone {
                node,
                generation,
                id,
            } => {
                if self.nodes[node].generation != generation || !self.nodes[node].is_up() {
                    return Ok(());
                }
                if let Some(resume) = self.pause_left_us(node) {
                    self.schedule(
                        resume,
                        Event::SyncDone {
                            node,
                            generation,
                            id,
                        },
                    );
                    return Ok(());
                }
                let fails = self.fault_phase
                    && self
                        .rng
                        .gen_bool(self.config.disk.sync_failure_probability.clamp(0.0, 1.0));
                let took_us = self.now_us;
                let sim_node = &mut self.nodes[node];
                if let Some(replica) = sim_node.replica.as_mut() {
                    if fails {
                        self.sync_failures += 1;
                        sim_node.sync_failed = true;
                        replica.sync_failed(id, "injected fsync failure".to_string());
                    } else {
                        sim_node.disk.complete_sync(id);
                        replica.synced(id, took_us % 1_000);
                    }
                }
                self.turn(node)
            }
            Event::SnapshotDone {
                node,
                generation,
                job,
            } => {
                if self.nodes[node].generation != generation || !self.nodes[node].is_up() {
                    return Ok(());
                }
                let sim_node = &mut self.nodes[node];
                let done = match sim_node.disk.complete_snapshot(job) {
                    Some(Ok(meta)) => SnapshotDone::Taken(meta),
                    Some(Err(reason)) => SnapshotDone::Failed(reason),
                    None => return Ok(()),
                };
                if let Some(replica) = sim_node.replica.as_mut() {
                    replica.snapshot_done(done);
                }
                self.turn(node)
            }
            Event::Restart { node, generation } => {
                if self.nodes[node].generation == generation && !self.nodes[node].is_up() {
                    self.start_node(node)?;
                    self.turn(node)?;
                }
                Ok(())
            }
            Event::Client { client } => {
                if self.fault_phase {
                    let gap = self.gap_us(self.config.clients.gap_us_mean);
                    self.schedule(gap.max(1), Event::Client { client });
                } else if self.clients.outstanding() > 0 {
                    self.schedule(10 * TICK_US, Event::Client { client });
                }
                self.client_turn(client)
            }
            Event::Fault => {
                if !self.fault_phase {
                    return Ok(());
                }
                let gap = self.gap_us(self.config.fault_gap_us_mean);
                self.schedule(gap.max(1), Event::Fault);
                self.fault()
            }
        }
    }

    /// Run node `index`'s turn and send its outputs on their way.
    fn turn(&mut self, index: usize) -> Result<(), String> {
        let now = self.node_now(index);
        let node = &mut self.nodes[index];
        let id = node.id;
        let Some(replica) = node.replica.as_mut() else {
            return Ok(());
        };
        let installed_before = replica.snapshot_counts().1;
        let result = replica.end_turn(now, &mut node.disk);
        let installed = replica.snapshot_counts().1 > installed_before;
        let messages = std::mem::take(&mut replica.messages);
        let replies = std::mem::take(&mut replica.replies);
        let by_follower = replica.raft().role() == Role::Follower;
        let requests = std::mem::take(&mut node.disk.requests);
        if let Err(error) = result {
            if node.sync_failed {
                // As it must after a failed fsync: the process exits with
                // nothing more sent.
                if self.config.verbose {
                    self.trace(format!("    node {id} stops: {error}"));
                }
                self.crash_node(index, false);
                return Ok(());
            }
            return Err(format!("node {id} stopped: {error}"));
        }
        let durable = self.nodes[index].disk.durable();
        for envelope in messages {
            self.check_send(index, &envelope, &durable)?;
            self.send(envelope);
        }
        for (client, answer) in replies {
            self.deliver_answer(id, by_follower, client, answer)?;
        }
        let removed = self.nodes[index]
            .replica
            .as_ref()
            .and_then(|replica| replica.removed());
        if let Some(reason) = removed {
            // The real node stops here (exit code 4), its messages sent and
            // every command it holds answered (`Replica::leave`).
            let replies = self.nodes[index]
                .replica
                .as_mut()
                .map(|replica| {
                    replica.leave();
                    std::mem::take(&mut replica.replies)
                })
                .unwrap_or_default();
            for (client, answer) in replies {
                self.deliver_answer(id, by_follower, client, answer)?;
            }
            self.retire_node(index, &reason);
            return Ok(());
        }
        let generation = self.nodes[index].generation;
        let crash_now = installed
            && self
                .rng
                .gen_bool(self.config.crash_after_install_probability.clamp(0.0, 1.0));
        for request in requests {
            match request {
                DiskRequest::Sync(sync) => {
                    let (low, high) = self.config.disk.sync_us;
                    let slow = self
                        .rng
                        .gen_bool(self.config.disk.slow_sync_probability.clamp(0.0, 1.0));
                    let delay = if slow {
                        self.rng
                            .gen_range(high..=self.config.disk.slow_sync_us_max.max(high))
                    } else {
                        self.rng.gen_range(low..=high.max(low))
                    };
                    self.schedule(
                        delay.max(1),
                        Event::SyncDone {
                            node: index,
                            generation,
                            id: sync,
                        },
                    );
                }
                DiskRequest::Snapshot(job) => {
                    let (low, high) = self.config.disk.snapshot_us;
                    let delay = self.rng.gen_range(low..=high.max(low));
                    self.schedule(
                        delay.max(1),
                        Event::SnapshotDone {
                            node: index,
                            generation,
                            job,
                        },
                    );
                }
            }
        }
        if crash_now {
            // Between the snapshot file and its log-start record's fsync.
            self.crash_node(index, true);
        }
        Ok(())
    }

    fn deliver_answer(
        &mut self,
        node: NodeId,
        by_follower: bool,
        to: ClientRef,
        answer: Bytes,
    ) -> Result<(), String> {
        if self.config.verbose {
            self.trace(format!(
                "    node {node} answers key {} conn {} seq {}: {:?}",
                to.key,
                to.conn_id,
                to.seq,
                String::from_utf8_lossy(&answer[..answer.len().min(60)])
            ));
        }
        if to.key == self.probe_key() {
            return self.probe_answer(to, &answer);
        }
        let now_us = self.now_us;
        self.clients
            .deliver(node, by_follower, to, answer, now_us, node_of_address)
    }

    fn deliver(&mut self, envelope: Envelope, receiver_generation: u64) -> Result<(), String> {
        let to = envelope.to;
        let Some(index) = self.position_of(to) else {
            return Err(format!("message addressed to unknown node {to}"));
        };
        if !self.net.admits(envelope.from, to) {
            return Ok(());
        }
        if envelope.message.is_client_traffic()
            && self.nodes[index].generation != receiver_generation
        {
            // Peer links are connections that die with the receiving
            // process (a send queue is cleared, never replayed on the next
            // connection): client traffic reaches at most the lifetime it
            // was sent to, which forwarding's exactly-once relies on. Raft
            // messages still cross lifetimes here, harsher than TCP.
            return Ok(());
        }
        if let Some(resume) = self.pause_left_us(index) {
            // Waits in the socket buffer of a stopped process; taken in some
            // order soon after it resumes.
            let jitter = self.rng.gen_range(0..=TICK_US / 2);
            self.schedule(
                resume + jitter,
                Event::Deliver {
                    envelope,
                    receiver_generation,
                },
            );
            return Ok(());
        }
        let Some(replica) = self.nodes[index].replica.as_mut() else {
            return Ok(());
        };
        // The peer handshake's decision, taken per message here (a real
        // link asks once per connection): a refused message is dropped and
        // its sender told, as a refused dialer is.
        // The simulated cluster knows its id from the start (the cluster
        // id is the peer layer's, tested with real processes).
        let decision =
            crate::net::peer::PeerGate::accept(replica, envelope.from, envelope.incarnation, true);
        if let Err(refusal) = decision {
            self.turn(index)?;
            let (from, incarnation) = (envelope.from, envelope.incarnation);
            return self.refused(from, incarnation, to, &refusal.reason);
        }
        replica.step(envelope);
        self.turn(index)
    }

    /// Put an envelope on the wire now.
    fn send(&mut self, envelope: Envelope) {
        let delays = self.net.route(&mut self.rng, envelope.from, envelope.to);
        let receiver_generation = self
            .position_of(envelope.to)
            .map_or(0, |index| self.nodes[index].generation);
        for delay in delays {
            let envelope = envelope.clone();
            self.schedule(
                delay,
                Event::Deliver {
                    envelope,
                    receiver_generation,
                },
            );
        }
    }

    /// A client's turn: connect, time out, or send commands (one turn of
    /// the node it talks to, so a pipelined burst is one batch).
    fn client_turn(&mut self, client: usize) -> Result<(), String> {
        let may_send = self.fault_phase;
        let now_us = self.now_us;
        match self.clients.intent(client, now_us, &mut self.rng, may_send) {
            Intent::Nothing => Ok(()),
            Intent::Connect(target) => {
                let target = target
                    .and_then(|id| self.position_of(id))
                    .filter(|&index| self.nodes[index].is_up())
                    .or_else(|| {
                        let up: Vec<usize> = (0..self.nodes.len())
                            .filter(|&index| self.nodes[index].is_up())
                            .collect();
                        (!up.is_empty()).then(|| up[self.rng.gen_range(0..up.len())])
                    });
                if let Some(index) = target {
                    self.clients.connected(client, self.nodes[index].id, now_us);
                }
                Ok(())
            }
            Intent::Close(node, client_ref) => {
                self.clients.disconnected(client, now_us);
                if let Some(replica) = self
                    .position_of(node)
                    .and_then(|index| self.nodes[index].replica.as_mut())
                {
                    replica.connection_closed(client_ref.key);
                }
                Ok(())
            }
            Intent::Send(node, requests) => {
                let Some(index) = self.position_of(node) else {
                    return Err(format!("client talks to unknown node {node}"));
                };
                if self.pause_left_us(index).is_some() {
                    // The commands wait in the socket until the node resumes;
                    // modelled as arriving then (the client's clock runs on).
                    let resume = self.pause_left_us(index).unwrap_or(0);
                    let now = self.node_now(index);
                    let later = Now {
                        monotonic_us: now.monotonic_us + resume,
                        ..now
                    };
                    if let Some(replica) = self.nodes[index].replica.as_mut() {
                        for (client_ref, request) in requests {
                            replica.client_request(client_ref, request, later);
                        }
                    }
                    return Ok(());
                }
                let now = self.node_now(index);
                if self.config.verbose {
                    for (client_ref, request) in &requests {
                        self.trace(format!(
                            "    client {client} conn {} seq {} to node {node}: {request:?}",
                            client_ref.conn_id, client_ref.seq
                        ));
                    }
                }
                if let Some(replica) = self.nodes[index].replica.as_mut() {
                    for (client_ref, request) in requests {
                        replica.client_request(client_ref, request, now);
                    }
                }
                self.turn(index)
            }
        }
    }

    /// Power loss or process kill: the replica and everything in flight
    /// vanish; the disk keeps what the crash allows (`SimDisk::crash`).
    fn crash_node(&mut self, index: usize, power_loss: bool) {
        if !self.nodes[index].is_up() {
            return;
        }
        let unsynced = self.nodes[index].disk.unsynced_records();
        let kept = if power_loss && self.config.disk.crash_keeps_unsynced_prefix {
            self.rng.gen_range(0..=unsynced)
        } else {
            0
        };
        let now_us = self.now_us;
        let node = &mut self.nodes[index];
        if let Some(replica) = node.replica.take() {
            let (taken, installed) = replica.snapshot_counts();
            let woken = replica.watches_woken();
            node.snapshots_before.0 += taken;
            node.snapshots_before.1 += installed;
            node.watches_woken_before += woken;
        }
        node.disk.crash(power_loss, kept);
        if power_loss {
            // Entries this node wrote as leader of a term its disk lost
            // were never sent (nothing leaves while a new term is
            // unsynced), so the same term, won again, may fill those
            // indexes differently (seed 286: a sole voter re-elected in
            // the term a power loss took): forget them.
            let surviving_term = node.disk.durable().hard_state.term;
            let id = node.id;
            self.observations
                .positions
                .retain(|&(_, term), record| record.node != id || term <= surviving_term);
        }
        let node = &mut self.nodes[index];
        node.generation += 1;
        node.paused_until_us = 0;
        let generation = node.generation;
        let id = node.id;
        self.clients.node_crashed(id, now_us);
        self.probes_lost(id);
        self.crashes += 1;
        self.power_losses += u64::from(power_loss);
        if self.config.verbose {
            self.trace(format!(
                "    crash node {id} ({}, kept {kept} of {unsynced} unsynced records)",
                if power_loss {
                    "power loss"
                } else {
                    "process kill"
                }
            ));
        }
        let (low, high) = self.config.downtime_us;
        let downtime = self.rng.gen_range(low..=high.max(low));
        self.schedule(
            downtime,
            Event::Restart {
                node: index,
                generation,
            },
        );
    }

    /// Node `index` stops for good: removed from the cluster (it learned so,
    /// or a member refused its removed data dir). Its disk stays; only a
    /// new disk (`replace_disk`) brings it back.
    fn retire_node(&mut self, index: usize, reason: &str) {
        let now_us = self.now_us;
        let node = &mut self.nodes[index];
        if node.retired {
            return;
        }
        node.retired = true;
        if let Some(replica) = node.replica.take() {
            let (taken, installed) = replica.snapshot_counts();
            node.snapshots_before.0 += taken;
            node.snapshots_before.1 += installed;
        }
        node.generation += 1;
        node.paused_until_us = 0;
        let id = node.id;
        self.clients.node_crashed(id, now_us);
        self.probes_lost(id);
        self.removed_nodes += 1;
        if self.config.verbose {
            self.trace(format!("    node {id} stops for good: {reason}"));
        }
    }

    /// Node `to` refused a message from node `from`'s data dir
    /// `incarnation` for `reason`: the sender (if still that data dir)
    /// hears of it as a refused dialer does, and stops for good (removed),
    /// exits to be restarted (another incarnation of a member), or goes on.
    fn refused(
        &mut self,
        from: NodeId,
        incarnation: u64,
        to: NodeId,
        reason: &str,
    ) -> Result<(), String> {
        let Some(sender) = self.position_of(from) else {
            return Ok(());
        };
        if self.nodes[sender].incarnation != incarnation || !self.nodes[sender].is_up() {
            return Ok(());
        }
        let verdict = match self.nodes[sender].replica.as_mut() {
            Some(replica) => replica.peer_refused(to, reason),
            None => return Ok(()),
        };
        match verdict {
            Ok(()) => self.turn(sender),
            Err(line) if reason.contains(crate::replica::REMOVED_REFUSAL_MARK) => {
                self.retire_node(sender, &line);
                Ok(())
            }
            Err(line) => {
                if self.config.verbose {
                    self.trace(format!("    node {from} exits: {line}"));
                }
                // The process exits (code 1); its supervisor restarts it.
                self.crash_node(sender, false);
                Ok(())
            }
        }
    }

    /// A removed node gets an empty disk (a new incarnation) and starts
    /// again, not a member, waiting to be added: a replaced host.
    fn replace_disk(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        if !node.retired || node.replica.is_some() {
            return Ok(());
        }
        node.retired = false;
        node.disk = SimDisk::new();
        node.generation += 1;
        node.incarnation = incarnation_of(node.id, node.generation);
        node.commit_index_seen = 0;
        self.replaced_disks += 1;
        if self.config.verbose {
            let id = self.nodes[index].id;
            self.trace(format!("    node {id} gets a new disk"));
        }
        self.start_node(index)?;
        self.turn(index)
    }

    /// Microseconds until node `index` resumes, if it is paused.
    fn pause_left_us(&self, index: usize) -> Option<u64> {
        let until = self.nodes[index].paused_until_us;
        (until > self.now_us).then(|| until - self.now_us)
    }

    fn position_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|node| node.id == id)
    }

    fn leader_position(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.nodes[index].is_leader())
            .max_by_key(|&index| {
                self.nodes[index]
                    .replica
                    .as_ref()
                    .map_or(0, |replica| replica.raft().term())
            })
    }

    /// Checks on a message as it leaves node `index`.
    fn check_send(
        &mut self,
        index: usize,
        envelope: &Envelope,
        durable: &invariants::Durable,
    ) -> Result<(), String> {
        let node = &self.nodes[index];
        let id = node.id;
        if envelope.from != id || envelope.incarnation != node.incarnation {
            return Err(format!(
                "node {id} sent an envelope stamped from {} incarnation {}",
                envelope.from, envelope.incarnation
            ));
        }
        if !self.members.contains(&envelope.to) || envelope.to == id {
            return Err(format!(
                "node {id} sent to {}, which is not a peer",
                envelope.to
            ));
        }
        let term = node.replica.as_ref().map_or(0, |r| r.raft().term());
        // A PreVote names the term its sender would campaign in, without
        // adopting it; its answer echoes that term.
        let pre_vote = matches!(
            envelope.message,
            Message::PreVote { .. } | Message::PreVoteResponse { .. }
        );
        if !pre_vote && envelope.term > term {
            return Err(format!(
                "node {id} in term {term} sent a message of term {}",
                envelope.term
            ));
        }
        invariants::promise_is_durable(id, envelope, durable)?;
        if matches!(
            envelope.message,
            Message::AppendEntries { .. }
                | Message::Heartbeat { .. }
                | Message::TimeoutNow
                | Message::InstallSnapshot { .. }
        ) {
            // Only a leader sends these: one more witness for Election Safety.
            if invariants::election_safety(&mut self.observations.leaders, envelope.term, id)? {
                self.check_leader_completeness(index, envelope.term)?;
            }
        }
        Ok(())
    }

    fn check_leader_completeness(&self, index: usize, term: u64) -> Result<(), String> {
        let Some(replica) = self.nodes[index].replica.as_ref() else {
            return Ok(());
        };
        let raft = replica.raft();
        let snapshot = raft.snapshot();
        let view = invariants::LogView {
            snapshot_index: snapshot.index,
            snapshot_term: snapshot.term,
            entries: raft.entries(snapshot.index + 1, raft.last_index()),
        };
        invariants::leader_completeness_view(
            &self.observations.committed,
            self.nodes[index].id,
            term,
            view,
        )
    }

    /// Properties checked after every step on every running node.
    fn check_after_step(&mut self) -> Result<(), String> {
        let mut state_hash = self.trace_hash;
        for index in 0..self.nodes.len() {
            let written_from = self.nodes[index].disk.written_from.take();
            let Some(replica) = self.nodes[index].replica.as_ref() else {
                state_hash = mix(state_hash, 0xdead);
                continue;
            };
            let raft = replica.raft();
            let id = self.nodes[index].id;
            let (role, term, commit_index, last_index) = (
                raft.role(),
                raft.term(),
                raft.commit_index(),
                raft.last_index(),
            );
            state_hash = mix(
                mix(mix(mix(state_hash, role as u64), term), commit_index),
                last_index,
            );
            let node = &self.nodes[index];
            invariants::commit_index_monotonic(id, node.commit_index_seen, commit_index)?;
            if role == Role::Leader && commit_index > node.commit_index_seen {
                let voters = raft.configuration().voters();
                let entry_term = raft.term_at(commit_index);
                let holders: Vec<NodeId> = voters
                    .iter()
                    .copied()
                    .filter(|&voter| {
                        let holds = |term| {
                            self.position_of(voter).is_some_and(|position| {
                                self.nodes[position].disk.durably_holds(commit_index, term)
                            })
                        };
                        entry_term.is_some_and(holds)
                    })
                    .collect();
                invariants::commit_has_majority(id, term, commit_index, &voters, &holders)?;
            }
            if last_index != node.disk.last_index() {
                return Err(format!(
                    "node {id} reports last index {last_index} but asked to persist a log through {}",
                    node.disk.last_index()
                ));
            }
            if raft.hard_state() != node.disk.hard_state() {
                return Err(format!(
                    "node {id} holds hard state {:?} but asked to persist {:?}",
                    raft.hard_state(),
                    node.disk.hard_state()
                ));
            }
            replica.check_watch_invariants();
            if replica.applied_index() > commit_index {
                return Err(format!(
                    "node {id} applied through {} but its commit index is {commit_index}",
                    replica.applied_index()
                ));
            }
            // Log Matching over what the node wrote since the last step.
            let snapshot = raft.snapshot();
            if let Some(from) = written_from {
                let entries = raft.entries(snapshot.index + 1, last_index);
                invariants::log_matching_after(
                    &mut self.observations.positions,
                    id,
                    (snapshot.index, snapshot.term),
                    entries,
                    from,
                )?;
            }
            let node = &self.nodes[index];
            // State Machine Safety on each newly committed entry.
            let mut observed = node.commit_observed.max(snapshot.index);
            while observed < commit_index {
                let Some(entry) = raft.entry(observed + 1) else {
                    break;
                };
                let newly = invariants::state_machine_safety(
                    &mut self.observations.committed,
                    id,
                    term,
                    observed,
                    entry,
                )?;
                observed += 1;
                if newly {
                    if let Some(committed) = self.observations.committed.get(&entry.index) {
                        for leader in self.nodes.iter().filter(|n| n.is_leader()) {
                            let Some(leader_replica) = leader.replica.as_ref() else {
                                continue;
                            };
                            let leader_raft = leader_replica.raft();
                            let leader_snapshot = leader_raft.snapshot();
                            let view = invariants::LogView {
                                snapshot_index: leader_snapshot.index,
                                snapshot_term: leader_snapshot.term,
                                entries: leader_raft
                                    .entries(leader_snapshot.index + 1, leader_raft.last_index()),
                            };
                            invariants::leader_has_committed_entry(
                                entry.index,
                                committed,
                                leader.id,
                                leader_raft.term(),
                                view,
                            )?;
                        }
                    }
                }
            }
            let observed = observed.max(commit_index.min(snapshot.index));
            let applied_index = replica.applied_index();
            let digest = (applied_index != node.applied_digest_seen).then(|| {
                let fsm = replica.fsm();
                fsm.checksum(fsm.cluster_time_ms())
            });
            if let Some(digest) = digest {
                invariants::replicas_agree(&mut self.digests, id, applied_index, digest)?;
            }
            if role == Role::Leader
                && invariants::election_safety(&mut self.observations.leaders, term, id)?
            {
                self.check_leader_completeness(index, term)?;
            }
            let node = &mut self.nodes[index];
            node.commit_index_seen = commit_index;
            node.commit_observed = observed;
            node.applied_digest_seen = applied_index;
        }
        self.trace_hash = state_hash;
        Ok(())
    }

    fn begin_liveness(&mut self) -> Result<(), String> {
        self.fault_phase = false;
        self.liveness.started_us = self.now_us;
        self.net.heal_all();
        self.net.config.loss_probability = 0.0;
        self.net.config.duplicate_probability = 0.0;
        self.net.config.long_delay_probability = 0.0;
        for index in 0..self.nodes.len() {
            self.nodes[index].paused_until_us = 0;
            if !self.nodes[index].is_up() {
                self.nodes[index].generation += 1;
                self.start_node(index)?;
                self.turn(index)?;
            }
        }
        // Clients stop sending; their turns go on until they are answered.
        for client in 0..self.clients.count() {
            self.schedule(TICK_US, Event::Client { client });
        }
        Ok(())
    }

    /// Liveness: a leader; every client answered; a probe write through the
    /// leader acknowledged and applied everywhere; a final read of every key
    /// (so the history ends with what the cluster holds).
    fn advance_liveness(&mut self) -> Result<(), String> {
        for index in 0..self.nodes.len() {
            if self.nodes[index].retired {
                // The operator gives every removed host a new disk: one
                // the configuration still lists (added again while its
                // removed data dir ran, seeds 221 and 390) must be able to
                // catch up.
                self.replace_disk(index)?;
            }
        }
        let Some(leader) = self.leader_position() else {
            return Ok(());
        };
        self.liveness.leader_seen = true;
        if self.clients.outstanding() > 0 || !self.liveness.pending.is_empty() {
            if self.clients.outstanding_watches() > 0
                && self.liveness.pending.is_empty()
                && self.now_us >= self.liveness.next_wake_us
            {
                self.liveness.next_wake_us = self.now_us + WAKE_INTERVAL_TICKS * TICK_US;
                self.send_wake_writes(leader)?;
            }
            return Ok(());
        }
        let Some(probe_index) = self.liveness.probe_acknowledged else {
            if !self.liveness.probe_sent {
                self.liveness.probe_sent = true;
                let write = Request::Command(Command::Write {
                    name: Bytes::from_static(b"liveness-probe"),
                    content: Bytes::from_static(b"probe"),
                    exptime_s: 0,
                });
                self.probe_request(leader, write, ProbeCommand::Write { leader })?;
            }
            return Ok(());
        };
        // Every member of the leader's configuration (others are not sent
        // the log: nodes waiting to be added, removed ones).
        let Some(configuration) = self.nodes[leader]
            .replica
            .as_ref()
            .map(|replica| replica.raft().configuration().clone())
        else {
            return Ok(());
        };
        let caught_up = self
            .nodes
            .iter()
            .filter(|node| configuration.contains(node.id))
            .all(|node| {
                node.replica
                    .as_ref()
                    .is_some_and(|replica| replica.applied_index() >= probe_index)
            });
        if !caught_up {
            return Ok(());
        }
        let keys = self.config.clients.keys.max(1);
        if !self.liveness.final_reads_sent {
            self.liveness.final_reads_sent = true;
            self.liveness.final_reads_answered = 0;
            for key in 0..keys {
                let name = Bytes::from(format!("k{key}"));
                let op = lincheck::Op::Read {
                    name: name.to_vec(),
                };
                let client = (self.clients.count() + key) as u64;
                let id = self.clients.history.invoke(client, op, self.now_us * 1_000);
                self.probe_request(leader, Request::Read { name }, ProbeCommand::FinalRead(id))?;
            }
            return Ok(());
        }
        if self.liveness.final_reads_answered == keys {
            self.liveness.done = true;
        }
        Ok(())
    }

    /// Write every client key once through the leader (recorded in the
    /// history, as clients' writes are): a watch waiting on it must then be
    /// answered.
    fn send_wake_writes(&mut self, leader: usize) -> Result<(), String> {
        for key in 0..self.config.clients.keys.max(1) {
            self.liveness.wake_writes += 1;
            let name = Bytes::from(format!("k{key}"));
            let content = Bytes::from(format!("wake.{}", self.liveness.wake_writes));
            let op = lincheck::Op::Write {
                name: name.to_vec(),
                content: content.to_vec(),
            };
            let client = (self.clients.count() + self.config.clients.keys.max(1) + key) as u64;
            let id = self.clients.history.invoke(client, op, self.now_us * 1_000);
            let write = Request::Command(Command::Write {
                name,
                content,
                exptime_s: 0,
            });
            self.probe_request(leader, write, ProbeCommand::WakeWrite(id))?;
        }
        Ok(())
    }

    /// The connection key of the simulator's own commands (after the
    /// clients': keys index a vector in the replica).
    fn probe_key(&self) -> usize {
        self.clients.count()
    }

    fn probe_request(
        &mut self,
        index: usize,
        request: Request,
        command: ProbeCommand,
    ) -> Result<(), String> {
        let seq = self.liveness.next_seq;
        self.liveness.next_seq += 1;
        if self.config.verbose {
            self.trace(format!(
                "    probe {seq} {command:?} to node {}: {request:?}",
                self.nodes[index].id
            ));
        }
        self.liveness
            .pending
            .insert(seq, (self.nodes[index].id, command));
        let client = ClientRef {
            key: self.probe_key(),
            conn_id: self.liveness.conn_id,
            seq,
        };
        let now = self.node_now(index);
        if let Some(replica) = self.nodes[index].replica.as_mut() {
            replica.client_request(client, request, now);
        }
        self.turn(index)
    }

    /// Node `id` crashed: the probe commands sent to it are lost with
    /// their connection (indeterminate); they are sent again.
    fn probes_lost(&mut self, id: NodeId) {
        let lost: Vec<u64> = self
            .liveness
            .pending
            .iter()
            .filter(|(_, (node, _))| *node == id)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in lost {
            match self.liveness.pending.remove(&seq) {
                Some((_, ProbeCommand::Write { .. })) => self.liveness.probe_sent = false,
                Some((_, ProbeCommand::FinalRead(op))) => {
                    self.clients.history.discard(op);
                    self.liveness.final_reads_sent = false;
                }
                // Lost with its connection: it may or may not have applied.
                Some((_, ProbeCommand::WakeWrite(op))) => {
                    let now_ns = self.now_us * 1_000;
                    self.clients
                        .history
                        .complete(op, lincheck::Outcome::Indeterminate, now_ns);
                }
                None => {}
            }
        }
    }

    fn probe_answer(&mut self, to: ClientRef, answer: &[u8]) -> Result<(), String> {
        if to.conn_id != self.liveness.conn_id {
            return Ok(());
        }
        let Some((_, command)) = self.liveness.pending.remove(&to.seq) else {
            return Err(format!("probe sequence {} answered twice", to.seq));
        };
        if self.config.verbose {
            self.trace(format!(
                "    probe {} answered: {:?}",
                to.seq,
                String::from_utf8_lossy(answer)
            ));
        }
        let now_ns = self.now_us * 1_000;
        match command {
            ProbeCommand::Write { leader } => {
                match clients::interpret(clients::Kind::Write, answer)? {
                    clients::Answer::Outcome(lincheck::Outcome::Written { .. }) => {
                        let commit_index = self.nodes[leader]
                            .replica
                            .as_ref()
                            .map_or(0, |replica| replica.raft().commit_index());
                        self.liveness.probe_acknowledged = Some(commit_index);
                    }
                    // Redirected or indeterminate: try again.
                    _ => self.liveness.probe_sent = false,
                }
            }
            ProbeCommand::WakeWrite(op) => {
                match clients::interpret(clients::Kind::Write, answer)? {
                    clients::Answer::Outcome(outcome) => {
                        self.clients.history.complete(op, outcome, now_ns)
                    }
                    clients::Answer::Redirect(_) => self.clients.history.discard(op),
                }
            }
            ProbeCommand::FinalRead(op) => match clients::interpret(clients::Kind::Read, answer)? {
                clients::Answer::Outcome(outcome)
                    if outcome != lincheck::Outcome::Indeterminate =>
                {
                    self.clients.history.complete(op, outcome, now_ns);
                    self.liveness.final_reads_answered += 1;
                }
                _ => {
                    self.clients.history.discard(op);
                    self.liveness.final_reads_sent = false;
                }
            },
        }
        Ok(())
    }

    fn hash_event(&mut self, event: &Event) {
        let mut hash = mix(mix(self.trace_hash, self.step), self.now_us);
        hash = match event {
            Event::Tick { node, generation } => mix(mix(mix(hash, 1), *node as u64), *generation),
            Event::Deliver { envelope, .. } => mix(
                mix(mix(mix(hash, 2), envelope.from), envelope.to),
                mix(envelope.term, message_code(&envelope.message)),
            ),
            Event::SyncDone { node, id, .. } => mix(mix(mix(hash, 3), *node as u64), *id),
            Event::SnapshotDone { node, job, .. } => mix(mix(mix(hash, 7), *node as u64), *job),
            Event::Restart { node, generation } => {
                mix(mix(mix(hash, 4), *node as u64), *generation)
            }
            Event::Client { client } => mix(mix(hash, 5), *client as u64),
            Event::Fault => mix(hash, 6),
        };
        self.trace_hash = hash;
    }

    fn describe(&self, event: &Event) -> String {
        let what = match event {
            Event::Tick { node, .. } => format!("tick node {}", self.nodes[*node].id),
            Event::Deliver { envelope, .. } => format!(
                "deliver {} -> {} term {}: {}",
                envelope.from,
                envelope.to,
                envelope.term,
                describe_message(&envelope.message)
            ),
            Event::SyncDone { node, id, .. } => {
                format!("fsync {id} done on node {}", self.nodes[*node].id)
            }
            Event::SnapshotDone { node, job, .. } => {
                format!("snapshot job {job} done on node {}", self.nodes[*node].id)
            }
            Event::Restart { node, .. } => format!("restart node {}", self.nodes[*node].id),
            Event::Client { client } => format!("client {client}"),
            Event::Fault => "fault".to_string(),
        };
        format!(
            "[step {} t={}.{:04}] {what}",
            self.step,
            self.now_us / TICK_US,
            self.now_us % TICK_US
        )
    }

    fn trace(&self, line: String) {
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    /// One line per node: role, term, commit and last index, applied index.
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        for node in &self.nodes {
            match node.replica.as_ref() {
                Some(replica) => {
                    let raft = replica.raft();
                    parts.push(format!(
                        "node {}: {:?} term {} leader {:?} snapshot {} commit {} last {} applied {}",
                        node.id,
                        raft.role(),
                        raft.term(),
                        raft.leader_id(),
                        raft.snapshot().index,
                        raft.commit_index(),
                        raft.last_index(),
                        replica.applied_index()
                    ))
                }
                None => parts.push(format!("node {}: down", node.id)),
            }
        }
        format!(
            "{}; blocked links {}",
            parts.join("; "),
            self.net.blocked_links()
        )
    }
}

/// The incarnation of node `id`'s data dir made in its `generation`th
/// lifetime (a node keeps its data dir across crashes; only a replaced
/// disk gets a new one).
fn incarnation_of(id: NodeId, generation: u64) -> u64 {
    0x1_0000 + id + (generation << 20)
}

/// The addresses the simulator gives node `id` (only carried: the
/// simulated network routes by id).
fn addresses_of(id: NodeId) -> crate::raft::MemberAddresses {
    crate::raft::MemberAddresses {
        peer: format!("node-{id}:9080"),
        client: address_of(id),
        metrics: String::new(),
    }
}

/// The client address the simulator gives node `id` (what redirects name).
fn address_of(id: NodeId) -> String {
    format!("node-{id}:8080")
}

fn node_of_address(address: &str) -> Option<NodeId> {
    address
        .strip_prefix("node-")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

fn mix(hash: u64, word: u64) -> u64 {
    let mut hash = hash;
    for byte in word.to_le_bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(FNV_PRIME);
    }
    hash
}

fn message_code(message: &Message) -> u64 {
    match message {
        Message::PreVote { .. } => 11,
        Message::PreVoteResponse { granted } => 12 + 100 * *granted as u64,
        Message::RequestVote { .. } => 13,
        Message::RequestVoteResponse { granted } => 14 + 100 * *granted as u64,
        Message::AppendEntries {
            prev_log_index,
            entries,
            leader_commit,
            ..
        } => mix(
            mix(15, *prev_log_index),
            mix(entries.len() as u64, *leader_commit),
        ),
        Message::AppendEntriesResponse {
            success,
            match_index,
            ..
        } => mix(16 + 100 * *success as u64, *match_index),
        Message::Heartbeat { read_round, .. } => 17 + 100 * read_round,
        Message::HeartbeatResponse { read_round } => 18 + 100 * read_round,
        Message::TimeoutNow => 19,
        Message::InstallSnapshot { offset, data, .. } => mix(20 + 100 * offset, data.len() as u64),
        Message::InstallSnapshotResponse { next_offset, .. } => 21 + 100 * next_offset,
        Message::ForwardCommands { id, batch, .. } => mix(mix(22, *id), batch.len() as u64),
        Message::ForwardAnswers { id, answers, .. } => mix(mix(23, *id), answers.len() as u64),
        Message::ReadIndexRequest { id, .. } => mix(24, *id),
        Message::ReadIndexResponse { id, index, .. } => mix(mix(25, *id), index.unwrap_or(0)),
    }
}

fn describe_message(message: &Message) -> String {
    match message {
        Message::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => format!(
            "AppendEntries prev {prev_log_index}/{prev_log_term} entries {}..{} commit {leader_commit}",
            entries.first().map_or(0, |entry| entry.index),
            entries.last().map_or(0, |entry| entry.index)
        ),
        Message::InstallSnapshot {
            snapshot,
            offset,
            data,
        } => format!(
            "InstallSnapshot {} at {offset} ({} of {} bytes)",
            snapshot.index,
            data.len(),
            snapshot.size_bytes
        ),
        other => format!("{other:?}"),
    }
}
