//! Scripted schedules: full replicas on simulated disks, with every message,
//! fsync and tick under the test's control, for client-facing behaviour that
//! needs one exact interleaving (`tests/replica_scripts.rs`).
//!
//! Where `Sim` draws a schedule from a seed, a `Script` runs the one its
//! caller writes: client commands are given as protocol text (framed by the
//! production `protocol::parse_next`), messages wait in one network queue
//! until delivered (or dropped) by a filter, fsyncs complete at the end of
//! each turn unless the node's disk is held, and time moves only when the
//! script says. Everything a client is answered, and the events a script
//! marks, go into a transcript that the tests compare with a golden file.
//!
//! The replicas are the production `Replica`s, booted from their `SimDisk`
//! by the production restore, exactly as in `Sim`.

use super::disk::{DiskRequest, SimDisk};
use super::TICK_US;
use crate::config::FollowerRequests;
use crate::protocol::{parse_next, Parsed};
use crate::raft::{Envelope, Message, NodeId, Role};
use crate::replica::{ClientRef, Now, Replica, ReplicaConfig, SnapshotDone};
use bytes::BytesMut;
use std::collections::BTreeMap;

/// Start of the scripted clocks (ms since the epoch).
const WALL_CLOCK_START_MS: u64 = 1_767_225_600_000;

/// Largest file a scripted client may write.
const MAX_FILE_BYTES: usize = 1 << 20;

struct ScriptNode {
    replica: Option<Replica>,
    disk: SimDisk,
    /// fsyncs asked for and not completed (held disks keep them here).
    syncs: Vec<u64>,
    /// Snapshot jobs started and not completed.
    jobs: Vec<u64>,
    /// Hold fsyncs and snapshot jobs until `release_disk`.
    disk_held: bool,
}

/// A scripted cluster of `Replica`s (see the module doc).
pub struct Script {
    nodes: BTreeMap<NodeId, ScriptNode>,
    members: Vec<NodeId>,
    now_us: u64,
    snapshot_entries: u64,
    /// Messages sent and not yet delivered, in send order.
    network: Vec<Envelope>,
    /// Per connection id: the node it talks to.
    connections: BTreeMap<u64, NodeId>,
    next_seq: BTreeMap<u64, u64>,
    transcript: Vec<String>,
    seed: u64,
    follower_requests: FollowerRequests,
}

impl Script {
    /// `count` fresh nodes (ids 1..=count) that snapshot every
    /// `snapshot_entries` applied entries (`u64::MAX`: never); followers
    /// serve every command (`follower_requests = "forward"`).
    pub fn new(count: usize, snapshot_entries: u64) -> Script {
        Script::with_followers(count, snapshot_entries, FollowerRequests::Forward)
    }

    /// `new`, with followers doing `follower_requests`.
    pub fn with_followers(
        count: usize,
        snapshot_entries: u64,
        follower_requests: FollowerRequests,
    ) -> Script {
        let members: Vec<NodeId> = (1..=count as NodeId).collect();
        let mut script = Script {
            nodes: BTreeMap::new(),
            members: members.clone(),
            now_us: 0,
            snapshot_entries,
            network: Vec::new(),
            connections: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            transcript: Vec::new(),
            seed: 1,
            follower_requests,
        };
        for id in members {
            script.nodes.insert(
                id,
                ScriptNode {
                    replica: None,
                    disk: SimDisk::new(),
                    syncs: Vec::new(),
                    jobs: Vec::new(),
                    disk_held: false,
                },
            );
            script.start(id);
        }
        script
    }

    /// What the clients were answered and what the script noted, in order.
    pub fn transcript(&self) -> String {
        let mut text = self.transcript.join("\n");
        text.push('\n');
        text
    }

    /// Adds a line to the transcript.
    pub fn note(&mut self, line: impl Into<String>) {
        self.transcript.push(format!("-- {}", line.into()));
    }

    pub fn replica(&self, id: NodeId) -> &Replica {
        self.nodes[&id]
            .replica
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is down"))
    }

    pub fn role(&self, id: NodeId) -> Option<Role> {
        self.nodes[&id]
            .replica
            .as_ref()
            .map(|replica| replica.raft().role())
    }

    fn config(&mut self, id: NodeId) -> ReplicaConfig {
        self.seed += 1;
        ReplicaConfig {
            raft: crate::raft::Config {
                id,
                members: self.members.clone(),
                addresses: Default::default(),
                incarnation: 0x1_0000 + id,
                // Only the script starts elections (`campaign`): timeouts
                // longer than any script waits.
                election_timeout_ticks: (1_000, 1_001),
                heartbeat_ticks: 5,
                inflight_appends_max: 16,
                append_bytes_max: 1 << 20,
                snapshot_chunk_bytes_max: 256,
                pre_vote: true,
                check_quorum: true,
                seed: self.seed,
            },
            client_addresses: self
                .members
                .iter()
                .map(|&member| (member, format!("node-{member}:8080")))
                .collect(),
            hold_while_leaderless_ms: 100,
            snapshot_entries: self.snapshot_entries,
            follower_requests: self.follower_requests,
            session: self.seed,
        }
    }

    fn start(&mut self, id: NodeId) {
        let config = self.config(id);
        let node = self.nodes.get_mut(&id).expect("a member");
        let boot = node
            .disk
            .boot()
            .unwrap_or_else(|e| panic!("node {id} cannot start: {e}"));
        node.replica = Some(Replica::new(config, boot));
    }

    fn now(&self) -> Now {
        Now {
            monotonic_us: self.now_us,
            wall_ms: WALL_CLOCK_START_MS + self.now_us / 1_000,
        }
    }

    /// Node `id` campaigns now (`Replica::campaign_now`); messages then
    /// flow among the nodes `among`, and only those, until it leads and its
    /// term's first entry is applied (it serves reads from then on).
    pub fn campaign(&mut self, id: NodeId, among: &[NodeId]) {
        if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
            replica.campaign_now();
        }
        self.turn(id);
        self.deliver(|envelope| among.contains(&envelope.from) && among.contains(&envelope.to));
        let replica = self.replica(id);
        let raft = replica.raft();
        assert_eq!(
            raft.role(),
            Role::Leader,
            "node {id} did not win its election"
        );
        assert_eq!(
            raft.term_at(replica.applied_index()),
            Some(raft.term()),
            "node {id}'s term has no applied entry yet"
        );
        let term = raft.term();
        self.note(format!("node {id} leads term {term}"));
    }

    /// Time passes by `ms` on the nodes `ticking` (the others are stopped),
    /// each of which takes its turn afterwards.
    pub fn advance_ms(&mut self, ms: u64, ticking: &[NodeId]) {
        let end_us = self.now_us + ms * 1_000;
        while self.now_us < end_us {
            self.now_us = (self.now_us + TICK_US).min(end_us);
            for &id in ticking {
                let now = self.now();
                if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
                    replica.tick(now);
                }
                self.turn(id);
            }
        }
    }

    /// A client on connection `conn` sends `text` (one or more commands,
    /// protocol bytes) to node `id`, which takes one turn.
    pub fn client(&mut self, id: NodeId, conn: u64, text: &str) {
        self.connections.insert(conn, id);
        let mut buffer = BytesMut::from(text.as_bytes());
        let now = self.now();
        while let Some(parsed) = parse_next(&mut buffer, MAX_FILE_BYTES) {
            let seq = self.next_seq.entry(conn).or_insert(0);
            let client = ClientRef {
                key: conn as usize,
                conn_id: conn,
                seq: *seq,
            };
            *seq += 1;
            match parsed {
                Parsed::Request(request) => {
                    if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut())
                    {
                        replica.client_request(client, request, now);
                    }
                }
                Parsed::Malformed { .. } => panic!("a script sent a malformed command: {text:?}"),
            }
        }
        self.turn(id);
    }

    /// Node `id` takes one turn: its outputs go to the network, the
    /// transcript and its disk's queue.
    pub fn turn(&mut self, id: NodeId) {
        let now = self.now();
        let node = self.nodes.get_mut(&id).expect("a member");
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        if let Err(error) = replica.end_turn(now, &mut node.disk) {
            panic!("node {id} stopped: {error}");
        }
        let messages = std::mem::take(&mut replica.messages);
        let mut replies = std::mem::take(&mut replica.replies);
        for request in std::mem::take(&mut node.disk.requests) {
            match request {
                DiskRequest::Sync(sync) => node.syncs.push(sync),
                DiskRequest::Snapshot(job) => node.jobs.push(job),
            }
        }
        let held = node.disk_held;
        self.network.extend(messages);
        replies.sort_by_key(|(client, _)| (client.conn_id, client.seq));
        for (client, answer) in replies {
            let text = String::from_utf8_lossy(&answer);
            self.transcript.push(format!(
                "conn {} #{} <- node {id}: {}",
                client.conn_id,
                client.seq,
                text.trim_end().replace("\r\n", " | ")
            ));
        }
        if !held {
            self.complete_disk_work(id);
        }
    }

    /// Completes node `id`'s fsyncs and snapshot jobs, and takes a turn if
    /// anything finished.
    fn complete_disk_work(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("a member");
        let syncs = std::mem::take(&mut node.syncs);
        let jobs = std::mem::take(&mut node.jobs);
        if syncs.is_empty() && jobs.is_empty() {
            return;
        }
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        for sync in syncs {
            node.disk.complete_sync(sync);
            replica.synced(sync, 100);
        }
        for job in jobs {
            match node.disk.complete_snapshot(job) {
                Some(Ok(meta)) => replica.snapshot_done(SnapshotDone::Taken(meta)),
                Some(Err(reason)) => replica.snapshot_done(SnapshotDone::Failed(reason)),
                None => {}
            }
        }
        self.turn(id);
    }

    /// Node `id`'s disk holds its fsyncs and snapshot jobs (a stall).
    pub fn hold_disk(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).expect("a member").disk_held = true;
    }

    /// Node `id`'s disk completes what it held, and goes on as usual.
    pub fn release_disk(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).expect("a member").disk_held = false;
        self.complete_disk_work(id);
    }

    /// Delivers, in send order, the waiting messages `filter` accepts (and
    /// what they cause, until nothing accepted is left); returns how many.
    pub fn deliver(&mut self, filter: impl Fn(&Envelope) -> bool) -> usize {
        for delivered in 0..100_000 {
            let Some(position) = self.network.iter().position(&filter) else {
                return delivered;
            };
            let envelope = self.network.remove(position);
            let to = envelope.to;
            let Some(replica) = self.nodes.get_mut(&to).and_then(|n| n.replica.as_mut()) else {
                continue;
            };
            replica.step(envelope);
            self.turn(to);
        }
        panic!("messages never stop flowing");
    }

    /// Drops the waiting messages `filter` accepts; returns how many.
    pub fn drop_messages(&mut self, filter: impl Fn(&Envelope) -> bool) -> usize {
        let before = self.network.len();
        self.network.retain(|envelope| !filter(envelope));
        before - self.network.len()
    }

    /// Messages waiting that `filter` accepts.
    pub fn waiting(&self, filter: impl Fn(&Envelope) -> bool) -> usize {
        self.network.iter().filter(|e| filter(e)).count()
    }

    /// Node `id` crashes: a power loss keeps only what was synced, a process
    /// kill keeps every write; messages to and from it in flight are lost.
    pub fn crash(&mut self, id: NodeId, power_loss: bool) {
        let node = self.nodes.get_mut(&id).expect("a member");
        node.replica = None;
        node.syncs.clear();
        node.jobs.clear();
        node.disk.crash(power_loss, 0);
        self.network
            .retain(|envelope| envelope.to != id && envelope.from != id);
        self.note(format!(
            "node {id} crashes ({})",
            if power_loss {
                "power loss"
            } else {
                "process kill"
            }
        ));
    }

    /// Node `id` starts again from its disk.
    pub fn restart(&mut self, id: NodeId) {
        self.start(id);
        self.note(format!("node {id} restarts"));
        self.turn(id);
    }
}

/// Message filters for scripts.
pub mod filter {
    use super::*;

    /// Between two sets of nodes (either direction within `nodes`).
    pub fn among(nodes: &[NodeId]) -> impl Fn(&Envelope) -> bool + '_ {
        move |envelope| nodes.contains(&envelope.from) && nodes.contains(&envelope.to)
    }

    /// From `from` to `to`.
    pub fn link(from: NodeId, to: NodeId) -> impl Fn(&Envelope) -> bool {
        move |envelope| envelope.from == from && envelope.to == to
    }

    /// AppendEntries responses (acknowledgements).
    pub fn is_append_response(envelope: &Envelope) -> bool {
        matches!(envelope.message, Message::AppendEntriesResponse { .. })
    }
}
