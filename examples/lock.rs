//! A lock with a lease, held for a while (docs/RECIPES.md, "Lock"):
//!
//! ```text
//! cargo run --release --example lock -- --addr 127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8082 \
//!     --name locks/report --owner worker-1 --lease-s 5 --hold-s 12
//! ```
//!
//! Waits for the lock (watching it while another holds it), prints the
//! fencing token, keeps the lease for `--hold-s` seconds (a refresh every
//! third of the lease), then releases it. Exit status: 0 done, 1 the lock
//! was lost while held, 2 usage, 3 the cluster gave no definite answer.

#[path = "recipes/mod.rs"]
mod recipes;

use clap::Parser;
use recipes::client::Session;
use recipes::lock::{self, LockConfig};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Take a raftfs lock with a lease, hold it, release it")]
struct Args {
    /// Client addresses of the cluster, comma separated.
    #[arg(long, default_value = "127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8082")]
    addr: String,
    /// The lock's file name.
    #[arg(long, default_value = "locks/example")]
    name: String,
    /// Who takes it (shown to the others).
    #[arg(long, default_value = "example")]
    owner: String,
    /// The lease in seconds (a dead holder's lock is free after it).
    #[arg(long, default_value_t = 5)]
    lease_s: u64,
    /// How long to hold the lock.
    #[arg(long, default_value_t = 10)]
    hold_s: u64,
    /// How long to wait for the lock.
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut session = Session::new(recipes::addresses(&args.addr));
    let config = LockConfig::new(&args.name, &args.owner, args.lease_s);
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    let mut held = match lock::acquire(&mut session, &config, deadline) {
        Ok(held) => held,
        Err(failure) => {
            eprintln!("lock: could not take {}: {failure:?}", args.name);
            return ExitCode::from(3);
        }
    };
    println!("holding {} with fencing token {}", args.name, held.token());
    let until = Instant::now() + Duration::from_secs(args.hold_s);
    let refresh_every = Duration::from_millis(args.lease_s * 1_000 / 3);
    while Instant::now() < until {
        std::thread::sleep(refresh_every.min(until.saturating_duration_since(Instant::now())));
        match held.refresh(&mut session) {
            Ok(true) if held.is_trusted() => println!("lease extended (token {})", held.token()),
            Ok(_) => {
                eprintln!("lock: lost {} (token {})", args.name, held.token());
                return ExitCode::from(1);
            }
            Err(failure) if held.is_trusted() => {
                eprintln!("lock: refresh failed ({failure:?}), lease still trusted")
            }
            Err(failure) => {
                eprintln!("lock: lease ran out without a refresh: {failure:?}");
                return ExitCode::from(1);
            }
        }
    }
    match held.release(&mut session) {
        Ok(()) => {
            println!("released {}", args.name);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!(
                "lock: release of {} not confirmed ({failure:?}); it expires with its lease",
                args.name
            );
            ExitCode::from(3)
        }
    }
}
