//! One inbound peer connection: the receiving end of another node's link.
//!
//! Owns: the accepted socket, its read buffer, and the handshake decision's
//! mechanics. The first frame must be a hello of at most
//! `PEER_HANDSHAKE_BYTES_MAX` bytes; it is checked here (format version,
//! intended receiver, cluster id: a hello naming another cluster is refused,
//! one naming none is passed to the gate as not knowing it) and then by the
//! caller's `PeerGate` (membership, incarnation), in the same turn, so no
//! envelope of an undecided connection is ever delivered. A receiver that
//! does not know its cluster yet adopts the one an accepted hello names,
//! durably, before it answers (`Identity::adopt`). A newer hello from a node
//! that already has an accepted connection replaces it only if it names the
//! same incarnation, or the one the gate has recorded for that node: a
//! stranger claiming a member's id cannot cut a live link. A refusal is logged, answered with its
//! reason, and followed by a lingering close (write side shut, input read and
//! discarded until the dialer hangs up or the handshake deadline passes) so
//! the answer is not lost to a reset.
//!
//! Invariants: after Accept, every frame must decode as an `Envelope` whose
//! `from`, `incarnation` and `to` match the handshake and that the gate's
//! `check` passes (sender a member, terms, indexes, counts and sizes sane);
//! anything else (an oversized frame, bytes that do not decode, a mismatched
//! or malformed envelope) closes this connection with one log line, is never
//! delivered, and never panics. At most
//! `PEER_READ_BYTES_PER_TURN_MAX` bytes are read per call (fairness); the
//! connection is then marked `read_pending` so the owner resumes it.
//!
//! With TLS the hello's `from` must also be the node id the sender's
//! certificate names (`Stream::check_peer_identity`), else it is refused.
//!
//! Leaves out: the listener and token bookkeeping (`net::peer`).

use super::wire::{self, HelloReply, WireError};
use super::{read_into, Identity, PeerEvent, PeerGate, PeerStats, Refusal};
use crate::limits;
use crate::net::tls::Stream;
use crate::raft::NodeId;
use bytes::{Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

enum Phase {
    AwaitingHello {
        deadline: Instant,
    },
    Accepted {
        from: NodeId,
        incarnation: u64,
    },
    /// A status probe waiting for the owner's report (`answer_status`);
    /// `request` is the membership request it carries (empty: none).
    AwaitingStatus {
        deadline: Instant,
        request: Bytes,
    },
    /// Refused or answered a probe: the answer is being written, then the
    /// dialer's close awaited.
    Closing {
        deadline: Instant,
        write_shut: bool,
    },
}

/// What the connection needs from its owner for one call.
pub(super) struct InboundContext<'a> {
    pub my_id: NodeId,
    pub identity: &'a mut Identity,
    pub gate: &'a mut dyn PeerGate,
    /// (sender, incarnation) of every connection accepted so far.
    pub established: &'a [(NodeId, u64)],
    pub out: &'a mut Vec<PeerEvent>,
    pub stats: &'a mut PeerStats,
    pub read_scratch: &'a mut [u8],
}

/// The owner's next step for this connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Keep, and this call accepted a hello from that node.
    Accepted(NodeId),
    Close,
}

pub(super) struct Inbound {
    pub stream: Stream,
    address: SocketAddr,
    /// When it was accepted (the oldest undecided one is evicted first).
    pub accepted_at: Instant,
    phase: Phase,
    read_buffer: BytesMut,
    reply: Bytes,
    reply_written_bytes: usize,
    /// The last read stopped at the per-turn budget with data maybe left.
    pub read_pending: bool,
}

impl Inbound {
    pub fn new(stream: Stream, address: SocketAddr, now: Instant, deadline: Instant) -> Self {
        Inbound {
            stream,
            address,
            accepted_at: now,
            phase: Phase::AwaitingHello { deadline },
            read_buffer: BytesMut::new(),
            reply: Bytes::new(),
            reply_written_bytes: 0,
            read_pending: false,
        }
    }

    /// The accepted sender and its incarnation, if the handshake succeeded.
    pub fn accepted(&self) -> Option<(NodeId, u64)> {
        match self.phase {
            Phase::Accepted { from, incarnation } => Some((from, incarnation)),
            _ => None,
        }
    }

    /// The address it came from.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// True once an undecided or refused connection ran past its deadline.
    pub fn expired(&self, now: Instant) -> bool {
        match self.phase {
            Phase::AwaitingHello { deadline }
            | Phase::AwaitingStatus { deadline, .. }
            | Phase::Closing { deadline, .. } => now >= deadline,
            Phase::Accepted { .. } => false,
        }
    }

    /// Whether this is a plain status probe waiting for its report.
    pub fn awaits_status(&self) -> bool {
        matches!(&self.phase, Phase::AwaitingStatus { request, .. } if request.is_empty())
    }

    /// The membership request a waiting probe carries, if any.
    pub fn member_request(&self) -> Option<&Bytes> {
        match &self.phase {
            Phase::AwaitingStatus { request, .. } if !request.is_empty() => Some(request),
            _ => None,
        }
    }

    /// Answers a status probe (or the request it carries) with `frame` and
    /// closes after it is written.
    pub fn answer_status(&mut self, frame: Bytes) -> Verdict {
        let Phase::AwaitingStatus { deadline, .. } = self.phase else {
            return Verdict::Keep;
        };
        self.reply = frame;
        self.reply_written_bytes = 0;
        self.phase = Phase::Closing {
            deadline,
            write_shut: false,
        };
        if self.write_reply().is_err() {
            return Verdict::Close;
        }
        self.linger()
    }

    /// Handles readiness (or a resumed read): writes any pending answer,
    /// reads up to the turn's budget, and acts on every whole frame.
    pub fn on_ready(&mut self, context: &mut InboundContext<'_>) -> Verdict {
        if let Err(error) = self.write_reply() {
            log::debug!(
                "peer connection from {}: write failed: {error}",
                self.address
            );
            return Verdict::Close;
        }
        if let Phase::Closing { .. } = self.phase {
            return self.linger();
        }
        let outcome = match read_into(
            &mut self.stream,
            &mut self.read_buffer,
            limits::PEER_READ_BYTES_PER_TURN_MAX,
            context.read_scratch,
        ) {
            Ok(outcome) => outcome,
            Err(error) => {
                log::debug!(
                    "peer connection from {}: read failed: {error}",
                    self.address
                );
                return Verdict::Close;
            }
        };
        self.read_pending = outcome.budget_exhausted;
        context.stats.bytes_received += outcome.bytes as u64;
        let verdict = self.process_frames(context);
        if verdict == Verdict::Close {
            context.stats.connections_closed_for_errors += 1;
            return Verdict::Close;
        }
        if let Err(error) = self.write_reply() {
            log::debug!(
                "peer connection from {}: write failed: {error}",
                self.address
            );
            return Verdict::Close;
        }
        if let Phase::Closing { .. } = self.phase {
            return self.linger();
        }
        if outcome.closed {
            log::debug!("peer connection from {} closed by the sender", self.address);
            return Verdict::Close;
        }
        verdict
    }

    fn process_frames(&mut self, context: &mut InboundContext<'_>) -> Verdict {
        let mut verdict = Verdict::Keep;
        loop {
            let max_bytes = match self.phase {
                Phase::AwaitingHello { .. } => limits::PEER_HANDSHAKE_BYTES_MAX,
                Phase::Accepted { .. } => limits::PEER_FRAME_BYTES_MAX,
                Phase::AwaitingStatus { .. } | Phase::Closing { .. } => return verdict,
            };
            let payload = match wire::next_frame(&mut self.read_buffer, max_bytes) {
                Ok(Some(payload)) => payload,
                Ok(None) => return verdict,
                Err(error) => return self.protocol_error(&error.to_string()),
            };
            match self.phase {
                Phase::AwaitingHello { deadline } if wire::is_status_probe(&payload) => {
                    let start = wire::probe_request_offset().min(payload.len());
                    let request = Bytes::copy_from_slice(&payload[start..]);
                    self.phase = Phase::AwaitingStatus { deadline, request };
                    return verdict;
                }
                Phase::AwaitingHello { deadline } => {
                    match self.handshake(&payload, deadline, context) {
                        Verdict::Close => return Verdict::Close,
                        Verdict::Accepted(from) => verdict = Verdict::Accepted(from),
                        Verdict::Keep => {}
                    }
                }
                Phase::Accepted { from, incarnation } => {
                    let envelope = match wire::decode_envelope(&payload) {
                        Ok(envelope) => envelope,
                        Err(error) => {
                            return self.protocol_error(&format!("from node {from}: {error}"))
                        }
                    };
                    if envelope.from != from
                        || envelope.incarnation != incarnation
                        || envelope.to != context.my_id
                    {
                        return self.protocol_error(&format!(
                            "envelope from node {} (incarnation {:#x}) to node {} on the link of node {from} \
                             (incarnation {incarnation:#x})",
                            envelope.from, envelope.incarnation, envelope.to
                        ));
                    }
                    if let Err(reason) = context.gate.check(&envelope) {
                        return self.protocol_error(&format!("from node {from}: {reason}"));
                    }
                    if matches!(envelope.message, crate::raft::Message::PreVote { .. }) {
                        // A data dir removed since this link was accepted
                        // asks with PreVotes whether its removal committed
                        // (`raft::Node::ask_whether_removed`): asked again,
                        // the caller may refuse it now; closing the link
                        // makes it dial again and hear the refusal.
                        if let Err(refusal) = context.gate.accept(from, incarnation, true) {
                            log::info!("closing the link of node {from}: {}", refusal.reason);
                            return Verdict::Close;
                        }
                    }
                    context.stats.frames_received += 1;
                    context.out.push(PeerEvent::Message(envelope));
                }
                Phase::AwaitingStatus { .. } | Phase::Closing { .. } => return verdict,
            }
        }
    }

    /// Checks a hello and answers it. Returns `Close` only for bytes that are
    /// not a hello at all; a refused hello is answered, not just dropped.
    fn handshake(
        &mut self,
        payload: &[u8],
        deadline: Instant,
        context: &mut InboundContext<'_>,
    ) -> Verdict {
        let hello = match wire::decode_hello(payload) {
            Ok(hello) => hello,
            Err(WireError::FormatVersion(version)) => {
                self.refuse(
                    deadline,
                    context,
                    None,
                    Refusal::retry(format!(
                        "peer format version {version} is not {}",
                        wire::FORMAT_VERSION
                    )),
                );
                return Verdict::Keep;
            }
            Err(error) => return self.protocol_error(&format!("bad hello: {error}")),
        };
        let mine = context.identity.cluster_id();
        let decision = if hello.from == 0 || hello.incarnation == 0 {
            Err(Refusal::retry(
                "node id and incarnation must not be 0".into(),
            ))
        } else if hello.to != context.my_id {
            Err(Refusal::retry(format!(
                "this is node {}, not node {}",
                context.my_id, hello.to
            )))
        } else if hello.cluster_id != 0 && mine != 0 && hello.cluster_id != mine {
            Err(Refusal::retry(format!(
                "another cluster: the dialer's data dir belongs to cluster {:016x}, this node's \
                 to cluster {mine:016x}",
                hello.cluster_id
            )))
        } else if let Err(reason) = self.stream.check_peer_identity(hello.from) {
            Err(Refusal::retry(reason))
        } else {
            // Membership and incarnations are the gate's decision (the
            // configuration in force lives in the replica).
            context
                .gate
                .accept(hello.from, hello.incarnation, hello.cluster_id != 0)
                .and_then(|()| self.check_established(&hello, context))
                .and_then(|()| {
                    if mine == 0 && hello.cluster_id != 0 {
                        context
                            .identity
                            .adopt(hello.cluster_id, &format!("node {}", hello.from))
                            .map_err(Refusal::retry)
                    } else {
                        Ok(())
                    }
                })
        };
        match decision {
            Ok(()) => {
                self.phase = Phase::Accepted {
                    from: hello.from,
                    incarnation: hello.incarnation,
                };
                self.set_reply(&HelloReply::Accept {
                    cluster_id: context.identity.cluster_id(),
                });
                log::debug!(
                    "peer connection from node {} at {} accepted",
                    hello.from,
                    self.address
                );
                Verdict::Accepted(hello.from)
            }
            Err(refusal) => {
                self.refuse(deadline, context, Some(hello.from), refusal);
                Verdict::Keep
            }
        }
    }

    /// A newer connection from a node that already has an accepted one
    /// replaces it only with the same incarnation (its data dir redialed),
    /// or the one the gate recorded for it (the established one is then the
    /// impostor).
    fn check_established(
        &self,
        hello: &wire::Hello,
        context: &mut InboundContext<'_>,
    ) -> Result<(), Refusal> {
        let Some(&(_, established)) = context
            .established
            .iter()
            .find(|(from, _)| *from == hello.from)
        else {
            return Ok(());
        };
        if established == hello.incarnation
            || context.gate.recorded_incarnation(hello.from) == Some(hello.incarnation)
        {
            return Ok(());
        }
        Err(Refusal::retry(format!(
            "node {} is connected already from another data dir ({established:016x})",
            hello.from
        )))
    }

    fn refuse(
        &mut self,
        deadline: Instant,
        context: &mut InboundContext<'_>,
        from: Option<NodeId>,
        refusal: Refusal,
    ) {
        let Refusal { reason, fatal } = refusal;
        match from {
            Some(from) => log::warn!(
                "refused peer connection from {} claiming node {from}: {reason}",
                self.address
            ),
            None => log::warn!("refused peer connection from {}: {reason}", self.address),
        }
        context.stats.handshakes_refused += 1;
        self.set_reply(&HelloReply::Refuse { reason, fatal });
        self.phase = Phase::Closing {
            deadline,
            write_shut: false,
        };
        self.read_pending = false;
        self.read_buffer = BytesMut::new();
    }

    fn set_reply(&mut self, reply: &HelloReply) {
        match wire::encode_reply(reply) {
            Ok(frame) => {
                self.reply = frame;
                self.reply_written_bytes = 0;
            }
            // The reply types always encode; without an answer the dialer
            // simply sees the connection close and retries.
            Err(error) => log::error!("cannot encode a handshake answer: {error}"),
        }
    }

    fn write_reply(&mut self) -> io::Result<()> {
        while self.reply_written_bytes < self.reply.len() {
            match self.stream.write(&self.reply[self.reply_written_bytes..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.reply_written_bytes += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// After a refusal: once the answer is out, shut the write side and
    /// discard input until the dialer closes.
    fn linger(&mut self) -> Verdict {
        let Phase::Closing { write_shut, .. } = &mut self.phase else {
            return Verdict::Keep;
        };
        if self.reply_written_bytes < self.reply.len() {
            return Verdict::Keep;
        }
        if !*write_shut {
            *write_shut = true;
            if self.stream.shutdown(Shutdown::Write).is_err() {
                return Verdict::Close;
            }
        }
        let mut discard = [0u8; 4096];
        for _ in 0..64 {
            match self.stream.read(&mut discard) {
                Ok(0) => return Verdict::Close,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Verdict::Keep,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Close,
            }
        }
        // A dialer that keeps sending after a refusal is cut off at once.
        Verdict::Close
    }

    fn protocol_error(&self, reason: &str) -> Verdict {
        log::warn!("closing peer connection from {}: {reason}", self.address);
        Verdict::Close
    }
}
