//! The client side of the protocol (SPEC §2): parsing the server's answers.
//! The one reply parser of the project: `raftfs client`, `raftfs restore`,
//! `tools/loadgen` and the test harness all read answers with it.
//!
//! Owns: [`Reply`] (one answer, its content left out), [`ReplyParser`] (a
//! state machine fed arbitrary chunks of the byte stream) and [`read_reply`]
//! (one answer from a blocking reader, content included).
//!
//! Invariants:
//! - The parser holds back at most one partial reply line, at most
//!   [`REPLY_LINE_BYTES_MAX`]: the caller keeps the unconsumed bytes and feeds
//!   them again with more appended.
//! - Content is counted off as it arrives, never buffered, unless the parser
//!   keeps content ([`ReplyParser::keeping_content`]); then it holds the
//!   content of one answer, at most the bound it was given, checked against
//!   NUMBYTES before a byte is kept.
//! - A reply is emitted only once its content and the closing `\r\n` have
//!   been seen; bad input is a [`ReplyError`], never a panic.
//! - Lenient by default (a bare `\n` ends a line, as SPEC §2 lets clients
//!   send; extra spaces are skipped); [`ReplyParser::strict`] accepts only
//!   the byte-exact form a server must send (`\r\n`, single spaces, no
//!   leading zeros), for tests.
//!
//! Leaves out: sockets, redirects and retries (`crate::client`, loadgen's
//! `client`), and matching answers to commands (the callers).

use std::fmt;
use std::io::{self, BufRead};

use memchr::memchr;

use super::parse_decimal_u64;
use crate::limits::REPLY_LINE_BYTES_MAX;

/// One answer from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `CONTENTS VERSION NUMBYTES EXPREMAINING` (the content itself was
    /// consumed; a parser that keeps content hands it out with
    /// [`ReplyParser::take_content`]).
    Contents {
        version: u64,
        length_bytes: u64,
        expiry_remaining_s: u64,
    },
    /// `OK VERSION` (write, cas).
    OkVersion(u64),
    /// `OK` (delete).
    Ok,
    /// `ERR_FILE_NOT_FOUND`.
    FileNotFound,
    /// `ERR_VERSION CURRENTVERSION`.
    VersionMismatch(u64),
    /// `ERR_CMD_ERR`.
    CommandError,
    /// `ERR_INTERNAL`.
    Internal,
    /// `ERR_REDIRECT HOST:PORT`, the address as sent.
    Redirect(String),
}

impl fmt::Display for Reply {
    /// The answer's line exactly as a server sends it, without `\r\n`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Contents {
                version,
                length_bytes,
                expiry_remaining_s,
            } => write!(
                formatter,
                "CONTENTS {version} {length_bytes} {expiry_remaining_s}"
            ),
            Reply::OkVersion(version) => write!(formatter, "OK {version}"),
            Reply::Ok => formatter.write_str("OK"),
            Reply::FileNotFound => formatter.write_str("ERR_FILE_NOT_FOUND"),
            Reply::VersionMismatch(current) => write!(formatter, "ERR_VERSION {current}"),
            Reply::CommandError => formatter.write_str("ERR_CMD_ERR"),
            Reply::Internal => formatter.write_str("ERR_INTERNAL"),
            Reply::Redirect(address) => write!(formatter, "ERR_REDIRECT {address}"),
        }
    }
}

/// A byte stream that is not a sequence of replies; the connection cannot be
/// trusted after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// No line end within `REPLY_LINE_BYTES_MAX`.
    LineTooLong,
    /// A line that is no known reply (lossy text of the line, shortened).
    Unknown(String),
    /// Content not followed by `\r\n`.
    BadContentTerminator,
    /// A strict parser saw a reply not in its byte-exact form (a bare `\n`,
    /// extra spaces, leading zeros), shown lossily.
    NotExact(String),
    /// A parser keeping content was announced more than its bound.
    ContentTooLarge { length_bytes: u64, max_bytes: usize },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::LineTooLong => write!(
                formatter,
                "reply line longer than {REPLY_LINE_BYTES_MAX} bytes"
            ),
            ReplyError::Unknown(line) => write!(formatter, "unknown reply `{line}`"),
            ReplyError::BadContentTerminator => write!(formatter, "content not followed by \\r\\n"),
            ReplyError::NotExact(line) => write!(formatter, "reply not in its exact form: {line:?}"),
            ReplyError::ContentTooLarge {
                length_bytes,
                max_bytes,
            } => write!(
                formatter,
                "reply announces {length_bytes} bytes of content, more than the {max_bytes} accepted"
            ),
        }
    }
}

impl std::error::Error for ReplyError {}

impl From<ReplyError> for io::Error {
    fn from(error: ReplyError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a reply line.
    Line,
    /// Counting off content bytes of a `CONTENTS` reply.
    Content { remaining_bytes: u64, reply: Reply },
    /// Expecting the `\r\n` after content; `seen_carriage_return` once the `\r` came.
    Terminator {
        seen_carriage_return: bool,
        reply: Reply,
    },
}

/// Streaming reply parser; one per connection, reset when the connection is.
#[derive(Clone, Debug)]
pub struct ReplyParser {
    state: State,
    /// Only the byte-exact form is accepted.
    strict: bool,
    /// `Some(max)`: content is kept (at most `max` bytes), else skipped.
    content_bytes_max: Option<usize>,
    /// Content of the `CONTENTS` reply being parsed or last emitted.
    content: Vec<u8>,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser::new()
    }
}

impl ReplyParser {
    /// A lenient parser at the start of a stream that skips content.
    pub fn new() -> ReplyParser {
        ReplyParser {
            state: State::Line,
            strict: false,
            content_bytes_max: None,
            content: Vec::new(),
        }
    }

    /// This parser, keeping the content of each `CONTENTS` reply (at most
    /// `max_bytes`; a larger NUMBYTES is a [`ReplyError::ContentTooLarge`]).
    pub fn keeping_content(mut self, max_bytes: usize) -> ReplyParser {
        self.content_bytes_max = Some(max_bytes);
        self
    }

    /// This parser, accepting only replies in their byte-exact form.
    pub fn strict(mut self) -> ReplyParser {
        self.strict = true;
        self
    }

    /// Forgets any partial reply (for a new connection).
    pub fn reset(&mut self) {
        self.state = State::Line;
        self.content.clear();
    }

    /// True when no reply is partly parsed (nothing held in the state).
    pub fn is_idle(&self) -> bool {
        self.state == State::Line
    }

    /// The content of the last `CONTENTS` reply emitted (empty unless the
    /// parser keeps content); the parser's copy is left empty.
    pub fn take_content(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.content)
    }

    /// Feeds `input`, returning how many bytes were consumed and the reply
    /// they completed, if any. With `None`, every byte that could be used was
    /// consumed: the caller keeps `input[consumed..]` (a partial line) and
    /// calls again with more bytes appended. With `Some`, the caller calls
    /// again with `input[consumed..]` for the next reply.
    pub fn parse(&mut self, input: &[u8]) -> Result<(usize, Option<Reply>), ReplyError> {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            match &mut self.state {
                State::Line => {
                    let Some(newline) = memchr(b'\n', rest) else {
                        if rest.len() > REPLY_LINE_BYTES_MAX + 1 {
                            return Err(ReplyError::LineTooLong);
                        }
                        return Ok((consumed, None));
                    };
                    let raw_line = &rest[..newline];
                    let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
                    if line.len() > REPLY_LINE_BYTES_MAX {
                        return Err(ReplyError::LineTooLong);
                    }
                    consumed += newline + 1;
                    let reply = parse_line(line)?;
                    if self.strict
                        && (line.len() == raw_line.len() || reply.to_string().as_bytes() != line)
                    {
                        return Err(ReplyError::NotExact(lossy(raw_line)));
                    }
                    if let Reply::Contents { length_bytes, .. } = reply {
                        self.content.clear();
                        if let Some(max_bytes) = self.content_bytes_max {
                            if length_bytes > max_bytes as u64 {
                                return Err(ReplyError::ContentTooLarge {
                                    length_bytes,
                                    max_bytes,
                                });
                            }
                        }
                        self.state = State::Content {
                            remaining_bytes: length_bytes,
                            reply,
                        };
                    } else {
                        return Ok((consumed, Some(reply)));
                    }
                }
                State::Content {
                    remaining_bytes,
                    reply,
                } => {
                    // `taken <= rest.len()`, which is a usize.
                    let taken = (rest.len() as u64).min(*remaining_bytes) as usize;
                    if self.content_bytes_max.is_some() {
                        self.content.extend_from_slice(&rest[..taken]);
                    }
                    consumed += taken;
                    *remaining_bytes -= taken as u64;
                    if *remaining_bytes > 0 {
                        return Ok((consumed, None));
                    }
                    let reply = std::mem::replace(reply, Reply::Ok);
                    self.state = State::Terminator {
                        seen_carriage_return: false,
                        reply,
                    };
                }
                State::Terminator {
                    seen_carriage_return,
                    reply,
                } => {
                    let Some(&byte) = rest.first() else {
                        return Ok((consumed, None));
                    };
                    match (byte, *seen_carriage_return) {
                        (b'\r', false) => {
                            *seen_carriage_return = true;
                            consumed += 1;
                        }
                        (b'\n', true) => {
                            consumed += 1;
                            let reply = std::mem::replace(reply, Reply::Ok);
                            self.state = State::Line;
                            return Ok((consumed, Some(reply)));
                        }
                        _ => return Err(ReplyError::BadContentTerminator),
                    }
                }
            }
        }
    }
}

/// Reads one answer from `reader` with `parser`; for `CONTENTS` the content
/// is then in `parser.take_content()` (if the parser keeps content).
///
/// Consumes exactly the answer's bytes from `reader` (a line split across
/// reads is copied aside, at most `REPLY_LINE_BYTES_MAX` bytes), so raw reads
/// of the same reader may follow. A stream that ends before a whole answer
/// is an `UnexpectedEof` error; a stream that is no answer, `InvalidData`.
pub fn read_reply(reader: &mut impl BufRead, parser: &mut ReplyParser) -> io::Result<Reply> {
    // The start of a line that arrived without its end, from earlier reads.
    let mut held: Vec<u8> = Vec::new();
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                if held.is_empty() && parser.is_idle() {
                    "the connection closed before an answer".to_string()
                } else {
                    format!(
                        "the connection closed inside an answer ({:?})",
                        lossy(&held)
                    )
                },
            ));
        }
        if held.is_empty() {
            let (consumed, reply) = parser.parse(chunk)?;
            let partial_line = reply.is_none() && consumed < chunk.len();
            let chunk_length = chunk.len();
            if partial_line {
                held.extend_from_slice(&chunk[consumed..]);
                reader.consume(chunk_length);
            } else {
                reader.consume(consumed);
            }
            if let Some(reply) = reply {
                return Ok(reply);
            }
        } else {
            // Take bytes only up to the line's end: what follows it may be
            // the next answer, which must stay in the reader.
            let taken = memchr(b'\n', chunk).map_or(chunk.len(), |newline| newline + 1);
            held.extend_from_slice(&chunk[..taken]);
            reader.consume(taken);
            let (consumed, reply) = parser.parse(&held)?;
            held.drain(..consumed);
            if let Some(reply) = reply {
                return Ok(reply);
            }
        }
    }
}

fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()
}

fn unknown(line: &[u8]) -> ReplyError {
    ReplyError::Unknown(lossy(line))
}

fn parse_line(line: &[u8]) -> Result<Reply, ReplyError> {
    let mut fields = line
        .split(|&byte| byte == b' ')
        .filter(|field| !field.is_empty());
    let Some(head) = fields.next() else {
        return Err(unknown(line));
    };
    let mut arguments: [&[u8]; 3] = [&[]; 3];
    let mut count = 0;
    for field in fields {
        if count == arguments.len() {
            return Err(unknown(line));
        }
        arguments[count] = field;
        count += 1;
    }
    let number = |index: usize| parse_decimal_u64(arguments[index]).ok_or_else(|| unknown(line));
    let reply = match (head, count) {
        (b"OK", 0) => Reply::Ok,
        (b"OK", 1) => Reply::OkVersion(number(0)?),
        (b"CONTENTS", 3) => Reply::Contents {
            version: number(0)?,
            length_bytes: number(1)?,
            expiry_remaining_s: number(2)?,
        },
        (b"ERR_FILE_NOT_FOUND", 0) => Reply::FileNotFound,
        (b"ERR_VERSION", 1) => Reply::VersionMismatch(number(0)?),
        (b"ERR_CMD_ERR", 0) => Reply::CommandError,
        (b"ERR_INTERNAL", 0) => Reply::Internal,
        (b"ERR_REDIRECT", 1) => match std::str::from_utf8(arguments[0]) {
            Ok(address) => Reply::Redirect(address.to_string()),
            Err(_) => return Err(unknown(line)),
        },
        _ => return Err(unknown(line)),
    };
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(mut parser: ReplyParser, input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut replies = Vec::new();
        let mut offset = 0;
        loop {
            let (consumed, reply) = parser.parse(&input[offset..])?;
            offset += consumed;
            match reply {
                Some(reply) => replies.push(reply),
                None => return Ok(replies),
            }
        }
    }

    fn lenient(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        parse_all(ReplyParser::new(), input)
    }

    #[test]
    fn bad_replies_are_errors() {
        assert!(matches!(lenient(b"HELLO\r\n"), Err(ReplyError::Unknown(_))));
        assert!(matches!(
            lenient(b"OK 1 2\r\n"),
            Err(ReplyError::Unknown(_))
        ));
        assert!(matches!(lenient(b"\r\n"), Err(ReplyError::Unknown(_))));
        assert!(matches!(
            lenient(b"ERR_VERSION x\r\n"),
            Err(ReplyError::Unknown(_))
        ));
        assert!(matches!(lenient(b"OK +1\r\n"), Err(ReplyError::Unknown(_))));
        assert_eq!(
            lenient(b"CONTENTS 1 2 0\r\nabXY"),
            Err(ReplyError::BadContentTerminator)
        );
        assert_eq!(lenient(&[b'O'; 2000]), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn bare_newline_and_extra_spaces_are_accepted_unless_strict() {
        assert_eq!(
            lenient(b"OK  7\nERR_FILE_NOT_FOUND \r\n").expect("valid"),
            vec![Reply::OkVersion(7), Reply::FileNotFound]
        );
        for inexact in [&b"OK  7\r\n"[..], b"OK 7\n", b"OK 07\r\n", b" OK\r\n"] {
            assert!(
                matches!(
                    parse_all(ReplyParser::new().strict(), inexact),
                    Err(ReplyError::NotExact(_))
                ),
                "{inexact:?}"
            );
        }
        assert_eq!(
            parse_all(ReplyParser::new().strict(), b"OK 7\r\nERR_REDIRECT a:1\r\n").expect("exact"),
            vec![Reply::OkVersion(7), Reply::Redirect("a:1".into())]
        );
    }

    #[test]
    fn display_is_the_exact_line() {
        for line in [
            "CONTENTS 3 10 0",
            "OK 18446744073709551615",
            "OK",
            "ERR_FILE_NOT_FOUND",
            "ERR_VERSION 4",
            "ERR_CMD_ERR",
            "ERR_INTERNAL",
            "ERR_REDIRECT 127.0.0.1:8081",
        ] {
            let reply = parse_line(line.as_bytes()).expect("valid");
            assert_eq!(reply.to_string(), line);
        }
    }

    #[test]
    fn content_is_kept_only_when_asked_and_within_its_bound() {
        let stream = b"CONTENTS 1 4 0\r\na\r\nb\r\nCONTENTS 2 0 0\r\n\r\n";
        let mut parser = ReplyParser::new().keeping_content(4);
        let (consumed, reply) = parser.parse(stream).expect("valid");
        assert!(matches!(reply, Some(Reply::Contents { version: 1, .. })));
        assert_eq!(parser.take_content(), b"a\r\nb");
        let (_, reply) = parser.parse(&stream[consumed..]).expect("valid");
        assert!(matches!(reply, Some(Reply::Contents { version: 2, .. })));
        assert!(parser.take_content().is_empty());

        let mut skipping = ReplyParser::new();
        skipping.parse(stream).expect("valid");
        assert!(skipping.take_content().is_empty());

        assert_eq!(
            parse_all(ReplyParser::new().keeping_content(3), b"CONTENTS 1 4 0\r\n"),
            Err(ReplyError::ContentTooLarge {
                length_bytes: 4,
                max_bytes: 3
            })
        );
    }

    /// A reader that hands out one byte per `fill_buf`, the worst chunking.
    struct ByteByByte<'a>(&'a [u8]);

    impl io::Read for ByteByByte<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let length = self.0.len().min(out.len()).min(1);
            out[..length].copy_from_slice(&self.0[..length]);
            self.0 = &self.0[length..];
            Ok(length)
        }
    }

    #[test]
    fn read_reply_consumes_exactly_one_answer() {
        let stream = b"CONTENTS 5 3 9\r\nx\ny\r\nOK 6\r\nrest";
        for capacity in [1, 2, 7, 64] {
            let mut reader = io::BufReader::with_capacity(capacity, ByteByByte(stream));
            let mut parser = ReplyParser::new().keeping_content(16).strict();
            let first = read_reply(&mut reader, &mut parser).expect("first");
            assert_eq!(first.to_string(), "CONTENTS 5 3 9");
            assert_eq!(parser.take_content(), b"x\ny");
            let second = read_reply(&mut reader, &mut parser).expect("second");
            assert_eq!(second, Reply::OkVersion(6));
            let mut rest = Vec::new();
            io::Read::read_to_end(&mut reader, &mut rest).expect("rest");
            assert_eq!(rest, b"rest", "capacity {capacity}");
        }
        let mut reader = io::BufReader::new(&b"OK 1"[..]);
        let error = read_reply(&mut reader, &mut ReplyParser::new()).expect_err("cut short");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let mut reader = io::BufReader::new(&b"HELLO\r\n"[..]);
        let error = read_reply(&mut reader, &mut ReplyParser::new()).expect_err("no answer");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
