//! The files in `deploy/` checked against the code they describe (Docker
//! cannot run here, so each artifact is checked for what would break it):
//! - the Grafana dashboard and the Prometheus alert rules use only metrics,
//!   labels and label values a real node's `/metrics` shows, and every
//!   metric keeps one label set per series family;
//! - the compose file runs five nodes of a valid cluster.toml, with ids,
//!   addresses, published ports and mounts that agree with it;
//! - the Dockerfile's build stage copies everything cargo needs and builds
//!   every binary the image and the compose file run (with
//!   `RAFTFS_DOCKERFILE_BUILD=1` it replays that build for real, offline);
//! - the systemd unit passes `systemd-analyze verify` where it exists.

mod common;

use common::client::{Client, ANSWER_TIMEOUT};
use common::cluster::{Cluster, Options};
use common::http::http_get;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn yaml(relative: &str) -> Yaml {
    let mut documents = YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"));
    assert_eq!(documents.len(), 1, "{relative}: one YAML document");
    documents.remove(0)
}

/// One sample line of the text exposition: name, labels, value.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>) {
    let (series, _value) = line.rsplit_once(' ').expect("a sample has a value");
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_string(), BTreeMap::new());
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest.strip_suffix('}').expect("labels close");
    while !rest.is_empty() {
        let (label, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                Some((at, '"')) => break at,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line}"),
            }
        };
        labels.insert(label.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    (name.to_string(), labels)
}

/// Every sample name a node shows, with the label sets and values seen.
#[derive(Default)]
struct Exposition {
    label_sets: BTreeMap<String, BTreeSet<Vec<String>>>,
    values: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Exposition {
    fn add(&mut self, body: &str) {
        for line in body.lines().filter(|line| !line.starts_with('#')) {
            let (name, labels) = parse_sample(line);
            self.label_sets
                .entry(name.clone())
                .or_default()
                .insert(labels.keys().cloned().collect());
            for (label, value) in labels {
                self.values
                    .entry((name.clone(), label))
                    .or_default()
                    .insert(value);
            }
        }
    }
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Checks the metrics and label matchers of one PromQL expression against
/// what the nodes showed; `where_` names the expression in failures.
fn check_expression(expression: &str, exposition: &Exposition, where_: &str) -> usize {
    let bytes = expression.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut used = 0;
    let mut at = 0;
    while at < bytes.len() {
        if !is_name(bytes[at]) || (at > 0 && (is_name(bytes[at - 1]) || bytes[at - 1] == b'$')) {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && is_name(bytes[at]) {
            at += 1;
        }
        let name = &expression[start..at];
        let ours = name.starts_with("raftfs_") || name.starts_with("process_");
        if !ours && name != "up" {
            continue;
        }
        let matchers = if expression[at..].starts_with('{') {
            let end = expression[at..].find('}').expect("matchers close") + at;
            let text = &expression[at + 1..end];
            at = end + 1;
            text
        } else {
            ""
        };
        if !ours {
            continue; // `up` is Prometheus's own
        }
        used += 1;
        let label_sets = exposition
            .label_sets
            .get(name)
            .unwrap_or_else(|| panic!("{where_}: {name} is not in any node's /metrics"));
        for matcher in matchers.split(',').filter(|m| !m.trim().is_empty()) {
            let operator_at = matcher
                .find(['=', '!'])
                .unwrap_or_else(|| panic!("{where_}: matcher {matcher}"));
            let label = matcher[..operator_at].trim();
            if TARGET_LABELS.contains(&label) {
                continue;
            }
            assert!(
                label_sets.iter().any(|set| set.iter().any(|l| l == label)),
                "{where_}: {name} has no label {label}"
            );
            let rest = &matcher[operator_at..];
            if let Some(value) = rest.strip_prefix("=\"").and_then(|v| v.strip_suffix('"')) {
                if !value.contains('$') {
                    let seen = exposition
                        .values
                        .get(&(name.to_string(), label.to_string()));
                    assert!(
                        seen.is_some_and(|values| values.contains(value)),
                        "{where_}: {name}{{{label}=\"{value}\"}} is never shown (seen: {seen:?})"
                    );
                }
            }
        }
    }
    used
}

/// Every `expr` string anywhere in a JSON document.
fn json_expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr", serde_json::Value::String(expression)) => out.push(expression.clone()),
                    _ => json_expressions(item, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| json_expressions(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_and_alerts_use_only_series_a_node_shows_with_stable_labels() {
    let cluster = Cluster::start(Options::new(3).fsync(false).with_metrics());
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(leader) = cluster.metrics_leader() {
            break leader;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut client = Client::connect(&cluster.client_address(leader)).expect("connect");
    client.set_timeout(ANSWER_TIMEOUT);
    assert!(client.write("d", "1").expect("write").starts_with("OK "));
    client.command(b"read d\r\n").expect("read");
    client.command(b"cas d 1 1\r\n2\r\n").expect("cas");
    client.command(b"delete nothing\r\n").expect("delete");
    let mut exposition = Exposition::default();
    for id in cluster.ids() {
        let (code, body) = http_get(&cluster.metrics_address(id), "/metrics").expect("scrape");
        assert_eq!(code, 200);
        let mut one = Exposition::default();
        one.add(&body);
        for (name, sets) in &one.label_sets {
            assert_eq!(
                sets.len(),
                1,
                "node {id}: {name} has several label sets: {sets:?}"
            );
        }
        exposition.add(&body);
    }
    for (name, sets) in &exposition.label_sets {
        assert_eq!(sets.len(), 1, "{name} differs between nodes: {sets:?}");
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/raftfs-dashboard.json")).expect("JSON");
    assert_eq!(dashboard["uid"], "raftfs-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("id")), "{panel}");
        let grid = &panel["gridPos"];
        assert!(grid["x"]
            .as_u64()
            .zip(grid["w"].as_u64())
            .is_some_and(|(x, w)| x + w <= 24));
        if panel["type"] != "row" {
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{panel}"
            );
        }
    }
    let mut expressions = Vec::new();
    json_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 20, "{}", expressions.len());
    let mut used = 0;
    for expression in &expressions {
        used += check_expression(expression, &exposition, "dashboard");
    }
    assert!(used >= expressions.len());

    let rules = yaml("deploy/prometheus/alerts.yml");
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expression = rule["expr"].as_str().expect("expr");
            assert!(alerts.insert(name.to_string()), "{name} twice");
            check_expression(expression, &exposition, name);
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning")
                ),
                "{name}: severity"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: summary"
            );
        }
    }
    for required in [
        "RaftfsNoLeader",
        "RaftfsFsyncSlow",
        "RaftfsMemberLagging",
        "RaftfsDiskAlmostFull",
    ] {
        assert!(alerts.contains(required), "{required} missing: {alerts:?}");
    }
}

/// A compose port mapping "HOST_IP:HOST_PORT:CONTAINER_PORT".
fn port_mapping(text: &str) -> (String, u16) {
    let (host, container) = text.rsplit_once(':').expect("host:container");
    (host.to_string(), container.parse().expect("container port"))
}

#[test]
fn the_compose_file_runs_five_nodes_of_a_valid_cluster_toml() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_hash().expect("services");
    assert_eq!(services.len(), 5);
    let subnet = compose["networks"]["raftfs"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("subnet");
    assert_eq!(subnet, "172.28.0.0/24");
    let mut seen_ids = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        let build = &service["build"];
        assert_eq!(build["context"].as_str(), Some(".."), "{name}");
        let dockerfile = build["dockerfile"].as_str().expect("dockerfile");
        assert!(repo().join(dockerfile).is_file(), "{name}: {dockerfile}");
        let command: Vec<&str> = service["command"]
            .as_vec()
            .expect("command")
            .iter()
            .map(|part| part.as_str().expect("string"))
            .collect();
        assert_eq!(command.first(), Some(&"node"), "{name}: {command:?}");
        let flag = |flag: &str| {
            let at = command.iter().position(|part| *part == flag);
            at.and_then(|at| command.get(at + 1)).copied()
        };
        let config_in_container = flag("--config").expect("--config");
        let id: u64 = flag("--id").and_then(|id| id.parse().ok()).expect("--id");
        let data_dir = flag("--data-dir").expect("--data-dir");
        assert!(seen_ids.insert(id), "{name}: id {id} twice");
        let volumes: Vec<&str> = service["volumes"]
            .as_vec()
            .expect("volumes")
            .iter()
            .map(|v| v.as_str().expect("string"))
            .collect();
        let config_mount = volumes
            .iter()
            .find_map(|v| v.strip_suffix(&format!(":{config_in_container}:ro")))
            .unwrap_or_else(|| panic!("{name}: no read-only mount of {config_in_container}"));
        let config_path = repo().join("deploy").join(config_mount);
        let config = raftfs::config::ClusterConfig::load(&config_path)
            .unwrap_or_else(|error| panic!("{}: {error}", config_path.display()));
        assert_eq!(config.members.len(), 5);
        assert!(config.fsync, "containers keep fsync on");
        let member = config.member(id).expect("the service's id is a member");
        let volume = volumes
            .iter()
            .find_map(|v| v.strip_prefix(&format!("{name}-data:")))
            .expect("a data volume");
        assert!(
            data_dir.starts_with(volume),
            "{name}: {data_dir} outside {volume}"
        );
        let address = service["networks"]["raftfs"]["ipv4_address"]
            .as_str()
            .expect("a fixed address");
        assert_eq!(member.peer.ip().to_string(), address, "{name}");
        assert_eq!(member.listen_peer, member.peer);
        let metrics = member.metrics.expect("metrics address");
        assert_eq!(metrics.ip().to_string(), address);
        let ports: Vec<(String, u16)> = service["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .map(|p| port_mapping(p.as_str().expect("string")))
            .collect();
        // Clients on the host reach the address the node advertises.
        assert!(
            ports.contains(&(member.client.clone(), member.listen_client.port())),
            "{name}: {ports:?} does not publish {} to {}",
            member.client,
            member.listen_client
        );
        assert!(member.listen_client.ip().is_unspecified());
        assert!(
            ports.iter().any(|(_, port)| *port == metrics.port()),
            "{name}: metrics port not published"
        );
        let health = service["healthcheck"]["test"]
            .as_vec()
            .expect("healthcheck")
            .iter()
            .filter_map(|part| part.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            health.contains(&format!("/dev/tcp/{}/{}", address, metrics.port()))
                && health.contains("/readyz"),
            "{name}: {health}"
        );
    }
    assert_eq!(seen_ids, (1..=5).collect());
}

/// A Dockerfile's instructions, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    joined.push(std::mem::take(&mut current));
                }
            }
        }
    }
    joined
        .into_iter()
        .map(|line| {
            let (keyword, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
            (keyword.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for item in std::fs::read_dir(from).expect("list") {
            let item = item.expect("entry");
            if item.file_name() == "target" {
                continue; // .dockerignore
            }
            copy_tree(&item.path(), &to.join(item.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

#[test]
fn the_dockerfile_builds_every_binary_the_image_and_compose_run() {
    let steps = instructions(&read("deploy/Dockerfile"));
    let stages: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(at, _)| at)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a run stage");
    assert!(
        steps[stages[0]].1.ends_with(" AS build"),
        "{:?}",
        steps[stages[0]]
    );
    let build_stage = &steps[stages[0]..stages[1]];
    let run_stage = &steps[stages[1]..];
    assert!(
        read(".dockerignore")
            .lines()
            .any(|line| line.trim() == "target"),
        "the context leaves out target/"
    );

    // The build stage, replayed into a temp dir: its copies and its cargo line.
    let context = tempfile::tempdir().expect("temp dir");
    let mut workdir = context.path().to_path_buf();
    let mut built_binaries = Vec::new();
    let mut cargo_line = String::new();
    for (keyword, rest) in build_stage {
        match keyword.as_str() {
            "WORKDIR" => workdir = context.path().join(rest.trim_start_matches('/')),
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let (destination, sources) = parts.split_last().expect("COPY SRC.. DEST");
                for source in sources {
                    // Docker: a directory's contents go to DEST; a file goes
                    // into DEST/ or becomes DEST.
                    let from = repo().join(source);
                    let target = if from.is_file() && destination.ends_with('/') {
                        workdir.join(destination).join(source)
                    } else {
                        workdir.join(destination)
                    };
                    copy_tree(&from, &target);
                }
            }
            "RUN" if rest.starts_with("cargo build") => {
                cargo_line = rest.clone();
                let words: Vec<&str> = rest.split_whitespace().collect();
                for pair in words.windows(2) {
                    if pair[0] == "--bin" {
                        built_binaries.push(pair[1].to_string());
                    }
                }
                assert!(words.contains(&"--release") && words.contains(&"--locked"));
            }
            _ => {}
        }
    }
    assert!(!cargo_line.is_empty(), "the build stage runs cargo build");
    // The copied tree is a whole workspace: the lock file fits it, and every
    // library, binary and bench target cargo finds in the repository (it
    // refuses to build when a declared one is missing) is there too.
    let targets = |dir: &Path| -> BTreeMap<(String, String), PathBuf> {
        let output = Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--locked",
                "--offline",
                "--no-deps",
                "--format-version",
                "1",
            ])
            .current_dir(dir)
            .output()
            .expect("cargo metadata");
        assert!(output.status.success(), "{}: {output:?}", dir.display());
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        let mut found = BTreeMap::new();
        for package in metadata["packages"].as_array().expect("packages") {
            for target in package["targets"].as_array().expect("targets") {
                for kind in target["kind"].as_array().expect("kinds") {
                    let kind = kind.as_str().expect("kind");
                    if ["lib", "bin", "bench"].contains(&kind) {
                        let name = target["name"].as_str().expect("name").to_string();
                        let path = PathBuf::from(target["src_path"].as_str().expect("path"));
                        found.insert((kind.to_string(), name), path);
                    }
                }
            }
        }
        found
    };
    let needed = targets(&repo());
    let copied = targets(&workdir);
    for (target, path) in &needed {
        assert!(
            copied.contains_key(target),
            "{target:?} ({}) is not copied by the build stage",
            path.display()
        );
    }
    // Without --workspace (or -p), --bin looks in the root package only.
    let whole_workspace = cargo_line.contains("--workspace") || cargo_line.contains(" -p ");
    let root_source = workdir.join("src");
    let binaries: BTreeSet<&str> = copied
        .iter()
        .filter(|((kind, _), path)| {
            kind == "bin" && (whole_workspace || path.starts_with(&root_source))
        })
        .map(|((_, name), _)| name.as_str())
        .collect();
    for binary in &built_binaries {
        assert!(
            binaries.contains(binary.as_str()),
            "--bin {binary}: no such binary"
        );
    }

    // The run stage holds every built binary, and its entrypoint is one.
    let copied: Vec<&str> = run_stage
        .iter()
        .filter(|(keyword, rest)| keyword == "COPY" && rest.starts_with("--from=build"))
        .filter_map(|(_, rest)| rest.split_whitespace().nth(1))
        .collect();
    for binary in &built_binaries {
        assert!(
            copied.contains(&format!("/src/target/release/{binary}").as_str()),
            "{binary} is built but not copied: {copied:?}"
        );
    }
    let entrypoint = run_stage
        .iter()
        .find(|(keyword, _)| keyword == "ENTRYPOINT")
        .map(|(_, rest)| rest.clone())
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint, "[\"/usr/local/bin/raftfs\"]");
    assert!(built_binaries.iter().any(|b| b == "raftfs"));
    // Compose overrides only the command: every service runs the entrypoint.
    let compose = yaml("deploy/compose.yaml");
    for (_, service) in compose["services"].as_hash().expect("services") {
        assert!(
            service["entrypoint"].is_badvalue(),
            "compose keeps the entrypoint"
        );
    }

    if std::env::var_os("RAFTFS_DOCKERFILE_BUILD").is_some() {
        let status = Command::new("sh")
            .args(["-c", &cargo_line])
            .current_dir(&workdir)
            .env("CARGO_NET_OFFLINE", "true")
            .status()
            .expect("the build stage's cargo line");
        assert!(status.success(), "{cargo_line}: {status}");
        for binary in &built_binaries {
            let path = workdir.join("target/release").join(binary);
            assert!(path.is_file(), "{} not built", path.display());
        }
    }
}

#[test]
fn the_systemd_unit_notifies_restarts_on_failure_and_verifies() {
    let unit = read("deploy/raftfs.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "{line} missing");
    }
    let Ok(output) = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(repo().join("deploy/raftfs.service"))
        .output()
    else {
        eprintln!("systemd-analyze is not installed: only the unit's lines were checked");
        return;
    };
    let complaints = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    // The binary is installed on the target host, not here.
    let unexpected: Vec<&str> = complaints
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| !line.contains("/usr/local/bin/raftfs is not executable"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "systemd-analyze verify: {unexpected:?}"
    );
}
