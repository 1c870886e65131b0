//! Harness for the snapshot tests: real `raftfs node` processes on
//! 127.0.0.1 and a small pipelining client. Ports come from the shared
//! reservation in `tests/common` (a block per cluster, locked across
//! processes with `flock` and below the kernel's ephemeral range), so test
//! binaries running at the same time — other worktrees, loops of this one —
//! never talk to each other's nodes. Every process is killed when its
//! `Cluster` is dropped.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Peer ports sit this far above the client ports in the reserved block.
const PEER_PORT_OFFSET: u16 = 10;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub size: usize,
    pub base_port: u16,
    pub children: Vec<Option<Child>>,
}

impl Cluster {
    /// Write a config for `size` nodes (with `extra` TOML lines) and start them.
    pub fn start(size: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base_port = common::fresh_base_port();
        let mut text = format!(
            "election_timeout_ms = [150, 300]\nheartbeat_ms = 40\ndata_dir = {:?}\n{extra}\n",
            dir.path().join("data").display().to_string()
        );
        for i in 0..size as u16 {
            text.push_str(&format!(
                "[[node]]\nid = {}\nclient = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n",
                i + 1,
                base_port + i,
                base_port + PEER_PORT_OFFSET + i
            ));
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write config");
        let mut cluster = Cluster {
            dir,
            config_path,
            size,
            base_port,
            children: (0..size).map(|_| None).collect(),
        };
        for id in 1..=size as u64 {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn client_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + id as u16 - 1)
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

    /// Copies every node's log to a fresh directory under the system temp
    /// dir (which outlives the cluster) and returns its path.
    pub fn keep_logs(&self, label: &str) -> String {
        let kept = std::env::temp_dir().join(format!(
            "raftfs-{label}-{}-{}",
            std::process::id(),
            self.base_port
        ));
        let _ = std::fs::create_dir_all(&kept);
        for id in 1..=self.size as u64 {
            let _ = std::fs::copy(self.log_path(id), kept.join(format!("node-{id}.log")));
        }
        kept.display().to_string()
    }

    /// Every node's log without the chatty peer-link lines, last 80 lines each.
    pub fn all_logs_summary(&self) -> String {
        let mut text = String::new();
        for id in 1..=self.size as u64 {
            let log = self.log_text(id);
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("link")).collect();
            let from = lines.len().saturating_sub(80);
            text.push_str(&format!(
                "---- node {id} (running: {}) ----\n{}\n",
                self.is_running(id),
                lines[from..].join("\n")
            ));
        }
        text
    }

    pub fn start_node(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raftfs"))
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

    pub fn is_running(&self, id: u64) -> bool {
        self.children[id as usize - 1].is_some()
    }

    /// A running node that answers a read itself; waits up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in 1..=self.size as u64 {
                if !self.is_running(id) {
                    continue;
                }
                if let Ok(mut client) = Client::connect(&self.client_address(id)) {
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

    /// Waits until `predicate` holds of node `id`'s log text.
    pub fn wait_log(&self, id: u64, timeout: Duration, predicate: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if predicate(&self.log_text(id)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.size as u64 {
            self.kill(id);
        }
    }
}

/// Total bytes of the files directly in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(|item| item.ok()?.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// File names in `dir` ending with `suffix`, sorted.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(|item| item.ok()?.file_name().into_string().ok())
                .filter(|name| name.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A blocking line-protocol client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(address: &str) -> std::io::Result<Client> {
        let address = address
            .parse()
            .map_err(|_| std::io::Error::other("bad address"))?;
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        // A connect to a dead node's port can pick that very port as its
        // own ephemeral port and connect to itself (TCP simultaneous open):
        // the "reply" would be the request echoed back.
        if stream.local_addr()? == stream.peer_addr()? {
            return Err(std::io::Error::other("connected to itself"));
        }
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// One reply: the first line, plus the content after '\n' for CONTENTS.
    pub fn reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if let Some(rest) = line.strip_prefix("CONTENTS ") {
            let length: usize = rest
                .split(' ')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
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
}

/// Writes `count` values to `key-<n % keys>` through node `leader`,
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
            let content = value(m);
            request.extend_from_slice(
                format!("write key-{} {}\r\n{content}\r\n", m % keys, content.len()).as_bytes(),
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
