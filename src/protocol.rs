//! Client protocol framing (SPEC §2, byte exact) and reply encoding.
//!
//! Owns: turning the bytes a client connection has buffered into [`Request`]s
//! ([`parse_next`]) and turning answers into bytes ([`encode_reply`]). Both are
//! pure: no I/O, no clock, no allocation beyond what the buffers themselves do.
//!
//! Invariants:
//! - Zero copy: a request's name and content are `Bytes` views of the
//!   connection's buffer (the line and the content are split off the front of
//!   the `BytesMut` and narrowed in place, one reference count each), so the
//!   same memory flows into the proposal, the WAL and every AppendEntries.
//! - Progress: [`parse_next`] either consumes at least one byte and returns
//!   `Some`, or consumes nothing and returns `None`; it returns `None` only
//!   while the buffered bytes are a proper prefix of something that can still
//!   become a command (a line of at most [`LINE_BYTES_MAX`] bytes still waiting
//!   for its newline, or a well-framed `write`/`cas` waiting for its content).
//!   So a client can make the server wait for at most
//!   `LINE_BYTES_MAX + 2 + max_file_bytes + 2` buffered bytes.
//! - Keep/close policy (SPEC §2): an error whose command end is still known
//!   (an empty line; `read`/`delete` with a bad name or argument count;
//!   `watch` with a bad name, VERSION or argument count;
//!   `write`/`cas` with a valid NUMBYTES but a bad name, VERSION, EXPTIME or
//!   argument count, whose content is skipped) keeps the connection. Any other
//!   error (unknown command, missing or bad NUMBYTES, NUMBYTES over the limit,
//!   overlong line, bad content terminator) closes it; the whole buffer is then
//!   dropped so nothing after it can ever run as a command.
//! - Bad input never panics: every index is checked against the buffer length.
//!
//! Leaves out: sockets, queues and the order of answers (the reactor), and what
//! a command does (the file map). The client side (parsing answers) is the
//! `reply` submodule.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use crate::fsm::Command;
use crate::limits::{LINE_BYTES_MAX, NAME_BYTES_MAX};

pub mod reply;

/// One framed client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `read NAME`: answered from the file map after a ReadIndex round.
    Read { name: Bytes },
    /// `write`, `cas` or `delete`: goes through the Raft log.
    Command(Command),
    /// `watch NAME VERSION` (an extension, SPEC §2): answered like `read NAME`
    /// as soon as the file's version differs from `version` (0 = absent).
    Watch { name: Bytes, version: u64 },
}

/// The outcome of framing the command at the front of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A well-formed request.
    Request(Request),
    /// Answer `ERR_CMD_ERR`; if `close`, close the connection after the answer.
    Malformed { close: bool },
}

/// Longest run of bytes that may be buffered while a command line still waits
/// for its newline: the line plus `\r\n`.
const LINE_WINDOW_BYTES: usize = LINE_BYTES_MAX + 2;

/// Most fields a well-formed command line has (`cas NAME VERSION NUMBYTES
/// EXPTIME`); further fields are counted but not remembered.
const FIELDS_REMEMBERED_MAX: usize = 5;

/// Frames the next command at the front of `buf`.
///
/// Returns `None` (consuming nothing) while the command is incomplete. A
/// request or a keep-the-connection `Malformed` consumes exactly the bytes of
/// its command, including the skipped content of a malformed `write`/`cas`. A
/// `Malformed { close: true }` consumes the whole buffer: the command's end is
/// unknown, so nothing after it may be run.
pub fn parse_next(buf: &mut BytesMut, max_file_bytes: usize) -> Option<Parsed> {
    if buf.is_empty() {
        return None;
    }
    let window_len = buf.len().min(LINE_WINDOW_BYTES);
    let newline_at = match memchr(b'\n', &buf[..window_len]) {
        Some(index) => index,
        None => {
            // Still no newline: a full window, or 501 line bytes whose last is
            // not the `\r` of a terminator, can never become a legal line.
            let overlong = buf.len() >= LINE_WINDOW_BYTES
                || (buf.len() > LINE_BYTES_MAX && buf[LINE_BYTES_MAX] != b'\r');
            return if overlong { Some(close(buf)) } else { None };
        }
    };
    let line_end = newline_at + 1;
    let mut line_len = newline_at;
    if line_len > 0 && buf[line_len - 1] == b'\r' {
        line_len -= 1;
    }
    if line_len > LINE_BYTES_MAX {
        return Some(close(buf));
    }

    let fields = Fields::split(&buf[..line_len]);
    let verb = match fields.get(buf, 0) {
        None => {
            // An empty line, or one of only spaces.
            buf.advance(line_end);
            return Some(Parsed::Malformed { close: false });
        }
        Some(b"read") => Verb::Read,
        Some(b"delete") => Verb::Delete,
        Some(b"write") => Verb::Write,
        Some(b"cas") => Verb::Cas,
        Some(b"watch") => Verb::Watch,
        Some(_) => return Some(close(buf)),
    };

    match verb {
        Verb::Read | Verb::Delete => Some(parse_name_only(buf, &fields, verb, line_end)),
        Verb::Watch => Some(parse_watch(buf, &fields, line_end)),
        Verb::Write | Verb::Cas => parse_with_content(buf, &fields, verb, line_end, max_file_bytes),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Read,
    Delete,
    Write,
    Cas,
    Watch,
}

/// `read NAME` / `delete NAME`: the line alone is the command.
fn parse_name_only(buf: &mut BytesMut, fields: &Fields, verb: Verb, line_end: usize) -> Parsed {
    let name_range = fields.range(1);
    let well_formed = fields.count == 2 && is_valid_name(&buf[name_range.clone()]);
    if !well_formed {
        buf.advance(line_end);
        return Parsed::Malformed { close: false };
    }
    let name = split_field(buf, line_end, name_range);
    Parsed::Request(match verb {
        Verb::Read => Request::Read { name },
        _ => Request::Command(Command::Delete { name }),
    })
}

/// `watch NAME VERSION`: the line alone is the command, so every error keeps
/// the connection (as for `read`).
fn parse_watch(buf: &mut BytesMut, fields: &Fields, line_end: usize) -> Parsed {
    let name_range = fields.range(1);
    let version = fields.get(buf, 2).and_then(parse_decimal_u64);
    let version = match version {
        Some(version) if fields.count == 3 && is_valid_name(&buf[name_range.clone()]) => version,
        _ => {
            buf.advance(line_end);
            return Parsed::Malformed { close: false };
        }
    };
    let name = split_field(buf, line_end, name_range);
    Parsed::Request(Request::Watch { name, version })
}

/// `write NAME NUMBYTES [EXPTIME]` / `cas NAME VERSION NUMBYTES [EXPTIME]`,
/// each followed by NUMBYTES of content and `\r\n`.
fn parse_with_content(
    buf: &mut BytesMut,
    fields: &Fields,
    verb: Verb,
    line_end: usize,
    max_file_bytes: usize,
) -> Option<Parsed> {
    let (numbytes_index, version_index) = match verb {
        Verb::Cas => (3, Some(2)),
        _ => (2, None),
    };
    // NUMBYTES tells where the command ends; without a usable one the rest of
    // the stream cannot be framed.
    let content_len = match fields
        .get(buf, numbytes_index)
        .and_then(parse_decimal_u64)
        .and_then(|numbytes| usize::try_from(numbytes).ok())
    {
        Some(len) if len <= max_file_bytes => len,
        _ => return Some(close(buf)),
    };
    // Checked, so even a `max_file_bytes` near `usize::MAX` cannot overflow.
    let (content_end, total) = match line_end.checked_add(content_len) {
        Some(content_end) if content_end <= usize::MAX - 2 => (content_end, content_end + 2),
        _ => return Some(close(buf)),
    };
    if buf.len() < total {
        // Answer a bad terminator as soon as its first byte is visible.
        if buf.len() > content_end && buf[content_end] != b'\r' {
            return Some(close(buf));
        }
        return None;
    }
    if &buf[content_end..total] != b"\r\n" {
        return Some(close(buf));
    }

    let name_range = fields.range(1);
    let version = match version_index {
        Some(index) => fields.get(buf, index).and_then(parse_decimal_u64),
        None => Some(0),
    };
    let exptime_s = match fields.get(buf, numbytes_index + 1) {
        Some(field) => parse_decimal_u64(field),
        None => Some(0),
    };
    let field_count_ok = fields.count == numbytes_index + 1 || fields.count == numbytes_index + 2;
    let (version, exptime_s) = match (version, exptime_s) {
        (Some(version), Some(exptime_s))
            if field_count_ok && is_valid_name(&buf[name_range.clone()]) =>
        {
            (version, exptime_s)
        }
        _ => {
            buf.advance(total);
            return Some(Parsed::Malformed { close: false });
        }
    };

    let name = split_field(buf, line_end, name_range);
    let content = buf.split_to(content_len).freeze();
    buf.advance(2);
    Some(Parsed::Request(Request::Command(match verb {
        Verb::Cas => Command::Cas {
            name,
            version,
            content,
            exptime_s,
        },
        _ => Command::Write {
            name,
            content,
            exptime_s,
        },
    })))
}

/// A lower bound on the bytes `buf` must hold before the command at its
/// front can be framed: more than `buf.len()` while [`parse_next`] would
/// return `None` (a line still waiting for its newline needs at least one
/// more byte; a well-framed `write`/`cas` needs its whole content and
/// `\r\n`), at most `buf.len()` once it would return `Some`. The reactor
/// uses it to drop, without reading it, the partial command of a client
/// that hung up and cannot send the rest.
pub fn bytes_needed(buf: &[u8], max_file_bytes: usize) -> usize {
    let window_len = buf.len().min(LINE_WINDOW_BYTES);
    let Some(newline_at) = memchr(b'\n', &buf[..window_len]) else {
        let overlong = buf.len() >= LINE_WINDOW_BYTES
            || (buf.len() > LINE_BYTES_MAX && buf[LINE_BYTES_MAX] != b'\r');
        return if overlong { buf.len() } else { buf.len() + 1 };
    };
    let line_end = newline_at + 1;
    let mut line_len = newline_at;
    if line_len > 0 && buf[line_len - 1] == b'\r' {
        line_len -= 1;
    }
    if line_len > LINE_BYTES_MAX {
        return buf.len();
    }
    let fields = Fields::split(&buf[..line_len]);
    let numbytes_index = match fields.get(buf, 0) {
        Some(b"write") => 2,
        Some(b"cas") => 3,
        _ => return buf.len(),
    };
    match fields
        .get(buf, numbytes_index)
        .and_then(parse_decimal_u64)
        .and_then(|numbytes| usize::try_from(numbytes).ok())
    {
        Some(len) if len <= max_file_bytes => {
            let content_end = line_end.saturating_add(len);
            // A bad terminator is framed (refused) as soon as it shows.
            if buf.len() > content_end && buf[content_end] != b'\r' {
                return buf.len();
            }
            content_end.saturating_add(2)
        }
        _ => buf.len(),
    }
}

/// Splits the line (`line_end` bytes with its terminator) off the front of
/// `buf` and returns the field at `field_range` in it, without copying: the
/// split-off part is narrowed in place, so no extra reference count is taken.
fn split_field(buf: &mut BytesMut, line_end: usize, field_range: std::ops::Range<usize>) -> Bytes {
    let mut line = buf.split_to(line_end);
    line.truncate(field_range.end);
    line.advance(field_range.start);
    line.freeze()
}

/// Drops everything buffered and asks for the connection to be closed.
fn close(buf: &mut BytesMut) -> Parsed {
    buf.clear();
    Parsed::Malformed { close: true }
}

/// The space-separated fields of one command line, as offsets into the buffer.
struct Fields {
    /// Start and end of the first [`FIELDS_REMEMBERED_MAX`] fields.
    ranges: [(u16, u16); FIELDS_REMEMBERED_MAX],
    /// How many fields the line has in all.
    count: usize,
}

impl Fields {
    /// Splits `line` (at most [`LINE_BYTES_MAX`] bytes, so offsets fit `u16`)
    /// on runs of spaces; only the space byte separates fields.
    fn split(line: &[u8]) -> Fields {
        let mut fields = Fields {
            ranges: [(0, 0); FIELDS_REMEMBERED_MAX],
            count: 0,
        };
        let mut position = 0;
        while position < line.len() {
            if line[position] == b' ' {
                position += 1;
                continue;
            }
            let start = position;
            while position < line.len() && line[position] != b' ' {
                position += 1;
            }
            if fields.count < FIELDS_REMEMBERED_MAX {
                // Both offsets are <= LINE_BYTES_MAX, well inside u16.
                fields.ranges[fields.count] = (start as u16, position as u16);
            }
            fields.count += 1;
        }
        fields
    }

    /// Byte range of field `index` (empty if the line has no such field).
    fn range(&self, index: usize) -> std::ops::Range<usize> {
        if index < self.count.min(FIELDS_REMEMBERED_MAX) {
            let (start, end) = self.ranges[index];
            start as usize..end as usize
        } else {
            0..0
        }
    }

    /// Field `index` of the line at the front of `buf`, if the line has it.
    fn get<'b>(&self, buf: &'b [u8], index: usize) -> Option<&'b [u8]> {
        if index < self.count.min(FIELDS_REMEMBERED_MAX) {
            buf.get(self.range(index))
        } else {
            None
        }
    }
}

/// A name is 1 to [`NAME_BYTES_MAX`] bytes, each above 0x20 and not 0x7f.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.iter().all(|&byte| byte > 0x20 && byte != 0x7f)
}

/// Plain decimal digits (leading zeros allowed, no sign) that fit in a `u64`.
pub fn parse_decimal_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &byte in field {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// One answer to a client command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `CONTENTS VERSION NUMBYTES EXPREMAINING\r\n` + content + `\r\n`.
    Contents {
        version: u64,
        content: &'a [u8],
        expires_in_s: u64,
    },
    /// `OK VERSION\r\n` (a successful `write` or `cas`).
    Written { version: u64 },
    /// `OK\r\n` (a successful `delete`).
    Deleted,
    /// `ERR_FILE_NOT_FOUND\r\n`.
    NotFound,
    /// `ERR_VERSION CURRENTVERSION\r\n`.
    VersionMismatch { current: u64 },
    /// `ERR_CMD_ERR\r\n`.
    CmdErr,
    /// `ERR_INTERNAL\r\n`.
    Internal,
    /// `ERR_REDIRECT HOST:PORT\r\n`, carrying the leader's client address.
    Redirect(&'a str),
}

/// Longest decimal form of a `u64`.
const U64_DIGITS_MAX: usize = 20;

/// Appends the byte-exact encoding of `reply` to `out`.
pub fn encode_reply(reply: &Reply<'_>, out: &mut BytesMut) {
    match *reply {
        Reply::Contents {
            version,
            content,
            expires_in_s,
        } => {
            out.reserve(b"CONTENTS ".len() + 3 * (U64_DIGITS_MAX + 1) + 1 + content.len() + 2);
            out.extend_from_slice(b"CONTENTS ");
            put_decimal_u64(out, version);
            out.extend_from_slice(b" ");
            put_decimal_u64(out, content.len() as u64);
            out.extend_from_slice(b" ");
            put_decimal_u64(out, expires_in_s);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Written { version } => {
            out.reserve(b"OK ".len() + U64_DIGITS_MAX + 2);
            out.extend_from_slice(b"OK ");
            put_decimal_u64(out, version);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Deleted => out.extend_from_slice(b"OK\r\n"),
        Reply::NotFound => out.extend_from_slice(b"ERR_FILE_NOT_FOUND\r\n"),
        Reply::VersionMismatch { current } => {
            out.reserve(b"ERR_VERSION ".len() + U64_DIGITS_MAX + 2);
            out.extend_from_slice(b"ERR_VERSION ");
            put_decimal_u64(out, current);
            out.extend_from_slice(b"\r\n");
        }
        Reply::CmdErr => out.extend_from_slice(b"ERR_CMD_ERR\r\n"),
        Reply::Internal => out.extend_from_slice(b"ERR_INTERNAL\r\n"),
        Reply::Redirect(address) => {
            out.reserve(b"ERR_REDIRECT ".len() + address.len() + 2);
            out.extend_from_slice(b"ERR_REDIRECT ");
            out.extend_from_slice(address.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends the decimal form of `value` (no padding).
fn put_decimal_u64(out: &mut BytesMut, mut value: u64) {
    let mut digits = [0u8; U64_DIGITS_MAX];
    let mut start = U64_DIGITS_MAX;
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes_needed` says "more" exactly when `parse_next` frames nothing,
    /// on every prefix of well-formed and malformed inputs.
    #[test]
    fn bytes_needed_agrees_with_parse_next() {
        let long_line = vec![b'r'; 600];
        let inputs: [&[u8]; 9] = [
            b"write a 5\r\nhelloXY",
            b"write a 5\r\nhello\r\n",
            b"cas a 3 4 9\r\nabcd\r\n",
            b"read a\r\n",
            b"write a 99999999999\r\nxx",
            b"write a x 5\r\nhello\r\n",
            b"bogus\n",
            b"\r\n",
            &long_line,
        ];
        for input in inputs {
            for end in 0..=input.len() {
                let prefix = &input[..end];
                let needed = bytes_needed(prefix, 16);
                let mut buf = BytesMut::from(prefix);
                let framed = parse_next(&mut buf, 16);
                assert_eq!(
                    needed > prefix.len(),
                    framed.is_none(),
                    "{:?}: needed {needed}, framed {framed:?}",
                    String::from_utf8_lossy(prefix)
                );
            }
        }
        assert_eq!(bytes_needed(b"write a 5\r\nhe", 16), 11 + 5 + 2);
    }

    #[test]
    fn decimal_u64_bounds() {
        assert_eq!(parse_decimal_u64(b"0"), Some(0));
        assert_eq!(parse_decimal_u64(b"007"), Some(7));
        assert_eq!(parse_decimal_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal_u64(b"18446744073709551616"), None);
        assert_eq!(parse_decimal_u64(b""), None);
        assert_eq!(parse_decimal_u64(b"+1"), None);
        assert_eq!(parse_decimal_u64(b"1a"), None);
    }

    #[test]
    fn decimal_u64_formatting_round_trips() {
        for value in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::MAX / 10,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_decimal_u64(&mut out, value);
            assert_eq!(&out[..], value.to_string().as_bytes());
        }
    }

    #[test]
    fn fields_split_on_spaces_only() {
        let line = b"  cas\ta  b   7 ";
        let fields = Fields::split(line);
        assert_eq!(fields.count, 3);
        assert_eq!(fields.get(line, 0), Some(&b"cas\ta"[..]));
        assert_eq!(fields.get(line, 1), Some(&b"b"[..]));
        assert_eq!(fields.get(line, 2), Some(&b"7"[..]));
        assert_eq!(fields.get(line, 3), None);
    }
}
