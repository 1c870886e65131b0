// The SPEC §2 protocol tests, included by tests/protocol.rs (against a
// one-member cluster) and tests/protocol_followers.rs (against a follower),
// each of which defines `fresh_node()`.

use common::client::show;
use common::single::Node;
use std::io::Write;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

static NODE: OnceLock<Node> = OnceLock::new();
static VERSIONS: RwLock<()> = RwLock::new(());

fn node() -> &'static Node {
    NODE.get_or_init(fresh_node)
}

/// Other tests may write concurrently (their versions interleave).
fn shared() -> RwLockReadGuard<'static, ()> {
    VERSIONS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// No other test writes meanwhile (versions can be counted exactly).
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    VERSIONS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const CMD_ERR: &[u8] = b"ERR_CMD_ERR\r\n";
const NOT_FOUND: &[u8] = b"ERR_FILE_NOT_FOUND\r\n";

fn contents(version: u64, content: &[u8], expires_in_s: u64) -> Vec<u8> {
    let mut bytes = format!("CONTENTS {version} {} {expires_in_s}\r\n", content.len()).into_bytes();
    bytes.extend_from_slice(content);
    bytes.extend_from_slice(b"\r\n");
    bytes
}

fn ok(version: u64) -> Vec<u8> {
    format!("OK {version}\r\n").into_bytes()
}

fn write_request(name: &[u8], content: &[u8], exptime: Option<u64>) -> Vec<u8> {
    let mut bytes = b"write ".to_vec();
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(format!(" {}", content.len()).as_bytes());
    if let Some(exptime) = exptime {
        bytes.extend_from_slice(format!(" {exptime}").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(content);
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// A telnet user's first session on a fresh cluster, one command at a time.
#[test]
fn seed_session_on_a_fresh_cluster() {
    let fresh = fresh_node();
    let mut c = fresh.connect();
    c.exchange(b"read foo\r\n", NOT_FOUND);
    c.exchange(b"write foo 5\r\nhello\r\n", b"OK 1\r\n");
    c.exchange(b"read foo\r\n", b"CONTENTS 1 5 0\r\nhello\r\n");
    c.exchange(b"write foo 7 100\r\nhi\r\nyou\r\n", b"OK 2\r\n");
    c.exchange(b"read foo\r\n", b"CONTENTS 2 7 100\r\nhi\r\nyou\r\n");
    c.exchange(b"cas foo 2 3\r\nbye\r\n", b"OK 3\r\n");
    c.exchange(b"read foo\r\n", b"CONTENTS 3 3 0\r\nbye\r\n");
    c.exchange(b"cas foo 2 3\r\nnew\r\n", b"ERR_VERSION 3\r\n");
    c.exchange(b"cas bar 1 3\r\nnew\r\n", NOT_FOUND);
    c.exchange(b"write bar 0\r\n\r\n", b"OK 4\r\n");
    c.exchange(b"read bar\r\n", b"CONTENTS 4 0 0\r\n\r\n");
    c.exchange(b"delete foo\r\n", b"OK\r\n");
    c.exchange(b"read foo\r\n", NOT_FOUND);
    c.exchange(b"delete foo\r\n", NOT_FOUND);
    c.exchange(b"cas foo 3 1\r\nx\r\n", NOT_FOUND);
    c.exchange(b"write foo 5\r\nagain\r\n", b"OK 5\r\n");
    c.exchange(b"\r\n", CMD_ERR);
    c.exchange(b"read foo\r\n", b"CONTENTS 5 5 0\r\nagain\r\n");
    c.exchange(b"hello world\r\n", CMD_ERR);
    c.expect_closed();
    let mut again = fresh.connect();
    again.exchange(b"read foo\r\n", b"CONTENTS 5 5 0\r\nagain\r\n");
}

/// Malformed input whose end is known: `ERR_CMD_ERR`, the connection stays,
/// skipped content never runs, and the file is untouched.
#[test]
fn malformed_commands_that_keep_the_connection() {
    let _guard = shared();
    let mut c = node().connect();
    let original_version = c.write_version("keep-victim", b"original");
    let long_name = vec![b'n'; 251];
    let mut cases: Vec<Vec<u8>> = vec![
        b"\r\n".to_vec(),
        b"\n".to_vec(),
        b"     \r\n".to_vec(),
        b" \n".to_vec(),
        b"read\r\n".to_vec(),
        b"read   \r\n".to_vec(),
        b"read keep-victim extra\r\n".to_vec(),
        b"delete\r\n".to_vec(),
        b"delete keep-victim extra\r\n".to_vec(),
        b"read keep\x7fvictim\r\n".to_vec(),
        b"read keep\tvictim\r\n".to_vec(),
        b"read keep-victim\t\r\n".to_vec(),
        b"read keep\x00victim\r\n".to_vec(),
        b"delete keep-victim\x7f\r\n".to_vec(),
        b"delete \x7f\r\n".to_vec(),
        b"delete keep\tvictim\r\n".to_vec(),
        [b"read ".as_slice(), &long_name, b"\r\n"].concat(),
        [b"delete ".as_slice(), &long_name, b"\r\n"].concat(),
        // write/cas with a valid NUMBYTES: the content is skipped.
        write_request(b"keep-victim\x7f", b"bad", None),
        write_request(b"keep\tvictim", b"bad", None),
        write_request(&long_name, b"bad", None),
        b"write keep-victim 3 -1\r\nbad\r\n".to_vec(),
        b"write keep-victim 3 +1\r\nbad\r\n".to_vec(),
        b"write keep-victim 3 x\r\nbad\r\n".to_vec(),
        b"write keep-victim 3 1.5\r\nbad\r\n".to_vec(),
        b"write keep-victim 3 0x1\r\nbad\r\n".to_vec(),
        b"write keep-victim 3 18446744073709551616\r\nbad\r\n".to_vec(),
        b"write keep-victim 3 0 0\r\nbad\r\n".to_vec(),
        b"write keep-victim 3 0\t\r\nbad\r\n".to_vec(),
        b"cas keep-victim x 3\r\nbad\r\n".to_vec(),
        format!("cas keep-victim -{original_version} 3\r\nbad\r\n").into_bytes(),
        format!("cas keep-victim +{original_version} 3\r\nbad\r\n").into_bytes(),
        b"cas keep-victim 18446744073709551616 3\r\nbad\r\n".to_vec(),
        format!("cas keep-victim {original_version} 3 -5\r\nbad\r\n").into_bytes(),
        format!("cas keep-victim {original_version} 3 99999999999999999999\r\nbad\r\n")
            .into_bytes(),
        format!("cas keep-victim {original_version} 3 0 0\r\nbad\r\n").into_bytes(),
        format!("cas keep\x7fvictim {original_version} 3\r\nbad\r\n").into_bytes(),
        [b"cas ".as_slice(), &long_name, b" 1 3\r\nbad\r\n"].concat(),
        // Skipped content that looks like commands never runs.
        write_request(b"bad\x7fname", b"delete keep-victim", None),
        write_request(
            b"bad\x7fname",
            b"delete keep-victim\r\nread keep-victim",
            Some(0),
        ),
        format!("cas keep-victim {original_version} 22 zz\r\nwrite keep-victim 1\r\nX\r\n")
            .into_bytes(),
        // Content may hold the bytes of a terminator; only NUMBYTES counts.
        write_request(b"bad\tname", b"\r\n\r\n", None),
    ];
    // One at a time: each answered at once, the connection kept.
    for case in &cases {
        eprintln!("case {}", show(case));
        c.send(case).expect("send to the node");
        c.expect(CMD_ERR);
    }
    c.exchange(
        b"read keep-victim\r\n",
        &contents(original_version, b"original", 0),
    );
    // All at once, pipelined behind each other: one answer each, in order.
    cases.push(b"read keep-victim\r\n".to_vec());
    c.send(&cases.concat()).expect("send to the node");
    for _ in 0..cases.len() - 1 {
        c.expect(CMD_ERR);
    }
    c.expect(&contents(original_version, b"original", 0));
}

/// Malformed input whose end cannot be known: `ERR_CMD_ERR` at once, then the
/// connection closes, and nothing sent after it runs.
#[test]
fn malformed_commands_that_close_the_connection() {
    let _guard = shared();
    let mut setup = node().connect();
    let victim_version = setup.write_version("close-victim", b"original");
    let overlong_read = [b"read x".as_slice(), &[b' '; 495], b"\r\n"].concat();
    assert_eq!(overlong_read.len(), 501 + 2);
    let overlong_name = [b"read ".as_slice(), &[b'a'; 496], b"\r\n"].concat();
    let cases: Vec<Vec<u8>> = vec![
        b"foo\r\n".to_vec(),
        b"hello world\r\n".to_vec(),
        b"READ close-victim\r\n".to_vec(),
        b"Write close-victim 1\r\nx\r\n".to_vec(),
        b"reads close-victim\r\n".to_vec(),
        b"\tread close-victim\r\n".to_vec(),
        b"read\tclose-victim\r\n".to_vec(),
        b"\x7f\r\n".to_vec(),
        // write/cas without a usable NUMBYTES: where the command ends is unknown.
        b"write\r\n".to_vec(),
        b"write close-victim\r\n".to_vec(),
        b"cas\r\n".to_vec(),
        b"cas close-victim\r\n".to_vec(),
        format!("cas close-victim {victim_version}\r\n").into_bytes(),
        b"write close-victim x\r\nabc\r\n".to_vec(),
        b"write close-victim -1\r\nabc\r\n".to_vec(),
        b"write close-victim +3\r\nabc\r\n".to_vec(),
        b"write close-victim 3.0\r\nabc\r\n".to_vec(),
        b"write close-victim 0x3\r\nabc\r\n".to_vec(),
        b"write close-victim 18446744073709551616\r\nabc\r\n".to_vec(),
        b"write close-victim 99999999999999999999999\r\nabc\r\n".to_vec(),
        b"write close-victim 3 x\r\nabcXY".to_vec(),
        format!("cas close-victim {victim_version} x\r\nabc\r\n").into_bytes(),
        format!("cas close-victim {victim_version} -3\r\nabc\r\n").into_bytes(),
        // Overlong lines (501 bytes before the terminator).
        overlong_read,
        overlong_name,
        vec![b'a'; 501],
        vec![b'w'; 4096],
        // Content not followed by exactly \r\n.
        b"write close-victim 3\r\nabcXY".to_vec(),
        b"write close-victim 3\r\nabc\nread close-victim\r\n".to_vec(),
        b"write close-victim 3\r\nabcd\r\n".to_vec(),
        b"write close-victim 3\r\nab\r\nread close-victim\r\n".to_vec(),
        b"write close-victim 3\r\nabc\r\r".to_vec(),
        format!("cas close-victim {victim_version} 3\r\nabc\n\n").into_bytes(),
    ];
    // Each case, then a valid command that must never run.
    let follower = write_request(b"close-victim", b"changed", None);
    for case in &cases {
        eprintln!("case {}", show(case));
        let mut c = node().connect();
        c.send(&[case.as_slice(), &follower].concat())
            .expect("send to the node");
        c.expect(CMD_ERR);
        c.expect_closed();
    }
    setup.exchange(
        b"read close-victim\r\n",
        &contents(victim_version, b"original", 0),
    );
}

/// An over-limit NUMBYTES is answered without waiting for the content.
#[test]
fn over_limit_numbytes_is_answered_before_the_content() {
    let _guard = shared();
    let mut setup = node().connect();
    let version = setup.write_version("limit-victim", b"original");
    for line in [
        "write limit-victim 1048577\r\n".to_string(),
        format!("cas limit-victim {version} 1048577\r\n"),
        "write limit-victim 18446744073709551615\r\n".to_string(),
    ] {
        let mut c = node().connect();
        c.set_timeout(Duration::from_secs(2));
        c.send(line.as_bytes()).expect("send to the node");
        c.expect(CMD_ERR);
        c.expect_closed();
    }
    setup.exchange(b"read limit-victim\r\n", &contents(version, b"original", 0));
}

/// Line length is counted without the terminator: 500 bytes are fine.
#[test]
fn a_500_byte_line_is_accepted() {
    let _guard = shared();
    let mut c = node().connect();
    let mut line = b"write len-500 3".to_vec();
    line.resize(500, b' ');
    line.extend_from_slice(b"\r\nabc\r\n");
    c.send(&line).expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    let mut read = b"read len-500".to_vec();
    read.resize(500, b' ');
    read.extend_from_slice(b"\n");
    c.exchange(&read, &contents(version, b"abc", 0));
}

#[test]
fn names_any_byte_above_space_except_delete_up_to_250_bytes() {
    let _guard = shared();
    let mut c = node().connect();
    let long_name = "n".repeat(250);
    let names: Vec<Vec<u8>> = vec![
        b"a".to_vec(),
        long_name.into_bytes(),
        "файл-名前-🦀".as_bytes().to_vec(),
        vec![b'!', b'~', 0x80, 0xff, b'"', b'\\'],
    ];
    for name in names {
        c.send(&write_request(&name, &name, None))
            .expect("send to the node");
        let version = c.reply_parts().expect("reply").written_version();
        c.exchange(
            &[b"read ".as_slice(), &name, b"\r\n"].concat(),
            &contents(version, &name, 0),
        );
        c.exchange(&[b"delete ".as_slice(), &name, b"\r\n"].concat(), b"OK\r\n");
    }
}

#[test]
fn numbers_allow_leading_zeros_and_the_whole_u64_range() {
    let _guard = shared();
    let mut c = node().connect();
    c.send(b"write num 003 0000\r\nabc\r\n")
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.exchange(b"read num\r\n", &contents(version, b"abc", 0));
    c.send(format!("cas num 000{version} 01 00\r\nx\r\n").as_bytes())
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.exchange(
        b"cas num 18446744073709551615 1\r\ny\r\n",
        format!("ERR_VERSION {version}\r\n").as_bytes(),
    );
    // The largest EXPTIME saturates instead of overflowing.
    c.send(b"write num 1 18446744073709551615\r\nz\r\n")
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    let reply = c.read_parts("num");
    let (read_version, expires_in_s) = reply.contents_fields();
    assert_eq!(read_version, version);
    assert!(expires_in_s > 1_000_000_000, "{reply:?}");
    assert_eq!(reply.content.as_deref(), Some(b"z".as_slice()));
}

#[test]
fn spaces_separate_fields_and_bare_newlines_end_lines() {
    let _guard = shared();
    let mut c = node().connect();
    c.send(b"   write    lex-a   3   \r\nabc\r\n")
        .expect("send to the node");
    let first = c.reply_parts().expect("reply").written_version();
    c.exchange(b"  read  lex-a  \r\n", &contents(first, b"abc", 0));
    // Bare `\n` after the command line (the content still needs `\r\n`).
    c.send(b"write lex-a 4\nabcd\r\n")
        .expect("send to the node");
    let second = c.reply_parts().expect("reply").written_version();
    assert!(second > first);
    c.exchange(b"read lex-a\n", &contents(second, b"abcd", 0));
    c.send(format!("cas lex-a {second} 2 7\nxy\r\n").as_bytes())
        .expect("send to the node");
    let third = c.reply_parts().expect("reply").written_version();
    c.exchange(b"read lex-a\n", &contents(third, b"xy", 7));
    c.exchange(b"delete lex-a\n", b"OK\r\n");
    c.exchange(b"read lex-a\n", NOT_FOUND);
    // Mixed terminators pipelined in one send.
    c.send(b"write lex-b 1\nq\r\nread lex-b\r\nread lex-b\n")
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.expect(&contents(version, b"q", 0));
    c.expect(&contents(version, b"q", 0));
}

#[test]
fn binary_content_with_terminators_and_nul_round_trips() {
    let _guard = shared();
    let mut c = node().connect();
    let mut content = b"\r\n\0read bin\r\n\r\nwrite x 1\r\n\xff\x00\x7f\n\r".to_vec();
    content.extend((0..=255u8).cycle().take(4096));
    content.extend_from_slice(b"\r\n");
    c.send(&write_request(b"bin", &content, None))
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.exchange(b"read bin\r\n", &contents(version, &content, 0));
}

#[test]
fn empty_and_largest_files() {
    let _guard = shared();
    let mut c = node().connect();
    c.send(b"write empty 0\r\n\r\n").expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.exchange(
        b"read empty\r\n",
        format!("CONTENTS {version} 0 0\r\n\r\n").as_bytes(),
    );
    let big: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    c.send(&write_request(b"largest", &big, None))
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.exchange(b"read largest\r\n", &contents(version, &big, 0));
    // One byte more is refused, and the file stays as it was.
    let mut over = node().connect();
    over.send(b"write largest 1048577\r\n")
        .expect("send to the node");
    over.expect(CMD_ERR);
    over.expect_closed();
    c.exchange(b"read largest\r\n", &contents(version, &big, 0));
}

/// 10,000 commands in one send, answered in order; each pipelined read sees
/// the write before it on the same connection.
#[test]
fn ten_thousand_pipelined_commands_answer_in_order() {
    let _guard = shared();
    let c = node().connect();
    const ROUNDS: usize = 2_500;
    let mut request = Vec::new();
    for i in 0..ROUNDS {
        let name = format!("pipe-{}", i % 16);
        let value = format!("value-{i}");
        request.extend(write_request(name.as_bytes(), value.as_bytes(), None));
        request.extend(format!("read {name}\r\n").into_bytes());
        request.extend(format!("cas {name} 0 1\r\nx\r\n").into_bytes());
        request.extend(format!("read {name}\r\n").into_bytes());
    }
    let mut writer = c.stream().try_clone().expect("clone");
    let sender = std::thread::spawn(move || writer.write_all(&request));
    let mut c = c;
    let mut last_version = 0;
    for i in 0..ROUNDS {
        let value = format!("value-{i}");
        let version = c.reply_parts().expect("reply").written_version();
        assert!(version > last_version, "versions go up on one connection");
        last_version = version;
        let expected = contents(version, value.as_bytes(), 0);
        c.expect(&expected);
        c.expect(format!("ERR_VERSION {version}\r\n").as_bytes());
        c.expect(&expected);
    }
    sender.join().expect("sender").expect("send");
}

/// Versions: consecutive, never reused, and only writes and successful cas
/// consume them.
#[test]
fn versions_are_consecutive_and_never_reused() {
    let _guard = exclusive();
    let mut c = node().connect();
    let v = c.write_version("ver-a", b"1");
    c.exchange(b"write ver-a 1\r\n2\r\n", &ok(v + 1));
    c.exchange(b"write ver-b 1\r\n3\r\n", &ok(v + 2));
    c.exchange(
        format!("cas ver-a {} 1\r\n4\r\n", v + 1).as_bytes(),
        &ok(v + 3),
    );
    c.exchange(b"read ver-a\r\n", &contents(v + 3, b"4", 0));
    // A stale cas fails and consumes no version.
    c.exchange(
        format!("cas ver-a {} 1\r\n5\r\n", v + 1).as_bytes(),
        format!("ERR_VERSION {}\r\n", v + 3).as_bytes(),
    );
    c.exchange(b"cas ver-missing 1 1\r\n5\r\n", NOT_FOUND);
    c.exchange(b"cas ver-missing 0 1\r\n5\r\n", NOT_FOUND);
    c.exchange(b"read ver-missing\r\n", NOT_FOUND);
    c.exchange(b"write ver-c 1\r\n6\r\n", &ok(v + 4));
    // Deletes consume none; re-creating takes a higher version than before.
    c.exchange(b"delete ver-a\r\n", b"OK\r\n");
    c.exchange(b"delete ver-a\r\n", NOT_FOUND);
    c.exchange(
        format!("cas ver-a {} 1\r\n7\r\n", v + 3).as_bytes(),
        NOT_FOUND,
    );
    c.exchange(b"write ver-a 1\r\n8\r\n", &ok(v + 5));
    c.exchange(b"read ver-a\r\n", &contents(v + 5, b"8", 0));
    // Malformed commands consume none either.
    c.exchange(b"write ver-a 1 x\r\n9\r\n", CMD_ERR);
    c.exchange(b"write ver-b 1\r\n9\r\n", &ok(v + 6));
    // Pipelined: the same numbering.
    c.send(
        format!(
            "write ver-d 1\r\na\r\ncas ver-d {} 1\r\nb\r\ncas ver-d 1 1\r\nc\r\ndelete ver-d\r\nwrite ver-d 1\r\nd\r\nread ver-d\r\n",
            v + 7
        )
        .as_bytes(),
    ).expect("send to the node");
    c.expect(&ok(v + 7));
    c.expect(&ok(v + 8));
    c.expect(format!("ERR_VERSION {}\r\n", v + 8).as_bytes());
    c.expect(b"OK\r\n");
    c.expect(&ok(v + 9));
    c.expect(&contents(v + 9, b"d", 0));
}

/// Commands on one connection take effect in order: a pipelined read sees
/// the write, cas and delete sent before it.
#[test]
fn pipelined_reads_see_earlier_commands_of_their_connection() {
    let _guard = shared();
    let mut c = node().connect();
    c.send(
        b"write order 1\r\na\r\nread order\r\nwrite order 1\r\nb\r\nread order\r\ndelete order\r\nread order\r\nwrite order 1\r\nc\r\nread order\r\n",
    ).expect("send to the node");
    let first = c.reply_parts().expect("reply").written_version();
    c.expect(&contents(first, b"a", 0));
    let second = c.reply_parts().expect("reply").written_version();
    c.expect(&contents(second, b"b", 0));
    c.expect(b"OK\r\n");
    c.expect(NOT_FOUND);
    let third = c.reply_parts().expect("reply").written_version();
    c.expect(&contents(third, b"c", 0));
    // Another connection sees the finished writes too.
    let mut other = node().connect();
    other.exchange(b"read order\r\n", &contents(third, b"c", 0));
}

/// Expiry counts down in whole seconds rounded up, then the file is gone for
/// every command; a later write or cas replaces the expiry.
#[test]
fn expiry_counts_down_and_later_writes_replace_it() {
    let _guard = shared();
    let mut c = node().connect();
    c.send(b"write exp-gone 4 2\r\nsoon\r\n")
        .expect("send to the node");
    let expiring = c.reply_parts().expect("reply").written_version();
    let written_at = Instant::now();
    // Cancelled by a later write (explicit 0, or no EXPTIME) or cas.
    c.send(b"write exp-kept-a 1 2\r\na\r\n")
        .expect("send to the node");
    let kept_a = c.reply_parts().expect("reply").written_version();
    c.send(b"write exp-kept-a 1 0\r\nA\r\n")
        .expect("send to the node");
    let kept_a2 = c.reply_parts().expect("reply").written_version();
    assert!(kept_a2 > kept_a);
    let version = c.write_version("exp-kept-b", b"b");
    c.send(format!("cas exp-kept-b {version} 1 1\r\nb\r\n").as_bytes())
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.send(b"write exp-kept-b 1\r\nB\r\n")
        .expect("send to the node");
    let kept_b = c.reply_parts().expect("reply").written_version();
    assert!(kept_b > version);
    c.send(b"write exp-kept-c 1 1\r\nc\r\n")
        .expect("send to the node");
    let version = c.reply_parts().expect("reply").written_version();
    c.send(format!("cas exp-kept-c {version} 1\r\nC\r\n").as_bytes())
        .expect("send to the node");
    let kept_c = c.reply_parts().expect("reply").written_version();

    c.exchange(b"read exp-gone\r\n", &contents(expiring, b"soon", 2));
    sleep_until(written_at + Duration::from_millis(1_200));
    c.exchange(b"read exp-gone\r\n", &contents(expiring, b"soon", 1));
    sleep_until(written_at + Duration::from_millis(2_300));
    c.exchange(b"read exp-gone\r\n", NOT_FOUND);
    c.exchange(
        format!("cas exp-gone {expiring} 1\r\nx\r\n").as_bytes(),
        NOT_FOUND,
    );
    c.exchange(b"delete exp-gone\r\n", NOT_FOUND);
    c.exchange(b"read exp-gone\r\n", NOT_FOUND);
    c.exchange(b"read exp-kept-a\r\n", &contents(kept_a2, b"A", 0));
    c.exchange(b"read exp-kept-b\r\n", &contents(kept_b, b"B", 0));
    c.exchange(b"read exp-kept-c\r\n", &contents(kept_c, b"C", 0));
    // An expired name can be written again, with a new version.
    c.send(b"write exp-gone 3\r\nnew\r\n")
        .expect("send to the node");
    let reborn = c.reply_parts().expect("reply").written_version();
    assert!(reborn > expiring);
    c.exchange(b"read exp-gone\r\n", &contents(reborn, b"new", 0));
}

/// How long a waiting `watch` is watched for a wrong early answer.
const WATCH_SILENCE: Duration = Duration::from_millis(400);

/// `watch NAME VERSION`: answered at once, with exactly what `read` would
/// answer, if the file left VERSION; else woken by another connection's
/// write, delete, create (VERSION 0) and expiry.
#[test]
fn a_watch_waits_for_a_write_delete_create_or_expiry_from_elsewhere() {
    let _guard = shared();
    let mut writer = node().connect();
    let mut watcher = node().connect();
    let first = writer.write_version("watch-w", b"one");
    watcher.exchange(b"watch watch-w 0\r\n", &contents(first, b"one", 0));
    watcher.exchange(b"watch watch-w-absent 9\r\n", NOT_FOUND);

    watcher
        .send(format!("watch watch-w {first}\r\n").as_bytes())
        .expect("send to the node");
    watcher.expect_silence(WATCH_SILENCE, "watch on the current version");
    let second = writer.write_version("watch-w", b"second");
    watcher.expect(&contents(second, b"second", 0));

    watcher
        .send(format!("watch watch-w {second}\r\n").as_bytes())
        .expect("send to the node");
    watcher.expect_silence(WATCH_SILENCE, "watch before the delete");
    writer.exchange(b"delete watch-w\r\n", b"OK\r\n");
    watcher.expect(NOT_FOUND);

    watcher
        .send(b"watch watch-w 0\r\n")
        .expect("send to the node");
    watcher.expect_silence(WATCH_SILENCE, "watch for existence");
    let third = writer.write_version("watch-w", b"3");
    watcher.expect(&contents(third, b"3", 0));

    // Expiry: cluster time, stamped by the leader (and applied here).
    writer
        .send(b"write watch-lease 4 1\r\nheld\r\n")
        .expect("send to the node");
    let leased = writer.reply_parts().expect("reply").written_version();
    let registered = Instant::now();
    watcher
        .send(format!("watch watch-lease {leased}\r\n").as_bytes())
        .expect("send to the node");
    watcher.expect(NOT_FOUND);
    let waited = registered.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "expiry of a 1 s file woke the watch after {waited:?}"
    );
}

/// Commands pipelined after a waiting watch (even a write to its file) are
/// answered after it, in order; a bad `watch` keeps the connection.
#[test]
fn commands_pipelined_after_a_watch_are_answered_after_it() {
    let _guard = shared();
    let mut writer = node().connect();
    let mut watcher = node().connect();
    let version = writer.write_version("watch-p", b"a");
    watcher.exchange(b"watch watch-p\r\n", CMD_ERR);
    watcher.exchange(b"watch watch-p x\r\n", CMD_ERR);
    watcher
        .send(
            format!("watch watch-p {version}\r\nwrite watch-p 4\r\nmine\r\nread watch-p\r\n")
                .as_bytes(),
        )
        .expect("send to the node");
    watcher.expect_silence(WATCH_SILENCE, "commands behind a waiting watch");
    writer.exchange(b"read watch-p\r\n", &contents(version, b"a", 0));
    let theirs = writer.write_version("watch-p", b"theirs");
    watcher.expect(&contents(theirs, b"theirs", 0));
    let mine = watcher.reply_parts().expect("reply").written_version();
    assert!(mine > theirs, "the write behind the watch ran before it");
    watcher.expect(&contents(mine, b"mine", 0));
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
