//! Client commands that change files, and their encoding inside log entries.
//! (Type skeleton: the codec is being written.)

use bytes::Bytes;

/// A change to the file map. Names and contents are `Bytes` slices of the
/// buffer they arrived in (no copy until apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Write {
        name: Bytes,
        content: Bytes,
        exptime_s: u64,
    },
    Cas {
        name: Bytes,
        version: u64,
        content: Bytes,
        exptime_s: u64,
    },
    Delete {
        name: Bytes,
    },
}
