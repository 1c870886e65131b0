//! Harness for fault tests against real `raftfs node` processes on
//! 127.0.0.1: a cluster whose peer traffic can go through fault-injecting
//! proxies (`proxy`), process faults (kill -9 with lost-fsync, SIGSTOP /
//! SIGCONT, restart), convergence checks through the nodes' `fsm.checksum`
//! dump (SIGUSR1), and a recording client (`client`).
//!
//! Ports: a block of 20 per cluster from a per-binary counter offset by the
//! pid (as tests/common does, in the other half of each band), below the
//! ephemeral range and checked free: clients base.., real peer ports
//! base+100.., proxies base+300...
//! Every process is killed (after SIGCONT) when its `Cluster` is dropped.
#![allow(dead_code)]

pub mod client;
pub mod diagnose;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use proxy::{LinkFault, PeerProxy};

static NEXT_PORT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// A base port unique to this test binary and call, below Linux's ephemeral
/// range (32768..) so that no outgoing connection can be holding it, and
/// checked free: every port of the block is bound once before it is used.
pub fn fresh_base_port() -> u16 {
    let pid_slot = (std::process::id() % 12) as u16;
    for _ in 0..25 {
        let block = NEXT_PORT_BLOCK.fetch_add(1, Ordering::SeqCst) % 25;
        // tests/common starts at 20_000 in steps of 1000 per pid slot; this
        // harness takes the upper half of each 1000 (offset 500).
        let base = 20_000 + pid_slot * 1000 + 500 + block * 20;
        let free = (0..10u16).all(|i| {
            [0u16, 100, 300]
                .iter()
                .all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset + i)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no free block of test ports");
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftfs"))
}

/// How a cluster is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub size: usize,
    /// Peer traffic through a fault-injecting proxy per node.
    pub proxied: bool,
    /// Every node runs in lost-fsync mode; `crash` discards unsynced bytes.
    pub lose_unsynced: bool,
    pub election_timeout_ms: (u64, u64),
    pub heartbeat_ms: u64,
    pub log_level: &'static str,
}

impl Options {
    pub fn new(size: usize) -> Options {
        Options {
            size,
            proxied: false,
            lose_unsynced: false,
            election_timeout_ms: (150, 300),
            heartbeat_ms: 40,
            log_level: "info",
        }
    }
}

/// One line of a node's `fsm.checksum` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsmChecksum {
    pub applied_index: u64,
    pub version_counter: u64,
    pub files: u64,
    pub checksum: String,
}

/// Counts of what was done to the cluster.
#[derive(Clone, Debug, Default)]
pub struct FaultCounts {
    pub kills: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub one_way_cuts: u64,
    pub delays: u64,
    pub link_resets: u64,
    pub unsynced_bytes_discarded: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.kills
            + self.pauses
            + self.partitions
            + self.one_way_cuts
            + self.delays
            + self.link_resets
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub options: Options,
    pub base_port: u16,
    pub children: Vec<Option<Child>>,
    pub paused: Vec<bool>,
    pub proxies: Vec<PeerProxy>,
    /// Extra environment per node id, applied at each start.
    pub node_env: BTreeMap<u64, Vec<(String, String)>>,
    pub counts: FaultCounts,
}

impl Cluster {
    /// Writes the config (and starts the proxies) without starting nodes.
    pub fn configure(options: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base_port = fresh_base_port();
        let mut text = format!(
            "election_timeout_ms = [{}, {}]\nheartbeat_ms = {}\nfsync = true\ndata_dir = {:?}\n",
            options.election_timeout_ms.0,
            options.election_timeout_ms.1,
            options.heartbeat_ms,
            dir.path().join("data").display().to_string()
        );
        let mut proxies = Vec::new();
        for i in 0..options.size as u16 {
            let id = i as u64 + 1;
            let real_peer = format!("127.0.0.1:{}", base_port + 100 + i);
            text.push_str(&format!(
                "[[node]]\nid = {id}\nclient = \"127.0.0.1:{}\"\n",
                base_port + i
            ));
            if options.proxied {
                let proxy_port = base_port + 300 + i;
                text.push_str(&format!(
                    "peer = \"127.0.0.1:{proxy_port}\"\nlisten_peer = \"{real_peer}\"\n"
                ));
                let listen: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().expect("addr");
                let target: SocketAddr = real_peer.parse().expect("addr");
                proxies.push(PeerProxy::start(id, listen, target).expect("start proxy"));
            } else {
                text.push_str(&format!("peer = \"{real_peer}\"\n"));
            }
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write config");
        let size = options.size;
        Cluster {
            dir,
            config_path,
            options,
            base_port,
            children: (0..size).map(|_| None).collect(),
            paused: vec![false; size],
            proxies,
            node_env: BTreeMap::new(),
            counts: FaultCounts::default(),
        }
    }

    pub fn start(options: Options) -> Cluster {
        let mut cluster = Cluster::configure(options);
        for id in cluster.ids() {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.options.size as u64).collect()
    }

    pub fn client_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + id as u16 - 1)
    }

    pub fn client_addresses(&self) -> Vec<String> {
        self.ids()
            .iter()
            .map(|&id| self.client_address(id))
            .collect()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("data").join(id.to_string())
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.children[id as usize - 1].is_some()
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children[id as usize - 1].as_ref().map(Child::id)
    }

    pub fn start_node(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let mut command = Command::new(binary());
        command
            .args(["node", "--config"])
            .arg(&self.config_path)
            .args(["--id", &id.to_string()])
            .env("RUST_LOG", self.options.log_level)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if self.options.lose_unsynced {
            command.env(raftfs::storage::lost_unsynced::LOSE_UNSYNCED_ENV, "1");
        }
        for (key, value) in self.node_env.get(&id).into_iter().flatten() {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn raftfs node");
        self.children[id as usize - 1] = Some(child);
        self.paused[id as usize - 1] = false;
    }

    /// kill -9, then (in lost-fsync mode) throw away what was not fsynced.
    pub fn crash(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
            self.counts.kills += 1;
        }
        self.paused[id as usize - 1] = false;
        if self.options.lose_unsynced {
            let discarded = raftfs::storage::lost_unsynced::discard_unsynced(&self.data_dir(id))
                .expect("discard unsynced WAL bytes");
            self.counts.unsynced_bytes_discarded += discarded.bytes;
        }
    }

    pub fn signal(&self, id: u64, signal: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: sending a signal to a child this harness started.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    pub fn pause(&mut self, id: u64) {
        if self.is_running(id) && !self.paused[id as usize - 1] {
            self.signal(id, libc::SIGSTOP);
            self.paused[id as usize - 1] = true;
            self.counts.pauses += 1;
        }
    }

    pub fn resume(&mut self, id: u64) {
        if self.paused[id as usize - 1] {
            self.signal(id, libc::SIGCONT);
            self.paused[id as usize - 1] = false;
        }
    }

    fn proxy(&self, id: u64) -> &PeerProxy {
        &self.proxies[id as usize - 1]
    }

    /// Cuts every link between `side` and the rest, both ways.
    pub fn partition(&mut self, side: &[u64]) {
        for a in self.ids() {
            for b in self.ids() {
                if a != b && side.contains(&a) != side.contains(&b) {
                    self.proxy(b).set_fault(
                        a,
                        LinkFault {
                            cut: true,
                            delay_ms: 0,
                        },
                    );
                }
            }
        }
        self.counts.partitions += 1;
    }

    /// Cuts only `from → to`.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.proxy(to).set_fault(
            from,
            LinkFault {
                cut: true,
                delay_ms: 0,
            },
        );
        self.counts.one_way_cuts += 1;
    }

    pub fn delay_link(&mut self, from: u64, to: u64, delay_ms: u64) {
        self.proxy(to).set_fault(
            from,
            LinkFault {
                cut: false,
                delay_ms,
            },
        );
        self.counts.delays += 1;
    }

    pub fn reset_link(&mut self, from: u64, to: u64) {
        self.proxy(to).reset_link(from);
        self.counts.link_resets += 1;
    }

    /// Removes every network fault, resumes paused nodes, restarts crashed
    /// ones.
    pub fn heal(&mut self) {
        for proxy in &self.proxies {
            proxy.heal();
        }
        for id in self.ids() {
            self.resume(id);
            if !self.is_running(id) {
                self.start_node(id);
            }
        }
    }

    /// Asks every running node for its `fsm.checksum` and reads them back
    /// (the old file is removed first; the node renames a whole new one in).
    pub fn checksums(&self) -> BTreeMap<u64, Option<FsmChecksum>> {
        for id in self.ids() {
            let _ = std::fs::remove_file(self.data_dir(id).join("fsm.checksum"));
            self.signal(id, libc::SIGUSR1);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut result = BTreeMap::new();
        for id in self.ids() {
            let path = self.data_dir(id).join("fsm.checksum");
            let mut value = None;
            while Instant::now() < deadline {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    value = parse_checksum(&text);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            result.insert(id, value);
        }
        result
    }

    /// Waits until every node reports the same applied index and digest.
    pub fn wait_converged(&self, timeout: Duration) -> Result<FsmChecksum, String> {
        let deadline = Instant::now() + timeout;
        let mut last = BTreeMap::new();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            last = self.checksums();
            let values: Vec<&Option<FsmChecksum>> = last.values().collect();
            if let Some(Some(first)) = values.first() {
                if values.iter().all(|v| v.as_ref() == Some(first)) && first.applied_index > 0 {
                    return Ok(first.clone());
                }
            }
        }
        Err(format!("nodes did not converge: {last:?}"))
    }

    /// The node that answers a read itself, asking every running node.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in self.ids() {
                if !self.is_running(id) || self.paused[id as usize - 1] {
                    continue;
                }
                if let Ok(mut client) = client::Client::connect(&self.client_address(id)) {
                    client.set_timeout(Duration::from_millis(1500));
                    if let Ok(reply) = client.command(b"read __leader_probe__\r\n") {
                        if reply.starts_with("ERR_FILE_NOT_FOUND") || reply.starts_with("CONTENTS")
                        {
                            return Some(id);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Resident memory of a node process, in KiB.
    pub fn rss_kib(&self, id: u64) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(id)?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

fn parse_checksum(text: &str) -> Option<FsmChecksum> {
    let mut fields = BTreeMap::new();
    for pair in text.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        fields.insert(key, value);
    }
    Some(FsmChecksum {
        applied_index: fields.get("applied_index")?.parse().ok()?,
        version_counter: fields.get("version_counter")?.parse().ok()?,
        files: fields.get("files")?.parse().ok()?,
        checksum: fields.get("checksum")?.to_string(),
    })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.ids() {
            self.signal(id, libc::SIGCONT);
            if let Some(mut child) = self.children[id as usize - 1].take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var("RAFTFS_KEEP_LOGS").is_ok() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("logs kept in {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}
