//! Every bound in raftfs, in one place, with units last.
//!
//! Invariants: every queue and buffer in the node is bounded by a constant here
//! (or by a config value checked against one); the `const` asserts at the end
//! pin how the limits relate, so changing one cannot silently break another.

/// Longest command line a client may send, not counting its `\r\n` (SPEC §2).
pub const LINE_BYTES_MAX: usize = 500;
/// Longest file name (SPEC §2).
pub const NAME_BYTES_MAX: usize = 250;
/// Most files one state machine holds: the file map's index stores slots as
/// `u32` (4 bytes per file instead of 8; src/fsm/files.rs). Memory runs out
/// long before (4 billion files are hundreds of GB), so this is never reached
/// in practice.
pub const FILES_MAX: usize = u32::MAX as usize;
/// Default for `max_file_bytes` (SPEC §1).
pub const FILE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Hard ceiling for the configurable `max_file_bytes`.
pub const FILE_BYTES_MAX_CEILING: usize = 64 << 20;

/// Longest answer line a client accepts (not counting its `\r\n`); longer is
/// a protocol error. The longest legal answer is `ERR_REDIRECT` and a
/// HOST:PORT, far below this (`protocol::reply`).
pub const REPLY_LINE_BYTES_MAX: usize = 1024;

/// `raftfs client`: how long a connect to one member may take.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// `raftfs client`: how long it waits for one answer (the server's bound
/// plus slack); a `watch` waits without bound.
pub const CLIENT_ANSWER_TIMEOUT_MS: u64 = COMMAND_TIMEOUT_MS + 1_000;
/// `raftfs client`: how long one command may go on following redirects and
/// retrying members before it is reported unavailable.
pub const CLIENT_RETRY_WINDOW_MS: u64 = 5_000;
/// `raftfs client`: pause before retrying while the leader moves or is down.
pub const CLIENT_RETRY_PAUSE_MS: u64 = 100;
/// `raftfs client`: how often a waiting `watch` checks for Ctrl-C.
pub const CLIENT_WATCH_POLL_MS: u64 = 200;
/// `raftfs client`: lines kept in the shell's history file.
pub const CLIENT_HISTORY_LINES_MAX: usize = 1_000;

/// A member whose peer link stays down this long is logged as down (once);
/// shorter link churn is only logged at debug.
pub const MEMBER_DOWN_LOG_GRACE_MS: u64 = 3_000;

/// One reactor tick; Raft timeouts are counted in ticks of this length.
pub const TICK_MS: u64 = 10;
/// No client command waits longer than this for its answer (SPEC §3).
pub const COMMAND_TIMEOUT_MS: u64 = 5_000;
/// Most Raft ticks one `Replica::tick` delivers after a stall (the node
/// catches up over several turns instead of firing every missed timeout at
/// once).
pub const TICKS_PER_CALL_MAX: u32 = 10;

/// Watches (`watch NAME VERSION`, SPEC §2) waiting on one node at once, over
/// every connection (a connection has at most one: a watch holds the later
/// commands of its connection). Past it a new watch is answered
/// `ERR_INTERNAL` at once (the server cannot take it now; the command was
/// well formed, so not `ERR_CMD_ERR`). A waiting watch costs the replica a
/// few hundred bytes plus its name (its table slot, a copy of the name, the
/// name and deadline index entries), so the bound caps that near 100 MB;
/// each watch also holds a client connection (1-4 KiB measured with it:
/// `benches/watch_idle.py`).
pub const WATCHES_MAX: usize = 200_000;
/// Extra routing passes one replica turn makes for watches woken by what
/// the turn applied and for the commands their answers release (the rest
/// wait for the next turn); bounds the work of one turn.
pub const WATCH_PASSES_PER_TURN_MAX: usize = 2;

/// An idle leader writes cluster time into the log (an entry with a stamp
/// and no command) this often, so a new leader, which starts from the last
/// stamp in its log, lags real time by at most this plus the election: files
/// expire late by about an election, never by the time the cluster was idle
/// (SPEC §2).
pub const CLUSTER_TIME_STAMP_INTERVAL_MS: u64 = 250;

/// Client connections accepted in one reactor turn; more wait in the accept
/// queue for the next turn.
pub const ACCEPTS_PER_TURN_MAX: usize = 64;

/// A client connection stops being read while this many reply bytes wait to be
/// written to it (write backpressure).
pub const CONN_WRITE_QUEUE_BYTES_MAX: usize = 4 << 20;
/// A client connection stops being read while this many of its commands wait
/// for an answer.
pub const CONN_PENDING_COMMANDS_MAX: usize = 4_096;
/// A client connection stops being read while its unanswered commands have
/// reserved this many bytes (a read or watch reserves `max_file_bytes` plus
/// its header line, a write or cas its content): with the default 1 MiB
/// files, 32 reads in flight per connection.
pub const CONN_READ_RESERVED_BYTES_MAX: usize = 32 << 20;
/// Bytes reserved for the `CONTENTS VERSION NUMBYTES EXPREMAINING\r\n` line
/// and the content's `\r\n` of one read answer.
pub const READ_REPLY_HEADER_BYTES_MAX: usize = 96;
/// Answers are encoded into blocks of this size, shared by many answers (a
/// block lives until the last answer cut from it is written out, so a
/// connection that does not read pins at most this much per answer it has
/// outstanding; small keeps that worst case small, 4 KiB already cuts the
/// allocations per answer from two to about 0.01).
pub const REPLY_BUFFER_CHUNK_BYTES: usize = 4 << 10;
/// Backlog of the client listener: connections the kernel completes before
/// the node accepts them (capped by the kernel's `somaxconn`). The default of
/// 128 drops SYNs, and so stalls clients for a second, when many connect at once.
pub const LISTEN_BACKLOG: i32 = 4_096;
/// Bytes read from one socket in one turn before the loop moves on (fairness).
pub const CONN_READ_BYTES_PER_TURN_MAX: usize = 256 << 10;

/// Most AppendEntries messages in flight to one follower (pipelining window).
pub const INFLIGHT_APPENDS_MAX: usize = 16;
/// Soft limit on the entry bytes in one AppendEntries; a single larger entry
/// is still sent alone.
pub const APPEND_BYTES_MAX: usize = 1 << 20;
/// Soft limit on the command bytes batched into one log entry.
pub const ENTRY_BYTES_MAX: usize = 256 << 10;
/// Commands proposed in one reactor turn before the turn is cut short.
pub const PROPOSAL_COMMANDS_PER_TURN_MAX: usize = 16_384;

/// Bytes queued for one peer before the link is considered too slow and its
/// queue is dropped (the Raft core retransmits by probing).
pub const PEER_QUEUE_BYTES_MAX: usize = 64 << 20;
/// Largest peer frame accepted from the network: the largest legal frame
/// is an AppendEntries holding one entry with a command at the ceiling of
/// `max_file_bytes` (an entry over `APPEND_BYTES_MAX` goes alone), or a
/// batch of `APPEND_BYTES_MAX`; an InstallSnapshot chunk or a forwarded
/// batch is smaller. So: that ceiling, plus one append's worth, plus 1 MiB
/// of headroom for headers (was 256 MiB: a hostile length could make a
/// node buffer that much per connection).
pub const PEER_FRAME_BYTES_MAX: usize = FILE_BYTES_MAX_CEILING + APPEND_BYTES_MAX + (1 << 20);
/// Most entries one AppendEntries may carry: the leader cuts a batch at
/// `APPEND_BYTES_MAX`, and every entry counts at least 16 bytes there
/// (`Entry::size_bytes`). More is a malformed frame (its decoding stops
/// before reading an element).
pub const PEER_APPEND_ENTRIES_MAX: usize = APPEND_BYTES_MAX / 16 + 1;
/// Most commands one forwarded batch (`ForwardCommands`) carries, and so
/// answers one `ForwardAnswers`; a follower cuts a turn's writes into
/// batches of at most this many commands and `APPEND_BYTES_MAX` bytes (a
/// single larger command goes alone).
pub const PEER_FORWARD_COMMANDS_MAX: usize = 8_192;
/// A peer message whose term is more than this above the receiver's is
/// malformed (dropped and its link closed): terms grow by one per election
/// (PreVote keeps partitioned nodes from inflating theirs), so a legal gap
/// this large would take a billion elections; a forged `u64::MAX` term would
/// otherwise freeze the cluster at a term nobody can exceed.
pub const PEER_TERM_GAP_MAX: u64 = 1 << 30;
/// Reconnect backoff bounds for peer links.
pub const PEER_RECONNECT_MIN_MS: u64 = 20;
pub const PEER_RECONNECT_MAX_MS: u64 = 1_000;
/// Outbound peer links one node keeps: one per other member of a cluster of
/// at most 9 (SPEC §1).
pub const PEER_LINKS_MAX: usize = 8;
/// Inbound peer connections held at once (accepted or still in handshake).
/// When all are taken, a new connection evicts the oldest one that has not
/// completed a handshake (a stranger holding slots cannot lock a member
/// out); only if every slot holds an accepted link is the new one closed.
pub const PEER_INBOUND_CONNECTIONS_MAX: usize = 32;
/// Time a peer connection may take from dial (or accept) to an answered
/// handshake before it is closed (an accepted connection that sends no
/// hello at all is closed after this too).
pub const PEER_HANDSHAKE_TIMEOUT_MS: u64 = 2_000;
/// A connected link whose socket took no byte for this long while frames
/// waited is closed and redialed (a peer host that vanished without a reset
/// is noticed; a peer that is only slow loses nothing Raft cannot resend).
pub const PEER_WRITE_STALL_TIMEOUT_MS: u64 = 5_000;
/// Largest handshake frame (hello or its answer) accepted from the network.
pub const PEER_HANDSHAKE_BYTES_MAX: usize = 4 << 10;
/// Bytes read from one peer connection in one call before the loop moves on
/// (fairness); larger than a client's share, as one AppendEntries may carry
/// `APPEND_BYTES_MAX`.
pub const PEER_READ_BYTES_PER_TURN_MAX: usize = 1 << 20;
/// Longest refusal reason sent in a handshake answer (longer ones are cut).
pub const PEER_REFUSE_REASON_BYTES_MAX: usize = 1 << 10;

/// Size at which the WAL rolls over to a new segment file. Compaction deletes
/// whole segments, so this is also the granularity of the disk bound.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 16 << 20;

/// Bytes of one InstallSnapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1 << 20;
/// Snapshot chunks sent beyond the follower's acknowledgement.
pub const SNAPSHOT_CHUNKS_INFLIGHT_MAX: usize = 4;
/// A snapshot is also taken, whatever `snapshot_entries` says, once the
/// entries applied since the last one hold `SNAPSHOT_LOG_TO_SNAPSHOT_RATIO`
/// times the last snapshot's size, kept within these bounds: the log in
/// memory and the WAL on disk stay under `SNAPSHOT_LOG_BYTES_MAX`, and a
/// small map is not rewritten more often than every `..._MIN` of log.
pub const SNAPSHOT_LOG_BYTES_MIN: u64 = 16 << 20;
pub const SNAPSHOT_LOG_BYTES_MAX: u64 = 64 << 20;
/// Measured (5 nodes, 10,000 files of 4 KiB, 64x16 writes, fsync off): at 1
/// the snapshot helpers used half of all CPU; 2 cut their share to a third
/// (24.7k -> 30.3k writes/s), and a snapshot's disk writes are then at most
/// half the log's.
pub const SNAPSHOT_LOG_TO_SNAPSHOT_RATIO: u64 = 2;
/// Snapshot files kept in a data dir: the newest, and one to fall back on
/// if the newest is found damaged at start.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Largest snapshot accepted from a peer or the disk.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;
/// Largest payload of one WAL record (one entry, or the hard state). Anything
/// that fits in a peer frame fits in a record, so no replicated entry is too
/// big to persist.
pub const WAL_RECORD_BYTES_MAX: usize = PEER_FRAME_BYTES_MAX;
/// Buffered WAL bytes after which they are written out before the next sync
/// (the write buffer's bound; normally one turn's records are far fewer).
pub const WAL_BUFFER_BYTES_MAX: usize = 8 << 20;

/// WAL fsyncs running at once on the sync threads. A second one lets what
/// arrived during an fsync start its own at once instead of waiting for the
/// running one to end; the disk merges them (measured: `benches/cluster.sh`).
pub const SYNCS_IN_FLIGHT_MAX: usize = 2;

/// A WAL sync slower than this is logged as a warning (and counted): the
/// election timeout must stay well above the disk's sync latency.
pub const FSYNC_SLOW_MS: u64 = 100;
/// `GET /health` answers 503 when the node's applied index is more than this
/// many entries behind the commit index its leader announced.
pub const HEALTH_APPLY_LAG_ENTRIES_MAX: u64 = 1_000;
/// Metrics/health HTTP connections held at once; more are closed at accept.
pub const HTTP_CONNECTIONS_MAX: usize = 64;
/// Largest HTTP request head (request line and headers) read.
pub const HTTP_REQUEST_BYTES_MAX: usize = 8 << 10;
/// Most header lines in one HTTP request head (more is a bad request).
pub const HTTP_HEADERS_MAX: usize = 32;
/// An HTTP connection that has not finished within this time is closed.
pub const HTTP_CONNECTION_TIMEOUT_MS: u64 = 5_000;
/// `GET /snapshot` downloads streaming at once, each on its own helper
/// thread with one `HTTP_SNAPSHOT_CHUNK_BYTES` buffer; more are answered 503.
pub const HTTP_SNAPSHOT_DOWNLOADS_MAX: usize = 2;
/// Bytes a snapshot download reads from disk and writes to its socket at a
/// time (its whole buffer).
pub const HTTP_SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;
/// Nice value of a snapshot download's thread: below the reactors on a busy
/// host (measured: benches/snapshot_download.sh).
pub const HTTP_SNAPSHOT_NICE: i32 = 10;
/// A snapshot download whose client accepted no byte for this long is
/// dropped (frees its slot).
pub const HTTP_SNAPSHOT_WRITE_STALL_TIMEOUT_MS: u64 = 30_000;
/// `raftfs status`: time to connect to one member and get its answer.
pub const STATUS_PROBE_TIMEOUT_MS: u64 = 1_000;
/// Largest status report (or membership answer) a node sends on its peer
/// port: room for a configuration of `MEMBERS_MAX` members with the
/// longest addresses.
pub const STATUS_REPORT_BYTES_MAX: usize = 32 << 10;

const _: () = assert!(NAME_BYTES_MAX < LINE_BYTES_MAX);
const _: () = assert!(FILE_BYTES_MAX_DEFAULT <= FILE_BYTES_MAX_CEILING);
const _: () = assert!(APPEND_BYTES_MAX >= ENTRY_BYTES_MAX);
const _: () = assert!(CONN_READ_RESERVED_BYTES_MAX >= FILE_BYTES_MAX_DEFAULT);
const _: () = assert!(READ_REPLY_HEADER_BYTES_MAX >= 9 + 3 * 21 + 2 + 2);
const _: () = assert!(PEER_FRAME_BYTES_MAX > FILE_BYTES_MAX_CEILING + APPEND_BYTES_MAX);
const _: () = assert!(PEER_QUEUE_BYTES_MAX >= 2 * APPEND_BYTES_MAX);
const _: () = assert!(WAL_RECORD_BYTES_MAX >= FILE_BYTES_MAX_CEILING + APPEND_BYTES_MAX);
const _: () = assert!(WAL_RECORD_BYTES_MAX < u32::MAX as usize);
const _: () = assert!((WAL_BUFFER_BYTES_MAX as u64) < WAL_SEGMENT_BYTES_MAX);
const _: () = assert!(COMMAND_TIMEOUT_MS > 10 * TICK_MS);
const _: () = assert!(
    SNAPSHOT_CHUNK_BYTES_MAX as usize * SNAPSHOT_CHUNKS_INFLIGHT_MAX <= PEER_QUEUE_BYTES_MAX / 4
);
const _: () = assert!((SNAPSHOT_CHUNK_BYTES_MAX as usize) < PEER_FRAME_BYTES_MAX);
const _: () = assert!(SNAPSHOTS_KEPT >= 2);
const _: () = assert!(HTTP_SNAPSHOT_DOWNLOADS_MAX >= 1 && HTTP_SNAPSHOT_CHUNK_BYTES >= 4 << 10);
const _: () = assert!(CLUSTER_TIME_STAMP_INTERVAL_MS >= TICK_MS);
const _: () = assert!(WATCHES_MAX >= 10_000 && WATCH_PASSES_PER_TURN_MAX >= 1);
const _: () = assert!(PEER_RECONNECT_MIN_MS <= PEER_RECONNECT_MAX_MS);
const _: () = assert!(PEER_REFUSE_REASON_BYTES_MAX + 64 <= PEER_HANDSHAKE_BYTES_MAX);
const _: () = assert!(PEER_HANDSHAKE_BYTES_MAX < PEER_FRAME_BYTES_MAX);

// ---- Membership change (src/raft/membership.rs) ----

/// Most members (voters and learners) one configuration holds: SPEC §1's
/// largest cluster. With the members a leader still tells of their removal
/// (`RETIRING_TICKS_MAX`) it never holds more than this, so one node needs
/// at most `MEMBERS_MAX - 1` peer links.
pub const MEMBERS_MAX: usize = 9;
/// A removed member's (id, incarnation) is remembered in the configuration
/// (so that data dir is refused for good, SPEC §3) for this many removals.
pub const REMOVED_MEMBERS_REMEMBERED_MAX: usize = 16;
/// Longest member address (`peer`, `client`, `metrics`) a configuration
/// entry carries.
pub const MEMBER_ADDRESS_BYTES_MAX: usize = 255;
/// A learner counts as caught up (and may be promoted to voter) when its
/// log matches the leader's through at most this many entries below the
/// leader's commit index, and it answered the leader within the last
/// election timeout (it is not being sent a snapshot).
pub const PROMOTION_LAG_ENTRIES_MAX: u64 = 1_000;
/// A leader keeps replicating to a member it removed for this many ticks,
/// so the member learns of its removal, commits it and stops (it is
/// counted in no quorum meanwhile).
pub const RETIRING_TICKS_MAX: u64 = 500;
/// `raftfs member`: how long a command tries (finding the leader, retrying
/// during elections and leadership handovers) before it gives up.
pub const MEMBER_COMMAND_TIMEOUT_MS: u64 = 30_000;
/// TLS (peer links, a TLS client port): encrypted bytes one connection's
/// rustls may hold unsent (one write's worth; a write waits while any are
/// left), and plaintext written before the handshake ends.
pub const TLS_BUFFER_BYTES_MAX: usize = 64 << 10;
/// `raftfs certs`: how long the certificates it makes are valid.
pub const CERT_VALIDITY_YEARS: i32 = 10;

const _: () = assert!(MEMBERS_MAX - 1 <= PEER_LINKS_MAX);
const _: () = assert!(
    MEMBERS_MAX * (3 * MEMBER_ADDRESS_BYTES_MAX + 256) + (4 << 10) <= STATUS_REPORT_BYTES_MAX
);
const _: () = assert!(MEMBER_ADDRESS_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(MEMBERS_MAX <= u8::MAX as usize);
const _: () = assert!(REMOVED_MEMBERS_REMEMBERED_MAX <= u8::MAX as usize);

// ---- Client connections and the memory held for them (src/net/conn.rs,
// src/net/reactor.rs; config keys `max_client_connections` and
// `max_client_buffer_bytes`) ----

/// Default for `max_client_connections`: client connections held at once;
/// past it a new connection is answered `ERR_INTERNAL` and closed.
pub const CLIENT_CONNECTIONS_MAX_DEFAULT: usize = 20_000;
/// Ceiling for the configurable `max_client_connections`.
pub const CLIENT_CONNECTIONS_MAX_CEILING: usize = 1_000_000;
/// Descriptors kept for everything but clients (listeners, peer links, WAL
/// and snapshot files, HTTP): the node holds at most RLIMIT_NOFILE minus
/// this many clients, whatever `max_client_connections` says.
pub const CLIENT_FDS_RESERVED: u64 = 256;
/// Default for `max_client_buffer_bytes`: the budget of bytes held for all
/// clients together (unparsed input, unanswered commands' reservations,
/// queued answers). Over it, client sockets are not read (see
/// `CONN_INPUT_BYTES_OVER_BUDGET`).
pub const CLIENT_BUFFER_BYTES_DEFAULT: usize = 256 << 20;
/// Ceiling for the configurable `max_client_buffer_bytes`.
pub const CLIENT_BUFFER_BYTES_CEILING: usize = 64 << 30;
/// Over the budget, a connection with no command outstanding and no answer
/// queued may still read this much input (so a client sending one small
/// command at a time keeps being served while others hold the budget);
/// the others are not read until the budget frees.
pub const CONN_INPUT_BYTES_OVER_BUDGET: usize = 4 << 10;
/// Bytes read from all client sockets in one reactor turn; the connections
/// not read yet are read first next turn (a burst of large writes from many
/// clients costs one turn a bounded copy, not hundreds of MB). Short turns
/// are what other clients wait for: with 4 MiB, a well-behaved client's p99
/// during 2,000 partial 1 MiB writes was 13-30 ms on a loaded machine, with
/// 1 MiB 6-7 ms, write throughput unchanged.
pub const CLIENT_READ_BYTES_PER_TURN_MAX: usize = 1 << 20;
/// Connections waiting for the budget that are resumed in one turn once it
/// frees (the rest next turn, in arrival order).
pub const BUDGET_RESUMES_PER_TURN_MAX: usize = 256;
/// A connection whose queued answers reach `CONN_WRITE_QUEUE_BYTES_MAX` and
/// whose socket then takes no byte for this long is closed (a client that
/// does not read its answers), with a log line.
pub const CONN_WRITE_STALL_TIMEOUT_MS: u64 = 10_000;
/// How often the reactor looks for such connections (and re-checks its
/// count of client bytes).
pub const CONN_STALL_CHECK_INTERVAL_MS: u64 = 1_000;
/// Refused connections and write-stall closes are logged at most once per
/// this interval each, with the count since the last line.
pub const CLIENT_LIMIT_LOG_INTERVAL_MS: u64 = 1_000;

const _: () = assert!(CLIENT_CONNECTIONS_MAX_DEFAULT <= CLIENT_CONNECTIONS_MAX_CEILING);
const _: () = assert!(CLIENT_BUFFER_BYTES_DEFAULT <= CLIENT_BUFFER_BYTES_CEILING);
const _: () = assert!(CONN_INPUT_BYTES_OVER_BUDGET > LINE_BYTES_MAX + 2);
const _: () = assert!(CLIENT_READ_BYTES_PER_TURN_MAX >= CONN_READ_BYTES_PER_TURN_MAX);
const _: () = assert!(CONN_WRITE_STALL_TIMEOUT_MS >= 2 * CONN_STALL_CHECK_INTERVAL_MS);
