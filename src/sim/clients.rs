//! Simulated clients: connections to nodes, pipelined commands, answers in
//! order, redirects, timeouts and reconnects; every command and answer goes
//! into a `lincheck::History`, checked once per schedule.
//!
//! A client holds at most one connection. It pipelines up to
//! `pipeline_max` commands (`write`, `cas` on the version it last saw,
//! `delete`, `read`, `watch` on the version it last saw or 0, over a few
//! keys) and takes answers in sequence order,
//! as a socket would deliver them (the replica may finish them out of
//! order). `ERR_REDIRECT` discards the command (it was not applied) and,
//! once nothing else is outstanding, moves the client to the named node;
//! `ERR_INTERNAL` makes it indeterminate. A client that waits longer than
//! `timeout_us` for an answer (`watch_timeout_us` while the oldest command
//! is a watch, which waits for a change; commands behind a watch count from
//! the last answer), or whose node crashes, loses its connection:
//! everything outstanding is indeterminate, and it reconnects elsewhere.
//!
//! Checked here, per answer: it belongs to a command sent on that
//! connection, comes once, and is an answer that command can get.
//!
//! Left out: expiry (lincheck does not model it; the replica's golden
//! scripts and the fsm tests own it) and malformed input (protocol tests).

use super::config::ClientConfig;
use crate::fsm::Command;
use crate::lincheck::{History, Op, OpId, Outcome};
use crate::protocol::Request;
use crate::raft::NodeId;
use crate::replica::ClientRef;
use bytes::Bytes;
use rand::Rng;
use rand_pcg::Pcg64;
use std::collections::{BTreeMap, VecDeque};

/// A command sent and not yet answered.
struct Outstanding {
    seq: u64,
    op: OpId,
    kind: Kind,
    name: Bytes,
    sent_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Write,
    Cas,
    Delete,
    Read,
    Watch,
}

struct Connection {
    node: NodeId,
    conn_id: u64,
    next_seq: u64,
    outstanding: VecDeque<Outstanding>,
    /// Answers that came before an earlier one (a socket would hold them).
    early: BTreeMap<u64, Bytes>,
    /// Stop sending: a redirect named another node.
    draining: bool,
    /// When the last answer came (or the connection opened).
    last_answer_us: u64,
}

struct Client {
    connection: Option<Connection>,
    redirect_to: Option<NodeId>,
    /// The version this client last saw per key (for `cas`).
    versions: BTreeMap<Bytes, u64>,
    writes: u64,
}

/// What a client wants to do this turn.
pub enum Intent {
    /// Connect to this node (the simulator picks one if `None`).
    Connect(Option<NodeId>),
    /// Send these requests on the open connection.
    Send(NodeId, Vec<(ClientRef, Request)>),
    /// Give up on the connection to this node (a timeout).
    Close(NodeId, ClientRef),
    Nothing,
}

pub struct Clients {
    config: ClientConfig,
    clients: Vec<Client>,
    pub history: History,
    next_conn_id: u64,
    /// Answers received and commands sent, for the stats.
    pub answered: u64,
    pub redirects: u64,
    pub indeterminate: u64,
    /// Watches sent.
    pub watches: u64,
    /// Watches answered with a state by a node that was a follower then.
    pub watches_on_followers: u64,
}

impl Clients {
    pub fn new(config: ClientConfig) -> Clients {
        Clients {
            clients: (0..config.clients)
                .map(|_| Client {
                    connection: None,
                    redirect_to: None,
                    versions: BTreeMap::new(),
                    writes: 0,
                })
                .collect(),
            config,
            history: History::new(),
            next_conn_id: 1,
            answered: 0,
            redirects: 0,
            indeterminate: 0,
            watches: 0,
            watches_on_followers: 0,
        }
    }

    pub fn count(&self) -> usize {
        self.clients.len()
    }

    /// Commands sent and not answered, over every client.
    pub fn outstanding(&self) -> usize {
        self.clients
            .iter()
            .filter_map(|client| client.connection.as_ref())
            .map(|connection| connection.outstanding.len())
            .sum()
    }

    /// Every unanswered command: client, node, connection, sequence, kind,
    /// file and when it was sent (for liveness failure reports).
    pub fn describe_outstanding(&self) -> String {
        let mut lines = Vec::new();
        for (index, client) in self.clients.iter().enumerate() {
            let Some(connection) = client.connection.as_ref() else {
                continue;
            };
            for outstanding in &connection.outstanding {
                lines.push(format!(
                    "client {index} node {} conn {} seq {} {:?} {:?} sent at tick {}",
                    connection.node,
                    connection.conn_id,
                    outstanding.seq,
                    outstanding.kind,
                    String::from_utf8_lossy(&outstanding.name),
                    outstanding.sent_us / super::TICK_US
                ));
            }
        }
        lines.join("; ")
    }

    /// Watches sent and not answered, over every client.
    pub fn outstanding_watches(&self) -> usize {
        self.clients
            .iter()
            .filter_map(|client| client.connection.as_ref())
            .flat_map(|connection| &connection.outstanding)
            .filter(|outstanding| outstanding.kind == Kind::Watch)
            .count()
    }

    /// Client `index`'s connection (key = the client's index).
    fn client_ref(index: usize, connection: &Connection, seq: u64) -> ClientRef {
        ClientRef {
            key: index,
            conn_id: connection.conn_id,
            seq,
        }
    }

    /// Decide client `index`'s next move. `may_send`: new commands allowed
    /// (false in the liveness phase, which only waits for answers).
    pub fn intent(&mut self, index: usize, now_us: u64, rng: &mut Pcg64, may_send: bool) -> Intent {
        let timeout_us = self.config.timeout_us;
        let client = &mut self.clients[index];
        let Some(connection) = client.connection.as_mut() else {
            return if may_send {
                Intent::Connect(client.redirect_to.take())
            } else {
                Intent::Nothing
            };
        };
        let watch_timeout_us = self.config.watch_timeout_us;
        if connection.outstanding.front().is_some_and(|oldest| {
            let limit_us = if oldest.kind == Kind::Watch {
                watch_timeout_us
            } else {
                timeout_us
            };
            now_us.saturating_sub(oldest.sent_us.max(connection.last_answer_us)) > limit_us
        }) {
            let client_ref = Clients::client_ref(index, connection, 0);
            return Intent::Close(connection.node, client_ref);
        }
        if connection.draining {
            if connection.outstanding.is_empty() {
                let node = connection.node;
                let client_ref = Clients::client_ref(index, connection, 0);
                return Intent::Close(node, client_ref);
            }
            return Intent::Nothing;
        }
        if !may_send {
            return Intent::Nothing;
        }
        let room = self
            .config
            .pipeline_max
            .saturating_sub(connection.outstanding.len());
        let count = if room == 0 {
            0
        } else {
            rng.gen_range(1..=room)
        };
        let mut requests = Vec::new();
        for _ in 0..count {
            let (request, op, kind, name) = next_command(&self.config, client, index, rng);
            let Some(connection) = client.connection.as_mut() else {
                break;
            };
            let seq = connection.next_seq;
            connection.next_seq += 1;
            let op = self.history.invoke(index as u64, op, now_us * 1_000);
            self.watches += u64::from(kind == Kind::Watch);
            connection.outstanding.push_back(Outstanding {
                seq,
                op,
                kind,
                name,
                sent_us: now_us,
            });
            requests.push((Clients::client_ref(index, connection, seq), request));
        }
        match client.connection.as_ref() {
            Some(connection) if !requests.is_empty() => Intent::Send(connection.node, requests),
            _ => Intent::Nothing,
        }
    }

    /// Client `index` connected to `node`.
    pub fn connected(&mut self, index: usize, node: NodeId, now_us: u64) {
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        self.clients[index].connection = Some(Connection {
            node,
            conn_id,
            next_seq: 0,
            outstanding: VecDeque::new(),
            early: BTreeMap::new(),
            draining: false,
            last_answer_us: now_us,
        });
    }

    /// Client `index`'s connection is gone (closed by it, or its node
    /// crashed): what it waited for is indeterminate.
    pub fn disconnected(&mut self, index: usize, now_us: u64) {
        if let Some(connection) = self.clients[index].connection.take() {
            for outstanding in connection.outstanding {
                self.indeterminate += 1;
                self.history
                    .complete(outstanding.op, Outcome::Indeterminate, now_us * 1_000);
            }
        }
    }

    /// Every client connected to `node` loses its connection.
    pub fn node_crashed(&mut self, node: NodeId, now_us: u64) {
        for index in 0..self.clients.len() {
            if self.clients[index]
                .connection
                .as_ref()
                .is_some_and(|connection| connection.node == node)
            {
                self.disconnected(index, now_us);
            }
        }
    }

    /// An answer from `node` (a follower then: `by_follower`) for `to`. An
    /// answer for a connection that is gone is dropped (as by a closed
    /// socket).
    pub fn deliver(
        &mut self,
        node: NodeId,
        by_follower: bool,
        to: ClientRef,
        answer: Bytes,
        now_us: u64,
        resolve: impl Fn(&str) -> Option<NodeId>,
    ) -> Result<(), String> {
        let Some(client) = self.clients.get_mut(to.key) else {
            return Err(format!(
                "node {node} answered unknown client key {}",
                to.key
            ));
        };
        let Some(connection) = client.connection.as_mut() else {
            return Ok(());
        };
        if connection.conn_id != to.conn_id || connection.node != node {
            return Ok(());
        }
        if !connection.outstanding.iter().any(|o| o.seq == to.seq) {
            return Err(format!(
                "node {node} answered sequence {} of connection {}, which is not outstanding",
                to.seq, to.conn_id
            ));
        }
        if connection.early.insert(to.seq, answer).is_some() {
            return Err(format!(
                "node {node} answered sequence {} of connection {} twice",
                to.seq, to.conn_id
            ));
        }
        // Hand over answers in sequence order, as the socket would.
        while let Some(front) = connection.outstanding.front() {
            let Some(answer) = connection.early.remove(&front.seq) else {
                break;
            };
            let Some(outstanding) = connection.outstanding.pop_front() else {
                break;
            };
            self.answered += 1;
            connection.last_answer_us = now_us;
            let outcome = interpret(outstanding.kind, &answer).map_err(|problem| {
                format!(
                    "node {node} answered {:?} {:?} with {:?}: {problem}",
                    outstanding.kind,
                    outstanding.name,
                    String::from_utf8_lossy(&answer)
                )
            })?;
            match outcome {
                Answer::Outcome(outcome) => {
                    match &outcome {
                        Outcome::Written { version } | Outcome::Contents { version, .. } => {
                            client.versions.insert(outstanding.name.clone(), *version);
                        }
                        Outcome::VersionMismatch { current } => {
                            client.versions.insert(outstanding.name.clone(), *current);
                        }
                        // The next watch on it waits for the file to exist.
                        Outcome::NotFound if outstanding.kind == Kind::Watch => {
                            client.versions.remove(&outstanding.name);
                        }
                        _ => {}
                    }
                    if outcome == Outcome::Indeterminate {
                        self.indeterminate += 1;
                    } else if by_follower && outstanding.kind == Kind::Watch {
                        self.watches_on_followers += 1;
                    }
                    self.history
                        .complete(outstanding.op, outcome, now_us * 1_000);
                }
                Answer::Redirect(address) => {
                    self.redirects += 1;
                    self.history.discard(outstanding.op);
                    connection.draining = true;
                    client.redirect_to = resolve(&address);
                }
            }
        }
        Ok(())
    }
}

pub(super) enum Answer {
    Outcome(Outcome),
    Redirect(String),
}

/// The next command of a client: `(request, op, kind, name)`.
fn next_command(
    config: &ClientConfig,
    client: &mut Client,
    index: usize,
    rng: &mut Pcg64,
) -> (Request, Op, Kind, Bytes) {
    let name = Bytes::from(format!("k{}", rng.gen_range(0..config.keys.max(1))));
    let roll: f64 = rng.gen();
    if roll >= 1.0 - config.watch_probability {
        // Mostly the version last seen (so it waits); sometimes 0 (wait
        // for the file to exist) or one it may never have had.
        let version = match rng.gen_range(0..10) {
            0 => 0,
            1 => rng.gen_range(1..4),
            _ => client.versions.get(&name).copied().unwrap_or(0),
        };
        let op = Op::Watch {
            name: name.to_vec(),
            version,
        };
        let request = Request::Watch {
            name: name.clone(),
            version,
        };
        return (request, op, Kind::Watch, name);
    }
    if roll < config.read_probability {
        let op = Op::Read {
            name: name.to_vec(),
        };
        return (Request::Read { name: name.clone() }, op, Kind::Read, name);
    }
    if roll < config.read_probability + config.delete_probability {
        let op = Op::Delete {
            name: name.to_vec(),
        };
        let request = Request::Command(Command::Delete { name: name.clone() });
        return (request, op, Kind::Delete, name);
    }
    client.writes += 1;
    let mut content = format!("c{index}.{}", client.writes).into_bytes();
    let padding = rng.gen_range(0..=config.value_bytes_max);
    content.extend(std::iter::repeat_n(b'x', padding));
    let content = Bytes::from(content);
    if roll < config.read_probability + config.delete_probability + config.cas_probability {
        let version = client
            .versions
            .get(&name)
            .copied()
            .unwrap_or_else(|| rng.gen_range(1..4));
        let op = Op::Cas {
            name: name.to_vec(),
            expected_version: version,
            content: content.to_vec(),
        };
        let request = Request::Command(Command::Cas {
            name: name.clone(),
            version,
            content,
            exptime_s: 0,
        });
        return (request, op, Kind::Cas, name);
    }
    let op = Op::Write {
        name: name.to_vec(),
        content: content.to_vec(),
    };
    let request = Request::Command(Command::Write {
        name: name.clone(),
        content,
        exptime_s: 0,
    });
    (request, op, Kind::Write, name)
}

/// What an answer means for the command it answers (SPEC §2's bytes).
pub(super) fn interpret(kind: Kind, answer: &[u8]) -> Result<Answer, String> {
    let line_end = answer
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .ok_or("no line end")?;
    let line = std::str::from_utf8(&answer[..line_end]).map_err(|_| "not UTF-8")?;
    let mut fields = line.split(' ');
    let head = fields.next().unwrap_or("");
    let number = |field: Option<&str>| -> Result<u64, String> {
        field
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| format!("bad number in {line:?}"))
    };
    let outcome = match head {
        "ERR_REDIRECT" => {
            return Ok(Answer::Redirect(fields.next().unwrap_or("").to_string()));
        }
        "ERR_INTERNAL" => Outcome::Indeterminate,
        "OK" => match (kind, fields.next()) {
            (Kind::Delete, None) => Outcome::Deleted,
            (Kind::Write | Kind::Cas, version) => Outcome::Written {
                version: number(version)?,
            },
            _ => return Err("OK to a read, or a delete with a version".into()),
        },
        "ERR_FILE_NOT_FOUND" if kind != Kind::Write => Outcome::NotFound,
        // (Whether a watch's answer shows another version is lincheck's.)
        "ERR_VERSION" if kind == Kind::Cas => Outcome::VersionMismatch {
            current: number(fields.next())?,
        },
        "CONTENTS" if matches!(kind, Kind::Read | Kind::Watch) => {
            let version = number(fields.next())?;
            let length = number(fields.next())? as usize;
            let _expires_in_s = number(fields.next())?;
            let start = line_end + 2;
            let content = answer
                .get(start..start + length)
                .ok_or("content shorter than announced")?;
            if answer.get(start + length..) != Some(b"\r\n") {
                return Err("content not followed by exactly \\r\\n".into());
            }
            Outcome::Contents {
                version,
                content: content.to_vec(),
            }
        }
        _ => return Err("not an answer this command can get".into()),
    };
    Ok(Answer::Outcome(outcome))
}
