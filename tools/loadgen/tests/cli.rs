//! The `loadgen` binary: `--json` output, `--hgrm` file, bad flags, exit codes.

mod common;

use std::process::Command;

use common::fake::{self, FakeServer, Mode};

fn loadgen(flags: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(flags)
        .output()
        .expect("loadgen runs")
}

#[test]
fn json_is_the_last_line_with_the_required_keys() {
    let server = FakeServer::start(Mode::Store);
    let directory = std::env::temp_dir().join(format!("loadgen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let hgrm = directory.join("latency.hgrm");
    let output = loadgen(&[
        "--addr",
        &server.address.to_string(),
        "--clients",
        "2",
        "--pipeline",
        "4",
        "--duration",
        "1.2",
        "--mix",
        "write=1,read=3",
        "--size",
        "64",
        "--keys",
        "10",
        "--json",
        "--hgrm",
        hgrm.to_str().expect("utf-8"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let last = stdout.lines().last().expect("some output");
    let json: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    for key in [
        "ops",
        "errors",
        "duration_s",
        "throughput",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
    ] {
        assert!(json[key].is_number(), "{key} missing in {last}");
    }
    assert!(json["ops"].as_u64().is_some_and(|ops| ops > 0));
    assert_eq!(json["errors"].as_u64(), Some(0));
    assert_eq!(json["mix"]["read"].as_u64(), Some(3));
    assert_eq!(json["errors_by_kind"]["timeout"].as_u64(), Some(0));
    assert_eq!(json["prefill"]["written"].as_u64(), Some(10));
    assert!(stdout.contains("latency us p50"), "{stdout}");
    // Progress went to stderr once a second.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ops/s"), "{stderr}");
    let distribution = std::fs::read_to_string(&hgrm).expect("hgrm written");
    assert!(distribution.contains("1/(1-Percentile)") && distribution.contains("#[Max"));
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn bad_flags_give_one_clear_error_and_a_failure_status() {
    for flags in [
        &["--addr", "127.0.0.1:1", "--mix", "fetch=1"][..],
        &["--addr", "127.0.0.1:1", "--pipeline", "0"][..],
        &["--addr", "nonsense"][..],
        &["--clients", "3"][..],
        &["--addr", "127.0.0.1:1", "--duration", "-1"][..],
    ] {
        let output = loadgen(flags);
        assert!(!output.status.success(), "{flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr
                .lines()
                .next()
                .is_some_and(|line| line.starts_with("error:")),
            "{flags:?}: {stderr}"
        );
    }
}

#[test]
fn nothing_listening_fails_with_one_line() {
    let address = fake::closed_address().to_string();
    let output = loadgen(&["--addr", &address, "--duration", "0.2", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loadgen: error: no client could connect"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn every_operation_failing_is_a_failure_status() {
    let server = FakeServer::start(Mode::Fixed(b"ERR_INTERNAL\r\n".to_vec()));
    let output = loadgen(&[
        "--addr",
        &server.address.to_string(),
        "--clients",
        "2",
        "--duration",
        "0.3",
        "--mix",
        "write=1",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("every operation failed"), "{stderr}");
    // The report is still printed, the JSON last.
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    assert_eq!(json["ops"].as_u64(), Some(0));
    assert!(json["errors_by_kind"]["internal"].as_u64() > Some(0));
}
