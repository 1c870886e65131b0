//! Sockets: client protocol, client connections, peer links, the reactor.

pub mod peer;
pub mod protocol;
