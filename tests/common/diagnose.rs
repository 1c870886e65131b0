//! Cheap, local checks of a recorded history, and a text dump of it: when
//! the full linearizability search fails or gives up, these name the first
//! operations that break an obvious rule, so a failure explains itself.
//!
//! Rules checked (each implied by per-file linearizability, SPEC §2-3):
//! - one version is returned by at most one successful write or cas;
//! - a read that returns version v shows the content the write of v sent;
//! - stale reads: once an operation that observed version v of a file has
//!   completed, no operation invoked later observes a smaller version of it
//!   (a file's versions only grow, even across delete and re-create).

use std::collections::HashMap;
use std::fmt::Write as _;

use raftfs::lincheck::{History, Op, Outcome, Record};

fn observed_version(record: &Record) -> Option<u64> {
    match &record.completion {
        Some((Outcome::Written { version }, _))
        | Some((Outcome::VersionMismatch { current: version }, _))
        | Some((Outcome::Contents { version, .. }, _)) => Some(*version),
        _ => None,
    }
}

/// Problems found, at most `limit`.
pub fn problems(history: &History, limit: usize) -> Vec<String> {
    let records = history.records();
    let mut found = Vec::new();
    let mut writers: HashMap<u64, usize> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        if record.discarded {
            continue;
        }
        if let (Op::Write { .. } | Op::Cas { .. }, Some((Outcome::Written { version }, _))) =
            (&record.op, &record.completion)
        {
            if let Some(previous) = writers.insert(*version, index) {
                found.push(format!(
                    "version {version} returned twice: #{previous} {:?} and #{index} {:?}",
                    records[previous], record
                ));
            }
        }
    }
    for (index, record) in records.iter().enumerate() {
        if let Some((Outcome::Contents { version, content }, _)) = &record.completion {
            if let Some(&writer) = writers.get(version) {
                let sent = match &records[writer].op {
                    Op::Write { content, .. } | Op::Cas { content, .. } => content,
                    _ => continue,
                };
                if sent != content || records[writer].op.name() != record.op.name() {
                    found.push(format!(
                        "read #{index} {:?} does not match the write of version {version}: #{writer} {:?}",
                        record, records[writer]
                    ));
                }
            }
        }
    }
    // Stale reads, per file: sweep by time.
    let mut by_file: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        if !record.discarded && observed_version(record).is_some() {
            by_file.entry(record.op.name()).or_default().push(index);
        }
    }
    for (file, indexes) in by_file {
        let mut completions: Vec<(u64, u64, usize)> = indexes
            .iter()
            .filter_map(|&i| {
                let (_, at) = records[i].completion.as_ref()?;
                Some((*at, observed_version(&records[i])?, i))
            })
            .collect();
        completions.sort();
        let mut invocations: Vec<usize> = indexes.clone();
        invocations.sort_by_key(|&i| records[i].invoked_ns);
        let mut cursor = 0;
        let mut best: Option<(u64, usize)> = None;
        for index in invocations {
            let invoked = records[index].invoked_ns;
            while cursor < completions.len() && completions[cursor].0 < invoked {
                let (_, version, at) = completions[cursor];
                if best.is_none_or(|(v, _)| version > v) {
                    best = Some((version, at));
                }
                cursor += 1;
            }
            if let (Some((floor, witness)), Some(version)) =
                (best, observed_version(&records[index]))
            {
                if version < floor {
                    found.push(format!(
                        "stale on {:?}: #{index} {:?} observed version {version} after #{witness} {:?} had observed {floor}",
                        String::from_utf8_lossy(file),
                        records[index],
                        records[witness]
                    ));
                }
            }
            if found.len() >= limit {
                return found;
            }
        }
    }
    found.truncate(limit);
    found
}

/// The history as text, one operation a line, in invocation order.
pub fn dump(history: &History) -> String {
    let mut order: Vec<usize> = (0..history.len()).collect();
    let records = history.records();
    order.sort_by_key(|&i| records[i].invoked_ns);
    let mut out = String::new();
    for index in order {
        let record = &records[index];
        let _ = writeln!(
            out,
            "#{index} client {} invoked {} completed {:?} discarded {} {:?}",
            record.client,
            record.invoked_ns,
            record
                .completion
                .as_ref()
                .map(|(outcome, at)| (at, outcome)),
            record.discarded,
            record.op
        );
    }
    out
}
