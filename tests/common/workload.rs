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
//! Also `sequential_writer`: one client writing fresh files one at a time,
//! following redirects, counting failures (for the rolling-restart test).

use crate::common::{ok_version, Client, Cluster};
use raftfs::lincheck::{History, Op, Outcome};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client waits for one answer: SPEC §3's 5 s plus slack.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(6);

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
        let origin = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::new()));
        let unexpected = Arc::new(Mutex::new(Vec::new()));
        let addresses: Vec<String> = cluster.ids().map(|id| cluster.client_address(id)).collect();
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

enum Kind {
    Write,
    Cas,
    Delete,
    Read,
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
            let (kind, op, bytes) = self.next_command(file);
            let id = {
                let at = self.now_ns();
                self.history
                    .lock()
                    .expect("history")
                    .invoke(self.client, op, at)
            };
            let result = client.command(&bytes);
            let at = self.now_ns();
            let history_handle = self.history.clone();
            let mut history = history_handle.lock().expect("history");
            match result {
                Err(_) => {
                    history.complete(id, Outcome::Indeterminate, at);
                    connection = None;
                    address = self.rotate();
                }
                Ok(reply) => {
                    if let Some(target) = reply.strip_prefix("ERR_REDIRECT ") {
                        history.discard(id);
                        connection = None;
                        address = target.to_string();
                        continue;
                    }
                    match parse(&kind, &reply) {
                        Some(outcome) => {
                            if let Outcome::Written { version }
                            | Outcome::VersionMismatch { current: version }
                            | Outcome::Contents { version, .. } = outcome
                            {
                                self.known_versions[file] = version;
                            }
                            history.complete(id, outcome, at);
                        }
                        None => {
                            history.complete(id, Outcome::Indeterminate, at);
                            self.unexpected
                                .lock()
                                .expect("unexpected")
                                .push(format!("client {}: {reply:?}", self.client));
                            connection = None;
                        }
                    }
                }
            }
        }
    }

    fn rotate(&mut self) -> String {
        self.next_address = (self.next_address + 1) % self.addresses.len();
        self.addresses[self.next_address].clone()
    }

    fn next_command(&mut self, file: usize) -> (Kind, Op, Vec<u8>) {
        let name = format!("hot-{file}");
        self.sequence += 1;
        let content = format!("c{}-{}", self.client, self.sequence);
        let roll = self.rng.gen_range(0..100);
        if roll < 30 {
            let bytes = format!("write {name} {}\r\n{content}\r\n", content.len());
            let op = Op::Write {
                name: name.into_bytes(),
                content: content.into_bytes(),
            };
            (Kind::Write, op, bytes.into_bytes())
        } else if roll < 60 {
            let expected = self.known_versions[file];
            let bytes = format!("cas {name} {expected} {}\r\n{content}\r\n", content.len());
            let op = Op::Cas {
                name: name.into_bytes(),
                expected_version: expected,
                content: content.into_bytes(),
            };
            (Kind::Cas, op, bytes.into_bytes())
        } else if roll < 68 {
            let bytes = format!("delete {name}\r\n");
            (
                Kind::Delete,
                Op::Delete {
                    name: name.into_bytes(),
                },
                bytes.into_bytes(),
            )
        } else {
            let bytes = format!("read {name}\r\n");
            (
                Kind::Read,
                Op::Read {
                    name: name.into_bytes(),
                },
                bytes.into_bytes(),
            )
        }
    }
}

/// The lincheck outcome of `reply` to a command of `kind`; `None` for an
/// answer the command cannot get (ERR_CMD_ERR, garbage).
fn parse(kind: &Kind, reply: &str) -> Option<Outcome> {
    if reply == "ERR_INTERNAL" {
        return Some(Outcome::Indeterminate);
    }
    if reply == "ERR_FILE_NOT_FOUND" && !matches!(kind, Kind::Write) {
        return Some(Outcome::NotFound);
    }
    match kind {
        Kind::Write | Kind::Cas => {
            if let Some(version) = reply.strip_prefix("OK ") {
                return version
                    .parse()
                    .ok()
                    .map(|version| Outcome::Written { version });
            }
            let current = reply.strip_prefix("ERR_VERSION ")?;
            if matches!(kind, Kind::Cas) {
                return current
                    .parse()
                    .ok()
                    .map(|current| Outcome::VersionMismatch { current });
            }
            None
        }
        Kind::Delete => (reply == "OK").then_some(Outcome::Deleted),
        Kind::Read => {
            let (line, content) = reply.split_once('\n')?;
            let version = line
                .strip_prefix("CONTENTS ")?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some(Outcome::Contents {
                version,
                content: content.as_bytes().to_vec(),
            })
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
