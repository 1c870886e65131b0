//! Support for `tests/protocol.rs` and `tests/connections.rs`: one real
//! single-member `raftfs node` on 127.0.0.1 and a byte-exact blocking client.
//!
//! Ports: candidates are derived from the test binary's pid in 10000..19999
//! (below the kernel's ephemeral range, away from the 20000.. scheme of
//! tests/common), each checked by binding it first; if the node still fails
//! to bind (a race with another process) the next candidate is tried.
//!
//! A node dies with its owner: `Drop` kills it, and because it is spawned from
//! a thread that never ends with `PR_SET_PDEATHSIG = SIGKILL`, even a node
//! held in a `static` (never dropped) dies when the test process exits.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Port candidates tried per binary before giving up.
const PORT_CANDIDATES_PER_PROCESS: u16 = 20;
/// How long a node may take to elect itself and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read timeout of a test client.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CANDIDATE: AtomicU16 = AtomicU16::new(0);

/// A running one-member cluster.
pub struct Node {
    pub address: SocketAddr,
    pub pid: u32,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// Two ports (client, peer) that were free a moment ago.
fn candidate_ports() -> Option<(u16, u16)> {
    let pid_slot = (std::process::id() % 240) as u16;
    loop {
        let candidate = NEXT_CANDIDATE.fetch_add(1, Ordering::SeqCst);
        if candidate >= PORT_CANDIDATES_PER_PROCESS {
            return None;
        }
        let client = 10_000 + pid_slot * 40 + candidate * 2;
        let peer = client + 1;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(client) && free(peer) {
            return Some((client, peer));
        }
    }
}

/// Spawn from a thread that lives as long as the process, so the child's
/// parent-death signal fires only when the whole test process ends.
fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(command.spawn());
        loop {
            std::thread::park();
        }
    });
    receiver
        .recv()
        .map_err(|_| io::Error::other("spawner thread died"))?
}

impl Node {
    /// Start a fresh node with `fsync = false` and the given extra config
    /// lines; returns once it answers as leader.
    pub fn start(extra_config: &str) -> Node {
        let mut last_problem = String::from("no free port candidate");
        while let Some((client_port, peer_port)) = candidate_ports() {
            match Node::try_start(client_port, peer_port, extra_config) {
                Ok(node) => return node,
                Err(problem) => last_problem = problem,
            }
        }
        panic!("could not start a raftfs node: {last_problem}");
    }

    fn try_start(client_port: u16, peer_port: u16, extra_config: &str) -> Result<Node, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let config = format!(
            "election_timeout_ms = [60, 120]\nheartbeat_ms = 20\nfsync = false\n\
             data_dir = {:?}\n{extra_config}\n\
             [[node]]\nid = 1\nclient = \"127.0.0.1:{client_port}\"\npeer = \"127.0.0.1:{peer_port}\"\n",
            dir.path().join("data").display().to_string()
        );
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("config: {e}"))?;
        let log = std::fs::File::create(dir.path().join("node.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_raftfs"));
        command
            .args(["node", "--config"])
            .arg(&config_path)
            .args(["--id", "1"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = spawn_tied_to_process(command).map_err(|e| format!("spawn: {e}"))?;
        let address: SocketAddr = ([127, 0, 0, 1], client_port).into();
        let mut node = Node {
            address,
            pid: child.id(),
            dir,
            child,
        };
        node.wait_ready()?;
        Ok(node)
    }

    /// Wait until the node answers a read itself (it has elected itself).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("node exited with {status}: {}", self.log_text()));
            }
            if let Ok(mut client) = Client::try_connect(self.address) {
                client.set_timeout(Duration::from_millis(500));
                if let Ok(reply) = client.command(b"read __ready_probe__\r\n") {
                    if reply.line == "ERR_FILE_NOT_FOUND" {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("node not ready in time: {}", self.log_text()))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the node process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The node's resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("node /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// Descriptors the node has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.address)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes shown with escapes, for failure messages.
pub fn show(bytes: &[u8]) -> String {
    let shown: String = bytes
        .iter()
        .take(300)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > 300 {
        format!("{shown}... ({} bytes)", bytes.len())
    } else {
        shown
    }
}

/// One answer: its first line without `\r\n`, and the content of `CONTENTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub line: String,
    pub content: Option<Vec<u8>>,
}

impl Reply {
    /// `OK VERSION` → VERSION.
    pub fn written_version(&self) -> u64 {
        self.line
            .strip_prefix("OK ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("expected OK VERSION, got {:?}", self.line))
    }

    /// `CONTENTS VERSION NUMBYTES EXPREMAINING` → (VERSION, EXPREMAINING).
    pub fn contents_fields(&self) -> (u64, u64) {
        let fields: Vec<u64> = self
            .line
            .strip_prefix("CONTENTS ")
            .map(|rest| rest.split(' ').filter_map(|f| f.parse().ok()).collect())
            .unwrap_or_default();
        assert_eq!(fields.len(), 3, "expected CONTENTS, got {:?}", self.line);
        (fields[0], fields[2])
    }
}

/// A blocking client that checks answers byte for byte.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn try_connect(address: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::with_capacity(64 << 10, stream),
            writer,
        })
    }

    /// Wrap a connected stream (its read timeout becomes `CLIENT_TIMEOUT`).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("read timeout");
        let writer = stream.try_clone().expect("clone the stream");
        Client {
            reader: BufReader::with_capacity(64 << 10, stream),
            writer,
        }
    }

    pub fn connect(address: SocketAddr) -> Client {
        Client::try_connect(address).expect("connect to the node")
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.writer.set_read_timeout(Some(timeout));
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send to the node");
    }

    /// Read exactly `expected.len()` bytes and compare them.
    pub fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0u8; expected.len()];
        if let Err(e) = self.reader.read_exact(&mut got) {
            panic!("waiting for {:?}: {e}", show(expected));
        }
        assert_eq!(show(&got), show(expected), "answer differs");
    }

    /// Send `request` and expect exactly `answer`.
    pub fn exchange(&mut self, request: &[u8], answer: &[u8]) {
        self.send(request);
        self.expect(answer);
    }

    /// The server closed the connection: EOF (or a reset) and no more bytes.
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "expected the server to close the connection: {e} (after {:?})",
                show(&rest)
            ),
        }
        assert!(
            rest.is_empty(),
            "expected close, got more bytes: {:?}",
            show(&rest)
        );
    }

    /// Read one answer.
    pub fn reply(&mut self) -> io::Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("incomplete answer line {:?}", show(&line)),
            ));
        }
        line.truncate(line.len() - 2);
        let line = String::from_utf8(line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let mut content = None;
        if let Some(rest) = line.strip_prefix("CONTENTS ") {
            let length: usize = rest
                .split(' ')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
            let mut bytes = vec![0u8; length + 2];
            self.reader.read_exact(&mut bytes)?;
            if !bytes.ends_with(b"\r\n") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "content not followed by \\r\\n",
                ));
            }
            bytes.truncate(length);
            content = Some(bytes);
        }
        Ok(Reply { line, content })
    }

    pub fn command(&mut self, request: &[u8]) -> io::Result<Reply> {
        self.writer.write_all(request)?;
        self.reply()
    }

    /// `write NAME len\r\ncontent\r\n` → its version.
    pub fn write(&mut self, name: &str, content: &[u8]) -> u64 {
        let mut request = format!("write {name} {}\r\n", content.len()).into_bytes();
        request.extend_from_slice(content);
        request.extend_from_slice(b"\r\n");
        self.command(&request).expect("write").written_version()
    }

    pub fn read(&mut self, name: &str) -> Reply {
        self.command(format!("read {name}\r\n").as_bytes())
            .expect("read")
    }
}
