//! A recorded client workload for linearizability checks: C client threads,
//! each with one connection at a time, send a random mix of write, cas,
//! delete and read on a few hot files and record every command into one
//! `raftfs::lincheck::History` (times from one shared origin).
//!
//! Recording rules (SPEC §2/§3): `ERR_REDIRECT` → the command did not take
//! effect (discarded) and the client retries at the named node as a new
//! operation; `ERR_INTERNAL`, a timeout or a dropped connection →
//! indeterminate (after a timeout or drop the connection is abandoned, since
//! a late answer could be mistaken for the next one's). Any other answer that
//! does not fit the command is collected in `unexpected` for the test to fail on.
//!
//! Contents are unique per operation (`c<client>-<seq>`), so a read names the
//! write it saw. Expiry is never used (the checker does not model it).
//!
//! Commands are encoded and answers classified as in the fault tests'
//! `worker` (one mapping); this workload differs from that one on purpose:
//! no pacing, its own mix, cas on the last version seen, and it follows any
//! redirect.
//!
//! Also `sequential_writer`: one client writing fresh files one at a time,
//! following redirects, counting failures (for the rolling-restart test), and
//! `write_pipelined` and `write_all` (for the snapshot tests).

use super::client::{ok_version, Client, ANSWER_TIMEOUT};
use super::cluster::Cluster;
use super::worker::{classify, encode, Classified};
use raftfs::lincheck::{History, Op, Outcome};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Workload {
    origin: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    unexpected: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

pub struct WorkloadResult {
    pub history: History,
    /// Operations with a definite answer.
    pub definite: usize,
    pub indeterminate: usize,
    pub discarded: usize,
    pub unexpected: Vec<String>,
}

impl WorkloadResult {
    /// Definite answers that came after `at` (from the workload's origin).
    pub fn definite_after(&self, at: Duration) -> usize {
        let at_ns = at.as_nanos() as u64;
        self.history
            .records()
            .iter()
            .filter(|r| !r.discarded)
            .filter(|r| {
                matches!(&r.completion, Some((outcome, ns)) if *outcome != Outcome::Indeterminate && *ns > at_ns)
            })
            .count()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} operations: {} definite, {} indeterminate, {} redirected",
            self.history.len(),
            self.definite,
            self.indeterminate,
            self.discarded
        )
    }
}

impl Workload {
    /// Starts `clients` threads on files `hot-0..hot-<files>` of `cluster`.
    pub fn start(cluster: &Cluster, clients: u64, files: usize, seed: u64) -> Workload {
        let addresses: Vec<String> = cluster.ids().map(|id| cluster.client_address(id)).collect();
        Workload::start_on(addresses, clients, files, seed)
    }

    /// As `start`, the clients first connecting to `addresses` (they follow
    /// redirects anywhere).
    pub fn start_on(addresses: Vec<String>, clients: u64, files: usize, seed: u64) -> Workload {
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::new()));
        let unexpected = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let mut worker = Worker {
                    client,
                    addresses: addresses.clone(),
                    next_address: client as usize % addresses.len(),
                    origin,
                    history: history.clone(),
                    unexpected: unexpected.clone(),
                    rng: rand_pcg::Pcg64::seed_from_u64(seed ^ (client << 32)),
                    files,
                    known_versions: vec![0; files],
                    sequence: 0,
                };
                let stop = stop.clone();
                std::thread::spawn(move || worker.run(&stop))
            })
            .collect();
        Workload {
            origin,
            stop,
            history,
            unexpected,
            threads,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Stops every client (each finishes its command in flight) and returns
    /// the history.
    pub fn finish(self) -> WorkloadResult {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a workload client panicked");
        }
        let history = std::mem::take(&mut *self.history.lock().expect("history"));
        let unexpected = std::mem::take(&mut *self.unexpected.lock().expect("unexpected"));
        let mut result = WorkloadResult {
            definite: 0,
            indeterminate: 0,
            discarded: 0,
            unexpected,
            history: History::new(),
        };
        for record in history.records() {
            if record.discarded {
                result.discarded += 1;
            } else if matches!(record.completion, Some((Outcome::Indeterminate, _)) | None) {
                result.indeterminate += 1;
            } else {
                result.definite += 1;
            }
        }
        result.history = history;
        result
    }
}

struct Worker {
    client: u64,
    addresses: Vec<String>,
    next_address: usize,
    origin: Instant,
    history: Arc<Mutex<History>>,
    unexpected: Arc<Mutex<Vec<String>>>,
    rng: rand_pcg::Pcg64,
    files: usize,
    /// The last version this client saw for each file (cas uses it).
    known_versions: Vec<u64>,
    sequence: u64,
}

impl Worker {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut connection: Option<Client> = None;
        let mut address = self.addresses[self.next_address].clone();
        while !stop.load(Ordering::SeqCst) {
            let client = match connection.as_mut() {
                Some(client) => client,
                None => match Client::connect(&address) {
                    Ok(mut client) => {
                        client.set_timeout(ANSWER_TIMEOUT);
                        connection.insert(client)
                    }
                    Err(_) => {
                        address = self.rotate();
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            let file = self.rng.gen_range(0..self.files);
            let op = self.next_op(file);
            let bytes = encode(&op);
            let id = {
                let at = self.now_ns();
                self.history
                    .lock()
                    .expect("history")
                    .invoke(self.client, op.clone(), at)
            };
            let result = client.command_parts(&bytes);
            let at = self.now_ns();
            let history_handle = self.history.clone();
            let mut history = history_handle.lock().expect("history");
            match result {
                Err(_) => {
                    history.complete(id, Outcome::Indeterminate, at);
                    connection = None;
                    address = self.rotate();
                }
                Ok(reply) => match classify(&op, &reply) {
                    Classified::Redirect(target) => {
                        history.discard(id);
                        connection = None;
                        address = target;
                    }
                    Classified::Outcome(outcome) => {
                        if let Outcome::Written { version }
                        | Outcome::VersionMismatch { current: version }
                        | Outcome::Contents { version, .. } = outcome
                        {
                            self.known_versions[file] = version;
                        }
                        history.complete(id, outcome, at);
                    }
                    Classified::CommandError | Classified::Unexpected => {
                        history.complete(id, Outcome::Indeterminate, at);
                        self.unexpected
                            .lock()
                            .expect("unexpected")
                            .push(format!("client {}: {reply:?}", self.client));
                        connection = None;
                    }
                },
            }
        }
    }

    fn rotate(&mut self) -> String {
        self.next_address = (self.next_address + 1) % self.addresses.len();
        self.addresses[self.next_address].clone()
    }

    fn next_op(&mut self, file: usize) -> Op {
        let name = format!("hot-{file}").into_bytes();
        self.sequence += 1;
        let content = format!("c{}-{}", self.client, self.sequence).into_bytes();
        let roll = self.rng.gen_range(0..100);
        if roll < 30 {
            Op::Write { name, content }
        } else if roll < 60 {
            Op::Cas {
                name,
                expected_version: self.known_versions[file],
                content,
            }
        } else if roll < 68 {
            Op::Delete { name }
        } else {
            Op::Read { name }
        }
    }
}

/// What `sequential_writer` saw.
pub struct WriterOutcome {
    pub acknowledged: Vec<(String, String, u64)>,
    pub redirects: usize,
    pub dropped: usize,
    pub errors: Vec<String>,
}

/// One client writing `rolling-<n>` one at a time until `stop`, following
/// redirects and moving on from closed connections.
pub fn sequential_writer(
    addresses: &[String],
    stop: &std::sync::atomic::AtomicBool,
) -> WriterOutcome {
    let mut outcome = WriterOutcome {
        acknowledged: Vec::new(),
        redirects: 0,
        dropped: 0,
        errors: Vec::new(),
    };
    let mut next = 0usize;
    let mut address = addresses[0].clone();
    let mut connection: Option<Client> = None;
    let mut n = 0;
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let client = match connection.as_mut() {
            Some(client) => client,
            None => match Client::connect(&address) {
                Ok(mut client) => {
                    client.set_timeout(ANSWER_TIMEOUT);
                    connection.insert(client)
                }
                Err(_) => {
                    next = (next + 1) % addresses.len();
                    address = addresses[next].clone();
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let name = format!("rolling-{n}");
        let content = format!("value {n}");
        match client.write(&name, &content) {
            Ok(reply) => {
                if let Some(version) = ok_version(&reply) {
                    outcome.acknowledged.push((name, content, version));
                    n += 1;
                } else if let Some(target) = reply.strip_prefix("ERR_REDIRECT ") {
                    outcome.redirects += 1;
                    address = target.to_string();
                    connection = None;
                } else {
                    outcome.errors.push(format!(
                        "{name} at {address} after {:?}: {reply}",
                        started.elapsed()
                    ));
                    n += 1;
                }
            }
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.kind() == std::io::ErrorKind::TimedOut =>
            {
                outcome.errors.push(format!("{name}: no answer within 6 s"));
                connection = None;
                n += 1;
            }
            Err(_) => {
                // Closed with the command unanswered: its fate is unknown, so
                // the name is never reused.
                outcome.dropped += 1;
                connection = None;
                n += 1;
                next = (next + 1) % addresses.len();
                address = addresses[next].clone();
            }
        }
    }
    outcome
}

/// Writes `count` values to `key-<n % keys>` through the node at `address`,
/// pipelined `depth` deep; the value of write `n` is `value(n)`. Returns the
/// number acknowledged `OK`; stops at the first other answer.
pub fn write_pipelined(
    address: &str,
    first: u64,
    count: u64,
    keys: u64,
    depth: u64,
    value: impl Fn(u64) -> String,
) -> u64 {
    let Ok(mut client) = Client::connect(address) else {
        return 0;
    };
    let mut acknowledged = 0;
    let mut n = first;
    let end = first + count;
    while n < end {
        let batch_end = (n + depth).min(end);
        let mut request = Vec::new();
        for m in n..batch_end {
            request.extend_from_slice(
                super::client::write_command(&format!("key-{}", m % keys), &value(m)).as_bytes(),
            );
        }
        if client.send(&request).is_err() {
            return acknowledged;
        }
        for _ in n..batch_end {
            match client.reply() {
                Ok(reply) if reply.starts_with("OK ") => acknowledged += 1,
                _ => return acknowledged,
            }
        }
        n = batch_end;
    }
    acknowledged
}

/// Writes `first..first + count` (write `n` puts `value(n)` into
/// `key-<n % keys>`, pipelined `depth` deep) until every one is
/// acknowledged, within 60 s: on a leader change (a loaded machine) it finds
/// the new leader and resumes from the first write not acknowledged.
/// Re-sending the same values in the same order keeps each key's last value
/// `value` of its last `n`, whatever became of the write whose answer was
/// lost. `leader` follows the leader.
pub fn write_all(
    cluster: &Cluster,
    leader: &mut u64,
    first: u64,
    count: u64,
    keys: u64,
    depth: u64,
    value: impl Fn(u64) -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let end = first + count;
    let mut next = first;
    loop {
        let address = cluster.client_address(*leader);
        next += write_pipelined(&address, next, end - next, keys, depth, &value);
        if next == end {
            return;
        }
        assert!(Instant::now() < deadline, "writes stalled at {next}");
        *leader = cluster
            .wait_leader(Duration::from_secs(10))
            .expect("a leader");
    }
}
