//! The `raftfs` command line: `cluster` (local demo), `node` (one member of a
//! real deployment), `status`, `member`, `restore`, `client` and `certs`. Flags and config are validated before
//! anything starts; a problem is one clear line on stderr and exit code 2.

use clap::{Parser, Subcommand};
use raftfs::config::ClusterConfig;
use raftfs::error::Error;
use raftfs::logging::LogFormat;
use raftfs::net::tls::TlsArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "raftfs",
    version,
    about = "A replicated, versioned file store: the fs telnet protocol over Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster on 127.0.0.1 in the foreground (Ctrl-C stops it).
    Cluster {
        /// Number of nodes: 1, 3, 5, 7 or 9.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// First client port; node i listens on P+i-1 for clients and P+1000+i-1 for peers.
        #[arg(long, default_value_t = 8080)]
        base_port: u16,
        /// Where node data goes: DIR/<id>. Relative paths are resolved against the working directory.
        #[arg(long, default_value = "raftfs-data")]
        data_dir: PathBuf,
        /// Do not fsync (fast, NOT crash-safe; like etcd's --unsafe-no-fsync).
        #[arg(long)]
        no_fsync: bool,
        /// Log lines as text, or as one JSON object per line.
        #[arg(long, value_enum, default_value_t, env = "RAFTFS_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Run one node of a deployment described by a cluster.toml.
    /// Every flag can also come from the environment (RAFTFS_CONFIG,
    /// RAFTFS_ID, RAFTFS_DATA_DIR, RAFTFS_LOG_FORMAT); a flag wins.
    Node {
        /// The cluster.toml every node is given.
        #[arg(long, env = "RAFTFS_CONFIG")]
        config: PathBuf,
        /// This node's id (one of the [[node]] ids in the config).
        #[arg(long, env = "RAFTFS_ID")]
        id: u64,
        /// This node's data dir (default: <data_dir from the config>/<id>).
        #[arg(long, env = "RAFTFS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Log lines as text, or as one JSON object per line.
        #[arg(long, value_enum, default_value_t, env = "RAFTFS_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Ask every member for its state and print one line per member. Exit
    /// 0: a leader and every member up; 1: a member down or unhealthy;
    /// 3: no leader (or no member answers).
    Status {
        /// The cluster.toml of the cluster.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON (one object per member, in an array) for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Change or list the members: list, add (a learner), promote, remove.
    Member {
        #[command(subcommand)]
        command: raftfs::member::MemberCommand,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Make a cluster CA and one certificate per node of the config for
    /// mutual TLS: DIR/ca.pem, ca.key, node-<id>.pem, node-<id>.key, and
    /// client.pem, client.key for the tools. Refuses to overwrite a file
    /// unless --force.
    Certs {
        /// The cluster.toml whose [[node]] tables get certificates.
        #[arg(long)]
        config: PathBuf,
        /// Where the files go (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files (a new CA: every node needs the new files).
        #[arg(long)]
        force: bool,
    },
    /// Load a backup (taken with GET /snapshot on a node's metrics listener)
    /// into a new, empty, running cluster. Versions are renumbered.
    Restore {
        /// The snapshot file.
        #[arg(long)]
        snapshot: PathBuf,
        /// A client address of the new cluster (redirects are followed).
        #[arg(long)]
        addr: String,
    },
    /// Talk to a cluster: an interactive shell, or one command (read, write,
    /// cas, delete, watch). Exit 0 ok, 1 not found or version mismatch,
    /// 2 usage, 3 unavailable.
    Client(raftfs::client::ClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raftfs::logging::init(match &cli.command {
        Command::Cluster { log_format, .. } | Command::Node { log_format, .. } => *log_format,
        _ => LogFormat::Text,
    });
    raftfs::service::exit_on_panic();
    raise_open_files_limit();
    let result = match cli.command {
        Command::Client(args) => return raftfs::client::run(args),
        Command::Cluster {
            nodes,
            base_port,
            data_dir,
            no_fsync,
            ..
        } => ClusterConfig::local(nodes, base_port, data_dir, !no_fsync)
            .and_then(|c| raftfs::cluster::run(&c)),
        Command::Node {
            config,
            id,
            data_dir,
            ..
        } => ClusterConfig::load(&config)
            .and_then(|c| raftfs::cluster::run_node(&c, id, data_dir.as_deref())),
        Command::Status { config, json, tls } => {
            match ClusterConfig::load(&config)
                .and_then(|c| use_peer_tls(&tls, &c).map(|()| c))
                .and_then(|c| raftfs::status::run(&c, json))
            {
                Ok(code) => return ExitCode::from(code),
                Err(error) => Err(error),
            }
        }
        Command::Member { command, tls } => ClusterConfig::load(command.config_path())
            .and_then(|c| use_peer_tls(&tls, &c).map(|()| c))
            .and_then(|c| raftfs::member::run(&c, &command)),
        Command::Certs { config, out, force } => ClusterConfig::load(&config)
            .and_then(|c| raftfs::certs::run(&c, &out, force))
            .map(|written| {
                println!(
                    "raftfs: wrote {} files to {} (keys readable by their owner only)",
                    written.len(),
                    out.display()
                );
            }),
        Command::Restore { snapshot, addr } => {
            raftfs::restore::run(&snapshot, &addr).map(|files| {
                println!("raftfs: restored {files} files into the cluster at {addr}");
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("raftfs: {error}");
            match error {
                Error::Config(_) => ExitCode::from(2),
                Error::Removed(_) => ExitCode::from(4),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// `raftfs status` and `member` probe the peer ports with TLS when the
/// flags or the config's `[peer_tls]` ask for it.
fn use_peer_tls(args: &TlsArgs, config: &ClusterConfig) -> Result<(), Error> {
    if let Some(tls) = args.for_peers(config).map_err(Error::Config)? {
        raftfs::status::use_peer_tls(tls);
    }
    Ok(())
}

/// Raise the soft limit on open files to the hard limit: every client is a
/// descriptor, and the usual soft limit (1024) would refuse the 1025th.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                log::warn!(
                    "could not raise the open files limit from {}: {}",
                    limit.rlim_cur,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
