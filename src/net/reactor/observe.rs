//! What the reactor shows operators: the `NodeView` behind `GET /metrics`,
//! `/health`, `/livez`, `/readyz` and status probes (gathered only when one
//! is asked for; /proc and the data dir are read for `/metrics` only), the
//! leader-change count, and the log lines of leader changes (members going
//! down or coming back: `net::member_log`). (`GET /snapshot` never reaches
//! the reactor: `net::http` streams it from disk on a helper thread.)
//!
//! `/livez` is answered by this loop, so any answer proves the reactor
//! turns; a stuck loop answers nothing and the probe times out.
//!
//! A child of `reactor` so it can read the reactor's fields; the loop itself
//! only calls `answer_observers` and `log_transitions` once per turn.

use super::Reactor;
use crate::limits::HEALTH_APPLY_LAG_ENTRIES_MAX;
use crate::metrics::{self, DataDirStats, NodeView, PeerView, ProcessStats};
use crate::net::http::{Response, Route};
use crate::raft::Role;
use std::sync::atomic::Ordering;

impl Reactor {
    /// The node as a scrape, a health check or a status probe sees it
    /// (without the /proc and data-dir figures: see `with_scrape_figures`).
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
            is_member: self.replica.raft().is_voter(),
            membership: self.replica.membership_view(),
            stopping: self.stop_flag.load(Ordering::SeqCst),
            status,
            client_connections: self.connections.len(),
            client_buffer_bytes: self.client_bytes,
            peers,
            replica: &self.replica.metrics,
            reactor: &self.metrics,
            process: None,
            data_dir: None,
        }
    }

    /// Adds what only a scrape shows: /proc/self and the data dir (a few
    /// syscalls; a failure leaves those series out and is logged at debug).
    fn with_scrape_figures<'a>(&'a self, mut view: NodeView<'a>) -> NodeView<'a> {
        view.process = ProcessStats::read()
            .map_err(|error| log::debug!("no process metrics: {error}"))
            .ok();
        view.data_dir = self.http.as_ref().and_then(|http| {
            DataDirStats::read(http.data_dir())
                .map_err(|error| log::debug!("no data dir metrics: {error}"))
                .ok()
        });
        view
    }

    /// Answers waiting HTTP requests and status probes.
    pub(super) fn answer_observers(&mut self) {
        if !self.http_requests.is_empty() {
            let requests = std::mem::take(&mut self.http_requests);
            self.metrics.http_requests += requests.len() as u64;
            let mut view = self.node_view();
            if requests.iter().any(|(_, route)| *route == Route::Metrics) {
                view = self.with_scrape_figures(view);
            }
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
        for (key, request) in self.peers.member_requests() {
            let answer = match serde_json::from_slice::<crate::member::MemberRequest>(&request) {
                Ok(request) => {
                    let answer = self.replica.member_request(&request);
                    log::info!("membership request {request:?}: {answer:?}");
                    answer
                }
                Err(error) => crate::member::MemberAnswer::Refused {
                    reason: format!("not a membership request this node understands: {error}"),
                },
            };
            match serde_json::to_vec(&answer) {
                Ok(bytes) => self
                    .peers
                    .answer_member_request(self.poll.registry(), key, &bytes),
                Err(error) => log::error!("cannot encode a membership answer: {error}"),
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
                unhealthy: metrics::health(&view, HEALTH_APPLY_LAG_ENTRIES_MAX).err(),
                membership: Some(crate::status::MembershipReport::of(&view.membership)),
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
        self.metrics.observe_leader(now.1, now.2);
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
        // After "malformed" (4): appended, so the other indexes stay.
        Request::Watch { .. } => 5,
    }
}

fn http_response(route: Route, view: &NodeView<'_>) -> Response {
    let verdict = |verdict: Result<(), String>| match verdict {
        Ok(()) => Response::text(200, "ok\n"),
        Err(reason) => Response::text(503, format!("{reason}\n")),
    };
    match route {
        Route::Metrics => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
            body: metrics::render(view).into_bytes(),
        },
        Route::Health => verdict(metrics::health(view, HEALTH_APPLY_LAG_ENTRIES_MAX)),
        Route::Readyz => verdict(metrics::readiness(view, HEALTH_APPLY_LAG_ENTRIES_MAX)),
        Route::Livez => Response::text(200, "ok\n"),
        Route::NotFound => Response::text(
            404,
            "not found: try /metrics, /health, /livez, /readyz or /snapshot\n",
        ),
        Route::MethodNotAllowed => Response::text(405, "only GET is served\n"),
        Route::BadRequest => Response::text(400, "bad request\n"),
    }
}
