//! Incremental parser of server replies (SPEC §2).
//!
//! Owns: `Reply` (one answer, content bytes left out) and `ReplyParser`, a
//! state machine fed arbitrary chunks of the byte stream. Invariants: the
//! parser never buffers content — `CONTENTS v n e` bytes are counted off as
//! they arrive, so a reply of any size costs no memory — and it only holds
//! back a partial reply line, at most `MAX_REPLY_LINE_BYTES`; a reply is
//! emitted only once its content and the closing `\r\n` have been seen. Bad
//! input yields a `ReplyError`, never a panic. Lines end with `\r\n`; a bare
//! `\n` is accepted. Leaves out: matching replies to commands (see `client`).

use std::fmt;

use memchr::memchr;

use crate::limits::MAX_REPLY_LINE_BYTES;

/// One answer from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `CONTENTS VERSION NUMBYTES EXPREMAINING` (the content itself was consumed).
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

/// A byte stream that is not a sequence of replies; the connection cannot be trusted after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// No line end within `MAX_REPLY_LINE_BYTES`.
    LineTooLong,
    /// A line that is no known reply (lossy text of the line, shortened).
    Unknown(String),
    /// Content not followed by `\r\n`.
    BadContentTerminator,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::LineTooLong => write!(
                formatter,
                "reply line longer than {MAX_REPLY_LINE_BYTES} bytes"
            ),
            ReplyError::Unknown(line) => write!(formatter, "unknown reply `{line}`"),
            ReplyError::BadContentTerminator => write!(formatter, "content not followed by \\r\\n"),
        }
    }
}

impl std::error::Error for ReplyError {}

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
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser::new()
    }
}

impl ReplyParser {
    /// A parser at the start of a stream.
    pub fn new() -> ReplyParser {
        ReplyParser { state: State::Line }
    }

    /// Forgets any partial reply (for a new connection).
    pub fn reset(&mut self) {
        self.state = State::Line;
    }

    /// True when no reply is partly parsed (nothing held in the state).
    pub fn is_idle(&self) -> bool {
        self.state == State::Line
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
                        if rest.len() > MAX_REPLY_LINE_BYTES + 1 {
                            return Err(ReplyError::LineTooLong);
                        }
                        return Ok((consumed, None));
                    };
                    let mut line = &rest[..newline];
                    if let Some(stripped) = line.strip_suffix(b"\r") {
                        line = stripped;
                    }
                    if line.len() > MAX_REPLY_LINE_BYTES {
                        return Err(ReplyError::LineTooLong);
                    }
                    consumed += newline + 1;
                    let reply = parse_line(line)?;
                    if let Reply::Contents { length_bytes, .. } = reply {
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
                    let available = rest.len() as u64;
                    if available < *remaining_bytes {
                        *remaining_bytes -= available;
                        return Ok((input.len(), None));
                    }
                    // `remaining_bytes <= available`, which came from a usize.
                    consumed += *remaining_bytes as usize;
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

fn unknown(line: &[u8]) -> ReplyError {
    let shown = &line[..line.len().min(80)];
    ReplyError::Unknown(String::from_utf8_lossy(shown).into_owned())
}

/// A plain decimal u64 (digits only, no sign), as the protocol writes numbers.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    field.iter().try_fold(0u64, |value, &digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
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
    let number = |index: usize| parse_number(arguments[index]).ok_or_else(|| unknown(line));
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

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
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

    #[test]
    fn numbers_are_plain_decimal() {
        assert_eq!(parse_number(b"0042"), Some(42));
        assert_eq!(parse_number(b"+1"), None);
        assert_eq!(parse_number(b""), None);
        assert_eq!(parse_number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number(b"18446744073709551616"), None);
    }

    #[test]
    fn bad_replies_are_errors() {
        assert!(matches!(
            parse_all(b"HELLO\r\n"),
            Err(ReplyError::Unknown(_))
        ));
        assert!(matches!(
            parse_all(b"OK 1 2\r\n"),
            Err(ReplyError::Unknown(_))
        ));
        assert!(matches!(parse_all(b"\r\n"), Err(ReplyError::Unknown(_))));
        assert!(matches!(
            parse_all(b"ERR_VERSION x\r\n"),
            Err(ReplyError::Unknown(_))
        ));
        assert_eq!(
            parse_all(b"CONTENTS 1 2 0\r\nabXY"),
            Err(ReplyError::BadContentTerminator)
        );
        assert_eq!(parse_all(&[b'O'; 2000]), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn bare_newline_and_extra_spaces_are_accepted() {
        assert_eq!(
            parse_all(b"OK  7\nERR_FILE_NOT_FOUND \r\n").expect("valid"),
            vec![Reply::OkVersion(7), Reply::FileNotFound]
        );
    }
}
