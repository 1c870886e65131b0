//! TLS with real `raftfs node` processes on 127.0.0.1 (issue 14): certificates
//! made by `raftfs certs`, mutual TLS on peer links, TLS on the client port
//! (a rustls client, `raftfs client`, and `openssl s_client` when it is
//! installed), client certificates, and what is refused: a certificate from
//! another CA, a node certificate claiming another node's id, a plain client
//! on a TLS port, and missing files at start.

mod common;

use bytes::BytesMut;
use common::cluster::{Cluster, Options};
use common::process::binary;
use raftfs::net::peer::wire;
use raftfs::net::tls::{ToolStream, ToolTls};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PEER_TLS: &str = "[peer_tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\n\
                        key = \"certs/node-{id}.key\"\n";
const CLIENT_TLS: &str =
    "[client_tls]\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n";
/// Generous for a loaded 2-core machine.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// `raftfs certs` for the cluster's config into `<cluster dir>/<out>`.
fn make_certs(cluster: &Cluster, out: &str) -> PathBuf {
    let dir = cluster.dir.path().join(out);
    let output = Command::new(binary())
        .args(["certs", "--config"])
        .arg(&cluster.config_path)
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("run raftfs certs");
    assert!(
        output.status.success(),
        "raftfs certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

/// A cluster with `extra` config lines whose certificates exist before
/// any node starts.
fn start_with_certs(size: usize, extra: &str) -> Cluster {
    let mut cluster = Cluster::configure(Options::new(size).fsync(false).extra(extra));
    let certs = make_certs(&cluster, "certs");
    if extra.contains("[peer_tls]") {
        let tool = ToolTls::load(
            &certs.join("ca.pem"),
            Some((&certs.join("client.pem"), &certs.join("client.key"))),
        )
        .expect("the tools' TLS");
        cluster.probe_tls = Some(tool);
    }
    for id in cluster.ids() {
        cluster.start_node(id);
    }
    cluster
}

fn peer_address(cluster: &Cluster, id: u64) -> SocketAddr {
    ([127, 0, 0, 1], cluster.peer_port(id)).into()
}

fn client_socket(cluster: &Cluster, id: u64) -> SocketAddr {
    ([127, 0, 0, 1], cluster.client_port(id)).into()
}

/// Sends a hello claiming node `from` to node `to` over `stream`; returns
/// the answer, or why there is none.
fn hello_answer(
    stream: &mut ToolStream,
    cluster: &Cluster,
    from: u64,
    to: u64,
) -> Result<wire::HelloReply, String> {
    // The cluster's own id (persisted in every data dir), so only the
    // certificate check can refuse the hello.
    let cluster_id =
        raftfs::storage::load_cluster_id(&cluster.data_dir(to)).expect("the cluster id");
    let hello = wire::encode_hello(&wire::Hello {
        cluster_id,
        from,
        incarnation: 0x7e57,
        to,
    })
    .expect("encode hello");
    stream
        .socket()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(&hello).map_err(|e| e.to_string())?;
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(payload) = wire::next_frame(&mut buffer, 1 << 16).map_err(|e| e.to_string())? {
            return wire::decode_reply(&payload).map_err(|e| e.to_string());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed".into()),
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Reads lines from `reader` until one starts with `prefix`; returns it.
fn line_starting(reader: &mut impl BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).expect("an answer line");
        assert!(read > 0, "closed before a line starting {prefix:?}");
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// A rustls client on node `id`'s client port (certificate `pair`, if any).
fn tls_client(
    cluster: &Cluster,
    id: u64,
    pair: Option<(&Path, &Path)>,
) -> std::io::Result<BufReader<ToolStream>> {
    let tls = ToolTls::load(&cluster.dir.path().join("certs/ca.pem"), pair).expect("tool TLS");
    let mut stream = tls.connect(client_socket(cluster, id), Duration::from_secs(5))?;
    stream
        .socket()
        .set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.flush()?;
    Ok(BufReader::new(stream))
}

/// Retries `read NAME` over TLS on node `id` until it answers (a leader is
/// known); returns the answer line.
fn wait_tls_answer(cluster: &Cluster, id: u64, pair: Option<(&Path, &Path)>) -> String {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Ok(mut client) = tls_client(cluster, id, pair) {
            if client.get_mut().write_all(b"read probe\r\n").is_ok() {
                let mut line = String::new();
                if client.read_line(&mut line).is_ok()
                    && (line.starts_with("ERR_FILE_NOT_FOUND") || line.starts_with("CONTENTS"))
                {
                    return line;
                }
            }
        }
        assert!(Instant::now() < deadline, "no TLS answer from node {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The leader's id and term in a `raftfs status` table.
fn leader_row(table: &str) -> (String, String) {
    let row = table
        .lines()
        .find(|line| line.split_whitespace().nth(2) == Some("leader"))
        .unwrap_or_else(|| panic!("no leader in {table}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    (fields[0].to_string(), fields[4].to_string())
}

fn raftfs(args: &[&str], config: &Path) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run raftfs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn mutual_tls_peers_elect_commit_and_refuse_strangers() {
    let _serial = common::cluster::serial();
    let cluster = start_with_certs(3, PEER_TLS);
    let (first, mut client) = cluster.leader_client(LEADER_TIMEOUT);
    for i in 0..20 {
        let reply = client
            .write(&format!("k{i}"), &format!("v{i}"))
            .expect("write");
        assert!(reply.starts_with("OK "), "{reply}");
    }
    // Every other node answers reads with a ReadIndex round over the TLS
    // links (and writes are forwarded over them).
    for id in cluster.ids().filter(|&id| id != first) {
        let mut follower =
            common::client::Client::connect(&cluster.client_address(id)).expect("connect");
        let reply = follower.read("k19").expect("read");
        assert!(reply.starts_with("CONTENTS"), "node {id}: {reply}");
    }
    let (code, table, stderr) = raftfs(&["status"], &cluster.config_path);
    assert_eq!(code, 0, "status over TLS: {table}{stderr}");
    assert_eq!(table.matches(" up").count(), 3, "{table}");
    let leader_and_term = leader_row(&table);
    let (code, listing, stderr) = raftfs(&["member", "list"], &cluster.config_path);
    assert_eq!(code, 0, "member list over TLS: {listing}{stderr}");
    assert_eq!(listing.matches("voter").count(), 3, "{listing}");

    // A certificate from another CA: the TLS handshake fails at node 1.
    let other = make_certs(&cluster, "other");
    let stranger = ToolTls::load(
        &cluster.dir.path().join("certs/ca.pem"),
        Some((&other.join("node-2.pem"), &other.join("node-2.key"))),
    )
    .expect("stranger TLS");
    let outcome = stranger
        .connect(peer_address(&cluster, 1), Duration::from_secs(5))
        .map_err(|e| e.to_string())
        .and_then(|mut stream| hello_answer(&mut stream, &cluster, 2, 1));
    assert!(
        !matches!(outcome, Ok(wire::HelloReply::Accept { .. })),
        "a stranger was accepted"
    );
    assert!(
        cluster.wait_log(1, Duration::from_secs(10), |log| log
            .contains("closed: TLS: invalid peer certificate")),
        "no log line for the stranger: {}",
        cluster.log_text(1)
    );

    // Node 2's valid certificate claiming node 3: refused, with a reason.
    let impostor = ToolTls::load(
        &cluster.dir.path().join("certs/ca.pem"),
        Some((
            &cluster.dir.path().join("certs/node-2.pem"),
            &cluster.dir.path().join("certs/node-2.key"),
        )),
    )
    .expect("impostor TLS");
    let mut stream = impostor
        .connect(peer_address(&cluster, 1), Duration::from_secs(5))
        .expect("TLS to node 1");
    match hello_answer(&mut stream, &cluster, 3, 1) {
        Ok(wire::HelloReply::Refuse { reason, .. }) => {
            assert!(reason.contains("not the certificate of node 3"), "{reason}")
        }
        other => panic!("the impostor got {other:?}"),
    }
    assert!(
        cluster.log_text(1).contains("claiming node 3"),
        "no log line for the impostor: {}",
        cluster.log_text(1)
    );

    // Nothing changed: every member up, same leader, writes still commit.
    let (code, table, stderr) = raftfs(&["status"], &cluster.config_path);
    assert_eq!(code, 0, "status after the strangers: {table}{stderr}");
    assert_eq!(leader_row(&table), leader_and_term, "{table}");
    let reply = client.write("after", "still").expect("write");
    assert!(reply.starts_with("OK "), "{reply}");
    for id in cluster.ids() {
        let log = cluster.log_text(id);
        assert!(!log.contains("panicked"), "node {id}: {log}");
    }
}

#[test]
fn client_port_serves_tls_to_tls_clients_and_closes_plain_ones() {
    let _serial = common::cluster::serial();
    let cluster = start_with_certs(3, &format!("{PEER_TLS}{CLIENT_TLS}"));
    wait_tls_answer(&cluster, 1, None);

    // raftfs client takes TLS from the config (the CA of [peer_tls]).
    let config = &cluster.config_path;
    let (code, out, err) = raftfs(&["client", "write", "greeting", "hello"], config);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = raftfs(&["client", "read", "greeting"], config);
    assert_eq!((code, out.trim()), (0, "hello"), "{err}");

    // A rustls client: pipelined writes and a large value, on a follower too.
    let mut tls = tls_client(&cluster, 2, None).expect("TLS client");
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(format!("write p{i} 3\r\nabc\r\n").as_bytes());
    }
    tls.get_mut().write_all(&batch).expect("send");
    for _ in 0..200 {
        line_starting(&mut tls, "OK ");
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut request = format!("write big {}\r\n", big.len()).into_bytes();
    request.extend_from_slice(&big);
    request.extend_from_slice(b"\r\nread big\r\n");
    tls.get_mut().write_all(&request).expect("send big");
    line_starting(&mut tls, "OK ");
    let header = line_starting(&mut tls, "CONTENTS");
    assert!(header.contains(" 300000 "), "{header}");
    let mut content = vec![0u8; big.len() + 2];
    tls.read_exact(&mut content).expect("content");
    assert_eq!(&content[..big.len()], &big[..]);

    // A plain client on the TLS port is closed; the TLS client is unharmed.
    let mut plain = TcpStream::connect(client_socket(&cluster, 2)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    plain.write_all(b"read greeting\r\n").expect("send");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("CONTENTS"),
        "a plain client got an answer"
    );
    tls.get_mut().write_all(b"read greeting\r\n").expect("send");
    line_starting(&mut tls, "CONTENTS");

    // openssl s_client, when it is installed.
    if Command::new("openssl").arg("version").output().is_ok() {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
            .arg(client_socket(&cluster, 3).to_string())
            .arg("-CAfile")
            .arg(cluster.dir.path().join("certs/ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"read greeting\r\n").expect("send");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let second = lines.next().and_then(Result::ok);
            let _ = sender.send((first, second));
        });
        let answer = receiver.recv_timeout(Duration::from_secs(20));
        let _ = child.kill();
        let _ = child.wait();
        let (first, second) = answer.expect("openssl answered within 20 s");
        assert_eq!(first.as_deref(), Some("CONTENTS 1 5 0"), "{second:?}");
        assert_eq!(second.as_deref(), Some("hello"));
    }
    let (code, table, stderr) = raftfs(&["status"], &cluster.config_path);
    assert_eq!(code, 0, "{table}{stderr}");
}

#[test]
fn client_certificates_when_the_port_requires_them() {
    let _serial = common::cluster::serial();
    let extra = format!("{CLIENT_TLS}ca = \"certs/ca.pem\"\n");
    let cluster = start_with_certs(1, &extra);
    let certs = cluster.dir.path().join("certs");
    let pair = (certs.join("client.pem"), certs.join("client.key"));
    wait_tls_answer(&cluster, 1, Some((&pair.0, &pair.1)));

    // Without a certificate: no answer, the connection closes.
    let refused = tls_client(&cluster, 1, None).and_then(|mut client| {
        client.get_mut().write_all(b"read probe\r\n")?;
        let mut line = String::new();
        client.read_line(&mut line)?;
        Ok(line)
    });
    assert!(
        !matches!(&refused, Ok(line) if !line.is_empty()),
        "answered without a client certificate: {refused:?}"
    );

    // raftfs client finds client.pem beside the CA by itself.
    let (code, out, err) = raftfs(&["client", "write", "x", "1"], &cluster.config_path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK"), "{out}");
}

#[test]
fn missing_tls_files_are_refused_at_start_with_one_line() {
    let cluster = Cluster::configure(Options::new(1).fsync(false).extra(PEER_TLS));
    let output = Command::new(binary())
        .args(["node", "--id", "1", "--config"])
        .arg(&cluster.config_path)
        .stdin(Stdio::null())
        .output()
        .expect("run raftfs node");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("peer_tls") && last.contains("ca.pem"),
        "{stderr}"
    );
    // And certs never overwrites what it made.
    make_certs(&cluster, "certs");
    let again = Command::new(binary())
        .args(["certs", "--config"])
        .arg(&cluster.config_path)
        .arg("--out")
        .arg(cluster.dir.path().join("certs"))
        .output()
        .expect("run raftfs certs");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to make"));
}
