//! Pure quorum math: the majority size, the index a majority has replicated,
//! and the outcome of a vote tally.
//!
//! Owns nothing; every function is a pure computation over the voters' state
//! so it can be tested exhaustively. Invariant: a majority of `n` voters is
//! `n / 2 + 1`, so any two majorities of the same voter set intersect (Raft
//! §5.2 election safety and §5.4 leader completeness both rest on this).
//! Leaves out joint consensus (membership change is not implemented).

use super::message::{Index, NodeId};
use std::collections::BTreeMap;

/// How many voters form a majority of `voters`.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index that a majority of voters has replicated, given each
/// voter's match index (the leader's own durable index included). Reorders
/// `match_indexes`. An empty slice yields 0.
pub fn committed_index(match_indexes: &mut [Index]) -> Index {
    if match_indexes.is_empty() {
        return 0;
    }
    match_indexes.sort_unstable_by(|a, b| b.cmp(a));
    match_indexes[majority(match_indexes.len()) - 1]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Neither a majority of grants nor of rejections yet.
    Pending,
    Won,
    Lost,
}

/// Tally `votes` (voter → granted) among `voters` voters.
pub fn tally(voters: usize, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let granted = votes.values().filter(|granted| **granted).count();
    let rejected = votes.len() - granted;
    let needed = majority(voters);
    if granted >= needed {
        VoteResult::Won
    } else if rejected > voters - needed {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_sizes() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
        assert_eq!(majority(9), 5);
    }

    #[test]
    fn any_two_majorities_intersect() {
        for voters in 1..=9usize {
            assert!(2 * majority(voters) > voters, "voters {voters}");
        }
    }

    #[test]
    fn committed_index_is_the_majority_th_largest() {
        assert_eq!(committed_index(&mut []), 0);
        assert_eq!(committed_index(&mut [7]), 7);
        assert_eq!(committed_index(&mut [5, 1, 3]), 3);
        assert_eq!(committed_index(&mut [1, 5, 5]), 5);
        assert_eq!(committed_index(&mut [9, 0, 0, 2, 4]), 2);
        assert_eq!(committed_index(&mut [4, 4, 1, 1]), 1);
        assert_eq!(committed_index(&mut [10, 10, 10, 1]), 10);
    }

    #[test]
    fn committed_index_matches_brute_force() {
        // Every assignment of indexes 0..4 to 1..=5 voters: the answer is the
        // largest i such that at least a majority have match >= i.
        for voters in 1..=5usize {
            let combinations = 4usize.pow(voters as u32);
            for code in 0..combinations {
                let mut indexes: Vec<Index> = (0..voters)
                    .map(|v| ((code / 4usize.pow(v as u32)) % 4) as Index)
                    .collect();
                let expected = (0..4)
                    .filter(|i| indexes.iter().filter(|m| **m >= *i).count() >= majority(voters))
                    .max()
                    .unwrap_or(0);
                assert_eq!(committed_index(&mut indexes), expected);
            }
        }
    }

    #[test]
    fn tally_outcomes() {
        let votes = |list: &[(NodeId, bool)]| list.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(tally(1, &votes(&[(1, true)])), VoteResult::Won);
        assert_eq!(tally(3, &votes(&[(1, true)])), VoteResult::Pending);
        assert_eq!(tally(3, &votes(&[(1, true), (2, true)])), VoteResult::Won);
        assert_eq!(
            tally(3, &votes(&[(1, true), (2, false)])),
            VoteResult::Pending
        );
        assert_eq!(
            tally(3, &votes(&[(1, true), (2, false), (3, false)])),
            VoteResult::Lost
        );
        assert_eq!(
            tally(4, &votes(&[(1, true), (2, false), (3, false)])),
            VoteResult::Lost
        );
        assert_eq!(
            tally(4, &votes(&[(1, true), (2, true), (3, false)])),
            VoteResult::Pending
        );
        assert_eq!(
            tally(5, &votes(&[(1, true), (2, false), (3, false)])),
            VoteResult::Pending
        );
    }
}
