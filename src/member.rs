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
use std::net::SocketAddr;
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
