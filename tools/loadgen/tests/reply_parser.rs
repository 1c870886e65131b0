//! The reply parser fed the same stream in every possible chunking.

use loadgen::{Reply, ReplyError, ReplyParser};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// A stream with every reply kind, including content that contains `\r\n`,
/// reply-like text, NUL and high bytes, an empty content, and a larger one.
fn stream_and_replies() -> (Vec<u8>, Vec<Reply>) {
    let binary: &[u8] = b"\r\nOK 1\r\n\x00\xffCONTENTS 1 2 3\r\nERR_INTERNAL\r\n\n\r";
    let large: Vec<u8> = (0..5000u32).map(|index| (index % 251) as u8).collect();
    let mut stream = Vec::new();
    stream.extend_from_slice(format!("CONTENTS 12 {} 0\r\n", binary.len()).as_bytes());
    stream.extend_from_slice(binary);
    stream.extend_from_slice(
        b"\r\nOK 13\r\nOK\r\nERR_FILE_NOT_FOUND\r\nERR_VERSION 99\r\nERR_CMD_ERR\r\n",
    );
    stream.extend_from_slice(
        b"ERR_INTERNAL\r\nERR_REDIRECT 127.0.0.1:8081\r\nCONTENTS 4 0 17\r\n\r\n",
    );
    stream.extend_from_slice(
        format!("CONTENTS 18446744073709551615 {} 1\r\n", large.len()).as_bytes(),
    );
    stream.extend_from_slice(&large);
    stream.extend_from_slice(b"\r\nOK 14\n");
    let replies = vec![
        Reply::Contents {
            version: 12,
            length_bytes: binary.len() as u64,
            expiry_remaining_s: 0,
        },
        Reply::OkVersion(13),
        Reply::Ok,
        Reply::FileNotFound,
        Reply::VersionMismatch(99),
        Reply::CommandError,
        Reply::Internal,
        Reply::Redirect("127.0.0.1:8081".to_string()),
        Reply::Contents {
            version: 4,
            length_bytes: 0,
            expiry_remaining_s: 17,
        },
        Reply::Contents {
            version: u64::MAX,
            length_bytes: large.len() as u64,
            expiry_remaining_s: 1,
        },
        Reply::OkVersion(14),
    ];
    (stream, replies)
}

/// Feeds `chunks` the way a connection does: unconsumed bytes are kept and
/// prefixed to the next chunk.
fn parse_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Vec<Reply>, usize), ReplyError> {
    let mut parser = ReplyParser::new();
    let mut replies = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    for chunk in chunks {
        held.extend_from_slice(chunk);
        let mut offset = 0;
        loop {
            let (consumed, reply) = parser.parse(&held[offset..])?;
            offset += consumed;
            match reply {
                Some(reply) => replies.push(reply),
                None => break,
            }
        }
        held.drain(..offset);
    }
    Ok((replies, held.len()))
}

#[test]
fn every_two_way_split_parses_the_same() {
    let (stream, expected) = stream_and_replies();
    for split in 0..=stream.len() {
        let (replies, left) =
            parse_chunks([&stream[..split], &stream[split..]]).expect("valid stream");
        assert_eq!(replies, expected, "split at {split}");
        assert_eq!(left, 0);
    }
}

#[test]
fn byte_by_byte_and_random_chunkings_parse_the_same() {
    let (stream, expected) = stream_and_replies();
    let (replies, _) = parse_chunks(stream.chunks(1)).expect("valid stream");
    assert_eq!(replies, expected);
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    for _ in 0..300 {
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let length = rng.gen_range(1..=rest.len().min(64));
            let (chunk, tail) = rest.split_at(length);
            chunks.push(chunk);
            rest = tail;
        }
        let (replies, left) = parse_chunks(chunks).expect("valid stream");
        assert_eq!(replies, expected);
        assert_eq!(left, 0);
    }
}

#[test]
fn an_incomplete_reply_is_held_not_emitted() {
    let mut parser = ReplyParser::new();
    assert_eq!(
        parser.parse(b"CONTENTS 1 4 0\r\nab").expect("valid"),
        (18, None)
    );
    assert!(!parser.is_idle());
    assert_eq!(parser.parse(b"cd\r").expect("valid"), (3, None));
    assert_eq!(
        parser.parse(b"\nOK").expect("valid"),
        (
            1,
            Some(Reply::Contents {
                version: 1,
                length_bytes: 4,
                expiry_remaining_s: 0
            })
        )
    );
    assert!(parser.is_idle());
    assert_eq!(parser.parse(b"OK").expect("valid"), (0, None));
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Pcg64Mcg::seed_from_u64(11);
    let alphabet: &[u8] = b"OK CONTENTS ERR_VERSION ERR_REDIRECT 0123456789\r\n\x00\xff";
    for _ in 0..2000 {
        let length = rng.gen_range(0..200);
        let bytes: Vec<u8> = (0..length)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect();
        let split = rng.gen_range(0..=bytes.len());
        // Either replies or a ReplyError; the point is that it returns.
        let _ = parse_chunks([&bytes[..split], &bytes[split..]]);
    }
}
