//! The recipes of docs/RECIPES.md (the library under `examples/recipes/`,
//! which the examples wrap) against a real 3-node cluster, under kill -9 of
//! the lock holder's node and of the leader, in turn (followers serve
//! commands by default, so a session stays on the node it reached and the
//! holder's node is often a follower; with redirecting followers both would
//! be the leader).
//!
//! - lock: contenders take turns on one lock and touch a fenced resource
//!   while they trust their lease; one dies holding it (its lease must free
//!   the lock). Checked: tokens grow with every acquisition, the resource
//!   never refuses a holder (no two holders' uses interleave), every round
//!   completes, a dead holder's lock is taken again within its lease plus
//!   slack.
//! - election: candidates campaign in turns; a leader dies leading. Checked:
//!   terms grow, leaderships never overlap on the fenced resource, an
//!   observer sees every leader it reads as a candidate with a term at or
//!   after the previous one.
//! - barrier: five parties, the last arriving after a kill -9; no party
//!   passes before the last one began to arrive, and all pass.
//!
//! Every test holds `common::serial()`; every wait is bounded.

mod common;

#[path = "../examples/recipes/mod.rs"]
mod recipes;

use common::cluster::{serial, Cluster, Options};
use recipes::client::Session;
use recipes::{barrier, election, lock};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease of the lock and election tests.
const LEASE_S: u64 = 2;
/// Bound on one test's work.
const TEST_DEADLINE: Duration = Duration::from_secs(90);

/// A resource guarded by fencing tokens: it accepts a use only with a token
/// at least the highest it has accepted.
#[derive(Default)]
struct Fenced {
    highest: u64,
    accepted: Vec<(u64, String)>,
    refused: Vec<(u64, String, u64)>,
}

impl Fenced {
    fn touch(&mut self, token: u64, who: &str) -> bool {
        if token < self.highest {
            self.refused.push((token, who.to_string(), self.highest));
            return false;
        }
        self.highest = token;
        self.accepted.push((token, who.to_string()));
        true
    }
}

/// One holding of the lock (or one leadership), as its holder saw it.
#[derive(Clone, Debug)]
struct Holding {
    who: String,
    token: u64,
    acquired: Instant,
    last_use: Instant,
    /// The holder died holding it (no release).
    died: bool,
}

/// kill -9 node `id`, and start it again after `down`.
fn kill_9_for(cluster: &mut Cluster, id: u64, down: Duration) {
    cluster.kill(id);
    std::thread::sleep(down);
    cluster.start_node(id);
}

fn three_nodes() -> Cluster {
    let cluster = Cluster::start(Options::new(3).fsync(false));
    cluster
        .wait_leader(Duration::from_secs(10))
        .expect("a leader");
    cluster
}

/// A lock or a leadership, as the tests use it.
trait Lease {
    fn token(&self) -> u64;
    fn trusted(&self) -> bool;
    /// Refresh; false once it is lost.
    fn extend(&mut self, session: &mut Session) -> bool;
}

impl Lease for lock::Held {
    fn token(&self) -> u64 {
        lock::Held::token(self)
    }
    fn trusted(&self) -> bool {
        self.is_trusted()
    }
    fn extend(&mut self, session: &mut Session) -> bool {
        matches!(self.refresh(session), Ok(true))
    }
}

impl Lease for election::Leadership {
    fn token(&self) -> u64 {
        self.term()
    }
    fn trusted(&self) -> bool {
        self.is_leading()
    }
    fn extend(&mut self, session: &mut Session) -> bool {
        matches!(self.keep(session), Ok(true))
    }
}

/// Uses the lease while trusted for `hold`, refreshing every third of the
/// lease; the holding as its holder saw it.
fn use_while_trusted(
    lease: &mut impl Lease,
    session: &mut Session,
    resource: &Mutex<Fenced>,
    who: &str,
    hold: Duration,
) -> Holding {
    let acquired = Instant::now();
    let mut last_use = acquired;
    let mut last_refresh = acquired;
    let refresh_every = Duration::from_millis(LEASE_S * 1_000 / 3);
    while acquired.elapsed() < hold {
        {
            let mut resource = resource.lock().expect("resource");
            // Checked under the resource's lock, so the use is in the lease.
            if !lease.trusted() {
                break;
            }
            resource.touch(lease.token(), who);
            last_use = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(40));
        if last_refresh.elapsed() >= refresh_every {
            last_refresh = Instant::now();
            if !lease.extend(session) && !lease.trusted() {
                break;
            }
        }
    }
    Holding {
        who: who.to_string(),
        token: lease.token(),
        acquired,
        last_use,
        died: false,
    }
}

/// Holdings never overlap and tokens grow with every acquisition; the
/// resource refused nobody.
fn assert_exclusive(holdings: &[Holding], resource: &Fenced) {
    let mut sorted = holdings.to_vec();
    sorted.sort_by_key(|holding| holding.acquired);
    for pair in sorted.windows(2) {
        let (first, second) = (&pair[0], &pair[1]);
        assert!(
            second.token > first.token,
            "tokens did not grow from {} to {}: {pair:#?}",
            first.who,
            second.who
        );
        assert!(
            first.last_use < second.acquired,
            "{} and {} held at once: {pair:#?}",
            first.who,
            second.who
        );
    }
    assert!(
        resource.refused.is_empty(),
        "the fenced resource refused stale holders: {:?}",
        resource.refused
    );
}

#[test]
fn lock_holders_take_turns_under_kill_9_of_the_holders_node_and_the_leader() {
    let _serial = serial();
    let mut cluster = three_nodes();
    let addresses = cluster.client_addresses();
    let resource = Arc::new(Mutex::new(Fenced::default()));
    let holdings = Arc::new(Mutex::new(Vec::<Holding>::new()));
    // Where the current holder's session is connected (its node).
    let holder_node = Arc::new(Mutex::new(None::<String>));
    let deadline = Instant::now() + TEST_DEADLINE;
    const ROUNDS: usize = 4;
    let contenders: Vec<_> = (0..3)
        .map(|index| {
            let (addresses, resource, holdings, holder_node) = (
                addresses.clone(),
                resource.clone(),
                holdings.clone(),
                holder_node.clone(),
            );
            std::thread::spawn(move || {
                let who = format!("worker-{index}");
                let config = lock::LockConfig::new("locks/shared", &who, LEASE_S);
                let mut session = Session::new(addresses.clone());
                for round in 0..ROUNDS {
                    let mut held = lock::acquire(&mut session, &config, deadline)
                        .unwrap_or_else(|f| panic!("{who} round {round}: {f:?}"));
                    *holder_node.lock().expect("holder") = session.connected_to().map(String::from);
                    let mut holding = use_while_trusted(
                        &mut held,
                        &mut session,
                        &resource,
                        &who,
                        Duration::from_millis(700),
                    );
                    holding.died = index == 0 && round == 1;
                    let dies = holding.died;
                    holdings.lock().expect("holdings").push(holding);
                    if dies {
                        // Dies holding the lock: no release, connection gone.
                        session = Session::new(addresses.clone());
                        std::thread::sleep(Duration::from_secs(LEASE_S + 1));
                        continue;
                    }
                    let _ = held.release(&mut session);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    // kill -9 the lock holder's node (leader or follower), bring it back,
    // then kill the leader.
    std::thread::sleep(Duration::from_millis(1_500));
    let holder_address = holder_node.lock().expect("holder").clone();
    let victim = holder_address
        .and_then(|address| cluster.id_of_address(&address))
        .or_else(|| cluster.wait_leader(Duration::from_secs(5)))
        .expect("a node to kill");
    kill_9_for(&mut cluster, victim, Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(2));
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .expect("a leader");
    kill_9_for(&mut cluster, leader, Duration::from_secs(2));
    for contender in contenders {
        contender.join().expect("a contender failed");
    }
    let holdings = holdings.lock().expect("holdings");
    assert_eq!(holdings.len(), 3 * ROUNDS);
    assert_exclusive(&holdings, &resource.lock().expect("resource"));
    // The dead holder's lock was taken again within its lease plus slack.
    let mut sorted = holdings.clone();
    sorted.sort_by_key(|holding| holding.acquired);
    let dead = sorted
        .iter()
        .position(|holding| holding.died)
        .expect("the dead holder's holding");
    if let Some(next) = sorted.get(dead + 1) {
        let freed_after = next.acquired.duration_since(sorted[dead].last_use);
        assert!(
            freed_after < Duration::from_secs(LEASE_S + 4),
            "a dead holder's lock stayed taken for {freed_after:?}"
        );
    }
}

#[test]
fn one_leader_at_a_time_under_kill_9_of_the_leader() {
    let _serial = serial();
    let mut cluster = three_nodes();
    let addresses = cluster.client_addresses();
    let resource = Arc::new(Mutex::new(Fenced::default()));
    let leaderships = Arc::new(Mutex::new(Vec::<Holding>::new()));
    let deadline = Instant::now() + TEST_DEADLINE;
    let candidates: Vec<_> = (0..3)
        .map(|index| {
            let (addresses, resource, leaderships) =
                (addresses.clone(), resource.clone(), leaderships.clone());
            std::thread::spawn(move || {
                let who = format!("candidate-{index}");
                let mut session = Session::new(addresses.clone());
                for term_round in 0..2 {
                    let mut leadership =
                        election::campaign(&mut session, "elections/app", &who, LEASE_S, deadline)
                            .unwrap_or_else(|f| panic!("{who}: {f:?}"));
                    let mut holding = use_while_trusted(
                        &mut leadership,
                        &mut session,
                        &resource,
                        &who,
                        Duration::from_millis(900),
                    );
                    holding.died = index == 1 && term_round == 0;
                    let dies = holding.died;
                    leaderships.lock().expect("leaderships").push(holding);
                    if dies {
                        // Dies leading.
                        session = Session::new(addresses.clone());
                        std::thread::sleep(Duration::from_secs(LEASE_S + 1));
                        continue;
                    }
                    let _ = leadership.resign(&mut session);
                }
            })
        })
        .collect();
    // An observer reads who leads as it changes.
    let observer = {
        let addresses = addresses.clone();
        std::thread::spawn(move || {
            let mut session = Session::new(addresses);
            let mut seen = Vec::new();
            let mut version = 0;
            let until = Instant::now() + Duration::from_secs(12);
            while Instant::now() < until {
                match session.watch("elections/app", version, until) {
                    Ok(Some((now, content))) => {
                        version = now;
                        seen.push((now, String::from_utf8_lossy(&content).into_owned()));
                    }
                    Ok(None) => version = 0,
                    Err(_) => break,
                }
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(1_500));
    let leader = cluster
        .wait_leader(Duration::from_secs(5))
        .expect("a leader");
    kill_9_for(&mut cluster, leader, Duration::from_secs(3));
    for candidate in candidates {
        candidate.join().expect("a candidate failed");
    }
    let leaderships = leaderships.lock().expect("leaderships");
    assert_eq!(leaderships.len(), 6);
    assert_exclusive(&leaderships, &resource.lock().expect("resource"));
    let seen = observer.join().expect("observer");
    assert!(!seen.is_empty(), "the observer saw no leader");
    for pair in seen.windows(2) {
        assert!(pair[1].0 > pair[0].0, "versions went back: {seen:?}");
    }
    for (_, content) in &seen {
        assert!(
            content == "free" || content.starts_with("candidate-"),
            "observed {content:?}"
        );
    }
}

#[test]
fn no_party_passes_the_barrier_before_the_last_arrives_even_across_kill_9() {
    let _serial = serial();
    let mut cluster = three_nodes();
    let addresses = cluster.client_addresses();
    const PARTIES: usize = 5;
    let deadline = Instant::now() + TEST_DEADLINE;
    let last_arrival = Arc::new(Mutex::new(None::<Instant>));
    let parties: Vec<_> = (0..PARTIES)
        .map(|party| {
            let (addresses, last_arrival) = (addresses.clone(), last_arrival.clone());
            std::thread::spawn(move || {
                if party == PARTIES - 1 {
                    // Arrives last, after the leader was killed.
                    std::thread::sleep(Duration::from_secs(3));
                    *last_arrival.lock().expect("arrival") = Some(Instant::now());
                } else {
                    std::thread::sleep(Duration::from_millis(100 * party as u64));
                }
                let mut session = Session::new(addresses);
                barrier::arrive_and_wait(&mut session, "rounds/1", party, PARTIES, deadline)
                    .unwrap_or_else(|f| panic!("party {party}: {f:?}"));
                Instant::now()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let leader = cluster
        .wait_leader(Duration::from_secs(5))
        .expect("a leader");
    cluster.kill(leader);
    let passed: Vec<Instant> = parties
        .into_iter()
        .map(|party| party.join().expect("a party failed"))
        .collect();
    let last = last_arrival
        .lock()
        .expect("arrival")
        .expect("the last party arrived");
    for (party, at) in passed.iter().enumerate() {
        assert!(*at >= last, "party {party} passed before the last arrival");
        assert!(
            at.duration_since(last) < Duration::from_secs(15),
            "party {party} passed {:?} after the last arrival",
            at.duration_since(last)
        );
    }
    cluster.start_node(leader);
}
