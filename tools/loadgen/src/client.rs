//! One client: a connection that keeps up to `--pipeline` commands in flight.
//!
//! Owns: `Client` — its link (down / connecting / up), the bytes waiting to be
//! written, the partial reply line held between reads, the reply parser and
//! the queue of commands in flight (oldest first, the order the server
//! answers in) — and `Context`, what a worker lends a client per call.
//! Invariants: at most `pipeline` commands are in flight or waiting to be
//! re-sent; each leaves that state exactly once, counted as an answer or an
//! error in `Context::stats`; a redirect moves the redirected command and
//! everything behind it, in order, to a new connection to the named address
//! (keeping their send and intended times, so latency includes the
//! redirect; latency counts from the intended time, which is the send time
//! in a closed loop and the scheduled time with `--rate`); after a
//! timeout, a close or an unparsable reply the connection is dropped, since
//! later bytes could no longer be matched to commands. Leaves out: choosing
//! commands (see `source`) and the poll loop (see `worker`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use raftfs::net::tls::{Stream, ToolTls};
use raftfs::protocol::reply::{Reply, ReplyParser};

use crate::command::Operation;
use crate::config::Kind;
use crate::limits::{
    MAX_RECONNECT_BACKOFF_MS, MAX_REDIRECT_HOPS, MIN_RECONNECT_BACKOFF_MS, OUTPUT_HIGH_WATER_BYTES,
    READ_CHUNK_BYTES,
};
use crate::source::{Source, Versions};
use crate::stats::{Answer, ErrorKind, Stats};

/// What a worker lends a client for one call.
pub struct Context<'a> {
    pub registry: &'a Registry,
    pub addresses: &'a [SocketAddr],
    pub pipeline: usize,
    pub content: &'a [u8],
    pub expiry_s: u64,
    /// Zero-pad key numbers to this many digits (0 = no padding).
    pub key_digits: usize,
    pub timeout: Duration,
    pub versions: &'a Versions,
    pub stats: &'a mut Stats,
    pub source: &'a mut Source,
    /// Worker-wide read buffer, so idle clients hold no read memory.
    pub scratch: &'a mut Vec<u8>,
    /// Last time any client made progress (connected or got an answer).
    pub last_progress: Instant,
    /// The most recent connect error, for the "cannot connect" message.
    pub last_connect_error: Option<String>,
    /// `--tls-ca`: every connection is TLS (None: plain).
    pub tls: Option<&'a ToolTls>,
}

/// A command sent (or encoded for sending) and not yet answered.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    operation: Operation,
    /// When it was first sent (its timeout counts from here).
    sent_at: Instant,
    /// When it was meant to start (its latency counts from here: the send
    /// time in a closed loop, the scheduled time in an open loop).
    intended_at: Instant,
    redirect_hops: u8,
}

enum Link {
    Down { retry_at: Instant },
    Connecting { stream: TcpStream, since: Instant },
    Up { stream: Stream },
}

/// Whether reading from a connection may go on.
enum Flow {
    Continue,
    /// The connection was dropped (or replaced by a redirect); stop using it.
    Stop,
}

/// One connection's worth of load.
pub struct Client {
    token: Token,
    address_index: usize,
    address: SocketAddr,
    via_redirect: bool,
    link: Link,
    backoff_ms: u64,
    /// Connects that failed since the last one that worked.
    connect_failures_in_a_row: usize,
    answered_on_link: u64,
    output: Vec<u8>,
    output_position: usize,
    partial_line: Vec<u8>,
    parser: ReplyParser,
    in_flight: VecDeque<InFlight>,
    to_resend: VecDeque<InFlight>,
}

impl Client {
    /// A client that will connect to `addresses[address_index]` when first serviced.
    pub fn new(
        token: Token,
        address_index: usize,
        addresses: &[SocketAddr],
        now: Instant,
    ) -> Client {
        let address_index = address_index % addresses.len().max(1);
        Client {
            token,
            address_index,
            address: addresses
                .get(address_index)
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            via_redirect: false,
            link: Link::Down { retry_at: now },
            backoff_ms: 0,
            connect_failures_in_a_row: 0,
            answered_on_link: 0,
            output: Vec::new(),
            output_position: 0,
            partial_line: Vec::new(),
            parser: ReplyParser::new(),
            in_flight: VecDeque::new(),
            to_resend: VecDeque::new(),
        }
    }

    /// No command in flight or waiting to be re-sent.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.to_resend.is_empty()
    }

    /// A connect is under way.
    pub fn is_connecting(&self) -> bool {
        matches!(self.link, Link::Connecting { .. })
    }

    /// Connected.
    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// Connected, or every one of `address_count` addresses refused it in a row.
    pub fn is_settled(&self, address_count: usize) -> bool {
        self.is_up() || self.connect_failures_in_a_row >= address_count.max(1)
    }

    /// Timers: command timeouts, connect timeouts, due reconnects (only when
    /// `want_connection` or commands wait to be re-sent).
    pub fn check_timers(&mut self, context: &mut Context<'_>, now: Instant, want_connection: bool) {
        let oldest = self
            .in_flight
            .front()
            .or(self.to_resend.front())
            .map(|command| command.sent_at);
        if oldest.is_some_and(|sent_at| now.saturating_duration_since(sent_at) >= context.timeout) {
            self.fail_all(context, ErrorKind::Timeout);
            self.drop_link(context.registry, now);
            if want_connection {
                self.connect(context, now);
            }
            return;
        }
        match &self.link {
            Link::Connecting { since, .. }
                if now.saturating_duration_since(*since) >= context.timeout =>
            {
                context.last_connect_error = Some(format!("connect to {} timed out", self.address));
                self.connect_failed(context, now);
            }
            Link::Down { retry_at }
                if *retry_at <= now && (want_connection || !self.to_resend.is_empty()) =>
            {
                self.connect(context, now);
            }
            Link::Up { .. } if want_connection && self.in_flight.len() < context.pipeline => {
                self.fill_and_flush(context, now);
            }
            _ => {}
        }
    }

    /// Counts every outstanding command as `error` (the connection is kept; callers drop it).
    pub fn fail_all(&mut self, context: &mut Context<'_>, error: ErrorKind) {
        for command in self.in_flight.drain(..).chain(self.to_resend.drain(..)) {
            context.stats.record_error(command.operation.kind, error);
        }
    }

    /// Closes the connection, if any; the client stays down until `retry_at`.
    pub fn drop_link(&mut self, registry: &Registry, retry_at: Instant) {
        let old = std::mem::replace(&mut self.link, Link::Down { retry_at });
        // Deregistering a socket that is about to be closed cannot matter if it fails.
        match old {
            Link::Connecting { mut stream, .. } => {
                let _ = registry.deregister(&mut stream);
            }
            Link::Up { mut stream } => {
                let _ = registry.deregister(&mut stream);
            }
            Link::Down { .. } => {}
        }
        self.output.clear();
        self.output_position = 0;
        self.partial_line.clear();
        self.parser.reset();
        self.answered_on_link = 0;
    }

    fn connect(&mut self, context: &mut Context<'_>, now: Instant) {
        let registered = TcpStream::connect(self.address).and_then(|mut stream| {
            context.registry.register(
                &mut stream,
                self.token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match registered {
            Ok(stream) => self.link = Link::Connecting { stream, since: now },
            Err(error) => {
                context.last_connect_error =
                    Some(format!("cannot connect to {}: {error}", self.address));
                self.connect_failed(context, now);
            }
        }
    }

    fn next_backoff(&mut self) -> Duration {
        self.backoff_ms =
            (self.backoff_ms * 2).clamp(MIN_RECONNECT_BACKOFF_MS, MAX_RECONNECT_BACKOFF_MS);
        Duration::from_millis(self.backoff_ms)
    }

    fn connect_failed(&mut self, context: &mut Context<'_>, now: Instant) {
        context.stats.connect_failures += 1;
        self.connect_failures_in_a_row += 1;
        let error = if self.via_redirect {
            ErrorKind::Redirect
        } else {
            ErrorKind::Closed
        };
        self.fail_all(context, error);
        // Try the next configured address: the one that failed may be a dead node.
        self.via_redirect = false;
        self.address_index = (self.address_index + 1) % context.addresses.len().max(1);
        if let Some(&address) = context.addresses.get(self.address_index) {
            self.address = address;
        }
        let retry_at = now + self.next_backoff();
        self.drop_link(context.registry, retry_at);
    }

    /// The connection closed (EOF or error): outstanding commands are errors,
    /// and the client reconnects to the same address.
    fn connection_closed(&mut self, context: &mut Context<'_>, now: Instant) {
        let answered = self.answered_on_link > 0;
        self.fail_all(context, ErrorKind::Closed);
        let retry_at = if answered {
            self.backoff_ms = 0;
            now
        } else {
            now + self.next_backoff()
        };
        self.drop_link(context.registry, retry_at);
        if answered && !context.source.is_exhausted(now) {
            self.connect(context, now);
        }
    }

    /// Handles readiness of this client's socket (spurious events are harmless).
    pub fn on_event(&mut self, context: &mut Context<'_>, now: Instant) {
        if let Link::Connecting { stream, .. } = &self.link {
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(error)) | Err(error) => {
                    context.last_connect_error =
                        Some(format!("cannot connect to {}: {error}", self.address));
                    return self.connect_failed(context, now);
                }
            }
            match stream.peer_addr() {
                Ok(_) => self.connected(context, now),
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(error) => {
                    context.last_connect_error =
                        Some(format!("cannot connect to {}: {error}", self.address));
                    return self.connect_failed(context, now);
                }
            }
        }
        if !self.is_up() {
            return;
        }
        if let Flow::Stop = self.read_replies(context, now) {
            return;
        }
        self.fill_and_flush(context, now);
    }

    fn connected(&mut self, context: &mut Context<'_>, now: Instant) {
        let Link::Connecting { stream, .. } =
            std::mem::replace(&mut self.link, Link::Down { retry_at: now })
        else {
            return;
        };
        // Latency matters more than packet count for a load generator.
        let _ = stream.set_nodelay(true);
        let stream = match context.tls {
            Some(tls) => match tls.wrap_nonblocking(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    context.last_connect_error =
                        Some(format!("cannot start TLS to {}: {error}", self.address));
                    return self.connect_failed(context, now);
                }
            },
            None => Stream::Plain(stream),
        };
        self.link = Link::Up { stream };
        self.connect_failures_in_a_row = 0;
        context.stats.connections_opened += 1;
        context.last_progress = now;
        for command in std::mem::take(&mut self.to_resend) {
            command.operation.encode(
                context.content,
                context.expiry_s,
                context.key_digits,
                &mut self.output,
            );
            self.in_flight.push_back(command);
        }
    }

    /// Connected with a free pipeline slot.
    pub fn can_take_work(&self, pipeline: usize) -> bool {
        self.is_up() && self.in_flight.len() + self.to_resend.len() < pipeline
    }

    /// Tops the pipeline up from the source and writes what it can.
    pub fn fill_and_flush(&mut self, context: &mut Context<'_>, now: Instant) {
        while self.in_flight.len() < context.pipeline
            && self.output.len() - self.output_position < OUTPUT_HIGH_WATER_BYTES
        {
            let Some((operation, intended_at)) = context.source.next(now, context.versions) else {
                break;
            };
            context.stats.record_sent(operation.kind);
            operation.encode(
                context.content,
                context.expiry_s,
                context.key_digits,
                &mut self.output,
            );
            self.in_flight.push_back(InFlight {
                operation,
                sent_at: now,
                intended_at,
                redirect_hops: 0,
            });
        }
        self.flush(context, now);
    }

    fn flush(&mut self, context: &mut Context<'_>, now: Instant) {
        let Link::Up { stream } = &mut self.link else {
            return;
        };
        // TLS: records rustls still holds go first (the handshake, or the
        // end of the last write).
        if stream.has_pending_output() {
            match stream.flush() {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.connection_closed(context, now),
            }
        }
        while self.output_position < self.output.len() {
            match stream.write(&self.output[self.output_position..]) {
                Ok(0) => return self.connection_closed(context, now),
                Ok(written) => self.output_position += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.connection_closed(context, now),
            }
        }
        if self.output_position == self.output.len() {
            self.output.clear();
            self.output_position = 0;
        } else if self.output_position > self.output.len() / 2 {
            self.output.drain(..self.output_position);
            self.output_position = 0;
        }
    }

    /// Reads until the socket would block, handling every complete reply.
    fn read_replies(&mut self, context: &mut Context<'_>, now: Instant) -> Flow {
        loop {
            let Link::Up { stream } = &mut self.link else {
                return Flow::Stop;
            };
            let scratch = &mut *context.scratch;
            scratch.clear();
            scratch.extend_from_slice(&self.partial_line);
            let held = scratch.len();
            scratch.resize(held + READ_CHUNK_BYTES, 0);
            let read = match stream.read(&mut scratch[held..]) {
                Ok(0) => {
                    self.connection_closed(context, now);
                    return Flow::Stop;
                }
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Flow::Continue,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.connection_closed(context, now);
                    return Flow::Stop;
                }
            };
            scratch.truncate(held + read);
            // The scratch buffer is the context's; move it out while replies use the context.
            let bytes = std::mem::take(context.scratch);
            let flow = self.handle_bytes(context, &bytes, now);
            *context.scratch = bytes;
            if let Flow::Stop = flow {
                return Flow::Stop;
            }
        }
    }

    fn handle_bytes(&mut self, context: &mut Context<'_>, bytes: &[u8], now: Instant) -> Flow {
        let mut offset = 0;
        loop {
            match self.parser.parse(&bytes[offset..]) {
                Ok((consumed, Some(reply))) => {
                    offset += consumed;
                    if let Flow::Stop = self.handle_reply(context, reply, now) {
                        return Flow::Stop;
                    }
                }
                Ok((consumed, None)) => {
                    offset += consumed;
                    self.partial_line.clear();
                    self.partial_line.extend_from_slice(&bytes[offset..]);
                    return Flow::Continue;
                }
                Err(_) => {
                    // The stream cannot be matched to commands any more.
                    if let Some(command) = self.in_flight.pop_front() {
                        context
                            .stats
                            .record_error(command.operation.kind, ErrorKind::Protocol);
                    }
                    self.fail_all(context, ErrorKind::Closed);
                    let retry_at = now + self.next_backoff();
                    self.drop_link(context.registry, retry_at);
                    return Flow::Stop;
                }
            }
        }
    }

    fn handle_reply(&mut self, context: &mut Context<'_>, reply: Reply, now: Instant) -> Flow {
        let Some(command) = self.in_flight.pop_front() else {
            // An answer to nothing: the stream is out of step with our commands.
            self.fail_all(context, ErrorKind::Closed);
            let retry_at = now + self.next_backoff();
            self.drop_link(context.registry, retry_at);
            return Flow::Stop;
        };
        self.answered_on_link += 1;
        context.last_progress = now;
        let operation = command.operation;
        let latency_us = u64::try_from(
            now.saturating_duration_since(command.intended_at)
                .as_micros(),
        )
        .unwrap_or(u64::MAX);
        let answer = match (&reply, operation.kind) {
            (Reply::Contents { version, .. }, Kind::Read)
            | (Reply::OkVersion(version), Kind::Write | Kind::Cas) => {
                context.versions.note(operation.key, *version);
                Ok(Answer::Success)
            }
            (Reply::Ok, Kind::Delete) => Ok(Answer::Success),
            (Reply::FileNotFound, Kind::Read | Kind::Cas | Kind::Delete) => Ok(Answer::NotFound),
            (Reply::VersionMismatch(version), Kind::Cas) => {
                context.versions.note(operation.key, *version);
                Ok(Answer::VersionMismatch)
            }
            (Reply::CommandError, _) => Err(ErrorKind::CommandError),
            (Reply::Internal, _) => Err(ErrorKind::Internal),
            (Reply::Redirect(target), _) => {
                return self.follow_redirect(context, command, target, now)
            }
            _ => Err(ErrorKind::Protocol),
        };
        match answer {
            Ok(answer) => context
                .stats
                .record_answer(operation.kind, answer, latency_us),
            Err(error) => context.stats.record_error(operation.kind, error),
        }
        Flow::Continue
    }

    fn follow_redirect(
        &mut self,
        context: &mut Context<'_>,
        command: InFlight,
        target: &str,
        now: Instant,
    ) -> Flow {
        let resolved = target.parse::<SocketAddr>().ok().or_else(|| {
            target
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next())
        });
        let Some(address) = resolved.filter(|_| command.redirect_hops < MAX_REDIRECT_HOPS) else {
            context
                .stats
                .record_error(command.operation.kind, ErrorKind::Redirect);
            return Flow::Continue;
        };
        // The redirected command and everything sent after it go, in order, to the new address.
        let mut moved = VecDeque::with_capacity(self.in_flight.len() + 1);
        moved.push_back(InFlight {
            redirect_hops: command.redirect_hops + 1,
            ..command
        });
        moved.extend(self.in_flight.drain(..));
        moved.append(&mut self.to_resend);
        self.to_resend = moved;
        self.drop_link(context.registry, now);
        self.backoff_ms = 0;
        self.address = address;
        self.via_redirect = true;
        context.stats.redirects_followed += 1;
        self.connect(context, now);
        Flow::Stop
    }
}
