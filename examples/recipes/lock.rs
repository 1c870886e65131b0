//! A lock with a lease on one raftfs file (docs/RECIPES.md, "Lock").
//!
//! The file NAME is the lock: absent or `free` = free; anything else names
//! the holder (`OWNER NONCE`, the nonce unique to one acquisition). Held, it
//! carries an expiry of `lease_s` seconds (SPEC §2, on cluster time): a
//! holder that dies without releasing is freed when the lease runs out.
//! - acquire: read NAME. `free` at version V: `cas NAME V` with the holder
//!   text and the lease. Held by another at version V: `watch NAME V`
//!   (woken by a release, a refresh, or the lease's expiry) and look again.
//!   Absent: `write` it — the one unconditional step, as the protocol has no
//!   create-if-absent — then wait `create_settle` and confirm with `cas`
//!   from that write's version; confirm only if the write was answered
//!   within `create_freshness` of sending the `read` that saw the lock
//!   absent. A write that missed that bound, or whose outcome is unknown, is
//!   never confirmed: it is left to expire with its lease. Why: a write W
//!   that lands after another contender's confirm was made on a view from
//!   before that contender's write, which came `create_settle` before its
//!   confirm; so W was answered more than `create_settle` ≥
//!   `create_freshness` after its read was sent, and is not confirmed. It
//!   can overwrite the holder (who fails its next refresh and stops), but
//!   never makes a second holder; nobody takes the lock until W's lease
//!   ends.
//! - the fencing token is the version the acquiring `cas` returned: the
//!   cluster-wide counter makes every later acquisition's token larger;
//! - refresh: `cas NAME CURRENT` with the same text and lease, every third
//!   of the lease; a failed refresh means the lock was lost;
//! - release: `cas NAME CURRENT free` (no expiry), which wakes the waiters.
//!
//! The holder trusts its lock only until `lease × (1 − 2ρ) − margin` after it
//! *sent* the last successful acquire or refresh, on its own monotonic
//! clock (ρ: the bound on clock rate drift). The server starts the lease no
//! earlier (the entry's stamp is taken after the command arrived) and
//! expires it no earlier than cluster time allows, and cluster time runs at
//! the leader's monotonic rate and never jumps ahead (SPEC §2: late by up to
//! an election, never early).

use super::client::{Answer, Failure, Session};
use std::time::{Duration, Instant};

/// The content of a free lock.
pub const FREE: &[u8] = b"free";

#[derive(Clone, Debug)]
pub struct LockConfig {
    pub name: String,
    /// Who holds it (shown to others; the first word of the file).
    pub owner: String,
    /// The lease, whole seconds (the protocol's EXPTIME), at least 1.
    pub lease_s: u64,
    /// Bound on the rate drift between any two clocks involved (0.01 = 1 %).
    pub drift_bound: f64,
    /// Subtracted from the lease for the round trip and scheduling.
    pub margin: Duration,
    /// Creating an absent lock: a `write` answered later than this after
    /// the `read` that saw the lock absent was sent is never confirmed.
    pub create_freshness: Duration,
    /// Creating an absent lock: the wait between the `write` and its
    /// confirming `cas`; at least `create_freshness × (1 + ρ)²`.
    pub create_settle: Duration,
}

impl LockConfig {
    pub fn new(name: &str, owner: &str, lease_s: u64) -> LockConfig {
        LockConfig {
            name: name.to_string(),
            owner: owner.to_string(),
            lease_s: lease_s.max(1),
            drift_bound: 0.01,
            margin: Duration::from_millis(100),
            create_freshness: Duration::from_millis(500),
            create_settle: Duration::from_millis(600),
        }
    }

    /// How long after sending a successful acquire/refresh the holder may
    /// trust the lock.
    pub fn trusted_for(&self) -> Duration {
        let lease = Duration::from_secs(self.lease_s).as_secs_f64();
        Duration::from_secs_f64((lease * (1.0 - 2.0 * self.drift_bound)).max(0.0))
            .saturating_sub(self.margin)
    }
}

/// A held lock.
#[derive(Debug)]
pub struct Held {
    config: LockConfig,
    /// The holder text, `OWNER NONCE`.
    text: Vec<u8>,
    /// The fencing token: the version the acquisition returned.
    token: u64,
    /// The file's version after our last acquire or refresh.
    version: u64,
    /// Until when the holder may trust the lock (monotonic).
    trusted_until: Instant,
}

impl Held {
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the lease is still trusted now (check before each use; a
    /// fenced resource checks the token too).
    pub fn is_trusted(&self) -> bool {
        Instant::now() < self.trusted_until
    }

    pub fn trusted_until(&self) -> Instant {
        self.trusted_until
    }

    /// Extends the lease. `Ok(false)`: the lock was lost (it expired and
    /// someone else may hold it); stop using it.
    pub fn refresh(&mut self, session: &mut Session) -> Result<bool, Failure> {
        let deadline = self
            .trusted_until
            .max(Instant::now() + Duration::from_millis(200));
        loop {
            let sent = Instant::now();
            let outcome = session.cas(
                &self.config.name,
                self.version,
                &self.text,
                self.config.lease_s,
                deadline,
            );
            match outcome {
                Ok(Answer::Written(version)) => {
                    self.version = version;
                    self.trusted_until = sent + self.config.trusted_for();
                    return Ok(true);
                }
                Ok(_) => return Ok(false),
                // Refreshed or not: look, but the lease start stays the old one.
                Err(Failure::Unknown) => match session.read(&self.config.name, deadline)? {
                    Some((version, content)) if content == self.text => self.version = version,
                    _ => return Ok(false),
                },
                Err(failure) => return Err(failure),
            }
        }
    }

    /// Frees the lock (waking the waiters). Losing it first is no error.
    pub fn release(self, session: &mut Session) -> Result<(), Failure> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut version = self.version;
        loop {
            match session.cas(&self.config.name, version, FREE, 0, deadline) {
                Ok(_) => return Ok(()),
                Err(Failure::Unknown) => match session.read(&self.config.name, deadline)? {
                    Some((current, content)) if content == self.text => version = current,
                    _ => return Ok(()),
                },
                Err(failure) => return Err(failure),
            }
        }
    }
}

/// Blocks until the lock is held (or `deadline`).
pub fn acquire(
    session: &mut Session,
    config: &LockConfig,
    deadline: Instant,
) -> Result<Held, Failure> {
    let text = format!("{} {:016x}", config.owner, nonce()).into_bytes();
    let name = config.name.as_str();
    // What we saw last, and when the read that saw it was sent.
    let mut observed_at = Instant::now();
    let mut seen = session.read(name, deadline)?;
    loop {
        let attempt = match &seen {
            Some((version, content)) if content == FREE => {
                let sent = Instant::now();
                session
                    .cas(name, *version, &text, config.lease_s, deadline)
                    .map(|answer| (answer, sent))
            }
            // Held by another, or by an unconfirmed write of ours: wait.
            Some((version, _)) => {
                seen = session.watch(name, *version, deadline)?;
                if seen.is_none() {
                    // Absent: look again, so the observation is fresh.
                    observed_at = Instant::now();
                    seen = session.read(name, deadline)?;
                }
                continue;
            }
            None => create(session, config, &text, observed_at, deadline),
        };
        match attempt {
            Ok((Answer::Written(version), sent)) => {
                return Ok(Held {
                    config: config.clone(),
                    text,
                    token: version,
                    version,
                    trusted_until: sent + config.trusted_for(),
                })
            }
            Ok(_) | Err(Failure::Unknown) => {
                observed_at = Instant::now();
                seen = session.read(name, deadline)?;
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// The absent path: write, settle, confirm (see the module doc). The
/// confirming `cas`'s answer and when it was sent; `NotFound` when the
/// write may not be confirmed.
fn create(
    session: &mut Session,
    config: &LockConfig,
    text: &[u8],
    observed_at: Instant,
    deadline: Instant,
) -> Result<(Answer, Instant), Failure> {
    let name = config.name.as_str();
    let version = session.write(name, text, config.lease_s, deadline)?;
    if observed_at.elapsed() > config.create_freshness {
        // Possibly over a holder that came after our stale observation:
        // never confirmed; it expires with its lease.
        return Ok((Answer::NotFound, Instant::now()));
    }
    std::thread::sleep(config.create_settle);
    let sent = Instant::now();
    Ok((
        session.cas(name, version, text, config.lease_s, deadline)?,
        sent,
    ))
}

/// Who holds the lock now: `(version, owner)`, or `None` when free.
pub fn holder(
    session: &mut Session,
    name: &str,
    deadline: Instant,
) -> Result<Option<(u64, String)>, Failure> {
    Ok(session
        .read(name, deadline)?
        .and_then(|(version, content)| {
            (content != FREE).then(|| {
                let text = String::from_utf8_lossy(&content);
                (version, text.split(' ').next().unwrap_or("").to_string())
            })
        }))
}

/// A value unique to one acquisition (time and a counter; no RNG needed).
fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(std::process::id()) << 40
}
