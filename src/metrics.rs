//! Counters and histograms of one node, their Prometheus text rendering, and
//! the verdicts served on `GET /health` and `GET /readyz`.
//!
//! Owns: `ReplicaMetrics` (kept by the replica: proposals, batch sizes, fsync
//! durations, apply latency), `ReactorMetrics` (kept by the reactor: commands
//! and error answers by kind, request latency by kind, leader changes, client
//! connections), `Histogram` (fixed bucket bounds, plain counts), the
//! process and data-dir figures read at scrape time (`ProcessStats`,
//! `DataDirStats`), `NodeView` (everything one scrape shows, gathered by the
//! reactor when a request arrives) with `render`, `health` and `readiness`.
//!
//! Invariants: recording is a few integer operations and no allocation, no
//! lock and no syscall, so it can sit on the hot path; everything else
//! (formatting, link states, lags, /proc and the data dir) happens only when
//! someone scrapes. Metric names follow Prometheus conventions: `raftfs_`
//! prefix (the standard `process_*` names for the process), base units
//! (seconds, bytes), `_total` for counters. Every series of a metric always
//! carries the same label names, and a series with a fixed label set (roles,
//! link states, command kinds) is always present, 0 when it does not apply,
//! so dashboards and alerts never see a series vanish and come back under
//! other labels. Duration buckets reach past the 5 s command timeout.
//!
//! Leaves out: the HTTP server (`net::http`).

use crate::net::peer::{LinkState, LinkStatus};
use crate::raft::{Index, MemberRole, Role, Term};
use crate::replica::Status;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

/// Bucket bounds for durations, in seconds: 50 µs to 10 s, so answers given
/// at the 5 s command timeout (`limits::COMMAND_TIMEOUT_MS`) land in a
/// bucket of their own instead of only in +Inf.
pub const DURATION_BOUNDS_S: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
const _: () = assert!(
    DURATION_BOUNDS_S[DURATION_BOUNDS_S.len() - 1] * 1_000.0
        > crate::limits::COMMAND_TIMEOUT_MS as f64
);
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
        self.render_samples(name, "", out);
    }

    /// The samples only; `labels` (e.g. `kind="read"`) go on every one.
    fn render_samples(&self, name: &str, labels: &str, out: &mut String) {
        let (plain, prefix) = if labels.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("{{{labels}}}"), format!("{labels},"))
        };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{plain} {}", self.sum);
        let _ = writeln!(out, "{name}_count{plain} {}", self.count);
    }
}

/// What the replica counts.
#[derive(Clone, Debug)]
pub struct ReplicaMetrics {
    /// Log entries this node proposed as leader.
    pub proposals: u64,
    /// Client writes this node forwarded to the leader as a follower.
    pub forwarded_commands: u64,
    /// Forwarded batches the leader refused (it had left the term they were
    /// addressed to); their commands were routed again.
    pub forwards_refused: u64,
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
            forwarded_commands: 0,
            forwards_refused: 0,
            batch_commands: Histogram::new(&BATCH_BOUNDS),
            fsync_seconds: Histogram::new(&DURATION_BOUNDS_S),
            fsync_slow: 0,
            apply_latency_seconds: Histogram::new(&DURATION_BOUNDS_S),
        }
    }
}

/// Command kinds as counted (`kind` label). A watch's latency is not
/// measured (it waits for a change, without bound).
pub const COMMAND_KINDS: [&str; 6] = ["read", "write", "cas", "delete", "malformed", "watch"];
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

/// Request kinds whose latency is measured (`kind` label), indexed like
/// the first four `COMMAND_KINDS`.
pub const REQUEST_KINDS: [&str; 4] = ["read", "write", "cas", "delete"];

/// What the reactor counts.
#[derive(Clone, Debug)]
pub struct ReactorMetrics {
    /// Indexed like `COMMAND_KINDS`.
    pub commands: [u64; 6],
    /// Indexed like `ERROR_KINDS`.
    pub errors: [u64; 5],
    /// Time from reading a command to knowing its answer, indexed like
    /// `REQUEST_KINDS`.
    pub request_seconds: [Histogram; 4],
    pub connections_accepted: u64,
    /// Times a client connection was made to wait for the client budget
    /// (`max_client_buffer_bytes`).
    pub budget_waits: u64,
    pub http_requests: u64,
    /// Leaderships this node has learned of: a known leader in a term it had
    /// not seen a leader in (etcd's `leader_changes_seen`).
    pub leader_changes: u64,
    /// The term of the last leader counted in `leader_changes`.
    leader_counted_term: Option<Term>,
}

impl Default for ReactorMetrics {
    fn default() -> Self {
        ReactorMetrics {
            commands: [0; 6],
            errors: [0; 5],
            request_seconds: std::array::from_fn(|_| Histogram::new(&DURATION_BOUNDS_S)),
            connections_accepted: 0,
            budget_waits: 0,
            http_requests: 0,
            leader_changes: 0,
            leader_counted_term: None,
        }
    }
}

impl ReactorMetrics {
    /// Counts a leader change when a leader is known in a term not yet
    /// counted. Call once per turn.
    pub fn observe_leader(&mut self, term: Term, leader: Option<crate::raft::NodeId>) {
        if leader.is_some() && self.leader_counted_term != Some(term) {
            self.leader_counted_term = Some(term);
            self.leader_changes += 1;
        }
    }

    /// Records the latency of a command of `kind` (an index into
    /// `REQUEST_KINDS`; others are ignored).
    pub fn record_request(&mut self, kind: usize, duration: Duration) {
        if let Some(histogram) = self.request_seconds.get_mut(kind) {
            histogram.record_duration(duration);
        }
    }

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
    /// Whether this node is a voting member of the configuration in force.
    pub is_member: bool,
    /// The configuration in force (members, roles, leader's match indexes).
    pub membership: crate::replica::MembershipView,
    /// The node was asked to stop and is handing over or draining.
    pub stopping: bool,
    pub client_connections: usize,
    /// Bytes held for all clients (what `max_client_buffer_bytes` bounds).
    pub client_buffer_bytes: usize,
    pub peers: Vec<PeerView>,
    pub replica: &'a ReplicaMetrics,
    pub reactor: &'a ReactorMetrics,
    /// Read from /proc for a scrape only (`None` for health checks, or when
    /// /proc cannot be read).
    pub process: Option<ProcessStats>,
    /// Measured for a scrape only.
    pub data_dir: Option<DataDirStats>,
}

/// This process as /proc/self shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files (`None` = unlimited).
    pub max_fds: Option<u64>,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads /proc/self; a read error (no /proc) is `Err` with the reason.
    pub fn read() -> Result<ProcessStats, String> {
        let me = procfs::process::Process::myself().map_err(|e| e.to_string())?;
        let stat = me.stat().map_err(|e| e.to_string())?;
        let ticks_per_second = procfs::ticks_per_second().max(1) as f64;
        let boot_time_seconds = procfs::boot_time_secs().map_err(|e| e.to_string())? as f64;
        let open_fds = me.fd_count().map_err(|e| e.to_string())? as u64;
        let max_fds = match me.limits().map(|l| l.max_open_files.soft_limit) {
            Ok(procfs::process::LimitValue::Value(limit)) => Some(limit),
            _ => None,
        };
        Ok(ProcessStats {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks_per_second,
            resident_memory_bytes: stat.rss.saturating_mul(procfs::page_size()),
            virtual_memory_bytes: stat.vsize,
            open_fds,
            max_fds,
            start_time_seconds: boot_time_seconds + stat.starttime as f64 / ticks_per_second,
        })
    }
}

/// The node's data dir and the filesystem it lives on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataDirStats {
    /// Bytes of the files in the data dir (WAL segments, snapshots, small
    /// state files), one level of subdirectories deep.
    pub bytes: u64,
    /// Bytes an unprivileged writer may still use on its filesystem.
    pub filesystem_available_bytes: u64,
    pub filesystem_size_bytes: u64,
}

impl DataDirStats {
    /// Measures `dir`: a directory listing and a statvfs, a few syscalls.
    pub fn read(dir: &Path) -> Result<DataDirStats, String> {
        let bytes = directory_bytes(dir, 1).map_err(|e| format!("{}: {e}", dir.display()))?;
        let filesystem =
            rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
        Ok(DataDirStats {
            bytes,
            filesystem_available_bytes: filesystem.f_bavail.saturating_mul(filesystem.f_frsize),
            filesystem_size_bytes: filesystem.f_blocks.saturating_mul(filesystem.f_frsize),
        })
    }
}

/// Bytes of the files under `dir`, descending `depth` more levels.
fn directory_bytes(dir: &Path, depth: usize) -> std::io::Result<u64> {
    let mut total = 0u64;
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        // A file deleted between the listing and its metadata (compaction)
        // simply counts as gone.
        let Ok(metadata) = item.metadata() else {
            continue;
        };
        if metadata.is_dir() {
            if depth > 0 {
                total = total.saturating_add(directory_bytes(&item.path(), depth - 1)?);
            }
        } else {
            total = total.saturating_add(metadata.len());
        }
    }
    Ok(total)
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
    let _ = writeln!(
        out,
        "# HELP raftfs_build_info This build: version and on-disk format versions.\n# TYPE raftfs_build_info gauge\n\
         raftfs_build_info{{version=\"{}\",wal_format=\"{}\",snapshot_format=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::storage::segment::FORMAT_VERSION,
        crate::snapshot::SNAPSHOT_FILE_FORMAT
    );
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
        "raftfs_leader_changes_total",
        "Leaders this node has learned of (one per term that had a leader).",
        view.reactor.leader_changes,
    );
    gauge(
        &mut out,
        "raftfs_member",
        "1 when this node is a voting member of the configuration in force.",
        u64::from(view.is_member),
    );
    render_membership(&mut out, view);
    counter(
        &mut out,
        "raftfs_proposals_total",
        "Log entries proposed by this node as leader.",
        view.replica.proposals,
    );
    counter(
        &mut out,
        "raftfs_forwarded_commands_total",
        "Client writes this node forwarded to the leader as a follower.",
        view.replica.forwarded_commands,
    );
    counter(
        &mut out,
        "raftfs_forwards_refused_total",
        "Forwarded batches refused by a node that had left the term they were addressed to (their commands were routed again).",
        view.replica.forwards_refused,
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
    gauge(
        &mut out,
        "raftfs_client_buffer_bytes",
        "Bytes held for clients: unparsed input, unanswered commands, queued answers (bounded by max_client_buffer_bytes).",
        view.client_buffer_bytes as u64,
    );
    counter(
        &mut out,
        "raftfs_client_budget_waits_total",
        "Times a client connection waited for the client budget (max_client_buffer_bytes) before being read.",
        view.reactor.budget_waits,
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
            "raftfs_peer_up{{peer=\"{}\"}} {}",
            peer.link.peer,
            u64::from(peer.link.state == LinkState::Connected)
        );
    }
    let _ = writeln!(
        out,
        "# HELP raftfs_peer_link_state 1 for the state the link to the peer is in.\n# TYPE raftfs_peer_link_state gauge"
    );
    for peer in &view.peers {
        for state in [LinkState::Connected, LinkState::Connecting, LinkState::Down] {
            let _ = writeln!(
                out,
                "raftfs_peer_link_state{{peer=\"{}\",state=\"{}\"}} {}",
                peer.link.peer,
                link_state_name(state),
                u64::from(peer.link.state == state)
            );
        }
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
    let name = "raftfs_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Client commands, by kind: time from reading the command to its answer.\n# TYPE {name} histogram"
    );
    for (kind, histogram) in REQUEST_KINDS.iter().zip(&view.reactor.request_seconds) {
        histogram.render_samples(name, &format!("kind=\"{kind}\""), &mut out);
    }
    if let Some(process) = &view.process {
        render_process(process, &mut out);
    }
    if let Some(data_dir) = &view.data_dir {
        gauge(
            &mut out,
            "raftfs_data_dir_bytes",
            "Bytes of the files in this node's data dir (WAL, snapshots).",
            data_dir.bytes,
        );
        gauge(
            &mut out,
            "raftfs_data_dir_filesystem_available_bytes",
            "Bytes still available on the data dir's filesystem.",
            data_dir.filesystem_available_bytes,
        );
        gauge(
            &mut out,
            "raftfs_data_dir_filesystem_size_bytes",
            "Size of the data dir's filesystem.",
            data_dir.filesystem_size_bytes,
        );
    }
    out
}

/// The standard `process_*` series (the names Prometheus client libraries
/// use, so stock dashboards work).
/// The configuration in force: member counts by role, its index, each
/// member's role, and (leader only) how many entries each member's log is
/// behind the leader's.
fn render_membership(out: &mut String, view: &NodeView<'_>) {
    let membership = &view.membership;
    let _ = writeln!(
        out,
        "# HELP raftfs_members Members of the configuration in force, by role.\n# TYPE raftfs_members gauge"
    );
    for role in [MemberRole::Voter, MemberRole::Learner] {
        let count = membership.members.iter().filter(|m| m.role == role).count();
        let _ = writeln!(out, "raftfs_members{{role=\"{}\"}} {count}", role.name());
    }
    let _ = writeln!(
        out,
        "# HELP raftfs_configuration_index Log index of the configuration in force (0: cluster.toml's, not yet in the log).\n\
         # TYPE raftfs_configuration_index gauge\nraftfs_configuration_index {}",
        membership.index
    );
    let _ = writeln!(
        out,
        "# HELP raftfs_member_voter 1 when the member votes, 0 for a learner (configuration in force).\n\
         # TYPE raftfs_member_voter gauge"
    );
    for member in &membership.members {
        let _ = writeln!(
            out,
            "raftfs_member_voter{{member=\"{}\"}} {}",
            member.id,
            u64::from(member.role == MemberRole::Voter)
        );
    }
    let _ = writeln!(
        out,
        "# HELP raftfs_member_lag_entries Leader only: entries each member's log is behind the leader's.\n\
         # TYPE raftfs_member_lag_entries gauge"
    );
    for member in &membership.members {
        if let Some(match_index) = member.match_index {
            let _ = writeln!(
                out,
                "raftfs_member_lag_entries{{member=\"{}\"}} {}",
                member.id,
                view.status.last_index.saturating_sub(match_index)
            );
        }
    }
}

fn render_process(process: &ProcessStats, out: &mut String) {
    let series: [(&str, &str, &str, Option<String>); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            Some(process.cpu_seconds.to_string()),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            Some(process.resident_memory_bytes.to_string()),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            Some(process.virtual_memory_bytes.to_string()),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            Some(process.open_fds.to_string()),
        ),
        (
            "process_max_fds",
            "gauge",
            "The soft limit on open file descriptors.",
            process.max_fds.map(|max_fds| max_fds.to_string()),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            Some(process.start_time_seconds.to_string()),
        ),
    ];
    for (name, kind, help, value) in series {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// `GET /readyz`: `health`, and also a voting member of the configuration
/// in force that is not stopping (a stopping node hands its clients over, so
/// a load balancer should stop sending it new ones); else why not.
pub fn readiness(view: &NodeView<'_>, lag_entries_max: u64) -> Result<(), String> {
    if view.stopping {
        return Err("stopping".to_string());
    }
    if !view.is_member {
        return Err(format!(
            "node {} is not a voting member of the configuration in force",
            view.status.id
        ));
    }
    health(view, lag_entries_max)
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
            is_member: true,
            membership: crate::replica::MembershipView::default(),
            stopping: false,
            client_connections: 0,
            client_buffer_bytes: 0,
            peers: Vec::new(),
            replica: &replica,
            reactor: &reactor,
            process: None,
            data_dir: None,
        };
        assert_eq!(health(&view(Some(1), 100, 95), 10), Ok(()));
        assert_eq!(readiness(&view(Some(1), 100, 95), 10), Ok(()));
        let stopping = NodeView {
            stopping: true,
            ..view(Some(1), 100, 95)
        };
        assert_eq!(readiness(&stopping, 10), Err("stopping".to_string()));
        let learner = NodeView {
            is_member: false,
            ..view(Some(1), 100, 95)
        };
        assert!(readiness(&learner, 10)
            .unwrap_err()
            .contains("not a voting member"));
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
    fn labelled_histograms_and_leader_changes() {
        let mut metrics = ReactorMetrics::default();
        metrics.record_request(1, Duration::from_millis(5_200));
        metrics.record_request(9, Duration::from_millis(1));
        let mut out = String::new();
        metrics.request_seconds[1].render_samples("r", "kind=\"write\"", &mut out);
        assert!(
            out.contains("r_bucket{kind=\"write\",le=\"5\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("r_bucket{kind=\"write\",le=\"10\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("r_count{kind=\"write\"} 1\n"), "{out}");
        for (term, leader) in [
            (1, None),
            (1, Some(3)),
            (1, Some(3)),
            (2, None),
            (3, Some(3)),
        ] {
            metrics.observe_leader(term, leader);
        }
        assert_eq!(metrics.leader_changes, 2);
    }

    #[test]
    fn process_and_data_dir_figures_are_read() {
        let process = ProcessStats::read().expect("/proc/self");
        assert!(process.resident_memory_bytes > 0);
        assert!(process.open_fds >= 3);
        assert!(process.start_time_seconds > 1.0e9);
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a"), [0u8; 1000]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/b"), [0u8; 24]).expect("write");
        let stats = DataDirStats::read(dir.path()).expect("stats");
        assert_eq!(stats.bytes, 1024);
        assert!(stats.filesystem_size_bytes >= stats.filesystem_available_bytes);
        assert!(stats.filesystem_size_bytes > 0);
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
