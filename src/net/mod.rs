//! Sockets: client connections, peer links, the metrics
//! HTTP listener, the reactor.

pub mod conn;
pub mod http;
pub mod peer;
pub mod reactor;
