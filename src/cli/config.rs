//! `pgtaskd config check FILE`: validates a node configuration file as a node would read it
//! (file, then `PGTASKD_*`/`DATABASE_URL` environment over it) and prints the effective
//! configuration. An unknown key or a bad value is an error naming the key (exit code 5).
//! Must never connect to the database.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::output::{exit, print_json, Failure};
use super::{Cli, Command};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a node config file and print the effective configuration (password masked).
    #[command(
        after_help = "Examples:\n  pgtaskd config check cluster-configs/node.toml\n  PGTASKD_MAX_TASKS=16 pgtaskd config check node.toml --json"
    )]
    Check {
        /// The TOML file.
        file: PathBuf,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check { file, json } = cmd;
    // Parse exactly as `pgtaskd node --config FILE` would, so the environment layers over it.
    let as_node = Cli::try_parse_from([
        std::ffi::OsString::from("pgtaskd"),
        "node".into(),
        "--config".into(),
        file.clone().into_os_string(),
    ])
    .map_err(|e| Failure {
        code: exit::CONFIG,
        message: e.to_string().trim().to_owned(),
    })?;
    let Command::Node(args) = as_node.command else {
        return Err(Failure::config("internal: not a node command"));
    };
    let config = args
        .resolve()
        .map_err(|e| Failure::config(format!("{e:#}")))?;
    if json {
        let mut shown = serde_json::to_value(&config)?;
        if let Some(url) = config.database_url.as_deref() {
            shown["database_url"] = pgtaskd::config::mask_password(url).into();
        }
        return print_json(&shown);
    }
    let text = config.to_toml().map_err(Failure::config)?;
    println!(
        "# {}: valid; effective configuration (defaults, file, environment):",
        file.display()
    );
    print!("{text}");
    Ok(())
}
