//! A cluster of real `raftfs node` processes on 127.0.0.1 sharing one
//! cluster.toml in a temp dir: its configuration (`Options`), starting,
//! killing, signalling and restarting nodes, their logs, and waiting for a
//! leader.
//!
//! Ports come from one reserved block per cluster (`ports`). Every process is
//! killed (after SIGCONT) when its `Cluster` is dropped, so a failing test
//! leaves nothing running; if the test is panicking the drop first prints the
//! tail of every node's log, and with `RAFTFS_KEEP_LOGS` set the temp dir is
//! kept. Peer traffic can go through fault-injecting proxies (`proxy`; the
//! faults themselves are in `faults`).
//!
//! Leaves out: anything about what the nodes should answer; tests decide.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::client::{Client, ANSWER_TIMEOUT};
use super::faults::FaultCounts;
use super::ports::{
    fresh_base_port, CLIENT_PORT_OFFSET, METRICS_PORT_OFFSET, NODES_PER_BLOCK, PEER_PORT_OFFSET,
    PROXY_PORT_OFFSET,
};
use super::process::{self, binary};
use super::proxy::PeerProxy;

/// Serialises the tests of one binary (see `serial`).
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs tests of one binary one at a time: parallel clusters on a 2-core
/// machine make election timing flaky. Survives a poisoned lock (a failed
/// test must not fail the next ones).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a cluster is set up. `Options::new` is a plain production-like
/// cluster; tests change fields (or use the builder methods).
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes, 1..=`NODES_PER_BLOCK`.
    pub size: usize,
    pub election_timeout_ms: (u64, u64),
    pub heartbeat_ms: u64,
    pub fsync: bool,
    /// Which nodes get a metrics listener.
    pub metrics: fn(u64) -> bool,
    /// Peer traffic through a fault-injecting proxy per node.
    pub proxied: bool,
    /// Every node runs in lost-fsync mode; `kill` discards unsynced bytes.
    pub lose_unsynced: bool,
    /// `RUST_LOG` of the nodes.
    pub log_level: &'static str,
    /// Extra top-level TOML lines.
    pub extra: String,
}

fn no_node(_: u64) -> bool {
    false
}

fn every_node(_: u64) -> bool {
    true
}

impl Options {
    /// `size` nodes, elections in 150..300 ms, heartbeats every 40 ms, fsync
    /// on, no metrics listeners, no proxies, `RUST_LOG=info`.
    pub fn new(size: usize) -> Options {
        Options {
            size,
            election_timeout_ms: (150, 300),
            heartbeat_ms: 40,
            fsync: true,
            metrics: no_node,
            proxied: false,
            lose_unsynced: false,
            log_level: "info",
            extra: String::new(),
        }
    }

    /// A metrics listener on every node.
    pub fn with_metrics(mut self) -> Options {
        self.metrics = every_node;
        self
    }

    pub fn fsync(mut self, fsync: bool) -> Options {
        self.fsync = fsync;
        self
    }

    pub fn extra(mut self, extra: &str) -> Options {
        self.extra = extra.to_string();
        self
    }

    /// The cluster.toml text for clusters at `base_port` with data in
    /// `data_dir`, listing every node.
    fn config_text(&self, base_port: u16, data_dir: &Path) -> String {
        let ids: Vec<u64> = (1..=self.size as u64).collect();
        self.config_text_of(&ids, base_port, data_dir)
    }

    /// The cluster.toml text listing the nodes `ids` only.
    fn config_text_of(&self, ids: &[u64], base_port: u16, data_dir: &Path) -> String {
        let mut text = format!(
            "election_timeout_ms = [{}, {}]\nheartbeat_ms = {}\nfsync = {}\ndata_dir = {:?}\n{}\n",
            self.election_timeout_ms.0,
            self.election_timeout_ms.1,
            self.heartbeat_ms,
            self.fsync,
            data_dir.display().to_string(),
            self.extra
        );
        for &id in ids {
            let port = |offset: u16| base_port + offset + id as u16 - 1;
            text.push_str(&format!(
                "[[node]]\nid = {id}\nclient = \"127.0.0.1:{}\"\n",
                port(CLIENT_PORT_OFFSET)
            ));
            let real_peer = format!("127.0.0.1:{}", port(PEER_PORT_OFFSET));
            if self.proxied {
                text.push_str(&format!(
                    "peer = \"127.0.0.1:{}\"\nlisten_peer = \"{real_peer}\"\n",
                    port(PROXY_PORT_OFFSET)
                ));
            } else {
                text.push_str(&format!("peer = \"{real_peer}\"\n"));
            }
            if (self.metrics)(id) {
                text.push_str(&format!(
                    "metrics = \"127.0.0.1:{}\"\n",
                    port(METRICS_PORT_OFFSET)
                ));
            }
        }
        text
    }
}

/// A cluster of `raftfs node` processes sharing one cluster.toml.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub options: Options,
    pub size: usize,
    pub base_port: u16,
    pub children: Vec<Option<Child>>,
    /// Nodes sent SIGSTOP and not yet SIGCONT.
    pub stopped: Vec<bool>,
    /// One per node when `options.proxied`.
    pub proxies: Vec<PeerProxy>,
    /// Extra environment per node id, applied at each start.
    pub node_env: BTreeMap<u64, Vec<(String, String)>>,
    pub counts: FaultCounts,
    /// TLS for the harness's status probes when the peer port is mutual
    /// TLS (a test that sets `[peer_tls]` sets this too).
    pub probe_tls: Option<raftfs::net::tls::ToolTls>,
}

impl Cluster {
    /// Writes the config (and starts the proxies) without starting nodes.
    pub fn configure(options: Options) -> Cluster {
        assert!(
            (1..=NODES_PER_BLOCK).contains(&options.size),
            "a cluster has 1 to {NODES_PER_BLOCK} nodes"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let base_port = fresh_base_port();
        let config_path = dir.path().join("cluster.toml");
        let text = options.config_text(base_port, &dir.path().join("data"));
        std::fs::write(&config_path, text).expect("write config");
        let size = options.size;
        let mut cluster = Cluster {
            dir,
            config_path,
            options,
            size,
            base_port,
            children: (0..size).map(|_| None).collect(),
            stopped: vec![false; size],
            proxies: Vec::new(),
            node_env: BTreeMap::new(),
            counts: FaultCounts::default(),
            probe_tls: None,
        };
        if cluster.options.proxied {
            for id in cluster.ids() {
                let listen: SocketAddr = ([127, 0, 0, 1], cluster.proxy_port(id)).into();
                let target: SocketAddr = ([127, 0, 0, 1], cluster.peer_port(id)).into();
                let proxy = PeerProxy::start(id, listen, target).expect("start proxy");
                cluster.proxies.push(proxy);
            }
        }
        cluster
    }

    /// Writes the config and starts every node.
    pub fn start(options: Options) -> Cluster {
        let mut cluster = Cluster::configure(options);
        for id in cluster.ids() {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> {
        1..=self.size as u64
    }

    /// Rewrites cluster.toml to list the nodes `ids` only (membership
    /// change: the file bootstraps the first members and gives a new
    /// member its addresses; running nodes never read it again).
    pub fn write_config_listing(&self, ids: &[u64]) {
        let text = self
            .options
            .config_text_of(ids, self.base_port, &self.dir.path().join("data"));
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// kill -9 node `id` and delete its data dir (a lost disk).
    pub fn wipe(&mut self, id: u64) {
        self.kill(id);
        let _ = std::fs::remove_dir_all(self.data_dir(id));
    }

    /// Runs `raftfs member <args> --config <cluster.toml>`: its exit code
    /// and its stdout and stderr.
    pub fn member(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(binary())
            .arg("member")
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run raftfs member");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }

    fn port(&self, offset: u16, id: u64) -> u16 {
        self.base_port + offset + id as u16 - 1
    }

    pub fn client_port(&self, id: u64) -> u16 {
        self.port(CLIENT_PORT_OFFSET, id)
    }

    /// The node's own peer listener (behind its proxy when proxied).
    pub fn peer_port(&self, id: u64) -> u16 {
        self.port(PEER_PORT_OFFSET, id)
    }

    pub fn proxy_port(&self, id: u64) -> u16 {
        self.port(PROXY_PORT_OFFSET, id)
    }

    pub fn client_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.client_port(id))
    }

    pub fn client_addresses(&self) -> Vec<String> {
        self.ids().map(|id| self.client_address(id)).collect()
    }

    pub fn metrics_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.port(METRICS_PORT_OFFSET, id))
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

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Whether node `id` has a process that was not killed or seen exiting.
    pub fn is_running(&self, id: u64) -> bool {
        self.children[id as usize - 1].is_some()
    }

    /// Running and not stopped: able to answer.
    pub fn is_serving(&self, id: u64) -> bool {
        self.is_running(id) && !self.stopped[id as usize - 1]
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children[id as usize - 1].as_ref().map(Child::id)
    }

    /// Resident memory of node `id`, in KiB.
    pub fn rss_kib(&self, id: u64) -> Option<u64> {
        process::rss_kib(self.pid(id)?)
    }

    /// Starts node `id`; stdout and stderr are appended to its log file.
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
        let child = process::spawn_tied_to_process(command).expect("spawn raftfs node");
        self.children[id as usize - 1] = Some(child);
        self.stopped[id as usize - 1] = false;
    }

    /// kill -9 node `id` and reap it; in lost-fsync mode, then throws away
    /// what it had not fsynced.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            process::kill_and_reap(&mut child);
            self.counts.kills += 1;
        }
        self.stopped[id as usize - 1] = false;
        if self.options.lose_unsynced {
            let discarded = raftfs::storage::lost_unsynced::discard_unsynced(&self.data_dir(id))
                .expect("discard unsynced WAL bytes");
            self.counts.unsynced_bytes_discarded += discarded.bytes;
        }
    }

    /// Sends `signal` to node `id`'s process, if it has one (untracked: use
    /// `pause`/`resume` for SIGSTOP/SIGCONT).
    pub fn signal(&self, id: u64, signal: i32) {
        if let Some(pid) = self.pid(id) {
            process::send_signal(pid, signal);
        }
    }

    /// SIGSTOP a running node (once).
    pub fn pause(&mut self, id: u64) {
        if self.is_serving(id) {
            self.signal(id, libc::SIGSTOP);
            self.stopped[id as usize - 1] = true;
            self.counts.pauses += 1;
        }
    }

    /// SIGCONT a paused node.
    pub fn resume(&mut self, id: u64) {
        if self.stopped[id as usize - 1] {
            self.signal(id, libc::SIGCONT);
            self.stopped[id as usize - 1] = false;
        }
    }

    /// Reaps node `id` if it has exited: its exit status.
    pub fn try_exit(&mut self, id: u64) -> Option<ExitStatus> {
        let child = self.children[id as usize - 1].as_mut()?;
        let status = child.try_wait().ok()??;
        self.children[id as usize - 1] = None;
        Some(status)
    }

    /// Waits up to `timeout` for node `id` to exit by itself; its status.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            self.children[id as usize - 1].as_ref()?;
            if let Some(status) = self.try_exit(id) {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> Option<ExitStatus> {
        self.signal(id, libc::SIGTERM);
        self.wait_exit(id, timeout)
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

    /// Copies every node's log to a fresh directory under the system temp
    /// dir (which outlives the cluster) and returns its path.
    pub fn keep_logs(&self, label: &str) -> String {
        let kept = std::env::temp_dir().join(format!(
            "raftfs-{label}-{}-{}",
            std::process::id(),
            self.base_port
        ));
        let _ = std::fs::create_dir_all(&kept);
        for id in self.ids() {
            let _ = std::fs::copy(self.log_path(id), kept.join(format!("node-{id}.log")));
        }
        kept.display().to_string()
    }

    /// Every node's log without the chatty peer-link lines, last 80 lines each.
    pub fn all_logs_summary(&self) -> String {
        let mut text = String::new();
        for id in self.ids() {
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

    /// Waits up to `timeout` until `predicate` holds of node `id`'s log.
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

    /// The node that leads: it answers a read and its status probe says
    /// leader; asks every running, unstopped node; waits up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        self.wait_leader_among(&self.ids().collect::<Vec<_>>(), timeout)
    }

    /// `wait_leader` restricted to `candidates`.
    pub fn wait_leader_among(&self, candidates: &[u64], timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for &id in candidates {
                if !self.is_serving(id) {
                    continue;
                }
                if let Ok(mut client) = Client::connect(&self.client_address(id)) {
                    client.set_timeout(Duration::from_millis(1500));
                    if let Ok(reply) = client.command(b"read __leader_probe__\r\n") {
                        let serves = reply.starts_with("ERR_FILE_NOT_FOUND")
                            || reply.starts_with("CONTENTS");
                        if serves && self.says_it_leads(id) {
                            return Some(id);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        None
    }

    /// Whether node `id` reports the leader role (`raftfs status`'s probe on
    /// its peer port). A read answered is not enough: followers answer
    /// reads themselves when they forward (the default), so a test that
    /// took the first node answering for the leader killed the real leader
    /// as "a follower".
    fn says_it_leads(&self, id: u64) -> bool {
        let address = SocketAddr::from(([127, 0, 0, 1], self.peer_port(id)));
        raftfs::status::probe_with(
            address,
            Duration::from_millis(1500),
            self.probe_tls.as_ref(),
        )
        .is_ok_and(|report| report.role == "leader")
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
        for id in self.ids() {
            self.signal(id, libc::SIGCONT);
            if let Some(mut child) = self.children[id as usize - 1].take() {
                process::kill_and_reap(&mut child);
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

/// Runs one command on whichever node leads, following redirects from any
/// serving node; retries on connection errors, timeouts and `ERR_INTERNAL`
/// until `timeout`. Returns the final reply. Only for commands whose
/// repetition is harmless (reads, or writes whose reply the caller does not
/// rely on being the first attempt's).
pub fn command_anywhere(cluster: &Cluster, command: &[u8], timeout: Duration) -> Option<String> {
    command_traced(cluster, command, timeout).map(|(_, reply)| reply)
}

/// `command_anywhere`, also naming the address that gave the final answer.
pub fn command_traced(
    cluster: &Cluster,
    command: &[u8],
    timeout: Duration,
) -> Option<(String, String)> {
    let deadline = Instant::now() + timeout;
    let mut next = 1u64;
    let mut address = cluster.client_address(next);
    while Instant::now() < deadline {
        let usable = cluster
            .id_of_address(&address)
            .is_some_and(|id| cluster.is_serving(id));
        if usable {
            if let Ok(mut client) = Client::connect(&address) {
                client.set_timeout(ANSWER_TIMEOUT);
                if let Ok(reply) = client.command(command) {
                    if let Some(target) = reply.strip_prefix("ERR_REDIRECT ") {
                        address = target.to_string();
                        continue;
                    }
                    if reply != "ERR_INTERNAL" {
                        return Some((address, reply));
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
