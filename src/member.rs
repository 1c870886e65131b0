//! `raftfs member list|add|promote|remove`: membership change from the
//! command line, and the requests it sends.
//!
//! How a command reaches the leader: every node's peer port answers status
//! probes (`status`); a probe may carry one `MemberRequest` (JSON), which
//! the node hands to its replica and answers at once with a `MemberAnswer`
//! (JSON). The command finds the leader by probing the members it knows
//! (cluster.toml's, then those the configuration in force names), sends
//! the request there, follows `NotLeader` and retries `Retry` (an election,
//! a leadership handover when the leader itself is removed, the previous
//! change still uncommitted) until `MEMBER_COMMAND_TIMEOUT_MS`. After
//! `Proposed { index }` it waits until a member reports a committed
//! configuration at or past that index in which the change holds, and exits
//! 0; any refusal or the timeout is one line on stderr and exit 1.
//!
//! `member add` takes the new member's addresses from its `[[node]]` table
//! in cluster.toml unless `--client`, `--peer`, `--metrics` are given (all
//! of client and peer then, metrics optional).
//!
//! Leaves out: changing several members in one command (one at a time is
//! the change rule, `raft::membership`).

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::limits;
use crate::raft::{Index, NodeId};
use crate::status::{self, MembershipReport, StatusReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A membership request, as a status probe carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberRequest {
    /// Add `id` as a learner with these addresses.
    Add {
        id: NodeId,
        peer: String,
        client: String,
        metrics: Option<String>,
    },
    /// Make learner `id` a voter (refused unless it is caught up).
    Promote { id: NodeId },
    /// Remove member `id` (voter or learner; the leader hands over first).
    Remove { id: NodeId },
}

impl MemberRequest {
    pub fn id(&self) -> NodeId {
        match self {
            MemberRequest::Add { id, .. }
            | MemberRequest::Promote { id }
            | MemberRequest::Remove { id } => *id,
        }
    }

    /// Whether a configuration (as a status report shows it) reflects this
    /// request.
    pub fn holds_in(&self, membership: &MembershipReport) -> bool {
        let member = membership.members.iter().find(|m| m.id == self.id());
        match self {
            MemberRequest::Add { .. } => member.is_some(),
            MemberRequest::Promote { .. } => member.is_some_and(|m| m.role == "voter"),
            MemberRequest::Remove { .. } => member.is_none(),
        }
    }
}

/// A node's answer to a `MemberRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberAnswer {
    /// The entry at `index` makes the change: done once it is committed.
    Proposed { index: Index },
    /// Ask the leader instead (if known).
    NotLeader { leader: Option<NodeId> },
    /// Not now; the same request may succeed shortly (the reason says why).
    Retry { reason: String },
    /// Refused for good (the reason says why).
    Refused { reason: String },
}

/// The `raftfs member` subcommands (SPEC §1 names them).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum MemberCommand {
    /// Show the configuration in force: voters, learners, addresses, lag.
    List {
        /// The cluster.toml of the cluster.
        #[arg(long)]
        config: std::path::PathBuf,
        /// Print one JSON object for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Add node ID as a learner (it receives the log; promote it once
    /// caught up). Addresses default to its [[node]] table in the config.
    Add {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        id: NodeId,
        /// Where clients connect (HOST:PORT; shown in redirects).
        #[arg(long)]
        client: Option<String>,
        /// Where the other nodes connect (HOST:PORT).
        #[arg(long)]
        peer: Option<String>,
        /// Its metrics listener, if any (HOST:PORT).
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Make learner ID a voter (refused unless it is caught up).
    Promote {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        id: NodeId,
    },
    /// Remove member ID (voter or learner; a leader hands over first).
    Remove {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        id: NodeId,
    },
}

impl MemberCommand {
    /// The cluster.toml the command names.
    pub fn config_path(&self) -> &std::path::Path {
        match self {
            MemberCommand::List { config, .. }
            | MemberCommand::Add { config, .. }
            | MemberCommand::Promote { config, .. }
            | MemberCommand::Remove { config, .. } => config,
        }
    }
}

/// Runs one `raftfs member` command against the cluster `config` describes;
/// prints its one line (or the list) on stdout.
pub fn run(config: &ClusterConfig, command: &MemberCommand) -> Result<()> {
    let request = match command {
        MemberCommand::List { json, .. } => return list(config, *json),
        MemberCommand::Add {
            id,
            client,
            peer,
            metrics,
            ..
        } => add_request(config, *id, client, peer, metrics)?,
        MemberCommand::Promote { id, .. } => MemberRequest::Promote { id: *id },
        MemberCommand::Remove { id, .. } => MemberRequest::Remove { id: *id },
    };
    let deadline = Instant::now() + Duration::from_millis(limits::MEMBER_COMMAND_TIMEOUT_MS);
    let index = change(config, &request, deadline)?;
    let id = request.id();
    let line = match request {
        MemberRequest::Add { .. } => format!(
            "node {id} is a learner (configuration at log index {index}); promote it once caught \
             up: raftfs member promote --config {} --id {id}",
            command.config_path().display()
        ),
        MemberRequest::Promote { .. } => {
            format!("node {id} is a voter (configuration at log index {index})")
        }
        MemberRequest::Remove { .. } => {
            format!("node {id} is not a member (configuration at log index {index})")
        }
    };
    println!("raftfs: {line}");
    Ok(())
}

/// The add request: addresses from the flags, else from cluster.toml.
fn add_request(
    config: &ClusterConfig,
    id: NodeId,
    client: &Option<String>,
    peer: &Option<String>,
    metrics: &Option<String>,
) -> Result<MemberRequest> {
    let resolve_flag = |what: &str, address: &str| {
        status::resolve(address)
            .map_err(|reason| Error::Config(format!("--{what} {address}: {reason}")))
    };
    let (client, peer, metrics) = match (client, peer) {
        (Some(client), Some(peer)) => {
            resolve_flag("client", client)?;
            let metrics = match metrics {
                Some(metrics) => Some(resolve_flag("metrics", metrics)?.to_string()),
                None => None,
            };
            (
                client.clone(),
                resolve_flag("peer", peer)?.to_string(),
                metrics,
            )
        }
        (None, None) => {
            let member = config.members.iter().find(|m| m.id == id).ok_or_else(|| {
                Error::Config(format!(
                    "node {id} has no [[node]] table in the config: add one, or give --client \
                     and --peer"
                ))
            })?;
            let metrics = match metrics {
                Some(metrics) => Some(resolve_flag("metrics", metrics)?.to_string()),
                None => member.metrics.map(|address| address.to_string()),
            };
            (member.client.clone(), member.peer.to_string(), metrics)
        }
        _ => {
            return Err(Error::Config(
                "--client and --peer go together (or neither: the config's table is used)".into(),
            ))
        }
    };
    if id == 0 {
        return Err(Error::Config("--id must be a positive node id".into()));
    }
    Ok(MemberRequest::Add {
        id,
        peer,
        client,
        metrics,
    })
}

/// Whom to ask: cluster.toml's members.
fn targets(config: &ClusterConfig) -> Vec<status::Target> {
    config.members.iter().map(status::Target::of).collect()
}

fn probe_timeout() -> Duration {
    Duration::from_millis(limits::STATUS_PROBE_TIMEOUT_MS)
}

/// Pause between two attempts while the cluster elects or hands over.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Sends `request` to the leader until it is proposed, then waits until a
/// committed configuration at or past that index holds it. Returns that
/// configuration's index.
fn change(config: &ClusterConfig, request: &MemberRequest, deadline: Instant) -> Result<Index> {
    let mut last_problem = "no member answered".to_string();
    let mut proposed: Option<Index> = None;
    let payload = serde_json::to_vec(request)
        .map_err(|error| Error::Config(format!("cannot encode the request: {error}")))?;
    let frame = crate::net::peer::wire::encode_member_probe(&payload)
        .map_err(|error| Error::Config(format!("request too large: {error}")))?;
    while Instant::now() < deadline {
        let results = status::probe_cluster(targets(config), probe_timeout());
        let reports: Vec<&StatusReport> = results
            .iter()
            .filter_map(|(_, result)| result.as_ref().ok())
            .collect();
        // Done: a committed configuration at or past the proposal holds it.
        let committed = reports
            .iter()
            .filter_map(|report| report.membership.as_ref())
            .filter(|membership| membership.committed)
            .max_by_key(|membership| membership.index);
        if let (Some(index), Some(membership)) = (proposed, committed) {
            if membership.index >= index {
                if request.holds_in(membership) {
                    return Ok(membership.index);
                }
                // Another leader replaced the entry, or a later change
                // undid it: ask again.
                proposed = None;
            }
        }
        if proposed.is_some() {
            std::thread::sleep(RETRY_PAUSE);
            continue;
        }
        let leader = results
            .iter()
            .filter_map(|(target, result)| result.as_ref().ok().map(|report| (target, report)))
            .filter(|(_, report)| report.role == "leader")
            .max_by_key(|(_, report)| report.term);
        let Some((target, _)) = leader else {
            last_problem = "no leader known (an election may be running)".into();
            std::thread::sleep(RETRY_PAUSE);
            continue;
        };
        let answer = status::resolve(&target.peer)
            .map_err(std::io::Error::other)
            .and_then(|address| status::exchange(address, &frame, probe_timeout()))
            .and_then(|bytes| {
                serde_json::from_slice::<MemberAnswer>(&bytes).map_err(std::io::Error::other)
            });
        match answer {
            Ok(MemberAnswer::Proposed { index }) => proposed = Some(index),
            Ok(MemberAnswer::Refused { reason }) => {
                return Err(Error::Refused(format!(
                    "node {} (leader): {reason}",
                    target.id
                )))
            }
            Ok(MemberAnswer::Retry { reason }) => {
                last_problem = reason;
                std::thread::sleep(RETRY_PAUSE);
            }
            Ok(MemberAnswer::NotLeader { leader }) => {
                last_problem = format!(
                    "node {} is no longer the leader{}",
                    target.id,
                    leader.map_or(String::new(), |l| format!(" (node {l} is)"))
                );
            }
            Err(error) => {
                last_problem = format!("asking node {} failed: {error}", target.id);
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
    let what = match proposed {
        Some(index) => format!("the change was proposed at log index {index} but is not committed"),
        None => format!("no leader took the request ({last_problem})"),
    };
    Err(Error::Io {
        context: format!(
            "membership change not done within {} s: {what}",
            limits::MEMBER_COMMAND_TIMEOUT_MS / 1_000
        ),
        source: std::io::ErrorKind::TimedOut.into(),
    })
}

/// One member in `raftfs member list --json`.
#[derive(Clone, Debug, Serialize)]
pub struct ListedMember {
    pub id: NodeId,
    /// "voter" or "learner".
    pub role: String,
    pub peer: String,
    pub client: String,
    pub metrics: Option<String>,
    /// The member's log matches the leader's through this index (when the
    /// leader answered).
    pub match_index: Option<Index>,
    /// Entries behind the leader's log (when the leader answered).
    pub lag: Option<Index>,
    /// It answered the probe.
    pub up: bool,
}

/// `raftfs member list --json`: the configuration in force.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// The log index of the configuration entry (0: cluster.toml's).
    pub index: Index,
    pub committed: bool,
    pub leader: Option<NodeId>,
    pub members: Vec<ListedMember>,
}

/// The configuration in force, from the freshest report.
pub fn listing(results: &[status::ProbeResult]) -> Option<Listing> {
    let reports = || {
        results
            .iter()
            .filter_map(|(_, result)| result.as_ref().ok())
    };
    let membership: &MembershipReport = status::freshest_membership(reports())?;
    let leader = reports()
        .filter(|report| report.role == "leader")
        .max_by_key(|report| report.term);
    let up: BTreeMap<NodeId, bool> = results
        .iter()
        .map(|(target, result)| (target.id, result.is_ok()))
        .collect();
    Some(Listing {
        index: membership.index,
        committed: membership.committed,
        leader: leader.map(|report| report.id),
        members: membership
            .members
            .iter()
            .map(|member| ListedMember {
                id: member.id,
                role: member.role.clone(),
                peer: member.peer.clone(),
                client: member.client.clone(),
                metrics: member.metrics.clone(),
                match_index: member.match_index,
                lag: member.match_index.and_then(|match_index| {
                    leader.map(|leader| leader.last_index.saturating_sub(match_index))
                }),
                up: up.get(&member.id).copied().unwrap_or(false),
            })
            .collect(),
    })
}

/// The human table of a listing.
pub fn render_listing(listing: &Listing) -> String {
    let dash = || "-".to_string();
    let mut out = format!(
        "configuration at log index {} ({}), leader {}\n{:<4} {:<8} {:<22} {:<22} {:<22} {:>10} {:>6} {}\n",
        listing.index,
        if listing.committed { "committed" } else { "not committed yet" },
        listing.leader.map_or_else(|| "unknown".to_string(), |id| id.to_string()),
        "ID",
        "ROLE",
        "PEER",
        "CLIENT",
        "METRICS",
        "MATCH",
        "LAG",
        "STATE"
    );
    for member in &listing.members {
        out.push_str(&format!(
            "{:<4} {:<8} {:<22} {:<22} {:<22} {:>10} {:>6} {}\n",
            member.id,
            member.role,
            member.peer,
            member.client,
            member.metrics.clone().unwrap_or_else(dash),
            member.match_index.map_or_else(dash, |v| v.to_string()),
            member.lag.map_or_else(dash, |v| v.to_string()),
            if member.up { "up" } else { "down" }
        ));
    }
    out
}

fn list(config: &ClusterConfig, json: bool) -> Result<()> {
    let results = status::probe_cluster(targets(config), probe_timeout());
    let Some(listing) = listing(&results) else {
        return Err(Error::Io {
            context: "no member answered the status probe".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotConnected, "cluster unreachable"),
        });
    };
    if json {
        let text = serde_json::to_string_pretty(&listing)
            .map_err(|error| Error::Config(format!("cannot encode the listing: {error}")))?;
        println!("{text}");
    } else {
        print!("{}", render_listing(&listing));
    }
    Ok(())
}
