//! Fixed limits and tunables of the load generator, in one place.
//!
//! Owns: every numeric constant the other modules use (buffer sizes, retry
//! backoff, redirect hop limit; the reply-line limit is raftfs's
//! `REPLY_LINE_BYTES_MAX`). Invariants: all values are
//! small enough that a misbehaving server cannot make loadgen allocate without
//! bound. Leaves out: anything a user sets on the command line (see `config`).

/// How many times one command may be redirected before the redirect counts as
/// one it cannot follow (a loop, or a cluster that never settles).
pub const MAX_REDIRECT_HOPS: u8 = 5;

/// Bytes read from a socket per `read` call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A connection stops generating new commands while this many encoded bytes
/// wait to be written (it still keeps at least one command in flight).
pub const OUTPUT_HIGH_WATER_BYTES: usize = 256 * 1024;

/// Backoff after the first failed connect (or a connection that closed before
/// answering anything); it doubles up to `MAX_RECONNECT_BACKOFF_MS`.
pub const MIN_RECONNECT_BACKOFF_MS: u64 = 10;

/// Upper bound of the reconnect backoff.
pub const MAX_RECONNECT_BACKOFF_MS: u64 = 500;

/// Longest sleep of a worker's poll loop, so timers (timeouts, reconnects,
/// deadlines) are checked at least this often.
pub const POLL_TICK_MS: u64 = 10;

/// Largest `--size` accepted (the server's own limit is far lower by default).
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// Largest `--pipeline` accepted.
pub const MAX_PIPELINE: usize = 65_536;

/// Largest `--clients` accepted.
pub const MAX_CLIENTS: usize = 100_000;

/// Largest `--threads` accepted.
pub const MAX_THREADS: usize = 256;

/// Highest latency the histograms track exactly, in microseconds (one hour);
/// longer values are clamped to it.
pub const MAX_TRACKED_LATENCY_US: u64 = 3_600_000_000;

/// Significant figures of the latency histograms.
pub const HISTOGRAM_SIGNIFICANT_FIGURES: u8 = 3;

/// Largest `--keys` accepted (loadgen keeps one 8-byte version per key).
pub const MAX_KEYS: u64 = 50_000_000;

/// Largest `--rate` accepted, in operations per second.
pub const MAX_RATE_OPS: f64 = 100_000_000.0;

/// Largest zipfian skew (`--key-dist zipfian:THETA`) accepted.
pub const MAX_ZIPFIAN_THETA: f64 = 10.0;
