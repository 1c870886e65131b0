//! Test harness for end-to-end tests: real `raftfs node` processes on
//! 127.0.0.1, each cluster on its own ports, and a small blocking client.
//!
//! Ports: every cluster takes a fresh block of `PORT_BLOCK_SIZE` ports below
//! the kernel's ephemeral range (so outgoing connections never occupy them).
//! A block is reserved across processes by an exclusive `flock` on a file in
//! the temp dir, held until this process exits (the kernel drops it even on
//! kill -9), and every port of the block is checked free by binding it before
//! use. The search starts at a block derived from the pid, so parallel test
//! binaries start far apart and then skip each other's blocks.
//!
//! Every process is killed (after SIGCONT) when its `Cluster` is dropped, so a
//! failing test leaves nothing running; if the test is panicking, the drop
//! first prints the tail of every node's log.
//!
//! Leaves out: anything about what the nodes should answer; tests decide.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The first port of the first block.
const PORT_RANGE_START: u16 = 10_000;
/// Ports per block: client ports at +0.., peer ports at +10.., metrics at +20...
pub const PORT_BLOCK_SIZE: u16 = 50;
/// Blocks available: up to port 32_000, below Linux's ephemeral range (32768..).
const PORT_BLOCKS: u32 = 440;
/// Offsets inside a block.
const PEER_PORT_OFFSET: u16 = 10;
const METRICS_PORT_OFFSET: u16 = 20;

/// Lock files of the blocks this process reserved (kept open until exit).
static HELD_BLOCKS: Mutex<Vec<File>> = Mutex::new(Vec::new());
/// Next block index to try, relative to the pid-derived start.
static NEXT_BLOCK: Mutex<u32> = Mutex::new(0);
/// Serialises the tests of one binary (see `serial`).
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs tests of one binary one at a time: parallel 5-node clusters on a
/// 2-core machine make election timing flaky. Survives a poisoned lock (a
/// failed test must not fail the next ones).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn block_base(block: u32) -> u16 {
    PORT_RANGE_START + (block % PORT_BLOCKS) as u16 * PORT_BLOCK_SIZE
}

/// Tries to reserve block `block` for this process: an exclusive lock on its
/// file, then every port bound once. The lock file is returned on success.
fn try_reserve_block(block: u32) -> Option<File> {
    let directory = std::env::temp_dir().join("raftfs-test-ports");
    std::fs::create_dir_all(&directory).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(directory.join(format!("block-{}.lock", block % PORT_BLOCKS)))
        .ok()?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return None;
    }
    let base = block_base(block);
    let all_free = (base..base + PORT_BLOCK_SIZE).all(port_is_free);
    all_free.then_some(file)
}

/// Whether `port` can be bound on 127.0.0.1 right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Reserves a group of blocks `block, block + strides[1], ...` (relative
/// offsets in blocks; the first stride is 0) and returns the first block's
/// base port. Panics only if no group in the whole range is free.
pub fn reserve_port_blocks(strides: &[u32]) -> u16 {
    let start = std::process::id().wrapping_mul(7919) % PORT_BLOCKS;
    let mut next = NEXT_BLOCK.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..PORT_BLOCKS {
        let block = (start + *next) % PORT_BLOCKS;
        *next += 1;
        let max_stride = strides.iter().copied().max().unwrap_or(0);
        if block + max_stride >= PORT_BLOCKS {
            continue;
        }
        let mut files = Vec::new();
        for stride in strides {
            match try_reserve_block(block + stride) {
                Some(file) => files.push(file),
                None => break,
            }
        }
        if files.len() == strides.len() {
            HELD_BLOCKS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(files);
            return block_base(block);
        }
        // Dropping `files` releases the partial reservation.
    }
    panic!("no free port block between {PORT_RANGE_START} and 32000");
}

/// A fresh block of ports for one cluster of up to 10 nodes.
pub fn fresh_base_port() -> u16 {
    reserve_port_blocks(&[0])
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftfs"))
}

/// A cluster of `raftfs node` processes sharing one cluster.toml.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub size: usize,
    pub base_port: u16,
    pub children: Vec<Option<Child>>,
    /// Nodes sent SIGSTOP and not yet SIGCONT.
    pub stopped: Vec<bool>,
}

impl Cluster {
    /// Writes a config for `size` nodes and starts them all.
    pub fn start(size: usize) -> Cluster {
        let mut cluster = Cluster::configure(size, "");
        for id in 1..=size as u64 {
            cluster.start_node(id);
        }
        cluster
    }

    /// Writes a config for `size` nodes (with `extra` top-level TOML lines)
    /// without starting anything.
    pub fn configure(size: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base_port = fresh_base_port();
        let mut text = format!(
            "election_timeout_ms = [150, 300]\nheartbeat_ms = 40\nfsync = true\ndata_dir = {:?}\n{extra}\n",
            dir.path().join("data").display().to_string()
        );
        for i in 0..size as u16 {
            text.push_str(&format!(
                "[[node]]\nid = {}\nclient = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nmetrics = \"127.0.0.1:{}\"\n",
                i + 1,
                base_port + i,
                base_port + PEER_PORT_OFFSET + i,
                base_port + METRICS_PORT_OFFSET + i
            ));
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write config");
        Cluster {
            dir,
            config_path,
            size,
            base_port,
            children: (0..size).map(|_| None).collect(),
            stopped: vec![false; size],
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> {
        1..=self.size as u64
    }

    pub fn client_port(&self, id: u64) -> u16 {
        self.base_port + id as u16 - 1
    }

    pub fn client_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.client_port(id))
    }

    pub fn peer_port(&self, id: u64) -> u16 {
        self.base_port + PEER_PORT_OFFSET + id as u16 - 1
    }

    pub fn metrics_address(&self, id: u64) -> String {
        format!(
            "127.0.0.1:{}",
            self.base_port + METRICS_PORT_OFFSET + id as u16 - 1
        )
    }

    /// The node whose client address is `address`, if any.
    pub fn id_of_address(&self, address: &str) -> Option<u64> {
        self.ids().find(|&id| self.client_address(id) == address)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("data").join(id.to_string())
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// Whether node `id` has a process that was not killed or seen exiting.
    pub fn is_running(&self, id: u64) -> bool {
        self.children[id as usize - 1].is_some()
    }

    /// Starts node `id`; stdout and stderr are appended to its log file.
    pub fn start_node(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let child = Command::new(binary())
            .args(["node", "--config"])
            .arg(&self.config_path)
            .args(["--id", &id.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn raftfs node");
        self.children[id as usize - 1] = Some(child);
        self.stopped[id as usize - 1] = false;
    }

    /// kill -9 node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped[id as usize - 1] = false;
    }

    /// Sends `signal` to node `id`'s process (SIGSTOP/SIGCONT are tracked).
    pub fn signal(&mut self, id: u64, signal: i32) {
        if let Some(child) = &self.children[id as usize - 1] {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
            if signal == libc::SIGSTOP {
                self.stopped[id as usize - 1] = true;
            } else if signal == libc::SIGCONT {
                self.stopped[id as usize - 1] = false;
            }
        }
    }

    /// Waits for node `id` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.children[id as usize - 1].as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children[id as usize - 1] = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Prints the last `lines` lines of every node's log to stderr.
    pub fn print_logs(&self, lines: usize) {
        for id in self.ids() {
            let text = self.log_text(id);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            eprintln!(
                "---- node {id} log ({} lines, last {}) ----",
                all.len(),
                all.len() - from
            );
            for line in &all[from..] {
                eprintln!("{line}");
            }
        }
    }

    /// The node that answers a read itself (not with a redirect), found by
    /// asking every running, unstopped node; waits up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        self.wait_leader_among(&self.ids().collect::<Vec<_>>(), timeout)
    }

    /// `wait_leader` restricted to `candidates`.
    pub fn wait_leader_among(&self, candidates: &[u64], timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for &id in candidates {
                if !self.is_running(id) || self.stopped[id as usize - 1] {
                    continue;
                }
                if let Ok(mut client) = Client::connect(&self.client_address(id)) {
                    client.set_timeout(Duration::from_millis(1500));
                    if let Ok(reply) = client.command(b"read __leader_probe__\r\n") {
                        if reply.starts_with("ERR_FILE_NOT_FOUND") || reply.starts_with("CONTENTS")
                        {
                            return Some(id);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        None
    }

    /// A client connected to the leader, waiting up to `timeout` for one.
    pub fn leader_client(&self, timeout: Duration) -> (u64, Client) {
        let leader = self.wait_leader(timeout).expect("a leader");
        let client = Client::connect(&self.client_address(leader)).expect("connect to the leader");
        (leader, client)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs(60);
        }
        for id in 1..=self.size as u64 {
            self.signal(id, libc::SIGCONT);
            self.kill(id);
        }
    }
}

/// A blocking line-protocol client.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Client {
    pub fn connect(address: &str) -> std::io::Result<Client> {
        let address: std::net::SocketAddr = address
            .parse()
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.writer.set_read_timeout(Some(timeout));
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads exactly `expected.len()` bytes and returns them (for byte-exact
    /// checks).
    pub fn read_exact_bytes(&mut self, length: usize) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; length];
        self.reader.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// Reads one reply: its first line, plus content for CONTENTS (returned
    /// after the line, separated by '\n').
    pub fn reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with('\n') {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if let Some(rest) = line.strip_prefix("CONTENTS ") {
            let length: usize = rest
                .split(' ')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let mut content = vec![0u8; length + 2];
            self.reader.read_exact(&mut content)?;
            if &content[length..] != b"\r\n" {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            content.truncate(length);
            return Ok(format!("{line}\n{}", String::from_utf8_lossy(&content)));
        }
        Ok(line)
    }

    pub fn command(&mut self, bytes: &[u8]) -> std::io::Result<String> {
        self.send(bytes)?;
        self.reply()
    }

    pub fn write(&mut self, name: &str, content: &str) -> std::io::Result<String> {
        self.command(write_command(name, content).as_bytes())
    }

    pub fn read(&mut self, name: &str) -> std::io::Result<String> {
        self.command(format!("read {name}\r\n").as_bytes())
    }
}

pub fn write_command(name: &str, content: &str) -> String {
    format!("write {name} {}\r\n{content}\r\n", content.len())
}

/// Follows redirects from any running node to run one command; retries on
/// connection errors, timeouts and `ERR_INTERNAL` until `timeout`. Returns
/// the final reply. Only for commands whose repetition is harmless (reads,
/// or writes whose reply the caller does not rely on being the first
/// attempt's).
pub fn command_anywhere(cluster: &Cluster, command: &[u8], timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut next = 1u64;
    let mut address = cluster.client_address(next);
    while Instant::now() < deadline {
        let usable = cluster
            .id_of_address(&address)
            .is_some_and(|id| cluster.is_running(id) && !cluster.stopped[id as usize - 1]);
        if usable {
            if let Ok(mut client) = Client::connect(&address) {
                client.set_timeout(Duration::from_secs(6));
                if let Ok(reply) = client.command(command) {
                    if let Some(target) = reply.strip_prefix("ERR_REDIRECT ") {
                        address = target.to_string();
                        continue;
                    }
                    if reply != "ERR_INTERNAL" {
                        return Some(reply);
                    }
                }
            }
        }
        next = next % cluster.size as u64 + 1;
        address = cluster.client_address(next);
        std::thread::sleep(Duration::from_millis(30));
    }
    None
}

/// Waits up to 5 s for `path` to exist.
pub fn wait_for(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The version of an `OK VERSION` answer.
pub fn ok_version(reply: &str) -> Option<u64> {
    reply.strip_prefix("OK ")?.parse().ok()
}
