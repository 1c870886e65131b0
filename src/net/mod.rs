//! Sockets: client connections, peer links, the metrics
//! HTTP listener, the reactor, and the member down/up log lines.

pub mod conn;
pub mod http;
pub mod member_log;
pub mod peer;
pub mod reactor;
