//! `watch` at the replica level (`raftfs::replica`, no sockets): a small
//! deterministic driver runs one to three replicas on simulated disks with
//! instant fsyncs and a lossless network that can isolate nodes, one
//! simulated millisecond per step. (The seeded simulator, `tests/sim.rs`,
//! runs watches under every fault; these tests pin each behaviour.)
//!
//! Covered, each on a leader and on a follower (forward mode: the watch
//! waits there, woken by the follower's own apply): an immediate answer when
//! the version already differs; waking by another connection's write, by
//! delete, by create and by expiry; a change to another file wakes nothing;
//! commands after a watch wait behind it and take effect after it, and a
//! watch sees its own connection's earlier write. Then: a closed connection
//! forgets its watch; the `WATCHES_MAX` bound (`ERR_INTERNAL`); a leader
//! handing over (the woken watch is served as a follower, or redirected in
//! redirect mode); a follower in redirect mode redirects a watch; a watch on
//! a follower outlives a failover of the leader; a partitioned leader or
//! follower (its watch ends in `ERR_INTERNAL`, not silence); a graceful stop
//! (armed watches redirected to the new leader, and they do not keep the
//! node waiting).

use bytes::Bytes;
use raftfs::config::FollowerRequests;
use raftfs::fsm::Command;
use raftfs::protocol::Request;
use raftfs::raft::{self, NodeId, Role};
use raftfs::replica::{ClientRef, Now, Replica, ReplicaConfig, SnapshotDone};
use raftfs::sim::disk::{DiskRequest, SimDisk};
use std::collections::BTreeSet;

/// Simulated time per step.
const STEP_US: u64 = 1_000;
/// How long a node holds a command while no leader is known.
const HOLD_WHILE_LEADERLESS_MS: u64 = 200;

struct MiniNode {
    replica: Replica,
    disk: SimDisk,
}

/// One to three replicas, a lossless instant network, instant fsyncs.
struct Mini {
    nodes: Vec<MiniNode>,
    now_us: u64,
    /// Nodes cut off from every other node.
    isolated: BTreeSet<NodeId>,
    /// Every answer so far: (node, client, bytes).
    answers: Vec<(NodeId, ClientRef, Bytes)>,
    next_conn_id: u64,
}

impl Mini {
    /// Followers forward (the default, `follower_requests = "forward"`).
    fn new(size: u64) -> Mini {
        Mini::with_followers(size, FollowerRequests::Forward)
    }

    fn with_followers(size: u64, follower_requests: FollowerRequests) -> Mini {
        let members: Vec<NodeId> = (1..=size).collect();
        let nodes = members
            .iter()
            .map(|&id| {
                let disk = SimDisk::new();
                let config = ReplicaConfig {
                    raft: raft::Config {
                        id,
                        members: members.clone(),
                        addresses: Default::default(),
                        incarnation: 0x1_0000 + id,
                        election_timeout_ticks: (10, 20),
                        heartbeat_ticks: 2,
                        inflight_appends_max: 16,
                        append_bytes_max: 1 << 20,
                        snapshot_chunk_bytes_max: 1 << 20,
                        pre_vote: true,
                        check_quorum: true,
                        seed: id * 7919,
                    },
                    client_addresses: members
                        .iter()
                        .map(|&member| (member, format!("node-{member}:8080")))
                        .collect(),
                    hold_while_leaderless_ms: HOLD_WHILE_LEADERLESS_MS,
                    snapshot_entries: u64::MAX,
                    follower_requests,
                    session: 0x5e55_0000 + id,
                };
                let boot = disk.boot().expect("a fresh disk boots");
                MiniNode {
                    replica: Replica::new(config, boot),
                    disk,
                }
            })
            .collect();
        Mini {
            nodes,
            now_us: 1_000,
            isolated: BTreeSet::new(),
            answers: Vec::new(),
            next_conn_id: 1,
        }
    }

    fn now(&self) -> Now {
        Now {
            monotonic_us: self.now_us,
            wall_ms: 1_767_225_600_000 + self.now_us / 1_000,
        }
    }

    fn node(&mut self, id: NodeId) -> &mut MiniNode {
        &mut self.nodes[id as usize - 1]
    }

    /// One millisecond: every node ticks and runs a turn; fsyncs finish,
    /// messages arrive and are handled in the same step.
    fn step(&mut self) {
        self.now_us += STEP_US;
        let now = self.now();
        for index in 0..self.nodes.len() {
            self.nodes[index].replica.tick(now);
        }
        // A few rounds so a message and its answer can cross in one step.
        for _ in 0..4 {
            let mut messages = Vec::new();
            for index in 0..self.nodes.len() {
                let id = index as NodeId + 1;
                let node = &mut self.nodes[index];
                node.replica
                    .end_turn(now, &mut node.disk)
                    .expect("a turn on a healthy disk");
                for request in std::mem::take(&mut node.disk.requests) {
                    match request {
                        DiskRequest::Sync(sync) => {
                            node.disk.complete_sync(sync);
                            node.replica.synced(sync, 10);
                        }
                        DiskRequest::Snapshot(job) => match node.disk.complete_snapshot(job) {
                            Some(Ok(meta)) => node.replica.snapshot_done(SnapshotDone::Taken(meta)),
                            Some(Err(reason)) => {
                                node.replica.snapshot_done(SnapshotDone::Failed(reason))
                            }
                            None => {}
                        },
                    }
                }
                for (client, answer) in node.replica.replies.drain(..) {
                    self.answers.push((id, client, answer));
                }
                messages.append(&mut node.replica.messages);
            }
            for envelope in messages {
                if self.isolated.contains(&envelope.from) || self.isolated.contains(&envelope.to) {
                    continue;
                }
                self.node(envelope.to).replica.step(envelope);
            }
        }
    }

    fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    /// Steps until `done` holds, at most `max_ms`; whether it held.
    fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Mini) -> bool) -> bool {
        for _ in 0..max_ms {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .find(|(index, node)| {
                node.replica.raft().role() == Role::Leader
                    && !self.isolated.contains(&(*index as NodeId + 1))
            })
            .map(|(index, _)| index as NodeId + 1)
    }

    /// Elects a leader that has applied its term's first entry.
    fn settle(&mut self) -> NodeId {
        assert!(
            self.run_until(3_000, |mini| mini.leader().is_some_and(|leader| {
                let replica = &mini.nodes[leader as usize - 1].replica;
                replica.applied_index() >= replica.raft().commit_index()
                    && replica.raft().commit_index() > 0
            })),
            "no leader"
        );
        self.run_ms(20);
        self.leader().expect("a leader")
    }

    fn connect(&mut self) -> Connection {
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        Connection {
            key: conn_id as usize,
            conn_id,
            next_seq: 0,
        }
    }

    /// Sends `request` on `connection` to node `node`; its client ref.
    fn send(&mut self, node: NodeId, connection: &mut Connection, request: Request) -> ClientRef {
        let client = ClientRef {
            key: connection.key,
            conn_id: connection.conn_id,
            seq: connection.next_seq,
        };
        connection.next_seq += 1;
        let now = self.now();
        self.node(node).replica.client_request(client, request, now);
        client
    }

    fn answer_of(&self, client: ClientRef) -> Option<String> {
        self.answers
            .iter()
            .find(|(_, to, _)| *to == client)
            .map(|(_, _, bytes)| String::from_utf8_lossy(bytes).into_owned())
    }

    /// Runs until `client` is answered (at most `max_ms`); its answer.
    fn wait_answer(&mut self, client: ClientRef, max_ms: u64) -> String {
        assert!(
            self.run_until(max_ms, |mini| mini.answer_of(client).is_some()),
            "no answer for {client:?} within {max_ms} ms"
        );
        self.answer_of(client).expect("answered")
    }

    /// The order in which answers reached `connection` (by sequence).
    fn answered_sequence(&self, connection: &Connection) -> Vec<u64> {
        self.answers
            .iter()
            .filter(|(_, to, _)| to.conn_id == connection.conn_id)
            .map(|(_, to, _)| to.seq)
            .collect()
    }

    /// `write NAME CONTENT` on a fresh connection, waited for: its version.
    fn write(&mut self, node: NodeId, name: &str, content: &str, exptime_s: u64) -> u64 {
        let mut connection = self.connect();
        let client = self.send(node, &mut connection, write(name, content, exptime_s));
        let answer = self.wait_answer(client, 2_000);
        answer
            .strip_prefix("OK ")
            .and_then(|rest| rest.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("write answered {answer:?}"))
    }
}

struct Connection {
    key: usize,
    conn_id: u64,
    next_seq: u64,
}

fn write(name: &str, content: &str, exptime_s: u64) -> Request {
    Request::Command(Command::Write {
        name: Bytes::copy_from_slice(name.as_bytes()),
        content: Bytes::copy_from_slice(content.as_bytes()),
        exptime_s,
    })
}

fn watch(name: &str, version: u64) -> Request {
    Request::Watch {
        name: Bytes::copy_from_slice(name.as_bytes()),
        version,
    }
}

fn read(name: &str) -> Request {
    Request::Read {
        name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

fn delete(name: &str) -> Request {
    Request::Command(Command::Delete {
        name: Bytes::copy_from_slice(name.as_bytes()),
    })
}

/// A follower of a settled three-node cluster.
fn a_follower(mini: &Mini, leader: NodeId) -> NodeId {
    (1..=mini.nodes.len() as NodeId)
        .find(|&id| id != leader)
        .expect("a follower")
}

/// Runs `case(mini, node, leader)` twice: with `node` the leader of a
/// one-node cluster, and a follower of a three-node one (forward mode: the
/// watch is served there, woken by the follower's own apply).
fn on_leader_and_follower(case: impl Fn(&mut Mini, NodeId, NodeId)) {
    let mut mini = Mini::new(1);
    let leader = mini.settle();
    case(&mut mini, leader, leader);
    let mut mini = Mini::new(3);
    let leader = mini.settle();
    let follower = a_follower(&mini, leader);
    case(&mut mini, follower, leader);
}

#[test]
fn a_watch_on_a_version_the_file_no_longer_has_is_answered_at_once() {
    on_leader_and_follower(|mini, node, leader| {
        let version = mini.write(leader, "f", "hello", 0);
        let mut watcher = mini.connect();
        for watched in [0, version + 5] {
            let client = mini.send(node, &mut watcher, watch("f", watched));
            assert_eq!(
                mini.wait_answer(client, 100),
                format!("CONTENTS {version} 5 0\r\nhello\r\n")
            );
        }
        // Absent and watched at a version: answered not-found at once.
        let client = mini.send(node, &mut watcher, watch("missing", 3));
        assert_eq!(mini.wait_answer(client, 100), "ERR_FILE_NOT_FOUND\r\n");
        assert_eq!(mini.node(node).replica.watches_outstanding(), 0);
    });
}

#[test]
fn a_waiting_watch_is_woken_by_another_connections_write_delete_and_create() {
    on_leader_and_follower(|mini, node, leader| {
        let first = mini.write(leader, "f", "one", 0);
        let mut watcher = mini.connect();
        let waiting = mini.send(node, &mut watcher, watch("f", first));
        mini.run_ms(500);
        assert_eq!(mini.answer_of(waiting), None, "answered without a change");
        // It waits where it was sent, nowhere else.
        assert_eq!(mini.node(node).replica.watches_outstanding(), 1);
        let elsewhere: usize = (1..=mini.nodes.len() as NodeId)
            .filter(|&id| id != node)
            .map(|id| mini.node(id).replica.watches_outstanding())
            .sum();
        assert_eq!(elsewhere, 0);
        let second = mini.write(leader, "f", "two", 0);
        assert_eq!(
            mini.wait_answer(waiting, 100),
            format!("CONTENTS {second} 3 0\r\ntwo\r\n")
        );
        // Delete (sent to the same node) wakes a watch on the last version.
        let waiting = mini.send(node, &mut watcher, watch("f", second));
        mini.run_ms(100);
        assert_eq!(mini.answer_of(waiting), None);
        let mut other = mini.connect();
        let deleted = mini.send(node, &mut other, delete("f"));
        assert_eq!(mini.wait_answer(deleted, 100), "OK\r\n");
        assert_eq!(mini.wait_answer(waiting, 100), "ERR_FILE_NOT_FOUND\r\n");
        // `watch NAME 0` waits for the file to exist.
        let waiting = mini.send(node, &mut watcher, watch("f", 0));
        mini.run_ms(100);
        assert_eq!(mini.answer_of(waiting), None);
        let third = mini.write(leader, "f", "three", 0);
        assert_eq!(
            mini.wait_answer(waiting, 100),
            format!("CONTENTS {third} 5 0\r\nthree\r\n")
        );
        assert_eq!(mini.node(node).replica.watches_outstanding(), 0);
        assert_eq!(mini.node(node).replica.watches_woken(), 3);
    });
}

#[test]
fn expiry_wakes_a_watch() {
    on_leader_and_follower(|mini, node, leader| {
        let version = mini.write(leader, "lease", "holder", 1);
        let mut watcher = mini.connect();
        let waiting = mini.send(node, &mut watcher, watch("lease", version));
        mini.run_ms(700);
        assert_eq!(mini.answer_of(waiting), None, "expired early");
        // The file expires at 1 s of cluster time; the leader stamps the
        // expiry (a follower applies the stamp).
        assert_eq!(mini.wait_answer(waiting, 1_000), "ERR_FILE_NOT_FOUND\r\n");
    });
}

#[test]
fn a_change_to_another_file_wakes_nothing() {
    on_leader_and_follower(|mini, node, leader| {
        let version = mini.write(leader, "watched", "x", 0);
        let mut watchers: Vec<ClientRef> = Vec::new();
        for _ in 0..50 {
            let mut connection = mini.connect();
            watchers.push(mini.send(node, &mut connection, watch("watched", version)));
        }
        mini.run_ms(50);
        for round in 0..20 {
            mini.write(leader, "other", &format!("v{round}"), 0);
        }
        assert_eq!(mini.node(node).replica.watches_woken(), 0);
        assert!(watchers.iter().all(|&w| mini.answer_of(w).is_none()));
        mini.write(leader, "watched", "y", 0);
        for &waiting in &watchers {
            assert!(mini.wait_answer(waiting, 100).starts_with("CONTENTS "));
        }
        assert_eq!(mini.node(node).replica.watches_woken(), 50);
    });
}

#[test]
fn commands_after_a_watch_wait_behind_it_and_take_effect_after_it() {
    on_leader_and_follower(|mini, node, leader| {
        let first = mini.write(leader, "f", "one", 0);
        let mut connection = mini.connect();
        // A write before the watch on the same connection is seen by it.
        let own_write = mini.send(node, &mut connection, write("f", "mine", 0));
        let sees_own = mini.send(node, &mut connection, watch("f", first));
        let own = mini.wait_answer(own_write, 100);
        let own_version: u64 = own.trim_end()[3..].parse().expect("OK VERSION");
        assert_eq!(
            mini.wait_answer(sees_own, 100),
            format!("CONTENTS {own_version} 4 0\r\nmine\r\n")
        );
        // A watch, then a write to its file and a read: both wait.
        let waiting = mini.send(node, &mut connection, watch("f", own_version));
        let later_write = mini.send(node, &mut connection, write("f", "later", 0));
        let later_read = mini.send(node, &mut connection, read("f"));
        mini.run_ms(300);
        assert_eq!(
            mini.answer_of(waiting),
            None,
            "woken by its own later write"
        );
        assert_eq!(mini.answer_of(later_write), None);
        assert_eq!(mini.answer_of(later_read), None);
        // The file is untouched meanwhile.
        let mut other = mini.connect();
        let peek = mini.send(node, &mut other, read("f"));
        assert!(mini
            .wait_answer(peek, 100)
            .starts_with(&format!("CONTENTS {own_version} ")));
        let woken_by = mini.write(leader, "f", "theirs", 0);
        assert_eq!(
            mini.wait_answer(waiting, 100),
            format!("CONTENTS {woken_by} 6 0\r\ntheirs\r\n")
        );
        let later = mini.wait_answer(later_write, 100);
        assert_eq!(later, format!("OK {}\r\n", woken_by + 1));
        assert_eq!(
            mini.wait_answer(later_read, 100),
            format!("CONTENTS {} 5 0\r\nlater\r\n", woken_by + 1)
        );
        let order = mini.answered_sequence(&connection);
        assert_eq!(order, vec![0, 1, 2, 3, 4], "answers out of order");
    });
}

#[test]
fn a_closed_connection_forgets_its_watch_and_what_waits_behind_it() {
    let mut mini = Mini::new(1);
    let leader = mini.settle();
    let version = mini.write(leader, "f", "one", 0);
    let mut connection = mini.connect();
    let waiting = mini.send(leader, &mut connection, watch("f", version));
    let behind = mini.send(leader, &mut connection, write("f", "never", 0));
    mini.run_ms(50);
    assert_eq!(mini.node(leader).replica.watches_outstanding(), 1);
    mini.node(leader).replica.connection_closed(connection.key);
    assert_eq!(mini.node(leader).replica.watches_outstanding(), 0);
    mini.write(leader, "f", "two", 0);
    mini.run_ms(50);
    assert_eq!(mini.answer_of(waiting), None);
    assert_eq!(
        mini.answer_of(behind),
        None,
        "a held write of a closed connection ran"
    );
    assert_eq!(mini.node(leader).replica.watches_woken(), 0);
}

#[test]
fn past_the_bound_a_watch_is_answered_err_internal() {
    let mut mini = Mini::new(1);
    let leader = mini.settle();
    let version = mini.write(leader, "f", "one", 0);
    let max = raftfs::limits::WATCHES_MAX;
    let now = mini.now();
    for key in 0..max {
        let client = ClientRef {
            key: 1_000 + key,
            conn_id: 1_000_000 + key as u64,
            seq: 0,
        };
        mini.node(leader)
            .replica
            .client_request(client, watch("f", version), now);
    }
    let mut one_more = mini.connect();
    let refused = mini.send(leader, &mut one_more, watch("f", version));
    assert_eq!(mini.wait_answer(refused, 50), "ERR_INTERNAL\r\n");
    // The connection goes on: its next command is served.
    let next = mini.send(leader, &mut one_more, read("f"));
    assert!(mini.wait_answer(next, 100).starts_with("CONTENTS "));
    assert_eq!(mini.node(leader).replica.watches_outstanding(), max);
}

/// The old leader, now a follower, keeps the watch; woken by its own apply,
/// it serves it (forward mode: follower ReadIndex) or redirects it.
#[test]
fn a_watch_on_a_leader_that_hands_over_is_served_or_redirected_when_woken() {
    for follower_requests in [FollowerRequests::Forward, FollowerRequests::Redirect] {
        let mut mini = Mini::with_followers(3, follower_requests);
        let old = mini.settle();
        let version = mini.write(old, "f", "one", 0);
        let mut watcher = mini.connect();
        let waiting = mini.send(old, &mut watcher, watch("f", version));
        mini.run_ms(50);
        assert_eq!(mini.answer_of(waiting), None);
        mini.node(old).replica.transfer_leadership();
        assert!(mini.run_until(2_000, |m| m.leader().is_some_and(|l| l != old)));
        let new = mini.settle();
        // Still waiting on the old leader, now a follower: not lost, not early.
        mini.run_ms(100);
        assert_eq!(mini.answer_of(waiting), None);
        let two = mini.write(new, "f", "two", 0);
        let expected = match follower_requests {
            FollowerRequests::Forward => format!("CONTENTS {two} 3 0\r\ntwo\r\n"),
            FollowerRequests::Redirect => format!("ERR_REDIRECT node-{new}:8080\r\n"),
        };
        assert_eq!(mini.wait_answer(waiting, 500), expected);
    }
}

#[test]
fn a_watch_on_a_partitioned_leader_ends_in_an_answer_not_silence() {
    let mut mini = Mini::new(3);
    let old = mini.settle();
    let version = mini.write(old, "f", "one", 0);
    let mut watcher = mini.connect();
    let waiting = mini.send(old, &mut watcher, watch("f", version));
    let behind = mini.send(old, &mut watcher, read("f"));
    mini.run_ms(50);
    mini.isolated.insert(old);
    assert!(mini.run_until(2_000, |m| m.leader().is_some_and(|l| l != old)));
    let new = mini.leader().expect("a new leader");
    mini.run_ms(50);
    mini.write(new, "f", "two", 0);
    // CheckQuorum deposes the old leader; with no leader known for the
    // hold, its watch is checked again and, still leaderless, answered
    // ERR_INTERNAL; the read behind it follows.
    assert_eq!(mini.wait_answer(waiting, 3_000), "ERR_INTERNAL\r\n");
    assert_eq!(mini.wait_answer(behind, 1_000), "ERR_INTERNAL\r\n");
    assert_eq!(mini.node(old).replica.watches_outstanding(), 0);
}

#[test]
fn a_stopping_node_redirects_armed_watches_and_does_not_wait_for_them() {
    let mut mini = Mini::new(3);
    let old = mini.settle();
    let version = mini.write(old, "f", "one", 0);
    let mut watcher = mini.connect();
    let waiting = mini.send(old, &mut watcher, watch("f", version));
    mini.run_ms(50);
    assert!(
        !mini.node(old).replica.has_waiting(),
        "an armed watch keeps a stopping node alive"
    );
    mini.node(old).replica.drain();
    mini.node(old).replica.transfer_leadership();
    let answer = mini.wait_answer(waiting, 2_000);
    let new = mini.leader().expect("a new leader");
    assert_ne!(new, old);
    assert_eq!(answer, format!("ERR_REDIRECT node-{new}:8080\r\n"));
    assert!(!mini.node(old).replica.has_waiting());
}

#[test]
fn a_watch_on_a_follower_is_redirected_in_redirect_mode() {
    let mut mini = Mini::with_followers(3, FollowerRequests::Redirect);
    let leader = mini.settle();
    let follower = a_follower(&mini, leader);
    let one = mini.write(leader, "f", "one", 0);
    let mut watcher = mini.connect();
    let redirected = mini.send(follower, &mut watcher, watch("f", one));
    assert_eq!(
        mini.wait_answer(redirected, 100),
        format!("ERR_REDIRECT node-{leader}:8080\r\n")
    );
    assert_eq!(mini.node(follower).replica.watches_outstanding(), 0);
}

#[test]
fn a_watch_on_a_follower_survives_a_leader_failover() {
    let mut mini = Mini::new(3);
    let old = mini.settle();
    let follower = a_follower(&mini, old);
    let one = mini.write(old, "f", "one", 0);
    let mut watcher = mini.connect();
    let waiting = mini.send(follower, &mut watcher, watch("f", one));
    mini.run_ms(50);
    assert_eq!(mini.node(follower).replica.watches_outstanding(), 1);
    mini.isolated.insert(old);
    assert!(mini.run_until(3_000, |m| m.leader().is_some_and(|l| l != old)));
    let new = mini.settle();
    assert_eq!(mini.answer_of(waiting), None, "answered without a change");
    let two = mini.write(new, "f", "two", 0);
    assert_eq!(
        mini.wait_answer(waiting, 500),
        format!("CONTENTS {two} 3 0\r\ntwo\r\n")
    );
}

#[test]
fn a_watch_on_a_partitioned_follower_ends_in_an_answer_not_silence() {
    let mut mini = Mini::new(3);
    let leader = mini.settle();
    let follower = a_follower(&mini, leader);
    let one = mini.write(leader, "f", "one", 0);
    let mut watcher = mini.connect();
    let waiting = mini.send(follower, &mut watcher, watch("f", one));
    mini.run_ms(50);
    mini.isolated.insert(follower);
    mini.write(leader, "f", "two", 0);
    // The follower cannot apply the change; once it has known no leader
    // for the hold, its watch is checked again and answered ERR_INTERNAL.
    assert_eq!(mini.wait_answer(waiting, 3_000), "ERR_INTERNAL\r\n");
    assert_eq!(mini.node(follower).replica.watches_outstanding(), 0);
}
