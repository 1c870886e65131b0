//! A barrier for a known number of parties (docs/RECIPES.md, "Barrier"):
//!
//! ```text
//! # in three shells (or processes), parties 0, 1 and 2:
//! cargo run --release --example barrier -- --name round-1/barrier --party 0 --parties 3
//! ```
//!
//! Returns once every party has arrived. Exit status: 0 passed, 2 usage, 3
//! the cluster gave no definite answer before `--wait-s`.

#[path = "recipes/mod.rs"]
mod recipes;

use clap::Parser;
use recipes::barrier;
use recipes::client::Session;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Wait on a raftfs barrier until every party has arrived")]
struct Args {
    /// Client addresses of the cluster, comma separated.
    #[arg(long, default_value = "127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8082")]
    addr: String,
    /// The barrier's name (a fresh one per round).
    #[arg(long, default_value = "barriers/example")]
    name: String,
    /// This party's number, 0-based.
    #[arg(long)]
    party: usize,
    /// How many parties there are.
    #[arg(long)]
    parties: usize,
    /// How long to wait for the others.
    #[arg(long, default_value_t = 600)]
    wait_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.party >= args.parties {
        eprintln!("barrier: --party must be below --parties");
        return ExitCode::from(2);
    }
    let mut session = Session::new(recipes::addresses(&args.addr));
    let deadline = Instant::now() + Duration::from_secs(args.wait_s);
    let started = Instant::now();
    match barrier::arrive_and_wait(&mut session, &args.name, args.party, args.parties, deadline) {
        Ok(()) => {
            println!(
                "party {} passed {} after {:.1} s: all {} arrived",
                args.party,
                args.name,
                started.elapsed().as_secs_f64(),
                args.parties
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("barrier: {failure:?}");
            ExitCode::from(3)
        }
    }
}
