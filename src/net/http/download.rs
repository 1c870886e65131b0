//! `GET /snapshot` on a helper thread: the newest snapshot file of the data
//! dir, streamed from disk as it is (header, payload, crc32c trailer; the
//! format is `crate::snapshot`'s), so `raftfs restore` and a node's own
//! loader read a backup with the same checks.
//!
//! Memory: one `HTTP_SNAPSHOT_CHUNK_BYTES` buffer per download, whatever the
//! file's size. CPU: the thread runs at nice `HTTP_SNAPSHOT_NICE` (Linux
//! sets it per thread), so on a busy host the reactors are served first and
//! a backup only takes what is left. A client that stops reading for
//! `HTTP_SNAPSHOT_WRITE_STALL_TIMEOUT_MS` is dropped, so a download slot is
//! never held forever.
//!
//! Invariants: the header is checked (magic, format version, length) before
//! the `200` goes out, and the trailer is checked against the bytes actually
//! sent before it is sent: a file damaged on disk ends the response short of
//! its `Content-Length` (clients such as `curl` then fail), never a complete
//! download of bad bytes. A compaction deleting the file mid-download is
//! harmless (the open file stays readable until closed).
//!
//! Leaves out: taking a fresh snapshot (the replica takes them every
//! `snapshot_entries` entries; the response headers name the index covered).

use super::{encode_head, Response};
use crate::limits;
use crate::raft::{Index, Term};
use crate::snapshot::{
    self as snapshot_file, HEADER_BYTES, SNAPSHOT_FILE_FORMAT, SNAPSHOT_MAGIC, TRAILER_BYTES,
};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a download did not complete.
enum Failure {
    /// Answered with this status and reason (nothing was sent yet).
    Refused(u16, String),
    /// Failed after the head went out: the response is cut short.
    Cut(String),
}

/// Serves one `/snapshot` request on `stream` (blocking) and closes it.
pub(super) fn serve(mut stream: TcpStream, dir: &Path) {
    let started = Instant::now();
    // SAFETY: setpriority only reads its arguments; on Linux `who = 0`
    // names the calling thread. A failure only leaves the priority as is.
    let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, limits::HTTP_SNAPSHOT_NICE) };
    if niced != 0 {
        log::debug!(
            "snapshot download keeps its priority: {}",
            io::Error::last_os_error()
        );
    }
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |address| address.to_string());
    let result = stream
        .set_nonblocking(false)
        .and_then(|()| {
            stream.set_write_timeout(Some(Duration::from_millis(
                limits::HTTP_SNAPSHOT_WRITE_STALL_TIMEOUT_MS,
            )))
        })
        .map_err(|error| Failure::Refused(500, format!("socket setup: {error}")))
        .and_then(|()| stream_newest(&mut stream, dir));
    match result {
        Ok((index, sent_bytes)) => log::info!(
            "snapshot {index} ({sent_bytes} bytes) sent to {peer} in {:?}",
            started.elapsed()
        ),
        Err(Failure::Refused(status, reason)) => {
            if status >= 500 {
                log::error!("GET /snapshot from {peer}: {reason}");
            } else {
                log::info!("GET /snapshot from {peer}: {reason}");
            }
            let mut response = Response::text(status, format!("{reason}\n"));
            if status == 503 {
                response.headers.push("Retry-After: 60".into());
            }
            let _ = stream.write_all(&response.encode());
        }
        Err(Failure::Cut(reason)) => {
            log::warn!("snapshot download to {peer} cut short: {reason}");
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Finds, checks and sends the newest snapshot file: (index, bytes sent).
fn stream_newest(stream: &mut TcpStream, dir: &Path) -> Result<(Index, u64), Failure> {
    let (mut file, index, term) = open_newest(dir)?;
    let file_bytes = file
        .metadata()
        .map_err(|error| Failure::Refused(500, format!("reading snapshot {index}: {error}")))?
        .len();
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact(&mut header)
        .map_err(|error| Failure::Refused(500, format!("snapshot {index}: header: {error}")))?;
    let payload_bytes = check_header(&header, index, term, file_bytes).map_err(|reason| {
        Failure::Refused(500, format!("snapshot {index} is damaged: {reason}"))
    })?;
    let headers = [
        format!("X-Raftfs-Snapshot-Index: {index}"),
        format!("X-Raftfs-Snapshot-Term: {term}"),
        format!("X-Raftfs-Applied-Index: {index}"),
        format!("X-Raftfs-Snapshot-Format: {SNAPSHOT_FILE_FORMAT}"),
        format!(
            "Content-Disposition: attachment; filename=\"{}\"",
            snapshot_file::file_name(index, term)
        ),
    ];
    let cut = |error: io::Error| Failure::Cut(error.to_string());
    stream
        .write_all(&encode_head(
            200,
            "application/octet-stream",
            file_bytes,
            &headers,
        ))
        .map_err(cut)?;
    stream.write_all(&header).map_err(cut)?;
    let mut crc = crc32c::crc32c(&header);
    let mut buffer = vec![0u8; limits::HTTP_SNAPSHOT_CHUNK_BYTES];
    let mut left = payload_bytes;
    while left > 0 {
        let wanted = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = file.read(&mut buffer[..wanted]).map_err(cut)?;
        if read == 0 {
            return Err(Failure::Cut(format!(
                "snapshot {index} ended {left} bytes early"
            )));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        stream.write_all(&buffer[..read]).map_err(cut)?;
        left -= read as u64;
    }
    let mut trailer = [0u8; TRAILER_BYTES];
    file.read_exact(&mut trailer).map_err(cut)?;
    if u32::from_le_bytes(trailer) != crc {
        return Err(Failure::Cut(format!(
            "snapshot {index} is damaged on disk (checksum mismatch); not sending its trailer"
        )));
    }
    stream.write_all(&trailer).map_err(cut)?;
    stream.flush().map_err(cut)?;
    Ok((index, file_bytes))
}

/// Opens the newest snapshot file; a file deleted between the listing and
/// the open (a compaction) makes it look again, a few times.
fn open_newest(dir: &Path) -> Result<(File, Index, Term), Failure> {
    const LISTINGS_MAX: usize = 3;
    for _ in 0..LISTINGS_MAX {
        let files = snapshot_file::list(dir)
            .map_err(|error| Failure::Refused(500, format!("listing snapshots: {error}")))?;
        let Some((index, term, path)) = files.last() else {
            return Err(Failure::Refused(
                503,
                "no snapshot yet: this node writes its first once `snapshot_entries` entries \
                 (or 16 MiB of log) were applied"
                    .to_string(),
            ));
        };
        match File::open(path) {
            Ok(file) => return Ok((file, *index, *term)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(Failure::Refused(
                    500,
                    format!("opening {}: {error}", path.display()),
                ))
            }
        }
    }
    Err(Failure::Refused(
        503,
        "snapshots are being replaced; try again".to_string(),
    ))
}

/// Checks a snapshot file's header against its name and size; returns the
/// payload length.
fn check_header(
    header: &[u8; HEADER_BYTES],
    index: Index,
    term: Term,
    file_bytes: u64,
) -> Result<u64, String> {
    let word = |offset: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&header[offset..offset + 8]);
        u64::from_le_bytes(word)
    };
    if &header[0..8] != SNAPSHOT_MAGIC {
        return Err("bad magic (not a raftfs snapshot)".into());
    }
    let format = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if format != SNAPSHOT_FILE_FORMAT {
        return Err(format!(
            "format {format}, this build reads only {SNAPSHOT_FILE_FORMAT}"
        ));
    }
    if (word(16), word(24)) != (index, term) {
        return Err("header does not match its file name".into());
    }
    let payload_bytes = word(32);
    if payload_bytes.checked_add((HEADER_BYTES + TRAILER_BYTES) as u64) != Some(file_bytes) {
        return Err(format!(
            "header says {payload_bytes} payload bytes, the file has {file_bytes} in all"
        ));
    }
    Ok(payload_bytes)
}
