//! cluster.toml + command-line flags → a validated `Config`.
//!
//! Owns every rule of SPEC §1 about configuration: an odd member count
//! (1..=9), unique ids and addresses, parsable addresses, sane timeouts.
//! Every problem is reported as one `Error::Config` line naming it; nothing is
//! started until the whole config is valid. Unknown keys are refused so a typo
//! never silently falls back to a default.

use crate::error::{Error, Result};
use crate::limits;
use crate::raft::NodeId;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The member counts SPEC §1 allows.
pub const MEMBERS_ALLOWED: [usize; 5] = [1, 3, 5, 7, 9];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_election_timeout_ms")]
    election_timeout_ms: [u64; 2],
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default = "default_true")]
    fsync: bool,
    #[serde(default = "default_max_file_bytes")]
    max_file_bytes: u64,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_snapshot_entries")]
    snapshot_entries: u64,
    #[serde(default)]
    snapshot_token_file: Option<PathBuf>,
    #[serde(default)]
    follower_requests: FollowerRequests,
    #[serde(default)]
    peer_tls: Option<RawPeerTls>,
    #[serde(default)]
    client_tls: Option<RawClientTls>,
    #[serde(default)]
    max_client_connections: Option<u64>,
    #[serde(default = "default_max_client_buffer_bytes")]
    max_client_buffer_bytes: u64,
    #[serde(default)]
    node: Vec<RawMember>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerTls {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientTls {
    cert: String,
    key: String,
    ca: Option<String>,
}

/// TLS files from `[peer_tls]` or `[client_tls]`, as written: `{id}` in a
/// path stands for the node's id, and a relative path is resolved against
/// the config file's directory (`TlsFiles::for_node`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) to verify the other side with. Always set for
    /// peers; for clients, set = clients must present a certificate.
    pub ca: Option<String>,
    pub cert: String,
    pub key: String,
    /// The config file's directory ("" when parsed from text).
    pub base: PathBuf,
}

/// `TlsFiles` with `{id}` filled in and relative paths resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The paths for node `id`.
    pub fn for_node(&self, id: NodeId) -> NodeTlsFiles {
        let path = |text: &str| self.base.join(text.replace("{id}", &id.to_string()));
        NodeTlsFiles {
            ca: self.ca.as_deref().map(path),
            cert: path(&self.cert),
            key: path(&self.key),
        }
    }
}

/// What a node that is not the leader does with a client command (SPEC §1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowerRequests {
    /// Serve it: forward writes to the leader, answer reads with follower
    /// ReadIndex (`replica::forward`).
    #[default]
    Forward,
    /// Answer `ERR_REDIRECT HOST:PORT` naming the leader (the seed's way).
    Redirect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: NodeId,
    client: String,
    peer: String,
    metrics: Option<String>,
    listen_client: Option<String>,
    listen_peer: Option<String>,
}

fn default_election_timeout_ms() -> [u64; 2] {
    [150, 300]
}
fn default_heartbeat_ms() -> u64 {
    50
}
fn default_true() -> bool {
    true
}
fn default_max_file_bytes() -> u64 {
    limits::FILE_BYTES_MAX_DEFAULT as u64
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("raftfs-data")
}
fn default_snapshot_entries() -> u64 {
    100_000
}
fn default_max_client_buffer_bytes() -> u64 {
    limits::CLIENT_BUFFER_BYTES_DEFAULT as u64
}

/// What a node allows its clients (`max_client_connections`,
/// `max_client_buffer_bytes`; README "Client limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Client connections held at once.
    pub connections_max: usize,
    /// Whether the file set `connections_max` (a default above what the
    /// open files limit allows is lowered quietly, a setting with a warning).
    pub connections_max_explicit: bool,
    /// Bytes held for all clients together before sockets stop being read.
    pub buffer_bytes_max: usize,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            connections_max: limits::CLIENT_CONNECTIONS_MAX_DEFAULT,
            connections_max_explicit: false,
            buffer_bytes_max: limits::CLIENT_BUFFER_BYTES_DEFAULT,
        }
    }
}

/// The smallest `max_client_buffer_bytes` allowed with `max_file_bytes`:
/// room for a few of the largest commands and answers.
pub fn client_buffer_bytes_min(max_file_bytes: usize) -> usize {
    4 * (max_file_bytes + limits::LINE_BYTES_MAX + limits::READ_REPLY_HEADER_BYTES_MAX)
}

/// One member of the cluster as every node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// Advertised client address, exactly as written (used in ERR_REDIRECT).
    pub client: String,
    /// Advertised peer address (other nodes dial it).
    pub peer: SocketAddr,
    /// Where this member binds its client listener.
    pub listen_client: SocketAddr,
    /// Where this member binds its peer listener.
    pub listen_peer: SocketAddr,
    /// Optional metrics/health HTTP listener.
    pub metrics: Option<SocketAddr>,
}

/// The validated cluster-wide configuration.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub election_timeout_ms: (u64, u64),
    pub heartbeat_ms: u64,
    pub fsync: bool,
    pub max_file_bytes: usize,
    pub data_dir: PathBuf,
    pub snapshot_entries: u64,
    /// A file holding the bearer token `GET /snapshot` requires (`None`:
    /// no token). Relative paths are resolved against the working directory.
    pub snapshot_token_file: Option<PathBuf>,
    /// What a follower does with client commands.
    pub follower_requests: FollowerRequests,
    /// `[peer_tls]`: mutual TLS on every peer link (None: plain TCP).
    pub peer_tls: Option<TlsFiles>,
    /// `[client_tls]`: the client port serves only TLS (None: plain TCP).
    pub client_tls: Option<TlsFiles>,
    /// Client connection and memory limits.
    pub client_limits: ClientLimits,
    /// Sorted by id.
    pub members: Vec<Member>,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
            other => other,
        })?;
        // TLS paths are relative to the config file's directory.
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for files in [&mut config.peer_tls, &mut config.client_tls]
            .into_iter()
            .flatten()
        {
            files.base = base.clone();
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<ClusterConfig> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            Error::Config(e.message().replace('\n', " ").trim().to_string() + &span_hint(&e, text))
        })?;
        let [timeout_min_ms, timeout_max_ms] = raw.election_timeout_ms;
        if timeout_min_ms == 0 || timeout_min_ms >= timeout_max_ms {
            return Err(Error::Config(format!(
                "election_timeout_ms = [{timeout_min_ms}, {timeout_max_ms}] must be [min, max] with 0 < min < max"
            )));
        }
        if raw.heartbeat_ms == 0 || raw.heartbeat_ms >= timeout_min_ms {
            return Err(Error::Config(format!(
                "heartbeat_ms = {} must be above 0 and below the election timeout minimum ({timeout_min_ms})",
                raw.heartbeat_ms
            )));
        }
        if raw.max_file_bytes as usize > limits::FILE_BYTES_MAX_CEILING {
            return Err(Error::Config(format!(
                "max_file_bytes = {} is above the ceiling of {}",
                raw.max_file_bytes,
                limits::FILE_BYTES_MAX_CEILING
            )));
        }
        let connections_max = raw
            .max_client_connections
            .unwrap_or(limits::CLIENT_CONNECTIONS_MAX_DEFAULT as u64);
        if connections_max == 0 || connections_max > limits::CLIENT_CONNECTIONS_MAX_CEILING as u64 {
            return Err(Error::Config(format!(
                "max_client_connections = {connections_max} must be between 1 and {}",
                limits::CLIENT_CONNECTIONS_MAX_CEILING
            )));
        }
        let buffer_bytes_min = client_buffer_bytes_min(raw.max_file_bytes as usize) as u64;
        if raw.max_client_buffer_bytes < buffer_bytes_min
            || raw.max_client_buffer_bytes > limits::CLIENT_BUFFER_BYTES_CEILING as u64
        {
            return Err(Error::Config(format!(
                "max_client_buffer_bytes = {} must be between {buffer_bytes_min} (four of the largest \
                 commands with max_file_bytes = {}) and {}",
                raw.max_client_buffer_bytes,
                raw.max_file_bytes,
                limits::CLIENT_BUFFER_BYTES_CEILING
            )));
        }
        if raw.snapshot_entries == 0 {
            return Err(Error::Config("snapshot_entries must be at least 1".into()));
        }
        if !MEMBERS_ALLOWED.contains(&raw.node.len()) {
            return Err(Error::Config(format!(
                "the cluster lists {} members ([[node]] tables); it must list an odd number: 1, 3, 5, 7 or 9",
                raw.node.len()
            )));
        }
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        let mut members = Vec::with_capacity(raw.node.len());
        for node in raw.node {
            if node.id == 0 {
                return Err(Error::Config(
                    "node id 0 is not allowed (ids start at 1)".into(),
                ));
            }
            if !ids.insert(node.id) {
                return Err(Error::Config(format!("duplicate node id {}", node.id)));
            }
            let id = node.id;
            let client = resolve(id, "client", &node.client)?;
            let peer = resolve(id, "peer", &node.peer)?;
            let metrics = node
                .metrics
                .as_deref()
                .map(|a| resolve(id, "metrics", a))
                .transpose()?;
            let listen_client = node
                .listen_client
                .as_deref()
                .map(|a| resolve(id, "listen_client", a))
                .transpose()?;
            let listen_peer = node
                .listen_peer
                .as_deref()
                .map(|a| resolve(id, "listen_peer", a))
                .transpose()?;
            for (what, address) in [
                ("client", Some(client)),
                ("peer", Some(peer)),
                ("metrics", metrics),
            ] {
                if let Some(address) = address {
                    if !addresses.insert(address) {
                        return Err(Error::Config(format!(
                            "node {id}: {what} address {address} is used twice in the config"
                        )));
                    }
                }
            }
            members.push(Member {
                id,
                client: node.client,
                peer,
                listen_client: listen_client.unwrap_or(client),
                listen_peer: listen_peer.unwrap_or(peer),
                metrics,
            });
        }
        members.sort_by_key(|m| m.id);
        Ok(ClusterConfig {
            election_timeout_ms: (timeout_min_ms, timeout_max_ms),
            heartbeat_ms: raw.heartbeat_ms,
            fsync: raw.fsync,
            max_file_bytes: raw.max_file_bytes as usize,
            data_dir: raw.data_dir,
            snapshot_entries: raw.snapshot_entries,
            follower_requests: raw.follower_requests,
            snapshot_token_file: raw.snapshot_token_file,
            peer_tls: raw.peer_tls.map(|tls| TlsFiles {
                ca: Some(tls.ca),
                cert: tls.cert,
                key: tls.key,
                base: PathBuf::new(),
            }),
            client_tls: raw.client_tls.map(|tls| TlsFiles {
                ca: tls.ca,
                cert: tls.cert,
                key: tls.key,
                base: PathBuf::new(),
            }),
            client_limits: ClientLimits {
                connections_max: connections_max as usize,
                connections_max_explicit: raw.max_client_connections.is_some(),
                buffer_bytes_max: raw.max_client_buffer_bytes as usize,
            },
            members,
        })
    }

    /// The `GET /snapshot` bearer token from `snapshot_token_file` (its
    /// first line, trimmed), if one is configured. An unreadable or empty
    /// file is a config error.
    pub fn snapshot_token(&self) -> Result<Option<String>> {
        let Some(path) = &self.snapshot_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "snapshot_token_file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        let token = text.lines().next().unwrap_or_default().trim();
        if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(Error::Config(format!(
                "snapshot_token_file {}: its first line must be the token (printable ASCII, no spaces)",
                path.display()
            )));
        }
        Ok(Some(token.to_string()))
    }

    pub fn member(&self, id: NodeId) -> Result<&Member> {
        self.members.iter().find(|m| m.id == id).ok_or_else(|| {
            let known: Vec<String> = self.members.iter().map(|m| m.id.to_string()).collect();
            Error::Config(format!(
                "--id {id} is not a member of the cluster (members: {})",
                known.join(", ")
            ))
        })
    }

    /// The data dir of node `id`: `override_dir` if given, else `<data_dir>/<id>`.
    pub fn node_data_dir(&self, id: NodeId, override_dir: Option<&Path>) -> PathBuf {
        match override_dir {
            Some(dir) => dir.to_path_buf(),
            None => self.data_dir.join(id.to_string()),
        }
    }

    pub fn election_timeout_ticks(&self) -> (u64, u64) {
        (
            ticks(self.election_timeout_ms.0),
            ticks(self.election_timeout_ms.1).max(ticks(self.election_timeout_ms.0) + 1),
        )
    }

    pub fn heartbeat_ticks(&self) -> u64 {
        ticks(self.heartbeat_ms)
    }

    /// A local cluster of `nodes` members on 127.0.0.1 (`raftfs cluster`).
    pub fn local(
        nodes: usize,
        base_port: u16,
        data_dir: PathBuf,
        fsync: bool,
    ) -> Result<ClusterConfig> {
        if !MEMBERS_ALLOWED.contains(&nodes) {
            return Err(Error::Config(format!(
                "--nodes {nodes}: must be odd, one of 1, 3, 5, 7, 9"
            )));
        }
        if base_port as u32 + 1000 + nodes as u32 > 65_535 || base_port == 0 {
            return Err(Error::Config(format!(
                "--base-port {base_port}: client ports {base_port}.. and peer ports {}.. must fit below 65536",
                base_port as u32 + 1000
            )));
        }
        let mut text = format!(
            "fsync = {fsync}\ndata_dir = {:?}\n",
            data_dir.display().to_string()
        );
        for i in 0..nodes as u16 {
            text.push_str(&format!(
                "[[node]]\nid = {}\nclient = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n",
                i + 1,
                base_port + i,
                base_port + 1000 + i
            ));
        }
        Self::parse(&text)
    }
}

fn ticks(ms: u64) -> u64 {
    ms.div_ceil(limits::TICK_MS).max(1)
}

fn resolve(id: NodeId, what: &str, address: &str) -> Result<SocketAddr> {
    let bad = || {
        Error::Config(format!(
            "node {id}: {what} address {address:?} is not a HOST:PORT address"
        ))
    };
    address
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

fn span_hint(error: &toml::de::Error, text: &str) -> String {
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(extra: &str) -> String {
        format!(
            "{extra}\n[[node]]\nid = 1\nclient = \"127.0.0.1:8080\"\npeer = \"127.0.0.1:9080\"\n\
             [[node]]\nid = 2\nclient = \"127.0.0.1:8081\"\npeer = \"127.0.0.1:9081\"\n\
             [[node]]\nid = 3\nclient = \"127.0.0.1:8082\"\npeer = \"127.0.0.1:9082\"\n"
        )
    }

    #[test]
    fn snapshot_token_comes_from_its_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let with_file = |path: &Path| {
            ClusterConfig::parse(&three(&format!(
                "snapshot_token_file = {:?}",
                path.display().to_string()
            )))
            .expect("parses")
        };
        assert_eq!(
            ClusterConfig::parse(&three(""))
                .unwrap()
                .snapshot_token()
                .unwrap(),
            None
        );
        let good = dir.path().join("token");
        std::fs::write(&good, "  abc-123\nignored\n").expect("write");
        assert_eq!(
            with_file(&good).snapshot_token().unwrap(),
            Some("abc-123".to_string())
        );
        for (name, text) in [("empty", ""), ("spaced", "a b\n")] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let error = with_file(&path).snapshot_token().unwrap_err().to_string();
            assert!(error.contains("first line must be the token"), "{error}");
        }
        let error = with_file(&dir.path().join("missing"))
            .snapshot_token()
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read it"), "{error}");
    }

    #[test]
    fn defaults_apply() {
        let config = ClusterConfig::parse(&three("")).unwrap();
        assert_eq!(config.election_timeout_ms, (150, 300));
        assert_eq!(config.heartbeat_ms, 50);
        assert!(config.fsync);
        assert_eq!(config.max_file_bytes, 1 << 20);
        assert_eq!(config.snapshot_entries, 100_000);
        assert_eq!(config.client_limits, ClientLimits::default());
        assert_eq!(config.members.len(), 3);
        assert_eq!(config.election_timeout_ticks(), (15, 30));
        assert_eq!(
            config.node_data_dir(2, None),
            PathBuf::from("raftfs-data/2")
        );
    }

    #[test]
    fn refuses_bad_configs_with_one_line() {
        let cases = [
            (three("").replace("id = 3", "id = 2"), "duplicate node id 2"),
            (
                three("").replace("127.0.0.1:8082", "nonsense"),
                "not a HOST:PORT",
            ),
            (
                three("").replace("127.0.0.1:8082", "127.0.0.1:8081"),
                "used twice",
            ),
            (
                three("election_timeout_ms = [300, 150]"),
                "election_timeout_ms",
            ),
            (three("heartbeat_ms = 500"), "heartbeat_ms"),
            (three("bogus = 1"), "unknown field"),
            (three("max_file_bytes = 999999999999"), "max_file_bytes"),
            (
                three("max_client_connections = 0"),
                "max_client_connections",
            ),
            (
                three("max_client_connections = 99999999"),
                "max_client_connections",
            ),
            (
                three("max_client_buffer_bytes = 1048576"),
                "max_client_buffer_bytes",
            ),
        ];
        for (text, expected) in cases {
            let error = ClusterConfig::parse(&text).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{error:?} should mention {expected:?}"
            );
            assert!(!error.contains('\n'), "one line: {error:?}");
        }
        let two = three("")
            .split("[[node]]")
            .take(3)
            .collect::<Vec<_>>()
            .join("[[node]]");
        let error = ClusterConfig::parse(&two).unwrap_err().to_string();
        assert!(error.contains("odd number"), "{error}");
    }

    #[test]
    fn tls_paths_fill_in_the_id_and_resolve_against_the_config_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            three(
                "[peer_tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\n\
                 key = \"/abs/node-{id}.key\"\n[client_tls]\ncert = \"c-{id}.pem\"\nkey = \"k.pem\"\n",
            ),
        )
        .expect("write");
        let config = ClusterConfig::load(&path).expect("parses");
        let peer = config.peer_tls.as_ref().expect("peer_tls").for_node(2);
        assert_eq!(peer.ca, Some(dir.path().join("certs/ca.pem")));
        assert_eq!(peer.cert, dir.path().join("certs/node-2.pem"));
        assert_eq!(peer.key, PathBuf::from("/abs/node-2.key"));
        let client = config.client_tls.as_ref().expect("client_tls").for_node(3);
        assert_eq!(client.ca, None);
        assert_eq!(client.cert, dir.path().join("c-3.pem"));
        let error = ClusterConfig::parse(&three("[peer_tls]\nca = \"a\"\ncert = \"b\"\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("key"), "{error}");
        assert!(ClusterConfig::parse(&three("")).unwrap().peer_tls.is_none());
    }

    #[test]
    fn client_limits_are_read() {
        let config = ClusterConfig::parse(&three(
            "max_client_connections = 500\nmax_client_buffer_bytes = 67108864",
        ))
        .unwrap();
        assert_eq!(
            config.client_limits,
            ClientLimits {
                connections_max: 500,
                connections_max_explicit: true,
                buffer_bytes_max: 64 << 20,
            }
        );
    }

    #[test]
    fn unknown_id_is_named() {
        let config = ClusterConfig::parse(&three("")).unwrap();
        let error = config.member(7).unwrap_err().to_string();
        assert!(error.contains("--id 7"), "{error}");
    }

    #[test]
    fn local_cluster_layout() {
        let config = ClusterConfig::local(5, 8080, PathBuf::from("d"), false).unwrap();
        assert_eq!(config.members[4].client, "127.0.0.1:8084");
        assert_eq!(config.members[4].peer.port(), 9084);
        assert!(!config.fsync);
        assert!(ClusterConfig::local(4, 8080, PathBuf::from("d"), true).is_err());
        assert!(ClusterConfig::local(3, 65000, PathBuf::from("d"), true).is_err());
    }
}
