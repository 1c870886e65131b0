//! Snapshots in the simulator: taking them at random points, streaming them
//! in chunks, receiving and installing them, as `raft::action` demands.
//!
//! The state machine is the applied sequence of entry data; a snapshot is
//! that sequence through its index, serialised (`disk::SimSnapshot`). Taking
//! one: once a node has applied `compact_every_entries` (plus jitter) past
//! its last snapshot, the executor syncs the disk, snapshots the applied
//! sequence at a random applied index, calls `Node::compact` and stores the
//! snapshot durably. Sending: a `SendSnapshotChunk` is filled from the
//! node's snapshot bytes (an older snapshot's bytes are a prefix of the
//! newer's, so a transfer outlives a compaction). Receiving: chunks collect
//! in memory (lost on a crash, so a restarted follower answers with a
//! smaller offset); overlapping bytes must agree; once complete the bytes
//! must decode, hold exactly the committed sequence, and be durable before
//! `Node::install_snapshot`; if installed, the state machine is replaced.
//! `snapshot_padding_bytes` pads every serialised snapshot with bulk (shared,
//! never copied) so that transfers span several chunks: windows, resends,
//! out-of-order chunks and restarts mid-transfer.
//! Left out: a receiver keeping partial transfers across a crash (the
//! replica may; the simulator's receiver starts over).

use super::disk::{SimSnapshot, PADDING_BYTE};
use super::{invariants, Sim};
use crate::limits::SNAPSHOT_CHUNK_BYTES_MAX;
use crate::raft::{Envelope, Index, Installed, Message, NodeId, SnapshotMeta};
use bytes::Bytes;
use rand::Rng;

/// An InstallSnapshot being received: the first `received` bytes of
/// `snapshot` from `from`; of them, those past the padding are kept in
/// `body` (the padding is checked and counted only).
#[derive(Debug)]
pub(super) struct Incoming {
    from: NodeId,
    snapshot: SnapshotMeta,
    received: u64,
    body: Vec<u8>,
}

/// A chunk's worth of padding, shared by every chunk that carries some.
static PADDING: [u8; SNAPSHOT_CHUNK_BYTES_MAX as usize] =
    [PADDING_BYTE; SNAPSHOT_CHUNK_BYTES_MAX as usize];

impl Sim {
    /// Pick the applied index at which node `index` compacts next.
    pub(super) fn schedule_compaction(&mut self, index: usize) {
        let every = self.config.compact_every_entries;
        if every == 0 {
            return;
        }
        let jitter = self.rng.gen_range(0..=every);
        let node = &mut self.nodes[index];
        node.compact_at = node.disk.snapshot_index() + every + jitter;
        if let Some(snapshot) = node.disk.snapshot() {
            node.snapshots_held
                .insert(snapshot.meta.index, snapshot.meta);
        }
    }

    /// Take a snapshot and compact if node `index` is due. Returns whether
    /// it did (the node may have actions to drain).
    pub(super) fn maybe_compact(&mut self, index: usize) -> Result<bool, String> {
        if self.config.compact_every_entries == 0 {
            return Ok(false);
        }
        let node = &self.nodes[index];
        let Some(raft) = node.raft.as_ref() else {
            return Ok(false);
        };
        let applied = raft.applied_index().min(node.applied.len() as Index);
        let low = node.disk.snapshot_index() + 1;
        if applied < node.compact_at || applied < low {
            return Ok(false);
        }
        let target = self.rng.gen_range(low..=applied);
        // Everything written before the snapshot is durable before it.
        self.sync_node(index)?;
        let node = &mut self.nodes[index];
        let id = node.id;
        let raft = node
            .raft
            .as_mut()
            .ok_or("compaction on a node that is down")?;
        let term = raft
            .term_at(target)
            .ok_or_else(|| format!("node {id} applied index {target} but has no term for it"))?;
        let padding_bytes = self.config.snapshot_padding_bytes;
        let snapshot = SimSnapshot::of(&node.applied[..target as usize], term, padding_bytes);
        if !raft.compact(target, snapshot.meta.size_bytes) {
            return Err(format!(
                "node {id} refused to compact at applied index {target} (snapshot {:?})",
                raft.snapshot()
            ));
        }
        // The node applied every index itself (each checked then) or loaded
        // it from its last snapshot (checked when taken or installed).
        invariants::snapshot_matches_committed_from(
            &self.observations.committed,
            id,
            (target, term),
            &snapshot.applied,
            low,
        )?;
        node.snapshots_held.insert(target, snapshot.meta);
        self.snapshot_stats.compactions += 1;
        node.disk
            .store_snapshot(snapshot, true)
            .map_err(|reason| format!("node {id}: {reason}"))?;
        if self.config.verbose {
            self.trace(format!(
                "    node {id}: compact through {target} (term {term})"
            ));
        }
        self.schedule_compaction(index);
        Ok(true)
    }

    /// Fill a `SendSnapshotChunk` envelope with its bytes.
    pub(super) fn fill_snapshot_chunk(
        &mut self,
        index: usize,
        mut envelope: Envelope,
        length_bytes: u64,
    ) -> Result<Envelope, String> {
        let node = &self.nodes[index];
        let id = node.id;
        let Message::InstallSnapshot {
            snapshot, offset, ..
        } = &envelope.message
        else {
            return Err(format!(
                "node {id} asked to fill a snapshot chunk into {:?}",
                envelope.message
            ));
        };
        let (snapshot, offset) = (*snapshot, *offset);
        if node.snapshots_held.get(&snapshot.index) != Some(&snapshot) {
            return Err(format!(
                "node {id} sends snapshot {snapshot:?}, which it never held this lifetime"
            ));
        }
        let current = node
            .disk
            .snapshot()
            .ok_or_else(|| format!("node {id} sends a snapshot but stored none"))?;
        let padding = current.padding_bytes;
        let end = offset.checked_add(length_bytes).filter(|&end| {
            end <= snapshot.size_bytes
                && end <= current.meta.size_bytes
                && length_bytes <= SNAPSHOT_CHUNK_BYTES_MAX
        });
        let Some(end) = end else {
            return Err(format!(
                "node {id} sends {length_bytes} bytes from offset {offset} of snapshot {snapshot:?}"
            ));
        };
        let padding_part = (end.min(padding).saturating_sub(offset)) as usize;
        let body_range = offset.saturating_sub(padding)..end.saturating_sub(padding);
        let body_part = current
            .body
            .slice(body_range.start as usize..body_range.end.max(body_range.start) as usize);
        let data = if body_part.is_empty() {
            Bytes::from_static(&PADDING[..padding_part])
        } else if padding_part == 0 {
            body_part
        } else {
            let mut joined = Vec::with_capacity(padding_part + body_part.len());
            joined.extend_from_slice(&PADDING[..padding_part]);
            joined.extend_from_slice(&body_part);
            Bytes::from(joined)
        };
        self.snapshot_stats.chunks_sent += 1;
        envelope.message = Message::InstallSnapshot {
            snapshot,
            offset,
            data,
        };
        Ok(envelope)
    }

    /// Keep a received chunk; install the snapshot once it is complete.
    pub(super) fn receive_snapshot_chunk(
        &mut self,
        index: usize,
        from: NodeId,
        snapshot: SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), String> {
        let node = &mut self.nodes[index];
        let id = node.id;
        let mut incoming = match node.incoming.take() {
            Some(incoming) if incoming.from == from && incoming.snapshot == snapshot => incoming,
            _ => Incoming {
                from,
                snapshot,
                received: 0,
                body: Vec::new(),
            },
        };
        let padding = self.config.snapshot_padding_bytes;
        let held = incoming.received;
        let end = offset + data.len() as u64;
        if offset <= held {
            let padding_part = (end.min(padding).saturating_sub(offset)) as usize;
            if data[..padding_part]
                .iter()
                .any(|&byte| byte != PADDING_BYTE)
            {
                return Err(format!(
                    "node {id} received bad padding at offset {offset} of snapshot {snapshot:?}"
                ));
            }
            let piece = &data[padding_part..];
            let body_offset = (offset.max(padding) - padding) as usize;
            let overlap = incoming
                .body
                .len()
                .saturating_sub(body_offset)
                .min(piece.len());
            if incoming.body[body_offset..body_offset + overlap] != piece[..overlap] {
                return Err(format!(
                    "node {id} received different bytes at offset {offset} of snapshot {snapshot:?}"
                ));
            }
            incoming.body.extend_from_slice(&piece[overlap..]);
            incoming.received = held.max(end);
        }
        if offset != held {
            self.snapshot_stats.chunks_out_of_order += 1;
        }
        let next_offset = incoming.received;
        if next_offset > snapshot.size_bytes {
            return Err(format!(
                "node {id} holds {next_offset} bytes of snapshot {snapshot:?}"
            ));
        }
        if next_offset < snapshot.size_bytes {
            let node = &mut self.nodes[index];
            node.incoming = Some(incoming);
            let raft = node.raft.as_mut().ok_or("chunk on a node that is down")?;
            raft.snapshot_chunk_stored(from, snapshot, next_offset);
            return Ok(());
        }
        let received = SimSnapshot::decode(snapshot, padding, Bytes::from(incoming.body))
            .map_err(|reason| format!("node {id} received a bad snapshot: {reason}"))?;
        invariants::snapshot_matches_committed(
            &self.observations.committed,
            id,
            (snapshot.index, snapshot.term),
            &received.applied,
        )?;
        // Durable before `install_snapshot`: sync what came before, then the
        // snapshot itself is written synced (below, once the core accepts).
        self.sync_node(index)?;
        let node = &mut self.nodes[index];
        let raft = node.raft.as_mut().ok_or("install on a node that is down")?;
        let Installed::Installed { log_kept } = raft.install_snapshot(from, snapshot) else {
            if self.config.verbose {
                self.trace(format!("    node {id}: snapshot {} stale", snapshot.index));
            }
            return Ok(());
        };
        self.snapshot_stats.installed += 1;
        node.applied = received.applied.to_vec();
        node.snapshots_held.insert(snapshot.index, snapshot);
        node.disk
            .store_snapshot(received, log_kept)
            .map_err(|reason| format!("node {id}: {reason}"))?;
        if self.config.verbose {
            self.trace(format!(
                "    node {id}: installed snapshot through {} from {from} (log kept: {log_kept})",
                snapshot.index
            ));
        }
        self.schedule_compaction(index);
        self.serve_reads(index);
        Ok(())
    }
}
