//! What Raft nodes say to each other, and what they keep durable.
//!
//! `Envelope` is the unit of the peer wire protocol (bincode, length-prefixed
//! by `net::peer`). Every envelope names its sender's data-dir incarnation so
//! a node that lost its disk is recognised (SPEC §3). `Entry::data` is opaque
//! to Raft; an empty `data` is the leader's no-op.
//!
//! Decoding a hostile envelope never allocates beyond its bounds: the two
//! lists a message carries (`AppendEntries::entries`, `ForwardAnswers::
//! answers`) are decoded by `bounded_list`, which refuses a declared count
//! over its limit before reading an element and reserves at most
//! `DECODE_PREALLOC_ITEMS_MAX` slots up front (the rest grows only with
//! elements actually decoded, each of which consumes payload bytes).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type NodeId = u64;
pub type Term = u64;
pub type Index = u64;

/// One log entry. `data` is the state machine's encoded batch; empty = no-op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts against message and batch limits.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 16
    }
}

/// What a snapshot covers and how big it is: the state machine after
/// applying every entry through `index` (whose term is `term`), stored as
/// `size_bytes` opaque bytes that the executor owns (Raft §7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// Length of the snapshot's byte string, as sent by InstallSnapshot.
    pub size_bytes: u64,
}

/// State that must be durable before any message that depends on it leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    /// Who this node voted for in `term`, if anyone.
    pub vote: Option<NodeId>,
    /// The data-dir incarnation first seen from each member; messages from any
    /// other incarnation of that member are refused.
    pub incarnations: BTreeMap<NodeId, u64>,
}

/// A message with its routing and term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's current term.
    pub term: Term,
    /// The sender's data-dir incarnation.
    pub incarnation: u64,
    pub message: Message,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// PreVote (thesis §9.6): `term` in the envelope is the term the candidate
    /// would campaign in; granting it changes nothing durable.
    PreVote {
        last_log_index: Index,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// `leadership_transfer` is set when campaigning after TimeoutNow, so
    /// followers skip their leader-lease check (thesis §3.10).
    RequestVote {
        last_log_index: Index,
        last_log_term: Term,
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
    },
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        #[serde(deserialize_with = "bounded_entries")]
        entries: Vec<Entry>,
        leader_commit: Index,
    },
    /// On success `match_index` is the last index now known to match the
    /// leader. On failure, `match_index` echoes the rejected `prev_log_index`
    /// (so the leader can ignore a stale rejection) and
    /// `conflict_index`/`conflict_term` are the fast backtracking hint.
    AppendEntriesResponse {
        success: bool,
        match_index: Index,
        conflict_index: Index,
        conflict_term: Option<Term>,
    },
    /// Leader liveness plus a ReadIndex round number (`read_round`): one round
    /// confirms leadership for every read that arrived before it was sent.
    Heartbeat {
        leader_commit: Index,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// Start an election now, ignoring the election timeout (leadership transfer).
    TimeoutNow,
    /// One chunk of the leader's snapshot (Raft §7): bytes
    /// `[offset, offset + data.len())` of the `snapshot.size_bytes` byte
    /// string. Chunks are sent in order, a bounded window at a time.
    InstallSnapshot {
        snapshot: SnapshotMeta,
        offset: u64,
        data: Bytes,
    },
    /// The follower holds the first `next_offset` bytes of snapshot `index`
    /// (a restart from 0 if it lost them); `installed` once the snapshot is
    /// durable and its log and state machine start from it (or it already
    /// had everything through `index` committed).
    InstallSnapshotResponse {
        index: Index,
        next_offset: u64,
        installed: bool,
    },
    // Client traffic between replicas (SPEC §3, `follower_requests =
    // "forward"`): carried on the same links, handled by the replica
    // (`replica::forward`), never by the Raft core. Appended last so the
    // variants above keep their wire numbers.
    /// Follower → leader: client writes to propose, in order (`batch` is a
    /// command batch in the log's encoding; its stamp is ignored). `session`
    /// names the follower process, `id` grows with every batch it sends.
    ForwardCommands {
        session: u64,
        id: u64,
        batch: Bytes,
    },
    /// Leader → follower: the answer to each command of batch `id` of the
    /// follower's `session`, in order, as the protocol bytes the client gets.
    ForwardAnswers {
        session: u64,
        id: u64,
        #[serde(deserialize_with = "bounded_answers")]
        answers: Vec<Bytes>,
    },
    /// Follower → leader: a ReadIndex (thesis §6.4) for the follower's
    /// reads of one turn.
    ReadIndexRequest {
        session: u64,
        id: u64,
    },
    /// Leader → follower: reads `id` of `session` may be answered once the
    /// follower has applied through `index` (leadership was confirmed after
    /// the request arrived); `None` if this node could not confirm it.
    ReadIndexResponse {
        session: u64,
        id: u64,
        index: Option<Index>,
    },
}

impl Message {
    /// Client traffic between replicas, which the Raft core never sees.
    pub fn is_client_traffic(&self) -> bool {
        matches!(
            self,
            Message::ForwardCommands { .. }
                | Message::ForwardAnswers { .. }
                | Message::ReadIndexRequest { .. }
                | Message::ReadIndexResponse { .. }
        )
    }
}

/// Slots a decoded list reserves before its elements arrive.
const DECODE_PREALLOC_ITEMS_MAX: usize = 256;

fn bounded_entries<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Entry>, D::Error> {
    bounded_list(deserializer, crate::limits::PEER_APPEND_ENTRIES_MAX)
}

fn bounded_answers<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Bytes>, D::Error> {
    bounded_list(deserializer, crate::limits::PEER_FORWARD_COMMANDS_MAX)
}

/// A sequence of at most `max_items` elements (a larger declared count is
/// an error before any element is read).
fn bounded_list<'de, D, T>(deserializer: D, max_items: usize) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T> {
        max_items: usize,
        element: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(formatter, "a list of at most {} items", self.max_items)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let declared = seq.size_hint().unwrap_or(0);
            if declared > self.max_items {
                return Err(serde::de::Error::custom(format!(
                    "a list of {declared} items exceeds the limit of {}",
                    self.max_items
                )));
            }
            let mut items = Vec::with_capacity(declared.min(DECODE_PREALLOC_ITEMS_MAX));
            while let Some(item) = seq.next_element()? {
                if items.len() == self.max_items {
                    return Err(serde::de::Error::custom("too many items"));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    deserializer.deserialize_seq(Bounded {
        max_items,
        element: std::marker::PhantomData,
    })
}
