//! The node's single-threaded mio reactor: client sockets, peer links, the
//! tick timer and the stop signal on one `Poll`.
//!
//! The reactor is one of the two drivers of `Replica` (the simulator is the
//! other): it turns sockets, the clocks and the `NodeStorage` threads into
//! the replica's inputs, and the replica's outputs into bytes on sockets.
//!
//! One turn: wait for readiness (at most until the next tick) → hand the
//! replica the fsyncs and snapshots that finished → read every ready socket
//! to `WouldBlock` and frame its commands → the time (`Replica::tick`) →
//! one `Replica::end_turn` (one proposal; it writes the WAL and starts the
//! next fsync on the sync threads, which wake the loop when done) → hand
//! replies to their connections and flush → flush peer links. Events are
//! never handled one by one against the log: the turn batches them.
//!
//! Clocks: the replica never reads one. The reactor gives it `Now`: a
//! monotonic clock (µs since the reactor started) and the wall clock, which
//! the replica uses only where cluster time starts (`wall_clock_ms`, the
//! node's one wall-clock read).
//!
//! Operations (additive to the loop): an optional metrics/health HTTP
//! listener (`serve_metrics`, tokens from `HTTP_TOKEN_BASE`), answered from
//! a `NodeView` gathered only when a request arrives; status probes on the
//! peer port answered the same way; `ReactorMetrics` counted with plain
//! increments; one log line per role, term or leader change.
//!
//! Convergence checks (tests, operators): a `ChecksumHandle::request` (the
//! node binary wires it to SIGUSR1) makes the loop write, at the end of its
//! next turn, one line to `<data dir>/fsm.checksum` (written to a temporary
//! file and renamed, so a reader never sees half of it): `applied_index`,
//! `commit_index`, `term`, `cluster_time_ms`, `version_counter`, `files` and
//! `checksum` (the file map's digest at its own cluster time, see
//! `Fsm::checksum`). Replicas at the same applied index must show the same
//! digest. No client command exists for this (SPEC §2 has none).
//!
//! Invariants (mio's rules): tokens come from a slab; spurious events are
//! harmless (every handler tolerates `WouldBlock`); a broken connection is
//! closed and the loop goes on; nothing in the loop blocks except `poll`
//! (fsyncs run on the WAL's sync thread).

use crate::error::{Error, Result};
use crate::limits;
use crate::metrics::ReactorMetrics;
use crate::net::conn::{Connection, ReadStatus};
use crate::net::http::{HttpServer, Route};
use crate::net::member_log::MemberLog;
use crate::net::peer::{PeerEvent, Peers};
use crate::net::tls;
use crate::protocol::{encode_reply, parse_next, Parsed, Reply, Request};
use crate::raft::{NodeId, Role, Term};
use crate::replica::{ClientRef, Now, Replica, Status};
use crate::storage::{NodeStorage, Wal};
use bytes::{Bytes, BytesMut};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod observe;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Tokens from here on belong to the peer component.
pub const PEER_TOKEN_BASE: usize = 16;
/// Tokens from here on belong to the metrics HTTP listener.
pub const HTTP_TOKEN_BASE: usize = 1 << 19;
/// Tokens from here on are client connections (slab key + base).
const CONNECTION_TOKEN_BASE: usize = 1 << 20;
/// A stopping node waits this long after the last client command it read.
const STOP_QUIET: Duration = Duration::from_millis(50);
/// Most peer and HTTP ticks caught up in one turn after a stall.
const TICKS_PER_TURN_MAX: u32 = 10;

/// The file a checksum request writes, inside the node's data dir.
pub const CHECKSUM_FILE_NAME: &str = "fsm.checksum";

/// Asks a running reactor to write its file map's checksum (see the module
/// doc).
#[derive(Clone)]
pub struct ChecksumHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ChecksumHandle {
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::warn!("could not wake the reactor for a checksum: {e}");
        }
    }
}

/// Asks a running reactor to stop (gracefully: a leader hands over first).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::warn!("could not wake the reactor to stop it: {e}");
        }
    }
}

pub struct Reactor {
    poll: Poll,
    listener: TcpListener,
    connections: Slab<Connection>,
    next_connection_id: u64,
    peers: Peers,
    replica: Replica,
    storage: NodeStorage,
    /// The origin of the monotonic clock given to the replica.
    started: Instant,
    /// This turn's time, as given to the replica.
    turn_now: Now,
    /// Test hook (`WALL_CLOCK_OFFSET_ENV`), read once at start.
    wall_clock_offset_ms: i64,
    stop_flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
    status: Arc<Mutex<Status>>,
    max_file_bytes: usize,
    /// Connections that may have input to frame without a new event.
    resume: Vec<usize>,
    /// The last accept stopped at `ACCEPTS_PER_TURN_MAX` with more waiting:
    /// go on next turn without waiting for an event (edge-triggered).
    accept_pending: bool,
    /// Connections that got replies this turn.
    touched: Vec<usize>,
    /// How long a stopping leader waits for the handover and its answers.
    stop_grace: Duration,
    static_replies: StaticReplies,
    http: Option<HttpServer>,
    http_requests: Vec<(usize, Route)>,
    metrics: ReactorMetrics,
    /// Role, term and leader as last logged.
    logged: (Option<Role>, Term, Option<NodeId>),
    /// Members' links, for the member down / up again lines.
    member_log: MemberLog,
    /// When the last client command was read (a stopping node waits for quiet).
    last_command_at: Instant,
    /// Removed from the cluster: why (the exit line). The node then stops
    /// as a stopping one does, answering what it holds first.
    leaving: Option<String>,
    checksum_flag: Arc<AtomicBool>,
    /// Where a checksum request writes; `None` = requests are ignored.
    checksum_path: Option<PathBuf>,
    /// The replica's configuration version the peer links follow.
    configuration_version_followed: u64,
    /// cluster.toml's peer addresses (for members the configuration in
    /// force names without one).
    file_peer_addresses: std::collections::BTreeMap<NodeId, std::net::SocketAddr>,
    /// `[client_tls]`: every accepted client speaks TLS (None: plain).
    client_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Encoded once: the answers the reactor gives without the replica.
struct StaticReplies {
    command_error: Bytes,
}

impl Reactor {
    /// A reactor for `replica`, whose disk is `wal` and the snapshot files
    /// in `data_dir`.
    pub fn new(
        poll: Poll,
        listener: TcpListener,
        peers: Peers,
        replica: Replica,
        disk: (Wal, PathBuf, bool),
        max_file_bytes: usize,
        stop_grace: Duration,
    ) -> io::Result<Reactor> {
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let sync_waker = Arc::clone(&waker);
        let (wal, data_dir, fsync) = disk;
        let storage = NodeStorage::start(
            wal,
            data_dir,
            fsync,
            Box::new(move || {
                if let Err(e) = sync_waker.wake() {
                    log::warn!("could not wake the reactor after an fsync: {e}");
                }
            }),
        )
        .map_err(io::Error::other)?;
        let mut buffer = BytesMut::new();
        encode_reply(&Reply::CmdErr, &mut buffer);
        let status = Arc::new(Mutex::new(replica.status()));
        let member_log = MemberLog::new(
            replica.id(),
            peers.link_states().into_iter().map(|link| link.peer),
            Instant::now(),
        );
        Ok(Reactor {
            poll,
            listener,
            connections: Slab::new(),
            next_connection_id: 1,
            peers,
            replica,
            storage,
            started: Instant::now(),
            turn_now: Now::default(),
            wall_clock_offset_ms: std::env::var(WALL_CLOCK_OFFSET_ENV)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0),
            stop_flag: Arc::new(AtomicBool::new(false)),
            waker,
            status,
            max_file_bytes,
            resume: Vec::new(),
            accept_pending: false,
            touched: Vec::new(),
            stop_grace,
            last_command_at: Instant::now(),
            leaving: None,
            static_replies: StaticReplies {
                command_error: buffer.freeze(),
            },
            http: None,
            http_requests: Vec::new(),
            metrics: ReactorMetrics::default(),
            logged: (None, 0, None),
            member_log,
            checksum_flag: Arc::new(AtomicBool::new(false)),
            checksum_path: None,
            configuration_version_followed: u64::MAX,
            file_peer_addresses: std::collections::BTreeMap::new(),
            client_tls: None,
        })
    }

    /// Serves `GET /metrics`, `/health`, `/livez`, `/readyz` and
    /// `/snapshot` on `address` from this reactor (see `net::http`).
    /// Returns the bound address (useful with port 0).
    pub fn serve_metrics(
        &mut self,
        address: std::net::SocketAddr,
        settings: crate::net::http::HttpSettings,
    ) -> io::Result<std::net::SocketAddr> {
        let server = HttpServer::bind(self.poll.registry(), address, HTTP_TOKEN_BASE, settings)?;
        let bound = server.local_addr()?;
        self.http = Some(server);
        Ok(bound)
    }

    pub fn checksum_handle(&self) -> ChecksumHandle {
        ChecksumHandle {
            flag: self.checksum_flag.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Where checksum requests write (the node's data dir).
    pub fn set_checksum_path(&mut self, path: PathBuf) {
        self.checksum_path = Some(path);
    }

    /// Serve only TLS on the client port, with `config` (`net::tls`).
    pub fn set_client_tls(&mut self, config: Arc<rustls::ServerConfig>) {
        self.client_tls = Some(config);
    }

    /// cluster.toml's peer addresses, used where the configuration in
    /// force names none for a member.
    pub fn set_file_peer_addresses(
        &mut self,
        addresses: std::collections::BTreeMap<NodeId, std::net::SocketAddr>,
    ) {
        self.file_peer_addresses = addresses;
    }

    /// Writes the checksum line if one was requested; a failure is logged
    /// (this is a debugging aid, never a reason to stop serving).
    fn maybe_write_checksum(&mut self) {
        if !self.checksum_flag.swap(false, Ordering::SeqCst) {
            return;
        }
        let Some(path) = &self.checksum_path else {
            return;
        };
        let status = self.replica.status();
        let fsm = self.replica.fsm();
        let cluster_time_ms = fsm.cluster_time_ms();
        let line = format!(
            "applied_index={} commit_index={} term={} cluster_time_ms={} version_counter={} files={} checksum={:016x}\n",
            status.applied_index,
            status.commit_index,
            status.term,
            cluster_time_ms,
            fsm.version_counter(),
            fsm.len(),
            fsm.checksum(cluster_time_ms)
        );
        let temporary = path.with_extension("checksum.tmp");
        let written = std::fs::write(&temporary, line.as_bytes())
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = written {
            log::warn!("could not write {}: {e}", path.display());
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop_flag.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Shared view of the node's state, refreshed every turn.
    pub fn status_handle(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }

    /// The time to give the replica.
    fn replica_now(&self, now: Instant) -> Now {
        Now {
            monotonic_us: now.saturating_duration_since(self.started).as_micros() as u64,
            wall_ms: wall_clock_ms(self.wall_clock_offset_ms),
        }
    }

    /// Run until stopped (Ok) or until the node must stop on an error.
    pub fn run(&mut self) -> Result<()> {
        let tick = Duration::from_millis(limits::TICK_MS);
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + tick;
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let timeout = next_tick.saturating_duration_since(now);
            let busy =
                !self.resume.is_empty() || self.peers.has_pending_reads() || self.accept_pending;
            let timeout = if busy { Duration::ZERO } else { timeout };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::io("poll", e));
                }
            }
            let now = Instant::now();
            let replica_now = self.replica_now(now);
            self.turn_now = replica_now;
            self.storage.deliver_completions(&mut self.replica)?;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_clients(),
                    WAKER => {}
                    token if self.http.as_ref().is_some_and(|http| http.owns(token)) => {
                        if let Some(http) = self.http.as_mut() {
                            http.handle_event(
                                self.poll.registry(),
                                token,
                                now,
                                &mut self.http_requests,
                            );
                        }
                    }
                    token if token.0 >= CONNECTION_TOKEN_BASE => {
                        let key = token.0 - CONNECTION_TOKEN_BASE;
                        self.service_connection(key, now);
                    }
                    token if self.peers.owns(token) => self.handle_peer_event(event, now)?,
                    _ => {}
                }
            }
            if self.accept_pending {
                self.accept_clients();
            }
            for key in std::mem::take(&mut self.resume) {
                self.service_connection(key, now);
            }
            if self.peers.has_pending_reads() {
                self.resume_peer_reads(now)?;
            }
            self.answer_observers();
            self.replica.tick(replica_now);
            let mut ticks = 0;
            while now >= next_tick && ticks < TICKS_PER_TURN_MAX {
                let mut peer_events = Vec::new();
                self.peers.tick(self.poll.registry(), now, &mut peer_events);
                self.process_peer_events(peer_events)?;
                if let Some(http) = self.http.as_mut() {
                    http.tick(self.poll.registry(), now);
                }
                next_tick += tick;
                ticks += 1;
            }
            if now >= next_tick {
                next_tick = now + tick;
            }
            if self.stop_flag.load(Ordering::SeqCst) && stop_deadline.is_none() {
                stop_deadline = Some(now + self.stop_grace);
                self.replica.drain();
                match self.replica.transfer_leadership() {
                    Some(target) if target != self.replica.id() => {
                        log::info!("stopping: handing leadership to node {target}")
                    }
                    Some(_) => log::info!("stopping (single member: no one to hand over to)"),
                    None => log::info!("stopping"),
                }
            }
            self.replica.end_turn(replica_now, &mut self.storage)?;
            self.follow_configuration();
            self.deliver(now)?;
            if self.leaving.is_none() {
                self.leaving = self.replica.removed();
            }
            if self.leaving.is_some() && stop_deadline.is_none() {
                // Removed: answer every command held (`Replica::leave`),
                // redirect new ones meanwhile, and stop as a stopping node
                // does once quiet, so no client is left without an answer.
                log::info!(
                    "removed from the cluster: answering what this node holds, then stopping"
                );
                stop_deadline = Some(now + self.stop_grace);
                self.replica.leave();
                self.deliver(now)?;
            }
            self.refresh_status();
            self.log_transitions();
            self.member_log.log_changes(now);
            self.maybe_write_checksum();
            if let Some(deadline) = stop_deadline {
                // Stop once leadership is gone, every command read has its
                // answer, and clients have had a moment to follow their
                // redirects (so a rolling restart fails no request).
                let leading = self.replica.status().role == Some(crate::raft::Role::Leader);
                let quiet = now.saturating_duration_since(self.last_command_at) >= STOP_QUIET
                    && replica_now
                        .monotonic_us
                        .saturating_sub(self.replica.last_forward_taken_us())
                        >= STOP_QUIET.as_micros() as u64;
                if (!leading && !self.replica.has_waiting() && quiet) || now >= deadline {
                    self.flush_all_connections();
                    return match self.leaving.take() {
                        Some(reason) => Err(Error::Removed(reason)),
                        None => Ok(()),
                    };
                }
            }
        }
    }

    /// The configuration in force changed: dial its new members (and the
    /// retiring ones a leader still tells of their removal), shut the
    /// links of the others. Members whose entry names no usable peer
    /// address keep cluster.toml's.
    fn follow_configuration(&mut self) {
        let version = self.replica.configuration_version();
        if version == self.configuration_version_followed {
            return;
        }
        self.configuration_version_followed = version;
        let mut members = std::collections::BTreeMap::new();
        for (id, addresses) in self.replica.peer_addresses() {
            match addresses.peer.parse::<std::net::SocketAddr>() {
                Ok(address) => {
                    members.insert(id, address);
                }
                Err(_) => match self.file_peer_addresses.get(&id) {
                    Some(address) => {
                        members.insert(id, *address);
                    }
                    None => log::warn!(
                        "node {id}'s peer address {:?} is not IP:PORT; it cannot be dialed",
                        addresses.peer
                    ),
                },
            }
        }
        self.peers.set_members(self.poll.registry(), members);
    }

    fn handle_peer_event(&mut self, event: &mio::event::Event, now: Instant) -> Result<()> {
        let mut peer_events = Vec::new();
        let replica = &mut self.replica;
        self.peers
            .handle_event(self.poll.registry(), event, now, replica, &mut peer_events);
        self.process_peer_events(peer_events)
    }

    fn resume_peer_reads(&mut self, now: Instant) -> Result<()> {
        let mut peer_events = Vec::new();
        let replica = &mut self.replica;
        self.peers
            .resume_reads(self.poll.registry(), now, replica, &mut peer_events);
        self.process_peer_events(peer_events)
    }

    fn process_peer_events(&mut self, peer_events: Vec<PeerEvent>) -> Result<()> {
        for peer_event in peer_events {
            match peer_event {
                PeerEvent::Message(envelope) => self.replica.step(envelope),
                // Not fatal: another cluster, another node, not a member
                // yet (the link logged it once and retries): a stranger
                // cannot stop this node.
                PeerEvent::Refused { fatal: false, .. } => {}
                PeerEvent::Refused { by, reason, .. } => {
                    if let Err(line) = self.replica.peer_refused(by, &reason) {
                        if !reason.contains(crate::replica::REMOVED_REFUSAL_MARK) {
                            return Err(Error::Refused(line));
                        }
                        // Removed: the run loop stops it as it stops a
                        // node that learned its removal.
                        if self.leaving.is_none() {
                            self.leaving = Some(line);
                        }
                    }
                }
                // The link logs up and down at debug (with the reason); a
                // member down for a while gets one line (`MemberLog`).
                PeerEvent::LinkUp(id) => self.member_log.link_changed(id, true, Instant::now()),
                PeerEvent::LinkDown(id) => self.member_log.link_changed(id, false, Instant::now()),
            }
        }
        Ok(())
    }

    /// Accepts waiting clients, at most `ACCEPTS_PER_TURN_MAX` a turn so a
    /// burst of connects never makes one turn long (fairness to the clients
    /// already served).
    fn accept_clients(&mut self) {
        self.accept_pending = false;
        for _ in 0..limits::ACCEPTS_PER_TURN_MAX {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        log::debug!("set_nodelay: {e}");
                    }
                    let stream = match &self.client_tls {
                        Some(config) => match tls::accept_client(config, stream) {
                            Ok(stream) => stream,
                            Err(e) => {
                                log::warn!("client connection closed: {e}");
                                continue;
                            }
                        },
                        None => tls::Stream::Plain(stream),
                    };
                    self.metrics.connections_accepted += 1;
                    let entry = self.connections.vacant_entry();
                    let key = entry.key();
                    let id = self.next_connection_id;
                    self.next_connection_id += 1;
                    let mut connection = Connection::new(stream, id);
                    let token = Token(CONNECTION_TOKEN_BASE + key);
                    match self.poll.registry().register(
                        &mut connection.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        Ok(()) => {
                            entry.insert(connection);
                            self.resume.push(key);
                        }
                        Err(e) => log::warn!("could not register a client connection: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: stop accepting this turn, keep serving.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
        self.accept_pending = true;
    }

    /// Read, frame and submit what a connection has; flush its replies.
    fn service_connection(&mut self, key: usize, now: Instant) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        connection.paused = !connection.wants_read();
        if connection.wants_read() && !connection.input_closed {
            match connection.read_available() {
                Ok(ReadStatus::More) => self.resume.push(key),
                Ok(ReadStatus::Open | ReadStatus::Closed) => {}
                Err(e) => {
                    log::debug!("client connection {} read error: {e}", connection.id);
                    self.close_connection(key);
                    return;
                }
            }
        }
        self.frame_commands(key, now);
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if let Err(e) = connection.flush() {
            log::debug!("client connection {} write error: {e}", connection.id);
            self.close_connection(key);
            return;
        }
        if connection.is_finished() {
            self.close_connection(key);
        }
    }

    fn frame_commands(&mut self, key: usize, now: Instant) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        while connection.wants_read() {
            let Some(parsed) = parse_next(&mut connection.read_buffer, self.max_file_bytes) else {
                break;
            };
            self.last_command_at = now;
            let reserved_bytes = match &parsed {
                Parsed::Request(Request::Read { .. } | Request::Watch { .. }) => {
                    self.max_file_bytes + limits::READ_REPLY_HEADER_BYTES_MAX
                }
                _ => 0,
            };
            let seq = connection.take_slot(reserved_bytes);
            let client = ClientRef {
                key,
                conn_id: connection.id,
                seq,
            };
            match parsed {
                Parsed::Request(request) => {
                    let kind = observe::command_kind(&request);
                    self.metrics.commands[kind] += 1;
                    connection.start_timer(seq, kind, now);
                    self.replica.client_request(client, request, self.turn_now)
                }
                Parsed::Malformed { close } => {
                    self.metrics.commands[4] += 1;
                    self.metrics.errors[2] += 1;
                    connection.fill(seq, self.static_replies.command_error.clone());
                    if close {
                        connection.closing = true;
                        connection.read_buffer.clear();
                    }
                }
            }
        }
        if !connection.wants_read() {
            connection.paused = true;
        }
        if connection.input_closed && connection.wants_read() {
            // A partial command can never complete now.
            connection.read_buffer.clear();
        }
    }

    fn close_connection(&mut self, key: usize) {
        if let Some(mut connection) = self.connections.try_remove(key) {
            if let Err(e) = self.poll.registry().deregister(&mut connection.stream) {
                log::debug!("deregister: {e}");
            }
            self.replica.connection_closed(key);
        }
    }

    /// Hand this turn's replies and messages to their sockets.
    fn deliver(&mut self, now: Instant) -> Result<()> {
        if self.peers.cluster_id() == 0 && self.replica.raft().role() == crate::raft::Role::Leader {
            // The cluster's first leader makes its id, durably, before it
            // sends anything as leader (`net::peer`: the cluster id).
            self.peers
                .ensure_cluster_id(self.poll.registry())
                .map_err(Error::Refused)?;
        }
        for envelope in self.replica.messages.drain(..) {
            self.peers.send(&envelope);
        }
        let mut peer_events = Vec::new();
        self.peers
            .flush(self.poll.registry(), now, &mut peer_events);
        self.process_peer_events(peer_events)?;
        let answered_at = Instant::now();
        for (client, reply) in self.replica.replies.drain(..) {
            self.metrics.count_reply(&reply);
            if let Some(connection) = self.connections.get_mut(client.key) {
                if connection.id == client.conn_id {
                    if let Some((kind, read_at)) = connection.fill(client.seq, reply) {
                        self.metrics
                            .record_request(kind, answered_at.saturating_duration_since(read_at));
                    }
                    self.touched.push(client.key);
                }
            }
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        for key in std::mem::take(&mut self.touched) {
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            if let Err(e) = connection.flush() {
                log::debug!("client connection {} write error: {e}", connection.id);
                self.close_connection(key);
                continue;
            }
            if connection.is_finished() {
                self.close_connection(key);
                continue;
            }
            // A connection that was paused and has room again must be read
            // without waiting for an event (edge-triggered readiness).
            if connection.paused && !connection.closing && connection.wants_read() {
                connection.paused = false;
                self.resume.push(key);
            }
        }
        Ok(())
    }

    fn flush_all_connections(&mut self) {
        for (_, connection) in self.connections.iter_mut() {
            let _ = connection.flush();
        }
    }

    fn refresh_status(&self) {
        if let Ok(mut status) = self.status.lock() {
            *status = self.replica.status();
        }
    }
}

/// Test hook: milliseconds added to this node's wall clock (negative moves
/// it back), so tests can give nodes clocks far apart without touching the
/// system clock (tests/clock.rs).
pub const WALL_CLOCK_OFFSET_ENV: &str = "RAFTFS_TEST_WALL_CLOCK_OFFSET_MS";

/// The node's only wall-clock read (SPEC §2: the replica uses it only where
/// cluster time starts, when the log holds no stamp yet). Everything else
/// runs on monotonic clocks.
fn wall_clock_ms(offset_ms: i64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now_ms.saturating_add_signed(offset_ms).max(1)
}
