//! loadgen: the load generator of raftfs (SPEC §4).
//!
//! Many pipelined connections driven by a few threads, each running its own
//! mio poll loop; commands follow a weighted mix over keys `key-<n>`; answers
//! are timed from send to reply into HdrHistograms of microseconds.
//!
//! Module map:
//! - `config`  — flags (clap), `Mix`, `Kind`
//! - `command` — encoding of commands and the written content
//! - replies are parsed by `raftfs::protocol::reply` (content never buffered),
//!   re-exported here as `Reply`, `ReplyError`, `ReplyParser`
//! - `source`  — prefill and measured command sequences, versions seen per key
//! - `client`  — one connection: pipeline, redirects, timeouts, reconnects
//! - `worker`  — one thread's poll loop over its clients, phase by phase
//! - `stats`   — counters and histograms, merged across workers
//! - `run`     — threads, phases, progress lines
//! - `report`  — text, `--json` object, `.hgrm` output
//! - `limits`  — every constant
//!
//! Top invariants: every command sent is counted exactly once, as an answer
//! or as an error; a run ends by itself within `duration + timeout` after
//! the measured phase starts, whatever the server does; bad server bytes
//! never panic loadgen.

pub mod client;
pub mod command;
pub mod config;
pub mod limits;
pub mod report;
pub mod run;
pub mod source;
pub mod stats;
pub mod worker;

pub use config::{Config, Kind, Mix};
pub use raftfs::protocol::reply::{Reply, ReplyError, ReplyParser};
pub use report::{Percentiles, PrefillSummary, Report};
pub use run::{run, RunError};
pub use stats::{Answer, ErrorKind, Stats};
