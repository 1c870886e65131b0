//! Property tests of client protocol framing (`raftfs::protocol`):
//! - any sequence of valid commands, serialised with any legal spacing and
//!   line ends and fed in arbitrary chunks, frames to the same commands;
//! - arbitrary bytes never panic, every call either consumes at least one byte
//!   or consumes nothing and waits, waiting is bounded, and the results do not
//!   depend on how the bytes were cut into reads.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use raftfs::fsm::Command;
use raftfs::limits::LINE_BYTES_MAX;
use raftfs::protocol::{parse_next, Parsed, Request};

/// A small limit, so the random cases reach it.
const MAX_FILE_BYTES: usize = 64;

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    let name_byte = prop_oneof![4 => b'a'..=b'z', 1 => 0x21u8..=0x7e, 1 => 0x80u8..=0xff];
    prop::collection::vec(name_byte, 1..=40)
}

fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
    let content_byte =
        prop_oneof![3 => any::<u8>(), 1 => Just(b'\r'), 1 => Just(b'\n'), 1 => Just(0u8)];
    prop::collection::vec(content_byte, 0..=MAX_FILE_BYTES)
}

fn request_strategy() -> impl Strategy<Value = Request> {
    let exptime = prop_oneof![Just(0u64), any::<u64>(), 0u64..1000];
    prop_oneof![
        name_strategy().prop_map(|name| Request::Read {
            name: Bytes::from(name)
        }),
        name_strategy().prop_map(|name| Request::Command(Command::Delete {
            name: Bytes::from(name)
        })),
        (name_strategy(), any::<u64>()).prop_map(|(name, version)| Request::Watch {
            name: Bytes::from(name),
            version,
        }),
        (name_strategy(), content_strategy(), exptime.clone()).prop_map(
            |(name, content, exptime_s)| {
                Request::Command(Command::Write {
                    name: Bytes::from(name),
                    content: Bytes::from(content),
                    exptime_s,
                })
            }
        ),
        (name_strategy(), any::<u64>(), content_strategy(), exptime).prop_map(
            |(name, version, content, exptime_s)| {
                Request::Command(Command::Cas {
                    name: Bytes::from(name),
                    version,
                    content: Bytes::from(content),
                    exptime_s,
                })
            }
        ),
    ]
}

/// How one command line is laid out: spaces before, between and after the
/// fields, bare `\n` or `\r\n`, leading zeros, and whether a zero EXPTIME is
/// written out.
#[derive(Clone, Debug)]
struct Layout {
    leading_spaces: usize,
    separator_spaces: usize,
    trailing_spaces: usize,
    bare_newline: bool,
    leading_zeros: usize,
    explicit_zero_exptime: bool,
}

fn layout_strategy() -> impl Strategy<Value = Layout> {
    (
        0usize..3,
        1usize..4,
        0usize..3,
        any::<bool>(),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(
            |(
                leading_spaces,
                separator_spaces,
                trailing_spaces,
                bare_newline,
                leading_zeros,
                explicit_zero_exptime,
            )| Layout {
                leading_spaces,
                separator_spaces,
                trailing_spaces,
                bare_newline,
                leading_zeros,
                explicit_zero_exptime,
            },
        )
}

fn serialise(request: &Request, layout: &Layout, out: &mut Vec<u8>) {
    let number = |value: u64| format!("{}{value}", "0".repeat(layout.leading_zeros)).into_bytes();
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut content: Option<&Bytes> = None;
    let exptime = |fields: &mut Vec<Vec<u8>>, exptime_s: u64| {
        if exptime_s != 0 || layout.explicit_zero_exptime {
            fields.push(number(exptime_s));
        }
    };
    match request {
        Request::Read { name } => fields.extend([b"read".to_vec(), name.to_vec()]),
        Request::Watch { name, version } => {
            fields.extend([b"watch".to_vec(), name.to_vec(), number(*version)])
        }
        Request::Command(Command::Delete { name }) => {
            fields.extend([b"delete".to_vec(), name.to_vec()])
        }
        Request::Command(Command::Write {
            name,
            content: bytes,
            exptime_s,
        }) => {
            fields.extend([b"write".to_vec(), name.to_vec(), number(bytes.len() as u64)]);
            exptime(&mut fields, *exptime_s);
            content = Some(bytes);
        }
        Request::Command(Command::Cas {
            name,
            version,
            content: bytes,
            exptime_s,
        }) => {
            fields.extend([
                b"cas".to_vec(),
                name.to_vec(),
                number(*version),
                number(bytes.len() as u64),
            ]);
            exptime(&mut fields, *exptime_s);
            content = Some(bytes);
        }
    }
    out.extend(std::iter::repeat_n(b' ', layout.leading_spaces));
    out.extend_from_slice(&fields.join(&vec![b' '; layout.separator_spaces][..]));
    out.extend(std::iter::repeat_n(b' ', layout.trailing_spaces));
    out.extend_from_slice(if layout.bare_newline { b"\n" } else { b"\r\n" });
    if let Some(content) = content {
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
}

/// Cuts `input` at the given (sorted, deduplicated) offsets.
fn chunks<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut offsets: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
    offsets.push(0);
    offsets.push(input.len());
    offsets.sort_unstable();
    offsets.dedup();
    offsets
        .windows(2)
        .map(|pair| &input[pair[0]..pair[1]])
        .collect()
}

/// Calls `parse_next` until it waits, checking the progress contract on each
/// call; stops after the first close (the connection would be gone).
/// Returns whether a close was seen.
fn drain(buffer: &mut BytesMut, results: &mut Vec<Parsed>) -> bool {
    loop {
        let before = buffer.to_vec();
        match parse_next(buffer, MAX_FILE_BYTES) {
            None => {
                assert_eq!(&buffer[..], &before[..], "None must consume nothing");
                // Waiting is bounded: a line still short enough, or content.
                assert!(before.len() < LINE_BYTES_MAX + 2 + MAX_FILE_BYTES + 2);
                // ... and only while the buffer can still become a command:
                // a line not yet ended, or a `write`/`cas` awaiting content.
                match before.iter().position(|&byte| byte == b'\n') {
                    None => assert!(before.len() <= LINE_BYTES_MAX + 1),
                    Some(newline_at) => {
                        let verb = before[..newline_at]
                            .split(|&byte| byte == b' ')
                            .find(|field| !field.is_empty());
                        assert!(
                            matches!(verb, Some(b"write") | Some(b"cas")),
                            "waits only for content"
                        );
                    }
                }
                return false;
            }
            Some(parsed) => {
                assert!(
                    buffer.len() < before.len(),
                    "Some must consume at least one byte"
                );
                let close = parsed == (Parsed::Malformed { close: true });
                if close {
                    assert!(buffer.is_empty(), "a close drops the buffer");
                }
                results.push(parsed);
                if close {
                    return true;
                }
            }
        }
    }
}

/// Feeds the chunks one by one; returns every result and what is left.
fn feed(chunks: &[&[u8]]) -> (Vec<Parsed>, Vec<u8>) {
    let mut buffer = BytesMut::new();
    let mut results = Vec::new();
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        if drain(&mut buffer, &mut results) {
            return (results, Vec::new());
        }
    }
    (results, buffer.to_vec())
}

/// Random input that often looks like the protocol.
fn noisy_input_strategy() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"read ".to_vec()),
        Just(b"write ".to_vec()),
        Just(b"cas ".to_vec()),
        Just(b"delete ".to_vec()),
        Just(b"write a 3\r\n".to_vec()),
        Just(b"cas a 1 2 3\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\t".to_vec()),
        Just(b"\x7f".to_vec()),
        Just(b"18446744073709551616".to_vec()),
        Just(vec![b'z'; 200]),
        (0u8..=9).prop_map(|digit| vec![b'0' + digit]),
        (b'a'..=b'z').prop_map(|letter| vec![letter]),
        any::<u8>().prop_map(|byte| vec![byte]),
    ];
    prop::collection::vec(piece, 0..120).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_commands_fed_in_any_chunks_frame_to_the_same_commands(
        commands in prop::collection::vec((request_strategy(), layout_strategy()), 0..24),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut input = Vec::new();
        for (request, layout) in &commands {
            serialise(request, layout, &mut input);
        }
        let (results, rest) = feed(&chunks(&input, &cuts));
        let expected: Vec<Parsed> = commands.iter().map(|(request, _)| Parsed::Request(request.clone())).collect();
        prop_assert_eq!(results, expected);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_depend_on_chunking(
        input in prop_oneof![noisy_input_strategy(), prop::collection::vec(any::<u8>(), 0..1200)],
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let whole = feed(&[&input[..]]);
        let chunked = feed(&chunks(&input, &cuts));
        prop_assert_eq!(&whole, &chunked);

        // Waiting is never forever: more bytes always bring an answer.
        let (_, rest) = whole;
        if !rest.is_empty() {
            let mut buffer = BytesMut::from(&rest[..]);
            buffer.extend_from_slice(&[b'x'; LINE_BYTES_MAX + MAX_FILE_BYTES + 4]);
            prop_assert!(parse_next(&mut buffer, MAX_FILE_BYTES).is_some());
        }
    }
}
