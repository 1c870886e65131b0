//! One log line per member that goes down or comes back, as a node sees
//! its peer links: the member is reported down once its link has been down
//! for `MEMBER_DOWN_LOG_GRACE_MS` (also at start, for a member that never
//! came up), and reported up again only if it was reported down. Link churn
//! shorter than the grace period is logged by the links themselves, at
//! debug.
//!
//! Invariants: at most one "down" line per outage and one "up again" line
//! after it; checking (once per reactor turn) is a pass over at most
//! `PEER_LINKS_MAX` entries and allocates nothing.
//!
//! Leaves out: what "down" means beyond this node's own link (a member this
//! node cannot reach may serve others), and metrics (`metrics`).

use crate::limits;
use crate::raft::NodeId;
use std::time::{Duration, Instant};

/// Which members this node can reach, and what was last logged about them.
pub struct MemberLog {
    own_id: NodeId,
    members: Vec<MemberLink>,
}

struct MemberLink {
    id: NodeId,
    up: bool,
    /// When `up` last changed (or the node started).
    since: Instant,
    /// A "down" line was written and no "up again" line since.
    reported_down: bool,
}

impl MemberLog {
    /// Every member in `peers` starts down, as of `now`.
    pub fn new(own_id: NodeId, peers: impl IntoIterator<Item = NodeId>, now: Instant) -> MemberLog {
        MemberLog {
            own_id,
            members: peers
                .into_iter()
                .map(|id| MemberLink {
                    id,
                    up: false,
                    since: now,
                    reported_down: false,
                })
                .collect(),
        }
    }

    /// The link to member `id` went up or down.
    pub fn link_changed(&mut self, id: NodeId, up: bool, now: Instant) {
        let index = match self.members.iter().position(|member| member.id == id) {
            Some(index) => index,
            None => {
                self.members.push(MemberLink {
                    id,
                    up: !up,
                    since: now,
                    reported_down: false,
                });
                self.members.len() - 1
            }
        };
        let member = &mut self.members[index];
        if member.up == up {
            return;
        }
        if up && member.reported_down {
            log::info!(
                "node {}: member {id} is up again (unreachable for {} s)",
                self.own_id,
                now.saturating_duration_since(member.since).as_secs()
            );
            member.reported_down = false;
        }
        member.up = up;
        member.since = now;
    }

    /// Reports members down for longer than the grace period.
    pub fn log_changes(&mut self, now: Instant) {
        let grace = Duration::from_millis(limits::MEMBER_DOWN_LOG_GRACE_MS);
        for member in &mut self.members {
            if !member.up
                && !member.reported_down
                && now.saturating_duration_since(member.since) >= grace
            {
                log::warn!(
                    "node {}: member {} is down (no peer link for {} s)",
                    self.own_id,
                    member.id,
                    grace.as_secs()
                );
                member.reported_down = true;
            }
        }
    }
}
