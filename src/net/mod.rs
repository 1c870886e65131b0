//! Sockets: client connections, peer links, the metrics
//! HTTP listener, the reactor, the member down/up log lines, and TLS.

pub mod conn;
pub mod http;
pub mod member_log;
pub mod peer;
pub mod reactor;
pub mod tls;
