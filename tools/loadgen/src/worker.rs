//! One worker thread: a mio poll loop driving a share of the clients.
//!
//! Owns: `Worker` (its `Poll`, its clients, the read scratch buffer) and the
//! phase loop, plus `Progress`, the counters a worker publishes for the
//! once-a-second progress line. Invariants: a phase ends by itself — a
//! measured phase when its source is exhausted and every command is answered,
//! or at its hard deadline (outstanding commands then count as timeouts), or
//! (with `--total` and no duration) when no client has been connected and
//! nothing progressed for `--timeout-ms`; a setup/prefill phase when its
//! work is done or nothing progressed for `--timeout-ms`. Timers are checked
//! at least every `POLL_TICK_MS`; an open-loop source's next intended time
//! wakes the loop, and due operations go to the connected clients with a
//! free pipeline slot, taken round-robin.
//! Leaves out: threads, barriers and the report (see `run`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token};

use crate::client::{Client, Context};
use crate::config::Config;
use crate::limits::{POLL_TICK_MS, READ_CHUNK_BYTES};
use crate::source::{Source, Versions};
use crate::stats::{ErrorKind, Stats};

/// Counters a worker publishes while running (read by the progress printer).
#[derive(Default)]
#[repr(align(64))]
pub struct Progress {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// How a phase is bounded.
#[derive(Clone, Copy, Debug)]
pub enum PhaseLimit {
    /// Setup and prefill: clients keep (re)connecting; the phase gives up when
    /// nothing progressed for this long.
    Stall(Duration),
    /// Measured: stop at this instant whatever is outstanding.
    Deadline(Instant),
    /// Measured without a deadline (`--total` alone): stop when the source is
    /// exhausted and answered, or when no client is connected and nothing
    /// progressed for this long.
    UntilDone(Duration),
}

/// A worker's poll loop and clients.
pub struct Worker<'a> {
    config: &'a Config,
    versions: &'a Versions,
    content: &'a [u8],
    poll: Poll,
    registry: Registry,
    events: Events,
    clients: Vec<Client>,
    scratch: Vec<u8>,
    /// The most recent connect error of this worker.
    pub last_connect_error: Option<String>,
}

impl<'a> Worker<'a> {
    /// A worker for the clients numbered `client_numbers` (client i starts on address i mod N).
    pub fn new(
        config: &'a Config,
        versions: &'a Versions,
        content: &'a [u8],
        client_numbers: impl IntoIterator<Item = usize>,
    ) -> io::Result<Worker<'a>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let now = Instant::now();
        let addresses: &[SocketAddr] = &config.addresses;
        // Every client starts on the first address, or on address i mod N with --spread.
        let clients = client_numbers
            .into_iter()
            .enumerate()
            .map(|(slot, number)| {
                let first_address = if config.spread { number } else { 0 };
                Client::new(Token(slot), first_address, addresses, now)
            })
            .collect();
        Ok(Worker {
            config,
            versions,
            content,
            poll,
            registry,
            events: Events::with_capacity(1024),
            clients,
            scratch: Vec::with_capacity(READ_CHUNK_BYTES * 2),
            last_connect_error: None,
        })
    }

    /// How many of this worker's clients are connected.
    pub fn connected_clients(&self) -> usize {
        self.clients.iter().filter(|client| client.is_up()).count()
    }

    /// Runs one phase: commands from `source`, counted in `stats`, bounded by `limit`.
    pub fn run_phase(
        &mut self,
        source: &mut Source,
        stats: &mut Stats,
        limit: PhaseLimit,
        progress: &Progress,
    ) {
        let tick = Duration::from_millis(POLL_TICK_MS);
        let measured = !matches!(limit, PhaseLimit::Stall(_));
        // Where the round-robin hand-out of due open-loop work starts.
        let mut next_taker = 0;
        let Worker {
            config,
            versions,
            content,
            poll,
            registry,
            events,
            clients,
            scratch,
            last_connect_error,
        } = self;
        let mut context = Context {
            registry,
            addresses: &config.addresses,
            pipeline: config.pipeline,
            content,
            expiry_s: config.expiry_s,
            key_digits: config.key_digits,
            timeout: config.timeout(),
            versions,
            stats,
            source,
            scratch,
            last_progress: Instant::now(),
            last_connect_error: None,
            tls: config.tls.as_ref(),
        };
        let mut last_tick: Option<Instant> = None;
        // The first poll does not wait: events already pending (a peer that
        // closed an idle connection, say) are handled before anything is sent.
        let mut wait = Duration::ZERO;
        loop {
            if let Err(error) = poll.poll(events, Some(wait)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    // A broken poll cannot drive anything: end the phase like a stall.
                    let now = Instant::now();
                    for client in clients.iter_mut() {
                        client.fail_all(&mut context, ErrorKind::Timeout);
                        client.drop_link(context.registry, now);
                    }
                    break;
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                if let Some(client) = clients.get_mut(event.token().0) {
                    client.on_event(&mut context, now);
                }
            }
            if measured && context.source.next_due().is_some() {
                let count = clients.len();
                for offset in 0..count {
                    if !context.source.has_due(now) {
                        break;
                    }
                    let index = (next_taker + offset) % count;
                    if clients[index].can_take_work(context.pipeline) {
                        clients[index].fill_and_flush(&mut context, now);
                        next_taker = index + 1;
                    }
                }
            }
            let exhausted = context.source.is_exhausted(now);
            let want_connection = !measured || !exhausted;
            let tick_due = last_tick.is_none_or(|last| now.saturating_duration_since(last) >= tick);
            if tick_due {
                last_tick = Some(now);
                for client in clients.iter_mut() {
                    client.check_timers(&mut context, now, want_connection);
                }
                publish(progress, context.stats);
            }
            // Connecting only: done once every client is connected, or has
            // found every address refusing it (then it moves on to the next
            // address: the first may be a member that is down).
            let connect_only = matches!(context.source, Source::Nothing);
            let address_count = context.addresses.len();
            if exhausted
                && clients.iter().all(|client| {
                    client.is_idle()
                        && !client.is_connecting()
                        && (!connect_only || client.is_settled(address_count))
                })
            {
                break;
            }
            let give_up = match limit {
                PhaseLimit::Deadline(deadline) => now >= deadline,
                PhaseLimit::Stall(stall) => {
                    now.saturating_duration_since(context.last_progress) >= stall
                }
                PhaseLimit::UntilDone(stall) => {
                    now.saturating_duration_since(context.last_progress) >= stall
                        && !clients.iter().any(Client::is_up)
                }
            };
            if give_up {
                // Outstanding commands are timeouts; their connections are closed,
                // since late answers would be taken for later commands' answers.
                for client in clients.iter_mut() {
                    client.fail_all(&mut context, ErrorKind::Timeout);
                    client.drop_link(context.registry, now);
                }
                break;
            }
            wait = tick.saturating_sub(now.saturating_duration_since(last_tick.unwrap_or(now)));
            if let PhaseLimit::Deadline(deadline) = limit {
                wait = wait.min(deadline.saturating_duration_since(now));
            }
            // Wake for the next intended start or the deadline; work already
            // due waits for a free slot, which an answer (an event) brings.
            if let Some(wake_at) = context.source.wake_at().filter(|_| !exhausted) {
                if wake_at > now {
                    wait = wait.min(wake_at - now);
                }
            }
        }
        publish(progress, context.stats);
        if context.last_connect_error.is_some() {
            *last_connect_error = context.last_connect_error.take();
        }
    }

    /// Closes every connection.
    pub fn close_all(&mut self) {
        let now = Instant::now();
        for client in self.clients.iter_mut() {
            client.drop_link(&self.registry, now);
        }
    }
}

fn publish(progress: &Progress, stats: &Stats) {
    progress.ops.store(stats.ops(), Ordering::Relaxed);
    progress
        .errors
        .store(stats.error_total(), Ordering::Relaxed);
}
