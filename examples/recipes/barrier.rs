//! A barrier for a known number of parties (docs/RECIPES.md, "Barrier").
//!
//! Party `i` of `parties` arrives by writing its own file `NAME/i` (nobody
//! else writes it, so the unconditional write is safe to repeat after an
//! unknown outcome), then waits for every party's file in turn with
//! `watch NAME/j 0` (answered once the file exists). Files never expire and
//! are never deleted, so a party that saw `NAME/j` knows party j arrived:
//! no party passes before all have arrived, with no timing assumption. Use
//! a fresh NAME for each round (e.g. `step-7/barrier`).

use super::client::{Failure, Session};
use std::time::Instant;

/// Arrives as `party` (0-based) and returns once all `parties` arrived.
pub fn arrive_and_wait(
    session: &mut Session,
    name: &str,
    party: usize,
    parties: usize,
    deadline: Instant,
) -> Result<(), Failure> {
    let mine = format!("{name}/{party}");
    loop {
        match session.write(&mine, b"arrived", 0, deadline) {
            Ok(_) => break,
            // Rewriting our own file is harmless: try again.
            Err(Failure::Unknown) => continue,
            Err(failure) => return Err(failure),
        }
    }
    for other in (0..parties).filter(|&other| other != party) {
        session.watch(&format!("{name}/{other}"), 0, deadline)?;
    }
    Ok(())
}
