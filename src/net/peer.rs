//! Peer links between raftfs nodes, driven from the node's mio reactor.
//!
//! Owns: the peer listener, one outbound link per other member (used only to
//! send envelopes to it) and the inbound connections other members opened
//! (used only to receive), plus the handshake that guards them. Wire format:
//! `wire`; send queues: `queue`; dialing and reconnecting: `link`; receiving:
//! `inbound`.
//!
//! Topology and handshake: every node dials every other member once. The
//! dialer's hello names the format version, its cluster id (0 while its
//! data dir has not met its cluster), its id and incarnation, and the member
//! it means to reach. The receiver refuses a mismatch (logged, answered with
//! the reason); otherwise the caller's `PeerGate` decides, in the same turn,
//! so no envelope from an undecided connection is ever delivered. A refusal
//! reaches the dialer's caller as `PeerEvent::Refused`; only a `fatal` one
//! (SPEC §3's removed or replaced data dir) may stop it, so a stranger
//! refusing or another cluster's node cannot stop a member. Every received
//! envelope must match its connection's handshake (`from`, `incarnation`,
//! `to`) and pass `PeerGate::check` before it is delivered.
//!
//! The cluster id (`Identity`): random, made once by the cluster's first
//! leader (`ensure_cluster_id`, called by the reactor when its replica leads
//! and none is known) and stored in the data dir before it is announced. A
//! node whose data dir has none adopts, durably, the one named by the first
//! accepted hello or Accept it gets, before it accepts anything on that
//! connection. Whenever the id becomes known every outbound link is redialed
//! so its handshake carries it. Why the first leader and not each member at
//! first start: five members starting at once would make five ids and need
//! an agreement of their own; the first leader is elected unanimously by
//! the members (an empty log wins only so, `raft::membership`), every entry
//! any node holds came over a link that named the id first, and a node with
//! entries therefore always knows it, so no second leader can make another.
//!
//! Inbound slots (`PEER_INBOUND_CONNECTIONS_MAX`): a connection that has not
//! completed a handshake holds one for at most `PEER_HANDSHAKE_TIMEOUT_MS`,
//! and when all are taken a new connection evicts the oldest such one, so
//! strangers holding connections cannot lock a member out.
//!
//! Tokens: `token_base..token_base + PEER_TOKENS` belong to this component
//! (listener, links, inbound connections); the reactor routes events in that
//! range to `handle_event`. Readiness is only a hint: every handler checks
//! the socket's real state, so spurious and stale events are harmless.
//!
//! A reactor turn: `handle_event` for each peer event, `resume_reads` (when
//! `has_pending_reads`, poll with a zero timeout), then `send` for each
//! outgoing envelope, then one `flush`; `tick` on every timer tick.
//!
//! Invariants: nothing blocks; no input panics; every buffer is bounded — a
//! send queue by `PeerConfig::queue_bytes_max` (oldest unstarted frames are
//! dropped first, counted), a read buffer by the largest frame plus one
//! turn's read budget, inbound connections by `PEER_INBOUND_CONNECTIONS_MAX`.
//! A dead or slow peer therefore never stalls the loop or grows memory.
//!
//! Membership change: `set_members` follows the configuration in force
//! (new members are dialed, departed ones' links shut); a link keeps its
//! token slot for its whole life, so tokens never move under mio. Which
//! senders to accept is the caller's decision (`PeerGate`).
//!
//! TLS: with `PeerConfig::tls` every link is mutual TLS (`net::tls`): the
//! dialer verifies the receiver as `node-<id>.raftfs`, the receiver accepts
//! only certificates of the cluster CA and refuses a hello whose `from` is
//! not the id its certificate names. Without it, links are plain TCP, and
//! nothing is authenticated beyond the handshake checks: anyone who can read
//! a data dir or the network learns the cluster id, and a node that does not
//! know its cluster yet (before the first election, or added but not yet
//! contacted) trusts the first member that names one.

mod inbound;
mod link;
mod queue;
pub mod wire;

use crate::limits;
use crate::net::tls::{PeerTls, Stream};
use crate::raft::{Envelope, NodeId};
use bytes::{Bytes, BytesMut};
use inbound::{Inbound, InboundContext, Verdict};
use link::{Link, LinkContext};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use slab::Slab;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens reserved from `token_base`: the listener, the links, the inbound
/// connections.
pub const PEER_TOKENS: usize = 1 + limits::PEER_LINKS_MAX + limits::PEER_INBOUND_CONNECTIONS_MAX;

/// Connections accepted in one call before the loop moves on.
const ACCEPTS_PER_CALL_MAX: usize = 64;
/// Bytes one `read` call on an inbound connection asks for.
const READ_CHUNK_BYTES: usize = 64 << 10;

#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub my_id: NodeId,
    /// This node's data-dir incarnation (SPEC §3).
    pub my_incarnation: u64,
    /// The cluster id stored in the data dir (0: none yet; see the module
    /// doc).
    pub cluster_id: u64,
    /// The data dir a cluster id made or adopted is stored in (`None`: kept
    /// in memory only, for tests of the links alone).
    pub cluster_id_dir: Option<PathBuf>,
    /// Where the peer listener binds (used by `Peers::new`).
    pub listen: SocketAddr,
    /// The other members' peer addresses, excluding this node.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Bound on each link's send queue; at most `PEER_QUEUE_BYTES_MAX`.
    pub queue_bytes_max: usize,
    /// See `PEER_WRITE_STALL_TIMEOUT_MS` (the default); at least one tick.
    pub write_stall_timeout_ms: u64,
    /// Mutual TLS on every link (None: plain TCP).
    pub tls: Option<Arc<PeerTls>>,
}

impl PeerConfig {
    pub fn new(
        my_id: NodeId,
        my_incarnation: u64,
        cluster_id: u64,
        listen: SocketAddr,
        members: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        PeerConfig {
            my_id,
            my_incarnation,
            cluster_id,
            cluster_id_dir: None,
            listen,
            members,
            queue_bytes_max: limits::PEER_QUEUE_BYTES_MAX,
            write_stall_timeout_ms: limits::PEER_WRITE_STALL_TIMEOUT_MS,
            tls: None,
        }
    }
}

/// What the peer links tell the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// An envelope from an accepted connection, checked against its handshake.
    Message(Envelope),
    /// Member `by` refused our link. `fatal`: SPEC §3's removed or
    /// replaced data dir (the node should stop); otherwise the link retries.
    Refused {
        by: NodeId,
        reason: String,
        fatal: bool,
    },
    /// Our link to this member completed its handshake.
    LinkUp(NodeId),
    /// Our link to this member, which was up, is gone (it will be redialed).
    LinkDown(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    /// Connecting or handshaking.
    Connecting,
    /// Waiting for the next reconnect attempt.
    Down,
}

/// One outbound link, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub peer: NodeId,
    pub address: SocketAddr,
    pub state: LinkState,
    pub queued_bytes: usize,
    pub queued_frames: usize,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Frames dropped: queue overflow, queue cleared on disconnect, or sent
    /// while the link was down.
    pub frames_dropped: u64,
    pub connect_attempts: u64,
}

/// Why a hello is refused, and whether the dialer must stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// SPEC §3: this data dir was removed, or its id is bound to another one.
    pub fatal: bool,
}

impl Refusal {
    /// A refusal the dialer survives (it retries, slowly).
    pub fn retry(reason: String) -> Refusal {
        Refusal {
            reason,
            fatal: false,
        }
    }
}

/// The node's side of every peer decision the links cannot make alone.
pub trait PeerGate {
    /// Decides a hello that passed the receiver and cluster checks.
    /// `knows_cluster`: the hello named this node's cluster id (false: it
    /// named none, as a data dir that has not met its cluster does).
    fn accept(
        &mut self,
        from: NodeId,
        incarnation: u64,
        knows_cluster: bool,
    ) -> Result<(), Refusal>;
    /// The incarnation durably recorded for `from`, if any.
    fn recorded_incarnation(&self, _from: NodeId) -> Option<u64> {
        None
    }
    /// Checks an envelope from an accepted connection before it is
    /// delivered; `Err` closes the connection.
    fn check(&mut self, _envelope: &Envelope) -> Result<(), String> {
        Ok(())
    }
}

/// A plain closure decides the incarnation alone (tests of the links):
/// every refusal is fatal, every envelope passes.
impl<F: FnMut(NodeId, u64) -> Result<(), String> + ?Sized> PeerGate for F {
    fn accept(&mut self, from: NodeId, incarnation: u64, _: bool) -> Result<(), Refusal> {
        self(from, incarnation).map_err(|reason| Refusal {
            reason,
            fatal: true,
        })
    }
}

/// This node's cluster id and where it is stored.
#[derive(Debug)]
pub(crate) struct Identity {
    cluster_id: u64,
    dir: Option<PathBuf>,
    /// Set when the id became known in the current call (links redial).
    changed: bool,
}

impl Identity {
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Takes `cluster_id` (nonzero) as this node's, stored durably first.
    /// `source` names who told it, for the log line.
    pub fn adopt(&mut self, cluster_id: u64, source: &str) -> Result<(), String> {
        if cluster_id == 0 || self.cluster_id == cluster_id {
            return Ok(());
        }
        if self.cluster_id != 0 {
            return Err(format!(
                "cluster {cluster_id:016x} is not this node's ({:016x})",
                self.cluster_id
            ));
        }
        if let Some(dir) = &self.dir {
            crate::storage::store_cluster_id(dir, cluster_id).map_err(|error| {
                log::error!("cannot store cluster id {cluster_id:016x}: {error}");
                format!("cannot store the cluster id: {error}")
            })?;
        }
        log::debug!("this node joins cluster {cluster_id:016x} (learned from {source})");
        self.cluster_id = cluster_id;
        self.changed = true;
        Ok(())
    }
}

/// Counters over all peer connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub frames_received: u64,
    pub bytes_received: u64,
    pub connections_accepted: u64,
    /// Inbound connections closed for oversized or undecodable frames or
    /// envelopes that did not match their handshake.
    pub connections_closed_for_errors: u64,
    /// Hellos this node refused.
    pub handshakes_refused: u64,
    /// Connections closed before their handshake to free a slot.
    pub connections_evicted: u64,
    /// Envelopes not sent: unknown receiver or not encodable within the
    /// frame limit.
    pub envelopes_unsendable: u64,
}

pub struct Peers {
    my_id: NodeId,
    identity: Identity,
    queue_bytes_max: usize,
    write_stall_timeout: Duration,
    token_base: usize,
    members: BTreeMap<NodeId, SocketAddr>,
    hello: wire::Hello,
    listener: TcpListener,
    /// The listener stopped at the per-call accept budget.
    listener_pending: bool,
    /// `PEER_LINKS_MAX` slots; the link in slot `i` has token
    /// `token_base + 1 + i` (see `set_members`).
    links: Vec<Option<Link>>,
    /// Key `k` has token `token_base + 1 + PEER_LINKS_MAX + k`.
    inbound: Slab<Inbound>,
    /// Frames are encoded here and split off, sharing its allocation.
    encode_buffer: BytesMut,
    /// The segments of the frame being queued (empty between calls).
    frame_segments: Vec<Bytes>,
    /// Where inbound reads land before they are appended to a read buffer.
    read_scratch: Box<[u8]>,
    rng: Pcg64Mcg,
    stats: PeerStats,
    tls: Option<Arc<PeerTls>>,
}

impl Peers {
    /// Binds the peer listener on `config.listen` (a port in use is an error)
    /// and starts dialing every member.
    pub fn new(registry: &Registry, token_base: usize, config: PeerConfig) -> io::Result<Peers> {
        let listener = TcpListener::bind(config.listen)?;
        Self::start(registry, token_base, config, listener)
    }

    /// As `new`, with a listener the caller bound already (`config.listen`
    /// is then ignored), e.g. so every socket is bound before anything starts.
    pub fn with_listener(
        registry: &Registry,
        token_base: usize,
        config: PeerConfig,
        listener: std::net::TcpListener,
    ) -> io::Result<Peers> {
        listener.set_nonblocking(true)?;
        Self::start(
            registry,
            token_base,
            config,
            TcpListener::from_std(listener),
        )
    }

    fn start(
        registry: &Registry,
        token_base: usize,
        config: PeerConfig,
        mut listener: TcpListener,
    ) -> io::Result<Peers> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        if config.members.len() > limits::PEER_LINKS_MAX {
            return Err(invalid(format!(
                "{} peers exceed the limit of {}",
                config.members.len(),
                limits::PEER_LINKS_MAX
            )));
        }
        if config.members.contains_key(&config.my_id) {
            return Err(invalid(format!(
                "the peer list includes this node ({})",
                config.my_id
            )));
        }
        if config.queue_bytes_max == 0 || config.queue_bytes_max > limits::PEER_QUEUE_BYTES_MAX {
            return Err(invalid(format!(
                "peer queue bound {} is outside 1..={}",
                config.queue_bytes_max,
                limits::PEER_QUEUE_BYTES_MAX
            )));
        }
        if config.write_stall_timeout_ms < limits::TICK_MS {
            return Err(invalid(format!(
                "peer write stall timeout of {} ms is under one tick",
                config.write_stall_timeout_ms
            )));
        }
        if token_base.checked_add(PEER_TOKENS).is_none() {
            return Err(invalid("peer token range overflows".into()));
        }
        registry.register(&mut listener, Token(token_base), Interest::READABLE)?;
        let now = Instant::now();
        let mut links: Vec<Option<Link>> = (0..limits::PEER_LINKS_MAX).map(|_| None).collect();
        for (slot, (peer, address)) in config.members.iter().enumerate() {
            links[slot] = Some(Link::new(
                *peer,
                *address,
                Token(token_base + 1 + slot),
                config.queue_bytes_max,
                Duration::from_millis(config.write_stall_timeout_ms),
                now,
            ));
        }
        let clock_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let mut peers = Peers {
            my_id: config.my_id,
            identity: Identity {
                cluster_id: config.cluster_id,
                dir: config.cluster_id_dir,
                changed: false,
            },
            queue_bytes_max: config.queue_bytes_max,
            write_stall_timeout: Duration::from_millis(config.write_stall_timeout_ms),
            token_base,
            hello: wire::Hello {
                cluster_id: config.cluster_id,
                from: config.my_id,
                incarnation: config.my_incarnation,
                to: 0,
            },
            members: config.members,
            listener,
            listener_pending: false,
            links,
            inbound: Slab::with_capacity(limits::PEER_INBOUND_CONNECTIONS_MAX),
            encode_buffer: BytesMut::new(),
            frame_segments: Vec::new(),
            read_scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            tls: config.tls.clone(),
            rng: Pcg64Mcg::seed_from_u64(
                config.my_id ^ config.my_incarnation.rotate_left(32) ^ clock_seed,
            ),
            stats: PeerStats::default(),
        };
        // Dial everyone now; nothing can be reported yet, as no link is up.
        let mut out = Vec::new();
        peers.tick(registry, now, &mut out);
        Ok(peers)
    }

    /// The listener's address (useful when it was bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether `token` is in this component's range.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < PEER_TOKENS
    }

    /// Handles one readiness event for a token in this component's range.
    /// `gate` decides inbound handshakes that passed the receiver and
    /// cluster checks and checks every envelope before it is delivered.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        now: Instant,
        gate: &mut dyn PeerGate,
        out: &mut Vec<PeerEvent>,
    ) {
        let Some(offset) = event.token().0.checked_sub(self.token_base) else {
            return;
        };
        if offset == 0 {
            self.accept_connections(registry, now);
        } else if offset <= limits::PEER_LINKS_MAX {
            if let Some(Some(link)) = self.links.get_mut(offset - 1) {
                link.on_ready(&mut LinkContext {
                    registry,
                    now,
                    hello: &self.hello,
                    identity: &mut self.identity,
                    rng: &mut self.rng,
                    out,
                    tls: self.tls.as_deref(),
                });
            }
            self.after_identity_change(registry, now, Some(offset - 1), out);
        } else if offset < PEER_TOKENS {
            self.inbound_ready(registry, offset - 1 - limits::PEER_LINKS_MAX, gate, out);
            self.after_identity_change(registry, now, None, out);
        }
    }

    /// This node's cluster id (0: not known yet).
    pub fn cluster_id(&self) -> u64 {
        self.identity.cluster_id
    }

    /// Makes this node's cluster id if it has none (the first leader of a
    /// cluster calls this before it sends anything as leader): random,
    /// nonzero, stored durably, then every link redials to announce it.
    pub fn ensure_cluster_id(&mut self, registry: &Registry) -> Result<(), String> {
        if self.identity.cluster_id != 0 {
            return Ok(());
        }
        let cluster_id = loop {
            use rand::RngCore;
            let candidate = rand::rngs::OsRng.next_u64();
            if candidate != 0 {
                break candidate;
            }
        };
        self.identity.adopt(cluster_id, "itself")?;
        log::info!(
            "node {} forms cluster {cluster_id:016x} (its first leader)",
            self.my_id
        );
        let mut out = Vec::new();
        self.after_identity_change(registry, Instant::now(), None, &mut out);
        Ok(())
    }

    /// Once the cluster id became known: every outbound link but `except`
    /// (the one that just told us) redials so its handshake names it.
    fn after_identity_change(
        &mut self,
        registry: &Registry,
        now: Instant,
        except: Option<usize>,
        out: &mut Vec<PeerEvent>,
    ) {
        if !std::mem::take(&mut self.identity.changed) {
            return;
        }
        self.hello.cluster_id = self.identity.cluster_id;
        for (slot, link) in self.links.iter_mut().enumerate() {
            let Some(link) = link else { continue };
            if Some(slot) == except {
                continue;
            }
            link.redial(&mut LinkContext {
                registry,
                now,
                hello: &self.hello,
                identity: &mut self.identity,
                rng: &mut self.rng,
                tls: self.tls.as_deref(),
                out,
            });
        }
    }

    /// True when some connection (or the listener) stopped at its per-call
    /// budget with work left: the reactor should poll with a zero timeout and
    /// call `resume_reads`.
    pub fn has_pending_reads(&self) -> bool {
        self.listener_pending
            || self
                .inbound
                .iter()
                .any(|(_, connection)| connection.read_pending)
    }

    /// Continues the reads `has_pending_reads` reported, one budget each.
    pub fn resume_reads(
        &mut self,
        registry: &Registry,
        now: Instant,
        gate: &mut dyn PeerGate,
        out: &mut Vec<PeerEvent>,
    ) {
        if self.listener_pending {
            self.accept_connections(registry, now);
        }
        let pending: Vec<usize> = self
            .inbound
            .iter()
            .filter(|(_, connection)| connection.read_pending)
            .map(|(key, _)| key)
            .collect();
        for key in pending {
            self.inbound_ready(registry, key, gate, out);
        }
        self.after_identity_change(registry, now, None, out);
    }

    /// Queues `envelope` for `envelope.to`, encoded once into that link's
    /// bounded queue; it is written by the next `flush`. The data of an
    /// AppendEntries' entries is not copied: the frames for every follower
    /// share it with the log (`wire::encode_envelope`). Dropped (and
    /// counted) when the link is down or the receiver unknown.
    pub fn send(&mut self, envelope: &Envelope) {
        let Some(link) = self
            .links
            .iter_mut()
            .flatten()
            .find(|link| link.peer == envelope.to)
        else {
            log::debug!("no peer link to node {}; envelope dropped", envelope.to);
            self.stats.envelopes_unsendable += 1;
            return;
        };
        if link.state() == LinkState::Down {
            link.frames_dropped_down += 1;
            return;
        }
        match wire::encode_envelope(
            envelope,
            &mut self.encode_buffer,
            limits::PEER_FRAME_BYTES_MAX,
            &mut self.frame_segments,
        ) {
            Ok(_) => link.push(&mut self.frame_segments),
            Err(error) => {
                self.frame_segments.clear();
                log::error!("envelope to node {} not sent: {error}", envelope.to);
                self.stats.envelopes_unsendable += 1;
            }
        }
    }

    /// Writes queued frames on every connected link (vectored writes, until
    /// the queue is empty or the socket is full). Call once per turn.
    pub fn flush(&mut self, registry: &Registry, now: Instant, out: &mut Vec<PeerEvent>) {
        for link in self.links.iter_mut().flatten() {
            link.flush(&mut LinkContext {
                registry,
                now,
                hello: &self.hello,
                identity: &mut self.identity,
                rng: &mut self.rng,
                out,
                tls: self.tls.as_deref(),
            });
        }
        self.after_identity_change(registry, now, None, out);
    }

    /// Reconnects links whose backoff expired and closes connections whose
    /// handshake ran past `PEER_HANDSHAKE_TIMEOUT_MS`. Call every tick.
    pub fn tick(&mut self, registry: &Registry, now: Instant, out: &mut Vec<PeerEvent>) {
        for link in self.links.iter_mut().flatten() {
            link.tick(&mut LinkContext {
                registry,
                now,
                hello: &self.hello,
                identity: &mut self.identity,
                rng: &mut self.rng,
                out,
                tls: self.tls.as_deref(),
            });
        }
        let expired: Vec<usize> = self
            .inbound
            .iter()
            .filter(|(_, connection)| connection.expired(now))
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            log::debug!(
                "peer connection closed: no handshake within {} ms",
                limits::PEER_HANDSHAKE_TIMEOUT_MS
            );
            self.close_inbound(registry, key);
        }
    }

    /// Follows the configuration in force: `members` (this node excluded)
    /// is everyone to send to. A member without a link gets one in a free
    /// slot and is dialed at the next `tick`; a link whose member left, or
    /// whose address changed, is shut (and the member redialed at its new
    /// address). More members than `PEER_LINKS_MAX` are not dialed (logged;
    /// the configuration's own limit keeps this from happening).
    pub fn set_members(&mut self, registry: &Registry, members: BTreeMap<NodeId, SocketAddr>) {
        let now = Instant::now();
        for slot in &mut self.links {
            let keep = slot
                .as_ref()
                .is_some_and(|link| members.get(&link.peer) == Some(&link.address));
            if !keep {
                if let Some(mut link) = slot.take() {
                    log::info!(
                        "peer link to node {} at {} closed: not a member any more",
                        link.peer,
                        link.address
                    );
                    link.shut(registry);
                }
            }
        }
        for (peer, address) in &members {
            if *peer == self.my_id || self.links.iter().flatten().any(|l| l.peer == *peer) {
                continue;
            }
            let Some(slot) = self.links.iter().position(Option::is_none) else {
                log::error!("no peer link slot left for node {peer} at {address}");
                continue;
            };
            log::info!("peer link to node {peer} at {address} opened: a new member");
            self.links[slot] = Some(Link::new(
                *peer,
                *address,
                Token(self.token_base + 1 + slot),
                self.queue_bytes_max,
                self.write_stall_timeout,
                now,
            ));
        }
        self.members = members;
    }

    pub fn link_states(&self) -> Vec<LinkStatus> {
        let mut links: Vec<&Link> = self.links.iter().flatten().collect();
        links.sort_by_key(|link| link.peer);
        links
            .into_iter()
            .map(|link| LinkStatus {
                peer: link.peer,
                address: link.address,
                state: link.state(),
                queued_bytes: link.queue.queued_bytes(),
                queued_frames: link.queue.queued_frames(),
                frames_sent: link.frames_sent,
                bytes_sent: link.bytes_sent,
                frames_dropped: link.frames_dropped(),
                connect_attempts: link.connect_attempts,
            })
            .collect()
    }

    pub fn stats(&self) -> PeerStats {
        self.stats.clone()
    }

    /// Whether a status probe waits for `answer_status_probes`.
    pub fn status_probes_waiting(&self) -> bool {
        self.inbound
            .iter()
            .any(|(_, connection)| connection.awaits_status())
    }

    /// Answers every waiting status probe with `report` (one frame) and
    /// closes each once the answer is written.
    pub fn answer_status_probes(&mut self, registry: &Registry, report: &[u8]) {
        let frame = match wire::encode_raw_frame(report) {
            Ok(frame) => frame,
            Err(error) => {
                log::error!("status report not sent: {error}");
                return;
            }
        };
        let waiting: Vec<usize> = self
            .inbound
            .iter()
            .filter(|(_, connection)| connection.awaits_status())
            .map(|(key, _)| key)
            .collect();
        for key in waiting {
            let verdict = match self.inbound.get_mut(key) {
                Some(connection) => connection.answer_status(frame.clone()),
                None => continue,
            };
            if verdict == Verdict::Close {
                self.close_inbound(registry, key);
            }
        }
    }

    /// The membership requests waiting probes carry: (connection key, the
    /// request's bytes). Each is answered with `answer_member_request`.
    pub fn member_requests(&self) -> Vec<(usize, Bytes)> {
        self.inbound
            .iter()
            .filter_map(|(key, connection)| connection.member_request().map(|r| (key, r.clone())))
            .collect()
    }

    /// Answers the membership request of connection `key` with `answer`
    /// (one frame) and closes it once written.
    pub fn answer_member_request(&mut self, registry: &Registry, key: usize, answer: &[u8]) {
        let frame = match wire::encode_raw_frame(answer) {
            Ok(frame) => frame,
            Err(error) => {
                log::error!("membership answer not sent: {error}");
                self.close_inbound(registry, key);
                return;
            }
        };
        let verdict = match self.inbound.get_mut(key) {
            Some(connection) if connection.member_request().is_some() => {
                connection.answer_status(frame)
            }
            _ => return,
        };
        if verdict == Verdict::Close {
            self.close_inbound(registry, key);
        }
    }

    /// Inbound connections currently open (accepted or in handshake).
    pub fn inbound_connections(&self) -> usize {
        self.inbound.len()
    }

    fn accept_connections(&mut self, registry: &Registry, now: Instant) {
        self.listener_pending = false;
        for _ in 0..ACCEPTS_PER_CALL_MAX {
            let (stream, address) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if is_transient_accept_error(&error) => continue,
                Err(error) => {
                    // E.g. out of file descriptors: the backlog keeps the
                    // connection; try again on the next call.
                    log::warn!("peer listener cannot accept: {error}");
                    self.listener_pending = true;
                    return;
                }
            };
            self.register_inbound(registry, stream, address, now);
        }
        self.listener_pending = true;
    }

    fn register_inbound(
        &mut self,
        registry: &Registry,
        stream: TcpStream,
        address: SocketAddr,
        now: Instant,
    ) {
        let mut stream = match &self.tls {
            Some(tls) => match tls.accept(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    log::warn!("peer connection from {address} closed: {error}");
                    return;
                }
            },
            None => Stream::Plain(stream),
        };
        if self.inbound.len() >= limits::PEER_INBOUND_CONNECTIONS_MAX {
            // Evict the oldest connection that has not completed a
            // handshake: a stranger holding slots cannot lock a member out.
            let oldest = self
                .inbound
                .iter()
                .filter(|(_, connection)| connection.accepted().is_none())
                .min_by_key(|(_, connection)| connection.accepted_at)
                .map(|(key, connection)| (key, connection.address()));
            match oldest {
                Some((key, evicted)) => {
                    log::debug!(
                        "peer connection from {evicted} closed: no handshake yet, and its slot \
                         is needed"
                    );
                    self.stats.connections_evicted += 1;
                    self.close_inbound(registry, key);
                }
                None => {
                    log::warn!(
                        "peer connection from {address} closed: {} accepted links already open",
                        self.inbound.len()
                    );
                    return;
                }
            }
        }
        let entry = self.inbound.vacant_entry();
        let token = Token(self.token_base + 1 + limits::PEER_LINKS_MAX + entry.key());
        if let Err(error) =
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("peer connection from {address} closed: cannot register: {error}");
            return;
        }
        let _ = stream.set_nodelay(true);
        let deadline = now + Duration::from_millis(limits::PEER_HANDSHAKE_TIMEOUT_MS);
        entry.insert(Inbound::new(stream, address, now, deadline));
        self.stats.connections_accepted += 1;
    }

    fn inbound_ready(
        &mut self,
        registry: &Registry,
        key: usize,
        gate: &mut dyn PeerGate,
        out: &mut Vec<PeerEvent>,
    ) {
        let established: Vec<(NodeId, u64)> = self
            .inbound
            .iter()
            .filter(|(other, _)| *other != key)
            .filter_map(|(_, connection)| connection.accepted())
            .collect();
        let Some(connection) = self.inbound.get_mut(key) else {
            return;
        };
        let verdict = connection.on_ready(&mut InboundContext {
            my_id: self.my_id,
            identity: &mut self.identity,
            gate,
            established: &established,
            out,
            stats: &mut self.stats,
            read_scratch: &mut self.read_scratch,
        });
        match verdict {
            Verdict::Keep => {}
            Verdict::Close => self.close_inbound(registry, key),
            Verdict::Accepted(from) => {
                // A newer connection from the same data dir replaces older
                // ones (the dialer keeps one link; an old one is half-dead);
                // the handshake refused it otherwise.
                let stale: Vec<usize> = self
                    .inbound
                    .iter()
                    .filter(|(other, connection)| {
                        *other != key && connection.accepted().map(|(id, _)| id) == Some(from)
                    })
                    .map(|(other, _)| other)
                    .collect();
                for other in stale {
                    log::debug!("older peer connection from node {from} replaced");
                    self.close_inbound(registry, other);
                }
            }
        }
    }

    fn close_inbound(&mut self, registry: &Registry, key: usize) {
        if let Some(mut connection) = self.inbound.try_remove(key) {
            let _ = registry.deregister(&mut connection.stream);
        }
    }
}

fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What one `read_into` call did.
#[derive(Debug, Default)]
struct ReadOutcome {
    bytes: usize,
    /// The peer closed its side (end of stream).
    closed: bool,
    /// Stopped at the budget, not at `WouldBlock`: data may be left.
    budget_exhausted: bool,
}

/// Reads into `buffer` until `WouldBlock`, end of stream, or `budget_bytes`.
/// Bytes land in `scratch` first and are appended from there, so only the
/// bytes read are copied and no per-call buffer is zero-filled.
fn read_into(
    stream: &mut impl Read,
    buffer: &mut BytesMut,
    budget_bytes: usize,
    scratch: &mut [u8],
) -> io::Result<ReadOutcome> {
    let mut outcome = ReadOutcome::default();
    loop {
        if outcome.bytes >= budget_bytes {
            outcome.budget_exhausted = true;
            return Ok(outcome);
        }
        let chunk_bytes = scratch.len().min(budget_bytes - outcome.bytes);
        match stream.read(&mut scratch[..chunk_bytes]) {
            Ok(0) => {
                outcome.closed = true;
                return Ok(outcome);
            }
            Ok(read) => {
                buffer.extend_from_slice(&scratch[..read]);
                outcome.bytes += read;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(outcome),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}
