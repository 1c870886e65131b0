//! Where a worker's next command comes from, phase by phase, and when.
//!
//! Owns: `Source` — the prefill sequence (write each of this worker's keys
//! once), the measured random mix (kind by weight, key uniform or zipfian,
//! until the deadline or this worker's share of `--total`) or nothing —
//! `Schedule`, the intended start times of an open-loop (`--rate`) run, and
//! `Versions`, the last version loadgen saw per key, shared by all workers
//! so a `cas` names a recent version and succeeds often.
//!
//! Invariants: the prefill writes key n on worker n mod T only, so the
//! workers together write every key exactly once; a `Mix` source yields
//! nothing once its deadline has passed or its share is used up. Open loop:
//! global operation j is intended at `start + j / rate`, and worker w owns
//! the j with j mod T = w, so the workers together keep the rate and
//! together own exactly `--total` operations; an operation is handed out
//! only once its intended time has come, with that time (latency counts from
//! it, so operations delayed because every pipeline slot was busy show their
//! whole delay). Closed loop: the intended time is the moment it is handed
//! out. Leaves out: sending (see `client`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rand_distr::{Distribution, Zipf};
use rand_pcg::Pcg64Mcg;

use crate::command::Operation;
use crate::config::{KeyDist, Kind, Mix};

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

/// The intended start times of one worker's operations in an open-loop run.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    rate_ops: f64,
    worker: u64,
    workers: u64,
}

impl Schedule {
    /// Worker `worker` of `workers`' share of `rate_ops` operations per second from `start`.
    pub fn new(start: Instant, rate_ops: f64, worker: usize, workers: usize) -> Schedule {
        Schedule {
            start,
            rate_ops,
            worker: worker as u64,
            workers: workers.max(1) as u64,
        }
    }

    /// When this worker's `n`-th operation (from 0) is meant to start.
    pub fn intended(&self, n: u64) -> Instant {
        let global = n.saturating_mul(self.workers).saturating_add(self.worker);
        self.start + Duration::from_secs_f64(global as f64 / self.rate_ops)
    }

    /// How many of this worker's operations are meant to start before `time`.
    pub fn due_before(&self, time: Instant) -> u64 {
        let elapsed_s = time.saturating_duration_since(self.start).as_secs_f64();
        // Global operations j with j / rate < elapsed: ceil(elapsed * rate).
        let global = (elapsed_s * self.rate_ops).ceil() as u64;
        if global > self.worker {
            (global - self.worker).div_ceil(self.workers)
        } else {
            0
        }
    }
}

/// This worker's share of `total` operations split over `workers` (the
/// global operations j < total with j mod workers = worker).
pub fn share_of_total(total: u64, worker: usize, workers: usize) -> u64 {
    let (worker, workers) = (worker as u64, workers.max(1) as u64);
    if total > worker {
        (total - worker).div_ceil(workers)
    } else {
        0
    }
}

/// What the measured phase of one worker generates and when it ends.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub mix: Mix,
    pub keys: u64,
    pub key_dist: KeyDist,
    /// Nothing is handed out at or after this instant (intended time, for an open loop).
    pub deadline: Option<Instant>,
    /// This worker's share of `--total` (`None`: no limit).
    pub total: Option<u64>,
    /// Open loop when given.
    pub schedule: Option<Schedule>,
}

/// The command generator of one worker for one phase.
pub enum Source {
    /// Prefill: write keys `next_key, next_key + step, ...` below `keys`.
    Prefill { next_key: u64, step: u64, keys: u64 },
    /// Measured: random kind by weight, key by `zipf` (uniform without it), per `plan`.
    Mix {
        rng: Pcg64Mcg,
        plan: Plan,
        zipf: Option<Zipf<f64>>,
        /// Operations handed out so far.
        generated: u64,
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

    /// A closed-loop measured mix of one worker over uniform keys until `deadline`.
    pub fn mix(seed: u64, worker: usize, mix: Mix, keys: u64, deadline: Instant) -> Source {
        let plan = Plan {
            mix,
            keys,
            key_dist: KeyDist::Uniform,
            deadline: Some(deadline),
            total: None,
            schedule: None,
        };
        Source::Mix {
            rng: worker_rng(seed, worker),
            plan,
            zipf: None,
            generated: 0,
        }
    }

    /// The measured phase of one worker as `plan` describes it.
    pub fn measured(seed: u64, worker: usize, plan: Plan) -> Result<Source, String> {
        let zipf = match plan.key_dist {
            KeyDist::Uniform => None,
            KeyDist::Zipfian { theta } => Some(
                Zipf::new(plan.keys, theta)
                    .map_err(|error| format!("zipfian keys (skew {theta}): {error}"))?,
            ),
        };
        Ok(Source::Mix {
            rng: worker_rng(seed, worker),
            plan,
            zipf,
            generated: 0,
        })
    }

    /// True once this source will yield nothing more.
    pub fn is_exhausted(&self, now: Instant) -> bool {
        match self {
            Source::Prefill { next_key, keys, .. } => next_key >= keys,
            Source::Mix {
                plan, generated, ..
            } => {
                if plan.total.is_some_and(|total| *generated >= total) {
                    return true;
                }
                let Some(deadline) = plan.deadline else {
                    return false;
                };
                match &plan.schedule {
                    Some(schedule) => schedule.intended(*generated) >= deadline,
                    None => now >= deadline,
                }
            }
            Source::Nothing => true,
        }
    }

    /// True when `next` would hand out an operation now.
    pub fn has_due(&self, now: Instant) -> bool {
        !self.is_exhausted(now) && self.next_due().is_none_or(|due| due <= now)
    }

    /// Open loop: when the next operation is meant to start (`None` in a
    /// closed loop or once exhausted: nothing to wait for).
    pub fn next_due(&self) -> Option<Instant> {
        let Source::Mix {
            plan, generated, ..
        } = self
        else {
            return None;
        };
        let due = plan.schedule?.intended(*generated);
        let ended = plan.total.is_some_and(|total| *generated >= total)
            || plan.deadline.is_some_and(|deadline| due >= deadline);
        (!ended).then_some(due)
    }

    /// The instant the poll loop must wake for this source: the next
    /// intended start (open loop) or the deadline (closed loop).
    pub fn wake_at(&self) -> Option<Instant> {
        match self {
            Source::Mix { plan, .. } => match self.next_due() {
                Some(due) => Some(due),
                None => plan.deadline,
            },
            _ => None,
        }
    }

    /// Open loop: operations meant to start before `end` (and within the
    /// deadline and the share) that were never handed out because no
    /// pipeline slot was free; 0 in a closed loop.
    pub fn unsent(&self, end: Instant) -> u64 {
        let Source::Mix {
            plan:
                Plan {
                    schedule: Some(schedule),
                    deadline,
                    total,
                    ..
                },
            generated,
            ..
        } = self
        else {
            return 0;
        };
        let until = deadline.map_or(end, |deadline| deadline.min(end));
        let due = schedule.due_before(until).min(total.unwrap_or(u64::MAX));
        due.saturating_sub(*generated)
    }

    /// The next command to send with its intended start time, or `None`
    /// when exhausted or (open loop) when the next one is not due yet.
    pub fn next(&mut self, now: Instant, versions: &Versions) -> Option<(Operation, Instant)> {
        if !self.has_due(now) {
            return None;
        }
        match self {
            Source::Prefill { next_key, step, .. } => {
                let key = *next_key;
                *next_key = next_key.saturating_add(*step);
                let operation = Operation {
                    kind: Kind::Write,
                    key,
                    expected_version: 0,
                };
                Some((operation, now))
            }
            Source::Mix {
                rng,
                plan,
                zipf,
                generated,
            } => {
                let intended = plan
                    .schedule
                    .map_or(now, |schedule| schedule.intended(*generated));
                *generated += 1;
                let kind = plan.mix.pick(rng.gen_range(0..plan.mix.total()));
                let key = match zipf {
                    // Zipf draws ranks 1..=keys; rank 1 is key 0.
                    Some(zipf) => (zipf.sample(rng) as u64).clamp(1, plan.keys) - 1,
                    None => rng.gen_range(0..plan.keys),
                };
                let expected_version = if kind == Kind::Cas {
                    versions.get(key)
                } else {
                    0
                };
                let operation = Operation {
                    kind,
                    key,
                    expected_version,
                };
                Some((operation, intended))
            }
            Source::Nothing => None,
        }
    }
}

/// Distinct random streams per worker from one seed.
fn worker_rng(seed: u64, worker: usize) -> Pcg64Mcg {
    let state = u128::from(seed) << 64 | (worker as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Pcg64Mcg::new(state | 1)
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
            while let Some((operation, _)) = source.next(now, &versions) {
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
        let (operation, intended) = source.next(now, &versions).expect("before the deadline");
        assert_eq!(intended, now, "closed loop: intended when handed out");
        assert_eq!(
            (operation.kind, operation.key, operation.expected_version),
            (Kind::Cas, 0, 7)
        );
        assert!(source
            .next(now + Duration::from_secs(61), &versions)
            .is_none());
    }

    fn plan(schedule: Option<Schedule>, deadline: Option<Instant>, total: Option<u64>) -> Plan {
        Plan {
            mix: Mix::new(1, 0, 0, 0).expect("positive"),
            keys: 10,
            key_dist: KeyDist::Uniform,
            deadline,
            total,
            schedule,
        }
    }

    #[test]
    fn open_loop_hands_out_operations_at_their_intended_times() {
        let versions = Versions::new(10);
        let start = Instant::now();
        // 100 ops/s over 2 workers: worker 1 owns global ops 1, 3, 5, ... at 10 ms steps.
        let schedule = Schedule::new(start, 100.0, 1, 2);
        let deadline = start + Duration::from_millis(100);
        let mut source =
            Source::measured(1, 1, plan(Some(schedule), Some(deadline), None)).expect("plan");
        assert_eq!(source.next_due(), Some(start + Duration::from_millis(10)));
        assert!(source.next(start, &versions).is_none(), "not due yet");
        // Late: everything due is handed out at once, each with its own intended time.
        let late = start + Duration::from_millis(55);
        let intended: Vec<Instant> = std::iter::from_fn(|| source.next(late, &versions))
            .map(|(_, intended)| intended)
            .collect();
        let expected: Vec<Instant> = [10, 30, 50]
            .iter()
            .map(|ms| start + Duration::from_millis(*ms))
            .collect();
        assert_eq!(intended, expected);
        assert_eq!(source.unsent(late), 0);
        // Ops 70 and 90 ms were due before the deadline and never taken.
        assert_eq!(source.unsent(start + Duration::from_secs(1)), 2);
        assert!(!source.is_exhausted(late));
        let end = start + Duration::from_secs(1);
        assert_eq!(
            std::iter::from_fn(|| source.next(end, &versions)).count(),
            2
        );
        assert!(
            source.is_exhausted(end),
            "the next intended time is past the deadline"
        );
    }

    #[test]
    fn totals_are_shared_exactly_and_stop_the_source() {
        for (total, workers) in [(10u64, 3usize), (2, 4), (7, 1), (1, 2)] {
            let shares: u64 = (0..workers)
                .map(|worker| share_of_total(total, worker, workers))
                .sum();
            assert_eq!(shares, total, "{total} over {workers}");
        }
        let versions = Versions::new(10);
        let now = Instant::now();
        let mut source = Source::measured(1, 0, plan(None, None, Some(3))).expect("plan");
        assert_eq!(
            std::iter::from_fn(|| source.next(now, &versions)).count(),
            3
        );
        assert!(source.is_exhausted(now));
    }

    #[test]
    fn zipfian_keys_favour_the_first() {
        let versions = Versions::new(1000);
        let now = Instant::now();
        let zipfian = Plan {
            keys: 1000,
            key_dist: KeyDist::Zipfian { theta: 0.99 },
            ..plan(None, None, Some(20_000))
        };
        let mut source = Source::measured(3, 0, zipfian).expect("plan");
        let mut counts = vec![0u32; 1000];
        while let Some((operation, _)) = source.next(now, &versions) {
            counts[operation.key as usize] += 1;
        }
        // Rank 1 is drawn about twice as often as rank 2 and far more than the tail.
        assert!(
            counts[0] > counts[1] && counts[1] > counts[9],
            "{:?}",
            &counts[..10]
        );
        assert!(
            counts[0] > 20 * counts[999].max(1),
            "{} vs {}",
            counts[0],
            counts[999]
        );
        let uniform = Plan {
            keys: 1000,
            ..plan(None, None, Some(20_000))
        };
        let mut source = Source::measured(3, 0, uniform).expect("plan");
        let mut first = 0;
        while let Some((operation, _)) = source.next(now, &versions) {
            first += u32::from(operation.key == 0);
        }
        assert!(first < 100, "uniform: key 0 drawn {first} times of 20000");
    }
}
