//! Durable storage of the Raft log and hard state, and the data dir's identity.
//!
//! A data dir holds:
//! - `incarnation`: 16 hex digits and a newline, a random nonzero 64-bit id
//!   made when the dir is first created (SPEC §3: a node that lost its data
//!   dir must not come back as the same voter). Written to a temporary file,
//!   fsynced, renamed into place, directory fsynced; never changed after.
//! - `cluster_id`: the same format, the random id of the cluster this data
//!   dir belongs to; absent until it is made (by the cluster's first leader)
//!   or learned from a member (`net::peer`), then never changed. Written the
//!   same crash-safe way before the node announces it or accepts anything
//!   from a member that named it.
//! - `LOCK`: held with `flock` while a Wal is open, so two processes never
//!   append to one log.
//! - `synced.position`: only in the lost-fsync test mode (`lost_unsynced`).
//! - `fsm.checksum`: only when asked for with SIGUSR1 (see `net::reactor`).
//! - `NNNNNNNNNNNNNNNNNNNN.wal`: WAL segments, numbered by sequence (the
//!   format is in `segment`, the writer in `wal`, the reader in `replay`).
//!
//! The hard state lives in the WAL as a record, not in a separate file: a
//! turn that changes both the term/vote and the log then costs one write and
//! one fdatasync, where a separate file would need a second fsync plus a
//! rename and a directory fsync on every vote. The last hard state record
//! wins on replay, and each new segment repeats the latest one so it never
//! depends on older segments.
//!
//! Invariants: `open` returns exactly what was synced before the last crash,
//! possibly plus records written but not yet synced (never a damaged one), or
//! an error that names the file and offset it could not trust.
//!
//! Compaction: snapshot files are `crate::snapshot`'s; here finished
//! segments covered by a snapshot are handed out for deletion
//! (`Wal::take_obsolete_segments`) and replay accepts a log that starts
//! after index 1.
//!
//! Left out: checking the Raft invariants of what is stored (the core owns
//! those).

pub mod lost_unsynced;
pub mod node;
mod replay;
pub mod segment;
pub mod syncer;
pub mod wal;

pub use node::NodeStorage;
pub use replay::replay_records;
pub use syncer::{SyncDone, SyncRequest, Syncer};
pub use wal::{FinishedSegment, InjectedFailure, Wal, WalOptions};

use crate::error::{Error, Result};
use crate::raft::message::{Entry, HardState};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The name of the incarnation file inside a data dir.
pub const INCARNATION_FILE_NAME: &str = "incarnation";
/// The name of the cluster id file inside a data dir.
pub const CLUSTER_ID_FILE_NAME: &str = "cluster_id";
const LOCK_FILE_NAME: &str = "LOCK";

/// What a data dir held when it was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// This data dir's identity, made when it was created.
    pub incarnation: u64,
    /// The cluster it belongs to (0: not known yet).
    pub cluster_id: u64,
    /// The last hard state saved (the default one if none ever was).
    pub hard_state: HardState,
    /// The log, contiguous; from index 1 unless compaction deleted older
    /// segments or a log start record voided what came before.
    pub entries: Vec<Entry>,
    /// The index just before `entries[0]` (or before the next entry to be
    /// appended when there is none): 0 unless the log was compacted.
    pub log_start: u64,
}

/// Opens (creating if missing) the data dir: creates the dir, a random
/// 64-bit incarnation file on first creation (fsynced, dir fsynced) and the
/// WAL, and replays it.
pub fn open(dir: &Path, fsync: bool) -> Result<(Wal, Recovered)> {
    open_with(
        dir,
        WalOptions {
            fsync,
            ..WalOptions::default()
        },
    )
}

/// `open` with every Wal option given (tests use small segments).
pub fn open_with(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered)> {
    create_dir(dir)?;
    let lock = lock_dir(dir)?;
    remove_temporary_files(dir)?;
    let segments = replay::list_segments(dir)?;
    let incarnation = load_or_create_incarnation(dir, !segments.is_empty())?;
    let cluster_id = load_cluster_id(dir)?;
    let mut replayed = replay::replay(dir, &segments, options.fsync)?;
    let last_index = replayed.last_index();
    let newest = match replayed.newest.take() {
        Some(newest) => newest,
        None => wal::create_segment(dir, 1, options.fsync)?,
    };
    let mut finished: std::collections::VecDeque<FinishedSegment> = replayed
        .segments
        .iter()
        .map(|summary| FinishedSegment {
            sequence: summary.sequence,
            path: summary.path.clone(),
            last_index_max: summary.last_index_max,
        })
        .collect();
    let newest_last_index_max = match finished.back() {
        Some(last) if last.sequence == newest.sequence => {
            finished.pop_back().map_or(0, |last| last.last_index_max)
        }
        _ => 0,
    };
    log::debug!(
        "opened {}: incarnation {incarnation:016x}, {last_index} entries, segment {}",
        dir.display(),
        newest.sequence
    );
    let recovered = Recovered {
        incarnation,
        cluster_id,
        hard_state: replayed.hard_state.clone().unwrap_or_default(),
        log_start: replayed.base_index.unwrap_or(0),
        entries: replayed.entries,
    };
    let wal = Wal::resume(
        dir.to_path_buf(),
        options,
        newest,
        newest_last_index_max,
        finished,
        replayed.log_start_sequence,
        last_index,
        replayed.hard_state,
        lock,
    );
    Ok((wal, recovered))
}

/// Fsyncs a directory, making the names created or renamed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_dir(dir: &Path) -> Result<()> {
    let existed = dir.is_dir();
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating data dir {}", dir.display()), e))?;
    if !existed {
        let parent = match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent).map_err(|e| Error::io(format!("fsyncing {}", parent.display()), e))?;
    }
    Ok(())
}

/// How long a held data-dir lock is tried again before the refusal.
const DATA_DIR_LOCK_WAIT_MS: u64 = 500;

/// Takes the data dir's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            Error::io(
                format!(
                    "opening lock file {} (is the data dir writable?)",
                    path.display()
                ),
                e,
            )
        })?;
    // A lock belongs to the open file, which a fork shares with the child
    // until it execs: a process that closed its lock while another thread
    // was spawning a program finds it still held for a moment (seen in
    // tests that reopen a data dir in-process). So a held lock is tried
    // again for `DATA_DIR_LOCK_WAIT_MS` before the refusal; another node
    // holding it keeps it for longer than that.
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(DATA_DIR_LOCK_WAIT_MS);
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked == 0 {
            return Ok(file);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::WouldBlock {
            return Err(Error::io(format!("locking {}", path.display()), error));
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Refused(format!(
                "data dir {} is in use by another raftfs node",
                dir.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Removes what a crash left of unfinished segment or incarnation files.
fn remove_temporary_files(dir: &Path) -> Result<()> {
    let listing =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for item in listing {
        let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        if item
            .file_name()
            .to_str()
            .is_some_and(|name| name.ends_with(".tmp"))
        {
            let path = item.path();
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Reads the data dir's incarnation, or makes one if the dir is new.
fn load_or_create_incarnation(dir: &Path, has_segments: bool) -> Result<u64> {
    let path = dir.join(INCARNATION_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => parse_incarnation(&bytes).ok_or_else(|| {
            Error::Corrupt(format!(
                "{}: not an incarnation id (16 hex digits)",
                path.display()
            ))
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if has_segments {
                return Err(Error::Corrupt(format!(
                    "{} holds a WAL but no {INCARNATION_FILE_NAME} file; refusing to start \
                     under a new identity with an old log",
                    dir.display()
                )));
            }
            let incarnation = new_incarnation();
            write_incarnation(dir, incarnation)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            Ok(incarnation)
        }
        Err(error) => Err(Error::io(format!("reading {}", path.display()), error)),
    }
}

fn parse_incarnation(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.strip_suffix(b"\n")?;
    if digits.len() != 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let incarnation = u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
    (incarnation != 0).then_some(incarnation)
}

fn new_incarnation() -> u64 {
    use rand::RngCore;
    loop {
        // Zero is kept free to mean "no incarnation known".
        let incarnation = rand::rngs::OsRng.next_u64();
        if incarnation != 0 {
            return incarnation;
        }
    }
}

fn write_incarnation(dir: &Path, incarnation: u64) -> io::Result<()> {
    write_id_file(dir, INCARNATION_FILE_NAME, incarnation)
}

/// Reads the data dir's cluster id (0 if it has none yet, or no such dir).
pub fn load_cluster_id(dir: &Path) -> Result<u64> {
    let path = dir.join(CLUSTER_ID_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => parse_incarnation(&bytes).ok_or_else(|| {
            Error::Corrupt(format!(
                "{}: not a cluster id (16 hex digits)",
                path.display()
            ))
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(Error::io(format!("reading {}", path.display()), error)),
    }
}

/// Stores `cluster_id` (nonzero) in the data dir `dir`, durably (temporary
/// file, fsync, rename, directory fsync), refusing to overwrite another one.
pub fn store_cluster_id(dir: &Path, cluster_id: u64) -> io::Result<()> {
    match std::fs::read(dir.join(CLUSTER_ID_FILE_NAME)) {
        Ok(bytes) => {
            return match parse_incarnation(&bytes) {
                Some(stored) if stored == cluster_id => Ok(()),
                _ => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{CLUSTER_ID_FILE_NAME} holds another cluster id"),
                )),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if cluster_id == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a cluster id is never 0",
        ));
    }
    write_id_file(dir, CLUSTER_ID_FILE_NAME, cluster_id)
}

/// Writes `value` as 16 hex digits and a newline to `dir/name`, crash-safe.
fn write_id_file(dir: &Path, name: &str, value: u64) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    file.write_all(format!("{value:016x}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_is_stored_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!(
            "raftfs-cluster-id-{}-{}",
            std::process::id(),
            new_incarnation()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load_cluster_id(&dir).unwrap(), 0);
        store_cluster_id(&dir, 0xfeed).unwrap();
        assert_eq!(load_cluster_id(&dir).unwrap(), 0xfeed);
        store_cluster_id(&dir, 0xfeed).unwrap();
        assert!(store_cluster_id(&dir, 0xbeef).is_err());
        assert_eq!(load_cluster_id(&dir).unwrap(), 0xfeed);
        assert!(!dir.join("cluster_id.tmp").exists());
        std::fs::write(dir.join(CLUSTER_ID_FILE_NAME), b"nonsense\n").unwrap();
        assert!(load_cluster_id(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn incarnation_text_parses_strictly() {
        assert_eq!(parse_incarnation(b"00000000000000ff\n"), Some(255));
        assert_eq!(parse_incarnation(b"00000000000000ff"), None);
        assert_eq!(parse_incarnation(b"0000000000000000\n"), None);
        assert_eq!(parse_incarnation(b"00000000000000fg\n"), None);
        assert_eq!(parse_incarnation(b"+0000000000000ff\n"), None);
        assert_eq!(parse_incarnation(b""), None);
    }
}
