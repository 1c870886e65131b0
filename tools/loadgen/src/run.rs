//! A whole run: worker threads, the phases, progress lines and the report.
//!
//! Owns: `run` and `RunError`. A run is: every worker connects its clients
//! and (for a mix with reads or cas) writes its share of the keys, not
//! measured; all workers and the main thread meet at a barrier; the measured
//! phase runs `--duration` (or until `--total` operations, each worker its
//! share), closed loop or at `--rate` (open loop, each worker its share of
//! the schedule), then drains answers for at most `--timeout-ms`; meanwhile
//! the calling thread prints one progress line per second.
//! Invariants: the measured phase of every worker ends by
//! `start + duration + timeout` whatever the server does (with `--total`
//! alone: once its share is answered or failed, or once no client has been
//! connected for `--timeout-ms`); no worker thread outlives `run`; client i
//! belongs to worker i mod T. Leaves out: formatting the report (see
//! `report`).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::command::content_pattern;
use crate::config::{Config, Kind};
use crate::report::{PrefillSummary, Report};
use crate::source::{share_of_total, Plan, Schedule, Source, Versions};
use crate::stats::Stats;
use crate::worker::{PhaseLimit, Progress, Worker};

/// Why a run could not measure anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// No client could connect during setup (the last connect error).
    CannotConnect(String),
    /// A worker thread could not start its poll loop.
    Worker(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::CannotConnect(reason) => {
                write!(formatter, "no client could connect: {reason}")
            }
            RunError::Worker(reason) => write!(formatter, "worker failed to start: {reason}"),
        }
    }
}

impl std::error::Error for RunError {}

struct WorkerOutcome {
    prefill: Stats,
    measured: Stats,
}

/// What the workers share.
struct Shared<'a> {
    config: &'a Config,
    threads: usize,
    versions: Versions,
    content: Vec<u8>,
    progress: Vec<Progress>,
    barrier: Barrier,
    /// Start of the measured phase: set by whichever thread leaves the barrier first.
    start: OnceLock<Instant>,
    connected_clients: AtomicUsize,
    problems: Mutex<Vec<String>>,
}

impl Shared<'_> {
    fn note_problem(&self, problem: String) {
        if let Ok(mut problems) = self.problems.lock() {
            problems.push(problem);
        }
    }

    fn last_problem(&self) -> String {
        self.problems
            .lock()
            .ok()
            .and_then(|problems| problems.last().cloned())
            .unwrap_or_else(|| "unknown reason".to_string())
    }
}

/// Runs the load described by `config`, writing progress lines to `progress_output`.
pub fn run(config: &Config, progress_output: &mut dyn Write) -> Result<Report, RunError> {
    let threads = config.worker_threads();
    let shared = Shared {
        config,
        threads,
        versions: Versions::new(config.keys),
        content: content_pattern(config.size_bytes),
        progress: (0..threads).map(|_| Progress::default()).collect(),
        barrier: Barrier::new(threads + 1),
        start: OnceLock::new(),
        connected_clients: AtomicUsize::new(0),
        problems: Mutex::new(Vec::new()),
    };
    let run_start = Instant::now();
    if config.prefill() {
        let _ = writeln!(
            progress_output,
            "loadgen: prefill: writing {} keys (not measured)",
            config.keys
        );
    }
    let (sender, receiver) = mpsc::channel::<WorkerOutcome>();
    thread::scope(|scope| {
        for worker_index in 0..threads {
            let sender = sender.clone();
            let shared = &shared;
            scope.spawn(move || worker_main(shared, worker_index, sender));
        }
        drop(sender);
        shared.barrier.wait();
        let start = *shared.start.get_or_init(Instant::now);
        let prefill_duration = start.saturating_duration_since(run_start);
        let connected = shared.connected_clients.load(Ordering::SeqCst) > 0;
        let outcomes = collect(&shared, &receiver, start, connected, progress_output);
        let end = outcomes
            .last()
            .map_or(start, |(_, finished_at)| *finished_at);
        let mut prefill = Stats::new();
        let mut measured = Stats::new();
        for (outcome, _) in &outcomes {
            prefill.merge(&outcome.prefill);
            measured.merge(&outcome.measured);
        }
        // Connection counters cover the whole run (most connections open before measuring).
        measured.connections_opened += prefill.connections_opened;
        measured.connect_failures += prefill.connect_failures;
        measured.redirects_followed += prefill.redirects_followed;
        if outcomes.len() < threads {
            return Err(RunError::Worker(shared.last_problem()));
        }
        if !connected {
            return Err(RunError::CannotConnect(shared.last_problem()));
        }
        let prefill_summary = config.prefill().then(|| PrefillSummary {
            keys: config.keys,
            written: prefill.kinds[Kind::Write.index()].success,
            errors: prefill.error_total(),
            duration_s: prefill_duration.as_secs_f64(),
        });
        if let Some(summary) = &prefill_summary {
            let _ = writeln!(
                progress_output,
                "loadgen: prefill: {} of {} keys written in {:.2} s ({} errors)",
                summary.written, summary.keys, summary.duration_s, summary.errors
            );
        }
        Ok(Report {
            config: config.clone(),
            threads,
            duration_s: end.saturating_duration_since(start).as_secs_f64(),
            stats: measured,
            prefill: prefill_summary,
        })
    })
}

/// Waits for every worker's outcome, printing progress once a second.
fn collect(
    shared: &Shared<'_>,
    receiver: &mpsc::Receiver<WorkerOutcome>,
    start: Instant,
    connected: bool,
    progress_output: &mut dyn Write,
) -> Vec<(WorkerOutcome, Instant)> {
    let mut outcomes = Vec::with_capacity(shared.threads);
    let mut next_tick = start + Duration::from_secs(1);
    let (mut last_ops, mut last_errors) = (0u64, 0u64);
    while outcomes.len() < shared.threads {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(wait) {
            Ok(outcome) => outcomes.push((outcome, Instant::now())),
            Err(RecvTimeoutError::Timeout) => {
                let ops: u64 = shared
                    .progress
                    .iter()
                    .map(|progress| progress.ops.load(Ordering::Relaxed))
                    .sum();
                let errors: u64 = shared
                    .progress
                    .iter()
                    .map(|progress| progress.errors.load(Ordering::Relaxed))
                    .sum();
                if connected {
                    let _ = writeln!(
                        progress_output,
                        "loadgen: [{:>4}s] {:>9} ops/s {:>6} errors/s (total {} ops, {} errors)",
                        next_tick.saturating_duration_since(start).as_secs(),
                        ops.saturating_sub(last_ops),
                        errors.saturating_sub(last_errors),
                        ops,
                        errors
                    );
                }
                (last_ops, last_errors) = (ops, errors);
                next_tick += Duration::from_secs(1);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    outcomes
}

fn worker_main(shared: &Shared<'_>, worker_index: usize, sender: mpsc::Sender<WorkerOutcome>) {
    let config = shared.config;
    let progress = &shared.progress[worker_index];
    let client_numbers = (worker_index..config.clients).step_by(shared.threads);
    let mut worker = match Worker::new(config, &shared.versions, &shared.content, client_numbers) {
        Ok(worker) => Some(worker),
        Err(error) => {
            shared.note_problem(format!("worker {worker_index}: {error}"));
            None
        }
    };
    let mut prefill = Stats::new();
    if let Some(worker) = worker.as_mut() {
        let stall = PhaseLimit::Stall(config.timeout());
        worker.run_phase(&mut Source::Nothing, &mut prefill, stall, progress);
        // A worker none of whose clients could connect has nobody to prefill with.
        if config.prefill() && prefill.connections_opened > 0 {
            let mut source = Source::prefill(worker_index, shared.threads, config.keys);
            worker.run_phase(&mut source, &mut prefill, stall, progress);
        }
        // Connected at least once, even if a stalled prefill closed the link again.
        let opened = usize::try_from(prefill.connections_opened).unwrap_or(usize::MAX);
        shared.connected_clients.fetch_add(opened, Ordering::SeqCst);
        if let Some(problem) = worker.last_connect_error.take() {
            shared.note_problem(problem);
        }
    }
    shared.barrier.wait();
    let start = *shared.start.get_or_init(Instant::now);
    let mut measured = Stats::new();
    if let Some(worker) = worker.as_mut() {
        if shared.connected_clients.load(Ordering::SeqCst) > 0 {
            let deadline = config.duration().map(|duration| start + duration);
            let plan = Plan {
                mix: config.mix,
                keys: config.keys,
                key_dist: config.key_dist,
                deadline,
                total: config
                    .total
                    .map(|total| share_of_total(total, worker_index, shared.threads)),
                schedule: config
                    .rate
                    .map(|rate| Schedule::new(start, rate, worker_index, shared.threads)),
            };
            match Source::measured(config.seed, worker_index, plan) {
                Ok(mut source) => {
                    let limit = match deadline {
                        Some(deadline) => PhaseLimit::Deadline(deadline + config.timeout()),
                        None => PhaseLimit::UntilDone(config.timeout()),
                    };
                    worker.run_phase(&mut source, &mut measured, limit, progress);
                    measured.unsent = source.unsent(Instant::now());
                }
                Err(problem) => {
                    shared.note_problem(format!("worker {worker_index}: {problem}"));
                    worker.close_all();
                    return;
                }
            }
        }
        worker.close_all();
    } else {
        // Without a worker nothing is sent; make the run fail rather than report zeros.
        return;
    }
    // The receiver only goes away when run() has stopped waiting.
    let _ = sender.send(WorkerOutcome { prefill, measured });
}
