//! raftfs: a replicated, versioned file store.
//!
//! Module map (see DESIGN.md):
//! - `limits`: every bound, units last.
//! - `error`: error enums for environmental failures.
//! - `raft`: the sans-IO Raft core.
//! - `fsm`: the file map and deterministic apply.
//! - `storage`: the WAL.
//! - `snapshot`: snapshot files, the helper thread that takes them, InstallSnapshot bytes.
//! - `protocol`: the client protocol (SPEC §2): framing, requests, answers; pure, shared by `net` and `replica`.
//! - `net`: connections, peers, the reactor.
//! - `sim`: the deterministic simulator.
//! - `lincheck`: the linearizability checker for client histories.
//! - `logging`: the logger (text or `--log-format json`).
//! - `metrics`: counters, histograms, Prometheus text and the health verdict.
//! - `status`: `raftfs status` (asks each member over its peer port).
//! - `member`: `raftfs member list|add|promote|remove` (membership change).
//! - `restore`: `raftfs restore` (a backup snapshot into a new cluster).
//! - `client`: `raftfs client` (the interactive shell and one-shot commands).

pub mod certs;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fsm;
pub mod limits;
pub mod lincheck;
pub mod logging;
pub mod member;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod raft;
pub mod replica;
pub mod restore;
pub mod server;
pub mod service;
pub mod sim;
pub mod snapshot;
pub mod status;
pub mod storage;
