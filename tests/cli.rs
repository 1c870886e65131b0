//! The node's command line as an operator meets it, on real processes:
//! `raftfs cluster` starts in under 15 lines (peer-link churn at debug),
//! `--log-format json` writes one JSON object per line, every `node` flag
//! also comes from the environment, `raftfs status` exits 0 / 1 / 3
//! (healthy / a member down / no leader), and a member that stays down is
//! logged once after the grace period and once when it is back.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::{serial, Cluster, Options};
use common::ports;
use common::process::{binary, send_signal, spawn_tied_to_process};

/// Lines `raftfs cluster` may print at start (SPEC: "under 15").
const START_LINES_MAX: usize = 14;

/// Every line a child prints on stdout and stderr, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let sender = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
    }
    receiver
}

/// Runs `raftfs cluster --nodes N` with `extra` flags until its leader line
/// and one more second; returns every line printed until then, then stops
/// it with SIGTERM.
fn cluster_start_lines(nodes: usize, extra: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_start_lines_in(&dir, nodes, extra)
}

/// As `cluster_start_lines`, with the data under `dir`.
fn cluster_start_lines_in(dir: &tempfile::TempDir, nodes: usize, extra: &[&str]) -> Vec<String> {
    // Client ports P.., peer ports P+1000..: two blocks 1000 ports apart.
    let stride = (1000 / ports::PORT_BLOCK_SIZE) as u32;
    let base = ports::reserve_port_blocks(&[0, stride]);
    let mut command = Command::new(binary());
    command
        .args(["cluster", "--no-fsync", "--nodes", &nodes.to_string()])
        .args(["--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied_to_process(command).expect("spawn raftfs cluster");
    let receiver = lines_of(&mut child);
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut settled: Option<Instant> = None;
    while settled.is_none_or(|at| Instant::now() < at) && Instant::now() < deadline {
        if let Ok(line) = receiver.recv_timeout(Duration::from_millis(50)) {
            if settled.is_none() && line.contains("leads") {
                settled = Some(Instant::now() + Duration::from_secs(1));
            }
            lines.push(line);
        }
    }
    send_signal(child.id(), libc::SIGTERM);
    let _ = child.wait();
    assert!(settled.is_some(), "no leader line: {lines:#?}");
    lines
}

/// A 1-node demo after a 3-node one in the same data dir would restart
/// node 1 of the 3-node cluster: refused at start with one line.
#[test]
fn the_cluster_command_refuses_another_clusters_data_dirs() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_start_lines_in(&dir, 3, &[]);
    let mut cluster_ids = Vec::new();
    for id in 1..=3 {
        let path = dir
            .path()
            .join("data")
            .join(id.to_string())
            .join("cluster_id");
        let text = std::fs::read_to_string(&path).expect("every member stored the cluster id");
        cluster_ids.push(text);
    }
    assert!(
        cluster_ids.windows(2).all(|pair| pair[0] == pair[1]),
        "{cluster_ids:?}"
    );
    let output = Command::new(binary())
        .args(["cluster", "--no-fsync", "--nodes", "1", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run raftfs cluster");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("holds the data of another cluster"),
        "{stderr}"
    );
}

#[test]
fn the_cluster_command_starts_quietly_in_text_or_json() {
    let _serial = serial();
    let lines = cluster_start_lines(5, &[]);
    assert!(
        lines.len() <= START_LINES_MAX,
        "{} lines at start: {lines:#?}",
        lines.len()
    );
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("peer")
                && (line.contains("link") || line.contains("connection"))),
        "peer-link churn at info: {lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.contains("won the election"))
            .count(),
        1,
        "one line per leader change: {lines:#?}"
    );

    let lines = cluster_start_lines(3, &["--log-format", "json"]);
    let logged: Vec<serde_json::Value> = lines
        .iter()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    assert!(logged.len() >= 4, "3 start lines and a leader: {lines:#?}");
    for object in &logged {
        for key in ["ts", "level", "target", "msg"] {
            assert!(object[key].is_string(), "{key} in {object}");
        }
    }
    // What is not a log line is the command's own output (addresses, leader).
    assert!(lines
        .iter()
        .filter(|line| !line.starts_with('{'))
        .all(|line| line.starts_with("raftfs: ") || line.starts_with("  node ")));
}

#[test]
fn every_node_flag_comes_from_the_environment() {
    let _serial = serial();
    let mut cluster = Cluster::configure(Options::new(1).fsync(false));
    let data_dir = cluster.dir.path().join("elsewhere");
    let log = std::fs::File::create(cluster.log_path(1)).expect("log file");
    let mut command = Command::new(binary());
    command
        .arg("node")
        .env("RAFTFS_CONFIG", &cluster.config_path)
        .env("RAFTFS_ID", "1")
        .env("RAFTFS_DATA_DIR", &data_dir)
        .env("RAFTFS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    cluster.children[0] = Some(spawn_tied_to_process(command).expect("spawn raftfs node"));
    cluster
        .wait_leader(Duration::from_secs(10))
        .expect("the node serves with its flags from the environment");
    assert!(
        std::fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some()),
        "RAFTFS_DATA_DIR is used"
    );
    let log = cluster.log_text(1);
    assert!(!log.is_empty());
    for line in log.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(object["msg"].is_string(), "{line}");
    }

    // A bad value from the environment is a usage error, like a bad flag.
    let output = Command::new(binary())
        .arg("node")
        .env("RAFTFS_CONFIG", &cluster.config_path)
        .env("RAFTFS_ID", "one")
        .output()
        .expect("raftfs node");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--id"));
}

/// `raftfs status` until it exits `expected` (at most `timeout`): its stderr.
fn wait_status_code(cluster: &Cluster, expected: i32, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let output = Command::new(binary())
            .args(["status", "--config"])
            .arg(&cluster.config_path)
            .output()
            .expect("raftfs status");
        if output.status.code() == Some(expected) {
            return String::from_utf8_lossy(&output.stderr).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "status never exited {expected}: last {output:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_exit_code_says_healthy_degraded_or_leaderless() {
    let _serial = serial();
    let mut cluster = Cluster::start(Options::new(3).fsync(false));
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    let timeout = Duration::from_secs(10);
    wait_status_code(&cluster, 0, timeout);
    let followers: Vec<u64> = cluster.ids().filter(|&id| id != leader).collect();
    cluster.kill(followers[0]);
    let stderr = wait_status_code(&cluster, 1, timeout);
    assert!(
        stderr.contains(&format!("down: member {}", followers[0])),
        "{stderr}"
    );
    // Without a majority the leader steps down (CheckQuorum): no leader.
    cluster.kill(followers[1]);
    let stderr = wait_status_code(&cluster, 3, timeout);
    assert!(stderr.contains("no leader"), "{stderr}");
    cluster.kill(leader);
    let stderr = wait_status_code(&cluster, 3, timeout);
    assert!(stderr.contains("no member answered"), "{stderr}");
}

#[test]
fn a_member_down_is_logged_once_after_the_grace_period_and_when_back() {
    let _serial = serial();
    let mut cluster = Cluster::start(Options::new(3).fsync(false));
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    let down = cluster.ids().find(|&id| id != leader).expect("follower");
    cluster.kill(down);
    let killed_at = Instant::now();
    let down_line = format!("member {down} is down");
    assert!(
        cluster.wait_log(leader, Duration::from_secs(8), |log| log
            .contains(&down_line)),
        "{}",
        cluster.log_text(leader)
    );
    // Not before the grace period (3 s), and only once.
    assert!(killed_at.elapsed() >= Duration::from_millis(2_900));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster.log_text(leader).matches(&down_line).count(), 1);
    cluster.start_node(down);
    let back_line = format!("member {down} is up again");
    assert!(
        cluster.wait_log(leader, Duration::from_secs(8), |log| log
            .contains(&back_line)),
        "{}",
        cluster.log_text(leader)
    );
}
