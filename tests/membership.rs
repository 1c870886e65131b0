//! Membership change on real `raftfs node` processes, while clients run
//! (issue 15): grow 3 → 5, remove the leader, shrink to 3, and replace a
//! node whose disk was lost (remove it, add the new data dir as a learner,
//! promote it), all with `raftfs member` as an operator runs it.
//!
//! Under load the whole time: a pipelined writer (16 writes in flight on
//! one connection, each to a fresh key, following redirects) and a recorded
//! mixed workload on a few hot files. Required at the end: every command
//! the writer sent was answered; `ERR_REDIRECT`/`ERR_INTERNAL` only in the
//! phases where leadership moved; every acknowledged write reads back; the
//! workload's history is linearizable; removed nodes stopped by themselves
//! (exit code 4) with one clear line; a node not yet added disturbed no one.
//!
//! Also: the commands' refusals (promoting a non-member, bad flags) are one
//! line and a non-zero exit; `member list` and `status` show voters and
//! learners.

mod common;

use common::client::{write_command, Client, ANSWER_TIMEOUT};
use common::cluster::{command_anywhere, serial, Cluster, Options};
use common::diagnose;
use common::workload::Workload;
use raftfs::lincheck::{self, Verdict};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Writes in flight on the writer's connection.
const PIPELINE_DEPTH: usize = 16;
/// Pause after each answered batch: keeps the writer at a few thousand
/// writes a second, so the keys to check at the end stay few.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// What the pipelined writer saw, per phase (`Writer::phase`).
#[derive(Debug, Default, Clone)]
struct PhaseCounts {
    acknowledged: u64,
    redirects: u64,
    internal: u64,
    /// Commands sent whose answer never came (connection lost or timeout).
    unanswered: u64,
    other: Vec<String>,
}

/// A pipelined writer: `PIPELINE_DEPTH` writes at a time, each to a fresh
/// key `m-<n>`, answers checked in order. Redirects are followed (the
/// redirected writes were not applied and are not retried: new keys come).
struct Writer {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU64>,
    counts: Arc<Mutex<BTreeMap<u64, PhaseCounts>>>,
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
    /// The client address the writer is connected to (or dialing).
    connected_to: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(first_address: String, candidates: Vec<String>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU64::new(0));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let connected_to = Arc::new(Mutex::new(first_address.clone()));
        let thread = {
            let (stop, phase, counts, acknowledged, connected_to) = (
                stop.clone(),
                phase.clone(),
                counts.clone(),
                acknowledged.clone(),
                connected_to.clone(),
            );
            std::thread::spawn(move || {
                write_loop(
                    candidates,
                    &stop,
                    &phase,
                    &counts,
                    &acknowledged,
                    &connected_to,
                )
            })
        };
        Writer {
            stop,
            phase,
            counts,
            acknowledged,
            connected_to,
            thread: Some(thread),
        }
    }

    /// The client address the writer uses now.
    fn connected_to(&self) -> String {
        self.connected_to.lock().expect("connected_to").clone()
    }

    fn set_phase(&self, phase: u64) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    fn finish(mut self) -> (BTreeMap<u64, PhaseCounts>, Vec<(String, String)>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the writer panicked");
        }
        let counts = std::mem::take(&mut *self.counts.lock().expect("counts"));
        let acknowledged = std::mem::take(&mut *self.acknowledged.lock().expect("acknowledged"));
        (counts, acknowledged)
    }
}

fn write_loop(
    candidates: Vec<String>,
    stop: &AtomicBool,
    phase: &AtomicU64,
    counts: &Mutex<BTreeMap<u64, PhaseCounts>>,
    acknowledged: &Mutex<Vec<(String, String)>>,
    connected_to: &Mutex<String>,
) {
    let mut address = connected_to.lock().expect("connected_to").clone();
    let mut next_candidate = 0;
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        *connected_to.lock().expect("connected_to") = address.clone();
        let Ok(mut client) = Client::connect(&address) else {
            address = candidates[next_candidate % candidates.len()].clone();
            next_candidate += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        client.set_timeout(ANSWER_TIMEOUT);
        'connection: while !stop.load(Ordering::SeqCst) {
            let batch: Vec<(String, String)> = (0..PIPELINE_DEPTH)
                .map(|_| {
                    sequence += 1;
                    (format!("m-{sequence}"), format!("value-{sequence}"))
                })
                .collect();
            let mut request = Vec::new();
            for (key, value) in &batch {
                request.extend_from_slice(write_command(key, value).as_bytes());
            }
            let current = phase.load(Ordering::SeqCst);
            let mut redirect = None;
            let sent = client.send(&request).is_ok();
            for (position, (key, value)) in batch.iter().enumerate() {
                let reply = if sent {
                    client.reply()
                } else {
                    Err(std::io::ErrorKind::BrokenPipe.into())
                };
                let mut counts = counts.lock().expect("counts");
                let entry = counts.entry(current).or_default();
                match reply {
                    Ok(reply) if reply.starts_with("OK ") => {
                        entry.acknowledged += 1;
                        acknowledged
                            .lock()
                            .expect("acknowledged")
                            .push((key.clone(), value.clone()));
                    }
                    Ok(reply) if reply.starts_with("ERR_REDIRECT ") => {
                        entry.redirects += 1;
                        redirect = Some(reply["ERR_REDIRECT ".len()..].to_string());
                    }
                    Ok(reply) if reply == "ERR_INTERNAL" => entry.internal += 1,
                    Ok(reply) => entry.other.push(reply),
                    Err(_) => {
                        entry.unanswered += (batch.len() - position) as u64;
                        break 'connection;
                    }
                }
            }
            if let Some(target) = redirect {
                address = target;
                break 'connection;
            }
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

/// `raftfs member ...`, retried while it fails, until `timeout`: the last
/// (code, output).
fn member_until_ok(cluster: &Cluster, args: &[&str], timeout: Duration) -> (i32, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, output) = cluster.member(args);
        if code == 0 || Instant::now() > deadline {
            return (code, output);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The configuration `member list --json` reports.
fn listing(cluster: &Cluster) -> serde_json::Value {
    let (code, output) = cluster.member(&["list", "--json"]);
    assert_eq!(code, 0, "member list: {output}");
    serde_json::from_str(&output).unwrap_or_else(|e| panic!("member list JSON ({e}): {output}"))
}

/// (voters, learners) of the configuration in force, committed.
fn roles(cluster: &Cluster) -> (Vec<u64>, Vec<u64>) {
    let listing = listing(cluster);
    assert_eq!(listing["committed"], true, "{listing}");
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for member in listing["members"].as_array().expect("members") {
        let id = member["id"].as_u64().expect("id");
        match member["role"].as_str() {
            Some("voter") => voters.push(id),
            Some("learner") => learners.push(id),
            other => panic!("role {other:?} in {listing}"),
        }
    }
    (voters, learners)
}

/// The leader's id and term as `member list` reports them (waits for one).
fn leader_and_term(cluster: &Cluster) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (_, json) = cluster.status(true);
        if let Ok(serde_json::Value::Array(members)) = serde_json::from_str(&json) {
            let leader = members.iter().find(|m| m["role"] == "leader");
            if let Some(leader) = leader {
                return (
                    leader["id"].as_u64().expect("id"),
                    leader["term"].as_u64().expect("term"),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no leader within 20 s:\n{}", cluster.all_logs_summary());
}

/// Promotes learner `id`, retrying while the leader refuses it as not
/// caught up yet.
fn promote_when_caught_up(cluster: &Cluster, id: u64) {
    let id_text = id.to_string();
    let (code, output) = member_until_ok(
        cluster,
        &["promote", "--id", &id_text],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "promote {id}: {output}");
    assert!(
        output.contains(&format!("node {id} is a voter")),
        "{output}"
    );
}

/// Removes `id` with `member remove` and waits for its process to stop by
/// itself with exit code 4 and its one line.
fn remove_and_see_it_stop(cluster: &mut Cluster, id: u64) {
    let id_text = id.to_string();
    let (code, output) = member_until_ok(
        cluster,
        &["remove", "--id", &id_text],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "remove {id}: {output}");
    assert!(
        output.contains(&format!("node {id} is not a member")),
        "{output}"
    );
    let status = cluster.wait_exit(id, Duration::from_secs(15));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(4),
        "removed node {id} must stop with exit code 4:\n{}",
        cluster.log_text(id)
    );
    let log = cluster.log_text(id);
    assert!(
        log.contains(&format!("node {id} was removed from the cluster")),
        "{log}"
    );
}

#[test]
fn grow_remove_the_leader_shrink_and_replace_under_load() {
    let _serial = serial();
    let mut cluster = Cluster::configure(Options::new(5));
    cluster.write_config_listing(&[1, 2, 3]);
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let first_leader = cluster
        .wait_leader(Duration::from_secs(20))
        .expect("a leader");
    let all_addresses: Vec<String> = (1..=5).map(|id| cluster.client_address(id)).collect();
    let writer = Writer::start(cluster.client_address(first_leader), all_addresses.clone());
    let workload = Workload::start_on(all_addresses[..3].to_vec(), 3, 4, 15);
    std::thread::sleep(Duration::from_millis(500));
    let mut leader_moved = BTreeMap::new();
    let mut note_phase = |phase: u64, before: (u64, u64), after: (u64, u64)| {
        leader_moved.insert(phase, before != after);
    };

    // Phase 1: grow 3 -> 5. Nodes 4 and 5 start before they are members
    // (their cluster.toml lists them) and must disturb nothing.
    writer.set_phase(1);
    let before = leader_and_term(&cluster);
    cluster.write_config_listing(&[1, 2, 3, 4, 5]);
    cluster.start_node(4);
    cluster.start_node(5);
    let (code, output) = cluster.member(&["promote", "--id", "4"]);
    assert_ne!(code, 0, "promoting a non-member: {output}");
    assert!(output.contains("node 4 is not a member"), "{output}");
    assert_eq!(output.trim().lines().count(), 1, "one line: {output}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        leader_and_term(&cluster),
        before,
        "nodes waiting to be added disturbed the cluster"
    );
    assert_eq!(roles(&cluster), (vec![1, 2, 3], vec![]));
    for id in [4u64, 5] {
        let id_text = id.to_string();
        let (code, output) = member_until_ok(
            &cluster,
            &["add", "--id", &id_text],
            Duration::from_secs(30),
        );
        assert_eq!(code, 0, "add {id}: {output}");
        assert!(
            output.contains(&format!("node {id} is a learner")),
            "{output}"
        );
    }
    assert_eq!(roles(&cluster), (vec![1, 2, 3], vec![4, 5]));
    let (_, table) = cluster.status(false);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("4 ") && l.contains("learner")),
        "{table}"
    );
    promote_when_caught_up(&cluster, 4);
    promote_when_caught_up(&cluster, 5);
    assert_eq!(roles(&cluster), (vec![1, 2, 3, 4, 5], vec![]));
    note_phase(1, before, leader_and_term(&cluster));

    // Phase 2: remove the leader; it hands leadership over first.
    writer.set_phase(2);
    let (leader, _) = leader_and_term(&cluster);
    remove_and_see_it_stop(&mut cluster, leader);
    let mut remaining: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    assert_eq!(roles(&cluster).0, remaining);

    // Phase 3: back to 3 voters (5 -> 3 in all, the leader among them).
    writer.set_phase(3);
    let before = leader_and_term(&cluster);
    for _ in 0..1 {
        let (leader, _) = leader_and_term(&cluster);
        let victim = *remaining
            .iter()
            .rev()
            .find(|id| **id != leader)
            .expect("a follower");
        remove_and_see_it_stop(&mut cluster, victim);
        remaining.retain(|id| *id != victim);
    }
    assert_eq!(roles(&cluster).0, remaining);
    note_phase(3, before, leader_and_term(&cluster));

    // Phase 4: a follower loses its disk. Remove it, start the new data
    // dir, add it as a learner, promote it once caught up. Not the node the
    // writer uses (followers forward, so it may be one): losing a disk is
    // a crash, and a crash may leave a pipeline unanswered.
    writer.set_phase(4);
    let before = leader_and_term(&cluster);
    let (leader, _) = before;
    let writers_node = writer.connected_to();
    let lost = *remaining
        .iter()
        .find(|id| **id != leader && cluster.client_address(**id) != writers_node)
        .expect("a follower the writer does not use");
    cluster.wipe(lost);
    let lost_text = lost.to_string();
    let (code, output) = member_until_ok(
        &cluster,
        &["remove", "--id", &lost_text],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "remove the lost node: {output}");
    cluster.start_node(lost);
    let (code, output) = member_until_ok(
        &cluster,
        &["add", "--id", &lost_text],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "add the new data dir: {output}");
    promote_when_caught_up(&cluster, lost);
    assert_eq!(roles(&cluster), (remaining.clone(), vec![]));
    note_phase(4, before, leader_and_term(&cluster));
    std::thread::sleep(Duration::from_millis(500));

    writer.set_phase(5);
    let (counts, acknowledged) = writer.finish();
    let result = workload.finish();
    eprintln!(
        "membership under load: writer {counts:?} ({} acknowledged); leader moved by phase \
         {leader_moved:?}; workload {}",
        acknowledged.len(),
        result.summary()
    );

    // Every command the writer sent was answered; errors only where the
    // leadership moved.
    for (phase, phase_counts) in &counts {
        assert_eq!(
            phase_counts.unanswered, 0,
            "phase {phase}: {phase_counts:?}"
        );
        assert!(
            phase_counts.other.is_empty(),
            "phase {phase}: {phase_counts:?}"
        );
        let moved = *phase == 2 || leader_moved.get(phase).copied().unwrap_or(false);
        if !moved {
            assert_eq!(
                (phase_counts.redirects, phase_counts.internal),
                (0, 0),
                "phase {phase}: errors without a leader change: {phase_counts:?}"
            );
        }
        if (1..=4).contains(phase) {
            assert!(phase_counts.acknowledged > 0, "phase {phase}: no progress");
        }
    }
    // No acknowledged write lost: read them all back, pipelined.
    let (leader, _) = leader_and_term(&cluster);
    let mut reader = Client::connect(&cluster.client_address(leader)).expect("connect");
    reader.set_timeout(ANSWER_TIMEOUT);
    for chunk in acknowledged.chunks(256) {
        let mut request = Vec::new();
        for (key, _) in chunk {
            request.extend_from_slice(format!("read {key}\r\n").as_bytes());
        }
        reader.send(&request).expect("send reads");
        for (key, value) in chunk {
            let reply = reader.reply_parts().expect("read answer");
            let content = reply.content.as_deref().map(String::from_utf8_lossy);
            assert_eq!(
                content.as_deref(),
                Some(value.as_str()),
                "acknowledged write {key}={value} reads back as {:?}",
                reply.line
            );
        }
    }
    assert!(
        command_anywhere(&cluster, b"read m-0\r\n", Duration::from_secs(10)).is_some(),
        "the cluster answers"
    );
    assert!(result.unexpected.is_empty(), "{:?}", result.unexpected);
    let (verdict, _) = lincheck::check_with_stats(&result.history, Duration::from_secs(60));
    let problems = diagnose::problems(&result.history, 10);
    assert!(
        verdict == Verdict::Linearizable && problems.is_empty(),
        "history: {verdict:?}; {problems:#?}"
    );
    for id in 1..=5 {
        let log = cluster.log_text(id);
        assert!(!log.contains("panicked"), "node {id} panicked:\n{log}");
    }
}

/// Bad requests are refused with one line and a non-zero exit, and
/// nothing changes.
#[test]
fn refused_member_commands_say_why_in_one_line() {
    let _serial = serial();
    let cluster = Cluster::start(Options::new(3));
    cluster
        .wait_leader(Duration::from_secs(20))
        .expect("a leader");
    let cases: [(&[&str], &str); 4] = [
        (&["add", "--id", "9"], "node 9 has no [[node]] table"),
        (
            &["add", "--id", "9", "--client", "127.0.0.1:1"],
            "--client and --peer go together",
        ),
        (
            &["remove", "--id", "1", "--id", "2"],
            "cannot be used multiple times",
        ),
        (&["promote", "--id", "7"], "node 7 is not a member"),
    ];
    for (args, expected) in cases {
        let (code, output) = cluster.member(args);
        assert_ne!(code, 0, "{args:?}: {output}");
        assert!(output.contains(expected), "{args:?}: {output}");
    }
    let (code, output) = cluster.member(&["list"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.starts_with("configuration at log index 1 (committed)"),
        "{output}"
    );
    assert_eq!(
        output.lines().filter(|l| l.contains(" voter ")).count(),
        3,
        "{output}"
    );
}
