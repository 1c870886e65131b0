//! What the reactor shows operators: the `NodeView` behind `GET /metrics`,
//! `GET /health`, `GET /snapshot` and status probes (gathered only when one
//! is asked for), and the log lines of leader changes and of members going
//! down or coming back (`MemberLog`).
//!
//! A child of `reactor` so it can read the reactor's fields; the loop itself
//! only calls `answer_observers` and `log_transitions` once per turn.

use super::Reactor;
use crate::limits;
use crate::metrics::{self, NodeView, PeerView};
use crate::net::http::{Response, Route};
use crate::raft::{NodeId, Role};
use std::time::{Duration, Instant};

impl Reactor {
    /// The node as a scrape, a health check or a status probe sees it.
    pub(super) fn node_view(&self) -> NodeView<'_> {
        let status = self.replica.status();
        let match_indexes = self.replica.raft().match_indexes();
        let peers = self
            .peers
            .link_states()
            .into_iter()
            .map(|link| {
                let lag_entries = match_indexes
                    .iter()
                    .find(|(id, _)| *id == link.peer)
                    .map(|(_, match_index)| status.last_index.saturating_sub(*match_index));
                PeerView { link, lag_entries }
            })
            .collect();
        NodeView {
            known_commit_index: self.replica.raft().known_commit_index(),
            snapshot_index: self.replica.raft().snapshot().index,
            status,
            client_connections: self.connections.len(),
            peers,
            replica: &self.replica.metrics,
            reactor: &self.metrics,
            fsm: self.replica.fsm(),
        }
    }

    /// Answers waiting HTTP requests and status probes.
    pub(super) fn answer_observers(&mut self) {
        if !self.http_requests.is_empty() {
            let requests = std::mem::take(&mut self.http_requests);
            self.metrics.http_requests += requests.len() as u64;
            let view = self.node_view();
            let responses: Vec<(usize, Response)> = requests
                .into_iter()
                .map(|(key, route)| (key, http_response(route, &view)))
                .collect();
            if let Some(http) = self.http.as_mut() {
                for (key, response) in responses {
                    http.respond(self.poll.registry(), key, &response);
                }
            }
        }
        if self.peers.status_probes_waiting() {
            let view = self.node_view();
            let report = crate::status::StatusReport {
                id: view.status.id,
                role: metrics::role_name(view.status.role).to_string(),
                term: view.status.term,
                leader: view.status.leader,
                commit_index: view.status.commit_index,
                known_commit_index: view.known_commit_index,
                applied_index: view.status.applied_index,
                last_index: view.status.last_index,
                files: view.status.files as u64,
                unhealthy: metrics::health(&view, crate::limits::HEALTH_APPLY_LAG_ENTRIES_MAX)
                    .err(),
            };
            match serde_json::to_vec(&report) {
                Ok(bytes) => self
                    .peers
                    .answer_status_probes(self.poll.registry(), &bytes),
                Err(error) => log::error!("cannot encode a status report: {error}"),
            }
        }
    }

    /// One info line when this node wins an election or steps down; the
    /// rest of the role, term and leader changes (campaigns, a follower
    /// learning the leader) at debug, so a leader change is one info line
    /// in the cluster's logs, written by the new leader.
    pub(super) fn log_transitions(&mut self) {
        let raft = self.replica.raft();
        let now = (Some(raft.role()), raft.term(), raft.leader_id());
        if now == self.logged {
            return;
        }
        let (role, term, leader) = now;
        let id = raft.id();
        let leader_text = || leader.map_or_else(|| "unknown".to_string(), |l| l.to_string());
        match role {
            Some(Role::Leader) if self.logged.0 != Some(Role::Leader) => {
                log::info!("node {id} won the election: leader of term {term}")
            }
            Some(Role::Candidate)
                if self.logged.0 != Some(Role::Candidate) || self.logged.1 != term =>
            {
                log::debug!("node {id} campaigns in term {term}")
            }
            _ if self.logged.0 == Some(Role::Leader) => log::info!(
                "node {id} stepped down ({}): term {term}, leader {}",
                if term > self.logged.1 {
                    "saw a higher term"
                } else {
                    "lost its quorum"
                },
                leader_text()
            ),
            _ if self.logged.0 == Some(Role::Candidate) && role != Some(Role::Leader) => {
                log::debug!(
                    "node {id} lost the election: term {term}, leader {}",
                    leader_text()
                )
            }
            _ if leader != self.logged.2 || term != self.logged.1 => {
                if let Some(leader) = leader {
                    log::debug!("node {id}: term {term}, leader {leader}")
                } else if term != self.logged.1 {
                    log::debug!("node {id}: term {term}, no leader known")
                }
            }
            _ => {}
        }
        self.logged = now;
    }
}

/// Which members this node can reach, for one log line per member that
/// goes down or comes back, after `MEMBER_DOWN_LOG_GRACE_MS` (peer-link
/// churn itself is logged at debug by the links).
///
/// A member counts as down while this node's link to it is down; it is
/// reported once the link has been down for the grace period (also at
/// start: a member that never came up), and reported back only if it was
/// reported down. Checking costs a pass over at most `PEER_LINKS_MAX`
/// entries per turn and allocates nothing.
pub(super) struct MemberLog {
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
    pub(super) fn new(
        own_id: NodeId,
        peers: impl IntoIterator<Item = NodeId>,
        now: Instant,
    ) -> MemberLog {
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
    pub(super) fn link_changed(&mut self, id: NodeId, up: bool, now: Instant) {
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
    pub(super) fn log_changes(&mut self, now: Instant) {
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

pub(super) fn command_kind(request: &crate::protocol::Request) -> usize {
    use crate::fsm::Command;
    use crate::protocol::Request;
    match request {
        Request::Read { .. } => 0,
        Request::Command(Command::Write { .. }) => 1,
        Request::Command(Command::Cas { .. }) => 2,
        Request::Command(Command::Delete { .. }) => 3,
    }
}

fn http_response(route: Route, view: &NodeView<'_>) -> Response {
    let text = |status: u16, body: String| Response {
        status,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: body.into_bytes(),
    };
    match route {
        Route::Metrics => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
            body: metrics::render(view).into_bytes(),
        },
        Route::Health => match metrics::health(view, crate::limits::HEALTH_APPLY_LAG_ENTRIES_MAX) {
            Ok(()) => text(200, "ok\n".into()),
            Err(reason) => text(503, format!("{reason}\n")),
        },
        Route::NotFound => text(
            404,
            "not found: try /metrics, /health or /snapshot\n".into(),
        ),
        Route::Snapshot => {
            // Consistent: the reactor applies whole entries between turns.
            let status = &view.status;
            log::info!(
                "node {}: snapshot of {} files at applied index {} served",
                status.id,
                status.files,
                status.applied_index
            );
            Response {
                status: 200,
                content_type: "application/octet-stream",
                headers: vec![
                    format!("X-Raftfs-Applied-Index: {}", status.applied_index),
                    format!("X-Raftfs-Term: {}", status.term),
                ],
                body: view.fsm.snapshot().to_vec(),
            }
        }
        Route::MethodNotAllowed => text(405, "only GET is served\n".into()),
        Route::BadRequest => text(400, "bad request\n".into()),
    }
}
