//! The per-file register model the search steps through (SPEC §2).
//!
//! State: the file's current content (or absent) plus what is known of the
//! latest version this file was given. Because versions come from one
//! cluster-wide counter, a file's versions only need to increase, not be
//! contiguous. An indeterminate write that is linearized takes a version
//! nobody has seen yet, so the state keeps a lower bound instead:
//! `latest_exact == false` means "the latest version is some unknown number
//! at least `latest_version`". A later answer that shows the version (a read,
//! a `cas` that matched it, an `ERR_VERSION`) pins it. This is exact for the
//! per-file rules: a write answered `OK v` after an unknown version u, with
//! u at least b, is possible iff some u in [b, v) exists, i.e. iff v > b.
//!
//! An unknown version is never pinned to a version a determinate write or
//! cas (on any file) was answered with: that number is taken, and versions
//! are never reused. Each operation carries that fact (`pins_taken`).
//!
//! Invariant: when the file is present, its version is the latest version
//! (every write/cas that takes a version also makes the file present).

use super::{Op, Outcome};

/// Interned content of one file (ids of contents no write sent never match).
pub(crate) type ContentId = u32;

/// The one id of every content no determinate read returned.
pub(crate) const UNSEEN_CONTENT: ContentId = ContentId::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    Write { content: ContentId },
    Cas { expected: u64, content: ContentId },
    Delete,
    Read,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Answer {
    Written(u64),
    Mismatch(u64),
    Deleted,
    NotFound,
    Contents {
        version: u64,
        content: ContentId,
    },
    /// Indeterminate: stepping it means "it took effect here".
    Unknown,
}

/// One operation on one file, in the search's compact form.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileOp {
    pub action: Action,
    pub answer: Answer,
    pub call_ns: u64,
    /// `None` for an indeterminate operation (completion at +infinity).
    pub return_ns: Option<u64>,
    /// Index of the operation in the history.
    pub record: usize,
    /// The version this operation shows or expects (read, `ERR_VERSION`,
    /// cas) is one a determinate write/cas was answered with.
    pub pins_taken: bool,
}

impl FileOp {
    /// The version the operation shows or expects of a present file.
    pub fn pinned_version(action: &Action, answer: &Answer) -> Option<u64> {
        match (action, answer) {
            (Action::Cas { .. }, Answer::Mismatch(current)) => Some(*current),
            (Action::Cas { expected, .. }, _) => Some(*expected),
            (Action::Read, Answer::Contents { version, .. }) => Some(*version),
            _ => None,
        }
    }
}

impl FileOp {
    /// Whether taking effect replaces the file whatever it was (write,
    /// delete), so that an earlier effect right before it is invisible
    /// except for a higher version bound.
    pub fn overwrites(&self) -> bool {
        matches!(self.action, Action::Write { .. } | Action::Delete)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RegisterState {
    pub latest_version: u64,
    pub latest_exact: bool,
    pub content: Option<ContentId>,
}

impl RegisterState {
    pub const INITIAL: RegisterState = RegisterState {
        latest_version: 0,
        latest_exact: true,
        content: None,
    };

    /// Whether the present file's version can be `version`, which `op`
    /// shows or expects.
    fn version_can_be(&self, version: u64, op: &FileOp) -> bool {
        if self.latest_exact {
            self.latest_version == version
        } else {
            version >= self.latest_version && !op.pins_taken
        }
    }

    /// Whether every sequence of steps that succeeds from `other` also
    /// succeeds from `self`, ending in a state that again dominates: same
    /// content, and a latest version that is a lower bound at most
    /// `other`'s (for an absent file only the bound matters; a present
    /// file's exact version is matched by an unknown one at or below it).
    pub fn dominates(&self, other: &RegisterState) -> bool {
        if self.content != other.content {
            return false;
        }
        if self.content.is_none() {
            return self.latest_version <= other.latest_version;
        }
        // An unknown version cannot take a version a determinate write
        // took, which an exact one may have: no dominance across exactness.
        self.latest_exact == other.latest_exact
            && if self.latest_exact {
                self.latest_version == other.latest_version
            } else {
                self.latest_version <= other.latest_version
            }
    }

    fn with_version(self, version: u64) -> RegisterState {
        RegisterState {
            latest_version: version,
            latest_exact: true,
            ..self
        }
    }
}

/// Why an operation cannot take effect in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The answer needs the file present; it is absent.
    Absent,
    /// The answer says not found; the file is present.
    Present,
    /// A write/cas returned a version not above the file's latest one.
    VersionNotGreater { returned: u64 },
    /// A read or `ERR_VERSION` showed a version the file cannot have.
    VersionDiffers { shown: u64 },
    /// A successful cas expected a version the file does not have.
    CasExpectedOther,
    /// `ERR_VERSION` named the version the cas expected.
    MismatchNamesExpected,
    /// A read showed other content than the file holds.
    ContentDiffers,
    /// An indeterminate operation whose effect is a no-op here (left to the
    /// end of the order, where it changes nothing).
    NoEffect,
}

/// Applies `op` to `state`: the next state if the answer fits, else why not.
pub(crate) fn step(state: RegisterState, op: &FileOp) -> Result<RegisterState, Reject> {
    let present = state.content.is_some();
    match (op.action, op.answer) {
        (Action::Write { content }, Answer::Written(version)) => {
            if version <= state.latest_version {
                return Err(Reject::VersionNotGreater { returned: version });
            }
            Ok(RegisterState {
                latest_version: version,
                latest_exact: true,
                content: Some(content),
            })
        }
        (Action::Write { content }, Answer::Unknown) => Ok(RegisterState {
            latest_version: state.latest_version.saturating_add(1),
            latest_exact: false,
            content: Some(content),
        }),
        (Action::Cas { expected, content }, Answer::Written(version)) => {
            if !present {
                return Err(Reject::Absent);
            }
            if !state.version_can_be(expected, op) {
                return Err(Reject::CasExpectedOther);
            }
            if version <= expected {
                return Err(Reject::VersionNotGreater { returned: version });
            }
            Ok(RegisterState {
                latest_version: version,
                latest_exact: true,
                content: Some(content),
            })
        }
        (Action::Cas { expected, content }, Answer::Unknown) => {
            if !present || !state.version_can_be(expected, op) {
                return Err(Reject::NoEffect);
            }
            Ok(RegisterState {
                latest_version: expected.saturating_add(1),
                latest_exact: false,
                content: Some(content),
            })
        }
        (Action::Cas { expected, .. }, Answer::Mismatch(current)) => {
            if !present {
                return Err(Reject::Absent);
            }
            if current == expected {
                return Err(Reject::MismatchNamesExpected);
            }
            if !state.version_can_be(current, op) {
                return Err(Reject::VersionDiffers { shown: current });
            }
            Ok(state.with_version(current))
        }
        (Action::Cas { .. } | Action::Delete | Action::Read, Answer::NotFound) => {
            if present {
                return Err(Reject::Present);
            }
            Ok(state)
        }
        (Action::Delete, Answer::Deleted) => {
            if !present {
                return Err(Reject::Absent);
            }
            Ok(RegisterState {
                content: None,
                ..state
            })
        }
        (Action::Delete, Answer::Unknown) => {
            if !present {
                return Err(Reject::NoEffect);
            }
            Ok(RegisterState {
                content: None,
                ..state
            })
        }
        (Action::Read, Answer::Contents { version, content }) => {
            let Some(current) = state.content else {
                return Err(Reject::Absent);
            };
            if !state.version_can_be(version, op) {
                return Err(Reject::VersionDiffers { shown: version });
            }
            if current != content {
                return Err(Reject::ContentDiffers);
            }
            Ok(state.with_version(version))
        }
        // Indeterminate reads are dropped before the search; pairs that no
        // command can get are refused by `answer_fits_command` first.
        _ => Err(Reject::NoEffect),
    }
}

/// Whether `outcome` is an answer `op` can get at all (SPEC §2 table).
pub(crate) fn answer_fits_command(op: &Op, outcome: &Outcome) -> bool {
    matches!(
        (op, outcome),
        (_, Outcome::Indeterminate)
            | (Op::Write { .. }, Outcome::Written { .. })
            | (
                Op::Cas { .. },
                Outcome::Written { .. } | Outcome::VersionMismatch { .. } | Outcome::NotFound
            )
            | (Op::Delete { .. }, Outcome::Deleted | Outcome::NotFound)
            | (
                Op::Read { .. },
                Outcome::Contents { .. } | Outcome::NotFound
            )
    ) || match (op, outcome) {
        // A watch answers only once the version differs (absent = 0).
        (Op::Watch { version, .. }, Outcome::Contents { version: shown, .. }) => shown != version,
        (Op::Watch { version, .. }, Outcome::NotFound) => *version != 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(action: Action, answer: Answer) -> FileOp {
        FileOp {
            action,
            answer,
            call_ns: 0,
            return_ns: Some(1),
            record: 0,
            pins_taken: false,
        }
    }

    #[test]
    fn unknown_version_is_pinned_by_a_later_read() {
        let written = step(
            RegisterState::INITIAL,
            &op(Action::Write { content: 0 }, Answer::Unknown),
        )
        .unwrap();
        assert_eq!(
            written,
            RegisterState {
                latest_version: 1,
                latest_exact: false,
                content: Some(0)
            }
        );
        let read = op(
            Action::Read,
            Answer::Contents {
                version: 7,
                content: 0,
            },
        );
        assert_eq!(step(written, &read).unwrap().latest_version, 7);
        assert!(step(
            written,
            &op(
                Action::Read,
                Answer::Contents {
                    version: 0,
                    content: 0
                }
            )
        )
        .is_err());
        // A write after the unknown one needs a version above it: 1 cannot be.
        assert!(step(
            written,
            &op(Action::Write { content: 1 }, Answer::Written(1))
        )
        .is_err());
        assert!(step(
            written,
            &op(Action::Write { content: 1 }, Answer::Written(2))
        )
        .is_ok());
    }

    #[test]
    fn dominance() {
        let exact = RegisterState {
            latest_version: 5,
            latest_exact: true,
            content: Some(0),
        };
        let unknown = RegisterState {
            latest_version: 4,
            latest_exact: false,
            content: Some(0),
        };
        assert!(!unknown.dominates(&exact) && !exact.dominates(&unknown));
        let higher_unknown = RegisterState {
            latest_version: 9,
            ..unknown
        };
        assert!(unknown.dominates(&higher_unknown) && !higher_unknown.dominates(&unknown));
        let absent = RegisterState {
            latest_version: 3,
            latest_exact: true,
            content: None,
        };
        let absent_unknown = RegisterState {
            latest_version: 6,
            latest_exact: false,
            content: None,
        };
        assert!(absent.dominates(&absent_unknown) && !absent_unknown.dominates(&absent));
        assert!(!absent.dominates(&exact));
        let other_content = RegisterState {
            content: Some(1),
            ..unknown
        };
        assert!(!unknown.dominates(&other_content));
    }

    #[test]
    fn cas_rules() {
        let state = RegisterState {
            latest_version: 5,
            latest_exact: true,
            content: Some(0),
        };
        let cas = |expected, answer| {
            op(
                Action::Cas {
                    expected,
                    content: 1,
                },
                answer,
            )
        };
        assert!(step(state, &cas(5, Answer::Written(6))).is_ok());
        assert_eq!(
            step(state, &cas(4, Answer::Written(6))),
            Err(Reject::CasExpectedOther)
        );
        assert_eq!(
            step(state, &cas(5, Answer::Written(5))),
            Err(Reject::VersionNotGreater { returned: 5 })
        );
        assert!(step(state, &cas(4, Answer::Mismatch(5))).is_ok());
        assert_eq!(
            step(state, &cas(5, Answer::Mismatch(5))),
            Err(Reject::MismatchNamesExpected)
        );
        assert_eq!(step(state, &cas(4, Answer::NotFound)), Err(Reject::Present));
        assert_eq!(step(state, &cas(4, Answer::Unknown)), Err(Reject::NoEffect));
    }
}
