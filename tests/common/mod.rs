//! Test harness for end-to-end tests: real `raftfs node` processes on
//! 127.0.0.1, each cluster on its own ports, and a small blocking client.
//!
//! Every process is killed when its `Cluster` is dropped, so a failing test
//! leaves nothing running. Ports come from a per-process counter offset by the
//! test binary's pid, so parallel test binaries do not collide.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

static NEXT_PORT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// A base port unique to this test binary and call: client ports base..,
/// peer ports base+100.., metrics base+200...
pub fn fresh_base_port() -> u16 {
    let block = NEXT_PORT_BLOCK.fetch_add(1, Ordering::SeqCst);
    let pid_slot = (std::process::id() % 40) as u16;
    20_000 + pid_slot * 1000 + block * 20 % 1000
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub size: usize,
    pub base_port: u16,
    pub children: Vec<Option<Child>>,
    pub fsync: bool,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftfs"))
}

impl Cluster {
    /// Write a config for `size` nodes and start them all.
    pub fn start(size: usize) -> Cluster {
        let mut cluster = Cluster::configure(size, "");
        for id in 1..=size as u64 {
            cluster.start_node(id);
        }
        cluster
    }

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
                base_port + 100 + i,
                base_port + 200 + i
            ));
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write config");
        Cluster { dir, config_path, size, base_port, children: (0..size).map(|_| None).collect(), fsync: true }
    }

    pub fn client_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + id as u16 - 1)
    }

    pub fn metrics_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + 200 + id as u16 - 1)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("data").join(id.to_string())
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

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
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, id: u64, signal: i32) {
        if let Some(child) = &self.children[id as usize - 1] {
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Wait for a node process to exit by itself; its exit status.
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

    /// The node that answers a write itself (not with a redirect), found by
    /// asking every running node; waits up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in 1..=self.size as u64 {
                if self.children[id as usize - 1].is_none() {
                    continue;
                }
                if let Ok(mut client) = Client::connect(&self.client_address(id)) {
                    client.set_timeout(Duration::from_millis(1500));
                    if let Ok(reply) = client.command(b"read __leader_probe__\r\n") {
                        if reply.starts_with("ERR_FILE_NOT_FOUND") || reply.starts_with("CONTENTS") {
                            return Some(id);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
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
        let stream = TcpStream::connect_timeout(&address.parse().expect("address"), Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        Ok(Client { reader: BufReader::new(stream), writer })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.writer.set_read_timeout(Some(timeout));
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Read one reply: its first line, plus content for CONTENTS (returned
    /// after the line, separated by '\n').
    pub fn reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if let Some(rest) = line.strip_prefix("CONTENTS ") {
            let length: usize = rest.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            let mut content = vec![0u8; length + 2];
            self.reader.read_exact(&mut content)?;
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
        self.command(format!("write {name} {}\r\n{content}\r\n", content.len()).as_bytes())
    }

    pub fn read(&mut self, name: &str) -> std::io::Result<String> {
        self.command(format!("read {name}\r\n").as_bytes())
    }
}

/// Follow redirects from any node to run one command; retries on errors
/// until `timeout`. Returns the final reply.
pub fn command_anywhere(cluster: &Cluster, command: &[u8], timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut address = cluster.client_address(1);
    let mut next = 1u64;
    while Instant::now() < deadline {
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
        next = next % cluster.size as u64 + 1;
        address = cluster.client_address(next);
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

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
