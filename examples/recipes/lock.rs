//! A lock with a lease on one raftfs file (docs/RECIPES.md, "Lock").
//!
//! The file NAME is the lock: absent or `free` = free; anything else names
//! the holder (`OWNER NONCE`, the nonce unique to one acquisition). Held, it
//! carries an expiry of `lease_s` seconds (SPEC §2, on cluster time): a
//! holder that dies without releasing is freed when the lease runs out.
//! - acquire: read NAME. `free` at version V: `cas NAME V` with the holder
//!   text and the lease. Absent: `write` it (the one unconditional step),
//!   then confirm with `cas` from that write's version (a concurrent writer
//!   makes the confirm fail). Held by another at version V: `watch NAME V`
//!   (woken by a release, a refresh, or the lease's expiry) and look again.
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
}

impl LockConfig {
    pub fn new(name: &str, owner: &str, lease_s: u64) -> LockConfig {
        LockConfig {
            name: name.to_string(),
            owner: owner.to_string(),
            lease_s: lease_s.max(1),
            drift_bound: 0.01,
            margin: Duration::from_millis(100),
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
    let mut seen = session.read(name, deadline)?;
    loop {
        let sent = Instant::now();
        let attempt = match &seen {
            Some((version, content)) if content == &text => {
                // An earlier attempt of ours took it (its answer was lost):
                // refresh to learn the lease's start.
                session.cas(name, *version, &text, config.lease_s, deadline)
            }
            Some((version, content)) if content == FREE => {
                session.cas(name, *version, &text, config.lease_s, deadline)
            }
            Some((version, _)) => {
                seen = session.watch(name, *version, deadline)?;
                continue;
            }
            None => match session.write(name, &text, config.lease_s, deadline) {
                // Confirm: nobody wrote in between.
                Ok(version) => session.cas(name, version, &text, config.lease_s, deadline),
                Err(failure) => Err(failure),
            },
        };
        match attempt {
            Ok(Answer::Written(version)) => {
                return Ok(Held {
                    config: config.clone(),
                    text,
                    token: version,
                    version,
                    trusted_until: sent + config.trusted_for(),
                })
            }
            Ok(_) | Err(Failure::Unknown) => seen = session.read(name, deadline)?,
            Err(failure) => return Err(failure),
        }
    }
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
