//! Snapshot files: the file map at one log index, on disk, checksummed; and
//! restart from the newest valid snapshot plus the WAL tail.
//!
//! A data dir holds at most `SNAPSHOTS_KEPT` (2) snapshot files, named
//! `snapshot-<index:020>-<term:020>.snap`, so name order is index order:
//!
//! ```text
//! header (40 bytes): magic "RAFTFSSN" | format u32 (= 2) | reserved u32 (0)
//!                    | index u64 | term u64 | payload length u64
//! payload:           Fsm::snapshot() (files, version counter, cluster time,
//!                    and the Raft configuration in force at `index`)
//! trailer:           crc32c u32 of header and payload
//! ```
//!
//! Format 2 differs from format 1 only in its payload, which records the
//! configuration in force (membership change); format-1 files, from data
//! dirs written before, still load: their configuration is the one
//! cluster.toml bootstraps, until the log holds one.
//!
//! The whole file is the byte string InstallSnapshot streams, so a follower
//! writes chunks straight to disk and checks the very same trailer.
//!
//! Memory: files are written and read as streams (1 MiB buffers, the checksum
//! computed on the way), never held whole: a 1M-file snapshot is ~130 MB,
//! which would otherwise sit next to the map being saved or rebuilt. A
//! reader builds the map while reading and checks the trailer at the end; a
//! damaged file is refused as a whole ("checksum mismatch" when the trailer
//! disagrees, whatever the decoder met first).
//! A file is written to `<name>.tmp`, fsynced, renamed, and the directory
//! fsynced (`write_file`); leftover `.tmp` files are removed at start.
//!
//! Restart (`restore`): the newest snapshot that passes its checks, then the
//! WAL entries after its index. A damaged newest snapshot falls back to the
//! older one if the WAL still reaches back to it; if no snapshot fits the
//! WAL the node refuses to start with one line saying why — it never starts
//! with a gap in its log (which would silently lose acknowledged writes).
//!
//! Submodules: `worker` takes snapshots on a helper thread (the reactor
//! never serialises the map); `transfer` reads chunks for the leader and
//! assembles them on the follower, both with bounded memory.

pub mod transfer;
pub mod worker;

use crate::error::{Error, Result};
use crate::fsm::{FrozenFsm, Fsm};
use crate::limits::SNAPSHOT_BYTES_MAX;
use crate::raft::{Entry, Index, SnapshotMeta, Term};
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"RAFTFSSN";
pub const SNAPSHOT_FILE_FORMAT: u32 = 2;
/// The oldest file format this build reads.
pub const SNAPSHOT_FILE_FORMAT_OLDEST: u32 = 1;
pub const HEADER_BYTES: usize = 40;
pub const TRAILER_BYTES: usize = 4;

/// The file name of the snapshot through `index` (of `term`).
pub fn file_name(index: Index, term: Term) -> String {
    format!("snapshot-{index:020}-{term:020}.snap")
}

/// The (index, term) a snapshot file name stands for, if it is one.
pub fn parse_file_name(name: &str) -> Option<(Index, Term)> {
    let rest = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    let (index, term) = rest.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    if !index
        .bytes()
        .chain(term.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

/// Snapshot files in `dir`, oldest (lowest index) first.
pub fn list(dir: &Path) -> Result<Vec<(Index, Term, PathBuf)>> {
    let listing =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut found = Vec::new();
    for item in listing {
        let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        if let Some((index, term)) = item.file_name().to_str().and_then(parse_file_name) {
            found.push((index, term, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The 40-byte header of a snapshot file.
pub fn encode_header(index: Index, term: Term, payload_bytes: u64) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&SNAPSHOT_FILE_FORMAT.to_le_bytes());
    header[16..24].copy_from_slice(&index.to_le_bytes());
    header[24..32].copy_from_slice(&term.to_le_bytes());
    header[32..40].copy_from_slice(&payload_bytes.to_le_bytes());
    header
}

/// Buffer of the snapshot file streams.
const STREAM_BUFFER_BYTES: usize = 1 << 20;

/// Checks a whole snapshot file's bytes and rebuilds its state machine.
pub fn decode(bytes: &[u8]) -> std::result::Result<(SnapshotMeta, Fsm), String> {
    decode_from(bytes, bytes.len() as u64)
}

/// As `decode`, reading the file's `file_bytes` bytes from `input` as a
/// stream: the file is never held whole (see the module doc).
pub fn decode_from<R: Read>(
    input: R,
    file_bytes: u64,
) -> std::result::Result<(SnapshotMeta, Fsm), String> {
    if file_bytes < (HEADER_BYTES + TRAILER_BYTES) as u64 {
        return Err(format!("{file_bytes} bytes, too short for a snapshot"));
    }
    let mut reader = ChecksumReader::new(input);
    let mut header = [0u8; HEADER_BYTES];
    reader
        .read_exact(&mut header)
        .map_err(|e| format!("reading the header: {e}"))?;
    if &header[0..8] != SNAPSHOT_MAGIC {
        return Err("bad magic (not a raftfs snapshot)".into());
    }
    let word = |offset: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&header[offset..offset + 8]);
        u64::from_le_bytes(word)
    };
    let format = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if !(SNAPSHOT_FILE_FORMAT_OLDEST..=SNAPSHOT_FILE_FORMAT).contains(&format) {
        return Err(format!(
            "format {format}, this build reads only {SNAPSHOT_FILE_FORMAT_OLDEST} to \
             {SNAPSHOT_FILE_FORMAT}"
        ));
    }
    let (index, term, payload_bytes) = (word(16), word(24), word(32));
    let expected = (HEADER_BYTES + TRAILER_BYTES) as u64;
    if payload_bytes.checked_add(expected) != Some(file_bytes) {
        return Err(format!(
            "header says {payload_bytes} payload bytes, file has {file_bytes}"
        ));
    }
    let decoded = Fsm::read_snapshot(&mut reader, payload_bytes);
    if decoded.is_err() {
        // Read the rest of the payload so the checksum can tell a damaged
        // file (the usual case) from a well-formed file of bad content.
        let left = (HEADER_BYTES as u64 + payload_bytes).saturating_sub(reader.consumed_bytes);
        io::copy(&mut (&mut reader).take(left), &mut io::sink())
            .map_err(|e| format!("reading the payload: {e}"))?;
    }
    let computed = reader.checksum();
    let mut trailer = [0u8; TRAILER_BYTES];
    reader
        .read_exact(&mut trailer)
        .map_err(|e| format!("reading the trailer: {e}"))?;
    if computed != u32::from_le_bytes(trailer) {
        return Err("checksum mismatch".into());
    }
    let fsm = decoded.map_err(|e| format!("state machine does not decode: {e:?}"))?;
    let meta = SnapshotMeta {
        index,
        term,
        size_bytes: file_bytes,
    };
    Ok((meta, fsm))
}

/// Reads and checks one snapshot file (as a stream).
pub fn load(path: &Path) -> Result<(SnapshotMeta, Fsm)> {
    let file = File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    if size > SNAPSHOT_BYTES_MAX {
        return Err(Error::Corrupt(format!(
            "{}: {size} bytes, more than a snapshot may be",
            path.display()
        )));
    }
    decode_from(BufReader::with_capacity(STREAM_BUFFER_BYTES, file), size)
        .map_err(|reason| Error::Corrupt(format!("{}: {reason}", path.display())))
}

/// Serialises `fsm` as the snapshot through `index` (of `term`) into `dir`:
/// temporary file, fsync, rename, directory fsync. Returns its meta and path.
/// The map is encoded straight into the file (no copy in memory).
pub fn write_file(
    dir: &Path,
    fsm: FrozenFsm,
    index: Index,
    term: Term,
    fsync: bool,
) -> Result<(SnapshotMeta, PathBuf)> {
    let name = file_name(index, term);
    let path = dir.join(&name);
    let temporary = dir.join(format!("{name}.tmp"));
    let written = (|| -> io::Result<u64> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        let (file, size_bytes) = write_to(file, &fsm, index, term)?;
        // Encoded: the view's chunks and superseded contents are freed
        // before the fsync, not after it.
        drop(fsm);
        if fsync {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&temporary, &path)?;
        if fsync {
            crate::storage::sync_dir(dir)?;
        }
        Ok(size_bytes)
    })();
    let size_bytes =
        written.map_err(|e| Error::io(format!("writing snapshot {}", path.display()), e))?;
    Ok((
        SnapshotMeta {
            index,
            term,
            size_bytes,
        },
        path,
    ))
}

/// The whole snapshot file's bytes in memory (the simulator's disk keeps
/// files so; a node never does, see the module doc).
pub fn encode(fsm: &FrozenFsm, index: Index, term: Term) -> Bytes {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    match write_to(&mut out, fsm, index, term) {
        Ok(_) => Bytes::from(out),
        Err(_) => Bytes::new(),
    }
}

/// Writes the snapshot file's layout (header, payload, checksum trailer)
/// to `out`; returns `out` and the bytes written.
fn write_to<W: Write>(out: W, fsm: &FrozenFsm, index: Index, term: Term) -> io::Result<(W, u64)> {
    let payload_bytes = fsm.snapshot_len();
    // The checksum sits under the buffer, so it runs over 1 MiB blocks.
    let mut writer = BufWriter::with_capacity(
        STREAM_BUFFER_BYTES,
        ChecksumWriter {
            inner: out,
            crc: 0,
            written_bytes: 0,
        },
    );
    writer.write_all(&encode_header(index, term, payload_bytes))?;
    fsm.write_snapshot(&mut writer)?;
    let ChecksumWriter {
        inner: mut out,
        crc,
        written_bytes,
    } = writer.into_inner().map_err(|e| e.into_error())?;
    if written_bytes != HEADER_BYTES as u64 + payload_bytes {
        return Err(io::Error::other(format!(
            "wrote {written_bytes} bytes, the header announced {}",
            HEADER_BYTES as u64 + payload_bytes
        )));
    }
    out.write_all(&crc.to_le_bytes())?;
    Ok((out, written_bytes + TRAILER_BYTES as u64))
}

/// A writer that keeps the crc32c of everything written through it.
struct ChecksumWriter<W> {
    inner: W,
    crc: u32,
    written_bytes: u64,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(data)?;
        self.crc = crc32c::crc32c_append(self.crc, &data[..written]);
        self.written_bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A buffered reader that keeps the crc32c of everything read through it.
/// The checksum is brought up to date lazily, over whole consumed stretches
/// of the buffer (a snapshot is read in pieces of a few bytes).
struct ChecksumReader<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Next unread byte of `buffer`.
    start: usize,
    /// End of the valid bytes in `buffer`.
    end: usize,
    /// `buffer[..checked]` is already in `crc`.
    checked: usize,
    crc: u32,
    consumed_bytes: u64,
}

impl<R: Read> ChecksumReader<R> {
    fn new(inner: R) -> ChecksumReader<R> {
        ChecksumReader {
            inner,
            buffer: vec![0u8; STREAM_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            checked: 0,
            crc: 0,
            consumed_bytes: 0,
        }
    }

    /// The crc32c of every byte read so far.
    fn checksum(&mut self) -> u32 {
        self.crc = crc32c::crc32c_append(self.crc, &self.buffer[self.checked..self.start]);
        self.checked = self.start;
        self.crc
    }
}

impl<R: Read> Read for ChecksumReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            self.checksum();
            self.end = self.inner.read(&mut self.buffer)?;
            self.start = 0;
            self.checked = 0;
        }
        let count = out.len().min(self.end - self.start);
        out[..count].copy_from_slice(&self.buffer[self.start..self.start + count]);
        self.start += count;
        self.consumed_bytes += count as u64;
        Ok(count)
    }
}

/// Deletes files oldest first, fsyncing the directory after each, so a crash
/// leaves a prefix deleted and never a gap.
pub fn delete_in_order(dir: &Path, paths: &[PathBuf], fsync: bool) -> Result<()> {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("deleting {}", path.display()), e)),
        }
        if fsync {
            crate::storage::sync_dir(dir)
                .map_err(|e| Error::io(format!("fsyncing {}", dir.display()), e))?;
        }
    }
    Ok(())
}

/// What a node starts from: its state machine, the snapshot it came from
/// and the log entries after it.
pub struct Restore {
    pub fsm: Fsm,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    /// The snapshot files on disk at and below the chosen one, oldest first
    /// (the chosen one last); later compactions prune this list.
    pub kept: Vec<SnapshotMeta>,
    /// A log-start record (index, term) the node must write, and sync,
    /// before anything else: the chosen snapshot is past the WAL's end, or
    /// the WAL disagrees with it (a crash between installing a received
    /// snapshot and making its log-start record durable).
    pub log_start: Option<(Index, Term)>,
}

/// Where `restore_from` finds snapshot files: a data dir (`DirSnapshots`)
/// or the simulator's disk.
pub trait SnapshotSource {
    /// `(index, term)` of every snapshot file, oldest first.
    fn list(&self) -> Result<Vec<(Index, Term)>>;
    /// Reads and checks one snapshot file.
    fn load(&self, index: Index, term: Term) -> Result<(SnapshotMeta, Fsm)>;
    /// The file's size (0 if unknown).
    fn size_bytes(&self, index: Index, term: Term) -> u64;
    /// Where the files are, for error lines.
    fn describe(&self) -> String;
}

/// The snapshot files of a data dir.
pub struct DirSnapshots<'a>(pub &'a Path);

impl SnapshotSource for DirSnapshots<'_> {
    fn list(&self) -> Result<Vec<(Index, Term)>> {
        Ok(list(self.0)?
            .into_iter()
            .map(|(index, term, _)| (index, term))
            .collect())
    }

    fn load(&self, index: Index, term: Term) -> Result<(SnapshotMeta, Fsm)> {
        load(&self.0.join(file_name(index, term)))
    }

    fn size_bytes(&self, index: Index, term: Term) -> u64 {
        std::fs::metadata(self.0.join(file_name(index, term))).map_or(0, |m| m.len())
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// `restore_from` over the snapshot files of data dir `dir`.
pub fn restore(dir: &Path, entries: Vec<Entry>, log_start: Index) -> Result<Restore> {
    restore_from(&DirSnapshots(dir), entries, log_start)
}

/// Picks the newest valid snapshot that the WAL continues without a gap
/// (`log_start` is the index before the WAL's first entry) and keeps the WAL
/// entries after it, by Raft's rule for an installed snapshot (§7): if the
/// WAL holds the snapshot's last entry (same index and term), or starts
/// right after it, the entries after it are kept; otherwise the whole WAL
/// is void and a log-start record must be written (`Restore::log_start`).
/// See the module doc.
pub fn restore_from(
    source: &impl SnapshotSource,
    entries: Vec<Entry>,
    log_start: Index,
) -> Result<Restore> {
    let files = source.list()?;
    let where_ = source.describe();
    let mut problems = Vec::new();
    let mut kept = Vec::new();
    let mut chosen: Option<(SnapshotMeta, Fsm)> = None;
    for &(index, term) in files.iter().rev() {
        let name = file_name(index, term);
        if chosen.is_some() {
            // Older files stay (their size is all a later compaction needs).
            kept.push(SnapshotMeta {
                index,
                term,
                size_bytes: source.size_bytes(index, term),
            });
            continue;
        }
        if index < log_start {
            problems.push(format!(
                "{name} ends at index {index} but the WAL starts after {log_start}"
            ));
            continue;
        }
        match source.load(index, term) {
            Ok((meta, fsm)) if meta.index == index && meta.term == term => {
                kept.push(meta);
                chosen = Some((meta, fsm));
            }
            Ok(_) => problems.push(format!("{name}: header does not match its name")),
            Err(error) => {
                log::error!("{error}; trying an older snapshot");
                problems.push(error.to_string());
            }
        }
    }
    kept.reverse();
    let Some((meta, fsm)) = chosen else {
        if log_start > 0 {
            return Err(Error::Corrupt(format!(
                "{where_}: no usable snapshot, and the WAL starts after index {log_start}: starting \
                 would lose acknowledged writes, refusing ({})",
                if problems.is_empty() {
                    "no snapshot file".to_string()
                } else {
                    problems.join("; ")
                }
            )));
        }
        if !problems.is_empty() {
            log::warn!(
                "no usable snapshot ({}); replaying the whole WAL from index 1",
                problems.join("; ")
            );
        }
        return Ok(Restore {
            fsm: Fsm::new(),
            snapshot: None,
            entries,
            kept,
            log_start: None,
        });
    };
    let holds_last = entries
        .iter()
        .any(|e| e.index == meta.index && e.term == meta.term);
    let starts_after =
        log_start == meta.index && entries.first().is_some_and(|e| e.index == meta.index + 1);
    let (entries, log_start_record) = if holds_last
        || starts_after
        || (log_start == meta.index && entries.is_empty())
    {
        let mut entries = entries;
        entries.retain(|e| e.index > meta.index);
        (entries, None)
    } else {
        let wal_last = entries.last().map_or(log_start, |e| e.index);
        log::warn!(
            "{where_}: snapshot {} (term {}) is not continued by the WAL (its log ends at {wal_last}); \
             the WAL before and after it is void: writing a log start at {}",
            meta.index,
            meta.term,
            meta.index
        );
        (Vec::new(), Some((meta.index, meta.term)))
    };
    log::info!(
        "restored snapshot {} (term {}, {} bytes, {} files) + {} WAL entries",
        meta.index,
        meta.term,
        meta.size_bytes,
        fsm.len(),
        entries.len()
    );
    Ok(Restore {
        fsm,
        snapshot: Some(meta),
        entries,
        kept,
        log_start: log_start_record,
    })
}

/// Opens a snapshot file for reading chunks.
pub fn open_for_reading(dir: &Path, snapshot: SnapshotMeta) -> io::Result<File> {
    File::open(dir.join(file_name(snapshot.index, snapshot.term)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_sort_by_index() {
        assert_eq!(parse_file_name(&file_name(42, 7)), Some((42, 7)));
        assert!(file_name(9, 100) < file_name(10, 1));
        assert_eq!(parse_file_name("snapshot-1-2.snap"), None);
        assert_eq!(parse_file_name(&format!("{}.tmp", file_name(1, 1))), None);
    }

    /// A map of `count` files (some with deadlines) built through apply.
    fn filled(count: usize) -> Fsm {
        use crate::fsm::command::{encode_batch, Command};
        let commands: Vec<Command> = (0..count)
            .map(|n| Command::Write {
                name: bytes::Bytes::from(format!("file-{n}")),
                content: bytes::Bytes::from(vec![b'a' + (n % 26) as u8; n % 300]),
                exptime_s: (n % 3) as u64 * 1_000,
            })
            .collect();
        let mut fsm = Fsm::new();
        let mut outcomes = Vec::new();
        fsm.apply(&encode_batch(1_000, &commands), &mut outcomes)
            .expect("valid batch");
        fsm
    }

    #[test]
    fn streamed_file_is_the_documented_layout_and_loads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Bigger than one stream buffer, so refills are crossed.
        let fsm = filled(10_000);
        let (meta, path) = write_file(dir.path(), fsm.freeze(), 9, 3, false).expect("written");
        let on_disk = std::fs::read(&path).expect("read back");
        assert!(on_disk.len() > STREAM_BUFFER_BYTES);
        let payload = fsm.snapshot();
        let mut expected = encode_header(9, 3, payload.len() as u64).to_vec();
        expected.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert!(
            on_disk == expected,
            "file differs from header + snapshot() + crc"
        );
        assert_eq!(meta.size_bytes, expected.len() as u64);
        let (loaded_meta, loaded) = load(&path).expect("loads");
        assert_eq!(loaded_meta, meta);
        assert_eq!(loaded.checksum(1_000), fsm.checksum(1_000));
        assert_eq!(loaded.len(), fsm.len());
        // Damage deep inside the payload: refused as a checksum mismatch.
        let mut damaged = on_disk.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x01;
        std::fs::write(&path, &damaged).expect("rewrite");
        let error = load(&path).expect_err("damaged file refused").to_string();
        assert!(error.contains("checksum mismatch"), "{error}");
        // Cut short: refused, never a panic.
        std::fs::write(&path, &on_disk[..on_disk.len() - 1]).expect("rewrite");
        assert!(load(&path).is_err());
    }

    #[test]
    fn damaged_bytes_never_decode() {
        let fsm = Fsm::new();
        let payload = fsm.snapshot();
        let mut bytes = encode_header(5, 2, payload.len() as u64).to_vec();
        bytes.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let (meta, _) = decode(&bytes).expect("a whole snapshot decodes");
        assert_eq!(
            (meta.index, meta.term, meta.size_bytes),
            (5, 2, bytes.len() as u64)
        );
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x40;
            assert!(
                decode(&damaged).is_err(),
                "flip at {position} went unnoticed"
            );
        }
        for length in 0..bytes.len() {
            assert!(decode(&bytes[..length]).is_err());
        }
    }
}
