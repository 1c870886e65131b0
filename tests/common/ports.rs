//! Ports for test nodes: every cluster takes a fresh block of
//! `PORT_BLOCK_SIZE` ports below the kernel's ephemeral range (so outgoing
//! connections never occupy them).
//!
//! A block is reserved across processes by an exclusive `flock` on a file in
//! the temp dir, held until this process exits (the kernel drops it even on
//! kill -9), and every port of the block is checked free by binding it before
//! use. The search starts at a block derived from the pid, so parallel test
//! binaries start far apart and then skip each other's blocks.
//!
//! Layout of a block (node `id` at `+ id - 1`, up to `NODES_PER_BLOCK`):
//! client ports at +0.., real peer listeners at +10.., metrics at +20..,
//! fault-injecting peer proxies at +30...
//!
//! Leaves out: which process uses which port (`cluster` decides).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::io::AsRawFd;
use std::sync::Mutex;

/// The first port of the first block.
const PORT_RANGE_START: u16 = 10_000;
/// Ports per block.
pub const PORT_BLOCK_SIZE: u16 = 50;
/// Blocks available: up to port 32_000, below Linux's ephemeral range (32768..).
const PORT_BLOCKS: u32 = 440;
/// Nodes one block has room for.
pub const NODES_PER_BLOCK: usize = 10;
/// Offsets inside a block.
pub const CLIENT_PORT_OFFSET: u16 = 0;
pub const PEER_PORT_OFFSET: u16 = 10;
pub const METRICS_PORT_OFFSET: u16 = 20;
pub const PROXY_PORT_OFFSET: u16 = 30;

/// Lock files of the blocks this process reserved (kept open until exit).
static HELD_BLOCKS: Mutex<Vec<File>> = Mutex::new(Vec::new());
/// Next block index to try, relative to the pid-derived start.
static NEXT_BLOCK: Mutex<u32> = Mutex::new(0);

fn block_base(block: u32) -> u16 {
    PORT_RANGE_START + (block % PORT_BLOCKS) as u16 * PORT_BLOCK_SIZE
}

/// Tries to reserve block `block` for this process: an exclusive lock on its
/// file, then every port bound once. The lock file is returned on success.
fn try_reserve_block(block: u32) -> Option<File> {
    let directory = std::env::temp_dir().join("raftfs-test-ports");
    std::fs::create_dir_all(&directory).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(directory.join(format!("block-{}.lock", block % PORT_BLOCKS)))
        .ok()?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return None;
    }
    let base = block_base(block);
    let all_free = (base..base + PORT_BLOCK_SIZE).all(port_is_free);
    all_free.then_some(file)
}

/// Whether `port` can be bound on 127.0.0.1 right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Reserves a group of blocks `block, block + strides[1], ...` (relative
/// offsets in blocks; the first stride is 0) and returns the first block's
/// base port. Panics only if no group in the whole range is free.
pub fn reserve_port_blocks(strides: &[u32]) -> u16 {
    let start = std::process::id().wrapping_mul(7919) % PORT_BLOCKS;
    let mut next = NEXT_BLOCK.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..PORT_BLOCKS {
        let block = (start + *next) % PORT_BLOCKS;
        *next += 1;
        let max_stride = strides.iter().copied().max().unwrap_or(0);
        if block + max_stride >= PORT_BLOCKS {
            continue;
        }
        let mut files = Vec::new();
        for stride in strides {
            match try_reserve_block(block + stride) {
                Some(file) => files.push(file),
                None => break,
            }
        }
        if files.len() == strides.len() {
            HELD_BLOCKS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(files);
            return block_base(block);
        }
        // Dropping `files` releases the partial reservation.
    }
    panic!("no free port block between {PORT_RANGE_START} and 32000");
}

/// A fresh block of ports for one cluster of up to `NODES_PER_BLOCK` nodes.
pub fn fresh_base_port() -> u16 {
    reserve_port_blocks(&[0])
}
