//! Targeted checks of single `Node` contracts that the golden scripts do not
//! isolate: refused envelopes change nothing, the leader counts itself only
//! after `persisted` (and ignores a report for a replaced entry), a
//! single-member cluster commits and serves reads by itself, and incarnations
//! are recorded durably on first sight.

use bytes::Bytes;
use raftfs::raft::{
    Action, Config, Configuration, Entry, Envelope, HardState, Message, Node, NodeId, Restored,
    Role, StepError,
};

fn config(id: NodeId, members: &[NodeId]) -> Config {
    Config {
        id,
        members: members.to_vec(),
        addresses: Default::default(),
        incarnation: 1000 + id,
        election_timeout_ticks: (10, 20),
        heartbeat_ticks: 3,
        inflight_appends_max: 4,
        append_bytes_max: 1 << 20,
        snapshot_chunk_bytes_max: raftfs::limits::SNAPSHOT_CHUNK_BYTES_MAX,
        pre_vote: false,
        check_quorum: false,
        seed: id,
    }
}

fn drain(node: &mut Node) -> Vec<Action> {
    let mut actions = Vec::new();
    node.drain_actions(&mut actions);
    actions
}

fn envelope(from: NodeId, to: NodeId, term: u64, message: Message) -> Envelope {
    Envelope {
        from,
        to,
        term,
        incarnation: 1000 + from,
        message,
    }
}

/// Node 1 of {1, 2, 3} elected in term 1 (a first election, from empty
/// logs, needs every voter: nodes 2 and 3 grant); returns it with its
/// first entry (index 1, the bootstrap configuration) not yet persisted.
fn leader_of_three() -> Node {
    let mut node = Node::new(config(1, &[1, 2, 3]), Restored::default());
    while node.role() != Role::Candidate {
        node.tick();
    }
    drain(&mut node);
    let vote = envelope(2, 1, 1, Message::RequestVoteResponse { granted: true });
    assert_eq!(node.step(vote), Ok(()));
    assert_eq!(
        node.role(),
        Role::Candidate,
        "an empty log wins only with every voter"
    );
    let vote = envelope(3, 1, 1, Message::RequestVoteResponse { granted: true });
    assert_eq!(node.step(vote), Ok(()));
    assert_eq!(node.role(), Role::Leader);
    drain(&mut node);
    node
}

fn ack(node: &mut Node, from: NodeId, match_index: u64) {
    let message = Message::AppendEntriesResponse {
        success: true,
        match_index,
        conflict_index: 0,
        conflict_term: None,
    };
    assert_eq!(node.step(envelope(from, 1, 1, message)), Ok(()));
}

#[test]
fn refused_envelopes_change_nothing() {
    // A node holding a log (one with an empty log lets a member's new data
    // dir replace the recorded one: `empty_log_follows_a_replaced_member`).
    let restored = Restored {
        hard_state: HardState {
            term: 1,
            ..HardState::default()
        },
        entries: vec![Entry {
            index: 1,
            term: 1,
            data: Bytes::new(),
        }],
        ..Restored::default()
    };
    let mut node = Node::new(config(1, &[1, 2, 3]), restored);
    let heartbeat = Message::Heartbeat {
        leader_commit: 0,
        read_round: 1,
    };
    assert_eq!(
        node.step(envelope(2, 3, 5, heartbeat.clone())),
        Err(StepError::NotForUs)
    );
    assert_eq!(
        node.step(envelope(1, 1, 5, heartbeat.clone())),
        Err(StepError::NotForUs)
    );
    assert!(drain(&mut node).is_empty());

    // First sight of node 2 records its incarnation durably.
    assert_eq!(node.observe_incarnation(2, 1002), Ok(()));
    let actions = drain(&mut node);
    assert!(
        matches!(&actions[..], [Action::PersistHardState(hs)] if hs.incarnations.get(&2) == Some(&1002))
    );

    let mut impostor = envelope(2, 1, 5, heartbeat);
    impostor.incarnation = 7;
    assert_eq!(
        node.step(impostor),
        Err(StepError::WrongIncarnation {
            from: 2,
            recorded: 1002,
            got: 7
        })
    );
    assert_eq!(node.term(), 1, "a refused message must not change the term");
    assert_eq!(node.leader_id(), None);
    assert!(drain(&mut node).is_empty());
}

/// Node 1 restarted with a log whose one entry (index 1, term 1) is the
/// configuration {1, 2, 3} binding voter `id` to data dir `bindings(id)`.
fn node_with_bound_voters(bindings: impl Fn(NodeId) -> u64) -> Node {
    let configuration = Configuration::bootstrap(&[1, 2, 3], &Default::default())
        .binding_voters(|id| Some(bindings(id)));
    let restored = Restored {
        hard_state: HardState {
            term: 1,
            ..HardState::default()
        },
        entries: vec![Entry {
            index: 1,
            term: 1,
            data: configuration.encode(),
        }],
        ..Restored::default()
    };
    Node::new(config(1, &[1, 2, 3]), restored)
}

#[test]
fn a_voter_counts_only_as_its_data_dir() {
    // Node 1's log binds voter 1 to another data dir (its predecessor's):
    // this one never campaigns (sim seed 72: a replaced node holding an old
    // configuration elected itself with another new data dir's vote).
    let mut ghost = node_with_bound_voters(|id| if id == 1 { 9001 } else { 1000 + id });
    assert!(!ghost.is_voter());
    for _ in 0..100 {
        ghost.tick();
    }
    assert_eq!(ghost.role(), Role::Follower);
    assert_eq!(ghost.term(), 1);

    // Bound to this data dir, it campaigns, and a vote from a data dir
    // other than the one voter 2 is bound to does not count.
    let mut node = node_with_bound_voters(|id| 1000 + id);
    assert!(node.is_voter());
    while node.role() != Role::Candidate {
        node.tick();
    }
    let term = node.term();
    let mut stranger = envelope(2, 1, term, Message::RequestVoteResponse { granted: true });
    stranger.incarnation = 2002;
    assert_eq!(node.step(stranger), Ok(()));
    assert_eq!(node.role(), Role::Candidate, "a stranger's vote counted");
    let vote = envelope(3, 1, term, Message::RequestVoteResponse { granted: true });
    assert_eq!(node.step(vote), Ok(()));
    assert_eq!(node.role(), Role::Leader);
}

#[test]
fn empty_log_follows_a_replaced_member() {
    // A node waiting to be added (empty log) that recorded node 2's data
    // dir follows node 2's new one: nothing in its log can be corrupted.
    let mut node = Node::new(config(1, &[1, 2, 3]), Restored::default());
    assert_eq!(node.observe_incarnation(2, 1002), Ok(()));
    drain(&mut node);
    assert_eq!(node.observe_incarnation(2, 2002), Ok(()));
    assert_eq!(node.hard_state().incarnations.get(&2), Some(&2002));
}

#[test]
fn leader_counts_itself_only_after_persisted() {
    let mut node = leader_of_three();
    ack(&mut node, 2, 1);
    assert_eq!(
        node.commit_index(),
        0,
        "one follower plus an unpersisted leader is no majority"
    );
    node.persisted(1, 7);
    assert_eq!(
        node.commit_index(),
        0,
        "a report with the wrong term is ignored"
    );
    node.persisted(1, 1);
    assert_eq!(node.commit_index(), 1);
    let applied: Vec<Action> = drain(&mut node)
        .into_iter()
        .filter(|a| matches!(a, Action::Apply(_)))
        .collect();
    assert_eq!(applied.len(), 1);

    // Two followers are a majority without the leader's own write.
    let index = node.propose(Bytes::from_static(b"x")).expect("leader");
    ack(&mut node, 2, index);
    ack(&mut node, 3, index);
    assert_eq!(node.commit_index(), index);
}

#[test]
fn single_member_cluster_commits_and_reads_alone() {
    let mut node = Node::new(config(1, &[1]), Restored::default());
    while node.role() != Role::Leader {
        node.tick();
    }
    assert_eq!(node.read_index(5), Ok(()));
    let actions = drain(&mut node);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::ReadReady { .. })),
        "no read before the no-op commits"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Send(_))));
    node.persisted(1, 1);
    assert_eq!(node.commit_index(), 1);
    let actions = drain(&mut node);
    assert!(actions.contains(&Action::ReadReady { id: 5, index: 1 }));

    assert_eq!(node.read_index(6), Ok(()));
    assert_eq!(
        drain(&mut node),
        vec![Action::ReadReady { id: 6, index: 1 }]
    );
    assert_eq!(
        node.transfer_leadership(None),
        Ok(1),
        "nobody to hand over to"
    );
    assert_eq!(node.propose(Bytes::from_static(b"y")), Ok(2));
}

#[test]
fn restart_applies_again_from_the_start() {
    let mut node = leader_of_three();
    node.persisted(1, 1);
    let index = node.propose(Bytes::from_static(b"x")).expect("leader");
    node.persisted(index, 1);
    ack(&mut node, 2, index);
    assert_eq!(node.commit_index(), index);
    let mut hard_state = node.hard_state().clone();
    let entries: Vec<_> = (1..=index).filter_map(|i| node.entry(i).cloned()).collect();
    hard_state.vote = Some(1);

    let mut restarted = Node::new(
        config(1, &[1, 2, 3]),
        Restored {
            hard_state,
            entries,
            snapshot: None,
            snapshot_configuration: None,
        },
    );
    assert_eq!(
        (
            restarted.term(),
            restarted.commit_index(),
            restarted.last_index()
        ),
        (1, 0, 2)
    );
    assert_eq!(restarted.role(), Role::Follower);
    let heartbeat = Message::Heartbeat {
        leader_commit: 2,
        read_round: 1,
    };
    assert_eq!(restarted.step(envelope(2, 1, 1, heartbeat)), Ok(()));
    let applied: Vec<u64> = drain(&mut restarted)
        .into_iter()
        .filter_map(|a| {
            if let Action::Apply(entries) = a {
                Some(entries)
            } else {
                None
            }
        })
        .flatten()
        .map(|entry| entry.index)
        .collect();
    assert_eq!(applied, vec![1, 2]);
}

#[test]
fn malformed_append_is_dropped_without_panic() {
    let mut node = Node::new(config(2, &[1, 2, 3]), Restored::default());
    let entries = vec![raftfs::raft::Entry {
        term: 1,
        index: 5,
        data: Bytes::new(),
    }];
    let message = Message::AppendEntries {
        prev_log_index: 0,
        prev_log_term: 0,
        entries,
        leader_commit: 9,
    };
    // Refused before anything moves (`raft::validate`): not even the term.
    assert!(matches!(
        node.step(envelope(1, 2, 1, message)),
        Err(StepError::Malformed(_))
    ));
    assert_eq!(node.term(), 0);
    assert_eq!(node.last_index(), 0);
    assert_eq!(node.commit_index(), 0);
    let sends = drain(&mut node)
        .into_iter()
        .filter(|a| matches!(a, Action::Send(_)))
        .count();
    assert_eq!(sends, 0);
}

/// Thesis §4.1: a server answers whoever asks (a member it does not know of
/// yet, e.g. while its own configuration lags); quorums are what count only
/// members. A non-member's incarnation is not recorded.
#[test]
fn non_members_are_heard_but_not_recorded() {
    let mut node = Node::new(config(1, &[1, 2, 3]), Restored::default());
    assert_eq!(node.observe_incarnation(9, 99), Ok(()));
    assert!(drain(&mut node).is_empty(), "nothing to persist");
    let heartbeat = Message::Heartbeat {
        leader_commit: 0,
        read_round: 1,
    };
    assert_eq!(node.step(envelope(9, 1, 5, heartbeat)), Ok(()));
    assert_eq!((node.term(), node.leader_id()), (5, Some(9)));
    assert!(!node.hard_state().incarnations.contains_key(&9));
}

/// A configuration that removed node 3's data dir (incarnation 1003) refuses
/// that data dir for good, forgets its incarnation once committed, and lets
/// the id come back with a new data dir, recorded on first sight.
#[test]
fn a_removed_data_dir_is_refused_and_its_id_may_return() {
    use raftfs::raft::{Change, Configuration, Entry, HardState, MemberAddresses};
    let three = Configuration::bootstrap(&[1, 2, 3], &Default::default());
    let without = three
        .apply_change(&Change::Remove { id: 3 }, Some(1003))
        .expect("remove 3");
    let back = without
        .apply_change(
            &Change::AddLearner {
                id: 3,
                addresses: MemberAddresses {
                    peer: "n3:9".into(),
                    client: "n3:8".into(),
                    metrics: String::new(),
                },
            },
            None,
        )
        .expect("add 3 back");
    let entry = |index, data: Bytes| Entry {
        term: 1,
        index,
        data,
    };
    let mut node = Node::new(
        config(1, &[1, 2, 3]),
        Restored {
            hard_state: HardState {
                term: 1,
                vote: None,
                incarnations: [(2, 1002), (3, 1003)].into(),
            },
            entries: vec![
                entry(1, three.encode()),
                entry(2, without.encode()),
                entry(3, back.encode()),
            ],
            snapshot: None,
            snapshot_configuration: None,
        },
    );
    assert_eq!(node.configuration(), &back);
    // Committing the removal forgets the old incarnation (durably), and
    // refuses it from then on.
    let heartbeat = Message::Heartbeat {
        leader_commit: 3,
        read_round: 1,
    };
    assert_eq!(node.step(envelope(2, 1, 1, heartbeat)), Ok(()));
    let forgot = drain(&mut node).into_iter().any(|action| {
        matches!(action, Action::PersistHardState(hs) if !hs.incarnations.contains_key(&3))
    });
    assert!(forgot, "the removed incarnation is forgotten");
    assert_eq!(
        node.observe_incarnation(3, 1003),
        Err(StepError::Removed {
            from: 3,
            incarnation: 1003
        })
    );
    assert_eq!(node.observe_incarnation(3, 2003), Ok(()));
    assert_eq!(node.hard_state().incarnations.get(&3), Some(&2003));
    assert!(node.observe_incarnation(3, 1003).is_err());
}

/// Forged or malformed messages are refused before anything changes
/// (`raft::validate`), in release builds too.
#[test]
fn malformed_or_forged_messages_change_nothing() {
    let mut node = Node::new(config(1, &[1, 2, 3]), Restored::default());
    drain(&mut node);
    let entry = |term, index| raftfs::raft::Entry {
        term,
        index,
        data: bytes::Bytes::new(),
    };
    let forged = [
        // A huge term from a member.
        envelope(
            2,
            1,
            u64::MAX,
            Message::Heartbeat {
                leader_commit: 0,
                read_round: 0,
            },
        ),
        // Entries not contiguous, or above the message's term.
        envelope(
            2,
            1,
            5,
            Message::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![entry(5, 1), entry(5, 3)],
                leader_commit: 0,
            },
        ),
        envelope(
            2,
            1,
            5,
            Message::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![entry(6, 1)],
                leader_commit: 0,
            },
        ),
        // A snapshot chunk past its snapshot's end.
        envelope(
            2,
            1,
            5,
            Message::InstallSnapshot {
                snapshot: raftfs::raft::SnapshotMeta {
                    index: 9,
                    term: 5,
                    size_bytes: 10,
                },
                offset: 8,
                data: bytes::Bytes::from_static(b"abc"),
            },
        ),
        // A vote from no member.
        envelope(9, 1, 0, Message::RequestVoteResponse { granted: true }),
    ];
    for message in forged {
        assert!(node.check_message(&message).is_err(), "{message:?}");
        assert!(
            matches!(node.step(message), Err(StepError::Malformed(_))),
            "refused by step too"
        );
        assert_eq!(node.term(), 0);
        assert!(drain(&mut node).is_empty(), "nothing changed");
    }
    // A well-formed one passes.
    let fine = envelope(
        2,
        1,
        5,
        Message::Heartbeat {
            leader_commit: 0,
            read_round: 0,
        },
    );
    assert_eq!(node.check_message(&fine), Ok(()));
}
