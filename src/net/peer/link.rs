//! One outbound peer link: dial, handshake, send, and reconnect with backoff.
//!
//! Owns: the socket this node uses to send envelopes to one member, the
//! link's bounded send queue, and its reconnect schedule. A link is `Down`
//! (waiting for its retry time), `Connecting` (non-blocking connect in
//! flight), `Handshaking` (hello sent, waiting for Accept/Refuse) or `Up`.
//!
//! Invariants: nothing here blocks. An in-progress connect counts as done
//! only when the socket reports no pending error and has a peer address
//! (mio's rule: a writable event alone does not mean connected). Envelopes
//! are written only after the receiver accepted the hello, so a refused
//! receiver never has unread bytes when it closes. When a connection ends its
//! queue is cleared (a half-written frame cannot be resumed on another
//! connection; Raft retransmits), and envelopes sent while the link is `Down`
//! are dropped and counted rather than kept for a peer that may be gone for
//! long. Retries wait a jittered, doubling delay between
//! `PEER_RECONNECT_MIN_MS` and `PEER_RECONNECT_MAX_MS`; a refusal waits the
//! maximum (and is logged once while its reason stays the same). An
//! `Accept` naming a cluster id this node does not know yet is adopted
//! (durably, `Identity::adopt`) before the link counts as up. The receiver never sends after Accept, so any byte read on an
//! `Up` link is a protocol error and end of stream means the peer is gone.
//! An `Up` link whose socket takes no byte for the write stall timeout is
//! closed and redialed: a host that vanished without a reset is noticed
//! without waiting for TCP's own retransmission timeout.
//!
//! With TLS (`LinkContext::tls`) the connected socket is wrapped before the
//! hello is written; the TLS handshake runs under the same deadline and
//! verifies the receiver as `node-<id>.raftfs`.
//!
//! Leaves out: the listener and inbound connections (`inbound`), encoding.

use super::queue::SendQueue;
use super::wire::{self, Hello, HelloReply};
use super::{read_into, Identity, LinkState, PeerEvent};
use crate::limits;
use crate::net::tls::{PeerTls, Stream};
use crate::raft::NodeId;
use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

enum Phase {
    Down {
        retry_at: Instant,
    },
    Connecting {
        stream: TcpStream,
        deadline: Instant,
    },
    Handshaking {
        stream: Stream,
        deadline: Instant,
        hello: Bytes,
        hello_written_bytes: usize,
        reply: BytesMut,
    },
    /// `blocked_since`: when the last write stopped at `WouldBlock`.
    Up {
        stream: Stream,
        write_blocked: bool,
        blocked_since: Instant,
    },
}

/// What the link needs from its owner for one call.
pub(super) struct LinkContext<'a> {
    pub registry: &'a Registry,
    pub now: Instant,
    /// This node's hello; `to` is filled in per link.
    pub hello: &'a Hello,
    pub identity: &'a mut Identity,
    pub rng: &'a mut Pcg64Mcg,
    pub out: &'a mut Vec<PeerEvent>,
    /// Mutual TLS for the link (None: plain TCP).
    pub tls: Option<&'a PeerTls>,
}

/// How long to wait before the next attempt after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The next step of the doubling backoff.
    Backoff,
    /// The longest wait: the receiver refused us and will likely do so again.
    Slowest,
    /// At once (the hello changed: announce the cluster id).
    Now,
}

pub(super) struct Link {
    pub peer: NodeId,
    pub address: SocketAddr,
    token: Token,
    phase: Phase,
    pub queue: SendQueue,
    backoff_ms: u64,
    write_stall_timeout: Duration,
    pub connect_attempts: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Envelopes dropped because the link was down when they were sent.
    pub frames_dropped_down: u64,
    /// The last refusal's reason, logged once until it changes.
    last_refusal: Option<String>,
}

impl Link {
    pub fn new(
        peer: NodeId,
        address: SocketAddr,
        token: Token,
        queue_bytes_max: usize,
        write_stall_timeout: Duration,
        now: Instant,
    ) -> Self {
        Link {
            peer,
            address,
            token,
            phase: Phase::Down { retry_at: now },
            queue: SendQueue::new(queue_bytes_max),
            backoff_ms: limits::PEER_RECONNECT_MIN_MS,
            write_stall_timeout,
            connect_attempts: 0,
            frames_sent: 0,
            bytes_sent: 0,
            frames_dropped_down: 0,
            last_refusal: None,
        }
    }

    pub fn state(&self) -> LinkState {
        match self.phase {
            Phase::Down { .. } => LinkState::Down,
            Phase::Connecting { .. } | Phase::Handshaking { .. } => LinkState::Connecting,
            Phase::Up { .. } => LinkState::Connected,
        }
    }

    pub fn frames_dropped(&self) -> u64 {
        self.queue.dropped_frames() + self.frames_dropped_down
    }

    /// Queues one encoded frame (its segments, in order; the vector is left
    /// empty), or drops it while the link is down.
    pub fn push(&mut self, segments: &mut Vec<Bytes>) {
        if matches!(self.phase, Phase::Down { .. }) {
            segments.clear();
            self.frames_dropped_down += 1;
        } else {
            self.queue.push_segments(segments);
        }
    }

    /// Starts the connect when the retry time has come; closes a connect or
    /// handshake that ran past its deadline, or a connection whose socket
    /// took nothing for the write stall timeout.
    pub fn tick(&mut self, context: &mut LinkContext<'_>) {
        match &self.phase {
            Phase::Down { retry_at } if context.now >= *retry_at => self.connect(context),
            Phase::Connecting { deadline, .. } | Phase::Handshaking { deadline, .. }
                if context.now >= *deadline =>
            {
                self.close(context, "connect or handshake timed out", Retry::Backoff)
            }
            Phase::Up {
                write_blocked: true,
                blocked_since,
                ..
            } if context.now.duration_since(*blocked_since) >= self.write_stall_timeout => {
                let reason = format!(
                    "the peer took no byte for {} ms",
                    self.write_stall_timeout.as_millis()
                );
                self.close(context, &reason, Retry::Backoff)
            }
            _ => {}
        }
    }

    fn connect(&mut self, context: &mut LinkContext<'_>) {
        self.connect_attempts += 1;
        let deadline = context.now + Duration::from_millis(limits::PEER_HANDSHAKE_TIMEOUT_MS);
        match TcpStream::connect(self.address) {
            Ok(mut stream) => {
                match context.registry.register(
                    &mut stream,
                    self.token,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(()) => self.phase = Phase::Connecting { stream, deadline },
                    Err(error) => self.close(
                        context,
                        &format!("cannot register socket: {error}"),
                        Retry::Backoff,
                    ),
                }
            }
            Err(error) => self.close(context, &format!("connect failed: {error}"), Retry::Backoff),
        }
    }

    /// Handles readiness of the link's socket. Spurious calls are harmless:
    /// every step checks the socket's real state.
    pub fn on_ready(&mut self, context: &mut LinkContext<'_>) {
        if let Phase::Connecting { stream, .. } = &self.phase {
            match connect_outcome(stream) {
                Ok(false) => return,
                Ok(true) => {}
                Err(error) => {
                    return self.close(context, &format!("connect failed: {error}"), Retry::Backoff)
                }
            }
            let hello = match wire::encode_hello(&Hello {
                to: self.peer,
                ..context.hello.clone()
            }) {
                Ok(frame) => frame,
                Err(error) => {
                    return self.close(
                        context,
                        &format!("cannot encode hello: {error}"),
                        Retry::Backoff,
                    )
                }
            };
            let Phase::Connecting { stream, deadline } = std::mem::replace(
                &mut self.phase,
                Phase::Down {
                    retry_at: context.now,
                },
            ) else {
                unreachable!("phase matched above");
            };
            // Nagle would hold small votes and heartbeats back.
            let _ = stream.set_nodelay(true);
            let stream = match context.tls {
                Some(tls) => match tls.dial(stream, self.peer) {
                    Ok(stream) => stream,
                    Err(error) => {
                        return self.close(context, &error.to_string(), Retry::Backoff);
                    }
                },
                None => Stream::Plain(stream),
            };
            self.phase = Phase::Handshaking {
                stream,
                deadline,
                hello,
                hello_written_bytes: 0,
                reply: BytesMut::new(),
            };
        }
        if let Phase::Handshaking { .. } = self.phase {
            match self.handshake_step() {
                Ok(None) => return,
                Ok(Some(HelloReply::Accept { cluster_id })) => {
                    if cluster_id != 0 && cluster_id != context.identity.cluster_id() {
                        let source = format!("node {}", self.peer);
                        if let Err(reason) = context.identity.adopt(cluster_id, &source) {
                            return self.close(context, &reason, Retry::Slowest);
                        }
                    }
                    self.last_refusal = None;
                    let Phase::Handshaking { stream, .. } = std::mem::replace(
                        &mut self.phase,
                        Phase::Down {
                            retry_at: context.now,
                        },
                    ) else {
                        unreachable!("phase matched above");
                    };
                    self.phase = Phase::Up {
                        stream,
                        write_blocked: false,
                        blocked_since: context.now,
                    };
                    self.backoff_ms = limits::PEER_RECONNECT_MIN_MS;
                    log::debug!("peer link to node {} at {} is up", self.peer, self.address);
                    context.out.push(PeerEvent::LinkUp(self.peer));
                }
                Ok(Some(HelloReply::Refuse { reason, fatal })) => {
                    if self.last_refusal.as_deref() == Some(reason.as_str()) {
                        log::debug!(
                            "node {} at {} refused our link again: {reason}",
                            self.peer,
                            self.address
                        );
                    } else {
                        log::warn!(
                            "node {} at {} refused our link: {reason}",
                            self.peer,
                            self.address
                        );
                        self.last_refusal = Some(reason.clone());
                    }
                    context.out.push(PeerEvent::Refused {
                        by: self.peer,
                        reason,
                        fatal,
                    });
                    return self.close(context, "refused", Retry::Slowest);
                }
                Err(error) => {
                    return self.close(
                        context,
                        &format!("handshake failed: {error}"),
                        Retry::Backoff,
                    )
                }
            }
        }
        if let Phase::Up {
            stream,
            write_blocked,
            ..
        } = &mut self.phase
        {
            *write_blocked = false;
            if let Err(error) = check_silent(stream) {
                return self.close(context, &error.to_string(), Retry::Backoff);
            }
            self.flush(context);
        }
    }

    /// Writes the rest of the hello and reads the answer, if it is complete.
    fn handshake_step(&mut self) -> io::Result<Option<HelloReply>> {
        let Phase::Handshaking {
            stream,
            hello,
            hello_written_bytes,
            reply,
            ..
        } = &mut self.phase
        else {
            return Ok(None);
        };
        while *hello_written_bytes < hello.len() {
            match stream.write(&hello[*hello_written_bytes..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => *hello_written_bytes += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let budget_bytes =
            wire::FRAME_HEADER_BYTES + limits::PEER_HANDSHAKE_BYTES_MAX + 1 - reply.len();
        let outcome = read_into(stream, reply, budget_bytes, &mut [0u8; 1024])?;
        let frame =
            wire::next_frame(reply, limits::PEER_HANDSHAKE_BYTES_MAX).map_err(invalid_data)?;
        match frame {
            Some(payload) => {
                if !reply.is_empty() {
                    return Err(invalid_data("bytes after the handshake answer"));
                }
                wire::decode_reply(&payload).map(Some).map_err(invalid_data)
            }
            None if outcome.closed => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during handshake",
            )),
            None => Ok(None),
        }
    }

    /// Writes queued frames while the socket takes them.
    pub fn flush(&mut self, context: &mut LinkContext<'_>) {
        let Phase::Up {
            stream,
            write_blocked,
            blocked_since,
        } = &mut self.phase
        else {
            return;
        };
        if *write_blocked || self.queue.is_empty() {
            return;
        }
        match self.queue.write_to(stream) {
            Ok(progress) => {
                *write_blocked = progress.blocked;
                if progress.blocked {
                    *blocked_since = context.now;
                }
                self.frames_sent += progress.frames as u64;
                self.bytes_sent += progress.bytes as u64;
            }
            Err(error) => self.close(context, &format!("write failed: {error}"), Retry::Backoff),
        }
    }

    /// Ends the link for good (its member left the configuration):
    /// deregisters any socket; queued frames are dropped with it.
    pub fn shut(&mut self, registry: &Registry) {
        let now = Instant::now();
        match std::mem::replace(&mut self.phase, Phase::Down { retry_at: now }) {
            Phase::Connecting { mut stream, .. } => {
                let _ = registry.deregister(&mut stream);
            }
            Phase::Handshaking { mut stream, .. } | Phase::Up { mut stream, .. } => {
                let _ = registry.deregister(&mut stream);
            }
            Phase::Down { .. } => {}
        }
        self.queue.clear();
    }

    /// Ends the current connection (if any) and dials again at once, so the
    /// new handshake carries the hello as it is now.
    pub fn redial(&mut self, context: &mut LinkContext<'_>) {
        self.backoff_ms = limits::PEER_RECONNECT_MIN_MS;
        self.close(context, "the cluster id became known", Retry::Now);
    }

    /// Ends the current connection (if any) and schedules the next attempt.
    fn close(&mut self, context: &mut LinkContext<'_>, reason: &str, retry: Retry) {
        if retry == Retry::Slowest {
            self.backoff_ms = limits::PEER_RECONNECT_MAX_MS;
        }
        // Equal jitter: half the backoff fixed, half random, so nodes that
        // lost a peer together do not all redial in the same instant.
        let delay_ms = if retry == Retry::Now {
            0
        } else {
            let delay_ms = context
                .rng
                .gen_range(self.backoff_ms / 2..=self.backoff_ms)
                .max(limits::PEER_RECONNECT_MIN_MS);
            self.backoff_ms = (self.backoff_ms * 2).min(limits::PEER_RECONNECT_MAX_MS);
            delay_ms
        };
        let retry_at = context.now + Duration::from_millis(delay_ms);
        let was_up = matches!(self.phase, Phase::Up { .. });
        match std::mem::replace(&mut self.phase, Phase::Down { retry_at }) {
            Phase::Connecting { mut stream, .. } => {
                let _ = context.registry.deregister(&mut stream);
            }
            Phase::Handshaking { mut stream, .. } | Phase::Up { mut stream, .. } => {
                let _ = context.registry.deregister(&mut stream);
            }
            Phase::Down { .. } => {}
        }
        let dropped_frames = self.queue.clear();
        if was_up {
            log::debug!(
                "peer link to node {} at {} is down ({reason}); {dropped_frames} queued frames dropped, retry in {delay_ms} ms",
                self.peer,
                self.address
            );
            context.out.push(PeerEvent::LinkDown(self.peer));
        } else {
            log::debug!(
                "peer link to node {} at {}: {reason}; retry in {delay_ms} ms",
                self.peer,
                self.address
            );
        }
    }
}

/// `Ok(true)` once a non-blocking connect has completed, `Ok(false)` while it
/// is still in progress.
fn connect_outcome(stream: &TcpStream) -> io::Result<bool> {
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(error) => Err(error),
    }
}

/// The receiver sends nothing after Accept: end of stream means it is gone,
/// and any byte is a protocol error.
fn check_silent(stream: &mut Stream) -> io::Result<()> {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed by the peer",
                ))
            }
            Ok(_) => return Err(invalid_data("unexpected bytes from the receiver")),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

fn invalid_data(error: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}
