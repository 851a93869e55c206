//! The `pgtaskd` binary: parses the command line (clap), layers the configuration (flags, then
//! environment, then file, then defaults), sets up logging and runs a verb. Errors are reported
//! here, with context, and turned into exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The guardian is a helper process of a node (hidden verb): it must start with nothing else.
    if std::env::args().nth(1).as_deref() == Some("__guardian") {
        return ExitCode::from(u8::try_from(pgtaskd::process::guardian_main()).unwrap_or(1));
    }
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtaskd: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
