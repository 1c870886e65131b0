//! The metrics and health HTTP listener: just enough HTTP/1.1 to answer
//! `GET /metrics`, `/health`, `/livez` and `/readyz` from the node's own
//! reactor, and to hand `GET /snapshot` (a backup: the newest snapshot file)
//! to a helper thread that streams it from disk.
//!
//! Owns: the listener and its connections, each of which reads one request
//! head (parsed by `httparse`), gets one answer and is closed once the answer
//! is written (`Connection: close`; no keep-alive, no bodies, no chunking).
//! The owner turns a parsed `Route` into the answer (`respond`), so this
//! module never sees the node's state. `/snapshot` never reaches the owner:
//! its optional bearer token is checked here, then the socket leaves the
//! reactor for a `download` thread (at most `HTTP_SNAPSHOT_DOWNLOADS_MAX` at
//! once, each with one `HTTP_SNAPSHOT_CHUNK_BYTES` buffer), so a backup of
//! any size costs the reactor one accept and one parse.
//!
//! Tokens: `token_base` is the listener, `token_base + 1 + key` connection
//! `key`, for keys below `HTTP_CONNECTIONS_MAX` (`HTTP_TOKENS` in all).
//!
//! Invariants: nothing on the reactor blocks; every connection is bounded (a
//! request head of at most `HTTP_REQUEST_BYTES_MAX` and `HTTP_HEADERS_MAX`
//! headers, `HTTP_CONNECTIONS_MAX` connections, `HTTP_CONNECTION_TIMEOUT_MS`
//! to finish); bad input gets a 4xx and a close, never a panic. The token is
//! compared in constant time. Leaves out: TLS (bind it to a trusted
//! interface) and authentication of the cheap endpoints (they show no data).

mod download;

use crate::limits;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens reserved from `token_base`.
pub const HTTP_TOKENS: usize = 1 + limits::HTTP_CONNECTIONS_MAX;

/// What a request asks the owner for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Health,
    /// The process and its reactor are turning (answering at all proves it).
    Livez,
    /// Ready for clients: a member, a known leader, caught up, not stopping.
    Readyz,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    /// Answered by the owner.
    Owner(Route),
    /// `GET /snapshot`, with the `Authorization: Bearer` token if one came.
    Snapshot { bearer: Option<Vec<u8>> },
}

/// An answer to one request.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra header lines, each without its `\r\n`.
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    /// The head (status line and headers, `Content-Length` from the body)
    /// and the body, as sent.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = encode_head(
            self.status,
            self.content_type,
            self.body.len() as u64,
            &self.headers,
        );
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A response head announcing `content_length` body bytes.
fn encode_head(
    status: u16,
    content_type: &str,
    content_length: u64,
    headers: &[String],
) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\nConnection: close\r\n"
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// What the listener needs to serve `/snapshot`.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// The node's data dir, where its snapshot files are.
    pub data_dir: PathBuf,
    /// `/snapshot` needs `Authorization: Bearer <token>` when set.
    pub snapshot_token: Option<String>,
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
    settings: HttpSettings,
    /// Snapshot downloads running on helper threads.
    downloads: Arc<AtomicUsize>,
}

impl HttpServer {
    /// Binds `address` (a port in use is an error) and registers it.
    pub fn bind(
        registry: &Registry,
        address: SocketAddr,
        token_base: usize,
        settings: HttpSettings,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::bind(address)?;
        registry.register(&mut listener, Token(token_base), Interest::READABLE)?;
        Ok(HttpServer {
            listener,
            token_base,
            connections: Slab::with_capacity(limits::HTTP_CONNECTIONS_MAX),
            settings,
            downloads: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The node's data dir (for the data-dir metrics).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.settings.data_dir
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < HTTP_TOKENS
    }

    /// Handles readiness of one of this server's tokens. Requests whose head
    /// is complete are pushed to `requests` as (connection key, route); the
    /// owner answers each with `respond`. `/snapshot` is served here.
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
            Ok(Some(Request::Owner(route))) => {
                connection.answered = true;
                requests.push((key, route));
            }
            Ok(Some(Request::Snapshot { bearer })) => {
                connection.answered = true;
                self.serve_snapshot(registry, key, bearer.as_deref());
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
        connection.response = response.encode();
        connection.written_bytes = 0;
        if connection.flush().is_err() || connection.is_done() {
            self.close(registry, key);
        }
    }

    /// Checks the token and the download slots, then moves the connection
    /// to a download thread (see the module doc).
    fn serve_snapshot(&mut self, registry: &Registry, key: usize, bearer: Option<&[u8]>) {
        if let Some(token) = &self.settings.snapshot_token {
            let matches = bearer.is_some_and(|bearer| {
                bool::from(subtle::ConstantTimeEq::ct_eq(bearer, token.as_bytes()))
            });
            if !matches {
                log::warn!(
                    "GET /snapshot refused: {} bearer token",
                    if bearer.is_some() { "wrong" } else { "no" }
                );
                let mut response = Response::text(401, "a bearer token is required\n");
                response
                    .headers
                    .push("WWW-Authenticate: Bearer realm=\"raftfs snapshot\"".into());
                self.respond(registry, key, &response);
                return;
            }
        }
        // Only this thread increments, so the check cannot race upwards.
        if self.downloads.load(Ordering::SeqCst) >= limits::HTTP_SNAPSHOT_DOWNLOADS_MAX {
            let mut response = Response::text(
                503,
                format!(
                    "{} snapshot downloads are running, the most at once; try again\n",
                    limits::HTTP_SNAPSHOT_DOWNLOADS_MAX
                ),
            );
            response.headers.push("Retry-After: 5".into());
            self.respond(registry, key, &response);
            return;
        }
        let Some(mut connection) = self.connections.try_remove(key) else {
            return;
        };
        let _ = registry.deregister(&mut connection.stream);
        let stream = std::net::TcpStream::from(connection.stream);
        self.downloads.fetch_add(1, Ordering::SeqCst);
        let slot = DownloadSlot(Arc::clone(&self.downloads));
        let dir = self.settings.data_dir.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-download".into())
            .spawn(move || {
                let _slot = slot;
                download::serve(stream, &dir);
            });
        if let Err(error) = spawned {
            // The closure (and with it the slot and the socket) is dropped.
            log::warn!("cannot start a snapshot download thread: {error}");
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

/// One running download; frees its slot when the thread ends, however.
struct DownloadSlot(Arc<AtomicUsize>);

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connection {
    /// Reads until the head is complete, `WouldBlock`, or the size limit
    /// (answered as a bad request).
    fn read_head(&mut self) -> io::Result<Option<Request>> {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(request) = parse_request(&self.request) {
                return Ok(Some(request));
            }
            if self.request.len() >= limits::HTTP_REQUEST_BYTES_MAX {
                return Ok(Some(Request::Owner(Route::BadRequest)));
            }
            let room = limits::HTTP_REQUEST_BYTES_MAX - self.request.len();
            let wanted = chunk.len().min(room);
            match self.stream.read(&mut chunk[..wanted]) {
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

/// The request in `head`, once its head is complete (`None` before);
/// malformed heads are `BadRequest`.
fn parse_request(head: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; limits::HTTP_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => Some(route_of(&request)),
        Err(_) => Some(Request::Owner(Route::BadRequest)),
    }
}

fn route_of(request: &httparse::Request<'_, '_>) -> Request {
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Request::Owner(Route::BadRequest);
    };
    if method != "GET" {
        return Request::Owner(Route::MethodNotAllowed);
    }
    let path = target.split('?').next().unwrap_or(target);
    Request::Owner(match path {
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        "/livez" => Route::Livez,
        "/readyz" => Route::Readyz,
        "/snapshot" => {
            let bearer = request
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("authorization"))
                .and_then(|header| bearer_token(header.value))
                .map(<[u8]>::to_vec);
            return Request::Snapshot { bearer };
        }
        _ => Route::NotFound,
    })
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750: the
/// scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(head: &[u8]) -> Option<Request> {
        parse_request(head)
    }

    #[test]
    fn routes_from_request_heads() {
        let owner = |route| Some(Request::Owner(route));
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            owner(Route::Metrics)
        );
        assert_eq!(
            route(b"GET /health?verbose HTTP/1.0\r\n\r\n"),
            owner(Route::Health)
        );
        assert_eq!(route(b"GET /livez HTTP/1.1\r\n\r\n"), owner(Route::Livez));
        assert_eq!(route(b"GET /readyz HTTP/1.1\r\n\r\n"), owner(Route::Readyz));
        assert_eq!(
            route(b"GET /other HTTP/1.1\r\n\r\n"),
            owner(Route::NotFound)
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            owner(Route::MethodNotAllowed)
        );
        // Incomplete heads wait for more bytes.
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(route(b""), None);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), owner(Route::BadRequest));
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), owner(Route::BadRequest));
        let many_headers: String = (0..=limits::HTTP_HEADERS_MAX)
            .map(|n| format!("X-{n}: y\r\n"))
            .collect();
        assert_eq!(
            route(format!("GET /metrics HTTP/1.1\r\n{many_headers}\r\n").as_bytes()),
            owner(Route::BadRequest)
        );
    }

    #[test]
    fn snapshot_requests_carry_their_bearer_token() {
        assert_eq!(
            route(b"GET /snapshot HTTP/1.1\r\nauthorization: bearer  s3cret \r\n\r\n"),
            Some(Request::Snapshot {
                bearer: Some(b"s3cret".to_vec())
            })
        );
        assert_eq!(
            route(b"GET /snapshot HTTP/1.1\r\nAuthorization: Basic eDp5\r\n\r\n"),
            Some(Request::Snapshot { bearer: None })
        );
        assert_eq!(
            route(b"GET /snapshot HTTP/1.1\r\n\r\n"),
            Some(Request::Snapshot { bearer: None })
        );
    }

    #[test]
    fn heads_announce_the_body_length() {
        let response = Response::text(401, "no\n");
        let bytes = String::from_utf8(response.encode()).expect("text");
        assert!(
            bytes.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{bytes}"
        );
        assert!(bytes.contains("Content-Length: 3\r\n"), "{bytes}");
        assert!(bytes.ends_with("\r\n\r\nno\n"), "{bytes}");
    }
}
