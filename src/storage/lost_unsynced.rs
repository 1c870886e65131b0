//! Lost-fsync faults (as lazyfs does for Jepsen): a test mode in which a
//! simulated crash throws away every WAL byte written since the last fsync.
//!
//! A `kill -9` of a real process keeps the kernel's page cache, so it never
//! loses a write that reached the file, synced or not; a power failure does.
//! To model the power failure with real processes and real files, a Wal in
//! this mode records, after every fdatasync that succeeded, how far the
//! newest segment is durable: the marker file `synced.position` in the data
//! dir holds the segment sequence and its synced length (two `u64` little
//! endian, written with one `pwrite` of 16 bytes, so a kill never tears it).
//! After the process is killed, [`discard_unsynced`] cuts the segments back
//! to the marker: the newest synced segment to its synced length, any newer
//! segment (created, header fsynced, marker not yet updated) to its header.
//! The node then restarts on exactly what a power failure would have left.
//!
//! Invariants: the marker only moves forward within one Wal's life and only
//! after an fdatasync returned `Ok`, so it never claims bytes that were not
//! synced. If the process dies between an fdatasync and the marker's update,
//! `discard_unsynced` cuts synced bytes too: that is indistinguishable from a
//! crash just before the fdatasync, because nothing was acknowledged or sent
//! on the strength of that sync before the marker moved (`Wal::sync` updates
//! it before returning).
//!
//! The mode is meant for `fsync = true` (with fsync off nothing is ever
//! synced and the marker stays at the segment header, so a simulated crash
//! loses the whole log: the documented risk of `fsync = false`).
//!
//! Left out: the incarnation file and segment creation, which are fsynced
//! with their directory before they are used, so a power failure keeps them.

use super::segment::HEADER_BYTES;
use super::wal;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The marker's file name inside a data dir.
pub const SYNCED_MARKER_FILE_NAME: &str = "synced.position";
/// The environment variable that turns the mode on for `raftfs node`.
pub const LOSE_UNSYNCED_ENV: &str = "RAFTFS_TEST_LOSE_UNSYNCED";
const MARKER_BYTES: usize = 16;

/// Whether the mode was asked for in the environment (`=1`).
pub fn enabled_by_environment() -> bool {
    std::env::var(LOSE_UNSYNCED_ENV).is_ok_and(|value| value == "1")
}

/// The open marker file of a Wal in this mode.
#[derive(Debug)]
pub(super) struct SyncedMarker {
    file: File,
}

impl SyncedMarker {
    pub(super) fn open(dir: &Path) -> Result<SyncedMarker> {
        let path = dir.join(SYNCED_MARKER_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(SyncedMarker { file })
    }

    /// Records that segment `sequence` is durable up to `synced_bytes`.
    pub(super) fn record(&self, sequence: u64, synced_bytes: u64) -> std::io::Result<()> {
        let mut bytes = [0u8; MARKER_BYTES];
        bytes[..8].copy_from_slice(&sequence.to_le_bytes());
        bytes[8..].copy_from_slice(&synced_bytes.to_le_bytes());
        self.file.write_all_at(&bytes, 0)
    }
}

/// What [`discard_unsynced`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Segment files that were cut.
    pub segments_cut: usize,
    /// Bytes thrown away over all segments.
    pub bytes: u64,
}

/// Simulates a power failure on a data dir whose node is no longer running:
/// cuts every WAL segment back to what the marker says was fsynced. A data
/// dir without a marker (the mode was off) is left alone.
pub fn discard_unsynced(dir: &Path) -> Result<Discarded> {
    let marker_path = dir.join(SYNCED_MARKER_FILE_NAME);
    let bytes = match std::fs::read(&marker_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Discarded::default())
        }
        Err(error) => {
            return Err(Error::io(
                format!("reading {}", marker_path.display()),
                error,
            ))
        }
    };
    let Some(marker) = bytes.get(..MARKER_BYTES) else {
        return Err(Error::Corrupt(format!(
            "{}: {} bytes, expected {MARKER_BYTES}",
            marker_path.display(),
            bytes.len()
        )));
    };
    let mut sequence_bytes = [0u8; 8];
    let mut length_bytes = [0u8; 8];
    sequence_bytes.copy_from_slice(&marker[..8]);
    length_bytes.copy_from_slice(&marker[8..]);
    let synced_sequence = u64::from_le_bytes(sequence_bytes);
    let synced_bytes = u64::from_le_bytes(length_bytes);
    let mut discarded = Discarded::default();
    let listing =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for item in listing {
        let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let Some(sequence) = item
            .file_name()
            .to_str()
            .and_then(wal::parse_segment_file_name)
        else {
            continue;
        };
        let keep_bytes = if sequence == synced_sequence {
            synced_bytes
        } else if sequence > synced_sequence {
            HEADER_BYTES as u64
        } else {
            continue;
        };
        let path = item.path();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let length = file
            .metadata()
            .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
            .len();
        if length > keep_bytes {
            file.set_len(keep_bytes)
                .map_err(|e| Error::io(format!("cutting {}", path.display()), e))?;
            discarded.segments_cut += 1;
            discarded.bytes += length - keep_bytes;
        }
    }
    Ok(discarded)
}
