//! Hostile clients against real `raftfs node` processes (issue 14): the
//! client-side memory bounds and backpressure.
//!
//! Each case runs on a fresh 3-node cluster (fsync off: the disk is not
//! what is measured) while a well-behaved client on the leader does
//! pipelined-1 write-then-read of its own small files. Required in every
//! case: the well-behaved client's p99 under 10 ms (one more try on a fresh
//! cluster if a loaded CI machine spoils it, as tests/hostile.rs does), every
//! answer it got right, the leader's peak RSS under the case's stated bound,
//! every write it saw acknowledged still readable afterwards, and the same
//! leader at the end.
//!
//! Cases: a paused reader (2,000 pipelined reads of a 64 KiB file, 3 s
//! without reading, then every answer); 2,000 connections each holding a
//! partial 1 MiB write (over the client budget; then all but 40 leave and
//! those 40 finish their writes, so connections held back by the budget
//! are resumed); a client pipelining 2,000 reads of a 1 MiB file that never
//! reads (closed once its queue stalls); garbage, a 2^40-byte write claim
//! and 100 KB lines without a newline; and `max_client_connections`.
//! 10,000 idle connections are in benches/hostile_clients.py (too heavy for
//! a test on two shared cores).

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::Client;
use common::cluster::{serial, Cluster, Options};
use common::http::{http_get, metric};
use common::process::{ensure_open_files, rss_kib};
use hdrhistogram::Histogram;
use rand::{Rng, RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// The well-behaved client's bound (issue 14).
const GOOD_P99_MAX_US: u64 = 10_000;
/// Files the well-behaved client rotates through.
const GOOD_FILES: u64 = 16;

/// What the well-behaved client saw.
struct Measured {
    operations: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    wrong: Vec<String>,
    /// Per file: the last acknowledged version and its content.
    acknowledged: BTreeMap<u64, (u64, String)>,
}

/// Pipelined-1 write then read back of its own files, a short pause
/// between pairs, until `stop`.
fn well_behaved(address: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Measured> {
    std::thread::spawn(move || {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let mut wrong = Vec::new();
        let mut acknowledged = BTreeMap::new();
        let mut client = Client::connect(&address).expect("good client connects");
        client.set_timeout(Duration::from_secs(5));
        let mut sequence = 0u64;
        while !stop.load(Ordering::SeqCst) && wrong.len() <= 10 {
            sequence += 1;
            let file = sequence % GOOD_FILES;
            let content = format!("good-{sequence}");
            let write = format!("write good-{file} {}\r\n{content}\r\n", content.len());
            let started = Instant::now();
            let reply = client.command(write.as_bytes());
            histogram.saturating_record(started.elapsed().as_micros() as u64);
            match reply.as_deref().map(|line| line.strip_prefix("OK ")) {
                Ok(Some(version)) => {
                    let version = version.trim().parse().expect("a version");
                    acknowledged.insert(file, (version, content.clone()));
                }
                _ => wrong.push(format!("write -> {reply:?}")),
            }
            let started = Instant::now();
            let reply = client.command(format!("read good-{file}\r\n").as_bytes());
            histogram.saturating_record(started.elapsed().as_micros() as u64);
            match reply {
                Ok(text) if text.ends_with(&format!("\n{content}")) => {}
                other => wrong.push(format!("read -> {other:?}")),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Measured {
            operations: histogram.len(),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
            wrong,
            acknowledged,
        }
    })
}

/// What a hostile body gets: the cluster, the leader's id and address.
struct Target<'a> {
    cluster: &'a Cluster,
    leader: u64,
    address: String,
}

/// Runs `hostile` against a fresh cluster's leader while the well-behaved
/// client measures; checks every bound. A p99 over the bound gets one more
/// try on a fresh cluster (both figures are printed).
fn scenario(name: &str, extra: &str, rss_bound_mib: u64, hostile: impl Fn(&Target) -> String) {
    let _serial = serial();
    ensure_open_files(4_500);
    for attempt in 1..=2 {
        let p99_us = attempt_scenario(name, extra, rss_bound_mib, &hostile);
        if p99_us < GOOD_P99_MAX_US {
            return;
        }
        assert!(
            attempt < 2,
            "{name}: good client p99 {p99_us} us is not under {GOOD_P99_MAX_US} us (twice)"
        );
        eprintln!("hostile_clients {name}: p99 {p99_us} us over the bound; one more try");
    }
}

/// One run of a scenario; panics on any failure but the p99, which it
/// returns.
fn attempt_scenario(
    name: &str,
    extra: &str,
    rss_bound_mib: u64,
    hostile: &impl Fn(&Target) -> String,
) -> u64 {
    let cluster = Cluster::start(Options::new(3).fsync(false).with_metrics().extra(extra));
    let (leader, term) = leader_and_term(&cluster, Duration::from_secs(10)).expect("a leader");
    let address = cluster.client_address(leader);
    // Warm up: the first commands pay for connection set-up and page faults.
    let mut warm = Client::connect(&address).expect("connect");
    for file in 0..GOOD_FILES * 4 {
        let reply = warm
            .command(format!("write good-{} 1\r\nx\r\n", file % GOOD_FILES).as_bytes())
            .expect("warm-up write");
        assert!(reply.starts_with("OK "), "warm-up write: {reply}");
    }
    drop(warm);
    let rss_before_kib = cluster.rss_kib(leader).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let good = well_behaved(address.clone(), stop.clone());
    let sampler = {
        let pid = cluster.pid(leader).expect("pid");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak_kib = 0;
            while !stop.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib(pid) {
                    peak_kib = peak_kib.max(kib);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak_kib
        })
    };
    let started = Instant::now();
    let what = hostile(&Target {
        cluster: &cluster,
        leader,
        address: address.clone(),
    });
    stop.store(true, Ordering::SeqCst);
    let measured = good.join().expect("good client");
    let peak_kib = sampler.join().expect("sampler");
    eprintln!(
        "hostile_clients {name}: {what}; good client {} ops, p50 {} us, p99 {} us, max {} us; \
         leader RSS {} KiB before, peak {} KiB (bound {} MiB); {:.1} s",
        measured.operations,
        measured.p50_us,
        measured.p99_us,
        measured.max_us,
        rss_before_kib,
        peak_kib,
        rss_bound_mib,
        started.elapsed().as_secs_f64()
    );
    assert!(
        measured.wrong.is_empty(),
        "{name}: good client got wrong answers: {:?}",
        measured.wrong
    );
    assert!(
        measured.operations >= 200,
        "{name}: good client made too little progress ({} operations)",
        measured.operations
    );
    assert!(
        peak_kib < rss_bound_mib << 10,
        "{name}: leader RSS peaked at {peak_kib} KiB (bound {rss_bound_mib} MiB)"
    );
    assert_eq!(
        leader_and_term(&cluster, Duration::from_secs(5)),
        Some((leader, term)),
        "{name}: the leader or its term changed"
    );
    // No acknowledged write lost: each file holds the last acknowledged
    // version and content, read on the leader and on a follower.
    let follower = cluster.ids().find(|id| *id != leader).expect("a follower");
    for node in [leader, follower] {
        let mut check = Client::connect(&cluster.client_address(node)).expect("node accepts");
        for (file, (version, content)) in &measured.acknowledged {
            let reply = check
                .command(format!("read good-{file}\r\n").as_bytes())
                .expect("node answers");
            assert!(
                reply.starts_with(&format!("CONTENTS {version} {} ", content.len()))
                    && reply.ends_with(&format!("\n{content}")),
                "{name}: node {node}, good-{file}: acknowledged version {version} {content:?}, \
                 read {reply:?}"
            );
        }
    }
    for id in cluster.ids() {
        assert!(
            !cluster.log_text(id).contains("panicked"),
            "{name}: node {id} panicked"
        );
    }
    measured.p99_us
}

/// The leader and term every node's `/metrics` agrees on (a follower
/// answers reads too, so a read does not tell which node leads).
fn leader_and_term(cluster: &Cluster, timeout: Duration) -> Option<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let terms: Option<Vec<u64>> = cluster
            .ids()
            .map(|id| {
                let (_, body) = http_get(&cluster.metrics_address(id), "/metrics").ok()?;
                metric(&body, "raftfs_term").map(|term| term as u64)
            })
            .collect();
        if let (Some(leader), Some(terms)) = (cluster.metrics_leader(), terms) {
            if terms.iter().all(|term| *term == terms[0]) {
                return Some((leader, terms[0]));
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    None
}

/// Sleeps `duration`.
fn pause(duration: Duration) {
    std::thread::sleep(duration);
}

/// Writes a file of `size` bytes of `fill` on the leader.
fn write_file(target: &Target, name: &str, size: usize, fill: u8) {
    let mut client = Client::connect(&target.address).expect("connect");
    let mut request = format!("write {name} {size}\r\n").into_bytes();
    request.extend(std::iter::repeat_n(fill, size));
    request.extend_from_slice(b"\r\n");
    let reply = client.command(&request).expect("write");
    assert!(reply.starts_with("OK "), "write {name}: {reply}");
}

/// Reads everything until the peer closes or `timeout` passes.
fn read_to_close(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The first bug: a client paused because its output queue was
/// full was never resumed, and the commands left in its buffer were never
/// parsed (answers stopped after 256 of 2,000).
#[test]
fn a_paused_reader_gets_every_answer() {
    const READS: usize = 2_000;
    const SIZE: usize = 64 << 10;
    scenario("paused reader", "", 256, |target| {
        write_file(target, "big", SIZE, b'b');
        let mut reader = Client::connect(&target.address).expect("connect");
        reader.set_timeout(Duration::from_secs(20));
        reader
            .send(&b"read big\r\n".repeat(READS))
            .expect("send the reads");
        pause(Duration::from_secs(3));
        let started = Instant::now();
        for index in 0..READS {
            let reply = reader
                .reply_parts()
                .unwrap_or_else(|e| panic!("answer {index} of {READS}: {e}"));
            assert!(
                reply.line.starts_with("CONTENTS ")
                    && reply.content.as_deref().map(<[u8]>::len) == Some(SIZE),
                "answer {index}: {}",
                reply.line
            );
        }
        format!(
            "{READS} pipelined reads of {} KiB, 3 s unread, then every answer in {:.1} s",
            SIZE >> 10,
            started.elapsed().as_secs_f64()
        )
    });
}

/// Over the client budget, connections that pipeline many commands each get
/// every answer: a connection whose framing stopped for the budget with
/// commands left in its buffer waits for an answer or for the budget, and is
/// resumed (those commands were left unparsed for good and their clients
/// timed out: 64x16 reads against the leader lost ~600 answers per run).
#[test]
fn pipelining_readers_over_the_budget_get_every_answer() {
    const CONNECTIONS: usize = 32;
    const PIPELINE: usize = 16;
    const SIZE: usize = 1000;
    const SENDING_FOR: Duration = Duration::from_secs(3);
    let extra = "max_file_bytes = 1024\nmax_client_buffer_bytes = 8192\n";
    scenario("pipelining readers over the budget", extra, 256, |target| {
        write_file(target, "mid", SIZE, b'm');
        let started = Instant::now();
        let readers: Vec<_> = (0..CONNECTIONS)
            .map(|reader_index| {
                let address = target.address.clone();
                std::thread::spawn(move || {
                    // PIPELINE reads in flight: one more sent per answer
                    // until SENDING_FOR, then every answer drained.
                    let mut reader = Client::connect(&address).expect("connect");
                    reader.set_timeout(Duration::from_secs(20));
                    reader
                        .send(&b"read mid\r\n".repeat(PIPELINE))
                        .expect("send the reads");
                    let mut in_flight = PIPELINE;
                    let mut answered = 0;
                    while in_flight > 0 {
                        let reply = reader.reply_parts().unwrap_or_else(|e| {
                            panic!(
                                "reader {reader_index}: answer {answered} ({in_flight} in \
                                 flight): {e}"
                            )
                        });
                        assert!(
                            reply.line.starts_with("CONTENTS ")
                                && reply.content.as_deref().map(<[u8]>::len) == Some(SIZE),
                            "reader {reader_index}, answer {answered}: {}",
                            reply.line
                        );
                        answered += 1;
                        in_flight -= 1;
                        if started.elapsed() < SENDING_FOR {
                            reader.send(b"read mid\r\n").expect("send a read");
                            in_flight += 1;
                        }
                    }
                    answered
                })
            })
            .collect();
        let answered: usize = readers
            .into_iter()
            .map(|reader| reader.join().expect("every reader gets every answer"))
            .sum();
        format!(
            "{CONNECTIONS} connections x {PIPELINE} pipelined reads of {SIZE} bytes over an 8 KiB \
             budget: all {answered} answered in {:.1} s",
            started.elapsed().as_secs_f64()
        )
    });
}

/// Small reads pipelined by many clients count their files' sizes against
/// the client budget, not the largest answer: 64 connections x 16 reads of
/// 100 bytes never wait for the 256 MiB budget. (Counted at 1 MiB each,
/// 1,024 reads in flight held the node over its budget and read throughput
/// on the leader fell from ~790k/s to ~170k/s.)
#[test]
fn small_pipelined_reads_never_wait_for_the_budget() {
    const CONNECTIONS: usize = 64;
    const PIPELINE: usize = 16;
    const ROUNDS: usize = 40;
    let _serial = serial();
    let cluster = Cluster::start(Options::new(3).fsync(false).with_metrics());
    let (leader, _) = leader_and_term(&cluster, Duration::from_secs(10)).expect("a leader");
    let address = cluster.client_address(leader);
    write_file(
        &Target {
            cluster: &cluster,
            leader,
            address: address.clone(),
        },
        "small",
        100,
        b's',
    );
    let readers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut reader = Client::connect(&address).expect("connect");
                reader.set_timeout(Duration::from_secs(10));
                for _ in 0..ROUNDS {
                    reader
                        .send(&b"read small\r\n".repeat(PIPELINE))
                        .expect("send the reads");
                    for _ in 0..PIPELINE {
                        let reply = reader.reply_parts().expect("an answer");
                        assert!(reply.line.starts_with("CONTENTS "), "{}", reply.line);
                    }
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().expect("every read answered");
    }
    let (_, body) = http_get(&cluster.metrics_address(leader), "/metrics").expect("metrics");
    assert_eq!(
        metric(&body, "raftfs_client_budget_waits_total"),
        Some(0.0),
        "{CONNECTIONS} x {PIPELINE} reads of 100 bytes waited for the budget"
    );
    assert!(metric(&body, "raftfs_client_buffer_bytes").is_some());
}

/// 2,000 connections each send a 1 MiB write's line and all but the last
/// bytes of its content: 2 GiB claimed, over the 256 MiB client budget.
/// Then all but 10 close and those 10 finish: the node resumes the
/// connections it stopped reading for the budget and answers each.
#[test]
fn two_thousand_partial_megabyte_writes() {
    const CONNECTIONS: usize = 2_000;
    const KEPT: usize = 10;
    const SIZE: usize = 1 << 20;
    scenario("2,000 partial 1 MiB writes", "", 640, |target| {
        let mut streams = Vec::with_capacity(CONNECTIONS);
        let mut sent = vec![0usize; CONNECTIONS];
        let filler = vec![b'w'; SIZE];
        for index in 0..CONNECTIONS {
            let mut stream = TcpStream::connect(&target.address).expect("connect");
            stream
                .write_all(format!("write partial-{index} {SIZE}\r\n").as_bytes())
                .expect("the line");
            stream.set_nonblocking(true).expect("nonblocking");
            streams.push(stream);
            if index % 50 == 49 {
                pause(Duration::from_millis(10));
            }
        }
        // Offer each connection its content but the last byte until the
        // sockets take no more (the node stops reading) or 8 s pass.
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut progress = true;
        while progress && Instant::now() < deadline {
            progress = false;
            for (stream, sent) in streams.iter_mut().zip(sent.iter_mut()) {
                if *sent >= SIZE - 1 {
                    continue;
                }
                match stream.write(&filler[*sent..SIZE - 1]) {
                    Ok(n) => {
                        *sent += n;
                        progress |= n > 0;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("a partial write's connection failed: {e}"),
                }
            }
            pause(Duration::from_millis(50));
        }
        let offered: usize = sent.iter().sum();
        pause(Duration::from_secs(2));
        let rss_held_kib = target.cluster.rss_kib(target.leader).unwrap_or(0);
        // All but the last KEPT leave; those finish their writes.
        let mut kept = streams.split_off(CONNECTIONS - KEPT);
        let kept_sent = sent.split_off(CONNECTIONS - KEPT);
        drop(streams);
        let finishing = Instant::now();
        for (stream, sent) in kept.iter_mut().zip(kept_sent) {
            stream.set_nonblocking(false).expect("blocking");
            stream
                .set_write_timeout(Some(Duration::from_secs(20)))
                .expect("write timeout");
            stream.write_all(&filler[sent..]).expect("the rest");
            stream.write_all(b"\r\n").expect("the terminator");
        }
        for (index, stream) in kept.iter_mut().enumerate() {
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("read timeout");
            let mut reply = [0u8; 64];
            let n = stream.read(&mut reply).unwrap_or(0);
            let reply = String::from_utf8_lossy(&reply[..n]).to_string();
            assert!(
                reply.starts_with("OK ") && reply.ends_with("\r\n"),
                "kept connection {index}: {reply:?}"
            );
        }
        format!(
            "{CONNECTIONS} connections offered {} MiB of partial writes (leader RSS {} MiB while \
             held); {KEPT} then finished in {:.1} s",
            offered >> 20,
            rss_held_kib >> 10,
            finishing.elapsed().as_secs_f64()
        )
    });
}

/// A client pipelines 2,000 reads of a 1 MiB file and never reads: the
/// node holds a bounded queue for it, then closes it with a log line once
/// the queue has stalled for `CONN_WRITE_STALL_TIMEOUT_MS`.
#[test]
fn pipelined_megabyte_reads_never_read() {
    const READS: usize = 2_000;
    const SIZE: usize = 1 << 20;
    scenario("2,000 reads of 1 MiB never read", "", 256, |target| {
        write_file(target, "huge", SIZE, b'h');
        let mut stream = TcpStream::connect(&target.address).expect("connect");
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .expect("write timeout");
        // The node stops reading it, so not all may be taken; that is fine.
        let requests = b"read huge\r\n".repeat(READS);
        let accepted = match stream.write(&requests) {
            Ok(n) => n,
            Err(e) => panic!("sending the reads: {e}"),
        };
        let stall = Duration::from_millis(raftfs::limits::CONN_WRITE_STALL_TIMEOUT_MS);
        let closed =
            target
                .cluster
                .wait_log(target.leader, stall + Duration::from_secs(10), |log| {
                    log.contains("none read for")
                });
        assert!(closed, "the stalled reader is closed with a log line");
        // The socket is closed: reading drains what was queued, then ends.
        let drained = read_to_close(&mut stream, Duration::from_secs(10));
        assert!(
            drained.len() < READS * SIZE,
            "not every answer was queued ({} bytes arrived)",
            drained.len()
        );
        format!(
            "{} reads of 1 MiB pipelined, none read; closed after the stall, {} MiB had been sent",
            accepted / b"read huge\r\n".len(),
            drained.len() >> 20
        )
    });
}

/// Garbage, a `write` claiming 2^40 bytes and 100 KB lines without a
/// newline: each is answered `ERR_CMD_ERR` and closed at once, nothing
/// buffered past a line.
#[test]
fn garbage_huge_claims_and_long_lines() {
    scenario("garbage, 2^40 claims, 100 KB lines", "", 256, |target| {
        let mut sentinel = Client::connect(&target.address).expect("connect");
        let version = sentinel
            .command(b"write sentinel 4\r\nsafe\r\n")
            .expect("write sentinel");
        let version = version.trim_start_matches("OK ").to_string();
        let mut rng = Pcg64Mcg::seed_from_u64(0x14c1);
        let started = Instant::now();
        let (mut garbage_bytes, mut claims, mut lines) = (0usize, 0, 0);
        while started.elapsed() < Duration::from_secs(5) {
            // A 2^40-byte claim, then content the node must not wait for.
            let mut stream = TcpStream::connect(&target.address).expect("connect");
            stream
                .set_write_timeout(Some(Duration::from_secs(2)))
                .expect("write timeout");
            let _ = stream.write_all(b"write x 1099511627776\r\n");
            let _ = stream.write_all(&vec![b'z'; 256 << 10]);
            let answer = read_to_close(&mut stream, Duration::from_secs(5));
            assert_eq!(
                String::from_utf8_lossy(&answer),
                "ERR_CMD_ERR\r\n",
                "a 2^40-byte claim is refused at once and closed"
            );
            claims += 1;
            // A 100 KB line without a newline.
            let mut stream = TcpStream::connect(&target.address).expect("connect");
            stream
                .set_write_timeout(Some(Duration::from_secs(2)))
                .expect("write timeout");
            let _ = stream.write_all(&vec![b'r'; 100_000]);
            let answer = read_to_close(&mut stream, Duration::from_secs(5));
            assert_eq!(
                String::from_utf8_lossy(&answer),
                "ERR_CMD_ERR\r\n",
                "an overlong line is refused and closed"
            );
            lines += 1;
            // Random garbage, sometimes after a command-like prefix.
            let mut stream = TcpStream::connect(&target.address).expect("connect");
            stream
                .set_write_timeout(Some(Duration::from_millis(500)))
                .expect("write timeout");
            let mut garbage = vec![0u8; rng.gen_range(1..64 << 10)];
            rng.fill_bytes(&mut garbage);
            if rng.gen_bool(0.3) {
                garbage.splice(0..0, b"write sentinel 99999999999999\r\n".iter().copied());
            }
            if stream.write_all(&garbage).is_ok() {
                garbage_bytes += garbage.len();
            }
            drop(stream);
            pause(Duration::from_millis(20));
        }
        let reply = sentinel
            .command(b"read sentinel\r\n")
            .expect("read sentinel");
        assert!(
            reply.starts_with(&format!("CONTENTS {version} 4 ")) && reply.ends_with("\nsafe"),
            "the garbage changed nothing: {reply}"
        );
        format!(
            "{claims} claims of 2^40 bytes, {lines} lines of 100 KB, {} KiB of garbage",
            garbage_bytes >> 10
        )
    });
}

/// Past `max_client_connections` a new connection gets `ERR_INTERNAL` and
/// is closed (one log line per burst); once some leave, new ones are
/// served again.
#[test]
fn connections_past_the_maximum_are_refused() {
    const MAX: usize = 100;
    // The well-behaved client holds one of the slots.
    scenario(
        "max_client_connections",
        &format!("max_client_connections = {MAX}"),
        256,
        |target| {
            let mut held = Vec::new();
            let started = Instant::now();
            // Fill the remaining slots; each is checked live with a read.
            while held.len() < MAX - 1 && started.elapsed() < Duration::from_secs(20) {
                let mut client = Client::connect(&target.address).expect("connect");
                match client.command(b"read good-1\r\n") {
                    Ok(reply) if reply.starts_with("CONTENTS") => held.push(client),
                    Ok(reply) => panic!("a held connection got {reply:?}"),
                    Err(e) => panic!("a held connection failed: {e}"),
                }
            }
            assert_eq!(held.len(), MAX - 1, "every slot is usable");
            let mut refused = 0;
            for _ in 0..50 {
                let mut stream = TcpStream::connect(&target.address).expect("connect");
                let answer = read_to_close(&mut stream, Duration::from_secs(5));
                assert_eq!(String::from_utf8_lossy(&answer), "ERR_INTERNAL\r\n");
                refused += 1;
            }
            let log = target.cluster.log_text(target.leader);
            let lines = log
                .lines()
                .filter(|line| line.contains("(max_client_connections): refused"))
                .count();
            assert!(
                (1..=10).contains(&lines),
                "one log line per burst, not per connection: {lines}"
            );
            held.truncate(MAX - 11);
            pause(Duration::from_millis(300));
            for _ in 0..10 {
                let mut client = Client::connect(&target.address).expect("connect");
                let reply = client.command(b"read good-1\r\n").expect("served again");
                assert!(reply.starts_with("CONTENTS"), "{reply}");
                held.push(client);
            }
            // Let the well-behaved client measure a while with every slot held.
            pause(Duration::from_secs(1));
            format!("{refused} connections past {MAX} refused ({lines} log line(s)); room again once 10 left")
        },
    );
}
