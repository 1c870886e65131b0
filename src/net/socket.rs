//! Socket reads shared by client connections and peer links.
//!
//! Owns: reading a non-blocking socket straight into a `BytesMut`'s spare
//! capacity. Invariants: only bytes the kernel wrote become part of the
//! buffer (its length grows by exactly what `recv` returned); no chunk is
//! zero-filled first and no bytes pass through a scratch buffer, so each
//! received byte is written once, by the kernel.
//!
//! Leaves out: read budgets, end-of-stream and `WouldBlock` handling (the
//! callers' loops decide what those mean for them).

use bytes::BytesMut;
use std::io;
use std::os::fd::AsRawFd;

/// One `recv` straight into `buffer`'s spare capacity, after reserving at
/// least `reserve_bytes` of it, asking for at most `max_bytes`. Returns the
/// bytes received (0 at end of stream), or the `recv` error as is
/// (`WouldBlock`, `Interrupted`, ...). The profile showed the zero-fill of a
/// 16 KiB chunk before every read costing a third of the leader's
/// instructions per write, and the copy out of a scratch slice a sixth of a
/// follower's.
pub fn receive_into_spare_capacity(
    stream: &impl AsRawFd,
    buffer: &mut BytesMut,
    reserve_bytes: usize,
    max_bytes: usize,
) -> io::Result<usize> {
    buffer.reserve(reserve_bytes);
    let spare = buffer.spare_capacity_mut();
    let request_bytes = spare.len().min(max_bytes);
    // SAFETY: recv(2) writes at most `request_bytes <= spare.len()` bytes
    // into `spare`, memory this buffer owns and we borrow exclusively;
    // nothing reads it before the kernel has written it.
    let received = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast::<libc::c_void>(),
            request_bytes,
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    // SAFETY: the kernel initialised exactly `received` bytes (at most
    // `request_bytes`) right after the buffer's current length, within its
    // capacity.
    unsafe { buffer.set_len(buffer.len() + received) };
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reads_land_after_existing_bytes_and_respect_the_maximum() {
        let (mut writer, reader) = UnixStream::pair().unwrap();
        reader.set_nonblocking(true).unwrap();
        writer.write_all(b"hello world").unwrap();
        let mut buffer = BytesMut::from(&b">>"[..]);
        assert_eq!(
            receive_into_spare_capacity(&reader, &mut buffer, 4096, 5).unwrap(),
            5
        );
        assert_eq!(&buffer[..], b">>hello");
        assert_eq!(
            receive_into_spare_capacity(&reader, &mut buffer, 1, usize::MAX).unwrap(),
            6
        );
        assert_eq!(&buffer[..], b">>hello world");
        let error = receive_into_spare_capacity(&reader, &mut buffer, 16, 16).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(&buffer[..], b">>hello world");
        drop(writer);
        assert_eq!(
            receive_into_spare_capacity(&reader, &mut buffer, 16, 16).unwrap(),
            0
        );
    }
}
