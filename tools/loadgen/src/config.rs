//! The command line: flags, their defaults and validation, and the `--mix`
//! syntax.
//!
//! Owns: `Config` (the parsed, validated flags), `Kind` (the four commands),
//! `Mix` (relative weights of the kinds) and `KeyDist` (how keys are drawn).
//! Invariants: a `Config` that parsed has at least one address (from
//! `--addr` or the members of `--config`), at least one client, key and
//! thread, a pipeline depth of at least 1, a positive finite duration or
//! `--total` (or both), a positive finite `--rate` if any, and a mix with a
//! positive total weight; a bad flag (or an unreadable `--config`) is
//! refused with one clear line. Leaves out: running anything (see `run`).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::limits;

/// Measured seconds when neither `--duration` nor `--total` is given.
pub const DEFAULT_DURATION_S: f64 = 10.0;

/// Default skew of `--key-dist zipfian` (YCSB's).
pub const DEFAULT_ZIPFIAN_THETA: f64 = 0.99;

/// How the key of each measured command is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with exponent `theta`: key `k` (0-based) is drawn with
    /// probability proportional to `1 / (k + 1)^theta`, so `key-0` is the
    /// hottest.
    Zipfian { theta: f64 },
}

impl fmt::Display for KeyDist {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => formatter.write_str("uniform"),
            KeyDist::Zipfian { theta } => write!(formatter, "zipfian:{theta}"),
        }
    }
}

/// Parses `uniform`, `zipfian` or `zipfian:THETA` (0 < THETA <= `MAX_ZIPFIAN_THETA`).
pub fn parse_key_dist(text: &str) -> Result<KeyDist, String> {
    match text.trim().split_once(':') {
        None if text.trim() == "uniform" => Ok(KeyDist::Uniform),
        None if text.trim() == "zipfian" => Ok(KeyDist::Zipfian {
            theta: DEFAULT_ZIPFIAN_THETA,
        }),
        Some(("zipfian", theta)) => {
            let theta: f64 = theta
                .parse()
                .map_err(|_| format!("zipfian skew `{theta}` is not a number"))?;
            if theta.is_finite() && theta > 0.0 && theta <= limits::MAX_ZIPFIAN_THETA {
                Ok(KeyDist::Zipfian { theta })
            } else {
                Err(format!(
                    "zipfian skew must be above 0 and at most {}, got {theta}",
                    limits::MAX_ZIPFIAN_THETA
                ))
            }
        }
        _ => Err(format!(
            "`{text}`: use uniform, zipfian or zipfian:THETA (e.g. zipfian:0.99)"
        )),
    }
}

/// One kind of command loadgen sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Write,
    Read,
    Cas,
    Delete,
}

impl Kind {
    /// Every kind, in the order used for arrays indexed by `Kind::index`.
    pub const ALL: [Kind; 4] = [Kind::Write, Kind::Read, Kind::Cas, Kind::Delete];

    /// The protocol's name of the command (also the `--mix` name).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Read => "read",
            Kind::Cas => "cas",
            Kind::Delete => "delete",
        }
    }

    /// Position in `Kind::ALL`.
    pub fn index(self) -> usize {
        match self {
            Kind::Write => 0,
            Kind::Read => 1,
            Kind::Cas => 2,
            Kind::Delete => 3,
        }
    }
}

/// Relative weights of the four kinds, as given by `--mix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    /// A mix from weights per kind; `None` when they are all zero.
    pub fn new(write: u32, read: u32, cas: u32, delete: u32) -> Option<Mix> {
        let mix = Mix {
            weights: [write, read, cas, delete],
        };
        (mix.total() > 0).then_some(mix)
    }

    /// The weight of one kind.
    pub fn weight(&self, kind: Kind) -> u32 {
        self.weights[kind.index()]
    }

    /// Sum of all weights (positive for every constructed `Mix`).
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|&weight| u64::from(weight)).sum()
    }

    /// The kind a uniform draw `point` in `0..total()` falls on.
    pub fn pick(&self, point: u64) -> Kind {
        let mut remaining = point;
        for kind in Kind::ALL {
            let weight = u64::from(self.weight(kind));
            if remaining < weight {
                return kind;
            }
            remaining -= weight;
        }
        // Only reached for point >= total(); the heaviest last kind is as good as any.
        Kind::ALL
            .into_iter()
            .rev()
            .find(|&kind| self.weight(kind) > 0)
            .unwrap_or(Kind::Write)
    }

    /// True when some measured command needs the keys to exist first.
    pub fn needs_prefill(&self) -> bool {
        self.weight(Kind::Read) > 0 || self.weight(Kind::Cas) > 0
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in Kind::ALL {
            let weight = self.weight(kind);
            if weight > 0 {
                if !first {
                    formatter.write_str(",")?;
                }
                write!(formatter, "{}={}", kind.name(), weight)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Parses `write=W,read=R,cas=X,delete=D` (any subset, any order; missing kinds weigh 0).
pub fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut weights: [Option<u32>; 4] = [None; 4];
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not KIND=WEIGHT"))?;
        let kind = Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == name.trim())
            .ok_or_else(|| {
                format!(
                    "unknown kind `{}` (use write, read, cas, delete)",
                    name.trim()
                )
            })?;
        let weight: u32 = value.trim().parse().map_err(|_| {
            format!(
                "weight `{}` of {} is not a whole number",
                value.trim(),
                kind.name()
            )
        })?;
        if weights[kind.index()].replace(weight).is_some() {
            return Err(format!("{} is given twice", kind.name()));
        }
    }
    let [write, read, cas, delete] = weights.map(|weight| weight.unwrap_or(0));
    Mix::new(write, read, cas, delete)
        .ok_or_else(|| "the mix needs at least one positive weight".to_string())
}

fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let mut addresses = text
        .trim()
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve `{text}`: {error}"))?;
    addresses
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

fn parse_duration_s(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds.is_finite() && seconds > 0.0 && seconds <= 1.0e7 {
        Ok(seconds)
    } else {
        Err(format!(
            "duration must be positive and finite, got `{text}`"
        ))
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of operations per second"))?;
    if rate.is_finite() && rate > 0.0 && rate <= limits::MAX_RATE_OPS {
        Ok(rate)
    } else {
        Err(format!(
            "rate must be above 0 and at most {} ops/s, got `{text}`",
            limits::MAX_RATE_OPS
        ))
    }
}

fn parse_total(text: &str) -> Result<u64, String> {
    let total: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if total >= 1 {
        Ok(total)
    } else {
        Err("total must be at least 1".to_string())
    }
}

fn parse_bounded(text: &str, low: usize, high: usize) -> Result<usize, String> {
    let value: usize = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between {low} and {high}, got {value}"))
    }
}

fn parse_clients(text: &str) -> Result<usize, String> {
    parse_bounded(text, 1, limits::MAX_CLIENTS)
}

fn parse_pipeline(text: &str) -> Result<usize, String> {
    parse_bounded(text, 1, limits::MAX_PIPELINE)
}

fn parse_threads(text: &str) -> Result<usize, String> {
    parse_bounded(text, 1, limits::MAX_THREADS)
}

fn parse_size(text: &str) -> Result<usize, String> {
    parse_bounded(text, 0, limits::MAX_VALUE_BYTES)
}

fn parse_keys(text: &str) -> Result<u64, String> {
    let value: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if (1..=limits::MAX_KEYS).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "must be between 1 and {}, got {value}",
            limits::MAX_KEYS
        ))
    }
}

fn parse_key_digits(text: &str) -> Result<usize, String> {
    parse_bounded(text, 0, 20)
}

fn parse_timeout_ms(text: &str) -> Result<u64, String> {
    let value: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if (1..=3_600_000).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 1 and 3600000 ms, got {value}"))
    }
}

/// The load generator's flags (SPEC §4).
#[derive(Parser, Clone, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for raftfs (the fs protocol): pipelined clients, redirect following, HdrHistogram latencies"
)]
pub struct Config {
    /// Server client addresses, HOST:PORT[,HOST:PORT...]. Every client starts
    /// on the first (and moves to the next while one is down); see --spread.
    #[arg(long = "addr", value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',', required_unless_present = "cluster_config", value_parser = parse_address)]
    pub addresses: Vec<SocketAddr>,

    /// Take the addresses from a raftfs cluster.toml: every member's client address.
    #[arg(long = "config", value_name = "FILE", conflicts_with = "addresses")]
    pub cluster_config: Option<PathBuf>,

    /// Client i starts on address i mod N (round-robin over every address)
    /// instead of all on the first.
    #[arg(long)]
    pub spread: bool,

    /// Number of connections (clients) in total.
    #[arg(long, default_value = "16", value_parser = parse_clients)]
    pub clients: usize,

    /// Commands each connection keeps in flight.
    #[arg(long, default_value = "1", value_parser = parse_pipeline)]
    pub pipeline: usize,

    /// Measured run time in seconds (fractions allowed). Default 10, or no
    /// limit with --total.
    #[arg(long = "duration", value_name = "SECS", value_parser = parse_duration_s)]
    pub duration_s: Option<f64>,

    /// Stop after N measured operations (all clients together), or at
    /// --duration if that comes first.
    #[arg(long = "total", value_name = "N", value_parser = parse_total)]
    pub total: Option<u64>,

    /// Open loop: start OPS operations per second (all clients together) at
    /// fixed intended times, whatever the answers do; latency counts from
    /// the intended time, so a stalled server shows in the tail (no
    /// coordinated omission). Without it: closed loop (each connection
    /// sends when an answer frees a pipeline slot).
    #[arg(long = "rate", value_name = "OPS", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// How keys are drawn: uniform, or zipfian[:THETA] (default THETA 0.99; key-0 hottest).
    #[arg(long = "key-dist", value_name = "uniform|zipfian[:THETA]", default_value = "uniform", value_parser = parse_key_dist)]
    pub key_dist: KeyDist,

    /// Relative weights, e.g. write=1,read=9 (missing kinds weigh 0).
    #[arg(long, value_name = "write=W,read=R,cas=X,delete=D", default_value = "write=1,read=1", value_parser = parse_mix)]
    pub mix: Mix,

    /// Bytes of content per write / cas.
    #[arg(long = "size", value_name = "BYTES", default_value = "100", value_parser = parse_size)]
    pub size_bytes: usize,

    /// Number of distinct files, named key-0 .. key-(K-1) (see --key-digits).
    #[arg(long, default_value = "1000", value_parser = parse_keys)]
    pub keys: u64,

    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,

    /// A command unanswered for this long counts as a timeout.
    #[arg(long, default_value = "5000", value_parser = parse_timeout_ms)]
    pub timeout_ms: u64,

    /// Seed of the key and kind choice.
    #[arg(long, default_value = "1")]
    pub seed: u64,

    /// Worker threads, each with its own poll loop (capped at --clients).
    #[arg(long, default_value = "2", value_parser = parse_threads)]
    pub threads: usize,

    /// Write the latency distribution (microseconds) to FILE in HdrHistogram's .hgrm text format.
    #[arg(long = "hgrm", value_name = "FILE")]
    pub hgrm_path: Option<PathBuf>,

    /// Do not write every key before a mix with reads or cas.
    #[arg(long)]
    pub no_prefill: bool,

    /// EXPTIME sent with write and cas, in seconds (0 = never expires, not sent).
    #[arg(long = "expiry", value_name = "SECS", default_value = "0")]
    pub expiry_s: u64,

    /// Zero-pad key numbers to N digits (`--key-digits 12` names every file
    /// with exactly 16 bytes, `key-000000000042`, for any key below 10^12).
    #[arg(long = "key-digits", value_name = "N", default_value = "0", value_parser = parse_key_digits)]
    pub key_digits: usize,

    /// Speak TLS to the client ports (a raftfs [client_tls] cluster),
    /// verifying each node's certificate with this CA (PEM) by its IP.
    #[arg(long = "tls-ca", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Loaded from `--tls-ca`.
    #[arg(skip)]
    pub tls: Option<raftfs::net::tls::ToolTls>,
}

impl Config {
    /// Parses flags (the first item is the program name), as the binary does.
    pub fn try_from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut config = Config::try_parse_from(args)?;
        if let Some(path) = &config.tls_ca {
            let tls = raftfs::net::tls::ToolTls::load(path, None).map_err(|problem| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--tls-ca: {problem}\n"),
                )
            })?;
            config.tls = Some(tls);
        }
        if let Some(path) = &config.cluster_config {
            config.addresses = addresses_of_cluster(path).map_err(|problem| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--config {}: {problem}\n", path.display()),
                )
            })?;
        }
        Ok(config)
    }

    /// The threads actually used: `--threads`, but never more than `--clients`.
    pub fn worker_threads(&self) -> usize {
        self.threads.min(self.clients).max(1)
    }

    /// `--timeout-ms` as a `Duration`.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// How long the measured phase may run: `--duration`, else unbounded
    /// with `--total`, else `DEFAULT_DURATION_S`.
    pub fn duration(&self) -> Option<Duration> {
        match (self.duration_s, self.total) {
            (Some(seconds), _) => Some(Duration::from_secs_f64(seconds)),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs_f64(DEFAULT_DURATION_S)),
        }
    }

    /// True when the keys are written once before measuring.
    pub fn prefill(&self) -> bool {
        !self.no_prefill && self.mix.needs_prefill()
    }
}

/// Every member's client address in a raftfs cluster.toml, resolved.
fn addresses_of_cluster(path: &std::path::Path) -> Result<Vec<SocketAddr>, String> {
    let cluster = raftfs::config::ClusterConfig::load(path).map_err(|error| error.to_string())?;
    cluster
        .members
        .iter()
        .map(|member| parse_address(&member.client))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_dist_parses_and_refuses_nonsense() {
        assert_eq!(parse_key_dist("uniform"), Ok(KeyDist::Uniform));
        assert_eq!(
            parse_key_dist("zipfian"),
            Ok(KeyDist::Zipfian { theta: 0.99 })
        );
        assert_eq!(
            parse_key_dist("zipfian:1.2"),
            Ok(KeyDist::Zipfian { theta: 1.2 })
        );
        assert_eq!(KeyDist::Zipfian { theta: 1.2 }.to_string(), "zipfian:1.2");
        for bad in [
            "zipf",
            "zipfian:0",
            "zipfian:-1",
            "zipfian:x",
            "uniform:1",
            "zipfian:1e9",
        ] {
            assert!(parse_key_dist(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duration_defaults_to_ten_seconds_unless_a_total_is_given() {
        let parse = |flags: &str| {
            Config::try_from_args(std::iter::once("loadgen").chain(flags.split_whitespace()))
                .expect("valid flags")
        };
        assert_eq!(
            parse("--addr 127.0.0.1:1").duration(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse("--addr 127.0.0.1:1 --total 5").duration(), None);
        assert_eq!(
            parse("--addr 127.0.0.1:1 --total 5 --duration 2").duration(),
            Some(Duration::from_secs(2))
        );
        assert!(
            Config::try_from_args(["loadgen", "--addr", "127.0.0.1:1", "--rate", "0"]).is_err()
        );
        assert!(
            Config::try_from_args(["loadgen", "--addr", "127.0.0.1:1", "--total", "0"]).is_err()
        );
        assert!(
            Config::try_from_args(["loadgen", "--config", "/nonexistent/cluster.toml"]).is_err()
        );
    }

    #[test]
    fn mix_parses_subsets_and_refuses_nonsense() {
        let mix = parse_mix("read=9,write=1").expect("valid mix");
        assert_eq!(mix.weight(Kind::Read), 9);
        assert_eq!(mix.weight(Kind::Write), 1);
        assert_eq!(mix.weight(Kind::Cas), 0);
        assert_eq!(mix.to_string(), "write=1,read=9");
        assert!(parse_mix("read=0").is_err());
        assert!(parse_mix("get=1").is_err());
        assert!(parse_mix("read=1,read=2").is_err());
        assert!(parse_mix("read").is_err());
        assert!(parse_mix("read=-1").is_err());
    }

    #[test]
    fn mix_pick_follows_weights() {
        let mix = Mix::new(1, 0, 2, 1).expect("positive");
        let picks: Vec<Kind> = (0..mix.total()).map(|point| mix.pick(point)).collect();
        assert_eq!(picks, vec![Kind::Write, Kind::Cas, Kind::Cas, Kind::Delete]);
        assert!(mix.needs_prefill());
        assert!(!Mix::new(1, 0, 0, 1).expect("positive").needs_prefill());
    }
}
