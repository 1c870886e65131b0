//! How a node process behaves under a service manager: a panic in any
//! thread ends the whole process, and systemd is told when the node is ready,
//! what it is doing, and when it stops (`Type=notify`).
//!
//! Panics: `exit_on_panic` (called by the binary's `main`, not by the
//! library) installs a hook that prints the panic as usual (message,
//! location, backtrace if `RUST_BACKTRACE` is set), logs one line naming the
//! thread, and exits with `PANIC_EXIT_CODE`. A hook rather than
//! `panic = "abort"` in the profile: it holds in every build (debug, test,
//! `cargo run`), the exit code says "internal error" instead of a SIGABRT
//! core dump, and the library keeps unwinding where it relies on it (the
//! simulator turns a panic into a failing seed with `catch_unwind`). Without
//! it a panic in, say, the snapshot helper thread would leave a process that
//! looks alive and never snapshots again; with it the unit's
//! `Restart=on-failure` starts a clean node.
//!
//! Readiness: `notify_ready` once the data dir is recovered (WAL replayed,
//! snapshot loaded) and every listener is bound, so `systemctl start` waits
//! for recovery; joining the cluster and catching up is `GET /readyz`'s
//! verdict, not this one (a first boot needs a majority started before any
//! leader exists, so waiting for one here would deadlock a sequential
//! start). `notify_status` shows role and leader in `systemctl status`;
//! `notify_stopping` marks a graceful stop. All are no-ops without
//! `$NOTIFY_SOCKET`; a failure to notify is logged, never fatal.
//!
//! Fault injection for tests: `INJECT_PANIC_ENV` makes a helper thread panic
//! after that many milliseconds (how tests check the hook on a real node).

use sd_notify::NotifyState;

/// The exit code of a process ended by a panic (EX_SOFTWARE, sysexits.h).
pub const PANIC_EXIT_CODE: i32 = 70;

/// Test-only: a thread panics this many milliseconds after start.
pub const INJECT_PANIC_ENV: &str = "RAFTFS_INJECT_PANIC_MS";

/// Makes a panic in any thread end the process (see the module doc).
pub fn exit_on_panic() {
    let print_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print_panic(info);
        let thread = std::thread::current();
        log::error!(
            "thread {} panicked: the process exits with code {PANIC_EXIT_CODE}",
            thread.name().unwrap_or("unnamed")
        );
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// Starts the injected panic if `INJECT_PANIC_ENV` asks for one.
pub fn maybe_inject_panic() {
    let Some(delay_ms) = std::env::var(INJECT_PANIC_ENV)
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
    else {
        return;
    };
    log::warn!("{INJECT_PANIC_ENV}={delay_ms}: a thread will panic (fault injection)");
    let spawned = std::thread::Builder::new()
        .name("injected-panic".into())
        .spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            panic!("injected panic ({INJECT_PANIC_ENV})");
        });
    if let Err(error) = spawned {
        log::warn!("cannot start the injected-panic thread: {error}");
    }
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        log::warn!("cannot notify the service manager: {error}");
    }
}

/// `READY=1` (with a status line).
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`: one line for `systemctl status`.
pub fn notify_status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
