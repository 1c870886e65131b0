//! Cluster membership: voters, learners, the change rule, and the
//! configurations a node's log holds (Raft thesis chapter 4).
//!
//! A *configuration* lists every member with its role (voter or learner) and
//! addresses (opaque to the core: the peer layer dials them, redirects name
//! them), plus the (id, incarnation) of members removed lately, so a removed
//! data dir is refused for good (SPEC §3). Configurations travel as log
//! entries: an entry whose data starts with `CONFIGURATION_ENTRY_TAG` holds
//! a whole configuration (not a delta), so any one entry says everything and
//! a snapshot carries the one in force at its index.
//!
//! Which configuration is in force: the last one in the node's log, whether
//! committed or not (thesis §4.1: a server uses a new configuration as soon
//! as the entry is in its log, before it commits). If the log's suffix that
//! held it is replaced, the previous one is in force again
//! (`Configurations::truncate_from`). Before the log holds any configuration
//! (a new cluster, or a data dir written before membership change existed),
//! the bootstrap one from cluster.toml is in force; the first leader of such
//! a log appends it as its term's first entry (in place of the no-op), and
//! from then on cluster.toml's member list no longer matters to that data
//! dir.
//!
//! # The change rule: one member at a time
//!
//! We change one member per configuration entry (thesis §4.2) rather than
//! use joint consensus (§4.3): adding a learner, promoting a learner to
//! voter, or removing one member. Learners never count in a quorum, so only
//! promotion and removal change the voter set, and each by exactly one
//! voter. Why that is safe: for voter sets `C` and `C'` differing by one
//! voter, any majority of `C` and any majority of `C'` share a voter (with
//! `|C| = n` and `|C'| = n + 1`, majorities have `n/2 + 1` and
//! `(n+1)/2 + 1` members, together more than `n + 1`). So a leader elected
//! or an entry committed under either configuration is witnessed by a voter
//! of the other, exactly as within one configuration, and Election Safety
//! and Leader Completeness carry across the change. This needs at most one
//! change in flight: a leader proposes a change only once the previous one
//! is committed (`ChangeError::ChangePending`).
//!
//! Ongaro's bug (raft-dev, 2015): a new leader may still hold an
//! uncommitted change from an earlier term that a rival leader of that term
//! overwrote with another change; proposing a second change on top could
//! then let two configurations two changes apart decide. The fix: a leader
//! proposes a change only after an entry of its own term is committed (its
//! no-op, or the bootstrap configuration entry), which settles the earlier
//! terms' log (`ChangeError::TermNotCommitted`).
//!
//! Learners receive the log and snapshots like followers but vote in no
//! election, count for no commit, CheckQuorum or ReadIndex round, and never
//! campaign. A learner is promoted only when caught up
//! (`limits::PROMOTION_LAG_ENTRIES_MAX`): a voter that joins far behind
//! would otherwise stall commits while it catches up.
//!
//! A new node must not decide a cluster of its own: a node whose log is
//! empty cannot tell a brand-new cluster from one it is about to join (its
//! cluster.toml lists it either way). So a candidate with an empty log wins
//! only with the votes of every voter of its configuration (`unanimous`):
//! the members of a running cluster hold a log and refuse it, while a new
//! cluster, all of whose logs are empty, elects its first leader once every
//! member has started.
//!
//! # Voters are data dirs, not ids
//!
//! An id can come back with a new data dir once removed (a replaced host).
//! Its new data dir starts empty and receives the log from the start, so
//! for a while it holds configurations, written before its predecessor was
//! removed, that list its id as a voter. Were a vote or acknowledgement
//! counted by id alone, such a node (and other new data dirs) could elect a
//! leader of that old configuration without any of the voters that hold
//! the later log: the simulator found exactly that (seed 72). So a voter is
//! bound to its data dir: the first leader writes the bootstrap
//! configuration with every voter's incarnation (it heard from each in its
//! unanimous election), and a promotion records the learner's incarnation
//! (the leader just heard from it: it is caught up). A node counts as a
//! voter, for itself (`counts_as_voter`) and in every vote and
//! acknowledgement tally of others (`Node::step` drops responses from a
//! data dir other than the one a configuration binds), only as that data
//! dir. Unbound voters (incarnation 0: cluster.toml's configuration before
//! a leader wrote it, or a log from before this rule) count by id.
//!
//! Invariants: a configuration has at least one voter, at most
//! `MEMBERS_MAX` members, no member id 0, addresses of at most
//! `MEMBER_ADDRESS_BYTES_MAX` bytes; `decode(encode(c)) == c`; decoding
//! never panics and never allocates more than its input justifies.
//!
//! Leaves out: joint consensus, demoting a voter to learner (remove it and
//! add it back), and changing a member's addresses in place (remove and add
//! it again).

use super::message::{Entry, Index, NodeId};
use super::quorum::{self, VoteResult};
use crate::limits::{MEMBERS_MAX, MEMBER_ADDRESS_BYTES_MAX, REMOVED_MEMBERS_REMEMBERED_MAX};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fmt;

/// First byte of a configuration entry's data (a state machine batch starts
/// with its own format byte, 1; an empty entry is the no-op).
pub const CONFIGURATION_ENTRY_TAG: u8 = 0xC1;
/// The encoding's version, the second byte.
const CODEC_VERSION: u8 = 2;

const ROLE_VOTER: u8 = 1;
const ROLE_LEARNER: u8 = 2;

/// Whether entry data is a configuration (not for the state machine).
pub fn is_configuration_entry(data: &[u8]) -> bool {
    data.first() == Some(&CONFIGURATION_ENTRY_TAG)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberRole {
    Voter,
    Learner,
}

impl MemberRole {
    pub fn name(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// Where a member listens (`metrics` empty = none). The core only carries
/// these; the node dials `peer` and names `client` in redirects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemberAddresses {
    pub peer: String,
    pub client: String,
    pub metrics: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub role: MemberRole,
    pub addresses: MemberAddresses,
    /// The data-dir incarnation this member votes as (0: not bound, as for
    /// a learner, or a voter of a log written before voters were bound).
    /// See "Voters are data dirs" in the module doc.
    pub incarnation: u64,
}

/// One configuration: the members and the removed (id, incarnation)s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    members: BTreeMap<NodeId, Member>,
    /// Removed members' data-dir incarnations, oldest first.
    removed: Vec<(NodeId, u64)>,
}

/// One membership change (the only kinds the change rule allows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    AddLearner {
        id: NodeId,
        addresses: MemberAddresses,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
}

impl Change {
    /// The member the change is about.
    pub fn id(&self) -> NodeId {
        match self {
            Change::AddLearner { id, .. } | Change::Promote { id } | Change::Remove { id } => *id,
        }
    }
}

/// Why a change was not proposed: one line for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeError {
    /// Not the leader (or handing leadership over): ask the one named.
    NotLeader { leader: Option<NodeId> },
    /// This leader has not committed an entry of its own term yet.
    TermNotCommitted,
    /// The previous change (at this index) is not committed yet.
    ChangePending { index: Index },
    /// The change removes the leader itself: hand leadership over first.
    RemovesLeader { id: NodeId },
    /// The learner is not caught up (see `limits::PROMOTION_LAG_ENTRIES_MAX`).
    NotCaughtUp {
        id: NodeId,
        match_index: Index,
        commit_index: Index,
        heard_ticks_ago: Option<u64>,
    },
    /// The change breaks the rule or names a bad member (the reason).
    Invalid(String),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::NotLeader {
                leader: Some(leader),
            } => {
                write!(f, "not the leader (node {leader} leads)")
            }
            ChangeError::NotLeader { leader: None } => {
                write!(
                    f,
                    "not the leader (no leader known, or leadership is being handed over)"
                )
            }
            ChangeError::TermNotCommitted => write!(
                f,
                "the leader has not committed an entry of its term yet (it was just elected); retry"
            ),
            ChangeError::ChangePending { index } => write!(
                f,
                "the previous membership change (log index {index}) is not committed yet; retry \
                 once it is"
            ),
            ChangeError::RemovesLeader { id } => write!(
                f,
                "node {id} is the leader: it hands leadership to another voter before it can be \
                 removed"
            ),
            ChangeError::NotCaughtUp {
                id,
                match_index,
                commit_index,
                heard_ticks_ago,
            } => {
                let heard = match heard_ticks_ago {
                    Some(ticks) => format!("last heard {} ms ago", ticks * crate::limits::TICK_MS),
                    None => "not heard from in this term".to_string(),
                };
                write!(
                    f,
                    "learner {id} is not caught up: its log matches the leader's through index \
                     {match_index}, the commit index is {commit_index} (at most {} behind, and \
                     heard from within an election timeout, are needed; {heard}); wait and retry",
                    crate::limits::PROMOTION_LAG_ENTRIES_MAX
                )
            }
            ChangeError::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for ChangeError {}

impl Configuration {
    /// Every node in `voters` a voter, with the addresses known for it.
    pub fn bootstrap(
        voters: &[NodeId],
        addresses: &BTreeMap<NodeId, MemberAddresses>,
    ) -> Configuration {
        Configuration {
            members: voters
                .iter()
                .map(|&id| {
                    (
                        id,
                        Member {
                            role: MemberRole::Voter,
                            addresses: addresses.get(&id).cloned().unwrap_or_default(),
                            incarnation: 0,
                        },
                    )
                })
                .collect(),
            removed: Vec::new(),
        }
    }

    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members
            .get(&id)
            .is_some_and(|member| member.role == MemberRole::Voter)
    }

    /// Whether data dir `incarnation` of node `id` is a voter here: the
    /// id is a voter bound to that data dir, or to none.
    pub fn counts_as_voter(&self, id: NodeId, incarnation: u64) -> bool {
        self.members.get(&id).is_some_and(|member| {
            member.role == MemberRole::Voter
                && (member.incarnation == 0 || member.incarnation == incarnation)
        })
    }

    /// The data dir voter `id` is bound to, if it is a voter bound to one.
    pub fn bound_incarnation(&self, id: NodeId) -> Option<u64> {
        self.members
            .get(&id)
            .filter(|member| member.role == MemberRole::Voter && member.incarnation != 0)
            .map(|member| member.incarnation)
    }

    /// This configuration with each voter bound to its data dir as
    /// `incarnations` knows it (the first leader writes the bootstrap
    /// configuration so; voters it does not know stay unbound).
    pub fn binding_voters(&self, incarnations: impl Fn(NodeId) -> Option<u64>) -> Configuration {
        let mut bound = self.clone();
        for (id, member) in &mut bound.members {
            if member.role == MemberRole::Voter && member.incarnation == 0 {
                member.incarnation = incarnations(*id).unwrap_or(0);
            }
        }
        bound
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.members
            .get(&id)
            .is_some_and(|member| member.role == MemberRole::Learner)
    }

    /// Voter ids, ascending.
    pub fn voters(&self) -> Vec<NodeId> {
        self.ids_with(MemberRole::Voter)
    }

    /// Learner ids, ascending.
    pub fn learners(&self) -> Vec<NodeId> {
        self.ids_with(MemberRole::Learner)
    }

    fn ids_with(&self, role: MemberRole) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, member)| member.role == role)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn voter_count(&self) -> usize {
        self.members
            .values()
            .filter(|member| member.role == MemberRole::Voter)
            .count()
    }

    /// The removed members' (id, incarnation)s, oldest first.
    pub fn removed(&self) -> &[(NodeId, u64)] {
        &self.removed
    }

    /// Whether the data dir `incarnation` of node `id` was removed.
    pub fn was_removed(&self, id: NodeId, incarnation: u64) -> bool {
        self.removed.contains(&(id, incarnation))
    }

    /// The highest index a majority of voters holds, given each voter's
    /// match index.
    pub fn committed_index(&self, match_index: impl Fn(NodeId) -> Index) -> Index {
        let mut indexes: Vec<Index> = self
            .members
            .iter()
            .filter(|(_, member)| member.role == MemberRole::Voter)
            .map(|(id, _)| match_index(*id))
            .collect();
        quorum::committed_index(&mut indexes)
    }

    /// Whether the voters for which `acknowledged` holds are a majority.
    pub fn has_majority(&self, acknowledged: impl Fn(NodeId) -> bool) -> bool {
        let count = self
            .members
            .iter()
            .filter(|(id, member)| member.role == MemberRole::Voter && acknowledged(**id))
            .count();
        count >= quorum::majority(self.voter_count())
    }

    /// The outcome of a (pre)vote: only voters' answers count; `unanimous`
    /// asks for every voter's grant (see the module doc).
    pub fn tally(&self, votes: &BTreeMap<NodeId, bool>, unanimous: bool) -> VoteResult {
        let voter_votes: BTreeMap<NodeId, bool> = votes
            .iter()
            .filter(|(id, _)| self.is_voter(**id))
            .map(|(id, granted)| (*id, *granted))
            .collect();
        let voters = self.voter_count();
        if !unanimous {
            return quorum::tally(voters, &voter_votes);
        }
        if voter_votes.values().any(|granted| !granted) {
            VoteResult::Lost
        } else if voter_votes.len() == voters {
            VoteResult::Won
        } else {
            VoteResult::Pending
        }
    }

    /// Whether `change` already holds in this configuration (a retried
    /// command asks for a change that was made).
    pub fn reflects(&self, change: &Change) -> bool {
        match change {
            Change::AddLearner { id, addresses } => self
                .members
                .get(id)
                .is_some_and(|member| member.addresses == *addresses),
            Change::Promote { id } => self.is_voter(*id),
            Change::Remove { id } => !self.contains(*id),
        }
    }

    /// The configuration after `change`, or why the change rule refuses it.
    /// `incarnation` is the data dir of the member the change is about, if
    /// known: a removed one is remembered so that data dir stays refused, a
    /// promoted one is the data dir the new voter is bound to.
    pub fn apply_change(
        &self,
        change: &Change,
        incarnation: Option<u64>,
    ) -> Result<Configuration, ChangeError> {
        let invalid = |reason: String| Err(ChangeError::Invalid(reason));
        let mut next = self.clone();
        match change {
            Change::AddLearner { id, addresses } => {
                if *id == 0 {
                    return invalid("node id 0 is not valid (ids are positive)".into());
                }
                if let Some(member) = self.members.get(id) {
                    return invalid(format!(
                        "node {id} is already a {} (remove it first to change its addresses)",
                        member.role.name()
                    ));
                }
                if self.members.len() >= MEMBERS_MAX {
                    return invalid(format!(
                        "the cluster already has {} members, the most it may have",
                        MEMBERS_MAX
                    ));
                }
                check_addresses(addresses)?;
                for (other, member) in &self.members {
                    for (what, address) in
                        [("peer", &addresses.peer), ("client", &addresses.client)]
                    {
                        let taken = [&member.addresses.peer, &member.addresses.client];
                        if taken.contains(&address) {
                            return invalid(format!(
                                "{what} address {address} is already node {other}'s"
                            ));
                        }
                    }
                }
                next.members.insert(
                    *id,
                    Member {
                        role: MemberRole::Learner,
                        addresses: addresses.clone(),
                        incarnation: 0,
                    },
                );
            }
            Change::Promote { id } => match next.members.get_mut(id) {
                Some(member) if member.role == MemberRole::Learner => {
                    member.role = MemberRole::Voter;
                    member.incarnation = incarnation.unwrap_or(0);
                }
                Some(_) => return invalid(format!("node {id} is already a voter")),
                None => {
                    return invalid(format!(
                        "node {id} is not a member (add it as a learner first)"
                    ))
                }
            },
            Change::Remove { id } => {
                let Some(member) = self.members.get(id) else {
                    return invalid(format!("node {id} is not a member"));
                };
                if member.role == MemberRole::Voter && self.voter_count() == 1 {
                    return invalid(format!("node {id} is the last voter"));
                }
                next.members.remove(id);
                if let Some(incarnation) = incarnation {
                    next.removed.push((*id, incarnation));
                    let excess = next
                        .removed
                        .len()
                        .saturating_sub(REMOVED_MEMBERS_REMEMBERED_MAX);
                    next.removed.drain(..excess);
                }
            }
        }
        Ok(next)
    }

    /// The data of the log entry holding this configuration.
    pub fn encode(&self) -> Bytes {
        let mut out =
            BytesMut::with_capacity(4 + self.members.len() * 72 + self.removed.len() * 16);
        out.put_u8(CONFIGURATION_ENTRY_TAG);
        out.put_u8(CODEC_VERSION);
        // Counts and lengths are bounded by `apply_change`/`check_addresses`
        // (and the const asserts in limits), so they fit a byte.
        out.put_u8(self.members.len() as u8);
        for (id, member) in &self.members {
            out.put_u64_le(*id);
            out.put_u8(match member.role {
                MemberRole::Voter => ROLE_VOTER,
                MemberRole::Learner => ROLE_LEARNER,
            });
            out.put_u64_le(member.incarnation);
            for text in [
                &member.addresses.peer,
                &member.addresses.client,
                &member.addresses.metrics,
            ] {
                out.put_u8(text.len() as u8);
                out.put_slice(text.as_bytes());
            }
        }
        out.put_u8(self.removed.len() as u8);
        for (id, incarnation) in &self.removed {
            out.put_u64_le(*id);
            out.put_u64_le(*incarnation);
        }
        out.freeze()
    }

    /// Decodes a configuration entry's data; a clear reason otherwise.
    pub fn decode(data: &[u8]) -> Result<Configuration, String> {
        let mut reader = Reader { rest: data };
        if reader.u8()? != CONFIGURATION_ENTRY_TAG {
            return Err("not a configuration entry".into());
        }
        let version = reader.u8()?;
        if version != CODEC_VERSION {
            return Err(format!(
                "configuration encoding version {version}; this build reads {CODEC_VERSION}"
            ));
        }
        let count = usize::from(reader.u8()?);
        if count == 0 || count > MEMBERS_MAX {
            return Err(format!("{count} members (1..={MEMBERS_MAX} expected)"));
        }
        let mut members = BTreeMap::new();
        for _ in 0..count {
            let id = reader.u64()?;
            let role = match reader.u8()? {
                ROLE_VOTER => MemberRole::Voter,
                ROLE_LEARNER => MemberRole::Learner,
                other => return Err(format!("member {id} has unknown role {other}")),
            };
            let incarnation = reader.u64()?;
            let addresses = MemberAddresses {
                peer: reader.text()?,
                client: reader.text()?,
                metrics: reader.text()?,
            };
            if id == 0
                || members
                    .insert(
                        id,
                        Member {
                            role,
                            addresses,
                            incarnation,
                        },
                    )
                    .is_some()
            {
                return Err(format!("member id {id} is 0 or repeated"));
            }
        }
        let removed_count = usize::from(reader.u8()?);
        if removed_count > REMOVED_MEMBERS_REMEMBERED_MAX {
            return Err(format!("{removed_count} removed members remembered"));
        }
        let mut removed = Vec::with_capacity(removed_count);
        for _ in 0..removed_count {
            removed.push((reader.u64()?, reader.u64()?));
        }
        if !reader.rest.is_empty() {
            return Err(format!("{} trailing bytes", reader.rest.len()));
        }
        let configuration = Configuration { members, removed };
        if configuration.voter_count() == 0 {
            return Err("no voter".into());
        }
        Ok(configuration)
    }
}

impl fmt::Display for Configuration {
    /// `voters [1, 2, 3] learners [4]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters {:?}", self.voters())?;
        let learners = self.learners();
        if !learners.is_empty() {
            write!(f, " learners {learners:?}")?;
        }
        Ok(())
    }
}

fn check_addresses(addresses: &MemberAddresses) -> Result<(), ChangeError> {
    for (what, text, required) in [
        ("peer", &addresses.peer, true),
        ("client", &addresses.client, true),
        ("metrics", &addresses.metrics, false),
    ] {
        if required && text.is_empty() {
            return Err(ChangeError::Invalid(format!(
                "the {what} address is missing"
            )));
        }
        if text.len() > MEMBER_ADDRESS_BYTES_MAX {
            return Err(ChangeError::Invalid(format!(
                "the {what} address is longer than {MEMBER_ADDRESS_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], String> {
        if self.rest.len() < count {
            return Err("configuration entry cut short".into());
        }
        let (head, tail) = self.rest.split_at(count);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn text(&mut self) -> Result<String, String> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "an address is not UTF-8".to_string())
    }
}

/// The configurations a node's log holds: the one its log starts with (the
/// snapshot's, or the bootstrap one) and those of the configuration entries
/// after it. The last is in force (thesis §4.1).
#[derive(Clone, Debug)]
pub struct Configurations {
    /// In force through `base_index` (the snapshot index, or 0).
    base: Configuration,
    base_index: Index,
    /// Whether `base` came from the log (a configuration entry or a
    /// snapshot holding one) rather than from cluster.toml.
    base_from_log: bool,
    /// Configuration entries after `base_index`, by index.
    entries: Vec<(Index, Configuration)>,
}

impl Configurations {
    /// Before any log: the bootstrap configuration.
    pub fn bootstrap(configuration: Configuration) -> Configurations {
        Configurations::starting(0, configuration, false)
    }

    /// A log that starts after `index` with `configuration` in force.
    pub fn starting(index: Index, configuration: Configuration, from_log: bool) -> Configurations {
        Configurations {
            base: configuration,
            base_index: index,
            base_from_log: from_log,
            entries: Vec::new(),
        }
    }

    /// The configuration in force: the last in the log.
    pub fn current(&self) -> &Configuration {
        self.entries
            .last()
            .map_or(&self.base, |(_, configuration)| configuration)
    }

    /// The index of the entry that made the current configuration (or the
    /// index the log starts after).
    pub fn current_index(&self) -> Index {
        self.entries
            .last()
            .map_or(self.base_index, |(index, _)| *index)
    }

    /// The configuration in force at `index`: the last one at or below it.
    pub fn at(&self, index: Index) -> (Index, &Configuration) {
        self.entries
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or((self.base_index, &self.base), |(at, configuration)| {
                (*at, configuration)
            })
    }

    /// Whether the log holds a configuration (else cluster.toml's is in force).
    pub fn from_log(&self) -> bool {
        self.base_from_log || !self.entries.is_empty()
    }

    /// Every configuration held, oldest first, with its entry's index.
    pub fn all(&self) -> impl DoubleEndedIterator<Item = (Index, &Configuration)> {
        std::iter::once((self.base_index, &self.base))
            .chain(self.entries.iter().map(|(index, c)| (*index, c)))
    }

    /// Entries were written to the log (after any truncation): note the
    /// configuration entries among them. Returns whether the configuration
    /// in force changed; an entry that does not decode is an error (the
    /// caller refuses what it cannot understand).
    pub fn observe(&mut self, entries: &[Entry]) -> Result<bool, String> {
        let mut changed = false;
        for entry in entries {
            if !is_configuration_entry(&entry.data) {
                continue;
            }
            let configuration = Configuration::decode(&entry.data)
                .map_err(|reason| format!("configuration entry {}: {reason}", entry.index))?;
            debug_assert!(entry.index > self.current_index());
            self.entries.push((entry.index, configuration));
            changed = true;
        }
        Ok(changed)
    }

    /// The log from `index` on was replaced: forget the configurations it
    /// held. Returns whether the configuration in force changed.
    pub fn truncate_from(&mut self, index: Index) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(at, _)| *at < index);
        self.entries.len() != before
    }

    /// The log through `index` was compacted into a snapshot.
    pub fn compact_to(&mut self, index: Index) {
        if index <= self.base_index {
            return;
        }
        let (_, configuration) = self.at(index);
        let configuration = configuration.clone();
        let from_log = self.base_from_log || self.entries.iter().any(|(at, _)| *at <= index);
        self.entries.retain(|(at, _)| *at > index);
        self.base = configuration;
        self.base_index = index;
        self.base_from_log = from_log;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(id: NodeId) -> MemberAddresses {
        MemberAddresses {
            peer: format!("127.0.0.1:{}", 9000 + id),
            client: format!("127.0.0.1:{}", 8000 + id),
            metrics: String::new(),
        }
    }

    fn three() -> Configuration {
        let table = (1..=3).map(|id| (id, addresses(id))).collect();
        Configuration::bootstrap(&[1, 2, 3], &table)
    }

    #[test]
    fn codec_round_trips_and_refuses_garbage() {
        let configuration = three()
            .apply_change(
                &Change::AddLearner {
                    id: 4,
                    addresses: addresses(4),
                },
                None,
            )
            .and_then(|c| c.apply_change(&Change::Remove { id: 2 }, Some(0xabc)))
            .expect("valid changes");
        let data = configuration.encode();
        assert!(is_configuration_entry(&data));
        assert_eq!(Configuration::decode(&data), Ok(configuration.clone()));
        for length in 0..data.len() {
            assert!(Configuration::decode(&data[..length]).is_err());
        }
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(Configuration::decode(&longer).is_err());
        let mut flipped = data.to_vec();
        flipped[1] = 9;
        assert!(Configuration::decode(&flipped)
            .expect_err("another version")
            .contains("version 9"));
    }

    #[test]
    fn change_rule_one_member_at_a_time() {
        let base = three();
        let add = Change::AddLearner {
            id: 4,
            addresses: addresses(4),
        };
        let with_learner = base.apply_change(&add, None).expect("add");
        assert!(with_learner.is_learner(4) && with_learner.voter_count() == 3);
        assert!(with_learner.reflects(&add));
        let error = with_learner.apply_change(&add, None).expect_err("twice");
        assert_eq!(
            error.to_string(),
            "node 4 is already a learner (remove it first to change its addresses)"
        );
        let promoted = with_learner
            .apply_change(&Change::Promote { id: 4 }, None)
            .expect("promote");
        assert_eq!(promoted.voters(), vec![1, 2, 3, 4]);
        assert!(base.apply_change(&Change::Promote { id: 4 }, None).is_err());
        let clash = Change::AddLearner {
            id: 5,
            addresses: addresses(1),
        };
        assert!(base
            .apply_change(&clash, None)
            .expect_err("address in use")
            .to_string()
            .contains("already node 1's"));
        let single = Configuration::bootstrap(&[1], &BTreeMap::new());
        assert!(single
            .apply_change(&Change::Remove { id: 1 }, None)
            .expect_err("last voter")
            .to_string()
            .contains("last voter"));
    }

    #[test]
    fn removed_incarnations_are_remembered_and_bounded() {
        let mut configuration = three();
        for round in 0..(REMOVED_MEMBERS_REMEMBERED_MAX as u64 + 3) {
            configuration = configuration
                .apply_change(
                    &Change::AddLearner {
                        id: 9,
                        addresses: addresses(9),
                    },
                    None,
                )
                .and_then(|c| c.apply_change(&Change::Remove { id: 9 }, Some(round)))
                .expect("add and remove");
        }
        assert_eq!(
            configuration.removed().len(),
            REMOVED_MEMBERS_REMEMBERED_MAX
        );
        assert!(!configuration.was_removed(9, 0));
        assert!(configuration.was_removed(9, REMOVED_MEMBERS_REMEMBERED_MAX as u64 + 2));
    }

    #[test]
    fn quorums_count_voters_only() {
        let configuration = three()
            .apply_change(
                &Change::AddLearner {
                    id: 4,
                    addresses: addresses(4),
                },
                None,
            )
            .expect("add");
        // Learner 4 holds everything, voters 2 and 3 nothing: not committed.
        let matches = |id: NodeId| if id == 1 || id == 4 { 10 } else { 0 };
        assert_eq!(configuration.committed_index(matches), 0);
        assert!(!configuration.has_majority(|id| id == 1 || id == 4));
        assert!(configuration.has_majority(|id| id == 1 || id == 3));
        let votes: BTreeMap<NodeId, bool> = [(1, true), (4, true)].into();
        assert_eq!(configuration.tally(&votes, false), VoteResult::Pending);
        let votes: BTreeMap<NodeId, bool> = [(1, true), (2, true)].into();
        assert_eq!(configuration.tally(&votes, false), VoteResult::Won);
        assert_eq!(configuration.tally(&votes, true), VoteResult::Pending);
        let all: BTreeMap<NodeId, bool> = [(1, true), (2, true), (3, true)].into();
        assert_eq!(configuration.tally(&all, true), VoteResult::Won);
        let one_no: BTreeMap<NodeId, bool> = [(1, true), (2, true), (3, false)].into();
        assert_eq!(configuration.tally(&one_no, true), VoteResult::Lost);
    }

    #[test]
    fn history_follows_appends_truncations_and_compaction() {
        let base = three();
        let next = base
            .apply_change(
                &Change::AddLearner {
                    id: 4,
                    addresses: addresses(4),
                },
                None,
            )
            .expect("add");
        let mut history = Configurations::bootstrap(base.clone());
        assert!(!history.from_log());
        let entries = vec![
            Entry {
                term: 1,
                index: 1,
                data: base.encode(),
            },
            Entry {
                term: 1,
                index: 2,
                data: Bytes::from_static(b"\x01data"),
            },
            Entry {
                term: 1,
                index: 3,
                data: next.encode(),
            },
        ];
        assert_eq!(history.observe(&entries), Ok(true));
        assert!(history.from_log());
        assert_eq!((history.current_index(), history.current()), (3, &next));
        assert_eq!(history.at(2), (1, &base));
        assert!(history.truncate_from(3));
        assert_eq!(history.current(), &base);
        assert_eq!(history.observe(&entries[2..]), Ok(true));
        history.compact_to(2);
        assert_eq!(history.at(2), (2, &base));
        assert_eq!(history.current(), &next);
        history.compact_to(3);
        assert_eq!((history.current_index(), history.current()), (3, &next));
        assert!(history.from_log());
        let mut bad = entries[2].clone();
        bad.data = Bytes::from_static(&[CONFIGURATION_ENTRY_TAG, 7]);
        bad.index = 4;
        assert!(history.observe(&[bad]).is_err());
    }
}
