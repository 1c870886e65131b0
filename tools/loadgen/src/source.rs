//! Where a worker's next command comes from, phase by phase.
//!
//! Owns: `Source` — the prefill sequence (write each of this worker's keys
//! once), the measured random mix (kind by weight, key uniform, until the
//! deadline) or nothing — and `Versions`, the last version loadgen saw per
//! key, shared by all workers so a `cas` names a recent version and succeeds
//! often. Invariants: the prefill writes key n on worker n mod T only, so the
//! workers together write every key exactly once; a `Mix` source yields
//! nothing once its deadline has passed. Leaves out: sending (see `client`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::Rng;
use rand_pcg::Pcg64Mcg;

use crate::command::Operation;
use crate::config::{Kind, Mix};

/// The last version seen per key (0 = none seen), from `OK v`, `CONTENTS v ..` and `ERR_VERSION v`.
pub struct Versions {
    by_key: Vec<AtomicU64>,
}

impl Versions {
    /// All unknown, for `keys` keys.
    pub fn new(keys: u64) -> Versions {
        Versions {
            by_key: (0..keys).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The last version seen for `key` (0 if none or out of range).
    pub fn get(&self, key: u64) -> u64 {
        usize::try_from(key)
            .ok()
            .and_then(|index| self.by_key.get(index))
            .map_or(0, |version| version.load(Ordering::Relaxed))
    }

    /// Notes that `key` had `version`; versions only grow in the cluster, so the larger one is kept.
    pub fn note(&self, key: u64, version: u64) {
        if let Some(slot) = usize::try_from(key)
            .ok()
            .and_then(|index| self.by_key.get(index))
        {
            slot.fetch_max(version, Ordering::Relaxed);
        }
    }
}

/// The command generator of one worker for one phase.
pub enum Source {
    /// Prefill: write keys `next_key, next_key + step, ...` below `keys`.
    Prefill { next_key: u64, step: u64, keys: u64 },
    /// Measured: random kind by weight, uniform key, until `deadline`.
    Mix {
        rng: Pcg64Mcg,
        mix: Mix,
        keys: u64,
        deadline: Instant,
    },
    /// Nothing to send (connect only).
    Nothing,
}

impl Source {
    /// The prefill share of worker `worker` out of `workers`.
    pub fn prefill(worker: usize, workers: usize, keys: u64) -> Source {
        Source::Prefill {
            next_key: worker as u64,
            step: workers.max(1) as u64,
            keys,
        }
    }

    /// The measured mix of one worker.
    pub fn mix(seed: u64, worker: usize, mix: Mix, keys: u64, deadline: Instant) -> Source {
        // Distinct streams per worker from one seed.
        let state =
            u128::from(seed) << 64 | (worker as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Source::Mix {
            rng: Pcg64Mcg::new(state | 1),
            mix,
            keys,
            deadline,
        }
    }

    /// True once this source will yield nothing more.
    pub fn is_exhausted(&self, now: Instant) -> bool {
        match self {
            Source::Prefill { next_key, keys, .. } => next_key >= keys,
            Source::Mix { deadline, .. } => now >= *deadline,
            Source::Nothing => true,
        }
    }

    /// The next command to send, or `None` when exhausted.
    pub fn next(&mut self, now: Instant, versions: &Versions) -> Option<Operation> {
        match self {
            Source::Prefill {
                next_key,
                step,
                keys,
            } => {
                if next_key >= keys {
                    return None;
                }
                let key = *next_key;
                *next_key = next_key.saturating_add(*step);
                Some(Operation {
                    kind: Kind::Write,
                    key,
                    expected_version: 0,
                })
            }
            Source::Mix {
                rng,
                mix,
                keys,
                deadline,
            } => {
                if now >= *deadline {
                    return None;
                }
                let kind = mix.pick(rng.gen_range(0..mix.total()));
                let key = rng.gen_range(0..*keys);
                let expected_version = if kind == Kind::Cas {
                    versions.get(key)
                } else {
                    0
                };
                Some(Operation {
                    kind,
                    key,
                    expected_version,
                })
            }
            Source::Nothing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prefill_shares_cover_every_key_once() {
        let versions = Versions::new(0);
        let now = Instant::now();
        let mut keys: Vec<u64> = Vec::new();
        for worker in 0..3 {
            let mut source = Source::prefill(worker, 3, 10);
            while let Some(operation) = source.next(now, &versions) {
                assert_eq!(operation.kind, Kind::Write);
                keys.push(operation.key);
            }
            assert!(source.is_exhausted(now));
        }
        keys.sort_unstable();
        assert_eq!(keys, (0..10).collect::<Vec<u64>>());
    }

    #[test]
    fn mix_uses_known_versions_and_stops_at_deadline() {
        let versions = Versions::new(1);
        versions.note(0, 7);
        versions.note(0, 3);
        let now = Instant::now();
        let mix = Mix::new(0, 0, 1, 0).expect("positive");
        let mut source = Source::mix(5, 0, mix, 1, now + Duration::from_secs(60));
        let operation = source.next(now, &versions).expect("before the deadline");
        assert_eq!(
            (operation.kind, operation.key, operation.expected_version),
            (Kind::Cas, 0, 7)
        );
        assert!(source
            .next(now + Duration::from_secs(61), &versions)
            .is_none());
    }
}
