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
//! Client limits (README "Client limits"): at most `max_client_connections`
//! clients (capped by the open files limit at start); past it a new one is
//! answered `ERR_INTERNAL` and closed, with one log line per burst. Every
//! byte held for clients (unparsed input, unanswered reads' and writes'
//! shares — a read counts its file's size when it arrives, a write its
//! content — and answers: `Connection::held_bytes`) is counted in
//! `client_bytes`; at or over `max_client_buffer_bytes`, a connection is
//! read only if it has nothing outstanding (at most
//! `CONN_INPUT_BYTES_OVER_BUDGET`, one command), and the others wait in
//! `budget_queue`, resumed in arrival order once the count falls under
//! the budget (readiness is edge-triggered: no new event comes for input
//! left in a socket). A client whose queued answers reach the per-connection
//! cap and that then reads nothing for `CONN_WRITE_STALL_TIMEOUT_MS` is
//! closed with a log line.
//!
//! Invariants (mio's rules): tokens come from a slab; spurious events are
//! harmless (every handler tolerates `WouldBlock`); a broken connection is
//! closed and the loop goes on; nothing in the loop blocks except `poll`
//! (fsyncs run on the WAL's sync thread). `client_bytes` is the sum of
//! `held_bytes` over the open connections: every change to a connection is
//! accounted (`account`) before it can be closed.

use crate::config::ClientLimits;
use crate::error::{Error, Result};
use crate::fsm::Command;
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
use std::collections::VecDeque;
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
    /// Client limits in force (`connections_max` already capped by the
    /// open files limit).
    client_limits: ClientLimits,
    /// Bytes held for all clients: the sum of their `held_bytes`.
    client_bytes: usize,
    /// Connections (key, id) not read for the client budget, oldest first;
    /// each is in it at most once (`Connection::budget_waiting`).
    budget_queue: VecDeque<(usize, u64)>,
    /// Bytes read from client sockets this turn
    /// (`CLIENT_READ_BYTES_PER_TURN_MAX`).
    turn_read_bytes: usize,
    /// When to look next for clients that do not read their answers.
    next_stall_check: Instant,
    refused_log: RateLog,
    stalled_log: RateLog,
}

/// Encoded once: the answers the reactor gives without the replica.
struct StaticReplies {
    command_error: Bytes,
    internal: Bytes,
}

/// One log line per `CLIENT_LIMIT_LOG_INTERVAL_MS` at most, counting the
/// events in between.
#[derive(Default)]
struct RateLog {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl RateLog {
    /// Counts one event; returns how many to report if a line is due now.
    fn event(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self.last_line.is_none_or(|last| {
            now.saturating_duration_since(last)
                >= Duration::from_millis(limits::CLIENT_LIMIT_LOG_INTERVAL_MS)
        });
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
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
        let command_error = buffer.split().freeze();
        encode_reply(&Reply::Internal, &mut buffer);
        let internal = buffer.freeze();
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
                command_error,
                internal,
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
            client_limits: ClientLimits::default(),
            client_bytes: 0,
            turn_read_bytes: 0,
            budget_queue: VecDeque::new(),
            next_stall_check: Instant::now(),
            refused_log: RateLog::default(),
            stalled_log: RateLog::default(),
        })
    }

    /// Sets the client limits (cluster.toml's `max_client_connections` and
    /// `max_client_buffer_bytes`). The connection cap is lowered to what the
    /// process's open files limit allows (`RLIMIT_NOFILE` less
    /// `CLIENT_FDS_RESERVED`): with one warning line if the file set it,
    /// at debug if it is the default.
    pub fn set_client_limits(&mut self, wanted: ClientLimits) {
        let mut limits = wanted;
        if let Some(open_files) = open_files_limit() {
            let allowed = open_files
                .saturating_sub(limits::CLIENT_FDS_RESERVED)
                .max(1);
            if limits.connections_max as u64 > allowed {
                let line = format!(
                    "max_client_connections = {} is above what the open files limit allows \
                     (RLIMIT_NOFILE {open_files}, {} kept for the node): accepting at most {allowed} \
                     clients (raise `ulimit -n` or LimitNOFILE= to allow more)",
                    limits.connections_max,
                    limits::CLIENT_FDS_RESERVED
                );
                if limits.connections_max_explicit {
                    log::warn!("{line}");
                } else {
                    log::debug!("{line}");
                }
                limits.connections_max = allowed as usize;
            }
        }
        self.client_limits = limits;
    }

    /// Whether the bytes held for clients are at or over the budget.
    fn over_budget(&self) -> bool {
        self.client_bytes >= self.client_limits.buffer_bytes_max
    }

    /// Counts the change of one connection's `held_bytes` from `before` to
    /// `after`.
    fn account(&mut self, before: usize, after: usize) {
        self.client_bytes = self.client_bytes - before + after;
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
            let busy = !self.resume.is_empty()
                || self.peers.has_pending_reads()
                || self.accept_pending
                || (!self.budget_queue.is_empty() && !self.over_budget());
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
            self.turn_read_bytes = 0;
            // Connections left from last turn first, so a turn's events
            // cannot starve them of the per-turn read share; once the share
            // is used, the rest wait, in order, for the next turn.
            let pending = std::mem::take(&mut self.resume);
            for (index, &key) in pending.iter().enumerate() {
                if self.turn_read_bytes >= limits::CLIENT_READ_BYTES_PER_TURN_MAX {
                    self.resume.extend_from_slice(&pending[index..]);
                    break;
                }
                if let Some(connection) = self.connections.get_mut(key) {
                    connection.scheduled = false;
                }
                self.service_connection(key, now);
            }
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
                        if event.is_read_closed() || event.is_error() {
                            if let Some(connection) = self.connections.get_mut(key) {
                                connection.hung_up = true;
                            }
                        }
                        self.service_connection(key, now);
                    }
                    token if self.peers.owns(token) => self.handle_peer_event(event, now)?,
                    _ => {}
                }
            }
            if self.accept_pending {
                self.accept_clients();
            }
            self.resume_budget_waiting();
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
            if now >= self.next_stall_check {
                self.next_stall_check =
                    now + Duration::from_millis(limits::CONN_STALL_CHECK_INTERVAL_MS);
                self.close_stalled_clients(now);
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
                Ok((stream, _)) if self.connections.len() >= self.client_limits.connections_max => {
                    self.refuse_client(stream);
                }
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
                            connection.scheduled = true;
                            entry.insert(connection);
                            self.resume.push(key);
                        }
                        Err(e) => log::warn!("could not register a client connection: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: stop accepting this turn, keep
                    // serving; the connection waits in the backlog.
                    if let Some(count) = self.refused_log.event(Instant::now()) {
                        log::warn!(
                            "accepting a client failed ({count} time(s) since the last line): {e}"
                        );
                    }
                    return;
                }
            }
        }
        self.accept_pending = true;
    }

    /// Past `max_client_connections`: one try at `ERR_INTERNAL` (a fresh
    /// socket takes it unless the client is gone), then close.
    fn refuse_client(&mut self, stream: mio::net::TcpStream) {
        use std::io::Write;
        let mut stream = stream;
        let _ = stream.write(&self.static_replies.internal);
        if let Some(count) = self.refused_log.event(Instant::now()) {
            log::warn!(
                "{} client connections open (max_client_connections): refused {count} \
                 connection(s) with ERR_INTERNAL since the last line",
                self.connections.len()
            );
        }
    }

    /// Moves connections waiting for the client budget to `resume`, oldest
    /// first, while the count is under the budget.
    fn resume_budget_waiting(&mut self) {
        let mut resumed = 0;
        while resumed < limits::BUDGET_RESUMES_PER_TURN_MAX && !self.over_budget() {
            let Some((key, id)) = self.budget_queue.pop_front() else {
                return;
            };
            if let Some(connection) = self.connections.get_mut(key) {
                if connection.id == id {
                    connection.budget_waiting = false;
                    schedule(&mut self.resume, connection, key);
                    resumed += 1;
                }
            }
        }
    }

    /// Closes the clients that do not read their answers
    /// (`Connection::write_stalled`), and re-checks `client_bytes`.
    fn close_stalled_clients(&mut self, now: Instant) {
        let stall = Duration::from_millis(limits::CONN_WRITE_STALL_TIMEOUT_MS);
        let stalled: Vec<(usize, u64, usize)> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.write_stalled(now, stall))
            .map(|(key, connection)| (key, connection.id, connection.output_bytes()))
            .collect();
        for (key, id, queued) in stalled {
            if let Some(count) = self.stalled_log.event(now) {
                log::warn!(
                    "closing client connection {id}: {queued} bytes of answers queued and none \
                     read for {} ms ({count} such connection(s) closed since the last line)",
                    limits::CONN_WRITE_STALL_TIMEOUT_MS
                );
            }
            self.close_connection(key);
        }
        let counted: usize = self
            .connections
            .iter()
            .map(|(_, connection)| connection.held_bytes())
            .sum();
        debug_assert_eq!(counted, self.client_bytes, "client bytes miscounted");
        if counted != self.client_bytes {
            log::warn!(
                "client bytes counted {} but held {counted}: corrected",
                self.client_bytes
            );
            self.client_bytes = counted;
        }
    }

    /// Read, frame and submit what a connection has; flush its replies.
    fn service_connection(&mut self, key: usize, now: Instant) {
        let over_budget = self.over_budget();
        let input_cap = self.input_bytes_max();
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        let before = connection.held_bytes();
        // Answers first: room made in the output queue lets it read again.
        let mut failed = connection.flush().err();
        if connection.hung_up && !connection.input_closed {
            // Whatever it sent is in the socket now: if that cannot complete
            // the command at the front of its buffer, drop the rest unread
            // instead of reading up to a whole command for nothing.
            let needed =
                crate::protocol::bytes_needed(&connection.read_buffer, self.max_file_bytes);
            let have = connection.read_buffer.len();
            if needed > have && have + connection.unread_bytes() < needed {
                connection.input_closed = true;
                connection.read_buffer = BytesMut::new();
            }
        }
        let mut read = None;
        // Over the client budget (unless it hung up: what is left is
        // finite, and a partial command it ends with is dropped above), or
        // once this turn has read its share, a connection reads at most one
        // small command, and only with nothing outstanding: a client sending
        // one small command at a time keeps its latency.
        let turn_share_used = self.turn_read_bytes >= limits::CLIENT_READ_BYTES_PER_TURN_MAX;
        let constrained = (over_budget && !connection.hung_up) || turn_share_used;
        if failed.is_none() && connection.wants_read() && !connection.input_closed {
            connection.paused = false;
            connection.held_back = false;
            let limit = if !constrained {
                input_cap
            } else if connection.outstanding() == 0 && !connection.has_output() {
                limits::CONN_INPUT_BYTES_OVER_BUDGET
            } else {
                0
            };
            let buffered = connection.read_buffer.len();
            match connection.read_available(limit) {
                Ok(status) => read = Some((status, limit)),
                Err(e) => failed = Some(e),
            }
            self.turn_read_bytes += connection.read_buffer.len().saturating_sub(buffered);
        }
        if failed.is_none() {
            self.frame_commands(key, now, over_budget);
        }
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if failed.is_none() {
            failed = connection.flush().err();
        }
        match read {
            // Input may be left in the socket and no event will come for
            // it (edge-triggered): read on next turn.
            Some((ReadStatus::More, _)) => schedule(&mut self.resume, connection, key),
            Some((ReadStatus::Limited, limit)) if connection.read_buffer.len() < limit => {
                schedule(&mut self.resume, connection, key)
            }
            // Full at its limit: wait for the budget, or for an answer
            // (`deliver` resumes it) if its own commands hold it back.
            Some((ReadStatus::Limited, _)) if over_budget && !connection.hung_up => {
                if !connection.budget_waiting {
                    connection.budget_waiting = true;
                    self.budget_queue.push_back((key, connection.id));
                    self.metrics.budget_waits += 1;
                }
            }
            Some((ReadStatus::Limited, _)) if turn_share_used => {
                schedule(&mut self.resume, connection, key)
            }
            Some((ReadStatus::Limited, _)) => connection.held_back = true,
            Some((ReadStatus::Open | ReadStatus::Closed, _)) | None => {}
        }
        // Framing stopped for the budget with input left in the buffer: no
        // event will come for it, so it waits for an answer (`deliver`) or
        // for the budget to free. (Missing this left pipelined commands
        // unparsed for good: their clients timed out.)
        if over_budget
            && connection.outstanding() > 0
            && !connection.read_buffer.is_empty()
            && !connection.budget_waiting
        {
            connection.budget_waiting = true;
            self.budget_queue.push_back((key, connection.id));
            self.metrics.budget_waits += 1;
        }
        let after = connection.held_bytes();
        let id = connection.id;
        let finished = connection.is_finished();
        // Paused for its own limits and drained meanwhile: parse what its
        // buffer holds and read on next turn (no event will come for it).
        let drained = connection.paused
            && !connection.closing
            && connection.wants_read()
            && !(over_budget && connection.outstanding() > 0);
        if drained {
            connection.paused = false;
            schedule(&mut self.resume, connection, key);
        }
        self.account(before, after);
        if let Some(e) = failed {
            log::debug!("client connection {id} error: {e}");
            self.close_connection(key);
        } else if finished {
            self.close_connection(key);
        }
    }

    /// The most unparsed input one connection holds: one largest command.
    fn input_bytes_max(&self) -> usize {
        limits::LINE_BYTES_MAX + 2 + self.max_file_bytes + 2
    }

    /// Frames and submits the commands in a connection's buffer while it
    /// may take more (one at a time, with nothing outstanding, while the
    /// node is `over_budget`).
    fn frame_commands(&mut self, key: usize, now: Instant, over_budget: bool) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        let mut incomplete = false;
        while connection.wants_read() && !(over_budget && connection.outstanding() > 0) {
            let Some(parsed) = parse_next(&mut connection.read_buffer, self.max_file_bytes) else {
                incomplete = true;
                break;
            };
            self.last_command_at = now;
            // Against this connection's limit a read reserves the largest
            // answer; against the node's budget, its file as it is now (a
            // file grown while the read waits is counted once answered).
            // A watch may wait for days: its answer counts once queued.
            let read_reserved = self.max_file_bytes + limits::READ_REPLY_HEADER_BYTES_MAX;
            let (reserved_bytes, budget_bytes) = match &parsed {
                Parsed::Request(Request::Read { name }) => (
                    read_reserved,
                    self.replica.fsm().stored_len(name) + limits::READ_REPLY_HEADER_BYTES_MAX,
                ),
                Parsed::Request(Request::Watch { .. }) => (read_reserved, 0),
                Parsed::Request(Request::Command(
                    Command::Write { content, .. } | Command::Cas { content, .. },
                )) => (content.len(), content.len()),
                _ => (0, 0),
            };
            let seq = connection.take_slot(reserved_bytes, budget_bytes);
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
        if connection.input_closed && incomplete {
            // A partial command can never complete now.
            connection.read_buffer.clear();
        }
    }

    fn close_connection(&mut self, key: usize) {
        if let Some(mut connection) = self.connections.try_remove(key) {
            self.client_bytes -= connection.held_bytes();
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
                    let before = connection.held_bytes();
                    let timer = connection.fill(client.seq, reply);
                    let after = connection.held_bytes();
                    if let Some((kind, read_at)) = timer {
                        self.metrics
                            .record_request(kind, answered_at.saturating_duration_since(read_at));
                    }
                    self.touched.push(client.key);
                    self.client_bytes = self.client_bytes - before + after;
                }
            }
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        for key in std::mem::take(&mut self.touched) {
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            let before = connection.held_bytes();
            let flushed = connection.flush();
            let after = connection.held_bytes();
            self.account(before, after);
            let Some(connection) = self.connections.get_mut(key) else {
                continue;
            };
            if let Err(e) = flushed {
                log::debug!("client connection {} write error: {e}", connection.id);
                self.close_connection(key);
                continue;
            }
            if connection.is_finished() {
                self.close_connection(key);
                continue;
            }
            // A connection that was paused (or held to one command while
            // over the budget) and has room again must be read without
            // waiting for an event (edge-triggered readiness).
            if (connection.paused || connection.budget_waiting || connection.held_back)
                && !connection.closing
                && connection.wants_read()
            {
                connection.paused = false;
                schedule(&mut self.resume, connection, key);
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

/// Puts a connection on the list serviced next turn without waiting for an
/// event (at most once: `Connection::scheduled`).
fn schedule(resume: &mut Vec<usize>, connection: &mut Connection, key: usize) {
    if !connection.scheduled {
        connection.scheduled = true;
        resume.push(key);
    }
}

/// The process's soft limit on open files, if it can be read.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (result == 0).then_some(limit.rlim_cur)
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
