//! `raftfs status`: ask every member of a cluster for its state and print one
//! line per member (or a JSON array with `--json`).
//!
//! How a member is asked: over its PEER port, with a status probe (a first
//! frame of `wire::STATUS_MAGIC` instead of a hello; see `net::peer::wire`).
//! The node's reactor answers it with one frame holding a `StatusReport` as
//! JSON and closes. The peer port was chosen over the metrics listener
//! because every member has one: status works whether or not `metrics` is
//! configured, and needs no HTTP client. A member that does not answer
//! within `STATUS_PROBE_TIMEOUT_MS` is shown as down.
//!
//! Lag: the largest commit index any member reports (normally the leader's)
//! minus the member's applied index.
//!
//! Membership: each report carries the configuration in force as that node
//! sees it (voters, learners, their addresses, and on the leader how far
//! each member's log matches). The members asked are cluster.toml's and,
//! once a report names them, the configuration's (a member added since
//! cluster.toml was written); each line says whether the member is a voter
//! or a learner of the freshest configuration reported (the leader's, else
//! the one at the highest index), or not a member.
//!
//! TLS: with `[peer_tls]` (or `--ca`) every probe is mutual TLS
//! (`use_peer_tls`), the node verified by the IP address of its peer port
//! (`raftfs certs` writes it into each node's certificate).
//!
//! Leaves out: asking through a proxy.

use crate::config::{ClusterConfig, Member};
use crate::error::{Error, Result};
use crate::limits;
use crate::net::peer::wire;
use crate::net::tls::{ToolStream, ToolTls};
use crate::raft::{Index, NodeId, Term};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a node says about itself when probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub id: NodeId,
    /// "leader", "follower", "candidate" or "precandidate".
    pub role: String,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: Index,
    /// The largest commit index a leader announced to this node.
    pub known_commit_index: Index,
    pub applied_index: Index,
    pub last_index: Index,
    pub files: u64,
    /// The node's `GET /health` verdict: None = healthy, else the reason.
    pub unhealthy: Option<String>,
    /// The configuration in force as this node sees it (None from a build
    /// without membership change).
    #[serde(default)]
    pub membership: Option<MembershipReport>,
}

/// The configuration in force, as one node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReport {
    /// The log index of the entry that made it (0: cluster.toml's, not yet
    /// in the log).
    pub index: Index,
    /// Whether that entry is committed.
    pub committed: bool,
    pub members: Vec<MemberReport>,
}

/// One member of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub id: NodeId,
    /// "voter" or "learner".
    pub role: String,
    pub peer: String,
    pub client: String,
    pub metrics: Option<String>,
    /// Reported by the leader only: the member's log matches the leader's
    /// through this index.
    pub match_index: Option<Index>,
}

impl MembershipReport {
    /// The report of the replica's view.
    pub fn of(view: &crate::replica::MembershipView) -> MembershipReport {
        MembershipReport {
            index: view.index,
            committed: view.committed,
            members: view
                .members
                .iter()
                .map(|member| MemberReport {
                    id: member.id,
                    role: member.role.name().to_string(),
                    peer: member.addresses.peer.clone(),
                    client: member.addresses.client.clone(),
                    metrics: (!member.addresses.metrics.is_empty())
                        .then(|| member.addresses.metrics.clone()),
                    match_index: member.match_index,
                })
                .collect(),
        }
    }
}

/// One line of `raftfs status`.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    /// The member's advertised client address.
    pub address: String,
    pub up: bool,
    /// Why it counts as down (when `up` is false).
    pub error: Option<String>,
    pub role: Option<String>,
    /// "voter", "learner" or "none" in the freshest configuration reported.
    pub member: Option<String>,
    pub term: Option<Term>,
    pub leader: Option<NodeId>,
    pub commit_index: Option<Index>,
    pub applied_index: Option<Index>,
    /// Entries behind the cluster's commit index (see the module doc).
    pub lag: Option<Index>,
    pub healthy: Option<bool>,
}

/// TLS for every probe of this process (`raftfs status` and `member` set
/// it once from `--ca/--cert/--key` or the config's `[peer_tls]`).
static PEER_TLS: std::sync::OnceLock<ToolTls> = std::sync::OnceLock::new();

/// Probes from now on use `tls` (the first call wins).
pub fn use_peer_tls(tls: ToolTls) {
    let _ = PEER_TLS.set(tls);
}

/// Asks one node at `peer_address` for its report (over the process's
/// probe TLS, if `use_peer_tls` set one).
pub fn probe(peer_address: SocketAddr, timeout: Duration) -> std::io::Result<StatusReport> {
    probe_with(peer_address, timeout, PEER_TLS.get())
}

/// `probe` over `tls` (plain TCP for `None`).
pub fn probe_with(
    peer_address: SocketAddr,
    timeout: Duration,
    tls: Option<&ToolTls>,
) -> std::io::Result<StatusReport> {
    let payload = exchange_with(peer_address, &wire::encode_status_probe(), timeout, tls)?;
    serde_json::from_slice(&payload).map_err(|error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("undecodable status report: {error}"),
        )
    })
}

/// Sends one probe `frame` to the peer port at `peer_address` and returns
/// the one frame answered (a report, or a membership answer).
pub fn exchange(
    peer_address: SocketAddr,
    frame: &[u8],
    timeout: Duration,
) -> std::io::Result<bytes::Bytes> {
    exchange_with(peer_address, frame, timeout, PEER_TLS.get())
}

fn exchange_with(
    peer_address: SocketAddr,
    frame: &[u8],
    timeout: Duration,
    tls: Option<&ToolTls>,
) -> std::io::Result<bytes::Bytes> {
    let deadline = Instant::now() + timeout;
    let mut stream = match tls {
        Some(tls) => tls.connect(peer_address, timeout)?,
        None => ToolStream::Plain(TcpStream::connect_timeout(&peer_address, timeout)?),
    };
    stream.socket().set_nodelay(true)?;
    stream.write_all(frame)?;
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.socket().set_read_timeout(Some(remaining))?;
        match wire::next_frame(&mut buffer, limits::STATUS_REPORT_BYTES_MAX) {
            Ok(Some(payload)) => return Ok(payload.freeze()),
            Ok(None) => {}
            Err(error) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a raftfs peer port ({error})"),
                ))
            }
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed without a status report (not a raftfs peer port, or another version)",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// A member to ask: its id, client address (shown) and peer address.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: NodeId,
    pub client: String,
    pub peer: String,
}

impl Target {
    /// cluster.toml's entry for a member.
    pub fn of(member: &Member) -> Target {
        Target {
            id: member.id,
            client: member.client.clone(),
            peer: member.peer.to_string(),
        }
    }
}

/// A member asked, and its report or why there is none.
pub type ProbeResult = (Target, std::result::Result<StatusReport, String>);

/// Probes `targets` in parallel (a peer address that does not resolve is
/// an error for that member only).
pub fn probe_all(targets: Vec<Target>, timeout: Duration) -> Vec<ProbeResult> {
    let threads: Vec<_> = targets
        .into_iter()
        .map(|target| {
            let peer = target.peer.clone();
            let thread = std::thread::spawn(move || {
                let address = resolve(&peer)?;
                probe(address, timeout).map_err(|error| error.to_string())
            });
            (target, thread)
        })
        .collect();
    threads
        .into_iter()
        .map(|(target, thread)| {
            let result = thread
                .join()
                .unwrap_or_else(|_| Err("probe thread panicked".to_string()));
            (target, result)
        })
        .collect()
}

/// The first socket address `address` (HOST:PORT) names.
pub fn resolve(address: &str) -> std::result::Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {address}: {error}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))
}

/// The freshest configuration among reports: the leader's of the highest
/// term, else the one at the highest index (committed first).
pub fn freshest_membership<'a>(
    reports: impl Iterator<Item = &'a StatusReport>,
) -> Option<&'a MembershipReport> {
    reports
        .filter_map(|report| {
            let membership = report.membership.as_ref()?;
            let leads = report.role == "leader";
            Some((
                (
                    leads,
                    report.term * u64::from(leads),
                    membership.index,
                    membership.committed,
                ),
                membership,
            ))
        })
        .max_by_key(|(key, _)| *key)
        .map(|(_, membership)| membership)
}

/// Probes `targets` and then the members the freshest configuration
/// reported names that are not among them (in parallel, two rounds at
/// most). Sorted by id.
pub fn probe_cluster(targets: Vec<Target>, timeout: Duration) -> Vec<ProbeResult> {
    let mut results = probe_all(targets, timeout);
    let named: Vec<Target> = freshest_membership(
        results
            .iter()
            .filter_map(|(_, result)| result.as_ref().ok()),
    )
    .map(|membership| {
        membership
            .members
            .iter()
            .filter(|member| !results.iter().any(|(target, _)| target.id == member.id))
            .map(|member| Target {
                id: member.id,
                client: member.client.clone(),
                peer: member.peer.clone(),
            })
            .collect()
    })
    .unwrap_or_default();
    if !named.is_empty() {
        results.extend(probe_all(named, timeout));
    }
    results.sort_by_key(|(target, _)| target.id);
    results
}

/// Probes every member cluster.toml lists and every member the reports
/// name, and computes lags.
pub fn collect(config: &ClusterConfig, timeout: Duration) -> Vec<MemberStatus> {
    let targets: Vec<Target> = config.members.iter().map(Target::of).collect();
    let results = probe_cluster(targets, timeout);
    let membership = freshest_membership(
        results
            .iter()
            .filter_map(|(_, result)| result.as_ref().ok()),
    )
    .cloned();
    let member_role = |id: NodeId| {
        membership.as_ref().map(|membership| {
            membership
                .members
                .iter()
                .find(|member| member.id == id)
                .map_or_else(|| "none".to_string(), |member| member.role.clone())
        })
    };
    let cluster_commit = results
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .map(|report| report.commit_index.max(report.known_commit_index))
        .max();
    results
        .into_iter()
        .map(|(member, result)| match result {
            Ok(report) => MemberStatus {
                id: member.id,
                address: member.client.clone(),
                up: true,
                error: None,
                role: Some(report.role),
                member: member_role(member.id),
                term: Some(report.term),
                leader: report.leader,
                commit_index: Some(report.commit_index),
                applied_index: Some(report.applied_index),
                lag: cluster_commit.map(|commit| commit.saturating_sub(report.applied_index)),
                healthy: Some(report.unhealthy.is_none()),
            },
            Err(error) => MemberStatus {
                id: member.id,
                address: member.client.clone(),
                up: false,
                error: Some(error),
                role: None,
                member: member_role(member.id),
                term: None,
                leader: None,
                commit_index: None,
                applied_index: None,
                lag: None,
                healthy: None,
            },
        })
        .collect()
}

/// The human table: a header and one line per member.
pub fn render_table(members: &[MemberStatus]) -> String {
    let dash = || "-".to_string();
    let mut out = format!(
        "{:<4} {:<22} {:<12} {:<8} {:>6} {:>10} {:>10} {:>6} {:<5}\n",
        "ID", "ADDRESS", "ROLE", "MEMBER", "TERM", "COMMIT", "APPLIED", "LAG", "STATE"
    );
    for member in members {
        let state = match (member.up, member.healthy) {
            (false, _) => "down".to_string(),
            (true, Some(false)) => "up (unhealthy)".to_string(),
            (true, _) => "up".to_string(),
        };
        out.push_str(&format!(
            "{:<4} {:<22} {:<12} {:<8} {:>6} {:>10} {:>10} {:>6} {}",
            member.id,
            member.address,
            member.role.clone().unwrap_or_else(dash),
            member.member.clone().unwrap_or_else(dash),
            member.term.map_or_else(dash, |v| v.to_string()),
            member.commit_index.map_or_else(dash, |v| v.to_string()),
            member.applied_index.map_or_else(dash, |v| v.to_string()),
            member.lag.map_or_else(dash, |v| v.to_string()),
            state
        ));
        if let Some(error) = &member.error {
            out.push_str(&format!(" ({error})"));
        }
        out.push('\n');
    }
    out
}

/// `raftfs status` exit code: a leader, and every member up and healthy.
pub const EXIT_HEALTHY: u8 = 0;
/// `raftfs status` exit code: a leader, but a member is down or unhealthy.
pub const EXIT_DEGRADED: u8 = 1;
/// `raftfs status` exit code: no member is leader (or no member answers).
pub const EXIT_NO_LEADER: u8 = 3;

/// The exit code for `members` and, unless healthy, why (one line).
pub fn verdict(members: &[MemberStatus]) -> (u8, Option<String>) {
    let has_leader = members
        .iter()
        .any(|member| member.up && member.role.as_deref() == Some("leader"));
    if !has_leader {
        let reason = if members.iter().any(|member| member.up) {
            "no leader".to_string()
        } else {
            "no member answered the status probe".to_string()
        };
        return (EXIT_NO_LEADER, Some(reason));
    }
    let down: Vec<String> = members
        .iter()
        .filter(|member| !member.up)
        .map(|member| member.id.to_string())
        .collect();
    let unhealthy: Vec<String> = members
        .iter()
        .filter(|member| member.up && member.healthy == Some(false))
        .map(|member| member.id.to_string())
        .collect();
    let mut problems = Vec::new();
    if !down.is_empty() {
        problems.push(format!("down: member {}", down.join(", ")));
    }
    if !unhealthy.is_empty() {
        problems.push(format!("unhealthy: member {}", unhealthy.join(", ")));
    }
    if problems.is_empty() {
        (EXIT_HEALTHY, None)
    } else {
        (EXIT_DEGRADED, Some(problems.join("; ")))
    }
}

/// `raftfs status`: prints the table (or JSON) and returns the exit code
/// (`EXIT_HEALTHY`, `EXIT_DEGRADED` or `EXIT_NO_LEADER`, see `verdict`;
/// unless healthy, one line on stderr says why).
pub fn run(config: &ClusterConfig, json: bool) -> Result<u8> {
    let members = collect(
        config,
        Duration::from_millis(limits::STATUS_PROBE_TIMEOUT_MS),
    );
    if json {
        let text = serde_json::to_string_pretty(&members)
            .map_err(|error| Error::Config(format!("cannot encode the status: {error}")))?;
        println!("{text}");
    } else {
        print!("{}", render_table(&members));
    }
    let (code, reason) = verdict(&members);
    if let Some(reason) = reason {
        eprintln!("raftfs status: {reason}");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, up: bool, healthy: Option<bool>) -> MemberStatus {
        MemberStatus {
            id,
            address: format!("127.0.0.1:{}", 8000 + id),
            up,
            error: (!up).then(|| "Connection refused".to_string()),
            role: up.then(|| "follower".to_string()),
            member: Some("voter".to_string()),
            term: up.then_some(3),
            leader: up.then_some(1),
            commit_index: up.then_some(10),
            applied_index: up.then_some(9),
            lag: up.then_some(1),
            healthy,
        }
    }

    #[test]
    fn table_has_one_line_per_member_with_its_state() {
        let table = render_table(&[
            member(1, true, Some(true)),
            member(2, true, Some(false)),
            member(3, false, None),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].ends_with(" up"), "{table}");
        assert!(lines[2].ends_with("up (unhealthy)"), "{table}");
        assert!(lines[3].contains(" down (Connection refused)"), "{table}");
        assert!(lines[3].contains(" - "), "{table}");
        assert!(
            lines[1].contains("127.0.0.1:8001") && lines[1].contains(" 9 "),
            "{table}"
        );
    }

    #[test]
    fn verdict_needs_a_leader_and_every_member_up() {
        let mut leader = member(1, true, Some(true));
        leader.role = Some("leader".to_string());
        let follower = member(2, true, Some(true));
        assert_eq!(
            verdict(&[leader.clone(), follower.clone()]),
            (EXIT_HEALTHY, None)
        );
        let (code, reason) = verdict(&[leader.clone(), member(2, false, None)]);
        assert_eq!(code, EXIT_DEGRADED);
        assert_eq!(reason.as_deref(), Some("down: member 2"));
        let (code, _) = verdict(&[leader, member(2, true, Some(false))]);
        assert_eq!(code, EXIT_DEGRADED);
        assert_eq!(verdict(std::slice::from_ref(&follower)).0, EXIT_NO_LEADER);
        let (code, reason) = verdict(&[member(1, false, None)]);
        assert_eq!(code, EXIT_NO_LEADER);
        assert_eq!(
            reason.as_deref(),
            Some("no member answered the status probe")
        );
    }

    #[test]
    fn probing_a_closed_port_fails_quickly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let started = Instant::now();
        assert!(probe(address, Duration::from_millis(500)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
