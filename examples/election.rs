//! Leader election (docs/RECIPES.md, "Leader election"):
//!
//! ```text
//! # a candidate: campaign, lead for 20 s (keeping the lease), resign
//! cargo run --release --example election -- --name elections/app --candidate node-a --lead-s 20
//! # an observer: print the leader and every change, 10 times
//! cargo run --release --example election -- --name elections/app --observe 10
//! ```
//!
//! Exit status: 0 done, 1 leadership lost while leading, 2 usage, 3 the
//! cluster gave no definite answer.

#[path = "recipes/mod.rs"]
mod recipes;

use clap::Parser;
use recipes::client::Session;
use recipes::election;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Campaign for leadership on a raftfs file, or observe who leads")]
struct Args {
    /// Client addresses of the cluster, comma separated.
    #[arg(long, default_value = "127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8082")]
    addr: String,
    /// The election's file name.
    #[arg(long, default_value = "elections/example")]
    name: String,
    /// This candidate's id.
    #[arg(long, default_value = "candidate")]
    candidate: String,
    /// The lease in seconds.
    #[arg(long, default_value_t = 5)]
    lease_s: u64,
    /// How long to lead before resigning.
    #[arg(long, default_value_t = 10)]
    lead_s: u64,
    /// Only observe: print the leader, then this many changes.
    #[arg(long)]
    observe: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut session = Session::new(recipes::addresses(&args.addr));
    let deadline = Instant::now() + Duration::from_secs(3_600);
    if let Some(changes) = args.observe {
        let mut seen = 0;
        for _ in 0..=changes {
            match session.watch(&args.name, seen, deadline) {
                Ok(Some((version, content))) => {
                    seen = version;
                    println!("version {version}: {}", String::from_utf8_lossy(&content));
                }
                Ok(None) => {
                    seen = 0;
                    println!("no leader (the file is absent)");
                }
                Err(failure) => {
                    eprintln!("election: {failure:?}");
                    return ExitCode::from(3);
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut leadership = match election::campaign(
        &mut session,
        &args.name,
        &args.candidate,
        args.lease_s,
        deadline,
    ) {
        Ok(leadership) => leadership,
        Err(failure) => {
            eprintln!("election: campaign failed: {failure:?}");
            return ExitCode::from(3);
        }
    };
    println!(
        "{} leads {} in term {}",
        args.candidate,
        args.name,
        leadership.term()
    );
    let until = Instant::now() + Duration::from_secs(args.lead_s);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(args.lease_s * 1_000 / 3));
        if !matches!(leadership.keep(&mut session), Ok(true)) && !leadership.is_leading() {
            eprintln!(
                "election: {} lost the leadership of term {}",
                args.candidate,
                leadership.term()
            );
            return ExitCode::from(1);
        }
    }
    let term = leadership.term();
    match leadership.resign(&mut session) {
        Ok(()) => {
            println!("{} resigned (term {term})", args.candidate);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("election: resignation not confirmed ({failure:?}); the lease runs out");
            ExitCode::from(3)
        }
    }
}
