//! Child processes of the tests: spawning them so that they die with the
//! test process, signalling them, and reading their /proc figures.
//!
//! Every child is spawned by one spawner thread that lives as long as the
//! test process, with `PR_SET_PDEATHSIG = SIGKILL`: the signal fires when the
//! spawning thread ends, so a child held somewhere that is never dropped (a
//! `static`) or left behind by a test binary killed outright still dies with
//! the process. Dropping owners (`Cluster`) kill their children earlier.
//!
//! Leaves out: what a child runs and its configuration (`cluster` decides).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// The `raftfs` binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftfs"))
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The spawner thread's inbox; the sender is never dropped, so the thread
/// never ends.
static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender.lock().unwrap_or_else(|p| p.into_inner()).clone());
    }
    let (sender, receiver) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("child-spawner".into())
        .spawn(move || {
            for (mut command, answer) in receiver {
                let _ = answer.send(command.spawn());
            }
        })?;
    // A racing first call may have set it meanwhile: then its thread serves.
    let sender = SPAWNER.get_or_init(|| Mutex::new(sender));
    Ok(sender.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Spawns `command` as a child that is killed when this process exits.
pub fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (answer, receiver) = mpsc::channel();
    spawner()?
        .send((command, answer))
        .map_err(|_| io::Error::other("spawner thread died"))?;
    receiver
        .recv()
        .map_err(|_| io::Error::other("spawner thread died"))?
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// kill -9 and reap.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Resident memory of process `pid`, in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Descriptors process `pid` has open (0 if it cannot be read).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// CPU time process `pid` has used so far (user + system), in clock ticks
/// of `clock_ticks_per_second` (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the running kernel.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100).max(1)
}

/// Raise this process's descriptor limit to what `needed` requires (the node
/// is a separate process and raises its own limit at start).
pub fn ensure_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only touch the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= needed,
            "this test needs {needed} open files; the hard limit is {}",
            limit.rlim_max
        );
        if limit.rlim_cur < needed {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}
