//! Encoding of the commands loadgen sends (SPEC §2) and the content it writes.
//!
//! Owns: `Operation` (one command to send: kind, key, expected version) and
//! its byte encoding, and `content_pattern` (the bytes of every write). The
//! content deliberately contains `\r\n` and reply-like text, so a server or
//! parser that looks for line ends inside content is caught. Invariants: an
//! encoded command is always well formed (names `key-<n>`, `<n>` zero-padded
//! to `--key-digits` digits when given, NUMBYTES equal to the content length). Leaves out: sockets and replies.

use crate::config::Kind;

/// One command to send; kept while in flight so it can be re-sent after a redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    pub kind: Kind,
    /// The file is `key-<key>`.
    pub key: u64,
    /// The expected version of a `cas` (unused by other kinds).
    pub expected_version: u64,
}

/// What every write and cas stores: `size_bytes` bytes with `\r\n` and reply-like text inside.
pub fn content_pattern(size_bytes: usize) -> Vec<u8> {
    const PATTERN: &[u8] = b"\r\nOK 1\r\nCONTENTS 9 9 9\r\n\x00\xff loadgen \n\r";
    PATTERN.iter().copied().cycle().take(size_bytes).collect()
}

/// Appends the decimal digits of `value`.
pub fn push_decimal(output: &mut Vec<u8>, value: u64) {
    push_decimal_padded(output, value, 0);
}

/// Appends the decimal digits of `value`, zero-padded on the left to at
/// least `width` digits (at most 20, the widest u64).
pub fn push_decimal_padded(output: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut position = digits.len();
    let mut rest = value;
    loop {
        position -= 1;
        digits[position] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let position = position.min(digits.len().saturating_sub(width));
    output.extend_from_slice(&digits[position..]);
}

impl Operation {
    /// Appends the command line (and for write / cas the content and its
    /// `\r\n`); the key number is zero-padded to `key_digits` digits.
    pub fn encode(&self, content: &[u8], expiry_s: u64, key_digits: usize, output: &mut Vec<u8>) {
        output.extend_from_slice(self.kind.name().as_bytes());
        output.extend_from_slice(b" key-");
        push_decimal_padded(output, self.key, key_digits);
        match self.kind {
            Kind::Read | Kind::Delete => output.extend_from_slice(b"\r\n"),
            Kind::Write | Kind::Cas => {
                if self.kind == Kind::Cas {
                    output.push(b' ');
                    push_decimal(output, self.expected_version);
                }
                output.push(b' ');
                push_decimal(output, content.len() as u64);
                if expiry_s > 0 {
                    output.push(b' ');
                    push_decimal(output, expiry_s);
                }
                output.extend_from_slice(b"\r\n");
                output.extend_from_slice(content);
                output.extend_from_slice(b"\r\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(kind: Kind, key: u64, version: u64, content: &[u8], expiry_s: u64) -> Vec<u8> {
        let mut output = Vec::new();
        Operation {
            kind,
            key,
            expected_version: version,
        }
        .encode(content, expiry_s, 0, &mut output);
        output
    }

    #[test]
    fn commands_are_byte_exact() {
        assert_eq!(encoded(Kind::Read, 0, 0, b"", 0), b"read key-0\r\n");
        assert_eq!(encoded(Kind::Delete, 12, 0, b"", 0), b"delete key-12\r\n");
        assert_eq!(
            encoded(Kind::Write, 7, 0, b"a\r\n", 0),
            b"write key-7 3\r\na\r\n\r\n"
        );
        assert_eq!(
            encoded(Kind::Write, 7, 0, b"", 30),
            b"write key-7 0 30\r\n\r\n"
        );
        assert_eq!(
            encoded(Kind::Cas, 1, 18446744073709551615, b"xy", 0),
            b"cas key-1 18446744073709551615 2\r\nxy\r\n"
        );
    }

    #[test]
    fn key_digits_pad_the_name() {
        let mut output = Vec::new();
        let read = Operation {
            kind: Kind::Read,
            key: 42,
            expected_version: 0,
        };
        read.encode(b"", 0, 12, &mut output);
        assert_eq!(output, b"read key-000000000042\r\n");
        output.clear();
        // A key wider than the padding is written whole.
        let wide = Operation { key: 1234, ..read };
        wide.encode(b"", 0, 2, &mut output);
        assert_eq!(output, b"read key-1234\r\n");
        output.clear();
        push_decimal_padded(&mut output, u64::MAX, 25);
        assert_eq!(output, b"18446744073709551615");
    }

    #[test]
    fn content_has_line_ends_inside() {
        let content = content_pattern(100);
        assert_eq!(content.len(), 100);
        assert!(content.windows(2).any(|pair| pair == b"\r\n"));
        assert!(content_pattern(0).is_empty());
    }
}
