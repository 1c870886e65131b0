//! Error enums shared across layers.
//!
//! Deterministic outcomes of commands (not found, version mismatch) are not
//! errors here: they are `fsm::Outcome`s returned to the client. What lives
//! here are failures of the environment (I/O, corrupt data, bad config) after
//! which a node stops serving rather than diverge.

use std::fmt;

/// An error that stops a node (or refuses to start it), with one clear line.
#[derive(Debug)]
pub enum Error {
    /// A bad flag or configuration: the message names the problem.
    Config(String),
    /// A failed read/write/fsync of the data directory.
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Data on disk or from the network that fails its checks.
    Corrupt(String),
    /// Another node or data dir is not who it claims to be (SPEC §3 incarnations).
    Refused(String),
    /// This node's data dir was removed from the cluster (membership
    /// change): it must not run again (exit code 4, not restarted).
    Removed(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(message) => write!(f, "config error: {message}"),
            Error::Io { context, source } => write!(f, "I/O error: {context}: {source}"),
            Error::Corrupt(message) => write!(f, "corrupt data: {message}"),
            Error::Refused(message) => write!(f, "refused: {message}"),
            Error::Removed(message) => write!(f, "removed: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
