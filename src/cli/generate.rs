//! `pgtaskd completions SHELL` and `pgtaskd man`: shell completions and manual pages generated
//! from the clap definition itself (`clap_complete`, `clap_mangen`), so they never drift from the
//! flags. Also the version text (`pgtaskd --version`): the binary's version and the schema
//! version it carries. Must never reach the database (packagers run these at build time).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

/// `pgtaskd completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `pgtaskd man`.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write `pgtaskd.1` and one page per verb (`pgtaskd-node.1`, …) into this directory instead
    /// of printing the main page.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// `0.1.0 (schema version 10)`: what `--version` prints after the name. The schema version is
/// the newest numbered migration embedded in this binary (the one `migrate` brings a database
/// to, and the one a node with `--no-migrate` requires).
pub fn version_text() -> String {
    format!(
        "{} (schema version {}, schema checksum {:016x})",
        env!("CARGO_PKG_VERSION"),
        pgtaskd::db::migrate::latest_version(),
        pgtaskd::db::migrate::schema_checksum(),
    )
}

/// The whole command line definition, with the version text.
pub fn command() -> clap::Command {
    super::Cli::command().version(version_text())
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = command();
    // Into memory first: clap_complete panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "pgtaskd", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completions")
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let cmd = command();
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            println!("manual pages written to {}", dir.display());
            Ok(())
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("writing the manual page")?;
            out.flush().context("writing the manual page")
        }
    }
}
