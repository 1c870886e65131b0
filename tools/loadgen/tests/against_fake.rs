//! loadgen end to end against in-test fake servers on 127.0.0.1.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::fake::{self, FakeServer, Mode, Options};
use common::{assert_accounted, config, run};
use loadgen::source::{Source, Versions};
use loadgen::worker::{PhaseLimit, Progress, Worker};
use loadgen::{ErrorKind, Kind, Mix, Stats};

#[test]
fn full_mix_against_a_store_parses_every_answer() {
    let server = FakeServer::start(Mode::Store);
    let report = run(&format!(
        "--addr {} --clients 4 --pipeline 8 --duration 0.4 --mix write=2,read=4,cas=2,delete=1 \
         --size 300 --keys 20 --threads 2",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert!(report.ops() > 100, "{}", report.text());
    let kinds = &report.stats.kinds;
    // Reads of 300-byte contents full of \r\n parsed fine, and cas used versions it had seen.
    assert!(kinds[Kind::Read.index()].success > 0, "{}", report.text());
    assert!(kinds[Kind::Cas.index()].success > 0, "{}", report.text());
    assert!(kinds[Kind::Delete.index()].success > 0, "{}", report.text());
    assert!(kinds[Kind::Read.index()].not_found + kinds[Kind::Cas.index()].not_found > 0);
    let prefill = report.prefill.clone().expect("a mix with reads prefills");
    assert_eq!((prefill.keys, prefill.written, prefill.errors), (20, 20, 0));
    assert_eq!(server.stats.bad_content.load(Ordering::SeqCst), 0);
    for (name, (_, content)) in server.files() {
        assert!(name.starts_with(b"key-"));
        assert_eq!(content, loadgen::command::content_pattern(300));
    }
    let latency = report.percentiles();
    assert!(latency.p50_us <= latency.p90_us && latency.p90_us <= latency.p99_us);
    assert!(latency.p99_us <= latency.p999_us && latency.p999_us <= latency.max_us);
    assert!(report.throughput() > 0.0);
}

#[test]
fn cas_mostly_succeeds_with_versions_seen() {
    let server = FakeServer::start(Mode::Store);
    // One client: every cas names the version it last saw, so every cas succeeds.
    let report = run(&format!(
        "--addr {} --clients 1 --pipeline 1 --duration 0.2 --mix cas=1 --keys 5",
        server.address
    ));
    assert_accounted(&report);
    let cas = &report.stats.kinds[Kind::Cas.index()];
    assert!(cas.success > 10, "{}", report.text());
    assert_eq!(
        cas.version_mismatch + cas.not_found + cas.errors,
        0,
        "{}",
        report.text()
    );
}

#[test]
fn pipeline_depth_is_reached_and_never_exceeded() {
    let options = Options {
        hold_ms: Some(20),
        ..Options::default()
    };
    let server = FakeServer::start_with(Mode::Store, options);
    let report = run(&format!(
        "--addr {} --clients 3 --pipeline 7 --duration 0.3 --mix write=1,delete=1",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert_eq!(server.stats.max_batch.load(Ordering::SeqCst), 7);
}

#[test]
fn redirects_are_followed_with_commands_resent_in_order() {
    let leader = FakeServer::start(Mode::Store);
    let follower = FakeServer::start(Mode::Redirect(leader.address.to_string()));
    let report = run(&format!(
        "--addr {} --clients 4 --pipeline 4 --duration 0.3 --mix write=1,read=1 --keys 10",
        follower.address
    ));
    assert_accounted(&report);
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert!(report.ops() > 50);
    assert!(report
        .prefill
        .as_ref()
        .is_some_and(|prefill| prefill.written == 10));
    assert!(follower.stats.commands.load(Ordering::SeqCst) >= 1);
    assert!(leader.stats.commands.load(Ordering::SeqCst) >= report.ops());
    assert_eq!(
        report.stats.redirects_followed, 4,
        "one redirect per client, then it stays on the leader"
    );
    assert_eq!(
        report.stats.connections_opened, 8,
        "each client connected to the follower, then the leader"
    );
    assert_eq!(leader.stats.bad_content.load(Ordering::SeqCst), 0);
}

#[test]
fn redirect_loops_and_unreachable_targets_are_errors() {
    let first = fake::bind();
    let second = fake::bind();
    let (first_address, second_address) = (
        first.local_addr().expect("addr"),
        second.local_addr().expect("addr"),
    );
    let _first = FakeServer::start_on(
        first,
        Mode::Redirect(second_address.to_string()),
        Options::default(),
    );
    let _second = FakeServer::start_on(
        second,
        Mode::Redirect(first_address.to_string()),
        Options::default(),
    );
    let report = run(&format!(
        "--addr {first_address} --clients 2 --pipeline 2 --duration 0.3 --mix write=1"
    ));
    assert_accounted(&report);
    assert_eq!(report.ops(), 0);
    assert!(
        report.stats.error_count(ErrorKind::Redirect) > 0,
        "{}",
        report.text()
    );
    assert!(report.stats.redirects_followed > 0);

    let nowhere = FakeServer::start(Mode::Redirect(fake::closed_address().to_string()));
    let report = run(&format!(
        "--addr {} --clients 2 --duration 0.3 --mix delete=1",
        nowhere.address
    ));
    assert_accounted(&report);
    assert_eq!(report.ops(), 0);
    assert!(
        report.stats.error_count(ErrorKind::Redirect) > 0,
        "{}",
        report.text()
    );
    assert!(report.stats.connect_failures > 0);

    let unparsable = FakeServer::start(Mode::Redirect("no-port-here".to_string()));
    let report = run(&format!(
        "--addr {} --clients 1 --duration 0.2 --mix delete=1",
        unparsable.address
    ));
    assert_accounted(&report);
    assert!(
        report.stats.error_count(ErrorKind::Redirect) > 0,
        "{}",
        report.text()
    );
}

#[test]
fn error_replies_are_counted_by_kind() {
    for (reply, kind) in [
        (&b"ERR_CMD_ERR\r\n"[..], ErrorKind::CommandError),
        (&b"ERR_INTERNAL\r\n"[..], ErrorKind::Internal),
        // A reply that does not fit the command (OK without version for a write).
        (&b"OK\r\n"[..], ErrorKind::Protocol),
    ] {
        let server = FakeServer::start(Mode::Fixed(reply.to_vec()));
        let report = run(&format!(
            "--addr {} --clients 2 --pipeline 3 --duration 0.2 --mix write=1",
            server.address
        ));
        assert_accounted(&report);
        assert_eq!(report.ops(), 0);
        assert!(report.errors() > 10, "{}", report.text());
        assert_eq!(
            report.stats.error_count(kind),
            report.errors(),
            "{}",
            report.text()
        );
    }
    // Not-found and version mismatches are answers, not errors.
    let server = FakeServer::start(Mode::Fixed(b"ERR_VERSION 3\r\n".to_vec()));
    let report = run(&format!(
        "--addr {} --clients 1 --duration 0.2 --mix cas=1 --no-prefill",
        server.address
    ));
    assert_eq!(report.errors(), 0, "{}", report.text());
    assert!(report.stats.kinds[Kind::Cas.index()].version_mismatch > 0);
}

#[test]
fn garbage_replies_drop_the_connection() {
    let server = FakeServer::start(Mode::Fixed(b"HELLO\r\n".to_vec()));
    let report = run(&format!(
        "--addr {} --clients 1 --pipeline 4 --duration 0.2 --mix read=1 --no-prefill",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.ops(), 0);
    assert!(
        report.stats.error_count(ErrorKind::Protocol) > 0,
        "{}",
        report.text()
    );
    assert!(
        report.stats.connections_opened > 1,
        "reconnected after dropping the connection"
    );
}

#[test]
fn closed_connections_fail_their_outstanding_commands_and_reconnect() {
    let server = FakeServer::start(Mode::CloseOnCommand);
    let report = run(&format!(
        "--addr {} --clients 2 --pipeline 5 --duration 0.3 --mix delete=1",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.ops(), 0);
    assert!(
        report.stats.error_count(ErrorKind::Closed) >= 10,
        "{}",
        report.text()
    );
    assert!(
        server.stats.connections.load(Ordering::SeqCst) > 2,
        "clients reconnected"
    );

    let options = Options {
        close_after_answers: Some(25),
        ..Options::default()
    };
    let server = FakeServer::start_with(Mode::Store, options);
    let report = run(&format!(
        "--addr {} --clients 2 --pipeline 4 --duration 0.3 --mix write=1",
        server.address
    ));
    assert_accounted(&report);
    assert!(report.ops() >= 100, "{}", report.text());
    assert!(report.stats.connections_opened > 4, "{}", report.text());
}

#[test]
fn an_idle_connection_closed_by_the_server_is_reopened_without_error() {
    let server = FakeServer::start(Mode::Store);
    let config = config(&format!(
        "--addr {} --clients 3 --timeout-ms 2000",
        server.address
    ));
    let versions = Versions::new(config.keys);
    let content = loadgen::command::content_pattern(config.size_bytes);
    let progress = Progress::default();
    let mut worker = Worker::new(&config, &versions, &content, 0..3).expect("worker");
    let mut setup = Stats::new();
    worker.run_phase(
        &mut Source::Nothing,
        &mut setup,
        PhaseLimit::Stall(config.timeout()),
        &progress,
    );
    assert_eq!(worker.connected_clients(), 3);
    server.wait_for_connections(3);
    server.close_all_connections();
    std::thread::sleep(Duration::from_millis(50));
    let mut measured = Stats::new();
    let deadline = Instant::now() + Duration::from_millis(300);
    let mix = Mix::new(1, 0, 0, 0).expect("positive");
    let mut source = Source::mix(1, 0, mix, config.keys, deadline);
    worker.run_phase(
        &mut source,
        &mut measured,
        PhaseLimit::Deadline(deadline + config.timeout()),
        &progress,
    );
    assert_eq!(measured.error_total(), 0);
    assert!(measured.ops() > 10);
    assert_eq!(
        measured.connections_opened, 3,
        "each client reopened its connection once"
    );
    assert_eq!(server.stats.connections.load(Ordering::SeqCst), 6);
}

#[test]
fn a_hanging_server_cannot_stretch_the_run() {
    let server = FakeServer::start(Mode::Hang);
    let started = Instant::now();
    let report = run(&format!(
        "--addr {} --clients 3 --pipeline 2 --duration 0.5 --timeout-ms 300 --mix read=1,write=1",
        server.address
    ));
    let elapsed = started.elapsed();
    assert_accounted(&report);
    // The prefill gives up after one timeout without progress; the measured
    // phase ends by duration + timeout (generous slack for a loaded machine).
    assert!(
        elapsed < Duration::from_millis(300 + 500 + 300 + 1000),
        "took {elapsed:?}"
    );
    assert!(report.duration_s < 0.5 + 0.3 + 0.2, "{}", report.duration_s);
    assert!(report.duration_s >= 0.5, "{}", report.duration_s);
    assert_eq!(report.ops(), 0);
    assert!(report.stats.error_count(ErrorKind::Timeout) > 0);
    assert_eq!(
        report.stats.error_count(ErrorKind::Timeout),
        report.errors()
    );
    let prefill = report.prefill.clone().expect("prefill ran");
    assert_eq!(prefill.written, 0);
    assert!(prefill.errors > 0);
}

#[test]
fn a_healthy_run_ends_right_after_its_duration() {
    let server = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let started = Instant::now();
    let report = run(&format!(
        "--addr {} --clients 4 --pipeline 16 --duration 0.3 --mix delete=1",
        server.address
    ));
    assert_accounted(&report);
    assert_eq!(report.errors(), 0);
    // Far below duration + the default 5 s timeout: the drain ends with the last answer.
    assert!(
        report.duration_s >= 0.3 && report.duration_s < 0.8,
        "{}",
        report.duration_s
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn several_addresses_spread_the_clients() {
    let first = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let second = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let report = run(&format!(
        "--addr {},{} --clients 4 --duration 0.2 --mix delete=1 --spread",
        first.address, second.address
    ));
    assert_eq!(report.errors(), 0);
    first.wait_for_connections(2);
    second.wait_for_connections(2);
    assert_eq!(first.stats.connections.load(Ordering::SeqCst), 2);
    assert_eq!(second.stats.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn without_spread_every_client_starts_on_the_first_address_and_skips_it_when_down() {
    let first = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let second = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let report = run(&format!(
        "--addr {},{} --clients 4 --duration 0.2 --mix delete=1",
        first.address, second.address
    ));
    assert_eq!(report.errors(), 0);
    first.wait_for_connections(4);
    assert_eq!(first.stats.connections.load(Ordering::SeqCst), 4);
    assert_eq!(second.stats.connections.load(Ordering::SeqCst), 0);

    let down = fake::closed_address();
    let report = run(&format!(
        "--addr {down},{} --clients 2 --duration 0.2 --mix delete=1",
        second.address
    ));
    assert!(report.ops() > 0, "{}", report.text());
    second.wait_for_connections(2);
}

#[test]
fn addresses_come_from_a_cluster_config() {
    let server = FakeServer::start(Mode::Fixed(b"OK\r\n".to_vec()));
    let directory = tempfile_dir("config");
    let path = directory.join("cluster.toml");
    let peer = fake::closed_address();
    std::fs::write(
        &path,
        format!(
            "[[node]]\nid = 1\nclient = \"{}\"\npeer = \"{peer}\"\n",
            server.address
        ),
    )
    .expect("write cluster.toml");
    let report = run(&format!(
        "--config {} --clients 2 --duration 0.2 --mix delete=1",
        path.display()
    ));
    assert_eq!(report.config.addresses, vec![server.address]);
    assert!(
        report.ops() > 0 && report.errors() == 0,
        "{}",
        report.text()
    );
    let _ = std::fs::remove_dir_all(&directory);
}

/// A fresh directory under the system temp dir for one test.
fn tempfile_dir(label: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("loadgen-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    directory
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let address = fake::closed_address().to_string();
    let error = loadgen::run(
        &config(&format!("--addr {address} --duration 0.2")),
        &mut std::io::sink(),
    )
    .expect_err("nothing listens");
    let message = error.to_string();
    assert!(
        message.contains("no client could connect") && message.contains(&address),
        "{message}"
    );
}
