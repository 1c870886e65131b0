//! One client connection: a read buffer in, ordered reply slots, a bounded
//! queue of reply bytes out.
//!
//! Invariants:
//! - Replies leave in the order the commands arrived: every parsed command
//!   takes the next sequence number and a slot; a slot is filled whenever its
//!   answer is known (answers may complete out of order) and only the filled
//!   prefix of the slots moves to the output queue.
//! - Memory is bounded: the connection is not read (`wants_read` is false)
//!   while its output queue holds more than `CONN_WRITE_QUEUE_BYTES_MAX` bytes,
//!   more than `CONN_PENDING_COMMANDS_MAX` answers are outstanding, or its
//!   unanswered commands have reserved more than `CONN_READ_RESERVED_BYTES_MAX`;
//!   unread input stays in the kernel's socket buffer, which is what pushes
//!   back on the client. The reservation matters because a read's answer
//!   is a copy of the file made before the output queue is checked: without
//!   it, thousands of pipelined reads of a large file (from a client that
//!   reads no answers) would all be copied in one turn.
//! - The read buffer never grows past the limit the reactor passes to
//!   `read_available` (one largest command, or less while the node is over
//!   its client budget); `held_bytes` is what the reactor counts against
//!   that budget, and it changes only through this type's methods.
//! - An idle connection holds no read buffer: an empty buffer is released
//!   when a read finds nothing, so 10,000 idle clients cost no buffer memory.
//! - Reply bytes are `Bytes` handed over without a copy and written with
//!   vectored writes. Socket reads go through `receive_into_spare_capacity`
//!   (plain) or `Stream::read_into` (TLS) and writes through `flush` only.
//! - On a TLS client port the stream is `Stream::Tls` (`net::tls`): output
//!   rustls still holds counts as unflushed (`flush`, `is_finished`).

use crate::limits;
use crate::net::tls::Stream;
use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Most slices handed to one `writev`.
const WRITE_SLICES_MAX: usize = 64;
/// Bytes reserved in the read buffer before each `read`.
const READ_CHUNK_BYTES: usize = 16 << 10;

pub struct Connection {
    pub stream: Stream,
    /// Unique for the life of the process; slab keys are reused, ids never.
    pub id: u64,
    pub read_buffer: BytesMut,
    /// Answers of commands `head_seq..next_seq`.
    slots: VecDeque<Slot>,
    /// Sum of the `reserved_bytes` of the unanswered slots.
    reserved_bytes: usize,
    /// Sum of the `budget_bytes` of the unanswered slots: what they count
    /// against the node's client budget.
    budget_bytes: usize,
    /// Bytes of answers known but waiting in their slots for an earlier
    /// command's answer.
    parked_bytes: usize,
    head_seq: u64,
    next_seq: u64,
    output: VecDeque<Bytes>,
    output_bytes: usize,
    /// Close once the output is flushed (a malformed command that closes).
    pub closing: bool,
    /// The peer closed its side; no more input will come.
    pub input_closed: bool,
    /// Reading stopped for backpressure; resume without waiting for an event.
    pub paused: bool,
    /// Waiting in the reactor's queue for the client budget to free.
    pub budget_waiting: bool,
    /// Its read buffer is full at its limit while its own commands are
    /// outstanding: read again once an answer comes.
    pub held_back: bool,
    /// On the reactor's list of connections serviced next turn.
    pub scheduled: bool,
    /// The peer closed its side or the socket failed (an event said so):
    /// read it to its end whatever the client budget.
    pub hung_up: bool,
    /// When the socket last took bytes (or the queue last became non-empty).
    last_drain: Instant,
}

/// One command's place in the reply order.
struct Slot {
    /// The answer; `None` = not known yet.
    reply: Option<Bytes>,
    /// Bytes reserved for it until it is answered against this
    /// connection's limit: its answer's most (reads, watches) or its
    /// content (writes).
    reserved_bytes: usize,
    /// What it counts against the node's client budget until it is
    /// answered (`take_slot`).
    budget_bytes: usize,
    /// The command's kind and when it was read, for the latency metric.
    timer: Option<(usize, Instant)>,
}

pub enum ReadStatus {
    /// Everything available was read.
    Open,
    /// The per-turn budget was used with input possibly left in the socket:
    /// read again next turn without waiting for an event (readiness is
    /// edge-triggered, so no new event comes for bytes already there).
    More,
    /// The peer closed its writing side.
    Closed,
    /// The read buffer reached the caller's limit; input may be left in the
    /// socket.
    Limited,
}

impl Connection {
    pub fn new(stream: Stream, id: u64) -> Connection {
        Connection {
            stream,
            id,
            read_buffer: BytesMut::new(),
            slots: VecDeque::new(),
            reserved_bytes: 0,
            budget_bytes: 0,
            parked_bytes: 0,
            head_seq: 0,
            next_seq: 0,
            output: VecDeque::new(),
            output_bytes: 0,
            closing: false,
            input_closed: false,
            paused: false,
            budget_waiting: false,
            held_back: false,
            hung_up: false,
            scheduled: false,
            last_drain: Instant::now(),
        }
    }

    /// Bytes this connection holds against the node's client budget: unparsed
    /// input, the budget shares of unanswered commands, answers waiting for
    /// an earlier one, queued answers.
    pub fn held_bytes(&self) -> usize {
        self.read_buffer.len() + self.budget_bytes + self.parked_bytes + self.output_bytes
    }

    /// Its answers have filled the output queue to `CONN_WRITE_QUEUE_BYTES_MAX`
    /// and the socket has taken nothing for `stall`: a client that does not
    /// read its answers.
    pub fn write_stalled(&self, now: Instant, stall: std::time::Duration) -> bool {
        self.output_bytes >= limits::CONN_WRITE_QUEUE_BYTES_MAX
            && now.saturating_duration_since(self.last_drain) >= stall
    }

    /// Bytes the kernel holds for this socket that have not been read
    /// (`FIONREAD`; 0 if it cannot tell). Behind TLS this counts encrypted
    /// bytes, which only overstates the plaintext to come.
    pub fn unread_bytes(&self) -> usize {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int, to the local we pass.
        let result = unsafe {
            libc::ioctl(
                self.stream.socket().as_raw_fd(),
                libc::FIONREAD,
                &mut unread,
            )
        };
        if result == 0 {
            usize::try_from(unread).unwrap_or(0)
        } else {
            0
        }
    }

    /// Queued answer bytes.
    pub fn output_bytes(&self) -> usize {
        self.output_bytes
    }

    /// Whether to read and parse more input from this client now.
    pub fn wants_read(&self) -> bool {
        !self.closing
            && self.output_bytes < limits::CONN_WRITE_QUEUE_BYTES_MAX
            && self.slots.len() < limits::CONN_PENDING_COMMANDS_MAX
            && self.reserved_bytes < limits::CONN_READ_RESERVED_BYTES_MAX
    }

    /// Read from the socket until it would block, the per-turn budget is
    /// used, or the read buffer holds `limit` bytes of unparsed input.
    pub fn read_available(&mut self, limit: usize) -> io::Result<ReadStatus> {
        let mut read_bytes = 0;
        while read_bytes < limits::CONN_READ_BYTES_PER_TURN_MAX {
            let room = limit.saturating_sub(self.read_buffer.len());
            if room == 0 {
                return Ok(ReadStatus::Limited);
            }
            let received = match &mut self.stream {
                Stream::Plain(socket) => {
                    receive_into_spare_capacity(socket, &mut self.read_buffer, room)
                }
                Stream::Tls(_) => self
                    .stream
                    .read_into(&mut self.read_buffer, READ_CHUNK_BYTES.min(room)),
            };
            match received {
                Ok(0) => {
                    self.input_closed = true;
                    return Ok(ReadStatus::Closed);
                }
                Ok(n) => read_bytes += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.read_buffer.is_empty() {
                        // Idle: give the chunk back rather than pin it.
                        self.read_buffer = BytesMut::new();
                    }
                    return Ok(ReadStatus::Open);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ReadStatus::More)
    }

    /// Take a slot for the next command; its answer goes to `fill(seq, ..)`.
    /// Until the answer is known, `reserved_bytes` (the most a read's answer
    /// may take, a write's content) is held against this connection's limit
    /// and `budget_bytes` (what the command is expected to hold: a write's
    /// content, a read's file as it is now) against the node's client
    /// budget.
    pub fn take_slot(&mut self, reserved_bytes: usize, budget_bytes: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.reserved_bytes += reserved_bytes;
        self.budget_bytes += budget_bytes;
        self.slots.push_back(Slot {
            reply: None,
            reserved_bytes,
            budget_bytes,
            timer: None,
        });
        seq
    }

    /// Remember that command `seq` (of metric kind `kind`) was read at
    /// `read_at`; `fill` hands both back with its answer.
    pub fn start_timer(&mut self, seq: u64, kind: usize, read_at: Instant) {
        let position = seq.wrapping_sub(self.head_seq) as usize;
        if let Some(slot) = self.slots.get_mut(position) {
            slot.timer = Some((kind, read_at));
        }
    }

    /// Record the answer of command `seq`. Unknown or already answered
    /// sequence numbers are ignored (a late answer after a timeout).
    /// Returns the slot's timer (`start_timer`) when this filled it.
    pub fn fill(&mut self, seq: u64, reply: Bytes) -> Option<(usize, Instant)> {
        if seq < self.head_seq {
            return None;
        }
        let position = (seq - self.head_seq) as usize;
        let mut timer = None;
        if let Some(slot) = self.slots.get_mut(position) {
            if slot.reply.is_none() {
                self.parked_bytes += reply.len();
                slot.reply = Some(reply);
                self.reserved_bytes -= slot.reserved_bytes;
                self.budget_bytes -= slot.budget_bytes;
                slot.reserved_bytes = 0;
                slot.budget_bytes = 0;
                timer = slot.timer.take();
            }
        }
        while self.slots.front().is_some_and(|slot| slot.reply.is_some()) {
            if let Some(Slot {
                reply: Some(reply), ..
            }) = self.slots.pop_front()
            {
                self.parked_bytes -= reply.len();
                self.head_seq += 1;
                if self.output.is_empty() {
                    self.last_drain = Instant::now();
                }
                self.output_bytes += reply.len();
                self.output.push_back(reply);
            }
        }
        timer
    }

    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Write queued replies until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.stream.has_pending_output() {
            match self.stream.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                other => other?,
            }
        }
        while !self.output.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .output
                .iter()
                .take(WRITE_SLICES_MAX)
                .map(|b| IoSlice::new(b))
                .collect();
            match self.stream.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    self.output_bytes -= written;
                    self.last_drain = Instant::now();
                    while written > 0 {
                        let Some(front) = self.output.front_mut() else {
                            break;
                        };
                        if written >= front.len() {
                            written -= front.len();
                            self.output.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Nothing more will happen on this connection: close it. (The reactor
    /// drops a partial command left in the read buffer once input closed.)
    pub fn is_finished(&self) -> bool {
        let drained = self.output.is_empty() && !self.stream.has_pending_output();
        let input_done = self.input_closed && self.read_buffer.is_empty();
        drained && self.slots.is_empty() && (self.closing || input_done)
    }
}

/// One `recv` of at most `room` bytes straight into the buffer's spare
/// capacity (at least `READ_CHUNK_BYTES` of it, or `room` if less), without
/// zero-filling it first: the profile showed the zero-fill of a 16 KiB chunk
/// before every read costing a third of the leader's instructions per write.
fn receive_into_spare_capacity(
    stream: &TcpStream,
    buffer: &mut BytesMut,
    room: usize,
) -> io::Result<usize> {
    buffer.reserve(READ_CHUNK_BYTES.min(room));
    let spare = buffer.spare_capacity_mut();
    let usable = spare.len().min(room);
    let spare = &mut spare[..usable];
    // SAFETY: recv(2) writes at most `spare.len()` bytes into `spare`, memory
    // this buffer owns and we borrow exclusively; nothing reads it before the
    // kernel has written it.
    let received = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast::<libc::c_void>(),
            spare.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    // SAFETY: the kernel initialised exactly `received` bytes right after the
    // buffer's current length, within its capacity.
    unsafe { buffer.set_len(buffer.len() + received) };
    Ok(received)
}
