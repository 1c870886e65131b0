//! Golden-script tests for the Raft core, over its public API only.
//!
//! Each `tests/scripts/raft/*.txt` file is a script: command lines, `#`
//! comments, blank lines, and after each command its output, indented by two
//! spaces. The runner strips the output lines, runs the commands against an
//! in-memory cluster (actions carried out at once: a persist is durable when
//! emitted, then `persisted` is called), and compares the regenerated file
//! with the stored one. `UPDATE_GOLDEN=1 cargo test --test raft_scripts`
//! rewrites the files; review the diff before committing it.
//!
//! Commands (ids are node ids, 1-based):
//! - `cluster N [prevote=false] [checkquorum=false] [inflight=K] [bytes=B]
//!   [spares=K]` — N voters; K more nodes (N+1..) start with an empty log
//!   and cluster.toml's members plus themselves, as a node waiting to be
//!   added does
//! - `tick IDS|all [xN]` — tick the nodes N times (default 1)
//! - `run N` — N rounds of: tick every running node, deliver until quiet
//! - `campaign ID` — tick ID until it sends PreVote or RequestVote
//! - `deliver [once]` — deliver queued messages until quiet (or one hop)
//! - `deliver A->B` / `drop A->B [N]` — one link's queue (the Nth message)
//! - `queue` — list queued messages
//! - `partition 1 | 2 3` / `heal` — cut / restore links between groups
//! - `propose ID "data"`, `read ID READ_ID...`, `transfer ID [TARGET]`
//! - `add ID NEW`, `promote ID TARGET`, `remove ID TARGET` — node ID (the
//!   leader) proposes a membership change; `config IDS|all` — each node's
//!   configuration in force, its index and whether it is committed
//! - `drop all` — lose every queued message
//! - `crash IDS [unsynced]`, `restart IDS`, `wipe ID` (crash + lose the
//!   disk + a new incarnation); `unsynced`: the node's last hard-state
//!   write is lost with it (a power loss before its fsync), entries and
//!   snapshots stay
//! - `status`, `log ID`
//! - `compact ID` — snapshot node ID at its applied index and compact its log
//!   (the harness's snapshot is the applied entry list, bincode-encoded)
//!
//! After every command the runner checks election safety (one leader per
//! term) and state machine safety (applied sequences are prefixes of each
//! other), so a golden file cannot silently record a safety violation.
//! A snapshot records the configuration in force at its index (the last
//! configuration entry among the entries it holds).

use bytes::Bytes;
use raftfs::raft::membership::is_configuration_entry;
use raftfs::raft::{
    Action, Change, Config, Configuration, Entry, Envelope, HardState, Installed, MemberAddresses,
    Message, Node, NodeId, Restored, Role, SnapshotMeta, Term,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Default, Clone)]
struct Disk {
    hard_state: HardState,
    /// The hard state before the last write (`crash ID unsynced`).
    hard_state_before: HardState,
    /// Entries after the snapshot.
    entries: Vec<Entry>,
    /// The snapshot: its meta and bytes (the applied entries through it).
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

fn encode_snapshot(entries: &[Entry]) -> Vec<u8> {
    bincode::serialize(entries).expect("entries encode")
}

fn decode_snapshot(bytes: &[u8]) -> Vec<Entry> {
    bincode::deserialize(bytes).expect("snapshot bytes decode")
}

/// The configuration a snapshot of these applied entries records.
fn snapshot_configuration(entries: &[Entry]) -> Option<Configuration> {
    entries
        .iter()
        .rev()
        .find(|entry| is_configuration_entry(&entry.data))
        .map(|entry| Configuration::decode(&entry.data).expect("a configuration entry decodes"))
}

/// The addresses the harness gives node `id` (only carried, never dialed).
fn addresses_of(id: NodeId) -> MemberAddresses {
    MemberAddresses {
        peer: format!("n{id}:9"),
        client: format!("n{id}:8"),
        metrics: String::new(),
    }
}

struct Harness {
    configs: BTreeMap<NodeId, Config>,
    nodes: BTreeMap<NodeId, Option<Node>>,
    disks: BTreeMap<NodeId, Disk>,
    queue: Vec<Envelope>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    leaders: BTreeMap<Term, NodeId>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    /// PreVote/RequestVote messages sent so far (`campaign` waits for one).
    campaigns: u64,
    /// Snapshot bytes received so far, per receiving node.
    receiving: BTreeMap<NodeId, Vec<u8>>,
    out: String,
}

fn format_entry(entry: &Entry) -> String {
    if entry.data.is_empty() {
        format!("{}@{} noop", entry.index, entry.term)
    } else if is_configuration_entry(&entry.data) {
        match Configuration::decode(&entry.data) {
            Ok(configuration) => format!("{}@{} config {configuration}", entry.index, entry.term),
            Err(reason) => format!("{}@{} bad config ({reason})", entry.index, entry.term),
        }
    } else {
        format!(
            "{}@{} {:?}",
            entry.index,
            entry.term,
            String::from_utf8_lossy(&entry.data)
        )
    }
}

fn format_entries(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(format_entry)
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_envelope(envelope: &Envelope) -> String {
    let body = match &envelope.message {
        Message::PreVote {
            last_log_index,
            last_log_term,
        } => {
            format!("PreVote last={last_log_index}@{last_log_term}")
        }
        Message::PreVoteResponse { granted } => format!("PreVoteResponse granted={granted}"),
        Message::RequestVote {
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => {
            let transfer = if *leadership_transfer {
                " transfer"
            } else {
                ""
            };
            format!("RequestVote last={last_log_index}@{last_log_term}{transfer}")
        }
        Message::RequestVoteResponse { granted } => {
            format!("RequestVoteResponse granted={granted}")
        }
        Message::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => format!(
            "AppendEntries prev={prev_log_index}@{prev_log_term} commit={leader_commit} [{}]",
            format_entries(entries)
        ),
        Message::AppendEntriesResponse {
            success: true,
            match_index,
            ..
        } => {
            format!("AppendEntriesResponse ok match={match_index}")
        }
        Message::AppendEntriesResponse {
            success: false,
            match_index,
            conflict_index,
            conflict_term,
        } => {
            let term = conflict_term.map_or(String::new(), |term| format!("@{term}"));
            format!("AppendEntriesResponse reject prev={match_index} hint={conflict_index}{term}")
        }
        Message::Heartbeat {
            leader_commit,
            read_round,
        } => {
            format!("Heartbeat commit={leader_commit} round={read_round}")
        }
        Message::HeartbeatResponse { read_round } => {
            format!("HeartbeatResponse round={read_round}")
        }
        Message::TimeoutNow => "TimeoutNow".to_string(),
        Message::InstallSnapshot {
            snapshot,
            offset,
            data,
        } => format!(
            "InstallSnapshot {}@{} bytes {offset}..{} of {}",
            snapshot.index,
            snapshot.term,
            offset + data.len() as u64,
            snapshot.size_bytes
        ),
        Message::InstallSnapshotResponse {
            index,
            next_offset,
            installed,
        } => format!(
            "InstallSnapshotResponse index={index} next_offset={next_offset} installed={installed}"
        ),
        // Client traffic is the replica's; the core never sends it.
        other => format!("{other:?}"),
    };
    format!(
        "{}->{} t{} {body}",
        envelope.from, envelope.to, envelope.term
    )
}

fn parse_link(text: &str) -> (NodeId, NodeId) {
    let (from, to) = text
        .split_once("->")
        .unwrap_or_else(|| panic!("bad link {text:?}"));
    (parse_id(from), parse_id(to))
}

fn parse_id(text: &str) -> NodeId {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad node id {text:?}"))
}

/// Split a command line into words, keeping "quoted strings" whole.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .unwrap_or_else(|| panic!("unterminated quote in {line:?}"));
            words.push(quoted[..end].to_string());
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    words
}

impl Harness {
    fn new() -> Harness {
        Harness {
            configs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: Vec::new(),
            blocked: BTreeSet::new(),
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            campaigns: 0,
            receiving: BTreeMap::new(),
            out: String::new(),
        }
    }

    fn line(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.out, "  {}", text.as_ref());
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        match self.nodes.get_mut(&id) {
            Some(Some(node)) => node,
            _ => panic!("node {id} is not running"),
        }
    }

    fn cluster(&mut self, args: &[String]) {
        let size: u64 = args
            .first()
            .and_then(|n| n.parse().ok())
            .expect("cluster N");
        let members: Vec<NodeId> = (1..=size).collect();
        let spares: u64 = args[1..]
            .iter()
            .find_map(|option| option.strip_prefix("spares="))
            .map_or(0, |count| count.parse().expect("spares=K"));
        for id in 1..=size + spares {
            let id = &id;
            let mut bootstrap = members.clone();
            if *id > size {
                bootstrap.push(*id);
            }
            let mut config = Config {
                id: *id,
                members: bootstrap.clone(),
                addresses: bootstrap
                    .iter()
                    .map(|id| (*id, addresses_of(*id)))
                    .collect(),
                incarnation: 1000 * id,
                election_timeout_ticks: (10, 20),
                heartbeat_ticks: 3,
                inflight_appends_max: 4,
                append_bytes_max: 1 << 20,
                snapshot_chunk_bytes_max: raftfs::limits::SNAPSHOT_CHUNK_BYTES_MAX,
                pre_vote: true,
                check_quorum: true,
                seed: *id,
            };
            for option in &args[1..] {
                let (key, value) = option.split_once('=').expect("option key=value");
                match key {
                    "prevote" => config.pre_vote = value == "true",
                    "checkquorum" => config.check_quorum = value == "true",
                    "inflight" => config.inflight_appends_max = value.parse().expect("inflight"),
                    "bytes" => config.append_bytes_max = value.parse().expect("bytes"),
                    "spares" => {}
                    _ => panic!("unknown cluster option {key}"),
                }
            }
            self.configs.insert(*id, config.clone());
            self.disks.insert(*id, Disk::default());
            self.nodes
                .insert(*id, Some(Node::new(config, Restored::default())));
        }
    }

    /// Carry out node `id`'s pending actions, printing each.
    fn process(&mut self, id: NodeId, indent: &str) {
        loop {
            let mut actions = Vec::new();
            self.node(id).drain_actions(&mut actions);
            let mut persisted = None;
            // Answers to a snapshot chunk are pushed while it is handled.
            let mut more = false;
            for action in actions {
                let text = match action {
                    Action::PersistHardState(hard_state) => {
                        let text = format!(
                            "persist term={} vote={:?} incarnations={:?}",
                            hard_state.term, hard_state.vote, hard_state.incarnations
                        );
                        let disk = self.disks.entry(id).or_default();
                        disk.hard_state_before =
                            std::mem::replace(&mut disk.hard_state, hard_state);
                        text
                    }
                    Action::PersistEntries(entries) => {
                        let text = format!("persist [{}]", format_entries(&entries));
                        let disk = self.disks.entry(id).or_default();
                        if let Some(first) = entries.first() {
                            let disk_last = disk.entries.last().map_or(
                                disk.snapshot.as_ref().map_or(0, |(meta, _)| meta.index),
                                |entry| entry.index,
                            );
                            assert!(first.index <= disk_last + 1, "gap in persisted log");
                            disk.entries.retain(|entry| entry.index < first.index);
                            persisted = entries.last().map(|entry| (entry.index, entry.term));
                        }
                        disk.entries.extend(entries);
                        text
                    }
                    Action::Send(envelope) => {
                        if matches!(
                            envelope.message,
                            Message::PreVote { .. } | Message::RequestVote { .. }
                        ) {
                            self.campaigns += 1;
                        }
                        let text = format!("send {}", format_envelope(&envelope));
                        self.queue.push(envelope);
                        text
                    }
                    Action::Apply(entries) => {
                        let text = format!("apply [{}]", format_entries(&entries));
                        self.applied.entry(id).or_default().extend(entries);
                        text
                    }
                    Action::ReadReady { id: read, index } => {
                        format!("read {read} ready at {index}")
                    }
                    Action::ReadFailed { id: read } => format!("read {read} failed"),
                    Action::SendSnapshotChunk {
                        mut envelope,
                        length_bytes,
                    } => {
                        let bytes = self.disks[&id]
                            .snapshot
                            .as_ref()
                            .map(|(_, bytes)| bytes.clone())
                            .expect("a leader sends only a snapshot it has");
                        if let Message::InstallSnapshot { offset, data, .. } = &mut envelope.message
                        {
                            let start = *offset as usize;
                            *data = Bytes::copy_from_slice(
                                &bytes[start..start + length_bytes as usize],
                            );
                        }
                        let text = format!("send {}", format_envelope(&envelope));
                        self.queue.push(envelope);
                        text
                    }
                    Action::SnapshotChunk {
                        from,
                        snapshot,
                        offset,
                        data,
                    } => {
                        more = true;
                        self.receive_chunk(id, from, snapshot, offset, &data)
                    }
                };
                self.line(format!("{indent}n{id}: {text}"));
            }
            match persisted {
                Some((index, term)) => self.node(id).persisted(index, term),
                None if more => {}
                None => break,
            }
        }
        self.check_invariants();
    }

    /// The executor's side of a received snapshot chunk (see `Action`).
    fn receive_chunk(
        &mut self,
        id: NodeId,
        from: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> String {
        let received = self.receiving.entry(id).or_default();
        if offset == 0 {
            received.clear();
        }
        if offset == received.len() as u64 {
            received.extend_from_slice(data);
        }
        let held = received.len() as u64;
        if held < snapshot.size_bytes {
            self.node(id).snapshot_chunk_stored(from, snapshot, held);
            return format!("stored snapshot {} bytes ..{held}", snapshot.index);
        }
        let bytes = self.receiving.remove(&id).unwrap_or_default();
        let configuration = snapshot_configuration(&decode_snapshot(&bytes));
        match self
            .node(id)
            .install_snapshot(from, snapshot, configuration)
        {
            Installed::Stale => format!("snapshot {} is stale", snapshot.index),
            Installed::Installed { log_kept } => {
                let applied = decode_snapshot(&bytes);
                self.applied.insert(id, applied);
                let disk = self.disks.entry(id).or_default();
                if log_kept {
                    disk.entries.retain(|entry| entry.index > snapshot.index);
                } else {
                    disk.entries.clear();
                }
                disk.snapshot = Some((snapshot, bytes));
                format!("installed snapshot {} log_kept={log_kept}", snapshot.index)
            }
        }
    }

    /// Snapshot node `id` at its applied index and compact its log.
    fn compact(&mut self, id: NodeId) {
        let applied = self.applied.get(&id).cloned().unwrap_or_default();
        let index = self.node(id).applied_index();
        let bytes = encode_snapshot(&applied[..index as usize]);
        let size_bytes = bytes.len() as u64;
        let compacted = self.node(id).compact(index, size_bytes);
        self.line(format!("n{id}: compact {index} -> {compacted}"));
        if compacted {
            let snapshot = self.node(id).snapshot();
            let disk = self.disks.entry(id).or_default();
            disk.entries.retain(|entry| entry.index > index);
            disk.snapshot = Some((snapshot, bytes));
        }
    }

    fn check_invariants(&mut self) {
        for (id, node) in &self.nodes {
            let Some(node) = node else { continue };
            if node.role() == Role::Leader {
                let leader = *self.leaders.entry(node.term()).or_insert(*id);
                assert_eq!(leader, *id, "two leaders in term {}", node.term());
            }
        }
        let sequences: Vec<&Vec<Entry>> = self.applied.values().collect();
        for a in &sequences {
            for b in &sequences {
                let common = a.len().min(b.len());
                assert_eq!(a[..common], b[..common], "applied sequences diverge");
            }
        }
    }

    fn deliver_one(&mut self, position: usize) {
        let envelope = self.queue.remove(position);
        let (from, to) = (envelope.from, envelope.to);
        let running = matches!(self.nodes.get(&to), Some(Some(_)));
        if self.blocked.contains(&(from, to)) || !running {
            self.line(format!("{} (lost)", format_envelope(&envelope)));
            return;
        }
        self.line(format_envelope(&envelope));
        if let Err(error) = self.node(to).step(envelope) {
            self.line(format!("  n{to}: refused {error:?}"));
        }
        self.process(to, "  ");
    }

    fn deliver(&mut self, once: bool) {
        let mut budget = if once { self.queue.len() } else { 100_000 };
        while !self.queue.is_empty() && budget > 0 {
            self.deliver_one(0);
            budget -= 1;
        }
        assert!(once || self.queue.is_empty(), "network did not quiesce");
    }

    fn link_positions(&self, from: NodeId, to: NodeId) -> Vec<usize> {
        (0..self.queue.len())
            .filter(|i| self.queue[*i].from == from && self.queue[*i].to == to)
            .collect()
    }

    fn restart(&mut self, id: NodeId) {
        let disk = self.disks.get(&id).cloned().unwrap_or_default();
        let config = self.configs[&id].clone();
        self.receiving.remove(&id);
        let mut snapshot_config = None;
        match &disk.snapshot {
            Some((_, bytes)) => {
                let applied = decode_snapshot(bytes);
                snapshot_config = snapshot_configuration(&applied);
                self.applied.insert(id, applied);
            }
            None => {
                self.applied.remove(&id);
            }
        }
        self.nodes.insert(
            id,
            Some(Node::new(
                config,
                Restored {
                    hard_state: disk.hard_state,
                    entries: disk.entries,
                    snapshot: disk.snapshot.map(|(meta, _)| meta),
                    snapshot_configuration: snapshot_config,
                },
            )),
        );
    }

    fn status(&mut self) {
        let lines: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, node)| match node {
                None => format!("n{id} crashed"),
                Some(node) => format!(
                    "n{id} {:?} term={} leader={:?} commit={} applied={} last={} vote={:?}",
                    node.role(),
                    node.term(),
                    node.leader_id(),
                    node.commit_index(),
                    node.applied_index(),
                    node.last_index(),
                    node.hard_state().vote
                ),
            })
            .collect();
        for line in lines {
            self.line(line);
        }
    }

    fn run(&mut self, command: &str) {
        let words = words(command);
        let args = &words[1..];
        match words[0].as_str() {
            "cluster" => self.cluster(args),
            "tick" => {
                let mut times = 1;
                let mut ids = Vec::new();
                for arg in args {
                    if let Some(count) = arg.strip_prefix('x') {
                        times = count.parse().expect("tick count");
                    } else if arg == "all" {
                        ids.extend(
                            self.nodes
                                .iter()
                                .filter(|(_, n)| n.is_some())
                                .map(|(id, _)| *id),
                        );
                    } else {
                        ids.push(parse_id(arg));
                    }
                }
                for _ in 0..times {
                    for id in &ids {
                        self.node(*id).tick();
                        self.process(*id, "");
                    }
                }
            }
            "run" => {
                // Rounds of: tick every running node once, then deliver.
                let rounds: usize = args[0].parse().expect("run N");
                for _ in 0..rounds {
                    let ids: Vec<NodeId> = self
                        .nodes
                        .iter()
                        .filter(|(_, n)| n.is_some())
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        self.node(id).tick();
                        self.process(id, "");
                    }
                    self.deliver(false);
                }
            }
            "campaign" => {
                let id = parse_id(&args[0]);
                let mut ticks = 0;
                let campaigns = self.campaigns;
                while self.campaigns == campaigns {
                    ticks += 1;
                    assert!(ticks < 1000, "node {id} never campaigned");
                    self.node(id).tick();
                    self.process(id, "");
                }
                self.line(format!("(after {ticks} ticks)"));
            }
            "deliver" => match args.first().map(String::as_str) {
                None => self.deliver(false),
                Some("once") => self.deliver(true),
                Some(link) => {
                    let (from, to) = parse_link(link);
                    for (delivered, position) in
                        self.link_positions(from, to).into_iter().enumerate()
                    {
                        self.deliver_one(position - delivered);
                    }
                }
            },
            "drop" if args[0] == "all" => {
                for envelope in std::mem::take(&mut self.queue) {
                    self.line(format!("dropped {}", format_envelope(&envelope)));
                }
            }
            "drop" => {
                let (from, to) = parse_link(&args[0]);
                let positions = self.link_positions(from, to);
                let chosen: Vec<usize> = match args.get(1) {
                    Some(n) => vec![positions[n.parse::<usize>().expect("drop N") - 1]],
                    None => positions,
                };
                for (dropped, position) in chosen.into_iter().enumerate() {
                    let envelope = self.queue.remove(position - dropped);
                    self.line(format!("dropped {}", format_envelope(&envelope)));
                }
            }
            "queue" => {
                let lines: Vec<String> = self.queue.iter().map(format_envelope).collect();
                for line in lines {
                    self.line(line);
                }
            }
            "partition" => {
                let groups: Vec<Vec<NodeId>> = command["partition".len()..]
                    .split('|')
                    .map(|group| group.split_whitespace().map(parse_id).collect())
                    .collect();
                self.blocked.clear();
                for (i, a) in groups.iter().enumerate() {
                    for (j, b) in groups.iter().enumerate() {
                        if i != j {
                            for x in a {
                                for y in b {
                                    self.blocked.insert((*x, *y));
                                }
                            }
                        }
                    }
                }
            }
            "heal" => self.blocked.clear(),
            "compact" => {
                let id = parse_id(&args[0]);
                self.compact(id);
                self.process(id, "");
            }
            "propose" => {
                let id = parse_id(&args[0]);
                let result = self.node(id).propose(Bytes::from(args[1].clone()));
                self.line(format!("n{id}: propose -> {result:?}"));
                self.process(id, "");
            }
            "read" => {
                // Several read ids register in one turn (one drain).
                let id = parse_id(&args[0]);
                for read in &args[1..] {
                    let read: u64 = read.parse().expect("read id");
                    let result = self.node(id).read_index(read);
                    self.line(format!("n{id}: read {read} -> {result:?}"));
                }
                self.process(id, "");
            }
            "add" | "promote" | "remove" => {
                let id = parse_id(&args[0]);
                let target = parse_id(&args[1]);
                let change = match words[0].as_str() {
                    "add" => Change::AddLearner {
                        id: target,
                        addresses: addresses_of(target),
                    },
                    "promote" => Change::Promote { id: target },
                    _ => Change::Remove { id: target },
                };
                let result = self.node(id).propose_membership_change(change);
                let shown = match result {
                    Ok(index) => format!("Ok({index})"),
                    Err(error) => format!("Err({error})"),
                };
                self.line(format!("n{id}: {} {target} -> {shown}", words[0]));
                self.process(id, "");
            }
            "config" => {
                let ids: Vec<NodeId> = if args.first().map(String::as_str) == Some("all") {
                    self.nodes.keys().copied().collect()
                } else {
                    args.iter().map(|id| parse_id(id)).collect()
                };
                for id in ids {
                    let line = match self.nodes.get(&id) {
                        Some(Some(node)) => {
                            let index = node.configuration_index();
                            let committed = if index <= node.commit_index() {
                                "committed"
                            } else {
                                "pending"
                            };
                            let removed = node
                                .removed_at()
                                .map_or(String::new(), |at| format!(" removed_at={at}"));
                            format!(
                                "n{id} config {} at {index} ({committed}) voter={}{removed}",
                                node.configuration(),
                                node.is_voter()
                            )
                        }
                        _ => format!("n{id} down"),
                    };
                    self.line(line);
                }
            }
            "transfer" => {
                let id = parse_id(&args[0]);
                let target = args.get(1).map(|t| parse_id(t));
                let result = self.node(id).transfer_leadership(target);
                self.line(format!("n{id}: transfer -> {result:?}"));
                self.process(id, "");
            }
            "crash" => {
                let unsynced = args.iter().any(|arg| arg == "unsynced");
                for id in args.iter().filter(|arg| *arg != "unsynced") {
                    let id = parse_id(id);
                    self.nodes.insert(id, None);
                    if unsynced {
                        let disk = self.disks.entry(id).or_default();
                        disk.hard_state = disk.hard_state_before.clone();
                    }
                }
            }
            "restart" => {
                for id in args {
                    self.restart(parse_id(id));
                }
            }
            "wipe" => {
                let id = parse_id(&args[0]);
                self.nodes.insert(id, None);
                self.disks.insert(id, Disk::default());
                if let Some(config) = self.configs.get_mut(&id) {
                    config.incarnation += 1;
                }
            }
            "status" => self.status(),
            "log" => {
                let id = parse_id(&args[0]);
                let node = self.node(id);
                let snapshot = node.snapshot();
                let entries: Vec<Entry> = (1..=node.last_index())
                    .filter_map(|i| node.entry(i).cloned())
                    .collect();
                let prefix = if snapshot.index > 0 {
                    format!("snapshot {}@{} + ", snapshot.index, snapshot.term)
                } else {
                    String::new()
                };
                self.line(format!("n{id} log: {prefix}[{}]", format_entries(&entries)));
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// Run one script and return the regenerated text.
fn run_script(text: &str) -> String {
    let mut harness = Harness::new();
    let mut regenerated = String::new();
    for line in text.lines() {
        if line.starts_with("  ") {
            continue; // old output
        }
        regenerated.push_str(line);
        regenerated.push('\n');
        let command = line.trim();
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        harness.out.clear();
        harness.run(command);
        regenerated.push_str(&harness.out);
    }
    regenerated
}

#[test]
fn golden_scripts() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/raft");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut paths: Vec<_> = std::fs::read_dir(&directory)
        .expect("tests/scripts/raft exists")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    for path in &paths {
        let stored = std::fs::read_to_string(path).expect("read script");
        let regenerated = run_script(&stored);
        if regenerated == stored {
            continue;
        }
        if update {
            std::fs::write(path, &regenerated).expect("write golden");
            continue;
        }
        let line = stored
            .lines()
            .zip(regenerated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0)
            + 1;
        failures.push(format!("{}: differs from line {line}", path.display()));
    }
    assert!(
        paths.len() >= 10,
        "expected the scenario scripts, found {}",
        paths.len()
    );
    assert!(
        failures.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to rewrite):\n{}",
        failures.join("\n")
    );
}
