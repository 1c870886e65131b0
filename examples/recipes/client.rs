//! A small blocking raftfs client for the recipes (std `TcpStream` only).
//!
//! One connection at a time to one of the cluster's client addresses. It
//! follows `ERR_REDIRECT` (the command was not applied there), moves on to
//! the next address when a connect fails, and says which outcomes are
//! definite: an `ERR_INTERNAL`, or a connection lost after the command left,
//! leaves a write's outcome unknown (`Failure::Unknown`), and the recipes
//! decide what that means for them. Reads and watches change nothing, so
//! they are simply sent again.
//!
//! A watch cannot be cancelled by a command: to stop waiting, the client
//! closes the connection (the node then forgets the watch and everything
//! pipelined behind it), which `watch` does when its deadline passes.
//!
//! Parsing is minimal and strict (SPEC §2): a reply line ends with `\r\n`;
//! `CONTENTS` carries its length and its content ends with `\r\n`. (The
//! loadgen's reply parser counts content off without keeping it, and the
//! recipes need the content.)

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A command that is not a watch is answered within 5 s (SPEC §3); the rest
/// is slack for a loaded machine.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(6);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before trying again after a failure, so a leaderless cluster is
/// not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Redirects followed for one command before it counts as a failure.
const REDIRECTS_MAX: usize = 8;

/// A definite answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `CONTENTS VERSION ...` (a read's or a watch's answer).
    Contents {
        version: u64,
        content: Vec<u8>,
    },
    /// `OK VERSION`.
    Written(u64),
    /// `OK` (delete).
    Deleted,
    NotFound,
    /// `ERR_VERSION CURRENT`.
    VersionMismatch(u64),
}

/// No definite answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The command may or may not have taken effect (`ERR_INTERNAL`, or the
    /// connection was lost after it was sent).
    Unknown,
    /// The deadline passed before a definite answer (for a watch: before the
    /// change).
    Deadline,
    /// The node answered something no command gets (a bug).
    Protocol(String),
}

struct Connection {
    address: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A client session over the cluster's client addresses.
pub struct Session {
    addresses: Vec<String>,
    next: usize,
    connection: Option<Connection>,
    /// Where the last redirect pointed (tried first).
    redirected_to: Option<String>,
}

impl Session {
    pub fn new(addresses: Vec<String>) -> Session {
        Session {
            addresses,
            next: 0,
            connection: None,
            redirected_to: None,
        }
    }

    /// Closes the connection (a waiting watch is then forgotten).
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    /// `read NAME`: `Some((version, content))`, or `None` if absent.
    pub fn read(
        &mut self,
        name: &str,
        deadline: Instant,
    ) -> Result<Option<(u64, Vec<u8>)>, Failure> {
        let command = format!("read {name}\r\n").into_bytes();
        contents_or_absent(self.call(&command, true, deadline)?)
    }

    /// `watch NAME VERSION`: waits until the file's version differs from
    /// `version` (0 = absent) and returns what `read` would; `Deadline` if
    /// nothing changed before `deadline`.
    pub fn watch(
        &mut self,
        name: &str,
        version: u64,
        deadline: Instant,
    ) -> Result<Option<(u64, Vec<u8>)>, Failure> {
        let command = format!("watch {name} {version}\r\n").into_bytes();
        contents_or_absent(self.call(&command, true, deadline)?)
    }

    /// `write NAME` with `content` and `exptime_s` (0 = never): its version.
    pub fn write(
        &mut self,
        name: &str,
        content: &[u8],
        exptime_s: u64,
        deadline: Instant,
    ) -> Result<u64, Failure> {
        let mut command = format!("write {name} {} {exptime_s}\r\n", content.len()).into_bytes();
        command.extend_from_slice(content);
        command.extend_from_slice(b"\r\n");
        match self.call(&command, false, deadline)? {
            Answer::Written(version) => Ok(version),
            other => Err(unexpected("write", &other)),
        }
    }

    /// `cas NAME VERSION`: `Written`, `VersionMismatch` or `NotFound`.
    pub fn cas(
        &mut self,
        name: &str,
        version: u64,
        content: &[u8],
        exptime_s: u64,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let mut command =
            format!("cas {name} {version} {} {exptime_s}\r\n", content.len()).into_bytes();
        command.extend_from_slice(content);
        command.extend_from_slice(b"\r\n");
        match self.call(&command, false, deadline)? {
            answer @ (Answer::Written(_) | Answer::VersionMismatch(_) | Answer::NotFound) => {
                Ok(answer)
            }
            other => Err(unexpected("cas", &other)),
        }
    }

    /// Sends `command` until a definite answer or `deadline`. A command
    /// that changes nothing (`repeatable`) is sent again after an unknown
    /// outcome; any other returns `Failure::Unknown` then.
    fn call(
        &mut self,
        command: &[u8],
        repeatable: bool,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let mut redirects = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(Failure::Deadline);
            }
            let Some(connection) = self.connected(deadline) else {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            };
            let outcome = exchange(connection, command, deadline);
            match outcome {
                Ok(Reply::Answer(answer)) => return Ok(answer),
                Ok(Reply::Redirect(address)) if redirects < REDIRECTS_MAX => {
                    // Not applied there: go where it points.
                    redirects += 1;
                    self.redirected_to = Some(address);
                    self.connection = None;
                }
                Ok(Reply::Redirect(_)) => {
                    self.connection = None;
                    std::thread::sleep(RETRY_PAUSE);
                }
                Ok(Reply::Internal) if repeatable => std::thread::sleep(RETRY_PAUSE),
                Ok(Reply::Internal) => return Err(Failure::Unknown),
                Err(Exchange::Protocol(problem)) => {
                    self.connection = None;
                    return Err(Failure::Protocol(problem));
                }
                Err(Exchange::TimedOut) if Instant::now() >= deadline => {
                    // The command may still be waiting there (a watch): only
                    // closing the connection cancels it.
                    self.connection = None;
                    return Err(if repeatable {
                        Failure::Deadline
                    } else {
                        Failure::Unknown
                    });
                }
                Err(Exchange::TimedOut | Exchange::Lost) => {
                    self.connection = None;
                    if !repeatable {
                        return Err(Failure::Unknown);
                    }
                    self.next = (self.next + 1) % self.addresses.len().max(1);
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }

    /// The open connection, or a new one (to the last redirect's target,
    /// else the next address); `None` if that connect failed.
    fn connected(&mut self, deadline: Instant) -> Option<&mut Connection> {
        if self.connection.is_none() {
            let address = match self.redirected_to.take() {
                Some(address) => address,
                None => {
                    let address = self.addresses.get(self.next)?.clone();
                    self.next = (self.next + 1) % self.addresses.len();
                    address
                }
            };
            let timeout = CONNECT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            let stream = address.parse::<SocketAddr>().ok().and_then(|socket| {
                TcpStream::connect_timeout(&socket, timeout.max(Duration::from_millis(1))).ok()
            })?;
            stream.set_nodelay(true).ok()?;
            let writer = stream.try_clone().ok()?;
            self.connection = Some(Connection {
                address,
                reader: BufReader::new(stream),
                writer,
            });
        }
        self.connection.as_mut()
    }

    /// The address of the open connection, if any (for reports).
    pub fn connected_to(&self) -> Option<&str> {
        self.connection.as_ref().map(|c| c.address.as_str())
    }
}

enum Reply {
    Answer(Answer),
    Redirect(String),
    Internal,
}

enum Exchange {
    /// The connection failed or closed after the command was sent.
    Lost,
    TimedOut,
    Protocol(String),
}

/// Sends `command` and reads one reply, waiting at most until `deadline`
/// (and `COMMAND_TIMEOUT` for anything but a watch, whose answer waits for
/// a change).
fn exchange(
    connection: &mut Connection,
    command: &[u8],
    deadline: Instant,
) -> Result<Reply, Exchange> {
    let is_watch = command.starts_with(b"watch ");
    let mut wait = deadline.saturating_duration_since(Instant::now());
    if !is_watch {
        wait = wait.min(COMMAND_TIMEOUT);
    }
    connection
        .writer
        .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .map_err(|_| Exchange::Lost)?;
    connection
        .writer
        .write_all(command)
        .map_err(|_| Exchange::Lost)?;
    let mut line = Vec::new();
    match connection.reader.read_until(b'\n', &mut line) {
        Ok(_) if line.ends_with(b"\r\n") => {}
        Ok(_) => return Err(Exchange::Lost),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Exchange::TimedOut)
        }
        Err(_) => return Err(Exchange::Lost),
    }
    line.truncate(line.len() - 2);
    let text =
        String::from_utf8(line).map_err(|_| Exchange::Protocol("reply is not UTF-8".into()))?;
    let mut fields = text.split(' ');
    let head = fields.next().unwrap_or("");
    let number = |field: Option<&str>| {
        field
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| Exchange::Protocol(format!("bad reply {text:?}")))
    };
    let answer = match head {
        "OK" => match fields.next() {
            None => Answer::Deleted,
            version => Answer::Written(number(version)?),
        },
        "CONTENTS" => {
            let version = number(fields.next())?;
            let length = number(fields.next())? as usize;
            let mut content = vec![0u8; length + 2];
            connection
                .reader
                .read_exact(&mut content)
                .map_err(|_| Exchange::Lost)?;
            if !content.ends_with(b"\r\n") {
                return Err(Exchange::Protocol("content not followed by \\r\\n".into()));
            }
            content.truncate(length);
            Answer::Contents { version, content }
        }
        "ERR_FILE_NOT_FOUND" => Answer::NotFound,
        "ERR_VERSION" => Answer::VersionMismatch(number(fields.next())?),
        "ERR_REDIRECT" => return Ok(Reply::Redirect(fields.next().unwrap_or("").to_string())),
        "ERR_INTERNAL" => return Ok(Reply::Internal),
        _ => return Err(Exchange::Protocol(format!("unexpected reply {text:?}"))),
    };
    Ok(Reply::Answer(answer))
}

fn contents_or_absent(answer: Answer) -> Result<Option<(u64, Vec<u8>)>, Failure> {
    match answer {
        Answer::Contents { version, content } => Ok(Some((version, content))),
        Answer::NotFound => Ok(None),
        other => Err(unexpected("read", &other)),
    }
}

fn unexpected(command: &str, answer: &Answer) -> Failure {
    Failure::Protocol(format!("{command} answered {answer:?}"))
}
