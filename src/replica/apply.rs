//! Committed entries → the file map → the answers waiting on them; and the
//! fate of every command that waits.
//!
//! Each entry this node proposed as leader has a `Waiting` record, keyed by
//! its (index, term): one client per command (in command order) and the
//! reads anchored inside it. Applying the
//! entry answers each command with its outcome and each anchored read with
//! the state at its offset (released at once if it needs no ReadIndex
//! round, or once its round confirmed). Reads answered at the applied index
//! wait in a `ReadGroup` for their round.
//!
//! Fates (SPEC §3), decided only when the entry at its index is applied
//! here: the same entry → the real answer; another entry at its index →
//! `ERR_REDIRECT` (it can never be applied now: State Machine Safety). A
//! suffix replaced in this node's log decides nothing: another node may
//! still hold the entry and become leader with it (simulator seed 3083
//! found a write answered `ERR_REDIRECT` and then applied). A snapshot
//! covering it → `ERR_INTERNAL` (applied or not, this node cannot tell);
//! no verdict within `COMMAND_TIMEOUT_MS` → `ERR_INTERNAL`, but the entry
//! stays as a floor for its connections' later reads until its fate is
//! known (`expired`). A read round that fails
//! (leadership lost) → `ERR_REDIRECT`; one that times out → `ERR_INTERNAL`.
//!
//! Reads judge whether a file is alive at the cluster time of the applied
//! state they see (so a file never comes back after a leader change) and
//! show the seconds left on the leader's clock.

use super::watch::command_name;
use super::{ClientRef, Now, Replica};
use crate::error::{Error, Result};
use crate::fsm::command::decode_batch_ref;
use crate::fsm::{Fsm, Outcome};
use crate::limits;
use crate::protocol::{encode_reply, Reply};
use crate::raft::{Entry, Index, NodeId};
use bytes::{Bytes, BytesMut};
use std::time::Duration;

/// A read answered from the state at position `offset` inside an entry.
pub(super) struct AnchoredRead {
    pub offset: usize,
    pub client: ClientRef,
    pub name: Bytes,
    /// A watch's VERSION: the state answers it only if the file's version
    /// differs, else the watch arms there (`watch`).
    pub watched_version: Option<u64>,
    /// The ReadIndex round that must also confirm leadership (reads
    /// anchored in an entry proposed before they arrived), if any.
    pub round: Option<u64>,
    /// `COMMAND_TIMEOUT_MS` after it arrived: it is then answered
    /// `ERR_INTERNAL` unless its round is still pending (it then expires
    /// with its round).
    pub deadline_us: u64,
}

/// One entry this node proposed and whose commands wait for their fate.
pub(super) struct Waiting {
    /// The entry's cluster-time stamp.
    pub stamp_ms: u64,
    /// One client per command, in command order (empty once expired).
    pub clients: Vec<ClientRef>,
    /// Sorted by offset.
    pub reads: Vec<AnchoredRead>,
    pub deadline_us: u64,
    /// When it was proposed (for the apply latency metric).
    pub proposed_us: u64,
    /// Its commands were answered `ERR_INTERNAL`; kept only as a floor.
    pub expired: bool,
}

/// Reads waiting for one ReadIndex round: this node's, and followers'
/// requests (`forward`), answered with the round's index.
pub(super) struct ReadGroup {
    pub id: u64,
    pub answers: Vec<(ClientRef, Bytes)>,
    pub followers: Vec<super::forward::ReadRequest>,
    pub deadline_us: u64,
}

impl Replica {
    pub(super) fn apply(&mut self, entry: &Entry) -> Result<()> {
        debug_assert_eq!(
            entry.index,
            self.applied_index + 1,
            "entries apply in order, once"
        );
        self.applied_index = entry.index;
        self.applied_term = entry.term;
        self.note_applied_bytes(entry.size_bytes());
        // Every entry waiting at this index (or, never expected, below it)
        // now has its fate: this one is applied, any other never will be.
        let later = self.waiting.split_off(&(entry.index + 1, 0));
        let decided = std::mem::replace(&mut self.waiting, later);
        let mut mine = None;
        for ((index, term), waiting) in decided {
            if (index, term) == (entry.index, entry.term) {
                mine = Some(waiting);
            } else if index == entry.index {
                self.fail_waiting(waiting, self.raft.leader_id());
            } else {
                self.answer_unknown_fate(waiting);
            }
        }
        if let Some(waiting) = &mine {
            let latency_us = self.now.monotonic_us.saturating_sub(waiting.proposed_us);
            self.metrics
                .apply_latency_seconds
                .record_duration(Duration::from_micros(latency_us));
        }
        if crate::raft::membership::is_configuration_entry(&entry.data) {
            // Not a command: kept beside the map so snapshots record it.
            self.fsm.set_membership(entry.data.clone());
            return self.answer_reads_of_empty_entry(mine);
        }
        if entry.data.is_empty() {
            return self.answer_reads_of_empty_entry(mine);
        }
        let batch = decode_batch_ref(&entry.data).map_err(|e| {
            Error::Corrupt(format!(
                "committed entry {} does not decode: {e:?}",
                entry.index
            ))
        })?;
        self.max_stamp_ms = self.max_stamp_ms.max(batch.stamp_ms);
        let time_ms = self.fsm.begin_batch(batch.stamp_ms);
        self.wake_expired_watches(time_ms);
        let display_ms = self.cluster_time_ms(self.now).max(time_ms);
        let (clients, reads) = match mine {
            Some(waiting) => (waiting.clients, waiting.reads),
            None => (Vec::new(), Vec::new()),
        };
        let mut reads = reads.into_iter().peekable();
        for (offset, command) in batch.commands.into_iter().enumerate() {
            while let Some(read) = reads.next_if(|r| r.offset <= offset) {
                self.answer_anchored(read, time_ms, display_ms);
            }
            let name = command_name(&command);
            let outcome = self.fsm.apply_command(command, time_ms);
            if matches!(outcome, Outcome::Written { .. } | Outcome::Deleted) {
                self.wake_watches(name);
            }
            if let Some(&client) = clients.get(offset) {
                let answer = cut_answer(&mut self.reply_buffer, |out| encode_outcome(outcome, out));
                self.replies.push((client, answer));
            }
        }
        for read in reads {
            self.answer_anchored(read, time_ms, display_ms);
        }
        Ok(())
    }

    /// An anchored read (or watch check) meets its position: answer it
    /// there, unless a watch arms instead.
    fn answer_anchored(&mut self, read: AnchoredRead, live_ms: u64, display_ms: u64) {
        if let Some(answer) = self.answer_read(&read, live_ms, display_ms) {
            self.release_read(read, answer);
        }
    }

    /// `answer_at` for an anchored read.
    pub(super) fn answer_read(
        &mut self,
        read: &AnchoredRead,
        live_ms: u64,
        display_ms: u64,
    ) -> Option<Bytes> {
        self.answer_at(
            read.client,
            &read.name,
            read.watched_version,
            live_ms,
            display_ms,
        )
    }

    /// A no-op entry carries no commands; reads anchored in one (never
    /// placed there, but cheap to honour) see the state as it is.
    fn answer_reads_of_empty_entry(&mut self, mine: Option<Waiting>) -> Result<()> {
        if let Some(waiting) = mine {
            let time_ms = self.fsm.cluster_time_ms();
            let display_ms = self.cluster_time_ms(self.now).max(time_ms);
            for read in waiting.reads {
                self.answer_anchored(read, time_ms, display_ms);
            }
        }
        Ok(())
    }

    /// An anchored read's answer is computed: release it now, or park it
    /// with its round until the round confirms leadership.
    fn release_read(&mut self, read: AnchoredRead, answer: Bytes) {
        let Some(round) = read.round.filter(|&round| round > self.read_confirmed_id) else {
            self.replies.push((read.client, answer));
            return;
        };
        // Not found: its round already failed or timed out, and answered it.
        if let Some(group) = self.read_groups.iter_mut().find(|group| group.id == round) {
            group.answers.push((read.client, answer));
        }
    }

    /// The core confirmed leadership for rounds up to `id`.
    pub(super) fn read_confirmed(&mut self, id: u64, index: Index) {
        self.read_confirmed_id = self.read_confirmed_id.max(id);
        while self.read_groups.front().is_some_and(|group| group.id <= id) {
            if let Some(group) = self.read_groups.pop_front() {
                self.replies.extend(group.answers);
                self.answer_read_requests(group.followers, Some(index));
            }
        }
    }

    /// The round `id` cannot confirm leadership here any more.
    pub(super) fn read_failed(&mut self, id: u64) {
        let leader = self.raft.leader_id();
        if let Some(position) = self.read_groups.iter().position(|g| g.id == id) {
            if let Some(group) = self.read_groups.remove(position) {
                for (client, _) in group.answers {
                    self.answer_redirect(client, leader);
                }
                self.answer_read_requests(group.followers, None);
            }
        }
        self.fail_anchored_reads(id, leader);
    }

    /// Reads anchored in entries that wait for round `id`, which failed.
    pub(super) fn fail_anchored_reads(&mut self, id: u64, leader: Option<NodeId>) {
        let mut failed = Vec::new();
        for waiting in self.waiting.values_mut() {
            waiting.reads.retain(|read| {
                let fails = read.round == Some(id);
                if fails {
                    failed.push(read.client);
                }
                !fails
            });
        }
        for client in failed {
            self.answer_redirect(client, leader);
        }
    }

    /// Another entry was applied at this one's index: it never will be.
    fn fail_waiting(&mut self, waiting: Waiting, leader: Option<NodeId>) {
        for client in waiting.clients {
            self.answer_redirect(client, leader);
        }
        for read in waiting.reads {
            self.answer_redirect(read.client, leader);
        }
    }

    /// Applied or not, this node cannot tell (SPEC §3: ERR_INTERNAL).
    pub(super) fn answer_unknown_fate(&mut self, waiting: Waiting) {
        for client in waiting.clients {
            self.answer(client, Reply::Internal);
        }
        for read in waiting.reads {
            self.answer(read.client, Reply::Internal);
        }
    }

    /// Commands, anchored reads and read rounds past their deadline get
    /// `ERR_INTERNAL`. An anchored read has its own deadline: it may sit in
    /// an entry that expired long ago (an expired entry stays a floor), and
    /// once its round has confirmed nothing else would ever answer it while
    /// no entry reaches that index (sim seed 138: a read anchored in a
    /// truncated entry waited past the liveness bound).
    pub(super) fn expire_waiting(&mut self, now: Now) {
        let mut expired = Vec::new();
        let confirmed_id = self.read_confirmed_id;
        for waiting in self.waiting.values_mut() {
            if !waiting.expired {
                // Not due yet: its reads wait with it (they arrived with or
                // after its commands; one held while no leader was known is
                // due with the entry, as before). Nothing scanned per tick.
                if waiting.deadline_us > now.monotonic_us {
                    continue;
                }
                waiting.expired = true;
                expired.append(&mut waiting.clients);
            }
            // Reads whose round is pending expire with their round.
            waiting.reads.retain(|read| {
                let round_pending = read.round.is_some_and(|round| round > confirmed_id);
                let expires = read.deadline_us <= now.monotonic_us && !round_pending;
                if expires {
                    expired.push(read.client);
                }
                !expires
            });
        }
        for client in expired {
            self.answer(client, Reply::Internal);
        }
        while self
            .read_groups
            .front()
            .is_some_and(|g| g.deadline_us <= now.monotonic_us)
        {
            if let Some(group) = self.read_groups.pop_front() {
                for (client, _) in group.answers {
                    self.answer(client, Reply::Internal);
                }
                self.answer_read_requests(group.followers, None);
                let mut anchored = Vec::new();
                for waiting in self.waiting.values_mut() {
                    waiting.reads.retain(|read| {
                        let expires = read.round == Some(group.id);
                        if expires {
                            anchored.push(read.client);
                        }
                        !expires
                    });
                }
                for client in anchored {
                    self.answer(client, Reply::Internal);
                }
            }
        }
    }

    /// The encoded answer to `read NAME` from the state applied so far.
    pub(super) fn render_read(&mut self, name: &[u8], live_ms: u64, display_ms: u64) -> Bytes {
        cut_answer(&mut self.reply_buffer, |out| {
            encode_read(&self.fsm, name, live_ms, display_ms, out)
        })
    }
}

/// Encode the answer to `read NAME`. Whether the file is alive is judged at
/// `live_ms`, the cluster time of the applied state the read sees (so a file
/// never comes back: a later leader starts from at least that time); the
/// seconds left are shown against `display_ms`, the leader's cluster time
/// now (at least 1 while the file is alive: it may expire late, never early).
fn encode_read(fsm: &Fsm, name: &[u8], live_ms: u64, display_ms: u64, out: &mut BytesMut) {
    match fsm.read(name, live_ms) {
        Some(file) => {
            let expires_in_s = match file.deadline_ms {
                Some(deadline_ms) => deadline_ms
                    .saturating_sub(display_ms)
                    .div_ceil(1_000)
                    .max(1),
                None => 0,
            };
            encode_reply(
                &Reply::Contents {
                    version: file.version,
                    content: file.content,
                    expires_in_s,
                },
                out,
            )
        }
        None => encode_reply(&Reply::NotFound, out),
    }
}

/// Encodes one answer into `buffer` and cuts it off as its own `Bytes`.
/// Answers share `REPLY_BUFFER_CHUNK_BYTES` blocks (one allocation for many
/// small answers, where an empty buffer costs two per answer); a large one
/// grows the block itself.
pub(super) fn cut_answer(buffer: &mut BytesMut, encode: impl FnOnce(&mut BytesMut)) -> Bytes {
    if buffer.capacity() < limits::READ_REPLY_HEADER_BYTES_MAX {
        buffer.reserve(limits::REPLY_BUFFER_CHUNK_BYTES);
    }
    encode(buffer);
    buffer.split().freeze()
}

fn encode_outcome(outcome: Outcome, out: &mut BytesMut) {
    let reply = match outcome {
        Outcome::Written { version } => Reply::Written { version },
        Outcome::Deleted => Reply::Deleted,
        Outcome::NotFound => Reply::NotFound,
        Outcome::VersionMismatch { current } => Reply::VersionMismatch { current },
    };
    encode_reply(&reply, out);
}
