//! Connection handling of a real one-member node under hostile or heavy
//! clients: 10,000 idle connections, a client that pipelines without reading
//! its answers, clients that vanish mid-command, and random garbage. In every
//! case the node survives, its memory and descriptors stay bounded, and a
//! normal client is still served quickly.
//!
//! The tests share one node and run one at a time (`serial`), because they
//! measure the node's memory and descriptors.

mod common;

use common::client::{show, Client};
use common::cluster::serial;
use common::process::ensure_open_files;
use common::single::Node;
use rand::{Rng, SeedableRng};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

static NODE: OnceLock<Mutex<Node>> = OnceLock::new();

const IDLE_CONNECTIONS: usize = 10_000;
/// A normal command must be answered within this while the node is stressed.
const QUICK: Duration = Duration::from_millis(500);

fn node() -> MutexGuard<'static, Node> {
    NODE.get_or_init(|| Mutex::new(Node::start("")))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A normal client gets a write and a read answered quickly; the latency.
fn assert_served(node: &Node, name: &str) -> Duration {
    let started = Instant::now();
    let mut client = node.connect();
    client.set_timeout(Duration::from_secs(5));
    let version = client.write_version(name, b"served");
    client.exchange(
        format!("read {name}\r\n").as_bytes(),
        format!("CONTENTS {version} 6 0\r\nserved\r\n").as_bytes(),
    );
    let elapsed = started.elapsed();
    assert!(elapsed < QUICK, "a normal client waited {elapsed:?}");
    elapsed
}

/// Wait until the node's open descriptors drop to at most `limit`.
fn wait_for_fds_at_most(node: &Node, limit: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = node.open_fds();
        if open <= limit || Instant::now() > deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The node's descriptor count once it stops changing (closes of earlier
/// clients may still be on their way).
fn settled_fds(node: &Node) -> usize {
    let mut last = node.open_fds();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(30));
        let now = node.open_fds();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Everything the server sends until it closes (a reset counts as a close).
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "the server did not close the connection: {e} (got {:?})",
                show(&received)
            ),
        }
    }
}

#[test]
fn ten_thousand_idle_connections_and_the_node_still_answers() {
    let _serial = serial();
    ensure_open_files(IDLE_CONNECTIONS as u64 + 1_000);
    let node = node();
    assert_served(&node, "idle-before");
    let fds_before = settled_fds(&node);
    let rss_before_kib = node.rss_kib();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(TcpStream::connect(node.address).expect("idle connect"));
    }
    let connect_time = started.elapsed();
    // Every one is accepted (the node holds a descriptor for each).
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.open_fds() < fds_before + IDLE_CONNECTIONS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let fds_open = node.open_fds();
    assert!(
        fds_open >= fds_before + IDLE_CONNECTIONS,
        "the node holds {fds_open} descriptors, {fds_before} before {IDLE_CONNECTIONS} connections"
    );
    let latency = assert_served(&node, "idle-during");
    let rss_growth_kib = node.rss_kib().saturating_sub(rss_before_kib);
    eprintln!(
        "{IDLE_CONNECTIONS} idle connections: connected in {connect_time:?}, \
         node RSS +{rss_growth_kib} KiB, a normal client served in {latency:?}"
    );
    // Idle connections hold no buffers: a few KiB each at most.
    assert!(
        rss_growth_kib < 64 * 1024,
        "{IDLE_CONNECTIONS} idle connections grew the node by {rss_growth_kib} KiB"
    );
    // The first and the last idle connections still work.
    for stream in [&idle[0], &idle[IDLE_CONNECTIONS - 1]] {
        let mut client = Client::from_stream(stream.try_clone().expect("clone"));
        client.exchange(b"read idle-during\r\n", b"CONTENTS ");
    }
    drop(idle);
    let fds_after = wait_for_fds_at_most(&node, fds_before);
    assert!(
        fds_after <= fds_before,
        "descriptors leaked: {fds_after} > {fds_before}"
    );
    assert_served(&node, "idle-after");
}

/// A client that pipelines thousands of commands and never reads its answers
/// is stopped by backpressure: the node's memory stays bounded (even when the
/// answers are copies of a large file) and other clients are served.
#[test]
fn a_client_that_never_reads_its_answers_is_bounded() {
    let _serial = serial();
    let node = node();
    const FILE_BYTES: usize = 128 << 10;
    const READS: usize = 4_000;
    let mut writer = node.connect();
    writer.write_version("hog-file", &vec![b'h'; FILE_BYTES]);
    let rss_before_kib = node.rss_kib();

    let mut hog = TcpStream::connect(node.address).expect("hog connect");
    hog.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let mut request = Vec::new();
    for i in 0..READS {
        request.extend_from_slice(b"read hog-file\r\n");
        if i % 4 == 0 {
            request.extend_from_slice(format!("write hog-{} 2\r\nhi\r\n", i % 64).as_bytes());
        }
    }
    // Send until the kernel buffers fill (the node stops reading); a write
    // timeout means backpressure reached the client, which is the point.
    let mut sent = 0;
    while sent < request.len() {
        match hog.write(&request[sent..]) {
            Ok(n) => sent += n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(e) => panic!("hog send: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_growth_kib = node.rss_kib().saturating_sub(rss_before_kib);
    let latency = assert_served(&node, "hog-neighbour");
    eprintln!(
        "hog sent {sent} of {} bytes ({READS} reads of a {FILE_BYTES}-byte file) without reading: \
         node RSS +{rss_growth_kib} KiB, a normal client served in {latency:?}",
        request.len()
    );
    // Unbounded, the answers would be READS copies of the file (500 MiB).
    assert!(
        rss_growth_kib < 160 * 1024,
        "a client that reads nothing grew the node by {rss_growth_kib} KiB"
    );
    // Once it reads, it gets its answers in order.
    let mut hog = Client::from_stream(hog);
    let first = hog.reply_parts().expect("first hog answer");
    assert!(first.line.starts_with("CONTENTS "), "{:?}", first.line);
    assert_eq!(first.content.map(|c| c.len()), Some(FILE_BYTES));
    drop(hog);
    assert_served(&node, "hog-after");
}

/// Clients that vanish halfway through a command free everything; the
/// half-sent commands never run.
#[test]
fn clients_that_disconnect_mid_command_are_cleaned_up() {
    let _serial = serial();
    let node = node();
    assert_served(&node, "half-before");
    let fds_before = settled_fds(&node);
    for i in 0..200 {
        let mut stream = TcpStream::connect(node.address).expect("connect");
        let partial: Vec<u8> = match i % 4 {
            0 => [b"write half 1000\r\n".as_slice(), &[b'x'; 500]].concat(),
            1 => b"write half 10".to_vec(),
            2 => [b"write half 3\r\nabc".as_slice()].concat(),
            _ => [
                b"read half-there\r\nwrite half 100000\r\n".as_slice(),
                &[b'y'; 60_000],
            ]
            .concat(),
        };
        stream.write_all(&partial).expect("send partial");
        if i % 2 == 0 {
            // Reset instead of a clean close.
            let _ = socket_linger_zero(&stream);
        }
        drop(stream);
    }
    let fds_after = wait_for_fds_at_most(&node, fds_before);
    assert!(
        fds_after <= fds_before,
        "descriptors leaked: {fds_after} > {fds_before}"
    );
    let mut client = node.connect();
    client.exchange(b"read half\r\n", b"ERR_FILE_NOT_FOUND\r\n");
    assert_served(&node, "half-after");
}

fn socket_linger_zero(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` for the given length only.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Random bytes get `ERR_CMD_ERR` and a close; the node survives and no file
/// changes.
#[test]
fn random_garbage_is_refused_and_the_node_survives() {
    let _serial = serial();
    let mut node = node();
    let version = node.connect().write_version("garbage-victim", b"safe");
    let fds_before = settled_fds(&node);
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0x5eed_6a7b);
    for round in 0..50 {
        let length = rng.gen_range(1..16_384);
        let mut garbage: Vec<u8> = (0..length).map(|_| rng.gen()).collect();
        // Start with a byte no command starts with, so the first line is a
        // bad command (an empty first line would be answered and kept).
        garbage[0] = rng.gen_range(0x80..=0xff);
        let mut stream = TcpStream::connect(node.address).expect("connect");
        // The node may close before everything is sent; that is fine.
        let _ = stream.write_all(&garbage);
        let received = read_until_closed(&mut stream);
        assert!(
            received == b"ERR_CMD_ERR\r\n",
            "round {round}: garbage got {:?}",
            show(&received)
        );
    }
    assert!(node.is_running(), "the node died: {}", node.log_text());
    let fds_after = wait_for_fds_at_most(&node, fds_before);
    assert!(
        fds_after <= fds_before,
        "descriptors leaked: {fds_after} > {fds_before}"
    );
    let mut client = node.connect();
    client.exchange(
        b"read garbage-victim\r\n",
        format!("CONTENTS {version} 4 0\r\nsafe\r\n").as_bytes(),
    );
    assert_served(&node, "garbage-after");
}
