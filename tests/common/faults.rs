//! Faults a test does to a `Cluster` through its peer proxies (partitions,
//! one-way cuts, delays, link resets), healing them all, counting what was
//! done, and convergence checks through the nodes' `fsm.checksum` dump
//! (SIGUSR1).
//!
//! Process faults (kill -9 with lost-fsync, SIGSTOP/SIGCONT, restart) are
//! `Cluster` methods; they count here too.
//!
//! Leaves out: choosing faults (the tests' schedules).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::proxy::{LinkFault, PeerProxy};

/// Counts of what was done to the cluster.
#[derive(Clone, Debug, Default)]
pub struct FaultCounts {
    pub kills: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub one_way_cuts: u64,
    pub delays: u64,
    pub link_resets: u64,
    pub unsynced_bytes_discarded: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.kills
            + self.pauses
            + self.partitions
            + self.one_way_cuts
            + self.delays
            + self.link_resets
    }
}

/// One line of a node's `fsm.checksum` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsmChecksum {
    pub applied_index: u64,
    pub version_counter: u64,
    pub files: u64,
    pub checksum: String,
}

impl Cluster {
    fn proxy(&self, id: u64) -> &PeerProxy {
        &self.proxies[id as usize - 1]
    }

    /// Cuts every link between `side` and the rest, both ways.
    pub fn partition(&mut self, side: &[u64]) {
        for a in self.ids() {
            for b in self.ids() {
                if a != b && side.contains(&a) != side.contains(&b) {
                    self.proxy(b).set_fault(
                        a,
                        LinkFault {
                            cut: true,
                            delay_ms: 0,
                        },
                    );
                }
            }
        }
        self.counts.partitions += 1;
    }

    /// Cuts only `from → to`.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.proxy(to).set_fault(
            from,
            LinkFault {
                cut: true,
                delay_ms: 0,
            },
        );
        self.counts.one_way_cuts += 1;
    }

    pub fn delay_link(&mut self, from: u64, to: u64, delay_ms: u64) {
        self.proxy(to).set_fault(
            from,
            LinkFault {
                cut: false,
                delay_ms,
            },
        );
        self.counts.delays += 1;
    }

    pub fn reset_link(&mut self, from: u64, to: u64) {
        self.proxy(to).reset_link(from);
        self.counts.link_resets += 1;
    }

    /// Removes every network fault, resumes paused nodes, restarts killed
    /// ones.
    pub fn heal(&mut self) {
        for proxy in &self.proxies {
            proxy.heal();
        }
        for id in self.ids() {
            self.resume(id);
            if !self.is_running(id) {
                self.start_node(id);
            }
        }
    }

    /// Asks every running node for its `fsm.checksum` and reads them back
    /// (the old file is removed first; the node renames a whole new one in).
    pub fn checksums(&self) -> BTreeMap<u64, Option<FsmChecksum>> {
        self.checksums_of(&self.ids().collect::<Vec<_>>())
    }

    /// `checksums` of the nodes `ids` only (a node not asked costs no wait).
    pub fn checksums_of(&self, ids: &[u64]) -> BTreeMap<u64, Option<FsmChecksum>> {
        for &id in ids {
            let _ = std::fs::remove_file(self.data_dir(id).join("fsm.checksum"));
            self.signal(id, libc::SIGUSR1);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut result = BTreeMap::new();
        for &id in ids {
            let path = self.data_dir(id).join("fsm.checksum");
            let mut value = None;
            while Instant::now() < deadline {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    value = parse_checksum(&text);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            result.insert(id, value);
        }
        result
    }

    /// Waits until every node reports the same applied index and digest.
    pub fn wait_converged(&self, timeout: Duration) -> Result<FsmChecksum, String> {
        self.wait_converged_among(&self.ids().collect::<Vec<_>>(), timeout)
    }

    /// `wait_converged` over the nodes `ids` only (the others may be down).
    pub fn wait_converged_among(
        &self,
        ids: &[u64],
        timeout: Duration,
    ) -> Result<FsmChecksum, String> {
        let deadline = Instant::now() + timeout;
        let mut last = BTreeMap::new();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            last = self.checksums_of(ids);
            let values: Vec<&Option<FsmChecksum>> = last.values().collect();
            if let Some(Some(first)) = values.first() {
                if values.iter().all(|v| v.as_ref() == Some(first)) && first.applied_index > 0 {
                    return Ok(first.clone());
                }
            }
        }
        Err(format!("nodes {ids:?} did not converge: {last:?}"))
    }
}

fn parse_checksum(text: &str) -> Option<FsmChecksum> {
    let mut fields = BTreeMap::new();
    for pair in text.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        fields.insert(key, value);
    }
    Some(FsmChecksum {
        applied_index: fields.get("applied_index")?.parse().ok()?,
        version_counter: fields.get("version_counter")?.parse().ok()?,
        files: fields.get("files")?.parse().ok()?,
        checksum: fields.get("checksum")?.to_string(),
    })
}
