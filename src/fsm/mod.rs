//! The replicated state machine: the file map and the deterministic apply.
//!
//! `Fsm::apply` takes one committed log entry's data (a batch, see
//! `command.rs`) and turns it into one `Outcome` per command, in order. It
//! decides every rule of SPEC §2 that depends on state:
//!
//! - versions come from one counter; each successful write or cas takes
//!   counter + 1 (the first is 1) and a version is never reused, even after
//!   delete and re-create; a failed cas and a delete consume none;
//! - `cas` and `delete` on a missing or expired file are `NotFound`; a `cas`
//!   never creates; a `write` on an expired file creates it afresh;
//! - EXPTIME is in seconds, 0 = never; deadline = stamp + EXPTIME × 1000,
//!   saturating; a file is expired iff `now_ms >= deadline`; a later write or
//!   cas replaces the expiry (cancels it with 0); `read` shows the whole
//!   seconds remaining, rounded up.
//!
//! Determinism contract: the state after applying a sequence of entries is a
//! function of those entries' bytes alone. The only time apply uses is the
//! stamp inside the entry (cluster time, stamped by the leader), never a local
//! clock; nothing here reads a random number except the name-hash key, which
//! changes the memory layout only, never an answer, a version or `checksum`.
//! Cluster time never moves backwards here: an entry stamped before an earlier
//! one (which a correct leader never produces) is applied at the later time.
//!
//! An entry that does not decode changes nothing (the whole batch is decoded
//! before the first command runs), and `apply` returns the error: the node must
//! stop rather than diverge from replicas that might have applied it.
//!
//! Raft configuration entries (`raft::membership`) are not commands: apply
//! keeps the last one's bytes as they are (`membership`), so a snapshot of
//! the map records the configuration in force at its index, and touches
//! nothing else.
//!
//! Submodules: `command` (the batch codec inside log entries), `files` (the
//! arena of files, name index, version counter and expiry queue), `arena`
//! (the slab arena shared copy-on-write by chunks, so `freeze` is cheap),
//! `snapshot` (the whole state as bytes, for log compaction and
//! InstallSnapshot, written from a frozen view).
//!
//! Left out: name validation and size limits (the protocol layer checks them
//! before proposing; the codec bounds lengths again), reads' linearizability
//! (the replica decides at which log position a read runs; `read` answers at
//! the state applied so far), and any clock (callers pass cluster time).

pub mod arena;
pub mod command;
pub mod files;
pub mod snapshot;

use std::hash::{Hash, Hasher};

use bytes::Bytes;

pub use command::{
    batch_stamp_ms, decode_batch, decode_batch_ref, encode_batch, encode_batch_into, Batch,
    BatchRef, Command, CommandRef, DecodeError,
};
use files::Files;
pub use snapshot::FrozenFsm;

/// What one command did, in the order the commands were in the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write or cas stored the file under this new version (`OK VERSION`).
    Written { version: u64 },
    /// A delete removed the file (`OK`).
    Deleted,
    /// A cas or delete found no live file (`ERR_FILE_NOT_FOUND`).
    NotFound,
    /// A cas named another version than the file has (`ERR_VERSION CURRENT`).
    VersionMismatch { current: u64 },
}

/// A live file as `read` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileView<'a> {
    pub version: u64,
    pub content: &'a [u8],
    /// Whole seconds until expiry, rounded up; 0 = the file never expires.
    pub expires_in_s: u64,
    /// Cluster time at which the file expires; `None` = never.
    pub deadline_ms: Option<u64>,
}

/// The file store every replica keeps in step. See the module doc.
/// `Clone` shares the files' arena copy-on-write (`arena`) and copies the
/// index and the expiry queue; a snapshot needs only `freeze`.
#[derive(Clone, Debug, Default)]
pub struct Fsm {
    files: Files,
    /// The largest stamp applied so far.
    cluster_time_ms: u64,
    /// The data of the last configuration entry applied (empty: none), so
    /// snapshots carry the configuration in force; opaque here.
    membership: Bytes,
}

/// The deadline of a file written at `now_ms` with `exptime_s`; `None` = never.
pub fn deadline_ms(now_ms: u64, exptime_s: u64) -> Option<u64> {
    if exptime_s == 0 {
        None
    } else {
        Some(now_ms.saturating_add(exptime_s.saturating_mul(1_000)))
    }
}

impl Fsm {
    pub fn new() -> Fsm {
        Fsm::default()
    }

    /// Applies one committed entry's data. Empty data is the Raft no-op: it
    /// pushes nothing and changes nothing. Otherwise pushes exactly one
    /// `Outcome` per command, in order; on a decode error pushes nothing and
    /// changes nothing.
    pub fn apply(&mut self, data: &Bytes, outcomes: &mut Vec<Outcome>) -> Result<(), DecodeError> {
        if data.is_empty() {
            return Ok(());
        }
        if crate::raft::membership::is_configuration_entry(data) {
            self.set_membership(data.clone());
            return Ok(());
        }
        let batch = decode_batch_ref(data)?;
        let now_ms = self.begin_batch(batch.stamp_ms);
        outcomes.reserve(batch.commands.len());
        for &command in &batch.commands {
            let outcome = self.apply_command(command, now_ms);
            outcomes.push(outcome);
        }
        Ok(())
    }

    /// Start applying a batch stamped `stamp_ms`: cluster time advances to
    /// it (never backwards) and every file due by then is reaped first, so no
    /// command of the batch can see one. Returns the time the batch's
    /// commands run at. `apply` is `begin_batch` + `apply_command` for each
    /// command; the replica calls them itself to answer reads between two
    /// commands of one entry.
    pub fn begin_batch(&mut self, stamp_ms: u64) -> u64 {
        self.cluster_time_ms = self.cluster_time_ms.max(stamp_ms);
        self.files.expire_through(self.cluster_time_ms);
        self.cluster_time_ms
    }

    /// A configuration entry was applied: keep its data (see the module doc).
    pub fn set_membership(&mut self, data: Bytes) {
        self.membership = data;
    }

    /// The data of the last configuration entry applied (empty: none).
    pub fn membership(&self) -> &Bytes {
        &self.membership
    }

    /// Apply one command of the batch begun at `now_ms` (see `begin_batch`).
    pub fn apply_command(&mut self, command: CommandRef<'_>, now_ms: u64) -> Outcome {
        match command {
            CommandRef::Write {
                name,
                content,
                exptime_s,
            } => {
                let version = self.files.next_version();
                let deadline_ms = deadline_ms(now_ms, exptime_s);
                let hash = self.files.hash_name(name);
                match self.files.find_hashed(hash, name) {
                    Some(slot) => self.files.replace(slot, content, version, deadline_ms),
                    None => {
                        self.files
                            .insert_hashed(hash, name, content, version, deadline_ms);
                    }
                }
                Outcome::Written { version }
            }
            CommandRef::Cas {
                name,
                version: expected,
                content,
                exptime_s,
            } => {
                let found = self
                    .files
                    .find(name)
                    .and_then(|slot| Some((slot, self.files.get(slot)?)));
                let Some((slot, file)) = found else {
                    return Outcome::NotFound;
                };
                debug_assert!(file.is_live(now_ms), "apply met a file past its deadline");
                let current = file.version();
                if current != expected {
                    return Outcome::VersionMismatch { current };
                }
                let version = self.files.next_version();
                let deadline_ms = deadline_ms(now_ms, exptime_s);
                self.files.replace(slot, content, version, deadline_ms);
                Outcome::Written { version }
            }
            CommandRef::Delete { name } => match self.files.find(name) {
                Some(slot) => {
                    self.files.remove(slot);
                    Outcome::Deleted
                }
                None => Outcome::NotFound,
            },
        }
    }

    /// The file named `name` as of the entries applied so far, judged live at
    /// cluster time `now_ms`; an expired file is absent.
    pub fn read(&self, name: &[u8], now_ms: u64) -> Option<FileView<'_>> {
        let file = self.files.get(self.files.find(name)?)?;
        if !file.is_live(now_ms) {
            return None;
        }
        let expires_in_s = match file.deadline_ms() {
            // is_live guarantees deadline_ms > now_ms, so at least 1 second shows.
            Some(deadline_ms) => (deadline_ms - now_ms).div_ceil(1_000),
            None => 0,
        };
        Some(FileView {
            version: file.version(),
            content: file.content(),
            expires_in_s,
            deadline_ms: file.deadline_ms(),
        })
    }

    /// The bytes stored for `name`, expired or not (0 if absent): what a read
    /// of it arriving now is expected to answer (the client budget).
    pub fn stored_len(&self, name: &[u8]) -> usize {
        self.files
            .find(name)
            .and_then(|slot| self.files.get(slot))
            .map_or(0, |file| file.content().len())
    }

    /// Every name in the map, live or not yet expired away (for backups:
    /// judge each with `read`).
    pub fn names(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.files.iter().map(|file| file.name())
    }

    /// The earliest deadline of any stored file, if one has a deadline.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.files.next_deadline_ms()
    }

    /// The largest stamp applied so far (0 before the first batch).
    pub fn cluster_time_ms(&self) -> u64 {
        self.cluster_time_ms
    }

    /// The last version handed out (0 on a fresh store).
    pub fn version_counter(&self) -> u64 {
        self.files.version_counter()
    }

    /// Files stored, counting any past their deadline that no entry has
    /// reaped yet (none is past `cluster_time_ms`).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Bytes the files' names and contents occupy in memory.
    pub fn stored_bytes(&self) -> u64 {
        self.files.stored_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// An order-independent digest of every file live at `now_ms` (name,
    /// version, content, deadline) and the version counter. Replicas that
    /// applied the same entries give the same value, whatever their memory
    /// layout; it is for convergence checks, not for security.
    pub fn checksum(&self, now_ms: u64) -> u64 {
        let mut files_sum = 0u64;
        let mut live = 0u64;
        for file in self.files.iter().filter(|file| file.is_live(now_ms)) {
            // DefaultHasher::new() has fixed keys: equal across replicas.
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            file.name().hash(&mut hasher);
            file.version().hash(&mut hasher);
            file.content().hash(&mut hasher);
            file.deadline_ms().hash(&mut hasher);
            // Addition, not XOR: order-independent, and no two files cancel.
            files_sum = files_sum.wrapping_add(hasher.finish());
            live += 1;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (files_sum, live, self.files.version_counter()).hash(&mut hasher);
        hasher.finish()
    }

    /// Panics if the file map's structures disagree (tests).
    pub fn check_invariants(&self) {
        self.files.check_invariants();
        if let Some(deadline_ms) = self.files.next_deadline_ms() {
            assert!(
                deadline_ms > self.cluster_time_ms,
                "a due file survived apply"
            );
        }
        let max_version = self
            .files
            .iter()
            .map(files::File::version)
            .max()
            .unwrap_or(0);
        assert!(
            max_version <= self.files.version_counter(),
            "a version above the counter"
        );
    }
}
