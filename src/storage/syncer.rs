//! The WAL's fsync thread: runs `fdatasync` off the reactor, so a node keeps
//! reading, batching, replicating and answering while its disk syncs.
//!
//! The reactor writes records to the segment itself (`Wal::begin_sync`, a
//! `write` is cheap: it only copies into the page cache) and hands the
//! thread a `SyncRequest`: "make this segment durable up to this length".
//! The thread fsyncs, sends back a `SyncDone` and calls the notify hook
//! (the reactor's `mio::Waker`), and the reactor finishes the job with
//! `Wal::end_sync`.
//!
//! Group commit, adaptively (issue 6): the caller keeps at most one request
//! in flight; whatever is appended while it runs forms the next request.
//! At low load each write gets its own fsync at once; at high load each
//! fsync covers everything that arrived during the previous one.
//!
//! Invariants: requests run one at a time in submission order; every
//! request gets exactly one `SyncDone` unless the Syncer is dropped first.
//! The segment file is shared (`Arc<File>`), never reopened: `fdatasync` on
//! a descriptor covers every write made through any descriptor of the file
//! before the call.

use crate::error::{Error, Result};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Make segment `sequence` durable up to `file_bytes`.
#[derive(Debug)]
pub struct SyncRequest {
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    pub(super) sequence: u64,
    pub(super) file_bytes: u64,
}

/// What became of a `SyncRequest`.
#[derive(Debug)]
pub struct SyncDone {
    pub(super) path: PathBuf,
    pub(super) sequence: u64,
    pub(super) file_bytes: u64,
    pub(super) result: io::Result<()>,
    /// How long the fdatasync took.
    pub took: Duration,
}

/// The fsync thread and its two channels.
pub struct Syncer {
    requests: Option<Sender<SyncRequest>>,
    done: Receiver<SyncDone>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread; `notify` runs on it after every finished request.
    pub fn start(notify: Box<dyn Fn() + Send>) -> io::Result<Syncer> {
        let (request_sender, request_receiver) = mpsc::channel::<SyncRequest>();
        let (done_sender, done_receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                for request in request_receiver {
                    let started = Instant::now();
                    let result = request.file.sync_data();
                    let done = SyncDone {
                        path: request.path,
                        sequence: request.sequence,
                        file_bytes: request.file_bytes,
                        result,
                        took: started.elapsed(),
                    };
                    if done_sender.send(done).is_err() {
                        return;
                    }
                    notify();
                }
            })?;
        Ok(Syncer {
            requests: Some(request_sender),
            done: done_receiver,
            thread: Some(thread),
        })
    }

    pub fn submit(&self, request: SyncRequest) -> Result<()> {
        let sent = self.requests.as_ref().map(|sender| sender.send(request));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(Error::io(
                "handing a WAL fsync to the sync thread",
                io::Error::other("the WAL sync thread has stopped"),
            )),
        }
    }

    /// A finished request, if one is waiting. An error means the thread is
    /// gone (it never stops on its own while requests can come).
    pub fn try_done(&self) -> Result<Option<SyncDone>> {
        match self.done.try_recv() {
            Ok(done) => Ok(Some(done)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::io(
                "waiting for a WAL fsync",
                io::Error::other("the WAL sync thread has stopped"),
            )),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after the fsync it
        // may be running.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
