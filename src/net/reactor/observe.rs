//! What the reactor shows operators: the `NodeView` behind `GET /metrics`,
//! `GET /health`, `GET /snapshot` and status probes (gathered only when one
//! is asked for), and the log lines of leader changes (members going down
//! or coming back: `net::member_log`).
//!
//! A child of `reactor` so it can read the reactor's fields; the loop itself
//! only calls `answer_observers` and `log_transitions` once per turn.

use super::Reactor;
use crate::metrics::{self, NodeView, PeerView};
use crate::net::http::{Response, Route};
use crate::raft::Role;

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
                leader.map_or_else(|| "unknown".to_string(), |l| l.to_string())
            ),
            _ if self.logged.0 == Some(Role::Candidate) && role != Some(Role::Leader) => {
                log::debug!(
                    "node {id} lost the election: term {term}, leader {}",
                    leader.map_or_else(|| "unknown".to_string(), |l| l.to_string())
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
