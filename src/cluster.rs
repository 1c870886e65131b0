//! Running nodes in this process: `raftfs node` (one) and `raftfs cluster`
//! (N on 127.0.0.1, the demo). Each node is one reactor thread; SIGINT or
//! SIGTERM stops them all gracefully (a leader hands over first); a node that
//! stops on an error stops the whole command with that error. SIGUSR1 makes
//! every node write its file map's checksum to `<data dir>/fsm.checksum`
//! (see `net::reactor`), for convergence checks. Under systemd the command
//! reports readiness, role changes and stopping (`crate::service`).

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::net::reactor::{ChecksumHandle, StopHandle};
use crate::raft::{NodeId, Role};
use crate::replica::Status;
use crate::server::start_node;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

enum Event {
    Signal(i32),
    NodeExited(NodeId, Result<()>),
}

/// One node in the foreground until a signal or a fatal error.
pub fn run_node(config: &ClusterConfig, id: NodeId, data_dir: Option<&Path>) -> Result<()> {
    let reactor = start_node(config, id, data_dir)?;
    let member = config.member(id)?;
    log::info!(
        "node {id} serving clients on {} and peers on {}",
        member.listen_client,
        member.listen_peer
    );
    crate::service::notify_ready(&format!(
        "node {id}: serving clients on {}",
        member.listen_client
    ));
    let mut shown = String::new();
    run_reactors(vec![(id, reactor)], move |statuses| {
        let Some(status) = statuses.first() else {
            return;
        };
        let line = match (status.role, status.leader) {
            (Some(Role::Leader), _) => format!("node {id}: leader, term {}", status.term),
            (_, Some(leader)) => {
                format!("node {id}: follower of node {leader}, term {}", status.term)
            }
            (_, None) => format!("node {id}: no leader known, term {}", status.term),
        };
        if line != shown {
            crate::service::notify_status(&line);
            shown = line;
        }
    })
}

/// The local demo cluster: every node of `config` in this process.
pub fn run(config: &ClusterConfig) -> Result<()> {
    check_data_dirs(config)?;
    let mut reactors = Vec::new();
    for member in &config.members {
        reactors.push((member.id, start_node(config, member.id, None)?));
    }
    println!(
        "raftfs: local cluster of {} nodes (data in {})",
        config.members.len(),
        config.data_dir.display()
    );
    for member in &config.members {
        println!(
            "  node {}: clients {}  peers {}",
            member.id, member.client, member.peer
        );
    }
    let clients: Vec<(NodeId, String)> = config
        .members
        .iter()
        .map(|m| (m.id, m.client.clone()))
        .collect();
    let mut last_leader: Option<(NodeId, u64)> = None;
    run_reactors(reactors, move |statuses| {
        let leader = statuses
            .iter()
            .filter(|s| s.role == Some(Role::Leader))
            .max_by_key(|s| s.term)
            .map(|s| (s.id, s.term));
        if leader.is_some() && leader != last_leader {
            if let Some((id, term)) = leader {
                let address = clients
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, a)| a.as_str())
                    .unwrap_or("?");
                println!(
                    "raftfs: node {id} leads (term {term}); connect with: raftfs client --addr {address} (or telnet {})",
                    address.replace(':', " ")
                );
            }
            last_leader = leader;
        }
    })
}

/// The demo defines its own membership, so the data dirs under its
/// `data_dir` must be fresh or all of one cluster among these nodes: a
/// 3-node run after a 5-node one would otherwise restart nodes 1-3
/// of the 5-node cluster (its log says so) with two members missing.
/// Refused with one line naming the dirs; every node dir is
/// `<data_dir>/<id>`, so any numbered dir there holding a cluster id counts.
fn check_data_dirs(config: &ClusterConfig) -> Result<()> {
    let mut found: Vec<(NodeId, u64)> = Vec::new();
    let Ok(listing) = std::fs::read_dir(&config.data_dir) else {
        return Ok(());
    };
    for item in listing.flatten() {
        let Some(id) = item
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<NodeId>().ok())
        else {
            continue;
        };
        let cluster_id = crate::storage::load_cluster_id(&item.path())?;
        if cluster_id != 0 {
            found.push((id, cluster_id));
        }
    }
    found.sort_unstable();
    let Some(&(_, first)) = found.first() else {
        return Ok(());
    };
    let members: Vec<NodeId> = config.members.iter().map(|m| m.id).collect();
    let ids: Vec<NodeId> = found.iter().map(|(id, _)| *id).collect();
    let one_cluster = found.iter().all(|(_, cluster_id)| *cluster_id == first);
    // Some members' dirs may lack the id yet (a first run stopped before
    // they adopted it): those are fresh, not another cluster's.
    if one_cluster && ids.iter().all(|id| members.contains(id)) {
        return Ok(());
    }
    let held = found
        .iter()
        .map(|(id, cluster_id)| format!("{id}: cluster {cluster_id:016x}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(crate::error::Error::Refused(format!(
        "{} holds the data of another cluster (node dirs {held}); this cluster has nodes {members:?}: \
         use another --data-dir, or remove it",
        config.data_dir.display()
    )))
}

fn run_reactors(
    reactors: Vec<(NodeId, crate::net::reactor::Reactor)>,
    mut on_status: impl FnMut(&[Status]),
) -> Result<()> {
    let (sender, receiver) = mpsc::channel::<Event>();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .map_err(|e| Error::io("installing signal handlers", e))?;
    let signal_sender = sender.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_sender.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    });
    let mut stops: Vec<StopHandle> = Vec::new();
    let mut checksums: Vec<ChecksumHandle> = Vec::new();
    let mut statuses: Vec<Arc<Mutex<Status>>> = Vec::new();
    let mut threads = Vec::new();
    crate::service::maybe_inject_panic();
    for (id, mut reactor) in reactors {
        stops.push(reactor.stop_handle());
        checksums.push(reactor.checksum_handle());
        statuses.push(reactor.status_handle());
        let sender = sender.clone();
        let thread = std::thread::Builder::new()
            .name(format!("node-{id}"))
            .spawn(move || {
                let result = reactor.run();
                let _ = sender.send(Event::NodeExited(id, result));
            })
            .map_err(|e| Error::io("starting a node thread", e))?;
        threads.push(thread);
    }
    let mut running = threads.len();
    let mut outcome: Result<()> = Ok(());
    let mut stopping = false;
    while running > 0 {
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Signal(SIGUSR1)) => {
                for checksum in &checksums {
                    checksum.request();
                }
            }
            Ok(Event::Signal(signal)) => {
                if stopping {
                    log::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
                log::info!("signal {signal}: stopping");
                crate::service::notify_stopping();
                stopping = true;
                for stop in &stops {
                    stop.stop();
                }
            }
            Ok(Event::NodeExited(id, result)) => {
                running -= 1;
                if let Err(error) = result {
                    log::error!("node {id} stopped: {error}");
                    if outcome.is_ok() {
                        outcome = Err(error);
                    }
                    // One node failing stops the command (the others are
                    // stopped gracefully).
                    for stop in &stops {
                        stop.stop();
                    }
                    stopping = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let snapshot: Vec<Status> = statuses
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.clone()))
            .collect();
        on_status(&snapshot);
    }
    for thread in threads {
        let _ = thread.join();
    }
    outcome
}
