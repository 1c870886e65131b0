//! `raftfs client` (SPEC §1) run as a binary against real `raftfs node`
//! processes: one-shot commands and their exit codes (0 ok, 1 not found or
//! version mismatch, 2 usage, 3 unavailable), `--addr` and `--config`,
//! following a redirect, skipping a member that is down, the shell fed from
//! stdin, and `watch` against a stand-in server that speaks SPEC §2's bytes.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{serial, Cluster, Options};
use common::process::{binary, spawn_tied_to_process};

/// Longest a client run may take in these tests: its own bounds (5 s of
/// retries, 6 s per answer) plus slack.
const CLIENT_RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `raftfs client ARGS` with `stdin`, killing it after
/// `CLIENT_RUN_TIMEOUT`.
fn client(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(binary());
    command
        .arg("client")
        .args(args)
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied_to_process(command).expect("spawn raftfs client");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let deadline = Instant::now() + CLIENT_RUN_TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("raftfs client {args:?} did not finish in {CLIENT_RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("client output")
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code and returns stdout.
fn expect(output: Output, expected: i32, what: &str) -> Vec<u8> {
    assert_eq!(
        code(&output),
        expected,
        "{what}: stdout {:?} stderr {:?}",
        text(&output.stdout),
        text(&output.stderr)
    );
    output.stdout
}

fn options() -> Options {
    Options::new(3).fsync(false)
}

#[test]
fn one_shot_commands_follow_redirects_and_skip_a_down_member() {
    let _serial = serial();
    let mut cluster = Cluster::start(options());
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    let follower = cluster.ids().find(|&id| id != leader).expect("follower");
    let all = cluster.client_addresses().join(",");
    // Through a follower alone: it redirects to the leader (or, once
    // followers serve, answers itself); either way the write lands.
    let only_follower = cluster.client_address(follower);
    let stdout = expect(
        client(
            &["--addr", &only_follower, "write", "greeting", "hello"],
            b"",
        ),
        0,
        "write through a follower",
    );
    assert_eq!(text(&stdout), "OK 1\n");
    let stdout = expect(
        client(&["--addr", &all, "read", "greeting"], b""),
        0,
        "read",
    );
    assert_eq!(stdout, b"hello", "content exactly as stored, nothing added");
    let stdout = expect(
        client(&["--addr", &all, "read", "--header", "greeting"], b""),
        0,
        "read --header",
    );
    assert_eq!(text(&stdout), "CONTENTS 1 5 0\nhello");

    // Content from stdin (`-`), with bytes a shell could not pass.
    let binary_content = b"line 1\r\nline 2\n\x00\xff";
    let stdout = expect(
        client(
            &[
                "--config",
                cluster.config_path.to_str().expect("utf-8"),
                "cas",
                "greeting",
                "1",
                "--exptime",
                "600",
                "-",
            ],
            binary_content,
        ),
        0,
        "cas from stdin",
    );
    assert_eq!(text(&stdout), "OK 2\n");
    let stdout = expect(
        client(&["--addr", &all, "read", "--header", "greeting"], b""),
        0,
        "read back",
    );
    let mut expected = b"CONTENTS 2 17 600\n".to_vec();
    expected.extend_from_slice(binary_content);
    assert_eq!(stdout, expected);

    // Definite answers that are not a success: exit 1, the reason on stderr.
    let mismatch = client(&["--addr", &all, "cas", "greeting", "1", "x"], b"");
    assert_eq!(code(&mismatch), 1);
    assert!(
        text(&mismatch.stderr).contains("ERR_VERSION 2"),
        "{mismatch:?}"
    );
    assert!(mismatch.stdout.is_empty());
    let missing = client(&["--addr", &all, "read", "nothing-here"], b"");
    assert_eq!(code(&missing), 1);
    assert!(
        text(&missing.stderr).contains("ERR_FILE_NOT_FOUND"),
        "{missing:?}"
    );

    // Usage: exit 2 before anything is sent.
    expect(
        client(&["--addr", &all, "read", "two words"], b""),
        2,
        "bad name",
    );
    expect(
        client(&["--addr", &all, "fetch", "x"], b""),
        2,
        "unknown command",
    );
    expect(
        client(&["--addr", "no-port", "read", "x"], b""),
        2,
        "bad address",
    );
    expect(
        client(&["--addr", &all, "cas", "x", "v1", "y"], b""),
        2,
        "bad version",
    );

    // A member that is down is skipped, first in the list or not.
    cluster.kill(follower);
    let down_first = format!("{},{all}", cluster.client_address(follower));
    let stdout = expect(
        client(&["--addr", &down_first, "delete", "greeting"], b""),
        0,
        "delete with a member down",
    );
    assert_eq!(text(&stdout), "OK\n");
    expect(
        client(&["--addr", &down_first, "delete", "greeting"], b""),
        1,
        "delete again",
    );

    // Nobody answers: exit 3, quickly.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    let started = Instant::now();
    let nobody = client(&["--addr", &all, "read", "greeting"], b"");
    assert_eq!(code(&nobody), 3, "{nobody:?}");
    assert!(
        text(&nobody.stderr).contains("no member answers"),
        "{nobody:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_member_without_quorum_is_unavailable() {
    let _serial = serial();
    let mut cluster = Cluster::start(options());
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    let survivor = cluster.ids().find(|&id| id != leader).expect("follower");
    for id in cluster
        .ids()
        .filter(|&id| id != survivor)
        .collect::<Vec<_>>()
    {
        cluster.kill(id);
    }
    // The survivor cannot elect itself: it answers ERR_INTERNAL (or keeps
    // redirecting to the dead leader until the client gives up).
    let output = client(
        &[
            "--addr",
            &cluster.client_address(survivor),
            "write",
            "f",
            "v",
        ],
        b"",
    );
    assert_eq!(code(&output), 3, "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("ERR_INTERNAL") || stderr.contains("unavailable"),
        "{stderr}"
    );
}

#[test]
fn the_shell_runs_commands_from_stdin() {
    let _serial = serial();
    let cluster = Cluster::start(options());
    cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    let all = cluster.client_addresses().join(",");
    let script = "\
write note hello  world
read note
cas note 1 --exptime 60 second
cas note 1 third
read note
bogus
read
delete note
read note
help
";
    let stdout = text(&expect(
        client(&["--addr", &all], script.as_bytes()),
        0,
        "shell",
    ));
    let expected_in_order = [
        "OK, version 1",
        "version 1, 12 bytes, no expiry\nhello  world",
        "OK, version 2",
        "ERR_VERSION 2: the file is at version 2",
        "version 2, 6 bytes, expires in 60 s\nsecond",
        "unknown command `bogus`",
        "read needs a NAME",
        "OK, deleted",
        "ERR_FILE_NOT_FOUND: no such file",
        "watch NAME VERSION",
    ];
    let mut rest = stdout.as_str();
    for expected in expected_in_order {
        let at = rest
            .find(expected)
            .unwrap_or_else(|| panic!("{expected:?} missing (in order) from:\n{stdout}"));
        rest = &rest[at + expected.len()..];
    }
}

/// A stand-in member: accepts one connection, records the first line of
/// the command, waits `delay`, then sends `answer`.
fn one_answer_server(
    answer: &'static [u8],
    delay: Duration,
) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut received = Vec::new();
        let mut byte = [0u8; 1];
        while !received.ends_with(b"\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
            received.push(byte[0]);
        }
        std::thread::sleep(delay);
        stream.write_all(answer).expect("answer");
        received
    });
    (address, thread)
}

#[test]
fn watch_sends_the_spec_bytes_and_prints_the_answer_as_read_does() {
    // Longer than the client's answer timeout would allow a read: a watch
    // waits as long as it takes.
    let (address, server) =
        one_answer_server(b"CONTENTS 8 3 0\r\nnew\r\n", Duration::from_millis(7_000));
    let output = client(&["--addr", &address, "watch", "cfg", "7"], b"");
    assert_eq!(server.join().expect("server"), b"watch cfg 7\r\n");
    assert_eq!(expect(output, 0, "watch"), b"new");

    let (address, server) = one_answer_server(b"ERR_FILE_NOT_FOUND\r\n", Duration::ZERO);
    let output = client(&["--addr", &address, "watch", "cfg", "8"], b"");
    assert_eq!(server.join().expect("server"), b"watch cfg 8\r\n");
    assert_eq!(code(&output), 1, "deleted while watched: {output:?}");
}

#[test]
fn a_redirect_is_followed_to_the_named_member() {
    let _serial = serial();
    let cluster = Cluster::start(Options::new(1).fsync(false));
    cluster
        .wait_leader(Duration::from_secs(10))
        .expect("leader");
    // A member that always redirects to the real node.
    let redirect: &'static [u8] = Box::leak(
        format!("ERR_REDIRECT {}\r\n", cluster.client_address(1))
            .into_bytes()
            .into_boxed_slice(),
    );
    let (redirector, server) = one_answer_server(redirect, Duration::ZERO);
    let stdout = expect(
        client(&["--addr", &redirector, "write", "moved", "here"], b""),
        0,
        "write redirected",
    );
    assert_eq!(server.join().expect("redirector"), b"write moved 4\r\n");
    assert_eq!(text(&stdout), "OK 1\n");
}
