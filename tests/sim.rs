//! Seeded simulation of whole Raft clusters under faults (`raftfs::sim`).
//!
//! - `seeded_schedules`: the CI set, `CI_SCHEDULES` mixed-fault schedules
//!   (3- and 5-node) on every core (`CI_SCHEDULES_DEBUG` in a debug build).
//!   Modes by environment: `RAFTFS_SEED=<seed>` replays that one schedule
//!   with a step-by-step trace on stderr; `RAFTFS_SOAK=<secs>` runs random seeds for that long and
//!   prints how many ran; `RAFTFS_SIM_SCHEDULES=<n>` runs the first `n` CI
//!   seeds instead of `CI_SCHEDULES`. Every failure prints its seed.
//! - `same_seed_same_trace`: the simulator is deterministic.
//! - `checkers_catch_planted_violations`: each invariant function rejects a
//!   fabricated violation, so none can pass silently;
//!   `simulator_runs_the_checkers` plants observations inside a running
//!   simulator and expects the next steps to fail.

use bytes::Bytes;
use raftfs::raft::{Entry, HardState};
use raftfs::sim::{self, invariants, Failure, Sim, SimConfig, Stats};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Schedules in the CI set.
const CI_SCHEDULES: u64 = 5_000;
/// Schedules when built without optimisation (the core's `debug_assert!`s
/// are on then, and each schedule is several times slower).
const CI_SCHEDULES_DEBUG: u64 = 500;
/// Steps in each schedule's fault phase.
const FAULT_STEPS: u64 = 20_000;
/// The CI set is seeds `CI_SEED_BASE..CI_SEED_BASE + CI_SCHEDULES`.
const CI_SEED_BASE: u64 = 0;

fn config_for(seed: u64) -> SimConfig {
    SimConfig::mixed(seed, FAULT_STEPS)
}

fn threads() -> u64 {
    std::thread::available_parallelism()
        .map_or(2, |count| count.get() as u64)
        .clamp(1, 8)
}

/// Totals over many schedules.
#[derive(Default)]
struct Tally {
    schedules: u64,
    steps: u64,
    committed: u64,
    crashes: u64,
    partitions: u64,
    reads_served: u64,
    liveness_ticks_max: u64,
    with_snapshots: u64,
    snapshots: sim::SnapshotStats,
    failures: Vec<Failure>,
}

impl Tally {
    fn add(&mut self, outcome: Result<Stats, Failure>) {
        self.schedules += 1;
        match outcome {
            Ok(stats) => {
                self.steps += stats.steps;
                self.committed += stats.committed_entries;
                self.crashes += stats.crashes;
                self.partitions += stats.partitions;
                self.reads_served += stats.client.reads_served;
                self.liveness_ticks_max = self.liveness_ticks_max.max(stats.liveness_ticks);
                self.with_snapshots += (stats.snapshots.compactions > 0) as u64;
                add_snapshots(&mut self.snapshots, &stats.snapshots);
            }
            Err(failure) => {
                eprintln!("FAILED {failure}");
                self.failures.push(failure);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.schedules += other.schedules;
        self.steps += other.steps;
        self.committed += other.committed;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.reads_served += other.reads_served;
        self.liveness_ticks_max = self.liveness_ticks_max.max(other.liveness_ticks_max);
        self.with_snapshots += other.with_snapshots;
        add_snapshots(&mut self.snapshots, &other.snapshots);
        self.failures.extend(other.failures);
    }

    fn report(&self, what: &str, elapsed: Duration) {
        eprintln!(
            "{what}: {} schedules in {:.1}s ({} steps, {} committed entries, {} crashes, {} partitions, \
             {} reads served, slowest recovery {} ticks; {} with snapshots: {} compactions, {} chunks \
             sent, {} installed, {} out of order), {} failed",
            self.schedules,
            elapsed.as_secs_f64(),
            self.steps,
            self.committed,
            self.crashes,
            self.partitions,
            self.reads_served,
            self.liveness_ticks_max,
            self.with_snapshots,
            self.snapshots.compactions,
            self.snapshots.chunks_sent,
            self.snapshots.installed,
            self.snapshots.chunks_out_of_order,
            self.failures.len()
        );
        let mut seeds: Vec<u64> = self.failures.iter().map(|failure| failure.seed).collect();
        seeds.sort_unstable();
        assert!(
            self.failures.is_empty(),
            "{what}: failing seeds {seeds:?}; first: {}",
            self.failures
                .iter()
                .min_by_key(|failure| failure.seed)
                .map_or(String::new(), |f| f.to_string())
        );
    }
}

fn add_snapshots(total: &mut sim::SnapshotStats, more: &sim::SnapshotStats) {
    total.compactions += more.compactions;
    total.chunks_sent += more.chunks_sent;
    total.installed += more.installed;
    total.chunks_out_of_order += more.chunks_out_of_order;
}

/// Run `next_seed()` on every thread until it returns None.
fn run_parallel(next_seed: &(dyn Fn() -> Option<u64> + Sync)) -> Tally {
    let total = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        for _ in 0..threads() {
            scope.spawn(|| {
                let mut tally = Tally::default();
                while let Some(seed) = next_seed() {
                    tally.add(sim::run(seed, &config_for(seed)));
                }
                total.lock().expect("a worker panicked").merge(tally);
            });
        }
    });
    total.into_inner().expect("a worker panicked")
}

fn parse_seed(text: &str) -> u64 {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("RAFTFS_SEED={text:?} is not a number"))
}

#[test]
fn seeded_schedules() {
    if let Ok(text) = std::env::var("RAFTFS_SEED") {
        let seed = parse_seed(&text);
        let mut config = config_for(seed);
        config.verbose = true;
        eprintln!("replaying seed {seed} with {config:#?}");
        match sim::run(seed, &config) {
            Ok(stats) => eprintln!("seed {seed} passed: {stats:#?}"),
            Err(failure) => panic!("{failure}"),
        }
        return;
    }
    if let Ok(text) = std::env::var("RAFTFS_SOAK") {
        let seconds: u64 = text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RAFTFS_SOAK={text:?} is not seconds"));
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let counter = AtomicU64::new(0);
        let started = Instant::now();
        let tally = run_parallel(&|| {
            (Instant::now() < deadline)
                .then(|| base.wrapping_add(counter.fetch_add(1, Ordering::Relaxed)))
        });
        tally.report(&format!("soak from seed {base}"), started.elapsed());
        return;
    }
    let schedules = std::env::var("RAFTFS_SIM_SCHEDULES")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            CI_SCHEDULES_DEBUG
        } else {
            CI_SCHEDULES
        });
    let counter = AtomicU64::new(0);
    let started = Instant::now();
    let tally = run_parallel(&|| {
        let offset = counter.fetch_add(1, Ordering::Relaxed);
        (offset < schedules).then_some(CI_SEED_BASE + offset)
    });
    tally.report("CI schedules", started.elapsed());
    assert_eq!(tally.schedules, schedules);
}

#[test]
fn same_seed_same_trace() {
    for seed in [7, 8] {
        let first = sim::run(seed, &config_for(seed)).expect("schedule passes");
        let second = sim::run(seed, &config_for(seed)).expect("schedule passes");
        assert_eq!(first, second, "seed {seed} ran differently twice");
        assert!(first.steps >= FAULT_STEPS);
    }
    let other = sim::run(9, &config_for(7)).expect("schedule passes");
    let seven = sim::run(7, &config_for(7)).expect("schedule passes");
    assert_ne!(
        other.trace_hash, seven.trace_hash,
        "different seeds, same trace"
    );
}

#[test]
fn quiet_cluster_elects_and_commits() {
    for node_count in [3, 5] {
        let mut sim = Sim::new(1, SimConfig::quiet(node_count));
        let first = sim
            .propose_and_wait(Bytes::from_static(b"first"), 200)
            .expect("commits");
        let second = sim
            .propose_and_wait(Bytes::from_static(b"second"), 50)
            .expect("commits");
        assert!(second > first);
        assert!(sim.leader().is_some());
        let stats =
            sim::run(2, &SimConfig::quiet(node_count)).expect("liveness in a quiet cluster");
        assert!(stats.committed_entries >= 2, "{stats:?}");
    }
}

fn entry(index: u64, term: u64, data: &'static str) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::from_static(data.as_bytes()),
    }
}

#[test]
fn checkers_catch_planted_violations() {
    // Election Safety: two leaders observed in one term.
    let mut leaders = BTreeMap::new();
    assert_eq!(invariants::election_safety(&mut leaders, 3, 1), Ok(true));
    assert_eq!(invariants::election_safety(&mut leaders, 3, 1), Ok(false));
    assert!(invariants::election_safety(&mut leaders, 3, 2).is_err());
    assert_eq!(invariants::election_safety(&mut leaders, 4, 2), Ok(true));

    // Voting twice in one term, or a durable term going back.
    let voted = HardState {
        term: 5,
        vote: Some(1),
        ..HardState::default()
    };
    assert!(invariants::vote_once_per_term(
        2,
        &voted,
        &HardState {
            vote: Some(3),
            ..voted.clone()
        }
    )
    .is_err());
    assert!(invariants::vote_once_per_term(
        2,
        &voted,
        &HardState {
            vote: None,
            ..voted.clone()
        }
    )
    .is_err());
    assert!(invariants::vote_once_per_term(
        2,
        &voted,
        &HardState {
            term: 4,
            vote: None,
            ..voted.clone()
        }
    )
    .is_err());
    assert!(invariants::vote_once_per_term(
        2,
        &voted,
        &HardState {
            term: 6,
            vote: Some(3),
            ..voted.clone()
        }
    )
    .is_ok());

    // Log Matching: same (index, term), different data or different history.
    let mut positions = HashMap::new();
    let log_a = vec![entry(1, 1, "a"), entry(2, 2, "b")];
    assert!(invariants::log_matching(&mut positions, 1, &log_a, 1).is_ok());
    assert!(invariants::log_matching(&mut positions, 2, &log_a, 1).is_ok());
    let other_data = vec![entry(1, 1, "a"), entry(2, 2, "B")];
    assert!(invariants::log_matching(&mut positions, 2, &other_data, 2).is_err());
    let other_history = vec![entry(1, 2, "x"), entry(2, 2, "b")];
    assert!(invariants::log_matching(&mut positions, 3, &other_history, 1).is_err());
    let decreasing = vec![entry(1, 3, "p"), entry(2, 2, "q")];
    assert!(invariants::log_matching(&mut HashMap::new(), 3, &decreasing, 1).is_err());

    // State Machine Safety: two nodes apply different entries at one index;
    // and one node applying out of order.
    let mut committed = BTreeMap::new();
    assert_eq!(
        invariants::state_machine_safety(&mut committed, 1, 2, 0, &entry(1, 1, "a")),
        Ok(true)
    );
    assert_eq!(
        invariants::state_machine_safety(&mut committed, 2, 2, 0, &entry(1, 1, "a")),
        Ok(false)
    );
    assert!(invariants::state_machine_safety(&mut committed, 3, 2, 0, &entry(1, 2, "z")).is_err());
    assert!(invariants::state_machine_safety(&mut committed, 1, 2, 1, &entry(3, 1, "c")).is_err());
    assert!(
        invariants::apply_from_own_log(1, &entry(1, 1, "a"), Some(&entry(1, 1, "b")), 1).is_err()
    );
    assert!(
        invariants::apply_from_own_log(1, &entry(2, 1, "a"), Some(&entry(2, 1, "a")), 1).is_err()
    );
    assert!(
        invariants::apply_from_own_log(1, &entry(1, 1, "a"), Some(&entry(1, 1, "a")), 1).is_ok()
    );

    // Leader Completeness: a later leader missing a committed entry (index 1
    // was committed in term 2, first applied by node 1).
    assert!(invariants::leader_completeness(&committed, 2, 3, &[entry(1, 1, "a")]).is_ok());
    assert!(invariants::leader_completeness(&committed, 2, 3, &[]).is_err());
    assert!(invariants::leader_completeness(&committed, 2, 3, &[entry(1, 3, "a")]).is_err());
    // A stale leader of an earlier term owes nothing.
    assert!(invariants::leader_completeness(&committed, 2, 1, &[]).is_ok());

    // Commit index going back within one lifetime.
    assert!(invariants::commit_index_monotonic(1, 5, 4).is_err());
    assert!(invariants::commit_index_monotonic(1, 5, 5).is_ok());

    // A read served below a commit observed before it was requested.
    assert!(invariants::read_linearizable(7, 1, 10, 9).is_err());
    assert!(invariants::read_linearizable(7, 1, 10, 10).is_ok());
}

#[test]
fn snapshot_checkers_catch_planted_violations() {
    let data = |text: &'static str| Bytes::from_static(text.as_bytes());
    let mut committed = BTreeMap::new();
    for (index, text) in [(1, "a"), (2, "b"), (3, "c")] {
        let entry = entry(index, 1, text);
        invariants::state_machine_safety(&mut committed, 1, 1, index - 1, &entry)
            .expect("first applies");
    }
    let prefix = [data("a"), data("b")];
    assert!(invariants::snapshot_matches_committed(&committed, 2, (2, 1), &prefix).is_ok());
    // Wrong data, wrong term at the last index, a short body, an index no
    // node applied.
    let wrong = [data("a"), data("x")];
    assert!(invariants::snapshot_matches_committed(&committed, 2, (2, 1), &wrong).is_err());
    assert!(invariants::snapshot_matches_committed(&committed, 2, (2, 2), &prefix).is_err());
    assert!(invariants::snapshot_matches_committed(&committed, 2, (3, 1), &prefix).is_err());
    let long = [data("a"), data("b"), data("c"), data("d")];
    assert!(invariants::snapshot_matches_committed(&committed, 2, (4, 1), &long).is_err());
    // Checking from index 2 on still sees index 2.
    assert!(invariants::snapshot_matches_committed_from(&committed, 2, (2, 1), &wrong, 2).is_err());

    // Leader Completeness over a compacted log: positions in the snapshot are
    // read from its applied sequence.
    let tail = [entry(3, 1, "c")];
    let view = |applied: &'static [Bytes], entries: &'static [Entry]| invariants::LogView {
        snapshot_index: 2,
        snapshot_term: 1,
        snapshot_applied: applied,
        entries,
    };
    static GOOD: [Bytes; 2] = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
    static BAD: [Bytes; 2] = [Bytes::from_static(b"a"), Bytes::from_static(b"x")];
    let tail: &'static [Entry] = Box::leak(Box::new(tail));
    assert!(invariants::leader_completeness_view(&committed, 3, 2, view(&GOOD, tail)).is_ok());
    assert!(invariants::leader_completeness_view(&committed, 3, 2, view(&BAD, tail)).is_err());
    assert!(invariants::leader_completeness_view(&committed, 3, 2, view(&GOOD, &[])).is_err());

    // Log Matching after a snapshot: the first entry's predecessor is the
    // snapshot's last entry.
    let mut positions = HashMap::new();
    assert!(
        invariants::log_matching_after(&mut positions, 1, (2, 1), &[entry(3, 1, "c")], 3).is_ok()
    );
    assert!(
        invariants::log_matching_after(&mut positions, 2, (2, 2), &[entry(3, 2, "c")], 3).is_ok()
    );
    // Same (index, term) after a different predecessor term.
    assert!(
        invariants::log_matching_after(&mut positions, 3, (2, 1), &[entry(3, 2, "c")], 3).is_err()
    );
    // Terms may not decrease from the snapshot's.
    assert!(
        invariants::log_matching_after(&mut positions, 3, (2, 3), &[entry(3, 2, "c")], 3).is_err()
    );
}

/// The failure report names the seed and the step, so a red CI run can be
/// replayed.
#[test]
fn failure_names_seed_and_step() {
    let failure = Failure {
        seed: 1234,
        step: 56,
        time_us: 7 * sim::TICK_US,
        message: "boom".to_string(),
    };
    let text = failure.to_string();
    assert!(
        text.contains("seed 1234") && text.contains("step 56") && text.contains("RAFTFS_SEED=1234"),
        "{text}"
    );
}

/// The simulator really consults the checkers: plant a second leader for the
/// current term, or a different entry at the next index to commit, and the
/// run must fail with that property's name.
#[test]
fn simulator_runs_the_checkers() {
    let mut sim = Sim::new(3, SimConfig::quiet(3));
    sim.propose_and_wait(Bytes::from_static(b"w1"), 200)
        .expect("commits");
    let leader = sim.leader().expect("a leader");
    let term = sim
        .observations_mut()
        .leaders
        .keys()
        .next_back()
        .copied()
        .expect("a term");
    sim.observations_mut().leaders.insert(term, leader % 3 + 1);
    let failure = (0..1_000)
        .find_map(|_| sim.step().err())
        .expect("the planted leader is noticed");
    assert!(failure.message.contains("Election Safety"), "{failure}");

    let mut sim = Sim::new(4, SimConfig::quiet(3));
    let index = sim
        .propose_and_wait(Bytes::from_static(b"w1"), 200)
        .expect("commits");
    sim.observations_mut().committed.insert(
        index + 1,
        invariants::CommittedEntry {
            term: 99,
            data: Bytes::from_static(b"planted"),
            commit_term: 99,
            first_applied_by: 9,
        },
    );
    let failure = sim
        .propose_and_wait(Bytes::from_static(b"w2"), 200)
        .expect_err("the planted entry is noticed");
    assert!(
        failure.message.contains("State Machine Safety"),
        "{failure}"
    );
}
