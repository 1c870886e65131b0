//! The snapshot helper thread: takes snapshots and deletes obsolete files,
//! so the reactor never serialises the file map nor waits on an unlink.
//!
//! How a snapshot is taken without stalling the reactor: the replica hands
//! over a frozen view of its map (`Fsm::freeze`: one reference count per
//! arena chunk, src/fsm/arena.rs) and goes on applying; the helper encodes
//! the view into the file. Nothing is replayed and no second map is built:
//! the only extra memory is the arena chunks (and file contents) the
//! reactor changes while the view is alive, which it copies on first change.
//! (Before, the helper loaded the previous snapshot and re-applied every
//! entry since, a second map; or the reactor copied small maps whole.)
//!
//! Jobs run one at a time, in submission order (so deletions stay oldest
//! first). Results come back on a channel the replica polls once per turn.
//!
//! Memory: after each snapshot the helper hands free heap pages back to the
//! system (`malloc_trim`). Without it glibc keeps them: the holes the
//! reactor's compacted log entries and the view's superseded contents left
//! between the files; measured with benches/memory.sh at 1M files (when a
//! second map was built here), that was ~40% of a node's RSS.

use super::{delete_in_order, write_file};
use crate::fsm::FrozenFsm;
use crate::raft::{Index, SnapshotMeta, Term};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

/// Work for the helper thread.
pub enum Job {
    /// Write `state`, the map at `index` (of `term`), as that snapshot.
    Write {
        state: FrozenFsm,
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
        Job::Write { state, index, term } => {
            let started = Instant::now();
            let written = write_file(dir, state, index, term, fsync);
            release_free_memory();
            match written {
                Ok((snapshot, _)) => Done::Taken {
                    snapshot,
                    elapsed: started.elapsed(),
                },
                Err(error) => Done::Failed(error.to_string()),
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
