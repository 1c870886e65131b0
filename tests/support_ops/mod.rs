//! Harness for tests/ops.rs: real `raftfs node` processes on 127.0.0.1 with
//! a cluster.toml, a tiny HTTP GET, and a blocking fs client.
//!
//! Ports: a block of 400 (below 32768) derived from the test binary's pid, then a
//! counter; a block is used only if every port in it binds now (so a port
//! left busy by another test binary is skipped). Every process is killed when
//! its `OpsCluster` is dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// `count` consecutive free ports (checked by binding each).
pub fn free_ports(count: u16) -> u16 {
    // Below the kernel's ephemeral range (32768..), where outgoing
    // connections of other tests would otherwise collide.
    let pid_slot = (std::process::id() % 28) as u16;
    for _ in 0..100 {
        let block = NEXT_BLOCK.fetch_add(1, Ordering::SeqCst);
        let base = 21_000 + pid_slot * 400 + (block * 40) % 400;
        let all_free =
            (0..count).all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free block of {count} ports");
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftfs"))
}

pub struct OpsCluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub size: u64,
    pub base_port: u16,
    children: Vec<Option<Child>>,
}

impl OpsCluster {
    /// Writes a config for `size` nodes; `with_metrics(id)` says which get a
    /// metrics listener. Nothing is started.
    pub fn configure(size: u64, with_metrics: impl Fn(u64) -> bool) -> OpsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base_port = free_ports(30);
        let mut text = format!(
            "election_timeout_ms = [150, 300]\nheartbeat_ms = 40\nfsync = false\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        );
        for id in 1..=size {
            let offset = id as u16 - 1;
            text.push_str(&format!(
                "[[node]]\nid = {id}\nclient = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n",
                base_port + offset,
                base_port + 10 + offset
            ));
            if with_metrics(id) {
                text.push_str(&format!(
                    "metrics = \"127.0.0.1:{}\"\n",
                    base_port + 20 + offset
                ));
            }
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write config");
        OpsCluster {
            dir,
            config_path,
            size,
            base_port,
            children: (0..size).map(|_| None).collect(),
        }
    }

    pub fn start(size: u64, with_metrics: impl Fn(u64) -> bool) -> OpsCluster {
        let mut cluster = OpsCluster::configure(size, with_metrics);
        for id in 1..=size {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn client_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + id as u16 - 1)
    }

    pub fn metrics_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + 20 + id as u16 - 1)
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
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

    /// SIGTERM, then wait for the exit (None if it did not exit in time).
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> Option<ExitStatus> {
        let child = self.children[id as usize - 1].as_mut()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.children[id as usize - 1] = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// `raftfs status --config ... [--json]`: (exit code, stdout).
    pub fn status(&self, json: bool) -> (i32, String) {
        let mut command = Command::new(binary());
        command.args(["status", "--config"]).arg(&self.config_path);
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("run raftfs status");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// Polls `GET /health` on node `id` until it answers 200.
    pub fn wait_healthy(&self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(&self.metrics_address(id), "/health") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The leader, as every node with metrics sees it (None while they
    /// disagree or none is known).
    pub fn leader(&self) -> Option<u64> {
        let mut seen = None;
        for id in 1..=self.size {
            let (_, body) = http_get(&self.metrics_address(id), "/metrics").ok()?;
            let leader = metric(&body, "raftfs_leader_id")? as u64;
            if leader == 0 || seen.is_some_and(|s| s != leader) {
                return None;
            }
            seen = Some(leader);
        }
        seen
    }
}

impl Drop for OpsCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 request with `method`; (status code, body).
pub fn http_request(address: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(address, "GET", path)
}

/// The value of the first sample named exactly `name` (with `{labels}` if
/// given as part of `name`).
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok())?
        })
}

/// A blocking fs client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(address: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(6)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and reads one reply line (content lines included
    /// for CONTENTS).
    pub fn command(&mut self, bytes: &[u8]) -> std::io::Result<String> {
        self.writer.write_all(bytes)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.starts_with("CONTENTS") {
            let mut content = String::new();
            self.reader.read_line(&mut content)?;
            line.push_str(&content);
        }
        Ok(line)
    }

    pub fn write(&mut self, name: &str, content: &str) -> std::io::Result<String> {
        self.command(format!("write {name} {}\r\n{content}\r\n", content.len()).as_bytes())
    }
}
