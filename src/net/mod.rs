//! Sockets: client protocol, client connections, peer links, the reactor.

pub mod conn;
pub mod peer;
pub mod protocol;
pub mod reactor;
