//! Clock faults (issue 7, part 6): a wall-clock jump forward or back on any
//! node, the leader included, changes neither safety nor expiry (SPEC §2,
//! cluster time): no file expires early and none comes back.
//!
//! The system clock cannot be changed safely in CI, so the proof has two
//! halves:
//! - by inspection, enforced here: the node reads the wall clock in exactly
//!   one place, `net::reactor::wall_clock_ms`, which hands it to the replica
//!   as `Now::wall_ms`; the replica (which reads no clock itself) uses
//!   `wall_ms` only where cluster time starts from a log with no stamp
//!   (every other clock is `Instant`, which is CLOCK_MONOTONIC on Linux and
//!   never jumps); the only other `SystemTime` is a jitter seed for peer
//!   reconnects;
//! - end to end: nodes run with wall clocks days apart
//!   (`RAFTFS_TEST_WALL_CLOCK_OFFSET_MS`) and are restarted, the leader
//!   first, with their clocks jumped forward and back by a year, while a
//!   reader checks every answer against real time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::client::Client;
use common::cluster::{Cluster, Options};

const DAY_MS: i64 = 86_400_000;

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for item in std::fs::read_dir(dir).expect("read src") {
        let path = item.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Every wall-clock read in the node's source, as (file, line).
#[test]
fn the_node_reads_the_wall_clock_only_to_start_cluster_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut wall_clock_reads = Vec::new();
    let mut wall_clock_ms_calls = Vec::new();
    let mut wall_ms_uses = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(&root)
            .expect("under src")
            .display()
            .to_string();
        // The checker is a test tool, not part of the node.
        if relative.starts_with("lincheck") {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read source");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for needle in [
                "SystemTime::now",
                "UNIX_EPOCH)",
                "chrono::",
                "time::OffsetDateTime",
                "libc::time(",
                "clock_gettime",
                "gettimeofday",
            ] {
                if code.contains(needle) {
                    wall_clock_reads.push(format!("{relative}:{} {}", number + 1, line.trim()));
                }
            }
            if code.contains("wall_clock_ms(") && !code.contains("fn wall_clock_ms") {
                wall_clock_ms_calls.push((relative.clone(), number + 1));
            }
            if code.contains(".wall_ms") && !relative.starts_with("sim") {
                wall_ms_uses.push((relative.clone(), number + 1, text.clone()));
            }
        }
    }
    let allowed = |site: &String| {
        // The one read, handed to the replica as `Now::wall_ms`.
        (site.starts_with("net/reactor.rs") && (site.contains("SystemTime::now()") || site.contains("UNIX_EPOCH)")))
            // A jitter seed for reconnect backoff; never a time.
            || (site.starts_with("net/peer.rs") && (site.contains("clock_seed") || site.contains("UNIX_EPOCH)")))
            // A thread's CPU time (snapshot stall measurement); not a clock of the world.
            || site.contains("CLOCK_THREAD_CPUTIME_ID")
            // `raftfs certs` dates the certificates it writes; never a node.
            || site.starts_with("certs.rs")
    };
    let unexpected: Vec<&String> = wall_clock_reads.iter().filter(|s| !allowed(s)).collect();
    assert!(
        unexpected.is_empty(),
        "wall-clock reads outside the allowed sites: {unexpected:#?}"
    );
    let reactor_reads = wall_clock_reads
        .iter()
        .filter(|s| s.starts_with("net/reactor.rs") && s.contains("SystemTime::now()"))
        .count();
    assert_eq!(
        reactor_reads, 1,
        "exactly one SystemTime::now in net/reactor.rs: {wall_clock_reads:#?}"
    );
    // wall_clock_ms is called once, to fill `Now` for the replica.
    assert_eq!(
        wall_clock_ms_calls.len(),
        1,
        "one call of wall_clock_ms: {wall_clock_ms_calls:?}"
    );
    assert_eq!(wall_clock_ms_calls[0].0, "net/reactor.rs");
    // The node uses `wall_ms` once: in the branch where no stamp exists.
    assert_eq!(wall_ms_uses.len(), 1, "one use of Now::wall_ms");
    let (file, line, text) = &wall_ms_uses[0];
    assert_eq!(file, "replica/clock.rs");
    let lines: Vec<&str> = text.lines().collect();
    let context = lines[line.saturating_sub(4)..*line].join("\n");
    assert!(
        context.contains("if base_ms == 0"),
        "wall_ms is only used when the log has no stamp:\n{context}"
    );
    // And the peer seed really is only a seed.
    let peer = std::fs::read_to_string(root.join("net/peer.rs")).expect("peer.rs");
    let seed_uses = peer.matches("clock_seed").count();
    assert!(seed_uses >= 2, "clock_seed is defined and used");
    for line in peer
        .lines()
        .filter(|l| l.contains("clock_seed") && !l.contains("let clock_seed"))
    {
        assert!(
            line.contains("seed")
                && (line.contains("Pcg")
                    || line.contains("rng")
                    || line.contains("^")
                    || line.contains("clock_seed")),
            "clock_seed only seeds a random generator: {line}"
        );
    }
}

struct Observation {
    /// Milliseconds since the file was written (client side, invoke time).
    since_write_ms: u64,
    reply: String,
}

fn read_from_leader(cluster: &Cluster, name: &str) -> Option<String> {
    for id in cluster.ids() {
        if !cluster.is_running(id) {
            continue;
        }
        let Ok(mut client) = Client::connect(&cluster.client_address(id)) else {
            continue;
        };
        client.set_timeout(Duration::from_secs(2));
        if let Ok(reply) = client.command(format!("read {name}\r\n").as_bytes()) {
            if reply.starts_with("CONTENTS") || reply.starts_with("ERR_FILE_NOT_FOUND") {
                return Some(reply);
            }
        }
    }
    None
}

fn write_via_leader(cluster: &Cluster, command: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for id in cluster.ids() {
            let Ok(mut client) = Client::connect(&cluster.client_address(id)) else {
                continue;
            };
            client.set_timeout(Duration::from_secs(5));
            if let Ok(reply) = client.command(command.as_bytes()) {
                if reply.starts_with("OK") {
                    return reply;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no leader took {command:?}");
}

/// EXPREMAINING of a CONTENTS reply.
fn remaining_s(reply: &str) -> Option<u64> {
    reply.lines().next()?.split(' ').nth(3)?.parse().ok()
}

#[test]
fn wall_clock_jumps_change_neither_safety_nor_expiry() {
    let options = Options::new(3);
    let mut cluster = Cluster::configure(options);
    let offsets = [10 * DAY_MS, -10 * DAY_MS, 0];
    for (index, offset) in offsets.iter().enumerate() {
        cluster.node_env.insert(
            index as u64 + 1,
            vec![(
                raftfs::net::reactor::WALL_CLOCK_OFFSET_ENV.to_string(),
                offset.to_string(),
            )],
        );
    }
    for id in cluster.ids() {
        cluster.start_node(id);
    }
    let first_leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    let written_at = Instant::now();
    write_via_leader(&cluster, "write short 5 4\r\nshort\r\n");
    write_via_leader(&cluster, "write long 4 3600\r\nlong\r\n");
    write_via_leader(&cluster, "write forever 7\r\nforever\r\n");

    // Jump every node's clock, the leader first: restart it with a clock a
    // year ahead or behind, alternating, and keep reading meanwhile.
    let mut observations = Vec::new();
    let mut order = vec![first_leader];
    order.extend(cluster.ids().filter(|&id| id != first_leader));
    let mut jumps = 0;
    for (step, id) in order.iter().copied().chain(order.clone()).enumerate() {
        let jump = if step % 2 == 0 {
            365 * DAY_MS
        } else {
            -365 * DAY_MS
        };
        cluster.kill(id);
        cluster.node_env.insert(
            id,
            vec![(
                raftfs::net::reactor::WALL_CLOCK_OFFSET_ENV.to_string(),
                jump.to_string(),
            )],
        );
        cluster.start_node(id);
        jumps += 1;
        let until = Instant::now() + Duration::from_millis(900);
        while Instant::now() < until {
            if let Some(reply) = read_from_leader(&cluster, "short") {
                observations.push(Observation {
                    since_write_ms: written_at.elapsed().as_millis() as u64,
                    reply,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Then the whole cluster at once, every clock moved again.
    for id in cluster.ids() {
        cluster.kill(id);
        cluster.node_env.insert(
            id,
            vec![(
                raftfs::net::reactor::WALL_CLOCK_OFFSET_ENV.to_string(),
                (-(id as i64) * 30 * DAY_MS).to_string(),
            )],
        );
    }
    for id in cluster.ids() {
        cluster.start_node(id);
    }
    jumps += cluster.size;
    cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader after full restart");
    // Keep reading until well past the short file's expiry.
    while written_at.elapsed() < Duration::from_secs(9) {
        if let Some(reply) = read_from_leader(&cluster, "short") {
            observations.push(Observation {
                since_write_ms: written_at.elapsed().as_millis() as u64,
                reply,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // No early expiry: read before 4 s after the write (minus the read's own
    // time, at most 2 s here) must see the file. None comes back: once absent,
    // absent for good.
    let mut seen_absent_at = None;
    for observation in &observations {
        let present = observation.reply.starts_with("CONTENTS");
        if observation.since_write_ms < 4_000 - 2_000 {
            assert!(
                present,
                "short expired early, {} ms after its write",
                observation.since_write_ms
            );
        }
        if present {
            assert!(
                seen_absent_at.is_none(),
                "short came back at {} ms after being absent at {:?} ms",
                observation.since_write_ms,
                seen_absent_at
            );
            let remaining = remaining_s(&observation.reply).expect("remaining");
            assert!(
                (1..=4).contains(&remaining),
                "remaining {remaining} s of a 4 s file"
            );
        } else if seen_absent_at.is_none() {
            seen_absent_at = Some(observation.since_write_ms);
        }
    }
    let expired_at = seen_absent_at.expect("short expires at last");
    assert!(
        expired_at >= 4_000,
        "short expired at {expired_at} ms, before its 4 s"
    );
    // The long file: its remaining time shrank by about the real time elapsed
    // (less during elections), never by a clock jump.
    let long = read_from_leader(&cluster, "long").expect("read long");
    let remaining = remaining_s(&long).expect("long is alive");
    let elapsed_s = written_at.elapsed().as_secs();
    assert!(
        remaining <= 3600 && remaining + elapsed_s + 1 >= 3600,
        "long: {remaining} s remaining after {elapsed_s} s"
    );
    let forever = read_from_leader(&cluster, "forever").expect("read forever");
    assert!(
        forever.starts_with("CONTENTS") && remaining_s(&forever) == Some(0),
        "{forever}"
    );
    eprintln!(
        "clock: {jumps} clock jumps (offsets up to a year), {} reads checked, short expired at {expired_at} ms",
        observations.len()
    );
}
