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
//! Left out: snapshots spanning several chunks need more than
//! `SNAPSHOT_CHUNK_BYTES_MAX` (1 MiB) of state, which the simulated state
//! machines never reach; chunk offsets and resends are exercised only as far
//! as single-chunk transfers under loss and duplication go.

use super::disk::SimSnapshot;
use super::{invariants, Sim};
use crate::raft::{Envelope, Index, Installed, Message, NodeId, SnapshotMeta};
use bytes::Bytes;
use rand::Rng;

/// An InstallSnapshot being received: the first bytes of `snapshot` from
/// `from`, in order.
#[derive(Debug)]
pub(super) struct Incoming {
    from: NodeId,
    snapshot: SnapshotMeta,
    bytes: Vec<u8>,
}

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
        let snapshot = SimSnapshot::of(&node.applied[..target as usize], term);
        if !raft.compact(target, snapshot.meta.size_bytes) {
            return Err(format!(
                "node {id} refused to compact at applied index {target} (snapshot {:?})",
                raft.snapshot()
            ));
        }
        invariants::snapshot_matches_committed(
            &self.observations.committed,
            id,
            (target, term),
            &snapshot.applied,
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
        let body = node
            .disk
            .snapshot()
            .map(|current| &current.body)
            .ok_or_else(|| format!("node {id} sends a snapshot but stored none"))?;
        let end = offset
            .checked_add(length_bytes)
            .filter(|&end| end <= snapshot.size_bytes && end as usize <= body.len());
        let Some(end) = end else {
            return Err(format!(
                "node {id} sends {length_bytes} bytes from offset {offset} of snapshot {snapshot:?}"
            ));
        };
        self.snapshot_stats.chunks_sent += 1;
        envelope.message = Message::InstallSnapshot {
            snapshot,
            offset,
            data: body.slice(offset as usize..end as usize),
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
                bytes: Vec::new(),
            },
        };
        let held = incoming.bytes.len();
        let offset_position = offset as usize;
        if offset_position <= held {
            let overlap = (held - offset_position).min(data.len());
            if incoming.bytes[offset_position..offset_position + overlap] != data[..overlap] {
                return Err(format!(
                    "node {id} received different bytes at offset {offset} of snapshot {snapshot:?}"
                ));
            }
            incoming.bytes.extend_from_slice(&data[overlap..]);
        }
        if offset_position != held {
            self.snapshot_stats.chunks_out_of_order += 1;
        }
        let next_offset = incoming.bytes.len() as u64;
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
        let received = SimSnapshot::decode(snapshot, Bytes::from(incoming.bytes))
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
        node.applied = received.applied.clone();
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
