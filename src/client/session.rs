//! One user's connection to a cluster, as `raftfs client` keeps it: the
//! member addresses, the connection in use, and running one command to its
//! answer through redirects and down members.
//!
//! Owns: [`Command`] (what a user asks, and its byte-exact encoding, SPEC
//! §2), [`Session`] (connect, send, read the answer with the one reply
//! parser, `protocol::reply`) and [`Failure`] (no member gave an answer, or the user cancelled).
//!
//! Invariants:
//! - A command that changes files (`write`, `cas`, `delete`) is sent at most
//!   once to a node that may run it: it is re-sent only after `ERR_REDIRECT`
//!   (SPEC §3: not applied). If its connection breaks or times out after the
//!   bytes went out, its fate is unknown and it is reported so, never
//!   retried (a retried `write` would take a second version; a retried
//!   `delete` would answer `ERR_FILE_NOT_FOUND` for a delete that happened).
//!   `read` and `watch` change nothing and are retried on another member.
//! - A connection kept between commands is checked before reuse: one the
//!   server closed meanwhile is replaced before anything is sent on it.
//! - Looking for a member that serves is bounded: every address refusing the
//!   connection ends the search at once; redirects and retries stop after
//!   `CLIENT_RETRY_WINDOW_MS`. Each answer but a `watch`'s is awaited at
//!   most `CLIENT_ANSWER_TIMEOUT_MS`; a `watch` waits as long as it takes
//!   (SPEC §2), and can be cancelled through a flag (the shell's Ctrl-C).
//!
//! Leaves out: printing answers and exit codes (`client`), line editing
//! (`client::shell`).

use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::limits::{
    CLIENT_ANSWER_TIMEOUT_MS, CLIENT_CONNECT_TIMEOUT_MS, CLIENT_RETRY_PAUSE_MS,
    CLIENT_RETRY_WINDOW_MS, CLIENT_WATCH_POLL_MS, FILE_BYTES_MAX_CEILING,
};
use crate::net::tls::{host_of, ToolStream, ToolTls};
use crate::protocol::reply::{read_reply, Reply, ReplyParser};

/// One command a user asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        name: Vec<u8>,
    },
    Write {
        name: Vec<u8>,
        content: Vec<u8>,
        exptime_s: u64,
    },
    Cas {
        name: Vec<u8>,
        version: u64,
        content: Vec<u8>,
        exptime_s: u64,
    },
    Delete {
        name: Vec<u8>,
    },
    Watch {
        name: Vec<u8>,
        version: u64,
    },
}

impl Command {
    /// The command's bytes on the wire (SPEC §2); EXPTIME is sent only when
    /// it is not 0 (0 is the default).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let expiry = |exptime_s: u64| {
            if exptime_s > 0 {
                format!(" {exptime_s}")
            } else {
                String::new()
            }
        };
        match self {
            Command::Read { name } => {
                out.extend_from_slice(b"read ");
                out.extend_from_slice(name);
            }
            Command::Delete { name } => {
                out.extend_from_slice(b"delete ");
                out.extend_from_slice(name);
            }
            Command::Watch { name, version } => {
                out.extend_from_slice(b"watch ");
                out.extend_from_slice(name);
                out.extend_from_slice(format!(" {version}").as_bytes());
            }
            Command::Write {
                name,
                content,
                exptime_s,
            } => {
                out.extend_from_slice(b"write ");
                out.extend_from_slice(name);
                out.extend_from_slice(
                    format!(" {}{}", content.len(), expiry(*exptime_s)).as_bytes(),
                );
            }
            Command::Cas {
                name,
                version,
                content,
                exptime_s,
            } => {
                out.extend_from_slice(b"cas ");
                out.extend_from_slice(name);
                out.extend_from_slice(
                    format!(" {version} {}{}", content.len(), expiry(*exptime_s)).as_bytes(),
                );
            }
        }
        out.extend_from_slice(b"\r\n");
        if let Command::Write { content, .. } | Command::Cas { content, .. } = self {
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The command's name in the protocol.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Read { .. } => "read",
            Command::Write { .. } => "write",
            Command::Cas { .. } => "cas",
            Command::Delete { .. } => "delete",
            Command::Watch { .. } => "watch",
        }
    }

    /// True when running it twice is harmless (it changes no file).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Command::Read { .. } | Command::Watch { .. })
    }
}

/// An answer and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub reply: Reply,
    /// The content of a `CONTENTS` answer (empty otherwise).
    pub content: Vec<u8>,
    /// The address of the member that answered.
    pub address: String,
}

/// Why a command got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No member gave an answer: the reason, one line.
    Unavailable(String),
    /// The user cancelled a waiting watch.
    Cancelled,
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unavailable(reason) => write!(formatter, "unavailable: {reason}"),
            Failure::Cancelled => formatter.write_str("cancelled"),
        }
    }
}

/// Why one attempt on one connection ended without an answer.
enum AttemptError {
    /// The command surely did not run: nothing was sent, or the server had
    /// closed the connection before.
    NotSent(String),
    /// The bytes went out and no answer came back.
    Lost(String),
    /// The user cancelled a watch.
    Cancelled,
}

struct Connection {
    address: String,
    /// No command was sent on it yet.
    fresh: bool,
    /// The stream (plain or TLS); writes go to `reader.get_mut()`.
    reader: BufReader<ToolStream>,
    parser: ReplyParser,
}

/// A user's view of one cluster.
pub struct Session {
    addresses: Vec<String>,
    /// The configured address to try next when no connection is open.
    next_address: usize,
    connection: Option<Connection>,
    /// TLS for every connection (None: plain TCP).
    tls: Option<ToolTls>,
}

impl Session {
    /// A session over `addresses` (HOST:PORT each, at least one); nothing is
    /// connected yet.
    pub fn new(addresses: Vec<String>) -> Session {
        let mut unique: Vec<String> = Vec::with_capacity(addresses.len());
        for address in addresses {
            if !unique.contains(&address) {
                unique.push(address);
            }
        }
        Session {
            addresses: unique,
            next_address: 0,
            connection: None,
            tls: None,
        }
    }

    /// Connect with TLS from now on (the client ports serve TLS).
    pub fn with_tls(mut self, tls: Option<ToolTls>) -> Session {
        self.tls = tls;
        self
    }

    /// The address of the open connection, if any.
    pub fn connected_to(&self) -> Option<&str> {
        self.connection
            .as_ref()
            .map(|connection| connection.address.as_str())
    }

    /// Runs `command` to an answer: from the open connection or the next
    /// member, following `ERR_REDIRECT` and moving past members that are
    /// down (module doc). `cancel` set while a watch waits abandons it.
    pub fn execute(
        &mut self,
        command: &Command,
        cancel: Option<&AtomicBool>,
    ) -> Result<Answer, Failure> {
        let bytes = command.encode();
        let deadline = Instant::now() + Duration::from_millis(CLIENT_RETRY_WINDOW_MS);
        // Configured addresses that refused a connection during this command.
        let mut refused = vec![false; self.addresses.len()];
        let mut redirect_to: Option<String> = None;
        let mut redirects = 0u32;
        let mut last_problem = String::new();
        loop {
            if Instant::now() >= deadline {
                return Err(Failure::Unavailable(format!(
                    "no answer within {} s ({last_problem})",
                    CLIENT_RETRY_WINDOW_MS / 1000
                )));
            }
            if self.connection.is_none() {
                let address = match redirect_to.take() {
                    Some(address) => address,
                    None => match self.next_unrefused(&refused) {
                        Some(index) => self.addresses[index].clone(),
                        None => {
                            return Err(Failure::Unavailable(format!(
                                "no member answers ({last_problem})"
                            )))
                        }
                    },
                };
                match connect(&address, self.tls.as_ref()) {
                    Ok(connection) => self.connection = Some(connection),
                    Err(error) => {
                        last_problem = format!("{address}: {error}");
                        self.mark_refused(&mut refused, &address);
                        continue;
                    }
                }
            }
            let Some(connection) = self.connection.as_mut() else {
                continue;
            };
            let address = connection.address.clone();
            let is_watch = matches!(command, Command::Watch { .. });
            match attempt(connection, &bytes, is_watch, cancel) {
                Ok(Reply::Redirect(target)) => {
                    self.connection = None;
                    redirects += 1;
                    last_problem =
                        format!("{address} redirected to {target}, {redirects} redirects so far");
                    // A redirect to a member known to be down, or a leader that
                    // keeps moving: wait a little for the cluster to settle.
                    let target_refused = self
                        .addresses
                        .iter()
                        .position(|a| *a == target)
                        .is_some_and(|index| refused[index]);
                    if target_refused || redirects > 2 {
                        std::thread::sleep(Duration::from_millis(CLIENT_RETRY_PAUSE_MS));
                    }
                    if target_refused {
                        // Ask another member; it may know a newer leader by now.
                        refused.iter_mut().for_each(|r| *r = false);
                        self.advance_past(&address);
                    } else {
                        redirect_to = Some(target);
                    }
                }
                Ok(reply) => {
                    let content = match reply {
                        Reply::Contents { .. } => connection.parser.take_content(),
                        _ => Vec::new(),
                    };
                    return Ok(Answer {
                        reply,
                        content,
                        address,
                    });
                }
                Err(AttemptError::Cancelled) => {
                    self.connection = None;
                    return Err(Failure::Cancelled);
                }
                Err(AttemptError::NotSent(problem)) => {
                    // A kept connection the server closed while idle is
                    // simply opened again; a fresh one closed at once means
                    // this member does not serve now.
                    if connection.fresh {
                        self.mark_refused(&mut refused, &address);
                    }
                    self.connection = None;
                    last_problem = format!("{address}: {problem}");
                }
                Err(AttemptError::Lost(problem)) => {
                    self.connection = None;
                    if !command.is_retryable() {
                        return Err(Failure::Unavailable(format!(
                            "{address}: {problem}; the {} may or may not have been applied",
                            command.verb()
                        )));
                    }
                    last_problem = format!("{address}: {problem}");
                    self.mark_refused(&mut refused, &address);
                }
            }
        }
    }

    /// The first configured address from `next_address` on that did not
    /// refuse a connection during this command.
    fn next_unrefused(&mut self, refused: &[bool]) -> Option<usize> {
        let count = self.addresses.len();
        let index = (0..count)
            .map(|offset| (self.next_address + offset) % count)
            .find(|&index| !refused[index])?;
        self.next_address = index;
        Some(index)
    }

    /// Notes that `address` gave no answer (when it is a configured one).
    fn mark_refused(&self, refused: &mut [bool], address: &str) {
        if let Some(index) = self.addresses.iter().position(|a| a == address) {
            refused[index] = true;
        }
    }

    /// Moves `next_address` past `address` (when it is a configured one).
    fn advance_past(&mut self, address: &str) {
        if let Some(index) = self.addresses.iter().position(|a| a == address) {
            self.next_address = (index + 1) % self.addresses.len();
        }
    }
}

/// Opens a connection to `address` (HOST:PORT, resolved now).
fn connect(address: &str, tls: Option<&ToolTls>) -> io::Result<Connection> {
    let targets: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "resolves to no address");
    for target in targets {
        match TcpStream::connect_timeout(&target, Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS))
        {
            // Connecting to a closed local port can pick that very port as
            // the local end (TCP simultaneous open) and talk to itself.
            Ok(stream) if stream.local_addr().ok() == stream.peer_addr().ok() => {
                last_error = io::Error::new(io::ErrorKind::ConnectionRefused, "nothing listens");
            }
            Ok(stream) => {
                stream.set_nodelay(true)?;
                let stream = match tls {
                    Some(tls) => {
                        stream.set_read_timeout(Some(Duration::from_millis(
                            CLIENT_CONNECT_TIMEOUT_MS,
                        )))?;
                        let mut stream = tls.wrap(stream, host_of(address))?;
                        // The handshake now: a certificate problem is a
                        // connect failure, not a lost command.
                        stream.flush()?;
                        stream
                    }
                    None => ToolStream::Plain(stream),
                };
                return Ok(Connection {
                    address: address.to_string(),
                    fresh: true,
                    reader: BufReader::new(stream),
                    parser: ReplyParser::new().keeping_content(FILE_BYTES_MAX_CEILING),
                });
            }
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// Sends `bytes` on `connection` and reads one answer.
fn attempt(
    connection: &mut Connection,
    bytes: &[u8],
    is_watch: bool,
    cancel: Option<&AtomicBool>,
) -> Result<Reply, AttemptError> {
    if !is_open(connection.reader.get_ref().socket()) {
        return Err(AttemptError::NotSent(
            "the connection was closed by the server".into(),
        ));
    }
    connection.fresh = false;
    if let Err(error) = connection.reader.get_mut().write_all(bytes) {
        return Err(AttemptError::Lost(format!("sending failed: {error}")));
    }
    if is_watch {
        wait_readable(connection, cancel)?;
    }
    let timeout = Duration::from_millis(CLIENT_ANSWER_TIMEOUT_MS);
    if let Err(error) = connection
        .reader
        .get_ref()
        .socket()
        .set_read_timeout(Some(timeout))
    {
        return Err(AttemptError::Lost(format!("setting a timeout: {error}")));
    }
    read_reply(&mut connection.reader, &mut connection.parser).map_err(|error| {
        AttemptError::Lost(match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("no answer within {} s", CLIENT_ANSWER_TIMEOUT_MS / 1000)
            }
            _ => error.to_string(),
        })
    })
}

/// Whether a kept connection is still open: nothing may be waiting on it
/// (every answer was read), so readable means closed (or garbage).
fn is_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open =
        matches!(stream.peek(&mut byte), Err(error) if error.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}

/// Waits, as long as it takes, until the first byte of a watch's answer
/// arrives (or the connection closes), checking `cancel` every
/// `CLIENT_WATCH_POLL_MS`.
fn wait_readable(
    connection: &mut Connection,
    cancel: Option<&AtomicBool>,
) -> Result<(), AttemptError> {
    let poll = Duration::from_millis(CLIENT_WATCH_POLL_MS);
    let lost = |error: io::Error| AttemptError::Lost(format!("waiting for the watch: {error}"));
    connection
        .reader
        .get_ref()
        .socket()
        .set_read_timeout(Some(poll))
        .map_err(lost)?;
    let mut byte = [0u8; 1];
    loop {
        if cancel.is_some_and(|flag| flag.swap(false, Ordering::SeqCst)) {
            return Err(AttemptError::Cancelled);
        }
        if !connection.reader.buffer().is_empty()
            || connection.reader.get_mut().has_buffered_input()
        {
            return Ok(());
        }
        match connection.reader.get_ref().socket().peek(&mut byte) {
            // Bytes, or the end of the stream (which read_reply reports).
            Ok(_) => return Ok(()),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => return Err(lost(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_byte_exact() {
        let name = b"f".to_vec();
        let cases: [(Command, &[u8]); 6] = [
            (Command::Read { name: name.clone() }, b"read f\r\n"),
            (Command::Delete { name: name.clone() }, b"delete f\r\n"),
            (
                Command::Watch {
                    name: name.clone(),
                    version: 0,
                },
                b"watch f 0\r\n",
            ),
            (
                Command::Write {
                    name: name.clone(),
                    content: b"a\r\nb".to_vec(),
                    exptime_s: 0,
                },
                b"write f 4\r\na\r\nb\r\n",
            ),
            (
                Command::Write {
                    name: name.clone(),
                    content: Vec::new(),
                    exptime_s: 30,
                },
                b"write f 0 30\r\n\r\n",
            ),
            (
                Command::Cas {
                    name,
                    version: 7,
                    content: b"xy".to_vec(),
                    exptime_s: 5,
                },
                b"cas f 7 2 5\r\nxy\r\n",
            ),
        ];
        for (command, expected) in cases {
            assert_eq!(command.encode(), expected, "{command:?}");
        }
    }

    #[test]
    fn no_member_listening_is_unavailable_at_once() {
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").to_string()
        };
        let mut session = Session::new(vec![closed(), closed()]);
        let started = Instant::now();
        let error = session
            .execute(
                &Command::Read {
                    name: b"f".to_vec(),
                },
                None,
            )
            .expect_err("nothing listens");
        assert!(
            error
                .to_string()
                .starts_with("unavailable: no member answers"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
