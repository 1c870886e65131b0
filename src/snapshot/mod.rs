//! Snapshot files: the file map at one log index, on disk, checksummed; and
//! restart from the newest valid snapshot plus the WAL tail.
//!
//! A data dir holds at most `SNAPSHOTS_KEPT` (2) snapshot files, named
//! `snapshot-<index:020>-<term:020>.snap`, so name order is index order:
//!
//! ```text
//! header (40 bytes): magic "RAFTFSSN" | format u32 (= 1) | reserved u32 (0)
//!                    | index u64 | term u64 | payload length u64
//! payload:           Fsm::snapshot() (files, version counter, cluster time)
//! trailer:           crc32c u32 of header and payload
//! ```
//!
//! The whole file is the byte string InstallSnapshot streams, so a follower
//! writes chunks straight to disk and checks the very same trailer.
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
use crate::fsm::Fsm;
use crate::limits::SNAPSHOT_BYTES_MAX;
use crate::raft::{Entry, Index, SnapshotMeta, Term};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"RAFTFSSN";
pub const SNAPSHOT_FILE_FORMAT: u32 = 1;
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

/// Checks a whole snapshot file's bytes and rebuilds its state machine.
pub fn decode(bytes: &[u8]) -> std::result::Result<(SnapshotMeta, Fsm), String> {
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(format!("{} bytes, too short for a snapshot", bytes.len()));
    }
    if &bytes[0..8] != SNAPSHOT_MAGIC {
        return Err("bad magic (not a raftfs snapshot)".into());
    }
    let word = |offset: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[offset..offset + 8]);
        u64::from_le_bytes(word)
    };
    let format = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if format != SNAPSHOT_FILE_FORMAT {
        return Err(format!(
            "format {format}, this build reads only {SNAPSHOT_FILE_FORMAT}"
        ));
    }
    let (index, term, payload_bytes) = (word(16), word(24), word(32));
    let expected = (HEADER_BYTES + TRAILER_BYTES) as u64;
    if payload_bytes.checked_add(expected) != Some(bytes.len() as u64) {
        return Err(format!(
            "header says {payload_bytes} payload bytes, file has {}",
            bytes.len()
        ));
    }
    let body_end = bytes.len() - TRAILER_BYTES;
    let stored = u32::from_le_bytes([
        bytes[body_end],
        bytes[body_end + 1],
        bytes[body_end + 2],
        bytes[body_end + 3],
    ]);
    if crc32c::crc32c(&bytes[..body_end]) != stored {
        return Err("checksum mismatch".into());
    }
    let fsm = Fsm::from_snapshot(&bytes[HEADER_BYTES..body_end])
        .map_err(|e| format!("state machine does not decode: {e:?}"))?;
    let meta = SnapshotMeta {
        index,
        term,
        size_bytes: bytes.len() as u64,
    };
    Ok((meta, fsm))
}

/// Reads and checks one snapshot file.
pub fn load(path: &Path) -> Result<(SnapshotMeta, Fsm)> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    if size > SNAPSHOT_BYTES_MAX {
        return Err(Error::Corrupt(format!(
            "{}: {size} bytes, more than a snapshot may be",
            path.display()
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    decode(&bytes).map_err(|reason| Error::Corrupt(format!("{}: {reason}", path.display())))
}

/// Serialises `fsm` as the snapshot through `index` (of `term`) into `dir`:
/// temporary file, fsync, rename, directory fsync. Returns its meta and path.
pub fn write_file(
    dir: &Path,
    fsm: &Fsm,
    index: Index,
    term: Term,
    fsync: bool,
) -> Result<(SnapshotMeta, PathBuf)> {
    let payload = fsm.snapshot();
    let name = file_name(index, term);
    let path = dir.join(&name);
    let temporary = dir.join(format!("{name}.tmp"));
    let written = (|| -> io::Result<u64> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let header = encode_header(index, term, payload.len() as u64);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), &payload);
        writer.write_all(&header)?;
        writer.write_all(&payload)?;
        writer.write_all(&crc.to_le_bytes())?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        if fsync {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&temporary, &path)?;
        if fsync {
            crate::storage::sync_dir(dir)?;
        }
        Ok((HEADER_BYTES + payload.len() + TRAILER_BYTES) as u64)
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
}

/// Picks the newest valid snapshot that the WAL continues without a gap
/// (`log_start` is the index before the WAL's first entry) and drops the WAL
/// entries it covers. See the module doc.
pub fn restore(dir: &Path, entries: Vec<Entry>, log_start: Index) -> Result<Restore> {
    let files = list(dir)?;
    let mut problems = Vec::new();
    let mut kept = Vec::new();
    let mut chosen: Option<(SnapshotMeta, Fsm)> = None;
    for (index, term, path) in files.iter().rev() {
        if chosen.is_some() {
            // Older files stay (their size is all a later compaction needs).
            let size_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            kept.push(SnapshotMeta {
                index: *index,
                term: *term,
                size_bytes,
            });
            continue;
        }
        if *index < log_start {
            problems.push(format!(
                "{} ends at index {index} but the WAL starts after {log_start}",
                path.display()
            ));
            continue;
        }
        match load(path) {
            Ok((meta, fsm)) if meta.index == *index && meta.term == *term => {
                kept.push(meta);
                chosen = Some((meta, fsm));
            }
            Ok(_) => problems.push(format!(
                "{}: header does not match its name",
                path.display()
            )),
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
                "{}: no usable snapshot, and the WAL starts after index {log_start}: starting \
                 would lose acknowledged writes, refusing ({})",
                dir.display(),
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
        });
    };
    let mut entries = entries;
    if let Some(at) = entries.iter().find(|e| e.index == meta.index) {
        if at.term != meta.term {
            return Err(Error::Corrupt(format!(
                "{}: snapshot {} has term {} but the WAL holds term {} there; refusing to start",
                dir.display(),
                meta.index,
                meta.term,
                at.term
            )));
        }
    }
    entries.retain(|e| e.index > meta.index);
    if let Some(first) = entries.first() {
        if first.index != meta.index + 1 {
            return Err(Error::Corrupt(format!(
                "{}: snapshot ends at {} but the WAL continues at {}: refusing to start",
                dir.display(),
                meta.index,
                first.index
            )));
        }
    }
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
