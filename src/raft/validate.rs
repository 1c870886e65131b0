//! Checks every peer message before it reaches the core, in release builds.
//!
//! Owns: `Node::check_message`, the one gate between the network and the
//! Raft state. A message passes only if its term is at most `PEER_TERM_GAP_MAX` above ours, and its own fields
//! are consistent: entry runs contiguous with non-decreasing terms never
//! above the message's, counts and sizes within `limits`, snapshot chunk
//! offsets and lengths inside the snapshot, read rounds not ahead of this
//! leader's; and an answer (votes, acknowledgements) or a request to a
//! leader (forwarded commands, ReadIndex) only from a member of some
//! configuration this node holds (the one in force, one earlier in the
//! log, or cluster.toml's before the log has any; a learner being added is
//! in the configuration in force once its entry is in the log; a leader
//! also hears the members it removed and still tells so). Requests from
//! leaders and candidates are taken from anyone who passed the handshake
//! (thesis §4.1: a lagging node or one waiting to be added does not know
//! the newest members yet). Only properties no legal message can break are checked here
//! (a stale answer, e.g. a match index past a since-truncated log end, is
//! legal and left to the handlers, which ignore it), so the peer layer can
//! close the link of a message that fails, with one log line.
//!
//! Invariants: `check_message` changes nothing; `Node::step` calls it first
//! and refuses what fails (`StepError::Malformed`) before any state moves.

use super::log::is_well_formed;
use super::message::{Envelope, Message, NodeId};
use super::node::{Node, Role};
use crate::limits;

impl Node {
    /// Whether `from` is a member of some configuration this node holds,
    /// or a member this leader removed and still tells so.
    fn knows_member(&self, from: NodeId) -> bool {
        let retiring = self
            .leader
            .as_ref()
            .is_some_and(|leader| leader.progress.contains_key(&from));
        retiring
            || self
                .configurations
                .all()
                .any(|(_, configuration)| configuration.contains(from))
    }

    /// Whether `envelope` may be handed to `step` (see the module doc).
    pub fn check_message(&self, envelope: &Envelope) -> Result<(), String> {
        let from = envelope.from;
        if from == 0 || from == self.config.id {
            return Err(format!("sender id {from} is not a peer's"));
        }
        if envelope.to != self.config.id {
            return Err(format!("addressed to node {}", envelope.to));
        }
        // Leaders and candidates may be members this node has not heard of
        // yet (a lagging log, or one waiting to be added: thesis §4.1, a
        // server processes their requests). What only a member this node
        // counts can send is an answer to it or a request to its leader.
        let answer_or_request_to_leader = matches!(
            envelope.message,
            Message::PreVoteResponse { .. }
                | Message::RequestVoteResponse { .. }
                | Message::AppendEntriesResponse { .. }
                | Message::HeartbeatResponse { .. }
                | Message::InstallSnapshotResponse { .. }
                | Message::ForwardCommands { .. }
                | Message::ReadIndexRequest { .. }
        );
        if answer_or_request_to_leader && !self.knows_member(from) {
            return Err(format!(
                "node {from} is a member of no configuration this node holds"
            ));
        }
        let term = envelope.term;
        let term_max = self
            .hard_state
            .term
            .saturating_add(limits::PEER_TERM_GAP_MAX);
        if term > term_max {
            return Err(format!(
                "term {term} is more than {} above this node's {}",
                limits::PEER_TERM_GAP_MAX,
                self.hard_state.term
            ));
        }
        match &envelope.message {
            Message::PreVote { last_log_term, .. } | Message::RequestVote { last_log_term, .. }
                if *last_log_term > term =>
            {
                Err(format!(
                    "a candidate's last log term {last_log_term} is above its term {term}"
                ))
            }
            Message::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                ..
            } => {
                if entries.len() > limits::PEER_APPEND_ENTRIES_MAX {
                    return Err(format!(
                        "{} entries exceed the limit of {}",
                        entries.len(),
                        limits::PEER_APPEND_ENTRIES_MAX
                    ));
                }
                if *prev_log_term > term
                    || !is_well_formed(*prev_log_index, *prev_log_term, entries, term)
                {
                    return Err(format!(
                        "entries after ({prev_log_index}, {prev_log_term}) are not a contiguous run \
                         with terms in [{prev_log_term}, {term}]"
                    ));
                }
                Ok(())
            }
            Message::InstallSnapshot {
                snapshot,
                offset,
                data,
            } => {
                let end = offset.checked_add(data.len() as u64);
                if snapshot.index == 0
                    || snapshot.term == 0
                    || snapshot.term > term
                    || snapshot.size_bytes == 0
                    || snapshot.size_bytes > limits::SNAPSHOT_BYTES_MAX
                    || data.len() as u64 > limits::SNAPSHOT_CHUNK_BYTES_MAX
                    || end.is_none_or(|end| end > snapshot.size_bytes)
                {
                    return Err(format!(
                        "snapshot chunk [{offset}, +{}) of snapshot {} (term {}, {} bytes) is \
                         outside its bounds",
                        data.len(),
                        snapshot.index,
                        snapshot.term,
                        snapshot.size_bytes
                    ));
                }
                Ok(())
            }
            Message::InstallSnapshotResponse { next_offset, .. }
                if *next_offset > limits::SNAPSHOT_BYTES_MAX =>
            {
                Err(format!(
                    "snapshot offset {next_offset} is past the largest snapshot"
                ))
            }
            Message::HeartbeatResponse { read_round } => {
                let ahead = self.role == Role::Leader
                    && term == self.hard_state.term
                    && self
                        .leader
                        .as_ref()
                        .is_some_and(|leader| *read_round > leader.read_round);
                if ahead {
                    return Err(format!("read round {read_round} was never sent"));
                }
                Ok(())
            }
            Message::ForwardAnswers { answers, .. }
                if answers.len() > limits::PEER_FORWARD_COMMANDS_MAX =>
            {
                Err(format!(
                    "{} forwarded answers exceed the limit",
                    answers.len()
                ))
            }
            _ => Ok(()),
        }
    }
}
