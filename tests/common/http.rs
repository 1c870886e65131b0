//! The nodes' HTTP side (metrics, health) and `raftfs status`, for the
//! operations tests: one HTTP/1.1 request, a Prometheus sample by name, and
//! `Cluster` waits built on them.
//!
//! Leaves out: what the numbers should be (tests decide).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::process::binary;

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

impl Cluster {
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

    /// The leader as every node's `/metrics` names it (None while they
    /// disagree or none is known; every node needs a metrics listener).
    pub fn metrics_leader(&self) -> Option<u64> {
        let mut seen = None;
        for id in self.ids() {
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
