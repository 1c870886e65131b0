//! The one test harness for tests that run real `raftfs` processes on
//! 127.0.0.1, split by concern:
//! - `ports`: a block of ports per cluster, reserved across processes;
//! - `process`: spawning children that die with the test process, signals,
//!   /proc figures;
//! - `client`: the blocking line-protocol client;
//! - `cluster`: `Options`, `Cluster` (config, start/kill/pause/restart,
//!   logs, waiting for a leader), `command_anywhere`, `serial`;
//! - `single`: a one-member node for protocol tests;
//! - `proxy`, `faults`: fault-injecting peer proxies, network faults, and
//!   convergence checks;
//! - `http`: metrics, health and `raftfs status`;
//! - `files`: data-dir files;
//! - `worker`, `workload`, `diagnose`: recorded workloads for
//!   linearizability checks, and explaining their failures.
//!
//! Every test binary compiles this module on its own and uses only part of
//! it, hence the one `allow(dead_code)` below (for the whole harness, not
//! for the tests).
//!
//! Leaves out: anything about what the nodes should answer; tests decide.
#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod diagnose;
pub mod faults;
pub mod files;
pub mod http;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod single;
pub mod worker;
pub mod workload;
