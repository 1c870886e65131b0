//! How fast loadgen drives a trivial fake (every command answered `OK`).
//!
//! Runs briefly under `cargo test`; `LOADGEN_BENCH_SECONDS=5 cargo test
//! --release -p loadgen --test throughput -- --nocapture` measures for real.

mod common;

use common::fake::{FakeServer, Mode};
use common::{assert_accounted, run};

#[test]
fn drives_a_trivial_fake() {
    let seconds = std::env::var("LOADGEN_BENCH_SECONDS").unwrap_or_else(|_| "0.5".to_string());
    let clients = std::env::var("LOADGEN_BENCH_CLIENTS").unwrap_or_else(|_| "8".to_string());
    let pipeline = std::env::var("LOADGEN_BENCH_PIPELINE").unwrap_or_else(|_| "64".to_string());
    let server = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let report = run(&[
        "--addr",
        &server.address.to_string(),
        "--clients",
        &clients,
        "--pipeline",
        &pipeline,
        "--duration",
        &seconds,
        "--mix",
        "delete=1",
        "--threads",
        "2",
    ]);
    assert_accounted(&report);
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert!(report.ops() > 1000, "{}", report.text());
    println!("{}", report.text());
    println!("throughput: {:.0} ops/s", report.throughput());
}
