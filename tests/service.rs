//! A `raftfs node` as a service: a panic in any thread ends the process
//! with a non-zero exit, and systemd's notify protocol (`READY=1`,
//! `STATUS=`, `STOPPING=1`) reaches a fake `$NOTIFY_SOCKET`.

mod common;

use common::cluster::{Cluster, Options};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn a_panic_in_any_thread_ends_the_process_non_zero() {
    let mut cluster = Cluster::configure(Options::new(1).fsync(false));
    cluster.node_env.insert(
        1,
        vec![(
            raftfs::service::INJECT_PANIC_ENV.to_string(),
            "500".to_string(),
        )],
    );
    cluster.start_node(1);
    let status = cluster
        .wait_exit(1, Duration::from_secs(10))
        .expect("the process exits after the panic");
    assert_eq!(
        status.code(),
        Some(raftfs::service::PANIC_EXIT_CODE),
        "{status}"
    );
    let log = cluster.log_text(1);
    assert!(log.contains("injected panic"), "{log}");
    assert!(
        log.contains("thread injected-panic panicked: the process exits with code 70"),
        "{log}"
    );
}

/// Datagrams received on `socket` until `predicate` holds for one of them
/// or `timeout` passes.
fn receive_until(
    socket: &UnixDatagram,
    timeout: Duration,
    predicate: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(length) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
            let done = predicate(&message);
            received.push(message);
            if done {
                break;
            }
        }
    }
    received
}

#[test]
fn the_node_tells_systemd_it_is_ready_what_it_does_and_that_it_stops() {
    let socket_dir = tempfile::tempdir().expect("temp dir");
    let socket_path = socket_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind a fake notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut cluster = Cluster::configure(Options::new(1).fsync(false));
    cluster.node_env.insert(
        1,
        vec![(
            "NOTIFY_SOCKET".to_string(),
            socket_path.display().to_string(),
        )],
    );
    cluster.start_node(1);
    let messages = receive_until(&socket, Duration::from_secs(10), |message| {
        message.contains("READY=1")
    });
    let ready = messages.last().cloned().unwrap_or_default();
    assert!(ready.contains("READY=1\n"), "{messages:?}");
    assert!(
        ready.contains(&format!(
            "STATUS=node 1: serving clients on {}",
            cluster.client_address(1)
        )),
        "{messages:?}"
    );
    // The node is serving when it says so.
    let mut client = common::client::Client::connect(&cluster.client_address(1)).expect("connect");
    client.set_timeout(common::client::ANSWER_TIMEOUT);
    assert!(client
        .write("ready", "yes")
        .expect("write")
        .starts_with("OK "));
    let messages = receive_until(&socket, Duration::from_secs(10), |message| {
        message.contains("STATUS=node 1: leader, term ")
    });
    assert!(
        messages.iter().any(|m| m.contains("leader, term")),
        "{messages:?}"
    );
    cluster.signal(1, libc::SIGTERM);
    let messages = receive_until(&socket, Duration::from_secs(10), |message| {
        message.contains("STOPPING=1")
    });
    assert!(
        messages.iter().any(|m| m.contains("STOPPING=1\n")),
        "{messages:?}"
    );
    let status = cluster
        .wait_exit(1, Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status}");
}
