//! `raftfs client` (SPEC §1): the command-line client, for machines without
//! telnet and for scripts.
//!
//! Owns: the flags ([`ClientArgs`]), the one-shot forms (`read`, `write`,
//! `cas`, `delete`, `watch`), how an answer is shown, and the exit codes:
//! [`EXIT_OK`] 0, [`EXIT_NOT_FOUND_OR_MISMATCH`] 1 (`ERR_FILE_NOT_FOUND`,
//! `ERR_VERSION`), [`EXIT_USAGE`] 2 (bad flags, a bad name, `ERR_CMD_ERR`),
//! [`EXIT_UNAVAILABLE`] 3 (no member answers, `ERR_INTERNAL`, a write whose
//! fate is unknown). Without a one-shot form it runs the interactive shell
//! (`shell`).
//!
//! Output of the one-shot forms: `read` and `watch` write the content to
//! stdout exactly as stored (a newline is added only when stdout is a
//! terminal and the content lacks one; `--header` first prints the
//! `CONTENTS VERSION NUMBYTES EXPREMAINING` line); `write`/`cas` print
//! `OK VERSION`, `delete` prints `OK`; every other answer goes to stderr as
//! one line with the protocol's word and its meaning.
//!
//! TLS: `--ca` (or a config with `[client_tls]`) makes every connection TLS,
//! the node verified by the host of the address dialed; `--cert/--key` (or
//! `client.pem` beside the CA when `[client_tls]` requires it) is presented.
//!
//! Leaves out: connections, redirects and retries (`session`), line editing
//! (`shell`).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::ClusterConfig;
use crate::limits::FILE_BYTES_MAX_CEILING;
use crate::protocol::is_valid_name;
use crate::protocol::reply::Reply;

mod session;
mod shell;

pub use session::{Answer, Command, Failure, Session};

/// The command succeeded.
pub const EXIT_OK: u8 = 0;
/// `ERR_FILE_NOT_FOUND` or `ERR_VERSION`: a definite answer, not a success.
pub const EXIT_NOT_FOUND_OR_MISMATCH: u8 = 1;
/// Bad flags or arguments, or `ERR_CMD_ERR` (clap's own usage errors are 2 too).
pub const EXIT_USAGE: u8 = 2;
/// No member answers, `ERR_INTERNAL`, or a write whose answer was lost.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// The client addresses of `raftfs cluster`'s default five nodes.
const DEFAULT_ADDRESSES: &str =
    "127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083,127.0.0.1:8084";

/// `raftfs client`'s flags.
#[derive(Args, Debug)]
#[command(
    after_help = "Without a command: an interactive shell (type `help` in it).\n\
Exit codes: 0 ok, 1 not found or version mismatch, 2 usage, 3 unavailable."
)]
pub struct ClientArgs {
    /// Members' client addresses; any member will do (redirects are
    /// followed, a member that is down is skipped).
    /// [default: the five nodes of `raftfs cluster`, 127.0.0.1:8080-8084]
    #[arg(
        long = "addr",
        value_name = "HOST:PORT[,...]",
        value_delimiter = ',',
        value_parser = parse_address,
        conflicts_with = "config",
        global = true
    )]
    addresses: Vec<String>,
    /// Take the members' client addresses from this cluster.toml.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// TLS to the client ports (`[client_tls]`).
    #[command(flatten)]
    tls: crate::net::tls::TlsArgs,
    #[command(subcommand)]
    command: Option<OneShot>,
}

#[derive(Subcommand, Debug)]
enum OneShot {
    /// Print a file's content.
    Read {
        /// The file's name (1 to 250 bytes, no spaces or control characters).
        name: OsString,
        /// First print the answer line: CONTENTS VERSION NUMBYTES EXPREMAINING.
        #[arg(long)]
        header: bool,
    },
    /// Write a file (VALUE, or stdin when VALUE is `-` or missing); prints OK VERSION.
    Write {
        /// The file's name (1 to 250 bytes, no spaces or control characters).
        name: OsString,
        /// Seconds until the file expires (0 = never).
        #[arg(long, value_name = "S", default_value_t = 0)]
        exptime: u64,
        /// The content; `-` or none: all of stdin.
        #[arg(allow_hyphen_values = true)]
        value: Option<OsString>,
    },
    /// Write a file only if it is at VERSION; prints OK NEWVERSION.
    Cas {
        /// The file's name (1 to 250 bytes, no spaces or control characters).
        name: OsString,
        /// The version the file must be at.
        version: u64,
        /// Seconds until the file expires (0 = never).
        #[arg(long, value_name = "S", default_value_t = 0)]
        exptime: u64,
        /// The content; `-` or none: all of stdin.
        #[arg(allow_hyphen_values = true)]
        value: Option<OsString>,
    },
    /// Delete a file; prints OK.
    Delete {
        /// The file's name.
        name: OsString,
    },
    /// Wait until a file's version differs from VERSION (0 = "does not
    /// exist"), then print it as `read` does.
    Watch {
        /// The file's name (1 to 250 bytes, no spaces or control characters).
        name: OsString,
        /// The version to wait past (0: wait until the file exists).
        version: u64,
        /// First print the answer line: CONTENTS VERSION NUMBYTES EXPREMAINING.
        #[arg(long)]
        header: bool,
    },
}

/// HOST:PORT with a numeric port (the host is resolved when connecting).
fn parse_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(text.to_string())
        }
        _ => Err(format!("`{text}` is not HOST:PORT")),
    }
}

/// A usage problem: one line on stderr and exit code 2.
fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("raftfs client: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// Runs `raftfs client` and returns its exit code.
pub fn run(args: ClientArgs) -> ExitCode {
    let config = match &args.config {
        Some(path) => match ClusterConfig::load(path) {
            Ok(config) => Some(config),
            Err(error) => return usage(error),
        },
        None => None,
    };
    let addresses = match (&config, args.addresses.is_empty()) {
        (Some(config), _) => config.members.iter().map(|m| m.client.clone()).collect(),
        (None, false) => args.addresses,
        (None, true) => DEFAULT_ADDRESSES.split(',').map(String::from).collect(),
    };
    let tls = match args.tls.for_clients(config.as_ref()) {
        Ok(tls) => tls,
        Err(error) => return usage(error),
    };
    let mut session = Session::new(addresses).with_tls(tls);
    let Some(one_shot) = args.command else {
        return shell::run(&mut session);
    };
    let (command, header) = match command_of(one_shot) {
        Ok(command) => command,
        Err(problem) => return usage(problem),
    };
    let answer = match session.execute(&command, None) {
        Ok(answer) => answer,
        Err(failure) => {
            eprintln!("raftfs client: {failure}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    ExitCode::from(print_one_shot(&command, &answer, header))
}

/// The command a one-shot form asks for, and whether to print a header.
fn command_of(one_shot: OneShot) -> Result<(Command, bool), String> {
    let command = match one_shot {
        OneShot::Read { name, header } => {
            return Ok((
                Command::Read {
                    name: name_bytes(name)?,
                },
                header,
            ))
        }
        OneShot::Watch {
            name,
            version,
            header,
        } => {
            let name = name_bytes(name)?;
            return Ok((Command::Watch { name, version }, header));
        }
        OneShot::Write {
            name,
            exptime,
            value,
        } => Command::Write {
            name: name_bytes(name)?,
            content: content_of(value)?,
            exptime_s: exptime,
        },
        OneShot::Cas {
            name,
            version,
            exptime,
            value,
        } => Command::Cas {
            name: name_bytes(name)?,
            version,
            content: content_of(value)?,
            exptime_s: exptime,
        },
        OneShot::Delete { name } => Command::Delete {
            name: name_bytes(name)?,
        },
    };
    Ok((command, false))
}

/// A file name as bytes, checked as the server checks it (SPEC §2).
pub fn checked_name(name: Vec<u8>) -> Result<Vec<u8>, String> {
    if is_valid_name(&name) {
        Ok(name)
    } else {
        Err(format!(
            "bad name {:?}: a name is 1 to {} bytes, none of them a space or a control character",
            String::from_utf8_lossy(&name),
            crate::limits::NAME_BYTES_MAX
        ))
    }
}

fn name_bytes(name: OsString) -> Result<Vec<u8>, String> {
    checked_name(name.into_vec())
}

/// VALUE as bytes, or all of stdin for `-` or no VALUE.
fn content_of(value: Option<OsString>) -> Result<Vec<u8>, String> {
    match value {
        Some(value) if value != "-" => Ok(value.into_vec()),
        _ => {
            let stdin = io::stdin();
            if stdin.is_terminal() {
                eprintln!("raftfs client: reading the content from stdin; end it with Ctrl-D");
            }
            let mut content = Vec::new();
            let limit = FILE_BYTES_MAX_CEILING as u64 + 1;
            stdin
                .lock()
                .take(limit)
                .read_to_end(&mut content)
                .map_err(|error| format!("reading stdin: {error}"))?;
            if content.len() > FILE_BYTES_MAX_CEILING {
                return Err(format!(
                    "the content on stdin is larger than any server accepts ({FILE_BYTES_MAX_CEILING} bytes)"
                ));
            }
            Ok(content)
        }
    }
}

/// The exit code an answer to `command` means.
pub fn exit_code(command: &Command, reply: &Reply) -> u8 {
    match (reply, command) {
        (Reply::Contents { .. }, Command::Read { .. } | Command::Watch { .. })
        | (Reply::OkVersion(_), Command::Write { .. } | Command::Cas { .. })
        | (Reply::Ok, Command::Delete { .. }) => EXIT_OK,
        (Reply::FileNotFound, _) | (Reply::VersionMismatch(_), Command::Cas { .. }) => {
            EXIT_NOT_FOUND_OR_MISMATCH
        }
        (Reply::CommandError, _) => EXIT_USAGE,
        _ => EXIT_UNAVAILABLE,
    }
}

/// What an answer that is not a success means, in one line (the protocol's
/// word first).
pub fn explain(command: &Command, answer: &Answer) -> String {
    match &answer.reply {
        Reply::FileNotFound => "ERR_FILE_NOT_FOUND: no such file".to_string(),
        Reply::VersionMismatch(current) => {
            format!("ERR_VERSION {current}: the file is at version {current}")
        }
        Reply::CommandError => format!(
            "ERR_CMD_ERR: {} refused the {} as malformed (a name, number or size it does not accept{})",
            answer.address,
            command.verb(),
            if matches!(command, Command::Watch { .. }) {
                ", or a server without watch"
            } else {
                ""
            }
        ),
        Reply::Internal => format!(
            "ERR_INTERNAL: {} could not give a definite answer (no leader, or the outcome is unknown)",
            answer.address
        ),
        other => format!("unexpected answer to {}: {other}", command.verb()),
    }
}

fn print_one_shot(command: &Command, answer: &Answer, header: bool) -> u8 {
    let code = exit_code(command, &answer.reply);
    if code != EXIT_OK {
        eprintln!("raftfs client: {}", explain(command, answer));
        return code;
    }
    let mut stdout = io::stdout().lock();
    let written = match answer.reply {
        Reply::Contents { .. } => {
            let mut bytes = Vec::with_capacity(answer.content.len() + 64);
            if header {
                bytes.extend_from_slice(format!("{}\n", answer.reply).as_bytes());
            }
            bytes.extend_from_slice(&answer.content);
            let ends_line = answer.content.is_empty() || answer.content.ends_with(b"\n");
            if !ends_line && io::stdout().is_terminal() {
                bytes.push(b'\n');
            }
            stdout.write_all(&bytes)
        }
        _ => writeln!(stdout, "{}", answer.reply),
    };
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => EXIT_OK,
        // A closed pipe (`| head`) is the reader's choice, not a failure of the command.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(error) => {
            eprintln!("raftfs client: writing stdout: {error}");
            EXIT_UNAVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        assert!(parse_address("127.0.0.1:8080").is_ok());
        assert!(parse_address("localhost:1").is_ok());
        assert!(parse_address("localhost").is_err());
        assert!(parse_address(":80").is_err());
        assert!(parse_address("host:99999").is_err());
    }

    #[test]
    fn exit_codes_follow_the_answer() {
        let read = Command::Read {
            name: b"f".to_vec(),
        };
        let cas = Command::Cas {
            name: b"f".to_vec(),
            version: 1,
            content: Vec::new(),
            exptime_s: 0,
        };
        let contents = Reply::Contents {
            version: 1,
            length_bytes: 0,
            expiry_remaining_s: 0,
        };
        assert_eq!(exit_code(&read, &contents), EXIT_OK);
        assert_eq!(exit_code(&read, &Reply::FileNotFound), 1);
        assert_eq!(exit_code(&cas, &Reply::VersionMismatch(3)), 1);
        assert_eq!(exit_code(&cas, &Reply::OkVersion(2)), EXIT_OK);
        assert_eq!(exit_code(&cas, &Reply::CommandError), 2);
        assert_eq!(exit_code(&cas, &Reply::Internal), 3);
        // An answer that does not fit the command is no success.
        assert_eq!(exit_code(&read, &Reply::Ok), 3);
    }

    #[test]
    fn names_are_checked_before_sending() {
        assert!(checked_name(b"a/b.txt".to_vec()).is_ok());
        assert!(checked_name("żółw".as_bytes().to_vec()).is_ok());
        assert!(checked_name(Vec::new()).is_err());
        assert!(checked_name(b"a b".to_vec()).is_err());
        assert!(checked_name(vec![b'x'; 251]).is_err());
    }
}
