//! How fast loadgen drives a trivial fake (every command answered `OK`).
//!
//! Runs briefly under `cargo test`; `LOADGEN_BENCH_SECONDS=5 cargo test
//! --release -p loadgen --test throughput -- --nocapture` measures for real
//! (`LOADGEN_BENCH_CLIENTS`, `LOADGEN_BENCH_PIPELINE` change the shape).

mod common;

use common::fake::{FakeServer, Mode};
use common::{assert_accounted, run};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[test]
fn drives_a_trivial_fake() {
    let seconds = setting("LOADGEN_BENCH_SECONDS", "0.5");
    let clients = setting("LOADGEN_BENCH_CLIENTS", "8");
    let pipeline = setting("LOADGEN_BENCH_PIPELINE", "64");
    let server = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let report = run(&format!(
        "--addr {} --clients {clients} --pipeline {pipeline} --duration {seconds} --mix delete=1 --threads 2",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert!(report.ops() > 1000, "{}", report.text());
    println!("{}", report.text());
    println!("throughput: {:.0} ops/s", report.throughput());
}
