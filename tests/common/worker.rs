//! The fault tests' workload: a worker that runs a random mixed, paced
//! workload through one `Client` while recording every operation in a shared
//! `lincheck::History`, and the mapping between `lincheck` operations and
//! the protocol (`encode`, `classify`) that `workload` uses too.
//!
//! Recording rules (what the checker needs): an operation is invoked just
//! before its bytes are sent and completed when its answer is read;
//! `ERR_REDIRECT` and `ERR_CMD_ERR` mean "not applied" and are discarded;
//! `ERR_INTERNAL`, a timeout or a broken connection are indeterminate. After
//! a timeout or a broken connection the connection is abandoned (a late
//! answer must never be taken for the next command's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftfs::lincheck::{History, Op, Outcome};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use raftfs::protocol::reply::Reply as Parsed;

use super::client::{Client, Reply, ANSWER_TIMEOUT};

/// What a worker saw, summed over workers.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub definite: u64,
    pub indeterminate: u64,
    pub redirects: u64,
    pub command_errors: u64,
    /// Replies that matched nothing the protocol allows.
    pub unexpected: Vec<String>,
}

impl WorkerStats {
    pub fn add(&mut self, other: &WorkerStats) {
        self.definite += other.definite;
        self.indeterminate += other.indeterminate;
        self.redirects += other.redirects;
        self.command_errors += other.command_errors;
        self.unexpected.extend(other.unexpected.iter().cloned());
    }
}

/// The encoded command for `op`.
pub fn encode(op: &Op) -> Vec<u8> {
    let mut out = Vec::new();
    match op {
        Op::Write { name, content } => {
            out.extend_from_slice(b"write ");
            out.extend_from_slice(name);
            out.extend_from_slice(format!(" {}\r\n", content.len()).as_bytes());
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
        Op::Cas {
            name,
            expected_version,
            content,
        } => {
            out.extend_from_slice(b"cas ");
            out.extend_from_slice(name);
            out.extend_from_slice(format!(" {expected_version} {}\r\n", content.len()).as_bytes());
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
        Op::Delete { name } => {
            out.extend_from_slice(b"delete ");
            out.extend_from_slice(name);
            out.extend_from_slice(b"\r\n");
        }
        Op::Read { name } => {
            out.extend_from_slice(b"read ");
            out.extend_from_slice(name);
            out.extend_from_slice(b"\r\n");
        }
        Op::Watch { name, version } => {
            out.extend_from_slice(b"watch ");
            out.extend_from_slice(name);
            out.extend_from_slice(format!(" {version}\r\n").as_bytes());
        }
    }
    out
}

/// How an answer is recorded.
pub enum Classified {
    Outcome(Outcome),
    Redirect(String),
    CommandError,
    Unexpected,
}

pub fn classify(op: &Op, reply: &Reply) -> Classified {
    match (&reply.parsed, op) {
        (Parsed::OkVersion(version), Op::Write { .. } | Op::Cas { .. }) => {
            Classified::Outcome(Outcome::Written { version: *version })
        }
        (Parsed::Ok, Op::Delete { .. }) => Classified::Outcome(Outcome::Deleted),
        (Parsed::VersionMismatch(current), Op::Cas { .. }) => {
            Classified::Outcome(Outcome::VersionMismatch { current: *current })
        }
        (
            Parsed::FileNotFound,
            Op::Cas { .. } | Op::Delete { .. } | Op::Read { .. } | Op::Watch { .. },
        ) => Classified::Outcome(Outcome::NotFound),
        (Parsed::Contents { version, .. }, Op::Read { .. } | Op::Watch { .. }) => {
            Classified::Outcome(Outcome::Contents {
                version: *version,
                content: reply.content.clone().unwrap_or_default(),
            })
        }
        (Parsed::Internal, _) => Classified::Outcome(Outcome::Indeterminate),
        (Parsed::Redirect(address), _) => Classified::Redirect(address.clone()),
        (Parsed::CommandError, _) => Classified::CommandError,
        _ => Classified::Unexpected,
    }
}

/// A workload client: random operations on a few hot files, recorded.
pub struct Worker {
    pub id: u64,
    addresses: Vec<String>,
    target: String,
    client: Option<Client>,
    history: Arc<Mutex<History>>,
    origin: Instant,
    rng: Pcg64Mcg,
    files: Vec<Vec<u8>>,
    versions: HashMap<Vec<u8>, u64>,
    next_content: u64,
    pub stats: WorkerStats,
    timeout: Duration,
    /// Least time between the starts of two operations (pacing keeps long
    /// histories within what the checker's memory allows).
    pub interval: Duration,
}

impl Worker {
    pub fn new(
        id: u64,
        addresses: Vec<String>,
        files: Vec<Vec<u8>>,
        history: Arc<Mutex<History>>,
        origin: Instant,
        seed: u64,
    ) -> Worker {
        let target = addresses[id as usize % addresses.len()].clone();
        Worker {
            id,
            addresses,
            target,
            client: None,
            history,
            origin,
            rng: Pcg64Mcg::seed_from_u64(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            files,
            versions: HashMap::new(),
            next_content: 0,
            stats: WorkerStats::default(),
            timeout: ANSWER_TIMEOUT,
            interval: Duration::ZERO,
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// A random operation of the mix: write 30 %, cas 25 %, delete 10 %,
    /// read 35 %. Contents are unique per worker and operation.
    pub fn random_op(&mut self) -> Op {
        let name = self.files[self.rng.gen_range(0..self.files.len())].clone();
        self.next_content += 1;
        let content = format!("w{}-{}", self.id, self.next_content).into_bytes();
        match self.rng.gen_range(0..100) {
            0..=29 => Op::Write { name, content },
            30..=54 => {
                let known = self.versions.get(&name).copied().unwrap_or(1);
                // Mostly the version last seen; sometimes a stale guess.
                let expected_version = if self.rng.gen_bool(0.8) {
                    known
                } else {
                    known.saturating_sub(self.rng.gen_range(1..4))
                };
                Op::Cas {
                    name,
                    expected_version,
                    content,
                }
            }
            55..=64 => Op::Delete { name },
            _ => Op::Read { name },
        }
    }

    fn connection(&mut self) -> Option<&mut Client> {
        if self.client.is_none() {
            match Client::connect(&self.target) {
                Ok(mut client) => {
                    client.set_timeout(self.timeout);
                    self.client = Some(client);
                }
                Err(_) => {
                    self.pick_random_target();
                    std::thread::sleep(Duration::from_millis(20));
                    return None;
                }
            }
        }
        self.client.as_mut()
    }

    fn pick_random_target(&mut self) {
        self.target = self.addresses[self.rng.gen_range(0..self.addresses.len())].clone();
        self.client = None;
    }

    /// Runs one operation to its recorded end.
    pub fn run_op(&mut self, op: Op) -> Option<Outcome> {
        let bytes = encode(&op);
        // Retry connecting a few times before recording anything: an
        // operation that was never sent need not be recorded.
        let mut attempts = 0;
        while self.connection().is_none() {
            attempts += 1;
            if attempts > 50 {
                return None;
            }
        }
        let invoked = self.now_ns();
        let id = self
            .history
            .lock()
            .expect("history")
            .invoke(self.id, op.clone(), invoked);
        let result = match self.client.as_mut() {
            Some(client) => client.command_parts(&bytes),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        let completed = self.now_ns();
        let reply = match result {
            Ok(reply) => reply,
            Err(_) => {
                self.history.lock().expect("history").complete(
                    id,
                    Outcome::Indeterminate,
                    completed,
                );
                self.stats.indeterminate += 1;
                self.pick_random_target();
                return Some(Outcome::Indeterminate);
            }
        };
        match classify(&op, &reply) {
            Classified::Outcome(outcome) => {
                match &outcome {
                    Outcome::Written { version }
                    | Outcome::VersionMismatch { current: version }
                    | Outcome::Contents { version, .. } => {
                        self.versions.insert(op.name().to_vec(), *version);
                    }
                    _ => {}
                }
                if outcome == Outcome::Indeterminate {
                    self.stats.indeterminate += 1;
                    self.pick_random_target();
                } else {
                    self.stats.definite += 1;
                }
                self.history
                    .lock()
                    .expect("history")
                    .complete(id, outcome.clone(), completed);
                Some(outcome)
            }
            Classified::Redirect(address) => {
                self.history.lock().expect("history").discard(id);
                self.stats.redirects += 1;
                if self.addresses.contains(&address) {
                    self.target = address;
                    self.client = None;
                }
                None
            }
            Classified::CommandError => {
                self.history.lock().expect("history").discard(id);
                self.stats.command_errors += 1;
                self.stats
                    .unexpected
                    .push(format!("{op:?} -> {}", reply.line));
                None
            }
            Classified::Unexpected => {
                self.history.lock().expect("history").complete(
                    id,
                    Outcome::Indeterminate,
                    completed,
                );
                self.stats
                    .unexpected
                    .push(format!("{op:?} -> {}", reply.line));
                self.pick_random_target();
                None
            }
        }
    }

    /// Random operations until `stop` is set.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> WorkerStats {
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let op = self.random_op();
            self.run_op(op);
            if let Some(rest) = self.interval.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        self.stats
    }
}
