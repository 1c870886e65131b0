//! The metrics and health HTTP listener: just enough HTTP/1.1 to answer
//! `GET /metrics`, `GET /health` and `GET /snapshot` (a backup of the file
//! map) from the node's own reactor.
//!
//! Owns: the listener and its connections, each of which reads one request
//! head, gets one answer from the owner and is closed once the answer is
//! written (`Connection: close`; no keep-alive, no bodies, no chunking).
//! The owner turns a parsed `Route` into the answer (`respond`), so this
//! module never sees the node's state.
//!
//! Tokens: `token_base` is the listener, `token_base + 1 + key` connection
//! `key`, for keys below `HTTP_CONNECTIONS_MAX` (`HTTP_TOKENS` in all).
//!
//! Invariants: nothing blocks; every connection is bounded (a request head of
//! at most `HTTP_REQUEST_BYTES_MAX`, `HTTP_CONNECTIONS_MAX` connections,
//! `HTTP_CONNECTION_TIMEOUT_MS` to finish); bad input gets a 4xx and a close,
//! never a panic. Leaves out: TLS and authentication (bind it to a trusted
//! interface).

use crate::limits;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tokens reserved from `token_base`.
pub const HTTP_TOKENS: usize = 1 + limits::HTTP_CONNECTIONS_MAX;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Health,
    /// `GET /snapshot`: the file map at the applied index (for backups).
    Snapshot,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// An answer to one request.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra header lines, each without its `\r\n`.
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written_bytes: usize,
    answered: bool,
    deadline: Instant,
}

pub struct HttpServer {
    listener: TcpListener,
    token_base: usize,
    connections: Slab<Connection>,
}

impl HttpServer {
    /// Binds `address` (a port in use is an error) and registers it.
    pub fn bind(registry: &Registry, address: SocketAddr, token_base: usize) -> io::Result<Self> {
        let mut listener = TcpListener::bind(address)?;
        registry.register(&mut listener, Token(token_base), Interest::READABLE)?;
        Ok(HttpServer {
            listener,
            token_base,
            connections: Slab::with_capacity(limits::HTTP_CONNECTIONS_MAX),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < HTTP_TOKENS
    }

    /// Handles readiness of one of this server's tokens. Requests whose head
    /// is complete are pushed to `requests` as (connection key, route); the
    /// owner answers each with `respond`.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
        requests: &mut Vec<(usize, Route)>,
    ) {
        let offset = token.0 - self.token_base;
        if offset == 0 {
            self.accept(registry, now);
            return;
        }
        let key = offset - 1;
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if connection.answered {
            if connection.flush().is_err() || connection.is_done() {
                self.close(registry, key);
            }
            return;
        }
        match connection.read_head() {
            Ok(Some(route)) => {
                connection.answered = true;
                requests.push((key, route));
            }
            Ok(None) => {}
            Err(error) => {
                log::debug!("metrics connection: {error}");
                self.close(registry, key);
            }
        }
    }

    /// Sends `response` on connection `key` and closes it once written.
    pub fn respond(&mut self, registry: &Registry, key: usize, response: &Response) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        let reason = match response.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            response.status,
            response.content_type,
            response.body.len(),
        );
        for header in &response.headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&response.body);
        connection.response = bytes;
        connection.written_bytes = 0;
        if connection.flush().is_err() || connection.is_done() {
            self.close(registry, key);
        }
    }

    /// Closes connections past their deadline. Call every tick.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        let expired: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, connection)| now >= connection.deadline)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            self.close(registry, key);
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    log::warn!("metrics listener cannot accept: {error}");
                    return;
                }
            };
            if self.connections.len() >= limits::HTTP_CONNECTIONS_MAX {
                log::debug!("metrics connection closed: too many open");
                continue;
            }
            let entry = self.connections.vacant_entry();
            let token = Token(self.token_base + 1 + entry.key());
            if let Err(error) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("metrics connection closed: cannot register: {error}");
                continue;
            }
            entry.insert(Connection {
                stream,
                request: Vec::new(),
                response: Vec::new(),
                written_bytes: 0,
                answered: false,
                deadline: now + Duration::from_millis(limits::HTTP_CONNECTION_TIMEOUT_MS),
            });
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        if let Some(mut connection) = self.connections.try_remove(key) {
            let _ = registry.deregister(&mut connection.stream);
        }
    }
}

impl Connection {
    /// Reads until the head is complete (`\r\n\r\n`), `WouldBlock`, or the
    /// size limit (answered as a bad request).
    fn read_head(&mut self) -> io::Result<Option<Route>> {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(end) = find_head_end(&self.request) {
                return Ok(Some(parse_route(&self.request[..end])));
            }
            if self.request.len() >= limits::HTTP_REQUEST_BYTES_MAX {
                return Ok(Some(Route::BadRequest));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => self.request.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.written_bytes < self.response.len() {
            match self.stream.write(&self.response[self.written_bytes..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.written_bytes += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        !self.response.is_empty() && self.written_bytes >= self.response.len()
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|window| window == b"\r\n\r\n")
}

/// The route of a request head (request line first; headers are ignored).
pub fn parse_route(head: &[u8]) -> Route {
    let line_end = head
        .iter()
        .position(|&byte| byte == b'\r')
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        "/snapshot" => Route::Snapshot,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_from_request_lines() {
        assert_eq!(
            parse_route(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Route::Metrics
        );
        assert_eq!(parse_route(b"GET /health?verbose HTTP/1.0"), Route::Health);
        assert_eq!(parse_route(b"GET /other HTTP/1.1"), Route::NotFound);
        assert_eq!(
            parse_route(b"POST /metrics HTTP/1.1"),
            Route::MethodNotAllowed
        );
        assert_eq!(parse_route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(parse_route(b"\xff\xfe"), Route::BadRequest);
        assert_eq!(parse_route(b""), Route::BadRequest);
    }
}
