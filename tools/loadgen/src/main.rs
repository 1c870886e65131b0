//! The `loadgen` binary: parse flags, run, print the report.
//!
//! Exit status: 0 after a run in which some operation was answered (errors
//! counted in the report are results, not failures); 1 when nothing could
//! be measured, when no operation was answered (every one failed; the
//! report is still printed), or when the `.hgrm` file cannot be written; 2
//! for bad flags (clap's one-line error).

use std::io::{self, Write};
use std::process::ExitCode;

use loadgen::Config;

fn main() -> ExitCode {
    let config = match Config::try_from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(error) => error.exit(),
    };
    let report = match loadgen::run(&config, &mut io::stderr()) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("loadgen: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(report.text().as_bytes());
    let mut status = ExitCode::SUCCESS;
    if let Some(path) = &config.hgrm_path {
        let written = std::fs::File::create(path).and_then(|mut file| {
            report.write_hgrm(&mut file)?;
            file.flush()
        });
        if let Err(error) = written {
            eprintln!("loadgen: error: cannot write {}: {error}", path.display());
            status = ExitCode::FAILURE;
        }
    }
    if config.json {
        let _ = writeln!(stdout, "{}", report.to_json());
    }
    let _ = stdout.flush();
    if report.ops() == 0 {
        if report.errors() > 0 {
            eprintln!(
                "loadgen: error: every operation failed ({} errors)",
                report.errors()
            );
        } else {
            eprintln!("loadgen: error: no operation was sent in the measured phase");
        }
        status = ExitCode::FAILURE;
    }
    status
}
