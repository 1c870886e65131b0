//! `watch NAME VERSION` (SPEC §2): the table of watches waiting on this
//! node, woken by apply.
//!
//! Life of a watch:
//! 1. Accepted (`Replica::admit`): its connection gets a *block*. Every
//!    later command of that connection waits in the block, unrouted, until
//!    the watch is answered: SPEC §2 answers them after it, and SPEC §3 has
//!    them take effect after it, so a later write of the same connection is
//!    never what wakes it. A connection therefore has at most one watch
//!    outstanding, and the table is indexed by connection key.
//! 2. Checked: routed exactly like a `read` (`routing`: the same read
//!    position, connection floor and ReadIndex round, not a local peek).
//!    Where the read's answer is computed, a file whose version (0 = absent)
//!    differs from VERSION gives the watch that answer, released like a
//!    read's; a file still at VERSION *arms* the watch instead (`arm`).
//!    Arming answers nothing, so it needs no round.
//! 3. Armed: indexed by name, and by the file's deadline if it has one.
//!    Applying a change to that file (a write, cas or delete that took
//!    effect, or its expiry when a stamp moves cluster time past the
//!    deadline: `clock`) wakes the watches on that name and no other;
//!    installing a snapshot wakes them all. A woken watch is checked again
//!    from step 2, in the same turn (`Replica::end_turn`).
//! 4. Answered: the first answer that leaves for it (a read's answer,
//!    `ERR_REDIRECT`, `ERR_INTERNAL`) ends the block, and the commands held
//!    behind it are admitted again in order (a watch among them opens the
//!    next block).
//!
//! Linearizability: whatever a watch answers is the answer of a read routed
//! after the watch arrived and released on that read's own evidence, whose
//! version differs from VERSION; so the state shown is at or after a point
//! inside the watch's interval, and no change older than the watch is
//! reported as new. Arming may happen at a position no round confirmed (a
//! deposed leader): that decides only when the watch looks again, never
//! what it answers. A watch is level-triggered: it reports a state, not
//! every event. Versions never repeat, so once a file leaves VERSION it
//! never comes back and a watch with VERSION ≠ 0 cannot miss the change;
//! `watch NAME 0` (wait for the file to exist) re-arms if the file was
//! created and deleted again before the re-check looked.
//!
//! Roles: armed watches wait on this node's applied state whatever its role
//! (a follower applies the same log, so a change wakes them the same way).
//! A check is routed like a read on whatever the node then is: leader →
//! answered or armed at a read position; follower with
//! `follower_requests = "forward"` → a follower ReadIndex read (`forward`):
//! answered or armed at this node's applied state once it reached the
//! leader's read index, so a watch on a follower is as good as one on the
//! leader, and is woken by the follower's own apply; follower with
//! `"redirect"`, or stopping → `ERR_REDIRECT` naming the leader, as a read
//! gets (the client registers there again); no leader known → held like any
//! command, then `ERR_INTERNAL`. A node that has known no leader for
//! `hold_while_leaderless_ms` (partitioned: it may be missing changes it
//! cannot apply) checks every armed watch again, which then ends in an
//! answer or `ERR_INTERNAL` (etcd's "require leader" watches). So a leader
//! change never loses a watch silently.
//!
//! A woken watch on a follower asks the leader for a read index again
//! rather than answering from its applied state at once. Answering at once
//! would also be linearizable (the state is committed, and newer than the
//! check that armed it), but one rule for every answer keeps the argument
//! above whole; the cost is one round trip per turn that woke watches,
//! shared by all of them (a turn's follower reads share one request).
//!
//! Costs: nothing per tick and nothing per apply while no watch waits. A
//! change looks up one name; expiry pops the deadline index; only a snapshot
//! install and a leaderless spell touch every armed watch. A waiting watch
//! owns a copy of its name (a view would pin its connection's read buffer).
//! At most `WATCHES_MAX` watches wait at once; past it a watch is answered
//! `ERR_INTERNAL` at once.
//!
//! Invariants (`check_invariants`): a connection key has at most one watch;
//! a watch is in the name index iff it is armed; the deadline index holds
//! exactly the armed names whose file expires, at that deadline; the counts
//! match the table.
//!
//! Leaves out: routing and release of the reads themselves (`routing`,
//! `apply`) and the wire format (`protocol`).

use super::routing::Pending;
use super::{ClientRef, Now, Replica};
use crate::fsm::CommandRef;
use crate::limits;
use crate::protocol::Request;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// One connection's outstanding watch and the commands held behind it.
struct Watch {
    conn_id: u64,
    /// The watch's sequence number on its connection.
    seq: u64,
    /// An owned copy of the name.
    name: Bytes,
    version: u64,
    armed: bool,
    /// Later commands of the connection, in the order they came.
    held: VecDeque<Pending>,
}

impl Watch {
    fn client(&self, key: usize) -> ClientRef {
        ClientRef {
            key,
            conn_id: self.conn_id,
            seq: self.seq,
        }
    }

    fn is(&self, client: ClientRef) -> bool {
        self.conn_id == client.conn_id && self.seq == client.seq
    }
}

/// The armed watches on one name.
struct ArmedName {
    /// Connection keys, in order (so waking is deterministic).
    keys: BTreeSet<usize>,
    /// The file's deadline (cluster time), if it expires.
    deadline_ms: Option<u64>,
}

#[derive(Default)]
pub(super) struct Watches {
    /// Indexed by connection key.
    by_connection: Vec<Option<Watch>>,
    by_name: HashMap<Bytes, ArmedName>,
    /// (deadline, name) of every armed name whose file expires.
    deadlines: BTreeSet<(u64, Bytes)>,
    /// Watches outstanding (armed or being checked).
    count: usize,
    armed: usize,
    /// A graceful stop began (`Replica::drain`).
    pub stopping: bool,
    /// Since when (monotonic µs) no leader has been known, while armed
    /// watches wait.
    pub leaderless_since_us: Option<u64>,
    /// Watches woken since start (a figure for tests and the simulator).
    pub woken_total: u64,
}

/// The file a command changes.
pub(super) fn command_name<'a>(command: &CommandRef<'a>) -> &'a [u8] {
    match *command {
        CommandRef::Write { name, .. }
        | CommandRef::Cas { name, .. }
        | CommandRef::Delete { name } => name,
    }
}

impl Watches {
    /// Watches outstanding on this node (armed or being checked).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn armed(&self) -> usize {
        self.armed
    }

    /// If `pending`'s connection has a watch outstanding, keep it behind
    /// the watch (`None`); else hand it back.
    pub fn hold_if_blocked(&mut self, pending: Pending) -> Option<Pending> {
        let key = pending.client.key;
        match self.by_connection.get_mut(key).and_then(Option::as_mut) {
            Some(watch) if watch.conn_id == pending.client.conn_id => {
                watch.held.push_back(pending);
                None
            }
            Some(_) => {
                // A block left by a connection whose close was not reported.
                self.remove(key);
                Some(pending)
            }
            None => Some(pending),
        }
    }

    /// Opens the block of a watch that just arrived; false if
    /// `WATCHES_MAX` watches already wait.
    pub fn open(&mut self, client: ClientRef, name: &[u8], version: u64) -> bool {
        if self.count >= limits::WATCHES_MAX {
            return false;
        }
        if self.by_connection.len() <= client.key {
            self.by_connection.resize_with(client.key + 1, || None);
        }
        self.remove(client.key);
        self.by_connection[client.key] = Some(Watch {
            conn_id: client.conn_id,
            seq: client.seq,
            name: Bytes::copy_from_slice(name),
            version,
            armed: false,
            held: VecDeque::new(),
        });
        self.count += 1;
        true
    }

    /// The watch `client`'s file still has its VERSION at the position it
    /// was checked: wait for a change. `deadline_ms` is the file's deadline
    /// there. False if no such watch waits (its connection closed).
    pub fn arm(&mut self, client: ClientRef, deadline_ms: Option<u64>) -> bool {
        let Some(watch) = self
            .by_connection
            .get_mut(client.key)
            .and_then(Option::as_mut)
            .filter(|watch| watch.is(client) && !watch.armed)
        else {
            return false;
        };
        watch.armed = true;
        self.armed += 1;
        let name = watch.name.clone();
        match self.by_name.get_mut(&name[..]) {
            Some(armed) => {
                // Every watch armed on a name saw the file as it is now (any
                // change since would have woken it), so the deadlines agree;
                // if they ever did not, the earlier one only wakes early.
                debug_assert_eq!(armed.deadline_ms, deadline_ms);
                if let Some(earlier) =
                    deadline_ms.filter(|&d| armed.deadline_ms.is_none_or(|a| d < a))
                {
                    if let Some(old) = armed.deadline_ms {
                        self.deadlines.remove(&(old, name.clone()));
                    }
                    armed.deadline_ms = Some(earlier);
                    self.deadlines.insert((earlier, name.clone()));
                }
                armed.keys.insert(client.key);
            }
            None => {
                if let Some(deadline_ms) = deadline_ms {
                    self.deadlines.insert((deadline_ms, name.clone()));
                }
                self.by_name.insert(
                    name,
                    ArmedName {
                        keys: BTreeSet::from([client.key]),
                        deadline_ms,
                    },
                );
            }
        }
        true
    }

    /// A change to `name` was applied: its armed watches go to `out`, to be
    /// checked again (arrived at `now_us`).
    pub fn wake_name(&mut self, name: &[u8], now_us: u64, out: &mut Vec<Pending>) {
        if self.by_name.is_empty() {
            return;
        }
        let Some((name, armed)) = self.by_name.remove_entry(name) else {
            return;
        };
        if let Some(deadline_ms) = armed.deadline_ms {
            self.deadlines.remove(&(deadline_ms, name));
        }
        for key in armed.keys {
            self.disarm(key, now_us, out);
        }
    }

    /// Cluster time reached `cluster_time_ms`: wake the names whose file
    /// expired.
    pub fn wake_expired(&mut self, cluster_time_ms: u64, now_us: u64, out: &mut Vec<Pending>) {
        while let Some((deadline_ms, name)) = self.deadlines.first().cloned() {
            if deadline_ms > cluster_time_ms {
                break;
            }
            self.wake_name(&name, now_us, out);
        }
    }

    /// Wake every armed watch (a snapshot replaced the map; a leaderless
    /// spell), in connection-key order.
    pub fn wake_all(&mut self, now_us: u64, out: &mut Vec<Pending>) {
        if self.armed == 0 {
            return;
        }
        self.by_name.clear();
        self.deadlines.clear();
        for key in 0..self.by_connection.len() {
            self.disarm(key, now_us, out);
        }
    }

    /// Disarm every armed watch and return them (a stopping node answers
    /// them itself).
    pub fn take_armed(&mut self) -> Vec<ClientRef> {
        let mut woken = Vec::new();
        self.wake_all(0, &mut woken);
        woken.into_iter().map(|pending| pending.client).collect()
    }

    fn disarm(&mut self, key: usize, now_us: u64, out: &mut Vec<Pending>) {
        let Some(watch) = self
            .by_connection
            .get_mut(key)
            .and_then(Option::as_mut)
            .filter(|watch| watch.armed)
        else {
            return;
        };
        watch.armed = false;
        self.armed -= 1;
        self.woken_total += 1;
        out.push(Pending {
            client: watch.client(key),
            request: Request::Watch {
                name: watch.name.clone(),
                version: watch.version,
            },
            arrived_us: now_us,
        });
    }

    /// An answer left for `client`: if it is an outstanding watch, its block
    /// ends and the commands held behind it come back, in order.
    pub fn answered(&mut self, client: ClientRef) -> Option<VecDeque<Pending>> {
        let watch = self.by_connection.get(client.key)?.as_ref()?;
        if !watch.is(client) || watch.armed {
            return None;
        }
        let watch = self.by_connection[client.key].take()?;
        self.count -= 1;
        Some(watch.held)
    }

    /// The connection with this key closed: forget its watch and the
    /// commands held behind it.
    pub fn connection_closed(&mut self, key: usize) {
        self.remove(key);
    }

    fn remove(&mut self, key: usize) {
        let Some(watch) = self.by_connection.get_mut(key).and_then(Option::take) else {
            return;
        };
        self.count -= 1;
        if !watch.armed {
            return;
        }
        self.armed -= 1;
        if let Some(armed) = self.by_name.get_mut(&watch.name[..]) {
            armed.keys.remove(&key);
            if armed.keys.is_empty() {
                if let Some(deadline_ms) = armed.deadline_ms {
                    self.deadlines.remove(&(deadline_ms, watch.name.clone()));
                }
                self.by_name.remove(&watch.name[..]);
            }
        }
    }

    /// Panics if the table and its indexes disagree (tests, debug checks).
    pub fn check_invariants(&self) {
        let watches: Vec<(usize, &Watch)> = self
            .by_connection
            .iter()
            .enumerate()
            .filter_map(|(key, watch)| Some((key, watch.as_ref()?)))
            .collect();
        assert_eq!(watches.len(), self.count, "watch count");
        let armed: Vec<&(usize, &Watch)> = watches.iter().filter(|(_, w)| w.armed).collect();
        assert_eq!(armed.len(), self.armed, "armed count");
        let indexed: usize = self.by_name.values().map(|a| a.keys.len()).sum();
        assert_eq!(indexed, self.armed, "name index size");
        for (key, watch) in armed {
            let entry = self
                .by_name
                .get(&watch.name[..])
                .expect("armed name indexed");
            assert!(
                entry.keys.contains(key),
                "armed watch indexed under its name"
            );
        }
        let expiring: BTreeSet<(u64, Bytes)> = self
            .by_name
            .iter()
            .filter_map(|(name, armed)| Some((armed.deadline_ms?, name.clone())))
            .collect();
        assert_eq!(expiring, self.deadlines, "deadline index");
    }
}

impl Replica {
    /// Ends the blocks of the watches answered since `replies[from]` and
    /// admits the commands they held; before that, hands armed watches over
    /// (stop) or checks them again (leaderless spell). Returns how many
    /// replies are settled. Costs nothing while no watch is outstanding.
    pub(super) fn settle_watches(&mut self, from: usize, now: Now) -> usize {
        if self.watches.is_empty() {
            return self.replies.len();
        }
        self.maybe_recheck_armed(now);
        let mut index = from;
        while index < self.replies.len() {
            let client = self.replies[index].0;
            if let Some(held) = self.watches.answered(client) {
                for pending in held {
                    self.admit(pending);
                }
            }
            index += 1;
        }
        index
    }

    /// A stopping node redirects its armed watches to the new leader once
    /// one is known; a node without a leader for `hold_while_leaderless_ms`
    /// checks them again (see the module doc).
    fn maybe_recheck_armed(&mut self, now: Now) {
        if self.watches.armed() == 0 {
            self.watches.leaderless_since_us = None;
            return;
        }
        let leader = self.raft.leader_id();
        if self.watches.stopping {
            if let Some(leader) = leader.filter(|&leader| leader != self.raft.id()) {
                for client in self.watches.take_armed() {
                    self.answer_redirect(client, Some(leader));
                }
                return;
            }
        }
        if leader.is_some() {
            self.watches.leaderless_since_us = None;
            return;
        }
        let since_us = *self
            .watches
            .leaderless_since_us
            .get_or_insert(now.monotonic_us);
        let hold_us = self.config.hold_while_leaderless_ms.saturating_mul(1_000);
        if now.monotonic_us.saturating_sub(since_us) >= hold_us {
            self.watches.leaderless_since_us = Some(now.monotonic_us);
            self.watches.wake_all(now.monotonic_us, &mut self.incoming);
        }
    }

    /// The state at this point of the log answers the read or watch
    /// `client` on `name`: its encoded answer, or `None` for a watch whose
    /// file still has VERSION (`watch`: armed, nothing to answer yet).
    pub(super) fn answer_at(
        &mut self,
        client: ClientRef,
        name: &[u8],
        watched_version: Option<u64>,
        live_ms: u64,
        display_ms: u64,
    ) -> Option<Bytes> {
        if let Some(watched) = watched_version {
            let file = self.fsm.read(name, live_ms);
            let version = file.map_or(0, |file| file.version);
            if version == watched {
                let deadline_ms = file.and_then(|file| file.deadline_ms);
                self.watches.arm(client, deadline_ms);
                return None;
            }
        }
        Some(self.render_read(name, live_ms, display_ms))
    }

    /// A change to `name` was applied.
    pub(super) fn wake_watches(&mut self, name: &[u8]) {
        let now_us = self.now.monotonic_us;
        self.watches.wake_name(name, now_us, &mut self.incoming);
    }

    /// Cluster time advanced to `cluster_time_ms` (a batch began): files
    /// past their deadline are gone.
    pub(super) fn wake_expired_watches(&mut self, cluster_time_ms: u64) {
        let now_us = self.now.monotonic_us;
        self.watches
            .wake_expired(cluster_time_ms, now_us, &mut self.incoming);
    }

    /// The file map was replaced (a snapshot was installed).
    pub(super) fn wake_all_watches(&mut self) {
        let now_us = self.now.monotonic_us;
        self.watches.wake_all(now_us, &mut self.incoming);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(key: usize, seq: u64) -> ClientRef {
        ClientRef {
            key,
            conn_id: 100 + key as u64,
            seq,
        }
    }

    fn read(client: ClientRef) -> Pending {
        Pending {
            client,
            request: Request::Read {
                name: Bytes::from_static(b"x"),
            },
            arrived_us: 0,
        }
    }

    #[test]
    fn a_change_wakes_only_the_watches_on_its_name() {
        let mut watches = Watches::default();
        for key in 0..4 {
            let name: &[u8] = if key < 3 { b"lock" } else { b"other" };
            assert!(watches.open(client(key, 0), name, 7));
            assert!(watches.arm(client(key, 0), None));
        }
        watches.check_invariants();
        let mut woken = Vec::new();
        watches.wake_name(b"lock", 5, &mut woken);
        let keys: Vec<usize> = woken.iter().map(|p| p.client.key).collect();
        assert_eq!(keys, vec![0, 1, 2]);
        assert!(woken.iter().all(|p| p.arrived_us == 5
            && p.request
                == Request::Watch {
                    name: Bytes::from_static(b"lock"),
                    version: 7
                }));
        assert_eq!((watches.len(), watches.armed()), (4, 1));
        watches.check_invariants();
    }

    #[test]
    fn later_commands_wait_behind_the_watch_until_it_is_answered() {
        let mut watches = Watches::default();
        assert!(watches.open(client(2, 5), b"f", 0));
        assert!(watches.hold_if_blocked(read(client(2, 6))).is_none());
        assert!(watches.hold_if_blocked(read(client(2, 7))).is_none());
        // Another connection passes.
        assert!(watches.hold_if_blocked(read(client(3, 0))).is_some());
        assert!(watches.arm(client(2, 5), None));
        // An armed watch is not answered by anything.
        assert!(watches.answered(client(2, 5)).is_none());
        let mut woken = Vec::new();
        watches.wake_all(1, &mut woken);
        assert_eq!(woken.len(), 1);
        // Another sequence number of the same connection is not the watch.
        assert!(watches.answered(client(2, 6)).is_none());
        let held = watches.answered(client(2, 5)).expect("the watch's block");
        let seqs: Vec<u64> = held.iter().map(|p| p.client.seq).collect();
        assert_eq!(seqs, vec![6, 7]);
        assert!(watches.is_empty());
        watches.check_invariants();
    }

    #[test]
    fn expiry_wakes_in_deadline_order_and_close_unregisters() {
        let mut watches = Watches::default();
        assert!(watches.open(client(0, 0), b"a", 1));
        assert!(watches.arm(client(0, 0), Some(2_000)));
        assert!(watches.open(client(1, 0), b"b", 2));
        assert!(watches.arm(client(1, 0), Some(1_000)));
        assert!(watches.open(client(2, 0), b"c", 3));
        assert!(watches.arm(client(2, 0), Some(3_000)));
        watches.connection_closed(2);
        watches.check_invariants();
        let mut woken = Vec::new();
        watches.wake_expired(999, 0, &mut woken);
        assert!(woken.is_empty());
        watches.wake_expired(2_000, 0, &mut woken);
        let keys: Vec<usize> = woken.iter().map(|p| p.client.key).collect();
        assert_eq!(keys, vec![1, 0]);
        assert_eq!(watches.armed(), 0);
        watches.check_invariants();
    }

    #[test]
    fn a_closed_connection_cannot_arm_and_a_reused_key_starts_clean() {
        let mut watches = Watches::default();
        assert!(watches.open(client(0, 3), b"a", 1));
        watches.connection_closed(0);
        assert!(!watches.arm(client(0, 3), None));
        assert!(watches.open(client(0, 3), b"a", 1));
        // The key is reused by another connection without a close report.
        let stranger = ClientRef {
            key: 0,
            conn_id: 999,
            seq: 0,
        };
        assert!(watches.hold_if_blocked(read(stranger)).is_some());
        assert!(watches.is_empty());
        watches.check_invariants();
    }

    #[test]
    fn the_bound_is_enforced() {
        let mut watches = Watches::default();
        for key in 0..limits::WATCHES_MAX {
            assert!(watches.open(client(key, 0), b"n", 1));
        }
        assert!(!watches.open(client(limits::WATCHES_MAX, 0), b"n", 1));
        assert_eq!(watches.len(), limits::WATCHES_MAX);
    }
}
