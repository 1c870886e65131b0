//! One single-member `raftfs node` for the protocol and connection tests:
//! fast elections, no fsync, `RUST_LOG=warn`, ready once it answers a read
//! itself. A `Cluster` of one underneath; its process dies with the test
//! process even when the `Node` sits in a `static` and is never dropped
//! (`process`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::Client;
use super::cluster::{Cluster, Options};
use super::process;

/// Attempts to start a node (a fresh port block each) before giving up.
const START_ATTEMPTS: usize = 5;
/// How long a node may take to elect itself and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout of the node's clients (connection-flood tests fill the
/// accept backlog, where a SYN is retried after 1 s and 3 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running one-member cluster, or one follower of a three-member one
/// (`start_follower`).
pub struct Node {
    pub address: SocketAddr,
    pub pid: u32,
    /// The member the address belongs to.
    id: u64,
    cluster: Cluster,
}

impl Node {
    /// Starts a fresh node with `fsync = false` and the given extra config
    /// lines; returns once it answers as leader.
    pub fn start(extra_config: &str) -> Node {
        let mut last_problem = String::new();
        for _ in 0..START_ATTEMPTS {
            match Node::try_start(extra_config) {
                Ok(node) => return node,
                Err(problem) => last_problem = problem,
            }
        }
        panic!("could not start a raftfs node: {last_problem}");
    }

    fn try_start(extra_config: &str) -> Result<Node, String> {
        let mut options = Options::new(1).fsync(false).extra(extra_config);
        options.election_timeout_ms = (60, 120);
        options.heartbeat_ms = 20;
        options.log_level = "warn";
        let mut cluster = Cluster::configure(options);
        cluster.start_node(1);
        let pid = cluster.pid(1).ok_or("no process")?;
        let address = cluster
            .client_address(1)
            .parse()
            .map_err(|e| format!("address: {e}"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = cluster.try_exit(1) {
                return Err(format!(
                    "node exited with {status}: {}",
                    cluster.log_text(1)
                ));
            }
            if cluster
                .wait_leader_among(&[1], Duration::from_millis(100))
                .is_some()
            {
                return Ok(Node {
                    address,
                    pid,
                    id: 1,
                    cluster,
                });
            }
        }
        Err(format!("node not ready in time: {}", cluster.log_text(1)))
    }

    /// Starts a fresh three-member cluster (as `start`) and returns one of
    /// its followers, once it serves (`follower_requests = "forward"`).
    pub fn start_follower(extra_config: &str) -> Node {
        let mut options = Options::new(3).fsync(false).extra(extra_config);
        options.election_timeout_ms = (150, 300);
        options.heartbeat_ms = 30;
        options.log_level = "warn";
        let mut cluster = Cluster::configure(options);
        for id in 1..=3 {
            cluster.start_node(id);
        }
        let leader = cluster
            .wait_leader_among(&[1, 2, 3], READY_TIMEOUT)
            .unwrap_or_else(|| panic!("no leader: {}", cluster.log_text(1)));
        let id = (1..=3).find(|&id| id != leader).expect("a follower");
        let address: SocketAddr = cluster.client_address(id).parse().expect("client address");
        let pid = cluster.pid(id).expect("a process");
        // Ready once the follower answers a read through the leader.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut client = Client::connect_within(&address.to_string(), CONNECT_TIMEOUT)
                .expect("connect to the follower");
            if client
                .command(b"read follower-ready\r\n")
                .is_ok_and(|answer| answer == "ERR_FILE_NOT_FOUND")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the follower does not serve");
            std::thread::sleep(Duration::from_millis(50));
        }
        Node {
            address,
            pid,
            id,
            cluster,
        }
    }

    pub fn log_text(&self) -> String {
        self.cluster.log_text(self.id)
    }

    /// Whether the node process is still running.
    pub fn is_running(&mut self) -> bool {
        self.cluster.try_exit(self.id).is_none() && self.cluster.is_running(self.id)
    }

    /// The node's resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        process::rss_kib(self.pid).expect("VmRSS of the node")
    }

    /// Descriptors the node has open.
    pub fn open_fds(&self) -> usize {
        process::open_fds(self.pid)
    }

    pub fn connect(&self) -> Client {
        Client::connect_within(&self.address.to_string(), CONNECT_TIMEOUT)
            .expect("connect to the node")
    }
}
