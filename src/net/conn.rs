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
//!   more than `CONN_PENDING_COMMANDS_MAX` answers are outstanding, or more
//!   than `CONN_PENDING_READS_MAX` reads are (a read's answer, a copy of the
//!   file, is made before it can be sent, so reads are what a client that
//!   pipelines without reading would pile up); unread input stays in the
//!   kernel's socket buffer, which is what pushes back on the client.
//! - An idle connection holds no read buffer: a read into an empty buffer
//!   goes to a stack chunk first, and the reactor releases a buffer it has
//!   emptied (`release_empty_read_buffer`), so 10,000 idle clients cost
//!   kilobytes, not 16 KiB each.
//! - Reply bytes are `Bytes` handed over without a copy and written with
//!   vectored writes.

use crate::limits;
use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

/// Most slices handed to one `writev`.
const WRITE_SLICES_MAX: usize = 64;
/// Bytes reserved in the read buffer before each `read`.
const READ_CHUNK_BYTES: usize = 16 << 10;

pub struct Connection {
    pub stream: TcpStream,
    /// Unique for the life of the process; slab keys are reused, ids never.
    pub id: u64,
    pub read_buffer: BytesMut,
    /// Answers of commands `head_seq..next_seq`; `None` = not known yet.
    slots: VecDeque<Option<Bytes>>,
    /// Whether each slot's command is a read (same positions as `slots`).
    slot_is_read: VecDeque<bool>,
    /// Reads whose answer is not known yet.
    pending_reads: usize,
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
}

pub enum ReadStatus {
    /// Everything available was read (or the per-turn budget was used).
    Open,
    /// The peer closed its writing side.
    Closed,
}

impl Connection {
    pub fn new(stream: TcpStream, id: u64) -> Connection {
        Connection {
            stream,
            id,
            read_buffer: BytesMut::new(),
            slots: VecDeque::new(),
            slot_is_read: VecDeque::new(),
            pending_reads: 0,
            head_seq: 0,
            next_seq: 0,
            output: VecDeque::new(),
            output_bytes: 0,
            closing: false,
            input_closed: false,
            paused: false,
        }
    }

    /// Whether to read and parse more input from this client now.
    pub fn wants_read(&self) -> bool {
        !self.closing
            && self.output_bytes < limits::CONN_WRITE_QUEUE_BYTES_MAX
            && self.slots.len() < limits::CONN_PENDING_COMMANDS_MAX
            && self.pending_reads < limits::CONN_PENDING_READS_MAX
    }

    /// Frees the read buffer's allocation once everything in it was framed
    /// (the framed commands keep their own references to what they need).
    pub fn release_empty_read_buffer(&mut self) {
        if self.read_buffer.is_empty() && self.read_buffer.capacity() > 0 {
            self.read_buffer = BytesMut::new();
        }
    }

    /// Read from the socket until it would block, the per-turn budget is
    /// used, or the read buffer holds enough unparsed input.
    pub fn read_available(&mut self) -> io::Result<ReadStatus> {
        let mut read_bytes = 0;
        if self.read_buffer.is_empty() {
            // Most wakeups of an idle connection find nothing, or a little:
            // read into the stack and allocate only for what came.
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            loop {
                match self.stream.read(&mut chunk) {
                    Ok(0) => {
                        self.input_closed = true;
                        return Ok(ReadStatus::Closed);
                    }
                    Ok(n) => {
                        self.read_buffer.extend_from_slice(&chunk[..n]);
                        read_bytes += n;
                        if n < READ_CHUNK_BYTES {
                            return Ok(ReadStatus::Open);
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(ReadStatus::Open);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        while read_bytes < limits::CONN_READ_BYTES_PER_TURN_MAX {
            let old_length = self.read_buffer.len();
            self.read_buffer.resize(old_length + READ_CHUNK_BYTES, 0);
            let result = self.stream.read(&mut self.read_buffer[old_length..]);
            match result {
                Ok(0) => {
                    self.read_buffer.truncate(old_length);
                    self.input_closed = true;
                    return Ok(ReadStatus::Closed);
                }
                Ok(n) => {
                    self.read_buffer.truncate(old_length + n);
                    read_bytes += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_buffer.truncate(old_length);
                    return Ok(ReadStatus::Open);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.read_buffer.truncate(old_length);
                }
                Err(e) => {
                    self.read_buffer.truncate(old_length);
                    return Err(e);
                }
            }
        }
        Ok(ReadStatus::Open)
    }

    /// Take a slot for the next command; its answer goes to `fill(seq, ..)`.
    pub fn take_slot(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(None);
        self.slot_is_read.push_back(false);
        seq
    }

    /// Marks the command in slot `seq` (just taken) as a read, so it counts
    /// against `CONN_PENDING_READS_MAX` until answered.
    pub fn mark_read(&mut self, seq: u64) {
        if let Some(is_read) = seq
            .checked_sub(self.head_seq)
            .and_then(|position| self.slot_is_read.get_mut(position as usize))
        {
            if !*is_read {
                *is_read = true;
                self.pending_reads += 1;
            }
        }
    }

    /// Record the answer of command `seq`. Unknown or already answered
    /// sequence numbers are ignored (a late answer after a timeout).
    pub fn fill(&mut self, seq: u64, reply: Bytes) {
        if seq < self.head_seq {
            return;
        }
        let position = (seq - self.head_seq) as usize;
        if let Some(slot) = self.slots.get_mut(position) {
            if slot.is_none() {
                *slot = Some(reply);
                if self.slot_is_read.get(position) == Some(&true) {
                    self.pending_reads -= 1;
                }
            }
        }
        while let Some(Some(_)) = self.slots.front() {
            if let Some(Some(reply)) = self.slots.pop_front() {
                self.slot_is_read.pop_front();
                self.head_seq += 1;
                self.output_bytes += reply.len();
                self.output.push_back(reply);
            }
        }
    }

    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Write queued replies until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
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
        let drained = self.output.is_empty();
        drained && self.slots.is_empty() && (self.closing || self.input_closed)
    }
}
