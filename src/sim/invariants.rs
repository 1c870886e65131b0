//! The safety properties the simulator checks after every step, one function
//! each, named after the Raft paper (Ongaro & Ousterhout 2014, Figure 3).
//!
//! Each function takes the observations it needs (nothing else) and returns
//! `Err(description)` on a violation, so tests can feed it fabricated
//! observations and watch it fail. The simulator keeps the observation state
//! (`Observations`) and calls these at the right moments; they never look at
//! a node's private state, only at what it emitted (writes, sends) and its
//! public accessors (the Raft core's log, commit index and hard state).
//! Left out: liveness (the simulator's liveness phase checks that separately).

use crate::raft::{Entry, HardState, Index, NodeId, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// An entry some node has applied, hence committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedEntry {
    pub term: Term,
    pub data: Bytes,
    /// The applying node's term when the entry was first applied. The entry
    /// was committed in this term or an earlier one: a node only learns a
    /// commit index from the leader of its current term (or is that leader).
    pub commit_term: Term,
    pub first_applied_by: NodeId,
}

/// What a log position held when first seen in any log.
#[derive(Clone, Debug)]
pub struct PositionRecord {
    pub data: Bytes,
    /// Term of the entry just before it (0 at index 1).
    pub previous_term: Term,
    pub node: NodeId,
}

/// One node's log as the invariants see it: a snapshot through
/// `snapshot_index` (opaque: a file map, not entries; its last entry has
/// `snapshot_term`), then the entries after it.
#[derive(Clone, Copy, Debug)]
pub struct LogView<'a> {
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    pub entries: &'a [Entry],
}

impl<'a> LogView<'a> {
    /// A log without a snapshot.
    pub fn plain(entries: &'a [Entry]) -> LogView<'a> {
        LogView {
            snapshot_index: 0,
            snapshot_term: 0,
            entries,
        }
    }

    /// What the log holds at `index`: the entry's term when known (always
    /// after the snapshot, only at its last index inside it) and its data
    /// (`None` inside the snapshot).
    pub fn get(&self, index: Index) -> Option<(Option<Term>, Option<&'a Bytes>)> {
        if index == 0 {
            return None;
        }
        if index <= self.snapshot_index {
            let term = (index == self.snapshot_index).then_some(self.snapshot_term);
            return Some((term, None));
        }
        self.entries
            .get((index - self.snapshot_index - 1) as usize)
            .map(|entry| (Some(entry.term), Some(&entry.data)))
    }
}

/// Observation state carried across a schedule.
#[derive(Debug, Default)]
pub struct Observations {
    /// Every `(term, leader)` ever observed.
    pub leaders: BTreeMap<Term, NodeId>,
    /// Every `(index, term)` ever written to any log.
    pub positions: HashMap<(Index, Term), PositionRecord>,
    /// Every committed index, as first applied.
    pub committed: BTreeMap<Index, CommittedEntry>,
}

/// Election Safety (§5.2): at most one leader can be elected in a given term.
/// `leaders` holds every `(term, leader)` observed so far; returns whether
/// this pair is new (a fresh election to check Leader Completeness against).
pub fn election_safety(
    leaders: &mut BTreeMap<Term, NodeId>,
    term: Term,
    node: NodeId,
) -> Result<bool, String> {
    match leaders.get(&term) {
        Some(&leader) if leader == node => Ok(false),
        Some(&leader) => Err(format!(
            "Election Safety (§5.2): term {term} has two leaders, node {leader} and node {node}"
        )),
        None => {
            leaders.insert(term, node);
            Ok(true)
        }
    }
}

/// A server votes for at most one candidate in a given term (§5.2), and its
/// durable term never goes back (Figure 2: currentTerm, votedFor are
/// persistent): checked on every hard state a node asks to persist.
pub fn vote_once_per_term(
    node: NodeId,
    previous: &HardState,
    next: &HardState,
) -> Result<(), String> {
    if next.term < previous.term {
        return Err(format!(
            "durable term went back on node {node}: {} -> {}",
            previous.term, next.term
        ));
    }
    if next.term == previous.term && previous.vote.is_some() && next.vote != previous.vote {
        return Err(format!(
            "vote once per term (§5.2): node {node} changed its vote in term {} from {:?} to {:?}",
            next.term, previous.vote, next.vote
        ));
    }
    Ok(())
}

/// Log Matching (§5.3): if two logs contain an entry with the same index and
/// term, the logs are identical in all entries up through that index.
///
/// Checked incrementally over all time: `(index, term)` names one entry
/// forever (a leader creates at most one entry per index in its term) with
/// one fixed predecessor term; by induction on the index that gives Log
/// Matching for every pair of logs at every moment. `log` is one node's whole
/// log; positions from `from_index` on were just written.
pub fn log_matching(
    positions: &mut HashMap<(Index, Term), PositionRecord>,
    node: NodeId,
    log: &[Entry],
    from_index: Index,
) -> Result<(), String> {
    log_matching_after(positions, node, (0, 0), log, from_index)
}

/// `log_matching` for a log whose `entries` follow a snapshot through
/// `snapshot = (index, term)` (the positions it covers were checked when
/// they were written; a snapshot holds only committed entries).
pub fn log_matching_after(
    positions: &mut HashMap<(Index, Term), PositionRecord>,
    node: NodeId,
    snapshot: (Index, Term),
    entries: &[Entry],
    from_index: Index,
) -> Result<(), String> {
    let (snapshot_index, snapshot_term) = snapshot;
    let start = from_index.max(snapshot_index + 1);
    for index in start..=snapshot_index + entries.len() as Index {
        let position = (index - snapshot_index - 1) as usize;
        let entry = &entries[position];
        if entry.index != index {
            return Err(format!(
                "node {node}'s log holds index {} at position {index}",
                entry.index
            ));
        }
        let previous_term = if position == 0 {
            snapshot_term
        } else {
            entries[position - 1].term
        };
        if previous_term > entry.term {
            return Err(format!(
                "node {node}'s log terms decrease: index {} has term {previous_term}, index {index} term {}",
                index - 1,
                entry.term
            ));
        }
        match positions.get(&(index, entry.term)) {
            Some(record) if record.data != entry.data || record.previous_term != previous_term => {
                return Err(format!(
                    "Log Matching (§5.3): index {index} term {} is {} after term {previous_term} on node {node} \
                     but {} after term {} on node {}",
                    entry.term,
                    show(&entry.data),
                    show(&record.data),
                    record.previous_term,
                    record.node
                ));
            }
            Some(_) => {}
            None => {
                positions.insert(
                    (index, entry.term),
                    PositionRecord {
                        data: entry.data.clone(),
                        previous_term,
                        node,
                    },
                );
            }
        }
    }
    Ok(())
}

/// Leader Completeness (§5.4): a committed entry is present in the log of
/// every leader of a later term. `leader_log` is the leader's log; only
/// entries whose `commit_term <= leader_term` are owed (an entry first applied
/// in the leader's own term was committed by that very leader).
pub fn leader_completeness(
    committed: &BTreeMap<Index, CommittedEntry>,
    leader: NodeId,
    leader_term: Term,
    leader_log: &[Entry],
) -> Result<(), String> {
    leader_completeness_view(committed, leader, leader_term, LogView::plain(leader_log))
}

/// `leader_completeness` for a leader whose log may start after a snapshot
/// (an entry the snapshot covers is taken as held, with the snapshot's
/// term at its last index; the file maps' agreement is checked apart).
pub fn leader_completeness_view(
    committed: &BTreeMap<Index, CommittedEntry>,
    leader: NodeId,
    leader_term: Term,
    leader_log: LogView<'_>,
) -> Result<(), String> {
    for (&index, entry) in committed {
        leader_has_committed_entry(index, entry, leader, leader_term, leader_log)?;
    }
    Ok(())
}

/// The one-entry form of `leader_completeness`, for a newly committed entry.
pub fn leader_has_committed_entry(
    index: Index,
    entry: &CommittedEntry,
    leader: NodeId,
    leader_term: Term,
    leader_log: LogView<'_>,
) -> Result<(), String> {
    if entry.commit_term > leader_term {
        return Ok(());
    }
    let held = leader_log.get(index);
    match held {
        Some((term, data))
            if term.is_none_or(|term| term == entry.term)
                && data.is_none_or(|data| *data == entry.data) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "Leader Completeness (§5.4): index {index} (term {}, {}) was committed by term {} \
             but node {leader}, leader of term {leader_term}, holds {}",
            entry.term,
            show(&entry.data),
            entry.commit_term,
            held.map_or("nothing".to_string(), |(term, data)| format!(
                "(term {}, {})",
                term.map_or("?".to_string(), |term| term.to_string()),
                data.map_or("in a snapshot".to_string(), show)
            ))
        )),
    }
}

/// State Machine Safety (§5.4.3): if a server has applied a log entry at a
/// given index, no other server ever applies a different entry at that index.
/// Also: each node applies every index exactly once, in order
/// (`applied_count` is how many it has applied in this lifetime). Returns
/// whether the index is newly committed.
pub fn state_machine_safety(
    committed: &mut BTreeMap<Index, CommittedEntry>,
    node: NodeId,
    node_term: Term,
    applied_count: Index,
    entry: &Entry,
) -> Result<bool, String> {
    if entry.index != applied_count + 1 {
        return Err(format!(
            "node {node} applied index {} after {applied_count}: entries must be applied once, in order",
            entry.index
        ));
    }
    match committed.get(&entry.index) {
        Some(first) if first.term != entry.term || first.data != entry.data => Err(format!(
            "State Machine Safety: node {node} applied index {} as (term {}, {}) but node {} applied (term {}, {})",
            entry.index,
            entry.term,
            show(&entry.data),
            first.first_applied_by,
            first.term,
            show(&first.data)
        )),
        Some(_) => Ok(false),
        None => {
            committed.insert(
                entry.index,
                CommittedEntry {
                    term: entry.term,
                    data: entry.data.clone(),
                    commit_term: node_term,
                    first_applied_by: node,
                },
            );
            Ok(true)
        }
    }
}

/// What a node's disk holds durably, as far as a promise is concerned.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub hard_state: HardState,
    /// The log is durable through this index (its WAL, or a snapshot file).
    pub covered_index: Index,
}

/// A message that promises durable state leaves only once that state is
/// durable (Raft Figure 2: persist before responding; thesis §10.2.1 lets
/// only a leader's own appends go first): a granted vote needs the vote on
/// disk, an append acknowledgement the log through its match index, an
/// installed snapshot the snapshot.
pub fn promise_is_durable(
    node: NodeId,
    envelope: &crate::raft::Envelope,
    durable: &Durable,
) -> Result<(), String> {
    use crate::raft::Message;
    let broken = match &envelope.message {
        Message::RequestVoteResponse { granted: true } => {
            durable.hard_state.term < envelope.term
                || (durable.hard_state.term == envelope.term
                    && durable.hard_state.vote != Some(envelope.to))
        }
        Message::AppendEntriesResponse {
            success: true,
            match_index,
            ..
        } => durable.covered_index < *match_index,
        Message::InstallSnapshotResponse {
            installed: true,
            index,
            ..
        } => durable.covered_index < *index,
        _ => false,
    };
    if broken {
        return Err(format!(
            "durability: node {node} sent {:?} to {} in term {} while its disk held only {durable:?}",
            envelope.message, envelope.to, envelope.term
        ));
    }
    Ok(())
}

/// Replicas agree on the file map at the same applied index (the state
/// machine is deterministic and applies the same entries): `digests` holds
/// the first digest seen per applied index.
pub fn replicas_agree(
    digests: &mut HashMap<Index, (u64, NodeId)>,
    node: NodeId,
    applied_index: Index,
    digest: u64,
) -> Result<(), String> {
    match digests.get(&applied_index) {
        Some(&(first, first_node)) if first != digest => Err(format!(
            "State Machine Safety: node {node}'s file map at applied index {applied_index} has \
             digest {digest:016x}, node {first_node}'s had {first:016x}"
        )),
        Some(_) => Ok(()),
        None => {
            digests.insert(applied_index, (digest, node));
            Ok(())
        }
    }
}

/// The commit rule across configurations (Raft §5.3-5.4.2, thesis §4.2):
/// when leader `leader` of `term` commits index `index`, the entry there is
/// durable on a majority of the voters of the configuration in force on
/// that leader. `voters` are that configuration's voters and `holders` the
/// nodes whose disks durably hold the entry (or a snapshot covering it).
/// With one voter changed per configuration this is what makes every later
/// leader (elected by a majority of its own configuration, one change away)
/// hold the entry.
pub fn commit_has_majority(
    leader: NodeId,
    term: Term,
    index: Index,
    voters: &[NodeId],
    holders: &[NodeId],
) -> Result<(), String> {
    let holding: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|voter| holders.contains(voter))
        .collect();
    if 2 * holding.len() > voters.len() {
        return Ok(());
    }
    Err(format!(
        "commit rule: node {leader}, leader of term {term}, committed index {index} but only \
         {holding:?} of the voters {voters:?} in force hold it durably"
    ))
}

/// A node's commit index never decreases during one lifetime (it restarts
/// from what it relearns after a crash).
pub fn commit_index_monotonic(node: NodeId, previous: Index, current: Index) -> Result<(), String> {
    if current < previous {
        return Err(format!(
            "node {node}'s commit index went back from {previous} to {current}"
        ));
    }
    Ok(())
}

/// Entry data for a message: the first bytes, lossy UTF-8 (`""` is a no-op).
pub fn show(data: &Bytes) -> String {
    const SHOWN_BYTES_MAX: usize = 24;
    let shown = String::from_utf8_lossy(&data[..data.len().min(SHOWN_BYTES_MAX)]).into_owned();
    if data.len() > SHOWN_BYTES_MAX {
        format!("{shown:?}+{}b", data.len() - SHOWN_BYTES_MAX)
    } else {
        format!("{shown:?}")
    }
}
