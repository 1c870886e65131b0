//! A bounded queue of encoded frames waiting to be written to one peer.
//!
//! Owns: the frames of one outbound link, the write position inside the
//! front frame, and the drop policy. A frame is one or more segments
//! (`Bytes`) written back to back: an AppendEntries shares its long entry
//! data with the log and with the other followers' frames (see
//! `wire::encode_envelope`), and one vectored write takes segments of many
//! frames. Invariants: `queued_bytes()` (bytes not yet written) never
//! exceeds the queue's maximum; only whole frames are ever dropped, and
//! never the front frame once part of it is on the wire, so the byte stream
//! stays a sequence of whole frames. When a new frame does not fit, the
//! oldest unstarted frames are dropped first (Raft retransmits, and the
//! newest messages carry the freshest state); a frame that cannot fit even
//! then is dropped itself. Every drop is counted.
//!
//! Leaves out: sockets (it writes to any `io::Write`) and what to do when the
//! writer fails (the link closes and clears the queue).

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Slices handed to one vectored write (Linux takes up to 1024).
const WRITE_SLICES_MAX: usize = 128;

/// One queued frame: how many of the queue's segments it spans (from the
/// front, those not yet fully written) and its bytes not yet written.
#[derive(Debug)]
struct QueuedFrame {
    segments: usize,
    unwritten_bytes: usize,
    /// Part of it is on the wire: it must not be dropped.
    started: bool,
}

#[derive(Debug)]
pub struct SendQueue {
    /// The segments of every queued frame, in write order; never empty ones.
    segments: VecDeque<Bytes>,
    frames: VecDeque<QueuedFrame>,
    /// Bytes of the front segment already written.
    front_written_bytes: usize,
    /// Bytes still to be written, over all frames.
    queued_bytes: usize,
    max_bytes: usize,
    dropped_frames: u64,
}

/// What one `write_to` achieved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteProgress {
    pub bytes: usize,
    pub frames: usize,
    /// The writer stopped with `WouldBlock` before the queue was empty.
    pub blocked: bool,
}

impl SendQueue {
    pub fn new(max_bytes: usize) -> Self {
        SendQueue {
            segments: VecDeque::new(),
            frames: VecDeque::new(),
            front_written_bytes: 0,
            queued_bytes: 0,
            max_bytes,
            dropped_frames: 0,
        }
    }

    /// Queues a frame of one segment; see `push_segments`.
    #[cfg(test)]
    pub fn push(&mut self, frame: Bytes) -> bool {
        self.push_segments(&mut vec![frame])
    }

    /// Queues one frame made of `segments` (written in order; the vector is
    /// left empty), dropping older unstarted frames if needed to stay within
    /// the bound. Returns false if this frame itself was dropped.
    pub fn push_segments(&mut self, segments: &mut Vec<Bytes>) -> bool {
        segments.retain(|segment| !segment.is_empty());
        let frame_bytes: usize = segments.iter().map(Bytes::len).sum();
        if frame_bytes == 0 || frame_bytes > self.max_bytes {
            segments.clear();
            self.dropped_frames += 1;
            return false;
        }
        while self.queued_bytes + frame_bytes > self.max_bytes {
            let oldest_unstarted = match self.frames.front() {
                Some(front) if front.started => 1,
                _ => 0,
            };
            let first_segment: usize = self
                .frames
                .iter()
                .take(oldest_unstarted)
                .map(|frame| frame.segments)
                .sum();
            match self.frames.remove(oldest_unstarted) {
                Some(dropped) => {
                    self.segments
                        .drain(first_segment..first_segment + dropped.segments);
                    self.queued_bytes -= dropped.unwritten_bytes;
                    self.dropped_frames += 1;
                }
                None => {
                    // Only the partly written front frame is left and the new
                    // one still does not fit beside it.
                    segments.clear();
                    self.dropped_frames += 1;
                    return false;
                }
            }
        }
        self.frames.push_back(QueuedFrame {
            segments: segments.len(),
            unwritten_bytes: frame_bytes,
            started: false,
        });
        self.segments.extend(segments.drain(..));
        self.queued_bytes += frame_bytes;
        debug_assert!(self.queued_bytes <= self.max_bytes);
        true
    }

    /// Drops every frame, including a partly written one (the connection it
    /// was going to is gone). Returns how many frames were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.frames.len();
        self.dropped_frames += dropped as u64;
        self.frames.clear();
        self.segments.clear();
        self.front_written_bytes = 0;
        self.queued_bytes = 0;
        dropped
    }

    /// Writes queued bytes with vectored writes until the queue is empty or
    /// the writer would block. Other errors are returned as they are.
    pub fn write_to(&mut self, writer: &mut impl Write) -> io::Result<WriteProgress> {
        let mut progress = WriteProgress::default();
        while !self.segments.is_empty() {
            let mut slices: [IoSlice<'_>; WRITE_SLICES_MAX] = [IoSlice::new(&[]); WRITE_SLICES_MAX];
            let mut count = 0;
            for (position, segment) in self.segments.iter().take(WRITE_SLICES_MAX).enumerate() {
                let start = if position == 0 {
                    self.front_written_bytes
                } else {
                    0
                };
                slices[count] = IoSlice::new(&segment[start..]);
                count += 1;
            }
            match writer.write_vectored(&slices[..count]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer socket took no bytes",
                    ))
                }
                Ok(written) => {
                    progress.bytes += written;
                    progress.frames += self.advance(written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    progress.blocked = true;
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(progress)
    }

    /// Marks `written` bytes as sent; returns the frames completed.
    fn advance(&mut self, mut written: usize) -> usize {
        self.queued_bytes -= written;
        let mut completed = 0;
        while written > 0 {
            let (Some(segment), Some(frame)) = (self.segments.front(), self.frames.front_mut())
            else {
                break;
            };
            let remaining = segment.len() - self.front_written_bytes;
            let taken = written.min(remaining);
            written -= taken;
            frame.unwritten_bytes -= taken;
            frame.started = true;
            if taken < remaining {
                self.front_written_bytes += taken;
                continue;
            }
            self.segments.pop_front();
            self.front_written_bytes = 0;
            frame.segments -= 1;
            if frame.segments == 0 {
                self.frames.pop_front();
                completed += 1;
            }
        }
        completed
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call and then blocks
    /// after `budget` bytes in total.
    struct Trickle {
        written: Vec<u8>,
        chunk: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let take = bytes.len().min(self.chunk).min(self.budget);
            if take == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.budget -= take;
            self.written.extend_from_slice(&bytes[..take]);
            Ok(take)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(byte: u8, length: usize) -> Bytes {
        Bytes::from(vec![byte; length])
    }

    #[test]
    fn writes_whole_frames_in_order_through_partial_writes() {
        let mut queue = SendQueue::new(1000);
        for byte in 0..10 {
            assert!(queue.push(frame(byte, 17)));
        }
        let mut writer = Trickle {
            written: Vec::new(),
            chunk: 5,
            budget: 100,
        };
        let progress = queue.write_to(&mut writer).unwrap();
        assert_eq!(
            progress,
            WriteProgress {
                bytes: 100,
                frames: 5,
                blocked: true
            }
        );
        assert_eq!(queue.queued_bytes(), 70);
        writer.budget = usize::MAX;
        let progress = queue.write_to(&mut writer).unwrap();
        assert_eq!(
            progress,
            WriteProgress {
                bytes: 70,
                frames: 5,
                blocked: false
            }
        );
        let expected: Vec<u8> = (0..10).flat_map(|byte| vec![byte; 17]).collect();
        assert_eq!(writer.written, expected);
        assert!(queue.is_empty());
    }

    #[test]
    fn drops_oldest_unstarted_frames_and_never_the_started_one() {
        let mut queue = SendQueue::new(100);
        for byte in 0..4 {
            assert!(queue.push(frame(byte, 25)));
        }
        let mut writer = Trickle {
            written: Vec::new(),
            chunk: 10,
            budget: 10,
        };
        queue.write_to(&mut writer).unwrap();
        // Frame 0 is on the wire; making room for frame 4 drops frame 1.
        assert!(queue.push(frame(4, 25)));
        assert_eq!(queue.dropped_frames(), 1);
        assert!(queue.queued_bytes() <= 100);
        writer.budget = usize::MAX;
        writer.chunk = usize::MAX;
        queue.write_to(&mut writer).unwrap();
        let expected: Vec<u8> = [0u8, 2, 3, 4]
            .iter()
            .flat_map(|byte| vec![*byte; 25])
            .collect();
        assert_eq!(writer.written, expected);
    }

    #[test]
    fn a_frame_that_cannot_fit_is_dropped_itself() {
        let mut queue = SendQueue::new(100);
        assert!(!queue.push(frame(9, 101)));
        assert!(queue.push(frame(1, 90)));
        let mut writer = Trickle {
            written: Vec::new(),
            chunk: 10,
            budget: 10,
        };
        queue.write_to(&mut writer).unwrap();
        // 80 bytes of the started frame remain; 30 more cannot fit beside them.
        assert!(!queue.push(frame(2, 30)));
        assert_eq!(queue.dropped_frames(), 2);
        assert_eq!(queue.queued_bytes(), 80);
        assert_eq!(queue.clear(), 1);
        assert_eq!(queue.queued_bytes(), 0);
    }

    /// Frames of several segments, cut at random, through partial writes
    /// and drops: the stream is whole frames in order, none lost uncounted.
    #[test]
    fn segmented_frames_stay_whole_through_partial_writes_and_drops() {
        let mut queue = SendQueue::new(600);
        let mut writer = Trickle {
            written: Vec::new(),
            chunk: 7,
            budget: 0,
        };
        let mut state = 11u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut pushed = 0u64;
        for id in 0..2000u32 {
            // A frame: its length (u16 LE), then its id's low byte repeated.
            let body_bytes = next() % 250 + 1;
            let mut frame = (body_bytes as u16).to_le_bytes().to_vec();
            frame.extend(std::iter::repeat_n(id as u8, body_bytes));
            let mut segments = Vec::new();
            let mut rest = Bytes::from(frame);
            while !rest.is_empty() {
                let cut = (next() % 90).min(rest.len());
                segments.push(rest.split_to(cut));
            }
            queue.push_segments(&mut segments);
            assert!(segments.is_empty());
            pushed += 1;
            assert!(queue.queued_bytes() <= 600);
            writer.budget = next() % 200;
            queue.write_to(&mut writer).unwrap();
        }
        writer.budget = usize::MAX;
        queue.write_to(&mut writer).unwrap();
        assert!(queue.is_empty());
        let mut stream = &writer.written[..];
        let mut received = 0u64;
        let mut last_id: Option<u8> = None;
        while !stream.is_empty() {
            let body_bytes = usize::from(u16::from_le_bytes([stream[0], stream[1]]));
            let body = &stream[2..2 + body_bytes];
            assert!(body.iter().all(|byte| *byte == body[0]), "a torn frame");
            assert_ne!(Some(body[0]), last_id, "frames come once, in order");
            last_id = Some(body[0]);
            stream = &stream[2 + body_bytes..];
            received += 1;
        }
        assert!(queue.dropped_frames() > 0, "the test must exercise drops");
        assert_eq!(received + queue.dropped_frames(), pushed);
    }

    #[test]
    fn the_bound_holds_under_any_mix_of_pushes_and_writes() {
        let mut queue = SendQueue::new(1000);
        let mut state = 7u64;
        let mut writer = Trickle {
            written: Vec::new(),
            chunk: 13,
            budget: 0,
        };
        for _ in 0..5000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let length = (state >> 33) as usize % 400 + 1;
            queue.push(frame(0, length));
            assert!(queue.queued_bytes() <= 1000);
            writer.budget = (state >> 20) as usize % 64;
            queue.write_to(&mut writer).unwrap();
        }
    }
}
