//! A minimal in-memory Raft cluster for the benchmark and its smoke test:
//! every node's actions are carried out at once (persist = instantly durable,
//! then `persisted`), messages go through one FIFO queue, nothing is lost.
//! Time spent inside the leader's own calls is accumulated separately so the
//! benchmark can report the leader's CPU cost per command.
//!
//! Left out on purpose: faults, delays, disks — that is the simulator's job.

use bytes::Bytes;
use raftfs::raft::{Action, Config, Envelope, Node, Restored, Role};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub nodes: Vec<Node>,
    queue: VecDeque<Envelope>,
    actions: Vec<Action>,
    /// Entries applied per node.
    pub applied: Vec<u64>,
    /// Wall time spent inside calls on `leader`.
    pub leader_time: Duration,
    pub leader: usize,
}

impl Cluster {
    /// `size` nodes with ids 1..=size; node 1 is made leader.
    pub fn new(size: usize, inflight_appends_max: usize) -> Cluster {
        let members: Vec<u64> = (1..=size as u64).collect();
        let nodes = members
            .iter()
            .map(|id| {
                let config = Config {
                    id: *id,
                    members: members.clone(),
                    addresses: Default::default(),
                    incarnation: 100 + id,
                    election_timeout_ticks: (10, 20),
                    heartbeat_ticks: 3,
                    inflight_appends_max,
                    append_bytes_max: 1 << 20,
                    snapshot_chunk_bytes_max: raftfs::limits::SNAPSHOT_CHUNK_BYTES_MAX,
                    pre_vote: true,
                    check_quorum: true,
                    seed: *id,
                };
                Node::new(config, Restored::default())
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            queue: VecDeque::new(),
            actions: Vec::new(),
            applied: vec![0; size],
            leader_time: Duration::ZERO,
            leader: 0,
        };
        while cluster.nodes[0].role() != Role::Leader {
            cluster.nodes[0].tick();
            cluster.process(0);
            cluster.deliver_all();
        }
        cluster.leader_time = Duration::ZERO;
        cluster
    }

    /// Carry out node `index`'s actions.
    fn process(&mut self, index: usize) {
        loop {
            let start = Instant::now();
            self.nodes[index].drain_actions(&mut self.actions);
            let mut last_persisted = None;
            for action in self.actions.drain(..) {
                match action {
                    Action::PersistEntries(entries) => {
                        last_persisted = entries.last().map(|entry| (entry.index, entry.term))
                    }
                    Action::Send(envelope) => self.queue.push_back(envelope),
                    Action::Apply(entries) => self.applied[index] += entries.len() as u64,
                    Action::PersistHardState(_)
                    | Action::ReadReady { .. }
                    | Action::ReadFailed { .. } => {}
                    // The bench never compacts, so no snapshot moves.
                    Action::SendSnapshotChunk { .. } | Action::SnapshotChunk { .. } => {}
                }
            }
            if let Some((last, term)) = last_persisted {
                self.nodes[index].persisted(last, term);
            }
            if index == self.leader {
                self.leader_time += start.elapsed();
            }
            if last_persisted.is_none() {
                return;
            }
        }
    }

    /// Deliver messages until the network is quiet.
    pub fn deliver_all(&mut self) {
        while let Some(envelope) = self.queue.pop_front() {
            let index = (envelope.to - 1) as usize;
            let start = Instant::now();
            let result = self.nodes[index].step(envelope);
            if index == self.leader {
                self.leader_time += start.elapsed();
            }
            assert!(result.is_ok(), "step refused: {result:?}");
            self.process(index);
        }
    }

    /// Propose `batch` commands of `command_bytes` each in one turn and run
    /// the cluster until every node applied them.
    pub fn replicate_batch(&mut self, batch: usize, payload: &Bytes) {
        let start = Instant::now();
        for _ in 0..batch {
            let proposed = self.nodes[self.leader].propose(payload.clone());
            assert!(proposed.is_ok(), "leader refused a proposal");
        }
        self.leader_time += start.elapsed();
        let target = self.nodes[self.leader].last_index();
        self.process(self.leader);
        self.deliver_all();
        // Followers learn the final commit index from the next heartbeat.
        while self.applied.iter().any(|applied| *applied < target) {
            for index in 0..self.nodes.len() {
                self.nodes[index].tick();
                self.process(index);
            }
            self.deliver_all();
        }
    }
}
