//! Helpers shared by loadgen's integration tests.

#![allow(dead_code)]

pub mod fake;

use loadgen::{Config, Report};

/// Parses a loadgen command line (flags separated by spaces, program name
/// added) or fails the test.
pub fn config(flags: &str) -> Config {
    let args = std::iter::once("loadgen").chain(flags.split_whitespace());
    Config::try_from_args(args).unwrap_or_else(|error| panic!("flags `{flags}`: {error}"))
}

/// Runs loadgen quietly.
pub fn run(flags: &str) -> Report {
    loadgen::run(&config(flags), &mut std::io::sink())
        .unwrap_or_else(|error| panic!("run `{flags}`: {error}"))
}

/// Every generated command is counted exactly once, as an answer or an error.
pub fn assert_accounted(report: &Report) {
    let sent: u64 = report.stats.kinds.iter().map(|kind| kind.sent).sum();
    assert_eq!(
        sent,
        report.ops() + report.errors(),
        "sent = answered + failed\n{}",
        report.text()
    );
}
