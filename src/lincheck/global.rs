//! Cross-file checks that follow from the one cluster-wide version counter
//! (SPEC §2): every successful write/cas takes the next number, in the order
//! the log applies them, which respects real time.
//!
//! Checked: (1) no version is returned by two successful writes, nor seen on
//! two different files (a version belongs to the one write that took it);
//! (2) a write/cas invoked after some operation was answered gets a version
//! greater than every version that operation saw (answered with, read,
//! expected in a successful cas, or named by `ERR_VERSION`): that version was
//! taken before the answer, this one after the invocation.
//! Not checked: the absence of gaps (indeterminate writes may take numbers
//! nobody sees).

use std::collections::HashMap;

use super::render;
use super::{Op, OpId, Outcome, Record, Verdict};

/// A version an answered operation shows was already taken by then.
struct Sighting {
    version: u64,
    record: usize,
    /// The operation that took this version (`write`/`cas` answered OK).
    is_taker: bool,
}

fn sightings(records: &[Record]) -> Vec<Sighting> {
    let mut found = Vec::new();
    for (index, record) in records.iter().enumerate() {
        if record.discarded {
            continue;
        }
        let Some((outcome, _)) = &record.completion else {
            continue;
        };
        match (outcome, &record.op) {
            (
                Outcome::Written { version },
                Op::Cas {
                    expected_version, ..
                },
            ) => {
                found.push(Sighting {
                    version: *version,
                    record: index,
                    is_taker: true,
                });
                found.push(Sighting {
                    version: *expected_version,
                    record: index,
                    is_taker: false,
                });
            }
            (Outcome::Written { version }, _) => found.push(Sighting {
                version: *version,
                record: index,
                is_taker: true,
            }),
            (Outcome::VersionMismatch { current: version }, _)
            | (Outcome::Contents { version, .. }, _) => found.push(Sighting {
                version: *version,
                record: index,
                is_taker: false,
            }),
            _ => {}
        }
    }
    found
}

fn violation(records: &[Record], first: usize, second: usize, what: &str) -> Verdict {
    Verdict::NotLinearizable {
        file: records[first].op.name().to_vec(),
        explanation: format!(
            "{what}:\n  {}\n  {}",
            render::describe_record(OpId(first), &records[first]),
            render::describe_record(OpId(second), &records[second])
        ),
    }
}

/// The cross-file version checks; `Some` names the first violation found.
pub(crate) fn check_versions(records: &[Record]) -> Option<Verdict> {
    let found = sightings(records);
    let mut takers: HashMap<u64, usize> = HashMap::new();
    let mut owners: HashMap<u64, usize> = HashMap::new();
    for sighting in &found {
        if sighting.is_taker {
            if let Some(&other) = takers.get(&sighting.version) {
                return Some(violation(
                    records,
                    other,
                    sighting.record,
                    "two successful writes got the same version",
                ));
            }
            takers.insert(sighting.version, sighting.record);
        }
        match owners.get(&sighting.version) {
            Some(&other) if records[other].op.name() != records[sighting.record].op.name() => {
                return Some(violation(
                    records,
                    other,
                    sighting.record,
                    &format!(
                        "version {} shows up on two different files",
                        sighting.version
                    ),
                ));
            }
            Some(_) => {}
            None => {
                owners.insert(sighting.version, sighting.record);
            }
        }
    }

    // Real time: sweep the takers by invocation, folding in every sighting
    // answered strictly before.
    let mut answered: Vec<(u64, u64, usize)> = found
        .iter()
        .filter_map(|sighting| {
            let (_, at_ns) = records[sighting.record].completion.as_ref()?;
            Some((*at_ns, sighting.version, sighting.record))
        })
        .collect();
    answered.sort_unstable();
    let mut invoked: Vec<(u64, u64, usize)> = found
        .iter()
        .filter(|sighting| sighting.is_taker)
        .map(|sighting| {
            (
                records[sighting.record].invoked_ns,
                sighting.version,
                sighting.record,
            )
        })
        .collect();
    invoked.sort_unstable();
    let mut highest: Option<(u64, usize)> = None;
    let mut next = 0;
    for (invoked_ns, version, record) in invoked {
        while next < answered.len() && answered[next].0 < invoked_ns {
            let (_, seen, witness) = answered[next];
            if highest.is_none_or(|(best, _)| seen > best) {
                highest = Some((seen, witness));
            }
            next += 1;
        }
        if let Some((seen, witness)) = highest {
            if version <= seen {
                return Some(violation(
                    records,
                    witness,
                    record,
                    &format!(
                        "the second was invoked after the first was answered with version {seen} seen, \
                         yet it took version {version} (the counter only grows)"
                    ),
                ));
            }
        }
    }
    None
}
