//! Where log lines go and how they look: the `log` crate's records, written
//! to stderr by env_logger, either as text (the default) or, with
//! `--log-format json`, as one JSON object per line for log collectors.
//!
//! Owns: [`LogFormat`] and [`init`]. Invariants: `RUST_LOG` sets the level
//! (default `info`) in both formats; a JSON line always has the same four
//! keys, `ts` (RFC 3339, milliseconds, UTC), `level`, `target` and `msg`,
//! and is valid JSON whatever the message holds (serde_json escapes it).
//!
//! What is logged at which level is decided where the line is emitted; the
//! rule is one info (or warn) line per event an operator cares about (a
//! leader change, a member down or back after a grace period, a snapshot, a
//! refusal) and the rest, peer-link churn included, at debug.
//!
//! Leaves out: log files and rotation (stderr goes wherever the service
//! manager sends it).

use std::io::Write;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[timestamp LEVEL target] message`, for people.
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`.
    Json,
}

/// Installs the process's logger; call once, before anything logs.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Text => {
            builder.format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|out, record| {
                let line = serde_json::json!({
                    "ts": out.timestamp_millis().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "msg": record.args().to_string(),
                });
                writeln!(out, "{line}")
            });
        }
    }
    builder.init();
}
