//! The snapshot helper thread: takes snapshots and deletes obsolete files,
//! so the reactor never serialises the file map nor waits on an unlink.
//!
//! How a snapshot is taken without stalling the reactor, two ways:
//! - `Job::Take` (large maps): the map is never cloned or frozen. The
//!   reactor hands over the previous snapshot's meta and the committed
//!   entries since (`Bytes` clones: one reference count each); the helper
//!   loads the previous snapshot file, applies those entries with the same
//!   deterministic `Fsm::apply` the replica uses, and writes the result.
//!   Apply is deterministic (SPEC §2: entries carry their cluster time), so
//!   the result is exactly the replica's map at that index. The reactor's
//!   cost is the entry clones; the helper's is one load, one apply per entry
//!   and one serialisation, plus the memory of a second map while it runs
//!   (the file is read and written as a stream, so the map is the only large
//!   allocation: no copy of the old or the new file's bytes).
//! - `Job::Write` (small maps, up to `SNAPSHOT_COPY_FILES_MAX` files): the
//!   reactor hands over a copy of its map, and the helper only writes it.
//!   Under a write load over few keys this saves re-applying every write
//!   (the re-apply was ~16 % of a follower's instructions) for a copy that
//!   costs the reactor about a millisecond per 10,000 files.
//!
//! Jobs run one at a time, in submission order (so deletions stay oldest
//! first). Results come back on a channel the replica polls once per turn.
//!
//! Memory: after each snapshot the helper hands free heap pages back to the
//! system (`malloc_trim`). Without it glibc keeps them: the second map's
//! million small blocks in this thread's arena, and the holes the reactor's
//! compacted log entries left between the files in the main arena; measured
//! with benches/memory.sh at 1M files, that is ~40% of a node's RSS.

use super::{delete_in_order, load, write_file};
use crate::fsm::Fsm;
use crate::raft::{Entry, Index, SnapshotMeta, Term};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

/// Work for the helper thread.
pub enum Job {
    /// Build the snapshot through `index` (of `term`) from the snapshot
    /// `base` (index 0: the empty map) and `entries` (`base.index + 1` to
    /// `index`, contiguous).
    Take {
        base: SnapshotMeta,
        entries: Vec<Entry>,
        index: Index,
        term: Term,
    },
    /// Write `fsm`, the map at `index` (of `term`), as that snapshot.
    Write {
        fsm: Box<Fsm>,
        index: Index,
        term: Term,
    },
    /// Delete these files, in this order.
    Delete(Vec<PathBuf>),
}

/// A finished job.
#[derive(Debug)]
pub enum Done {
    Taken {
        snapshot: SnapshotMeta,
        elapsed: Duration,
    },
    /// A snapshot could not be taken (the node goes on; it retries later).
    Failed(String),
    Deleted,
}

pub struct Worker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts the helper thread for the data dir `dir`.
    pub fn start(dir: PathBuf, fsync: bool) -> std::io::Result<Worker> {
        let (jobs, job_receiver) = mpsc::channel::<Job>();
        let (done_sender, done) = mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                for job in job_receiver {
                    let done = run(&dir, fsync, job);
                    if done_sender.send(done).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Queues a job; false if the thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// A finished job, if any.
    pub fn try_done(&self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(done) => Some(done),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                Some(Done::Failed("the snapshot helper thread stopped".into()))
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current job.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(dir: &std::path::Path, fsync: bool, job: Job) -> Done {
    match job {
        Job::Write { fsm, index, term } => {
            let started = Instant::now();
            let written = write_file(dir, &fsm, index, term, fsync);
            drop(fsm);
            release_free_memory();
            match written {
                Ok((snapshot, _)) => Done::Taken {
                    snapshot,
                    elapsed: started.elapsed(),
                },
                Err(error) => Done::Failed(error.to_string()),
            }
        }
        Job::Take {
            base,
            entries,
            index,
            term,
        } => {
            let started = Instant::now();
            let taken = take(dir, fsync, base, &entries, index, term);
            drop(entries);
            let trim_started = Instant::now();
            release_free_memory();
            log::debug!(
                "snapshot {index}: free heap pages released in {:?}",
                trim_started.elapsed()
            );
            match taken {
                Ok(snapshot) => Done::Taken {
                    snapshot,
                    elapsed: started.elapsed(),
                },
                Err(reason) => Done::Failed(reason),
            }
        }
        Job::Delete(paths) => match delete_in_order(dir, &paths, fsync) {
            Ok(()) => Done::Deleted,
            Err(error) => {
                log::warn!("deleting obsolete files: {error}");
                Done::Deleted
            }
        },
    }
}

/// Returns free heap pages of every malloc arena to the system (glibc's
/// `malloc_trim`; a no-op elsewhere). Free chunks stay usable; only their
/// pages are given back, so the cost is a walk of the free lists.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and madvises the allocator's own free
    // chunks; it is thread-safe (it locks each arena in turn).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Builds and writes one snapshot (see the module doc).
pub fn take(
    dir: &std::path::Path,
    fsync: bool,
    base: SnapshotMeta,
    entries: &[Entry],
    index: Index,
    term: Term,
) -> Result<SnapshotMeta, String> {
    let fsm = if base.index == 0 {
        Fsm::new()
    } else {
        let path = dir.join(super::file_name(base.index, base.term));
        let (meta, fsm) = load(&path).map_err(|e| e.to_string())?;
        if meta.index != base.index {
            return Err(format!("{} is not snapshot {}", path.display(), base.index));
        }
        fsm
    };
    let fsm = build(fsm, base.index, entries, index)?;
    let (snapshot, _) = write_file(dir, &fsm, index, term, fsync).map_err(|e| e.to_string())?;
    Ok(snapshot)
}

/// The map at `index`: `fsm` (the map at `base_index`) with `entries`
/// (`base_index + 1` to `index`, contiguous) applied, by the same
/// deterministic `Fsm::apply` the replica uses.
pub fn build(
    mut fsm: Fsm,
    base_index: Index,
    entries: &[Entry],
    index: Index,
) -> Result<Fsm, String> {
    let mut expected = base_index + 1;
    let mut outcomes = Vec::new();
    for entry in entries {
        if entry.index != expected {
            return Err(format!(
                "entries for snapshot {index} skip from {expected} to {}",
                entry.index
            ));
        }
        expected += 1;
        outcomes.clear();
        fsm.apply(&entry.data, &mut outcomes)
            .map_err(|e| format!("committed entry {} does not decode: {e:?}", entry.index))?;
    }
    if expected != index + 1 {
        return Err(format!(
            "entries for snapshot {index} end at {}",
            expected - 1
        ));
    }
    Ok(fsm)
}
