//! A fault-injecting TCP proxy in front of one node's peer port.
//!
//! Every node is given the same cluster.toml, in which member `j`'s
//! advertised `peer` address is this proxy's port and its `listen_peer` the
//! real one. A peer connection carries one direction of traffic only (the
//! dialer's envelopes; the receiver answers the handshake and nothing else),
//! and its first frame, the hello, names the dialer. So the proxy in front of
//! node `j` sees, per connection, the directed link `from → j`, and can apply
//! that link's faults: `cut` (connections closed at once and new ones refused
//! after the hello: a partition in one direction), `delay_ms` (every chunk is
//! held that long, order kept), and `reset_links` (today's connections are
//! torn down once: the messages in flight are lost and Raft must resend).
//!
//! Threads: one acceptor, and per connection a reader and a delayed writer
//! for the dialer's direction plus one for the answers. They poll the fault
//! table every few tens of milliseconds, so a fault takes effect promptly,
//! and they exit when either side closes or the proxy is dropped.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use raftfs::net::peer::wire;

const POLL_INTERVAL: Duration = Duration::from_millis(20);
const HELLO_BYTES_MAX: usize = 4096;

/// The faults of one directed link `from → to`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFault {
    /// Nothing passes; connections are closed.
    pub cut: bool,
    /// Every chunk is delivered this much later.
    pub delay_ms: u64,
}

#[derive(Default)]
struct Shared {
    /// Keyed by the dialer's id (the receiver is this proxy's node).
    faults: Mutex<HashMap<u64, LinkFault>>,
    /// Bumped by `reset_links`: a connection opened under an older epoch
    /// closes.
    reset_epoch: Mutex<HashMap<u64, u64>>,
    stopping: AtomicBool,
    connections: AtomicU64,
    bytes_forwarded: AtomicU64,
}

impl Shared {
    fn fault(&self, from: u64) -> LinkFault {
        self.faults
            .lock()
            .map(|f| f.get(&from).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    fn epoch(&self, from: u64) -> u64 {
        self.reset_epoch
            .lock()
            .map(|e| e.get(&from).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn should_close(&self, from: u64, epoch: u64) -> bool {
        self.stopping.load(Ordering::SeqCst) || self.fault(from).cut || self.epoch(from) != epoch
    }
}

/// The proxy in front of one node's real peer listener.
pub struct PeerProxy {
    pub node: u64,
    pub listen: SocketAddr,
    shared: Arc<Shared>,
}

impl PeerProxy {
    /// Listens on `listen` and forwards to `target` (the node's real port).
    pub fn start(node: u64, listen: SocketAddr, target: SocketAddr) -> std::io::Result<PeerProxy> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let acceptor_shared = shared.clone();
        thread::Builder::new()
            .name(format!("proxy-{node}"))
            .spawn(move || accept_loop(listener, target, acceptor_shared))?;
        Ok(PeerProxy {
            node,
            listen,
            shared,
        })
    }

    /// Sets the faults of the link `from → self.node`.
    pub fn set_fault(&self, from: u64, fault: LinkFault) {
        if let Ok(mut faults) = self.shared.faults.lock() {
            faults.insert(from, fault);
        }
    }

    /// Removes every fault on links into this node.
    pub fn heal(&self) {
        if let Ok(mut faults) = self.shared.faults.lock() {
            faults.clear();
        }
    }

    /// Tears down the current connections of `from → self.node` once.
    pub fn reset_link(&self, from: u64) {
        if let Ok(mut epochs) = self.shared.reset_epoch.lock() {
            *epochs.entry(from).or_insert(0) += 1;
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.bytes_forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                let _ = thread::Builder::new()
                    .name("proxy-conn".into())
                    .spawn(move || serve_connection(stream, target, shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Reads the hello to learn the dialer, then forwards both ways.
fn serve_connection(dialer: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    let _ = dialer.set_nonblocking(false);
    let _ = dialer.set_nodelay(true);
    let _ = dialer.set_read_timeout(Some(POLL_INTERVAL));
    let mut hello_bytes = BytesMut::new();
    let started = Instant::now();
    let from = loop {
        let mut probe = hello_bytes.clone();
        match wire::next_frame(&mut probe, HELLO_BYTES_MAX) {
            Ok(Some(payload)) => match wire::decode_hello(&payload) {
                Ok(hello) => break hello.from,
                Err(_) => return,
            },
            Ok(None) => {}
            Err(_) => return,
        }
        if started.elapsed() > Duration::from_secs(3) || shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut chunk = [0u8; 1024];
        match (&dialer).read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => hello_bytes.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    };
    let epoch = shared.epoch(from);
    if shared.should_close(from, epoch) {
        let _ = dialer.shutdown(Shutdown::Both);
        return;
    }
    let Ok(node) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        return;
    };
    let _ = node.set_nodelay(true);
    let _ = node.set_read_timeout(Some(POLL_INTERVAL));
    // Answers (node → dialer): forwarded as they come, closed with the link.
    {
        let (Ok(node_reader), Ok(dialer_writer)) = (node.try_clone(), dialer.try_clone()) else {
            return;
        };
        let shared = shared.clone();
        let _ = thread::Builder::new()
            .name("proxy-answers".into())
            .spawn(move || pump_answers(node_reader, dialer_writer, from, epoch, shared));
    }
    // Envelopes (dialer → node), through a delay line.
    let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
    let _ = sender.send((Instant::now(), hello_bytes.to_vec()));
    {
        let (Ok(node_writer), Ok(dialer_closer)) = (node.try_clone(), dialer.try_clone()) else {
            return;
        };
        let shared = shared.clone();
        let _ = thread::Builder::new()
            .name("proxy-delay".into())
            .spawn(move || delay_line(receiver, node_writer, dialer_closer, from, epoch, shared));
    }
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if shared.should_close(from, epoch) {
            break;
        }
        match (&dialer).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let delay = Duration::from_millis(shared.fault(from).delay_ms);
                if sender
                    .send((Instant::now() + delay, chunk[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    let _ = dialer.shutdown(Shutdown::Both);
    let _ = node.shutdown(Shutdown::Both);
}

fn delay_line(
    receiver: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut node: TcpStream,
    dialer: TcpStream,
    from: u64,
    epoch: u64,
    shared: Arc<Shared>,
) {
    loop {
        let (deliver_at, bytes) = match receiver.recv_timeout(POLL_INTERVAL) {
            Ok(item) => item,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if shared.should_close(from, epoch) {
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        while Instant::now() < deliver_at {
            if shared.should_close(from, epoch) {
                break;
            }
            thread::sleep(
                deliver_at
                    .saturating_duration_since(Instant::now())
                    .min(POLL_INTERVAL),
            );
        }
        if shared.should_close(from, epoch) || node.write_all(&bytes).is_err() {
            break;
        }
        shared
            .bytes_forwarded
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    let _ = node.shutdown(Shutdown::Both);
    let _ = dialer.shutdown(Shutdown::Both);
}

fn pump_answers(
    node: TcpStream,
    mut dialer: TcpStream,
    from: u64,
    epoch: u64,
    shared: Arc<Shared>,
) {
    let mut chunk = vec![0u8; 4096];
    loop {
        if shared.should_close(from, epoch) {
            break;
        }
        match (&node).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if dialer.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    let _ = node.shutdown(Shutdown::Both);
    let _ = dialer.shutdown(Shutdown::Both);
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
