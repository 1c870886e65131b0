//! Starting one node: validated config + id → data dir, WAL, listeners,
//! peers, replica, reactor. Every step that can fail does so before anything
//! serves, with one clear error line (SPEC §1: nothing is half-started).

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::limits;
use crate::net::peer::{PeerConfig, Peers};
use crate::net::reactor::{Reactor, PEER_TOKEN_BASE};
use crate::raft::{self, NodeId};
use crate::replica::{Boot, Replica, ReplicaConfig};
use crate::snapshot;
use crate::storage;
use mio::net::TcpListener;
use mio::Poll;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Build a ready-to-run node. `data_dir` overrides `<data_dir>/<id>`.
pub fn start_node(config: &ClusterConfig, id: NodeId, data_dir: Option<&Path>) -> Result<Reactor> {
    let member = config.member(id)?.clone();
    let (peer_tls, client_tls) = crate::net::tls::node_tls(config, id)?;
    let snapshot_token = match member.metrics {
        Some(_) => config.snapshot_token()?,
        None => None,
    };
    let node_dir = config.node_data_dir(id, data_dir);
    let (mut wal, recovered) = storage::open(&node_dir, config.fsync)?;
    if storage::lost_unsynced::enabled_by_environment() {
        wal.track_synced_position()?;
        log::warn!(
            "node {id}: lost-fsync test mode ({}=1): recording the synced WAL position",
            storage::lost_unsynced::LOSE_UNSYNCED_ENV
        );
    }
    let cluster = match recovered.cluster_id {
        0 => "no cluster yet".to_string(),
        cluster_id => format!("cluster {cluster_id:016x}"),
    };
    log::info!(
        "node {id}: data dir {} (incarnation {:016x}, {cluster}), recovered {} entries, term {}",
        node_dir.display(),
        recovered.incarnation,
        recovered.entries.len(),
        recovered.hard_state.term
    );
    let poll = Poll::new().map_err(|e| Error::io("creating the poller", e))?;
    let listener = TcpListener::bind(member.listen_client).map_err(|e| {
        Error::Config(format!(
            "node {id}: cannot listen for clients on {}: {e}",
            member.listen_client
        ))
    })?;
    widen_backlog(&listener);
    let peer_addresses: BTreeMap<NodeId, std::net::SocketAddr> = config
        .members
        .iter()
        .filter(|m| m.id != id)
        .map(|m| (m.id, m.peer))
        .collect();
    let file_peer_addresses = peer_addresses.clone();
    let peers = Peers::new(
        poll.registry(),
        PEER_TOKEN_BASE,
        PeerConfig {
            cluster_id_dir: Some(node_dir.clone()),
            tls: peer_tls,
            ..PeerConfig::new(
                id,
                recovered.incarnation,
                recovered.cluster_id,
                member.listen_peer,
                peer_addresses,
            )
        },
    )
    .map_err(|e| {
        Error::Config(format!(
            "node {id}: cannot listen for peers on {}: {e}",
            member.listen_peer
        ))
    })?;

    let raft_config = raft::Config {
        id,
        members: config.members.iter().map(|m| m.id).collect(),
        addresses: config
            .members
            .iter()
            .map(|m| {
                let addresses = raft::MemberAddresses {
                    peer: m.peer.to_string(),
                    client: m.client.clone(),
                    metrics: m.metrics.map(|a| a.to_string()).unwrap_or_default(),
                };
                (m.id, addresses)
            })
            .collect(),
        incarnation: recovered.incarnation,
        election_timeout_ticks: config.election_timeout_ticks(),
        heartbeat_ticks: config.heartbeat_ticks(),
        inflight_appends_max: limits::INFLIGHT_APPENDS_MAX,
        append_bytes_max: limits::APPEND_BYTES_MAX,
        snapshot_chunk_bytes_max: limits::SNAPSHOT_CHUNK_BYTES_MAX,
        pre_vote: true,
        check_quorum: true,
        seed: recovered.incarnation ^ id,
    };
    let replica_config = ReplicaConfig {
        raft: raft_config,
        client_addresses: config
            .members
            .iter()
            .map(|m| (m.id, m.client.clone()))
            .collect(),
        hold_while_leaderless_ms: config.election_timeout_ms.1,
        snapshot_entries: config.snapshot_entries,
        follower_requests: config.follower_requests,
        session: {
            use rand::RngCore;
            rand::rngs::OsRng.next_u64()
        },
    };
    let restore = snapshot::restore(&node_dir, recovered.entries, recovered.log_start)?;
    let replica = Replica::new(
        replica_config,
        Boot {
            hard_state: recovered.hard_state,
            restore,
        },
    );
    // Only a removal known committed (in the snapshot) stops it here: an
    // uncommitted one in its log may have been overwritten since (sim seed
    // 4707); a member refuses a data dir whose removal it committed, and
    // that stops it as soon as it dials one.
    if replica.removed().is_some() {
        return Err(Error::Removed(format!(
            "node {id}: data dir {} was removed from the cluster (its committed configuration \
             says so): start this node with an empty data dir, then add it with `raftfs member \
             add`",
            node_dir.display()
        )));
    }
    let stop_grace = Duration::from_millis(config.election_timeout_ms.1 * 2);
    let mut reactor = Reactor::new(
        poll,
        listener,
        peers,
        replica,
        (wal, node_dir.clone(), config.fsync),
        config.max_file_bytes,
        stop_grace,
    )
    .map_err(|e| Error::io("starting the reactor", e))?;
    reactor.set_client_limits(config.client_limits);
    if let Some(address) = member.metrics {
        if snapshot_token.is_none() && !address.ip().is_loopback() {
            log::warn!(
                "node {id}: GET /snapshot on {address} serves every file to anyone who can reach \
                 it: set snapshot_token_file, or keep the metrics address internal"
            );
        }
        let settings = crate::net::http::HttpSettings {
            data_dir: node_dir.clone(),
            snapshot_token,
        };
        reactor.serve_metrics(address, settings).map_err(|e| {
            Error::Config(format!(
                "node {id}: cannot listen for metrics on {address}: {e}"
            ))
        })?;
        log::info!(
            "node {id}: metrics on http://{address}/metrics (also /health, /livez, /readyz, /snapshot)"
        );
    }
    if let Some(client_tls) = client_tls {
        reactor.set_client_tls(client_tls);
    }
    reactor.set_checksum_path(node_dir.join(crate::net::reactor::CHECKSUM_FILE_NAME));
    reactor.set_file_peer_addresses(file_peer_addresses);
    Ok(reactor)
}

/// Raise the client listener's backlog from mio's 128 to `LISTEN_BACKLOG`:
/// calling `listen` again on a listening socket only updates its backlog.
/// Failure is harmless (the old backlog stays), so it is only logged.
fn widen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: `listen` on a socket descriptor this listener owns; it touches
    // no memory of ours.
    let result = unsafe { libc::listen(listener.as_raw_fd(), limits::LISTEN_BACKLOG) };
    if result != 0 {
        log::warn!(
            "could not raise the client listen backlog: {}",
            std::io::Error::last_os_error()
        );
    }
}
