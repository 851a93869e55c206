//! What the CLI prints and how it exits: the documented exit codes, the `Failure` error that
//! carries one, and small helpers for text tables and JSON. Must never talk to the database.

use std::fmt;

/// Exit codes a script can rely on (also in `pgtaskd --help`).
pub mod exit {
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const CONFIG: u8 = 5;
    /// `wait`, `logs -f`, `submit --wait`: `--timeout` passed before every task was final.
    pub const TASK_TIMEOUT: u8 = 124;
    /// ...a task ended cancelled (CC).
    pub const TASK_CANCELLED: u8 = 125;
    /// ...a task failed without an exit status (it never started, or its node was lost).
    pub const TASK_NO_STATUS: u8 = 126;
}

/// An error with the exit code it must produce.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn not_found(id: i64) -> anyhow::Error {
        Failure {
            code: exit::NOT_FOUND,
            message: format!("no task with id {id}"),
        }
        .into()
    }

    pub fn refused(message: impl Into<String>) -> anyhow::Error {
        Failure {
            code: exit::REFUSED,
            message: message.into(),
        }
        .into()
    }

    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
        .into()
    }

    pub fn config(message: impl Into<String>) -> anyhow::Error {
        Failure {
            code: exit::CONFIG,
            message: message.into(),
        }
        .into()
    }
}

/// The exit code of an error: its `Failure` code, else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Failure>().map(|f| f.code))
        .unwrap_or(exit::ERROR)
}

/// Prints a value as one line of JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints rows as a left-aligned text table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let text: Vec<String> = cells
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().map(|h| h.to_string()));
    for row in rows {
        line(&mut row.iter().cloned());
    }
}

/// A JSON value as a short text cell ("-" for null).
pub fn cell(value: Option<&serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => "-".to_owned(),
        Some(serde_json::Value::String(s)) => s.trim().to_owned(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(other) => other.to_string(),
    }
}

/// Shortens text to `max` characters with an ellipsis.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

pub use pgtaskd::humanize::{human_bytes, human_secs};
