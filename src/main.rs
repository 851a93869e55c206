//! The `pgtaskd` binary: parses the command line (clap), layers the configuration (flags, then
//! environment, then file, then defaults), sets up logging and runs a verb. Errors are reported
//! here, with context, and turned into the documented exit codes (`pgtaskd --help`).

mod cli;

use std::process::ExitCode;

use clap::FromArgMatches as _;

fn main() -> ExitCode {
    // The guardian is a helper process of a node (hidden verb): it must start with nothing else.
    if std::env::args().nth(1).as_deref() == Some("__guardian") {
        return ExitCode::from(u8::try_from(pgtaskd::process::guardian_main()).unwrap_or(1));
    }
    // clap exits 2 on a usage error and 0 for --help/--version.
    let args = match cli::command()
        .try_get_matches()
        .and_then(|m| cli::Cli::from_arg_matches(&m))
    {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // a follow that ended with a task's exit code has said what there was to say
            let text = describe(&e);
            if !text.is_empty() {
                eprintln!("pgtaskd: error: {text}");
            }
            ExitCode::from(cli::output::exit_code(&e))
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already shows
/// (many library errors print their source inside their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
