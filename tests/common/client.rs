//! The one blocking client of the `fs` line protocol used by every test:
//! connecting, sending, reading one answer (its line and, for `CONTENTS`, its
//! content), and byte-exact expectations for protocol tests.
//!
//! Answers are read with raftfs's one reply parser (`protocol::reply`) in
//! its strict mode (SPEC §2, byte exact): a line must end with `\r\n`, have
//! single spaces and plain numbers, a `CONTENTS` content must be followed by
//! `\r\n`; anything else is an `InvalidData`/`UnexpectedEof` error, never a
//! made-up answer. Two views of one answer: `Reply` (the parsed answer, its
//! line and raw content), and text (`reply`, `command`: the line, plus `\n`
//! and the content read as UTF-8, lossily, for `CONTENTS`).
//!
//! Leaves out: retries, redirects and leaders (`cluster`), recording
//! histories (`workload`, `worker`).

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use raftfs::protocol::reply::{read_reply, Reply as Parsed, ReplyParser};

/// How long a client waits for one answer when the test relies on SPEC §3
/// (no command waits more than 5 s): 5 s plus slack.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(6);
/// Default read timeout of a fresh client.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest content a test client accepts in one answer (the server's
/// `max_file_bytes` ceiling).
const CONTENT_BYTES_MAX: usize = raftfs::limits::FILE_BYTES_MAX_CEILING;

/// One answer: the parsed answer, its first line without `\r\n`, and the
/// content of `CONTENTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub parsed: Parsed,
    pub line: String,
    pub content: Option<Vec<u8>>,
}

impl Reply {
    /// `OK VERSION` → VERSION.
    pub fn written_version(&self) -> u64 {
        match self.parsed {
            Parsed::OkVersion(version) => version,
            _ => panic!("expected OK VERSION, got {:?}", self.line),
        }
    }

    /// `CONTENTS VERSION NUMBYTES EXPREMAINING` → (VERSION, EXPREMAINING).
    pub fn contents_fields(&self) -> (u64, u64) {
        match self.parsed {
            Parsed::Contents {
                version,
                expiry_remaining_s,
                ..
            } => (version, expiry_remaining_s),
            _ => panic!("expected CONTENTS, got {:?}", self.line),
        }
    }

    /// The text view: the line, plus `\n` and the content for `CONTENTS`.
    pub fn into_text(self) -> String {
        match self.content {
            Some(content) => format!("{}\n{}", self.line, String::from_utf8_lossy(&content)),
            None => self.line,
        }
    }
}

/// A blocking line-protocol client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    parser: ReplyParser,
}

impl Client {
    /// Connects within `CONNECT_TIMEOUT`; reads time out after
    /// `CLIENT_TIMEOUT`.
    pub fn connect(address: &str) -> io::Result<Client> {
        Client::connect_within(address, CONNECT_TIMEOUT)
    }

    pub fn connect_within(address: &str, connect_timeout: Duration) -> io::Result<Client> {
        let address: SocketAddr = address
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad address"))?;
        let stream = TcpStream::connect_timeout(&address, connect_timeout)?;
        // A connect to a dead node's port can pick that very port as its
        // own ephemeral port and connect to itself (TCP simultaneous open):
        // the "reply" would be the request echoed back.
        if stream.local_addr()? == stream.peer_addr()? {
            return Err(io::Error::other("connected to itself"));
        }
        stream.set_nodelay(true)?;
        Client::wrap(stream)
    }

    /// Wraps a connected stream (its read timeout becomes `CLIENT_TIMEOUT`).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client::wrap(stream).expect("wrap the stream")
    }

    fn wrap(stream: TcpStream) -> io::Result<Client> {
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::with_capacity(64 << 10, stream),
            writer,
            parser: ReplyParser::new()
                .strict()
                .keeping_content(CONTENT_BYTES_MAX),
        })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.writer.set_read_timeout(Some(timeout));
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one answer.
    pub fn reply_parts(&mut self) -> io::Result<Reply> {
        let parsed = read_reply(&mut self.reader, &mut self.parser)?;
        let content = matches!(parsed, Parsed::Contents { .. }).then(|| self.parser.take_content());
        Ok(Reply {
            line: parsed.to_string(),
            parsed,
            content,
        })
    }

    /// Reads one answer, as text.
    pub fn reply(&mut self) -> io::Result<String> {
        self.reply_parts().map(Reply::into_text)
    }

    pub fn command_parts(&mut self, request: &[u8]) -> io::Result<Reply> {
        self.send(request)?;
        self.reply_parts()
    }

    /// Sends `request` and reads one answer, as text.
    pub fn command(&mut self, request: &[u8]) -> io::Result<String> {
        self.send(request)?;
        self.reply()
    }

    pub fn write(&mut self, name: &str, content: &str) -> io::Result<String> {
        self.command(write_command(name, content).as_bytes())
    }

    pub fn read(&mut self, name: &str) -> io::Result<String> {
        self.command(format!("read {name}\r\n").as_bytes())
    }

    /// `write NAME len\r\ncontent\r\n` with any bytes → its version (panics
    /// on anything but `OK VERSION`).
    pub fn write_version(&mut self, name: &str, content: &[u8]) -> u64 {
        let mut request = format!("write {name} {}\r\n", content.len()).into_bytes();
        request.extend_from_slice(content);
        request.extend_from_slice(b"\r\n");
        self.command_parts(&request)
            .expect("write")
            .written_version()
    }

    /// `read NAME` → its answer (panics on a connection error).
    pub fn read_parts(&mut self, name: &str) -> Reply {
        self.command_parts(format!("read {name}\r\n").as_bytes())
            .expect("read")
    }

    /// Reads exactly `length` bytes and returns them.
    pub fn read_exact_bytes(&mut self, length: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; length];
        self.reader.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// Reads exactly `expected.len()` bytes and compares them.
    pub fn expect(&mut self, expected: &[u8]) {
        match self.read_exact_bytes(expected.len()) {
            Ok(got) => assert_eq!(show(&got), show(expected), "answer differs"),
            Err(e) => panic!("waiting for {:?}: {e}", show(expected)),
        }
    }

    /// Nothing arrives for `quiet` (a `watch` still waiting); the read
    /// timeout is `CLIENT_TIMEOUT` again afterwards.
    pub fn expect_silence(&mut self, quiet: Duration, what: &str) {
        self.set_timeout(quiet);
        match self.reply_parts() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("{what}: expected no answer yet, got {other:?}"),
        }
        self.set_timeout(CLIENT_TIMEOUT);
    }

    /// Sends `request` and expects exactly `answer`.
    pub fn exchange(&mut self, request: &[u8], answer: &[u8]) {
        self.send(request).expect("send to the node");
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
}

/// `write NAME len\r\ncontent\r\n`.
pub fn write_command(name: &str, content: &str) -> String {
    format!("write {name} {}\r\n{content}\r\n", content.len())
}

/// The version of an `OK VERSION` answer.
pub fn ok_version(reply: &str) -> Option<u64> {
    reply.strip_prefix("OK ")?.parse().ok()
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
