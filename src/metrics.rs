//! Counters and histograms of one node, their Prometheus text rendering, and
//! the health verdict served on `GET /health`.
//!
//! Owns: `ReplicaMetrics` (kept by the replica: proposals, batch sizes, fsync
//! durations, apply latency), `ReactorMetrics` (kept by the reactor: commands
//! and error answers by kind, client connections), `Histogram` (fixed bucket
//! bounds, plain counts), `NodeView` (everything one scrape shows, gathered
//! by the reactor when a request arrives) with `render`, and `health`.
//!
//! Invariants: recording is a few integer operations and no allocation, no
//! lock and no syscall, so it can sit on the hot path; everything else
//! (formatting, link states, lags) happens only when someone scrapes. Metric
//! names follow Prometheus conventions: `raftfs_` prefix, base units
//! (seconds), `_total` for counters.
//!
//! Leaves out: the HTTP server (`net::http`).

use crate::net::peer::{LinkState, LinkStatus};
use crate::raft::{Index, Role};
use crate::replica::Status;
use std::fmt::Write;
use std::time::Duration;

/// Bucket bounds for durations, in seconds: 50 µs to 2.5 s.
pub const DURATION_BOUNDS_S: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    2.5,
];
/// Bucket bounds for batch sizes, in commands per log entry.
pub const BATCH_BOUNDS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0,
];

/// A histogram with fixed bucket bounds: a count per bucket (the last one
/// is +Inf), the sum and the count.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn record(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn record_duration(&mut self, duration: Duration) {
        self.record(duration.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// What the replica counts.
#[derive(Clone, Debug)]
pub struct ReplicaMetrics {
    /// Log entries this node proposed as leader.
    pub proposals: u64,
    /// Commands per proposed entry.
    pub batch_commands: Histogram,
    /// Duration of each WAL sync (write + fdatasync).
    pub fsync_seconds: Histogram,
    /// Syncs above `limits::FSYNC_SLOW_MS` (each is also logged).
    pub fsync_slow: u64,
    /// Leader: time from proposing an entry to applying it (replication,
    /// fsync on a majority, commit, apply).
    pub apply_latency_seconds: Histogram,
}

impl Default for ReplicaMetrics {
    fn default() -> Self {
        ReplicaMetrics {
            proposals: 0,
            batch_commands: Histogram::new(&BATCH_BOUNDS),
            fsync_seconds: Histogram::new(&DURATION_BOUNDS_S),
            fsync_slow: 0,
            apply_latency_seconds: Histogram::new(&DURATION_BOUNDS_S),
        }
    }
}

/// Command kinds as counted (`kind` label).
pub const COMMAND_KINDS: [&str; 5] = ["read", "write", "cas", "delete", "malformed"];
/// Error answers as counted (`kind` label), in the order of `ERROR_PREFIXES`.
pub const ERROR_KINDS: [&str; 5] = [
    "redirect",
    "internal",
    "cmd_err",
    "file_not_found",
    "version",
];
const ERROR_PREFIXES: [&[u8]; 5] = [
    b"ERR_REDIRECT",
    b"ERR_INTERNAL",
    b"ERR_CMD_ERR",
    b"ERR_FILE_NOT_FOUND",
    b"ERR_VERSION",
];

/// What the reactor counts.
#[derive(Clone, Debug, Default)]
pub struct ReactorMetrics {
    /// Indexed like `COMMAND_KINDS`.
    pub commands: [u64; 5],
    /// Indexed like `ERROR_KINDS`.
    pub errors: [u64; 5],
    pub connections_accepted: u64,
    pub http_requests: u64,
}

impl ReactorMetrics {
    /// Counts an answer if it is an error (a first-byte check for the rest).
    pub fn count_reply(&mut self, reply: &[u8]) {
        if reply.first() != Some(&b'E') {
            return;
        }
        if let Some(kind) = ERROR_PREFIXES
            .iter()
            .position(|prefix| reply.starts_with(prefix))
        {
            self.errors[kind] += 1;
        }
    }
}

/// One outbound link as a scrape shows it.
#[derive(Clone, Debug)]
pub struct PeerView {
    pub link: LinkStatus,
    /// Leader only: entries the peer is behind this node's last index.
    pub lag_entries: Option<Index>,
}

/// Everything one scrape or health check needs, gathered by the reactor.
pub struct NodeView<'a> {
    pub status: Status,
    /// The cluster commit index as this node knows it.
    pub known_commit_index: Index,
    /// The index the newest snapshot covers (the log starts after it).
    pub snapshot_index: Index,
    pub client_connections: usize,
    pub peers: Vec<PeerView>,
    pub replica: &'a ReplicaMetrics,
    pub reactor: &'a ReactorMetrics,
    /// The file map at `status.applied_index` (for `GET /snapshot`).
    pub fsm: &'a crate::fsm::Fsm,
}

pub fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Leader) => "leader",
        Some(Role::Candidate) => "candidate",
        Some(Role::PreCandidate) => "precandidate",
        Some(Role::Follower) => "follower",
        None => "unknown",
    }
}

fn link_state_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Connected => "up",
        LinkState::Connecting => "connecting",
        LinkState::Down => "down",
    }
}

/// Prometheus text exposition format (version 0.0.4).
pub fn render(view: &NodeView<'_>) -> String {
    let mut out = String::with_capacity(8 << 10);
    let status = &view.status;
    let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    gauge(&mut out, "raftfs_node_id", "This node's id.", status.id);
    let _ = writeln!(
        out,
        "# HELP raftfs_role 1 for this node's current Raft role.\n# TYPE raftfs_role gauge"
    );
    for role in ["leader", "candidate", "precandidate", "follower"] {
        let value = u64::from(role_name(status.role) == role);
        let _ = writeln!(out, "raftfs_role{{role=\"{role}\"}} {value}");
    }
    gauge(&mut out, "raftfs_term", "Current Raft term.", status.term);
    gauge(
        &mut out,
        "raftfs_leader_id",
        "Id of the leader this node knows (0 = none).",
        status.leader.unwrap_or(0),
    );
    gauge(
        &mut out,
        "raftfs_commit_index",
        "This node's commit index.",
        status.commit_index,
    );
    gauge(
        &mut out,
        "raftfs_known_commit_index",
        "The largest commit index a leader announced to this node.",
        view.known_commit_index,
    );
    gauge(
        &mut out,
        "raftfs_applied_index",
        "Last log index applied to the file map.",
        status.applied_index,
    );
    gauge(
        &mut out,
        "raftfs_log_last_index",
        "Last index in this node's log.",
        status.last_index,
    );
    gauge(
        &mut out,
        "raftfs_log_entries",
        "Entries held in the log (those after the latest snapshot).",
        status.last_index.saturating_sub(view.snapshot_index),
    );
    gauge(
        &mut out,
        "raftfs_snapshot_index",
        "Index covered by the latest snapshot (0: none yet).",
        view.snapshot_index,
    );
    gauge(
        &mut out,
        "raftfs_files",
        "Files in the file map.",
        status.files as u64,
    );
    counter(
        &mut out,
        "raftfs_proposals_total",
        "Log entries proposed by this node as leader.",
        view.replica.proposals,
    );
    let _ = writeln!(
        out,
        "# HELP raftfs_commands_total Client commands received, by kind.\n# TYPE raftfs_commands_total counter"
    );
    for (kind, value) in COMMAND_KINDS.iter().zip(view.reactor.commands) {
        let _ = writeln!(out, "raftfs_commands_total{{kind=\"{kind}\"}} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP raftfs_errors_total Error answers sent to clients, by kind.\n# TYPE raftfs_errors_total counter"
    );
    for (kind, value) in ERROR_KINDS.iter().zip(view.reactor.errors) {
        let _ = writeln!(out, "raftfs_errors_total{{kind=\"{kind}\"}} {value}");
    }
    gauge(
        &mut out,
        "raftfs_client_connections",
        "Open client connections.",
        view.client_connections as u64,
    );
    counter(
        &mut out,
        "raftfs_client_connections_accepted_total",
        "Client connections accepted.",
        view.reactor.connections_accepted,
    );
    counter(
        &mut out,
        "raftfs_fsync_slow_total",
        "WAL syncs slower than the slow-fsync threshold.",
        view.replica.fsync_slow,
    );
    let _ = writeln!(
        out,
        "# HELP raftfs_peer_up 1 when the link to the peer is connected.\n# TYPE raftfs_peer_up gauge"
    );
    for peer in &view.peers {
        let _ = writeln!(
            out,
            "raftfs_peer_up{{peer=\"{}\",state=\"{}\"}} {}",
            peer.link.peer,
            link_state_name(peer.link.state),
            u64::from(peer.link.state == LinkState::Connected)
        );
    }
    let _ = writeln!(
        out,
        "# HELP raftfs_peer_lag_entries Leader only: entries the peer's log is behind.\n# TYPE raftfs_peer_lag_entries gauge"
    );
    for peer in &view.peers {
        if let Some(lag) = peer.lag_entries {
            let _ = writeln!(
                out,
                "raftfs_peer_lag_entries{{peer=\"{}\"}} {lag}",
                peer.link.peer
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP raftfs_peer_frames_dropped_total Frames to the peer dropped (queue overflow or link down).\n# TYPE raftfs_peer_frames_dropped_total counter"
    );
    for peer in &view.peers {
        let _ = writeln!(
            out,
            "raftfs_peer_frames_dropped_total{{peer=\"{}\"}} {}",
            peer.link.peer, peer.link.frames_dropped
        );
    }
    view.replica.fsync_seconds.render(
        "raftfs_fsync_duration_seconds",
        "Duration of each WAL sync (write and fdatasync).",
        &mut out,
    );
    view.replica.batch_commands.render(
        "raftfs_batch_commands",
        "Client commands per proposed log entry.",
        &mut out,
    );
    view.replica.apply_latency_seconds.render(
        "raftfs_apply_latency_seconds",
        "Leader: time from proposing an entry to applying it.",
        &mut out,
    );
    out
}

/// `GET /health`: Ok when the node knows a leader and has applied to within
/// `lag_entries_max` of the commit index the leader announced; else why not.
pub fn health(view: &NodeView<'_>, lag_entries_max: u64) -> Result<(), String> {
    let status = &view.status;
    let Some(leader) = status.leader else {
        return Err(format!("no leader known (term {})", status.term));
    };
    let behind = view.known_commit_index.saturating_sub(status.applied_index);
    if behind > lag_entries_max {
        return Err(format!(
            "applied index {} is {behind} entries behind the leader's commit index {} (node {leader} leads)",
            status.applied_index, view.known_commit_index
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut histogram = Histogram::new(&BATCH_BOUNDS);
        for value in [1.0, 3.0, 3.0, 100_000.0] {
            histogram.record(value);
        }
        let mut out = String::new();
        histogram.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"16384\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
    }

    #[test]
    fn health_needs_a_leader_and_a_small_apply_lag() {
        let replica = ReplicaMetrics::default();
        let reactor = ReactorMetrics::default();
        let fsm = crate::fsm::Fsm::new();
        let view = |leader, known_commit_index, applied_index| NodeView {
            status: Status {
                id: 2,
                role: Some(Role::Follower),
                term: 4,
                leader,
                commit_index: applied_index,
                applied_index,
                last_index: applied_index,
                files: 0,
            },
            known_commit_index,
            snapshot_index: 60,
            client_connections: 0,
            peers: Vec::new(),
            replica: &replica,
            reactor: &reactor,
            fsm: &fsm,
        };
        assert_eq!(health(&view(Some(1), 100, 95), 10), Ok(()));
        let error = health(&view(None, 100, 100), 10).unwrap_err();
        assert_eq!(error, "no leader known (term 4)");
        let error = health(&view(Some(1), 100, 50), 10).unwrap_err();
        assert!(error.contains("50 entries behind"), "{error}");
        let text = render(&view(Some(1), 100, 95));
        assert!(
            text.contains("raftfs_role{role=\"follower\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("raftfs_leader_id 1\n"), "{text}");
        assert!(text.contains("raftfs_snapshot_index 60\n"), "{text}");
        assert!(text.contains("raftfs_log_entries 35\n"), "{text}");
        assert!(
            text.contains("# TYPE raftfs_fsync_duration_seconds histogram\n"),
            "{text}"
        );
    }

    #[test]
    fn error_answers_are_counted_by_kind() {
        let mut metrics = ReactorMetrics::default();
        metrics.count_reply(b"OK 3\r\n");
        metrics.count_reply(b"ERR_REDIRECT 127.0.0.1:1\r\n");
        metrics.count_reply(b"ERR_VERSION 4\r\n");
        metrics.count_reply(b"ERR_VERSION 5\r\n");
        assert_eq!(metrics.errors, [1, 0, 0, 0, 2]);
    }
}
