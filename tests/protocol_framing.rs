//! Byte-exact tests of client protocol framing and reply encoding (SPEC §2),
//! against the pure functions in `raftfs::protocol` (no sockets).
//!
//! Every lexing rule and every keep/close decision has a case here; the
//! property tests live in `protocol_framing_props.rs`.

use bytes::{Bytes, BytesMut};
use raftfs::fsm::Command;
use raftfs::protocol::{encode_reply, parse_next, Parsed, Reply, Request};

#[path = "../benches/framing.rs"]
#[allow(dead_code)]
mod framing_bench;

/// The limit most cases use (small, so limit cases stay cheap).
const MAX: usize = 1 << 20;

const KEEP: Parsed = Parsed::Malformed { close: false };
const CLOSE: Parsed = Parsed::Malformed { close: true };

fn bytes(text: &[u8]) -> Bytes {
    Bytes::copy_from_slice(text)
}

fn read(name: &[u8]) -> Parsed {
    Parsed::Request(Request::Read { name: bytes(name) })
}

fn delete(name: &[u8]) -> Parsed {
    Parsed::Request(Request::Command(Command::Delete { name: bytes(name) }))
}

fn write(name: &[u8], content: &[u8], exptime_s: u64) -> Parsed {
    Parsed::Request(Request::Command(Command::Write {
        name: bytes(name),
        content: bytes(content),
        exptime_s,
    }))
}

fn cas(name: &[u8], version: u64, content: &[u8], exptime_s: u64) -> Parsed {
    Parsed::Request(Request::Command(Command::Cas {
        name: bytes(name),
        version,
        content: bytes(content),
        exptime_s,
    }))
}

fn watch(name: &[u8], version: u64) -> Parsed {
    Parsed::Request(Request::Watch {
        name: bytes(name),
        version,
    })
}

/// Parses `input` with `max_file_bytes`: the first result and what is left.
fn parse_one_with(input: &[u8], max_file_bytes: usize) -> (Option<Parsed>, Vec<u8>) {
    let mut buffer = BytesMut::from(input);
    let parsed = parse_next(&mut buffer, max_file_bytes);
    (parsed, buffer.to_vec())
}

fn parse_one(input: &[u8]) -> (Option<Parsed>, Vec<u8>) {
    parse_one_with(input, MAX)
}

/// Every result until the parser waits, and what is left.
fn parse_all(input: &[u8]) -> (Vec<Parsed>, Vec<u8>) {
    let mut buffer = BytesMut::from(input);
    let mut results = Vec::new();
    while let Some(parsed) = parse_next(&mut buffer, MAX) {
        results.push(parsed);
    }
    (results, buffer.to_vec())
}

/// Asserts `input` parses to exactly `expected`, consuming all of it.
fn assert_whole(input: &[u8], expected: Parsed) {
    assert_eq!(
        parse_one(input),
        (Some(expected), Vec::new()),
        "input {:?}",
        String::from_utf8_lossy(input)
    );
}

/// Asserts `input` is an incomplete command: `None`, nothing consumed.
fn assert_waits(input: &[u8]) {
    assert_eq!(
        parse_one(input),
        (None, input.to_vec()),
        "input {:?}",
        String::from_utf8_lossy(input)
    );
}

// ---- well-formed commands ----------------------------------------------------

#[test]
fn read_with_crlf_and_bare_newline() {
    assert_whole(b"read foo\r\n", read(b"foo"));
    assert_whole(b"read foo\n", read(b"foo"));
}

#[test]
fn delete_parses() {
    assert_whole(b"delete foo\r\n", delete(b"foo"));
    assert_whole(b"delete foo\n", delete(b"foo"));
}

#[test]
fn write_with_and_without_exptime() {
    assert_whole(b"write foo 5\r\nhello\r\n", write(b"foo", b"hello", 0));
    assert_whole(b"write foo 5 30\r\nhello\r\n", write(b"foo", b"hello", 30));
    assert_whole(b"write foo 5 30\nhello\r\n", write(b"foo", b"hello", 30));
}

#[test]
fn cas_with_and_without_exptime() {
    assert_whole(b"cas foo 7 5\r\nhello\r\n", cas(b"foo", 7, b"hello", 0));
    assert_whole(b"cas foo 7 5 9\r\nhello\r\n", cas(b"foo", 7, b"hello", 9));
    assert_whole(b"cas foo 7 5 9\nhello\r\n", cas(b"foo", 7, b"hello", 9));
}

#[test]
fn watch_parses() {
    assert_whole(b"watch foo 0\r\n", watch(b"foo", 0));
    assert_whole(b"watch foo 42\n", watch(b"foo", 42));
    assert_whole(b"  watch   foo   007  \r\n", watch(b"foo", 7));
    assert_whole(
        b"watch \xc3\xa9t\xc3\xa9 18446744073709551615\r\n",
        watch("été".as_bytes(), u64::MAX),
    );
    // Pipelined: what follows a watch is framed as usual (its order is the
    // node's business).
    assert_eq!(
        parse_all(b"watch a 1\r\nread b\r\nwatch c 0\r\n"),
        (vec![watch(b"a", 1), read(b"b"), watch(b"c", 0)], Vec::new())
    );
    // Incomplete: waits.
    assert_eq!(parse_one(b"watch foo 1"), (None, b"watch foo 1".to_vec()));
}

#[test]
fn runs_of_spaces_and_leading_trailing_spaces_are_ignored() {
    assert_whole(b"   read    foo   \r\n", read(b"foo"));
    assert_whole(
        b" write  foo   3    4  \r\nabc\r\n",
        write(b"foo", b"abc", 4),
    );
    assert_whole(b"cas  foo  1  3  \nabc\r\n", cas(b"foo", 1, b"abc", 0));
}

#[test]
fn numbers_take_leading_zeros_and_the_full_u64_range() {
    assert_whole(
        b"write foo 005 000\r\nhello\r\n",
        write(b"foo", b"hello", 0),
    );
    assert_whole(
        b"cas foo 18446744073709551615 1 18446744073709551615\r\nx\r\n",
        cas(b"foo", u64::MAX, b"x", u64::MAX),
    );
    assert_whole(b"cas foo 0 0\r\n\r\n", cas(b"foo", 0, b"", 0));
}

#[test]
fn names_are_any_bytes_above_space_except_del() {
    assert_whole(b"read !~\r\n", read(b"!~"));
    assert_whole(
        "read fïlé/名前\r\n".as_bytes(),
        read("fïlé/名前".as_bytes()),
    );
    assert_whole(b"read \x80\xff\r\n", read(b"\x80\xff"));
    let longest = vec![b'n'; 250];
    assert_whole(&[b"read ", &longest[..], b"\r\n"].concat(), read(&longest));
    assert_whole(
        &[b"write ", &longest[..], b" 1\r\nx\r\n"].concat(),
        write(&longest, b"x", 0),
    );
}

#[test]
fn binary_content_with_crlf_and_nul() {
    let content = b"a\r\nb\0c\r\n\n\r\0";
    let mut input = format!("write bin {}\r\n", content.len()).into_bytes();
    input.extend_from_slice(content);
    input.extend_from_slice(b"\r\n");
    assert_whole(&input, write(b"bin", content, 0));
    // The content may even look like commands.
    assert_whole(
        b"write x 10\r\nread a\r\n\r\n\r\n",
        write(b"x", b"read a\r\n\r\n", 0),
    );
}

#[test]
fn zero_byte_content() {
    assert_whole(b"write empty 0\r\n\r\n", write(b"empty", b"", 0));
    assert_whole(b"cas empty 3 0 5\r\n\r\n", cas(b"empty", 3, b"", 5));
}

#[test]
fn one_mebibyte_content_at_the_limit() {
    let content: Vec<u8> = (0..MAX).map(|index| (index % 251) as u8).collect();
    let mut input = format!("write big {MAX}\r\n").into_bytes();
    input.extend_from_slice(&content);
    input.extend_from_slice(b"\r\n");
    // Incomplete by one byte: waits.
    assert_waits(&input[..input.len() - 1]);
    assert_whole(&input, write(b"big", &content, 0));
}

#[test]
fn ten_thousand_pipelined_commands_in_one_buffer() {
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for index in 0..10_000u64 {
        let name = format!("key-{index}");
        match index % 4 {
            0 => {
                let content = format!("value {index}\r\n");
                input.extend_from_slice(
                    format!("write {name} {} {index}\r\n{content}\r\n", content.len()).as_bytes(),
                );
                expected.push(write(name.as_bytes(), content.as_bytes(), index));
            }
            1 => {
                input.extend_from_slice(format!("read {name}\n").as_bytes());
                expected.push(read(name.as_bytes()));
            }
            2 => {
                input.extend_from_slice(format!("cas {name} {index} 3\r\nabc\r\n").as_bytes());
                expected.push(cas(name.as_bytes(), index, b"abc", 0));
            }
            _ => {
                input.extend_from_slice(format!("delete {name}\r\n").as_bytes());
                expected.push(delete(name.as_bytes()));
            }
        }
    }
    let (results, rest) = parse_all(&input);
    assert_eq!(results.len(), 10_000);
    assert!(results == expected);
    assert!(rest.is_empty());
}

#[test]
fn name_and_content_are_slices_of_the_input_buffer() {
    let mut buffer = BytesMut::from(&b"write foo 5\r\nhello\r\nread bar\r\n"[..]);
    let region = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
    let inside = |slice: &Bytes| region.contains(&(slice.as_ptr() as usize));
    match parse_next(&mut buffer, MAX) {
        Some(Parsed::Request(Request::Command(Command::Write { name, content, .. }))) => {
            assert!(
                inside(&name) && inside(&content),
                "name and content must not be copies"
            );
            assert_eq!((&name[..], &content[..]), (&b"foo"[..], &b"hello"[..]));
        }
        other => panic!("unexpected {other:?}"),
    }
    match parse_next(&mut buffer, MAX) {
        Some(Parsed::Request(Request::Read { name })) => {
            assert!(inside(&name) && &name[..] == b"bar")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(buffer.is_empty());
}

// ---- waiting for more bytes -----------------------------------------------------

#[test]
fn every_proper_prefix_of_a_command_waits() {
    for command in [
        &b"read foo\r\n"[..],
        b"delete foo\n",
        b"write foo 5 1\r\nhello\r\n",
        b"cas foo 1 2\nab\r\n",
    ] {
        assert_waits(b"");
        for cut in 1..command.len() {
            assert_waits(&command[..cut]);
        }
    }
}

#[test]
fn content_is_awaited_even_for_a_malformed_write_or_cas() {
    // Bad name, valid NUMBYTES: the content must be skipped, so wait for it.
    assert_waits(b"write bad\x7fname 5\r\nhel");
    assert_waits(b"cas foo notaversion 5\r\nhello\r");
}

// ---- the limits on a line --------------------------------------------------------

#[test]
fn line_of_exactly_500_bytes_is_accepted() {
    let mut line = b"read foo".to_vec();
    line.resize(500, b' ');
    assert_whole(&[&line[..], b"\r\n"].concat(), read(b"foo"));
    assert_whole(&[&line[..], b"\n"].concat(), read(b"foo"));
    // 500 bytes, or 500 plus the `\r` of the terminator, still wait for `\n`.
    assert_waits(&line);
    assert_waits(&[&line[..], b"\r"].concat());
}

#[test]
fn line_of_501_bytes_closes() {
    let mut line = b"read foo".to_vec();
    line.resize(501, b' ');
    assert_eq!(
        parse_one(&[&line[..], b"\r\n"].concat()),
        (Some(CLOSE), Vec::new())
    );
    assert_eq!(
        parse_one(&[&line[..], b"\n"].concat()),
        (Some(CLOSE), Vec::new())
    );
}

#[test]
fn overlong_line_is_detected_without_waiting_for_its_newline() {
    // 501 line bytes whose last is not `\r`: can never be legal.
    assert_eq!(parse_one(&[b'a'; 501]), (Some(CLOSE), Vec::new()));
    // 500 bytes plus `\r` plus anything but `\n`.
    let mut input = vec![b'a'; 500];
    input.extend_from_slice(b"\rX");
    assert_eq!(parse_one(&input), (Some(CLOSE), Vec::new()));
    // A large flood without a newline.
    assert_eq!(parse_one(&[b' '; 100_000]), (Some(CLOSE), Vec::new()));
}

// ---- malformed input that keeps the connection ------------------------------------

#[test]
fn empty_lines_keep_the_connection() {
    assert_eq!(
        parse_all(b"\r\n\n   \r\n \nread a\r\n"),
        (vec![KEEP, KEEP, KEEP, KEEP, read(b"a")], Vec::new())
    );
}

#[test]
fn read_and_delete_with_bad_arguments_keep_the_connection() {
    for bad in [
        &b"read\r\n"[..],
        b"read a b\r\n",
        b"read a b c d e f g h\r\n",
        b"delete\n",
        b"delete a b\r\n",
        b"read a\tb\r\n",
        b"read a\x7f\r\n",
        b"delete \x00\r\n",
        b"read \tfoo\r\n",
    ] {
        let input = [bad, b"read next\r\n"].concat();
        assert_eq!(
            parse_all(&input),
            (vec![KEEP, read(b"next")], Vec::new()),
            "input {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let too_long = vec![b'n'; 251];
    assert_eq!(
        parse_one(&[b"read ", &too_long[..], b"\r\n"].concat()),
        (Some(KEEP), Vec::new())
    );
    assert_eq!(
        parse_one(&[b"delete ", &too_long[..], b"\r\n"].concat()),
        (Some(KEEP), Vec::new())
    );
}

#[test]
fn watch_with_bad_arguments_keeps_the_connection() {
    let too_long = [b"watch ", &[b'n'; 251][..], b" 1\r\n"].concat();
    for bad in [
        &b"watch\r\n"[..],
        b"watch foo\r\n",
        b"watch foo 1 2\r\n",
        b"watch foo -1\r\n",
        b"watch foo +1\r\n",
        b"watch foo 1x\r\n",
        b"watch foo 18446744073709551616\r\n",
        b"watch fo\x7fo 1\r\n",
        b"watch a\tb 1\r\n",
        &too_long,
    ] {
        let input = [bad, b"read next\r\n"].concat();
        assert_eq!(
            parse_all(&input),
            (vec![KEEP, read(b"next")], Vec::new()),
            "input {:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn write_and_cas_with_valid_numbytes_but_bad_fields_skip_their_content() {
    let too_long = [b"write ", &[b'n'; 251][..], b" 5\r\n"].concat();
    for bad_line in [
        &b"write bad\x7fname 5\r\n"[..],
        b"write a\tb 5\n",
        &too_long,
        b"write foo 5 -1\r\n",
        b"write foo 5 1x\r\n",
        b"write foo 5 18446744073709551616\r\n",
        b"write foo 5 1 2\r\n",
        b"cas foo x 5\r\n",
        b"cas foo -1 5\r\n",
        b"cas foo 18446744073709551616 5\r\n",
        b"cas foo 1 5 x\r\n",
        b"cas foo 1 5 2 3\r\n",
        b"cas \x01 1 5\r\n",
    ] {
        // The content looks like a command: it must be skipped, not run.
        let input = [bad_line, b"read!\r\n", b"read next\r\n"].concat();
        assert_eq!(
            parse_all(&input),
            (vec![KEEP, read(b"next")], Vec::new()),
            "line {:?}",
            String::from_utf8_lossy(bad_line)
        );
    }
}

// ---- malformed input that closes the connection -------------------------------------

/// Asserts `input` is answered with a close at once, and the buffer dropped.
fn assert_closes(input: &[u8]) {
    assert_eq!(
        parse_one(input),
        (Some(CLOSE), Vec::new()),
        "input {:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn unknown_or_upper_case_command_closes() {
    assert_closes(b"get foo\r\nread foo\r\n");
    assert_closes(b"READ foo\r\n");
    assert_closes(b"WATCH foo 1\r\n");
    assert_closes(b"watches foo 1\r\n");
    assert_closes(b"Write foo 1\r\nx\r\n");
    assert_closes(b"readfoo\r\n");
    // A tab is not a separator, so this is the unknown command "read\tfoo".
    assert_closes(b"read\tfoo\r\n");
}

#[test]
fn missing_or_bad_numbytes_closes() {
    for input in [
        &b"write\r\n"[..],
        b"write foo\r\n",
        b"write foo x\r\nabc\r\n",
        b"write foo -1\r\n",
        b"write foo +1\r\nx\r\n",
        b"write foo 18446744073709551616\r\n",
        b"write bad\x7f\r\n",
        b"cas\r\n",
        b"cas foo\r\n",
        b"cas foo 1\r\n",
        b"cas foo 1 x\r\n",
        b"cas foo 1 0x5\r\nhello\r\n",
    ] {
        assert_closes(input);
    }
}

#[test]
fn numbytes_over_the_limit_closes_without_waiting_for_content() {
    assert_eq!(
        parse_one_with(b"write foo 11\r\n", 10),
        (Some(CLOSE), Vec::new())
    );
    assert_eq!(
        parse_one_with(b"cas foo 1 11\r\n", 10),
        (Some(CLOSE), Vec::new())
    );
    assert_eq!(
        parse_one_with(b"write foo 99999999999999999999\r\n", 10),
        (Some(CLOSE), Vec::new())
    );
    // At the limit it waits for the content.
    assert_eq!(
        parse_one_with(b"write foo 10\r\n", 10),
        (None, b"write foo 10\r\n".to_vec())
    );
    // No overflow however large the configured limit.
    let huge = b"write foo 18446744073709551615\r\nabc";
    assert_eq!(parse_one_with(huge, usize::MAX), (Some(CLOSE), Vec::new()));
    assert_eq!(
        parse_one_with(b"write foo 18446744073709551570\r\nabc", usize::MAX),
        (None, b"write foo 18446744073709551570\r\nabc".to_vec())
    );
    // Even a write with a bad name closes when its NUMBYTES is over the limit.
    assert_eq!(
        parse_one_with(b"write \x01 11\r\n", 10),
        (Some(CLOSE), Vec::new())
    );
}

#[test]
fn content_not_followed_by_crlf_closes() {
    assert_closes(b"write foo 3\r\nabcXY");
    assert_closes(b"write foo 3\r\nabc\n\r\n");
    assert_closes(b"write foo 3\r\nabc\rX");
    assert_closes(b"write foo 3\r\nabcd\r\n");
    assert_closes(b"cas foo 1 3\r\nab\r\n");
    // Detected as soon as the first wrong byte arrives.
    assert_closes(b"write foo 3\r\nabcX");
    // A malformed write whose content terminator is also bad closes.
    assert_closes(b"write bad\x7f 3\r\nabcXY");
    assert_closes(b"cas foo x 3\r\nabc\n");
}

#[test]
fn a_close_drops_everything_after_it() {
    assert_eq!(
        parse_all(b"read a\r\nbogus\r\nread b\r\n"),
        (vec![read(b"a"), CLOSE], Vec::new())
    );
}

// ---- reply encoding -------------------------------------------------------------

fn encoded(reply: Reply<'_>) -> Vec<u8> {
    let mut out = BytesMut::from(&b"prefix|"[..]);
    encode_reply(&reply, &mut out);
    assert!(out.starts_with(b"prefix|"), "encoding must append");
    out[b"prefix|".len()..].to_vec()
}

#[test]
fn replies_are_byte_exact() {
    assert_eq!(
        encoded(Reply::Contents {
            version: 12,
            content: b"hello",
            expires_in_s: 0
        }),
        b"CONTENTS 12 5 0\r\nhello\r\n"
    );
    assert_eq!(
        encoded(Reply::Contents {
            version: 1,
            content: b"",
            expires_in_s: 30
        }),
        b"CONTENTS 1 0 30\r\n\r\n"
    );
    assert_eq!(
        encoded(Reply::Contents {
            version: u64::MAX,
            content: b"a\r\n\0",
            expires_in_s: u64::MAX
        }),
        b"CONTENTS 18446744073709551615 4 18446744073709551615\r\na\r\n\0\r\n"
    );
    assert_eq!(encoded(Reply::Written { version: 0 }), b"OK 0\r\n");
    assert_eq!(
        encoded(Reply::Written { version: 1_000_000 }),
        b"OK 1000000\r\n"
    );
    assert_eq!(encoded(Reply::Deleted), b"OK\r\n");
    assert_eq!(encoded(Reply::NotFound), b"ERR_FILE_NOT_FOUND\r\n");
    assert_eq!(
        encoded(Reply::VersionMismatch { current: 42 }),
        b"ERR_VERSION 42\r\n"
    );
    assert_eq!(encoded(Reply::CmdErr), b"ERR_CMD_ERR\r\n");
    assert_eq!(encoded(Reply::Internal), b"ERR_INTERNAL\r\n");
    assert_eq!(
        encoded(Reply::Redirect("127.0.0.1:8081")),
        b"ERR_REDIRECT 127.0.0.1:8081\r\n"
    );
}

#[test]
fn one_mebibyte_contents_reply() {
    let content = vec![7u8; MAX];
    let out = encoded(Reply::Contents {
        version: 3,
        content: &content,
        expires_in_s: 9,
    });
    let header = format!("CONTENTS 3 {MAX} 9\r\n");
    assert_eq!(out.len(), header.len() + MAX + 2);
    assert!(out.starts_with(header.as_bytes()) && out.ends_with(b"\x07\r\n"));
}

// ---- the benchmark's workloads, at tiny sizes ----------------------------------------

#[test]
fn benchmark_workloads_frame_and_encode_every_command() {
    use framing_bench::workload::{encode_all, parse_all, pipelined_input, Kind};
    for kind in [Kind::Write, Kind::Read, Kind::Cas] {
        for content_bytes in [0, 100] {
            let mut input = pipelined_input(kind, 50, content_bytes);
            assert_eq!(parse_all(&mut input), 50, "{}", kind.label());
            assert!(input.is_empty());
        }
    }
    let mut out = BytesMut::new();
    let written = encode_all(8, b"0123456789", &mut out);
    let expected: &[u8] = b"OK 1234567\r\nCONTENTS 98765432 10 42\r\n0123456789\r\nERR_VERSION 7654321\r\nERR_REDIRECT 127.0.0.1:8081\r\n";
    assert_eq!(written, 2 * expected.len());
    assert_eq!(&out[..], [expected, expected].concat());
}
