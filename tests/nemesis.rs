//! Jepsen-style nemesis tests over real `raftfs node` processes (issue 7).
//!
//! Clients run a mixed workload (write, cas, delete, read) on a few hot files
//! while a nemesis injects faults from a seeded schedule: kill -9 (with the
//! lost-fsync mode: what was not fsynced is thrown away, as after a power
//! failure), SIGSTOP/SIGCONT, majority/minority partitions, one-way cuts,
//! delays and link resets through a TCP proxy in front of every peer port.
//! Then everything heals and the test requires: a leader again, every node's
//! file map equal (the `fsm.checksum` dump), no node that died by itself, no
//! panic in any log, and a linearizable history (`raftfs::lincheck`).
//!
//! CI runs two short schedules (about 2 minutes in all). Longer runs:
//! `RAFTFS_NEMESIS_SECS=600 cargo test --release --test nemesis`;
//! `RAFTFS_NEMESIS_SEED=n` replays a schedule's fault choices (the timing of
//! real processes is not replayable).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use common::diagnose;
use common::faults::FaultCounts;
use common::worker::{Worker, WorkerStats};
use raftfs::lincheck::{self, History, Op, Verdict};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

const WORKERS: u64 = 4;
/// Operations a schedule records at most (about; see the pacing below).
const OPERATIONS_PER_RUN_MAX: u64 = 120_000;

/// Fault tests share two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn schedule_secs(default_secs: u64) -> u64 {
    std::env::var("RAFTFS_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs)
}

fn schedule_seed(default_seed: u64) -> u64 {
    std::env::var("RAFTFS_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Crash,
    CrashLeader,
    Pause,
    PauseLeader,
    Partition,
    IsolateLeader,
    OneWayCut,
    Delay,
    LinkReset,
    CrashDuringPartition,
}

const ALL_FAULTS: [Fault; 10] = [
    Fault::Crash,
    Fault::CrashLeader,
    Fault::Pause,
    Fault::PauseLeader,
    Fault::Partition,
    Fault::IsolateLeader,
    Fault::OneWayCut,
    Fault::Delay,
    Fault::LinkReset,
    Fault::CrashDuringPartition,
];

struct Report {
    faults: FaultCounts,
    operations_checked: usize,
    stats: WorkerStats,
    elapsed: Duration,
}

/// A quick guess at the leader (one short probe per node); None if unsure.
fn quick_leader(cluster: &Cluster) -> Option<u64> {
    cluster.wait_leader(Duration::from_millis(400))
}

fn random_node(cluster: &Cluster, rng: &mut Pcg64Mcg) -> u64 {
    rng.gen_range(1..=cluster.options.size as u64)
}

/// A random minority of the cluster (at least one node).
fn random_minority(cluster: &Cluster, rng: &mut Pcg64Mcg) -> Vec<u64> {
    let mut ids: Vec<u64> = cluster.ids().collect();
    ids.shuffle(rng);
    let count = rng.gen_range(1..=cluster.options.size / 2);
    ids.truncate(count);
    ids
}

fn inject(cluster: &mut Cluster, fault: Fault, rng: &mut Pcg64Mcg) {
    let hold = Duration::from_millis(rng.gen_range(300..1_800));
    match fault {
        Fault::Crash | Fault::CrashLeader => {
            let id = match fault {
                Fault::CrashLeader => {
                    quick_leader(cluster).unwrap_or_else(|| random_node(cluster, rng))
                }
                _ => random_node(cluster, rng),
            };
            cluster.kill(id);
            std::thread::sleep(hold);
            cluster.start_node(id);
        }
        Fault::Pause | Fault::PauseLeader => {
            let id = match fault {
                Fault::PauseLeader => {
                    quick_leader(cluster).unwrap_or_else(|| random_node(cluster, rng))
                }
                _ => random_node(cluster, rng),
            };
            cluster.pause(id);
            std::thread::sleep(hold);
            cluster.resume(id);
        }
        Fault::Partition => {
            let side = random_minority(cluster, rng);
            cluster.partition(&side);
            std::thread::sleep(hold);
            cluster.heal();
        }
        Fault::IsolateLeader => {
            let id = quick_leader(cluster).unwrap_or_else(|| random_node(cluster, rng));
            cluster.partition(&[id]);
            std::thread::sleep(hold);
            cluster.heal();
        }
        Fault::OneWayCut => {
            // Often from the leader: it then hears its followers but cannot
            // reach some (or they hear it and cannot answer).
            let leader = quick_leader(cluster);
            let a = match leader {
                Some(id) if rng.gen_bool(0.5) => id,
                _ => random_node(cluster, rng),
            };
            let mut others: Vec<u64> = cluster.ids().filter(|&b| b != a).collect();
            others.shuffle(rng);
            let count = rng.gen_range(1..=others.len());
            for &b in &others[..count] {
                if rng.gen_bool(0.5) {
                    cluster.cut_one_way(a, b);
                } else {
                    cluster.cut_one_way(b, a);
                }
            }
            std::thread::sleep(hold);
            cluster.heal();
        }
        Fault::Delay => {
            for a in cluster.ids() {
                for b in cluster.ids() {
                    if a != b && rng.gen_bool(0.4) {
                        let delay_ms = rng.gen_range(5..120);
                        cluster.delay_link(a, b, delay_ms);
                    }
                }
            }
            std::thread::sleep(hold);
            cluster.heal();
        }
        Fault::LinkReset => {
            for _ in 0..rng.gen_range(1..4) {
                let a = random_node(cluster, rng);
                let b = random_node(cluster, rng);
                if a != b {
                    cluster.reset_link(a, b);
                }
            }
        }
        Fault::CrashDuringPartition => {
            let side = random_minority(cluster, rng);
            cluster.partition(&side);
            let id = random_node(cluster, rng);
            cluster.kill(id);
            std::thread::sleep(hold);
            cluster.heal();
        }
    }
}

/// Nodes that exited by themselves (never part of the schedule): a bug.
fn self_exited(cluster: &mut Cluster) -> Vec<String> {
    let mut found = Vec::new();
    for id in cluster.ids() {
        if let Some(child) = cluster.children[id as usize - 1].as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = cluster.log_text(id);
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                found.push(format!("node {id} exited with {status}: {tail:?}"));
                cluster.children[id as usize - 1] = None;
            }
        }
    }
    found
}

fn run_schedule(
    name: &str,
    options: Options,
    faults: &[Fault],
    default_secs: u64,
    seed: u64,
) -> Report {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let seed = schedule_seed(seed);
    let duration = Duration::from_secs(schedule_secs(default_secs));
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut cluster = Cluster::start(options);
    cluster
        .wait_leader(Duration::from_secs(10))
        .expect("a first leader");
    let files: Vec<Vec<u8>> = (0..3).map(|i| format!("hot-{i}").into_bytes()).collect();
    let history = Arc::new(Mutex::new(History::new()));
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // The checker's memory grows with (operations per file)^2 for valid
    // histories: pace long runs to about OPERATIONS_PER_RUN_MAX in all.
    let interval = Duration::from_secs_f64(
        duration.as_secs_f64() * WORKERS as f64 / OPERATIONS_PER_RUN_MAX as f64,
    );
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| {
            let mut worker = Worker::new(
                id,
                cluster.client_addresses(),
                files.clone(),
                history.clone(),
                origin,
                seed,
            );
            worker.interval = interval;
            let stop = stop.clone();
            std::thread::spawn(move || worker.run(stop))
        })
        .collect();

    let mut unexpected_exits = Vec::new();
    let deadline = Instant::now() + duration;
    let mut schedule = Vec::new();
    while Instant::now() < deadline {
        let fault = faults[rng.gen_range(0..faults.len())];
        schedule.push(fault);
        inject(&mut cluster, fault, &mut rng);
        unexpected_exits.extend(self_exited(&mut cluster));
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..700)));
    }
    cluster.heal();
    // Let the workers see the healed cluster for a moment, then stop them.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let mut stats = WorkerStats::default();
    for worker in workers {
        stats.add(&worker.join().expect("worker thread"));
    }
    unexpected_exits.extend(self_exited(&mut cluster));
    assert!(
        unexpected_exits.is_empty(),
        "{name}: nodes died by themselves: {unexpected_exits:#?}"
    );

    let leader = cluster.wait_leader(Duration::from_secs(15));
    assert!(leader.is_some(), "{name}: no leader after healing");
    // Final reads of every hot file, recorded: the end state must fit too.
    let mut reader = Worker::new(
        99,
        cluster.client_addresses(),
        files.clone(),
        history.clone(),
        origin,
        seed,
    );
    for file in &files {
        for _ in 0..20 {
            if reader
                .run_op(Op::Read { name: file.clone() })
                .is_some_and(|o| o != lincheck::Outcome::Indeterminate)
            {
                break;
            }
        }
    }
    let converged = cluster.wait_converged(Duration::from_secs(20));
    let checksum = match converged {
        Ok(checksum) => checksum,
        Err(problem) => panic!("{name}: {problem}"),
    };
    for id in cluster.ids() {
        let log = cluster.log_text(id);
        assert!(
            !log.contains("panicked"),
            "{name}: node {id} panicked:\n{log}"
        );
    }
    assert!(
        stats.unexpected.is_empty(),
        "{name}: unexpected replies: {:?}",
        stats.unexpected
    );
    assert!(
        stats.definite >= 100,
        "{name}: too little progress: {stats:?}"
    );

    let history = history.lock().expect("history");
    let (verdict, check_stats) = lincheck::check_with_stats(&history, Duration::from_secs(120));
    let report = Report {
        faults: cluster.counts.clone(),
        operations_checked: check_stats.operations,
        stats,
        elapsed: started.elapsed(),
    };
    eprintln!(
        "nemesis {name}: seed {seed}, {} faults {:?}, schedule {:?}, {} operations checked \
         ({} indeterminate), workers {:?}, converged at applied index {} ({} files, version counter {}), \
         check {:?}, {:.1} s in all",
        report.faults.total(),
        report.faults,
        schedule,
        report.operations_checked,
        check_stats.indeterminate_operations,
        report.stats,
        checksum.applied_index,
        checksum.files,
        checksum.version_counter,
        check_stats.elapsed,
        report.elapsed.as_secs_f64()
    );
    let problems = diagnose::problems(&history, 10);
    if verdict != Verdict::Linearizable || !problems.is_empty() {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-seed{seed}.history"));
        let _ = std::fs::write(&path, diagnose::dump(&history));
        panic!(
            "{name}: history of {} operations: {verdict:?}; first problems: {problems:#?}; history in {}",
            history.len(),
            path.display()
        );
    }
    report
}

#[test]
fn five_nodes_under_every_fault() {
    let mut options = Options::new(5);
    options.proxied = true;
    options.lose_unsynced = true;
    let report = run_schedule("five_nodes_under_every_fault", options, &ALL_FAULTS, 45, 7);
    assert!(report.faults.total() >= 10, "{:?}", report.faults);
}

#[test]
fn three_nodes_crashes_and_pauses_with_lost_fsync() {
    let mut options = Options::new(3);
    options.proxied = true;
    options.lose_unsynced = true;
    let faults = [
        Fault::Crash,
        Fault::CrashLeader,
        Fault::PauseLeader,
        Fault::IsolateLeader,
        Fault::OneWayCut,
    ];
    let report = run_schedule(
        "three_nodes_crashes_and_pauses_with_lost_fsync",
        options,
        &faults,
        30,
        11,
    );
    assert!(report.faults.kills >= 3, "{:?}", report.faults);
}

/// The proxies really partition: a leader cut off from the others loses
/// leadership to one of them, and after healing the cluster serves again.
#[test]
fn proxy_partition_moves_leadership() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut options = Options::new(3);
    options.proxied = true;
    let mut cluster = Cluster::start(options);
    let old = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    cluster.partition(&[old]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut new = None;
    while Instant::now() < deadline && new.is_none() {
        new = cluster
            .wait_leader(Duration::from_millis(500))
            .filter(|&id| id != old);
    }
    let new = new.expect("the majority elects another leader");
    assert_ne!(new, old);
    // The isolated node's peers link stays cut: its proxy refuses the others.
    cluster.heal();
    cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader after heal");
    let proxy_connections: u64 = cluster.proxies.iter().map(|p| p.connections()).sum();
    assert!(
        proxy_connections >= 6,
        "peer traffic went through the proxies ({proxy_connections})"
    );
}

/// The storage hook alone: after a simulated power failure the WAL holds
/// exactly what was fsynced; bytes written but not synced are gone.
#[test]
fn lost_fsync_mode_discards_exactly_the_unsynced_tail() {
    use bytes::Bytes;
    use raftfs::raft::message::Entry;
    use raftfs::storage::{self, lost_unsynced};

    let entry = |index: u64, bytes: usize| Entry {
        term: 1,
        index,
        data: Bytes::from(vec![index as u8; bytes]),
    };
    for discard in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut wal, _) = storage::open(dir.path(), true).expect("open");
            wal.track_synced_position().expect("track");
            wal.append(&[entry(1, 100), entry(2, 100)]).expect("append");
            wal.sync().expect("sync");
            // Entry 3 reaches the file (the 8 MiB entry 4 forces the buffer
            // out) but no fsync follows: it lives only in the page cache.
            wal.append(&[entry(3, 100)]).expect("append");
            wal.append(&[entry(4, raftfs::limits::WAL_BUFFER_BYTES_MAX)])
                .expect("append");
            // The process dies here: no sync, the Wal is dropped.
        }
        let discarded = if discard {
            lost_unsynced::discard_unsynced(dir.path()).expect("discard")
        } else {
            lost_unsynced::Discarded::default()
        };
        let (_, recovered) = storage::open(dir.path(), true).expect("reopen");
        let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        if discard {
            assert_eq!(
                indexes,
                vec![1, 2],
                "only the synced entries survive a power failure"
            );
            assert_eq!(discarded.segments_cut, 1);
            assert!(discarded.bytes >= 100, "{discarded:?}");
        } else {
            assert_eq!(indexes, vec![1, 2, 3], "kill -9 alone keeps the page cache");
        }
    }
}
