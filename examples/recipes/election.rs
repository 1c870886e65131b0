//! Leader election on one raftfs file (docs/RECIPES.md, "Leader election"):
//! the lock recipe, where holding the lock is leading.
//!
//! - campaign: acquire the lock NAME with the candidate's id as owner; the
//!   fencing token is the leader's *term*: every later leader's is larger;
//! - lead: refresh every third of the lease; lead only while the lease is
//!   trusted (`Held::is_trusted`); a failed refresh means step down;
//! - resign: release the lock (the next candidate is woken at once);
//! - observe: `read NAME` shows the leader (the first word) and its term
//!   (the version, which grows with every refresh; the term is the version
//!   at election, which `Leadership::term` keeps); `watch NAME VERSION`
//!   waits for the next change (a refresh, a resignation, an expiry).

use super::client::{Failure, Session};
use super::lock::{self, Held, LockConfig};
use std::time::Instant;

/// A won election.
pub struct Leadership {
    held: Held,
}

impl Leadership {
    /// The term: larger for every later leader.
    pub fn term(&self) -> u64 {
        self.held.token()
    }

    /// Whether this candidate may act as leader now.
    pub fn is_leading(&self) -> bool {
        self.held.is_trusted()
    }

    /// Keeps the leadership; `Ok(false)`: it was lost, step down.
    pub fn keep(&mut self, session: &mut Session) -> Result<bool, Failure> {
        self.held.refresh(session)
    }

    pub fn resign(self, session: &mut Session) -> Result<(), Failure> {
        self.held.release(session)
    }

    pub fn trusted_until(&self) -> Instant {
        self.held.trusted_until()
    }
}

/// Blocks until this candidate leads (or `deadline`).
pub fn campaign(
    session: &mut Session,
    election: &str,
    candidate: &str,
    lease_s: u64,
    deadline: Instant,
) -> Result<Leadership, Failure> {
    let config = LockConfig::new(election, candidate, lease_s);
    Ok(Leadership {
        held: lock::acquire(session, &config, deadline)?,
    })
}

/// The current leader, as an observer sees it: `(version, candidate)`.
pub fn leader(
    session: &mut Session,
    election: &str,
    deadline: Instant,
) -> Result<Option<(u64, String)>, Failure> {
    lock::holder(session, election, deadline)
}
