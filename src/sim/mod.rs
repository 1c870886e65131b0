//! Deterministic simulator: N Raft nodes, a seeded network and disks, one clock.
//!
//! One `Pcg64` seeded from the schedule's seed drives everything: message
//! delays and losses, when disks sync, which node a client talks to, which
//! fault strikes, each node's election RNG seed. Time is simulated
//! microseconds; events (a node's tick, a message arriving, a disk sync, a
//! client operation, a fault, a restart) wait in one queue ordered by
//! `(time, sequence)`. Each step pops one event and handles it; then the
//! invariants (`invariants.rs`) are checked, so a violation is reported at the
//! step that caused it, with the seed.
//!
//! A schedule has two phases. The fault phase runs `fault_steps` steps with
//! client traffic and faults (crashes, partitions, loss, duplication,
//! reordering, slow disks, leadership transfers). Then the liveness phase
//! heals the network, stops loss, restarts every node and requires a leader
//! within `liveness_ticks_max` ticks, then a fresh proposal applied on every
//! node and a served read within that plus `catch_up_ticks_per_entry` per
//! entry of the longest log (the backlog a slow network has to ship), and
//! within `LIVENESS_STEPS_MAX` steps.
//!
//! The executor (`executor.rs`) follows `raft::action`'s contract: actions in
//! order; sends held until every earlier persist is synced (optionally except
//! a leader's appends, thesis §10.2.1); `persisted` after a sync; applies
//! handed to the state machine (the applied sequence of entry data) once, in
//! order. After every step each running node's `last_index` and `hard_state`
//! must equal what it asked to persist, so a state change that skips its
//! persist action is caught.
//! Snapshots (`snapshot.rs`): with `compact_every_entries` set, each node
//! snapshots its applied sequence at random points and compacts; leaders
//! stream snapshots to followers whose entries are gone, under the same loss,
//! crashes and partitions; restarts load the durable snapshot. Every snapshot
//! taken or installed must hold exactly the committed sequence through its
//! index, and Leader Completeness reads compacted positions from it.
//! Left out: membership change, lost data dirs (incarnation refusal is tested
//! in the Raft core's own tests), the fs state machine (`lincheck` covers it).

pub mod config;
pub mod disk;
pub mod history;
pub mod invariants;
pub mod net;

mod driver;
mod executor;
mod snapshot;

pub use config::{DiskConfig, FaultWeights, NetConfig, RaftKnobs, SimConfig, TICK_US};
pub use history::{ClientCounts, History};
pub use net::NetStats;

use crate::raft::{Envelope, Index, Message, Node, NodeId, Role};
use bytes::Bytes;
use disk::Disk;
use invariants::Observations;
use net::Net;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::panic::AssertUnwindSafe;

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
    pub partitions: u64,
    /// Distinct `(term, leader)` pairs observed.
    pub leaders_elected: u64,
    pub max_term: u64,
    pub committed_entries: u64,
    pub client: ClientCounts,
    /// Snapshots taken (log compactions), chunks sent, snapshots installed.
    pub snapshots: SnapshotStats,
    /// Ticks from the end of the fault phase until the liveness checks passed.
    pub liveness_ticks: u64,
    /// Hash of every event and every node's visible state after each step.
    pub trace_hash: u64,
}

/// Snapshot activity over a schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub compactions: u64,
    pub chunks_sent: u64,
    pub installed: u64,
    /// Transfers resumed from a smaller offset or chunks that arrived out
    /// of order (a restarted receiver, loss, reordering).
    pub chunks_out_of_order: u64,
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
    Tick { node: usize, generation: u64 },
    Deliver(Envelope),
    Sync { node: usize, generation: u64 },
    Restart { node: usize, generation: u64 },
    Client,
    Fault,
}

/// One simulated machine: the Raft node (None while crashed), its disk, and
/// the executor state around it.
struct SimNode {
    id: NodeId,
    raft: Option<Node>,
    disk: Disk,
    /// Sends waiting for the sync of the persists emitted before them.
    held_sends: Vec<Envelope>,
    sync_scheduled: bool,
    /// Bumped by each crash; events of an older lifetime are ignored.
    generation: u64,
    /// The state machine: data of every applied entry, index `i` at `i - 1`.
    applied: Vec<Bytes>,
    /// Reads that are ready at an index not yet applied: `(id, index)`.
    reads_waiting: Vec<(u64, Index)>,
    commit_index_seen: Index,
    tick_period_us: u64,
    /// A paused node (a stopped process, a long GC) neither ticks nor
    /// handles messages or syncs before this time; what arrives waits.
    paused_until_us: u64,
    /// The InstallSnapshot being received, in memory (lost on a crash).
    incoming: Option<snapshot::Incoming>,
    /// Every snapshot this lifetime took, installed or restored, by index.
    /// A transfer may still name one replaced since (the replica keeps its
    /// file open); its bytes are a prefix of the current snapshot's, as the
    /// applied sequence only grows.
    snapshots_held: BTreeMap<Index, crate::raft::SnapshotMeta>,
    /// Compact once the applied index reaches this.
    compact_at: Index,
}

impl SimNode {
    fn is_up(&self) -> bool {
        self.raft.is_some()
    }

    fn synced_term(&self) -> crate::raft::Term {
        self.disk.synced_term()
    }

    fn is_leader(&self) -> bool {
        self.raft
            .as_ref()
            .is_some_and(|raft| raft.role() == Role::Leader)
    }
}

/// The liveness phase's progress.
#[derive(Debug, Default)]
struct Liveness {
    started_us: u64,
    probes: u64,
    /// `(node, term, index, data, proposed_us)` of the current probe.
    probe: Option<(usize, u64, Index, Bytes, u64)>,
    leader_seen: bool,
    write_done: bool,
    /// `(id, requested_us)` of the liveness read.
    read: Option<(u64, u64)>,
    done: bool,
}

pub struct Sim {
    seed: u64,
    config: SimConfig,
    rng: Pcg64,
    now_us: u64,
    step: u64,
    queue: BTreeMap<(u64, u64), Event>,
    event_sequence: u64,
    nodes: Vec<SimNode>,
    members: Vec<NodeId>,
    net: Net,
    history: History,
    observations: Observations,
    /// Highest index applied anywhere so far.
    applied_max: Index,
    fault_phase: bool,
    liveness: Liveness,
    write_sequence: u64,
    read_sequence: u64,
    faults: u64,
    crashes: u64,
    partitions: u64,
    trace_hash: u64,
    snapshot_stats: SnapshotStats,
    action_buffer: Vec<crate::raft::Action>,
}

/// Run one schedule. Panics inside the Raft core are caught and reported as
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
/// the simulated time (a core that floods messages must not hang the tests).
pub const LIVENESS_STEPS_MAX: u64 = 300_000;

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl Sim {
    /// A cluster of `config.node_count` fresh nodes with their first ticks,
    /// client operations and faults scheduled.
    pub fn new(seed: u64, config: SimConfig) -> Sim {
        let mut rng = Pcg64::seed_from_u64(seed);
        let members: Vec<NodeId> = (1..=config.node_count as NodeId).collect();
        let net = Net::new(config.net.clone());
        let mut sim = Sim {
            seed,
            rng: Pcg64::seed_from_u64(0),
            now_us: 0,
            step: 0,
            queue: BTreeMap::new(),
            event_sequence: 0,
            nodes: Vec::new(),
            members: members.clone(),
            net,
            history: History::default(),
            observations: Observations::default(),
            applied_max: 0,
            fault_phase: config.fault_steps > 0,
            liveness: Liveness::default(),
            write_sequence: 0,
            read_sequence: 0,
            faults: 0,
            crashes: 0,
            partitions: 0,
            trace_hash: FNV_OFFSET,
            snapshot_stats: SnapshotStats::default(),
            action_buffer: Vec::new(),
            config,
        };
        for &id in &members {
            let skew = sim.config.tick_skew_per_mille;
            let per_mille = 1_000 + rng.gen_range(0..=2 * skew) - skew;
            sim.nodes.push(SimNode {
                id,
                raft: None,
                disk: Disk::new(),
                held_sends: Vec::new(),
                sync_scheduled: false,
                generation: 0,
                applied: Vec::new(),
                reads_waiting: Vec::new(),
                commit_index_seen: 0,
                paused_until_us: 0,
                tick_period_us: TICK_US * per_mille / 1_000,
                incoming: None,
                snapshots_held: BTreeMap::new(),
                compact_at: 0,
            });
        }
        sim.rng = rng;
        for index in 0..sim.nodes.len() {
            sim.start_node(index);
        }
        if sim.fault_phase && sim.config.client_gap_us_mean > 0 {
            let gap = sim.gap_us(sim.config.client_gap_us_mean);
            sim.schedule(gap, Event::Client);
        }
        if sim.fault_phase && sim.config.fault_gap_us_mean > 0 && sim.config.faults.total() > 0 {
            let gap = sim.gap_us(sim.config.fault_gap_us_mean);
            sim.schedule(gap, Event::Fault);
        }
        sim
    }

    /// Run the fault phase, then the liveness phase.
    pub fn run_schedule(&mut self) -> Result<Stats, Failure> {
        while self.step < self.config.fault_steps {
            self.step()?;
        }
        self.begin_liveness();
        // A leader must appear within `liveness_ticks_max`; replication of the
        // backlog left by the fault phase may take longer on a slow network,
        // so the probe's deadline grows with the longest log.
        let backlog = self
            .nodes
            .iter()
            .map(|node| node.disk.last_index())
            .max()
            .unwrap_or(0);
        let leader_deadline_us = self.now_us + self.config.liveness_ticks_max * TICK_US;
        let deadline_us =
            leader_deadline_us + self.config.catch_up_ticks_per_entry * backlog * TICK_US;
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
                    "liveness: {} within {} ticks of healing (backlog {backlog} entries, probes {}, \
                     write done {}); {summary}",
                    if late_leader {
                        "no leader"
                    } else if too_many_steps {
                        "still busy after LIVENESS_STEPS_MAX steps"
                    } else {
                        "no fresh proposal applied everywhere and read served"
                    },
                    (self.now_us - self.liveness.started_us) / TICK_US,
                    self.liveness.probes,
                    self.liveness.write_done
                )));
            }
            self.step()?;
        }
        Ok(self.stats())
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

    /// Propose `data` at the leader (electing one first if needed) and run
    /// until the leader applies it. For benchmarks and quiet tests.
    pub fn propose_and_wait(&mut self, data: Bytes, ticks_max: u64) -> Result<Index, Failure> {
        let deadline_us = self.now_us + ticks_max * TICK_US;
        while self.now_us <= deadline_us {
            if let Some(leader) = self.leader_position() {
                let proposed = self.nodes[leader]
                    .raft
                    .as_mut()
                    .map(|raft| raft.propose(data.clone()));
                if let Some(Ok(index)) = proposed {
                    self.run_node(leader)
                        .map_err(|message| self.failure(message))?;
                    while self.now_us <= deadline_us {
                        let node = &self.nodes[leader];
                        if !node.is_up() {
                            break;
                        }
                        if node.applied.get(index as usize - 1) == Some(&data) {
                            return Ok(index);
                        }
                        self.step()?;
                    }
                    continue;
                }
            }
            self.step()?;
        }
        Err(self.failure(format!("proposal not applied within {ticks_max} ticks")))
    }

    pub fn stats(&self) -> Stats {
        Stats {
            seed: self.seed,
            node_count: self.nodes.len(),
            steps: self.step,
            simulated_ticks: self.now_us / TICK_US,
            net: self.net.stats.clone(),
            faults: self.faults,
            crashes: self.crashes,
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
            client: self.history.counts.clone(),
            snapshots: self.snapshot_stats.clone(),
            liveness_ticks: if self.liveness.done {
                (self.now_us - self.liveness.started_us) / TICK_US
            } else {
                0
            },
            trace_hash: self.trace_hash,
        }
    }

    /// The invariants' observation state, for tests that plant a violation
    /// and expect the simulator to report it.
    pub fn observations_mut(&mut self) -> &mut Observations {
        &mut self.observations
    }

    pub fn history(&self) -> &History {
        &self.history
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

    fn raft_config(&mut self, index: usize) -> crate::raft::Config {
        let knobs = &self.config.raft;
        crate::raft::Config {
            id: self.nodes[index].id,
            members: self.members.clone(),
            incarnation: incarnation_of(self.nodes[index].id),
            election_timeout_ticks: knobs.election_timeout_ticks,
            heartbeat_ticks: knobs.heartbeat_ticks,
            inflight_appends_max: knobs.inflight_appends_max,
            append_bytes_max: knobs.append_bytes_max,
            pre_vote: knobs.pre_vote,
            check_quorum: knobs.check_quorum,
            seed: self.rng.gen(),
        }
    }

    /// Boot (or reboot) a node from its disk and start its tick chain.
    fn start_node(&mut self, index: usize) {
        let config = self.raft_config(index);
        let restored = self.nodes[index].disk.restored();
        self.nodes[index].raft = Some(Node::new(config, restored));
        self.nodes[index].applied = self.nodes[index].disk.restored_applied();
        self.schedule_compaction(index);
        let period = self.nodes[index].tick_period_us;
        let first = self.rng.gen_range(0..period);
        let generation = self.nodes[index].generation;
        self.schedule(
            first,
            Event::Tick {
                node: index,
                generation,
            },
        );
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick { node, generation } => {
                let sim_node = &mut self.nodes[node];
                if sim_node.generation != generation {
                    return Ok(());
                }
                let period = sim_node.tick_period_us;
                if sim_node.paused_until_us > self.now_us {
                    // A stopped process misses its ticks.
                    let resume = sim_node.paused_until_us - self.now_us;
                    self.schedule(resume.max(period), Event::Tick { node, generation });
                    return Ok(());
                }
                let Some(raft) = sim_node.raft.as_mut() else {
                    return Ok(());
                };
                raft.tick();
                self.schedule(period, Event::Tick { node, generation });
                self.run_node(node)
            }
            Event::Deliver(envelope) => self.deliver(envelope),
            Event::Sync { node, generation } => {
                if self.nodes[node].generation != generation || !self.nodes[node].is_up() {
                    return Ok(());
                }
                if let Some(resume) = self.pause_left_us(node) {
                    self.schedule(resume, Event::Sync { node, generation });
                    return Ok(());
                }
                self.sync_node(node)?;
                self.run_node(node)
            }
            Event::Restart { node, generation } => {
                if self.nodes[node].generation == generation && !self.nodes[node].is_up() {
                    self.restart_node(node)?;
                }
                Ok(())
            }
            Event::Client => {
                if !self.fault_phase {
                    return Ok(());
                }
                let gap = self.gap_us(self.config.client_gap_us_mean);
                self.schedule(gap.max(1), Event::Client);
                self.client_operation()
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

    fn deliver(&mut self, envelope: Envelope) -> Result<(), String> {
        let to = envelope.to;
        let Some(index) = self.position_of(to) else {
            return Err(format!("message addressed to unknown node {to}"));
        };
        if !self.net.admits(envelope.from, to) {
            return Ok(());
        }
        if let Some(resume) = self.pause_left_us(index) {
            // Waits in the socket buffer of a stopped process; taken in some
            // order soon after it resumes.
            let jitter = self.rng.gen_range(0..=TICK_US / 2);
            self.schedule(resume + jitter, Event::Deliver(envelope));
            return Ok(());
        }
        let Some(raft) = self.nodes[index].raft.as_mut() else {
            return Ok(());
        };
        if let Err(error) = raft.step(envelope) {
            return Err(format!(
                "node {to} refused a message the simulator never forges: {error:?}"
            ));
        }
        self.run_node(index)
    }

    /// Put an envelope on the wire now.
    fn send(&mut self, envelope: Envelope) {
        let delays = self.net.route(&mut self.rng, envelope.from, envelope.to);
        for delay in delays {
            self.schedule(delay, Event::Deliver(envelope.clone()));
        }
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
                    .raft
                    .as_ref()
                    .map_or(0, |raft| raft.term())
            })
    }

    /// Properties checked after every step on every running node.
    fn check_after_step(&mut self) -> Result<(), String> {
        let mut state_hash = self.trace_hash;
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let Some(raft) = node.raft.as_ref() else {
                state_hash = mix(state_hash, 0xdead);
                continue;
            };
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
            invariants::commit_index_monotonic(node.id, node.commit_index_seen, commit_index)?;
            node.commit_index_seen = commit_index;
            if node.applied.len() as Index > commit_index {
                return Err(format!(
                    "node {} applied {} entries but its commit index is {commit_index}",
                    node.id,
                    node.applied.len()
                ));
            }
            if last_index != node.disk.last_index() {
                return Err(format!(
                    "node {} reports last index {last_index} but asked to persist a log through {}",
                    node.id,
                    node.disk.last_index()
                ));
            }
            if raft.snapshot().index != node.disk.snapshot_index() {
                return Err(format!(
                    "node {} holds snapshot {:?} but stored snapshot {}",
                    node.id,
                    raft.snapshot(),
                    node.disk.snapshot_index()
                ));
            }
            if raft.hard_state() != node.disk.hard_state() {
                return Err(format!(
                    "node {} holds hard state {:?} but asked to persist {:?}",
                    node.id,
                    raft.hard_state(),
                    node.disk.hard_state()
                ));
            }
            if role == Role::Leader {
                let id = node.id;
                if invariants::election_safety(&mut self.observations.leaders, term, id)? {
                    invariants::leader_completeness_view(
                        &self.observations.committed,
                        id,
                        term,
                        self.nodes[index].disk.view(),
                    )?;
                }
            }
        }
        self.trace_hash = state_hash;
        Ok(())
    }

    fn hash_event(&mut self, event: &Event) {
        let mut hash = mix(mix(self.trace_hash, self.step), self.now_us);
        hash = match event {
            Event::Tick { node, generation } => mix(mix(mix(hash, 1), *node as u64), *generation),
            Event::Deliver(envelope) => {
                let detail = match &envelope.message {
                    Message::AppendEntries {
                        prev_log_index,
                        entries,
                        leader_commit,
                        ..
                    } => mix(mix(*prev_log_index, entries.len() as u64), *leader_commit),
                    Message::AppendEntriesResponse {
                        success,
                        match_index,
                        ..
                    } => mix(*success as u64, *match_index),
                    Message::InstallSnapshot {
                        snapshot,
                        offset,
                        data,
                    } => mix(mix(snapshot.index, *offset), data.len() as u64),
                    other => message_code(other),
                };
                mix(
                    mix(mix(mix(hash, 2), envelope.from), envelope.to),
                    mix(envelope.term, detail),
                )
            }
            Event::Sync { node, generation } => mix(mix(mix(hash, 3), *node as u64), *generation),
            Event::Restart { node, generation } => {
                mix(mix(mix(hash, 4), *node as u64), *generation)
            }
            Event::Client => mix(hash, 5),
            Event::Fault => mix(hash, 6),
        };
        self.trace_hash = hash;
    }

    fn describe(&self, event: &Event) -> String {
        let what = match event {
            Event::Tick { node, .. } => format!("tick node {}", self.nodes[*node].id),
            Event::Deliver(envelope) => format!(
                "deliver {} -> {} term {}: {}",
                envelope.from,
                envelope.to,
                envelope.term,
                describe_message(&envelope.message)
            ),
            Event::Sync { node, .. } => format!("sync node {}", self.nodes[*node].id),
            Event::Restart { node, .. } => format!("restart node {}", self.nodes[*node].id),
            Event::Client => "client operation".to_string(),
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

    /// One line per node: role, term, commit and last index, applied count.
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        for node in &self.nodes {
            match node.raft.as_ref() {
                Some(raft) => parts.push(format!(
                    "node {}: {:?} term {} leader {:?} snapshot {} commit {} last {} applied {}",
                    node.id,
                    raft.role(),
                    raft.term(),
                    raft.leader_id(),
                    raft.snapshot().index,
                    raft.commit_index(),
                    raft.last_index(),
                    node.applied.len()
                )),
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

/// Each node keeps one data dir (and so one incarnation) for the whole run.
fn incarnation_of(id: NodeId) -> u64 {
    0x1_0000 + id
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
        Message::AppendEntries { .. } => 15,
        Message::AppendEntriesResponse { .. } => 16,
        Message::Heartbeat { read_round, .. } => 17 + 100 * read_round,
        Message::HeartbeatResponse { read_round } => 18 + 100 * read_round,
        Message::TimeoutNow => 19,
        Message::InstallSnapshot { offset, .. } => 20 + 100 * offset,
        Message::InstallSnapshotResponse { next_offset, .. } => 21 + 100 * next_offset,
    }
}

fn describe_message(message: &Message) -> String {
    match message {
        Message::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => format!(
            "AppendEntries prev {prev_log_index}/{prev_log_term} entries {}..{} commit {leader_commit}",
            entries.first().map_or(0, |entry| entry.index),
            entries.last().map_or(0, |entry| entry.index)
        ),
        other => format!("{other:?}"),
    }
}
