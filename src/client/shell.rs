//! The interactive shell of `raftfs client`: line editing and history
//! (rustyline), one command per line, answers shown for people.
//!
//! Syntax (also shown by `help`): `read NAME`, `write NAME [--exptime S]
//! [VALUE...]`, `cas NAME VERSION [--exptime S] [VALUE...]`, `delete NAME`,
//! `watch NAME VERSION`, `help`, `quit`. VALUE is the rest of the line
//! exactly as typed (spaces inside included; nothing = empty content).
//!
//! Invariants: a line never reaches the wire unless it parsed into a whole
//! `Command` with a valid name; a bad line prints one message and the shell
//! goes on; the prompt names the member the shell is connected to. History
//! lives in `~/.raftfs_history` (at most `CLIENT_HISTORY_LINES_MAX` lines)
//! when HOME is set. Ctrl-C clears the line being typed, or cancels a
//! waiting `watch`; Ctrl-D (end of input) leaves. With stdin not a terminal
//! the shell reads commands line by line without prompts (for scripts).
//!
//! Leaves out: connections and retries (`session`), one-shot output and
//! exit codes (`client`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};

use super::session::{Answer, Command, Session};
use super::{checked_name, exit_code, explain, EXIT_OK, EXIT_UNAVAILABLE};
use crate::limits::CLIENT_HISTORY_LINES_MAX;
use crate::protocol::reply::Reply;

const HELP: &str = "\
commands (any member will do: redirects are followed, members that are down skipped):
  read NAME                              show a file: version, size, expiry, content
  write NAME [--exptime S] [VALUE...]    write VALUE (the rest of the line) to NAME
  cas NAME VERSION [--exptime S] [VALUE...]
                                         write only if NAME is at VERSION
  delete NAME                            delete NAME
  watch NAME VERSION                     wait until NAME's version differs from VERSION
                                         (0 = does not exist), then show it; Ctrl-C cancels
  help                                   this text
  quit                                   leave (or Ctrl-D)
For content with newlines or binary bytes use the one-shot form with stdin:
  raftfs client write NAME - < FILE";

/// What one line of input asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Empty,
    Help,
    Quit,
    Run(Command),
    /// A line that is no command: why.
    Bad(String),
}

/// Runs the shell until end of input or `quit`; its exit code is 0 unless
/// the terminal itself fails.
pub fn run(session: &mut Session) -> ExitCode {
    let config = Config::builder()
        .auto_add_history(true)
        .max_history_size(CLIENT_HISTORY_LINES_MAX)
        .map(|builder| builder.build());
    let editor = config
        .map_err(|error| error.to_string())
        .and_then(|config| {
            Editor::<(), DefaultHistory>::with_config(config).map_err(|error| error.to_string())
        });
    let mut editor = match editor {
        Ok(editor) => editor,
        Err(error) => {
            eprintln!("raftfs client: cannot open the terminal: {error}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let history = history_path();
    if let Some(path) = &history {
        // A first run has no history file yet.
        let _ = editor.load_history(path);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let outside_watch = Arc::new(AtomicBool::new(true));
    install_interrupt(&cancel, &outside_watch);
    if std::io::stdin().is_terminal() {
        println!("raftfs client: type help for the commands, Ctrl-D to leave");
    }
    let mut code = EXIT_OK;
    loop {
        let prompt = format!("{}> ", session.connected_to().unwrap_or("raftfs"));
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(error) => {
                eprintln!("raftfs client: reading input: {error}");
                code = EXIT_UNAVAILABLE;
                break;
            }
        };
        match parse_line(&line) {
            Line::Empty => {}
            Line::Help => println!("{HELP}"),
            Line::Quit => break,
            Line::Bad(problem) => println!("{problem}"),
            Line::Run(command) => {
                let is_watch = matches!(command, Command::Watch { .. });
                cancel.store(false, Ordering::SeqCst);
                outside_watch.store(!is_watch, Ordering::SeqCst);
                let result = session.execute(&command, Some(&cancel));
                outside_watch.store(true, Ordering::SeqCst);
                match result {
                    Ok(answer) => println!("{}", render(&command, &answer)),
                    Err(failure) => println!("{failure}"),
                }
            }
        }
    }
    if let Some(path) = &history {
        if let Err(error) = editor.save_history(path) {
            eprintln!(
                "raftfs client: cannot save the history to {}: {error}",
                path.display()
            );
        }
    }
    ExitCode::from(code)
}

/// `~/.raftfs_history`, when HOME is known.
fn history_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|home| !home.is_empty())?;
    Some(PathBuf::from(home).join(".raftfs_history"))
}

/// SIGINT while a watch waits sets `cancel`; at any other moment it does
/// what it always does (ends the process). While the terminal is in line
/// editing mode Ctrl-C is a key, not a signal, and only clears the line.
fn install_interrupt(cancel: &Arc<AtomicBool>, outside_watch: &Arc<AtomicBool>) {
    use signal_hook::consts::SIGINT;
    use signal_hook::flag;
    let installed = flag::register_conditional_default(SIGINT, Arc::clone(outside_watch))
        .and_then(|_| flag::register(SIGINT, Arc::clone(cancel)));
    if let Err(error) = installed {
        eprintln!("raftfs client: Ctrl-C will not cancel a watch: {error}");
    }
}

/// Splits `line` on spaces and tabs: each word with its byte offset.
fn words(line: &str) -> Vec<(usize, &str)> {
    let mut words = Vec::new();
    let mut start = None;
    for (offset, character) in line.char_indices() {
        match (character == ' ' || character == '\t', start) {
            (true, Some(begin)) => {
                words.push((begin, &line[begin..offset]));
                start = None;
            }
            (false, None) => start = Some(offset),
            _ => {}
        }
    }
    if let Some(begin) = start {
        words.push((begin, &line[begin..]));
    }
    words
}

fn parse_line(line: &str) -> Line {
    let words = words(line);
    let Some(&(_, verb)) = words.first() else {
        return Line::Empty;
    };
    let name = |index: usize| -> Result<Vec<u8>, String> {
        let word = words
            .get(index)
            .ok_or_else(|| format!("{verb} needs a NAME (type help)"))?;
        checked_name(word.1.as_bytes().to_vec())
    };
    let number = |index: usize, what: &str| -> Result<u64, String> {
        let word = words
            .get(index)
            .ok_or_else(|| format!("{verb} needs a {what} (type help)"))?;
        word.1
            .parse()
            .map_err(|_| format!("{what} must be a whole number, not `{}`", word.1))
    };
    let exact = |count: usize| -> Result<(), String> {
        if words.len() == count {
            Ok(())
        } else {
            Err(format!(
                "{verb} takes {} argument{} (type help)",
                count - 1,
                if count == 2 { "" } else { "s" }
            ))
        }
    };
    // `[--exptime S] [VALUE...]` from word `index` on.
    let expiry_and_value = |index: usize| -> Result<(u64, Vec<u8>), String> {
        let (exptime_s, value_index) = match words.get(index) {
            Some(&(_, "--exptime")) => (number(index + 1, "S (seconds)")?, index + 2),
            _ => (0, index),
        };
        let value = words
            .get(value_index)
            .map_or(&b""[..], |&(offset, _)| &line.as_bytes()[offset..]);
        Ok((exptime_s, value.to_vec()))
    };
    let command = match verb {
        "help" | "?" => return Line::Help,
        "quit" | "exit" => return Line::Quit,
        "read" => name(1).and_then(|name| {
            exact(2)?;
            Ok(Command::Read { name })
        }),
        "delete" => name(1).and_then(|name| {
            exact(2)?;
            Ok(Command::Delete { name })
        }),
        "watch" => name(1).and_then(|name| {
            let version = number(2, "VERSION")?;
            exact(3)?;
            Ok(Command::Watch { name, version })
        }),
        "write" => name(1).and_then(|name| {
            let (exptime_s, content) = expiry_and_value(2)?;
            Ok(Command::Write {
                name,
                content,
                exptime_s,
            })
        }),
        "cas" => name(1).and_then(|name| {
            let version = number(2, "VERSION")?;
            let (exptime_s, content) = expiry_and_value(3)?;
            Ok(Command::Cas {
                name,
                version,
                content,
                exptime_s,
            })
        }),
        other => Err(format!("unknown command `{other}` (type help)")),
    };
    match command {
        Ok(command) => Line::Run(command),
        Err(problem) => Line::Bad(problem),
    }
}

/// An answer as the shell shows it (no trailing newline).
fn render(command: &Command, answer: &Answer) -> String {
    if exit_code(command, &answer.reply) != EXIT_OK {
        return explain(command, answer);
    }
    match answer.reply {
        Reply::Contents {
            version,
            length_bytes,
            expiry_remaining_s,
        } => {
            let expiry = match expiry_remaining_s {
                0 => "no expiry".to_string(),
                seconds => format!("expires in {seconds} s"),
            };
            let mut text = format!(
                "version {version}, {length_bytes} byte{}, {expiry}",
                if length_bytes == 1 { "" } else { "s" }
            );
            if !answer.content.is_empty() {
                text.push('\n');
                text.push_str(&printable(&answer.content));
            }
            text
        }
        Reply::OkVersion(version) => format!("OK, version {version}"),
        _ => "OK, deleted".to_string(),
    }
}

/// Content as readable text: UTF-8 as it is, other bytes and control
/// characters (but newline and tab) escaped; a final newline is dropped
/// (the shell ends every answer with one).
fn printable(content: &[u8]) -> String {
    let content = content.strip_suffix(b"\n").unwrap_or(content);
    let mut text = String::with_capacity(content.len());
    for chunk in content.utf8_chunks() {
        for character in chunk.valid().chars() {
            match character {
                '\n' | '\t' => text.push(character),
                '\r' => text.push_str("\\r"),
                c if c.is_control() => text.push_str(&c.escape_default().to_string()),
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_commands() {
        assert_eq!(parse_line("   "), Line::Empty);
        assert_eq!(parse_line("help"), Line::Help);
        assert_eq!(parse_line("quit"), Line::Quit);
        assert_eq!(
            parse_line("read  foo"),
            Line::Run(Command::Read {
                name: b"foo".to_vec()
            })
        );
        assert_eq!(
            parse_line("write foo hello  world "),
            Line::Run(Command::Write {
                name: b"foo".to_vec(),
                content: b"hello  world ".to_vec(),
                exptime_s: 0
            })
        );
        assert_eq!(
            parse_line("write foo"),
            Line::Run(Command::Write {
                name: b"foo".to_vec(),
                content: Vec::new(),
                exptime_s: 0
            })
        );
        assert_eq!(
            parse_line("cas foo 3 --exptime 10 x"),
            Line::Run(Command::Cas {
                name: b"foo".to_vec(),
                version: 3,
                content: b"x".to_vec(),
                exptime_s: 10
            })
        );
        assert_eq!(
            parse_line("watch foo 0"),
            Line::Run(Command::Watch {
                name: b"foo".to_vec(),
                version: 0
            })
        );
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, expected) in [
            ("get foo", "unknown command"),
            ("read", "needs a NAME"),
            ("read a b", "takes 1 argument"),
            ("cas foo x v", "VERSION must be a whole number"),
            ("write foo --exptime", "needs a S"),
            ("watch foo", "needs a VERSION"),
            ("watch foo 1 2", "takes 2 arguments"),
        ] {
            match parse_line(line) {
                Line::Bad(problem) => assert!(problem.contains(expected), "{line}: {problem}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn content_is_shown_readably() {
        assert_eq!(printable(b"hello\nworld\n"), "hello\nworld");
        assert_eq!(printable(b"a\r\n\x00\xff\tz"), "a\\r\n\\u{0}\\xff\tz");
        assert_eq!(printable("żółw".as_bytes()), "żółw");
        let answer = Answer {
            reply: Reply::Contents {
                version: 4,
                length_bytes: 2,
                expiry_remaining_s: 9,
            },
            content: b"hi".to_vec(),
            address: "127.0.0.1:1".into(),
        };
        let read = Command::Read {
            name: b"f".to_vec(),
        };
        assert_eq!(
            render(&read, &answer),
            "version 4, 2 bytes, expires in 9 s\nhi"
        );
    }
}
