//! The WAL's fsync threads: run `fdatasync` off the reactor, so a node keeps
//! reading, batching, replicating and answering while its disk syncs.
//!
//! The reactor writes records to the segment itself (`Wal::begin_sync`, a
//! `write` is cheap: it only copies into the page cache) and hands a thread
//! a `SyncRequest`: "make this segment durable up to this length". The
//! thread fsyncs, sends back a `SyncDone` and calls the notify hook (the
//! reactor's `mio::Waker`), and the reactor finishes the job with
//! `Wal::end_sync`.
//!
//! Group commit, adaptively (issue 6): the caller keeps at most
//! `threads` requests in flight; whatever is appended meanwhile forms the
//! next request. At low load each write gets its own fsync at once; at
//! high load each fsync covers everything that arrived since the last one
//! started.
//!
//! Invariants: every request gets exactly one `SyncDone` (tagged with the
//! id it was submitted with) unless the Syncer is dropped first; requests
//! may finish out of order. A request's success covers every request
//! submitted before it: the segment file is shared (`Arc<File>`), and an
//! `fdatasync` covers every write made to the file before the call, through
//! any descriptor.

use crate::error::{Error, Result};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Make segment `sequence` durable up to `file_bytes`.
#[derive(Debug)]
pub struct SyncRequest {
    /// The caller's tag, handed back in `SyncDone`.
    pub id: u64,
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    pub(super) sequence: u64,
    pub(super) file_bytes: u64,
}

impl SyncRequest {
    /// Runs the fdatasync on the calling thread.
    pub(super) fn run(self) -> SyncDone {
        let started = Instant::now();
        let result = self.file.sync_data();
        SyncDone {
            id: self.id,
            path: self.path,
            sequence: self.sequence,
            file_bytes: self.file_bytes,
            result,
            took: started.elapsed(),
        }
    }
}

/// What became of a `SyncRequest`.
#[derive(Debug)]
pub struct SyncDone {
    pub id: u64,
    pub(super) path: PathBuf,
    pub(super) sequence: u64,
    pub(super) file_bytes: u64,
    pub(super) result: io::Result<()>,
    /// How long the fdatasync took.
    pub took: Duration,
}

/// The fsync threads and their two channels.
pub struct Syncer {
    requests: Option<Sender<SyncRequest>>,
    done: Receiver<SyncDone>,
    threads: Vec<JoinHandle<()>>,
}

impl Syncer {
    /// Starts `threads` (at least one) fsync threads; `notify` runs on them
    /// after every finished request.
    pub fn start(threads: usize, notify: Box<dyn Fn() + Send + Sync>) -> io::Result<Syncer> {
        let (request_sender, request_receiver) = mpsc::channel::<SyncRequest>();
        let request_receiver = Arc::new(Mutex::new(request_receiver));
        let (done_sender, done_receiver) = mpsc::channel();
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::from(notify);
        let mut syncer = Syncer {
            requests: Some(request_sender),
            done: done_receiver,
            threads: Vec::new(),
        };
        for _ in 0..threads.max(1) {
            let requests = Arc::clone(&request_receiver);
            let done_sender = done_sender.clone();
            let notify = Arc::clone(&notify);
            let thread = std::thread::Builder::new()
                .name("wal-sync".into())
                .spawn(move || sync_requests(&requests, &done_sender, &*notify))?;
            syncer.threads.push(thread);
        }
        Ok(syncer)
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

/// One fsync thread: takes requests until the channel closes.
fn sync_requests(
    requests: &Mutex<Receiver<SyncRequest>>,
    done_sender: &Sender<SyncDone>,
    notify: &(dyn Fn() + Send + Sync),
) {
    loop {
        let next = match requests.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(request) = next else {
            return;
        };
        if done_sender.send(request.run()).is_err() {
            return;
        }
        notify();
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the request channel ends each thread after the fsync it
        // may be running.
        self.requests = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
