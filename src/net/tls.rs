//! TLS for raftfs sockets: mutual TLS on peer links, optional TLS on the
//! client port, and TLS for the command-line tools (`status`, `member`,
//! `client`), all with rustls and its ring provider.
//!
//! Owns: loading PEM files into rustls configurations (`PeerTls`,
//! `client_port_config`, `ToolTls`), the node identity a certificate carries
//! (`node_name`: SAN DNS `node-<id>.raftfs`, checked by `check_node_identity`),
//! and the two stream types the rest of the code reads and writes through:
//! `Stream` (non-blocking, mio, for the reactor) and `ToolStream` (blocking,
//! for the tools).
//!
//! `Stream` drives rustls sans-IO over the mio socket: a read pulls TLS
//! records with `read_tls`, decrypts with `process_new_packets` and hands out
//! plaintext; a write encrypts into rustls's buffer and pushes records with
//! `write_tls`. Invariants that make it a drop-in for a plain non-blocking
//! socket under edge-triggered readiness:
//! - `read` answers `WouldBlock` only when the socket would block *and* no
//!   decrypted byte is left inside rustls, so a caller that reads until
//!   `WouldBlock` never strands plaintext without a readiness event to come.
//! - `write` first pushes what rustls still holds; if that would block it
//!   answers `WouldBlock` and takes nothing, so rustls's outgoing buffer holds
//!   at most one write's worth (bounded by `TLS_BUFFER_BYTES_MAX`) plus
//!   handshake records. `has_pending_output` says so and `flush` pushes it;
//!   the owner calls `flush` on writable events.
//! - Every TLS failure (bad certificate, a plain client talking to a TLS
//!   port, garbage) is an `io::Error` of kind `InvalidData` naming the
//!   cause; the caller closes that connection and nothing else.
//! - An end of stream without `close_notify` reads as end of stream.
//!
//! Leaves out: which connection uses TLS (the config), certificate making
//! (`crate::certs`).

use crate::config::ClusterConfig;
use crate::error::Error;
use crate::limits;
use crate::raft::NodeId;
use mio::net::TcpStream;
use mio::{event, Interest, Registry, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The DNS name a node's certificate carries: `node-<id>.raftfs`.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.raftfs")
}

/// ring: lighter to build than aws-lc-rs. rustls marks it deprecated for
/// lacking post-quantum key exchange; the classical suites it offers
/// (X25519, AES-GCM, ChaCha20-Poly1305) are what this cluster needs.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in the PEM file `path` (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in the PEM file `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: cannot read a PEM private key: {e}", path.display()))
}

/// A root store holding every certificate of the PEM file `path`.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Mutual TLS for one node's peer links: the server side accepts only
/// certificates chaining to the cluster CA; the client side presents this
/// node's certificate and verifies the dialed node's as `node-<id>.raftfs`.
pub struct PeerTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PeerTls")
    }
}

impl PeerTls {
    /// Loads the CA, this node's certificate and its key; any unreadable or
    /// mismatched file is one line naming it.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<PeerTls, String> {
        let roots = load_roots(ca)?;
        let chain = load_certs(cert)?;
        let private_key = load_key(key)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("{}: cannot verify peers with it: {e}", ca.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private_key.clone_key())
            .map_err(|e| {
                format!(
                    "{} / {}: certificate and key do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        // Peer links are long-lived: no resumption tickets to send.
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key)
            .map_err(|e| {
                format!(
                    "{} / {}: certificate and key do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The accepting side of an inbound peer connection.
    pub fn accept(&self, socket: TcpStream) -> io::Result<Stream> {
        let connection = ServerConnection::new(self.server.clone()).map_err(tls_error)?;
        Ok(Stream::tls(socket, connection.into(), true))
    }

    /// The dialing side of a link to node `peer`, verified as its node name.
    pub fn dial(&self, socket: TcpStream, peer: NodeId) -> io::Result<Stream> {
        let name = ServerName::try_from(node_name(peer)).map_err(tls_error)?;
        let connection = ClientConnection::new(self.client.clone(), name).map_err(tls_error)?;
        Ok(Stream::tls(socket, connection.into(), true))
    }
}

/// The client port's TLS: this node's certificate; with `ca`, clients must
/// present a certificate chaining to it.
pub fn client_port_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider())
                .build()
                .map_err(|e| format!("{}: cannot verify clients with it: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| {
            format!(
                "{} / {}: certificate and key do not go together: {e}",
                cert.display(),
                key.display()
            )
        })?;
    // A client that checks for a closed connection by peeking must not find
    // unsolicited tickets; clients reconnect rarely.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Wraps an accepted client-port socket in TLS.
pub fn accept_client(config: &Arc<ServerConfig>, socket: TcpStream) -> io::Result<Stream> {
    let connection = ServerConnection::new(config.clone()).map_err(tls_error)?;
    Ok(Stream::tls(socket, connection.into(), false))
}

/// Whether `cert` (DER) names node `id` (SAN DNS `node-<id>.raftfs`).
pub fn check_node_identity(cert: &CertificateDer<'_>, id: NodeId) -> Result<(), String> {
    let name = ServerName::try_from(node_name(id)).map_err(|e| e.to_string())?;
    let end_entity = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("undecodable peer certificate: {e}"))?;
    end_entity
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("its certificate is not the certificate of node {id}"))
}

/// Peer mutual TLS and client-port TLS of one node, each if configured.
pub type NodeTls = (Option<Arc<PeerTls>>, Option<Arc<ServerConfig>>);

/// What node `id` of `config` serves with: peer mutual TLS and client-port
/// TLS, each if configured. A bad or missing file is one `Error::Config`
/// line. A node whose peer address is not loopback and has no peer TLS says
/// so in one warning line.
pub fn node_tls(config: &ClusterConfig, id: NodeId) -> crate::error::Result<NodeTls> {
    let member = config.member(id)?;
    let peer = match &config.peer_tls {
        Some(files) => {
            let files = files.for_node(id);
            let ca = files.ca.as_deref().unwrap_or(Path::new(""));
            let tls = PeerTls::load(ca, &files.cert, &files.key)
                .map_err(|e| Error::Config(format!("node {id}: peer_tls: {e}")))?;
            Some(Arc::new(tls))
        }
        None => {
            if let Some(warning) = plain_peer_warning(member) {
                log::warn!("{warning}");
            }
            None
        }
    };
    let client = match &config.client_tls {
        Some(files) => {
            let files = files.for_node(id);
            let tls = client_port_config(&files.cert, &files.key, files.ca.as_deref())
                .map_err(|e| Error::Config(format!("node {id}: client_tls: {e}")))?;
            Some(tls)
        }
        None => None,
    };
    Ok((peer, client))
}

/// The start-up warning of a member whose peer links would be plain TCP
/// off loopback (advertised or bound address).
pub fn plain_peer_warning(member: &crate::config::Member) -> Option<String> {
    if member.peer.ip().is_loopback() && member.listen_peer.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "node {}: peer links on {} are plain TCP, neither encrypted nor authenticated: set \
         [peer_tls] (raftfs certs makes the files), or keep the peer network private",
        member.id, member.listen_peer
    ))
}

fn tls_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {error}"))
}

/// A non-blocking socket, plain or TLS, registered with mio.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// rustls driven over a mio socket (see the module doc).
pub struct TlsStream {
    socket: TcpStream,
    tls: rustls::Connection,
    /// Peer link or client connection: a TLS failure on a peer link is a
    /// warning (a stranger or a misconfigured node), on a client port info.
    peer_link: bool,
    /// The socket reached end of stream.
    eof: bool,
}

impl Stream {
    fn tls(socket: TcpStream, mut tls: rustls::Connection, peer_link: bool) -> Stream {
        tls.set_buffer_limit(Some(limits::TLS_BUFFER_BYTES_MAX));
        Stream::Tls(Box::new(TlsStream {
            socket,
            tls,
            peer_link,
            eof: false,
        }))
    }

    /// The TCP socket underneath.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(stream) => &stream.socket,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.socket().set_nodelay(on)
    }

    /// Encrypted bytes rustls holds that the socket has not taken yet.
    pub fn has_pending_output(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(stream) => stream.tls.wants_write(),
        }
    }

    /// With TLS: checks that the peer's certificate names node `id` (the id
    /// its hello claims). Plain streams have no identity to check.
    pub fn check_peer_identity(&self, id: NodeId) -> Result<(), String> {
        let Stream::Tls(stream) = self else {
            return Ok(());
        };
        match stream
            .tls
            .peer_certificates()
            .and_then(|chain| chain.first())
        {
            Some(cert) => check_node_identity(cert, id),
            None => Err("it presented no certificate".into()),
        }
    }

    /// Shuts the socket's `how` side; with TLS, a write shutdown first sends
    /// `close_notify` (best effort).
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if let Stream::Tls(stream) = self {
            if matches!(how, Shutdown::Write | Shutdown::Both) {
                stream.tls.send_close_notify();
                let _ = stream.push_output();
            }
        }
        self.socket().shutdown(how)
    }
}

impl TlsStream {
    /// Writes what rustls holds until done or the socket would block.
    /// `Ok(true)` when nothing is left.
    fn push_output(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn read_plain(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.read_with(|reader| reader.read(buffer))
    }

    /// Reads by `take`, which hands decrypted bytes on from rustls's reader:
    /// `WouldBlock` from it means none are buffered, so more TLS records are
    /// read from the socket, until the socket would block too.
    fn read_with(
        &mut self,
        mut take: impl FnMut(&mut rustls::Reader<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            match take(&mut self.tls.reader()) {
                Ok(read) => return Ok(read),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an end of stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.tls.read_tls(&mut self.socket) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.push_output()?;
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if let Err(error) = self.tls.process_new_packets() {
                // Tell the peer why (an alert) before the caller closes.
                let _ = self.push_output();
                let remote = self
                    .socket
                    .peer_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string());
                if self.peer_link {
                    log::warn!("peer connection with {remote} closed: TLS: {error}");
                } else {
                    log::info!("client connection from {remote} closed: TLS: {error}");
                }
                return Err(tls_error(error));
            }
            // Handshake answers go out as soon as they exist.
            self.push_output()?;
        }
    }

    fn write_plain(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.push_output()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let written = self.tls.writer().write_vectored(slices)?;
        self.push_output()?;
        Ok(written)
    }
}

impl Stream {
    /// Appends at most `max_bytes` decrypted bytes to `buffer`, without
    /// zero-filling it first (TLS streams; `read` semantics otherwise).
    pub fn read_into(
        &mut self,
        buffer: &mut bytes::BytesMut,
        max_bytes: usize,
    ) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => {
                let start = buffer.len();
                buffer.resize(start + max_bytes, 0);
                let result = socket.read(&mut buffer[start..]);
                buffer.truncate(start + *result.as_ref().unwrap_or(&0));
                result
            }
            Stream::Tls(stream) => stream.read_with(|reader| {
                let chunk = std::io::BufRead::fill_buf(reader)?;
                let taken = chunk.len().min(max_bytes);
                buffer.extend_from_slice(&chunk[..taken]);
                std::io::BufRead::consume(reader, taken);
                Ok(taken)
            }),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buffer),
            Stream::Tls(stream) => stream.read_plain(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buffer)])
    }

    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write_vectored(slices),
            Stream::Tls(stream) => stream.write_plain(slices),
        }
    }

    /// Pushes what TLS holds; `WouldBlock` if the socket took not all of it.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(stream) => match stream.push_output()? {
                true => Ok(()),
                false => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }
}

impl event::Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.register(registry, token, interests),
            Stream::Tls(stream) => stream.socket.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.reregister(registry, token, interests),
            Stream::Tls(stream) => stream.socket.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.deregister(registry),
            Stream::Tls(stream) => stream.socket.deregister(registry),
        }
    }
}

/// TLS for the command-line tools: trust the cluster CA; with a
/// certificate and key, present them (peer ports and client ports that
/// require client certificates).
#[derive(Clone)]
pub struct ToolTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ToolTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ToolTls")
    }
}

impl ToolTls {
    pub fn load(ca: &Path, cert_and_key: Option<(&Path, &Path)>) -> Result<ToolTls, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(load_roots(ca)?);
        let config = match cert_and_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    format!(
                        "{} / {}: certificate and key do not go together: {e}",
                        cert.display(),
                        key.display()
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(ToolTls {
            config: Arc::new(config),
        })
    }

    /// Wraps a connected blocking socket; the server must prove it is
    /// `server_name` (a HOST of HOST:PORT: a DNS name or an IP address).
    pub fn wrap(&self, socket: std::net::TcpStream, server_name: &str) -> io::Result<ToolStream> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{server_name:?} is not a name TLS can verify: {e}"),
            )
        })?;
        let connection = ClientConnection::new(self.config.clone(), name).map_err(tls_error)?;
        Ok(ToolStream::Tls(Box::new(rustls::StreamOwned::new(
            connection, socket,
        ))))
    }

    /// Wraps a connected non-blocking mio socket (a load generator's), the
    /// server verified by its IP address.
    pub fn wrap_nonblocking(&self, socket: TcpStream) -> io::Result<Stream> {
        let ip = socket.peer_addr()?.ip();
        let connection =
            ClientConnection::new(self.config.clone(), ServerName::IpAddress(ip.into()))
                .map_err(tls_error)?;
        Ok(Stream::tls(socket, connection.into(), false))
    }

    /// Connects to `address` within `timeout` and verifies it by its IP.
    pub fn connect(&self, address: SocketAddr, timeout: Duration) -> io::Result<ToolStream> {
        let socket = std::net::TcpStream::connect_timeout(&address, timeout)?;
        self.wrap(socket, &address.ip().to_string())
    }
}

/// `--ca`, `--cert`, `--key` of `raftfs status`, `member` and `client`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TlsArgs {
    /// CA certificate (PEM) to verify the nodes with; turns TLS on. Default:
    /// the config's [peer_tls] ca (status, member) or [client_tls]/[peer_tls] ca (client).
    #[arg(long, global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// Certificate (PEM) to present. Default: client.pem beside the CA file,
    /// when the port requires one.
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// TLS for the peer ports (`status`, `member`): `None` when neither
    /// `--ca` nor `[peer_tls]` asks for it. Peer ports require a client
    /// certificate: `--cert/--key`, else `client.pem`/`client.key` beside
    /// the CA (as `raftfs certs` writes them).
    pub fn for_peers(&self, config: &ClusterConfig) -> Result<Option<ToolTls>, String> {
        let from_config = config
            .peer_tls
            .as_ref()
            .and_then(|files| files.for_node(first_id(config)).ca);
        let Some(ca) = self.ca.clone().or(from_config) else {
            return Ok(None);
        };
        let (cert, key) = self.cert_and_key(&ca).ok_or_else(|| {
            format!(
                "peer ports need a client certificate: give --cert and --key (no client.pem and                  client.key beside {})",
                ca.display()
            )
        })?;
        ToolTls::load(&ca, Some((&cert, &key))).map(Some)
    }

    /// TLS for client ports: `None` when neither `--ca` nor the config's
    /// `[client_tls]` asks for it. A certificate is presented when given, or
    /// when `[client_tls]` requires one (then `client.pem` beside the CA).
    pub fn for_clients(&self, config: Option<&ClusterConfig>) -> Result<Option<ToolTls>, String> {
        let client_tls = config.and_then(|c| c.client_tls.as_ref().map(|f| (c, f)));
        let ca = self.ca.clone().or_else(|| {
            let (config, files) = client_tls?;
            files.for_node(first_id(config)).ca.or_else(|| {
                let peer = config.peer_tls.as_ref()?;
                peer.for_node(first_id(config)).ca
            })
        });
        let Some(ca) = ca else {
            if client_tls.is_some() {
                return Err("the client ports serve TLS: give --ca (the CA that signed the                             nodes' certificates)"
                    .into());
            }
            return Ok(None);
        };
        let requires_cert = client_tls.is_some_and(|(_, files)| files.ca.is_some());
        let pair = match (self.cert.is_some(), requires_cert) {
            (true, _) | (false, true) => Some(self.cert_and_key(&ca).ok_or_else(|| {
                format!(
                    "the client ports require a client certificate: give --cert and --key (no                      client.pem and client.key beside {})",
                    ca.display()
                )
            })?),
            (false, false) => None,
        };
        ToolTls::load(&ca, pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path()))).map(Some)
    }

    fn cert_and_key(&self, ca: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            return Some((cert.clone(), key.clone()));
        }
        let dir = ca.parent()?;
        let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
        (cert.exists() && key.exists()).then_some((cert, key))
    }
}

fn first_id(config: &ClusterConfig) -> NodeId {
    config.members.first().map_or(1, |m| m.id)
}

/// The host part of `HOST:PORT` (brackets of an IPv6 address removed).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A blocking socket, plain or TLS, for the tools.
pub enum ToolStream {
    Plain(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, std::net::TcpStream>>),
}

impl ToolStream {
    /// The TCP socket underneath (timeouts, peeking, addresses).
    pub fn socket(&self) -> &std::net::TcpStream {
        match self {
            ToolStream::Plain(socket) => socket,
            ToolStream::Tls(stream) => &stream.sock,
        }
    }

    /// Whether decrypted bytes wait inside TLS (not visible to a peek).
    pub fn has_buffered_input(&mut self) -> bool {
        match self {
            ToolStream::Plain(_) => false,
            ToolStream::Tls(stream) => stream
                .conn
                .process_new_packets()
                .map(|state| state.plaintext_bytes_to_read() > 0)
                .unwrap_or(false),
        }
    }
}

impl Read for ToolStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            ToolStream::Plain(socket) => socket.read(buffer),
            ToolStream::Tls(stream) => match stream.read(buffer) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for ToolStream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            ToolStream::Plain(socket) => socket.write(buffer),
            ToolStream::Tls(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ToolStream::Plain(socket) => socket.flush(),
            ToolStream::Tls(stream) => stream.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("db.example:1"), "db.example");
    }

    #[test]
    fn plain_peers_off_loopback_are_warned_about() {
        let config = ClusterConfig::parse(
            "[[node]]\nid = 1\nclient = \"127.0.0.1:8080\"\npeer = \"127.0.0.1:9080\"\n\
             [[node]]\nid = 2\nclient = \"127.0.0.1:8081\"\npeer = \"127.0.0.1:9081\"\n\
             listen_peer = \"0.0.0.0:9081\"\n\
             [[node]]\nid = 3\nclient = \"127.0.0.1:8082\"\npeer = \"127.0.0.3:9082\"\n",
        )
        .expect("parses");
        assert_eq!(plain_peer_warning(&config.members[0]), None);
        let warning = plain_peer_warning(&config.members[1]).expect("0.0.0.0 is not loopback");
        assert!(
            warning.contains("node 2") && warning.contains("[peer_tls]"),
            "{warning}"
        );
        assert_eq!(plain_peer_warning(&config.members[2]), None);
    }

    #[test]
    fn missing_files_are_one_line_naming_them() {
        let error = PeerTls::load(
            Path::new("/nonexistent/ca.pem"),
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .expect_err("refused");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        assert!(!error.contains('\n'));
    }
}
