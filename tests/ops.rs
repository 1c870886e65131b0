//! Production-style operation against real `raftfs node` processes: the
//! metrics and health endpoints, `raftfs status`, and a rolling restart of
//! all five nodes under load that must fail no client request.

mod common;

use common::client::{Client, ANSWER_TIMEOUT};
use common::cluster::{Cluster, Options};
use common::http::{http_get, http_request, metric};
use common::process::binary;
use std::time::{Duration, Instant};

/// `size` nodes without fsync; `metrics(id)` says which get a metrics
/// listener.
fn options(size: usize, metrics: fn(u64) -> bool) -> Options {
    Options {
        metrics,
        ..Options::new(size).fsync(false)
    }
}

/// A client whose answers must come within `ANSWER_TIMEOUT`.
fn connect(address: &str) -> Client {
    let mut client = Client::connect(address).expect("connect");
    client.set_timeout(ANSWER_TIMEOUT);
    client
}

fn wait_all_healthy(cluster: &Cluster) {
    for id in cluster.ids() {
        assert!(
            cluster.wait_healthy(id, Duration::from_secs(10)),
            "node {id} never became healthy; log:\n{}",
            cluster.log_text(id)
        );
    }
}

fn wait_leader(cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(leader) = cluster.metrics_leader() {
            return leader;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no agreed leader");
}

#[test]
fn metrics_and_health_endpoints() {
    let mut cluster = Cluster::start(options(3, |_| true));
    wait_all_healthy(&cluster);
    let leader = wait_leader(&cluster);
    let mut client = connect(&cluster.client_address(leader));
    for i in 0..20 {
        assert!(client
            .write(&format!("m{i}"), "v")
            .expect("write")
            .starts_with("OK "));
    }
    assert!(client
        .command(b"read m3\r\n")
        .expect("read")
        .starts_with("CONTENTS "));
    assert_eq!(
        client.command(b"cas m3 999 1\r\nx\r\n").expect("cas"),
        "ERR_VERSION 4"
    );
    let mut bad_client = connect(&cluster.client_address(leader));
    assert_eq!(
        bad_client.command(b"bogus\r\n").expect("bogus"),
        "ERR_CMD_ERR"
    );

    let (code, body) = http_get(&cluster.metrics_address(leader), "/metrics").expect("scrape");
    assert_eq!(code, 200);
    let value =
        |name: &str| metric(&body, name).unwrap_or_else(|| panic!("{name} missing:\n{body}"));
    assert_eq!(value("raftfs_role{role=\"leader\"}"), 1.0);
    assert_eq!(value("raftfs_leader_id"), leader as f64);
    assert!(value("raftfs_term") >= 1.0);
    assert_eq!(value("raftfs_commands_total{kind=\"write\"}"), 20.0);
    assert_eq!(value("raftfs_commands_total{kind=\"read\"}"), 1.0);
    assert_eq!(value("raftfs_commands_total{kind=\"cas\"}"), 1.0);
    assert_eq!(value("raftfs_commands_total{kind=\"malformed\"}"), 1.0);
    assert_eq!(value("raftfs_errors_total{kind=\"version\"}"), 1.0);
    assert_eq!(value("raftfs_errors_total{kind=\"cmd_err\"}"), 1.0);
    assert!(value("raftfs_applied_index") >= 22.0, "{body}");
    assert!(value("raftfs_commit_index") >= value("raftfs_applied_index"));
    assert!(value("raftfs_proposals_total") >= 1.0);
    assert_eq!(value("raftfs_files"), 20.0);
    assert_eq!(value("raftfs_client_connections"), 1.0);
    assert!(value("raftfs_batch_commands_count") >= 1.0);
    // fsync is off here: the WAL is written, but no fsync ever runs.
    assert_eq!(value("raftfs_fsync_duration_seconds_count"), 0.0);
    assert!(value("raftfs_apply_latency_seconds_count") >= 1.0);
    assert_eq!(
        value(&format!(
            "raftfs_build_info{{version=\"{}\",wal_format=\"1\",snapshot_format=\"2\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(value("raftfs_leader_changes_total") >= 1.0);
    assert_eq!(value("raftfs_member"), 1.0);
    assert_eq!(
        value("raftfs_request_duration_seconds_count{kind=\"write\"}"),
        20.0
    );
    assert_eq!(
        value("raftfs_request_duration_seconds_bucket{kind=\"write\",le=\"10\"}"),
        20.0
    );
    assert_eq!(
        value("raftfs_request_duration_seconds_count{kind=\"cas\"}"),
        1.0
    );
    assert_eq!(
        value("raftfs_request_duration_seconds_count{kind=\"delete\"}"),
        0.0
    );
    assert!(value("process_cpu_seconds_total") >= 0.0); // an idle node may not have a tick yet
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 5.0);
    let started = value("process_start_time_seconds");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        started <= now_s + 1.0 && started > now_s - 600.0,
        "{started}"
    );
    let data_dir_bytes = value("raftfs_data_dir_bytes");
    assert!(data_dir_bytes > 0.0, "{body}");
    assert!(value("raftfs_data_dir_filesystem_available_bytes") > 0.0);
    assert!(
        value("raftfs_data_dir_filesystem_size_bytes")
            >= value("raftfs_data_dir_filesystem_available_bytes")
    );
    for peer in (1..=3).filter(|&id| id != leader) {
        assert_eq!(value(&format!("raftfs_peer_up{{peer=\"{peer}\"}}")), 1.0);
        for (state, expected) in [("up", 1.0), ("connecting", 0.0), ("down", 0.0)] {
            assert_eq!(
                value(&format!(
                    "raftfs_peer_link_state{{peer=\"{peer}\",state=\"{state}\"}}"
                )),
                expected
            );
        }
        assert!(metric(
            &body,
            &format!("raftfs_peer_lag_entries{{peer=\"{peer}\"}}")
        )
        .is_some());
    }
    let follower = (1..=3).find(|&id| id != leader).unwrap_or(1);
    let (_, follower_body) =
        http_get(&cluster.metrics_address(follower), "/metrics").expect("scrape");
    assert_eq!(
        metric(&follower_body, "raftfs_role{role=\"follower\"}"),
        Some(1.0)
    );

    assert_eq!(
        http_get(&cluster.metrics_address(leader), "/nope")
            .expect("404")
            .0,
        404
    );
    assert_eq!(
        http_request(&cluster.metrics_address(leader), "POST", "/metrics")
            .expect("405")
            .0,
        405
    );
    for id in 1..=3 {
        assert_eq!(
            http_get(&cluster.metrics_address(id), "/livez").expect("livez"),
            (200, "ok\n".to_string())
        );
        assert_eq!(
            http_get(&cluster.metrics_address(id), "/readyz").expect("readyz"),
            (200, "ok\n".to_string())
        );
    }

    // With two of three nodes gone the survivor has no leader: 503 + reason.
    let others: Vec<u64> = (1..=3).filter(|&id| id != follower).collect();
    for id in others {
        cluster.kill(id);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        last = http_get(&cluster.metrics_address(follower), "/health").expect("health");
        if last.0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(last.0, 503, "{last:?}");
    assert!(last.1.starts_with("no leader known"), "{last:?}");
    assert_eq!(last.1.lines().count(), 1, "one line: {last:?}");
    // Alive, but not ready: no leader.
    let address = cluster.metrics_address(follower);
    assert_eq!(http_get(&address, "/livez").expect("livez").0, 200);
    let (code, reason) = http_get(&address, "/readyz").expect("readyz");
    assert_eq!(code, 503);
    assert!(reason.starts_with("no leader known"), "{reason}");
    // The peers are down now: their link series keep the same labels.
    let (_, body) = http_get(&address, "/metrics").expect("scrape");
    for peer in (1..=3).filter(|&id| id != follower) {
        assert_eq!(
            metric(&body, &format!("raftfs_peer_up{{peer=\"{peer}\"}}")),
            Some(0.0),
            "{body}"
        );
        assert_eq!(
            metric(
                &body,
                &format!("raftfs_peer_link_state{{peer=\"{peer}\",state=\"up\"}}")
            ),
            Some(0.0),
            "{body}"
        );
    }
}

#[test]
fn status_lists_every_member_with_or_without_metrics() {
    // Node 3 has no metrics listener: status asks over the peer port.
    let mut cluster = Cluster::start(options(3, |id| id != 3));
    wait_all_healthy_some(&cluster, &[1, 2]);
    let leader = wait_status_leader(&cluster);
    let (code, table) = cluster.status(false);
    assert_eq!(code, 0, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "header + 3 members:\n{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    for (index, id) in (1..=3u64).enumerate() {
        let line = lines[index + 1];
        assert!(line.starts_with(&format!("{id} ")), "{table}");
        assert!(line.contains(&cluster.client_address(id)), "{table}");
        let role = if id == leader { "leader" } else { "follower" };
        assert!(line.contains(role), "{table}");
        assert!(line.trim_end().ends_with("up"), "{table}");
    }

    let (code, json) = cluster.status(true);
    assert_eq!(code, 0);
    let members: serde_json::Value = serde_json::from_str(&json).expect("json");
    let members = members.as_array().expect("array");
    assert_eq!(members.len(), 3);
    for member in members {
        assert_eq!(member["up"], true, "{json}");
        assert_eq!(member["leader"], leader, "{json}");
        assert!(
            member["term"].as_u64().is_some_and(|term| term >= 1),
            "{json}"
        );
        assert!(member["lag"].as_u64().is_some(), "{json}");
        assert!(member["commit_index"].as_u64().is_some(), "{json}");
    }

    let down = if leader == 3 { 2 } else { 3 };
    cluster.kill(down);
    let (code, table) = cluster.status(false);
    assert_eq!(code, 1, "a member down: exit 1\n{table}");
    let line = table
        .lines()
        .find(|line| line.starts_with(&format!("{down} ")))
        .expect("line of the stopped node");
    assert!(line.contains(" down"), "{table}");
    let (_, json) = cluster.status(true);
    let members: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(members[(down - 1) as usize]["up"], false, "{json}");

    for id in 1..=3 {
        cluster.kill(id);
    }
    let (code, table) = cluster.status(false);
    assert_eq!(code, 3, "nobody answers, so no leader: exit 3\n{table}");
}

fn wait_all_healthy_some(cluster: &Cluster, ids: &[u64]) {
    for &id in ids {
        assert!(
            cluster.wait_healthy(id, Duration::from_secs(10)),
            "node {id} not healthy"
        );
    }
}

fn wait_status_leader(cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (_, json) = cluster.status(true);
        if let Ok(serde_json::Value::Array(members)) = serde_json::from_str(&json) {
            let leaders: Vec<u64> = members
                .iter()
                .filter_map(|m| m["leader"].as_u64())
                .collect();
            if leaders.len() == members.len() && leaders.windows(2).all(|w| w[0] == w[1]) {
                if let Some(&leader) = leaders.first() {
                    return leader;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("status never showed one leader");
}

#[test]
fn rolling_restart_under_load_fails_no_request() {
    let mut cluster = Cluster::start(options(5, |_| true));
    wait_all_healthy(&cluster);
    let first_leader = wait_leader(&cluster);
    let addresses: Vec<String> = (1..=5).map(|id| cluster.client_address(id)).collect();
    let flags = format!(
        "loadgen --addr {} --clients 8 --pipeline 4 --duration 16 --mix write=5,read=4,cas=1 --keys 200 --size 64 --threads 2 --spread",
        addresses.join(",")
    );
    let config = loadgen::Config::try_from_args(flags.split_whitespace()).expect("loadgen flags");
    let load = std::thread::spawn(move || loadgen::run(&config, &mut std::io::sink()));
    std::thread::sleep(Duration::from_secs(2));

    // Followers first, the leader (whoever it is then) last, so the test
    // always restarts a leader at least once.
    let started = Instant::now();
    let mut order: Vec<u64> = (1..=5).filter(|&id| id != first_leader).collect();
    order.push(first_leader);
    let mut leaders_restarted = 0;
    for id in order {
        let was_leader = cluster.metrics_leader() == Some(id);
        let status = cluster
            .terminate(id, Duration::from_secs(5))
            .unwrap_or_else(|| {
                panic!(
                    "node {id} did not exit on SIGTERM:\n{}",
                    cluster.log_text(id)
                )
            });
        assert!(
            status.success(),
            "node {id} exit {status:?}:\n{}",
            cluster.log_text(id)
        );
        if was_leader {
            leaders_restarted += 1;
            assert!(
                cluster.log_text(id).contains("handing leadership to node"),
                "{}",
                cluster.log_text(id)
            );
        }
        cluster.start_node(id);
        assert!(
            cluster.wait_healthy(id, Duration::from_secs(10)),
            "node {id} not healthy after restart:\n{}",
            cluster.log_text(id)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let restart_time = started.elapsed();
    assert!(leaders_restarted >= 1, "no leader was restarted");

    let report = load
        .join()
        .expect("loadgen thread")
        .unwrap_or_else(|error| panic!("loadgen run: {error}"));
    assert!(
        restart_time < Duration::from_secs_f64(report.duration_s) - Duration::from_secs(1),
        "the restarts ({restart_time:?}) must finish inside the measured run ({} s)",
        report.duration_s
    );
    eprintln!("{}", report.text());
    assert!(report.ops() > 1000, "{}", report.text());
    assert_eq!(report.errors(), 0, "{}", report.text());
}

#[test]
fn backup_snapshot_restores_into_a_new_cluster() {
    // Small snapshot_entries: /snapshot serves the newest snapshot file.
    let old = Cluster::start(options(3, |_| true).extra("snapshot_entries = 10"));
    wait_all_healthy(&old);
    let leader = wait_leader(&old);
    let mut client = connect(&old.client_address(leader));
    for i in 0..30 {
        assert!(client
            .write(&format!("b{i}"), &format!("value-{i}"))
            .expect("write")
            .starts_with("OK "));
    }
    assert!(client
        .command(b"write ttl 1 3600\r\nt\r\n")
        .expect("ttl")
        .starts_with("OK "));
    assert_eq!(client.command(b"delete b7\r\n").expect("delete"), "OK");
    // Any healthy node serves a consistent backup: take it from a follower.
    let follower = (1..=3).find(|&id| id != leader).unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let snapshot = loop {
        let mut stream =
            std::net::TcpStream::connect(old.metrics_address(follower)).expect("connect");
        std::io::Write::write_all(&mut stream, b"GET /snapshot HTTP/1.1\r\n\r\n").expect("send");
        let mut response = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut response).expect("read");
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head")
            + 4;
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        if head.starts_with("HTTP/1.1 503") && Instant::now() < deadline {
            // No snapshot written yet.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let applied: u64 = head
            .lines()
            .find_map(|line| line.strip_prefix("X-Raftfs-Applied-Index: "))
            .and_then(|value| value.trim().parse().ok())
            .expect("applied index header");
        if applied >= 33 {
            break response[split..].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "follower never applied the writes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let path = old.dir.path().join("backup.snap");
    std::fs::write(&path, &snapshot).expect("save");
    // The backup is the snapshot file as the node keeps it, checks and all.
    let (meta, fsm) = raftfs::snapshot::decode(&snapshot).expect("a whole snapshot file");
    assert!(meta.index >= 33, "{meta:?}");
    assert_eq!(fsm.len(), 30);

    let new = Cluster::start(options(3, |_| true));
    wait_all_healthy(&new);
    let new_leader = wait_leader(&new);
    let entry = (1..=3).find(|&id| id != new_leader).unwrap_or(1);
    let output = std::process::Command::new(binary())
        .args(["restore", "--snapshot"])
        .arg(&path)
        .args(["--addr", &new.client_address(entry)])
        .output()
        .expect("raftfs restore");
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("restored 30 files"),
        "{output:?}"
    );
    let mut client = connect(&new.client_address(new_leader));
    let mut versions = Vec::new();
    for i in (0..30).filter(|&i| i != 7) {
        let answer = client
            .command(format!("read b{i}\r\n").as_bytes())
            .expect("read");
        let expected = format!("value-{i}");
        assert!(
            answer.starts_with("CONTENTS ") && answer.ends_with(&format!("\n{expected}")),
            "{answer:?}"
        );
        let version: u64 = answer
            .split(' ')
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("version");
        versions.push(version);
    }
    assert_eq!(
        client.command(b"read b7\r\n").expect("read"),
        "ERR_FILE_NOT_FOUND"
    );
    let ttl = client.command(b"read ttl\r\n").expect("read");
    let remaining: u64 = ttl
        .lines()
        .next()
        .unwrap_or_default()
        .split(' ')
        .nth(3)
        .and_then(|v| v.trim().parse().ok())
        .expect("expiry");
    assert!((3590..=3600).contains(&remaining), "{ttl:?}");
    versions.sort_unstable();
    assert!(
        versions.iter().all(|&v| (1..=30).contains(&v)),
        "renumbered: {versions:?}"
    );

    // A backup from before /snapshot streamed the file (the bare file map)
    // still restores; a damaged snapshot file is refused before any write.
    let legacy = old.dir.path().join("legacy.snap");
    std::fs::write(&legacy, fsm.snapshot()).expect("write");
    let restore = |path: &std::path::Path| {
        std::process::Command::new(binary())
            .args(["restore", "--snapshot"])
            .arg(path)
            .args(["--addr", &new.client_address(new_leader)])
            .output()
            .expect("raftfs restore")
    };
    let output = restore(&legacy);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("restored 30 files"),
        "{output:?}"
    );
    let damaged = old.dir.path().join("damaged.snap");
    let mut bytes = snapshot.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&damaged, &bytes).expect("write");
    let output = restore(&damaged);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("checksum mismatch"),
        "{output:?}"
    );

    let garbage = old.dir.path().join("garbage.snap");
    std::fs::write(&garbage, b"not a snapshot").expect("write");
    let output = std::process::Command::new(binary())
        .args(["restore", "--snapshot"])
        .arg(&garbage)
        .args(["--addr", &new.client_address(new_leader)])
        .output()
        .expect("raftfs restore");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not a raftfs snapshot"),
        "{output:?}"
    );
}

#[test]
fn deploy_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cluster.toml");
    let config = raftfs::config::ClusterConfig::load(&path).expect("deploy/cluster.toml parses");
    assert_eq!(config.members.len(), 5);
    assert!(config.fsync);
    let first = &config.members[0];
    assert_eq!(first.client, "10.0.0.11:8080");
    assert_eq!(first.listen_client.to_string(), "0.0.0.0:8080");
    assert_eq!(first.peer, first.listen_peer);
    assert!(config.members.iter().all(|member| member.metrics.is_some()));
    let unit = std::fs::read_to_string(path.with_file_name("raftfs.service")).expect("unit");
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/raftfs node --config /etc/raftfs/cluster.toml --id ${RAFTFS_ID}"
    ));
}

/// Sends a `GET /snapshot` with `token` (if any) and reads the response head
/// only; the body stays in the socket until the caller reads it.
fn snapshot_request(address: &str, token: Option<&str>) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let authorization = token.map_or_else(String::new, |token| {
        format!("Authorization: Bearer {token}\r\n")
    });
    write!(stream, "GET /snapshot HTTP/1.1\r\n{authorization}\r\n").expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("head"),
            1,
            "closed in the head"
        );
        head.push(byte[0]);
        assert!(head.len() < 4096, "head too long");
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|value| value.trim().parse().ok())
        .expect("Content-Length")
}

#[test]
fn snapshot_downloads_need_the_token_are_bounded_and_leave_the_node_serving() {
    use std::io::Read;
    let secrets = tempfile::tempdir().expect("temp dir");
    let token_path = secrets.path().join("snapshot.token");
    std::fs::write(&token_path, "s3cret-token\n").expect("token file");
    let options = options(1, |_| true).extra(&format!(
        "snapshot_entries = 20\nsnapshot_token_file = {:?}",
        token_path.display().to_string()
    ));
    let cluster = Cluster::start(options);
    wait_all_healthy(&cluster);
    let metrics = cluster.metrics_address(1);
    // No snapshot yet: a clear 503.
    let (_, head) = snapshot_request(&metrics, Some("s3cret-token"));
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // 60 files of 200 KB: a snapshot file far larger than the socket
    // buffers, so a client that does not read holds its download.
    let mut client = connect(&cluster.client_address(1));
    let content = "x".repeat(200_000);
    for i in 0..60 {
        assert!(client
            .write(&format!("big{i}"), &content)
            .expect("write")
            .starts_with("OK "));
    }
    // A snapshot that covers every big write: the node takes one every 20
    // entries, so small writes (at most 20 more; an idle leader with no
    // expiring file writes nothing by itself) reach the next.
    let scrape = |name: &str| {
        let (_, body) = http_get(&metrics, "/metrics").expect("scrape");
        metric(&body, name).unwrap_or(0.0)
    };
    let written_through = scrape("raftfs_applied_index");
    for filler in 0..20 {
        if scrape("raftfs_snapshot_index") >= written_through {
            break;
        }
        assert!(client
            .write(&format!("filler{filler}"), "f")
            .expect("write")
            .starts_with("OK "));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape("raftfs_snapshot_index") < written_through {
        assert!(Instant::now() < deadline, "no snapshot of every write");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = snapshot_request(&metrics, Some("s3cret-token"));
    assert!(first.1.starts_with("HTTP/1.1 200"), "{}", first.1);
    assert!(content_length(&first.1) > 11_000_000, "{}", first.1);
    let second = snapshot_request(&metrics, Some("s3cret-token"));
    assert!(second.1.starts_with("HTTP/1.1 200"), "{}", second.1);
    assert!(first.1.contains("X-Raftfs-Snapshot-Index: "), "{}", first.1);
    // Both slots are taken: the third waits its turn.
    let (_, head) = snapshot_request(&metrics, Some("s3cret-token"));
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("Retry-After: "), "{head}");
    // Wrong or missing token: 401, whatever the slots.
    for token in [Some("wrong"), None] {
        let (_, head) = snapshot_request(&metrics, token);
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    }
    // The node goes on serving while two downloads are stalled.
    let started = Instant::now();
    assert_eq!(http_get(&metrics, "/livez").expect("livez").0, 200);
    assert_eq!(http_get(&metrics, "/metrics").expect("metrics").0, 200);
    assert!(client
        .write("during", "download")
        .expect("write")
        .starts_with("OK "));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Each stalled download completes once read: the whole, valid file.
    let mut bodies = Vec::new();
    for (mut stream, head) in [first, second] {
        let mut body = Vec::new();
        stream.read_to_end(&mut body).expect("body");
        assert_eq!(body.len(), content_length(&head));
        let (_, fsm) = raftfs::snapshot::decode(&body).expect("a valid snapshot file");
        assert!(fsm.len() >= 20, "{}", fsm.len());
        bodies.push(body);
    }
    // The slots are free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (mut stream, head) = snapshot_request(&metrics, Some("s3cret-token"));
        if head.starts_with("HTTP/1.1 200") {
            let mut body = Vec::new();
            stream.read_to_end(&mut body).expect("body");
            assert!(raftfs::snapshot::decode(&body).is_ok());
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {head}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
