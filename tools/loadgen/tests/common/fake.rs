//! A tiny fake of the fs protocol server for loadgen's tests and throughput runs.
//!
//! Owns: `FakeServer` — a listener on 127.0.0.1 with one blocking thread per
//! connection — and its `Mode`s: a real in-memory store (versions, cas,
//! delete), a fixed reply to every command, `ERR_REDIRECT` to another
//! address, closing connections, hanging. It records how many commands it
//! parsed and the largest batch of commands it held unanswered on one
//! connection (to check pipelining depth). Invariants: it parses commands
//! exactly as SPEC §2 frames them (content skipped by NUMBYTES), so content
//! full of `\r\n` never desynchronises it. Leaves out: expiry, limits,
//! malformed-input recovery (a bad command closes the connection).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the fake answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// A real in-memory store with one version counter.
    Store,
    /// These bytes answer every command.
    Fixed(Vec<u8>),
    /// `ERR_REDIRECT <target>` answers every command.
    Redirect(String),
    /// Closes a connection as soon as bytes arrive, answering nothing.
    CloseOnCommand,
    /// Reads and discards, never answering.
    Hang,
}

/// Knobs beyond the mode.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// After the first bytes of a batch arrive, wait this long and take
    /// everything that arrived meanwhile before answering.
    pub hold_ms: Option<u64>,
    /// Close a connection after answering this many commands on it.
    pub close_after_answers: Option<u64>,
}

/// What the fake saw.
#[derive(Default)]
pub struct FakeStats {
    pub connections: AtomicU64,
    pub commands: AtomicU64,
    /// Most commands parsed from one connection before answering them.
    pub max_batch: AtomicU64,
    /// Writes / cas whose content differed from `expected_content`.
    pub bad_content: AtomicU64,
}

/// name -> (version, content)
type Files = HashMap<Vec<u8>, (u64, Vec<u8>)>;

struct Store {
    next_version: u64,
    files: Files,
}

/// A running fake; its threads live until the test process exits.
pub struct FakeServer {
    pub address: SocketAddr,
    pub stats: Arc<FakeStats>,
    store: Arc<Mutex<Store>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

/// A listener on an ephemeral loopback port (to learn the address before choosing a mode).
pub fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// An address where nothing listens (bound, then closed).
pub fn closed_address() -> SocketAddr {
    let listener = bind();
    listener.local_addr().expect("local address")
}

impl FakeServer {
    pub fn start(mode: Mode) -> FakeServer {
        FakeServer::start_on(bind(), mode, Options::default())
    }

    pub fn start_with(mode: Mode, options: Options) -> FakeServer {
        FakeServer::start_on(bind(), mode, options)
    }

    pub fn start_on(listener: TcpListener, mode: Mode, options: Options) -> FakeServer {
        let address = listener.local_addr().expect("local address");
        let stats = Arc::new(FakeStats::default());
        let store = Arc::new(Mutex::new(Store {
            next_version: 1,
            files: HashMap::new(),
        }));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let server = FakeServer {
            address,
            stats: stats.clone(),
            store: store.clone(),
            streams: streams.clone(),
        };
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                stats.connections.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    streams.lock().expect("streams").push(clone);
                }
                let (mode, options, stats, store) =
                    (mode.clone(), options.clone(), stats.clone(), store.clone());
                thread::spawn(move || serve(stream, mode, options, stats, store));
            }
        });
        server
    }

    /// Waits (up to 5 s) until `count` connections have been accepted.
    pub fn wait_for_connections(&self, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.streams.lock().expect("streams").len() < count
            && std::time::Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Shuts down every connection accepted so far (as a server closing idle clients would).
    pub fn close_all_connections(&self) {
        for stream in self.streams.lock().expect("streams").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The stored files: name -> (version, content).
    pub fn files(&self) -> Files {
        self.store.lock().expect("store").files.clone()
    }
}

/// One parsed command, borrowing from the input.
enum Command<'a> {
    Read(&'a [u8]),
    Write(&'a [u8], &'a [u8]),
    Cas(&'a [u8], u64, &'a [u8]),
    Delete(&'a [u8]),
}

fn number(field: &[u8]) -> Option<u64> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// `Ok(None)`: incomplete; `Err(())`: malformed.
#[allow(clippy::result_unit_err)]
fn parse_command(input: &[u8]) -> Result<Option<(Command<'_>, usize)>, ()> {
    let Some(newline) = memchr::memchr(b'\n', input) else {
        return Ok(None);
    };
    let line = input[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&input[..newline]);
    let fields: Vec<&[u8]> = line
        .split(|&byte| byte == b' ')
        .filter(|field| !field.is_empty())
        .collect();
    let after_line = newline + 1;
    let with_content = |length: u64| -> Result<Option<(&[u8], usize)>, ()> {
        let length = usize::try_from(length).map_err(|_| ())?;
        let end = after_line + length;
        if input.len() < end + 2 {
            return Ok(None);
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err(());
        }
        Ok(Some((&input[after_line..end], end + 2)))
    };
    match fields.as_slice() {
        [b"read", name] => Ok(Some((Command::Read(name), after_line))),
        [b"delete", name] => Ok(Some((Command::Delete(name), after_line))),
        [b"write", name, length, ..] => {
            let length = number(length).ok_or(())?;
            Ok(with_content(length)?.map(|(content, used)| (Command::Write(name, content), used)))
        }
        [b"cas", name, version, length, ..] => {
            let version = number(version).ok_or(())?;
            let length = number(length).ok_or(())?;
            Ok(with_content(length)?
                .map(|(content, used)| (Command::Cas(name, version, content), used)))
        }
        _ => Err(()),
    }
}

fn answer(
    command: Command<'_>,
    mode: &Mode,
    store: &Mutex<Store>,
    stats: &FakeStats,
    output: &mut Vec<u8>,
) {
    match mode {
        Mode::Fixed(reply) => output.extend_from_slice(reply),
        Mode::Redirect(target) => {
            output.extend_from_slice(b"ERR_REDIRECT ");
            output.extend_from_slice(target.as_bytes());
            output.extend_from_slice(b"\r\n");
        }
        Mode::CloseOnCommand | Mode::Hang => {}
        Mode::Store => {
            let mut store = store.lock().expect("store");
            let Store {
                next_version,
                files,
            } = &mut *store;
            match command {
                Command::Read(name) => match files.get(name) {
                    Some((version, content)) => {
                        output.extend_from_slice(
                            format!("CONTENTS {} {} 0\r\n", version, content.len()).as_bytes(),
                        );
                        output.extend_from_slice(content);
                        output.extend_from_slice(b"\r\n");
                    }
                    None => output.extend_from_slice(b"ERR_FILE_NOT_FOUND\r\n"),
                },
                Command::Write(name, content) => {
                    check_content(content, stats);
                    let version = *next_version;
                    *next_version += 1;
                    files.insert(name.to_vec(), (version, content.to_vec()));
                    output.extend_from_slice(format!("OK {version}\r\n").as_bytes());
                }
                Command::Cas(name, expected_version, content) => {
                    check_content(content, stats);
                    match files.get_mut(name) {
                        None => output.extend_from_slice(b"ERR_FILE_NOT_FOUND\r\n"),
                        Some((version, _)) if *version != expected_version => {
                            output
                                .extend_from_slice(format!("ERR_VERSION {version}\r\n").as_bytes());
                        }
                        Some(file) => {
                            let version = *next_version;
                            *next_version += 1;
                            *file = (version, content.to_vec());
                            output.extend_from_slice(format!("OK {version}\r\n").as_bytes());
                        }
                    }
                }
                Command::Delete(name) => match files.remove(name) {
                    Some(_) => output.extend_from_slice(b"OK\r\n"),
                    None => output.extend_from_slice(b"ERR_FILE_NOT_FOUND\r\n"),
                },
            }
        }
    }
}

fn check_content(content: &[u8], stats: &FakeStats) {
    if content != loadgen::command::content_pattern(content.len()).as_slice() {
        stats.bad_content.fetch_add(1, Ordering::SeqCst);
    }
}

fn serve(
    mut stream: TcpStream,
    mode: Mode,
    options: Options,
    stats: Arc<FakeStats>,
    store: Arc<Mutex<Store>>,
) {
    let _ = stream.set_nodelay(true);
    let mut input: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut output: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut answered = 0u64;
    loop {
        let Ok(read) = stream.read(&mut chunk) else {
            return;
        };
        if read == 0 {
            return;
        }
        input.extend_from_slice(&chunk[..read]);
        match mode {
            Mode::CloseOnCommand => {
                // A clone of the stream lives on in `streams`: shut down, not just drop.
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Mode::Hang => {
                input.clear();
                continue;
            }
            _ => {}
        }
        if let Some(hold_ms) = options.hold_ms {
            thread::sleep(Duration::from_millis(hold_ms));
            if stream.set_nonblocking(true).is_err() {
                return;
            }
            while let Ok(read) = stream.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                input.extend_from_slice(&chunk[..read]);
            }
            if stream.set_nonblocking(false).is_err() {
                return;
            }
        }
        let mut offset = 0;
        let mut batch = 0u64;
        let mut close = false;
        loop {
            match parse_command(&input[offset..]) {
                Ok(Some((command, used))) => {
                    offset += used;
                    batch += 1;
                    answer(command, &mode, &store, &stats, &mut output);
                    answered += 1;
                    if options
                        .close_after_answers
                        .is_some_and(|limit| answered >= limit)
                    {
                        close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(()) => {
                    close = true;
                    break;
                }
            }
        }
        input.drain(..offset);
        stats.commands.fetch_add(batch, Ordering::SeqCst);
        stats.max_batch.fetch_max(batch, Ordering::SeqCst);
        if stream.write_all(&output).is_err() {
            return;
        }
        output.clear();
        if close {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}
