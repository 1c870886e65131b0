//! Human-readable text for verdicts: operations, model states and why an
//! operation cannot take effect. Bounded: contents are cut, lists are capped.

use std::fmt::Write as _;

use super::model::{step, FileOp, RegisterState, Reject};
use super::search::Failure;
use super::{Op, OpId, Outcome, Record};

/// Bytes of a content shown before it is cut.
const CONTENT_SHOWN_BYTES_MAX: usize = 40;
/// Candidate operations listed in an explanation.
const CANDIDATES_SHOWN_MAX: usize = 24;

/// `bytes` as a quoted, escaped string, cut when long.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(CONTENT_SHOWN_BYTES_MAX)];
    let mut text = String::from("\"");
    text.push_str(&shown.escape_ascii().to_string());
    if shown.len() < bytes.len() {
        let _ = write!(text, "\"...({} bytes)", bytes.len());
    } else {
        text.push('"');
    }
    text
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Write { name, content } => format!("write {} {}", quote(name), quote(content)),
        Op::Cas {
            name,
            expected_version,
            content,
        } => {
            format!(
                "cas {} expecting {} {}",
                quote(name),
                expected_version,
                quote(content)
            )
        }
        Op::Delete { name } => format!("delete {}", quote(name)),
        Op::Read { name } => format!("read {}", quote(name)),
        Op::Watch { name, version } => format!("watch {} {version}", quote(name)),
    }
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Written { version } => format!("OK {version}"),
        Outcome::VersionMismatch { current } => format!("ERR_VERSION {current}"),
        Outcome::Deleted => "OK".to_string(),
        Outcome::NotFound => "ERR_FILE_NOT_FOUND".to_string(),
        Outcome::Contents { version, content } => format!("CONTENTS {version} {}", quote(content)),
        Outcome::Indeterminate => "indeterminate".to_string(),
    }
}

/// One line: id, client, command, answer, times.
pub(crate) fn describe_record(id: OpId, record: &Record) -> String {
    let answer = match &record.completion {
        Some((outcome, at_ns)) => format!("{} at {} ns", describe_outcome(outcome), at_ns),
        None => "never answered".to_string(),
    };
    format!(
        "op #{} client {}: {} invoked at {} ns -> {}",
        id.0,
        record.client,
        describe_op(&record.op),
        record.invoked_ns,
        answer
    )
}

fn describe_state(state: &RegisterState) -> String {
    let version = if state.latest_exact {
        format!("version {}", state.latest_version)
    } else {
        format!("an unknown version >= {}", state.latest_version)
    };
    match state.content {
        Some(_) => format!("present with {version} (content of the write that gave it)"),
        None if state.latest_version == 0 => "absent, never written".to_string(),
        None => format!("absent (its last version was {version})"),
    }
}

fn describe_reject(reject: Reject) -> String {
    match reject {
        Reject::Absent => "the file is absent there".to_string(),
        Reject::Present => "the file is present there".to_string(),
        Reject::VersionNotGreater { returned } => {
            format!("version {returned} is not above the file's latest version")
        }
        Reject::VersionDiffers { shown } => format!("the file cannot have version {shown} there"),
        Reject::CasExpectedOther => "the file does not have the expected version there".to_string(),
        Reject::MismatchNamesExpected => {
            "ERR_VERSION names the very version the cas expected".to_string()
        }
        Reject::ContentDiffers => "the file holds other content there".to_string(),
        Reject::NoEffect => "it would have no effect there".to_string(),
    }
}

/// The explanation of a per-file failure: the deepest order the search
/// found, the state it leaves, and why no pending operation can come next.
pub(crate) fn explain_failure(
    name: &[u8],
    records: &[Record],
    ops: &[FileOp],
    failure: &Failure,
) -> String {
    let placed = ops
        .iter()
        .enumerate()
        .filter(|(index, op)| op.return_ns.is_some() && failure.linearized.get(*index));
    let mut text = format!(
        "file {}: no order of its operations respects real time and the register's rules.\n\
         The longest valid order found places {} of {} answered operations",
        quote(name),
        placed.count(),
        failure.completed_total
    );
    if failure.recent.is_empty() {
        text.push_str(".\n");
    } else {
        text.push_str("; it ends with:\n");
        for &index in &failure.recent {
            let record = ops[index].record;
            let _ = writeln!(
                text,
                "  {}",
                describe_record(OpId(record), &records[record])
            );
        }
    }
    let _ = writeln!(
        text,
        "after which the file is {}.",
        describe_state(&failure.state)
    );
    // The pending operations that could come next: every unplaced one
    // invoked no later than the first answer among the unplaced.
    let frontier_ns = ops
        .iter()
        .enumerate()
        .filter(|(index, _)| !failure.linearized.get(*index))
        .filter_map(|(_, op)| op.return_ns)
        .min()
        .unwrap_or(u64::MAX);
    text.push_str("None of the operations that could come next fits:\n");
    let candidates: Vec<&FileOp> = ops
        .iter()
        .enumerate()
        .filter(|(index, op)| !failure.linearized.get(*index) && op.call_ns <= frontier_ns)
        .map(|(_, op)| op)
        .collect();
    let mut shown = 0;
    let mut without_effect = 0;
    // Answered operations first: the culprit is among them.
    for op in candidates
        .iter()
        .filter(|op| op.return_ns.is_some())
        .chain(candidates.iter().filter(|op| op.return_ns.is_none()))
    {
        let why = match step(failure.state, op) {
            Err(Reject::NoEffect) => {
                without_effect += 1;
                continue;
            }
            Err(reject) => describe_reject(reject),
            Ok(_) => "fits there, but then the others cannot all be placed".to_string(),
        };
        if shown == CANDIDATES_SHOWN_MAX {
            text.push_str("  ...\n");
            break;
        }
        shown += 1;
        let _ = writeln!(
            text,
            "  {}: {}",
            describe_record(OpId(op.record), &records[op.record]),
            why
        );
    }
    if without_effect > 0 {
        let _ = writeln!(
            text,
            "  (and {without_effect} indeterminate operations that would change nothing there)"
        );
    }
    text
}
