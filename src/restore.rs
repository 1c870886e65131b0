//! `raftfs restore`: load a backup (a snapshot file taken with
//! `GET /snapshot` on any node's metrics listener) into a new, running
//! cluster, through the ordinary client protocol.
//!
//! A backup is a node's snapshot file as it lies on disk (see
//! `crate::snapshot`): it is read as a stream and checked as a node checks
//! its own (magic, format version, length, crc32c) before anything is sent.
//! Backups taken before `/snapshot` streamed the file (the bare file map,
//! whose first byte is its own format number) are still accepted.
//!
//! Every file still live at the snapshot's cluster time is written with
//! `write NAME LEN EXPTIME`, EXPTIME being its remaining whole seconds
//! (rounded up, so nothing expires early). Writes are pipelined in groups of
//! `RESTORE_PIPELINE` and must all answer `OK`; an `ERR_REDIRECT` is followed
//! (the group is resent to the named leader), anything else stops the
//! restore with the file's name.
//!
//! What changes: versions are renumbered 1..N in the new cluster (the version
//! counter is the new cluster's), so a client holding an old version for
//! `cas` must read again. Restoring into a cluster that has files overwrites
//! same-named ones and keeps the rest.
//!
//! Leaves out: restoring the old versions (that needs log compaction and
//! InstallSnapshot, a later release).

use crate::client::Command;
use crate::error::{Error, Result};
use crate::fsm::Fsm;
use crate::protocol::reply::{read_reply, Reply, ReplyParser};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Writes sent before their answers are read.
pub const RESTORE_PIPELINE: usize = 64;
/// Redirects followed for one group before giving up.
const REDIRECTS_MAX: usize = 5;

/// Restores the snapshot at `path` through the node at `address`; returns
/// the number of files written.
pub fn run(path: &Path, address: &str) -> Result<usize> {
    let fsm = load_backup(path)?;
    let now_ms = fsm.cluster_time_ms();
    let mut commands: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for name in fsm.names() {
        let Some(file) = fsm.read(name, now_ms) else {
            continue; // expired at the snapshot's cluster time
        };
        let command = Command::Write {
            name: name.to_vec(),
            content: file.content.to_vec(),
            exptime_s: file.expires_in_s,
        };
        commands.push((name.to_vec(), command.encode()));
    }
    let mut target = address.to_string();
    let mut connection = connect(&target)?;
    for group in commands.chunks(RESTORE_PIPELINE) {
        let mut redirects = 0;
        loop {
            match send_group(&mut connection, group)? {
                None => break,
                Some(leader) if redirects < REDIRECTS_MAX => {
                    redirects += 1;
                    target = leader;
                    connection = connect(&target)?;
                }
                Some(leader) => {
                    return Err(Error::Refused(format!(
                        "restore: still redirected (to {leader}) after {REDIRECTS_MAX} tries"
                    )))
                }
            }
        }
    }
    Ok(commands.len())
}

/// The file map of a backup: a snapshot file, or a bare file map from an
/// older `GET /snapshot`.
pub fn load_backup(path: &Path) -> Result<Fsm> {
    let mut magic = [0u8; 8];
    let is_snapshot_file = std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok_and(|()| &magic == crate::snapshot::SNAPSHOT_MAGIC);
    if is_snapshot_file {
        let (meta, fsm) = crate::snapshot::load(path)
            .map_err(|error| Error::Corrupt(format!("not a usable raftfs snapshot: {error}")))?;
        log::info!(
            "{}: snapshot of index {} (term {}), {} files",
            path.display(),
            meta.index,
            meta.term,
            fsm.len()
        );
        return Ok(fsm);
    }
    let data = std::fs::read(path)
        .map_err(|error| Error::io(format!("reading {}", path.display()), error))?;
    Fsm::from_snapshot(&data).map_err(|error| {
        Error::Corrupt(format!(
            "{} is not a raftfs snapshot: {error:?}",
            path.display()
        ))
    })
}

struct Connection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    parser: ReplyParser,
}

fn connect(address: &str) -> Result<Connection> {
    let stream = TcpStream::connect(address)
        .map_err(|error| Error::io(format!("connecting to {address}"), error))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(
            crate::limits::COMMAND_TIMEOUT_MS * 2,
        )))
        .map_err(|error| Error::io("setting a read timeout", error))?;
    let reader = stream
        .try_clone()
        .map_err(|error| Error::io("cloning a socket", error))?;
    Ok(Connection {
        writer: stream,
        reader: BufReader::new(reader),
        parser: ReplyParser::new(),
    })
}

/// Sends a group and reads its answers: None when all are OK, the leader's
/// address on a redirect (the whole group is then resent there; rewriting a
/// file already written only gives it a newer version).
fn send_group(connection: &mut Connection, group: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<String>> {
    let mut bytes = Vec::new();
    for (_, command) in group {
        bytes.extend_from_slice(command);
    }
    connection
        .writer
        .write_all(&bytes)
        .map_err(|error| Error::io("sending writes", error))?;
    let mut redirect = None;
    for (name, _) in group {
        let reply = read_reply(&mut connection.reader, &mut connection.parser)
            .map_err(|error| Error::io("reading an answer", error))?;
        match reply {
            Reply::OkVersion(_) => {}
            Reply::Redirect(leader) => {
                redirect.get_or_insert(leader);
            }
            other => {
                return Err(Error::Refused(format!(
                    "restore: writing {:?} got {other}",
                    String::from_utf8_lossy(name)
                )))
            }
        }
    }
    Ok(redirect)
}
