//! `--rate` (open loop: operations at fixed intended times, latency from the
//! intended time) and `--total` (a fixed number of operations), against
//! in-test fake servers on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::fake::{FakeServer, Mode, Options};
use common::{assert_accounted, run};

#[test]
fn a_rate_sends_exactly_the_scheduled_operations() {
    let server = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    // 400 ops/s for 0.5 s: global operations 0..200 are intended before the end.
    let report = run(&format!(
        "--addr {} --clients 4 --pipeline 4 --rate 400 --duration 0.5 --mix delete=1",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert_eq!(report.ops(), 200, "{}", report.text());
    assert_eq!(report.stats.unsent, 0);
    assert!(report.duration_s < 1.0, "{}", report.duration_s);
    let json = report.to_json();
    assert_eq!(json["rate"].as_f64(), Some(400.0));
    assert_eq!(json["unsent"].as_u64(), Some(0));
}

#[test]
fn open_loop_latency_includes_the_wait_for_a_free_slot() {
    // Every answer takes 100 ms; one connection, one slot: the server can do
    // 10 ops/s. A closed loop sees 100 ms per operation; asked for 50 ops/s,
    // an open loop sees the queue grow and reports it.
    let options = Options {
        hold_ms: Some(100),
        ..Options::default()
    };
    let server = FakeServer::start_with(Mode::Fixed(b"OK\r\n".to_vec()), options);
    let shape = "--clients 1 --pipeline 1 --duration 1 --timeout-ms 1000 --mix delete=1";
    let closed = run(&format!("--addr {} {shape}", server.address));
    let open = run(&format!("--addr {} {shape} --rate 50", server.address));
    assert_accounted(&closed);
    assert_accounted(&open);
    let (closed_max, open_max) = (closed.percentiles().max_us, open.percentiles().max_us);
    assert!(closed_max < 400_000, "closed loop: {}", closed.text());
    assert!(
        open_max > 500_000 && open_max > 2 * closed_max,
        "open loop max {open_max} us vs closed {closed_max} us\n{}",
        open.text()
    );
    assert!(
        open.stats.unsent > 0,
        "most of the 50 scheduled operations never found a slot\n{}",
        open.text()
    );
    assert!(
        open.text().contains("due but never sent"),
        "{}",
        open.text()
    );
}

#[test]
fn a_total_stops_the_run_after_that_many_operations() {
    let server = FakeServer::start(Mode::Store);
    let started = Instant::now();
    let report = run(&format!(
        "--addr {} --clients 3 --pipeline 4 --total 123 --mix write=1,read=1 --keys 7",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.ops() + report.errors(), 123, "{}", report.text());
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no 10 s default duration"
    );

    // With a rate too: 50 operations at 1000 ops/s take about 50 ms.
    let report = run(&format!(
        "--addr {} --clients 2 --total 50 --rate 1000 --mix write=1",
        server.address
    ));
    assert_eq!(report.ops(), 50, "{}", report.text());
    assert!(
        report.duration_s >= 0.045 && report.duration_s < 1.0,
        "{}",
        report.duration_s
    );

    // A duration shorter than the total's time ends the run first.
    let report = run(&format!(
        "--addr {} --clients 1 --total 1000000 --rate 100 --duration 0.3 --mix write=1",
        server.address
    ));
    assert_eq!(report.ops(), 30, "{}", report.text());
}

#[test]
fn a_total_against_nothing_listening_ends_by_itself() {
    let server = FakeServer::start(Mode::Hang);
    let started = Instant::now();
    let report = run(&format!(
        "--addr {} --clients 2 --total 10 --timeout-ms 300 --mix delete=1",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.ops(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
